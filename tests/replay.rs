//! Replay over real sockets: subscribers that start in a topic's retained history, the seam
//! between replayed and live messages, and gap notices for evicted history.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use corebus::client::{Start, SubscribeOptions, TopicOptions};
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
            resume_seq: 7,
            topic: b"short",
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
                    if sent.is_multiple_of(100) {
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

fn refusal(result: corebus::client::Result<corebus::client::TopicPosition>) -> ErrorCode {
    result
        .expect_err("refused")
        .server_code()
        .expect("a server code")
}

#[test]
fn a_created_topic_keeps_its_own_replay_limits_on_any_shard() {
    let shards = 4;
    let mut config = config(shards);
    config.replay_messages_max = 100;
    config.topic_replay_messages_max = 1000;
    let broker = start(config);
    let addr = broker.native_addr();
    // Created from a connection on shard 0, owned by each shard in turn, so both the local
    // and the cross-shard paths are taken.
    let mut admin = client_on_shard(addr, 0);
    let mut publisher = client(addr);
    for owner in 0..shards {
        let short = topic_owned_by("short", owner, shards);
        let long = topic_owned_by("long", owner, shards);
        let created = admin
            .create_topic(
                &short,
                TopicOptions {
                    replay_messages_max: Some(3),
                    ..TopicOptions::default()
                },
            )
            .unwrap();
        assert_eq!(created.last_seq, 0);
        admin
            .create_topic(
                &long,
                TopicOptions {
                    replay_messages_max: Some(500),
                    ..TopicOptions::default()
                },
            )
            .unwrap();
        for _ in 0..299 {
            publisher.publish(&short, b"s").unwrap();
            publisher.publish(&long, b"l").unwrap();
        }
        // Confirmed by the owner, so every quiet publish before it is sequenced too (a PING
        // is answered by the publisher's own shard and proves nothing about the owner's).
        publisher.publish_confirmed(&short, b"s").unwrap();
        publisher.publish_confirmed(&long, b"l").unwrap();
        let mut subscriber = client(addr);
        let mut from_short = subscriber
            .subscribe_with(&short, starting(Start::All))
            .unwrap();
        let mut from_long = subscriber
            .subscribe_with(&long, starting(Start::All))
            .unwrap();
        // The epoch the creator saw is the topic the subscriber reads.
        assert_eq!(from_short.position().unwrap().epoch, created.epoch);
        assert_eq!(received_seqs(&mut from_short, 3), vec![298, 299, 300]);
        assert_eq!(
            received_seqs(&mut from_long, 300),
            (1..=300).collect::<Vec<_>>(),
            "500 retained, above the broker-wide 100"
        );
        // A topic created by use gets the broker-wide limit.
        let used = topic_owned_by("used", owner, shards);
        for _ in 0..299 {
            publisher.publish(&used, b"u").unwrap();
        }
        publisher.publish_confirmed(&used, b"u").unwrap();
        let mut from_used = subscriber
            .subscribe_with(&used, starting(Start::All))
            .unwrap();
        assert_eq!(
            received_seqs(&mut from_used, 100),
            (201..=300).collect::<Vec<_>>()
        );
    }
}

#[test]
fn create_topic_refuses_what_it_cannot_do_with_a_clear_code() {
    let mut config = config(2);
    config.topic_replay_messages_max = 1000;
    config.topic_replay_bytes_max = 1 << 20;
    config.topics_max = 8;
    let broker = start(config);
    let mut admin = client(broker.native_addr());
    let plain = TopicOptions::default();
    admin.create_topic("orders", plain).unwrap();
    assert_eq!(
        refusal(admin.create_topic("orders", plain)),
        ErrorCode::TopicExists
    );
    admin.publish_confirmed("used.first", b"x").unwrap();
    assert_eq!(
        refusal(admin.create_topic("used.first", plain)),
        ErrorCode::TopicExists,
        "a topic created by use exists too"
    );
    for bad in [
        "orders.*",
        "metrics.>",
        "$dlq.orders",
        "_inbox.abc",
        "a..b",
        "",
    ] {
        assert_eq!(
            refusal(admin.create_topic(bad, plain)),
            ErrorCode::BadTopic,
            "{bad:?}"
        );
    }
    let too_many = TopicOptions {
        replay_messages_max: Some(1001),
        ..plain
    };
    let too_big = TopicOptions {
        replay_bytes_max: Some(u64::MAX),
        ..plain
    };
    for options in [too_many, too_big] {
        assert_eq!(
            refusal(admin.create_topic("capped", options)),
            ErrorCode::OptionOutOfRange
        );
    }
    // Nothing was created by the refusals: "capped" is still free.
    admin.create_topic("capped", plain).unwrap();

    // Byte-level: an unknown option tag and a malformed entry.
    let mut raw = RawConnection::handshaken(broker.native_addr());
    raw.send(Frame::CreateTopic {
        request_id: 7,
        topic: b"raw.topic",
        options: &[0x7f, 0, 0],
    });
    assert_eq!(raw.expect_err(), (7, ErrorCode::UnsupportedOption.as_u16()));
    raw.send(Frame::CreateTopic {
        request_id: 8,
        topic: b"raw.topic",
        options: &[1, 0, 2, 0, 0],
    });
    assert_eq!(raw.expect_err(), (8, ErrorCode::BadFrame.as_u16()));
    // The topic limit holds for created topics: 8 per broker, 3 taken above.
    let refusals: Vec<_> = (0..8)
        .filter_map(|i| admin.create_topic(&format!("many.t{i}"), plain).err())
        .map(|e| e.server_code())
        .collect();
    assert!(refusals.len() >= 3, "{refusals:?}");
    assert!(refusals
        .iter()
        .all(|&code| code == Some(ErrorCode::TooManyTopics)));
}

#[test]
fn older_protocol_versions_get_what_they_were_specified_with() {
    let mut config = config(1);
    config.replay_messages_max = 4;
    let broker = start(config);
    let addr = broker.native_addr();
    let mut publisher = client(addr);
    for _ in 0..10 {
        publisher.publish_confirmed("old.t", b"x").unwrap();
    }
    for version in [1, 2] {
        let mut raw = RawConnection::connect(addr);
        raw.send(Frame::Hello {
            request_id: 1,
            version,
            client_name: b"old",
        });
        let hello = raw.expect_ok(1);
        assert_eq!(u16::from_be_bytes([hello[0], hello[1]]), version);
        // CREATE_TOPIC and acked pattern groups came with v3.
        raw.send(Frame::CreateTopic {
            request_id: 2,
            topic: b"orders",
            options: &[],
        });
        assert_eq!(raw.expect_err(), (2, ErrorCode::UnknownOpcode.as_u16()));
        if version == 2 {
            let mut options = Vec::new();
            SubscribeOptions {
                sharing: corebus::client::Sharing::Group("g".into()),
                acks: Some(corebus::client::AckSettings::default()),
                ..SubscribeOptions::default()
            }
            .encode(&mut options);
            raw.send(Frame::Subscribe {
                request_id: 3,
                sub_id: 1,
                topic: b"old.*",
                options: &options,
            });
            assert_eq!(raw.expect_err(), (3, ErrorCode::UnsupportedOption.as_u16()));
            // A v2 GAP is the 16-byte body v2 specified, without the topic.
            let mut options = Vec::new();
            starting(Start::FromSeq(1)).encode(&mut options);
            raw.send(Frame::Subscribe {
                request_id: 4,
                sub_id: 2,
                topic: b"old.t",
                options: &options,
            });
            raw.expect_ok(4);
            let bytes = raw.next_frame_bytes().unwrap();
            assert_eq!(bytes.len(), 12 + 16);
            let gap = corebus::protocol::native::decode(&bytes, 1 << 20)
                .unwrap()
                .unwrap()
                .0;
            assert_eq!(
                gap,
                Frame::Gap {
                    sub_id: 2,
                    missed: 6,
                    resume_seq: 7,
                    topic: b"",
                }
            );
        }
        raw.send(Frame::Ping { request_id: 5 });
        loop {
            let bytes = raw.next_frame_bytes().unwrap();
            match corebus::protocol::native::decode(&bytes, 1 << 20)
                .unwrap()
                .unwrap()
                .0
            {
                Frame::Pong { request_id } => {
                    assert_eq!(request_id, 5);
                    break;
                }
                Frame::Msg { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[test]
fn deleting_a_topic_ends_its_subscriptions_on_every_shard_and_frees_it() {
    let shards = 4;
    let mut config = config(shards);
    config.created_topics_max = shards; // one per owner shard
    let broker = start(config);
    let addr = broker.native_addr();
    let topic = topic_owned_by("doomed", 3, shards);
    let mut admin = client_on_shard(addr, 0);
    let created = admin.create_topic(&topic, TopicOptions::default()).unwrap();
    let mut publisher = client(addr);
    publisher.publish_confirmed(&topic, b"before").unwrap();
    // A plain subscription and a durable consumer, on shards other than the owner, and a
    // pattern subscription, which outlives the topic.
    let mut plain_client = client_on_shard(addr, 1);
    let mut plain = plain_client.subscribe(&topic).unwrap();
    let mut durable_client = client_on_shard(addr, 2);
    let mut durable = durable_client
        .subscribe_with(
            &topic,
            SubscribeOptions {
                sharing: corebus::client::Sharing::Consumer("c".into()),
                acks: Some(corebus::client::AckSettings::default()),
                start: Start::All,
            },
        )
        .unwrap();
    assert_eq!(durable.recv_timeout(WAIT).unwrap().payload, b"before");
    let mut pattern_client = client(addr);
    let mut pattern = pattern_client.subscribe("doomed.*").unwrap();

    admin.delete_topic(&topic).unwrap();
    for subscription in [&mut plain, &mut durable] {
        let ended = subscription.recv_timeout(WAIT).unwrap_err();
        assert!(matches!(ended, corebus::client::Error::Ended(_)), "{ended}");
        assert_eq!(ended.server_code(), Some(ErrorCode::TopicDeleted));
        assert!(subscription.try_recv().is_err(), "it stays ended");
    }
    let gone = admin.delete_topic(&topic).unwrap_err();
    assert_eq!(gone.server_code(), Some(ErrorCode::TopicNotFound));
    // The next publish makes it again: a new epoch, nothing retained, and numbering that
    // continues (so a late ack for the old message 1 cannot acknowledge a new one).
    assert_eq!(publisher.publish_confirmed(&topic, b"after").unwrap(), 2);
    assert_eq!(pattern.recv_timeout(WAIT).unwrap().payload, b"after");
    let fresh = client(addr)
        .subscribe_with(&topic, starting(Start::All))
        .unwrap();
    assert_ne!(fresh.position().unwrap().epoch, created.epoch);
    // The ended subscriptions' ids and the created-topic slot are free again.
    plain_client.unsubscribe(plain).unwrap();
    let again = topic_owned_by("again", 3, shards);
    admin.delete_topic(&topic).unwrap();
    admin.create_topic(&again, TopicOptions::default()).unwrap();
    let _unaffected = durable_client.ping().unwrap();
}

#[test]
fn delete_topic_refuses_what_it_cannot_delete() {
    let broker = start(config(2));
    let mut admin = client(broker.native_addr());
    for bad in ["orders.*", "_inbox.abc", "a..b"] {
        let error = admin.delete_topic(bad).unwrap_err();
        assert_eq!(error.server_code(), Some(ErrorCode::BadTopic), "{bad:?}");
    }
    let error = admin.delete_topic("never.used").unwrap_err();
    assert_eq!(error.server_code(), Some(ErrorCode::TopicNotFound));
    // Dead-letter topics can be deleted: they are how an operator clears them.
    let mut raw = RawConnection::handshaken(broker.native_addr());
    raw.send(Frame::DeleteTopic {
        request_id: 4,
        topic: b"$dlq.orders",
    });
    assert_eq!(raw.expect_err(), (4, ErrorCode::TopicNotFound.as_u16()));
}

#[test]
fn ended_comes_after_the_messages_queued_for_the_subscription_and_nothing_follows() {
    let broker = start(config(2));
    let addr = broker.native_addr();
    let topic = topic_owned_by("queued", 1, 2);
    let mut raw = RawConnection::handshaken(addr);
    raw.send(Frame::Subscribe {
        request_id: 2,
        sub_id: 7,
        topic: topic.as_bytes(),
        options: &[],
    });
    raw.expect_ok(2);
    // The subscriber reads nothing yet, so these wait in its outbound queue.
    let mut publisher = client(addr);
    let payload = vec![b'x'; 32 * 1024];
    const MESSAGES: u64 = 100;
    for _ in 0..MESSAGES {
        publisher.publish_confirmed(&topic, &payload).unwrap();
    }
    client(addr).delete_topic(&topic).unwrap();
    raw.send(Frame::Ping { request_id: 3 });
    let mut messages = 0;
    let mut ended = false;
    loop {
        let bytes = raw.next_frame_bytes().expect("frames, then the PONG");
        match native_frame(&bytes) {
            Frame::Msg { sub_id: 7, .. } => {
                assert!(!ended, "a MSG for subscription 7 after its ENDED");
                messages += 1;
            }
            Frame::Ended {
                sub_id: 7, code, ..
            } => {
                assert_eq!(code, ErrorCode::TopicDeleted.as_u16());
                ended = true;
            }
            Frame::Pong { request_id: 3 } if ended => break,
            Frame::Pong { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(messages, MESSAGES);
}

fn native_frame(bytes: &[u8]) -> Frame<'_> {
    corebus::protocol::native::decode(bytes, 1 << 30)
        .unwrap()
        .unwrap()
        .0
}

#[test]
fn a_late_ack_for_a_deleted_topic_does_not_acknowledge_the_new_topics_message() {
    let broker = start(config(2));
    let addr = broker.native_addr();
    let mut worker = client(addr);
    let options = SubscribeOptions {
        sharing: corebus::client::Sharing::Group("w".into()),
        acks: Some(corebus::client::AckSettings {
            in_flight_max: 16,
            ack_wait_ms: 200,
            deliver_max: 10,
        }),
        ..SubscribeOptions::default()
    };
    let mut jobs = worker.subscribe_with("jobs.*", options).unwrap();
    let mut publisher = client(addr);
    publisher.publish_confirmed("jobs.a", b"old").unwrap();
    let old = jobs.recv_timeout(WAIT).unwrap();
    client(addr).delete_topic("jobs.a").unwrap();
    let new_seq = publisher.publish_confirmed("jobs.a", b"new").unwrap();
    assert_ne!(new_seq, old.seq, "numbering continues across the delete");
    let new = jobs.recv_timeout(WAIT).unwrap();
    assert_eq!(new.payload, b"new");
    // The worker finishes the old job late and acks it: "new" is still unacked and comes back.
    worker.ack_message(&jobs, &old).unwrap();
    let again = jobs.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (again.payload.as_slice(), again.seq),
        (&b"new"[..], new_seq)
    );
}
