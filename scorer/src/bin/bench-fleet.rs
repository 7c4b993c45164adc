//! Fleet benchmark: 1,000 devices × 10 tags × one day of 1-minute readings in one long CSV,
//! scored end to end by fleetscore, against the reference's way (one Python process per sensor
//! doing what predict.py does: read the whole CSV, filter, unpickle, predict, write), timed on a
//! sample of sensors in the same run and scaled to the fleet. Also CSV ingest MB/s against
//! pandas.read_csv on the same file. Run in release:
//!
//! `cargo run --release -p fleetscore-scorer --bin bench-fleet -- [--quick] [--sample N]`
//!
//! Data and models are made once and kept under ~/.cache/fleetscore/bench/.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;

use fleetscore_scorer::data::csv::{CsvOptions, parse};
use fleetscore_scorer::data::generate::{GenerateSpec, generate};
use fleetscore_scorer::fleet::{FleetSpec, SensorSelection, score_fleet};

/// Fleet benchmark against the reference's one-process-per-sensor Python scoring.
#[derive(Parser, Debug)]
struct Args {
    /// Small fleet (100 devices × 10 tags) for a fast check.
    #[arg(long)]
    quick: bool,
    /// Sensors timed with the reference's way (one Python process each).
    #[arg(long, default_value_t = 5)]
    sample: usize,
    /// Worker threads for fleetscore (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Only measure CSV ingest (ours vs pandas), skip scoring.
    #[arg(long)]
    ingest_only: bool,
    /// Where data, models and outputs are kept.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The reference's predict.py, per sensor: read the whole CSV, filter, unpickle, predict, write.
const PREDICT_PY: &str = r#"
import sys, time, pickle
import numpy as np
import pandas as pd
data, models, out, device, tag = sys.argv[1:6]
df = pd.read_csv(data)
df = df[(df["Device"] == int(device)) & (df["Tag"] == int(tag))]
with open(f"{models}/model_{device}_{tag}.pkl", "rb") as f:
    model = pickle.load(f)
pred = model.predict(df[["Value"]].values)
df = df.rename(columns={"Value": "Val"})
df["Prediction"] = np.where(pred == 1, 0, 1)
stamp = time.strftime("%Y%m%d%H%M%S")
df.to_csv(f"{out}/preds_{device}_{tag}_{stamp}.csv", index=False)
"#;

/// Fits one sklearn Pipeline(StandardScaler, OneClassSVM) per sensor on a sample of its rows and
/// pickles it: the reference's model format.
const FIT_PY: &str = r#"
import sys, pickle, os
import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM
data, models, rows = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(models, exist_ok=True)
df = pd.read_csv(data)
n = 0
for (d, t), g in df.groupby(["Device", "Tag"], sort=True):
    v = g["Value"].values
    idx = np.linspace(0, len(v) - 1, min(rows, len(v))).astype(int)
    m = Pipeline([("scaler", StandardScaler()), ("svm", OneClassSVM(nu=0.05, gamma="scale"))])
    m.fit(v[idx].reshape(-1, 1))
    with open(f"{models}/model_{d}_{t}.pkl", "wb") as f:
        pickle.dump(m, f)
    n += 1
print(n)
"#;

/// pandas.read_csv on the same file, timed inside the process (import time excluded).
const PANDAS_PY: &str = r#"
import sys, time
import pandas as pd
best = None
for _ in range(int(sys.argv[2])):
    t = time.perf_counter()
    df = pd.read_csv(sys.argv[1])
    dt = time.perf_counter() - t
    best = dt if best is None else min(best, dt)
print(best, len(df))
"#;

fn python() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("FLEETSCORE_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = PathBuf::from(home).join(".cache/fleetscore/venv/bin/python");
    if p.exists() {
        Ok(p)
    } else {
        bail!(
            "no Python with scikit-learn: set FLEETSCORE_PYTHON or create {}",
            p.display()
        )
    }
}

fn py(python: &Path, script: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .context("running python")?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (devices, tags) = if args.quick { (100, 10) } else { (1000, 10) };
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/fleetscore/bench")
        }
    };
    let name = format!("fleet-{devices}x{tags}x1440");
    let work = dir.join(&name);
    std::fs::create_dir_all(&work)?;
    let csv = work.join("readings.csv");
    let models = work.join("models");
    let python = python()?;
    for (file, text) in [
        ("predict.py", PREDICT_PY),
        ("fit.py", FIT_PY),
        ("pandas_read.py", PANDAS_PY),
    ] {
        std::fs::write(work.join(file), text)?;
    }

    let spec = GenerateSpec {
        devices,
        tags,
        anomaly_rate: 0.001,
        ..GenerateSpec::default()
    };
    if !csv.exists() {
        let t = Instant::now();
        let tmp = work.join("readings.csv.tmp");
        let mut w = BufWriter::with_capacity(1 << 22, std::fs::File::create(&tmp)?);
        generate(&spec, &mut w)?;
        w.flush()?;
        drop(w);
        std::fs::rename(&tmp, &csv)?;
        eprintln!(
            "generated {} in {:.1} s",
            csv.display(),
            t.elapsed().as_secs_f64()
        );
    }
    let size = std::fs::metadata(&csv)?.len();
    let done_marker = models.join(".complete");
    if !done_marker.exists() {
        let t = Instant::now();
        let n = py(
            &python,
            &work.join("fit.py"),
            &[
                csv.to_str().unwrap_or_default(),
                models.to_str().unwrap_or_default(),
                "200",
            ],
        )?;
        std::fs::write(&done_marker, &n)?;
        eprintln!(
            "fitted {n} sklearn models (200 rows each, nu=0.05) in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let n_sensors = (devices * tags) as usize;
    println!(
        "fleet: {devices} devices × {tags} tags × 1440 readings = {} rows, {:.1} MB CSV, {n_sensors} sklearn pickles",
        spec.rows(),
        size as f64 / 1e6
    );

    // Page the file in once so both readers start from the page cache.
    let buf = bytes::Bytes::from(std::fs::read(&csv)?);

    // 1. CSV ingest: our parser (all sensors, grouped) vs pandas.read_csv.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.unwrap_or(0))
        .build()?;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let parsed = pool.install(|| parse("readings.csv", &buf, &CsvOptions::default()))?;
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(parsed.rows as u64, spec.rows());
    }
    let ours_mbs = size as f64 / 1e6 / best;
    let pandas = py(
        &python,
        &work.join("pandas_read.py"),
        &[csv.to_str().unwrap_or_default(), "2"],
    )?;
    let pandas_s: f64 = pandas
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0.0);
    let pandas_mbs = size as f64 / 1e6 / pandas_s.max(1e-9);
    println!(
        "csv ingest: fleetscore {ours_mbs:.0} MB/s ({best:.3} s, {} threads, parse + group per sensor) | pandas.read_csv {pandas_mbs:.0} MB/s ({pandas_s:.3} s) | ratio {:.2}x",
        pool.current_num_threads(),
        ours_mbs / pandas_mbs
    );
    drop(buf);
    if args.ingest_only {
        return Ok(());
    }

    // 2. fleetscore end to end: one CSV → 10k predictions + logs.
    let out = work.join("out");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let fleet = FleetSpec {
        models: models.to_string_lossy().into_owned(),
        data: csv.to_string_lossy().into_owned(),
        output: out.to_string_lossy().into_owned(),
        run_id: "bench".into(),
        sensors: SensorSelection::All,
        aggregation: None,
        strict: false,
        max_bad_rows_percent: fleetscore_scorer::fleet::DEFAULT_MAX_BAD_ROWS_PERCENT,
        threads: args.threads,
        device_features: None,
    };
    let t = Instant::now();
    let summary = runtime.block_on(score_fleet(&fleet, |_| {}))?;
    let ours_s = t.elapsed().as_secs_f64();
    if !summary.all_succeeded() {
        bail!("fleetscore run failed:\n{}", summary.render());
    }
    println!(
        "fleetscore: {} sensors, {} rows scored in {ours_s:.2} s ({:.0} rows/s; read {:.0} ms, parse {:.0} ms), {} anomalies",
        summary.sensors,
        summary.rows,
        summary.rows_per_sec(),
        summary.data_read_ms,
        summary.data_parse_ms,
        summary.anomalies
    );

    // 3. The reference's way on a sample of sensors, one Python process each, scaled.
    let ref_out = work.join("ref-out");
    std::fs::create_dir_all(&ref_out)?;
    let sample = args.sample.max(1).min(n_sensors);
    let mut times = Vec::new();
    let mut differing = 0;
    for i in 0..sample {
        // Spread the sample over the fleet.
        let s = i * n_sensors / sample;
        let (d, tg) = (s / tags as usize + 1, s % tags as usize + 1);
        let t = Instant::now();
        py(
            &python,
            &work.join("predict.py"),
            &[
                csv.to_str().unwrap_or_default(),
                models.to_str().unwrap_or_default(),
                ref_out.to_str().unwrap_or_default(),
                &d.to_string(),
                &tg.to_string(),
            ],
        )?;
        times.push(t.elapsed().as_secs_f64());
        // Check the two agree on this sensor's predictions.
        let ours = std::fs::read_to_string(out.join(format!("bench/preds/preds_{d}_{tg}.csv")))?;
        let theirs_file = std::fs::read_dir(&ref_out)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("preds_{d}_{tg}_")))
            })
            .max()
            .context("reference output missing")?;
        let theirs = std::fs::read_to_string(theirs_file)?;
        let col = |text: &str, i: usize| -> Vec<String> {
            text.lines()
                .skip(1)
                .map(|l| l.split(',').nth(i).unwrap_or("").to_string())
                .collect()
        };
        let agree = col(&ours, 4)
            .iter()
            .zip(col(&theirs, 4))
            .filter(|(a, b)| *a == b)
            .count();
        if agree != col(&ours, 4).len() || col(&theirs, 4).len() != col(&ours, 4).len() {
            differing += 1;
            println!(
                "  warning: sensor {d}:{tg}: predictions agree on {agree} of {} rows",
                col(&ours, 4).len()
            );
        }
    }
    let per_sensor = times.iter().sum::<f64>() / times.len() as f64;
    let ref_total = per_sensor * n_sensors as f64;
    println!(
        "reference (predict.py, one process per sensor): {per_sensor:.2} s/sensor over {sample} sampled sensors ({}), × {n_sensors} = {ref_total:.0} s",
        if differing == 0 {
            "predictions identical".to_string()
        } else {
            format!("{differing} sensors differ")
        }
    );
    println!("speed-up: {:.0}x (goal ≥ 1000x)", ref_total / ours_s);
    Ok(())
}
