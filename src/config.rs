//! The broker's configuration: every limit in one place, with its default, validated once at
//! start-up so the shards can size their preallocations from it and never check it again.
//!
//! Each field here has a CLI flag and a `COREBUS_*` environment variable in `cli.rs` and a
//! line in `tuning.md`. Keep the three in step.

use std::fmt;
use std::net::SocketAddr;

use crate::protocol::native::FRAME_OVERHEAD_MAX;

/// Shard masks are `u64` bit sets, so one broker runs at most this many shards.
pub const SHARDS_MAX: usize = 64;

/// What the broker does with a subscriber whose outbound queue is over `outbound_bytes_max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SlowConsumerPolicy {
    /// Send `SLOW_CONSUMER`, then close the connection.
    Disconnect,
    /// Drop the oldest queued deliveries, count them, and tell the subscriber how many it lost.
    DropOldest,
}

impl fmt::Display for SlowConsumerPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SlowConsumerPolicy::Disconnect => "disconnect",
            SlowConsumerPolicy::DropOldest => "drop-oldest",
        })
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Native protocol listener; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Number of shards (reactor threads).
    pub shards: usize,
    /// CPU ids to pin shards to, shard `i` on `cores[i % cores.len()]`; empty = all available.
    pub cores: Vec<usize>,
    /// Pin each shard thread to its core.
    pub pin: bool,
    /// Largest accepted message payload.
    pub message_bytes_max: usize,
    /// Connections across all shards; each shard takes an equal share.
    pub connections_max: usize,
    /// Connections from one source address (IP, any port), loopback included. Each shard
    /// enforces an equal share of it (see [`Config::connections_per_ip_per_shard_max`]).
    pub connections_per_ip_max: usize,
    /// Connections admitted from `localhost` (127.0.0.1, ::1) beyond `connections_max`, so
    /// that an operator on the machine (`corebus inspect`, `curl /metrics`) reaches a broker
    /// that other clients have filled; each shard takes an equal share. 0: none.
    pub connections_loopback_reserve: usize,
    /// Subscriptions one connection may hold.
    pub subscriptions_per_connection_max: usize,
    /// Topics across all shards; each owner shard takes an equal share.
    pub topics_max: usize,
    /// Topics one connection may make by using them (publish or subscribe to a new name),
    /// while they exist; each owner shard allows an equal share.
    pub topics_per_connection_max: usize,
    /// Bytes queued towards one subscriber before the slow-consumer policy applies.
    pub outbound_bytes_max: usize,
    pub slow_consumer: SlowConsumerPolicy,
    /// Batches one shard-to-shard ring holds.
    pub ring_slots: usize,
    /// Messages in one ring batch.
    pub ring_batch_max: usize,
    /// Message bytes (publishes and deliveries) one shard-to-shard ring holds in flight.
    pub ring_bytes_max: usize,
    /// Bytes read from one socket per read call; also the read buffer's resting size.
    pub read_chunk_bytes: usize,
    /// Bytes one connection may read per loop turn before others get their turn.
    pub read_bytes_per_turn_max: usize,
    /// How long a new connection has to complete HELLO.
    pub handshake_timeout_ms: u64,
    /// How long input that has started arriving (a native frame, an HTTP request, a WebSocket
    /// message, a Redis request) may take to complete.
    pub frame_deadline_ms: u64,
    /// How long a connection the broker is closing may take to receive its final frames.
    pub close_linger_ms: u64,
    /// How long a publisher on the same shard feeding a subscriber whose queue is past half
    /// of `outbound_bytes_max` stays unread after the subscriber last took bytes; one that
    /// took none for this long holds nobody again until it drains (0 = never).
    pub publisher_stall_ms_max: u64,
    /// How long shutdown waits for outbound buffers to flush.
    pub shutdown_grace_ms: u64,
    /// Spin this long on an idle poll before blocking (0 = always block).
    pub busy_poll_us: u64,
    /// How long a connection taking deliveries fast may wait after its last write before the
    /// next while the shard is busy, unless `write_coalesce_bytes` are queued first; replies,
    /// slower streams and a shard serving one peer at a time are never held (0 = write every
    /// turn).
    pub write_coalesce_us: u64,
    /// Queued bytes that end the wait of `write_coalesce_us` at once.
    pub write_coalesce_bytes: usize,
    /// Topics whose pattern-match result each shard caches.
    pub pattern_cache_entries_max: usize,
    /// Messages each topic retains for replay (0 disables replay).
    pub replay_messages_max: usize,
    /// Payload-and-header bytes each topic retains for replay.
    pub replay_bytes_max: usize,
    /// Age after which a retained message is evicted (0 = no age limit).
    pub replay_ttl_ms: u64,
    /// Most messages CREATE_TOPIC may ask one topic to retain (its slots are preallocated).
    pub topic_replay_messages_max: usize,
    /// Most bytes CREATE_TOPIC may ask one topic to retain.
    pub topic_replay_bytes_max: usize,
    /// Topics created by CREATE_TOPIC across all shards (each owner shard takes a share):
    /// with the two caps above, this bounds what clients can make the broker preallocate.
    pub created_topics_max: usize,
    /// A durable consumer with no subscription is removed after this long.
    pub consumer_ttl_ms: u64,
    /// Longest wait between redeliveries (the wait doubles from `ack_wait` up to this).
    pub redelivery_backoff_max_ms: u64,
    /// Largest `in_flight_max` a subscription may ask for (its retry buffer is preallocated).
    pub consumer_in_flight_max: u32,
    /// Durable consumers and groups across all shards; each owner shard takes a share.
    pub consumers_max: usize,
    /// A topic with no subscriber and no consumer is forgotten after this long without a
    /// publish.
    pub topic_idle_ttl_ms: u64,
    /// Readiness events taken from the kernel per poll call.
    pub events_per_poll_max: usize,
    /// HTTP listener (REST and WebSocket); `None` turns the port off. Port 0 picks one.
    pub http_listen: Option<SocketAddr>,
    /// RESP (Redis protocol) listener; `None` turns the port off. Port 0 picks one.
    pub resp_listen: Option<SocketAddr>,
    /// Bytes of an HTTP request head (request line and headers) at most.
    pub http_head_bytes_max: usize,
    /// Bytes of an HTTP request body at most (REST bodies are small JSON objects).
    pub http_body_bytes_max: usize,
    /// `last_n` a `/ws` (FastAPI dialect) subscriber may ask for; larger asks are capped.
    pub ws_last_n_max: u64,
    /// Bytes of a message's header block (native v4 headers; WebSocket's id and content
    /// type) at most.
    pub header_bytes_max: usize,
    /// Topics come into being when first used; off, only an explicit create makes them.
    pub auto_create_topics: bool,
    /// Publishes per second one connection may make (token bucket); 0 is no limit.
    pub publish_rate: u64,
    /// Publishes a connection may make at once (the bucket's size); 0 is one second's worth
    /// of `publish_rate`.
    pub publish_burst: u64,
    /// Topics that get their own series in `/metrics`: the ones with the most messages. The
    /// bound keeps a scrape's size (and Prometheus's series count) independent of how many
    /// topics exist.
    pub metrics_topics_max: usize,
    /// Join and leave events each shard may publish per second on `$sys.presence.<topic>`
    /// (for topics created with presence on); 0 turns them off. A mass reconnect cannot
    /// flood the broker with events: those over the rate are counted and not sent.
    pub presence_events_per_second_max: u64,
}

impl Config {
    /// The largest WebSocket message: a payload of `message_bytes_max` with room for the
    /// JSON around it (type, topic, request id, message id), so a payload at the limit can be
    /// published over WebSocket too and is refused by size as `PAYLOAD_TOO_LARGE` only above.
    pub fn ws_message_bytes_max(&self) -> usize {
        self.message_bytes_max.saturating_add(WS_ENVELOPE_BYTES_MAX)
    }
}

/// Room for a WebSocket message's JSON envelope around its payload.
const WS_ENVELOPE_BYTES_MAX: usize = 16 * 1024;

/// The largest `--publisher-stall-ms-max` accepted: an hour.
pub const PUBLISHER_STALL_MS_MAX_LIMIT: u64 = 3_600_000;
/// The largest `--write-coalesce-us` accepted: a second.
pub const WRITE_COALESCE_US_LIMIT: u64 = 1_000_000;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7070".parse().expect("valid literal address"),
            shards: available_cores(),
            cores: Vec::new(),
            pin: true,
            message_bytes_max: 1024 * 1024,
            connections_max: 10_000,
            connections_per_ip_max: 256,
            connections_loopback_reserve: 8,
            subscriptions_per_connection_max: 1024,
            topics_max: 10_000,
            topics_per_connection_max: 1_000,
            outbound_bytes_max: 8 * 1024 * 1024,
            slow_consumer: SlowConsumerPolicy::Disconnect,
            ring_slots: 1024,
            ring_batch_max: 256,
            ring_bytes_max: 1024 * 1024,
            read_chunk_bytes: 64 * 1024,
            read_bytes_per_turn_max: 256 * 1024,
            handshake_timeout_ms: 2_000,
            frame_deadline_ms: 10_000,
            close_linger_ms: 2_000,
            publisher_stall_ms_max: 100,
            shutdown_grace_ms: 5_000,
            busy_poll_us: 0,
            write_coalesce_us: 200,
            write_coalesce_bytes: 16 * 1024,
            pattern_cache_entries_max: 4096,
            replay_messages_max: 1024,
            replay_bytes_max: 1024 * 1024,
            replay_ttl_ms: 0,
            topic_replay_messages_max: 65_536,
            topic_replay_bytes_max: 64 * 1024 * 1024,
            created_topics_max: 100,
            consumer_ttl_ms: 3_600_000,
            redelivery_backoff_max_ms: 60_000,
            consumer_in_flight_max: 10_000,
            consumers_max: 10_000,
            topic_idle_ttl_ms: 3_600_000,
            events_per_poll_max: 1024,
            http_listen: Some("127.0.0.1:8080".parse().expect("valid literal address")),
            resp_listen: Some("127.0.0.1:6380".parse().expect("valid literal address")),
            http_head_bytes_max: 8 * 1024,
            http_body_bytes_max: 64 * 1024,
            ws_last_n_max: 1000,
            header_bytes_max: 4096,
            auto_create_topics: true,
            publish_rate: 0,
            publish_burst: 0,
            metrics_topics_max: 50,
            presence_events_per_second_max: 1000,
        }
    }
}

/// The number of CPUs this process may run on.
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(SHARDS_MAX)
}

impl Config {
    /// The largest whole frame the broker accepts: a full payload plus the worst-case header.
    pub fn frame_bytes_max(&self) -> usize {
        // A header block is its u16 length and at most `header_bytes_max` bytes.
        self.message_bytes_max + FRAME_OVERHEAD_MAX + 2 + self.header_bytes_max
    }

    pub fn connections_per_shard_max(&self) -> usize {
        self.connections_max.div_ceil(self.shards)
    }

    /// One shard's share of [`Config::connections_loopback_reserve`].
    pub fn connections_loopback_reserve_per_shard(&self) -> usize {
        // The memory budget asks before `validate` has refused `--shards 0`.
        self.connections_loopback_reserve
            .div_ceil(self.shards.max(1))
    }

    /// One source address's share of a shard: `ceil(connections_per_ip_max / shards)`.
    ///
    /// Each shard accepts on its own `SO_REUSEPORT` listener and counts per address alone, so
    /// the hot path takes no lock and no ring round trip. The kernel spreads one address's
    /// connections over the shards by a hash of the 4-tuple (source port included), so they
    /// arrive in roughly equal shares and this per-shard cap bounds the whole at about
    /// `connections_per_ip_max` (never above `shards * ceil(max / shards)`); an unlucky
    /// spread can refuse an address a little early, never let one in much later.
    pub fn connections_per_ip_per_shard_max(&self) -> usize {
        self.connections_per_ip_max.div_ceil(self.shards)
    }

    pub fn topics_per_shard_max(&self) -> usize {
        self.topics_max.div_ceil(self.shards)
    }

    /// One connection's share of topics made by use on each owner shard (see
    /// `OwnedTopics::set_creations_per_connection_max` for why the owner counts).
    pub fn topics_per_connection_per_shard_max(&self) -> usize {
        self.topics_per_connection_max.div_ceil(self.shards)
    }

    pub fn created_topics_per_shard_max(&self) -> usize {
        self.created_topics_max.div_ceil(self.shards)
    }

    pub fn consumers_per_shard_max(&self) -> usize {
        self.consumers_max.div_ceil(self.shards)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return Err(format!(
                "--shards must be 1..={SHARDS_MAX}, got {}",
                self.shards
            ));
        }
        if self.message_bytes_max == 0 || self.message_bytes_max > 256 * 1024 * 1024 {
            return Err("--message-bytes-max must be 1 byte..=256 MiB".into());
        }
        if self.outbound_bytes_max < self.frame_bytes_max() {
            return Err(format!(
                "--outbound-bytes-max ({}) must hold at least one largest frame ({} bytes)",
                self.outbound_bytes_max,
                self.frame_bytes_max()
            ));
        }
        let positive = [
            ("--connections-max", self.connections_max),
            ("--connections-per-ip-max", self.connections_per_ip_max),
            (
                "--subscriptions-per-connection-max",
                self.subscriptions_per_connection_max,
            ),
            ("--topics-max", self.topics_max),
            (
                "--topics-per-connection-max",
                self.topics_per_connection_max,
            ),
            ("--ring-slots", self.ring_slots),
            ("--ring-batch-max", self.ring_batch_max),
            ("--ring-bytes-max", self.ring_bytes_max),
            ("--read-chunk-bytes", self.read_chunk_bytes),
            ("--read-bytes-per-turn-max", self.read_bytes_per_turn_max),
            ("--events-per-poll-max", self.events_per_poll_max),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.header_bytes_max > usize::from(u16::MAX) {
            return Err(format!(
                "--header-bytes-max must be at most {} (a header block's length is 16 bits)",
                u16::MAX
            ));
        }
        if self.frame_deadline_ms == 0 {
            return Err("--frame-deadline-ms must be at least 1ms".into());
        }
        if self.read_chunk_bytes < 4096 {
            return Err("--read-chunk-bytes must be at least 4096".into());
        }
        // Bounds that keep the deadlines built from them (Unix ns, Instants) from overflowing.
        if self.publisher_stall_ms_max > PUBLISHER_STALL_MS_MAX_LIMIT {
            return Err(format!(
                "--publisher-stall-ms-max must be at most {PUBLISHER_STALL_MS_MAX_LIMIT}ms (an hour)"
            ));
        }
        if self.write_coalesce_us > WRITE_COALESCE_US_LIMIT {
            return Err(format!(
                "--write-coalesce-us must be at most {WRITE_COALESCE_US_LIMIT} (a second)"
            ));
        }
        Ok(())
    }

    /// What the preallocations and the worst case of every bounded queue cost, for the start-up
    /// log and `tuning.md`. Outbound queues dominate: each connection may hold
    /// `outbound_bytes_max` before its policy applies.
    pub fn memory_budget(&self) -> MemoryBudget {
        let pairs = self.shards * self.shards.saturating_sub(1);
        // Two rings per ordered pair (owner requests and terminal deliveries); a slot holds a
        // batch of pointers (~24 bytes each) to reference-counted messages.
        let ring_bytes = pairs * 2 * self.ring_slots * self.ring_batch_max * 24;
        let per_connection = self.read_chunk_bytes + self.outbound_bytes_max;
        // Each shard keeps its own share of the reserve, rounded up.
        let connections =
            self.connections_max + self.shards * self.connections_loopback_reserve_per_shard();
        // The worst case: every topic's slots grown to the limit (they are allocated as its
        // history grows, so a topic that holds one message costs ~1 KB, not this); retained
        // bytes are payloads. Measured: 1,000 topics of 1,024 slots added 32.8 MiB of RSS.
        let replay_slot_bytes = 32;
        let per_topic = self.replay_messages_max * replay_slot_bytes + self.replay_bytes_max;
        MemoryBudget {
            connection_bytes_max: connections * per_connection,
            replay_bytes_max: self.topics_max * per_topic,
            created_topics_replay_bytes_max: self.created_topics_max
                * (self.topic_replay_messages_max * replay_slot_bytes
                    + self.topic_replay_bytes_max),
            ring_bytes_max: ring_bytes,
            frame_in_flight_bytes_max: connections * self.frame_bytes_max(),
        }
    }
}

impl Config {
    /// Lowers the limits in `adjustable` (those the operator left at their defaults), all by
    /// the same factor, until the worst case of [`Config::memory_budget`] fits in
    /// `budget_bytes`, none below a small floor. Explicit limits are left alone: if they
    /// overcommit, the start-up warning says so. Returns each limit changed, with its old and
    /// new value.
    pub fn fit_to_memory(
        &mut self,
        budget_bytes: usize,
        adjustable: &[FittedLimit],
    ) -> Vec<(FittedLimit, usize, usize)> {
        let total = self.memory_budget().total_bytes();
        if total <= budget_bytes || adjustable.is_empty() {
            return Vec::new();
        }
        let bytes = |config: &Config, limit: FittedLimit| {
            limit.get(config).saturating_mul(limit.unit_bytes(config))
        };
        let adjustable_bytes: usize = adjustable.iter().map(|&l| bytes(self, l)).sum();
        let mut room = budget_bytes.saturating_sub(total.saturating_sub(adjustable_bytes));
        // Scale every free limit by room / their bytes; one that would go below its floor is
        // pinned there and the others share what is left, so the floors' cost is counted.
        let mut free: Vec<FittedLimit> = adjustable.to_vec();
        let mut changes = Vec::new();
        loop {
            let free_bytes: usize = free.iter().map(|&l| bytes(self, l)).sum::<usize>().max(1);
            let scaled = |limit: FittedLimit| {
                let old = limit.get(self);
                (old as u128 * room as u128 / free_bytes as u128) as usize
            };
            let Some(index) = free
                .iter()
                .position(|&l| scaled(l) < l.floor().min(l.get(self)))
            else {
                break;
            };
            let limit = free.remove(index);
            let old = limit.get(self);
            let new = limit.floor().min(old);
            limit.set(self, new);
            room = room.saturating_sub(bytes(self, limit));
            if new != old {
                changes.push((limit, old, new));
            }
        }
        let free_bytes: usize = free.iter().map(|&l| bytes(self, l)).sum::<usize>().max(1);
        for limit in free {
            let old = limit.get(self);
            let new = ((old as u128 * room as u128 / free_bytes as u128) as usize).min(old);
            if new != old {
                limit.set(self, new);
                changes.push((limit, old, new));
            }
        }
        changes
    }
}

impl MemoryBudget {
    /// The worst case if every bounded queue filled at once, every connection's read buffer
    /// grown for a largest frame in progress included (`--frame-deadline-ms` bounds how long
    /// one is held, not how many are held at once).
    pub fn total_bytes(&self) -> usize {
        self.connection_bytes_max
            .saturating_add(self.frame_in_flight_bytes_max)
            .saturating_add(self.replay_bytes_max)
            .saturating_add(self.created_topics_replay_bytes_max)
            .saturating_add(self.ring_bytes_max)
    }
}

/// Physical memory, from `/proc/meminfo` (None where that is not available).
pub fn physical_memory_bytes() -> Option<usize> {
    meminfo_bytes("MemTotal:")
}

/// Memory the kernel could give to a new process without swapping (`MemAvailable` in
/// `/proc/meminfo`), None where that is not available.
pub fn available_memory_bytes() -> Option<usize> {
    meminfo_bytes("MemAvailable:")
}

fn meminfo_bytes(field: &str) -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|line| line.starts_with(field))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The share of available memory that default limits plan for: the worst case of every
/// bounded queue filling at once must fit in half of `MemAvailable` at start-up, leaving the
/// rest to the kernel, the page cache and whatever else runs there.
pub const DEFAULTS_MEMORY_SHARE_DIVISOR: usize = 2;

/// A limit that [`Config::fit_to_memory`] may lower when the operator did not set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FittedLimit {
    ConnectionsMax,
    TopicsMax,
    CreatedTopicsMax,
}

impl FittedLimit {
    pub const ALL: [FittedLimit; 3] = [
        FittedLimit::ConnectionsMax,
        FittedLimit::TopicsMax,
        FittedLimit::CreatedTopicsMax,
    ];

    /// The `serve` flag (and config file key) that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            FittedLimit::ConnectionsMax => "connections-max",
            FittedLimit::TopicsMax => "topics-max",
            FittedLimit::CreatedTopicsMax => "created-topics-max",
        }
    }

    /// Never lowered below this: a broker must still be usable on a small machine.
    fn floor(self) -> usize {
        match self {
            FittedLimit::ConnectionsMax | FittedLimit::TopicsMax => 16,
            FittedLimit::CreatedTopicsMax => 1,
        }
    }

    fn get(self, config: &Config) -> usize {
        match self {
            FittedLimit::ConnectionsMax => config.connections_max,
            FittedLimit::TopicsMax => config.topics_max,
            FittedLimit::CreatedTopicsMax => config.created_topics_max,
        }
    }

    fn set(self, config: &mut Config, value: usize) {
        match self {
            FittedLimit::ConnectionsMax => config.connections_max = value,
            FittedLimit::TopicsMax => config.topics_max = value,
            FittedLimit::CreatedTopicsMax => config.created_topics_max = value,
        }
    }

    /// What one unit of this limit may hold at worst, as [`Config::memory_budget`] counts it.
    fn unit_bytes(self, config: &Config) -> usize {
        let one = Config {
            connections_max: usize::from(self == FittedLimit::ConnectionsMax),
            topics_max: usize::from(self == FittedLimit::TopicsMax),
            created_topics_max: usize::from(self == FittedLimit::CreatedTopicsMax),
            // The reserve is a fixed cost, not a unit's.
            connections_loopback_reserve: 0,
            shards: 1,
            ..config.clone()
        };
        one.memory_budget().total_bytes()
    }
}

#[derive(Clone, Copy, Debug)]
pub struct MemoryBudget {
    /// Read buffers at rest plus full outbound queues, all connections.
    pub connection_bytes_max: usize,
    /// Replay rings of every topic at their default limits.
    pub replay_bytes_max: usize,
    /// Topics made by CREATE_TOPIC, each at the most it may ask for.
    pub created_topics_replay_bytes_max: usize,
    /// Ring slots' own storage (payloads are counted in the outbound queues).
    pub ring_bytes_max: usize,
    /// Read buffers grown to hold a largest frame, all connections at once (worst case).
    pub frame_in_flight_bytes_max: usize,
}

impl fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: usize = 1024 * 1024;
        write!(
            f,
            "connections<= {} MiB, replay<= {} MiB (+ created topics<= {} MiB), rings<= {} MiB, large frames in flight<= {} MiB",
            self.connection_bytes_max / MIB,
            self.replay_bytes_max / MIB,
            self.created_topics_replay_bytes_max / MIB,
            self.ring_bytes_max / MIB,
            self.frame_in_flight_bytes_max / MIB
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn invalid_values_are_named_in_the_error() {
        type Mutation = fn(&mut Config);
        let cases: [(Mutation, &str); 4] = [
            (|c| c.shards = 0, "--shards"),
            (|c| c.shards = SHARDS_MAX + 1, "--shards"),
            (|c| c.ring_slots = 0, "--ring-slots"),
            (|c| c.outbound_bytes_max = 10, "--outbound-bytes-max"),
        ];
        for (mutate, flag) in cases {
            let mut config = Config::default();
            mutate(&mut config);
            let error = config.validate().unwrap_err();
            assert!(error.contains(flag), "{error} should name {flag}");
        }
    }

    #[test]
    fn the_budget_adds_up_the_bounded_queues() {
        let config = Config {
            connections_max: 10,
            connections_loopback_reserve: 2,
            shards: 1,
            outbound_bytes_max: 2 << 20,
            read_chunk_bytes: 4096,
            ..Config::default()
        };
        let budget = config.memory_budget();
        // The localhost reserve's connections are connections too.
        assert_eq!(budget.connection_bytes_max, 12 * ((2 << 20) + 4096));
        assert!(budget.total_bytes() >= budget.connection_bytes_max + budget.replay_bytes_max);
        assert!(physical_memory_bytes().is_some_and(|bytes| bytes > 0));
    }

    /// Issue 11, defect 4: the defaults' worst case (~105 GiB with frames in progress) is fitted to the machine.
    #[test]
    fn defaults_are_fitted_to_the_memory_available() {
        const GIB: usize = 1 << 30;
        let defaults = Config {
            shards: 2,
            ..Config::default()
        };
        assert!(defaults.memory_budget().total_bytes() > 90 * GIB);
        for available in [24 * GIB, 4 * GIB, GIB] {
            let budget = available / DEFAULTS_MEMORY_SHARE_DIVISOR;
            let mut fitted = defaults.clone();
            let changes = fitted.fit_to_memory(budget, &FittedLimit::ALL);
            assert_eq!(changes.len(), 3, "{changes:?}");
            assert!(
                fitted.memory_budget().total_bytes() <= budget,
                "{} GiB available: {}",
                available / GIB,
                fitted.memory_budget()
            );
            // ...and uses it: a fixed cost counted once per unit once lowered the limits
            // fifteenfold on a 24 GiB machine.
            if available >= 4 * GIB {
                assert!(
                    fitted.memory_budget().total_bytes() >= budget / 10 * 9,
                    "{} GiB available: {}",
                    available / GIB,
                    fitted.memory_budget()
                );
            }
            fitted.validate().unwrap();
        }
        // A machine large enough keeps the defaults.
        let mut big = defaults.clone();
        assert!(big.fit_to_memory(1 << 50, &FittedLimit::ALL).is_empty());
        assert_eq!(big.connections_max, defaults.connections_max);
        // An explicit limit is never changed: the others make room if they can.
        let mut explicit = defaults.clone();
        let changes = explicit.fit_to_memory(
            12 * GIB,
            &[FittedLimit::TopicsMax, FittedLimit::CreatedTopicsMax],
        );
        assert_eq!(explicit.connections_max, 10_000);
        assert!(changes
            .iter()
            .all(|(limit, ..)| *limit != FittedLimit::ConnectionsMax));
        // Floors keep a tiny machine's broker usable (and the warning tells the rest).
        let mut tiny = defaults.clone();
        tiny.fit_to_memory(1 << 20, &FittedLimit::ALL);
        assert_eq!((tiny.connections_max, tiny.topics_max), (16, 16));
    }

    #[test]
    fn shares_round_up_so_the_total_is_never_below_the_limit() {
        let config = Config {
            shards: 3,
            connections_max: 10,
            topics_max: 7,
            ..Config::default()
        };
        assert_eq!(config.connections_per_shard_max(), 4);
        assert_eq!(config.topics_per_shard_max(), 3);
    }
}
