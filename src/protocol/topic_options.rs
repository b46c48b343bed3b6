//! CREATE_TOPIC options (native protocol v3): per-topic replay limits that override the
//! broker-wide `--replay-messages`, `--replay-bytes` and `--replay-ttl` for one explicitly
//! created topic.
//!
//! Options travel after the topic in a CREATE_TOPIC body as TLV entries (`tag: u8`,
//! `len: u16`, `value`), the layout of SUBSCRIBE options. Unknown tags are refused with
//! `UNSUPPORTED_OPTION`; each tag may appear once; an absent tag keeps the broker's default.
//!
//! | tag    | name              | value                                                   |
//! |--------|-------------------|---------------------------------------------------------|
//! | `0x01` | `REPLAY_MESSAGES` | `u64`: messages retained for replay; 0 disables replay  |
//! | `0x02` | `REPLAY_BYTES`    | `u64`: bytes (whole frames) retained for replay         |
//! | `0x03` | `REPLAY_TTL_MS`   | `u64`: age in milliseconds after which a retained message is evicted; 0 = no age limit |
//! | `0x04` | `PRESENCE`        | `u64`: 1 publishes a JSON event on `$sys.presence.<topic>` when a subscription to the topic starts or ends (see the README); 0 = none |
//!
//! The broker bounds the first two by `--topic-replay-messages-max` and
//! `--topic-replay-bytes-max` (`OPTION_OUT_OF_RANGE` above them), because a topic's replay
//! slots are allocated when it is created.

use super::subscribe_options::OptionError;
use super::tlv::{put_entry, split_entry, u64_value};

pub const TAG_REPLAY_MESSAGES: u8 = 0x01;
pub const TAG_REPLAY_BYTES: u8 = 0x02;
pub const TAG_REPLAY_TTL_MS: u8 = 0x03;
pub const TAG_PRESENCE: u8 = 0x04;

/// The options of one CREATE_TOPIC; `None` keeps the broker's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TopicOptions {
    pub replay_messages_max: Option<u64>,
    pub replay_bytes_max: Option<u64>,
    pub replay_ttl_ms: Option<u64>,
    /// Non-zero: joins and leaves are published on `$sys.presence.<topic>`.
    pub presence: Option<u64>,
}

impl TopicOptions {
    fn fields(&self) -> [(u8, Option<u64>); 4] {
        [
            (TAG_REPLAY_MESSAGES, self.replay_messages_max),
            (TAG_REPLAY_BYTES, self.replay_bytes_max),
            (TAG_REPLAY_TTL_MS, self.replay_ttl_ms),
            (TAG_PRESENCE, self.presence),
        ]
    }

    /// Appends the TLV encoding (nothing for the defaults).
    pub fn encode(&self, out: &mut Vec<u8>) {
        for (tag, value) in self.fields() {
            if let Some(value) = value {
                put_entry(out, tag, &[&value.to_be_bytes()]);
            }
        }
    }

    /// Parses a CREATE_TOPIC's option bytes. The error is a reason for an
    /// `UNSUPPORTED_OPTION`/`BAD_FRAME` reply, never a panic.
    pub fn parse(mut bytes: &[u8]) -> Result<TopicOptions, OptionError> {
        let mut options = TopicOptions::default();
        while !bytes.is_empty() {
            let (tag, value, rest) = split_entry(bytes)?;
            let field = match tag {
                TAG_REPLAY_MESSAGES => &mut options.replay_messages_max,
                TAG_REPLAY_BYTES => &mut options.replay_bytes_max,
                TAG_REPLAY_TTL_MS => &mut options.replay_ttl_ms,
                TAG_PRESENCE => &mut options.presence,
                _ => return Err(OptionError::Unsupported("unknown CREATE_TOPIC option tag")),
            };
            if field.is_some() {
                return Err(OptionError::Malformed("a CREATE_TOPIC option given twice"));
            }
            *field = Some(u64_value(value, "CREATE_TOPIC option values are 8 bytes")?);
            bytes = rest;
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(options: TopicOptions) -> Vec<u8> {
        let mut out = Vec::new();
        options.encode(&mut out);
        out
    }

    #[test]
    fn encoding_is_pinned_byte_by_byte() {
        assert!(encoded(TopicOptions::default()).is_empty());
        let bytes = encoded(TopicOptions {
            replay_messages_max: Some(3),
            replay_ttl_ms: Some(0x0102),
            ..TopicOptions::default()
        });
        assert_eq!(
            bytes,
            [1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 3, 3, 0, 8, 0, 0, 0, 0, 0, 0, 1, 2]
        );
    }

    #[test]
    fn bad_option_lists_are_refused_with_a_reason() {
        let check = |bytes: &[u8], expect: OptionError| {
            assert_eq!(TopicOptions::parse(bytes), Err(expect), "{bytes:?}");
        };
        check(
            &[9, 0, 0],
            OptionError::Unsupported("unknown CREATE_TOPIC option tag"),
        );
        check(
            &[1, 0, 1, 5],
            OptionError::Malformed("CREATE_TOPIC option values are 8 bytes"),
        );
        check(
            &[2, 0, 9],
            OptionError::Malformed("option value runs past the frame"),
        );
        let mut twice = encoded(TopicOptions {
            replay_bytes_max: Some(1),
            ..TopicOptions::default()
        });
        twice.extend(twice.clone());
        check(
            &twice,
            OptionError::Malformed("a CREATE_TOPIC option given twice"),
        );
    }

    proptest! {
        #[test]
        fn options_round_trip(
            replay_messages_max in proptest::option::of(any::<u64>()),
            replay_bytes_max in proptest::option::of(any::<u64>()),
            replay_ttl_ms in proptest::option::of(any::<u64>()),
            presence in proptest::option::of(any::<u64>()),
        ) {
            let options = TopicOptions { replay_messages_max, replay_bytes_max, replay_ttl_ms, presence };
            prop_assert_eq!(TopicOptions::parse(&encoded(options)), Ok(options));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = TopicOptions::parse(&bytes);
        }
    }
}
