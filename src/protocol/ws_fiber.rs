//! The Go/Fiber WebSocket dialect served on `GET /v1/ws`, exactly as the Go service spoke it,
//! plus corebus's optional extras (durable consumers, acks, groups, resuming from a sequence
//! number). Pure: text in, typed requests out; typed answers in, JSON text out (frame it with
//! [`super::websocket::encode_text_frame`]).
//!
//! # Client → server
//!
//! | `type`        | fields                                                                  |
//! |---------------|-------------------------------------------------------------------------|
//! | `subscribe`   | `topic`, `client_id`?, `last_n`?, `request_id`?; extras: `consumer`?, `group`?, `ack`?, `from_seq`?, `seq`? |
//! | `unsubscribe` | `topic`, `client_id`?, `request_id`?                                    |
//! | `publish`     | `topic`, `message: {"id"?, "payload"}`, `request_id`?                   |
//! | `ping`        | `request_id`?                                                           |
//! | `ack` (extra) | `topic`, `seq`, `request_id`?                                           |
//!
//! `payload` is any JSON value (`null` included); it is stored as its compact text with
//! `content-type: application/json`. `message.id`, when given and not empty, becomes the
//! message's id; otherwise the broker derives one from (epoch, seq). Subscribe extras: `consumer`
//! or `group` (1 to 64 of `[A-Za-z0-9_-]`, not both) name a durable consumer or a queue group;
//! `ack: true` (which needs one of them) asks for at-least-once delivery, events then carry `seq`
//! and the client acknowledges with `{"type":"ack","topic","seq"}`; `from_seq` starts at a
//! sequence number (excludes `last_n`); `seq: true` makes events carry `seq` without acks.
//!
//! # Server → client
//!
//! - `{"type":"ack","request_id","topic","status":"ok","timestamp"}` for subscribe,
//!   unsubscribe and publish ([`encode_ack`]);
//! - `{"type":"event","topic","message":{"id","payload"},"timestamp"}`, plus `"seq"` when the
//!   subscription asked for it ([`encode_event`]);
//! - `{"type":"error","request_id","error":{"code","message"},"timestamp"}`, a `RATE_LIMITED`
//!   error also carries `"retry_after_ms"` in `error` ([`encode_error`]);
//! - `{"type":"pong","request_id","timestamp"}` ([`encode_pong`]).
//!
//! `request_id` is echoed when the client sent one and left out otherwise. Timestamps are RFC
//! 3339 UTC ([`super::ws_json::format_rfc3339_utc`]).
//!
//! # Errors
//!
//! Every malformed message (not JSON, not an object, unknown `type`, a missing or mistyped
//! field, a bad topic name, a `client_id` above [`CLIENT_NAME_BYTES_MAX`], 255 bytes) is
//! `BAD_REQUEST`, carrying the message's `request_id` when it could
//! be read; the connection stays open. The broker adds `TOPIC_NOT_FOUND`, `SLOW_CONSUMER` (sent
//! just before it closes), `RATE_LIMITED`, `PAYLOAD_TOO_LARGE` and `INTERNAL`.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::subscribe_options::{
    AckSettings, Sharing, Start, SubscribeOptions, CONSUMER_NAME_BYTES_MAX,
};
use super::topic::{self, SubjectKind, TopicError};
use super::ws_json::{
    self, bool_value, format_rfc3339_utc, is_null, optional_string, parse_envelope, string_value,
    u64_value, EnvelopeError, JsonObject, JsonValue, MessageId, WrongType,
};
use super::CLIENT_NAME_BYTES_MAX;
use crate::error::ErrorCode;

/// The dialect's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FiberCode {
    BadRequest,
    TopicNotFound,
    SlowConsumer,
    RateLimited,
    PayloadTooLarge,
    Internal,
}

impl FiberCode {
    pub const ALL: [FiberCode; 6] = [
        FiberCode::BadRequest,
        FiberCode::TopicNotFound,
        FiberCode::SlowConsumer,
        FiberCode::RateLimited,
        FiberCode::PayloadTooLarge,
        FiberCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FiberCode::BadRequest => "BAD_REQUEST",
            FiberCode::TopicNotFound => "TOPIC_NOT_FOUND",
            FiberCode::SlowConsumer => "SLOW_CONSUMER",
            FiberCode::RateLimited => "RATE_LIMITED",
            FiberCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            FiberCode::Internal => "INTERNAL",
        }
    }

    /// The code a broker outcome is reported with in this dialect. Codes the Go service did
    /// not have fold into the nearest one: a request the broker refuses is the client's
    /// (`BAD_REQUEST`), a broker that cannot serve it is `INTERNAL`.
    pub fn from_error_code(code: ErrorCode) -> FiberCode {
        match code {
            ErrorCode::TopicNotFound => FiberCode::TopicNotFound,
            ErrorCode::SlowConsumer => FiberCode::SlowConsumer,
            ErrorCode::RateLimited => FiberCode::RateLimited,
            ErrorCode::MessageTooLarge | ErrorCode::FrameTooLarge => FiberCode::PayloadTooLarge,
            ErrorCode::Internal
            | ErrorCode::ShuttingDown
            | ErrorCode::TooManyConnections
            | ErrorCode::TooManyTopics
            | ErrorCode::TooManyConsumers => FiberCode::Internal,
            _ => FiberCode::BadRequest,
        }
    }
}

/// A client message this dialect refuses: answer with [`encode_error`], keep the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FiberError<'a> {
    /// The message's `request_id`, when it could be read.
    pub request_id: Option<Cow<'a, str>>,
    pub code: FiberCode,
    pub message: Cow<'static, str>,
}

/// A `subscribe` with its options already in the broker's terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FiberSubscribe<'a> {
    pub topic: Cow<'a, str>,
    pub kind: SubjectKind,
    pub client_id: Option<Cow<'a, str>>,
    pub request_id: Option<Cow<'a, str>>,
    /// `last_n`/`from_seq` as [`Start`], `consumer`/`group` as [`Sharing`], `ack` as
    /// default [`AckSettings`].
    pub options: SubscribeOptions,
    /// Events carry `seq` (asked with `"seq": true`, implied by `"ack": true`).
    pub seq: bool,
}

/// A client message of this dialect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FiberRequest<'a> {
    Subscribe(FiberSubscribe<'a>),
    Unsubscribe {
        topic: Cow<'a, str>,
        kind: SubjectKind,
        client_id: Option<Cow<'a, str>>,
        request_id: Option<Cow<'a, str>>,
    },
    Publish {
        topic: Cow<'a, str>,
        /// `message.id`, when given and not empty.
        message_id: Option<Cow<'a, str>>,
        /// The JSON value as sent; store it with [`super::payload::store_json`].
        payload: JsonValue<'a>,
        request_id: Option<Cow<'a, str>>,
    },
    Ping {
        request_id: Option<Cow<'a, str>>,
    },
    /// Acknowledges `seq` of `topic` (a subscription made with `"ack": true`).
    Ack {
        topic: Cow<'a, str>,
        seq: u64,
        request_id: Option<Cow<'a, str>>,
    },
}

/// The `message` object of a publish.
#[derive(Debug, serde::Deserialize)]
struct MessageBody<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
}

fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue as serde::Deserialize>::deserialize(deserializer).map(Some)
}

/// Parses one text message. A binary frame is not part of this dialect: answer it with
/// [`binary_frame_error`].
pub fn parse_client_message(text: &str) -> Result<FiberRequest<'_>, FiberError<'_>> {
    let envelope = parse_envelope(text).map_err(|error| FiberError {
        request_id: None,
        code: FiberCode::BadRequest,
        message: match error {
            EnvelopeError::InvalidJson(detail) => Cow::Owned(format!("invalid JSON: {detail}")),
            EnvelopeError::NotAnObject(reason) => Cow::Borrowed(reason),
        },
    })?;
    let bad_request_without_id = |message: &'static str| FiberError {
        request_id: None,
        code: FiberCode::BadRequest,
        message: Cow::Borrowed(message),
    };
    let request_id = optional_string(envelope.request_id)
        .map_err(|WrongType| bad_request_without_id("request_id must be a string"))?;
    let bad = |message: &'static str| FiberError {
        request_id: request_id.clone(),
        code: FiberCode::BadRequest,
        message: Cow::Borrowed(message),
    };
    let kind = match envelope.kind {
        None => return Err(bad("type is required")),
        Some(raw) => string_value(raw).ok_or_else(|| bad("type must be a string"))?,
    };
    let client_id = |raw| {
        let client_id =
            optional_string(raw).map_err(|WrongType| bad("client_id must be a string"))?;
        match client_id {
            Some(id) if id.len() > CLIENT_NAME_BYTES_MAX => Err(FiberError {
                request_id: request_id.clone(),
                code: FiberCode::BadRequest,
                message: Cow::Owned(format!(
                    "client_id is {} bytes; at most {CLIENT_NAME_BYTES_MAX}",
                    id.len()
                )),
            }),
            id => Ok(id),
        }
    };
    match &*kind {
        "subscribe" => {
            let (topic, kind) = subscription_topic(envelope.topic).map_err(bad)?;
            let client_id = client_id(envelope.client_id)?;
            let (options, seq) = subscribe_extras(&envelope).map_err(bad)?;
            Ok(FiberRequest::Subscribe(FiberSubscribe {
                topic,
                kind,
                client_id,
                request_id,
                options,
                seq,
            }))
        }
        "unsubscribe" => {
            let (topic, kind) = subscription_topic(envelope.topic).map_err(bad)?;
            let client_id = client_id(envelope.client_id)?;
            Ok(FiberRequest::Unsubscribe {
                topic,
                kind,
                client_id,
                request_id,
            })
        }
        "publish" => {
            let Some(topic) = envelope.topic.and_then(string_value) else {
                return Err(bad("topic is required and must be a string"));
            };
            if let Err(error) = topic::parse_publish_topic(topic.as_bytes()) {
                return Err(FiberError {
                    request_id,
                    code: FiberCode::BadRequest,
                    message: Cow::Borrowed(error.reason()),
                });
            }
            let message = envelope
                .message
                .filter(|raw| raw.get().starts_with('{'))
                .ok_or_else(|| bad("message is required and must be an object"))?;
            let body: MessageBody<'_> = serde_json::from_str(message.get())
                .map_err(|_| bad("message has a key given twice"))?;
            let message_id = optional_string(body.id)
                .map_err(|WrongType| bad("message.id must be a string"))?
                .filter(|id| !id.is_empty());
            let payload = body
                .payload
                .ok_or_else(|| bad("message.payload is required"))?;
            Ok(FiberRequest::Publish {
                topic,
                message_id,
                payload: JsonValue(payload),
                request_id,
            })
        }
        "ping" => Ok(FiberRequest::Ping { request_id }),
        "ack" => {
            let (topic, kind) = subscription_topic(envelope.topic).map_err(bad)?;
            if kind == SubjectKind::Pattern {
                return Err(bad("ack names the message's topic, not a pattern"));
            }
            let seq = envelope
                .seq
                .and_then(u64_value)
                .ok_or_else(|| bad("seq is required and must be a non-negative integer"))?;
            Ok(FiberRequest::Ack {
                topic,
                seq,
                request_id,
            })
        }
        _ => Err(FiberError {
            request_id,
            code: FiberCode::BadRequest,
            message: Cow::Owned(format!(
                "unknown message type {:?}: expected subscribe, unsubscribe, publish, ping or ack",
                truncate(&kind, 64)
            )),
        }),
    }
}

/// A topic or pattern to subscribe to (or to ack on), validated.
fn subscription_topic(raw: Option<&RawValue>) -> Result<(Cow<'_, str>, SubjectKind), &'static str> {
    let topic = raw
        .and_then(string_value)
        .ok_or("topic is required and must be a string")?;
    let (_, kind) = topic::parse_subscription(topic.as_bytes()).map_err(TopicError::reason)?;
    Ok((topic, kind))
}

fn truncate(text: &str, bytes_max: usize) -> &str {
    let mut end = text.len().min(bytes_max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// The subscribe extras (and `last_n`) as broker options, and whether events carry `seq`.
fn subscribe_extras(
    envelope: &ws_json::Envelope<'_>,
) -> Result<(SubscribeOptions, bool), &'static str> {
    let number = |raw: Option<&RawValue>, error| match raw {
        None => Ok(None),
        Some(raw) if is_null(raw) => Ok(None),
        Some(raw) => u64_value(raw).map(Some).ok_or(error),
    };
    let flag = |raw: Option<&RawValue>, error| match raw {
        None => Ok(false),
        Some(raw) if is_null(raw) => Ok(false),
        Some(raw) => bool_value(raw).ok_or(error),
    };
    let name = |raw: Option<&RawValue>, error| -> Result<Option<String>, &'static str> {
        let Some(name) = optional_string(raw).map_err(|WrongType| error)? else {
            return Ok(None);
        };
        let valid = !name.is_empty()
            && name.len() <= CONSUMER_NAME_BYTES_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        valid.then(|| Some(name.into_owned())).ok_or(error)
    };
    const NAME_RULE: &str = "consumer and group names are 1 to 64 characters of A-Z a-z 0-9 _ -";
    let last_n = number(envelope.last_n, "last_n must be a non-negative integer")?;
    let from_seq = number(envelope.from_seq, "from_seq must be a non-negative integer")?;
    let acks = flag(envelope.ack, "ack must be true or false")?;
    let seq = flag(envelope.seq, "seq must be true or false")?;
    let consumer = name(envelope.consumer, NAME_RULE)?;
    let group = name(envelope.group, NAME_RULE)?;
    let start = match (last_n, from_seq) {
        (Some(_), Some(_)) => return Err("last_n and from_seq exclude each other"),
        (Some(0), None) | (None, None) => Start::New,
        (Some(n), None) => Start::LastN(n),
        (None, Some(seq)) => Start::FromSeq(seq),
    };
    let sharing = match (consumer, group) {
        (Some(_), Some(_)) => return Err("consumer and group exclude each other"),
        (Some(name), None) => Sharing::Consumer(name),
        (None, Some(name)) => Sharing::Group(name),
        (None, None) => Sharing::None,
    };
    if acks && sharing == Sharing::None {
        return Err("ack needs a consumer or a group, so the broker can remember what is unacked");
    }
    let options = SubscribeOptions {
        start,
        sharing,
        acks: acks.then(AckSettings::default),
    };
    Ok((options, seq || acks))
}

/// The error for a binary frame, which this JSON dialect does not use.
pub fn binary_frame_error() -> FiberError<'static> {
    FiberError {
        request_id: None,
        code: FiberCode::BadRequest,
        message: Cow::Borrowed("binary frames are not part of this protocol; send JSON text"),
    }
}

fn put_request_id(object: &mut JsonObject<'_>, request_id: Option<&str>) {
    if let Some(request_id) = request_id {
        object.string("request_id", request_id);
    }
}

/// `{"type":"ack","request_id","topic","status":"ok","timestamp"}`.
pub fn encode_ack(request_id: Option<&str>, topic: &str, now_ns: u64, out: &mut Vec<u8>) {
    let mut object = JsonObject::begin(out);
    object.string("type", "ack");
    put_request_id(&mut object, request_id);
    object
        .string("topic", topic)
        .string("status", "ok")
        .display("timestamp", format_rfc3339_utc(now_ns))
        .end();
}

/// What an event says about its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FiberEvent<'a> {
    pub topic: &'a str,
    pub id: MessageId<'a>,
    pub payload: &'a [u8],
    /// The message's `content-type` header, which decides how the payload is embedded.
    pub content_type: Option<&'a [u8]>,
    /// When the message was published.
    pub timestamp_ns: u64,
    /// `Some` for subscriptions that asked for sequence numbers.
    pub seq: Option<u64>,
}

/// `{"type":"event","topic","message":{"id","payload"},"timestamp"}` (+ `"seq"`). The same
/// bytes serve every subscriber of this dialect that asked for the same `seq` setting.
pub fn encode_event(event: &FiberEvent<'_>, out: &mut Vec<u8>) {
    let mut object = JsonObject::begin(out);
    object
        .string("type", "event")
        .string("topic", event.topic)
        .with("message", |out| {
            JsonObject::begin(out)
                .display("id", event.id)
                .payload("payload", event.payload, event.content_type)
                .end();
        })
        .display("timestamp", format_rfc3339_utc(event.timestamp_ns));
    if let Some(seq) = event.seq {
        object.u64("seq", seq);
    }
    object.end();
}

/// `{"type":"error","request_id","error":{"code","message"},"timestamp"}`; a `RATE_LIMITED`
/// error with `retry_after_ms` also carries `"retry_after_ms"` in `error`.
pub fn encode_error(
    request_id: Option<&str>,
    code: FiberCode,
    message: &str,
    retry_after_ms: Option<u64>,
    now_ns: u64,
    out: &mut Vec<u8>,
) {
    let mut object = JsonObject::begin(out);
    object.string("type", "error");
    put_request_id(&mut object, request_id);
    object
        .with("error", |out| {
            let mut error = JsonObject::begin(out);
            error
                .string("code", code.as_str())
                .string("message", message);
            if let Some(retry_after_ms) = retry_after_ms {
                error.u64("retry_after_ms", retry_after_ms);
            }
            error.end();
        })
        .display("timestamp", format_rfc3339_utc(now_ns))
        .end();
}

/// [`encode_error`] for a refused client message.
pub fn encode_parse_error(error: &FiberError<'_>, now_ns: u64, out: &mut Vec<u8>) {
    encode_error(
        error.request_id.as_deref(),
        error.code,
        &error.message,
        None,
        now_ns,
        out,
    );
}

/// `{"type":"pong","request_id","timestamp"}`.
pub fn encode_pong(request_id: Option<&str>, now_ns: u64, out: &mut Vec<u8>) {
    let mut object = JsonObject::begin(out);
    object.string("type", "pong");
    put_request_id(&mut object, request_id);
    object
        .display("timestamp", format_rfc3339_utc(now_ns))
        .end();
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// 2026-12-04T21:00:00.250Z.
    const NOW_NS: u64 = 1_796_418_000_250_000_000;
    const NOW: &str = "2026-12-04T21:00:00.250Z";

    fn written(write: impl FnOnce(&mut Vec<u8>)) -> Value {
        let mut out = Vec::new();
        write(&mut out);
        serde_json::from_slice(&out).expect("server messages are JSON")
    }

    fn text_of(write: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        write(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn bad(text: &str) -> (Option<String>, String) {
        match parse_client_message(text) {
            Err(error) => {
                assert_eq!(error.code, FiberCode::BadRequest, "{text}");
                (
                    error.request_id.map(Cow::into_owned),
                    error.message.into_owned(),
                )
            }
            Ok(request) => panic!("{text} parsed as {request:?}"),
        }
    }

    fn subscribe(text: &str) -> FiberSubscribe<'_> {
        match parse_client_message(text) {
            Ok(FiberRequest::Subscribe(subscribe)) => subscribe,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn subscribe_with_every_field() {
        let s = subscribe(
            r#"{"type":"subscribe","topic":"orders.*","client_id":"c1","last_n":5,"request_id":"r1"}"#,
        );
        assert_eq!(s.topic, "orders.*");
        assert_eq!(s.kind, SubjectKind::Pattern);
        assert_eq!(s.client_id.as_deref(), Some("c1"));
        assert_eq!(s.request_id.as_deref(), Some("r1"));
        assert_eq!(s.options.start, Start::LastN(5));
        assert!(!s.seq);

        let minimal = subscribe(r#"{"type":"subscribe","topic":"a"}"#);
        assert_eq!(minimal.options, SubscribeOptions::default());
        assert_eq!((minimal.client_id, minimal.request_id), (None, None));
        assert_eq!(
            subscribe(r#"{"type":"subscribe","topic":"a","last_n":0,"client_id":null}"#).options,
            SubscribeOptions::default()
        );
    }

    #[test]
    fn subscribe_extras_become_broker_options() {
        let s = subscribe(r#"{"type":"subscribe","topic":"a","consumer":"c-1","ack":true}"#);
        assert_eq!(s.options.sharing, Sharing::Consumer("c-1".to_owned()));
        assert_eq!(s.options.acks, Some(AckSettings::default()));
        assert!(s.seq, "acked events carry seq");
        let s = subscribe(r#"{"type":"subscribe","topic":"a.>","group":"g","from_seq":7}"#);
        assert_eq!(s.options.sharing, Sharing::Group("g".to_owned()));
        assert_eq!(s.options.start, Start::FromSeq(7));
        assert_eq!(s.options.acks, None);
        assert!(!s.seq);
        let s = subscribe(r#"{"type":"subscribe","topic":"a","seq":true,"ack":false}"#);
        assert!(s.seq);
        assert_eq!(s.options.acks, None);
    }

    #[test]
    fn other_client_messages() {
        assert_eq!(
            parse_client_message(
                r#"{"type":"unsubscribe","topic":"a","client_id":"c","request_id":"r"}"#
            ),
            Ok(FiberRequest::Unsubscribe {
                topic: Cow::Borrowed("a"),
                kind: SubjectKind::Exact,
                client_id: Some(Cow::Borrowed("c")),
                request_id: Some(Cow::Borrowed("r")),
            })
        );
        let publish = parse_client_message(
            r#"{"type":"publish","topic":"a.b","message":{"id":"m1","payload":{"x": [1, "y"]}},"request_id":"r2"}"#,
        )
        .unwrap();
        let FiberRequest::Publish {
            topic,
            message_id,
            payload,
            request_id,
        } = publish
        else {
            panic!("{publish:?}");
        };
        assert_eq!(
            (&*topic, message_id.as_deref(), request_id.as_deref()),
            ("a.b", Some("m1"), Some("r2"))
        );
        assert_eq!(payload.get(), r#"{"x": [1, "y"]}"#);
        for (message, id, payload) in [
            (r#"{"payload":null}"#, None, "null"),
            (r#"{"id":"","payload":"s"}"#, None, "\"s\""),
            (r#"{"id":null,"payload":3}"#, None, "3"),
            (r#"{"id":"\u0041","payload":[]}"#, Some("A"), "[]"),
        ] {
            let text = format!(r#"{{"type":"publish","topic":"a","message":{message}}}"#);
            match parse_client_message(&text) {
                Ok(FiberRequest::Publish {
                    message_id,
                    payload: raw,
                    ..
                }) => {
                    assert_eq!(message_id.as_deref(), id, "{text}");
                    assert_eq!(raw.get(), payload, "{text}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        assert_eq!(
            parse_client_message(r#"{"type":"ping","request_id":"p"}"#),
            Ok(FiberRequest::Ping {
                request_id: Some(Cow::Borrowed("p"))
            })
        );
        assert_eq!(
            parse_client_message(r#"{"type":"ping"}"#),
            Ok(FiberRequest::Ping { request_id: None })
        );
        assert_eq!(
            parse_client_message(r#"{"type":"ack","topic":"a","seq":42}"#),
            Ok(FiberRequest::Ack {
                topic: Cow::Borrowed("a"),
                seq: 42,
                request_id: None
            })
        );
    }

    #[test]
    fn every_malformed_message_is_a_bad_request() {
        let r = || Some("r".to_owned());
        let cases: &[(&str, Option<String>, &str)] = &[
            ("", None, "invalid JSON"),
            ("{", None, "invalid JSON"),
            ("[]", None, "must be a JSON object"),
            ("42", None, "must be a JSON object"),
            (r#"{"type":"ping","type":"ping"}"#, None, "twice"),
            (
                r#"{"type":"ping","request_id":7}"#,
                None,
                "request_id must be a string",
            ),
            (r#"{"request_id":"r"}"#, r(), "type is required"),
            (
                r#"{"type":5,"request_id":"r"}"#,
                r(),
                "type must be a string",
            ),
            (
                r#"{"type":"jump","request_id":"r"}"#,
                r(),
                "unknown message type \"jump\"",
            ),
            (
                r#"{"type":"Subscribe","request_id":"r","topic":"a"}"#,
                r(),
                "unknown message type",
            ),
            (
                r#"{"type":"subscribe","request_id":"r"}"#,
                r(),
                "topic is required",
            ),
            (
                r#"{"type":"subscribe","request_id":"r","topic":1}"#,
                r(),
                "topic is required",
            ),
            (
                r#"{"type":"subscribe","request_id":"r","topic":"a..b"}"#,
                r(),
                "empty token",
            ),
            (
                r#"{"type":"subscribe","request_id":"r","topic":"a","client_id":1}"#,
                r(),
                "client_id",
            ),
            (
                &format!(
                    r#"{{"type":"subscribe","request_id":"r","topic":"a","client_id":"{}"}}"#,
                    "c".repeat(CLIENT_NAME_BYTES_MAX + 1)
                ),
                r(),
                "client_id is 256 bytes; at most 255",
            ),
            (
                &format!(
                    r#"{{"type":"unsubscribe","request_id":"r","topic":"a","client_id":"{}"}}"#,
                    "c".repeat(1_048_490)
                ),
                r(),
                "client_id is 1048490 bytes; at most 255",
            ),
            (
                r#"{"type":"subscribe","request_id":"r","topic":"a","last_n":-1}"#,
                r(),
                "last_n",
            ),
            (
                r#"{"type":"subscribe","request_id":"r","topic":"a","last_n":"5"}"#,
                r(),
                "last_n",
            ),
            (
                r#"{"type":"subscribe","request_id":"r","topic":"a","last_n":1.5}"#,
                r(),
                "last_n",
            ),
            (
                r#"{"type":"subscribe","request_id":"r","topic":"a","from_seq":-2}"#,
                r(),
                "from_seq",
            ),
            (
                r#"{"type":"subscribe","request_id":"r","topic":"a","last_n":1,"from_seq":2}"#,
                r(),
                "exclude",
            ),
            (
                r#"{"type":"subscribe","request_id":"r","topic":"a","ack":"yes","consumer":"c"}"#,
                r(),
                "ack must be",
            ),
            (
                r#"{"type":"subscribe","request_id":"r","topic":"a","seq":1}"#,
                r(),
                "seq must be",
            ),
            (
                r#"{"type":"subscribe","request_id":"r","topic":"a","ack":true}"#,
                r(),
                "ack needs",
            ),
            (
                r#"{"type":"subscribe","request_id":"r","topic":"a","consumer":"c","group":"g"}"#,
                r(),
                "exclude",
            ),
            (
                r#"{"type":"subscribe","request_id":"r","topic":"a","consumer":""}"#,
                r(),
                "names are",
            ),
            (
                r#"{"type":"subscribe","request_id":"r","topic":"a","group":"a b"}"#,
                r(),
                "names are",
            ),
            (
                r#"{"type":"subscribe","request_id":"r","topic":"a","consumer":5}"#,
                r(),
                "names are",
            ),
            (
                r#"{"type":"unsubscribe","request_id":"r"}"#,
                r(),
                "topic is required",
            ),
            (
                r#"{"type":"unsubscribe","request_id":"r","topic":"a b"}"#,
                r(),
                "topic tokens",
            ),
            (
                r#"{"type":"publish","request_id":"r","message":{"payload":1}}"#,
                r(),
                "topic is required",
            ),
            (
                r#"{"type":"publish","request_id":"r","topic":"a.*","message":{"payload":1}}"#,
                r(),
                "wildcards",
            ),
            (
                r#"{"type":"publish","request_id":"r","topic":"$sys.a","message":{"payload":1}}"#,
                r(),
                "reserved",
            ),
            (
                r#"{"type":"publish","request_id":"r","topic":"a"}"#,
                r(),
                "message is required",
            ),
            (
                r#"{"type":"publish","request_id":"r","topic":"a","message":null}"#,
                r(),
                "message is required",
            ),
            (
                r#"{"type":"publish","request_id":"r","topic":"a","message":"x"}"#,
                r(),
                "message is required",
            ),
            (
                r#"{"type":"publish","request_id":"r","topic":"a","message":{}}"#,
                r(),
                "payload is required",
            ),
            (
                r#"{"type":"publish","request_id":"r","topic":"a","message":{"id":1,"payload":1}}"#,
                r(),
                "message.id",
            ),
            (
                r#"{"type":"publish","request_id":"r","topic":"a","message":{"payload":1,"payload":2}}"#,
                r(),
                "twice",
            ),
            (
                r#"{"type":"ack","request_id":"r","topic":"a"}"#,
                r(),
                "seq is required",
            ),
            (
                r#"{"type":"ack","request_id":"r","topic":"a","seq":-1}"#,
                r(),
                "seq is required",
            ),
            (
                r#"{"type":"ack","request_id":"r","seq":1}"#,
                r(),
                "topic is required",
            ),
            (
                r#"{"type":"ack","request_id":"r","topic":"a.*","seq":1}"#,
                r(),
                "not a pattern",
            ),
        ];
        for (text, request_id, message) in cases {
            let (got_id, got_message) = bad(text);
            assert_eq!(&got_id, request_id, "{text}");
            assert!(
                got_message.contains(message),
                "{text}: {got_message:?} lacks {message:?}"
            );
        }
        assert_eq!(binary_frame_error().code, FiberCode::BadRequest);
    }

    #[test]
    fn server_messages_have_the_documented_shapes() {
        assert_eq!(
            text_of(|out| encode_ack(Some("r1"), "a.b", NOW_NS, out)),
            format!(
                r#"{{"type":"ack","request_id":"r1","topic":"a.b","status":"ok","timestamp":"{NOW}"}}"#
            )
        );
        assert_eq!(
            written(|out| encode_ack(None, "a", NOW_NS, out)),
            json!({"type": "ack", "topic": "a", "status": "ok", "timestamp": NOW})
        );
        let event = FiberEvent {
            topic: "a.b",
            id: MessageId::Publisher("m1"),
            payload: br#"{"x":1}"#,
            content_type: Some(b"application/json"),
            timestamp_ns: NOW_NS,
            seq: None,
        };
        assert_eq!(
            text_of(|out| encode_event(&event, out)),
            format!(
                r#"{{"type":"event","topic":"a.b","message":{{"id":"m1","payload":{{"x":1}}}},"timestamp":"{NOW}"}}"#
            )
        );
        let derived = FiberEvent {
            id: MessageId::pick(None, 0xab, 9),
            payload: b"plain",
            content_type: None,
            seq: Some(9),
            ..event
        };
        assert_eq!(
            written(|out| encode_event(&derived, out)),
            json!({"type": "event", "topic": "a.b",
                   "message": {"id": "00000000000000ab-9", "payload": "plain"},
                   "timestamp": NOW, "seq": 9})
        );
        let binary = FiberEvent {
            payload: &[0xff],
            ..derived
        };
        assert_eq!(
            written(|out| encode_event(&binary, out))["message"]["payload"],
            json!({"$base64": "/w=="})
        );
        assert_eq!(
            text_of(|out| encode_pong(Some("p"), NOW_NS, out)),
            format!(r#"{{"type":"pong","request_id":"p","timestamp":"{NOW}"}}"#)
        );
        assert_eq!(
            written(|out| encode_pong(None, NOW_NS, out)),
            json!({"type": "pong", "timestamp": NOW})
        );
    }

    #[test]
    fn every_error_code_encodes() {
        for code in FiberCode::ALL {
            let retry = (code == FiberCode::RateLimited).then_some(1500);
            let mut expected_error = json!({"code": code.as_str(), "message": "why \"so\""});
            if let Some(ms) = retry {
                expected_error["retry_after_ms"] = json!(ms);
            }
            assert_eq!(
                written(|out| encode_error(Some("r"), code, "why \"so\"", retry, NOW_NS, out)),
                json!({"type": "error", "request_id": "r", "error": expected_error, "timestamp": NOW})
            );
        }
        assert_eq!(
            text_of(|out| encode_error(
                None,
                FiberCode::SlowConsumer,
                "too slow",
                None,
                NOW_NS,
                out
            )),
            format!(
                r#"{{"type":"error","error":{{"code":"SLOW_CONSUMER","message":"too slow"}},"timestamp":"{NOW}"}}"#
            )
        );
        let error = parse_client_message(r#"{"type":"nope","request_id":"r9"}"#).unwrap_err();
        let sent = written(|out| encode_parse_error(&error, NOW_NS, out));
        assert_eq!(sent["request_id"], "r9");
        assert_eq!(sent["error"]["code"], "BAD_REQUEST");
        let mut names: Vec<_> = FiberCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FiberCode::ALL.len());
    }

    #[test]
    fn broker_codes_map_onto_the_dialect() {
        assert_eq!(
            FiberCode::from_error_code(ErrorCode::BadTopic),
            FiberCode::BadRequest
        );
        assert_eq!(
            FiberCode::from_error_code(ErrorCode::TopicNotFound),
            FiberCode::TopicNotFound
        );
        assert_eq!(
            FiberCode::from_error_code(ErrorCode::SlowConsumer),
            FiberCode::SlowConsumer
        );
        assert_eq!(
            FiberCode::from_error_code(ErrorCode::RateLimited),
            FiberCode::RateLimited
        );
        assert_eq!(
            FiberCode::from_error_code(ErrorCode::MessageTooLarge),
            FiberCode::PayloadTooLarge
        );
        assert_eq!(
            FiberCode::from_error_code(ErrorCode::Internal),
            FiberCode::Internal
        );
        for code in ErrorCode::ALL {
            let _ = FiberCode::from_error_code(code);
        }
    }

    /// The lifetime of a `/v1/ws` session in bytes, as a connection will drive these codecs:
    /// upgrade request (with the first frame already behind it), 101, a publish, its ack, the
    /// event, a ping frame, a close.
    #[test]
    fn a_whole_session_in_bytes() {
        use crate::protocol::{http, payload, websocket};
        let mut read =
            b"GET /v1/ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                .to_vec();
        let publish =
            br#"{"type":"publish","topic":"a","message":{"payload":{"n": 1}},"request_id":"r"}"#;
        let mask = [1, 2, 3, 4];
        websocket::encode_masked_frame(true, websocket::Opcode::Text, mask, publish, &mut read);
        websocket::encode_masked_frame(true, websocket::Opcode::Ping, mask, b"hb", &mut read);
        websocket::encode_masked_frame(
            true,
            websocket::Opcode::Close,
            mask,
            &[0x03, 0xe8],
            &mut read,
        );

        let mut write = Vec::new();
        let request = http::decode_request(&read, &http::HttpLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            http::route(request.head.method, request.head.path),
            Ok(http::Route::FiberWebSocket)
        );
        let key = http::validate_websocket_upgrade(&request.head).unwrap();
        http::encode_switching_protocols(key, &mut write);
        let consumed = request.len;
        read.drain(..consumed);

        let mut decoder = websocket::Decoder::server(1 << 20);
        let mut stored = Vec::new();
        let mut scratch = Vec::new();
        let mut closed = false;
        while !closed {
            let Some((event, consumed)) = decoder.decode(&mut read).unwrap() else {
                panic!("the session ends with a close");
            };
            match event {
                websocket::Event::Text(text) => match parse_client_message(text).unwrap() {
                    FiberRequest::Publish {
                        topic,
                        payload: raw,
                        request_id,
                        ..
                    } => {
                        payload::store_json(raw.0, &mut stored);
                        scratch.clear();
                        encode_ack(request_id.as_deref(), &topic, NOW_NS, &mut scratch);
                        websocket::encode_text_frame(&scratch, &mut write);
                        // The broker would fan this out; encoded once, framed once.
                        scratch.clear();
                        let event = FiberEvent {
                            topic: &topic,
                            id: MessageId::pick(None, 7, 1),
                            payload: &stored,
                            content_type: Some(payload::CONTENT_TYPE_JSON.as_bytes()),
                            timestamp_ns: NOW_NS,
                            seq: None,
                        };
                        encode_event(&event, &mut scratch);
                        websocket::encode_text_frame(&scratch, &mut write);
                    }
                    other => panic!("{other:?}"),
                },
                websocket::Event::Ping(bytes) => websocket::encode_pong_frame(bytes, &mut write),
                websocket::Event::Close(close) => {
                    websocket::encode_close_reply(close, &mut write);
                    closed = true;
                }
                other => panic!("{other:?}"),
            }
            read.drain(..consumed);
        }
        assert_eq!(stored, br#"{"n":1}"#);

        // What the client reads back.
        let head_end = write.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(write.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
        let mut frames = write.split_off(head_end);
        let mut client = websocket::Decoder::client(1 << 20);
        let mut got = Vec::new();
        while let Some((event, consumed)) = client.decode(&mut frames).unwrap() {
            got.push(format!("{event:?}"));
            frames.drain(..consumed);
        }
        assert_eq!(
            got,
            [
                format!(
                    r#"Text("{{\"type\":\"ack\",\"request_id\":\"r\",\"topic\":\"a\",\"status\":\"ok\",\"timestamp\":\"{NOW}\"}}")"#
                ),
                format!(
                    r#"Text("{{\"type\":\"event\",\"topic\":\"a\",\"message\":{{\"id\":\"0000000000000007-1\",\"payload\":{{\"n\":1}}}},\"timestamp\":\"{NOW}\"}}")"#
                ),
                r#"Pong([104, 98])"#.to_owned(),
                r#"Close(Some(CloseFrame { code: 1000, reason: "" }))"#.to_owned(),
            ]
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,80}") {
            let _ = parse_client_message(&text);
        }

        #[test]
        fn near_valid_messages_never_panic(
            kind in prop_oneof![Just("subscribe"), Just("unsubscribe"), Just("publish"), Just("ping"), Just("ack"), Just("x")],
            fields in proptest::collection::vec(
                (
                    prop_oneof![Just("topic"), Just("last_n"), Just("request_id"), Just("message"),
                                Just("consumer"), Just("group"), Just("ack"), Just("from_seq"), Just("seq"), Just("client_id")],
                    prop_oneof![Just("\"a.b\"".to_owned()), Just("1".to_owned()), Just("-1".to_owned()), Just("null".to_owned()),
                                Just("true".to_owned()), Just("{\"payload\":[1]}".to_owned()), Just("{\"id\":2}".to_owned()),
                                "\"[a-z*>$. ]{0,6}\""],
                ),
                0..6,
            ),
        ) {
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let text = format!("{{\"type\":\"{kind}\",{}}}", body.join(","));
            let text = text.replace(",}", "}");
            if let Err(error) = parse_client_message(&text) {
                let sent = written(|out| encode_parse_error(&error, NOW_NS, out));
                prop_assert_eq!(&sent["type"], "error");
            }
        }

        #[test]
        fn publishes_round_trip(
            topic in "[a-z]{1,5}(\\.[a-z]{1,5}){0,2}",
            id in proptest::option::of("[ -~]{0,10}"),
            request_id in proptest::option::of("\\PC{0,10}"),
            payload in prop_oneof![Just(json!(null)), Just(json!({"k": [1, 2.5, "s"]})), "\\PC{0,10}".prop_map(Value::from)],
        ) {
            let mut message = json!({"payload": payload});
            if let Some(id) = &id {
                message["id"] = json!(id);
            }
            let mut request = json!({"type": "publish", "topic": topic, "message": message});
            if let Some(request_id) = &request_id {
                request["request_id"] = json!(request_id);
            }
            let text = request.to_string();
            let parsed = parse_client_message(&text).unwrap();
            let FiberRequest::Publish { topic: got_topic, message_id, payload: raw, request_id: got_request_id } = parsed else {
                panic!("not a publish");
            };
            prop_assert_eq!(&*got_topic, topic.as_str());
            prop_assert_eq!(message_id.as_deref(), id.as_deref().filter(|id| !id.is_empty()));
            prop_assert_eq!(got_request_id.as_deref(), request_id.as_deref());
            // Stored, then delivered to a subscriber: the same JSON value.
            let mut stored = Vec::new();
            crate::protocol::payload::store_json(raw.0, &mut stored);
            let event = FiberEvent {
                topic: &got_topic,
                id: MessageId::pick(message_id.as_deref(), 1, 1),
                payload: &stored,
                content_type: Some(b"application/json"),
                timestamp_ns: NOW_NS,
                seq: None,
            };
            let sent = written(|out| encode_event(&event, out));
            prop_assert_eq!(&sent["message"]["payload"], &payload);
        }
    }
}
