//! Broker-wide stats, gathered on demand from every shard over the rings: no shared mutable
//! state, no locks. The asking shard sends each peer a `Stats` request; each shard answers
//! for the topics it owns (their subscriber counts cover every shard, since the owner counts
//! them) and its own counters. Answers are merged on the asking connection; a shard that has
//! not answered within [`GATHER_DEADLINE`] is left out and the answer says it is partial.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::ids::ConnectionId;
use crate::mesh::message::{OwnerRequest, ReplyTarget};
use crate::protocol::http::{self, ConnectionHeader, ResponseHead, Status};

use super::conn_http::{Awaiting, PendingHttp};
use super::wire::Wire;
use super::{Shard, ShardCounters};

/// How long an answer waits for the slowest shard.
pub const GATHER_DEADLINE: Duration = Duration::from_millis(500);

/// What was asked, which decides the answer's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatsQuery {
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
}

/// One shard's part.
#[derive(Clone, Debug, Default)]
pub struct ShardStats {
    pub topics: Vec<TopicStats>,
    pub counters: ShardCounters,
    pub connections: u64,
    /// Distinct patterns this shard's connections subscribe to (Redis's `PUBSUB NUMPAT`
    /// counts them broker-wide).
    pub patterns: Vec<Box<str>>,
    /// One `CLIENT LIST` line per RESP connection on this shard.
    pub resp_clients: Vec<String>,
}

/// The parts gathered so far.
#[derive(Debug, Default)]
pub struct BrokerStats {
    pub parts: Vec<ShardStats>,
    pub started: Option<Instant>,
}

impl Shard {
    /// This shard's part.
    pub(super) fn shard_stats(&self) -> ShardStats {
        ShardStats {
            topics: self
                .owned
                .iter()
                .map(|(name, topic)| TopicStats {
                    name: name.into(),
                    subscribers: topic.subscriber_count(),
                    messages: topic.position().last_seq,
                    retained_messages: topic.replay.len() as u64,
                    retained_bytes: topic.replay.bytes() as u64,
                })
                .collect(),
            counters: self.counters.clone(),
            connections: self.connections.len() as u64,
            patterns: self.local.pattern_names().map(Into::into).collect(),
            resp_clients: self.resp_client_lines(),
        }
    }

    /// Asks every shard for its part for request `request_id`; the caller checked
    /// `terminal_room`.
    pub(super) fn start_gathering(&mut self, id: ConnectionId, request_id: u32) {
        let own = self.shard_stats();
        let reply = ReplyTarget {
            connection: id,
            request_id,
        };
        for peer in 0..self.links.len() {
            if let Some(link) = self.links[peer].as_mut() {
                link.requests_out.push(OwnerRequest::Stats { reply });
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
        let id = reply.connection;
        let Some(conn) = self.connection_mut(id) else {
            return;
        };
        let session = match &mut conn.wire {
            Wire::Http(session) => session,
            Wire::Resp(_) => return self.resp_answer_gather(reply),
            _ => return,
        };
        let Some(PendingHttp {
            connection,
            awaiting: Awaiting::Stats { query, gathered },
            ..
        }) = session.pending.take()
        else {
            return;
        };
        session.answered = Some(connection);
        let partial = gathered.parts.len() < shards;
        encode_stats(
            query,
            &gathered,
            (uptime, partial),
            connection,
            conn.out.replies(),
        );
        self.mark_dirty(id);
        self.after_http_answer(id, connection);
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
    (uptime_seconds, partial): (u64, bool),
    connection: ConnectionHeader,
    out: &mut Vec<u8>,
) {
    let mut topics: Vec<&TopicStats> = gathered.parts.iter().flat_map(|p| &p.topics).collect();
    topics.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    let subscribers: u64 = topics.iter().map(|t| t.subscribers).sum();
    let mut counters = ShardCounters::default();
    for part in &gathered.parts {
        counters.add(&part.counters);
    }
    let body = match query {
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
        StatsQuery::V1Stats => {
            let per_topic: Map<String, Value> = topics
                .iter()
                .map(|t| {
                    (
                        t.name.to_string(),
                        json!({
                            "messages": t.messages,
                            "subscribers": t.subscribers,
                            "retained_messages": t.retained_messages,
                            "retained_bytes": t.retained_bytes,
                        }),
                    )
                })
                .collect();
            json!({
                "uptime_seconds": uptime_seconds,
                "topics": per_topic,
                "retained_messages": topics.iter().map(|t| t.retained_messages).sum::<u64>(),
                "retained_bytes": topics.iter().map(|t| t.retained_bytes).sum::<u64>(),
                "published": counters.published,
                "delivered": counters.delivered,
                "dropped": counters.dropped,
                "undelivered": counters.undelivered,
                "slow_consumer_disconnects": counters.slow_consumer_disconnects,
                "dead_lettered": counters.dead_lettered,
                "connections": gathered.parts.iter().map(|p| p.connections).sum::<u64>(),
                "partial": partial,
            })
        }
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
            let text = metrics_text(&counters, &topics, uptime_seconds);
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

/// The counters in Prometheus's text exposition format (the broker-wide sums).
fn metrics_text(counters: &ShardCounters, topics: &[&TopicStats], uptime_seconds: u64) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            text,
            "# HELP corebus_{name} {help}\n# TYPE corebus_{name} counter\ncorebus_{name} {value}"
        );
    };
    counter("published_total", "Messages sequenced.", counters.published);
    counter(
        "delivered_total",
        "Deliveries written to sockets.",
        counters.delivered,
    );
    counter(
        "dropped_total",
        "Deliveries dropped under drop-oldest.",
        counters.dropped,
    );
    counter(
        "undelivered_total",
        "Deliveries still queued when their connection closed.",
        counters.undelivered,
    );
    counter(
        "bytes_in_total",
        "Bytes read from clients.",
        counters.bytes_in,
    );
    counter(
        "bytes_out_total",
        "Bytes written to clients.",
        counters.bytes_out,
    );
    counter(
        "slow_consumer_disconnects_total",
        "Subscribers cut as slow consumers.",
        counters.slow_consumer_disconnects,
    );
    counter(
        "dead_lettered_total",
        "Messages moved to $dlq.",
        counters.dead_lettered,
    );
    let _ = writeln!(
        text,
        "# HELP corebus_topics Topics that exist.\n# TYPE corebus_topics gauge\ncorebus_topics {}",
        topics.len()
    );
    let _ = writeln!(
        text,
        "# HELP corebus_uptime_seconds Seconds since start.\n# TYPE corebus_uptime_seconds gauge\ncorebus_uptime_seconds {uptime_seconds}"
    );
    text
}
