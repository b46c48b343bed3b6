//! Durable consumers and consumer groups, kept on the topic's owner shard.
//!
//! A consumer remembers how far it got in its topic (`next_seq`) and, with acks, which
//! messages are delivered but not yet acknowledged (a [`RetryBuffer`] of `in_flight_max`
//! preallocated slots). It lives on the owner, not with its subscription, so it survives the
//! subscriber's connection: a subscription that comes back under the same name resumes with
//! its unacknowledged messages, then where it stopped. A group is the same thing with several
//! members that take turns.
//!
//! The topic's replay ring is the consumer's backlog: the consumer reads from it at its own
//! pace, so a paused consumer (in-flight full, or detached) holds no copies of its own. What
//! the ring evicts before the consumer got to it is reported as a gap, never lost silently.
//!
//! A gap is part of the consumer's state, like an unacknowledged message, because a notice
//! that dies with a connection would turn the loss silent again. It travels with the message
//! that follows it (the one at `resume_seq`): the GAP goes to whichever member gets that
//! message, just before it, on every delivery of it, until that message is acknowledged. An
//! ack of `resume_seq` proves the GAP was read, since both came in order on one connection.
//! Without acks a consumer is at-most-once, and its gap is as durable as its messages.
//!
//! Sans-IO: every entry point takes `now_ns` and appends [`ConsumerAction`]s for the shard to
//! carry out (deliver here or over a ring, publish a dead letter).

use crate::error::ErrorCode;
use crate::ids::{ShardId, Subscriber};
use crate::message::Message;
use crate::protocol::native::AckKind;
use crate::protocol::subscribe_options::AckSettings;
use crate::shard::replay::ReplayRing;
use crate::shard::retry::{Due, RetryBuffer, RetryPolicy};

/// One subscription attached to a consumer, and the shard that holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub shard: ShardId,
    pub subscriber: Subscriber,
}

/// A delivered message waiting for its ack, and who has it.
#[derive(Clone, Debug)]
pub struct Unacked {
    pub message: Message,
    pub member: Member,
    /// Messages evicted just before this one that the consumer never got: announced with
    /// every delivery of this message until it is acknowledged.
    pub gap_missed: Option<u64>,
}

/// What the shard must do for a consumer.
#[derive(Debug)]
pub enum ConsumerAction {
    Deliver {
        member: Member,
        message: Message,
    },
    /// `missed` messages were evicted before the consumer got to them. Always directly
    /// followed by the `Deliver` of `resume_seq` to the same member.
    Gap {
        member: Member,
        missed: u64,
        resume_seq: u64,
    },
    /// Delivered `delivery_count` times without an ack: publish to `$dlq.<topic>`.
    DeadLetter {
        message: Message,
        delivery_count: u16,
    },
}

pub struct Consumer {
    /// A group admits many members; a durable consumer one at a time.
    pub is_group: bool,
    /// The next sequence to deliver for the first time.
    pub next_seq: u64,
    /// Messages evicted before `next_seq` that no member has been told of yet: announced
    /// with the first delivery of `next_seq`.
    gap_missed: Option<u64>,
    pub members: Vec<Member>,
    next_member: usize,
    unacked: Option<RetryBuffer<Unacked>>,
    /// When the last member left, for `--consumer-ttl`.
    pub detached_since_ns: Option<u64>,
    due_scratch: Vec<Due<Unacked>>,
    /// Reused by group acks, so acking allocates nothing once warm.
    seq_scratch: Vec<u64>,
    acks: Option<AckSettings>,
    /// Made by the owner for a pattern group rather than asked for by a subscription: it may
    /// be dropped when it has nothing to remember (caught up, nothing in flight) and its topic
    /// is idle, and made again on the next message without losing anything.
    pub made_for_pattern: bool,
}

impl Consumer {
    pub fn new(
        is_group: bool,
        next_seq: u64,
        acks: Option<AckSettings>,
        backoff_max_ns: u64,
    ) -> Self {
        Consumer {
            is_group,
            next_seq,
            gap_missed: None,
            members: Vec::new(),
            next_member: 0,
            unacked: acks.map(|acks| {
                RetryBuffer::new(RetryPolicy {
                    in_flight_max: acks.in_flight_max as usize,
                    ack_wait_ns: u64::from(acks.ack_wait_ms) * 1_000_000,
                    backoff_max_ns,
                    deliver_max: acks.deliver_max,
                })
            }),
            detached_since_ns: Some(0),
            due_scratch: Vec::new(),
            seq_scratch: Vec::new(),
            acks,
            made_for_pattern: false,
        }
    }

    /// The ACKS settings it was made with.
    pub fn settings(&self) -> Option<AckSettings> {
        self.acks
    }

    pub fn takes_acks(&self) -> bool {
        self.unacked.is_some()
    }

    pub fn in_flight(&self) -> usize {
        self.unacked.as_ref().map_or(0, RetryBuffer::len)
    }

    /// How far behind the topic's `last_seq` it is: messages not acknowledged yet (with
    /// acks), or not delivered yet (without).
    pub fn lag(&self, last_seq: u64) -> u64 {
        let first_unfinished = self
            .unacked
            .as_ref()
            .and_then(RetryBuffer::oldest_seq)
            .unwrap_or(self.next_seq)
            .min(self.next_seq);
        (last_seq + 1).saturating_sub(first_unfinished)
    }

    /// Adds a member. A durable consumer that comes back gets its unacknowledged messages
    /// again first; a group member that joins gets at once what departed members left
    /// unacknowledged (rather than after their ack wait).
    pub fn attach(
        &mut self,
        member: Member,
        now_ns: u64,
        out: &mut Vec<ConsumerAction>,
    ) -> Result<(), ErrorCode> {
        if !self.is_group && !self.members.is_empty() {
            return Err(ErrorCode::ConsumerInUse);
        }
        self.members.push(member);
        self.detached_since_ns = None;
        if !self.is_group {
            if let Some(unacked) = &mut self.unacked {
                unacked.redeliver_all(now_ns, &mut self.due_scratch);
                self.carry_out_due(out);
            }
        } else {
            self.hand_over_orphans(now_ns, out);
        }
        Ok(())
    }

    /// Makes what was delivered to members no longer in the group due now, so the members
    /// that are here get it without waiting out its ack wait.
    fn hand_over_orphans(&mut self, now_ns: u64, out: &mut Vec<ConsumerAction>) {
        let Some(unacked) = &mut self.unacked else {
            return;
        };
        let mut orphaned = std::mem::take(&mut self.seq_scratch);
        orphaned.clear();
        orphaned.extend(
            unacked
                .iter()
                .filter(|entry| !self.members.contains(&entry.item.member))
                .map(|entry| entry.seq),
        );
        for &seq in &orphaned {
            unacked.nack(seq, now_ns);
        }
        self.seq_scratch = orphaned;
        unacked.take_due(now_ns, &mut self.due_scratch);
        self.carry_out_due(out);
    }

    /// Removes a member (unsubscribed, or its connection went away). In a group, what it had
    /// not acknowledged goes to the other members at once.
    /// Members are told apart by shard and subscriber: connection ids are per shard, so two
    /// shards may hold equal ones.
    pub fn detach(&mut self, leaving: Member, now_ns: u64, out: &mut Vec<ConsumerAction>) {
        self.members.retain(|m| *m != leaving);
        if self.members.is_empty() {
            self.detached_since_ns = Some(now_ns);
            return;
        }
        self.hand_over_orphans(now_ns, out);
    }

    /// Delivers, for the first time, whatever the topic has past `next_seq`, as far as
    /// members and in-flight room allow. `fresh` is the message just sequenced, which may not
    /// be retained (replay off) but can still go straight to a waiting consumer.
    pub fn pump(
        &mut self,
        replay: &ReplayRing<Message>,
        fresh: Option<&Message>,
        now_ns: u64,
        out: &mut Vec<ConsumerAction>,
    ) {
        let last_seq = replay.last_seq();
        while self.next_seq <= last_seq && !self.members.is_empty() {
            if self.unacked.as_ref().is_some_and(|u| !u.has_room()) {
                return;
            }
            let seq = self.next_seq;
            let message = match (replay.get(seq), fresh) {
                (Some(message), _) => message.clone(),
                (None, Some(fresh)) if fresh.seq() == seq => fresh.clone(),
                (None, _) => {
                    // Evicted before this consumer got to it: remembered, and announced with
                    // whatever message comes next.
                    let resume_seq = match (replay.first_seq(), fresh) {
                        (Some(first), _) => first,
                        (None, Some(fresh)) => fresh.seq(),
                        (None, None) => last_seq + 1,
                    };
                    debug_assert!(resume_seq > seq, "the ring only evicts from its front");
                    *self.gap_missed.get_or_insert(0) += resume_seq - seq;
                    self.next_seq = resume_seq;
                    continue;
                }
            };
            let Some(member) = self.pick_member() else {
                return;
            };
            let gap_missed = self.gap_missed;
            if let Some(unacked) = &mut self.unacked {
                let tracked = Unacked {
                    message: message.clone(),
                    member,
                    gap_missed,
                };
                if unacked.track(seq, tracked, now_ns).is_err() {
                    return;
                }
            }
            self.gap_missed = None;
            self.next_seq += 1;
            if let Some(missed) = gap_missed {
                out.push(ConsumerAction::Gap {
                    member,
                    missed,
                    resume_seq: seq,
                });
            }
            out.push(ConsumerAction::Deliver { member, message });
        }
    }

    /// When message `seq`, in flight, was last delivered.
    pub fn delivered_ns(&self, seq: u64) -> Option<u64> {
        self.unacked.as_ref()?.delivered_ns(seq)
    }

    /// Applies an ACK frame from `acker`. A cumulative ack covers only what was delivered to
    /// that member, so in a group one member cannot ack another's messages away. Returns
    /// false if this consumer takes no acks.
    pub fn ack(
        &mut self,
        acker: Member,
        (seq, kind): (u64, AckKind),
        now_ns: u64,
        out: &mut Vec<ConsumerAction>,
    ) -> bool {
        let Some(unacked) = &mut self.unacked else {
            return false;
        };
        match kind {
            AckKind::Single => {
                unacked.ack(seq);
            }
            AckKind::Cumulative if !self.is_group => {
                unacked.ack_through(seq);
            }
            AckKind::Cumulative => {
                let mut mine = std::mem::take(&mut self.seq_scratch);
                mine.clear();
                mine.extend(
                    unacked
                        .iter()
                        .take_while(|entry| entry.seq <= seq)
                        .filter(|entry| entry.item.member == acker)
                        .map(|entry| entry.seq),
                );
                for &seq in &mine {
                    unacked.ack(seq);
                }
                self.seq_scratch = mine;
            }
            AckKind::Nack => {
                if unacked.nack(seq, now_ns) {
                    unacked.take_due(now_ns, &mut self.due_scratch);
                    self.carry_out_due(out);
                }
            }
        }
        true
    }

    /// Redelivers what waited past its ack deadline; dead-letters what ran out of attempts.
    pub fn on_timer(&mut self, now_ns: u64, out: &mut Vec<ConsumerAction>) {
        if self.members.is_empty() {
            // Nobody to redeliver to; a returning member gets everything unacked at once.
            return;
        }
        if let Some(unacked) = &mut self.unacked {
            if unacked.next_deadline_ns().is_some_and(|d| d <= now_ns) {
                unacked.take_due(now_ns, &mut self.due_scratch);
                self.carry_out_due(out);
            }
        }
    }

    pub fn next_deadline_ns(&self) -> Option<u64> {
        if self.members.is_empty() {
            return None;
        }
        self.unacked
            .as_ref()
            .and_then(RetryBuffer::next_deadline_ns)
    }

    fn carry_out_due(&mut self, out: &mut Vec<ConsumerAction>) {
        let mut due = std::mem::take(&mut self.due_scratch);
        for entry in due.drain(..) {
            match entry {
                Due::Redeliver {
                    seq,
                    item,
                    delivery_count,
                } => {
                    // Back to the same member if it is still here, else to whoever is next;
                    // with nobody attached it stays in flight for the next one to attach.
                    let member = if self.members.contains(&item.member) {
                        item.member
                    } else if let Some(member) = self.pick_member() {
                        member
                    } else {
                        continue;
                    };
                    if member != item.member {
                        // Its holder is now this member: its cumulative acks cover it, and
                        // it is no longer an orphan when the next member joins.
                        if let Some(held) = self.unacked.as_mut().and_then(|u| u.get_mut(seq)) {
                            held.item.member = member;
                        }
                    }
                    if let Some(missed) = item.gap_missed {
                        out.push(ConsumerAction::Gap {
                            member,
                            missed,
                            resume_seq: item.message.seq(),
                        });
                    }
                    out.push(ConsumerAction::Deliver {
                        member,
                        message: item.message.redelivery(delivery_count),
                    });
                }
                Due::DeadLetter {
                    item,
                    delivery_count,
                    ..
                } => out.push(ConsumerAction::DeadLetter {
                    message: item.message,
                    delivery_count,
                }),
            }
        }
        self.due_scratch = due;
    }

    fn pick_member(&mut self) -> Option<Member> {
        if self.members.is_empty() {
            return None;
        }
        let member = self.members[self.next_member % self.members.len()];
        self.next_member = self.next_member.wrapping_add(1);
        Some(member)
    }
}

/// A member on shard 0 told apart by its connection index, for tests here and elsewhere.
#[cfg(test)]
pub(crate) fn test_member(index: u32) -> Member {
    Member {
        shard: ShardId(0),
        subscriber: Subscriber {
            connection: crate::ids::ConnectionId {
                index,
                generation: 0,
            },
            sub_id: 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::replay::ReplayLimits;

    fn member(index: u32) -> Member {
        test_member(index)
    }

    fn ring_with(count: u64) -> ReplayRing<Message> {
        let mut ring = ReplayRing::new(ReplayLimits {
            messages_max: 16,
            bytes_max: 1 << 20,
            ttl_ns: 0,
        });
        for seq in 1..=count {
            let mut message = Message::from_publish(&mut Vec::new(), "t", None, b"x");
            message.stamp(seq, seq);
            ring.push(seq, seq, message.frame_len(), message, seq);
        }
        ring
    }

    fn delivered(out: &mut Vec<ConsumerAction>) -> Vec<(u32, u64, u16)> {
        out.drain(..)
            .filter_map(|action| match action {
                ConsumerAction::Deliver { member, message } => Some((
                    member.subscriber.connection.index,
                    message.seq(),
                    message.delivery_count(),
                )),
                _ => None,
            })
            .collect()
    }

    const ACKS: AckSettings = AckSettings {
        in_flight_max: 2,
        ack_wait_ms: 1,
        deliver_max: 2,
    };

    #[test]
    fn delivery_pauses_at_in_flight_max_and_acks_resume_it() {
        let ring = ring_with(5);
        let mut consumer = Consumer::new(false, 1, Some(ACKS), 10_000_000);
        let mut out = Vec::new();
        consumer.attach(member(1), 0, &mut out).unwrap();
        consumer.pump(&ring, None, 0, &mut out);
        assert_eq!(delivered(&mut out), [(1, 1, 1), (1, 2, 1)]);
        consumer.ack(member(1), (1, AckKind::Single), 0, &mut out);
        consumer.pump(&ring, None, 0, &mut out);
        assert_eq!(delivered(&mut out), [(1, 3, 1)]);
        consumer.ack(member(1), (3, AckKind::Cumulative), 0, &mut out);
        consumer.pump(&ring, None, 0, &mut out);
        assert_eq!(delivered(&mut out), [(1, 4, 1), (1, 5, 1)]);
    }

    #[test]
    fn unacked_messages_are_redelivered_then_dead_lettered() {
        let ring = ring_with(1);
        let mut consumer = Consumer::new(false, 1, Some(ACKS), 10_000_000);
        let mut out = Vec::new();
        consumer.attach(member(1), 0, &mut out).unwrap();
        consumer.pump(&ring, None, 0, &mut out);
        assert_eq!(delivered(&mut out), [(1, 1, 1)]);
        consumer.on_timer(1_000_000, &mut out);
        assert_eq!(delivered(&mut out), [(1, 1, 2)]);
        consumer.on_timer(10_000_000, &mut out);
        assert!(matches!(
            out.as_slice(),
            [ConsumerAction::DeadLetter {
                delivery_count: 2,
                ..
            }]
        ));
        assert_eq!(consumer.in_flight(), 0);
    }

    #[test]
    fn a_returning_durable_consumer_gets_its_unacked_messages_first() {
        let ring = ring_with(3);
        let mut consumer = Consumer::new(false, 1, Some(ACKS), 10_000_000);
        let mut out = Vec::new();
        consumer.attach(member(1), 0, &mut out).unwrap();
        consumer.pump(&ring, None, 0, &mut out);
        assert_eq!(delivered(&mut out).len(), 2);
        assert_eq!(
            consumer.attach(member(2), 0, &mut out),
            Err(ErrorCode::ConsumerInUse)
        );
        consumer.detach(member(1), 5, &mut out);
        assert!(out.is_empty());
        consumer.on_timer(1_000_000_000, &mut out);
        assert!(out.is_empty(), "nobody to redeliver to");
        consumer.attach(member(2), 6, &mut out).unwrap();
        assert_eq!(delivered(&mut out), [(2, 1, 2), (2, 2, 2)]);
        consumer.ack(member(2), (2, AckKind::Cumulative), 6, &mut out);
        consumer.pump(&ring, None, 6, &mut out);
        assert_eq!(delivered(&mut out), [(2, 3, 1)]);
    }

    #[test]
    fn a_group_splits_messages_and_hands_a_leavers_unacked_to_the_others() {
        let ring = ring_with(4);
        let acks = AckSettings {
            in_flight_max: 10,
            ..ACKS
        };
        let mut group = Consumer::new(true, 1, Some(acks), 10_000_000);
        let mut out = Vec::new();
        group.attach(member(1), 0, &mut out).unwrap();
        group.attach(member(2), 0, &mut out).unwrap();
        group.pump(&ring, None, 0, &mut out);
        assert_eq!(
            delivered(&mut out),
            [(1, 1, 1), (2, 2, 1), (1, 3, 1), (2, 4, 1)]
        );
        group.ack(member(2), (2, AckKind::Single), 0, &mut out);
        // Member 1's cumulative ack covers its own 1 and 3, not member 2's 4.
        group.ack(member(1), (4, AckKind::Cumulative), 0, &mut out);
        assert_eq!(group.in_flight(), 1);
        group.detach(member(2), 1, &mut out);
        assert_eq!(delivered(&mut out), [(1, 4, 2)]);
    }

    #[test]
    fn members_with_equal_connection_ids_on_different_shards_stay_apart() {
        // Regression: connection ids are per shard, so equal ids on two shards are two members.
        let ring = ring_with(2);
        let mut group = Consumer::new(true, 1, None, 0);
        let mut out = Vec::new();
        let here = member(1);
        let there = Member {
            shard: ShardId(3),
            ..here
        };
        group.attach(here, 0, &mut out).unwrap();
        group.attach(there, 0, &mut out).unwrap();
        group.detach(here, 1, &mut out);
        assert_eq!(group.members, [there]);
        group.pump(&ring, None, 1, &mut out);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn a_nack_with_no_member_attached_keeps_the_message_in_flight() {
        // Regression: a nack reaching a consumer whose members all left must not pick from
        // an empty member list.
        let ring = ring_with(1);
        let acks = AckSettings {
            deliver_max: 5,
            ..ACKS
        };
        let mut consumer = Consumer::new(false, 1, Some(acks), 10_000_000);
        let mut out = Vec::new();
        consumer.attach(member(1), 0, &mut out).unwrap();
        consumer.pump(&ring, None, 0, &mut out);
        out.clear();
        consumer.detach(member(1), 1, &mut out);
        consumer.ack(member(2), (1, AckKind::Nack), 2, &mut out);
        assert!(out.is_empty());
        assert_eq!(consumer.in_flight(), 1);
        consumer.attach(member(3), 3, &mut out).unwrap();
        assert_eq!(delivered(&mut out), [(3, 1, 3)]);
    }

    #[test]
    fn an_evicted_backlog_is_reported_as_a_gap() {
        let ring = ring_with(20); // keeps 5..=20
        let mut consumer = Consumer::new(false, 1, None, 0);
        let mut out = Vec::new();
        consumer.attach(member(1), 0, &mut out).unwrap();
        consumer.pump(&ring, None, 0, &mut out);
        assert!(matches!(
            out[0],
            ConsumerAction::Gap {
                missed: 4,
                resume_seq: 5,
                ..
            }
        ));
        assert_eq!(delivered(&mut out).len(), 16);
    }

    /// (member, kind, seq): `G` for a gap notice (seq = resume_seq), `M` for a delivery.
    fn notices(out: &mut Vec<ConsumerAction>) -> Vec<(u32, char, u64)> {
        out.drain(..)
            .filter_map(|action| match action {
                ConsumerAction::Deliver { member, message } => {
                    Some((member.subscriber.connection.index, 'M', message.seq()))
                }
                ConsumerAction::Gap {
                    member, resume_seq, ..
                } => Some((member.subscriber.connection.index, 'G', resume_seq)),
                ConsumerAction::DeadLetter { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_gap_is_announced_again_until_the_message_after_it_is_acked() {
        // Regression: the owner moved past a gap when it sent the notice, so a consumer that
        // died before reading it never heard of the loss.
        let ring = ring_with(20); // keeps 5..=20
        let acks = AckSettings {
            in_flight_max: 1,
            deliver_max: 10,
            ..ACKS
        };
        let mut consumer = Consumer::new(false, 1, Some(acks), 10_000_000);
        let mut out = Vec::new();
        consumer.attach(member(1), 0, &mut out).unwrap();
        consumer.pump(&ring, None, 0, &mut out);
        assert_eq!(notices(&mut out), [(1, 'G', 5), (1, 'M', 5)]);
        consumer.detach(member(1), 1, &mut out);
        consumer.attach(member(2), 2, &mut out).unwrap();
        assert_eq!(notices(&mut out), [(2, 'G', 5), (2, 'M', 5)], "told again");
        consumer.on_timer(1_000_000_000, &mut out);
        assert_eq!(
            notices(&mut out),
            [(2, 'G', 5), (2, 'M', 5)],
            "and on redelivery"
        );
        consumer.ack(member(2), (5, AckKind::Single), 3, &mut out);
        consumer.pump(&ring, None, 3, &mut out);
        assert_eq!(notices(&mut out), [(2, 'M', 6)]);
        consumer.detach(member(2), 4, &mut out);
        consumer.attach(member(3), 5, &mut out).unwrap();
        assert_eq!(notices(&mut out), [(3, 'M', 6)], "an acked gap is settled");
    }

    #[test]
    fn a_gap_waiting_for_room_grows_if_more_is_evicted_meanwhile() {
        let mut ring = ring_with(20); // keeps 5..=20
        let mut consumer = Consumer::new(false, 1, Some(ACKS), 10_000_000);
        let mut out = Vec::new();
        consumer.attach(member(1), 0, &mut out).unwrap();
        consumer.pump(&ring, None, 0, &mut out);
        assert_eq!(notices(&mut out), [(1, 'G', 5), (1, 'M', 5), (1, 'M', 6)]);
        // In flight is full; the ring moves on to 11..=26 meanwhile.
        for seq in 21..=26 {
            let mut message = Message::from_publish(&mut Vec::new(), "t", None, b"x");
            message.stamp(seq, seq);
            ring.push(seq, seq, message.frame_len(), message, seq);
        }
        consumer.ack(member(1), (6, AckKind::Cumulative), 1, &mut out);
        consumer.pump(&ring, None, 1, &mut out);
        let actions: Vec<_> = out
            .iter()
            .filter_map(|action| match action {
                ConsumerAction::Gap {
                    missed, resume_seq, ..
                } => Some((*missed, *resume_seq)),
                _ => None,
            })
            .collect();
        assert_eq!(actions, [(4, 11)], "7..=10 missed, in one notice");
        assert_eq!(
            notices(&mut out),
            [(1, 'G', 11), (1, 'M', 11), (1, 'M', 12)]
        );
    }

    #[test]
    fn in_a_group_the_gap_goes_to_the_member_that_gets_the_message_after_it() {
        let ring = ring_with(20); // keeps 5..=20
        let acks = AckSettings {
            in_flight_max: 3,
            ..ACKS
        };
        let mut group = Consumer::new(true, 1, Some(acks), 10_000_000);
        let mut out = Vec::new();
        group.attach(member(1), 0, &mut out).unwrap();
        group.attach(member(2), 0, &mut out).unwrap();
        group.pump(&ring, None, 0, &mut out);
        assert_eq!(
            notices(&mut out),
            [(1, 'G', 5), (1, 'M', 5), (2, 'M', 6), (1, 'M', 7)]
        );
        // Member 1 dies unread: member 2 gets its messages at once, the gap with them.
        group.detach(member(1), 1, &mut out);
        assert_eq!(notices(&mut out), [(2, 'G', 5), (2, 'M', 5), (2, 'M', 7)]);
        // Member 2 now holds them: its cumulative ack covers them all.
        group.ack(member(2), (7, AckKind::Cumulative), 2, &mut out);
        assert_eq!(group.in_flight(), 0);
    }

    #[test]
    fn a_member_joining_a_group_gets_what_departed_members_left_at_once() {
        // Regression: they waited for their ack wait (30 s by default) after a join.
        let ring = ring_with(2);
        let acks = AckSettings {
            in_flight_max: 10,
            ack_wait_ms: 30_000,
            deliver_max: 5,
        };
        let mut group = Consumer::new(true, 1, Some(acks), 60_000_000_000);
        let mut out = Vec::new();
        group.attach(member(1), 0, &mut out).unwrap();
        group.pump(&ring, None, 0, &mut out);
        assert_eq!(notices(&mut out), [(1, 'M', 1), (1, 'M', 2)]);
        group.detach(member(1), 1, &mut out);
        assert!(out.is_empty(), "nobody to give them to");
        group.attach(member(2), 2, &mut out).unwrap();
        assert_eq!(notices(&mut out), [(2, 'M', 1), (2, 'M', 2)]);
        // A third member finds nothing orphaned: member 2 holds both.
        group.attach(member(3), 3, &mut out).unwrap();
        assert!(out.is_empty());
    }
}
