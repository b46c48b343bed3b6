//! The fuzz runner: seeded input generation, mutation, the per-input checks (no panic, bounded
//! allocation, bounded time), volume control by environment variables and resumable progress.
//!
//! Why a home-made runner: cargo-fuzz needs nightly, and the decoders must be fuzzed by the
//! ordinary `cargo test --release` on stable, in CI and for hours on a spare machine alike.
//! What it lacks against libFuzzer (coverage feedback) it partly makes up for by knowing the
//! formats: every target builds VALID inputs with the crate's own encoders, and most inputs are
//! small mutations of those, so they get past the first length check and into the deep paths.
//!
//! Every input is a pure function of (seed, decoder, index): input `i` is drawn from a
//! `StdRng` seeded with a hash of the three. So a failure is reproduced from its report alone,
//! and a pass can stop and resume at any index.

use std::cell::{Cell, RefCell};
use std::collections::hash_map::DefaultHasher;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use super::alloc::{peak_since, restart_peak};

/// Inputs per decoder when `COREBUS_FUZZ_INPUTS` is unset: enough to exercise every path a
/// little in each `cargo test --release` (about 3 s for the whole file on two idle cores, well
/// under 20 s on busy ones). A debug build runs some 30 times slower, so it gets fewer.
const INPUTS_DEFAULT: u64 = if cfg!(debug_assertions) {
    5_000
} else {
    100_000
};
/// The seed when `COREBUS_FUZZ_SEED` is unset; fixed so that CI is reproducible.
const SEED_DEFAULT: u64 = 0x00c0_ffee;
/// Progress is written to the state file every this many inputs.
const STATE_EVERY: u64 = 100_000;
/// A progress line is printed at most this often during a long pass.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);
/// One input taking this long is reported as a failure: no decoder should need it for a few
/// KiB, so it is a complexity bug (a backtracking matcher, a quadratic rescan).
const SLOW_INPUT: Duration = Duration::from_millis(500);
/// Longest raw random input.
const RAW_LEN_MAX: usize = 512;
/// The narrow alphabet of half the raw inputs: the delimiters of every format here.
const RAW_ALPHABET: &[u8] = b"\r\n\0 *$:+-_01{}\"\\/.?[]%,";

/// What a decoder made of one input, for the summary: a pass where everything is "invalid"
/// never reaches the deep paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Decoded,
    Incomplete,
    Invalid,
}

/// One decoder under test.
pub struct Target {
    pub name: &'static str,
    /// Appends a valid input. Where an encoder exists it also checks the round trip
    /// (`decode(encode(x)) == x`) of what it built, panicking on a mismatch.
    pub generate: fn(&mut StdRng, &mut Vec<u8>),
    /// Runs the decoder (through [`measured`]) and checks its invariants, panicking on a
    /// violation.
    pub check: fn(&[u8]) -> Outcome,
    /// Bytes a decoder may hold at once for an input of `len` bytes: `per_byte * len + fixed`.
    pub alloc_per_byte: usize,
    pub alloc_fixed: usize,
    /// Tokens worth inserting for this format (delimiters, keywords, field names).
    pub dictionary: &'static [&'static [u8]],
}

thread_local! {
    /// Most bytes any [`measured`] call of the current input held at once.
    static INPUT_PEAK_BYTES: Cell<usize> = const { Cell::new(0) };
    /// Set while a fuzz input runs: the panic hook records instead of printing.
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static PANIC_MESSAGE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Runs a decoder call and records what it allocated; targets wrap every decoder call in it
/// (and nothing else, so the checks' own allocations are not charged to the decoder).
pub fn measured<R>(f: impl FnOnce() -> R) -> R {
    let meter = Meter::start();
    let result = f();
    meter.stop();
    result
}

/// [`measured`] for a span of code that a closure cannot hold (a result borrowing a decoder
/// across several calls). Meters do not nest.
pub struct Meter(isize);

impl Meter {
    pub fn start() -> Meter {
        Meter(restart_peak())
    }

    pub fn stop(self) {
        let peak = peak_since(self.0);
        INPUT_PEAK_BYTES.with(|max| max.set(max.get().max(peak)));
    }
}

struct Config {
    inputs: u64,
    seed: u64,
    from: Option<u64>,
    decoders: Option<Vec<String>>,
    state: Option<PathBuf>,
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim().replace('_', "");
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text} is not a number")))
}

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let config = Config {
            inputs: env_u64("COREBUS_FUZZ_INPUTS").unwrap_or(INPUTS_DEFAULT),
            seed: env_u64("COREBUS_FUZZ_SEED").unwrap_or(SEED_DEFAULT),
            from: env_u64("COREBUS_FUZZ_FROM"),
            decoders: std::env::var("COREBUS_FUZZ_DECODERS")
                .ok()
                .filter(|list| !list.trim().is_empty())
                .map(|list| list.split(',').map(|d| d.trim().to_owned()).collect()),
            state: std::env::var_os("COREBUS_FUZZ_STATE").map(PathBuf::from),
        };
        println!(
            "fuzz: seed {:#x}, {} inputs per decoder, decoders {}, state {}",
            config.seed,
            config.inputs,
            config
                .decoders
                .as_ref()
                .map_or("all".to_owned(), |d| d.join(",")),
            config
                .state
                .as_ref()
                .map_or("none".to_owned(), |p| p.display().to_string()),
        );
        config
    })
}

/// One line per (decoder, seed): `decoder seed inputs_done`. A mutex because the harness runs
/// the decoders on parallel threads of one process, all writing the same file.
static STATE_LOCK: Mutex<()> = Mutex::new(());

fn state_lines(path: &PathBuf) -> Vec<(String, u64, u64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?.to_owned();
            let seed = words.next()?.parse().ok()?;
            let done = words.next()?.parse().ok()?;
            Some((name, seed, done))
        })
        .collect()
}

fn load_state(name: &str, seed: u64) -> u64 {
    let Some(path) = &config().state else {
        return 0;
    };
    let _guard = STATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    state_lines(path)
        .into_iter()
        .find(|(n, s, _)| n == name && *s == seed)
        .map_or(0, |(_, _, done)| done)
}

fn save_state(name: &str, seed: u64, done: u64) {
    let Some(path) = &config().state else {
        return;
    };
    let _guard = STATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lines = state_lines(path);
    lines.retain(|(n, s, _)| !(n == name && *s == seed));
    lines.push((name.to_owned(), seed, done));
    lines.sort();
    let mut text = String::new();
    for (n, s, d) in lines {
        let _ = writeln!(text, "{n} {s} {d}");
    }
    // Write then rename, so a pass killed mid-write leaves the previous state intact.
    let mut tmp = path.clone().into_os_string();
    tmp.push(format!(".tmp.{}", std::process::id()));
    std::fs::write(&tmp, text).expect("write the fuzz state file");
    std::fs::rename(&tmp, path).expect("replace the fuzz state file");
}

fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if CAPTURING.with(Cell::get) {
                let location = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let payload = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                PANIC_MESSAGE.with(|m| *m.borrow_mut() = format!("{payload}{location}"));
            } else {
                default(info);
            }
        }));
    });
}

fn input_rng(seed: u64, name: &str, index: u64) -> StdRng {
    let mut hasher = DefaultHasher::new();
    (seed, name, index).hash(&mut hasher);
    StdRng::seed_from_u64(hasher.finish())
}

/// How an input was made, for the summary.
#[derive(Clone, Copy)]
enum Kind {
    Valid,
    Mutated,
    Spliced,
    Truncated,
    Raw,
}

/// Builds input number `index` into `input`.
fn build(target: &Target, rng: &mut StdRng, input: &mut Vec<u8>, other: &mut Vec<u8>) -> Kind {
    input.clear();
    match rng.gen_range(0..16) {
        0 => {
            // Raw bytes, sometimes from a narrow alphabet so that delimiters are frequent.
            let len = small_len(rng, RAW_LEN_MAX);
            if rng.gen_bool(0.5) {
                input.resize(len, 0);
                rng.fill_bytes(input);
            } else {
                for _ in 0..len {
                    input.push(RAW_ALPHABET[rng.gen_range(0..RAW_ALPHABET.len())]);
                }
            }
            Kind::Raw
        }
        1 => {
            (target.generate)(rng, input);
            Kind::Valid
        }
        2 => {
            (target.generate)(rng, input);
            let len = rng.gen_range(0..=input.len());
            input.truncate(len);
            Kind::Truncated
        }
        3 => {
            (target.generate)(rng, input);
            other.clear();
            (target.generate)(rng, other);
            splice(rng, input, other);
            Kind::Spliced
        }
        _ => {
            (target.generate)(rng, input);
            let ops = 1 + rng.gen_range(0..4) * rng.gen_range(0..3);
            for _ in 0..ops {
                mutate(rng, input, target.dictionary);
            }
            Kind::Mutated
        }
    }
}

/// A length biased towards small values, where most edge cases are.
pub fn small_len(rng: &mut StdRng, max: usize) -> usize {
    match rng.gen_range(0..4) {
        0 => rng.gen_range(0..=max.min(4)),
        1 => rng.gen_range(0..=max.min(32)),
        _ => rng.gen_range(0..=max),
    }
}

fn splice(rng: &mut StdRng, input: &mut Vec<u8>, other: &[u8]) {
    let cut = rng.gen_range(0..=input.len());
    let from = rng.gen_range(0..=other.len());
    input.truncate(cut);
    input.extend_from_slice(&other[from..]);
}

/// Length values at the edges of 8, 16, 32 and 64-bit fields and of the usual limits.
pub const BOUNDARY_VALUES: [u64; 14] = [
    0,
    1,
    2,
    125,
    126,
    127,
    255,
    256,
    65_535,
    65_536,
    0x7fff_ffff,
    u32::MAX as u64,
    i64::MAX as u64,
    u64::MAX,
];

/// The same edges as decimal text, for the text protocols (RESP counts, Content-Length).
const BOUNDARY_TEXTS: [&[u8]; 12] = [
    b"0",
    b"1",
    b"-1",
    b"-2",
    b"255",
    b"65536",
    b"2147483647",
    b"2147483648",
    b"4294967296",
    b"9223372036854775807",
    b"18446744073709551616",
    b"00000000000000000000001",
];

/// One structure-unaware edit: flip, set, insert, delete, duplicate, a boundary length, a
/// dictionary token.
fn mutate(rng: &mut StdRng, data: &mut Vec<u8>, dictionary: &[&[u8]]) {
    let len = data.len();
    let at = rng.gen_range(0..=len);
    match rng.gen_range(0..10) {
        0 if len > 0 => {
            let i = rng.gen_range(0..len);
            data[i] ^= 1 << rng.gen_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.gen_range(0..len);
            data[i] = *[0u8, 1, 0x7f, 0x80, 0xff, b'\r', b'\n', b' ']
                .get(rng.gen_range(0..8))
                .unwrap_or(&0);
            if rng.gen_bool(0.5) {
                data[i] = rng.gen();
            }
        }
        2 => {
            let n = small_len(rng, 16);
            let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            data.splice(at..at, bytes);
        }
        3 if len > 0 => {
            let end = rng.gen_range(at..=len);
            let end = at + (end - at).min(small_len(rng, 64));
            data.drain(at..end);
        }
        4 if len > 0 => {
            // Duplicate a range, e.g. a whole frame or a header field.
            let start = rng.gen_range(0..len);
            let end = rng.gen_range(start..=len);
            let copy = data[start..end].to_vec();
            let at = rng.gen_range(0..=len);
            data.splice(at..at, copy);
        }
        5 => {
            // A binary length field set to a boundary value, in a random width and order.
            let value = BOUNDARY_VALUES[rng.gen_range(0..BOUNDARY_VALUES.len())];
            let value = value.wrapping_add_signed(rng.gen_range(-1..=1));
            let width = [1usize, 2, 4, 8][rng.gen_range(0..4)];
            let bytes = if rng.gen_bool(0.8) {
                value.to_be_bytes()
            } else {
                value.to_le_bytes()
            };
            let bytes = if rng.gen_bool(0.8) {
                &bytes[8 - width..]
            } else {
                &bytes[..width]
            };
            let at = at.min(len.saturating_sub(width));
            let end = (at + width).min(len);
            data.splice(at..end, bytes.iter().copied());
        }
        6 => {
            // A decimal length replaced by a boundary value (the digits after `at`).
            let text = BOUNDARY_TEXTS[rng.gen_range(0..BOUNDARY_TEXTS.len())];
            let digits = data[at..]
                .iter()
                .take_while(|b| b.is_ascii_digit() || **b == b'-')
                .count();
            data.splice(at..at + digits, text.iter().copied());
        }
        7 if !dictionary.is_empty() => {
            let token = dictionary[rng.gen_range(0..dictionary.len())];
            if rng.gen_bool(0.5) || len < token.len() {
                data.splice(at..at, token.iter().copied());
            } else {
                let at = at.min(len - token.len());
                data[at..at + token.len()].copy_from_slice(token);
            }
        }
        8 => data.truncate(at),
        _ => {
            if len > 0 {
                let i = rng.gen_range(0..len);
                data[i] = data[i].wrapping_add(rng.gen_range(1..=3)).wrapping_sub(2);
            }
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// What went wrong with one input.
fn failure(target: &Target, seed: u64, index: u64, input: &[u8], what: &str) -> String {
    format!(
        "fuzz {name}: {what}\n  seed {seed:#x}, input {index} ({len} bytes)\n  input hex: {hex}\n  \
         input text: {text:?}\n  replay: COREBUS_FUZZ_DECODERS={name} COREBUS_FUZZ_SEED={seed:#x} \
         COREBUS_FUZZ_FROM={index} COREBUS_FUZZ_INPUTS={next} cargo test --release --test fuzz \
         -- --nocapture",
        name = target.name,
        len = input.len(),
        hex = hex(input),
        text = String::from_utf8_lossy(input),
        next = index + 1,
    )
}

/// How long the check of `input` takes when run again.
fn retimed(target: &Target, input: &[u8]) -> Duration {
    let t0 = Instant::now();
    let _ = panic::catch_unwind(AssertUnwindSafe(|| (target.check)(input)));
    t0.elapsed()
}

/// Runs one decoder's pass as configured by the environment; panics with a replayable report
/// on the first failing input.
pub fn run(target: &Target) {
    let config = config();
    if let Some(decoders) = &config.decoders {
        if !decoders.iter().any(|d| d == target.name) {
            return;
        }
    }
    install_panic_hook();
    let seed = config.seed;
    let start = config.from.unwrap_or_else(|| load_state(target.name, seed));
    let end = config.inputs;
    if start >= end {
        println!(
            "fuzz {}: seed {seed:#x}, all {end} inputs already done (state file)",
            target.name
        );
        return;
    }
    let began = Instant::now();
    let mut last_print = began;
    let mut kinds = [0u64; 5];
    let mut outcomes = [0u64; 3];
    let (mut peak_max, mut peak_max_len) = (0usize, 0usize);
    let (mut slowest, mut slowest_index) = (Duration::ZERO, start);
    let mut input = Vec::new();
    let mut other = Vec::new();
    for index in start..end {
        let mut rng = input_rng(seed, target.name, index);
        INPUT_PEAK_BYTES.with(|p| p.set(0));
        CAPTURING.with(|c| c.set(true));
        let built = panic::catch_unwind(AssertUnwindSafe(|| {
            build(target, &mut rng, &mut input, &mut other)
        }));
        let kind = match built {
            Ok(kind) => kind,
            Err(_) => {
                CAPTURING.with(|c| c.set(false));
                let message = PANIC_MESSAGE.with(|m| m.take());
                save_state(target.name, seed, index);
                panic!(
                    "{}",
                    failure(
                        target,
                        seed,
                        index,
                        &input,
                        &format!("round trip of a generated valid input failed: {message}")
                    )
                );
            }
        };
        let t0 = Instant::now();
        let checked = panic::catch_unwind(AssertUnwindSafe(|| (target.check)(&input)));
        let took = t0.elapsed();
        CAPTURING.with(|c| c.set(false));
        let outcome = match checked {
            Ok(outcome) => outcome,
            Err(_) => {
                let message = PANIC_MESSAGE.with(|m| m.take());
                save_state(target.name, seed, index);
                panic!("{}", failure(target, seed, index, &input, &message));
            }
        };
        let peak = INPUT_PEAK_BYTES.with(Cell::get);
        let bound = target.alloc_per_byte * input.len() + target.alloc_fixed;
        if peak > bound {
            save_state(target.name, seed, index);
            panic!(
                "{}",
                failure(
                    target,
                    seed,
                    index,
                    &input,
                    &format!(
                        "allocated {peak} bytes at once, above the bound {} * len + {} = {bound}",
                        target.alloc_per_byte, target.alloc_fixed
                    )
                )
            );
        }
        // Timed again before failing: a busy machine can stall any thread for a moment.
        if took > SLOW_INPUT && retimed(target, &input) > SLOW_INPUT {
            save_state(target.name, seed, index);
            panic!(
                "{}",
                failure(
                    target,
                    seed,
                    index,
                    &input,
                    &format!("one input took {took:?}")
                )
            );
        }
        if peak > peak_max {
            (peak_max, peak_max_len) = (peak, input.len());
        }
        if took > slowest {
            (slowest, slowest_index) = (took, index);
        }
        kinds[kind as usize] += 1;
        outcomes[outcome as usize] += 1;
        let done = index + 1;
        if done % STATE_EVERY == 0 {
            save_state(target.name, seed, done);
            if last_print.elapsed() >= PROGRESS_EVERY {
                last_print = Instant::now();
                let secs = began.elapsed().as_secs_f64();
                println!(
                    "fuzz {}: {done}/{end} inputs, {:.0} inputs/s",
                    target.name,
                    (done - start) as f64 / secs
                );
            }
        }
    }
    save_state(target.name, seed, end);
    let secs = began.elapsed().as_secs_f64();
    let ran = end - start;
    println!(
        "fuzz {name}: seed {seed:#x}, inputs {start}..{end} ({ran}) in {secs:.1} s = {rate:.0} \
         inputs/s; inputs valid/mutated/spliced/truncated/raw {k:?}; decoded/incomplete/invalid \
         {o:?}; most allocated {peak_max} B (input of {peak_max_len} B, bound {pb}*len+{pf}); \
         slowest {slowest:?} (input {slowest_index})",
        name = target.name,
        rate = ran as f64 / secs.max(1e-9),
        k = kinds,
        o = outcomes,
        pb = target.alloc_per_byte,
        pf = target.alloc_fixed,
    );
}
