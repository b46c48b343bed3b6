//! RESP, the Redis protocol, as a sans-IO codec: requests in, replies and pub/sub frames out.
//!
//! Every Redis client, `redis-cli`, `redis-benchmark` and `telnet` must work against corebus
//! unchanged, so this module matches Redis's wire behaviour, error texts included, rather than
//! the RESP specification alone. The connection that owns the socket calls
//! [`RequestDecoder::decode`] until it says "incomplete", maps each [`Request`] to a broker
//! command (see [`crate::protocol::resp_commands`]), and writes replies built by the encoders
//! here. Nothing here knows about sockets, shards or commands.
//!
//! # Requests
//!
//! A request whose first byte is `*` is a multibulk array of bulk strings
//! (`*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\n`); anything else is an inline command, one line split
//! on blanks with Redis's quoting rules (see [`RequestDecoder::decode`]). As in Redis:
//!
//! - A count line (`*N`, `$N`) runs to the first `\r`, and the byte after that `\r` is
//!   skipped without being checked; so are the two bytes after a bulk's payload.
//! - `*0` and `*-1` (any count <= 0) and a blank inline line are empty requests: consumed, no
//!   arguments, and Redis answers nothing.
//! - Every error is fatal: Redis replies with the error (`-ERR Protocol error: ...`) and closes
//!   the connection after the reply, because the stream can no longer be framed.
//!
//! Where Redis's outcome depends on how the bytes were split across reads (a line longer than
//! 64 KiB whose end already arrived), this decoder always picks the outcome Redis gives to
//! bytes arriving in small pieces, so that a decode never depends on the split.
//!
//! # Replies
//!
//! Encoders append to a `Vec<u8>`. RESP3 types take a [`RespVersion`] and degrade to what
//! Redis sends a RESP2 client (a map becomes a flat array of keys and values, a double a bulk
//! string, a boolean an integer, a push an array, null `$-1`). [`Reply`] is an owned tree of
//! every shape, with [`decode_reply`], the reference decoder the tests round-trip against.
//!
//! # Pub/sub frames
//!
//! A `message` frame depends only on (version, channel, payload). The broker words it for
//! each subscriber as it copies the delivery into the write buffer ([`encode_message`]): a
//! head of some twenty bytes around the payload it copies anyway, which costs less than an
//! encoding shared through a buffer allocated, filled and freed per message. With
//! [`encode_message_head`] the payload need not be copied at all (write the head, the payload
//! and [`FRAME_TAIL`] as one vectored write). `pmessage` also carries the pattern, so it is
//! once per (pattern, publish).

use std::borrow::Cow;
use std::fmt;

/// Longest inline request line, and longest `*N`/`$N` count line, Redis accepts
/// (`PROTO_INLINE_MAX_SIZE`).
pub const INLINE_BYTES_MAX: usize = 64 * 1024;

/// Redis's default `proto-max-bulk-len`. corebus derives its own bound from the message size
/// limit instead (see [`RequestLimits::for_message_bytes_max`]).
pub const REDIS_BULK_BYTES_MAX: usize = 512 * 1024 * 1024;

/// Most arguments in one multibulk request. Redis up to 6.2 refused counts above 1024*1024
/// with "invalid multibulk length"; later versions only refuse counts above `INT_MAX`. The
/// old bound is kept: it is far above any pub/sub command and bounds the argument table.
pub const MULTIBULK_COUNT_MAX: usize = 1024 * 1024;

/// Redis's `LONG_STR_SIZE`: a count string this long or longer is not a number.
const COUNT_DIGITS_MAX: usize = 21;

/// `INT_MAX`, the largest multibulk count Redis can represent.
const REDIS_INT_MAX: i64 = i32::MAX as i64;

/// Bounds on one request; every one of them is checked before anything is buffered for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest bulk string argument (Redis: `proto-max-bulk-len`).
    pub bulk_bytes_max: usize,
    /// Most arguments in one multibulk request.
    pub multibulk_count_max: usize,
    /// Longest inline line, and longest count line.
    pub inline_bytes_max: usize,
}

impl RequestLimits {
    /// Limits for a broker whose messages are at most `message_bytes_max`: a PUBLISH payload
    /// is one bulk argument, and other arguments (channel names, client names, CONFIG
    /// parameters) are small, so no argument needs more than the larger of the two.
    pub fn for_message_bytes_max(message_bytes_max: usize) -> Self {
        RequestLimits {
            bulk_bytes_max: message_bytes_max.max(INLINE_BYTES_MAX),
            multibulk_count_max: MULTIBULK_COUNT_MAX,
            inline_bytes_max: INLINE_BYTES_MAX,
        }
    }
}

impl Default for RequestLimits {
    /// Redis's own limits.
    fn default() -> Self {
        RequestLimits {
            bulk_bytes_max: REDIS_BULK_BYTES_MAX,
            multibulk_count_max: MULTIBULK_COUNT_MAX,
            inline_bytes_max: INLINE_BYTES_MAX,
        }
    }
}

/// Why a request could not be framed. All are fatal: reply with [`RequestError::encode`] and
/// close the connection once the reply is written, as Redis does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// `*N` is not a number, is above `INT_MAX` or above the multibulk count limit.
    InvalidMultibulkLength,
    /// `$N` is not a number, is negative or above the bulk limit.
    InvalidBulkLength,
    /// An argument of a multibulk request does not start with `$`; holds the byte found.
    ExpectedDollar(u8),
    /// No `\n` within the inline limit.
    TooBigInlineRequest,
    /// An inline line with an unterminated quote, or a closing quote followed by a non-blank.
    UnbalancedQuotes,
    /// No `\r` within the limit after `*`.
    TooBigMbulkCountString,
    /// No `\r` within the limit after `$`.
    TooBigBulkCountString,
}

impl RequestError {
    /// The error text Redis sends, without the `-ERR ` prefix. For
    /// [`RequestError::ExpectedDollar`] the byte is shown as in the reply, with `\r` and `\n`
    /// as spaces (Redis strips newlines from error texts) and other bytes as they are.
    pub fn message(&self) -> Cow<'static, [u8]> {
        let text: &'static str = match self {
            RequestError::InvalidMultibulkLength => "Protocol error: invalid multibulk length",
            RequestError::InvalidBulkLength => "Protocol error: invalid bulk length",
            RequestError::TooBigInlineRequest => "Protocol error: too big inline request",
            RequestError::UnbalancedQuotes => "Protocol error: unbalanced quotes in request",
            RequestError::TooBigMbulkCountString => "Protocol error: too big mbulk count string",
            RequestError::TooBigBulkCountString => "Protocol error: too big bulk count string",
            RequestError::ExpectedDollar(byte) => {
                let byte = if matches!(byte, b'\r' | b'\n') {
                    b' '
                } else {
                    *byte
                };
                let mut text = b"Protocol error: expected '$', got '".to_vec();
                text.push(byte);
                text.push(b'\'');
                return Cow::Owned(text);
            }
        };
        Cow::Borrowed(text.as_bytes())
    }

    /// Appends the full error reply, e.g. `-ERR Protocol error: invalid bulk length\r\n`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_error(out, &self.message());
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.message()))
    }
}

impl std::error::Error for RequestError {}

/// Where one argument's bytes are: in the caller's buffer (every multibulk argument) or in the
/// decoder's scratch (inline arguments, which quoting may have rewritten).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Span {
    Buffer { start: usize, end: usize },
    Scratch { start: usize, end: usize },
}

/// How a request was framed; inline requests come from humans (`telnet`) or old tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    Multibulk,
    Inline,
}

/// Decodes requests one at a time. Owns two reusable tables (argument positions and inline
/// scratch bytes), so steady-state decoding allocates nothing; a connection keeps one.
///
/// After `Ok(None)` it remembers how far it got (arguments read, bytes searched for a line
/// end), and the next call must pass the same bytes, plus any that arrived, at the start of
/// the buffer; so a request trickling in costs work in proportion to its bytes, not to its
/// bytes times the number of reads. Call [`RequestDecoder::reset`] when dropping buffered
/// input. A shorter buffer than last time is taken as such a reset.
#[derive(Debug)]
pub struct RequestDecoder {
    limits: RequestLimits,
    spans: Vec<Span>,
    scratch: Vec<u8>,
    progress: Progress,
    /// Buffer length at the last `Ok(None)`.
    buffered: usize,
}

/// How far an incomplete request got. Positions are offsets in the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    Fresh,
    /// An inline line with no terminator before `scanned`.
    Inline {
        scanned: usize,
    },
    /// A `*N` line with no terminator before `scanned`.
    Header {
        scanned: usize,
    },
    /// `remaining` arguments to go, the next one's `$N` line at `position`, searched up to
    /// `scanned`; the arguments before it are in `spans`.
    Args {
        position: usize,
        remaining: usize,
        scanned: usize,
    },
}

/// A complete `PUBLISH channel payload` at the start of a buffer, found by
/// [`decode_publish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlainPublish<'a> {
    pub channel: &'a [u8],
    pub payload: &'a [u8],
    /// Bytes of the buffer the request takes.
    pub consumed: usize,
}

/// The publisher's fast path: a complete `PUBLISH` in the one form every client library
/// sends (`*3`, `$7`, canonical decimal lengths within `limits`), read in one pass with no
/// command lookup. Anything else, including an incomplete request, is `None` and goes to
/// [`RequestDecoder`], which would read this form the same way (a property test holds the
/// two to it), so taking the fast path never changes an outcome.
pub fn decode_publish(buffer: &[u8], limits: RequestLimits) -> Option<PlainPublish<'_>> {
    let rest = buffer.strip_prefix(b"*3\r\n$7\r\n")?;
    let (name, rest) = rest.split_at_checked(b"PUBLISH".len())?;
    // Clients send it in capitals: one comparison, before the case-blind one.
    if name != b"PUBLISH" && !name.eq_ignore_ascii_case(b"PUBLISH") {
        return None;
    }
    let rest = rest.strip_prefix(FRAME_TAIL)?;
    let (channel, rest) = canonical_bulk(rest, limits.bulk_bytes_max)?;
    let (payload, rest) = canonical_bulk(rest, limits.bulk_bytes_max)?;
    Some(PlainPublish {
        channel,
        payload,
        consumed: buffer.len() - rest.len(),
    })
}

/// `$<len>\r\n<len bytes>\r\n` with `len` in plain decimal (no sign, no leading zero) and at
/// most `bulk_bytes_max`: the bulk and what follows it.
// Twice per publish on the fast path: inlined (a call cost about 20 instructions each).
#[inline(always)]
fn canonical_bulk(input: &[u8], bulk_bytes_max: usize) -> Option<(&[u8], &[u8])> {
    // Ten digits hold every length a limit can allow, in a u64 without overflow.
    const DIGITS_MAX: usize = 10;
    let rest = input.strip_prefix(b"$")?;
    let mut len = 0u64;
    let mut digits = 0;
    while let Some(&byte) = rest.get(digits) {
        if !byte.is_ascii_digit() || digits == DIGITS_MAX {
            break;
        }
        len = len * 10 + u64::from(byte - b'0');
        digits += 1;
    }
    let len = usize::try_from(len).ok()?;
    if digits == 0 || (digits > 1 && rest[0] == b'0') || len > bulk_bytes_max {
        return None;
    }
    // Past ten digits (or at a sign, a space...) the next byte is no `\r`: `None`.
    let rest = rest[digits..].strip_prefix(FRAME_TAIL)?;
    let (bulk, rest) = rest.split_at_checked(len)?;
    Some((bulk, rest.strip_prefix(FRAME_TAIL)?))
}

/// Where a line search stands.
enum Line {
    /// The terminator's offset.
    Found(usize),
    /// Not yet; nothing before `scanned` needs searching again.
    Pending { scanned: usize },
    /// More than the limit buffered without a terminator.
    TooBig,
}

/// One decoded request: its arguments, borrowed from the read buffer (multibulk) or from the
/// decoder (inline). Valid until the next `decode`.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    kind: RequestKind,
    buffer: &'a [u8],
    scratch: &'a [u8],
    spans: &'a [Span],
}

impl<'a> Request<'a> {
    pub fn kind(&self) -> RequestKind {
        self.kind
    }

    /// Number of arguments, the command name included.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// An empty request (`*0`, a blank line): Redis skips it without a reply.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn arg(&self, index: usize) -> Option<&'a [u8]> {
        let span = self.spans.get(index)?;
        match *span {
            Span::Buffer { start, end } => self.buffer.get(start..end),
            Span::Scratch { start, end } => self.scratch.get(start..end),
        }
    }

    /// The command name as sent (any case).
    pub fn name(&self) -> Option<&'a [u8]> {
        self.arg(0)
    }

    pub fn args(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let request = *self;
        (0..request.len()).filter_map(move |index| request.arg(index))
    }

    /// Owned copies of the arguments, for tests and logs.
    pub fn to_vecs(&self) -> Vec<Vec<u8>> {
        self.args().map(<[u8]>::to_vec).collect()
    }
}

impl RequestDecoder {
    pub fn new(limits: RequestLimits) -> Self {
        RequestDecoder {
            limits,
            spans: Vec::new(),
            scratch: Vec::new(),
            progress: Progress::Fresh,
            buffered: 0,
        }
    }

    /// Forgets an incomplete request, for a caller that discards its buffered input (or read
    /// the request another way, as the `PUBLISH` fast path does).
    pub fn reset(&mut self) {
        self.progress = Progress::Fresh;
        self.buffered = 0;
    }

    pub fn limits(&self) -> RequestLimits {
        self.limits
    }

    /// Decodes the request at the start of `buffer`. Returns `Ok(None)` while more bytes are
    /// needed, and `Ok(Some((request, consumed)))` otherwise; the caller drops `consumed` bytes
    /// once done with the request. Never panics, whatever `buffer` holds.
    ///
    /// Inline lines follow Redis (`sdssplitargs`): arguments are separated by runs of blanks;
    /// `"..."` may hold `\xHH` (two hex digits), `\n`, `\r`, `\t`, `\b`, `\a` and `\` before any
    /// other byte for that byte; `'...'` holds bytes literally except `\'`; a quote may start
    /// mid-argument (`a"b c"` is `ab c`), but a closing quote must be followed by a blank or
    /// the end of the line. A line ends at `\n` (a `\r` before it is dropped).
    ///
    /// As in Redis, a NUL byte in a count line or an inline line hides the end of the line:
    /// the request stays incomplete until the line limit is exceeded, then gets the "too big"
    /// error. (Bulk payloads are length-prefixed and may hold anything.)
    pub fn decode<'a>(
        &'a mut self,
        buffer: &'a [u8],
    ) -> Result<Option<(Request<'a>, usize)>, RequestError> {
        let mut progress = std::mem::replace(&mut self.progress, Progress::Fresh);
        if buffer.len() < self.buffered {
            progress = Progress::Fresh;
        }
        self.buffered = 0;
        let Some(&first) = buffer.first() else {
            return Ok(None);
        };
        let decoded = if first == b'*' {
            self.decode_multibulk(buffer, progress)
                .map(|done| done.map(|consumed| (RequestKind::Multibulk, consumed)))
        } else {
            self.decode_inline(buffer, progress)
                .map(|done| done.map(|consumed| (RequestKind::Inline, consumed)))
        };
        let (kind, consumed) = match decoded {
            Ok(Some(done)) => done,
            Ok(None) => {
                debug_assert_ne!(self.progress, Progress::Fresh);
                self.buffered = buffer.len();
                return Ok(None);
            }
            Err(error) => {
                self.progress = Progress::Fresh;
                return Err(error);
            }
        };
        debug_assert!(consumed <= buffer.len());
        debug_assert_eq!(self.progress, Progress::Fresh);
        let request = Request {
            kind,
            buffer,
            scratch: &self.scratch,
            spans: &self.spans,
        };
        Ok(Some((request, consumed)))
    }

    /// Looks for the end of the line starting at `start`, from `scanned` on: the first
    /// `terminator` with `after` more bytes buffered behind it. Redis gives up once more than
    /// the limit is buffered without a terminator; looking no further than that bounds the
    /// search and makes the outcome independent of how the bytes were split.
    fn find_line(
        &self,
        buffer: &[u8],
        start: usize,
        scanned: usize,
        terminator: u8,
        after: usize,
    ) -> Line {
        let limit = self.limits.inline_bytes_max;
        let window_end = buffer
            .len()
            .min(start.saturating_add(limit).saturating_add(1));
        let from = scanned.max(start).min(window_end);
        let window = buffer.get(from..window_end).unwrap_or_default();
        match find_terminator(window, terminator) {
            Some(offset) => {
                let at = from + offset;
                if at + 1 + after <= buffer.len() {
                    Line::Found(at)
                } else {
                    Line::Pending { scanned: at }
                }
            }
            None if buffer.len().saturating_sub(start) > limit => Line::TooBig,
            None => Line::Pending {
                // Stop short of a NUL, which hides every later terminator: finding it again
                // next time is one step.
                scanned: from
                    + window
                        .iter()
                        .position(|&byte| byte == 0)
                        .unwrap_or(window.len()),
            },
        }
    }

    fn decode_multibulk(
        &mut self,
        buffer: &[u8],
        progress: Progress,
    ) -> Result<Option<usize>, RequestError> {
        let (mut position, mut remaining, mut scanned) = match progress {
            Progress::Args {
                position,
                remaining,
                scanned,
            } => (position, remaining, scanned),
            Progress::Header { scanned } => match self.decode_multibulk_header(buffer, scanned)? {
                Some(started) => started,
                None => return Ok(None),
            },
            Progress::Fresh | Progress::Inline { .. } => {
                match self.decode_multibulk_header(buffer, 0)? {
                    Some(started) => started,
                    None => return Ok(None),
                }
            }
        };
        while remaining > 0 {
            let cr = match self.find_line(buffer, position, scanned, b'\r', 1) {
                Line::Found(cr) => cr,
                Line::TooBig => return Err(RequestError::TooBigBulkCountString),
                Line::Pending { scanned } => {
                    self.progress = Progress::Args {
                        position,
                        remaining,
                        scanned,
                    };
                    return Ok(None);
                }
            };
            match buffer.get(position) {
                Some(b'$') => {}
                Some(&other) => return Err(RequestError::ExpectedDollar(other)),
                // Cannot happen (the line was found), but incomplete is the safe answer.
                None => {
                    self.progress = Progress::Args {
                        position,
                        remaining,
                        scanned: 0,
                    };
                    return Ok(None);
                }
            }
            let length = buffer
                .get(position + 1..cr)
                .and_then(parse_redis_integer)
                .and_then(|length| usize::try_from(length).ok())
                .filter(|&length| length <= self.limits.bulk_bytes_max)
                .ok_or(RequestError::InvalidBulkLength)?;
            let start = cr + 2;
            let end = start.saturating_add(length);
            // The payload's two trailing bytes are skipped unchecked, as Redis does.
            let next = end.saturating_add(2);
            if next > buffer.len() {
                // Resuming finds this line's end at once and checks the length again.
                self.progress = Progress::Args {
                    position,
                    remaining,
                    scanned: cr,
                };
                return Ok(None);
            }
            self.spans.push(Span::Buffer { start, end });
            position = next;
            remaining -= 1;
            scanned = 0;
        }
        Ok(Some(position))
    }

    /// Reads the `*N` line. `Some((position, count, 0))` to go on with the arguments (none for
    /// a count <= 0); `None` when the line is incomplete (progress saved).
    fn decode_multibulk_header(
        &mut self,
        buffer: &[u8],
        scanned: usize,
    ) -> Result<Option<(usize, usize, usize)>, RequestError> {
        let cr = match self.find_line(buffer, 0, scanned, b'\r', 1) {
            Line::Found(cr) => cr,
            Line::TooBig => return Err(RequestError::TooBigMbulkCountString),
            Line::Pending { scanned } => {
                self.progress = Progress::Header { scanned };
                return Ok(None);
            }
        };
        let count = buffer
            .get(1..cr)
            .and_then(parse_redis_integer)
            .filter(|&count| count <= REDIS_INT_MAX)
            .ok_or(RequestError::InvalidMultibulkLength)?;
        self.spans.clear();
        // A count <= 0 is an empty request.
        let count = usize::try_from(count).unwrap_or(0);
        if count > self.limits.multibulk_count_max {
            return Err(RequestError::InvalidMultibulkLength);
        }
        Ok(Some((cr + 2, count, 0)))
    }

    fn decode_inline(
        &mut self,
        buffer: &[u8],
        progress: Progress,
    ) -> Result<Option<usize>, RequestError> {
        let scanned = match progress {
            Progress::Inline { scanned } => scanned,
            _ => 0,
        };
        let newline = match self.find_line(buffer, 0, scanned, b'\n', 0) {
            Line::Found(newline) => newline,
            Line::TooBig => return Err(RequestError::TooBigInlineRequest),
            Line::Pending { scanned } => {
                self.progress = Progress::Inline { scanned };
                return Ok(None);
            }
        };
        let mut line = &buffer[..newline];
        if let Some(without_cr) = line.strip_suffix(b"\r") {
            line = without_cr;
        }
        self.spans.clear();
        self.scratch.clear();
        split_inline_args(line, &mut self.scratch, &mut self.spans)?;
        Ok(Some(newline + 1))
    }
}

/// Where `terminator` is in `window`, as Redis's `strchr` finds it: a NUL byte before it hides
/// it, so Redis keeps waiting (and errors once the limit is buffered). Mirrored rather than
/// "fixed" so that a line means the same to corebus as to Redis.
fn find_terminator(window: &[u8], terminator: u8) -> Option<usize> {
    window
        .iter()
        .position(|&byte| byte == terminator || byte == 0)
        .filter(|&at| window[at] == terminator)
}

/// Redis's `isspace` in the C locale, which decides what separates inline arguments.
fn is_c_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Splits one inline line (no `\n`, no NUL: see [`find_terminator`]) into arguments in `scratch`, the way Redis's
/// `sdssplitargs` does.
fn split_inline_args(
    line: &[u8],
    scratch: &mut Vec<u8>,
    spans: &mut Vec<Span>,
) -> Result<(), RequestError> {
    #[derive(PartialEq)]
    enum Quote {
        None,
        Double,
        Single,
    }
    let mut i = 0;
    loop {
        while line.get(i).is_some_and(|&byte| is_c_space(byte)) {
            i += 1;
        }
        if i >= line.len() {
            return Ok(());
        }
        let start = scratch.len();
        let mut quote = Quote::None;
        loop {
            let byte = line.get(i).copied();
            match quote {
                Quote::Double => match byte {
                    None => return Err(RequestError::UnbalancedQuotes),
                    Some(b'\\') => {
                        let escaped = line.get(i + 1).copied();
                        let hex = match (escaped, line.get(i + 2), line.get(i + 3)) {
                            (Some(b'x'), Some(&high), Some(&low)) => {
                                hex_value(high).zip(hex_value(low))
                            }
                            _ => None,
                        };
                        if let Some((high, low)) = hex {
                            scratch.push(high * 16 + low);
                            i += 4;
                        } else if let Some(escaped) = escaped {
                            scratch.push(match escaped {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 0x08,
                                b'a' => 0x07,
                                other => other,
                            });
                            i += 2;
                        } else {
                            // A final `\`, inside open quotes: the next step finds the end.
                            scratch.push(b'\\');
                            i += 1;
                        }
                    }
                    Some(b'"') => {
                        if line.get(i + 1).is_some_and(|&next| !is_c_space(next)) {
                            return Err(RequestError::UnbalancedQuotes);
                        }
                        i += 1;
                        break;
                    }
                    Some(other) => {
                        scratch.push(other);
                        i += 1;
                    }
                },
                Quote::Single => match byte {
                    None => return Err(RequestError::UnbalancedQuotes),
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        scratch.push(b'\'');
                        i += 2;
                    }
                    Some(b'\'') => {
                        if line.get(i + 1).is_some_and(|&next| !is_c_space(next)) {
                            return Err(RequestError::UnbalancedQuotes);
                        }
                        i += 1;
                        break;
                    }
                    Some(other) => {
                        scratch.push(other);
                        i += 1;
                    }
                },
                Quote::None => match byte {
                    None => break,
                    // Only these end an unquoted argument; a vertical tab or form feed is
                    // part of it, though it counts as a blank between arguments.
                    Some(b' ' | b'\n' | b'\r' | b'\t') => {
                        i += 1;
                        break;
                    }
                    Some(b'"') => {
                        quote = Quote::Double;
                        i += 1;
                    }
                    Some(b'\'') => {
                        quote = Quote::Single;
                        i += 1;
                    }
                    Some(other) => {
                        scratch.push(other);
                        i += 1;
                    }
                },
            }
        }
        spans.push(Span::Scratch {
            start,
            end: scratch.len(),
        });
    }
}

/// Redis's `string2ll`: an optional `-`, then `0` alone or a digit string without leading
/// zeros, fewer than 21 bytes, within `i64`. No `+`, no blanks.
pub fn parse_redis_integer(bytes: &[u8]) -> Option<i64> {
    if bytes.is_empty() || bytes.len() >= COUNT_DIGITS_MAX {
        return None;
    }
    if bytes == b"0" {
        return Some(0);
    }
    let (negative, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut value: u64 = 0;
    for &byte in digits {
        if !byte.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(byte - b'0'))?;
    }
    if negative {
        if value > i64::MIN.unsigned_abs() {
            return None;
        }
        Some(0i64.wrapping_sub_unsigned(value))
    } else {
        i64::try_from(value).ok()
    }
}

// ---------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------

/// The protocol a connection speaks: RESP2 until `HELLO 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum RespVersion {
    #[default]
    Resp2,
    Resp3,
}

impl RespVersion {
    /// The `proto` number HELLO reports and takes.
    pub fn number(self) -> i64 {
        match self {
            RespVersion::Resp2 => 2,
            RespVersion::Resp3 => 3,
        }
    }

    pub fn from_number(number: i64) -> Option<Self> {
        match number {
            2 => Some(RespVersion::Resp2),
            3 => Some(RespVersion::Resp3),
            _ => None,
        }
    }
}

/// Appended after every line and every bulk payload.
pub const FRAME_TAIL: &[u8] = b"\r\n";

#[inline]
fn push_u64(out: &mut Vec<u8>, value: u64) {
    // The lengths in a delivery's frame (channel, payload) are mostly below 100: written
    // directly, they cost a few instructions where the general formatter took about 55
    // (callgrind), twice per delivery.
    if let Ok(small @ 0..100) = u8::try_from(value) {
        if small < 10 {
            out.push(b'0' + small);
        } else {
            out.extend_from_slice(&[b'0' + small / 10, b'0' + small % 10]);
        }
        return;
    }
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn push_i64(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    push_u64(out, value.unsigned_abs());
}

fn decimal_len(mut value: u64) -> usize {
    let mut len = 1;
    while value >= 10 {
        value /= 10;
        len += 1;
    }
    len
}

/// `<prefix><n>\r\n`.
fn push_header(out: &mut Vec<u8>, prefix: u8, n: usize) {
    out.push(prefix);
    push_u64(out, n as u64);
    out.extend_from_slice(FRAME_TAIL);
}

/// Appends `+text\r\n`. `text` must hold no `\r` or `\n`; they are replaced by spaces rather
/// than corrupting the stream.
pub fn encode_simple(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'+');
    push_line_safe(out, text);
    out.extend_from_slice(FRAME_TAIL);
}

/// `+OK\r\n`.
pub fn encode_ok(out: &mut Vec<u8>) {
    out.extend_from_slice(b"+OK\r\n");
}

/// Appends an error reply the way Redis's `addReplyError` does: a `message` starting with `-`
/// carries its own code (`-NOPROTO unsupported protocol version`), any other gets `-ERR `; `\r`
/// and `\n` become spaces, since the text may quote client bytes.
pub fn encode_error(out: &mut Vec<u8>, message: &[u8]) {
    if message.first() != Some(&b'-') {
        out.extend_from_slice(b"-ERR ");
    }
    push_line_safe(out, message);
    out.extend_from_slice(FRAME_TAIL);
}

fn push_line_safe(out: &mut Vec<u8>, text: &[u8]) {
    out.extend(text.iter().map(|&byte| {
        if matches!(byte, b'\r' | b'\n') {
            b' '
        } else {
            byte
        }
    }));
}

/// `:<n>\r\n`.
pub fn encode_integer(out: &mut Vec<u8>, value: i64) {
    // A PUBLISH's answer, the count of receivers, is most often one digit: one store of four
    // bytes (the general path cost about 80 instructions, callgrind).
    if let Ok(digit @ 0..=9) = u8::try_from(value) {
        out.extend_from_slice(&[b':', b'0' + digit, b'\r', b'\n']);
        return;
    }
    out.push(b':');
    push_i64(out, value);
    out.extend_from_slice(FRAME_TAIL);
}

/// `$<len>\r\n<bytes>\r\n`.
pub fn encode_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    push_header(out, b'$', bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(FRAME_TAIL);
}

/// Exact length of [`encode_bulk`]'s output.
pub fn bulk_len(payload_len: usize) -> usize {
    1 + decimal_len(payload_len as u64) + 2 + payload_len + 2
}

/// The null bulk string: `$-1\r\n` in RESP2, `_\r\n` in RESP3 (Redis's `addReplyNull`).
pub fn encode_null(out: &mut Vec<u8>, version: RespVersion) {
    out.extend_from_slice(match version {
        RespVersion::Resp2 => b"$-1\r\n",
        RespVersion::Resp3 => b"_\r\n",
    });
}

/// The null array: `*-1\r\n` in RESP2, `_\r\n` in RESP3 (Redis's `addReplyNullArray`).
pub fn encode_null_array(out: &mut Vec<u8>, version: RespVersion) {
    out.extend_from_slice(match version {
        RespVersion::Resp2 => b"*-1\r\n",
        RespVersion::Resp3 => b"_\r\n",
    });
}

/// `*<len>\r\n`; the caller then encodes `len` elements.
pub fn encode_array_header(out: &mut Vec<u8>, len: usize) {
    push_header(out, b'*', len);
}

/// A map of `pairs` entries: `%<pairs>` in RESP3, a flat array of `2 * pairs` (key, value,
/// key, value...) in RESP2. The caller then encodes the keys and values alternately.
pub fn encode_map_header(out: &mut Vec<u8>, version: RespVersion, pairs: usize) {
    match version {
        RespVersion::Resp2 => push_header(out, b'*', pairs.saturating_mul(2)),
        RespVersion::Resp3 => push_header(out, b'%', pairs),
    }
}

/// A set: `~<len>` in RESP3, an array in RESP2.
pub fn encode_set_header(out: &mut Vec<u8>, version: RespVersion, len: usize) {
    match version {
        RespVersion::Resp2 => push_header(out, b'*', len),
        RespVersion::Resp3 => push_header(out, b'~', len),
    }
}

/// An out-of-band push (pub/sub frames): `><len>` in RESP3, an array in RESP2.
pub fn encode_push_header(out: &mut Vec<u8>, version: RespVersion, len: usize) {
    match version {
        RespVersion::Resp2 => push_header(out, b'*', len),
        RespVersion::Resp3 => push_header(out, b'>', len),
    }
}

/// A double: `,<value>\r\n` in RESP3, a bulk string of the same text in RESP2. Infinities are
/// `inf`/`-inf` and NaN is `nan`, as Redis writes them.
pub fn encode_double(out: &mut Vec<u8>, version: RespVersion, value: f64) {
    let text = double_text(value);
    match version {
        RespVersion::Resp2 => encode_bulk(out, text.as_bytes()),
        RespVersion::Resp3 => {
            out.push(b',');
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(FRAME_TAIL);
        }
    }
}

/// Shortest text that reads back as the same `f64`; an exponent for very large or small
/// magnitudes instead of hundreds of digits.
fn double_text(value: f64) -> String {
    if value.is_nan() {
        "nan".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "inf" } else { "-inf" }.to_owned()
    } else if value == 0.0 || (1e-5..1e17).contains(&value.abs()) {
        format!("{value}")
    } else {
        format!("{value:e}")
    }
}

/// A boolean: `#t`/`#f` in RESP3, `:1`/`:0` in RESP2 (as Redis's `addReplyBool`).
pub fn encode_boolean(out: &mut Vec<u8>, version: RespVersion, value: bool) {
    match version {
        RespVersion::Resp2 => encode_integer(out, i64::from(value)),
        RespVersion::Resp3 => out.extend_from_slice(if value { b"#t\r\n" } else { b"#f\r\n" }),
    }
}

/// A verbatim string with a three-byte format (`txt`, `mkd`): `=<len>\r\n<fmt>:<text>\r\n` in
/// RESP3, a bulk string of `text` alone in RESP2 (as `INFO` and `CLIENT INFO` reply).
pub fn encode_verbatim(out: &mut Vec<u8>, version: RespVersion, format: [u8; 3], text: &[u8]) {
    match version {
        RespVersion::Resp2 => encode_bulk(out, text),
        RespVersion::Resp3 => {
            push_header(out, b'=', text.len() + 4);
            out.extend_from_slice(&format);
            out.push(b':');
            out.extend_from_slice(text);
            out.extend_from_slice(FRAME_TAIL);
        }
    }
}

/// An owned reply of any shape: built by tests and by the reference decoder, and handy for
/// rare, structured replies (HELLO, COMMAND DOCS). Hot paths use the encoders directly.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Simple(Vec<u8>),
    /// The whole text after `-`, code included (`ERR unknown command ...`).
    Error(Vec<u8>),
    Integer(i64),
    Bulk(Vec<u8>),
    /// Null bulk string; RESP3's only null.
    Null,
    /// RESP2's null array; RESP3 has no separate one.
    NullArray,
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
    Set(Vec<Reply>),
    Push(Vec<Reply>),
    Double(f64),
    Boolean(bool),
    Verbatim {
        format: [u8; 3],
        text: Vec<u8>,
    },
}

impl Reply {
    /// Convenience for bulk strings from text.
    pub fn bulk(text: impl AsRef<[u8]>) -> Reply {
        Reply::Bulk(text.as_ref().to_vec())
    }

    /// Appends this reply as `version` would carry it.
    pub fn encode(&self, version: RespVersion, out: &mut Vec<u8>) {
        match self {
            Reply::Simple(text) => encode_simple(out, text),
            Reply::Error(text) => {
                out.push(b'-');
                push_line_safe(out, text);
                out.extend_from_slice(FRAME_TAIL);
            }
            Reply::Integer(value) => encode_integer(out, *value),
            Reply::Bulk(bytes) => encode_bulk(out, bytes),
            Reply::Null => encode_null(out, version),
            Reply::NullArray => encode_null_array(out, version),
            Reply::Array(items) => {
                encode_array_header(out, items.len());
                items.iter().for_each(|item| item.encode(version, out));
            }
            Reply::Map(pairs) => {
                encode_map_header(out, version, pairs.len());
                for (key, value) in pairs {
                    key.encode(version, out);
                    value.encode(version, out);
                }
            }
            Reply::Set(items) => {
                encode_set_header(out, version, items.len());
                items.iter().for_each(|item| item.encode(version, out));
            }
            Reply::Push(items) => {
                encode_push_header(out, version, items.len());
                items.iter().for_each(|item| item.encode(version, out));
            }
            Reply::Double(value) => encode_double(out, version, *value),
            Reply::Boolean(value) => encode_boolean(out, version, *value),
            Reply::Verbatim { format, text } => encode_verbatim(out, version, *format, text),
        }
    }

    /// What a client of `version` decodes after this reply was encoded for it: RESP2 flattens
    /// maps, turns sets and pushes into arrays, doubles and verbatim strings into bulk strings
    /// and booleans into integers; RESP3 has a single null.
    pub fn as_seen_by(&self, version: RespVersion) -> Reply {
        let all = |items: &[Reply]| items.iter().map(|item| item.as_seen_by(version)).collect();
        match (self, version) {
            (Reply::NullArray, RespVersion::Resp3) => Reply::Null,
            (Reply::Array(items), _) => Reply::Array(all(items)),
            (Reply::Set(items), RespVersion::Resp2) | (Reply::Push(items), RespVersion::Resp2) => {
                Reply::Array(all(items))
            }
            (Reply::Set(items), RespVersion::Resp3) => Reply::Set(all(items)),
            (Reply::Push(items), RespVersion::Resp3) => Reply::Push(all(items)),
            (Reply::Map(pairs), RespVersion::Resp2) => Reply::Array(
                pairs
                    .iter()
                    .flat_map(|(key, value)| [key.as_seen_by(version), value.as_seen_by(version)])
                    .collect(),
            ),
            (Reply::Map(pairs), RespVersion::Resp3) => Reply::Map(
                pairs
                    .iter()
                    .map(|(key, value)| (key.as_seen_by(version), value.as_seen_by(version)))
                    .collect(),
            ),
            (Reply::Double(value), RespVersion::Resp2) => Reply::Bulk(double_text(*value).into()),
            (Reply::Boolean(value), RespVersion::Resp2) => Reply::Integer(i64::from(*value)),
            (Reply::Verbatim { text, .. }, RespVersion::Resp2) => Reply::Bulk(text.clone()),
            (other, _) => other.clone(),
        }
    }
}

/// Why [`decode_reply`] refused its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyDecodeError {
    UnknownType(u8),
    BadLength,
    BadInteger,
    BadDouble,
    BadBoolean,
    /// A line or payload not followed by `\r\n`.
    MissingCrlf,
    BadVerbatim,
    TooDeep,
}

/// Deepest nesting [`decode_reply`] follows; it is recursive, so input must not choose the
/// depth.
pub const REPLY_DEPTH_MAX: usize = 64;

/// The reference decoder for replies, strict about every `\r\n`: decodes the reply at the
/// start of `buffer`, returning it and its length, or `Ok(None)` when incomplete. For tests
/// and tools (the bench's Redis mode, a Redis client); the broker never reads replies.
pub fn decode_reply(buffer: &[u8]) -> Result<Option<(Reply, usize)>, ReplyDecodeError> {
    let mut position = 0;
    match decode_reply_at(buffer, &mut position, 0)? {
        Some(reply) => Ok(Some((reply, position))),
        None => Ok(None),
    }
}

/// The line starting at `*position` without its `\r\n`; advances past it.
fn reply_line<'a>(
    buffer: &'a [u8],
    position: &mut usize,
) -> Result<Option<&'a [u8]>, ReplyDecodeError> {
    let rest = buffer.get(*position..).unwrap_or_default();
    let Some(cr) = rest.iter().position(|&byte| byte == b'\r') else {
        return Ok(None);
    };
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => {
            *position += cr + 2;
            Ok(Some(&rest[..cr]))
        }
        Some(_) => Err(ReplyDecodeError::MissingCrlf),
    }
}

fn decode_reply_at(
    buffer: &[u8],
    position: &mut usize,
    depth: usize,
) -> Result<Option<Reply>, ReplyDecodeError> {
    if depth > REPLY_DEPTH_MAX {
        return Err(ReplyDecodeError::TooDeep);
    }
    let start = *position;
    let Some(&kind) = buffer.get(start) else {
        return Ok(None);
    };
    *position += 1;
    let Some(line) = reply_line(buffer, position)? else {
        *position = start;
        return Ok(None);
    };
    let integer = |line: &[u8]| parse_redis_integer(line).ok_or(ReplyDecodeError::BadInteger);
    let length = |line: &[u8]| -> Result<Option<usize>, ReplyDecodeError> {
        match parse_redis_integer(line) {
            Some(-1) => Ok(None),
            Some(n) => usize::try_from(n)
                .map(Some)
                .map_err(|_| ReplyDecodeError::BadLength),
            None => Err(ReplyDecodeError::BadLength),
        }
    };
    let reply = match kind {
        b'+' => Reply::Simple(line.to_vec()),
        b'-' => Reply::Error(line.to_vec()),
        b':' => Reply::Integer(integer(line)?),
        b'_' if line.is_empty() => Reply::Null,
        b'_' => return Err(ReplyDecodeError::BadLength),
        b'#' => match line {
            b"t" => Reply::Boolean(true),
            b"f" => Reply::Boolean(false),
            _ => return Err(ReplyDecodeError::BadBoolean),
        },
        b',' => {
            let text = std::str::from_utf8(line).map_err(|_| ReplyDecodeError::BadDouble)?;
            Reply::Double(text.parse().map_err(|_| ReplyDecodeError::BadDouble)?)
        }
        b'$' | b'=' => {
            let Some(len) = length(line)? else {
                if kind == b'=' {
                    return Err(ReplyDecodeError::BadLength);
                }
                return Ok(Some(Reply::Null));
            };
            let payload_start = *position;
            let end = payload_start.saturating_add(len);
            let Some(tail) = buffer.get(end..end.saturating_add(2)) else {
                *position = start;
                return Ok(None);
            };
            if tail != FRAME_TAIL {
                return Err(ReplyDecodeError::MissingCrlf);
            }
            let payload = &buffer[payload_start..end];
            *position = end + 2;
            if kind == b'$' {
                Reply::Bulk(payload.to_vec())
            } else {
                match payload {
                    [a, b, c, b':', text @ ..] => Reply::Verbatim {
                        format: [*a, *b, *c],
                        text: text.to_vec(),
                    },
                    _ => return Err(ReplyDecodeError::BadVerbatim),
                }
            }
        }
        b'*' | b'~' | b'>' | b'%' => {
            let Some(len) = length(line)? else {
                if kind == b'*' {
                    return Ok(Some(Reply::NullArray));
                }
                return Err(ReplyDecodeError::BadLength);
            };
            let elements = if kind == b'%' {
                len.checked_mul(2).ok_or(ReplyDecodeError::BadLength)?
            } else {
                len
            };
            // Grown as elements arrive (each takes at least 3 bytes), not sized from the
            // count: a count is only a claim, and capacity for it at every level of a nesting
            // multiplied the input (tests/fuzz.rs found 88 KB held for 317 bytes).
            let mut items = Vec::new();
            for _ in 0..elements {
                match decode_reply_at(buffer, position, depth + 1)? {
                    Some(item) => items.push(item),
                    None => {
                        *position = start;
                        return Ok(None);
                    }
                }
            }
            match kind {
                b'*' => Reply::Array(items),
                b'~' => Reply::Set(items),
                b'>' => Reply::Push(items),
                _ => {
                    let mut pairs = Vec::with_capacity(len);
                    let mut items = items.into_iter();
                    while let (Some(key), Some(value)) = (items.next(), items.next()) {
                        pairs.push((key, value));
                    }
                    Reply::Map(pairs)
                }
            }
        }
        other => return Err(ReplyDecodeError::UnknownType(other)),
    };
    Ok(Some(reply))
}

// ---------------------------------------------------------------------------------------
// HELLO
// ---------------------------------------------------------------------------------------

/// The Redis version corebus reports in HELLO and INFO. Clients gate features on it (RESP3,
/// `CLIENT SETINFO`, sharded pub/sub need 7.x), so it names the Redis release whose pub/sub
/// behaviour corebus reproduces, not corebus's own version.
pub const REDIS_COMPAT_VERSION: &str = "7.2.0";

/// What HELLO reports. Valkey answers `server: valkey` and clients accept it, so corebus can
/// name itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloInfo<'a> {
    pub server: &'a str,
    pub version: &'a str,
    /// The protocol now in force (after the switch HELLO asked for).
    pub proto: RespVersion,
    /// The connection's `CLIENT ID`.
    pub id: u64,
    /// `standalone`, `cluster` or `sentinel`.
    pub mode: &'a str,
    /// `master` or `replica`; Redis leaves it out in sentinel mode.
    pub role: &'a str,
}

impl<'a> HelloInfo<'a> {
    /// corebus's answer: a standalone master with no modules.
    pub fn corebus(proto: RespVersion, id: u64) -> Self {
        HelloInfo {
            server: "corebus",
            version: REDIS_COMPAT_VERSION,
            proto,
            id,
            mode: "standalone",
            role: "master",
        }
    }
}

/// The HELLO reply in `info.proto` (Redis switches first, then answers in the new protocol):
/// a map of `server`, `version` (bulk strings), `proto`, `id` (integers), `mode`, `role` (bulk
/// strings) and `modules` (an empty array), in Redis's order.
pub fn encode_hello(out: &mut Vec<u8>, info: &HelloInfo<'_>) {
    let version = info.proto;
    encode_map_header(out, version, 7);
    encode_bulk(out, b"server");
    encode_bulk(out, info.server.as_bytes());
    encode_bulk(out, b"version");
    encode_bulk(out, info.version.as_bytes());
    encode_bulk(out, b"proto");
    encode_integer(out, version.number());
    encode_bulk(out, b"id");
    encode_integer(out, i64::try_from(info.id).unwrap_or(i64::MAX));
    encode_bulk(out, b"mode");
    encode_bulk(out, info.mode.as_bytes());
    encode_bulk(out, b"role");
    encode_bulk(out, info.role.as_bytes());
    encode_bulk(out, b"modules");
    encode_array_header(out, 0);
}

// ---------------------------------------------------------------------------------------
// Pub/sub frames
// ---------------------------------------------------------------------------------------

/// The subscription commands, each with the confirmation word Redis sends back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SubscriptionKind {
    Subscribe,
    Unsubscribe,
    PSubscribe,
    PUnsubscribe,
    SSubscribe,
    SUnsubscribe,
}

impl SubscriptionKind {
    pub fn word(self) -> &'static [u8] {
        match self {
            SubscriptionKind::Subscribe => b"subscribe",
            SubscriptionKind::Unsubscribe => b"unsubscribe",
            SubscriptionKind::PSubscribe => b"psubscribe",
            SubscriptionKind::PUnsubscribe => b"punsubscribe",
            SubscriptionKind::SSubscribe => b"ssubscribe",
            SubscriptionKind::SUnsubscribe => b"sunsubscribe",
        }
    }
}

/// One confirmation: `[word, name, count]` as an array (RESP2) or a push (RESP3). `name` is
/// `None` for an UNSUBSCRIBE/PUNSUBSCRIBE/SUNSUBSCRIBE without arguments on a connection that
/// had nothing to leave (Redis then sends a null). `count` is what Redis reports after this
/// step: channels plus patterns for the classic commands, shard channels for the `S` ones.
pub fn encode_subscription(
    out: &mut Vec<u8>,
    version: RespVersion,
    kind: SubscriptionKind,
    name: Option<&[u8]>,
    count: usize,
) {
    encode_push_header(out, version, 3);
    encode_bulk(out, kind.word());
    match name {
        Some(name) => encode_bulk(out, name),
        None => encode_null(out, version),
    }
    encode_integer(out, i64::try_from(count).unwrap_or(i64::MAX));
}

/// `message` frame for (channel, payload): `[message, channel, payload]`.
pub fn encode_message(out: &mut Vec<u8>, version: RespVersion, channel: &[u8], payload: &[u8]) {
    encode_message_head(out, version, channel, payload.len());
    out.extend_from_slice(payload);
    out.extend_from_slice(FRAME_TAIL);
}

/// Everything of [`encode_message`] up to the payload: write it, the payload and
/// [`FRAME_TAIL`] to copy no payload bytes.
pub fn encode_message_head(
    out: &mut Vec<u8>,
    version: RespVersion,
    channel: &[u8],
    payload_len: usize,
) {
    // Written once per delivery, so in as few copies as the format allows: the constant
    // first two elements with the channel's `$`, then each separator with the next `$`.
    out.extend_from_slice(match version {
        RespVersion::Resp2 => b"*3\r\n$7\r\nmessage\r\n$",
        RespVersion::Resp3 => b">3\r\n$7\r\nmessage\r\n$",
    });
    push_u64(out, channel.len() as u64);
    out.extend_from_slice(FRAME_TAIL);
    out.extend_from_slice(channel);
    out.extend_from_slice(b"\r\n$");
    push_u64(out, payload_len as u64);
    out.extend_from_slice(FRAME_TAIL);
}

/// Exact length of [`encode_message`]'s output, to size one shared buffer.
pub fn message_len(channel_len: usize, payload_len: usize) -> usize {
    // The push and array headers have the same length.
    4 + bulk_len(b"message".len()) + bulk_len(channel_len) + bulk_len(payload_len)
}

/// `smessage` frame (sharded pub/sub): `[smessage, channel, payload]`.
pub fn encode_smessage(out: &mut Vec<u8>, version: RespVersion, channel: &[u8], payload: &[u8]) {
    encode_push_header(out, version, 3);
    encode_bulk(out, b"smessage");
    encode_bulk(out, channel);
    encode_bulk(out, payload);
}

/// `pmessage` frame: `[pmessage, pattern, channel, payload]`, once per (pattern, publish).
pub fn encode_pmessage(
    out: &mut Vec<u8>,
    version: RespVersion,
    pattern: &[u8],
    channel: &[u8],
    payload: &[u8],
) {
    encode_pmessage_head(out, version, pattern, channel, payload.len());
    out.extend_from_slice(payload);
    out.extend_from_slice(FRAME_TAIL);
}

/// Everything of [`encode_pmessage`] up to the payload (see [`encode_message_head`]).
pub fn encode_pmessage_head(
    out: &mut Vec<u8>,
    version: RespVersion,
    pattern: &[u8],
    channel: &[u8],
    payload_len: usize,
) {
    encode_push_header(out, version, 4);
    encode_bulk(out, b"pmessage");
    encode_bulk(out, pattern);
    encode_bulk(out, channel);
    push_header(out, b'$', payload_len);
}

/// The reply to PING. Outside RESP2 subscribed mode: `+PONG`, or the argument as a bulk
/// string. In RESP2 subscribed mode Redis answers `[pong, argument or ""]` as an array, since
/// the client is reading pushes then.
pub fn encode_pong(out: &mut Vec<u8>, resp2_subscribed: bool, argument: Option<&[u8]>) {
    if resp2_subscribed {
        encode_array_header(out, 2);
        encode_bulk(out, b"pong");
        encode_bulk(out, argument.unwrap_or_default());
    } else {
        match argument {
            Some(argument) => encode_bulk(out, argument),
            None => out.extend_from_slice(b"+PONG\r\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const V2: RespVersion = RespVersion::Resp2;
    const V3: RespVersion = RespVersion::Resp3;

    /// What decoding the whole input should give.
    #[derive(Debug, PartialEq)]
    enum Expect<'a> {
        Request(&'a [&'a [u8]], usize),
        Incomplete,
        Error(RequestError),
    }

    fn decode_all(decoder: &mut RequestDecoder, input: &[u8]) -> Expect<'static> {
        match decoder.decode(input) {
            Ok(Some((request, consumed))) => {
                let args: Vec<&'static [u8]> = request
                    .to_vecs()
                    .into_iter()
                    .map(|arg| &*Vec::leak(arg))
                    .collect();
                Expect::Request(Vec::leak(args), consumed)
            }
            Ok(None) => Expect::Incomplete,
            Err(error) => Expect::Error(error),
        }
    }

    /// Each case is a fresh buffer, so a fresh decoder (one resumes an incomplete request).
    fn check_with(limits: RequestLimits, cases: &[(&[u8], Expect<'_>)]) {
        for (input, expected) in cases {
            let mut decoder = RequestDecoder::new(limits);
            let got = decode_all(&mut decoder, input);
            assert_eq!(&got, expected, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    fn check(cases: &[(&[u8], Expect<'_>)]) {
        check_with(RequestLimits::default(), cases);
    }

    use Expect::{Error as E, Incomplete as I, Request as R};

    #[test]
    fn multibulk_requests() {
        check(&[
            (b"*1\r\n$4\r\nPING\r\n", R(&[b"PING"], 14)),
            (
                b"*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\n",
                R(&[b"ECHO", b"hello"], 25),
            ),
            (b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n", R(&[b"ECHO", b""], 20)),
            (
                b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n",
                R(&[b"PING"], 14),
            ),
            // Binary payloads, CR and LF inside included.
            (b"*1\r\n$4\r\na\r\nb\r\n", R(&[b"a\r\nb"], 14)),
            (b"*1\r\n$2\r\n\x00\xff\r\n", R(&[b"\x00\xff"], 12)),
            // Empty requests.
            (b"*0\r\n", R(&[], 4)),
            (b"*-1\r\n", R(&[], 5)),
            (b"*-5\r\n$1\r\n", R(&[], 5)),
            // As Redis: the byte after a count's `\r` and the two after a payload are skipped.
            (b"*1\rX$1\rYaZZ", R(&[b"a"], 11)),
            (b"*1\x00\r\n$1\r\na\r\n", I),
            (b"*1\r\n$1\x00\r\na\r\n", I),
            // Incomplete at every stage.
            (b"*", I),
            (b"*1", I),
            (b"*1\r", I),
            (b"*1\r\n", I),
            (b"*1\r\n$", I),
            (b"*1\r\n$4\r", I),
            (b"*1\r\n$4\r\n", I),
            (b"*1\r\n$4\r\nPING", I),
            (b"*1\r\n$4\r\nPING\r", I),
            (b"*2\r\n$4\r\nECHO\r\n", I),
            // A wrong first byte is only reported once its line is complete, as in Redis.
            (b"*1\r\nx", I),
            (b"*1\r\nx\r", I),
        ]);
    }

    #[test]
    fn multibulk_errors_have_redis_texts() {
        use RequestError::*;
        check(&[
            (b"*x\r\n", E(InvalidMultibulkLength)),
            (b"*\r\n", E(InvalidMultibulkLength)),
            (b"*+1\r\n", E(InvalidMultibulkLength)),
            (b"*01\r\n", E(InvalidMultibulkLength)),
            (b"*-0\r\n", E(InvalidMultibulkLength)),
            (b"* 1\r\n", E(InvalidMultibulkLength)),
            (b"*1 \r\n", E(InvalidMultibulkLength)),
            (b"*2147483648\r\n", E(InvalidMultibulkLength)),
            (b"*99999999999999999999\r\n", E(InvalidMultibulkLength)),
            (b"*1048577\r\n", E(InvalidMultibulkLength)),
            (b"*1\r\n$x\r\n", E(InvalidBulkLength)),
            (b"*1\r\n$-1\r\n", E(InvalidBulkLength)),
            (b"*1\r\n$\r\n", E(InvalidBulkLength)),
            (b"*1\r\n$536870913\r\n", E(InvalidBulkLength)),
            (b"*1\r\n$9223372036854775808\r\n", E(InvalidBulkLength)),
            (b"*1\r\n:1\r\n", E(ExpectedDollar(b':'))),
            (b"*1\r\n\r\n", E(ExpectedDollar(b'\r'))),
            (b"*2\r\n$1\r\na\r\n*1\r\n", E(ExpectedDollar(b'*'))),
        ]);
        // A 512 MiB bulk header is accepted by Redis's default, refused by a corebus bound.
        check(&[(b"*1\r\n$536870912\r\n", I)]);
        check_with(
            RequestLimits::for_message_bytes_max(1024 * 1024),
            &[
                (b"*1\r\n$536870912\r\n", E(InvalidBulkLength)),
                (b"*1\r\n$1048576\r\n", I),
                (b"*1\r\n$1048577\r\n", E(InvalidBulkLength)),
            ],
        );
    }

    #[test]
    fn count_lines_are_bounded() {
        let mut star = b"*".to_vec();
        star.resize(INLINE_BYTES_MAX, b'1');
        check(&[(&star, I)]);
        star.push(b'1');
        check(&[(&star, E(RequestError::TooBigMbulkCountString))]);
        // The same line with its `\r` present gets the same answer.
        star.extend_from_slice(b"\r\n");
        check(&[(&star, E(RequestError::TooBigMbulkCountString))]);

        let mut dollar = b"*1\r\n$".to_vec();
        dollar.resize(4 + INLINE_BYTES_MAX + 1, b'1');
        check(&[(&dollar, E(RequestError::TooBigBulkCountString))]);
        // Redis checks the size before the `$`.
        let mut garbage = b"*1\r\n".to_vec();
        garbage.resize(4 + INLINE_BYTES_MAX + 1, b'x');
        check(&[(&garbage, E(RequestError::TooBigBulkCountString))]);
        // A NUL hides the `\r` until the limit is exceeded.
        let mut hidden = b"*1\x00\r\n".to_vec();
        hidden.resize(INLINE_BYTES_MAX + 1, b'a');
        check(&[(&hidden, E(RequestError::TooBigMbulkCountString))]);
        let mut hidden = b"PING\x00\r\n".to_vec();
        hidden.resize(INLINE_BYTES_MAX + 1, b'a');
        check(&[(&hidden, E(RequestError::TooBigInlineRequest))]);
    }

    #[test]
    fn inline_requests() {
        check(&[
            (b"PING\r\n", R(&[b"PING"], 6)),
            (b"PING\n", R(&[b"PING"], 5)),
            (b"ping\r\nping\r\n", R(&[b"ping"], 6)),
            (
                b"SUBSCRIBE a b  c\r\n",
                R(&[b"SUBSCRIBE", b"a", b"b", b"c"], 18),
            ),
            (b"  \t PING \t \r\n", R(&[b"PING"], 13)),
            (b"\r\n", R(&[], 2)),
            (b"\n", R(&[], 1)),
            (b"   \r\n", R(&[], 5)),
            (b"PING", I),
            (b"PING\r", I),
            // Quoting.
            (
                b"ECHO \"hello world\"\r\n",
                R(&[b"ECHO", b"hello world"], 20),
            ),
            (b"ECHO 'hello world'\n", R(&[b"ECHO", b"hello world"], 19)),
            (b"ECHO \"\"\n", R(&[b"ECHO", b""], 8)),
            (b"ECHO ''\n", R(&[b"ECHO", b""], 8)),
            (b"ECHO \"a\\x41\\x7a\"\n", R(&[b"ECHO", b"aAz"], 17)),
            (b"ECHO \"\\xff\\x00\"\n", R(&[b"ECHO", b"\xff\x00"], 16)),
            (b"ECHO \"\\xZZ\"\n", R(&[b"ECHO", b"xZZ"], 12)),
            (
                b"ECHO \"\\n\\r\\t\\b\\a\\\\\\\"\\q\"\n",
                R(&[b"ECHO", b"\n\r\t\x08\x07\\\"q"], 24),
            ),
            (b"ECHO 'a\\'b'\n", R(&[b"ECHO", b"a'b"], 12)),
            (b"ECHO 'a\\nb'\n", R(&[b"ECHO", b"a\\nb"], 12)),
            (b"ECHO a\"b c\"\n", R(&[b"ECHO", b"ab c"], 12)),
            (b"ECHO \"a\"\t\"b\"\n", R(&[b"ECHO", b"a", b"b"], 13)),
            // Vertical tab: a blank between arguments, but part of an unquoted one.
            (b"\x0bECHO a\x0bb\n", R(&[b"ECHO", b"a\x0bb"], 10)),
            // A CR in mid-line ends an unquoted argument; inside quotes it is kept.
            (b"ECHO a\rb\n", R(&[b"ECHO", b"a", b"b"], 9)),
            (b"ECHO \"a\rb\"\n", R(&[b"ECHO", b"a\rb"], 11)),
            // A NUL hides the end of the line, as Redis's `strchr` does.
            (b"ECHO a\x00b c\n", I),
        ]);
    }

    #[test]
    fn inline_errors_have_redis_texts() {
        use RequestError::*;
        check(&[
            (b"ECHO \"abc\n", E(UnbalancedQuotes)),
            (b"ECHO 'abc\n", E(UnbalancedQuotes)),
            (b"ECHO \"abc\"def\n", E(UnbalancedQuotes)),
            (b"ECHO 'abc'def\n", E(UnbalancedQuotes)),
            (b"ECHO \"abc\\\"\n", E(UnbalancedQuotes)),
            (b"ECHO \"\n", E(UnbalancedQuotes)),
            (b"\"\n", E(UnbalancedQuotes)),
        ]);
        let mut line = vec![b'a'; INLINE_BYTES_MAX];
        check(&[(&line, I)]);
        line.push(b'a');
        check(&[(&line, E(TooBigInlineRequest))]);
        line.push(b'\n');
        check(&[(&line, E(TooBigInlineRequest))]);
        let mut longest = vec![b'a'; INLINE_BYTES_MAX];
        longest.push(b'\n');
        check(&[(
            &longest,
            R(&[&[b'a'; INLINE_BYTES_MAX]], INLINE_BYTES_MAX + 1),
        )]);
    }

    #[test]
    fn error_replies_are_redis_bytes() {
        let cases: &[(RequestError, &[u8])] = &[
            (
                RequestError::InvalidMultibulkLength,
                b"-ERR Protocol error: invalid multibulk length\r\n",
            ),
            (
                RequestError::InvalidBulkLength,
                b"-ERR Protocol error: invalid bulk length\r\n",
            ),
            (
                RequestError::ExpectedDollar(b'x'),
                b"-ERR Protocol error: expected '$', got 'x'\r\n",
            ),
            (
                RequestError::ExpectedDollar(b'\r'),
                b"-ERR Protocol error: expected '$', got ' '\r\n",
            ),
            (
                RequestError::TooBigInlineRequest,
                b"-ERR Protocol error: too big inline request\r\n",
            ),
            (
                RequestError::UnbalancedQuotes,
                b"-ERR Protocol error: unbalanced quotes in request\r\n",
            ),
            (
                RequestError::TooBigMbulkCountString,
                b"-ERR Protocol error: too big mbulk count string\r\n",
            ),
            (
                RequestError::TooBigBulkCountString,
                b"-ERR Protocol error: too big bulk count string\r\n",
            ),
        ];
        for (error, expected) in cases {
            let mut out = Vec::new();
            error.encode(&mut out);
            assert_eq!(out, *expected, "{error:?}");
        }
    }

    #[test]
    fn redis_integers() {
        let cases: &[(&[u8], Option<i64>)] = &[
            (b"0", Some(0)),
            (b"1", Some(1)),
            (b"-1", Some(-1)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"-9223372036854775808", Some(i64::MIN)),
            (b"9223372036854775808", None),
            (b"-9223372036854775809", None),
            (b"", None),
            (b"-", None),
            (b"-0", None),
            (b"00", None),
            (b"01", None),
            (b"+1", None),
            (b" 1", None),
            (b"1 ", None),
            (b"1a", None),
            (b"123456789012345678901", None),
        ];
        for &(input, expected) in cases {
            assert_eq!(parse_redis_integer(input), expected, "{input:?}");
        }
    }

    #[test]
    fn decoder_reuses_its_tables() {
        let mut decoder = RequestDecoder::new(RequestLimits::default());
        let input = b"SET \"a b\" c\r\n*2\r\n$1\r\nx\r\n$1\r\ny\r\n";
        let (request, consumed) = decoder.decode(input).unwrap().unwrap();
        assert_eq!(request.kind(), RequestKind::Inline);
        assert_eq!(request.to_vecs(), [&b"SET"[..], b"a b", b"c"]);
        assert_eq!(request.name(), Some(&b"SET"[..]));
        assert_eq!(request.arg(3), None);
        let (request, rest) = decoder.decode(&input[consumed..]).unwrap().unwrap();
        assert_eq!(request.kind(), RequestKind::Multibulk);
        assert_eq!(request.to_vecs(), [b"x", b"y"]);
        assert_eq!(consumed + rest, input.len());
        // Multibulk arguments point into the caller's buffer.
        let base = input[consumed..].as_ptr() as usize;
        let arg = request.arg(0).unwrap().as_ptr() as usize;
        assert_eq!(arg - base, 8);
    }

    /// Feeds `input` `step` bytes at a time to one decoder, as a connection would.
    fn trickle(input: &[u8], step: usize) -> (Vec<Vec<Vec<u8>>>, usize) {
        let mut decoder = RequestDecoder::new(RequestLimits::default());
        let mut decoded = Vec::new();
        let mut start = 0;
        let mut available = 0;
        let mut calls = 0;
        while available < input.len() {
            available = (available + step).min(input.len());
            calls += 1;
            while let Some((request, consumed)) = decoder.decode(&input[start..available]).unwrap()
            {
                decoded.push(request.to_vecs());
                start += consumed;
            }
        }
        (decoded, calls)
    }

    #[test]
    fn trickling_requests_resume_where_they_stopped() {
        // 50,000 arguments arriving 7 bytes at a time: rescanning from the start on every
        // read would take about a billion steps; resuming takes a few hundred thousand.
        let args: Vec<Vec<u8>> = (0..50_000).map(|i| format!("a{i}").into_bytes()).collect();
        let mut input = Vec::new();
        encode_array_header(&mut input, args.len());
        for arg in &args {
            encode_bulk(&mut input, arg);
        }
        let (decoded, calls) = trickle(&input, 7);
        assert!(calls > 50_000);
        assert_eq!(decoded, [args]);

        // An inline line and a count line arriving a byte at a time.
        let mut line = vec![b'x'; INLINE_BYTES_MAX - 2];
        line.extend_from_slice(b"\r\n");
        let (decoded, _) = trickle(&line, 1);
        assert_eq!(decoded, [[vec![b'x'; INLINE_BYTES_MAX - 2]]]);
        let mut header = b"*".to_vec();
        header.resize(INLINE_BYTES_MAX, b'1');
        let mut decoder = RequestDecoder::new(RequestLimits::default());
        for end in 1..=header.len() {
            assert_eq!(
                decoder.decode(&header[..end]).map(|r| r.is_none()),
                Ok(true)
            );
        }
        header.push(b'1');
        assert_eq!(
            decoder.decode(&header).map(|r| r.is_none()),
            Err(RequestError::TooBigMbulkCountString)
        );
    }

    #[test]
    fn reset_and_shrunk_buffers_start_over() {
        let mut decoder = RequestDecoder::new(RequestLimits::default());
        assert!(decoder.decode(b"*2\r\n$1\r\na\r\n$1").unwrap().is_none());
        decoder.reset();
        let (request, consumed) = decoder.decode(b"PING\r\n").unwrap().unwrap();
        assert_eq!((request.to_vecs(), consumed), (vec![b"PING".to_vec()], 6));

        assert!(decoder.decode(b"*2\r\n$1\r\na\r\n$1").unwrap().is_none());
        // Shorter than last time: the caller must have dropped its input.
        let (request, _) = decoder.decode(b"*1\r\n$1\r\nb\r\n").unwrap().unwrap();
        assert_eq!(request.to_vecs(), [b"b"]);
    }

    #[test]
    fn requests_resolve_without_copying_arguments() {
        use crate::protocol::resp_commands::{resolve, CommandId};
        let mut decoder = RequestDecoder::new(RequestLimits::default());
        let (request, _) = decoder
            .decode(b"*3\r\n$7\r\npublish\r\n$1\r\nc\r\n$2\r\nhi\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            resolve(&request, false).map(|spec| spec.id),
            Ok(CommandId::Publish)
        );
    }

    fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut out);
        out
    }

    #[test]
    fn reply_bytes() {
        let cases: Vec<(Vec<u8>, &[u8])> = vec![
            (encoded(|o| encode_simple(o, b"OK")), b"+OK\r\n"),
            (encoded(|o| encode_simple(o, b"a\r\nb")), b"+a  b\r\n"),
            (encoded(encode_ok), b"+OK\r\n"),
            (encoded(|o| encode_error(o, b"bad")), b"-ERR bad\r\n"),
            (
                encoded(|o| encode_error(o, b"-NOPROTO unsupported protocol version")),
                b"-NOPROTO unsupported protocol version\r\n",
            ),
            (encoded(|o| encode_error(o, b"a\nb")), b"-ERR a b\r\n"),
            (encoded(|o| encode_integer(o, 0)), b":0\r\n"),
            (encoded(|o| encode_integer(o, 9)), b":9\r\n"),
            (encoded(|o| encode_integer(o, 10)), b":10\r\n"),
            (encoded(|o| encode_integer(o, -1)), b":-1\r\n"),
            (encoded(|o| encode_integer(o, -42)), b":-42\r\n"),
            (
                encoded(|o| encode_integer(o, i64::MIN)),
                b":-9223372036854775808\r\n",
            ),
            (encoded(|o| encode_bulk(o, b"")), b"$0\r\n\r\n"),
            (encoded(|o| encode_bulk(o, b"hi")), b"$2\r\nhi\r\n"),
            (encoded(|o| encode_null(o, V2)), b"$-1\r\n"),
            (encoded(|o| encode_null(o, V3)), b"_\r\n"),
            (encoded(|o| encode_null_array(o, V2)), b"*-1\r\n"),
            (encoded(|o| encode_null_array(o, V3)), b"_\r\n"),
            (encoded(|o| encode_map_header(o, V2, 2)), b"*4\r\n"),
            (encoded(|o| encode_map_header(o, V3, 2)), b"%2\r\n"),
            (encoded(|o| encode_set_header(o, V2, 3)), b"*3\r\n"),
            (encoded(|o| encode_set_header(o, V3, 3)), b"~3\r\n"),
            (encoded(|o| encode_push_header(o, V2, 3)), b"*3\r\n"),
            (encoded(|o| encode_push_header(o, V3, 3)), b">3\r\n"),
            (encoded(|o| encode_double(o, V3, 1.5)), b",1.5\r\n"),
            (encoded(|o| encode_double(o, V3, 3.0)), b",3\r\n"),
            (encoded(|o| encode_double(o, V2, 1.5)), b"$3\r\n1.5\r\n"),
            (
                encoded(|o| encode_double(o, V3, f64::INFINITY)),
                b",inf\r\n",
            ),
            (
                encoded(|o| encode_double(o, V3, f64::NEG_INFINITY)),
                b",-inf\r\n",
            ),
            (encoded(|o| encode_double(o, V3, f64::NAN)), b",nan\r\n"),
            (encoded(|o| encode_double(o, V3, 1e300)), b",1e300\r\n"),
            (encoded(|o| encode_boolean(o, V3, true)), b"#t\r\n"),
            (encoded(|o| encode_boolean(o, V3, false)), b"#f\r\n"),
            (encoded(|o| encode_boolean(o, V2, true)), b":1\r\n"),
            (
                encoded(|o| encode_verbatim(o, V3, *b"txt", b"hi")),
                b"=6\r\ntxt:hi\r\n",
            ),
            (
                encoded(|o| encode_verbatim(o, V2, *b"txt", b"hi")),
                b"$2\r\nhi\r\n",
            ),
        ];
        for (got, expected) in cases {
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(expected)
            );
        }
    }

    #[test]
    fn pubsub_frames_are_redis_bytes() {
        let cases: Vec<(Vec<u8>, &[u8])> = vec![
            (
                encoded(|o| encode_message(o, V2, b"news", b"hi")),
                b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n",
            ),
            (
                encoded(|o| encode_message(o, V3, b"news", b"hi")),
                b">3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n",
            ),
            (
                encoded(|o| encode_smessage(o, V3, b"news", b"")),
                b">3\r\n$8\r\nsmessage\r\n$4\r\nnews\r\n$0\r\n\r\n",
            ),
            (
                encoded(|o| encode_pmessage(o, V2, b"n*", b"news", b"hi")),
                b"*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$2\r\nhi\r\n",
            ),
            (
                encoded(|o| encode_pmessage(o, V3, b"n*", b"news", b"hi")),
                b">4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$2\r\nhi\r\n",
            ),
            (
                encoded(|o| encode_subscription(o, V2, SubscriptionKind::Subscribe, Some(b"a"), 1)),
                b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n",
            ),
            (
                encoded(|o| {
                    encode_subscription(o, V3, SubscriptionKind::PSubscribe, Some(b"a*"), 2)
                }),
                b">3\r\n$10\r\npsubscribe\r\n$2\r\na*\r\n:2\r\n",
            ),
            (
                encoded(|o| encode_subscription(o, V2, SubscriptionKind::Unsubscribe, None, 0)),
                b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n",
            ),
            (
                encoded(|o| encode_subscription(o, V3, SubscriptionKind::PUnsubscribe, None, 0)),
                b">3\r\n$12\r\npunsubscribe\r\n_\r\n:0\r\n",
            ),
            (
                encoded(|o| {
                    encode_subscription(o, V2, SubscriptionKind::SSubscribe, Some(b"s"), 1)
                }),
                b"*3\r\n$10\r\nssubscribe\r\n$1\r\ns\r\n:1\r\n",
            ),
            (
                encoded(|o| {
                    encode_subscription(o, V3, SubscriptionKind::SUnsubscribe, Some(b"s"), 0)
                }),
                b">3\r\n$12\r\nsunsubscribe\r\n$1\r\ns\r\n:0\r\n",
            ),
            (encoded(|o| encode_pong(o, false, None)), b"+PONG\r\n"),
            (
                encoded(|o| encode_pong(o, false, Some(b"x"))),
                b"$1\r\nx\r\n",
            ),
            (
                encoded(|o| encode_pong(o, true, None)),
                b"*2\r\n$4\r\npong\r\n$0\r\n\r\n",
            ),
            (
                encoded(|o| encode_pong(o, true, Some(b"x"))),
                b"*2\r\n$4\r\npong\r\n$1\r\nx\r\n",
            ),
        ];
        for (got, expected) in cases {
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(expected)
            );
        }
    }

    #[test]
    fn hello_maps() {
        let info = HelloInfo::corebus(V3, 7);
        let bytes = encoded(|o| encode_hello(o, &info));
        let expected: &[u8] =
            b"%7\r\n$6\r\nserver\r\n$7\r\ncorebus\r\n$7\r\nversion\r\n$5\r\n7.2.0\r\n\
            $5\r\nproto\r\n:3\r\n$2\r\nid\r\n:7\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n\
            $4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n";
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(expected)
        );
        let (reply, used) = decode_reply(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        let Reply::Map(pairs) = reply else {
            panic!("not a map: {reply:?}")
        };
        let keys: Vec<_> = pairs.iter().map(|(k, _)| k.clone()).collect();
        let expected_keys: Vec<Reply> = [
            "server", "version", "proto", "id", "mode", "role", "modules",
        ]
        .iter()
        .map(Reply::bulk)
        .collect();
        assert_eq!(keys, expected_keys);
        assert_eq!(pairs[2].1, Reply::Integer(3));

        let bytes = encoded(|o| encode_hello(o, &HelloInfo::corebus(V2, 7)));
        let (reply, _) = decode_reply(&bytes).unwrap().unwrap();
        let Reply::Array(items) = reply else {
            panic!("not an array: {reply:?}")
        };
        assert_eq!(items.len(), 14);
        assert_eq!(items[5], Reply::Integer(2));
    }

    #[test]
    fn message_heads_and_lengths() {
        for version in [V2, V3] {
            for (channel, payload) in [
                (&b""[..], &b""[..]),
                (b"news", b"x"),
                (b"c", &[7u8; 1000][..]),
            ] {
                let whole = encoded(|o| encode_message(o, version, channel, payload));
                assert_eq!(whole.len(), message_len(channel.len(), payload.len()));
                let mut split =
                    encoded(|o| encode_message_head(o, version, channel, payload.len()));
                split.extend_from_slice(payload);
                split.extend_from_slice(FRAME_TAIL);
                assert_eq!(split, whole);
                let whole = encoded(|o| encode_pmessage(o, version, b"p*", channel, payload));
                let mut split =
                    encoded(|o| encode_pmessage_head(o, version, b"p*", channel, payload.len()));
                split.extend_from_slice(payload);
                split.extend_from_slice(FRAME_TAIL);
                assert_eq!(split, whole);
            }
        }
    }

    #[test]
    fn reply_decoder_refuses_bad_input() {
        let cases: &[(&[u8], Result<(), ReplyDecodeError>)] = &[
            (b"?x\r\n", Err(ReplyDecodeError::UnknownType(b'?'))),
            (b"+OK\rX", Err(ReplyDecodeError::MissingCrlf)),
            (b"$2\r\nabXY", Err(ReplyDecodeError::MissingCrlf)),
            (b":x\r\n", Err(ReplyDecodeError::BadInteger)),
            (b"$-2\r\n", Err(ReplyDecodeError::BadLength)),
            (b"#x\r\n", Err(ReplyDecodeError::BadBoolean)),
            (b",x\r\n", Err(ReplyDecodeError::BadDouble)),
            (b"=2\r\nab\r\n", Err(ReplyDecodeError::BadVerbatim)),
            (b"%-1\r\n", Err(ReplyDecodeError::BadLength)),
        ];
        for &(input, expected) in cases {
            assert_eq!(decode_reply(input).map(|_| ()), expected, "{input:?}");
        }
        let deep = b"*1\r\n".repeat(REPLY_DEPTH_MAX + 2);
        assert_eq!(decode_reply(&deep), Err(ReplyDecodeError::TooDeep));
        assert_eq!(decode_reply(b"*-1\r\n"), Ok(Some((Reply::NullArray, 5))));
        assert_eq!(decode_reply(b"$-1\r\n"), Ok(Some((Reply::Null, 5))));
        assert_eq!(decode_reply(b"*2\r\n:1\r\n"), Ok(None));
        assert_eq!(decode_reply(b"*4000000000\r\n"), Ok(None));
    }

    #[test]
    fn nested_huge_counts_wait_for_their_elements() {
        // Found by tests/fuzz.rs (which also checks what this allocates): every level of such
        // a nesting used to get capacity for a third of the input's length in elements.
        let mut nested = b"*1048576\r\n".repeat(REPLY_DEPTH_MAX - 1);
        nested.extend_from_slice(b"%65535\r\n_\r\n");
        assert_eq!(decode_reply(&nested), Ok(None));
    }

    // --- property tests ---

    fn arg_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => "[a-zA-Z0-9:._-]{0,12}".prop_map(String::into_bytes),
            1 => proptest::collection::vec(any::<u8>(), 0..40),
        ]
    }

    fn encode_multibulk(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_array_header(&mut out, args.len());
        for arg in args {
            encode_bulk(&mut out, arg);
        }
        out
    }

    /// Quotes an argument for an inline line so that Redis's splitter gives it back.
    /// How an inline argument is written: 0 in double quotes with `\xHH`, 1 in single quotes,
    /// 2 bare; each falls back to the previous when it cannot hold the argument.
    fn quote_inline(arg: &[u8], style: u8) -> Vec<u8> {
        let bare_ok = !arg.is_empty()
            && arg
                .iter()
                .all(|&byte| byte.is_ascii_alphanumeric() || b":._-".contains(&byte));
        if style == 2 && bare_ok {
            return arg.to_vec();
        }
        // Single quotes cannot hold a line end, a NUL (it hides the line end) or a final `\`
        // (it would escape the closing quote).
        let single_ok =
            !arg.iter().any(|&byte| byte == b'\n' || byte == 0) && arg.last() != Some(&b'\\');
        if style >= 1 && single_ok {
            let mut out = b"'".to_vec();
            for &byte in arg {
                if byte == b'\'' {
                    out.push(b'\\');
                }
                out.push(byte);
            }
            out.push(b'\'');
            return out;
        }
        let mut out = b"\"".to_vec();
        for &byte in arg {
            if byte.is_ascii_alphanumeric() {
                out.push(byte);
            } else {
                out.extend_from_slice(format!("\\x{byte:02x}").as_bytes());
            }
        }
        out.push(b'"');
        out
    }

    /// A pipeline of requests, each multibulk (`None`) or inline in some quoting style.
    fn pipeline() -> impl Strategy<Value = Vec<(Option<u8>, Vec<Vec<u8>>)>> {
        proptest::collection::vec(
            (
                proptest::option::of(0..3u8),
                proptest::collection::vec(arg_bytes(), 1..5),
            ),
            1..6,
        )
    }

    fn encode_pipeline(requests: &[(Option<u8>, Vec<Vec<u8>>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (inline, args) in requests {
            if let Some(style) = *inline {
                let quoted: Vec<Vec<u8>> =
                    args.iter().map(|arg| quote_inline(arg, style)).collect();
                out.extend_from_slice(&quoted.join(&b' '));
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(&encode_multibulk(args));
            }
        }
        out
    }

    /// Feeds `input` in pieces ending at `cuts`, decoding whatever is complete after each,
    /// like a connection reading from a socket.
    fn decode_in_pieces(input: &[u8], cuts: &[usize]) -> Result<Vec<Vec<Vec<u8>>>, RequestError> {
        let mut decoder = RequestDecoder::new(RequestLimits::default());
        let mut decoded = Vec::new();
        let mut start = 0;
        for &available in cuts.iter().chain(std::iter::once(&input.len())) {
            while let Some((request, consumed)) =
                decoder.decode(&input[start..available.max(start)])?
            {
                assert!(consumed > 0);
                decoded.push(request.to_vecs());
                start += consumed;
            }
        }
        assert_eq!(start, input.len(), "bytes left undecoded");
        Ok(decoded)
    }

    fn reply() -> impl Strategy<Value = Reply> {
        let leaf = prop_oneof![
            "[a-zA-Z0-9 ]{0,10}".prop_map(|s| Reply::Simple(s.into_bytes())),
            "[a-zA-Z0-9 ]{0,10}".prop_map(|s| Reply::Error(s.into_bytes())),
            prop_oneof![any::<i64>(), -20..20i64].prop_map(Reply::Integer),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(Reply::Bulk),
            Just(Reply::Null),
            Just(Reply::NullArray),
            prop_oneof![
                any::<f64>().prop_filter("NaN is not equal to itself", |v| !v.is_nan()),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(0.1),
                Just(-0.0),
            ]
            .prop_map(Reply::Double),
            any::<bool>().prop_map(Reply::Boolean),
            proptest::collection::vec(any::<u8>(), 0..20).prop_map(|text| Reply::Verbatim {
                format: *b"txt",
                text
            }),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Reply::Array),
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Reply::Set),
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Reply::Push),
                proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Reply::Map),
            ]
        })
    }

    /// Near-PUBLISH input: valid requests with a byte changed, inserted or cut, so the fast
    /// path meets every way its one form can be almost right.
    fn near_publish() -> impl Strategy<Value = Vec<u8>> {
        let valid = (
            prop_oneof![
                Just("PUBLISH"),
                Just("publish"),
                Just("PuBlIsH"),
                Just("PUBLISX")
            ],
            proptest::collection::vec(any::<u8>(), 0..20),
            proptest::collection::vec(any::<u8>(), 0..80),
        )
            .prop_map(|(name, channel, payload)| {
                let mut bytes = Vec::new();
                encode_array_header(&mut bytes, 3);
                encode_bulk(&mut bytes, name.as_bytes());
                encode_bulk(&mut bytes, &channel);
                encode_bulk(&mut bytes, &payload);
                bytes
            });
        (
            valid,
            any::<prop::sample::Index>(),
            prop_oneof![
                Just(None),
                Just(Some(b'0')),
                Just(Some(b'9')),
                Just(Some(b'\r')),
                Just(Some(b'-')),
                Just(Some(b'+')),
                any::<u8>().prop_map(Some)
            ],
            0..4u8,
        )
            .prop_map(|(mut bytes, at, byte, edit)| {
                let at = at.index(bytes.len() + 1);
                match (edit, byte) {
                    (0, _) | (_, None) => {}
                    (1, Some(byte)) if at < bytes.len() => bytes[at] = byte,
                    (2, Some(byte)) => bytes.insert(at, byte),
                    _ => bytes.truncate(at),
                }
                bytes
            })
    }

    #[test]
    fn the_publish_fast_path_reads_the_common_form() {
        let input = b"*3\r\n$7\r\npublish\r\n$5\r\norder\r\n$2\r\nhi\r\nPING\r\n";
        let found = decode_publish(input, RequestLimits::default()).unwrap();
        assert_eq!((found.channel, found.payload), (&b"order"[..], &b"hi"[..]));
        assert_eq!(&input[found.consumed..], b"PING\r\n");
        // Not its form: the general decoder's.
        for other in [
            &b"*3\r\n$7\r\nPUBLISH\r\n$05\r\norder\r\n$2\r\nhi\r\n"[..],
            b"*3\r\n$7\r\nPUBLISH\r\n$5\r\norder\r\n$2\r\nhi\r",
            b"PUBLISH order hi\r\n",
            b"*3\r\n$8\r\nSPUBLISH\r\n$5\r\norder\r\n$2\r\nhi\r\n",
        ] {
            assert_eq!(decode_publish(other, RequestLimits::default()), None);
        }
        let small = RequestLimits {
            bulk_bytes_max: 4,
            ..RequestLimits::default()
        };
        assert_eq!(decode_publish(input, small), None);
    }

    proptest! {
        #[test]
        fn the_publish_fast_path_agrees_with_the_decoder(
            bytes in near_publish(),
            bulk_bytes_max in prop_oneof![Just(16usize), Just(64), Just(512 * 1024 * 1024)],
        ) {
            let limits = RequestLimits { bulk_bytes_max, ..RequestLimits::default() };
            if let Some(found) = decode_publish(&bytes, limits) {
                let mut decoder = RequestDecoder::new(limits);
                let (request, consumed) = decoder
                    .decode(&bytes)
                    .expect("the fast path took what the decoder refuses")
                    .expect("the fast path took an incomplete request");
                prop_assert_eq!(consumed, found.consumed);
                prop_assert_eq!(request.len(), 3);
                prop_assert!(request.arg(0).unwrap().eq_ignore_ascii_case(b"PUBLISH"));
                prop_assert_eq!(request.arg(1), Some(found.channel));
                prop_assert_eq!(request.arg(2), Some(found.payload));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut decoder = RequestDecoder::new(RequestLimits {
                bulk_bytes_max: 64,
                multibulk_count_max: 8,
                inline_bytes_max: 32,
            });
            let mut start = 0;
            while let Ok(Some((_, consumed))) = decoder.decode(&bytes[start..]) {
                prop_assert!(consumed > 0 && start + consumed <= bytes.len());
                start += consumed;
            }
            let _ = decode_reply(&bytes);
        }

        #[test]
        fn near_valid_bytes_never_panic(
            bytes in proptest::collection::vec(
                prop_oneof![
                    Just(b'*'), Just(b'$'), Just(b'\r'), Just(b'\n'), Just(b'1'), Just(b'-'),
                    Just(b'"'), Just(b'\''), Just(b'\\'), Just(b'x'), Just(b' '), Just(0u8),
                ],
                0..60,
            )
        ) {
            let mut decoder = RequestDecoder::new(RequestLimits::default());
            let mut start = 0;
            while let Ok(Some((_, consumed))) = decoder.decode(&bytes[start..]) {
                start += consumed;
            }
            let _ = decode_reply(&bytes);
        }

        #[test]
        fn pipelines_decode_the_same_however_split(requests in pipeline()) {
            let input = encode_pipeline(&requests);
            let expected: Vec<Vec<Vec<u8>>> = requests.iter().map(|(_, args)| args.clone()).collect();
            prop_assert_eq!(decode_in_pieces(&input, &[]), Ok(expected.clone()));
            for cut in 0..input.len() {
                prop_assert_eq!(decode_in_pieces(&input, &[cut]), Ok(expected.clone()));
            }
            // Byte by byte.
            let every: Vec<usize> = (0..input.len()).collect();
            prop_assert_eq!(decode_in_pieces(&input, &every), Ok(expected));
        }

        #[test]
        fn errors_do_not_depend_on_the_split(
            bytes in proptest::collection::vec(
                prop_oneof![
                    Just(b'*'), Just(b'$'), Just(b'\r'), Just(b'\n'), Just(b'1'), Just(b'2'),
                    Just(b'a'), Just(b'"'), Just(b' '),
                ],
                0..40,
            ),
            cut in any::<prop::sample::Index>(),
        ) {
            let whole = decode_in_pieces_lenient(&bytes, &[]);
            let cut = cut.index(bytes.len() + 1);
            prop_assert_eq!(decode_in_pieces_lenient(&bytes, &[cut]), whole);
        }

        #[test]
        fn replies_round_trip(reply in reply()) {
            for version in [V2, V3] {
                let mut bytes = Vec::new();
                reply.encode(version, &mut bytes);
                let decoded = decode_reply(&bytes);
                prop_assert_eq!(decoded, Ok(Some((reply.as_seen_by(version), bytes.len()))));
                // Every proper prefix is incomplete, never an error.
                for end in 0..bytes.len() {
                    prop_assert_eq!(decode_reply(&bytes[..end]), Ok(None));
                }
            }
        }

        #[test]
        fn pubsub_frames_round_trip(
            channel in proptest::collection::vec(any::<u8>(), 0..20),
            pattern in proptest::collection::vec(any::<u8>(), 0..20),
            payload in proptest::collection::vec(any::<u8>(), 0..50),
            count in 0..1000usize,
        ) {
            for version in [V2, V3] {
                let frame = |items: Vec<Reply>| match version {
                    V2 => Reply::Array(items),
                    V3 => Reply::Push(items),
                };
                let cases = [
                    (
                        encoded(|o| encode_message(o, version, &channel, &payload)),
                        frame(vec![Reply::bulk("message"), Reply::bulk(&channel), Reply::bulk(&payload)]),
                    ),
                    (
                        encoded(|o| encode_smessage(o, version, &channel, &payload)),
                        frame(vec![Reply::bulk("smessage"), Reply::bulk(&channel), Reply::bulk(&payload)]),
                    ),
                    (
                        encoded(|o| encode_pmessage(o, version, &pattern, &channel, &payload)),
                        frame(vec![
                            Reply::bulk("pmessage"),
                            Reply::bulk(&pattern),
                            Reply::bulk(&channel),
                            Reply::bulk(&payload),
                        ]),
                    ),
                    (
                        encoded(|o| encode_subscription(o, version, SubscriptionKind::Subscribe, Some(&channel), count)),
                        frame(vec![Reply::bulk("subscribe"), Reply::bulk(&channel), Reply::Integer(count as i64)]),
                    ),
                ];
                for (bytes, expected) in cases {
                    prop_assert_eq!(decode_reply(&bytes), Ok(Some((expected, bytes.len()))));
                }
            }
        }
    }

    /// Like [`decode_in_pieces`], but stops at the first error instead of requiring that
    /// everything decodes: (requests decoded, the error if any).
    fn decode_in_pieces_lenient(
        input: &[u8],
        cuts: &[usize],
    ) -> (Vec<Vec<Vec<u8>>>, Option<RequestError>) {
        let mut decoder = RequestDecoder::new(RequestLimits {
            bulk_bytes_max: 16,
            multibulk_count_max: 4,
            inline_bytes_max: 8,
        });
        let mut decoded = Vec::new();
        let mut start = 0;
        for &available in cuts.iter().chain(std::iter::once(&input.len())) {
            loop {
                match decoder.decode(&input[start..available.max(start)]) {
                    Ok(Some((request, consumed))) => {
                        decoded.push(request.to_vecs());
                        start += consumed;
                    }
                    Ok(None) => break,
                    Err(error) => return (decoded, Some(error)),
                }
            }
        }
        (decoded, None)
    }
}
