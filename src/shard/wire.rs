//! The seam between the shard's core and the protocols its connections speak.
//!
//! The core (publish, subscribe, acks, topics, replay, consumers) decides *what* to tell a
//! connection: an [`Answer`] to one of its requests, a delivery, a gap, the end of a
//! subscription. The connection's [`Wire`] decides *how*: which codec under `protocol/` turns
//! it into bytes. So a new protocol is a codec module plus a variant here and its connection
//! kind; nothing in the topic, replay or consumer code changes.
//!
//! Deliveries are the hot path and are not encoded here one subscriber at a time: the native
//! wire shares the message's own MSG frame and patches only the subscription id while
//! staging; a Redis channel subscription queues the message too and words its `message`
//! frame while staging (a short head around the payload copy); the WebSocket dialects and
//! Redis's `smessage` get the shard's one encoding per (message, format) through
//! [`crate::shard::Shard`]'s encode cache.

use crate::error::ErrorCode;
use crate::mesh::message::{Published, TopicPosition};
use crate::protocol::native::Frame;

use super::conn_http::HttpSession;
use super::conn_resp::RespSession;
use super::conn_ws::WsSession;

/// What the core says to one request. Each protocol words it its own way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer<'a> {
    /// Done; nothing to report (unsubscribe, pattern subscribe, delete topic, ...).
    Done,
    /// A confirmed publish: the sequence number the owner gave it, and its receivers.
    Published(Published),
    /// An exact subscription or a created topic: where the topic stood.
    Position(TopicPosition),
    /// Refused: a stable code and a reason for people.
    Refused { code: ErrorCode, reason: &'a str },
    /// A publish over the connection's `--publish-rate`: `RATE_LIMITED`, and when to retry.
    Throttled { retry_after_ms: u64 },
}

/// Things the core would say that not every connection can hear: the core asks, and words
/// what it says to fit (a v2 native client cannot read a topic in a GAP, for example).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// SUBSCRIBE options: start positions, consumers, groups, acks.
    SubscribeOptions,
    /// ACK naming its topic, GAP naming its topic, acked pattern groups.
    TopicInAcksAndGaps,
    /// CREATE_TOPIC and DELETE_TOPIC, and ENDED notices.
    TopicAdmin,
    /// A resume that names its epoch.
    Epochs,
}

/// The protocol a connection speaks, with what it negotiated.
pub enum Wire {
    /// The native binary protocol; `version` is 0 until HELLO.
    Native { version: u16 },
    /// HTTP/1.1 on the HTTP listener: REST, or on its way to a WebSocket upgrade. Boxed like
    /// the WebSocket session, so the enum is a plain tag and a pointer: the fan-out path tests
    /// the wire once per delivery, and a tag compare is the cheapest test.
    Http(Box<HttpSession>),
    /// A WebSocket session in one of the two JSON dialects.
    WebSocket(Box<WsSession>),
    /// RESP2 or RESP3 on the Redis port.
    Resp(Box<RespSession>),
    /// An in-process handle ([`crate::bus`]). Deliveries travel as the shared message; answers
    /// and notices are worded as native v4 frames in the write buffer and turned into events
    /// when handed over (they are few), so the core's wording code serves it unchanged.
    InProcess,
}

/// Which protocol a connection speaks, by name: the `protocol` label of the connection
/// gauges and the `protocol=` field of the connection lifecycle log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Native,
    /// REST on the HTTP port (a connection not, or not yet, upgraded).
    Http,
    WebSocket,
    Resp,
    /// A handle of an embedded bus.
    InProcess,
}

impl Protocol {
    pub const ALL: [Protocol; 5] = [
        Protocol::Native,
        Protocol::Http,
        Protocol::WebSocket,
        Protocol::Resp,
        Protocol::InProcess,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Http => "http",
            Protocol::WebSocket => "websocket",
            Protocol::Resp => "resp",
            Protocol::InProcess => "inprocess",
        }
    }
}

impl Wire {
    pub fn protocol(&self) -> Protocol {
        match self {
            Wire::Native { .. } => Protocol::Native,
            Wire::Http(_) => Protocol::Http,
            Wire::WebSocket(_) => Protocol::WebSocket,
            Wire::Resp(_) => Protocol::Resp,
            Wire::InProcess => Protocol::InProcess,
        }
    }

    pub fn supports(&self, feature: Feature) -> bool {
        match self {
            Wire::Http(_) | Wire::Resp(_) => false,
            Wire::WebSocket(_) => feature != Feature::Epochs,
            Wire::InProcess => true,
            Wire::Native { version } => {
                let since = match feature {
                    Feature::SubscribeOptions => 2,
                    Feature::TopicInAcksAndGaps | Feature::TopicAdmin => 3,
                    Feature::Epochs => 4,
                };
                *version >= since
            }
        }
    }

    /// Appends the answer to request `request_id`. A request id of 0 with a refusal is a
    /// connection-level error (the connection is about to close, or the request was lost).
    pub fn encode_answer(&mut self, request_id: u32, answer: Answer<'_>, out: &mut Vec<u8>) {
        match self {
            Wire::Http(session) => session.encode_answer(request_id, answer, out),
            Wire::WebSocket(session) => session.encode_answer(request_id, answer, out),
            Wire::Resp(session) => {
                session.encode_answer(request_id, answer);
                if let Some(ready) = session.output() {
                    out.extend_from_slice(ready);
                    session.clear_output();
                }
            }
            Wire::Native { .. } | Wire::InProcess => {
                let (ok_data, position_data);
                let frame = match answer {
                    Answer::Done => Frame::Ok {
                        request_id,
                        data: &[],
                    },
                    Answer::Published(Published { seq, .. }) => {
                        ok_data = seq.to_be_bytes();
                        Frame::Ok {
                            request_id,
                            data: &ok_data,
                        }
                    }
                    Answer::Position(position) => {
                        position_data = position.ok_data();
                        Frame::Ok {
                            request_id,
                            data: &position_data,
                        }
                    }
                    Answer::Refused { code, reason } => Frame::Err {
                        request_id,
                        code: code.as_u16(),
                        message: reason.as_bytes(),
                    },
                    Answer::Throttled { retry_after_ms } => {
                        let reason = throttled_reason(retry_after_ms);
                        Frame::Err {
                            request_id,
                            code: ErrorCode::RateLimited.as_u16(),
                            message: reason.as_bytes(),
                        }
                        .encode(out);
                        return;
                    }
                };
                frame.encode(out);
            }
        }
    }

    /// Appends a gap notice for subscription `sub_id` (see the protocol's GAP).
    pub fn encode_gap(
        &self,
        sub_id: u32,
        (missed, resume_seq): (u64, u64),
        topic: &str,
        out: &mut Vec<u8>,
    ) {
        match self {
            // Neither has start positions, so neither is ever told of a gap.
            Wire::Http(_) | Wire::Resp(_) => {}
            Wire::WebSocket(session) => session.encode_gap(sub_id, (missed, resume_seq), out),
            Wire::Native { .. } | Wire::InProcess => {
                // v2 specified a 16-byte GAP body; the topic came with v3.
                let topic = if self.supports(Feature::TopicInAcksAndGaps) {
                    topic
                } else {
                    ""
                };
                Frame::Gap {
                    sub_id,
                    missed,
                    resume_seq,
                    topic: topic.as_bytes(),
                }
                .encode(out)
            }
        }
    }

    /// Appends the broker's notice that it ended subscription `sub_id`.
    pub fn encode_ended(&mut self, sub_id: u32, code: ErrorCode, reason: &str, out: &mut Vec<u8>) {
        match self {
            Wire::Http(_) => {}
            Wire::WebSocket(session) => session.encode_ended(sub_id, code, reason, out),
            Wire::Resp(session) => session.encode_ended(sub_id, out),
            Wire::Native { .. } | Wire::InProcess if self.supports(Feature::TopicAdmin) => {
                Frame::Ended {
                    sub_id,
                    code: code.as_u16(),
                    message: reason.as_bytes(),
                }
                .encode(out)
            }
            // Older clients have no ENDED: a connection-level ERR is what they can read.
            Wire::Native { .. } | Wire::InProcess => Frame::Err {
                request_id: 0,
                code: code.as_u16(),
                message: reason.as_bytes(),
            }
            .encode(out),
        }
    }

    /// Appends the count of messages dropped for subscription `sub_id` under `drop-oldest`.
    pub fn encode_dropped(&self, sub_id: u32, count: u64, out: &mut Vec<u8>) {
        match self {
            Wire::Native { .. } | Wire::InProcess => Frame::Dropped { sub_id, count }.encode(out),
            // Redis has no such notice: the count is in INFO's `dropped`.
            Wire::Http(_) | Wire::Resp(_) => {}
            Wire::WebSocket(session) => session.encode_dropped(sub_id, count, out),
        }
    }

    /// Bytes a gap notice takes on this wire, for the outbound byte limit.
    pub fn is_native(&self) -> bool {
        matches!(self, Wire::Native { .. })
    }
}

/// The words of a `RATE_LIMITED` refusal, with the wait in them (native clients read it there).
pub fn throttled_reason(retry_after_ms: u64) -> String {
    format!("over --publish-rate; retry in {retry_after_ms} ms")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::native;

    fn decoded(bytes: &[u8]) -> Frame<'_> {
        native::decode(bytes, 1 << 20).unwrap().unwrap().0
    }

    #[test]
    fn native_answers_are_the_ok_and_err_frames_of_the_protocol() {
        let mut wire = Wire::Native { version: 4 };
        let mut out = Vec::new();
        wire.encode_answer(
            7,
            Answer::Published(Published {
                seq: 9,
                receivers: 0,
            }),
            &mut out,
        );
        assert_eq!(
            decoded(&out),
            Frame::Ok {
                request_id: 7,
                data: &9u64.to_be_bytes()
            }
        );
        out.clear();
        let reason = "no";
        wire.encode_answer(
            8,
            Answer::Refused {
                code: ErrorCode::BadTopic,
                reason,
            },
            &mut out,
        );
        assert_eq!(
            decoded(&out),
            Frame::Err {
                request_id: 8,
                code: ErrorCode::BadTopic.as_u16(),
                message: b"no"
            }
        );
    }

    #[test]
    fn older_native_clients_get_what_their_version_specified() {
        let mut out = Vec::new();
        Wire::Native { version: 2 }.encode_gap(3, (4, 5), "t", &mut out);
        assert_eq!(
            decoded(&out),
            Frame::Gap {
                sub_id: 3,
                missed: 4,
                resume_seq: 5,
                topic: b""
            }
        );
        out.clear();
        let mut v2 = Wire::Native { version: 2 };
        v2.encode_ended(3, ErrorCode::TopicDeleted, "gone", &mut out);
        assert!(matches!(decoded(&out), Frame::Err { request_id: 0, .. }));
        assert!(!Wire::Native { version: 3 }.supports(Feature::Epochs));
        assert!(Wire::Native { version: 4 }.supports(Feature::Epochs));
    }
}
