//! The closed set of messages that cross between shards, one enum per ring kind.
//!
//! Two kinds of traffic, kept on separate rings so that shards cannot deadlock:
//! - [`OwnerRequest`] travels to a topic's owner (or, for patterns, to every shard) and may
//!   cause more traffic (deliveries, replies).
//! - [`Terminal`] travels to the shard holding the connections and ends in sockets; handling
//!   it never sends anything across a ring. So every shard can always drain its terminal
//!   rings, whatever else is full, and an owner waiting for terminal space always gets it.
//!
//! The split is in the types: a terminal handler has nothing to push requests with.

use crate::error::ErrorCode;
use crate::ids::{ConnectionId, Subscriber};
use crate::message::Message;
use crate::protocol::native::AckKind;
use crate::protocol::subscribe_options::{AckSettings, Start};
use crate::shard::consumers::Member;
use crate::shard::replay::ReplayLimits;

/// Where a reply goes back to: a connection on the shard that sent the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyTarget {
    pub connection: ConnectionId,
    pub request_id: u32,
}

/// Identifies a subscribe waiting for acknowledgements on the subscriber's shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket(pub u32);

#[derive(Debug)]
pub enum OwnerRequest {
    /// Report this shard's stats (its owned topics and counters) to the asking connection;
    /// with `presence`, its subscriptions to that topic too.
    Stats {
        reply: ReplyTarget,
        presence: Option<Box<str>>,
        /// A `CLIENT LIST` line for each RESP connection (only `CLIENT LIST` asks).
        resp_client_lines: bool,
    },
    /// Answered with `Terminal::BarrierPassed` once every request before it on this ring has
    /// been handled (an UNSUBSCRIBE is confirmed once the owner has counted it out).
    Barrier { reply: ReplyTarget },
    /// Close the receiving shard's RESP connections that match a `CLIENT KILL` filter, except
    /// the client with id `spare` (the asker, with `SKIPME yes`).
    KillClients {
        filter: Box<crate::protocol::resp_commands::KillFilter>,
        spare: Option<u64>,
        reply: ReplyTarget,
    },
    /// Sequence and fan out. A quiet publish is answered only if it is refused.
    Publish {
        message: Message,
        reply: ReplyTarget,
        quiet: bool,
    },
    /// A subscription to an exact topic was added on the sending shard; it becomes live
    /// there when the owner's ack (carrying any replay) arrives.
    Subscribe {
        topic: Box<str>,
        start: Start,
        ticket: Ticket,
        /// Set for a durable consumer or group member, which the owner delivers to itself
        /// (one member per message) instead of through the shard's fan-out.
        consumer: Option<Box<ConsumerRequest>>,
        /// The subscribing connection, which makes the topic if it is new
        /// (`--topics-per-connection-max` is counted on the owner).
        connection: ConnectionId,
    },
    /// A consumer's subscription went away; the consumer stays, with what it has not acked.
    Detach {
        topic: Box<str>,
        consumer: Box<str>,
        subscriber: Subscriber,
    },
    /// An ACK frame for a consumer of a topic this shard owns.
    Ack {
        topic: Box<str>,
        consumer: Box<str>,
        /// Who acks, on the sending shard: a group member's cumulative ack covers its own.
        subscriber: Subscriber,
        seq: u64,
        kind: AckKind,
    },
    /// CREATE_TOPIC: create the topic with these replay limits (and presence events if
    /// asked), unless it exists.
    CreateTopic {
        topic: Box<str>,
        replay_limits: ReplayLimits,
        presence: bool,
        reply: ReplyTarget,
    },
    /// DELETE_TOPIC: delete the topic and tell every shard.
    DeleteTopic { topic: Box<str>, reply: ReplyTarget },
    /// The broker's own message, to be sequenced by its topic's owner: a dead letter for
    /// `$dlq.<topic>`, a join or leave for `$sys.presence.<topic>`.
    BrokerPublish { message: Message },
    /// A subscription to an exact topic, counted in incarnation `epoch`, was removed on the
    /// sending shard.
    Unsubscribe { topic: Box<str>, epoch: u64 },
    /// A pattern subscription was added on the sending shard. Every one is recorded, not
    /// just a shard's first per pattern, so an owner can count a publish's receivers (Redis's
    /// PUBLISH answer); the ack is also the barrier the subscribe's OK waits for.
    PatternSubscribe { pattern: Box<str>, ticket: Ticket },
    /// One of the sending shard's subscriptions to the pattern went away.
    PatternUnsubscribe { pattern: Box<str> },
    /// A subscriber of this topic on the sending shard is past its stall watermark: pause
    /// the topic's publishers for a while (sent again while it stays there).
    Pressure { topic: Box<str> },
    /// A member joined a pattern group; every shard records it (any may own a matching
    /// topic) and acks, like a pattern subscription.
    PatternGroupJoin {
        pattern: Box<str>,
        group: Box<str>,
        member: Member,
        /// Set for an at-least-once group (fixed by its first member).
        acks: Option<AckSettings>,
        ticket: Ticket,
    },
    /// A member left a pattern group. With a ticket (an UNSUBSCRIBE waiting for every
    /// shard) the receiver acks; without (the connection went away) nobody waits.
    PatternGroupLeave {
        pattern: Box<str>,
        group: Box<str>,
        subscriber: Subscriber,
        ticket: Option<Ticket>,
    },
}

/// A sequenced publish: its number, and how many subscriptions it went to (exact and
/// pattern, on every shard), which Redis's PUBLISH answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    pub receivers: u32,
}

#[derive(Debug)]
pub enum Terminal {
    /// Fan the message out to this shard's matching subscribers.
    Deliver { message: Message },
    /// A consumer's delivery to one subscription.
    DeliverTo {
        subscriber: Subscriber,
        message: Message,
    },
    /// A consumer's backlog was evicted before it got to it.
    GapTo {
        subscriber: Subscriber,
        missed: u64,
        resume_seq: u64,
        /// Named in the GAP frame: a pattern group's topics number their messages apart.
        topic: Box<str>,
    },
    /// The outcome of a publish: its sequence number, or why it was refused.
    PublishOutcome {
        reply: ReplyTarget,
        result: Result<Published, ErrorCode>,
    },
    /// The outcome of a CREATE_TOPIC: where the new topic stands, or why it was refused.
    TopicCreated {
        reply: ReplyTarget,
        result: Result<TopicPosition, ErrorCode>,
    },
    /// The topic was deleted: end this shard's exact subscriptions to it.
    TopicDeleted { topic: Box<str> },
    /// The outcome of a DELETE_TOPIC, sent after the requester's shard was told.
    /// A shard's part of a stats request.
    Stats {
        reply: ReplyTarget,
        stats: Box<crate::shard::stats::ShardStats>,
    },
    /// How many connections a `KillClients` closed.
    KillOutcome { reply: ReplyTarget, killed: u32 },
    /// The `Barrier` came through: the request is done.
    BarrierPassed { reply: ReplyTarget },
    /// A publish from this connection reached a subscriber past its stall watermark: stop
    /// reading it for a lease (see `Shard::stall_for_lease`).
    StallPublisher { connection: ConnectionId },
    DeleteOutcome {
        reply: ReplyTarget,
        result: Result<(), ErrorCode>,
    },
    /// The owner (or, for a pattern, one shard) has taken a subscription into account.
    SubscribeAck {
        ticket: Ticket,
        result: Result<Subscribed, Refusal>,
    },
}

/// A refused subscription: the code, and where the topic stood when the refusal depends on
/// it (a start beyond its end, another epoch), so the error can say so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub position: Option<TopicPosition>,
}

impl From<ErrorCode> for Refusal {
    fn from(code: ErrorCode) -> Self {
        Refusal {
            code,
            position: None,
        }
    }
}

/// An accepted subscription: where the topic stood, and what it asked to replay.
#[derive(Debug, Default)]
pub struct Subscribed {
    pub position: TopicPosition,
    pub replay: Replay,
    /// The topic publishes joins and leaves on `$sys.presence.<topic>`.
    pub presence: bool,
}

/// Retained messages for a subscriber that starts in the past, oldest first. Bounded by the
/// topic's replay limits.
#[derive(Debug, Default)]
pub struct Replay {
    /// Messages it asked for that were already evicted (sent as a GAP notice).
    pub missed: u64,
    pub messages: Vec<Message>,
}

/// What a durable consumer or group subscription asks of the owner.
#[derive(Debug)]
pub struct ConsumerRequest {
    pub name: Box<str>,
    pub is_group: bool,
    pub acks: Option<AckSettings>,
    pub subscriber: Subscriber,
}

/// Where a topic stood when a subscription was registered with its owner.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TopicPosition {
    pub epoch: u64,
    pub last_seq: u64,
}

impl TopicPosition {
    /// The OK data of an exact SUBSCRIBE or a CREATE_TOPIC: `epoch`, then `last_seq`.
    pub fn ok_data(&self) -> [u8; 16] {
        let mut data = [0u8; 16];
        data[..8].copy_from_slice(&self.epoch.to_be_bytes());
        data[8..].copy_from_slice(&self.last_seq.to_be_bytes());
        data
    }
}
