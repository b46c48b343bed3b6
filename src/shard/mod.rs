//! What one core owns: a `mio` reactor, its listener, its connections, the topics that hash
//! to it, and its ends of the rings to every other shard.
//!
//! - `event_loop`: the only caller of `poll`; accepts (native and HTTP listeners), reads,
//!   writes, timers, shutdown.
//! - `commands`: what a client asks for (publish, subscribe, ack, create/delete topic), in
//!   no protocol's words: handlers take parsed arguments and answer with `wire::Answer`s.
//! - `wire`: the seam; a connection's `Wire` (native, HTTP, WebSocket) words answers,
//!   deliveries and notices in its protocol.
//! - the connection kinds: `conn_native` (HELLO, versions, binary frames), `conn_http` (REST,
//!   the WebSocket upgrade), `conn_ws` (the two JSON dialects; the per-shard event cache).
//! - `stats`: topic lists and counters gathered from every shard over the rings; `latency`:
//!   the in-broker latency histograms they carry.
//! - `owner`: the topic-owner side (sequencing, interest) and the handling of everything that
//!   arrives over the rings.
//! - `consumers`, `retry`, `replay`, `pattern_groups`: durable consumers and groups, their
//!   retry buffers, the replay ring, acked pattern groups.
//! - `presence`: join and leave events on `$sys.presence.<topic>`.
//! - `connection`, `topics`, `sublist`: the state those work on.
//!
//! Architecture invariant: a shard's state is touched only by its own thread. Nothing here is
//! behind a lock or an atomic except the ring handoff and the shutdown flag.

mod commands;
pub mod conn_http;
mod conn_inproc;
mod conn_native;
pub mod conn_resp;
pub mod conn_ws;
pub mod connection;
pub mod consumers;
mod event_loop;
pub mod latency;
mod owner;
pub mod pattern_groups;
pub mod presence;
pub mod replay;
pub mod retry;
pub mod stats;
pub mod sublist;
pub mod topics;
pub mod wire;

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use mio::net::TcpListener;
use mio::{Poll, Token};
use slab::Slab;

use crate::config::Config;
use crate::error::{CloseReason, ErrorCode};
use crate::ids::{ConnectionId, ShardId, Subscriber};
use crate::mesh::message::OwnerRequest;
use crate::mesh::PeerLink;
use crate::protocol::native::AckKind;
use crate::protocol::topic::SubjectKind;
use connection::Connection;
use replay::ReplayLimits;
use sublist::Sublist;
use topics::{LocalSubscriptions, OwnedTopics};

const LISTENER: Token = Token(usize::MAX - 1);
const HTTP_LISTENER: Token = Token(usize::MAX - 3);
const RESP_LISTENER: Token = Token(usize::MAX - 4);
pub(crate) const WAKER_TOKEN: Token = Token(usize::MAX - 2);

/// Everything a shard thread is handed at start-up.
pub struct ShardSetup {
    pub id: ShardId,
    pub config: Arc<Config>,
    pub poll: Poll,
    /// The native port's listener, unless the shard serves only in-process handles.
    pub listener: Option<TcpListener>,
    /// The HTTP port's listener, unless `--no-http`.
    pub http_listener: Option<TcpListener>,
    /// The Redis protocol port's listener, unless `--no-resp`.
    pub resp_listener: Option<TcpListener>,
    pub links: Vec<Option<PeerLink>>,
    pub shutdown: Arc<AtomicBool>,
    /// Shared by every shard of the broker (see [`crate::mesh::PressureBoard`]).
    pub pressure: Arc<crate::mesh::PressureBoard>,
    pub core: Option<core_affinity::CoreId>,
    /// Where in-process handles ring, when the shard runs inside an embedded bus.
    pub(crate) doorbell: Option<crossbeam_channel::Receiver<crate::bus::link::Doorbell>>,
}

/// Shard-local counters: plain integers, never shared, so counting costs nothing on the hot
/// path. Aggregation across shards asks each shard over its ring.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardCounters {
    pub published: u64,
    pub delivered: u64,
    /// Deliveries dropped by the `drop-oldest` policy (the subscriber was told with DROPPED).
    pub dropped: u64,
    /// Deliveries still queued for a connection when it closed (cut as a slow consumer, gone,
    /// or shut down): the sum of the `undelivered` of every connection's close log line.
    pub undelivered: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    /// Connections closed because input they had started did not complete within
    /// `--frame-deadline-ms`.
    pub frame_deadline_closes: u64,
    /// Publishes and subscribes refused on this (owner) shard because their connection had
    /// made its share of `--topics-per-connection-max` topics (brought up to date once a
    /// second, in the topic sweep).
    pub topics_refused_per_connection: u64,
    /// Unused topics reclaimed early to make room for a new one in a full table (oldest first;
    /// brought up to date once a second).
    pub topics_reclaimed_under_pressure: u64,
    /// Of `connections_refused`, those refused for `--connections-per-ip-max`.
    pub connections_refused_per_ip: u64,
    /// Connections still in their handshake closed to make room for a new one when the shard
    /// was at its share of `--connections-max` (oldest first).
    pub handshakes_evicted: u64,
    pub slow_consumer_disconnects: u64,
    pub dead_lettered: u64,
    /// Publishes refused for being over `--publish-rate`.
    pub rate_limited: u64,
    pub protocol_errors: u64,
    /// Events for connections that were already gone (a stale token): counted no-ops.
    pub stale_events: u64,
    /// Times a publisher stopped being read because a subscriber it feeds was falling behind
    /// (`--publisher-stall-ms-max`); publishers on the subscriber's own shard only.
    pub publisher_stalls: u64,
    /// Connections closed, by reason (indexed by [`CloseReason::index`]).
    pub closed: [u64; CloseReason::ALL.len()],
    /// Requests refused, by error code (in the order of [`ErrorCode::ALL`]), on every protocol.
    pub errors: [u64; ErrorCode::ALL.len()],
    /// Times a connection stopped being read because a ring to another shard (or this shard's
    /// own delivery room) was full, until it drained: backpressure reaching a publisher.
    pub ring_full_pauses: u64,
    /// Acks (single and cumulative) applied by the topics this shard owns.
    pub acks: u64,
    /// Nacks applied by the topics this shard owns.
    pub nacks: u64,
    /// Consumer deliveries handed out again (delivery count above 1), by the owner.
    pub redelivered: u64,
    /// GAP notices queued for this shard's subscribers, and the messages they reported missed.
    pub gaps: u64,
    pub gap_missed: u64,
    /// Retained messages handed to this shard's subscribers as a replay.
    pub replayed: u64,
    /// Join and leave events published on `$sys.presence.<topic>` by this shard.
    pub presence_events: u64,
    /// Join and leave events not published: over `--presence-events-per-second-max`, or
    /// for a topic whose `$sys.presence.` name would be too long.
    pub presence_events_suppressed: u64,
}

impl ShardCounters {
    /// Adds another shard's counters to these (for broker-wide sums).
    pub fn add(&mut self, other: &ShardCounters) {
        self.published += other.published;
        self.delivered += other.delivered;
        self.dropped += other.dropped;
        self.undelivered += other.undelivered;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.connections_accepted += other.connections_accepted;
        self.connections_refused += other.connections_refused;
        self.connections_refused_per_ip += other.connections_refused_per_ip;
        self.handshakes_evicted += other.handshakes_evicted;
        self.frame_deadline_closes += other.frame_deadline_closes;
        self.topics_refused_per_connection += other.topics_refused_per_connection;
        self.topics_reclaimed_under_pressure += other.topics_reclaimed_under_pressure;
        self.slow_consumer_disconnects += other.slow_consumer_disconnects;
        self.dead_lettered += other.dead_lettered;
        self.rate_limited += other.rate_limited;
        self.protocol_errors += other.protocol_errors;
        self.stale_events += other.stale_events;
        self.publisher_stalls += other.publisher_stalls;
        for (closed, other) in self.closed.iter_mut().zip(other.closed) {
            *closed += other;
        }
        for (errors, other) in self.errors.iter_mut().zip(other.errors) {
            *errors += other;
        }
        self.ring_full_pauses += other.ring_full_pauses;
        self.acks += other.acks;
        self.nacks += other.nacks;
        self.redelivered += other.redelivered;
        self.gaps += other.gaps;
        self.gap_missed += other.gap_missed;
        self.replayed += other.replayed;
        self.presence_events += other.presence_events;
        self.presence_events_suppressed += other.presence_events_suppressed;
    }

    /// An ack the owner applied.
    fn count_ack(&mut self, kind: AckKind) {
        match kind {
            AckKind::Nack => self.nacks += 1,
            AckKind::Single | AckKind::Cumulative => self.acks += 1,
        }
    }

    /// One `key=value` field per counter, for the shutdown summary line (closes by reason
    /// as `closed_<reason>=N`, only the reasons that happened).
    pub fn fields(&self) -> Vec<(String, u64)> {
        let mut fields: Vec<(String, u64)> = [
            ("published", self.published),
            ("delivered", self.delivered),
            ("dropped", self.dropped),
            ("undelivered", self.undelivered),
            ("bytes_in", self.bytes_in),
            ("bytes_out", self.bytes_out),
            ("connections_accepted", self.connections_accepted),
            ("connections_refused", self.connections_refused),
            ("slow_consumer_disconnects", self.slow_consumer_disconnects),
            ("dead_lettered", self.dead_lettered),
            ("rate_limited", self.rate_limited),
            ("protocol_errors", self.protocol_errors),
            ("stale_events", self.stale_events),
            ("acks", self.acks),
            ("nacks", self.nacks),
            ("redelivered", self.redelivered),
            ("gaps", self.gaps),
            ("gap_missed", self.gap_missed),
            ("replayed", self.replayed),
            ("publisher_stalls", self.publisher_stalls),
            ("presence_events", self.presence_events),
            (
                "presence_events_suppressed",
                self.presence_events_suppressed,
            ),
            (
                "connections_refused_per_ip",
                self.connections_refused_per_ip,
            ),
            ("handshakes_evicted", self.handshakes_evicted),
            ("frame_deadline_closes", self.frame_deadline_closes),
            (
                "topics_refused_per_connection",
                self.topics_refused_per_connection,
            ),
            (
                "topics_reclaimed_under_pressure",
                self.topics_reclaimed_under_pressure,
            ),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        for (reason, &count) in CloseReason::ALL.iter().zip(&self.closed) {
            if count > 0 {
                fields.push((format!("closed_{reason}"), count));
            }
        }
        fields
    }
}

/// One source address's connections on a shard.
#[derive(Clone, Copy, Debug, Default)]
struct PerAddress {
    /// All of them, for `--connections-per-ip-max`.
    open: u32,
    /// Those that have not finished their handshake: while it holds any, the address gets no
    /// new connection on a full shard (see `evict_oldest_handshaking`).
    half_open: u32,
}

/// A subscribe waiting for acknowledgements from other shards before it is answered.
struct PendingSubscribe {
    subscriber: Subscriber,
    request_id: u32,
    subject: Box<str>,
    kind: SubjectKind,
    /// For a consumer subscription, so a late ack can detach it if it went away meanwhile.
    consumer: Option<Box<str>>,
    acks_remaining: u32,
    /// A shard refused a pattern group join: answer ERR and take the join back when all
    /// have answered.
    refused: Option<crate::error::ErrorCode>,
}

/// Where a client's frame could not go this turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The outbox it needs is full: stop reading this connection until the ring drains.
    Blocked,
    /// The connection is closing or gone: stop processing it.
    Stop,
}

pub struct Shard {
    id: ShardId,
    shard_count: usize,
    config: Arc<Config>,
    poll: Poll,
    listener: Option<TcpListener>,
    http_listener: Option<TcpListener>,
    resp_listener: Option<TcpListener>,
    /// One encoding per (message, event format) for text-protocol subscribers.
    events: conn_ws::EventCache,
    /// Stats gathers waiting for the slowest shard, oldest first.
    gather_deadlines: VecDeque<(Instant, crate::mesh::message::ReplyTarget)>,
    started: Instant,
    connections: Slab<Connection>,
    /// Open connections on this shard per source address, for `--connections-per-ip-max`
    /// (an entry is removed when its count reaches zero, so it holds at most one per
    /// connection).
    connections_per_ip: ahash::AHashMap<std::net::IpAddr, PerAddress>,
    next_generation: u32,
    links: Vec<Option<PeerLink>>,
    owned: OwnedTopics,
    /// Which shards subscribe to which patterns; every shard holds the whole table so that
    /// any owner can find the shards a message must reach.
    pattern_interest: Sublist<ShardId>,
    local: LocalSubscriptions,
    /// Every pattern group's members, for whichever topic this shard owns.
    pattern_groups: pattern_groups::PatternGroups,
    pending_subscribes: Slab<PendingSubscribe>,
    /// Connections with bytes to write; each is flushed once per loop turn.
    dirty: Vec<ConnectionId>,
    /// Connections waiting for room in an outbox.
    blocked: Vec<ConnectionId>,
    /// Connections whose read budget ran out while the socket still had bytes.
    read_again: Vec<ConnectionId>,
    /// Subscribers whose queue went past the stall watermark, until they drain below half
    /// of it.
    pressured: Vec<ConnectionId>,
    /// Set by a delivery that left its subscriber past the watermark, while a connection's
    /// input is being handled: that connection (the publisher) is then not read further.
    stall_reader: bool,
    /// A connection's input is being handled: a subscriber it pushes past the watermark
    /// stalls it directly (`stall_reader`), with no word to the topic's owner.
    reading: bool,
    /// Publishers of pressed topics this shard owns, held in leases renewed while the topic
    /// stays pressed (see `Shard::stall_lease`).
    publisher_holds: Vec<PublisherHold>,
    /// This shard's publishers paused for a lease (each until its `lease_until`).
    leased_stalls: Vec<ConnectionId>,
    /// The earliest `lease_until` among them.
    next_lease_end: Option<Instant>,
    /// Publishers not being read because a subscriber they feed is past the watermark.
    stalled_readers: Vec<ConnectionId>,
    /// When the stalled publishers are read again even if the pressed subscribers have not
    /// drained: `--publisher-stall-ms-max` after they last made progress.
    stall_deadline: Option<Instant>,
    handshake_deadlines: VecDeque<(Instant, ConnectionId)>,
    /// `--frame-deadline-ms`: a connection is pushed when its read buffer starts holding
    /// incomplete input (not on every read), so the queue holds at most one live entry per
    /// connection; an entry whose connection made progress meanwhile is pushed again at its
    /// new deadline when it comes up.
    frame_deadlines: VecDeque<(Instant, ConnectionId)>,
    /// When this loop turn's events came in (no extra clock read: the loop reads it anyway);
    /// what `partial_since` records.
    turn_now: Instant,
    /// A connection was held back by `--write-coalesce-us` in the last flush.
    holding_writes: bool,
    /// Readiness events per turn, averaged over about 16 turns, times 16.
    ready_average_x16: u32,
    /// Wall-clock time (Unix ns), read once per socket read, ring batch and loop turn rather
    /// than once per message (a clock read cost about 110 instructions, a twentieth of a
    /// native publish). A PUBLISH handled from a read takes it as its read time, where its
    /// delivery latency starts and which becomes its publish time; a frame handled later (its
    /// connection was blocked) gets a later reading, never one before its bytes arrived, so
    /// replay-from-a-time misses nothing. The owner's `now` for what it sequences is the same
    /// reading, at most one loop turn old; timestamps along a topic still never decrease
    /// (`OwnedTopics::sequence` takes the larger of the publish time and the last).
    clock_ns: u64,
    linger_deadlines: VecDeque<(Instant, ConnectionId)>,
    /// A batch of owner requests from each peer that could not be finished for lack of
    /// terminal room; resumed before the ring is read again, so order holds.
    stalled_requests: Vec<Option<std::vec::IntoIter<OwnerRequest>>>,
    encode_scratch: Vec<u8>,
    match_scratch: Vec<Subscriber>,
    consumer_actions: Vec<consumers::ConsumerAction>,
    counters: ShardCounters,
    latency: latency::ShardLatency,
    /// Join and leave events noted this turn, for topics with presence on.
    presence: presence::PresenceEvents,
    shutdown_flag: Arc<AtomicBool>,
    pressure_board: Arc<crate::mesh::PressureBoard>,
    /// While subscribers here press (an episode): when one was last newly pressed (Unix ns).
    pressure_board_since_ns: Option<u64>,
    /// This shard's bit is up on the pressure board.
    pressure_board_set: bool,
    /// When the pressed topics are next told to their owners again (Unix ns).
    next_pressure_renewal_ns: u64,
    shutdown_deadline: Option<Instant>,
    /// When consumer redeliveries and expiries are next checked.
    next_consumer_timer: Instant,
    /// Where in-process handles ring (an embedded bus only).
    doorbell: Option<crossbeam_channel::Receiver<crate::bus::link::Doorbell>>,
    /// In-process connections by the key their handles ring with.
    in_process: ahash::AHashMap<u64, ConnectionId>,
}

impl Shard {
    pub fn new(setup: ShardSetup) -> Shard {
        let config = setup.config;
        let shard_count = setup.links.len();
        let mut shard = Shard {
            id: setup.id,
            shard_count,
            poll: setup.poll,
            listener: setup.listener,
            http_listener: setup.http_listener,
            resp_listener: setup.resp_listener,
            events: conn_ws::EventCache::default(),
            gather_deadlines: VecDeque::new(),
            started: Instant::now(),
            connections: Slab::with_capacity(
                config.connections_per_shard_max()
                    + config.connections_loopback_reserve_per_shard(),
            ),
            connections_per_ip: ahash::AHashMap::new(),
            next_generation: 0,
            stalled_requests: (0..shard_count).map(|_| None).collect(),
            links: setup.links,
            owned: OwnedTopics::new(
                shard_count,
                config.topics_per_shard_max(),
                ReplayLimits {
                    messages_max: config.replay_messages_max,
                    bytes_max: config.replay_bytes_max,
                    ttl_ns: config.replay_ttl_ms.saturating_mul(1_000_000),
                },
            ),
            pattern_interest: Sublist::new(0),
            local: LocalSubscriptions::new(config.pattern_cache_entries_max),
            pattern_groups: pattern_groups::PatternGroups::new(config.pattern_cache_entries_max),
            pending_subscribes: Slab::new(),
            dirty: Vec::new(),
            blocked: Vec::new(),
            read_again: Vec::new(),
            pressured: Vec::new(),
            stall_reader: false,
            reading: false,
            publisher_holds: Vec::new(),
            leased_stalls: Vec::new(),
            next_lease_end: None,
            stalled_readers: Vec::new(),
            stall_deadline: None,
            handshake_deadlines: VecDeque::new(),
            frame_deadlines: VecDeque::new(),
            turn_now: Instant::now(),
            holding_writes: false,
            ready_average_x16: 0,
            clock_ns: commands::unix_time_ns(),
            linger_deadlines: VecDeque::new(),
            encode_scratch: Vec::new(),
            match_scratch: Vec::new(),
            consumer_actions: Vec::new(),
            counters: ShardCounters::default(),
            latency: latency::ShardLatency::default(),
            presence: presence::PresenceEvents::default(),
            shutdown_flag: setup.shutdown,
            pressure_board: setup.pressure,
            pressure_board_since_ns: None,
            pressure_board_set: false,
            next_pressure_renewal_ns: 0,
            shutdown_deadline: None,
            next_consumer_timer: Instant::now(),
            doorbell: setup.doorbell,
            in_process: ahash::AHashMap::new(),
            config,
        };
        shard
            .owned
            .set_consumers_max(shard.config.consumers_per_shard_max());
        shard
            .owned
            .set_created_max(shard.config.created_topics_per_shard_max());
        shard.owned.set_auto_create(shard.config.auto_create_topics);
        shard
            .owned
            .set_creations_per_connection_max(shard.config.topics_per_connection_per_shard_max());
        shard
    }

    fn owner_of(&self, topic: &str) -> ShardId {
        ShardId(crate::protocol::topic::owner_shard(topic, self.shard_count) as u16)
    }

    /// The HTTP port's bound address, if it is on (to point clients there).
    fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http_listener.as_ref()?.local_addr().ok()
    }

    /// The Redis port's bound address, if it is on (and still open: not during shutdown).
    fn resp_addr(&self) -> Option<std::net::SocketAddr> {
        self.resp_listener.as_ref()?.local_addr().ok()
    }

    fn connection_mut(&mut self, id: ConnectionId) -> Option<&mut Connection> {
        self.connections
            .get_mut(id.index as usize)
            .filter(|conn| conn.id == id)
    }

    fn link_mut(&mut self, peer: ShardId) -> &mut PeerLink {
        self.links[peer.index()]
            .as_mut()
            .expect("a shard has a link to every other shard")
    }

    fn peers_mut(&mut self) -> impl Iterator<Item = &mut PeerLink> {
        self.links.iter_mut().flatten()
    }

    /// The connection finished its handshake (or never had one): it no longer counts as
    /// half-open for its address.
    fn handshake_done(&mut self, id: ConnectionId) {
        let Some(conn) = self
            .connections
            .get_mut(id.index as usize)
            .filter(|conn| conn.id == id)
        else {
            return;
        };
        if !std::mem::take(&mut conn.half_open) {
            return;
        }
        if let Some(count) = self.connections_per_ip.get_mut(&conn.peer.ip()) {
            count.half_open -= 1;
        }
    }

    fn mark_dirty(&mut self, id: ConnectionId) {
        if let Some(conn) = self.connection_mut(id) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(id);
            }
        }
    }
}

/// A publisher held back because a topic it publishes to is pressed: on `shard` (this one or
/// another), renewed every renewal period (`renewed_ns`, Unix ns) while the topic stays pressed.
struct PublisherHold {
    topic: Box<str>,
    shard: ShardId,
    connection: ConnectionId,
    renewed_ns: u64,
}
