//! The shape of the load: presets, the resolved scenario, and who publishes to and subscribes
//! to which topic.
//!
//! - Publisher `p` of `P` publishes to topic `p % T` when `P >= T`, else to every topic `t`
//!   with `t % P == p`; it cycles through its topics round-robin. So every topic has at least
//!   one publisher, and a topic's publishers are `t, t + T, t + 2T, ...` (or just `t % P`).
//! - Subscriber `s` subscribes to the `subs_per_subscriber` (`K`) consecutive topics starting
//!   at `s·K`, wrapping: `(s·K + j) % T` for `j < K`. With `S·K = T` that partitions the
//!   topics; with `K = 1` it spreads subscribers round-robin over topics.
//! - `many-topics` partitions: 1000 topics, 4 publishers and 4 subscribers that each take 250
//!   of them (unless `--subs-per-subscriber` says otherwise), so every topic has one
//!   publisher and one subscriber and the broker's per-topic work dominates.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::accounting::HEADER_LEN;

/// Named scenarios for `--preset`. Explicit flags override their values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Preset {
    /// 1 publisher, 1 subscriber, 1 topic.
    #[value(name = "1:1")]
    #[serde(rename = "1:1")]
    OneToOne,
    /// 1 publisher, 16 subscribers, 1 topic.
    #[value(name = "fanout-16")]
    #[serde(rename = "fanout-16")]
    Fanout16,
    /// 8 publishers, 1 subscriber, 1 topic.
    #[value(name = "fanin-8")]
    #[serde(rename = "fanin-8")]
    Fanin8,
    /// 1000 topics, 4 publishers, 4 subscribers each taking a quarter of the topics.
    #[value(name = "many-topics")]
    #[serde(rename = "many-topics")]
    ManyTopics,
    /// 5 topics, 10 publishers, 20 subscribers.
    #[value(name = "light")]
    #[serde(rename = "light")]
    Light,
    /// 10 topics, 20 publishers, 50 subscribers.
    #[value(name = "medium")]
    #[serde(rename = "medium")]
    Medium,
    /// 20 topics, 50 publishers, 100 subscribers.
    #[value(name = "heavy")]
    #[serde(rename = "heavy")]
    Heavy,
    /// 50 topics, 100 publishers, 200 subscribers.
    #[value(name = "extreme")]
    #[serde(rename = "extreme")]
    Extreme,
}

impl Preset {
    /// (topics, publishers, subscribers).
    pub fn shape(self) -> (usize, usize, usize) {
        match self {
            Preset::OneToOne => (1, 1, 1),
            Preset::Fanout16 => (1, 1, 16),
            Preset::Fanin8 => (1, 8, 1),
            Preset::ManyTopics => (1000, 4, 4),
            Preset::Light => (5, 10, 20),
            Preset::Medium => (10, 20, 50),
            Preset::Heavy => (20, 50, 100),
            Preset::Extreme => (50, 100, 200),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::OneToOne => "1:1",
            Preset::Fanout16 => "fanout-16",
            Preset::Fanin8 => "fanin-8",
            Preset::ManyTopics => "many-topics",
            Preset::Light => "light",
            Preset::Medium => "medium",
            Preset::Heavy => "heavy",
            Preset::Extreme => "extreme",
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub const DEFAULT_SIZE: usize = 128;
pub const DEFAULT_DURATION_S: f64 = 10.0;
pub const DEFAULT_WARMUP_S: f64 = 2.0;
pub const DEFAULT_PIPELINE: usize = 1024;
/// Payloads above this are refused (all three targets' defaults are at most 1 MiB anyway).
pub const SIZE_MAX: usize = 64 * 1024 * 1024;

/// Flags that shape the load, each `None` when not given.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub preset: Option<Preset>,
    pub publishers: Option<usize>,
    pub subscribers: Option<usize>,
    pub topics: Option<usize>,
    pub subs_per_subscriber: Option<usize>,
    pub size: Option<usize>,
    pub duration_s: Option<f64>,
    pub warmup_s: Option<f64>,
    pub rate: Option<u64>,
    pub pipeline: Option<usize>,
    /// `--unwindowed`.
    pub unwindowed: bool,
}

/// A fully resolved, validated scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub preset: Option<Preset>,
    pub publishers: usize,
    pub subscribers: usize,
    pub topics: usize,
    pub subs_per_subscriber: usize,
    /// Payload bytes per message.
    pub size: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Total msg/s across publishers; 0 = closed loop.
    pub rate: u64,
    pub pipeline: usize,
    /// Publishers are not windowed: no PING (or wait for replies) until the end, they write
    /// until the socket pushes back, as NATS clients do. Then `pipeline` only bounds an
    /// open-loop publisher's messages per loop turn.
    #[serde(default)]
    pub unwindowed: bool,
}

impl Scenario {
    /// Preset values (or 1:1), then explicit flags over them, then validation.
    pub fn resolve(o: &Overrides) -> Result<Scenario, String> {
        let (topics, publishers, subscribers) = o.preset.unwrap_or(Preset::OneToOne).shape();
        let topics = o.topics.unwrap_or(topics);
        let publishers = o.publishers.unwrap_or(publishers);
        let subscribers = o.subscribers.unwrap_or(subscribers);
        let subs_per_subscriber = o.subs_per_subscriber.unwrap_or_else(|| {
            if o.preset == Some(Preset::ManyTopics) && subscribers > 0 {
                topics.div_ceil(subscribers).max(1)
            } else {
                1
            }
        });
        let scenario = Scenario {
            preset: o.preset,
            publishers,
            subscribers,
            topics,
            subs_per_subscriber,
            size: o.size.unwrap_or(DEFAULT_SIZE),
            duration_s: o.duration_s.unwrap_or(DEFAULT_DURATION_S),
            warmup_s: o.warmup_s.unwrap_or(DEFAULT_WARMUP_S),
            rate: o.rate.unwrap_or(0),
            pipeline: o.pipeline.unwrap_or(DEFAULT_PIPELINE),
            unwindowed: o.unwindowed,
        };
        scenario.validate()?;
        Ok(scenario)
    }

    fn validate(&self) -> Result<(), String> {
        if self.publishers == 0 {
            return Err("--publishers must be at least 1".into());
        }
        if self.topics == 0 || self.topics > u32::MAX as usize {
            return Err("--topics must be at least 1".into());
        }
        if self.subs_per_subscriber == 0 || self.subs_per_subscriber > self.topics {
            return Err(format!(
                "--subs-per-subscriber must be 1..={} (the number of topics), got {}",
                self.topics, self.subs_per_subscriber
            ));
        }
        if self.size < HEADER_LEN || self.size > SIZE_MAX {
            return Err(format!(
                "--size must be {HEADER_LEN}..={SIZE_MAX} bytes (each payload starts with a \
                 {HEADER_LEN}-byte header), got {}",
                self.size
            ));
        }
        if !(self.duration_s.is_finite() && self.duration_s > 0.0 && self.duration_s <= 86_400.0) {
            return Err("--duration must be above 0 and at most a day".into());
        }
        if !(self.warmup_s.is_finite() && self.warmup_s >= 0.0 && self.warmup_s <= 86_400.0) {
            return Err("--warmup must be 0 or more, and at most a day".into());
        }
        if self.pipeline == 0 {
            return Err("--pipeline must be at least 1".into());
        }
        let streams = self.subscribers as u64
            * self.subs_per_subscriber as u64
            * self.publishers_per_topic_max() as u64;
        if streams > 20_000_000 {
            return Err(format!(
                "{streams} (subscriber, topic, publisher) streams to track is too many"
            ));
        }
        Ok(())
    }

    pub fn closed_loop(&self) -> bool {
        self.rate == 0
    }

    /// Messages a closed-loop publisher writes at once (then a PING on targets that need one).
    pub fn batch(&self) -> usize {
        (self.pipeline / 4).max(1)
    }

    /// The topics publisher `p` publishes to, in its round-robin order.
    pub fn publisher_topics(&self, p: usize) -> Vec<u32> {
        let (publishers, topics) = (self.publishers, self.topics);
        if publishers >= topics {
            vec![(p % topics) as u32]
        } else {
            (p..topics).step_by(publishers).map(|t| t as u32).collect()
        }
    }

    /// The most publishers any one topic has.
    pub fn publishers_per_topic_max(&self) -> usize {
        if self.publishers >= self.topics {
            self.publishers.div_ceil(self.topics)
        } else {
            1
        }
    }

    /// Publisher `p`'s index among topic `t`'s publishers, or `None` if it does not publish
    /// there.
    pub fn publisher_slot(&self, topic: u32, p: u32) -> Option<usize> {
        let (t, p) = (topic as usize, p as usize);
        if p >= self.publishers || t >= self.topics {
            return None;
        }
        if self.publishers >= self.topics {
            (p % self.topics == t).then_some(p / self.topics)
        } else {
            (t % self.publishers == p).then_some(0)
        }
    }

    /// The topics subscriber `s` subscribes to.
    pub fn subscriber_topics(&self, s: usize) -> Vec<u32> {
        let first = self.subscriber_first_topic(s) as usize;
        (0..self.subs_per_subscriber)
            .map(|j| ((first + j) % self.topics) as u32)
            .collect()
    }

    /// The first of subscriber `s`'s topics (the others follow it, wrapping).
    pub fn subscriber_first_topic(&self, s: usize) -> u32 {
        ((s as u64 * self.subs_per_subscriber as u64) % self.topics as u64) as u32
    }

    /// Topic `t`'s index among subscriber `s`'s subscriptions, or `None`.
    pub fn subscription_slot(&self, s: usize, topic: u32) -> Option<usize> {
        self.subscription_slot_from(self.subscriber_first_topic(s), topic)
    }

    /// [`Scenario::subscription_slot`] given the subscriber's first topic: no division, for
    /// the per-message path.
    #[inline]
    pub fn subscription_slot_from(&self, first: u32, topic: u32) -> Option<usize> {
        let (t, first) = (topic as usize, first as usize);
        if t >= self.topics {
            return None;
        }
        let j = if t >= first {
            t - first
        } else {
            t + self.topics - first
        };
        (j < self.subs_per_subscriber).then_some(j)
    }

    /// How many subscribers each topic has.
    pub fn subscribers_per_topic(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.topics];
        for s in 0..self.subscribers {
            for t in self.subscriber_topics(s) {
                counts[t as usize] += 1;
            }
        }
        counts
    }

    /// A one-line description for reports.
    pub fn describe(&self) -> String {
        let rate = if self.closed_loop() {
            "closed loop".to_string()
        } else {
            format!("{} msg/s open loop", self.rate)
        };
        let window = if self.unwindowed {
            "unwindowed".to_string()
        } else {
            format!("pipeline {}", self.pipeline)
        };
        format!(
            "{}{} pub, {} sub, {} topics, {} subs/sub, {} B, {rate}, {window}, {}s (+{}s warm-up)",
            self.preset.map(|p| format!("{p}: ")).unwrap_or_default(),
            self.publishers,
            self.subscribers,
            self.topics,
            self.subs_per_subscriber,
            self.size,
            self.duration_s,
            self.warmup_s
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(preset: Option<Preset>) -> Scenario {
        Scenario::resolve(&Overrides {
            preset,
            ..Overrides::default()
        })
        .unwrap()
    }

    #[test]
    fn presets_and_overrides() {
        let s = scenario(Some(Preset::Medium));
        assert_eq!((s.topics, s.publishers, s.subscribers), (10, 20, 50));
        let s = Scenario::resolve(&Overrides {
            preset: Some(Preset::Heavy),
            subscribers: Some(7),
            size: Some(64),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(
            (s.topics, s.publishers, s.subscribers, s.size),
            (20, 50, 7, 64)
        );
        let s = scenario(None);
        assert_eq!((s.topics, s.publishers, s.subscribers), (1, 1, 1));
        assert_eq!(
            (s.size, s.rate, s.pipeline),
            (DEFAULT_SIZE, 0, DEFAULT_PIPELINE)
        );
    }

    #[test]
    fn many_topics_partitions_the_topics_among_subscribers() {
        let s = scenario(Some(Preset::ManyTopics));
        assert_eq!(s.subs_per_subscriber, 250);
        assert!(s.subscribers_per_topic().iter().all(|&n| n == 1));
        assert_eq!(s.subscriber_topics(1)[0], 250);
        // Each publisher takes every 4th topic.
        assert_eq!(s.publisher_topics(3).len(), 250);
        assert_eq!(s.publisher_topics(3)[..3], [3, 7, 11]);
        // Fewer topics still partition.
        let s = Scenario::resolve(&Overrides {
            preset: Some(Preset::ManyTopics),
            topics: Some(10),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(s.subs_per_subscriber, 3);
    }

    #[test]
    fn every_topic_has_a_publisher_and_slots_are_consistent() {
        for preset in [
            Preset::OneToOne,
            Preset::Fanout16,
            Preset::Fanin8,
            Preset::ManyTopics,
            Preset::Light,
            Preset::Medium,
            Preset::Heavy,
            Preset::Extreme,
        ] {
            let s = scenario(Some(preset));
            let mut publishers_of = vec![Vec::new(); s.topics];
            for p in 0..s.publishers {
                for t in s.publisher_topics(p) {
                    publishers_of[t as usize].push(p);
                }
            }
            for (t, pubs) in publishers_of.iter().enumerate() {
                assert!(!pubs.is_empty(), "{preset}: topic {t} has no publisher");
                assert!(pubs.len() <= s.publishers_per_topic_max());
                for (slot, &p) in pubs.iter().enumerate() {
                    assert_eq!(s.publisher_slot(t as u32, p as u32), Some(slot), "{preset}");
                }
                let others = (0..s.publishers).filter(|p| !pubs.contains(p));
                for p in others {
                    assert_eq!(s.publisher_slot(t as u32, p as u32), None);
                }
            }
            for sub in 0..s.subscribers {
                let topics = s.subscriber_topics(sub);
                for (j, &t) in topics.iter().enumerate() {
                    assert_eq!(s.subscription_slot(sub, t), Some(j));
                }
                let other = (0..s.topics as u32).find(|t| !topics.contains(t));
                if let Some(t) = other {
                    assert_eq!(s.subscription_slot(sub, t), None);
                }
            }
            let total: u64 = s.subscribers_per_topic().iter().sum();
            assert_eq!(total, (s.subscribers * s.subs_per_subscriber) as u64);
        }
    }

    #[test]
    fn unwindowed_is_off_unless_asked_and_described() {
        let s = scenario(Some(Preset::Fanin8));
        assert!(!s.unwindowed);
        assert!(s.describe().contains("pipeline 1024"));
        let s = Scenario::resolve(&Overrides {
            preset: Some(Preset::Fanin8),
            unwindowed: true,
            ..Overrides::default()
        })
        .unwrap();
        assert!(s.unwindowed);
        assert!(s.describe().contains("unwindowed"), "{}", s.describe());
        assert!(!s.describe().contains("pipeline"));
        // Results saved before the flag existed still load, as windowed runs.
        let mut json = serde_json::to_value(&s).unwrap();
        json.as_object_mut().unwrap().remove("unwindowed");
        let old: Scenario = serde_json::from_value(json).unwrap();
        assert!(!old.unwindowed);
    }

    #[test]
    fn light_spreads_subscribers_round_robin() {
        let s = scenario(Some(Preset::Light));
        assert_eq!(s.subscribers_per_topic(), vec![4; 5]);
        assert_eq!(s.subscriber_topics(7), vec![2]);
        assert_eq!(s.publisher_topics(7), vec![2]);
    }

    #[test]
    fn bad_values_are_refused() {
        let bad = |o: Overrides| Scenario::resolve(&o).unwrap_err();
        assert!(bad(Overrides {
            size: Some(HEADER_LEN - 1),
            ..Overrides::default()
        })
        .contains("--size"));
        assert!(bad(Overrides {
            subs_per_subscriber: Some(2),
            ..Overrides::default()
        })
        .contains("--subs-per-subscriber"));
        assert!(bad(Overrides {
            publishers: Some(0),
            ..Overrides::default()
        })
        .contains("--publishers"));
        assert!(bad(Overrides {
            duration_s: Some(0.0),
            ..Overrides::default()
        })
        .contains("--duration"));
        assert!(bad(Overrides {
            pipeline: Some(0),
            ..Overrides::default()
        })
        .contains("--pipeline"));
    }
}
