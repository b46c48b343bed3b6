//! RFC 6455 WebSocket framing as a sans-IO codec: frames in from a read buffer, messages out;
//! messages in, frames appended to an output `Vec`.
//!
//! Why not tungstenite's frame types: its `Frame` owns its payload and its reader works on
//! `io::Read`, so every message would be copied once more before the broker saw it. Here a
//! complete single-frame message is unmasked in place in the connection's read buffer and
//! lent out; only a fragmented message is copied, into one buffer per connection, bounded by
//! the message limit. The handshake lives in [`crate::protocol::http`].
//!
//! # Decoding (what the server accepts)
//!
//! [`Decoder::decode`] looks at the start of the buffer and returns `Ok(None)` while the next
//! frame is incomplete, `Ok(Some((event, consumed)))` once it is whole, and `Err` with the close
//! code to send when the peer broke the protocol (the caller then sends a close frame with
//! that code and closes; nothing after the bad frame is read). Limits are checked as soon as
//! the header says enough, so an oversized frame is refused before its payload is buffered.
//!
//! | Rule                                                           | Close code |
//! |----------------------------------------------------------------|-----------:|
//! | client frames are masked (server frames are not)               | 1002 |
//! | RSV1-3 are zero (no extension is ever negotiated)              | 1002 |
//! | opcode is 0, 1, 2, 8, 9 or 10                                  | 1002 |
//! | control frames: payload at most 125 bytes, never fragmented    | 1002 |
//! | a continuation continues something; a new message waits for the end of the last | 1002 |
//! | a 64-bit length has its top bit clear                          | 1002 |
//! | a message (all its fragments) is at most `message_bytes_max`   | 1009 |
//! | a text message is valid UTF-8 (fragments: at the first bad byte) | 1007 |
//! | a close payload is empty or a valid code (+ UTF-8 reason)      | 1002 / 1007 |
//!
//! Control frames may arrive between the fragments of a message, as the RFC allows; they are
//! returned at once. A frame of an unfinished message is returned as [`Event::Fragment`], so
//! the caller can advance past it. A frame is decoded only once it is whole in the buffer, so
//! a connection's read buffer must be able to hold `message_bytes_max +` [`HEADER_LEN_MAX`]
//! bytes; a fragmented message additionally costs up to `message_bytes_max` in the decoder's
//! own buffer, which is handed back (down to [`FRAGMENT_BUFFER_KEEP_BYTES`]) once delivered.
//!
//! # The lifetime of an exchange
//!
//! Ping: answer [`encode_pong_frame`] with the same payload. Close: answer
//! [`encode_close_reply`] (echoing the code), flush, close the socket. Decoding stops there;
//! whatever follows a close frame is not read. Closing from the server side (slow consumer,
//! shutdown): send the dialect's error message if it has one, then [`encode_close_frame`]
//! with [`close_code::POLICY_VIOLATION`] or [`close_code::GOING_AWAY`], then close after a
//! bounded linger for the peer's close.
//!
//! # Encoding
//!
//! Server frames are never masked and never fragmented. [`encode_text_frame`] writes a whole
//! frame for a JSON text that is already built, so the broker encodes an event once and copies
//! the same bytes to every subscriber. [`encode_masked_frame`] is the client side, for tests,
//! the bench tool and any Rust client.

use std::fmt;

/// Largest payload of a control frame (ping, pong, close).
pub const CONTROL_PAYLOAD_MAX: usize = 125;
/// Longest frame header: 2 bytes, a 64-bit length and a masking key.
pub const HEADER_LEN_MAX: usize = 2 + 8 + 4;
/// A fragment buffer grown past this is shrunk back after its message is delivered, so one
/// large message does not pin a large buffer for the rest of a connection's life.
pub const FRAGMENT_BUFFER_KEEP_BYTES: usize = 64 * 1024;
/// Longest close reason that fits a control frame after its 2-byte code.
pub const CLOSE_REASON_BYTES_MAX: usize = CONTROL_PAYLOAD_MAX - 2;

const FIN: u8 = 0x80;
const RSV_MASK: u8 = 0x70;
const OPCODE_MASK: u8 = 0x0f;
const MASKED: u8 = 0x80;
const LEN7_MASK: u8 = 0x7f;
const LEN16: u8 = 126;
const LEN64: u8 = 127;

/// Frame opcodes (RFC 6455 §5.2). The others are reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xa,
}

impl Opcode {
    pub fn from_u8(value: u8) -> Option<Opcode> {
        Some(match value {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xa => Opcode::Pong,
            _ => return None,
        })
    }

    /// Control frames (close, ping, pong) have the high opcode bit set.
    pub fn is_control(self) -> bool {
        self as u8 & 0x8 != 0
    }
}

/// Close status codes this codec sends (RFC 6455 §7.4.1).
pub mod close_code {
    /// The purpose of the connection was fulfilled.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the framing rules.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A data type the endpoint cannot accept.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text message that is not UTF-8 (or a close reason that is not).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A generic policy violation (slow consumer, rate limits).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message above the size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server hit an unexpected condition.
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// Whether a peer may send `code` in a close frame (RFC 6455 §7.4; 1004-1006 and 1015 are
/// reserved for local use and never travel, 1012-1014 were registered later with IANA).
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A close frame's status and reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    pub code: u16,
    pub reason: &'a str,
}

/// What one decoded frame means to the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message, valid UTF-8.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// Answer with a pong carrying the same bytes.
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// The peer is closing; `None` when it gave no status code.
    Close(Option<CloseFrame<'a>>),
    /// A non-final frame of a fragmented message was buffered: nothing to do but advance.
    Fragment,
}

/// The peer broke the protocol: send a close frame with `close_code`, then close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    pub close_code: u16,
    /// For logs and the close frame's reason.
    pub reason: &'static str,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.reason, self.close_code)
    }
}

impl std::error::Error for ProtocolError {}

fn protocol_error(reason: &'static str) -> ProtocolError {
    ProtocolError {
        close_code: close_code::PROTOCOL_ERROR,
        reason,
    }
}

/// One connection's decoding state: the fragmented message in progress, if any.
#[derive(Debug)]
pub struct Decoder {
    message_bytes_max: usize,
    /// Server side: peer frames must be masked. Client side: they must not be.
    peer_masks: bool,
    /// Opcode (text or binary) of the fragmented message being reassembled.
    fragmented: Option<Opcode>,
    fragments: Vec<u8>,
    /// Bytes at the start of a fragmented text message's `fragments` known to be whole,
    /// valid UTF-8, so each fragment is checked once and a bad one fails at once.
    text_checked: usize,
    /// The last event lent out `fragments`; clear it before decoding on.
    fragments_delivered: bool,
}

impl Decoder {
    /// Decodes a client's frames (masked), as the broker does.
    pub fn server(message_bytes_max: usize) -> Decoder {
        Decoder::new(message_bytes_max, true)
    }

    /// Decodes a server's frames (unmasked), for clients and tests.
    pub fn client(message_bytes_max: usize) -> Decoder {
        Decoder::new(message_bytes_max, false)
    }

    fn new(message_bytes_max: usize, peer_masks: bool) -> Decoder {
        Decoder {
            message_bytes_max,
            peer_masks,
            fragmented: None,
            fragments: Vec::new(),
            text_checked: 0,
            fragments_delivered: false,
        }
    }

    /// Whether a fragmented message is waiting for its last frame.
    pub fn in_message(&self) -> bool {
        self.fragmented.is_some()
    }

    /// Decodes the frame at the start of `buf` (see the module docs).
    ///
    /// On `Ok(Some((_, consumed)))` the frame's payload has been unmasked in place, so the
    /// caller must drop those `consumed` bytes before calling again. Never panics, whatever
    /// `buf` holds.
    pub fn decode<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> Result<Option<(Event<'a>, usize)>, ProtocolError> {
        if self.fragments_delivered {
            self.fragments_delivered = false;
            self.fragments.clear();
            self.fragments.shrink_to(FRAGMENT_BUFFER_KEEP_BYTES);
        }
        let Some(header) = self.check_header(buf)? else {
            return Ok(None);
        };
        let Some(frame) = buf.get_mut(..header.frame_len) else {
            return Ok(None);
        };
        let Some((_, payload)) = frame.split_at_mut_checked(header.header_len) else {
            return Ok(None);
        };
        if let Some(mask) = header.mask {
            apply_mask(payload, mask);
        }
        let payload: &'a [u8] = payload;
        let event = match header.opcode {
            Opcode::Ping => Event::Ping(payload),
            Opcode::Pong => Event::Pong(payload),
            Opcode::Close => Event::Close(parse_close(payload)?),
            Opcode::Text | Opcode::Binary if header.fin => data_event(header.opcode, payload)?,
            Opcode::Text | Opcode::Binary => {
                self.fragmented = Some(header.opcode);
                self.fragments.clear();
                self.fragments.extend_from_slice(payload);
                self.text_checked = 0;
                self.check_text_so_far()?;
                Event::Fragment
            }
            Opcode::Continuation => {
                self.fragments.extend_from_slice(payload);
                if header.fin {
                    // `check_header` let this continuation through, so a message is open.
                    let opcode = self.fragmented.take().unwrap_or(Opcode::Binary);
                    self.fragments_delivered = true;
                    data_event(opcode, &self.fragments)?
                } else {
                    self.check_text_so_far()?;
                    Event::Fragment
                }
            }
        };
        Ok(Some((event, header.frame_len)))
    }

    /// Fails a fragmented text message as soon as its bytes cannot be UTF-8 (RFC 6455 §8.1
    /// lets an endpoint wait, but failing fast spares buffering the rest). A character cut by
    /// a fragment boundary is not an error: its end is checked with the next fragment.
    fn check_text_so_far(&mut self) -> Result<(), ProtocolError> {
        if self.fragmented != Some(Opcode::Text) {
            return Ok(());
        }
        let unchecked = self.fragments.get(self.text_checked..).unwrap_or_default();
        match std::str::from_utf8(unchecked) {
            Ok(_) => self.text_checked = self.fragments.len(),
            Err(error) if error.error_len().is_none() => self.text_checked += error.valid_up_to(),
            Err(_) => {
                return Err(ProtocolError {
                    close_code: close_code::INVALID_PAYLOAD,
                    reason: "text message is not valid UTF-8",
                })
            }
        }
        Ok(())
    }

    /// Parses and checks the header; `Ok(None)` while it is incomplete.
    fn check_header(&self, buf: &[u8]) -> Result<Option<Header>, ProtocolError> {
        let [first, second, rest @ ..] = buf else {
            return Ok(None);
        };
        let fin = first & FIN != 0;
        if first & RSV_MASK != 0 {
            return Err(protocol_error(
                "RSV bits set, but no extension was negotiated",
            ));
        }
        let Some(opcode) = Opcode::from_u8(first & OPCODE_MASK) else {
            return Err(protocol_error("reserved opcode"));
        };
        let masked = second & MASKED != 0;
        if masked != self.peer_masks {
            return Err(protocol_error(if self.peer_masks {
                "client frames must be masked"
            } else {
                "server frames must not be masked"
            }));
        }
        let (payload_len, length_bytes) = match second & LEN7_MASK {
            LEN16 => match rest.first_chunk::<2>() {
                Some(bytes) => (u64::from(u16::from_be_bytes(*bytes)), 2),
                None => return Ok(None),
            },
            LEN64 => match rest.first_chunk::<8>() {
                Some(bytes) => (u64::from_be_bytes(*bytes), 8),
                None => return Ok(None),
            },
            short => (u64::from(short), 0),
        };
        if payload_len > i64::MAX as u64 {
            return Err(protocol_error("64-bit payload length has its top bit set"));
        }
        if opcode.is_control() {
            if !fin {
                return Err(protocol_error("fragmented control frame"));
            }
            if payload_len > CONTROL_PAYLOAD_MAX as u64 {
                return Err(protocol_error("control frame payload above 125 bytes"));
            }
        } else {
            let already = match (opcode, self.fragmented) {
                (Opcode::Continuation, None) => {
                    return Err(protocol_error(
                        "continuation frame with no message to continue",
                    ))
                }
                (Opcode::Continuation, Some(_)) => self.fragments.len() as u64,
                (_, Some(_)) => {
                    return Err(protocol_error(
                        "new message before the fragmented one ended",
                    ))
                }
                (_, None) => 0,
            };
            if already.saturating_add(payload_len) > self.message_bytes_max as u64 {
                return Err(ProtocolError {
                    close_code: close_code::MESSAGE_TOO_BIG,
                    reason: "message above the size limit",
                });
            }
        }
        let mut header_len = 2 + length_bytes;
        let mask = if masked {
            let Some(key) = rest.get(length_bytes..).and_then(|r| r.first_chunk::<4>()) else {
                return Ok(None);
            };
            header_len += 4;
            Some(*key)
        } else {
            None
        };
        // Lossless: the payload is at most 125 bytes or at most message_bytes_max, a usize.
        let Some(frame_len) = usize::try_from(payload_len)
            .ok()
            .and_then(|len| len.checked_add(header_len))
        else {
            return Err(ProtocolError {
                close_code: close_code::MESSAGE_TOO_BIG,
                reason: "message above the size limit",
            });
        };
        Ok(Some(Header {
            fin,
            opcode,
            mask,
            header_len,
            frame_len,
        }))
    }
}

/// What decoding needs from a checked header.
struct Header {
    fin: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    header_len: usize,
    frame_len: usize,
}

fn data_event(opcode: Opcode, payload: &[u8]) -> Result<Event<'_>, ProtocolError> {
    if opcode == Opcode::Text {
        std::str::from_utf8(payload)
            .map(Event::Text)
            .map_err(|_| ProtocolError {
                close_code: close_code::INVALID_PAYLOAD,
                reason: "text message is not valid UTF-8",
            })
    } else {
        Ok(Event::Binary(payload))
    }
}

fn parse_close(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, ProtocolError> {
    let Some((code, reason)) = payload.split_first_chunk::<2>() else {
        return if payload.is_empty() {
            Ok(None)
        } else {
            Err(protocol_error("close payload of one byte"))
        };
    };
    let code = u16::from_be_bytes(*code);
    if !is_valid_close_code(code) {
        return Err(protocol_error("close code not allowed on the wire"));
    }
    let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError {
        close_code: close_code::INVALID_PAYLOAD,
        reason: "close reason is not valid UTF-8",
    })?;
    Ok(Some(CloseFrame { code, reason }))
}

/// XORs `payload` with the 4-byte key (RFC 6455 §5.3); masking and unmasking are the same.
/// Word-at-a-time: unmasking touches every byte a client sends.
pub fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u32::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask) {
        *byte ^= key;
    }
}

/// Bytes of a frame header for a payload of `payload_len`, unmasked.
pub fn header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    }
}

/// Bytes of a whole unmasked frame, for outbound budgets.
pub fn frame_len(payload_len: usize) -> usize {
    header_len(payload_len) + payload_len
}

/// Appends a frame header (payload not included).
pub fn encode_frame_header(
    fin: bool,
    opcode: Opcode,
    payload_len: usize,
    mask: Option<[u8; 4]>,
    out: &mut Vec<u8>,
) {
    out.push(if fin { FIN } else { 0 } | opcode as u8);
    let mask_bit = if mask.is_some() { MASKED } else { 0 };
    match payload_len {
        // Each arm bounds `payload_len`, so its cast is lossless.
        0..=125 => out.push(mask_bit | payload_len as u8),
        126..=0xffff => {
            out.push(mask_bit | LEN16);
            out.extend_from_slice(&(payload_len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | LEN64);
            out.extend_from_slice(&(payload_len as u64).to_be_bytes());
        }
    }
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
}

/// Appends one whole text frame. `payload` must be UTF-8 (the JSON the broker built): this is
/// the fan-out path, so it is not checked again outside debug builds.
pub fn encode_text_frame(payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(std::str::from_utf8(payload).is_ok());
    encode_frame_header(true, Opcode::Text, payload.len(), None, out);
    out.extend_from_slice(payload);
}

/// Appends one whole binary frame.
pub fn encode_binary_frame(payload: &[u8], out: &mut Vec<u8>) {
    encode_frame_header(true, Opcode::Binary, payload.len(), None, out);
    out.extend_from_slice(payload);
}

/// Appends a ping. A payload above 125 bytes is cut there, so no invalid frame is ever sent.
pub fn encode_ping_frame(payload: &[u8], out: &mut Vec<u8>) {
    encode_control(Opcode::Ping, payload, out);
}

/// Appends a pong (the answer to a ping carries the ping's payload).
pub fn encode_pong_frame(payload: &[u8], out: &mut Vec<u8>) {
    encode_control(Opcode::Pong, payload, out);
}

fn encode_control(opcode: Opcode, payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(payload.len() <= CONTROL_PAYLOAD_MAX);
    let payload = payload.get(..CONTROL_PAYLOAD_MAX).unwrap_or(payload);
    encode_frame_header(true, opcode, payload.len(), None, out);
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason` (cut at a character boundary to fit
/// [`CLOSE_REASON_BYTES_MAX`]), or an empty one when `code` is `None`.
pub fn encode_close_frame(code: Option<u16>, reason: &str, out: &mut Vec<u8>) {
    let Some(code) = code else {
        encode_frame_header(true, Opcode::Close, 0, None, out);
        return;
    };
    let reason = truncate_at_char_boundary(reason, CLOSE_REASON_BYTES_MAX);
    encode_frame_header(true, Opcode::Close, 2 + reason.len(), None, out);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
}

/// The answer to a peer's close: the same code (no reason), or an empty close if it gave none.
pub fn encode_close_reply(received: Option<CloseFrame<'_>>, out: &mut Vec<u8>) {
    encode_close_frame(received.map(|close| close.code), "", out);
}

/// Appends the close frame for a protocol error: its code and reason.
pub fn encode_protocol_error_close(error: ProtocolError, out: &mut Vec<u8>) {
    encode_close_frame(Some(error.close_code), error.reason, out);
}

fn truncate_at_char_boundary(text: &str, bytes_max: usize) -> &str {
    if text.len() <= bytes_max {
        return text;
    }
    let mut end = bytes_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default()
}

/// Appends a client frame: masked with `mask`. For tests, the bench tool and Rust clients;
/// a real client draws a fresh random `mask` per frame (RFC 6455 §5.3).
pub fn encode_masked_frame(
    fin: bool,
    opcode: Opcode,
    mask: [u8; 4],
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    encode_frame_header(fin, opcode, payload.len(), Some(mask), out);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An owned [`Event`] or the error, so decoding runs can be compared.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Got {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
        Error(u16),
    }

    fn owned(event: Event<'_>) -> Option<Got> {
        Some(match event {
            Event::Text(text) => Got::Text(text.to_owned()),
            Event::Binary(bytes) => Got::Binary(bytes.to_vec()),
            Event::Ping(bytes) => Got::Ping(bytes.to_vec()),
            Event::Pong(bytes) => Got::Pong(bytes.to_vec()),
            Event::Close(close) => Got::Close(close.map(|c| (c.code, c.reason.to_owned()))),
            Event::Fragment => return None,
        })
    }

    /// Drains `buf` as a connection would: decode, act, advance; stops at the first error or
    /// when more bytes are needed. Leaves the undecoded rest in `buf`.
    fn drain(decoder: &mut Decoder, buf: &mut Vec<u8>, got: &mut Vec<Got>) -> bool {
        loop {
            match decoder.decode(buf) {
                Ok(None) => return true,
                Ok(Some((event, consumed))) => {
                    assert!(consumed > 0);
                    got.extend(owned(event));
                    buf.drain(..consumed);
                }
                Err(error) => {
                    got.push(Got::Error(error.close_code));
                    return false;
                }
            }
        }
    }

    fn decode_whole(bytes: &[u8], max: usize) -> Vec<Got> {
        let mut decoder = Decoder::server(max);
        let mut buf = bytes.to_vec();
        let mut got = Vec::new();
        drain(&mut decoder, &mut buf, &mut got);
        got
    }

    /// Feeds `bytes` in chunks ending at each of `cuts`.
    fn decode_split(bytes: &[u8], cuts: &[usize], max: usize) -> Vec<Got> {
        let mut decoder = Decoder::server(max);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain([&bytes.len()]) {
            let cut = cut.clamp(start, bytes.len());
            buf.extend_from_slice(&bytes[start..cut]);
            start = cut;
            if !drain(&mut decoder, &mut buf, &mut got) {
                break;
            }
        }
        got
    }

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn masked(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_masked_frame(fin, opcode, MASK, payload, &mut out);
        out
    }

    fn text(text: &str) -> Got {
        Got::Text(text.to_owned())
    }

    #[test]
    fn rfc_examples_decode() {
        // RFC 6455 §5.7: a masked single-frame "Hello".
        let hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(decode_whole(&hello, 1024), vec![text("Hello")]);
        assert_eq!(masked(true, Opcode::Text, b"Hello"), hello);
        // A masked pong "Hello".
        let pong = [
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(
            decode_whole(&pong, 1024),
            vec![Got::Pong(b"Hello".to_vec())]
        );
        // The unmasked forms are server frames: the client decoder takes them, the server
        // decoder refuses them.
        let unmasked = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let mut decoder = Decoder::client(1024);
        let mut buf = unmasked.to_vec();
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some((Event::Text("Hello"), 7)))
        );
        assert_eq!(decode_whole(&unmasked, 1024), vec![Got::Error(1002)]);
        let mut out = Vec::new();
        encode_text_frame(b"Hello", &mut out);
        assert_eq!(out, unmasked);
        // Fragmented unmasked "Hel" + "lo", read by a client.
        let mut decoder = Decoder::client(1024);
        let mut buf = vec![0x01, 0x03, 0x48, 0x65, 0x6c];
        assert_eq!(decoder.decode(&mut buf), Ok(Some((Event::Fragment, 5))));
        let mut buf = vec![0x80, 0x02, 0x6c, 0x6f];
        assert_eq!(
            decoder.decode(&mut buf),
            Ok(Some((Event::Text("Hello"), 4)))
        );
    }

    #[test]
    fn lengths_use_all_three_encodings() {
        for len in [0, 1, 125, 126, 127, 0xffff, 0x10000, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let frame = masked(true, Opcode::Binary, &payload);
            assert_eq!(frame.len(), header_len(len) + 4 + len, "{len}");
            assert_eq!(
                decode_whole(&frame, 1 << 20),
                vec![Got::Binary(payload.clone())]
            );
            let mut out = Vec::new();
            encode_binary_frame(&payload, &mut out);
            assert_eq!(out.len(), frame_len(len));
        }
        // 256 bytes: the RFC's 16-bit example header.
        let mut out = Vec::new();
        encode_binary_frame(&[0; 256], &mut out);
        assert_eq!(out[..4], [0x82, 0x7e, 0x01, 0x00]);
        // 64 KiB: the 64-bit example header.
        out.clear();
        encode_binary_frame(&[0; 65536], &mut out);
        assert_eq!(out[..10], [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn fragments_reassemble_with_control_frames_between() {
        let stream = [
            masked(false, Opcode::Text, "caf".as_bytes()),
            masked(true, Opcode::Ping, b"p1"),
            // A multi-byte character split across two fragments is fine: UTF-8 is checked
            // on the whole message.
            masked(false, Opcode::Continuation, &"\u{e9}".as_bytes()[..1]),
            masked(false, Opcode::Continuation, &"\u{e9}".as_bytes()[1..]),
            masked(true, Opcode::Pong, b""),
            masked(true, Opcode::Continuation, b"!"),
            masked(false, Opcode::Binary, &[1, 2]),
            masked(true, Opcode::Continuation, &[3]),
            masked(true, Opcode::Text, b"single"),
        ]
        .concat();
        assert_eq!(
            decode_whole(&stream, 1024),
            vec![
                Got::Ping(b"p1".to_vec()),
                Got::Pong(vec![]),
                text("caf\u{e9}!"),
                Got::Binary(vec![1, 2, 3]),
                text("single"),
            ]
        );
    }

    #[test]
    fn protocol_violations_close_with_their_code() {
        let with_first_byte = |first: u8| {
            let mut frame = masked(true, Opcode::Text, b"x");
            frame[0] = first;
            frame
        };
        let cases: Vec<(&str, Vec<u8>, Vec<Got>)> = vec![
            (
                "unmasked client frame",
                vec![0x81, 0x01, b'x'],
                vec![Got::Error(1002)],
            ),
            ("RSV1", with_first_byte(0x81 | 0x40), vec![Got::Error(1002)]),
            ("RSV2", with_first_byte(0x81 | 0x20), vec![Got::Error(1002)]),
            ("RSV3", with_first_byte(0x81 | 0x10), vec![Got::Error(1002)]),
            ("opcode 3", with_first_byte(0x83), vec![Got::Error(1002)]),
            ("opcode 0xb", with_first_byte(0x8b), vec![Got::Error(1002)]),
            (
                "fragmented ping",
                masked(false, Opcode::Ping, b""),
                vec![Got::Error(1002)],
            ),
            (
                "ping of 126",
                masked(true, Opcode::Ping, &[0; 126]),
                vec![Got::Error(1002)],
            ),
            (
                "continuation first",
                masked(true, Opcode::Continuation, b"x"),
                vec![Got::Error(1002)],
            ),
            (
                "new message inside a fragmented one",
                [
                    masked(false, Opcode::Text, b"a"),
                    masked(true, Opcode::Text, b"b"),
                ]
                .concat(),
                vec![Got::Error(1002)],
            ),
            (
                "64-bit length with the top bit",
                vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0],
                vec![Got::Error(1002)],
            ),
            (
                "text not UTF-8",
                masked(true, Opcode::Text, &[0xff]),
                vec![Got::Error(1007)],
            ),
            (
                "fragmented text not UTF-8",
                [
                    masked(false, Opcode::Text, b"a"),
                    masked(true, Opcode::Continuation, &[0xc3]),
                ]
                .concat(),
                vec![Got::Error(1007)],
            ),
            (
                "bad UTF-8 fails before the message ends",
                masked(false, Opcode::Text, &[b'a', 0xff]),
                vec![Got::Error(1007)],
            ),
            (
                "bad UTF-8 in a middle fragment",
                [
                    masked(false, Opcode::Text, &[0xc3]),
                    masked(false, Opcode::Continuation, &[0xa9, 0xc3]),
                    masked(false, Opcode::Continuation, &[0x41]),
                ]
                .concat(),
                vec![Got::Error(1007)],
            ),
            (
                "a character cut by fragment boundaries",
                [
                    masked(false, Opcode::Text, &[0xe2]),
                    masked(false, Opcode::Continuation, &[0x82]),
                    masked(true, Opcode::Continuation, &[0xac]),
                ]
                .concat(),
                vec![text("\u{20ac}")],
            ),
            (
                "message of max + 1",
                masked(true, Opcode::Binary, &[0; 11]),
                vec![Got::Error(1009)],
            ),
            (
                "fragments over max",
                [
                    masked(false, Opcode::Binary, &[0; 6]),
                    masked(true, Opcode::Continuation, &[0; 5]),
                ]
                .concat(),
                vec![Got::Error(1009)],
            ),
            (
                "fragments at max",
                [
                    masked(false, Opcode::Binary, &[0; 6]),
                    masked(true, Opcode::Continuation, &[0; 4]),
                ]
                .concat(),
                vec![Got::Binary(vec![0; 10])],
            ),
            // Checked from the header alone: the 2^40-byte payload is never waited for.
            (
                "huge length",
                vec![0x82, 0xff, 0, 0, 1, 0, 0, 0, 0, 0],
                vec![Got::Error(1009)],
            ),
        ];
        for (name, bytes, expected) in cases {
            assert_eq!(decode_whole(&bytes, 10), expected, "{name}");
        }
    }

    #[test]
    fn close_frames_are_checked_and_echoed() {
        let close = |payload: &[u8]| decode_whole(&masked(true, Opcode::Close, payload), 1024);
        assert_eq!(close(b""), vec![Got::Close(None)]);
        assert_eq!(
            close(&[0x03, 0xe8, b'b', b'y', b'e']),
            vec![Got::Close(Some((1000, "bye".to_owned())))]
        );
        assert_eq!(
            close(&[0x0f, 0xa0]),
            vec![Got::Close(Some((4000, String::new())))]
        );
        assert_eq!(close(&[0x03]), vec![Got::Error(1002)]);
        for bad_code in [
            0u16,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            2999,
            5000,
            u16::MAX,
        ] {
            assert_eq!(
                close(&bad_code.to_be_bytes()),
                vec![Got::Error(1002)],
                "{bad_code}"
            );
        }
        assert_eq!(close(&[0x03, 0xe8, 0xff]), vec![Got::Error(1007)]);

        let mut out = Vec::new();
        encode_close_reply(
            Some(CloseFrame {
                code: 4001,
                reason: "whatever",
            }),
            &mut out,
        );
        assert_eq!(out, [0x88, 0x02, 0x0f, 0xa1]);
        out.clear();
        encode_close_reply(None, &mut out);
        assert_eq!(out, [0x88, 0x00]);
        out.clear();
        encode_protocol_error_close(
            ProtocolError {
                close_code: 1009,
                reason: "big",
            },
            &mut out,
        );
        assert_eq!(out, [0x88, 0x05, 0x03, 0xf1, b'b', b'i', b'g']);
        // A long reason is cut to fit a control frame, at a character boundary.
        out.clear();
        encode_close_frame(Some(1000), &"\u{e9}".repeat(100), &mut out);
        assert_eq!(out.len(), 2 + 2 + 122);
        let mut client = Decoder::client(1024);
        assert!(matches!(
            client.decode(&mut out),
            Ok(Some((Event::Close(Some(CloseFrame { code: 1000, reason })), 126)))
                if reason.chars().count() == 61
        ));
    }

    #[test]
    fn control_frames_are_capped_when_encoded() {
        let mut out = Vec::new();
        encode_ping_frame(b"abc", &mut out);
        assert_eq!(out, [0x89, 0x03, b'a', b'b', b'c']);
        out.clear();
        encode_pong_frame(b"abc", &mut out);
        assert_eq!(out, [0x8a, 0x03, b'a', b'b', b'c']);
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let stream = [
            masked(true, Opcode::Text, b"{\"type\":\"ping\"}"),
            masked(false, Opcode::Binary, &[9; 130]),
            masked(true, Opcode::Ping, b"still here"),
            masked(true, Opcode::Continuation, &[8; 300]),
            masked(true, Opcode::Close, &[0x03, 0xe8]),
        ]
        .concat();
        let whole = decode_whole(&stream, 1 << 20);
        assert_eq!(whole.len(), 4);
        for cut in 0..=stream.len() {
            assert_eq!(
                decode_split(&stream, &[cut], 1 << 20),
                whole,
                "cut at {cut}"
            );
        }
        // And byte by byte.
        let every: Vec<usize> = (0..stream.len()).collect();
        assert_eq!(decode_split(&stream, &every, 1 << 20), whole);
    }

    #[test]
    fn a_large_fragment_buffer_is_given_back() {
        let mut decoder = Decoder::server(1 << 20);
        let mut buf = [
            masked(false, Opcode::Binary, &[1; 200_000]),
            masked(true, Opcode::Continuation, &[2; 10]),
            masked(true, Opcode::Text, b"next"),
        ]
        .concat();
        let mut got = Vec::new();
        drain(&mut decoder, &mut buf, &mut got);
        assert_eq!(got.len(), 2);
        assert!(decoder.fragments.capacity() <= FRAGMENT_BUFFER_KEEP_BYTES);
        assert!(!decoder.in_message());
    }

    /// A message and how a client might split it into frames.
    fn message() -> impl Strategy<Value = (bool, Vec<u8>, Vec<usize>)> {
        (
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(0usize..300, 0..4),
        )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..400),
            max in 0usize..200,
        ) {
            let _ = decode_whole(&bytes, max);
            let mut client = Decoder::client(max);
            let mut buf = bytes.clone();
            let mut got = Vec::new();
            drain(&mut client, &mut buf, &mut got);
        }

        #[test]
        fn near_valid_frames_never_panic(
            frames in proptest::collection::vec(
                (any::<u8>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..140)),
                0..6,
            ),
        ) {
            // Real-looking headers with random bits: more interesting states than noise.
            let mut bytes = Vec::new();
            for (first, mask_len_hint, payload) in frames {
                let opcode = Opcode::from_u8(first & 0x0f).unwrap_or(Opcode::Binary);
                let mut frame = Vec::new();
                encode_masked_frame(first & 0x80 != 0, opcode, MASK, &payload, &mut frame);
                frame[0] ^= first & 0x70 & mask_len_hint;
                bytes.extend_from_slice(&frame);
            }
            let _ = decode_whole(&bytes, 100);
        }

        #[test]
        fn messages_round_trip_however_fragmented(
            messages in proptest::collection::vec(message(), 1..5),
            cuts in proptest::collection::vec(0usize..2000, 0..6),
            mask in any::<[u8; 4]>(),
        ) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (is_text, bytes, splits) in messages {
                let payload = if is_text {
                    String::from_utf8_lossy(&bytes).into_owned().into_bytes()
                } else {
                    bytes
                };
                let mut splits: Vec<usize> =
                    splits.into_iter().map(|s| s.min(payload.len())).collect();
                splits.sort_unstable();
                let mut start = 0;
                let mut opcode = if is_text { Opcode::Text } else { Opcode::Binary };
                for split in splits {
                    encode_masked_frame(false, opcode, mask, &payload[start..split], &mut stream);
                    opcode = Opcode::Continuation;
                    start = split;
                }
                encode_masked_frame(true, opcode, mask, &payload[start..], &mut stream);
                expected.push(if is_text {
                    Got::Text(String::from_utf8(payload).unwrap())
                } else {
                    Got::Binary(payload)
                });
            }
            let mut cuts = cuts;
            cuts.sort_unstable();
            prop_assert_eq!(decode_split(&stream, &cuts, 4096), expected);
        }

        #[test]
        fn server_frames_round_trip_through_a_client_decoder(
            payload in proptest::collection::vec(any::<u8>(), 0..70_000),
        ) {
            let mut out = Vec::new();
            encode_binary_frame(&payload, &mut out);
            prop_assert_eq!(out.len(), frame_len(payload.len()));
            let mut decoder = Decoder::client(1 << 20);
            let len = out.len();
            prop_assert_eq!(
                decoder.decode(&mut out),
                Ok(Some((Event::Binary(&payload), len)))
            );
        }

        #[test]
        fn masking_twice_is_identity(
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            mask in any::<[u8; 4]>(),
        ) {
            let mut bytes = payload.clone();
            apply_mask(&mut bytes, mask);
            for (i, (masked, plain)) in bytes.iter().zip(&payload).enumerate() {
                prop_assert_eq!(*masked, plain ^ mask[i % 4]);
            }
            apply_mask(&mut bytes, mask);
            prop_assert_eq!(bytes, payload);
        }
    }
}
