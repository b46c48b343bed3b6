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

use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::Waker;

/// The producing end, owned by the sending shard.
pub struct Outbox<T> {
    staged: Vec<T>,
    batch_max: usize,
    sender: Sender<Vec<T>>,
    space_wanted: Arc<AtomicBool>,
    handed_over_since_wake: bool,
}

/// The consuming end, owned by the receiving shard.
pub struct RingReceiver<T> {
    receiver: Receiver<Vec<T>>,
    space_wanted: Arc<AtomicBool>,
    sender_waker: Arc<Waker>,
}

/// A ring of `slots` batches of up to `batch_max` messages; `sender_waker` wakes the producer.
pub fn ring<T>(
    slots: usize,
    batch_max: usize,
    sender_waker: Arc<Waker>,
) -> (Outbox<T>, RingReceiver<T>) {
    let (sender, receiver) = crossbeam_channel::bounded(slots);
    let space_wanted = Arc::new(AtomicBool::new(false));
    (
        Outbox {
            staged: Vec::with_capacity(batch_max),
            batch_max,
            sender,
            space_wanted: space_wanted.clone(),
            handed_over_since_wake: false,
        },
        RingReceiver {
            receiver,
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

    pub fn staged_len(&self) -> usize {
        self.staged.len()
    }

    /// Hands the staged batch to the ring. Returns `false` when the ring is full and the batch
    /// is still staged; the consumer wakes this shard once it has drained.
    pub fn flush(&mut self) -> bool {
        if self.staged.is_empty() {
            return true;
        }
        let batch = mem::take(&mut self.staged);
        let batch = match self.sender.try_send(batch) {
            Ok(()) => return self.handed_over(),
            Err(TrySendError::Disconnected(_)) => return self.peer_gone(),
            Err(TrySendError::Full(batch)) => batch,
        };
        self.space_wanted.store(true, Ordering::SeqCst);
        match self.sender.try_send(batch) {
            Ok(()) => self.handed_over(),
            Err(TrySendError::Disconnected(_)) => self.peer_gone(),
            Err(TrySendError::Full(batch)) => {
                self.staged = batch;
                false
            }
        }
    }

    fn handed_over(&mut self) -> bool {
        self.staged = Vec::with_capacity(self.batch_max);
        self.handed_over_since_wake = true;
        true
    }

    /// The peer shard has exited (only during shutdown): nothing will read this ring again.
    fn peer_gone(&mut self) -> bool {
        self.staged = Vec::new();
        true
    }

    /// True once after any batch was handed over: the caller wakes the peer once per turn.
    pub fn take_wake_needed(&mut self) -> bool {
        mem::take(&mut self.handed_over_since_wake)
    }
}

impl<T> RingReceiver<T> {
    pub fn try_recv(&self) -> Option<Vec<T>> {
        self.receiver.try_recv().ok()
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

    fn waker() -> (Poll, Arc<Waker>) {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        (poll, waker)
    }

    #[test]
    fn batches_arrive_whole_and_in_order() {
        let (_poll, waker) = waker();
        let (mut outbox, receiver) = ring::<u32>(4, 3, waker);
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
        let (mut outbox, receiver) = ring::<u32>(1, 2, waker);
        outbox.push(1);
        assert!(outbox.flush());
        outbox.push(2);
        assert!(!outbox.flush(), "one slot, already taken");
        assert_eq!(outbox.staged_len(), 1);

        assert_eq!(receiver.try_recv(), Some(vec![1]));
        receiver.notify_space_freed();
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert!(!events.is_empty(), "producer was woken");

        assert!(outbox.flush());
        assert_eq!(receiver.try_recv(), Some(vec![2]));
    }

    #[test]
    fn a_vanished_consumer_does_not_wedge_the_producer() {
        let (_poll, waker) = waker();
        let (mut outbox, receiver) = ring::<u32>(1, 2, waker);
        drop(receiver);
        outbox.push(1);
        assert!(outbox.flush());
        assert_eq!(outbox.staged_len(), 0);
    }
}
