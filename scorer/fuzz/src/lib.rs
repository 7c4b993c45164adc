//! A bounded mutation-fuzzing loop for machines without nightly Rust / cargo-fuzz: each fuzz
//! target's `main` (built without `--cfg fuzzing`) calls [`smoke`], which mutates the seed
//! inputs in `corpus/<target>/` and calls the target's check function until time runs out.
//! A panic prints the input (hex) and exits non-zero, like a libFuzzer crash.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant};

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

/// Runs `check` on mutated seeds for the time given by `--seconds N` (default 10) and prints a
/// summary. Seeds: every file in `<fuzz dir>/corpus/<target>/` plus `extra_seeds`.
pub fn smoke(target: &str, extra_seeds: &[&[u8]], check: fn(&[u8])) {
    let mut seconds = 10.0;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--seconds" {
            seconds = args.next().and_then(|s| s.parse().ok()).unwrap_or(seconds);
        }
    }
    let mut seeds: Vec<Vec<u8>> = extra_seeds.iter().map(|s| s.to_vec()).collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if let Ok(b) = std::fs::read(e.path()) {
                seeds.push(b);
            }
        }
    }
    if seeds.is_empty() {
        seeds.push(Vec::new());
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut runs: u64 = 0;
    // Quiet the default hook: the input is what matters.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    while Instant::now() < deadline {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut input, &seeds);
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
            eprintln!("fuzz target {target}: crash after {runs} runs on input ({} bytes):\n{hex}", input.len());
            std::process::exit(1);
        }
        runs += 1;
        // Keep some mutants as seeds so mutations compound.
        if runs % 64 == 0 && seeds.len() < 4096 {
            seeds.push(input);
        }
    }
    println!("fuzz target {target}: {runs} runs in {seconds} s, no crash ({} seeds)", seeds.len());
}
