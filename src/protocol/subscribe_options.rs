//! SUBSCRIBE options (native protocol v2): where a subscription starts, and (later) durable
//! consumer, acknowledgement and group settings.
//!
//! Options travel after the topic in a SUBSCRIBE body as TLV entries (`tag: u8`, `len: u16`,
//! `value`), so a receiver can skip an entry it does not know; this broker refuses unknown
//! tags instead, with `UNSUPPORTED_OPTION`, so a client never believes it got a guarantee the
//! broker did not give. Each tag may appear once.
//!
//! | tag    | name    | value                                                            |
//! |--------|---------|------------------------------------------------------------------|
//! | `0x01` | `START` | `kind: u8`, `value: u64` (9 bytes); kinds below                  |
//!
//! `START` kinds: `0` new messages only (the default when the option is absent), `1` the last
//! `value` messages, `2` from sequence number `value`, `3` from the first message published at
//! or after Unix time `value` (nanoseconds), `4` everything retained (`value` ignored).
//! Start positions apply to exact topics only.

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
    /// From the first message published at or after this Unix time, in nanoseconds.
    FromTimeNs(u64),
    /// Everything the topic still retains.
    All,
}

pub const TAG_START: u8 = 0x01;
const START_LEN: usize = 9;

/// The options of one SUBSCRIBE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SubscribeOptions {
    pub start: Start,
}

impl SubscribeOptions {
    /// Whether these are the v1 defaults, which need no bytes on the wire.
    pub fn is_default(&self) -> bool {
        *self == SubscribeOptions::default()
    }

    /// Appends the TLV encoding (nothing for the defaults).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (kind, value) = match self.start {
            Start::New => return,
            Start::LastN(n) => (1u8, n),
            Start::FromSeq(seq) => (2, seq),
            Start::FromTimeNs(t) => (3, t),
            Start::All => (4, 0),
        };
        out.push(TAG_START);
        out.extend_from_slice(&(START_LEN as u16).to_be_bytes());
        out.push(kind);
        out.extend_from_slice(&value.to_be_bytes());
    }

    /// Parses a SUBSCRIBE's option bytes. The error is a reason for an
    /// `UNSUPPORTED_OPTION`/`BAD_FRAME` reply, never a panic.
    pub fn parse(mut bytes: &[u8]) -> Result<SubscribeOptions, OptionError> {
        let mut options = SubscribeOptions::default();
        let mut seen_start = false;
        while !bytes.is_empty() {
            let [tag, len_hi, len_lo, rest @ ..] = bytes else {
                return Err(OptionError::Malformed(
                    "option entry shorter than its header",
                ));
            };
            let len = usize::from(u16::from_be_bytes([*len_hi, *len_lo]));
            let Some((value, rest)) = rest.split_at_checked(len) else {
                return Err(OptionError::Malformed("option value runs past the frame"));
            };
            match *tag {
                TAG_START => {
                    if seen_start {
                        return Err(OptionError::Malformed("START given twice"));
                    }
                    seen_start = true;
                    options.start = parse_start(value)?;
                }
                _ => return Err(OptionError::Unsupported("unknown SUBSCRIBE option tag")),
            }
            bytes = rest;
        }
        Ok(options)
    }
}

fn parse_start(value: &[u8]) -> Result<Start, OptionError> {
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
        let mut twice = encoded(SubscribeOptions { start: Start::All });
        twice.extend(encoded(SubscribeOptions { start: Start::All }));
        check(&twice, malformed("START given twice"));
    }

    fn any_start() -> impl Strategy<Value = Start> {
        prop_oneof![
            Just(Start::New),
            any::<u64>().prop_map(Start::LastN),
            any::<u64>().prop_map(Start::FromSeq),
            any::<u64>().prop_map(Start::FromTimeNs),
            Just(Start::All),
        ]
    }

    proptest! {
        #[test]
        fn options_round_trip(start in any_start()) {
            let options = SubscribeOptions { start };
            prop_assert_eq!(SubscribeOptions::parse(&encoded(options)), Ok(options));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = SubscribeOptions::parse(&bytes);
        }
    }
}
