//! The native STATS request against a real broker (two shards, ephemeral ports): counters
//! broker-wide and per shard, topics with their consumers, lag and retained range, the
//! in-broker latency, presence (who receives a topic, on which shard, under which name and
//! protocol), and its refusals.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use corebus::client::{AckSettings, ClientOptions, Sharing, Start, SubscribeOptions};
use corebus::error::ErrorCode;
use corebus::protocol::native::Frame;

const WAIT: Duration = Duration::from_secs(10);

fn named_client(addr: std::net::SocketAddr, shard: u16, name: &str) -> corebus::client::Client {
    for _ in 0..500 {
        let client = corebus::client::Client::connect_with(
            addr,
            ClientOptions {
                name: name.into(),
                ..ClientOptions::default()
            },
        )
        .expect("client connects");
        if client.server_info().shard == shard {
            return client;
        }
    }
    panic!("no connection landed on shard {shard}");
}

#[test]
fn stats_count_messages_topics_consumers_and_latency() {
    let broker = start(config(2));
    let addr = broker.native_addr();
    let topic = topic_owned_by("stats.flow", 1, 2);
    let mut subscriber = client_on_shard(addr, 0);
    let mut plain = subscriber.subscribe(&topic).unwrap();
    let mut worker = client_on_shard(addr, 0);
    let mut durable = worker
        .subscribe_with(
            &topic,
            SubscribeOptions {
                start: Start::All,
                sharing: Sharing::Consumer("billing".into()),
                acks: Some(AckSettings {
                    in_flight_max: 100,
                    ack_wait_ms: 30_000,
                    deliver_max: 5,
                }),
            },
        )
        .unwrap();
    let mut publisher = client_on_shard(addr, 0);
    for n in 0..10u64 {
        publisher
            .publish_confirmed(&topic, &n.to_be_bytes())
            .unwrap();
    }
    for _ in 0..10 {
        plain.recv_timeout(WAIT).unwrap();
    }
    // Ack 4 of the 10 the consumer got: 6 stay in flight, and it lags by 6.
    for _ in 0..10 {
        let delivery = durable.recv_timeout(WAIT).unwrap();
        if delivery.seq <= 4 {
            worker.ack(&durable, delivery.seq).unwrap();
        }
    }
    // Acks are not answered: ask until the topic's owner has applied the four.
    let mut stats = publisher.stats().unwrap();
    for _ in 0..200 {
        if stats.counters.acks >= 4 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        stats = publisher.stats().unwrap();
    }

    assert!(!stats.partial);
    assert_eq!(stats.shards, [0, 1]);
    assert!(stats.counters.published >= 10, "{stats:?}");
    assert!(stats.counters.delivered >= 20, "{stats:?}");
    assert_eq!(stats.counters.acks, 4);
    assert_eq!(stats.by_shard.len(), 2);
    assert_eq!(
        stats
            .by_shard
            .iter()
            .map(|s| s.counters.published)
            .sum::<u64>(),
        stats.counters.published
    );
    assert!(stats.connections >= 3);
    assert!(stats.connections_by_protocol["native"] >= 3);

    let info = &stats.topics[&topic];
    assert_eq!(info.owner_shard, 1);
    assert_eq!(info.messages, 10);
    assert_eq!(
        info.subscribers, 1,
        "the plain subscription (the consumer is apart)"
    );
    assert_eq!((info.retained_first_seq, info.retained_last_seq), (1, 10));
    assert_eq!(info.retained_messages, 10);
    let billing = &info.consumers[0];
    assert_eq!(
        (&*billing.name, billing.group, billing.members),
        ("billing", false, 1)
    );
    assert_eq!((billing.in_flight, billing.lag), (6, 6));

    // One sample per write that carried deliveries: at least one for each subscriber (more
    // unless a busy shard wrote several messages at once), each well under 10 s.
    assert!(stats.latency.delivery.count >= 2, "{:?}", stats.latency);
    assert!(stats.latency.delivery.max_us > 0.0);
    assert!(stats.latency.delivery.max_us < 10e6);
    assert!(stats.latency.delivery.p50_us <= stats.latency.delivery.max_us);
    assert_eq!(stats.latency.ack.count, 4, "{:?}", stats.latency);
    assert_eq!(stats.latency.by_shard.len(), 2);
    assert!(stats.slow_consumers.is_empty());
}

#[test]
fn presence_lists_every_subscription_that_receives_a_topic() {
    let broker = start(config(2));
    let addr = broker.native_addr();
    let topic = topic_owned_by("presence.orders", 0, 2);
    let mut alice = named_client(addr, 0, "alice");
    let _exact = alice.subscribe(&topic).unwrap();
    let mut bob = named_client(addr, 1, "bob");
    let _pattern = bob.subscribe("presence.>").unwrap();
    let _other = bob.subscribe("elsewhere.>").unwrap();
    let mut asker = client(addr);
    // A publish makes sure the topic exists (a subscription to it does too).
    asker.publish_confirmed(&topic, b"x").unwrap();

    let report = asker.topic_stats(&topic).unwrap();
    assert!(!report.partial);
    assert_eq!(report.info.messages, 1);
    let mut seen: Vec<(u16, &str, &str, &str)> = report
        .subscribers
        .iter()
        .map(|s| {
            (
                s.shard,
                s.client_name.as_str(),
                s.protocol.as_str(),
                s.subject.as_str(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (0, "alice", "native", topic.as_str()),
            (1, "bob", "native", "presence.>"),
        ]
    );
    assert!(report
        .subscribers
        .iter()
        .all(|s| s.peer.starts_with("127.0.0.1:")));
    assert!(report
        .subscribers
        .iter()
        .all(|s| s.connection.contains('.')));

    let missing = asker.topic_stats("presence.nobody").unwrap_err();
    assert_eq!(missing.server_code(), Some(ErrorCode::TopicNotFound));
    let pattern = asker.topic_stats("presence.*").unwrap_err();
    assert_eq!(pattern.server_code(), Some(ErrorCode::BadTopic));
}

#[test]
fn stats_is_a_v4_request_answered_with_json() {
    let broker = start(config(1));
    let addr = broker.native_addr();
    let mut old = RawConnection::handshaken_at(addr, 3);
    old.send(Frame::Stats {
        request_id: 7,
        topic: b"",
    });
    assert_eq!(old.expect_err(), (7, ErrorCode::UnknownOpcode.as_u16()));

    let mut raw = RawConnection::handshaken(addr);
    raw.send(Frame::Stats {
        request_id: 8,
        topic: b"",
    });
    let data = raw.expect_ok(8);
    let document: serde_json::Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(document["shards"], serde_json::json!([0]));
    assert!(document["latency"]["delivery"]["p99_us"].is_number());

    // Bytes after the topic: BAD_FRAME, and the connection goes on.
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut hello = Vec::new();
    Frame::Hello {
        request_id: 1,
        version: 4,
        client_name: b"",
    }
    .encode(&mut hello);
    stream.write_all(&hello).unwrap();
    stream
        .write_all(&[0, 0, 0, 11, 0x09, 0, 0, 0, 0, 0, 0, 3, 1, b'a', b'b'])
        .unwrap();
    let mut raw = RawConnection::from_stream(stream);
    raw.expect_ok(1);
    assert_eq!(raw.expect_err(), (3, ErrorCode::BadFrame.as_u16()));
    raw.send(Frame::Ping { request_id: 4 });
    let pong = raw.next_frame_bytes().expect("a PONG");
    assert_eq!(pong[4], 0x83);
}
