//! # corebus: a thread-per-core, in-memory publish/subscribe broker
//!
//! ## Bird's-eye view
//! Each CPU core runs one shard: a single-threaded `mio` reactor, pinned to its core, with
//! its own `SO_REUSEPORT` listener on the shared port. A connection lives and dies on the
//! shard that accepted it. Topic `t` is owned by shard `hash(t) % N`; the owner numbers the
//! topic's messages and knows which shards have subscribers. A publish travels from the
//! publisher's shard to the owner, and from the owner once to each shard with matching
//! subscribers, over bounded single-producer/single-consumer rings; that shard fans out to its
//! own connections. Payloads are reference-counted: one allocation per message, whatever the
//! fan-out.
//!
//! ## Code map
//! - [`cli`]: `clap` definitions only. [`config`]: every limit, its default, validation and
//!   the memory budget. [`server`]: binds the listeners, builds the mesh, spawns the shards.
//! - [`protocol`]: sans-IO codecs (native frames, topic names and patterns).
//! - [`shard`]: what one core owns: the event loop (the only caller of `poll`), connections,
//!   the owner's topic table, local subscriptions, the pattern trie.
//! - [`mesh`]: the rings between shards and the closed set of messages they carry.
//! - [`message`]: the shared, immutable message frame. [`ids`]: newtype ids.
//! - [`client`]: the blocking Rust client. [`error`]: wire error codes and close reasons.
//! - [`bench`]: `corebus bench`, the load generator (one `mio` loop per bench thread; also
//!   speaks Redis and NATS for comparisons; replay starts over a prefilled backlog).
//!
//! ## Architecture invariants
//! - `protocol/` knows nothing about sockets, `mio` or shards: bytes in, frames out.
//! - No locks anywhere in the broker. Shards share nothing mutable; they talk only through
//!   the rings in `mesh/` and a `mio::Waker` each.
//! - Every queue is bounded: per-connection outbound bytes, ring slots, batch sizes, topics,
//!   connections, subscriptions. A full ring never blocks a shard: the connection whose work
//!   needs it stops being read until it drains.
//! - Two ring kinds per ordered shard pair: owner requests and terminal deliveries. Handling a
//!   terminal message never sends anything, so every shard can always drain them and shards
//!   cannot deadlock on each other's full rings.
//! - Nothing from the network can panic the broker: decoding checks before it slices.

pub mod bench;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod ids;
pub mod listeners;
pub mod mesh;
pub mod message;
pub mod protocol;
pub mod server;
pub mod settings;
pub mod shard;
