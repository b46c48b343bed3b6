//! `corebus inspect` and `corebus top`: an operator's views of a running broker, both built
//! on the native STATS request ([`Client::stats`]), so they need only the native port.
//!
//! `inspect` prints one answer as tables (or the answer itself with `--json`). `top` asks
//! every interval and shows what changed: rates per shard and per topic between two answers
//! (by the broker's clock, `time_ms`, so a late refresh does not skew them), the in-broker
//! latency quantiles since start, and the connections holding more than half their outbound
//! limit. On a terminal it draws a full-screen view with `ratatui` (q, Esc or Ctrl-C quits);
//! otherwise, or with `--plain`, it prints one block of `key=value` lines per refresh, which
//! logs and scripts can read.
//!
//! The views are plain data ([`TopView`]) computed from two answers, so what they show is
//! unit-tested without a terminal; drawing and printing only lay them out.

use std::error::Error;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

use crate::cli::{InspectArgs, TopArgs};
use crate::client::{Client, ConnectionInfo, LatencySummary, Stats};

type CommandResult = Result<(), Box<dyn Error>>;

fn connect(addr: &str) -> Result<Client, Box<dyn Error>> {
    Client::connect(addr).map_err(|e| format!("cannot reach the broker at {addr}: {e}").into())
}

/// `corebus inspect`: one STATS answer, as tables or JSON.
pub fn inspect(args: &InspectArgs) -> CommandResult {
    let mut client = connect(&args.addr)?;
    let stats = match &args.topic {
        Some(topic) => client.stats_with_subscribers(topic)?,
        None => client.stats()?,
    };
    client.close()?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &stats)?;
        writeln!(out)?;
    } else {
        out.write_all(inspect_text(&stats).as_bytes())?;
    }
    Ok(())
}

/// The tables `inspect` prints: a summary line, then topics, consumers, slow consumers and
/// (for a named topic) its subscribers; empty tables are left out.
pub fn inspect_text(stats: &Stats) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "corebus: up {}, {} shard(s){}, {} connection(s), {} topic(s), published {}, delivered {}",
        uptime(stats.uptime_seconds),
        stats.shards.len(),
        if stats.partial {
            " (a shard did not answer)"
        } else {
            ""
        },
        stats.connections,
        stats.topics.len(),
        stats.counters.published,
        stats.counters.delivered,
    );
    let _ = writeln!(
        text,
        "latency: delivery {}; ack {}",
        latency_text(&stats.latency.delivery),
        latency_text(&stats.latency.ack),
    );
    let topics: Vec<Vec<String>> = stats
        .topics
        .iter()
        .map(|(name, topic)| {
            vec![
                name.clone(),
                topic.owner_shard.to_string(),
                topic.messages.to_string(),
                topic.subscribers.to_string(),
                topic.consumers.len().to_string(),
                retained_range(topic.retained_first_seq, topic.retained_last_seq),
                topic.retained_messages.to_string(),
                bytes(topic.retained_bytes as f64),
            ]
        })
        .collect();
    section(
        &mut text,
        "Topics",
        &[
            "TOPIC",
            "SHARD",
            "MESSAGES",
            "SUBSCRIBERS",
            "CONSUMERS",
            "RETAINED SEQS",
            "RETAINED",
            "BYTES",
        ],
        topics,
    );
    let consumers: Vec<Vec<String>> = stats
        .topics
        .iter()
        .flat_map(|(name, topic)| {
            topic.consumers.iter().map(move |consumer| {
                vec![
                    name.clone(),
                    consumer.name.clone(),
                    if consumer.group { "group" } else { "durable" }.to_owned(),
                    consumer.members.to_string(),
                    consumer.in_flight.to_string(),
                    consumer.lag.to_string(),
                ]
            })
        })
        .collect();
    section(
        &mut text,
        "Consumers",
        &["TOPIC", "CONSUMER", "KIND", "MEMBERS", "IN FLIGHT", "LAG"],
        consumers,
    );
    section(
        &mut text,
        "Slow consumers",
        &[
            "SHARD",
            "CONNECTION",
            "CLIENT",
            "PROTOCOL",
            "PEER",
            "QUEUED",
        ],
        stats.slow_consumers.iter().map(slow_consumer_row).collect(),
    );
    if let Some(topic) = &stats.topic {
        let subscribers = stats
            .subscribers
            .iter()
            .map(|s| {
                vec![
                    s.shard.to_string(),
                    s.connection.clone(),
                    s.client_name.clone(),
                    s.protocol.clone(),
                    s.peer.clone(),
                    s.sub_id.to_string(),
                    s.subject.clone(),
                    s.consumer.clone().unwrap_or_default(),
                ]
            })
            .collect::<Vec<_>>();
        let title = format!("Subscribers of {topic}");
        if subscribers.is_empty() {
            let _ = writeln!(text, "\n{title}: none");
        }
        section(
            &mut text,
            &title,
            &[
                "SHARD",
                "CONNECTION",
                "CLIENT",
                "PROTOCOL",
                "PEER",
                "SUB",
                "SUBJECT",
                "CONSUMER",
            ],
            subscribers,
        );
    }
    text
}

fn slow_consumer_row(c: &ConnectionInfo) -> Vec<String> {
    vec![
        c.shard.to_string(),
        c.connection.clone(),
        c.client_name.clone(),
        c.protocol.clone(),
        c.peer.clone(),
        bytes(c.queued_bytes as f64),
    ]
}

fn section(text: &mut String, title: &str, headers: &[&str], rows: Vec<Vec<String>>) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(text, "\n{title}");
    text.push_str(&table(headers, &rows));
}

/// Columns whose cells are counts, sizes or ranges, aligned right; the rest (names,
/// addresses) left.
const NUMERIC_COLUMNS: &[&str] = &[
    "SHARD",
    "MESSAGES",
    "SUBSCRIBERS",
    "CONSUMERS",
    "RETAINED SEQS",
    "RETAINED",
    "BYTES",
    "MEMBERS",
    "IN FLIGHT",
    "LAG",
    "QUEUED",
    "SUB",
];

/// Columns padded to their widest cell, numbers right-aligned ([`NUMERIC_COLUMNS`]).
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let right: Vec<bool> = headers
        .iter()
        .map(|h| NUMERIC_COLUMNS.contains(h))
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            let gap = if i == 0 { "" } else { "  " };
            if right[i] {
                let _ = write!(out, "{gap}{cell:>width$}");
            } else {
                let _ = write!(out, "{gap}{cell:<width$}");
            }
        }
        text.push_str(out.trim_end());
        text.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    text
}

fn retained_range(first: u64, last: u64) -> String {
    if last == 0 {
        "-".to_owned()
    } else {
        format!("{first}..{last}")
    }
}

fn uptime(seconds: u64) -> String {
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3600 % 24, seconds / 60 % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m{}s", seconds % 60),
        (0, _, _) => format!("{hours}h{minutes}m"),
        _ => format!("{days}d{hours}h"),
    }
}

/// A count per second, short: `950/s`, `12.5k/s`, `3.20M/s`.
fn per_second(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{:.2}M/s", rate / 1e6)
    } else if rate >= 1e4 {
        format!("{:.1}k/s", rate / 1e3)
    } else {
        format!("{rate:.0}/s")
    }
}

fn bytes(n: f64) -> String {
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n:.0} B")
    }
}

/// Microseconds as the unit that reads best.
fn micros(us: f64) -> String {
    if us >= 1e6 {
        format!("{:.2} s", us / 1e6)
    } else if us >= 1e3 {
        format!("{:.1} ms", us / 1e3)
    } else {
        format!("{us:.0} µs")
    }
}

fn latency_text(latency: &LatencySummary) -> String {
    if latency.count == 0 {
        return "no samples".to_owned();
    }
    format!(
        "p50 {} p90 {} p99 {} p99.9 {} max {} ({} samples)",
        micros(latency.p50_us),
        micros(latency.p90_us),
        micros(latency.p99_us),
        micros(latency.p999_us),
        micros(latency.max_us),
        latency.count
    )
}

/// What `top` shows at one refresh: the latest answer, with rates against the one before.
#[derive(Clone, Debug, Default)]
pub struct TopView {
    pub uptime_seconds: u64,
    pub shards_answered: usize,
    pub partial: bool,
    pub connections: u64,
    pub published_per_second: f64,
    pub delivered_per_second: f64,
    pub dropped_per_second: f64,
    pub slow_consumer_disconnects: u64,
    pub delivery: LatencySummary,
    pub ack: LatencySummary,
    pub shards: Vec<ShardRow>,
    /// The busiest topics first (by messages per second, then by name).
    pub topics: Vec<TopicRow>,
    pub slow_consumers: Vec<ConnectionInfo>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardRow {
    pub shard: u16,
    pub connections: u64,
    pub topics: u64,
    pub published_per_second: f64,
    pub delivered_per_second: f64,
    pub bytes_in_per_second: f64,
    pub bytes_out_per_second: f64,
    pub delivery_p99_us: f64,
    pub delivery_max_us: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopicRow {
    pub name: String,
    pub owner_shard: u16,
    pub messages_per_second: f64,
    pub subscribers: u64,
    pub retained_messages: u64,
    /// The largest lag among its consumers.
    pub lag_max: u64,
}

impl TopView {
    /// The view of `now`, with rates since `before` (none on the first refresh: rates 0).
    pub fn between(before: Option<&Stats>, now: &Stats, topics_max: usize) -> TopView {
        let seconds = before
            .map(|b| now.time_ms.saturating_sub(b.time_ms) as f64 / 1000.0)
            .unwrap_or(0.0);
        // A counter that went down (a restarted broker) has no rate.
        let rate = |now: u64, before: Option<u64>| match before {
            Some(before) if seconds > 0.0 && now >= before => (now - before) as f64 / seconds,
            _ => 0.0,
        };
        let shards = now
            .by_shard
            .iter()
            .map(|part| {
                let earlier =
                    before.and_then(|b| b.by_shard.iter().find(|p| p.shard == part.shard));
                let latency = now.latency.by_shard.iter().find(|l| l.shard == part.shard);
                ShardRow {
                    shard: part.shard,
                    connections: part.connections,
                    topics: part.topics,
                    published_per_second: rate(
                        part.counters.published,
                        earlier.map(|e| e.counters.published),
                    ),
                    delivered_per_second: rate(
                        part.counters.delivered,
                        earlier.map(|e| e.counters.delivered),
                    ),
                    bytes_in_per_second: rate(
                        part.counters.bytes_in,
                        earlier.map(|e| e.counters.bytes_in),
                    ),
                    bytes_out_per_second: rate(
                        part.counters.bytes_out,
                        earlier.map(|e| e.counters.bytes_out),
                    ),
                    delivery_p99_us: latency.map_or(0.0, |l| l.delivery.p99_us),
                    delivery_max_us: latency.map_or(0.0, |l| l.delivery.max_us),
                }
            })
            .collect();
        let mut topics: Vec<TopicRow> = now
            .topics
            .iter()
            .map(|(name, topic)| TopicRow {
                name: name.clone(),
                owner_shard: topic.owner_shard,
                messages_per_second: rate(
                    topic.messages,
                    before.map(|b| b.topics.get(name).map_or(0, |t| t.messages)),
                ),
                subscribers: topic.subscribers,
                retained_messages: topic.retained_messages,
                lag_max: topic.consumers.iter().map(|c| c.lag).max().unwrap_or(0),
            })
            .collect();
        topics.sort_by(|a, b| {
            b.messages_per_second
                .total_cmp(&a.messages_per_second)
                .then_with(|| a.name.cmp(&b.name))
        });
        topics.truncate(topics_max);
        TopView {
            uptime_seconds: now.uptime_seconds,
            shards_answered: now.shards.len(),
            partial: now.partial,
            connections: now.connections,
            published_per_second: rate(
                now.counters.published,
                before.map(|b| b.counters.published),
            ),
            delivered_per_second: rate(
                now.counters.delivered,
                before.map(|b| b.counters.delivered),
            ),
            dropped_per_second: rate(now.counters.dropped, before.map(|b| b.counters.dropped)),
            slow_consumer_disconnects: now.counters.slow_consumer_disconnects,
            delivery: now.latency.delivery.clone(),
            ack: now.latency.ack.clone(),
            shards,
            topics,
            slow_consumers: now.slow_consumers.clone(),
        }
    }

    /// The summary line at the top of either view.
    fn headline(&self) -> String {
        format!(
            "up {}, {} shard(s){}, {} connection(s): published {}, delivered {}, dropped {}, {} slow-consumer cut(s)",
            uptime(self.uptime_seconds),
            self.shards_answered,
            if self.partial { " (partial)" } else { "" },
            self.connections,
            per_second(self.published_per_second),
            per_second(self.delivered_per_second),
            per_second(self.dropped_per_second),
            self.slow_consumer_disconnects,
        )
    }

    /// One block of `key=value` lines: `top` first, then a line per shard, per topic shown
    /// and per slow consumer.
    pub fn plain_lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "top uptime_s={} shards={} partial={} connections={} published_per_s={:.1} \
             delivered_per_s={:.1} dropped_per_s={:.1} slow_consumer_disconnects={} \
             delivery_p50_us={:.1} delivery_p90_us={:.1} delivery_p99_us={:.1} \
             delivery_p999_us={:.1} delivery_max_us={:.1} ack_p50_us={:.1} ack_p99_us={:.1} \
             ack_max_us={:.1}",
            self.uptime_seconds,
            self.shards_answered,
            self.partial,
            self.connections,
            self.published_per_second,
            self.delivered_per_second,
            self.dropped_per_second,
            self.slow_consumer_disconnects,
            self.delivery.p50_us,
            self.delivery.p90_us,
            self.delivery.p99_us,
            self.delivery.p999_us,
            self.delivery.max_us,
            self.ack.p50_us,
            self.ack.p99_us,
            self.ack.max_us,
        )];
        for shard in &self.shards {
            lines.push(format!(
                "shard={} connections={} topics={} published_per_s={:.1} delivered_per_s={:.1} \
                 bytes_in_per_s={:.0} bytes_out_per_s={:.0} delivery_p99_us={:.1} \
                 delivery_max_us={:.1}",
                shard.shard,
                shard.connections,
                shard.topics,
                shard.published_per_second,
                shard.delivered_per_second,
                shard.bytes_in_per_second,
                shard.bytes_out_per_second,
                shard.delivery_p99_us,
                shard.delivery_max_us,
            ));
        }
        for topic in &self.topics {
            lines.push(format!(
                "topic={} owner_shard={} messages_per_s={:.1} subscribers={} retained={} lag_max={}",
                topic.name,
                topic.owner_shard,
                topic.messages_per_second,
                topic.subscribers,
                topic.retained_messages,
                topic.lag_max,
            ));
        }
        for slow in &self.slow_consumers {
            lines.push(format!(
                "slow_consumer shard={} connection={} client={:?} protocol={} peer={} queued_bytes={}",
                slow.shard, slow.connection, slow.client_name, slow.protocol, slow.peer, slow.queued_bytes,
            ));
        }
        lines
    }
}

/// `corebus top`.
pub fn top(args: &TopArgs) -> CommandResult {
    let mut client = connect(&args.addr)?;
    let interval = Duration::from_millis(args.interval.max(1));
    let mut before = client.stats()?;
    if args.plain || !std::io::stdout().is_terminal() {
        return top_plain(
            &mut client,
            &mut before,
            (interval, args.count, args.topics),
        );
    }
    let mut terminal = ratatui::init();
    let result = top_screen(&mut terminal, &mut client, before, args, interval);
    ratatui::restore();
    result
}

fn top_plain(
    client: &mut Client,
    before: &mut Stats,
    (interval, count, topics_max): (Duration, u64, usize),
) -> CommandResult {
    let mut out = std::io::stdout().lock();
    let mut refreshes = 0;
    while count == 0 || refreshes < count {
        std::thread::sleep(interval);
        let now = client.stats()?;
        let view = TopView::between(Some(before), &now, topics_max);
        for line in view.plain_lines() {
            writeln!(out, "{line}")?;
        }
        writeln!(out)?;
        out.flush()?;
        *before = now;
        refreshes += 1;
    }
    Ok(())
}

fn top_screen(
    terminal: &mut ratatui::DefaultTerminal,
    client: &mut Client,
    mut before: Stats,
    args: &TopArgs,
    interval: Duration,
) -> CommandResult {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    let mut view = TopView::between(None, &before, args.topics);
    let mut refreshes = 0;
    let mut next_refresh = Instant::now() + interval;
    loop {
        terminal.draw(|frame| draw(frame, &view, &args.addr))?;
        let wait = next_refresh.saturating_duration_since(Instant::now());
        if event::poll(wait)? {
            if let Event::Key(key) = event::read()? {
                let quit = key.kind == KeyEventKind::Press
                    && (matches!(key.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (key.code == KeyCode::Char('c')
                            && key.modifiers.contains(KeyModifiers::CONTROL)));
                if quit {
                    return Ok(());
                }
            }
            continue;
        }
        let now = client.stats()?;
        view = TopView::between(Some(&before), &now, args.topics);
        before = now;
        next_refresh = Instant::now() + interval;
        refreshes += 1;
        if args.count > 0 && refreshes >= args.count {
            terminal.draw(|frame| draw(frame, &view, &args.addr))?;
            return Ok(());
        }
    }
}

fn draw(frame: &mut ratatui::Frame, view: &TopView, addr: &str) {
    use ratatui::layout::{Constraint, Layout};
    use ratatui::style::{Modifier, Style};
    use ratatui::widgets::{Block, Paragraph, Row, Table};

    let bold = Style::default().add_modifier(Modifier::BOLD);
    let header_rows = 4;
    let shard_rows = view.shards.len() as u16 + 3;
    let slow_rows = if view.slow_consumers.is_empty() {
        0
    } else {
        view.slow_consumers.len() as u16 + 3
    };
    let [head, shards, topics, slow] = Layout::vertical([
        Constraint::Length(header_rows),
        Constraint::Length(shard_rows),
        Constraint::Min(4),
        Constraint::Length(slow_rows),
    ])
    .areas(frame.area());

    let summary = Paragraph::new(vec![
        ratatui::text::Line::styled(format!("corebus top  {addr}  (q quits)"), bold),
        ratatui::text::Line::raw(view.headline()),
        ratatui::text::Line::raw(format!(
            "latency since start: delivery {}",
            latency_text(&view.delivery)
        )),
        ratatui::text::Line::raw(format!(
            "                     ack {}",
            latency_text(&view.ack)
        )),
    ]);
    frame.render_widget(summary, head);

    let shard_table = Table::new(
        view.shards.iter().map(|s| {
            Row::new(vec![
                s.shard.to_string(),
                s.connections.to_string(),
                s.topics.to_string(),
                per_second(s.published_per_second),
                per_second(s.delivered_per_second),
                format!("{}/s", bytes(s.bytes_in_per_second)),
                format!("{}/s", bytes(s.bytes_out_per_second)),
                micros(s.delivery_p99_us),
                micros(s.delivery_max_us),
            ])
        }),
        [
            Constraint::Length(5),
            Constraint::Length(11),
            Constraint::Length(7),
            Constraint::Length(11),
            Constraint::Length(11),
            Constraint::Length(12),
            Constraint::Length(12),
            Constraint::Length(11),
            Constraint::Length(11),
        ],
    )
    .header(
        Row::new([
            "SHARD",
            "CONNECTIONS",
            "TOPICS",
            "PUBLISHED",
            "DELIVERED",
            "IN",
            "OUT",
            "DELIV p99",
            "DELIV max",
        ])
        .style(bold),
    )
    .block(Block::bordered().title(" Shards "));
    frame.render_widget(shard_table, shards);

    let topic_table = Table::new(
        view.topics.iter().map(|t| {
            Row::new(vec![
                t.name.clone(),
                t.owner_shard.to_string(),
                per_second(t.messages_per_second),
                t.subscribers.to_string(),
                t.retained_messages.to_string(),
                t.lag_max.to_string(),
            ])
        }),
        [
            Constraint::Min(20),
            Constraint::Length(6),
            Constraint::Length(11),
            Constraint::Length(12),
            Constraint::Length(9),
            Constraint::Length(9),
        ],
    )
    .header(
        Row::new([
            "TOPIC",
            "SHARD",
            "MESSAGES",
            "SUBSCRIBERS",
            "RETAINED",
            "LAG MAX",
        ])
        .style(bold),
    )
    .block(Block::bordered().title(" Topics, busiest first "));
    frame.render_widget(topic_table, topics);

    if !view.slow_consumers.is_empty() {
        let slow_table = Table::new(
            view.slow_consumers
                .iter()
                .map(|c| Row::new(slow_consumer_row(c))),
            [
                Constraint::Length(5),
                Constraint::Length(11),
                Constraint::Min(10),
                Constraint::Length(9),
                Constraint::Length(22),
                Constraint::Length(10),
            ],
        )
        .header(
            Row::new([
                "SHARD",
                "CONNECTION",
                "CLIENT",
                "PROTOCOL",
                "PEER",
                "QUEUED",
            ])
            .style(bold),
        )
        .block(Block::bordered().title(" Slow consumers "));
        frame.render_widget(slow_table, slow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{ConsumerInfo, Counters, ShardPart, TopicInfo};

    fn stats(time_ms: u64, published: u64, topic_messages: u64) -> Stats {
        let counters = Counters {
            published,
            delivered: published * 2,
            ..Counters::default()
        };
        let mut stats = Stats {
            time_ms,
            shards: vec![0],
            counters: counters.clone(),
            by_shard: vec![ShardPart {
                shard: 0,
                counters,
                connections: 3,
                topics: 1,
            }],
            ..Stats::default()
        };
        stats.topics.insert(
            "orders".into(),
            TopicInfo {
                messages: topic_messages,
                subscribers: 2,
                retained_first_seq: 1,
                retained_last_seq: topic_messages,
                retained_messages: topic_messages,
                consumers: vec![ConsumerInfo {
                    name: "billing".into(),
                    lag: 7,
                    ..ConsumerInfo::default()
                }],
                ..TopicInfo::default()
            },
        );
        stats
    }

    #[test]
    fn rates_are_measured_by_the_brokers_clock() {
        let before = stats(10_000, 100, 40);
        let now = stats(12_000, 300, 140);
        let view = TopView::between(Some(&before), &now, 10);
        assert_eq!(view.published_per_second, 100.0);
        assert_eq!(view.delivered_per_second, 200.0);
        assert_eq!(view.shards[0].published_per_second, 100.0);
        assert_eq!(view.topics[0].messages_per_second, 50.0);
        assert_eq!(view.topics[0].lag_max, 7);
        // The first refresh, and a broker that restarted, have no rates.
        assert_eq!(TopView::between(None, &now, 10).published_per_second, 0.0);
        let restarted = TopView::between(Some(&now), &stats(13_000, 5, 5), 10);
        assert_eq!(restarted.published_per_second, 0.0);
        assert_eq!(TopView::between(None, &now, 0).topics.len(), 0);
    }

    #[test]
    fn plain_lines_are_key_value() {
        let view = TopView::between(Some(&stats(0, 0, 0)), &stats(1000, 10, 10), 10);
        let lines = view.plain_lines();
        assert!(
            lines[0].starts_with("top uptime_s=0 shards=1 "),
            "{lines:?}"
        );
        assert!(lines[0].contains(" published_per_s=10.0 "), "{lines:?}");
        assert!(lines[1].starts_with("shard=0 connections=3 "), "{lines:?}");
        assert_eq!(
            lines[2],
            "topic=orders owner_shard=0 messages_per_s=10.0 subscribers=2 retained=10 lag_max=7"
        );
    }

    #[test]
    fn inspect_prints_aligned_tables() {
        let text = inspect_text(&stats(0, 4, 4));
        assert!(text.contains("\nTopics\nTOPIC   SHARD  MESSAGES"), "{text}");
        assert!(
            text.contains("\norders      0         4            2          1           1..4         4    0 B\n"),
            "{text}"
        );
        assert!(text.contains("\nConsumers\n"), "{text}");
        assert!(text.contains("billing"), "{text}");
        assert!(!text.contains("Slow consumers"), "{text}");
    }
}
