//! `corebus bench` as a library call against in-process brokers: a healthy run accounts for
//! every message exactly, and a run against a broker that drops for slow consumers reports
//! the loss and fails its verdict.

mod common;

use clap::Parser;
use common::*;
use corebus::bench::{self, BenchResult, RunArgs};
use corebus::cli::{Cli, Command};
use corebus::config::SlowConsumerPolicy;
use corebus::protocol::native::FRAME_OVERHEAD_MAX;

/// The run flags as the CLI would parse them (so the wiring is tested too).
fn run_args(target: String, flags: &[&str]) -> RunArgs {
    let mut argv = vec!["corebus", "bench", "--target", &target, "--quiet"];
    argv.extend_from_slice(flags);
    match Cli::try_parse_from(argv).expect("valid flags").command {
        Command::Bench(args) => args.run,
        other => panic!("bench expected, got {other:?}"),
    }
}

fn assert_exact(r: &BenchResult) {
    assert_eq!(r.lost, 0, "{r:#?}");
    assert_eq!(r.duplicated, 0);
    assert_eq!(r.out_of_order, 0);
    assert_eq!(r.misrouted, 0);
    assert_eq!(r.corrupt, 0);
    assert_eq!(r.errors, 0, "{:?}", r.error_messages);
    assert_eq!(r.delivered, r.expected_deliveries);
    assert_eq!(r.received, r.delivered);
    assert!(bench::verdict(r, false).is_ok());
}

#[test]
fn a_healthy_run_delivers_everything_once_and_in_order() {
    let broker = start(config(2));
    let target = format!("corebus://{}", broker.native_addr());
    // 3 publishers over 2 topics (0, 1, 0), 4 subscribers spread round-robin: each topic has
    // exactly 2 subscribers, so every published message is expected twice.
    let args = run_args(
        target,
        &[
            "--publishers",
            "3",
            "--subscribers",
            "4",
            "--topics",
            "2",
            "--size",
            "64",
            "--duration",
            "1",
            "--warmup",
            "0.3",
            "--pipeline",
            "64",
            "--threads",
            "2",
        ],
    );
    let r = bench::execute(&args).expect("the run completes");
    assert!(r.published > 0);
    assert_eq!(r.expected_deliveries, r.published * 2);
    assert_exact(&r);
    assert!(r.latency_us.count > 0);
    assert!(r.published_window > 0 && r.delivered_window > 0);
    assert!(r.latency_us.p50 > 0.0 && r.latency_us.p50 <= r.latency_us.max);
    assert_eq!(r.percentiles.last().map(|p| p.percentile), Some(100.0));
}

#[test]
fn an_open_loop_run_is_exact_too() {
    let broker = start(config(1));
    let target = format!("corebus://{}", broker.native_addr());
    let args = run_args(
        target,
        &[
            "--preset",
            "fanin-8",
            "--subscribers",
            "2",
            "--rate",
            "20000",
            "--duration",
            "1",
            "--warmup",
            "0.2",
        ],
    );
    let r = bench::execute(&args).expect("the run completes");
    // 1.2 s at 20k msg/s, minus whatever a loaded test machine could not send in time.
    assert!(r.published + r.behind_schedule >= 23_000, "{r:#?}");
    assert_eq!(r.expected_deliveries, r.published * 2);
    assert_exact(&r);
}

#[test]
fn a_broker_that_drops_for_a_slow_subscriber_makes_the_run_fail() {
    let mut config = config(1);
    config.slow_consumer = SlowConsumerPolicy::DropOldest;
    config.message_bytes_max = 256;
    // No headers: two of the largest frames fill the queue.
    config.header_bytes_max = 0;
    config.outbound_bytes_max = 2 * (256 + FRAME_OVERHEAD_MAX + 2);
    let broker = start(config);
    let target = format!("corebus://{}", broker.native_addr());
    let args = run_args(
        target,
        &[
            "--size",
            "200",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--subscriber-delay-us",
            "1000",
        ],
    );
    let r = bench::execute(&args).expect("the run completes");
    assert!(r.lost > 0, "{r:#?}");
    assert!(r.dropped_reported > 0, "the broker says what it dropped");
    assert_eq!(
        r.dropped_reported, r.lost,
        "every loss was announced by a DROPPED frame"
    );
    assert_eq!(r.delivered + r.lost, r.expected_deliveries);
    assert_eq!(r.duplicated, 0);
    assert_eq!(r.out_of_order, 0);
    let problems = bench::verdict(&r, false).unwrap_err();
    assert!(problems[0].contains("lost"), "{problems:?}");
    assert_eq!(bench::verdict(&r, true), Ok(()));
}

/// A broker whose replay rings (a durable consumer's backlog) hold a whole short run.
fn durable_config(shards: usize) -> corebus::config::Config {
    let mut config = config(shards);
    config.replay_messages_max = 1_000_000;
    config.replay_bytes_max = 256 << 20;
    config
}

#[test]
fn acked_durable_consumers_get_everything_exactly_once() {
    let broker = start(durable_config(2));
    let target = format!("corebus://{}", broker.native_addr());
    // 2 publishers on 2 topics, 4 subscribers (2 per topic), each its own durable consumer.
    let args = run_args(
        target,
        &[
            "--ack",
            "--in-flight-max",
            "256",
            "--publishers",
            "2",
            "--subscribers",
            "4",
            "--topics",
            "2",
            "--size",
            "64",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--pipeline",
            "64",
            "--threads",
            "2",
        ],
    );
    let r = bench::execute(&args).expect("the run completes");
    assert!(r.acks && r.group.is_none());
    assert!(r.published > 0);
    assert_eq!(r.expected_deliveries, r.published * 2);
    assert_eq!(r.delivered, r.published * 2);
    // Nothing waits 30 s for its ack in a 1 s run, so nothing is redelivered.
    assert_eq!(r.redelivered, 0);
    assert_exact(&r);
}

#[test]
fn a_group_delivers_each_message_to_one_member() {
    for ack in [false, true] {
        let broker = start(durable_config(1));
        let target = format!("corebus://{}", broker.native_addr());
        let mut flags = vec![
            "--group",
            "workers",
            "--subscribers",
            "3",
            "--size",
            "64",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--pipeline",
            "64",
        ];
        if ack {
            flags.push("--ack");
        }
        let r = bench::execute(&run_args(target, &flags)).expect("the run completes");
        assert_eq!(r.group.as_deref(), Some("workers"));
        assert!(r.published > 0);
        assert_eq!(r.expected_deliveries, r.published, "ack {ack}");
        assert_eq!(r.delivered, r.published, "ack {ack}");
        assert_exact(&r);
    }
}

#[test]
fn acks_and_groups_are_refused_for_other_targets() {
    for flag in [&["--ack"][..], &["--group", "g"]] {
        let args = run_args("redis://127.0.0.1:1".into(), flag);
        let error = bench::execute(&args).unwrap_err();
        assert!(error.contains("corebus features"), "{error}");
    }
    let args = run_args("corebus://127.0.0.1:1".into(), &["--group", "no spaces"]);
    assert!(bench::execute(&args)
        .unwrap_err()
        .contains("--group must be"));
}

/// The `--start`/`--prefill` numbers of a run, which must be there.
fn replay_of(r: &BenchResult) -> &bench::report::ReplaySummary {
    r.replay.as_ref().expect("a replay summary")
}

#[test]
fn replaying_a_retained_backlog_then_live_messages_is_exact() {
    // Plain subscriptions (2 per topic), then a group with acks (1 delivery per message).
    let cases: [(&[&str], u64); 2] = [
        (&["--subscribers", "4"], 2),
        (&["--subscribers", "3", "--group", "replayers", "--ack"], 1),
    ];
    for (flags, per_message) in cases {
        let broker = start(durable_config(2));
        let target = format!("corebus://{}", broker.native_addr());
        let mut all_flags = vec![
            "--start",
            "all",
            "--prefill",
            "700",
            "--publishers",
            "2",
            "--topics",
            "2",
            "--size",
            "64",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--pipeline",
            "64",
            "--threads",
            "2",
        ];
        all_flags.extend_from_slice(flags);
        let r = bench::execute(&run_args(target, &all_flags)).expect("the run completes");
        let replay = replay_of(&r);
        assert_eq!(replay.start, "all");
        assert_eq!(replay.prefill_published, 2 * 700, "{flags:?}");
        assert!(r.published > 0);
        let everything = (replay.prefill_published + r.published) * per_message;
        assert_eq!(r.expected_deliveries, everything, "{flags:?}");
        assert_eq!(r.delivered, everything, "{flags:?}");
        assert_eq!(replay.requested, replay.prefill_published * per_message);
        assert_eq!(replay.replayed, replay.requested);
        assert_eq!((replay.not_retained, r.gap_missed), (0, 0));
        assert!(
            replay.drain_s > 0.0 && replay.msgs_per_s > 0.0,
            "{replay:?}"
        );
        // Only live messages are timed (no warm-up here, so every one of them).
        assert_eq!(r.latency_us.count, r.published * per_message, "{flags:?}");
        assert_exact(&r);
    }
}

#[test]
fn a_start_before_the_retained_window_reports_the_gap_and_no_silent_loss() {
    // 1 publisher, 1 topic, 2 subscribers; 1000 prefilled into a ring that keeps 300.
    let ring = 300u64;
    for start_at in ["seq:1", "last:1000", "last:5000", "all", "last:200"] {
        let mut config = config(2);
        config.replay_messages_max = ring as usize;
        let broker = start(config);
        let target = format!("corebus://{}", broker.native_addr());
        let flags = [
            "--start",
            start_at,
            "--prefill",
            "1000",
            "--subscribers",
            "2",
            "--size",
            "64",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--pipeline",
            "64",
        ];
        let r = bench::execute(&run_args(target, &flags)).expect("the run completes");
        let replay = replay_of(&r);
        let live = r.published * 2;
        let (asked, gap, not_retained, replayed) = match start_at {
            // Asked for all 1000, of which 700 were evicted: the broker says so.
            "seq:1" | "last:1000" | "last:5000" => (1000, 700, 0, ring),
            // Everything retained: nothing is missing, the rest is reported as not retained.
            "all" => (ring, 0, 700, ring),
            // Within the ring.
            _ => (200, 0, 0, 200),
        };
        assert_eq!(replay.requested, asked * 2, "{start_at}");
        assert_eq!(r.gap_missed, gap * 2, "{start_at}: {r:#?}");
        assert_eq!(replay.not_retained, not_retained * 2, "{start_at}");
        assert_eq!(replay.replayed, replayed * 2, "{start_at}");
        assert_eq!(r.expected_deliveries, asked * 2 + live, "{start_at}");
        assert_eq!(
            r.delivered + r.gap_missed,
            r.expected_deliveries,
            "{start_at}"
        );
        assert_eq!(
            r.lost, 0,
            "GAP-announced misses are not silent loss ({start_at})"
        );
        assert_eq!((r.duplicated, r.out_of_order), (0, 0), "{start_at}");
        assert_eq!((r.misrouted, r.corrupt, r.errors), (0, 0, 0), "{start_at}");
        assert_eq!(bench::verdict(&r, false), Ok(()), "{start_at}");
        let table = bench::report::table(&r, false);
        if gap > 0 {
            assert!(table.contains("announced by the broker (GAP"), "{table}");
        }
    }
}

#[test]
fn start_and_prefill_are_checked() {
    for (target, flags) in [
        ("redis://127.0.0.1:1", &["--start", "all"][..]),
        ("nats://127.0.0.1:1", &["--prefill", "10"]),
        ("redis://127.0.0.1:1", &["--start", "new"]),
    ] {
        let error = bench::execute(&run_args(target.into(), flags)).unwrap_err();
        assert!(error.contains("corebus features"), "{error}");
        assert!(error.contains("--start and --prefill"), "{error}");
    }
    for bad in ["last:x", "seq:0", "first", "last"] {
        let argv = ["corebus", "bench", "--start", bad];
        let error = Cli::try_parse_from(argv).unwrap_err().to_string();
        assert!(error.contains("last:N"), "{bad}: {error}");
    }
    let args = run_args(
        "corebus://127.0.0.1:1".into(),
        &["--prefill", "3000000", "--topics", "4"],
    );
    let error = bench::execute(&args).unwrap_err();
    assert!(error.contains("--prefill 3000000"), "{error}");
}

#[test]
fn websocket_runs_in_both_dialects_account_for_every_message() {
    let broker = start(config(2));
    let http = broker.http_addr().expect("the HTTP port is on");
    for path in ["/v1/ws", "/ws"] {
        // Closed loop with a window above the session's in-flight limit (the bench keeps
        // under it), then open loop; 2 topics over 2 shards, so some publishes cross shards.
        for flags in [
            &["--pipeline", "8192"][..],
            &["--rate", "5000", "--size", "48"][..],
        ] {
            let mut all = vec![
                "--publishers",
                "2",
                "--subscribers",
                "3",
                "--topics",
                "2",
                "--duration",
                "0.6",
                "--warmup",
                "0.2",
                "--threads",
                "2",
            ];
            all.extend_from_slice(flags);
            let args = run_args(format!("ws://{http}{path}"), &all);
            let r = bench::execute(&args).expect("the run completes");
            assert!(r.published > 0, "{path} {flags:?}: {r:#?}");
            assert!(r.expected_deliveries >= r.published, "{path}");
            assert_exact(&r);
            assert_eq!(r.publish_errors, 0);
        }
    }
    // A payload too short for the hex header, and a path that names no dialect.
    let args = run_args(format!("ws://{http}/v1/ws"), &["--size", "47"]);
    assert!(bench::execute(&args).unwrap_err().contains("at least 48"));
    let args = run_args(format!("ws://{http}/v2/ws"), &[]);
    assert!(bench::execute(&args).unwrap_err().contains("/v1/ws"));
}

#[test]
fn unwindowed_publishers_are_accounted_exactly_on_the_native_and_redis_ports() {
    let mut config = config(2);
    // Publishers that only TCP holds back can outrun this one-thread bench's subscribers for
    // a moment; what is tested here is the bench's accounting, not the slow-consumer policy
    // (whose cuts at full rate are issue 13's), so the queues are made roomy.
    config.outbound_bytes_max = 256 << 20;
    let broker = start(config);
    let native = format!("corebus://{}", broker.native_addr());
    let resp = format!(
        "redis://{}",
        broker.resp_addr().expect("the RESP port is on")
    );
    // 3 publishers over 2 topics on 2 shards (some publishes cross shards), 4 subscribers:
    // each message is expected twice. Then the same open loop, which sends no PING either.
    for target in [native, resp] {
        for flags in [&[][..], &["--rate", "20000"][..]] {
            let mut all = vec![
                "--unwindowed",
                "--publishers",
                "3",
                "--subscribers",
                "4",
                "--topics",
                "2",
                "--size",
                "64",
                "--duration",
                "0.8",
                "--warmup",
                "0.2",
            ];
            all.extend_from_slice(flags);
            let args = run_args(target.clone(), &all);
            let r = bench::execute(&args).expect("the run completes");
            assert!(r.scenario.unwindowed);
            assert!(r.published > 0, "{target} {flags:?}: {r:#?}");
            assert_eq!(r.expected_deliveries, r.published * 2, "{target} {flags:?}");
            assert_exact(&r);
            assert_eq!(r.publish_errors, 0);
        }
    }
}

#[test]
fn unwindowed_is_refused_where_the_target_caps_unanswered_publishes() {
    let broker = start(config(1));
    let http = broker.http_addr().expect("the HTTP port is on");
    let args = run_args(format!("ws://{http}/v1/ws"), &["--unwindowed"]);
    let error = bench::execute(&args).unwrap_err();
    assert!(error.contains("--unwindowed"), "{error}");
}

/// Publishers that only TCP holds back outrun a subscriber that reads as fast as it can; the
/// broker pauses reading them while the subscriber drains (`--publisher-stall-ms-max`), so
/// the subscriber is not cut and nothing is lost. (Issue 13: without the stall, fan-in at full
/// rate cut the subscriber in most runs.)
#[test]
fn a_subscriber_that_reads_is_not_cut_by_unwindowed_publishers() {
    let mut config = config(1);
    config.outbound_bytes_max = 2 << 20;
    // Generous, so a busy test machine's scheduling cannot pass for a stuck subscriber.
    config.publisher_stall_ms_max = 500;
    let broker = start(config);
    let args = run_args(
        format!("corebus://{}", broker.native_addr()),
        &[
            "--preset",
            "fanin-8",
            "--unwindowed",
            "--size",
            "64",
            "--duration",
            "1.5",
            "--warmup",
            "0.2",
        ],
    );
    let r = bench::execute(&args).expect("the run completes");
    assert!(r.published > 0, "{r:#?}");
    assert_exact(&r);
    assert_eq!(r.publish_errors, 0);
}

/// Two publishers writing as fast as TCP lets them are read alike. The broker once took a
/// read that gave less than it asked for to mean the socket was empty: in about half the
/// runs one publisher was then read at a hundredth of the other's rate for the whole run
/// (its messages seconds late), which the bench's slowest-publisher share shows. The bench
/// runs as its own process, as a user runs it: inside the test's process (its threads
/// beside the broker's) the starvation did not show in six runs; as its own process it
/// failed this test in two of three tries on one machine, one of three on another. So it
/// catches the starvation often, not always.
#[test]
fn publishers_writing_as_fast_as_they_can_are_read_alike() {
    let broker = start(config(1));
    for _ in 0..4 {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_corebus"))
            .args([
                "bench",
                "--target",
                &format!("corebus://{}", broker.native_addr()),
                "--publishers",
                "2",
                "--subscribers",
                "1",
                "--topics",
                "1",
                "--unwindowed",
                "--size",
                "64",
                "--duration",
                "1",
                "--warmup",
                "0.3",
                "--json",
                "--quiet",
            ])
            .output()
            .expect("the binary runs");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let r: BenchResult = serde_json::from_str(stdout.trim()).unwrap_or_else(|error| {
            let stderr = String::from_utf8_lossy(&output.stderr);
            panic!("no JSON result ({error}): {stdout}\n{stderr}")
        });
        assert_exact(&r);
        let share = r.slowest_publisher_share.expect("two publishers");
        assert!(
            share > 0.3,
            "one publisher sent {share:.2} of the mean: {r:#?}"
        );
    }
}

/// `corebus bench --target inproc` as a user runs it: the binary starts its own bus, runs the
/// preset in process and passes its verdict (exit 0) with every delivery accounted for. Open
/// loop at a rate a loaded test machine keeps up with: closed loop, a subscriber thread kept
/// off the CPU longer than the bus's default stall bound (100 ms) would be cut, as it should.
#[test]
fn the_inproc_target_runs_a_preset_in_process_with_no_loss() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_corebus"))
        .args([
            "bench",
            "--target",
            "inproc",
            "--preset",
            "fanout-16",
            "--rate",
            "50000",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--bus-shards",
            "2",
            "--json",
            "--quiet",
        ])
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let r: BenchResult = serde_json::from_str(stdout.trim()).expect("one JSON result");
    assert_eq!(r.target.name(), "inproc");
    assert!(r.published > 0 && r.delivered > 0, "{r:#?}");
    assert_eq!(r.expected_deliveries, r.published * 16);
    assert_exact(&r);
    assert!(r.latency_us.count > 0 && r.delivered_window > 0);
}

/// A bus for closed-loop runs on a busy test machine: a generous stall bound, so that a
/// subscriber thread kept off the CPU cannot pass for a stuck one and be cut.
fn patient_bus(shards: usize) -> corebus::bus::Bus {
    let mut config = corebus::bus::BusConfig::default();
    config.broker.shards = shards;
    config.broker.publisher_stall_ms_max = 500;
    corebus::bus::Bus::start(config).expect("the bus starts")
}

/// Several publishers, subscribers and topics on threads of each side, every message accounted
/// for exactly; then the same as a group with acks, each message delivered once. Open loop at
/// a rate a loaded two-CPU machine keeps up with: closed loop, a subscriber thread that lost
/// its CPU for long enough was cut as slow now and then (its publishers sit on the other
/// shard, which the publisher stall does not reach).
#[test]
fn inproc_runs_are_exact_across_threads_groups_and_acks() {
    let bus = patient_bus(2);
    let args = run_args(
        "inproc".into(),
        &[
            "--publishers",
            "3",
            "--subscribers",
            "4",
            "--topics",
            "2",
            "--size",
            "64",
            "--duration",
            "0.5",
            "--warmup",
            "0.1",
            "--threads",
            "2",
            "--rate",
            "200000",
        ],
    );
    let r = bench::execute_on_bus(&args, &bus).expect("the run completes");
    assert!(r.published > 0);
    assert_eq!(r.expected_deliveries, r.published * 2);
    assert_exact(&r);

    let args = run_args(
        "inproc".into(),
        &[
            "--preset",
            "fanin-8",
            "--subscribers",
            "2",
            "--group",
            "g",
            "--ack",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--rate",
            "20000",
        ],
    );
    let r = bench::execute_on_bus(&args, &bus).expect("the run completes");
    assert!(r.published > 0);
    assert_eq!(r.expected_deliveries, r.published);
    assert_exact(&r);
    bus.shutdown().expect("the bus stops");
}

/// A replayed backlog in process: the prefill is confirmed with its sequence numbers, and
/// `--start all` replays it before the live messages, with no gap and no duplicate.
#[test]
fn inproc_replays_a_prefilled_backlog_exactly() {
    let args = run_args(
        "inproc".into(),
        &[
            "--prefill",
            "200",
            "--start",
            "all",
            "--subscribers",
            "2",
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--rate",
            "10000",
        ],
    );
    let r = bench::execute(&args).expect("the run completes");
    assert_exact(&r);
    let replay = replay_of(&r);
    assert_eq!(replay.prefill_published, 200);
    assert_eq!((replay.requested, replay.replayed), (400, 400));
}

/// The in-process accounting catches loss as the network one does: a bus that drops for a
/// slow subscriber (drop-oldest, no publisher stall) makes the run fail, and every loss is
/// one the bus announced.
#[test]
fn an_inproc_bus_that_drops_for_a_slow_subscriber_makes_the_run_fail() {
    let mut bus_config = corebus::bus::BusConfig::default();
    bus_config.broker.shards = 1;
    bus_config.broker.slow_consumer = SlowConsumerPolicy::DropOldest;
    bus_config.broker.publisher_stall_ms_max = 0;
    bus_config.broker.message_bytes_max = 256;
    bus_config.broker.header_bytes_max = 0;
    bus_config.broker.outbound_bytes_max = 4 * (256 + FRAME_OVERHEAD_MAX + 2);
    bus_config.event_slots = 16;
    let bus = corebus::bus::Bus::start(bus_config).expect("the bus starts");
    let args = run_args(
        "inproc".into(),
        &[
            "--size",
            "200",
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--subscriber-delay-us",
            "1000",
        ],
    );
    let r = bench::execute_on_bus(&args, &bus).expect("the run completes");
    assert!(r.lost > 0, "{r:#?}");
    assert_eq!(
        r.dropped_reported, r.lost,
        "every loss was announced by the bus"
    );
    assert_eq!(r.delivered + r.lost, r.expected_deliveries);
    assert_eq!((r.duplicated, r.out_of_order), (0, 0));
    let problems = bench::verdict(&r, false).unwrap_err();
    assert!(problems[0].contains("lost"), "{problems:?}");
    bus.shutdown().expect("the bus stops");
}

#[test]
fn bus_flags_are_for_the_inproc_target_only() {
    let args = run_args(
        "corebus://127.0.0.1:1".into(),
        &["--bus-shards", "2", "--duration", "0.1"],
    );
    let error = bench::execute(&args).unwrap_err();
    assert!(error.contains("--target inproc"), "{error}");
    let args = run_args("inproc".into(), &["--bus-shards", "0", "--duration", "0.1"]);
    let error = bench::execute(&args).unwrap_err();
    assert!(error.contains("--bus-shards"), "{error}");
}
