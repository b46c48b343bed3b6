//! Replay over real sockets: subscribers that start in a topic's retained history, the seam
//! between replayed and live messages, and gap notices for evicted history.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use corebus::client::{Start, SubscribeOptions};
use corebus::error::ErrorCode;
use corebus::protocol::native::Frame;

const WAIT: Duration = Duration::from_secs(10);

fn starting(start: Start) -> SubscribeOptions {
    SubscribeOptions {
        start,
        ..SubscribeOptions::default()
    }
}

fn received_seqs(subscription: &mut corebus::client::Subscription, count: usize) -> Vec<u64> {
    (0..count)
        .map(|_| subscription.recv_timeout(WAIT).expect("a message").seq)
        .collect()
}

#[test]
fn each_start_position_replays_what_it_names_then_goes_live() {
    for shards in [1, 4] {
        let broker = start(config(shards));
        let addr = broker.native_addr();
        let mut publisher = client(addr);
        for i in 1..=10u64 {
            assert_eq!(
                publisher
                    .publish_confirmed("history", &i.to_be_bytes())
                    .unwrap(),
                i
            );
        }
        let cases: [(Start, Vec<u64>); 5] = [
            (Start::LastN(3), vec![8, 9, 10]),
            (Start::FromSeq(5), (5..=10).collect()),
            (Start::All, (1..=10).collect()),
            (Start::LastN(100), (1..=10).collect()),
            (Start::New, vec![]),
        ];
        let mut subscriber = client(addr);
        let mut subscriptions = Vec::new();
        for (start, expected) in cases {
            let subscription = subscriber
                .subscribe_with("history", starting(start))
                .unwrap();
            assert_eq!(subscription.position().unwrap().last_seq, 10);
            subscriptions.push((start, subscription, expected));
        }
        assert_eq!(publisher.publish_confirmed("history", b"live").unwrap(), 11);
        for (start, mut subscription, mut expected) in subscriptions {
            expected.push(11);
            let got = received_seqs(&mut subscription, expected.len());
            assert_eq!(got, expected, "{start:?} with {shards} shards");
            assert_eq!(subscription.missed(), 0);
            assert!(subscription.try_recv().unwrap().is_none(), "no duplicates");
        }
    }
}

#[test]
fn a_replay_reaching_past_the_retained_window_reports_the_gap() {
    let mut config = config(2);
    config.replay_messages_max = 4;
    let broker = start(config);
    let addr = broker.native_addr();
    let mut publisher = client(addr);
    for _ in 0..10 {
        publisher.publish_confirmed("short", b"x").unwrap();
    }
    let mut subscriber = client(addr);
    let mut subscription = subscriber
        .subscribe_with("short", starting(Start::FromSeq(1)))
        .unwrap();
    assert_eq!(received_seqs(&mut subscription, 4), [7, 8, 9, 10]);
    assert_eq!(subscription.missed(), 6);

    // The same, byte by byte: GAP comes before the first replayed MSG.
    let mut raw = RawConnection::handshaken(addr);
    let mut options = Vec::new();
    starting(Start::LastN(5)).encode(&mut options);
    raw.send(Frame::Subscribe {
        request_id: 2,
        sub_id: 9,
        topic: b"short",
        options: &options,
    });
    raw.expect_ok(2);
    let bytes = raw.next_frame_bytes().unwrap();
    let frame = corebus::protocol::native::decode(&bytes, 1 << 20)
        .unwrap()
        .unwrap()
        .0;
    assert_eq!(
        frame,
        Frame::Gap {
            sub_id: 9,
            missed: 1,
            resume_seq: 7
        }
    );
}

#[test]
fn replay_and_live_meet_without_gap_or_duplicate_while_publishers_keep_publishing() {
    let broker = start(config(4));
    let addr = broker.native_addr();
    let topic = topic_owned_by("seam", 2, 4);
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..4u16)
        .map(|shard| {
            let stop = stop.clone();
            let topic = topic.clone();
            let mut publisher = client_on_shard(addr, shard);
            std::thread::spawn(move || {
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) && sent < 50_000 {
                    publisher.publish(&topic, b"p").unwrap();
                    sent += 1;
                    if sent % 100 == 0 {
                        publisher.publish_confirmed(&topic, b"p").unwrap();
                        sent += 1;
                    }
                }
                sent
            })
        })
        .collect();
    // Let some history build up, then subscribe from several shards mid-stream.
    std::thread::sleep(Duration::from_millis(100));
    let mut subscribers = Vec::new();
    for shard in 0..4u16 {
        let mut subscriber = client_on_shard(addr, shard);
        let subscription = subscriber
            .subscribe_with(&topic, starting(Start::LastN(50)))
            .unwrap();
        subscribers.push((subscriber, subscription));
    }
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    let published: u64 = publishers.into_iter().map(|p| p.join().unwrap()).sum();
    let mut last_client = client(addr);
    let last = last_client.publish_confirmed(&topic, b"end").unwrap();
    assert_eq!(last, published + 1);
    for (_client, mut subscription) in subscribers {
        let position = subscription.position().unwrap();
        let first = position.last_seq.saturating_sub(50) + 1;
        let mut expected = first;
        while expected <= last {
            let message = subscription
                .recv_timeout(WAIT)
                .expect("contiguous sequence");
            assert_eq!(message.seq, expected, "replay/live seam");
            expected += 1;
        }
        assert_eq!(subscription.missed(), 0);
    }
}

#[test]
fn start_positions_are_refused_where_they_cannot_apply() {
    let broker = start(config(1));
    let addr = broker.native_addr();
    let mut subscriber = client(addr);
    let error = subscriber
        .subscribe_with("a.*", starting(Start::All))
        .err()
        .unwrap();
    assert_eq!(error.server_code(), Some(ErrorCode::UnsupportedOption));

    // A v1 client may not send options at all.
    let mut raw = RawConnection::connect(addr);
    raw.send(Frame::Hello {
        request_id: 1,
        version: 1,
        client_name: b"old",
    });
    let data = raw.expect_ok(1);
    assert_eq!(u16::from_be_bytes([data[0], data[1]]), 1, "v1 negotiated");
    let mut options = Vec::new();
    starting(Start::All).encode(&mut options);
    raw.send(Frame::Subscribe {
        request_id: 2,
        sub_id: 1,
        topic: b"t",
        options: &options,
    });
    assert_eq!(raw.expect_err(), (2, ErrorCode::UnsupportedOption.as_u16()));
    // Malformed and unknown options.
    let mut raw = RawConnection::handshaken(addr);
    raw.send(Frame::Subscribe {
        request_id: 3,
        sub_id: 1,
        topic: b"t",
        options: &[1, 0, 2, 0],
    });
    assert_eq!(raw.expect_err(), (3, ErrorCode::BadFrame.as_u16()));
    raw.send(Frame::Subscribe {
        request_id: 4,
        sub_id: 1,
        topic: b"t",
        options: &[0x70, 0, 0],
    });
    assert_eq!(raw.expect_err(), (4, ErrorCode::UnsupportedOption.as_u16()));
}

#[test]
fn with_replay_disabled_a_start_in_the_past_reports_everything_missed() {
    let mut config = config(1);
    config.replay_messages_max = 0;
    let broker = start(config);
    let mut publisher = client(broker.native_addr());
    for _ in 0..3 {
        publisher.publish_confirmed("none", b"x").unwrap();
    }
    let mut subscriber = client(broker.native_addr());
    let mut subscription = subscriber
        .subscribe_with("none", starting(Start::FromSeq(1)))
        .unwrap();
    publisher.publish_confirmed("none", b"live").unwrap();
    assert_eq!(subscription.recv_timeout(WAIT).unwrap().seq, 4);
    assert_eq!(subscription.missed(), 3);
}
