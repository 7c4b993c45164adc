//! Benchmarks the scoring kernel against scikit-learn in the same run: the Python side
//! (`scorer/tests/py/bench_sklearn.py`) fits models with about 10, 100 and 1000 support vectors
//! for d = 1 and 8 and times `decision_function`; this side scores the same rows on one thread
//! and on two, and prints rows/s, the ratios to scikit-learn and the largest difference.
//!
//! Build with `--release` when measuring:
//! `cargo run --release -p fleetscore-scorer --bin bench-kernel -- [--python PATH] [--scale F]`.
//! Goal: ≥ 10× scikit-learn per core at every size, ≥ 20× with both cores.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use fleetscore_scorer::model::Model;
use ndarray::Array2;

/// Command-line options.
#[derive(Parser)]
#[command(about = "Scoring-kernel benchmark against scikit-learn (run with --release)")]
struct Args {
    /// Python with scikit-learn (default: $FLEETSCORE_PYTHON, else ~/.cache/fleetscore/venv/bin/python).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Multiplies the number of rows scored per case.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Minimum time spent timing each of our variants per case.
    #[arg(long, default_value_t = 0.5)]
    min_seconds: f64,
}

fn python(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg.or_else(|| std::env::var_os("FLEETSCORE_PYTHON").map(PathBuf::from)) {
        return Ok(p);
    }
    let home = std::env::var("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/fleetscore/venv/bin/python"))
}

fn read_f64(path: &Path) -> anyhow::Result<Vec<f64>> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(b.chunks_exact(8)
        .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

/// Best rows/s over repeated runs lasting at least `min` in total.
fn rows_per_second(
    rows: usize,
    min: Duration,
    mut run: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let mut best = f64::INFINITY;
    let start = Instant::now();
    let mut n = 0;
    while n < 3 || start.elapsed() < min {
        let t = Instant::now();
        run()?;
        best = best.min(t.elapsed().as_secs_f64());
        n += 1;
    }
    Ok(rows as f64 / best)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; figures mean nothing without --release");
    }
    let py = python(args.python)?;
    let dir = std::env::temp_dir().join(format!("fleetscore-bench-{}", std::process::id()));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/bench_sklearn.py");
    eprintln!("fitting and timing scikit-learn ({}) ...", py.display());
    let status = Command::new(&py)
        .arg(&script)
        .arg(&dir)
        .args(["--scale", &args.scale.to_string()])
        .status()
        .with_context(|| format!("running {}", py.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    let result = run_cases(&dir, Duration::from_secs_f64(args.min_seconds));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_cases(dir: &Path, min: Duration) -> anyhow::Result<()> {
    let bench: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("bench.json"))?)?;
    let pool2 = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
    println!(
        "{:>2} {:>5} {:>7} {:>13} {:>13} {:>6} {:>13} {:>6} {:>9}",
        "d",
        "n_sv",
        "rows",
        "sklearn r/s",
        "ours 1c r/s",
        "ratio",
        "ours 2c r/s",
        "ratio",
        "max|diff|"
    );
    let (mut worst1, mut worst2) = (f64::INFINITY, f64::INFINITY);
    for case in bench["cases"]
        .as_array()
        .context("bench.json has no cases")?
    {
        let name = case["name"].as_str().context("case without name")?;
        let d = case["d"].as_u64().context("case without d")? as usize;
        let sk_seconds = case["sklearn_seconds"]
            .as_f64()
            .context("case without timing")?;
        let model = Model::from_bytes(&std::fs::read(dir.join(format!("{name}.pkl")))?)?;
        let flat = read_f64(&dir.join(format!("{name}.rows.f64")))?;
        let rows = Array2::from_shape_vec((flat.len() / d, d), flat)?;
        let want = read_f64(&dir.join(format!("{name}.dec.f64")))?;
        let n = rows.nrows();
        let got = model.decision_function(rows.view())?;
        let max_diff = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        let one = rows_per_second(n, min, || {
            model.decision_function(rows.view())?;
            Ok(())
        })?;
        let two = pool2.install(|| {
            rows_per_second(n, min, || {
                model.decision_function_parallel(rows.view())?;
                Ok(())
            })
        })?;
        let sk = n as f64 / sk_seconds;
        worst1 = worst1.min(one / sk);
        worst2 = worst2.min(two / sk);
        println!(
            "{d:>2} {:>5} {n:>7} {sk:>13.0} {one:>13.0} {:>5.1}x {two:>13.0} {:>5.1}x {max_diff:>9.1e}",
            model.n_support_vectors(),
            one / sk,
            two / sk
        );
    }
    println!("worst ratio: {worst1:.1}x on one core (goal 10x), {worst2:.1}x on two (goal 20x)");
    Ok(())
}
