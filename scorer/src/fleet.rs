//! Scoring a fleet (C3): read the data once, score every selected sensor in parallel, write each
//! sensor's predictions and log record. A failing sensor gets a Failed record and never stops or
//! hides the others.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::data::aggregate::{Aggregation, aggregate};
use crate::data::csv::{CsvOptions, parse};
use crate::data::device::device_rows;
use crate::data::time::format_ms;
use crate::data::{DataError, Series};
use crate::model::{Model, ModelError};
use crate::output::{PredsWriter, SensorRecord, log_path, preds_path};
use crate::sensor::SensorId;
use crate::storage::{Location, StorageError, open};

/// Which sensors to score.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SensorSelection {
    /// These sensors.
    List(Vec<SensorId>),
    /// Every sensor with a model under the models URL.
    All,
}

/// A fleet scoring run (the `score` command's arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetSpec {
    /// Models URL (prefix holding `model_<D>_<T>[.pkl|.joblib|.json]`).
    pub models: String,
    /// Data URL: one long CSV (ends in `.csv`) or a partitioned prefix.
    pub data: String,
    /// Output URL; results go under `<output>/<run_id>/`.
    pub output: String,
    /// The run's id.
    pub run_id: String,
    /// Which sensors.
    pub sensors: SensorSelection,
    /// Optional windowed aggregation before scoring.
    pub aggregation: Option<Aggregation>,
    /// Fail a sensor on its first missing or malformed value instead of skipping it.
    pub strict: bool,
    /// Most bad rows (missing, non-numeric or non-finite values, bad timestamps, wrong field
    /// count) a sensor may have, as a percentage of its rows, before it fails naming the first.
    #[serde(default = "default_max_bad_rows_percent")]
    pub max_bad_rows_percent: f64,
    /// Worker threads (None: one per core).
    pub threads: Option<usize>,
    /// Device-level models (`--device-features`): each model `model_<D>_<T>` reads these tags of
    /// device D per row, aligned by timestamp or window (see [`crate::data::device`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_features: Option<Vec<String>>,
}

/// The default bad-row policy: a sensor fails when more than 1% of its rows are bad.
pub const DEFAULT_MAX_BAD_ROWS_PERCENT: f64 = 1.0;

fn default_max_bad_rows_percent() -> f64 {
    DEFAULT_MAX_BAD_ROWS_PERCENT
}

/// Applies the bad-row policy: an error naming the first bad row when `bad` of `bad + good` rows
/// is above `max_percent` (`--strict` is a limit of 0 that also fails on a single bad row).
pub fn check_bad_rows(
    bad: usize,
    good: usize,
    max_percent: f64,
    first: Option<&str>,
) -> Result<(), String> {
    let total = bad + good;
    if bad == 0 || total == 0 {
        return Ok(());
    }
    let pct = bad as f64 * 100.0 / total as f64;
    if pct <= max_percent {
        return Ok(());
    }
    let first = first.map_or(String::new(), |f| format!("; first: {f}"));
    Err(format!(
        "{bad} of {total} rows are bad ({pct:.2}%, above --max-bad-rows-percent {max_percent}){first}"
    ))
}

/// Why a whole run could not proceed (per-sensor failures are records, not errors).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// A URL could not be opened or the models could not be listed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The long CSV could not be read (e.g. its header is wrong).
    #[error(transparent)]
    Data(#[from] DataError),
    /// The settings are inconsistent.
    #[error("invalid run settings: {0}")]
    Config(String),
    /// Nothing to score.
    #[error("no sensors to score: {0}")]
    NoSensors(String),
}

/// The outcome of a fleet run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FleetSummary {
    /// Sensors attempted.
    pub sensors: usize,
    /// Sensors that succeeded.
    pub succeeded: usize,
    /// Sensors that failed.
    pub failed: usize,
    /// Failed sensors that had no model (a retry cannot help them).
    #[serde(default)]
    pub failed_without_model: usize,
    /// Rows scored.
    pub rows: usize,
    /// Rows predicted anomalous.
    pub anomalies: usize,
    /// Rows skipped for missing or malformed values.
    pub skipped_rows: usize,
    /// Lines of the long CSV that named no sensor.
    pub bad_rows: usize,
    /// Bytes of the long CSV read (0 for the partitioned layout).
    pub data_bytes: u64,
    /// Time reading the long CSV, ms.
    pub data_read_ms: f64,
    /// Time parsing and grouping the long CSV, ms.
    pub data_parse_ms: f64,
    /// Wall time of the whole run, ms.
    pub wall_ms: f64,
    /// Failed sensors and why, sorted by sensor.
    pub failures: Vec<(String, String)>,
    /// The first line of the long CSV that named no sensor (file:line: problem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad_row: Option<String>,
    /// Problems not tied to a sensor that fail the run (`--strict`, or over the bad-row limit).
    pub data_errors: Vec<String>,
}

impl FleetSummary {
    /// True when every sensor succeeded and no data error (strict or over the limit) was found.
    pub fn all_succeeded(&self) -> bool {
        self.failed == 0 && self.data_errors.is_empty()
    }

    /// Rows scored per second of wall time.
    pub fn rows_per_sec(&self) -> f64 {
        if self.wall_ms > 0.0 {
            self.rows as f64 / (self.wall_ms / 1000.0)
        } else {
            0.0
        }
    }

    /// A human-readable summary table, failed sensors and reasons after it.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: String| s.push_str(&format!("  {k:<12} {v}\n"));
        line("sensors", self.sensors.to_string());
        line("succeeded", self.succeeded.to_string());
        line("failed", self.failed.to_string());
        line("rows", self.rows.to_string());
        line("anomalies", self.anomalies.to_string());
        line("skipped", self.skipped_rows.to_string());
        if self.bad_rows > 0 {
            line("bad lines", self.bad_rows.to_string());
        }
        line("wall time", format!("{:.3} s", self.wall_ms / 1000.0));
        line("rows/s", format!("{:.0}", self.rows_per_sec()));
        if self.data_bytes > 0 {
            line(
                "data",
                format!(
                    "{:.1} MB read in {:.0} ms, parsed in {:.0} ms",
                    self.data_bytes as f64 / 1e6,
                    self.data_read_ms,
                    self.data_parse_ms
                ),
            );
        }
        for e in &self.data_errors {
            s.push_str(&format!("  data error: {e}\n"));
        }
        if !self.failures.is_empty() {
            s.push_str("failed sensors:\n");
            // Each error already names its sensor.
            for (_, err) in &self.failures {
                s.push_str(&format!("  {err}\n"));
            }
        }
        s
    }
}

/// Where a sensor's readings come from.
enum SensorData {
    /// Already parsed from the long CSV (None: the sensor has no rows there).
    Parsed(Option<Series>),
    /// To be read from `<data>/device=<D>/tag=<T>/*.csv`.
    Partitioned,
    /// `--device-features`: the device's configured tags, each parsed from the long CSV.
    Device(Vec<Option<Series>>),
}

/// What every sensor task shares.
struct Ctx {
    spec: FleetSpec,
    data: Location,
    out: Location,
    pool: rayon::ThreadPool,
    /// One sensor alone may use every thread for its rows.
    parallel_rows: bool,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Is the data URL one long CSV (not a partitioned prefix)?
pub fn is_long_csv(url: &str) -> bool {
    url.trim_end_matches('/')
        .to_ascii_lowercase()
        .ends_with(".csv")
}

/// Model file extensions, in order of preference when several exist for one sensor.
const MODEL_EXTS: [&str; 4] = [".json", ".pkl", ".joblib", ""];

/// Scaler sidecar suffixes: `model_<D>_<T>.scaler.pkl` / `.scaler.joblib` holds the fitted
/// `StandardScaler` of a bare model saved on its own (see scorer/MODEL_FORMAT.md).
const SCALER_SIDECARS: [&str; 2] = [".scaler.pkl", ".scaler.joblib"];

/// The sensor whose scaler sidecar a file name is, if it is one.
pub fn scaler_sidecar_sensor(name: &str) -> Option<SensorId> {
    let stem = SCALER_SIDECARS.iter().find_map(|s| name.strip_suffix(s))?;
    SensorId::from_model_file_name(stem)
}

/// Lists the models prefix: each sensor's chosen model object. Names with more than one `_`
/// (the reference's `model_<D>_<T>` for a device or tag holding `_`) name no sensor for sure and
/// are left out; [`score_fleet`] still uses them for sensors asked for by name.
pub async fn list_models(models: &Location) -> Result<BTreeMap<SensorId, Location>, StorageError> {
    Ok(scan_models(models).await?.found)
}

/// Sensors' model objects and scaler sidecars (a sensor's sidecar is used only with its model).
type ModelsAndScalers = (BTreeMap<SensorId, Location>, BTreeMap<SensorId, Location>);

/// Lists the models prefix once: each sensor's chosen model object, and its scaler sidecar if any.
pub async fn list_models_and_scalers(models: &Location) -> Result<ModelsAndScalers, StorageError> {
    let scan = scan_models(models).await?;
    Ok((scan.found, scan.scalers))
}

/// One listing of the models prefix, best extension first.
struct ModelScan {
    /// Sensor → model.
    found: BTreeMap<SensorId, Location>,
    /// Ambiguous `model_…` stem → model (the reference's names with more than one `_`).
    ambiguous: BTreeMap<String, Location>,
    /// Sensor → scaler sidecar.
    scalers: BTreeMap<SensorId, Location>,
}

async fn scan_models(models: &Location) -> Result<ModelScan, StorageError> {
    let mut found: BTreeMap<SensorId, (usize, String)> = BTreeMap::new();
    let mut ambiguous: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut scalers: BTreeMap<SensorId, (usize, String)> = BTreeMap::new();
    let better = |map_rank: Option<usize>, rank: usize| map_rank.is_none_or(|r| rank < r);
    for path in models.list().await? {
        let Some(rel) = models.relative(&path) else {
            continue;
        };
        if rel.contains('/') {
            continue;
        }
        // Listed names come percent-encoded by object_store (`%` is `%25`); parse the real name.
        let rel = store_decode(&rel);
        if let Some(sensor) = scaler_sidecar_sensor(&rel) {
            // .scaler.pkl before .scaler.joblib, like the models' own order.
            let rank = SCALER_SIDECARS
                .iter()
                .position(|s| rel.ends_with(s))
                .unwrap_or(SCALER_SIDECARS.len());
            if better(scalers.get(&sensor).map(|e| e.0), rank) {
                scalers.insert(sensor, (rank, rel));
            }
            continue;
        }
        let Some(stem) = crate::sensor::model_file_stem(&rel) else {
            continue;
        };
        let stem = format!("model_{stem}");
        let rank = MODEL_EXTS
            .iter()
            .position(|ext| rel == format!("{stem}{ext}"))
            .unwrap_or(MODEL_EXTS.len());
        match SensorId::from_model_file_name(&rel) {
            Some(sensor) => {
                if better(found.get(&sensor).map(|e| e.0), rank) {
                    found.insert(sensor, (rank, rel));
                }
            }
            None => {
                if better(ambiguous.get(&stem).map(|e| e.0), rank) {
                    ambiguous.insert(stem, (rank, rel));
                }
            }
        }
    }
    Ok(ModelScan {
        found: locate(models, found),
        ambiguous: locate(models, ambiguous),
        scalers: locate(models, scalers),
    })
}

/// The chosen object of each key, as a location under `models`.
fn locate<K: Ord>(models: &Location, m: BTreeMap<K, (usize, String)>) -> BTreeMap<K, Location> {
    m.into_iter()
        .map(|(k, (_, rel))| (k, models.child(&rel)))
        .collect()
}

/// Undoes object_store's percent-encoding of a listed path part (`%XX` → the byte).
fn store_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Adds, for each sensor asked for by name without a model of its own, the reference's
/// unescaped `model_<D>_<T>` when no other sensor asked for has that same name.
fn resolve_raw_names(
    sensors: &[SensorId],
    available: &mut BTreeMap<SensorId, Location>,
    raw: &BTreeMap<String, Location>,
) {
    let mut claims: BTreeMap<String, usize> = BTreeMap::new();
    for s in sensors {
        *claims.entry(s.raw_model_stem()).or_default() += 1;
    }
    for s in sensors {
        if available.contains_key(s) {
            continue;
        }
        let stem = s.raw_model_stem();
        if let (Some(loc), Some(1)) = (raw.get(&stem), claims.get(&stem)) {
            available.insert(s.clone(), loc.clone());
        }
    }
}

/// Scores a fleet; `on_sensor_done` is called once per sensor as soon as its record is final.
pub async fn score_fleet(
    spec: &FleetSpec,
    on_sensor_done: impl Fn(&SensorRecord) + Send + Sync,
) -> Result<FleetSummary, FleetError> {
    let start = Instant::now();
    if spec.run_id.is_empty() || spec.run_id.contains('/') {
        return Err(FleetError::Config(format!(
            "run id {:?} must be non-empty and have no '/'",
            spec.run_id
        )));
    }
    let threads = spec.threads.unwrap_or(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("fleetscore-{i}"))
        .build()
        .map_err(|e| FleetError::Config(format!("cannot start {threads} threads: {e}")))?;
    let models = open(&spec.models)?;
    let data = open(&spec.data)?;
    let out = open(&spec.output)?;

    let ModelScan {
        found: mut available,
        ambiguous: raw,
        scalers,
    } = scan_models(&models).await?;
    let sensors: Vec<SensorId> = match &spec.sensors {
        SensorSelection::All => available.keys().cloned().collect(),
        SensorSelection::List(list) => {
            let mut seen = HashSet::new();
            let sensors: Vec<SensorId> = list
                .iter()
                .filter(|s| seen.insert((*s).clone()))
                .cloned()
                .collect();
            resolve_raw_names(&sensors, &mut available, &raw);
            sensors
        }
    };
    if sensors.is_empty() {
        return Err(FleetError::NoSensors(match spec.sensors {
            SensorSelection::All => format!("no model_<D>_<T> files under {}", spec.models),
            SensorSelection::List(_) => "the sensor list is empty".into(),
        }));
    }

    if spec.device_features.is_some() && !is_long_csv(&spec.data) {
        return Err(FleetError::Config(
            "--device-features needs the data as one long CSV".into(),
        ));
    }
    let mut summary = FleetSummary {
        sensors: sensors.len(),
        ..FleetSummary::default()
    };
    let mut parsed: BTreeMap<SensorId, Series> = BTreeMap::new();
    let mut pool = pool;
    if is_long_csv(&spec.data) {
        // One GET and one parallel parse for every sensor: the data is read once, not per sensor.
        let t = Instant::now();
        let buf = data.get().await?;
        summary.data_read_ms = ms(t);
        summary.data_bytes = buf.len() as u64;
        let t = Instant::now();
        let select: HashSet<SensorId> = match &spec.device_features {
            None => sensors.iter().cloned().collect(),
            Some(tags) => sensors
                .iter()
                .flat_map(|s| {
                    tags.iter()
                        .map(|t| SensorId::new(s.device.clone(), t.clone()))
                })
                .collect(),
        };
        // Device rows are aligned by time, so times are parsed for them too.
        let parse_time = spec.aggregation.is_some() || spec.device_features.is_some();
        let file = spec.data.clone();
        let (result, back) = tokio::task::spawn_blocking(move || {
            let opts = CsvOptions {
                strict: false,
                parse_time,
                select: Some(&select),
            };
            let r = pool.install(|| parse(&file, &buf, &opts));
            (r, pool)
        })
        .await
        .map_err(|e| FleetError::Config(format!("parser task failed: {e}")))?;
        pool = back;
        let p = result?;
        summary.data_parse_ms = ms(t);
        summary.bad_rows = p.bad_rows;
        let first = p.first_bad_row.as_ref().map(ToString::to_string);
        if let Some(e) = first.as_ref().filter(|_| spec.strict) {
            summary.data_errors.push(e.clone());
        } else if let Err(e) = check_bad_rows(
            p.bad_rows,
            p.rows - p.bad_rows,
            spec.max_bad_rows_percent,
            first.as_deref(),
        ) {
            // Lines that name no sensor cannot fail one sensor: they fail the run.
            summary
                .data_errors
                .push(format!("{}: lines naming no sensor: {e}", spec.data));
        }
        summary.first_bad_row = first;
        parsed = p.sensors;
    }
    let available = (available, scalers);
    run_sensors(
        spec,
        sensors,
        available,
        parsed,
        data,
        out,
        pool,
        summary,
        start,
        on_sensor_done,
    )
    .await
}

#[allow(clippy::too_many_arguments)] // internal: the two layouts share this tail
async fn run_sensors(
    spec: &FleetSpec,
    sensors: Vec<SensorId>,
    available: ModelsAndScalers,
    mut parsed: BTreeMap<SensorId, Series>,
    data: Location,
    out: Location,
    pool: rayon::ThreadPool,
    mut summary: FleetSummary,
    start: Instant,
    on_sensor_done: impl Fn(&SensorRecord) + Send + Sync,
) -> Result<FleetSummary, FleetError> {
    let long = is_long_csv(&spec.data);
    let threads = pool.current_num_threads();
    let ctx = Arc::new(Ctx {
        spec: spec.clone(),
        data,
        out,
        pool,
        parallel_rows: sensors.len() == 1,
    });
    let tasks = sensors.into_iter().map(|sensor| {
        let model = available.0.get(&sensor).cloned();
        let scaler = available.1.get(&sensor).cloned();
        let input = match (&spec.device_features, long) {
            (Some(tags), _) => SensorData::Device(
                tags.iter()
                    .map(|t| {
                        parsed
                            .get(&SensorId::new(sensor.device.clone(), t.clone()))
                            .cloned()
                    })
                    .collect(),
            ),
            (None, true) => SensorData::Parsed(parsed.remove(&sensor)),
            (None, false) => SensorData::Partitioned,
        };
        let ctx = ctx.clone();
        async move { score_sensor(&ctx, sensor, (model, scaler), input).await }
    });
    // Mostly I/O (object store GET/PUT) per task; CPU work is bounded by the rayon pool.
    let mut stream = futures::stream::iter(tasks).buffer_unordered((threads * 16).max(64));
    let mut records = Vec::new();
    while let Some(rec) = stream.next().await {
        on_sensor_done(&rec);
        records.push(rec);
    }
    records.sort_by(|a, b| (&a.device, &a.tag).cmp(&(&b.device, &b.tag)));
    for r in &records {
        summary.rows += r.rows;
        summary.anomalies += r.anomalies;
        summary.skipped_rows += r.skipped_rows;
        match &r.error {
            None => summary.succeeded += 1,
            Some(e) => {
                summary.failed += 1;
                if r.model.is_none() {
                    summary.failed_without_model += 1;
                }
                summary.failures.push((r.sensor.clone(), e.clone()));
            }
        }
    }
    summary.wall_ms = ms(start);
    Ok(summary)
}

/// The result of a sensor's CPU work.
struct Scored {
    preds: Vec<u8>,
    rows: usize,
    anomalies: usize,
    skipped: usize,
    first_bad_row: Option<String>,
    parse_ms: f64,
    score_ms: f64,
    format_ms: f64,
}

async fn score_sensor(
    ctx: &Ctx,
    sensor: SensorId,
    model: (Option<Location>, Option<Location>),
    input: SensorData,
) -> SensorRecord {
    let spec = &ctx.spec;
    let mut rec = SensorRecord::new(&spec.run_id, &sensor);
    if let Err(e) = score_into(ctx, &sensor, model, input, &mut rec).await {
        rec.fail(format!("sensor {sensor}: {e}"));
        // A re-run under the same id must not leave the previous run's predictions beside a
        // Failed record, looking current.
        let stale = ctx.out.child(&preds_path(&spec.run_id, &sensor));
        if let Err(e) = stale.delete().await
            && let Some(prev) = &mut rec.error
        {
            prev.push_str(&format!("; removing the previous predictions: {e}"));
        }
    }
    let log = ctx.out.child(&log_path(&spec.run_id, &sensor));
    if let Err(e) = log.put(Bytes::from(rec.to_json_line())).await {
        let msg = format!("sensor {sensor}: writing the log record: {e}");
        match &mut rec.error {
            Some(prev) => prev.push_str(&format!("; {msg}")),
            None => rec.fail(msg),
        }
    }
    rec
}

async fn score_into(
    ctx: &Ctx,
    sensor: &SensorId,
    (model, scaler): (Option<Location>, Option<Location>),
    input: SensorData,
    rec: &mut SensorRecord,
) -> Result<(), String> {
    let spec = &ctx.spec;
    let model = model.ok_or_else(|| {
        let (stem, raw) = (sensor.model_stem(), sensor.raw_model_stem());
        let or_raw = if raw == stem {
            String::new()
        } else {
            format!(" (or, unless another sensor asked for has that name, {raw})")
        };
        format!(
            "no model {stem}[.json|.pkl|.joblib]{or_raw} under {}",
            spec.models
        )
    })?;
    rec.model = Some(model.url.clone());
    let t = Instant::now();
    let model_bytes = model
        .get()
        .await
        .map_err(|e| format!("reading the model: {e}"))?;
    let scaler_bytes = match &scaler {
        Some(s) => Some(
            s.get()
                .await
                .map_err(|e| format!("reading the scaler sidecar {}: {e}", s.url))?,
        ),
        None => None,
    };
    let mut parts: Vec<(String, Bytes)> = Vec::new();
    let mut device = None;
    let series = match input {
        SensorData::Device(tags) => {
            device = Some(tags);
            Some(Series::default())
        }
        SensorData::Parsed(series) => {
            Some(series.ok_or_else(|| format!("no readings in {}", spec.data))?)
        }
        SensorData::Partitioned => {
            let dir = ctx.data.child(&format!(
                "device={}/tag={}",
                crate::output::path_segment(&sensor.device),
                crate::output::path_segment(&sensor.tag)
            ));
            let listed = dir.list().await.map_err(|e| e.to_string())?;
            for path in listed.into_iter().filter(|p| p.as_ref().ends_with(".csv")) {
                let rel = dir.relative(&path).unwrap_or_else(|| path.to_string());
                let loc = dir.child(&rel);
                let bytes = loc.get().await.map_err(|e| e.to_string())?;
                parts.push((loc.url, bytes));
            }
            if parts.is_empty() {
                return Err(format!("no readings: no .csv files under {}", dir.url));
            }
            None
        }
    };
    rec.timings.read_ms = ms(t);

    let (tx, rx) = tokio::sync::oneshot::channel();
    let sensor_c = sensor.clone();
    let aggregation = spec.aggregation.clone();
    let strict = spec.strict;
    let max_bad = spec.max_bad_rows_percent;
    let parallel = ctx.parallel_rows;
    let device_tags = spec.device_features.clone().unwrap_or_default();
    let model_name = match &scaler {
        Some(s) => format!("{} with scaler {}", model.url, s.url),
        None => model.url.clone(),
    };
    ctx.pool.spawn(move || {
        let bytes = (&model_bytes[..], scaler_bytes.as_deref());
        let device = device.map(|series| (device_tags, series));
        let r = score_cpu(
            &sensor_c,
            &model_name,
            bytes,
            (series, device),
            parts,
            aggregation.as_ref(),
            (strict, max_bad),
            parallel,
        );
        let _ = tx.send(r);
    });
    let scored = rx
        .await
        .map_err(|_| "the scoring task stopped unexpectedly".to_string())?;
    let scored = match scored {
        Ok(s) => s,
        Err((skipped, e)) => {
            rec.skipped_rows = skipped;
            return Err(e);
        }
    };
    rec.rows = scored.rows;
    rec.anomalies = scored.anomalies;
    rec.skipped_rows = scored.skipped;
    rec.first_bad_row = scored.first_bad_row;
    rec.timings.parse_ms = scored.parse_ms;
    rec.timings.score_ms = scored.score_ms;
    let t = Instant::now();
    let dest = ctx.out.child(&preds_path(&spec.run_id, sensor));
    dest.put(Bytes::from(scored.preds))
        .await
        .map_err(|e| format!("writing predictions: {e}"))?;
    rec.timings.write_ms = scored.format_ms + ms(t);
    rec.predictions = Some(dest.url);
    Ok(())
}

/// `--device-features`: the configured tags and each one's series on this device.
type DeviceInput = (Vec<String>, Vec<Option<Series>>);

/// Parses the model (and partitioned data), aggregates, scores and formats one sensor.
/// On error, returns the skipped-row count so far with the message.
#[allow(clippy::too_many_arguments)] // internal worker with plain inputs
fn score_cpu(
    sensor: &SensorId,
    model_name: &str,
    (model_bytes, scaler_bytes): (&[u8], Option<&[u8]>),
    (series, device): (Option<Series>, Option<DeviceInput>),
    parts: Vec<(String, Bytes)>,
    aggregation: Option<&Aggregation>,
    (strict, max_bad): (bool, f64),
    parallel: bool,
) -> Result<Scored, (usize, String)> {
    let t = Instant::now();
    let model = match scaler_bytes {
        None => Model::from_bytes(model_bytes),
        Some(scaler) => Model::from_bytes_with_scaler(model_bytes, scaler),
    }
    .map_err(|e| (0, format!("loading {model_name}: {e}")))?;
    let series = match series {
        Some(s) => s,
        None => {
            let mut all = Series::default();
            let select: HashSet<SensorId> = [sensor.clone()].into_iter().collect();
            let opts = CsvOptions {
                strict: false,
                parse_time: aggregation.is_some(),
                select: Some(&select),
            };
            for (url, bytes) in &parts {
                let p = parse(url, bytes, &opts).map_err(|e| (all.skipped_rows, e.to_string()))?;
                if let Some(e) = p.first_bad_row.as_ref().filter(|_| strict) {
                    return Err((all.skipped_rows, e.to_string()));
                }
                // A sensor's own part file: lines with a wrong field count are its bad rows too.
                all.skipped_rows += p.bad_rows;
                if all.first_issue.is_none() {
                    all.first_issue = p.first_bad_row;
                }
                for (_, s) in p.sensors {
                    all.append(s);
                }
            }
            all
        }
    };
    let skipped = series.skipped_rows;
    let first_bad_row = series.first_issue.as_ref().map(ToString::to_string);
    if let Some(issue) = first_bad_row.as_ref().filter(|_| strict) {
        return Err((skipped, format!("--strict: {issue}")));
    }
    check_bad_rows(skipped, series.len(), max_bad, first_bad_row.as_deref())
        .map_err(|e| (skipped, e))?;
    let d = model.n_features();
    let (x, ts_windows, ts_text) = match (&device, aggregation) {
        (Some((tags, tag_series)), _) => {
            let refs: Vec<Option<&Series>> = tag_series.iter().map(Option::as_ref).collect();
            // A model fitted on a DataFrame of raw tag columns names them: the order must match.
            if let (Some(names), None) = (model.feature_names(), aggregation)
                && names != tags.as_slice()
            {
                let msg = format!(
                    "{model_name} was fitted on features {} but --device-features gives {}",
                    names.join(","),
                    tags.join(",")
                );
                return Err((skipped, msg));
            }
            let rows = device_rows(&sensor.device, tags, &refs, aggregation)
                .map_err(|e| (skipped, e.to_string()))?;
            (rows.x, None, Some(rows.ts))
        }
        (None, None) => {
            let x = ArrayView2::from_shape((series.len(), 1), &series.values)
                .map_err(|e| (skipped, e.to_string()))?
                .to_owned();
            (x, None, None)
        }
        (None, Some(agg)) => {
            let w = aggregate(agg, &series.time_ms, &series.values);
            (w.x, Some(w.start_ms), None)
        }
    };
    // The aggregation contract: window and feature names, mapped by name when only the order differs.
    // A device-level model's feature names are its tags (checked above), not window features.
    let order = match &device {
        Some(_) => None,
        None => feature_order(model.meta(), aggregation)
            .map_err(|e| (skipped, format!("{model_name}: {e}")))?,
    };
    let x_model = order.map(|idx| x.select(ndarray::Axis(1), &idx));
    if x.ncols() != d {
        let how = match (&device, aggregation) {
            (Some((tags, _)), _) => {
                format!("--device-features {} gives {}", tags.join(","), x.ncols())
            }
            (None, None) => {
                "raw values give 1 feature; use --aggregate/--features to match the model"
                    .to_string()
            }
            (None, Some(a)) => format!(
                "--features {} gives {}",
                a.features_text(),
                a.features.len()
            ),
        };
        return Err((
            skipped,
            format!("{model_name} expects {d} feature(s) per row but {how}"),
        ));
    }
    let parse_ms = ms(t);

    let t = Instant::now();
    let decisions = score(&model, x_model.as_ref().unwrap_or(&x), parallel)
        .map_err(|e| (skipped, format!("scoring with {model_name}: {e}")))?;
    let score_ms = ms(t);

    let t = Instant::now();
    let rows = x.nrows();
    let mut w = PredsWriter::new(sensor, rows);
    let mut anomalies = 0;
    for (i, &dec) in decisions.iter().enumerate() {
        let anomaly = model.is_anomaly(dec);
        anomalies += usize::from(anomaly);
        let val = x[[i, 0]];
        match (&ts_windows, &ts_text) {
            (_, Some(ts)) => w.row(ts[i].as_bytes(), val, anomaly, dec),
            (None, None) => w.row(series.ts_bytes(i), val, anomaly, dec),
            (Some(starts), None) => w.row(format_ms(starts[i]).as_bytes(), val, anomaly, dec),
        }
    }
    Ok(Scored {
        preds: w.finish(),
        rows,
        anomalies,
        skipped,
        first_bad_row,
        parse_ms,
        score_ms,
        format_ms: ms(t),
    })
}

/// Checks a model's recorded aggregation contract against the run's; returns the column order
/// the model wants when its feature names are the run's in another order.
fn feature_order(
    meta: &crate::model::ModelMeta,
    aggregation: Option<&Aggregation>,
) -> Result<Option<Vec<usize>>, String> {
    let run: Option<Vec<String>> =
        aggregation.map(|a| a.features_text().split(',').map(str::to_string).collect());
    if let Some(window) = &meta.aggregate {
        let names = meta
            .feature_names
            .as_ref()
            .map(|n| n.join(","))
            .unwrap_or_default();
        match aggregation {
            None => {
                return Err(format!(
                    "fitted on {window} windows of {names}: score with --aggregate {window} --features {names}"
                ));
            }
            Some(a) if a.interval_text() != *window => {
                return Err(format!(
                    "fitted on {window} windows, but --aggregate is {}",
                    a.interval_text()
                ));
            }
            Some(_) => {}
        }
    }
    let Some(names) = &meta.feature_names else {
        return Ok(None);
    };
    let is_feature = |n: &String| crate::data::aggregate::Aggregation::parse("1m", n).is_ok();
    let Some(run) = run else {
        if !names.is_empty() && names.iter().all(is_feature) {
            return Err(format!(
                "fitted on aggregated features {}: use --aggregate and --features",
                names.join(",")
            ));
        }
        return Ok(None);
    };
    if *names == run {
        return Ok(None);
    }
    let idx: Option<Vec<usize>> = names
        .iter()
        .map(|n| run.iter().position(|r| r == n))
        .collect();
    match idx {
        Some(idx) if names.len() == run.len() => Ok(Some(idx)),
        _ => Err(format!(
            "fitted on features [{}] but --features gives [{}]",
            names.join(","),
            run.join(",")
        )),
    }
}

fn score(
    model: &Model,
    x: &Array2<f64>,
    parallel: bool,
) -> Result<ndarray::Array1<f64>, ModelError> {
    if parallel {
        model.decision_function_parallel(x.view())
    } else {
        model.decision_function(x.view())
    }
}

/// Reads every selected sensor's readings from a data URL (long CSV or partitioned prefix),
/// for `train` and other whole-data commands. `select` None: every sensor in the data.
pub async fn read_readings(
    data_url: &str,
    select: Option<&HashSet<SensorId>>,
    parse_time: bool,
) -> Result<(BTreeMap<SensorId, Series>, usize), FleetError> {
    let data = open(data_url)?;
    let mut out: BTreeMap<SensorId, Series> = BTreeMap::new();
    let mut bad_rows = 0;
    let mut files: Vec<Location> = Vec::new();
    if is_long_csv(data_url) {
        files.push(data.clone());
    } else {
        for path in data.list().await? {
            let Some(rel) = data.relative(&path) else {
                continue;
            };
            let Some(sensor) = crate::data::partition::sensor_of_part(&rel) else {
                continue;
            };
            if select.is_none_or(|s| s.contains(&sensor)) {
                files.push(data.child(&rel));
            }
        }
    }
    for file in files {
        let buf = file.get().await?;
        let opts = CsvOptions {
            strict: false,
            parse_time,
            select,
        };
        let p = parse(&file.url, &buf, &opts)?;
        bad_rows += p.bad_rows;
        for (sensor, series) in p.sensors {
            out.entry(sensor).or_default().append(series);
        }
    }
    Ok((out, bad_rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaler_sidecars_are_recognised_and_not_taken_for_models() {
        assert_eq!(
            scaler_sidecar_sensor("model_3_7.scaler.pkl"),
            Some(SensorId::new("3", "7"))
        );
        assert_eq!(
            scaler_sidecar_sensor("model_3_7.scaler.joblib"),
            Some(SensorId::new("3", "7"))
        );
        assert_eq!(scaler_sidecar_sensor("model_3_7.pkl"), None);
        assert_eq!(SensorId::from_model_file_name("model_3_7.scaler.pkl"), None);
    }

    #[test]
    fn long_csv_urls_are_told_from_partitioned_prefixes() {
        assert!(is_long_csv("data/readings.csv"));
        assert!(is_long_csv("az://c/x/ALL.CSV"));
        assert!(!is_long_csv("az://c/partitioned/"));
        assert!(!is_long_csv("/tmp/parts"));
    }

    #[test]
    fn the_bad_row_policy_fails_above_the_percentage_naming_the_first_bad_row() {
        assert_eq!(check_bad_rows(0, 0, 1.0, None), Ok(()));
        assert_eq!(
            check_bad_rows(1, 99, 1.0, Some("x.csv:5: field Value: missing value")),
            Ok(())
        );
        let err =
            check_bad_rows(2, 98, 1.0, Some("x.csv:5: field Value: missing value")).unwrap_err();
        assert!(
            err.contains("2 of 100 rows are bad (2.00%") && err.contains("first: x.csv:5"),
            "{err}"
        );
        assert!(check_bad_rows(1, 0, 100.0, None).is_ok());
        assert!(check_bad_rows(1, 1_000_000, 0.0, None).is_err());
    }

    #[test]
    fn feature_names_like_sklearn_s_feature_names_in_map_by_name_or_refuse() {
        use crate::model::ModelMeta;
        let names = |n: &[&str]| ModelMeta {
            feature_names: Some(n.iter().map(|s| s.to_string()).collect()),
            ..ModelMeta::default()
        };
        let agg = |f: &str| Aggregation::parse("5m", f).unwrap();
        // A DataFrame fitted on ["mean", "std"], scored with std,mean: columns swapped back.
        assert_eq!(
            feature_order(&names(&["mean", "std"]), Some(&agg("std,mean"))),
            Ok(Some(vec![1, 0]))
        );
        assert_eq!(
            feature_order(&names(&["mean", "std"]), Some(&agg("mean,std"))),
            Ok(None)
        );
        let err = feature_order(&names(&["mean", "std"]), Some(&agg("mean,max"))).unwrap_err();
        assert!(
            err.contains("[mean,std] but --features gives [mean,max]"),
            "{err}"
        );
        assert!(
            feature_order(&names(&["mean", "std"]), None)
                .unwrap_err()
                .contains("use --aggregate")
        );
        // A raw column name says nothing about aggregation.
        assert_eq!(feature_order(&names(&["Value"]), None), Ok(None));
        assert_eq!(
            feature_order(&ModelMeta::default(), Some(&agg("mean"))),
            Ok(None)
        );
    }

    #[test]
    fn a_summary_fails_when_a_sensor_or_a_strict_data_check_failed() {
        let mut s = FleetSummary {
            sensors: 2,
            succeeded: 2,
            ..FleetSummary::default()
        };
        assert!(s.all_succeeded());
        s.data_errors
            .push("x.csv:3: field row: expected 4 fields, found 3".into());
        assert!(!s.all_succeeded());
        s.data_errors.clear();
        s.failed = 1;
        s.failures.push(("1:4".into(), "no model".into()));
        assert!(!s.all_succeeded());
        assert!(s.render().contains("no model"));
    }
}
