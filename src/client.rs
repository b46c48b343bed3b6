//! The blocking Rust client for the native protocol (std sockets, no async runtime).
//!
//! One background reader thread per [`Client`] decodes everything the broker sends and routes
//! it: replies to the caller waiting for them (matched by request id), deliveries to their
//! [`Subscription`]'s bounded channel. A subscription that is not drained fills its channel,
//! the reader then stops reading, and the broker's slow-consumer policy takes over: the
//! client never buffers without bound and never drops silently.
//!
//! ```no_run
//! use corebus::client::Client;
//! let mut client = Client::connect("127.0.0.1:7070")?;
//! let mut subscription = client.subscribe("orders.*")?;
//! let seq = client.publish_confirmed("orders.created", b"{\"id\":1}")?;
//! let message = subscription.recv()?;
//! assert_eq!(message.seq, seq);
//! # Ok::<(), corebus::client::Error>(())
//! ```

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Select, Sender, TryRecvError};

use crate::error::ErrorCode;
use crate::protocol::native::{self, AckKind, Frame, PROTOCOL_VERSION};
use crate::protocol::subscribe_options::CONSUMER_NAME_BYTES_MAX;
pub use crate::protocol::subscribe_options::{AckSettings, Sharing, Start, SubscribeOptions};
use crate::protocol::topic::TOPIC_BYTES_MAX;
pub use crate::protocol::topic_options::TopicOptions;
use crate::protocol::CLIENT_NAME_BYTES_MAX;

/// Frames the client accepts from the broker: the broker's own limit is checked broker-side.
const FRAME_BYTES_MAX: usize = 256 * 1024 * 1024 + native::FRAME_OVERHEAD_MAX;
/// Deliveries buffered per subscription before the reader stops reading the socket.
pub const SUBSCRIPTION_BUFFER_DEFAULT: usize = 65_536;
/// Replies to the request the client is waiting for. It waits for one at a time, so few queue.
const REPLY_BUFFER: usize = 64;
/// Subscribe/unsubscribe registrations in flight to the reader; the reader drains them even
/// while it waits on a full subscription, and each caller waits for its reply, so few queue.
const CONTROL_BUFFER: usize = 256;
/// Errors of quiet publishes kept for [`Client::take_async_errors`]; older ones are counted.
const ASYNC_ERRORS_MAX: usize = 1024;

/// An error from the broker: its stable code and its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    /// The raw wire code; [`ServerError::code`] maps it to a known [`ErrorCode`].
    pub code_raw: u16,
    pub message: String,
}

impl ServerError {
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code_raw)
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code() {
            Some(code) => write!(f, "{code}: {}", self.message),
            None => write!(f, "error {}: {}", self.code_raw, self.message),
        }
    }
}

#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    /// The broker refused the command.
    Server(ServerError),
    /// No reply (or message) within the timeout.
    Timeout,
    /// The connection is gone; the broker's last connection-level error, if it sent one.
    Closed(Option<ServerError>),
    /// The broker sent something this client does not understand.
    Protocol(String),
    /// The broker ended the subscription (its topic was deleted): nothing more will come.
    Ended(ServerError),
    /// Refused by the client before anything was sent, with the code the broker gives the
    /// same mistake (`BAD_TOPIC`, `MESSAGE_TOO_LARGE`, `UNSUPPORTED_OPTION`): input the wire
    /// format cannot carry. Nothing a caller passes makes the client panic.
    Invalid(ServerError),
}

impl Error {
    /// The broker's error code, when the broker refused the command or closed with one.
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server(e) | Error::Closed(Some(e)) | Error::Ended(e) | Error::Invalid(e) => {
                e.code()
            }
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "i/o error: {e}"),
            Error::Server(e) => write!(f, "broker refused: {e}"),
            Error::Timeout => f.write_str("timed out"),
            Error::Closed(Some(e)) => write!(f, "connection closed by the broker: {e}"),
            Error::Closed(None) => f.write_str("connection closed"),
            Error::Protocol(e) => write!(f, "protocol error: {e}"),
            Error::Ended(e) => write!(f, "subscription ended by the broker: {e}"),
            Error::Invalid(e) => write!(f, "not sent: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn invalid(code: ErrorCode, message: String) -> Error {
    Error::Invalid(ServerError {
        code_raw: code.as_u16(),
        message,
    })
}

/// A topic, pattern or reply topic the frame's one-byte length can carry. The broker checks
/// the naming rules; this checks only what would not fit on the wire.
fn check_topic_length(what: &str, name: &str) -> Result<()> {
    if name.len() > TOPIC_BYTES_MAX {
        return Err(invalid(
            ErrorCode::BadTopic,
            format!(
                "{what} is {} bytes; names are at most {TOPIC_BYTES_MAX} bytes",
                name.len()
            ),
        ));
    }
    Ok(())
}

fn check_options(options: &SubscribeOptions) -> Result<()> {
    let name = match &options.sharing {
        Sharing::None => return Ok(()),
        Sharing::Consumer(name) | Sharing::Group(name) => name,
    };
    if name.len() > CONSUMER_NAME_BYTES_MAX {
        return Err(invalid(
            ErrorCode::UnsupportedOption,
            format!(
                "consumer or group name is {} bytes; at most {CONSUMER_NAME_BYTES_MAX}",
                name.len()
            ),
        ));
    }
    Ok(())
}

/// A message delivered to a subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub topic: String,
    /// The topic's sequence number (1, 2, 3, ... per topic).
    pub seq: u64,
    /// When the broker accepted the publish, in Unix nanoseconds.
    pub timestamp_ns: u64,
    /// 1 on first delivery.
    pub delivery_count: u16,
    pub reply_to: Option<String>,
    /// The message's headers (native v4), in the publisher's order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Vec<u8>,
}

impl Delivery {
    /// Every header, in the publisher's order (empty before protocol v4).
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The value of header `name` (ASCII case-insensitive), if the message has it.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_slice())
    }
}

enum Event {
    Message(Delivery),
    /// The broker dropped this many messages for the subscription (`drop-oldest`).
    Dropped(u64),
    /// A replay reached back past what the topic retains.
    Gap(Gap),
    /// The broker ended the subscription.
    Ended(ServerError),
}

enum Reply {
    Ok { request_id: u32, data: Vec<u8> },
    Err { request_id: u32, error: ServerError },
}

/// Why the connection ended, set once by the reader thread before it lets go of every
/// channel, so whoever then finds a channel disconnected can read the reason (even when the
/// channel was full at the time, which is exactly when a slow consumer is cut).
type CloseReason = Arc<OnceLock<Option<ServerError>>>;

enum ReaderControl {
    Register { sub_id: u32, events: Sender<Event> },
    Unregister { sub_id: u32 },
}

/// Where a topic stood when a subscription took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicPosition {
    /// Identifies the topic's incarnation; it changes when the broker restarts.
    pub epoch: u64,
    pub last_seq: u64,
}

impl TopicPosition {
    /// The 16-byte OK data of an exact SUBSCRIBE or a CREATE_TOPIC.
    fn decode(data: &[u8]) -> Option<TopicPosition> {
        let epoch = data.get(0..8)?.try_into().ok()?;
        let last_seq = data.get(8..16)?.try_into().ok()?;
        Some(TopicPosition {
            epoch: u64::from_be_bytes(epoch),
            last_seq: u64::from_be_bytes(last_seq),
        })
    }
}

/// What the broker said about itself in the handshake.
#[derive(Clone, Copy, Debug)]
pub struct ServerInfo {
    pub version: u16,
    /// The shard that accepted this connection.
    pub shard: u16,
    pub message_bytes_max: u32,
}

/// Settings for [`Client::connect_with`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub name: String,
    pub request_timeout: Duration,
    pub subscription_buffer: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            name: format!("corebus-rust/{}", env!("CARGO_PKG_VERSION")),
            request_timeout: Duration::from_secs(10),
            subscription_buffer: SUBSCRIPTION_BUFFER_DEFAULT,
        }
    }
}

pub struct Client {
    stream: TcpStream,
    encode_buf: Vec<u8>,
    next_request_id: u32,
    next_sub_id: u32,
    replies: Receiver<Reply>,
    /// The request id the client is waiting on (0: none); only its reply is queued for it.
    awaited: Arc<AtomicU32>,
    /// Refusals of quiet publishes and acks, which nobody waits for, so the reader never
    /// blocks on them; a full queue counts them in `async_errors_lost` instead.
    async_errors_rx: Receiver<ServerError>,
    async_errors_lost: Arc<AtomicU64>,
    /// `None` once the client is closing, which releases a reader blocked on a full
    /// subscription.
    control: Option<Sender<ReaderControl>>,
    close_reason: CloseReason,
    /// The private reply topic of [`Client::request`], subscribed on first use.
    inbox: Option<Inbox>,
    reader: Option<JoinHandle<()>>,
    info: ServerInfo,
    options: ClientOptions,
}

struct Inbox {
    prefix: String,
    subscription: Subscription,
    next_token: u64,
}

/// A broker's notice that messages a subscription asked for were evicted before it got them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    /// The topic they were published to (empty from a broker that does not name it).
    pub topic: String,
    pub missed: u64,
    /// The sequence number the subscription's messages on `topic` continue from.
    pub resume_seq: u64,
}

/// A live subscription. Dropping it does not unsubscribe; call [`Client::unsubscribe`].
pub struct Subscription {
    sub_id: u32,
    position: Option<TopicPosition>,
    subject: String,
    events: Receiver<Event>,
    dropped: u64,
    missed: u64,
    last_gap: Option<Gap>,
    ended: Option<ServerError>,
    close_reason: CloseReason,
}

impl Client {
    pub fn connect(addr: impl ToSocketAddrs) -> Result<Client> {
        Client::connect_with(addr, ClientOptions::default())
    }

    pub fn connect_with(addr: impl ToSocketAddrs, options: ClientOptions) -> Result<Client> {
        if options.name.len() > CLIENT_NAME_BYTES_MAX {
            return Err(invalid(
                ErrorCode::BadFrame,
                format!(
                    "client name is {} bytes; at most {CLIENT_NAME_BYTES_MAX}",
                    options.name.len()
                ),
            ));
        }
        let mut stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let mut encode_buf = Vec::with_capacity(4096);
        Frame::Hello {
            request_id: 1,
            version: PROTOCOL_VERSION,
            client_name: options.name.as_bytes(),
        }
        .encode(&mut encode_buf);
        stream.write_all(&encode_buf)?;

        // The handshake is read here, before the reader thread exists; any bytes after the
        // reply are handed to the reader.
        stream.set_read_timeout(Some(options.request_timeout))?;
        let mut buffer = Vec::with_capacity(64 * 1024);
        let info = loop {
            match native::decode(&buffer, FRAME_BYTES_MAX) {
                Ok(Some((frame, len))) => {
                    let info = match frame {
                        Frame::Ok { data, .. } if data.len() >= 8 => ServerInfo {
                            version: u16::from_be_bytes([data[0], data[1]]),
                            shard: u16::from_be_bytes([data[2], data[3]]),
                            message_bytes_max: u32::from_be_bytes([
                                data[4], data[5], data[6], data[7],
                            ]),
                        },
                        Frame::Err { code, message, .. } => {
                            return Err(Error::Server(server_error(code, message)))
                        }
                        other => {
                            return Err(Error::Protocol(format!(
                                "unexpected handshake reply {:?}",
                                other.opcode()
                            )))
                        }
                    };
                    buffer.drain(..len);
                    break info;
                }
                Ok(None) => {
                    let mut chunk = [0u8; 4096];
                    let n = stream.read(&mut chunk).map_err(timeout_or_io)?;
                    if n == 0 {
                        return Err(Error::Closed(None));
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                }
                Err(e) => return Err(Error::Protocol(format!("{e:?}"))),
            }
        };
        stream.set_read_timeout(None)?;

        let (reply_tx, replies) = crossbeam_channel::bounded(REPLY_BUFFER);
        let (async_errors_tx, async_errors_rx) = crossbeam_channel::bounded(ASYNC_ERRORS_MAX);
        let awaited = Arc::new(AtomicU32::new(0));
        let async_errors_lost = Arc::new(AtomicU64::new(0));
        let (reader_awaited, reader_errors_lost) = (awaited.clone(), async_errors_lost.clone());
        let (control, control_rx) = crossbeam_channel::bounded(CONTROL_BUFFER);
        let close_reason = CloseReason::default();
        let reader_close_reason = close_reason.clone();
        let reader_stream = stream.try_clone()?;
        let reader = std::thread::Builder::new()
            .name("corebus-client-reader".into())
            .spawn(move || {
                Reader {
                    stream: reader_stream,
                    buffer,
                    replies: reply_tx,
                    awaited: reader_awaited,
                    async_errors: async_errors_tx,
                    async_errors_lost: reader_errors_lost,
                    control: control_rx,
                    subscriptions: HashMap::new(),
                    last_error: None,
                    close_reason: reader_close_reason,
                }
                .run()
            })?;
        Ok(Client {
            stream,
            encode_buf,
            next_request_id: 2,
            next_sub_id: 1,
            replies,
            awaited,
            async_errors_rx,
            async_errors_lost,
            control: Some(control),
            close_reason,
            inbox: None,
            reader: Some(reader),
            info,
            options,
        })
    }

    pub fn server_info(&self) -> ServerInfo {
        self.info
    }

    fn request_id(&mut self) -> u32 {
        let id = self.next_request_id;
        // 0 is reserved for connection-level frames.
        self.next_request_id = self.next_request_id.checked_add(1).unwrap_or(1);
        id
    }

    fn send(&mut self, frame: Frame<'_>) -> Result<()> {
        if let Some(reason) = self.close_reason.get() {
            return Err(Error::Closed(reason.clone()));
        }
        self.encode_buf.clear();
        frame.encode(&mut self.encode_buf);
        self.stream.write_all(&self.encode_buf)?;
        Ok(())
    }

    /// Sends a request and waits for its reply. The reader is told which id is awaited before
    /// the request leaves, so the reply cannot arrive unrecognised.
    fn call(&mut self, request_id: u32, frame: Frame<'_>) -> Result<Vec<u8>> {
        self.awaited.store(request_id, Ordering::Release);
        let result = self.send(frame).and_then(|()| self.wait_reply(request_id));
        self.awaited.store(0, Ordering::Release);
        result
    }

    fn wait_reply(&mut self, request_id: u32) -> Result<Vec<u8>> {
        let deadline = Instant::now() + self.options.request_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = match self.replies.recv_timeout(left) {
                Ok(reply) => reply,
                Err(RecvTimeoutError::Timeout) => return Err(Error::Timeout),
                Err(RecvTimeoutError::Disconnected) => return Err(self.closed_error()),
            };
            match reply {
                Reply::Ok {
                    request_id: id,
                    data,
                } if id == request_id => return Ok(data),
                Reply::Err {
                    request_id: id,
                    error,
                } if id == request_id => return Err(Error::Server(error)),
                // A reply to an earlier request that timed out.
                Reply::Ok { .. } | Reply::Err { .. } => {}
            }
        }
    }

    /// Publishes without waiting (a quiet publish: the broker answers only if it refuses it;
    /// such refusals are collected by [`Client::take_async_errors`]).
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<()> {
        self.check_publish(topic, None, payload)?;
        let request_id = self.request_id();
        self.send(Frame::Publish {
            request_id,
            quiet: true,
            topic: topic.as_bytes(),
            reply_to: None,
            headers: &[],
            payload,
        })
    }

    /// Publishes and waits for the broker to sequence the message; returns its sequence number.
    pub fn publish_confirmed(&mut self, topic: &str, payload: &[u8]) -> Result<u64> {
        self.publish_confirmed_frame(topic, &[], payload)
    }

    /// A confirmed PUBLISH with a header block (possibly empty); returns the sequence number.
    fn publish_confirmed_frame(
        &mut self,
        topic: &str,
        headers: &[u8],
        payload: &[u8],
    ) -> Result<u64> {
        self.check_publish(topic, None, payload)?;
        let request_id = self.request_id();
        let data = self.call(
            request_id,
            Frame::Publish {
                request_id,
                quiet: false,
                topic: topic.as_bytes(),
                reply_to: None,
                headers,
                payload,
            },
        )?;
        let seq: [u8; 8] = data
            .get(..8)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| Error::Protocol("publish confirm without a sequence".into()))?;
        Ok(u64::from_be_bytes(seq))
    }

    /// Publishes a message with headers (ordered name/value pairs; protocol v4) and waits
    /// for its sequence number. Names are 1 to 255 bytes of visible ASCII without `:`.
    pub fn publish_with_headers(
        &mut self,
        topic: &str,
        headers: &[(&str, &[u8])],
        payload: &[u8],
    ) -> Result<u64> {
        if self.info.version < 4 {
            return Err(Error::Protocol(
                "the broker speaks a protocol version without headers (v4 needed)".into(),
            ));
        }
        let mut block = Vec::new();
        for (name, value) in headers {
            native::put_header(&mut block, name.as_bytes(), value)
                .map_err(|reason| Error::Protocol(format!("header {name:?}: {reason}")))?;
        }
        if block.len() > usize::from(u16::MAX) {
            return Err(Error::Protocol("headers are above 65535 bytes".into()));
        }
        self.publish_confirmed_frame(topic, &block, payload)
    }

    /// Publishes with a reply topic, without waiting (quiet, like [`Client::publish`]).
    pub fn publish_with_reply(
        &mut self,
        topic: &str,
        payload: &[u8],
        reply_to: &str,
    ) -> Result<()> {
        self.check_publish(topic, Some(reply_to), payload)?;
        let request_id = self.request_id();
        self.send(Frame::Publish {
            request_id,
            quiet: true,
            topic: topic.as_bytes(),
            reply_to: Some(reply_to.as_bytes()),
            headers: &[],
            payload,
        })
    }

    /// Answers a message that named a reply topic. Returns `Ok(false)` if it named none.
    pub fn reply(&mut self, request: &Delivery, payload: &[u8]) -> Result<bool> {
        match &request.reply_to {
            Some(reply_to) => self.publish(reply_to, payload).map(|()| true),
            None => Ok(false),
        }
    }

    /// Request/reply: publishes `payload` to `topic` naming a private reply topic, and waits
    /// up to `timeout` for the first answer ([`Error::Timeout`] if nobody answers). The first
    /// request subscribes this client to its inbox (`_inbox.<random>.*`); later ones reuse it.
    pub fn request(&mut self, topic: &str, payload: &[u8], timeout: Duration) -> Result<Delivery> {
        self.check_publish(topic, None, payload)?;
        if self.inbox.is_none() {
            let prefix = format!("_inbox.{:016x}", rand::random::<u64>());
            let subscription = self.subscribe(&format!("{prefix}.*"))?;
            self.inbox = Some(Inbox {
                prefix,
                subscription,
                next_token: 0,
            });
        }
        let inbox = self.inbox.as_mut().expect("created above");
        inbox.next_token += 1;
        let reply_to = format!("{}.{}", inbox.prefix, inbox.next_token);
        self.publish_with_reply(topic, payload, &reply_to)?;
        let deadline = Instant::now() + timeout;
        let inbox = self.inbox.as_mut().expect("created above");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = inbox.subscription.recv_timeout(left)?;
            // Late answers to earlier requests that timed out are skipped.
            if answer.topic == reply_to {
                return Ok(answer);
            }
        }
    }

    /// Refusals of quiet publishes and acks received so far, oldest first, and how many more
    /// were not kept because 1,024 were already waiting to be taken.
    pub fn take_async_errors(&mut self) -> (Vec<ServerError>, u64) {
        let errors = self.async_errors_rx.try_iter().collect();
        (errors, self.async_errors_lost.swap(0, Ordering::AcqRel))
    }

    /// Subscribes to an exact topic or a pattern (`orders.*`, `metrics.>`). Returns once the
    /// broker has registered it: every message published after this returns is delivered.
    pub fn subscribe(&mut self, subject: &str) -> Result<Subscription> {
        self.subscribe_with(subject, SubscribeOptions::default())
    }

    /// Subscribes with options, e.g. starting in the topic's retained history:
    /// `SubscribeOptions { start: Start::LastN(100) }`. Replayed messages come first, then
    /// live ones, with no gap and no duplicate between them; if part of what was asked for was
    /// already evicted, [`Subscription::missed`] says how many.
    pub fn subscribe_with(
        &mut self,
        subject: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        check_topic_length("subscription topic", subject)?;
        check_options(&options)?;
        let sub_id = self.next_sub_id;
        self.next_sub_id += 1;
        let (events_tx, events) = crossbeam_channel::bounded(self.options.subscription_buffer);
        self.control_send(ReaderControl::Register {
            sub_id,
            events: events_tx,
        })?;
        let request_id = self.request_id();
        let mut encoded_options = Vec::new();
        options.encode(&mut encoded_options);
        let answer = self.call(
            request_id,
            Frame::Subscribe {
                request_id,
                sub_id,
                topic: subject.as_bytes(),
                options: &encoded_options,
            },
        );
        let data = match answer {
            Ok(data) => data,
            Err(e) => {
                let _ = self.control_send(ReaderControl::Unregister { sub_id });
                return Err(e);
            }
        };
        let position = TopicPosition::decode(&data);
        Ok(Subscription {
            sub_id,
            position,
            subject: subject.to_owned(),
            events,
            dropped: 0,
            missed: 0,
            last_gap: None,
            ended: None,
            close_reason: self.close_reason.clone(),
        })
    }

    /// Creates a topic explicitly, with its own replay limits where `options` gives them (the
    /// broker's defaults otherwise). An explicitly created topic is never reclaimed for being
    /// idle. Fails with `TOPIC_EXISTS` if the topic exists, `OPTION_OUT_OF_RANGE` if a limit is
    /// above the broker's cap, `BAD_TOPIC` for a pattern, a reserved or an inbox name.
    pub fn create_topic(&mut self, topic: &str, options: TopicOptions) -> Result<TopicPosition> {
        check_topic_length("topic", topic)?;
        let request_id = self.request_id();
        let mut encoded_options = Vec::new();
        options.encode(&mut encoded_options);
        let data = self.call(
            request_id,
            Frame::CreateTopic {
                request_id,
                topic: topic.as_bytes(),
                options: &encoded_options,
            },
        )?;
        TopicPosition::decode(&data).ok_or_else(|| {
            Error::Protocol("CREATE_TOPIC's OK did not carry the topic's position".into())
        })
    }

    /// Deletes a topic with its retained messages, durable consumers and groups; every exact
    /// subscription to it ends ([`Error::Ended`] with `TOPIC_DELETED`). Fails with
    /// `TOPIC_NOT_FOUND` if it does not exist.
    pub fn delete_topic(&mut self, topic: &str) -> Result<()> {
        check_topic_length("topic", topic)?;
        let request_id = self.request_id();
        self.call(
            request_id,
            Frame::DeleteTopic {
                request_id,
                topic: topic.as_bytes(),
            },
        )
        .map(drop)
    }

    /// The broker's stats, gathered from every shard: counters (broker-wide and per shard),
    /// topics with their consumers and retained ranges, in-broker latency, slow consumers.
    /// Needs protocol v4 (STATS).
    pub fn stats(&mut self) -> Result<Stats> {
        self.stats_request(b"")
    }

    /// The stats of one topic and who receives its messages: every subscription on every
    /// shard, exact, pattern or durable consumer (presence). `TOPIC_NOT_FOUND` if it does
    /// not exist.
    pub fn topic_stats(&mut self, topic: &str) -> Result<TopicReport> {
        let stats = self.stats_with_subscribers(topic)?;
        let info = stats.topics.get(topic).cloned().unwrap_or_default();
        Ok(TopicReport {
            name: topic.to_owned(),
            info,
            subscribers: stats.subscribers,
            partial: stats.partial,
        })
    }

    /// [`Client::stats`] with `topic` named: the answer's `topic` and `subscribers` are
    /// filled in too.
    pub fn stats_with_subscribers(&mut self, topic: &str) -> Result<Stats> {
        check_topic_length("topic", topic)?;
        self.stats_request(topic.as_bytes())
    }

    fn stats_request(&mut self, topic: &[u8]) -> Result<Stats> {
        if self.info.version < 4 {
            return Err(Error::Protocol(
                "the broker speaks a protocol version without STATS (v4 needed)".into(),
            ));
        }
        let request_id = self.request_id();
        let data = self.call(request_id, Frame::Stats { request_id, topic })?;
        serde_json::from_slice(&data)
            .map_err(|e| Error::Protocol(format!("a STATS answer that is not its JSON: {e}")))
    }

    pub fn unsubscribe(&mut self, subscription: Subscription) -> Result<()> {
        if subscription.ended.is_some() {
            // The broker ended it already (ENDED): nothing left to undo.
            return Ok(());
        }
        let sub_id = subscription.sub_id;
        // Unregister first so a reader blocked on this subscription's full buffer lets go.
        let _ = self.control_send(ReaderControl::Unregister { sub_id });
        let request_id = self.request_id();
        self.call(request_id, Frame::Unsubscribe { request_id, sub_id })
            .map(drop)
    }

    /// Acknowledges one message of an exact-topic subscription made with `acks`
    /// (at-least-once). Acks are not answered unless they fail; [`Client::take_async_errors`]
    /// collects failures. A pattern group needs [`Client::ack_message`], which names the topic.
    pub fn ack(&mut self, subscription: &Subscription, seq: u64) -> Result<()> {
        self.send_ack(subscription, (b"", seq), AckKind::Single)
    }

    /// Acknowledges every in-flight message of the subscription up to and including `seq`.
    pub fn ack_through(&mut self, subscription: &Subscription, seq: u64) -> Result<()> {
        self.send_ack(subscription, (b"", seq), AckKind::Cumulative)
    }

    /// Negative acknowledgement: the message is redelivered at once.
    pub fn nack(&mut self, subscription: &Subscription, seq: u64) -> Result<()> {
        self.send_ack(subscription, (b"", seq), AckKind::Nack)
    }

    /// Acknowledges a delivered message by its topic and sequence number: works for every
    /// acked subscription, and is the way to ack in a pattern group (`orders.*`), whose
    /// topics number their messages independently.
    pub fn ack_message(&mut self, subscription: &Subscription, message: &Delivery) -> Result<()> {
        let at = (message.topic.as_bytes(), message.seq);
        self.send_ack(subscription, at, AckKind::Single)
    }

    /// Acknowledges every in-flight message of the subscription on `message`'s topic up to and
    /// including it.
    pub fn ack_through_message(
        &mut self,
        subscription: &Subscription,
        message: &Delivery,
    ) -> Result<()> {
        let at = (message.topic.as_bytes(), message.seq);
        self.send_ack(subscription, at, AckKind::Cumulative)
    }

    /// Negative acknowledgement of a delivered message: it is redelivered at once.
    pub fn nack_message(&mut self, subscription: &Subscription, message: &Delivery) -> Result<()> {
        let at = (message.topic.as_bytes(), message.seq);
        self.send_ack(subscription, at, AckKind::Nack)
    }

    fn send_ack(
        &mut self,
        subscription: &Subscription,
        (topic, seq): (&[u8], u64),
        kind: AckKind,
    ) -> Result<()> {
        if topic.len() > TOPIC_BYTES_MAX {
            // Only a hand-made Delivery can get here: the broker never sends such a name.
            return Err(invalid(
                ErrorCode::BadTopic,
                format!(
                    "topic is {} bytes; names are at most {TOPIC_BYTES_MAX} bytes",
                    topic.len()
                ),
            ));
        }
        let request_id = self.request_id();
        self.send(Frame::Ack {
            request_id,
            sub_id: subscription.sub_id,
            seq,
            kind,
            topic,
        })
    }

    /// What a publish frame must satisfy before it is encoded: names that fit their length
    /// byte and a payload within the broker's `message_bytes_max` (from the handshake), which
    /// also keeps the frame within its `u32` length field.
    fn check_publish(&self, topic: &str, reply_to: Option<&str>, payload: &[u8]) -> Result<()> {
        check_topic_length("topic", topic)?;
        if let Some(reply_to) = reply_to {
            check_topic_length("reply topic", reply_to)?;
        }
        let max = (self.info.message_bytes_max as usize)
            .min(u32::MAX as usize - native::FRAME_OVERHEAD_MAX - native::HEADER_LEN);
        if payload.len() > max {
            return Err(invalid(
                ErrorCode::MessageTooLarge,
                format!(
                    "payload is {} bytes; the broker accepts at most {max} (--message-bytes-max)",
                    payload.len()
                ),
            ));
        }
        Ok(())
    }

    /// Round trip to the broker.
    pub fn ping(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let request_id = self.request_id();
        self.call(request_id, Frame::Ping { request_id })?;
        Ok(started.elapsed())
    }

    /// Closes the connection and waits for the reader thread.
    pub fn close(mut self) -> Result<()> {
        self.shutdown();
        Ok(())
    }

    fn control_send(&self, control: ReaderControl) -> Result<()> {
        self.control
            .as_ref()
            .and_then(|sender| sender.send(control).ok())
            .ok_or_else(|| self.closed_error())
    }

    fn closed_error(&self) -> Error {
        Error::Closed(self.close_reason.get().cloned().flatten())
    }

    fn shutdown(&mut self) {
        // Dropping the control channel first releases a reader waiting on a full subscription.
        self.control = None;
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Subscription {
    pub fn sub_id(&self) -> u32 {
        self.sub_id
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// For an exact topic: its epoch and the last sequence number published before the
    /// subscription took effect (live messages start after it). `None` for patterns.
    pub fn position(&self) -> Option<TopicPosition> {
        self.position
    }

    /// Messages the broker dropped for this subscription so far (`drop-oldest` policy).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Messages a replay asked for that the topic no longer retained (gap notices).
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The most recent gap notice, which names its topic (useful for a pattern group).
    pub fn last_gap(&self) -> Option<&Gap> {
        self.last_gap.as_ref()
    }

    pub fn recv(&mut self) -> Result<Delivery> {
        self.still_on()?;
        loop {
            let event = self.events.recv().map_err(|_| self.closed_error())?;
            if let Some(delivery) = self.absorb(event)? {
                return Ok(delivery);
            }
        }
    }

    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Delivery> {
        self.still_on()?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = match self.events.recv_timeout(left) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => return Err(Error::Timeout),
                Err(RecvTimeoutError::Disconnected) => return Err(self.closed_error()),
            };
            if let Some(delivery) = self.absorb(event)? {
                return Ok(delivery);
            }
        }
    }

    /// A message if one is already here.
    pub fn try_recv(&mut self) -> Result<Option<Delivery>> {
        self.still_on()?;
        loop {
            let event = match self.events.try_recv() {
                Ok(event) => event,
                Err(TryRecvError::Empty) => return Ok(None),
                Err(TryRecvError::Disconnected) => return Err(self.closed_error()),
            };
            if let Some(delivery) = self.absorb(event)? {
                return Ok(Some(delivery));
            }
        }
    }

    /// Once the broker ended the subscription, every receive says so.
    fn still_on(&self) -> Result<()> {
        match &self.ended {
            Some(error) => Err(Error::Ended(error.clone())),
            None => Ok(()),
        }
    }

    fn absorb(&mut self, event: Event) -> Result<Option<Delivery>> {
        match event {
            Event::Message(delivery) => Ok(Some(delivery)),
            Event::Dropped(count) => {
                self.dropped += count;
                Ok(None)
            }
            Event::Ended(error) => {
                self.ended = Some(error.clone());
                Err(Error::Ended(error))
            }
            Event::Gap(gap) => {
                debug_assert!(gap.resume_seq > 0, "sequences start at 1");
                self.missed += gap.missed;
                self.last_gap = Some(gap);
                Ok(None)
            }
        }
    }

    fn closed_error(&self) -> Error {
        Error::Closed(self.close_reason.get().cloned().flatten())
    }
}

impl Iterator for Subscription {
    type Item = Delivery;

    /// Blocks for the next message; ends when the connection closes.
    fn next(&mut self) -> Option<Delivery> {
        self.recv().ok()
    }
}

struct Reader {
    stream: TcpStream,
    buffer: Vec<u8>,
    replies: Sender<Reply>,
    awaited: Arc<AtomicU32>,
    async_errors: Sender<ServerError>,
    async_errors_lost: Arc<AtomicU64>,
    control: Receiver<ReaderControl>,
    subscriptions: HashMap<u32, Sender<Event>>,
    last_error: Option<ServerError>,
    close_reason: CloseReason,
}

impl Reader {
    fn run(mut self) {
        let mut chunk = vec![0u8; 64 * 1024];
        'read: loop {
            loop {
                let (frame, len) = match native::decode(&self.buffer, FRAME_BYTES_MAX) {
                    Ok(Some(decoded)) => decoded,
                    Ok(None) => break,
                    Err(_) => break 'read,
                };
                let routed = route_frame(frame);
                self.buffer.drain(..len);
                if !self.dispatch(routed) {
                    break 'read;
                }
            }
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
        // Set before the channels are dropped (with `self`), so the reason is there for
        // whoever sees them disconnect.
        let _ = self.close_reason.set(self.last_error.take());
    }

    fn apply_control(&mut self) {
        while let Ok(control) = self.control.try_recv() {
            self.apply(control);
        }
    }

    fn apply(&mut self, control: ReaderControl) {
        match control {
            ReaderControl::Register { sub_id, events } => {
                self.subscriptions.insert(sub_id, events);
            }
            ReaderControl::Unregister { sub_id } => {
                self.subscriptions.remove(&sub_id);
            }
        }
    }

    /// Returns false when the client is gone and reading should stop.
    fn dispatch(&mut self, routed: Routed) -> bool {
        self.apply_control();
        match routed {
            Routed::Reply(reply) => {
                let id = match &reply {
                    Reply::Ok { request_id, .. } | Reply::Err { request_id, .. } => *request_id,
                };
                if id == self.awaited.load(Ordering::Acquire) {
                    return self.replies.send(reply).is_ok();
                }
                // Nobody waits for it: a refused quiet publish or ack, or a late reply.
                if let Reply::Err { error, .. } = reply {
                    if self.async_errors.try_send(error).is_err() {
                        self.async_errors_lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
                true
            }
            Routed::ConnectionError(error) => {
                self.last_error = Some(error);
                true
            }
            Routed::Event(sub_id, event) => {
                let ended = matches!(event, Event::Ended(_));
                self.deliver(sub_id, event);
                if ended {
                    // The broker sends nothing after ENDED; the id is free again.
                    self.subscriptions.remove(&sub_id);
                }
                true
            }
            Routed::Ignored => true,
        }
    }

    /// Waits for room in the subscription's buffer, unless it is unsubscribed meanwhile.
    fn deliver(&mut self, sub_id: u32, event: Event) {
        loop {
            let Some(events) = self.subscriptions.get(&sub_id).cloned() else {
                return;
            };
            let mut select = Select::new();
            let send_index = select.send(&events);
            select.recv(&self.control);
            let operation = select.select();
            if operation.index() == send_index {
                if operation.send(&events, event).is_err() {
                    // The Subscription was dropped without unsubscribing.
                    self.subscriptions.remove(&sub_id);
                }
                return;
            }
            match operation.recv(&self.control) {
                Ok(control) => self.apply(control),
                // The client is gone: nobody will read this subscription either.
                Err(_) => return,
            }
        }
    }
}

enum Routed {
    Reply(Reply),
    ConnectionError(ServerError),
    Event(u32, Event),
    Ignored,
}

fn route_frame(frame: Frame<'_>) -> Routed {
    match frame {
        Frame::Ok { request_id, data } => Routed::Reply(Reply::Ok {
            request_id,
            data: data.to_vec(),
        }),
        Frame::Pong { request_id } => Routed::Reply(Reply::Ok {
            request_id,
            data: Vec::new(),
        }),
        Frame::Err {
            request_id: 0,
            code,
            message,
        } => Routed::ConnectionError(server_error(code, message)),
        Frame::Err {
            request_id,
            code,
            message,
        } => Routed::Reply(Reply::Err {
            request_id,
            error: server_error(code, message),
        }),
        Frame::Msg {
            sub_id,
            seq,
            timestamp_ns,
            delivery_count,
            topic,
            reply_to,
            headers,
            payload,
        } => Routed::Event(
            sub_id,
            Event::Message(Delivery {
                topic: String::from_utf8_lossy(topic).into_owned(),
                seq,
                timestamp_ns,
                delivery_count,
                reply_to: reply_to.map(|r| String::from_utf8_lossy(r).into_owned()),
                headers: native::headers(headers)
                    .map_while(|entry| entry.ok())
                    .map(|(name, value)| {
                        (String::from_utf8_lossy(name).into_owned(), value.to_vec())
                    })
                    .collect(),
                payload: payload.to_vec(),
            }),
        ),
        Frame::Dropped { sub_id, count } => Routed::Event(sub_id, Event::Dropped(count)),
        Frame::Gap {
            sub_id,
            missed,
            resume_seq,
            topic,
        } => Routed::Event(
            sub_id,
            Event::Gap(Gap {
                topic: String::from_utf8_lossy(topic).into_owned(),
                missed,
                resume_seq,
            }),
        ),
        Frame::Ended {
            sub_id,
            code,
            message,
        } => Routed::Event(sub_id, Event::Ended(server_error(code, message))),
        // Client-to-server opcodes never come from a broker; ignore rather than guess.
        Frame::Hello { .. }
        | Frame::Publish { .. }
        | Frame::Subscribe { .. }
        | Frame::Unsubscribe { .. }
        | Frame::Ack { .. }
        | Frame::CreateTopic { .. }
        | Frame::DeleteTopic { .. }
        | Frame::Stats { .. }
        | Frame::Ping { .. } => Routed::Ignored,
    }
}

fn server_error(code: u16, message: &[u8]) -> ServerError {
    ServerError {
        code_raw: code,
        message: String::from_utf8_lossy(message).into_owned(),
    }
}

fn timeout_or_io(e: io::Error) -> Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::Timeout,
        _ => Error::Io(e),
    }
}

/// The broker's answer to STATS (see the protocol's STATS section): what
/// [`Client::stats`] returns. Fields a newer broker adds are ignored; fields an older one
/// lacks are left at their default.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct Stats {
    pub uptime_seconds: u64,
    /// The broker's Unix time when it put the answer together, in milliseconds: rates
    /// between two answers are measured by this clock.
    pub time_ms: u64,
    /// The shards that answered.
    pub shards: Vec<u16>,
    /// A shard did not answer in time and is left out.
    pub partial: bool,
    #[serde(flatten)]
    pub counters: Counters,
    pub connections: u64,
    pub connections_by_protocol: std::collections::BTreeMap<String, u64>,
    pub by_shard: Vec<ShardPart>,
    /// By name.
    pub topics: std::collections::BTreeMap<String, TopicInfo>,
    pub latency: Latencies,
    /// Connections holding more than half their outbound limit.
    pub slow_consumers: Vec<ConnectionInfo>,
    /// With [`Client::topic_stats`]: the topic asked about and its subscriptions.
    pub topic: Option<String>,
    pub subscribers: Vec<SubscriberInfo>,
}

/// Message counters, broker-wide or of one shard.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct Counters {
    /// Sequenced by the topics' owners.
    pub published: u64,
    /// Written to subscribers' sockets.
    pub delivered: u64,
    pub dropped: u64,
    pub undelivered: u64,
    pub slow_consumer_disconnects: u64,
    pub dead_lettered: u64,
    pub acks: u64,
    pub nacks: u64,
    pub redelivered: u64,
    pub rate_limited: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// One shard's counters.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct ShardPart {
    pub shard: u16,
    #[serde(flatten)]
    pub counters: Counters,
    pub connections: u64,
    /// Topics this shard owns.
    pub topics: u64,
}

/// One topic, as its owner shard reports it.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct TopicInfo {
    pub owner_shard: u16,
    /// Its last sequence number.
    pub messages: u64,
    /// Exact subscriptions on every shard.
    pub subscribers: u64,
    pub retained_messages: u64,
    pub retained_bytes: u64,
    /// The retained range, `first..=last` (0 and 0 when nothing is retained).
    pub retained_first_seq: u64,
    pub retained_last_seq: u64,
    pub consumers: Vec<ConsumerInfo>,
}

/// A durable consumer or group of a topic.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct ConsumerInfo {
    pub name: String,
    pub group: bool,
    pub members: u64,
    pub in_flight: u64,
    /// Messages not acknowledged yet (not delivered yet, for a consumer without acks).
    pub lag: u64,
}

/// In-broker latency: publish to socket write, and a durable consumer's ack round trip.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct Latencies {
    pub delivery: LatencySummary,
    pub ack: LatencySummary,
    pub by_shard: Vec<ShardLatencies>,
}

/// One shard's latencies.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct ShardLatencies {
    pub shard: u16,
    pub delivery: LatencySummary,
    pub ack: LatencySummary,
}

/// Samples since start and their quantiles, in microseconds.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// A connection as the broker's stats show it.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct ConnectionInfo {
    pub shard: u16,
    /// Its id on its shard (`index.generation`, as in the broker's logs).
    pub connection: String,
    /// HELLO's client name (native), `CLIENT SETNAME`'s (Redis), the `client_id` (WebSocket:
    /// the one FastAPI's dialect hands out, Go/Fiber's first subscribe's), or empty.
    pub client_name: String,
    /// `native`, `http`, `websocket` or `resp`.
    pub protocol: String,
    pub peer: String,
    pub queued_bytes: u64,
}

/// One subscription that receives a topic's messages.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct SubscriberInfo {
    pub shard: u16,
    pub connection: String,
    pub client_name: String,
    pub protocol: String,
    pub peer: String,
    pub sub_id: u32,
    /// The topic itself, or the pattern that matched it.
    pub subject: String,
    /// The durable consumer or group it belongs to.
    pub consumer: Option<String>,
}

/// What [`Client::topic_stats`] returns.
#[derive(Clone, Debug, Default)]
pub struct TopicReport {
    pub name: String,
    pub info: TopicInfo,
    pub subscribers: Vec<SubscriberInfo>,
    /// A shard did not answer in time: its subscribers are missing.
    pub partial: bool,
}
