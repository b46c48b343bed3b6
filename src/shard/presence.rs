//! Join and leave events for topics created with presence on: when a subscription to such a
//! topic starts (its owner's ack arrived) or ends (unsubscribed, its connection gone), the
//! subscriber's shard publishes one JSON message on `$sys.presence.<topic>`, as the broker's
//! own publish. That shard is the one that knows the connection (its client name, protocol
//! and peer), so the owner never has to.
//!
//! Events are bounded by `--presence-events-per-second-max` per shard: a mass reconnect must
//! not turn into a flood of broker publishes. An event over the rate, or one whose
//! `$sys.presence.` name would be longer than a topic may be, is counted
//! (`presence_events_suppressed`) and not sent. Events are noted where subscriptions change,
//! which may be while a ring's terminal messages are handled (and those never send), and go
//! out once per loop turn; those that find the owner's ring full wait for the next turn.

use serde_json::json;

use crate::ids::Subscriber;
use crate::mesh::message::OwnerRequest;
use crate::message::Message;
use crate::protocol::topic::TOPIC_BYTES_MAX;

use super::commands::unix_time_ns;
use super::connection::TokenBucket;
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
        let event = json!({
            "event": change.as_str(),
            "topic": topic,
            "shard": summary.shard,
            "connection": summary.connection.to_string(),
            "client_name": summary.client_name,
            "protocol": summary.protocol.as_str(),
            "peer": summary.peer.to_string(),
            "sub_id": subscriber.sub_id,
            "consumer": consumer,
            "time_ms": now_ns / 1_000_000,
        });
        let message = Message::from_publish_with_headers(
            &mut self.encode_scratch,
            (&events_topic, None),
            JSON_HEADERS,
            event.to_string().as_bytes(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::native;

    #[test]
    fn events_say_they_are_json() {
        assert_eq!(
            native::header_value(JSON_HEADERS, b"content-type"),
            Some(&b"application/json"[..])
        );
    }
}
