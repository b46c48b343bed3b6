//! Latency measured inside the broker, kept by each shard in `hdrhistogram`s and gathered
//! with the other stats over the rings.
//!
//! Two measures:
//! - **Delivery** (publish to socket write): from the socket read that brought the PUBLISH
//!   (its publish timestamp: the publisher's shard takes one clock reading per read, and the
//!   owner stamps it into the message, crossing shards included) to the write call that
//!   hands its delivery to a subscriber's socket.
//! - **Ack round trip**: from the owner handing a durable consumer a message (its latest
//!   delivery) to the owner applying the ack for it.
//!
//! Recording must not cost the fan-out path anything measurable, so a delivery sample is
//! taken once per socket write that carries deliveries, not once per message: the oldest
//! delivery in that write (the one that waited longest), with one clock read. Many messages
//! per write is exactly when the broker is busy; an idle broker writes one at a time and
//! every delivery is a sample. A write led by a redelivery or by a replay takes no sample:
//! their age says how long an ack was awaited or how far back a subscriber asked, not how
//! fast the broker moves messages. Acks are recorded one by one (each already reads the
//! clock).

use hdrhistogram::Histogram;

/// The longest latency a histogram tells apart; longer ones count as this.
const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// Two significant digits: every recorded value is within 1% of the truth, and a histogram
/// is a few tens of kilobytes, cheap to clone into a stats answer.
const SIGNIFICANT_DIGITS: u8 = 2;

/// The upper bounds (in nanoseconds) of the Prometheus histogram buckets, `+Inf` aside:
/// 10 µs to 10 s in 1-2.5-5 steps.
pub const BUCKET_BOUNDS_NS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The quantiles exported, with their Prometheus label (`1` is the maximum).
pub const QUANTILES: [(f64, &str); 5] = [
    (0.5, "0.5"),
    (0.9, "0.9"),
    (0.99, "0.99"),
    (0.999, "0.999"),
    (1.0, "1"),
];

/// One latency distribution, in nanoseconds.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    histogram: Histogram<u64>,
    /// The exact sum of what was recorded (the histogram only knows it to within 1%), for
    /// Prometheus's `_sum`.
    sum_ns: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            histogram: Histogram::new_with_bounds(1, LATENCY_NS_MAX, SIGNIFICANT_DIGITS)
                .expect("constant bounds are valid"),
            sum_ns: 0,
        }
    }
}

impl LatencyHistogram {
    #[inline]
    pub fn record_ns(&mut self, latency_ns: u64) {
        self.histogram.saturating_record(latency_ns);
        self.sum_ns = self.sum_ns.saturating_add(latency_ns);
    }

    /// Adds another shard's samples (for broker-wide quantiles).
    pub fn add(&mut self, other: &LatencyHistogram) {
        // Both have the same bounds, so adding cannot fail.
        let _ = self.histogram.add(&other.histogram);
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    pub fn sum_ns(&self) -> u64 {
        self.sum_ns
    }

    /// The value at each of [`QUANTILES`], in nanoseconds (all 0 with no samples).
    pub fn quantiles_ns(&self) -> [u64; QUANTILES.len()] {
        let mut values = [0; QUANTILES.len()];
        if self.histogram.is_empty() {
            return values;
        }
        for (value, (quantile, _)) in values.iter_mut().zip(QUANTILES) {
            *value = if quantile >= 1.0 {
                self.histogram.max()
            } else {
                self.histogram.value_at_quantile(quantile)
            };
        }
        values
    }

    /// How many samples are at most each of [`BUCKET_BOUNDS_NS`] (cumulative, as Prometheus
    /// buckets are), to the histogram's 1%.
    pub fn cumulative_buckets(&self) -> [u64; BUCKET_BOUNDS_NS.len()] {
        let mut counts = [0; BUCKET_BOUNDS_NS.len()];
        for (count, &bound) in counts.iter_mut().zip(&BUCKET_BOUNDS_NS) {
            *count = self.histogram.count_between(0, bound);
        }
        counts
    }
}

/// A shard's latency histograms.
#[derive(Clone, Debug, Default)]
pub struct ShardLatency {
    /// Publish to socket write, one sample per write carrying deliveries.
    pub delivery: LatencyHistogram,
    /// Durable consumers: delivery to the ack applied, one sample per acked message.
    pub ack: LatencyHistogram,
}

impl ShardLatency {
    pub fn add(&mut self, other: &ShardLatency) {
        self.delivery.add(&other.delivery);
        self.ack.add(&other.ack);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_buckets_follow_the_samples() {
        let mut latency = LatencyHistogram::default();
        assert_eq!(latency.quantiles_ns(), [0; 5]);
        for micros in 1..=1000 {
            latency.record_ns(micros * 1000);
        }
        let [p50, p90, p99, p999, max] = latency.quantiles_ns();
        let near = |value: u64, expected: u64| value.abs_diff(expected) * 100 <= expected;
        assert!(near(p50, 500_000), "{p50}");
        assert!(near(p90, 900_000), "{p90}");
        assert!(near(p99, 990_000), "{p99}");
        assert!(near(p999, 999_000), "{p999}");
        assert!(near(max, 1_000_000), "{max}");
        assert_eq!(latency.count(), 1000);
        assert_eq!(latency.sum_ns(), 1000 * 1001 / 2 * 1000);
        let buckets = latency.cumulative_buckets();
        // 10 µs holds 1..=10 µs; 1 ms and above hold everything.
        assert_eq!(buckets[0], 10);
        assert_eq!(buckets[6], 1000);
        assert_eq!(*buckets.last().unwrap(), 1000);
        assert!(buckets.windows(2).all(|pair| pair[0] <= pair[1]));
    }

    #[test]
    fn shards_add_up_and_overlong_values_are_kept_at_the_top() {
        let mut one = ShardLatency::default();
        let mut two = ShardLatency::default();
        one.delivery.record_ns(1_000);
        two.delivery.record_ns(u64::MAX);
        two.ack.record_ns(5_000);
        one.add(&two);
        assert_eq!(one.delivery.count(), 2);
        assert_eq!(one.ack.count(), 1);
        assert!(one.delivery.quantiles_ns()[4] >= LATENCY_NS_MAX / 2);
    }
}
