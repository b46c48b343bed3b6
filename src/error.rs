//! Errors with two faces: a stable wire code for clients ([`ErrorCode`]) and a reason for
//! logs and metrics ([`CloseReason`]).
//!
//! The numeric codes are part of the native protocol and never change meaning; the
//! `SCREAMING_CASE` names are shared by every interface (native ERR frames, WebSocket
//! `error.code`, metric labels) so an operator sees the same word everywhere.

use std::fmt;

/// A stable, wire-visible error code. The `u16` value is what travels in an ERR frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame's body does not match its opcode's layout.
    BadFrame = 1,
    /// The frame's length field is above the broker's limit.
    FrameTooLarge = 2,
    /// The opcode is not one this protocol version knows.
    UnknownOpcode = 3,
    /// A topic name or pattern breaks the naming rules.
    BadTopic = 4,
    /// A command arrived before the HELLO handshake.
    HandshakeRequired = 5,
    /// The client speaks a protocol version this broker does not.
    UnsupportedVersion = 6,
    /// The subscriber could not keep up; it is being disconnected.
    SlowConsumer = 7,
    /// The connection already holds `subscriptions_per_connection_max` subscriptions.
    TooManySubscriptions = 8,
    /// The broker already holds `connections_max` connections.
    TooManyConnections = 9,
    /// The broker already holds `topics_max` topics.
    TooManyTopics = 10,
    /// UNSUBSCRIBE named a subscription id this connection does not hold.
    UnknownSubscription = 11,
    /// SUBSCRIBE reused a subscription id this connection already holds.
    DuplicateSubscription = 12,
    /// The broker is shutting down and takes no new work.
    ShuttingDown = 13,
    /// A bug in the broker; the message says more.
    Internal = 14,
    /// The topic does not exist and auto-creation is off.
    TopicNotFound = 15,
    /// The connection is over its publish rate.
    RateLimited = 16,
    /// A subscription option this broker version does not support.
    UnsupportedOption = 17,
    /// The message payload is above `message_bytes_max`.
    MessageTooLarge = 18,
    /// Another subscription is attached to that durable consumer.
    ConsumerInUse = 19,
    /// The broker already holds `consumers_max` durable consumers and groups.
    TooManyConsumers = 20,
    /// CREATE_TOPIC named a topic that already exists.
    TopicExists = 21,
    /// An option's value is outside what the broker allows (its cap is a `serve` flag).
    OptionOutOfRange = 22,
    /// The subscription's topic was deleted (DELETE_TOPIC); the subscription is gone.
    TopicDeleted = 23,
    /// A start sequence number lies beyond the topic's next one: it names a message the
    /// topic has not numbered (often a position from before a restart).
    StartBeyondEnd = 24,
    /// A resume named an epoch the topic no longer has: its history was lost (a restart, or
    /// the topic was deleted and made again), and its numbers now mean other messages.
    EpochMismatch = 25,
    /// Input that had started arriving (a frame, an HTTP request, a WebSocket message, a
    /// Redis request) did not complete within `--frame-deadline-ms`; the connection is closed.
    FrameTimeout = 26,
}

impl ErrorCode {
    /// Every code, for tests and documentation tables.
    pub const ALL: [ErrorCode; 26] = [
        ErrorCode::BadFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownOpcode,
        ErrorCode::BadTopic,
        ErrorCode::HandshakeRequired,
        ErrorCode::UnsupportedVersion,
        ErrorCode::SlowConsumer,
        ErrorCode::TooManySubscriptions,
        ErrorCode::TooManyConnections,
        ErrorCode::TooManyTopics,
        ErrorCode::UnknownSubscription,
        ErrorCode::DuplicateSubscription,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
        ErrorCode::TopicNotFound,
        ErrorCode::RateLimited,
        ErrorCode::UnsupportedOption,
        ErrorCode::MessageTooLarge,
        ErrorCode::ConsumerInUse,
        ErrorCode::TooManyConsumers,
        ErrorCode::TopicExists,
        ErrorCode::OptionOutOfRange,
        ErrorCode::TopicDeleted,
        ErrorCode::StartBeyondEnd,
        ErrorCode::EpochMismatch,
        ErrorCode::FrameTimeout,
    ];

    pub fn as_u16(self) -> u16 {
        self as u16
    }

    pub fn from_u16(value: u16) -> Option<ErrorCode> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|code| code.as_u16() == value)
    }

    /// The name used on every interface and as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "BAD_FRAME",
            ErrorCode::FrameTooLarge => "FRAME_TOO_LARGE",
            ErrorCode::UnknownOpcode => "UNKNOWN_OPCODE",
            ErrorCode::BadTopic => "BAD_TOPIC",
            ErrorCode::HandshakeRequired => "HANDSHAKE_REQUIRED",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::SlowConsumer => "SLOW_CONSUMER",
            ErrorCode::TooManySubscriptions => "TOO_MANY_SUBSCRIPTIONS",
            ErrorCode::TooManyConnections => "TOO_MANY_CONNECTIONS",
            ErrorCode::TooManyTopics => "TOO_MANY_TOPICS",
            ErrorCode::UnknownSubscription => "UNKNOWN_SUBSCRIPTION",
            ErrorCode::DuplicateSubscription => "DUPLICATE_SUBSCRIPTION",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::TopicNotFound => "TOPIC_NOT_FOUND",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::UnsupportedOption => "UNSUPPORTED_OPTION",
            ErrorCode::MessageTooLarge => "MESSAGE_TOO_LARGE",
            ErrorCode::ConsumerInUse => "CONSUMER_IN_USE",
            ErrorCode::TooManyConsumers => "TOO_MANY_CONSUMERS",
            ErrorCode::TopicExists => "TOPIC_EXISTS",
            ErrorCode::OptionOutOfRange => "OPTION_OUT_OF_RANGE",
            ErrorCode::TopicDeleted => "TOPIC_DELETED",
            ErrorCode::StartBeyondEnd => "START_BEYOND_END",
            ErrorCode::EpochMismatch => "EPOCH_MISMATCH",
            ErrorCode::FrameTimeout => "FRAME_TIMEOUT",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the broker closed a connection; logged once per connection and used as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its end (read returned 0).
    PeerClosed,
    /// A socket error (reset, broken pipe, ...).
    IoError,
    /// The peer sent bytes the codec cannot resynchronise after.
    ProtocolError,
    /// The HELLO handshake failed or did not arrive in time.
    HandshakeFailed,
    /// The subscriber's outbound queue went over its limit under the `disconnect` policy.
    SlowConsumer,
    /// The shard was already at its share of `connections_max`.
    TooManyConnections,
    /// Input that had started did not complete within `--frame-deadline-ms`.
    FrameTimeout,
    /// The broker is shutting down.
    Shutdown,
    /// The client asked to go (Redis `QUIT`).
    ClientQuit,
    /// Another client closed it (Redis `CLIENT KILL`).
    Killed,
}

impl CloseReason {
    /// Every reason, in the order of [`CloseReason::index`] (the closes-by-reason counters).
    pub const ALL: [CloseReason; 10] = [
        CloseReason::PeerClosed,
        CloseReason::IoError,
        CloseReason::ProtocolError,
        CloseReason::HandshakeFailed,
        CloseReason::SlowConsumer,
        CloseReason::TooManyConnections,
        CloseReason::FrameTimeout,
        CloseReason::Shutdown,
        CloseReason::ClientQuit,
        CloseReason::Killed,
    ];

    /// Its position in [`CloseReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::PeerClosed => "peer_closed",
            CloseReason::IoError => "io_error",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::HandshakeFailed => "handshake_failed",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::TooManyConnections => "too_many_connections",
            CloseReason::FrameTimeout => "frame_timeout",
            CloseReason::Shutdown => "shutdown",
            CloseReason::ClientQuit => "client_quit",
            CloseReason::Killed => "killed",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_wire_value() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(code.as_u16()), Some(code));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
        assert_eq!(ErrorCode::from_u16(9999), None);
    }

    #[test]
    fn close_reasons_sit_at_their_index() {
        for (index, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), index);
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }
}
