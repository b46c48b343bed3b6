//! The embedded bus (`corebus::bus`): every call, blocking and async, shutdown, slots freed
//! by dropped subscriptions, filters, and delivery between in-process handles and network
//! clients on one bus.

mod common;

use std::time::Duration;

use corebus::bus::{
    AckSettings, Bus, BusConfig, Error, Sharing, Start, SubscribeOptions, TopicOptions,
};
use corebus::config::SlowConsumerPolicy;
use corebus::error::ErrorCode;

const WAIT: Duration = Duration::from_secs(5);

fn bus(shards: usize) -> Bus {
    let mut config = BusConfig::default();
    config.broker.shards = shards;
    Bus::start(config).expect("bus starts")
}

/// A bus that also listens on ephemeral loopback ports.
fn networked_bus(shards: usize) -> Bus {
    let mut config = BusConfig {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..BusConfig::default()
    };
    config.broker.shards = shards;
    Bus::start(config).expect("bus starts")
}

#[test]
fn publish_and_subscribe_exact_and_patterns_on_every_shard_layout() {
    for shards in [1, 3] {
        let bus = bus(shards);
        let mut exact = bus.subscribe("orders.created").unwrap();
        let mut one_token = bus.subscribe("orders.*").unwrap();
        let mut trailing = bus.subscribe("orders.>").unwrap();
        assert_eq!(exact.position().map(|p| p.last_seq), Some(0));
        assert!(one_token.position().is_none());
        let mut publisher = bus.publisher().unwrap();
        let seq = publisher
            .publish_confirmed("orders.created", b"first")
            .unwrap();
        publisher.publish("orders.eu.created", b"deep").unwrap();
        let message = exact.recv_timeout(WAIT).unwrap();
        assert_eq!(message.topic(), "orders.created");
        assert_eq!(message.seq(), seq);
        assert_eq!(message.payload(), b"first");
        assert_eq!(message.delivery_count(), 1);
        assert_eq!(one_token.recv_timeout(WAIT).unwrap().payload(), b"first");
        assert_eq!(trailing.recv_timeout(WAIT).unwrap().payload(), b"first");
        assert_eq!(trailing.recv_timeout(WAIT).unwrap().payload(), b"deep");
        assert_eq!(one_token.try_recv().unwrap().map(|m| m.seq()), None);
        assert!(matches!(
            exact.recv_timeout(Duration::from_millis(20)),
            Err(Error::Timeout)
        ));
        bus.shutdown().unwrap();
    }
}

#[test]
fn deliveries_share_the_published_frame_with_every_subscriber() {
    let bus = bus(2);
    let mut a = bus.subscribe("fan.out").unwrap();
    let mut b = bus.subscribe("fan.out").unwrap();
    bus.publisher()
        .unwrap()
        .publish_confirmed("fan.out", &[7; 1000])
        .unwrap();
    let (a, b) = (a.recv_timeout(WAIT).unwrap(), b.recv_timeout(WAIT).unwrap());
    assert!(a.shares_frame(&b), "one allocation, whatever the fan-out");
    assert_eq!(a.payload().as_ptr(), b.payload().as_ptr());
}

#[test]
fn headers_and_reply_topics_travel_with_the_message() {
    let bus = bus(2);
    let mut sub = bus.subscribe("with.headers").unwrap();
    let mut publisher = bus.publisher().unwrap();
    publisher
        .publish_with_headers("with.headers", &[("id", b"o-1"), ("kind", b"x")], b"p")
        .unwrap();
    let message = sub.recv_timeout(WAIT).unwrap();
    assert_eq!(message.header("id"), Some(&b"o-1"[..]));
    assert_eq!(message.header("kind"), Some(&b"x"[..]));
    publisher
        .publish_with_reply("with.headers", b"q", "answers.here")
        .unwrap();
    assert_eq!(
        sub.recv_timeout(WAIT).unwrap().reply_to(),
        Some("answers.here")
    );
}

/// Ring and handle sizes are allocated when a handle is made: sizes no allocation could meet
/// are refused by `Bus::start`, not met with a panic later.
#[test]
fn sizes_past_their_limits_are_refused_at_start() {
    let oversized = [
        BusConfig {
            command_slots: 1 << 62,
            ..BusConfig::default()
        },
        BusConfig {
            event_slots: usize::MAX,
            ..BusConfig::default()
        },
        BusConfig {
            handles_per_shard_max: usize::MAX,
            ..BusConfig::default()
        },
    ];
    for config in oversized {
        let error = Bus::start(config).err().expect("refused");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}");
    }
    let at_limits = BusConfig {
        command_slots: corebus::bus::RING_SLOTS_MAX,
        event_slots: 0,
        handles_per_shard_max: corebus::bus::HANDLES_PER_SHARD_LIMIT,
        ..BusConfig::default()
    };
    let bus = Bus::start(at_limits).expect("limits are allowed");
    let mut subscription = bus.subscribe("sizes.ok").unwrap();
    bus.publisher()
        .unwrap()
        .publish_confirmed("sizes.ok", b"x")
        .unwrap();
    assert_eq!(subscription.recv_timeout(WAIT).unwrap().payload(), b"x");
}

#[test]
fn caller_mistakes_are_errors_not_panics() {
    let bus = bus(1);
    let mut publisher = bus.publisher().unwrap();
    for topic in ["", "a..b", "orders.*", "$sys.x", "bad topic"] {
        let error = publisher.publish(topic, b"x").unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::BadTopic), "{topic:?}");
    }
    // The publisher remembers the last name that passed the check: a bad name after a good
    // one (and the empty one, which a fresh memory would equal) is still refused.
    for topic in ["good.name", "good..name", "", "good.name.", "good.name"] {
        let result = publisher.publish(topic, b"x");
        if topic == "good.name" {
            assert!(result.is_ok(), "{topic:?}: {result:?}");
        } else {
            let code = result.unwrap_err().code();
            assert_eq!(code, Some(ErrorCode::BadTopic), "{topic:?}");
        }
    }
    let too_big = vec![0; BusConfig::default().broker.message_bytes_max + 1];
    assert_eq!(
        publisher.publish("big", &too_big).unwrap_err().code(),
        Some(ErrorCode::MessageTooLarge)
    );
    assert_eq!(
        bus.subscribe("a.>.b").err().and_then(|e| e.code()),
        Some(ErrorCode::BadTopic)
    );
    let long_name = SubscribeOptions {
        sharing: Sharing::Group("g".repeat(65)),
        ..Default::default()
    };
    assert_eq!(
        bus.subscribe_with("jobs", long_name)
            .err()
            .and_then(|e| e.code()),
        Some(ErrorCode::UnsupportedOption)
    );
    let mut plain = bus.subscribe("no.acks").unwrap();
    let seq_message = {
        publisher.publish_confirmed("no.acks", b"m").unwrap();
        // A timeout too long to add to the clock is no deadline, not a panic.
        plain.recv_timeout(Duration::MAX).unwrap()
    };
    assert_eq!(
        plain.ack(&seq_message).unwrap_err().code(),
        Some(ErrorCode::UnsupportedOption)
    );
}

/// A publisher that repeats a topic tells its shard so, and the shard reuses where it found
/// the topic last: every switch of topic (to a name of the same length, too), a refused
/// publish in between, an async publish dropped before it went, and the topic deleted and
/// made again must still land each message on its own topic.
#[test]
fn a_publisher_repeating_its_topic_reaches_that_topic_through_switches_and_deletes() {
    for shards in [1, 2] {
        let bus = bus(shards);
        let mut on_b = bus.subscribe("same.b").unwrap();
        let mut on_c = bus.subscribe("same.c").unwrap();
        let mut publisher = bus.publisher_for("same.b").unwrap();
        let too_big = vec![0; BusConfig::default().broker.message_bytes_max + 1];
        let mut sent_b = Vec::new();
        let mut sent_c = Vec::new();
        // A refused or dropped publish names a topic that did not go: the next publish to
        // that topic is not "the same as the last one" (the last one that went was another).
        let plan = [
            "b", "b", "c", "c", "b", "big-c", "c", "b", "drop-c", "c", "b", "b",
        ];
        for (n, step) in plan.iter().enumerate() {
            let payload = format!("{n}");
            match *step {
                "b" => {
                    publisher.publish("same.b", payload.as_bytes()).unwrap();
                    sent_b.push(payload);
                }
                "c" => {
                    publisher.publish("same.c", payload.as_bytes()).unwrap();
                    sent_c.push(payload);
                }
                "big-c" => {
                    let refused = publisher.publish("same.c", &too_big).unwrap_err();
                    assert_eq!(refused.code(), Some(ErrorCode::MessageTooLarge));
                }
                _ => drop(publisher.publish_async("same.c", payload.as_bytes())),
            }
        }
        let take = |subscription: &mut corebus::bus::Subscription, count: usize| {
            (0..count)
                .map(|_| {
                    let message = subscription.recv_timeout(WAIT).unwrap();
                    String::from_utf8(message.payload().to_vec()).unwrap()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(take(&mut on_b, sent_b.len()), sent_b, "{shards} shards");
        // Deleted and made again: the table changed under the remembered place.
        bus.delete_topic("same.b").unwrap();
        assert!(matches!(on_b.recv_timeout(WAIT), Err(Error::Ended(_))));
        let mut on_b = bus.subscribe("same.b").unwrap();
        let mut after_delete = Vec::new();
        for n in 0..3 {
            let payload = format!("again-{n}");
            publisher.publish("same.b", payload.as_bytes()).unwrap();
            after_delete.push(payload);
        }
        publisher.publish_confirmed("same.c", b"last").unwrap();
        sent_c.push("last".into());
        assert_eq!(take(&mut on_c, sent_c.len()), sent_c, "{shards} shards");
        assert_eq!(
            take(&mut on_b, after_delete.len()),
            after_delete,
            "{shards} shards"
        );
        assert!(on_b.try_recv().unwrap().is_none());
        assert!(on_c.try_recv().unwrap().is_none());
        assert!(publisher.take_async_errors().0.is_empty());
    }
}

#[test]
fn unsubscribe_and_drop_free_the_subscription_and_its_connection() {
    let bus = bus(2);
    let base = bus.stats().unwrap().in_process_connections;
    let kept = bus.subscribe("slots.t").unwrap();
    let dropped = bus.subscribe("slots.t").unwrap();
    let unsubscribed = bus.subscribe("slots.*").unwrap();
    let topic_subscribers = |bus: &Bus| {
        bus.stats()
            .unwrap()
            .topics
            .iter()
            .find(|t| &*t.name == "slots.t")
            .map_or(0, |t| t.subscribers)
    };
    assert_eq!(topic_subscribers(&bus), 2);
    assert_eq!(bus.stats().unwrap().in_process_connections, base + 3);
    drop(dropped);
    unsubscribed.unsubscribe().unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while topic_subscribers(&bus) != 1 || bus.stats().unwrap().in_process_connections != base + 1 {
        assert!(std::time::Instant::now() < deadline, "slots not freed");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(kept);
}

#[test]
fn the_handle_limit_refuses_one_more_and_a_dropped_handle_frees_its_place() {
    let mut config = BusConfig {
        handles_per_shard_max: 2,
        ..BusConfig::default()
    };
    config.broker.shards = 1;
    let bus = Bus::start(config).unwrap();
    let first = bus.publisher().unwrap();
    let _second = bus.subscribe("limit").unwrap();
    assert_eq!(
        bus.publisher().err().and_then(|e| e.code()),
        Some(ErrorCode::TooManyConnections)
    );
    drop(first);
    let _third = bus
        .publisher()
        .expect("a dropped publisher freed its place");
    drop(_second);
    bus.subscribe("limit")
        .expect("a dropped subscription freed its place");
}

#[test]
fn a_filter_runs_on_the_subscriber_and_counts_what_it_turned_down() {
    let bus = bus(2);
    let mut big = bus
        .subscribe_filtered("orders.*", |m| m.payload().len() > 3)
        .unwrap();
    let mut publisher = bus.publisher().unwrap();
    for payload in [&b"1"[..], b"12345", b"12", b"123456"] {
        publisher.publish_confirmed("orders.paid", payload).unwrap();
    }
    assert_eq!(big.recv_timeout(WAIT).unwrap().payload(), b"12345");
    assert_eq!(big.recv_timeout(WAIT).unwrap().payload(), b"123456");
    assert_eq!(big.filtered_out(), 2);
    // The shard delivered all four: what the filter turned down counts as delivered.
    assert_eq!(bus.stats().unwrap().counters.delivered, 4);
}

#[test]
fn a_panicking_filter_ends_its_subscription_and_the_bus_keeps_serving() {
    let bus = bus(2);
    let mut fragile = bus
        .subscribe_filtered("fragile", |m| {
            if m.payload() == b"boom" {
                panic!("cannot read {:?}", m.payload());
            }
            true
        })
        .unwrap();
    let mut sturdy = bus.subscribe("fragile").unwrap();
    let mut publisher = bus.publisher().unwrap();
    publisher.publish_confirmed("fragile", b"ok").unwrap();
    publisher.publish_confirmed("fragile", b"boom").unwrap();
    publisher.publish_confirmed("fragile", b"after").unwrap();
    assert_eq!(fragile.recv_timeout(WAIT).unwrap().payload(), b"ok");
    match fragile.recv_timeout(WAIT) {
        Err(Error::FilterPanicked(reason)) => assert!(reason.contains("cannot read")),
        other => panic!("expected FilterPanicked, got {other:?}"),
    }
    assert!(matches!(fragile.try_recv(), Err(Error::FilterPanicked(_))));
    for payload in [&b"ok"[..], b"boom", b"after"] {
        assert_eq!(sturdy.recv_timeout(WAIT).unwrap().payload(), payload);
    }
    assert_eq!(publisher.publish_confirmed("fragile", b"more").unwrap(), 4);
}

#[test]
fn shutdown_ends_waiting_subscribers_with_closed() {
    let bus = bus(2);
    let mut subscribers: Vec<_> = (0..4)
        .map(|i| bus.subscribe(&format!("wait.t{i}")).unwrap())
        .collect();
    let mut publisher = bus.publisher().unwrap();
    publisher.publish_confirmed("wait.t0", b"last").unwrap();
    let waiting: Vec<_> = subscribers
        .drain(1..)
        .map(|mut sub| std::thread::spawn(move || sub.recv()))
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    bus.shutdown().unwrap();
    for waiter in waiting {
        match waiter.join().unwrap() {
            Err(Error::Closed(Some(notice))) => {
                assert_eq!(notice.code(), Some(ErrorCode::ShuttingDown))
            }
            other => panic!("expected Closed, got {other:?}"),
        }
    }
    // What was handed over before the shutdown is still taken, then the end.
    let first = &mut subscribers[0];
    assert_eq!(first.recv().unwrap().payload(), b"last");
    assert!(matches!(first.recv(), Err(Error::Closed(_))));
    assert!(first.next().is_none());
    assert!(matches!(
        publisher.publish("wait.t0", b"x"),
        Err(Error::Closed(_))
    ));
}

#[test]
fn dropping_the_bus_shuts_it_down() {
    let bus = bus(1);
    let mut sub = bus.subscribe("gone").unwrap();
    drop(bus);
    assert!(matches!(sub.recv_timeout(WAIT), Err(Error::Closed(_))));
}

#[test]
fn a_full_command_ring_makes_publish_wait_and_nothing_is_lost() {
    let mut config = BusConfig {
        command_slots: 2,
        event_slots: 4,
        ..BusConfig::default()
    };
    config.broker.shards = 2;
    let bus = Bus::start(config).unwrap();
    let mut sub = bus.subscribe("burst").unwrap();
    let count = 20_000u64;
    let publisher_bus = bus.handle();
    let publishing = std::thread::spawn(move || {
        let mut publisher = publisher_bus.publisher().unwrap();
        for i in 0..count {
            publisher.publish("burst", &i.to_be_bytes()).unwrap();
        }
    });
    for i in 0..count {
        let message = sub.recv_timeout(WAIT).unwrap();
        assert_eq!(message.payload(), i.to_be_bytes());
        assert_eq!(message.seq(), i + 1);
    }
    publishing.join().unwrap();
}

#[test]
fn a_subscriber_that_stops_reading_is_cut_as_a_slow_consumer() {
    let mut config = BusConfig {
        event_slots: 8,
        ..BusConfig::default()
    };
    config.broker.shards = 1;
    config.broker.outbound_bytes_max = 64 * 1024;
    config.broker.message_bytes_max = 4096;
    config.broker.publisher_stall_ms_max = 10;
    let bus = Bus::start(config).unwrap();
    let mut slow = bus.subscribe("slow").unwrap();
    let mut publisher = bus.publisher().unwrap();
    for _ in 0..2_000 {
        publisher.publish("slow", &[0; 512]).unwrap();
    }
    publisher.publish_confirmed("slow", b"end").unwrap();
    let mut taken = 0;
    let error = loop {
        match slow.recv_timeout(WAIT) {
            Ok(_) => taken += 1,
            Err(error) => break error,
        }
    };
    assert!(taken < 2_000, "it was cut, not served everything");
    assert_eq!(error.code(), Some(ErrorCode::SlowConsumer), "{error:?}");
    let stats = bus.stats().unwrap();
    assert_eq!(stats.counters.slow_consumer_disconnects, 1);
    assert!(stats.counters.undelivered > 0);
}

#[test]
fn drop_oldest_tells_an_in_process_subscriber_how_many_it_lost() {
    let mut config = BusConfig {
        event_slots: 8,
        ..BusConfig::default()
    };
    config.broker.shards = 1;
    config.broker.outbound_bytes_max = 64 * 1024;
    config.broker.message_bytes_max = 4096;
    config.broker.publisher_stall_ms_max = 0;
    config.broker.slow_consumer = SlowConsumerPolicy::DropOldest;
    let bus = Bus::start(config).unwrap();
    let mut slow = bus.subscribe("lossy").unwrap();
    let mut publisher = bus.publisher().unwrap();
    for _ in 0..2_000 {
        publisher.publish("lossy", &[0; 512]).unwrap();
    }
    publisher.publish_confirmed("lossy", b"end").unwrap();
    let mut taken = 0u64;
    loop {
        let message = slow.recv_timeout(WAIT).unwrap();
        taken += 1;
        if message.payload() == b"end" {
            break;
        }
    }
    assert!(slow.dropped() > 0);
    assert_eq!(taken + slow.dropped(), 2_001);
}

#[test]
fn replay_starts_and_gaps() {
    let bus = bus(2);
    let mut publisher = bus.publisher().unwrap();
    for i in 0..10u8 {
        publisher.publish_confirmed("replayed", &[i]).unwrap();
    }
    let mut last3 = bus
        .subscribe_with(
            "replayed",
            SubscribeOptions {
                start: Start::LastN(3),
                ..Default::default()
            },
        )
        .unwrap();
    let seqs: Vec<u64> = (0..3)
        .map(|_| last3.recv_timeout(WAIT).unwrap().seq())
        .collect();
    assert_eq!(seqs, [8, 9, 10]);
    let mut from = bus
        .subscribe_with(
            "replayed",
            SubscribeOptions {
                start: Start::FromSeq(11),
                ..Default::default()
            },
        )
        .unwrap();
    publisher.publish_confirmed("replayed", b"live").unwrap();
    assert_eq!(from.recv_timeout(WAIT).unwrap().payload(), b"live");
    assert_eq!(
        bus.subscribe_with(
            "replayed",
            SubscribeOptions {
                start: Start::FromSeq(100),
                ..Default::default()
            },
        )
        .err()
        .and_then(|e| e.code()),
        Some(ErrorCode::StartBeyondEnd)
    );
    // Every other start position, in process as on the network.
    let starting = |start| {
        bus.subscribe_with(
            "replayed",
            SubscribeOptions {
                start,
                ..Default::default()
            },
        )
    };
    let mut all = starting(Start::All).unwrap();
    assert_eq!(all.recv_timeout(WAIT).unwrap().seq(), 1);
    let at_seq_6 = {
        let mut from_6 = starting(Start::FromSeq(6)).unwrap();
        from_6.recv_timeout(WAIT).unwrap()
    };
    let mut by_time = starting(Start::FromTimeNs(at_seq_6.timestamp_ns())).unwrap();
    assert!(by_time.recv_timeout(WAIT).unwrap().seq() <= 6);
    let epoch = from
        .position()
        .expect("an exact topic has a position")
        .epoch;
    let mut resumed = starting(Start::FromSeqOfEpoch { seq: 9, epoch }).unwrap();
    assert_eq!(resumed.recv_timeout(WAIT).unwrap().seq(), 9);
    let wrong_epoch = starting(Start::FromSeqOfEpoch {
        seq: 9,
        epoch: epoch.wrapping_add(1),
    });
    assert_eq!(
        wrong_epoch.err().and_then(|e| e.code()),
        Some(ErrorCode::EpochMismatch)
    );
}

#[test]
fn create_and_delete_topics_end_their_subscriptions() {
    let bus = bus(2);
    let position = bus
        .create_topic(
            "admin.made",
            TopicOptions {
                replay_messages_max: Some(5),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(position.last_seq, 0);
    assert_eq!(
        bus.create_topic("admin.made", TopicOptions::default())
            .err()
            .and_then(|e| e.code()),
        Some(ErrorCode::TopicExists)
    );
    let mut sub = bus.subscribe("admin.made").unwrap();
    bus.delete_topic("admin.made").unwrap();
    match sub.recv_timeout(WAIT) {
        Err(Error::Ended(notice)) => assert_eq!(notice.code(), Some(ErrorCode::TopicDeleted)),
        other => panic!("expected Ended, got {other:?}"),
    }
    assert!(matches!(sub.try_recv(), Err(Error::Ended(_))));
}

#[test]
fn queue_groups_split_the_messages() {
    let bus = bus(3);
    let mut workers: Vec<_> = (0..3)
        .map(|_| bus.subscribe_queue("jobs.>", "workers").unwrap())
        .collect();
    let mut publisher = bus.publisher().unwrap();
    for i in 0..30u8 {
        publisher.publish_confirmed("jobs.resize", &[i]).unwrap();
    }
    let mut seen = Vec::new();
    let mut per_worker = Vec::new();
    for worker in &mut workers {
        let mut n = 0;
        while let Ok(Some(message)) = {
            std::thread::sleep(Duration::from_millis(1));
            worker.try_recv()
        } {
            seen.push(message.payload()[0]);
            n += 1;
        }
        per_worker.push(n);
    }
    let deadline = std::time::Instant::now() + WAIT;
    while seen.len() < 30 && std::time::Instant::now() < deadline {
        for (worker, n) in workers.iter_mut().zip(&mut per_worker) {
            while let Ok(Some(message)) = worker.try_recv() {
                seen.push(message.payload()[0]);
                *n += 1;
            }
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..30).collect::<Vec<u8>>(), "each message once");
    assert!(
        per_worker.iter().filter(|&&n| n > 0).count() > 1,
        "{per_worker:?}"
    );
}

#[test]
fn durable_consumers_ack_nack_and_dead_letter() {
    let bus = bus(2);
    let mut dead = bus.subscribe("$dlq.work").unwrap();
    let options = SubscribeOptions {
        sharing: Sharing::Consumer("worker".into()),
        acks: Some(AckSettings {
            in_flight_max: 16,
            ack_wait_ms: 60_000,
            deliver_max: 2,
        }),
        ..Default::default()
    };
    let mut consumer = bus.subscribe_with("work", options.clone()).unwrap();
    let mut publisher = bus.publisher().unwrap();
    publisher.publish_confirmed("work", b"good").unwrap();
    publisher.publish_confirmed("work", b"bad").unwrap();
    let good = consumer.recv_timeout(WAIT).unwrap();
    consumer.ack(&good).unwrap();
    let bad = consumer.recv_timeout(WAIT).unwrap();
    assert_eq!(bad.payload(), b"bad");
    consumer.nack(&bad).unwrap();
    let again = consumer.recv_timeout(WAIT).unwrap();
    assert_eq!((again.payload(), again.delivery_count()), (&b"bad"[..], 2));
    consumer.nack(&again).unwrap();
    let letter = dead.recv_timeout(WAIT).unwrap();
    assert_eq!(letter.topic(), "$dlq.work");
    assert!(consumer.take_ack_errors().is_empty());
    // The consumer resumes under its name on a new subscription, with nothing unacked.
    drop(consumer);
    publisher.publish_confirmed("work", b"later").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let mut resumed = loop {
        match bus.subscribe_with("work", options.clone()) {
            Ok(resumed) => break resumed,
            Err(error) if error.code() == Some(ErrorCode::ConsumerInUse) => {
                assert!(std::time::Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => panic!("{error:?}"),
        }
    };
    let later = resumed.recv_timeout(WAIT).unwrap();
    assert_eq!(later.payload(), b"later");
    // Three more, acked all at once through the last: after the consumer resumes again,
    // nothing comes back (an ack through the first only would redeliver the other two).
    for job in [&b"x"[..], b"y", b"z"] {
        publisher.publish_confirmed("work", job).unwrap();
    }
    let mut last = later;
    for _ in 0..3 {
        last = resumed.recv_timeout(WAIT).unwrap();
    }
    assert_eq!(last.payload(), b"z");
    resumed.ack_through(&last).unwrap();
    // The ack went first: the shard carries out a handle's commands in order.
    resumed.unsubscribe().unwrap();
    let mut again = bus.subscribe_with("work", options.clone()).unwrap();
    publisher.publish_confirmed("work", b"after").unwrap();
    assert_eq!(again.recv_timeout(WAIT).unwrap().payload(), b"after");
}

#[test]
fn request_reply_with_timeout() {
    let bus = bus(3);
    let mut service = bus.subscribe("svc.time").unwrap();
    let responder_bus = bus.handle();
    let responder = std::thread::spawn(move || {
        let mut answers = responder_bus.publisher().unwrap();
        for request in service.by_ref().take(2) {
            let answer = [b"noon for ".as_slice(), request.payload()].concat();
            assert!(answers.reply(&request, &answer).unwrap());
        }
    });
    let mut client = bus.publisher().unwrap();
    // A timeout too long to add to the clock is no deadline, not a panic.
    for (who, timeout) in [(&b"a"[..], WAIT), (b"b", Duration::MAX)] {
        let answer = client.request("svc.time", who, timeout).unwrap();
        assert_eq!(answer.payload(), [b"noon for ".as_slice(), who].concat());
    }
    responder.join().unwrap();
    assert!(matches!(
        client.request("svc.nobody", b"?", Duration::from_millis(50)),
        Err(Error::Timeout)
    ));
}

#[test]
fn stats_count_published_and_delivered_across_shards() {
    let bus = bus(3);
    let mut subs: Vec<_> = (0..2).map(|_| bus.subscribe("counted").unwrap()).collect();
    let mut publisher = bus.publisher().unwrap();
    for _ in 0..5 {
        publisher.publish_confirmed("counted", b"x").unwrap();
    }
    for sub in &mut subs {
        for _ in 0..5 {
            sub.recv_timeout(WAIT).unwrap();
        }
    }
    let stats = bus.stats().unwrap();
    assert_eq!((stats.shards, stats.shards_answered), (3, 3));
    assert_eq!(stats.counters.published, 5);
    assert_eq!(stats.counters.delivered, 10);
    let topic = stats.topics.iter().find(|t| &*t.name == "counted").unwrap();
    assert_eq!((topic.subscribers, topic.messages), (2, 5));
}

#[test]
fn in_process_and_network_clients_see_each_other() {
    let bus = networked_bus(2);
    let addr = bus.native_addr().expect("listening");
    let mut network = common::client(addr);
    let mut from_network = bus.subscribe("mixed.in").unwrap();
    let mut network_sub = network.subscribe("mixed.out").unwrap();
    let seq = network.publish_confirmed("mixed.in", b"from tcp").unwrap();
    let message = from_network.recv_timeout(WAIT).unwrap();
    assert_eq!((message.seq(), message.payload()), (seq, &b"from tcp"[..]));
    let mut publisher = bus.publisher().unwrap();
    let seq = publisher
        .publish_with_headers("mixed.out", &[("id", b"7")], b"from the process")
        .unwrap();
    let delivery = network_sub.recv_timeout(WAIT).unwrap();
    assert_eq!(delivery.seq, seq);
    assert_eq!(delivery.payload, b"from the process");
    assert_eq!(delivery.header("id"), Some(&b"7"[..]));
    // Request/reply across the two.
    let mut service = bus.subscribe("mixed.svc").unwrap();
    let answering = std::thread::spawn(move || {
        let request = service.recv_timeout(WAIT).unwrap();
        publisher.reply(&request, b"pong").unwrap();
        publisher
    });
    let answer = network.request("mixed.svc", b"ping", WAIT).unwrap();
    assert_eq!(answer.payload, b"pong");
    let mut publisher = answering.join().unwrap();
    // And the other way: the process asks, a network client answers.
    let mut network_service = network.subscribe("mixed.net-svc").unwrap();
    let answering = std::thread::spawn(move || {
        let request = network_service.recv_timeout(WAIT).unwrap();
        network.reply(&request, b"net pong").unwrap();
    });
    let answer = publisher.request("mixed.net-svc", b"ping", WAIT).unwrap();
    assert_eq!(answer.payload(), b"net pong");
    answering.join().unwrap();
}

/// The next item of a subscription, through its `Stream` implementation. Bounded: a lost
/// wake-up fails the test rather than hanging it (an async handle has no backstop timer).
async fn next(
    sub: &mut corebus::bus::Subscription,
) -> Option<corebus::bus::Result<corebus::bus::Message>> {
    let item = std::future::poll_fn(|cx| {
        futures_core::Stream::poll_next(std::pin::Pin::new(&mut *sub), cx)
    });
    bounded(item).await
}

/// `future`, or a test failure after `WAIT`.
async fn bounded<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .expect("no wake-up within WAIT")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_subscriptions_are_streams_and_publish_awaits_room() {
    let mut config = BusConfig {
        command_slots: 4,
        ..BusConfig::default()
    };
    config.broker.shards = 2;
    let bus = Bus::start(config).unwrap();
    let mut sub = bus.subscribe("async.t").unwrap();
    let mut filtered = bus
        .subscribe_filtered("async.*", |m| m.payload()[3] % 2 == 0)
        .unwrap();
    let handle = bus.handle();
    let publishing = tokio::spawn(async move {
        let mut publisher = handle.publisher().unwrap();
        for i in 0..1_000u32 {
            publisher
                .publish_async("async.t", &i.to_be_bytes())
                .await
                .unwrap();
        }
    });
    for i in 0..1_000u32 {
        let message = next(&mut sub).await.unwrap().unwrap();
        assert_eq!(message.payload(), i.to_be_bytes());
    }
    let mut evens = 0;
    while evens < 500 {
        let message = next(&mut filtered).await.unwrap().unwrap();
        assert_eq!(message.payload()[3] % 2, 0);
        evens += 1;
    }
    publishing.await.unwrap();
    let shutting = tokio::task::spawn_blocking(move || bus.shutdown());
    // The stream says why it ends, once, and then ends.
    match next(&mut sub).await {
        Some(Err(Error::Closed(Some(notice)))) => {
            assert_eq!(notice.code(), Some(ErrorCode::ShuttingDown))
        }
        other => panic!("expected the shutdown notice, got {other:?}"),
    }
    assert!(
        next(&mut sub).await.is_none(),
        "the stream ends at shutdown"
    );
    shutting.await.unwrap().unwrap();
}

/// Every call that waits has an async twin, driven by a multi-threaded runtime (so every
/// future must be `Send`), each await bounded so that a lost wake-up fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiting_call_has_an_async_twin() {
    let bus = bus(2);
    let handle = bus.handle();
    let tasks = tokio::spawn(async move {
        // Subscriptions: exact with a start position, a pattern, a queue group, a filter.
        let created = bounded(handle.create_topic_async("twin.t", TopicOptions::default()))
            .await
            .unwrap();
        assert_eq!(created.last_seq, 0);
        let mut publisher = handle.publisher().unwrap();
        let first = bounded(publisher.publish_confirmed_async("twin.t", b"before"))
            .await
            .unwrap();
        let from_first = SubscribeOptions {
            start: Start::FromSeq(first),
            ..Default::default()
        };
        let mut replayed = bounded(handle.subscribe_with_async("twin.t", from_first))
            .await
            .unwrap();
        let mut pattern = bounded(handle.subscribe_async("twin.*")).await.unwrap();
        let mut queued = bounded(handle.subscribe_queue_async("twin.t", "workers"))
            .await
            .unwrap();
        let mut filtered =
            bounded(handle.subscribe_filtered_async("twin.t", |m| m.payload() != b"skip"))
                .await
                .unwrap();
        let headers = [("kind", &b"twin"[..])];
        let second = bounded(publisher.publish_with_headers_async("twin.t", &headers, b"skip"))
            .await
            .unwrap();
        assert_eq!(second, first + 1);
        let third = bounded(publisher.publish_confirmed_async("twin.t", b"keep"))
            .await
            .unwrap();
        let payloads = |messages: Vec<corebus::bus::Message>| {
            messages
                .iter()
                .map(|m| m.payload().to_vec())
                .collect::<Vec<_>>()
        };
        let mut from_replay = Vec::new();
        for _ in 0..3 {
            from_replay.push(next(&mut replayed).await.unwrap().unwrap());
        }
        assert_eq!(
            payloads(from_replay),
            [&b"before"[..], b"skip", b"keep"].map(<[u8]>::to_vec)
        );
        let with_headers = next(&mut pattern).await.unwrap().unwrap();
        assert_eq!(with_headers.header("kind"), Some(&b"twin"[..]));
        assert_eq!(next(&mut pattern).await.unwrap().unwrap().seq(), third);
        assert_eq!(next(&mut queued).await.unwrap().unwrap().seq(), second);
        assert_eq!(next(&mut filtered).await.unwrap().unwrap().seq(), third);
        assert_eq!(filtered.filtered_out(), 1);

        // Request/reply, answered by another task; then a request nobody answers.
        let mut service = bounded(handle.subscribe_async("twin.svc")).await.unwrap();
        let mut answers = handle.publisher().unwrap();
        let answering = tokio::spawn(async move {
            let request = next(&mut service).await.unwrap().unwrap();
            let reply = [b"re: ".as_slice(), request.payload()].concat();
            assert!(bounded(answers.reply_async(&request, &reply))
                .await
                .unwrap());
        });
        let answer = bounded(publisher.request_async("twin.svc", b"ping", WAIT))
            .await
            .unwrap();
        assert_eq!(answer.payload(), b"re: ping");
        answering.await.unwrap();
        let unanswered = publisher.request_async("twin.nobody", b"?", Duration::from_millis(50));
        assert!(matches!(bounded(unanswered).await, Err(Error::Timeout)));
        let mut replies = bounded(handle.subscribe_async("twin.r")).await.unwrap();
        bounded(publisher.publish_with_reply_async("twin.r", b"r", "twin.back"))
            .await
            .unwrap();
        assert_eq!(
            next(&mut replies).await.unwrap().unwrap().reply_to(),
            Some("twin.back")
        );

        // A durable consumer: ack, nack (dead-lettered at its second delivery), ack_through.
        let mut dead = bounded(handle.subscribe_async("$dlq.twin.jobs"))
            .await
            .unwrap();
        let acked = SubscribeOptions {
            sharing: Sharing::Consumer("twin".into()),
            acks: Some(AckSettings {
                in_flight_max: 8,
                ack_wait_ms: 60_000,
                deliver_max: 2,
            }),
            ..Default::default()
        };
        let mut jobs = bounded(handle.subscribe_with_async("twin.jobs", acked))
            .await
            .unwrap();
        for job in [&b"ok"[..], b"bad", b"a", b"b"] {
            bounded(publisher.publish_confirmed_async("twin.jobs", job))
                .await
                .unwrap();
        }
        let ok = next(&mut jobs).await.unwrap().unwrap();
        bounded(jobs.ack_async(&ok)).await.unwrap();
        let bad = next(&mut jobs).await.unwrap().unwrap();
        let a = next(&mut jobs).await.unwrap().unwrap();
        let b = next(&mut jobs).await.unwrap().unwrap();
        bounded(jobs.nack_async(&bad)).await.unwrap();
        let again = next(&mut jobs).await.unwrap().unwrap();
        assert_eq!((again.payload(), again.delivery_count()), (&b"bad"[..], 2));
        bounded(jobs.nack_async(&again)).await.unwrap();
        assert_eq!(
            next(&mut dead).await.unwrap().unwrap().topic(),
            "$dlq.twin.jobs"
        );
        assert!(a.seq() < b.seq());
        bounded(jobs.ack_through_async(&b)).await.unwrap();
        assert!(jobs.take_ack_errors().is_empty());

        // Stats, unsubscribe, delete.
        let stats = bounded(handle.stats_async()).await.unwrap();
        let topic = stats.topics.iter().find(|t| &*t.name == "twin.t").unwrap();
        assert_eq!(topic.messages, 3);
        let before = topic.subscribers;
        bounded(filtered.unsubscribe_async()).await.unwrap();
        let stats = bounded(publisher.stats_async()).await.unwrap();
        let topic = stats.topics.iter().find(|t| &*t.name == "twin.t").unwrap();
        assert!(
            topic.subscribers < before,
            "{} then {}",
            before,
            topic.subscribers
        );
        bounded(handle.delete_topic_async("twin.t")).await.unwrap();
        assert!(matches!(
            next(&mut replayed).await,
            Some(Err(Error::Ended(_)))
        ));
        assert!(next(&mut replayed).await.is_none());
        let made = bounded(publisher.create_topic_async("twin.new", TopicOptions::default()))
            .await
            .unwrap();
        assert_eq!(made.last_seq, 0);
        let twice = publisher.create_topic_async("twin.new", TopicOptions::default());
        let refused = bounded(twice).await.unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::TopicExists));
        bounded(publisher.delete_topic_async("twin.new"))
            .await
            .unwrap();
    });
    tasks.await.unwrap();
    tokio::task::spawn_blocking(move || bus.shutdown())
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn the_readme_embedding_section_holds_the_doc_tested_walkthrough() {
    // `docs/embedding.md` is included in the `bus` module's docs, so `cargo test` runs its
    // examples; the README must show them unchanged.
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let walkthrough = std::fs::read_to_string(format!("{root}/docs/embedding.md")).unwrap();
    assert!(
        readme.contains(walkthrough.trim_end()),
        "README.md's Embedding section differs from docs/embedding.md"
    );
}

#[test]
fn handles_move_between_threads_and_the_bus_handle_is_shared() {
    fn send<T: Send>() {}
    fn send_and_sync<T: Send + Sync>() {}
    send::<corebus::bus::Publisher>();
    send::<corebus::bus::Subscription>();
    send_and_sync::<corebus::bus::BusHandle>();
    send_and_sync::<Bus>();
}

#[test]
fn refusals_of_quiet_publishes_are_kept_for_the_publisher() {
    let mut config = BusConfig::default();
    config.broker.shards = 2;
    config.broker.auto_create_topics = false;
    let bus = Bus::start(config).unwrap();
    let mut publisher = bus.publisher_for("not.made").unwrap();
    publisher.publish("not.made", b"lost?").unwrap();
    publisher.publish("not.made", b"lost?").unwrap();
    bus.create_topic("made", TopicOptions::default()).unwrap();
    // A confirmed publish after them: its answer comes behind their refusals.
    assert_eq!(publisher.publish_confirmed("made", b"kept").unwrap(), 1);
    let (errors, lost) = publisher.take_async_errors();
    assert_eq!(lost, 0);
    assert_eq!(errors.len(), 2);
    assert!(errors
        .iter()
        .all(|e| e.code() == Some(ErrorCode::TopicNotFound)));
    assert_eq!(
        publisher
            .publish_confirmed("not.made", b"x")
            .unwrap_err()
            .code(),
        Some(ErrorCode::TopicNotFound)
    );
}

#[test]
fn a_replay_past_what_is_retained_reports_the_gap() {
    let bus = bus(2);
    bus.create_topic(
        "short.memory",
        TopicOptions {
            replay_messages_max: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    let mut publisher = bus.publisher_for("short.memory").unwrap();
    for i in 1..=10u8 {
        publisher.publish_confirmed("short.memory", &[i]).unwrap();
    }
    let mut from_start = bus
        .subscribe_with(
            "short.memory",
            SubscribeOptions {
                start: Start::FromSeq(1),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(from_start.subject(), "short.memory");
    assert_eq!(from_start.recv_timeout(WAIT).unwrap().seq(), 8);
    assert_eq!(from_start.missed(), 7);
    let gap = from_start.last_gap().unwrap();
    assert_eq!((gap.missed, gap.resume_seq), (7, 8));
    assert_eq!(bus.native_addr(), None);
    assert_eq!(bus.http_addr(), None);
}

/// One-slot rings both ways, several publishers and subscribers across shards: every
/// hand-over waits on the other side. A blocked handle looks again by itself after 100 ms,
/// so a lost wake-up shows as a stall of that long, not a hang: this catches order bugs and
/// a wake-up lost systematically (12,000 hand-overs a subscriber would take 20 minutes), not
/// a rare one; the async test, whose handles have no such backstop, bounds every await.
#[test]
fn one_slot_rings_lose_no_wake_up_and_keep_each_publisher_in_order() {
    let mut config = BusConfig {
        command_slots: 1,
        event_slots: 1,
        ..BusConfig::default()
    };
    config.broker.shards = 3;
    let bus = Bus::start(config).unwrap();
    let (publishers, per_publisher) = (4u32, 3_000u32);
    let subscribers: Vec<_> = (0..3).map(|_| bus.subscribe("storm.>").unwrap()).collect();
    let publishing: Vec<_> = (0..publishers)
        .map(|p| {
            let bus = bus.handle();
            std::thread::spawn(move || {
                let mut publisher = bus.publisher().unwrap();
                for i in 0..per_publisher {
                    let payload = [p.to_be_bytes(), i.to_be_bytes()].concat();
                    publisher.publish(&format!("storm.p{p}"), &payload).unwrap();
                }
            })
        })
        .collect();
    let receiving: Vec<_> = subscribers
        .into_iter()
        .map(|mut sub| {
            std::thread::spawn(move || {
                let mut next = vec![0u32; publishers as usize];
                for _ in 0..publishers * per_publisher {
                    let message = sub.recv_timeout(WAIT).expect("no lost wake-up");
                    let p = u32::from_be_bytes(message.payload()[..4].try_into().unwrap());
                    let i = u32::from_be_bytes(message.payload()[4..].try_into().unwrap());
                    assert_eq!(i, next[p as usize], "publisher {p} in order");
                    next[p as usize] += 1;
                }
            })
        })
        .collect();
    for thread in publishing.into_iter().chain(receiving) {
        thread.join().unwrap();
    }
}

/// A request dropped after its inbox's subscribe went out, before the shard answered it,
/// leaves the inbox known: the next request neither subscribes twice nor is refused.
#[test]
fn a_request_dropped_while_its_inbox_subscribes_leaves_later_requests_working() {
    use std::future::Future;
    let bus = bus(1);
    let mut service = bus.subscribe("svc.drop").unwrap();
    let responder_bus = bus.handle();
    let responder = std::thread::spawn(move || {
        let mut answers = responder_bus.publisher().unwrap();
        let request = service.recv_timeout(WAIT).unwrap();
        answers.reply(&request, b"pong").unwrap();
    });
    let mut client = bus.publisher().unwrap();
    {
        let mut first = std::pin::pin!(client.request_async("svc.none", b"?", WAIT));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(first.as_mut().poll(&mut cx).is_pending());
    }
    let answer = client.request("svc.drop", b"ping", WAIT).unwrap();
    assert_eq!(answer.payload(), b"pong");
    responder.join().unwrap();
}

/// The same through the blocking call: a zero timeout passes while the inbox subscribes.
#[test]
fn a_first_request_with_a_zero_timeout_leaves_later_requests_working() {
    let bus = bus(1);
    for _ in 0..5 {
        let mut client = bus.publisher().unwrap();
        assert!(matches!(
            client.request("svc.none", b"?", Duration::ZERO),
            Err(Error::Timeout)
        ));
        assert!(matches!(
            client.request("svc.none", b"?", Duration::from_millis(20)),
            Err(Error::Timeout)
        ));
    }
}

/// Same-length topics on the publisher's shard and on others, switched between at random,
/// with every kind of publish, refusals, async publishes dropped while pending on a two-slot
/// ring, replies, and topics made and deleted: each subscriber sees only its own topic, and
/// every publish that surely went, in order. (A shard reusing the wrong topic's place would
/// deliver to the wrong subscribers in release builds, which compare no names.)
#[test]
fn a_publisher_switching_topics_at_random_never_misroutes() {
    use corebus::protocol::topic::owner_shard;
    use std::future::Future;
    for (shards, seed) in [(1usize, 1u64), (2, 2), (2, 3), (4, 4), (4, 5)] {
        let mut config = BusConfig {
            command_slots: 2,
            ..BusConfig::default()
        };
        config.broker.shards = shards;
        let bus = Bus::start(config).unwrap();
        let names: Vec<String> = (0..40).map(|i| format!("fz.t{i:02}")).collect();
        let home = owner_shard(&names[0], shards);
        let here = names
            .iter()
            .filter(|n| owner_shard(n, shards) == home)
            .take(4);
        let elsewhere = names
            .iter()
            .filter(|n| owner_shard(n, shards) != home)
            .take(2);
        let topics: Vec<String> = here.chain(elsewhere).cloned().collect();
        let mut subs: Vec<_> = topics.iter().map(|t| bus.subscribe(t).unwrap()).collect();
        let mut got: Vec<Vec<String>> = vec![Vec::new(); topics.len()];
        let mut sure: Vec<Vec<String>> = vec![Vec::new(); topics.len()];
        let mut asker = bus.publisher().unwrap();
        let mut requests = bus.subscribe("fz.req").unwrap();
        let mut publisher = bus.publisher_for(&topics[0]).unwrap();
        let too_big = vec![0; BusConfig::default().broker.message_bytes_max + 1];
        let mut state = seed;
        let mut next = |below: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % below
        };
        let take = |sub: &mut corebus::bus::Subscription, into: &mut Vec<String>, topic: &str| {
            let message = sub.recv_timeout(WAIT).unwrap();
            assert_eq!(message.topic(), topic, "{shards} shards: misrouted");
            into.push(String::from_utf8(message.payload().to_vec()).unwrap());
        };
        let mut created = 0;
        for n in 0..1500 {
            let i = next(topics.len() as u64) as usize;
            let topic = topics[i].clone();
            let payload = format!("{topic}|{n}");
            let went = match next(10) {
                0 | 1 => publisher.publish(&topic, payload.as_bytes()).map(|_| true),
                2 => publisher
                    .publish_confirmed(&topic, payload.as_bytes())
                    .map(|_| true),
                3 => publisher
                    .publish_with_headers(&topic, &[("h", b"v")], payload.as_bytes())
                    .map(|_| true),
                4 => publisher
                    .publish_with_reply(&topic, payload.as_bytes(), "fz.back")
                    .map(|_| true),
                5 => {
                    let mut future =
                        std::pin::pin!(publisher.publish_async(&topic, payload.as_bytes()));
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    match future.as_mut().poll(&mut cx) {
                        std::task::Poll::Ready(result) => result.map(|_| true),
                        std::task::Poll::Pending => Ok(false),
                    }
                }
                6 => {
                    assert!(publisher.publish(&topic, &too_big).is_err());
                    assert!(publisher.publish("fz bad", b"x").is_err());
                    Ok(false)
                }
                7 => {
                    asker.publish_with_reply("fz.req", b"q", &topic).unwrap();
                    let request = requests.recv_timeout(WAIT).unwrap();
                    publisher.reply(&request, payload.as_bytes())
                }
                8 if next(2) == 0 && created < 40 => {
                    created += 1;
                    let made = format!("fz.c{created:02}");
                    publisher
                        .create_topic(&made, TopicOptions::default())
                        .unwrap();
                    Ok(false)
                }
                8 => {
                    publisher.delete_topic(&topic).unwrap();
                    loop {
                        match subs[i].recv_timeout(WAIT) {
                            Ok(message) => {
                                assert_eq!(message.topic(), topic, "{shards} shards: misrouted");
                                got[i].push(String::from_utf8(message.payload().to_vec()).unwrap())
                            }
                            Err(Error::Ended(_)) => break,
                            Err(error) => panic!("{error:?}"),
                        }
                    }
                    subs[i] = bus.subscribe(&topic).unwrap();
                    Ok(false)
                }
                _ => Ok(false),
            };
            if went.unwrap() {
                sure[i].push(payload);
            }
        }
        for (j, sub) in subs.iter_mut().enumerate() {
            // Every publish that surely went arrives, in order, among what arrives.
            for expected in &sure[j] {
                while !got[j].contains(expected) {
                    take(sub, &mut got[j], &topics[j]);
                }
            }
            let positions: Vec<usize> = sure[j]
                .iter()
                .map(|s| got[j].iter().position(|g| g == s).unwrap())
                .collect();
            assert!(
                positions.windows(2).all(|w| w[0] < w[1]),
                "{shards} shards: order"
            );
            for payload in &got[j] {
                assert!(payload.starts_with(&format!("{}|", topics[j])), "{payload}");
            }
        }
        assert!(publisher.take_async_errors().0.is_empty());
    }
}
