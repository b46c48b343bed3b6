//! The FastAPI WebSocket dialect served on `GET /ws`, exactly as the Python service spoke it.
//! Pure: text in, typed requests out; typed answers in, JSON text out (frame it with
//! [`super::websocket::encode_text_frame`]).
//!
//! # Client → server
//!
//! | `type`        | fields                  |
//! |---------------|-------------------------|
//! | `subscribe`   | `topic`, `last_n`?      |
//! | `unsubscribe` | `topic`                 |
//! | `publish`     | `topic`, `data`         |
//! | `ping`        |                         |
//!
//! `data` is any JSON value (`null` included), stored as its compact text with
//! `content-type: application/json`. `last_n` (default 0) is capped at the broker's
//! `last_n_max` ([`LAST_N_MAX_DEFAULT`], 1000, as the service did), not refused above it.
//!
//! # Server → client
//!
//! - on connect: `{"type":"info","message":"Connected with client_id: <id>"}` ([`encode_info`]);
//! - `{"type":"ack","request_type","topic","message"}` for subscribe, unsubscribe and publish
//!   ([`encode_ack`]);
//! - `{"type":"event","topic","data","message_id"}` ([`encode_event`]);
//! - `{"type":"error","code","message","details"}` ([`encode_error`]), `details` an object or
//!   `null`;
//! - `{"type":"pong"}` ([`encode_pong`]).
//!
//! # Errors
//!
//! | code                   | when                                                     | `details` |
//! |------------------------|----------------------------------------------------------|-----------|
//! | `INVALID_JSON`         | not JSON (or a binary frame)                             | `{"error": parser message}` |
//! | `INVALID_MESSAGE`      | JSON, but not an object, no string `type`, a repeated key | `null` |
//! | `UNKNOWN_MESSAGE_TYPE` | `type` is not one of the four                            | `{"type": ...}` |
//! | `VALIDATION_ERROR`     | a field missing, mistyped or breaking the topic rules    | `{"field": ...}` |
//! | `TOPIC_NOT_FOUND`      | (broker) the topic does not exist                        | `{"topic": ...}` |
//! | `NOT_SUBSCRIBED`       | (broker) unsubscribe from a topic not subscribed to      | `{"topic": ...}` |
//! | `RATE_LIMITED`         | (broker) over the publish rate                           | `{"retry_after_seconds": n}` |
//! | `INTERNAL`             | (broker) anything else                                   | `null` |
//!
//! A refused message gets its error and the connection stays open.

use std::borrow::Cow;

use super::topic::{self, SubjectKind, TopicError};
use super::ws_json::{
    parse_envelope, string_value, u64_value, write_seconds, EnvelopeError, JsonObject, JsonValue,
    MessageId,
};
use crate::error::ErrorCode;

/// The service's cap on `last_n`; the broker's flag defaults to it.
pub const LAST_N_MAX_DEFAULT: u64 = 1000;

/// The dialect's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastApiCode {
    InvalidJson,
    InvalidMessage,
    UnknownMessageType,
    ValidationError,
    TopicNotFound,
    NotSubscribed,
    RateLimited,
    Internal,
}

impl FastApiCode {
    pub const ALL: [FastApiCode; 8] = [
        FastApiCode::InvalidJson,
        FastApiCode::InvalidMessage,
        FastApiCode::UnknownMessageType,
        FastApiCode::ValidationError,
        FastApiCode::TopicNotFound,
        FastApiCode::NotSubscribed,
        FastApiCode::RateLimited,
        FastApiCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FastApiCode::InvalidJson => "INVALID_JSON",
            FastApiCode::InvalidMessage => "INVALID_MESSAGE",
            FastApiCode::UnknownMessageType => "UNKNOWN_MESSAGE_TYPE",
            FastApiCode::ValidationError => "VALIDATION_ERROR",
            FastApiCode::TopicNotFound => "TOPIC_NOT_FOUND",
            FastApiCode::NotSubscribed => "NOT_SUBSCRIBED",
            FastApiCode::RateLimited => "RATE_LIMITED",
            FastApiCode::Internal => "INTERNAL",
        }
    }

    /// The code a broker outcome is reported with in this dialect: a request the broker
    /// refuses as malformed is a `VALIDATION_ERROR`, a broker that cannot serve it `INTERNAL`.
    pub fn from_error_code(code: ErrorCode) -> FastApiCode {
        match code {
            ErrorCode::TopicNotFound => FastApiCode::TopicNotFound,
            ErrorCode::UnknownSubscription => FastApiCode::NotSubscribed,
            ErrorCode::RateLimited => FastApiCode::RateLimited,
            ErrorCode::BadTopic
            | ErrorCode::MessageTooLarge
            | ErrorCode::FrameTooLarge
            | ErrorCode::BadFrame
            | ErrorCode::UnsupportedOption
            | ErrorCode::OptionOutOfRange
            | ErrorCode::DuplicateSubscription
            | ErrorCode::TooManySubscriptions => FastApiCode::ValidationError,
            _ => FastApiCode::Internal,
        }
    }
}

/// The `details` of an error message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ErrorDetails {
    /// `null`.
    None,
    /// `{"error": "<the JSON parser's message>"}`.
    Parser(String),
    /// `{"type": "<the unknown type>"}`.
    MessageType(String),
    /// `{"field": "<the field at fault>"}`.
    Field(&'static str),
    /// `{"topic": "<topic>"}`.
    Topic(String),
    /// `{"retry_after_seconds": <number>}`, from milliseconds, exact to the millisecond.
    RetryAfterMs(u64),
}

impl ErrorDetails {
    fn write(&self, out: &mut Vec<u8>) {
        let object = |out: &mut Vec<u8>, key: &str, value: &str| {
            JsonObject::begin(out).string(key, value).end();
        };
        match self {
            ErrorDetails::None => out.extend_from_slice(b"null"),
            ErrorDetails::Parser(message) => object(out, "error", message),
            ErrorDetails::MessageType(kind) => object(out, "type", kind),
            ErrorDetails::Field(field) => object(out, "field", field),
            ErrorDetails::Topic(topic) => object(out, "topic", topic),
            ErrorDetails::RetryAfterMs(milliseconds) => {
                JsonObject::begin(out)
                    .with("retry_after_seconds", |out| {
                        write_seconds(*milliseconds, out)
                    })
                    .end();
            }
        }
    }
}

/// A client message this dialect refuses: answer with [`encode_parse_error`], keep the
/// connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FastApiError {
    pub code: FastApiCode,
    pub message: Cow<'static, str>,
    pub details: ErrorDetails,
}

/// A client message of this dialect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FastApiRequest<'a> {
    Subscribe {
        topic: Cow<'a, str>,
        kind: SubjectKind,
        /// Already capped at `last_n_max`; 0 means new messages only.
        last_n: u64,
    },
    Unsubscribe {
        topic: Cow<'a, str>,
        kind: SubjectKind,
    },
    Publish {
        topic: Cow<'a, str>,
        /// The JSON value as sent; store it with [`super::payload::store_json`].
        data: JsonValue<'a>,
    },
    Ping,
}

fn validation(field: &'static str, message: &'static str) -> FastApiError {
    FastApiError {
        code: FastApiCode::ValidationError,
        message: Cow::Borrowed(message),
        details: ErrorDetails::Field(field),
    }
}

fn topic_rule(error: TopicError) -> FastApiError {
    validation("topic", error.reason())
}

/// Parses one text message; `last_n_max` is the broker's cap on `last_n`.
pub fn parse_client_message(
    text: &str,
    last_n_max: u64,
) -> Result<FastApiRequest<'_>, FastApiError> {
    let envelope = parse_envelope(text).map_err(|error| match error {
        EnvelopeError::InvalidJson(detail) => FastApiError {
            code: FastApiCode::InvalidJson,
            message: Cow::Borrowed("message is not valid JSON"),
            details: ErrorDetails::Parser(detail),
        },
        EnvelopeError::NotAnObject(reason) => FastApiError {
            code: FastApiCode::InvalidMessage,
            message: Cow::Borrowed(reason),
            details: ErrorDetails::None,
        },
    })?;
    let Some(kind) = envelope.kind.and_then(string_value) else {
        return Err(FastApiError {
            code: FastApiCode::InvalidMessage,
            message: Cow::Borrowed("message needs a string \"type\""),
            details: ErrorDetails::None,
        });
    };
    let topic = || {
        envelope
            .topic
            .and_then(string_value)
            .ok_or_else(|| validation("topic", "topic is required and must be a string"))
    };
    match &*kind {
        "subscribe" | "unsubscribe" => {
            let topic = topic()?;
            let (_, subject) = topic::parse_subscription(topic.as_bytes()).map_err(topic_rule)?;
            if kind == "unsubscribe" {
                return Ok(FastApiRequest::Unsubscribe {
                    topic,
                    kind: subject,
                });
            }
            let last_n = match envelope.last_n {
                None => 0,
                Some(raw) if raw.get() == "null" => 0,
                Some(raw) => u64_value(raw)
                    .ok_or_else(|| validation("last_n", "last_n must be a non-negative integer"))?,
            };
            Ok(FastApiRequest::Subscribe {
                topic,
                kind: subject,
                last_n: last_n.min(last_n_max),
            })
        }
        "publish" => {
            let topic = topic()?;
            topic::parse_publish_topic(topic.as_bytes()).map_err(topic_rule)?;
            let data = envelope
                .data
                .ok_or_else(|| validation("data", "data is required"))?;
            Ok(FastApiRequest::Publish {
                topic,
                data: JsonValue(data),
            })
        }
        "ping" => Ok(FastApiRequest::Ping),
        _ => Err(FastApiError {
            code: FastApiCode::UnknownMessageType,
            message: Cow::Borrowed(
                "unknown message type: expected subscribe, unsubscribe, publish or ping",
            ),
            details: ErrorDetails::MessageType(truncate(&kind, 64).to_owned()),
        }),
    }
}

fn truncate(text: &str, bytes_max: usize) -> &str {
    let mut end = text.len().min(bytes_max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// The error for a binary frame: this dialect is JSON text.
pub fn binary_frame_error() -> FastApiError {
    FastApiError {
        code: FastApiCode::InvalidJson,
        message: Cow::Borrowed("message is not valid JSON"),
        details: ErrorDetails::Parser("binary frame; send JSON as a text frame".to_owned()),
    }
}

/// `{"type":"info","message":"Connected with client_id: <id>"}`, sent on connect.
pub fn encode_info(client_id: &str, out: &mut Vec<u8>) {
    JsonObject::begin(out)
        .string("type", "info")
        .string("message", &format!("Connected with client_id: {client_id}"))
        .end();
}

/// What an ack answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckFor {
    Subscribe,
    Unsubscribe,
    Publish,
}

impl AckFor {
    pub fn as_str(self) -> &'static str {
        match self {
            AckFor::Subscribe => "subscribe",
            AckFor::Unsubscribe => "unsubscribe",
            AckFor::Publish => "publish",
        }
    }
}

/// `{"type":"ack","request_type","topic","message"}`; the message is a sentence such as
/// `Subscribed to orders`.
pub fn encode_ack(request_type: AckFor, topic: &str, out: &mut Vec<u8>) {
    let message = match request_type {
        AckFor::Subscribe => format!("Subscribed to {topic}"),
        AckFor::Unsubscribe => format!("Unsubscribed from {topic}"),
        AckFor::Publish => format!("Published to {topic}"),
    };
    JsonObject::begin(out)
        .string("type", "ack")
        .string("request_type", request_type.as_str())
        .string("topic", topic)
        .string("message", &message)
        .end();
}

/// `{"type":"event","topic","data","message_id"}`; the same bytes serve every subscriber of
/// this dialect. `content_type` (the message's header) decides how `payload` is embedded.
pub fn encode_event(
    topic: &str,
    payload: &[u8],
    content_type: Option<&[u8]>,
    message_id: MessageId<'_>,
    out: &mut Vec<u8>,
) {
    JsonObject::begin(out)
        .string("type", "event")
        .string("topic", topic)
        .payload("data", payload, content_type)
        .display("message_id", message_id)
        .end();
}

/// `{"type":"error","code","message","details"}`.
pub fn encode_error(code: FastApiCode, message: &str, details: &ErrorDetails, out: &mut Vec<u8>) {
    JsonObject::begin(out)
        .string("type", "error")
        .string("code", code.as_str())
        .string("message", message)
        .with("details", |out| details.write(out))
        .end();
}

/// [`encode_error`] for a refused client message.
pub fn encode_parse_error(error: &FastApiError, out: &mut Vec<u8>) {
    encode_error(error.code, &error.message, &error.details, out);
}

/// `{"type":"pong"}`.
pub fn encode_pong(out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"type":"pong"}"#);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn parse(text: &str) -> Result<FastApiRequest<'_>, FastApiError> {
        parse_client_message(text, LAST_N_MAX_DEFAULT)
    }

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

    #[test]
    fn every_client_message() {
        assert_eq!(
            parse(r#"{"type":"subscribe","topic":"orders","last_n":10}"#),
            Ok(FastApiRequest::Subscribe {
                topic: Cow::Borrowed("orders"),
                kind: SubjectKind::Exact,
                last_n: 10
            })
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","topic":"orders.*"}"#),
            Ok(FastApiRequest::Subscribe {
                topic: Cow::Borrowed("orders.*"),
                kind: SubjectKind::Pattern,
                last_n: 0
            })
        );
        assert_eq!(
            parse(r#"{"type":"subscribe","topic":"a","last_n":null}"#),
            Ok(FastApiRequest::Subscribe {
                topic: Cow::Borrowed("a"),
                kind: SubjectKind::Exact,
                last_n: 0
            })
        );
        // Capped, not refused.
        assert_eq!(
            parse(r#"{"type":"subscribe","topic":"a","last_n":5000}"#),
            Ok(FastApiRequest::Subscribe {
                topic: Cow::Borrowed("a"),
                kind: SubjectKind::Exact,
                last_n: 1000
            })
        );
        assert_eq!(
            parse_client_message(r#"{"type":"subscribe","topic":"a","last_n":5000}"#, 7),
            Ok(FastApiRequest::Subscribe {
                topic: Cow::Borrowed("a"),
                kind: SubjectKind::Exact,
                last_n: 7
            })
        );
        assert_eq!(
            parse(r#"{"type":"unsubscribe","topic":"a"}"#),
            Ok(FastApiRequest::Unsubscribe {
                topic: Cow::Borrowed("a"),
                kind: SubjectKind::Exact
            })
        );
        let publish = parse(r#"{"type":"publish","topic":"a","data":{"b": [1, null]}}"#).unwrap();
        let FastApiRequest::Publish { topic, data } = publish else {
            panic!("{publish:?}");
        };
        assert_eq!((&*topic, data.get()), ("a", r#"{"b": [1, null]}"#));
        let null_data = parse(r#"{"type":"publish","topic":"a","data":null}"#).unwrap();
        assert!(matches!(null_data, FastApiRequest::Publish { data, .. } if data.get() == "null"));
        assert_eq!(parse(r#"{"type":"ping"}"#), Ok(FastApiRequest::Ping));
        // Unknown keys are ignored, as Pydantic does by default.
        assert_eq!(parse(r#"{"type":"ping","x":1}"#), Ok(FastApiRequest::Ping));
    }

    #[test]
    fn every_parse_error_code() {
        let cases: &[(&str, FastApiCode, Value)] = &[
            ("", FastApiCode::InvalidJson, Value::Null),
            ("{\"type\":", FastApiCode::InvalidJson, Value::Null),
            ("ping", FastApiCode::InvalidJson, Value::Null),
            ("[]", FastApiCode::InvalidMessage, Value::Null),
            ("\"ping\"", FastApiCode::InvalidMessage, Value::Null),
            ("{}", FastApiCode::InvalidMessage, Value::Null),
            (r#"{"type":1}"#, FastApiCode::InvalidMessage, Value::Null),
            (r#"{"type":null}"#, FastApiCode::InvalidMessage, Value::Null),
            (
                r#"{"type":"ping","type":"ping"}"#,
                FastApiCode::InvalidMessage,
                Value::Null,
            ),
            (
                r#"{"type":"jump"}"#,
                FastApiCode::UnknownMessageType,
                json!({"type": "jump"}),
            ),
            (
                r#"{"type":"PING"}"#,
                FastApiCode::UnknownMessageType,
                json!({"type": "PING"}),
            ),
            (
                r#"{"type":"subscribe"}"#,
                FastApiCode::ValidationError,
                json!({"field": "topic"}),
            ),
            (
                r#"{"type":"subscribe","topic":7}"#,
                FastApiCode::ValidationError,
                json!({"field": "topic"}),
            ),
            (
                r#"{"type":"subscribe","topic":"a b"}"#,
                FastApiCode::ValidationError,
                json!({"field": "topic"}),
            ),
            (
                r#"{"type":"subscribe","topic":"a","last_n":-1}"#,
                FastApiCode::ValidationError,
                json!({"field": "last_n"}),
            ),
            (
                r#"{"type":"subscribe","topic":"a","last_n":"3"}"#,
                FastApiCode::ValidationError,
                json!({"field": "last_n"}),
            ),
            (
                r#"{"type":"unsubscribe"}"#,
                FastApiCode::ValidationError,
                json!({"field": "topic"}),
            ),
            (
                r#"{"type":"unsubscribe","topic":""}"#,
                FastApiCode::ValidationError,
                json!({"field": "topic"}),
            ),
            (
                r#"{"type":"publish","data":1}"#,
                FastApiCode::ValidationError,
                json!({"field": "topic"}),
            ),
            (
                r#"{"type":"publish","topic":"a.>","data":1}"#,
                FastApiCode::ValidationError,
                json!({"field": "topic"}),
            ),
            (
                r#"{"type":"publish","topic":"$dlq.a","data":1}"#,
                FastApiCode::ValidationError,
                json!({"field": "topic"}),
            ),
            (
                r#"{"type":"publish","topic":"a"}"#,
                FastApiCode::ValidationError,
                json!({"field": "data"}),
            ),
        ];
        for (text, code, details) in cases {
            let error = parse(text).unwrap_err();
            assert_eq!(error.code, *code, "{text}");
            let sent = written(|out| encode_parse_error(&error, out));
            assert_eq!(sent["type"], "error");
            assert_eq!(sent["code"], code.as_str());
            assert!(!sent["message"].as_str().unwrap().is_empty());
            if *code == FastApiCode::InvalidJson {
                assert!(sent["details"]["error"].is_string(), "{text}: {sent}");
            } else {
                assert_eq!(&sent["details"], details, "{text}");
            }
        }
        assert_eq!(binary_frame_error().code, FastApiCode::InvalidJson);
    }

    #[test]
    fn every_server_message() {
        assert_eq!(
            text_of(|out| encode_info("c-42", out)),
            r#"{"type":"info","message":"Connected with client_id: c-42"}"#
        );
        assert_eq!(
            text_of(|out| encode_ack(AckFor::Subscribe, "a", out)),
            r#"{"type":"ack","request_type":"subscribe","topic":"a","message":"Subscribed to a"}"#
        );
        for request_type in [AckFor::Unsubscribe, AckFor::Publish] {
            let sent = written(|out| encode_ack(request_type, "t", out));
            assert_eq!(sent["request_type"], request_type.as_str());
            assert_eq!(sent["topic"], "t");
        }
        assert_eq!(
            text_of(|out| encode_event(
                "a",
                br#"{"k":1}"#,
                Some(b"application/json"),
                MessageId::Publisher("m"),
                out
            )),
            r#"{"type":"event","topic":"a","data":{"k":1},"message_id":"m"}"#
        );
        assert_eq!(
            written(|out| encode_event("a", b"text", None, MessageId::pick(None, 2, 3), out)),
            json!({"type": "event", "topic": "a", "data": "text", "message_id": "0000000000000002-3"})
        );
        assert_eq!(
            written(|out| encode_event("a", &[0, 0xfe], None, MessageId::pick(None, 2, 3), out))
                ["data"],
            json!({"$base64": "AP4="})
        );
        assert_eq!(text_of(encode_pong), r#"{"type":"pong"}"#);
    }

    #[test]
    fn every_error_code_encodes() {
        for code in FastApiCode::ALL {
            let details = match code {
                FastApiCode::RateLimited => ErrorDetails::RetryAfterMs(1500),
                FastApiCode::TopicNotFound | FastApiCode::NotSubscribed => {
                    ErrorDetails::Topic("a".to_owned())
                }
                _ => ErrorDetails::None,
            };
            let sent = written(|out| encode_error(code, "m", &details, out));
            let expected_details = match code {
                FastApiCode::RateLimited => json!({"retry_after_seconds": 1.5}),
                FastApiCode::TopicNotFound | FastApiCode::NotSubscribed => json!({"topic": "a"}),
                _ => Value::Null,
            };
            assert_eq!(
                sent,
                json!({"type": "error", "code": code.as_str(), "message": "m", "details": expected_details})
            );
        }
        assert_eq!(
            text_of(|out| encode_error(
                FastApiCode::RateLimited,
                "slow down",
                &ErrorDetails::RetryAfterMs(2000),
                out
            )),
            r#"{"type":"error","code":"RATE_LIMITED","message":"slow down","details":{"retry_after_seconds":2}}"#
        );
        let mut names: Vec<_> = FastApiCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FastApiCode::ALL.len());
    }

    #[test]
    fn broker_codes_map_onto_the_dialect() {
        assert_eq!(
            FastApiCode::from_error_code(ErrorCode::TopicNotFound),
            FastApiCode::TopicNotFound
        );
        assert_eq!(
            FastApiCode::from_error_code(ErrorCode::UnknownSubscription),
            FastApiCode::NotSubscribed
        );
        assert_eq!(
            FastApiCode::from_error_code(ErrorCode::RateLimited),
            FastApiCode::RateLimited
        );
        assert_eq!(
            FastApiCode::from_error_code(ErrorCode::BadTopic),
            FastApiCode::ValidationError
        );
        assert_eq!(
            FastApiCode::from_error_code(ErrorCode::MessageTooLarge),
            FastApiCode::ValidationError
        );
        assert_eq!(
            FastApiCode::from_error_code(ErrorCode::Internal),
            FastApiCode::Internal
        );
        assert_eq!(
            FastApiCode::from_error_code(ErrorCode::ShuttingDown),
            FastApiCode::Internal
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,80}", cap in any::<u64>()) {
            if let Err(error) = parse_client_message(&text, cap) {
                let sent = written(|out| encode_parse_error(&error, out));
                prop_assert_eq!(&sent["type"], "error");
            }
        }

        #[test]
        fn publishes_round_trip(
            topic in "[a-z]{1,5}(\\.[a-z]{1,5}){0,2}",
            data in prop_oneof![Just(json!(null)), Just(json!([1, {"z": "y"}])), "\\PC{0,10}".prop_map(Value::from), any::<i64>().prop_map(Value::from)],
            epoch in any::<u64>(),
            seq in any::<u64>(),
        ) {
            let text = json!({"type": "publish", "topic": topic, "data": data}).to_string();
            let FastApiRequest::Publish { topic: got, data: raw } = parse(&text).unwrap() else {
                panic!("not a publish");
            };
            let mut stored = Vec::new();
            crate::protocol::payload::store_json(raw.0, &mut stored);
            let id = MessageId::pick(None, epoch, seq);
            let sent = written(|out| encode_event(&got, &stored, Some(b"application/json"), id, out));
            prop_assert_eq!(&sent["data"], &data);
            prop_assert_eq!(&sent["topic"], &json!(topic));
            let id_text = sent["message_id"].as_str().unwrap().to_owned();
            prop_assert_eq!(
                crate::protocol::payload::parse_derived_message_id(&id_text),
                Some(crate::protocol::payload::DerivedMessageId { epoch, seq })
            );
        }

        #[test]
        fn last_n_is_capped(last_n in any::<u64>(), cap in any::<u64>()) {
            let text = format!(r#"{{"type":"subscribe","topic":"a","last_n":{last_n}}}"#);
            prop_assert_eq!(
                parse_client_message(&text, cap),
                Ok(FastApiRequest::Subscribe { topic: Cow::Borrowed("a"), kind: SubjectKind::Exact, last_n: last_n.min(cap) })
            );
        }
    }
}
