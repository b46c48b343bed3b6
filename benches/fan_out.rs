//! Criterion benchmark of the local fan-out path: the cost of delivering one published,
//! owner-sequenced message to K subscribers on the same shard (K = 1, 16, 256), without
//! sockets. Run with `cargo bench --bench fan_out`.
//!
//! Each iteration walks the real code a delivery takes on the subscribers' shard:
//! [`LocalSubscriptions::matching`] (the exact-topic lookup), [`Outbound::offer`] per match (the
//! slow-consumer check, and queueing the shared frame: a reference-count increment, no copy),
//! then [`Outbound::write_to`] on each connection into a sink, which stages the frame into the
//! write buffer with its subscription id patched in (the one copy before the kernel's) and
//! hands it to the "socket". The thin glue between them (finding the connection in the slab,
//! the dirty list) is the shard's and is not included; neither is the socket write itself,
//! whose cost `tools/compare` shows.
//!
//! Throughput is reported in deliveries (K per iteration), so the per-delivery cost of the
//! three sizes can be compared directly.

use std::io;

use corebus::config::SlowConsumerPolicy;
use corebus::ids::{ConnectionId, Subscriber};
use corebus::message::Message;
use corebus::shard::connection::{EnqueueOutcome, Outbound, WRITE_CHUNK_BYTES};
use corebus::shard::topics::LocalSubscriptions;
use corebus::shard::wire::Wire;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// The broker's default `--outbound-bytes-max`, so the policy check takes its usual branch.
const OUTBOUND_BYTES_MAX: usize = 8 << 20;
const TOPIC: &str = "orders.eu.created";
/// The wire the outbox words its notices for (no notices are queued here).
const NATIVE: Wire = Wire::Native { version: 4 };

fn local_fan_out(c: &mut Criterion) {
    let mut message = Message::from_publish(&mut Vec::new(), TOPIC, None, &[7u8; 64]);
    message.stamp(1, 1_700_000_000_000_000_000);
    let mut group = c.benchmark_group("fan_out");
    for subscribers in [1usize, 16, 256] {
        let mut local = LocalSubscriptions::new(4096);
        // Another topic on the same shard, so the lookup is not in a one-entry map.
        local.add_exact(
            "orders.us.created",
            subscriber(subscribers as u32, u32::MAX),
        );
        for index in 0..subscribers {
            local.add_exact(TOPIC, subscriber(index as u32, 1));
        }
        let mut connections: Vec<Outbound> = (0..subscribers)
            .map(|_| Outbound::new(WRITE_CHUNK_BYTES))
            .collect();
        let mut matches = Vec::with_capacity(subscribers);
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(BenchmarkId::new("exact_64b", subscribers), |b| {
            b.iter(|| {
                matches.clear();
                local.matching(black_box(TOPIC), &mut matches);
                for subscriber in &matches {
                    let out = &mut connections[subscriber.connection.index as usize];
                    let outcome = out.offer(
                        subscriber.sub_id,
                        &message,
                        OUTBOUND_BYTES_MAX,
                        SlowConsumerPolicy::Disconnect,
                        |_| {},
                    );
                    debug_assert_eq!(outcome, EnqueueOutcome::Queued);
                }
                for out in &mut connections {
                    black_box(out.write_to(&mut io::sink(), &NATIVE));
                }
            })
        });
    }
    group.finish();
}

fn subscriber(index: u32, sub_id: u32) -> Subscriber {
    Subscriber {
        connection: ConnectionId {
            index,
            generation: 0,
        },
        sub_id,
    }
}

criterion_group!(benches, local_fan_out);
criterion_main!(benches);
