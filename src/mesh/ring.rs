//! A bounded single-producer/single-consumer ring between two shards, carrying batches.
//!
//! Built on a `crossbeam-channel` bounded channel with exactly one producer and one consumer.
//! A slot holds a whole batch, so one atomic handoff and one wake-up cover up to
//! `ring_batch_max` messages. The producer stages messages in an [`Outbox`] during a loop turn
//! and hands the batch over at the end of the turn (or as soon as it is full).
//!
//! A full ring never blocks the producer: [`Outbox::flush`] reports it, the producer stops
//! taking the kind of work that would add to it, and raises `space_wanted`. The consumer,
//! after draining, clears the flag and wakes the producer, so nobody polls for space.
//! The producer re-tries once after raising the flag, which closes the race where the consumer
//! drained between the failed send and the flag store.
//!
//! A ring is also bounded in bytes: the payload bytes of the batches handed over and not yet
//! taken (as the producer weighs them, [`Outbox::push_weighted`]) stay under `bytes_max`,
//! counted per batch on one shared atomic. Slots alone would let a shard run 1024 batches
//! of 256 messages ahead of a slower peer, and those all land in its subscribers' queues in
//! one turn, past what the publisher stall can hold back (see `Shard::stall_lease`).

use std::mem;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::Waker;

/// The producing end, owned by the sending shard.
pub struct Outbox<T> {
    staged: Vec<T>,
    /// The weight of `staged` (see [`Outbox::push_weighted`]).
    staged_bytes: usize,
    batch_max: usize,
    bytes_max: usize,
    sender: Sender<(Vec<T>, usize)>,
    /// Bytes handed over and not yet taken by the consumer.
    in_flight: Arc<AtomicUsize>,
    space_wanted: Arc<AtomicBool>,
    handed_over_since_wake: bool,
}

/// The consuming end, owned by the receiving shard.
pub struct RingReceiver<T> {
    receiver: Receiver<(Vec<T>, usize)>,
    in_flight: Arc<AtomicUsize>,
    space_wanted: Arc<AtomicBool>,
    sender_waker: Arc<Waker>,
}

/// The sizes of one ring: `slots` batches of up to `batch_max` messages, and at most
/// `bytes_max` weighed bytes in flight (a single batch heavier than that still passes, alone).
#[derive(Clone, Copy, Debug)]
pub struct RingSizes {
    pub slots: usize,
    pub batch_max: usize,
    pub bytes_max: usize,
}

/// A ring of the given sizes; `sender_waker` wakes the producer.
pub fn ring<T>(sizes: RingSizes, sender_waker: Arc<Waker>) -> (Outbox<T>, RingReceiver<T>) {
    let (sender, receiver) = crossbeam_channel::bounded(sizes.slots);
    let space_wanted = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicUsize::new(0));
    (
        Outbox {
            staged: Vec::with_capacity(sizes.batch_max),
            staged_bytes: 0,
            batch_max: sizes.batch_max,
            bytes_max: sizes.bytes_max,
            sender,
            in_flight: in_flight.clone(),
            space_wanted: space_wanted.clone(),
            handed_over_since_wake: false,
        },
        RingReceiver {
            receiver,
            in_flight,
            space_wanted,
            sender_waker,
        },
    )
}

impl<T> Outbox<T> {
    /// Whether one more message fits in this turn's batch. Work that would add to a full
    /// outbox waits (its connection stops being read) until a flush succeeds.
    pub fn has_room(&self) -> bool {
        self.staged.len() < self.batch_max
    }

    /// Whether one more message fits, handing the staged batch to the ring first if it must.
    pub fn make_room(&mut self) -> bool {
        self.has_room() || self.flush()
    }

    /// Stages a message. Callers check [`Outbox::has_room`] first for work they can postpone;
    /// clean-up work that cannot wait (interest removal when a connection dies) may go past
    /// `batch_max`; it is bounded by the subscriptions that connection held.
    pub fn push(&mut self, message: T) {
        self.staged.push(message);
    }

    /// Stages a message that carries `bytes` of payload towards the ring's byte bound.
    pub fn push_weighted(&mut self, message: T, bytes: usize) {
        self.staged.push(message);
        self.staged_bytes += bytes;
    }

    pub fn staged_len(&self) -> usize {
        self.staged.len()
    }

    /// Hands the staged batch to the ring. Returns `false` when the ring is full and the batch
    /// is still staged; the consumer wakes this shard once it has drained.
    pub fn flush(&mut self) -> bool {
        if self.staged.is_empty() {
            return true;
        }
        if self.over_bytes() {
            self.space_wanted.store(true, Ordering::SeqCst);
            // The consumer may have taken everything between the check and the flag.
            if self.over_bytes() {
                return false;
            }
        }
        let batch = (mem::take(&mut self.staged), self.staged_bytes);
        // Counted before the handoff, so the consumer's subtraction never comes first.
        self.in_flight.fetch_add(batch.1, Ordering::SeqCst);
        let batch = match self.sender.try_send(batch) {
            Ok(()) => return self.handed_over(),
            Err(TrySendError::Disconnected(_)) => return self.peer_gone(),
            Err(TrySendError::Full(batch)) => batch,
        };
        self.space_wanted.store(true, Ordering::SeqCst);
        match self.sender.try_send(batch) {
            Ok(()) => self.handed_over(),
            Err(TrySendError::Disconnected(_)) => self.peer_gone(),
            Err(TrySendError::Full((batch, bytes))) => {
                self.in_flight.fetch_sub(bytes, Ordering::SeqCst);
                self.staged = batch;
                false
            }
        }
    }

    /// Weighed bytes in the ring are at the bound; anything staged waits. An empty ring
    /// takes any batch, so one heavier than the bound still goes.
    fn over_bytes(&self) -> bool {
        let in_flight = self.in_flight.load(Ordering::SeqCst);
        in_flight > 0 && in_flight + self.staged_bytes > self.bytes_max
    }

    fn handed_over(&mut self) -> bool {
        self.staged = Vec::with_capacity(self.batch_max);
        self.staged_bytes = 0;
        self.handed_over_since_wake = true;
        true
    }

    /// The peer shard has exited (only during shutdown): nothing will read this ring again.
    fn peer_gone(&mut self) -> bool {
        self.staged = Vec::new();
        self.staged_bytes = 0;
        true
    }

    /// True once after any batch was handed over: the caller wakes the peer once per turn.
    pub fn take_wake_needed(&mut self) -> bool {
        mem::take(&mut self.handed_over_since_wake)
    }
}

impl<T> RingReceiver<T> {
    pub fn try_recv(&self) -> Option<Vec<T>> {
        let (batch, bytes) = self.receiver.try_recv().ok()?;
        if bytes > 0 {
            self.in_flight.fetch_sub(bytes, Ordering::SeqCst);
        }
        Some(batch)
    }

    /// Called after draining: wakes the producer if it is waiting for space.
    pub fn notify_space_freed(&self) {
        if self.space_wanted.swap(false, Ordering::SeqCst) {
            // A failed wake means the producer's poll is gone (it is exiting); nothing waits.
            let _ = self.sender_waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll, Token};
    use std::time::Duration;

    fn sizes(slots: usize, batch_max: usize) -> RingSizes {
        RingSizes {
            slots,
            batch_max,
            bytes_max: usize::MAX,
        }
    }

    #[test]
    fn bytes_in_flight_bound_the_ring_and_the_consumer_frees_them() {
        let (mut poll, waker) = waker();
        let (mut outbox, receiver) = ring::<u32>(
            RingSizes {
                slots: 8,
                batch_max: 4,
                bytes_max: 100,
            },
            waker,
        );
        // A batch heavier than the bound passes into an empty ring.
        outbox.push_weighted(1, 150);
        assert!(outbox.flush());
        outbox.push_weighted(2, 10);
        assert!(!outbox.flush(), "150 bytes in flight already");
        assert_eq!(receiver.try_recv(), Some(vec![1]));
        receiver.notify_space_freed();
        assert_producer_woken(&mut poll);
        assert!(outbox.flush());
        outbox.push_weighted(3, 60);
        assert!(outbox.flush(), "70 bytes in flight");
        outbox.push_weighted(4, 40);
        assert!(!outbox.flush(), "would make 110");
        assert_eq!(receiver.try_recv(), Some(vec![2]));
        assert!(outbox.flush(), "100 exactly");
        assert_eq!(receiver.try_recv(), Some(vec![3]));
        assert_eq!(receiver.try_recv(), Some(vec![4]));
        assert_eq!(receiver.try_recv(), None);
        // Exactly at the bound, a message that weighs nothing still goes.
        outbox.push_weighted(5, 100);
        assert!(outbox.flush());
        outbox.push(6);
        assert!(outbox.flush());
    }

    /// After the consumer freed space the producer wanted, the producer's poll wakes.
    fn assert_producer_woken(poll: &mut Poll) {
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert!(!events.is_empty(), "producer was woken");
    }

    fn waker() -> (Poll, Arc<Waker>) {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        (poll, waker)
    }

    #[test]
    fn batches_arrive_whole_and_in_order() {
        let (_poll, waker) = waker();
        let (mut outbox, receiver) = ring::<u32>(sizes(4, 3), waker);
        for i in 0..3 {
            assert!(outbox.has_room());
            outbox.push(i);
        }
        assert!(!outbox.has_room());
        assert!(outbox.flush());
        assert!(outbox.take_wake_needed());
        assert!(!outbox.take_wake_needed());
        outbox.push(3);
        assert!(outbox.flush());
        assert_eq!(receiver.try_recv(), Some(vec![0, 1, 2]));
        assert_eq!(receiver.try_recv(), Some(vec![3]));
        assert_eq!(receiver.try_recv(), None);
    }

    #[test]
    fn a_full_ring_keeps_the_batch_and_the_consumer_wakes_the_producer() {
        let (mut poll, waker) = waker();
        let (mut outbox, receiver) = ring::<u32>(sizes(1, 2), waker);
        outbox.push(1);
        assert!(outbox.flush());
        outbox.push(2);
        assert!(!outbox.flush(), "one slot, already taken");
        assert_eq!(outbox.staged_len(), 1);

        assert_eq!(receiver.try_recv(), Some(vec![1]));
        receiver.notify_space_freed();
        assert_producer_woken(&mut poll);

        assert!(outbox.flush());
        assert_eq!(receiver.try_recv(), Some(vec![2]));
    }

    #[test]
    fn a_vanished_consumer_does_not_wedge_the_producer() {
        let (_poll, waker) = waker();
        let (mut outbox, receiver) = ring::<u32>(sizes(1, 2), waker);
        drop(receiver);
        outbox.push(1);
        assert!(outbox.flush());
        assert_eq!(outbox.staged_len(), 0);
    }
}
