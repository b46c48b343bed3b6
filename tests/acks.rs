//! At-least-once delivery over real sockets: durable consumers with acks, redelivery after
//! `ack_wait` and on nack, dead letters after `deliver_max`, resuming after a crash, and
//! consumer groups.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::*;
use corebus::client::{
    AckSettings, Client, Delivery, Sharing, Start, SubscribeOptions, Subscription,
};
use corebus::error::ErrorCode;

const WAIT: Duration = Duration::from_secs(10);

fn consumer(name: &str, acks: AckSettings) -> SubscribeOptions {
    SubscribeOptions {
        start: Start::All,
        sharing: Sharing::Consumer(name.into()),
        acks: Some(acks),
    }
}

fn group(name: &str, acks: AckSettings) -> SubscribeOptions {
    SubscribeOptions {
        start: Start::All,
        sharing: Sharing::Group(name.into()),
        acks: Some(acks),
    }
}

fn acks(in_flight_max: u32, ack_wait_ms: u32, deliver_max: u16) -> AckSettings {
    AckSettings {
        in_flight_max,
        ack_wait_ms,
        deliver_max,
    }
}

fn publish_many(client: &mut Client, topic: &str, count: u64) {
    for i in 0..count {
        client.publish(topic, &i.to_be_bytes()).unwrap();
    }
    client.publish_confirmed(topic, b"barrier").unwrap();
}

#[test]
fn every_message_is_delivered_once_when_acked_in_time() {
    let broker = start(config(4));
    let addr = broker.native_addr();
    let topic = topic_owned_by("acked", 0, 4);
    let mut worker = client_on_shard(addr, 2);
    let mut subscription = worker
        .subscribe_with(&topic, consumer("worker", acks(16, 5_000, 3)))
        .unwrap();
    let mut publisher = client_on_shard(addr, 1);
    publish_many(&mut publisher, &topic, 500);
    for expected in 1..=501u64 {
        let message = subscription.recv_timeout(WAIT).unwrap();
        assert_eq!((message.seq, message.delivery_count), (expected, 1));
        worker.ack(&subscription, message.seq).unwrap();
    }
    assert!(subscription
        .recv_timeout(Duration::from_millis(200))
        .is_err());
}

#[test]
fn a_consumer_that_crashes_gets_its_unacked_messages_again_after_reconnecting() {
    for (consumer_shard, owner_shard) in [(0, 0), (1, 3)] {
        let broker = start(config(4));
        let addr = broker.native_addr();
        let topic = topic_owned_by("crash", owner_shard, 4);
        let mut publisher = client(addr);
        publish_many(&mut publisher, &topic, 99); // seqs 1..=100

        let mut first = client_on_shard(addr, consumer_shard);
        let mut subscription = first
            .subscribe_with(&topic, consumer("crashy", acks(40, 60_000, 10)))
            .unwrap();
        let mut acked = Vec::new();
        for _ in 0..40 {
            let message = subscription.recv_timeout(WAIT).unwrap();
            if message.seq.is_multiple_of(2) {
                first.ack(&subscription, message.seq).unwrap();
                acked.push(message.seq);
            }
        }
        first.ping().unwrap(); // the acks have reached the broker
        drop(subscription);
        drop(first); // the connection vanishes without unsubscribing

        let mut second = client_on_shard(addr, (consumer_shard + 1) % 4);
        let mut resumed = eventually_subscribe(&mut second, &topic, "crashy");
        let mut seen = BTreeMap::new();
        while seen.len() < 100 - acked.len() {
            let message = resumed.recv_timeout(WAIT).unwrap();
            second.ack(&resumed, message.seq).unwrap();
            *seen.entry(message.seq).or_insert(0) += 1;
            if message.seq <= 40 {
                assert!(
                    message.delivery_count >= 2,
                    "seq {} redelivered",
                    message.seq
                );
            }
        }
        let expected: Vec<u64> = (1..=100).filter(|seq| !acked.contains(seq)).collect();
        assert_eq!(seen.keys().copied().collect::<Vec<_>>(), expected);
    }
}

/// The previous connection's detach may still be on its way to the owner.
fn eventually_subscribe(client: &mut Client, topic: &str, name: &str) -> Subscription {
    let deadline = Instant::now() + WAIT;
    loop {
        match client.subscribe_with(topic, consumer(name, acks(40, 60_000, 10))) {
            Ok(subscription) => return subscription,
            Err(e) if e.server_code() == Some(ErrorCode::ConsumerInUse) => {
                assert!(Instant::now() < deadline, "consumer never freed");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn a_durable_name_takes_one_subscription_at_a_time() {
    let broker = start(config(2));
    let addr = broker.native_addr();
    let mut a = client(addr);
    let _held = a
        .subscribe_with("jobs", consumer("solo", acks(4, 1000, 2)))
        .unwrap();
    let mut b = client(addr);
    let error = b
        .subscribe_with("jobs", consumer("solo", acks(4, 1000, 2)))
        .err()
        .unwrap();
    assert_eq!(error.server_code(), Some(ErrorCode::ConsumerInUse));
}

#[test]
fn nack_redelivers_at_once_and_ack_wait_redelivers_after_the_wait() {
    let broker = start(config(2));
    let addr = broker.native_addr();
    let mut worker = client(addr);
    let mut subscription = worker
        .subscribe_with("retry", consumer("w", acks(8, 300, 5)))
        .unwrap();
    let mut publisher = client(addr);
    publisher.publish_confirmed("retry", b"a").unwrap();

    let first = subscription.recv_timeout(WAIT).unwrap();
    assert_eq!(first.delivery_count, 1);
    worker.nack(&subscription, first.seq).unwrap();
    let started = Instant::now();
    let again = subscription.recv_timeout(WAIT).unwrap();
    assert_eq!((again.seq, again.delivery_count), (first.seq, 2));
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "nack is immediate"
    );

    // Not acked: back after ack_wait doubled (300 ms * 2^1).
    let timed_out = subscription.recv_timeout(WAIT).unwrap();
    assert_eq!((timed_out.seq, timed_out.delivery_count), (first.seq, 3));
    assert!(started.elapsed() >= Duration::from_millis(550));
    worker.ack(&subscription, timed_out.seq).unwrap();
    assert!(subscription
        .recv_timeout(Duration::from_millis(1500))
        .is_err());

    // The owner counted what happened (the counters behind /metrics).
    let counters = broker.shutdown().expect("the broker shuts down cleanly");
    assert_eq!(
        (counters.acks, counters.nacks, counters.redelivered),
        (1, 1, 2)
    );
}

#[test]
fn a_message_out_of_attempts_goes_to_the_dead_letter_topic_with_its_story() {
    let broker = start(config(4));
    let addr = broker.native_addr();
    let mut watcher = client(addr);
    let mut dead_letters = watcher.subscribe("$dlq.payments").unwrap();
    let mut worker = client(addr);
    let mut subscription = worker
        .subscribe_with("payments", consumer("flaky", acks(8, 100, 3)))
        .unwrap();
    let mut publisher = client(addr);
    let seq = publisher
        .publish_confirmed("payments", b"charge 42")
        .unwrap();
    for attempt in 1..=3u16 {
        let message = subscription.recv_timeout(WAIT).unwrap();
        assert_eq!((message.seq, message.delivery_count), (seq, attempt));
        worker.nack(&subscription, message.seq).unwrap();
    }
    let dead = dead_letters.recv_timeout(WAIT).unwrap();
    assert_eq!(dead.topic, "$dlq.payments");
    let payload = &dead.payload;
    assert_eq!(u64::from_be_bytes(payload[0..8].try_into().unwrap()), seq);
    assert_eq!(u16::from_be_bytes(payload[8..10].try_into().unwrap()), 3);
    let reason_len = payload[10] as usize;
    assert_eq!(&payload[11..11 + reason_len], b"max_deliver");
    assert_eq!(&payload[11 + reason_len..], b"charge 42");
    assert!(subscription
        .recv_timeout(Duration::from_millis(300))
        .is_err());
}

#[test]
fn acks_are_refused_on_subscriptions_that_take_none() {
    let broker = start(config(1));
    let mut worker = client(broker.native_addr());
    let plain = worker.subscribe("plain").unwrap();
    worker.ack(&plain, 1).unwrap();
    worker.ping().unwrap();
    let (errors, _) = worker.take_async_errors();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].code(), Some(ErrorCode::UnsupportedOption));
}

#[test]
fn a_group_splits_messages_and_a_dead_members_unacked_reach_the_others() {
    // The topic's replay ring is the group's backlog: keep all of this run in it.
    let mut config = config(4);
    config.replay_messages_max = 40_000;
    config.replay_bytes_max = 64 << 20;
    let broker = start(config);
    let addr = broker.native_addr();
    let topic = topic_owned_by("work", 3, 4);
    let settings = acks(64, 60_000, 10);
    let mut members: Vec<(Client, Subscription)> = (0..3u16)
        .map(|shard| {
            let mut member = client_on_shard(addr, shard);
            let subscription = member.subscribe_with(&topic, group("g", settings)).unwrap();
            (member, subscription)
        })
        .collect();
    let mut publisher = client(addr);
    const TOTAL: u64 = 30_000;
    let publishing = std::thread::spawn(move || {
        publish_many(&mut publisher, &topic, TOTAL - 1);
    });

    let mut owner_of_seq: HashMap<u64, usize> = HashMap::new();
    let mut per_member = [0u64; 3];
    let mut duplicates = 0;
    let mut alive = [true, true, true];
    let mut unacked_of_victim = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (owner_of_seq.len() as u64) < TOTAL {
        assert!(
            Instant::now() < deadline,
            "group stalled at {}",
            owner_of_seq.len()
        );
        for (index, (member, subscription)) in members.iter_mut().enumerate() {
            if !alive[index] {
                continue;
            }
            while let Some(message) = subscription.try_recv().unwrap() {
                if owner_of_seq.insert(message.seq, index).is_some() {
                    duplicates += 1;
                }
                per_member[index] += 1;
                if index == 2 && owner_of_seq.len() > 10_000 {
                    // Member 2 dies holding these unacked.
                    unacked_of_victim.push(message.seq);
                } else {
                    member.ack(subscription, message.seq).unwrap();
                }
            }
        }
        if alive[2] && unacked_of_victim.len() >= 20 {
            alive[2] = false;
            let (victim, subscription) = members.remove(2);
            drop(subscription);
            drop(victim);
            members.push((client(addr), client(addr).subscribe("unused").unwrap()));
            // The held messages must come back to the survivors.
            for seq in &unacked_of_victim {
                owner_of_seq.remove(seq);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    publishing.join().unwrap();
    assert!(!alive[2], "the victim got enough messages to hold");
    for seq in &unacked_of_victim {
        assert!(
            matches!(owner_of_seq.get(seq), Some(0 | 1)),
            "seq {seq} reached a survivor"
        );
    }
    // No message went to two members while all were alive and acking.
    assert_eq!(duplicates, 0, "duplicates");
    let share = TOTAL / 3;
    for (index, &count) in per_member.iter().enumerate().take(2) {
        assert!(
            count > share / 2,
            "member {index} got {count}, expected about {share}"
        );
    }
}

/// 100,000 messages over 4 topics; each topic's durable consumer crashes (drops its connection
/// holding unacked messages) at random points and comes back on a random shard. Every message
/// must arrive at least once; duplicates are counted and reported. Reproducible: the seed is
/// printed and can be set with `COREBUS_TEST_SEED`.
#[test]
fn at_least_once_survives_random_consumer_crashes() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("COREBUS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c0de);
    // Straight to the process's stderr, past the test harness's capture, so the seed is
    // printed on every run (as the README says), not only when the test fails.
    {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "at_least_once_survives_random_consumer_crashes: COREBUS_TEST_SEED={seed}"
        );
    }
    const TOPICS: u64 = 4;
    const PER_TOPIC: u64 = 25_000;
    let mut config = config(4);
    config.replay_messages_max = 30_000;
    config.replay_bytes_max = 64 << 20;
    let broker = start(config);
    let addr = broker.native_addr();
    let topics: Vec<String> = (0..TOPICS as usize)
        .map(|owner| topic_owned_by("crashes", owner, 4))
        .collect();

    let publisher_topics = topics.clone();
    let publisher = std::thread::spawn(move || {
        let mut publisher = client(addr);
        for i in 0..PER_TOPIC {
            for topic in &publisher_topics {
                publisher.publish(topic, &i.to_be_bytes()).unwrap();
            }
            if i % 1000 == 999 {
                for topic in &publisher_topics {
                    publisher.publish_confirmed(topic, b"barrier").unwrap();
                }
            }
        }
    });
    // Every topic ends up with PER_TOPIC messages plus one barrier per 1,000.
    let total_per_topic = PER_TOPIC + PER_TOPIC / 1000;

    let consumers: Vec<_> = topics
        .into_iter()
        .enumerate()
        .map(|(index, topic)| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ index as u64);
            std::thread::spawn(move || {
                let settings = acks(256, 2_000, 1000);
                let mut seen = vec![0u32; total_per_topic as usize + 1];
                let mut distinct = 0u64;
                let mut crashes = 0;
                let deadline = Instant::now() + Duration::from_secs(120);
                while distinct < total_per_topic {
                    assert!(
                        Instant::now() < deadline,
                        "{topic}: {distinct} distinct seen"
                    );
                    let mut worker = client_on_shard(addr, rng.gen_range(0..4));
                    let mut subscription = loop {
                        match worker.subscribe_with(&topic, consumer("resilient", settings)) {
                            Ok(subscription) => break subscription,
                            Err(e) if e.server_code() == Some(ErrorCode::ConsumerInUse) => {
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            Err(e) => panic!("{e}"),
                        }
                    };
                    let crash_after = rng.gen_range(500..8_000);
                    for received in 0.. {
                        let Ok(message) = subscription.recv_timeout(Duration::from_secs(5)) else {
                            break;
                        };
                        let count = &mut seen[message.seq as usize];
                        if *count == 0 {
                            distinct += 1;
                        }
                        *count += 1;
                        if received >= crash_after {
                            crashes += 1;
                            break; // crash: this message and any in flight stay unacked
                        }
                        worker.ack(&subscription, message.seq).unwrap();
                        if distinct == total_per_topic {
                            break;
                        }
                    }
                    drop(subscription);
                    drop(worker);
                }
                let duplicates: u64 = seen.iter().map(|&n| u64::from(n.saturating_sub(1))).sum();
                assert!(
                    seen[1..].iter().all(|&n| n >= 1),
                    "{topic}: a message was lost"
                );
                (topic, crashes, duplicates)
            })
        })
        .collect();
    publisher.join().unwrap();
    let mut duplicates_total = 0;
    for consumer in consumers {
        let (topic, crashes, duplicates) = consumer.join().unwrap();
        eprintln!("{topic}: {crashes} crashes, {duplicates} duplicates");
        duplicates_total += duplicates;
    }
    eprintln!("all topics: every message at least once, {duplicates_total} duplicates");
}

#[test]
fn a_pattern_group_splits_every_matching_topic_among_its_members() {
    let broker = start(config(4));
    let addr = broker.native_addr();
    let options = SubscribeOptions {
        sharing: Sharing::Group("split".into()),
        ..SubscribeOptions::default()
    };
    let mut members: Vec<(Client, Subscription)> = (0..3u16)
        .map(|shard| {
            let mut member = client_on_shard(addr, shard);
            let subscription = member.subscribe_with("fan.*", options.clone()).unwrap();
            (member, subscription)
        })
        .collect();
    let mut watcher = client(addr);
    let mut everything = watcher.subscribe("fan.*").unwrap();
    let topics: Vec<String> = (0..4)
        .map(|owner| topic_owned_by("fan", owner, 4))
        .collect();
    let mut publisher = client(addr);
    const PER_TOPIC: u64 = 1_000;
    for i in 0..PER_TOPIC {
        for topic in &topics {
            publisher.publish(topic, &i.to_be_bytes()).unwrap();
        }
    }
    for topic in &topics {
        publisher.publish_confirmed(topic, b"end").unwrap();
    }
    let total = (PER_TOPIC + 1) * topics.len() as u64;
    let mut got: HashMap<(String, u64), usize> = HashMap::new();
    let mut per_member = [0u64; 3];
    let deadline = Instant::now() + Duration::from_secs(30);
    while (got.len() as u64) < total {
        assert!(Instant::now() < deadline, "only {} of {total}", got.len());
        for (index, (_, subscription)) in members.iter_mut().enumerate() {
            while let Some(message) = subscription.try_recv().unwrap() {
                let previous = got.insert((message.topic.clone(), message.seq), index);
                assert!(
                    previous.is_none(),
                    "{} seq {} went to two members",
                    message.topic,
                    message.seq
                );
                per_member[index] += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for count in per_member {
        assert!(count > total / 6, "unbalanced: {per_member:?}");
    }
    // The group does not take messages from a plain subscription to the same pattern.
    for _ in 0..total {
        everything.recv_timeout(WAIT).unwrap();
    }
    // A member that leaves gets nothing more; the others get it all.
    let (mut leaver, left) = members.remove(0);
    leaver.unsubscribe(left).unwrap();
    for topic in &topics {
        publisher.publish_confirmed(topic, b"after").unwrap();
    }
    eprintln!(
        "first part took {:?}",
        Instant::now() + Duration::from_secs(30) - deadline
    );
    let deadline = Instant::now() + WAIT;
    let mut after = 0;
    while after < topics.len() {
        for (_, subscription) in members.iter_mut() {
            while let Some(message) = subscription.try_recv().unwrap() {
                assert_eq!(message.payload, b"after");
                after += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
        if Instant::now() >= deadline {
            let plain = (0..4)
                .filter(|_| everything.recv_timeout(Duration::from_millis(100)).is_ok())
                .count();
            panic!("after leaving: {after}; the plain subscriber got {plain}");
        }
    }
    // Joining the same pattern group with acks would change its guarantee: refused.
    let error = watcher
        .subscribe_with(
            "fan.*",
            SubscribeOptions {
                acks: Some(AckSettings::default()),
                ..options
            },
        )
        .err()
        .unwrap();
    assert_eq!(error.server_code(), Some(ErrorCode::ConsumerInUse));
}

#[test]
fn an_acked_pattern_group_redelivers_a_dead_members_messages_on_every_topic() {
    // Each topic's replay ring is the group's backlog there: keep the whole run in it.
    let mut config = config(4);
    config.replay_messages_max = 10_000;
    config.replay_bytes_max = 64 << 20;
    let broker = start(config);
    let addr = broker.native_addr();
    let options = SubscribeOptions {
        sharing: Sharing::Group("workers".into()),
        acks: Some(acks(64, 60_000, 10)),
        ..SubscribeOptions::default()
    };
    let mut members: Vec<(Client, Subscription)> = (0..3u16)
        .map(|shard| {
            let mut member = client_on_shard(addr, shard);
            let subscription = member.subscribe_with("jobs.*", options.clone()).unwrap();
            (member, subscription)
        })
        .collect();
    let topics: Vec<String> = (0..4)
        .map(|owner| topic_owned_by("jobs", owner, 4))
        .collect();
    const PER_TOPIC: u64 = 2_500;
    let publishing = {
        let topics = topics.clone();
        let mut publisher = client(addr);
        std::thread::spawn(move || {
            for i in 0..PER_TOPIC {
                for topic in &topics {
                    publisher.publish(topic, &i.to_be_bytes()).unwrap();
                }
            }
            publisher.ping().unwrap();
        })
    };
    let total = PER_TOPIC * topics.len() as u64;
    let mut holder: HashMap<(String, u64), usize> = HashMap::new();
    let mut per_member = [0u64; 3];
    // (topic, seq), the member that had it first, the member it came to again.
    let mut duplicates = Vec::new();
    // Ack deadlines ran on the wall clock, and a step of it past the 60 s ack wait
    // redelivered every unacked message to the member that had it (the same member twice in
    // the duplicates). The broker's clock no longer steps; should this fail again, it says
    // how far the wall clock moved against a steady one.
    let (wall_started, steady_started) = (std::time::SystemTime::now(), Instant::now());
    let mut victim_alive = true;
    let mut victim_acks_confirmed = false;
    let mut held_by_victim = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (holder.len() as u64) < total {
        assert!(
            Instant::now() < deadline,
            "stalled at {} of {total}",
            holder.len()
        );
        for (index, (member, subscription)) in members.iter_mut().enumerate() {
            if index == 2 && !victim_alive {
                continue;
            }
            while let Some(message) = subscription.try_recv().unwrap() {
                let key = (message.topic.clone(), message.seq);
                if let Some(first) = holder.insert(key.clone(), index) {
                    duplicates.push((key.clone(), first, index));
                }
                per_member[index] += 1;
                if index == 2 && holder.len() > 2_000 {
                    // Its acks so far are read by its shard before it starts holding: an ack
                    // still unread when a member vanishes may go with it, and its message then
                    // to a survivor as well, as at-least-once allows; the messages it never
                    // acked are the ones this test follows. (`.ci/run` once failed here with 73
                    // messages at two members, not reproduced in about 700 runs; a step of
                    // the wall clock reproduced it, see `wall_started`.) At most 64 are in
                    // flight to it, so the answer is never stuck behind a full subscription.
                    if !victim_acks_confirmed {
                        member.ping().unwrap();
                        victim_acks_confirmed = true;
                    }
                    held_by_victim.push(key);
                } else {
                    member.ack_message(subscription, &message).unwrap();
                }
            }
        }
        if victim_alive && held_by_victim.len() >= 40 {
            // The victim vanishes holding these unacked, spread over several topics.
            victim_alive = false;
            let (victim, subscription) = members.remove(2);
            drop(subscription);
            drop(victim);
            members.push((client(addr), client(addr).subscribe("unused").unwrap()));
            for key in &held_by_victim {
                holder.remove(key);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    publishing.join().unwrap();
    assert!(!victim_alive, "the victim got enough messages to hold");
    let topics_held: std::collections::HashSet<_> =
        held_by_victim.iter().map(|(topic, _)| topic).collect();
    assert!(topics_held.len() > 1, "held on {topics_held:?}");
    for key in &held_by_victim {
        assert!(
            matches!(holder.get(key), Some(0 | 1)),
            "{key:?} reached a survivor"
        );
    }
    assert!(
        duplicates.is_empty(),
        "{} messages came to two members while all were acked, the first few: {:?}; the wall \
         clock moved {:?} against a steady clock's {:?}",
        duplicates.len(),
        &duplicates[..duplicates.len().min(8)],
        wall_started.elapsed(),
        steady_started.elapsed(),
    );
    for (index, &count) in per_member.iter().enumerate().take(2) {
        assert!(count > total / 6, "member {index} got {count} of {total}");
    }
    for (member, _) in &mut members {
        let (errors, lost) = member.take_async_errors();
        assert!(errors.is_empty() && lost == 0, "ack errors: {errors:?}");
    }
}

#[test]
fn an_acked_pattern_group_nacks_redelivers_and_dead_letters_per_topic() {
    let broker = start(config(2));
    let addr = broker.native_addr();
    let mut worker = client(addr);
    let options = SubscribeOptions {
        sharing: Sharing::Group("w".into()),
        acks: Some(acks(16, 60_000, 2)),
        ..SubscribeOptions::default()
    };
    let mut jobs = worker.subscribe_with("tasks.*", options).unwrap();
    let mut watcher = client(addr);
    let mut dead = watcher.subscribe("$dlq.tasks.b").unwrap();
    let mut publisher = client(addr);
    publisher.publish_confirmed("tasks.a", b"fine").unwrap();
    publisher.publish_confirmed("tasks.b", b"poison").unwrap();
    let mut poison_deliveries = 0;
    while poison_deliveries < 2 {
        let message = jobs.recv_timeout(WAIT).unwrap();
        if message.topic == "tasks.a" {
            worker.ack_message(&jobs, &message).unwrap();
        } else {
            poison_deliveries += 1;
            assert_eq!(message.delivery_count, poison_deliveries);
            worker.nack_message(&jobs, &message).unwrap();
        }
    }
    let letter = dead.recv_timeout(WAIT).unwrap();
    assert!(letter.payload.ends_with(b"poison"), "{:?}", letter.payload);
    assert!(jobs.try_recv().unwrap().is_none(), "tasks.a was acked once");

    // An ack that does not name the topic cannot be placed, and one naming a topic outside
    // the pattern is refused.
    worker.ack(&jobs, 1).unwrap();
    let outside = Delivery {
        topic: "other.a".into(),
        seq: 1,
        timestamp_ns: 0,
        delivery_count: 1,
        reply_to: None,
        headers: Vec::new(),
        payload: Vec::new(),
    };
    worker.ack_message(&jobs, &outside).unwrap();
    worker.ping().unwrap();
    let (errors, _) = worker.take_async_errors();
    let codes: Vec<_> = errors.iter().map(|e| e.code()).collect();
    assert_eq!(
        codes,
        [Some(ErrorCode::BadTopic), Some(ErrorCode::BadTopic)],
        "{errors:?}"
    );
}

#[test]
fn consumer_limits_and_settings_are_enforced() {
    let mut config = config(2);
    config.consumer_in_flight_max = 100;
    config.consumers_max = 2;
    let broker = start(config);
    let mut subscriber = client(broker.native_addr());
    // A retry buffer above the cap is refused before anything is allocated.
    let error = subscriber
        .subscribe_with("jobs.a", consumer("huge", acks(u32::MAX, 1000, 3)))
        .err()
        .unwrap();
    assert_eq!(error.server_code(), Some(ErrorCode::UnsupportedOption));

    // A consumer made without acks cannot be joined with acks (or the other way round).
    let plain = SubscribeOptions {
        sharing: Sharing::Consumer("mixed".into()),
        ..SubscribeOptions::default()
    };
    let held = subscriber.subscribe_with("jobs.b", plain).unwrap();
    subscriber.unsubscribe(held).unwrap();
    let error = subscriber
        .subscribe_with("jobs.b", consumer("mixed", acks(10, 1000, 3)))
        .err()
        .unwrap();
    assert_eq!(error.server_code(), Some(ErrorCode::ConsumerInUse));

    // consumers_max = 2 over 2 shards: one per owner shard.
    let on_each_owner: Vec<String> = (0..2)
        .map(|owner| topic_owned_by("limit", owner, 2))
        .collect();
    let mut created = 0;
    let mut refused = 0;
    for topic in &on_each_owner {
        for name in ["c1", "c2"] {
            match subscriber.subscribe_with(topic, consumer(name, acks(10, 1000, 3))) {
                Ok(_) => created += 1,
                Err(e) => {
                    assert_eq!(e.server_code(), Some(ErrorCode::TooManyConsumers));
                    refused += 1;
                }
            }
        }
    }
    assert!(refused >= 2, "created {created}, refused {refused}");
}

#[test]
fn acks_on_a_subscription_still_waiting_for_its_answer_are_refused() {
    let broker = start(config(2));
    let addr = broker.native_addr();
    let topic = topic_owned_by("pending", 1, 2);
    let mut raw = RawConnection::connect(addr);
    // Connect until the raw connection is on shard 0, so the owner is across a ring.
    loop {
        raw.send(corebus::protocol::native::Frame::Hello {
            request_id: 1,
            version: 2,
            client_name: b"raw",
        });
        let data = raw.expect_ok(1);
        if u16::from_be_bytes([data[2], data[3]]) == 0 {
            break;
        }
        raw = RawConnection::connect(addr);
    }
    let mut options = Vec::new();
    consumer("c", acks(8, 1000, 3)).encode(&mut options);
    // Both frames in one write, so the broker reads them in the same loop turn, before the
    // owner's answer to the SUBSCRIBE can cross the ring back.
    let mut both = Vec::new();
    corebus::protocol::native::Frame::Subscribe {
        request_id: 2,
        sub_id: 1,
        topic: topic.as_bytes(),
        options: &options,
    }
    .encode(&mut both);
    corebus::protocol::native::Frame::Ack {
        request_id: 3,
        sub_id: 1,
        seq: 1,
        kind: corebus::protocol::native::AckKind::Nack,
        topic: b"",
    }
    .encode(&mut both);
    raw.send_bytes(&both);
    // The ACK is answered (refused) before the SUBSCRIBE's OK comes back from the owner.
    assert_eq!(
        raw.expect_err(),
        (3, ErrorCode::UnknownSubscription.as_u16())
    );
    raw.expect_ok(2);
}

#[test]
fn request_reply_inboxes_do_not_use_up_the_topic_limit() {
    let mut config = config(2);
    config.topics_max = 40;
    let broker = start(config);
    let addr = broker.native_addr();
    let mut responder = client(addr);
    let mut requests = responder.subscribe("svc.limit").unwrap();
    let service = std::thread::spawn(move || {
        for _ in 0..200 {
            let request = requests.recv_timeout(WAIT).unwrap();
            responder.reply(&request, b"ok").unwrap();
        }
    });
    let mut requester = client(addr);
    for _ in 0..200 {
        requester.request("svc.limit", b"?", WAIT).unwrap();
    }
    service.join().unwrap();
    let (errors, _) = requester.take_async_errors();
    assert!(errors.is_empty(), "{errors:?}");
}

fn acked_pattern_group(name: &str, acks: AckSettings) -> SubscribeOptions {
    SubscribeOptions {
        sharing: Sharing::Group(name.into()),
        acks: Some(acks),
        ..SubscribeOptions::default()
    }
}

fn drain_payloads(subscription: &mut Subscription, wait: Duration) -> Vec<String> {
    std::thread::sleep(wait);
    let mut got = Vec::new();
    while let Some(message) = subscription.try_recv().unwrap() {
        got.push(String::from_utf8(message.payload).unwrap());
    }
    got
}

#[test]
fn a_dead_letter_pattern_group_acks_its_letters_without_nesting_them() {
    let broker = start(config(2));
    let addr = broker.native_addr();
    let mut ops = client(addr);
    let mut letters = ops
        .subscribe_with("$dlq.>", acked_pattern_group("ops", acks(16, 200, 2)))
        .unwrap();
    let mut worker = client(addr);
    let mut jobs = worker
        .subscribe_with("jobs", consumer("w", acks(16, 60_000, 1)))
        .unwrap();
    client(addr).publish_confirmed("jobs", b"poison").unwrap();
    let job = jobs.recv_timeout(WAIT).unwrap();
    worker.nack_message(&jobs, &job).unwrap();
    let letter = letters.recv_timeout(WAIT).unwrap();
    assert_eq!(letter.topic, "$dlq.jobs");
    ops.ack_message(&letters, &letter).unwrap();
    ops.ping().unwrap();
    assert_eq!(ops.take_async_errors().0, []);
    // Acked, so neither redelivered after ack_wait nor dead-lettered again.
    assert!(letters.recv_timeout(Duration::from_millis(600)).is_err());
}

#[test]
fn an_acked_pattern_group_frees_idle_topic_consumers_and_refuses_what_it_cannot_take() {
    let mut config = config(1);
    config.consumers_max = 2;
    config.topic_idle_ttl_ms = 100;
    let broker = start(config);
    let addr = broker.native_addr();
    let mut worker = client(addr);
    let mut jobs = worker
        .subscribe_with("jobs.*", acked_pattern_group("w", acks(16, 60_000, 5)))
        .unwrap();
    let mut publisher = client(addr);
    for topic in ["jobs.a", "jobs.b"] {
        publisher.publish_confirmed(topic, b"x").unwrap();
        let message = jobs.recv_timeout(WAIT).unwrap();
        worker.ack_message(&jobs, &message).unwrap();
    }
    // Both consumers exist: a third topic cannot get one, and its publish says so instead of
    // being accepted without the group's guarantee...
    let refused = publisher.publish_confirmed("jobs.c", b"early").unwrap_err();
    assert_eq!(refused.server_code(), Some(ErrorCode::TooManyConsumers));
    // ...until the caught-up consumers of the idle topics are freed.
    assert!(eventually(Duration::from_secs(5), || publisher
        .publish_confirmed("jobs.c", b"c")
        .is_ok()));
    let message = jobs.recv_timeout(WAIT).unwrap();
    assert_eq!(
        (message.topic.as_str(), &message.payload[..]),
        ("jobs.c", &b"c"[..])
    );
}

#[test]
fn request_reply_inboxes_are_not_taken_by_a_catch_all_acked_group() {
    let mut config = config(1);
    config.consumers_max = 4;
    let broker = start(config);
    let addr = broker.native_addr();
    let mut audit = client(addr);
    let _everything = audit
        .subscribe_with(">", acked_pattern_group("audit", acks(1024, 60_000, 5)))
        .unwrap();
    let mut responder = client(addr);
    let mut service = responder.subscribe("svc").unwrap();
    let serving = std::thread::spawn(move || {
        for _ in 0..6 {
            let request = service.recv_timeout(WAIT).unwrap();
            responder.reply(&request, b"pong").unwrap();
        }
    });
    let mut requester = client(addr);
    for _ in 0..6 {
        requester.request("svc", b"ping", WAIT).unwrap();
    }
    serving.join().unwrap();
    // The group holds a consumer for `svc` only; durable consumers still fit.
    let durable = client(addr).subscribe_with("orders", consumer("d", acks(16, 60_000, 5)));
    assert!(durable.is_ok(), "{:?}", durable.err());
}

#[test]
fn a_pattern_groups_settings_are_checked_on_every_shard_even_in_a_race() {
    let broker = start(config(2));
    let addr = broker.native_addr();
    for round in 0..20 {
        let pattern = format!("race{round}.*");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let joins: Vec<_> = [(0u16, false), (1, true)]
            .into_iter()
            .map(|(shard, acked)| {
                let (barrier, pattern) = (barrier.clone(), pattern.clone());
                let mut member = client_on_shard(addr, shard);
                std::thread::spawn(move || {
                    let options = SubscribeOptions {
                        sharing: Sharing::Group("g".into()),
                        acks: acked.then(|| acks(16, 60_000, 5)),
                        ..SubscribeOptions::default()
                    };
                    barrier.wait();
                    let joined = member.subscribe_with(&pattern, options).map(drop);
                    (joined.map_err(|e| e.server_code()), member)
                })
            })
            .collect();
        let results: Vec<_> = joins.into_iter().map(|j| j.join().unwrap()).collect();
        let joined = results.iter().filter(|(r, _)| r.is_ok()).count();
        assert!(
            joined <= 1,
            "round {round}: both joined with different settings"
        );
        for (result, _) in &results {
            if let Err(code) = result {
                assert_eq!(*code, Some(ErrorCode::ConsumerInUse));
            }
        }
    }
}

#[test]
fn an_acked_pattern_group_is_durable_and_keeps_its_settings() {
    let broker = start(config(2));
    let addr = broker.native_addr();
    let mut publisher = client(addr);
    let settings = acks(16, 60_000, 5);
    let mut first = client(addr);
    let subscription = first
        .subscribe_with("re.*", acked_pattern_group("g", settings))
        .unwrap();
    publisher.publish_confirmed("re.a", b"0").unwrap();
    let mut subscription = subscription;
    let message = subscription.recv_timeout(WAIT).unwrap();
    first.ack_message(&subscription, &message).unwrap();
    first.unsubscribe(subscription).unwrap();
    for i in 1..=3 {
        publisher
            .publish_confirmed("re.a", i.to_string().as_bytes())
            .unwrap();
    }
    // Coming back with other settings would change what the kept consumer promised.
    let mut second = client(addr);
    let refused = second
        .subscribe_with("re.*", acked_pattern_group("g", acks(1, 60_000, 5)))
        .err()
        .unwrap();
    assert_eq!(refused.server_code(), Some(ErrorCode::ConsumerInUse));
    // With the same settings the group resumes where it stopped, like an exact group.
    let mut resumed = second
        .subscribe_with("re.*", acked_pattern_group("g", settings))
        .unwrap();
    publisher.publish_confirmed("re.a", b"4").unwrap();
    let got = drain_payloads(&mut resumed, Duration::from_millis(300));
    assert_eq!(got, ["1", "2", "3", "4"]);
}

#[test]
fn a_member_joining_later_gets_its_share_of_existing_topic_consumers() {
    let broker = start(config(3));
    let addr = broker.native_addr();
    let topics: Vec<String> = (0..3)
        .map(|owner| topic_owned_by("late", owner, 3))
        .collect();
    let settings = acks(1024, 60_000, 5);
    let mut first = client_on_shard(addr, 0);
    let mut early = first
        .subscribe_with("late.*", acked_pattern_group("g", settings))
        .unwrap();
    let mut publisher = client(addr);
    for topic in &topics {
        publisher.publish_confirmed(topic, b"early").unwrap();
    }
    for _ in 0..3 {
        let message = early.recv_timeout(WAIT).unwrap();
        first.ack_message(&early, &message).unwrap();
    }
    let mut second = client_on_shard(addr, 1);
    let mut late = second
        .subscribe_with("late.*", acked_pattern_group("g", settings))
        .unwrap();
    for _ in 0..10 {
        for topic in &topics {
            publisher.publish_confirmed(topic, b"late").unwrap();
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut topics_seen = std::collections::HashSet::new();
    while let Some(message) = late.try_recv().unwrap() {
        topics_seen.insert(message.topic);
    }
    assert_eq!(topics_seen.len(), 3, "{topics_seen:?}");
}

#[test]
fn a_pattern_groups_gap_notice_names_its_topic() {
    let mut config = config(1);
    config.replay_messages_max = 2;
    let broker = start(config);
    let addr = broker.native_addr();
    let mut worker = client(addr);
    let mut jobs = worker
        .subscribe_with("gap.*", acked_pattern_group("g", acks(1, 60_000, 5)))
        .unwrap();
    let mut publisher = client(addr);
    // One in flight at a time: gap.a runs ahead of the group, past its 2-message ring.
    for i in 0..5 {
        publisher
            .publish_confirmed("gap.a", i.to_string().as_bytes())
            .unwrap();
    }
    publisher.publish_confirmed("gap.b", b"b").unwrap();
    let mut got = Vec::new();
    while got.len() < 4 {
        let message = jobs.recv_timeout(WAIT).unwrap();
        worker.ack_message(&jobs, &message).unwrap();
        got.push((message.topic.clone(), message.seq));
    }
    assert_eq!(jobs.missed(), 2);
    let gap = jobs.last_gap().expect("a gap notice");
    assert_eq!(
        (gap.topic.as_str(), gap.missed, gap.resume_seq),
        ("gap.a", 2, 4)
    );
    assert!(got.contains(&("gap.b".to_owned(), 1)), "{got:?}");
    assert!(got.contains(&("gap.a".to_owned(), 4)), "{got:?}");
}

/// Regression: a group whose only member died kept that member's unacked messages until their
/// ack wait ran out (30 s by default), even after a new member joined.
#[test]
fn a_member_joining_a_group_gets_what_a_dead_member_left_at_once() {
    let broker = start(config(2));
    let addr = broker.native_addr();
    let topic = topic_owned_by("orphans", 1, 2);
    let settings = acks(16, 60_000, 5);
    let mut first = client_on_shard(addr, 0);
    let mut doomed = first
        .subscribe_with(&topic, group("solo", settings))
        .unwrap();
    let mut publisher = client(addr);
    for i in 0..3u8 {
        publisher.publish_confirmed(&topic, &[i]).unwrap();
    }
    for seq in 1..=3 {
        assert_eq!(doomed.recv_timeout(WAIT).unwrap().seq, seq);
    }
    drop(doomed);
    drop(first); // dies holding all three unacked
    let mut second = client_on_shard(addr, 1);
    let started = Instant::now();
    let mut joined = second
        .subscribe_with(&topic, group("solo", settings))
        .unwrap();
    for seq in 1..=3 {
        let message = joined.recv_timeout(WAIT).unwrap();
        assert_eq!((message.seq, message.delivery_count), (seq, 2));
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "redelivered at the join, not after the 60 s ack wait"
    );
}
