//! Fuzzing every decoder in `src/protocol/` at volume, on stable Rust (issue 14).
//!
//! Why an integration test: it builds with the normal toolchain and runs in every
//! `cargo test --release` (a short seeded pass, so CI catches a regression), while the same
//! binary runs for hours when asked (`tools/fuzz`, or the variables below). Each decoder is
//! one `#[test]`, so the harness runs them on parallel threads.
//!
//! For each decoder a seeded PRNG draws inputs (see `fuzz/engine.rs`): valid inputs built
//! with the crate's own encoders, the same mutated (bit flips, inserted, deleted and
//! duplicated bytes, boundary lengths 0/1/255/256/65535/`u32::MAX`, dictionary tokens),
//! spliced, truncated, and raw random bytes. Every input is checked for:
//! - no panic (`catch_unwind`; the report gives the seed, the input's index and its hex);
//! - bounded allocation: the most bytes a decoder holds at once, measured by the counting
//!   global allocator below, stays within `per_byte * input length + fixed` (per decoder,
//!   see each [`engine::Target`]), so a length field claiming 4 GiB cannot allocate it;
//! - bounded time: no input takes more than half a second;
//! - round trips where an encoder exists (`decode(encode(x)) == x` for native frames, RESP
//!   requests and replies, WebSocket frames, SUBSCRIBE and CREATE_TOPIC options, payloads,
//!   Redis channel names), and decoder-specific invariants: consumed lengths within the
//!   input, any prefix of a complete frame is "incomplete", a RESP stream decodes the same
//!   whole or trickling in, error replies that quote client bytes stay one well-formed line.
//!
//! Environment:
//! - `COREBUS_FUZZ_INPUTS`: inputs per decoder (default 20,000; `tools/fuzz` uses 10 million);
//! - `COREBUS_FUZZ_SEED`: the seed (printed at start; default fixed);
//! - `COREBUS_FUZZ_DECODERS`: a comma list of decoder names (the `name` of each target);
//! - `COREBUS_FUZZ_STATE=path`: progress (decoder, seed, inputs done) is saved there every
//!   100,000 inputs and at the end, and a rerun continues from it;
//! - `COREBUS_FUZZ_FROM`: start at this input index (replaying one failure).

#[path = "fuzz/alloc.rs"]
mod alloc;
#[path = "fuzz/engine.rs"]
mod engine;

use corebus::protocol::glob::{glob_match, literal_prefix, GlobIndex};
use corebus::protocol::native::{
    self, AckKind, DecodeError, Frame, FRAME_OVERHEAD_MAX, HEADER_LEN,
};
use corebus::protocol::payload;
use corebus::protocol::resp::{self, Reply, RequestDecoder, RequestLimits, RespVersion};
use corebus::protocol::resp_channel::{channel_to_topic, topic_to_channel};
use corebus::protocol::resp_commands::{self, Refusal};
use corebus::protocol::subscribe_options::{AckSettings, Sharing, Start, SubscribeOptions};
use corebus::protocol::topic::{self, SubjectKind};
use corebus::protocol::topic_options::TopicOptions;
use corebus::protocol::websocket::{self, Decoder, Event, Opcode};
use corebus::protocol::{http, ws_fastapi, ws_fiber};
use engine::{measured, small_len, Meter, Outcome, Target};
use rand::rngs::StdRng;
use rand::Rng;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

// ---------------------------------------------------------------------------------------
// Shared generators
// ---------------------------------------------------------------------------------------

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let len = small_len(rng, max);
    (0..len).map(|_| rng.gen()).collect()
}

const TOKEN_CHARS: &[u8] = b"abcxyzABZ019_-";

/// A valid exact topic (sometimes `$`-reserved), or with `wildcards` a pattern.
fn topic_name(rng: &mut StdRng, wildcards: bool) -> String {
    let mut name = String::new();
    if rng.gen_ratio(1, 10) {
        name.push('$');
    }
    let tokens = 1 + small_len(rng, 6);
    for i in 0..tokens {
        if i > 0 {
            name.push('.');
        }
        if wildcards && rng.gen_ratio(1, 4) {
            name.push(if i + 1 == tokens && rng.gen_bool(0.5) {
                '>'
            } else {
                '*'
            });
            continue;
        }
        for _ in 0..1 + small_len(rng, 12) {
            name.push(char::from(TOKEN_CHARS[rng.gen_range(0..TOKEN_CHARS.len())]));
        }
    }
    if rng.gen_ratio(1, 50) {
        // Near the length limit.
        while name.len() < 250 {
            name.push_str(".abcdefghi");
        }
        name.truncate(rng.gen_range(250..=256));
    }
    name
}

/// Bytes for a name field: mostly a valid topic, sometimes anything.
fn name_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let mut bytes = if rng.gen_bool(0.7) {
        {
            let wildcards = rng.gen_bool(0.3);
            topic_name(rng, wildcards).into_bytes()
        }
    } else {
        random_bytes(rng, max)
    };
    bytes.truncate(max);
    bytes
}

fn boundary_u64(rng: &mut StdRng) -> u64 {
    if rng.gen_bool(0.5) {
        engine::BOUNDARY_VALUES[rng.gen_range(0..engine::BOUNDARY_VALUES.len())]
    } else {
        rng.gen()
    }
}

fn subscribe_options(rng: &mut StdRng) -> SubscribeOptions {
    let start = match rng.gen_range(0..6) {
        0 => Start::New,
        1 => Start::LastN(boundary_u64(rng)),
        2 => Start::FromSeq(boundary_u64(rng)),
        3 => Start::FromSeqOfEpoch {
            seq: boundary_u64(rng),
            epoch: boundary_u64(rng),
        },
        4 => Start::FromTimeNs(boundary_u64(rng)),
        _ => Start::All,
    };
    let name = |rng: &mut StdRng| -> String {
        (0..rng.gen_range(1..=64))
            .map(|_| char::from(TOKEN_CHARS[rng.gen_range(0..TOKEN_CHARS.len())]))
            .collect()
    };
    let sharing = match rng.gen_range(0..3) {
        0 => Sharing::None,
        1 => Sharing::Consumer(name(rng)),
        _ => Sharing::Group(name(rng)),
    };
    let acks = (sharing != Sharing::None && rng.gen_bool(0.5)).then(|| AckSettings {
        in_flight_max: rng.gen_range(1..=u32::MAX),
        ack_wait_ms: rng.gen_range(1..=u32::MAX),
        deliver_max: rng.gen_range(1..=u16::MAX),
    });
    SubscribeOptions {
        start,
        sharing,
        acks,
    }
}

fn topic_options(rng: &mut StdRng) -> TopicOptions {
    let field = |rng: &mut StdRng| rng.gen_bool(0.5).then(|| boundary_u64(rng));
    TopicOptions {
        replay_messages_max: field(rng),
        replay_bytes_max: field(rng),
        replay_ttl_ms: field(rng),
        presence: field(rng),
    }
}

// ---------------------------------------------------------------------------------------
// native
// ---------------------------------------------------------------------------------------

const NATIVE_LIMIT: usize = 4096 + FRAME_OVERHEAD_MAX;

fn gen_native(rng: &mut StdRng, out: &mut Vec<u8>) {
    for _ in 0..1 + usize::from(rng.gen_ratio(1, 4)) {
        let id = if rng.gen_bool(0.8) {
            rng.gen()
        } else {
            [0, 1, u32::MAX][rng.gen_range(0..3)]
        };
        let sub_id = rng.gen();
        let topic = name_bytes(rng, 255);
        let reply = rng.gen_bool(0.3).then(|| {
            let mut r = name_bytes(rng, 255);
            if r.is_empty() {
                r.push(b'r');
            }
            r
        });
        let short = {
            let mut t = name_bytes(rng, 255);
            if t.is_empty() {
                t.push(b't');
            }
            t
        };
        let payload = random_bytes(rng, 600);
        let mut options = Vec::new();
        match rng.gen_range(0..3) {
            0 => subscribe_options(rng).encode(&mut options),
            1 => topic_options(rng).encode(&mut options),
            _ => options = random_bytes(rng, 24),
        }
        let with_topic = rng.gen_bool(0.5);
        let kind = [AckKind::Single, AckKind::Cumulative, AckKind::Nack][rng.gen_range(0..3)];
        let (u16_value, u64_a, u64_b) = (rng.gen::<u16>(), boundary_u64(rng), boundary_u64(rng));
        let frame = match rng.gen_range(0..15) {
            0 => Frame::Hello {
                request_id: id,
                version: [1, 2, 3, 4, u16_value][rng.gen_range(0..5)],
                client_name: &topic,
            },
            1 => Frame::Publish {
                request_id: id,
                quiet: rng.gen(),
                topic: &topic,
                reply_to: reply.as_deref(),
                headers: &[],
                payload: &payload,
            },
            2 => Frame::Subscribe {
                request_id: id,
                sub_id,
                topic: &topic,
                options: &options,
            },
            3 => Frame::Unsubscribe {
                request_id: id,
                sub_id,
            },
            4 => Frame::Ping { request_id: id },
            5 => Frame::Ack {
                request_id: id,
                sub_id,
                seq: u64_a,
                kind,
                topic: if with_topic { &short } else { &[] },
            },
            6 => Frame::CreateTopic {
                request_id: id,
                topic: &topic,
                options: &options,
            },
            7 => Frame::DeleteTopic {
                request_id: id,
                topic: &topic,
            },
            8 => Frame::Ok {
                request_id: id,
                data: &payload,
            },
            9 => Frame::Err {
                request_id: id,
                code: u16_value,
                message: &payload,
            },
            10 => Frame::Msg {
                sub_id,
                seq: u64_a,
                timestamp_ns: u64_b,
                delivery_count: u16_value,
                topic: &topic,
                reply_to: reply.as_deref(),
                headers: &[],
                payload: &payload,
            },
            11 => Frame::Pong { request_id: id },
            12 => Frame::Dropped {
                sub_id,
                count: u64_a,
            },
            13 => Frame::Gap {
                sub_id,
                missed: u64_a,
                resume_seq: u64_b,
                topic: if with_topic { &short } else { &[] },
            },
            _ => Frame::Ended {
                sub_id,
                code: u16_value,
                message: &payload,
            },
        };
        let at = out.len();
        frame.encode(out);
        assert_eq!(
            native::decode(&out[at..], NATIVE_LIMIT),
            Ok(Some((frame, out.len() - at))),
            "decode(encode(frame)) differs"
        );
        if rng.gen_ratio(1, 16) {
            // Truncated at every boundary, each prefix is only "incomplete".
            for end in at..out.len() {
                assert_eq!(
                    native::decode(&out[at..end], NATIVE_LIMIT),
                    Ok(None),
                    "prefix {}",
                    end - at
                );
            }
        }
    }
}

/// What the broker does next with a decoded frame's variable fields.
fn native_follow_up(frame: &Frame<'_>) {
    match *frame {
        Frame::Subscribe { topic, options, .. } => {
            let _ = measured(|| topic::parse_subscription(topic));
            if let Ok(parsed) = measured(|| SubscribeOptions::parse(options)) {
                check_subscribe_options_idempotent(&parsed);
            }
        }
        Frame::CreateTopic { topic, options, .. } => {
            let _ = measured(|| topic::parse_publish_topic(topic));
            if let Ok(parsed) = measured(|| TopicOptions::parse(options)) {
                let mut again = Vec::new();
                parsed.encode(&mut again);
                assert_eq!(TopicOptions::parse(&again), Ok(parsed));
            }
        }
        Frame::Publish {
            topic, reply_to, ..
        } => {
            let _ = measured(|| topic::parse_publish_topic(topic));
            if let Some(reply_to) = reply_to {
                let _ = measured(|| topic::parse_publish_topic(reply_to));
            }
        }
        Frame::DeleteTopic { topic, .. } | Frame::Ack { topic, .. } => {
            let _ = measured(|| topic::parse_subscription(topic));
        }
        _ => {}
    }
}

fn check_native(buf: &[u8]) -> Outcome {
    let mut first = None;
    let mut at = 0;
    while at < buf.len() || first.is_none() {
        let rest = &buf[at..];
        let (outcome, skip) = match measured(|| native::decode(rest, NATIVE_LIMIT)) {
            Ok(Some((frame, n))) => {
                assert!((HEADER_LEN..=rest.len()).contains(&n) && n <= NATIVE_LIMIT);
                let mut again = Vec::new();
                frame.encode(&mut again);
                assert_eq!(
                    native::decode(&again, usize::MAX),
                    Ok(Some((frame, again.len()))),
                    "a decoded frame does not survive encode and decode"
                );
                native_follow_up(&frame);
                (Outcome::Decoded, Some(n))
            }
            Err(DecodeError::Invalid { frame_len, .. }) => {
                assert!((HEADER_LEN..=rest.len()).contains(&frame_len));
                (Outcome::Invalid, Some(frame_len))
            }
            Err(DecodeError::Fatal { .. }) => (Outcome::Invalid, None),
            Ok(None) => (Outcome::Incomplete, None),
        };
        first.get_or_insert(outcome);
        let Some(n) = skip else { break };
        // A frame is reported only once it is whole: every prefix is "incomplete".
        for prefix in [n - 1, n / 2, HEADER_LEN - 1] {
            assert_eq!(
                native::decode(&rest[..prefix], NATIVE_LIMIT),
                Ok(None),
                "prefix {prefix}"
            );
        }
        at += n;
    }
    // Any limit holds, the smallest included.
    for limit in [0, HEADER_LEN, 64] {
        if let Ok(Some((_, n))) = measured(|| native::decode(buf, limit)) {
            assert!(n <= limit);
        }
    }
    first.unwrap_or(Outcome::Incomplete)
}

// ---------------------------------------------------------------------------------------
// topic
// ---------------------------------------------------------------------------------------

fn gen_topic(rng: &mut StdRng, out: &mut Vec<u8>) {
    out.extend_from_slice(topic_name(rng, true).as_bytes());
    if rng.gen_bool(0.7) {
        out.push(b' ');
        out.extend_from_slice(topic_name(rng, false).as_bytes());
    }
}

fn check_topic(buf: &[u8]) -> Outcome {
    let (a, b) = match buf.iter().position(|&b| b == b' ') {
        Some(space) => (&buf[..space], &buf[space + 1..]),
        None => (buf, buf),
    };
    let mut outcome = Outcome::Invalid;
    for name in [a, b] {
        let publish = measured(|| topic::parse_publish_topic(name));
        let subscription = measured(|| topic::parse_subscription(name));
        if let Ok(exact) = publish {
            assert_eq!(subscription, Ok((exact, SubjectKind::Exact)));
            assert!(measured(|| topic::pattern_matches(exact, exact)));
            for shards in [1, 3, 64] {
                assert!(measured(|| topic::owner_shard(exact, shards)) < shards);
            }
            outcome = Outcome::Decoded;
        }
        if let Ok((name, _)) = subscription {
            assert!(!name.is_empty() && name.len() <= topic::TOPIC_BYTES_MAX);
        }
    }
    if let (Ok((pattern, _)), Ok(exact)) =
        (topic::parse_subscription(a), topic::parse_subscription(b))
    {
        let _ = measured(|| topic::pattern_matches(pattern, exact.0));
    }
    outcome
}

// ---------------------------------------------------------------------------------------
// subscribe_options, topic_options
// ---------------------------------------------------------------------------------------

fn check_subscribe_options_idempotent(parsed: &SubscribeOptions) {
    let mut again = Vec::new();
    parsed.encode(&mut again);
    assert_eq!(
        SubscribeOptions::parse(&again).as_ref(),
        Ok(parsed),
        "parsed options do not survive encode and parse"
    );
}

fn gen_subscribe_options(rng: &mut StdRng, out: &mut Vec<u8>) {
    let options = subscribe_options(rng);
    let at = out.len();
    options.encode(out);
    assert_eq!(
        SubscribeOptions::parse(&out[at..]),
        Ok(options),
        "parse(encode(options)) differs"
    );
}

fn check_subscribe_options(buf: &[u8]) -> Outcome {
    match measured(|| SubscribeOptions::parse(buf)) {
        Ok(parsed) => {
            check_subscribe_options_idempotent(&parsed);
            Outcome::Decoded
        }
        Err(_) => Outcome::Invalid,
    }
}

fn gen_topic_options(rng: &mut StdRng, out: &mut Vec<u8>) {
    let options = topic_options(rng);
    let at = out.len();
    options.encode(out);
    assert_eq!(
        TopicOptions::parse(&out[at..]),
        Ok(options),
        "parse(encode(options)) differs"
    );
}

fn check_topic_options(buf: &[u8]) -> Outcome {
    match measured(|| TopicOptions::parse(buf)) {
        Ok(parsed) => {
            let mut again = Vec::new();
            parsed.encode(&mut again);
            assert_eq!(TopicOptions::parse(&again), Ok(parsed));
            Outcome::Decoded
        }
        Err(_) => Outcome::Invalid,
    }
}

// ---------------------------------------------------------------------------------------
// http
// ---------------------------------------------------------------------------------------

const HTTP_PATHS: [&str; 12] = [
    "/",
    "/metrics",
    "/v1/ws",
    "/ws",
    "/v1/topics",
    "/v1/health",
    "/v1/stats",
    "/topics",
    "/health",
    "/stats",
    "/v1/topics/",
    "/topics/",
];

fn pick<'a, T: ?Sized>(rng: &mut StdRng, items: &[&'a T]) -> &'a T {
    items[rng.gen_range(0..items.len())]
}

fn gen_http(rng: &mut StdRng, out: &mut Vec<u8>) {
    for _ in 0..1 + usize::from(rng.gen_ratio(1, 4)) {
        let eol: &[u8] = if rng.gen_ratio(1, 10) { b"\n" } else { b"\r\n" };
        let method = pick(
            rng,
            &[
                "GET", "POST", "DELETE", "HEAD", "PUT", "OPTIONS", "get", "BREW",
            ],
        );
        let mut target = String::new();
        if rng.gen_ratio(1, 10) {
            target.push_str("http://host:8080");
        }
        target.push_str(HTTP_PATHS[rng.gen_range(0..HTTP_PATHS.len())]);
        if target.ends_with('/') && target.len() > 1 {
            for byte in topic_name(rng, false).bytes() {
                if rng.gen_ratio(1, 8) {
                    target.push_str(&format!("%{byte:02X}"));
                } else {
                    target.push(char::from(byte));
                }
            }
            if rng.gen_ratio(1, 10) {
                target.push_str(pick(rng, &["%", "%z1", "%2F", "%FF%FE", "%00"]));
            }
        }
        if rng.gen_ratio(1, 5) {
            target.push_str("?last_n=3&x=%20");
        }
        let version = pick(
            rng,
            &["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0"],
        );
        out.extend_from_slice(format!("{method} {target} {version}").as_bytes());
        out.extend_from_slice(eol);
        let body: Vec<u8> = match rng.gen_range(0..4) {
            0 => Vec::new(),
            1 => format!("{{\"name\": \"{}\"}}", topic_name(rng, false)).into_bytes(),
            2 => pick(
                rng,
                &[
                    "{\"name\": null}",
                    "[1,2]",
                    "{\"name\": 5}",
                    "{\"name\": \"a\\u002eb\"}",
                    "{",
                    "\"x\"",
                    "{\"name\":\"a\",\"name\":\"b\"}",
                    "{\"other\": [[[[]]]]}",
                ],
            )
            .as_bytes()
            .to_vec(),
            _ => random_bytes(rng, 64),
        };
        let mut headers: Vec<String> = Vec::new();
        if rng.gen_ratio(9, 10) {
            headers.push("Host: localhost:8080".into());
        }
        if !body.is_empty() || rng.gen_ratio(1, 5) {
            let len = body.len() as i64 + [0, 0, 0, 0, 1, -1][rng.gen_range(0..6)];
            headers.push(format!("Content-Length: {len}"));
        }
        if rng.gen_ratio(1, 2) {
            headers.push("Content-Type: application/json".into());
        }
        if rng.gen_ratio(1, 3) {
            let key = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                rng.gen::<[u8; 16]>(),
            );
            headers.push("Upgrade: websocket".into());
            headers.push("Connection: keep-alive, Upgrade".into());
            headers.push(format!("Sec-WebSocket-Key: {key}"));
            headers.push("Sec-WebSocket-Version: 13".into());
        } else if rng.gen_ratio(1, 3) {
            headers.push(pick(rng, &["Connection: close", "Connection: keep-alive"]).into());
        }
        if rng.gen_ratio(1, 10) {
            headers.push(
                pick(
                    rng,
                    &[
                        "Expect: 100-continue",
                        "Expect: other",
                        "Transfer-Encoding: chunked",
                        "Transfer-Encoding: gzip",
                        "Content-Length: 7",
                        "Host: second",
                        "X-Long: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                    ],
                )
                .into(),
            );
        }
        // Header order is free in HTTP.
        for i in (1..headers.len()).rev() {
            headers.swap(i, rng.gen_range(0..=i));
        }
        for header in headers {
            out.extend_from_slice(header.as_bytes());
            out.extend_from_slice(eol);
        }
        out.extend_from_slice(eol);
        out.extend_from_slice(&body);
    }
    if rng.gen_ratio(1, 16) {
        let limits = http::HttpLimits::default();
        if let Ok(Some(request)) = http::decode_request(out, &limits) {
            for end in 0..request.len {
                assert_eq!(
                    http::decode_request(&out[..end], &limits),
                    Ok(None),
                    "prefix {end}"
                );
            }
        }
    }
}

fn check_http(buf: &[u8]) -> Outcome {
    let limits = http::HttpLimits::default();
    let outcome = match measured(|| http::decode_request(buf, &limits)) {
        Ok(Some(request)) => {
            assert!(request.len <= buf.len());
            assert_eq!(request.len, request.head.head_len + request.body.len());
            assert_eq!(
                http::decode_request(&buf[..request.len - 1], &limits),
                Ok(None),
                "a prefix of a complete request is not incomplete"
            );
            let head = &request.head;
            let _ = measured(|| http::route(head.method, head.path));
            let _ = measured(|| http::parse_create_topic_body(request.body));
            if let Ok(key) = measured(|| http::validate_websocket_upgrade(head)) {
                let _ = measured(|| http::websocket_accept_key(key));
            }
            let _ = http::ConnectionHeader::for_request(head);
            // The next pipelined request.
            let _ = measured(|| http::decode_request(&buf[request.len..], &limits));
            Outcome::Decoded
        }
        Ok(None) => Outcome::Incomplete,
        Err(error) => {
            // The error response must be a well-formed HTTP response.
            let mut response = Vec::new();
            http::encode_http_error(&error, &mut response);
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let parsed = httparse::Response::new(&mut headers).parse(&response);
            assert!(
                matches!(parsed, Ok(httparse::Status::Complete(_))),
                "error response does not parse: {:?}",
                String::from_utf8_lossy(&response)
            );
            Outcome::Invalid
        }
    };
    // The router, percent-decoding and the body parser straight on the bytes, which a
    // mutated request rarely gets to.
    let text = String::from_utf8_lossy(buf);
    let path = text
        .split([' ', '?', '\r', '\n'])
        .find(|w| w.starts_with('/'))
        .unwrap_or(&text);
    for method in [http::Method::Delete, http::Method::Get, http::Method::Post] {
        let _ = measured(|| http::route(method, path));
    }
    let _ = measured(|| http::percent_decode(path));
    let body_at = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |at| at + 4);
    let _ = measured(|| http::parse_create_topic_body(&buf[body_at..]));
    outcome
}

// ---------------------------------------------------------------------------------------
// websocket
// ---------------------------------------------------------------------------------------

const WS_MESSAGE_MAX: usize = 1024;

/// An owned [`Event`], to compare what was sent with what was decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Got {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
    Fragment,
}

impl Got {
    fn of(event: &Event<'_>) -> Got {
        match *event {
            Event::Text(text) => Got::Text(text.to_owned()),
            Event::Binary(bytes) => Got::Binary(bytes.to_vec()),
            Event::Ping(bytes) => Got::Ping(bytes.to_vec()),
            Event::Pong(bytes) => Got::Pong(bytes.to_vec()),
            Event::Close(frame) => Got::Close(frame.map(|f| (f.code, f.reason.to_owned()))),
            Event::Fragment => Got::Fragment,
        }
    }
}

fn random_text(rng: &mut StdRng, max: usize) -> String {
    const PIECES: [&str; 8] = ["a", "Z", " ", "é", "€", "😀", "\"", "\u{0}"];
    let mut text = String::new();
    for _ in 0..small_len(rng, max) {
        text.push_str(PIECES[rng.gen_range(0..PIECES.len())]);
    }
    text
}

fn gen_websocket(rng: &mut StdRng, out: &mut Vec<u8>) {
    let at = out.len();
    let mut expected = Vec::new();
    for _ in 0..1 + small_len(rng, 3) {
        let mask: [u8; 4] = if rng.gen_ratio(1, 8) {
            [0; 4]
        } else {
            rng.gen()
        };
        match rng.gen_range(0..6) {
            0 | 1 => {
                let (opcode, payload, got) = if rng.gen_bool(0.5) {
                    let text = random_text(rng, 80);
                    (Opcode::Text, text.clone().into_bytes(), Got::Text(text))
                } else {
                    let bytes = random_bytes(rng, 300);
                    (Opcode::Binary, bytes.clone(), Got::Binary(bytes))
                };
                if rng.gen_bool(0.5) || payload.is_empty() {
                    websocket::encode_masked_frame(true, opcode, mask, &payload, out);
                } else {
                    // Fragmented anywhere (inside a UTF-8 character too), a ping in between.
                    let cut = rng.gen_range(0..payload.len());
                    websocket::encode_masked_frame(false, opcode, mask, &payload[..cut], out);
                    expected.push(Got::Fragment);
                    if rng.gen_bool(0.3) {
                        websocket::encode_masked_frame(true, Opcode::Ping, mask, b"p", out);
                        expected.push(Got::Ping(b"p".to_vec()));
                    }
                    websocket::encode_masked_frame(
                        true,
                        Opcode::Continuation,
                        mask,
                        &payload[cut..],
                        out,
                    );
                }
                expected.push(got);
            }
            2 | 3 => {
                let payload = random_bytes(rng, websocket::CONTROL_PAYLOAD_MAX);
                let (opcode, got) = if rng.gen_bool(0.5) {
                    (Opcode::Ping, Got::Ping(payload.clone()))
                } else {
                    (Opcode::Pong, Got::Pong(payload.clone()))
                };
                websocket::encode_masked_frame(true, opcode, mask, &payload, out);
                expected.push(got);
            }
            _ => {
                let mut payload = Vec::new();
                let got = if rng.gen_ratio(1, 4) {
                    Got::Close(None)
                } else {
                    let code =
                        [1000u16, 1001, 1003, 1007, 1008, 1011, 3000, 4999][rng.gen_range(0..8)];
                    let mut reason = random_text(rng, 30);
                    while reason.len() > websocket::CLOSE_REASON_BYTES_MAX {
                        reason.pop();
                    }
                    payload.extend_from_slice(&code.to_be_bytes());
                    payload.extend_from_slice(reason.as_bytes());
                    Got::Close(Some((code, reason)))
                };
                websocket::encode_masked_frame(true, Opcode::Close, mask, &payload, out);
                expected.push(got);
                break;
            }
        }
    }
    let (got, complete) = websocket_events(&out[at..]);
    assert!(complete, "valid frames did not decode: {got:?}");
    assert_eq!(got, expected, "decode(encode(frames)) differs");
    if rng.gen_ratio(1, 16) {
        // Truncated at every boundary: the events so far, then "incomplete", never an error.
        for end in at..out.len() {
            let (got, complete) = websocket_events(&out[at..end]);
            assert!(
                complete && expected.starts_with(&got),
                "prefix {}: {got:?}",
                end - at
            );
        }
    }
}

/// The events of a stream of valid client frames, and whether it ended on a frame boundary or
/// an incomplete frame (rather than an error).
fn websocket_events(frames: &[u8]) -> (Vec<Got>, bool) {
    let mut bytes = frames.to_vec();
    let mut decoder = Decoder::server(WS_MESSAGE_MAX);
    let mut got = Vec::new();
    let mut position = 0;
    while position < bytes.len() {
        match decoder.decode(&mut bytes[position..]) {
            Ok(Some((event, n))) => {
                got.push(Got::of(&event));
                position += n;
            }
            Ok(None) => break,
            Err(_) => return (got, false),
        }
    }
    (got, true)
}

/// Decodes frames until one is incomplete or invalid; the first frame's outcome and length.
fn websocket_stream(buf: &[u8], mut decoder: Decoder) -> (Outcome, Option<usize>) {
    let mut bytes = buf.to_vec();
    let mut first = None;
    let mut position = 0;
    let meter = Meter::start();
    loop {
        let (outcome, consumed) = match decoder.decode(&mut bytes[position..]) {
            Ok(Some((_, n))) => {
                assert!(n >= 2 && n <= buf.len() - position);
                (Outcome::Decoded, Some(n))
            }
            Ok(None) => (Outcome::Incomplete, None),
            Err(error) => {
                assert!([1002, 1007, 1009].contains(&error.close_code), "{error:?}");
                (Outcome::Invalid, None)
            }
        };
        first.get_or_insert((outcome, consumed));
        match consumed {
            Some(n) => position += n,
            None => break,
        }
    }
    meter.stop();
    first.unwrap_or((Outcome::Incomplete, None))
}

fn check_websocket(buf: &[u8]) -> Outcome {
    let (outcome, first_len) = websocket_stream(buf, Decoder::server(WS_MESSAGE_MAX));
    if let Some(n) = first_len {
        for prefix in [n - 1, n / 2, 1] {
            let mut bytes = buf[..prefix].to_vec();
            let mut decoder = Decoder::server(WS_MESSAGE_MAX);
            assert!(
                matches!(decoder.decode(&mut bytes), Ok(None)),
                "a prefix ({prefix} bytes) of a complete frame is not incomplete"
            );
        }
    }
    // The client side (unmasked server frames) on the same bytes.
    let _ = websocket_stream(buf, Decoder::client(WS_MESSAGE_MAX));
    outcome
}

// ---------------------------------------------------------------------------------------
// ws_fiber, ws_fastapi
// ---------------------------------------------------------------------------------------

fn json_value(rng: &mut StdRng, depth: usize) -> serde_json::Value {
    use serde_json::Value;
    match rng.gen_range(0..if depth < 3 { 9 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.gen()),
        2 => Value::from(boundary_u64(rng)),
        3 => Value::from(-(rng.gen::<i32>() as i64)),
        4 => Value::from(rng.gen::<f64>() * 1e10),
        5 => Value::String(topic_name(rng, true)),
        6 => Value::String(random_text(rng, 20)),
        7 => Value::Array(
            (0..small_len(rng, 4))
                .map(|_| json_value(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..small_len(rng, 4))
                .map(|_| (random_text(rng, 6), json_value(rng, depth + 1)))
                .collect(),
        ),
    }
}

/// A field's value: usually right, sometimes of the wrong type.
fn field(rng: &mut StdRng, right: serde_json::Value) -> serde_json::Value {
    if rng.gen_ratio(1, 6) {
        json_value(rng, 2)
    } else {
        right
    }
}

fn gen_ws_message(rng: &mut StdRng, out: &mut Vec<u8>, fiber: bool) {
    use serde_json::{json, Map, Value};
    let types: &[&str] = if fiber {
        &[
            "subscribe",
            "unsubscribe",
            "publish",
            "ping",
            "ack",
            "other",
        ]
    } else {
        &["subscribe", "unsubscribe", "publish", "ping", "other"]
    };
    let kind = types[rng.gen_range(0..types.len())];
    let mut message = Map::new();
    message.insert("type".into(), field(rng, json!(kind)));
    let optional = |rng: &mut StdRng, message: &mut Map<String, Value>, key: &str, value: Value| {
        if rng.gen_bool(0.5) {
            let value = field(rng, value);
            message.insert(key.into(), value);
        }
    };
    let topic = json!(topic_name(rng, kind == "subscribe"));
    if kind != "ping" {
        optional(rng, &mut message, "topic", topic);
        if rng.gen_ratio(1, 8) {
            message.remove("topic");
        } else {
            let topic = json!(topic_name(rng, kind == "subscribe"));
            let topic = field(rng, topic);
            message.insert("topic".into(), topic);
        }
    }
    let id = json!(random_text(rng, 10));
    optional(rng, &mut message, "request_id", id);
    match kind {
        "subscribe" => {
            let last_n = json!(rng.gen_range(0..2000u64));
            optional(rng, &mut message, "last_n", last_n);
            if fiber {
                optional(rng, &mut message, "client_id", json!("c1"));
                optional(rng, &mut message, "consumer", json!("durable_1"));
                optional(rng, &mut message, "group", json!("g-1"));
                optional(rng, &mut message, "ack", json!(true));
                let from_seq = json!(boundary_u64(rng));
                optional(rng, &mut message, "from_seq", from_seq);
                let seq = json!(rng.gen::<bool>());
                optional(rng, &mut message, "seq", seq);
            }
        }
        "publish" => {
            let payload = json_value(rng, 0);
            if fiber {
                let mut inner = Map::new();
                inner.insert("payload".into(), payload);
                if rng.gen_bool(0.5) {
                    let id = json!(random_text(rng, 8));
                    inner.insert("id".into(), field(rng, id));
                }
                message.insert("message".into(), field(rng, Value::Object(inner)));
            } else {
                message.insert("data".into(), payload);
            }
        }
        "ack" => {
            let seq = json!(boundary_u64(rng));
            message.insert("seq".into(), field(rng, seq));
        }
        _ => {}
    }
    let text = if rng.gen_bool(0.5) {
        serde_json::to_string(&message)
    } else {
        serde_json::to_string_pretty(&message)
    };
    let mut text = text.unwrap_or_default();
    // JSON that serde_json writes never has these; a client may send them.
    if rng.gen_ratio(1, 6) {
        let tricky = pick(
            rng,
            &[
                "\"type\":\"ping\",",
                "\"\\u0074ype\":\"ping\",",
                "\"topic\":\"a\",\"topic\":\"b\",",
                "\"last_n\":18446744073709551616,",
                "\"last_n\":1e400,",
                "\"seq\":-1,",
                "\"request_id\":\"\\ud800\",",
                "\"x\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],",
            ],
        );
        if text.starts_with('{') {
            text.insert_str(1, tricky);
        }
    }
    out.extend_from_slice(text.as_bytes());
}

fn gen_fiber(rng: &mut StdRng, out: &mut Vec<u8>) {
    gen_ws_message(rng, out, true);
}

fn gen_fastapi(rng: &mut StdRng, out: &mut Vec<u8>) {
    gen_ws_message(rng, out, false);
}

fn assert_json(bytes: &[u8]) {
    assert!(
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok(),
        "not JSON: {:?}",
        String::from_utf8_lossy(bytes)
    );
}

fn check_fiber(buf: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(buf);
    match measured(|| ws_fiber::parse_client_message(&text)) {
        Ok(_) => Outcome::Decoded,
        Err(error) => {
            let mut out = Vec::new();
            ws_fiber::encode_parse_error(&error, 1_700_000_000_000_000_000, &mut out);
            assert_json(&out);
            Outcome::Invalid
        }
    }
}

fn check_fastapi(buf: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(buf);
    match measured(|| ws_fastapi::parse_client_message(&text, ws_fastapi::LAST_N_MAX_DEFAULT)) {
        Ok(_) => Outcome::Decoded,
        Err(error) => {
            let mut out = Vec::new();
            ws_fastapi::encode_parse_error(&error, &mut out);
            assert_json(&out);
            Outcome::Invalid
        }
    }
}

// ---------------------------------------------------------------------------------------
// payload
// ---------------------------------------------------------------------------------------

/// `write_payload_json` then `payload_from_delivered` gives the payload back, except where
/// the mapping is ambiguous by design: a JSON-typed payload that is a JSON string or a
/// `{"$base64": ...}` object reads back as what it denotes.
fn check_payload_round_trip(payload: &[u8], content_type: Option<&[u8]>) {
    let mut delivered = Vec::new();
    let form = payload::write_payload_json(payload, content_type, &mut delivered);
    assert_json(&delivered);
    let text = std::str::from_utf8(&delivered).expect("delivered JSON is UTF-8");
    let back = payload::payload_from_delivered(text).expect("delivered JSON reads back");
    match form {
        payload::PayloadForm::Json => {
            let mut compact = Vec::new();
            payload::compact_json(
                std::str::from_utf8(payload).unwrap_or_default(),
                &mut compact,
            );
            if !compact.starts_with(b"\"") && !compact.starts_with(b"{\"$base64\"") {
                assert_eq!(
                    back,
                    payload::StoredPayload {
                        bytes: compact,
                        json: true
                    }
                );
            }
        }
        _ => assert_eq!(
            back,
            payload::StoredPayload {
                bytes: payload.to_vec(),
                json: false
            }
        ),
    }
}

fn gen_payload(rng: &mut StdRng, out: &mut Vec<u8>) {
    match rng.gen_range(0..4) {
        0 => out.extend_from_slice(json_value(rng, 0).to_string().as_bytes()),
        1 => out.extend_from_slice(random_text(rng, 40).as_bytes()),
        2 => out.extend_from_slice(&random_bytes(rng, 64)),
        _ => out.extend_from_slice(
            payload::derived_message_id(boundary_u64(rng), boundary_u64(rng)).as_bytes(),
        ),
    }
    for content_type in [None, Some(&b"application/json"[..])] {
        check_payload_round_trip(out, content_type);
    }
}

fn check_payload(buf: &[u8]) -> Outcome {
    let text = String::from_utf8_lossy(buf);
    let outcome = match measured(|| payload::payload_from_delivered(&text)) {
        Ok(_) => Outcome::Decoded,
        Err(_) => Outcome::Invalid,
    };
    if let Some(id) = measured(|| payload::parse_derived_message_id(&text)) {
        assert_eq!(payload::derived_message_id(id.epoch, id.seq), text);
    }
    let _ = measured(|| payload::is_json_content_type(buf));
    for content_type in [None, Some(&b"application/json; charset=utf-8"[..])] {
        check_payload_round_trip(buf, content_type);
    }
    outcome
}

// ---------------------------------------------------------------------------------------
// resp (requests)
// ---------------------------------------------------------------------------------------

fn command_name(rng: &mut StdRng) -> Vec<u8> {
    let top = &resp_commands::COMMANDS[rng.gen_range(0..resp_commands::COMMANDS.len())];
    top.name
        .bytes()
        .map(|b| {
            if rng.gen_bool(0.3) {
                b.to_ascii_uppercase()
            } else {
                b
            }
        })
        .collect()
}

fn resp_args(rng: &mut StdRng) -> Vec<Vec<u8>> {
    let mut args = vec![if rng.gen_ratio(9, 10) {
        command_name(rng)
    } else {
        random_bytes(rng, 12)
    }];
    let top = resp_commands::COMMANDS
        .iter()
        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(&args[0]));
    if let Some(top) = top.filter(|t| !t.subcommands.is_empty() && rng.gen_bool(0.8)) {
        let sub = &top.subcommands[rng.gen_range(0..top.subcommands.len())];
        args.push(
            sub.full_name
                .rsplit('|')
                .next()
                .unwrap_or_default()
                .as_bytes()
                .to_vec(),
        );
    }
    for _ in 0..small_len(rng, 5) {
        args.push(match rng.gen_range(0..4) {
            0 => topic_name(rng, true).into_bytes(),
            1 => random_bytes(rng, 40),
            2 => random_text(rng, 20).into_bytes(),
            _ => random_bytes(rng, 300),
        });
    }
    args
}

/// One inline line that `sdssplitargs` reads back as `args`: every argument double-quoted,
/// with the bytes that need it as `\xHH`.
fn encode_inline(args: &[Vec<u8>], out: &mut Vec<u8>) {
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        out.push(b'"');
        for &byte in arg {
            if byte.is_ascii_alphanumeric() || b" .-_:*?[]{}'".contains(&byte) {
                out.push(byte);
            } else {
                out.extend_from_slice(format!("\\x{byte:02x}").as_bytes());
            }
        }
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");
}

fn gen_resp(rng: &mut StdRng, out: &mut Vec<u8>) {
    for _ in 0..1 + small_len(rng, 2) {
        let args = resp_args(rng);
        let at = out.len();
        let kind = if rng.gen_ratio(3, 4) {
            resp::encode_array_header(out, args.len());
            for arg in &args {
                resp::encode_bulk(out, arg);
            }
            resp::RequestKind::Multibulk
        } else {
            encode_inline(&args, out);
            resp::RequestKind::Inline
        };
        let mut decoder = RequestDecoder::new(RequestLimits::default());
        let decoded = decoder
            .decode(&out[at..])
            .map(|done| done.map(|(request, n)| (request.kind(), request.to_vecs(), n)));
        assert_eq!(
            decoded,
            Ok(Some((kind, args, out.len() - at))),
            "decode(encode(request)) differs"
        );
        if rng.gen_ratio(1, 16) {
            for end in at..out.len() {
                let mut decoder = RequestDecoder::new(RequestLimits::default());
                assert!(
                    matches!(decoder.decode(&out[at..end]), Ok(None)),
                    "prefix {} of a request is not incomplete",
                    end - at
                );
            }
        }
    }
}

/// What decoding a stream gave: each request's arguments, then how it stopped.
#[derive(Debug, PartialEq, Eq)]
enum RespEnd {
    Incomplete,
    Error(resp::RequestError),
}

type RespRun = (Vec<(resp::RequestKind, Vec<Vec<u8>>)>, RespEnd);

/// Decodes `buf` as a stream; `steps` is `None` for all bytes at once, or the sizes in which
/// the bytes arrive.
fn resp_stream(buf: &[u8], limits: RequestLimits, steps: Option<&[usize]>) -> RespRun {
    let mut requests = Vec::new();
    let mut decoder = RequestDecoder::new(limits);
    let mut at = 0;
    let mut step = 0;
    let mut end = match steps {
        None => buf.len(),
        Some(steps) => steps[0].min(buf.len()),
    };
    let meter = Meter::start();
    let stop = loop {
        let result = decoder.decode(&buf[at..end]);
        match result {
            Ok(Some((request, n))) => {
                assert!(n >= 1 && n <= end - at, "consumed {n} of {}", end - at);
                // Pausing the meter is not possible; these copies are charged, and small.
                requests.push((request.kind(), request.to_vecs()));
                if !request.is_empty() {
                    let _ = resp_commands::resolve(&request, false);
                }
                at += n;
            }
            Ok(None) if end == buf.len() => break RespEnd::Incomplete,
            Ok(None) => {
                step += 1;
                let steps = steps.unwrap_or(&[1]);
                end = (end + steps[step % steps.len()]).min(buf.len());
            }
            Err(error) => break RespEnd::Error(error),
        }
    };
    meter.stop();
    (requests, stop)
}

fn check_resp(buf: &[u8]) -> Outcome {
    let tiny = RequestLimits {
        bulk_bytes_max: 16,
        multibulk_count_max: 4,
        inline_bytes_max: 32,
    };
    let mut outcome = Outcome::Incomplete;
    // Arrival in pieces, sizes drawn from the input so that a failure replays.
    let seed = buf.iter().fold(buf.len(), |h, &b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    let steps = [1 + seed % 3, 1 + seed % 17, 1, 64, 5];
    for limits in [RequestLimits::for_message_bytes_max(4096), tiny] {
        let whole = resp_stream(buf, limits, None);
        let pieces = resp_stream(buf, limits, Some(&steps));
        assert_eq!(
            whole, pieces,
            "the decode depends on how the bytes were split"
        );
        if limits != tiny {
            outcome = match whole {
                (requests, _) if !requests.is_empty() => Outcome::Decoded,
                (_, RespEnd::Error(_)) => Outcome::Invalid,
                _ => Outcome::Incomplete,
            };
        }
    }
    outcome
}

// ---------------------------------------------------------------------------------------
// resp replies
// ---------------------------------------------------------------------------------------

fn line_text(rng: &mut StdRng) -> Vec<u8> {
    let mut text = random_bytes(rng, 30);
    for byte in &mut text {
        if *byte == b'\r' || *byte == b'\n' {
            *byte = b' ';
        }
    }
    text
}

fn reply(rng: &mut StdRng, depth: usize) -> Reply {
    let items = |rng: &mut StdRng| {
        (0..small_len(rng, 4))
            .map(|_| reply(rng, depth + 1))
            .collect()
    };
    match rng.gen_range(0..if depth < 3 { 14 } else { 10 }) {
        0 => Reply::Simple(line_text(rng)),
        1 => Reply::Error(line_text(rng)),
        2 => Reply::Integer(boundary_u64(rng) as i64),
        3 => Reply::Bulk(random_bytes(rng, 100)),
        4 => Reply::Null,
        5 => Reply::NullArray,
        6 => Reply::Double(match rng.gen_range(0..4) {
            0 => f64::INFINITY,
            1 => -0.0,
            2 => rng.gen::<f64>() * 10f64.powi(rng.gen_range(-30..30)),
            _ => -(rng.gen::<u32>() as f64),
        }),
        7 => Reply::Boolean(rng.gen()),
        8 => Reply::Verbatim {
            format: *b"txt",
            text: random_bytes(rng, 40),
        },
        9 => Reply::Bulk(Vec::new()),
        10 => Reply::Array(items(rng)),
        11 => Reply::Map(
            (0..small_len(rng, 3))
                .map(|_| (reply(rng, depth + 1), reply(rng, depth + 1)))
                .collect(),
        ),
        12 => Reply::Set(items(rng)),
        _ => Reply::Push(items(rng)),
    }
}

fn gen_resp_reply(rng: &mut StdRng, out: &mut Vec<u8>) {
    if rng.gen_ratio(1, 8) {
        // Nested aggregates claiming many elements each, as a hostile server would send them
        // to make a client allocate for elements that never come.
        for _ in 0..small_len(rng, 80) {
            out.push(b"*%~>"[rng.gen_range(0..4)]);
            out.extend_from_slice(pick(
                rng,
                &[
                    &b"1"[..],
                    b"3",
                    b"1000",
                    b"65535",
                    b"1048576",
                    b"2147483647",
                ],
            ));
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"_\r\n");
        return;
    }
    let value = reply(rng, 0);
    let version = if rng.gen_bool(0.5) {
        RespVersion::Resp2
    } else {
        RespVersion::Resp3
    };
    let at = out.len();
    value.encode(version, out);
    assert_eq!(
        resp::decode_reply(&out[at..]),
        Ok(Some((value.as_seen_by(version), out.len() - at))),
        "decode_reply(encode(reply)) differs"
    );
}

fn check_resp_reply(buf: &[u8]) -> Outcome {
    let mut at = 0;
    let mut first = None;
    loop {
        let rest = &buf[at..];
        let outcome = match measured(|| resp::decode_reply(rest)) {
            Ok(Some((value, n))) => {
                assert!(n >= 3 && n <= rest.len());
                // Re-encoding reaches a fixed point at once: what the encoder writes decodes
                // whole and encodes to the same bytes. (Not `decode(encode(x)) == x`: the
                // encoder turns a `\n` inside a line into a space, and RESP3 has no null array.)
                let mut once = Vec::new();
                value.encode(RespVersion::Resp3, &mut once);
                let Ok(Some((again, m))) = resp::decode_reply(&once) else {
                    panic!(
                        "an encoded reply does not decode: {:?}",
                        String::from_utf8_lossy(&once)
                    );
                };
                assert_eq!(m, once.len());
                let mut twice = Vec::new();
                again.encode(RespVersion::Resp3, &mut twice);
                assert_eq!(twice, once, "encoding is not stable");
                at += n;
                Some(Outcome::Decoded)
            }
            Ok(None) => None,
            Err(_) => {
                first.get_or_insert(Outcome::Invalid);
                break;
            }
        };
        match outcome {
            Some(outcome) => {
                first.get_or_insert(outcome);
            }
            None => break,
        }
        if at == buf.len() {
            break;
        }
    }
    first.unwrap_or(Outcome::Incomplete)
}

// ---------------------------------------------------------------------------------------
// glob
// ---------------------------------------------------------------------------------------

const GLOB_CHARS: &[u8] = b"ab*?[]^-\\c.";

fn gen_glob(rng: &mut StdRng, out: &mut Vec<u8>) {
    let pattern: Vec<u8> = (0..small_len(rng, 24))
        .map(|_| GLOB_CHARS[rng.gen_range(0..GLOB_CHARS.len())])
        .collect();
    let mut subject = Vec::new();
    if rng.gen_bool(0.6) {
        // An instance of the pattern, so that matches are common.
        let mut i = 0;
        while let Some(&byte) = pattern.get(i) {
            match byte {
                b'*' => {
                    (0..small_len(rng, 4)).for_each(|_| subject.push(b"abc."[rng.gen_range(0..4)]))
                }
                b'?' => subject.push(b"abc"[rng.gen_range(0..3)]),
                b'\\' => {
                    i += 1;
                    subject.push(pattern.get(i).copied().unwrap_or(b'\\'));
                }
                b'[' => {
                    let close = pattern[i..]
                        .iter()
                        .position(|&b| b == b']')
                        .map_or(pattern.len(), |at| i + at);
                    subject.push(pattern.get(i + 1).copied().unwrap_or(b'a'));
                    i = close;
                }
                other => subject.push(other),
            }
            i += 1;
        }
    } else {
        subject = (0..small_len(rng, 24))
            .map(|_| GLOB_CHARS[rng.gen_range(0..GLOB_CHARS.len())])
            .collect();
    }
    out.push(pattern.len() as u8);
    out.extend_from_slice(&pattern);
    out.extend_from_slice(&subject);
}

fn check_glob(buf: &[u8]) -> Outcome {
    let Some((&split, rest)) = buf.split_first() else {
        return Outcome::Incomplete;
    };
    let (pattern, subject) = rest.split_at(usize::from(split).min(rest.len()));
    let matched = measured(|| glob_match(pattern, subject));
    let prefix = measured(|| literal_prefix(pattern));
    if matched {
        assert!(
            subject.starts_with(&prefix),
            "a match does not start with the literal prefix {prefix:?}"
        );
    }
    // The index against a plain scan of its patterns.
    let patterns: [&[u8]; 5] = [pattern, subject, b"*", b"a*", &[&*prefix, b"*"].concat()];
    let mut index = GlobIndex::new(4);
    for (value, pattern) in patterns.iter().enumerate() {
        index.insert(pattern, value);
    }
    for probe in [subject, pattern, &prefix] {
        let mut found = index.matches(probe).to_vec();
        found.sort_unstable();
        let expected: Vec<usize> = (0..patterns.len())
            .filter(|&v| glob_match(patterns[v], probe))
            .collect();
        assert_eq!(
            found, expected,
            "GlobIndex disagrees with glob_match on {probe:?}"
        );
    }
    if matched {
        Outcome::Decoded
    } else {
        Outcome::Invalid
    }
}

// ---------------------------------------------------------------------------------------
// resp_channel
// ---------------------------------------------------------------------------------------

fn gen_channel(rng: &mut StdRng, out: &mut Vec<u8>) {
    const CHANNEL_CHARS: &[u8] = b"ab:/.-_ Z09\x00\xff#";
    let len = if rng.gen_ratio(1, 20) {
        rng.gen_range(60..300)
    } else {
        small_len(rng, 40)
    };
    for _ in 0..len {
        if rng.gen_ratio(1, 20) {
            out.extend_from_slice(pick(rng, &[&b"--3a"[..], b"--", b"--zz", b"--2F"]));
        } else {
            out.push(CHANNEL_CHARS[rng.gen_range(0..CHANNEL_CHARS.len())]);
        }
    }
    let channel = out.clone();
    if let Ok(topic) = channel_to_topic(&channel) {
        assert_eq!(
            &*topic_to_channel(&topic),
            &channel[..],
            "topic_to_channel(channel_to_topic(c)) differs"
        );
    }
}

fn check_channel(buf: &[u8]) -> Outcome {
    let outcome = match measured(|| channel_to_topic(buf)) {
        Ok(topic) => {
            assert_eq!(
                topic::parse_subscription(topic.as_bytes()).map(|(_, k)| k),
                Ok(SubjectKind::Exact)
            );
            assert_eq!(
                &*measured(|| topic_to_channel(&topic)),
                buf,
                "not reversible"
            );
            Outcome::Decoded
        }
        Err(_) => Outcome::Invalid,
    };
    let text = String::from_utf8_lossy(buf);
    let _ = measured(|| topic_to_channel(&text));
    outcome
}

// ---------------------------------------------------------------------------------------
// resp_commands
// ---------------------------------------------------------------------------------------

fn gen_commands(rng: &mut StdRng, out: &mut Vec<u8>) {
    let args = resp_args(rng);
    resp::encode_array_header(out, args.len());
    for arg in &args {
        resp::encode_bulk(out, arg);
    }
}

/// An error text must reach the client as one error reply, whatever bytes it quotes.
fn assert_one_error_reply(text: &[u8]) {
    let mut reply = Vec::new();
    resp::encode_error(&mut reply, text);
    assert!(
        matches!(resp::decode_reply(&reply), Ok(Some((Reply::Error(_), n))) if n == reply.len()),
        "error text is not one error reply: {:?}",
        String::from_utf8_lossy(&reply)
    );
}

fn check_commands(buf: &[u8]) -> Outcome {
    let mut decoder = RequestDecoder::new(RequestLimits::default());
    match decoder.decode(buf) {
        Ok(Some((request, _))) if !request.is_empty() => check_args(&request),
        _ => check_args(&buf.split(|&b| b == b' ').collect::<Vec<_>>()[..]),
    }
}

fn check_args<A: resp_commands::ArgList + ?Sized>(args: &A) -> Outcome {
    let mut outcome = Outcome::Decoded;
    for subscribed in [false, true] {
        match measured(|| resp_commands::resolve(args, subscribed)) {
            Ok(spec) => assert!(spec.arity_ok(args.arg_count())),
            Err(Refusal::Error(text)) => {
                assert_one_error_reply(&text);
                outcome = Outcome::Invalid;
            }
            Err(Refusal::Close) => outcome = Outcome::Invalid,
        }
    }
    let _ = measured(|| resp_commands::lookup(args));
    for index in 0..args.arg_count().min(4) {
        let arg = args.arg_at(index).unwrap_or_default();
        let _ = measured(|| resp_commands::select_database(arg));
        let _ = resp_commands::client_attribute_ok(arg);
        assert_one_error_reply(&measured(|| resp_commands::hello_option_error(arg)));
        assert_one_error_reply(&measured(|| resp_commands::setinfo_option_error(arg)));
        assert_one_error_reply(&measured(|| resp_commands::setinfo_value_error(arg)));
        assert_one_error_reply(&measured(|| {
            resp_commands::unknown_subcommand_error(arg, arg)
        }));
    }
    outcome
}

// ---------------------------------------------------------------------------------------
// The targets
// ---------------------------------------------------------------------------------------

/// A dictionary of byte-string tokens of any lengths.
macro_rules! dict {
    ($($token:expr),* $(,)?) => {
        {
            const TOKENS: &[&[u8]] = &[$($token),*];
            TOKENS
        }
    };
}

macro_rules! fuzz_target {
    ($test:ident, $target:expr) => {
        #[test]
        fn $test() {
            engine::run(&$target);
        }
    };
}

fuzz_target!(
    fuzz_native,
    Target {
        name: "native",
        generate: gen_native,
        check: check_native,
        // Decoding borrows; only SUBSCRIBE options own a consumer or group name (<= 64 B).
        alloc_per_byte: 0,
        alloc_fixed: 256,
        dictionary: dict![
            b"CBUS",
            &[0, 0, 0, 8],
            &[0, 0, 0, 0],
            &[0x82],
            &[0x02],
            &[0x03],
            &[0x06],
            &[0xff; 4]
        ],
    }
);

fuzz_target!(
    fuzz_topic,
    Target {
        name: "topic",
        generate: gen_topic,
        check: check_topic,
        // Topic validation runs on every publish and never allocates.
        alloc_per_byte: 0,
        alloc_fixed: 0,
        dictionary: dict![b".", b"*", b">", b"$", b"..", b" ", b"\xff"],
    }
);

fuzz_target!(
    fuzz_subscribe_options,
    Target {
        name: "subscribe_options",
        generate: gen_subscribe_options,
        check: check_subscribe_options,
        // One consumer or group name, at most 64 bytes.
        alloc_per_byte: 0,
        alloc_fixed: 128,
        dictionary: dict![
            &[1, 0, 9],
            &[2, 0, 64],
            &[3, 0, 10],
            &[4, 0, 1],
            &[5, 0, 8],
            &[0xff, 0xff]
        ],
    }
);

fuzz_target!(
    fuzz_topic_options,
    Target {
        name: "topic_options",
        generate: gen_topic_options,
        check: check_topic_options,
        alloc_per_byte: 0,
        alloc_fixed: 0,
        dictionary: dict![&[1, 0, 8], &[2, 0, 8], &[3, 0, 8], &[0xff, 0xff]],
    }
);

fuzz_target!(
    fuzz_http,
    Target {
        name: "http",
        generate: gen_http,
        check: check_http,
        // httparse parses in place; a percent-decoded name, a JSON error text or an owned
        // (unescaped) topic name are at most a few times the input.
        alloc_per_byte: 4,
        alloc_fixed: 4096,
        dictionary: dict![
            b"\r\n",
            b"\r\n\r\n",
            b"Content-Length: ",
            b"Transfer-Encoding: chunked\r\n",
            b"Host: h\r\n",
            b"HTTP/1.1",
            b"%",
            b"/v1/topics/",
            b"\"name\"",
            b"\\u0000",
            b"Expect: 100-continue\r\n",
        ],
    }
);

fuzz_target!(
    fuzz_websocket,
    Target {
        name: "websocket",
        generate: gen_websocket,
        check: check_websocket,
        // A fragmented message is copied once into the decoder (grown by doubling).
        alloc_per_byte: 4,
        alloc_fixed: 1024,
        dictionary: dict![
            &[0x81, 0xfe],
            &[0x82, 0xff],
            &[0x01, 0x80],
            &[0x80, 0x80],
            &[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8],
            &[0x89, 0x80],
            &[0x7f; 8]
        ],
    }
);

const JSON_TOKENS: &[&[u8]] = dict![
    b"\"type\"",
    b"\"topic\"",
    b"\"subscribe\"",
    b"\"publish\"",
    b"\"message\"",
    b"\"payload\"",
    b"\"data\"",
    b"\"last_n\"",
    b"\"request_id\"",
    b"\"seq\"",
    b"null",
    b"[[[[",
    b"\\u0000",
    b"\\ud800",
    b"1e999",
    b"-0",
    b"18446744073709551616",
    b",",
    b":",
    b"{",
    b"}",
];

fuzz_target!(
    fuzz_ws_fiber,
    Target {
        name: "ws_fiber",
        generate: gen_fiber,
        check: check_fiber,
        // Fields are borrowed; only escaped strings and error texts are owned.
        alloc_per_byte: 4,
        alloc_fixed: 4096,
        dictionary: JSON_TOKENS,
    }
);

fuzz_target!(
    fuzz_ws_fastapi,
    Target {
        name: "ws_fastapi",
        generate: gen_fastapi,
        check: check_fastapi,
        alloc_per_byte: 4,
        alloc_fixed: 4096,
        dictionary: JSON_TOKENS,
    }
);

fuzz_target!(
    fuzz_payload,
    Target {
        name: "payload",
        generate: gen_payload,
        check: check_payload,
        // The unescaped string, compacted JSON or base64-decoded bytes: each at most the input.
        alloc_per_byte: 4,
        alloc_fixed: 1024,
        dictionary: JSON_TOKENS,
    }
);

fuzz_target!(
    fuzz_resp,
    Target {
        name: "resp",
        generate: gen_resp,
        check: check_resp,
        // 24 bytes of argument table per argument, and an inline argument can be 2 bytes
        // (`a `), tables grown by doubling: up to 24 per input byte, plus the inline scratch and
        // the test's own copies of the arguments.
        alloc_per_byte: 32,
        alloc_fixed: 4096,
        dictionary: dict![
            b"\r\n",
            b"*",
            b"$",
            b"*1\r\n",
            b"$0\r\n\r\n",
            b"\"",
            b"'",
            b"\\x",
            b"\0",
            b"*-1\r\n"
        ],
    }
);

fuzz_target!(
    fuzz_resp_reply,
    Target {
        name: "resp_reply",
        generate: gen_resp_reply,
        check: check_resp_reply,
        // An owned tree: 32 bytes per `Reply` (64 per map pair), each element at least
        // 3 input bytes, vectors grown by doubling.
        alloc_per_byte: 32,
        alloc_fixed: 4096,
        dictionary: dict![
            b"\r\n",
            b"*",
            b"%",
            b"~",
            b">",
            b"$",
            b"=",
            b",",
            b"#t",
            b"_",
            b"*65535\r\n",
            b"$-1\r\n"
        ],
    }
);

fuzz_target!(
    fuzz_glob,
    Target {
        name: "glob",
        generate: gen_glob,
        check: check_glob,
        // Matching allocates nothing; the literal prefix is at most the pattern (grown by
        // doubling when an escape makes it owned).
        alloc_per_byte: 2,
        alloc_fixed: 256,
        dictionary: dict![b"*", b"?", b"[", b"]", b"[^", b"\\", b"-", b"****"],
    }
);

fuzz_target!(
    fuzz_resp_channel,
    Target {
        name: "resp_channel",
        generate: gen_channel,
        check: check_channel,
        // At most one topic's worth (255 bytes, grown by doubling) whatever the channel, and
        // the channel back.
        alloc_per_byte: 2,
        alloc_fixed: 1024,
        dictionary: dict![b"--", b"--3a", b"--2f", b".", b":", b"/"],
    }
);

fuzz_target!(
    fuzz_resp_commands,
    Target {
        name: "resp_commands",
        generate: gen_commands,
        check: check_commands,
        // Error texts quote an argument: some cut to 128 bytes, some in full as Redis does
        // (`HELLO` options, `CLIENT SETINFO` values, a container name uppercased through a
        // copy), grown by doubling.
        alloc_per_byte: 4,
        alloc_fixed: 2048,
        dictionary: dict![
            b"subscribe",
            b"PUBLISH",
            b"client",
            b"setname",
            b"pubsub",
            b"channels",
            b"hello",
            b"3",
            b"host:",
            b"POST"
        ],
    }
);

#[test]
fn nested_reply_counts_allocate_nothing_for_elements_not_received() {
    // Found by the resp_reply target: 88 KB held for a 317-byte input, now fixed.
    let mut nested = b"*1048576\r\n".repeat(resp::REPLY_DEPTH_MAX - 1);
    nested.extend_from_slice(b"%65535\r\n_\r\n");
    let baseline = alloc::restart_peak();
    assert_eq!(resp::decode_reply(&nested), Ok(None));
    let peak = alloc::peak_since(baseline);
    assert!(
        peak <= 32 * nested.len() + 4096,
        "{peak} bytes held for {} bytes",
        nested.len()
    );
}

#[test]
fn input_hex_is_what_a_report_shows() {
    assert_eq!(engine::hex(&[0x00, 0xab, 0x10]), "00ab10");
}
