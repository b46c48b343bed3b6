//! Traffic that crosses shards: every placement of publisher, topic owner and subscriber
//! delivers; per-topic order holds with concurrent publishers on different shards; nothing is
//! lost or duplicated under load; and with rings shrunk to one or two slots, a storm of
//! publishes from every shard to every other shard still finishes (a full ring pauses a
//! publisher, it never wedges the mesh or loses a message).
//!
//! Every wait is bounded. Publishers and subscribers run on their own threads and are joined
//! against a deadline, so a wedged broker fails the test with a report of who got how far,
//! instead of hanging it.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use corebus::client::{Client, ClientOptions, Delivery, Subscription};
use corebus::config::Config;
use corebus::server::Broker;

const SHARDS: usize = 4;
/// One delivery, when nothing else is going on.
const RECV: Duration = Duration::from_secs(10);
/// A whole run: past this, the broker is taken to be wedged and the test fails.
const RUN_DEADLINE: Duration = Duration::from_secs(45);
/// Storm volume divisor: unoptimised builds move the same traffic several times slower.
const STORM_SCALE_DOWN: u32 = if cfg!(debug_assertions) { 2 } else { 1 };

// ---------------------------------------------------------------------------------------------
// Local helpers.

/// Payload: publisher id and that publisher's counter (for this topic), then padding.
fn payload(publisher: u32, counter: u32, len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len.max(8));
    bytes.extend_from_slice(&publisher.to_be_bytes());
    bytes.extend_from_slice(&counter.to_be_bytes());
    bytes.resize(len.max(8), 0xab);
    bytes
}

fn parse_payload(bytes: &[u8]) -> Option<(u32, u32)> {
    let publisher = u32::from_be_bytes(bytes.get(0..4)?.try_into().ok()?);
    let counter = u32::from_be_bytes(bytes.get(4..8)?.try_into().ok()?);
    Some((publisher, counter))
}

/// Like `common::client_on_shard`, but the confirmations may take as long as a whole run
/// (under a storm a confirm queues behind thousands of quiet publishes on tiny rings).
fn patient_client_on_shard(addr: SocketAddr, shard: usize) -> Client {
    for _ in 0..500 {
        let client = Client::connect_with(
            addr,
            ClientOptions {
                name: format!("cross-shard-{shard}"),
                request_timeout: RUN_DEADLINE,
                ..ClientOptions::default()
            },
        )
        .expect("client connects");
        if usize::from(client.server_info().shard) == shard {
            return client;
        }
    }
    panic!("no connection landed on shard {shard}");
}

/// What one subscription saw: per topic, the sequence numbers contiguous from 1, and per
/// (topic, publisher) the counters contiguous from 0, and per topic the publish timestamps
/// (stamped by the owner) never going back. Nothing is lost here, so a gap, a repeat or a
/// step backwards is an error.
#[derive(Debug, Default)]
struct OrderCheck {
    last_seq: HashMap<String, u64>,
    last_timestamp_ns: HashMap<String, u64>,
    last_counter: HashMap<(String, u32), u32>,
    received: u64,
}

impl OrderCheck {
    fn observe(&mut self, delivery: &Delivery) -> Result<(), String> {
        self.received += 1;
        let last = self.last_seq.entry(delivery.topic.clone()).or_insert(0);
        if delivery.seq != *last + 1 {
            return Err(format!(
                "topic {}: seq {} arrived after seq {} (gap, duplicate or reorder)",
                delivery.topic, delivery.seq, last
            ));
        }
        *last = delivery.seq;
        let last_timestamp = self
            .last_timestamp_ns
            .entry(delivery.topic.clone())
            .or_insert(0);
        if delivery.timestamp_ns == 0 || delivery.timestamp_ns < *last_timestamp {
            return Err(format!(
                "topic {}: seq {} has timestamp {} after {}",
                delivery.topic, delivery.seq, delivery.timestamp_ns, last_timestamp
            ));
        }
        *last_timestamp = delivery.timestamp_ns;
        let (publisher, counter) = parse_payload(&delivery.payload)
            .ok_or_else(|| format!("topic {}: short payload", delivery.topic))?;
        let key = (delivery.topic.clone(), publisher);
        let expected = self.last_counter.get(&key).map_or(0, |c| c + 1);
        if counter != expected {
            return Err(format!(
                "topic {} publisher {publisher}: counter {counter}, expected {expected} \
                 (seq {})",
                delivery.topic, delivery.seq
            ));
        }
        self.last_counter.insert(key, counter);
        Ok(())
    }

    /// Every listed topic ended at exactly `seq`, and no other topic was seen.
    fn assert_complete(&self, who: &str, topics: &[String], seq: u64) {
        for topic in topics {
            assert_eq!(
                self.last_seq.get(topic).copied().unwrap_or(0),
                seq,
                "{who}: last seq of {topic}"
            );
        }
        assert_eq!(
            self.last_seq.len(),
            topics.len(),
            "{who}: saw topics {:?}, expected {topics:?}",
            self.last_seq.keys().collect::<Vec<_>>()
        );
        assert_eq!(self.received, seq * topics.len() as u64, "{who}: count");
    }
}

/// A thread whose result is awaited against a deadline (a panic in it becomes an `Err`).
struct Bounded<T> {
    name: String,
    result: mpsc::Receiver<Result<T, String>>,
}

fn spawn_bounded<T: Send + 'static>(
    name: String,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Bounded<T> {
    let (tx, result) = mpsc::channel();
    let thread_name = name.clone();
    thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|p| {
                let message = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(format!("{thread_name} panicked: {message}"))
            });
            let _ = tx.send(outcome);
        })
        .expect("spawn");
    Bounded { name, result }
}

impl<T> Bounded<T> {
    fn join_by(self, deadline: Instant) -> Result<T, String> {
        match self
            .result
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("{} did not finish before the deadline", self.name)),
        }
    }
}

/// Joins every thread by the deadline, collecting results and the failures in `errors`.
fn join_all<T>(threads: Vec<Bounded<T>>, deadline: Instant, errors: &mut Vec<String>) -> Vec<T> {
    let mut results = Vec::new();
    for thread in threads {
        match thread.join_by(deadline) {
            Ok(result) => results.push(result),
            Err(e) => errors.push(e),
        }
    }
    results
}

/// Progress counters of every thread in a run, reported when the run fails.
#[derive(Default)]
struct Progress {
    entries: Vec<(String, u64, Arc<AtomicU64>)>,
}

impl Progress {
    fn track(&mut self, name: &str, expected: u64) -> Arc<AtomicU64> {
        let counter = Arc::new(AtomicU64::new(0));
        self.entries
            .push((name.to_string(), expected, counter.clone()));
        counter
    }

    fn report(&self) -> String {
        self.entries
            .iter()
            .map(|(name, expected, done)| {
                format!("  {name}: {}/{expected}\n", done.load(Ordering::Relaxed))
            })
            .collect()
    }
}

/// Fails a run without dropping the broker: a wedged broker could hang in `Drop` (it joins
/// its shards), and the point is to fail, not to hang. The process reclaims it at exit.
fn fail_run(broker: Broker, started: Instant, progress: &Progress, errors: &[String]) -> ! {
    std::mem::forget(broker);
    panic!(
        "run failed after {:.1?} (deadline {RUN_DEADLINE:?}):\n{}\nprogress (done/expected):\n{}",
        started.elapsed(),
        errors.join("\n"),
        progress.report()
    );
}

/// Drains `subscription` on its own thread until `expected` messages arrived, checking
/// order as they come; then makes sure no extra message follows. `pause_every` slows the
/// drain down (a nap of `pause` every that many messages).
fn spawn_drain(
    name: String,
    mut subscription: Subscription,
    expected: u64,
    deadline: Instant,
    done: Arc<AtomicU64>,
    pace: Option<(u64, Duration)>,
) -> Bounded<(OrderCheck, u64)> {
    let who = name.clone();
    spawn_bounded(name, move || {
        let mut check = OrderCheck::default();
        while check.received < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            let delivery = subscription.recv_timeout(left).map_err(|e| {
                format!("{who}: {e} after {} of {expected} messages", check.received)
            })?;
            check
                .observe(&delivery)
                .map_err(|e| format!("{who}: {e}"))?;
            done.store(check.received, Ordering::Relaxed);
            if let Some((every, pause)) = pace {
                if check.received % every == 0 {
                    thread::sleep(pause);
                }
            }
        }
        match subscription.recv_timeout(Duration::from_millis(100)) {
            Err(corebus::client::Error::Timeout) => {}
            Ok(extra) => {
                return Err(format!(
                    "{who}: an extra message after all {expected}: {} seq {}",
                    extra.topic, extra.seq
                ))
            }
            Err(e) => return Err(format!("{who}: {e} after all messages")),
        }
        Ok((check, subscription.dropped()))
    })
}

/// What one publishing connection sends: `count` messages to each topic, stamped with
/// `publisher` and a per-topic counter, padded to `payload_len` bytes.
struct Publishing {
    publisher: u32,
    topics: Vec<String>,
    count: u32,
    payload_len: usize,
}

/// Publishes interleaved over the topics, quietly except the last message per topic, which
/// is confirmed (a barrier: the owner has sequenced everything this connection sent to that
/// topic). Starts when everyone is at `start`. Returns the confirmed sequence numbers.
fn spawn_publisher(
    name: String,
    mut client: Client,
    publishing: Publishing,
    start: Arc<Barrier>,
    done: Arc<AtomicU64>,
) -> Bounded<Vec<u64>> {
    let who = name.clone();
    let Publishing {
        publisher,
        topics,
        count,
        payload_len,
    } = publishing;
    spawn_bounded(name, move || {
        start.wait();
        let mut confirmed = Vec::new();
        for counter in 0..count {
            for topic in &topics {
                let bytes = payload(publisher, counter, payload_len);
                if counter + 1 == count {
                    let seq = client
                        .publish_confirmed(topic, &bytes)
                        .map_err(|e| format!("{who}: confirm on {topic}: {e}"))?;
                    confirmed.push(seq);
                } else {
                    client
                        .publish(topic, &bytes)
                        .map_err(|e| format!("{who}: publish {counter} on {topic}: {e}"))?;
                }
            }
            done.store(u64::from(counter + 1), Ordering::Relaxed);
        }
        let (refusals, lost) = client.take_async_errors();
        if !refusals.is_empty() || lost > 0 {
            return Err(format!(
                "{who}: quiet publishes refused: {refusals:?} (+{lost} more)"
            ));
        }
        Ok(confirmed)
    })
}

// ---------------------------------------------------------------------------------------------
// Placement.

#[test]
fn every_publisher_owner_and_subscriber_shard_combination_delivers() {
    let broker = start(config(SHARDS));
    let addr = broker.native_addr();
    let topics: Vec<String> = (0..SHARDS)
        .map(|owner| topic_owned_by(&format!("place.o{owner}"), owner, SHARDS))
        .collect();

    // On every shard: one subscriber with an exact subscription to each topic and one with
    // a pattern covering them all.
    let mut subscribers = Vec::new();
    for shard in 0..SHARDS {
        let mut exact_client = client_on_shard(addr, shard as u16);
        let exact: Vec<Subscription> = topics
            .iter()
            .map(|topic| exact_client.subscribe(topic).unwrap())
            .collect();
        let mut pattern_client = client_on_shard(addr, shard as u16);
        let pattern = pattern_client.subscribe("place.>").unwrap();
        subscribers.push((exact_client, exact, pattern_client, pattern));
    }
    let mut publishers: Vec<Client> = (0..SHARDS)
        .map(|shard| client_on_shard(addr, shard as u16))
        .collect();

    for (publisher_shard, publisher) in publishers.iter_mut().enumerate() {
        for (owner, topic) in topics.iter().enumerate() {
            let body = format!("from {publisher_shard} via {owner}");
            let seq = publisher
                .publish_confirmed(topic, body.as_bytes())
                .unwrap_or_else(|e| panic!("publish {publisher_shard}->{owner}: {e}"));
            // Each publisher in turn adds one message to every topic.
            assert_eq!(seq, publisher_shard as u64 + 1, "{topic}");
            for (subscriber_shard, (_, exact, _, pattern)) in subscribers.iter_mut().enumerate() {
                let combination = format!(
                    "publisher shard {publisher_shard}, owner {owner}, \
                     subscriber shard {subscriber_shard}"
                );
                for (kind, subscription) in [("exact", &mut exact[owner]), ("pattern", pattern)] {
                    let message = subscription
                        .recv_timeout(RECV)
                        .unwrap_or_else(|e| panic!("{combination} ({kind}): {e}"));
                    assert_eq!(message.topic, *topic, "{combination} ({kind})");
                    assert_eq!(message.seq, seq, "{combination} ({kind})");
                    assert_eq!(message.payload, body.as_bytes(), "{combination} ({kind})");
                }
            }
        }
    }
    // Nothing more than one delivery per subscription per publish.
    for (_, exact, _, pattern) in &mut subscribers {
        for subscription in exact.iter_mut().chain([pattern]) {
            assert_eq!(subscription.try_recv().unwrap(), None);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Order with concurrent publishers.

/// Four publishers, one per shard, publish `per_topic` messages to each topic at once;
/// a subscriber on every shard (exact per topic, plus a pattern over all of them) checks that
/// each topic's sequence runs 1..=4*per_topic with no gap or duplicate and that each
/// publisher's messages keep their order.
fn concurrent_publishers_keep_per_topic_order(tag: &str, owners: &[usize], per_topic: u32) {
    let started = Instant::now();
    let deadline = started + RUN_DEADLINE;
    let broker = start(config(SHARDS));
    let addr = broker.native_addr();
    let topics: Vec<String> = owners
        .iter()
        .enumerate()
        .map(|(i, &owner)| topic_owned_by(&format!("{tag}.k{i}"), owner, SHARDS))
        .collect();
    let total_per_topic = u64::from(per_topic) * SHARDS as u64;

    let mut progress = Progress::default();
    let mut clients = Vec::new();
    let mut drains = Vec::new();
    for shard in 0..SHARDS {
        let mut subscriber = patient_client_on_shard(addr, shard);
        for topic in &topics {
            let name = format!("exact {topic} on shard {shard}");
            let done = progress.track(&name, total_per_topic);
            let subscription = subscriber.subscribe(topic).unwrap();
            drains.push((
                name.clone(),
                vec![topic.clone()],
                spawn_drain(name, subscription, total_per_topic, deadline, done, None),
            ));
        }
        let pattern = format!("{tag}.>");
        let name = format!("pattern {pattern} on shard {shard}");
        let expected = total_per_topic * topics.len() as u64;
        let done = progress.track(&name, expected);
        let subscription = subscriber.subscribe(&pattern).unwrap();
        drains.push((
            name.clone(),
            topics.clone(),
            spawn_drain(name, subscription, expected, deadline, done, None),
        ));
        clients.push(subscriber);
    }

    let start_line = Arc::new(Barrier::new(SHARDS));
    let publishers: Vec<_> = (0..SHARDS)
        .map(|shard| {
            let name = format!("publisher on shard {shard}");
            let done = progress.track(&name, u64::from(per_topic));
            spawn_publisher(
                name,
                patient_client_on_shard(addr, shard),
                Publishing {
                    publisher: shard as u32,
                    topics: topics.clone(),
                    count: per_topic,
                    payload_len: 8,
                },
                start_line.clone(),
                done,
            )
        })
        .collect();

    let mut errors = Vec::new();
    join_all(publishers, deadline, &mut errors);
    let mut checks = Vec::new();
    for (name, expected_topics, drain) in drains {
        match drain.join_by(deadline) {
            Ok((check, _)) => checks.push((name, expected_topics, check)),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        fail_run(broker, started, &progress, &errors);
    }
    for (name, expected_topics, check) in &checks {
        check.assert_complete(name, expected_topics, total_per_topic);
        for topic in expected_topics {
            for publisher in 0..SHARDS as u32 {
                assert_eq!(
                    check.last_counter.get(&(topic.clone(), publisher)),
                    Some(&(per_topic - 1)),
                    "{name}: publisher {publisher} on {topic}"
                );
            }
        }
    }
    drop(clients);
}

#[test]
fn concurrent_publishers_on_every_shard_keep_one_topics_order() {
    concurrent_publishers_keep_per_topic_order("order1", &[1], 5_000);
}

#[test]
fn concurrent_publishers_keep_order_on_topics_owned_by_different_shards_at_once() {
    concurrent_publishers_keep_per_topic_order("order4", &[0, 1, 2, 3], 1_500);
}

// ---------------------------------------------------------------------------------------------
// Moderate load: exact counts.

#[test]
fn nothing_is_lost_or_duplicated_at_moderate_load() {
    const TOPICS: usize = 8;
    const PER_TOPIC_PER_PUBLISHER: u32 = 1_250;
    let started = Instant::now();
    let deadline = started + RUN_DEADLINE;
    let broker = start(config(SHARDS));
    let addr = broker.native_addr();
    // Topic i is `load.k{i}.t..`, owned by shard i % 4.
    let topics: Vec<String> = (0..TOPICS)
        .map(|i| topic_owned_by(&format!("load.k{i}"), i % SHARDS, SHARDS))
        .collect();
    let per_topic = u64::from(PER_TOPIC_PER_PUBLISHER) * SHARDS as u64;

    // Per subscriber (one connection each): its shard, and its subscriptions with the
    // indexes of the topics each one must get.
    let all: Vec<usize> = (0..TOPICS).collect();
    let plan: Vec<(usize, Subscriptions)> = vec![
        (0, exact_each(&topics, &[0, 1, 2, 3])),
        (1, exact_each(&topics, &[4, 5, 6, 7])),
        (2, vec![("load.>".into(), all.clone())]),
        (3, vec![("load.k1.*".into(), vec![1])]),
        (0, exact_each(&topics, &all)),
        (1, vec![("load.*.*".into(), all.clone())]),
        // One connection, two subscriptions matching the same topic: each gets it once.
        (
            2,
            [
                exact_each(&topics, &[0]),
                vec![("load.k0.*".into(), vec![0])],
            ]
            .concat(),
        ),
        (3, vec![("load.>".into(), all.clone())]),
    ];

    let mut progress = Progress::default();
    let mut clients = Vec::new();
    let mut drains = Vec::new();
    for (index, (shard, subjects)) in plan.into_iter().enumerate() {
        let mut subscriber = patient_client_on_shard(addr, shard);
        for (subject, topic_indexes) in subjects {
            let name = format!("subscriber {index} (shard {shard}) {subject}");
            let expected = per_topic * topic_indexes.len() as u64;
            let done = progress.track(&name, expected);
            let subscription = subscriber.subscribe(&subject).unwrap();
            let expected_topics: Vec<String> =
                topic_indexes.iter().map(|&i| topics[i].clone()).collect();
            drains.push((
                name.clone(),
                expected_topics,
                spawn_drain(name, subscription, expected, deadline, done, None),
            ));
        }
        clients.push(subscriber);
    }

    let start_line = Arc::new(Barrier::new(SHARDS));
    let publishers: Vec<_> = (0..SHARDS)
        .map(|shard| {
            let name = format!("publisher on shard {shard}");
            let done = progress.track(&name, u64::from(PER_TOPIC_PER_PUBLISHER));
            spawn_publisher(
                name,
                patient_client_on_shard(addr, shard),
                Publishing {
                    publisher: shard as u32,
                    topics: topics.clone(),
                    count: PER_TOPIC_PER_PUBLISHER,
                    payload_len: 32,
                },
                start_line.clone(),
                done,
            )
        })
        .collect();

    let mut errors = Vec::new();
    join_all(publishers, deadline, &mut errors);
    let mut checks = Vec::new();
    for (name, expected_topics, drain) in drains {
        match drain.join_by(deadline) {
            Ok((check, _)) => checks.push((name, expected_topics, check)),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        fail_run(broker, started, &progress, &errors);
    }
    let mut total = 0;
    for (name, expected_topics, check) in &checks {
        check.assert_complete(name, expected_topics, per_topic);
        total += check.received;
    }
    // 4 exact + 4 exact + 8 + 1 + 8 + 8 + (1 + 1) + 8 topic-streams of `per_topic` each.
    assert_eq!(total, 43 * per_topic);
    drop(clients);
}

/// Subjects, each with the indexes of the topics it must receive.
type Subscriptions = Vec<(String, Vec<usize>)>;

/// One exact subscription per listed topic.
fn exact_each(topics: &[String], indexes: &[usize]) -> Subscriptions {
    indexes
        .iter()
        .map(|&i| (topics[i].clone(), vec![i]))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The cross-shard storm.

/// The default byte bound of a ring (`--ring-bytes-max`).
const RING_BYTES: usize = 1024 * 1024;

/// Tiny rings; every shard publishes at full speed to topics owned by every *other* shard
/// while subscribers on every shard (exact and pattern) take everything. Requests rings and
/// terminal rings are full in every direction at once, and each shard is at the same time a
/// publisher's shard, an owner and a subscriber's shard. The run must finish, and every
/// subscription must get every message of its topics in order.
fn storm(
    label: &str,
    (ring_slots, ring_batch_max, ring_bytes_max): (usize, usize, usize),
    per_topic: u32,
) {
    const TOPICS_PER_OWNER: usize = 2;
    let started = Instant::now();
    let deadline = started + RUN_DEADLINE;
    let broker = start(Config {
        ring_slots,
        ring_batch_max,
        ring_bytes_max,
        outbound_bytes_max: 64 * 1024 * 1024,
        ..config(SHARDS)
    });
    let addr = broker.native_addr();
    let prefix = format!("storm.{label}");
    // topics[owner] = the topics that shard owns.
    let topics: Vec<Vec<String>> = (0..SHARDS)
        .map(|owner| {
            (0..TOPICS_PER_OWNER)
                .map(|k| topic_owned_by(&format!("{prefix}.o{owner}k{k}"), owner, SHARDS))
                .collect()
        })
        .collect();
    let all_topics: Vec<String> = topics.iter().flatten().cloned().collect();
    // Each topic's owner gets publishes from the three other shards.
    let per_topic_total = u64::from(per_topic) * (SHARDS as u64 - 1);

    let mut progress = Progress::default();
    let mut clients = Vec::new();
    let mut drains = Vec::new();
    for shard in 0..SHARDS {
        let mut exact = patient_client_on_shard(addr, shard);
        for topic in &all_topics {
            let name = format!("shard {shard} exact {topic}");
            let done = progress.track(&name, per_topic_total);
            let subscription = exact.subscribe(topic).unwrap();
            drains.push((
                name.clone(),
                vec![topic.clone()],
                spawn_drain(name, subscription, per_topic_total, deadline, done, None),
            ));
        }
        clients.push(exact);
        let mut patterns = patient_client_on_shard(addr, shard);
        let pattern = format!("{prefix}.>");
        let name = format!("shard {shard} pattern {pattern}");
        let expected = per_topic_total * all_topics.len() as u64;
        let done = progress.track(&name, expected);
        let subscription = patterns.subscribe(&pattern).unwrap();
        drains.push((
            name.clone(),
            all_topics.clone(),
            spawn_drain(name, subscription, expected, deadline, done, None),
        ));
        clients.push(patterns);
    }

    // One publishing connection per (publisher shard, other owner shard). A publisher's id is
    // its shard: each topic has exactly one publisher per other shard.
    let pairs: Vec<(usize, usize)> = (0..SHARDS)
        .flat_map(|p| (0..SHARDS).filter(move |&o| o != p).map(move |o| (p, o)))
        .collect();
    let start_line = Arc::new(Barrier::new(pairs.len()));
    let publishers: Vec<_> = pairs
        .iter()
        .map(|&(shard, owner)| {
            let name = format!("publisher shard {shard} -> owner {owner}");
            let done = progress.track(&name, u64::from(per_topic));
            spawn_publisher(
                name,
                patient_client_on_shard(addr, shard),
                Publishing {
                    publisher: shard as u32,
                    topics: topics[owner].clone(),
                    count: per_topic,
                    payload_len: 16,
                },
                start_line.clone(),
                done,
            )
        })
        .collect();

    let mut errors = Vec::new();
    join_all(publishers, deadline, &mut errors);
    let publish_time = started.elapsed();
    let mut checks = Vec::new();
    for (name, expected_topics, drain) in drains {
        match drain.join_by(deadline) {
            Ok((check, dropped)) => checks.push((name, expected_topics, check, dropped)),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        fail_run(broker, started, &progress, &errors);
    }
    let mut deliveries = 0;
    for (name, expected_topics, check, dropped) in &checks {
        assert_eq!(*dropped, 0, "{name}: broker reported drops");
        check.assert_complete(name, expected_topics, per_topic_total);
        for topic in expected_topics {
            let owner = (0..SHARDS).find(|&o| topics[o].contains(topic)).unwrap();
            for publisher in (0..SHARDS).filter(|&p| p != owner) {
                assert_eq!(
                    check.last_counter.get(&(topic.clone(), publisher as u32)),
                    Some(&(per_topic - 1)),
                    "{name}: publisher {publisher} on {topic}"
                );
            }
        }
        deliveries += check.received;
    }
    eprintln!(
        "storm {label} (ring_slots={ring_slots}, ring_batch_max={ring_batch_max}, \
         ring_bytes_max={ring_bytes_max}): \
         {} messages published in {publish_time:.1?}, {deliveries} deliveries checked in {:.1?}",
        per_topic_total * all_topics.len() as u64,
        started.elapsed()
    );
    drop(clients);
}

#[test]
fn cross_shard_storm_with_tiny_rings_finishes_and_delivers_everything_in_order() {
    for round in 0..2 {
        storm(
            &format!("tiny{round}"),
            (2, 4, RING_BYTES),
            5_000 / STORM_SCALE_DOWN,
        );
    }
}

#[test]
fn cross_shard_storm_with_single_message_rings_finishes_and_delivers_everything_in_order() {
    for round in 0..2 {
        storm(
            &format!("single{round}"),
            (1, 1, RING_BYTES),
            2_000 / STORM_SCALE_DOWN,
        );
    }
}

/// Rings with room for many batches but a byte bound of one: each ring holds one batch at a
/// time (`--ring-bytes-max` lets a batch heavier than the bound into an empty ring only), so
/// every handoff waits for the peer to take the previous one.
#[test]
fn cross_shard_storm_with_a_one_byte_ring_bound_finishes_and_delivers_everything_in_order() {
    storm("onebyte", (64, 64, 1), 2_000 / STORM_SCALE_DOWN);
}

// ---------------------------------------------------------------------------------------------
// Joining while traffic is in flight.

/// Drains until the topic's last sequence number, once known, has arrived. The first message
/// may be any sequence number (the subscription joined mid-stream); from there on sequence
/// numbers and each publisher's counters must be contiguous. Returns (first seq, check).
fn spawn_suffix_drain(
    name: String,
    mut subscription: Subscription,
    final_seq: Arc<AtomicU64>,
    deadline: Instant,
    done: Arc<AtomicU64>,
) -> Bounded<(u64, OrderCheck)> {
    let who = name.clone();
    spawn_bounded(name, move || {
        let mut check = OrderCheck::default();
        let mut first = None;
        loop {
            let last = check.last_seq.values().next().copied().unwrap_or(0);
            let want = final_seq.load(Ordering::Acquire);
            if want != 0 && last == want {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{who}: at seq {last}, final {want}, at the deadline"
                ));
            }
            let delivery = match subscription.recv_timeout(Duration::from_millis(100)) {
                Ok(delivery) => delivery,
                Err(corebus::client::Error::Timeout) => continue,
                Err(e) => return Err(format!("{who}: {e} at seq {last}")),
            };
            if first.is_none() {
                // Accept wherever the stream was when this subscription joined.
                first = Some(delivery.seq);
                check
                    .last_seq
                    .insert(delivery.topic.clone(), delivery.seq - 1);
                let (publisher, counter) = parse_payload(&delivery.payload).unwrap_or_default();
                if counter > 0 {
                    check
                        .last_counter
                        .insert((delivery.topic.clone(), publisher), counter - 1);
                }
            } else if let Some((publisher, counter)) = parse_payload(&delivery.payload) {
                // A publisher first seen mid-stream starts at whatever counter it is at.
                let key = (delivery.topic.clone(), publisher);
                if counter > 0 && !check.last_counter.contains_key(&key) {
                    check.last_counter.insert(key, counter - 1);
                }
            }
            check
                .observe(&delivery)
                .map_err(|e| format!("{who}: {e}"))?;
            done.store(check.received, Ordering::Relaxed);
        }
        match subscription.recv_timeout(Duration::from_millis(100)) {
            Err(corebus::client::Error::Timeout) => {}
            Ok(extra) => return Err(format!("{who}: extra message seq {}", extra.seq)),
            Err(e) => return Err(format!("{who}: {e} after the last message")),
        }
        Ok((first.unwrap_or(0), check))
    })
}

#[test]
fn a_subscription_joining_mid_stream_gets_every_later_message_without_gaps() {
    let started = Instant::now();
    let deadline = started + RUN_DEADLINE;
    let broker = start(Config {
        ring_slots: 2,
        ring_batch_max: 4,
        outbound_bytes_max: 64 * 1024 * 1024,
        ..config(SHARDS)
    });
    let addr = broker.native_addr();
    let owner = 2;
    let topic = topic_owned_by("late", owner, SHARDS);
    let final_seq = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut progress = Progress::default();

    // A subscriber from the start, on shard 3, to know how far the stream has got.
    let mut early_client = patient_client_on_shard(addr, 3);
    let early_done = progress.track("early exact on shard 3", 0);
    let early = spawn_suffix_drain(
        "early exact on shard 3".into(),
        early_client.subscribe(&topic).unwrap(),
        final_seq.clone(),
        deadline,
        early_done.clone(),
    );

    // Publishers on shards 1..=3 (the owner's included) publish until told to stop, then
    // confirm one last message.
    let publishers: Vec<_> = (1..SHARDS)
        .map(|shard| {
            let name = format!("publisher on shard {shard}");
            let done = progress.track(&name, 0);
            let mut client = patient_client_on_shard(addr, shard);
            let (topic, stop, who) = (topic.clone(), stop.clone(), name.clone());
            spawn_bounded(name, move || {
                let mut counter = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    client
                        .publish(&topic, &payload(shard as u32, counter, 16))
                        .map_err(|e| format!("{who}: {e}"))?;
                    counter += 1;
                    done.store(u64::from(counter), Ordering::Relaxed);
                }
                client
                    .publish_confirmed(&topic, &payload(shard as u32, counter, 16))
                    .map_err(|e| format!("{who}: confirm: {e}"))
            })
        })
        .collect();

    let mut errors = Vec::new();
    let flowing = |at_least: u64, counter: &AtomicU64| {
        eventually(deadline.saturating_duration_since(Instant::now()), || {
            counter.load(Ordering::Relaxed) >= at_least
        })
    };
    // Join once thousands of messages have been sequenced and delivered.
    if !flowing(3_000, &early_done) {
        errors.push("the early subscriber never got 3,000 messages".to_string());
    }
    let joined_after = early_done.load(Ordering::Relaxed);
    let mut exact_client = patient_client_on_shard(addr, 0);
    let mut pattern_client = patient_client_on_shard(addr, 1);
    let mut late = Vec::new();
    for (name, subscription) in [
        (
            "late exact on shard 0",
            exact_client.subscribe(&topic).unwrap(),
        ),
        (
            "late pattern on shard 1",
            pattern_client.subscribe("late.>").unwrap(),
        ),
    ] {
        let done = progress.track(name, 0);
        late.push((
            done.clone(),
            spawn_suffix_drain(name.into(), subscription, final_seq.clone(), deadline, done),
        ));
    }
    // Keep publishing until both late subscriptions have seen a few thousand messages.
    for (done, _) in &late {
        if !flowing(3_000, done) {
            errors.push("a late subscription never got 3,000 messages".to_string());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut last = 0;
    for publisher in publishers {
        match publisher.join_by(deadline) {
            Ok(seq) => last = last.max(seq),
            Err(e) => errors.push(e),
        }
    }
    final_seq.store(last, Ordering::Release);
    let mut results = Vec::new();
    for drain in std::iter::once(early).chain(late.into_iter().map(|(_, drain)| drain)) {
        match drain.join_by(deadline) {
            Ok(result) => results.push(result),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        fail_run(broker, started, &progress, &errors);
    }
    let (early_first, early_check) = &results[0];
    assert_eq!(*early_first, 1);
    assert_eq!(early_check.received, last);
    for (first, check) in &results[1..] {
        assert!(
            *first > joined_after,
            "joined after seq {joined_after} was delivered, first got {first}"
        );
        assert_eq!(check.received, last - first + 1, "a contiguous suffix");
    }
    drop((early_client, exact_client, pattern_client));
}

// ---------------------------------------------------------------------------------------------
// A full owner ring pauses a publisher; it does not fail it.

#[test]
fn a_publisher_behind_a_full_ring_is_paused_not_failed_while_a_subscriber_drains_slowly() {
    const PER_PUBLISHER: u32 = 4_000;
    const PAYLOAD: usize = 512;
    let started = Instant::now();
    let deadline = started + RUN_DEADLINE;
    let broker = start(Config {
        ring_slots: 1,
        ring_batch_max: 1,
        // Everything published fits under the limit: 4 * 4,000 * ~550 bytes is ~8.8 MB.
        outbound_bytes_max: 32 * 1024 * 1024,
        ..config(SHARDS)
    });
    let addr = broker.native_addr();
    let owner = 0;
    let topic = topic_owned_by("paused", owner, SHARDS);
    // Publishers on every shard, the owner's included: a remote publisher waits for room in
    // its requests ring to the owner, the owner's own publisher for room in the owner's
    // terminal rings.
    let total = u64::from(PER_PUBLISHER) * SHARDS as u64;

    let mut progress = Progress::default();
    // The slow subscriber buffers little client-side, so the backlog sits in the broker's
    // outbound queue for its connection (under the limit) rather than in the client.
    let mut slow_client = Client::connect_with(
        addr,
        ClientOptions {
            subscription_buffer: 64,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let slow_shard = slow_client.server_info().shard;
    let done = progress.track("slow subscriber", total);
    let slow = spawn_drain(
        format!("slow subscriber on shard {slow_shard}"),
        slow_client.subscribe(&topic).unwrap(),
        total,
        deadline,
        done,
        Some((500, Duration::from_millis(40))),
    );
    let mut fast_client = patient_client_on_shard(addr, 3);
    let done = progress.track("fast subscriber", total);
    let fast = spawn_drain(
        "fast subscriber on shard 3".into(),
        fast_client.subscribe(&topic).unwrap(),
        total,
        deadline,
        done,
        None,
    );

    let start_line = Arc::new(Barrier::new(SHARDS));
    let publishers: Vec<_> = (0..SHARDS)
        .map(|shard| {
            let name = format!("publisher on shard {shard}");
            let done = progress.track(&name, u64::from(PER_PUBLISHER));
            spawn_publisher(
                name,
                patient_client_on_shard(addr, shard),
                Publishing {
                    publisher: shard as u32,
                    topics: vec![topic.clone()],
                    count: PER_PUBLISHER,
                    payload_len: PAYLOAD,
                },
                start_line.clone(),
                done,
            )
        })
        .collect();

    let mut errors = Vec::new();
    let confirmed: Vec<_> = join_all(publishers, deadline, &mut errors)
        .into_iter()
        .flatten()
        .collect();
    let publishers_done = started.elapsed();
    let results = join_all(vec![fast, slow], deadline, &mut errors);
    if !errors.is_empty() {
        fail_run(broker, started, &progress, &errors);
    }
    // Every publisher's last message was sequenced, and the last of them is the last message.
    assert_eq!(confirmed.len(), SHARDS);
    assert_eq!(confirmed.iter().max(), Some(&total));
    for (check, dropped) in &results {
        assert_eq!(*dropped, 0);
        check.assert_complete("subscriber", std::slice::from_ref(&topic), total);
    }
    eprintln!(
        "paused publishers finished after {publishers_done:.1?}; slow subscriber done after {:.1?}",
        started.elapsed()
    );
    drop((slow_client, fast_client));
    let counters = broker.shutdown().unwrap();
    assert!(
        counters.ring_full_pauses > 0,
        "the pauses are counted: {counters:?}"
    );
}
