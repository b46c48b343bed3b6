//! Issue 14: one hostile client must not deny service to the others. Each test runs an attack
//! with small limits while a well-behaved client connects, publishes and receives within a
//! second: half-open connections (a per-address cap, and eviction of the oldest half-open
//! connection when the broker is full), frames that never finish (`--frame-deadline-ms`), and
//! a topic table filled by one connection (`--topics-per-connection-max`).
//!
//! Attackers connect from 127.0.0.2 (all of 127/8 is loopback on Linux), so the per-address
//! cap tells them apart from the good client on 127.0.0.1.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use corebus::error::ErrorCode;
use corebus::protocol::native::{Frame, PROTOCOL_VERSION};

const ATTACKER_IP: &str = "127.0.0.2";

/// The tests here run one at a time: each floods the broker it started, and one measures
/// this process's resident memory, which a neighbour's flood would blur.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A TCP connection to `addr` from `ATTACKER_IP`.
fn connect_from_attacker(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let local: SocketAddr = format!("{ATTACKER_IP}:0").parse().unwrap();
    socket.bind(&local.into())?;
    socket.connect(&addr.into())?;
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(stream)
}

fn raw_from_attacker(addr: SocketAddr) -> RawConnection {
    RawConnection::from_stream(connect_from_attacker(addr).expect("attacker connects"))
}

/// The first half of a HELLO frame.
fn half_hello() -> Vec<u8> {
    let mut hello = Vec::new();
    Frame::Hello {
        request_id: 1,
        version: PROTOCOL_VERSION,
        client_name: b"attacker",
    }
    .encode(&mut hello);
    hello.truncate(hello.len() / 2);
    hello
}

/// A fresh client on 127.0.0.1 connects, subscribes, publishes and receives its message, all
/// within a second; returns how long that took.
fn good_client_round_trip(addr: SocketAddr, topic: &str) -> Duration {
    let started = Instant::now();
    let mut client = client(addr);
    let mut subscription = client.subscribe(topic).expect("subscribe");
    client.publish(topic, b"hello").expect("publish");
    let delivery = subscription
        .recv_timeout(Duration::from_secs(1))
        .expect("the good client's message arrives");
    assert_eq!(delivery.payload, b"hello");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    took
}

/// Issue 14, case 1: 300 sockets that send half a HELLO and reconnect whenever dropped kept
/// 236 of 239 new clients out of a broker at `--connections-max 200`. Now the oldest
/// half-open connection is evicted when the broker is full, so the flood evicts itself.
#[test]
fn a_half_hello_flood_cannot_keep_a_good_client_out() {
    let _serial = serial();
    let broker = start(corebus::config::Config {
        connections_max: 64,
        // The flood comes from one address; let it past the per-address cap, and give the
        // good client on 127.0.0.1 no reserve, to test the eviction alone.
        connections_per_ip_max: 100_000,
        connections_loopback_reserve: 0,
        handshake_timeout_ms: 10_000,
        ..config(2)
    });
    let addr = broker.native_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let stop = stop.clone();
        thread::spawn(move || {
            let half = half_hello();
            let mut sockets = std::collections::VecDeque::new();
            let mut opened = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut socket) = connect_from_attacker(addr) {
                    let _ = std::io::Write::write_all(&mut socket, &half);
                    sockets.push_back(socket);
                    opened += 1;
                }
                if sockets.len() > 300 {
                    sockets.pop_front();
                }
                if opened.is_multiple_of(64) {
                    thread::sleep(Duration::from_millis(1));
                }
            }
            opened
        })
    };
    thread::sleep(Duration::from_millis(300));
    for round in 0..10 {
        good_client_round_trip(addr, &format!("good.{round}"));
    }
    stop.store(true, Ordering::Relaxed);
    let opened = attacker.join().unwrap();
    let counters = broker.shutdown().unwrap();
    assert!(opened > 64, "the flood opened {opened} connections");
    assert!(counters.handshakes_evicted > 0, "{counters:?}");
}

/// Over `--connections-per-ip-max`, an address's next connection is refused with an ERR
/// before the close; other addresses are not affected.
#[test]
fn one_address_is_capped_and_others_still_connect() {
    let _serial = serial();
    let broker = start(corebus::config::Config {
        connections_per_ip_max: 8,
        ..config(1)
    });
    let addr = broker.native_addr();
    let held: Vec<RawConnection> = (0..8).map(|_| raw_handshaken_from_attacker(addr)).collect();
    let mut refused = raw_from_attacker(addr);
    let (request_id, code, message) = refused.expect_err_message();
    assert_eq!(
        (request_id, code),
        (0, ErrorCode::TooManyConnections.as_u16())
    );
    assert!(message.contains("--connections-per-ip-max"), "{message}");
    refused.expect_closed();
    good_client_round_trip(addr, "other.address");
    // A slot freed by a close is the address's again.
    drop(held);
    assert!(eventually(Duration::from_secs(5), || {
        let mut raw = raw_from_attacker(addr);
        raw.send(Frame::Hello {
            request_id: 1,
            version: PROTOCOL_VERSION,
            client_name: b"again",
        });
        raw.next_frame_bytes().is_some_and(|bytes| {
            matches!(
                corebus::protocol::native::decode(&bytes, 1 << 20),
                Ok(Some((Frame::Ok { .. }, _)))
            )
        })
    }));
    let counters = broker.shutdown().unwrap();
    assert!(counters.connections_refused_per_ip >= 1, "{counters:?}");
}

/// Other clients (here from 127.0.0.2) filled the broker with established connections, which
/// are never evicted; an operator on 127.0.0.1 still gets in, up to
/// `--connections-loopback-reserve` more, and no further.
#[test]
fn a_full_broker_keeps_a_reserve_for_localhost() {
    let _serial = serial();
    let broker = start(corebus::config::Config {
        connections_max: 4,
        connections_per_ip_max: 100_000,
        connections_loopback_reserve: 2,
        ..config(1)
    });
    let addr = broker.native_addr();
    let held: Vec<RawConnection> = (0..4).map(|_| raw_handshaken_from_attacker(addr)).collect();
    let mut refused = raw_from_attacker(addr);
    let (_, code, message) = refused.expect_err_message();
    assert_eq!(code, ErrorCode::TooManyConnections.as_u16());
    assert!(message.contains("--connections-max"), "{message}");
    // The reserve: two operators' connections, both working, and no third.
    let mut first = client(addr);
    let mut second = client(addr);
    let mut third = RawConnection::connect(addr);
    let (_, code, _) = third.expect_err_message();
    assert_eq!(code, ErrorCode::TooManyConnections.as_u16());
    let mut subscription = first.subscribe("operator.topic").expect("subscribe");
    second.publish("operator.topic", b"hello").expect("publish");
    let delivery = subscription
        .recv_timeout(Duration::from_secs(1))
        .expect("delivered within the reserve");
    assert_eq!(delivery.payload, b"hello");
    drop((subscription, first, second, held));
    broker.shutdown().unwrap();
}

fn raw_handshaken_from_attacker(addr: SocketAddr) -> RawConnection {
    let mut raw = raw_from_attacker(addr);
    raw.send(Frame::Hello {
        request_id: 1,
        version: PROTOCOL_VERSION,
        client_name: b"held",
    });
    raw.expect_ok(1);
    raw
}

/// Resident memory of this process (the broker runs in it), from `/proc/self/statm`.
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Issue 14, case 2: a client that sends all but the last byte of a 1 MiB frame and stops
/// held ~1 MiB of broker memory for ever. Now it gets `FRAME_TIMEOUT` after
/// `--frame-deadline-ms`, is closed, and its read buffer is freed; a good client is
/// unaffected meanwhile.
#[test]
fn a_frame_that_never_completes_is_closed_at_its_deadline_and_its_memory_freed() {
    let _serial = serial();
    const STALLED: usize = 24;
    const PAYLOAD_BYTES: usize = 1 << 20;
    let broker = start(corebus::config::Config {
        frame_deadline_ms: 500,
        ..config(2)
    });
    let addr = broker.native_addr();
    let mut frame = Vec::new();
    Frame::Publish {
        request_id: 9,
        quiet: false,
        topic: b"big",
        reply_to: None,
        headers: b"",
        payload: &vec![b'x'; PAYLOAD_BYTES],
    }
    .encode(&mut frame);
    let before = rss_bytes();
    let stall = |round: usize| {
        let started = Instant::now();
        let mut stalled: Vec<RawConnection> = (0..STALLED)
            .map(|_| {
                let mut raw = raw_handshaken_from_attacker(addr);
                raw.send_bytes(&frame[..frame.len() - 1]);
                raw
            })
            .collect();
        // While they stall, a good client works.
        thread::sleep(Duration::from_millis(100));
        let during = rss_bytes();
        good_client_round_trip(addr, &format!("good.during.stall.{round}"));
        for raw in &mut stalled {
            let (request_id, code, message) = raw.expect_err_message();
            assert_eq!(
                (request_id, code),
                (0, ErrorCode::FrameTimeout.as_u16()),
                "{message}"
            );
            assert!(message.contains("--frame-deadline-ms"), "{message}");
            raw.expect_closed();
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "closed after {took:?}"
        );
        during
    };
    let first = stall(0);
    thread::sleep(Duration::from_millis(100));
    let between = rss_bytes();
    let second = stall(1);
    eprintln!(
        "rss: before {} MiB; {STALLED} stalled 1 MiB frames: {} MiB; after their deadline {} MiB; \
         {STALLED} more: {} MiB",
        before >> 20,
        first >> 20,
        between >> 20,
        second >> 20
    );
    // The first round's buffers were freed at the deadline: the second round reuses that
    // memory instead of adding its own 24 MiB (the allocator may keep freed pages, and other
    // threads' arenas move a few MiB, so the figure after the deadline alone says little).
    assert!(
        second < first + STALLED * PAYLOAD_BYTES * 3 / 4,
        "first round {first}, second round {second}"
    );
    good_client_round_trip(addr, "good.after.stall");
    let counters = broker.shutdown().unwrap();
    assert_eq!(
        counters.frame_deadline_closes,
        2 * STALLED as u64,
        "{counters:?}"
    );
}

/// The same deadline on the Redis port: a request cut short gets `-ERR` and the close.
#[test]
fn a_redis_request_that_never_completes_is_closed_at_its_deadline() {
    let _serial = serial();
    let broker = start(corebus::config::Config {
        frame_deadline_ms: 300,
        ..config(1)
    });
    let mut stream = TcpStream::connect(broker.resp_addr().unwrap()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    std::io::Write::write_all(&mut stream, b"*2\r\n$7\r\nPUBLISH\r\n$3\r\nto").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    assert!(
        answer.starts_with("-ERR") && answer.contains("--frame-deadline-ms"),
        "{answer:?}"
    );
    broker.shutdown().unwrap();
}

/// Issue 14, case 3: 10,000 one-byte publishes to new names filled the topic table for
/// everyone. Now one connection makes at most `--topics-per-connection-max` topics by use;
/// another client still makes topics and talks, within a second.
#[test]
fn one_connection_publishing_to_thousands_of_new_names_is_capped() {
    let _serial = serial();
    const QUOTA: usize = 50;
    let broker = start(corebus::config::Config {
        topics_max: 1_000,
        topics_per_connection_max: QUOTA,
        ..config(2)
    });
    let addr = broker.native_addr();
    let mut greedy = client(addr);
    for i in 0..3_000 {
        greedy.publish(&format!("spam.{i}"), b"x").unwrap();
    }
    let refused = greedy
        .publish_confirmed("spam.last", b"x")
        .expect_err("over its quota");
    assert_eq!(refused.server_code(), Some(ErrorCode::TooManyTopics));
    assert!(
        refused.to_string().contains("--topics-per-connection-max"),
        "{refused}"
    );
    // Each of the 2 owner shards allows it ceil(50 / 2) = 25: 50 made, the rest refused.
    // Refusals from the other owner shard may still be crossing the rings: wait for them.
    let mut refusals = 0;
    let mut first_error = None;
    eventually(Duration::from_secs(5), || {
        let (errors, lost) = greedy.take_async_errors();
        if first_error.is_none() {
            first_error = errors.first().cloned();
        }
        refusals += errors.len() as u64 + lost;
        refusals >= 3_000 - QUOTA as u64
    });
    assert_eq!(refusals, 3_000 - QUOTA as u64, "{first_error:?}");
    // Topics it made still work for it.
    greedy.publish_confirmed("spam.0", b"again").unwrap();
    for round in 0..5 {
        good_client_round_trip(addr, &format!("fresh.{round}"));
    }
    drop(greedy);
    let counters = broker.shutdown().unwrap();
    assert_eq!(counters.topics_refused_per_connection, refusals + 1);
}

/// A topic that holds one message costs a few replay slots, not `--replay-messages` of them
/// (issue 14: 10,000 such topics cost ~320 MiB of slots).
#[test]
fn a_topic_with_one_message_costs_a_few_slots_not_a_whole_ring() {
    let _serial = serial();
    const TOPICS: usize = 8_000;
    let broker = start(corebus::config::Config {
        topics_max: 20_000,
        topics_per_connection_max: 20_000,
        ..config(2)
    });
    let mut publisher = client(broker.native_addr());
    publisher.publish_confirmed("warm.up", b"x").unwrap();
    let before = rss_bytes();
    for i in 0..TOPICS {
        publisher.publish(&format!("one.{i}"), b"x").unwrap();
    }
    publisher.publish_confirmed("one.last", b"x").unwrap();
    let per_topic = rss_bytes().saturating_sub(before) / TOPICS;
    eprintln!("rss per topic holding one message: {per_topic} bytes");
    // Preallocated, 1,024 slots of 32 bytes were 32 KiB a topic (256 MiB here, which no
    // allocator's free pages could hide); the figure itself is blurred by pages freed by
    // earlier tests in this process, so it is only bounded here (measured on a fresh broker
    // process in tuning.md).
    assert!(per_topic < 4 * 1024, "{per_topic} bytes per topic");
    broker.shutdown().unwrap();
}

/// Many connections together can still fill `--topics-max` with topics nobody subscribes to;
/// those are reclaimed oldest first once idle for a second, so a new client's topic is made.
#[test]
fn a_table_full_of_unused_topics_makes_room_for_a_new_one() {
    let _serial = serial();
    let broker = start(corebus::config::Config {
        topics_max: 100,
        ..config(2)
    });
    let addr = broker.native_addr();
    let mut fillers: Vec<_> = (0..4).map(|_| client(addr)).collect();
    for (n, filler) in fillers.iter_mut().enumerate() {
        for i in 0..100 {
            filler.publish(&format!("fill.{n}.{i}"), b"x").unwrap();
        }
        filler.ping().unwrap();
    }
    let mut late = client(addr);
    let refused = late
        .publish_confirmed("late.now", b"x")
        .expect_err("the table is full of topics published to just now");
    assert_eq!(refused.server_code(), Some(ErrorCode::TooManyTopics));
    thread::sleep(Duration::from_millis(1_300));
    good_client_round_trip(addr, "late.after.a.second");
    let counters = broker.shutdown().unwrap();
    assert!(counters.topics_reclaimed_under_pressure > 0, "{counters:?}");
}

/// The deadline on the HTTP port: a keep-alive connection whose next request stops half way
/// through its body gets `408` and the close.
#[test]
fn an_http_request_that_never_completes_is_closed_at_its_deadline() {
    let _serial = serial();
    let broker = start(corebus::config::Config {
        frame_deadline_ms: 300,
        ..config(1)
    });
    let mut stream = TcpStream::connect(broker.http_addr().unwrap()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    std::io::Write::write_all(&mut stream, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut first = [0u8; 4096];
    let n = std::io::Read::read(&mut stream, &mut first).unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &first[..n]);
    let started = Instant::now();
    std::io::Write::write_all(
        &mut stream,
        b"POST /v1/topics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"name\":",
    )
    .unwrap();
    let mut answer = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("--frame-deadline-ms"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    broker.shutdown().unwrap();
}
