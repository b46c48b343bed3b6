//! The command line: `clap` definitions and their translation into a [`Config`].
//! Every `serve` flag can also come from a `COREBUS_*` environment variable (flag wins).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, SlowConsumerPolicy};
use crate::logging::LogFormat;

/// `corebus --version`: the crate version and the git commit it was built from (`build.rs`;
/// `unknown` when built outside a git checkout without `COREBUS_GIT_COMMIT`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("COREBUS_GIT_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "corebus",
    version = VERSION,
    about = "A thread-per-core in-memory pub/sub broker"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve(Box<ServeArgs>),
    /// Publish a message (or --count of them) and print the sequence number it was given.
    Pub(PubArgs),
    /// Subscribe to a topic or pattern and print each message.
    Sub(SubArgs),
    /// Publish a request naming a private reply topic and print the first answer.
    Request(RequestArgs),
    /// Answer requests on a topic, with a fixed text or a command's output.
    Reply(ReplyArgs),
    /// Connect, handshake and PING the broker: exits 0 if it answers (a health check).
    Ping(PingArgs),
    /// Manage topics: `corebus topic create NAME --replay-messages N ...`.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Load-test corebus (or Redis, NATS): throughput, loss, order, latency percentiles.
    Bench(Box<crate::bench::BenchArgs>),
    /// Print the broker's topics, consumers with their lag, retained ranges and slow
    /// consumers once (with --topic, who receives that topic): a table, or --json.
    Inspect(InspectArgs),
    /// A live view, refreshed every second: rates per shard and topic, latency quantiles,
    /// slow consumers. Full screen on a terminal (q quits), plain lines otherwise.
    Top(TopArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Broker address: HOST:PORT or corebus://HOST:PORT.
    #[arg(long, env = "COREBUS_ADDR", default_value = "127.0.0.1:7070", value_parser = parse_broker_addr)]
    pub addr: String,
    /// Also list the subscriptions that receive this topic, on every shard.
    #[arg(long)]
    pub topic: Option<String>,
    /// Print the stats as JSON (the STATS answer) instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Broker address: HOST:PORT or corebus://HOST:PORT.
    #[arg(long, env = "COREBUS_ADDR", default_value = "127.0.0.1:7070", value_parser = parse_broker_addr)]
    pub addr: String,
    /// Time between refreshes, e.g. `500ms`.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration_ms)]
    pub interval: u64,
    /// Stop after this many refreshes (0: until interrupted, or q on a terminal).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub count: u64,
    /// Topics shown, busiest first.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub topics: usize,
    /// Plain lines even on a terminal.
    #[arg(long)]
    pub plain: bool,
}

/// `serve`'s flags. Each is also a `COREBUS_*` environment variable and a key of the
/// `--config` file (the flag's name without `--`); `src/settings.rs` merges the three.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file whose keys are these flags' names (`connections-max = 5000`); flags and
    /// environment variables override it.
    #[arg(long, env = "COREBUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration, with where each value came from, and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Print an annotated example config file (every key, commented out at its default) and
    /// exit.
    #[arg(long)]
    pub example_config: bool,
    /// Native protocol address; port 0 picks a free port.
    #[arg(long, env = "COREBUS_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Also write the ready line to this file once listening (for health checks); it is
    /// removed when the broker stops.
    #[arg(long, env = "COREBUS_READY_FILE", value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Number of shards (one reactor thread each); default: one per available core.
    #[arg(long, env = "COREBUS_SHARDS")]
    pub shards: Option<usize>,
    /// CPUs to pin shards to, e.g. `0,2-3`; shard i runs on the i-th (wrapping).
    #[arg(long, env = "COREBUS_CORES", value_parser = parse_core_list)]
    pub cores: Option<CoreList>,
    /// Do not pin shard threads to cores.
    #[arg(long, env = "COREBUS_NO_PIN", value_parser = BoolishValueParser::new())]
    pub no_pin: bool,
    /// Let the kernel back the broker's memory with transparent huge pages. Off by default
    /// (as Redis's `disable-thp`): zeroing a 2 MiB page on its first touch stalls a shard,
    /// which showed as a p99.9 of 4 to 11 ms while a fresh broker filled a thousand replay
    /// rings, against 0.5 to 1.3 ms without them, at the same rate.
    #[arg(long, env = "COREBUS_HUGE_PAGES", value_parser = BoolishValueParser::new())]
    pub huge_pages: bool,
    /// Largest message payload accepted, in bytes.
    #[arg(long, env = "COREBUS_MESSAGE_BYTES_MAX", default_value_t = Config::default().message_bytes_max)]
    pub message_bytes_max: usize,
    /// Connections across all shards (each shard takes an equal share); unset, lowered to fit
    /// the memory available.
    #[arg(long, env = "COREBUS_CONNECTIONS_MAX", default_value_t = Config::default().connections_max)]
    pub connections_max: usize,
    /// Connections from one source IP address, loopback included (each shard enforces an
    /// equal share); over it a new connection is refused with TOO_MANY_CONNECTIONS.
    #[arg(long, env = "COREBUS_CONNECTIONS_PER_IP_MAX", default_value_t = Config::default().connections_per_ip_max)]
    pub connections_per_ip_max: usize,
    /// Connections admitted from localhost (127.0.0.1, ::1) beyond --connections-max, so an
    /// operator on the machine reaches a full broker (each shard takes an equal share); 0 for
    /// none.
    #[arg(long, env = "COREBUS_CONNECTIONS_LOOPBACK_RESERVE", default_value_t = Config::default().connections_loopback_reserve)]
    pub connections_loopback_reserve: usize,
    /// Subscriptions one connection may hold.
    #[arg(long, env = "COREBUS_SUBSCRIPTIONS_PER_CONNECTION_MAX", default_value_t = Config::default().subscriptions_per_connection_max)]
    pub subscriptions_per_connection_max: usize,
    /// Topics across all shards (each owner shard takes an equal share); unset, lowered to fit
    /// the memory available.
    #[arg(long, env = "COREBUS_TOPICS_MAX", default_value_t = Config::default().topics_max)]
    pub topics_max: usize,
    /// Topics one connection may make by publishing or subscribing to new names (while they
    /// exist); over it such a publish or subscribe gets TOO_MANY_TOPICS.
    #[arg(long, env = "COREBUS_TOPICS_PER_CONNECTION_MAX", default_value_t = Config::default().topics_per_connection_max)]
    pub topics_per_connection_max: usize,
    /// Bytes queued towards one connection before the slow-consumer policy applies.
    #[arg(long, env = "COREBUS_OUTBOUND_BYTES_MAX", default_value_t = Config::default().outbound_bytes_max)]
    pub outbound_bytes_max: usize,
    /// What happens to a subscriber over --outbound-bytes-max.
    #[arg(long, env = "COREBUS_SLOW_CONSUMER", value_enum, default_value_t = SlowConsumerPolicy::Disconnect)]
    pub slow_consumer: SlowConsumerPolicy,
    /// Batches each shard-to-shard ring holds.
    #[arg(long, env = "COREBUS_RING_SLOTS", default_value_t = Config::default().ring_slots)]
    pub ring_slots: usize,
    /// Messages per ring batch.
    #[arg(long, env = "COREBUS_RING_BATCH_MAX", default_value_t = Config::default().ring_batch_max)]
    pub ring_batch_max: usize,
    /// Message bytes (publishes and deliveries) each shard-to-shard ring holds in flight.
    #[arg(long, env = "COREBUS_RING_BYTES_MAX", default_value_t = Config::default().ring_bytes_max)]
    pub ring_bytes_max: usize,
    /// Bytes per socket read; also each connection's resting read buffer.
    #[arg(long, env = "COREBUS_READ_CHUNK_BYTES", default_value_t = Config::default().read_chunk_bytes)]
    pub read_chunk_bytes: usize,
    /// Bytes one connection may read per loop turn before others get their turn.
    #[arg(long, env = "COREBUS_READ_BYTES_PER_TURN_MAX", default_value_t = Config::default().read_bytes_per_turn_max)]
    pub read_bytes_per_turn_max: usize,
    /// How long a new connection has to send HELLO (HTTP: its first request head), e.g. `2s`
    /// (a bare number is ms).
    #[arg(long, env = "COREBUS_HANDSHAKE_TIMEOUT_MS", value_name = "DURATION", default_value = "2s", value_parser = parse_duration_ms)]
    pub handshake_timeout_ms: u64,
    /// How long a frame (HTTP request, WebSocket message, Redis request) that has started
    /// arriving may take to complete, e.g. `10s`; then FRAME_TIMEOUT and the connection closes.
    #[arg(long, env = "COREBUS_FRAME_DEADLINE_MS", value_name = "DURATION", default_value = "10s", value_parser = parse_duration_ms)]
    pub frame_deadline_ms: u64,
    /// How long a connection the broker closes may take to receive its final frames.
    #[arg(long, env = "COREBUS_CLOSE_LINGER_MS", value_name = "DURATION", default_value = "2s", value_parser = parse_duration_ms)]
    pub close_linger_ms: u64,
    /// How long after a subscriber last made progress a publisher whose messages fill its
    /// queue past half of --outbound-bytes-max stays unread (on another shard: held through
    /// the rings), so a subscriber that is reading keeps up instead of being cut; one that
    /// made none for this long holds nobody again (0 = never stall).
    #[arg(long, env = "COREBUS_PUBLISHER_STALL_MS_MAX", value_name = "DURATION", default_value = "100ms", value_parser = parse_duration_ms)]
    pub publisher_stall_ms_max: u64,
    /// How long shutdown waits for outbound buffers to flush.
    #[arg(long, env = "COREBUS_SHUTDOWN_GRACE_MS", value_name = "DURATION", default_value = "5s", value_parser = parse_duration_ms)]
    pub shutdown_grace_ms: u64,
    /// Microseconds to spin on an idle poll before blocking (0 = always block).
    #[arg(long, env = "COREBUS_BUSY_POLL_US", default_value_t = Config::default().busy_poll_us)]
    pub busy_poll_us: u64,
    /// Microseconds a connection taking deliveries fast waits after its last write before the
    /// next while the shard is busy, unless `--write-coalesce-bytes` are queued first, so it
    /// is written in fewer, larger pieces; replies, slower streams and a shard serving one
    /// peer at a time are never held (0 = write every turn; at most 1 s).
    #[arg(long, env = "COREBUS_WRITE_COALESCE_US", default_value_t = Config::default().write_coalesce_us)]
    pub write_coalesce_us: u64,
    /// Queued bytes that end the wait of `--write-coalesce-us` at once.
    #[arg(long, env = "COREBUS_WRITE_COALESCE_BYTES", default_value_t = Config::default().write_coalesce_bytes)]
    pub write_coalesce_bytes: usize,
    /// Topics whose pattern-match result each shard caches.
    #[arg(long, env = "COREBUS_PATTERN_CACHE_ENTRIES_MAX", default_value_t = Config::default().pattern_cache_entries_max)]
    pub pattern_cache_entries_max: usize,
    /// Messages each topic retains for replay (0 disables replay).
    #[arg(long = "replay-messages", env = "COREBUS_REPLAY_MESSAGES", default_value_t = Config::default().replay_messages_max)]
    pub replay_messages_max: usize,
    /// Bytes (frames: payload plus headers) each topic retains for replay.
    #[arg(long = "replay-bytes", env = "COREBUS_REPLAY_BYTES", default_value_t = Config::default().replay_bytes_max)]
    pub replay_bytes_max: usize,
    /// Age after which retained messages are evicted, e.g. `30s`, `5m`, `1h`; `0` = no limit.
    #[arg(long = "replay-ttl", env = "COREBUS_REPLAY_TTL", value_name = "DURATION", default_value = "0", value_parser = parse_duration_ms)]
    pub replay_ttl_ms: u64,
    /// Most messages CREATE_TOPIC may ask one topic to retain.
    #[arg(long = "topic-replay-messages-max", env = "COREBUS_TOPIC_REPLAY_MESSAGES_MAX", default_value_t = Config::default().topic_replay_messages_max)]
    pub topic_replay_messages_max: usize,
    /// Most bytes CREATE_TOPIC may ask one topic to retain.
    #[arg(long = "topic-replay-bytes-max", env = "COREBUS_TOPIC_REPLAY_BYTES_MAX", default_value_t = Config::default().topic_replay_bytes_max)]
    pub topic_replay_bytes_max: usize,
    /// Topics CREATE_TOPIC may make, across all shards; unset, lowered to fit the memory
    /// available.
    #[arg(long = "created-topics-max", env = "COREBUS_CREATED_TOPICS_MAX", default_value_t = Config::default().created_topics_max)]
    pub created_topics_max: usize,
    /// A durable consumer with no subscription is removed after this long, e.g. `1h`.
    #[arg(long = "consumer-ttl", env = "COREBUS_CONSUMER_TTL", value_name = "DURATION", default_value = "1h", value_parser = parse_duration_ms)]
    pub consumer_ttl_ms: u64,
    /// Longest wait between redeliveries of an unacknowledged message, e.g. `60s`.
    #[arg(long = "redelivery-backoff-max", env = "COREBUS_REDELIVERY_BACKOFF_MAX", value_name = "DURATION", default_value = "60s", value_parser = parse_duration_ms)]
    pub redelivery_backoff_max_ms: u64,
    /// Largest in_flight_max a subscription may ask for (its retry buffer is preallocated).
    #[arg(long, env = "COREBUS_CONSUMER_IN_FLIGHT_MAX", default_value_t = Config::default().consumer_in_flight_max)]
    pub consumer_in_flight_max: u32,
    /// Durable consumers and groups across all shards (each owner shard takes an equal share).
    #[arg(long, env = "COREBUS_CONSUMERS_MAX", default_value_t = Config::default().consumers_max)]
    pub consumers_max: usize,
    /// A topic with no subscriber and no consumer is forgotten after this long without a publish.
    #[arg(long = "topic-idle-ttl", env = "COREBUS_TOPIC_IDLE_TTL", value_name = "DURATION", default_value = "1h", value_parser = parse_duration_ms)]
    pub topic_idle_ttl_ms: u64,
    /// Readiness events taken from the kernel per poll.
    #[arg(long, env = "COREBUS_EVENTS_PER_POLL_MAX", default_value_t = Config::default().events_per_poll_max)]
    pub events_per_poll_max: usize,
    /// HTTP address (REST under /v1/ and /, WebSocket at /v1/ws and /ws); port 0 picks one.
    #[arg(long, env = "COREBUS_HTTP_LISTEN", default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// Turn the HTTP port off.
    #[arg(long, env = "COREBUS_NO_HTTP", value_parser = BoolishValueParser::new())]
    pub no_http: bool,
    /// Redis protocol (RESP2 and RESP3) address: redis-cli, redis-py and every Redis client's
    /// pub/sub; port 0 picks one.
    #[arg(long, env = "COREBUS_RESP_LISTEN", default_value = "127.0.0.1:6380")]
    pub resp_listen: SocketAddr,
    /// Turn the Redis protocol port off.
    #[arg(long, env = "COREBUS_NO_RESP", value_parser = BoolishValueParser::new())]
    pub no_resp: bool,
    /// Bytes of an HTTP request head at most (431 above).
    #[arg(long, env = "COREBUS_HTTP_HEAD_BYTES_MAX", default_value_t = Config::default().http_head_bytes_max)]
    pub http_head_bytes_max: usize,
    /// Bytes of an HTTP request body at most (413 above).
    #[arg(long, env = "COREBUS_HTTP_BODY_BYTES_MAX", default_value_t = Config::default().http_body_bytes_max)]
    pub http_body_bytes_max: usize,
    /// Largest `last_n` a `/ws` subscriber gets; larger asks are capped to it.
    #[arg(long, env = "COREBUS_WS_LAST_N_MAX", default_value_t = Config::default().ws_last_n_max)]
    pub ws_last_n_max: u64,
    /// Bytes of a message's headers at most (native v4 headers; a WebSocket message's id).
    #[arg(long, env = "COREBUS_HEADER_BYTES_MAX", default_value_t = Config::default().header_bytes_max)]
    pub header_bytes_max: usize,
    /// Create topics on first publish or subscribe (`false`: only `topic create`, REST
    /// `POST`, or the client's create make them; others get TOPIC_NOT_FOUND).
    #[arg(long, env = "COREBUS_AUTO_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub auto_create_topics: bool,
    /// Publishes per second per connection, on every protocol (0: no limit); over it a
    /// publish is refused with RATE_LIMITED and the time to wait.
    #[arg(long, env = "COREBUS_PUBLISH_RATE", default_value_t = Config::default().publish_rate)]
    pub publish_rate: u64,
    /// Publishes a connection may make at once (0: one second's worth of --publish-rate).
    #[arg(long, env = "COREBUS_PUBLISH_BURST", default_value_t = Config::default().publish_burst)]
    pub publish_burst: u64,
    /// Topics with their own series in /metrics: the ones with the most messages.
    #[arg(long, env = "COREBUS_METRICS_TOPICS_MAX", default_value_t = Config::default().metrics_topics_max)]
    pub metrics_topics_max: usize,
    /// Join/leave events each shard may publish per second on `$sys.presence.<topic>` for
    /// topics created with presence on (0: none); those over it are counted, not sent.
    #[arg(long, env = "COREBUS_PRESENCE_EVENTS_PER_SECOND_MAX", default_value_t = Config::default().presence_events_per_second_max)]
    pub presence_events_per_second_max: u64,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, env = "COREBUS_LOG", default_value = "info")]
    pub log_level: log::LevelFilter,
    /// Log line format: text (key=value after a timestamp and level), or json (one object
    /// per line: ts, level, event and the line's fields).
    #[arg(long, env = "COREBUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Args)]
pub struct PubArgs {
    /// Broker address: HOST:PORT or corebus://HOST:PORT.
    #[arg(long, env = "COREBUS_ADDR", default_value = "127.0.0.1:7070", value_parser = parse_broker_addr)]
    pub addr: String,
    pub topic: String,
    /// The payload. Without it (or with `-`) the payload is all of stdin, byte for byte.
    #[arg(conflicts_with = "file")]
    pub message: Option<String>,
    /// Read the payload from this file, byte for byte.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Publish the payload this many times (quick load); prints the last sequence number.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// With --count: at most this many messages per second (0 = as fast as the broker takes
    /// them).
    #[arg(long, value_name = "PER_SECOND", default_value_t = 0)]
    pub rate: u64,
    /// Accepted for older scripts: every `pub` now waits for its sequence number.
    #[arg(long, hide = true)]
    pub confirm: bool,
    /// A message header, `NAME:VALUE` (repeatable; kept in order). Each message is then
    /// published with a confirm.
    #[arg(short = 'H', long = "header", value_name = "NAME:VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
}

/// `NAME:VALUE`, split at the first `:`.
fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not NAME:VALUE")),
    }
}

#[derive(Debug, Args)]
pub struct PingArgs {
    /// Broker address: HOST:PORT or corebus://HOST:PORT.
    #[arg(long, env = "COREBUS_ADDR", default_value = "127.0.0.1:7070", value_parser = parse_broker_addr)]
    pub addr: String,
    /// How long to wait for the handshake and the answer, e.g. `2s`.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration_ms)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Broker address: HOST:PORT or corebus://HOST:PORT.
    #[arg(long, env = "COREBUS_ADDR", default_value = "127.0.0.1:7070", value_parser = parse_broker_addr)]
    pub addr: String,
    pub topic: String,
    /// The request's payload. Without it (or with `-`) the payload is all of stdin.
    pub message: Option<String>,
    /// How long to wait for an answer, e.g. `500ms`, `5s`.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration_ms)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("answer_with").required(true).args(["exec", "answer"])))]
pub struct ReplyArgs {
    /// Broker address: HOST:PORT or corebus://HOST:PORT.
    #[arg(long, env = "COREBUS_ADDR", default_value = "127.0.0.1:7070", value_parser = parse_broker_addr)]
    pub addr: String,
    /// The topic (or pattern) requests arrive on.
    pub topic: String,
    /// Answer each request with this shell command's stdout (`sh -c CMD`), the request's
    /// payload on its stdin and its topic in `COREBUS_TOPIC`.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Answer each request with this text.
    #[arg(long, value_name = "TEXT")]
    pub answer: Option<String>,
    /// Share the requests with the other responders of this group (each request to one).
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// Exit after answering this many requests.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic now, with its own replay limits; it is never reclaimed for being idle.
    Create(CreateTopicArgs),
    /// Delete a topic, its retained messages and consumers; its subscriptions end.
    Delete(DeleteTopicArgs),
    /// List every topic with its subscriber count (asks the HTTP port's `GET /v1/topics`).
    List(ListTopicsArgs),
}

#[derive(Debug, Args)]
pub struct ListTopicsArgs {
    /// The broker's HTTP port (the ready line's `http=`).
    #[arg(long, env = "COREBUS_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// Wait at most this long for the answer, e.g. `2s`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct DeleteTopicArgs {
    /// Broker address: HOST:PORT or corebus://HOST:PORT.
    #[arg(long, env = "COREBUS_ADDR", default_value = "127.0.0.1:7070", value_parser = parse_broker_addr)]
    pub addr: String,
    pub topic: String,
}

#[derive(Debug, Args)]
pub struct CreateTopicArgs {
    /// Broker address: HOST:PORT or corebus://HOST:PORT.
    #[arg(long, env = "COREBUS_ADDR", default_value = "127.0.0.1:7070", value_parser = parse_broker_addr)]
    pub addr: String,
    pub topic: String,
    /// Messages the topic retains for replay (default: the broker's --replay-messages).
    #[arg(long = "replay-messages", value_name = "N")]
    pub replay_messages_max: Option<u64>,
    /// Bytes the topic retains for replay (default: the broker's --replay-bytes).
    #[arg(long = "replay-bytes", value_name = "BYTES")]
    pub replay_bytes_max: Option<u64>,
    /// Age after which the topic's retained messages are evicted, e.g. `10m`; `0` = no limit
    /// (default: the broker's --replay-ttl).
    #[arg(long = "replay-ttl", value_name = "DURATION", value_parser = parse_duration_ms)]
    pub replay_ttl_ms: Option<u64>,
    /// Publish a JSON event on `$sys.presence.<topic>` whenever a subscription to the topic
    /// starts or ends.
    #[arg(long)]
    pub presence: bool,
}

impl CreateTopicArgs {
    pub fn options(&self) -> crate::client::TopicOptions {
        crate::client::TopicOptions {
            replay_messages_max: self.replay_messages_max,
            replay_bytes_max: self.replay_bytes_max,
            replay_ttl_ms: self.replay_ttl_ms,
            presence: self.presence.then_some(1),
        }
    }
}

#[derive(Debug, Args)]
pub struct SubArgs {
    /// Broker address: HOST:PORT or corebus://HOST:PORT.
    #[arg(long, env = "COREBUS_ADDR", default_value = "127.0.0.1:7070", value_parser = parse_broker_addr)]
    pub addr: String,
    /// Exact topic or pattern (`orders.*`, `metrics.>`).
    pub subject: String,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Start with the last N retained messages of the topic (exact topics only).
    #[arg(long, value_name = "N", conflicts_with_all = ["from_seq", "all"])]
    pub last: Option<u64>,
    /// Start at this sequence number of the topic (exact topics only).
    #[arg(long, value_name = "SEQ", conflicts_with = "all")]
    pub from_seq: Option<u64>,
    /// Start with everything the topic retains (exact topics only).
    #[arg(long)]
    pub all: bool,
    /// Subscribe as this durable consumer: the broker remembers how far it got.
    #[arg(long, value_name = "NAME", conflicts_with = "group")]
    pub consumer: Option<String>,
    /// Join this consumer group: its members split the messages.
    #[arg(long, value_name = "NAME")]
    pub group: Option<String>,
    /// At-least-once: acknowledge each message as it is printed (needs --consumer or --group).
    #[arg(long)]
    pub ack: bool,
    /// With --ack: negatively acknowledge every Nth message received instead (the broker
    /// redelivers it at once), to watch redelivery and dead-lettering.
    #[arg(long, value_name = "N", requires = "ack", value_parser = clap::value_parser!(u64).range(1..))]
    pub nack_every: Option<u64>,
    /// With --ack: ask on the terminal after each message whether to ack it (Enter or `a`),
    /// nack it (`n`: redelivered at once), skip it (`s`: redelivered after --ack-wait) or
    /// quit (`q`). Answers are read from stdin, one line each.
    #[arg(long, requires = "ack", conflicts_with_all = ["nack_every", "json"])]
    pub manual: bool,
    /// With --ack: how long the broker waits for an ack before redelivering, e.g. `30s`.
    #[arg(long, value_name = "DURATION", requires = "ack", value_parser = parse_duration_ms)]
    pub ack_wait: Option<u64>,
    /// With --ack: deliveries of one message before it moves to `$dlq.<topic>`.
    #[arg(long, value_name = "N", requires = "ack")]
    pub deliver_max: Option<u16>,
    /// With --ack: unacknowledged messages the broker lets this consumer hold.
    #[arg(long, value_name = "N", requires = "ack")]
    pub in_flight_max: Option<u32>,
    /// Print each message's delivery count, its topic's epoch and its reply topic too.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    /// Print one JSON object per message and line (payload as a JSON string when it is
    /// UTF-8, else base64 in `payload_base64`).
    #[arg(long, conflicts_with = "verbose")]
    pub json: bool,
}

impl SubArgs {
    pub fn options(&self) -> Result<crate::client::SubscribeOptions, String> {
        use crate::client::{AckSettings, Sharing, SubscribeOptions};
        let sharing = match (&self.consumer, &self.group) {
            (Some(name), _) => Sharing::Consumer(name.clone()),
            (_, Some(name)) => Sharing::Group(name.clone()),
            _ => Sharing::None,
        };
        if self.ack && sharing == Sharing::None {
            return Err("--ack needs --consumer NAME or --group NAME".into());
        }
        let acks = self.ack.then(|| {
            let defaults = AckSettings::default();
            AckSettings {
                in_flight_max: self.in_flight_max.unwrap_or(defaults.in_flight_max),
                ack_wait_ms: self.ack_wait.map_or(defaults.ack_wait_ms, |ms| {
                    ms.min(u64::from(u32::MAX)) as u32
                }),
                deliver_max: self.deliver_max.unwrap_or(defaults.deliver_max),
            }
        });
        Ok(SubscribeOptions {
            start: self.start(),
            sharing,
            acks,
        })
    }

    pub fn start(&self) -> crate::client::Start {
        use crate::client::Start;
        match (self.last, self.from_seq, self.all) {
            (Some(n), _, _) => Start::LastN(n),
            (_, Some(seq), _) => Start::FromSeq(seq),
            (_, _, true) => Start::All,
            _ => Start::New,
        }
    }
}

/// CPU ids parsed from `0,2-3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreList(pub Vec<usize>);

pub fn parse_core_list(text: &str) -> Result<CoreList, String> {
    let mut cores = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{s}` is not a CPU number"))
        };
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (parse(first)?, parse(last)?);
                if first > last {
                    return Err(format!("range `{part}` runs backwards"));
                }
                cores.extend(first..=last);
            }
            None => cores.push(parse(part)?),
        }
    }
    if cores.is_empty() {
        return Err("the core list is empty".into());
    }
    Ok(CoreList(cores))
}

/// A broker address for the client commands: `HOST:PORT`, or `corebus://HOST:PORT` as
/// `bench --target` takes it (the port defaults to 7070). Returns `HOST:PORT`.
pub fn parse_broker_addr(text: &str) -> Result<String, String> {
    let rest = match text.trim().split_once("://") {
        Some(("corebus", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "`{text}`: only corebus://HOST:PORT (or HOST:PORT) is a broker address, not \
                 {scheme}://"
            ))
        }
        None => text.trim(),
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() {
        return Err(format!("`{text}` names no host"));
    }
    let has_port = match rest.strip_prefix('[') {
        Some(bracketed) => bracketed
            .split_once(']')
            .is_some_and(|(_, after)| after.starts_with(':')),
        None => rest.contains(':'),
    };
    Ok(if has_port {
        rest.to_string()
    } else {
        format!("{rest}:7070")
    })
}

/// A duration such as `250ms`, `30s` or `1h` (a bare number is milliseconds), in milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    if let Ok(ms) = text.trim().parse::<u64>() {
        return Ok(ms);
    }
    humantime::parse_duration(text.trim())
        .map(|d| d.as_millis() as u64)
        .map_err(|e| format!("`{text}` is not a duration ({e}); try 500ms, 30s, 5m or 1h"))
}

impl ServeArgs {
    pub fn to_config(&self) -> Config {
        let defaults = Config::default();
        let cores = self.cores.clone().map(|c| c.0).unwrap_or_default();
        // With an explicit core list and no shard count, run one shard per listed core.
        let shards = self.shards.unwrap_or(if cores.is_empty() {
            defaults.shards
        } else {
            cores.len()
        });
        Config {
            listen: self.listen,
            shards,
            cores,
            pin: !self.no_pin,
            message_bytes_max: self.message_bytes_max,
            connections_max: self.connections_max,
            connections_per_ip_max: self.connections_per_ip_max,
            connections_loopback_reserve: self.connections_loopback_reserve,
            subscriptions_per_connection_max: self.subscriptions_per_connection_max,
            topics_max: self.topics_max,
            topics_per_connection_max: self.topics_per_connection_max,
            outbound_bytes_max: self.outbound_bytes_max,
            slow_consumer: self.slow_consumer,
            ring_slots: self.ring_slots,
            ring_batch_max: self.ring_batch_max,
            ring_bytes_max: self.ring_bytes_max,
            read_chunk_bytes: self.read_chunk_bytes,
            read_bytes_per_turn_max: self.read_bytes_per_turn_max,
            handshake_timeout_ms: self.handshake_timeout_ms,
            frame_deadline_ms: self.frame_deadline_ms,
            close_linger_ms: self.close_linger_ms,
            publisher_stall_ms_max: self.publisher_stall_ms_max,
            shutdown_grace_ms: self.shutdown_grace_ms,
            busy_poll_us: self.busy_poll_us,
            write_coalesce_us: self.write_coalesce_us,
            write_coalesce_bytes: self.write_coalesce_bytes,
            pattern_cache_entries_max: self.pattern_cache_entries_max,
            replay_messages_max: self.replay_messages_max,
            replay_bytes_max: self.replay_bytes_max,
            replay_ttl_ms: self.replay_ttl_ms,
            topic_replay_messages_max: self.topic_replay_messages_max,
            topic_replay_bytes_max: self.topic_replay_bytes_max,
            created_topics_max: self.created_topics_max,
            consumer_ttl_ms: self.consumer_ttl_ms,
            redelivery_backoff_max_ms: self.redelivery_backoff_max_ms,
            consumer_in_flight_max: self.consumer_in_flight_max,
            consumers_max: self.consumers_max,
            topic_idle_ttl_ms: self.topic_idle_ttl_ms,
            events_per_poll_max: self.events_per_poll_max,
            http_listen: (!self.no_http).then_some(self.http_listen),
            resp_listen: (!self.no_resp).then_some(self.resp_listen),
            http_head_bytes_max: self.http_head_bytes_max,
            http_body_bytes_max: self.http_body_bytes_max,
            ws_last_n_max: self.ws_last_n_max,
            header_bytes_max: self.header_bytes_max,
            auto_create_topics: self.auto_create_topics,
            publish_rate: self.publish_rate,
            publish_burst: self.publish_burst,
            metrics_topics_max: self.metrics_topics_max,
            presence_events_per_second_max: self.presence_events_per_second_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists() {
        let check = |text: &str, expect: Result<Vec<usize>, ()>| {
            assert_eq!(
                parse_core_list(text).map(|c| c.0).map_err(drop),
                expect,
                "{text}"
            );
        };
        check("0", Ok(vec![0]));
        check("0,2-3", Ok(vec![0, 2, 3]));
        check(" 1 , 3 ", Ok(vec![1, 3]));
        check("3-1", Err(()));
        check("a", Err(()));
        check("", Err(()));
        check("1-", Err(()));
    }

    #[test]
    fn serve_defaults_match_the_config_defaults() {
        let cli = Cli::try_parse_from(["corebus", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve expected");
        };
        let config = args.to_config();
        let defaults = Config::default();
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(config.shards, defaults.shards);
        assert_eq!(config.outbound_bytes_max, defaults.outbound_bytes_max);
        assert!(config.pin);
        config.validate().unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("0"), Ok(0));
        assert_eq!(parse_duration_ms("250"), Ok(250));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert!(parse_duration_ms("soon").is_err());
    }

    #[test]
    fn a_core_list_sets_the_shard_count() {
        let cli = Cli::try_parse_from(["corebus", "serve", "--cores", "0-1", "--no-pin"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("serve expected");
        };
        let config = args.to_config();
        assert_eq!(config.shards, 2);
        assert!(!config.pin);
    }
}
