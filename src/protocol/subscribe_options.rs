//! SUBSCRIBE options (native protocol v2): where a subscription starts, and durable consumer,
//! acknowledgement and group settings.
//!
//! Options travel after the topic in a SUBSCRIBE body as TLV entries (`tag: u8`, `len: u16`,
//! `value`), so a receiver can skip an entry it does not know; this broker refuses unknown
//! tags instead, with `UNSUPPORTED_OPTION`, so a client never believes it got a guarantee the
//! broker did not give. Each tag may appear once.
//!
//! | tag    | name       | value                                                          |
//! |--------|------------|----------------------------------------------------------------|
//! | `0x01` | `START`    | `kind: u8`, `value: u64` (9 bytes); kinds below                |
//! | `0x02` | `CONSUMER` | durable consumer name, 1 to 64 bytes of `[A-Za-z0-9_-]`        |
//! | `0x03` | `ACKS`     | `in_flight_max: u32`, `ack_wait_ms: u32`, `deliver_max: u16`   |
//! | `0x04` | `GROUP`    | group name, same rules as `CONSUMER`                           |
//! | `0x05` | `EPOCH` (v4) | `epoch: u64` (8 bytes): the epoch a `START` sequence number belongs to |
//!
//! `CONSUMER` makes the subscription a durable consumer: the topic's owner remembers how far
//! it got, and a later subscription under the same name resumes there (one subscription at a
//! time per name). `GROUP` shares one such position among every subscription with the same
//! name: each message goes to one member. `ACKS` (with either) asks for at-least-once
//! delivery: every message must be acknowledged (ACK frame) within `ack_wait_ms`, at most
//! `in_flight_max` are unacknowledged at once, and a message delivered `deliver_max` times
//! without an ack goes to the dead-letter topic `$dlq.<topic>`. `CONSUMER` needs an exact
//! topic; `GROUP` also takes a pattern (each matching topic then has the group's consumer, and
//! ACK frames name the topic). They exclude each other.
//!
//! `START` kinds: `0` new messages only (the default when the option is absent), `1` the last
//! `value` messages, `2` from sequence number `value`, `3` from the first message published at
//! or after Unix time `value` (nanoseconds), `4` everything retained (`value` ignored).
//! Start positions apply to exact topics only.
//!
//! A sequence number is only meaningful within one epoch of its topic (the topic's current
//! epoch is in the OK of an exact SUBSCRIBE). A start from sequence number `n` is refused with
//! `START_BEYOND_END` when `n` is beyond the topic's next number (`last_seq + 1`), rather than
//! quietly starting at the next message: such a number was never given out in this epoch. A
//! resuming client should also send `EPOCH` (only with `START` kind 2): if the topic's epoch
//! is another one, its history is gone and the subscribe is refused with `EPOCH_MISMATCH`;
//! both errors name the topic's epoch and last sequence number.

use super::tlv::{put_entry, split_entry};

/// Where a subscription starts in its topic's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Start {
    /// Only messages published after the subscription took effect.
    #[default]
    New,
    /// The last `n` messages, then live ones.
    LastN(u64),
    /// From this sequence number on.
    FromSeq(u64),
    /// From sequence number `seq` of the topic's incarnation `epoch` (a resume): refused if
    /// the topic has another epoch now.
    FromSeqOfEpoch { seq: u64, epoch: u64 },
    /// From the first message published at or after this Unix time, in nanoseconds.
    FromTimeNs(u64),
    /// Everything the topic still retains.
    All,
}

pub const TAG_START: u8 = 0x01;
pub const TAG_CONSUMER: u8 = 0x02;
pub const TAG_ACKS: u8 = 0x03;
pub const TAG_GROUP: u8 = 0x04;
pub const TAG_EPOCH: u8 = 0x05;
const EPOCH_LEN: usize = 8;
const START_LEN: usize = 9;
const ACKS_LEN: usize = 10;
/// Longest consumer or group name.
pub const CONSUMER_NAME_BYTES_MAX: usize = 64;

/// At-least-once settings of a durable consumer or group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckSettings {
    /// Unacknowledged messages at once; delivery pauses at this many.
    pub in_flight_max: u32,
    /// How long a delivery waits for its ack before it is redelivered (then doubling).
    pub ack_wait_ms: u32,
    /// Deliveries before a message is dead-lettered.
    pub deliver_max: u16,
}

impl Default for AckSettings {
    fn default() -> Self {
        AckSettings {
            in_flight_max: 1024,
            ack_wait_ms: 30_000,
            deliver_max: 5,
        }
    }
}

/// Who shares a subscription's position in its topic.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Sharing {
    /// A plain subscription: every message, nothing remembered.
    #[default]
    None,
    /// A named durable consumer, one subscription at a time.
    Consumer(String),
    /// A named group: its members split the messages.
    Group(String),
}

/// The options of one SUBSCRIBE.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SubscribeOptions {
    pub start: Start,
    pub sharing: Sharing,
    /// At-least-once delivery with acks; needs a consumer or a group.
    pub acks: Option<AckSettings>,
}

impl SubscribeOptions {
    /// Whether these are the v1 defaults, which need no bytes on the wire.
    pub fn is_default(&self) -> bool {
        *self == SubscribeOptions::default()
    }

    /// Appends the TLV encoding (nothing for the defaults).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = match self.start {
            Start::New => None,
            Start::LastN(n) => Some((1u8, n)),
            Start::FromSeq(seq) | Start::FromSeqOfEpoch { seq, .. } => Some((2, seq)),
            Start::FromTimeNs(t) => Some((3, t)),
            Start::All => Some((4, 0)),
        };
        if let Some((kind, value)) = start {
            put_entry(out, TAG_START, &[&[kind], &value.to_be_bytes()]);
        }
        if let Start::FromSeqOfEpoch { epoch, .. } = self.start {
            put_entry(out, TAG_EPOCH, &[&epoch.to_be_bytes()]);
        }
        match &self.sharing {
            Sharing::None => {}
            Sharing::Consumer(name) => put_entry(out, TAG_CONSUMER, &[name.as_bytes()]),
            Sharing::Group(name) => put_entry(out, TAG_GROUP, &[name.as_bytes()]),
        }
        if let Some(acks) = self.acks {
            put_entry(
                out,
                TAG_ACKS,
                &[
                    &acks.in_flight_max.to_be_bytes(),
                    &acks.ack_wait_ms.to_be_bytes(),
                    &acks.deliver_max.to_be_bytes(),
                ],
            );
        }
    }

    /// Parses a SUBSCRIBE's option bytes. The error is a reason for an
    /// `UNSUPPORTED_OPTION`/`BAD_FRAME` reply, never a panic.
    pub fn parse(mut bytes: &[u8]) -> Result<SubscribeOptions, OptionError> {
        let mut options = SubscribeOptions::default();
        let mut seen_start = false;
        let mut seen_acks = false;
        let mut epoch = None;
        while !bytes.is_empty() {
            let (tag, value, rest) = split_entry(bytes)?;
            match tag {
                TAG_START => {
                    if seen_start {
                        return Err(OptionError::Malformed("START given twice"));
                    }
                    seen_start = true;
                    options.start = parse_start(value)?;
                }
                TAG_CONSUMER | TAG_GROUP => {
                    if options.sharing != Sharing::None {
                        return Err(OptionError::Malformed(
                            "CONSUMER and GROUP exclude each other and appear once",
                        ));
                    }
                    let name = parse_name(value)?;
                    options.sharing = if tag == TAG_CONSUMER {
                        Sharing::Consumer(name)
                    } else {
                        Sharing::Group(name)
                    };
                }
                TAG_ACKS => {
                    if seen_acks {
                        return Err(OptionError::Malformed("ACKS given twice"));
                    }
                    seen_acks = true;
                    options.acks = Some(parse_acks(value)?);
                }
                TAG_EPOCH => {
                    if epoch.is_some() {
                        return Err(OptionError::Malformed("EPOCH given twice"));
                    }
                    let Ok(value) = <[u8; EPOCH_LEN]>::try_from(value) else {
                        return Err(OptionError::Malformed("EPOCH must be 8 bytes"));
                    };
                    epoch = Some(u64::from_be_bytes(value));
                }
                _ => return Err(OptionError::Unsupported("unknown SUBSCRIBE option tag")),
            }
            bytes = rest;
        }
        if let Some(epoch) = epoch {
            let Start::FromSeq(seq) = options.start else {
                return Err(OptionError::Unsupported(
                    "EPOCH goes with a START from a sequence number (kind 2) only",
                ));
            };
            options.start = Start::FromSeqOfEpoch { seq, epoch };
        }
        if options.acks.is_some() && options.sharing == Sharing::None {
            return Err(OptionError::Unsupported(
                "ACKS needs a CONSUMER or GROUP name, so the broker can remember what is unacked",
            ));
        }
        Ok(options)
    }
}

fn parse_name(value: &[u8]) -> Result<String, OptionError> {
    let valid = !value.is_empty()
        && value.len() <= CONSUMER_NAME_BYTES_MAX
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-');
    if !valid {
        return Err(OptionError::Unsupported(
            "consumer and group names are 1 to 64 characters of A-Z a-z 0-9 _ -",
        ));
    }
    Ok(String::from_utf8_lossy(value).into_owned())
}

fn parse_acks(value: &[u8]) -> Result<AckSettings, OptionError> {
    if value.len() != ACKS_LEN {
        return Err(OptionError::Malformed("ACKS must be 10 bytes"));
    }
    let acks = AckSettings {
        in_flight_max: u32::from_be_bytes([value[0], value[1], value[2], value[3]]),
        ack_wait_ms: u32::from_be_bytes([value[4], value[5], value[6], value[7]]),
        deliver_max: u16::from_be_bytes([value[8], value[9]]),
    };
    if acks.in_flight_max == 0 || acks.ack_wait_ms == 0 || acks.deliver_max == 0 {
        return Err(OptionError::Unsupported(
            "ACKS values must be at least 1 (in_flight_max, ack_wait_ms, deliver_max)",
        ));
    }
    Ok(acks)
}

fn parse_start(value: &[u8]) -> Result<Start, OptionError> {
    if value.len() != START_LEN {
        return Err(OptionError::Malformed("START must be 9 bytes"));
    }
    let [kind, rest @ ..] = value else {
        return Err(OptionError::Malformed("START must be 9 bytes"));
    };
    let Ok(number) = <[u8; 8]>::try_from(rest) else {
        return Err(OptionError::Malformed("START must be 9 bytes"));
    };
    let number = u64::from_be_bytes(number);
    Ok(match kind {
        0 => Start::New,
        1 => Start::LastN(number),
        2 => Start::FromSeq(number),
        3 => Start::FromTimeNs(number),
        4 => Start::All,
        _ => return Err(OptionError::Unsupported("unknown START kind")),
    })
}

/// Why an option list was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptionError {
    /// The bytes do not follow the TLV layout (`BAD_FRAME`).
    Malformed(&'static str),
    /// Well-formed, but not something this broker does (`UNSUPPORTED_OPTION`).
    Unsupported(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encoded(options: SubscribeOptions) -> Vec<u8> {
        let mut out = Vec::new();
        options.encode(&mut out);
        out
    }

    #[test]
    fn defaults_take_no_bytes() {
        assert!(encoded(SubscribeOptions::default()).is_empty());
        assert_eq!(
            SubscribeOptions::parse(&[]),
            Ok(SubscribeOptions::default())
        );
    }

    #[test]
    fn start_is_pinned_byte_by_byte() {
        let bytes = encoded(SubscribeOptions {
            start: Start::LastN(5),
            ..SubscribeOptions::default()
        });
        assert_eq!(bytes, [1, 0, 9, 1, 0, 0, 0, 0, 0, 0, 0, 5]);
    }

    #[test]
    fn bad_option_lists_are_refused_with_a_reason() {
        let check = |bytes: &[u8], expect: OptionError| {
            assert_eq!(SubscribeOptions::parse(bytes), Err(expect), "{bytes:?}");
        };
        let malformed = |reason| OptionError::Malformed(reason);
        check(&[1, 0], malformed("option entry shorter than its header"));
        check(&[1, 0, 9, 1], malformed("option value runs past the frame"));
        check(&[1, 0, 1, 1], malformed("START must be 9 bytes"));
        check(
            &[1, 0, 9, 9, 0, 0, 0, 0, 0, 0, 0, 0],
            OptionError::Unsupported("unknown START kind"),
        );
        check(
            &[0x7f, 0, 0],
            OptionError::Unsupported("unknown SUBSCRIBE option tag"),
        );
        let all = SubscribeOptions {
            start: Start::All,
            ..SubscribeOptions::default()
        };
        let mut twice = encoded(all.clone());
        twice.extend(encoded(all));
        check(&twice, malformed("START given twice"));
    }

    fn any_start() -> impl Strategy<Value = Start> {
        prop_oneof![
            Just(Start::New),
            any::<u64>().prop_map(Start::LastN),
            any::<u64>().prop_map(Start::FromSeq),
            (any::<u64>(), any::<u64>())
                .prop_map(|(seq, epoch)| Start::FromSeqOfEpoch { seq, epoch }),
            any::<u64>().prop_map(Start::FromTimeNs),
            Just(Start::All),
        ]
    }

    fn any_name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-]{1,64}"
    }

    fn any_sharing() -> impl Strategy<Value = Sharing> {
        prop_oneof![
            Just(Sharing::None),
            any_name().prop_map(Sharing::Consumer),
            any_name().prop_map(Sharing::Group),
        ]
    }

    #[test]
    fn consumer_options_are_checked() {
        let consumer = |name: &str, acks| SubscribeOptions {
            sharing: Sharing::Consumer(name.into()),
            acks,
            ..SubscribeOptions::default()
        };
        assert!(SubscribeOptions::parse(&encoded(consumer("orders-worker", None))).is_ok());
        assert!(matches!(
            SubscribeOptions::parse(&encoded(consumer("bad name", None))),
            Err(OptionError::Unsupported(_))
        ));
        let zero = AckSettings {
            deliver_max: 0,
            ..AckSettings::default()
        };
        assert!(matches!(
            SubscribeOptions::parse(&encoded(consumer("c", Some(zero)))),
            Err(OptionError::Unsupported(_))
        ));
        let acks_alone = SubscribeOptions {
            acks: Some(AckSettings::default()),
            ..SubscribeOptions::default()
        };
        assert!(matches!(
            SubscribeOptions::parse(&encoded(acks_alone)),
            Err(OptionError::Unsupported(_))
        ));
        let mut both = encoded(consumer("a", None));
        put_entry(&mut both, TAG_GROUP, &[b"g"]);
        assert!(matches!(
            SubscribeOptions::parse(&both),
            Err(OptionError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn options_round_trip(
            start in any_start(),
            sharing in any_sharing(),
            acks in proptest::option::of((1u32.., 1u32.., 1u16..)),
        ) {
            let acks = acks
                .filter(|_| sharing != Sharing::None)
                .map(|(in_flight_max, ack_wait_ms, deliver_max)| AckSettings {
                    in_flight_max,
                    ack_wait_ms,
                    deliver_max,
                });
            let options = SubscribeOptions { start, sharing, acks };
            prop_assert_eq!(SubscribeOptions::parse(&encoded(options.clone())), Ok(options));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = SubscribeOptions::parse(&bytes);
        }
    }
}
