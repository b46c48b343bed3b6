//! One bench thread: a single `mio` loop over all of its connections, publishers and
//! subscribers alike, with large reads and batched writes. Threads share nothing but a few
//! atomics (start time, progress, the end-of-run bookkeeping) and hand their results back
//! when they finish.
//!
//! A thread's life: connect and set up every connection (handshake, subscriptions, each
//! confirmed), report ready, wait for the common start time, publish until the end, flush
//! (every publish confirmed by a PONG or its Redis reply), report what it sent, then keep
//! reading until every expected delivery has arrived everywhere or deliveries stop for
//! [`DRAIN_IDLE_NS`]. With `--prefill N` the set-up has three steps instead: handshakes only;
//! then the publishers publish their `N` messages per topic, each confirmed with its topic
//! sequence number, and every thread waits for all the others to finish that; then the
//! subscriptions (see [`super::replay`]).
//!
//! A closed-loop publisher is windowed by default: at most `--pipeline` publishes unconfirmed,
//! confirmed a batch at a time. With `--unwindowed` it asks for nothing until the end: it adds
//! messages while its output buffer holds less than `OUT_PENDING_MAX` and writes until the
//! socket would block, so that only TCP pushes back, as with NATS clients. Redis still
//! answers every `PUBLISH`; those replies are read and counted but never waited for. The
//! accounting is unchanged: a message counts as published when it is stamped and buffered,
//! every buffered byte is written before the end-of-run confirmation (one PING, or the last
//! Redis reply), and the subscribers judge loss, duplicates and order as always.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::accounting::{PayloadHeader, Seen, SeqSet, SeqTracker};
use super::latency::{Clock, Latency, Schedule};
use super::replay;
use super::scenario::Scenario;
use super::wire::{self, Endpoint, Event, PublishTemplate, Role, Target};
use crate::protocol::native::FRAME_OVERHEAD_MAX;
use crate::protocol::subscribe_options::{AckSettings, Sharing, Start, SubscribeOptions};

const MS: u64 = 1_000_000;
const SECOND: u64 = 1_000_000_000;
/// Setting up every connection (connect, handshake, subscriptions) must take less than this.
pub const SETUP_TIMEOUT_NS: u64 = 15 * SECOND;
/// After the end, publishers have this long to get every publish confirmed.
const FLUSH_TIMEOUT_NS: u64 = 10 * SECOND;
/// The drain ends once no delivery has arrived anywhere for this long...
pub const DRAIN_IDLE_NS: u64 = 2 * SECOND;
/// ... or, whatever happens, this long after the end.
const DRAIN_MAX_NS: u64 = 30 * SECOND;
/// The prefill fails when no publish has been confirmed for this long.
const PREFILL_STALL_NS: u64 = 10 * SECOND;
/// A subscriber's read buffer (it grows for frames larger than this).
const SUB_READ_BYTES: usize = 256 * 1024;
/// A publisher only reads replies.
const PUB_READ_BYTES: usize = 64 * 1024;
/// With `--subscriber-delay-us`, each read takes at most this much.
const THROTTLED_READ_BYTES: usize = 4096;
/// Bytes one connection may read per loop turn before the others get their turn.
const READ_TURN_BYTES: usize = 1024 * 1024;
/// A publisher stops adding messages while this much is still unwritten.
const OUT_PENDING_MAX: usize = 512 * 1024;
/// When the next timed event is closer than this, poll without blocking (epoll's timeout is
/// in whole milliseconds, too coarse for an open-loop schedule).
const SPIN_NS: u64 = 1_200_000;
/// The longest a loop sleeps, so that it notices the other threads' progress.
const TICK_NS: u64 = 10 * MS;
/// How often a thread publishes its counters to the shared atomics.
const SYNC_NS: u64 = MS;
/// Distinct error texts kept per thread (all are counted).
const ERRORS_KEPT: usize = 32;

/// Read-only for every thread.
#[derive(Debug)]
pub struct Plan {
    pub scenario: Scenario,
    pub endpoint: Endpoint,
    pub topic_names: Vec<String>,
    pub subscribers_per_topic: Vec<u64>,
    pub clock: Clock,
    pub threads: usize,
    /// Pause between reads of one subscriber (a testing aid that makes subscribers slow).
    pub subscriber_delay_us: u64,
    /// How subscribers subscribe (corebus only): plain, durable with acks, in a group.
    pub delivery: Delivery,
    /// `--prefill`: messages each publisher publishes to each of its topics before the
    /// subscribers subscribe (corebus only). Their payload sequence numbers are `0..prefill`,
    /// which is how a subscriber tells a replayed message from a live one.
    pub prefill: u64,
}

/// corebus v2 delivery modes for the subscribers (`--ack`, `--group`).
#[derive(Clone, Debug, Default)]
pub struct Delivery {
    /// `--ack`: durable consumers (or group members) that acknowledge what they receive.
    pub acks: Option<AckSettings>,
    /// `--group NAME`: every subscriber joins this group on each of its topics, so each message
    /// goes to one member.
    pub group: Option<String>,
    /// The run's tag, which makes consumer names unique per run.
    pub run_tag: String,
    /// `--start`: where every subscription starts in its topic's history.
    pub start: Start,
}

impl Delivery {
    /// The SUBSCRIBE options of subscriber `s`: a group member, else with acks a durable
    /// consumer `bench-<run>-s<s>`, else none.
    pub fn options(&self, subscriber: usize) -> SubscribeOptions {
        let sharing = match (&self.group, self.acks) {
            (Some(group), _) => Sharing::Group(group.clone()),
            (None, Some(_)) => Sharing::Consumer(format!("bench-{}-s{subscriber}", self.run_tag)),
            (None, None) => Sharing::None,
        };
        SubscribeOptions {
            start: self.start,
            sharing,
            acks: self.acks,
        }
    }
}

/// The few things threads share.
#[derive(Debug, Default)]
pub struct Shared {
    /// A thread failed to set up; everyone stops.
    pub abort: AtomicBool,
    /// Threads whose connections are all set up.
    pub ready: AtomicUsize,
    /// `--prefill`: threads whose publishers have every prefill message confirmed.
    pub prefilled: AtomicUsize,
    /// Common start time on the plan's clock; 0 until the orchestrator sets it.
    pub start_ns: AtomicU64,
    /// Messages written so far, all threads (progress).
    pub published: AtomicU64,
    /// Distinct messages delivered so far, all threads (progress and drain).
    pub delivered: AtomicU64,
    /// Threads whose publishers are all flushed and whose sent counts are in `expected`.
    pub flushed: AtomicUsize,
    /// Deliveries expected, from the flushed threads' publishers.
    pub expected: AtomicU64,
    /// Threads that finished.
    pub finished: AtomicUsize,
}

/// What one thread hands back.
#[derive(Debug)]
pub struct ThreadOutput {
    pub latency: Histogram<u64>,
    /// Per publisher: (publisher index, [(topic, messages sent)]).
    pub sent: Vec<(u32, Vec<(u32, u64)>)>,
    /// Per subscriber: (subscriber index, its trackers, slot `j * publishers_per_topic + k`).
    /// Empty with `--group`, whose members keep `sets` instead.
    pub trackers: Vec<(u32, Vec<SeqTracker>)>,
    /// `--group`: per member, the same slots as `trackers`, merged over the group at the end.
    pub sets: Vec<(u32, Vec<SeqSet>)>,
    pub counters: Counters,
    pub errors: Vec<String>,
    /// `--prefill`, per publisher: (publisher index, [(topic, the topic sequence number of
    /// each of its prefill messages there, in order)]).
    pub prefill_seqs: Vec<(u32, Vec<TopicPrefill>)>,
    /// Per subscriber: what its subscriptions replayed, by slot `j` (subscription order).
    pub replays: Vec<(u32, Vec<SubscriptionReplay>)>,
    pub timing: ReplayTiming,
}

impl ThreadOutput {
    /// A subscriber's accounting at the end of its thread (the network's or the in-process
    /// driver's).
    pub(super) fn add_subscriber(&mut self, plan: &Plan, timing: &mut ReplayTiming, s: Subscriber) {
        timing.last_replay_ns = timing.last_replay_ns.max(s.last_replay_ns);
        self.replays.push((s.index, s.replay));
        if plan.delivery.group.is_some() {
            self.sets.push((s.index, s.sets));
        } else {
            self.trackers.push((s.index, s.trackers));
        }
    }

    /// The thread's timing, latency, counters and errors, once its connections are counted.
    pub(super) fn finish(mut self, timing: ReplayTiming, ctx: Ctx<'_>) -> ThreadOutput {
        self.timing = timing;
        self.latency = ctx.latency.into_histogram();
        self.counters = ctx.counters;
        self.errors = ctx.errors;
        self
    }
}

/// A topic index and the topic sequence numbers of one publisher's prefill messages there.
pub type TopicPrefill = (u32, Vec<u64>);

/// What one subscription saw of its replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriptionReplay {
    /// The lowest topic sequence number among the replayed (prefill) messages it got;
    /// `u64::MAX` if none.
    pub first_replayed_seq: u64,
    /// Messages the broker's GAP frames said it had already evicted.
    pub gap_missed: u64,
}

impl Default for SubscriptionReplay {
    fn default() -> Self {
        SubscriptionReplay {
            first_replayed_seq: u64::MAX,
            gap_missed: 0,
        }
    }
}

/// One thread's replay milestones on the plan's clock, 0 where they did not happen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayTiming {
    /// The first prefill publish written.
    pub prefill_start_ns: u64,
    /// The last prefill publish confirmed.
    pub prefill_end_ns: u64,
    /// The subscriptions written.
    pub subscribe_ns: u64,
    /// The last replayed (prefill) message received.
    pub last_replay_ns: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages written, whole run.
    pub published: u64,
    /// Messages whose send time (scheduled time in open loop) fell in the measured window.
    pub published_window: u64,
    /// Messages received, duplicates included.
    pub received: u64,
    /// Messages received during the measured window.
    pub delivered_window: u64,
    /// Deliveries the broker marked as redeliveries (corebus `delivery_count > 1`), whether
    /// or not the first delivery had arrived.
    pub redelivered: u64,
    /// Deliveries on a topic the subscriber did not subscribe to, or whose wire topic
    /// disagrees with the payload's.
    pub misrouted: u64,
    /// Deliveries whose payload is not what a publisher sent (size, header).
    pub corrupt: u64,
    /// Losses the target itself reported (corebus DROPPED).
    pub dropped_reported: u64,
    /// Messages corebus said it had already evicted when a subscription asked for them (GAP).
    pub gap_missed: u64,
    /// `--prefill` messages published and confirmed.
    pub prefilled: u64,
    /// Open loop: messages due before the end that the publishers never got to send.
    pub behind_schedule: u64,
    /// Errors the target reported, and connections lost.
    pub errors: u64,
    /// Publishes the target answered with an error.
    pub publish_errors: u64,
    /// The fewest messages one publisher sent in the measured window (None: no publisher).
    pub publisher_window_least: Option<u64>,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.published += o.published;
        self.published_window += o.published_window;
        self.received += o.received;
        self.delivered_window += o.delivered_window;
        self.redelivered += o.redelivered;
        self.misrouted += o.misrouted;
        self.corrupt += o.corrupt;
        self.dropped_reported += o.dropped_reported;
        self.gap_missed += o.gap_missed;
        self.prefilled += o.prefilled;
        self.behind_schedule += o.behind_schedule;
        self.errors += o.errors;
        self.publish_errors += o.publish_errors;
        self.publisher_window_least = match (self.publisher_window_least, o.publisher_window_least)
        {
            (Some(mine), Some(theirs)) => Some(mine.min(theirs)),
            (mine, theirs) => mine.or(theirs),
        };
    }
}

/// Which connections a thread runs, and where.
#[derive(Clone, Debug, Default)]
pub struct Assignment {
    pub index: usize,
    pub core: Option<usize>,
    pub publishers: Vec<usize>,
    pub subscribers: Vec<usize>,
}

struct Publisher {
    index: u32,
    topics: Vec<u32>,
    templates: Vec<PublishTemplate>,
    next_seq: Vec<u64>,
    round_robin: usize,
    /// Messages written.
    sent: u64,
    /// Messages whose send time fell in the measured window.
    sent_window: u64,
    /// Written but not yet confirmed (PONG or Redis reply).
    unconfirmed: u64,
    /// Written since the last PING.
    since_ping: u64,
    /// Messages each outstanding PING confirms, oldest first.
    pings: VecDeque<u64>,
    ping_id: u32,
    schedule: Option<Schedule>,
    done: bool,
    /// xorshift64 state for WebSocket masking keys, one per frame.
    mask_state: u64,
    /// `--prefill`: confirmed-publish templates by slot (empty without a prefill).
    confirmed: Vec<PublishTemplate>,
    /// Prefill publishes written; the `i`-th goes to slot `i % topics` with payload sequence
    /// `i / topics`, and is its confirm's tag.
    prefill_written: u64,
    prefill_confirmed: u64,
    /// Per slot, the topic sequence number each prefill message was given.
    prefill_seqs: Vec<Vec<u64>>,
}

pub(super) struct Subscriber {
    pub(super) index: u32,
    pub(super) first_topic: u32,
    /// Plain subscriptions and durable consumers; empty in a group.
    pub(super) trackers: Vec<SeqTracker>,
    /// Group members: same slots as `trackers`.
    pub(super) sets: Vec<SeqSet>,
    /// The subscription ids (= topic indexes), by slot `j`.
    pub(super) sub_ids: Vec<u32>,
    /// `--ack`: per slot `j`, the highest topic sequence number received since the last ACK,
    /// plus one (0: nothing to acknowledge).
    pub(super) ack_through: Vec<u64>,
    /// Slots with something in `ack_through`, so that queuing acks touches only those.
    pub(super) ack_dirty: Vec<u32>,
    /// Per slot `j`: what the subscription replayed.
    pub(super) replay: Vec<SubscriptionReplay>,
    pub(super) last_replay_ns: u64,
}

enum Kind {
    Pub(Box<Publisher>),
    Sub(Box<Subscriber>),
}

struct Conn {
    stream: TcpStream,
    kind: Kind,
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    out: Vec<u8>,
    out_pos: usize,
    readable: bool,
    writable: bool,
    open: bool,
    /// Replies still awaited before the connection is set up.
    setup_pending: u32,
    hello_seen: bool,
    frame_max: usize,
    read_max: usize,
    next_read_ns: u64,
    /// WebSocket targets: the upgrade and the framing.
    ws: Option<Box<wire::ws::Link>>,
}

impl Conn {
    fn label(&self) -> String {
        match &self.kind {
            Kind::Pub(p) => format!("publisher {}", p.index),
            Kind::Sub(s) => format!("subscriber {}", s.index),
        }
    }

    fn out_pending(&self) -> usize {
        self.out.len() - self.out_pos
    }
}

/// Everything a thread's handlers touch besides the connection itself.
pub(super) struct Ctx<'a> {
    pub(super) plan: &'a Plan,
    pub(super) target: Target,
    pub(super) counters: Counters,
    pub(super) latency: Latency,
    pub(super) errors: Vec<String>,
    /// Measured window: [window_start, window_end).
    pub(super) window_start: u64,
    pub(super) window_end: u64,
    pub(super) unique: u64,
    pub(super) publishers_per_topic: usize,
}

impl Subscriber {
    /// Subscriber `index`'s accounting: a tracker (or, in a group, a set) per (subscription,
    /// publisher) slot.
    pub(super) fn new(plan: &Plan, index: usize) -> Subscriber {
        let scenario = &plan.scenario;
        let topics = scenario.subscriber_topics(index);
        let slots = topics.len() * scenario.publishers_per_topic_max();
        let grouped = plan.delivery.group.is_some();
        let acked = plan.delivery.acks.is_some();
        Subscriber {
            index: index as u32,
            first_topic: scenario.subscriber_first_topic(index),
            trackers: vec![SeqTracker::default(); if grouped { 0 } else { slots }],
            sets: vec![SeqSet::default(); if grouped { slots } else { 0 }],
            ack_through: vec![0; if acked { topics.len() } else { 0 }],
            ack_dirty: Vec::new(),
            replay: vec![SubscriptionReplay::default(); topics.len()],
            last_replay_ns: 0,
            sub_ids: topics,
        }
    }
}

impl<'a> Ctx<'a> {
    /// A thread's context before the start: no measured window yet.
    pub(super) fn new(plan: &'a Plan) -> Ctx<'a> {
        Ctx {
            plan,
            target: plan.endpoint.target,
            counters: Counters::default(),
            latency: Latency::new(u64::MAX),
            errors: Vec::new(),
            window_start: u64::MAX,
            window_end: u64::MAX,
            unique: 0,
            publishers_per_topic: plan.scenario.publishers_per_topic_max(),
        }
    }
}

impl Ctx<'_> {
    pub(super) fn error(&mut self, text: String) {
        self.counters.errors += 1;
        if self.errors.len() < ERRORS_KEPT && !self.errors.contains(&text) {
            self.errors.push(text);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Setup,
    Running,
    Flushing,
    Draining,
}

/// Runs one bench thread to completion. Errors are setup failures; problems during the run
/// are counted and reported in the output instead.
pub fn run_thread(
    plan: &Plan,
    assignment: &Assignment,
    shared: &Shared,
) -> Result<ThreadOutput, String> {
    let result = run_thread_inner(plan, assignment, shared);
    if result.is_err() {
        shared.abort.store(true, Ordering::Release);
    }
    shared.finished.fetch_add(1, Ordering::AcqRel);
    result
}

fn connect(addr: SocketAddr, recv_buffer: Option<usize>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes)?;
    }
    socket.connect_timeout(&addr.into(), Duration::from_secs(5))?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    Ok(TcpStream::from_std(socket.into()))
}

fn run_thread_inner(
    plan: &Plan,
    assignment: &Assignment,
    shared: &Shared,
) -> Result<ThreadOutput, String> {
    if let Some(core) = assignment.core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            return Err(format!("cannot pin bench thread to CPU {core}"));
        }
    }
    let scenario = &plan.scenario;
    let target = plan.endpoint.target;
    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut conns: Vec<Conn> = Vec::new();
    let throttled = plan.subscriber_delay_us > 0;

    let roles = assignment
        .publishers
        .iter()
        .map(|&p| (Role::Publisher, p))
        .chain(
            assignment
                .subscribers
                .iter()
                .map(|&s| (Role::Subscriber, s)),
        );
    for (role, index) in roles {
        let recv_buffer = (role == Role::Subscriber && throttled).then_some(16 * 1024);
        let mut stream = connect(plan.endpoint.addr, recv_buffer)
            .map_err(|e| format!("cannot connect to {}: {e}", plan.endpoint.text))?;
        let token = Token(conns.len());
        poll.registry()
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| format!("register: {e}"))?;
        let mut out = Vec::with_capacity(64 * 1024);
        let (kind, name, subscriptions) = match role {
            Role::Publisher => {
                let topics = scenario.publisher_topics(index);
                let templates = topics
                    .iter()
                    .map(|&t| {
                        PublishTemplate::new(target, &plan.topic_names[t as usize], scenario.size)
                    })
                    .collect();
                let prefilling = plan.prefill > 0;
                let confirmed = topics
                    .iter()
                    .filter(|_| prefilling)
                    .map(|&t| {
                        PublishTemplate::confirmed(&plan.topic_names[t as usize], scenario.size)
                    })
                    .collect();
                let publisher = Publisher {
                    index: index as u32,
                    next_seq: vec![0; topics.len()],
                    prefill_seqs: vec![vec![0; plan.prefill as usize]; topics.len()],
                    confirmed,
                    prefill_written: 0,
                    prefill_confirmed: 0,
                    topics,
                    templates,
                    round_robin: 0,
                    sent: 0,
                    sent_window: 0,
                    unconfirmed: 0,
                    since_ping: 0,
                    pings: VecDeque::new(),
                    ping_id: 1,
                    schedule: None,
                    done: false,
                    mask_state: rand::random::<u64>() | 1,
                };
                (
                    Kind::Pub(Box::new(publisher)),
                    format!("bench-pub-{index}"),
                    Vec::new(),
                )
            }
            Role::Subscriber => {
                let topics = scenario.subscriber_topics(index);
                let subscriptions: Vec<(u32, String)> = topics
                    .iter()
                    .map(|&t| (t, plan.topic_names[t as usize].clone()))
                    .collect();
                let subscriber = Subscriber::new(plan, index);
                (
                    Kind::Sub(Box::new(subscriber)),
                    format!("bench-sub-{index}"),
                    subscriptions,
                )
            }
        };
        let options = match role {
            Role::Subscriber => plan.delivery.options(index),
            Role::Publisher => SubscribeOptions::default(),
        };
        // With a prefill, subscriptions wait until every prefill message is sequenced.
        let subscriptions = if plan.prefill > 0 {
            Vec::new()
        } else {
            subscriptions
        };
        let frame_max = wire::COREBUS_FRAME_MAX_DEFAULT.max(scenario.size + FRAME_OVERHEAD_MAX);
        let mut ws = wire::ws::Link::for_target(target, frame_max).map(Box::new);
        let setup_pending = match &mut ws {
            // The set-up frames wait in the link for the 101 (RFC 6455 §4.1).
            Some(link) => {
                link.encode_upgrade(&plan.endpoint.authority, &mut out);
                let mut frames = Vec::new();
                let replies = wire::encode_setup_with(
                    target,
                    role,
                    &name,
                    &subscriptions,
                    &options,
                    &mut frames,
                );
                link.hold_until_upgraded(frames);
                1 + replies
            }
            None => {
                wire::encode_setup_with(target, role, &name, &subscriptions, &options, &mut out)
            }
        };
        let read_max = match role {
            Role::Publisher => PUB_READ_BYTES,
            Role::Subscriber if throttled => THROTTLED_READ_BYTES,
            Role::Subscriber => SUB_READ_BYTES,
        };
        conns.push(Conn {
            stream,
            kind,
            rbuf: vec![0; read_max.max(PUB_READ_BYTES)],
            rpos: 0,
            rlen: 0,
            out,
            out_pos: 0,
            readable: false,
            writable: true,
            open: true,
            setup_pending,
            hello_seen: false,
            frame_max,
            read_max,
            next_read_ns: 0,
            ws,
        });
    }

    let clock = plan.clock;
    let mut ctx = Ctx::new(plan);
    let mut events = Events::with_capacity(1024);
    let filler = vec![b'x'; scenario.size - target.stamp_len()];

    // Set-up: every connection handshaken and subscribed, each confirmed by the target.
    let mut timing = ReplayTiming {
        subscribe_ns: clock.now_ns(),
        ..ReplayTiming::default()
    };
    settle(&mut poll, &mut events, &mut conns, &mut ctx, shared)?;
    if plan.prefill > 0 {
        (timing.prefill_start_ns, timing.prefill_end_ns) = prefill(
            &mut poll,
            &mut events,
            &mut conns,
            &mut ctx,
            shared,
            &filler,
        )?;
        timing.subscribe_ns = clock.now_ns();
        for conn in conns.iter_mut() {
            if let Kind::Sub(sub) = &conn.kind {
                let index = sub.index as usize;
                let subscriptions: Vec<(u32, String)> = sub
                    .sub_ids
                    .iter()
                    .map(|&t| (t, plan.topic_names[t as usize].clone()))
                    .collect();
                conn.setup_pending += wire::encode_corebus_subscriptions(
                    &subscriptions,
                    &plan.delivery.options(index),
                    &mut conn.out,
                );
            }
        }
        settle(&mut poll, &mut events, &mut conns, &mut ctx, shared)?;
    }

    let (start_ns, end_ns) = wait_for_start(shared, clock, &mut ctx)?;
    if !scenario.closed_loop() {
        for conn in conns.iter_mut() {
            if let Kind::Pub(p) = &mut conn.kind {
                p.schedule = Some(Schedule::new(
                    start_ns,
                    scenario.rate,
                    scenario.publishers as u64,
                    u64::from(p.index),
                ));
            }
        }
    }

    let mut phase = Phase::Running;
    let mut flush_deadline = u64::MAX;
    let mut drain_deadline = u64::MAX;
    let mut last_sync = 0u64;
    let mut synced_published = 0u64;
    let mut synced_unique = 0u64;
    let mut global_delivered = 0u64;
    let mut global_changed_at = 0u64;
    loop {
        let now = clock.now_ns();
        let timeout = next_timeout(
            &conns,
            phase,
            now,
            end_ns,
            scenario.unwindowed && scenario.closed_loop(),
        );
        poll.poll(&mut events, Some(timeout))
            .map_err(|e| format!("poll: {e}"))?;
        mark_ready(&events, &mut conns);

        for conn in conns.iter_mut() {
            // The clock only for throttled subscribers: with thousands of connections, a clock
            // read per connection per turn was a fifth of the bench's time.
            if conn.readable
                && conn.open
                && (conn.next_read_ns == 0 || conn.next_read_ns <= clock.now_ns())
            {
                read_conn(conn, &mut ctx, phase, clock);
            }
        }

        let now = clock.now_ns();
        if phase == Phase::Running && now >= end_ns {
            phase = Phase::Flushing;
            flush_deadline = now + FLUSH_TIMEOUT_NS;
            for conn in conns.iter_mut() {
                if let Kind::Pub(p) = &mut conn.kind {
                    if let Some(schedule) = p.schedule {
                        let due = schedule.due(end_ns - 1);
                        ctx.counters.behind_schedule += due.saturating_sub(p.sent);
                    }
                    if target.confirms_with_ping() && p.since_ping > 0 {
                        send_ping(p, target, &mut conn.out);
                    }
                }
            }
        }
        if phase == Phase::Running {
            for conn in conns.iter_mut() {
                if conn.open && matches!(conn.kind, Kind::Pub(_)) {
                    publish_turn(conn, &mut ctx, &filler, clock.now_ns(), end_ns);
                }
            }
        }
        flush_all(&mut conns, &mut ctx);

        let now = clock.now_ns();
        if phase == Phase::Flushing {
            let mut all_done = true;
            for conn in conns.iter_mut() {
                let (open, pending) = (conn.open, conn.out_pending());
                if let Kind::Pub(p) = &mut conn.kind {
                    if !open || (p.unconfirmed == 0 && pending == 0) {
                        p.done = true;
                    }
                    all_done &= p.done;
                }
            }
            let timed_out = now > flush_deadline;
            if all_done || timed_out {
                if timed_out && !all_done {
                    ctx.error(format!(
                        "publishers were not confirmed within {} s of the end",
                        FLUSH_TIMEOUT_NS / SECOND
                    ));
                }
                let expected: u64 = conns
                    .iter()
                    .filter_map(|c| match &c.kind {
                        Kind::Pub(p) => Some(p),
                        Kind::Sub(_) => None,
                    })
                    .map(|p| drain_expected(plan, p))
                    .sum();
                shared.expected.fetch_add(expected, Ordering::AcqRel);
                shared.flushed.fetch_add(1, Ordering::AcqRel);
                phase = Phase::Draining;
                drain_deadline = end_ns + DRAIN_MAX_NS;
                global_changed_at = now;
            }
        }

        if now - last_sync >= SYNC_NS || phase == Phase::Draining {
            last_sync = now;
            let published = ctx.counters.published;
            if published != synced_published {
                shared
                    .published
                    .fetch_add(published - synced_published, Ordering::Relaxed);
                synced_published = published;
            }
            if ctx.unique != synced_unique {
                shared
                    .delivered
                    .fetch_add(ctx.unique - synced_unique, Ordering::AcqRel);
                synced_unique = ctx.unique;
            }
        }

        if phase == Phase::Draining {
            let delivered = shared.delivered.load(Ordering::Acquire);
            if delivered != global_delivered {
                global_delivered = delivered;
                global_changed_at = now;
            }
            let all_flushed = shared.flushed.load(Ordering::Acquire) == plan.threads;
            let complete = all_flushed && delivered >= shared.expected.load(Ordering::Acquire);
            if complete || now - global_changed_at > DRAIN_IDLE_NS || now > drain_deadline {
                break;
            }
        }
    }

    let mut output = ThreadOutput {
        latency: Histogram::new(3).expect("valid histogram"),
        sent: Vec::new(),
        trackers: Vec::new(),
        sets: Vec::new(),
        counters: Counters::default(),
        errors: Vec::new(),
        prefill_seqs: Vec::new(),
        replays: Vec::new(),
        timing: ReplayTiming::default(),
    };
    for conn in conns {
        match conn.kind {
            Kind::Pub(p) => {
                let least = &mut ctx.counters.publisher_window_least;
                *least = Some(least.map_or(p.sent_window, |least| least.min(p.sent_window)));
                output.sent.push((
                    p.index,
                    p.topics
                        .iter()
                        .copied()
                        .zip(p.next_seq.iter().copied())
                        .collect(),
                ));
                if plan.prefill > 0 {
                    output.prefill_seqs.push((
                        p.index,
                        p.topics.iter().copied().zip(p.prefill_seqs).collect(),
                    ));
                }
            }
            Kind::Sub(s) => output.add_subscriber(plan, &mut timing, *s),
        }
    }
    Ok(output.finish(timing, ctx))
}

/// Runs the loop until every connection's set-up replies are in and its bytes written.
/// Marks this thread ready, waits for the common start (or an abort), and opens the measured
/// window in `ctx`. Returns the start and the end of the run. Shared by the network and the
/// in-process threads.
pub(super) fn wait_for_start(
    shared: &Shared,
    clock: Clock,
    ctx: &mut Ctx<'_>,
) -> Result<(u64, u64), String> {
    shared.ready.fetch_add(1, Ordering::AcqRel);
    let start_ns = loop {
        let start = shared.start_ns.load(Ordering::Acquire);
        if start != 0 {
            break start;
        }
        if shared.abort.load(Ordering::Acquire) {
            return Err("the run was aborted before it started".into());
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    // A closed-loop publisher writes as soon as its loop runs, so the loop must not run before
    // the start: messages written earlier would fall before the measured window (untimed and
    // uncounted with no warm-up) and the threads would not start together.
    while clock.now_ns() < start_ns {
        if shared.abort.load(Ordering::Acquire) {
            return Err("the run was aborted before it started".into());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let scenario = &ctx.plan.scenario;
    let warmup_ns = (scenario.warmup_s * SECOND as f64) as u64;
    let duration_ns = (scenario.duration_s * SECOND as f64) as u64;
    let end_ns = start_ns + warmup_ns + duration_ns;
    ctx.window_start = start_ns + warmup_ns;
    ctx.window_end = end_ns;
    ctx.latency.set_start(ctx.window_start);
    Ok((start_ns, end_ns))
}

fn settle(
    poll: &mut Poll,
    events: &mut Events,
    conns: &mut [Conn],
    ctx: &mut Ctx<'_>,
    shared: &Shared,
) -> Result<(), String> {
    let clock = ctx.plan.clock;
    let deadline = clock.now_ns() + SETUP_TIMEOUT_NS;
    loop {
        if shared.abort.load(Ordering::Acquire) {
            return Err("another bench thread failed to set up".into());
        }
        flush_all(conns, ctx);
        if let Some(conn) = conns.iter().find(|c| !c.open) {
            let detail = ctx.errors.first().cloned().unwrap_or_default();
            return Err(format!("{} failed during set-up: {detail}", conn.label()));
        }
        if conns
            .iter()
            .all(|c| c.setup_pending == 0 && c.out_pending() == 0)
        {
            return Ok(());
        }
        if clock.now_ns() > deadline {
            return Err(format!(
                "set-up did not finish within {} s (is {} a {} server?)",
                SETUP_TIMEOUT_NS / SECOND,
                ctx.plan.endpoint.text,
                ctx.target
            ));
        }
        poll.poll(events, Some(Duration::from_millis(10)))
            .map_err(|e| format!("poll: {e}"))?;
        mark_ready(events, conns);
        for conn in conns.iter_mut() {
            if conn.readable && conn.open {
                read_conn(conn, ctx, Phase::Setup, clock);
            }
        }
        if !ctx.errors.is_empty() {
            return Err(format!("set-up failed: {}", ctx.errors.join("; ")));
        }
    }
}

/// `--prefill`: this thread's publishers publish their messages, each confirmed with its topic
/// sequence number, at most `--pipeline` unconfirmed at once; then the thread waits for every
/// other thread to be done too, so that no subscription can precede a prefill message.
/// Returns when the first was written and when the last was confirmed.
fn prefill(
    poll: &mut Poll,
    events: &mut Events,
    conns: &mut [Conn],
    ctx: &mut Ctx<'_>,
    shared: &Shared,
    filler: &[u8],
) -> Result<(u64, u64), String> {
    let clock = ctx.plan.clock;
    let started = clock.now_ns();
    let (mut confirmed_before, mut progress_at) = (0u64, started);
    loop {
        if shared.abort.load(Ordering::Acquire) {
            return Err("another bench thread failed to set up".into());
        }
        let (mut done, mut confirmed) = (true, 0u64);
        for conn in conns.iter_mut().filter(|c| c.open) {
            prefill_turn(conn, ctx, filler, clock.now_ns());
            if let Kind::Pub(p) = &conn.kind {
                done &= p.prefill_confirmed == ctx.plan.prefill * p.topics.len() as u64;
                confirmed += p.prefill_confirmed;
            }
        }
        flush_all(conns, ctx);
        if let Some(conn) = conns.iter().find(|c| !c.open) {
            let detail = ctx.errors.first().cloned().unwrap_or_default();
            return Err(format!(
                "{} failed during the prefill: {detail}",
                conn.label()
            ));
        }
        if !ctx.errors.is_empty() {
            return Err(format!("the prefill failed: {}", ctx.errors.join("; ")));
        }
        if done {
            break;
        }
        let now = clock.now_ns();
        if confirmed != confirmed_before {
            (confirmed_before, progress_at) = (confirmed, now);
        } else if now - progress_at > PREFILL_STALL_NS {
            return Err(format!(
                "the prefill stalled: no publish confirmed for {} s",
                PREFILL_STALL_NS / SECOND
            ));
        }
        poll.poll(events, Some(Duration::from_millis(10)))
            .map_err(|e| format!("poll: {e}"))?;
        mark_ready(events, conns);
        for conn in conns.iter_mut() {
            if conn.readable && conn.open {
                read_conn(conn, ctx, Phase::Setup, clock);
            }
        }
    }
    let finished = clock.now_ns();
    for conn in conns.iter_mut() {
        if let Kind::Pub(p) = &mut conn.kind {
            // Live messages continue each stream's payload sequence.
            p.next_seq.fill(ctx.plan.prefill);
            ctx.counters.prefilled += p.prefill_confirmed;
        }
    }
    shared.prefilled.fetch_add(1, Ordering::AcqRel);
    while shared.prefilled.load(Ordering::Acquire) < ctx.plan.threads {
        if shared.abort.load(Ordering::Acquire) {
            return Err("another bench thread failed during the prefill".into());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok((started, finished))
}

/// Writes the prefill publishes a publisher may write now.
fn prefill_turn(conn: &mut Conn, ctx: &mut Ctx<'_>, filler: &[u8], now: u64) {
    let Kind::Pub(p) = &mut conn.kind else {
        return;
    };
    let slots = p.topics.len() as u64;
    let total = ctx.plan.prefill * slots;
    let pipeline = ctx.plan.scenario.pipeline as u64;
    while p.prefill_written < total
        && p.prefill_written - p.prefill_confirmed < pipeline
        && conn.out.len() - conn.out_pos < OUT_PENDING_MAX
    {
        let tag = p.prefill_written;
        let slot = (tag % slots) as usize;
        let header = PayloadHeader {
            publisher: p.index,
            topic: p.topics[slot],
            seq: tag / slots,
            sent_ns: now,
        };
        // Below 2^31: the prefill total is bounded by `replay::PREFILL_MESSAGES_MAX`.
        p.confirmed[slot].encode_confirmed(&mut conn.out, tag as u32, &header.encode(), filler);
        p.prefill_written += 1;
    }
}

/// The deliveries a publisher's messages make, for ending the drain early: never fewer than
/// the true count, or the drain would stop before the last ones arrive. The replay start of a
/// stream is worked out from its own last prefill sequence number, at most the topic's last
/// one, which puts the start no later than the truth; `--start all` counts every prefill
/// message, as if all were retained.
fn drain_expected(plan: &Plan, p: &Publisher) -> u64 {
    expected_deliveries(plan, &p.topics, &p.next_seq, &p.prefill_seqs)
}

/// [`drain_expected`] of a publisher that sent `next_seq[i]` messages (prefill included) to
/// `topics[i]`, its prefill ones sequenced as `prefill_seqs[i]`.
pub(super) fn expected_deliveries(
    plan: &Plan,
    topics: &[u32],
    next_seq: &[u64],
    prefill_seqs: &[Vec<u64>],
) -> u64 {
    let start = plan.delivery.start;
    topics
        .iter()
        .zip(next_seq)
        .zip(prefill_seqs)
        .map(|((&t, &sent), seqs)| {
            let last_seq = seqs.last().copied().unwrap_or(0);
            let skipped = replay::requested_first_seq(start, last_seq)
                .map_or(0, |first| replay::skipped(seqs, first));
            (sent - skipped) * plan.subscribers_per_topic[t as usize]
        })
        .sum()
}

fn mark_ready(events: &Events, conns: &mut [Conn]) {
    for event in events.iter() {
        if let Some(conn) = conns.get_mut(event.token().0) {
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                conn.readable = true;
            }
            if event.is_writable() || event.is_write_closed() || event.is_error() {
                conn.writable = true;
            }
        }
    }
}

/// How long the next poll may block.
fn next_timeout(
    conns: &[Conn],
    phase: Phase,
    now: u64,
    end_ns: u64,
    unwindowed_closed_loop: bool,
) -> Duration {
    let mut wake = now + TICK_NS;
    if phase == Phase::Running {
        wake = wake.min(end_ns);
    }
    for conn in conns.iter().filter(|c| c.open) {
        if conn.readable {
            if conn.next_read_ns <= now {
                return Duration::ZERO;
            }
            wake = wake.min(conn.next_read_ns);
        }
        if conn.writable && conn.out_pending() > 0 {
            return Duration::ZERO;
        }
        // An unwindowed closed-loop publisher whose socket still takes bytes has more to
        // write now: no reply will come to wake it.
        if phase == Phase::Running
            && unwindowed_closed_loop
            && conn.writable
            && matches!(conn.kind, Kind::Pub(_))
            && conn.out_pending() < OUT_PENDING_MAX
        {
            return Duration::ZERO;
        }
        // An open-loop publisher wakes the loop when its next message is due, unless it is
        // held up by unwritten bytes (then the socket's writable event wakes it).
        if phase == Phase::Running && conn.out_pending() < OUT_PENDING_MAX {
            if let Kind::Pub(p) = &conn.kind {
                if let Some(schedule) = p.schedule {
                    if p.sent < schedule.due(end_ns - 1) {
                        wake = wake.min(schedule.scheduled_ns(p.sent));
                    }
                }
            }
        }
    }
    let wait = wake.saturating_sub(now);
    if wait <= SPIN_NS {
        Duration::ZERO
    } else {
        // epoll rounds up to whole milliseconds; wake a little early and spin the rest.
        Duration::from_nanos(wait - SPIN_NS)
    }
}

fn send_ping(p: &mut Publisher, target: Target, out: &mut Vec<u8>) {
    wire::encode_ping(target, p.ping_id, out);
    p.ping_id = p.ping_id.wrapping_add(1);
    p.pings.push_back(p.since_ping);
    p.since_ping = 0;
}

/// Writes what a publisher may write now: in closed loop, whole batches while fewer than
/// `--pipeline` are unconfirmed, or with `--unwindowed` as much as its buffer takes; in open
/// loop, every message due (up to `--pipeline` per turn).
fn publish_turn(conn: &mut Conn, ctx: &mut Ctx<'_>, filler: &[u8], now: u64, end_ns: u64) {
    let pending = conn.out_pending();
    let Kind::Pub(p) = &mut conn.kind else {
        return;
    };
    if pending >= OUT_PENDING_MAX {
        return;
    }
    let scenario = &ctx.plan.scenario;
    let batch = scenario.batch() as u64;
    let pipeline = scenario.pipeline as u64;
    let room = buffer_room(pending, p.templates[0].wire_len());
    let count = match p.schedule {
        // Unwindowed: fill the buffer; what the socket does not take waits there, and the
        // publisher adds nothing until it has room again.
        None if scenario.unwindowed => room,
        None => {
            // A window the target caps below --pipeline takes batches that fit in it.
            let window = pipeline.min(ctx.target.in_flight_max());
            let batch = batch.min(window);
            let room = window.saturating_sub(p.unconfirmed);
            room / batch * batch
        }
        Some(schedule) => {
            let due = schedule.due(now.min(end_ns - 1));
            let in_flight_room = ctx.target.in_flight_max().saturating_sub(p.unconfirmed);
            due.saturating_sub(p.sent)
                .min(pipeline)
                .min(room)
                .min(in_flight_room)
        }
    };
    let hex = ctx.target.hex_stamps();
    // Unwindowed publishers ask for no confirmation until the end (one PING then).
    let pings = ctx.target.confirms_with_ping() && !scenario.unwindowed;
    for _ in 0..count {
        let slot = p.round_robin;
        p.round_robin = if slot + 1 == p.topics.len() {
            0
        } else {
            slot + 1
        };
        let seq = p.next_seq[slot];
        p.next_seq[slot] += 1;
        let sent_ns = match p.schedule {
            Some(schedule) => schedule.scheduled_ns(p.sent),
            None => now,
        };
        let header = PayloadHeader {
            publisher: p.index,
            topic: p.topics[slot],
            seq,
            sent_ns,
        };
        let mask = next_mask(&mut p.mask_state);
        if hex {
            p.templates[slot].encode(&mut conn.out, &header.encode_hex(), filler, mask);
        } else {
            p.templates[slot].encode(&mut conn.out, &header.encode(), filler, mask);
        }
        p.sent += 1;
        p.unconfirmed += 1;
        p.since_ping += 1;
        ctx.counters.published += 1;
        if sent_ns >= ctx.window_start && sent_ns < ctx.window_end {
            ctx.counters.published_window += 1;
            p.sent_window += 1;
        }
        if pings && p.since_ping >= batch {
            send_ping(p, ctx.target, &mut conn.out);
        }
    }
}

/// Messages of `wire_len` bytes a publisher may add to an output buffer holding `pending`
/// unwritten bytes: until it reaches [`OUT_PENDING_MAX`], the last one possibly crossing it
/// (so that a message larger than the bound still goes out, alone).
fn buffer_room(pending: usize, wire_len: usize) -> u64 {
    debug_assert!(wire_len > 0);
    match OUT_PENDING_MAX.checked_sub(pending) {
        Some(0) | None => 0,
        Some(free) => (free / wire_len + 1) as u64,
    }
}

/// The next WebSocket masking key (xorshift64: masking is for proxies' sake, not secrecy, and
/// this costs a few instructions per frame).
fn next_mask(state: &mut u64) -> [u8; 4] {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    (x as u32).to_ne_bytes()
}

fn flush_all(conns: &mut [Conn], ctx: &mut Ctx<'_>) {
    for conn in conns.iter_mut() {
        if conn.open && conn.writable && conn.out_pending() > 0 {
            flush(conn, ctx);
        }
    }
}

fn flush(conn: &mut Conn, ctx: &mut Ctx<'_>) {
    while conn.out_pos < conn.out.len() {
        match conn.stream.write(&conn.out[conn.out_pos..]) {
            Ok(0) => {
                close(conn, ctx, "the connection would not take more bytes".into());
                return;
            }
            Ok(n) => conn.out_pos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.writable = false;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                close(conn, ctx, format!("write failed: {e}"));
                return;
            }
        }
    }
    if conn.out_pos == conn.out.len() {
        conn.out.clear();
        conn.out_pos = 0;
    } else if conn.out_pos > OUT_PENDING_MAX {
        conn.out.drain(..conn.out_pos);
        conn.out_pos = 0;
    }
}

fn close(conn: &mut Conn, ctx: &mut Ctx<'_>, why: String) {
    if conn.open {
        conn.open = false;
        let label = conn.label();
        ctx.error(format!("{label}: {why}"));
        let _ = conn.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// Reads what the connection has (up to a turn's budget) and handles it; a subscriber with
/// acks then queues its ACKs, written with the loop's other writes by the next flush.
fn read_conn(conn: &mut Conn, ctx: &mut Ctx<'_>, phase: Phase, clock: Clock) {
    read_conn_turn(conn, ctx, phase, clock);
    if conn.open {
        if let Kind::Sub(sub) = &mut conn.kind {
            queue_acks(sub, &mut conn.out);
        }
    }
}

/// One cumulative ACK per topic that received anything since the last call, naming the
/// highest topic sequence number received there. A durable consumer gets its topic's messages
/// in sequence order (redeliveries aside), so this acknowledges everything received; a group
/// member's cumulative ACK covers only what was delivered to it. Batching per read turn keeps
/// acks to a few per `in_flight_max` messages instead of one each.
fn queue_acks(sub: &mut Subscriber, out: &mut Vec<u8>) {
    for j in sub.ack_dirty.drain(..) {
        let j = j as usize;
        let through = std::mem::take(&mut sub.ack_through[j]);
        if through > 0 {
            wire::encode_ack_through(sub.sub_ids[j], through - 1, out);
        }
    }
}

fn read_conn_turn(conn: &mut Conn, ctx: &mut Ctx<'_>, phase: Phase, clock: Clock) {
    let mut budget = READ_TURN_BYTES;
    loop {
        if conn.rpos == conn.rlen {
            conn.rpos = 0;
            conn.rlen = 0;
        }
        if conn.rlen == conn.rbuf.len() {
            if conn.rpos > 0 {
                conn.rbuf.copy_within(conn.rpos..conn.rlen, 0);
                conn.rlen -= conn.rpos;
                conn.rpos = 0;
            } else {
                // One event larger than the buffer: grow (bounded by the frame limit).
                let grown = (conn.rbuf.len() * 2).min(conn.frame_max.max(conn.rbuf.len() + 1));
                conn.rbuf.resize(grown, 0);
            }
        }
        let limit = (conn.rlen + conn.read_max).min(conn.rbuf.len());
        match conn.stream.read(&mut conn.rbuf[conn.rlen..limit]) {
            Ok(0) => {
                close(conn, ctx, "closed by the server".into());
                return;
            }
            Ok(n) => {
                conn.rlen += n;
                let recv_ns = clock.now_ns();
                if let Err(e) = handle_input(conn, ctx, phase, recv_ns) {
                    close(conn, ctx, format!("protocol error: {e}"));
                    return;
                }
                if ctx.plan.subscriber_delay_us > 0 && matches!(conn.kind, Kind::Sub(_)) {
                    conn.next_read_ns = recv_ns + ctx.plan.subscriber_delay_us * 1000;
                    return;
                }
                budget = budget.saturating_sub(n);
                if budget == 0 {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.readable = false;
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                close(conn, ctx, format!("read failed: {e}"));
                return;
            }
        }
    }
}

/// Decodes and acts on every complete event in the read buffer.
fn handle_input(
    conn: &mut Conn,
    ctx: &mut Ctx<'_>,
    phase: Phase,
    recv_ns: u64,
) -> Result<(), wire::WireError> {
    let target = ctx.target;
    loop {
        let buf = &mut conn.rbuf[conn.rpos..conn.rlen];
        let decoded = match &mut conn.ws {
            Some(link) => link.decode(buf)?,
            None => wire::decode(target, buf, conn.frame_max)?,
        };
        let Some((event, used)) = decoded else {
            return Ok(());
        };
        match event {
            Event::Message {
                topic,
                payload,
                seq,
                delivery_count,
            } => match &mut conn.kind {
                Kind::Sub(sub) => {
                    if delivery_count > 1 {
                        ctx.counters.redelivered += 1;
                    }
                    if !sub.ack_through.is_empty() {
                        note_ack(sub, ctx, topic, seq);
                    }
                    deliver(sub, ctx, topic, payload, seq, recv_ns, delivery_count > 1);
                }
                Kind::Pub(_) => ctx.counters.misrouted += 1,
            },
            Event::Ok(data) => {
                if target == Target::Corebus && !conn.hello_seen {
                    conn.hello_seen = true;
                    if let Some(max) = wire::corebus_message_bytes_max(data) {
                        if ctx.plan.scenario.size > max {
                            let text = format!(
                                "--size {} is above the broker's message_bytes_max {max}",
                                ctx.plan.scenario.size
                            );
                            ctx.error(text);
                        }
                        conn.frame_max = max + FRAME_OVERHEAD_MAX;
                    }
                }
                if phase == Phase::Setup {
                    conn.setup_pending = conn.setup_pending.saturating_sub(1);
                }
            }
            Event::Subscribed => {
                conn.setup_pending = conn.setup_pending.saturating_sub(1);
            }
            Event::Upgraded => {
                conn.setup_pending = conn.setup_pending.saturating_sub(1);
                if let Some(link) = &mut conn.ws {
                    link.release_held(&mut conn.out);
                }
            }
            Event::Pong => {
                if phase == Phase::Setup {
                    conn.setup_pending = conn.setup_pending.saturating_sub(1);
                } else if let Kind::Pub(p) = &mut conn.kind {
                    let confirmed = p.pings.pop_front().unwrap_or(0);
                    p.unconfirmed = p.unconfirmed.saturating_sub(confirmed);
                }
            }
            Event::Published(_) => {
                if let Kind::Pub(p) = &mut conn.kind {
                    p.unconfirmed = p.unconfirmed.saturating_sub(1);
                }
            }
            Event::ServerPing => wire::encode_pong(target, &mut conn.out),
            Event::WsPing(payload) => wire::ws::encode_pong_frame(payload, &mut conn.out),
            Event::Acked => {
                if phase == Phase::Setup {
                    conn.setup_pending = conn.setup_pending.saturating_sub(1);
                } else if let Kind::Pub(p) = &mut conn.kind {
                    p.unconfirmed = p.unconfirmed.saturating_sub(1);
                }
            }
            Event::Dropped(count) => ctx.counters.dropped_reported += count,
            Event::Gap { topic, missed } => {
                ctx.counters.gap_missed += missed;
                if let Kind::Sub(sub) = &mut conn.kind {
                    let slot = topic
                        .and_then(|t| ctx.plan.scenario.subscription_slot_from(sub.first_topic, t));
                    match slot {
                        Some(j) => sub.replay[j].gap_missed += missed,
                        None => ctx.counters.misrouted += 1,
                    }
                }
            }
            Event::Sequenced { tag, seq } => {
                let recorded = match &mut conn.kind {
                    Kind::Pub(p) => record_prefill_seq(p, tag, seq),
                    Kind::Sub(_) => false,
                };
                if !recorded {
                    let label = conn.label();
                    ctx.error(format!(
                        "{label}: a confirm for no prefill publish (tag {tag})"
                    ));
                }
            }
            Event::Error(text) => {
                if let Kind::Pub(p) = &mut conn.kind {
                    if phase != Phase::Setup {
                        ctx.counters.publish_errors += 1;
                        // A refused Redis or WebSocket publish still answers once.
                        if target.confirms_each_publish() {
                            p.unconfirmed = p.unconfirmed.saturating_sub(1);
                        }
                    }
                }
                let label = conn.label();
                ctx.error(format!("{label}: {target} error: {text}"));
            }
            Event::Ignored => {}
        }
        conn.rpos += used;
    }
}

/// Stores the topic sequence number of prefill publish `tag`; false if there is no such one.
fn record_prefill_seq(p: &mut Publisher, tag: u32, seq: u64) -> bool {
    let slots = p.topics.len() as u64;
    let (slot, i) = (u64::from(tag) % slots, u64::from(tag) / slots);
    let Some(stored) = p.prefill_seqs[slot as usize].get_mut(i as usize) else {
        return false;
    };
    *stored = seq;
    p.prefill_confirmed += 1;
    true
}

/// Remembers that topic sequence number `seq` arrived on subscription `sub_id`, for the next
/// cumulative ACK. Everything delivered is acknowledged, corrupt or not, so the broker does
/// not redeliver what the bench already judged.
#[inline]
pub(super) fn note_ack(sub: &mut Subscriber, ctx: &Ctx<'_>, sub_id: Option<u32>, seq: u64) {
    let Some(topic) = sub_id else {
        return;
    };
    let Some(j) = ctx
        .plan
        .scenario
        .subscription_slot_from(sub.first_topic, topic)
    else {
        return;
    };
    let slot = &mut sub.ack_through[j];
    if *slot == 0 {
        sub.ack_dirty.push(j as u32);
    }
    *slot = (*slot).max(seq + 1);
}

/// One delivered message: check it, account it on its (topic, publisher) stream, time it.
/// A replayed message (a prefill one) is not timed: its end-to-end latency is mostly its
/// age, which says nothing about the broker's live latency; the replay is reported by how
/// long the backlog took to drain instead.
#[inline]
pub(super) fn deliver(
    sub: &mut Subscriber,
    ctx: &mut Ctx<'_>,
    wire_topic: Option<u32>,
    payload: &[u8],
    topic_seq: u64,
    recv_ns: u64,
    redelivery: bool,
) {
    ctx.counters.received += 1;
    let scenario = &ctx.plan.scenario;
    if payload.len() != scenario.size {
        ctx.counters.corrupt += 1;
        return;
    }
    let Some(header) = ctx.target.decode_stamp(payload) else {
        ctx.counters.corrupt += 1;
        return;
    };
    if wire_topic != Some(header.topic) {
        ctx.counters.misrouted += 1;
        return;
    }
    let Some(j) = scenario.subscription_slot_from(sub.first_topic, header.topic) else {
        ctx.counters.misrouted += 1;
        return;
    };
    let Some(k) = scenario.publisher_slot(header.topic, header.publisher) else {
        ctx.counters.corrupt += 1;
        return;
    };
    let slot = j * ctx.publishers_per_topic + k;
    let seen = if let Some(set) = sub.sets.get_mut(slot) {
        set.observe(header.seq, redelivery)
    } else if redelivery {
        sub.trackers[slot].observe_redelivery(header.seq)
    } else {
        sub.trackers[slot].observe(header.seq)
    };
    if seen == Seen::Duplicate {
        return;
    }
    ctx.unique += 1;
    if header.seq < ctx.plan.prefill {
        let replay = &mut sub.replay[j];
        replay.first_replayed_seq = replay.first_replayed_seq.min(topic_seq);
        sub.last_replay_ns = recv_ns;
        return;
    }
    ctx.latency.record(header.sent_ns, recv_ns);
    if recv_ns >= ctx.window_start && recv_ns < ctx.window_end {
        ctx.counters.delivered_window += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unwindowed_publisher_fills_its_buffer_to_the_bound_and_no_further() {
        // Empty: enough to reach the bound, the last crossing it.
        assert_eq!(buffer_room(0, 100), (OUT_PENDING_MAX / 100 + 1) as u64);
        assert_eq!(buffer_room(OUT_PENDING_MAX - 1, 100), 1);
        // At or past the bound (the last message crossed it): nothing until the socket
        // takes some.
        assert_eq!(buffer_room(OUT_PENDING_MAX, 100), 0);
        assert_eq!(buffer_room(OUT_PENDING_MAX + 99, 100), 0);
        // A message larger than the bound still goes out, alone.
        assert_eq!(buffer_room(0, 2 * OUT_PENDING_MAX), 1);
    }
}
