//! What the bench says on the wire to each target, as small sans-IO codecs: bytes in, events
//! out. corebus frames go through [`crate::protocol::native`]; Redis (RESP2 `SUBSCRIBE` /
//! `PUBLISH`) and NATS (core protocol `CONNECT`/`SUB`/`PUB`/`MSG`/`PING`/`PONG`) are written
//! here, limited to what a pub/sub load generator needs.
//!
//! Every target gets the same load: the same topic names, the same payload bytes, one
//! connection per publisher and per subscriber. Publishes are fire-and-forget where the target
//! allows it (corebus quiet publishes, NATS `verbose: false`), with a `PING` after each batch so
//! the publisher knows what the server has read; Redis answers every `PUBLISH` and those replies
//! are read and counted instead.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use crate::protocol::native::{self, AckKind, Frame, FRAME_OVERHEAD_MAX, PROTOCOL_VERSION};
use crate::protocol::subscribe_options::SubscribeOptions;

/// Which server the bench talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Corebus,
    Redis,
    Nats,
}

impl Target {
    pub fn scheme(self) -> &'static str {
        match self {
            Target::Corebus => "corebus",
            Target::Redis => "redis",
            Target::Nats => "nats",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Target::Corebus => 7070,
            Target::Redis => 6379,
            Target::Nats => 4222,
        }
    }

    /// Whether publishers confirm batches with a PING (corebus, NATS) rather than per-publish
    /// replies (Redis).
    pub fn confirms_with_ping(self) -> bool {
        !matches!(self, Target::Redis)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme())
    }
}

/// A parsed `--target`: `corebus://host:port`, `redis://host:port`, `nats://host:port`, or a
/// bare `host:port` (corebus). A missing port takes the target's usual one.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub target: Target,
    pub addr: SocketAddr,
    /// The target as given, for reports.
    pub text: String,
}

pub fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    let (target, rest) = match text.split_once("://") {
        Some(("corebus", rest)) => (Target::Corebus, rest),
        Some(("redis", rest)) => (Target::Redis, rest),
        Some(("nats", rest)) => (Target::Nats, rest),
        Some((scheme, _)) => {
            return Err(format!(
                "unknown target scheme `{scheme}` (corebus, redis or nats)"
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
    /// Redis confirmed one channel of a SUBSCRIBE.
    Subscribed,
    /// Redis answered a PUBLISH with the number of receivers.
    Published(i64),
    /// The answer to our PING.
    Pong,
    /// The server pings us (NATS); answer with [`encode_pong`].
    ServerPing,
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
/// subscriptions (`(topic index, name)`). Returns how many replies (`Ok`, `Subscribed` or
/// `Pong` events) mean the connection is ready.
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

/// Appends the answer to a server's PING (NATS only).
pub fn encode_pong(out: &mut Vec<u8>) {
    out.extend_from_slice(b"PONG\r\n");
}

/// A publish to one topic with a fixed payload size, split around the payload so that each
/// message is three copies: prefix, payload, suffix.
#[derive(Clone, Debug)]
pub struct PublishTemplate {
    prefix: Vec<u8>,
    suffix: &'static [u8],
    payload_len: usize,
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
            Target::Nats => (
                format!("PUB {topic} {payload_len}\r\n").into_bytes(),
                b"\r\n",
            ),
        };
        PublishTemplate {
            prefix,
            suffix,
            payload_len,
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
        }
    }

    /// Appends one publish made by [`confirmed`](Self::confirmed), whose OK decodes as
    /// [`Event::Sequenced`] with this `tag` (below 2^31).
    pub fn encode_confirmed(&self, out: &mut Vec<u8>, tag: u32, head: &[u8], fill: &[u8]) {
        debug_assert!(tag & CONFIRM_ID_BIT == 0);
        let at = out.len();
        self.encode(out, head, fill);
        // The request id is the header's last field (offset 8, see `protocol::native`).
        out[at + 8..at + 12].copy_from_slice(&(tag | CONFIRM_ID_BIT).to_be_bytes());
    }

    /// Appends one publish whose payload is `head` followed by `fill` (together exactly the
    /// template's payload length).
    pub fn encode(&self, out: &mut Vec<u8>, head: &[u8], fill: &[u8]) {
        debug_assert_eq!(head.len() + fill.len(), self.payload_len);
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(head);
        out.extend_from_slice(fill);
        out.extend_from_slice(self.suffix);
    }

    /// Bytes one publish takes on the wire.
    pub fn wire_len(&self) -> usize {
        self.prefix.len() + self.payload_len + self.suffix.len()
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
        let Some(end) = find_crlf(buf) else {
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
        template.encode(&mut out, &[7; 24], &[b'x'; 16]);
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
        PublishTemplate::new(Target::Redis, "a.t1", 3).encode(&mut out, b"hi", b"!");
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$4\r\na.t1\r\n$3\r\nhi!\r\n");
        out.clear();
        PublishTemplate::new(Target::Nats, "a.t1", 3).encode(&mut out, b"hi", b"!");
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
}
