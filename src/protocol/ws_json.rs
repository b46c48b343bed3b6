//! What the two WebSocket JSON dialects ([`super::ws_fiber`] and [`super::ws_fastapi`]) share:
//! reading a client message into typed fields, writing server messages straight into a byte
//! buffer, RFC 3339 timestamps, and message ids.
//!
//! Reading: a client message is parsed once into an [`Envelope`] whose fields are borrowed
//! [`RawValue`]s, so a published payload is never rebuilt (its bytes, key order included,
//! are what gets stored) and a field's type is checked only when the dialect asks for it, which
//! lets each dialect say precisely which field is wrong and with its own error code. The parse
//! tells three failures apart ([`EnvelopeError`]): not JSON, JSON but not an object (or a
//! repeated key), and an object whose fields are then checked one by one.
//!
//! Writing: server messages are written key by key into the caller's buffer ([`JsonObject`])
//! with no intermediate `Value`; the result is one text frame's payload, ready for
//! [`super::websocket::encode_text_frame`]. Keys are written in the order the dialects
//! document them.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::payload::{self, DerivedMessageId};

/// Every field either dialect reads from a client message, each kept as raw JSON. A key
/// that is absent is `None`; a key present with `null` is `Some("null")`, so the dialects can
/// tell "missing" from "null" where that matters.
#[derive(Debug, Default, Deserialize)]
pub struct Envelope<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "present")]
    pub kind: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub topic: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub request_id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub client_id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub last_n: Option<&'a RawValue>,
    /// Go/Fiber publish: `{"id", "payload"}`.
    #[serde(default, borrow, deserialize_with = "present")]
    pub message: Option<&'a RawValue>,
    /// FastAPI publish.
    #[serde(default, borrow, deserialize_with = "present")]
    pub data: Option<&'a RawValue>,
    // The corebus extras of the Go/Fiber dialect.
    #[serde(default, borrow, deserialize_with = "present")]
    pub consumer: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub ack: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub group: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub from_seq: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    pub seq: Option<&'a RawValue>,
}

/// A present key, `null` included (plain `Option` would turn `null` into `None`).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(deserializer).map(Some)
}

/// Why a client message could not be read as an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Not JSON (or not UTF-8); the parser's words.
    InvalidJson(String),
    /// Valid JSON, but not an object, or an object with a key given twice.
    NotAnObject(&'static str),
}

/// Parses a client message into its [`Envelope`].
pub fn parse_envelope(text: &str) -> Result<Envelope<'_>, EnvelopeError> {
    // Checked first because serde would also accept an array as a struct (by position).
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => EnvelopeError::NotAnObject("message must be a JSON object"),
            Err(error) => EnvelopeError::InvalidJson(error.to_string()),
        });
    }
    serde_json::from_str(text).map_err(|error| {
        // A data error (a repeated key) stops the parse early; say "not JSON" if the rest is.
        if error.is_data() && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            EnvelopeError::NotAnObject("message has a key given twice")
        } else {
            EnvelopeError::InvalidJson(error.to_string())
        }
    })
}

/// Whether a raw value is JSON `null`.
pub fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// A JSON string's text, borrowed from the message unless it has escapes.
pub fn string_value(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    match serde_json::from_str::<&str>(text) {
        Ok(borrowed) => Some(Cow::Borrowed(borrowed)),
        Err(_) => serde_json::from_str::<String>(text).ok().map(Cow::Owned),
    }
}

/// A non-negative integer literal (no fraction, no exponent), as both services' typed models
/// read it.
pub fn u64_value(raw: &RawValue) -> Option<u64> {
    serde_json::from_str(raw.get()).ok()
}

pub fn bool_value(raw: &RawValue) -> Option<bool> {
    serde_json::from_str(raw.get()).ok()
}

/// A field holds a value of the wrong JSON type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrongType;

/// An optional string field: absent and `null` are `Ok(None)`, a non-string is an error.
pub fn optional_string(raw: Option<&RawValue>) -> Result<Option<Cow<'_, str>>, WrongType> {
    match raw {
        None => Ok(None),
        Some(raw) if is_null(raw) => Ok(None),
        Some(raw) => string_value(raw).map(Some).ok_or(WrongType),
    }
}

/// A JSON value borrowed from a client message, as sent (compared by its text).
#[derive(Clone, Copy, Debug)]
pub struct JsonValue<'a>(pub &'a RawValue);

impl<'a> JsonValue<'a> {
    /// The value's JSON text, exactly as the client wrote it.
    pub fn get(&self) -> &'a str {
        self.0.get()
    }
}

impl PartialEq for JsonValue<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Eq for JsonValue<'_> {}

/// A message's id on the wire: the publisher's, or one derived from (epoch, seq).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageId<'a> {
    Publisher(&'a str),
    Derived(DerivedMessageId),
}

impl MessageId<'_> {
    /// The publisher's id if it gave a non-empty one, else the derived id.
    pub fn pick(publisher: Option<&str>, epoch: u64, seq: u64) -> MessageId<'_> {
        match publisher {
            Some(id) if !id.is_empty() => MessageId::Publisher(id),
            _ => MessageId::Derived(DerivedMessageId { epoch, seq }),
        }
    }
}

impl fmt::Display for MessageId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessageId::Publisher(id) => f.write_str(id),
            MessageId::Derived(id) => id.fmt(f),
        }
    }
}

/// `unix_ns` as RFC 3339 in UTC with milliseconds: `2026-12-04T21:41:54.123Z`. Every `u64`
/// is a date before the year 2555, well inside what the formatter handles.
pub fn format_rfc3339_utc(unix_ns: u64) -> impl fmt::Display {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(unix_ns))
}

/// Writes a JSON object key by key into a byte buffer. Keys are fixed ASCII names chosen by
/// this crate, so they are written without escaping; values go through the JSON encoder.
pub struct JsonObject<'o> {
    out: &'o mut Vec<u8>,
    empty: bool,
}

impl<'o> JsonObject<'o> {
    pub fn begin(out: &'o mut Vec<u8>) -> JsonObject<'o> {
        out.push(b'{');
        JsonObject { out, empty: true }
    }

    fn key(&mut self, key: &str) {
        debug_assert!(key
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'));
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub fn string(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        payload::write_json_string(value, self.out);
        self
    }

    /// A string value from anything `Display`, escaped like any string.
    pub fn display(&mut self, key: &str, value: impl fmt::Display) -> &mut Self {
        self.key(key);
        // Ids and timestamps are plain ASCII; escape them anyway rather than trust that.
        let text = value.to_string();
        payload::write_json_string(&text, self.out);
        self
    }

    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        let _ = write!(self.out, "{value}");
        self
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    pub fn null(&mut self, key: &str) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(b"null");
        self
    }

    /// A value that is already JSON text (a payload, a nested object written by the caller).
    pub fn raw(&mut self, key: &str, json: &[u8]) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(json);
        self
    }

    /// A value written by `write` (a nested object, a payload in its delivery form).
    pub fn with(&mut self, key: &str, write: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        self.key(key);
        write(self.out);
        self
    }

    /// A payload in its WebSocket delivery form ([`payload::write_payload_json`]).
    pub fn payload(&mut self, key: &str, bytes: &[u8], content_type: Option<&[u8]>) -> &mut Self {
        self.key(key);
        payload::write_payload_json(bytes, content_type, self.out);
        self
    }

    pub fn end(&mut self) {
        self.out.push(b'}');
    }
}

/// Writes `milliseconds` as a JSON number of seconds, exact: `1500` is `1.5`, `2000` is `2`.
pub fn write_seconds(milliseconds: u64, out: &mut Vec<u8>) {
    let (seconds, millis) = (milliseconds / 1000, milliseconds % 1000);
    let _ = match millis {
        0 => write!(out, "{seconds}"),
        m if m % 100 == 0 => write!(out, "{seconds}.{}", m / 100),
        m if m % 10 == 0 => write!(out, "{seconds}.{:02}", m / 10),
        m => write!(out, "{seconds}.{m:03}"),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_tell_not_json_from_not_an_object() {
        assert!(matches!(
            parse_envelope(""),
            Err(EnvelopeError::InvalidJson(_))
        ));
        assert!(matches!(
            parse_envelope("{"),
            Err(EnvelopeError::InvalidJson(_))
        ));
        assert!(matches!(
            parse_envelope("{\"a\":1} x"),
            Err(EnvelopeError::InvalidJson(_))
        ));
        assert!(matches!(
            parse_envelope("nul"),
            Err(EnvelopeError::InvalidJson(_))
        ));
        assert!(matches!(
            parse_envelope("[1]"),
            Err(EnvelopeError::NotAnObject(_))
        ));
        assert!(matches!(
            parse_envelope(" 5"),
            Err(EnvelopeError::NotAnObject(_))
        ));
        assert!(matches!(
            parse_envelope("null"),
            Err(EnvelopeError::NotAnObject(_))
        ));
        assert!(matches!(
            parse_envelope(r#"{"type":"a","type":"b"}"#),
            Err(EnvelopeError::NotAnObject(_))
        ));
        // A repeated key followed by broken JSON is broken JSON.
        assert!(matches!(
            parse_envelope(r#"{"type":"a","type":"b","#),
            Err(EnvelopeError::InvalidJson(_))
        ));
        let envelope = parse_envelope(r#"{"type":"x","topic":null,"other":[1,{}]}"#).unwrap();
        assert_eq!(envelope.kind.map(RawValue::get), Some("\"x\""));
        assert_eq!(envelope.topic.map(RawValue::get), Some("null"));
        assert!(envelope.data.is_none());
    }

    #[test]
    fn field_values() {
        let raw = |text: &str| -> Box<RawValue> { RawValue::from_string(text.to_owned()).unwrap() };
        assert_eq!(string_value(&raw("\"a\"")), Some(Cow::Borrowed("a")));
        assert_eq!(string_value(&raw(r#""a\"b""#)).as_deref(), Some("a\"b"));
        assert_eq!(string_value(&raw("1")), None);
        assert_eq!(u64_value(&raw("7")), Some(7));
        assert_eq!(u64_value(&raw("-1")), None);
        assert_eq!(u64_value(&raw("1.5")), None);
        assert_eq!(u64_value(&raw("\"7\"")), None);
        assert_eq!(u64_value(&raw("18446744073709551616")), None);
        assert_eq!(bool_value(&raw("true")), Some(true));
        assert_eq!(bool_value(&raw("1")), None);
        assert_eq!(optional_string(None), Ok(None));
        assert_eq!(optional_string(Some(&raw("null"))), Ok(None));
        assert_eq!(optional_string(Some(&raw("3"))), Err(WrongType));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(
            format_rfc3339_utc(0).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_utc(1_764_892_914_123_456_789).to_string(),
            "2025-12-05T00:01:54.123Z"
        );
        assert_eq!(
            format_rfc3339_utc(u64::MAX).to_string(),
            "2554-07-21T23:34:33.709Z"
        );
    }

    #[test]
    fn objects_are_written_in_order() {
        let mut out = Vec::new();
        JsonObject::begin(&mut out)
            .string("type", "x\"y")
            .u64("n", 3)
            .bool("b", false)
            .null("z")
            .raw("r", b"[1]")
            .display("id", MessageId::pick(None, 1, 2))
            .payload("p", b"hi", None)
            .with("o", |out| JsonObject::begin(out).u64("k", 1).end())
            .end();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"type":"x\"y","n":3,"b":false,"z":null,"r":[1],"id":"0000000000000001-2","p":"hi","o":{"k":1}}"#
        );
        let mut out = Vec::new();
        JsonObject::begin(&mut out).end();
        assert_eq!(out, b"{}");
        assert_eq!(MessageId::pick(Some("mine"), 1, 2).to_string(), "mine");
        assert_eq!(
            MessageId::pick(Some(""), 1, 2).to_string(),
            "0000000000000001-2"
        );
    }

    #[test]
    fn seconds_are_exact() {
        for (ms, text) in [
            (0, "0"),
            (1000, "1"),
            (1500, "1.5"),
            (1250, "1.25"),
            (1, "0.001"),
            (61_010, "61.01"),
        ] {
            let mut out = Vec::new();
            write_seconds(ms, &mut out);
            assert_eq!(out, text.as_bytes(), "{ms}");
        }
    }
}
