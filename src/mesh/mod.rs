//! Everything that crosses between shards: the bounded SPSC rings, the closed set of messages
//! they carry, and the topic → owner route.
//!
//! Architecture invariant: shards share nothing mutable. The only ways one shard affects
//! another are a message in a ring and a `mio::Waker` call.

pub mod message;
pub mod ring;

use std::collections::HashMap;
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
pub fn build_mesh(
    wakers: &[Arc<Waker>],
    ring_slots: usize,
    ring_batch_max: usize,
) -> Vec<Vec<Option<PeerLink>>> {
    let shards = wakers.len();
    let mut send_ends: HashMap<(usize, usize), SendEnds> = HashMap::new();
    let mut receive_ends: HashMap<(usize, usize), ReceiveEnds> = HashMap::new();
    for (from, sender_waker) in wakers.iter().enumerate() {
        for to in (0..shards).filter(|&to| to != from) {
            // The receiver wakes the *sender* when it frees space the sender waited for.
            let (requests_out, requests_in) =
                ring::ring(ring_slots, ring_batch_max, sender_waker.clone());
            let (terminals_out, terminals_in) =
                ring::ring(ring_slots, ring_batch_max, sender_waker.clone());
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
        let mut links = build_mesh(&wakers, 4, 4);
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
