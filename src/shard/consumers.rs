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
}

/// What the shard must do for a consumer.
#[derive(Debug)]
pub enum ConsumerAction {
    Deliver {
        member: Member,
        message: Message,
    },
    /// `missed` messages were evicted before the consumer got to them.
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

    /// Adds a member. A durable consumer that comes back gets its unacknowledged messages
    /// again first.
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
        }
        Ok(())
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
        if let Some(unacked) = &mut self.unacked {
            let orphaned: Vec<u64> = unacked
                .iter()
                .filter(|entry| entry.item.member == leaving)
                .map(|entry| entry.seq)
                .collect();
            for seq in orphaned {
                unacked.nack(seq, now_ns);
            }
            unacked.take_due(now_ns, &mut self.due_scratch);
            self.carry_out_due(out);
        }
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
                    // Evicted before this consumer got to it.
                    let resume_seq = replay.first_seq().unwrap_or(last_seq + 1);
                    let resume_seq = match fresh {
                        Some(fresh) if replay.first_seq().is_none() => fresh.seq(),
                        _ => resume_seq,
                    };
                    let Some(member) = self.pick_member() else {
                        return;
                    };
                    out.push(ConsumerAction::Gap {
                        member,
                        missed: resume_seq - seq,
                        resume_seq,
                    });
                    self.next_seq = resume_seq;
                    continue;
                }
            };
            let Some(member) = self.pick_member() else {
                return;
            };
            if let Some(unacked) = &mut self.unacked {
                let tracked = Unacked {
                    message: message.clone(),
                    member,
                };
                if unacked.track(seq, tracked, now_ns).is_err() {
                    return;
                }
            }
            self.next_seq += 1;
            out.push(ConsumerAction::Deliver { member, message });
        }
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
                    item,
                    delivery_count,
                    ..
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
}
