//! The bounded single-producer/single-consumer ring under each in-process link (commands one
//! way, events the other).
//!
//! Why not a `crossbeam-channel` bounded channel, as between shards: those are built for many
//! producers and many consumers, so every send and receive pays a compare-and-swap on a shared
//! index and a look at the channel's blocking wakers, which this link never uses (it has its
//! own doorbell and [`super::link::Signal`]). An in-process delivery is nothing but a pointer
//! handed from the shard to a handle, so those costs were a third of a fan-out delivery's
//! instructions. Here each side owns its index, publishes it with one release store, and keeps
//! a copy of the other side's index that it refreshes only when the ring looks full (producer)
//! or empty (consumer): a push or a take touches the other side's cache line once per lap, not
//! once per item.
//!
//! Architecture invariant: exactly one [`Producer`] and one [`Consumer`] per ring, each owned
//! by one thread at a time (they are `Send`, not `Sync`), which is what makes the plain loads
//! and stores of the slots sound. A ring holds exactly `capacity` items, as the bound the
//! caller configured says (no rounding to a power of two): positions run over `0..2·capacity`
//! so that a full ring and an empty one differ.
//!
//! The ring carries no wake-up of its own; its users pair a store to their flags with the
//! ring's index stores through `SeqCst` fences (see `link.rs`).

use std::cell::{Cell, UnsafeCell};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Why an item was not pushed; it comes back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TrySendError<T> {
    Full(T),
    /// The consumer is gone: nobody will take it.
    Disconnected(T),
}

/// An item taken, with what the consumer knew of the ring when it took it.
pub(crate) struct Taken<T> {
    pub item: T,
    /// The ring was full as last seen: the producer may have stopped for room.
    pub was_full: bool,
    /// The producer's index was looked at for this take (once per batch the producer added).
    pub looked: bool,
}

/// Keeps each index on its own cache line, so the producer's stores do not evict the
/// consumer's index and the other way round.
#[repr(align(128))]
struct Padded<T>(T);

struct Ring<T> {
    /// Next position the consumer takes, in `0..2·capacity`.
    head: Padded<AtomicUsize>,
    /// Next position the producer fills, in `0..2·capacity`.
    tail: Padded<AtomicUsize>,
    consumer_gone: AtomicBool,
    capacity: usize,
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

// The slots are written only by the producer between its loads of `head` and its release of
// `tail`, and read only by the consumer between its acquire of `tail` and its release of
// `head`: the one-producer/one-consumer invariant makes those accesses exclusive.
unsafe impl<T: Send> Sync for Ring<T> {}
unsafe impl<T: Send> Send for Ring<T> {}

impl<T> Ring<T> {
    /// Items between `head` and `tail`.
    #[inline]
    fn len(&self, head: usize, tail: usize) -> usize {
        if tail >= head {
            tail - head
        } else {
            tail + 2 * self.capacity - head
        }
    }

    #[inline]
    fn next(&self, position: usize) -> usize {
        if position + 1 == 2 * self.capacity {
            0
        } else {
            position + 1
        }
    }

    #[inline]
    fn slot(&self, position: usize) -> *mut MaybeUninit<T> {
        let index = if position >= self.capacity {
            position - self.capacity
        } else {
            position
        };
        self.slots[index].get()
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // Both ends are gone (this is the last reference): drop what is still in the ring.
        let mut head = *self.head.0.get_mut();
        let tail = *self.tail.0.get_mut();
        while head != tail {
            // SAFETY: positions from head up to tail hold items pushed and never taken.
            unsafe { (*self.slot(head)).assume_init_drop() };
            head = self.next(head);
        }
    }
}

/// The pushing end.
pub(crate) struct Producer<T> {
    ring: Arc<Ring<T>>,
    /// This side's `tail` (only it stores there).
    tail: Cell<usize>,
    /// The consumer's `head` as last seen: the ring has at least this much room.
    head_seen: Cell<usize>,
}

/// The taking end. Dropping it makes later pushes fail as disconnected.
pub(crate) struct Consumer<T> {
    ring: Arc<Ring<T>>,
    head: Cell<usize>,
    /// The producer's `tail` as last seen: at least this much is in the ring.
    tail_seen: Cell<usize>,
}

// Each end is used by one thread at a time (the `Cell`s make them `!Sync`); moving one to
// another thread is what `Send` allows.
unsafe impl<T: Send> Send for Producer<T> {}
unsafe impl<T: Send> Send for Consumer<T> {}

/// A ring of `capacity` items (at least one).
pub(crate) fn ring<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let capacity = capacity.max(1);
    let ring = Arc::new(Ring {
        head: Padded(AtomicUsize::new(0)),
        tail: Padded(AtomicUsize::new(0)),
        consumer_gone: AtomicBool::new(false),
        capacity,
        slots: (0..capacity)
            .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
            .collect(),
    });
    (
        Producer {
            ring: ring.clone(),
            tail: Cell::new(0),
            head_seen: Cell::new(0),
        },
        Consumer {
            ring,
            head: Cell::new(0),
            tail_seen: Cell::new(0),
        },
    )
}

impl<T> Producer<T> {
    /// Pushes an item, or gives it back when the ring is full or the consumer is gone.
    #[inline]
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.try_send_as(item, |item| item)
    }

    /// Pushes `into(part)`, or gives `part` itself back when the ring is full or the
    /// consumer is gone: a caller that holds only what goes into the item gets that back,
    /// not an item it would have to take apart again.
    #[inline]
    pub fn try_send_as<P>(
        &self,
        part: P,
        into: impl FnOnce(P) -> T,
    ) -> Result<(), TrySendError<P>> {
        let ring = &*self.ring;
        if ring.consumer_gone.load(Ordering::Relaxed) {
            return Err(TrySendError::Disconnected(part));
        }
        let tail = self.tail.get();
        if ring.len(self.head_seen.get(), tail) == ring.capacity {
            self.head_seen.set(ring.head.0.load(Ordering::Acquire));
            if ring.len(self.head_seen.get(), tail) == ring.capacity {
                return Err(TrySendError::Full(part));
            }
        }
        // SAFETY: the slot at `tail` is outside head..tail, so the consumer does not read it
        // (its previous item, if any, was taken before `head` moved past it, per the acquire).
        unsafe { (*ring.slot(tail)).write(into(part)) };
        let next = ring.next(tail);
        self.tail.set(next);
        ring.tail.0.store(next, Ordering::Release);
        Ok(())
    }

    /// Whether a push now would find the ring full.
    pub fn is_full(&self) -> bool {
        let ring = &*self.ring;
        self.head_seen.set(ring.head.0.load(Ordering::Acquire));
        ring.len(self.head_seen.get(), self.tail.get()) == ring.capacity
    }
}

impl<T> Consumer<T> {
    /// Takes the oldest item, if there is one.
    #[inline]
    pub fn try_recv(&self) -> Option<T> {
        self.take().map(|taken| taken.item)
    }

    /// Takes the oldest item, and says what this side knows of the ring's fullness (it looks
    /// at the producer's index only when the ring looked empty).
    #[inline]
    pub fn take(&self) -> Option<Taken<T>> {
        let ring = &*self.ring;
        let head = self.head.get();
        let mut looked = false;
        if head == self.tail_seen.get() {
            self.tail_seen.set(ring.tail.0.load(Ordering::Acquire));
            looked = true;
            if head == self.tail_seen.get() {
                return None;
            }
        }
        let was_full = ring.len(head, self.tail_seen.get()) == ring.capacity;
        // SAFETY: `head` is inside head..tail, written by the producer before its release
        // of `tail`, which the acquire above (now or earlier) saw.
        let item = unsafe { (*ring.slot(head)).assume_init_read() };
        let next = ring.next(head);
        self.head.set(next);
        ring.head.0.store(next, Ordering::Release);
        Some(Taken {
            item,
            was_full,
            looked,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.tail_seen.set(self.ring.tail.0.load(Ordering::Acquire));
        self.head.get() == self.tail_seen.get()
    }

    #[cfg(test)]
    pub fn is_full(&self) -> bool {
        self.tail_seen.set(self.ring.tail.0.load(Ordering::Acquire));
        self.ring.len(self.head.get(), self.tail_seen.get()) == self.ring.capacity
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.ring.consumer_gone.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_exactly_its_capacity_in_order_across_laps() {
        let (tx, rx) = ring::<u32>(3);
        for lap in 0..5 {
            for i in 0..3 {
                assert_eq!(tx.try_send(lap * 10 + i), Ok(()));
            }
            assert!(tx.is_full() && rx.is_full());
            assert_eq!(tx.try_send(99), Err(TrySendError::Full(99)));
            assert_eq!(rx.try_recv(), Some(lap * 10));
            assert!(!tx.is_full());
            assert_eq!(tx.try_send(lap * 10 + 3), Ok(()));
            for i in 1..4 {
                assert_eq!(rx.try_recv(), Some(lap * 10 + i));
            }
            assert!(rx.is_empty());
            assert_eq!(rx.try_recv(), None);
        }
    }

    #[test]
    fn a_refused_part_comes_back_unwrapped_and_a_taken_one_wrapped() {
        let (tx, rx) = ring::<(u32, String)>(1);
        assert_eq!(
            tx.try_send_as("first".to_string(), |part| (1, part)),
            Ok(())
        );
        match tx.try_send_as("second".to_string(), |part| (2, part)) {
            Err(TrySendError::Full(part)) => assert_eq!(part, "second"),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.try_recv(), Some((1, "first".to_string())));
        drop(rx);
        match tx.try_send_as("third".to_string(), |part| (3, part)) {
            Err(TrySendError::Disconnected(part)) => assert_eq!(part, "third"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_gone_consumer_refuses_and_what_was_left_is_dropped() {
        let item = Arc::new(());
        let (tx, rx) = ring::<Arc<()>>(4);
        tx.try_send(item.clone()).unwrap();
        tx.try_send(item.clone()).unwrap();
        drop(rx);
        assert!(matches!(
            tx.try_send(item.clone()),
            Err(TrySendError::Disconnected(_))
        ));
        assert_eq!(
            Arc::strong_count(&item),
            3,
            "two in the ring, none leaked yet"
        );
        drop(tx);
        assert_eq!(Arc::strong_count(&item), 1, "the ring dropped what it held");
    }

    #[test]
    fn two_threads_pass_every_item_once_in_order() {
        const ITEMS: u64 = 200_000;
        let (tx, rx) = ring::<Box<u64>>(7);
        let producer = std::thread::spawn(move || {
            for i in 0..ITEMS {
                let mut item = Box::new(i);
                loop {
                    match tx.try_send(item) {
                        Ok(()) => break,
                        Err(TrySendError::Full(back)) => {
                            item = back;
                            std::thread::yield_now();
                        }
                        Err(TrySendError::Disconnected(_)) => panic!("consumer alive"),
                    }
                }
            }
        });
        let mut expected = 0;
        while expected < ITEMS {
            match rx.try_recv() {
                Some(item) => {
                    assert_eq!(*item, expected);
                    expected += 1;
                }
                None => std::thread::yield_now(),
            }
        }
        producer.join().unwrap();
        assert!(rx.is_empty());
    }
}
