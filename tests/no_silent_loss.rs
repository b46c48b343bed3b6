//! The crash checker's shape inside the suite: durable consumers and group members behind a
//! small replay ring are killed abruptly (their connection dropped with whatever it had not
//! read) at random points, and afterwards every confirmed sequence number must have been
//! either read by the consumer or covered by a GAP notice it read. A loss without a notice is
//! the one outcome the broker must never produce.
//!
//! Bounded: a fixed number of kill points and a deadline. Reproducible: the seed is printed
//! and can be set with `COREBUS_TEST_SEED`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use corebus::client::{AckSettings, Client, Sharing, Start, SubscribeOptions, Subscription};
use corebus::error::ErrorCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MESSAGES: u64 = 20_000;
/// Small, so consumers that keep dying fall behind it and meet gaps.
const REPLAY_MESSAGES: usize = 64;
const KILLS_PER_CONSUMER: u32 = 600;
const DEADLINE: Duration = Duration::from_secs(60);

/// No dead letters: a message that left for `$dlq` would be neither read nor announced here.
const ACKS: AckSettings = AckSettings {
    in_flight_max: 32,
    ack_wait_ms: 40,
    deliver_max: u16::MAX,
};

/// What one consumer (a durable consumer, or a whole group) has learned of the topic.
struct Ledger {
    read: Vec<bool>,
    announced: Vec<bool>,
    gaps: u64,
}

impl Ledger {
    fn new() -> Self {
        Ledger {
            read: vec![false; MESSAGES as usize + 1],
            announced: vec![false; MESSAGES as usize + 1],
            gaps: 0,
        }
    }

    fn accounted(&self, seq: u64) -> bool {
        self.read[seq as usize] || self.announced[seq as usize]
    }

    fn all_accounted(&self) -> bool {
        (1..=MESSAGES).all(|seq| self.accounted(seq))
    }

    fn silently_lost(&self) -> Vec<u64> {
        (1..=MESSAGES).filter(|&seq| !self.accounted(seq)).collect()
    }

    /// Reads what is there (up to `count`), noting GAPs; acks each message with probability
    /// `ack_chance`. Stops early when nothing comes for a moment.
    fn read_some(
        &mut self,
        (client, subscription): (&mut Client, &mut Subscription),
        count: usize,
        ack_chance: f64,
        rng: &mut StdRng,
    ) {
        for _ in 0..count {
            let missed_before = subscription.missed();
            let message = match subscription.recv_timeout(Duration::from_millis(3)) {
                Ok(message) => message,
                Err(corebus::client::Error::Timeout) => return,
                Err(e) => panic!("subscription failed: {e}"),
            };
            let seq = message.seq;
            assert!(
                (1..=MESSAGES).contains(&seq),
                "seq {seq} was never published"
            );
            if subscription.missed() > missed_before {
                // A GAP is always directly followed by its `resume_seq`'s MSG.
                let gap = subscription.last_gap().expect("a gap was counted").clone();
                assert_eq!(gap.resume_seq, seq, "the GAP travels with resume_seq");
                for missed in gap.resume_seq - gap.missed..gap.resume_seq {
                    self.announced[missed as usize] = true;
                }
                self.gaps += 1;
            }
            self.read[seq as usize] = true;
            if rng.gen_bool(ack_chance) {
                client.ack(subscription, seq).expect("ack");
            }
        }
    }
}

fn options(sharing: Sharing) -> SubscribeOptions {
    SubscribeOptions {
        start: Start::New,
        sharing,
        acks: Some(ACKS),
    }
}

/// A killed durable consumer's detach may still be on its way to the owner.
fn attach(addr: std::net::SocketAddr, topic: &str, sharing: &Sharing) -> (Client, Subscription) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut client = client(addr);
        match client.subscribe_with(topic, options(sharing.clone())) {
            Ok(subscription) => return (client, subscription),
            Err(e) if e.server_code() == Some(ErrorCode::ConsumerInUse) => {
                assert!(Instant::now() < deadline, "the consumer was never freed");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("subscribe: {e}"),
        }
    }
}

/// Kills and revives one durable consumer until it has died `KILLS_PER_CONSUMER` times and
/// the publisher is done, then drains.
fn durable_consumer(
    addr: std::net::SocketAddr,
    topic: String,
    seed: u64,
    published: Arc<AtomicBool>,
) -> (Ledger, u32) {
    let mut rng = StdRng::seed_from_u64(seed);
    let sharing = Sharing::Consumer("crashy".into());
    let mut ledger = Ledger::new();
    let mut kills = 0;
    let started = Instant::now();
    while kills < KILLS_PER_CONSUMER || !published.load(Ordering::Acquire) {
        assert!(
            started.elapsed() < DEADLINE,
            "{kills} kills before the deadline"
        );
        let (mut client, mut subscription) = attach(addr, &topic, &sharing);
        let count = rng.gen_range(0..40);
        ledger.read_some((&mut client, &mut subscription), count, 0.9, &mut rng);
        if rng.gen_bool(0.3) {
            // A pause while dead, so the ring moves on without it.
            std::thread::sleep(Duration::from_micros(rng.gen_range(0..2_000)));
        }
        drop(subscription);
        drop(client); // killed: whatever it had not read is lost with the connection
        kills += 1;
    }
    drain(addr, &topic, &sharing, &mut ledger);
    (ledger, kills)
}

/// Three members of one group, each killed and revived at random; the group's ledger is
/// shared, since its members split the messages.
fn group_members(
    addr: std::net::SocketAddr,
    topic: String,
    seed: u64,
    published: Arc<AtomicBool>,
) -> (Ledger, u32) {
    let mut rng = StdRng::seed_from_u64(seed);
    let sharing = Sharing::Group("crew".into());
    let mut ledger = Ledger::new();
    let mut members: Vec<Option<(Client, Subscription)>> = vec![None, None, None];
    let mut kills = 0;
    let started = Instant::now();
    while kills < KILLS_PER_CONSUMER || !published.load(Ordering::Acquire) {
        assert!(
            started.elapsed() < DEADLINE,
            "{kills} kills before the deadline"
        );
        let member = &mut members[rng.gen_range(0..3)];
        let (client, subscription) = member.get_or_insert_with(|| attach(addr, &topic, &sharing));
        let count = rng.gen_range(0..30);
        ledger.read_some((client, subscription), count, 0.9, &mut rng);
        if rng.gen_bool(0.5) {
            *member = None; // killed
            kills += 1;
        }
    }
    members.clear();
    drain(addr, &topic, &sharing, &mut ledger);
    (ledger, kills)
}

/// A last, patient subscriber that acks everything until every message is accounted for or
/// nothing more comes.
fn drain(addr: std::net::SocketAddr, topic: &str, sharing: &Sharing, ledger: &mut Ledger) {
    let (mut client, mut subscription) = attach(addr, topic, sharing);
    let mut rng = StdRng::seed_from_u64(0);
    let mut quiet_since = Instant::now();
    while !ledger.all_accounted() && quiet_since.elapsed() < Duration::from_secs(3) {
        let before = ledger.read.iter().filter(|&&r| r).count();
        ledger.read_some((&mut client, &mut subscription), 1_000, 1.0, &mut rng);
        if ledger.read.iter().filter(|&&r| r).count() > before {
            quiet_since = Instant::now();
        }
    }
}

#[test]
fn no_confirmed_message_is_lost_without_a_gap_the_consumer_read() {
    let seed: u64 = std::env::var("COREBUS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0a11_5ee5);
    eprintln!("COREBUS_TEST_SEED={seed}");
    let mut config = config(2);
    config.replay_messages_max = REPLAY_MESSAGES;
    let broker = start(config);
    let addr = broker.native_addr();
    // Owned by the other shard from some of the consumers, so deliveries cross a ring too.
    let topic = topic_owned_by("crash", 1, 2);

    // Both consumers exist before the first message, so every message is theirs.
    for sharing in [
        Sharing::Consumer("crashy".into()),
        Sharing::Group("crew".into()),
    ] {
        let (client, subscription) = attach(addr, &topic, &sharing);
        drop(subscription);
        drop(client);
    }

    let published = Arc::new(AtomicBool::new(false));
    let durable = {
        let (topic, published) = (topic.clone(), published.clone());
        std::thread::spawn(move || durable_consumer(addr, topic, seed, published))
    };
    let group = {
        let (topic, published) = (topic.clone(), published.clone());
        std::thread::spawn(move || group_members(addr, topic, seed ^ 1, published))
    };

    let mut publisher = client(addr);
    let mut rng = StdRng::seed_from_u64(seed ^ 2);
    let mut seq = 0;
    while seq < MESSAGES {
        // One less than what is left: the confirm is a message too.
        let burst = rng.gen_range(1..100).min(MESSAGES - seq - 1);
        for _ in 0..burst {
            publisher.publish(&topic, &seq.to_be_bytes()).unwrap();
            seq += 1;
        }
        // Confirmed: the broker has sequenced everything sent so far.
        assert_eq!(publisher.publish_confirmed(&topic, b"").unwrap(), seq + 1);
        seq += 1;
        std::thread::sleep(Duration::from_micros(rng.gen_range(0..8_000)));
    }
    let (errors, lost) = publisher.take_async_errors();
    assert!(
        errors.is_empty() && lost == 0,
        "publish refused: {errors:?}"
    );
    published.store(true, Ordering::Release);

    for (name, consumer) in [("durable consumer", durable), ("group", group)] {
        let (ledger, kills) = consumer.join().unwrap();
        let lost = ledger.silently_lost();
        let read = ledger.read.iter().filter(|&&r| r).count();
        eprintln!(
            "{name}: {kills} kills, {read} read, {} announced by {} gaps, {} silently lost",
            ledger.announced.iter().filter(|&&a| a).count(),
            ledger.gaps,
            lost.len()
        );
        assert!(kills >= KILLS_PER_CONSUMER);
        assert!(
            lost.is_empty(),
            "{name}: {} confirmed messages neither read nor announced, first {:?} \
             (COREBUS_TEST_SEED={seed})",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
    }
}
