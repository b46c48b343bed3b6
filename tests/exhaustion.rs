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
    let broker = start(corebus::config::Config {
        connections_max: 64,
        // The flood comes from one address; let it past the per-address cap to test the
        // eviction alone.
        connections_per_ip_max: 100_000,
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
                if opened % 64 == 0 {
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
