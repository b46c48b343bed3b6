//! A durable consumer's retry buffer: the messages delivered to it and not yet acknowledged,
//! which is what makes its delivery at-least-once.
//!
//! A message stays in flight from its first delivery until it is acked. When its ack wait
//! passes (or it is nacked) it is due: delivered again with a longer wait, doubling per
//! delivery up to `backoff_max_ns`, or, once it has had `deliver_max` deliveries, handed
//! back as a dead letter and forgotten. At most `in_flight_max` messages are in flight; the
//! caller stops delivering new ones to the consumer until there is room.
//!
//! Everything is allocated in `new` and sized by `in_flight_max`; tracking, acking and
//! timing out never allocate (apart from the caller's output `Vec`):
//! - the messages sit in a slab, so a slot freed by an ack is reused by the next track;
//! - a deque of `(seq, slot)` in increasing sequence order finds a message by binary search,
//!   and makes cumulative acks and "oldest unacked" a look at its front. Acks are mostly in
//!   order, so removing from it rarely shifts more than a few entries;
//! - a min-heap of deadlines answers "when is the next timeout" in O(1), which the event
//!   loop asks on every turn to size its poll timeout; a scan would cost O(in flight) per
//!   consumer per turn. Acks and reschedules do not search the heap: every entry carries a
//!   stamp, only the entry whose stamp matches its message's current one is live, and stale
//!   entries are dropped when they surface at the top. Each message has one live entry, so
//!   when the heap reaches twice `in_flight_max` at least half of it is stale, and it is
//!   compacted in place instead of growing.
//!
//! Sans-IO: the time is always an argument (`now_ns`) and never read here.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use slab::Slab;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// 0 means nothing can be tracked: every `track` is refused.
    pub in_flight_max: usize,
    /// The wait for an ack after the first delivery.
    pub ack_wait_ns: u64,
    /// The wait doubles per delivery up to this; never below `ack_wait_ns`.
    pub backoff_max_ns: u64,
    /// Deliveries before a message is dead-lettered; 0 behaves as 1, since the first
    /// delivery has happened before the buffer sees the message.
    pub deliver_max: u16,
}

impl RetryPolicy {
    /// How long to wait for an ack after delivery number `delivery_count` (from 1):
    /// `ack_wait_ns * 2^(delivery_count - 1)`, capped at `backoff_max_ns`.
    pub fn wait_ns(&self, delivery_count: u16) -> u64 {
        let doublings = u32::from(delivery_count.saturating_sub(1)).min(63);
        let cap_ns = self.backoff_max_ns.max(self.ack_wait_ns);
        self.ack_wait_ns.saturating_mul(1 << doublings).min(cap_ns)
    }
}

/// One unacknowledged message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InFlight<T> {
    pub seq: u64,
    pub item: T,
    /// Deliveries so far, the first included.
    pub delivery_count: u16,
    pub deadline_ns: u64,
}

/// What the buffer hands back when a message's time is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due<T> {
    /// Deliver again; it stays in flight. `delivery_count` includes this delivery.
    Redeliver {
        seq: u64,
        item: T,
        delivery_count: u16,
    },
    /// It had `deliver_max` deliveries and is no longer tracked.
    DeadLetter {
        seq: u64,
        item: T,
        delivery_count: u16,
    },
}

impl<T> Due<T> {
    pub fn seq(&self) -> u64 {
        match self {
            Due::Redeliver { seq, .. } | Due::DeadLetter { seq, .. } => *seq,
        }
    }
}

struct Slot<T> {
    in_flight: InFlight<T>,
    /// The stamp of this message's one live entry in the deadline heap.
    stamp: u64,
}

/// A heap entry; ordered by deadline first, so the heap's top is the next timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Deadline {
    deadline_ns: u64,
    stamp: u64,
    slot: usize,
}

/// The unacknowledged messages of one consumer, within a [`RetryPolicy`].
pub struct RetryBuffer<T> {
    policy: RetryPolicy,
    slots: Slab<Slot<T>>,
    /// `(seq, slot)` of every message in flight, in increasing `seq` order.
    by_seq: VecDeque<(u64, usize)>,
    /// A min-heap with lazy deletion; its top is always live (see `settle`).
    deadlines: BinaryHeap<Reverse<Deadline>>,
    deadlines_max: usize,
    /// Stamps are never reused, so a slot reused by a newer message cannot revive the old
    /// message's stale heap entries.
    next_stamp: u64,
    last_tracked_seq: Option<u64>,
}

impl<T: Clone> RetryBuffer<T> {
    pub fn new(policy: RetryPolicy) -> Self {
        let deadlines_max = policy.in_flight_max.saturating_mul(2);
        RetryBuffer {
            policy,
            slots: Slab::with_capacity(policy.in_flight_max),
            by_seq: VecDeque::with_capacity(policy.in_flight_max),
            deadlines: BinaryHeap::with_capacity(deadlines_max),
            deadlines_max,
            next_stamp: 0,
            last_tracked_seq: None,
        }
    }

    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    pub fn has_room(&self) -> bool {
        self.slots.len() < self.policy.in_flight_max
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Starts tracking a message just delivered for the first time: delivery count 1, due
    /// at `now_ns + ack_wait_ns`. Sequences must increase from call to call. Returns the item
    /// back when the buffer is full (or, in a release build, when `seq` is already in flight).
    pub fn track(&mut self, seq: u64, item: T, now_ns: u64) -> Result<(), T> {
        if !self.has_room() {
            return Err(item);
        }
        debug_assert!(
            self.last_tracked_seq.is_none_or(|last| seq > last),
            "tracked sequence {seq} after {:?}",
            self.last_tracked_seq
        );
        self.last_tracked_seq = Some(seq);
        // Release builds keep the order by inserting where `seq` belongs.
        let at = match self.by_seq.back() {
            Some(&(back, _)) if back >= seq => match self.position(seq) {
                Ok(_) => return Err(item),
                Err(at) => at,
            },
            _ => self.by_seq.len(),
        };
        let deadline_ns = now_ns.saturating_add(self.policy.wait_ns(1));
        let stamp = self.take_stamp();
        let slot = self.slots.insert(Slot {
            in_flight: InFlight {
                seq,
                item,
                delivery_count: 1,
                deadline_ns,
            },
            stamp,
        });
        self.by_seq.insert(at, (seq, slot));
        self.schedule(Deadline {
            deadline_ns,
            stamp,
            slot,
        });
        Ok(())
    }

    /// When `seq`, in flight, was last delivered: its deadline less the wait that delivery
    /// was given.
    pub fn delivered_ns(&self, seq: u64) -> Option<u64> {
        let in_flight = self.get(seq)?;
        Some(
            in_flight
                .deadline_ns
                .saturating_sub(self.policy.wait_ns(in_flight.delivery_count)),
        )
    }

    /// Stops tracking `seq`. False if it was not in flight.
    pub fn ack(&mut self, seq: u64) -> bool {
        let Ok(at) = self.position(seq) else {
            return false;
        };
        if let Some((_, slot)) = self.by_seq.remove(at) {
            self.slots.remove(slot);
        }
        self.settle();
        true
    }

    /// Stops tracking every sequence up to and including `seq`. Returns how many.
    pub fn ack_through(&mut self, seq: u64) -> usize {
        let mut acked = 0;
        while let Some(&(front, slot)) = self.by_seq.front() {
            if front > seq {
                break;
            }
            self.by_seq.pop_front();
            self.slots.remove(slot);
            acked += 1;
        }
        self.settle();
        acked
    }

    /// A negative ack: `seq` is due at once (its deadline becomes `now_ns`), and comes out of
    /// the next `take_due`. False if it was not in flight.
    pub fn nack(&mut self, seq: u64, now_ns: u64) -> bool {
        let Ok(at) = self.position(seq) else {
            return false;
        };
        let slot = self.by_seq[at].1;
        let stamp = self.take_stamp();
        let entry = &mut self.slots[slot];
        entry.in_flight.deadline_ns = now_ns;
        entry.stamp = stamp;
        self.schedule(Deadline {
            deadline_ns: now_ns,
            stamp,
            slot,
        });
        self.settle();
        true
    }

    /// Appends to `out`, in sequence order, every message due at `now_ns` (deadline
    /// `<= now_ns`). One with fewer than `deliver_max` deliveries comes back as
    /// [`Due::Redeliver`] with its count raised by one and a new deadline of
    /// `now_ns + wait_ns(count)`, and stays in flight; one that already had `deliver_max`
    /// comes back as [`Due::DeadLetter`] and is no longer tracked. Each message comes out at
    /// most once per call, even if its new deadline is still `<= now_ns` (a zero ack wait).
    pub fn take_due(&mut self, now_ns: u64, out: &mut Vec<Due<T>>) {
        let start = out.len();
        // Nothing is rescheduled until every due entry is off the heap, which is what keeps a
        // message with a zero wait from coming round again within this call.
        while let Some(&Reverse(top)) = self.deadlines.peek() {
            if top.deadline_ns > now_ns {
                break;
            }
            self.deadlines.pop();
            let Some(slot) = self.slots.get(top.slot).filter(|s| s.stamp == top.stamp) else {
                continue;
            };
            let seq = slot.in_flight.seq;
            if let Some(due) = self.deliver_again(top.slot, seq, now_ns) {
                out.push(due);
            }
        }
        for due in &out[start..] {
            if let Due::Redeliver { seq, .. } = *due {
                if let Ok(at) = self.position(seq) {
                    let slot = self.by_seq[at].1;
                    self.schedule(Deadline {
                        deadline_ns: self.slots[slot].in_flight.deadline_ns,
                        stamp: self.slots[slot].stamp,
                        slot,
                    });
                }
            }
        }
        out[start..].sort_unstable_by_key(Due::seq);
        self.settle();
    }

    /// The earliest deadline in flight.
    pub fn next_deadline_ns(&self) -> Option<u64> {
        let Reverse(top) = self.deadlines.peek()?;
        debug_assert!(self.is_live(top), "the heap's top is settled");
        Some(top.deadline_ns)
    }

    /// Treats every message in flight as due now, whatever its deadline, and appends them to
    /// `out` in sequence order, as [`RetryBuffer::take_due`] would: for a consumer that has
    /// reconnected, whose earlier deliveries may never have arrived. Each counts as a
    /// delivery, so those that already had `deliver_max` are dead-lettered.
    pub fn redeliver_all(&mut self, now_ns: u64, out: &mut Vec<Due<T>>) {
        let mut dead_letters = 0;
        for at in 0..self.by_seq.len() {
            let (seq, slot) = self.by_seq[at];
            let Some(due) = self.deliver_again_in_place(slot, seq, now_ns) else {
                continue;
            };
            match due {
                Due::Redeliver { .. } => self.schedule(Deadline {
                    deadline_ns: self.slots[slot].in_flight.deadline_ns,
                    stamp: self.slots[slot].stamp,
                    slot,
                }),
                Due::DeadLetter { .. } => dead_letters += 1,
            }
            out.push(due);
        }
        if dead_letters > 0 {
            // Nothing was inserted meanwhile, so no freed slot has been reused yet.
            let slots = &self.slots;
            self.by_seq.retain(|&(_, slot)| slots.contains(slot));
        }
        self.settle();
    }

    /// The oldest sequence still unacknowledged.
    pub fn oldest_seq(&self) -> Option<u64> {
        self.by_seq.front().map(|&(seq, _)| seq)
    }

    pub fn get(&self, seq: u64) -> Option<&InFlight<T>> {
        let at = self.position(seq).ok()?;
        Some(&self.slots[self.by_seq[at].1].in_flight)
    }

    /// For the owner of the buffer to update what it keeps with a message (who holds it).
    pub fn get_mut(&mut self, seq: u64) -> Option<&mut InFlight<T>> {
        let at = self.position(seq).ok()?;
        Some(&mut self.slots[self.by_seq[at].1].in_flight)
    }

    /// Every message in flight, in sequence order.
    pub fn iter(&self) -> impl Iterator<Item = &InFlight<T>> {
        self.by_seq
            .iter()
            .map(|&(_, slot)| &self.slots[slot].in_flight)
    }

    /// The redelivery or dead letter of the message in `slot`, removing it from `by_seq` too
    /// when it is dead-lettered. The new deadline is recorded but not scheduled.
    fn deliver_again(&mut self, slot: usize, seq: u64, now_ns: u64) -> Option<Due<T>> {
        let due = self.deliver_again_in_place(slot, seq, now_ns)?;
        if let Due::DeadLetter { .. } = due {
            if let Ok(at) = self.position(seq) {
                self.by_seq.remove(at);
            }
        }
        Some(due)
    }

    /// As `deliver_again`, but a dead letter's `by_seq` entry is left for the caller.
    fn deliver_again_in_place(&mut self, slot: usize, seq: u64, now_ns: u64) -> Option<Due<T>> {
        let entry = self.slots.get_mut(slot)?;
        debug_assert_eq!(entry.in_flight.seq, seq);
        let delivery_count = entry.in_flight.delivery_count;
        if delivery_count >= self.policy.deliver_max {
            let removed = self.slots.remove(slot).in_flight;
            return Some(Due::DeadLetter {
                seq,
                item: removed.item,
                delivery_count,
            });
        }
        let delivery_count = delivery_count + 1;
        entry.in_flight.delivery_count = delivery_count;
        entry.in_flight.deadline_ns = now_ns.saturating_add(self.policy.wait_ns(delivery_count));
        // Any heap entry still pointing here is stale from now on.
        entry.stamp = self.next_stamp;
        self.next_stamp += 1;
        Some(Due::Redeliver {
            seq,
            item: entry.in_flight.item.clone(),
            delivery_count,
        })
    }

    fn position(&self, seq: u64) -> Result<usize, usize> {
        self.by_seq.binary_search_by_key(&seq, |&(s, _)| s)
    }

    fn take_stamp(&mut self) -> u64 {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        stamp
    }

    fn is_live(&self, deadline: &Deadline) -> bool {
        self.slots
            .get(deadline.slot)
            .is_some_and(|slot| slot.stamp == deadline.stamp)
    }

    fn schedule(&mut self, deadline: Deadline) {
        if self.deadlines.len() >= self.deadlines_max {
            // At most one live entry per message in flight, so this frees at least half.
            let slots = &self.slots;
            self.deadlines
                .retain(|Reverse(d)| slots.get(d.slot).is_some_and(|slot| slot.stamp == d.stamp));
        }
        debug_assert!(self.deadlines.len() < self.deadlines_max);
        self.deadlines.push(Reverse(deadline));
    }

    /// Drops stale entries from the top of the heap, so `next_deadline_ns` can peek.
    fn settle(&mut self) {
        while let Some(Reverse(top)) = self.deadlines.peek() {
            if self.is_live(top) {
                break;
            }
            self.deadlines.pop();
        }
    }

    #[cfg(test)]
    fn capacities(&self) -> (usize, usize, usize) {
        (
            self.slots.capacity(),
            self.by_seq.capacity(),
            self.deadlines.capacity(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn policy(in_flight_max: usize, deliver_max: u16) -> RetryPolicy {
        RetryPolicy {
            in_flight_max,
            ack_wait_ns: 100,
            backoff_max_ns: 1000,
            deliver_max,
        }
    }

    fn redeliver(seq: u64, delivery_count: u16) -> Due<u64> {
        Due::Redeliver {
            seq,
            item: seq * 10,
            delivery_count,
        }
    }

    fn dead_letter(seq: u64, delivery_count: u16) -> Due<u64> {
        Due::DeadLetter {
            seq,
            item: seq * 10,
            delivery_count,
        }
    }

    fn tracked(policy: RetryPolicy, seqs: &[u64], now_ns: u64) -> RetryBuffer<u64> {
        let mut buffer = RetryBuffer::new(policy);
        for &seq in seqs {
            buffer.track(seq, seq * 10, now_ns).unwrap();
        }
        buffer
    }

    fn take_due(buffer: &mut RetryBuffer<u64>, now_ns: u64) -> Vec<Due<u64>> {
        let mut out = Vec::new();
        buffer.take_due(now_ns, &mut out);
        out
    }

    #[test]
    fn track_sets_the_first_deadline_and_ack_forgets() {
        let mut buffer = tracked(policy(4, 5), &[1, 2, 3], 10);
        assert_eq!((buffer.len(), buffer.oldest_seq()), (3, Some(1)));
        assert_eq!(buffer.next_deadline_ns(), Some(110));
        let first = buffer.get(2).unwrap();
        assert_eq!(
            (first.item, first.delivery_count, first.deadline_ns),
            (20, 1, 110)
        );
        assert!(buffer.ack(2));
        assert!(!buffer.ack(2), "already acked");
        assert!(!buffer.ack(9), "never tracked");
        assert!(buffer.ack(1));
        assert_eq!((buffer.len(), buffer.oldest_seq()), (1, Some(3)));
        assert!(buffer.ack(3));
        assert!(buffer.is_empty());
        assert_eq!(
            (buffer.next_deadline_ns(), buffer.oldest_seq()),
            (None, None)
        );
        assert!(take_due(&mut buffer, u64::MAX).is_empty());
    }

    #[test]
    fn delivered_ns_is_the_latest_delivery_of_a_message_in_flight() {
        let mut buffer = tracked(policy(4, 5), &[1, 2], 10);
        assert_eq!(buffer.delivered_ns(1), Some(10));
        // Redelivered at its deadline (110): that delivery is the one an ack answers.
        assert_eq!(take_due(&mut buffer, 110).len(), 2);
        assert_eq!(buffer.delivered_ns(2), Some(110));
        assert!(buffer.ack(2));
        assert_eq!(buffer.delivered_ns(2), None);
    }

    #[test]
    fn ack_through_is_cumulative() {
        let mut buffer = tracked(policy(8, 5), &[2, 4, 6, 8], 0);
        assert_eq!(buffer.ack_through(1), 0);
        assert_eq!(buffer.ack_through(5), 2);
        assert_eq!(buffer.oldest_seq(), Some(6));
        assert_eq!(buffer.ack_through(5), 0);
        assert_eq!(buffer.ack_through(u64::MAX), 2);
        assert!(buffer.is_empty());
        assert_eq!(buffer.next_deadline_ns(), None);
    }

    #[test]
    fn a_full_buffer_hands_the_item_back() {
        let mut buffer = tracked(policy(2, 5), &[1, 2], 0);
        assert!(!buffer.has_room());
        assert_eq!(buffer.track(3, 30, 0), Err(30));
        buffer.ack(1);
        assert!(buffer.has_room());
        assert_eq!(buffer.track(3, 30, 0), Ok(()));
        let mut none = RetryBuffer::new(policy(0, 5));
        assert!(!none.has_room());
        assert_eq!(none.track(1, 10, 0), Err(10));
    }

    #[test]
    fn nack_makes_a_message_due_at_once() {
        let mut buffer = tracked(policy(4, 5), &[1, 2], 0);
        assert!(buffer.nack(2, 30));
        assert!(!buffer.nack(7, 30));
        assert_eq!(buffer.next_deadline_ns(), Some(30));
        assert!(take_due(&mut buffer, 29).is_empty());
        assert_eq!(take_due(&mut buffer, 30), vec![redeliver(2, 2)]);
        assert_eq!(buffer.get(2).unwrap().deadline_ns, 30 + 200);
        assert_eq!(buffer.next_deadline_ns(), Some(100));
    }

    #[test]
    fn the_wait_doubles_per_delivery_up_to_the_cap() {
        let mut buffer = tracked(policy(1, u16::MAX), &[1], 0);
        let mut now_ns = 0;
        let mut waits = Vec::new();
        for _ in 0..6 {
            let deadline_ns = buffer.next_deadline_ns().unwrap();
            waits.push(deadline_ns - now_ns);
            now_ns = deadline_ns;
            assert_eq!(take_due(&mut buffer, now_ns).len(), 1);
        }
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(buffer.get(1).unwrap().delivery_count, 7);
        let p = policy(1, 1);
        assert_eq!(p.wait_ns(u16::MAX), 1000, "no overflow at the top");
        let short_cap = RetryPolicy {
            backoff_max_ns: 10,
            ..p
        };
        assert_eq!(
            short_cap.wait_ns(1),
            100,
            "the cap never shortens the first wait"
        );
        assert_eq!(short_cap.wait_ns(3), 100);
    }

    #[test]
    fn deliver_max_dead_letters_and_forgets() {
        let mut buffer = tracked(policy(4, 3), &[1, 2], 0);
        assert_eq!(
            take_due(&mut buffer, 100),
            vec![redeliver(1, 2), redeliver(2, 2)]
        );
        assert!(buffer.ack(1));
        assert_eq!(take_due(&mut buffer, 300), vec![redeliver(2, 3)]);
        assert_eq!(take_due(&mut buffer, 699), vec![]);
        assert_eq!(take_due(&mut buffer, 700), vec![dead_letter(2, 3)]);
        assert!(buffer.is_empty());
        assert_eq!(buffer.next_deadline_ns(), None);
        assert!(!buffer.ack(2));
    }

    #[test]
    fn zero_deliver_max_behaves_as_one() {
        let mut buffer = tracked(policy(4, 0), &[1], 0);
        assert_eq!(take_due(&mut buffer, 100), vec![dead_letter(1, 1)]);
    }

    #[test]
    fn due_messages_come_out_in_sequence_order_once_per_call() {
        let zero_wait = RetryPolicy {
            ack_wait_ns: 0,
            backoff_max_ns: 0,
            ..policy(8, 100)
        };
        let mut buffer = tracked(zero_wait, &[5, 6, 7], 0);
        buffer.nack(7, 0);
        buffer.nack(5, 0);
        // Every redelivery is immediately due again; each still comes out once per call.
        assert_eq!(
            take_due(&mut buffer, 0),
            vec![redeliver(5, 2), redeliver(6, 2), redeliver(7, 2)]
        );
        assert_eq!(buffer.next_deadline_ns(), Some(0));
        assert_eq!(take_due(&mut buffer, 0).len(), 3);
    }

    #[test]
    fn redeliver_all_counts_a_delivery_for_every_message() {
        let mut buffer = tracked(policy(4, 2), &[1, 2, 3], 0);
        buffer.nack(2, 5);
        assert_eq!(take_due(&mut buffer, 5), vec![redeliver(2, 2)]);
        let mut out = vec![redeliver(99, 1)];
        buffer.redeliver_all(10, &mut out);
        assert_eq!(
            out,
            vec![
                redeliver(99, 1),
                redeliver(1, 2),
                dead_letter(2, 2),
                redeliver(3, 2)
            ]
        );
        assert_eq!(buffer.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(buffer.next_deadline_ns(), Some(10 + 200));
        assert!(take_due(&mut buffer, 209).is_empty());
        assert_eq!(
            take_due(&mut buffer, 210),
            vec![dead_letter(1, 2), dead_letter(3, 2)]
        );
    }

    #[test]
    fn slots_are_reused_never_reallocated() {
        let mut buffer = RetryBuffer::new(policy(8, 3));
        let capacities = buffer.capacities();
        let mut out = Vec::new();
        let mut now_ns = 0;
        for seq in 1..=80u64 {
            buffer.track(seq, seq, now_ns).unwrap();
            if seq % 3 == 0 {
                buffer.nack(seq - 1, now_ns);
            }
            if seq % 5 == 0 {
                now_ns += 150;
                out.clear();
                buffer.take_due(now_ns, &mut out);
            }
            if seq % 8 == 0 {
                buffer.redeliver_all(now_ns, &mut out);
            }
            // Ack out of order, leaving one behind at a time.
            if !buffer.has_room() {
                let second_seq = buffer.iter().nth(1).map_or(seq, |m| m.seq);
                buffer.ack(second_seq);
                buffer.ack_through(seq - 4);
            }
            assert_eq!(buffer.capacities(), capacities);
        }
    }

    /// The buffer restated over an ordered map: seq -> (item, delivery count, deadline).
    struct Model {
        policy: RetryPolicy,
        in_flight: BTreeMap<u64, (u64, u16, u64)>,
    }

    impl Model {
        fn wait_ns(&self, delivery_count: u16) -> u64 {
            let mut wait_ns = self.policy.ack_wait_ns;
            for _ in 1..delivery_count {
                wait_ns = wait_ns.saturating_mul(2);
            }
            wait_ns.min(self.policy.backoff_max_ns.max(self.policy.ack_wait_ns))
        }

        fn deliver_again(&mut self, due: Vec<u64>, now_ns: u64) -> Vec<Due<u64>> {
            let mut out = Vec::new();
            for seq in due {
                let (item, count, _) = self.in_flight[&seq];
                if count >= self.policy.deliver_max {
                    self.in_flight.remove(&seq);
                    out.push(Due::DeadLetter {
                        seq,
                        item,
                        delivery_count: count,
                    });
                } else {
                    let deadline_ns = now_ns.saturating_add(self.wait_ns(count + 1));
                    self.in_flight.insert(seq, (item, count + 1, deadline_ns));
                    out.push(Due::Redeliver {
                        seq,
                        item,
                        delivery_count: count + 1,
                    });
                }
            }
            out
        }

        fn take_due(&mut self, now_ns: u64) -> Vec<Due<u64>> {
            let due = self
                .in_flight
                .iter()
                .filter(|(_, m)| m.2 <= now_ns)
                .map(|(&seq, _)| seq)
                .collect();
            self.deliver_again(due, now_ns)
        }

        fn redeliver_all(&mut self, now_ns: u64) -> Vec<Due<u64>> {
            let all = self.in_flight.keys().copied().collect();
            self.deliver_again(all, now_ns)
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Track {
            gap: u64,
        },
        Ack(u64),
        AckThrough(u64),
        Nack(u64),
        /// Moves time on, then takes what is due.
        Advance(u64),
        RedeliverAll,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u64..4).prop_map(|gap| Op::Track { gap }),
            2 => any::<u64>().prop_map(Op::Ack),
            1 => any::<u64>().prop_map(Op::AckThrough),
            2 => any::<u64>().prop_map(Op::Nack),
            4 => prop_oneof![
                4 => 0u64..150,
                1 => 1_000u64..1_000_000,
                1 => Just(u64::MAX / 4),
            ]
            .prop_map(Op::Advance),
            1 => Just(Op::RedeliverAll),
        ]
    }

    fn retry_policy() -> impl Strategy<Value = RetryPolicy> {
        (0usize..8, 0u64..120, 0u64..1000, 0u16..6).prop_map(
            |(in_flight_max, ack_wait_ns, backoff_max_ns, deliver_max)| RetryPolicy {
                in_flight_max,
                ack_wait_ns,
                backoff_max_ns,
                deliver_max,
            },
        )
    }

    proptest! {
        #[test]
        fn buffer_agrees_with_an_ordered_map_model(
            policy in retry_policy(),
            ops in proptest::collection::vec(op(), 0..150),
        ) {
            let mut buffer = RetryBuffer::new(policy);
            let capacities = buffer.capacities();
            let mut model = Model { policy, in_flight: BTreeMap::new() };
            let mut now_ns = 0u64;
            let mut last_seq = 0u64;
            // Picks a seq in flight most of the time, or a nearby one that is not.
            let pick = |selector: u64, last_seq: u64| selector % (last_seq + 2);
            for op in ops {
                match op {
                    Op::Track { gap } => {
                        let seq = last_seq + gap;
                        let result = buffer.track(seq, seq * 10, now_ns);
                        if model.in_flight.len() < policy.in_flight_max {
                            prop_assert_eq!(result, Ok(()));
                            let deadline_ns = now_ns.saturating_add(model.wait_ns(1));
                            model.in_flight.insert(seq, (seq * 10, 1, deadline_ns));
                            last_seq = seq;
                        } else {
                            prop_assert_eq!(result, Err(seq * 10));
                        }
                    }
                    Op::Ack(selector) => {
                        let seq = pick(selector, last_seq);
                        prop_assert_eq!(buffer.ack(seq), model.in_flight.remove(&seq).is_some());
                    }
                    Op::AckThrough(selector) => {
                        let seq = pick(selector, last_seq);
                        let before = model.in_flight.len();
                        model.in_flight.retain(|&s, _| s > seq);
                        prop_assert_eq!(buffer.ack_through(seq), before - model.in_flight.len());
                    }
                    Op::Nack(selector) => {
                        let seq = pick(selector, last_seq);
                        let known = match model.in_flight.get_mut(&seq) {
                            Some(m) => {
                                m.2 = now_ns;
                                true
                            }
                            None => false,
                        };
                        prop_assert_eq!(buffer.nack(seq, now_ns), known);
                    }
                    Op::Advance(delta_ns) => {
                        now_ns = now_ns.saturating_add(delta_ns);
                        let mut out = Vec::new();
                        buffer.take_due(now_ns, &mut out);
                        prop_assert_eq!(out, model.take_due(now_ns));
                    }
                    Op::RedeliverAll => {
                        let mut out = Vec::new();
                        buffer.redeliver_all(now_ns, &mut out);
                        prop_assert_eq!(out, model.redeliver_all(now_ns));
                    }
                }
                prop_assert_eq!(buffer.len(), model.in_flight.len());
                prop_assert_eq!(buffer.is_empty(), model.in_flight.is_empty());
                prop_assert_eq!(buffer.has_room(), model.in_flight.len() < policy.in_flight_max);
                prop_assert_eq!(buffer.oldest_seq(), model.in_flight.keys().next().copied());
                prop_assert_eq!(
                    buffer.next_deadline_ns(),
                    model.in_flight.values().map(|m| m.2).min()
                );
                let got: Vec<_> = buffer
                    .iter()
                    .map(|m| (m.seq, (m.item, m.delivery_count, m.deadline_ns)))
                    .collect();
                let want: Vec<_> = model.in_flight.iter().map(|(&s, &m)| (s, m)).collect();
                prop_assert_eq!(got, want);
                prop_assert_eq!(buffer.capacities(), capacities);
            }
        }
    }
}
