//! Join and leave events for topics created with presence on: when a subscription to such a
//! topic starts (its owner's ack arrived) or ends (unsubscribed, its connection gone), the
//! subscriber's shard publishes one JSON message on `$sys.presence.<topic>`, as the broker's
//! own publish. That shard is the one that knows the connection (its client name, protocol
//! and peer), so the owner never has to.
//!
//! Events are bounded by `--presence-events-per-second-max` per shard: a mass reconnect must
//! not turn into a flood of broker publishes. An event over the rate, or one whose
//! `$sys.presence.` name would be longer than a topic may be, is counted
//! (`presence_events_suppressed`) and not sent.
//!
//! An event is never larger than `--message-bytes-max`, the limit every subscriber was told
//! (HELLO's `message_bytes_max`): a client may send nothing bigger, and must not be sent
//! anything bigger either. Client names are bounded far below it
//! ([`crate::protocol::CLIENT_NAME_BYTES_MAX`]), so only a broker started with a tiny limit
//! meets this: the event then leaves the client name out and says so
//! (`"client_name": null, "client_name_omitted": true`), and one still too large is
//! suppressed and counted like those above. Events are noted where subscriptions change,
//! which may be while a ring's terminal messages are handled (and those never send), and go
//! out once per loop turn; those that find the owner's ring full wait for the next turn.

use serde_json::json;

use crate::ids::Subscriber;
use crate::mesh::message::OwnerRequest;
use crate::message::Message;
use crate::protocol::topic::TOPIC_BYTES_MAX;

use super::commands::unix_time_ns;
use super::connection::TokenBucket;
use super::stats::ConnectionSummary;
use super::Shard;

/// Where a topic's presence events are published.
pub const PRESENCE_PREFIX: &str = "$sys.presence.";

/// The header block of every event: `content-type: application/json`, so WebSocket clients
/// see the payload as JSON (entry layout: see [`crate::protocol::native`]'s PUBLISH headers).
const JSON_HEADERS: &[u8] = b"\x0ccontent-type\x00\x10application/json";

/// A subscription started or ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceChange {
    Join,
    Leave,
}

impl PresenceChange {
    fn as_str(self) -> &'static str {
        match self {
            PresenceChange::Join => "join",
            PresenceChange::Leave => "leave",
        }
    }
}

/// A shard's events waiting to go out, and its budget for them.
#[derive(Default)]
pub struct PresenceEvents {
    pending: Vec<Message>,
    bucket: TokenBucket,
}

impl PresenceEvents {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

impl Shard {
    /// Notes a join or leave of `subscriber` on `topic` (a topic with presence on), if the
    /// rate allows; it goes out at the end of the loop turn.
    pub(super) fn note_presence(
        &mut self,
        change: PresenceChange,
        (topic, subscriber, consumer): (&str, Subscriber, Option<&str>),
    ) {
        let rate = self.config.presence_events_per_second_max;
        if rate == 0 {
            return;
        }
        let Some(conn) = self
            .connections
            .get(subscriber.connection.index as usize)
            .filter(|conn| conn.id == subscriber.connection)
        else {
            return;
        };
        let events_topic = format!("{PRESENCE_PREFIX}{topic}");
        let now_ns = unix_time_ns();
        // Waiting events are bounded too: a second's worth, should the owner's ring stay full.
        let allowed = events_topic.len() <= TOPIC_BYTES_MAX
            && (self.presence.pending.len() as u64) < rate
            && self.presence.bucket.take(now_ns, rate, rate).is_ok();
        if !allowed {
            self.counters.presence_events_suppressed += 1;
            return;
        }
        let summary = self.connection_summary(conn);
        let Some(event) = event_text(
            (change, topic),
            &summary,
            (subscriber.sub_id, consumer),
            now_ns / 1_000_000,
            self.config.message_bytes_max,
        ) else {
            self.counters.presence_events_suppressed += 1;
            return;
        };
        let message = Message::from_publish_with_headers(
            &mut self.encode_scratch,
            (&events_topic, None),
            JSON_HEADERS,
            event.as_bytes(),
        );
        self.presence.pending.push(message);
    }

    /// Publishes the events noted this turn, in order, as far as the rings take them;
    /// false when one found its ring full (the rest wait).
    pub(super) fn send_presence_events(&mut self) -> bool {
        let mut pending = std::mem::take(&mut self.presence.pending);
        let mut sent = 0;
        for message in &pending {
            let owner = self.owner_of(message.topic());
            if owner == self.id {
                if !self.terminal_room() {
                    break;
                }
                self.publish_from_broker(message.clone());
            } else {
                let link = self.link_mut(owner);
                if !link.requests_out.make_room() {
                    break;
                }
                link.requests_out.push(OwnerRequest::BrokerPublish {
                    message: message.clone(),
                });
            }
            sent += 1;
        }
        self.counters.presence_events += sent as u64;
        let all_sent = sent == pending.len();
        pending.drain(..sent);
        self.presence.pending = pending;
        all_sent
    }
}

/// An event's JSON text, at most `message_bytes_max` bytes: without the client name (and
/// saying so) when the name would take it over, `None` when even that is too large.
fn event_text(
    (change, topic): (PresenceChange, &str),
    summary: &ConnectionSummary,
    (sub_id, consumer): (u32, Option<&str>),
    time_ms: u64,
    message_bytes_max: usize,
) -> Option<String> {
    let mut event = json!({
        "event": change.as_str(),
        "topic": topic,
        "shard": summary.shard,
        "connection": summary.connection.to_string(),
        "client_name": summary.client_name,
        "protocol": summary.protocol.as_str(),
        "peer": summary.peer.to_string(),
        "sub_id": sub_id,
        "consumer": consumer,
        "time_ms": time_ms,
    });
    let text = event.to_string();
    if text.len() <= message_bytes_max {
        return Some(text);
    }
    event["client_name"] = serde_json::Value::Null;
    event["client_name_omitted"] = serde_json::Value::Bool(true);
    Some(event.to_string()).filter(|text| text.len() <= message_bytes_max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ConnectionId;
    use crate::protocol::native;
    use crate::shard::wire::Protocol;

    fn summary(client_name: &str) -> ConnectionSummary {
        ConnectionSummary {
            shard: 1,
            connection: ConnectionId {
                index: 3,
                generation: 0,
            },
            client_name: client_name.to_owned(),
            protocol: Protocol::WebSocket,
            peer: "127.0.0.1:50122".parse().unwrap(),
            queued_bytes: 0,
        }
    }

    fn event(client_name: &str, message_bytes_max: usize) -> Option<serde_json::Value> {
        let text = event_text(
            (PresenceChange::Join, "pr.a"),
            &summary(client_name),
            (1, None),
            1_796_520_000_000,
            message_bytes_max,
        )?;
        assert!(text.len() <= message_bytes_max, "{} bytes", text.len());
        Some(serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn an_event_names_its_client() {
        let event = event("alice", 1 << 20).unwrap();
        assert_eq!(event["client_name"], "alice");
        assert_eq!(event["event"], "join");
        assert!(event.get("client_name_omitted").is_none());
    }

    /// Regression (the audit's repro, with the name no protocol lets in any more): an event
    /// larger than the message limit is never built; it leaves the name out and says so.
    #[test]
    fn an_event_is_never_above_the_message_limit() {
        let limit = 1 << 20;
        let event = event(&"c".repeat(1_048_490), limit).unwrap();
        assert_eq!(event["client_name"], serde_json::Value::Null);
        assert_eq!(event["client_name_omitted"], true);
        assert_eq!(event["topic"], "pr.a");
        // A limit too small for any event: suppressed (the caller counts it).
        assert_eq!(
            super::event_text(
                (PresenceChange::Leave, "pr.a"),
                &summary("alice"),
                (1, None),
                0,
                64,
            ),
            None
        );
    }

    #[test]
    fn events_say_they_are_json() {
        assert_eq!(
            native::header_value(JSON_HEADERS, b"content-type"),
            Some(&b"application/json"[..])
        );
    }
}
