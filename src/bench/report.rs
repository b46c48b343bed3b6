//! A run's result: the numbers, the verdict, and the ways to print them (table, JSON, HDR
//! percentile distribution, SVG latency chart).

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::driver::Counters;
use super::scenario::Scenario;
use super::wire::Target;

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Messages timed (those sent after warm-up, duplicates excluded).
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
}

/// One point of the latency distribution.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PercentilePoint {
    /// 0 to 100.
    pub percentile: f64,
    pub latency_us: f64,
    /// Messages at or below this latency.
    pub count: u64,
}

/// The replay phase (`--start`, `--prefill`; corebus only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplaySummary {
    /// `--start` as given: `new`, `all`, `last:N` or `seq:N`.
    pub start: String,
    /// `--prefill`: messages each publisher published to each of its topics before the
    /// subscribers subscribed.
    pub prefill: u64,
    /// Prefill messages published and confirmed, all publishers.
    pub prefill_published: u64,
    /// Seconds from the first prefill publish to the last confirm.
    pub prefill_s: f64,
    /// Replayed deliveries asked for: for each subscription, its topic's prefill messages from
    /// its start on (part of `expected_deliveries`).
    pub requested: u64,
    /// Distinct replayed messages delivered, all subscriptions (part of `delivered`).
    pub replayed: u64,
    /// `--start all`: prefill messages older than the oldest one replayed, i.e. no longer
    /// retained by the broker, hence not asked for (neither expected nor lost).
    pub not_retained: u64,
    /// Seconds from the subscriptions until the last replayed message arrived: how long the
    /// slowest subscriber took to drain its backlog (live messages were flowing meanwhile).
    pub drain_s: f64,
    /// `replayed / drain_s`, all subscribers together.
    pub msgs_per_s: f64,
}

/// Everything one run measured. `--json` prints exactly this.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchResult {
    /// Short name for charts: target and preset (or shape).
    pub label: String,
    pub target: Target,
    pub target_addr: String,
    pub scenario: Scenario,
    /// `--ack`: subscribers were durable consumers (or group members) with acks.
    #[serde(default)]
    pub acks: bool,
    /// `--group NAME`: subscribers shared each topic as one consumer group.
    #[serde(default)]
    pub group: Option<String>,
    pub threads: usize,
    /// The measured window (after warm-up), in seconds.
    pub measured_s: f64,
    /// Messages written over the whole run (warm-up included; the prefill is in `replay`).
    pub published: u64,
    /// Messages sent (scheduled, in open loop) during the measured window.
    pub published_window: u64,
    /// With several publishers: what the one that sent least in the measured window sent, as
    /// a fraction of the mean per publisher. Near 1 when the broker reads its publishers
    /// alike and the bench's threads hold the same number of them each; a broker that
    /// starves one shows here, and so does a bench whose threads hold unequal numbers (3
    /// publishers on 2 threads read 0.77 against a fair broker).
    #[serde(default)]
    pub slowest_publisher_share: Option<f64>,
    pub published_msgs_per_s: f64,
    /// Payload megabytes (10^6 bytes) per second.
    pub published_mb_per_s: f64,
    /// Distinct messages delivered over the whole run, drain included.
    pub delivered: u64,
    /// Distinct messages delivered during the measured window.
    pub delivered_window: u64,
    pub delivered_msgs_per_s: f64,
    pub delivered_mb_per_s: f64,
    /// For each topic, messages published to it times its subscribers.
    pub expected_deliveries: u64,
    /// Messages received, duplicates included.
    pub received: u64,
    /// Expected deliveries that never arrived and that no GAP frame announced (DROPPED ones
    /// are included, and reported in `dropped_reported` too).
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    /// Expected deliveries the broker announced it had already evicted (corebus GAP): a replay
    /// start further back than the topic retains, or a durable consumer outrun by the ring.
    /// Reported, not silent, so not in `lost`.
    #[serde(default)]
    pub gap_missed: u64,
    /// The replay phase, with `--start` or `--prefill`.
    #[serde(default)]
    pub replay: Option<ReplaySummary>,
    /// Deliveries the broker marked as redeliveries (`--ack`); one counts as duplicated only
    /// if its first delivery had arrived too.
    #[serde(default)]
    pub redelivered: u64,
    pub misrouted: u64,
    /// Payloads no publisher sent, and messages from before where a subscription asked to
    /// start.
    pub corrupt: u64,
    /// Losses the target announced itself (corebus `DROPPED`).
    pub dropped_reported: u64,
    /// Open loop: messages due before the end that were never sent (the target or the bench
    /// could not keep up with `--rate`).
    pub behind_schedule: u64,
    pub publish_errors: u64,
    /// Errors the target reported and connections lost.
    pub errors: u64,
    pub error_messages: Vec<String>,
    pub latency_us: LatencySummary,
    /// The latency distribution, for `bench plot`.
    pub percentiles: Vec<PercentilePoint>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

pub fn latency_summary(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    let q = |quantile| us(h.value_at_quantile(quantile));
    LatencySummary {
        count: h.len(),
        min: us(h.min()),
        mean: h.mean() / 1000.0,
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        p999: q(0.999),
        p9999: q(0.9999),
        max: us(h.max()),
    }
}

/// The distribution at HdrHistogram's usual resolution (5 steps per halving of the tail).
pub fn percentile_points(h: &Histogram<u64>) -> Vec<PercentilePoint> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        points.push(PercentilePoint {
            percentile: v.quantile_iterated_to() * 100.0,
            latency_us: us(h.highest_equivalent(v.value_iterated_to())),
            count: total,
        });
    }
    points
}

/// Puts together what the threads measured.
pub struct Totals<'a> {
    pub scenario: &'a Scenario,
    pub acks: bool,
    pub group: Option<String>,
    pub target: Target,
    pub target_addr: &'a str,
    pub threads: usize,
    pub counters: &'a Counters,
    pub delivered: u64,
    pub expected_deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub phantom: u64,
    pub histogram: &'a Histogram<u64>,
    pub error_messages: Vec<String>,
    pub replay: Option<ReplaySummary>,
}

fn slowest_publisher_share(c: &Counters, publishers: usize) -> Option<f64> {
    let least = c.publisher_window_least?;
    (publishers > 1 && c.published_window > 0)
        .then(|| least as f64 * publishers as f64 / c.published_window as f64)
}

pub fn build(t: Totals<'_>) -> BenchResult {
    let s = t.scenario;
    let secs = s.duration_s;
    let mb = |msgs: u64| msgs as f64 * s.size as f64 / 1e6 / secs;
    let shape = match s.preset {
        Some(preset) => preset.name().to_string(),
        None => format!("{}p-{}s-{}t", s.publishers, s.subscribers, s.topics),
    };
    let rate = if s.closed_loop() {
        String::new()
    } else {
        format!(" @{}/s", s.rate)
    };
    let c = t.counters;
    let start = match &t.replay {
        Some(replay) if replay.start != "new" => format!(" start {}", replay.start),
        _ => String::new(),
    };
    BenchResult {
        label: format!("{} {shape} {}B{rate}{start}", t.target, s.size),
        target: t.target,
        target_addr: t.target_addr.to_string(),
        scenario: s.clone(),
        acks: t.acks,
        group: t.group,
        threads: t.threads,
        measured_s: secs,
        published: c.published,
        published_window: c.published_window,
        slowest_publisher_share: slowest_publisher_share(c, s.publishers),
        published_msgs_per_s: c.published_window as f64 / secs,
        published_mb_per_s: mb(c.published_window),
        delivered: t.delivered,
        delivered_window: c.delivered_window,
        delivered_msgs_per_s: c.delivered_window as f64 / secs,
        delivered_mb_per_s: mb(c.delivered_window),
        expected_deliveries: t.expected_deliveries,
        received: c.received,
        lost: t.lost,
        duplicated: t.duplicated,
        out_of_order: t.out_of_order,
        gap_missed: c.gap_missed,
        replay: t.replay,
        redelivered: c.redelivered,
        misrouted: c.misrouted,
        corrupt: c.corrupt + t.phantom,
        dropped_reported: c.dropped_reported,
        behind_schedule: c.behind_schedule,
        publish_errors: c.publish_errors,
        errors: c.errors,
        error_messages: t.error_messages,
        latency_us: latency_summary(t.histogram),
        percentiles: percentile_points(t.histogram),
    }
}

/// Why a run failed, if it did: loss (unless `allow_loss`), duplicates, reordering, misrouted
/// or corrupt messages, errors, or nothing delivered at all. The three targets deliver at most
/// once, in order per publisher and topic, so a healthy run shows none of these.
pub fn verdict(r: &BenchResult, allow_loss: bool) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    // Without --start nothing asked for history, so a GAP means a live consumer fell behind
    // the ring: announced, but loss all the same for a run that promised none (and counted
    // in `lost`, so said once, with the cause).
    let live_gap = if r.replay.is_none() { r.gap_missed } else { 0 };
    const GAP_HINT: &str = "a durable consumer fell behind the replay ring, its backlog: give \
                            the broker a larger --replay-messages/--replay-bytes";
    if r.lost > 0 && !allow_loss {
        let mut problem = format!(
            "{} of {} expected deliveries lost",
            r.lost, r.expected_deliveries
        );
        if live_gap > 0 {
            problem += &format!(
                " ({} of them announced by GAP notices: {GAP_HINT})",
                live_gap.min(r.lost)
            );
        }
        problems.push(problem);
    } else if live_gap > 0 && !allow_loss {
        problems.push(format!(
            "{live_gap} messages evicted before a consumer got them (GAP): {GAP_HINT}"
        ));
    }
    let mut check = |count: u64, what: &str| {
        if count > 0 {
            problems.push(format!("{count} {what}"));
        }
    };
    check(r.duplicated, "duplicated");
    check(r.out_of_order, "out of order");
    check(r.misrouted, "misrouted");
    check(r.corrupt, "corrupt");
    check(r.publish_errors, "publishes refused");
    check(r.errors, "errors");
    if r.published == 0 {
        problems.push("nothing was published".into());
    } else if r.expected_deliveries > 0 && r.delivered == 0 {
        problems.push("nothing was delivered".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The table's words for GAP-announced messages, matching how they are counted: a GAP
/// excuses only the replayed history a `--start` asked for; without one, it means a live
/// durable consumer fell behind the replay ring, and those messages are in `lost`.
fn gap_label(replay: bool) -> &'static str {
    if replay {
        "missed, announced by the broker (GAP; evicted history the replay asked for is not \
         counted as lost, missing live messages are)"
    } else {
        "missed, announced by the broker (GAP: a consumer fell behind the replay ring; \
         counted as lost above)"
    }
}

/// `1234567.8` as `1,234,568`.
fn grouped(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A span given in seconds, in the unit that suits it: `1.25 s`, `3.40 ms`, `120 us`.
fn seconds_text(secs: f64) -> String {
    if secs >= 1.0 {
        format!("{secs:.2} s")
    } else if secs >= 1e-3 {
        format!("{:.2} ms", secs * 1e3)
    } else {
        format!("{:.0} us", secs * 1e6)
    }
}

fn latency_cell(us: f64) -> String {
    if us >= 100_000.0 {
        format!("{:.0}", us)
    } else if us >= 100.0 {
        format!("{:.1}", us)
    } else {
        format!("{:.2}", us)
    }
}

/// The human-readable summary.
pub fn table(r: &BenchResult, allow_loss: bool) -> String {
    let mut o = String::new();
    let s = &r.scenario;
    let _ = writeln!(
        o,
        "corebus bench: {} ({}), {} thread{}",
        r.target_addr,
        r.target,
        r.threads,
        if r.threads == 1 { "" } else { "s" }
    );
    let _ = writeln!(o, "scenario: {}", s.describe());
    match (&r.group, r.acks) {
        (Some(group), acks) => {
            let _ = writeln!(
                o,
                "delivery: consumer group `{group}`{}, each message to one member",
                if acks { " with acks" } else { "" }
            );
        }
        (None, true) => {
            let _ = writeln!(o, "delivery: durable consumers with acks");
        }
        (None, false) => {}
    }
    if let Some(replay) = &r.replay {
        let _ = writeln!(
            o,
            "replay: start {}, prefill {} per publisher per topic ({} published in {})",
            replay.start,
            grouped(replay.prefill as f64),
            grouped(replay.prefill_published as f64),
            seconds_text(replay.prefill_s)
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:<12} {:>14} {:>10} {:>16}",
        "", "msgs/s", "MB/s", "messages"
    );
    let _ = writeln!(
        o,
        "{:<12} {:>14} {:>10.2} {:>16}",
        "published",
        grouped(r.published_msgs_per_s),
        r.published_mb_per_s,
        grouped(r.published_window as f64)
    );
    let _ = writeln!(
        o,
        "{:<12} {:>14} {:>10.2} {:>16}",
        "delivered",
        grouped(r.delivered_msgs_per_s),
        r.delivered_mb_per_s,
        grouped(r.delivered_window as f64)
    );
    let _ = writeln!(
        o,
        "(rates over the {} s measured window; MB = 10^6 payload bytes)",
        r.measured_s
    );
    if let Some(share) = r.slowest_publisher_share {
        let _ = writeln!(
            o,
            "(the publisher that sent least sent {share:.2} of the mean per publisher)"
        );
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "{:>16} {:>16} {:>10} {:>11} {:>13}",
        "expected", "delivered", "lost", "duplicated", "out of order"
    );
    let _ = writeln!(
        o,
        "{:>16} {:>16} {:>10} {:>11} {:>13}",
        grouped(r.expected_deliveries as f64),
        grouped(r.delivered as f64),
        grouped(r.lost as f64),
        grouped(r.duplicated as f64),
        grouped(r.out_of_order as f64)
    );
    if let Some(replay) = &r.replay {
        let _ = writeln!(
            o,
            "replayed: {} of {} asked for, drained in {} ({} msgs/s; from subscribing to the \
             last replayed message)",
            grouped(replay.replayed as f64),
            grouped(replay.requested as f64),
            seconds_text(replay.drain_s),
            grouped(replay.msgs_per_s)
        );
        if replay.not_retained > 0 {
            let _ = writeln!(
                o,
                "not retained (start all: older than the oldest replayed, not asked for): {}",
                grouped(replay.not_retained as f64)
            );
        }
    }
    let extra = [
        (gap_label(r.replay.is_some()), r.gap_missed),
        ("misrouted", r.misrouted),
        ("corrupt", r.corrupt),
        ("dropped (reported by the target)", r.dropped_reported),
        ("behind schedule at the end", r.behind_schedule),
        ("publishes refused", r.publish_errors),
        ("errors", r.errors),
    ];
    if r.acks {
        let _ = writeln!(
            o,
            "redelivered: {} (duplicates only if the first delivery arrived too)",
            grouped(r.redelivered as f64)
        );
    }
    for (what, count) in extra.iter().filter(|(_, n)| *n > 0) {
        let _ = writeln!(o, "{what}: {}", grouped(*count as f64));
    }
    let _ = writeln!(o);
    let l = &r.latency_us;
    let _ = writeln!(
        o,
        "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (us)", "p50", "p90", "p99", "p99.9", "p99.99", "max"
    );
    let _ = writeln!(
        o,
        "{:<14} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "",
        latency_cell(l.p50),
        latency_cell(l.p90),
        latency_cell(l.p99),
        latency_cell(l.p999),
        latency_cell(l.p9999),
        latency_cell(l.max)
    );
    let timing = if s.closed_loop() {
        "closed loop: from write to receipt"
    } else {
        "open loop: from each message's scheduled send time"
    };
    let replayed = if r.replay.is_some() {
        "; replayed messages are not timed"
    } else {
        ""
    };
    let _ = writeln!(
        o,
        "({} messages timed, {timing}{replayed})",
        grouped(l.count as f64)
    );
    for message in &r.error_messages {
        let _ = writeln!(o, "error: {message}");
    }
    let _ = writeln!(o);
    match verdict(r, allow_loss) {
        Ok(()) if r.lost > 0 => {
            let _ = writeln!(o, "result: PASS (loss allowed by --allow-loss)");
        }
        Ok(()) => {
            let _ = writeln!(o, "result: PASS (no loss, no duplicates, in order)");
        }
        Err(problems) => {
            let _ = writeln!(o, "result: FAIL ({})", problems.join(", "));
        }
    }
    o
}

/// HdrHistogram's percentile distribution text, values in microseconds.
pub fn hdr_percentiles(r: &BenchResult) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for p in &r.percentiles {
        let quantile = p.percentile / 100.0;
        if quantile < 1.0 {
            let _ = writeln!(
                o,
                "{:>12.3} {:>14.12} {:>10} {:>14.2}",
                p.latency_us,
                quantile,
                p.count,
                1.0 / (1.0 - quantile)
            );
        } else {
            let _ = writeln!(
                o,
                "{:>12.3} {:>14.12} {:>10}",
                p.latency_us, quantile, p.count
            );
        }
    }
    let l = &r.latency_us;
    let _ = writeln!(
        o,
        "#[Mean    = {:>12.3}, Max         = {:>12.3}]",
        l.mean, l.max
    );
    let _ = writeln!(
        o,
        "#[Total count    = {:>12}, unit = microseconds]",
        l.count
    );
    o
}

/// Where a percentile lands on the chart's x axis: `log10(1 / (1 - p))`, so 90% is 1, 99% is
/// 2, 99.9% is 3...
fn x_of(percentile: f64) -> f64 {
    (1.0 / (1.0 - percentile / 100.0)).log10()
}

fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let nines = x.round() as i32;
    if (x - x.round()).abs() < 1e-9 && nines >= 2 {
        format!("{:.*}%", (nines - 2) as usize, p)
    } else {
        let text = format!("{p:.4}");
        format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
    }
}

fn latency_label(us: f64) -> String {
    if us >= 1_000_000.0 {
        format!("{}s", trim(us / 1e6))
    } else if us >= 1000.0 {
        format!("{}ms", trim(us / 1e3))
    } else {
        format!("{}us", trim(us))
    }
}

fn trim(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Draws latency by percentile for each run on one chart: x is the percentile on a
/// `1/(1-p)` log axis, y the latency on a log axis.
pub fn plot(
    runs: &[(String, Vec<PercentilePoint>)],
    title: &str,
    out: &Path,
) -> Result<(), String> {
    use plotters::prelude::*;

    let finite: Vec<(&String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|(label, points)| {
            let xy = points
                .iter()
                .filter(|p| p.percentile < 100.0 && p.latency_us > 0.0)
                .map(|p| (x_of(p.percentile), p.latency_us))
                .collect();
            (label, xy)
        })
        .collect();
    let all = finite.iter().flat_map(|(_, xy)| xy.iter());
    let (mut x_max, mut y_min, mut y_max) = (2.0f64, f64::MAX, 0.0f64);
    for &(x, y) in all {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if y_max <= 0.0 {
        return Err("no latency percentiles to plot".into());
    }
    let x_max = x_max.ceil();
    let (y_min, y_max) = (y_min * 0.8, y_max * 1.25);

    let err = |e: &dyn std::fmt::Display| format!("cannot draw {}: {e}", out.display());
    let root = SVGBackend::new(out, (1024, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .margin_right(56)
        .x_label_area_size(44)
        .y_label_area_size(72)
        .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| latency_label(*y))
        .x_desc("percentile")
        .y_desc("latency")
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (label, xy)) in finite.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(xy, color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::latency::new_histogram;
    use crate::bench::scenario::{Overrides, Scenario};

    fn result(lost: u64, duplicated: u64) -> BenchResult {
        let scenario = Scenario::resolve(&Overrides::default()).unwrap();
        let mut h = new_histogram();
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap();
        }
        let counters = Counters {
            published: 100,
            published_window: 80,
            received: 100 - lost + duplicated,
            delivered_window: 80,
            ..Counters::default()
        };
        build(Totals {
            scenario: &scenario,
            acks: false,
            group: None,
            target: Target::Corebus,
            target_addr: "corebus://127.0.0.1:7070",
            threads: 1,
            counters: &counters,
            delivered: 100 - lost,
            expected_deliveries: 100,
            lost,
            duplicated,
            out_of_order: 0,
            phantom: 0,
            histogram: &h,
            error_messages: Vec::new(),
            replay: None,
        })
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(&result(0, 0), false), Ok(()));
        assert!(verdict(&result(3, 0), false).unwrap_err()[0].contains("3 of 100"));
        assert_eq!(verdict(&result(3, 0), true), Ok(()));
        assert!(verdict(&result(0, 1), true).is_err());
        let mut r = result(0, 0);
        r.delivered = 0;
        assert!(verdict(&r, true).is_err());
        // A GAP fails a live-only run (a consumer fell behind the ring), not a replay that
        // asked for more than was retained.
        let mut r = result(0, 0);
        r.gap_missed = 5;
        assert!(verdict(&r, false).unwrap_err()[0].contains("5 messages evicted"));
        assert_eq!(verdict(&r, true), Ok(()));
        r.replay = Some(Default::default());
        assert_eq!(verdict(&r, false), Ok(()));
    }

    /// Issue 11, defect 5: a live run's GAP-announced messages are counted as lost, and the
    /// table and the verdict say so (once), instead of "not counted as lost".
    #[test]
    fn the_words_about_gap_missed_messages_match_the_arithmetic() {
        let mut r = result(66, 0);
        r.gap_missed = 66;
        let text = table(&r, false);
        assert!(!text.contains("not counted as lost"), "{text}");
        assert!(
            text.contains("a consumer fell behind the replay ring; counted as lost above): 66"),
            "{text}"
        );
        let problems = verdict(&r, false).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("66 of 100 expected deliveries lost (66 of them announced by GAP"),
            "{problems:?}"
        );
    }

    #[test]
    fn summaries_and_json_round_trip() {
        let r = result(0, 0);
        assert_eq!(r.latency_us.count, 10_000);
        assert!(
            (4990.0..=5010.0).contains(&r.latency_us.p50),
            "{}",
            r.latency_us.p50
        );
        assert!(r.latency_us.max >= 10_000.0);
        assert_eq!(r.published_msgs_per_s, 80.0 / r.scenario.duration_s);
        let last = r.percentiles.last().unwrap();
        assert_eq!((last.percentile, last.count), (100.0, 10_000));
        let json = serde_json::to_string(&r).unwrap();
        let back: BenchResult = serde_json::from_str(&json).unwrap();
        // Floats may differ in the last bit after a JSON round trip; the rest is exact.
        assert_eq!(
            (back.label.as_str(), back.delivered),
            (r.label.as_str(), r.delivered)
        );
        assert_eq!(back.scenario, r.scenario);
        assert_eq!(back.percentiles.len(), r.percentiles.len());
        let text = table(&r, false);
        assert!(text.contains("result: PASS"), "{text}");
        assert!(table(&result(2, 0), false).contains("result: FAIL (2 of 100"));
        let hdr = hdr_percentiles(&r);
        assert!(hdr.lines().next().unwrap().contains("1/(1-Percentile)"));
        assert!(hdr.contains("#[Total count    =        10000"));
    }

    #[test]
    fn the_replay_phase_is_in_the_table_and_the_json() {
        let mut r = result(0, 0);
        r.gap_missed = 40;
        r.replay = Some(ReplaySummary {
            start: "seq:1".into(),
            prefill: 100,
            prefill_published: 100,
            prefill_s: 0.002,
            requested: 100,
            replayed: 60,
            not_retained: 0,
            drain_s: 0.0005,
            msgs_per_s: 120_000.0,
        });
        let text = table(&r, false);
        assert!(text.contains("replay: start seq:1, prefill 100 per publisher per topic (100 published in 2.00 ms)"), "{text}");
        assert!(
            text.contains("replayed: 60 of 100 asked for, drained in 500 us (120,000 msgs/s"),
            "{text}"
        );
        assert!(
            text.contains("evicted history the replay asked for is not counted as lost"),
            "{text}"
        );
        assert!(text.contains("replayed messages are not timed"), "{text}");
        assert!(
            text.contains("result: PASS"),
            "a GAP is not a failure: {text}"
        );
        let back: BenchResult = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.replay, r.replay);
        assert_eq!(back.gap_missed, 40);
        // Results saved before replay existed still load.
        let mut old = serde_json::to_value(result(0, 0)).unwrap();
        let object = old.as_object_mut().unwrap();
        object.remove("replay");
        object.remove("gap_missed");
        let back: BenchResult = serde_json::from_value(old).unwrap();
        assert_eq!((back.replay, back.gap_missed), (None, 0));
    }

    #[test]
    fn axis_labels() {
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(4.0), "99.99%");
        assert_eq!(latency_label(12.5), "12.5us");
        assert_eq!(latency_label(2500.0), "2.5ms");
        assert_eq!(grouped(1234567.4), "1,234,567");
        assert_eq!(grouped(12.0), "12");
        assert_eq!(seconds_text(2.5), "2.50 s");
        assert_eq!(seconds_text(0.0034), "3.40 ms");
        assert_eq!(seconds_text(0.00012), "120 us");
        assert!((x_of(99.9) - 3.0).abs() < 1e-9);
    }

    #[test]
    fn plots_an_svg() {
        let dir = std::env::temp_dir().join(format!("corebus-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("chart.svg");
        let a = result(0, 0);
        let runs = vec![
            ("a".to_string(), a.percentiles.clone()),
            (
                "b".to_string(),
                a.percentiles
                    .iter()
                    .map(|p| PercentilePoint {
                        latency_us: p.latency_us * 2.0,
                        ..*p
                    })
                    .collect(),
            ),
        ];
        plot(&runs, "test", &out).unwrap();
        let svg = std::fs::read_to_string(&out).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("99.9%"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(plot(&[], "empty", &out).is_err());
    }
}
