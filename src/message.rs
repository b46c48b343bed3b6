//! A published message: one immutable, reference-counted MSG frame.
//!
//! The publisher's shard encodes the frame once (one allocation, holding the payload), the
//! owner writes the sequence number into it while it is still the only reference, and from
//! then on it is shared: every shard and every subscriber holds the same bytes. Only the
//! 4-byte subscription id differs per subscriber; it is patched in while the frame is copied
//! into the socket's write buffer, so no payload byte is copied before the final write.

mod frame;

// Not `std`'s `Arc`: a frame is never weakly referenced, and without the weak count its
// construction, uniqueness test (`stamp`) and release each do less (callgrind); and not a
// library's, for the two references a publish takes and releases without a locked
// instruction (see `frame`).
use frame::Frame;
pub(crate) use frame::SpareBlocks;

use crate::protocol::native;

#[derive(Clone, Debug)]
pub struct Message {
    frame: Frame,
}

impl Message {
    /// Builds the (not yet stamped) frame from a PUBLISH's parts. `scratch` is the shard's
    /// reusable encode buffer.
    pub fn from_publish(
        scratch: &mut Vec<u8>,
        topic: &str,
        reply_to: Option<&[u8]>,
        payload: &[u8],
    ) -> Message {
        Message::from_publish_with_headers(scratch, (topic, reply_to), &[], payload)
    }

    /// Like [`Message::from_publish`], with a header block (see [`native::headers`]).
    pub fn from_publish_with_headers(
        scratch: &mut Vec<u8>,
        (topic, reply_to): (&str, Option<&[u8]>),
        headers: &[u8],
        payload: &[u8],
    ) -> Message {
        Message::from_publish_read_at(scratch, 0, (topic, reply_to), headers, payload)
    }

    /// Like [`Message::from_publish_with_headers`], for a PUBLISH a client sent: `read_ns`
    /// is when the broker read it (Unix ns). It rides in the timestamp field until the owner
    /// stamps the message, and becomes its publish time (see [`Message::stamp`]).
    pub fn from_publish_read_at(
        scratch: &mut Vec<u8>,
        read_ns: u64,
        (topic, reply_to): (&str, Option<&[u8]>),
        headers: &[u8],
        payload: &[u8],
    ) -> Message {
        let parts = (topic.as_bytes(), reply_to);
        let general = |scratch: &mut Vec<u8>| {
            scratch.clear();
            native::encode_msg_from_publish(scratch, read_ns, parts, headers, payload);
            Message {
                frame: Frame::from_slice(scratch),
            }
        };
        let Some(len) = native::msg_from_publish_len(parts, headers, payload.len()) else {
            // A topic over 255 bytes or headers over 65,535: the publish path's checks
            // (topic names, `--header-bytes-max`, which `Config::validate` bounds) refuse
            // both first, so this is not reached; the general encoder is the fallback.
            return general(scratch);
        };
        // One allocation, written in place: the payload is copied once, from the read buffer
        // to where every subscriber reads it (two copies at ingress before, issue 13).
        // SAFETY: `write_msg_from_publish` returns `Some` only once it has written every byte
        // of the slice it is given (it checks that none is left).
        let written = unsafe {
            Frame::new_with(len, |frame| {
                native::write_msg_from_publish(frame, read_ns, parts, headers, payload)
            })
        };
        match written {
            Some(frame) => Message { frame },
            // Not reached (the length is the one asked for); the general encoder keeps the
            // function total all the same.
            None => general(scratch),
        }
    }

    /// When the broker read the PUBLISH, until the owner stamps the message (0 for the
    /// broker's own messages).
    pub fn read_ns(&self) -> u64 {
        native::msg_timestamp_ns(&self.frame)
    }

    /// Stamps the owner's sequence number and publish time. The owner is the first to see the
    /// message after the publisher, so the frame is not shared yet and is written in place.
    /// The publish time is when the PUBLISH was read, raised to the topic's last one if
    /// need be: stamped at the owner, timestamps stay non-decreasing along a topic's
    /// sequence, which replay-from-a-time relies on.
    // Inlined into the sequencing, its caller on every publish (inlining it and two other
    // such small functions took 18 instructions a message off native 1:1, callgrind).
    #[inline]
    pub fn stamp(&mut self, seq: u64, timestamp_ns: u64) {
        let write = |frame: &mut [u8]| {
            native::msg_set_seq(frame, seq);
            native::msg_set_timestamp_ns(frame, timestamp_ns);
        };
        match self.frame.get_mut() {
            Some(frame) => write(frame),
            None => {
                debug_assert!(false, "a message must be stamped before it is shared");
                let mut copy = self.frame.to_vec();
                write(&mut copy);
                self.frame = Frame::from_slice(&copy);
            }
        }
    }

    /// The header block (empty for none); read it with [`native::headers`].
    pub fn headers(&self) -> &[u8] {
        native::msg_headers(&self.frame)
    }

    /// The value of header `name`, if the message has it.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        native::header_value(self.headers(), name.as_bytes())
    }

    /// A second reference for the owner to keep (its replay ring) while the message is still
    /// only its own: made without a locked instruction then (see `frame`).
    #[inline]
    pub fn clone_while_unique(&mut self) -> Message {
        Message {
            frame: self.frame.clone_while_unique(),
        }
    }

    /// Lets go of this reference, freeing the frame without a locked instruction if it was the
    /// last (see `frame`): for the replay ring's eviction, which usually holds the last one.
    #[inline]
    pub fn release(self) {
        self.frame.release();
    }

    /// Whether both are the same message (one frame), for caches keyed by message.
    pub fn shares_frame(&self, other: &Message) -> bool {
        std::ptr::eq(self.frame.heap_ptr(), other.frame.heap_ptr())
    }

    /// Where the frame lives: the same for every clone, and, unlike [`Message::shares_frame`],
    /// needing no clone kept to compare later. Only a hint: once the frame is freed, another
    /// message's takes its address, usually the next one of the same size on that shard
    /// (which reuses the block it freed last).
    pub fn frame_address(&self) -> usize {
        self.frame.heap_ptr() as usize
    }

    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// Asks the CPU to bring this message's allocation (its reference count, where the
    /// allocator threads a freed block, and the frame) into cache, without waiting for it:
    /// its first `RELEASE_PREFETCH_LINES` cache lines. For a message about to be released
    /// whose memory has gone cold: among a thousand busy topics, the one a replay ring
    /// evicts was last touched a thousand publishes ago. The eviction's count decrement and
    /// free waited on memory for about a seventh of the shard's time (a `perf` time profile
    /// of the many-topics row); and the shard's next frame of the same size is written into
    /// the freed block (its spare, `frame::SpareBlocks`): with every line of a small frame
    /// fetched, not only the first, many topics delivered about a quarter more (interleaved
    /// runs, tuning.md).
    #[inline]
    pub fn prefetch_for_release(&self) {
        // The allocation starts with the reference count, one word ahead of the frame. A
        // fixed count, whatever the frame's length: working out how many lines it spans cost
        // 20 instructions a publish, and a prefetch past its end is harmless (the next block
        // of the same size, if anything).
        let start = self.frame.heap_ptr();
        for line in 0..RELEASE_PREFETCH_LINES {
            prefetch(start.wrapping_add(line * CACHE_LINE_BYTES));
        }
    }

    pub fn frame_len(&self) -> usize {
        self.frame.len()
    }

    /// The topic, validated when the message was published.
    ///
    /// Asked for several times per message on the hot path (owner lookup, local matching),
    /// where re-validating the UTF-8 cost about a tenth of a 1:1 delivery's instructions.
    pub fn topic(&self) -> &str {
        let topic = native::msg_topic(&self.frame);
        debug_assert!(std::str::from_utf8(topic).is_ok());
        // SAFETY: every frame is built by `from_publish` from a `&str` topic (or copied from
        // one by `redelivery`), and later writes (`stamp`, the delivery count) touch only
        // fixed fields ahead of it; so these bytes are exactly that `str`'s bytes.
        unsafe { std::str::from_utf8_unchecked(topic) }
    }

    /// The reply topic a request named, if any (validated when it was published).
    pub fn reply_to(&self) -> Option<&str> {
        let at = native::MSG_PREFIX_LEN + 1 + native::msg_topic(&self.frame).len();
        let len = usize::from(*self.frame.get(at)?);
        if len == 0 {
            return None;
        }
        std::str::from_utf8(self.frame.get(at + 1..at + 1 + len)?).ok()
    }

    pub fn seq(&self) -> u64 {
        native::msg_seq(&self.frame)
    }

    pub fn timestamp_ns(&self) -> u64 {
        native::msg_timestamp_ns(&self.frame)
    }

    pub fn delivery_count(&self) -> u16 {
        native::msg_delivery_count(&self.frame)
    }

    /// A copy for a redelivery, carrying its delivery count. Redeliveries are the exception,
    /// so they pay for their own frame and first deliveries stay shared.
    pub fn redelivery(&self, delivery_count: u16) -> Message {
        let mut frame = self.frame.to_vec();
        native::msg_set_delivery_count(&mut frame, delivery_count);
        Message {
            frame: Frame::from_slice(&frame),
        }
    }

    pub fn payload(&self) -> &[u8] {
        native::msg_payload(&self.frame)
    }
}

/// A message on its way to one of its receivers: borrowed while others are still to get it,
/// owned by the last, whose queue then keeps it without taking a reference of its own. Each
/// reference taken and released is an atomic read-modify-write on the shared count; in
/// fanin-8 the one taken and the one released per delivery held about 7% of the shard's time
/// (a `perf` time profile), as each waits for every store before it to drain.
pub enum Handoff<'a> {
    Shared(&'a Message),
    Last(Message),
}

impl Handoff<'_> {
    #[inline]
    pub fn message(&self) -> &Message {
        match self {
            Handoff::Shared(message) => message,
            Handoff::Last(message) => message,
        }
    }

    /// The message to keep: the one handed over, or a new reference to a shared one.
    #[inline]
    pub fn into_owned(self) -> Message {
        match self {
            Handoff::Shared(message) => message.clone(),
            Handoff::Last(message) => message,
        }
    }
}

impl<'a> From<&'a Message> for Handoff<'a> {
    #[inline]
    fn from(message: &'a Message) -> Self {
        Handoff::Shared(message)
    }
}

impl From<Message> for Handoff<'_> {
    #[inline]
    fn from(message: Message) -> Self {
        Handoff::Last(message)
    }
}

/// The x86-64 cache line, for prefetching (which does nothing elsewhere).
const CACHE_LINE_BYTES: usize = 64;

/// The cache lines [`Message::prefetch_for_release`] asks for: a frame with a payload of up
/// to about 130 bytes, whose lines the next publish of its size will write; a larger
/// message's allocation is one the next small publish will not reuse.
const RELEASE_PREFETCH_LINES: usize = 3;

/// Asks the CPU to bring the cache line at `address` in, without waiting for it; for memory
/// the shard will touch a little later and that has likely gone cold. Elsewhere than x86-64,
/// nothing.
#[inline]
pub(crate) fn prefetch<T>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: x86-64 always has SSE, the only feature `_mm_prefetch` needs, and a prefetch
    // reads nothing the program sees and cannot fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn references(message: &Message) -> usize {
        message.frame.references()
    }

    #[test]
    fn the_last_receiver_takes_the_message_itself_and_the_others_a_reference_each() {
        let message = Message::from_publish(&mut Vec::new(), "t", None, b"x");
        let first = Handoff::from(&message).into_owned();
        assert!(first.shares_frame(&message));
        assert_eq!(references(&message), 2);
        let address = message.frame_address();
        let last = Handoff::from(message).into_owned();
        assert_eq!(last.frame_address(), address);
        assert_eq!(references(&last), 2, "no reference was taken for the last");
        drop(first);
        assert_eq!(references(&last), 1);
    }

    #[test]
    fn a_handoff_shows_the_message_it_carries_either_way() {
        let message = Message::from_publish(&mut Vec::new(), "orders", None, b"x");
        assert_eq!(Handoff::from(&message).message().topic(), "orders");
        assert_eq!(Handoff::from(message).message().payload(), b"x");
    }
}
