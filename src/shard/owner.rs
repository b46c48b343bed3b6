//! The topic-owner side of a shard, and everything that arrives over the rings.
//!
//! An owner sequences each message of its topics, then forwards it once per shard with
//! matching subscribers (not once per subscriber); each of those shards fans out to its own
//! connections. Requests from a peer are handled in ring order; a request that needs room in
//! a terminal outbox waits (with the rest of its batch) until there is room, so a full peer
//! slows the publishers down instead of losing anything.

use crate::error::{CloseReason, ErrorCode};
use crate::ids::ShardId;
use crate::ids::Subscriber;
use crate::mesh::message::Refusal;
use crate::mesh::message::{
    ConsumerRequest, OwnerRequest, Published, Replay, ReplyTarget, Subscribed, Terminal,
};
use crate::message::{Handoff, Message};
use crate::protocol::native::AckKind;
use crate::protocol::subscribe_options::AckSettings;
use crate::protocol::subscribe_options::Start;
use crate::protocol::topic::TOPIC_BYTES_MAX;
use crate::protocol::topic::{pattern_matches, SubjectKind};
use crate::shard::consumers::{ConsumerAction, Member};
use crate::shard::pattern_groups::consumer_key;
use crate::shard::wire::Answer;

use super::commands::unix_time_ns;
use super::connection::EnqueueOutcome;
use super::topics::{TopicSlot, INBOX_PREFIX};
use super::Shard;

/// Dead letters of `orders` go to `$dlq.orders`.
pub const DEAD_LETTER_PREFIX: &str = "$dlq.";
/// Why a message was dead-lettered, in its envelope.
const DEAD_LETTER_REASON: &str = "max_deliver";

/// Batches taken from one ring per loop turn, so one busy peer cannot starve the sockets.
const RING_BATCHES_PER_TURN_MAX: usize = 64;

impl Shard {
    /// Whether every terminal outbox can take one more message: the most a single request
    /// adds to each.
    pub(super) fn terminal_room(&mut self) -> bool {
        self.peers_mut().all(|link| link.terminals_out.make_room())
    }

    /// Sequences a message of a topic this shard owns and sends it to every shard with a
    /// matching subscription (delivering directly to this shard's own subscribers).
    /// The caller has checked `terminal_room`.
    /// `creator`: the publishing connection, which makes the topic if it is new (None for
    /// the broker's own publishes).
    /// `slot`: where the publish path found the topic, if it looked (see
    /// [`super::topics::OwnedTopics::publishable`]).
    pub(super) fn sequence_and_fan_out(
        &mut self,
        mut message: Message,
        (creator, slot): (Option<super::topics::Creator>, Option<TopicSlot>),
    ) -> Result<Published, ErrorCode> {
        if self.pattern_groups.has_acked() {
            self.ensure_pattern_group_consumers(message.topic())?;
        }
        let mut matches = std::mem::take(&mut self.match_scratch);
        matches.clear();
        let sequenced = self.owned.sequence(
            &mut message,
            (&self.pattern_interest, self.clock_ns),
            &mut self.consumer_actions,
            (creator, slot),
            (&self.local, &mut matches),
        );
        // Taken out only when there is something to carry out: swapping the list in and out
        // on every publish cost a drop of the empty one each time.
        if !self.consumer_actions.is_empty() {
            let mut actions = std::mem::take(&mut self.consumer_actions);
            self.carry_out(message.topic(), &mut actions);
            self.consumer_actions = actions;
        }
        let sequenced = match sequenced {
            Ok(sequenced) => sequenced,
            Err(code) => {
                self.match_scratch = matches;
                return Err(code);
            }
        };
        // The board is the first lease's word for a shard that has not named its topics yet.
        if sequenced.pressed
            || (self.shard_count > 1 && self.pressure_board.any_of(sequenced.shard_mask))
        {
            if let Some((shard, connection)) = creator {
                self.hold_publisher(message.topic(), shard, connection);
            }
        }
        let mask = sequenced.shard_mask;
        self.counters.published += 1;
        let me = self.id;
        for link in self.peers_mut() {
            if mask & link.peer.bit() != 0 {
                link.terminals_out.push_weighted(
                    Terminal::Deliver {
                        message: message.clone(),
                    },
                    message.frame_len(),
                );
            }
        }
        let published = Published {
            seq: sequenced.seq,
            receivers: sequenced.receivers,
        };
        if mask & me.bit() != 0 {
            // The exact ones came with the sequencing, from the topic's own copy.
            self.local.matching_patterns(message.topic(), &mut matches);
            // The last local subscriber takes the message itself when nothing below needs
            // it (no inbox to reclaim, no pattern group to feed): one reference count
            // increment and decrement fewer a message.
            let needed_after =
                !self.pattern_groups.is_empty() || message.topic().starts_with(INBOX_PREFIX);
            if !needed_after {
                self.deliver_to_each(&matches, message);
                self.match_scratch = matches;
                return Ok(published);
            }
            for &subscriber in &matches {
                self.deliver_to(subscriber, &message);
            }
        }
        self.match_scratch = matches;
        self.owned.reclaim_inbox(message.topic());
        if !self.pattern_groups.is_empty() {
            let mut actions = std::mem::take(&mut self.consumer_actions);
            self.pattern_groups.pick_members(message.topic(), |member| {
                actions.push(ConsumerAction::Deliver {
                    member,
                    message: message.clone(),
                })
            });
            self.carry_out(message.topic(), &mut actions);
            self.consumer_actions = actions;
        }
        Ok(published)
    }

    /// Applies an ack from `acker` to a consumer of a topic this shard owns, and records its
    /// round trip. The caller has checked `terminal_room`.
    pub(super) fn apply_ack(
        &mut self,
        (topic, consumer): (&str, &str),
        acker: Member,
        (seq, kind): (u64, AckKind),
    ) {
        self.counters.count_ack(kind);
        let now_ns = unix_time_ns();
        // Acks are the hot path of at-least-once: reuse the shard's action list.
        let mut actions = std::mem::take(&mut self.consumer_actions);
        let delivered_ns =
            self.owned
                .ack_consumer((topic, consumer), acker, (seq, kind), now_ns, &mut actions);
        if let Some(delivered_ns) = delivered_ns {
            self.latency
                .ack
                .record_ns(now_ns.saturating_sub(delivered_ns));
        }
        self.carry_out(topic, &mut actions);
        self.consumer_actions = actions;
    }

    /// Answers a publish made on this shard.
    // Once per publish, from the connection kinds' modules.
    #[inline(always)]
    pub(super) fn answer_publish(
        &mut self,
        reply: ReplyTarget,
        quiet: bool,
        result: Result<Published, ErrorCode>,
    ) {
        match result {
            Ok(_) if quiet => {}
            Ok(published) => self.answer(
                reply.connection,
                reply.request_id,
                Answer::Published(published),
            ),
            Err(code) => {
                let reason = match code {
                    ErrorCode::TopicNotFound => {
                        "no such topic, and --auto-create-topics is off: create it first".into()
                    }
                    ErrorCode::TooManyConsumers => format!(
                        "an acked pattern group cannot get a consumer for this topic: {}",
                        self.limit_reason(code).unwrap_or_default()
                    ),
                    code => self
                        .limit_reason(code)
                        .unwrap_or_else(|| "the message was not accepted".into()),
                };
                self.reply_err(reply.connection, reply.request_id, code, &reason)
            }
        }
    }

    /// Fans a sequenced message out to this shard's matching subscriptions.
    pub(super) fn deliver_local(&mut self, message: Message) {
        let mut matches = std::mem::take(&mut self.match_scratch);
        matches.clear();
        self.local.matching(message.topic(), &mut matches);
        self.deliver_to_each(&matches, message);
        self.match_scratch = matches;
    }

    /// Delivers `message` to each of `subscribers`, in order; the last takes the message
    /// itself rather than a new reference (see [`Handoff`]).
    fn deliver_to_each(&mut self, subscribers: &[Subscriber], message: Message) {
        if let Some((&last, others)) = subscribers.split_last() {
            for &subscriber in others {
                self.deliver_to(subscriber, &message);
            }
            self.deliver_to(last, message);
        }
    }

    /// Queues one delivery under the slow-consumer policy. Returns false when the subscriber
    /// is gone or was just cut as slow.
    #[inline]
    fn deliver_to<'a>(&mut self, subscriber: Subscriber, message: impl Into<Handoff<'a>>) -> bool {
        self.deliver_handoff(subscriber, message.into())
    }

    /// One body for both kinds of hand-over, so the connection's enqueue stays inlined in it.
    fn deliver_handoff(&mut self, subscriber: Subscriber, handoff: Handoff<'_>) -> bool {
        let outbound_bytes_max = self.config.outbound_bytes_max;
        let policy = self.config.slow_consumer;
        let turn_now = self.turn_now;
        // Looked up by hand rather than by `connection_mut`, so the event cache (another
        // field) can be borrowed alongside.
        let id = subscriber.connection;
        let Some(conn) = self
            .connections
            .get_mut(id.index as usize)
            .filter(|conn| conn.id == id)
        else {
            return false;
        };
        if conn.is_closing() {
            return false;
        }
        // The pressure note below names the topic after the message has gone into the queue.
        // A message handed over is kept for it when this delivery may press its subscriber
        // (take it past half the limit), counting the delivery at a bound of what any wire
        // words a message as: a JSON event escapes a control byte in six.
        let may_press = |queued: usize, message: &Message| {
            queued + message.frame_len().saturating_mul(6) + 4096 > outbound_bytes_max / 2
        };
        let shared = match &handoff {
            Handoff::Shared(message) => Some(*message),
            Handoff::Last(_) => None,
        };
        let mut pressure_topic_holder = None;
        let handoff = match handoff {
            Handoff::Last(message)
                if !self.reading
                    && self.config.publisher_stall_ms_max > 0
                    && may_press(conn.queued_bytes(), &message) =>
            {
                Handoff::Shared(&*pressure_topic_holder.insert(message))
            }
            handoff => handoff,
        };
        let outcome = conn.enqueue_delivery(
            subscriber.sub_id,
            handoff,
            &mut self.events,
            (outbound_bytes_max, policy),
        );
        let queued_bytes = conn.queued_bytes();
        let mut pressing = false;
        let write_now = queued_bytes >= conn.out.stage_bytes_max();
        // Past half the limit, the publisher being read is paused (see `Shard::stall`), so a
        // subscriber that reads gets to catch up instead of being cut. Half, because every
        // other publisher feeding it may still add one read's worth before it is paused too.
        if queued_bytes > outbound_bytes_max / 2 && self.config.publisher_stall_ms_max > 0 {
            if !conn.over_watermark {
                conn.over_watermark = true;
                conn.pressed_since = turn_now;
                self.pressured.push(id);
            }
            pressing = !conn.stall_spent;
        }
        // Marked dirty here rather than by `mark_dirty`, which would look the connection up
        // again; this is once per delivery.
        // Not for a slow consumer: closing it queues an ERR, which must mark it itself.
        let queued = !matches!(outcome, EnqueueOutcome::SlowConsumer);
        let newly_dirty = queued && !conn.dirty;
        conn.dirty |= queued;
        match outcome {
            EnqueueOutcome::Queued => {}
            EnqueueOutcome::QueuedAfterDropping(dropped) => self.counters.dropped += dropped,
            EnqueueOutcome::SlowConsumer => {
                self.counters.slow_consumer_disconnects += 1;
                self.close_slow_consumer(subscriber.connection);
                return false;
            }
        }
        if newly_dirty {
            self.dirty.push(subscriber.connection);
        }
        if pressing {
            // The publisher being read stops here (its shard, the owner and this subscriber
            // are all this shard); a delivery that came over a ring has its publisher held
            // through the topic's owner instead (`note_pressure`).
            self.stall_reader = true;
            if !self.reading {
                if let Some(message) = shared.or(pressure_topic_holder.as_ref()) {
                    self.note_pressure(id, message.topic());
                }
            }
        }
        if write_now {
            self.flush_connection(subscriber.connection);
        }
        true
    }

    fn close_slow_consumer(&mut self, id: crate::ids::ConnectionId) {
        if let Some(conn) = self.connection_mut(id) {
            let undelivered = conn.out.discard_pending();
            self.counters.undelivered += undelivered;
        }
        self.reply_err(
            id,
            0,
            ErrorCode::SlowConsumer,
            "outbound queue over --outbound-bytes-max; closing",
        );
        self.begin_close(id, CloseReason::SlowConsumer);
    }

    /// Handles one request from a peer. The caller has checked `terminal_room`.
    fn handle_request(&mut self, from: ShardId, request: OwnerRequest) {
        match request {
            OwnerRequest::Publish {
                message,
                reply,
                quiet,
            } => {
                let result =
                    self.sequence_and_fan_out(message, (Some((from, reply.connection)), None));
                if !quiet || result.is_err() {
                    self.link_mut(from)
                        .terminals_out
                        .push(Terminal::PublishOutcome { reply, result });
                }
            }
            OwnerRequest::Subscribe {
                topic,
                start,
                ticket,
                consumer: None,
                connection,
            } => {
                let result = self.owned.add_subscriber(
                    &topic,
                    (from, Some((from, connection))),
                    start,
                    unix_time_ns(),
                );
                self.link_mut(from)
                    .terminals_out
                    .push(Terminal::SubscribeAck { ticket, result });
            }
            OwnerRequest::Subscribe {
                topic,
                start,
                ticket,
                consumer: Some(consumer),
                ..
            } => {
                let mut actions = Vec::new();
                let result = self.attach_consumer(&topic, &consumer, from, start, &mut actions);
                // The ack goes first: the subscriber's shard makes the subscription live on
                // it, and the deliveries follow on the same ring.
                self.link_mut(from)
                    .terminals_out
                    .push(Terminal::SubscribeAck { ticket, result });
                self.carry_out(&topic, &mut actions);
            }
            OwnerRequest::Detach {
                topic,
                consumer,
                subscriber,
            } => {
                let mut actions = Vec::new();
                self.owned.detach_consumer(
                    &topic,
                    &consumer,
                    Member {
                        shard: from,
                        subscriber,
                    },
                    unix_time_ns(),
                    &mut actions,
                );
                self.carry_out(&topic, &mut actions);
            }
            OwnerRequest::Ack {
                topic,
                consumer,
                subscriber,
                seq,
                kind,
            } => {
                let acker = Member {
                    shard: from,
                    subscriber,
                };
                self.apply_ack((&topic, &consumer), acker, (seq, kind));
            }
            OwnerRequest::CreateTopic {
                topic,
                replay_limits,
                presence,
                reply,
            } => {
                let result = self.owned.create(&topic, replay_limits);
                if result.is_ok() {
                    self.owned.set_presence(&topic, presence);
                }
                self.link_mut(from)
                    .terminals_out
                    .push(Terminal::TopicCreated { reply, result });
            }
            OwnerRequest::BrokerPublish { message } => self.publish_from_broker(message),
            OwnerRequest::Unsubscribe { topic, epoch } => {
                self.owned.remove_subscriber(&topic, from, epoch)
            }
            OwnerRequest::Barrier { reply } => {
                self.link_mut(from)
                    .terminals_out
                    .push(Terminal::BarrierPassed { reply });
            }
            OwnerRequest::KillClients {
                filter,
                spare,
                reply,
            } => {
                let killed = self.kill_resp_clients(&filter, spare);
                self.link_mut(from)
                    .terminals_out
                    .push(Terminal::KillOutcome { reply, killed });
            }
            OwnerRequest::Stats {
                reply,
                presence,
                resp_client_lines,
            } => {
                let stats = Box::new(self.shard_stats(presence.as_deref(), resp_client_lines));
                self.link_mut(from)
                    .terminals_out
                    .push(Terminal::Stats { reply, stats });
            }
            OwnerRequest::DeleteTopic { topic, reply } => {
                let result = self.delete_owned_topic(&topic);
                // Behind the requester's shard's TopicDeleted on the same ring: one message
                // past the room `terminal_room` checked, which `Outbox::push` allows (bounded:
                // one per DELETE_TOPIC).
                self.link_mut(from)
                    .terminals_out
                    .push(Terminal::DeleteOutcome { reply, result });
            }
            OwnerRequest::PatternSubscribe { pattern, ticket } => {
                self.pattern_interest.insert(&pattern, from);
                self.link_mut(from)
                    .terminals_out
                    .push(Terminal::SubscribeAck {
                        ticket,
                        result: Ok(Subscribed::default()),
                    });
            }
            OwnerRequest::Pressure { topic } => {
                let until_ns = self.clock_ns + self.pressure_lease_ns();
                self.owned.press(&topic, until_ns);
            }
            OwnerRequest::PatternUnsubscribe { pattern } => {
                self.pattern_interest.remove(&pattern, from);
            }
            OwnerRequest::PatternGroupJoin {
                pattern,
                group,
                member,
                acks,
                ticket,
            } => {
                let result = self
                    .join_pattern_group_here(&pattern, &group, member, acks)
                    .map(|()| Subscribed::default())
                    .map_err(Refusal::from);
                self.link_mut(from)
                    .terminals_out
                    .push(Terminal::SubscribeAck { ticket, result });
            }
            OwnerRequest::PatternGroupLeave {
                pattern,
                group,
                subscriber,
                ticket,
            } => {
                self.leave_pattern_group_here(
                    &pattern,
                    &group,
                    Member {
                        shard: from,
                        subscriber,
                    },
                );
                if let Some(ticket) = ticket {
                    self.link_mut(from)
                        .terminals_out
                        .push(Terminal::SubscribeAck {
                            ticket,
                            result: Ok(Subscribed::default()),
                        });
                }
            }
        }
    }

    fn handle_terminal(&mut self, terminal: Terminal) {
        match terminal {
            Terminal::Deliver { message } => self.deliver_local(message),
            Terminal::StallPublisher { connection } => self.stall_for_lease(connection),
            Terminal::DeliverTo {
                subscriber,
                message,
            } => {
                if self.consumer_subscription_is_live(subscriber, message.topic()) {
                    self.deliver_to(subscriber, message);
                }
            }
            Terminal::GapTo {
                subscriber,
                missed,
                resume_seq,
                topic,
            } => self.queue_gap(subscriber, (missed, resume_seq), &topic),
            Terminal::PublishOutcome { reply, result } => {
                // The owner sends an outcome for a quiet publish only when it failed.
                self.answer_publish(reply, false, result);
            }
            Terminal::TopicCreated { reply, result } => self.answer_create_topic(reply, result),
            Terminal::TopicDeleted { topic } => self.end_topic_subscriptions(&topic),
            Terminal::DeleteOutcome { reply, result } => self.answer_delete_topic(reply, result),
            Terminal::Stats { reply, stats } => self.add_stats_part(reply, *stats),
            Terminal::KillOutcome { reply, killed } => self.answer_kill(reply, killed),
            Terminal::BarrierPassed { reply } => {
                self.answer(reply.connection, reply.request_id, Answer::Done)
            }
            Terminal::SubscribeAck { ticket, result } => {
                let key = ticket.0 as usize;
                let Some(pending) = self.pending_subscribes.get_mut(key) else {
                    debug_assert!(false, "ack for an unknown ticket");
                    return;
                };
                pending.acks_remaining -= 1;
                if let Err(refusal) = &result {
                    pending.refused.get_or_insert(refusal.code);
                }
                let pending = &self.pending_subscribes[key];
                if pending.kind == SubjectKind::Pattern || pending.acks_remaining > 0 {
                    // A pattern waits for every shard; acks carry nothing else for it.
                    if pending.acks_remaining == 0 {
                        let pending = self.pending_subscribes.remove(key);
                        match pending.refused {
                            None => self.answer(
                                pending.subscriber.connection,
                                pending.request_id,
                                Answer::Done,
                            ),
                            Some(code) => self.take_back_pattern_group_join(
                                pending.subscriber,
                                (pending.request_id, &pending.subject),
                                code,
                            ),
                        }
                    }
                    return;
                }
                let pending = self.pending_subscribes.remove(key);
                self.finish_exact_subscribe(
                    pending.subscriber,
                    pending.request_id,
                    &pending.subject,
                    (Some(ticket), pending.consumer),
                    result,
                );
            }
        }
    }

    pub(super) fn attach_consumer(
        &mut self,
        topic: &str,
        consumer: &ConsumerRequest,
        from: ShardId,
        start: Start,
        actions: &mut Vec<ConsumerAction>,
    ) -> Result<Subscribed, Refusal> {
        let backoff_max_ns = self
            .config
            .redelivery_backoff_max_ms
            .saturating_mul(1_000_000);
        self.owned.attach_consumer(
            topic,
            consumer,
            from,
            start,
            unix_time_ns(),
            backoff_max_ns,
            actions,
        )
    }

    /// Carries out what consumers of `topic` asked for: deliveries (here, or over the ring
    /// to the member's shard), gap notices, dead letters. A pump may add up to
    /// `in_flight_max` deliveries at once, so these may take an outbox past its batch size.
    pub(super) fn carry_out(&mut self, topic: &str, actions: &mut Vec<ConsumerAction>) {
        for action in actions.drain(..) {
            if let ConsumerAction::Deliver { message, .. } = &action {
                self.counters.redelivered += u64::from(message.delivery_count() > 1);
            }
            match action {
                ConsumerAction::Deliver { member, message } if member.shard == self.id => {
                    self.deliver_to(member.subscriber, message);
                }
                ConsumerAction::Deliver { member, message } => {
                    self.link_mut(member.shard)
                        .terminals_out
                        .push(Terminal::DeliverTo {
                            subscriber: member.subscriber,
                            message,
                        });
                }
                ConsumerAction::Gap {
                    member,
                    missed,
                    resume_seq,
                } if member.shard == self.id => {
                    self.queue_gap(member.subscriber, (missed, resume_seq), topic)
                }
                ConsumerAction::Gap {
                    member,
                    missed,
                    resume_seq,
                } => self
                    .link_mut(member.shard)
                    .terminals_out
                    .push(Terminal::GapTo {
                        subscriber: member.subscriber,
                        missed,
                        resume_seq,
                        topic: topic.into(),
                    }),
                ConsumerAction::DeadLetter {
                    message,
                    delivery_count,
                } => {
                    self.counters.dead_lettered += 1;
                    let dlq_topic = format!("{DEAD_LETTER_PREFIX}{topic}");
                    if dlq_topic.len() > TOPIC_BYTES_MAX {
                        log::warn!(
                            "event=dead_letter_unroutable shard={} topic={topic} seq={}",
                            self.id,
                            message.seq()
                        );
                        continue;
                    }
                    let mut envelope = Vec::with_capacity(11 + message.payload().len() + 16);
                    envelope.extend_from_slice(&message.seq().to_be_bytes());
                    envelope.extend_from_slice(&delivery_count.to_be_bytes());
                    envelope.push(DEAD_LETTER_REASON.len() as u8);
                    envelope.extend_from_slice(DEAD_LETTER_REASON.as_bytes());
                    envelope.extend_from_slice(message.payload());
                    let dead = Message::from_publish(
                        &mut self.encode_scratch,
                        &dlq_topic,
                        None,
                        &envelope,
                    );
                    let owner = self.owner_of(&dlq_topic);
                    if owner == self.id {
                        self.publish_from_broker(dead);
                    } else {
                        self.link_mut(owner)
                            .requests_out
                            .push(OwnerRequest::BrokerPublish { message: dead });
                    }
                }
            }
        }
    }

    /// Sequences one of the broker's own messages (a dead letter, a presence event).
    pub(super) fn publish_from_broker(&mut self, message: Message) {
        if let Err(code) = self.sequence_and_fan_out(message, (None, None)) {
            log::warn!("event=broker_publish_refused shard={} code={code}", self.id);
        }
    }

    /// Deletes a topic this shard owns and tells every shard, this one at once, so that each
    /// ends its subscriptions to it before the requester hears OK.
    pub(super) fn delete_owned_topic(&mut self, topic: &str) -> Result<(), ErrorCode> {
        self.owned.delete(topic)?;
        for link in self.peers_mut() {
            link.terminals_out.push(Terminal::TopicDeleted {
                topic: topic.into(),
            });
        }
        self.end_topic_subscriptions(topic);
        Ok(())
    }

    /// Ends this shard's exact subscriptions to a deleted topic: plain ones and consumer ones
    /// that are live. One still waiting for its owner's ack was counted after the delete, in
    /// the topic made again, and stays. The owner forgot them all, so nothing is sent back.
    pub(super) fn end_topic_subscriptions(&mut self, topic: &str) {
        let mut ended = self.local.take_exact(topic);
        for (index, conn) in self.connections.iter() {
            for (&sub_id, record) in &conn.subscriptions {
                let consumer_on_topic = record.kind == SubjectKind::Exact
                    && record.consumer.is_some()
                    && record.pending.is_none()
                    && &*record.subject == topic;
                if consumer_on_topic {
                    ended.push(Subscriber {
                        connection: conn.id,
                        sub_id,
                    });
                }
            }
            debug_assert_eq!(index, conn.id.index as usize);
        }
        for subscriber in ended {
            let Some(conn) = self.connection_mut(subscriber.connection) else {
                continue;
            };
            conn.subscriptions.remove(&subscriber.sub_id);
            let message = format!(
                "topic {topic} was deleted; subscription {} ended",
                subscriber.sub_id
            );
            conn.push_ended(subscriber.sub_id, ErrorCode::TopicDeleted, &message);
            self.mark_dirty(subscriber.connection);
        }
    }

    pub(super) fn answer_delete_topic(
        &mut self,
        reply: ReplyTarget,
        result: Result<(), ErrorCode>,
    ) {
        match result {
            Ok(()) => self.answer(reply.connection, reply.request_id, Answer::Done),
            Err(code) => self.reply_err(reply.connection, reply.request_id, code, "no such topic"),
        }
    }

    /// Records a pattern group member on this shard; with acks, also on the group's
    /// consumers of the matching topics this shard owns. Refused (`CONSUMER_IN_USE`) when the
    /// group, or its consumers here, were made with other ACKS settings: every shard checks,
    /// so a group cannot be at-least-once on one owner and at-most-once on another.
    pub(super) fn join_pattern_group_here(
        &mut self,
        pattern: &str,
        group: &str,
        member: Member,
        acks: Option<AckSettings>,
    ) -> Result<(), ErrorCode> {
        let key = consumer_key(pattern, group);
        let same_group = self
            .pattern_groups
            .settings(pattern, group)
            .is_none_or(|settings| settings == acks);
        if !same_group || !self.owned.group_consumers_accept((pattern, &key), acks) {
            return Err(ErrorCode::ConsumerInUse);
        }
        self.pattern_groups.join(pattern, group, member, acks);
        if acks.is_some() {
            self.change_group_members((pattern, &key), member, true);
        }
        Ok(())
    }

    /// Drops a pattern group member on this shard; what it had not acknowledged on topics
    /// owned here goes to the other members.
    pub(super) fn leave_pattern_group_here(&mut self, pattern: &str, group: &str, member: Member) {
        self.pattern_groups.leave(pattern, group, member);
        // Whatever the group's settings here, a consumer must not keep a member that left.
        self.change_group_members((pattern, &consumer_key(pattern, group)), member, false);
    }

    fn change_group_members(&mut self, group: (&str, &str), member: Member, joining: bool) {
        let mut due = Vec::new();
        self.owned
            .change_group_members(group, member, joining, unix_time_ns(), &mut due);
        for (topic, action) in due {
            self.carry_out(&topic, &mut vec![action]);
        }
    }

    /// Gives every at-least-once pattern group matching the message's topic its consumer on
    /// the topic, so the sequencing that follows pumps the message to it. When one cannot be
    /// made (`--consumers-max`, `--topics-max`) the publish is refused: accepting it would
    /// break a group's at-least-once promise without anyone knowing.
    fn ensure_pattern_group_consumers(&mut self, topic: &str) -> Result<(), ErrorCode> {
        let backoff_max_ns = self
            .config
            .redelivery_backoff_max_ms
            .saturating_mul(1_000_000);
        let now_ns = unix_time_ns();
        let owned = &mut self.owned;
        let mut result = Ok(());
        self.pattern_groups.for_each_acked(topic, |group| {
            if result.is_ok() {
                result = owned.ensure_group_consumer(topic, group, now_ns, backoff_max_ns);
            }
        });
        result
    }

    /// Redeliveries and dead letters that are due, and expired idle consumers. Returns when
    /// it next has something to do.
    pub(super) fn run_consumer_timers(&mut self) -> Option<u64> {
        let now_ns = unix_time_ns();
        let ttl_ns = self.config.consumer_ttl_ms.saturating_mul(1_000_000);
        let idle_ns = self.config.topic_idle_ttl_ms.saturating_mul(1_000_000);
        let mut due = Vec::new();
        let next = self
            .owned
            .consumer_timers(now_ns, (ttl_ns, idle_ns), &mut due);
        for (topic, action) in due {
            self.carry_out(&topic, &mut vec![action]);
        }
        next
    }

    /// A consumer delivery crossed a ring while its subscription may have gone (unsubscribed,
    /// or its id reused for another topic). Dropping it is safe: with acks it is still in
    /// flight on the owner and comes back by its timer.
    fn consumer_subscription_is_live(&mut self, subscriber: Subscriber, topic: &str) -> bool {
        self.connection_mut(subscriber.connection)
            .and_then(|conn| conn.subscriptions.get(&subscriber.sub_id))
            .is_some_and(|record| {
                record.consumer.is_some()
                    && record.pending.is_none()
                    && match record.kind {
                        SubjectKind::Exact => &*record.subject == topic,
                        SubjectKind::Pattern => pattern_matches(&record.subject, topic),
                    }
            })
    }

    /// Tells a subscription how many messages it missed, in line with its queued messages.
    fn queue_gap(&mut self, subscriber: Subscriber, gap: (u64, u64), topic: &str) {
        if let Some(conn) = self.connection_mut(subscriber.connection) {
            conn.out.push_gap(subscriber.sub_id, gap, topic);
            self.mark_dirty(subscriber.connection);
            self.counters.gaps += 1;
            self.counters.gap_missed += gap.0;
        }
    }

    /// Sends a new subscriber what it asked to replay: a GAP notice first if part of it was
    /// already evicted, then the retained messages, oldest first, under the same
    /// slow-consumer policy as live ones.
    pub(super) fn deliver_replay(
        &mut self,
        (subscriber, topic): (Subscriber, &str),
        last_seq: u64,
        replay: Replay,
    ) {
        if replay.missed > 0 {
            let resume_seq = replay
                .messages
                .first()
                .map_or(last_seq + 1, |message| message.seq());
            self.queue_gap(subscriber, (replay.missed, resume_seq), topic);
        }
        for message in &replay.messages {
            if !self.deliver_to(subscriber, message) {
                break;
            }
            self.counters.replayed += 1;
        }
        if let Some(newest) = replay.messages.last() {
            if let Some(conn) = self.connection_mut(subscriber.connection) {
                conn.out.note_history_through(newest.timestamp_ns());
            }
        }
    }

    /// Drains the terminal rings (always possible: handling them sends nothing) and then the
    /// request rings (as far as terminal room allows). Returns true if a ring still holds
    /// work that the per-turn limit left for the next turn.
    pub(super) fn drain_rings(&mut self) -> bool {
        let mut more = false;
        for peer in 0..self.links.len() {
            if self.links[peer].is_none() {
                continue;
            }
            for taken in 0.. {
                if taken == RING_BATCHES_PER_TURN_MAX {
                    more = true;
                    break;
                }
                let batch = self.links[peer]
                    .as_ref()
                    .and_then(|l| l.terminals_in.try_recv());
                let Some(batch) = batch else { break };
                for terminal in batch {
                    self.handle_terminal(terminal);
                }
            }
            if let Some(link) = &self.links[peer] {
                link.terminals_in.notify_space_freed();
            }
        }
        for peer in 0..self.links.len() {
            if self.links[peer].is_none() {
                continue;
            }
            more |= self.drain_requests_from(ShardId(peer as u16));
        }
        more
    }

    fn drain_requests_from(&mut self, peer: ShardId) -> bool {
        let mut more = false;
        'batches: for taken in 0.. {
            if taken == RING_BATCHES_PER_TURN_MAX {
                more = true;
                break;
            }
            let mut batch = match self.stalled_requests[peer.index()].take() {
                Some(batch) => batch,
                None => match self.link_mut(peer).requests_in.try_recv() {
                    Some(batch) => batch.into_iter(),
                    None => break,
                },
            };
            self.clock_ns = unix_time_ns();
            while batch.len() > 0 {
                if !self.terminal_room() {
                    self.stalled_requests[peer.index()] = Some(batch);
                    break 'batches;
                }
                if let Some(request) = batch.next() {
                    self.handle_request(peer, request);
                }
            }
        }
        self.link_mut(peer).requests_in.notify_space_freed();
        more
    }

    /// Hands every staged batch to its ring and wakes each peer that got one, once.
    /// Returns true if any batch was handed over.
    pub(super) fn flush_outboxes(&mut self) -> bool {
        let mut handed_over = false;
        for link in self.peers_mut() {
            link.requests_out.flush();
            link.terminals_out.flush();
            let woke_requests = link.requests_out.take_wake_needed();
            let woke_terminals = link.terminals_out.take_wake_needed();
            if woke_requests || woke_terminals {
                handed_over = true;
                // A failed wake means the peer is exiting; the ring is then dropped unread.
                let _ = link.peer_waker.wake();
            }
        }
        handed_over
    }
}
