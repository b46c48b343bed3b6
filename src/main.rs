//! The `corebus` binary: parse the command line and run the command.

use std::process::ExitCode;

use clap::Parser;
use corebus::cli::{Cli, Command, TopicCommand};

/// See Cargo.toml: a message's allocation and free are on the hot path.
#[global_allocator]
static ALLOCATOR: NaturallyAligned = NaturallyAligned;

/// mimalloc, asked through its plain `mi_malloc` wherever that alignment is enough.
/// `mimalloc::MiMalloc` passes every request to `mi_malloc_aligned`, which takes a longer
/// road to the same free list; a message frame, an `Arc` of alignment 8, is one such
/// allocation per published message (callgrind, native 1:1: 1,576 → 1,565 instructions a
/// message).
struct NaturallyAligned;

/// `mi_malloc` aligns every block to its size class up to this (mimalloc's
/// `MI_MAX_ALIGN_SIZE`); a block of 8 bytes is aligned to 8, so an alignment no larger
/// than the size is met too.
const MI_MALLOC_ALIGNMENT: usize = 16;

impl NaturallyAligned {
    fn plain(layout: std::alloc::Layout) -> bool {
        layout.align() <= MI_MALLOC_ALIGNMENT && layout.align() <= layout.size()
    }
}

// SAFETY: every request goes to mimalloc, through `mi_malloc` only where its alignment
// guarantee (above) meets the layout's, and to `MiMalloc` otherwise; mimalloc frees any of
// its blocks with `mi_free`, whichever call made it.
unsafe impl std::alloc::GlobalAlloc for NaturallyAligned {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if Self::plain(layout) {
            // SAFETY: a plain mimalloc allocation of the layout's size.
            unsafe { libmimalloc_sys::mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if Self::plain(layout) {
            // SAFETY: as in `alloc`.
            unsafe { libmimalloc_sys::mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from mimalloc (see above), and the caller gives it up.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let new_layout = std::alloc::Layout::from_size_align(new_size, layout.align());
        if matches!(new_layout, Ok(new_layout) if Self::plain(new_layout)) {
            // SAFETY: `ptr` is a mimalloc block, and the new size's alignment is natural.
            unsafe { libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast() }
        } else {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // Parsed again with the config file merged in (flag > env > file > default).
        Command::Serve(_) => {
            match corebus::settings::resolve_serve(std::env::args_os().collect()) {
                Ok(settings) => corebus::commands::serve(&settings),
                Err(message) if message.starts_with("error:") => {
                    eprint!("{message}");
                    return ExitCode::from(2);
                }
                Err(message) => Err(message.into()),
            }
        }
        Command::Pub(args) => corebus::commands::publish(&args),
        Command::Sub(args) => corebus::commands::subscribe(&args),
        Command::Request(args) => corebus::commands::request(&args),
        Command::Reply(args) => corebus::commands::reply(&args),
        Command::Ping(args) => corebus::commands::ping(&args),
        Command::Topic(TopicCommand::Create(args)) => corebus::commands::create_topic(&args),
        Command::Topic(TopicCommand::Delete(args)) => corebus::commands::delete_topic(&args),
        Command::Topic(TopicCommand::List(args)) => corebus::commands::list_topics(&args),
        Command::Bench(args) => corebus::bench::run(&args),
        Command::Inspect(args) => corebus::watch::inspect(&args),
        Command::Top(args) => corebus::watch::top(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("corebus: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::NaturallyAligned;

    /// Every layout gets a block aligned as it asks, whichever road it takes (`Arc<[u8]>`
    /// frames ask 8; a cache-line-aligned type asks 64), and a grown block keeps its bytes.
    #[test]
    fn every_block_is_aligned_as_its_layout_asks() {
        for (size, align) in [
            (1, 1),
            (8, 8),
            (4, 8),
            (24, 8),
            (17, 16),
            (100, 64),
            (3, 4096),
        ] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: a layout of non-zero size, freed with the same layout below.
            unsafe {
                let block = NaturallyAligned.alloc(layout);
                assert!(!block.is_null());
                assert_eq!(block as usize % align, 0, "{size} bytes aligned to {align}");
                block.write_bytes(0xA5, size);
                let grown = NaturallyAligned.realloc(block, layout, size * 3);
                assert_eq!(
                    grown as usize % align,
                    0,
                    "{size} bytes grown, aligned to {align}"
                );
                assert!((0..size).all(|i| *grown.add(i) == 0xA5));
                NaturallyAligned.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                let zeroed = NaturallyAligned.alloc_zeroed(layout);
                assert_eq!(zeroed as usize % align, 0);
                assert!((0..size).all(|i| *zeroed.add(i) == 0));
                NaturallyAligned.dealloc(zeroed, layout);
            }
        }
    }
}
