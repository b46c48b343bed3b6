//! Everything that crosses between shards: the bounded SPSC rings, the closed set of messages
//! they carry, and the topic → owner route.
//!
//! Architecture invariant: shards share nothing mutable. The only ways one shard affects
//! another are a message in a ring, a `mio::Waker` call, and the [`PressureBoard`]: one
//! word, a bit per shard that only that shard writes, which the others read once per publish
//! (no lock; a relaxed load).

pub mod message;
pub mod ring;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mio::Waker;

use crate::ids::ShardId;

pub use message::{OwnerRequest, Terminal};
pub use ring::{Outbox, RingReceiver};

/// One shard's view of one peer: where to send, where to receive, and how to wake it.
pub struct PeerLink {
    pub peer: ShardId,
    /// Towards the peer as a topic owner: publishes and interest changes.
    pub requests_out: Outbox<OwnerRequest>,
    /// Towards the peer as a holder of connections: deliveries and replies.
    pub terminals_out: Outbox<Terminal>,
    pub requests_in: RingReceiver<OwnerRequest>,
    pub terminals_in: RingReceiver<Terminal>,
    pub peer_waker: Arc<Waker>,
}

/// Builds the full mesh: for every ordered pair of distinct shards, one requests ring and one
/// terminals ring. `wakers[i]` wakes shard `i`. Returns, for each shard, its links to every
/// other shard (its own slot is `None`).
pub fn build_mesh(wakers: &[Arc<Waker>], sizes: ring::RingSizes) -> Vec<Vec<Option<PeerLink>>> {
    let shards = wakers.len();
    let mut send_ends: HashMap<(usize, usize), SendEnds> = HashMap::new();
    let mut receive_ends: HashMap<(usize, usize), ReceiveEnds> = HashMap::new();
    for (from, sender_waker) in wakers.iter().enumerate() {
        for to in (0..shards).filter(|&to| to != from) {
            // The receiver wakes the *sender* when it frees space the sender waited for.
            let (requests_out, requests_in) = ring::ring(sizes, sender_waker.clone());
            let (terminals_out, terminals_in) = ring::ring(sizes, sender_waker.clone());
            send_ends.insert((from, to), (requests_out, terminals_out));
            receive_ends.insert((from, to), (requests_in, terminals_in));
        }
    }
    (0..shards)
        .map(|me| {
            (0..shards)
                .map(|peer| {
                    let (requests_out, terminals_out) = send_ends.remove(&(me, peer))?;
                    let (requests_in, terminals_in) = receive_ends.remove(&(peer, me))?;
                    Some(PeerLink {
                        peer: ShardId(peer as u16),
                        requests_out,
                        terminals_out,
                        requests_in,
                        terminals_in,
                        peer_waker: wakers[peer].clone(),
                    })
                })
                .collect()
        })
        .collect()
}

/// Which shards have a subscriber that went past the publisher stall watermark within the
/// last lease (`Shard::stall_lease`). A topic's owner learns which topic is pressed a ring
/// trip later (`OwnerRequest::Pressure`); meanwhile a publisher on a busy two-shard machine
/// can push megabytes through the rings. So the subscriber's shard also sets its bit at once,
/// and an owner holds every publisher whose message goes to a shard with its bit set, for
/// that first lease only; after it, only the publishers of the topics named by the ring hold.
#[derive(Debug, Default)]
pub struct PressureBoard(AtomicU64);

impl PressureBoard {
    pub fn set(&self, shard: ShardId) {
        self.0.fetch_or(shard.bit(), Ordering::Relaxed);
    }

    pub fn clear(&self, shard: ShardId) {
        self.0.fetch_and(!shard.bit(), Ordering::Relaxed);
    }

    /// Whether any shard in `mask` has its bit set.
    #[inline]
    pub fn any_of(&self, mask: u64) -> bool {
        self.0.load(Ordering::Relaxed) & mask != 0
    }
}

type SendEnds = (Outbox<OwnerRequest>, Outbox<Terminal>);
type ReceiveEnds = (RingReceiver<OwnerRequest>, RingReceiver<Terminal>);

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Poll, Token};

    #[test]
    fn every_ordered_pair_is_linked_both_ways() {
        let polls: Vec<Poll> = (0..3).map(|_| Poll::new().unwrap()).collect();
        let wakers: Vec<Arc<Waker>> = polls
            .iter()
            .map(|p| Arc::new(Waker::new(p.registry(), Token(0)).unwrap()))
            .collect();
        let sizes = ring::RingSizes {
            slots: 4,
            batch_max: 4,
            bytes_max: 1 << 20,
        };
        let mut links = build_mesh(&wakers, sizes);
        for (me, mine) in links.iter().enumerate() {
            for (peer, link) in mine.iter().enumerate() {
                assert_eq!(link.is_some(), me != peer);
            }
        }
        let link_0_to_2 = links[0][2].as_mut().unwrap();
        link_0_to_2.requests_out.push(OwnerRequest::Unsubscribe {
            topic: "t".into(),
            epoch: 7,
        });
        assert!(link_0_to_2.requests_out.flush());
        let batch = links[2][0]
            .as_ref()
            .unwrap()
            .requests_in
            .try_recv()
            .unwrap();
        assert!(
            matches!(&batch[..], [OwnerRequest::Unsubscribe { topic, epoch: 7 }] if &**topic == "t")
        );
        assert!(links[1][0]
            .as_ref()
            .unwrap()
            .requests_in
            .try_recv()
            .is_none());
    }
}
