//! `corebus bench --target inproc`: the same presets against an embedded [`Bus`] started
//! inside the bench process, so that in-process figures sit beside the network ones.
//!
//! Nothing crosses a socket: each bench publisher is a [`bus::Publisher`] and each of a bench
//! subscriber's topics one [`Subscription`]. Publishers and subscribers run on separate
//! threads, `--threads` of each (at most one per publisher or subscriber), because a bus
//! publisher blocks its thread while its command ring is full and a subscriber thread must
//! never be the one blocked. A subscriber thread waits on all of its subscriptions at once
//! through their `poll_recv`, with one waker that unparks the thread.
//!
//! The accounting is the network driver's, unchanged (`driver::deliver`): the same payload
//! header, the same per-(topic, publisher) sequence tracking, latency from the send (or
//! scheduled) time to a clock reading taken after a batch was taken from the ring (so never
//! earlier than a message's arrival), and the same end: publishers confirm (a round trip
//! behind their last publish), report what they sent, and subscribers drain until every
//! expected delivery arrived or deliveries stop. Losses the bus announces (`drop-oldest`
//! drops, replay gaps) and subscriptions it cuts (`SLOW_CONSUMER`) are counted as a network
//! subscriber's `DROPPED`, `GAP` and errors are.
//!
//! A publisher writes until its command ring is full whatever `--unwindowed` says: the ring
//! is its window (its slots are the bus's `command_slots`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use hdrhistogram::Histogram;

use super::accounting::{PayloadHeader, HEADER_LEN};
use super::driver::{
    self, Assignment, Ctx, Plan, ReplayTiming, Shared, Subscriber, ThreadOutput, DRAIN_IDLE_NS,
    SETUP_TIMEOUT_NS,
};
use super::latency::{Clock, Schedule};
use crate::bus::{self, Bus, BusConfig, BusHandle, Message, Subscription};
use crate::cli::CoreList;

const SECOND: u64 = 1_000_000_000;
/// A drain ends this long after the end at the latest, as the network driver's does.
const DRAIN_MAX_NS: u64 = 30 * SECOND;
/// Messages one subscription hands over per turn before the thread's other subscriptions
/// get theirs; they are timed together, by one clock reading after the last is taken.
const TAKE_TURN_MAX: usize = 256;
/// With `--subscriber-delay-us`, what a subscription hands over per turn, before the pause.
const THROTTLED_TAKE_MAX: usize = 16;
/// Closed loop: publishes stamped with one clock reading (a message waiting for ring room
/// keeps its earlier stamp, so the latency of a full ring is counted, not hidden).
const STAMP_BATCH_MAX: usize = 64;
/// The longest an idle subscriber thread sleeps before it looks at the clock again (the
/// bus's waker ends the sleep as soon as something arrives).
const IDLE_PARK: Duration = Duration::from_millis(1);
/// How often a thread publishes its counters to the shared atomics.
const SYNC_NS: u64 = 1_000_000;
/// Open loop: a publisher whose next message is due within this sleeps no more (the OS
/// sleeps in coarser steps), it yields until then.
const SPIN_NS: u64 = 200_000;

/// The shards of the bus a run starts: `--bus-shards` of them, pinned to `--bus-cores`.
pub fn start_bus(shards: Option<usize>, cores: Option<&CoreList>) -> Result<Bus, String> {
    let mut config = BusConfig::default();
    if let Some(shards) = shards {
        if shards == 0 {
            return Err("--bus-shards must be at least 1".into());
        }
        config.broker.shards = shards;
    }
    if let Some(cores) = cores {
        config.broker.cores = cores.0.clone();
        config.broker.pin = true;
    }
    config
        .broker
        .validate()
        .map_err(|e| format!("the bench's bus: {e}"))?;
    Bus::start(config).map_err(|e| format!("cannot start the bench's bus: {e}"))
}

/// Which threads run whom: `threads` publisher threads and `threads` subscriber threads
/// (fewer when there are fewer publishers or subscribers), each side round-robin.
pub fn assignments(
    publishers: usize,
    subscribers: usize,
    threads: usize,
    cores: Option<&CoreList>,
) -> Vec<Assignment> {
    let pub_threads = threads.min(publishers);
    let sub_threads = threads.min(subscribers);
    let mut out: Vec<Assignment> = (0..pub_threads + sub_threads)
        .map(|i| Assignment {
            index: i,
            core: cores.map(|c| c.0[i % c.0.len()]),
            ..Assignment::default()
        })
        .collect();
    for p in 0..publishers {
        out[p % pub_threads].publishers.push(p);
    }
    for s in 0..subscribers {
        out[pub_threads + s % sub_threads].subscribers.push(s);
    }
    out
}

/// One bench publisher: a bus publisher and its streams.
struct Pub {
    index: u32,
    handle: bus::Publisher,
    topics: Vec<u32>,
    next_seq: Vec<u64>,
    round_robin: usize,
    sent: u64,
    schedule: Option<Schedule>,
    /// `--prefill`: per slot, the topic sequence number each prefill message was given.
    prefill_seqs: Vec<Vec<u64>>,
    /// Closed by the bus: publishes no more.
    closed: bool,
}

/// One bench subscriber: its accounting and a subscription per topic, in slot order.
struct Sub {
    accounting: Subscriber,
    subscriptions: Vec<Option<Subscription>>,
}

/// Ends a thread's park when a subscription has something.
struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs one bench thread to completion. Errors are set-up failures; problems during the run
/// are counted and reported in the output instead.
pub fn run_thread(
    plan: &Plan,
    assignment: &Assignment,
    shared: &Shared,
    bus: &BusHandle,
) -> Result<ThreadOutput, String> {
    let result = run_thread_inner(plan, assignment, shared, bus);
    if result.is_err() {
        shared.abort.store(true, Ordering::Release);
    }
    shared.finished.fetch_add(1, Ordering::AcqRel);
    result
}

fn run_thread_inner(
    plan: &Plan,
    assignment: &Assignment,
    shared: &Shared,
    bus: &BusHandle,
) -> Result<ThreadOutput, String> {
    if let Some(core) = assignment.core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            return Err(format!("cannot pin bench thread to CPU {core}"));
        }
    }
    let scenario = &plan.scenario;
    let clock = plan.clock;
    let mut ctx = Ctx::new(plan);
    let mut timing = ReplayTiming::default();

    let mut pubs = Vec::new();
    for &p in &assignment.publishers {
        let topics = scenario.publisher_topics(p);
        // The next shard in turn, as `Bus::publisher` places any publisher and as the kernel
        // spreads network connections: a publish to a topic another shard owns crosses to it.
        let handle = bus
            .publisher()
            .map_err(|e| format!("publisher {p}: cannot open a bus publisher: {e}"))?;
        pubs.push(Pub {
            index: p as u32,
            handle,
            next_seq: vec![0; topics.len()],
            prefill_seqs: vec![Vec::new(); topics.len()],
            topics,
            round_robin: 0,
            sent: 0,
            schedule: None,
            closed: false,
        });
    }
    let mut payload = vec![b'x'; scenario.size];
    if plan.prefill > 0 {
        timing.prefill_start_ns = clock.now_ns();
        for p in &mut pubs {
            prefill(plan, p, &mut payload, clock)?;
            ctx.counters.prefilled += plan.prefill * p.topics.len() as u64;
        }
        timing.prefill_end_ns = clock.now_ns();
        if pubs.is_empty() {
            timing.prefill_start_ns = 0;
            timing.prefill_end_ns = 0;
        }
        // No subscription may precede a prefill message.
        shared.prefilled.fetch_add(1, Ordering::AcqRel);
        let deadline = clock.now_ns() + SETUP_TIMEOUT_NS;
        while shared.prefilled.load(Ordering::Acquire) < plan.threads {
            if shared.abort.load(Ordering::Acquire) {
                return Err("another bench thread failed during the prefill".into());
            }
            if clock.now_ns() > deadline && pubs.is_empty() {
                return Err("the prefill did not finish in time".into());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    timing.subscribe_ns = clock.now_ns();
    let mut subs = Vec::new();
    for &s in &assignment.subscribers {
        let accounting = Subscriber::new(plan, s);
        let options = plan.delivery.options(s);
        let mut subscriptions = Vec::new();
        for &t in &accounting.sub_ids {
            let subscription = bus
                .subscribe_with(&plan.topic_names[t as usize], options.clone())
                .map_err(|e| format!("subscriber {s}: cannot subscribe to topic {t}: {e}"))?;
            subscriptions.push(Some(subscription));
        }
        subs.push(Sub {
            accounting,
            subscriptions,
        });
    }

    let (start_ns, end_ns) = driver::wait_for_start(shared, clock, &mut ctx)?;
    if !scenario.closed_loop() {
        for p in &mut pubs {
            p.schedule = Some(Schedule::new(
                start_ns,
                scenario.rate,
                scenario.publishers as u64,
                u64::from(p.index),
            ));
        }
    }

    if !pubs.is_empty() {
        publish_until(&mut pubs, &mut ctx, shared, &mut payload, end_ns);
        let mut expected = 0;
        for p in &mut pubs {
            settle_publisher(p, &mut ctx, end_ns);
            expected += driver::expected_deliveries(plan, &p.topics, &p.next_seq, &p.prefill_seqs);
        }
        shared.expected.fetch_add(expected, Ordering::AcqRel);
    }
    shared.flushed.fetch_add(1, Ordering::AcqRel);
    if !subs.is_empty() {
        receive_until_drained(&mut subs, &mut ctx, shared, end_ns);
    }

    let mut output = ThreadOutput {
        latency: Histogram::new(3).expect("valid histogram"),
        sent: Vec::new(),
        trackers: Vec::new(),
        sets: Vec::new(),
        counters: Default::default(),
        errors: Vec::new(),
        prefill_seqs: Vec::new(),
        replays: Vec::new(),
        timing: ReplayTiming::default(),
    };
    for p in pubs {
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
    for mut s in subs {
        for (j, subscription) in s.subscriptions.iter().enumerate() {
            if let Some(subscription) = subscription {
                ctx.counters.dropped_reported += subscription.dropped();
                ctx.counters.gap_missed += subscription.missed();
                s.accounting.replay[j].gap_missed += subscription.missed();
            }
        }
        output.add_subscriber(plan, &mut timing, s.accounting);
    }
    Ok(output.finish(timing, ctx))
}

/// `--prefill`: `prefill` confirmed publishes to each of the publisher's topics, payload
/// sequence numbers `0..prefill`, each topic sequence number recorded.
fn prefill(plan: &Plan, p: &mut Pub, payload: &mut [u8], clock: Clock) -> Result<(), String> {
    for (slot, &topic) in p.topics.iter().enumerate() {
        let name = &plan.topic_names[topic as usize];
        for seq in 0..plan.prefill {
            let header = PayloadHeader {
                publisher: p.index,
                topic,
                seq,
                sent_ns: clock.now_ns(),
            };
            payload[..HEADER_LEN].copy_from_slice(&header.encode());
            let topic_seq = p
                .handle
                .publish_confirmed(name, payload)
                .map_err(|e| format!("publisher {}: prefill publish refused: {e}", p.index))?;
            p.prefill_seqs[slot].push(topic_seq);
        }
        p.next_seq[slot] = plan.prefill;
    }
    Ok(())
}

/// Publishes until the end: closed loop, batches round-robin over the thread's publishers,
/// each waiting only while its command ring is full; open loop, whatever is due.
fn publish_until(
    pubs: &mut [Pub],
    ctx: &mut Ctx<'_>,
    shared: &Shared,
    payload: &mut [u8],
    end_ns: u64,
) {
    let plan = ctx.plan;
    let clock = plan.clock;
    let pipeline = plan.scenario.pipeline as u64;
    let mut last_sync = (0u64, 0u64);
    loop {
        let now = clock.now_ns();
        if now >= end_ns || pubs.iter().all(|p| p.closed) {
            break;
        }
        let mut next_due = u64::MAX;
        for p in pubs.iter_mut().filter(|p| !p.closed) {
            let count = match p.schedule {
                None => STAMP_BATCH_MAX as u64,
                Some(schedule) => {
                    let due = schedule.due(now.min(end_ns - 1));
                    if p.sent >= due {
                        if p.sent < schedule.due(end_ns - 1) {
                            next_due = next_due.min(schedule.scheduled_ns(p.sent));
                        }
                        continue;
                    }
                    (due - p.sent).min(pipeline)
                }
            };
            publish_batch(p, ctx, payload, now, count);
        }
        if next_due != u64::MAX && pubs.iter().all(|p| p.schedule.is_some()) {
            let now = clock.now_ns();
            let wait = next_due.saturating_sub(now);
            if wait > SPIN_NS {
                std::thread::sleep(Duration::from_nanos(wait - SPIN_NS));
            } else if wait > 0 {
                std::thread::yield_now();
            }
        }
        if now - last_sync.0 >= SYNC_NS {
            shared
                .published
                .fetch_add(ctx.counters.published - last_sync.1, Ordering::Relaxed);
            last_sync = (now, ctx.counters.published);
        }
    }
    shared
        .published
        .fetch_add(ctx.counters.published - last_sync.1, Ordering::Relaxed);
}

/// Publishes `count` messages (fewer if the bus closes the publisher), round-robin over the
/// publisher's topics.
fn publish_batch(p: &mut Pub, ctx: &mut Ctx<'_>, payload: &mut [u8], now: u64, count: u64) {
    let plan = ctx.plan;
    for _ in 0..count {
        let slot = p.round_robin;
        p.round_robin = if slot + 1 == p.topics.len() {
            0
        } else {
            slot + 1
        };
        let sent_ns = match p.schedule {
            Some(schedule) => schedule.scheduled_ns(p.sent),
            None => now,
        };
        let topic = p.topics[slot];
        let header = PayloadHeader {
            publisher: p.index,
            topic,
            seq: p.next_seq[slot],
            sent_ns,
        };
        payload[..HEADER_LEN].copy_from_slice(&header.encode());
        match p.handle.publish(&plan.topic_names[topic as usize], payload) {
            Ok(()) => {}
            Err(bus::Error::Closed(notice)) => {
                p.closed = true;
                let why = notice.map_or_else(|| "closed".to_string(), |n| n.to_string());
                ctx.error(format!("publisher {}: closed by the bus: {why}", p.index));
                return;
            }
            Err(e) => {
                // Not sent: the stream's sequence stays where it is, so nothing is expected.
                ctx.counters.publish_errors += 1;
                ctx.error(format!("publisher {}: inproc error: {e}", p.index));
                continue;
            }
        }
        p.next_seq[slot] += 1;
        p.sent += 1;
        ctx.counters.published += 1;
        if sent_ns >= ctx.window_start && sent_ns < ctx.window_end {
            ctx.counters.published_window += 1;
        }
    }
}

/// After the end: the open-loop messages never sent, a round trip behind the last publish
/// (every publish before it was admitted or refused by then), and the refusals of quiet
/// publishes, which a refused publish's stream must not expect.
fn settle_publisher(p: &mut Pub, ctx: &mut Ctx<'_>, end_ns: u64) {
    if let Some(schedule) = p.schedule {
        ctx.counters.behind_schedule += schedule.due(end_ns - 1).saturating_sub(p.sent);
    }
    if p.closed {
        return;
    }
    if let Err(e) = p.handle.stats() {
        ctx.error(format!(
            "publisher {}: the end-of-run round trip failed: {e}",
            p.index
        ));
    }
    let (refused, uncounted) = p.handle.take_async_errors();
    let refusals = refused.len() as u64 + uncounted;
    if refusals > 0 {
        ctx.counters.publish_errors += refusals;
        for e in refused {
            ctx.error(format!("publisher {}: inproc error: {e}", p.index));
        }
    }
}

/// Takes deliveries until every expected one arrived everywhere, deliveries stopped for
/// [`DRAIN_IDLE_NS`] after the end, or [`DRAIN_MAX_NS`] passed.
fn receive_until_drained(subs: &mut [Sub], ctx: &mut Ctx<'_>, shared: &Shared, end_ns: u64) {
    let plan = ctx.plan;
    let clock = plan.clock;
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut batch: Vec<Message> = Vec::with_capacity(TAKE_TURN_MAX);
    let mut synced_unique = 0u64;
    let mut last_sync = 0u64;
    let mut global = (0u64, 0u64);
    let delay = Duration::from_micros(plan.subscriber_delay_us);
    let turn_max = if delay.is_zero() {
        TAKE_TURN_MAX
    } else {
        THROTTLED_TAKE_MAX
    };
    loop {
        // A pass with `try_recv`, and only after one that found nothing a pass that
        // registers the waker (`poll_recv`) before the thread parks: registering costs an
        // atomic exchange and a waker clone per subscription, which thousands of busy
        // subscriptions would pay on every pass for nothing.
        let mut took = false;
        for register in [false, true] {
            for s in subs.iter_mut() {
                for j in 0..s.subscriptions.len() {
                    let waker = register.then_some(&mut cx);
                    if take_turn(s, j, ctx, waker, (&mut batch, turn_max)) {
                        took = true;
                        if !delay.is_zero() {
                            std::thread::sleep(delay);
                        }
                    }
                }
            }
            if took {
                break;
            }
        }
        let now = clock.now_ns();
        if now - last_sync >= SYNC_NS || now >= end_ns {
            last_sync = now;
            if ctx.unique != synced_unique {
                shared
                    .delivered
                    .fetch_add(ctx.unique - synced_unique, Ordering::AcqRel);
                synced_unique = ctx.unique;
            }
        }
        if now >= end_ns {
            let delivered = shared.delivered.load(Ordering::Acquire);
            if delivered != global.0 || global.1 == 0 {
                global = (delivered, now);
            }
            let all_flushed = shared.flushed.load(Ordering::Acquire) == plan.threads;
            let complete = all_flushed && delivered >= shared.expected.load(Ordering::Acquire);
            if complete || now - global.1 > DRAIN_IDLE_NS || now > end_ns + DRAIN_MAX_NS {
                break;
            }
            if subs
                .iter()
                .all(|s| s.subscriptions.iter().all(Option::is_none))
            {
                break;
            }
        }
        if !took {
            std::thread::park_timeout(IDLE_PARK);
        }
    }
}

/// Takes up to `turn_max` messages from subscription `j` of `s`, then accounts them
/// with one clock reading; returns whether it took anything. With a context, an empty
/// subscription registers its waker (to be woken when something comes).
fn take_turn(
    s: &mut Sub,
    j: usize,
    ctx: &mut Ctx<'_>,
    mut cx: Option<&mut Context<'_>>,
    (batch, turn_max): (&mut Vec<Message>, usize),
) -> bool {
    let Some(subscription) = &mut s.subscriptions[j] else {
        return false;
    };
    let topic = s.accounting.sub_ids[j];
    let mut ended = None;
    while batch.len() < turn_max {
        let next = match cx.as_deref_mut() {
            None => match subscription.try_recv() {
                Ok(Some(message)) => Poll::Ready(Some(Ok(message))),
                Ok(None) => Poll::Pending,
                Err(e) => Poll::Ready(Some(Err(e))),
            },
            Some(cx) => subscription.poll_recv(cx),
        };
        match next {
            Poll::Ready(Some(Ok(message))) => batch.push(message),
            Poll::Ready(Some(Err(e))) => {
                ended = Some(e.to_string());
                break;
            }
            Poll::Ready(None) => {
                ended = Some(
                    subscription
                        .recv_timeout(Duration::ZERO)
                        .err()
                        .map_or_else(|| "closed".to_string(), |e| e.to_string()),
                );
                break;
            }
            Poll::Pending => break,
        }
    }
    let took = !batch.is_empty();
    if took {
        let recv_ns = ctx.plan.clock.now_ns();
        let name = &ctx.plan.topic_names[topic as usize];
        let mut ack = None::<usize>;
        for (i, message) in batch.iter().enumerate() {
            let wire_topic = (message.topic() == name.as_str()).then_some(topic);
            let redelivery = message.delivery_count() > 1;
            if redelivery {
                ctx.counters.redelivered += 1;
            }
            if !s.accounting.ack_through.is_empty()
                && ack.is_none_or(|a| batch[a].seq() < message.seq())
            {
                ack = Some(i);
            }
            driver::deliver(
                &mut s.accounting,
                ctx,
                wire_topic,
                message.payload(),
                message.seq(),
                recv_ns,
                redelivery,
            );
        }
        if let Some(a) = ack {
            // One cumulative ack per turn, through the highest sequence number taken, as
            // the network subscribers do per read.
            if let Err(e) = subscription.ack_through(&batch[a]) {
                ctx.error(format!(
                    "subscriber {} topic {topic}: ack failed: {e}",
                    s.accounting.index
                ));
            }
        }
        batch.clear();
    }
    if let Some(why) = ended {
        if let Some(subscription) = s.subscriptions[j].take() {
            ctx.counters.dropped_reported += subscription.dropped();
            ctx.counters.gap_missed += subscription.missed();
            s.accounting.replay[j].gap_missed += subscription.missed();
        }
        ctx.error(format!(
            "subscriber {} topic {topic}: {why}",
            s.accounting.index
        ));
    }
    took
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishers_and_subscribers_get_threads_of_their_own() {
        let a = assignments(3, 4, 2, None);
        assert_eq!(a.len(), 4);
        assert_eq!(a[0].publishers, vec![0, 2]);
        assert_eq!(a[1].publishers, vec![1]);
        assert!(a[0].subscribers.is_empty() && a[1].subscribers.is_empty());
        assert_eq!(a[2].subscribers, vec![0, 2]);
        assert_eq!(a[3].subscribers, vec![1, 3]);
        // Fewer publishers than threads: no empty thread.
        let a = assignments(1, 16, 4, Some(&CoreList(vec![0, 1])));
        assert_eq!(a.len(), 5);
        assert_eq!(a[0].publishers, vec![0]);
        assert_eq!(a[4].subscribers, vec![3, 7, 11, 15]);
        assert_eq!(a[3].core, Some(1));
    }
}
