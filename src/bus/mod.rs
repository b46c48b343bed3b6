//! # The embedded bus: corebus inside your process, no sockets
//!
//! [`Bus::start`] runs the same shards as `corebus serve` in the calling process, with or
//! without network listeners. Each [`Publisher`] and each [`Subscription`] is one in-process
//! connection on a shard: one more connection kind beside native, HTTP, WebSocket and Redis,
//! served by the same topic, replay, consumer and group code. It talks to its shard over two
//! bounded single-producer/single-consumer rings (commands one way, events the other) and a
//! waker each way, so:
//!
//! - deliveries are the shared [`Message`] itself: no encoding, no copy of the payload;
//! - handles are `Send`, but a thread that publishes takes its own [`Publisher`] (one producer
//!   per ring is what keeps the ring lock-free and its order the publisher's order);
//! - a full command ring makes [`Publisher::publish`] wait (and [`Publisher::publish_async`]
//!   return `Pending`); nothing is dropped;
//! - a subscriber that does not keep up meets the broker's slow-consumer policy like a network
//!   one: what waits for it is bounded by `outbound_bytes_max` (plus its event ring), and it is
//!   cut with `SLOW_CONSUMER`, which its next receive reports, or under `drop-oldest` told how
//!   many it lost ([`Subscription::dropped`]).
//!
//! Network clients and in-process handles on one bus see each other's messages.
//!
//! Subscriptions are blocking iterators ([`Subscription::recv`], [`Subscription::try_recv`],
//! [`Subscription::recv_timeout`]) and, for async code on any runtime,
//! [`futures_core::Stream`]s woken through `std::task::Waker` (the library runs no runtime).
//! A stream that ends says why first: one `Err` (shutdown, slow consumer, topic deleted),
//! then `None`. Every call that waits for the shard has an async twin named `..._async`
//! (subscribing, confirmed publishes, requests with their timeout, acks, topics, stats); the
//! blocking call runs that same future on the calling thread (a blocking request keeps its
//! timeout by parking until it; an async one's is kept by `futures-timer`'s one timer thread,
//! whatever runtime polls it).
//!
//! Content filters ([`BusHandle::subscribe_filtered`]) run on the subscriber's side, in the
//! thread or task that receives, so a slow predicate never stalls a shard. A message it turns
//! down was still delivered as far as the broker is concerned (it counts in `delivered`); the
//! subscription counts it in [`Subscription::filtered_out`]. A predicate that panics ends its
//! subscription with [`Error::FilterPanicked`]; the bus goes on serving.
//!
//! ```
//! use corebus::bus::{Bus, BusConfig};
//! use std::time::Duration;
//!
//! let bus = Bus::start(BusConfig::default())?;          // no network listeners
//! let mut orders = bus.subscribe("orders.*")?;
//! let mut publisher = bus.publisher()?;
//! let seq = publisher.publish_confirmed("orders.created", b"{\"id\":1}")?;
//! let message = orders.recv_timeout(Duration::from_secs(5))?;
//! assert_eq!((message.topic(), message.seq(), message.payload()),
//!            ("orders.created", seq, &b"{\"id\":1}"[..]));
//! bus.shutdown()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The README's walkthrough, whose examples run as this module's doc tests:
//!
#![doc = include_str!("../../docs/embedding.md")]

pub(crate) mod link;
mod spsc;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::config::Config;
use crate::error::ErrorCode;
use crate::protocol::native::{self, AckKind};
use crate::protocol::subscribe_options::CONSUMER_NAME_BYTES_MAX;
use crate::protocol::topic::{self, SubjectKind};
use crate::server::Launched;
use crate::shard::ShardCounters;
use link::{Command, Doorbell, Event, HandleEnds, LinkSizes};
use spsc::TrySendError;

pub use crate::client::{Gap, ServerError, TopicPosition};
pub use crate::message::Message;
pub use crate::protocol::subscribe_options::{AckSettings, Sharing, Start, SubscribeOptions};
pub use crate::protocol::topic_options::TopicOptions;
pub use crate::shard::stats::TopicStats;

/// Default [`BusConfig::command_slots`].
pub const COMMAND_SLOTS_DEFAULT: usize = 1024;
/// Default [`BusConfig::event_slots`].
pub const EVENT_SLOTS_DEFAULT: usize = 4096;
/// Default [`BusConfig::handles_per_shard_max`].
pub const HANDLES_PER_SHARD_MAX_DEFAULT: usize = 4096;
/// The most slots [`BusConfig::command_slots`] and [`BusConfig::event_slots`] may ask for:
/// each ring is allocated whole when its handle is made, so a larger one would fail (or take
/// the process's memory) then, not at start.
pub const RING_SLOTS_MAX: usize = 1 << 16;
/// The most [`BusConfig::handles_per_shard_max`] may be: the shard's doorbell is allocated
/// for four rings a handle.
pub const HANDLES_PER_SHARD_LIMIT: usize = 1 << 16;
/// Refusals of quiet publishes kept for [`Publisher::take_async_errors`]; older ones are
/// counted instead.
const ASYNC_ERRORS_MAX: usize = 1024;
/// Replies to earlier requests kept while a publisher waits for something else (a request
/// waits for one reply at a time, so few arrive).
const INBOX_BUFFER_MAX: usize = 64;
/// The longest a blocked handle sleeps before it looks again by itself. Every wake-up is
/// signalled; this only bounds the cost of one that would be lost to a bug.
const PARK_BACKSTOP: Duration = Duration::from_millis(100);

/// The subscription id of a [`Subscription`] on its own connection.
const SUBSCRIPTION_SUB_ID: u32 = 1;
/// The subscription id of a publisher's request/reply inbox.
const INBOX_SUB_ID: u32 = 1;

/// How to run an embedded bus.
#[derive(Clone, Debug)]
pub struct BusConfig {
    /// The shards' settings: the same limits as `corebus serve` (shards, outbound bytes and
    /// slow-consumer policy, replay, consumers, topics, ...). Its `listen`, `http_listen` and
    /// `resp_listen` apply only when [`BusConfig::listen`] is set.
    pub broker: Config,
    /// Native port (and the HTTP and Redis ports of `broker`, when set there), or `None`: no
    /// network listener at all.
    pub listen: Option<SocketAddr>,
    /// Slots of each handle's command ring (handle → shard): publishes in flight before
    /// `publish` waits. Default [`COMMAND_SLOTS_DEFAULT`].
    pub command_slots: usize,
    /// Slots of each handle's event ring (shard → handle): deliveries handed over before the
    /// rest waits in the shard's outbound queue (bounded by `broker.outbound_bytes_max`).
    /// Default [`EVENT_SLOTS_DEFAULT`].
    pub event_slots: usize,
    /// Handles (publishers and subscriptions) one shard serves at most; one more is refused
    /// with `TOO_MANY_CONNECTIONS`. Default [`HANDLES_PER_SHARD_MAX_DEFAULT`].
    pub handles_per_shard_max: usize,
}

impl Default for BusConfig {
    /// The broker's defaults, except: no ports, no core pinning (the shards share the
    /// application's cores), and a one-second shutdown grace (a handle that stopped reading
    /// holds shutdown that long at most).
    fn default() -> Self {
        BusConfig {
            broker: Config {
                http_listen: None,
                resp_listen: None,
                pin: false,
                shutdown_grace_ms: 1000,
                ..Config::default()
            },
            listen: None,
            command_slots: COMMAND_SLOTS_DEFAULT,
            event_slots: EVENT_SLOTS_DEFAULT,
            handles_per_shard_max: HANDLES_PER_SHARD_MAX_DEFAULT,
        }
    }
}

/// Why a bus call failed. Nothing a caller passes makes the bus panic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// Refused on the caller's side before anything reached a shard, with the code the broker
    /// gives the same mistake (`BAD_TOPIC`, `MESSAGE_TOO_LARGE`, `UNSUPPORTED_OPTION`, ...).
    Invalid(ServerError),
    /// A shard refused the command.
    Refused(ServerError),
    /// Nothing within the timeout.
    Timeout,
    /// The connection is gone: the bus shut down, or the shard cut it (a slow consumer). The
    /// shard's last notice, if it sent one (`SHUTTING_DOWN`, `SLOW_CONSUMER`).
    Closed(Option<ServerError>),
    /// The broker ended the subscription (its topic was deleted).
    Ended(ServerError),
    /// The subscription's filter panicked, with the panic's message; the subscription ended.
    FilterPanicked(String),
}

impl Error {
    /// The broker's error code, when there is one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Invalid(e) | Error::Refused(e) | Error::Ended(e) | Error::Closed(Some(e)) => {
                e.code()
            }
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(e) => write!(f, "not sent: {e}"),
            Error::Refused(e) => write!(f, "refused: {e}"),
            Error::Timeout => f.write_str("timed out"),
            Error::Closed(Some(e)) => write!(f, "closed by the bus: {e}"),
            Error::Closed(None) => f.write_str("closed"),
            Error::Ended(e) => write!(f, "subscription ended by the bus: {e}"),
            Error::FilterPanicked(e) => write!(f, "the subscription's filter panicked: {e}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn invalid(code: ErrorCode, message: impl Into<String>) -> Error {
    Error::Invalid(ServerError {
        code_raw: code.as_u16(),
        message: message.into(),
    })
}

/// A running embedded bus. Dropping it shuts it down, as [`Bus::shutdown`] does.
///
/// It dereferences to a [`BusHandle`], which makes publishers and subscriptions; clone a
/// handle ([`Bus::handle`]) to make them on other threads.
pub struct Bus {
    handle: BusHandle,
    launched: Option<Launched>,
}

/// What every handle of one bus shares: where each shard's doorbell is.
struct Shared {
    shards: Vec<ShardDoor>,
    next_key: AtomicU64,
    next_shard: AtomicUsize,
    sizes: LinkSizes,
    handles_per_shard_max: usize,
    message_bytes_max: usize,
    header_bytes_max: usize,
}

struct ShardDoor {
    doorbell: Sender<Doorbell>,
    waker: Arc<mio::Waker>,
    handles: Arc<AtomicUsize>,
}

/// Makes publishers and subscriptions on a bus; cheap to clone, `Send` and `Sync`.
#[derive(Clone)]
pub struct BusHandle {
    shared: Arc<Shared>,
}

impl Bus {
    /// Starts the shards (and the listeners, if [`BusConfig::listen`] is set); returns once
    /// they run.
    pub fn start(config: BusConfig) -> io::Result<Bus> {
        let sizes = [
            ("command_slots", config.command_slots, RING_SLOTS_MAX),
            ("event_slots", config.event_slots, RING_SLOTS_MAX),
            (
                "handles_per_shard_max",
                config.handles_per_shard_max,
                HANDLES_PER_SHARD_LIMIT,
            ),
        ];
        for (name, value, max) in sizes {
            if value > max {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name} {value} is above its limit of {max}"),
                ));
            }
        }
        let mut broker = config.broker;
        let network = config.listen.is_some();
        if let Some(listen) = config.listen {
            broker.listen = listen;
        }
        let shards = broker.shards;
        // Each handle has at most four rings outstanding (its attach, a command ring, a ring
        // for event room, its drop), so the doorbell never fills.
        let doorbell_slots = config.handles_per_shard_max.saturating_mul(4).max(16);
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards)
            .map(|_| crossbeam_channel::bounded(doorbell_slots))
            .unzip();
        let shared_config = (
            config.command_slots,
            config.event_slots,
            broker.message_bytes_max,
            broker.header_bytes_max,
        );
        let launched = crate::server::launch(broker, network, receivers)?;
        let doors = senders
            .into_iter()
            .zip(&launched.wakers)
            .map(|(doorbell, waker)| ShardDoor {
                doorbell,
                waker: waker.clone(),
                handles: Arc::new(AtomicUsize::new(0)),
            })
            .collect();
        let (command_slots, event_slots, message_bytes_max, header_bytes_max) = shared_config;
        Ok(Bus {
            handle: BusHandle {
                shared: Arc::new(Shared {
                    shards: doors,
                    next_key: AtomicU64::new(1),
                    next_shard: AtomicUsize::new(0),
                    sizes: LinkSizes {
                        command_slots,
                        event_slots,
                    },
                    handles_per_shard_max: config.handles_per_shard_max,
                    message_bytes_max,
                    header_bytes_max,
                }),
            },
            launched: Some(launched),
        })
    }

    /// A handle to make publishers and subscriptions from other threads.
    pub fn handle(&self) -> BusHandle {
        self.handle.clone()
    }

    /// The native port, when the bus listens on the network.
    pub fn native_addr(&self) -> Option<SocketAddr> {
        self.launched.as_ref().and_then(|l| l.native_addr)
    }

    /// The HTTP port, when the bus listens on the network and `broker.http_listen` is set.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.launched.as_ref().and_then(|l| l.http_addr)
    }

    /// Stops the shards gracefully: every handle gets `SHUTTING_DOWN` behind what was queued
    /// for it, and then [`Error::Closed`] (a subscription after taking what was handed over);
    /// waits for the shards and returns their counters summed.
    pub fn shutdown(mut self) -> io::Result<ShardCounters> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<ShardCounters> {
        let Some(launched) = self.launched.take() else {
            return Ok(ShardCounters::default());
        };
        launched.shutdown.store(true, Ordering::Release);
        for waker in &launched.wakers {
            let _ = waker.wake();
        }
        let mut total = ShardCounters::default();
        let mut failure = None;
        for thread in launched.threads {
            match thread.join() {
                Ok(Ok(counters)) => total.add(&counters),
                Ok(Err(error)) => failure = Some(error),
                Err(_) => failure = Some(io::Error::other("a shard thread panicked")),
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(total),
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

impl Deref for Bus {
    type Target = BusHandle;

    fn deref(&self) -> &BusHandle {
        &self.handle
    }
}

impl BusHandle {
    /// A new connection on shard `shard`.
    fn link(&self, shard: usize) -> Result<Link> {
        let shared = &self.shared;
        let door = &shared.shards[shard % shared.shards.len()];
        if door.handles.fetch_add(1, Ordering::AcqRel) >= shared.handles_per_shard_max {
            door.handles.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Refused(ServerError {
                code_raw: ErrorCode::TooManyConnections.as_u16(),
                message: "the shard serves handles_per_shard_max handles already".into(),
            }));
        }
        let key = shared.next_key.fetch_add(1, Ordering::Relaxed);
        let ends = link::attach(
            key,
            shared.sizes,
            (
                door.doorbell.clone(),
                door.waker.clone(),
                door.handles.clone(),
            ),
        )
        .ok_or(Error::Closed(None))?;
        Ok(Link {
            ends,
            next_request_id: 1,
            close_notice: None,
        })
    }

    fn next_shard(&self) -> usize {
        self.shared.next_shard.fetch_add(1, Ordering::Relaxed)
    }

    fn owner_shard(&self, topic: &str) -> usize {
        topic::owner_shard(topic, self.shared.shards.len())
    }

    /// A publisher on the next shard in turn. Take one per publishing thread.
    pub fn publisher(&self) -> Result<Publisher> {
        Ok(Publisher::new(
            self.link(self.next_shard())?,
            self.shared.clone(),
        ))
    }

    /// A publisher on the shard that owns `topic`: its publishes there skip the hop between
    /// shards (any topic may still be published to).
    pub fn publisher_for(&self, topic: &str) -> Result<Publisher> {
        Ok(Publisher::new(
            self.link(self.owner_shard(topic))?,
            self.shared.clone(),
        ))
    }

    /// Subscribes to an exact topic or a pattern (`orders.*`, `metrics.>`). Returns once the
    /// shard has registered it: every message published after this returns is delivered.
    pub fn subscribe(&self, subject: &str) -> Result<Subscription> {
        self.subscribe_with(subject, SubscribeOptions::default())
    }

    /// Subscribes with options: a start position (exact topics), a durable consumer with
    /// acks, a group.
    pub fn subscribe_with(&self, subject: &str, options: SubscribeOptions) -> Result<Subscription> {
        link::block_on(self.subscribe_with_async(subject, options))
    }

    /// Async [`BusHandle::subscribe`].
    pub async fn subscribe_async(&self, subject: &str) -> Result<Subscription> {
        self.subscribe_with_async(subject, SubscribeOptions::default())
            .await
    }

    /// Async [`BusHandle::subscribe_with`]: ready once the shard has registered it.
    pub async fn subscribe_with_async(
        &self,
        subject: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        let (subject, kind) = topic::parse_subscription(subject.as_bytes())
            .map_err(|error| invalid(ErrorCode::BadTopic, error.reason()))?;
        if let Sharing::Consumer(name) | Sharing::Group(name) = &options.sharing {
            if name.is_empty() || name.len() > CONSUMER_NAME_BYTES_MAX {
                return Err(invalid(
                    ErrorCode::UnsupportedOption,
                    format!("consumer and group names are 1 to {CONSUMER_NAME_BYTES_MAX} bytes"),
                ));
            }
        }
        // An exact topic's messages are delivered on its owner shard without a hop.
        let shard = match kind {
            SubjectKind::Exact => self.owner_shard(subject),
            SubjectKind::Pattern => self.next_shard(),
        };
        let mut link = self.link(shard)?;
        let acks = options.acks.is_some();
        let command = |request_id| Command::Subscribe {
            request_id,
            sub_id: SUBSCRIPTION_SUB_ID,
            subject: subject.into(),
            options: Box::new(options),
        };
        let data = link.call(command, &mut |_| {}).await?;
        let position = (kind == SubjectKind::Exact)
            .then(|| {
                Some(TopicPosition {
                    epoch: data.u64_at(0)?,
                    last_seq: data.u64_at(8)?,
                })
            })
            .flatten();
        Ok(Subscription {
            link,
            subject: subject.into(),
            position,
            acks,
            filter: None,
            filtered_out: 0,
            dropped: 0,
            missed: 0,
            last_gap: None,
            finished: None,
            ack_errors: VecDeque::new(),
        })
    }

    /// A queue subscription: subscribers sharing `group` split the subject's messages, each
    /// message going to one of them.
    pub fn subscribe_queue(&self, subject: &str, group: &str) -> Result<Subscription> {
        link::block_on(self.subscribe_queue_async(subject, group))
    }

    /// Async [`BusHandle::subscribe_queue`].
    pub async fn subscribe_queue_async(&self, subject: &str, group: &str) -> Result<Subscription> {
        let options = SubscribeOptions {
            sharing: Sharing::Group(group.into()),
            ..Default::default()
        };
        self.subscribe_with_async(subject, options).await
    }

    /// A subscription that yields only the messages `keep` accepts. `keep` runs on the
    /// receiving side (the thread or task that calls `recv` or polls), never on a shard.
    pub fn subscribe_filtered(
        &self,
        subject: &str,
        keep: impl FnMut(&Message) -> bool + Send + 'static,
    ) -> Result<Subscription> {
        link::block_on(self.subscribe_filtered_async(subject, keep))
    }

    /// Async [`BusHandle::subscribe_filtered`].
    pub async fn subscribe_filtered_async(
        &self,
        subject: &str,
        keep: impl FnMut(&Message) -> bool + Send + 'static,
    ) -> Result<Subscription> {
        let mut subscription = self.subscribe_async(subject).await?;
        subscription.filter = Some(Box::new(keep));
        Ok(subscription)
    }

    /// Creates a topic with its own replay limits (before it is first used).
    pub fn create_topic(&self, topic: &str, options: TopicOptions) -> Result<TopicPosition> {
        link::block_on(self.create_topic_async(topic, options))
    }

    /// Async [`BusHandle::create_topic`].
    pub async fn create_topic_async(
        &self,
        topic: &str,
        options: TopicOptions,
    ) -> Result<TopicPosition> {
        let mut publisher = self.publisher_for(topic)?;
        publisher.create_topic_async(topic, options).await
    }

    /// Deletes a topic: its subscribers are told (their subscriptions end) and its memory is
    /// freed.
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        link::block_on(self.delete_topic_async(topic))
    }

    /// Async [`BusHandle::delete_topic`].
    pub async fn delete_topic_async(&self, topic: &str) -> Result<()> {
        let mut publisher = self.publisher_for(topic)?;
        publisher.delete_topic_async(topic).await
    }

    /// Counters and topics, gathered from every shard.
    pub fn stats(&self) -> Result<BusStats> {
        link::block_on(self.stats_async())
    }

    /// Async [`BusHandle::stats`].
    pub async fn stats_async(&self) -> Result<BusStats> {
        let mut publisher = self.publisher()?;
        publisher.stats_async().await
    }
}

/// The bus's counters and topics, gathered from every shard.
#[derive(Clone, Debug, Default)]
pub struct BusStats {
    /// Every shard's counters summed (`published`, `delivered`, `dropped`, ...).
    pub counters: ShardCounters,
    /// Every topic, with its subscriber count and retained messages.
    pub topics: Vec<TopicStats>,
    /// Open connections: network ones and in-process handles.
    pub connections: u64,
    /// Of `connections`, the in-process handles (the one asking included).
    pub in_process_connections: u64,
    /// Shards that answered in time, of `shards`.
    pub shards_answered: usize,
    pub shards: usize,
}

/// The handle's side of one in-process connection.
struct Link {
    ends: HandleEnds,
    next_request_id: u32,
    /// The shard's connection-level notice (`SHUTTING_DOWN`, `SLOW_CONSUMER`), once it came.
    close_notice: Option<ServerError>,
}

/// Why a command could not be pushed.
enum Push {
    Full(Command),
    Closed,
}

impl Link {
    fn request_id(&mut self) -> u32 {
        let id = self.next_request_id;
        // 0 is the protocol's "no request" (connection-level notices).
        self.next_request_id = self.next_request_id.checked_add(1).unwrap_or(1);
        id
    }

    fn closed(&self) -> Error {
        Error::Closed(self.close_notice.clone())
    }

    fn try_push(&self, command: Command) -> std::result::Result<(), Push> {
        match self.ends.commands.try_send(command) {
            Ok(()) => {
                self.ends.state.ring();
                Ok(())
            }
            Err(TrySendError::Full(command)) => Err(Push::Full(command)),
            Err(TrySendError::Disconnected(_)) => Err(Push::Closed),
        }
    }

    /// Pushes a command, waiting while the ring is full.
    fn send(&self, mut command: Command) -> Result<()> {
        loop {
            match self.try_push(command) {
                Ok(()) => return Ok(()),
                Err(Push::Closed) => return Err(self.closed()),
                Err(Push::Full(back)) => command = back,
            }
            let state = &self.ends.state;
            state.to_handle.prepare_thread();
            state.command_room_wanted.store(true, Ordering::SeqCst);
            // Either the shard, draining, sees the flag, or this sees the room it made.
            fence(Ordering::SeqCst);
            if self.ends.commands.is_full() && !state.shard_gone.load(Ordering::SeqCst) {
                state.ring();
                std::thread::park_timeout(PARK_BACKSTOP);
            }
            state.to_handle.cancel();
        }
    }

    /// Pushes a command, or registers the task to be woken when the ring has room.
    fn poll_push(&self, command: Command, cx: &mut Context<'_>) -> std::result::Result<(), Push> {
        let command = match self.try_push(command) {
            Err(Push::Full(command)) => command,
            done => return done,
        };
        let state = &self.ends.state;
        state.to_handle.prepare_task(cx.waker());
        state.command_room_wanted.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        match self.try_push(command) {
            Err(Push::Full(command)) => {
                state.ring();
                Err(Push::Full(command))
            }
            done => {
                state.to_handle.cancel();
                done
            }
        }
    }

    /// The next event, waiting until `deadline` (`Ok(None)` then) or for ever; `Err` once
    /// the connection is closed and every event was taken.
    fn next_event(&mut self, deadline: Option<Instant>) -> Result<Option<Event>> {
        loop {
            if let Some(event) = self.take_event() {
                return Ok(Some(event));
            }
            if self.ends.is_closed() {
                return Err(self.closed());
            }
            let signal = &self.ends.state.to_handle;
            signal.prepare_thread();
            self.ends.ring_if_room_wanted();
            if !self.ends.events.is_empty() || self.ends.state.shard_gone.load(Ordering::SeqCst) {
                signal.cancel();
                continue;
            }
            match deadline {
                None => std::thread::park_timeout(PARK_BACKSTOP),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        signal.cancel();
                        return Ok(None);
                    }
                    std::thread::park_timeout((deadline - now).min(PARK_BACKSTOP));
                }
            }
            signal.cancel();
        }
    }

    /// The next event, or `Pending` with the task registered; `Ready(None)` once closed.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if let Some(event) = self.take_event() {
            return Poll::Ready(Some(event));
        }
        if self.ends.is_closed() {
            return Poll::Ready(None);
        }
        self.ends.state.to_handle.prepare_task(cx.waker());
        self.ends.ring_if_room_wanted();
        if let Some(event) = self.take_event() {
            self.ends.state.to_handle.cancel();
            return Poll::Ready(Some(event));
        }
        if self.ends.is_closed() {
            self.ends.state.to_handle.cancel();
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// An event, with connection-level notices kept aside.
    /// An empty ring also tells a shard that stopped for room to go on: a handle that only
    /// polls (`try_recv`, a publisher taking refusals) never sleeps, where that is done too.
    /// Without a fence: one that polls will look again, and one about to sleep looks with
    /// a fence first (`next_event`, `poll_event`). A fence here was paid by every publish
    /// and by every empty look of a subscriber polling several subscriptions.
    #[inline]
    fn take_event(&mut self) -> Option<Event> {
        loop {
            match self.ends.try_event() {
                Some(Event::Notice(notice)) => self.close_notice = Some(notice),
                Some(event) => return Some(event),
                None => {
                    self.ends.ring_if_room_wanted_seen();
                    return None;
                }
            }
        }
    }

    /// Pushes a command as a task would: pending (the task registered) while the ring is
    /// full. `&mut`, though pushing needs only `&`, so that a future holding it is `Send`.
    async fn push(&mut self, command: Command) -> Result<()> {
        let mut command = Some(command);
        // Moved in: a closure that used it through `&` would hold a `&Link`.
        let link = self;
        std::future::poll_fn(move |cx| {
            let Some(pushed) = command.take() else {
                return Poll::Ready(Ok(()));
            };
            match link.poll_push(pushed, cx) {
                Ok(()) => Poll::Ready(Ok(())),
                Err(Push::Closed) => Poll::Ready(Err(link.closed())),
                Err(Push::Full(back)) => {
                    command = Some(back);
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The answer to `request_id` (its reply, or its stats); every other event goes to
    /// `other`.
    async fn answer(
        &mut self,
        request_id: u32,
        other: &mut (dyn FnMut(Event) + Send),
    ) -> Result<Event> {
        std::future::poll_fn(|cx| loop {
            match self.poll_event(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Err(self.closed())),
                Poll::Ready(Some(event)) if event.answers(request_id) => {
                    return Poll::Ready(Ok(event))
                }
                Poll::Ready(Some(event)) => other(event),
            }
        })
        .await
    }

    /// Pushes `command` (made with a fresh request id) and waits for its OK or refusal.
    async fn call(
        &mut self,
        command: impl FnOnce(u32) -> Command,
        other: &mut (dyn FnMut(Event) + Send),
    ) -> Result<link::ReplyData> {
        let request_id = self.request_id();
        self.push(command(request_id)).await?;
        match self.answer(request_id, other).await? {
            Event::Reply { result, .. } => result.map_err(Error::Refused),
            _ => Err(unexpected_answer()),
        }
    }
}

/// An answer of a kind its request does not get (a broker bug, reported rather than
/// trusted).
fn unexpected_answer() -> Error {
    Error::Refused(ServerError {
        code_raw: ErrorCode::Internal.as_u16(),
        message: "an answer of the wrong kind".into(),
    })
}

/// `future`, or [`Error::Timeout`] once `timeout` has passed (a timer thread wakes the task,
/// whatever runs it). A timeout too long to add to the clock never passes.
async fn within<T>(timeout: Duration, future: impl Future<Output = Result<T>>) -> Result<T> {
    let mut delay = Instant::now()
        .checked_add(timeout)
        .map(|_| futures_timer::Delay::new(timeout));
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(output);
        }
        let passed = delay
            .as_mut()
            .is_some_and(|delay| Pin::new(delay).poll(cx).is_ready());
        if passed {
            Poll::Ready(Err(Error::Timeout))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Publishes, requests and administers topics: one in-process connection. `Send`; take one
/// per publishing thread (each is the only producer of its command ring).
///
/// Every call that waits for the shard has an async twin (`publish_confirmed_async`,
/// `request_async`, `create_topic_async`, ...): the blocking call runs the same future on the
/// calling thread. Either waits microseconds for an answer, up to its timeout for a request.
pub struct Publisher {
    link: Link,
    shared: Arc<Shared>,
    scratch: Vec<u8>,
    checked_topic: topic::CheckedTopic,
    /// The name `checked_topic` passed last went out in the last publish pushed, so a publish
    /// that repeats it can tell the shard "same topic as before" (see [`Built`]).
    checked_topic_pushed: bool,
    unawaited: Unawaited,
}

/// A publish built and checked by [`Publisher::build`], not pushed yet.
struct Built {
    message: Message,
    /// Its topic is the one of the publish this publisher pushed last: its shard, which
    /// remembers where it found that one, need not look the name up again.
    same_topic: bool,
}

/// What comes to a publisher that nobody is waiting for: refusals of quiet publishes, and
/// replies to a request that came while it waited for something else. Apart from the link,
/// so that a call waiting on the link can keep them as they come.
#[derive(Default)]
struct Unawaited {
    errors: VecDeque<ServerError>,
    errors_lost: u64,
    inbox: Option<Inbox>,
}

impl Unawaited {
    fn absorb(&mut self, event: Event) {
        // The answer to the inbox's subscribe, come after the request that made it was
        // dropped: a refusal leaves no inbox (the next request subscribes again).
        if let (Some(inbox), Event::Reply { request_id, result }) = (&mut self.inbox, &event) {
            if inbox.confirming == Some(*request_id) {
                inbox.confirming = None;
                if result.is_err() {
                    self.inbox = None;
                }
            }
        }
        match event {
            Event::Reply {
                result: Err(error), ..
            } => {
                if self.errors.len() == ASYNC_ERRORS_MAX {
                    self.errors.pop_front();
                    self.errors_lost += 1;
                }
                self.errors.push_back(error);
            }
            Event::Message { sub_id, message } if sub_id == INBOX_SUB_ID => {
                if let Some(inbox) = &mut self.inbox {
                    if inbox.early.len() == INBOX_BUFFER_MAX {
                        inbox.early.pop_front();
                    }
                    inbox.early.push_back(message);
                }
            }
            _ => {}
        }
    }
}

impl Built {
    fn into_command(self, request_id: u32, quiet: bool) -> Command {
        Command::Publish {
            request_id,
            message: self.message,
            quiet,
            same_topic: self.same_topic,
        }
    }
}

/// A publisher's private reply topic, subscribed on its first request.
struct Inbox {
    prefix: String,
    next_token: u64,
    /// The request id of its subscribe, until the shard has answered it.
    confirming: Option<u32>,
    /// Replies that came while the publisher waited for something else.
    early: VecDeque<Message>,
}

impl Publisher {
    fn new(link: Link, shared: Arc<Shared>) -> Publisher {
        Publisher {
            link,
            shared,
            scratch: Vec::new(),
            checked_topic: topic::CheckedTopic::default(),
            checked_topic_pushed: false,
            unawaited: Unawaited::default(),
        }
    }

    /// The message a publish carries, built here (one allocation, the payload copied once)
    /// and checked with the broker's rules, so the shard only routes it.
    fn build(
        &mut self,
        topic: &str,
        reply_to: Option<&str>,
        headers: &[(&str, &[u8])],
        payload: &[u8],
    ) -> Result<Built> {
        let (_, repeated) = self
            .checked_topic
            .parse_noting_repeat(topic.as_bytes())
            .map_err(|error| invalid(ErrorCode::BadTopic, error.reason()))?;
        // Until this one is pushed, the last name checked is not the last one pushed.
        let same_topic = repeated && self.checked_topic_pushed;
        self.checked_topic_pushed = false;
        if let Some(reply_to) = reply_to {
            topic::parse_publish_topic(reply_to.as_bytes())
                .map_err(|error| invalid(ErrorCode::BadTopic, error.reason()))?;
        }
        if payload.len() > self.shared.message_bytes_max {
            return Err(invalid(
                ErrorCode::MessageTooLarge,
                "payload is larger than message_bytes_max",
            ));
        }
        let mut block = Vec::new();
        for (name, value) in headers {
            native::put_header(&mut block, name.as_bytes(), value).map_err(|reason| {
                invalid(ErrorCode::BadFrame, format!("header {name:?}: {reason}"))
            })?;
        }
        if block.len() > self.shared.header_bytes_max || block.len() > usize::from(u16::MAX) {
            return Err(invalid(
                ErrorCode::MessageTooLarge,
                "headers are larger than header_bytes_max",
            ));
        }
        let message = Message::from_publish_with_headers(
            &mut self.scratch,
            (topic, reply_to.map(str::as_bytes)),
            &block,
            payload,
        );
        Ok(Built {
            message,
            same_topic,
        })
    }

    /// Publishes without waiting for the shard (a quiet publish: refusals the shard makes
    /// are kept for [`Publisher::take_async_errors`]). Waits only while the command ring is
    /// full.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> Result<()> {
        let built = self.build(topic, None, &[], payload)?;
        self.push_publish(built)
    }

    /// Publishes and waits for the owner shard to sequence it; returns its sequence number.
    pub fn publish_confirmed(&mut self, topic: &str, payload: &[u8]) -> Result<u64> {
        link::block_on(self.publish_confirmed_async(topic, payload))
    }

    /// Async [`Publisher::publish_confirmed`].
    pub async fn publish_confirmed_async(&mut self, topic: &str, payload: &[u8]) -> Result<u64> {
        let built = self.build(topic, None, &[], payload)?;
        self.confirmed(built).await
    }

    /// Publishes a message with headers (ordered name/value pairs; names are 1 to 255 bytes
    /// of visible ASCII without `:`) and waits for its sequence number.
    pub fn publish_with_headers(
        &mut self,
        topic: &str,
        headers: &[(&str, &[u8])],
        payload: &[u8],
    ) -> Result<u64> {
        link::block_on(self.publish_with_headers_async(topic, headers, payload))
    }

    /// Async [`Publisher::publish_with_headers`].
    pub async fn publish_with_headers_async(
        &mut self,
        topic: &str,
        headers: &[(&str, &[u8])],
        payload: &[u8],
    ) -> Result<u64> {
        let built = self.build(topic, None, headers, payload)?;
        self.confirmed(built).await
    }

    /// Publishes naming a reply topic, without waiting (quiet, like [`Publisher::publish`]).
    pub fn publish_with_reply(
        &mut self,
        topic: &str,
        payload: &[u8],
        reply_to: &str,
    ) -> Result<()> {
        link::block_on(self.publish_with_reply_async(topic, payload, reply_to))
    }

    /// Async [`Publisher::publish_with_reply`]: pending only while the command ring is full.
    pub async fn publish_with_reply_async(
        &mut self,
        topic: &str,
        payload: &[u8],
        reply_to: &str,
    ) -> Result<()> {
        let built = self.build(topic, Some(reply_to), &[], payload)?;
        self.push_built(built, true).await.map(|_| ())
    }

    /// Answers a message that named a reply topic. `Ok(false)` if it named none.
    pub fn reply(&mut self, request: &Message, payload: &[u8]) -> Result<bool> {
        link::block_on(self.reply_async(request, payload))
    }

    /// Async [`Publisher::reply`].
    pub async fn reply_async(&mut self, request: &Message, payload: &[u8]) -> Result<bool> {
        let Some(reply_to) = request.reply_to() else {
            return Ok(false);
        };
        let built = self.build(reply_to, None, &[], payload)?;
        self.push_built(built, true).await.map(|_| true)
    }

    /// Request/reply: publishes `payload` to `topic` naming a private reply topic and waits up
    /// to `timeout` for the first answer ([`Error::Timeout`] if none comes). The first request
    /// subscribes this publisher to its inbox (`_inbox.<random>.*`); later ones reuse it.
    /// A timeout too long to add to the clock is no deadline.
    pub fn request(&mut self, topic: &str, payload: &[u8], timeout: Duration) -> Result<Message> {
        let deadline = Instant::now().checked_add(timeout);
        link::block_on_until(self.request_without_deadline(topic, payload), deadline)
            .unwrap_or(Err(Error::Timeout))
    }

    /// Async [`Publisher::request`]. Dropped before its answer, it leaves nothing behind: a
    /// late answer is skipped by the next request. Its timeout is kept by `futures-timer`'s
    /// one timer thread (started on the first async request), whatever runtime polls it.
    pub async fn request_async(
        &mut self,
        topic: &str,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Message> {
        within(timeout, self.request_without_deadline(topic, payload)).await
    }

    async fn request_without_deadline(&mut self, topic: &str, payload: &[u8]) -> Result<Message> {
        if self.unawaited.inbox.is_none() {
            let prefix = format!("_inbox.{:016x}", rand::random::<u64>());
            let request_id = self.link.request_id();
            self.link
                .push(Command::Subscribe {
                    request_id,
                    sub_id: INBOX_SUB_ID,
                    subject: format!("{prefix}.*").into(),
                    options: Box::default(),
                })
                .await?;
            // Kept as soon as it is pushed: a request dropped (or timed out) from here on
            // leaves the inbox known, never subscribed twice.
            self.unawaited.inbox = Some(Inbox {
                prefix,
                next_token: 0,
                confirming: Some(request_id),
                early: VecDeque::new(),
            });
        }
        if let Some(request_id) = self.unawaited.inbox.as_ref().and_then(|i| i.confirming) {
            let unawaited = &mut self.unawaited;
            let answer = self
                .link
                .answer(request_id, &mut |event| unawaited.absorb(event))
                .await?;
            match answer {
                Event::Reply { result: Ok(_), .. } => {
                    if let Some(inbox) = &mut self.unawaited.inbox {
                        inbox.confirming = None;
                    }
                }
                Event::Reply {
                    result: Err(error), ..
                } => {
                    self.unawaited.inbox = None;
                    return Err(Error::Refused(error));
                }
                _ => return Err(unexpected_answer()),
            }
        }
        let reply_to = match &mut self.unawaited.inbox {
            Some(inbox) => {
                inbox.next_token += 1;
                inbox.early.clear();
                format!("{}.{}", inbox.prefix, inbox.next_token)
            }
            None => return Err(self.link.closed()),
        };
        let built = self.build(topic, Some(&reply_to), &[], payload)?;
        self.push_built(built, true).await?;
        let (link, unawaited) = (&mut self.link, &mut self.unawaited);
        std::future::poll_fn(|cx| loop {
            if let Some(inbox) = &mut unawaited.inbox {
                if let Some(at) = inbox.early.iter().position(|m| m.topic() == reply_to) {
                    if let Some(answer) = inbox.early.remove(at) {
                        return Poll::Ready(Ok(answer));
                    }
                }
            }
            match link.poll_event(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Err(link.closed())),
                // Late answers to earlier requests that timed out are skipped.
                Poll::Ready(Some(Event::Message { sub_id, message }))
                    if sub_id == INBOX_SUB_ID && message.topic() == reply_to =>
                {
                    return Poll::Ready(Ok(message))
                }
                Poll::Ready(Some(event)) => unawaited.absorb(event),
            }
        })
        .await
    }

    /// Async [`Publisher::publish`]: `Pending` while the command ring is full, never a
    /// blocked thread. Runtime-agnostic (woken through the task's `Waker`).
    pub fn publish_async<'p>(&'p mut self, topic: &str, payload: &[u8]) -> PublishFuture<'p> {
        let command = self
            .build(topic, None, &[], payload)
            .map(|built| built.into_command(self.link.request_id(), true));
        PublishFuture {
            publisher: self,
            command: Some(command),
        }
    }

    /// Refusals of quiet publishes so far, oldest first, and how many more were not kept
    /// because 1,024 were waiting already. A call whose future was dropped after its command
    /// went out (a confirmed publish, a topic made or deleted) has its refusal kept here too.
    pub fn take_async_errors(&mut self) -> (Vec<ServerError>, u64) {
        self.take_unawaited();
        (
            self.unawaited.errors.drain(..).collect(),
            std::mem::take(&mut self.unawaited.errors_lost),
        )
    }

    /// Creates a topic with its own replay limits (before it is first used). Refused with
    /// `TOPIC_EXISTS` if it exists.
    pub fn create_topic(&mut self, topic: &str, options: TopicOptions) -> Result<TopicPosition> {
        link::block_on(self.create_topic_async(topic, options))
    }

    /// Async [`Publisher::create_topic`].
    pub async fn create_topic_async(
        &mut self,
        topic: &str,
        options: TopicOptions,
    ) -> Result<TopicPosition> {
        topic::parse_publish_topic(topic.as_bytes())
            .map_err(|error| invalid(ErrorCode::BadTopic, error.reason()))?;
        let data = self
            .call(|request_id| Command::CreateTopic {
                request_id,
                topic: topic.into(),
                options: Box::new(options),
            })
            .await?;
        Ok(TopicPosition {
            epoch: data.u64_at(0).unwrap_or_default(),
            last_seq: data.u64_at(8).unwrap_or_default(),
        })
    }

    /// Deletes a topic; its subscribers' subscriptions end.
    pub fn delete_topic(&mut self, topic: &str) -> Result<()> {
        link::block_on(self.delete_topic_async(topic))
    }

    /// Async [`Publisher::delete_topic`].
    pub async fn delete_topic_async(&mut self, topic: &str) -> Result<()> {
        self.call(|request_id| Command::DeleteTopic {
            request_id,
            topic: topic.into(),
        })
        .await
        .map(|_| ())
    }

    /// Counters and topics, gathered from every shard.
    pub fn stats(&mut self) -> Result<BusStats> {
        link::block_on(self.stats_async())
    }

    /// Async [`Publisher::stats`].
    pub async fn stats_async(&mut self) -> Result<BusStats> {
        let request_id = self.link.request_id();
        self.link.push(Command::Stats { request_id }).await?;
        let unawaited = &mut self.unawaited;
        let answer = self
            .link
            .answer(request_id, &mut |event| unawaited.absorb(event))
            .await?;
        match answer {
            Event::Stats { parts, shards, .. } => Ok(merge_stats(parts, shards)),
            Event::Reply {
                result: Err(error), ..
            } => Err(Error::Refused(error)),
            _ => Err(unexpected_answer()),
        }
    }

    /// Refusals of earlier quiet publishes are taken as they come, so they never pile up in
    /// front of the shard.
    fn take_unawaited(&mut self) {
        while let Some(event) = self.link.take_event() {
            self.unawaited.absorb(event);
        }
    }

    /// The blocking quiet publish's push (the hot path: no future around it).
    fn push_publish(&mut self, built: Built) -> Result<()> {
        self.take_unawaited();
        let command = built.into_command(self.link.request_id(), true);
        self.link.send(command)?;
        self.checked_topic_pushed = true;
        Ok(())
    }

    /// [`Publisher::push_publish`] as a task waits for room.
    async fn push_built(&mut self, built: Built, quiet: bool) -> Result<u32> {
        self.take_unawaited();
        let request_id = self.link.request_id();
        self.link
            .push(built.into_command(request_id, quiet))
            .await?;
        self.checked_topic_pushed = true;
        Ok(request_id)
    }

    async fn confirmed(&mut self, built: Built) -> Result<u64> {
        let request_id = self.push_built(built, false).await?;
        let unawaited = &mut self.unawaited;
        let answer = self
            .link
            .answer(request_id, &mut |event| unawaited.absorb(event))
            .await?;
        let data = match answer {
            Event::Reply { result, .. } => result.map_err(Error::Refused)?,
            _ => return Err(unexpected_answer()),
        };
        data.u64_at(0).ok_or_else(|| {
            Error::Refused(ServerError {
                code_raw: ErrorCode::BadFrame.as_u16(),
                message: "a publish confirm without a sequence number".into(),
            })
        })
    }

    /// A command answered by OK or a refusal, the events that come meanwhile kept.
    async fn call(&mut self, command: impl FnOnce(u32) -> Command) -> Result<link::ReplyData> {
        let unawaited = &mut self.unawaited;
        self.link
            .call(command, &mut |event| unawaited.absorb(event))
            .await
    }
}

/// The future of [`Publisher::publish_async`].
pub struct PublishFuture<'p> {
    publisher: &'p mut Publisher,
    command: Option<Result<Command>>,
}

impl Future for PublishFuture<'_> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let this = self.get_mut();
        let command = match this.command.take() {
            None => return Poll::Ready(Ok(())),
            Some(Err(error)) => return Poll::Ready(Err(error)),
            Some(Ok(command)) => command,
        };
        this.publisher.take_unawaited();
        match this.publisher.link.poll_push(command, cx) {
            Ok(()) => {
                this.publisher.checked_topic_pushed = true;
                Poll::Ready(Ok(()))
            }
            Err(Push::Closed) => Poll::Ready(Err(this.publisher.link.closed())),
            Err(Push::Full(command)) => {
                this.command = Some(Ok(command));
                Poll::Pending
            }
        }
    }
}

type Filter = Box<dyn FnMut(&Message) -> bool + Send>;

/// One subscription: one in-process connection. A blocking iterator and a
/// [`futures_core::Stream`]. Dropping it unsubscribes and frees its connection.
pub struct Subscription {
    link: Link,
    subject: String,
    position: Option<TopicPosition>,
    acks: bool,
    filter: Option<Filter>,
    filtered_out: u64,
    dropped: u64,
    missed: u64,
    last_gap: Option<Gap>,
    /// Set once it ended (by the broker, or a panicking filter): every receive says so.
    finished: Option<Error>,
    ack_errors: VecDeque<ServerError>,
}

impl Subscription {
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// For an exact topic: its epoch and the last sequence number published before the
    /// subscription took effect. `None` for patterns.
    pub fn position(&self) -> Option<TopicPosition> {
        self.position
    }

    /// Messages the broker dropped for this subscription (`drop-oldest` policy).
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Messages a replay asked for that the topic no longer retained (gap notices).
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// The most recent gap notice.
    pub fn last_gap(&self) -> Option<&Gap> {
        self.last_gap.as_ref()
    }

    /// Messages the filter turned down. They count as delivered in the bus's stats: the
    /// shard delivered them; the filter runs here.
    pub fn filtered_out(&self) -> u64 {
        self.filtered_out
    }

    /// Waits for the next message.
    pub fn recv(&mut self) -> Result<Message> {
        self.recv_until(None)
            .and_then(|message| message.ok_or(Error::Timeout))
    }

    /// Waits up to `timeout` for the next message ([`Error::Timeout`] then).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Message> {
        // A timeout too long to add is no deadline at all.
        self.recv_until(Instant::now().checked_add(timeout))
            .and_then(|message| message.ok_or(Error::Timeout))
    }

    /// A message if one is here already.
    pub fn try_recv(&mut self) -> Result<Option<Message>> {
        self.still_on()?;
        loop {
            match self.link.take_event() {
                // The common case, without a filter, skips `absorb`'s dispatch.
                Some(Event::Message { message, .. }) if self.filter.is_none() => {
                    return Ok(Some(message))
                }
                Some(event) => {
                    if let Some(message) = self.absorb(event)? {
                        return Ok(Some(message));
                    }
                }
                None if self.link.ends.is_closed() => return Err(self.link.closed()),
                None => return Ok(None),
            }
        }
    }

    /// The next message, or `Pending` with the task registered to be woken by the shard.
    /// Once the subscription is over (after its last message): one `Err` saying why (the
    /// bus shut down, [`Error::Closed`] with `SHUTTING_DOWN`; cut as a slow consumer; its
    /// topic deleted, [`Error::Ended`]; its filter panicked), then `Ready(None)`.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Message>>> {
        if self.finished.is_some() {
            return Poll::Ready(None);
        }
        loop {
            match self.link.poll_event(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    let error = self.link.closed();
                    self.finished = Some(error.clone());
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Ready(Some(event)) => match self.absorb(event) {
                    Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                    Ok(None) => {}
                    Err(error) => return Poll::Ready(Some(Err(error))),
                },
            }
        }
    }

    fn recv_until(&mut self, deadline: Option<Instant>) -> Result<Option<Message>> {
        self.still_on()?;
        loop {
            let Some(event) = self.link.next_event(deadline)? else {
                return Ok(None);
            };
            if let Some(message) = self.absorb(event)? {
                return Ok(Some(message));
            }
        }
    }

    fn still_on(&self) -> Result<()> {
        match &self.finished {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    fn absorb(&mut self, event: Event) -> Result<Option<Message>> {
        match event {
            Event::Message { message, .. } => {
                let Some(keep) = &mut self.filter else {
                    return Ok(Some(message));
                };
                match catch_unwind(AssertUnwindSafe(|| keep(&message))) {
                    Ok(true) => Ok(Some(message)),
                    Ok(false) => {
                        self.filtered_out += 1;
                        Ok(None)
                    }
                    Err(panic) => {
                        let reason = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a panic without a message".into());
                        // The predicate's state is unknown now: the subscription ends.
                        self.filter = None;
                        let error = Error::FilterPanicked(reason);
                        self.finished = Some(error.clone());
                        Err(error)
                    }
                }
            }
            Event::Dropped { count, .. } => {
                self.dropped += count;
                Ok(None)
            }
            Event::Gap {
                missed, resume_seq, ..
            } => {
                self.missed += missed;
                self.last_gap = Some(Gap {
                    topic: self.subject.clone(),
                    missed,
                    resume_seq,
                });
                Ok(None)
            }
            Event::Ended { error, .. } => {
                let error = Error::Ended(error);
                self.finished = Some(error.clone());
                Err(error)
            }
            Event::Reply {
                result: Err(error), ..
            } => {
                if self.ack_errors.len() == ASYNC_ERRORS_MAX {
                    self.ack_errors.pop_front();
                }
                self.ack_errors.push_back(error);
                Ok(None)
            }
            Event::Reply { .. } | Event::Stats { .. } | Event::Notice(_) => Ok(None),
        }
    }

    /// Acknowledges one message of a subscription made with acks. Waits only while the
    /// command ring is full (a refusal comes later: [`Subscription::take_ack_errors`]).
    pub fn ack(&mut self, message: &Message) -> Result<()> {
        link::block_on(self.ack_async(message))
    }

    /// Async [`Subscription::ack`].
    pub async fn ack_async(&mut self, message: &Message) -> Result<()> {
        self.send_ack(message, AckKind::Single).await
    }

    /// Acknowledges every message up to and including this one.
    pub fn ack_through(&mut self, message: &Message) -> Result<()> {
        link::block_on(self.ack_through_async(message))
    }

    /// Async [`Subscription::ack_through`].
    pub async fn ack_through_async(&mut self, message: &Message) -> Result<()> {
        self.send_ack(message, AckKind::Cumulative).await
    }

    /// Asks for this message again at once (after `deliver_max` attempts it goes to
    /// `$dlq.<topic>`).
    pub fn nack(&mut self, message: &Message) -> Result<()> {
        link::block_on(self.nack_async(message))
    }

    /// Async [`Subscription::nack`].
    pub async fn nack_async(&mut self, message: &Message) -> Result<()> {
        self.send_ack(message, AckKind::Nack).await
    }

    async fn send_ack(&mut self, message: &Message, kind: AckKind) -> Result<()> {
        if !self.acks {
            return Err(invalid(
                ErrorCode::UnsupportedOption,
                "that subscription was not made with acks",
            ));
        }
        let request_id = self.link.request_id();
        self.link
            .push(Command::Ack {
                request_id,
                sub_id: SUBSCRIPTION_SUB_ID,
                topic: message.topic().into(),
                seq: message.seq(),
                kind,
            })
            .await
    }

    /// Refusals of acks so far (acks are not answered otherwise), oldest first.
    pub fn take_ack_errors(&mut self) -> Vec<ServerError> {
        self.ack_errors.drain(..).collect()
    }

    /// Unsubscribes and waits for the shard to confirm; messages still in flight are
    /// dropped. Dropping the subscription does the same without waiting.
    pub fn unsubscribe(self) -> Result<()> {
        link::block_on(self.unsubscribe_async())
    }

    /// Async [`Subscription::unsubscribe`].
    pub async fn unsubscribe_async(mut self) -> Result<()> {
        let command = |request_id| Command::Unsubscribe {
            request_id,
            sub_id: SUBSCRIPTION_SUB_ID,
        };
        self.link.call(command, &mut |_| {}).await.map(|_| ())
    }
}

impl Iterator for Subscription {
    type Item = Message;

    /// Blocks for the next message; ends when the subscription closes or ends.
    fn next(&mut self) -> Option<Message> {
        self.recv().ok()
    }
}

impl futures_core::Stream for Subscription {
    type Item = Result<Message>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Message>>> {
        self.get_mut().poll_recv(cx)
    }
}

fn merge_stats(parts: Vec<crate::shard::stats::ShardStats>, shards: usize) -> BusStats {
    let mut stats = BusStats {
        shards_answered: parts.len(),
        shards,
        ..Default::default()
    };
    let in_process = crate::shard::wire::Protocol::InProcess as usize;
    for part in parts {
        stats.counters.add(&part.counters);
        stats.connections += part.connections;
        stats.in_process_connections += part.connections_by_protocol[in_process];
        stats.topics.extend(part.topics);
    }
    stats.topics.sort_by(|a, b| a.name.cmp(&b.name));
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn link_and_shard(
        command_slots: usize,
    ) -> (
        Link,
        Box<link::ShardEnds>,
        crossbeam_channel::Receiver<Doorbell>,
        mio::Poll,
    ) {
        let (handle, shard, rings, poll) = link::test_pair(LinkSizes {
            command_slots,
            event_slots: 4,
        });
        let link = Link {
            ends: handle,
            next_request_id: 1,
            close_notice: None,
        };
        (link, shard, rings, poll)
    }

    fn command() -> Command {
        Command::Stats { request_id: 1 }
    }

    /// What the shard does once it has taken commands from a ring a handle waits on.
    fn shard_made_room(shard: &link::ShardEnds) {
        assert!(shard.commands.try_recv().is_some());
        if shard
            .state
            .command_room_wanted
            .swap(false, Ordering::SeqCst)
        {
            shard.state.to_handle.notify();
        }
    }

    #[test]
    fn an_async_push_on_a_full_ring_is_pending_until_the_shard_makes_room() {
        let (link, shard, _rings, _poll) = link_and_shard(1);
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(link.poll_push(command(), &mut cx).is_ok());
        let Err(Push::Full(held)) = link.poll_push(command(), &mut cx) else {
            panic!("a one-slot ring holds one command");
        };
        assert_eq!(counter.0.load(Ordering::SeqCst), 0);
        shard_made_room(&shard);
        assert_eq!(counter.0.load(Ordering::SeqCst), 1, "woken once");
        assert!(link.poll_push(held, &mut cx).is_ok());
    }

    #[test]
    fn a_blocking_push_waits_for_room_and_a_gone_shard_ends_it() {
        let (link, shard, _rings, _poll) = link_and_shard(1);
        link.send(command()).unwrap();
        let pushing = std::thread::spawn(move || {
            let second = link.send(command());
            let third = link.send(command());
            (second, third)
        });
        std::thread::sleep(Duration::from_millis(20));
        shard_made_room(&shard);
        std::thread::sleep(Duration::from_millis(20));
        drop(shard);
        let (second, third) = pushing.join().unwrap();
        assert!(second.is_ok());
        assert_eq!(third, Err(Error::Closed(None)));
    }

    #[test]
    fn errors_name_their_codes() {
        let refused = Error::Refused(ServerError {
            code_raw: ErrorCode::TopicExists.as_u16(),
            message: "exists".into(),
        });
        assert_eq!(refused.code(), Some(ErrorCode::TopicExists));
        assert_eq!(Error::Timeout.code(), None);
        assert!(refused.to_string().contains("exists"));
    }
}
