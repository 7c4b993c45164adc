//! `fleetscore-scorer`: the CLI that runs inside each scoring Job (and on a laptop).
//!
//! Exit codes: 0 when every sensor succeeded, 1 when any sensor (or the run) failed, 2 for a usage
//! or configuration error.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use rayon::prelude::*;

use fleetscore_scorer::data::aggregate::{Aggregation, aggregate, parse_interval_ms};
use fleetscore_scorer::data::generate::{GenerateSpec, generate};
use fleetscore_scorer::data::partition::partition;
use fleetscore_scorer::data::time::parse_timestamp_ms;
use fleetscore_scorer::fleet::{
    FleetError, FleetSpec, SensorSelection, read_readings, score_fleet,
};
use fleetscore_scorer::model::Model;
use fleetscore_scorer::model::train::{Gamma, TrainParams, train};
use fleetscore_scorer::output::{Outcome, SensorRecord};
use fleetscore_scorer::sensor::SensorId;
use fleetscore_scorer::storage::{StorageError, open};

/// Scores IoT sensor readings with one-class SVM models (scikit-learn pickles or native JSON).
///
/// URLs are a local path, file:///..., or az://<container>/<path>. Azure credentials come from the
/// environment only: AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or
/// AZURE_STORAGE_SAS_KEY (or *_FILE variants pointing at mounted secrets), workload identity
/// (AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE), managed identity, or Azurite
/// (AZURE_STORAGE_USE_EMULATOR=true, AZURITE_BLOB_STORAGE_URL).
#[derive(Parser, Debug)]
#[command(name = "fleetscore-scorer", version, about, long_about)]
struct Cli {
    /// Log format on stderr (auto: JSON when stderr is not a terminal).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Score sensors: predictions to <output>/<run-id>/preds/, one JSON log per sensor to logs/.
    Score(ScoreArgs),
    /// Split one long CSV into <output>/device=<D>/tag=<T>/part-0.csv in one pass.
    Partition(PartitionArgs),
    /// Fit a StandardScaler + one-class SVM per sensor; writes <models>/model_<D>_<T>.json.
    Train(TrainArgs),
    /// Write synthetic fleet readings (TS,Device,Tag,Value), deterministic for a seed.
    Generate(GenerateArgs),
    /// Describe a model file (kernel, support vectors, features, scaler, source format).
    InspectModel(InspectArgs),
    /// Build <output>/<run-id>/report.html from the run's ledger (records, predictions, summary.json).
    Report(ReportArgs),
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// The run's folder: <output>/<run-id>, holding summary.json, logs/ and preds/.
    url: String,
}

#[derive(Args, Debug)]
struct ScoreArgs {
    /// Models URL: a prefix holding model_<D>_<T>[.json|.pkl|.joblib].
    #[arg(long)]
    models: String,
    /// Data URL: one long CSV (ends in .csv) or a partitioned prefix (device=<D>/tag=<T>/*.csv).
    #[arg(long)]
    data: String,
    /// Output URL; results go under <output>/<run-id>/ (a re-run overwrites them).
    #[arg(long)]
    output: String,
    /// The run's id (a path segment under the output).
    #[arg(long)]
    run_id: String,
    /// A sensor to score, DEVICE:TAG (repeat, or comma-separate, for several).
    #[arg(
        long = "sensor",
        value_name = "DEVICE:TAG",
        value_delimiter = ',',
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    sensors: Vec<SensorId>,
    /// Score every sensor that has a model under --models.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    agg: AggArgs,
    /// Fail a sensor at its first missing or malformed value (default: count and skip them).
    #[arg(long)]
    strict: bool,
    /// Fail a sensor whose bad rows (missing, non-numeric, non-finite, wrong field count) are more
    /// than this percentage of its rows, naming the first; 100 never fails.
    #[arg(long, default_value_t = fleetscore_scorer::fleet::DEFAULT_MAX_BAD_ROWS_PERCENT, value_parser = percent)]
    max_bad_rows_percent: f64,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Device-level models: each model_<D>_<T> reads these tags of device D per row, aligned by
    /// timestamp (or by --aggregate window: each tag's --features in turn). Long CSV only.
    #[arg(long, value_name = "TAG,...", value_delimiter = ',')]
    device_features: Option<Vec<String>>,
    /// Progress bar on stderr (auto: only on a terminal).
    #[arg(long, value_enum, default_value_t = Progress::Auto)]
    progress: Progress,
    /// Also print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Clone)]
struct AggArgs {
    /// Aggregate readings into fixed windows before scoring, e.g. 1m, 5m, 1h.
    #[arg(long, value_name = "INTERVAL")]
    aggregate: Option<String>,
    /// Per-window features, in the model's input order (with --aggregate).
    #[arg(
        long,
        value_name = "LIST",
        default_value = "mean",
        requires = "aggregate"
    )]
    features: String,
}

impl AggArgs {
    fn parse(&self) -> anyhow::Result<Option<Aggregation>> {
        self.aggregate
            .as_deref()
            .map(|i| Aggregation::parse(i, &self.features))
            .transpose()
            .map_err(|e| anyhow!(e))
    }
}

#[derive(Args, Debug)]
struct PartitionArgs {
    /// The long CSV to split.
    #[arg(long)]
    input: String,
    /// Fail (exit 1, nothing written) when lines naming no sensor are more than this percentage.
    #[arg(long, default_value_t = fleetscore_scorer::fleet::DEFAULT_MAX_BAD_ROWS_PERCENT, value_parser = percent)]
    max_bad_rows_percent: f64,
    /// Output prefix.
    #[arg(long)]
    output: String,
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// Training data URL (long CSV or partitioned prefix).
    #[arg(long)]
    data: String,
    /// Where to write model_<D>_<T>.json.
    #[arg(long)]
    models: String,
    /// Sensors to train (default: every sensor in the data).
    #[arg(long = "sensor", value_name = "DEVICE:TAG", value_delimiter = ',')]
    sensors: Vec<SensorId>,
    /// nu in (0, 1]: upper bound on the fraction of training outliers.
    #[arg(long, default_value_t = 0.5)]
    nu: f64,
    /// Kernel coefficient: scale, auto or a positive number.
    #[arg(long, default_value = "scale")]
    gamma: String,
    /// Most training rows per sensor: more are thinned to this many evenly spaced rows, which
    /// moves the boundary and the Score scale (the library's default, so both agree).
    #[arg(long, default_value_t = fleetscore_scorer::model::train::TrainParams::default().max_rows)]
    max_rows: usize,
    #[command(flatten)]
    agg: AggArgs,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// Where to write the CSV.
    #[arg(long)]
    output: String,
    /// Number of devices.
    #[arg(long, default_value_t = 10)]
    devices: u32,
    /// Tags per device.
    #[arg(long, default_value_t = 10)]
    tags: u32,
    /// Time between readings.
    #[arg(long, default_value = "1m")]
    interval: String,
    /// Time covered.
    #[arg(long, default_value = "1d")]
    duration: String,
    /// First timestamp (UTC).
    #[arg(long, default_value = "2018-08-28 23:00:00")]
    start: String,
    /// Seed (same seed, same bytes).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Probability that a reading is a spike.
    #[arg(long, default_value_t = 0.001)]
    anomaly_rate: f64,
    /// Drift over the whole duration, in noise units.
    #[arg(long, default_value_t = 0.0)]
    drift: f64,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// The model's URL.
    url: String,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    Auto,
    Always,
    Never,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Auto,
    Json,
    Text,
}

/// A command's failure with its exit code.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 2,
            error: error.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self {
            code: 1,
            error: e.into(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Score(a) => score(a).await,
            Command::Partition(a) => partition_cmd(a).await,
            Command::Train(a) => train_cmd(a).await,
            Command::Generate(a) => generate_cmd(a).await,
            Command::InspectModel(a) => inspect(a).await,
            Command::Report(a) => report_cmd(a).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Maps a storage error to an exit code: a malformed URL is a usage error.
fn storage_failure(e: StorageError) -> Failure {
    match e {
        StorageError::BadUrl { .. } | StorageError::LocalPath { .. } => Failure::usage(e),
        e => Failure::from(e),
    }
}

async fn score(a: ScoreArgs) -> Result<ExitCode, Failure> {
    let aggregation = a.agg.parse().map_err(Failure::usage)?;
    if a.threads == Some(0) {
        return Err(Failure::usage(anyhow!("--threads must be at least 1")));
    }
    let spec = FleetSpec {
        models: a.models,
        data: a.data,
        output: a.output,
        run_id: a.run_id,
        sensors: if a.all {
            SensorSelection::All
        } else {
            SensorSelection::List(a.sensors)
        },
        aggregation,
        strict: a.strict,
        max_bad_rows_percent: a.max_bad_rows_percent,
        threads: a.threads,
        device_features: a.device_features,
    };
    if spec
        .device_features
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.iter().any(|t| t.is_empty()))
    {
        return Err(Failure::usage(anyhow!(
            "--device-features needs a comma-separated list of tags"
        )));
    }
    let tty = std::io::stderr().is_terminal();
    let show_bar = match a.progress {
        Progress::Always => true,
        Progress::Never => false,
        Progress::Auto => tty,
    };
    let total = match &spec.sensors {
        SensorSelection::List(l) => Some(l.len() as u64),
        SensorSelection::All => None,
    };
    // A bar on a terminal; with --progress always on a non-terminal, a text line every ~5%.
    let bar = (show_bar && tty).then(|| {
        let bar = indicatif::ProgressBar::new(total.unwrap_or(0));
        let template = if total.is_some() {
            "{bar:40} {pos}/{len} sensors, {msg} [{elapsed}]"
        } else {
            "{spinner} {pos} sensors, {msg} [{elapsed}]"
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let text_progress = show_bar && !tty;
    let done = AtomicUsize::new(0);
    let failed = AtomicUsize::new(0);
    let on_done = |rec: &SensorRecord| {
        if rec.outcome == Outcome::Failed {
            failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(sensor = %rec.sensor, error = rec.error.as_deref().unwrap_or(""), "sensor failed");
        } else {
            tracing::debug!(sensor = %rec.sensor, rows = rec.rows, anomalies = rec.anomalies, "sensor scored");
        }
        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
        let f = failed.load(Ordering::Relaxed);
        if let Some(bar) = &bar {
            bar.inc(1);
            bar.set_message(format!("{f} failed"));
        } else if text_progress {
            let step = total.map_or(100, |t| (t / 20).max(1)) as usize;
            if n.is_multiple_of(step) || total == Some(n as u64) {
                match total {
                    Some(t) => eprintln!("progress: {n}/{t} sensors, {f} failed"),
                    None => eprintln!("progress: {n} sensors, {f} failed"),
                }
            }
        }
    };
    tracing::info!(models = %spec.models, data = %spec.data, output = %spec.output, run_id = %spec.run_id, "scoring");
    let result = score_fleet(&spec, on_done).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let summary = match result {
        Ok(s) => s,
        Err(FleetError::Storage(e)) => return Err(storage_failure(e)),
        Err(e @ FleetError::Config(_)) => return Err(Failure::usage(e)),
        Err(e) => return Err(e.into()),
    };
    println!(
        "run {} ({} → {}/{})",
        spec.run_id,
        spec.data,
        spec.output.trim_end_matches('/'),
        spec.run_id
    );
    print!("{}", summary.render());
    if a.json {
        println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    }
    tracing::info!(
        sensors = summary.sensors,
        succeeded = summary.succeeded,
        failed = summary.failed,
        rows = summary.rows,
        anomalies = summary.anomalies,
        wall_ms = summary.wall_ms,
        "run finished"
    );
    Ok(exit_code(&summary))
}

/// Exit code of a scoring pass whose failures retries cannot fix (the operator's Jobs match it in
/// their podFailurePolicy and fail at once instead of retrying).
const EXIT_PERMANENT: u8 = 3;

/// 0 when every sensor succeeded; [`EXIT_PERMANENT`] when every failed sensor has no model; else 1.
fn exit_code(summary: &fleetscore_scorer::fleet::FleetSummary) -> ExitCode {
    if summary.all_succeeded() {
        ExitCode::SUCCESS
    } else if summary.failed > 0 && summary.failed == summary.failed_without_model {
        ExitCode::from(EXIT_PERMANENT)
    } else {
        ExitCode::from(1)
    }
}

async fn partition_cmd(a: PartitionArgs) -> Result<ExitCode, Failure> {
    let start = Instant::now();
    let input = open(&a.input).map_err(storage_failure)?;
    let out = open(&a.output).map_err(storage_failure)?;
    let buf = input.get().await?;
    let read_s = start.elapsed().as_secs_f64();
    let file = a.input.clone();
    let size = buf.len();
    let parts = tokio::task::spawn_blocking(move || partition(&file, &buf))
        .await
        .context("partition task")??;
    let rows: usize = parts.parts.iter().map(|p| p.rows).sum();
    let n = parts.parts.len();
    // Lines naming no sensor never reach a part file: the policy must be applied here.
    let first = parts
        .first_bad_row
        .as_ref()
        .map(|f| format!("{f}: the line names no sensor"));
    if let Err(e) = fleetscore_scorer::fleet::check_bad_rows(
        parts.bad_rows,
        rows,
        a.max_bad_rows_percent,
        first.as_deref(),
    ) {
        eprintln!("error: {}: lines naming no sensor: {e}", a.input);
        return Ok(ExitCode::from(1));
    }
    let mut writes = futures::stream::iter(parts.parts.into_iter().map(|p| {
        let dest = out.child(&p.path);
        async move { dest.put(p.content).await }
    }))
    .buffer_unordered(32);
    while let Some(r) = writes.next().await {
        r?;
    }
    println!(
        "partitioned {} ({:.1} MB, read in {:.2} s): {n} sensors, {rows} rows, {} bad lines left out → {}",
        a.input,
        size as f64 / 1e6,
        read_s,
        parts.bad_rows,
        a.output
    );
    println!("total {:.2} s", start.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

async fn train_cmd(a: TrainArgs) -> Result<ExitCode, Failure> {
    let aggregation = a.agg.parse().map_err(Failure::usage)?;
    let gamma: Gamma = a
        .gamma
        .parse()
        .map_err(|e: String| Failure::usage(anyhow!(e)))?;
    let params = TrainParams {
        nu: a.nu,
        gamma,
        max_rows: a.max_rows,
        ..TrainParams::default()
    };
    let models = open(&a.models).map_err(storage_failure)?;
    let select: Option<HashSet<SensorId>> =
        (!a.sensors.is_empty()).then(|| a.sensors.iter().cloned().collect());
    let (readings, _) = match read_readings(&a.data, select.as_ref(), aggregation.is_some()).await {
        Ok(r) => r,
        Err(FleetError::Storage(e)) => return Err(storage_failure(e)),
        Err(e) => return Err(e.into()),
    };
    if readings.is_empty() {
        return Err(anyhow!("no readings for the selected sensors in {}", a.data).into());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.unwrap_or(0))
        .build()?;
    let fitted: Vec<(SensorId, Result<Vec<u8>, String>)> = pool.install(|| {
        readings
            .into_par_iter()
            .map(|(sensor, series)| {
                let x = match &aggregation {
                    None => {
                        ndarray::Array2::from_shape_vec((series.len(), 1), series.values.clone())
                            .map_err(|e| e.to_string())
                    }
                    Some(agg) => Ok(aggregate(agg, &series.time_ms, &series.values).x),
                };
                let r = x.and_then(|x| {
                    let mut m = train(x.view(), &params).map_err(|e| e.to_string())?;
                    // Record the aggregation contract, so scoring with another is refused.
                    if let Some(agg) = &aggregation {
                        m.meta_mut().aggregate = Some(agg.interval_text());
                        m.meta_mut().feature_names =
                            Some(agg.features_text().split(',').map(str::to_string).collect());
                    }
                    m.to_native_bytes().map_err(|e| e.to_string())
                });
                (sensor, r)
            })
            .collect()
    });
    let mut failed = 0;
    let total = fitted.len();
    for (sensor, r) in fitted {
        match r {
            Ok(bytes) => {
                let dest = models.child(&format!("{}.json", sensor.model_stem()));
                if let Err(e) = dest.put(Bytes::from(bytes)).await {
                    failed += 1;
                    eprintln!("sensor {sensor}: writing the model: {e}");
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("sensor {sensor}: training failed: {e}");
            }
        }
    }
    println!(
        "trained {} of {total} sensors → {}",
        total - failed,
        a.models
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn generate_cmd(a: GenerateArgs) -> Result<ExitCode, Failure> {
    let interval_ms = parse_interval_ms(&a.interval).map_err(Failure::usage)?;
    let duration_ms = parse_interval_ms(&a.duration).map_err(Failure::usage)?;
    let start_ms = parse_timestamp_ms(a.start.as_bytes())
        .ok_or_else(|| Failure::usage(anyhow!("--start {:?} is not a timestamp", a.start)))?;
    if !(0.0..=1.0).contains(&a.anomaly_rate) {
        return Err(Failure::usage(anyhow!(
            "--anomaly-rate must be within [0, 1]"
        )));
    }
    let spec = GenerateSpec {
        devices: a.devices,
        tags: a.tags,
        interval_ms,
        duration_ms,
        start_ms,
        seed: a.seed,
        anomaly_rate: a.anomaly_rate,
        drift: a.drift,
    };
    let dest = open(&a.output).map_err(storage_failure)?;
    let t = Instant::now();
    let buf = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        generate(&spec, &mut buf).map(|_| buf)
    })
    .await
    .context("generator task")??;
    let size = buf.len();
    dest.put(Bytes::from(buf)).await?;
    println!(
        "wrote {} ({} devices × {} tags, {:.1} MB) in {:.2} s",
        a.output,
        a.devices,
        a.tags,
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

async fn report_cmd(a: ReportArgs) -> Result<ExitCode, Failure> {
    let info = fleetscore_scorer::report::rebuild(&a.url).await?;
    println!(
        "wrote {} ({} sensors, {} plots, {} bytes)",
        info.url, info.sensors, info.plots, info.bytes
    );
    Ok(ExitCode::SUCCESS)
}

async fn inspect(a: InspectArgs) -> Result<ExitCode, Failure> {
    let loc = open(&a.url).map_err(storage_failure)?;
    let bytes = loc.get().await?;
    let model = Model::from_bytes(&bytes).with_context(|| format!("reading {}", a.url))?;
    let info = model.info();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("model            {}", a.url);
    println!("source           {}", info.source);
    if let Some(v) = &info.sklearn_version {
        println!("sklearn version  {v}");
    }
    if let Some(t) = &info.trained_by {
        println!("trained by       {t}");
    }
    println!("estimator        {}", info.estimator);
    println!("features         {}", info.n_features);
    if let Some(names) = &info.feature_names {
        println!("feature names    {}", names.join(", "));
    }
    if let Some(k) = info.kernel {
        println!("kernel           {}", k.name());
        println!("support vectors  {}", info.n_support_vectors);
    }
    if let Some(g) = info.gamma {
        println!("gamma            {g}");
    }
    if let Some(nu) = info.nu {
        println!("nu               {nu}");
    }
    if let Some(i) = info.intercept {
        println!("intercept        {i}");
    }
    if let Some(n) = info.n_estimators {
        println!("trees            {n}");
    }
    if let Some(m) = info.max_samples {
        println!("max samples      {m}");
    }
    if let Some(o) = info.offset {
        println!("offset           {o}");
    }
    match info.scaler {
        Some(s) => println!(
            "scaler           StandardScaler(with_mean={}, with_std={})",
            s.with_mean, s.with_std
        ),
        None => println!("scaler           none"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `--max-bad-rows-percent`: a number from 0 to 100.
fn percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a percentage from 0 to 100")),
    }
}
