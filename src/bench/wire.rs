//! What the bench says on the wire to each target, as small sans-IO codecs: bytes in, events
//! out. corebus frames go through [`crate::protocol::native`]; Redis (RESP2 `SUBSCRIBE` /
//! `PUBLISH`) and NATS (core protocol `CONNECT`/`SUB`/`PUB`/`MSG`/`PING`/`PONG`) are written
//! here, limited to what a pub/sub load generator needs; corebus's WebSocket port (both JSON
//! dialects) and NATS over WebSocket (the same NATS protocol in binary frames) are in [`ws`],
//! framed by [`crate::protocol::websocket`].
//!
//! Every target gets the same load: the same topic names, the same payload bytes, one
//! connection per publisher and per subscriber. Publishes are fire-and-forget where the target
//! allows it (corebus quiet publishes, NATS `verbose: false`), with a `PING` after each batch so
//! the publisher knows what the server has read; Redis answers every `PUBLISH`, and the
//! WebSocket dialects ack every publish, and those replies are read and counted instead.
//! With `--unwindowed` the driver sends no PING until the end and waits for no reply (see
//! [`super::driver`]); the codecs are the same.
//!
//! A WebSocket payload is a JSON string, so its header is written in hex
//! ([`PayloadHeader::encode_hex`]) and the string's characters stand for the payload bytes:
//! `--size` is the string's length, and a subscriber reads the header back from its start.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use super::accounting::{PayloadHeader, HEADER_LEN, HEX_HEADER_LEN};
use crate::protocol::native::{self, AckKind, Frame, FRAME_OVERHEAD_MAX, PROTOCOL_VERSION};
use crate::protocol::subscribe_options::SubscribeOptions;
use crate::protocol::websocket::{self, Opcode};

/// Which JSON dialect of corebus's WebSocket port, chosen by the URL's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WsDialect {
    /// `/v1/ws`, the Go/Fiber dialect.
    Fiber,
    /// `/ws`, the FastAPI dialect.
    FastApi,
}

impl WsDialect {
    pub fn path(self) -> &'static str {
        match self {
            WsDialect::Fiber => "/v1/ws",
            WsDialect::FastApi => "/ws",
        }
    }
}

/// Which server the bench talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Target {
    Corebus,
    Redis,
    Nats,
    /// corebus's HTTP port, upgraded to a WebSocket at the dialect's path.
    WebSocket {
        dialect: WsDialect,
    },
    /// nats-server's `websocket` listener: the NATS protocol in binary frames.
    NatsWs,
    /// corebus's embedded bus started inside the bench process: no sockets, publishers and
    /// subscriptions are in-process handles ([`super::inproc`]).
    Inproc,
}

impl Target {
    pub fn scheme(self) -> &'static str {
        match self {
            Target::Corebus => "corebus",
            Target::Redis => "redis",
            Target::Nats => "nats",
            Target::WebSocket { .. } => "ws",
            Target::NatsWs => "nats+ws",
            Target::Inproc => "inproc",
        }
    }

    /// The name in reports and `--json` output (the scheme, and the dialect for WebSocket).
    pub fn name(self) -> &'static str {
        match self {
            Target::WebSocket {
                dialect: WsDialect::Fiber,
            } => "ws-fiber",
            Target::WebSocket {
                dialect: WsDialect::FastApi,
            } => "ws-fastapi",
            Target::NatsWs => "nats-ws",
            other => other.scheme(),
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Target::Corebus => 7070,
            Target::Redis => 6379,
            Target::Nats => 4222,
            Target::WebSocket { .. } | Target::NatsWs => 8080,
            Target::Inproc => 0,
        }
    }

    /// Whether the target is corebus itself, over its native port or in-process: the
    /// corebus-only features (acks, groups, replay starts, prefill) work there.
    pub fn is_corebus(self) -> bool {
        matches!(self, Target::Corebus | Target::Inproc)
    }

    /// Whether publishers confirm batches with a PING (corebus, NATS) rather than per-publish
    /// replies (Redis PUBLISH replies, WebSocket acks).
    pub fn confirms_with_ping(self) -> bool {
        !self.confirms_each_publish()
    }

    /// Whether the target answers every publish (a reply, an ack or an error).
    pub fn confirms_each_publish(self) -> bool {
        matches!(self, Target::Redis | Target::WebSocket { .. })
    }

    /// The most publishes one connection may have unanswered: a WebSocket session refuses
    /// requests past [`crate::shard::conn_ws::REQUESTS_IN_FLIGHT_MAX`] waiting for their
    /// answer, so the publisher's window stops there whatever `--pipeline` says.
    pub fn in_flight_max(self) -> u64 {
        match self {
            Target::WebSocket { .. } => crate::shard::conn_ws::REQUESTS_IN_FLIGHT_MAX as u64,
            _ => u64::MAX,
        }
    }

    /// Whether the connection is a WebSocket (an upgrade first, then frames: [`ws::Link`]).
    pub fn over_websocket(self) -> bool {
        matches!(self, Target::WebSocket { .. } | Target::NatsWs)
    }

    /// Whether payloads carry their header in hex ([`PayloadHeader::encode_hex`]).
    pub fn hex_stamps(self) -> bool {
        matches!(self, Target::WebSocket { .. })
    }

    /// Bytes of the header at the start of each payload: `--size` must be at least this.
    pub fn stamp_len(self) -> usize {
        if self.hex_stamps() {
            HEX_HEADER_LEN
        } else {
            HEADER_LEN
        }
    }

    /// The header of a delivered payload.
    pub fn decode_stamp(self, payload: &[u8]) -> Option<PayloadHeader> {
        if self.hex_stamps() {
            PayloadHeader::decode_hex(payload)
        } else {
            PayloadHeader::decode(payload)
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Target> for String {
    fn from(target: Target) -> String {
        target.name().to_string()
    }
}

impl TryFrom<String> for Target {
    type Error = String;

    fn try_from(name: String) -> Result<Target, String> {
        [
            Target::Corebus,
            Target::Redis,
            Target::Nats,
            Target::WebSocket {
                dialect: WsDialect::Fiber,
            },
            Target::WebSocket {
                dialect: WsDialect::FastApi,
            },
            Target::NatsWs,
            Target::Inproc,
        ]
        .into_iter()
        .find(|t| t.name() == name)
        .ok_or_else(|| format!("unknown target {name:?}"))
    }
}

/// A parsed `--target`: `corebus://host:port`, `redis://host:port`, `nats://host:port`,
/// `ws://host:port/v1/ws` or `ws://host:port/ws`, `nats+ws://host:port`, or a bare
/// `host:port` (corebus). A missing port takes the target's usual one.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub target: Target,
    pub addr: SocketAddr,
    /// `host:port` as given (with the default port added), for an HTTP `Host` header.
    pub authority: String,
    /// The target as given, for reports.
    pub text: String,
}

pub fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    if matches!(text, "inproc" | "inproc://") {
        return Ok(Endpoint {
            target: Target::Inproc,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            authority: String::new(),
            text: "inproc".into(),
        });
    }
    let (target, rest) = match text.split_once("://") {
        Some(("corebus", rest)) => (Target::Corebus, rest),
        Some(("redis", rest)) => (Target::Redis, rest),
        Some(("nats", rest)) => (Target::Nats, rest),
        Some(("ws", rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let dialect = match path {
                "/v1/ws" => WsDialect::Fiber,
                "/ws" => WsDialect::FastApi,
                _ => {
                    return Err(format!(
                        "target `{text}`: a ws:// target's path picks the dialect, /v1/ws \
                         (Go/Fiber) or /ws (FastAPI), got `{path}`"
                    ))
                }
            };
            (Target::WebSocket { dialect }, authority)
        }
        Some(("nats+ws", rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            if !matches!(path, "" | "/") {
                return Err(format!(
                    "target `{text}`: a nats+ws:// target has no path (nats-server's websocket \
                     listener serves /), got `{path}`"
                ));
            }
            (Target::NatsWs, authority)
        }
        Some(("wss", _)) => {
            return Err(format!(
                "target `{text}`: wss:// (TLS) is not supported; the bench speaks plain ws://"
            ))
        }
        Some((scheme, _)) => {
            return Err(format!(
                "unknown target scheme `{scheme}` (corebus, redis, nats, ws or nats+ws)"
            ))
        }
        None => (Target::Corebus, text),
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(format!("target `{text}` has no host"));
    }
    // `[::1]` has colons but no port; `[::1]:5` and `host:5` have one.
    let has_port = match rest.strip_prefix('[') {
        Some(bracketed) => bracketed
            .split_once(']')
            .is_some_and(|(_, after)| after.starts_with(':')),
        None => rest.contains(':'),
    };
    let with_port = if has_port {
        rest.to_string()
    } else {
        format!("{rest}:{}", target.default_port())
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve target `{text}`: {e}"))?
        .next()
        .ok_or_else(|| format!("target `{text}` resolves to no address"))?;
    Ok(Endpoint {
        target,
        addr,
        authority: with_port,
        text: text.to_string(),
    })
}

/// The topic names of one run: `bench.<run>.t<index>`, valid for all three targets. The run tag
/// keeps concurrent runs against one server apart.
pub fn topic_name(run_tag: &str, index: u32) -> String {
    format!("bench.{run_tag}.t{index}")
}

/// The index in a name made by [`topic_name`]: the digits after the last `.t`.
pub fn topic_index_from_name(name: &[u8]) -> Option<u32> {
    let dot = name.iter().rposition(|&b| b == b'.')?;
    let digits = name.get(dot + 1..)?.strip_prefix(b"t")?;
    parse_u32(digits)
}

fn parse_u32(digits: &[u8]) -> Option<u32> {
    parse_u64(digits).and_then(|value| u32::try_from(value).ok())
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut value: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u64::from(b - b'0');
    }
    Some(value)
}

/// One thing a server said, borrowed from the read buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A delivered message. `topic` is the topic index the wire names (corebus subscription id,
    /// NATS sid, Redis channel name), `None` if it names none of ours.
    Message {
        topic: Option<u32>,
        payload: &'a [u8],
        /// corebus: the message's sequence number in its topic (what an ACK names); 0 for
        /// the other targets.
        seq: u64,
        /// corebus: 1 on the first delivery, more on a redelivery; 1 for the other targets.
        delivery_count: u16,
    },
    /// A command succeeded: corebus OK (with its data), Redis `+OK`, NATS `+OK` (no data).
    Ok(&'a [u8]),
    /// The WebSocket upgrade's `101` arrived: send what [`ws::Link::hold_until_upgraded`] held.
    Upgraded,
    /// Redis confirmed one channel of a SUBSCRIBE.
    Subscribed,
    /// Redis answered a PUBLISH with the number of receivers.
    Published(i64),
    /// The answer to our PING.
    Pong,
    /// The server pings us (NATS); answer with [`encode_pong`].
    ServerPing,
    /// A WebSocket ping frame with this payload; answer with [`ws::encode_pong_frame`].
    WsPing(&'a [u8]),
    /// A WebSocket ack: of a subscribe during set-up, of a publish afterwards (each publish
    /// gets one, or an error).
    Acked,
    /// corebus dropped this many messages for a slow subscription.
    Dropped(u64),
    /// corebus (v2) says `missed` messages subscription `topic` asked for were already
    /// evicted (a replay start too far back, or a durable consumer's backlog outrun by the
    /// ring).
    Gap { topic: Option<u32>, missed: u64 },
    /// corebus confirmed a publish the bench sent with [`PublishTemplate::encode_confirmed`]:
    /// `tag` as given there, `seq` the sequence number the topic gave the message.
    Sequenced { tag: u32, seq: u64 },
    /// The server reported an error.
    Error(String),
    /// Anything else the bench does not act on (NATS INFO, unexpected replies).
    Ignored,
}

/// A protocol violation: the stream cannot be followed any more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Decodes one event at the start of `buf`: `Ok(None)` while more bytes are needed, else the
/// event and how many bytes it took. `frame_max` bounds a corebus frame.
pub fn decode(
    target: Target,
    buf: &[u8],
    frame_max: usize,
) -> Result<Option<(Event<'_>, usize)>, WireError> {
    match target {
        Target::Corebus => decode_corebus(buf, frame_max),
        Target::Redis => resp::decode_event(buf),
        Target::Nats => nats::decode_event(buf),
        // The handshake and the framing keep state: see [`ws::Link::decode`].
        Target::WebSocket { .. } | Target::NatsWs => Err(WireError(
            "a WebSocket connection decodes through its ws::Link".into(),
        )),
        Target::Inproc => Err(WireError(
            "the in-process target has no wire (see bench::inproc)".into(),
        )),
    }
}

fn decode_corebus(buf: &[u8], frame_max: usize) -> Result<Option<(Event<'_>, usize)>, WireError> {
    let (frame, used) = match native::decode(buf, frame_max) {
        Ok(Some(decoded)) => decoded,
        Ok(None) => return Ok(None),
        Err(native::DecodeError::Fatal { reason, .. }) => {
            return Err(WireError(format!("corebus stream: {reason}")))
        }
        Err(native::DecodeError::Invalid {
            frame_len, reason, ..
        }) => {
            return Ok(Some((
                Event::Error(format!("undecodable frame from the broker: {reason}")),
                frame_len,
            )))
        }
    };
    let event = match frame {
        Frame::Msg {
            sub_id,
            payload,
            seq,
            delivery_count,
            ..
        } => Event::Message {
            topic: Some(sub_id),
            payload,
            seq,
            delivery_count,
        },
        Frame::Ok { request_id, data } if request_id & CONFIRM_ID_BIT != 0 => {
            let seq = data
                .first_chunk::<8>()
                .map(|bytes| u64::from_be_bytes(*bytes))
                .ok_or_else(|| WireError("a publish confirm without a sequence number".into()))?;
            Event::Sequenced {
                tag: request_id & !CONFIRM_ID_BIT,
                seq,
            }
        }
        Frame::Ok { data, .. } => Event::Ok(data),
        Frame::Pong { .. } => Event::Pong,
        Frame::Dropped { count, .. } => Event::Dropped(count),
        Frame::Gap { sub_id, missed, .. } => Event::Gap {
            topic: Some(sub_id),
            missed,
        },
        Frame::Err { code, message, .. } => {
            let name = crate::error::ErrorCode::from_u16(code)
                .map_or_else(|| format!("code {code}"), |c| c.as_str().to_string());
            Event::Error(format!("{name}: {}", String::from_utf8_lossy(message)))
        }
        _ => Event::Ignored,
    };
    Ok(Some((event, used)))
}

/// Set in the request id of every publish the bench wants confirmed (prefill), and only
/// there: the bench's other request ids (HELLO 1, SUBSCRIBE from 2, PING) stay far below it.
pub const CONFIRM_ID_BIT: u32 = 1 << 31;

/// The largest corebus frame to accept before the broker's HELLO reply names its limit.
pub const COREBUS_FRAME_MAX_DEFAULT: usize = (1 << 20) + FRAME_OVERHEAD_MAX;

/// Reads `message_bytes_max` from corebus's HELLO OK data.
pub fn corebus_message_bytes_max(hello_ok: &[u8]) -> Option<usize> {
    let bytes: [u8; 4] = hello_ok.get(4..8)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes) as usize)
}

/// Which side of the load a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Subscriber,
}

/// Appends what a new connection sends first: the handshake and, for a subscriber, its
/// subscriptions (`(topic index, name)`). Returns how many replies (`Ok`, `Subscribed`,
/// `Acked` or `Pong` events) mean the connection is ready. A WebSocket connection's upgrade
/// request goes before these ([`ws::Link::encode_upgrade`]), and its `101` counts as one more.
pub fn encode_setup(
    target: Target,
    role: Role,
    client_name: &str,
    subscriptions: &[(u32, String)],
    out: &mut Vec<u8>,
) -> u32 {
    encode_setup_with(
        target,
        role,
        client_name,
        subscriptions,
        &SubscribeOptions::default(),
        out,
    )
}

/// [`encode_setup`] with corebus SUBSCRIBE options (v2) on every subscription; the other
/// targets have none, so `options` must be the defaults for them.
pub fn encode_setup_with(
    target: Target,
    role: Role,
    client_name: &str,
    subscriptions: &[(u32, String)],
    options: &SubscribeOptions,
    out: &mut Vec<u8>,
) -> u32 {
    debug_assert!(target == Target::Corebus || options.is_default());
    let subscriptions = if role == Role::Subscriber {
        subscriptions
    } else {
        &[]
    };
    match target {
        Target::Corebus => {
            Frame::Hello {
                request_id: 1,
                version: PROTOCOL_VERSION,
                client_name: client_name.as_bytes(),
            }
            .encode(out);
            1 + encode_corebus_subscriptions(subscriptions, options, out)
        }
        Target::Redis => {
            if subscriptions.is_empty() {
                resp::encode_command(out, &[b"PING"]);
                1
            } else {
                let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
                args.extend(subscriptions.iter().map(|(_, name)| name.as_bytes()));
                resp::encode_command(out, &args);
                subscriptions.len() as u32
            }
        }
        Target::Nats => {
            nats::encode_connect(out, client_name);
            for (index, name) in subscriptions {
                nats::encode_sub(out, name, *index);
            }
            out.extend_from_slice(b"PING\r\n");
            1
        }
        Target::NatsWs => {
            let mut text = Vec::new();
            encode_setup_with(
                Target::Nats,
                role,
                client_name,
                subscriptions,
                options,
                &mut text,
            );
            ws::encode_binary(&text, out);
            1
        }
        Target::WebSocket { dialect } => {
            if subscriptions.is_empty() {
                ws::encode_ping(dialect, out);
                return 1;
            }
            for (index, name) in subscriptions {
                ws::encode_subscribe(dialect, name, *index, out);
            }
            subscriptions.len() as u32
        }
        // In-process handles subscribe through the bus API: nothing to write or await.
        Target::Inproc => 0,
    }
}

/// Appends a corebus SUBSCRIBE for each of `subscriptions` (`(topic index, name)`, the index
/// doubling as subscription id), with `options`, on a connection already handshaken (also the
/// second half of [`encode_setup_with`]). Returns how many OKs mean they all took effect.
pub fn encode_corebus_subscriptions(
    subscriptions: &[(u32, String)],
    options: &SubscribeOptions,
    out: &mut Vec<u8>,
) -> u32 {
    let mut option_bytes = Vec::new();
    options.encode(&mut option_bytes);
    for (i, (index, name)) in subscriptions.iter().enumerate() {
        Frame::Subscribe {
            request_id: 2 + i as u32,
            sub_id: *index,
            topic: name.as_bytes(),
            options: &option_bytes,
        }
        .encode(out);
    }
    subscriptions.len() as u32
}

/// Appends a PING whose PONG tells a publisher the server has read everything before it.
pub fn encode_ping(target: Target, request_id: u32, out: &mut Vec<u8>) {
    match target {
        Target::Corebus => Frame::Ping { request_id }.encode(out),
        Target::Redis => resp::encode_command(out, &[b"PING"]),
        Target::Nats => out.extend_from_slice(b"PING\r\n"),
        Target::WebSocket { dialect } => ws::encode_ping(dialect, out),
        Target::NatsWs => ws::encode_binary(b"PING\r\n", out),
        // An in-process publisher's round trip is a bus call, not bytes.
        Target::Inproc => {}
    }
}

/// Appends a corebus cumulative ACK: every message of subscription `sub_id` up to and
/// including topic sequence number `seq` is acknowledged. The broker answers only on failure.
pub fn encode_ack_through(sub_id: u32, seq: u64, out: &mut Vec<u8>) {
    Frame::Ack {
        request_id: 0,
        sub_id,
        seq,
        kind: AckKind::Cumulative,
        topic: &[],
    }
    .encode(out);
}

/// Appends the answer to a NATS server's PING (in a frame over WebSocket).
pub fn encode_pong(target: Target, out: &mut Vec<u8>) {
    match target {
        Target::NatsWs => ws::encode_binary(b"PONG\r\n", out),
        _ => out.extend_from_slice(b"PONG\r\n"),
    }
}

/// A publish to one topic with a fixed payload size, split around the payload so that each
/// message is three copies: prefix, payload, suffix. A WebSocket publish is one masked text
/// frame whose header (all but the key) is fixed too: the key is written, then the message,
/// which is masked in place.
#[derive(Clone, Debug)]
pub struct PublishTemplate {
    prefix: Vec<u8>,
    suffix: &'static [u8],
    payload_len: usize,
    /// WebSocket: the frame header up to its masking key; empty for the other targets.
    frame_head: Vec<u8>,
}

impl PublishTemplate {
    pub fn new(target: Target, topic: &str, payload_len: usize) -> PublishTemplate {
        let (prefix, suffix): (Vec<u8>, &'static [u8]) = match target {
            Target::Corebus => {
                // Encoded by the codec, so the bench can never drift from the spec.
                let payload = vec![0u8; payload_len];
                let mut frame = Vec::new();
                Frame::Publish {
                    request_id: 0,
                    quiet: true,
                    topic: topic.as_bytes(),
                    reply_to: None,
                    headers: &[],
                    payload: &payload,
                }
                .encode(&mut frame);
                frame.truncate(frame.len() - payload_len);
                (frame, b"")
            }
            Target::Redis => {
                let mut prefix = Vec::new();
                prefix.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n");
                resp::encode_bulk(&mut prefix, topic.as_bytes());
                prefix.extend_from_slice(format!("${payload_len}\r\n").as_bytes());
                (prefix, b"\r\n")
            }
            Target::Nats | Target::NatsWs => (
                format!("PUB {topic} {payload_len}\r\n").into_bytes(),
                b"\r\n",
            ),
            Target::WebSocket { dialect } => ws::publish_around(dialect, topic),
            // An in-process publish is the payload alone (the topic goes beside it).
            Target::Inproc => (Vec::new(), b""),
        };
        let mut frame_head = Vec::new();
        if target.over_websocket() {
            let message_len = prefix.len() + payload_len + suffix.len();
            let opcode = if target == Target::NatsWs {
                Opcode::Binary
            } else {
                Opcode::Text
            };
            websocket::encode_frame_header(
                true,
                opcode,
                message_len,
                Some([0; 4]),
                &mut frame_head,
            );
            frame_head.truncate(frame_head.len() - 4);
        }
        PublishTemplate {
            prefix,
            suffix,
            payload_len,
            frame_head,
        }
    }

    /// A corebus publish that the broker answers with an OK carrying the message's sequence
    /// number; write it with [`encode_confirmed`](Self::encode_confirmed).
    pub fn confirmed(topic: &str, payload_len: usize) -> PublishTemplate {
        let payload = vec![0u8; payload_len];
        let mut frame = Vec::new();
        Frame::Publish {
            request_id: CONFIRM_ID_BIT,
            quiet: false,
            topic: topic.as_bytes(),
            reply_to: None,
            headers: &[],
            payload: &payload,
        }
        .encode(&mut frame);
        frame.truncate(frame.len() - payload_len);
        PublishTemplate {
            prefix: frame,
            suffix: b"",
            payload_len,
            frame_head: Vec::new(),
        }
    }

    /// Appends one publish made by [`confirmed`](Self::confirmed), whose OK decodes as
    /// [`Event::Sequenced`] with this `tag` (below 2^31).
    pub fn encode_confirmed(&self, out: &mut Vec<u8>, tag: u32, head: &[u8], fill: &[u8]) {
        debug_assert!(tag & CONFIRM_ID_BIT == 0);
        let at = out.len();
        self.encode(out, head, fill, [0; 4]);
        // The request id is the header's last field (offset 8, see `protocol::native`).
        out[at + 8..at + 12].copy_from_slice(&(tag | CONFIRM_ID_BIT).to_be_bytes());
    }

    /// Appends one publish whose payload is `head` followed by `fill` (together exactly the
    /// template's payload length). A WebSocket frame is masked with `mask` (a fresh random key
    /// per frame, RFC 6455 §5.3); the other targets ignore it.
    pub fn encode(&self, out: &mut Vec<u8>, head: &[u8], fill: &[u8], mask: [u8; 4]) {
        debug_assert_eq!(head.len() + fill.len(), self.payload_len);
        let masked = !self.frame_head.is_empty();
        if masked {
            out.extend_from_slice(&self.frame_head);
            out.extend_from_slice(&mask);
        }
        let start = out.len();
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(head);
        out.extend_from_slice(fill);
        out.extend_from_slice(self.suffix);
        if masked {
            websocket::apply_mask(&mut out[start..], mask);
        }
    }

    /// Bytes one publish takes on the wire.
    pub fn wire_len(&self) -> usize {
        let key = if self.frame_head.is_empty() { 0 } else { 4 };
        self.frame_head.len() + key + self.prefix.len() + self.payload_len + self.suffix.len()
    }
}

/// Finds `\r\n` in `buf`, returning the index of `\r`.
fn find_crlf(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf.get(from..)?.iter().position(|&b| b == b'\n') {
        let at = from + i;
        if at > 0 && buf[at - 1] == b'\r' {
            return Some(at - 1);
        }
        from = at + 1;
    }
    None
}

/// RESP2, the Redis protocol: just enough for SUBSCRIBE, PUBLISH and PING.
pub mod resp {
    use super::{find_crlf, topic_index_from_name, Event, WireError};

    /// Nested arrays deeper than this are refused rather than recursed into.
    const DEPTH_MAX: usize = 8;
    /// A bulk string longer than this is taken as a broken stream.
    const BULK_MAX: i64 = 512 * 1024 * 1024;

    /// Appends a command as an array of bulk strings.
    pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
        out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            encode_bulk(out, arg);
        }
    }

    pub fn encode_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }

    /// One RESP value, arrays given only as their length (their elements follow).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Item<'a> {
        Simple(&'a [u8]),
        Error(&'a [u8]),
        Integer(i64),
        Bulk(Option<&'a [u8]>),
        Array(Option<usize>),
    }

    fn parse_int(digits: &[u8]) -> Option<i64> {
        let (negative, digits) = match digits.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, digits),
        };
        let value = i64::try_from(super::parse_u64(digits)?).ok()?;
        Some(if negative { -value } else { value })
    }

    /// The item at the start of `buf` and the bytes it takes (for an array, its header only).
    pub fn parse_item(buf: &[u8]) -> Result<Option<(Item<'_>, usize)>, WireError> {
        let Some(&kind) = buf.first() else {
            return Ok(None);
        };
        // The line starts after the type byte: a buffer that opens with CRLF has an empty
        // type, not an empty line before it.
        let Some(end) = find_crlf(&buf[1..]).map(|at| at + 1) else {
            if buf.len() > 64 * 1024 {
                return Err(WireError("RESP line longer than 64 KiB".into()));
            }
            return Ok(None);
        };
        let line = &buf[1..end];
        let after = end + 2;
        let bad = || WireError(format!("bad RESP line {:?}", String::from_utf8_lossy(line)));
        let item = match kind {
            b'+' => Item::Simple(line),
            b'-' => Item::Error(line),
            b':' => Item::Integer(parse_int(line).ok_or_else(bad)?),
            b'$' => {
                let len = parse_int(line).ok_or_else(bad)?;
                if len < 0 {
                    Item::Bulk(None)
                } else if len > BULK_MAX {
                    return Err(bad());
                } else {
                    let len = len as usize;
                    let Some(tail) = buf.get(after..after + len + 2) else {
                        return Ok(None);
                    };
                    if &tail[len..] != b"\r\n" {
                        return Err(WireError("RESP bulk string not ended by CRLF".into()));
                    }
                    return Ok(Some((Item::Bulk(Some(&tail[..len])), after + len + 2)));
                }
            }
            b'*' => {
                let len = parse_int(line).ok_or_else(bad)?;
                Item::Array(usize::try_from(len).ok())
            }
            other => return Err(WireError(format!("unknown RESP type byte {other:#04x}"))),
        };
        Ok(Some((item, after)))
    }

    /// Skips one whole value (arrays recursively); returns its length.
    fn skip_value(buf: &[u8], depth: usize) -> Result<Option<usize>, WireError> {
        if depth > DEPTH_MAX {
            return Err(WireError("RESP arrays nested too deep".into()));
        }
        let Some((item, mut at)) = parse_item(buf)? else {
            return Ok(None);
        };
        if let Item::Array(Some(n)) = item {
            for _ in 0..n {
                match skip_value(&buf[at..], depth + 1)? {
                    Some(len) => at += len,
                    None => return Ok(None),
                }
            }
        }
        Ok(Some(at))
    }

    /// Decodes one reply or push into an [`Event`].
    pub fn decode_event(buf: &[u8]) -> Result<Option<(Event<'_>, usize)>, WireError> {
        let Some((item, at)) = parse_item(buf)? else {
            return Ok(None);
        };
        let event = match item {
            Item::Simple(b"PONG") => Event::Pong,
            Item::Simple(b"OK") => Event::Ok(b""),
            Item::Simple(_) | Item::Bulk(_) | Item::Array(None) => Event::Ignored,
            Item::Error(text) => Event::Error(String::from_utf8_lossy(text).into_owned()),
            Item::Integer(n) => Event::Published(n),
            Item::Array(Some(n)) => return decode_array(buf, at, n),
        };
        Ok(Some((event, at)))
    }

    /// A push (`message`, `subscribe`) or any other array, whose header ends at `at`.
    fn decode_array(
        buf: &[u8],
        mut at: usize,
        n: usize,
    ) -> Result<Option<(Event<'_>, usize)>, WireError> {
        // Pushes are arrays of scalars; anything else is skipped whole.
        let mut items: [Option<Item<'_>>; 3] = [None; 3];
        for i in 0..n {
            let Some((item, len)) = parse_item(&buf[at..])? else {
                return Ok(None);
            };
            match (item, items.get_mut(i)) {
                (Item::Array(_), _) | (_, None) => match skip_value(&buf[at..], 1)? {
                    Some(len) => at += len,
                    None => return Ok(None),
                },
                (item, Some(slot)) => {
                    *slot = Some(item);
                    at += len;
                }
            }
        }
        let event = match (n, items) {
            (
                3,
                [Some(Item::Bulk(Some(b"message"))), Some(Item::Bulk(Some(channel))), Some(Item::Bulk(Some(payload)))],
            ) => Event::Message {
                topic: topic_index_from_name(channel),
                payload,
                seq: 0,
                delivery_count: 1,
            },
            (3, [Some(Item::Bulk(Some(b"subscribe"))), _, _]) => Event::Subscribed,
            (2, [Some(Item::Bulk(Some(b"pong"))), _, _]) => Event::Pong,
            _ => Event::Ignored,
        };
        Ok(Some((event, at)))
    }
}

/// The NATS core client protocol: just enough for CONNECT, SUB, PUB, MSG, PING and PONG.
pub mod nats {
    use super::{find_crlf, parse_u32, parse_u64, Event, WireError};

    /// A control line longer than this is taken as a broken stream (INFO lines are the longest).
    const LINE_MAX: usize = 64 * 1024;
    /// NATS' own payload ceiling is configurable up to 64 MiB.
    const PAYLOAD_MAX: u64 = 64 * 1024 * 1024;

    /// `verbose: false` so the server does not answer each PUB with `+OK`.
    pub fn encode_connect(out: &mut Vec<u8>, name: &str) {
        out.extend_from_slice(
            format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"name\":\"{name}\",\
                 \"lang\":\"rust\",\"version\":\"{}\",\"protocol\":1,\"headers\":false,\
                 \"echo\":true}}\r\n",
                env!("CARGO_PKG_VERSION")
            )
            .as_bytes(),
        );
    }

    pub fn encode_sub(out: &mut Vec<u8>, subject: &str, sid: u32) {
        out.extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
    }

    pub fn decode_event(buf: &[u8]) -> Result<Option<(Event<'_>, usize)>, WireError> {
        let Some(end) = find_crlf(buf) else {
            if buf.len() > LINE_MAX {
                return Err(WireError("NATS control line longer than 64 KiB".into()));
            }
            return Ok(None);
        };
        let line = &buf[..end];
        let after = end + 2;
        let op_len = line
            .iter()
            .position(|&b| b == b' ' || b == b'\t')
            .unwrap_or(line.len());
        let op = &line[..op_len];
        let args = &line[op_len..];
        let event = if op.eq_ignore_ascii_case(b"MSG") {
            return decode_msg(buf, args, after);
        } else if op.eq_ignore_ascii_case(b"PING") {
            Event::ServerPing
        } else if op.eq_ignore_ascii_case(b"PONG") {
            Event::Pong
        } else if op.eq_ignore_ascii_case(b"+OK") {
            Event::Ok(b"")
        } else if op.eq_ignore_ascii_case(b"-ERR") {
            let text = String::from_utf8_lossy(args)
                .trim()
                .trim_matches('\'')
                .to_string();
            Event::Error(text)
        } else if op.eq_ignore_ascii_case(b"INFO") {
            Event::Ignored
        } else {
            return Err(WireError(format!(
                "unknown NATS operation {:?}",
                String::from_utf8_lossy(op)
            )));
        };
        Ok(Some((event, after)))
    }

    /// `MSG <subject> <sid> [reply-to] <#bytes>` then the payload and CRLF.
    fn decode_msg<'a>(
        buf: &'a [u8],
        args: &[u8],
        after: usize,
    ) -> Result<Option<(Event<'a>, usize)>, WireError> {
        let mut fields = [&b""[..]; 4];
        let mut count = 0;
        for field in args
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|f| !f.is_empty())
        {
            if count == fields.len() {
                return Err(WireError("NATS MSG line has too many fields".into()));
            }
            fields[count] = field;
            count += 1;
        }
        if !(3..=4).contains(&count) {
            return Err(WireError("NATS MSG line has too few fields".into()));
        }
        let size = parse_u64(fields[count - 1])
            .filter(|&n| n <= PAYLOAD_MAX)
            .ok_or_else(|| WireError("NATS MSG size is not a number".into()))?
            as usize;
        let Some(tail) = buf.get(after..after + size + 2) else {
            return Ok(None);
        };
        if &tail[size..] != b"\r\n" {
            return Err(WireError("NATS MSG payload not ended by CRLF".into()));
        }
        Ok(Some((
            Event::Message {
                topic: parse_u32(fields[1]),
                payload: &tail[..size],
                seq: 0,
                delivery_count: 1,
            },
            after + size + 2,
        )))
    }
}

/// corebus's WebSocket port seen from a client: the HTTP upgrade, the requests of the two JSON
/// dialects (each a masked text frame), and what the server sends back as [`Event`]s.
///
/// An event is read by a fast path that matches the exact bytes corebus writes
/// (`{"type":"event","topic":"…","message":{"id":"…","payload":"…"` for `/v1/ws`,
/// `{"type":"event","topic":"…","data":"…"` for `/ws`) and borrows the payload string from the
/// read buffer; anything else, or an event with escapes in those strings, goes through
/// `serde_json`. The fast path exists because a fan-out subscriber reads an event per
/// delivery, and the bench must not be what limits the broker.
pub mod ws {
    use std::fmt::Write as _;

    use base64::Engine as _;
    use serde::Deserialize;
    use serde_json::value::RawValue;

    use super::{nats, topic_index_from_name, Event, Target, WireError, WsDialect};
    use crate::protocol::http::websocket_accept_key;
    use crate::protocol::payload::write_json_string;
    use crate::protocol::websocket::{self, Decoder, Opcode};

    /// A response head longer than this is not a WebSocket server's.
    const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
    /// Response headers parsed; a 101 has a handful.
    const RESPONSE_HEADERS_MAX: usize = 32;

    /// What the frames carry.
    #[derive(Debug)]
    enum Carrier {
        /// One JSON message per text frame.
        Json(WsDialect),
        /// A NATS protocol byte stream, cut into binary frames anywhere: the frames' payloads
        /// are joined in `stream`, whose bytes before `at` are decoded already.
        Nats { stream: Vec<u8>, at: usize },
    }

    /// One connection's WebSocket state: the upgrade in progress, then the frame decoder.
    #[derive(Debug)]
    pub struct Link {
        carrier: Carrier,
        /// The `Sec-WebSocket-Key` sent, and the `Sec-WebSocket-Accept` it calls for.
        key: String,
        accept: String,
        upgraded: bool,
        /// Frames written before the 101, which a client must wait for (RFC 6455 §4.1; corebus
        /// would read them, nats-server refuses the connection).
        held: Vec<u8>,
        decoder: Decoder,
    }

    impl Link {
        /// A link for a WebSocket target ([`Target::over_websocket`]) whose server messages may
        /// be up to `message_bytes_max` bytes; `None` for the others.
        pub fn for_target(target: Target, message_bytes_max: usize) -> Option<Link> {
            let carrier = match target {
                Target::WebSocket { dialect } => Carrier::Json(dialect),
                Target::NatsWs => Carrier::Nats {
                    stream: Vec::new(),
                    at: 0,
                },
                _ => return None,
            };
            let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
            let accept = websocket_accept_key(key.as_bytes());
            Some(Link {
                carrier,
                key,
                accept,
                upgraded: false,
                held: Vec::new(),
                decoder: Decoder::client(message_bytes_max),
            })
        }

        fn path(&self) -> &'static str {
            match self.carrier {
                Carrier::Json(dialect) => dialect.path(),
                Carrier::Nats { .. } => "/",
            }
        }

        /// Keeps `frames` until the 101 has arrived ([`Event::Upgraded`]).
        pub fn hold_until_upgraded(&mut self, frames: Vec<u8>) {
            self.held = frames;
        }

        /// Appends the frames held for after the upgrade.
        pub fn release_held(&mut self, out: &mut Vec<u8>) {
            out.append(&mut self.held);
        }

        /// Appends the upgrade request; frames wait for its answer
        /// ([`hold_until_upgraded`](Self::hold_until_upgraded)).
        pub fn encode_upgrade(&self, authority: &str, out: &mut Vec<u8>) {
            let mut head = String::with_capacity(192);
            let _ = write!(
                head,
                "GET {} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n\r\n",
                self.path(),
                self.key
            );
            out.extend_from_slice(head.as_bytes());
        }

        /// Decodes one event at the start of `buf`, as [`super::decode`] does: first the `101`
        /// (as [`Event::Upgraded`]), then one event per frame (NATS: per protocol message, the
        /// frames' payloads joined). Unmasked server frames are not changed in place, but the
        /// frame decoder takes `&mut` for the server side's sake.
        pub fn decode<'a>(
            &'a mut self,
            buf: &'a mut [u8],
        ) -> Result<Option<(Event<'a>, usize)>, WireError> {
            if !self.upgraded {
                return self.decode_upgrade(buf);
            }
            // NATS: what the frames so far carried comes first, one event at a time, taking no
            // bytes of `buf`.
            let whole = match &mut self.carrier {
                Carrier::Nats { stream, at } if *at == stream.len() => {
                    stream.clear();
                    *at = 0;
                    None
                }
                Carrier::Nats { stream, at } => {
                    nats::decode_event(&stream[*at..])?.map(|(_, used)| (*at, used))
                }
                Carrier::Json(_) => None,
            };
            if let Some((start, used)) = whole {
                // Decoded again to lend it out: returning the first decoding's borrow on one
                // path and borrowing the carrier again on the other is what the borrow checker
                // cannot follow yet. A NATS control line parses in tens of nanoseconds.
                if let Carrier::Nats { stream, at } = &mut self.carrier {
                    *at = start + used;
                    if let Some((event, _)) = nats::decode_event(&stream[start..start + used])? {
                        return Ok(Some((event, 0)));
                    }
                }
                return Err(WireError("a NATS event decoded once but not twice".into()));
            }
            let (frame, used) = match self.decoder.decode(buf) {
                Ok(Some(decoded)) => decoded,
                Ok(None) => return Ok(None),
                Err(error) => return Err(WireError(format!("WebSocket stream: {error}"))),
            };
            let event = match (frame, &mut self.carrier) {
                (websocket::Event::Text(text), Carrier::Json(dialect)) => {
                    decode_text(*dialect, text)
                }
                (websocket::Event::Binary(_), Carrier::Json(_)) => {
                    Event::Error("a binary frame, in a JSON dialect".into())
                }
                (websocket::Event::Binary(bytes), Carrier::Nats { stream, at }) => {
                    // Decoded bytes are dropped before the stream grows.
                    stream.drain(..*at);
                    *at = 0;
                    stream.extend_from_slice(bytes);
                    Event::Ignored
                }
                (websocket::Event::Text(_), Carrier::Nats { .. }) => {
                    Event::Error("a text frame; NATS over WebSocket is binary".into())
                }
                (websocket::Event::Ping(payload), _) => Event::WsPing(payload),
                (websocket::Event::Pong(_) | websocket::Event::Fragment, _) => Event::Ignored,
                (websocket::Event::Close(close), _) => {
                    let (code, reason) = close.map_or((0, ""), |c| (c.code, c.reason));
                    return Err(WireError(format!(
                        "the server closed the WebSocket ({code} {reason})"
                    )));
                }
            };
            Ok(Some((event, used)))
        }

        fn decode_upgrade<'a>(
            &mut self,
            buf: &'a [u8],
        ) -> Result<Option<(Event<'a>, usize)>, WireError> {
            let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
            let mut response = httparse::Response::new(&mut headers);
            let used = match response.parse(buf) {
                Ok(httparse::Status::Complete(used)) => used,
                Ok(httparse::Status::Partial) if buf.len() > RESPONSE_HEAD_BYTES_MAX => {
                    return Err(WireError("the upgrade response head is too long".into()))
                }
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => return Err(WireError(format!("the upgrade response: {e}"))),
            };
            let status = response.code.unwrap_or(0);
            if status != 101 {
                let body = String::from_utf8_lossy(&buf[used..buf.len().min(used + 200)]);
                return Err(WireError(format!(
                    "the upgrade to {} was refused: {status} {} {body}",
                    self.path(),
                    response.reason.unwrap_or("")
                )));
            }
            let accept = response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
                .map(|h| h.value);
            if accept != Some(self.accept.as_bytes()) {
                return Err(WireError(
                    "the 101 has no Sec-WebSocket-Accept matching our key".into(),
                ));
            }
            self.upgraded = true;
            Ok(Some((Event::Upgraded, used)))
        }
    }

    /// Appends `text` as one masked text frame with a fresh key.
    fn encode_text(text: &[u8], out: &mut Vec<u8>) {
        websocket::encode_masked_frame(true, Opcode::Text, rand::random(), text, out);
    }

    /// Appends `bytes` as one masked binary frame with a fresh key (NATS over WebSocket).
    pub fn encode_binary(bytes: &[u8], out: &mut Vec<u8>) {
        websocket::encode_masked_frame(true, Opcode::Binary, rand::random(), bytes, out);
    }

    /// Appends the answer to a ping frame: a pong with its payload.
    pub fn encode_pong_frame(payload: &[u8], out: &mut Vec<u8>) {
        let payload = payload
            .get(..websocket::CONTROL_PAYLOAD_MAX)
            .unwrap_or(payload);
        websocket::encode_masked_frame(true, Opcode::Pong, rand::random(), payload, out);
    }

    /// Appends a subscribe to `topic`; `/v1/ws` gets request id `s<index>`.
    pub fn encode_subscribe(dialect: WsDialect, topic: &str, index: u32, out: &mut Vec<u8>) {
        let mut text = Vec::with_capacity(96);
        text.extend_from_slice(br#"{"type":"subscribe","topic":"#);
        write_json_string(topic, &mut text);
        if dialect == WsDialect::Fiber {
            let _ = write!(StringSink(&mut text), r#","request_id":"s{index}""#);
        }
        text.push(b'}');
        encode_text(&text, out);
    }

    /// Appends a ping message (the dialect's JSON `ping`, answered by a JSON `pong`).
    pub fn encode_ping(dialect: WsDialect, out: &mut Vec<u8>) {
        let text: &[u8] = match dialect {
            WsDialect::Fiber => br#"{"type":"ping","request_id":"p"}"#,
            WsDialect::FastApi => br#"{"type":"ping"}"#,
        };
        encode_text(text, out);
    }

    /// A publish to `topic` around its payload string's characters: `/v1/ws` puts the payload
    /// in `message.payload` (no `request_id`: every publish is acked anyway), `/ws` in `data`.
    pub fn publish_around(dialect: WsDialect, topic: &str) -> (Vec<u8>, &'static [u8]) {
        let mut prefix = Vec::with_capacity(96);
        prefix.extend_from_slice(br#"{"type":"publish","topic":"#);
        write_json_string(topic, &mut prefix);
        match dialect {
            WsDialect::Fiber => {
                prefix.extend_from_slice(br#","message":{"payload":""#);
                (prefix, br#""}}"#)
            }
            WsDialect::FastApi => {
                prefix.extend_from_slice(br#","data":""#);
                (prefix, br#""}"#)
            }
        }
    }

    /// `fmt::Write` into a byte buffer.
    struct StringSink<'a>(&'a mut Vec<u8>);

    impl std::fmt::Write for StringSink<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0.extend_from_slice(s.as_bytes());
            Ok(())
        }
    }

    /// What a server message says, whichever dialect; fields either dialect uses.
    #[derive(Deserialize)]
    struct ServerMessage<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<&'a RawValue>,
        #[serde(borrow)]
        topic: Option<&'a RawValue>,
        /// `/v1/ws`: the event's `{id, payload}`; `/ws`: a sentence (ack, error, info).
        #[serde(borrow)]
        message: Option<&'a RawValue>,
        /// `/ws`: the event's payload.
        #[serde(borrow)]
        data: Option<&'a RawValue>,
        /// `/v1/ws`: `{code, message}`.
        #[serde(borrow)]
        error: Option<&'a RawValue>,
        /// `/ws` errors.
        #[serde(borrow)]
        code: Option<&'a RawValue>,
        /// corebus extras: `dropped`'s count, `gap`'s missed.
        count: Option<u64>,
        missed: Option<u64>,
    }

    #[derive(Deserialize)]
    struct FiberMessage<'a> {
        #[serde(borrow)]
        payload: Option<&'a RawValue>,
    }

    /// One server text message as an [`Event`]; never fails (what cannot be read is an
    /// `Error` event, counted, and the stream goes on).
    pub fn decode_text(dialect: WsDialect, text: &str) -> Event<'_> {
        if let Some(event) = fast_event(dialect, text) {
            return event;
        }
        let message: ServerMessage<'_> = match serde_json::from_str(text) {
            Ok(message) => message,
            Err(e) => return Event::Error(format!("unreadable server message ({e}): {text:.200}")),
        };
        let topic = || string(message.topic).and_then(|t| topic_index_from_name(t.as_bytes()));
        match string(message.kind).unwrap_or("") {
            "event" => {
                let payload = match dialect {
                    WsDialect::Fiber => message
                        .message
                        .and_then(|m| serde_json::from_str::<FiberMessage<'_>>(m.get()).ok())
                        .and_then(|m| m.payload),
                    WsDialect::FastApi => message.data,
                };
                let payload = payload.map_or("", |raw| unquoted(raw.get()).unwrap_or(raw.get()));
                Event::Message {
                    topic: topic(),
                    payload: payload.as_bytes(),
                    seq: 0,
                    delivery_count: 1,
                }
            }
            "ack" => Event::Acked,
            "pong" => Event::Pong,
            "info" => Event::Ignored,
            "dropped" => Event::Dropped(message.count.unwrap_or(0)),
            "gap" => Event::Gap {
                topic: topic(),
                missed: message.missed.unwrap_or(0),
            },
            "error" => {
                let detail = match (message.error, message.code, message.message) {
                    (Some(error), _, _) => error.get().to_string(),
                    (None, code, message) => format!(
                        "{}: {}",
                        code.map_or("?", |c| c.get()),
                        message.map_or("", |m| m.get())
                    ),
                };
                Event::Error(detail)
            }
            _ => Event::Ignored,
        }
    }

    fn string(raw: Option<&RawValue>) -> Option<&str> {
        raw.and_then(|raw| unquoted(raw.get()))
    }

    /// The characters of a JSON string literal without escapes; `None` for anything else.
    fn unquoted(json: &str) -> Option<&str> {
        let inner = json.strip_prefix('"')?.strip_suffix('"')?;
        (!inner.contains(['"', '\\'])).then_some(inner)
    }

    /// The characters up to the next quote, and what follows it; `None` at an escape.
    fn until_quote(text: &str) -> Option<(&str, &str)> {
        // memchr, not `str::find` with a char set: this scans every payload.
        let end = memchr::memchr2(b'"', b'\\', text.as_bytes())?;
        if text.as_bytes()[end] == b'\\' {
            return None;
        }
        // Both are ASCII, so `end` and `end + 1` are character boundaries.
        Some((text.get(..end)?, text.get(end + 1..)?))
    }

    /// An event (or an ack) exactly as corebus writes it, or `None` (then the general parse
    /// decides).
    fn fast_event(dialect: WsDialect, text: &str) -> Option<Event<'_>> {
        if text.starts_with(r#"{"type":"ack","#) && text.ends_with('}') {
            return Some(Event::Acked);
        }
        let rest = text.strip_prefix(r#"{"type":"event","topic":""#)?;
        let (topic, rest) = until_quote(rest)?;
        let rest = match dialect {
            WsDialect::Fiber => {
                let rest = rest.strip_prefix(r#","message":{"id":""#)?;
                let (_id, rest) = until_quote(rest)?;
                rest.strip_prefix(r#","payload":""#)?
            }
            WsDialect::FastApi => rest.strip_prefix(r#","data":""#)?,
        };
        let (payload, rest) = until_quote(rest)?;
        // The object goes on (ids, timestamps) and ends with a brace.
        if !text.ends_with('}') || rest.is_empty() {
            return None;
        }
        Some(Event::Message {
            topic: topic_index_from_name(topic.as_bytes()),
            payload: payload.as_bytes(),
            seq: 0,
            delivery_count: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            buf in proptest::collection::vec(any::<u8>(), 0..512),
            prefix in proptest::sample::select(vec![
                &b""[..], b"*3\r\n", b"$5\r\n", b"MSG a 1 ", b"*2\r\n*1\r\n", b":",
            ]),
        ) {
            let mut bytes = prefix.to_vec();
            bytes.extend_from_slice(&buf);
            for target in [Target::Corebus, Target::Redis, Target::Nats] {
                if let Ok(Some((_, used))) = decode(target, &bytes, 1 << 16) {
                    prop_assert!(used > 0 && used <= bytes.len());
                }
            }
        }
    }

    /// Decodes every event in `buf`, checking that they end exactly at its end.
    fn all(target: Target, buf: &[u8]) -> Vec<Event<'_>> {
        let mut events = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            let (event, used) = decode(target, &buf[at..], 1 << 20)
                .unwrap()
                .expect("complete event");
            events.push(event);
            at += used;
        }
        events
    }

    /// Every strict prefix of a complete event needs more bytes.
    fn incomplete_prefixes(target: Target, buf: &[u8]) {
        for cut in 0..buf.len() {
            assert_eq!(
                decode(target, &buf[..cut], 1 << 20),
                Ok(None),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn endpoints() {
        let e = parse_endpoint("redis://127.0.0.1:6380").unwrap();
        assert_eq!((e.target, e.addr.port()), (Target::Redis, 6380));
        let e = parse_endpoint("nats://127.0.0.1").unwrap();
        assert_eq!((e.target, e.addr.port()), (Target::Nats, 4222));
        let e = parse_endpoint("127.0.0.1:9").unwrap();
        assert_eq!((e.target, e.addr.port()), (Target::Corebus, 9));
        let e = parse_endpoint("corebus://[::1]").unwrap();
        assert_eq!(e.addr.port(), 7070);
        let e = parse_endpoint("corebus://[::1]:5/").unwrap();
        assert_eq!(e.addr.port(), 5);
        assert!(parse_endpoint("kafka://127.0.0.1").is_err());
        assert!(parse_endpoint("redis://").is_err());
    }

    #[test]
    fn topic_names_carry_their_index() {
        let name = topic_name("r1a2", 42);
        assert_eq!(name, "bench.r1a2.t42");
        assert_eq!(topic_index_from_name(name.as_bytes()), Some(42));
        assert_eq!(topic_index_from_name(b"bench.x.q1"), None);
        assert_eq!(topic_index_from_name(b"bench.x.t"), None);
        assert_eq!(topic_index_from_name(b"bench.x.t99999999999"), None);
        assert_eq!(topic_index_from_name(b"t5"), None);
    }

    #[test]
    fn corebus_templates_match_the_codec_byte_for_byte() {
        let template = PublishTemplate::new(Target::Corebus, "bench.a.t3", 40);
        let mut out = Vec::new();
        template.encode(&mut out, &[7; 24], &[b'x'; 16], [1, 2, 3, 4]);
        let mut payload = vec![7u8; 24];
        payload.extend_from_slice(&[b'x'; 16]);
        let mut expected = Vec::new();
        Frame::Publish {
            request_id: 0,
            quiet: true,
            topic: b"bench.a.t3",
            reply_to: None,
            headers: &[],
            payload: &payload,
        }
        .encode(&mut expected);
        assert_eq!(out, expected);
        assert_eq!(template.wire_len(), expected.len());
    }

    #[test]
    fn confirmed_publishes_carry_their_tag_and_decode_their_confirm() {
        let template = PublishTemplate::confirmed("bench.a.t3", 30);
        let mut out = vec![9u8; 3];
        template.encode_confirmed(&mut out, 77, &[7; 24], &[b'x'; 6]);
        let mut payload = vec![7u8; 24];
        payload.extend_from_slice(&[b'x'; 6]);
        let mut expected = vec![9u8; 3];
        Frame::Publish {
            request_id: CONFIRM_ID_BIT | 77,
            quiet: false,
            topic: b"bench.a.t3",
            reply_to: None,
            headers: &[],
            payload: &payload,
        }
        .encode(&mut expected);
        assert_eq!(out, expected);
        let mut confirm = Vec::new();
        Frame::Ok {
            request_id: CONFIRM_ID_BIT | 77,
            data: &42u64.to_be_bytes(),
        }
        .encode(&mut confirm);
        Frame::Ok {
            request_id: 2,
            data: &[0; 16],
        }
        .encode(&mut confirm);
        assert_eq!(
            all(Target::Corebus, &confirm),
            vec![Event::Sequenced { tag: 77, seq: 42 }, Event::Ok(&[0; 16])]
        );
        let mut short = Vec::new();
        Frame::Ok {
            request_id: CONFIRM_ID_BIT,
            data: &[1, 2],
        }
        .encode(&mut short);
        assert!(decode(Target::Corebus, &short, 1 << 20).is_err());
    }

    #[test]
    fn redis_and_nats_templates() {
        let mut out = Vec::new();
        PublishTemplate::new(Target::Redis, "a.t1", 3).encode(&mut out, b"hi", b"!", [9; 4]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$4\r\na.t1\r\n$3\r\nhi!\r\n");
        out.clear();
        PublishTemplate::new(Target::Nats, "a.t1", 3).encode(&mut out, b"hi", b"!", [9; 4]);
        assert_eq!(out, b"PUB a.t1 3\r\nhi!\r\n");
    }

    #[test]
    fn setups() {
        let subs = vec![(4, "a.t4".to_string()), (5, "a.t5".to_string())];
        let mut out = Vec::new();
        assert_eq!(
            encode_setup(Target::Redis, Role::Subscriber, "b", &subs, &mut out),
            2
        );
        assert_eq!(
            out,
            b"*3\r\n$9\r\nSUBSCRIBE\r\n$4\r\na.t4\r\n$4\r\na.t5\r\n".to_vec()
        );
        out.clear();
        assert_eq!(
            encode_setup(Target::Redis, Role::Publisher, "b", &subs, &mut out),
            1
        );
        assert_eq!(out, b"*1\r\n$4\r\nPING\r\n".to_vec());
        out.clear();
        assert_eq!(
            encode_setup(Target::Nats, Role::Subscriber, "b", &subs, &mut out),
            1
        );
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("CONNECT {\"verbose\":false,"));
        assert!(text.ends_with("}\r\nSUB a.t4 4\r\nSUB a.t5 5\r\nPING\r\n"));
        out.clear();
        assert_eq!(
            encode_setup(Target::Corebus, Role::Subscriber, "b", &subs, &mut out),
            3
        );
        let (hello, n) = native::decode(&out, 1 << 20).unwrap().unwrap();
        assert!(matches!(
            hello,
            Frame::Hello {
                version: PROTOCOL_VERSION,
                ..
            }
        ));
        let (sub, _) = native::decode(&out[n..], 1 << 20).unwrap().unwrap();
        assert_eq!(
            sub,
            Frame::Subscribe {
                request_id: 2,
                sub_id: 4,
                topic: b"a.t4",
                options: &[]
            }
        );
    }

    #[test]
    fn resp_push_messages_and_replies() {
        let buf = b"*3\r\n$9\r\nsubscribe\r\n$6\r\nb.x.t7\r\n:1\r\n\
                    *3\r\n$7\r\nmessage\r\n$6\r\nb.x.t7\r\n$5\r\nhe\r\no\r\n\
                    :3\r\n+PONG\r\n+OK\r\n-ERR wrong\r\n$-1\r\n*2\r\n$4\r\npong\r\n$0\r\n\r\n\
                    *2\r\n*1\r\n:1\r\n$1\r\nz\r\n";
        assert_eq!(
            all(Target::Redis, buf),
            vec![
                Event::Subscribed,
                Event::Message {
                    topic: Some(7),
                    payload: b"he\r\no",
                    seq: 0,
                    delivery_count: 1,
                },
                Event::Published(3),
                Event::Pong,
                Event::Ok(b""),
                Event::Error("ERR wrong".into()),
                Event::Ignored,
                Event::Pong,
                Event::Ignored,
            ]
        );
    }

    #[test]
    fn resp_waits_for_whole_values_and_rejects_garbage() {
        incomplete_prefixes(
            Target::Redis,
            b"*3\r\n$7\r\nmessage\r\n$6\r\nb.x.t7\r\n$5\r\nhello\r\n",
        );
        incomplete_prefixes(Target::Redis, b":-12\r\n");
        assert!(decode(Target::Redis, b"?x\r\n", 0).is_err());
        assert!(decode(Target::Redis, b":1x\r\n", 0).is_err());
        assert!(decode(Target::Redis, b"$3\r\nabcd\r\n", 0).is_err());
        assert_eq!(
            decode(Target::Redis, b":-12\r\n", 0),
            Ok(Some((Event::Published(-12), 6)))
        );
    }

    #[test]
    fn nats_operations() {
        let buf = b"INFO {\"server_id\":\"x\"}\r\nMSG b.x.t3 3 5\r\nhe\r\no\r\n\
                    msg b.x.t3 9 inbox.1 0\r\n\r\nPING\r\nPONG\r\n+OK\r\n-ERR 'Slow Consumer'\r\n";
        assert_eq!(
            all(Target::Nats, buf),
            vec![
                Event::Ignored,
                Event::Message {
                    topic: Some(3),
                    payload: b"he\r\no",
                    seq: 0,
                    delivery_count: 1,
                },
                Event::Message {
                    topic: Some(9),
                    payload: b"",
                    seq: 0,
                    delivery_count: 1,
                },
                Event::ServerPing,
                Event::Pong,
                Event::Ok(b""),
                Event::Error("Slow Consumer".into()),
            ]
        );
        incomplete_prefixes(Target::Nats, b"MSG b.x.t3 3 5\r\nhello\r\n");
        assert!(decode(Target::Nats, b"MSG a 1\r\n", 0).is_err());
        assert!(decode(Target::Nats, b"MSG a 1 x\r\n", 0).is_err());
        assert!(decode(Target::Nats, b"MSG a 1 2\r\nabcd", 0).is_err());
        assert!(decode(Target::Nats, b"WHAT\r\n", 0).is_err());
    }

    #[test]
    fn corebus_events() {
        let mut buf = Vec::new();
        Frame::Ok {
            request_id: 1,
            data: &[0, 1, 0, 0, 0, 0, 1, 0],
        }
        .encode(&mut buf);
        native::encode_msg_from_publish(&mut buf, 5, (b"b.x.t2", None), &[], b"pay");
        let at = buf.len() - (native::MSG_PREFIX_LEN + 1 + 6 + 1 + 3);
        native::msg_set_sub_id(&mut buf[at..], 2);
        Frame::Dropped {
            sub_id: 2,
            count: 9,
        }
        .encode(&mut buf);
        Frame::Pong { request_id: 3 }.encode(&mut buf);
        Frame::Gap {
            sub_id: 4,
            missed: 11,
            resume_seq: 12,
            topic: b"bench.x.t0",
        }
        .encode(&mut buf);
        Frame::Err {
            request_id: 0,
            code: 7,
            message: b"too slow",
        }
        .encode(&mut buf);
        assert_eq!(
            all(Target::Corebus, &buf),
            vec![
                Event::Ok(&[0, 1, 0, 0, 0, 0, 1, 0]),
                Event::Message {
                    topic: Some(2),
                    payload: b"pay",
                    seq: 0,
                    delivery_count: 1,
                },
                Event::Dropped(9),
                Event::Pong,
                Event::Gap {
                    topic: Some(4),
                    missed: 11
                },
                Event::Error("SLOW_CONSUMER: too slow".into()),
            ]
        );
        assert_eq!(
            corebus_message_bytes_max(&[0, 1, 0, 0, 0, 0, 1, 0]),
            Some(256)
        );
        assert!(decode(Target::Corebus, &[0, 0, 0, 1], 1 << 20).is_err());
    }

    #[test]
    fn websocket_endpoints_pick_their_dialect_by_path() {
        let e = parse_endpoint("ws://127.0.0.1:9/v1/ws").unwrap();
        assert_eq!(
            (e.target, e.addr.port(), e.authority.as_str()),
            (
                Target::WebSocket {
                    dialect: WsDialect::Fiber
                },
                9,
                "127.0.0.1:9"
            )
        );
        let e = parse_endpoint("ws://127.0.0.1/ws").unwrap();
        assert_eq!(
            (e.target, e.addr.port()),
            (
                Target::WebSocket {
                    dialect: WsDialect::FastApi
                },
                8080
            )
        );
        for bad in [
            "ws://127.0.0.1:9",
            "ws://127.0.0.1:9/",
            "ws://127.0.0.1:9/v2/ws",
            "ws://127.0.0.1:9/ws/",
        ] {
            let error = parse_endpoint(bad).unwrap_err();
            assert!(
                error.contains("/v1/ws") && error.contains("/ws"),
                "{bad}: {error}"
            );
        }
        assert!(parse_endpoint("wss://127.0.0.1/ws")
            .unwrap_err()
            .contains("TLS"));
    }

    #[test]
    fn targets_serialize_by_name() {
        for target in [
            Target::Corebus,
            Target::Redis,
            Target::Nats,
            Target::WebSocket {
                dialect: WsDialect::Fiber,
            },
            Target::WebSocket {
                dialect: WsDialect::FastApi,
            },
        ] {
            let json = serde_json::to_string(&target).unwrap();
            assert_eq!(json, format!("\"{}\"", target.name()));
            assert_eq!(serde_json::from_str::<Target>(&json).unwrap(), target);
        }
        assert!(serde_json::from_str::<Target>("\"kafka\"").is_err());
    }

    /// Decodes every client frame in `wire` as the broker would: the text messages.
    fn client_texts(wire: &[u8]) -> Vec<String> {
        let mut buf = wire.to_vec();
        let mut decoder = websocket::Decoder::server(1 << 20);
        let mut texts = Vec::new();
        let mut at = 0;
        while at < buf.len() {
            let (event, used) = decoder.decode(&mut buf[at..]).unwrap().unwrap();
            match event {
                websocket::Event::Text(text) => texts.push(text.to_string()),
                other => panic!("{other:?}"),
            }
            at += used;
        }
        texts
    }

    fn stamp() -> PayloadHeader {
        PayloadHeader {
            publisher: 3,
            topic: 7,
            seq: 41,
            sent_ns: 123_456_789,
        }
    }

    #[test]
    fn websocket_publishes_are_masked_frames_the_broker_parses() {
        use crate::protocol::{ws_fastapi, ws_fiber};
        let hex = stamp().encode_hex();
        for dialect in [WsDialect::Fiber, WsDialect::FastApi] {
            let target = Target::WebSocket { dialect };
            let template = PublishTemplate::new(target, "bench.a.t7", 60);
            let mut out = vec![9u8];
            template.encode(&mut out, &hex, &[b'x'; 12], [0xa5, 1, 2, 3]);
            assert_eq!(out.len(), 1 + template.wire_len());
            // Masked: the mask bit is set and the key is the one given.
            assert_eq!(out[1], 0x81);
            assert_eq!(out[2] & 0x80, 0x80);
            assert_eq!(out[3..7], [0xa5, 1, 2, 3]);
            let texts = client_texts(&out[1..]);
            let expected_payload = format!(
                "\"{}{}\"",
                std::str::from_utf8(&hex).unwrap(),
                "x".repeat(12)
            );
            match dialect {
                WsDialect::Fiber => match ws_fiber::parse_client_message(&texts[0]).unwrap() {
                    ws_fiber::FiberRequest::Publish { topic, payload, .. } => {
                        assert_eq!(topic, "bench.a.t7");
                        assert_eq!(payload.get(), expected_payload);
                    }
                    other => panic!("{other:?}"),
                },
                WsDialect::FastApi => {
                    match ws_fastapi::parse_client_message(&texts[0], 1000).unwrap() {
                        ws_fastapi::FastApiRequest::Publish { topic, data } => {
                            assert_eq!(topic, "bench.a.t7");
                            assert_eq!(data.get(), expected_payload);
                        }
                        other => panic!("{other:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn websocket_setups_subscribe_or_ping() {
        use crate::protocol::ws_fiber;
        let subs = vec![(4, "a.t4".to_string()), (5, "a.t5".to_string())];
        let fiber = Target::WebSocket {
            dialect: WsDialect::Fiber,
        };
        let mut out = Vec::new();
        assert_eq!(
            encode_setup(fiber, Role::Subscriber, "b", &subs, &mut out),
            2
        );
        let texts = client_texts(&out);
        assert_eq!(
            texts,
            [
                r#"{"type":"subscribe","topic":"a.t4","request_id":"s4"}"#,
                r#"{"type":"subscribe","topic":"a.t5","request_id":"s5"}"#,
            ]
        );
        assert!(matches!(
            ws_fiber::parse_client_message(&texts[0]),
            Ok(ws_fiber::FiberRequest::Subscribe(_))
        ));
        out.clear();
        assert_eq!(
            encode_setup(fiber, Role::Publisher, "b", &subs, &mut out),
            1
        );
        assert_eq!(client_texts(&out), [r#"{"type":"ping","request_id":"p"}"#]);
        out.clear();
        let fastapi = Target::WebSocket {
            dialect: WsDialect::FastApi,
        };
        encode_setup(fastapi, Role::Subscriber, "b", &subs[..1], &mut out);
        assert_eq!(
            client_texts(&out),
            [r#"{"type":"subscribe","topic":"a.t4"}"#]
        );
    }

    /// A link already past its upgrade, for decoding server frames.
    fn upgraded(dialect: WsDialect) -> ws::Link {
        let mut link = ws::Link::for_target(Target::WebSocket { dialect }, 1 << 20).unwrap();
        let mut request = Vec::new();
        link.encode_upgrade("127.0.0.1:1", &mut request);
        let request = String::from_utf8(request).unwrap();
        let key = request
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let mut response = Vec::new();
        crate::protocol::http::encode_switching_protocols(key.as_bytes(), &mut response);
        let len = response.len();
        assert_eq!(link.decode(&mut response), Ok(Some((Event::Upgraded, len))));
        link
    }

    /// Owned events from server text messages, each framed as the broker frames them.
    fn server_events(dialect: WsDialect, texts: &[&[u8]]) -> Vec<String> {
        let mut link = upgraded(dialect);
        let mut wire = Vec::new();
        for text in texts {
            websocket::encode_text_frame(text, &mut wire);
        }
        let mut events = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let (event, used) = link.decode(&mut wire[at..]).unwrap().unwrap();
            events.push(format!("{event:?}"));
            at += used;
        }
        events
    }

    #[test]
    fn websocket_upgrades_are_checked() {
        let mut link = ws::Link::for_target(
            Target::WebSocket {
                dialect: WsDialect::Fiber,
            },
            1 << 20,
        )
        .unwrap();
        let mut request = Vec::new();
        link.encode_upgrade("h:1", &mut request);
        let text = String::from_utf8(request).unwrap();
        assert!(text.starts_with("GET /v1/ws HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(text.ends_with("Sec-WebSocket-Version: 13\r\n\r\n"));
        // A 101 for another key, a refusal, and a partial head.
        let mut wrong = Vec::new();
        crate::protocol::http::encode_switching_protocols(b"dGhlIHNhbXBsZSBub25jZQ==", &mut wrong);
        assert!(link.decode(&mut wrong).is_err());
        let mut refused = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}".to_vec();
        let error = link.decode(&mut refused).unwrap_err();
        assert!(error.0.contains("404"), "{error}");
        let mut partial = b"HTTP/1.1 101 Switching".to_vec();
        assert_eq!(link.decode(&mut partial), Ok(None));
    }

    #[test]
    fn websocket_server_messages() {
        use crate::protocol::payload::DerivedMessageId;
        use crate::protocol::ws_fiber::{self, FiberCode, FiberEvent};
        use crate::protocol::ws_json::MessageId;
        use crate::protocol::{ws_fastapi, ws_fastapi::AckFor};
        let hex = stamp().encode_hex();
        let mut payload = hex.to_vec();
        payload.extend_from_slice(b"xxxx");
        let json_payload = format!("\"{}\"", std::str::from_utf8(&payload).unwrap());
        let id = MessageId::Derived(DerivedMessageId { epoch: 1, seq: 2 });
        let message = |topic: &'static str| {
            format!(
                "Message {{ topic: {topic}, payload: {:?}, seq: 0, delivery_count: 1 }}",
                payload.as_slice()
            )
        };

        let mut event = Vec::new();
        ws_fiber::encode_event(
            &FiberEvent {
                topic: "bench.r.t7",
                id,
                payload: json_payload.as_bytes(),
                content_type: Some(b"application/json"),
                timestamp_ns: 1,
                seq: Some(9),
            },
            &mut event,
        );
        let mut ack = Vec::new();
        ws_fiber::encode_ack(Some("s7"), "bench.r.t7", 1, &mut ack);
        let mut pong = Vec::new();
        ws_fiber::encode_pong(Some("p"), 1, &mut pong);
        let mut error = Vec::new();
        ws_fiber::encode_error(
            None,
            FiberCode::RateLimited,
            "slow down",
            Some(5),
            1,
            &mut error,
        );
        // The general parse: keys in another order, an escape in the payload.
        let reordered = format!(
            r#"{{"topic":"bench.r.t3","type":"event","message":{{"payload":{json_payload},"id":"x"}}}}"#
        );
        let escaped =
            br#"{"type":"event","topic":"bench.r.t3","message":{"id":"x","payload":"a\"b"}}"#;
        let events = server_events(
            WsDialect::Fiber,
            &[
                &event,
                &ack,
                &pong,
                &error,
                reordered.as_bytes(),
                escaped,
                br#"{"type":"dropped","topic":"bench.r.t1","count":4}"#,
                b"not json",
            ],
        );
        assert_eq!(events[0], message("Some(7)"));
        assert_eq!(events[1..3], ["Acked", "Pong"]);
        assert!(events[3].contains("RATE_LIMITED"), "{}", events[3]);
        assert_eq!(events[4], message("Some(3)"));
        // Not a payload the bench sent: counted as corrupt by its length.
        assert!(
            events[5].starts_with("Message { topic: Some(3), payload: [34,"),
            "{}",
            events[5]
        );
        assert_eq!(events[6], "Dropped(4)");
        assert!(events[7].starts_with("Error(\"unreadable"), "{}", events[7]);

        let mut info = Vec::new();
        ws_fastapi::encode_info("c1", &mut info);
        let mut event = Vec::new();
        ws_fastapi::encode_event(
            "bench.r.t2",
            json_payload.as_bytes(),
            Some(b"application/json"),
            id,
            &mut event,
        );
        let mut ack = Vec::new();
        ws_fastapi::encode_ack(AckFor::Publish, "bench.r.t2", &mut ack);
        let mut pong = Vec::new();
        ws_fastapi::encode_pong(&mut pong);
        let events = server_events(WsDialect::FastApi, &[&info, &event, &ack, &pong]);
        assert_eq!(events[0], "Ignored");
        assert_eq!(events[1], message("Some(2)"));
        assert_eq!(events[2..], ["Acked", "Pong"]);
    }

    #[test]
    fn websocket_frames_wait_for_their_last_byte_and_pings_get_pongs() {
        let mut link = upgraded(WsDialect::FastApi);
        let mut wire = Vec::new();
        websocket::encode_text_frame(br#"{"type":"pong"}"#, &mut wire);
        for cut in 0..wire.len() {
            assert_eq!(link.decode(&mut wire[..cut]), Ok(None), "cut at {cut}");
        }
        let mut ping = Vec::new();
        websocket::encode_ping_frame(b"hi", &mut ping);
        assert_eq!(link.decode(&mut ping), Ok(Some((Event::WsPing(b"hi"), 4))));
        let mut pong = Vec::new();
        ws::encode_pong_frame(b"hi", &mut pong);
        let mut server = websocket::Decoder::server(125);
        assert_eq!(
            server.decode(&mut pong),
            Ok(Some((websocket::Event::Pong(b"hi"), 8)))
        );
        let mut close = Vec::new();
        websocket::encode_close_frame(Some(1008), "slow", &mut close);
        assert!(link.decode(&mut close).unwrap_err().0.contains("1008"));
    }

    #[test]
    fn nats_over_websocket() {
        let e = parse_endpoint("nats+ws://127.0.0.1:9").unwrap();
        assert_eq!((e.target, e.addr.port()), (Target::NatsWs, 9));
        assert!(parse_endpoint("nats+ws://127.0.0.1:9/").is_ok());
        assert!(parse_endpoint("nats+ws://127.0.0.1:9/x").is_err());
        // A PUB is one masked binary frame; the set-up is one frame of NATS text.
        let template = PublishTemplate::new(Target::NatsWs, "a.t1", 3);
        let mut out = Vec::new();
        template.encode(&mut out, b"hi", b"!", [1, 2, 3, 4]);
        assert_eq!(out.len(), template.wire_len());
        let mut server = websocket::Decoder::server(1 << 10);
        assert_eq!(
            server.decode(&mut out),
            Ok(Some((
                websocket::Event::Binary(b"PUB a.t1 3\r\nhi!\r\n"),
                23
            )))
        );
        let mut out = Vec::new();
        let subs = vec![(4, "a.t4".to_string())];
        assert_eq!(
            encode_setup(Target::NatsWs, Role::Subscriber, "b", &subs, &mut out),
            1
        );
        let len = out.len();
        match server.decode(&mut out) {
            Ok(Some((websocket::Event::Binary(text), used))) => {
                assert_eq!(used, len);
                assert!(text.starts_with(b"CONNECT {"));
                assert!(text.ends_with(b"SUB a.t4 4\r\nPING\r\n"));
            }
            other => panic!("{other:?}"),
        }
        // The server's stream, cut into frames anywhere, decodes as one stream.
        let mut link = ws::Link::for_target(Target::NatsWs, 1 << 20).unwrap();
        let mut request = Vec::new();
        link.encode_upgrade("h:1", &mut request);
        let request = String::from_utf8(request).unwrap();
        assert!(request.starts_with("GET / HTTP/1.1\r\n"));
        let key = request
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let mut wire = Vec::new();
        crate::protocol::http::encode_switching_protocols(key.as_bytes(), &mut wire);
        let stream = b"INFO {}\r\nMSG a.t4 4 3\r\nabc\r\nPING\r\nPONG\r\n";
        for piece in [&stream[..12], &stream[12..30], &stream[30..]] {
            websocket::encode_binary_frame(piece, &mut wire);
        }
        websocket::encode_ping_frame(b"k", &mut wire);
        let mut events = Vec::new();
        let mut at = 0;
        while let Some((event, used)) = link.decode(&mut wire[at..]).unwrap() {
            if event != Event::Ignored {
                events.push(format!("{event:?}"));
            }
            at += used;
        }
        assert_eq!(at, wire.len());
        assert_eq!(
            events,
            [
                "Upgraded",
                "Message { topic: Some(4), payload: [97, 98, 99], seq: 0, delivery_count: 1 }",
                "ServerPing",
                "Pong",
                "WsPing([107])",
            ]
        );
        let mut pong = Vec::new();
        encode_pong(Target::NatsWs, &mut pong);
        assert_eq!(
            server.decode(&mut pong),
            Ok(Some((websocket::Event::Binary(b"PONG\r\n"), 12)))
        );
    }
}
