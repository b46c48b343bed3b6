//! The shared frame behind a [`super::Message`]: one allocation holding a reference count and
//! then the frame's bytes, like `triomphe::Arc<[u8]>` (no weak count), with two things no
//! reference-counting library offers, both for a frame only this thread holds:
//! - [`Frame::clone_while_unique`]: a second reference by a plain store, not an atomic
//!   read-modify-write (the owner keeps a reference in the topic's replay ring while the
//!   message is still only its own);
//! - [`Frame::release`]: the last reference, seen by a load, frees without one (the replay
//!   ring evicting a message every receiver has written out already). Only there: a plain
//!   drop is a decrement as usual, since a load first would cost a second cache-line transfer
//!   where other threads are taking and dropping references to the same frame (fan-out to
//!   in-process subscribers fell by a sixth in one set of runs with it).
//!
//! Each locked instruction waits for every store before it to drain; a publish made three
//! (the replay's reference, the delivery's release, the eviction's), and taking the first and
//! last off lifted delivered msgs/s by about 6% in fan-in and 1:1 (interleaved runs,
//! tuning.md).
//!
//! Sound because a reference is needed to make another: with `&mut self` and a count of one,
//! no other thread holds this frame or can come to hold it, so no other thread touches the
//! count until this thread hands a reference over, which it does through a channel or ring
//! whose release and acquire order the plain store before the other thread's first look.
//!
//! A freed frame's block is not handed back to the allocator at once: a shard's thread keeps
//! the last one it freed (up to [`SPARE_BYTES_MAX`]) for its next frame of the same rounded
//! size ([`SpareBlocks`]). A busy topic's replay ring frees its oldest message on every
//! publish, and that block's lines were just fetched to free it; the allocator would hand
//! out a block last touched far longer ago, and with a thousand busy topics writing the new
//! frame then waited on memory. This holds where the topic's owner is also the shard that
//! read the publish (one shard, or a publisher on the owner's shard); elsewhere the spare
//! serves the owner's own publishers. Reusing the block lifted many topics' delivered msgs/s
//! by about a tenth on one shard, and costs fewer instructions than the free and the
//! allocation it replaces (1:1 1,198 → 1,183 a message, callgrind; tuning.md).

use std::alloc::{self, Layout};
use std::cell::Cell;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicUsize, Ordering};

/// Bytes ahead of the frame: the reference count.
const HEADER_BYTES: usize = std::mem::size_of::<AtomicUsize>();

/// The largest block (count and frame) a thread keeps for reuse once freed: the small
/// messages of a busy topic, not one large frame held idle.
pub(crate) const SPARE_BYTES_MAX: usize = 4096;

/// Allocations are rounded up to a multiple of this, so that frames a few bytes apart (topic
/// names of 9 and 10 characters) fit each other's spare block. mimalloc's size classes are
/// this coarse above 64 bytes; a smaller frame (a short topic and a few bytes of payload),
/// or any frame under glibc's allocator (the library embedded elsewhere), may take 8 bytes
/// more. Rounding to 8 below 64 bytes cost 12 instructions a message (callgrind, 1:1).
const SIZE_GRANULE: usize = 16;

/// What a thread does with a frame's block once the frame is freed.
#[derive(Clone, Copy)]
enum Spare {
    /// Hands it back to the allocator: any thread but a shard's, so that no thread that
    /// ends holds a block nobody frees.
    Off,
    /// Keeps it for the next frame of its size, and holds none yet.
    Empty,
    /// Holds one block of this size (see the module docs).
    Held(NonNull<u8>, usize),
}

thread_local! {
    // No destructor, so that reaching it is one load: a shard frees what it holds when it
    // stops (`SpareBlocks`).
    static SPARE: Cell<Spare> = const { Cell::new(Spare::Off) };
}

/// While it lives, this thread keeps the block of the last frame it freed for its next
/// frame of that size (see the module docs); on drop, the block goes back to the allocator
/// and the thread keeps none again. For a shard's thread, for as long as it runs. Not
/// `Send`: dropped on another thread, it would leave this one keeping a block for ever.
pub struct SpareBlocks(PhantomData<*const ()>);

impl SpareBlocks {
    /// Starts keeping spare blocks on this thread, which must not be keeping them already.
    pub fn keep() -> SpareBlocks {
        debug_assert!(
            matches!(SPARE.get(), Spare::Off),
            "spare blocks kept twice on one thread"
        );
        SPARE.set(Spare::Empty);
        SpareBlocks(PhantomData)
    }
}

impl Drop for SpareBlocks {
    fn drop(&mut self) {
        if let Spare::Held(block, size) = SPARE.replace(Spare::Off) {
            // SAFETY: the block was allocated with this size and the count's alignment, and
            // only the cell held it.
            unsafe { alloc::dealloc(block.as_ptr(), Frame::block_layout(size)) };
        }
    }
}

/// Past this many references the count could wrap if references were leaked: abort rather
/// than free a frame still in use (as `std` and `triomphe` do).
const REFERENCES_MAX: usize = isize::MAX as usize;

/// Out of line, so that the publish path that sizes every frame stays small enough to
/// inline (a formatted panic in `layout` cost 40 instructions a publish, callgrind).
#[cold]
#[inline(never)]
fn larger_than_memory() -> ! {
    panic!("a frame larger than memory")
}

pub(super) struct Frame {
    /// The allocation: the count, then `len` bytes.
    allocation: NonNull<u8>,
    len: usize,
}

// SAFETY: the bytes are immutable once shared (only `get_mut`, with the only reference, writes)
// and the count is atomic whenever another thread may hold a reference.
unsafe impl Send for Frame {}
// SAFETY: as above; `&Frame` gives only reads of the bytes and atomic updates of the count.
unsafe impl Sync for Frame {}

impl Frame {
    #[inline]
    fn layout(len: usize) -> Layout {
        // A frame's length is bounded by `--message-bytes-max` (validated), far below where
        // this could fail; failing, it is an allocation that cannot be made.
        match len
            .checked_add(HEADER_BYTES + SIZE_GRANULE - 1)
            .map(|size| size & !(SIZE_GRANULE - 1))
            .and_then(|size| Layout::from_size_align(size, align_of::<AtomicUsize>()).ok())
        {
            Some(layout) => layout,
            None => larger_than_memory(),
        }
    }

    /// The layout of a block of `size` bytes from [`Frame::layout`].
    fn block_layout(size: usize) -> Layout {
        Layout::from_size_align(size, align_of::<AtomicUsize>())
            .unwrap_or_else(|_| larger_than_memory())
    }

    /// This thread's spare block, if it has the size `layout` asks for.
    #[inline]
    fn take_spare(layout: Layout) -> Option<NonNull<u8>> {
        match SPARE.get() {
            Spare::Held(block, size) if size == layout.size() => {
                SPARE.set(Spare::Empty);
                Some(block)
            }
            _ => None,
        }
    }

    /// Frees a block no reference points to any longer: on a thread that keeps one, it
    /// becomes the spare, and the spare it replaces goes back to the allocator (the newest
    /// is the one in cache).
    ///
    /// # Safety
    ///
    /// `block` was allocated with `layout`, and nothing refers to it.
    #[inline]
    unsafe fn free_block(block: NonNull<u8>, layout: Layout) {
        let size = layout.size();
        let freed = match SPARE.get() {
            Spare::Off => (block, size),
            _ if size > SPARE_BYTES_MAX => (block, size),
            Spare::Empty => {
                SPARE.set(Spare::Held(block, size));
                return;
            }
            Spare::Held(spare, spare_size) => {
                SPARE.set(Spare::Held(block, size));
                (spare, spare_size)
            }
        };
        // SAFETY: the caller's block, or the spare that nothing else holds, each with the
        // size it was allocated with.
        unsafe { alloc::dealloc(freed.0.as_ptr(), Frame::block_layout(freed.1)) }
    }

    /// [`Frame::free_block`] for a drop, which is inlined wherever a message is let go:
    /// there a call keeps the code small (a drop is rarely the last reference on the
    /// publish path, where the replay ring's release usually is).
    ///
    /// # Safety
    ///
    /// As for [`Frame::free_block`].
    #[inline(never)]
    unsafe fn free_block_out_of_line(block: NonNull<u8>, layout: Layout) {
        // SAFETY: the caller's promise.
        unsafe { Frame::free_block(block, layout) }
    }

    /// A frame of `len` bytes, not written yet: `new_with` and `from_slice` fill it before
    /// anyone can read it (a drop never reads them).
    #[inline]
    fn allocate(len: usize) -> Frame {
        let layout = Frame::layout(len);
        let allocation = match Frame::take_spare(layout) {
            Some(block) => block,
            // SAFETY: the layout is never zero-sized (it holds the count).
            None => match NonNull::new(unsafe { alloc::alloc(layout) }) {
                Some(block) => block,
                None => alloc::handle_alloc_error(layout),
            },
        };
        // SAFETY: the allocation starts with room for the count, suitably aligned.
        unsafe { allocation.cast::<AtomicUsize>().write(AtomicUsize::new(1)) };
        Frame { allocation, len }
    }

    /// A frame of `len` bytes that `write` fills; `None` (and nothing kept) if it says it
    /// did not.
    ///
    /// # Safety
    ///
    /// `write` returns `Some` only once it has written every byte of the slice it is given:
    /// the frame's bytes are read as initialised from then on.
    pub unsafe fn new_with(
        len: usize,
        write: impl FnOnce(&mut [MaybeUninit<u8>]) -> Option<()>,
    ) -> Option<Frame> {
        let frame = Frame::allocate(len);
        // SAFETY: `len` bytes follow the count inside the allocation; nothing else refers to
        // them yet, and `MaybeUninit` asks no initialisation.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(
                frame
                    .allocation
                    .as_ptr()
                    .add(HEADER_BYTES)
                    .cast::<MaybeUninit<u8>>(),
                len,
            )
        };
        // A frame the writer gave up on is freed by its drop, which never reads the bytes.
        write(bytes).map(|()| frame)
    }

    pub fn from_slice(bytes: &[u8]) -> Frame {
        let frame = Frame::allocate(bytes.len());
        // SAFETY: the new allocation has room for `bytes.len()` bytes after the count, and
        // cannot overlap `bytes`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                frame.allocation.as_ptr().add(HEADER_BYTES),
                bytes.len(),
            )
        };
        frame
    }

    fn count(&self) -> &AtomicUsize {
        // SAFETY: the allocation starts with the count, alive while this reference is.
        unsafe { self.allocation.cast::<AtomicUsize>().as_ref() }
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes follow the count (`new_with` returns only a frame
        // written whole), alive while this reference is.
        unsafe { std::slice::from_raw_parts(self.allocation.as_ptr().add(HEADER_BYTES), self.len) }
    }

    /// Whether this is the only reference. `Acquire`: whatever a thread did with the frame
    /// before it released its reference is seen here.
    pub fn is_unique(&self) -> bool {
        self.count().load(Ordering::Acquire) == 1
    }

    /// The bytes to write, if this is the only reference.
    pub fn get_mut(&mut self) -> Option<&mut [u8]> {
        if !self.is_unique() {
            return None;
        }
        // SAFETY: the only reference, held mutably: nobody else reads the bytes.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.allocation.as_ptr().add(HEADER_BYTES), self.len)
        })
    }

    /// A second reference; by a plain store while this is the only one (see the module docs).
    #[inline]
    pub fn clone_while_unique(&mut self) -> Frame {
        // The load must stay `Acquire`: the plain store below ends the release sequence of
        // the decrements before it, so a thread that read the bytes and then released its
        // reference is ordered before whoever frees them only through this load.
        if !self.is_unique() {
            return self.clone();
        }
        // Only this thread can reach the count now (it holds the only reference, mutably).
        self.count().store(2, Ordering::Relaxed);
        Frame {
            allocation: self.allocation,
            len: self.len,
        }
    }

    /// Drops this reference; if it is the last, as seen by a load, the frame is freed without
    /// a locked instruction (nobody else holds one or can make one). For a holder that is
    /// likely the last: others should drop, which does not look first.
    #[inline]
    pub fn release(self) {
        if self.is_unique() {
            // SAFETY: the only reference (the `Acquire` load ordered every other holder's
            // use before its release); the layout is the one the frame was allocated with.
            unsafe { Frame::free_block(self.allocation, Frame::layout(self.len)) };
            std::mem::forget(self);
        }
        // Otherwise `self` drops here: a decrement, as any other reference's.
    }

    pub fn references(&self) -> usize {
        self.count().load(Ordering::Acquire)
    }

    /// Where the allocation starts (the count, then the frame): for prefetching, and as an
    /// identity.
    pub fn heap_ptr(&self) -> *const u8 {
        self.allocation.as_ptr()
    }
}

impl Clone for Frame {
    #[inline]
    fn clone(&self) -> Frame {
        // `Relaxed`: a new reference is made from one held, which orders everything before.
        if self.count().fetch_add(1, Ordering::Relaxed) > REFERENCES_MAX {
            std::process::abort();
        }
        Frame {
            allocation: self.allocation,
            len: self.len,
        }
    }
}

impl Drop for Frame {
    #[inline]
    fn drop(&mut self) {
        // `Release`: this thread's reads of the bytes happen before whoever frees them.
        if self.count().fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        fence(Ordering::Acquire);
        // SAFETY: no reference is left; the layout is the one the frame was allocated with.
        unsafe { Frame::free_block_out_of_line(self.allocation, Frame::layout(self.len)) };
    }
}

impl std::ops::Deref for Frame {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.bytes()
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("len", &self.len)
            .field("references", &self.references())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The size of this thread's spare block, if it holds one.
    fn spare_size() -> Option<usize> {
        match SPARE.get() {
            Spare::Held(_, size) => Some(size),
            Spare::Off | Spare::Empty => None,
        }
    }

    /// Runs `test` on a thread of its own that keeps spare blocks, as a shard's does.
    fn on_a_new_thread(test: impl FnOnce() + Send + 'static) {
        std::thread::spawn(|| {
            let _spares = SpareBlocks::keep();
            test();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_freed_block_serves_the_next_frame_of_its_rounded_size() {
        on_a_new_thread(a_freed_block_serves_the_next_frame_of_its_rounded_size_here);
    }

    fn a_freed_block_serves_the_next_frame_of_its_rounded_size_here() {
        let first = Frame::from_slice(&[1; 100]);
        let block = first.heap_ptr();
        drop(first);
        assert_eq!(
            spare_size(),
            Some(112),
            "100 bytes and the count, rounded up to 16"
        );
        // 97 bytes round to the same block.
        let second = Frame::from_slice(&[2; 97]);
        assert_eq!(second.heap_ptr(), block, "the spare block is taken");
        assert_eq!((second.bytes(), second.references()), (&[2; 97][..], 1));
        assert_eq!(spare_size(), None);
        // The ring's release keeps the block too; a frame of another size leaves it be.
        second.release();
        let other = Frame::from_slice(&[3; 200]);
        assert_ne!(other.heap_ptr(), block);
        assert_eq!(spare_size(), Some(112));
        // The newest freed block replaces the spare (its lines are the ones in cache).
        let other_block = other.heap_ptr();
        drop(other);
        assert_eq!(spare_size(), Some(208));
        assert_eq!(Frame::from_slice(&[4; 200]).heap_ptr(), other_block);
    }

    #[test]
    fn a_large_frame_goes_back_to_the_allocator() {
        on_a_new_thread(a_large_frame_goes_back_to_the_allocator_here);
    }

    fn a_large_frame_goes_back_to_the_allocator_here() {
        let small = Frame::from_slice(&[1; 10]);
        drop(small);
        assert_eq!(spare_size(), Some(32), "18 bytes, rounded up to 16");
        let largest_kept = SPARE_BYTES_MAX - HEADER_BYTES;
        drop(Frame::from_slice(&vec![5; largest_kept + 1]));
        assert_eq!(
            spare_size(),
            Some(32),
            "kept: the small spare, not the large frame"
        );
        drop(Frame::from_slice(&vec![6; largest_kept]));
        assert_eq!(spare_size(), Some(SPARE_BYTES_MAX));
    }

    #[test]
    fn sizes_round_up_to_16_bytes() {
        let size = |len| Frame::layout(len).size();
        assert_eq!([size(0), size(1), size(8), size(9)], [16, 16, 16, 32]);
        assert_eq!([size(56), size(57), size(72), size(73)], [64, 80, 80, 96]);
    }

    #[test]
    fn only_a_thread_that_keeps_spares_holds_a_block() {
        on_a_new_thread(|| {
            drop(Frame::from_slice(b"kept"));
            assert_eq!(spare_size(), Some(16));
        });
        std::thread::spawn(|| {
            drop(Frame::from_slice(b"freed"));
            assert_eq!(
                spare_size(),
                None,
                "a thread that ends would leave it unfreed"
            );
            let spares = SpareBlocks::keep();
            drop(Frame::from_slice(b"kept"));
            assert_eq!(spare_size(), Some(16));
            drop(spares);
            assert_eq!(spare_size(), None, "freed when the shard stops");
            drop(Frame::from_slice(b"freed"));
            assert_eq!(spare_size(), None);
        })
        .join()
        .unwrap();
    }

    #[derive(Clone, Debug)]
    enum Step {
        Make(usize),
        Clone(usize),
        CloneWhileUnique(usize),
        Drop(usize),
        Release(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1usize..40).prop_map(Step::Make),
            any::<usize>().prop_map(Step::Clone),
            any::<usize>().prop_map(Step::CloneWhileUnique),
            any::<usize>().prop_map(Step::Drop),
            any::<usize>().prop_map(Step::Release),
        ]
    }

    proptest! {
        /// Frames made, shared and freed in any order, of lengths that share rounded sizes:
        /// a block reused while a reference to it lived would show as another frame's bytes.
        #[test]
        fn reused_blocks_never_overwrite_a_live_frame(steps in prop::collection::vec(step(), 1..200)) {
            let _spares = SpareBlocks::keep();
            let mut live: Vec<(Frame, u8)> = Vec::new();
            for (index, step) in steps.into_iter().enumerate() {
                let fill = index as u8;
                match step {
                    Step::Make(len) => live.push((Frame::from_slice(&vec![fill; len]), fill)),
                    Step::Clone(at) if !live.is_empty() => {
                        let (frame, fill) = &live[at % live.len()];
                        live.push((frame.clone(), *fill));
                    }
                    Step::CloneWhileUnique(at) if !live.is_empty() => {
                        let at = at % live.len();
                        let fill = live[at].1;
                        let copy = live[at].0.clone_while_unique();
                        live.push((copy, fill));
                    }
                    Step::Drop(at) if !live.is_empty() => {
                        drop(live.swap_remove(at % live.len()));
                    }
                    Step::Release(at) if !live.is_empty() => {
                        live.swap_remove(at % live.len()).0.release();
                    }
                    _ => {}
                }
                for (frame, fill) in &live {
                    prop_assert!(frame.bytes().iter().all(|byte| byte == fill));
                    let holders = live
                        .iter()
                        .filter(|(other, _)| other.heap_ptr() == frame.heap_ptr())
                        .count();
                    prop_assert_eq!(frame.references(), holders);
                }
            }
        }
    }

    #[test]
    fn references_are_counted_and_the_last_frees() {
        let mut frame = Frame::from_slice(b"hello");
        assert_eq!(frame.bytes(), b"hello");
        assert!(frame.is_unique());
        let kept = frame.clone_while_unique();
        assert_eq!((frame.references(), kept.references()), (2, 2));
        assert!(frame.get_mut().is_none(), "shared frames are not written");
        let third = kept.clone();
        let fourth = frame.clone_while_unique();
        assert_eq!(frame.references(), 4, "not unique: an atomic increment");
        drop((third, fourth, kept));
        assert!(frame.is_unique());
        frame.get_mut().unwrap()[0] = b'j';
        assert_eq!(frame.bytes(), b"jello");
    }

    #[test]
    fn an_empty_frame_and_a_writer_that_gives_up_hold_nothing_wrong() {
        assert_eq!(Frame::from_slice(&[]).bytes(), b"");
        // SAFETY: a writer that returns `None` promises nothing.
        assert!(unsafe { Frame::new_with(8, |_| None) }.is_none());
        let panicked = std::panic::catch_unwind(|| {
            // SAFETY: it never returns.
            unsafe { Frame::new_with(8, |_| panic!("a writer that panics")) }
        });
        assert!(panicked.is_err(), "the frame is freed by its drop, unread");
    }

    /// The last release and the owner's plain-store reference racing with other threads'
    /// releases, with no join ordering them: a thread reads the bytes and drops its copy
    /// while the owner waits to be the only holder (a load), takes a second reference by a
    /// store, and hands it to a thread that reads and drops it while the owner drops its own.
    /// A free before a read shows as corrupted bytes or a crash (and under memcheck as an
    /// invalid read).
    #[test]
    fn the_fast_paths_race_with_releases_on_other_threads() {
        let _spares = SpareBlocks::keep();
        for round in 0..500u32 {
            let mut frame = Frame::from_slice(&round.to_be_bytes());
            let copy = frame.clone();
            let reader = std::thread::spawn(move || {
                let _spares = SpareBlocks::keep();
                assert_eq!(copy.bytes(), round.to_be_bytes());
                drop(copy);
            });
            while !frame.is_unique() {
                std::hint::spin_loop();
            }
            let kept = frame.clone_while_unique();
            let (to_second, from_owner) = std::sync::mpsc::channel::<Frame>();
            let second = std::thread::spawn(move || {
                let _spares = SpareBlocks::keep();
                let kept = from_owner.recv().unwrap();
                assert_eq!(kept.bytes(), round.to_be_bytes());
                drop(kept);
            });
            to_second.send(kept).unwrap();
            frame.release();
            second.join().unwrap();
            reader.join().unwrap();
        }
    }

    /// References made and released across threads, the last on any of them: a frame freed
    /// early or twice shows as corrupted bytes or a crash (and under Miri or a sanitizer, as
    /// an error).
    #[test]
    fn references_released_on_many_threads_free_the_frame_once() {
        let _spares = SpareBlocks::keep();
        for round in 0..200u32 {
            let mut frame = Frame::from_slice(&round.to_be_bytes());
            let kept = frame.clone_while_unique();
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let mine = frame.clone();
                    std::thread::spawn(move || {
                        let _spares = SpareBlocks::keep();
                        let copies: Vec<Frame> = (0..50).map(|_| mine.clone()).collect();
                        for copy in &copies {
                            assert_eq!(copy.bytes(), round.to_be_bytes());
                        }
                        drop(copies);
                        mine
                    })
                })
                .collect();
            drop(frame);
            let returned: Vec<Frame> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            assert_eq!(kept.references(), 5);
            returned.into_iter().for_each(Frame::release);
            assert!(kept.is_unique());
            assert_eq!(kept.bytes(), round.to_be_bytes());
            kept.release();
        }
    }
}
