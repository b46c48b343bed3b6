//! Criterion benchmark of the embedded bus (`corebus::bus`) beside the in-process channels it
//! replaces, in one run: a publisher thread and a receiving thread, 64-byte payloads, each
//! message a fresh reference-counted allocation of the payload (as a corebus publish makes
//! one frame), delivered
//! - 1:1: one receiver; the floor is a bare `crossbeam-channel` hop (one bounded channel);
//! - fan-out to 16: sixteen receivers drained round-robin by one thread; the floor is the
//!   producer sending one clone of the shared payload on each of sixteen bounded channels.
//!
//! A receiver of sixteen that finds all of them empty yields its CPU before it looks again
//! (for every contender alike). `tokio::sync::broadcast` has no backpressure (a lagging receiver loses messages), so its
//! producer waits while the channel holds more than half its capacity, which keeps every
//! message. corebus runs one shard (the machine this was written on has two CPUs, and the
//! publisher, the shard and the receiver each want one); its subscribers are on the topic's
//! owner shard and its publisher too (`publisher_for`), so no hop between shards.
//!
//! Throughput is reported in delivered messages. Run with `cargo bench --bench embedded`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use corebus::bus::{Bus, BusConfig, Publisher, Subscription};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

const PAYLOAD: [u8; 64] = [7; 64];
const TOPIC: &str = "bench.embedded";
const FAN_OUT: usize = 16;
/// Slots of the baseline channels (the bus's rings use its defaults).
const CHANNEL_SLOTS: usize = 4096;

fn bus() -> Bus {
    let mut config = BusConfig::default();
    config.broker.shards = 1;
    Bus::start(config).expect("bus starts")
}

/// Publishes `messages` on a helper thread and receives every delivery on this one,
/// round-robin over `subscriptions`; returns the elapsed time.
fn corebus_run(
    publisher: &mut Publisher,
    subscriptions: &mut [Subscription],
    messages: u64,
) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for _ in 0..messages {
                publisher.publish(TOPIC, &PAYLOAD).expect("publish");
            }
        });
        let mut left = vec![messages; subscriptions.len()];
        let mut remaining = messages * subscriptions.len() as u64;
        let mut idle_since = remaining;
        while remaining > 0 {
            for (subscription, left) in subscriptions.iter_mut().zip(&mut left) {
                while *left > 0 {
                    match subscription.try_recv().expect("subscription open") {
                        Some(message) => {
                            debug_assert_eq!(message.payload().len(), PAYLOAD.len());
                            *left -= 1;
                            remaining -= 1;
                        }
                        None => break,
                    }
                }
            }
            if remaining > 0 && subscriptions.len() == 1 {
                // One receiver: block in it rather than spin (as a consumer would).
                let message = subscriptions[0].recv().expect("subscription open");
                debug_assert_eq!(message.payload().len(), PAYLOAD.len());
                left[0] -= 1;
                remaining -= 1;
            } else if remaining > 0 {
                yield_if_idle(&mut idle_since, remaining);
            }
        }
    });
    start.elapsed()
}

/// A receiver draining several queues round-robin gives its CPU away after a pass that
/// found nothing (`remaining` unchanged since the last look), the same way for every
/// contender: the producer (and the bus's shard) may need it.
fn yield_if_idle(idle_since: &mut u64, remaining: u64) {
    if *idle_since == remaining {
        std::thread::yield_now();
    }
    *idle_since = remaining;
}

fn crossbeam_run(receivers: usize, messages: u64) -> Duration {
    let (senders, channel_receivers): (Vec<_>, Vec<_>) = (0..receivers)
        .map(|_| crossbeam_channel::bounded::<Arc<[u8]>>(CHANNEL_SLOTS))
        .unzip();
    let start = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for _ in 0..messages {
                let payload: Arc<[u8]> = Arc::from(&PAYLOAD[..]);
                for sender in &senders {
                    sender.send(payload.clone()).expect("receiver alive");
                }
            }
        });
        let mut left = vec![messages; receivers];
        let mut remaining = messages * receivers as u64;
        let mut idle_since = remaining;
        while remaining > 0 {
            yield_if_idle(&mut idle_since, remaining);
            for (receiver, left) in channel_receivers.iter().zip(&mut left) {
                while *left > 0 {
                    let payload = if receivers == 1 {
                        receiver.recv().ok()
                    } else {
                        receiver.try_recv().ok()
                    };
                    match payload {
                        Some(payload) => {
                            debug_assert_eq!(payload.len(), PAYLOAD.len());
                            *left -= 1;
                            remaining -= 1;
                        }
                        None => break,
                    }
                }
            }
        }
    });
    start.elapsed()
}

fn tokio_broadcast_run(receivers: usize, messages: u64) -> Duration {
    let (sender, _) = tokio::sync::broadcast::channel::<Arc<[u8]>>(CHANNEL_SLOTS);
    let mut channel_receivers: Vec<_> = (0..receivers).map(|_| sender.subscribe()).collect();
    let start = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for _ in 0..messages {
                while sender.len() > CHANNEL_SLOTS / 2 {
                    std::hint::spin_loop();
                    std::thread::yield_now();
                }
                let payload: Arc<[u8]> = Arc::from(&PAYLOAD[..]);
                sender.send(payload).expect("receivers alive");
            }
        });
        let mut left = vec![messages; receivers];
        let mut remaining = messages * receivers as u64;
        let mut idle_since = remaining;
        while remaining > 0 {
            yield_if_idle(&mut idle_since, remaining);
            for (receiver, left) in channel_receivers.iter_mut().zip(&mut left) {
                while *left > 0 {
                    match receiver.try_recv() {
                        Ok(payload) => {
                            debug_assert_eq!(payload.len(), PAYLOAD.len());
                            *left -= 1;
                            remaining -= 1;
                        }
                        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(lost)) => {
                            panic!("a receiver lagged and lost {lost} messages")
                        }
                        Err(_) => break,
                    }
                }
            }
        }
    });
    start.elapsed()
}

fn compare(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, receivers: usize) {
    group.throughput(Throughput::Elements(receivers as u64));
    group.bench_function("crossbeam_channel", |b| {
        b.iter_custom(|messages| crossbeam_run(receivers, messages))
    });
    group.bench_function("tokio_broadcast", |b| {
        b.iter_custom(|messages| tokio_broadcast_run(receivers, messages))
    });
    let bus = bus();
    let mut subscriptions: Vec<Subscription> = (0..receivers)
        .map(|_| bus.subscribe(TOPIC).expect("subscribe"))
        .collect();
    let mut publisher = bus.publisher_for(TOPIC).expect("publisher");
    group.bench_function("corebus_bus", |b| {
        b.iter_custom(|messages| corebus_run(&mut publisher, &mut subscriptions, messages))
    });
    drop(subscriptions);
    drop(publisher);
    bus.shutdown().expect("bus stops");
}

fn embedded(c: &mut Criterion) {
    let mut one_to_one = c.benchmark_group("embedded_1_to_1");
    compare(&mut one_to_one, 1);
    one_to_one.finish();
    let mut fan_out = c.benchmark_group("embedded_fan_out_16");
    compare(&mut fan_out, FAN_OUT);
    fan_out.finish();
}

criterion_group!(benches, embedded);
criterion_main!(benches);
