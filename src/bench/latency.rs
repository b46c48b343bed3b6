//! Time: the bench clock, the open-loop send schedule, and end-to-end latency accounting that
//! coordinated omission cannot fool.
//!
//! In open loop (`--rate N`), message `k` of publisher `p` (of `P`) is due at
//! `start + (k·P + p) / N`: each publisher runs at `N / P` msg/s and the publishers interleave
//! evenly. The payload carries that *scheduled* time, not the time it was written, so when the
//! target (or the bench) stalls, the messages held up behind the stall are measured from when
//! they should have gone out: a stall shows as a run of large latencies instead of vanishing
//! from the histogram, as it would if the sender measured from its own late send.
//! In closed loop (`--rate 0`) there is no schedule; the payload carries the time the message
//! was written.

use std::time::Instant;

use hdrhistogram::Histogram;

/// Nanoseconds since a fixed instant shared by every bench thread (a monotonic clock, so send
/// and receive times from different threads compare).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            epoch: Instant::now(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// The open-loop schedule of one publisher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    start_ns: u64,
    /// Total messages per second across all publishers.
    rate: u64,
    publishers: u64,
    index: u64,
}

impl Schedule {
    /// Publisher `index` of `publishers`, sharing `rate` msg/s in total, from `start_ns`.
    pub fn new(start_ns: u64, rate: u64, publishers: u64, index: u64) -> Schedule {
        assert!(rate > 0 && publishers > 0 && index < publishers);
        Schedule {
            start_ns,
            rate,
            publishers,
            index,
        }
    }

    /// When message `k` is due.
    pub fn scheduled_ns(&self, k: u64) -> u64 {
        let slot = u128::from(k) * u128::from(self.publishers) + u128::from(self.index);
        let offset = slot * 1_000_000_000 / u128::from(self.rate);
        self.start_ns + u64::try_from(offset).unwrap_or(u64::MAX - self.start_ns)
    }

    /// How many messages are due by `now_ns` (message `k` is due when `scheduled_ns(k) <= now`).
    pub fn due(&self, now_ns: u64) -> u64 {
        if now_ns < self.start_ns {
            return 0;
        }
        // slot * 1e9 / rate <= elapsed  <=>  slot <= (elapsed * rate + rate - 1) / 1e9 ... use
        // the exact floor: the largest slot with floor(slot*1e9/rate) <= elapsed is
        // floor(((elapsed + 1) * rate - 1) / 1e9).
        let elapsed = u128::from(now_ns - self.start_ns);
        let max_slot = ((elapsed + 1) * u128::from(self.rate) - 1) / 1_000_000_000;
        let slot_index = u128::from(self.index);
        if max_slot < slot_index {
            return 0;
        }
        let k_max = (max_slot - slot_index) / u128::from(self.publishers);
        u64::try_from(k_max + 1).unwrap_or(u64::MAX)
    }
}

/// Highest latency the histogram holds: one hour in ns (longer ones saturate there).
const LATENCY_NS_MAX: u64 = 3_600_000_000_000;

/// An empty latency histogram in ns: 1 ns to one hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3).expect("valid histogram bounds")
}

/// End-to-end latencies in ns, for messages sent at or after the end of warm-up.
#[derive(Clone, Debug)]
pub struct Latency {
    histogram: Histogram<u64>,
    from_ns: u64,
}

impl Latency {
    /// Records only messages whose send time is `from_ns` or later.
    pub fn new(from_ns: u64) -> Latency {
        Latency {
            histogram: new_histogram(),
            from_ns,
        }
    }

    pub fn set_start(&mut self, from_ns: u64) {
        self.from_ns = from_ns;
    }

    /// Records a message sent (or scheduled) at `sent_ns` and received at `recv_ns`; returns
    /// whether it counted. A receive time before the send time (impossible on one monotonic
    /// clock, unless a payload was forged) counts as 0 rather than wrapping.
    #[inline]
    pub fn record(&mut self, sent_ns: u64, recv_ns: u64) -> bool {
        if sent_ns < self.from_ns {
            return false;
        }
        self.histogram
            .saturating_record(recv_ns.saturating_sub(sent_ns).max(1));
        true
    }

    pub fn histogram(&self) -> &Histogram<u64> {
        &self.histogram
    }

    pub fn into_histogram(self) -> Histogram<u64> {
        self.histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn message_k_is_due_at_start_plus_k_over_rate() {
        // One publisher at 1000 msg/s: every millisecond.
        let s = Schedule::new(5 * MS, 1000, 1, 0);
        for k in 0..10 {
            assert_eq!(s.scheduled_ns(k), 5 * MS + k * MS);
        }
        assert_eq!(s.due(5 * MS - 1), 0);
        assert_eq!(s.due(5 * MS), 1);
        assert_eq!(s.due(6 * MS - 1), 1);
        assert_eq!(s.due(6 * MS), 2);
        assert_eq!(s.due(15 * MS), 11);
    }

    #[test]
    fn publishers_share_the_rate_and_interleave() {
        // 3 publishers sharing 3000 msg/s: each at 1000 msg/s, offset by a third of a ms.
        let start = 1_000;
        let schedules: Vec<_> = (0..3).map(|p| Schedule::new(start, 3000, 3, p)).collect();
        let mut all: Vec<u64> = schedules
            .iter()
            .flat_map(|s| (0..100).map(|k| s.scheduled_ns(k)))
            .collect();
        all.sort_unstable();
        for (slot, at) in all.iter().enumerate() {
            assert_eq!(*at, start + slot as u64 * 1_000_000_000 / 3000);
        }
        assert_eq!(
            schedules[1].scheduled_ns(2),
            start + 7 * 1_000_000_000 / 3000
        );
    }

    #[test]
    fn due_agrees_with_the_schedule_at_odd_rates() {
        for (rate, publishers, index) in
            [(7, 1, 0), (999_983, 4, 3), (3, 5, 2), (1_000_000_007, 2, 1)]
        {
            let s = Schedule::new(123, rate, publishers, index);
            for k in 0..50 {
                let at = s.scheduled_ns(k);
                assert_eq!(s.due(at), k + 1, "rate {rate} k {k}");
                if at > 123 && (k == 0 || s.scheduled_ns(k - 1) < at) {
                    assert_eq!(s.due(at - 1), k, "rate {rate} k {k}");
                }
            }
        }
    }

    #[test]
    fn a_stalled_send_is_measured_from_its_scheduled_time() {
        // 1000 msg/s from t=0. The sender stalls for 100 ms, then sends everything due at once
        // (stamped with the scheduled time, as the publishers do) and each arrives 50 us later.
        let s = Schedule::new(0, 1000, 1, 0);
        let mut latency = Latency::new(0);
        let resume = 100 * MS;
        let due = s.due(resume);
        assert_eq!(due, 101);
        for k in 0..due {
            latency.record(s.scheduled_ns(k), resume + 50_000);
        }
        let h = latency.histogram();
        assert_eq!(h.len(), 101);
        // The first message waited the whole stall; the median waited about half of it.
        assert!(h.max() >= 100 * MS, "max {}", h.max());
        let median = h.value_at_quantile(0.5);
        assert!((49 * MS..=51 * MS).contains(&median), "median {median}");
        // Measuring from the late send instead would have reported ~50 us for all of them:
        // that is the coordinated omission this accounting avoids.
        assert!(h.value_at_quantile(0.01) > MS);
    }

    #[test]
    fn warm_up_messages_are_not_recorded() {
        let mut latency = Latency::new(10 * MS);
        assert!(!latency.record(10 * MS - 1, 11 * MS));
        assert!(latency.record(10 * MS, 11 * MS));
        assert!(latency.record(12 * MS, 11 * MS), "clamped, not wrapped");
        assert_eq!(latency.histogram().len(), 2);
        assert_eq!(latency.histogram().min(), 1);
    }
}
