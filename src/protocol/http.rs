//! HTTP/1.1 for the HTTP port (issue 9), sans-IO: request heads and bodies in from a read
//! buffer, responses appended to an output `Vec`; plus the pure router of the REST and
//! WebSocket endpoints and the WebSocket opening handshake.
//!
//! Why here and this small: the HTTP port serves a handful of JSON endpoints and two WebSocket
//! upgrades on the shards' own reactors, so it needs a careful request parser (`httparse`,
//! which parses in place and allocates nothing) and strict limits, not a framework.
//!
//! # Requests
//!
//! [`decode_request`] returns `Ok(None)` until the head and its `Content-Length` body are both
//! buffered, then the request (borrowing the buffer) and the bytes it occupies; `Err` is a
//! status to answer before closing, since after a malformed request the stream cannot be
//! trusted to resynchronise. Limits ([`HttpLimits`]), checked before anything is buffered past
//! them:
//! - head bytes (request line and headers): over it, 431, even while the head is incomplete;
//! - header count: over it, 431;
//! - body bytes: a `Content-Length` over it is answered 413 as soon as the head is read.
//!
//! Bodies come with `Content-Length` only: a chunked body gets 411 (send a length), any other
//! transfer coding 501. `Content-Length` together with `Transfer-Encoding`, or two different
//! lengths, is 400 (the classic request-smuggling ambiguity). An HTTP/1.1 request without
//! `Host` is 400 (RFC 9112 §3.2). `Expect: 100-continue` is reported in the head
//! ([`RequestHead::expect_continue`]), any other expectation is 417; the connection calls
//! [`decode_head`] and, while [`RequestHead::waits_for_continue`] and the body is not
//! buffered, sends [`encode_continue`] once and waits for the body. The header deadline
//! (slowloris) needs a clock, so it belongs to the connection, not to this module.
//!
//! A HEAD is routed as a GET and answered with the GET's head ([`omit_response_body`]).
//!
//! Keep-alive: HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 closes it
//! unless `Connection: keep-alive`. [`ConnectionHeader::for_request`] picks the response's
//! `Connection` header from that.
//!
//! # Routing
//!
//! [`route`] maps a method and a path to a [`Route`], or to 404, or to 405 with the `Allow`
//! list. Paths match exactly (no trailing-slash variants). Paths under `/v1/` follow the
//! Go/Fiber service ([`ApiDialect::Fiber`]), the others the FastAPI service
//! ([`ApiDialect::FastApi`]); the dialect decides the error body: Fiber `{"error": "..."}`,
//! FastAPI `{"detail": "..."}`.
//!
//! # WebSocket handshake
//!
//! [`validate_websocket_upgrade`] checks an upgrade request (RFC 6455 §4.2.1) and
//! [`encode_switching_protocols`] writes the 101 with `Sec-WebSocket-Accept`; after it the
//! connection speaks [`crate::protocol::websocket`]. No subprotocol or extension (such as
//! permessage-deflate) is ever accepted, so frames never have RSV bits.

use std::borrow::Cow;
use std::fmt;
use std::io::Write as _;

use base64::Engine as _;
use serde::Serialize;

use super::topic::{self, TopicError};

/// Size of the on-stack header array; [`HttpLimits::headers_max`] is capped by it.
pub const HEADERS_CAPACITY: usize = 64;

/// Request limits; every one is a named flag of the HTTP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Bytes of the request line and headers, final empty line included.
    pub head_bytes_max: usize,
    /// Header fields per request (at most [`HEADERS_CAPACITY`]).
    pub headers_max: usize,
    /// Bytes of a request body.
    pub body_bytes_max: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            // What nginx and Go use for a whole head; browsers send well under 2 KiB.
            head_bytes_max: 8 * 1024,
            headers_max: 32,
            // REST bodies are small JSON objects; publishes go over WebSocket.
            body_bytes_max: 64 * 1024,
        }
    }
}

/// Request methods the port knows; everything else is [`Method::Other`] (405 or 404).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 9110 §9.1): `get` is not `GET`.
    pub fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// A parsed request head, borrowing the read buffer. Only the headers the port acts on are
/// kept; the rest are checked for syntax and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHead<'b> {
    pub method: Method,
    /// The request target as sent (origin form, or the path of an absolute form).
    pub target: &'b str,
    /// `target` up to the `?`, still percent-encoded.
    pub path: &'b str,
    /// After the `?`, if there is one.
    pub query: Option<&'b str>,
    pub version: Version,
    /// Whether the connection may stay open after the response (see the module docs).
    pub keep_alive: bool,
    /// Body bytes announced by `Content-Length` (0 without it).
    pub content_length: usize,
    pub content_type: Option<&'b [u8]>,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// An `Upgrade` header was sent, whatever it named.
    pub upgrade_present: bool,
    /// `Upgrade` names `websocket` (case-insensitive, with or without a version).
    pub upgrade_websocket: bool,
    /// `Connection` lists `upgrade`.
    pub connection_upgrade: bool,
    pub websocket_key: Option<&'b [u8]>,
    pub websocket_version: Option<&'b [u8]>,
    /// `Sec-WebSocket-Key` or `Sec-WebSocket-Version` appeared more than once.
    pub websocket_header_repeated: bool,
    /// Bytes of the head, final empty line included.
    pub head_len: usize,
}

impl RequestHead<'_> {
    /// Whether the client holds its body back until a `100 Continue`: it asked, it has a body
    /// to send, and it speaks HTTP/1.1 (HTTP/1.0 has no 1xx, so RFC 9110 §10.1.1 and §15.2 have
    /// a server ignore an HTTP/1.0 client's expectation and never send it a 1xx).
    pub fn waits_for_continue(&self) -> bool {
        self.expect_continue && self.version == Version::Http11 && self.content_length > 0
    }
}

/// A whole request: its head, its body, and the bytes both occupy in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'b> {
    pub head: RequestHead<'b>,
    pub body: &'b [u8],
    /// `head.head_len + body.len()`: what the caller drops from its buffer.
    pub len: usize,
}

/// A response status. Only the codes this port sends have reason phrases; others get `""`
/// (the phrase is optional on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

impl Status {
    pub const CONTINUE: Status = Status(100);
    pub const SWITCHING_PROTOCOLS: Status = Status(101);
    pub const OK: Status = Status(200);
    pub const CREATED: Status = Status(201);
    pub const NO_CONTENT: Status = Status(204);
    pub const BAD_REQUEST: Status = Status(400);
    pub const NOT_FOUND: Status = Status(404);
    pub const METHOD_NOT_ALLOWED: Status = Status(405);
    pub const REQUEST_TIMEOUT: Status = Status(408);
    pub const CONFLICT: Status = Status(409);
    pub const LENGTH_REQUIRED: Status = Status(411);
    pub const PAYLOAD_TOO_LARGE: Status = Status(413);
    pub const EXPECTATION_FAILED: Status = Status(417);
    pub const UNPROCESSABLE_ENTITY: Status = Status(422);
    pub const UPGRADE_REQUIRED: Status = Status(426);
    pub const TOO_MANY_REQUESTS: Status = Status(429);
    pub const HEADER_FIELDS_TOO_LARGE: Status = Status(431);
    pub const INTERNAL_SERVER_ERROR: Status = Status(500);
    pub const NOT_IMPLEMENTED: Status = Status(501);
    pub const SERVICE_UNAVAILABLE: Status = Status(503);
    pub const VERSION_NOT_SUPPORTED: Status = Status(505);

    pub fn reason(self) -> &'static str {
        match self.0 {
            100 => "Continue",
            101 => "Switching Protocols",
            200 => "OK",
            201 => "Created",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            409 => "Conflict",
            411 => "Length Required",
            413 => "Content Too Large",
            417 => "Expectation Failed",
            422 => "Unprocessable Content",
            426 => "Upgrade Required",
            429 => "Too Many Requests",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            503 => "Service Unavailable",
            505 => "HTTP Version Not Supported",
            _ => "",
        }
    }

    /// 1xx, 204 and 304 responses carry no body and no `Content-Length` (RFC 9110 §8.6).
    pub fn has_body(self) -> bool {
        !(self.0 < 200 || self.0 == 204 || self.0 == 304)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.reason())
    }
}

/// A request the port refuses: answer `status` (with [`encode_http_error`]), then close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpError {
    pub status: Status,
    pub reason: &'static str,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.reason)
    }
}

impl std::error::Error for HttpError {}

fn error(status: Status, reason: &'static str) -> HttpError {
    HttpError { status, reason }
}

fn bad_request(reason: &'static str) -> HttpError {
    error(Status::BAD_REQUEST, reason)
}

/// Parses the request head at the start of `buf`; `Ok(None)` while it is incomplete. The body
/// is not looked at: see [`decode_request`]. Never reads past `limits.head_bytes_max`.
pub fn decode_head<'b>(
    buf: &'b [u8],
    limits: &HttpLimits,
) -> Result<Option<RequestHead<'b>>, HttpError> {
    const HEAD_TOO_LARGE: &str = "request head above the size limit";
    let window = buf.get(..limits.head_bytes_max).unwrap_or(buf);
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_CAPACITY];
    let headers_max = limits.headers_max.min(HEADERS_CAPACITY);
    let headers = headers.get_mut(..headers_max).unwrap_or_default();
    let mut request = httparse::Request::new(headers);
    let head_len = match request.parse(window) {
        Ok(httparse::Status::Complete(head_len)) => head_len,
        Ok(httparse::Status::Partial) if window.len() < limits.head_bytes_max => return Ok(None),
        Ok(httparse::Status::Partial) => {
            return Err(error(Status::HEADER_FIELDS_TOO_LARGE, HEAD_TOO_LARGE))
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(error(
                Status::HEADER_FIELDS_TOO_LARGE,
                "more header fields than the limit",
            ))
        }
        Err(httparse::Error::Version) => {
            return Err(error(
                Status::VERSION_NOT_SUPPORTED,
                "only HTTP/1.0 and HTTP/1.1 are served",
            ))
        }
        Err(httparse::Error::Token) => return Err(bad_request("invalid method or request target")),
        Err(httparse::Error::HeaderName) => return Err(bad_request("invalid header name")),
        Err(httparse::Error::HeaderValue) => return Err(bad_request("invalid header value")),
        Err(_) => return Err(bad_request("malformed request head")),
    };
    // A complete parse fills all three; the fallbacks keep this panic-free regardless.
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(bad_request("malformed request line"));
    };
    let version = match version {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => {
            return Err(error(
                Status::VERSION_NOT_SUPPORTED,
                "only HTTP/1.0 and HTTP/1.1 are served",
            ))
        }
    };
    let origin = origin_form(target).ok_or(bad_request("request target is not a path"))?;
    let (path, query) = split_target(origin);

    let mut head = RequestHead {
        method: Method::from_token(method),
        target: origin,
        path,
        query,
        version,
        keep_alive: false,
        content_length: 0,
        content_type: None,
        expect_continue: false,
        upgrade_present: false,
        upgrade_websocket: false,
        connection_upgrade: false,
        websocket_key: None,
        websocket_version: None,
        websocket_header_repeated: false,
        head_len,
    };
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut host_count = 0usize;
    let (mut connection_close, mut connection_keep_alive) = (false, false);
    for header in request.headers.iter() {
        let name = header.name;
        let value = header.value;
        if name.eq_ignore_ascii_case("content-length") {
            let length = parse_content_length(value)
                .ok_or(bad_request("Content-Length is not a decimal number"))?;
            if content_length.is_some_and(|earlier| earlier != length) {
                return Err(bad_request("two different Content-Length values"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = Some(value);
        } else if name.eq_ignore_ascii_case("host") {
            host_count += 1;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    connection_close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    connection_keep_alive = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    head.connection_upgrade = true;
                }
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            head.upgrade_present = true;
            // A protocol is `name[/version]`: `websocket`, `WebSocket/13`.
            head.upgrade_websocket |= tokens(value).any(|protocol| {
                let name = protocol.split(|&b| b == b'/').next().unwrap_or_default();
                name.eq_ignore_ascii_case(b"websocket")
            });
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type.get_or_insert(value);
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                return Err(error(
                    Status::EXPECTATION_FAILED,
                    "only Expect: 100-continue is known",
                ));
            }
            head.expect_continue = true;
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            head.websocket_header_repeated |= head.websocket_key.is_some();
            head.websocket_key = Some(value.trim_ascii());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.websocket_header_repeated |= head.websocket_version.is_some();
            head.websocket_version = Some(value.trim_ascii());
        }
    }
    if let Some(coding) = transfer_encoding {
        if content_length.is_some() {
            return Err(bad_request("both Content-Length and Transfer-Encoding"));
        }
        return Err(
            if tokens(coding).any(|t| t.eq_ignore_ascii_case(b"chunked")) {
                error(
                    Status::LENGTH_REQUIRED,
                    "chunked bodies are not accepted; send Content-Length",
                )
            } else {
                error(Status::NOT_IMPLEMENTED, "transfer coding not supported")
            },
        );
    }
    if version == Version::Http11 && host_count != 1 {
        return Err(bad_request(
            "an HTTP/1.1 request needs exactly one Host header",
        ));
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > limits.body_bytes_max as u64 {
        return Err(error(
            Status::PAYLOAD_TOO_LARGE,
            "request body above the size limit",
        ));
    }
    // Lossless: at most body_bytes_max, a usize.
    head.content_length = content_length as usize;
    head.keep_alive = match version {
        Version::Http11 => !connection_close,
        Version::Http10 => connection_keep_alive && !connection_close,
    };
    Ok(Some(head))
}

/// Parses the request at the start of `buf`: `Ok(None)` until its head and whole body are
/// buffered. See the module docs for the errors.
pub fn decode_request<'b>(
    buf: &'b [u8],
    limits: &HttpLimits,
) -> Result<Option<Request<'b>>, HttpError> {
    let Some(head) = decode_head(buf, limits)? else {
        return Ok(None);
    };
    Ok(request_body(buf, head))
}

/// The whole request once the body behind an already parsed `head` is buffered.
pub fn request_body<'b>(buf: &'b [u8], head: RequestHead<'b>) -> Option<Request<'b>> {
    let len = head.head_len.checked_add(head.content_length)?;
    let body = buf.get(head.head_len..len)?;
    Some(Request { head, body, len })
}

/// `1*DIGIT`, no sign, no spaces inside, bounded so it cannot overflow.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The comma-separated tokens of a list-valued header, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// The origin form of a request target: itself if it starts with `/`, the path of an
/// absolute form (`http://host/p` is `/p`, `http://host` is `/`), `*` as is; `None` otherwise.
fn origin_form(target: &str) -> Option<&str> {
    if target.starts_with('/') || target == "*" {
        return Some(target);
    }
    let (scheme, rest) = target.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    Some(match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('/') => &rest[at..],
        // `http://host?q` has an empty path, which means `/`; the query is dropped with it.
        _ => "/",
    })
}

/// Splits a target into its path and its query (without the `?`).
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

/// Why a percent-encoded segment could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PercentError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

/// Decodes `%XX` escapes in one path segment. Borrows when there is nothing to decode. `+`
/// stays `+` (it means a space only in form-encoded queries).
pub fn percent_decode(segment: &str) -> Result<Cow<'_, str>, PercentError> {
    if !segment.contains('%') {
        return Ok(Cow::Borrowed(segment));
    }
    let mut bytes = Vec::with_capacity(segment.len());
    let mut rest = segment.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte != b'%' {
            bytes.push(byte);
            rest = tail;
            continue;
        }
        let Some((&[high, low], tail)) = tail.split_first_chunk::<2>() else {
            return Err(PercentError::BadEscape);
        };
        let (Some(high), Some(low)) = (hex_value(high), hex_value(low)) else {
            return Err(PercentError::BadEscape);
        };
        bytes.push(high << 4 | low);
        rest = tail;
    }
    String::from_utf8(bytes)
        .map(Cow::Owned)
        .map_err(|_| PercentError::NotUtf8)
}

fn hex_value(digit: u8) -> Option<u8> {
    // `to_digit` returns at most 15 here, so the cast is lossless.
    char::from(digit).to_digit(16).map(|value| value as u8)
}

/// Which service an endpoint imitates; it decides error bodies and status details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiDialect {
    /// The Go/Fiber service, under `/v1/`: errors are `{"error": "..."}`.
    Fiber,
    /// The FastAPI service, unprefixed: errors are `{"detail": "..."}`.
    FastApi,
}

/// The dialect of a path, also for paths that do not exist (so a 404 speaks the right one).
pub fn dialect_for_path(path: &str) -> ApiDialect {
    if path == "/v1" || path.starts_with("/v1/") {
        ApiDialect::Fiber
    } else {
        ApiDialect::FastApi
    }
}

/// An endpoint of the HTTP port. Topic names are percent-decoded but not yet validated (the
/// handler answers a bad name in its dialect).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route<'p> {
    /// `GET /`: the dashboard.
    Dashboard,
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// `GET /v1/ws`: WebSocket, Go/Fiber dialect.
    FiberWebSocket,
    /// `GET /ws`: WebSocket, FastAPI dialect.
    FastApiWebSocket,
    /// `POST /v1/topics`: 201, 409 if it exists, 400 on a bad name.
    V1CreateTopic,
    /// `GET /v1/topics`: `{"topics":[{"name","subscribers"}]}`.
    V1ListTopics,
    /// `DELETE /v1/topics/{name}`: 200, 404 if absent.
    V1DeleteTopic { name: Cow<'p, str> },
    /// `GET /v1/health`: `{"uptime_seconds","topics","subscribers"}`.
    V1Health,
    /// `GET /v1/stats`.
    V1Stats,
    /// `GET /v1/topics/{name}/subscribers`: who receives the topic (presence), 404 if absent.
    V1TopicSubscribers { name: Cow<'p, str> },
    /// `POST /topics`: idempotent, 201 `{"name","created"}`.
    CreateTopic,
    /// `GET /topics`: `["name", ...]`.
    ListTopics,
    /// `DELETE /topics/{name}`: 204.
    DeleteTopic { name: Cow<'p, str> },
    /// `GET /health`: `{"status":"healthy","uptime_seconds","topic_count","active_subscriber_count"}`.
    Health,
    /// `GET /stats`: `{"topics":{name:{"message_count","subscriber_count"}}}`.
    Stats,
}

impl Route<'_> {
    pub fn dialect(&self) -> ApiDialect {
        match self {
            Route::FiberWebSocket
            | Route::V1CreateTopic
            | Route::V1ListTopics
            | Route::V1DeleteTopic { .. }
            | Route::V1Health
            | Route::V1Stats
            | Route::V1TopicSubscribers { .. } => ApiDialect::Fiber,
            _ => ApiDialect::FastApi,
        }
    }
}

/// Why [`route`] found no endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// 404.
    NotFound,
    /// 405; `allow` is the `Allow` header value.
    MethodNotAllowed { allow: &'static str },
    /// 400: a path segment with a bad percent escape or not UTF-8 once decoded.
    BadPath(PercentError),
}

impl RouteError {
    pub fn status(self) -> Status {
        match self {
            RouteError::NotFound => Status::NOT_FOUND,
            RouteError::MethodNotAllowed { .. } => Status::METHOD_NOT_ALLOWED,
            RouteError::BadPath(_) => Status::BAD_REQUEST,
        }
    }

    /// The message of the JSON error body.
    pub fn message(self) -> &'static str {
        match self {
            RouteError::NotFound => "Not Found",
            RouteError::MethodNotAllowed { .. } => "Method Not Allowed",
            RouteError::BadPath(PercentError::BadEscape) => "bad percent escape in the path",
            RouteError::BadPath(PercentError::NotUtf8) => "path is not UTF-8 once decoded",
        }
    }

    /// Writes the whole error response for a request to `path` (dialect from the path).
    pub fn encode_response(self, path: &str, connection: ConnectionHeader, out: &mut Vec<u8>) {
        let allow = match self {
            RouteError::MethodNotAllowed { allow } => Some(allow),
            _ => None,
        };
        let body = error_body(dialect_for_path(path), self.message());
        encode_response(
            &ResponseHead {
                status: self.status(),
                content_type: Some(CONTENT_TYPE_JSON),
                allow,
                connection,
                extra: &[],
            },
            &body,
            out,
        );
    }
}

/// Maps a request to its endpoint. `path` is the raw (percent-encoded) path, no query.
///
/// Wherever GET reads something, HEAD routes to the same endpoint, since RFC 9110 §9.1 asks
/// every general-purpose server for it; the connection answers with the GET's head and no body
/// ([`omit_response_body`]). The WebSocket paths stay GET-only: they exist to be upgraded, and
/// a HEAD cannot upgrade.
pub fn route(method: Method, path: &str) -> Result<Route<'_>, RouteError> {
    const GET_HEAD: &str = "GET, HEAD";
    const GET_HEAD_POST: &str = "GET, HEAD, POST";
    const UPGRADE_GET: &str = "GET";
    const DELETE: &str = "DELETE";
    let readable = |route: Route<'static>| match method {
        Method::Get | Method::Head => Ok(route),
        _ => Err(RouteError::MethodNotAllowed { allow: GET_HEAD }),
    };
    let upgrade = |route: Route<'static>| match method {
        Method::Get => Ok(route),
        _ => Err(RouteError::MethodNotAllowed { allow: UPGRADE_GET }),
    };
    let collection = |create: Route<'static>, list: Route<'static>| match method {
        Method::Post => Ok(create),
        Method::Get | Method::Head => Ok(list),
        _ => Err(RouteError::MethodNotAllowed {
            allow: GET_HEAD_POST,
        }),
    };
    match path {
        "/" => readable(Route::Dashboard),
        "/metrics" => readable(Route::Metrics),
        "/v1/ws" => upgrade(Route::FiberWebSocket),
        "/ws" => upgrade(Route::FastApiWebSocket),
        "/v1/topics" => collection(Route::V1CreateTopic, Route::V1ListTopics),
        "/v1/health" => readable(Route::V1Health),
        "/v1/stats" => readable(Route::V1Stats),
        "/topics" => collection(Route::CreateTopic, Route::ListTopics),
        "/health" => readable(Route::Health),
        "/stats" => readable(Route::Stats),
        _ => {
            if let Some(name) = path
                .strip_prefix("/v1/topics/")
                .and_then(|rest| rest.strip_suffix("/subscribers"))
                .filter(|name| !name.is_empty() && !name.contains('/'))
            {
                if !matches!(method, Method::Get | Method::Head) {
                    return Err(RouteError::MethodNotAllowed { allow: GET_HEAD });
                }
                let name = percent_decode(name).map_err(RouteError::BadPath)?;
                return Ok(Route::V1TopicSubscribers { name });
            }
            let (prefix_v1, name) = if let Some(name) = path.strip_prefix("/v1/topics/") {
                (true, name)
            } else if let Some(name) = path.strip_prefix("/topics/") {
                (false, name)
            } else {
                return Err(RouteError::NotFound);
            };
            if name.is_empty() || name.contains('/') {
                return Err(RouteError::NotFound);
            }
            if method != Method::Delete {
                return Err(RouteError::MethodNotAllowed { allow: DELETE });
            }
            let name = percent_decode(name).map_err(RouteError::BadPath)?;
            Ok(if prefix_v1 {
                Route::V1DeleteTopic { name }
            } else {
                Route::DeleteTopic { name }
            })
        }
    }
}

/// Why a `POST /v1/topics` or `POST /topics` body was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON at all.
    InvalidJson(String),
    /// JSON, but not `{"name": "<string>"}`.
    InvalidShape(&'static str),
    /// The name breaks the topic naming rules.
    BadName(TopicError),
}

impl BodyError {
    /// Go/Fiber answers every body problem with 400; FastAPI answers a body that fails to
    /// parse or validate with 422 (Pydantic) and a bad topic name with 400.
    pub fn status(&self, dialect: ApiDialect) -> Status {
        match (dialect, self) {
            (ApiDialect::Fiber, _) | (ApiDialect::FastApi, BodyError::BadName(_)) => {
                Status::BAD_REQUEST
            }
            (ApiDialect::FastApi, _) => Status::UNPROCESSABLE_ENTITY,
        }
    }

    pub fn message(&self) -> Cow<'static, str> {
        match self {
            BodyError::InvalidJson(detail) => Cow::Owned(format!("invalid JSON body: {detail}")),
            BodyError::InvalidShape(reason) => Cow::Borrowed(reason),
            BodyError::BadName(error) => Cow::Borrowed(error.reason()),
        }
    }
}

/// The body of a topic creation: `{"name": "orders.eu"}`, optionally `"presence": true`
/// (other keys are ignored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateTopicBody<'a> {
    pub name: Cow<'a, str>,
    /// Publish joins and leaves on `$sys.presence.<name>`.
    pub presence: bool,
}

/// Parses and validates a topic creation body. The name must be a topic a client may publish
/// to: exact and not reserved.
pub fn parse_create_topic_body(body: &[u8]) -> Result<CreateTopicBody<'_>, BodyError> {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow, default)]
        name: Option<&'a serde_json::value::RawValue>,
        #[serde(default)]
        presence: Option<bool>,
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| BodyError::InvalidJson("body is not UTF-8".to_owned()))?;
    if !text.trim_start().starts_with('{') {
        serde_json::from_str::<serde::de::IgnoredAny>(text)
            .map_err(|error| BodyError::InvalidJson(error.to_string()))?;
        return Err(BodyError::InvalidShape("body must be a JSON object"));
    }
    let parsed: Body<'_> = serde_json::from_str(text).map_err(|error| {
        if error.is_data() {
            BodyError::InvalidShape(
                "body must be a JSON object with one \"name\" (a string) and an optional \
                 \"presence\" (true or false)",
            )
        } else {
            BodyError::InvalidJson(error.to_string())
        }
    })?;
    let name = parsed
        .name
        .filter(|raw| raw.get() != "null")
        .ok_or(BodyError::InvalidShape("\"name\" is required"))?;
    let name: Cow<'_, str> = match serde_json::from_str::<&str>(name.get()) {
        Ok(borrowed) => Cow::Borrowed(borrowed),
        Err(_) => Cow::Owned(
            serde_json::from_str::<String>(name.get())
                .map_err(|_| BodyError::InvalidShape("\"name\" must be a string"))?,
        ),
    };
    topic::parse_publish_topic(name.as_bytes()).map_err(BodyError::BadName)?;
    Ok(CreateTopicBody {
        name,
        presence: parsed.presence.unwrap_or(false),
    })
}

/// The `Connection` header of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionHeader {
    /// None: HTTP/1.1's default, keep-alive.
    Default,
    /// `Connection: keep-alive`, for an HTTP/1.0 client that asked for it.
    KeepAlive,
    /// `Connection: close`: the server closes after this response.
    Close,
}

impl ConnectionHeader {
    /// What to answer `head` with, if the server itself has no reason to close.
    pub fn for_request(head: &RequestHead<'_>) -> ConnectionHeader {
        match (head.keep_alive, head.version) {
            (false, _) => ConnectionHeader::Close,
            (true, Version::Http10) => ConnectionHeader::KeepAlive,
            (true, Version::Http11) => ConnectionHeader::Default,
        }
    }

    pub fn closes(self) -> bool {
        self == ConnectionHeader::Close
    }
}

pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_TYPE_PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const CONTENT_TYPE_HTML: &str = "text/html; charset=utf-8";

/// Everything of a response but its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead<'a> {
    pub status: Status,
    pub content_type: Option<&'a str>,
    /// The `Allow` header (405 responses).
    pub allow: Option<&'a str>,
    pub connection: ConnectionHeader,
    /// Further headers, as `(name, value)`; values must not contain CR or LF.
    pub extra: &'a [(&'a str, &'a str)],
}

impl<'a> ResponseHead<'a> {
    /// A JSON response head.
    pub fn json(status: Status, connection: ConnectionHeader) -> ResponseHead<'a> {
        ResponseHead {
            status,
            content_type: Some(CONTENT_TYPE_JSON),
            allow: None,
            connection,
            extra: &[],
        }
    }
}

/// Appends a whole response. `Content-Length` is always written except where the status
/// forbids a body (then `body` must be empty and is not written).
pub fn encode_response(head: &ResponseHead<'_>, body: &[u8], out: &mut Vec<u8>) {
    debug_assert!(head.status.has_body() || body.is_empty());
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nServer: corebus\r\n",
        head.status.0,
        head.status.reason()
    );
    if let Some(content_type) = head.content_type {
        put_header(out, "Content-Type", content_type);
    }
    if let Some(allow) = head.allow {
        put_header(out, "Allow", allow);
    }
    match head.connection {
        ConnectionHeader::Default => {}
        ConnectionHeader::KeepAlive => put_header(out, "Connection", "keep-alive"),
        ConnectionHeader::Close => put_header(out, "Connection", "close"),
    }
    for (name, value) in head.extra {
        debug_assert!(!value.contains(['\r', '\n']));
        put_header(out, name, value);
    }
    if head.status.has_body() {
        let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
        out.extend_from_slice(body);
    } else {
        out.extend_from_slice(b"\r\n");
    }
}

fn put_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends a JSON response with `value` as its body.
pub fn encode_json_response<T: Serialize + ?Sized>(
    status: Status,
    value: &T,
    connection: ConnectionHeader,
    out: &mut Vec<u8>,
) {
    // REST answers are small and off the hot path: one temporary body buffer is fine.
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    encode_response(&ResponseHead::json(status, connection), &body, out);
}

/// The JSON body of an error in `dialect`: Fiber `{"error":msg}`, FastAPI `{"detail":msg}`.
pub fn error_body(dialect: ApiDialect, message: &str) -> Vec<u8> {
    let key = match dialect {
        ApiDialect::Fiber => "error",
        ApiDialect::FastApi => "detail",
    };
    let mut body = Vec::with_capacity(message.len() + 16);
    body.extend_from_slice(b"{\"");
    body.extend_from_slice(key.as_bytes());
    body.extend_from_slice(b"\":");
    super::payload::write_json_string(message, &mut body);
    body.push(b'}');
    body
}

/// Appends a JSON error response in `dialect`.
pub fn encode_error_response(
    dialect: ApiDialect,
    status: Status,
    message: &str,
    connection: ConnectionHeader,
    out: &mut Vec<u8>,
) {
    let body = error_body(dialect, message);
    encode_response(&ResponseHead::json(status, connection), &body, out);
}

/// Appends the answer to a request [`decode_head`] refused, then the connection closes. The
/// dialect is unknown (the path may not have been read), so the body carries both keys.
pub fn encode_http_error(error: &HttpError, out: &mut Vec<u8>) {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(b"{\"error\":");
    super::payload::write_json_string(error.reason, &mut body);
    body.extend_from_slice(b",\"detail\":");
    super::payload::write_json_string(error.reason, &mut body);
    body.push(b'}');
    encode_response(
        &ResponseHead::json(error.status, ConnectionHeader::Close),
        &body,
        out,
    );
}

/// Appends `HTTP/1.1 100 Continue`, the go-ahead for a client that sent `Expect: 100-continue`.
pub fn encode_continue(out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
}

/// Makes the response encoded into `out` from `response_start` on the answer to a HEAD: its
/// head as written, `Content-Length` of the GET's body included, and no body (RFC 9110
/// §9.3.2). Cutting what was encoded, rather than telling every encoder, keeps one path for
/// all of them (route errors, gathered stats, the dashboard), so none can answer a HEAD
/// differently from its GET.
pub fn omit_response_body(out: &mut Vec<u8>, response_start: usize) {
    const HEAD_END: &[u8] = b"\r\n\r\n";
    // Header values never hold CR or LF (see `encode_response`), so the first empty line is
    // the end of this response's head.
    let head_len = out
        .get(response_start..)
        .and_then(|response| response.windows(HEAD_END.len()).position(|w| w == HEAD_END));
    debug_assert!(head_len.is_some(), "no response head at {response_start}");
    if let Some(head_len) = head_len {
        out.truncate(response_start + head_len + HEAD_END.len());
    }
}

/// Appended to a client's key before hashing (RFC 6455 §1.3).
const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Bytes of a decoded `Sec-WebSocket-Key` (RFC 6455 §4.1).
const WEBSOCKET_KEY_BYTES: usize = 16;

/// A refused WebSocket upgrade: answer with [`encode_upgrade_error`], then close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpgradeError {
    /// 400, or 426 when the client must change protocol or version.
    pub status: Status,
    pub reason: &'static str,
}

/// Checks an upgrade request to a WebSocket path and returns its `Sec-WebSocket-Key`.
///
/// - not `GET`: 405 (the router already answers this; repeated for direct callers)
/// - HTTP/1.0: 400
/// - no `Upgrade` header, or one not naming `websocket`: 426 (the client spoke plain HTTP to
///   a WebSocket endpoint; the answer names what to upgrade to)
/// - `Connection` without `upgrade`: 400
/// - `Sec-WebSocket-Version` absent or not `13`: 426 with `Sec-WebSocket-Version: 13`
/// - `Sec-WebSocket-Key` absent, repeated, or not base64 of 16 bytes: 400
pub fn validate_websocket_upgrade<'b>(head: &RequestHead<'b>) -> Result<&'b [u8], UpgradeError> {
    let refuse = |status, reason| Err(UpgradeError { status, reason });
    if head.method != Method::Get {
        return refuse(Status::METHOD_NOT_ALLOWED, "a WebSocket upgrade is a GET");
    }
    if head.version != Version::Http11 {
        return refuse(Status::BAD_REQUEST, "a WebSocket upgrade needs HTTP/1.1");
    }
    if !head.upgrade_websocket {
        return refuse(
            Status::UPGRADE_REQUIRED,
            "this endpoint speaks WebSocket: send Upgrade: websocket",
        );
    }
    if !head.connection_upgrade {
        return refuse(Status::BAD_REQUEST, "Connection header must list upgrade");
    }
    if head.websocket_header_repeated {
        return refuse(
            Status::BAD_REQUEST,
            "Sec-WebSocket-Key or -Version given twice",
        );
    }
    if head.websocket_version != Some(b"13") {
        return refuse(Status::UPGRADE_REQUIRED, "Sec-WebSocket-Version must be 13");
    }
    let Some(key) = head.websocket_key else {
        return refuse(Status::BAD_REQUEST, "Sec-WebSocket-Key is missing");
    };
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if decoded.map_or(true, |bytes| bytes.len() != WEBSOCKET_KEY_BYTES) {
        return refuse(
            Status::BAD_REQUEST,
            "Sec-WebSocket-Key must be base64 of 16 bytes",
        );
    }
    Ok(key)
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)).
pub fn websocket_accept_key(key: &[u8]) -> String {
    let mut sha1 = sha1_smol::Sha1::new();
    sha1.update(key);
    sha1.update(WEBSOCKET_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha1.digest().bytes())
}

/// Appends the 101 that completes a WebSocket handshake for `key` (as returned by
/// [`validate_websocket_upgrade`]).
pub fn encode_switching_protocols(key: &[u8], out: &mut Vec<u8>) {
    let accept = websocket_accept_key(key);
    let _ = write!(
        out,
        "HTTP/1.1 101 Switching Protocols\r\nServer: corebus\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
}

/// Appends the answer to a refused upgrade (JSON body in the path's dialect, then close). A
/// 426 names the protocol and version to use; a 405 gives `Allow: GET`.
pub fn encode_upgrade_error(error: &UpgradeError, path: &str, out: &mut Vec<u8>) {
    let extra: &[(&str, &str)] = if error.status == Status::UPGRADE_REQUIRED {
        &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]
    } else {
        &[]
    };
    let body = error_body(dialect_for_path(path), error.reason);
    encode_response(
        &ResponseHead {
            status: error.status,
            content_type: Some(CONTENT_TYPE_JSON),
            allow: (error.status == Status::METHOD_NOT_ALLOWED).then_some("GET"),
            connection: ConnectionHeader::Close,
            extra,
        },
        &body,
        out,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: HttpLimits = HttpLimits {
        head_bytes_max: 512,
        headers_max: 8,
        body_bytes_max: 100,
    };

    fn head(bytes: &[u8]) -> RequestHead<'_> {
        decode_head(bytes, &LIMITS)
            .expect("valid head")
            .expect("complete head")
    }

    fn refused(bytes: &[u8]) -> (u16, &'static str) {
        match decode_request(bytes, &LIMITS) {
            Err(error) => (error.status.0, error.reason),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_get_head_is_parsed_with_its_parts() {
        let bytes = b"GET /v1/topics/a%2Eb?x=1&y HTTP/1.1\r\nHost: h\r\nUser-Agent: t\r\n\r\n";
        let request = decode_request(bytes, &LIMITS).unwrap().unwrap();
        assert_eq!(request.len, bytes.len());
        assert_eq!(request.body, b"");
        let head = request.head;
        assert_eq!(head.method, Method::Get);
        assert_eq!(head.target, "/v1/topics/a%2Eb?x=1&y");
        assert_eq!(head.path, "/v1/topics/a%2Eb");
        assert_eq!(head.query, Some("x=1&y"));
        assert_eq!(head.version, Version::Http11);
        assert!(head.keep_alive);
        assert_eq!(head.content_length, 0);
        assert_eq!(head.head_len, bytes.len());
        assert!(!head.upgrade_present && !head.expect_continue);
    }

    #[test]
    fn every_prefix_of_a_request_is_incomplete() {
        let bytes = b"POST /topics HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n\
                      Content-Length: 14\r\n\r\n{\"name\":\"a.b\"}GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let first_len = bytes.len() - b"GET / HTTP/1.1\r\nHost: h\r\n\r\n".len();
        for end in 0..first_len {
            assert_eq!(
                decode_request(&bytes[..end], &LIMITS),
                Ok(None),
                "prefix {end}"
            );
        }
        let request = decode_request(bytes, &LIMITS).unwrap().unwrap();
        assert_eq!(request.len, first_len);
        assert_eq!(request.body, b"{\"name\":\"a.b\"}");
        assert_eq!(request.head.method, Method::Post);
        assert_eq!(request.head.content_type, Some(&b"application/json"[..]));
        // Pipelined: the next request follows.
        let next = decode_request(&bytes[request.len..], &LIMITS)
            .unwrap()
            .unwrap();
        assert_eq!((next.head.method, next.head.path), (Method::Get, "/"));
        // The head alone is ready before the body.
        let partial = &bytes[..first_len - 3];
        let early = decode_head(partial, &LIMITS).unwrap().unwrap();
        assert_eq!(early.content_length, 14);
        assert_eq!(request_body(partial, early), None);
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_tokens() {
        let cases: &[(&[u8], bool)] = &[
            (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive, CLOSE\r\n\r\n",
                false,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
                true,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
            (
                b"GET / HTTP/1.0\r\nConnection: foo,  Keep-Alive \r\n\r\n",
                true,
            ),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
                false,
            ),
        ];
        for &(bytes, keep_alive) in cases {
            let head = head(bytes);
            assert_eq!(
                head.keep_alive,
                keep_alive,
                "{}",
                String::from_utf8_lossy(bytes)
            );
            let connection = ConnectionHeader::for_request(&head);
            assert_eq!(connection.closes(), !keep_alive);
            if keep_alive && head.version == Version::Http10 {
                assert_eq!(connection, ConnectionHeader::KeepAlive);
            }
        }
    }

    #[test]
    fn bad_requests_get_their_status() {
        let many_headers = format!("GET / HTTP/1.1\r\nHost: h\r\n{}\r\n", "A: b\r\n".repeat(8));
        let long_head = format!("GET /{} HTTP/1.1\r\n", "a".repeat(600));
        let long_incomplete = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(600));
        let cases: Vec<(&[u8], u16)> = vec![
            (many_headers.as_bytes(), 431),
            (long_head.as_bytes(), 431),
            (long_incomplete.as_bytes(), 431),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
            (b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n", 411),
            (b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1 1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: \r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9999999999999999999\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 101\r\n\r\n", 413),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n", 417),
            (b"GET / HTTP/1.1\r\nHo st: h\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: h\x01\r\n\r\n", 400),
            (b"GET foo HTTP/1.1\r\nHost: h\r\n\r\n", 400),
            (b"GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n", 400),
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
        ];
        for (bytes, status) in cases {
            assert_eq!(
                refused(bytes).0,
                status,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        // A same length given twice is one length.
        let twice =
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-length: 2\r\n\r\nhi";
        assert_eq!(decode_request(twice, &LIMITS).unwrap().unwrap().body, b"hi");
        // At the body limit exactly.
        let at_limit = format!(
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n{}",
            "x".repeat(100)
        );
        assert!(decode_request(at_limit.as_bytes(), &LIMITS)
            .unwrap()
            .is_some());
        // HTTP/1.0 needs no Host.
        assert_eq!(head(b"GET / HTTP/1.0\r\n\r\n").version, Version::Http10);
    }

    #[test]
    fn targets_take_origin_and_absolute_forms() {
        let cases: &[(&[u8], &str, Option<&str>)] = &[
            (
                b"GET http://h:8080/v1/stats?x HTTP/1.1\r\nHost: h\r\n\r\n",
                "/v1/stats",
                Some("x"),
            ),
            (b"GET HTTP://h HTTP/1.1\r\nHost: h\r\n\r\n", "/", None),
            (b"GET https://h?q HTTP/1.1\r\nHost: h\r\n\r\n", "/", None),
            (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", "*", None),
            (b"GET /? HTTP/1.1\r\nHost: h\r\n\r\n", "/", Some("")),
        ];
        for &(bytes, path, query) in cases {
            let head = head(bytes);
            assert_eq!((head.path, head.query), (path, query));
        }
    }

    #[test]
    fn expect_continue_is_reported() {
        let head = head(b"POST /topics HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n");
        assert!(head.expect_continue);
        let mut out = Vec::new();
        encode_continue(&mut out);
        assert_eq!(out, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn only_an_http_1_1_client_with_a_body_to_send_waits_for_continue() {
        let cases: &[(&[u8], bool)] = &[
            (
                b"POST /topics HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
                true,
            ),
            (
                b"POST /topics HTTP/1.1\r\nHost: h\r\nEXPECT:  100-CONTINUE \r\nContent-Length: 5\r\n\r\n",
                true,
            ),
            // RFC 9110 §10.1.1: an HTTP/1.0 client's expectation is ignored.
            (
                b"POST /topics HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
                false,
            ),
            // Nothing to hold back.
            (
                b"POST /topics HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            (
                b"GET /topics HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
                false,
            ),
            (
                b"POST /topics HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
                false,
            ),
        ];
        for &(bytes, waits) in cases {
            assert_eq!(
                head(bytes).waits_for_continue(),
                waits,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn a_head_answer_is_the_get_answer_without_its_body() {
        let mut get = Vec::new();
        let mut head = b"HTTP/1.1 200 OK\r\n\r\n{}".to_vec();
        let earlier = head.len();
        for out in [&mut get, &mut head] {
            encode_response(
                &ResponseHead {
                    status: Status::OK,
                    content_type: Some(CONTENT_TYPE_HTML),
                    allow: None,
                    connection: ConnectionHeader::KeepAlive,
                    extra: &[("Cache-Control", "no-cache")],
                },
                b"<p>\r\n\r\n</p>",
                out,
            );
        }
        omit_response_body(&mut head, earlier);
        let get_head_len = get.len() - b"<p>\r\n\r\n</p>".len();
        assert_eq!(
            &head[..earlier],
            b"HTTP/1.1 200 OK\r\n\r\n{}",
            "earlier bytes kept"
        );
        assert_eq!(&head[earlier..], &get[..get_head_len]);
        assert!(text(&head[earlier..]).contains("\r\nContent-Length: 11\r\n"));

        // An error keeps its status, Allow and Content-Length too.
        let mut out = Vec::new();
        route(Method::Head, "/v1/topics/x")
            .unwrap_err()
            .encode_response("/v1/topics/x", ConnectionHeader::Default, &mut out);
        omit_response_body(&mut out, 0);
        assert_eq!(
            text(&out),
            "HTTP/1.1 405 Method Not Allowed\r\nServer: corebus\r\nContent-Type: application/json\r\n\
             Allow: DELETE\r\nContent-Length: 30\r\n\r\n"
        );
        // A bodiless status is left as it is.
        let mut out = Vec::new();
        encode_response(
            &ResponseHead::json(Status::NO_CONTENT, ConnectionHeader::Default),
            b"",
            &mut out,
        );
        let whole = out.clone();
        omit_response_body(&mut out, 0);
        assert_eq!(out, whole);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("abc"), Ok(Cow::Borrowed("abc")));
        assert_eq!(
            percent_decode("a%2Eb%2e"),
            Ok(Cow::Owned("a.b.".to_owned()))
        );
        assert_eq!(
            percent_decode("caf%C3%A9+x"),
            Ok(Cow::Owned("caf\u{e9}+x".to_owned()))
        );
        assert_eq!(percent_decode("%2F"), Ok(Cow::Owned("/".to_owned())));
        assert_eq!(percent_decode("%"), Err(PercentError::BadEscape));
        assert_eq!(percent_decode("a%2"), Err(PercentError::BadEscape));
        assert_eq!(percent_decode("%zz"), Err(PercentError::BadEscape));
        assert_eq!(percent_decode("%+1"), Err(PercentError::BadEscape));
        assert_eq!(percent_decode("%C3"), Err(PercentError::NotUtf8));
        assert_eq!(percent_decode("%FF"), Err(PercentError::NotUtf8));
    }

    #[test]
    fn the_router_knows_every_endpoint() {
        use Method::*;
        let name = |n: &str| Cow::Owned(n.to_owned());
        let cases: Vec<(Method, &str, Result<Route<'_>, RouteError>)> = vec![
            (Get, "/", Ok(Route::Dashboard)),
            (Get, "/metrics", Ok(Route::Metrics)),
            (Get, "/v1/ws", Ok(Route::FiberWebSocket)),
            (Get, "/ws", Ok(Route::FastApiWebSocket)),
            (Post, "/v1/topics", Ok(Route::V1CreateTopic)),
            (Get, "/v1/topics", Ok(Route::V1ListTopics)),
            (
                Get,
                "/v1/topics/orders.eu/subscribers",
                Ok(Route::V1TopicSubscribers {
                    name: Cow::Borrowed("orders.eu"),
                }),
            ),
            (
                Head,
                "/v1/topics/orders.eu/subscribers",
                Ok(Route::V1TopicSubscribers {
                    name: Cow::Borrowed("orders.eu"),
                }),
            ),
            (
                Post,
                "/v1/topics/orders.eu/subscribers",
                Err(RouteError::MethodNotAllowed { allow: "GET, HEAD" }),
            ),
            (Get, "/v1/topics//subscribers", Err(RouteError::NotFound)),
            (
                Delete,
                "/v1/topics/orders.eu",
                Ok(Route::V1DeleteTopic {
                    name: Cow::Borrowed("orders.eu"),
                }),
            ),
            (
                Delete,
                "/v1/topics/a%2Eb",
                Ok(Route::V1DeleteTopic { name: name("a.b") }),
            ),
            (Get, "/v1/health", Ok(Route::V1Health)),
            (Get, "/v1/stats", Ok(Route::V1Stats)),
            (Post, "/topics", Ok(Route::CreateTopic)),
            (Get, "/topics", Ok(Route::ListTopics)),
            (
                Delete,
                "/topics/x",
                Ok(Route::DeleteTopic {
                    name: Cow::Borrowed("x"),
                }),
            ),
            (Get, "/health", Ok(Route::Health)),
            (Get, "/stats", Ok(Route::Stats)),
            // HEAD wherever GET reads something
            (Head, "/", Ok(Route::Dashboard)),
            (Head, "/metrics", Ok(Route::Metrics)),
            (Head, "/v1/topics", Ok(Route::V1ListTopics)),
            (Head, "/v1/health", Ok(Route::V1Health)),
            (Head, "/v1/stats", Ok(Route::V1Stats)),
            (Head, "/topics", Ok(Route::ListTopics)),
            (Head, "/health", Ok(Route::Health)),
            (Head, "/stats", Ok(Route::Stats)),
            // 405 with the allowed methods
            (
                Post,
                "/",
                Err(RouteError::MethodNotAllowed { allow: "GET, HEAD" }),
            ),
            (
                Delete,
                "/metrics",
                Err(RouteError::MethodNotAllowed { allow: "GET, HEAD" }),
            ),
            (
                Post,
                "/ws",
                Err(RouteError::MethodNotAllowed { allow: "GET" }),
            ),
            // A HEAD is no upgrade.
            (
                Head,
                "/ws",
                Err(RouteError::MethodNotAllowed { allow: "GET" }),
            ),
            (
                Head,
                "/v1/ws",
                Err(RouteError::MethodNotAllowed { allow: "GET" }),
            ),
            (
                Put,
                "/v1/topics",
                Err(RouteError::MethodNotAllowed {
                    allow: "GET, HEAD, POST",
                }),
            ),
            (
                Delete,
                "/topics",
                Err(RouteError::MethodNotAllowed {
                    allow: "GET, HEAD, POST",
                }),
            ),
            (
                Get,
                "/v1/topics/x",
                Err(RouteError::MethodNotAllowed { allow: "DELETE" }),
            ),
            (
                Head,
                "/topics/x",
                Err(RouteError::MethodNotAllowed { allow: "DELETE" }),
            ),
            (
                Other,
                "/v1/stats",
                Err(RouteError::MethodNotAllowed { allow: "GET, HEAD" }),
            ),
            // 404
            (Get, "/nope", Err(RouteError::NotFound)),
            (Head, "/nope", Err(RouteError::NotFound)),
            (Get, "/v1", Err(RouteError::NotFound)),
            (Get, "/v1/", Err(RouteError::NotFound)),
            (Get, "/topics/", Err(RouteError::NotFound)),
            (Delete, "/topics/", Err(RouteError::NotFound)),
            (Delete, "/topics/a/b", Err(RouteError::NotFound)),
            (Get, "/health/", Err(RouteError::NotFound)),
            (Get, "/HEALTH", Err(RouteError::NotFound)),
            (Get, "", Err(RouteError::NotFound)),
            (Get, "*", Err(RouteError::NotFound)),
            // 400
            (
                Delete,
                "/topics/a%zz",
                Err(RouteError::BadPath(PercentError::BadEscape)),
            ),
            (
                Delete,
                "/v1/topics/%ff",
                Err(RouteError::BadPath(PercentError::NotUtf8)),
            ),
        ];
        for (method, path, expected) in cases {
            assert_eq!(route(method, path), expected, "{method:?} {path}");
        }
        assert_eq!(
            route(Get, "/v1/health").unwrap().dialect(),
            ApiDialect::Fiber
        );
        assert_eq!(route(Get, "/v1/ws").unwrap().dialect(), ApiDialect::Fiber);
        assert_eq!(
            route(Get, "/health").unwrap().dialect(),
            ApiDialect::FastApi
        );
        assert_eq!(route(Get, "/ws").unwrap().dialect(), ApiDialect::FastApi);
        assert_eq!(dialect_for_path("/v1/nope"), ApiDialect::Fiber);
        assert_eq!(dialect_for_path("/v10"), ApiDialect::FastApi);
    }

    fn text(out: &[u8]) -> &str {
        std::str::from_utf8(out).unwrap()
    }

    #[test]
    fn responses_are_encoded_byte_for_byte() {
        let mut out = Vec::new();
        encode_json_response(
            Status::CREATED,
            &serde_json::json!({"name": "a", "created": true}),
            ConnectionHeader::Default,
            &mut out,
        );
        assert_eq!(
            text(&out),
            "HTTP/1.1 201 Created\r\nServer: corebus\r\nContent-Type: application/json\r\n\
             Content-Length: 27\r\n\r\n{\"created\":true,\"name\":\"a\"}"
        );
        out.clear();
        encode_response(
            &ResponseHead::json(Status::NO_CONTENT, ConnectionHeader::KeepAlive),
            b"",
            &mut out,
        );
        assert_eq!(
            text(&out),
            "HTTP/1.1 204 No Content\r\nServer: corebus\r\nContent-Type: application/json\r\n\
             Connection: keep-alive\r\n\r\n"
        );
        out.clear();
        route(Method::Put, "/v1/topics")
            .unwrap_err()
            .encode_response("/v1/topics", ConnectionHeader::Default, &mut out);
        assert_eq!(
            text(&out),
            "HTTP/1.1 405 Method Not Allowed\r\nServer: corebus\r\nContent-Type: application/json\r\n\
             Allow: GET, HEAD, POST\r\nContent-Length: 30\r\n\r\n{\"error\":\"Method Not Allowed\"}"
        );
        out.clear();
        route(Method::Get, "/nope").unwrap_err().encode_response(
            "/nope",
            ConnectionHeader::Close,
            &mut out,
        );
        assert_eq!(
            text(&out),
            "HTTP/1.1 404 Not Found\r\nServer: corebus\r\nContent-Type: application/json\r\n\
             Connection: close\r\nContent-Length: 22\r\n\r\n{\"detail\":\"Not Found\"}"
        );
        out.clear();
        encode_error_response(
            ApiDialect::Fiber,
            Status::CONFLICT,
            "topic \"a\" exists",
            ConnectionHeader::Default,
            &mut out,
        );
        assert!(text(&out).ends_with("\r\n\r\n{\"error\":\"topic \\\"a\\\" exists\"}"));
        out.clear();
        encode_http_error(&refused_error(b"GET / HTTP/1.1\r\n\r\n"), &mut out);
        assert!(text(&out).starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text(&out).contains("\r\nConnection: close\r\n"));
        // What this module writes is one complete response to a parser.
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Response::new(&mut headers);
        assert!(parsed.parse(&out).unwrap().is_complete());
    }

    fn refused_error(bytes: &[u8]) -> HttpError {
        decode_request(bytes, &LIMITS).unwrap_err()
    }

    const UPGRADE: &[u8] =
        b"GET /v1/ws HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn the_rfc_handshake_is_accepted() {
        assert_eq!(
            websocket_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let head = head(UPGRADE);
        let key = validate_websocket_upgrade(&head).unwrap();
        let mut out = Vec::new();
        encode_switching_protocols(key, &mut out);
        assert_eq!(
            text(&out),
            "HTTP/1.1 101 Switching Protocols\r\nServer: corebus\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn bad_upgrades_are_refused_clearly() {
        let upgrade = std::str::from_utf8(UPGRADE).unwrap();
        let with = |from: &str, to: &str| {
            assert!(upgrade.contains(from), "{from}");
            upgrade.replacen(from, to, 1)
        };
        let cases: Vec<(String, u16)> = vec![
            (with("GET", "POST"), 405),
            (with("HTTP/1.1", "HTTP/1.0"), 400),
            (with("Upgrade: websocket\r\n", ""), 426),
            (with("Upgrade: websocket", "Upgrade: h2c"), 426),
            (with("keep-alive, Upgrade", "keep-alive"), 400),
            (
                with("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
                426,
            ),
            (with("Sec-WebSocket-Version: 13\r\n", ""), 426),
            (
                with("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
                400,
            ),
            (with("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ=="), 400),
            (with("dGhlIHNhbXBsZSBub25jZQ==", "not base64!"), 400),
            (
                with(
                    "Origin",
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin",
                ),
                400,
            ),
        ];
        for (request, status) in cases {
            let head = head(request.as_bytes());
            let error = validate_websocket_upgrade(&head).unwrap_err();
            assert_eq!(error.status.0, status, "{request}");
            let mut out = Vec::new();
            encode_upgrade_error(&error, head.path, &mut out);
            let response = text(&out);
            assert!(
                response.starts_with(&format!("HTTP/1.1 {status} ")),
                "{response}"
            );
            assert!(response.contains("\r\nConnection: close\r\n"));
            assert!(
                response.contains("{\"error\":"),
                "Fiber path, Fiber body: {response}"
            );
            if status == 426 {
                assert!(
                    response.contains("\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n")
                );
            }
            if status == 405 {
                assert!(response.contains("\r\nAllow: GET\r\n"));
            }
        }
        // Tokens are case-insensitive and may carry a version.
        let loose = with("Upgrade: websocket", "Upgrade: foo, WebSocket/13")
            .replace("keep-alive, Upgrade", "UPGRADE");
        assert!(validate_websocket_upgrade(&head(loose.as_bytes())).is_ok());
    }

    #[test]
    fn topic_creation_bodies() {
        assert_eq!(
            parse_create_topic_body(br#"{"name":"orders.eu","other":1}"#),
            Ok(CreateTopicBody {
                name: Cow::Borrowed("orders.eu"),
                presence: false,
            })
        );
        assert_eq!(
            parse_create_topic_body(br#" {"name":"a\u002eb"} "#),
            Ok(CreateTopicBody {
                name: Cow::Owned("a.b".to_owned()),
                presence: false,
            })
        );
        assert_eq!(
            parse_create_topic_body(br#"{"name":"p.q","presence":true}"#),
            Ok(CreateTopicBody {
                name: Cow::Borrowed("p.q"),
                presence: true,
            })
        );
        let refusals: &[(&[u8], u16, u16)] = &[
            (b"", 400, 422),
            (b"{", 400, 422),
            (b"\xff", 400, 422),
            (b"[]", 400, 422),
            (b"\"a\"", 400, 422),
            (b"{}", 400, 422),
            (br#"{"name":null}"#, 400, 422),
            (br#"{"name":5}"#, 400, 422),
            (br#"{"name":"a","name":"b"}"#, 400, 422),
            (br#"{"name":"a"} x"#, 400, 422),
            (br#"{"name":"a","presence":"yes"}"#, 400, 422),
            (br#"{"name":""}"#, 400, 400),
            (br#"{"name":"a b"}"#, 400, 400),
            (br#"{"name":"$sys.x"}"#, 400, 400),
            (br#"{"name":"a.*"}"#, 400, 400),
        ];
        for &(body, fiber, fastapi) in refusals {
            let error = parse_create_topic_body(body).unwrap_err();
            let shown = String::from_utf8_lossy(body);
            assert_eq!(error.status(ApiDialect::Fiber).0, fiber, "{shown}");
            assert_eq!(error.status(ApiDialect::FastApi).0, fastapi, "{shown}");
            assert!(!error.message().is_empty());
        }
    }

    /// Pieces that make heads close to valid ones, for the fuzz-ish property below.
    fn head_piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"GET / HTTP/1.1\r\n".to_vec()),
            Just(b"POST /topics HTTP/1.0\r\n".to_vec()),
            Just(b"Host: h\r\n".to_vec()),
            Just(b"Content-Length: 3\r\n".to_vec()),
            Just(b"Content-Length: 300\r\n".to_vec()),
            Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
            Just(b"Connection: close, upgrade\r\n".to_vec()),
            Just(b"Upgrade: websocket\r\n".to_vec()),
            Just(b"Sec-WebSocket-Version: 13\r\n".to_vec()),
            Just(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n".to_vec()),
            Just(b"Expect: 100-continue\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b"abc".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..8),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_request(&bytes, &LIMITS);
            let _ = decode_request(&bytes, &HttpLimits::default());
        }

        #[test]
        fn near_valid_heads_never_panic_and_prefixes_agree(
            pieces in proptest::collection::vec(head_piece(), 0..12),
        ) {
            let bytes = pieces.concat();
            let whole = decode_request(&bytes, &LIMITS);
            if let Ok(Some(request)) = whole {
                prop_assert!(request.len <= bytes.len());
                let _ = validate_websocket_upgrade(&request.head);
                // A complete request is incomplete in every proper prefix of it.
                for end in 0..request.len {
                    prop_assert_eq!(decode_request(&bytes[..end], &LIMITS), Ok(None));
                }
            }
            let _ = route(Method::Get, std::str::from_utf8(&bytes).unwrap_or("/"));
        }

        #[test]
        fn percent_decoding_inverts_encoding(text in "\\PC{0,20}") {
            let encoded: String = text.bytes().map(|b| format!("%{b:02X}")).collect();
            prop_assert_eq!(percent_decode(&encoded).unwrap(), text.as_str());
        }

        #[test]
        fn arbitrary_paths_route_without_panicking(path in "[/a-z%0-9.]{0,30}") {
            let _ = route(Method::Delete, &path);
            let _ = route(Method::Get, &path);
        }
    }
}
