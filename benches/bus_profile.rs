//! A fixed amount of work through the embedded bus, for `valgrind --tool=callgrind`: the
//! shapes of `benches/embedded.rs` (one shard, the publisher on the topic's owner shard, 64-byte
//! payloads, 1:1 or fan-out to N drained round-robin by one thread), without criterion's
//! sampling around them, so that instruction counts divide by the messages sent.
//!
//! `cargo bench --profile ci --bench bus_profile --no-run` (it prints the binary's path,
//! `target/ci/deps/bus_profile-HASH`), then `valgrind --tool=callgrind THAT_PATH 16 100000`
//! (receivers, messages).
//! `bus_profile bare 1 100000` runs the floor instead: the same messages over one bounded
//! `crossbeam-channel` channel (1:1 only: a receiver of several that polls would count its
//! idle passes, which under callgrind's one-thread-at-a-time scheduling depend on the
//! scheduler, not on the channel).

use corebus::bus::{Bus, BusConfig};

const PAYLOAD: [u8; 64] = [7; 64];
const TOPIC: &str = "bench.embedded";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench` (and a filter may follow flags): only bare words count.
    let mut args = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with("--"))
        .peekable();
    let bare = args.next_if(|arg| arg == "bare").is_some();
    let receivers: usize = args.next().as_deref().unwrap_or("1").parse()?;
    let messages: u64 = args.next().as_deref().unwrap_or("100000").parse()?;
    if receivers == 0 {
        return Err("at least one receiver".into());
    }
    if bare {
        if receivers != 1 {
            return Err("the bare hop is measured 1:1 only".into());
        }
        return bare_hop(messages);
    }
    let mut config = BusConfig::default();
    config.broker.shards = 1;
    let bus = Bus::start(config)?;
    let mut subscriptions = (0..receivers)
        .map(|_| bus.subscribe(TOPIC))
        .collect::<Result<Vec<_>, _>>()?;
    let mut publisher = bus.publisher_for(TOPIC)?;
    let started = std::time::Instant::now();
    std::thread::scope(|scope| -> Result<(), corebus::bus::Error> {
        let sending = scope.spawn(move || -> Result<(), corebus::bus::Error> {
            for _ in 0..messages {
                publisher.publish(TOPIC, &PAYLOAD)?;
            }
            Ok(())
        });
        let mut left = vec![messages; receivers];
        let mut remaining = messages * receivers as u64;
        while remaining > 0 {
            let before = remaining;
            for (subscription, left) in subscriptions.iter_mut().zip(&mut left) {
                while *left > 0 {
                    match subscription.try_recv()? {
                        Some(_) => {
                            *left -= 1;
                            remaining -= 1;
                        }
                        None => break,
                    }
                }
            }
            if remaining > 0 && receivers == 1 {
                subscriptions[0].recv()?;
                left[0] -= 1;
                remaining -= 1;
            } else if remaining == before {
                std::thread::yield_now();
            }
        }
        sending.join().expect("the publisher thread")
    })?;
    let elapsed = started.elapsed();
    eprintln!(
        "{} deliveries in {:.3} s: {:.0} ns each",
        messages * receivers as u64,
        elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / (messages * receivers as u64) as f64
    );
    drop(subscriptions);
    bus.shutdown()?;
    Ok(())
}

/// The floor: each message one fresh reference-counted payload, sent over one bounded channel
/// (as `benches/embedded.rs` sizes it) and received by a blocking `recv`.
fn bare_hop(messages: u64) -> Result<(), Box<dyn std::error::Error>> {
    let (sender, receiver) = crossbeam_channel::bounded::<std::sync::Arc<[u8]>>(4096);
    let started = std::time::Instant::now();
    std::thread::scope(
        |scope| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            scope.spawn(move || {
                for _ in 0..messages {
                    let payload: std::sync::Arc<[u8]> = std::sync::Arc::from(&PAYLOAD[..]);
                    if sender.send(payload).is_err() {
                        return;
                    }
                }
            });
            for _ in 0..messages {
                let payload = receiver.recv()?;
                std::hint::black_box(payload);
            }
            Ok(())
        },
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "{messages} messages over a bare channel in {:.3} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
