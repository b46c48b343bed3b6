//! Everything that crosses between an in-process handle and its shard: the two bounded SPSC
//! rings (commands towards the shard, events towards the handle), the doorbell that tells a
//! shard which of its handles has work, and the signal that wakes a handle.
//!
//! Each direction is a bounded single-producer/single-consumer ring ([`super::spsc`]). A
//! handle is one connection, so one producer per command ring: that is why a thread that
//! publishes takes its own publisher instead of sharing one.
//!
//! Waking, both ways, costs nothing while the other side is busy:
//! - towards the shard: a handle rings the doorbell (one message on the shard's doorbell
//!   channel and one `mio::Waker` call) only when its connection is not already scheduled;
//!   the shard clears `scheduled` only once it found the command ring empty, and then looks
//!   once more, so a command pushed meanwhile is either seen or rings; while the shard keeps
//!   up with a publisher, the publisher never rings;
//! - towards the handle: the shard calls [`Signal::notify`] after handing over events; it
//!   wakes the handle (through a lock-free waker slot) only when the handle said it is going
//!   to sleep.

use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::thread::Thread;

use atomic_waker::AtomicWaker;

use crossbeam_channel::Sender;

use super::spsc::{self, Consumer, Producer, TrySendError};

use crate::client::ServerError;
use crate::message::Message;
use crate::protocol::native::AckKind;
use crate::protocol::subscribe_options::SubscribeOptions;
use crate::protocol::topic_options::TopicOptions;
use crate::shard::stats::ShardStats;
use crate::shard::topics::TopicSlot;

/// What a handle asks of its shard: the commands of the native protocol, already parsed and
/// checked on the handle's side (a publish arrives as its finished, unstamped frame).
#[derive(Debug)]
pub(crate) enum Command {
    Publish {
        request_id: u32,
        message: Message,
        quiet: bool,
        /// The topic is the one of the handle's previous publish (see
        /// [`ShardEnds::last_publish_slot`]).
        same_topic: bool,
    },
    Subscribe {
        request_id: u32,
        sub_id: u32,
        subject: Box<str>,
        /// Boxed, as the topic options below: a command is moved whole through the ring, and
        /// every publish would otherwise carry the room of the largest variant.
        options: Box<SubscribeOptions>,
    },
    Unsubscribe {
        request_id: u32,
        sub_id: u32,
    },
    /// Answered only when refused, as on the native port.
    Ack {
        request_id: u32,
        sub_id: u32,
        topic: Box<str>,
        seq: u64,
        kind: AckKind,
    },
    CreateTopic {
        request_id: u32,
        topic: Box<str>,
        options: Box<TopicOptions>,
    },
    DeleteTopic {
        request_id: u32,
        topic: Box<str>,
    },
    /// Every shard's counters and topics, gathered over the rings.
    Stats {
        request_id: u32,
    },
}

/// The OK of a request: a sequence number (8 bytes) or a topic position (16), as the native
/// protocol words them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReplyData {
    bytes: [u8; 16],
    len: u8,
}

impl ReplyData {
    pub fn new(data: &[u8]) -> ReplyData {
        let mut reply = ReplyData::default();
        let len = data.len().min(16);
        reply.bytes[..len].copy_from_slice(&data[..len]);
        reply.len = len as u8;
        reply
    }

    pub fn u64_at(&self, at: usize) -> Option<u64> {
        let bytes = self.bytes[..usize::from(self.len)].get(at..at + 8)?;
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }
}

/// What a shard tells a handle.
#[derive(Debug)]
pub(crate) enum Event {
    /// A delivery: the shared message itself, never encoded or copied.
    Message { sub_id: u32, message: Message },
    /// A replay reached back past what the topic retains (a handle holds one subscription
    /// that can replay, so no subscription id).
    Gap { missed: u64, resume_seq: u64 },
    /// Messages the `drop-oldest` policy dropped for the handle's subscription.
    Dropped { count: u64 },
    /// The broker ended the subscription (its topic was deleted).
    Ended { error: ServerError },
    Reply {
        request_id: u32,
        result: Result<ReplyData, ServerError>,
    },
    Stats {
        request_id: u32,
        parts: Vec<ShardStats>,
        shards: usize,
    },
    /// A connection-level error (slow consumer, shutdown): the connection closes after it.
    Notice(ServerError),
}

impl Event {
    /// Whether this is the answer to request `request_id` (its reply or its stats).
    pub fn answers(&self, request_id: u32) -> bool {
        match self {
            Event::Reply { request_id: id, .. } | Event::Stats { request_id: id, .. } => {
                *id == request_id
            }
            _ => false,
        }
    }
}

/// What rings a shard's doorbell.
pub(crate) enum Doorbell {
    /// A new handle: the shard makes it a connection.
    Attach(Box<ShardEnds>),
    /// The handle with this key has commands, freed room for events, or went away.
    Ready(u64),
}

/// A waker that unparks a thread: a blocking handle waits through the same slot as a task.
struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

thread_local! {
    /// This thread's unparking waker, made once per thread rather than once per sleep.
    static THREAD_WAKER: Waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
}

/// Runs `future` to its end on the calling thread, parked while it is pending: the blocking
/// calls that wait for an answer are their async twins driven here, woken by the shard
/// through the same waker slot a blocked receive uses.
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    loop {
        if let Some(output) = block_on_until(future.as_mut(), None) {
            return output;
        }
    }
}

/// [`block_on`] until `deadline` at most (`None` once it passed, the future dropped): the
/// thread parks no later than the deadline, so a blocking call's timeout needs no timer.
pub(crate) fn block_on_until<F: std::future::Future>(
    future: F,
    deadline: Option<std::time::Instant>,
) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    THREAD_WAKER.with(|waker| {
        let mut context = std::task::Context::from_waker(waker);
        loop {
            if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return Some(output);
            }
            let park = match deadline {
                None => super::PARK_BACKSTOP,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    left.min(super::PARK_BACKSTOP)
                }
            };
            std::thread::park_timeout(park);
        }
    })
}

/// Wakes a handle that waits for events or for room in its command ring.
#[derive(Default)]
pub(crate) struct Signal {
    sleeping: AtomicBool,
    /// Who waits: a task's waker, or [`ThreadWaker`]. Lock-free, so the shard's side never
    /// blocks on the handle's.
    waiter: AtomicWaker,
}

impl Signal {
    /// The shard's side, after it changed something the handle may wait for.
    pub fn notify(&self) {
        // Pairs with the fence in `prepare`: either the handle sees what was just handed
        // over, or this sees `sleeping`.
        fence(Ordering::SeqCst);
        if !self.sleeping.swap(false, Ordering::SeqCst) {
            return;
        }
        self.waiter.wake();
    }

    /// The handle's side, before it looks one last time and then parks or returns Pending.
    fn prepare(&self, waker: &Waker) {
        self.waiter.register(waker);
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    pub fn prepare_thread(&self) {
        THREAD_WAKER.with(|waker| self.prepare(waker));
    }

    pub fn prepare_task(&self, waker: &Waker) {
        self.prepare(waker);
    }

    /// The handle found what it waited for after `prepare`: no wake-up is needed.
    pub fn cancel(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }
}

/// What the handle and the shard share about one connection.
pub(crate) struct LinkState {
    /// Names the connection in doorbell rings (unique per bus).
    pub key: u64,
    /// A `Ready` for this handle is on its way to the shard, or the shard is draining.
    scheduled: AtomicBool,
    /// The handle was dropped: the shard closes the connection.
    pub handle_gone: AtomicBool,
    /// The shard dropped the connection (closed, cut, shut down): no more events come.
    pub shard_gone: AtomicBool,
    /// The handle found the command ring full and waits for room.
    pub command_room_wanted: AtomicBool,
    /// The shard found the event ring full: the handle rings once it has taken events.
    pub event_room_wanted: AtomicBool,
    pub to_handle: Signal,
    doorbell: Sender<Doorbell>,
    shard_waker: Arc<mio::Waker>,
    /// The shard's count of live handles, for `handles_per_shard_max`.
    handles_on_shard: Arc<AtomicUsize>,
}

impl LinkState {
    /// Tells the shard this handle has something for it, unless it knows already.
    pub fn ring(&self) {
        // Pairs with the fence in `unschedule`: either the shard, looking at the ring after
        // clearing `scheduled`, sees the command just pushed, or this sees `scheduled`
        // cleared. (The ring publishes with a release store, which alone would not order it
        // before this load.) Looked at before it is swapped: a busy shard is scheduled
        // already, and a load leaves its cache line shared.
        fence(Ordering::SeqCst);
        if self.scheduled.load(Ordering::Relaxed) || self.scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        // The channel has room for a ring from every handle the shard may hold, and a
        // send fails only once the shard has stopped, when nobody needs the ring.
        let _ = self.doorbell.send(Doorbell::Ready(self.key));
        let _ = self.shard_waker.wake();
    }

    /// Rings whether or not the connection is scheduled: for what the shard would not find
    /// by draining the command ring (room made for events, the handle gone). Each happens at
    /// most once per shard turn that needs it, so the doorbell keeps its bound.
    pub fn ring_now(&self) {
        let _ = self.doorbell.send(Doorbell::Ready(self.key));
        let _ = self.shard_waker.wake();
    }

    /// The shard's side: the command ring was found empty, so the next command rings. The
    /// caller looks at the ring once more afterwards.
    pub fn unschedule(&self) {
        self.scheduled.store(false, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }
}

/// The shard's ends of one handle's rings.
pub(crate) struct ShardEnds {
    pub state: Arc<LinkState>,
    pub commands: Consumer<Command>,
    events: Producer<Event>,
    /// A command postponed for lack of room (its handler changed nothing): it goes first.
    pub held: Option<Command>,
    /// A stats gather in progress for this handle: its request and the parts so far.
    pub gathering: Option<(u32, Vec<ShardStats>)>,
    /// An answer made outside the write buffer (stats), handed over before anything else.
    pub waiting: Option<Event>,
    /// Deliveries (and their frame bytes) handed over by [`ShardEnds::offer_now`] since the
    /// last flush, which counts them and wakes the handle once for all of them.
    pub handed_directly: (u64, u64),
    /// Where the topic of this handle's last publish was found in the owner's table, if
    /// here: a publish marked `same_topic` goes there without a lookup while the table
    /// `holds` it (a publisher mostly sends to one topic; this saves the name's hash and
    /// bucket search, about 100 instructions a message).
    pub last_publish_slot: Option<TopicSlot>,
}

impl ShardEnds {
    /// Hands a delivery of `bytes` frame bytes straight to the ring, skipping the outbound
    /// queue: for a connection with nothing queued ahead of it, whose order this keeps. The
    /// handle is woken by the next flush, once per loop turn however many were handed. A
    /// full ring gives it back, to be queued (the flush then asks for room).
    #[inline]
    pub fn offer_now(
        &mut self,
        sub_id: u32,
        message: Message,
        bytes: usize,
    ) -> Result<(), Message> {
        if self.waiting.is_some() {
            return Err(message);
        }
        match self
            .events
            .try_send_as(message, |message| Event::Message { sub_id, message })
        {
            // A gone handle: as `offer`, it counts as handed (the connection closes soon).
            Ok(()) | Err(TrySendError::Disconnected(_)) => {
                self.handed_directly.0 += 1;
                self.handed_directly.1 += bytes as u64;
                Ok(())
            }
            Err(TrySendError::Full(message)) => Err(message),
        }
    }

    /// Hands an event to the handle, or gives it back when the ring is full (after asking
    /// the handle to ring once it has made room).
    pub fn offer(&self, event: Event) -> Result<(), Event> {
        let event = match self.events.try_send(event) {
            Ok(()) => return Ok(()),
            // The handle is gone; the connection closes at its ring.
            Err(TrySendError::Disconnected(_)) => return Ok(()),
            Err(TrySendError::Full(event)) => event,
        };
        // Either this second look sees the room the handle made, or the handle, having made
        // it, sees the flag (both sides store, fence, then look).
        self.state.event_room_wanted.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        match self.events.try_send(event) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => Ok(()),
            Err(TrySendError::Full(event)) => Err(event),
        }
    }
}

impl Drop for ShardEnds {
    fn drop(&mut self) {
        self.state.shard_gone.store(true, Ordering::SeqCst);
        self.state.to_handle.notify();
    }
}

/// The handle's ends of its rings.
pub(crate) struct HandleEnds {
    pub state: Arc<LinkState>,
    pub commands: Producer<Command>,
    pub events: Consumer<Event>,
}

impl HandleEnds {
    /// Takes one event, and tells the shard when it had stopped for room. Only a ring seen
    /// full can have stopped it, so only then is the flag looked at (a fence per event would
    /// cost every delivery); one seen full late is caught by [`HandleEnds::ring_if_room_wanted`]
    /// before the handle sleeps.
    #[inline]
    pub fn try_event(&self) -> Option<Event> {
        // Full as last seen, not looked at afresh: a fresh look per event would pull the
        // shard's index across cores every time. A ring that filled since is caught at the
        // next look at the shard's index (once per batch it added), without a fence, which
        // lets a shard that stopped for room go on while the handle still has events to take
        // (rather than once it has taken them all), and as above before the handle sleeps.
        let taken = self.events.take()?;
        if taken.was_full {
            self.ring_if_room_wanted();
        } else if taken.looked {
            self.ring_if_room_wanted_seen();
        }
        Some(taken.item)
    }

    /// Rings the shard if it stopped for room in the event ring. Called after taking from a
    /// full ring, and before sleeping (so the handle never sleeps on a shard that waits for
    /// it).
    pub fn ring_if_room_wanted(&self) {
        // Pairs with `ShardEnds::offer`: either this sees the flag, or the shard's second
        // look sees the room.
        fence(Ordering::SeqCst);
        if self.state.event_room_wanted.load(Ordering::Relaxed)
            && self.state.event_room_wanted.swap(false, Ordering::SeqCst)
        {
            self.state.ring_now();
        }
    }

    /// [`HandleEnds::ring_if_room_wanted`] without the fence, for a handle that will look
    /// again rather than sleep: the flag, once the shard raised it, is seen by a later look.
    #[inline]
    pub fn ring_if_room_wanted_seen(&self) {
        if self.state.event_room_wanted.load(Ordering::Relaxed)
            && self.state.event_room_wanted.swap(false, Ordering::SeqCst)
        {
            self.state.ring_now();
        }
    }

    /// Whether the shard let go of this connection and every event it sent was taken.
    pub fn is_closed(&self) -> bool {
        self.state.shard_gone.load(Ordering::SeqCst) && self.events.is_empty()
    }
}

impl Drop for HandleEnds {
    fn drop(&mut self) {
        self.state.handle_gone.store(true, Ordering::SeqCst);
        self.state.handles_on_shard.fetch_sub(1, Ordering::AcqRel);
        self.state.ring_now();
    }
}

/// Ring sizes of one link.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LinkSizes {
    pub command_slots: usize,
    pub event_slots: usize,
}

/// Makes both ends of a new link and asks the shard to attach it. The caller has counted the
/// handle in `handles_on_shard`.
pub(crate) fn attach(
    key: u64,
    sizes: LinkSizes,
    (doorbell, shard_waker, handles_on_shard): (
        Sender<Doorbell>,
        Arc<mio::Waker>,
        Arc<AtomicUsize>,
    ),
) -> Option<HandleEnds> {
    let (command_tx, command_rx) = spsc::ring(sizes.command_slots.max(1));
    let (event_tx, event_rx) = spsc::ring(sizes.event_slots.max(1));
    let state = Arc::new(LinkState {
        key,
        scheduled: AtomicBool::new(false),
        handle_gone: AtomicBool::new(false),
        shard_gone: AtomicBool::new(false),
        command_room_wanted: AtomicBool::new(false),
        event_room_wanted: AtomicBool::new(false),
        to_handle: Signal::default(),
        doorbell: doorbell.clone(),
        shard_waker: shard_waker.clone(),
        handles_on_shard,
    });
    let shard_ends = ShardEnds {
        state: state.clone(),
        commands: command_rx,
        events: event_tx,
        held: None,
        gathering: None,
        waiting: None,
        handed_directly: (0, 0),
        last_publish_slot: None,
    };
    let handle = HandleEnds {
        state,
        commands: command_tx,
        events: event_rx,
    };
    doorbell.send(Doorbell::Attach(Box::new(shard_ends))).ok()?;
    let _ = shard_waker.wake();
    Some(handle)
}

/// Both ends of one link for unit tests, with the shard's doorbell and poll.
#[cfg(test)]
pub(crate) fn test_pair(
    sizes: LinkSizes,
) -> (
    HandleEnds,
    Box<ShardEnds>,
    crossbeam_channel::Receiver<Doorbell>,
    mio::Poll,
) {
    let poll = mio::Poll::new().expect("poll");
    let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).expect("waker"));
    let (doorbell, rings) = crossbeam_channel::bounded(16);
    let handle = attach(7, sizes, (doorbell, waker, Arc::new(AtomicUsize::new(1)))).unwrap();
    let Ok(Doorbell::Attach(shard)) = rings.try_recv() else {
        panic!("the attach rings first");
    };
    (handle, shard, rings, poll)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SIZES: LinkSizes = LinkSizes {
        command_slots: 2,
        event_slots: 2,
    };

    #[test]
    fn an_event_slot_stays_small() {
        // tuning.md prices an event slot at 48 bytes.
        assert!(
            std::mem::size_of::<Event>() <= 48,
            "{}",
            std::mem::size_of::<Event>()
        );
    }

    #[test]
    fn reply_data_reads_the_sequence_and_the_position() {
        let mut position = [0u8; 16];
        position[..8].copy_from_slice(&5u64.to_be_bytes());
        position[8..].copy_from_slice(&9u64.to_be_bytes());
        let reply = ReplyData::new(&position);
        assert_eq!((reply.u64_at(0), reply.u64_at(8)), (Some(5), Some(9)));
        assert_eq!(ReplyData::new(&3u64.to_be_bytes()).u64_at(8), None);
        assert_eq!(ReplyData::new(&[]).u64_at(0), None);
    }

    #[test]
    fn a_command_rings_once_until_the_shard_found_the_ring_empty() {
        let (handle, shard, rings, _poll) = test_pair(SIZES);
        handle.state.ring();
        handle.state.ring();
        assert!(matches!(rings.try_recv(), Ok(Doorbell::Ready(7))));
        assert!(rings.try_recv().is_err(), "scheduled: no second ring");
        shard.state.unschedule();
        handle.state.ring();
        assert!(matches!(rings.try_recv(), Ok(Doorbell::Ready(7))));
    }

    #[test]
    fn a_full_event_ring_gives_the_event_back_and_the_handle_rings_once_it_made_room() {
        let (handle, shard, rings, _poll) = test_pair(SIZES);
        shard.state.unschedule();
        for sub_id in 0..2 {
            assert!(shard.offer(Event::Dropped { count: sub_id }).is_ok());
        }
        assert!(matches!(
            shard.offer(Event::Dropped { count: 9 }),
            Err(Event::Dropped { count: 9 })
        ));
        assert!(rings.try_recv().is_err());
        assert!(matches!(
            handle.try_event(),
            Some(Event::Dropped { count: 0 })
        ));
        assert!(matches!(rings.try_recv(), Ok(Doorbell::Ready(7))));
        assert!(handle.try_event().is_some());
        assert!(rings.try_recv().is_err(), "one ring per full ring");
    }

    #[test]
    fn notify_unparks_a_handle_that_prepared_and_the_shard_going_closes_it() {
        let (handle, shard, _rings, _poll) = test_pair(SIZES);
        let state = handle.state.clone();
        let waiting = std::thread::spawn(move || {
            state.to_handle.prepare_thread();
            while !state.shard_gone.load(Ordering::SeqCst) {
                std::thread::park_timeout(Duration::from_secs(5));
            }
            handle.is_closed()
        });
        std::thread::sleep(Duration::from_millis(20));
        drop(shard);
        assert!(waiting.join().unwrap(), "closed once the shard let go");
    }

    #[test]
    fn a_dropped_handle_frees_its_place_and_rings() {
        let (handle, shard, rings, _poll) = test_pair(SIZES);
        let count = handle.state.handles_on_shard.clone();
        drop(handle);
        assert_eq!(count.load(Ordering::SeqCst), 0);
        assert!(shard.state.handle_gone.load(Ordering::SeqCst));
        assert!(matches!(rings.try_recv(), Ok(Doorbell::Ready(7))));
    }
}
