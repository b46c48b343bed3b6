//! A topic's replay ring: the most recent messages its owner keeps, so that a subscriber can
//! start in the past (the last N, from a sequence number, from a time) rather than only at
//! the next publish.
//!
//! The ring is bounded three ways, by message count, total bytes and age, and evicts from
//! the oldest end until all three hold. Its slots are allocated as its history grows,
//! doubling from [`SLOTS_INITIAL`] up to `messages_max` and never shrinking, then reused in a
//! circle: a topic that holds one message costs a few slots, not `messages_max` of them (a
//! client publishing once to each of thousands of names must not pin 32 KiB per name), and a
//! busy topic stops allocating once its ring has grown to the limit. Publishing allocates here
//! only on those doublings, `log2(messages_max)` times in a topic's life at most.
//!
//! The retained messages always form one contiguous run of sequence numbers ending at the
//! newest ever pushed: the window is `last_seq + 1 - len ..= last_seq`. That is what lets a
//! sequence number find its slot by arithmetic, and what lets [`ReplayRing::plan`] state a
//! gap exactly: everything below the window was published and is gone. A message the ring
//! cannot keep (larger than `bytes_max`, or already expired) therefore takes everything older
//! with it; keeping the older ones would leave a hole that a replay would skip silently.
//!
//! Sans-IO: the time is always an argument (`now_ns`) and never read here, so age limits are
//! tested deterministically and the ring can be model-checked.
//!
//! # Where a time-based start lands, and what it reports as missed
//! `FromTimeNs(t)` starts at the first retained message stamped at or after `t`. Whether
//! anything the subscriber asked for is gone is known exactly: the ring remembers the newest
//! timestamp below its window, and since timestamps never decrease, something stamped at or
//! after `t` was lost if and only if that timestamp is `>= t`. How many is not known, because
//! the timestamps of evicted messages are not kept (that would need storage that grows with
//! history). So `missed` is 0 when nothing was lost and otherwise every sequence below the
//! window (`first_seq - 1`): an upper bound, exact when `t` is at or before the topic's first
//! message. A gap notice should never claim less loss than happened, and the subscriber can
//! still see exactly where its replay starts from `first_seq`. Sequences published before the
//! ring saw its first message have unknown timestamps no later than that message's, which
//! stands in for them.

use crate::message::Message;
pub use crate::protocol::subscribe_options::Start;
use crate::protocol::topic_options::TopicOptions;

/// The three bounds on what a topic retains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayLimits {
    /// 0 disables replay: nothing is retained, though sequence numbers are still followed.
    pub messages_max: usize,
    pub bytes_max: usize,
    /// 0 means no age limit.
    pub ttl_ns: u64,
}

impl ReplayLimits {
    /// These limits with a CREATE_TOPIC's overrides applied, refused above the caps
    /// (`--topic-replay-messages-max`, `--topic-replay-bytes-max`) because a topic's slots are
    /// allocated when it is created.
    pub fn overridden(
        self,
        options: &TopicOptions,
        messages_cap: usize,
        bytes_cap: usize,
    ) -> Result<ReplayLimits, &'static str> {
        let capped = |value: Option<u64>, default: usize, cap: usize| match value {
            None => Ok(default),
            Some(value) => usize::try_from(value)
                .ok()
                .filter(|&value| value <= cap)
                .ok_or(()),
        };
        Ok(ReplayLimits {
            messages_max: capped(options.replay_messages_max, self.messages_max, messages_cap)
                .map_err(|()| "REPLAY_MESSAGES is above --topic-replay-messages-max")?,
            bytes_max: capped(options.replay_bytes_max, self.bytes_max, bytes_cap)
                .map_err(|()| "REPLAY_BYTES is above --topic-replay-bytes-max")?,
            ttl_ns: options
                .replay_ttl_ms
                .map_or(self.ttl_ns, |ms| ms.saturating_mul(1_000_000)),
        })
    }

    fn is_expired(&self, timestamp_ns: u64, now_ns: u64) -> bool {
        self.ttl_ns != 0 && timestamp_ns.saturating_add(self.ttl_ns) <= now_ns
    }
}

/// What a start position resolves to against the retained window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayPlan {
    /// The first sequence to send; `last_seq + 1` means nothing to replay, live only.
    pub first_seq: u64,
    /// Messages the subscriber asked for that were already evicted, for a gap notice. Exact
    /// for `LastN` and `FromSeq`; for `FromTimeNs` see the module documentation.
    pub missed: u64,
}

struct Entry<T> {
    timestamp_ns: u64,
    bytes: usize,
    item: T,
}

/// How a ring lets go of what it evicts. A message the ring held the last reference to is
/// freed without a locked instruction ([`Message::release`]); everything else just drops.
pub trait Evict {
    fn evict(self);
}

impl Evict for Message {
    #[inline]
    fn evict(self) {
        self.release();
    }
}

/// The tests' stand-in for a message.
#[cfg(test)]
impl Evict for u64 {
    fn evict(self) {}
}

/// Slots a ring starts with on its first retained message.
pub const SLOTS_INITIAL: usize = 4;

/// The most recent messages of one topic, within [`ReplayLimits`].
pub struct ReplayRing<T> {
    limits: ReplayLimits,
    /// Up to `messages_max` slots, grown by doubling while the window fills them (never
    /// shrunk); `None` outside the window.
    slots: Vec<Option<Entry<T>>>,
    /// The slot of the oldest retained message.
    head: usize,
    len: usize,
    bytes: usize,
    /// 0 until the first push; sequence numbers start at 1.
    last_seq: u64,
    last_timestamp_ns: u64,
    /// The newest timestamp among messages below the window, `None` while there are none.
    below_window_timestamp_ns: Option<u64>,
}

impl<T: Evict> ReplayRing<T> {
    pub fn new(limits: ReplayLimits) -> Self {
        ReplayRing {
            limits,
            slots: Vec::new(),
            head: 0,
            len: 0,
            bytes: 0,
            last_seq: 0,
            last_timestamp_ns: 0,
            below_window_timestamp_ns: None,
        }
    }

    /// A ring for a topic whose numbering continues after `last_seq` (made again after a
    /// delete): everything up to it is below the window, as if evicted.
    pub fn continuing_after(limits: ReplayLimits, last_seq: u64) -> Self {
        let mut ring = ReplayRing::new(limits);
        ring.last_seq = last_seq.min(u64::MAX - 1);
        if last_seq > 0 {
            ring.below_window_timestamp_ns = Some(0);
        }
        ring
    }

    pub fn limits(&self) -> ReplayLimits {
        self.limits
    }

    /// Appends the message the topic just sequenced, then evicts from the oldest end until
    /// the count, byte and age limits all hold. `seq` must be `last_seq() + 1`, except on the
    /// first push, which may start anywhere (a ring created for a topic that already has
    /// history). Timestamps must not decrease. A message the ring cannot keep (larger than
    /// `bytes_max`, already expired at `now_ns`, or replay disabled) is not stored and takes
    /// everything older with it, but still becomes `last_seq`.
    ///
    /// Returns how many previously retained messages were evicted; the pushed message itself
    /// is never counted, retained or not.
    // Inlined into its one caller on the publish path, `OwnedTopics::sequence` (left to
    // itself the compiler stopped inlining it there once that changed shape: +60
    // instructions a message, callgrind).
    #[inline(always)]
    pub fn push(
        &mut self,
        seq: u64,
        timestamp_ns: u64,
        bytes: usize,
        item: T,
        now_ns: u64,
    ) -> usize {
        // u64::MAX is refused so that `last_seq + 1` can never overflow; no topic gets there.
        if seq == u64::MAX {
            debug_assert!(false, "replay sequence {seq} out of range");
            return 0;
        }
        let mut evicted = 0;
        let expected = self.last_seq + 1;
        if seq != expected {
            debug_assert!(
                self.last_seq == 0 && seq > 0,
                "replay sequence {seq} pushed after {}",
                self.last_seq
            );
            if seq < expected {
                return 0;
            }
            // Sequences were published without passing through the ring (it started late, or a
            // release build skipped some): they lie below the window, with timestamps no later
            // than this one. What the ring holds no longer runs up to `seq`, so it goes.
            evicted += self.evict_front(self.len);
            self.below_window_timestamp_ns = Some(timestamp_ns.max(self.last_timestamp_ns));
        }
        debug_assert!(
            timestamp_ns >= self.last_timestamp_ns,
            "replay timestamps went back from {} to {timestamp_ns}",
            self.last_timestamp_ns
        );
        // Release builds clamp, so the ring stays sorted by time and its binary searches sound.
        let timestamp_ns = timestamp_ns.max(self.last_timestamp_ns);
        self.last_timestamp_ns = timestamp_ns;

        // Tested here as well, so the default (no age limit) costs no call per push.
        if self.limits.ttl_ns != 0 {
            evicted += self.evict_expired(now_ns);
        }
        let slots_max = self.limits.messages_max;
        let keep = slots_max > 0
            && bytes <= self.limits.bytes_max
            && !self.limits.is_expired(timestamp_ns, now_ns);
        if !keep {
            evicted += self.evict_front(self.len);
            self.below_window_timestamp_ns = Some(timestamp_ns);
            self.last_seq = seq;
            return evicted;
        }
        // A busy topic's steady state: the ring is full by count and grown to its limit, so
        // the newest message takes the oldest's slot (when the bytes allow): one slot
        // written, no division, instead of an eviction and a push (about 50 instructions
        // a publish less, callgrind).
        if self.len == slots_max && slots_max == self.slots.len() {
            let head = self.head;
            if let Some(oldest) = self.slots[head].as_mut() {
                if self.bytes - oldest.bytes <= self.limits.bytes_max - bytes {
                    self.bytes = self.bytes - oldest.bytes + bytes;
                    self.below_window_timestamp_ns = Some(oldest.timestamp_ns);
                    let evicted_entry = std::mem::replace(
                        oldest,
                        Entry {
                            timestamp_ns,
                            bytes,
                            item,
                        },
                    );
                    evicted_entry.item.evict();
                    self.head = if head + 1 == slots_max { 0 } else { head + 1 };
                    self.last_seq = seq;
                    return evicted + 1;
                }
            }
        }
        // Written as a subtraction so that limits near usize::MAX cannot overflow.
        while self.len == slots_max || self.bytes > self.limits.bytes_max - bytes {
            evicted += self.evict_front(1);
        }
        if self.len == self.slots.len() {
            self.grow();
        }
        let slot = (self.head + self.len) % self.slots.len();
        debug_assert!(self.slots[slot].is_none(), "slot past the window is free");
        self.slots[slot] = Some(Entry {
            timestamp_ns,
            bytes,
            item,
        });
        self.len += 1;
        self.bytes += bytes;
        self.last_seq = seq;
        debug_assert!(self.len <= slots_max && self.bytes <= self.limits.bytes_max);
        evicted
    }

    /// Doubles the slots (from [`SLOTS_INITIAL`], up to `messages_max`), laying the window
    /// out from slot 0. Called only when every slot is taken and the count limit allows more.
    ///
    /// In place: a rotation (one `memmove`) and a reallocation. Moving each entry into a new
    /// vector, then dropping the old one's emptied slots one by one, cost about 65
    /// instructions a publish while a thousand topics' rings filled (callgrind, many-topics),
    /// and costs about 40 this way, most of it the reallocation's copy.
    #[cold]
    fn grow(&mut self) {
        debug_assert!(self.len == self.slots.len() && self.len < self.limits.messages_max);
        let grown = (self.slots.len() * 2)
            .max(SLOTS_INITIAL)
            .min(self.limits.messages_max);
        // Every slot is taken, so the window is the whole vector, starting at `head`.
        debug_assert!(self.head < self.slots.len() || self.slots.is_empty());
        let head = self.head.min(self.slots.len());
        self.slots.rotate_left(head);
        self.head = 0;
        self.slots.reserve_exact(grown - self.slots.len());
        self.slots.resize_with(grown, || None);
    }

    /// Evicts every message whose age limit has passed (`timestamp_ns + ttl_ns <= now_ns`).
    /// Returns how many.
    pub fn evict_expired(&mut self, now_ns: u64) -> usize {
        // No age limit (the default): nothing to look at, on every push.
        if self.limits.ttl_ns == 0 {
            return 0;
        }
        let mut evicted = 0;
        while self.len > 0 && self.limits.is_expired(self.entry(0).timestamp_ns, now_ns) {
            evicted += self.evict_front(1);
        }
        evicted
    }

    /// The message the next push will evict to make room, if the ring is full by count.
    ///
    /// Also prefetches the slot the push after that will read: its line is cold among many
    /// busy topics, and reading it only when that push comes waits on memory every second
    /// push (two slots to a line).
    #[inline]
    pub fn next_evicted(&self) -> Option<&T> {
        if self.len != self.limits.messages_max || self.len == 0 {
            return None;
        }
        let after_next = if self.head + 1 == self.slots.len() {
            0
        } else {
            self.head + 1
        };
        crate::message::prefetch(self.slots.as_ptr().wrapping_add(after_next));
        // The head slot itself, not `entry(0)`: no division on the publish path.
        self.slots.get(self.head)?.as_ref().map(|entry| &entry.item)
    }

    /// The oldest retained sequence.
    pub fn first_seq(&self) -> Option<u64> {
        (self.len > 0).then(|| self.window_start_seq())
    }

    /// The newest sequence ever pushed, retained or not; 0 before the first push.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total `bytes` of the retained messages.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A retained message by sequence. Age is not checked here: call `evict_expired` first,
    /// or start from a [`ReplayPlan`], which skips what has expired.
    pub fn get(&self, seq: u64) -> Option<&T> {
        let start_seq = self.window_start_seq();
        if seq < start_seq || seq > self.last_seq {
            return None;
        }
        Some(&self.entry((seq - start_seq) as usize).item)
    }

    /// Resolves a start position against the window as it stands at `now_ns`: messages past
    /// their age limit count as evicted even if `evict_expired` has not run yet.
    pub fn plan(&self, start: Start, now_ns: u64) -> ReplayPlan {
        let next_seq = self.last_seq + 1;
        let expired =
            self.partition_point(|entry| self.limits.is_expired(entry.timestamp_ns, now_ns));
        let start_seq = self.window_start_seq() + expired as u64;
        // Seqs requested from `requested_seq` on: what lies below the window is missed.
        let from = |requested_seq: u64| {
            let requested_seq = requested_seq.clamp(1, next_seq);
            ReplayPlan {
                first_seq: requested_seq.max(start_seq),
                missed: start_seq.saturating_sub(requested_seq),
            }
        };
        match start {
            Start::New => ReplayPlan {
                first_seq: next_seq,
                missed: 0,
            },
            Start::All => ReplayPlan {
                first_seq: start_seq,
                missed: 0,
            },
            Start::FromSeq(seq) | Start::FromSeqOfEpoch { seq, .. } => from(seq),
            Start::LastN(n) => from(next_seq.saturating_sub(n)),
            Start::FromTimeNs(t) => {
                let before_t = self.partition_point(|entry| entry.timestamp_ns < t);
                let below_window_timestamp_ns = match expired {
                    0 => self.below_window_timestamp_ns,
                    _ => Some(self.entry(expired - 1).timestamp_ns),
                };
                let lost = below_window_timestamp_ns.is_some_and(|ts| ts >= t);
                ReplayPlan {
                    first_seq: self.window_start_seq() + before_t.max(expired) as u64,
                    missed: if lost { start_seq - 1 } else { 0 },
                }
            }
        }
    }

    /// Retained messages from `from_seq` (inclusive; below the window means from its start)
    /// to the newest, in order, at most `max` of them, so a replay goes out in bounded
    /// chunks. Age is not checked, as with [`ReplayRing::get`].
    pub fn range(&self, from_seq: u64, max: usize) -> impl Iterator<Item = (u64, &T)> {
        let start_seq = self.window_start_seq();
        let from_seq = from_seq.max(start_seq);
        let count = (self.last_seq + 1).saturating_sub(from_seq).min(max as u64) as usize;
        let offset = (from_seq - start_seq) as usize;
        (0..count).map(move |k| (from_seq + k as u64, &self.entry(offset + k).item))
    }

    /// The oldest retained sequence, or `last_seq + 1` when nothing is retained.
    fn window_start_seq(&self) -> u64 {
        self.last_seq + 1 - self.len as u64
    }

    /// The `index`th retained message, oldest first.
    fn entry(&self, index: usize) -> &Entry<T> {
        debug_assert!(index < self.len);
        self.slots[(self.head + index) % self.slots.len()]
            .as_ref()
            .expect("slots within the window are filled")
    }

    /// The number of retained messages, oldest first, for which `pred` holds before it
    /// first fails; `pred` must hold for a prefix only (timestamps never decrease).
    fn partition_point(&self, pred: impl Fn(&Entry<T>) -> bool) -> usize {
        let (mut low, mut high) = (0, self.len);
        while low < high {
            let middle = low + (high - low) / 2;
            if pred(self.entry(middle)) {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low
    }

    fn evict_front(&mut self, count: usize) -> usize {
        debug_assert!(count <= self.len);
        for _ in 0..count {
            let entry = self.slots[self.head]
                .take()
                .expect("slots within the window are filled");
            self.head = (self.head + 1) % self.slots.len();
            self.len -= 1;
            self.bytes -= entry.bytes;
            self.below_window_timestamp_ns = Some(entry.timestamp_ns);
            entry.item.evict();
        }
        count
    }

    #[cfg(test)]
    fn slots_capacity(&self) -> usize {
        self.slots.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(messages_max: usize, bytes_max: usize, ttl_ns: u64) -> ReplayLimits {
        ReplayLimits {
            messages_max,
            bytes_max,
            ttl_ns,
        }
    }

    #[test]
    fn overrides_replace_the_defaults_within_the_caps() {
        let defaults = limits(1024, 1 << 20, 0);
        let options = |messages, bytes, ttl_ms| TopicOptions {
            replay_messages_max: messages,
            replay_bytes_max: bytes,
            replay_ttl_ms: ttl_ms,
            presence: None,
        };
        let apply = |o: TopicOptions| defaults.overridden(&o, 10_000, 1 << 24);
        assert_eq!(apply(TopicOptions::default()), Ok(defaults));
        assert_eq!(
            apply(options(Some(10_000), Some(0), Some(1500))),
            Ok(limits(10_000, 0, 1_500_000_000))
        );
        assert_eq!(
            apply(options(None, None, Some(u64::MAX))).unwrap().ttl_ns,
            u64::MAX
        );
        assert_eq!(
            apply(options(Some(10_001), None, None)),
            Err("REPLAY_MESSAGES is above --topic-replay-messages-max")
        );
        assert_eq!(
            apply(options(None, Some(u64::MAX), None)),
            Err("REPLAY_BYTES is above --topic-replay-bytes-max")
        );
    }

    /// A ring with seqs `1..=count` pushed, each of `bytes` bytes, stamped with its seq.
    fn filled(limits: ReplayLimits, count: u64, bytes: usize) -> ReplayRing<u64> {
        let mut ring = ReplayRing::new(limits);
        for seq in 1..=count {
            ring.push(seq, seq, bytes, seq * 10, seq);
        }
        ring
    }

    fn plan(first_seq: u64, missed: u64) -> ReplayPlan {
        ReplayPlan { first_seq, missed }
    }

    fn seqs(ring: &ReplayRing<u64>, from_seq: u64, max: usize) -> Vec<u64> {
        ring.range(from_seq, max).map(|(seq, _)| seq).collect()
    }

    #[test]
    fn the_next_eviction_is_named_once_the_count_limit_is_reached() {
        let mut ring = filled(limits(3, 1000, 0), 2, 1);
        assert_eq!(ring.next_evicted(), None);
        ring.push(3, 3, 1, 30, 3);
        assert_eq!(ring.next_evicted(), Some(&10));
        ring.push(4, 4, 1, 40, 4);
        assert_eq!(ring.next_evicted(), Some(&20));
        assert_eq!(filled(limits(0, 1000, 0), 3, 1).next_evicted(), None);
        // Past the first growth of the slots and round them several times.
        let mut ring = ReplayRing::new(limits(6, 1000, 0));
        for seq in 1..=40u64 {
            ring.push(seq, seq, 1, seq * 10, seq);
            let oldest = ring.first_seq().map(|first| first * 10);
            let full = ring.len() == 6;
            assert_eq!(
                ring.next_evicted().copied(),
                oldest.filter(|_| full),
                "after {seq}"
            );
        }
    }

    #[test]
    fn count_limit_evicts_the_oldest() {
        let mut ring = filled(limits(3, 1000, 0), 3, 1);
        assert_eq!(ring.push(4, 4, 1, 40, 4), 1);
        assert_eq!(
            (ring.first_seq(), ring.last_seq(), ring.len()),
            (Some(2), 4, 3)
        );
        assert_eq!(ring.get(1), None);
        assert_eq!(ring.get(2), Some(&20));
        assert_eq!(ring.get(4), Some(&40));
        assert_eq!(ring.get(5), None);
    }

    #[test]
    fn byte_limit_evicts_until_the_new_message_fits() {
        let mut ring = filled(limits(10, 100, 0), 2, 40);
        assert_eq!(ring.bytes(), 80);
        assert_eq!(ring.push(3, 3, 60, 30, 3), 1);
        assert_eq!((ring.first_seq(), ring.bytes()), (Some(2), 100));
        assert_eq!(
            ring.push(4, 4, 100, 40, 4),
            2,
            "exactly bytes_max fits alone"
        );
        assert_eq!(
            (ring.first_seq(), ring.len(), ring.bytes()),
            (Some(4), 1, 100)
        );
        assert_eq!(ring.push(5, 5, 0, 50, 5), 0, "empty messages cost no bytes");
        assert_eq!(ring.len(), 2);
    }

    #[test]
    fn a_message_larger_than_bytes_max_is_dropped_with_everything_older() {
        let mut ring = filled(limits(10, 100, 0), 3, 10);
        assert_eq!(ring.push(4, 4, 101, 40, 4), 3);
        assert!(ring.is_empty());
        assert_eq!(
            (ring.first_seq(), ring.last_seq(), ring.bytes()),
            (None, 4, 0)
        );
        assert_eq!(ring.plan(Start::All, 4), plan(5, 0));
        assert_eq!(ring.plan(Start::LastN(2), 4), plan(5, 2));
        assert_eq!(ring.push(5, 5, 10, 50, 5), 0);
        assert_eq!((ring.first_seq(), ring.get(5)), (Some(5), Some(&50)));
        assert_eq!(ring.plan(Start::FromSeq(4), 5), plan(5, 1));
    }

    #[test]
    fn zero_messages_max_disables_replay_but_follows_sequences() {
        let mut ring = ReplayRing::new(limits(0, 1000, 0));
        for seq in 1..=5 {
            assert_eq!(ring.push(seq, seq, 1, seq, seq), 0);
        }
        assert_eq!(
            (ring.len(), ring.first_seq(), ring.last_seq()),
            (0, None, 5)
        );
        assert_eq!(ring.get(5), None);
        assert_eq!(ring.range(0, 10).count(), 0);
        assert_eq!(ring.plan(Start::New, 5), plan(6, 0));
        assert_eq!(ring.plan(Start::All, 5), plan(6, 0));
        assert_eq!(ring.plan(Start::LastN(3), 5), plan(6, 3));
        assert_eq!(ring.plan(Start::FromTimeNs(5), 5), plan(6, 5));
        assert_eq!(ring.plan(Start::FromTimeNs(6), 5), plan(6, 0));
    }

    #[test]
    fn age_limit_uses_the_injected_time() {
        let mut ring = ReplayRing::new(limits(10, 1000, 100));
        ring.push(1, 0, 1, 10, 0);
        ring.push(2, 50, 1, 20, 50);
        ring.push(3, 100, 1, 30, 100);
        assert_eq!(ring.len(), 2, "seq 1 expired exactly at 0 + ttl");
        assert_eq!(ring.evict_expired(149), 0);
        // The plan sees the age limit before anything is evicted.
        assert_eq!(ring.plan(Start::All, 150), plan(3, 0));
        assert_eq!(ring.plan(Start::FromSeq(1), 150), plan(3, 2));
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.evict_expired(150), 1);
        assert_eq!((ring.first_seq(), ring.len()), (Some(3), 1));
        assert_eq!(ring.evict_expired(u64::MAX), 1);
        assert_eq!((ring.first_seq(), ring.last_seq()), (None, 3));
        // A message already past its age when pushed is not kept.
        assert_eq!(ring.push(4, 200, 1, 40, 500), 0);
        assert_eq!((ring.len(), ring.last_seq()), (0, 4));
    }

    #[test]
    fn zero_ttl_means_no_age_limit() {
        let mut ring = filled(limits(10, 1000, 0), 3, 1);
        assert_eq!(ring.evict_expired(u64::MAX), 0);
        assert_eq!(ring.plan(Start::All, u64::MAX), plan(1, 0));
    }

    #[test]
    fn new_starts_right_after_the_newest() {
        let ring = filled(limits(3, 1000, 0), 5, 1);
        assert_eq!(ring.plan(Start::New, 5), plan(6, 0));
        let empty = ReplayRing::<u64>::new(limits(3, 1000, 0));
        assert_eq!(empty.plan(Start::New, 0), plan(1, 0));
        assert_eq!(empty.plan(Start::All, 0), plan(1, 0));
        assert_eq!(empty.plan(Start::LastN(5), 0), plan(1, 0));
        assert_eq!(empty.plan(Start::FromTimeNs(0), 0), plan(1, 0));
    }

    #[test]
    fn all_starts_at_the_oldest_retained_without_a_gap_notice() {
        let ring = filled(limits(3, 1000, 0), 5, 1);
        assert_eq!(ring.plan(Start::All, 5), plan(3, 0));
    }

    #[test]
    fn last_n_reports_the_evicted_part_as_missed() {
        let ring = filled(limits(3, 1000, 0), 5, 1);
        assert_eq!(ring.plan(Start::LastN(0), 5), plan(6, 0));
        assert_eq!(ring.plan(Start::LastN(2), 5), plan(4, 0));
        assert_eq!(ring.plan(Start::LastN(3), 5), plan(3, 0));
        assert_eq!(ring.plan(Start::LastN(4), 5), plan(3, 1));
        // Only five were ever published, so no more than two can be missing.
        assert_eq!(ring.plan(Start::LastN(u64::MAX), 5), plan(3, 2));
    }

    #[test]
    fn from_seq_clamps_to_the_window() {
        let ring = filled(limits(3, 1000, 0), 5, 1);
        assert_eq!(ring.plan(Start::FromSeq(9), 5), plan(6, 0), "future");
        assert_eq!(ring.plan(Start::FromSeq(6), 5), plan(6, 0));
        assert_eq!(ring.plan(Start::FromSeq(5), 5), plan(5, 0));
        assert_eq!(ring.plan(Start::FromSeq(3), 5), plan(3, 0));
        assert_eq!(ring.plan(Start::FromSeq(2), 5), plan(3, 1));
        assert_eq!(ring.plan(Start::FromSeq(1), 5), plan(3, 2));
        assert_eq!(ring.plan(Start::FromSeq(0), 5), plan(3, 2));
    }

    #[test]
    fn from_time_finds_the_first_message_at_or_after_it() {
        // Stamps 10, 20, 20, 30, 40; the first is evicted by the count limit.
        let mut ring = ReplayRing::new(limits(4, 1000, 0));
        for (seq, ts) in [(1, 10), (2, 20), (3, 20), (4, 30), (5, 40)] {
            ring.push(seq, ts, 1, seq, ts);
        }
        let from = |t| ring.plan(Start::FromTimeNs(t), 40);
        assert_eq!(from(41), plan(6, 0), "after the newest: live only");
        assert_eq!(from(40), plan(5, 0));
        assert_eq!(from(31), plan(5, 0));
        assert_eq!(from(20), plan(2, 0), "the first of equal stamps");
        assert_eq!(
            from(11),
            plan(2, 0),
            "nothing evicted was stamped at or after 11"
        );
        assert_eq!(from(10), plan(2, 1), "seq 1 (stamped 10) is gone");
        assert_eq!(from(0), plan(2, 1));
    }

    #[test]
    fn from_time_reports_every_sequence_below_the_window_as_an_upper_bound() {
        // Seq 1 at 10, seqs 2..=4 at 20, 30, 40; seqs 1 to 3 are evicted.
        let mut ring = ReplayRing::new(limits(1, 1000, 0));
        for seq in 1..=4 {
            ring.push(seq, seq * 10, 1, seq, seq * 10);
        }
        // Only seqs 3 and 4 were stamped at or after 25, but the ring cannot tell.
        assert_eq!(ring.plan(Start::FromTimeNs(25), 40), plan(4, 3));
        assert_eq!(ring.plan(Start::FromTimeNs(41), 40), plan(5, 0));
    }

    #[test]
    fn a_ring_started_late_counts_earlier_sequences_as_below_the_window() {
        let mut ring = ReplayRing::new(limits(4, 1000, 0));
        assert_eq!(ring.push(10, 100, 1, 1, 100), 0);
        ring.push(11, 110, 1, 2, 110);
        assert_eq!((ring.first_seq(), ring.last_seq()), (Some(10), 11));
        assert_eq!(ring.plan(Start::FromSeq(1), 110), plan(10, 9));
        assert_eq!(ring.plan(Start::LastN(5), 110), plan(10, 3));
        assert_eq!(ring.plan(Start::FromTimeNs(101), 110), plan(11, 0));
        // Seqs 1 to 9 were stamped no later than 100: they may have been at 100.
        assert_eq!(ring.plan(Start::FromTimeNs(100), 110), plan(10, 9));
    }

    #[test]
    fn range_goes_in_bounded_chunks_across_the_wrap() {
        let ring = filled(limits(4, 1000, 0), 10, 1);
        assert_eq!(seqs(&ring, 0, 100), vec![7, 8, 9, 10]);
        assert_eq!(seqs(&ring, 8, 2), vec![8, 9]);
        assert_eq!(seqs(&ring, 10, 5), vec![10]);
        assert_eq!(seqs(&ring, 11, 5), Vec::<u64>::new());
        assert_eq!(seqs(&ring, u64::MAX, 5), Vec::<u64>::new());
        assert_eq!(seqs(&ring, 7, 0), Vec::<u64>::new());
        let items: Vec<_> = ring.range(9, 10).map(|(_, item)| *item).collect();
        assert_eq!(items, vec![90, 100]);
    }

    #[test]
    fn slots_grow_with_the_history_then_are_reused_never_reallocated() {
        let mut ring = ReplayRing::new(limits(5, 10_000, 0));
        assert_eq!(ring.slots_capacity(), 0, "an empty topic costs no slots");
        ring.push(1, 1, 1, 1, 1);
        assert_eq!(ring.slots_capacity(), SLOTS_INITIAL);
        for seq in 2..=5 {
            ring.push(seq, seq, 1, seq, seq);
        }
        assert_eq!(
            ring.slots_capacity(),
            5,
            "grown to the count limit, not past it"
        );
        for seq in 6..=1000 {
            ring.push(seq, seq, (seq % 7) as usize, seq, seq);
            assert_eq!(ring.slots_capacity(), 5);
        }
        assert_eq!(ring.len(), 5);
        assert_eq!(seqs(&ring, 0, 100), vec![996, 997, 998, 999, 1000]);
    }

    #[test]
    fn growing_keeps_a_wrapped_window_in_order() {
        // A byte limit evicts from the front, so the window wraps before the slots are full.
        let mut ring = ReplayRing::new(limits(64, 3, 0));
        for seq in 1..=6 {
            ring.push(seq, seq, 1, seq, seq);
        }
        assert_eq!(seqs(&ring, 0, 100), vec![4, 5, 6]);
        let mut ring = ReplayRing::new(limits(64, 100, 0));
        for seq in 1..=40 {
            ring.push(seq, seq, 1, seq, seq);
            assert_eq!(seqs(&ring, 0, 100), (1..=seq).collect::<Vec<_>>());
        }
        assert_eq!(ring.slots_capacity(), 64);
    }

    /// Everything ever pushed, and how much of it is retained: the eviction rules restated as
    /// "keep the longest newest run that is within every limit".
    struct Model {
        limits: ReplayLimits,
        /// (seq, timestamp_ns, bytes, item) of every push.
        pushed: Vec<(u64, u64, usize, u64)>,
        /// Index into `pushed` of the oldest retained message.
        retained_from: usize,
    }

    impl Model {
        fn within_limits(&self, from: usize, now_ns: u64) -> bool {
            let run = &self.pushed[from..];
            let bytes: usize = run.iter().map(|p| p.2).sum();
            run.len() <= self.limits.messages_max
                && bytes <= self.limits.bytes_max
                && run.iter().all(|p| !self.limits.is_expired(p.1, now_ns))
        }

        fn retained_from_at(&self, now_ns: u64) -> usize {
            let mut from = self.retained_from;
            while !self.within_limits(from, now_ns) {
                from += 1;
            }
            from
        }

        fn retained(&self) -> &[(u64, u64, usize, u64)] {
            &self.pushed[self.retained_from..]
        }

        fn last_seq(&self) -> u64 {
            self.pushed.last().map_or(0, |p| p.0)
        }

        fn plan(&self, start: Start, now_ns: u64) -> ReplayPlan {
            let retained = &self.pushed[self.retained_from_at(now_ns)..];
            let next_seq = self.last_seq() + 1;
            let first_retained_from = |requested: &dyn Fn(u64) -> bool| {
                retained
                    .iter()
                    .map(|p| p.0)
                    .find(|&seq| requested(seq))
                    .unwrap_or(next_seq)
            };
            // Sequences 1..=last_seq that were asked for and are not retained.
            let missed = |requested: &dyn Fn(u64) -> bool| {
                (1..next_seq)
                    .filter(|&seq| requested(seq) && !retained.iter().any(|p| p.0 == seq))
                    .count() as u64
            };
            match start {
                Start::New => plan(next_seq, 0),
                Start::All => plan(first_retained_from(&|_| true), 0),
                Start::FromSeq(from) | Start::FromSeqOfEpoch { seq: from, .. } => {
                    let requested = |seq: u64| seq >= from;
                    plan(first_retained_from(&requested), missed(&requested))
                }
                Start::LastN(n) => {
                    let requested = |seq: u64| next_seq - seq <= n;
                    plan(first_retained_from(&requested), missed(&requested))
                }
                Start::FromTimeNs(t) => {
                    let first_seq = retained.iter().find(|p| p.1 >= t).map_or(next_seq, |p| p.0);
                    let below = &self.pushed[..self.pushed.len() - retained.len()];
                    // Sequences the ring never saw are stamped no later than its first push.
                    let unseen_before = self.pushed.first().filter(|p| p.0 > 1);
                    let lost = below.iter().chain(unseen_before).any(|p| p.1 >= t);
                    let window_start = retained.first().map_or(next_seq, |p| p.0);
                    plan(first_seq, if lost { window_start - 1 } else { 0 })
                }
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push { bytes: usize, lag_ns: u64 },
        Advance(u64),
        EvictExpired,
        Plan(Start),
        Range { from_seq: u64, max: usize },
    }

    fn start_position() -> impl Strategy<Value = Start> {
        prop_oneof![
            Just(Start::New),
            Just(Start::All),
            (0u64..12).prop_map(Start::LastN),
            (0u64..60).prop_map(Start::FromSeq),
            (0u64..1500).prop_map(Start::FromTimeNs),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0usize..60, 0u64..30).prop_map(|(bytes, lag_ns)| Op::Push { bytes, lag_ns }),
            3 => prop_oneof![0u64..40, 0u64..400].prop_map(Op::Advance),
            1 => Just(Op::EvictExpired),
            3 => start_position().prop_map(Op::Plan),
            2 => (0u64..60, 0usize..8).prop_map(|(from_seq, max)| Op::Range { from_seq, max }),
        ]
    }

    fn ring_limits() -> impl Strategy<Value = ReplayLimits> {
        (0usize..7, 0usize..150, prop_oneof![Just(0u64), 1u64..200])
            .prop_map(|(m, b, t)| limits(m, b, t))
    }

    proptest! {
        #[test]
        fn ring_agrees_with_a_model_that_keeps_everything(
            limits in ring_limits(),
            first_seq in 1u64..4,
            ops in proptest::collection::vec(op(), 0..120),
        ) {
            let mut ring = ReplayRing::new(limits);
            let mut model = Model { limits, pushed: Vec::new(), retained_from: 0 };
            let mut now_ns = 0u64;
            let mut last_timestamp_ns = 0u64;
            for op in ops {
                match op {
                    Op::Push { bytes, lag_ns } => {
                        let seq = model.last_seq().max(first_seq - 1) + 1;
                        let timestamp_ns = now_ns.saturating_sub(lag_ns).max(last_timestamp_ns);
                        last_timestamp_ns = timestamp_ns;
                        let evicted = ring.push(seq, timestamp_ns, bytes, seq * 10, now_ns);
                        let before = model.retained_from;
                        model.pushed.push((seq, timestamp_ns, bytes, seq * 10));
                        model.retained_from = model.retained_from_at(now_ns);
                        let kept = usize::from(!model.retained().is_empty());
                        let expected = model.retained_from - before - (1 - kept);
                        prop_assert_eq!(evicted, expected);
                    }
                    Op::Advance(delta_ns) => now_ns += delta_ns,
                    Op::EvictExpired => {
                        let before = model.retained_from;
                        model.retained_from = model.retained_from_at(now_ns);
                        prop_assert_eq!(ring.evict_expired(now_ns), model.retained_from - before);
                    }
                    Op::Plan(start) => {
                        prop_assert_eq!(
                            ring.plan(start, now_ns),
                            model.plan(start, now_ns),
                            "{:?}", start
                        );
                    }
                    Op::Range { from_seq, max } => {
                        let got: Vec<_> = ring.range(from_seq, max).map(|(s, i)| (s, *i)).collect();
                        let want: Vec<_> = model
                            .retained()
                            .iter()
                            .filter(|p| p.0 >= from_seq)
                            .take(max)
                            .map(|p| (p.0, p.3))
                            .collect();
                        prop_assert_eq!(got, want);
                    }
                }
                let retained = model.retained();
                prop_assert_eq!(ring.first_seq(), retained.first().map(|p| p.0));
                prop_assert_eq!(ring.last_seq(), model.last_seq());
                prop_assert_eq!(ring.len(), retained.len());
                prop_assert_eq!(ring.is_empty(), retained.is_empty());
                prop_assert_eq!(ring.bytes(), retained.iter().map(|p| p.2).sum::<usize>());
                for seq in 0..=model.last_seq() + 1 {
                    let want = retained.iter().find(|p| p.0 == seq).map(|p| p.3);
                    prop_assert_eq!(ring.get(seq).copied(), want);
                }
                prop_assert!(ring.slots_capacity() <= limits.messages_max);
                prop_assert!(ring.slots_capacity() >= ring.len());
            }
        }
    }
}
