//! `corebus bench`: a load generator for corebus, with Redis and NATS as yardsticks.
//!
//! The same load goes to each target: one TCP connection per publisher and per subscriber,
//! the same topic names and payload bytes. Each bench thread runs one `mio` loop over many
//! connections ([`driver`]), with large reads and pipelined, batched writes, so that the bench
//! is not the bottleneck. Every payload starts with a header ([`accounting::PayloadHeader`]):
//! publisher, topic, per-(publisher, topic) sequence and send time. Subscribers use it to
//! count loss, duplicates and reordering per (topic, publisher) exactly, and to time each
//! delivery end to end into an HDR histogram, measured in open loop from each message's
//! *scheduled* send time so that coordinated omission cannot hide a stall ([`latency`]).
//!
//! - [`scenario`]: presets and the resolved load (who publishes and subscribes where).
//! - [`wire`]: per-target codecs (corebus through `protocol::native`; RESP2; NATS; corebus's
//!   WebSocket dialects through `protocol::websocket`).
//! - [`driver`]: one thread's event loop. [`latency`]: clock, schedule, histogram.
//! - [`accounting`]: payload header and sequence tracking. [`report`]: result, verdict,
//!   table, JSON, HDR output, SVG chart.
//! - [`replay`]: corebus replay starts (`--start`) over a backlog published first
//!   (`--prefill`), and which messages a subscription therefore asked for.
//! - [`inproc`]: `--target inproc`, the same presets against an embedded bus started in
//!   the bench process (in-process handles on their own threads, no sockets).
//! - [`reflector`]: `corebus bench reflector`, a stand-in broker that only forwards, to measure
//!   the bench itself.
//!
//! [`execute`] runs a benchmark and returns its [`BenchResult`]; [`verdict`] says whether it
//! passed; [`run`] is the CLI entry point that does both and prints.

pub mod accounting;
pub mod driver;
pub mod inproc;
pub mod latency;
pub mod reflector;
pub mod replay;
pub mod report;
pub mod scenario;
pub mod wire;

use std::error::Error;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::bus::BusHandle;
use crate::cli::{parse_core_list, CoreList};
use crate::protocol::subscribe_options::{AckSettings, Start, CONSUMER_NAME_BYTES_MAX};
use driver::{Assignment, Counters, Delivery, Plan, Shared, SubscriptionReplay, ThreadOutput};
use latency::Clock;

pub use report::{verdict, BenchResult};
pub use scenario::{Preset, Scenario};

/// `corebus bench [FLAGS]` runs a benchmark; `corebus bench plot` charts saved results.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Draw the latency-by-percentile curves of several `--json` results on one SVG chart.
    Plot(PlotArgs),
    /// Serve a stand-in broker that only forwards, to measure the bench itself.
    Reflector(reflector::ReflectorArgs),
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Result files written by `corebus bench --json > FILE`.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// The SVG file to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Chart title.
    #[arg(long, default_value = "end-to-end latency by percentile")]
    pub title: String,
}

/// The flags of a benchmark run. Shape flags left out take the preset's value (or 1:1's).
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// What to load: corebus://HOST:PORT, redis://HOST:PORT, nats://HOST:PORT, corebus's
    /// WebSocket port, ws://HOST:PORT/v1/ws (Go/Fiber dialect) or ws://HOST:PORT/ws (FastAPI),
    /// nats-server's websocket listener, nats+ws://HOST:PORT, or `inproc`: an embedded bus
    /// started inside the bench process (no sockets; see --bus-shards, --bus-cores).
    #[arg(long, default_value = "corebus://127.0.0.1:7070")]
    pub target: String,
    /// `--target inproc`: shards of the bench's embedded bus [one per available CPU].
    #[arg(long)]
    pub bus_shards: Option<usize>,
    /// `--target inproc`: CPUs to pin the bus's shards to, e.g. `0` or `0-1`; shard i runs on
    /// the i-th (wrapping) [not pinned].
    #[arg(long, value_parser = parse_core_list)]
    pub bus_cores: Option<CoreList>,
    /// A named scenario; explicit flags override its values.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Publishing connections [preset, else 1].
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Subscribing connections [preset, else 1].
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Topics [preset, else 1].
    #[arg(long)]
    pub topics: Option<usize>,
    /// Topics each subscriber subscribes to, consecutive and wrapping from subscriber·N
    /// [1; many-topics: topics / subscribers].
    #[arg(long)]
    pub subs_per_subscriber: Option<usize>,
    /// Payload bytes per message, at least 24 (the bench's header) (default 128).
    #[arg(long)]
    pub size: Option<usize>,
    /// Seconds measured, after the warm-up (default 10).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds of load before measuring starts (default 2).
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Total msg/s across publishers (open loop, latency from each message's scheduled
    /// time); 0 = closed loop, as fast as --pipeline allows (default 0).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Closed loop: publishes in flight per publisher (written in batches of a quarter of it);
    /// open loop: most messages one publisher writes per loop turn (default 1024).
    #[arg(long)]
    pub pipeline: Option<usize>,
    /// Publishers are not windowed: no PING (nor wait for Redis replies, which are still read
    /// and discarded) until the end of the run; each writes until the socket would block, as
    /// NATS clients do, so TCP backpressure is the only limit. corebus, NATS and Redis
    /// targets (and the reflector) only.
    #[arg(long)]
    pub unwindowed: bool,
    /// Bench threads, each running one event loop over its share of the connections
    /// (`--target inproc`: this many publisher threads and this many subscriber threads).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// CPUs to pin bench threads to, e.g. `1` or `2-3`; thread i runs on the i-th (wrapping).
    #[arg(long, value_parser = parse_core_list)]
    pub cores: Option<CoreList>,
    /// Print one JSON object (with the percentile distribution) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write the latency percentile distribution (HdrHistogram's text format, microseconds).
    #[arg(long, value_name = "FILE")]
    pub hdr_out: Option<PathBuf>,
    /// Draw the latency-by-percentile chart to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Exit 0 despite lost messages (duplicates, reordering and errors still fail).
    #[arg(long)]
    pub allow_loss: bool,
    /// corebus only: subscribers are durable consumers (`bench-<run>-s<i>`) with acks, and
    /// acknowledge what they receive (one cumulative ACK per topic per read turn).
    #[arg(long)]
    pub ack: bool,
    /// With --ack: unacknowledged messages per consumer before the broker pauses delivery.
    #[arg(long, requires = "ack", default_value_t = 1024)]
    pub in_flight_max: u32,
    /// With --ack: how long the broker waits for an ack before redelivering.
    #[arg(long, requires = "ack", default_value_t = 30_000)]
    pub ack_wait_ms: u32,
    /// With --ack: deliveries before a message is dead-lettered.
    #[arg(long, requires = "ack", default_value_t = 5)]
    pub deliver_max: u16,
    /// corebus only: subscribers join this consumer group on each of their topics, so each
    /// message goes to one member (expected deliveries = messages published).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// corebus only: where every subscription starts in its topic's history: `new` (live
    /// only), `all` (everything retained), `last:N` (the last N messages of each topic) or
    /// `seq:N` (from topic sequence number N); replayed messages are counted, not timed (default new).
    #[arg(long, value_name = "new|all|last:N|seq:N", value_parser = replay::parse_start)]
    pub start: Option<Start>,
    /// corebus only: messages each publisher publishes to each of its topics, each confirmed,
    /// before the subscribers subscribe: the backlog that --start replays.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub prefill: u64,
    /// No progress line on stderr.
    #[arg(long, short)]
    pub quiet: bool,
    /// Testing aid: microseconds each subscriber waits between reads (of at most 4 KiB, on
    /// a 16 KiB socket buffer), to make deliberately slow consumers.
    #[arg(long, hide = true, default_value_t = 0)]
    pub subscriber_delay_us: u64,
}

impl RunArgs {
    fn overrides(&self) -> scenario::Overrides {
        scenario::Overrides {
            preset: self.preset,
            publishers: self.publishers,
            subscribers: self.subscribers,
            topics: self.topics,
            subs_per_subscriber: self.subs_per_subscriber,
            size: self.size,
            duration_s: self.duration,
            warmup_s: self.warmup,
            rate: self.rate,
            pipeline: self.pipeline,
            unwindowed: self.unwindowed,
        }
    }
}

/// The CLI entry point: run (or plot), print, and fail when the verdict does.
pub fn run(args: &BenchArgs) -> Result<(), Box<dyn Error>> {
    match &args.command {
        Some(BenchCommand::Plot(plot)) => return plot_files(plot),
        Some(BenchCommand::Reflector(reflector)) => return reflector::run(reflector),
        None => {}
    }
    let run = &args.run;
    let result = execute(run)?;
    if run.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print!("{}", report::table(&result, run.allow_loss));
    }
    if let Some(path) = &run.hdr_out {
        std::fs::write(path, report::hdr_percentiles(&result))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &run.plot {
        let runs = [(result.label.clone(), result.percentiles.clone())];
        report::plot(&runs, "end-to-end latency by percentile", path)?;
    }
    verdict(&result, run.allow_loss)
        .map_err(|problems| format!("bench failed: {}", problems.join(", ")).into())
}

fn plot_files(args: &PlotArgs) -> Result<(), Box<dyn Error>> {
    let mut runs = Vec::new();
    for path in &args.inputs {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let result: BenchResult = serde_json::from_str(text.trim())
            .map_err(|e| format!("{} is not a bench --json result: {e}", path.display()))?;
        runs.push((result.label, result.percentiles));
    }
    report::plot(&runs, &args.title, &args.output)?;
    Ok(())
}

/// Runs one benchmark and returns what it measured. Errors are set-up failures (bad flags,
/// nothing listening, a handshake refused); problems during the run are in the result.
/// `--target inproc` starts an embedded bus for the run (`--bus-shards`, `--bus-cores`) and
/// shuts it down after.
pub fn execute(args: &RunArgs) -> Result<BenchResult, String> {
    let endpoint = wire::parse_endpoint(&args.target)?;
    if endpoint.target != wire::Target::Inproc {
        if args.bus_shards.is_some() || args.bus_cores.is_some() {
            return Err("--bus-shards and --bus-cores are for --target inproc".into());
        }
        return execute_with(args, endpoint, None);
    }
    let bus = inproc::start_bus(args.bus_shards, args.bus_cores.as_ref())?;
    let result = execute_with(args, endpoint, Some(&bus.handle()));
    let stopped = bus
        .shutdown()
        .map_err(|e| format!("the bench's bus did not shut down cleanly: {e}"));
    let result = result?;
    stopped?;
    Ok(result)
}

/// Runs one benchmark in process against a bus the caller started and configured (its
/// limits, its slow-consumer policy), as `--target inproc` does against one of its own;
/// `args.target` must be `inproc`, and `--bus-shards`/`--bus-cores` are the caller's business.
pub fn execute_on_bus(args: &RunArgs, bus: &BusHandle) -> Result<BenchResult, String> {
    let endpoint = wire::parse_endpoint(&args.target)?;
    if endpoint.target != wire::Target::Inproc {
        return Err(format!(
            "a run on a caller's bus takes --target inproc, got {}",
            endpoint.text
        ));
    }
    execute_with(args, endpoint, Some(bus))
}

fn execute_with(
    args: &RunArgs,
    endpoint: wire::Endpoint,
    bus: Option<&BusHandle>,
) -> Result<BenchResult, String> {
    let scenario = Scenario::resolve(&args.overrides())?;
    let stamp_len = endpoint.target.stamp_len();
    if scenario.size < stamp_len {
        return Err(format!(
            "--size must be at least {stamp_len} for the {} target (each payload starts with \
             the bench's header, in hex for a JSON string), got {}",
            endpoint.target, scenario.size
        ));
    }
    if args.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if scenario.unwindowed && endpoint.target.in_flight_max() != u64::MAX {
        return Err(format!(
            "--unwindowed: the {} target refuses publishes past {} unanswered, so its \
             publishers must stay windowed",
            endpoint.target,
            endpoint.target.in_flight_max()
        ));
    }
    let inproc = bus.is_some();
    let connections = scenario.publishers + scenario.subscribers;
    // Connection c (publishers first, then subscribers) runs on thread c % threads; in
    // process, publishers and subscribers have threads of their own.
    let assignments = if inproc {
        inproc::assignments(
            scenario.publishers,
            scenario.subscribers,
            args.threads,
            args.cores.as_ref(),
        )
    } else {
        let threads = args.threads.min(connections);
        let mut assignments: Vec<Assignment> = (0..threads)
            .map(|i| Assignment {
                index: i,
                core: args.cores.as_ref().map(|c| c.0[i % c.0.len()]),
                ..Assignment::default()
            })
            .collect();
        for p in 0..scenario.publishers {
            assignments[p % threads].publishers.push(p);
        }
        for s in 0..scenario.subscribers {
            assignments[(scenario.publishers + s) % threads]
                .subscribers
                .push(s);
        }
        assignments
    };
    let threads = assignments.len();
    let run_tag = format!("{:08x}", rand::random::<u32>());
    let delivery = delivery_mode(args, &scenario, endpoint.target, &run_tag)?;
    let mut subscribers_per_topic = scenario.subscribers_per_topic();
    if delivery.group.is_some() {
        // A group's members split each topic's messages: one delivery per message.
        for n in &mut subscribers_per_topic {
            *n = (*n).min(1);
        }
    }
    let topic_names = (0..scenario.topics as u32)
        .map(|t| wire::topic_name(&run_tag, t))
        .collect();
    let plan = Arc::new(Plan {
        subscribers_per_topic,
        scenario: scenario.clone(),
        endpoint: endpoint.clone(),
        topic_names,
        clock: Clock::new(),
        threads,
        subscriber_delay_us: args.subscriber_delay_us,
        delivery,
        prefill: args.prefill,
    });
    let shared = Arc::new(Shared::default());

    let mut handles = Vec::new();
    for assignment in assignments {
        let (plan, shared) = (Arc::clone(&plan), Arc::clone(&shared));
        let bus = bus.cloned();
        let handle = std::thread::Builder::new()
            .name(format!("bench-{}", assignment.index))
            .spawn(move || match bus {
                Some(bus) => inproc::run_thread(&plan, &assignment, &shared, &bus),
                None => driver::run_thread(&plan, &assignment, &shared),
            })
            .map_err(|e| format!("cannot spawn a bench thread: {e}"))?;
        handles.push(handle);
    }

    // Start everyone at once when all are set up.
    let clock = plan.clock;
    loop {
        if shared.ready.load(Ordering::Acquire) == threads {
            shared
                .start_ns
                .store(clock.now_ns() + 5_000_000, Ordering::Release);
            break;
        }
        if shared.abort.load(Ordering::Acquire) || shared.finished.load(Ordering::Acquire) > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let progress = Progress::new(args.quiet);
    let mut last = (clock.now_ns(), 0u64, 0u64);
    while shared.finished.load(Ordering::Acquire) < threads {
        std::thread::sleep(Duration::from_millis(50));
        let now = clock.now_ns();
        if now - last.0 >= 1_000_000_000 {
            let published = shared.published.load(Ordering::Relaxed);
            let delivered = shared.delivered.load(Ordering::Relaxed);
            let secs = (now - last.0) as f64 / 1e9;
            let start = shared.start_ns.load(Ordering::Acquire);
            progress.show(&progress_line(
                &scenario,
                start,
                now,
                (published - last.1) as f64 / secs,
                (delivered - last.2) as f64 / secs,
                published,
                delivered,
            ));
            last = (now, published, delivered);
        }
    }
    progress.finish();

    let mut outputs = Vec::new();
    let mut failure = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(output)) => outputs.push(output),
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                failure.get_or_insert("a bench thread panicked".to_string());
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(summarize(&plan, &outputs))
}

/// `--ack`, `--group`, `--start` and `--prefill`, checked: corebus only, a valid group name,
/// a bounded prefill.
fn delivery_mode(
    args: &RunArgs,
    scenario: &Scenario,
    target: wire::Target,
    run_tag: &str,
) -> Result<Delivery, String> {
    if (args.ack || args.group.is_some()) && !target.is_corebus() {
        return Err(format!(
            "--ack and --group are corebus features (durable consumers, acks, groups); \
             the {target} target has no equivalent in this bench"
        ));
    }
    if (args.start.is_some() || args.prefill > 0) && !target.is_corebus() {
        return Err(format!(
            "--start and --prefill are corebus features (replay from a topic's retained \
             history); the {target} target has no equivalent in this bench"
        ));
    }
    // Every publisher publishes to each of its topics: max(publishers, topics) streams.
    let streams = scenario.publishers.max(scenario.topics) as u64;
    if args.prefill.saturating_mul(streams) > replay::PREFILL_MESSAGES_MAX {
        return Err(format!(
            "--prefill {} makes {} messages over {streams} (publisher, topic) pairs; at most \
             {} in all",
            args.prefill,
            args.prefill.saturating_mul(streams),
            replay::PREFILL_MESSAGES_MAX
        ));
    }
    if let Some(group) = &args.group {
        let valid = !group.is_empty()
            && group.len() <= CONSUMER_NAME_BYTES_MAX
            && group
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(format!(
                "--group must be 1 to {CONSUMER_NAME_BYTES_MAX} characters of [A-Za-z0-9_-], \
                 got `{group}`"
            ));
        }
    }
    if args.ack && args.in_flight_max == 0 {
        return Err("--in-flight-max must be at least 1".into());
    }
    Ok(Delivery {
        acks: args.ack.then_some(AckSettings {
            in_flight_max: args.in_flight_max,
            ack_wait_ms: args.ack_wait_ms,
            deliver_max: args.deliver_max,
        }),
        group: args.group.clone(),
        run_tag: run_tag.to_string(),
        start: args.start.unwrap_or_default(),
    })
}

fn progress_line(
    scenario: &Scenario,
    start: u64,
    now: u64,
    published_rate: f64,
    delivered_rate: f64,
    published: u64,
    delivered: u64,
) -> String {
    let elapsed = now.saturating_sub(start) as f64 / 1e9;
    let phase = if start == 0 || now < start {
        "set-up"
    } else if elapsed < scenario.warmup_s {
        "warm-up"
    } else if elapsed < scenario.warmup_s + scenario.duration_s {
        "measure"
    } else {
        "drain"
    };
    let total = scenario.warmup_s + scenario.duration_s;
    format!(
        "{phase:<7} {elapsed:>5.1}/{total}s  pub {}/s  del {}/s  (total {} / {})",
        si(published_rate),
        si(delivered_rate),
        si(published as f64),
        si(delivered as f64)
    )
}

/// `1234567.0` as `1.23M`.
fn si(value: f64) -> String {
    match value {
        v if v >= 1e9 => format!("{:.2}G", v / 1e9),
        v if v >= 1e6 => format!("{:.2}M", v / 1e6),
        v if v >= 1e3 => format!("{:.1}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

/// The once-a-second line on stderr: an indicatif spinner on a terminal, plain lines
/// otherwise (logs), nothing with `--quiet`.
enum Progress {
    Bar(indicatif::ProgressBar),
    Lines,
    Off,
}

impl Progress {
    fn new(quiet: bool) -> Progress {
        if quiet {
            Progress::Off
        } else if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg}") {
                bar.set_style(style);
            }
            Progress::Bar(bar)
        } else {
            Progress::Lines
        }
    }

    fn show(&self, line: &str) {
        match self {
            Progress::Bar(bar) => bar.set_message(line.to_string()),
            Progress::Lines => eprintln!("{line}"),
            Progress::Off => {}
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// What the subscriptions asked for and got, summed over streams.
#[derive(Debug, Default)]
struct Tally {
    expected: u64,
    delivered: u64,
    /// Asked for, never delivered, and not announced by a GAP: silent loss.
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    /// Delivered but never asked for: beyond what a publisher sent, or before the start.
    phantom: u64,
    /// Prefill messages asked for (from each subscription's start on), and those delivered.
    replay_requested: u64,
    replayed: u64,
    /// `--start all`: prefill messages below the oldest one replayed.
    not_retained: u64,
}

/// One stream's prefill as the bench saw it: the topic sequence numbers its prefill messages
/// got (empty without a prefill).
struct Stream<'a> {
    sent: u64,
    prefill_seqs: &'a [u64],
}

impl Tally {
    /// Settles one (subscription, publisher) stream whose subscription asked for topic
    /// sequence numbers from `first_seq` on: `unique_below(n)` counts the distinct payload
    /// sequence numbers below `n` it got, `unique` all of them. Returns the messages asked for
    /// and not delivered.
    fn stream(
        &mut self,
        stream: &Stream<'_>,
        first_seq: u64,
        start_all: bool,
        unique: u64,
        unique_below: impl Fn(u64) -> u64,
    ) -> Missing {
        let skipped = replay::skipped(stream.prefill_seqs, first_seq);
        let requested = stream.sent - skipped;
        let before_start = unique_below(skipped);
        let got = unique - before_start;
        self.expected += requested;
        self.delivered += got;
        self.phantom += before_start + got.saturating_sub(requested);
        let replay_requested = stream.prefill_seqs.len() as u64 - skipped;
        let replayed = unique_below(stream.prefill_seqs.len() as u64) - before_start;
        self.replay_requested += replay_requested;
        self.replayed += replayed;
        if start_all {
            self.not_retained += skipped;
        }
        Missing {
            all: requested.saturating_sub(got),
            replay: replay_requested.saturating_sub(replayed),
        }
    }

    /// Counts what a subscription missed as loss, except what its GAP frames announced among
    /// the replayed (prefill) messages: a GAP can excuse only history the replay asked for,
    /// never live messages.
    fn settle(&mut self, missing: Missing, gap_missed: u64) {
        self.lost += missing.all.saturating_sub(gap_missed.min(missing.replay));
    }
}

/// A subscription's missing messages: all of them, and those among the replayed backlog.
#[derive(Clone, Copy, Default)]
struct Missing {
    all: u64,
    replay: u64,
}

impl std::ops::AddAssign for Missing {
    fn add_assign(&mut self, other: Missing) {
        self.all += other.all;
        self.replay += other.replay;
    }
}

/// Settles loss exactly: for every (subscriber, topic, publisher) stream, what the publisher
/// sent from where the subscription asked to start, minus the distinct messages the
/// subscriber got; what a GAP frame announced on that subscription is not silent loss.
fn summarize(plan: &Plan, outputs: &[ThreadOutput]) -> BenchResult {
    let scenario = &plan.scenario;
    let ppt = scenario.publishers_per_topic_max();
    let mut streams: Vec<Stream<'_>> = (0..scenario.topics * ppt)
        .map(|_| Stream {
            sent: 0,
            prefill_seqs: &[],
        })
        .collect();
    for (publisher, topics) in outputs.iter().flat_map(|o| &o.sent) {
        for &(topic, count) in topics {
            if let Some(k) = scenario.publisher_slot(topic, *publisher) {
                streams[topic as usize * ppt + k].sent += count;
            }
        }
    }
    for (publisher, topics) in outputs.iter().flat_map(|o| &o.prefill_seqs) {
        for (topic, seqs) in topics {
            if let Some(k) = scenario.publisher_slot(*topic, *publisher) {
                streams[*topic as usize * ppt + k].prefill_seqs = seqs;
            }
        }
    }
    // Each topic's last sequence number when the subscriptions were made: no live message
    // had been published yet, so it is its last prefill one.
    let mut last_seq = vec![0u64; scenario.topics];
    for (i, stream) in streams.iter().enumerate() {
        let last = stream.prefill_seqs.last().copied().unwrap_or(0);
        last_seq[i / ppt] = last_seq[i / ppt].max(last);
    }
    let start = plan.delivery.start;
    let start_all = start == Start::All;
    // Where a subscription to `topic` asked to start; for `all`, the oldest retained message,
    // which is the oldest it got (or, with nothing replayed, the first live one).
    let first_seq = |topic: usize, replay: &SubscriptionReplay| {
        replay::requested_first_seq(start, last_seq[topic])
            .unwrap_or_else(|| replay.first_replayed_seq.min(last_seq[topic] + 1))
    };

    let mut tally = Tally::default();
    // Plain subscriptions and durable consumers: each its own.
    for output in outputs {
        for ((subscriber, trackers), (_, replays)) in output.trackers.iter().zip(&output.replays) {
            for (j, topic) in scenario
                .subscriber_topics(*subscriber as usize)
                .into_iter()
                .enumerate()
            {
                let topic = topic as usize;
                let first = first_seq(topic, &replays[j]);
                let mut missing = Missing::default();
                for k in 0..ppt {
                    let tracker = &trackers[j * ppt + k];
                    tally.duplicated += tracker.duplicates();
                    tally.out_of_order += tracker.out_of_order();
                    missing += tally.stream(
                        &streams[topic * ppt + k],
                        first,
                        start_all,
                        tracker.unique(),
                        |bound| tracker.unique_below(bound),
                    );
                }
                tally.settle(missing, replays[j].gap_missed);
            }
        }
    }
    // A group: each member saw part of each stream; merge them, then settle the same way,
    // with the group's replay start and GAPs taken over all its members.
    let mut merged: Vec<accounting::SeqSet> = Vec::new();
    let mut group_replay = vec![SubscriptionReplay::default(); scenario.topics];
    for output in outputs {
        for ((subscriber, sets), (_, replays)) in output.sets.iter().zip(&output.replays) {
            if merged.is_empty() {
                merged = vec![accounting::SeqSet::default(); scenario.topics * ppt];
            }
            for (j, topic) in scenario
                .subscriber_topics(*subscriber as usize)
                .into_iter()
                .enumerate()
            {
                let topic = topic as usize;
                for k in 0..ppt {
                    merged[topic * ppt + k].union(&sets[j * ppt + k]);
                }
                let group = &mut group_replay[topic];
                group.first_replayed_seq =
                    group.first_replayed_seq.min(replays[j].first_replayed_seq);
                // The group's consumer sends each GAP to one member: they add up.
                group.gap_missed += replays[j].gap_missed;
            }
        }
    }
    if !merged.is_empty() {
        for topic in 0..scenario.topics {
            if plan.subscribers_per_topic[topic] == 0 {
                continue;
            }
            let first = first_seq(topic, &group_replay[topic]);
            let mut missing = Missing::default();
            for k in 0..ppt {
                let set = &merged[topic * ppt + k];
                tally.duplicated += set.received() - set.unique();
                tally.out_of_order += set.out_of_order();
                missing += tally.stream(
                    &streams[topic * ppt + k],
                    first,
                    start_all,
                    set.unique(),
                    |bound| set.unique_below(bound),
                );
            }
            tally.settle(missing, group_replay[topic].gap_missed);
        }
    }

    let mut counters = Counters::default();
    let mut histogram = latency::new_histogram();
    let mut errors: Vec<String> = Vec::new();
    for output in outputs {
        counters.add(&output.counters);
        // Same bounds on both sides, so adding cannot fail.
        let _ = histogram.add(&output.latency);
        for e in &output.errors {
            if !errors.contains(e) && errors.len() < 32 {
                errors.push(e.clone());
            }
        }
    }
    let replay = (plan.prefill > 0 || start != Start::New).then(|| {
        let timings = || outputs.iter().map(|o| o.timing);
        let span_s = |from: Option<u64>, to: Option<u64>| match (from, to) {
            (Some(from), Some(to)) if to > from => (to - from) as f64 / 1e9,
            _ => 0.0,
        };
        let prefill_s = span_s(
            timings()
                .map(|t| t.prefill_start_ns)
                .filter(|&ns| ns > 0)
                .min(),
            timings().map(|t| t.prefill_end_ns).max(),
        );
        let drain_s = span_s(
            timings().map(|t| t.subscribe_ns).filter(|&ns| ns > 0).min(),
            timings().map(|t| t.last_replay_ns).max(),
        );
        report::ReplaySummary {
            start: replay::start_name(start),
            prefill: plan.prefill,
            prefill_published: counters.prefilled,
            prefill_s,
            requested: tally.replay_requested,
            replayed: tally.replayed,
            not_retained: tally.not_retained,
            drain_s,
            msgs_per_s: if drain_s > 0.0 {
                tally.replayed as f64 / drain_s
            } else {
                0.0
            },
        }
    });
    report::build(report::Totals {
        scenario,
        acks: plan.delivery.acks.is_some(),
        group: plan.delivery.group.clone(),
        target: plan.endpoint.target,
        target_addr: &plan.endpoint.text,
        threads: plan.threads,
        counters: &counters,
        delivered: tally.delivered,
        expected_deliveries: tally.expected,
        lost: tally.lost,
        duplicated: tally.duplicated,
        out_of_order: tally.out_of_order,
        phantom: tally.phantom,
        histogram: &histogram,
        error_messages: errors,
        replay,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn bench(args: &[&str]) -> BenchArgs {
        let mut argv = vec!["corebus", "bench"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Bench(args) => *args,
            other => panic!("bench expected, got {other:?}"),
        }
    }

    #[test]
    fn a_gap_excuses_only_missing_replayed_messages() {
        let check = |all, replay, gap_missed, lost| {
            let mut tally = Tally::default();
            tally.settle(Missing { all, replay }, gap_missed);
            assert_eq!(
                tally.lost, lost,
                "missing {all} ({replay} replayed), gap {gap_missed}"
            );
        };
        check(10, 10, 10, 0);
        check(10, 4, 10, 6); // a GAP larger than the replay's misses hides no live loss
        check(10, 10, 3, 7);
        check(0, 0, 5, 0);
    }

    #[test]
    fn flags_parse_and_override_presets() {
        let args = bench(&[
            "--target",
            "nats://127.0.0.1:4222",
            "--preset",
            "fanout-16",
            "--subscribers",
            "4",
            "--rate",
            "1000",
            "--cores",
            "1",
        ]);
        assert!(args.command.is_none());
        let s = Scenario::resolve(&args.run.overrides()).unwrap();
        assert_eq!(
            (s.publishers, s.subscribers, s.topics, s.rate),
            (1, 4, 1, 1000)
        );
        assert_eq!(args.run.cores, Some(CoreList(vec![1])));
        let args = bench(&["--preset", "1:1"]);
        assert_eq!(args.run.preset, Some(Preset::OneToOne));
    }

    #[test]
    fn start_and_prefill_reach_the_subscribe_options() {
        let args = bench(&["--start", "last:5", "--prefill", "10", "--group", "g"]);
        assert_eq!(args.run.start, Some(Start::LastN(5)));
        assert_eq!(args.run.prefill, 10);
        let scenario = Scenario::resolve(&args.run.overrides()).unwrap();
        let delivery =
            delivery_mode(&args.run, &scenario, wire::Target::Corebus, "0000abcd").unwrap();
        let options = delivery.options(3);
        assert_eq!(options.start, Start::LastN(5));
        assert_eq!(
            options.sharing,
            crate::protocol::subscribe_options::Sharing::Group("g".into())
        );
        // Without the flags, subscriptions start at new messages and send no options.
        let args = bench(&[]);
        assert_eq!((args.run.start, args.run.prefill), (None, 0));
        let delivery =
            delivery_mode(&args.run, &scenario, wire::Target::Redis, "0000abcd").unwrap();
        assert!(delivery.options(0).is_default());
        let error = Cli::try_parse_from(["corebus", "bench", "--start", "seq:0"]).unwrap_err();
        assert!(error.to_string().contains("seq:N"), "{error}");
    }

    #[test]
    fn progress_lines() {
        let s = Scenario::resolve(&scenario::Overrides::default()).unwrap();
        let line = progress_line(
            &s,
            1_000_000_000,
            4_000_000_000,
            1_234_567.0,
            999.0,
            3_000,
            12,
        );
        assert_eq!(
            line,
            "measure   3.0/12s  pub 1.23M/s  del 999/s  (total 3.0k / 12)"
        );
        assert!(progress_line(&s, 0, 5, 0.0, 0.0, 0, 0).starts_with("set-up"));
    }

    #[test]
    fn plot_is_a_subcommand() {
        let args = bench(&["plot", "a.json", "b.json", "-o", "out.svg"]);
        let Some(BenchCommand::Plot(plot)) = args.command else {
            panic!("plot expected");
        };
        assert_eq!(plot.inputs.len(), 2);
        assert_eq!(plot.output, PathBuf::from("out.svg"));
    }

    #[test]
    fn nothing_listening_is_a_set_up_error() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let target = format!("corebus://127.0.0.1:{port}");
        let args = bench(&["--target", &target, "--duration", "0.1", "--quiet"]);
        let error = execute(&args.run).unwrap_err();
        assert!(error.contains("cannot connect"), "{error}");
    }
}
