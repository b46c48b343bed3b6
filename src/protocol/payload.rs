//! How payloads cross protocols, and the message id a message gets when its publisher gave none.
//!
//! The bus carries bytes. A WebSocket client publishes a JSON *value* and its subscribers expect
//! a JSON value back, while a native or Redis publisher sends arbitrary bytes. This module is
//! the one place that maps between the two, as pure functions, so every connection kind agrees:
//!
//! - **Publishing JSON** ([`store_json`]): the value is stored as its compact JSON text (the
//!   publisher's tokens and key order kept, only the insignificant whitespace dropped) with the
//!   header `content-type: application/json` ([`CONTENT_TYPE_HEADER`], [`CONTENT_TYPE_JSON`]).
//! - **Delivering to a WebSocket JSON client** ([`write_payload_json`]), in order of preference:
//!   1. a payload whose content type is JSON and which is one valid JSON value: embedded as is;
//!   2. any other valid UTF-8: a JSON string;
//!   3. anything else: `{"$base64":"<standard base64, padded>"}` ([`BASE64_MARKER`]).
//!
//!   A JSON-typed payload that is not valid JSON falls through to 2 or 3 rather than corrupting
//!   the event: the content type is a claim by the publisher, the embedding must be valid.
//! - **Reading a delivered value back** ([`payload_from_delivered`]), for clients and tests:
//!   a JSON string gives its UTF-8 bytes, an object whose only key is `$base64` with a string
//!   value gives the decoded bytes, anything else gives its compact text marked as JSON.
//!
//! The mapping is not injective, by design and as documented for users: a JSON payload that is
//! itself a string (`"hi"`) reads back as the text `hi`, and a JSON payload that happens to be
//! `{"$base64": "..."}` reads back as bytes. Plain bytes always round-trip exactly.
//!
//! Message ids ([`derived_message_id`]): the publisher's own id (header `id`, the Go/Fiber
//! `message.id`) wins; otherwise the id is derived from the topic's epoch and the message's
//! sequence number, so a replayed or redelivered message carries the same id as the first time.

use std::fmt;

use base64::Engine as _;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

/// Header name holding a payload's media type (message headers are compared in lower case).
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// The media type given to payloads published as JSON.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Header name holding a publisher-chosen message id.
pub const ID_HEADER: &str = "id";
/// The single key of the object that carries a binary payload to a JSON client.
pub const BASE64_MARKER: &str = "$base64";

/// Which of the three delivery forms [`write_payload_json`] chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadForm {
    /// The payload's own JSON text.
    Json,
    /// A JSON string holding the payload's text.
    Text,
    /// `{"$base64":"..."}`.
    Base64,
}

/// Whether a content-type value names JSON: `application/json` or `application/<x>+json`,
/// case-insensitive, parameters (`; charset=utf-8`) ignored.
pub fn is_json_content_type(content_type: &[u8]) -> bool {
    let media_type = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let Some(subtype) = strip_prefix_ignore_case(media_type, b"application/") else {
        return false;
    };
    subtype.eq_ignore_ascii_case(b"json")
        || (subtype.len() > b"+json".len() && strip_suffix_ignore_case(subtype, b"+json").is_some())
}

fn strip_prefix_ignore_case<'a>(bytes: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let (head, tail) = bytes.split_at_checked(prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then_some(tail)
}

fn strip_suffix_ignore_case<'a>(bytes: &'a [u8], suffix: &[u8]) -> Option<&'a [u8]> {
    let (head, tail) = bytes.split_at_checked(bytes.len().checked_sub(suffix.len())?)?;
    tail.eq_ignore_ascii_case(suffix).then_some(head)
}

/// Appends the compact text of a JSON value that the parser already validated: every byte of
/// the original except whitespace outside strings, so key order, number spelling and string
/// escapes stay exactly as the publisher wrote them (a `serde_json::Value` round trip would sort
/// keys and respell numbers).
pub fn store_json(value: &RawValue, out: &mut Vec<u8>) {
    compact_json(value.get(), out);
}

/// Appends `json` without insignificant whitespace. `json` must be valid JSON (callers pass
/// text the parser has accepted); on other input it still terminates and never panics, it
/// just copies what it does not understand.
pub fn compact_json(json: &str, out: &mut Vec<u8>) {
    out.reserve(json.len());
    let mut in_string = false;
    let mut escaped = false;
    for &byte in json.as_bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
        } else if matches!(byte, b' ' | b'\t' | b'\n' | b'\r') {
            continue;
        } else if byte == b'"' {
            in_string = true;
        }
        out.push(byte);
    }
}

/// Appends `payload` as one JSON value for a WebSocket JSON client (see the module docs for
/// the three forms) and says which form it used. `content_type` is the message's
/// `content-type` header, if it has one.
///
/// Checking that a JSON-typed payload really is JSON costs a parse, paid once per message and
/// wire format on a shard, since the event frame is encoded once and shared.
pub fn write_payload_json(
    payload: &[u8],
    content_type: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> PayloadForm {
    let text = std::str::from_utf8(payload).ok();
    if let Some(text) = text {
        // `IgnoredAny` parses the whole text (trailing bytes are refused) without building it.
        if content_type.is_some_and(is_json_content_type)
            && serde_json::from_str::<IgnoredAny>(text).is_ok()
        {
            out.extend_from_slice(payload);
            return PayloadForm::Json;
        }
        write_json_string(text, out);
        return PayloadForm::Text;
    }
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(BASE64_MARKER.as_bytes());
    out.extend_from_slice(b"\":\"");
    // Standard alphabet with padding: what JavaScript's `atob` and Python's `b64decode` take.
    let start = out.len();
    out.resize(
        start + base64::encoded_len(payload.len(), true).unwrap_or(0),
        0,
    );
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(payload, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
    out.extend_from_slice(b"\"}");
    PayloadForm::Base64
}

/// Appends `text` as a JSON string literal (quotes included).
pub fn write_json_string(text: &str, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail, and a `str` always serialises.
    let written = serde_json::to_writer(&mut *out, text);
    debug_assert!(written.is_ok());
}

/// A payload as the bus stores it: its bytes, and whether it carries the JSON content type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPayload {
    pub bytes: Vec<u8>,
    pub json: bool,
}

/// The inverse of [`write_payload_json`], for clients reading events and for tests: what bytes
/// (and content type) the delivered JSON value stands for.
pub fn payload_from_delivered(delivered: &str) -> Result<StoredPayload, serde_json::Error> {
    let raw: &RawValue = serde_json::from_str(delivered)?;
    let text = raw.get();
    if text.starts_with('"') {
        // A string with a lone surrogate escape (`"\ud800"`) is JSON but no Unicode text, so
        // it was not written for a text payload: it is a JSON-typed payload, kept as is below.
        if let Ok(string) = serde_json::from_str::<String>(text) {
            return Ok(StoredPayload {
                bytes: string.into_bytes(),
                json: false,
            });
        }
    }
    if text.starts_with('{') {
        if let Ok(marker) = serde_json::from_str::<Base64Marker>(text) {
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&marker.data) {
                return Ok(StoredPayload { bytes, json: false });
            }
        }
    }
    let mut bytes = Vec::with_capacity(text.len());
    compact_json(text, &mut bytes);
    Ok(StoredPayload { bytes, json: true })
}

/// `{"$base64": "..."}` with no other key.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Base64Marker {
    #[serde(rename = "$base64")]
    data: String,
}

/// The id of a message whose publisher gave none: the topic's epoch in 16 hex digits, a dash,
/// the sequence number in decimal (`00c0ffee00c0ffee-42`). Stable across replay and
/// redelivery because both numbers are; distinct across topic incarnations because the epoch
/// changes. Formats without allocating, so an encoder can write it straight into a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DerivedMessageId {
    pub epoch: u64,
    pub seq: u64,
}

impl fmt::Display for DerivedMessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}-{}", self.epoch, self.seq)
    }
}

/// [`DerivedMessageId`] as a `String`.
pub fn derived_message_id(epoch: u64, seq: u64) -> String {
    DerivedMessageId { epoch, seq }.to_string()
}

/// Reads back a derived id; `None` for anything else (such as a publisher's own id).
pub fn parse_derived_message_id(id: &str) -> Option<DerivedMessageId> {
    let (epoch, seq) = id.split_once('-')?;
    // Lower-case only, as written: an id reads back only in the form it is written in.
    let hex = epoch.len() == 16
        && epoch
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let decimal = !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit());
    if !hex || !decimal || (seq.len() > 1 && seq.starts_with('0')) {
        return None;
    }
    Some(DerivedMessageId {
        epoch: u64::from_str_radix(epoch, 16).ok()?,
        seq: seq.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn delivered(payload: &[u8], content_type: Option<&str>) -> (String, PayloadForm) {
        let mut out = Vec::new();
        let form = write_payload_json(payload, content_type.map(str::as_bytes), &mut out);
        (
            String::from_utf8(out).expect("delivered JSON is UTF-8"),
            form,
        )
    }

    fn stored(json: &str) -> Vec<u8> {
        let raw: &RawValue = serde_json::from_str(json).expect("test JSON is valid");
        let mut out = Vec::new();
        store_json(raw, &mut out);
        out
    }

    #[test]
    fn a_json_string_with_a_lone_surrogate_reads_back_as_json() {
        // Found by tests/fuzz.rs: such a payload is delivered as is (the JSON grammar allows
        // it) but could not be read back.
        let payload = br#""a\ud800b""#;
        let mut delivered = Vec::new();
        let form = write_payload_json(payload, Some(b"application/json"), &mut delivered);
        assert_eq!(form, PayloadForm::Json);
        assert_eq!(
            payload_from_delivered(std::str::from_utf8(&delivered).unwrap()).unwrap(),
            StoredPayload {
                bytes: payload.to_vec(),
                json: true
            }
        );
    }

    #[test]
    fn json_content_types_are_recognised() {
        for yes in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            " application/json ",
            "application/vnd.api+json",
            "application/problem+JSON;q=1",
        ] {
            assert!(is_json_content_type(yes.as_bytes()), "{yes:?}");
        }
        for no in [
            "",
            "text/plain",
            "application/jsonx",
            "application/+json",
            "application/",
            "text/json",
            "json",
            "application/octet-stream",
        ] {
            assert!(!is_json_content_type(no.as_bytes()), "{no:?}");
        }
    }

    #[test]
    fn json_is_stored_compact_with_its_key_order_and_spelling() {
        assert_eq!(
            stored(r#" { "b" : 1 , "a" : [ 1.50 , true ] } "#),
            br#"{"b":1,"a":[1.50,true]}"#
        );
        assert_eq!(stored(r#""a b \" c""#), br#""a b \" c""#);
        assert_eq!(
            stored(r#"{"k":"x\\","z" : "\u0041 "}"#),
            br#"{"k":"x\\","z":"\u0041 "}"#
        );
        assert_eq!(stored("\n\t42\r\n"), b"42");
        assert_eq!(stored("null"), b"null");
        assert_eq!(stored(r#"[ "\t" ]"#), br#"["\t"]"#);
    }

    #[test]
    fn delivery_embeds_json_quotes_text_and_marks_bytes() {
        let json = Some(CONTENT_TYPE_JSON);
        assert_eq!(
            delivered(br#"{"a":1}"#, json),
            (r#"{"a":1}"#.to_owned(), PayloadForm::Json)
        );
        assert_eq!(delivered(b"42", json), ("42".to_owned(), PayloadForm::Json));
        // Not typed as JSON: text, even when it looks like JSON.
        assert_eq!(
            delivered(br#"{"a":1}"#, None),
            (r#""{\"a\":1}""#.to_owned(), PayloadForm::Text)
        );
        assert_eq!(
            delivered(b"hi", Some("text/plain")),
            (r#""hi""#.to_owned(), PayloadForm::Text)
        );
        assert_eq!(
            delivered(b"", None),
            (r#""""#.to_owned(), PayloadForm::Text)
        );
        // Typed as JSON but not JSON: never embedded.
        assert_eq!(
            delivered(b"{oops", json),
            (r#""{oops""#.to_owned(), PayloadForm::Text)
        );
        assert_eq!(
            delivered(b"1 2", json),
            (r#""1 2""#.to_owned(), PayloadForm::Text)
        );
        assert_eq!(
            delivered(b"\"a\x01b\"", json),
            (r#""\"a\u0001b\"""#.to_owned(), PayloadForm::Text)
        );
        assert_eq!(
            delivered(&[0xff, 0x00, 0x10], json),
            (r#"{"$base64":"/wAQ"}"#.to_owned(), PayloadForm::Base64)
        );
        assert_eq!(
            delivered(&[0xc3], None),
            (r#"{"$base64":"ww=="}"#.to_owned(), PayloadForm::Base64)
        );
        assert_eq!(
            delivered("caf\u{e9} \u{1f600}".as_bytes(), None),
            ("\"caf\u{e9} \u{1f600}\"".to_owned(), PayloadForm::Text)
        );
    }

    #[test]
    fn delivered_values_read_back() {
        let check = |delivered: &str, bytes: &[u8], json: bool| {
            assert_eq!(
                payload_from_delivered(delivered).unwrap(),
                StoredPayload {
                    bytes: bytes.to_vec(),
                    json
                },
                "{delivered:?}"
            );
        };
        check(r#""hi""#, b"hi", false);
        check(r#"{"$base64":"/wAQ"}"#, &[0xff, 0x00, 0x10], false);
        check(r#"{ "a" : 1 }"#, br#"{"a":1}"#, true);
        check("[1, 2]", b"[1,2]", true);
        // Not a marker: a second key, a non-string value, or bad base64.
        check(
            r#"{"$base64":"AA==","x":1}"#,
            br#"{"$base64":"AA==","x":1}"#,
            true,
        );
        check(r#"{"$base64":1}"#, br#"{"$base64":1}"#, true);
        check(r#"{"$base64":"!!"}"#, br#"{"$base64":"!!"}"#, true);
        assert!(payload_from_delivered("{").is_err());
    }

    #[test]
    fn derived_ids_are_fixed_width_hex_then_decimal() {
        assert_eq!(derived_message_id(0, 0), "0000000000000000-0");
        assert_eq!(derived_message_id(0xc0ffee, 42), "0000000000c0ffee-42");
        assert_eq!(
            derived_message_id(u64::MAX, u64::MAX),
            "ffffffffffffffff-18446744073709551615"
        );
        for not_derived in [
            "",
            "abc",
            "0000000000c0ffee-",
            "0000000000c0ffee-01",
            "000000000c0ffee-1",
            "0000000000c0ffee-1-2",
            "000000000000000g-1",
            // Found by tests/fuzz.rs: upper-case hex is not what `derived_message_id` writes.
            "0000000000C0FFEE-1",
            "0000000000000000-+1",
            "0000000000000000-18446744073709551616",
        ] {
            assert_eq!(
                parse_derived_message_id(not_derived),
                None,
                "{not_derived:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn bytes_round_trip_through_delivery(
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            json_typed in any::<bool>(),
        ) {
            let content_type = json_typed.then_some(CONTENT_TYPE_JSON);
            let (text, form) = delivered(&payload, content_type);
            // Whatever the form, the event stays valid JSON.
            let read = payload_from_delivered(&text).unwrap();
            match form {
                PayloadForm::Json => {
                    prop_assert!(json_typed);
                    let original: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                    let back: serde_json::Value = serde_json::from_slice(&read.bytes).unwrap();
                    prop_assert_eq!(original, back);
                }
                PayloadForm::Text | PayloadForm::Base64 => {
                    prop_assert_eq!(read, StoredPayload { bytes: payload, json: false });
                }
            }
        }

        #[test]
        fn text_round_trips(text in "\\PC*") {
            let (delivered_text, form) = delivered(text.as_bytes(), None);
            prop_assert_eq!(form, PayloadForm::Text);
            let read = payload_from_delivered(&delivered_text).unwrap();
            prop_assert_eq!(read.bytes, text.into_bytes());
        }

        #[test]
        fn stored_json_is_equal_json_and_embeds_as_is(
            value in json_value(),
            pretty in any::<bool>(),
        ) {
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            let compact = stored(&text);
            prop_assert_eq!(&compact, &serde_json::to_vec(&value).unwrap());
            let (embedded, form) = delivered(&compact, Some(CONTENT_TYPE_JSON));
            prop_assert_eq!(form, PayloadForm::Json);
            prop_assert_eq!(embedded.as_bytes(), &compact[..]);
        }

        #[test]
        fn compaction_never_panics(text in "\\PC*") {
            let mut out = Vec::new();
            compact_json(&text, &mut out);
            prop_assert!(out.len() <= text.len());
        }

        #[test]
        fn derived_ids_round_trip(epoch in any::<u64>(), seq in any::<u64>()) {
            prop_assert_eq!(
                parse_derived_message_id(&derived_message_id(epoch, seq)),
                Some(DerivedMessageId { epoch, seq })
            );
        }
    }

    /// Arbitrary JSON values, strings with escapes and whitespace included.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[ a\"\\\\\t\n\u{e9}]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z \"]{0,3}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }
}
