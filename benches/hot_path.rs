//! Criterion benchmarks of the broker's hot-path pieces, each without sockets:
//! frame decode/encode, topic validation and routing, pattern matching (cached and not),
//! a ring handoff, and the delivery-guarantee structures (replay ring, retry buffer). Run with
//! `cargo bench --bench hot_path`.

use std::sync::Arc;

use corebus::message::Message;
use corebus::protocol::native::{self, Frame};
use corebus::protocol::topic;
use corebus::shard::sublist::Sublist;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};

fn codec(c: &mut Criterion) {
    let payload = vec![7u8; 64];
    let mut publish = Vec::new();
    Frame::Publish {
        request_id: 9,
        quiet: true,
        topic: b"orders.eu.created",
        reply_to: None,
        headers: &[],
        payload: &payload,
    }
    .encode(&mut publish);
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode_publish_64b", |b| {
        b.iter(|| native::decode(black_box(&publish), 1 << 20).unwrap())
    });
    let mut out = Vec::with_capacity(256);
    group.bench_function("encode_publish_64b", |b| {
        b.iter(|| {
            out.clear();
            Frame::Publish {
                request_id: 9,
                quiet: true,
                topic: black_box(b"orders.eu.created"),
                reply_to: None,
                headers: &[],
                payload: &payload,
            }
            .encode(&mut out);
        })
    });
    let mut scratch = Vec::new();
    group.bench_function("build_shared_message_64b", |b| {
        b.iter(|| {
            Message::from_publish(&mut scratch, black_box("orders.eu.created"), None, &payload)
        })
    });
    group.finish();
}

fn topics(c: &mut Criterion) {
    let mut group = c.benchmark_group("topics");
    group.bench_function("parse_publish_topic", |b| {
        b.iter(|| topic::parse_publish_topic(black_box(b"orders.eu.created.v2")).unwrap())
    });
    group.bench_function("owner_shard", |b| {
        b.iter(|| topic::owner_shard(black_box("orders.eu.created.v2"), 4))
    });
    let mut patterns = Sublist::new(4096);
    for i in 0..1000 {
        patterns.insert(&format!("metrics.host{i}.*"), i);
    }
    patterns.insert("orders.*.created", 5000);
    patterns.insert("orders.>", 5001);
    let mut out = Vec::new();
    group.bench_function("match_1000_patterns_uncached", |b| {
        b.iter(|| {
            out.clear();
            patterns.match_into(black_box("orders.eu.created"), &mut out);
        })
    });
    group.bench_function("match_1000_patterns_cached", |b| {
        b.iter(|| patterns.match_cached(black_box("orders.eu.created")).len())
    });
    group.finish();
}

fn ring(c: &mut Criterion) {
    let poll = mio::Poll::new().unwrap();
    let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
    let sizes = corebus::mesh::ring::RingSizes {
        slots: 64,
        batch_max: 256,
        bytes_max: usize::MAX,
    };
    let (mut outbox, receiver) = corebus::mesh::ring::ring::<u64>(sizes, waker);
    let mut group = c.benchmark_group("ring");
    group.throughput(Throughput::Elements(256));
    group.bench_function("batch_of_256_handoff", |b| {
        b.iter_batched(
            || (),
            |()| {
                for i in 0..256 {
                    outbox.push(i);
                }
                outbox.flush();
                black_box(receiver.try_recv())
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn replay_and_retry(c: &mut Criterion) {
    use corebus::shard::replay::{ReplayLimits, ReplayRing};
    use corebus::shard::retry::{RetryBuffer, RetryPolicy};

    let message = Message::from_publish(&mut Vec::new(), "orders.created", None, &[0u8; 64]);
    let mut group = c.benchmark_group("delivery");
    group.throughput(Throughput::Elements(1));
    // A full ring: every push evicts the oldest, the steady state of a busy topic.
    let mut ring = ReplayRing::new(ReplayLimits {
        messages_max: 1024,
        bytes_max: 1 << 20,
        ttl_ns: 0,
    });
    let mut seq = 0u64;
    group.bench_function("replay_push_evict", |b| {
        b.iter(|| {
            seq += 1;
            ring.push(seq, seq, message.frame_len(), message.clone(), seq)
        })
    });
    let mut retry = RetryBuffer::new(RetryPolicy {
        in_flight_max: 1024,
        ack_wait_ns: 1_000_000,
        backoff_max_ns: 1_000_000_000,
        deliver_max: 5,
    });
    let mut next = 0u64;
    group.bench_function("retry_track_then_ack", |b| {
        b.iter(|| {
            next += 1;
            let _ = retry.track(next, message.clone(), next);
            retry.ack(next)
        })
    });
    let mut due = Vec::with_capacity(1024);
    group.bench_function("retry_redeliver_1024_due", |b| {
        b.iter_batched(
            || {
                let mut buffer = RetryBuffer::new(RetryPolicy {
                    in_flight_max: 1024,
                    ack_wait_ns: 1,
                    backoff_max_ns: 1,
                    deliver_max: 100,
                });
                for seq in 1..=1024 {
                    let _ = buffer.track(seq, message.clone(), 0);
                }
                buffer
            },
            |mut buffer| {
                due.clear();
                buffer.take_due(10, &mut due);
                black_box(due.len())
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, codec, topics, ring, replay_and_retry);
criterion_main!(benches);
