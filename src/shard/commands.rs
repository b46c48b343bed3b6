//! What a client's frames ask of the shard that holds its connection.
//!
//! Each handler first checks everything that could refuse or postpone the command (bad
//! input, limits, a full outbox), and only then changes state, so a postponed command can be
//! re-run from the same bytes later and a refused one leaves nothing behind.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::error::ErrorCode;
use crate::ids::{ConnectionId, ShardId, Subscriber};
use crate::mesh::message::ConsumerRequest;
use crate::mesh::message::{OwnerRequest, Refusal, ReplyTarget, Subscribed, Ticket, TopicPosition};
use crate::message::Message;
use crate::protocol::native::AckKind;
use crate::protocol::subscribe_options::{Sharing, Start, SubscribeOptions};
use crate::protocol::topic::{self, SubjectKind};
use crate::protocol::topic_options::TopicOptions;
use crate::shard::consumers::Member;
use crate::shard::pattern_groups::consumer_key;
use crate::shard::topics::{PublishedNames, TopicSlot, INBOX_PREFIX};

use super::connection::SubscriptionRecord;
use super::presence::PresenceChange;
use super::wire::{Answer, Feature, Wire};
use super::{Flow, PendingSubscribe, Shard};

/// What a PUBLISH asks, in any protocol's words.
pub(super) struct Publish<'a> {
    pub topic: PublishTopic<'a>,
    pub reply_to: Option<&'a [u8]>,
    /// A header block (see `protocol::native::headers`), empty for none.
    pub headers: &'a [u8],
    pub payload: &'a [u8],
    /// Answered only if refused (native `PUBLISH_QUIET`).
    pub quiet: bool,
}

/// The topic a PUBLISH names.
#[derive(Clone, Copy)]
pub(super) enum PublishTopic<'a> {
    /// As the client sent it: checked by the publish path.
    Unchecked(&'a [u8]),
    /// Already proven a name a client may publish to, by a connection kind that had to look
    /// at it anyway (the Redis port's plain channel names): checking again cost the Redis
    /// publish path about 70 instructions a message (callgrind). With its owner when the
    /// connection kind has routed its bytes already.
    Checked(&'a str, Option<ShardId>),
    /// Found in this shard's own table by the connection kind ([`Shard::look_up_topic`]):
    /// proven by being there, and where it sits.
    Held(&'a str, TopicSlot),
}

/// What the publish path learns of a topic's bytes before checking them
/// ([`Shard::look_up_topic`]).
pub(super) enum TopicLookup<'a> {
    /// This shard owns and holds it, and a client may publish to it: no check needed.
    Held(&'a str, TopicSlot),
    /// To be checked: not held here (new, owned elsewhere, or not one a client may publish
    /// to), with its owner as routed; none for a name longer than any topic, which the
    /// check refuses without anything hashed.
    Unheld(Option<ShardId>),
}

impl Shard {
    /// A publish from any protocol.
    // Inlined into each connection kind's read loop (three callers), as it was when the
    // native read loop and this handler shared a module: a call here costs the fan-out-free
    // 1:1 path a few percent of its instructions.
    #[inline(always)]
    pub(super) fn handle_publish(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        publish: Publish<'_>,
    ) -> Flow {
        let Publish {
            topic: topic_bytes,
            reply_to,
            headers,
            payload,
            quiet,
        } = publish;
        let (topic, owner, slot) = match topic_bytes {
            PublishTopic::Checked(topic, owner) => {
                (topic, owner.unwrap_or_else(|| self.owner_of(topic)), None)
            }
            PublishTopic::Held(topic, slot) => (topic, self.id, Some(slot)),
            PublishTopic::Unchecked(bytes) => {
                match self.look_up_topic(Some(id), bytes, PublishedNames::Topics) {
                    TopicLookup::Held(topic, slot) => (topic, self.id, Some(slot)),
                    TopicLookup::Unheld(owner) => match topic::parse_publish_topic(bytes) {
                        Ok(topic) => (topic, owner.unwrap_or_else(|| self.owner_of(topic)), None),
                        Err(error) => {
                            self.reply_err(id, request_id, ErrorCode::BadTopic, error.reason());
                            return Flow::Continue;
                        }
                    },
                }
            }
        };
        if let Some(reply_to) = reply_to {
            if let Err(error) = topic::parse_publish_topic(reply_to) {
                self.reply_err(id, request_id, ErrorCode::BadTopic, error.reason());
                return Flow::Continue;
            }
        }
        if headers.len() > self.config.header_bytes_max {
            self.reply_err(
                id,
                request_id,
                ErrorCode::MessageTooLarge,
                "headers are larger than --header-bytes-max",
            );
            return Flow::Continue;
        }
        if payload.len() > self.config.message_bytes_max {
            self.reply_err(
                id,
                request_id,
                ErrorCode::MessageTooLarge,
                "payload is larger than --message-bytes-max",
            );
            return Flow::Continue;
        }
        if let Some(flow) = self.admit_publish(id, request_id, owner) {
            return flow;
        }
        // Its answers go ahead of the deliveries its publishes cause it from now on.
        if let Some(conn) = self.connection_mut(id) {
            conn.publishes = true;
        }
        let message = Message::from_publish_read_at(
            &mut self.encode_scratch,
            self.clock_ns,
            (topic, reply_to),
            headers,
            payload,
        );
        self.route_publish(id, (request_id, quiet), (owner, slot), message);
        Flow::Continue
    }

    /// Routes a topic named by the bytes a client sent and, if this shard owns it, looks it
    /// up: a name found there is proven by being found, with no check of its bytes (see
    /// [`crate::shard::topics::OwnedTopics::publishable`]). Anything else the caller checks,
    /// with the owner routed here (one routing hash a publish, as before).
    ///
    /// `publisher`: the connection publishing, whose hint (where its last publish found its
    /// topic) is tried first: most publishers send to one topic again and again, and a hint
    /// that holds skips the lookup's hash and the routing hash (a hint is made only from a
    /// lookup that routed the same name here, and the shard count never changes). A hint
    /// that does not hold is renewed with what the lookup finds. A Redis channel that maps
    /// to another topic name (`user:42`) is looked up twice a publish, as the channel and
    /// as its topic, so it never keeps a hint.
    #[inline(always)]
    pub(super) fn look_up_topic<'a>(
        &mut self,
        publisher: Option<ConnectionId>,
        bytes: &'a [u8],
        names: PublishedNames,
    ) -> TopicLookup<'a> {
        let publisher = publisher.and_then(|id| {
            self.connections
                .get_mut(id.index as usize)
                .filter(|conn| conn.id == id)
        });
        if let Some(conn) = &publisher {
            if let Some((topic, slot)) = self.owned.publishable_at(bytes, names, &conn.topic_hint) {
                return TopicLookup::Held(topic, slot);
            }
        }
        let found = if bytes.len() > topic::TOPIC_BYTES_MAX {
            TopicLookup::Unheld(None)
        } else {
            let owner = ShardId(topic::owner_shard_of_bytes(bytes, self.shard_count) as u16);
            match (owner == self.id)
                .then(|| self.owned.publishable(bytes, names))
                .flatten()
            {
                Some((topic, slot)) => TopicLookup::Held(topic, slot),
                None => TopicLookup::Unheld(Some(owner)),
            }
        };
        if let Some(conn) = publisher {
            match found {
                TopicLookup::Held(_, slot) => self.owned.note_found(&mut conn.topic_hint, slot),
                TopicLookup::Unheld(_) => conn.topic_hint.not_found(),
            }
        }
        found
    }

    /// Whether a publish to a topic of `owner` may go ahead: room towards the owner (else
    /// `Blocked`, the connection is read again once there is), and the connection's
    /// `--publish-rate` (else it is answered `Throttled`). `None` means go ahead; shared by
    /// every connection kind, built message or not.
    #[inline(always)]
    pub(super) fn admit_publish(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        owner: ShardId,
    ) -> Option<Flow> {
        let has_room = if owner == self.id {
            self.terminal_room()
        } else {
            self.link_mut(owner).requests_out.make_room()
        };
        if !has_room {
            return Some(Flow::Blocked);
        }
        if self.config.publish_rate > 0 {
            let rate = self.config.publish_rate;
            let burst = match self.config.publish_burst {
                0 => rate,
                burst => burst,
            };
            let now_ns = unix_time_ns();
            let Some(conn) = self.connection_mut(id) else {
                return Some(Flow::Stop);
            };
            if let Err(wait) = conn.publish_bucket.take(now_ns, rate, burst) {
                self.counters.rate_limited += 1;
                let retry_after_ms = (wait.as_millis() as u64).max(1);
                self.answer(id, request_id, Answer::Throttled { retry_after_ms });
                return Some(Flow::Continue);
            }
        }
        None
    }

    /// Sequences an admitted publish here if this shard owns its topic, or sends it to the
    /// owner, which answers over the ring.
    #[inline(always)]
    pub(super) fn route_publish(
        &mut self,
        id: ConnectionId,
        (request_id, quiet): (u32, bool),
        (owner, slot): (ShardId, Option<TopicSlot>),
        message: Message,
    ) {
        let reply = ReplyTarget {
            connection: id,
            request_id,
        };
        if owner == self.id {
            let result = self.sequence_and_fan_out(message, (Some((self.id, id)), slot));
            self.answer_publish(reply, quiet, result);
        } else {
            let bytes = message.frame_len();
            self.link_mut(owner).requests_out.push_weighted(
                OwnerRequest::Publish {
                    message,
                    reply,
                    quiet,
                },
                bytes,
            );
        }
    }

    pub(super) fn handle_subscribe(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        sub_id: u32,
        subject: &[u8],
        options: SubscribeOptions,
    ) -> Flow {
        let (subject, kind) = match topic::parse_subscription(subject) {
            Ok(parsed) => parsed,
            Err(error) => {
                self.reply_err(id, request_id, ErrorCode::BadTopic, error.reason());
                return Flow::Continue;
            }
        };
        if let Some(acks) = options.acks {
            if acks.in_flight_max > self.config.consumer_in_flight_max {
                self.reply_err(
                    id,
                    request_id,
                    ErrorCode::UnsupportedOption,
                    "ACKS in_flight_max is above --consumer-in-flight-max",
                );
                return Flow::Continue;
            }
        }
        let start = options.start;
        let consumer = match &options.sharing {
            Sharing::None => None,
            Sharing::Consumer(name) | Sharing::Group(name) => Some(name.as_str()),
        };
        let pattern_group = matches!(options.sharing, Sharing::Group(_));
        if kind == SubjectKind::Pattern
            && (start != Start::New || (consumer.is_some() && !pattern_group))
        {
            self.reply_err(
                id,
                request_id,
                ErrorCode::UnsupportedOption,
                "start positions and durable consumers need an exact topic",
            );
            return Flow::Continue;
        }
        let subscriptions_max = self.config.subscriptions_per_connection_max;
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        // Its acks must name their topic, which v2 ACK frames cannot.
        if kind == SubjectKind::Pattern
            && options.acks.is_some()
            && !conn.wire.supports(Feature::TopicInAcksAndGaps)
        {
            self.reply_err(
                id,
                request_id,
                ErrorCode::UnsupportedOption,
                "an acked pattern group needs protocol version 3",
            );
            return Flow::Continue;
        }
        if matches!(options.start, Start::FromSeqOfEpoch { .. })
            && !conn.wire.supports(Feature::Epochs)
        {
            self.reply_err(
                id,
                request_id,
                ErrorCode::UnsupportedOption,
                "the EPOCH option needs protocol version 4",
            );
            return Flow::Continue;
        }
        if conn.subscriptions.contains_key(&sub_id) {
            self.reply_err(
                id,
                request_id,
                ErrorCode::DuplicateSubscription,
                "this connection already uses that subscription id",
            );
            return Flow::Continue;
        }
        if conn.subscriptions.len() >= subscriptions_max {
            self.reply_err(
                id,
                request_id,
                ErrorCode::TooManySubscriptions,
                "connection is at --subscriptions-per-connection-max",
            );
            return Flow::Continue;
        }
        let owner = self.owner_of(subject);
        let has_room = match kind {
            SubjectKind::Exact if owner == self.id => true,
            SubjectKind::Exact => {
                let link = self.link_mut(owner);
                link.requests_out.make_room()
            }
            SubjectKind::Pattern => self.peers_mut().all(|link| link.requests_out.make_room()),
        };
        if !has_room {
            return Flow::Blocked;
        }

        let subscriber = Subscriber {
            connection: id,
            sub_id,
        };
        let consumer_request = consumer.map(|name| {
            Box::new(ConsumerRequest {
                name: name.into(),
                is_group: matches!(options.sharing, Sharing::Group(_)),
                acks: options.acks,
                subscriber,
            })
        });
        let record = SubscriptionRecord {
            subject: subject.into(),
            kind,
            pending: None,
            consumer: consumer.map(Into::into),
            acks: options.acks.is_some(),
            dropped_unreported: 0,
            epoch: 0,
            presence: false,
        };
        match kind {
            SubjectKind::Exact if owner == self.id => {
                self.record_subscription(subscriber, record);
                let mut actions = Vec::new();
                let result = match consumer_request {
                    None => self.owned.add_subscriber(
                        subject,
                        (self.id, Some((self.id, id))),
                        start,
                        unix_time_ns(),
                    ),
                    Some(request) => {
                        self.attach_consumer(subject, &request, self.id, start, &mut actions)
                    }
                };
                self.finish_exact_subscribe(subscriber, request_id, subject, (None, None), result);
                // After the OK, as on the ring: the subscription is live before its deliveries.
                self.carry_out(subject, &mut actions);
            }
            SubjectKind::Exact => {
                let ticket = self.pending_subscribe(subscriber, request_id, (subject, kind), 1);
                self.pending_subscribes[ticket.0 as usize].consumer = consumer.map(Into::into);
                self.record_subscription(
                    subscriber,
                    SubscriptionRecord {
                        pending: Some(ticket),
                        ..record
                    },
                );
                self.link_mut(owner)
                    .requests_out
                    .push(OwnerRequest::Subscribe {
                        topic: subject.into(),
                        start,
                        ticket,
                        consumer: consumer_request,
                        connection: id,
                    });
            }
            SubjectKind::Pattern if pattern_group => {
                let group = consumer.expect("a pattern group has a name");
                let member = Member {
                    shard: self.id,
                    subscriber,
                };
                if let Err(code) =
                    self.join_pattern_group_here(subject, group, member, options.acks)
                {
                    self.reply_err(id, request_id, code, GROUP_SETTINGS_DIFFER);
                    return Flow::Continue;
                }
                self.record_subscription(subscriber, record);
                let peers = (self.shard_count - 1) as u32;
                if peers == 0 {
                    self.answer(id, request_id, Answer::Done);
                } else {
                    let ticket =
                        self.pending_subscribe(subscriber, request_id, (subject, kind), peers);
                    for link in self.peers_mut() {
                        link.requests_out.push(OwnerRequest::PatternGroupJoin {
                            pattern: subject.into(),
                            group: group.into(),
                            member,
                            acks: options.acks,
                            ticket,
                        });
                    }
                }
            }
            SubjectKind::Pattern => {
                self.record_subscription(subscriber, record);
                self.local.add_pattern(subject, subscriber);
                self.pattern_interest.insert(subject, self.id);
                let peers = (self.shard_count - 1) as u32;
                if peers == 0 {
                    self.answer(id, request_id, Answer::Done);
                } else {
                    let ticket =
                        self.pending_subscribe(subscriber, request_id, (subject, kind), peers);
                    for link in self.peers_mut() {
                        link.requests_out.push(OwnerRequest::PatternSubscribe {
                            pattern: subject.into(),
                            ticket,
                        });
                    }
                }
            }
        }
        Flow::Continue
    }

    fn record_subscription(&mut self, subscriber: Subscriber, record: SubscriptionRecord) {
        if let Some(conn) = self.connection_mut(subscriber.connection) {
            conn.subscriptions.insert(subscriber.sub_id, record);
        }
    }

    fn pending_subscribe(
        &mut self,
        subscriber: Subscriber,
        request_id: u32,
        (subject, kind): (&str, SubjectKind),
        acks: u32,
    ) -> Ticket {
        let key = self.pending_subscribes.insert(PendingSubscribe {
            subscriber,
            request_id,
            subject: subject.into(),
            kind,
            consumer: None,
            acks_remaining: acks,
            refused: None,
        });
        Ticket(key as u32)
    }

    /// Completes an exact subscription once its owner has counted it (or refused it).
    ///
    /// It becomes live here only now: everything the owner sequenced before counting it is
    /// either in the replay that came with the ack or was not asked for, and everything after
    /// arrives behind the ack on the same ring. So replay and live meet with no gap and no
    /// duplicate. If the subscription went away while the ack travelled (unsubscribed, or the
    /// connection closed), the owner is told to forget it.
    pub(super) fn finish_exact_subscribe(
        &mut self,
        subscriber: Subscriber,
        request_id: u32,
        subject: &str,
        (ticket, pending_consumer): (Option<Ticket>, Option<Box<str>>),
        result: Result<Subscribed, Refusal>,
    ) {
        let id = subscriber.connection;
        let still_wanted = self
            .connection_mut(id)
            .and_then(|conn| conn.subscriptions.get_mut(&subscriber.sub_id))
            .filter(|record| record.pending == ticket);
        let Some(record) = still_wanted else {
            if let Ok(subscribed) = &result {
                let epoch = subscribed.position.epoch;
                self.forget_exact_subscription((subject, epoch), subscriber, pending_consumer);
            }
            // Every request gets its answer, even one overtaken by its own UNSUBSCRIBE.
            self.reply_err(
                id,
                request_id,
                ErrorCode::UnknownSubscription,
                "unsubscribed before the subscription took effect",
            );
            return;
        };
        match result {
            Ok(subscribed) => {
                record.pending = None;
                record.epoch = subscribed.position.epoch;
                record.presence = subscribed.presence;
                let presence_consumer = subscribed.presence.then(|| record.consumer.clone());
                // A consumer's messages come from its owner, not from this shard's fan-out.
                if record.consumer.is_none() {
                    self.local.add_exact(subject, subscriber);
                }
                let position = subscribed.position;
                self.answer(id, request_id, Answer::Position(position));
                if let Some(consumer) = presence_consumer {
                    let joined = (subject, subscriber, consumer.as_deref());
                    self.note_presence(PresenceChange::Join, joined);
                }
                self.deliver_replay((subscriber, subject), position.last_seq, subscribed.replay);
            }
            Err(refusal) => {
                let (acks, name) = (record.acks, record.consumer.clone());
                if let Some(conn) = self.connection_mut(id) {
                    conn.subscriptions.remove(&subscriber.sub_id);
                }
                let reason = match refusal.code {
                    ErrorCode::ConsumerInUse => {
                        consumer_in_use_reason(name.as_deref().unwrap_or_default(), acks)
                    }
                    code => self
                        .limit_reason(code)
                        .unwrap_or_else(|| refusal_reason(subject, refusal)),
                };
                self.reply_err(id, request_id, refusal.code, &reason);
            }
        }
    }

    pub(super) fn handle_unsubscribe(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        sub_id: u32,
    ) -> Flow {
        let removed = self
            .connection_mut(id)
            .and_then(|conn| conn.subscriptions.remove(&sub_id));
        match removed {
            Some(record) if record.kind == SubjectKind::Pattern && record.consumer.is_some() => {
                let subscriber = Subscriber {
                    connection: id,
                    sub_id,
                };
                self.leave_pattern_group(subscriber, &record, Some(request_id));
            }
            Some(record) => {
                self.withdraw_subscription(
                    Subscriber {
                        connection: id,
                        sub_id,
                    },
                    &record,
                );
                // On the Redis port, an exact subscription another shard counts is confirmed
                // once that owner has counted it out (the barrier follows the unsubscribe on
                // the same ring): a PUBLISH read after the confirmation, from any connection,
                // no longer counts it among its receivers, as Redis's PUBLISH reply promises.
                // (The Redis port keeps replies in request order while one waits; the other
                // ports answer at once.)
                let owner = self.owner_of(&record.subject);
                let is_resp = self
                    .connection_mut(id)
                    .is_some_and(|conn| matches!(conn.wire, Wire::Resp(_)));
                let counted_by_another_shard = is_resp
                    && record.kind == SubjectKind::Exact
                    && record.pending.is_none()
                    && record.consumer.is_none()
                    && owner != self.id;
                if counted_by_another_shard {
                    self.link_mut(owner)
                        .requests_out
                        .push(OwnerRequest::Barrier {
                            reply: ReplyTarget {
                                connection: id,
                                request_id,
                            },
                        });
                } else {
                    self.answer(id, request_id, Answer::Done);
                }
            }
            None => self.reply_err(
                id,
                request_id,
                ErrorCode::UnknownSubscription,
                "no subscription with that id on this connection",
            ),
        }
        Flow::Continue
    }

    /// Removes a subscription here and tells whoever counted it. Never postponed: the
    /// outboxes may go past their batch size for this (see `Outbox::push`).
    pub(super) fn withdraw_subscription(
        &mut self,
        subscriber: Subscriber,
        record: &SubscriptionRecord,
    ) {
        match record.kind {
            SubjectKind::Exact => {
                // A pending one is not live here yet; its ack will tell the owner to forget it.
                if record.pending.is_some() {
                    return;
                }
                let counted_here = record.consumer.is_some()
                    || self.local.remove_exact(&record.subject, subscriber);
                if counted_here && record.presence {
                    let left = (&*record.subject, subscriber, record.consumer.as_deref());
                    self.note_presence(PresenceChange::Leave, left);
                }
                if counted_here {
                    self.forget_exact_subscription(
                        (&record.subject, record.epoch),
                        subscriber,
                        record.consumer.clone(),
                    );
                }
            }
            SubjectKind::Pattern if record.consumer.is_some() => {
                self.leave_pattern_group(subscriber, record, None);
            }
            SubjectKind::Pattern => {
                if self
                    .local
                    .remove_pattern(&record.subject, subscriber)
                    .is_some()
                {
                    self.pattern_interest.remove(&record.subject, self.id);
                    for link in self.peers_mut() {
                        link.requests_out.push(OwnerRequest::PatternUnsubscribe {
                            pattern: record.subject.clone(),
                        });
                    }
                }
            }
        }
    }

    /// Leaves a pattern group here and on every other shard. Like joining, leaving is a
    /// barrier: with `answer` (an UNSUBSCRIBE's request id) the OK goes out once every shard
    /// has dropped the member, so no owner picks it afterwards. Without (the connection went
    /// away) nobody waits.
    fn leave_pattern_group(
        &mut self,
        subscriber: Subscriber,
        record: &SubscriptionRecord,
        answer: Option<u32>,
    ) {
        let group = record.consumer.as_deref().unwrap_or_default();
        let member = Member {
            shard: self.id,
            subscriber,
        };
        self.leave_pattern_group_here(&record.subject, group, member);
        let peers = (self.shard_count - 1) as u32;
        let ticket = match answer {
            Some(request_id) if peers == 0 => {
                self.answer(subscriber.connection, request_id, Answer::Done);
                None
            }
            Some(request_id) => Some(self.pending_subscribe(
                subscriber,
                request_id,
                (&record.subject, SubjectKind::Pattern),
                peers,
            )),
            None => None,
        };
        for link in self.peers_mut() {
            link.requests_out.push(OwnerRequest::PatternGroupLeave {
                pattern: record.subject.clone(),
                group: group.into(),
                subscriber,
                ticket,
            });
        }
    }

    /// A shard refused a pattern group join that the others may have recorded: the member
    /// leaves everywhere (unless the subscription is already gone) and the SUBSCRIBE gets ERR.
    pub(super) fn take_back_pattern_group_join(
        &mut self,
        subscriber: Subscriber,
        (request_id, subject): (u32, &str),
        code: ErrorCode,
    ) {
        let record = self
            .connection_mut(subscriber.connection)
            .and_then(|conn| {
                let same = conn
                    .subscriptions
                    .get(&subscriber.sub_id)
                    .is_some_and(|record| &*record.subject == subject);
                same.then(|| conn.subscriptions.remove(&subscriber.sub_id))
            })
            .flatten();
        if let Some(record) = record {
            self.leave_pattern_group(subscriber, &record, None);
        }
        self.reply_err(
            subscriber.connection,
            request_id,
            code,
            GROUP_SETTINGS_DIFFER,
        );
    }

    /// Tells a topic's owner that one subscription from this shard is gone (for a consumer:
    /// detached; the consumer itself stays, with what it has not acked).
    fn forget_exact_subscription(
        &mut self,
        (topic, epoch): (&str, u64),
        subscriber: Subscriber,
        consumer: Option<Box<str>>,
    ) {
        let owner = self.owner_of(topic);
        match consumer {
            None if owner == self.id => self.owned.remove_subscriber(topic, self.id, epoch),
            None => self
                .link_mut(owner)
                .requests_out
                .push(OwnerRequest::Unsubscribe {
                    topic: topic.into(),
                    epoch,
                }),
            Some(consumer) if owner == self.id => {
                let mut actions = Vec::new();
                self.owned.detach_consumer(
                    topic,
                    &consumer,
                    Member {
                        shard: self.id,
                        subscriber,
                    },
                    unix_time_ns(),
                    &mut actions,
                );
                self.carry_out(topic, &mut actions);
            }
            Some(consumer) => self
                .link_mut(owner)
                .requests_out
                .push(OwnerRequest::Detach {
                    topic: topic.into(),
                    consumer,
                    subscriber,
                }),
        }
    }

    pub(super) fn handle_ack(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        (sub_id, named_topic): (u32, &[u8]),
        (seq, kind): (u64, AckKind),
    ) -> Flow {
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        let target = match conn.subscriptions.get(&sub_id) {
            None => Err((
                ErrorCode::UnknownSubscription,
                "no subscription with that id",
            )),
            // Until the owner accepted it, the subscription may yet be refused; its acks
            // must not touch a consumer it never joined.
            Some(record) if record.pending.is_some() => Err((
                ErrorCode::UnknownSubscription,
                "the subscription is not answered yet",
            )),
            Some(record) => match (&record.consumer, record.acks) {
                (Some(consumer), true) => ack_target(record, consumer, named_topic),
                _ => Err((
                    ErrorCode::UnsupportedOption,
                    "that subscription was not made with ACKS",
                )),
            },
        };
        let (topic, consumer) = match target {
            Ok(target) => target,
            Err((code, reason)) => {
                self.reply_err(id, request_id, code, reason);
                return Flow::Continue;
            }
        };
        let owner = self.owner_of(&topic);
        if owner == self.id {
            if !self.terminal_room() {
                return Flow::Blocked;
            }
            let acker = Member {
                shard: self.id,
                subscriber: Subscriber {
                    connection: id,
                    sub_id,
                },
            };
            self.apply_ack((&topic, &consumer), acker, (seq, kind));
        } else {
            let link = self.link_mut(owner);
            if !link.requests_out.make_room() {
                return Flow::Blocked;
            }
            link.requests_out.push(OwnerRequest::Ack {
                topic,
                consumer,
                subscriber: Subscriber {
                    connection: id,
                    sub_id,
                },
                seq,
                kind,
            });
        }
        Flow::Continue
    }

    pub(super) fn handle_create_topic(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        topic_bytes: &[u8],
        options: TopicOptions,
    ) -> Flow {
        let topic = match topic::parse_publish_topic(topic_bytes) {
            Ok(topic) if topic.starts_with(INBOX_PREFIX) => {
                self.reply_err(
                    id,
                    request_id,
                    ErrorCode::BadTopic,
                    "_inbox. topics are request/reply inboxes and keep no history",
                );
                return Flow::Continue;
            }
            Ok(topic) => topic,
            Err(error) => {
                let reason = match error {
                    topic::TopicError::WildcardInPublish => {
                        "CREATE_TOPIC takes an exact topic; '*' and '>' are only for subscribing"
                    }
                    other => other.reason(),
                };
                self.reply_err(id, request_id, ErrorCode::BadTopic, reason);
                return Flow::Continue;
            }
        };
        let refusal = self
            .owned
            .default_replay_limits()
            .overridden(
                &options,
                self.config.topic_replay_messages_max,
                self.config.topic_replay_bytes_max,
            )
            .map_err(|reason| {
                let caps = format!(
                    "{reason}: the caps are {} messages (--topic-replay-messages-max) and {} \
                     bytes (--topic-replay-bytes-max) per created topic",
                    self.config.topic_replay_messages_max, self.config.topic_replay_bytes_max
                );
                (ErrorCode::OptionOutOfRange, caps)
            });
        let replay_limits = match refusal {
            Ok(limits) => limits,
            Err((code, reason)) => {
                self.reply_err(id, request_id, code, &reason);
                return Flow::Continue;
            }
        };
        let reply = ReplyTarget {
            connection: id,
            request_id,
        };
        let owner = self.owner_of(topic);
        let presence = options.presence.is_some_and(|on| on != 0);
        if owner == self.id {
            let result = self.owned.create(topic, replay_limits);
            if result.is_ok() {
                self.owned.set_presence(topic, presence);
            }
            self.answer_create_topic(reply, result);
        } else {
            let link = self.link_mut(owner);
            if !link.requests_out.make_room() {
                return Flow::Blocked;
            }
            link.requests_out.push(OwnerRequest::CreateTopic {
                topic: topic.into(),
                replay_limits,
                presence,
                reply,
            });
        }
        Flow::Continue
    }

    pub(super) fn handle_delete_topic(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        topic_bytes: &[u8],
    ) -> Flow {
        let topic = match topic::parse_subscription(topic_bytes) {
            Ok((_, SubjectKind::Pattern)) => Err("DELETE_TOPIC takes an exact topic"),
            Ok((topic, _)) if topic.starts_with(INBOX_PREFIX) => {
                Err("_inbox. topics are request/reply inboxes and go by themselves")
            }
            Ok((topic, _)) => Ok(topic),
            Err(error) => Err(error.reason()),
        };
        let topic = match topic {
            Ok(topic) => topic,
            Err(reason) => {
                self.reply_err(id, request_id, ErrorCode::BadTopic, reason);
                return Flow::Continue;
            }
        };
        let owner = self.owner_of(topic);
        let reply = ReplyTarget {
            connection: id,
            request_id,
        };
        if owner == self.id {
            // It tells every peer: like a publish, it waits for room in all their outboxes.
            if !self.terminal_room() {
                return Flow::Blocked;
            }
            let result = self.delete_owned_topic(topic);
            self.answer_delete_topic(reply, result);
        } else {
            let link = self.link_mut(owner);
            if !link.requests_out.make_room() {
                return Flow::Blocked;
            }
            link.requests_out.push(OwnerRequest::DeleteTopic {
                topic: topic.into(),
                reply,
            });
        }
        Flow::Continue
    }

    pub(super) fn answer_create_topic(
        &mut self,
        reply: ReplyTarget,
        result: Result<TopicPosition, ErrorCode>,
    ) {
        match result {
            Ok(position) => self.answer(
                reply.connection,
                reply.request_id,
                Answer::Position(position),
            ),
            Err(code) => {
                let reason = match code {
                    ErrorCode::TopicExists => "the topic exists already".to_string(),
                    ErrorCode::TooManyTopics => format!(
                        "{}, or its share of --created-topics-max ({} of {} across {} shards)",
                        self.limit_reason(code).unwrap_or_default(),
                        self.config.created_topics_per_shard_max(),
                        self.config.created_topics_max,
                        self.config.shards
                    ),
                    _ => "the topic was not created".to_string(),
                };
                self.reply_err(reply.connection, reply.request_id, code, &reason);
            }
        }
    }

    /// Queues the answer to a request on its connection (ahead of its queued deliveries),
    /// in the words of the protocol the connection speaks.
    // Once per confirmed publish.
    #[inline]
    pub(super) fn answer(&mut self, id: ConnectionId, request_id: u32, answer: Answer<'_>) {
        if let Answer::Refused { code, .. } = answer {
            if let Some(index) = ErrorCode::ALL.iter().position(|&known| known == code) {
                self.counters.errors[index] += 1;
            }
        }
        let Some(conn) = self.connection_mut(id) else {
            return;
        };
        conn.answer(request_id, answer);
        let http_answered = match &mut conn.wire {
            Wire::Http(session) => session.answered.take(),
            _ => None,
        };
        let resp_done = matches!(&conn.wire, Wire::Resp(session) if session.done());
        self.mark_dirty(id);
        if resp_done {
            self.begin_close(id, crate::error::CloseReason::ClientQuit);
        }
        if let Some(connection) = http_answered {
            self.after_http_answer(id, connection);
        }
    }

    pub(super) fn reply_err(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        code: ErrorCode,
        reason: &str,
    ) {
        self.answer(id, request_id, Answer::Refused { code, reason });
    }
}

/// Why a pattern group join was refused by some shard.
pub(super) const GROUP_SETTINGS_DIFFER: &str =
    "that group exists with other ACKS settings (or it did, and its consumers still do)";

/// The topic and the consumer (its name in that topic) an ACK frame is for.
type AckTarget = (Box<str>, Box<str>);

/// The topic and consumer an ACK frame is for. An exact subscription's topic is its own (the
/// frame may repeat it); a pattern group's is the one the frame names, served by the group's
/// consumer on that topic.
fn ack_target(
    record: &SubscriptionRecord,
    consumer: &str,
    named_topic: &[u8],
) -> Result<AckTarget, (ErrorCode, &'static str)> {
    match record.kind {
        SubjectKind::Exact
            if named_topic.is_empty() || named_topic == record.subject.as_bytes() =>
        {
            Ok((record.subject.clone(), consumer.into()))
        }
        SubjectKind::Exact => Err((
            ErrorCode::BadTopic,
            "the ACK names a topic other than its subscription's",
        )),
        SubjectKind::Pattern if named_topic.is_empty() => Err((
            ErrorCode::BadTopic,
            "an ACK for a pattern group must name the message's topic",
        )),
        SubjectKind::Pattern => {
            // Reserved names too: a `$dlq.>` group acks dead letters.
            let topic = topic::parse_subscription(named_topic)
                .ok()
                .filter(|&(topic, kind)| {
                    kind == SubjectKind::Exact && topic::pattern_matches(&record.subject, topic)
                })
                .map(|(topic, _)| topic)
                .ok_or((
                    ErrorCode::BadTopic,
                    "the ACK names a topic its pattern does not match",
                ))?;
            Ok((topic.into(), consumer_key(&record.subject, consumer)))
        }
    }
}

/// The broker's clock, in Unix nanoseconds: the system's wall clock as it read when the
/// process first asked, moved on by a clock that never steps (Linux's `CLOCK_BOOTTIME`, which
/// counts a suspended machine's sleep and which NTP only slews). Every message timestamp and
/// every deadline (ack waits, pressure leases, replay and idle ages) comes from it, so a step
/// of the wall clock (`date -s`, an NTP step) neither makes every ack wait due at once, which
/// redelivered each unacked message to the member holding it, nor holds them all back by the
/// step. Timestamps then differ from the stepped wall clock by the step, until a restart;
/// start the broker after the clock is set (the systemd unit waits for `time-sync.target`).
pub(crate) fn unix_time_ns() -> u64 {
    static ANCHOR: OnceLock<(u64, u64)> = OnceLock::new();
    let steady_ns = steady_clock_ns();
    let &(wall_at, steady_at) = ANCHOR.get_or_init(|| (wall_clock_ns(), steady_ns));
    // A thread that read the steady clock just before another set the anchor: no earlier.
    wall_at.saturating_add(steady_ns.saturating_sub(steady_at))
}

fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Nanoseconds on a clock that only moves forward at the rate of time, suspended sleep
/// included where the system counts it.
fn steady_clock_ns() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: all zeroes is a valid timespec (some targets add private padding fields,
        // so it is not built field by field); the call fills it, and CLOCK_BOOTTIME exists
        // on every Linux this builds for (2.6.39 and later).
        let mut now: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: as above; `now` lives across the call.
        if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } == 0 {
            return (now.tv_sec as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(now.tv_nsec as u64);
        }
    }
    static STARTED: OnceLock<Instant> = OnceLock::new();
    STARTED.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

impl Shard {
    /// Why a command was refused for a limit, naming the limit and its value (refusals come
    /// back from the topic's shard with a code only).
    pub(super) fn limit_reason(&self, code: ErrorCode) -> Option<String> {
        let config = &self.config;
        match code {
            // The owner's refusal carries only the code: either limit may have been hit.
            ErrorCode::TooManyTopics => Some(format!(
                "no room for a new topic: this connection has made its share of topics by use \
                 (--topics-per-connection-max {}, {} on each of {} shards), or the shard that \
                 holds it has its share of --topics-max ({} of {}); existing topics keep working",
                config.topics_per_connection_max,
                config.topics_per_connection_per_shard_max(),
                config.shards,
                config.topics_per_shard_max(),
                config.topics_max,
            )),
            ErrorCode::TooManyConsumers => Some(format!(
                "no room for a new durable consumer or group: the shard that holds the topic \
                 has its share of --consumers-max ({} of {} across {} shards)",
                config.consumers_per_shard_max(),
                config.consumers_max,
                config.shards
            )),
            _ => None,
        }
    }
}

/// CONSUMER_IN_USE for an exact topic: which of the two reasons could apply, with what this
/// subscription asked for, so the user can compare.
fn consumer_in_use_reason(name: &str, acks: bool) -> String {
    format!(
        "`{name}` is in use: a durable consumer takes one subscription at a time, and the first \
         subscription under a name fixes whether it is a consumer or a group and whether it \
         takes acks (this one asked for acks {})",
        if acks { "on" } else { "off" }
    )
}

/// The words of a refused exact subscription, naming the topic's epoch and last sequence
/// number where they explain the refusal.
fn refusal_reason(topic: &str, refusal: Refusal) -> String {
    let position = refusal.position.unwrap_or_default();
    let (epoch, last_seq) = (position.epoch, position.last_seq);
    match refusal.code {
        ErrorCode::ConsumerInUse => {
            "that consumer has a subscription already, or other settings".to_string()
        }
        ErrorCode::TooManyConsumers => "broker is at --consumers-max".to_string(),
        ErrorCode::StartBeyondEnd => format!(
            "topic {topic} (epoch {epoch}) ends at seq {last_seq}: a start may be at most seq {}",
            last_seq + 1
        ),
        ErrorCode::EpochMismatch => format!(
            "topic {topic} is now epoch {epoch} (last seq {last_seq}): the history of the \
             requested epoch is gone; resubscribe without EPOCH to start in this one"
        ),
        ErrorCode::TopicNotFound => {
            format!("no topic {topic}, and --auto-create-topics is off: create it first")
        }
        ErrorCode::TooManyTopics => "the broker holds --topics-max topics".to_string(),
        _ => "the topic could not be created".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_clock_starts_at_the_wall_clock_and_never_goes_back() {
        let wall = wall_clock_ns();
        let first = unix_time_ns();
        // The anchor may have been set a little earlier (by another test), never later.
        assert!(
            first <= wall_clock_ns() + 1_000_000,
            "{first} ahead of {wall}"
        );
        assert!(
            wall.abs_diff(first) < 60_000_000_000,
            "{first} far from {wall}"
        );
        let mut last = first;
        for _ in 0..10_000 {
            let now = unix_time_ns();
            assert!(now >= last, "{now} after {last}");
            last = now;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        let later = unix_time_ns();
        assert!(
            later - first >= 20_000_000,
            "moved only {} ns in 20 ms",
            later - first
        );
    }
}
