//! What a client's frames ask of the shard that holds its connection.
//!
//! Each handler first checks everything that could refuse or postpone the command (bad
//! input, limits, a full outbox), and only then changes state, so a postponed command can be
//! re-run from the same bytes later and a refused one leaves nothing behind.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{CloseReason, ErrorCode};
use crate::ids::{ConnectionId, Subscriber};
use crate::mesh::message::ConsumerRequest;
use crate::mesh::message::{OwnerRequest, ReplyTarget, Subscribed, Ticket, TopicPosition};
use crate::message::Message;
use crate::protocol::native::AckKind;
use crate::protocol::native::{self, Frame, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN};
use crate::protocol::sniff;
use crate::protocol::subscribe_options::{OptionError, Sharing, Start, SubscribeOptions};
use crate::protocol::topic::{self, SubjectKind};
use crate::protocol::topic_options::TopicOptions;
use crate::shard::consumers::Member;
use crate::shard::pattern_groups::consumer_key;
use crate::shard::topics::INBOX_PREFIX;

use super::connection::{ConnState, ReadBuffer, SubscriptionRecord};
use super::{Flow, PendingSubscribe, Shard};

impl Shard {
    /// Decodes and handles every complete frame in the connection's read buffer.
    pub(super) fn process_frames(&mut self, id: ConnectionId) -> Flow {
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        if conn.is_closing() {
            return Flow::Stop;
        }
        // The buffer is taken out so the handlers may borrow the whole shard while the frame
        // borrows the bytes; it goes back below (swapping two Vecs allocates nothing).
        let mut buffer = std::mem::replace(&mut conn.read, ReadBuffer::new(0));
        let frame_bytes_max = self.config.frame_bytes_max();
        let flow = loop {
            match native::decode(buffer.filled(), frame_bytes_max) {
                Ok(None) => break Flow::Continue,
                Ok(Some((frame, len))) => match self.handle_frame(id, frame) {
                    Flow::Continue => buffer.consume(len),
                    Flow::Blocked => break Flow::Blocked,
                    Flow::Stop => {
                        buffer.consume(len);
                        break Flow::Stop;
                    }
                },
                Err(native::DecodeError::Invalid {
                    request_id,
                    frame_len,
                    code,
                    reason,
                }) => {
                    buffer.consume(frame_len);
                    self.counters.protocol_errors += 1;
                    self.reply_err(id, request_id, code, reason);
                    let handshaking = self
                        .connection_mut(id)
                        .is_some_and(|conn| conn.state == ConnState::Handshaking);
                    if handshaking {
                        self.begin_close(id, CloseReason::HandshakeFailed);
                        break Flow::Stop;
                    }
                }
                Err(native::DecodeError::Fatal { code, reason }) => {
                    self.counters.protocol_errors += 1;
                    if !self.answer_foreign_protocol(id, buffer.filled()) {
                        self.reply_err(id, 0, code, reason);
                    }
                    self.begin_close(id, CloseReason::ProtocolError);
                    break Flow::Stop;
                }
            }
            if self.connection_mut(id).is_none_or(|conn| conn.is_closing()) {
                break Flow::Stop;
            }
        };
        if let Some(conn) = self.connection_mut(id) {
            conn.read = buffer;
        }
        flow
    }

    fn handle_frame(&mut self, id: ConnectionId, frame: Frame<'_>) -> Flow {
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        if conn.state == ConnState::Handshaking {
            return self.handle_handshake(id, frame);
        }
        match frame {
            Frame::Publish {
                request_id,
                quiet,
                topic,
                reply_to,
                payload,
            } => self.handle_publish(id, request_id, quiet, topic, reply_to, payload),
            Frame::Subscribe {
                request_id,
                sub_id,
                topic,
                options,
            } => self.handle_subscribe(id, request_id, sub_id, topic, options),
            Frame::Unsubscribe { request_id, sub_id } => {
                self.handle_unsubscribe(id, request_id, sub_id)
            }
            Frame::Ack {
                request_id,
                sub_id,
                seq,
                kind,
                topic,
            } => self.handle_ack(id, request_id, (sub_id, topic), (seq, kind)),
            Frame::CreateTopic {
                request_id,
                topic,
                options,
            } => self.handle_create_topic(id, request_id, topic, options),
            Frame::DeleteTopic { request_id, topic } => {
                self.handle_delete_topic(id, request_id, topic)
            }
            Frame::Ping { request_id } => {
                self.reply(id, Frame::Pong { request_id });
                Flow::Continue
            }
            Frame::Hello { request_id, .. } => {
                self.reply_err(
                    id,
                    request_id,
                    ErrorCode::BadFrame,
                    "HELLO was already done",
                );
                Flow::Continue
            }
            Frame::Ok { request_id, .. }
            | Frame::Err { request_id, .. }
            | Frame::Pong { request_id } => {
                self.counters.protocol_errors += 1;
                self.reply_err(
                    id,
                    request_id,
                    ErrorCode::BadFrame,
                    "that opcode is sent by the server, not the client",
                );
                Flow::Continue
            }
            Frame::Msg { .. } | Frame::Dropped { .. } | Frame::Gap { .. } | Frame::Ended { .. } => {
                self.counters.protocol_errors += 1;
                self.reply_err(
                    id,
                    0,
                    ErrorCode::BadFrame,
                    "that opcode is sent by the server, not the client",
                );
                Flow::Continue
            }
        }
    }

    fn handle_handshake(&mut self, id: ConnectionId, frame: Frame<'_>) -> Flow {
        let Frame::Hello {
            request_id,
            version,
            client_name,
        } = frame
        else {
            self.reply_err(
                id,
                0,
                ErrorCode::HandshakeRequired,
                "the first frame must be HELLO",
            );
            self.begin_close(id, CloseReason::HandshakeFailed);
            return Flow::Stop;
        };
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&version) {
            self.reply_err(
                id,
                request_id,
                ErrorCode::UnsupportedVersion,
                "this broker speaks native protocol versions 1 to 3",
            );
            self.begin_close(id, CloseReason::HandshakeFailed);
            return Flow::Stop;
        }
        let shard = self.id;
        let message_bytes_max = self.config.message_bytes_max as u32;
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        conn.state = ConnState::Open;
        conn.protocol_version = version;
        conn.client_name = String::from_utf8_lossy(client_name).into_owned();
        log::info!(
            "event=handshake shard={} conn={} peer={} client={:?}",
            shard,
            id,
            conn.peer,
            conn.client_name
        );
        let mut data = [0u8; 8];
        data[0..2].copy_from_slice(&version.to_be_bytes());
        data[2..4].copy_from_slice(&shard.0.to_be_bytes());
        data[4..8].copy_from_slice(&message_bytes_max.to_be_bytes());
        self.reply(
            id,
            Frame::Ok {
                request_id,
                data: &data,
            },
        );
        Flow::Continue
    }

    fn handle_publish(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        quiet: bool,
        topic_bytes: &[u8],
        reply_to: Option<&[u8]>,
        payload: &[u8],
    ) -> Flow {
        let topic = match topic::parse_publish_topic(topic_bytes) {
            Ok(topic) => topic,
            Err(error) => {
                self.reply_err(id, request_id, ErrorCode::BadTopic, error.reason());
                return Flow::Continue;
            }
        };
        if let Some(reply_to) = reply_to {
            if let Err(error) = topic::parse_publish_topic(reply_to) {
                self.reply_err(id, request_id, ErrorCode::BadTopic, error.reason());
                return Flow::Continue;
            }
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
        let owner = self.owner_of(topic);
        let has_room = if owner == self.id {
            self.terminal_room()
        } else {
            let link = self.link_mut(owner);
            link.requests_out.make_room()
        };
        if !has_room {
            return Flow::Blocked;
        }
        let message = Message::from_publish(&mut self.encode_scratch, topic, reply_to, payload);
        let reply = ReplyTarget {
            connection: id,
            request_id,
        };
        if owner == self.id {
            let result = self.sequence_and_fan_out(message);
            self.answer_publish(reply, quiet, result);
        } else {
            self.link_mut(owner)
                .requests_out
                .push(OwnerRequest::Publish {
                    message,
                    reply,
                    quiet,
                });
        }
        Flow::Continue
    }

    fn handle_subscribe(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        sub_id: u32,
        subject: &[u8],
        options: &[u8],
    ) -> Flow {
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        if !options.is_empty() && conn.protocol_version < 2 {
            self.reply_err(
                id,
                request_id,
                ErrorCode::UnsupportedOption,
                "SUBSCRIBE options need protocol version 2",
            );
            return Flow::Continue;
        }
        let options = match SubscribeOptions::parse(options) {
            Ok(options) => options,
            Err(OptionError::Malformed(reason)) => {
                self.reply_err(id, request_id, ErrorCode::BadFrame, reason);
                return Flow::Continue;
            }
            Err(OptionError::Unsupported(reason)) => {
                self.reply_err(id, request_id, ErrorCode::UnsupportedOption, reason);
                return Flow::Continue;
            }
        };
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
        if kind == SubjectKind::Pattern && options.acks.is_some() && conn.protocol_version < 3 {
            self.reply_err(
                id,
                request_id,
                ErrorCode::UnsupportedOption,
                "an acked pattern group needs protocol version 3",
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
        };
        match kind {
            SubjectKind::Exact if owner == self.id => {
                self.record_subscription(subscriber, record);
                let mut actions = Vec::new();
                let result = match consumer_request {
                    None => self
                        .owned
                        .add_subscriber(subject, self.id, start, unix_time_ns()),
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
                    self.reply_ok(id, request_id, &[]);
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
                let first = self.local.add_pattern(subject, subscriber);
                if first {
                    self.pattern_interest.insert(subject, self.id);
                }
                let peers = (self.shard_count - 1) as u32;
                if peers == 0 {
                    self.reply_ok(id, request_id, &[]);
                } else {
                    let ticket =
                        self.pending_subscribe(subscriber, request_id, (subject, kind), peers);
                    for link in self.peers_mut() {
                        link.requests_out.push(OwnerRequest::PatternSubscribe {
                            pattern: subject.into(),
                            first,
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
        result: Result<Subscribed, ErrorCode>,
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
                // A consumer's messages come from its owner, not from this shard's fan-out.
                if record.consumer.is_none() {
                    self.local.add_exact(subject, subscriber);
                }
                let position = subscribed.position;
                self.reply_ok(id, request_id, &position.ok_data());
                self.deliver_replay((subscriber, subject), position.last_seq, subscribed.replay);
            }
            Err(code) => {
                let (acks, name) = (record.acks, record.consumer.clone());
                if let Some(conn) = self.connection_mut(id) {
                    conn.subscriptions.remove(&subscriber.sub_id);
                }
                let reason = match code {
                    ErrorCode::ConsumerInUse => {
                        consumer_in_use_reason(name.as_deref().unwrap_or_default(), acks)
                    }
                    _ => self.refusal_reason(code),
                };
                self.reply_err(id, request_id, code, &reason);
            }
        }
    }

    fn handle_unsubscribe(&mut self, id: ConnectionId, request_id: u32, sub_id: u32) -> Flow {
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
                self.reply(
                    id,
                    Frame::Ok {
                        request_id,
                        data: &[],
                    },
                );
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
                if self.local.remove_pattern(&record.subject, subscriber) == Some(true) {
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
                self.reply_ok(subscriber.connection, request_id, &[]);
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

    fn handle_ack(
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
            // Acks are the hot path of at-least-once: reuse the shard's action list.
            let mut actions = std::mem::take(&mut self.consumer_actions);
            self.owned.ack_consumer(
                (&topic, &consumer),
                Member {
                    shard: self.id,
                    subscriber: Subscriber {
                        connection: id,
                        sub_id,
                    },
                },
                (seq, kind),
                unix_time_ns(),
                &mut actions,
            );
            self.carry_out(&topic, &mut actions);
            self.consumer_actions = actions;
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

    /// Refuses a command that came with protocol v3 on an older connection (`UNKNOWN_OPCODE`:
    /// that version does not have it), or stops for a connection that is gone. `None` lets the
    /// command go on.
    fn refused_before_v3(&mut self, id: ConnectionId, request_id: u32, what: &str) -> Option<Flow> {
        let Some(conn) = self.connection_mut(id) else {
            return Some(Flow::Stop);
        };
        if conn.protocol_version >= 3 {
            return None;
        }
        let reason = format!("{what} needs protocol version 3");
        self.reply_err(id, request_id, ErrorCode::UnknownOpcode, &reason);
        Some(Flow::Continue)
    }

    fn handle_create_topic(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        topic_bytes: &[u8],
        options: &[u8],
    ) -> Flow {
        if let Some(flow) = self.refused_before_v3(id, request_id, "CREATE_TOPIC") {
            return flow;
        }
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
        let refusal = match TopicOptions::parse(options) {
            Ok(options) => self
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
                }),
            Err(OptionError::Malformed(reason)) => Err((ErrorCode::BadFrame, reason.into())),
            Err(OptionError::Unsupported(reason)) => {
                Err((ErrorCode::UnsupportedOption, reason.into()))
            }
        };
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
        if owner == self.id {
            let result = self.owned.create(topic, replay_limits);
            self.answer_create_topic(reply, result);
        } else {
            let link = self.link_mut(owner);
            if !link.requests_out.make_room() {
                return Flow::Blocked;
            }
            link.requests_out.push(OwnerRequest::CreateTopic {
                topic: topic.into(),
                replay_limits,
                reply,
            });
        }
        Flow::Continue
    }

    fn handle_delete_topic(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        topic_bytes: &[u8],
    ) -> Flow {
        if let Some(flow) = self.refused_before_v3(id, request_id, "DELETE_TOPIC") {
            return flow;
        }
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
            Ok(position) => self.reply_ok(reply.connection, reply.request_id, &position.ok_data()),
            Err(code) => {
                let reason = match code {
                    ErrorCode::TopicExists => "the topic exists already".to_string(),
                    ErrorCode::TooManyTopics => format!(
                        "{}, or its share of --created-topics-max ({} of {} across {} shards)",
                        self.refusal_reason(code),
                        self.config.created_topics_per_shard_max(),
                        self.config.created_topics_max,
                        self.config.shards
                    ),
                    _ => self.refusal_reason(code),
                };
                self.reply_err(reply.connection, reply.request_id, code, &reason);
            }
        }
    }

    pub(super) fn reply_ok(&mut self, id: ConnectionId, request_id: u32, data: &[u8]) {
        self.reply(id, Frame::Ok { request_id, data });
    }

    /// Queues a reply frame on a connection (ahead of its queued deliveries).
    pub(super) fn reply(&mut self, id: ConnectionId, frame: Frame<'_>) {
        if let Some(conn) = self.connection_mut(id) {
            frame.encode(conn.out.replies());
            self.mark_dirty(id);
        }
    }

    pub(super) fn reply_err(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        code: ErrorCode,
        message: &str,
    ) {
        self.reply(
            id,
            Frame::Err {
                request_id,
                code: code.as_u16(),
                message: message.as_bytes(),
            },
        );
    }
}

impl Shard {
    /// Why a command was refused for `code`, naming the limit and its value, for refusals
    /// that come back from the topic's shard with a code only.
    pub(super) fn refusal_reason(&self, code: ErrorCode) -> String {
        let config = &self.config;
        match code {
            ErrorCode::TooManyTopics => format!(
                "no room for a new topic: the shard that holds it has its share of --topics-max \
                 ({} of {} across {} shards); existing topics keep working",
                config.topics_per_shard_max(),
                config.topics_max,
                config.shards
            ),
            ErrorCode::TooManyConsumers => format!(
                "no room for a new durable consumer or group: the shard that holds the topic \
                 has its share of --consumers-max ({} of {} across {} shards)",
                config.consumers_per_shard_max(),
                config.consumers_max,
                config.shards
            ),
            ErrorCode::TopicNotFound => "no such topic".to_string(),
            other => format!("refused ({other})"),
        }
    }

    /// Before HELLO, a text protocol's client (HTTP, Redis, NATS) is answered in its own words
    /// instead of with a native ERR it cannot read. Returns whether it was.
    fn answer_foreign_protocol(&mut self, id: ConnectionId, first_bytes: &[u8]) -> bool {
        let Some(conn) = self.connection_mut(id) else {
            return false;
        };
        let Some(protocol) = (conn.state == ConnState::Handshaking)
            .then(|| sniff::sniff(first_bytes))
            .flatten()
        else {
            return false;
        };
        conn.out
            .replies()
            .extend_from_slice(&sniff::answer(protocol));
        self.mark_dirty(id);
        true
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

pub(crate) fn unix_time_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
