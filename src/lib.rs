//! # corebus: a thread-per-core, in-memory publish/subscribe broker
//!
//! ## Bird's-eye view
//! Each CPU core runs one shard: a single-threaded `mio` reactor, pinned to its core, with
//! its own `SO_REUSEPORT` listener on the shared port. A connection lives and dies on the
//! shard that accepted it. Topic `t` is owned by shard `hash(t) % N`; the owner numbers the
//! topic's messages and knows which shards have subscribers. A publish travels from the
//! publisher's shard to the owner, and from the owner once to each shard with matching
//! subscribers, over bounded single-producer/single-consumer rings (`crossbeam-channel`
//! bounded channels, one producer and one consumer each); that shard fans out to its own
//! connections. Payloads are reference-counted: one allocation per message, whatever the
//! fan-out.
//!
//! ## Code map
//! Every module, by directory. Private modules are named by their file.
//!
//! - Entry points. `src/main.rs`: parse the command line, run the command. [`cli`]: `clap`
//!   definitions only. [`commands`]: what each CLI command does (`serve`, `pub`, `sub`,
//!   `request`, `reply`, `topic`; `inspect` and `top` are in [`watch`]). [`settings`]: where each `serve` setting comes from (flag >
//!   environment > config file > default), `--print-config`, the example config.
//! - Start-up. [`config`]: every limit, its default, validation, the memory budget and fitting
//!   unset limits to the memory available. [`logging`]: log lines as `key=value` text or
//!   one JSON object per line (`--log-format`). [`server`]: builds the mesh, spawns the shards,
//!   stops them. [`listeners`]: one `SO_REUSEPORT` listener per shard on a port shared with no
//!   other process ("address already in use" otherwise).
//! - [`protocol`]: sans-IO codecs. [`protocol::native`]: the binary frames, byte by byte.
//!   [`protocol::topic`]: topic names, patterns, topic → shard. [`protocol::subscribe_options`]
//!   and [`protocol::topic_options`]: the TLV options of SUBSCRIBE and CREATE_TOPIC (`tlv.rs`
//!   is their shared layout). [`protocol::sniff`]: recognises HTTP, Redis and NATS clients on
//!   the native port and answers them in their own words. The HTTP port: [`protocol::http`]
//!   (request heads, router, responses, WebSocket handshake), [`protocol::websocket`] (RFC 6455
//!   frames), [`protocol::ws_fiber`] and [`protocol::ws_fastapi`] (the two JSON dialects, over
//!   [`protocol::ws_json`]), [`protocol::payload`] (payloads across protocols, derived message
//!   ids). The Redis port: [`protocol::resp`] (RESP2/RESP3 requests,
//!   replies, pub/sub frames), [`protocol::glob`] (Redis patterns and their index),
//!   [`protocol::resp_channel`] (channel ↔ topic names), [`protocol::resp_commands`] (the
//!   command table and Redis's error texts).
//! - [`shard`]: what one core owns. `event_loop.rs`: the only caller of `poll` (accept, read,
//!   write, timers, shutdown). [`shard::connection`]: one connection's state, buffers and
//!   outbox. The protocol seam: `commands.rs` holds the protocol-neutral command handlers,
//!   which answer with [`shard::wire::Answer`]s; each connection kind words them through its
//!   [`shard::wire::Wire`]: `conn_native.rs` (HELLO, versions, binary frames),
//!   [`shard::conn_http`] (REST, the WebSocket upgrade, the dashboard page at `GET /`:
//!   `dashboard.html`, compiled in), [`shard::conn_ws`] (the JSON dialects,
//!   and the cache that encodes an event once per shard and dialect), [`shard::conn_resp`]
//!   (Redis: replies in request order, subscriptions, `INFO`/`PUBSUB`/`CLIENT`),
//!   `conn_inproc.rs` (the embedded bus's handles: commands taken from a ring, deliveries
//!   handed over as the shared message).
//!   [`shard::stats`]: stats
//!   gathered from every shard over the rings (`/v1/stats`, Prometheus `/metrics`);
//!   [`shard::latency`]: the in-broker latency histograms (delivery, ack round trip) each
//!   shard keeps and the stats carry; [`shard::presence`]: join and leave events on
//!   `$sys.presence.<topic>`. `owner.rs`: the owner
//!   side, sequencing and everything that arrives over the rings. [`shard::topics`]: the
//!   owner's topic table and each shard's local subscriptions. [`shard::sublist`]: the pattern
//!   trie and its cache. [`shard::replay`]: a topic's replay ring. [`shard::consumers`]:
//!   durable consumers and groups on the owner. [`shard::retry`]: a consumer's retry buffer
//!   (unacked messages, redelivery, dead letters). [`shard::pattern_groups`]: groups
//!   subscribed with a pattern, on every shard.
//! - [`mesh`]: everything that crosses between shards. [`mesh::ring`]: the bounded SPSC ring,
//!   a `crossbeam-channel` bounded channel with exactly one producer and one consumer, one
//!   batch per slot. [`mesh::message`]: the closed set of messages the rings carry.
//! - [`message`]: the shared, immutable message frame (its reference count, `message/frame.rs`,
//!   takes and drops the owner's references without a locked instruction while it holds the
//!   only one). [`ids`]: newtype ids. [`error`]: wire error codes and close reasons.
//! - [`client`]: the blocking Rust client (also used by the tests and the CLI).
//! - [`bus`]: the embedded bus: the shards inside an application, publishers and
//!   subscriptions as in-process connections (blocking iterators, async streams, filters);
//!   `bus/link.rs`: the two bounded SPSC rings, the doorbell and the wakers between a handle
//!   and its shard; `bus/spsc.rs`: the ring itself (each side owns its index, one release
//!   store per item: a delivery is a pointer, so an MPMC channel's CAS was a third of it).
//! - [`watch`]: `corebus inspect` and `corebus top`, an operator's views over the native
//!   STATS request (`top` draws with `ratatui` on a terminal, prints lines otherwise).
//! - [`mod@bench`]: `corebus bench`, the load generator (one `mio` loop per bench thread; also
//!   speaks Redis and NATS for comparisons, and corebus's WebSocket dialects):
//!   [`bench::scenario`], [`bench::wire`],
//!   [`bench::driver`], [`bench::latency`], [`bench::accounting`], [`bench::report`],
//!   [`bench::replay`], [`bench::inproc`] (`--target inproc`: the presets against an
//!   embedded bus in the bench process), and [`bench::reflector`], a stand-in broker that
//!   only forwards.
//!
//! ## Architecture invariants
//! - The topic, replay and consumer code never knows which protocol a connection speaks: it
//!   answers with `shard::wire::Answer`s and hands deliveries to the connection, whose
//!   `Wire` words them. A new protocol is a codec in `protocol/` plus a connection kind.
//! - `protocol/` knows nothing about sockets, `mio` or shards: bytes in, frames out.
//! - No locks anywhere in the broker. Shards share nothing mutable; they talk only through
//!   the rings in `mesh/` and a `mio::Waker` each. An in-process handle talks to its shard
//!   through its own two rings, and wakes it through a lock-free waker slot
//!   (`atomic-waker`), touched only when the handle is about to sleep or the shard wakes it.
//! - Every queue is bounded: per-connection outbound bytes, ring slots, batch sizes, topics,
//!   connections, subscriptions. A full ring never blocks a shard: the connection whose work
//!   needs it stops being read until it drains.
//! - Two ring kinds per ordered shard pair: owner requests and terminal deliveries. Handling a
//!   terminal message never sends anything, so every shard can always drain them and shards
//!   cannot deadlock on each other's full rings.
//! - Nothing from the network can panic the broker: decoding checks before it slices.

pub mod bench;
pub mod bus;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod ids;
pub mod listeners;
pub mod logging;
pub mod mesh;
pub mod message;
pub mod protocol;
pub mod server;
pub mod settings;
pub mod shard;
pub mod watch;
