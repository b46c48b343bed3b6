//! One client connection on a shard: its socket, its buffers and its subscriptions.
//!
//! The lifetime of a connection:
//! 1. accepted by the shard's listener → [`ConnState::Handshaking`], with a deadline;
//! 2. HELLO accepted → [`ConnState::Open`]; commands are read, deliveries queued;
//! 3. the broker decides to close (protocol error, slow consumer, shutdown) →
//!    [`ConnState::Closing`]: nothing more is read, the final frames are flushed until written
//!    or the linger deadline passes;
//! 4. closed: its subscriptions are withdrawn and the slab slot is freed at once. A readiness
//!    event later in the same poll batch may then reach a connection accepted into that slot;
//!    it is harmless (a read that finds nothing, a flush with nothing queued), and every
//!    message that crosses a ring names its connection with a generation, so those never do.
//!
//! The outbound side has two tiers. Replies go straight into the write buffer. Deliveries
//! wait in `pending` as shared [`Message`]s and are copied into the write buffer only right
//! before the socket write, a chunk at a time; so the slow-consumer policy can drop whole
//! messages from the front, and a message fanned out to many connections is never copied
//! until it is written.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use ahash::AHashMap;
use mio::net::TcpStream;

use crate::bus::link::{Event, ReplyData, ShardEnds};
use crate::client::ServerError;
use crate::config::SlowConsumerPolicy;
use crate::error::CloseReason;
use crate::error::ErrorCode;
use crate::ids::ConnectionId;
use crate::mesh::message::Ticket;
use crate::message::{Handoff, Message};
use crate::protocol::native;
use crate::protocol::resp::RespVersion;
use crate::protocol::topic::SubjectKind;
use crate::shard::conn_ws::EventCache;
use crate::shard::topics::TopicHint;
use crate::shard::wire::{Answer, Wire};
use crate::shard::Shard;
use std::sync::Arc;

/// Most bytes moved from `pending` into the write buffer at a time. A connection stages at
/// most half its `outbound_bytes_max`, so `drop-oldest` always has queued messages to drop
/// rather than only the newest.
///
/// Each chunk is one `send`: at 64 KiB a subscriber taking 4.8 M msgs/s cost 8,500 sends a
/// second (the reflector, which writes everything queued at once, 300), each waking the
/// reader; at 256 KiB, 2,200, and the unwindowed rows delivered 6% (1:1, fan-in) to 12%
/// (many topics) more (interleaved A/B, medians of 3).
pub const WRITE_CHUNK_BYTES: usize = 256 * 1024;

/// What a write buffer keeps between bursts: one grown for a burst is given back down to this
/// after [`QUIET_DRAINS_BEFORE_SHRINK`] writes in a row that emptied it carrying less than an
/// eighth of its capacity, so ten thousand subscribers that each once took a burst do not
/// keep a full chunk each.
const WRITE_BUF_RESTING_BYTES: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Accepted; only HELLO is allowed, before the handshake deadline.
    Handshaking,
    /// Handshake done; commands flow.
    Open,
    /// The broker is closing it: no more reads; final frames flush until the linger deadline.
    Closing(CloseReason),
}

/// A subscription as its connection records it.
#[derive(Debug)]
pub struct SubscriptionRecord {
    pub subject: Box<str>,
    pub kind: SubjectKind,
    /// An exact subscription waiting for its owner's ack: not live on this shard yet.
    pub pending: Option<Ticket>,
    /// The durable consumer or group it belongs to; its messages come from the owner.
    pub consumer: Option<Box<str>>,
    /// Whether it takes ACK frames.
    pub acks: bool,
    /// Deliveries dropped under `drop-oldest` and not yet reported with a DROPPED frame.
    pub dropped_unreported: u64,
    /// The topic incarnation an exact subscription was counted in (0 until the owner's ack),
    /// so its unsubscribe cannot touch a topic deleted and made again meanwhile.
    pub epoch: u64,
    /// Its topic has presence on (learnt with the owner's ack): its end is published too.
    pub presence: bool,
}

/// Bytes read from the socket and not yet decoded. Rests at `read_chunk_bytes`; grows only to
/// hold one frame larger than that, and shrinks back once that frame is consumed.
pub struct ReadBuffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
    resting_len: usize,
    /// Bytes consumed over the buffer's life: a change says input completed (for the frame
    /// deadline), without a clock read per frame.
    consumed_total: u64,
}

impl ReadBuffer {
    pub fn new(resting_len: usize) -> Self {
        ReadBuffer {
            data: vec![0; resting_len],
            start: 0,
            end: 0,
            resting_len,
            consumed_total: 0,
        }
    }

    /// Bytes consumed so far, all told.
    pub fn consumed_total(&self) -> u64 {
        self.consumed_total
    }

    /// Drops what it holds and goes back to its resting size (the connection is closing).
    pub fn release(&mut self) {
        self.start = 0;
        self.end = 0;
        self.data = vec![0; self.resting_len];
    }

    /// The bytes it holds now, grown or not (for tests and the memory figures).
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    // The accessors below run once per frame read; as calls they cost the native publish
    // path about 25 instructions a message (callgrind), so they are inlined.
    #[inline]
    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// For decoders that work in place (a WebSocket frame is unmasked where it lies).
    pub fn filled_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.end]
    }

    /// Free space for a text protocol, whose messages do not start with their length:
    /// compacts, and doubles the buffer when it is full, up to `bytes_max` (past which the
    /// codec refuses what it holds, so an empty spare never stalls the connection).
    pub fn spare_for_text(&mut self, bytes_max: usize) -> &mut [u8] {
        let filled = self.end - self.start;
        if self.start > 0 && self.end == self.data.len() {
            self.data.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = filled;
        }
        if self.end == self.data.len() {
            let grown = (self.data.len() * 2).clamp(self.resting_len.max(1), bytes_max.max(1));
            if grown > self.data.len() {
                self.data.resize(grown, 0);
            }
        }
        &mut self.data[self.end..]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    #[inline]
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.end - self.start);
        self.start += n;
        self.consumed_total += n as u64;
        if self.start == self.end {
            self.emptied();
        }
    }

    /// Everything read was consumed: back to the start, and to the resting size.
    fn emptied(&mut self) {
        self.start = 0;
        self.end = 0;
        if self.data.len() > self.resting_len {
            self.data.truncate(self.resting_len);
            self.data.shrink_to_fit();
        }
    }

    /// Shrinks a buffer grown for a large frame back to its resting size once the socket is
    /// drained and what it holds no longer needs the room: the next frame followed the large
    /// one at once, so the buffer never ran empty (where `consume` shrinks it). `native`: the
    /// front frame announces the size it needs; a text protocol needs what it holds.
    pub fn shrink_when_idle(&mut self, native: bool) {
        if self.data.len() <= self.resting_len {
            return;
        }
        let filled = self.end - self.start;
        let needed = if native {
            self.filled()
                .first_chunk::<4>()
                .map_or(0, |len| u32::from_be_bytes(*len) as usize + 4)
        } else {
            filled
        };
        if needed.max(filled) > self.resting_len {
            return;
        }
        self.data.copy_within(self.start..self.end, 0);
        self.start = 0;
        self.end = filled;
        self.data.truncate(self.resting_len);
        self.data.shrink_to_fit();
    }

    /// Free space to read into. Compacts, and grows when the frame at the front does not fit
    /// and is within `frame_bytes_max`. A length above it is never room to allocate: the
    /// decoder refuses it, or, before HELLO, it is the start of a text protocol's request
    /// that waits for its next bytes (`sniff::needs_more`: `POST` reads as 1.3 GB).
    pub fn spare(&mut self, frame_bytes_max: usize) -> &mut [u8] {
        let filled = self.end - self.start;
        let frame_len = self
            .filled()
            .first_chunk::<4>()
            .map(|len| u32::from_be_bytes(*len) as usize + 4)
            .filter(|&len| len <= frame_bytes_max)
            .unwrap_or(0);
        let wanted = frame_len.max(self.resting_len);
        if self.start > 0 && (self.end == self.data.len() || self.start + wanted > self.data.len())
        {
            self.data.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = filled;
        }
        if wanted > self.data.len() {
            self.data.resize(wanted, 0);
        }
        &mut self.data[self.end..]
    }

    pub fn commit(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.data.len());
        self.end += n;
    }
}

/// What happened to a delivery offered to a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum EnqueueOutcome {
    Queued,
    /// Queued after dropping this many older deliveries (`drop-oldest`).
    QueuedAfterDropping(u64),
    /// Over the limit under `disconnect`: the caller closes the connection.
    SlowConsumer,
}

/// What waits in line for a subscription: messages, and the gap notices that must arrive
/// between the right messages (encoded only when staged, so they cost no allocation), and
/// rare notices encoded already (ENDED: after it, nothing more for that subscription).
enum Queued {
    Message(Message),
    /// A delivery already encoded for a text protocol, shared by every subscriber of that
    /// format on the shard, with its message's publish timestamp for the latency sample (0
    /// for a redelivery, which takes none).
    Encoded(Arc<[u8]>, u64),
    Gap {
        missed: u64,
        resume_seq: u64,
        topic: Box<str>,
    },
    Notice(Box<[u8]>),
    /// A Redis connection's replies, in line behind queued deliveries, with the count of
    /// messages among them (lined up behind a reply, then released with it): delivered
    /// when staged, undelivered when discarded.
    Replies(Box<[u8]>, u64),
}

impl Queued {
    fn frame_len(&self) -> usize {
        match self {
            Queued::Message(message) => message.frame_len(),
            Queued::Encoded(frame, _) => frame.len(),
            Queued::Gap {
                missed,
                resume_seq,
                topic,
            } => native::Frame::Gap {
                sub_id: 0,
                missed: *missed,
                resume_seq: *resume_seq,
                topic: topic.as_bytes(),
            }
            .encoded_len(),
            Queued::Notice(frame) | Queued::Replies(frame, _) => frame.len(),
        }
    }
}

/// The bytes and messages waiting to go to the socket.
pub struct Outbound {
    write_buf: Vec<u8>,
    written: usize,
    pending: VecDeque<(u32, Queued)>,
    pending_bytes: usize,
    stage_bytes_max: usize,
    /// Messages thrown away unwritten over the connection's life (each `discard_pending`),
    /// which its close log reports; the shard's `undelivered` counter is the sum of these.
    discarded: u64,
    /// Messages written into the reply stream (a Redis connection's, lined up behind a
    /// reply) that no write has counted as deliveries yet.
    staged_uncounted: u64,
    /// Deliveries staged as they came ([`Outbound::stage_now`]) that no write has taken yet:
    /// counted as deliveries by the next write, as undelivered if the connection closes
    /// first.
    staged_now_unwritten: u64,
    /// Replies (anything not a delivery) sit in the write buffer unsent: the write is not
    /// held back for coalescing (see `Shard::flush_dirty`).
    replies_unsent: bool,
    /// When the first of the deliveries staged as they came since the last write was
    /// published, for that write's latency sample (see
    /// [`Outbound::oldest_unwritten_published_ns`]).
    staged_oldest_published_ns: Option<u64>,
    /// Messages a Redis connection gave up with its line of replies, not yet counted by
    /// `discard_pending`.
    abandoned_in_line: u64,
    /// Deliveries published at or before this (Unix ns) were queued as history, a replay:
    /// their age says how far back the subscriber asked, not how fast the broker is, so a
    /// write they lead takes no latency sample.
    history_through_ns: u64,
    /// Writes in a row that emptied the buffer carrying less than an eighth of its capacity
    /// (see [`WRITE_BUF_RESTING_BYTES`]).
    quiet_drains: u8,
}

/// Quiet writes in a row before a grown write buffer is given back: bursty traffic would
/// otherwise grow and shrink it every turn.
const QUIET_DRAINS_BEFORE_SHRINK: u8 = 8;

impl Outbound {
    pub fn new(stage_bytes_max: usize) -> Self {
        Outbound {
            write_buf: Vec::new(),
            written: 0,
            pending: VecDeque::new(),
            pending_bytes: 0,
            stage_bytes_max,
            discarded: 0,
            staged_uncounted: 0,
            staged_now_unwritten: 0,
            replies_unsent: false,
            staged_oldest_published_ns: None,
            abandoned_in_line: 0,
            history_through_ns: 0,
            quiet_drains: 0,
        }
    }

    /// Counts messages that a Redis connection gave up with its line of replies, so that the
    /// next `discard_pending` reports them like queued ones.
    pub fn count_abandoned_in_line(&mut self, abandoned: u64) {
        self.abandoned_in_line += abandoned;
    }

    /// Messages written into the reply stream that no write has counted yet (see
    /// [`Outbound::push_in_order`]); a closing connection counts them as delivered.
    pub fn take_staged_uncounted(&mut self) -> u64 {
        std::mem::take(&mut self.staged_uncounted)
    }

    /// Messages this connection lost to `discard_pending`, all told.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Queued bytes past which the connection is written at once instead of at the end of
    /// the loop turn, so one burst of fan-out cannot push a fast subscriber over its limit.
    pub fn stage_bytes_max(&self) -> usize {
        self.stage_bytes_max
    }

    /// Bytes accepted for this connection and not yet written to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.pending_bytes + self.write_buf.len() - self.written
    }

    pub fn is_empty(&self) -> bool {
        self.queued_bytes() == 0
    }

    /// Where replies are encoded: straight into the write buffer, ahead of queued deliveries.
    pub fn replies(&mut self) -> &mut Vec<u8> {
        self.replies_unsent = true;
        &mut self.write_buf
    }

    /// Deliveries staged at once that no write took, for a closing connection: counted with
    /// what it discards (its close log's figure) and returned, as undelivered.
    pub fn discard_staged_now_unwritten(&mut self) -> u64 {
        let unwritten = std::mem::take(&mut self.staged_now_unwritten);
        self.discarded += unwritten;
        unwritten
    }

    /// Nothing but deliveries waits to go out: the write may be held back to coalesce.
    pub fn holds_no_replies(&self) -> bool {
        !self.replies_unsent
    }

    pub fn unwritten_reply_bytes(&self) -> usize {
        self.write_buf.len() - self.written
    }

    /// Everything staged so far reached the socket (queued deliveries may remain).
    pub fn write_buf_is_empty(&self) -> bool {
        self.written == self.write_buf.len()
    }

    // Once per delivery: inlined into the slow-consumer policy's offer.
    #[inline]
    fn push_delivery(&mut self, sub_id: u32, message: Message) {
        self.pending_bytes += message.frame_len();
        self.pending.push_back((sub_id, Queued::Message(message)));
    }

    /// Offers a delivery already encoded for a text protocol, under the same slow-consumer
    /// policy as [`Outbound::offer`].
    pub fn offer_encoded(
        &mut self,
        sub_id: u32,
        (frame, published_ns): (Arc<[u8]>, u64),
        outbound_bytes_max: usize,
        policy: SlowConsumerPolicy,
        mut dropped: impl FnMut(u32),
    ) -> EnqueueOutcome {
        let incoming = frame.len();
        let mut dropped_count = 0;
        if self.queued_bytes() + incoming > outbound_bytes_max {
            if policy == SlowConsumerPolicy::Disconnect {
                return EnqueueOutcome::SlowConsumer;
            }
            while self.queued_bytes() + incoming > outbound_bytes_max {
                let Some((dropped_sub, _)) = self.pop_oldest_delivery() else {
                    break;
                };
                dropped_count += 1;
                dropped(dropped_sub);
            }
            if self.queued_bytes() + incoming > outbound_bytes_max {
                dropped(sub_id);
                return EnqueueOutcome::QueuedAfterDropping(dropped_count + 1);
            }
        }
        self.pending_bytes += incoming;
        self.pending
            .push_back((sub_id, Queued::Encoded(frame, published_ns)));
        if dropped_count > 0 {
            EnqueueOutcome::QueuedAfterDropping(dropped_count)
        } else {
            EnqueueOutcome::Queued
        }
    }

    /// Writes a delivery straight into the write buffer with `stage` (as the connection's
    /// wire words it), when nothing is queued ahead of it, the buffer holds less than a
    /// chunk unsent, and its `bytes` (as the queue would count them) fit under
    /// `outbound_bytes_max`; otherwise gives it back, to be offered to the queue. This is
    /// what staging would do with it at the next write, minus the queue's push and pop and
    /// the reference the queue would keep meanwhile (in fan-out, two atomic operations a
    /// delivery).
    #[inline]
    pub fn stage_now<'a>(
        &mut self,
        (handoff, bytes): (Handoff<'a>, usize),
        outbound_bytes_max: usize,
        stage: impl FnOnce(&mut Vec<u8>, &Message),
    ) -> Result<(), Handoff<'a>> {
        let message = handoff.message();
        let unsent = self.write_buf.len() - self.written;
        if !self.pending.is_empty()
            || unsent >= self.stage_bytes_max
            || unsent + bytes > outbound_bytes_max
        {
            return Err(handoff);
        }
        if self.staged_oldest_published_ns.is_none() {
            self.staged_oldest_published_ns = Some(live_published_ns(message));
        }
        stage(&mut self.write_buf, message);
        self.staged_now_unwritten += 1;
        Ok(())
    }

    /// Offers a delivery under the slow-consumer policy. The policy looks at every byte
    /// already accepted for this connection, replies included. Under `drop-oldest`,
    /// `dropped` is told the subscription of each delivery lost (the oldest queued ones, or
    /// this one when replies alone fill the queue).
    ///
    /// Inlined so the common case (room left: a length check and a queue push) costs no call
    /// on the fan-out path; the policy is out of line.
    #[inline]
    pub fn offer<'a>(
        &mut self,
        sub_id: u32,
        message: impl Into<Handoff<'a>>,
        outbound_bytes_max: usize,
        policy: SlowConsumerPolicy,
        dropped: impl FnMut(u32),
    ) -> EnqueueOutcome {
        let message = message.into();
        if self.queued_bytes() + message.message().frame_len() <= outbound_bytes_max {
            self.push_delivery(sub_id, message.into_owned());
            return EnqueueOutcome::Queued;
        }
        self.offer_over_limit(sub_id, message, outbound_bytes_max, policy, dropped)
    }

    #[cold]
    #[inline(never)]
    fn offer_over_limit(
        &mut self,
        sub_id: u32,
        message: Handoff<'_>,
        outbound_bytes_max: usize,
        policy: SlowConsumerPolicy,
        mut dropped: impl FnMut(u32),
    ) -> EnqueueOutcome {
        let incoming = message.message().frame_len();
        match policy {
            SlowConsumerPolicy::Disconnect => EnqueueOutcome::SlowConsumer,
            SlowConsumerPolicy::DropOldest => {
                let mut dropped_count = 0;
                while self.queued_bytes() + incoming > outbound_bytes_max {
                    let Some((dropped_sub, _)) = self.pop_oldest_delivery() else {
                        break;
                    };
                    dropped_count += 1;
                    dropped(dropped_sub);
                }
                if self.queued_bytes() + incoming > outbound_bytes_max {
                    // Replies alone fill the queue; the newest delivery is the one lost.
                    dropped(sub_id);
                    return EnqueueOutcome::QueuedAfterDropping(dropped_count + 1);
                }
                self.push_delivery(sub_id, message.into_owned());
                EnqueueOutcome::QueuedAfterDropping(dropped_count)
            }
        }
    }

    /// Queues a GAP notice behind the messages already queued, so `resume_seq` is the next
    /// message the subscription receives. Notices are small and never dropped.
    pub fn push_gap(&mut self, sub_id: u32, (missed, resume_seq): (u64, u64), topic: &str) {
        let gap = Queued::Gap {
            missed,
            resume_seq,
            topic: topic.into(),
        };
        self.pending_bytes += gap.frame_len();
        self.pending.push_back((sub_id, gap));
    }

    /// Nothing waits in line behind the write buffer: bytes appended to it now keep their
    /// order with everything queued.
    pub fn nothing_pending(&self) -> bool {
        self.pending.is_empty()
    }

    /// Bytes that must not overtake queued deliveries (a Redis reply, with the `messages`
    /// lined up behind it that it carries): straight into the write buffer when nothing is
    /// queued, else in line.
    pub fn push_in_order(&mut self, bytes: &[u8], messages: u64) {
        if self.pending.is_empty() {
            self.write_buf.extend_from_slice(bytes);
            self.replies_unsent = true;
            self.staged_uncounted += messages;
        } else {
            self.pending_bytes += bytes.len();
            self.pending
                .push_back((0, Queued::Replies(bytes.into(), messages)));
        }
    }

    /// Queues an encoded notice frame behind the messages already queued. Never dropped.
    pub fn push_notice(&mut self, frame: Box<[u8]>) {
        self.pending_bytes += frame.len();
        self.pending.push_back((0, Queued::Notice(frame)));
    }

    /// The oldest queued message (notices stay in line).
    fn pop_oldest_delivery(&mut self) -> Option<(u32, Queued)> {
        let index = self
            .pending
            .iter()
            .position(|(_, queued)| matches!(queued, Queued::Message(_) | Queued::Encoded(..)))?;
        let (sub_id, queued) = self.pending.remove(index)?;
        self.pending_bytes -= queued.frame_len();
        Some((sub_id, queued))
    }

    /// Drops every queued delivery (the connection is going away); returns how many messages.
    pub fn discard_pending(&mut self) -> u64 {
        let dropped = self
            .pending
            .iter()
            .map(|(_, queued)| match queued {
                Queued::Message(_) | Queued::Encoded(..) => 1,
                Queued::Replies(_, messages) => *messages,
                Queued::Gap { .. } | Queued::Notice(_) => 0,
            })
            .sum::<u64>()
            + std::mem::take(&mut self.abandoned_in_line);
        self.pending.clear();
        self.pending_bytes = 0;
        self.discarded += dropped;
        dropped
    }

    /// Copies queued deliveries into the write buffer, patching each one's subscription id,
    /// until about one chunk is staged. Notices are worded for the connection's `wire`.
    fn stage(&mut self, wire: &Wire) -> u64 {
        // Decided once per pass rather than per message: only a native client older than
        // v4 has header blocks taken out (other wires queue `Encoded` deliveries instead).
        // Each case gets its own copy of the loop, so the common one (no strip) tests
        // nothing per delivery beyond what it did before headers existed.
        // A Redis connection's queued messages are channel deliveries, worded as `message`
        // frames here.
        match wire {
            Wire::Native { version } if native::strips_headers(*version) => {
                self.stage_with::<true, false>(wire)
            }
            Wire::Resp(_) => self.stage_with::<false, true>(wire),
            _ => self.stage_with::<false, false>(wire),
        }
    }

    fn stage_with<const STRIP_HEADERS: bool, const RESP: bool>(&mut self, wire: &Wire) -> u64 {
        let resp_version = match wire {
            Wire::Resp(session) => session.version(),
            _ => RespVersion::Resp2,
        };
        let mut staged = 0;
        while self.write_buf.len() - self.written < self.stage_bytes_max {
            let Some((sub_id, queued)) = self.pending.pop_front() else {
                break;
            };
            self.pending_bytes -= queued.frame_len();
            match queued {
                Queued::Message(message) if RESP => {
                    super::conn_resp::stage_message(&mut self.write_buf, resp_version, &message);
                    staged += 1;
                }
                Queued::Message(message) => {
                    native::stage_msg(&mut self.write_buf, message.frame(), sub_id, STRIP_HEADERS);
                    staged += 1;
                }
                Queued::Encoded(frame, _) => {
                    self.write_buf.extend_from_slice(&frame);
                    staged += 1;
                }
                Queued::Gap {
                    missed,
                    resume_seq,
                    topic,
                } => {
                    wire.encode_gap(sub_id, (missed, resume_seq), &topic, &mut self.write_buf);
                    self.replies_unsent = true;
                }
                Queued::Notice(frame) => {
                    self.write_buf.extend_from_slice(&frame);
                    self.replies_unsent = true;
                }
                Queued::Replies(frame, messages) => {
                    self.write_buf.extend_from_slice(&frame);
                    self.replies_unsent = true;
                    staged += messages;
                }
            }
        }
        staged
    }

    /// Words every queued channel delivery of a Redis connection as a `message` frame of
    /// `version` now, rather than when staged: for a client about to switch versions
    /// (`HELLO`, `RESET`), whose earlier deliveries must keep the version they were sent in.
    pub fn word_resp_messages(&mut self, version: RespVersion) {
        for (_, queued) in self.pending.iter_mut() {
            if let Queued::Message(message) = queued {
                let mut frame = Vec::new();
                super::conn_resp::stage_message(&mut frame, version, message);
                self.pending_bytes = self.pending_bytes - message.frame_len() + frame.len();
                *queued = Queued::Encoded(frame.into(), live_published_ns(message));
            }
        }
    }

    /// Writes until everything is out, the socket would block or a write fails (the
    /// progress then says how; what went out before the failure is counted all the same).
    pub fn write_to<W: Write>(&mut self, socket: &mut W, wire: &Wire) -> WriteProgress {
        let mut progress = WriteProgress {
            oldest_published_ns: self.oldest_unwritten_published_ns(),
            deliveries: std::mem::take(&mut self.staged_uncounted)
                + std::mem::take(&mut self.staged_now_unwritten),
            ..WriteProgress::default()
        };
        loop {
            progress.deliveries += self.stage(wire);
            if self.written == self.write_buf.len() {
                self.write_buf.clear();
                self.written = 0;
                self.replies_unsent = false;
                progress.drained = true;
                if self.write_buf.capacity() > WRITE_BUF_RESTING_BYTES {
                    if progress.bytes < (self.write_buf.capacity() / 8) as u64 {
                        self.quiet_drains += 1;
                    } else {
                        self.quiet_drains = 0;
                    }
                    if self.quiet_drains >= QUIET_DRAINS_BEFORE_SHRINK {
                        self.write_buf.shrink_to(WRITE_BUF_RESTING_BYTES);
                        self.quiet_drains = 0;
                    }
                }
                return progress;
            }
            match socket.write(&self.write_buf[self.written..]) {
                Ok(0) => {
                    progress.failed = Some(io::ErrorKind::WriteZero.into());
                    return progress;
                }
                Ok(n) => {
                    self.written += n;
                    progress.bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.compact();
                    progress.would_block = true;
                    return progress;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    progress.failed = Some(e);
                    return progress;
                }
            }
        }
    }

    /// The in-process counterpart of [`Outbound::write_to`]: hands what is queued to a
    /// handle's event ring, in the order a socket would carry it (replies and notices in the
    /// write buffer first, then queued deliveries, each the shared message itself). A full
    /// ring is this connection's full socket: what is left stays queued, under the same
    /// slow-consumer policy, until the handle makes room and rings.
    pub(crate) fn hand_over(&mut self, ends: &mut ShardEnds) -> WriteProgress {
        let (direct, direct_bytes) = std::mem::take(&mut ends.handed_directly);
        let mut progress = WriteProgress {
            deliveries: direct,
            bytes: direct_bytes,
            ..WriteProgress::default()
        };
        let handed = self.hand_over_queued(ends, &mut progress) || direct > 0;
        if handed {
            ends.state.to_handle.notify();
        }
        progress
    }

    fn hand_over_queued(&mut self, ends: &mut ShardEnds, progress: &mut WriteProgress) -> bool {
        let mut handed = false;
        if let Some(event) = ends.waiting.take() {
            if let Err(event) = ends.offer(event) {
                ends.waiting = Some(event);
                progress.would_block = true;
                return false;
            }
            handed = true;
        }
        while self.written < self.write_buf.len() {
            // Only this module's own native frames are in the buffer.
            let Ok(Some((frame, len))) =
                native::decode(&self.write_buf[self.written..], usize::MAX)
            else {
                self.written = self.write_buf.len();
                break;
            };
            if let Some(event) = frame_event(frame) {
                if ends.offer(event).is_err() {
                    progress.would_block = true;
                    return handed;
                }
                handed = true;
            }
            self.written += len;
            progress.bytes += len as u64;
        }
        self.write_buf.clear();
        self.written = 0;
        self.replies_unsent = false;
        while let Some((sub_id, queued)) = self.pending.pop_front() {
            let len = queued.frame_len();
            let event = match queued {
                Queued::Message(message) => match ends.offer(Event::Message { sub_id, message }) {
                    Ok(()) => {
                        progress.deliveries += 1;
                        None
                    }
                    Err(Event::Message { message, .. }) => {
                        self.pending.push_front((sub_id, Queued::Message(message)));
                        progress.would_block = true;
                        return handed;
                    }
                    Err(_) => None,
                },
                Queued::Gap {
                    missed,
                    resume_seq,
                    topic,
                } => Some((
                    Event::Gap { missed, resume_seq },
                    Queued::Gap {
                        missed,
                        resume_seq,
                        topic,
                    },
                )),
                Queued::Notice(frame) => {
                    let event = match native::decode(&frame, usize::MAX) {
                        Ok(Some((frame, _))) => frame_event(frame),
                        _ => None,
                    };
                    event.map(|event| (event, Queued::Notice(frame)))
                }
                // Text-protocol encodings are never queued for a handle.
                Queued::Encoded(..) | Queued::Replies(..) => None,
            };
            if let Some((event, queued)) = event {
                if ends.offer(event).is_err() {
                    self.pending.push_front((sub_id, queued));
                    progress.would_block = true;
                    return handed;
                }
            }
            handed = true;
            self.pending_bytes -= len;
            progress.bytes += len as u64;
        }
        progress.drained = true;
        handed
    }

    /// The publish timestamp of the oldest delivery this write carries, if it is a first,
    /// live delivery: the one latency sample a write takes, looked up once per write and not
    /// per message. Redeliveries and replays take none. The oldest is the first staged at
    /// once since the last write (anything queued waited behind it), else the queue's front.
    fn oldest_unwritten_published_ns(&mut self) -> Option<u64> {
        let published_ns = match (self.staged_oldest_published_ns.take(), self.pending.front()) {
            (Some(published_ns), _) => published_ns,
            (None, Some((_, Queued::Message(message)))) => live_published_ns(message),
            (None, Some((_, Queued::Encoded(_, published_ns)))) => *published_ns,
            (None, _) => return None,
        };
        (published_ns > self.history_through_ns).then_some(published_ns)
    }

    /// A replay reaching back to messages published at `published_ns` was queued.
    pub fn note_history_through(&mut self, published_ns: u64) {
        self.history_through_ns = self.history_through_ns.max(published_ns);
    }

    /// Keeps a partly written buffer from creeping forward forever: once the written part is
    /// half the buffer, so what has gone out never holds more memory than what has not, and
    /// each byte is moved at most once per write that crossed it.
    fn compact(&mut self) {
        if self.written > 0 && self.written * 2 >= self.write_buf.len() {
            self.write_buf.drain(..self.written);
            self.written = 0;
        }
    }
}

/// What one flush achieved.
#[derive(Debug, Default)]
pub struct WriteProgress {
    pub bytes: u64,
    pub deliveries: u64,
    /// The publish timestamp of the first delivery this write staged (the one that waited
    /// longest), when a delivery was first in line.
    pub oldest_published_ns: Option<u64>,
    /// Everything queued was written.
    pub drained: bool,
    /// The socket is full; wait for a writable event before trying again.
    pub would_block: bool,
    /// A write failed (the peer is gone): the connection is to be closed.
    pub failed: Option<io::Error>,
}

#[cfg(test)]
impl WriteProgress {
    fn checked(self) -> WriteProgress {
        assert!(self.failed.is_none(), "the write failed: {:?}", self.failed);
        self
    }
}

/// The event a native frame in an in-process connection's write buffer stands for.
fn frame_event(frame: native::Frame<'_>) -> Option<Event> {
    let error = |code: u16, message: &[u8]| ServerError {
        code_raw: code,
        message: String::from_utf8_lossy(message).into_owned(),
    };
    Some(match frame {
        native::Frame::Ok { request_id, data } => Event::Reply {
            request_id,
            result: Ok(ReplyData::new(data)),
        },
        native::Frame::Err {
            request_id: 0,
            code,
            message,
        } => Event::Notice(error(code, message)),
        native::Frame::Err {
            request_id,
            code,
            message,
        } => Event::Reply {
            request_id,
            result: Err(error(code, message)),
        },
        native::Frame::Dropped { count, .. } => Event::Dropped { count },
        native::Frame::Ended { code, message, .. } => Event::Ended {
            error: error(code, message),
        },
        native::Frame::Gap {
            missed, resume_seq, ..
        } => Event::Gap { missed, resume_seq },
        _ => return None,
    })
}

/// What carries a connection's bytes or messages.
pub(crate) enum Transport {
    Tcp(TcpStream),
    /// An in-process handle of [`crate::bus`]: rings instead of a socket.
    InProcess(Box<ShardEnds>),
}

impl Transport {
    /// The socket's own address (a system call: for rare requests, `CLIENT KILL LADDR`).
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Transport::Tcp(socket) => socket.local_addr().ok(),
            Transport::InProcess(_) => None,
        }
    }
}

pub struct Connection {
    pub(crate) socket: Transport,
    pub id: ConnectionId,
    pub peer: SocketAddr,
    pub state: ConnState,
    /// The protocol it speaks, and what it negotiated (for native, the version HELLO chose,
    /// which decides which options and frames this client may see).
    pub wire: Wire,
    pub client_name: String,
    pub read: ReadBuffer,
    pub out: Outbound,
    pub subscriptions: AHashMap<u32, SubscriptionRecord>,
    /// Some subscription has drops to report.
    pub drops_unreported: bool,
    /// Already in the shard's list of connections to flush this turn.
    pub dirty: bool,
    /// Stopped mid-buffer because the work it would add has nowhere to go (a full outbox);
    /// already in the shard's list of blocked connections.
    pub blocked: bool,
    /// The pause about to start waits on the connection's own requests (a Redis pipeline
    /// with too many replies owed, or a stats gather in turn), not on backpressure, so it
    /// does not count in `ring_full_pauses`.
    pub paused_for_own_requests: bool,
    /// The socket may still hold bytes (the read budget ran out, or reading paused).
    pub read_more: bool,
    /// The last write hit a full socket: writing again before the writable event that
    /// `mio` sends when room frees would only cost a failed syscall per delivery.
    pub write_blocked: bool,
    /// It has sent a publish: no delivery is staged into it at once (see
    /// [`Connection::enqueue_delivery`]).
    pub publishes: bool,
    /// Where its last publish found its topic in this shard's table, tried first for the
    /// next (see [`super::topics::OwnedTopics::publishable_at`]).
    pub topic_hint: TopicHint,
    /// Queued bytes went past the publisher stall watermark (listed in the shard's
    /// `pressured`).
    pub over_watermark: bool,
    /// A stall for it ran its whole bound with no progress: it no longer holds publishers
    /// back until it drains below the low mark, so a subscriber that has stopped reading
    /// meets the slow-consumer limit instead of stalling others again.
    pub stall_spent: bool,
    /// Topics whose deliveries from other shards pressed it past the watermark, with when
    /// their owners were last told (Unix ns): renewed while it stays pressed.
    pub pressed_topics: ahash::AHashMap<Box<str>, u64>,
    /// Paused until then for a pressed topic it publishes to (see `Shard::stall_lease`).
    pub lease_until: Option<std::time::Instant>,
    /// Bytes written to the socket (or handed to an in-process handle) over its life.
    pub written_total: u64,
    /// When a write last took bytes: a subscriber written within `--write-coalesce-us`
    /// waits for more before the next (see `Shard::flush_dirty`).
    pub last_written_at: Option<std::time::Instant>,
    /// `written_total` when a stall last looked: a pressed subscriber that wrote since has
    /// made progress, however much its publishers added meanwhile.
    pub written_at_stall_look: u64,
    /// [`Connection::unacknowledged_bytes`] when a stall last looked: fewer since means the
    /// peer read, even if no writable event has come yet.
    pub unacknowledged_at_stall_look: Option<u32>,
    /// When it went past the stall watermark (valid while `over_watermark`): only one
    /// pressed for a whole bound is made `stall_spent` when a stall runs out.
    pub pressed_since: std::time::Instant,
    /// Not read until the shard's stall for it ends (it fed a subscriber past the watermark).
    pub read_stalled: bool,
    /// `--publish-rate`'s token bucket for this connection.
    pub publish_bucket: TokenBucket,
    /// Counted among its address's half-open connections (accepted, handshake not done).
    pub half_open: bool,
    /// When the input the read buffer holds (incomplete: a frame, request or message that
    /// has started) began arriving; None when the buffer holds nothing, or only whole frames
    /// the broker has not processed yet (it is the one waiting then). `--frame-deadline-ms`.
    pub partial_since: Option<std::time::Instant>,
    /// A native STATS being gathered from the shards (one at a time per connection).
    pub stats_gather: Option<Box<super::stats::NativeStatsGather>>,
}

/// The publish timestamp a latency sample would use: 0 (none) for a redelivery.
fn live_published_ns(message: &Message) -> u64 {
    if message.delivery_count() == 1 {
        message.timestamp_ns()
    } else {
        0
    }
}

/// No staging at once: for [`Connection::stage_or_queue`], the delivery goes to the queue.
const NOT_AT_ONCE: Option<fn(&mut Vec<u8>, &Message)> = None;

/// Records a delivery lost under `drop-oldest` on its subscription, for a DROPPED notice.
fn drop_recorder<'a>(
    subscriptions: &'a mut AHashMap<u32, SubscriptionRecord>,
    drops_unreported: &'a mut bool,
) -> impl FnMut(u32) + 'a {
    |dropped_sub| {
        if let Some(record) = subscriptions.get_mut(&dropped_sub) {
            record.dropped_unreported += 1;
            *drops_unreported = true;
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up. Sans-IO: the time is an
/// argument.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokenBucket {
    tokens: f64,
    last_ns: Option<u64>,
}

impl TokenBucket {
    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now_ns: u64, rate: u64, burst: u64) -> Result<(), std::time::Duration> {
        let capacity = burst.max(1) as f64;
        let elapsed_ns = self
            .last_ns
            .map_or(u64::MAX, |last| now_ns.saturating_sub(last));
        self.last_ns = Some(now_ns);
        let refill = elapsed_ns as f64 * rate as f64 / 1e9;
        self.tokens = (self.tokens + refill).min(capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let missing = 1.0 - self.tokens;
        Err(std::time::Duration::from_secs_f64(
            missing / rate.max(1) as f64,
        ))
    }
}

impl Connection {
    pub fn new(
        socket: TcpStream,
        id: ConnectionId,
        peer: SocketAddr,
        read_chunk_bytes: usize,
        outbound_bytes_max: usize,
    ) -> Self {
        Connection::over(
            Transport::Tcp(socket),
            (id, peer),
            read_chunk_bytes,
            outbound_bytes_max,
        )
    }

    /// A connection for an in-process handle: open at once (no handshake), no address.
    pub(crate) fn in_process(
        ends: Box<ShardEnds>,
        id: ConnectionId,
        outbound_bytes_max: usize,
    ) -> Self {
        Connection {
            state: ConnState::Open,
            wire: Wire::InProcess,
            half_open: false,
            ..Connection::over(
                Transport::InProcess(ends),
                (id, SocketAddr::from(([0, 0, 0, 0], 0))),
                0,
                outbound_bytes_max,
            )
        }
    }

    /// A new connection over `socket`, in its handshake: every field in one place, so a
    /// field added later cannot be forgotten by one kind of connection.
    fn over(
        socket: Transport,
        (id, peer): (ConnectionId, SocketAddr),
        read_chunk_bytes: usize,
        outbound_bytes_max: usize,
    ) -> Self {
        Connection {
            socket,
            id,
            peer,
            state: ConnState::Handshaking,
            wire: Wire::Native { version: 0 },
            client_name: String::new(),
            read: ReadBuffer::new(read_chunk_bytes),
            out: Outbound::new(WRITE_CHUNK_BYTES.min(outbound_bytes_max / 2).max(1)),
            subscriptions: AHashMap::new(),
            drops_unreported: false,
            dirty: false,
            blocked: false,
            paused_for_own_requests: false,
            read_more: false,
            write_blocked: false,
            publishes: false,
            topic_hint: TopicHint::default(),
            over_watermark: false,
            stall_spent: false,
            pressed_topics: ahash::AHashMap::new(),
            lease_until: None,
            written_total: 0,
            last_written_at: None,
            written_at_stall_look: 0,
            unacknowledged_at_stall_look: None,
            pressed_since: std::time::Instant::now(),
            read_stalled: false,
            publish_bucket: TokenBucket::default(),
            half_open: true,
            partial_since: None,
            stats_gather: None,
        }
    }

    /// Offers a delivery under the slow-consumer policy (see [`Outbound::offer`]); drops are
    /// recorded on their subscriptions, to be reported with DROPPED notices. A native
    /// connection and a message's first Redis channel subscriber queue the message itself
    /// (the Redis one is worded as it is staged, and counted at the MSG frame's length
    /// against `--outbound-bytes-max`); further Redis channel subscribers and other text
    /// formats get the shard's one encoding of it from `events`, counted at its own length.
    /// The two lengths differ by the framing and the header block, which a Redis client is
    /// not sent: a message with large headers counts for more on its first subscriber.
    ///
    /// A delivery goes straight into the write buffer when nothing is queued ahead of it
    /// (see [`Outbound::stage_now`]), except to a connection that has published (the answer
    /// to a publish goes ahead of the deliveries it causes to the publisher itself, on
    /// whichever shard the topic lives), one whose last write hit a full socket (what waits
    /// for it stays droppable, and is not counted as delivered at close), or one with drops
    /// to report first.
    #[inline]
    pub fn enqueue_delivery(
        &mut self,
        sub_id: u32,
        handoff: Handoff<'_>,
        events: &mut EventCache,
        limits: (usize, SlowConsumerPolicy),
    ) -> EnqueueOutcome {
        let (outbound_bytes_max, policy) = limits;
        let message = handoff.message();
        let frame_len = message.frame_len();
        let stage_now = !self.publishes && !self.write_blocked && !self.drops_unreported;
        if let Wire::Resp(session) = &mut self.wire {
            // After QUIT (or a fatal error) with nothing before it unanswered, nothing more is
            // owed: Redis sends nothing after QUIT's `+OK`. While a request read before it
            // still waits, a message lines up ahead of that `+OK` (below).
            if session.closing() && !session.replies_in_line() {
                return EnqueueOutcome::Queued;
            }
            if session.replies_in_line() {
                let queued_elsewhere = self.out.queued_bytes();
                let lined_up = session.line_up_delivery(
                    events,
                    (sub_id, message),
                    queued_elsewhere,
                    outbound_bytes_max,
                );
                return match (lined_up, policy) {
                    (true, _) => EnqueueOutcome::Queued,
                    (false, SlowConsumerPolicy::Disconnect) => EnqueueOutcome::SlowConsumer,
                    // Messages in line wait on a reply, not on the client: the newest is lost.
                    (false, SlowConsumerPolicy::DropOldest) => {
                        drop_recorder(&mut self.subscriptions, &mut self.drops_unreported)(sub_id);
                        EnqueueOutcome::QueuedAfterDropping(1)
                    }
                };
            }
        }
        // One test of the wire per delivery: the native (and common) case queues the message
        // itself, and skips the epoch lookup, a hash probe only a WebSocket event (its
        // derived id) needs.
        let frame = match &self.wire {
            Wire::WebSocket(session) => {
                let epoch = self.subscriptions.get(&sub_id).map_or(0, |r| r.epoch);
                Shard::ws_event_frame(events, session, sub_id, (message, epoch))
            }
            Wire::Resp(session) => match session.encoded_delivery(events, sub_id, message) {
                Some(frame) => frame,
                None => {
                    let version = session.version();
                    let stage_resp = |buf: &mut Vec<u8>, message: &Message| {
                        super::conn_resp::stage_message(buf, version, message)
                    };
                    let stage = stage_now.then_some(stage_resp);
                    return self.stage_or_queue(sub_id, (handoff, frame_len), stage, limits);
                }
            },
            // Nothing queued ahead of it: straight into the handle's ring, as a socket
            // write would go straight out, instead of through the queue and a second hand-over
            // at the flush. A full ring leaves it to the queue and the policy, as before.
            Wire::InProcess if self.out.is_empty() && !self.drops_unreported => {
                let mut handoff = handoff;
                if let Transport::InProcess(ends) = &mut self.socket {
                    match ends.offer_now(sub_id, handoff.into_owned(), frame_len) {
                        Ok(()) => return EnqueueOutcome::Queued,
                        Err(message) => handoff = Handoff::Last(message),
                    }
                }
                return self.stage_or_queue(sub_id, (handoff, frame_len), NOT_AT_ONCE, limits);
            }
            Wire::Native { version }
                if stage_now
                    && !native::strips_headers(*version)
                    && matches!(self.socket, Transport::Tcp(_)) =>
            {
                let stage_native = |buf: &mut Vec<u8>, message: &Message| {
                    native::stage_msg(buf, message.frame(), sub_id, false)
                };
                return self.stage_or_queue(
                    sub_id,
                    (handoff, frame_len),
                    Some(stage_native),
                    limits,
                );
            }
            _ => return self.stage_or_queue(sub_id, (handoff, frame_len), NOT_AT_ONCE, limits),
        };
        // Worded already (a WebSocket event, a Redis frame shared by several subscribers):
        // staged at once on the same terms as a message.
        if stage_now && matches!(self.socket, Transport::Tcp(_)) {
            let stage_frame = |buf: &mut Vec<u8>, _: &Message| buf.extend_from_slice(&frame);
            if self
                .out
                .stage_now(
                    (Handoff::Shared(message), frame.len()),
                    outbound_bytes_max,
                    stage_frame,
                )
                .is_ok()
            {
                return EnqueueOutcome::Queued;
            }
        }
        let dropped = drop_recorder(&mut self.subscriptions, &mut self.drops_unreported);
        self.out.offer_encoded(
            sub_id,
            (frame, live_published_ns(message)),
            outbound_bytes_max,
            policy,
            dropped,
        )
    }

    /// Stages a delivery into the write buffer at once with `stage` when there is one and
    /// the buffer takes it ([`Outbound::stage_now`]), else offers it to the queue under the
    /// slow-consumer policy.
    #[inline]
    fn stage_or_queue(
        &mut self,
        sub_id: u32,
        (handoff, bytes): (Handoff<'_>, usize),
        stage: Option<impl FnOnce(&mut Vec<u8>, &Message)>,
        (outbound_bytes_max, policy): (usize, SlowConsumerPolicy),
    ) -> EnqueueOutcome {
        let handoff = match stage {
            Some(stage) => match self
                .out
                .stage_now((handoff, bytes), outbound_bytes_max, stage)
            {
                Ok(()) => return EnqueueOutcome::Queued,
                Err(handoff) => handoff,
            },
            None => handoff,
        };
        let dropped = drop_recorder(&mut self.subscriptions, &mut self.drops_unreported);
        self.out
            .offer(sub_id, handoff, outbound_bytes_max, policy, dropped)
    }

    /// Appends a DROPPED notice for each subscription with unreported drops. Called only when
    /// the write buffer is empty, so a stuck subscriber's counts add up in one notice instead
    /// of filling its queue with notices.
    pub fn report_drops(&mut self) {
        if !self.drops_unreported || !self.out.write_buf_is_empty() {
            return;
        }
        self.drops_unreported = false;
        for (&sub_id, record) in self.subscriptions.iter_mut() {
            if record.dropped_unreported > 0 {
                self.wire
                    .encode_dropped(sub_id, record.dropped_unreported, self.out.replies());
                record.dropped_unreported = 0;
            }
        }
    }

    pub fn is_closing(&self) -> bool {
        matches!(self.state, ConnState::Closing(_))
    }

    /// Queues the answer to request `request_id` (ahead of queued deliveries). A WebSocket
    /// connection's own end (request 0: shutdown, a slow-consumer cut) waits in line behind
    /// the events already queued, which go out first.
    pub fn answer(&mut self, request_id: u32, answer: Answer<'_>) {
        match &mut self.wire {
            Wire::WebSocket(session) if request_id == 0 => {
                let mut notice = Vec::new();
                session.encode_answer(request_id, answer, &mut notice);
                self.out.push_notice(notice.into_boxed_slice());
            }
            Wire::Resp(session) => {
                // The common case, a PUBLISH answered in turn with nothing else owed or
                // queued: its `:N` straight into the write buffer, not through the session's
                // output and the queue (about 90 instructions a publish less, callgrind).
                if let Answer::Published(published) = &answer {
                    if self.out.nothing_pending() && session.take_sole_publish_slot(request_id) {
                        let receivers = i64::from(published.receivers);
                        crate::protocol::resp::encode_integer(self.out.replies(), receivers);
                        return;
                    }
                }
                session.encode_answer(request_id, answer);
                self.queue_resp_output();
            }
            wire => wire.encode_answer(request_id, answer, self.out.replies()),
        }
    }

    /// Queues a RESP session's ready replies, in order behind what is queued already.
    pub fn queue_resp_output(&mut self) {
        if let Wire::Resp(session) = &mut self.wire {
            let (sent, abandoned) = session.take_line_counts();
            match session.output() {
                Some(ready) => {
                    self.out.push_in_order(ready, sent);
                    session.clear_output();
                }
                // Not reached with messages: those sent from the line are in the output.
                None if sent > 0 => self.out.push_in_order(&[], sent),
                None => {}
            }
            self.out.count_abandoned_in_line(abandoned);
        }
    }

    /// Queues the notice that the broker ended subscription `sub_id`, behind what is queued
    /// for it, so nothing for it follows.
    pub fn push_ended(&mut self, sub_id: u32, code: ErrorCode, reason: &str) {
        let mut notice = Vec::new();
        self.wire.encode_ended(sub_id, code, reason, &mut notice);
        // Behind the messages lined up for it on a Redis connection waiting on a reply; not
        // at all once it quit (its subscriptions end with it, and nothing follows `+OK`).
        if let Wire::Resp(session) = &mut self.wire {
            if session.closing() {
                return;
            }
            if session.replies_in_line() {
                session.line_up_notice(notice);
                return;
            }
        }
        self.out.push_notice(notice.into_boxed_slice());
    }

    /// What is queued for the peer, with the messages a Redis connection has lined up behind
    /// a waiting reply: what the slow-consumer watermark and stall look at.
    pub fn queued_bytes(&self) -> usize {
        let lined_up = match &self.wire {
            Wire::Resp(session) => session.lined_up_bytes(),
            _ => 0,
        };
        self.out.queued_bytes() + lined_up
    }

    /// Bytes the kernel still holds for the peer (written, not yet acknowledged), on Linux.
    /// A socket wakes its writer only once half its send buffer is free, which for a peer
    /// reading slowly through a large buffer can take longer than a stall's bound: this queue
    /// shrinking is how the stall sees it read meanwhile. One ioctl, asked only of pressed
    /// subscribers while a stall is on.
    pub fn unacknowledged_bytes(&self) -> Option<u32> {
        #[cfg(target_os = "linux")]
        if let Transport::Tcp(socket) = &self.socket {
            use std::os::fd::AsRawFd;
            let mut queued: libc::c_int = 0;
            // SAFETY: SIOCOUTQ (TIOCOUTQ on sockets) writes one int through the pointer,
            // which is valid for the call; the descriptor is this connection's open socket.
            let status = unsafe { libc::ioctl(socket.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
            if status == 0 {
                return u32::try_from(queued).ok();
            }
        }
        None
    }

    /// Reads once into the buffer and returns how many bytes came. `Ok(0)` means the peer
    /// closed its end. `text_bytes_max` bounds what a text protocol's buffer may grow to (a
    /// native frame announces its size).
    ///
    /// The caller reads on until WouldBlock, even after a read that gave less than it asked
    /// for. Taking a short read to mean "empty, wait for the next readiness event" saved a
    /// syscall a turn, but under load it starved publishers: with two writing as fast as
    /// they could, in about half the runs one was read at a fiftieth of the other's rate for
    /// seconds (its receive window never grew), and 0.1% of all messages arrived 2 to 3 s late
    /// (`ss -tni` on the broker's sockets; reading to WouldBlock, both were read alike).
    pub fn read_once(
        &mut self,
        (text_bytes_max, frame_bytes_max): (usize, usize),
    ) -> io::Result<usize> {
        let spare = if self.wire.is_native() {
            self.read.spare(frame_bytes_max)
        } else {
            self.read.spare_for_text(text_bytes_max)
        };
        let Transport::Tcp(socket) = &mut self.socket else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let bytes = socket.read(spare)?;
        self.read.commit(bytes);
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload_len: usize) -> Message {
        let mut scratch = Vec::new();
        let mut message = Message::from_publish(&mut scratch, "t", None, &vec![b'x'; payload_len]);
        message.stamp(1, 7);
        message
    }

    /// A writer that accepts at most `capacity` bytes in total, then would block.
    struct ChokedSocket {
        written: Vec<u8>,
        capacity: usize,
    }

    impl Write for ChokedSocket {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let room = self.capacity - self.written.len();
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = room.min(buf.len());
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_handle_gets_replies_first_then_the_shared_messages_and_a_full_ring_keeps_the_rest() {
        use crate::bus::link::{test_pair, Event, LinkSizes};
        let (handle, mut ends, _rings, _poll) = test_pair(LinkSizes {
            command_slots: 1,
            event_slots: 3,
        });
        let mut out = Outbound::new(WRITE_CHUNK_BYTES);
        let published = message(4);
        for _ in 0..3 {
            out.offer(
                1,
                &published,
                1 << 20,
                SlowConsumerPolicy::Disconnect,
                |_| {},
            );
        }
        out.push_gap(1, (2, 9), "t");
        Wire::InProcess.encode_answer(5, Answer::Done, out.replies());
        let progress = out.hand_over(&mut ends);
        assert!(progress.would_block && !progress.drained);
        assert_eq!(progress.deliveries, 2);
        assert!(matches!(
            handle.try_event(),
            Some(Event::Reply {
                request_id: 5,
                result: Ok(_)
            })
        ));
        for _ in 0..2 {
            match handle.try_event() {
                Some(Event::Message { sub_id, message }) => {
                    assert_eq!(sub_id, 1);
                    assert!(message.shares_frame(&published), "no copy");
                }
                other => panic!("expected a message, got {other:?}"),
            }
        }
        let progress = out.hand_over(&mut ends);
        assert!(progress.drained);
        assert_eq!(progress.deliveries, 1);
        assert!(matches!(handle.try_event(), Some(Event::Message { .. })));
        assert!(matches!(
            handle.try_event(),
            Some(Event::Gap {
                missed: 2,
                resume_seq: 9
            })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn a_delivery_with_nothing_ahead_goes_straight_to_the_ring_and_one_behind_a_reply_waits() {
        use crate::bus::link::{test_pair, Event, LinkSizes};
        use crate::ids::ConnectionId;
        let (handle, ends, _rings, _poll) = test_pair(LinkSizes {
            command_slots: 1,
            event_slots: 2,
        });
        let id = ConnectionId {
            index: 0,
            generation: 0,
        };
        let mut conn = Connection::in_process(ends, id, 1 << 20);
        let mut events = super::super::conn_ws::EventCache::default();
        let limits = (1 << 20, SlowConsumerPolicy::Disconnect);
        let published = message(4);
        // Nothing queued: in the ring at once, counted (and the handle woken) at the flush.
        conn.enqueue_delivery(1, (&published).into(), &mut events, limits);
        assert!(conn.out.is_empty());
        assert!(matches!(
            handle.try_event(),
            Some(Event::Message { sub_id: 1, .. })
        ));
        // A reply ahead: the delivery queues behind it and keeps its place.
        Wire::InProcess.encode_answer(5, Answer::Done, conn.out.replies());
        conn.enqueue_delivery(1, (&published).into(), &mut events, limits);
        assert!(!conn.out.is_empty(), "queued behind the reply");
        let Transport::InProcess(ends) = &mut conn.socket else {
            panic!("an in-process connection");
        };
        let progress = conn.out.hand_over(ends);
        assert_eq!(progress.deliveries, 2, "the direct one and the queued one");
        assert!(progress.drained);
        assert!(matches!(
            handle.try_event(),
            Some(Event::Reply { request_id: 5, .. })
        ));
        assert!(matches!(handle.try_event(), Some(Event::Message { .. })));
        // A full ring: the delivery falls back to the queue, under the policy.
        for _ in 0..3 {
            conn.enqueue_delivery(1, (&published).into(), &mut events, limits);
        }
        assert!(!conn.out.is_empty(), "the third waits for room");
        assert!(handle.try_event().is_some() && handle.try_event().is_some());
        assert!(handle.try_event().is_none());
    }

    /// A frame limit for the read buffer tests, far above their frames.
    const LIMIT: usize = 1 << 20;

    #[test]
    fn read_buffer_grows_for_a_large_frame_and_shrinks_back() {
        let mut buffer = ReadBuffer::new(16);
        let big = 100u32;
        buffer.spare(LIMIT)[..4].copy_from_slice(&big.to_be_bytes());
        buffer.commit(4);
        assert!(buffer.spare(LIMIT).len() >= 100);
        buffer.commit(100);
        assert_eq!(buffer.filled().len(), 104);
        buffer.consume(104);
        assert!(buffer.is_empty());
        assert_eq!(buffer.spare(LIMIT).len(), 16);
    }

    #[test]
    fn a_grown_read_buffer_that_never_ran_empty_shrinks_once_drained() {
        // A text protocol's buffer doubles while a long request arrives.
        let mut buffer = ReadBuffer::new(16);
        for _ in 0..3 {
            let n = buffer.spare_for_text(1024).len();
            buffer.commit(n);
        }
        assert_eq!(buffer.capacity(), 64);
        // The request ends two bytes short of the end: the next one has begun, so the buffer
        // never runs empty.
        let before = buffer.consumed_total();
        buffer.consume(62);
        assert_eq!(buffer.consumed_total(), before + 62);
        assert_eq!(buffer.capacity(), 64);
        buffer.shrink_when_idle(false);
        assert_eq!((buffer.capacity(), buffer.filled().len()), (16, 2));
        // A large frame still arriving keeps its room.
        let mut large = ReadBuffer::new(16);
        large.spare(LIMIT)[..4].copy_from_slice(&100u32.to_be_bytes());
        large.commit(4);
        large.spare(LIMIT);
        large.shrink_when_idle(true);
        assert!(large.capacity() >= 104);
    }

    /// Regression: text waiting to be sniffed (`POST` cut after four bytes) read as a
    /// 1.3 GB frame and the buffer was grown to that, seconds of zeroing per connection.
    #[test]
    fn read_buffer_never_grows_for_a_length_above_the_limit() {
        let mut buffer = ReadBuffer::new(16);
        buffer.spare(LIMIT)[..4].copy_from_slice(b"POST");
        buffer.commit(4);
        assert_eq!(buffer.spare(LIMIT).len(), 12);
        assert_eq!(buffer.capacity(), 16);
        buffer.shrink_when_idle(true);
        assert_eq!(buffer.capacity(), 16);
    }

    #[test]
    fn read_buffer_compacts_a_partial_frame_to_the_front() {
        let mut buffer = ReadBuffer::new(16);
        let spare = buffer.spare(LIMIT);
        spare[..16].copy_from_slice(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 8]);
        buffer.commit(16);
        buffer.consume(12);
        assert_eq!(buffer.filled(), &[0, 0, 0, 8]);
        assert_eq!(buffer.spare(LIMIT).len(), 12);
        assert_eq!(buffer.filled(), &[0, 0, 0, 8]);
    }

    /// A socket that takes `capacity` bytes, then fails as a reset connection does.
    struct FailingSocket {
        taken: usize,
        capacity: usize,
    }

    impl Write for FailingSocket {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.taken == self.capacity {
                return Err(io::ErrorKind::ConnectionReset.into());
            }
            let n = (self.capacity - self.taken).min(buf.len());
            self.taken += n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_buffer_grown_for_a_burst_is_given_back_when_the_burst_is_over() {
        let wire = Wire::Native { version: 4 };
        let mut out = Outbound::new(WRITE_CHUNK_BYTES);
        let mut socket = ChokedSocket {
            written: Vec::new(),
            capacity: usize::MAX,
        };
        for _ in 0..4000 {
            out.push_delivery(1, message(100));
        }
        assert!(out.write_to(&mut socket, &wire).checked().drained);
        let grown = out.write_buf.capacity();
        assert!(grown >= WRITE_CHUNK_BYTES, "staged a whole chunk: {grown}");
        // Busy: another full write keeps it.
        for _ in 0..4000 {
            out.push_delivery(1, message(100));
        }
        out.write_to(&mut socket, &wire).checked();
        assert_eq!(out.write_buf.capacity(), grown);
        // Quiet again: small writes give it back, after a few in a row.
        for _ in 1..QUIET_DRAINS_BEFORE_SHRINK {
            out.push_delivery(1, message(100));
            assert!(out.write_to(&mut socket, &wire).checked().drained);
            assert_eq!(out.write_buf.capacity(), grown);
        }
        out.push_delivery(1, message(100));
        assert!(out.write_to(&mut socket, &wire).checked().drained);
        assert!(out.write_buf.capacity() <= WRITE_BUF_RESTING_BYTES);
    }

    #[test]
    fn a_failed_write_still_reports_what_went_out_before_it() {
        let mut out = Outbound::new(WRITE_CHUNK_BYTES);
        for _ in 0..3 {
            out.push_delivery(1, message(10));
        }
        let mut socket = FailingSocket {
            taken: 0,
            capacity: 50,
        };
        let progress = out.write_to(&mut socket, &Wire::Native { version: 4 });
        assert_eq!(
            progress.failed.as_ref().map(io::Error::kind),
            Some(io::ErrorKind::ConnectionReset)
        );
        assert_eq!(progress.bytes, 50);
        assert_eq!(
            progress.deliveries, 3,
            "staged deliveries count as they did"
        );
        assert!(!progress.drained);
    }

    #[test]
    fn deliveries_carry_their_subscription_id_on_the_wire() {
        let mut out = Outbound::new(WRITE_CHUNK_BYTES);
        out.push_delivery(42, message(3));
        let (progress, written) = write_all_native(&mut out);
        assert!(progress.drained);
        assert_eq!(progress.deliveries, 1);
        let (frame, _) = native::decode(&written, 1 << 20).unwrap().unwrap();
        match frame {
            native::Frame::Msg {
                sub_id, payload, ..
            } => {
                assert_eq!(sub_id, 42);
                assert_eq!(payload, b"xxx");
            }
            other => panic!("expected MSG, got {other:?}"),
        }
    }

    /// Writes everything `out` holds as a native connection would, to a socket that takes it
    /// all; returns the write's progress and the bytes.
    fn write_all_native(out: &mut Outbound) -> (WriteProgress, Vec<u8>) {
        let mut socket = ChokedSocket {
            written: Vec::new(),
            capacity: usize::MAX,
        };
        let progress = out
            .write_to(&mut socket, &Wire::Native { version: 4 })
            .checked();
        (progress, socket.written)
    }

    /// `Outbound::stage_now` as a native connection calls it.
    fn stage(out: &mut Outbound, message: &Message, bytes_max: usize, sub_id: u32) -> bool {
        let stage_native = |buf: &mut Vec<u8>, message: &Message| {
            native::stage_msg(buf, message.frame(), sub_id, false)
        };
        out.stage_now(
            (message.into(), message.frame_len()),
            bytes_max,
            stage_native,
        )
        .is_ok()
    }

    #[test]
    fn a_delivery_with_nothing_queued_ahead_is_staged_at_once_and_counted_by_the_next_write() {
        let mut out = Outbound::new(WRITE_CHUNK_BYTES);
        let first = message(3);
        assert!(stage(&mut out, &first, 1 << 20, 7));
        assert!(stage(&mut out, &message(4), 1 << 20, 8));
        assert_eq!(out.queued_bytes(), first.frame_len() * 2 + 1);
        assert!(out.nothing_pending());
        let (progress, written) = write_all_native(&mut out);
        assert_eq!(progress.deliveries, 2);
        assert_eq!(
            progress.oldest_published_ns,
            Some(7),
            "the first one's time"
        );
        let (frame, used) = native::decode(&written, 1 << 20).unwrap().unwrap();
        assert!(matches!(
            frame,
            native::Frame::Msg {
                sub_id: 7,
                payload: b"xxx",
                ..
            }
        ));
        let (frame, _) = native::decode(&written[used..], 1 << 20).unwrap().unwrap();
        assert!(matches!(
            frame,
            native::Frame::Msg {
                sub_id: 8,
                payload: b"xxxx",
                ..
            }
        ));
        // Counted once: the next write finds nothing more.
        let (progress, _) = write_all_native(&mut out);
        assert_eq!(
            (progress.deliveries, progress.oldest_published_ns),
            (0, None)
        );
    }

    #[test]
    fn a_delivery_behind_queued_ones_or_over_a_limit_is_not_staged_at_once() {
        let mut out = Outbound::new(64);
        // Over the connection's limit: given back for the policy to judge.
        assert!(!stage(&mut out, &message(3), 10, 1));
        out.push_delivery(1, message(3));
        assert!(
            !stage(&mut out, &message(3), 1 << 20, 1),
            "a queued delivery is ahead of it"
        );
        let mut out = Outbound::new(64);
        while out.queued_bytes() < 64 {
            assert!(stage(&mut out, &message(3), 1 << 20, 1));
        }
        assert!(
            !stage(&mut out, &message(3), 1 << 20, 1),
            "a chunk is already staged and unsent"
        );
        // A connection that closes unwritten counts what was staged as undelivered.
        assert_eq!(out.discard_staged_now_unwritten(), 2);
        assert_eq!(out.discarded(), 2);
        assert_eq!(out.discard_pending(), 0);
        assert_eq!(out.take_staged_uncounted(), 0);
    }

    #[test]
    fn a_write_holding_only_deliveries_may_wait_but_one_with_a_reply_may_not() {
        let mut out = Outbound::new(WRITE_CHUNK_BYTES);
        assert!(stage(&mut out, &message(3), 1 << 20, 1));
        assert!(out.holds_no_replies());
        Wire::Native { version: 4 }.encode_answer(5, Answer::Done, out.replies());
        assert!(!out.holds_no_replies());
        let mut socket = ChokedSocket {
            written: Vec::new(),
            capacity: usize::MAX,
        };
        out.write_to(&mut socket, &Wire::Native { version: 4 })
            .checked();
        assert!(out.holds_no_replies(), "the reply went out");
    }

    #[test]
    fn a_reply_staged_from_the_queue_and_left_unsent_is_still_a_reply() {
        let mut out = Outbound::new(WRITE_CHUNK_BYTES);
        out.offer(
            1,
            message(3),
            1 << 20,
            SlowConsumerPolicy::Disconnect,
            |_| {},
        );
        out.push_in_order(b"+OK\r\n", 0);
        let mut socket = ChokedSocket {
            written: Vec::new(),
            capacity: 4,
        };
        assert!(
            out.write_to(&mut socket, &Wire::Native { version: 4 })
                .would_block
        );
        assert!(
            !out.holds_no_replies(),
            "the reply waits in the write buffer"
        );
    }

    #[test]
    fn an_in_process_hand_over_sends_its_replies_with_it() {
        use crate::bus::link::{test_pair, LinkSizes};
        let (handle, mut ends, _rings, _poll) = test_pair(LinkSizes {
            command_slots: 1,
            event_slots: 8,
        });
        let mut out = Outbound::new(WRITE_CHUNK_BYTES);
        Wire::InProcess.encode_answer(5, Answer::Done, out.replies());
        assert!(out.hand_over(&mut ends).drained);
        assert!(handle.try_event().is_some());
        assert!(out.holds_no_replies());
    }

    #[test]
    fn a_write_samples_its_oldest_live_delivery_and_not_history_or_redeliveries() {
        let stamped = |published_ns| {
            let mut scratch = Vec::new();
            let mut message = Message::from_publish(&mut scratch, "t", None, b"x");
            message.stamp(1, published_ns);
            message
        };
        let sample = |out: &mut Outbound| {
            let mut socket = ChokedSocket {
                written: Vec::new(),
                capacity: usize::MAX,
            };
            let wire = Wire::Native { version: 4 };
            out.write_to(&mut socket, &wire)
                .checked()
                .oldest_published_ns
        };
        let mut out = Outbound::new(WRITE_CHUNK_BYTES);
        out.push_delivery(1, stamped(100));
        out.push_delivery(1, stamped(200));
        assert_eq!(sample(&mut out), Some(100));
        assert_eq!(sample(&mut out), None, "nothing was written");
        out.push_delivery(1, stamped(300).redelivery(2));
        assert_eq!(sample(&mut out), None);
        // A replay up to 500 was queued: older deliveries are history.
        out.note_history_through(500);
        out.push_delivery(1, stamped(400));
        assert_eq!(sample(&mut out), None);
        out.push_delivery(1, stamped(600));
        assert_eq!(sample(&mut out), Some(600));
    }

    #[test]
    fn the_publish_bucket_allows_a_burst_then_its_rate_and_says_how_long_to_wait() {
        let mut bucket = TokenBucket::default();
        for _ in 0..5 {
            assert!(bucket.take(0, 10, 5).is_ok());
        }
        let wait = bucket.take(0, 10, 5).unwrap_err();
        assert_eq!(wait.as_millis(), 100, "one token per 100 ms at 10/s");
        assert!(
            bucket.take(50_000_000, 10, 5).is_err(),
            "half a token after 50 ms"
        );
        assert!(bucket.take(100_000_000, 10, 5).is_ok());
        assert!(bucket.take(100_000_000, 10, 5).is_err());
    }

    /// A Redis client that switches to RESP2 (`HELLO 2`) reads the deliveries queued before
    /// the switch in RESP3, as push frames, and those after it as arrays.
    /// Messages released from a Redis connection's line with a reply count where the reply's
    /// bytes go: delivered once written, undelivered if the queue they wait in is discarded.
    #[test]
    fn messages_carried_by_replies_count_where_the_replies_go() {
        let wire = Wire::Native { version: 4 };
        let mut socket = ChokedSocket {
            written: Vec::new(),
            capacity: usize::MAX,
        };
        let mut out = Outbound::new(1 << 16);
        out.push_in_order(b"+OK\r\n", 2);
        assert_eq!(out.write_to(&mut socket, &wire).checked().deliveries, 2);
        // Behind a queued delivery, the replies wait in line with their count.
        out.push_delivery(1, message(1));
        out.push_in_order(b"+OK\r\n", 3);
        assert_eq!(out.discard_pending(), 4);
        out.push_delivery(1, message(1));
        out.push_in_order(b"+OK\r\n", 3);
        assert_eq!(out.write_to(&mut socket, &wire).checked().deliveries, 4);
        out.count_abandoned_in_line(5);
        assert_eq!(out.discard_pending(), 5);
        assert_eq!(out.discarded(), 9);
    }

    #[test]
    fn queued_redis_deliveries_keep_the_version_they_were_queued_under() {
        let mut session = crate::shard::conn_resp::RespSession::new(1, 1 << 20);
        session.set_version_for_tests(RespVersion::Resp3);
        let mut out = Outbound::new(1 << 16);
        out.offer(
            7,
            message(2),
            1 << 20,
            SlowConsumerPolicy::Disconnect,
            |_| {},
        );
        let queued_before = out.queued_bytes();
        out.word_resp_messages(RespVersion::Resp3);
        session.set_version_for_tests(RespVersion::Resp2);
        out.offer(
            7,
            message(2),
            1 << 20,
            SlowConsumerPolicy::Disconnect,
            |_| {},
        );
        assert!(
            out.queued_bytes() > queued_before,
            "the byte count follows the rewording"
        );
        let mut socket = ChokedSocket {
            written: Vec::new(),
            capacity: 1 << 16,
        };
        out.write_to(&mut socket, &Wire::Resp(Box::new(session)))
            .checked();
        let frame = |head: &str| format!("{head}\r\n$7\r\nmessage\r\n$1\r\nt\r\n$2\r\nxx\r\n");
        assert_eq!(
            String::from_utf8(socket.written).unwrap(),
            frame(">3") + &frame("*3")
        );
        assert_eq!(out.queued_bytes(), 0);
    }

    #[test]
    fn discarded_messages_are_tallied_over_every_discard() {
        let mut out = Outbound::new(1 << 16);
        for _ in 0..3 {
            out.offer(
                1,
                message(1),
                1 << 20,
                SlowConsumerPolicy::Disconnect,
                |_| {},
            );
        }
        assert_eq!(out.discard_pending(), 3);
        out.offer(
            1,
            message(1),
            1 << 20,
            SlowConsumerPolicy::Disconnect,
            |_| {},
        );
        assert_eq!(out.discard_pending(), 1);
        assert_eq!(out.discard_pending(), 0);
        assert_eq!(out.discarded(), 4, "the close log reports every discard");
    }

    #[test]
    fn a_gap_notice_keeps_its_place_among_queued_messages_and_is_never_dropped() {
        let mut out = Outbound::new(WRITE_CHUNK_BYTES);
        out.push_delivery(1, message(10));
        out.push_gap(1, (5, 9), "t");
        out.push_delivery(1, message(10));
        // Drop-oldest takes the oldest message, not the notice.
        assert!(out.pop_oldest_delivery().is_some());
        let (progress, written) = write_all_native(&mut out);
        assert_eq!(progress.deliveries, 1);
        let mut rest = &written[..];
        let mut frames = Vec::new();
        while let Some((frame, n)) = native::decode(rest, 1 << 20).unwrap() {
            frames.push(frame.opcode());
            rest = &rest[n..];
        }
        assert_eq!(frames, [native::Opcode::Gap, native::Opcode::Msg]);
        assert!(out.is_empty());
        assert_eq!(out.discard_pending(), 0);
    }

    #[test]
    fn a_choked_socket_keeps_the_rest_queued_in_order() {
        let mut out = Outbound::new(WRITE_CHUNK_BYTES);
        for sub in 0..10 {
            out.push_delivery(sub, message(100));
        }
        let mut socket = ChokedSocket {
            written: Vec::new(),
            capacity: 250,
        };
        let progress = out
            .write_to(&mut socket, &Wire::Native { version: 4 })
            .checked();
        assert!(!progress.drained);
        assert_eq!(progress.bytes, 250);
        socket.capacity = usize::MAX;
        assert!(
            out.write_to(&mut socket, &Wire::Native { version: 4 })
                .checked()
                .drained
        );
        let mut rest = &socket.written[..];
        let mut subs = Vec::new();
        while let Some((native::Frame::Msg { sub_id, .. }, n)) =
            native::decode(rest, 1 << 20).unwrap()
        {
            subs.push(sub_id);
            rest = &rest[n..];
        }
        assert_eq!(subs, (0..10).collect::<Vec<_>>());
        assert!(out.is_empty());
    }
}
