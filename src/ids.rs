//! Newtype ids, so a shard index, a connection and a subscription id cannot be mixed up.
//! `usize` appears only at the slab boundary.

use std::fmt;

/// Index of a shard, `0..shards`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(pub u16);

impl ShardId {
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// This shard's bit in a `u64` shard mask (shards are at most `config::SHARDS_MAX`).
    pub fn bit(self) -> u64 {
        1u64 << self.0
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A connection on one shard: its slab key plus a generation, so a message that outlived its
/// connection (a reply crossing a ring while the client hung up) finds a mismatch instead of
/// reaching whichever connection reused the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId {
    pub index: u32,
    pub generation: u32,
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.index, self.generation)
    }
}

/// A subscription as the shard that holds it knows it: the connection plus the client-chosen id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Subscriber {
    pub connection: ConnectionId,
    pub sub_id: u32,
}
