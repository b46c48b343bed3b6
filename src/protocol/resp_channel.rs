//! Redis channel names ↔ corebus topic names: one pure, reversible mapping, so that a Redis
//! client can use any channel name and still sees, in every `message` frame, exactly the name
//! it subscribed to.
//!
//! # The problem
//!
//! A Redis channel is any byte string; a corebus topic is 1 to 255 bytes of `[A-Za-z0-9_-]`
//! tokens joined by `.` (see [`crate::protocol::topic`]). Redis applications often separate
//! with `:` (`user:42:events`) or `/` (`socket.io#/#`), which corebus cannot hold as they are.
//!
//! Mapping `:` and `/` to `.` is tempting but cannot be undone: `a:b`, `a/b` and `a.b` would be
//! one topic, so a publish to `a:b` would reach `a.b` subscribers (two channels in Redis), and
//! the name to print in a `message` frame would have to come from per-topic or
//! per-subscription state, which pattern subscribers (`pmessage` shows the publisher's channel)
//! and `PUBSUB CHANNELS` cannot have. Any mapping that keeps valid topic names unchanged has
//! this problem for every character it maps onto a valid one, because every valid name is
//! already taken by itself.
//!
//! # The mapping
//!
//! So the mapping escapes instead of translating, the way URLs do:
//!
//! - A channel that is already a valid exact topic name and does not contain `--` is its own
//!   topic (`orders.eu` ↔ `orders.eu`, `$dlq.orders` ↔ `$dlq.orders`). This is the case that
//!   lets Redis, native and WebSocket clients share topics, and it costs no copy.
//! - Any other channel is rewritten byte by byte: letters, digits and `_` stay; a `.` stays
//!   where it separates two non-empty tokens; every other byte, `-` included, becomes `--`
//!   followed by its two lowercase hex digits (`:` is `--3a`, `/` is `--2f`, `-` is `--2d`,
//!   a leading `$` is `--24`). So `user:42` is the topic `user--3a42`, and `a--b` is
//!   `a--2d--2db`.
//! - The result must fit in 255 bytes; otherwise the channel is refused
//!   ([`ChannelError::TooLong`]), as is the empty channel ([`ChannelError::Empty`]).
//!
//! Every escaped name contains `--` and no unchanged name does, and escaping is undone by
//! reading `--hh` back as a byte, so the mapping is injective and [`topic_to_channel`] is its
//! inverse: a pure function of the name, no state anywhere. A Redis literal channel can never
//! produce a corebus wildcard (`*`, `>`) or a reserved `$` publish target except by naming an
//! existing valid `$` topic exactly (which the broker then refuses to publish to, as for any
//! client).
//!
//! The cost: a native topic containing `--` that is not an escape this mapping produces (say
//! `a--b`) is no Redis channel's topic; Redis clients see it under its own name through
//! patterns and `PUBSUB CHANNELS`, but cannot SUBSCRIBE or PUBLISH to it exactly. Redis glob
//! patterns are matched against the Redis-side name ([`topic_to_channel`]), so `user:*`
//! matches the topic `user--3a42`.

use std::borrow::Cow;
use std::fmt;

use crate::protocol::topic::{
    parse_subscription, plain_unescaped_topic, SubjectKind, TOPIC_BYTES_MAX,
};

/// Starts an escaped byte: `--` and two lowercase hex digits.
pub const ESCAPE: &str = "--";

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Why a Redis channel name has no corebus topic. [`ChannelError::message`] is the text of the
/// `-ERR` reply; it names the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    Empty,
    /// Escaping made the name longer than a topic may be.
    TooLong,
}

impl ChannelError {
    pub fn message(self) -> &'static str {
        match self {
            ChannelError::Empty => "invalid channel name: corebus does not allow an empty channel",
            ChannelError::TooLong => {
                "invalid channel name: corebus allows at most 255 bytes per channel, counting each \
                 byte other than letters, digits, '_' and a '.' between two names as 4 bytes"
            }
        }
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for ChannelError {}

/// The topic that holds Redis channel `channel` (see the module documentation). Borrows when
/// the name is its own topic. Never allocates more than a topic's length.
pub fn channel_to_topic(channel: &[u8]) -> Result<Cow<'_, str>, ChannelError> {
    if let Some(topic) = plain_unescaped_topic(channel) {
        return Ok(Cow::Borrowed(topic));
    }
    if channel.is_empty() {
        return Err(ChannelError::Empty);
    }
    if let Ok((topic, SubjectKind::Exact)) = parse_subscription(channel) {
        if !holds_escape(topic.as_bytes()) {
            return Ok(Cow::Borrowed(topic));
        }
    }
    let mut topic = String::with_capacity(channel.len().min(TOPIC_BYTES_MAX));
    for (i, &byte) in channel.iter().enumerate() {
        let keeps_token_apart = byte == b'.'
            && i > 0
            && channel.get(i - 1) != Some(&b'.')
            && channel.get(i + 1).is_some_and(|&next| next != b'.');
        if byte.is_ascii_alphanumeric() || byte == b'_' || keeps_token_apart {
            topic.push(char::from(byte));
        } else {
            topic.push_str(ESCAPE);
            topic.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
            topic.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
        }
        // Checked as it grows, so a huge channel costs no more than a topic's worth of work.
        if topic.len() > TOPIC_BYTES_MAX {
            return Err(ChannelError::TooLong);
        }
    }
    debug_assert_eq!(
        parse_subscription(topic.as_bytes()).map(|(_, kind)| kind),
        Ok(SubjectKind::Exact)
    );
    Ok(Cow::Owned(topic))
}

/// The Redis channel name of `topic`: the inverse of [`channel_to_topic`]. A topic that no
/// channel maps to (it holds a `--` this mapping would not produce) is shown as it is.
pub fn topic_to_channel(topic: &str) -> Cow<'_, [u8]> {
    if !holds_escape(topic.as_bytes()) {
        return Cow::Borrowed(topic.as_bytes());
    }
    let bytes = topic.as_bytes();
    let mut channel = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&byte) = bytes.get(i) {
        let escaped = match bytes.get(i..i + 4) {
            Some([b'-', b'-', high, low]) => lower_hex(*high).zip(lower_hex(*low)),
            _ => None,
        };
        match escaped {
            Some((high, low)) => {
                channel.push(high << 4 | low);
                i += 4;
            }
            None => {
                channel.push(byte);
                i += 1;
            }
        }
    }
    // Only a topic this mapping produced reads back; anything else keeps its own name.
    match channel_to_topic(&channel) {
        Ok(mapped) if mapped == topic => Cow::Owned(channel),
        _ => Cow::Borrowed(bytes),
    }
}

/// Does `name` hold [`ESCAPE`]? A byte-pair scan: `str::contains` sets up a general substring
/// searcher, which costs more than the scan on names of at most 255 bytes, once per publish
/// and once per delivery.
fn holds_escape(name: &[u8]) -> bool {
    // Most names have no `-` at all.
    holds_dash(name)
        && name
            .windows(ESCAPE.len())
            .any(|pair| pair == ESCAPE.as_bytes())
}

/// Does `name` hold a `-`? Eight bytes at a time (a word with no zero byte after an XOR
/// with dashes has none), the last word overlapping the one before: on a name of at most 255
/// bytes this beats a byte search (memchr), which cost about 50 instructions a delivery to a
/// Redis subscriber (callgrind, a 17-byte name).
fn holds_dash(name: &[u8]) -> bool {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    const DASHES: u64 = u64::from_le_bytes([b'-'; 8]);
    let has_dash = |chunk: &[u8]| {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            return chunk.contains(&b'-');
        };
        let x = u64::from_le_bytes(bytes) ^ DASHES;
        x.wrapping_sub(ONES) & !x & HIGHS != 0
    };
    if name.len() < 8 {
        return name.contains(&b'-');
    }
    name.chunks_exact(8).any(has_dash) || has_dash(&name[name.len() - 8..])
}

fn lower_hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mapping_examples() {
        let cases: &[(&[u8], &str)] = &[
            // Valid topics are their own names.
            (b"orders", "orders"),
            (b"orders.eu.created", "orders.eu.created"),
            (b"a-b_c.D-9", "a-b_c.D-9"),
            (b"$dlq.orders", "$dlq.orders"),
            // Redis's usual separators.
            (b"user:42:events", "user--3a42--3aevents"),
            (b"sensors/room1/temp", "sensors--2froom1--2ftemp"),
            (b"socket.io#/#", "socket.io--23--2f--23"),
            (b"a:b.c", "a--3ab.c"),
            // `-` is escaped whenever the name is escaped, and `--` always forces escaping.
            (b"a-b:c", "a--2db--3ac"),
            (b"a--b", "a--2d--2db"),
            (b"--", "--2d--2d"),
            // Dots that would leave an empty token.
            (b".a", "--2ea"),
            (b"a.", "a--2e"),
            (b"a..b", "a--2e--2eb"),
            (b".", "--2e"),
            // Wildcards and reserved prefixes are literal bytes in Redis channels.
            (b"a.*", "a.--2a"),
            (b"a.>", "a.--3e"),
            (b"*", "--2a"),
            (b"$", "--24"),
            (b"$a:b", "--24a--3ab"),
            (b"$.a", "--24.a"),
            // Anything at all.
            (b" ", "--20"),
            (b"\x00\xff", "--00--ff"),
            ("caf\u{e9}".as_bytes(), "caf--c3--a9"),
        ];
        for &(channel, topic) in cases {
            let mapped = channel_to_topic(channel);
            assert_eq!(
                mapped.as_deref(),
                Ok(topic),
                "{:?}",
                String::from_utf8_lossy(channel)
            );
            assert_eq!(
                parse_subscription(topic.as_bytes()).map(|(_, kind)| kind),
                Ok(SubjectKind::Exact),
                "{topic:?}"
            );
            assert_eq!(topic_to_channel(topic).as_ref(), channel, "{topic:?}");
        }
        assert!(matches!(
            channel_to_topic(b"orders.eu"),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(topic_to_channel("orders.eu"), Cow::Borrowed(_)));
    }

    #[test]
    fn refusals() {
        assert_eq!(channel_to_topic(b""), Err(ChannelError::Empty));
        let longest = "a".repeat(TOPIC_BYTES_MAX);
        assert_eq!(
            channel_to_topic(longest.as_bytes()).as_deref(),
            Ok(longest.as_str())
        );
        let too_long = "a".repeat(TOPIC_BYTES_MAX + 1);
        assert_eq!(
            channel_to_topic(too_long.as_bytes()),
            Err(ChannelError::TooLong)
        );
        // 63 escapes (252 bytes) plus 3 letters fit; one more escape does not.
        let fits = format!("{}abc", ":".repeat(63));
        assert_eq!(channel_to_topic(fits.as_bytes()).map(|t| t.len()), Ok(255));
        let over = format!("{}abcd", ":".repeat(63));
        assert_eq!(
            channel_to_topic(over.as_bytes()),
            Err(ChannelError::TooLong)
        );
        let huge = vec![b':'; 1 << 20];
        assert_eq!(channel_to_topic(&huge), Err(ChannelError::TooLong));
        for error in [ChannelError::Empty, ChannelError::TooLong] {
            assert!(error.message().starts_with("invalid channel name: "));
        }
    }

    #[test]
    fn topics_no_channel_maps_to_keep_their_names() {
        for topic in ["--", "a--b", "a--zz", "--61", "a-b--3a", "x--3A"] {
            assert_eq!(
                topic_to_channel(topic).as_ref(),
                topic.as_bytes(),
                "{topic:?}"
            );
            assert_ne!(channel_to_topic(topic.as_bytes()).as_deref(), Ok(topic));
        }
    }

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-]{1,8}"
    }

    proptest! {
        #[test]
        fn the_word_search_for_a_dash_is_a_byte_search(
            name in proptest::collection::vec(
                prop_oneof![
                    20 => any::<u8>(),
                    1 => Just(b'-'),
                    // Its neighbours, and itself with the high bit set.
                    5 => proptest::sample::select(&b",.\xad"[..]),
                ],
                0..40,
            ),
        ) {
            prop_assert_eq!(holds_dash(&name), name.contains(&b'-'));
        }
    }

    proptest! {
        #[test]
        fn the_one_pass_check_agrees_with_the_full_scan(
            name in "[A-Za-z0-9_.$*>:-]{0,12}|[a-z.-]{250,260}",
        ) {
            let full = match parse_subscription(name.as_bytes()) {
                Ok((topic, SubjectKind::Exact))
                    if !topic.starts_with('$') && !holds_escape(topic.as_bytes()) => Some(topic),
                _ => None,
            };
            prop_assert_eq!(plain_unescaped_topic(name.as_bytes()), full);
        }

        #[test]
        fn every_channel_round_trips(channel in proptest::collection::vec(any::<u8>(), 0..80)) {
            match channel_to_topic(&channel) {
                Ok(topic) => {
                    prop_assert_eq!(
                        parse_subscription(topic.as_bytes()).map(|(_, kind)| kind),
                        Ok(SubjectKind::Exact)
                    );
                    let back = topic_to_channel(&topic);
                    prop_assert_eq!(back.as_ref(), channel.as_slice());
                }
                Err(ChannelError::Empty) => prop_assert!(channel.is_empty()),
                Err(ChannelError::TooLong) => prop_assert!(channel.len() * 4 > TOPIC_BYTES_MAX),
            }
        }

        #[test]
        fn channels_like_redis_names_round_trip(
            parts in proptest::collection::vec("[a-z0-9]{0,6}", 1..8),
            separators in proptest::collection::vec(prop_oneof![Just(':'), Just('/'), Just('.'), Just('-'), Just('#')], 8),
        ) {
            let mut channel = String::new();
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    channel.push(separators[i]);
                }
                channel.push_str(part);
            }
            if let Ok(topic) = channel_to_topic(channel.as_bytes()) {
                let back = topic_to_channel(&topic);
                prop_assert_eq!(back.as_ref(), channel.as_bytes());
            }
        }

        #[test]
        fn valid_topics_are_their_own_channels(tokens in proptest::collection::vec(token(), 1..20)) {
            let topic = tokens.join(".");
            prop_assume!(topic.len() <= TOPIC_BYTES_MAX);
            let channel = topic_to_channel(&topic);
            // Either the topic reads back, or it is one no channel maps to.
            let back = channel_to_topic(&channel);
            if back.as_deref() != Ok(topic.as_str()) {
                prop_assert!(topic.contains(ESCAPE));
                prop_assert_eq!(channel.as_ref(), topic.as_bytes());
            }
            if !topic.contains(ESCAPE) {
                prop_assert_eq!(channel.as_ref(), topic.as_bytes());
            }
        }

        #[test]
        fn distinct_channels_get_distinct_topics(
            a in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'-'), Just(b'.'), Just(b':'), Just(b'2'), Just(b'd')], 1..10),
            b in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'-'), Just(b'.'), Just(b':'), Just(b'2'), Just(b'd')], 1..10),
        ) {
            if a != b {
                prop_assert_ne!(channel_to_topic(&a), channel_to_topic(&b));
            }
        }
    }
}
