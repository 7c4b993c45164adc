//! A bounded mutation-fuzzing loop for machines without nightly Rust / cargo-fuzz: each fuzz
//! target's `main` (built without `--cfg fuzzing`) calls [`smoke`], which mutates the seed
//! inputs in `corpus/<target>/` and calls the target's check function until time runs out.
//! A panic prints the input (hex) and exits non-zero, like a libFuzzer crash.
//!
//! Memory is limited as libFuzzer's `-malloc_limit_mb` does: a counting global allocator refuses
//! to let live heap pass [`HEAP_LIMIT_MB`] and reports the input that asked, so an input that
//! makes a reader allocate far beyond its size is a crash, not a slow machine.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Most live heap, MiB, any input may use (the same figure as fuzz-smoke's libFuzzer limits).
pub const HEAP_LIMIT_MB: usize = 1024;

/// Live heap bytes.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// The input being checked, for the report when it goes over the limit.
static CURRENT: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// The system allocator with a ceiling on live bytes.
pub struct Limited;

#[cfg(not(fuzzing))]
#[global_allocator]
static ALLOC: Limited = Limited;

// SAFETY: every call goes to the system allocator unchanged; only the byte count is tracked.
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        reserve(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        reserve(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            reserve(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Counts `size` more live bytes; over the limit, prints the input and aborts (no allocation
/// here: this runs inside the allocator).
fn reserve(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    if live <= HEAP_LIMIT_MB << 20 {
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "fuzz: heap would reach {} MiB (limit {HEAP_LIMIT_MB} MiB) on input (hex):", live >> 20);
    if let Ok(input) = CURRENT.try_lock() {
        let hex = b"0123456789abcdef";
        for b in input.iter() {
            let _ = err.write_all(&[hex[usize::from(b >> 4)], hex[usize::from(b & 15)]]);
        }
    }
    let _ = writeln!(err);
    std::process::abort();
}

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

const INTERESTING: [&[u8]; 10] = [
    b"\x00", b"\xff", b"\x7f", b"\x80", b"\xff\xff\xff\xff", b"\x00\x00\x00\x80",
    b"(", b".", b"\x94", b"\xff\xff\xff\xff\xff\xff\xff\x7f",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                input.drain(i..i + n);
            }
            4 => input.truncate(rng.below(len + 1)),
            5 => {
                let i = rng.below(len + 1);
                let v = INTERESTING[rng.below(INTERESTING.len())];
                input.splice(i..i, v.iter().copied());
            }
            6 if !seeds.is_empty() => {
                // Splice a piece of another seed in.
                let s = &seeds[rng.below(seeds.len())];
                let a = rng.below(s.len() + 1);
                let b = a + rng.below(s.len() - a + 1);
                let i = rng.below(len + 1);
                input.splice(i..i, s[a..b].iter().copied());
            }
            _ if len > 1 => {
                // Duplicate a chunk (repeats opcodes / records).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let chunk: Vec<u8> = input[i..i + n].to_vec();
                let j = rng.below(len + 1);
                input.splice(j..j, chunk);
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(1 << 20);
}

/// Runs `check` on mutated seeds and prints a summary. `--runs N --seed S` (the default: 20,000
/// runs, seed 1) replays the same inputs every time, so CI is reproducible; `--seconds T` runs for a
/// time instead, from a random seed unless `--seed` is given. Seeds: every file in
/// `<fuzz dir>/corpus/<target>/` (in name order) plus `extra_seeds`.
pub fn smoke(target: &str, extra_seeds: &[&[u8]], check: fn(&[u8])) {
    let mut runs_wanted: Option<u64> = None;
    let mut seconds: Option<f64> = None;
    let mut seed: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next();
        match a.as_str() {
            "--seconds" => seconds = value.and_then(|s| s.parse().ok()),
            "--runs" => runs_wanted = value.and_then(|s| s.parse().ok()),
            "--seed" => seed = value.and_then(|s| s.parse().ok()),
            other => {
                eprintln!("fuzz target {target}: unknown argument {other} (use --runs N, --seconds T, --seed S)");
                std::process::exit(2);
            }
        }
    }
    if seconds.is_none() && runs_wanted.is_none() {
        runs_wanted = Some(20_000);
        seed = seed.or(Some(1));
    }
    let seed = seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        nanos ^ u64::from(std::process::id())
    });
    let mut seeds: Vec<Vec<u8>> = extra_seeds.iter().map(|s| s.to_vec()).collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    for f in files {
        if let Ok(b) = std::fs::read(f) {
            seeds.push(b);
        }
    }
    if seeds.is_empty() {
        seeds.push(Vec::new());
    }
    // xorshift never leaves zero: mix the seed into a non-zero constant.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0xff51_afd7_ed55_8ccd) | 1);
    let started = Instant::now();
    let deadline = seconds.map(|s| started + Duration::from_secs_f64(s));
    let mut runs: u64 = 0;
    // Quiet the default hook: the input is what matters.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    while runs_wanted.is_none_or(|n| runs < n) && deadline.is_none_or(|d| Instant::now() < d) {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut input, &seeds);
        if let Ok(mut current) = CURRENT.lock() {
            current.clear();
            current.extend_from_slice(&input);
        }
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            eprintln!("fuzz target {target}: crash after {runs} runs (seed {seed}) on input ({} bytes):\n{hex}", input.len());
            std::process::exit(1);
        }
        runs += 1;
        // Keep some mutants as seeds so mutations compound.
        if runs % 64 == 0 && seeds.len() < 4096 {
            seeds.push(input);
        }
    }
    let took = started.elapsed().as_secs_f64();
    println!("fuzz target {target}: {runs} runs (seed {seed}) in {took:.1} s, no crash ({} seeds)", seeds.len());
}
