//! Broker-wide stats, gathered on demand from every shard over the rings: no shared mutable
//! state, no locks. The asking shard sends each peer a `Stats` request; each shard answers
//! for the topics it owns (their subscriber counts cover every shard, since the owner counts
//! them) and its own counters. Answers are merged on the asking connection; a shard that has
//! not answered within [`GATHER_DEADLINE`] is left out and the answer says it is partial.
//!
//! The same parts answer every view: `/v1/stats` and the native STATS (one JSON document),
//! `/metrics`, Redis `INFO`, and presence (`/v1/topics/{name}/subscribers`, STATS with a
//! topic), for which each shard also lists its subscriptions to the named topic.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::error::{CloseReason, ErrorCode};
use crate::ids::ConnectionId;
use crate::mesh::message::{OwnerRequest, ReplyTarget};
use crate::protocol::http::{self, ConnectionHeader, ResponseHead, Status};
use crate::protocol::native::Frame;
use crate::protocol::topic::{pattern_matches, SubjectKind};

use super::conn_http::{Awaiting, PendingHttp};
use super::latency::{LatencyHistogram, ShardLatency, BUCKET_BOUNDS_NS, QUANTILES};
use super::wire::{Protocol, Wire};
use super::{Flow, Shard, ShardCounters};

/// How long an answer waits for the slowest shard.
pub const GATHER_DEADLINE: Duration = Duration::from_millis(500);

/// What was asked, which decides the answer's shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatsQuery {
    /// Who receives this topic (presence).
    V1Subscribers {
        topic: Box<str>,
    },
    V1Topics,
    Topics,
    V1Health,
    Health,
    V1Stats,
    Stats,
    Metrics,
}

/// One owned topic, as its owner sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicStats {
    pub name: Box<str>,
    /// Exact subscriptions on every shard.
    pub subscribers: u64,
    /// Messages published (the last sequence number).
    pub messages: u64,
    pub retained_messages: u64,
    pub retained_bytes: u64,
    /// The retained range, `first..=last` (0 when nothing is retained).
    pub retained_first_seq: u64,
    pub retained_last_seq: u64,
    pub consumers: Vec<ConsumerStats>,
}

/// A durable consumer or group of a topic, on the topic's owner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    pub name: Box<str>,
    pub group: bool,
    pub members: u64,
    pub in_flight: u64,
    /// Messages not acknowledged yet (not delivered yet, for one without acks).
    pub lag: u64,
}

/// One connection as the stats show it (a subscriber, or a slow consumer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionSummary {
    pub shard: u16,
    pub connection: ConnectionId,
    /// HELLO's client name (native), `CLIENT SETNAME`'s (Redis), the `client_id` (WebSocket:
    /// the one FastAPI's dialect hands out, Go/Fiber's first subscribe's), or empty.
    pub client_name: String,
    pub protocol: Protocol,
    pub peer: std::net::SocketAddr,
    /// Bytes accepted for it and not yet written.
    pub queued_bytes: u64,
}

/// One subscription that receives a topic's messages (presence).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceEntry {
    pub connection: ConnectionSummary,
    pub sub_id: u32,
    /// The topic itself, or the pattern that matched it.
    pub subject: Box<str>,
    /// The durable consumer or group it belongs to.
    pub consumer: Option<Box<str>>,
}

/// How many slow consumers each shard lists in a stats answer (the most queued first);
/// the counters still count every one.
pub const SLOW_CONSUMERS_LISTED_MAX: usize = 20;

/// One shard's part.
#[derive(Clone, Debug, Default)]
pub struct ShardStats {
    /// Which shard this part is from (the `shard` label in `/metrics`).
    pub shard: u16,
    pub topics: Vec<TopicStats>,
    pub counters: ShardCounters,
    pub connections: u64,
    /// Open connections by protocol, indexed like [`Protocol::ALL`].
    pub connections_by_protocol: [u64; Protocol::ALL.len()],
    /// Distinct patterns this shard's connections subscribe to (Redis's `PUBSUB NUMPAT`
    /// counts them broker-wide).
    pub patterns: Vec<Box<str>>,
    /// One `CLIENT LIST` line per RESP connection on this shard.
    pub resp_clients: Vec<String>,
    pub latency: ShardLatency,
    /// The subscriptions to the topic the request named, on this shard.
    pub presence: Vec<PresenceEntry>,
    /// This shard's connections holding more than half their outbound limit, the most
    /// queued first, at most [`SLOW_CONSUMERS_LISTED_MAX`].
    pub slow_consumers: Vec<ConnectionSummary>,
}

/// A native STATS waiting for the shards' parts, on its connection.
#[derive(Debug)]
pub struct NativeStatsGather {
    request_id: u32,
    /// The topic whose subscribers were asked for.
    presence: Option<Box<str>>,
    gathered: BrokerStats,
}

/// The parts gathered so far.
#[derive(Debug, Default)]
pub struct BrokerStats {
    pub parts: Vec<ShardStats>,
    pub started: Option<Instant>,
}

impl Shard {
    /// This shard's part; with the subscriptions to `presence`, if it names a topic.
    pub(super) fn shard_stats(
        &self,
        presence: Option<&str>,
        resp_client_lines: bool,
    ) -> ShardStats {
        let mut connections_by_protocol = [0; Protocol::ALL.len()];
        for (_, conn) in &self.connections {
            connections_by_protocol[conn.wire.protocol() as usize] += 1;
        }
        ShardStats {
            shard: self.id.0,
            connections_by_protocol,
            topics: self
                .owned
                .iter()
                .map(|(name, topic)| {
                    let last_seq = topic.position().last_seq;
                    TopicStats {
                        name: name.into(),
                        subscribers: topic.subscriber_count(),
                        messages: last_seq,
                        retained_messages: topic.replay.len() as u64,
                        retained_bytes: topic.replay.bytes() as u64,
                        retained_first_seq: topic.replay.first_seq().unwrap_or(0),
                        retained_last_seq: match topic.replay.is_empty() {
                            true => 0,
                            false => topic.replay.last_seq(),
                        },
                        consumers: topic
                            .consumers
                            .iter()
                            .map(|(name, consumer)| ConsumerStats {
                                name: name.clone(),
                                group: consumer.is_group,
                                members: consumer.members.len() as u64,
                                in_flight: consumer.in_flight() as u64,
                                lag: consumer.lag(last_seq),
                            })
                            .collect(),
                    }
                })
                .collect(),
            counters: self.counters.clone(),
            connections: self.connections.len() as u64,
            patterns: self.local.pattern_names().map(Into::into).collect(),
            resp_clients: match resp_client_lines {
                true => self.resp_client_lines(),
                false => Vec::new(),
            },
            latency: self.latency.clone(),
            presence: presence.map_or_else(Vec::new, |topic| self.presence(topic)),
            slow_consumers: self.slow_consumers(),
        }
    }

    pub(super) fn connection_summary(
        &self,
        conn: &super::connection::Connection,
    ) -> ConnectionSummary {
        let client_name = match &conn.wire {
            Wire::Resp(session) => String::from_utf8_lossy(session.client_name()).into_owned(),
            _ => conn.client_name.clone(),
        };
        ConnectionSummary {
            shard: self.id.0,
            connection: conn.id,
            client_name,
            protocol: conn.wire.protocol(),
            peer: conn.peer,
            queued_bytes: conn.queued_bytes() as u64,
        }
    }

    /// Every subscription on this shard's connections that receives `topic`'s messages:
    /// exact ones, consumers' and patterns that match it. Walks every connection: an
    /// operator's question, not a hot path.
    fn presence(&self, topic: &str) -> Vec<PresenceEntry> {
        let mut entries = Vec::new();
        for (_, conn) in &self.connections {
            for (&sub_id, record) in &conn.subscriptions {
                let receives = match record.kind {
                    SubjectKind::Exact => *record.subject == *topic,
                    SubjectKind::Pattern => pattern_matches(&record.subject, topic),
                };
                if receives {
                    entries.push(PresenceEntry {
                        connection: self.connection_summary(conn),
                        sub_id,
                        subject: record.subject.clone(),
                        consumer: record.consumer.clone(),
                    });
                }
            }
        }
        entries.sort_unstable_by_key(|entry| (entry.connection.connection.index, entry.sub_id));
        entries
    }

    /// The connections holding more than half their outbound limit, the most queued first.
    fn slow_consumers(&self) -> Vec<ConnectionSummary> {
        let half = self.config.outbound_bytes_max / 2;
        let mut slow: Vec<ConnectionSummary> = self
            .connections
            .iter()
            .filter(|(_, conn)| conn.queued_bytes() > half)
            .map(|(_, conn)| self.connection_summary(conn))
            .collect();
        slow.sort_unstable_by_key(|c| std::cmp::Reverse(c.queued_bytes));
        slow.truncate(SLOW_CONSUMERS_LISTED_MAX);
        slow
    }

    /// Asks every shard for its part for request `request_id`; the caller checked
    /// `terminal_room`.
    pub(super) fn start_gathering(&mut self, id: ConnectionId, request_id: u32) {
        self.gather(id, request_id, None, false);
    }

    /// Like [`Shard::start_gathering`], with each shard's subscriptions to `presence`.
    pub(super) fn start_gathering_presence(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        presence: Option<&str>,
    ) {
        self.gather(id, request_id, presence, false);
    }

    /// Like [`Shard::start_gathering`], with a `CLIENT LIST` line for every RESP connection.
    pub(super) fn start_gathering_client_lines(&mut self, id: ConnectionId, request_id: u32) {
        self.gather(id, request_id, None, true);
    }

    /// The lines are asked for only by `CLIENT LIST`: with thousands of clients they are most
    /// of a snapshot, which every `INFO` and `PUBSUB` would otherwise build on every shard.
    fn gather(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        presence: Option<&str>,
        resp_client_lines: bool,
    ) {
        let own = self.shard_stats(presence, resp_client_lines);
        let reply = ReplyTarget {
            connection: id,
            request_id,
        };
        for peer in 0..self.links.len() {
            if let Some(link) = self.links[peer].as_mut() {
                link.requests_out.push(OwnerRequest::Stats {
                    reply,
                    presence: presence.map(Into::into),
                    resp_client_lines,
                });
            }
        }
        self.gather_deadlines
            .push_back((Instant::now() + GATHER_DEADLINE, reply));
        self.add_stats_part(reply, own);
    }

    /// A shard's part arrived (this one's included); answers once all are in.
    pub(super) fn add_stats_part(&mut self, reply: ReplyTarget, part: ShardStats) {
        let shards = self.shard_count;
        let id = reply.connection;
        let Some(conn) = self.connection_mut(id) else {
            return;
        };
        let session = match &mut conn.wire {
            Wire::Http(session) => session,
            Wire::Resp(_) => return self.resp_stats_part(reply, part),
            Wire::InProcess => return self.in_process_stats_part(reply, part),
            Wire::Native { .. } => return self.native_stats_part(reply, part),
            _ => return,
        };
        let Some(PendingHttp {
            awaiting: Awaiting::Stats { gathered, .. },
            ..
        }) = &mut session.pending
        else {
            return;
        };
        gathered.parts.push(part);
        if gathered.parts.len() == shards {
            self.answer_stats(reply);
        }
    }

    /// Answers with what was gathered (all of it, or what came before the deadline).
    pub(super) fn answer_stats(&mut self, reply: ReplyTarget) {
        let shards = self.shard_count;
        let uptime = self.started.elapsed().as_secs();
        let topics_max = self.config.metrics_topics_max;
        let id = reply.connection;
        let Some(conn) = self.connection_mut(id) else {
            return;
        };
        let session = match &mut conn.wire {
            Wire::Http(session) => session,
            Wire::Resp(_) => return self.resp_answer_gather(reply),
            Wire::InProcess => return self.in_process_answer_stats(reply),
            Wire::Native { .. } => return self.native_answer_stats(reply),
            _ => return,
        };
        let Some(PendingHttp {
            connection,
            omit_body,
            awaiting: Awaiting::Stats { query, gathered },
            ..
        }) = session.pending.take()
        else {
            return;
        };
        session.answered = Some(connection);
        let partial = gathered.parts.len() < shards;
        let out = conn.out.replies();
        let response_start = out.len();
        encode_stats(
            query,
            &gathered,
            (uptime, partial, topics_max),
            connection,
            out,
        );
        if omit_body {
            http::omit_response_body(out, response_start);
        }
        self.mark_dirty(id);
        self.after_http_answer(id, connection);
    }

    /// A native STATS: checks the topic it names, then gathers.
    pub(super) fn handle_native_stats(
        &mut self,
        id: ConnectionId,
        request_id: u32,
        topic: &[u8],
    ) -> Flow {
        let presence = match topic {
            [] => None,
            topic => match crate::protocol::topic::parse_subscription(topic) {
                Ok((topic, SubjectKind::Exact)) => Some(topic),
                Ok((_, SubjectKind::Pattern)) => {
                    self.reply_err(
                        id,
                        request_id,
                        ErrorCode::BadTopic,
                        "STATS names an exact topic, not a pattern",
                    );
                    return Flow::Continue;
                }
                Err(error) => {
                    self.reply_err(id, request_id, ErrorCode::BadTopic, error.reason());
                    return Flow::Continue;
                }
            },
        };
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        if conn.stats_gather.is_some() {
            self.reply_err(
                id,
                request_id,
                ErrorCode::RateLimited,
                "a STATS is already being gathered on this connection: one at a time",
            );
            return Flow::Continue;
        }
        if !self.terminal_room() {
            return Flow::Blocked;
        }
        let Some(conn) = self.connection_mut(id) else {
            return Flow::Stop;
        };
        conn.stats_gather = Some(Box::new(NativeStatsGather {
            request_id,
            presence: presence.map(Into::into),
            gathered: BrokerStats::default(),
        }));
        self.start_gathering_presence(id, request_id, presence);
        Flow::Continue
    }

    fn native_stats_part(&mut self, reply: ReplyTarget, part: ShardStats) {
        let shards = self.shard_count;
        let Some(gather) = self
            .connection_mut(reply.connection)
            .and_then(|conn| conn.stats_gather.as_mut())
            .filter(|gather| gather.request_id == reply.request_id)
        else {
            return;
        };
        gather.gathered.parts.push(part);
        if gather.gathered.parts.len() == shards {
            self.native_answer_stats(reply);
        }
    }

    /// Answers a native STATS with what was gathered: OK with the JSON document, or
    /// `TOPIC_NOT_FOUND` for a topic no shard owns (when every shard answered).
    fn native_answer_stats(&mut self, reply: ReplyTarget) {
        let shards = self.shard_count;
        let uptime = self.started.elapsed().as_secs();
        let Some(conn) = self.connection_mut(reply.connection) else {
            return;
        };
        if conn
            .stats_gather
            .as_ref()
            .is_none_or(|gather| gather.request_id != reply.request_id)
        {
            return;
        }
        let Some(gather) = conn.stats_gather.take() else {
            return;
        };
        let partial = gather.gathered.parts.len() < shards;
        let mut document = stats_document(&gather.gathered, uptime, partial);
        if let Some(topic) = &gather.presence {
            let exists = gather
                .gathered
                .parts
                .iter()
                .any(|part| part.topics.iter().any(|t| *t.name == **topic));
            if !exists && !partial {
                self.reply_err(
                    reply.connection,
                    reply.request_id,
                    ErrorCode::TopicNotFound,
                    "no such topic",
                );
                return;
            }
            document.insert("topic".into(), json!(&**topic));
            document.insert(
                "subscribers".into(),
                Value::Array(presence_json(&gather.gathered)),
            );
        }
        let data = Value::Object(document).to_string();
        Frame::Ok {
            request_id: reply.request_id,
            data: data.as_bytes(),
        }
        .encode(conn.out.replies());
        self.mark_dirty(reply.connection);
    }

    /// Answers the gathers whose slowest shard did not answer in time.
    pub(super) fn expire_gathers(&mut self, now: Instant) {
        while let Some(&(deadline, reply)) = self.gather_deadlines.front() {
            if deadline > now {
                break;
            }
            self.gather_deadlines.pop_front();
            self.answer_stats(reply);
        }
    }
}

fn encode_stats(
    query: StatsQuery,
    gathered: &BrokerStats,
    (uptime_seconds, partial, metrics_topics_max): (u64, bool, usize),
    connection: ConnectionHeader,
    out: &mut Vec<u8>,
) {
    let mut topics: Vec<&TopicStats> = gathered.parts.iter().flat_map(|p| &p.topics).collect();
    topics.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let subscribers: u64 = topics.iter().map(|t| t.subscribers).sum();
    let body = match query {
        StatsQuery::V1Subscribers { topic } => {
            let exists = topics.iter().any(|t| *t.name == *topic);
            if !exists && !partial {
                http::encode_error_response(
                    http::ApiDialect::Fiber,
                    Status::NOT_FOUND,
                    "topic not found",
                    connection,
                    out,
                );
                return;
            }
            json!({
                "topic": &*topic,
                "subscribers": presence_json(gathered),
                "partial": partial,
            })
        }
        StatsQuery::V1Topics => json!({
            "topics": topics.iter().map(|t| json!({"name": &*t.name, "subscribers": t.subscribers})).collect::<Vec<_>>(),
        }),
        StatsQuery::Topics => json!(topics.iter().map(|t| &*t.name).collect::<Vec<_>>()),
        StatsQuery::V1Health => json!({
            "uptime_seconds": uptime_seconds,
            "topics": topics.len(),
            "subscribers": subscribers,
        }),
        StatsQuery::Health => json!({
            "status": "healthy",
            "uptime_seconds": uptime_seconds,
            "topic_count": topics.len(),
            "active_subscriber_count": subscribers,
        }),
        StatsQuery::V1Stats => Value::Object(stats_document(gathered, uptime_seconds, partial)),
        StatsQuery::Stats => {
            let per_topic: Map<String, Value> = topics
                .iter()
                .map(|t| {
                    (
                        t.name.to_string(),
                        json!({"message_count": t.messages, "subscriber_count": t.subscribers}),
                    )
                })
                .collect();
            json!({ "topics": per_topic })
        }
        StatsQuery::Metrics => {
            let text = metrics_text(&gathered.parts, uptime_seconds, metrics_topics_max);
            http::encode_response(
                &ResponseHead {
                    status: Status(200),
                    content_type: Some(http::CONTENT_TYPE_PROMETHEUS),
                    allow: None,
                    connection,
                    extra: &[],
                },
                text.as_bytes(),
                out,
            );
            return;
        }
    };
    http::encode_response(
        &ResponseHead::json(Status(200), connection),
        body.to_string().as_bytes(),
        out,
    );
}

/// The whole stats document: `GET /v1/stats`, and the native STATS answer (which the
/// protocol rustdoc describes field by field).
pub(super) fn stats_document(
    gathered: &BrokerStats,
    uptime_seconds: u64,
    partial: bool,
) -> Map<String, Value> {
    let mut parts: Vec<&ShardStats> = gathered.parts.iter().collect();
    parts.sort_unstable_by_key(|p| p.shard);
    let mut topics: Vec<(&TopicStats, u16)> = parts
        .iter()
        .flat_map(|part| part.topics.iter().map(|topic| (topic, part.shard)))
        .collect();
    topics.sort_unstable_by(|a, b| a.0.name.cmp(&b.0.name));
    let mut counters = ShardCounters::default();
    let mut latency = ShardLatency::default();
    for part in &parts {
        counters.add(&part.counters);
        latency.add(&part.latency);
    }
    let per_topic: Map<String, Value> = topics
        .iter()
        .map(|(t, shard)| (t.name.to_string(), topic_json(t, *shard)))
        .collect();
    let mut document = counters_json(&counters);
    let extra = json!({
        "uptime_seconds": uptime_seconds,
        "topics": per_topic,
        "retained_messages": topics.iter().map(|(t, _)| t.retained_messages).sum::<u64>(),
        "retained_bytes": topics.iter().map(|(t, _)| t.retained_bytes).sum::<u64>(),
        "connections": parts.iter().map(|p| p.connections).sum::<u64>(),
        "connections_by_protocol": Protocol::ALL
            .iter()
            .map(|protocol| {
                let open: u64 = parts
                    .iter()
                    .map(|p| p.connections_by_protocol[*protocol as usize])
                    .sum();
                (protocol.as_str().to_owned(), json!(open))
            })
            .collect::<Map<String, Value>>(),
        "by_shard": parts.iter().map(|part| {
            let mut shard = counters_json(&part.counters);
            shard.insert("shard".into(), json!(part.shard));
            shard.insert("connections".into(), json!(part.connections));
            shard.insert("topics".into(), json!(part.topics.len()));
            Value::Object(shard)
        }).collect::<Vec<_>>(),
        "latency": {
            "delivery": latency_json(&latency.delivery),
            "ack": latency_json(&latency.ack),
            "by_shard": parts.iter().map(|part| json!({
                "shard": part.shard,
                "delivery": latency_json(&part.latency.delivery),
                "ack": latency_json(&part.latency.ack),
            })).collect::<Vec<_>>(),
        },
        "slow_consumers": parts
            .iter()
            .flat_map(|part| part.slow_consumers.iter().map(connection_json))
            .collect::<Vec<_>>(),
        "shards": shards_answered(gathered),
        // When the answer was put together (Unix ms): rates computed between two
        // answers use the broker's clock, not the reader's.
        "time_ms": super::commands::unix_time_ns() / 1_000_000,
        "partial": partial,
    });
    if let Value::Object(extra) = extra {
        document.extend(extra);
    }
    document
}

/// The broker-wide (or one shard's) counters, by name.
fn counters_json(counters: &ShardCounters) -> Map<String, Value> {
    [
        ("published", counters.published),
        ("delivered", counters.delivered),
        ("dropped", counters.dropped),
        ("undelivered", counters.undelivered),
        (
            "slow_consumer_disconnects",
            counters.slow_consumer_disconnects,
        ),
        ("dead_lettered", counters.dead_lettered),
        ("acks", counters.acks),
        ("nacks", counters.nacks),
        ("redelivered", counters.redelivered),
        ("rate_limited", counters.rate_limited),
        ("bytes_in", counters.bytes_in),
        ("bytes_out", counters.bytes_out),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), json!(value)))
    .collect()
}

fn topic_json(topic: &TopicStats, owner_shard: u16) -> Value {
    json!({
        "owner_shard": owner_shard,
        "messages": topic.messages,
        "subscribers": topic.subscribers,
        "retained_messages": topic.retained_messages,
        "retained_bytes": topic.retained_bytes,
        "retained_first_seq": topic.retained_first_seq,
        "retained_last_seq": topic.retained_last_seq,
        "consumers": topic.consumers.iter().map(|c| json!({
            "name": &*c.name,
            "group": c.group,
            "members": c.members,
            "in_flight": c.in_flight,
            "lag": c.lag,
        })).collect::<Vec<_>>(),
    })
}

pub(super) fn connection_json(connection: &ConnectionSummary) -> Value {
    json!({
        "shard": connection.shard,
        "connection": connection.connection.to_string(),
        "client_name": connection.client_name,
        "protocol": connection.protocol.as_str(),
        "peer": connection.peer.to_string(),
        "queued_bytes": connection.queued_bytes,
    })
}

/// Every shard's subscriptions to a topic, in shard order.
pub(super) fn presence_json(gathered: &BrokerStats) -> Vec<Value> {
    let mut parts: Vec<&ShardStats> = gathered.parts.iter().collect();
    parts.sort_unstable_by_key(|p| p.shard);
    parts
        .iter()
        .flat_map(|part| &part.presence)
        .map(|entry| {
            let mut value = connection_json(&entry.connection);
            if let Value::Object(fields) = &mut value {
                fields.remove("queued_bytes");
                fields.insert("sub_id".into(), json!(entry.sub_id));
                fields.insert("subject".into(), json!(&*entry.subject));
                fields.insert("consumer".into(), json!(entry.consumer.as_deref()));
            }
            value
        })
        .collect()
}

/// The shards that answered, in order.
fn shards_answered(gathered: &BrokerStats) -> Vec<u16> {
    let mut shards: Vec<u16> = gathered.parts.iter().map(|p| p.shard).collect();
    shards.sort_unstable();
    shards
}

/// Writes Prometheus's text exposition format (version 0.0.4): one `# HELP` and `# TYPE`
/// per family, then its samples.
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        use std::fmt::Write;
        let _ = writeln!(
            self.text,
            "# HELP corebus_{name} {help}\n# TYPE corebus_{name} {kind}"
        );
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        use std::fmt::Write;
        self.text.push_str("corebus_");
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(label);
                self.text.push_str("=\"");
                escape_label_value(value, &mut self.text);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A family with one sample per shard.
    fn per_shard(
        &mut self,
        (name, kind, help): (&str, &str, &str),
        parts: &[&ShardStats],
        value: impl Fn(&ShardStats) -> u64,
    ) {
        self.family(name, kind, help);
        for part in parts {
            let shard = part.shard.to_string();
            self.sample(name, &[("shard", &shard)], value(part));
        }
    }
}

/// A label value as the exposition format quotes it: backslash, double quote and line feed
/// escaped (topic names are checked, but the format must hold whatever a name holds).
fn escape_label_value(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The per-shard counters and gauges the shard counters and topics give.
type ShardFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ShardStats) -> u64,
);

const SHARD_FAMILIES: &[ShardFamily] = &[
    (
        "published_total",
        "counter",
        "Messages sequenced by the topics this shard owns.",
        |p| p.counters.published,
    ),
    (
        "delivered_total",
        "counter",
        "Deliveries written to sockets by this shard.",
        |p| p.counters.delivered,
    ),
    (
        "bytes_in_total",
        "counter",
        "Bytes read from clients.",
        |p| p.counters.bytes_in,
    ),
    (
        "bytes_out_total",
        "counter",
        "Bytes written to clients.",
        |p| p.counters.bytes_out,
    ),
    (
        "dropped_total",
        "counter",
        "Deliveries dropped under drop-oldest.",
        |p| p.counters.dropped,
    ),
    (
        "undelivered_total",
        "counter",
        "Deliveries still queued when their connection closed.",
        |p| p.counters.undelivered,
    ),
    (
        "slow_consumer_disconnects_total",
        "counter",
        "Subscribers cut as slow consumers.",
        |p| p.counters.slow_consumer_disconnects,
    ),
    (
        "dead_lettered_total",
        "counter",
        "Messages moved to $dlq.",
        |p| p.counters.dead_lettered,
    ),
    (
        "rate_limited_total",
        "counter",
        "Publishes refused for being over --publish-rate.",
        |p| p.counters.rate_limited,
    ),
    (
        "protocol_errors_total",
        "counter",
        "Connections or requests refused for bytes their codec could not accept.",
        |p| p.counters.protocol_errors,
    ),
    (
        "connections_accepted_total",
        "counter",
        "Connections accepted.",
        |p| p.counters.connections_accepted,
    ),
    (
        "connections_refused_total",
        "counter",
        "Connections refused at the shard's share of --connections-max.",
        |p| p.counters.connections_refused,
    ),
    (
        "acks_total",
        "counter",
        "Acks (single and cumulative) applied by the topics this shard owns.",
        |p| p.counters.acks,
    ),
    (
        "nacks_total",
        "counter",
        "Nacks applied by the topics this shard owns.",
        |p| p.counters.nacks,
    ),
    (
        "redelivered_total",
        "counter",
        "Consumer deliveries handed out again by the topics this shard owns.",
        |p| p.counters.redelivered,
    ),
    (
        "gaps_total",
        "counter",
        "GAP notices queued for this shard's subscribers.",
        |p| p.counters.gaps,
    ),
    (
        "gap_missed_total",
        "counter",
        "Messages reported missed in those GAP notices.",
        |p| p.counters.gap_missed,
    ),
    (
        "replayed_total",
        "counter",
        "Retained messages handed to this shard's subscribers as replays.",
        |p| p.counters.replayed,
    ),
    (
        "connections_refused_per_ip_total",
        "counter",
        "Connections refused for being over --connections-per-ip-max.",
        |p| p.counters.connections_refused_per_ip,
    ),
    (
        "handshakes_evicted_total",
        "counter",
        "Half-open connections evicted to let another address in.",
        |p| p.counters.handshakes_evicted,
    ),
    (
        "frame_deadline_closes_total",
        "counter",
        "Connections closed for input not completed within --frame-deadline-ms.",
        |p| p.counters.frame_deadline_closes,
    ),
    (
        "topics_refused_per_connection_total",
        "counter",
        "Topic creations refused for being over --topics-per-connection-max.",
        |p| p.counters.topics_refused_per_connection,
    ),
    (
        "topics_reclaimed_under_pressure_total",
        "counter",
        "Unused topics reclaimed early because the topic table was full.",
        |p| p.counters.topics_reclaimed_under_pressure,
    ),
    (
        "publisher_stalls_total",
        "counter",
        "Publishers paused because a subscriber they feed was past half its queue.",
        |p| p.counters.publisher_stalls,
    ),
    (
        "ring_full_pauses_total",
        "counter",
        "Connections paused because a ring to another shard (or the delivery room) was full.",
        |p| p.counters.ring_full_pauses,
    ),
    (
        "presence_events_total",
        "counter",
        "Join and leave events published on $sys.presence.<topic> by this shard.",
        |p| p.counters.presence_events,
    ),
    (
        "presence_events_suppressed_total",
        "counter",
        "Join and leave events not published: over --presence-events-per-second-max.",
        |p| p.counters.presence_events_suppressed,
    ),
    (
        "stale_events_total",
        "counter",
        "Readiness events for connections already gone (counted no-ops).",
        |p| p.counters.stale_events,
    ),
    ("topics", "gauge", "Topics this shard owns.", |p| {
        p.topics.len() as u64
    }),
    (
        "retained_messages",
        "gauge",
        "Messages retained for replay by the topics this shard owns.",
        |p| p.topics.iter().map(|t| t.retained_messages).sum(),
    ),
    (
        "retained_bytes",
        "gauge",
        "Bytes retained for replay by the topics this shard owns.",
        |p| p.topics.iter().map(|t| t.retained_bytes).sum(),
    ),
];

/// Which of a shard's latency histograms a family exports.
type LatencyOf = fn(&ShardLatency) -> &LatencyHistogram;

/// The latency histograms: (family name, help, which one).
const LATENCY_FAMILIES: [(&str, &str, LatencyOf); 2] = [
    (
        "delivery_latency",
        "The socket read that brought the PUBLISH to the socket write handing its delivery over; one sample per write with deliveries, its oldest.",
        |latency| &latency.delivery,
    ),
    (
        "ack_latency",
        "Durable consumers: delivery to the ack applied by the topic's owner.",
        |latency| &latency.ack,
    ),
];

/// Seconds, as the exposition format writes them.
fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// One latency as a Prometheus histogram (`<name>_seconds`) and as quantiles
/// (`<name>_quantile_seconds`, `quantile="1"` being the maximum), per shard.
fn latency_families(
    out: &mut Exposition,
    (name, help): (&str, &str),
    parts: &[&ShardStats],
    of: LatencyOf,
) {
    let histogram = format!("{name}_seconds");
    out.family(&histogram, "histogram", help);
    let (bucket, sum, count) = (
        format!("{histogram}_bucket"),
        format!("{histogram}_sum"),
        format!("{histogram}_count"),
    );
    for part in parts {
        let latency = of(&part.latency);
        let shard = part.shard.to_string();
        for (bound, cumulative) in BUCKET_BOUNDS_NS.iter().zip(latency.cumulative_buckets()) {
            let le = seconds(*bound).to_string();
            out.sample(&bucket, &[("shard", &shard), ("le", &le)], cumulative);
        }
        out.sample(
            &bucket,
            &[("shard", &shard), ("le", "+Inf")],
            latency.count(),
        );
        out.sample(&sum, &[("shard", &shard)], seconds(latency.sum_ns()));
        out.sample(&count, &[("shard", &shard)], latency.count());
    }
    let quantiles = format!("{name}_quantile_seconds");
    out.family(
        &quantiles,
        "gauge",
        &format!("{help} Quantiles since start (quantile 1: the maximum)."),
    );
    for part in parts {
        let shard = part.shard.to_string();
        let values = of(&part.latency).quantiles_ns();
        for ((_, label), value) in QUANTILES.iter().zip(values) {
            out.sample(
                &quantiles,
                &[("shard", &shard), ("quantile", label)],
                seconds(value),
            );
        }
    }
}

/// A quantile's short name: `p50`, `p999`, `max` (from its label `0.5`, `0.999`, `1`).
fn quantile_name(label: &str) -> String {
    match label.strip_prefix("0.") {
        Some(digits) if digits.len() == 1 => format!("p{digits}0"),
        Some(digits) => format!("p{digits}"),
        None => "max".to_owned(),
    }
}

/// A latency's sample count and quantiles in microseconds, for JSON answers.
pub fn latency_json(latency: &LatencyHistogram) -> Value {
    let mut fields = Map::new();
    fields.insert("count".into(), json!(latency.count()));
    for ((_, label), value) in QUANTILES.iter().zip(latency.quantiles_ns()) {
        fields.insert(
            format!("{}_us", quantile_name(label)),
            json!(value as f64 / 1000.0),
        );
    }
    Value::Object(fields)
}

/// The broker-wide latency lines of Redis `INFO`'s corebus section: sample counts and
/// quantiles in microseconds (`delivery_latency_p99_us:41.5`).
pub fn write_latency_info(parts: &[ShardStats], text: &mut String) {
    use std::fmt::Write;
    let mut latency = ShardLatency::default();
    for part in parts {
        latency.add(&part.latency);
    }
    for (name, histogram) in [("delivery", &latency.delivery), ("ack", &latency.ack)] {
        let _ = write!(text, "{name}_latency_samples:{}\r\n", histogram.count());
        for ((_, label), value) in QUANTILES.iter().zip(histogram.quantiles_ns()) {
            let _ = write!(
                text,
                "{name}_latency_{}_us:{}\r\n",
                quantile_name(label),
                value as f64 / 1000.0
            );
        }
    }
}

/// Per-topic families, for the top topics only.
type TopicFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&TopicStats) -> u64,
);

const TOPIC_FAMILIES: &[TopicFamily] = &[
    (
        "topic_messages_total",
        "counter",
        "Messages published to the topic (its last sequence number).",
        |t| t.messages,
    ),
    (
        "topic_subscribers",
        "gauge",
        "Exact subscriptions to the topic on every shard.",
        |t| t.subscribers,
    ),
    (
        "topic_retained_messages",
        "gauge",
        "Messages the topic retains for replay.",
        |t| t.retained_messages,
    ),
    (
        "topic_retained_bytes",
        "gauge",
        "Bytes the topic retains for replay.",
        |t| t.retained_bytes,
    ),
];

/// The topics that get series of their own: the `topics_max` with the most messages (ties
/// by name, so a scrape does not flap between equals).
fn top_topics<'a>(parts: &[&'a ShardStats], topics_max: usize) -> Vec<(&'a TopicStats, u16)> {
    let mut topics: Vec<(&TopicStats, u16)> = parts
        .iter()
        .flat_map(|part| part.topics.iter().map(|topic| (topic, part.shard)))
        .collect();
    let order = |a: &(&TopicStats, u16), b: &(&TopicStats, u16)| {
        b.0.messages
            .cmp(&a.0.messages)
            .then(a.0.name.cmp(&b.0.name))
    };
    if topics.len() > topics_max {
        topics.select_nth_unstable_by(topics_max, order);
        topics.truncate(topics_max);
    }
    topics.sort_unstable_by(order);
    topics
}

/// Every shard's counters and gauges with a `shard` label, the top topics by messages with
/// `topic` (and their owner's `shard`) labels, and `corebus_build_info`.
fn metrics_text(parts: &[ShardStats], uptime_seconds: u64, topics_max: usize) -> String {
    let mut parts: Vec<&ShardStats> = parts.iter().collect();
    parts.sort_unstable_by_key(|p| p.shard);
    let mut out = Exposition {
        text: String::new(),
    };
    out.family(
        "build_info",
        "gauge",
        "Always 1; the labels say which build is running.",
    );
    out.sample(
        "build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", env!("COREBUS_GIT_COMMIT")),
        ],
        1,
    );
    out.family("uptime_seconds", "gauge", "Seconds since start.");
    out.sample("uptime_seconds", &[], uptime_seconds);
    for &(name, kind, help, value) in SHARD_FAMILIES {
        out.per_shard((name, kind, help), &parts, value);
    }
    out.family(
        "connections_closed_total",
        "counter",
        "Connections closed, by reason.",
    );
    for part in &parts {
        let shard = part.shard.to_string();
        for (reason, &count) in CloseReason::ALL.iter().zip(&part.counters.closed) {
            out.sample(
                "connections_closed_total",
                &[("shard", &shard), ("reason", reason.as_str())],
                count,
            );
        }
    }
    out.family(
        "errors_total",
        "counter",
        "Requests refused, by error code, on every protocol.",
    );
    for part in &parts {
        let shard = part.shard.to_string();
        for (code, &count) in ErrorCode::ALL.iter().zip(&part.counters.errors) {
            out.sample(
                "errors_total",
                &[("shard", &shard), ("code", code.as_str())],
                count,
            );
        }
    }
    out.family(
        "connections",
        "gauge",
        "Open connections, by protocol (http: REST connections not upgraded).",
    );
    for part in &parts {
        let shard = part.shard.to_string();
        for (protocol, &open) in Protocol::ALL.iter().zip(&part.connections_by_protocol) {
            out.sample(
                "connections",
                &[("shard", &shard), ("protocol", protocol.as_str())],
                open,
            );
        }
    }
    for (name, help, of) in LATENCY_FAMILIES {
        latency_families(&mut out, (name, help), &parts, of);
    }
    let top = top_topics(&parts, topics_max);
    for &(name, kind, help, value) in TOPIC_FAMILIES {
        out.family(name, kind, help);
        for (topic, shard) in &top {
            let shard = shard.to_string();
            out.sample(
                name,
                &[("topic", &topic.name), ("shard", &shard)],
                value(topic),
            );
        }
    }
    out.text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, messages: u64) -> TopicStats {
        TopicStats {
            name: name.into(),
            messages,
            ..TopicStats::default()
        }
    }

    fn part(shard: u16, topics: Vec<TopicStats>) -> ShardStats {
        ShardStats {
            shard,
            topics,
            ..ShardStats::default()
        }
    }

    #[test]
    fn only_the_top_topics_by_messages_get_series() {
        let parts = [
            part(0, vec![topic("a", 5), topic("b", 50), topic("c", 7)]),
            part(1, vec![topic("d", 9), topic("e", 7)]),
        ];
        let refs: Vec<&ShardStats> = parts.iter().collect();
        let names = |max| -> Vec<String> {
            top_topics(&refs, max)
                .iter()
                .map(|(t, _)| t.name.to_string())
                .collect()
        };
        assert_eq!(names(3), ["b", "d", "c"]);
        assert_eq!(names(0), Vec::<String>::new());
        assert_eq!(names(10), ["b", "d", "c", "e", "a"]);
    }

    #[test]
    fn series_carry_shard_labels_and_escaped_topics() {
        let counters = ShardCounters {
            published: 3,
            ..ShardCounters::default()
        };
        let parts = [
            ShardStats {
                counters,
                ..part(1, vec![topic("q\"\\x", 3)])
            },
            part(0, vec![]),
        ];
        let text = metrics_text(&parts, 7, 50);
        assert!(
            text.contains("corebus_published_total{shard=\"0\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("corebus_published_total{shard=\"1\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("corebus_topic_messages_total{topic=\"q\\\"\\\\x\",shard=\"1\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("corebus_uptime_seconds 7\n"), "{text}");
        assert!(text.contains("corebus_build_info{version=\""), "{text}");
        assert!(
            text.contains("corebus_connections{shard=\"0\",protocol=\"websocket\"} 0\n"),
            "{text}"
        );
        // Shard 0's samples come first whatever order the parts arrived in.
        let zero = text.find("corebus_published_total{shard=\"0\"}").unwrap();
        let one = text.find("corebus_published_total{shard=\"1\"}").unwrap();
        assert!(zero < one);
    }
}
