//! Subscribers that cannot keep up, over real sockets: under `disconnect` the broker sends
//! them `SLOW_CONSUMER` and closes them; under `drop-oldest` it keeps them and accounts for
//! every message they lost with DROPPED frames; either way the fast subscribers get every
//! message in order, and a publisher is held back only while a subscriber on its shard that
//! reads catches up, or once for one stall bound by one that stopped
//! (`--publisher-stall-ms-max`).
//!
//! The slow subscriber is a raw socket with a small receive buffer that does not read until
//! the publisher is done. The fast subscriber is a Rust client draining on its own thread; the
//! publisher keeps at most [`WINDOW`] messages in flight towards it (far below
//! `outbound_bytes_max`), so that "fast" holds whatever the scheduler does on a loaded
//! two-core machine and only the slow subscriber ever meets the policy.
//!
//! Also pinned here, as regressions for bugs these tests found (fixed in fd357b3): a small
//! `outbound_bytes_max` (one 64 KiB write chunk) still lets drop-oldest keep the newest
//! message, and one burst of fan-out does not cut off a subscriber that drains as fast as it
//! can; a Rust client cut off as a slow consumer is told so even with a full subscription
//! buffer, and dropping a client whose subscription buffer is full returns.
//!
//! Every wait is bounded: socket reads and receives have timeouts, and loops have deadlines.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::*;
use corebus::client::{Client, ClientOptions, Error, Subscription};
use corebus::config::{Config, SlowConsumerPolicy};
use corebus::error::ErrorCode;
use corebus::protocol::native::{self, Frame, FRAME_OVERHEAD_MAX, PROTOCOL_VERSION};
use corebus::server::Broker;

/// Messages per run: about 20 MiB, far more than the slow subscriber's socket buffers hold.
const MESSAGES: u64 = 20_000;
const PAYLOAD_BYTES: usize = 1024;
const MESSAGE_BYTES_MAX: usize = 4096;
const OUTBOUND_BYTES_MAX: usize = 64 * 1024;
/// Messages in flight (published, not yet received) towards the fast subscriber at most.
const WINDOW: u64 = 32;
// A full window of the largest possible frames fits in the fast subscriber's outbound queue,
// so the fast subscriber can never be the one over `outbound_bytes_max`.
const _: () =
    assert!((WINDOW as usize) * (PAYLOAD_BYTES + FRAME_OVERHEAD_MAX) < OUTBOUND_BYTES_MAX);
/// Once the window is full, the publisher waits until no more than this many are in flight.
const RESUME_AT: u64 = 8;
/// Messages per burst in [`publish_in_small_bursts`]: well under `outbound_bytes_max`.
const BURST: u64 = 16;
/// The slow raw subscriber's socket receive buffer (the kernel may round it up).
const SLOW_RECV_BUFFER: usize = 32 * 1024;
/// How long one expected frame or message may take.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole publishing run or a whole drain; past this the test fails rather than hangs.
const RUN_DEADLINE: Duration = Duration::from_secs(60);
/// "Never blocked": a generous bound for publishing everything past slow subscribers.
const PUBLISH_BOUND: Duration = Duration::from_secs(30);

const SLOW_EXACT: u32 = 1;
const SLOW_PATTERN: u32 = 2;

// ---------------------------------------------------------------------------------------------
// Local helpers.

fn slow_config(shards: usize, policy: SlowConsumerPolicy) -> Config {
    let mut config = config(shards);
    config.message_bytes_max = MESSAGE_BYTES_MAX;
    config.outbound_bytes_max = OUTBOUND_BYTES_MAX;
    config.slow_consumer = policy;
    // The slow subscriber reads only once the publisher is done: keep a connection the broker
    // is closing until its last frames (the SLOW_CONSUMER error) are read, rather than
    // closing it after the default linger with the error still unsent.
    config.close_linger_ms = RUN_DEADLINE.as_millis() as u64;
    config.shutdown_grace_ms = 2_000;
    config
}

/// Where everyone sits. With four shards, all different: the topic's owner, the publisher,
/// the fast subscriber and the slow ones, so every delivery crosses shards.
struct Placement {
    owner: usize,
    publisher: u16,
    fast: u16,
    slow_raw: u16,
    slow_client: u16,
}

fn placement(shards: usize) -> Placement {
    if shards == 1 {
        Placement {
            owner: 0,
            publisher: 0,
            fast: 0,
            slow_raw: 0,
            slow_client: 0,
        }
    } else {
        assert_eq!(shards, 4);
        Placement {
            owner: 0,
            publisher: 3,
            fast: 2,
            slow_raw: 1,
            slow_client: 0,
        }
    }
}

fn with_shard_counts(scenario: impl Fn(usize)) {
    for shards in [1, 4] {
        eprintln!("--- scenario with {shards} shard(s)");
        scenario(shards);
    }
}

/// The payload of message `index` (0-based; its seq is `index + 1`): the index, then filler.
fn payload(index: u64) -> Vec<u8> {
    let mut bytes = vec![b'.'; PAYLOAD_BYTES];
    bytes[..8].copy_from_slice(&index.to_be_bytes());
    bytes
}

fn payload_index(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

/// A client on `shard` with its own options (`common::client_on_shard` uses the defaults).
fn client_on_shard_with(addr: SocketAddr, shard: u16, options: ClientOptions) -> Client {
    for _ in 0..500 {
        let client = Client::connect_with(addr, options.clone()).expect("client connects");
        if client.server_info().shard == shard {
            return client;
        }
    }
    panic!("no connection landed on shard {shard}");
}

fn publisher_on_shard(addr: SocketAddr, shard: u16) -> Client {
    client_on_shard_with(
        addr,
        shard,
        ClientOptions {
            name: "publisher".into(),
            request_timeout: PUBLISH_BOUND,
            ..ClientOptions::default()
        },
    )
}

/// A frame read by [`RawSubscriber`], owned.
#[derive(Debug, PartialEq, Eq)]
enum Wire {
    Ok { request_id: u32, data: Vec<u8> },
    Err { request_id: u32, code: u16 },
    Msg { sub_id: u32, seq: u64, index: u64 },
    Dropped { sub_id: u32, count: u64, opcode: u8 },
    Pong { request_id: u32 },
    Other(String),
}

/// How a raw connection ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Eof,
    Reset,
}

/// A raw native-protocol subscriber with a small socket receive buffer, which reads only when
/// told to.
struct RawSubscriber {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawSubscriber {
    /// Connects (with a small receive buffer, set before connecting so the window is small
    /// from the start) and handshakes until a connection lands on `shard`.
    fn on_shard(addr: SocketAddr, shard: u16) -> RawSubscriber {
        for _ in 0..500 {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                Some(socket2::Protocol::TCP),
            )
            .unwrap();
            socket.set_recv_buffer_size(SLOW_RECV_BUFFER).unwrap();
            socket.connect(&addr.into()).expect("raw connect");
            let stream: TcpStream = socket.into();
            stream.set_nodelay(true).unwrap();
            stream.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
            let mut raw = RawSubscriber {
                stream,
                buffer: Vec::new(),
            };
            raw.send(Frame::Hello {
                request_id: 1,
                version: PROTOCOL_VERSION,
                client_name: b"slow-raw",
            });
            match raw.next("HELLO reply") {
                Ok(Wire::Ok {
                    request_id: 1,
                    data,
                }) if data.len() >= 4 => {
                    if u16::from_be_bytes([data[2], data[3]]) == shard {
                        return raw;
                    }
                }
                other => panic!("unexpected HELLO reply {other:?}"),
            }
        }
        panic!("no raw connection landed on shard {shard}");
    }

    fn send(&mut self, frame: Frame<'_>) {
        let mut bytes = Vec::new();
        frame.encode(&mut bytes);
        self.stream.write_all(&bytes).expect("raw write");
    }

    fn subscribe(&mut self, sub_id: u32, subject: &str) {
        let request_id = 100 + sub_id;
        self.send(Frame::Subscribe {
            request_id,
            sub_id,
            topic: subject.as_bytes(),
            options: &[],
        });
        match self.next("SUBSCRIBE reply") {
            Ok(Wire::Ok { request_id: id, .. }) if id == request_id => {}
            other => panic!("subscribe {subject:?}: expected OK {request_id}, got {other:?}"),
        }
    }

    /// The next frame, or how the connection ended. Panics after [`RECV_TIMEOUT`] of silence.
    fn next(&mut self, what: &str) -> Result<Wire, End> {
        loop {
            let decoded = native::decode(&self.buffer, 1 << 30)
                .unwrap_or_else(|e| panic!("{what}: undecodable frame from the broker: {e:?}"));
            if let Some((frame, len)) = decoded {
                let opcode = self.buffer[4];
                let wire = match frame {
                    Frame::Ok { request_id, data } => Wire::Ok {
                        request_id,
                        data: data.to_vec(),
                    },
                    Frame::Err {
                        request_id, code, ..
                    } => Wire::Err { request_id, code },
                    Frame::Msg {
                        sub_id,
                        seq,
                        payload,
                        ..
                    } => Wire::Msg {
                        sub_id,
                        seq,
                        index: payload_index(payload).unwrap_or(u64::MAX),
                    },
                    Frame::Dropped { sub_id, count } => Wire::Dropped {
                        sub_id,
                        count,
                        opcode,
                    },
                    Frame::Pong { request_id } => Wire::Pong { request_id },
                    other => Wire::Other(format!("{other:?}")),
                };
                self.buffer.drain(..len);
                return Ok(wire);
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(End::Eof),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err(End::Reset),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("{what}: nothing from the broker within {RECV_TIMEOUT:?}: {e}"),
            }
        }
    }
}

/// A Rust client draining one subscription on its own thread, checking order and content.
struct FastSubscriber {
    received: Arc<AtomicU64>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl FastSubscriber {
    /// Subscribes before returning, so everything published afterwards is for it.
    fn start(addr: SocketAddr, shard: u16, topic: &str, expected: u64) -> FastSubscriber {
        let mut client = client_on_shard(addr, shard);
        let mut subscription = client.subscribe(topic).expect("fast subscriber subscribes");
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let thread = thread::Builder::new()
            .name("fast-subscriber".into())
            .spawn(move || {
                let result = drain_in_order(&mut subscription, expected, &counter);
                drop(subscription);
                drop(client);
                result
            })
            .unwrap();
        FastSubscriber {
            received,
            thread: Some(thread),
        }
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    fn has_stopped(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for it to have received everything; the error says what went wrong.
    fn finish(&mut self) -> Result<(), String> {
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err("the fast subscriber's thread panicked".into())),
            None => Err("the fast subscriber was already joined".into()),
        }
    }
}

fn drain_in_order(
    subscription: &mut Subscription,
    expected: u64,
    counter: &AtomicU64,
) -> Result<(), String> {
    for seq in 1..=expected {
        let delivery = subscription.recv_timeout(RECV_TIMEOUT).map_err(|e| {
            format!(
                "fast subscriber, waiting for seq {seq}: {e} (dropped so far: {})",
                subscription.dropped()
            )
        })?;
        if delivery.seq != seq {
            return Err(format!(
                "fast subscriber: expected seq {seq}, got {} (dropped so far: {})",
                delivery.seq,
                subscription.dropped()
            ));
        }
        if payload_index(&delivery.payload) != Some(seq - 1) {
            return Err(format!(
                "fast subscriber: seq {seq} carries the wrong payload"
            ));
        }
        counter.store(seq, Ordering::Release);
    }
    if subscription.dropped() != 0 {
        return Err(format!(
            "fast subscriber: {} messages dropped",
            subscription.dropped()
        ));
    }
    Ok(())
}

/// Publishes [`MESSAGES`] quietly (the last one confirmed), never more than [`WINDOW`] ahead of
/// the fast subscriber.
fn publish_paced(publisher: &mut Client, topic: &str, fast: &mut FastSubscriber) {
    let deadline = Instant::now() + RUN_DEADLINE;
    for index in 0..MESSAGES {
        if index.saturating_sub(fast.received()) >= WINDOW {
            while index.saturating_sub(fast.received()) > RESUME_AT {
                if fast.has_stopped() {
                    let outcome = fast.finish();
                    panic!(
                        "the fast subscriber stopped at {} of {MESSAGES} while {index} were \
                         published: {outcome:?}",
                        fast.received()
                    );
                }
                assert!(
                    Instant::now() < deadline,
                    "the fast subscriber stalled at {} of {index} published",
                    fast.received()
                );
                thread::sleep(Duration::from_micros(100));
            }
        }
        let bytes = payload(index);
        if index + 1 < MESSAGES {
            publisher.publish(topic, &bytes).expect("quiet publish");
        } else {
            let seq = publisher
                .publish_confirmed(topic, &bytes)
                .expect("the final publish_confirmed");
            assert_eq!(seq, MESSAGES, "the final message's sequence number");
        }
    }
    assert_eq!(
        publisher.take_async_errors(),
        (Vec::new(), 0),
        "no publish was refused"
    );
}

/// Publishes [`MESSAGES`] as fast as the socket takes them (the last one confirmed) and
/// returns how long it took.
fn publish_unpaced(publisher: &mut Client, topic: &str) -> Duration {
    let started = Instant::now();
    for index in 0..MESSAGES - 1 {
        publisher
            .publish(topic, &payload(index))
            .expect("quiet publish");
    }
    let seq = publisher
        .publish_confirmed(topic, &payload(MESSAGES - 1))
        .expect("the final publish_confirmed returns despite the slow subscribers");
    assert_eq!(seq, MESSAGES);
    started.elapsed()
}

/// Publishes `count` messages in bursts of [`BURST`] (each burst ends with a confirmed publish),
/// so that no single loop turn of the broker fans out more than one burst. Returns the last
/// sequence number.
fn publish_in_small_bursts(publisher: &mut Client, topic: &str, count: u64) -> u64 {
    let mut last = 0;
    for index in 0..count {
        let bytes = payload(index);
        if index % BURST == BURST - 1 || index + 1 == count {
            last = publisher
                .publish_confirmed(topic, &bytes)
                .expect("publish_confirmed");
            assert_eq!(last, index + 1);
        } else {
            publisher.publish(topic, &bytes).expect("quiet publish");
        }
    }
    assert_eq!(publisher.take_async_errors(), (Vec::new(), 0));
    last
}

fn shutdown(broker: Broker) -> corebus::shard::ShardCounters {
    broker.shutdown().expect("the broker shuts down cleanly")
}

// ---------------------------------------------------------------------------------------------
// disconnect (the default policy).

#[test]
fn disconnect_cuts_off_the_slow_subscriber_and_the_fast_one_gets_everything() {
    with_shard_counts(|shards| {
        let broker = start(slow_config(shards, SlowConsumerPolicy::Disconnect));
        let addr = broker.native_addr();
        let place = placement(shards);
        let topic = topic_owned_by("slow", place.owner, shards);
        let mut slow = RawSubscriber::on_shard(addr, place.slow_raw);
        slow.subscribe(SLOW_EXACT, &topic);
        let mut fast = FastSubscriber::start(addr, place.fast, &topic, MESSAGES);
        let mut publisher = publisher_on_shard(addr, place.publisher);

        let started = Instant::now();
        publish_paced(&mut publisher, &topic, &mut fast);
        eprintln!("published {MESSAGES} in {:?}", started.elapsed());
        fast.finish().unwrap_or_else(|e| panic!("{e}"));

        // Now the slow subscriber reads what the broker managed to send it before giving up:
        // a run of MSG frames from seq 1 without a gap, then ERR 0 SLOW_CONSUMER, then EOF.
        let mut messages = 0u64;
        let mut error = None;
        let end = loop {
            match slow.next("the slow subscriber, reading at last") {
                Ok(Wire::Msg { sub_id, seq, index }) => {
                    assert_eq!(error, None, "a MSG (seq {seq}) after the ERR");
                    assert_eq!(sub_id, SLOW_EXACT);
                    assert_eq!(seq, messages + 1, "the slow subscriber's MSGs have a gap");
                    assert_eq!(index, seq - 1, "seq {seq} carries the wrong payload");
                    messages += 1;
                }
                Ok(Wire::Err { request_id, code }) => {
                    assert_eq!(error, None, "a second ERR ({request_id}, {code})");
                    error = Some((request_id, code));
                }
                Ok(other) => panic!("unexpected frame after {messages} MSGs: {other:?}"),
                Err(end) => break end,
            }
            assert!(messages <= MESSAGES);
        };
        eprintln!("the slow subscriber got {messages} messages before being cut off");
        assert_eq!(
            error,
            Some((0, ErrorCode::SlowConsumer.as_u16())),
            "after {messages} MSGs the slow subscriber should get ERR 0 SLOW_CONSUMER \
             (then {end:?})"
        );
        assert_eq!(end, End::Eof, "a clean close after the ERR");
        assert!(
            messages > 0 && messages < MESSAGES,
            "{messages} messages reached the slow subscriber"
        );

        // The broker keeps serving.
        assert_eq!(
            publisher
                .publish_confirmed(&topic, &payload(MESSAGES))
                .unwrap(),
            MESSAGES + 1
        );
        drop(slow);
        let counters = shutdown(broker);
        assert_eq!(
            counters.slow_consumer_disconnects, 1,
            "only the slow subscriber was cut off: {counters:?}"
        );
        assert_eq!(counters.published, MESSAGES + 1, "{counters:?}");
        // Regression: the cut's discarded queue was counted as drop-oldest drops, and the
        // close log then said undelivered=0. What was queued and never sent is `undelivered`.
        assert_eq!(
            counters.dropped, 0,
            "nothing is dropped-oldest: {counters:?}"
        );
        assert!(
            counters.undelivered > 0,
            "a slow consumer is cut with messages still queued: {counters:?}"
        );
    });
}

/// A Rust client whose application stops keeping up learns why its subscription ended.
#[test]
fn a_rust_client_cut_off_as_a_slow_consumer_sees_slow_consumer() {
    let broker = start(slow_config(1, SlowConsumerPolicy::Disconnect));
    let addr = broker.native_addr();
    let topic = "slow.client";
    let mut slow_client = Client::connect_with(
        addr,
        ClientOptions {
            name: "slow-client".into(),
            subscription_buffer: 16,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let mut subscription = slow_client.subscribe(topic).unwrap();
    let mut publisher = publisher_on_shard(addr, 0);
    // Small bursts: the client is cut off because it does not keep up, after its reader has
    // filled the subscription's buffer and the sockets' buffers have filled behind it.
    publish_in_small_bursts(&mut publisher, topic, MESSAGES);

    // The application takes a little while per message: slow, as slow consumers are.
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut received = 0u64;
    let ending = loop {
        assert!(Instant::now() < deadline, "still draining after {received}");
        match subscription.recv_timeout(RECV_TIMEOUT) {
            Ok(delivery) => {
                received += 1;
                assert_eq!(delivery.seq, received, "gap before the cut-off");
                thread::sleep(Duration::from_micros(200));
            }
            Err(e) => break e,
        }
    };
    eprintln!("the slow client got {received} messages, then: {ending}");
    assert!(received > 0 && received < MESSAGES, "{received}");
    assert!(
        matches!(ending, Error::Closed(_)),
        "the subscription ends because the connection closed, got {ending}"
    );
    assert_eq!(
        ending.server_code(),
        Some(ErrorCode::SlowConsumer),
        "the subscription should say the broker closed it as a slow consumer, got: {ending}"
    );
}

// ---------------------------------------------------------------------------------------------
// drop-oldest.

/// What a slow subscription got: MSGs, and the total of its DROPPED counts.
#[derive(Debug, Default)]
struct Account {
    messages: u64,
    dropped: u64,
    dropped_frames: u64,
    last_seq: u64,
}

impl Account {
    fn complete(&self) -> bool {
        self.messages + self.dropped == MESSAGES
    }
}

#[test]
fn drop_oldest_keeps_the_slow_subscriber_and_accounts_for_every_message() {
    with_shard_counts(|shards| {
        let broker = start(slow_config(shards, SlowConsumerPolicy::DropOldest));
        let addr = broker.native_addr();
        let place = placement(shards);
        let topic = topic_owned_by("lossy", place.owner, shards);
        // The raw slow subscriber holds two subscriptions matching the topic: drops are
        // counted per subscription.
        let mut slow = RawSubscriber::on_shard(addr, place.slow_raw);
        slow.subscribe(SLOW_EXACT, &topic);
        slow.subscribe(SLOW_PATTERN, "lossy.*");
        // A Rust client whose subscription buffer is small and which does not drain yet.
        let mut slow_client = client_on_shard_with(
            addr,
            place.slow_client,
            ClientOptions {
                name: "slow-client".into(),
                subscription_buffer: 16,
                ..ClientOptions::default()
            },
        );
        let mut slow_subscription = slow_client.subscribe(&topic).unwrap();
        let mut fast = FastSubscriber::start(addr, place.fast, &topic, MESSAGES);
        let mut publisher = publisher_on_shard(addr, place.publisher);

        let started = Instant::now();
        publish_paced(&mut publisher, &topic, &mut fast);
        eprintln!("published {MESSAGES} in {:?}", started.elapsed());
        fast.finish().unwrap_or_else(|e| panic!("{e}"));

        // The raw slow subscriber reads at last: per subscription, MSGs with strictly
        // increasing seqs plus DROPPED counts add up to exactly what was published.
        let mut accounts = [Account::default(), Account::default()];
        let deadline = Instant::now() + RUN_DEADLINE;
        while !accounts.iter().all(Account::complete) {
            assert!(Instant::now() < deadline, "still reading: {accounts:?}");
            let wire = slow
                .next("the slow subscriber, reading at last")
                .unwrap_or_else(|end| {
                    panic!("the slow subscriber's connection ended ({end:?}): {accounts:?}")
                });
            match wire {
                Wire::Msg { sub_id, seq, index } => {
                    assert!(
                        sub_id == SLOW_EXACT || sub_id == SLOW_PATTERN,
                        "sub id {sub_id}"
                    );
                    let account = &mut accounts[(sub_id - 1) as usize];
                    assert!(
                        seq > account.last_seq,
                        "sub {sub_id}: seq {seq} after {}",
                        account.last_seq
                    );
                    assert_eq!(index, seq - 1, "seq {seq} carries the wrong payload");
                    account.last_seq = seq;
                    account.messages += 1;
                }
                Wire::Dropped {
                    sub_id,
                    count,
                    opcode,
                } => {
                    assert_eq!(opcode, 0x84, "DROPPED opcode");
                    assert!(
                        sub_id == SLOW_EXACT || sub_id == SLOW_PATTERN,
                        "sub id {sub_id}"
                    );
                    assert!(count > 0, "a DROPPED frame with count 0");
                    let account = &mut accounts[(sub_id - 1) as usize];
                    account.dropped += count;
                    account.dropped_frames += 1;
                }
                other => panic!("unexpected frame: {other:?} ({accounts:?})"),
            }
            for account in &accounts {
                assert!(
                    account.messages + account.dropped <= MESSAGES,
                    "more than published: {accounts:?}"
                );
            }
        }
        eprintln!("raw slow subscriber: {accounts:?}");
        for (account, sub_id) in accounts.iter().zip([SLOW_EXACT, SLOW_PATTERN]) {
            assert!(
                account.dropped > 0,
                "sub {sub_id} lost nothing: {account:?}"
            );
            assert!(
                account.messages > 0,
                "sub {sub_id} got nothing: {account:?}"
            );
        }
        // Still connected and answering.
        slow.send(Frame::Ping { request_id: 77 });
        assert_eq!(
            slow.next("PONG"),
            Ok(Wire::Pong { request_id: 77 }),
            "nothing but the PONG is left for the slow subscriber"
        );

        // The Rust client drains at last: what it got plus what it was told it lost is
        // everything.
        let mut received = 0u64;
        let mut last_seq = 0u64;
        while received + slow_subscription.dropped() < MESSAGES {
            assert!(
                Instant::now() < deadline,
                "client still draining: {received} received, {} dropped",
                slow_subscription.dropped()
            );
            // `recv_timeout` counts DROPPED notices and goes on waiting for a message, and the
            // last events may be notices: poll briefly and re-check the total.
            match slow_subscription.recv_timeout(Duration::from_millis(50)) {
                Ok(delivery) => {
                    assert!(
                        delivery.seq > last_seq,
                        "seq {} after {last_seq}",
                        delivery.seq
                    );
                    assert_eq!(payload_index(&delivery.payload), Some(delivery.seq - 1));
                    last_seq = delivery.seq;
                    received += 1;
                }
                Err(Error::Timeout) => {}
                Err(e) => panic!(
                    "slow client: {received} received + {} dropped of {MESSAGES}, then {e}",
                    slow_subscription.dropped()
                ),
            }
        }
        let client_dropped = slow_subscription.dropped();
        eprintln!("slow client: {received} received, {client_dropped} dropped");
        assert_eq!(received + client_dropped, MESSAGES);
        assert!(client_dropped > 0, "the slow client lost nothing");
        slow_client
            .ping()
            .expect("the slow client is still connected");

        let counters = shutdown(broker);
        let reported = accounts.iter().map(|a| a.dropped).sum::<u64>() + client_dropped;
        assert_eq!(
            counters.dropped, reported,
            "the broker's drop counter and the DROPPED frames agree: {counters:?}"
        );
        assert_eq!(counters.slow_consumer_disconnects, 0, "{counters:?}");
    });
}

// ---------------------------------------------------------------------------------------------
// Publishers are never held back.

#[test]
fn a_publisher_is_never_blocked_by_slow_subscribers() {
    for policy in [
        SlowConsumerPolicy::Disconnect,
        SlowConsumerPolicy::DropOldest,
    ] {
        with_shard_counts(|shards| {
            eprintln!("policy {policy}");
            let broker = start(slow_config(shards, policy));
            let addr = broker.native_addr();
            let place = placement(shards);
            let topic = topic_owned_by("blocked", place.owner, shards);
            // One slow subscriber on the publisher's own shard, one elsewhere; neither reads.
            let mut slow_here = RawSubscriber::on_shard(addr, place.publisher);
            slow_here.subscribe(SLOW_EXACT, &topic);
            let mut slow_there = RawSubscriber::on_shard(addr, place.slow_raw);
            slow_there.subscribe(SLOW_EXACT, &topic);
            slow_there.subscribe(SLOW_PATTERN, "blocked.*");
            let mut publisher = publisher_on_shard(addr, place.publisher);

            let elapsed = publish_unpaced(&mut publisher, &topic);
            eprintln!("published {MESSAGES} past two slow subscribers in {elapsed:?}");
            assert!(
                elapsed < PUBLISH_BOUND,
                "publishing took {elapsed:?}: the slow subscribers held the publisher back"
            );
            publisher
                .ping()
                .expect("the publisher's connection is fine");

            // Let the broker see the slow sockets go (writes to them fail), then stop it.
            drop((slow_here, slow_there));
            for _ in 0..3 {
                publisher.publish_confirmed(&topic, b"after").unwrap();
            }
            let counters = shutdown(broker);
            match policy {
                SlowConsumerPolicy::Disconnect => assert_eq!(
                    counters.slow_consumer_disconnects, 2,
                    "both slow subscribers were cut off: {counters:?}"
                ),
                SlowConsumerPolicy::DropOldest => {
                    assert_eq!(counters.slow_consumer_disconnects, 0, "{counters:?}");
                    assert!(counters.dropped > 0, "{counters:?}");
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The client side of an undrained subscription.

#[test]
fn dropping_a_client_whose_subscription_is_full_returns() {
    let broker = start(config(1));
    let addr = broker.native_addr();
    let mut stuck = Client::connect_with(
        addr,
        ClientOptions {
            subscription_buffer: 4,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let subscription = stuck.subscribe("full").unwrap();
    let mut publisher = client(addr);
    for seq in 1..=64u64 {
        assert_eq!(publisher.publish_confirmed("full", b"x").unwrap(), seq);
    }
    // Give the client's reader time to fill the subscription's buffer and wait for room.
    thread::sleep(Duration::from_millis(300));

    let (done_tx, done) = mpsc::channel();
    thread::spawn(move || {
        drop(stuck);
        let _ = done_tx.send(());
    });
    let returned = done.recv_timeout(Duration::from_secs(10)).is_ok();
    // Dropping the subscription lets a stuck reader go, so the helper thread ends either way.
    drop(subscription);
    assert!(
        returned,
        "dropping a Client hung while its Subscription (alive, buffer full) was not drained"
    );
}

// ---------------------------------------------------------------------------------------------
// Boundaries of the policies: what a small `outbound_bytes_max` does.

/// Under drop-oldest the newest message is always queued (older ones make room for it), so a
/// slow subscriber that finally reads ends with the last message published.
fn drop_oldest_ends_with_the_newest_message(outbound_bytes_max: usize) {
    with_shard_counts(|shards| {
        let mut config = slow_config(shards, SlowConsumerPolicy::DropOldest);
        config.outbound_bytes_max = outbound_bytes_max;
        let broker = start(config);
        let addr = broker.native_addr();
        let place = placement(shards);
        let topic = topic_owned_by("newest", place.owner, shards);
        let mut slow = RawSubscriber::on_shard(addr, place.slow_raw);
        slow.subscribe(SLOW_EXACT, &topic);
        let mut publisher = publisher_on_shard(addr, place.publisher);
        let last = publish_in_small_bursts(&mut publisher, &topic, MESSAGES);

        let mut account = Account::default();
        let deadline = Instant::now() + RUN_DEADLINE;
        while !account.complete() {
            assert!(Instant::now() < deadline, "still reading: {account:?}");
            match slow.next("the slow subscriber") {
                Ok(Wire::Msg { seq, .. }) => {
                    assert!(seq > account.last_seq, "seq {seq} after {account:?}");
                    account.last_seq = seq;
                    account.messages += 1;
                }
                Ok(Wire::Dropped { count, .. }) => {
                    account.dropped += count;
                    account.dropped_frames += 1;
                }
                other => panic!("unexpected {other:?} ({account:?})"),
            }
        }
        eprintln!("outbound_bytes_max {outbound_bytes_max}: {account:?}");
        assert!(account.dropped > 0, "nothing was dropped: {account:?}");
        assert_eq!(
            account.last_seq, last,
            "drop-oldest with outbound_bytes_max = {outbound_bytes_max}: the newest messages \
             were dropped while older ones were delivered ({account:?})"
        );
    });
}

#[test]
fn drop_oldest_ends_with_the_newest_message_with_a_256_kib_limit() {
    drop_oldest_ends_with_the_newest_message(256 * 1024);
}

#[test]
fn drop_oldest_ends_with_the_newest_message_with_a_64_kib_limit() {
    drop_oldest_ends_with_the_newest_message(OUTBOUND_BYTES_MAX);
}

/// A subscriber that drains as fast as it can, with empty socket buffers, is not a slow
/// consumer: one burst of publishes (a single write of about 250 KiB, under
/// `read_bytes_per_turn_max`) must reach it whole.
fn a_burst_reaches_a_fast_subscriber(outbound_bytes_max: usize) {
    const BURST_MESSAGES: u64 = 240;
    let mut config = slow_config(1, SlowConsumerPolicy::Disconnect);
    config.outbound_bytes_max = outbound_bytes_max;
    let broker = start(config);
    let addr = broker.native_addr();
    let topic = "burst";
    let mut fast = FastSubscriber::start(addr, 0, topic, BURST_MESSAGES + 1);
    let mut publisher = RawConnection::handshaken(addr);
    let mut bytes = Vec::new();
    for index in 0..BURST_MESSAGES {
        Frame::Publish {
            request_id: 1000 + index as u32,
            quiet: true,
            topic: topic.as_bytes(),
            reply_to: None,
            headers: &[],
            payload: &payload(index),
        }
        .encode(&mut bytes);
    }
    publisher.send_bytes(&bytes);
    publisher.send(Frame::Publish {
        request_id: 99,
        quiet: false,
        topic: topic.as_bytes(),
        reply_to: None,
        headers: &[],
        payload: &payload(BURST_MESSAGES),
    });
    assert_eq!(
        publisher.expect_ok(99),
        (BURST_MESSAGES + 1).to_be_bytes(),
        "the confirmed publish after the burst"
    );
    fast.finish().unwrap_or_else(|e| {
        panic!(
            "one burst of {BURST_MESSAGES} publishes ({} KiB) cut off a subscriber that drains \
             as fast as it can (outbound_bytes_max {} KiB): {e}",
            bytes.len() / 1024,
            outbound_bytes_max / 1024
        )
    });
}

#[test]
fn a_burst_reaches_a_fast_subscriber_with_a_1_mib_limit() {
    a_burst_reaches_a_fast_subscriber(1024 * 1024);
}

#[test]
fn a_burst_reaches_a_fast_subscriber_with_a_64_kib_limit() {
    a_burst_reaches_a_fast_subscriber(OUTBOUND_BYTES_MAX);
}

// ---------------------------------------------------------------------------------------------
// The publisher stall: a subscriber that stopped reading holds its publisher once.

/// A subscriber that stopped reading holds the publisher on its shard back for one stall
/// bound, not once per read of the publisher: after that it holds nobody, fills its queue and
/// is cut, while a subscriber beside it gets every message.
#[test]
fn a_stuck_subscriber_holds_its_publisher_once_then_is_cut() {
    a_stuck_subscriber_holds_its_publisher_for_a_bound(
        Config {
            // A queue of 256 messages: the unpaced publisher outruns it many times over.
            outbound_bytes_max: 256 * 1024,
            publisher_stall_ms_max: STUCK_STALL_MS,
            // Four messages a read: a stall that came back after every read of the publisher
            // (about 30 of them between the watermark and the limit) would take seconds.
            read_chunk_bytes: 4 * 1024,
            ..slow_config(1, SlowConsumerPolicy::Disconnect)
        },
        0,
    );
}

/// The same across shards: the stuck subscriber on one shard, the topic's owner, the publisher
/// and a fast subscriber on the other, so the hold goes through the owner (leases renewed
/// while the stuck one is pressed). It still holds the publisher for about one bound, not
/// for ever, and is cut; the fast subscriber gets every message.
#[test]
fn a_stuck_subscriber_on_another_shard_holds_its_publisher_for_a_bound_then_is_cut() {
    a_stuck_subscriber_holds_its_publisher_for_a_bound(
        Config {
            // Room above the watermark for what the rings hold when the hold lands (see
            // `a_steady_subscriber_is_not_cut`).
            outbound_bytes_max: 4 * 1024 * 1024,
            ring_bytes_max: 64 * 1024,
            ring_batch_max: 64,
            publisher_stall_ms_max: STUCK_STALL_MS,
            ..slow_config(2, SlowConsumerPolicy::Disconnect)
        },
        1,
    );
}

/// The stall bound of the stuck-subscriber tests.
const STUCK_STALL_MS: u64 = 200;

/// A stuck subscriber on `stuck_shard`; the topic's owner, the publisher and a fast
/// subscriber on shard 0. The publisher is held for at least the bound and less than ten,
/// the stuck one (and only it) is cut, and the fast one gets every message.
fn a_stuck_subscriber_holds_its_publisher_for_a_bound(config: Config, stuck_shard: u16) {
    let shards = config.shards;
    let broker = start(config);
    let addr = broker.native_addr();
    let topic = topic_owned_by("stuck", 0, shards);
    let mut stuck = RawSubscriber::on_shard(addr, stuck_shard);
    stuck.subscribe(SLOW_EXACT, &topic);
    let mut fast = FastSubscriber::start(addr, 0, &topic, MESSAGES);
    let mut publisher = publisher_on_shard(addr, 0);

    let elapsed = publish_unpaced(&mut publisher, &topic);
    fast.finish().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("published {MESSAGES} past a stuck subscriber on shard {stuck_shard} in {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(STUCK_STALL_MS),
        "published in {elapsed:?}: the stuck subscriber never held the publisher"
    );
    assert!(
        elapsed < Duration::from_millis(STUCK_STALL_MS * 10),
        "publishing took {elapsed:?} with a {STUCK_STALL_MS} ms stall bound"
    );
    drop(stuck);
    let counters = shutdown(broker);
    assert_eq!(
        counters.slow_consumer_disconnects, 1,
        "the stuck subscriber, and only it, was cut: {counters:?}"
    );
    assert!(counters.publisher_stalls >= 1, "{counters:?}");
}

/// A subscriber that reads slowly but steadily, behind a small receive buffer, is waited for
/// however long the stall lasts: its progress shows in the kernel's send queue even while no
/// writable event comes (the socket wakes the writer only once half its buffer is free, which
/// at this pace takes longer than the bound). The publisher is held at the reader's pace and
/// nothing is cut.
#[test]
fn a_subscriber_reading_slowly_but_steadily_is_not_cut() {
    a_steady_subscriber_is_not_cut(Where {
        shards: 1,
        owner: 0,
        publisher: 0,
        subscriber: 0,
    });
}

/// The same across shards, where the shard that reads the publisher does not see the pressed
/// subscriber: the subscriber's shard tells the topic's owner, which holds the publisher in
/// leases for as long as the subscriber stays pressed. Subscriber on another shard than the
/// publisher and the owner.
#[test]
fn a_steady_subscriber_on_another_shard_is_not_cut() {
    a_steady_subscriber_is_not_cut(Where {
        shards: 2,
        owner: 0,
        publisher: 0,
        subscriber: 1,
    });
}

/// Publisher alone on its shard; the topic's owner and the subscriber on the other.
#[test]
fn a_steady_subscriber_on_the_owner_shard_is_not_cut() {
    a_steady_subscriber_is_not_cut(Where {
        shards: 2,
        owner: 1,
        publisher: 0,
        subscriber: 1,
    });
}

/// Publisher and subscriber on one shard, the topic owned by the other: every delivery
/// goes out and comes back.
#[test]
fn a_steady_subscriber_beside_its_publisher_with_a_remote_owner_is_not_cut() {
    a_steady_subscriber_is_not_cut(Where {
        shards: 2,
        owner: 1,
        publisher: 0,
        subscriber: 0,
    });
}

struct Where {
    shards: usize,
    owner: usize,
    publisher: u16,
    subscriber: u16,
}

fn a_steady_subscriber_is_not_cut(place: Where) {
    const STALL_MS: u64 = 100;
    // Across shards the hold lands a ring trip after the watermark is passed: what is in the
    // rings by then (up to `ring_bytes_max` and a batch, each way) and what the publisher's
    // shard reads meanwhile (up to `read_bytes_per_turn_max`, 256 KiB, a turn) still arrive,
    // so the room above the watermark must take that: here 2 MiB against 2 x 128 KiB and a
    // few reads, room for shards that lose their CPU to the other tests for a while (the
    // defaults: 4 MiB against 2 x 1.25 MiB and a read). Twice the messages, so that the limit
    // is passed many times over even with the kernel's socket buffers full.
    let (outbound_bytes_max, ring_bytes_max, count, per_pause) = if place.shards == 1 {
        (256 * 1024, Config::default().ring_bytes_max, 8_000, 32)
    } else {
        (4 * 1024 * 1024, 64 * 1024, 16_000, 64)
    };
    let broker = start(Config {
        outbound_bytes_max,
        ring_bytes_max,
        ring_batch_max: 64,
        publisher_stall_ms_max: STALL_MS,
        ..slow_config(place.shards, SlowConsumerPolicy::Disconnect)
    });
    let addr = broker.native_addr();
    let topic = topic_owned_by("steady", place.owner, place.shards);
    let mut steady = RawSubscriber::on_shard(addr, place.subscriber);
    steady.subscribe(SLOW_EXACT, &topic);
    let reader = thread::spawn(move || {
        let mut received = 0u64;
        while received < count {
            match steady.next("the steady subscriber") {
                Ok(Wire::Msg { seq, index, .. }) => {
                    assert_eq!(seq, received + 1, "a gap in the steady subscriber's MSGs");
                    assert_eq!(index, seq - 1, "seq {seq} carries the wrong payload");
                    received += 1;
                }
                other => panic!("after {received} MSGs the subscriber got {other:?}"),
            }
            // About 3 or 6 MB/s, far below the publisher's pace.
            if received.is_multiple_of(per_pause) {
                thread::sleep(Duration::from_millis(10));
            }
        }
        received
    });
    let mut publisher = publisher_on_shard(addr, place.publisher);
    for index in 0..count {
        publisher
            .publish(&topic, &payload(index))
            .expect("quiet publish");
    }
    let received = reader.join().expect("the steady subscriber's thread");
    assert_eq!(received, count);
    let counters = shutdown(broker);
    assert_eq!(
        counters.slow_consumer_disconnects, 0,
        "a subscriber that kept reading was cut: {counters:?}"
    );
    assert!(counters.publisher_stalls >= 1, "{counters:?}");
}
