//! Topic names and subscription patterns: the naming rules, wildcard matching semantics
//! and topic→shard routing.
//!
//! Every interface (native frames, WebSocket, the broker's own `$dlq.`/`$sys.` topics)
//! agrees on one definition of a valid name, so it lives here, sans-IO and pure. Topic
//! bytes arrive straight from clients, so validation never panics and never allocates:
//! it runs on every publish.
//!
//! Rules (NATS-style): a name is 1..=[`TOPIC_BYTES_MAX`] bytes of `.`-separated, non-empty
//! tokens made of `[A-Za-z0-9_-]`. A leading `$` marks a broker-reserved name (clients may
//! subscribe to one, never publish to one). In a subscription, a token that is exactly `*`
//! matches one token and a final token that is exactly `>` matches one or more tokens.

use std::borrow::Cow;
use std::fmt;

use crate::protocol::resp_channel;

/// Longest accepted name or pattern, in bytes. Keeps per-topic keys small and bounds the
/// token count (and so the sublist's recursion depth) at 128.
pub const TOPIC_BYTES_MAX: usize = 255;

/// Splits a name into tokens.
pub const TOKEN_SEPARATOR: u8 = b'.';
/// As a whole token: matches exactly one token.
pub const SINGLE_WILDCARD: &str = "*";
/// As the last token: matches one or more trailing tokens.
pub const FULL_WILDCARD: &str = ">";

const RESERVED_PREFIX: u8 = b'$';

/// Starts a subscription subject that is a Redis glob pattern (the RESP port's
/// `PSUBSCRIBE`) rather than a `.`-token pattern. The rest is the glob's bytes in the
/// escaping of [`crate::protocol::resp_channel`] (`~user--3a--2a` is the glob `user:*`), and
/// it is matched against a topic's Redis channel name. `~` is in no topic and no token
/// pattern, so the two kinds can never be confused.
pub const GLOB_MARK: u8 = b'~';

/// Whether a subscription names one topic or a family of topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubjectKind {
    /// No wildcard: a single topic.
    Exact,
    /// At least one `*` or `>` token.
    Pattern,
}

/// Why a name was rejected; [`TopicError::reason`] is a short human sentence sent back to
/// clients inside a BAD_TOPIC error.
///
/// When a name breaks several rules, the first offending byte decides, after the length
/// checks (so a client fixing errors one at a time converges).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicError {
    Empty,
    TooLong,
    /// A leading, trailing or doubled `.`, or a `$` with nothing after it.
    EmptyToken,
    BadCharacter,
    /// `*` or `>` shares a token with other characters (`a*`, `**`, `$*`).
    WildcardInToken,
    /// `>` followed by more tokens (`>.a`).
    FullWildcardNotLast,
    /// Publishing to a `$` name, which only the broker may produce.
    Reserved,
    NotUtf8,
    /// A wildcard in a publish topic: a message goes to one concrete topic.
    WildcardInPublish,
    /// A `~` subject whose rest is not an escaped Redis glob.
    BadGlob,
}

impl TopicError {
    pub fn reason(self) -> &'static str {
        match self {
            TopicError::Empty => "topic is empty",
            TopicError::TooLong => "topic is longer than 255 bytes",
            TopicError::EmptyToken => {
                "topic has an empty token (a leading, trailing or doubled '.', or a bare '$')"
            }
            TopicError::BadCharacter => {
                "topic tokens may only contain letters A-Z a-z, digits, '_' and '-'"
            }
            TopicError::WildcardInToken => "wildcards '*' and '>' must be a whole token",
            TopicError::FullWildcardNotLast => "wildcard '>' may only be the last token",
            TopicError::Reserved => "topics starting with '$' are reserved for the broker",
            TopicError::NotUtf8 => "topic is not valid UTF-8",
            TopicError::WildcardInPublish => {
                "wildcards '*' and '>' are only allowed when subscribing, not when publishing"
            }
            TopicError::BadGlob => {
                "a subject starting with '~' is a Redis glob, escaped as the RESP port escapes \
                 channel names"
            }
        }
    }
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for TopicError {}

/// A name a client may publish to: exact, not reserved. Returns it as `&str`.
// Inlined into the publish path: about 30 instructions a publish less (callgrind, native
// 1:1, fan-in and many topics; 13 on the Redis port, which checks most names elsewhere).
#[inline]
pub fn parse_publish_topic(bytes: &[u8]) -> Result<&str, TopicError> {
    check_length(bytes)?;
    // Checked before the shape: whatever follows a `$`, a client may not publish there,
    // and saying so is more useful than pointing at a malformed reserved name.
    if bytes.first() == Some(&RESERVED_PREFIX) {
        return Err(TopicError::Reserved);
    }
    if !is_plain_exact::<false>(bytes) {
        scan_tokens::<false>(bytes)?;
    }
    Ok(scanned_as_str(bytes))
}

/// [`parse_publish_topic`] with a memory of the last name that passed it, for a handle that
/// publishes from one thread (the embedded bus's publisher): it mostly sends to one topic
/// again and again, and comparing a name with the last one costs a third of checking it
/// (callgrind: about 50 instructions against 145 for a 17-byte name). A name that differs
/// costs about 50 more than its check (the comparison and a copy), which is why the network
/// path, where one shard serves publishers of many topics, does not keep one.
#[derive(Debug, Default)]
pub struct CheckedTopic {
    /// Empty until a name passes (the empty name never does).
    last: Vec<u8>,
}

impl CheckedTopic {
    pub fn parse_publish_topic<'a>(&mut self, bytes: &'a [u8]) -> Result<&'a str, TopicError> {
        self.parse_noting_repeat(bytes).map(|(topic, _)| topic)
    }

    /// [`CheckedTopic::parse_publish_topic`], and whether the name is the one that passed
    /// last (the bus's publisher tells its shard so, which then skips looking it up).
    pub fn parse_noting_repeat<'a>(
        &mut self,
        bytes: &'a [u8],
    ) -> Result<(&'a str, bool), TopicError> {
        if !self.last.is_empty() && bytes == &self.last[..] {
            return Ok((scanned_as_str(bytes), true));
        }
        let topic = parse_publish_topic(bytes)?;
        self.last.clear();
        self.last.extend_from_slice(bytes);
        Ok((topic, false))
    }
}

/// A name a client may subscribe to: exact (reserved `$` names allowed, to read dead
/// letters) or a pattern.
pub fn parse_subscription(bytes: &[u8]) -> Result<(&str, SubjectKind), TopicError> {
    if let Some(escaped_glob) = bytes.strip_prefix(&[GLOB_MARK]) {
        check_length(escaped_glob)?;
        // Every escaped name is an exact topic name (see `resp_channel`).
        return match scan_tokens::<false>(escaped_glob) {
            Ok(_) => Ok((scanned_as_str(bytes), SubjectKind::Pattern)),
            Err(_) => Err(TopicError::BadGlob),
        };
    }
    check_length(bytes)?;
    let kind = scan_tokens::<true>(bytes)?;
    Ok((scanned_as_str(bytes), kind))
}

/// Does exact `topic` match `pattern`? A deliberately plain token-by-token walk: the
/// reference the sublist trie is tested against, not the hot path.
pub fn pattern_matches(pattern: &str, topic: &str) -> bool {
    if let Some(glob) = glob_of_subject(pattern) {
        return crate::protocol::glob::glob_match(&glob, &resp_channel::topic_to_channel(topic));
    }
    let mut pattern_tokens = pattern.split('.');
    let mut topic_tokens = topic.split('.');
    loop {
        match (pattern_tokens.next(), topic_tokens.next()) {
            (None, None) => return true,
            (Some(FULL_WILDCARD), Some(_)) => return true,
            (Some(SINGLE_WILDCARD), Some(_)) => {}
            (Some(pattern_token), Some(topic_token)) if pattern_token == topic_token => {}
            _ => return false,
        }
    }
}

/// The subject of a subscription to Redis glob `glob`, or why the glob cannot be held.
pub fn glob_subject(glob: &[u8]) -> Result<String, resp_channel::ChannelError> {
    let escaped = resp_channel::channel_to_topic(glob)?;
    let mut subject = String::with_capacity(escaped.len() + 1);
    subject.push(char::from(GLOB_MARK));
    subject.push_str(&escaped);
    Ok(subject)
}

/// The Redis glob a subject holds, if it is a glob subject (see [`GLOB_MARK`]).
pub fn glob_of_subject(subject: &str) -> Option<Cow<'_, [u8]>> {
    let escaped = subject.strip_prefix(char::from(GLOB_MARK))?;
    Some(resp_channel::topic_to_channel(escaped))
}

/// Fixed seeds (the hex digits of pi) rather than per-process randomness: every shard
/// thread, every restart and every tool that predicts placement must route a topic to
/// the same shard.
const ROUTING_HASHER: ahash::RandomState = ahash::RandomState::with_seeds(
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
);

/// Stable topic→shard routing. A `shard_count` of 0 is treated as 1 rather than panicking.
#[inline]
pub fn owner_shard(topic: &str, shard_count: usize) -> usize {
    owner_shard_of_bytes(topic.as_bytes(), shard_count)
}

/// [`owner_shard`] of a name's bytes, before they are checked: the owner's table is asked
/// first, which proves a name it holds (see `OwnedTopics::publishable`).
#[inline]
pub fn owner_shard_of_bytes(topic: &[u8], shard_count: usize) -> usize {
    // One shard owns everything: no hash (about 60 instructions a publish).
    if shard_count <= 1 {
        return 0;
    }
    (ROUTING_HASHER.hash_one(topic) % shard_count as u64) as usize
}

fn check_length(bytes: &[u8]) -> Result<(), TopicError> {
    if bytes.is_empty() {
        Err(TopicError::Empty)
    } else if bytes.len() > TOPIC_BYTES_MAX {
        Err(TopicError::TooLong)
    } else {
        Ok(())
    }
}

/// The scan has already proved every byte is ASCII, so this cannot fail; it still maps the
/// error instead of unwrapping so that no input path can panic, and it costs little on at
/// most 255 ASCII bytes.
/// `bytes` passed [`scan_tokens`] (after a `~` for a glob subject), which refuses every
/// non-ASCII byte, so they are UTF-8 already; checking again cost about 130 instructions per
/// publish (callgrind), a twentieth of the whole native 1:1 path.
fn scanned_as_str(bytes: &[u8]) -> &str {
    debug_assert!(bytes.is_ascii());
    // SAFETY: ASCII is valid UTF-8, and the scan let only ASCII through.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

/// The Redis port's common case in one pass: `bytes` is an exact topic name with no `$`
/// prefix and no `--` anywhere (so no escape of [`resp_channel`] either), returned as a str;
/// anything else is `None` and takes the full scan. About a third of the cost of
/// [`parse_subscription`] followed by a substring search, on every Redis publish.
pub fn plain_unescaped_topic(bytes: &[u8]) -> Option<&str> {
    (bytes.len() <= TOPIC_BYTES_MAX && is_plain_exact::<true>(bytes)).then(|| scanned_as_str(bytes))
}

/// What [`plain_bytes_one_at_a_time`] needs to know of a byte, as bits: a byte allowed in an
/// exact name has `VALID`, and the two that matter in pairs also have their own bit.
#[cfg(any(not(target_arch = "x86_64"), test))]
const CLASS_VALID: u8 = 1;
#[cfg(any(not(target_arch = "x86_64"), test))]
const CLASS_DOT: u8 = 2;
#[cfg(any(not(target_arch = "x86_64"), test))]
const CLASS_DASH: u8 = 4;

#[cfg(any(not(target_arch = "x86_64"), test))]
const BYTE_CLASS: [u8; 256] = {
    let mut table = [0; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = if byte == TOKEN_SEPARATOR as usize {
            CLASS_VALID | CLASS_DOT
        } else if byte == b'-' as usize {
            CLASS_VALID | CLASS_DASH
        } else if TOKEN_BYTE[byte] {
            CLASS_VALID
        } else {
            0
        };
        byte += 1;
    }
    table
};

/// Are `bytes` non-empty tokens of token bytes joined by single `.`s (with no `--` when
/// `NO_DOUBLE_DASH`)? The happy path of every publish, where [`scan_tokens`] tracks wildcard
/// states a publish cannot have; a `false` goes to the full scan, which says what is wrong.
#[inline]
fn is_plain_exact<const NO_DOUBLE_DASH: bool>(bytes: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    first != TOKEN_SEPARATOR && last != TOKEN_SEPARATOR && plain_bytes::<NO_DOUBLE_DASH>(bytes)
}

/// Every byte a name byte, and no `..` (nor `--` when `NO_DOUBLE_DASH`), sixteen bytes at a
/// time: byte by byte this was a tenth of the native 1:1 path's instructions (callgrind,
/// about 150 of 1,600 a message for a 17-byte name); with SSE2, which every x86-64 has, that
/// name takes two blocks, about 100 instructions in all, and longer names gain more.
#[cfg(target_arch = "x86_64")]
#[inline]
fn plain_bytes<const NO_DOUBLE_DASH: bool>(bytes: &[u8]) -> bool {
    use sse2::{plain_block, BLOCK};
    let Some(last_start) = bytes.len().checked_sub(BLOCK) else {
        // Padded with a name byte that makes no pair with anything.
        let mut block = [b'a'; BLOCK];
        block[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: SSE2 is part of x86-64 itself, so every CPU this runs on has it.
        return unsafe { plain_block::<NO_DOUBLE_DASH>(&block) };
    };
    // Blocks overlap by a byte, so that each pair of neighbours lies inside one block; the
    // last one ends with the name, overlapping the one before by as much as it must.
    let mut start = 0;
    while start < last_start {
        if !plain_block_at::<NO_DOUBLE_DASH>(bytes, start) {
            return false;
        }
        start += BLOCK - 1;
    }
    plain_block_at::<NO_DOUBLE_DASH>(bytes, last_start)
}

/// The block of `bytes` from `start`; one that does not fit (which the caller never asks
/// for) answers `false`, sending the name to the full scan rather than panicking.
#[cfg(target_arch = "x86_64")]
#[inline]
fn plain_block_at<const NO_DOUBLE_DASH: bool>(bytes: &[u8], start: usize) -> bool {
    match bytes.get(start..).and_then(<[u8]>::first_chunk) {
        // SAFETY: SSE2 is part of x86-64 itself, so every CPU this runs on has it.
        Some(block) => unsafe { sse2::plain_block::<NO_DOUBLE_DASH>(block) },
        None => false,
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn plain_bytes<const NO_DOUBLE_DASH: bool>(bytes: &[u8]) -> bool {
    plain_bytes_one_at_a_time::<NO_DOUBLE_DASH>(bytes)
}

/// [`plain_bytes`] a byte at a time, where there is no SSE2 (and the reference it is tested
/// against). Each byte is judged on its own and beside the one before it, so no byte's work
/// waits on the previous byte's: a state machine (each table load's index taken from the
/// last load) runs at a load's latency a byte.
#[cfg(any(not(target_arch = "x86_64"), test))]
fn plain_bytes_one_at_a_time<const NO_DOUBLE_DASH: bool>(bytes: &[u8]) -> bool {
    let mut every_class = CLASS_VALID;
    let mut pairs = 0;
    let mut previous = 0;
    for &byte in bytes {
        let class = BYTE_CLASS[usize::from(byte)];
        every_class &= class;
        pairs |= previous & class;
        previous = class;
    }
    let refused_pairs = if NO_DOUBLE_DASH {
        CLASS_DOT | CLASS_DASH
    } else {
        CLASS_DOT
    };
    every_class & CLASS_VALID != 0 && pairs & refused_pairs == 0
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_loadu_si128, _mm_movemask_epi8,
        _mm_or_si128, _mm_set1_epi8,
    };

    pub const BLOCK: usize = 16;

    /// Each lane of `bytes` that is `byte`, as all ones.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn lanes_equal(bytes: __m128i, byte: u8) -> __m128i {
        _mm_cmpeq_epi8(bytes, _mm_set1_epi8(byte as i8))
    }

    /// Each lane of `bytes` within `low..=high`, as all ones. The comparison is signed, which
    /// is right for ASCII bounds: a byte from 0x80 up is negative, below every bound.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn lanes_within(bytes: __m128i, low: u8, high: u8) -> __m128i {
        let above_low = _mm_cmpgt_epi8(bytes, _mm_set1_epi8((low - 1) as i8));
        let below_high = _mm_cmpgt_epi8(_mm_set1_epi8((high + 1) as i8), bytes);
        _mm_and_si128(above_low, below_high)
    }

    /// The lanes set in `lanes` as bits, lane 0 in bit 0.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn lane_bits(lanes: __m128i) -> u32 {
        _mm_movemask_epi8(lanes) as u32
    }

    /// Are all 16 bytes name bytes (`[A-Za-z0-9_.-]`), with no two `.` side by side (nor
    /// two `-` when `NO_DOUBLE_DASH`)?
    #[inline]
    #[target_feature(enable = "sse2")]
    pub fn plain_block<const NO_DOUBLE_DASH: bool>(block: &[u8; BLOCK]) -> bool {
        // SAFETY: an unaligned load of exactly the 16 bytes `block` borrows.
        let bytes = unsafe { _mm_loadu_si128(block.as_ptr().cast::<__m128i>()) };
        // Setting 0x20 folds upper case onto lower case and moves no other byte into a..z.
        let letters = lanes_within(_mm_or_si128(bytes, _mm_set1_epi8(0x20)), b'a', b'z');
        let digits = lanes_within(bytes, b'0', b'9');
        let dots = lanes_equal(bytes, super::TOKEN_SEPARATOR);
        let dashes = lanes_equal(bytes, b'-');
        let underscores = lanes_equal(bytes, b'_');
        let name_bytes = _mm_or_si128(
            _mm_or_si128(letters, digits),
            _mm_or_si128(_mm_or_si128(dots, dashes), underscores),
        );
        let dots = lane_bits(dots);
        let mut pairs = dots & (dots >> 1);
        if NO_DOUBLE_DASH {
            let dashes = lane_bits(dashes);
            pairs |= dashes & (dashes >> 1);
        }
        lane_bits(name_bytes) == 0xFFFF && pairs == 0
    }
}

/// What has been seen of the token under the cursor.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TokenSoFar {
    Nothing,
    /// The leading `$` of a reserved name, which does not count as the token's content.
    ReservedPrefix,
    Literal,
    SingleWildcard,
    FullWildcard,
}

/// A lookup table beats a chain of range comparisons on the per-byte hot path.
const TOKEN_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
        byte += 1;
    }
    table
};

/// One pass over the bytes; the length has already been checked.
fn scan_tokens<const ALLOW_WILDCARDS: bool>(bytes: &[u8]) -> Result<SubjectKind, TopicError> {
    let mut kind = SubjectKind::Exact;
    let mut token = TokenSoFar::Nothing;
    let mut rest = bytes;
    if let Some((&RESERVED_PREFIX, after_prefix)) = bytes.split_first() {
        token = TokenSoFar::ReservedPrefix;
        rest = after_prefix;
    }
    for &byte in rest {
        if TOKEN_BYTE[usize::from(byte)] {
            token = match token {
                TokenSoFar::SingleWildcard | TokenSoFar::FullWildcard => {
                    return Err(TopicError::WildcardInToken)
                }
                _ => TokenSoFar::Literal,
            };
            continue;
        }
        match byte {
            TOKEN_SEPARATOR => match token {
                TokenSoFar::Nothing | TokenSoFar::ReservedPrefix => {
                    return Err(TopicError::EmptyToken)
                }
                TokenSoFar::FullWildcard => return Err(TopicError::FullWildcardNotLast),
                TokenSoFar::Literal | TokenSoFar::SingleWildcard => token = TokenSoFar::Nothing,
            },
            b'*' | b'>' => {
                if !ALLOW_WILDCARDS {
                    return Err(TopicError::WildcardInPublish);
                }
                if token != TokenSoFar::Nothing {
                    return Err(TopicError::WildcardInToken);
                }
                token = if byte == b'*' {
                    TokenSoFar::SingleWildcard
                } else {
                    TokenSoFar::FullWildcard
                };
                kind = SubjectKind::Pattern;
            }
            // Off the happy path, so validating the whole input again is affordable; it
            // tells a client with a broken encoder apart from one sending real Unicode.
            _ if !byte.is_ascii() => {
                return Err(match std::str::from_utf8(bytes) {
                    Ok(_) => TopicError::BadCharacter,
                    Err(_) => TopicError::NotUtf8,
                });
            }
            _ => return Err(TopicError::BadCharacter),
        }
    }
    match token {
        TokenSoFar::Nothing | TokenSoFar::ReservedPrefix => Err(TopicError::EmptyToken),
        _ => Ok(kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What both parse functions should say about one input.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Expected {
        publish: Result<(), TopicError>,
        subscribe: Result<SubjectKind, TopicError>,
    }

    const EXACT: Expected = Expected {
        publish: Ok(()),
        subscribe: Ok(SubjectKind::Exact),
    };
    const PATTERN: Expected = Expected {
        publish: Err(TopicError::WildcardInPublish),
        subscribe: Ok(SubjectKind::Pattern),
    };
    const RESERVED_EXACT: Expected = Expected {
        publish: Err(TopicError::Reserved),
        subscribe: Ok(SubjectKind::Exact),
    };
    const RESERVED_PATTERN: Expected = Expected {
        publish: Err(TopicError::Reserved),
        subscribe: Ok(SubjectKind::Pattern),
    };

    fn both(error: TopicError) -> Expected {
        Expected {
            publish: Err(error),
            subscribe: Err(error),
        }
    }

    fn subscribe_only(error: TopicError) -> Expected {
        Expected {
            publish: Err(TopicError::WildcardInPublish),
            subscribe: Err(error),
        }
    }

    fn reserved(subscribe_error: TopicError) -> Expected {
        Expected {
            publish: Err(TopicError::Reserved),
            subscribe: Err(subscribe_error),
        }
    }

    fn check(input: &[u8], expected: Expected) {
        let shown = String::from_utf8_lossy(input);
        let published = parse_publish_topic(input);
        assert_eq!(published.map(|_| ()), expected.publish, "publish {shown:?}");
        if let Ok(name) = published {
            assert_eq!(name.as_bytes(), input);
        }
        let subscribed = parse_subscription(input);
        assert_eq!(
            subscribed.map(|(_, kind)| kind),
            expected.subscribe,
            "subscribe {shown:?}"
        );
        if let Ok((name, _)) = subscribed {
            assert_eq!(name.as_bytes(), input);
        }
    }

    #[test]
    fn names_and_patterns_are_validated() {
        let longest = "a".repeat(TOPIC_BYTES_MAX);
        let too_long = "a".repeat(TOPIC_BYTES_MAX + 1);
        let longest_dotted = format!("{}a", "a.".repeat(127));
        let too_long_reserved = format!("${}", "a".repeat(TOPIC_BYTES_MAX));
        let cases: Vec<(&[u8], Expected)> = vec![
            // plain names
            (b"a", EXACT),
            (b"orders", EXACT),
            (b"orders.eu.created", EXACT),
            (b"Az09_-.x-y_Z", EXACT),
            (longest.as_bytes(), EXACT),
            (longest_dotted.as_bytes(), EXACT),
            // length
            (b"", both(TopicError::Empty)),
            (too_long.as_bytes(), both(TopicError::TooLong)),
            (too_long_reserved.as_bytes(), both(TopicError::TooLong)),
            // empty tokens
            (b"a..b", both(TopicError::EmptyToken)),
            (b".a", both(TopicError::EmptyToken)),
            (b"a.", both(TopicError::EmptyToken)),
            (b".", both(TopicError::EmptyToken)),
            (b"..", both(TopicError::EmptyToken)),
            // characters
            (b"a b", both(TopicError::BadCharacter)),
            (b" a", both(TopicError::BadCharacter)),
            (b"a\tb", both(TopicError::BadCharacter)),
            (b"a\0", both(TopicError::BadCharacter)),
            (b"a/b", both(TopicError::BadCharacter)),
            (b"a.$b", both(TopicError::BadCharacter)),
            (b"a$", both(TopicError::BadCharacter)),
            ("caf\u{e9}".as_bytes(), both(TopicError::BadCharacter)),
            ("\u{1f600}".as_bytes(), both(TopicError::BadCharacter)),
            (b"a\xff", both(TopicError::NotUtf8)),
            (b"\xc3", both(TopicError::NotUtf8)),
            (b"a.\xed\xa0\x80", both(TopicError::NotUtf8)),
            // the first offending byte decides
            (b"a..\xff", both(TopicError::EmptyToken)),
            (b"a \xff", both(TopicError::BadCharacter)),
            // wildcards
            (b"*", PATTERN),
            (b">", PATTERN),
            (b"a.*", PATTERN),
            (b"a.*.c", PATTERN),
            (b"*.*.*", PATTERN),
            (b"a.>", PATTERN),
            (b"*.>", PATTERN),
            (b">.a", subscribe_only(TopicError::FullWildcardNotLast)),
            (b"a.>.b", subscribe_only(TopicError::FullWildcardNotLast)),
            (b">.>", subscribe_only(TopicError::FullWildcardNotLast)),
            (b"a*", subscribe_only(TopicError::WildcardInToken)),
            (b"*a", subscribe_only(TopicError::WildcardInToken)),
            (b"a.b>", subscribe_only(TopicError::WildcardInToken)),
            (b">a", subscribe_only(TopicError::WildcardInToken)),
            (b"**", subscribe_only(TopicError::WildcardInToken)),
            (b"*>", subscribe_only(TopicError::WildcardInToken)),
            (b"a.*.", subscribe_only(TopicError::EmptyToken)),
            (b"a.>.", subscribe_only(TopicError::FullWildcardNotLast)),
            // reserved names
            (b"$dlq.x", RESERVED_EXACT),
            (b"$dlq.orders.eu", RESERVED_EXACT),
            (b"$sys.*", RESERVED_PATTERN),
            (b"$dlq.>", RESERVED_PATTERN),
            (b"$a", RESERVED_EXACT),
            (b"$-", RESERVED_EXACT),
            (b"$", reserved(TopicError::EmptyToken)),
            (b"$.a", reserved(TopicError::EmptyToken)),
            (b"$$a", reserved(TopicError::BadCharacter)),
            (b"$*", reserved(TopicError::WildcardInToken)),
            (b"$>", reserved(TopicError::WildcardInToken)),
            (b"$dlq..x", reserved(TopicError::EmptyToken)),
            (b"$dlq.\xff", reserved(TopicError::NotUtf8)),
        ];
        for (input, expected) in cases {
            check(input, expected);
        }
    }

    #[test]
    fn every_error_has_a_distinct_reason() {
        let errors = [
            TopicError::Empty,
            TopicError::TooLong,
            TopicError::EmptyToken,
            TopicError::BadCharacter,
            TopicError::WildcardInToken,
            TopicError::FullWildcardNotLast,
            TopicError::Reserved,
            TopicError::NotUtf8,
            TopicError::WildcardInPublish,
        ];
        let mut reasons: Vec<_> = errors.iter().map(|error| error.to_string()).collect();
        assert!(reasons.iter().all(|reason| !reason.is_empty()));
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), errors.len());
    }

    #[test]
    fn patterns_match_with_nats_semantics() {
        let cases: &[(&str, &str, bool)] = &[
            ("a", "a", true),
            ("a", "b", false),
            ("a", "a.b", false),
            ("a.b", "a", false),
            ("a.b", "a.b", true),
            ("a.*", "a.b", true),
            ("a.*", "a", false),
            ("a.*", "a.b.c", false),
            ("*.b", "x.b", true),
            ("*.b", "x.c", false),
            ("*.b", "b", false),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.d", false),
            ("a.*.c", "a.c", false),
            ("a.>", "a.b", true),
            ("a.>", "a.b.c", true),
            ("a.>", "a", false),
            ("a.>", "b.c", false),
            ("*.>", "a.b", true),
            ("*.>", "a", false),
            (">", "a", true),
            (">", "a.b.c", true),
            ("*", "a", true),
            ("*", "a.b", false),
            ("*.*", "a.b", true),
            ("*.*", "a.b.c", false),
            ("$dlq.>", "$dlq.orders", true),
            ("$dlq.>", "dlq.orders", false),
        ];
        for &(pattern, topic, expected) in cases {
            assert_eq!(
                pattern_matches(pattern, topic),
                expected,
                "{pattern:?} vs {topic:?}"
            );
        }
    }

    /// Pinned once from this implementation. If this fails, routing changed (new seeds, a
    /// new ahash version, or a different hashing backend for this target): topics would move
    /// between shards, so it must be a deliberate decision, not an accident.
    #[test]
    fn owner_shard_is_pinned() {
        let pinned: &[(&str, usize, usize)] = &[
            ("orders", 4, 2),
            ("orders.eu.created", 4, 2),
            ("$dlq.orders", 4, 0),
            ("a", 8, 5),
            ("metrics.cpu.0", 16, 8),
        ];
        for &(topic, shard_count, shard) in pinned {
            assert_eq!(owner_shard(topic, shard_count), shard, "{topic:?}");
        }
    }

    #[test]
    fn owner_shard_agrees_across_threads() {
        let topics: Vec<String> = (0..1000).map(|i| format!("topic.{i}")).collect();
        let here: Vec<usize> = topics.iter().map(|t| owner_shard(t, 7)).collect();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let topics = topics.clone();
                std::thread::spawn(move || -> Vec<usize> {
                    topics.iter().map(|t| owner_shard(t, 7)).collect()
                })
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().expect("routing thread panicked"), here);
        }
    }

    #[test]
    fn owner_shard_spreads_evenly() {
        let mut per_shard = [0usize; 4];
        for i in 0..10_000 {
            per_shard[owner_shard(&format!("orders.customer-{i}.created"), 4)] += 1;
        }
        // Expected 2500 each with a standard deviation near 43; 250 is ~6 sigma.
        for count in per_shard {
            assert!((2250..=2750).contains(&count), "{per_shard:?}");
        }
    }

    #[test]
    fn owner_shard_handles_degenerate_counts() {
        assert_eq!(owner_shard("a", 1), 0);
        assert_eq!(owner_shard("a", 0), 0);
        assert!(owner_shard("a", 3) < 3);
    }

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-]{1,8}"
    }

    proptest! {
        #[test]
        fn the_one_pass_check_is_the_scan_for_exact_names(
            name in "[A-Za-z0-9_.$*>:-]{0,12}|[a-z.-]{250,260}|[\\x00-\\xff]{0,6}",
        ) {
            let bytes = name.as_bytes();
            let scanned = scan_tokens::<false>(bytes) == Ok(SubjectKind::Exact)
                && bytes.first() != Some(&RESERVED_PREFIX);
            prop_assert_eq!(is_plain_exact::<false>(bytes), scanned);
        }

        /// Raw bytes (a string strategy yields non-ASCII only as whole UTF-8 sequences), and
        /// both variants: without `--` is the same check plus that rule.
        #[test]
        fn the_one_pass_check_agrees_with_the_scan_on_raw_bytes(
            bytes in proptest::collection::vec(
                prop_oneof![
                    4 => proptest::sample::select(b"a.-_Z9$*>".to_vec()),
                    1 => any::<u8>(),
                ],
                0..10,
            ),
        ) {
            let scanned = scan_tokens::<false>(&bytes) == Ok(SubjectKind::Exact)
                && bytes.first() != Some(&RESERVED_PREFIX);
            prop_assert_eq!(is_plain_exact::<false>(&bytes), scanned);
            let double_dash = bytes.windows(2).any(|pair| pair == b"--");
            prop_assert_eq!(is_plain_exact::<true>(&bytes), scanned && !double_dash);
        }

        /// Sixteen at a time and one at a time agree, on names long enough for several
        /// overlapping blocks, with the one bad byte or pair anywhere, block edges included.
        #[test]
        fn the_block_check_is_the_byte_check(
            mut bytes in proptest::collection::vec(
                proptest::sample::select(b"aZ9_-.".to_vec()), 0..80,
            ),
            flaw in (any::<proptest::sample::Index>(), prop_oneof![
                Just(None),
                any::<u8>().prop_map(|byte| Some(vec![byte])),
                Just(Some(b"..".to_vec())),
                Just(Some(b"--".to_vec())),
            ]),
        ) {
            let (at, flaw) = flaw;
            if let Some(flaw) = flaw {
                let at = if bytes.is_empty() { 0 } else { at.index(bytes.len()) };
                bytes.splice(at..at, flaw);
            }
            prop_assert_eq!(
                plain_bytes::<false>(&bytes),
                plain_bytes_one_at_a_time::<false>(&bytes)
            );
            prop_assert_eq!(
                plain_bytes::<true>(&bytes),
                plain_bytes_one_at_a_time::<true>(&bytes)
            );
        }

        #[test]
        fn remembering_the_last_name_answers_as_checking_it(
            names in proptest::collection::vec(
                "[a-z.]{0,6}|[a-c.]{7,40}|[\\x00-\\xff]{0,4}|[\\x00-\\xff]{14,34}|", 1..30,
            ),
        ) {
            let mut checked = CheckedTopic::default();
            let mut last_passed: Option<&str> = None;
            for name in &names {
                let noted = checked.parse_noting_repeat(name.as_bytes());
                prop_assert_eq!(
                    noted.map(|(topic, _)| topic),
                    parse_publish_topic(name.as_bytes())
                );
                if let Ok((_, repeated)) = noted {
                    prop_assert_eq!(repeated, last_passed == Some(name.as_str()));
                    last_passed = Some(name.as_str());
                }
                // Asked again, straight after: a repeat if it passed.
                prop_assert_eq!(
                    checked.parse_noting_repeat(name.as_bytes()),
                    parse_publish_topic(name.as_bytes()).map(|topic| (topic, true))
                );
            }
        }

        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let published = parse_publish_topic(&bytes);
            let subscribed = parse_subscription(&bytes);
            if published.is_ok() {
                prop_assert_eq!(subscribed.map(|(_, kind)| kind), Ok(SubjectKind::Exact));
            }
        }

        #[test]
        fn near_valid_bytes_never_panic(
            bytes in proptest::collection::vec(
                prop_oneof![Just(b'a'), Just(b'.'), Just(b'*'), Just(b'>'), Just(b'$'), Just(0xff_u8)],
                0..20,
            )
        ) {
            let _ = parse_publish_topic(&bytes);
            let _ = parse_subscription(&bytes);
        }

        #[test]
        fn names_built_from_valid_tokens_validate(
            tokens in proptest::collection::vec(token(), 1..40),
            reserved in any::<bool>(),
        ) {
            let mut name = tokens.join(".");
            if reserved {
                name.insert(0, '$');
            }
            prop_assume!(name.len() <= TOPIC_BYTES_MAX);
            prop_assert_eq!(
                parse_subscription(name.as_bytes()),
                Ok((name.as_str(), SubjectKind::Exact))
            );
            if reserved {
                prop_assert_eq!(parse_publish_topic(name.as_bytes()), Err(TopicError::Reserved));
            } else {
                prop_assert_eq!(parse_publish_topic(name.as_bytes()), Ok(name.as_str()));
            }
        }

        #[test]
        fn patterns_built_from_valid_tokens_validate(
            tokens in proptest::collection::vec(
                prop_oneof![3 => token(), 1 => Just(SINGLE_WILDCARD.to_owned())],
                0..20,
            ),
            ends_with_full_wildcard in any::<bool>(),
        ) {
            let mut tokens = tokens;
            if ends_with_full_wildcard {
                tokens.push(FULL_WILDCARD.to_owned());
            }
            prop_assume!(!tokens.is_empty());
            let pattern = tokens.join(".");
            prop_assume!(pattern.len() <= TOPIC_BYTES_MAX);
            let has_wildcard = tokens.iter().any(|t| t == SINGLE_WILDCARD || t == FULL_WILDCARD);
            let expected_kind = if has_wildcard { SubjectKind::Pattern } else { SubjectKind::Exact };
            prop_assert_eq!(
                parse_subscription(pattern.as_bytes()),
                Ok((pattern.as_str(), expected_kind))
            );
        }
    }
}
