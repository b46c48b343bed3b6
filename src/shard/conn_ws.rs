//! The WebSocket connection kind: an HTTP connection upgraded at `/v1/ws` (the Go/Fiber JSON
//! dialect) or `/ws` (the FastAPI dialect), in place, on the same reactor.
//!
//! Frames are decoded by [`crate::protocol::websocket`], each text message by its dialect's
//! codec, and each request goes to the same protocol-neutral handlers as a native frame. A
//! WebSocket client names topics, not subscription ids, so the session keeps the topic ↔
//! subscription id map, and the context each answer needs (the client's `request_id`, what
//! was asked) under the request id the core sees.
//!
//! Lifetime of a session: `101 Switching Protocols` (and `info` for `/ws`), then requests and
//! events; a close frame from the client is answered and the connection closes after it; a
//! protocol error (unmasked frame, bad UTF-8, oversized message) gets a close frame with its
//! code; a slow consumer gets `SLOW_CONSUMER` then close 1008; shutdown sends what is queued,
//! then close 1001.

use std::borrow::Cow;
use std::sync::Arc;

use ahash::AHashMap;
use slab::Slab;

use crate::error::{CloseReason, ErrorCode};
use crate::ids::ConnectionId;
use crate::message::Message;
use crate::protocol::resp::RespVersion;
use crate::protocol::subscribe_options::{Start, SubscribeOptions};
use crate::protocol::websocket::{self, close_code, Decoder, Event};
use crate::protocol::ws_fastapi::{self, AckFor, ErrorDetails, FastApiCode, FastApiRequest};
use crate::protocol::ws_fiber::{self, FiberCode, FiberEvent, FiberRequest};
use crate::protocol::ws_json::MessageId;
use crate::protocol::{native, payload};

use super::commands::{unix_time_ns, Publish, PublishTopic};
use super::connection::ConnState;
use super::wire::{Answer, Wire};
use super::{Flow, Shard};

/// Requests of one WebSocket connection waiting for their answer; past this many the client
/// is told to slow down rather than the session growing.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 1024;

/// Which JSON dialect a session speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `/v1/ws`.
    Fiber,
    /// `/ws`.
    FastApi,
}

/// How an event is worded: the same bytes serve every subscriber with the same format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventFormat {
    Fiber {
        seq: bool,
    },
    FastApi,
    /// A Redis `smessage` frame (sharded pub/sub). Plain `message` frames have their own
    /// entry ([`EventCache::resp_message_frame`]).
    SMessage {
        version: crate::protocol::resp::RespVersion,
    },
}

impl EventFormat {
    fn slot(self) -> usize {
        match self {
            EventFormat::Fiber { seq: false } => 0,
            EventFormat::Fiber { seq: true } => 1,
            EventFormat::FastApi => 2,
            EventFormat::SMessage { version } => 3 + usize::from(version == RespVersion::Resp3),
        }
    }
}

/// One WebSocket subscription: its topic or pattern, and how its events are worded.
struct WsSubscription {
    subject: Box<str>,
    format: EventFormat,
}

/// What an answer must say besides the core's outcome.
struct PendingRequest {
    request_id: Option<Box<str>>,
    topic: Box<str>,
    what: AckFor,
    /// A subscribe refused by the core frees its subscription id here too.
    sub_id: u32,
}

pub struct WsSession {
    pub dialect: Dialect,
    decoder: Decoder,
    by_subject: AHashMap<Box<str>, u32>,
    subscriptions: AHashMap<u32, WsSubscription>,
    next_sub_id: u32,
    pending: Slab<PendingRequest>,
    /// A request the core could not take yet (a full ring): retried before reading on.
    postponed: Option<Box<str>>,
    /// A close frame went out: nothing more is read or sent.
    closed: bool,
}

impl WsSession {
    pub fn new(dialect: Dialect, message_bytes_max: usize) -> Self {
        WsSession {
            dialect,
            decoder: Decoder::server(message_bytes_max),
            by_subject: AHashMap::new(),
            subscriptions: AHashMap::new(),
            next_sub_id: 1,
            pending: Slab::new(),
            postponed: None,
            closed: false,
        }
    }

    /// The format of subscription `sub_id`'s events.
    pub fn event_format(&self, sub_id: u32) -> EventFormat {
        self.subscriptions
            .get(&sub_id)
            .map_or(EventFormat::FastApi, |s| s.format)
    }

    fn track(&mut self, request: PendingRequest) -> Option<u32> {
        if self.pending.len() >= REQUESTS_IN_FLIGHT_MAX {
            return None;
        }
        Some(self.pending.insert(request) as u32 + 1)
    }

    /// Words the core's answer to request `request_id` as a text frame; 0 is the connection
    /// itself (a slow consumer cut, shutdown, a handshake deadline), which also closes it.
    pub fn encode_answer(&mut self, request_id: u32, answer: Answer<'_>, out: &mut Vec<u8>) {
        let now_ns = unix_time_ns();
        let mut text = Vec::with_capacity(128);
        if request_id == 0 {
            let Answer::Refused { code, reason } = answer else {
                return;
            };
            let close = match code {
                ErrorCode::ShuttingDown => close_code::GOING_AWAY,
                ErrorCode::SlowConsumer => close_code::POLICY_VIOLATION,
                _ => close_code::POLICY_VIOLATION,
            };
            if code != ErrorCode::ShuttingDown {
                self.encode_error(None, code, reason, now_ns, &mut text);
                websocket::encode_text_frame(&text, out);
            }
            websocket::encode_close_frame(Some(close), reason, out);
            self.closed = true;
            return;
        }
        let Some(request) = self.pending.try_remove(request_id as usize - 1) else {
            return;
        };
        match answer {
            Answer::Refused { code, reason } => {
                if request.what == AckFor::Subscribe {
                    self.forget(request.sub_id);
                }
                if code == ErrorCode::TopicNotFound && self.dialect == Dialect::FastApi {
                    // FastAPI names the missing topic in `details`.
                    ws_fastapi::encode_error(
                        FastApiCode::TopicNotFound,
                        reason,
                        &ErrorDetails::Topic(request.topic.to_string()),
                        &mut text,
                    );
                } else {
                    self.encode_error(
                        request.request_id.as_deref(),
                        code,
                        reason,
                        now_ns,
                        &mut text,
                    );
                }
            }
            Answer::Throttled { retry_after_ms } => {
                let reason = super::wire::throttled_reason(retry_after_ms);
                match self.dialect {
                    Dialect::Fiber => ws_fiber::encode_error(
                        request.request_id.as_deref(),
                        FiberCode::RateLimited,
                        &reason,
                        Some(retry_after_ms),
                        now_ns,
                        &mut text,
                    ),
                    Dialect::FastApi => ws_fastapi::encode_error(
                        FastApiCode::RateLimited,
                        &reason,
                        &ErrorDetails::RetryAfterMs(retry_after_ms),
                        &mut text,
                    ),
                }
            }
            _ => match self.dialect {
                Dialect::Fiber => ws_fiber::encode_ack(
                    request.request_id.as_deref(),
                    &request.topic,
                    now_ns,
                    &mut text,
                ),
                Dialect::FastApi => ws_fastapi::encode_ack(request.what, &request.topic, &mut text),
            },
        }
        websocket::encode_text_frame(&text, out);
    }

    fn encode_error(
        &self,
        request_id: Option<&str>,
        code: ErrorCode,
        reason: &str,
        now_ns: u64,
        out: &mut Vec<u8>,
    ) {
        match self.dialect {
            Dialect::Fiber => ws_fiber::encode_error(
                request_id,
                FiberCode::from_error_code(code),
                reason,
                None,
                now_ns,
                out,
            ),
            Dialect::FastApi => ws_fastapi::encode_error(
                FastApiCode::from_error_code(code),
                reason,
                &ErrorDetails::None,
                out,
            ),
        }
    }

    /// A gap notice (a corebus extra in both dialects).
    pub fn encode_gap(&self, sub_id: u32, (missed, resume_seq): (u64, u64), out: &mut Vec<u8>) {
        let topic = self.subject_of(sub_id);
        let mut text = Vec::with_capacity(96);
        crate::protocol::ws_json::JsonObject::begin(&mut text)
            .string("type", "gap")
            .string("topic", topic)
            .u64("missed", missed)
            .u64("resume_seq", resume_seq)
            .end();
        websocket::encode_text_frame(&text, out);
    }

    /// Messages dropped under `drop-oldest` (a corebus extra in both dialects).
    pub fn encode_dropped(&self, sub_id: u32, count: u64, out: &mut Vec<u8>) {
        let topic = self.subject_of(sub_id);
        let mut text = Vec::with_capacity(96);
        crate::protocol::ws_json::JsonObject::begin(&mut text)
            .string("type", "dropped")
            .string("topic", topic)
            .u64("count", count)
            .end();
        websocket::encode_text_frame(&text, out);
    }

    /// The broker ended subscription `sub_id` (its topic was deleted): an error naming it,
    /// and the topic may be subscribed to again.
    pub fn encode_ended(&mut self, sub_id: u32, code: ErrorCode, reason: &str, out: &mut Vec<u8>) {
        let mut text = Vec::with_capacity(128);
        let code = if code == ErrorCode::TopicDeleted {
            ErrorCode::TopicNotFound
        } else {
            code
        };
        self.encode_error(None, code, reason, unix_time_ns(), &mut text);
        websocket::encode_text_frame(&text, out);
        self.forget(sub_id);
    }

    fn subject_of(&self, sub_id: u32) -> &str {
        self.subscriptions.get(&sub_id).map_or("", |s| &s.subject)
    }

    fn forget(&mut self, sub_id: u32) {
        if let Some(subscription) = self.subscriptions.remove(&sub_id) {
            self.by_subject.remove(&subscription.subject);
        }
    }
}

/// One encoding per (message, event format) on a shard: fan-out to many WebSocket
/// subscribers of one dialect writes the same bytes to each. The entry holds its message, so
/// the frame's address cannot be reused by another message while it is the key.
#[derive(Default)]
pub struct EventCache {
    entries: [Option<(Message, Arc<[u8]>)>; 5],
    /// Per RESP version (see [`EventCache::resp_message_frame`]).
    resp_messages: [SharedRespMessage; 2],
}

#[derive(Default)]
struct SharedRespMessage {
    /// The frame address ([`Message::frame_address`]) and sequence number of the last
    /// message a Redis channel subscriber was sent: a hint that the next delivery is the
    /// same message's second. The address alone would match the next message of the same
    /// size most of the time, since a shard reuses the block it freed last.
    last_message: (usize, u64),
    /// The last message worded for sharing, and its `message` frame.
    shared: Option<(Message, Arc<[u8]>)>,
}

impl SharedRespMessage {
    /// `message`'s frame, worded now unless it is the one already shared.
    // Out of line, so that the test every delivery makes first stays a few inlined
    // instructions, without the wording's register saves around it.
    #[inline(never)]
    fn shared_frame(&mut self, version: RespVersion, message: &Message) -> Arc<[u8]> {
        if let Some((shared, frame)) = &self.shared {
            if shared.shares_frame(message) {
                return frame.clone();
            }
        }
        let frame: Arc<[u8]> = super::conn_resp::encode_message_event(version, message).into();
        self.shared = Some((message.clone(), frame.clone()));
        frame
    }
}

impl EventCache {
    /// The Redis `message` frame of `message` in `version`, worded once for every channel
    /// subscriber after the first; `None` for the first, whose frame is worded as it is
    /// staged. Worded per delivery, a frame cost a fan-out to 16 Redis subscribers about 220
    /// of its 640 instructions a delivery (callgrind); a message with one subscriber, the
    /// common case, keeps the path with no allocation.
    #[inline]
    pub fn resp_message_frame(
        &mut self,
        version: RespVersion,
        message: &Message,
    ) -> Option<Arc<[u8]>> {
        let entry = &mut self.resp_messages[usize::from(version == RespVersion::Resp3)];
        // The first delivery only notes the message: no clone to keep and drop per message.
        // An address and number taken over by a later message (another topic's) at most
        // share that message's frame needlessly: the frame is always worded from the message
        // at hand.
        let noted = (message.frame_address(), message.seq());
        if entry.last_message != noted {
            entry.last_message = noted;
            return None;
        }
        Some(entry.shared_frame(version, message))
    }

    /// The complete text frame of `message`'s event in `format`; `epoch` derives its id.
    pub fn frame(&mut self, format: EventFormat, message: &Message, epoch: u64) -> Arc<[u8]> {
        let entry = &mut self.entries[format.slot()];
        if let Some((cached, frame)) = entry {
            if cached.shares_frame(message) {
                return frame.clone();
            }
        }
        let frame: Arc<[u8]> = encode_event(format, message, epoch).into();
        *entry = Some((message.clone(), frame.clone()));
        frame
    }
}

/// The payload's wire form for WebSocket clients follows its `content-type` header.
fn content_type(message: &Message) -> Option<&[u8]> {
    message.header(payload::CONTENT_TYPE_HEADER)
}

fn encode_event(format: EventFormat, message: &Message, epoch: u64) -> Vec<u8> {
    if let EventFormat::SMessage { version } = format {
        return super::conn_resp::encode_smessage_event(version, message);
    }
    let mut text = Vec::with_capacity(message.payload().len() + 128);
    // The publisher's id if it gave one (header `id`), else one derived from (epoch, seq).
    let publisher_id = message
        .header(payload::ID_HEADER)
        .and_then(|id| std::str::from_utf8(id).ok());
    let id = MessageId::pick(publisher_id, epoch, message.seq());
    match format {
        EventFormat::Fiber { seq } => ws_fiber::encode_event(
            &FiberEvent {
                topic: message.topic(),
                id,
                payload: message.payload(),
                content_type: content_type(message),
                timestamp_ns: message.timestamp_ns(),
                seq: seq.then_some(message.seq()),
            },
            &mut text,
        ),
        EventFormat::SMessage { .. } => unreachable!("answered above"),
        EventFormat::FastApi => ws_fastapi::encode_event(
            message.topic(),
            message.payload(),
            content_type(message),
            id,
            &mut text,
        ),
    }
    let mut frame = Vec::with_capacity(text.len() + websocket::HEADER_LEN_MAX);
    websocket::encode_text_frame(&text, &mut frame);
    frame
}

impl Shard {
    /// Decodes and handles every complete WebSocket frame in the connection's read buffer.
    pub(super) fn process_websocket(&mut self, id: ConnectionId) -> Flow {
        if let Some(text) = self.take_postponed(id) {
            match self.handle_ws_text(id, &text) {
                Flow::Continue => {}
                Flow::Blocked => {
                    self.put_back_postponed(id, text);
                    return Flow::Blocked;
                }
                Flow::Stop => return Flow::Stop,
            }
        }
        loop {
            let Some(conn) = self.connection_mut(id) else {
                return Flow::Stop;
            };
            if conn.is_closing() {
                return Flow::Stop;
            }
            let Wire::WebSocket(session) = &mut conn.wire else {
                return Flow::Stop;
            };
            let buffer = conn.read.filled_mut();
            // The decoder unmasks in place, so a decoded message is taken out (owned) before
            // the bytes are consumed; a postponed request is kept the same way.
            let decoded = match session.decoder.decode(buffer) {
                Ok(None) => return Flow::Continue,
                Ok(Some((event, len))) => Ok((owned_event(event), len)),
                Err(error) => Err(error),
            };
            match decoded {
                Err(error) => {
                    websocket::encode_protocol_error_close(error, conn.out.replies());
                    session.closed = true;
                    self.counters.protocol_errors += 1;
                    self.begin_close(id, CloseReason::ProtocolError);
                    return Flow::Stop;
                }
                Ok((event, len)) => {
                    conn.read.consume(len);
                    let flow = match event {
                        OwnedEvent::Text(text) => match self.handle_ws_text(id, &text) {
                            Flow::Blocked => {
                                self.put_back_postponed(id, text);
                                Flow::Blocked
                            }
                            flow => flow,
                        },
                        OwnedEvent::Binary => self.refuse_binary(id),
                        OwnedEvent::Ping(data) => {
                            if let Some(conn) = self.connection_mut(id) {
                                websocket::encode_pong_frame(&data, conn.out.replies());
                            }
                            self.mark_dirty(id);
                            Flow::Continue
                        }
                        OwnedEvent::Nothing => Flow::Continue,
                        OwnedEvent::Close(code) => {
                            if let Some(conn) = self.connection_mut(id) {
                                if let Wire::WebSocket(session) = &mut conn.wire {
                                    session.closed = true;
                                }
                                websocket::encode_close_frame(
                                    Some(code.unwrap_or(close_code::NORMAL)),
                                    "",
                                    conn.out.replies(),
                                );
                            }
                            self.begin_close(id, CloseReason::PeerClosed);
                            Flow::Stop
                        }
                    };
                    if flow != Flow::Continue {
                        return flow;
                    }
                }
            }
        }
    }

    fn take_postponed(&mut self, id: ConnectionId) -> Option<Box<str>> {
        match &mut self.connection_mut(id)?.wire {
            Wire::WebSocket(session) => session.postponed.take(),
            _ => None,
        }
    }

    fn put_back_postponed(&mut self, id: ConnectionId, text: Box<str>) {
        if let Some(conn) = self.connection_mut(id) {
            if let Wire::WebSocket(session) = &mut conn.wire {
                session.postponed = Some(text);
            }
        }
    }

    fn refuse_binary(&mut self, id: ConnectionId) -> Flow {
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        let Wire::WebSocket(session) = &conn.wire else {
            return Flow::Stop;
        };
        let mut text = Vec::new();
        match session.dialect {
            Dialect::Fiber => ws_fiber::encode_parse_error(
                &ws_fiber::binary_frame_error(),
                unix_time_ns(),
                &mut text,
            ),
            Dialect::FastApi => {
                ws_fastapi::encode_parse_error(&ws_fastapi::binary_frame_error(), &mut text)
            }
        }
        websocket::encode_text_frame(&text, conn.out.replies());
        self.mark_dirty(id);
        Flow::Continue
    }

    /// Refuses a client message in the session's dialect; the connection stays open.
    fn ws_refuse(
        &mut self,
        id: ConnectionId,
        request_id: Option<&str>,
        code: ErrorCode,
        reason: &str,
    ) {
        let mut text = Vec::new();
        if let Some(Wire::WebSocket(session)) = self.connection_mut(id).map(|c| &c.wire) {
            session.encode_error(request_id, code, reason, unix_time_ns(), &mut text);
        }
        self.ws_send(id, &text);
    }

    /// Sends a text message to the client (ahead of queued events).
    fn ws_send(&mut self, id: ConnectionId, text: &[u8]) {
        if let Some(conn) = self.connection_mut(id) {
            websocket::encode_text_frame(text, conn.out.replies());
            self.mark_dirty(id);
        }
    }

    fn handle_ws_text(&mut self, id: ConnectionId, text: &str) -> Flow {
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        let Wire::WebSocket(session) = &conn.wire else {
            return Flow::Stop;
        };
        match session.dialect {
            Dialect::Fiber => self.handle_fiber(id, text),
            Dialect::FastApi => self.handle_fastapi(id, text),
        }
    }

    fn handle_fiber(&mut self, id: ConnectionId, text: &str) -> Flow {
        let request = match ws_fiber::parse_client_message(text) {
            Ok(request) => request,
            Err(error) => {
                let mut out = Vec::new();
                ws_fiber::encode_parse_error(&error, unix_time_ns(), &mut out);
                self.ws_send(id, &out);
                return Flow::Continue;
            }
        };
        match request {
            FiberRequest::Ping { request_id } => {
                let mut out = Vec::new();
                ws_fiber::encode_pong(request_id.as_deref(), unix_time_ns(), &mut out);
                self.ws_send(id, &out);
                Flow::Continue
            }
            FiberRequest::Subscribe(subscribe) => {
                // The Go/Fiber dialect names its client on each subscribe: the first name
                // becomes the connection's, as presence shows it.
                if let (Some(client_id), Some(conn)) =
                    (&subscribe.client_id, self.connection_mut(id))
                {
                    if conn.client_name.is_empty() {
                        conn.client_name = client_id.to_string();
                    }
                }
                self.ws_subscribe(
                    id,
                    (subscribe.request_id, subscribe.topic),
                    subscribe.options,
                    EventFormat::Fiber { seq: subscribe.seq },
                )
            }
            FiberRequest::Unsubscribe {
                topic, request_id, ..
            } => self.ws_unsubscribe(id, request_id, topic),
            FiberRequest::Publish {
                topic,
                message_id,
                payload,
                request_id,
            } => {
                let mut stored = Vec::with_capacity(payload.get().len());
                payload::store_json(payload.0, &mut stored);
                self.ws_publish(id, (request_id, topic), message_id.as_deref(), &stored)
            }
            FiberRequest::Ack {
                topic,
                seq,
                request_id,
            } => self.ws_ack(id, request_id, topic, seq),
        }
    }

    fn handle_fastapi(&mut self, id: ConnectionId, text: &str) -> Flow {
        let request = match ws_fastapi::parse_client_message(text, self.config.ws_last_n_max) {
            Ok(request) => request,
            Err(error) => {
                let mut out = Vec::new();
                ws_fastapi::encode_parse_error(&error, &mut out);
                self.ws_send(id, &out);
                return Flow::Continue;
            }
        };
        match request {
            FastApiRequest::Ping => {
                let mut out = Vec::new();
                ws_fastapi::encode_pong(&mut out);
                self.ws_send(id, &out);
                Flow::Continue
            }
            FastApiRequest::Subscribe { topic, last_n, .. } => {
                let options = SubscribeOptions {
                    start: if last_n > 0 {
                        Start::LastN(last_n)
                    } else {
                        Start::New
                    },
                    ..SubscribeOptions::default()
                };
                self.ws_subscribe(id, (None, topic), options, EventFormat::FastApi)
            }
            FastApiRequest::Unsubscribe { topic, .. } => self.ws_unsubscribe(id, None, topic),
            FastApiRequest::Publish { topic, data } => {
                let mut stored = Vec::with_capacity(data.get().len());
                payload::store_json(data.0, &mut stored);
                self.ws_publish(id, (None, topic), None, &stored)
            }
        }
    }

    /// Registers the request's context and returns the request id the core will answer, or
    /// answers "too many" itself.
    fn ws_track(&mut self, id: ConnectionId, request: PendingRequest) -> Option<u32> {
        let conn = self.connection_mut(id)?;
        let Wire::WebSocket(session) = &mut conn.wire else {
            return None;
        };
        let tracked = session.track(request);
        if tracked.is_none() {
            self.ws_refuse(
                id,
                None,
                ErrorCode::RateLimited,
                "too many requests waiting for their answer; wait for some",
            );
        }
        tracked
    }

    fn ws_publish(
        &mut self,
        id: ConnectionId,
        (request_id, topic): (Option<Cow<'_, str>>, Cow<'_, str>),
        message_id: Option<&str>,
        stored: &[u8],
    ) -> Flow {
        // The payload is JSON: say so, so every protocol can show it as such; and keep the
        // publisher's id. An id too long for a header is refused like any bad field.
        let mut headers = Vec::with_capacity(64);
        let _ = native::put_header(
            &mut headers,
            payload::CONTENT_TYPE_HEADER.as_bytes(),
            payload::CONTENT_TYPE_JSON.as_bytes(),
        );
        if let Some(message_id) = message_id {
            if native::put_header(
                &mut headers,
                payload::ID_HEADER.as_bytes(),
                message_id.as_bytes(),
            )
            .is_err()
            {
                self.ws_refuse(
                    id,
                    request_id.as_deref(),
                    ErrorCode::BadFrame,
                    "message.id is longer than 65535 bytes",
                );
                return Flow::Continue;
            }
        }
        let Some(request) = self.ws_track(
            id,
            PendingRequest {
                request_id: request_id.map(|r| r.into()),
                topic: topic.as_ref().into(),
                what: AckFor::Publish,
                sub_id: 0,
            },
        ) else {
            return Flow::Continue;
        };
        let flow = self.handle_publish(
            id,
            request,
            Publish {
                topic: PublishTopic::Unchecked(topic.as_bytes()),
                reply_to: None,
                headers: &headers,
                payload: stored,
                quiet: false,
            },
        );
        if flow == Flow::Blocked {
            self.ws_untrack(id, request);
        }
        flow
    }

    fn ws_untrack(&mut self, id: ConnectionId, request: u32) {
        if let Some(conn) = self.connection_mut(id) {
            if let Wire::WebSocket(session) = &mut conn.wire {
                session.pending.try_remove(request as usize - 1);
            }
        }
    }

    fn ws_subscribe(
        &mut self,
        id: ConnectionId,
        (request_id, subject): (Option<Cow<'_, str>>, Cow<'_, str>),
        options: SubscribeOptions,
        format: EventFormat,
    ) -> Flow {
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        let Wire::WebSocket(session) = &mut conn.wire else {
            return Flow::Stop;
        };
        if session.by_subject.contains_key(subject.as_ref()) {
            // Subscribing twice to one topic is a no-op that succeeds, as both services did.
            let mut text = Vec::new();
            match session.dialect {
                Dialect::Fiber => {
                    ws_fiber::encode_ack(request_id.as_deref(), &subject, unix_time_ns(), &mut text)
                }
                Dialect::FastApi => ws_fastapi::encode_ack(AckFor::Subscribe, &subject, &mut text),
            }
            self.ws_send(id, &text);
            return Flow::Continue;
        }
        let sub_id = session.next_sub_id;
        session.next_sub_id = session.next_sub_id.wrapping_add(1).max(1);
        let Some(request) = self.ws_track(
            id,
            PendingRequest {
                request_id: request_id.map(|r| r.into()),
                topic: subject.as_ref().into(),
                what: AckFor::Subscribe,
                sub_id,
            },
        ) else {
            return Flow::Continue;
        };
        if let Some(conn) = self.connection_mut(id) {
            if let Wire::WebSocket(session) = &mut conn.wire {
                session.by_subject.insert(subject.as_ref().into(), sub_id);
                session.subscriptions.insert(
                    sub_id,
                    WsSubscription {
                        subject: subject.as_ref().into(),
                        format,
                    },
                );
            }
        }
        let flow = self.handle_subscribe(id, request, sub_id, subject.as_bytes(), options);
        if flow == Flow::Blocked {
            self.ws_untrack(id, request);
            if let Some(conn) = self.connection_mut(id) {
                if let Wire::WebSocket(session) = &mut conn.wire {
                    session.forget(sub_id);
                }
            }
        }
        flow
    }

    fn ws_unsubscribe(
        &mut self,
        id: ConnectionId,
        request_id: Option<Cow<'_, str>>,
        subject: Cow<'_, str>,
    ) -> Flow {
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        let Wire::WebSocket(session) = &mut conn.wire else {
            return Flow::Stop;
        };
        let Some(&sub_id) = session.by_subject.get(subject.as_ref()) else {
            let mut text = Vec::new();
            let reason = format!("not subscribed to {subject}");
            match session.dialect {
                Dialect::Fiber => ws_fiber::encode_error(
                    request_id.as_deref(),
                    FiberCode::BadRequest,
                    &reason,
                    None,
                    unix_time_ns(),
                    &mut text,
                ),
                Dialect::FastApi => ws_fastapi::encode_error(
                    FastApiCode::NotSubscribed,
                    &reason,
                    &ErrorDetails::Topic(subject.as_ref().to_owned()),
                    &mut text,
                ),
            }
            self.ws_send(id, &text);
            return Flow::Continue;
        };
        session.forget(sub_id);
        let Some(request) = self.ws_track(
            id,
            PendingRequest {
                request_id: request_id.map(|r| r.into()),
                topic: subject.as_ref().into(),
                what: AckFor::Unsubscribe,
                sub_id,
            },
        ) else {
            return Flow::Continue;
        };
        self.handle_unsubscribe(id, request, sub_id)
    }

    fn ws_ack(
        &mut self,
        id: ConnectionId,
        request_id: Option<Cow<'_, str>>,
        topic: Cow<'_, str>,
        seq: u64,
    ) -> Flow {
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        let Wire::WebSocket(session) = &mut conn.wire else {
            return Flow::Stop;
        };
        // An ack names the topic of an exact subscription, or, in a pattern group, the
        // message's topic: then it belongs to the pattern subscription that matches it.
        let sub_id = session.by_subject.get(topic.as_ref()).copied().or_else(|| {
            session
                .subscriptions
                .iter()
                .find(|(_, s)| crate::protocol::topic::pattern_matches(&s.subject, &topic))
                .map(|(&sub_id, _)| sub_id)
        });
        let Some(sub_id) = sub_id else {
            self.ws_refuse(
                id,
                request_id.as_deref(),
                ErrorCode::UnknownSubscription,
                "ack for a topic this connection is not subscribed to",
            );
            return Flow::Continue;
        };
        let Some(request) = self.ws_track(
            id,
            PendingRequest {
                request_id: request_id.map(|r| r.into()),
                topic: topic.as_ref().into(),
                what: AckFor::Publish,
                sub_id,
            },
        ) else {
            return Flow::Continue;
        };
        // Acks are answered only on failure. A refusal found here is answered at once; the
        // context is then forgotten, so one from the topic's owner later finds none and is
        // not sent (the redelivery tells the client the ack did not count).
        let flow = self.handle_ack(
            id,
            request,
            (sub_id, topic.as_bytes()),
            (seq, crate::protocol::native::AckKind::Single),
        );
        self.ws_untrack(id, request);
        flow
    }

    /// Switches an HTTP connection to a WebSocket session in place (after the 101).
    pub(super) fn upgrade_to_websocket(&mut self, id: ConnectionId, dialect: Dialect) {
        let message_bytes_max = self.config.ws_message_bytes_max();
        let Some(conn) = self.connection_mut(id) else {
            return;
        };
        conn.wire = Wire::WebSocket(Box::new(WsSession::new(dialect, message_bytes_max)));
        conn.state = ConnState::Open;
        if dialect == Dialect::FastApi {
            let mut text = Vec::new();
            // Connection ids repeat across shards; the client's id must not.
            let client_id = format!("{:016x}", rand::random::<u64>());
            ws_fastapi::encode_info(&client_id, &mut text);
            websocket::encode_text_frame(&text, conn.out.replies());
            conn.client_name = client_id;
        }
        let peer = conn.peer;
        log::info!(
            "event=websocket_opened shard={} conn={} peer={} dialect={:?}",
            self.id,
            id,
            peer,
            dialect
        );
    }

    /// Queues a subscription's event for a WebSocket connection, encoded once per shard.
    pub(super) fn ws_event_frame(
        cache: &mut EventCache,
        session: &WsSession,
        sub_id: u32,
        (message, epoch): (&Message, u64),
    ) -> Arc<[u8]> {
        cache.frame(session.event_format(sub_id), message, epoch)
    }
}

/// A decoded frame, owned, so the read buffer can be consumed before it is handled.
enum OwnedEvent {
    Text(Box<str>),
    Binary,
    Ping(Vec<u8>),
    Close(Option<u16>),
    Nothing,
}

fn owned_event(event: Event<'_>) -> OwnedEvent {
    match event {
        Event::Text(text) => OwnedEvent::Text(text.into()),
        Event::Binary(_) => OwnedEvent::Binary,
        Event::Ping(data) => OwnedEvent::Ping(data.to_vec()),
        Event::Pong(_) | Event::Fragment => OwnedEvent::Nothing,
        Event::Close(frame) => OwnedEvent::Close(frame.map(|f| f.code)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: &str, payload: &[u8]) -> Message {
        Message::from_publish(&mut Vec::new(), topic, None, payload)
    }

    fn worded(version: RespVersion, message: &Message) -> Vec<u8> {
        let mut frame = Vec::new();
        super::super::conn_resp::stage_message(&mut frame, version, message);
        frame
    }

    #[test]
    fn a_redis_message_frame_is_shared_from_its_second_subscriber_on() {
        let mut cache = EventCache::default();
        let (v2, v3) = (RespVersion::Resp2, RespVersion::Resp3);
        let first = message("news", b"one");
        // The first subscriber words its own; each version counts its own subscribers.
        assert!(cache.resp_message_frame(v2, &first).is_none());
        assert!(cache.resp_message_frame(v3, &first).is_none());
        let shared = cache.resp_message_frame(v2, &first).unwrap();
        assert_eq!(&shared[..], &worded(v2, &first)[..]);
        assert!(Arc::ptr_eq(
            &shared,
            &cache.resp_message_frame(v2, &first).unwrap()
        ));
        assert_eq!(
            &cache.resp_message_frame(v3, &first).unwrap()[..],
            &worded(v3, &first)[..]
        );
        // The next message starts over, and never gets the last one's frame.
        let second = message("news", b"two");
        assert!(cache.resp_message_frame(v2, &second).is_none());
        assert_eq!(
            &cache.resp_message_frame(v2, &second).unwrap()[..],
            &worded(v2, &second)[..]
        );
        // A message back after another is worded anew (or shared), never mixed up.
        assert!(cache.resp_message_frame(v2, &first).is_none());
        assert_eq!(
            &cache.resp_message_frame(v2, &first).unwrap()[..],
            &worded(v2, &first)[..]
        );
    }

    /// A shard writes its next frame into the block of the one it freed last, so the next
    /// message usually has the last one's address: its first delivery must still be a first.
    #[test]
    fn a_message_in_the_last_ones_block_is_still_delivered_first_unshared() {
        std::thread::spawn(|| {
            let _spares = crate::message::SpareBlocks::keep();
            let mut cache = EventCache::default();
            let v2 = RespVersion::Resp2;
            let mut first = message("news", b"one");
            first.stamp(1, 10);
            assert!(cache.resp_message_frame(v2, &first).is_none());
            let address = first.frame_address();
            drop(first);
            let mut second = message("news", b"two");
            second.stamp(2, 20);
            assert_eq!(second.frame_address(), address, "the block freed last");
            assert!(cache.resp_message_frame(v2, &second).is_none());
            assert_eq!(
                &cache.resp_message_frame(v2, &second).unwrap()[..],
                &worded(v2, &second)[..]
            );
        })
        .join()
        .unwrap();
    }
}
