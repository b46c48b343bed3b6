//! What each payload carries and what a subscriber concludes from it: the payload header, and
//! per (topic, publisher) sequence tracking that tells loss, duplicates and reordering apart.

/// Bytes at the start of every payload; `--size` must be at least this.
pub const HEADER_LEN: usize = 24;
/// Characters of the header in lowercase hex, as it starts a WebSocket target's payload (a JSON
/// string, which cannot carry raw bytes).
pub const HEX_HEADER_LEN: usize = 2 * HEADER_LEN;

/// The first [`HEADER_LEN`] bytes of every payload, little-endian:
///
/// | Offset | Size | Field       | Meaning                                                   |
/// |-------:|-----:|-------------|-----------------------------------------------------------|
/// | 0      | 4    | `publisher` | publisher index in the scenario                           |
/// | 4      | 4    | `topic`     | topic index in the scenario                               |
/// | 8      | 8    | `seq`       | the publisher's sequence in that topic, from 0            |
/// | 16     | 8    | `sent_ns`   | send time in ns on the bench clock; in open loop the time the message was *scheduled* |
///
/// The rest of the payload is filler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadHeader {
    pub publisher: u32,
    pub topic: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

impl PayloadHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.publisher.to_le_bytes());
        out[4..8].copy_from_slice(&self.topic.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.sent_ns.to_le_bytes());
        out
    }

    /// The header in lowercase hex: [`HEX_HEADER_LEN`] ASCII characters, safe inside a JSON
    /// string.
    pub fn encode_hex(&self) -> [u8; HEX_HEADER_LEN] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; HEX_HEADER_LEN];
        for (pair, byte) in out.chunks_exact_mut(2).zip(self.encode()) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xf)];
        }
        out
    }

    /// The inverse of [`encode_hex`](Self::encode_hex); `None` if the payload is shorter or
    /// its start is not hex.
    pub fn decode_hex(payload: &[u8]) -> Option<PayloadHeader> {
        // A table, and one check for the whole header: this runs once per delivery.
        const INVALID: u8 = 0xff;
        const VALUES: [u8; 256] = {
            let mut table = [INVALID; 256];
            let mut i = 0;
            while i < 16 {
                table[b"0123456789abcdef"[i] as usize] = i as u8;
                i += 1;
            }
            table
        };
        let hex: &[u8; HEX_HEADER_LEN] = payload.first_chunk()?;
        let mut head = [0u8; HEADER_LEN];
        let mut bad = 0u8;
        for (byte, pair) in head.iter_mut().zip(hex.chunks_exact(2)) {
            let (high, low) = (VALUES[usize::from(pair[0])], VALUES[usize::from(pair[1])]);
            bad |= (high | low) & 0xf0;
            *byte = high << 4 | low;
        }
        if bad != 0 {
            return None;
        }
        PayloadHeader::decode(&head)
    }

    /// `None` if the payload is shorter than a header.
    pub fn decode(payload: &[u8]) -> Option<PayloadHeader> {
        let head: &[u8; HEADER_LEN] = payload.first_chunk()?;
        let u32_at =
            |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let u64_at = |i: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&head[i..i + 8]);
            u64::from_le_bytes(bytes)
        };
        Some(PayloadHeader {
            publisher: u32_at(0),
            topic: u32_at(4),
            seq: u64_at(8),
            sent_ns: u64_at(16),
        })
    }
}

/// What one arrival was, relative to what came before on its (topic, publisher) stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The next sequence number expected.
    InOrder,
    /// Ahead of the next expected; this many numbers were skipped (lost so far).
    AfterGap(u64),
    /// Fills a gap left earlier: it arrived out of order.
    Late,
    /// Already received.
    Duplicate,
}

/// Gaps remembered per stream; past this the oldest is forgotten, and a message filling a
/// forgotten gap would be counted as a duplicate (and its loss not taken back).
const GAPS_MAX: usize = 1 << 16;

/// The sequence numbers one subscriber got from one publisher on one topic.
///
/// Sequence numbers start at 0. The tracker keeps the next expected number and the gaps below
/// it as sorted half-open ranges, so that any arrival is classified exactly: in order, after a
/// gap, late (filling a gap, i.e. reordered) or a duplicate. Loss is settled at the end from
/// what the publisher says it sent: `sent - unique`.
#[derive(Clone, Debug, Default)]
pub struct SeqTracker {
    next: u64,
    unique: u64,
    duplicates: u64,
    late: u64,
    gaps: Vec<(u64, u64)>,
    forgotten: u64,
}

impl SeqTracker {
    pub fn observe(&mut self, seq: u64) -> Seen {
        if seq == self.next {
            self.next += 1;
            self.unique += 1;
            return Seen::InOrder;
        }
        if seq > self.next {
            let skipped = seq - self.next;
            if self.gaps.len() == GAPS_MAX {
                self.gaps.remove(0);
                self.forgotten += 1;
            }
            self.gaps.push((self.next, seq));
            self.next = seq + 1;
            self.unique += 1;
            return Seen::AfterGap(skipped);
        }
        // Below `next`: either it fills a gap or it was already seen.
        let i = self.gaps.partition_point(|&(_, end)| end <= seq);
        match self.gaps.get(i).copied() {
            Some((start, end)) if start <= seq => {
                match (seq == start, seq + 1 == end) {
                    (true, true) => {
                        self.gaps.remove(i);
                    }
                    (true, false) => self.gaps[i].0 = seq + 1,
                    (false, true) => self.gaps[i].1 = seq,
                    (false, false) => {
                        self.gaps[i].1 = seq;
                        self.gaps.insert(i + 1, (seq + 1, end));
                    }
                }
                self.unique += 1;
                self.late += 1;
                Seen::Late
            }
            _ => {
                self.duplicates += 1;
                Seen::Duplicate
            }
        }
    }

    /// Distinct messages received.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Messages that arrived after a later one (they filled a gap).
    pub fn out_of_order(&self) -> u64 {
        self.late
    }

    /// The highest sequence number seen plus one (0 if none).
    pub fn next_expected(&self) -> u64 {
        self.next
    }

    /// Gaps dropped from memory because there were too many.
    pub fn forgotten_gaps(&self) -> u64 {
        self.forgotten
    }

    /// Messages lost, given that the publisher sent `sent` on this stream (0..sent).
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.unique)
    }

    /// Distinct messages received with a sequence number below `bound`. Exact unless gaps
    /// were forgotten (see [`forgotten_gaps`](Self::forgotten_gaps)).
    pub fn unique_below(&self, bound: u64) -> u64 {
        let top = bound.min(self.next);
        let missing: u64 = self
            .gaps
            .iter()
            .take_while(|&&(start, _)| start < top)
            .map(|&(start, end)| end.min(top) - start)
            .sum();
        top - missing
    }

    /// [`observe`](Self::observe) for a redelivery (corebus `delivery_count > 1`): a message
    /// filling a gap is then the broker retrying, not reordering, so it is not counted late.
    /// One already received is still a duplicate.
    pub fn observe_redelivery(&mut self, seq: u64) -> Seen {
        let seen = self.observe(seq);
        if seen == Seen::Late {
            self.late -= 1;
        }
        seen
    }
}

/// One consumer-group member's view of one (topic, publisher) stream: a member gets only its
/// share, so its sequence numbers have gaps by design and loss can only be settled over the
/// whole group. Each member keeps a bitset of what it received; [`SeqSet::union`] merges the
/// members', and a message two members both got is a duplicate. Costs one bit per message.
#[derive(Clone, Debug, Default)]
pub struct SeqSet {
    bits: Vec<u64>,
    /// Deliveries observed, duplicates included.
    received: u64,
    unique: u64,
    /// First deliveries that arrived below the highest number this member had seen.
    late: u64,
    next: u64,
}

impl SeqSet {
    /// Records one delivery; `redelivery` (corebus `delivery_count > 1`) is never counted late.
    pub fn observe(&mut self, seq: u64, redelivery: bool) -> Seen {
        self.received += 1;
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= self.bits.len() {
            // Sequence numbers are dense from 0, so this grows with the stream, not with `seq`'s
            // magnitude; a corrupt huge `seq` is refused rather than allocated for.
            if word > self.bits.len() + (1 << 20) {
                return Seen::Duplicate;
            }
            self.bits.resize((word + 1).max(self.bits.len() * 2), 0);
        }
        if self.bits[word] & (1 << bit) != 0 {
            return Seen::Duplicate;
        }
        self.bits[word] |= 1 << bit;
        self.unique += 1;
        if seq >= self.next {
            let skipped = seq - self.next;
            self.next = seq + 1;
            if skipped == 0 {
                Seen::InOrder
            } else {
                Seen::AfterGap(skipped)
            }
        } else {
            if !redelivery {
                self.late += 1;
            }
            Seen::Late
        }
    }

    /// Deliveries observed by this member, duplicates included.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Distinct messages in the set.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    pub fn out_of_order(&self) -> u64 {
        self.late
    }

    /// Distinct numbers at or above `sent` (a publisher never sent them).
    pub fn beyond(&self, sent: u64) -> u64 {
        let mut count = 0u64;
        for (i, &word) in self.bits.iter().enumerate() {
            let base = i as u64 * 64;
            if base + 64 <= sent {
                continue;
            }
            let mask = if base >= sent {
                u64::MAX
            } else {
                u64::MAX << (sent - base)
            };
            count += u64::from((word & mask).count_ones());
        }
        count
    }

    /// Distinct numbers below `bound`.
    pub fn unique_below(&self, bound: u64) -> u64 {
        let mut count = 0u64;
        for (i, &word) in self.bits.iter().enumerate() {
            let base = i as u64 * 64;
            if base >= bound {
                break;
            }
            let mask = if base + 64 <= bound {
                u64::MAX
            } else {
                (1u64 << (bound - base)) - 1
            };
            count += u64::from((word & mask).count_ones());
        }
        count
    }

    /// Adds another member's set: received and late add up, `unique` becomes the union's.
    pub fn union(&mut self, other: &SeqSet) {
        if other.bits.len() > self.bits.len() {
            self.bits.resize(other.bits.len(), 0);
        }
        for (mine, theirs) in self.bits.iter_mut().zip(&other.bits) {
            *mine |= theirs;
        }
        self.unique = self.bits.iter().map(|w| u64::from(w.count_ones())).sum();
        self.received += other.received;
        self.late += other.late;
        self.next = self.next.max(other.next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let header = PayloadHeader {
            publisher: 7,
            topic: 0xdead_beef,
            seq: u64::MAX - 1,
            sent_ns: 1_234_567_890_123,
        };
        let bytes = header.encode();
        assert_eq!(&bytes[0..4], &[7, 0, 0, 0]);
        assert_eq!(PayloadHeader::decode(&bytes), Some(header));
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(b"filler");
        assert_eq!(PayloadHeader::decode(&longer), Some(header));
        assert_eq!(PayloadHeader::decode(&bytes[..HEADER_LEN - 1]), None);
    }

    #[test]
    fn hex_headers_round_trip() {
        let header = PayloadHeader {
            publisher: 7,
            topic: 0xdead_beef,
            seq: u64::MAX - 1,
            sent_ns: 1_234_567_890_123,
        };
        let hex = header.encode_hex();
        assert_eq!(&hex[..16], b"07000000efbeadde");
        assert_eq!(PayloadHeader::decode_hex(&hex), Some(header));
        let mut longer = hex.to_vec();
        longer.extend_from_slice(b"xxxx");
        assert_eq!(PayloadHeader::decode_hex(&longer), Some(header));
        assert_eq!(PayloadHeader::decode_hex(&hex[..HEX_HEADER_LEN - 1]), None);
        for bad in [b'g', b'A', b'"', b' '] {
            let mut broken = hex;
            broken[5] = bad;
            assert_eq!(PayloadHeader::decode_hex(&broken), None, "{bad}");
        }
    }

    fn track(seqs: &[u64]) -> (SeqTracker, Vec<Seen>) {
        let mut tracker = SeqTracker::default();
        let seen = seqs.iter().map(|&s| tracker.observe(s)).collect();
        (tracker, seen)
    }

    #[test]
    fn an_unbroken_sequence_is_all_in_order() {
        let (t, seen) = track(&[0, 1, 2, 3]);
        assert!(seen.iter().all(|&s| s == Seen::InOrder));
        assert_eq!((t.unique(), t.duplicates(), t.out_of_order()), (4, 0, 0));
        assert_eq!(t.lost(4), 0);
        assert_eq!(t.lost(6), 2, "the last two never arrived");
    }

    #[test]
    fn gaps_duplicates_and_reordering_are_told_apart() {
        // 0 1 _ _ 4 5 | 2 arrives late, 4 twice, 0 twice, 3 never: sent 0..=6, 6 lost too.
        let (t, seen) = track(&[0, 1, 4, 5, 2, 4, 0, 5]);
        assert_eq!(
            seen,
            vec![
                Seen::InOrder,
                Seen::InOrder,
                Seen::AfterGap(2),
                Seen::InOrder,
                Seen::Late,
                Seen::Duplicate,
                Seen::Duplicate,
                Seen::Duplicate,
            ]
        );
        assert_eq!(t.unique(), 5);
        assert_eq!(t.duplicates(), 3);
        assert_eq!(t.out_of_order(), 1);
        assert_eq!(t.lost(7), 2, "3 and 6");
        assert_eq!(t.next_expected(), 6);
    }

    #[test]
    fn late_arrivals_split_and_close_gaps() {
        // Gap 1..9; fill from the middle, both ends, then repeat one.
        let (t, seen) = track(&[0, 9, 5, 1, 8, 2, 3, 4, 6, 7, 5]);
        assert_eq!(seen[1], Seen::AfterGap(8));
        assert!(seen[2..10].iter().all(|&s| s == Seen::Late), "{seen:?}");
        assert_eq!(seen[10], Seen::Duplicate);
        assert_eq!((t.unique(), t.out_of_order(), t.duplicates()), (10, 8, 1));
        assert_eq!(t.lost(10), 0);
        assert!(t.gaps.is_empty());
    }

    #[test]
    fn redeliveries_fill_gaps_without_counting_as_reordered() {
        let mut t = SeqTracker::default();
        t.observe(0);
        t.observe(2);
        assert_eq!(t.observe_redelivery(1), Seen::Late);
        assert_eq!(t.observe_redelivery(1), Seen::Duplicate);
        assert_eq!((t.unique(), t.out_of_order(), t.duplicates()), (3, 0, 1));
    }

    #[test]
    fn group_members_sets_merge_into_exact_loss_and_duplicates() {
        // Two members split 0..10 (member a even, b odd), 7 never arrives, 4 reaches both.
        let (mut a, mut b) = (SeqSet::default(), SeqSet::default());
        for seq in [0, 2, 4, 6, 8] {
            a.observe(seq, false);
        }
        for seq in [1, 3, 5, 9] {
            b.observe(seq, false);
        }
        assert_eq!(b.observe(4, true), Seen::Late);
        assert_eq!(b.out_of_order(), 0, "a redelivery is not reordering");
        assert_eq!(a.observe(8, true), Seen::Duplicate);
        a.union(&b);
        assert_eq!(a.unique(), 9);
        assert_eq!(a.received(), 11);
        assert_eq!(
            a.received() - a.unique(),
            2,
            "4 twice across members, 8 twice in a"
        );
        assert_eq!(a.beyond(10), 0);
        assert_eq!(a.beyond(9), 1);
        assert_eq!(a.out_of_order(), 0);
        let mut c = SeqSet::default();
        c.observe(200, false);
        c.observe(3, false);
        assert_eq!((c.unique(), c.out_of_order(), c.beyond(64)), (2, 1, 1));
    }

    #[test]
    fn unique_below_a_bound_counts_around_gaps() {
        // 3..5 and 7..10 received, 0..3 and 5..7 never.
        let (t, _) = track(&[3, 4, 7, 8, 9]);
        let expect = [0, 0, 0, 0, 1, 2, 2, 2, 3, 4, 5, 5, 5];
        for (bound, &n) in expect.iter().enumerate() {
            assert_eq!(t.unique_below(bound as u64), n, "tracker, bound {bound}");
        }
        let mut set = SeqSet::default();
        for seq in [3, 4, 7, 8, 9, 64, 130] {
            set.observe(seq, false);
        }
        for (bound, &n) in expect.iter().enumerate() {
            assert_eq!(set.unique_below(bound as u64), n, "set, bound {bound}");
        }
        assert_eq!(set.unique_below(64), 5);
        assert_eq!(set.unique_below(65), 6);
        assert_eq!(set.unique_below(128), 6);
        assert_eq!(set.unique_below(u64::MAX), 7);
        assert_eq!(SeqSet::default().unique_below(10), 0);
    }

    #[test]
    fn a_stream_that_starts_late_counts_the_start_as_lost() {
        let (t, seen) = track(&[3, 4]);
        assert_eq!(seen[0], Seen::AfterGap(3));
        assert_eq!(t.lost(5), 3);
        assert_eq!(t.forgotten_gaps(), 0);
    }
}
