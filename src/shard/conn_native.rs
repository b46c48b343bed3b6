//! The native connection kind: the binary protocol of [`crate::protocol::native`] on the
//! native listener.
//!
//! It decodes frames from the connection's read buffer, does what only this protocol has
//! (the HELLO handshake and its version, PING, the version gates of each opcode, the TLV
//! options) and hands each command to the protocol-neutral handlers in `commands.rs`. Answers
//! come back through the connection's [`Wire`], which words them as OK and ERR frames.

use crate::error::{CloseReason, ErrorCode};
use crate::ids::ConnectionId;
use crate::protocol::native::{self, Frame, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN};
use crate::protocol::sniff;
use crate::protocol::subscribe_options::{OptionError, SubscribeOptions};
use crate::protocol::topic_options::TopicOptions;

use super::commands::{Publish, PublishTopic};
use super::connection::{ConnState, ReadBuffer};
use super::wire::Wire;
use super::{Flow, Shard};

impl Shard {
    /// Decodes and handles every complete frame in the connection's read buffer.
    pub(super) fn process_frames(&mut self, id: ConnectionId) -> Flow {
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        if conn.is_closing() {
            return Flow::Stop;
        }
        // The buffer is taken out so the handlers may borrow the whole shard while the frame
        // borrows the bytes; it goes back below (swapping two Vecs allocates nothing).
        let mut buffer = std::mem::replace(&mut conn.read, ReadBuffer::new(0));
        let frame_bytes_max = self.config.frame_bytes_max();
        let flow = loop {
            match native::decode(buffer.filled(), frame_bytes_max) {
                Ok(None) => break Flow::Continue,
                Ok(Some((frame, len))) => {
                    let flags = native::frame_flags(buffer.filled());
                    match self.handle_frame(id, frame, flags) {
                        Flow::Continue => buffer.consume(len),
                        Flow::Blocked => break Flow::Blocked,
                        Flow::Stop => {
                            buffer.consume(len);
                            break Flow::Stop;
                        }
                    }
                }
                Err(native::DecodeError::Invalid {
                    request_id,
                    frame_len,
                    code,
                    reason,
                }) => {
                    buffer.consume(frame_len);
                    self.counters.protocol_errors += 1;
                    self.reply_err(id, request_id, code, reason);
                    let handshaking = self
                        .connection_mut(id)
                        .is_some_and(|conn| conn.state == ConnState::Handshaking);
                    if handshaking {
                        self.begin_close(id, CloseReason::HandshakeFailed);
                        break Flow::Stop;
                    }
                }
                Err(native::DecodeError::Fatal { code, reason }) => {
                    if self.awaits_foreign_protocol(id, buffer.filled()) {
                        break Flow::Continue;
                    }
                    self.counters.protocol_errors += 1;
                    if !self.answer_foreign_protocol(id, buffer.filled()) {
                        self.reply_err(id, 0, code, reason);
                    }
                    self.begin_close(id, CloseReason::ProtocolError);
                    break Flow::Stop;
                }
            }
            if self.connection_mut(id).is_none_or(|conn| conn.is_closing()) {
                break Flow::Stop;
            }
        };
        if let Some(conn) = self.connection_mut(id) {
            conn.read = buffer;
        }
        flow
    }

    /// Handles one decoded frame; `flags` is its raw flags byte, for the version gate of a
    /// flag the decoded frame cannot show.
    fn handle_frame(&mut self, id: ConnectionId, frame: Frame<'_>, flags: u8) -> Flow {
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        if conn.state == ConnState::Handshaking {
            return self.handle_handshake(id, frame);
        }
        match frame {
            Frame::Publish {
                request_id,
                quiet,
                topic,
                reply_to,
                headers,
                payload,
            } => {
                // The flag, not the block: an empty block must not let a v1 to v3 client
                // use what its version does not have.
                if flags & native::PUBLISH_HEADERS != 0 && self.protocol_version(id) < 4 {
                    self.counters.protocol_errors += 1;
                    self.reply_err(
                        id,
                        request_id,
                        ErrorCode::BadFrame,
                        "PUBLISH headers need protocol version 4",
                    );
                    return Flow::Continue;
                }
                self.handle_publish(
                    id,
                    request_id,
                    Publish {
                        topic: PublishTopic::Unchecked(topic),
                        reply_to,
                        headers,
                        payload,
                        quiet,
                    },
                )
            }
            Frame::Subscribe {
                request_id,
                sub_id,
                topic,
                options,
            } => {
                let Some(options) = self.native_subscribe_options(id, request_id, options) else {
                    return Flow::Continue;
                };
                self.handle_subscribe(id, request_id, sub_id, topic, options)
            }
            Frame::Unsubscribe { request_id, sub_id } => {
                self.handle_unsubscribe(id, request_id, sub_id)
            }
            Frame::Ack {
                request_id,
                sub_id,
                seq,
                kind,
                topic,
            } => {
                if let Some(flow) = self.refused_before(id, (request_id, 2), "ACK") {
                    return flow;
                }
                if !topic.is_empty() && self.protocol_version(id) < 3 {
                    self.counters.protocol_errors += 1;
                    self.reply_err(
                        id,
                        request_id,
                        ErrorCode::BadFrame,
                        "the topic field of ACK needs protocol version 3",
                    );
                    return Flow::Continue;
                }
                self.handle_ack(id, request_id, (sub_id, topic), (seq, kind))
            }
            Frame::CreateTopic {
                request_id,
                topic,
                options,
            } => {
                if let Some(flow) = self.refused_before(id, (request_id, 3), "CREATE_TOPIC") {
                    return flow;
                }
                match TopicOptions::parse(options) {
                    Ok(options) => self.handle_create_topic(id, request_id, topic, options),
                    Err(error) => {
                        let (code, reason) = option_error(error);
                        self.reply_err(id, request_id, code, reason);
                        Flow::Continue
                    }
                }
            }
            Frame::DeleteTopic { request_id, topic } => {
                if let Some(flow) = self.refused_before(id, (request_id, 3), "DELETE_TOPIC") {
                    return flow;
                }
                self.handle_delete_topic(id, request_id, topic)
            }
            Frame::Stats { request_id, topic } => {
                if let Some(flow) = self.refused_before(id, (request_id, 4), "STATS") {
                    return flow;
                }
                self.handle_native_stats(id, request_id, topic)
            }
            Frame::Ping { request_id } => {
                self.reply_native(id, Frame::Pong { request_id });
                Flow::Continue
            }
            Frame::Hello { request_id, .. } => {
                self.reply_err(
                    id,
                    request_id,
                    ErrorCode::BadFrame,
                    "HELLO was already done",
                );
                Flow::Continue
            }
            Frame::Ok { .. }
            | Frame::Err { .. }
            | Frame::Pong { .. }
            | Frame::Msg { .. }
            | Frame::Dropped { .. }
            | Frame::Gap { .. }
            | Frame::Ended { .. } => {
                // The connection goes on, so the answer carries the frame's own id, as for
                // any other frame the broker skips.
                self.counters.protocol_errors += 1;
                self.reply_err(
                    id,
                    frame.header_id(),
                    ErrorCode::UnknownOpcode,
                    "that opcode is sent by the server, not the client",
                );
                Flow::Continue
            }
        }
    }

    fn handle_handshake(&mut self, id: ConnectionId, frame: Frame<'_>) -> Flow {
        let Frame::Hello {
            request_id,
            version,
            client_name,
        } = frame
        else {
            self.reply_err(
                id,
                frame.header_id(),
                ErrorCode::HandshakeRequired,
                "the first frame must be HELLO",
            );
            self.begin_close(id, CloseReason::HandshakeFailed);
            return Flow::Stop;
        };
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&version) {
            let reason = format!(
                "this broker speaks native protocol versions {PROTOCOL_VERSION_MIN} to \
                 {PROTOCOL_VERSION}"
            );
            self.reply_err(id, request_id, ErrorCode::UnsupportedVersion, &reason);
            self.begin_close(id, CloseReason::HandshakeFailed);
            return Flow::Stop;
        }
        let shard = self.id;
        let message_bytes_max = self.config.message_bytes_max as u32;
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        conn.state = ConnState::Open;
        conn.wire = Wire::Native { version };
        conn.client_name = String::from_utf8_lossy(client_name).into_owned();
        self.handshake_done(id);
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        log::info!(
            "event=handshake shard={} conn={} peer={} client={:?}",
            shard,
            id,
            conn.peer,
            conn.client_name
        );
        let mut data = [0u8; 8];
        data[0..2].copy_from_slice(&version.to_be_bytes());
        data[2..4].copy_from_slice(&shard.0.to_be_bytes());
        data[4..8].copy_from_slice(&message_bytes_max.to_be_bytes());
        self.reply_native(
            id,
            Frame::Ok {
                request_id,
                data: &data,
            },
        );
        Flow::Continue
    }

    /// Refuses a command that came with protocol `version` on an older connection
    /// (`UNKNOWN_OPCODE`: that version does not have it), or stops for a connection that is
    /// gone. `None` lets the command go on.
    fn refused_before(
        &mut self,
        id: ConnectionId,
        (request_id, version): (u32, u16),
        what: &str,
    ) -> Option<Flow> {
        if self.connection_mut(id).is_none() {
            return Some(Flow::Stop);
        }
        if self.protocol_version(id) >= version {
            return None;
        }
        let reason = format!("{what} needs protocol version {version}");
        self.counters.protocol_errors += 1;
        self.reply_err(id, request_id, ErrorCode::UnknownOpcode, &reason);
        Some(Flow::Continue)
    }

    /// The version the connection negotiated (0 for one that is gone).
    fn protocol_version(&mut self, id: ConnectionId) -> u16 {
        match self.connection_mut(id).map(|conn| &conn.wire) {
            Some(Wire::Native { version }) => *version,
            _ => 0,
        }
    }

    /// The SUBSCRIBE options of a native frame, or `None` once refused.
    fn native_subscribe_options(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        options: &[u8],
    ) -> Option<SubscribeOptions> {
        if !options.is_empty() && self.protocol_version(id) < 2 {
            self.reply_err(
                id,
                request_id,
                ErrorCode::UnsupportedOption,
                "SUBSCRIBE options need protocol version 2",
            );
            return None;
        }
        match SubscribeOptions::parse(options) {
            Ok(options) => Some(options),
            Err(error) => {
                let (code, reason) = option_error(error);
                self.reply_err(id, request_id, code, reason);
                None
            }
        }
    }

    /// Whether a connection still in its handshake began with text that more bytes could
    /// make a known protocol's (an HTTP method cut after four bytes): it is left to read on,
    /// so the client gets its own protocol's answer rather than a binary one.
    fn awaits_foreign_protocol(&mut self, id: ConnectionId, first_bytes: &[u8]) -> bool {
        self.connection_mut(id)
            .is_some_and(|conn| conn.state == ConnState::Handshaking)
            && sniff::needs_more(first_bytes)
    }

    /// Before HELLO, a text protocol's client (HTTP, Redis, NATS) is answered in its own words
    /// instead of with a native ERR it cannot read. Returns whether it was.
    fn answer_foreign_protocol(&mut self, id: ConnectionId, first_bytes: &[u8]) -> bool {
        let ports = sniff::OtherPorts {
            http: self.http_addr(),
            resp: self.resp_addr(),
        };
        let Some(conn) = self.connection_mut(id) else {
            return false;
        };
        let Some(protocol) = (conn.state == ConnState::Handshaking)
            .then(|| sniff::sniff(first_bytes))
            .flatten()
        else {
            return false;
        };
        conn.out
            .replies()
            .extend_from_slice(&sniff::answer(protocol, ports));
        self.mark_dirty(id);
        true
    }

    /// Writes a native frame to a native connection (the replies that only this protocol
    /// has: HELLO's OK, PONG).
    fn reply_native(&mut self, id: ConnectionId, frame: Frame<'_>) {
        if let Some(conn) = self.connection_mut(id) {
            frame.encode(conn.out.replies());
            self.mark_dirty(id);
        }
    }
}

/// The wire code of a refused option: bytes that break the layout, or a value not supported.
fn option_error(error: OptionError) -> (ErrorCode, &'static str) {
    match error {
        OptionError::Malformed(reason) => (ErrorCode::BadFrame, reason),
        OptionError::Unsupported(reason) => (ErrorCode::UnsupportedOption, reason),
    }
}
