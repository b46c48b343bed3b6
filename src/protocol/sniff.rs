//! Telling a text-protocol client, in its own words, that it reached the native port.
//!
//! A native connection starts with HELLO, whose first byte is the high byte of a length
//! field: 0x00 for any frame the broker accepts. A curl, `redis-cli` or NATS client that
//! dials the native port sends ASCII instead, which the frame decoder can only read as an
//! absurd length ("frame above the size limit"): true, and no help. Before HELLO, the shard
//! asks [`sniff`] about the first bytes of such a connection, and if they look like an HTTP
//! request line, a RESP command (`*N\r\n` multibulk or an inline `PING`, `HELLO`, ...) or a
//! NATS `CONNECT`/`PING`/`SUB`/`PUB`, it sends [`answer`]: an error in that protocol's own
//! framing, then closes. Four bytes are enough for the decoder to refuse a length, not always
//! for [`sniff`] to decide (`POST` before its space): [`needs_more`] says when the connection
//! should read on instead. The wording lives in one function, [`port_advice`]: it names the
//! HTTP port (where HTTP and WebSocket clients belong), and will name the Redis port once it
//! exists.
//!
//! Sans-IO: bytes in, bytes out. Never panics, whatever the input.

/// A text protocol recognised in the first bytes of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Foreign {
    /// An HTTP/1.x request line (`GET / HTTP/1.1`); WebSocket upgrades start this way too.
    Http,
    /// A Redis client: RESP multibulk (`*1\r\n$4\r\nPING\r\n`) or an inline command.
    Resp,
    /// A NATS client: `CONNECT {...}`, `SUB`, `PUB`.
    Nats,
}

impl Foreign {
    /// The protocol's name as a user knows it.
    pub fn name(self) -> &'static str {
        match self {
            Foreign::Http => "HTTP",
            Foreign::Resp => "Redis (RESP)",
            Foreign::Nats => "NATS",
        }
    }
}

/// How many first bytes [`sniff`] looks at, at most.
pub const SNIFF_BYTES_MAX: usize = 64;

const HTTP_METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
];

/// Inline commands a person types into `redis-cli` or a Redis client sends first. `PING` is
/// also NATS's, and answered as Redis: the two errors look the same (`-ERR ...`).
const RESP_INLINE: [&str; 11] = [
    "PING",
    "HELLO",
    "AUTH",
    "SELECT",
    "CLIENT",
    "INFO",
    "COMMAND",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "PUBLISH",
    "QUIT",
];

const NATS_VERBS: [&str; 3] = ["CONNECT", "SUB", "PUB"];

/// Which text protocol `first_bytes` (the start of a connection, before any HELLO) speaks,
/// if any. Needs only the first word and the byte after it.
pub fn sniff(first_bytes: &[u8]) -> Option<Foreign> {
    let bytes = &first_bytes[..first_bytes.len().min(SNIFF_BYTES_MAX)];
    if let [b'*', rest @ ..] = bytes {
        // RESP multibulk: `*` then the element count's digits, then CRLF.
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        return (digits > 0 && rest.get(digits) == Some(&b'\r')).then_some(Foreign::Resp);
    }
    let word_len = bytes.iter().take_while(|b| b.is_ascii_alphabetic()).count();
    let word = std::str::from_utf8(&bytes[..word_len]).ok()?;
    let after = *bytes.get(word_len)?;
    let separated = after == b' ' || after == b'\t';
    let line_end = after == b'\r' || after == b'\n';
    let is = |list: &[&str]| list.iter().any(|known| known.eq_ignore_ascii_case(word));
    // `CONNECT` is both an HTTP method (proxies) and NATS's first command, whose argument
    // is a JSON object.
    if word.eq_ignore_ascii_case("CONNECT") && separated {
        let json = bytes[word_len..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_none_or(|&b| b == b'{');
        return Some(if json { Foreign::Nats } else { Foreign::Http });
    }
    if is(&HTTP_METHODS) && separated && word.bytes().all(|b| b.is_ascii_uppercase()) {
        return Some(Foreign::Http);
    }
    if is(&RESP_INLINE) && (separated || line_end) {
        return Some(Foreign::Resp);
    }
    if is(&NATS_VERBS) && (separated || line_end) {
        return Some(Foreign::Nats);
    }
    None
}

/// Whether `first_bytes` could still become what [`sniff`] recognises once more bytes come:
/// a known verb or method cut short (`POST` split after its fourth byte, before the space
/// that would settle it), or a RESP multibulk count not yet ended. The frame decoder reads
/// any four such bytes as a length far above every frame limit, so the connection waits for
/// the rest instead of answering in binary; the handshake deadline bounds that wait. A native
/// client is never held: its length's first byte is at most 0x10 (`--message-bytes-max` is
/// at most 256 MiB), never `*` or a letter, so it gets a plain `false`.
pub fn needs_more(first_bytes: &[u8]) -> bool {
    if first_bytes.is_empty()
        || first_bytes.len() >= SNIFF_BYTES_MAX
        || sniff(first_bytes).is_some()
    {
        return false;
    }
    if let [b'*', digits @ ..] = first_bytes {
        return digits.iter().all(u8::is_ascii_digit);
    }
    if !first_bytes.iter().all(u8::is_ascii_alphabetic) {
        return false;
    }
    HTTP_METHODS
        .iter()
        .chain(&RESP_INLINE)
        .chain(&NATS_VERBS)
        .chain(&["CONNECT"])
        .any(|known| {
            known
                .as_bytes()
                .get(..first_bytes.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(first_bytes))
        })
}

/// The broker's other ports, which a lost client is pointed at (`None`: turned off).
#[derive(Clone, Copy, Debug, Default)]
pub struct OtherPorts {
    pub http: Option<std::net::SocketAddr>,
    pub resp: Option<std::net::SocketAddr>,
}

/// What a client of `protocol` is told: which port it reached and where its protocol is
/// spoken.
pub fn port_advice(protocol: Foreign, ports: OtherPorts) -> String {
    let elsewhere = match (protocol, ports) {
        (
            Foreign::Http,
            OtherPorts {
                http: Some(http), ..
            },
        ) => {
            format!("its HTTP port (REST, WebSocket at /v1/ws and /ws) is {http}")
        }
        (Foreign::Http, _) => "its HTTP port is off (--no-http)".to_string(),
        (
            Foreign::Resp,
            OtherPorts {
                resp: Some(resp), ..
            },
        ) => {
            format!("its Redis port is {resp}")
        }
        (Foreign::Resp, _) => "its Redis port is off (--no-resp)".to_string(),
        _ => format!("corebus has no {} port yet", protocol.name()),
    };
    format!(
        "this is the native port of corebus, which speaks only its binary protocol (HELLO \
         first; see the corebus::protocol::native docs); {elsewhere}"
    )
}

/// The error to send `protocol`'s client, framed as that protocol frames errors; the
/// connection is closed after it.
pub fn answer(protocol: Foreign, ports: OtherPorts) -> Vec<u8> {
    let advice = port_advice(protocol, ports);
    match protocol {
        Foreign::Http => {
            let body = format!("{advice}\n");
            format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
        Foreign::Resp => format!("-ERR {advice}\r\n").into_bytes(),
        // NATS quotes its error texts in single quotes, so the text must not hold one.
        Foreign::Nats => format!("-ERR '{}'\r\n", advice.replace('\'', "")).into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn recognises_each_protocol_by_its_first_bytes() {
        let check = |input: &[u8], expect: Option<Foreign>| {
            assert_eq!(sniff(input), expect, "{:?}", String::from_utf8_lossy(input));
        };
        check(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Some(Foreign::Http));
        check(
            b"GET /v1/ws HTTP/1.1\r\nUpgrade: websocket\r\n",
            Some(Foreign::Http),
        );
        check(b"POST /topics HTTP/1.1\r\n", Some(Foreign::Http));
        check(b"HEAD ", Some(Foreign::Http));
        check(b"CONNECT example.com:443 HTTP/1.1\r\n", Some(Foreign::Http));
        check(b"*1\r\n$4\r\nPING\r\n", Some(Foreign::Resp));
        check(b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n", Some(Foreign::Resp));
        check(b"PING\r\n", Some(Foreign::Resp));
        check(b"ping\n", Some(Foreign::Resp));
        check(b"SUBSCRIBE news\r\n", Some(Foreign::Resp));
        check(
            b"CONNECT {\"verbose\":false}\r\nPING\r\n",
            Some(Foreign::Nats),
        );
        check(b"CONNECT {}", Some(Foreign::Nats));
        check(b"SUB foo 1\r\n", Some(Foreign::Nats));
        check(b"PUB foo 5\r\nhello\r\n", Some(Foreign::Nats));
        // Native frames and anything unknown are left to the frame decoder.
        check(&[0, 0, 0, 20, 0x01, 0, 0, 0], None);
        check(b"", None);
        check(b"GET", None);
        check(b"*", None);
        check(b"*x\r\n", None);
        check(b"get / HTTP/1.1", None);
        check(b"GETTING ", None);
        check(b"\x16\x03\x01\x02\x00", None); // a TLS ClientHello
        check(b"SSH-2.0-OpenSSH_9.6\r\n", None);
    }

    /// Every HTTP request, split anywhere in its method or just after it, is either
    /// recognised or waited for, never refused as a native frame; the whole line is HTTP.
    #[test]
    fn http_methods_split_anywhere_are_waited_for() {
        for method in HTTP_METHODS {
            let request = format!("{method} /v1/topics HTTP/1.1\r\nHost: x\r\n\r\n");
            let request = request.as_bytes();
            for split in 1..=method.len() {
                let first = &request[..split];
                assert!(
                    sniff(first).is_none() && needs_more(first),
                    "{:?} must wait for more",
                    String::from_utf8_lossy(first)
                );
            }
            for split in method.len() + 1..=request.len() {
                assert_eq!(
                    sniff(&request[..split]),
                    Some(Foreign::Http),
                    "{:?}",
                    String::from_utf8_lossy(&request[..split])
                );
            }
        }
    }

    #[test]
    fn connect_cut_short_is_waited_for() {
        for split in 1..=b"CONNECT".len() {
            assert!(needs_more(&b"CONNECT"[..split]));
        }
        assert_eq!(sniff(b"CONNECT example.com:443 "), Some(Foreign::Http));
        assert_eq!(sniff(b"CONNECT {"), Some(Foreign::Nats));
    }

    #[test]
    fn waits_only_for_what_could_still_be_text() {
        let check = |input: &[u8], expect: bool| {
            assert_eq!(
                needs_more(input),
                expect,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        };
        // The audit's cases: four bytes that are a whole method, or a method's start.
        check(b"POST", true);
        check(b"HEAD", true);
        check(b"PATC", true);
        check(b"DELE", true);
        check(b"OPTI", true);
        check(b"TRAC", true);
        check(b"PING", true);
        check(b"CONN", true);
        check(b"SUBS", true);
        check(b"*123", true);
        // Settled one way or the other: nothing to wait for.
        check(b"GET ", false);
        check(b"POST ", false);
        check(b"PING\r\n", false);
        check(b"POSTX", false);
        check(b"GETTING", false);
        check(b"*12x", false);
        check(b"SSH-", false);
        check(b"\x16\x03\x01\x02", false);
        check(b"", false);
        check(&[0, 0, 0, 20], false);
        check(&[0x10, 0, 0, 0], false);
    }

    #[test]
    fn each_answer_is_framed_in_its_protocol() {
        let http = String::from_utf8(answer(Foreign::Http, OtherPorts::default())).unwrap();
        assert!(http.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{http}");
        let (head, body) = http.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{http}"
        );
        assert!(
            body.contains("native port") && body.contains("HTTP"),
            "{body}"
        );

        let resp = String::from_utf8(answer(Foreign::Resp, OtherPorts::default())).unwrap();
        assert!(resp.starts_with("-ERR this is the native port"), "{resp}");
        assert!(
            resp.ends_with("\r\n") && resp.matches("\r\n").count() == 1,
            "{resp}"
        );
        assert!(resp.contains("Redis"), "{resp}");

        let nats = String::from_utf8(answer(Foreign::Nats, OtherPorts::default())).unwrap();
        assert!(
            nats.starts_with("-ERR '") && nats.ends_with("'\r\n"),
            "{nats}"
        );
        assert_eq!(nats.matches('\'').count(), 2, "{nats}");
        assert!(nats.contains("NATS"), "{nats}");
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = sniff(&bytes);
        }

        /// A native frame's first byte is at most 0x10 (lengths up to the 256 MiB message
        /// cap and its overhead): never taken for text, never held back.
        #[test]
        fn native_frames_are_never_sniffed(
            first in 0u8..=0x10,
            rest in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = vec![first];
            bytes.extend(rest);
            prop_assert_eq!(sniff(&bytes), None);
            prop_assert!(!needs_more(&bytes));
        }
    }
}
