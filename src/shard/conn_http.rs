//! The HTTP connection kind: REST under `/v1/` (Go/Fiber semantics) and `/` (FastAPI
//! semantics), and the upgrade to a WebSocket session at `/v1/ws` and `/ws`, on the shard's
//! HTTP listener and its reactor: no async runtime, no thread per connection.
//!
//! HTTP/1.1 keep-alive, one request at a time: a request whose answer needs another shard
//! (create or delete a topic, stats from every shard) is answered when that shard replies,
//! and the next request in the buffer waits for it, so responses keep their order. Until its
//! first complete request head a connection is held to `--handshake-timeout-ms`, so an idle
//! or trickling peer cannot keep a slot (slowloris); over-long heads and bodies are refused
//! with 431 and 413 by the codec's limits.
//!
//! A client that sent `Expect: 100-continue` gets `100 Continue` once its head is read and
//! while its body is still to come; without it, it would hold the body back until a timer of
//! its own (curl: 1 s), or for ever. A request the head already condemns (a body over the
//! limit, an unsupported expectation) is answered at once by the codec's refusal instead.
//! HEAD is served wherever GET is, with the GET's head and no body.
//!
//! Topic lists and stats come from every shard over the rings ([`super::stats`]), each shard
//! answering for the topics it owns, with a deadline: a shard that does not answer in time
//! is left out and the answer says `"partial": true`.
//!
//! `GET /` is the dashboard (`dashboard.html`, compiled in), which reads those same
//! endpoints from the browser.

use serde_json::json;

use crate::error::{CloseReason, ErrorCode};
use crate::ids::ConnectionId;
use crate::protocol::http::{
    self, ApiDialect, ConnectionHeader, HttpLimits, Method, ResponseHead, Route, Status,
};
use crate::protocol::topic::SubjectKind;
use crate::protocol::topic_options::TopicOptions;

use super::conn_ws::Dialect;
use super::stats::{BrokerStats, StatsQuery};
use super::wire::{Answer, Wire};
use super::{Flow, Shard};

/// The dashboard at `GET /`: one self-contained page (inline CSS and script, charts drawn
/// on a canvas by hand) that polls `/v1/stats` and `/metrics` every second.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// The only request id an HTTP connection uses: one request is in flight at a time.
pub const HTTP_REQUEST_ID: u32 = 1;

/// What a request waiting for the core (or other shards) will be answered with.
#[derive(Debug)]
pub enum Awaiting {
    CreateTopic {
        name: Box<str>,
    },
    DeleteTopic {
        name: Box<str>,
    },
    Stats {
        query: StatsQuery,
        gathered: BrokerStats,
    },
}

#[derive(Debug)]
pub struct PendingHttp {
    pub dialect: ApiDialect,
    pub connection: ConnectionHeader,
    /// The request was a HEAD: its answer goes out without the body.
    pub omit_body: bool,
    pub awaiting: Awaiting,
}

#[derive(Debug, Default)]
pub struct HttpSession {
    pub pending: Option<PendingHttp>,
    /// Set when an answer went out: whether the connection stays open for the next one.
    pub answered: Option<ConnectionHeader>,
    /// Where the request whose `100 Continue` went out starts in the connection's input (the
    /// bytes consumed before it): a body that takes several reads gets one go-ahead, and the
    /// next request, starting further on, its own.
    continue_sent_at: Option<u64>,
}

impl HttpSession {
    /// Whether `100 Continue` is to go out now for a request whose head is parsed and whose
    /// body is not yet buffered, `request_start` bytes into the connection's input; true at
    /// most once per request.
    pub fn continue_due(&mut self, head: &http::RequestHead<'_>, request_start: u64) -> bool {
        if !head.waits_for_continue() || self.continue_sent_at == Some(request_start) {
            return false;
        }
        self.continue_sent_at = Some(request_start);
        true
    }

    /// Words the core's answer to the pending request as an HTTP response. Request id 0 is
    /// the connection itself: its head deadline passed (408), or another refusal of the whole
    /// connection (503). Shutdown does not come this way: HTTP has no unsolicited answer, so a
    /// draining shard refuses each new request instead (`Shard::refuse_while_draining`).
    pub fn encode_answer(&mut self, request_id: u32, answer: Answer<'_>, out: &mut Vec<u8>) {
        if request_id == 0 {
            let Answer::Refused { code, reason } = answer else {
                return;
            };
            let status = match code {
                ErrorCode::HandshakeRequired | ErrorCode::FrameTimeout => Status(408),
                _ => Status(503),
            };
            let body = json!({ "error": reason, "detail": reason }).to_string();
            http::encode_response(
                &ResponseHead::json(status, ConnectionHeader::Close),
                body.as_bytes(),
                out,
            );
            return;
        }
        let Some(pending) = self.pending.take() else {
            return;
        };
        let (dialect, connection) = (pending.dialect, pending.connection);
        self.answered = Some(connection);
        let response_start = out.len();
        let respond = |status: Status, body: serde_json::Value, out: &mut Vec<u8>| {
            let body = if status.has_body() {
                body.to_string().into_bytes()
            } else {
                Vec::new()
            };
            http::encode_response(&ResponseHead::json(status, connection), &body, out);
        };
        let refuse = |code: ErrorCode, reason: &str, out: &mut Vec<u8>| {
            let status = status_of(code);
            http::encode_error_response(dialect, status, reason, connection, out);
        };
        match (pending.awaiting, answer) {
            (Awaiting::CreateTopic { name }, Answer::Position(position)) => match dialect {
                ApiDialect::Fiber => respond(
                    Status(201),
                    json!({ "name": &*name, "epoch": position.epoch }),
                    out,
                ),
                ApiDialect::FastApi => {
                    respond(Status(201), json!({ "name": &*name, "created": true }), out)
                }
            },
            // FastAPI's create is idempotent: an existing topic is a success that says so.
            (Awaiting::CreateTopic { name }, Answer::Refused { code, .. })
                if dialect == ApiDialect::FastApi && code == ErrorCode::TopicExists =>
            {
                respond(
                    Status(201),
                    json!({ "name": &*name, "created": false }),
                    out,
                )
            }
            (Awaiting::DeleteTopic { name }, Answer::Done) => match dialect {
                ApiDialect::Fiber => {
                    respond(Status(200), json!({ "name": &*name, "deleted": true }), out)
                }
                ApiDialect::FastApi => respond(Status(204), json!(null), out),
            },
            (_, Answer::Refused { code, reason }) => refuse(code, reason, out),
            (_, Answer::Throttled { retry_after_ms }) => refuse(
                ErrorCode::RateLimited,
                &super::wire::throttled_reason(retry_after_ms),
                out,
            ),
            (awaiting, answer) => {
                debug_assert!(false, "unexpected answer {answer:?} to {awaiting:?}");
                refuse(ErrorCode::Internal, "unexpected answer", out);
            }
        }
        if pending.omit_body {
            http::omit_response_body(out, response_start);
        }
    }
}

/// The HTTP status of a refusal.
fn status_of(code: ErrorCode) -> Status {
    match code {
        ErrorCode::TopicExists => Status(409),
        ErrorCode::TopicNotFound => Status(404),
        ErrorCode::BadTopic | ErrorCode::BadFrame | ErrorCode::OptionOutOfRange => Status(400),
        ErrorCode::TooManyTopics | ErrorCode::ShuttingDown => Status(503),
        ErrorCode::RateLimited => Status(429),
        _ => Status(500),
    }
}

/// A request taken out of the read buffer, so the handlers can borrow the shard.
struct OwnedRequest {
    len: usize,
    method: Method,
    path: String,
    connection: ConnectionHeader,
    body: Vec<u8>,
    upgrade: Result<Vec<u8>, http::UpgradeError>,
}

impl OwnedRequest {
    /// A HEAD is answered as its GET would be, without the body.
    fn omit_body(&self) -> bool {
        self.method == Method::Head
    }
}

impl Shard {
    /// Handles the complete requests in an HTTP connection's read buffer, one at a time.
    pub(super) fn process_http(&mut self, id: ConnectionId) -> Flow {
        let limits = HttpLimits {
            head_bytes_max: self.config.http_head_bytes_max,
            body_bytes_max: self.config.http_body_bytes_max,
            ..HttpLimits::default()
        };
        loop {
            let draining = self.is_draining();
            let Some(conn) = self.connection_mut(id) else {
                return Flow::Stop;
            };
            if conn.is_closing() {
                return Flow::Stop;
            }
            match &conn.wire {
                Wire::Http(session) if session.pending.is_some() => return Flow::Continue,
                Wire::Http(_) => {}
                Wire::WebSocket(_) => return self.process_websocket(id),
                Wire::Native { .. } | Wire::Resp(_) | Wire::InProcess => return Flow::Stop,
            }
            let head = match http::decode_head(conn.read.filled(), &limits) {
                Ok(None) => return Flow::Continue,
                Err(error) => {
                    http::encode_http_error(&error, conn.out.replies());
                    self.counters.protocol_errors += 1;
                    self.begin_close(id, CloseReason::ProtocolError);
                    return Flow::Stop;
                }
                Ok(Some(head)) => head,
            };
            let Some(request) = http::request_body(conn.read.filled(), head) else {
                let request_start = conn.read.consumed_total();
                let continue_due = match &mut conn.wire {
                    Wire::Http(session) => session.continue_due(&head, request_start),
                    _ => false,
                };
                if continue_due {
                    http::encode_continue(conn.out.replies());
                    self.mark_dirty(id);
                }
                return Flow::Continue;
            };
            let request = OwnedRequest {
                len: request.len,
                method: request.head.method,
                path: request.head.path.to_owned(),
                connection: ConnectionHeader::for_request(&request.head),
                body: request.body.to_vec(),
                upgrade: http::validate_websocket_upgrade(&request.head).map(<[u8]>::to_vec),
            };
            if draining {
                return self.refuse_while_draining(id, &request);
            }
            conn.state = super::connection::ConnState::Open;
            self.handshake_done(id);
            match self.handle_http_request(id, &request) {
                // Upgraded: the request is consumed, and the rest of the buffer is frames.
                None => return self.process_websocket(id),
                Some(Flow::Blocked) => return Flow::Blocked,
                Some(Flow::Stop) => return Flow::Stop,
                Some(Flow::Continue) => {}
            }
            let Some(conn) = self.connection_mut(id) else {
                return Flow::Stop;
            };
            conn.read.consume(request.len);
            let answered = matches!(&conn.wire, Wire::Http(session) if session.pending.is_none());
            if request.connection.closes() && answered {
                self.begin_close(id, CloseReason::PeerClosed);
                return Flow::Stop;
            }
        }
    }

    /// Handles one request; `None` when it upgraded the connection to a WebSocket session
    /// (and consumed the request).
    fn handle_http_request(&mut self, id: ConnectionId, request: &OwnedRequest) -> Option<Flow> {
        let route = match http::route(request.method, &request.path) {
            Ok(route) => route,
            Err(error) => {
                self.http_reply(id, request, |out| {
                    error.encode_response(&request.path, request.connection, out)
                });
                return Some(Flow::Continue);
            }
        };
        let dialect = route.dialect();
        let pending = |awaiting| PendingHttp {
            dialect,
            connection: request.connection,
            omit_body: request.omit_body(),
            awaiting,
        };
        match route {
            Route::FiberWebSocket | Route::FastApiWebSocket => match &request.upgrade {
                Ok(key) => {
                    self.http_reply(id, request, |out| {
                        http::encode_switching_protocols(key, out)
                    });
                    let dialect = if route == Route::FiberWebSocket {
                        Dialect::Fiber
                    } else {
                        Dialect::FastApi
                    };
                    if let Some(conn) = self.connection_mut(id) {
                        conn.read.consume(request.len);
                    }
                    self.upgrade_to_websocket(id, dialect);
                    None
                }
                Err(error) => {
                    self.http_reply(id, request, |out| {
                        http::encode_upgrade_error(error, &request.path, out)
                    });
                    self.begin_close(id, CloseReason::ProtocolError);
                    Some(Flow::Stop)
                }
            },
            Route::V1CreateTopic | Route::CreateTopic => {
                let (name, presence) = match http::parse_create_topic_body(&request.body) {
                    Ok(body) => (body.name.into_owned(), body.presence),
                    Err(error) => {
                        let status = error.status(dialect);
                        let message = error.message();
                        self.http_reply(id, request, |out| {
                            http::encode_error_response(
                                dialect,
                                status,
                                &message,
                                request.connection,
                                out,
                            )
                        });
                        return Some(Flow::Continue);
                    }
                };
                self.set_pending(
                    id,
                    pending(Awaiting::CreateTopic {
                        name: name.as_str().into(),
                    }),
                );
                let flow = self.handle_create_topic(
                    id,
                    HTTP_REQUEST_ID,
                    name.as_bytes(),
                    TopicOptions {
                        presence: presence.then_some(1),
                        ..TopicOptions::default()
                    },
                );
                Some(self.unless_blocked(id, flow))
            }
            Route::V1DeleteTopic { name } | Route::DeleteTopic { name } => {
                self.set_pending(
                    id,
                    pending(Awaiting::DeleteTopic {
                        name: name.as_ref().into(),
                    }),
                );
                let flow = self.handle_delete_topic(id, HTTP_REQUEST_ID, name.as_bytes());
                Some(self.unless_blocked(id, flow))
            }
            Route::V1ListTopics
            | Route::ListTopics
            | Route::V1Health
            | Route::Health
            | Route::V1Stats
            | Route::Stats
            | Route::Metrics => {
                let query = match route {
                    Route::V1ListTopics => StatsQuery::V1Topics,
                    Route::ListTopics => StatsQuery::Topics,
                    Route::V1Health => StatsQuery::V1Health,
                    Route::Health => StatsQuery::Health,
                    Route::V1Stats => StatsQuery::V1Stats,
                    Route::Stats => StatsQuery::Stats,
                    _ => StatsQuery::Metrics,
                };
                if !self.terminal_room() {
                    return Some(Flow::Blocked);
                }
                self.set_pending(
                    id,
                    pending(Awaiting::Stats {
                        query,
                        gathered: BrokerStats::default(),
                    }),
                );
                self.start_gathering(id, HTTP_REQUEST_ID);
                Some(Flow::Continue)
            }
            Route::V1TopicSubscribers { name } => {
                let topic = match crate::protocol::topic::parse_subscription(name.as_bytes()) {
                    Ok((topic, SubjectKind::Exact)) => topic,
                    _ => {
                        // No topic can have that name (a pattern, or a name the rules refuse).
                        self.http_reply(id, request, |out| {
                            http::encode_error_response(
                                dialect,
                                Status::NOT_FOUND,
                                "topic not found",
                                request.connection,
                                out,
                            )
                        });
                        return Some(Flow::Continue);
                    }
                };
                if !self.terminal_room() {
                    return Some(Flow::Blocked);
                }
                self.set_pending(
                    id,
                    pending(Awaiting::Stats {
                        query: StatsQuery::V1Subscribers {
                            topic: topic.into(),
                        },
                        gathered: BrokerStats::default(),
                    }),
                );
                self.start_gathering_presence(id, HTTP_REQUEST_ID, Some(topic));
                Some(Flow::Continue)
            }
            Route::Dashboard => {
                self.http_reply(id, request, |out| {
                    http::encode_response(
                        &ResponseHead {
                            status: Status(200),
                            content_type: Some(http::CONTENT_TYPE_HTML),
                            allow: None,
                            connection: request.connection,
                            // The page is in the binary: a new build may change it.
                            extra: &[("Cache-Control", "no-cache")],
                        },
                        DASHBOARD_HTML.as_bytes(),
                        out,
                    )
                });
                Some(Flow::Continue)
            }
        }
    }

    /// A refused command was answered at once (so nothing is pending); a blocked one is
    /// re-run from the same bytes later, so its pending answer is taken back.
    fn unless_blocked(&mut self, id: ConnectionId, flow: Flow) -> Flow {
        if flow == Flow::Blocked {
            if let Some(conn) = self.connection_mut(id) {
                if let Wire::Http(session) = &mut conn.wire {
                    session.pending = None;
                }
            }
        }
        flow
    }

    fn set_pending(&mut self, id: ConnectionId, pending: PendingHttp) {
        if let Some(conn) = self.connection_mut(id) {
            if let Wire::Http(session) = &mut conn.wire {
                session.pending = Some(pending);
            }
        }
    }

    /// A request that arrives during the shutdown grace period, on a keep-alive connection
    /// or a new one: `503 Service Unavailable` in its path's dialect, then the connection
    /// closes. Nothing new starts (no topic, no WebSocket session); requests already in
    /// flight were answered as usual.
    fn refuse_while_draining(&mut self, id: ConnectionId, request: &OwnedRequest) -> Flow {
        let dialect = http::dialect_for_path(&request.path);
        self.http_reply(id, request, |out| {
            http::encode_error_response(
                dialect,
                status_of(ErrorCode::ShuttingDown),
                "broker is shutting down",
                ConnectionHeader::Close,
                out,
            )
        });
        if let Some(conn) = self.connection_mut(id) {
            conn.read.consume(request.len);
        }
        self.begin_close(id, CloseReason::Shutdown);
        Flow::Stop
    }

    /// Writes a response the connection kind builds itself (not an answer of the core). Every
    /// one goes through here, so none answers a HEAD with a body.
    fn http_reply(
        &mut self,
        id: ConnectionId,
        request: &OwnedRequest,
        encode: impl FnOnce(&mut Vec<u8>),
    ) {
        if let Some(conn) = self.connection_mut(id) {
            let out = conn.out.replies();
            let response_start = out.len();
            encode(out);
            if request.omit_body() {
                http::omit_response_body(out, response_start);
            }
            self.mark_dirty(id);
        }
    }

    /// After an answer went out on an HTTP connection: the next buffered request may go, and
    /// a `Connection: close` request ends the connection.
    pub(super) fn after_http_answer(&mut self, id: ConnectionId, connection: ConnectionHeader) {
        if connection.closes() {
            self.begin_close(id, CloseReason::PeerClosed);
            return;
        }
        if self
            .connection_mut(id)
            .is_some_and(|conn| !conn.read.is_empty())
        {
            self.block(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> http::RequestHead<'_> {
        http::decode_head(bytes, &HttpLimits::default())
            .expect("valid head")
            .expect("complete head")
    }

    #[test]
    fn continue_goes_out_once_per_request_that_waits_for_it() {
        let expecting = b"POST /v1/topics HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\
                          Content-Length: 14\r\n\r\n";
        let mut session = HttpSession::default();
        assert!(session.continue_due(&head(expecting), 0));
        // More of the same body arrives: no second go-ahead.
        assert!(!session.continue_due(&head(expecting), 0));
        // The next request on the connection starts further on and gets its own.
        assert!(session.continue_due(&head(expecting), 200));
        assert!(!session.continue_due(&head(expecting), 200));

        let http_1_0 = b"POST /v1/topics HTTP/1.0\r\nExpect: 100-continue\r\n\
                         Content-Length: 14\r\n\r\n";
        let not_asked = b"POST /v1/topics HTTP/1.1\r\nHost: h\r\nContent-Length: 14\r\n\r\n";
        for bytes in [&http_1_0[..], &not_asked[..]] {
            assert!(!HttpSession::default().continue_due(&head(bytes), 0));
        }
    }

    #[test]
    fn an_answer_to_a_head_keeps_the_head_and_drops_the_body() {
        let answer = |omit_body| {
            let mut session = HttpSession {
                pending: Some(PendingHttp {
                    dialect: ApiDialect::Fiber,
                    connection: ConnectionHeader::Default,
                    omit_body,
                    awaiting: Awaiting::Stats {
                        query: StatsQuery::V1Health,
                        gathered: BrokerStats::default(),
                    },
                }),
                ..HttpSession::default()
            };
            let mut out = Vec::new();
            session.encode_answer(
                HTTP_REQUEST_ID,
                Answer::Refused {
                    code: ErrorCode::ShuttingDown,
                    reason: "broker is shutting down",
                },
                &mut out,
            );
            String::from_utf8(out).unwrap()
        };
        let get = answer(false);
        let head = answer(true);
        let (get_head, body) = get.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, r#"{"error":"broker is shutting down"}"#);
        assert_eq!(head, format!("{get_head}\r\n\r\n"));
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
    }
}
