//! A counting global allocator, so the fuzz runner can tell "this decoder allocated 4 GiB
//! because a length field said so" from "this decoder allocated what the input justifies".
//!
//! Counts are per thread (the test harness runs one decoder per thread), kept in `const`
//! thread-locals of `Cell`s: they need no lazy initialisation and no destructor, so reading
//! them from inside the allocator can neither allocate nor fail.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Wraps [`System`] and counts this thread's live bytes and their high-water mark.
pub struct Counting;

thread_local! {
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
    static PEAK_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn grew(bytes: usize) {
    let _ = LIVE_BYTES.try_with(|live| {
        let now = live.get().saturating_add_unsigned(bytes);
        live.set(now);
        let _ = PEAK_BYTES.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrank(bytes: usize) {
    let _ = LIVE_BYTES.try_with(|live| live.set(live.get().saturating_sub_unsigned(bytes)));
}

// SAFETY: every call is forwarded to `System` unchanged; the counting on the side touches
// only `Cell`s of this thread and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            // A moving realloc holds both blocks for a moment: count the new one first.
            grew(new_size);
            shrank(layout.size());
        }
        new
    }
}

/// Starts a measurement: the high-water mark restarts from the bytes live now, which are
/// returned as the baseline for [`peak_since`].
pub fn restart_peak() -> isize {
    let live = LIVE_BYTES.with(Cell::get);
    PEAK_BYTES.with(|peak| peak.set(live));
    live
}

/// Most bytes held at once since [`restart_peak`] returned `baseline`, above it.
pub fn peak_since(baseline: isize) -> usize {
    usize::try_from(PEAK_BYTES.with(Cell::get) - baseline).unwrap_or(0)
}
