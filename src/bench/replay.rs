//! Replay starts (`--start`) and the backlog they replay (`--prefill`), corebus only.
//!
//! With `--prefill N`, before any subscriber subscribes, every publisher publishes `N`
//! messages to each of its topics and waits for each one's confirm, which carries the
//! sequence number the topic's owner gave it. Only when every thread's publishers are done do
//! the subscribers subscribe, each with the `START` option of `--start`, and only when every
//! subscription is confirmed does the live load begin. So the broker's view at subscription
//! time is exactly known: a topic's last sequence number is the highest confirmed prefill one,
//! and no live message exists yet.
//!
//! That makes the expected deliveries exact per (topic, publisher) stream. The subscription
//! asks for everything from one topic sequence number on ([`requested_first_seq`]); the
//! stream's prefill messages below it were not asked for ([`skipped`]), everything from it on
//! (the rest of the prefill, then every live message) was. A message the broker says it had
//! already evicted (a GAP frame's `missed`) is an announced miss, reported apart from silent
//! loss.
//!
//! `--start all` asks for "everything retained", which the bench cannot see: it takes the
//! oldest replayed message of the subscription as the oldest retained one, and reports what
//! lies below it as not retained (neither asked for nor lost). The other starts are checked
//! against the numbers alone.

use crate::protocol::subscribe_options::Start;

/// Prefill messages across the whole run, at most: each one's confirmed sequence number is
/// kept (8 bytes) until the end, so this bounds that memory to 80 MB.
pub const PREFILL_MESSAGES_MAX: u64 = 10_000_000;

/// Parses `--start`: `new`, `all`, `last:N` or `seq:N` (the `corebus sub` flags `--last N`,
/// `--from-seq SEQ` and `--all`, in one value).
pub fn parse_start(text: &str) -> Result<Start, String> {
    let bad = || {
        format!(
            "`{text}` is not a start position: new, all, last:N (the last N messages of each \
             topic) or seq:N (from topic sequence number N, the first is 1)"
        )
    };
    let number = |digits: &str| digits.parse::<u64>().map_err(|_| bad());
    match text.split_once(':') {
        None if text == "new" => Ok(Start::New),
        None if text == "all" => Ok(Start::All),
        Some(("last", n)) => Ok(Start::LastN(number(n)?)),
        Some(("seq", n)) => match number(n)? {
            0 => Err(bad()),
            seq => Ok(Start::FromSeq(seq)),
        },
        _ => Err(bad()),
    }
}

/// `--start`'s value as written: the inverse of [`parse_start`].
pub fn start_name(start: Start) -> String {
    match start {
        Start::New => "new".into(),
        Start::All => "all".into(),
        Start::LastN(n) => format!("last:{n}"),
        Start::FromSeq(seq) => format!("seq:{seq}"),
        Start::FromSeqOfEpoch { seq, epoch } => format!("seq:{seq}@{epoch}"),
        Start::FromTimeNs(ns) => format!("time:{ns}"),
    }
}

/// The first topic sequence number a subscription starting at `start` asks for, when the
/// topic's last sequence number was `last_seq` as it subscribed: what the broker's replay
/// ring resolves the start to before it looks at what it still retains. `None` for `All` and
/// `FromTimeNs`, whose answer depends on what is retained.
pub fn requested_first_seq(start: Start, last_seq: u64) -> Option<u64> {
    let next_seq = last_seq + 1;
    match start {
        Start::New => Some(next_seq),
        Start::LastN(n) => Some(next_seq.saturating_sub(n).max(1)),
        Start::FromSeq(seq) | Start::FromSeqOfEpoch { seq, .. } => Some(seq.clamp(1, next_seq)),
        Start::All | Start::FromTimeNs(_) => None,
    }
}

/// How many of one stream's prefill messages lie below topic sequence number `first_seq`,
/// i.e. were not asked for: its first messages (`prefill_seqs` is in publish order, which is
/// sequence order, since one connection's publishes to one topic are sequenced in order).
pub fn skipped(prefill_seqs: &[u64], first_seq: u64) -> u64 {
    debug_assert!(prefill_seqs.windows(2).all(|w| w[0] < w[1]));
    prefill_seqs.partition_point(|&seq| seq < first_seq) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse_and_print_back() {
        let check = |text: &str, expect: Result<Start, ()>| {
            assert_eq!(parse_start(text).map_err(drop), expect, "{text}");
            if let Ok(start) = expect {
                assert_eq!(start_name(start), text);
            }
        };
        check("new", Ok(Start::New));
        check("all", Ok(Start::All));
        check("last:100", Ok(Start::LastN(100)));
        check("last:0", Ok(Start::LastN(0)));
        check("seq:1", Ok(Start::FromSeq(1)));
        check("seq:18446744073709551615", Ok(Start::FromSeq(u64::MAX)));
        for bad in [
            "", "ALL", "last", "last:", "last:-1", "last:x", "seq:0", "seq:", "seq:1.5", "from:3",
            "new:1", "all:", " all", "last: 5",
        ] {
            check(bad, Err(()));
        }
        assert!(parse_start("first").unwrap_err().contains("last:N"));
    }

    #[test]
    fn requested_first_seq_matches_the_broker_s_resolution() {
        // 10 messages published: seqs 1..=10.
        assert_eq!(requested_first_seq(Start::New, 10), Some(11));
        assert_eq!(requested_first_seq(Start::LastN(3), 10), Some(8));
        assert_eq!(requested_first_seq(Start::LastN(0), 10), Some(11));
        assert_eq!(requested_first_seq(Start::LastN(10), 10), Some(1));
        assert_eq!(requested_first_seq(Start::LastN(u64::MAX), 10), Some(1));
        assert_eq!(requested_first_seq(Start::FromSeq(4), 10), Some(4));
        assert_eq!(
            requested_first_seq(Start::FromSeq(99), 10),
            Some(11),
            "future"
        );
        assert_eq!(requested_first_seq(Start::FromSeq(1), 0), Some(1));
        assert_eq!(requested_first_seq(Start::All, 10), None);
    }

    #[test]
    fn skipped_counts_a_stream_s_messages_below_the_start() {
        // A stream whose prefill got topic seqs 2, 4, 6, 8 (another publisher took the odd ones).
        let seqs = [2, 4, 6, 8];
        assert_eq!(skipped(&seqs, 1), 0);
        assert_eq!(skipped(&seqs, 2), 0);
        assert_eq!(skipped(&seqs, 3), 1);
        assert_eq!(skipped(&seqs, 8), 3);
        assert_eq!(skipped(&seqs, 9), 4);
        assert_eq!(skipped(&[], 5), 0);
    }
}
