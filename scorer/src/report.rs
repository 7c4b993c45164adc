//! `report.html`: one self-contained page per run (no network fetches, so it opens from blob
//! storage or offline) built from the run's ledger: `<run>/logs/*.json`, `<run>/preds/*.csv` and
//! `summary.json`. It shows a fleet heat map (anomaly rate per device × tag), a sortable table of
//! every sensor, downsampled time series with the anomalies marked for the top sensors by anomaly
//! rate, the failed sensors with their reasons, and the run's timeline (queue, first pod, nodes).
//!
//! The data goes into the page as JSON and a small script draws it, so the file stays small for a
//! 10,000-sensor run: every sensor gets a table row, only [`ReportLimits::plotted_sensors`] get a
//! plot, each plot at most [`ReportLimits::points_per_plot`] points.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;

use crate::output::{Outcome, SensorRecord};
use crate::storage::{Location, StorageError};

/// File name of the report, beside `summary.json`.
pub const REPORT_FILE: &str = "report.html";
/// File name of the timeline a report was written with, so a rebuild shows it again.
pub const TIMELINE_FILE: &str = "timeline.json";
/// File name of the run's summary.
pub const SUMMARY_FILE: &str = "summary.json";

/// Ledger objects read at once (Azure round trips dominate for big fleets).
const READ_CONCURRENCY: usize = 32;

/// Why a report could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading the ledger or writing the report failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// `summary.json` (or `timeline.json`) is not valid JSON.
    #[error("{file}: not valid JSON: {source}")]
    Json {
        /// The object's URL.
        file: String,
        /// serde's error (line and column).
        #[source]
        source: serde_json::Error,
    },
}

/// Size limits of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportLimits {
    /// Sensors with a time-series plot (the top ones by anomaly rate).
    pub plotted_sensors: usize,
    /// Points per plot line at most (min/max per bucket, so spikes stay visible).
    pub points_per_plot: usize,
    /// Anomaly markers per plot at most (evenly thinned beyond).
    pub anomaly_marks: usize,
    /// Devices in the heat map at most (those with the highest anomaly rate).
    pub heatmap_devices: usize,
}

impl Default for ReportLimits {
    fn default() -> Self {
        Self {
            plotted_sensors: 24,
            points_per_plot: 600,
            anomaly_marks: 300,
            heatmap_devices: 200,
        }
    }
}

/// What a written report holds, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportInfo {
    /// URL of `report.html`.
    pub url: String,
    /// Sensors in the table.
    pub sensors: usize,
    /// Sensors with a plot.
    pub plots: usize,
    /// Size of the file in bytes.
    pub bytes: usize,
}

/// One table row: a sensor's ledger record (or only its failure, when it wrote none).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensorRow {
    /// `D:T`.
    pub sensor: String,
    /// Device.
    pub device: String,
    /// Tag.
    pub tag: String,
    /// Rows scored.
    pub rows: usize,
    /// Rows predicted anomalous.
    pub anomalies: usize,
    /// Rows skipped.
    pub skipped: usize,
    /// Read, parse, score and write milliseconds.
    pub ms: [f64; 4],
    /// `Succeeded`, `Failed`, or `Missing` (no record: the sensor never wrote one).
    pub outcome: String,
    /// Why it failed.
    pub reason: String,
}

impl SensorRow {
    fn from_record(r: &SensorRecord) -> Self {
        Self {
            sensor: r.sensor.clone(),
            device: r.device.clone(),
            tag: r.tag.clone(),
            rows: r.rows,
            anomalies: r.anomalies,
            skipped: r.skipped_rows,
            ms: [
                r.timings.read_ms,
                r.timings.parse_ms,
                r.timings.score_ms,
                r.timings.write_ms,
            ]
            .map(round1),
            outcome: match r.outcome {
                Outcome::Succeeded => "Succeeded".into(),
                Outcome::Failed => "Failed".into(),
            },
            reason: r.error.clone().unwrap_or_default(),
        }
    }

    /// Anomalies per row (0 without rows).
    pub fn rate(&self) -> f64 {
        if self.rows == 0 {
            0.0
        } else {
            self.anomalies as f64 / self.rows as f64
        }
    }
}

/// One downsampled series: row index, value and score per point, plus the anomalous rows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plot {
    /// `D:T`.
    pub sensor: String,
    /// Rows in the predictions file.
    pub n: usize,
    /// Row index of each point.
    pub x: Vec<usize>,
    /// Value of each point.
    pub v: Vec<f64>,
    /// Row index of each marked anomaly.
    pub ax: Vec<usize>,
    /// Value of each marked anomaly.
    pub av: Vec<f64>,
    /// Anomalies in the file (markers may be fewer).
    pub anomalies: usize,
    /// Timestamp text of the first and last row.
    pub t: [String; 2],
}

/// Everything the page shows.
#[derive(Debug, Clone, Serialize)]
pub struct ReportData {
    /// The run's name.
    pub run: String,
    /// `summary.json` as written.
    pub summary: Value,
    /// The node-pool report (`status.scaler`) and whatever else the caller put in the timeline.
    pub timeline: Value,
    /// Every sensor, in ledger order.
    pub sensors: Vec<SensorRow>,
    /// Plots of the top sensors by anomaly rate.
    pub plots: Vec<Plot>,
    /// The limits used, shown on the page.
    pub limits: Limits,
}

/// [`ReportLimits`] as the page shows them.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// Sensors plotted at most.
    pub plotted: usize,
    /// Points per plot at most.
    pub points: usize,
    /// Devices in the heat map at most.
    pub heatmap_devices: usize,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Reads the run's ledger under `run_dir` (`<output>/<run>`) and collects what the page shows.
pub async fn collect(
    run_dir: &Location,
    run_name: &str,
    summary: &Value,
    timeline: Option<&Value>,
    limits: ReportLimits,
) -> Result<ReportData, ReportError> {
    let logs = run_dir.child("logs");
    let listed = logs.list().await?;
    let objects: Vec<Location> = listed
        .iter()
        .filter_map(|p| logs.relative(p))
        .filter(|rel| rel.ends_with(".json") && !rel.contains('/'))
        .map(|rel| logs.child(&rel))
        .collect();
    let fetched: Vec<Option<SensorRecord>> = futures::stream::iter(objects)
        .map(|loc| async move {
            // An unreadable record is left out here; the sensor still shows via summary.json's
            // failures, and the page counts the sensors it could not find.
            loc.get()
                .await
                .ok()
                .and_then(|b| serde_json::from_slice::<SensorRecord>(&b).ok())
        })
        .buffered(READ_CONCURRENCY)
        .collect()
        .await;
    let mut rows: BTreeMap<String, SensorRow> = BTreeMap::new();
    for r in fetched.into_iter().flatten() {
        rows.insert(r.sensor.clone(), SensorRow::from_record(&r));
    }
    // Failures the operator knows of but the scorer never recorded (the pod died first).
    for f in summary_failures(summary) {
        let (sensor, reason) = f;
        rows.entry(sensor.clone()).or_insert_with(|| {
            let (device, tag) = sensor
                .split_once(':')
                .map_or((sensor.clone(), String::new()), |(d, t)| {
                    (d.into(), t.into())
                });
            SensorRow {
                sensor,
                device,
                tag,
                rows: 0,
                anomalies: 0,
                skipped: 0,
                ms: [0.0; 4],
                outcome: "Failed".into(),
                reason,
            }
        });
    }
    let sensors: Vec<SensorRow> = rows.into_values().collect();

    let mut ranked: Vec<&SensorRow> = sensors
        .iter()
        .filter(|s| s.outcome == "Succeeded" && s.rows > 0)
        .collect();
    ranked.sort_by(|a, b| {
        b.rate()
            .total_cmp(&a.rate())
            .then_with(|| b.anomalies.cmp(&a.anomalies))
            .then_with(|| a.sensor.cmp(&b.sensor))
    });
    ranked.truncate(limits.plotted_sensors);
    let wanted: Vec<(String, Location)> = ranked
        .iter()
        .map(|s| {
            let id = crate::sensor::SensorId::new(s.device.clone(), s.tag.clone());
            let rel = crate::output::preds_path("", &id);
            // `preds_path` with an empty run id starts with "/preds/..."; the run dir is the base.
            (s.sensor.clone(), run_dir.child(rel.trim_start_matches('/')))
        })
        .collect();
    let plots: Vec<Plot> = futures::stream::iter(wanted)
        .map(|(sensor, loc)| async move {
            let bytes = loc.get().await.ok()?;
            Some(downsample(
                &sensor,
                &bytes,
                limits.points_per_plot,
                limits.anomaly_marks,
            ))
        })
        .buffered(READ_CONCURRENCY)
        .filter_map(|p| async move { p })
        .collect()
        .await;
    Ok(ReportData {
        run: run_name.to_string(),
        summary: summary.clone(),
        timeline: timeline.cloned().unwrap_or(Value::Null),
        sensors,
        plots,
        limits: Limits {
            plotted: limits.plotted_sensors,
            points: limits.points_per_plot,
            heatmap_devices: limits.heatmap_devices,
        },
    })
}

/// `(sensor, reason: message)` of each entry of summary.json's `failedSensors`.
fn summary_failures(summary: &Value) -> Vec<(String, String)> {
    let Some(list) = summary.get("failedSensors").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|f| {
            let sensor = f.get("sensor")?.as_str()?.to_string();
            let reason = f.get("reason").and_then(Value::as_str).unwrap_or_default();
            let message = f.get("message").and_then(Value::as_str).unwrap_or_default();
            let text = match (reason.is_empty(), message.is_empty()) {
                (false, false) => format!("{reason}: {message}"),
                (false, true) => reason.to_string(),
                _ => message.to_string(),
            };
            Some((sensor, text))
        })
        .collect()
}

/// Reads a predictions CSV (`TS,Device,Tag,Val,Prediction,Score`) into at most `points` points
/// (each bucket's min and max value, in row order) and at most `marks` anomaly markers.
pub fn downsample(sensor: &str, csv: &[u8], points: usize, marks: usize) -> Plot {
    let mut vals: Vec<f64> = Vec::new();
    let mut anomalies: Vec<usize> = Vec::new();
    let mut first_ts = String::new();
    let mut last_ts = String::new();
    let text = String::from_utf8_lossy(csv);
    for line in text.lines().skip(1) {
        // Val, Prediction and Score are numbers, never quoted: split them off the right, so a
        // quoted Device or Tag with commas cannot shift them.
        let mut right = line.rsplitn(4, ',');
        let (Some(_score), Some(pred), Some(val), Some(rest)) =
            (right.next(), right.next(), right.next(), right.next())
        else {
            continue;
        };
        let Ok(v) = val.parse::<f64>() else { continue };
        let ts = first_field(rest);
        if vals.is_empty() {
            first_ts = ts.clone();
        }
        last_ts = ts;
        if pred == "1" {
            anomalies.push(vals.len());
        }
        vals.push(v);
    }
    let n = vals.len();
    let (mut x, mut v) = (Vec::new(), Vec::new());
    let buckets = (points / 2).max(1);
    if n <= points {
        x = (0..n).collect();
        v.clone_from(&vals);
    } else {
        for b in 0..buckets {
            let (lo, hi) = (b * n / buckets, ((b + 1) * n / buckets).min(n));
            if lo >= hi {
                continue;
            }
            let slice = &vals[lo..hi];
            let (mut imin, mut imax) = (0, 0);
            for (i, val) in slice.iter().enumerate() {
                if *val < slice[imin] {
                    imin = i;
                }
                if *val > slice[imax] {
                    imax = i;
                }
            }
            let (a, c) = if imin <= imax {
                (imin, imax)
            } else {
                (imax, imin)
            };
            x.push(lo + a);
            v.push(slice[a]);
            if c != a {
                x.push(lo + c);
                v.push(slice[c]);
            }
        }
    }
    let total_anomalies = anomalies.len();
    let kept: Vec<usize> = if anomalies.len() <= marks {
        anomalies
    } else {
        (0..marks)
            .map(|i| anomalies[i * anomalies.len() / marks])
            .collect()
    };
    Plot {
        sensor: sensor.to_string(),
        n,
        av: kept.iter().map(|&i| vals[i]).collect(),
        ax: kept,
        x,
        v,
        anomalies: total_anomalies,
        t: [first_ts, last_ts],
    }
}

/// The first CSV field of `s` (quoted or not), unquoted.
fn first_field(s: &str) -> String {
    if let Some(rest) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    out.push('"');
                } else {
                    break;
                }
            } else {
                out.push(c);
            }
        }
        out
    } else {
        s.split(',').next().unwrap_or_default().to_string()
    }
}

/// The page: a static shell plus the data as JSON, drawn by the embedded script.
pub fn render(data: &ReportData) -> String {
    // `<` is escaped so no sensor name or error text can close the script element.
    let json = serde_json::to_string(data)
        .unwrap_or_else(|_| "{}".into())
        .replace('<', "\\u003c");
    let title = html_escape(&format!("fleetscore run {}", data.run));
    let mut page = String::with_capacity(json.len() + PAGE_CSS.len() + PAGE_JS.len() + 2048);
    page.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    page.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    // No network: a page opened from blob storage must not fetch anything.
    page.push_str("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n");
    page.push_str(&format!(
        "<title>{title}</title>\n<style>{PAGE_CSS}</style></head>\n<body>\n"
    ));
    page.push_str(&format!(
        "<header><h1>{title}</h1><div id=\"headline\"></div></header>\n"
    ));
    page.push_str(PAGE_BODY);
    page.push_str("<script id=\"report-data\" type=\"application/json\">");
    page.push_str(&json);
    page.push_str("</script>\n<script>");
    page.push_str(PAGE_JS);
    page.push_str("</script>\n</body></html>\n");
    page
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Builds `<run>/report.html` under `store` (the run's `storage.output`) from the run's ledger,
/// `summary_json` (what was written as `summary.json`) and `timeline` (e.g. the run's
/// `status.scaler`; also saved as `timeline.json` so `fleetscore report` can rebuild the page).
pub async fn write_report(
    store: &Location,
    run_name: &str,
    summary_json: &Value,
    timeline: Option<&Value>,
) -> Result<ReportInfo, ReportError> {
    let run_dir = store.child(run_name);
    write_report_in(
        &run_dir,
        run_name,
        summary_json,
        timeline,
        ReportLimits::default(),
    )
    .await
}

/// [`write_report`] for a run directory (`<output>/<run>`) with explicit limits.
pub async fn write_report_in(
    run_dir: &Location,
    run_name: &str,
    summary_json: &Value,
    timeline: Option<&Value>,
    limits: ReportLimits,
) -> Result<ReportInfo, ReportError> {
    if let Some(t) = timeline.filter(|t| !t.is_null())
        && let Ok(bytes) = serde_json::to_vec_pretty(t)
    {
        run_dir.child(TIMELINE_FILE).put(Bytes::from(bytes)).await?;
    }
    let data = collect(run_dir, run_name, summary_json, timeline, limits).await?;
    let page = render(&data);
    let loc = run_dir.child(REPORT_FILE);
    let info = ReportInfo {
        url: loc.url.clone(),
        sensors: data.sensors.len(),
        plots: data.plots.len(),
        bytes: page.len(),
    };
    loc.put(Bytes::from(page)).await?;
    Ok(info)
}

/// Rebuilds `report.html` of the run at `run_dir_url` (`<output>/<run>`) from its ledger alone:
/// `summary.json`, the records, the predictions and `timeline.json` when there is one.
pub async fn rebuild(run_dir_url: &str) -> Result<ReportInfo, ReportError> {
    let run_dir = crate::storage::open(run_dir_url.trim_end_matches('/'))?;
    let run_name_from_url = run_dir_url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let summary_loc = run_dir.child(SUMMARY_FILE);
    let summary: Value = match summary_loc.get().await {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ReportError::Json {
            file: summary_loc.url.clone(),
            source,
        })?,
        // The scorer CLI alone writes no summary.json: the records are the summary then.
        Err(e) => match summary_from_records(&run_dir, &run_name_from_url).await {
            Some(summary) => summary,
            None => return Err(e.into()),
        },
    };
    let timeline_loc = run_dir.child(TIMELINE_FILE);
    let timeline = match timeline_loc.get().await {
        Ok(b) => Some(
            serde_json::from_slice::<Value>(&b).map_err(|source| ReportError::Json {
                file: timeline_loc.url.clone(),
                source,
            })?,
        ),
        Err(_) => None,
    };
    let run_name = summary
        .get("run")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or(run_name_from_url);
    write_report_in(
        &run_dir,
        &run_name,
        &summary,
        timeline.as_ref(),
        ReportLimits::default(),
    )
    .await
}

/// A summary counted from the records under `<run>/logs/` (None when there are none).
async fn summary_from_records(run_dir: &Location, run_name: &str) -> Option<Value> {
    let data = collect(
        run_dir,
        run_name,
        &Value::Null,
        None,
        ReportLimits {
            plotted_sensors: 0,
            ..ReportLimits::default()
        },
    )
    .await
    .ok()?;
    if data.sensors.is_empty() {
        return None;
    }
    let failed = data
        .sensors
        .iter()
        .filter(|s| s.outcome != "Succeeded")
        .count();
    Some(serde_json::json!({
        "run": run_name,
        "phase": if failed == 0 { "Succeeded" } else { "Failed" },
        "total": data.sensors.len(),
        "succeeded": data.sensors.len() - failed,
        "failed": failed,
        "rows": data.sensors.iter().map(|s| s.rows).sum::<usize>(),
        "anomalies": data.sensors.iter().map(|s| s.anomalies).sum::<usize>(),
        "source": "records",
    }))
}

const PAGE_BODY: &str = r###"<nav><a href="#overview">Overview</a> <a href="#heatmap-section">Heat map</a> <a href="#table-section">Sensors</a> <a href="#plots-section">Time series</a> <a href="#failed-section">Failed</a> <a href="#timeline-section">Timeline</a></nav>
<main>
<section id="overview"><h2>Overview</h2><dl id="numbers"></dl></section>
<section id="heatmap-section"><h2>Anomaly rate per device × tag</h2><p class="note" id="heatmap-note"></p><div id="heatmap"></div></section>
<section id="table-section"><h2>Sensors</h2><p class="note">Click a column to sort; <code>#sort=rate:desc</code> in the address does the same.</p>
<table id="sensors"><thead><tr>
<th data-key="sensor">Sensor</th><th data-key="device">Device</th><th data-key="tag">Tag</th><th data-key="rows" class="num">Rows</th><th data-key="anomalies" class="num">Anomalies</th><th data-key="rate" class="num">Rate</th><th data-key="skipped" class="num">Skipped</th><th data-key="read" class="num">Read ms</th><th data-key="parse" class="num">Parse ms</th><th data-key="score" class="num">Score ms</th><th data-key="write" class="num">Write ms</th><th data-key="outcome">Outcome</th><th data-key="reason">Reason</th>
</tr></thead><tbody></tbody></table></section>
<section id="plots-section"><h2>Time series</h2><p class="note" id="plots-note"></p><div id="plots"></div></section>
<section id="failed-section"><h2>Failed sensors</h2><ul id="failed"></ul></section>
<section id="timeline-section"><h2>Timeline</h2><div id="timeline"></div><dl id="timeline-numbers"></dl></section>
</main>
"###;

const PAGE_CSS: &str = r###"
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:12px 20px}header h1{margin:0;font-size:20px}#headline{opacity:.85}
nav{padding:6px 20px;background:#e8ebf0}nav a{margin-right:14px;color:#1d4ed8;text-decoration:none}
main{padding:0 20px 40px}section{background:#fff;margin:16px 0;padding:12px 16px;border-radius:6px;box-shadow:0 1px 2px #0002}
h2{font-size:16px;margin:4px 0 10px}.note{color:#667;margin:2px 0 8px;font-size:12px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:0}dt{color:#556}dd{margin:0;font-weight:600}
table{border-collapse:collapse;width:100%;font-size:12px}th,td{padding:3px 6px;border-bottom:1px solid #e3e6eb;text-align:left;white-space:nowrap}
th{cursor:pointer;background:#f0f2f5;position:sticky;top:0}th.sorted-asc::after{content:" ▲"}th.sorted-desc::after{content:" ▼"}
td.num,th.num{text-align:right}td.reason{white-space:normal;max-width:420px}tr.Failed td,tr.Missing td{background:#fff1f0}
#table-section{max-height:640px;overflow:auto}
#plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:12px}figure{margin:0;border:1px solid #e3e6eb;border-radius:4px;padding:6px}
figcaption{font-size:12px;color:#334}svg text{font-size:10px;fill:#556}
#failed li{margin:2px 0}#failed code{font-weight:600}
"###;

const PAGE_JS: &str = r###"
(function(){
"use strict";
var D=JSON.parse(document.getElementById("report-data").textContent);
var S=D.summary||{}, T=D.timeline||{};
var NS="http://www.w3.org/2000/svg";
function el(tag,attrs,text){var e=document.createElement(tag);for(var k in attrs||{})e.setAttribute(k,attrs[k]);if(text!==undefined)e.textContent=String(text);return e;}
function sv(tag,attrs,text){var e=document.createElementNS(NS,tag);for(var k in attrs||{})e.setAttribute(k,attrs[k]);if(text!==undefined)e.textContent=String(text);return e;}
function num(x){return (typeof x==="number")?x:(x==null?null:Number(x));}
function fmt(x){if(x==null||x==="")return "–";if(typeof x==="number"){return Number.isInteger(x)?x.toLocaleString("en-US"):x.toLocaleString("en-US",{maximumFractionDigits:2});}return String(x);}
function pct(r){return (r*100).toFixed(r>=0.1?1:2)+"%";}
function rate(s){return s.rows>0?s.anomalies/s.rows:0;}
function ncmp(a,b){var x=Number(a),y=Number(b);if(!isNaN(x)&&!isNaN(y)&&a!==""&&b!=="")return x-y;return a<b?-1:a>b?1:0;}
var rows=0,anoms=0,skipped=0,succ=0,failc=0;
D.sensors.forEach(function(s){rows+=s.rows;anoms+=s.anomalies;skipped+=s.skipped;if(s.outcome==="Succeeded")succ++;else failc++;});
function pick(k,alt){return (S[k]!==undefined&&S[k]!==null)?S[k]:alt;}
var total=pick("total",pick("sensors",D.sensors.length));
// Overview numbers: summary.json first, the records where it has none.
var numbers=[["run","run",D.run],["phase","phase",pick("phase","–")],["total","sensors",total],["succeeded","succeeded",pick("succeeded",succ)],["failed","failed",pick("failed",failc)],
 ["rows","rows scored",pick("rows",rows)],["anomalies","anomalies",pick("anomalies",anoms)],["anomaly-rate","anomaly rate",pct(rows>0?anoms/rows:0)],["skipped","skipped rows",skipped],["table-rows","sensors with a record or failure",D.sensors.length]];
if(S.wallMs!=null)numbers.push(["wall","wall time",(S.wallMs/1000).toFixed(2)+" s"]);
if(S.duration!=null)numbers.push(["duration","duration",S.duration]);
var dl=document.getElementById("numbers");
numbers.forEach(function(n){dl.appendChild(el("dt",{},n[1]));dl.appendChild(el("dd",{id:"n-"+n[0]},fmt(n[2])));});
document.getElementById("headline").textContent=fmt(pick("phase",""))+" · "+fmt(total)+" sensors · "+fmt(pick("failed",failc))+" failed · "+fmt(pick("anomalies",anoms))+" anomalies";

// Heat map: devices as rows, tags as columns, cell colour = anomaly rate.
(function(){
 var by={},tags={},devs={};
 D.sensors.forEach(function(s){by[s.device+"\u0000"+s.tag]=s;tags[s.tag]=1;var r=s.outcome==="Succeeded"?rate(s):-1;devs[s.device]=Math.max(devs[s.device]===undefined?-1:devs[s.device],r);});
 var tagList=Object.keys(tags).sort(ncmp), devList=Object.keys(devs).sort(ncmp);
 var note=document.getElementById("heatmap-note");
 var maxRate=0;D.sensors.forEach(function(s){if(s.outcome==="Succeeded")maxRate=Math.max(maxRate,rate(s));});
 if(devList.length>D.limits.heatmap_devices){
  devList=devList.slice().sort(function(a,b){return devs[b]-devs[a]||ncmp(a,b);}).slice(0,D.limits.heatmap_devices).sort(ncmp);
  note.textContent="The "+D.limits.heatmap_devices+" devices with the highest anomaly rate of "+Object.keys(devs).length+". ";
 }
 note.textContent+="Darker = higher rate (scale 0–"+pct(maxRate)+"); grey: failed or no record.";
 var cw=Math.max(14,Math.min(48,Math.floor(900/Math.max(1,tagList.length)))),ch=devList.length>60?8:16,left=70,top=24;
 var svg=sv("svg",{id:"heatmap-svg",width:left+cw*tagList.length+10,height:top+ch*devList.length+4,role:"img"});
 tagList.forEach(function(t,j){svg.appendChild(sv("text",{x:left+j*cw+cw/2,y:top-6,"text-anchor":"middle"},t));});
 devList.forEach(function(d,i){
  if(ch>=12||i%10===0)svg.appendChild(sv("text",{x:left-6,y:top+i*ch+ch-2,"text-anchor":"end"},d));
  tagList.forEach(function(t,j){
   var s=by[d+"\u0000"+t];if(!s)return;
   var ok=s.outcome==="Succeeded",r=rate(s),a=maxRate>0?r/maxRate:0;
   var fill=ok?"rgb("+Math.round(255-35*a)+","+Math.round(245-190*a)+","+Math.round(240-200*a)+")":"#9aa1ab";
   var c=sv("rect",{x:left+j*cw,y:top+i*ch,width:cw-1,height:ch-1,fill:fill,"class":"cell","data-sensor":s.sensor,"data-rate":r.toFixed(6)});
   c.appendChild(sv("title",{},s.sensor+": "+(ok?pct(r)+" ("+s.anomalies+" of "+s.rows+")":s.outcome+" "+s.reason)));
   svg.appendChild(c);
  });
 });
 document.getElementById("heatmap").appendChild(svg);
})();

// Sortable table, one row per sensor.
var keyOf={sensor:function(s){return s.sensor;},device:function(s){return s.device;},tag:function(s){return s.tag;},rows:function(s){return s.rows;},anomalies:function(s){return s.anomalies;},rate:rate,skipped:function(s){return s.skipped;},
 read:function(s){return s.ms[0];},parse:function(s){return s.ms[1];},score:function(s){return s.ms[2];},write:function(s){return s.ms[3];},outcome:function(s){return s.outcome;},reason:function(s){return s.reason;}};
var tbody=document.querySelector("#sensors tbody");
var trs=D.sensors.map(function(s){
 var tr=el("tr",{"data-sensor":s.sensor,"class":s.outcome});
 [[s.sensor],[s.device],[s.tag],[fmt(s.rows),"num"],[fmt(s.anomalies),"num"],[pct(rate(s)),"num"],[fmt(s.skipped),"num"],[fmt(s.ms[0]),"num"],[fmt(s.ms[1]),"num"],[fmt(s.ms[2]),"num"],[fmt(s.ms[3]),"num"],[s.outcome],[s.reason,"reason"]]
 .forEach(function(c){tr.appendChild(el("td",c[1]?{"class":c[1]}:{},c[0]));});
 return {s:s,tr:tr};
});
function sortBy(key,dir){
 var f=keyOf[key];if(!f)return;var m=dir==="asc"?1:-1;
 trs.sort(function(a,b){var x=f(a.s),y=f(b.s);var c=(typeof x==="number")?x-y:ncmp(x,y);return m*c||ncmp(a.s.sensor,b.s.sensor);});
 var frag=document.createDocumentFragment();trs.forEach(function(r){frag.appendChild(r.tr);});tbody.appendChild(frag);
 document.querySelectorAll("#sensors th").forEach(function(th){th.classList.remove("sorted-asc","sorted-desc");if(th.dataset.key===key)th.classList.add("sorted-"+dir);});
 document.getElementById("sensors").dataset.sort=key+":"+dir;
}
document.querySelectorAll("#sensors th").forEach(function(th){th.addEventListener("click",function(){
 var cur=(document.getElementById("sensors").dataset.sort||"").split(":");
 var numeric=th.classList.contains("num");
 var dir=cur[0]===th.dataset.key?(cur[1]==="asc"?"desc":"asc"):(numeric?"desc":"asc");sortBy(th.dataset.key,dir);});});
var m=/sort=([a-z]+)(?::(asc|desc))?/.exec(location.hash||"");
if(m)sortBy(m[1],m[2]||"desc");else sortBy("rate","desc");

// Time series of the top sensors by anomaly rate.
(function(){
 var note=document.getElementById("plots-note");
 note.textContent=D.plots.length?("The "+D.plots.length+" sensors with the highest anomaly rate (at most "+D.limits.plotted+"); lines downsampled to at most "+D.limits.points+" points (min and max per bucket); red dots: anomalies."):"No sensor has predictions to plot.";
 var W=420,H=150,L=44,R=8,Tp=8,B=20;
 D.plots.forEach(function(p){
  var fig=el("figure",{"class":"plot","data-sensor":p.sensor});
  var vs=p.v.concat(p.av),lo=Math.min.apply(null,vs),hi=Math.max.apply(null,vs);if(!(hi>lo)){hi=lo+1;lo=lo-1;}
  var n=Math.max(1,p.n-1),X=function(i){return L+(W-L-R)*i/n;},Y=function(v){return Tp+(H-Tp-B)*(1-(v-lo)/(hi-lo));};
  var svg=sv("svg",{width:"100%",viewBox:"0 0 "+W+" "+H,role:"img"});
  svg.appendChild(sv("rect",{x:L,y:Tp,width:W-L-R,height:H-Tp-B,fill:"#fafbfc",stroke:"#d5d9e0"}));
  svg.appendChild(sv("text",{x:L-4,y:Tp+8,"text-anchor":"end"},fmt(+hi.toPrecision(4))));
  svg.appendChild(sv("text",{x:L-4,y:H-B,"text-anchor":"end"},fmt(+lo.toPrecision(4))));
  svg.appendChild(sv("text",{x:L,y:H-6},p.t[0]));svg.appendChild(sv("text",{x:W-R,y:H-6,"text-anchor":"end"},p.t[1]));
  var pts=[];for(var i=0;i<p.x.length;i++)pts.push(X(p.x[i]).toFixed(1)+","+Y(p.v[i]).toFixed(1));
  svg.appendChild(sv("polyline",{points:pts.join(" "),fill:"none",stroke:"#2563eb","stroke-width":"1","class":"series"}));
  for(var k=0;k<p.ax.length;k++)svg.appendChild(sv("circle",{cx:X(p.ax[k]).toFixed(1),cy:Y(p.av[k]).toFixed(1),r:2.2,fill:"#dc2626","class":"anomaly"}));
  fig.appendChild(svg);
  fig.appendChild(el("figcaption",{},p.sensor+" · "+fmt(p.anomalies)+" anomalies in "+fmt(p.n)+" rows ("+pct(p.n?p.anomalies/p.n:0)+")"+(p.ax.length<p.anomalies?" · "+p.ax.length+" marked":"")));
  document.getElementById("plots").appendChild(fig);
 });
})();

// Failed sensors with their reasons.
(function(){
 var ul=document.getElementById("failed"),failed=D.sensors.filter(function(s){return s.outcome!=="Succeeded";});
 if(!failed.length)ul.appendChild(el("li",{"class":"none"},"No sensor failed."));
 failed.forEach(function(s){var li=el("li",{"data-sensor":s.sensor});li.appendChild(el("code",{},s.sensor));li.appendChild(document.createTextNode(" — "+(s.reason||s.outcome)));ul.appendChild(li);});
 var missing=(typeof total==="number")?total-D.sensors.length:0;
 if(missing>0)ul.appendChild(el("li",{"class":"missing"},missing+" more sensors have no record in the ledger (see the run's status)."));
})();

// Timeline: start, first pod running, completion, idle tail; queue and node-pool numbers.
(function(){
 var t0=Date.parse(S.startTime||""),t1=Date.parse(S.completionTime||"");
 var first=num(T.timeToFirstPodRunningSeconds),tail=num(T.idleTailSeconds);
 var tl=[];
 var queueKeys=[["sensors",pick("total",total)],["sensors per Job",S.sensorsPerJob],["Jobs",(S.sensorsPerJob&&typeof total==="number")?Math.ceil(total/S.sensorsPerJob):null],["parallelism",S.parallelism],["executor",S.executor]];
 queueKeys.forEach(function(k){if(k[1]!=null)tl.push(k);});
 if(S.startTime)tl.push(["started",S.startTime]);if(S.completionTime)tl.push(["completed",S.completionTime]);
 var dur=(!isNaN(t0)&&!isNaN(t1))?(t1-t0)/1000:(S.wallMs!=null?S.wallMs/1000:null);
 if(dur!=null)tl.push(["scoring time",dur.toFixed(1)+" s"]);
 if(first!=null)tl.push(["time to first pod running",first+" s"]);
 [["pool","pool"],["mode","scaler mode"],["nodesAtStart","nodes at start"],["nodesPeak","nodes at peak"],["nodeMinutes","node-minutes"],["idleTailSeconds","idle tail (s)"],["reason","scaler decision"],["message","scaler message"]]
  .forEach(function(k){if(T[k[0]]!=null&&T[k[0]]!=="")tl.push([k[1],T[k[0]]]);});
 var dl=document.getElementById("timeline-numbers");
 tl.forEach(function(k){dl.appendChild(el("dt",{},k[0]));dl.appendChild(el("dd",{"data-key":k[0]},fmt(k[1])));});
 if(dur==null)return;
 var span=dur+(tail||0),W=900,L=10,H=46,X=function(s){return L+(W-2*L)*s/Math.max(span,1e-9);};
 var svg=sv("svg",{id:"timeline-svg",width:W,height:H,role:"img"});
 var q=first!=null?Math.min(first,dur):0;
 if(q>0)svg.appendChild(sv("rect",{x:X(0),y:10,width:X(q)-X(0),height:16,fill:"#fbbf24","class":"queue"}));
 svg.appendChild(sv("rect",{x:X(q),y:10,width:Math.max(1,X(dur)-X(q)),height:16,fill:"#2563eb","class":"scoring"}));
 if(tail)svg.appendChild(sv("rect",{x:X(dur),y:10,width:X(span)-X(dur),height:16,fill:"#cbd5e1","class":"tail"}));
 svg.appendChild(sv("text",{x:X(0),y:40},"start"));
 if(q>0)svg.appendChild(sv("text",{x:X(q),y:40,"text-anchor":"middle"},"first pod "+q+" s"));
 svg.appendChild(sv("text",{x:X(dur),y:40,"text-anchor":tail?"middle":"end"},"done "+dur.toFixed(1)+" s"));
 if(tail)svg.appendChild(sv("text",{x:X(span),y:40,"text-anchor":"end"},"pool idle until "+span.toFixed(0)+" s"));
 document.getElementById("timeline").appendChild(svg);
})();
document.body.setAttribute("data-rendered","true");
})();
"###;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::{PredsWriter, Timings};
    use crate::sensor::SensorId;

    fn record(
        run: &str,
        d: &str,
        t: &str,
        rows: usize,
        anomalies: usize,
        fail: Option<&str>,
    ) -> SensorRecord {
        let mut r = SensorRecord::new(run, &SensorId::new(d, t));
        r.rows = rows;
        r.anomalies = anomalies;
        r.timings = Timings {
            read_ms: 1.25,
            parse_ms: 2.0,
            score_ms: 3.0,
            write_ms: 4.0,
        };
        if let Some(e) = fail {
            r.fail(e);
        }
        r
    }

    #[test]
    fn downsampling_keeps_spikes_and_thins_markers_within_limits() {
        let id = SensorId::new("1", "4");
        let mut w = PredsWriter::new(&id, 10_000);
        for i in 0..10_000 {
            let spike = i == 5_001;
            w.row(
                format!("2018-08-28 {i}").as_bytes(),
                if spike { 900.0 } else { (i % 7) as f64 },
                spike || i % 10 == 0,
                0.0,
            );
        }
        let p = downsample("1:4", &w.finish(), 100, 50);
        assert_eq!(p.n, 10_000);
        assert!(p.x.len() <= 100 && p.x.len() == p.v.len(), "{}", p.x.len());
        assert!(p.v.contains(&900.0), "the spike survives downsampling");
        assert!(
            p.x.windows(2).all(|w| w[0] < w[1]),
            "points stay in row order"
        );
        assert_eq!(p.anomalies, 1_001);
        assert_eq!(p.ax.len(), 50);
        assert_eq!(
            p.t,
            ["2018-08-28 0".to_string(), "2018-08-28 9999".to_string()]
        );
    }

    #[test]
    fn quoted_timestamps_and_names_with_commas_parse() {
        let csv = b"TS,Device,Tag,Val,Prediction,Score\n\"a,\"\"b\",\"d,1\",4,2.5,1,-0.5\nx,1,4,3,0,0.1\nbad line\n";
        let p = downsample("d,1:4", csv, 10, 10);
        assert_eq!(p.n, 2);
        assert_eq!(p.v, vec![2.5, 3.0]);
        assert_eq!(p.ax, vec![0]);
        assert_eq!(p.t[0], "a,\"b");
    }

    #[test]
    fn the_page_is_self_contained_and_cannot_be_broken_by_names() {
        let data = ReportData {
            run: "r<1>".into(),
            summary: serde_json::json!({"total": 1}),
            timeline: Value::Null,
            sensors: vec![SensorRow::from_record(&record(
                "r",
                "</script><b>",
                "4",
                10,
                1,
                Some("bad </script>"),
            ))],
            plots: vec![],
            limits: Limits {
                plotted: 1,
                points: 10,
                heatmap_devices: 5,
            },
        };
        let page = render(&data);
        assert_eq!(
            page.matches("</script>").count(),
            2,
            "only our own two script elements close"
        );
        assert!(page.contains("<title>fleetscore run r&lt;1&gt;</title>"));
        for remote in [
            "http://",
            "https://",
            "src=\"",
            "href=\"http",
            "@import",
            "url(",
        ] {
            let hits: Vec<_> = page
                .match_indices(remote)
                .map(|(i, _)| &page[i.saturating_sub(30)..(i + 40).min(page.len())])
                .collect();
            // The SVG namespace string is an identifier, not a fetch.
            assert!(
                hits.iter().all(|h| h.contains("www.w3.org/2000/svg")),
                "{remote}: {hits:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_report_is_written_beside_the_summary_and_rebuilt_from_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let out = crate::storage::open(dir.path().to_str().unwrap()).unwrap();
        let run = "run-1";
        let mut records = Vec::new();
        for (d, t, rows, anomalies, fail) in [
            ("1", "4", 100, 7, None),
            ("2", "4", 100, 0, None),
            ("3", "4", 0, 0, Some("no model found")),
        ] {
            let r = record(run, d, t, rows, anomalies, fail);
            out.child(&crate::output::log_path(run, &SensorId::new(d, t)))
                .put(Bytes::from(r.to_json_line()))
                .await
                .unwrap();
            if fail.is_none() {
                let mut w = PredsWriter::new(&SensorId::new(d, t), rows);
                for i in 0..rows {
                    w.row(format!("t{i}").as_bytes(), i as f64, i < anomalies, 0.0);
                }
                out.child(&crate::output::preds_path(run, &SensorId::new(d, t)))
                    .put(Bytes::from(w.finish()))
                    .await
                    .unwrap();
            }
            records.push(r);
        }
        let summary = serde_json::json!({"run": run, "phase": "PartiallySucceeded", "total": 4, "succeeded": 2, "failed": 2,
            "failedSensors": [{"sensor": "3:4", "reason": "ScorerFailed", "message": "no model found"},
                              {"sensor": "9:9", "reason": "PodFailed", "message": "OOMKilled"}]});
        out.child(&format!("{run}/summary.json"))
            .put(Bytes::from(summary.to_string()))
            .await
            .unwrap();
        let timeline = serde_json::json!({"nodesPeak": 3, "timeToFirstPodRunningSeconds": 12.5});
        let info = write_report(&out, run, &summary, Some(&timeline))
            .await
            .unwrap();
        assert_eq!(
            (info.sensors, info.plots),
            (4, 2),
            "3 records + 1 failure without a record; 2 plots"
        );
        let page = String::from_utf8(
            out.child(&format!("{run}/report.html"))
                .get()
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        assert!(page.contains("\"sensor\":\"9:9\"") && page.contains("OOMKilled"));
        assert!(page.contains("\"nodesPeak\":3"));

        std::fs::remove_file(dir.path().join(run).join("report.html")).unwrap();
        let url = format!("{}/{run}", dir.path().display());
        let again = rebuild(&url).await.unwrap();
        assert_eq!((again.sensors, again.plots), (4, 2));
        let rebuilt = String::from_utf8(
            out.child(&format!("{run}/report.html"))
                .get()
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        assert!(
            rebuilt.contains("\"nodesPeak\":3"),
            "the timeline comes back from timeline.json"
        );

        let err = rebuild(&format!("{}/nothing", dir.path().display()))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("summary.json"), "{err}");
    }

    #[test]
    fn a_ten_thousand_sensor_report_stays_small() {
        let sensors: Vec<SensorRow> = (0..10_000)
            .map(|i| {
                SensorRow::from_record(&record(
                    "big",
                    &format!("{}", i / 10),
                    &format!("{}", i % 10),
                    1440,
                    i % 13,
                    None,
                ))
            })
            .collect();
        let plot = downsample(
            "0:0",
            &{
                let mut w = PredsWriter::new(&SensorId::new("0", "0"), 1440);
                for i in 0..1440 {
                    w.row(b"2018-08-28 00:00:00.000", i as f64, i % 3 == 0, 0.0);
                }
                w.finish()
            },
            600,
            300,
        );
        let limits = ReportLimits::default();
        let data = ReportData {
            run: "big".into(),
            summary: serde_json::json!({"total": 10_000}),
            timeline: Value::Null,
            sensors,
            plots: vec![plot; limits.plotted_sensors],
            limits: Limits {
                plotted: limits.plotted_sensors,
                points: limits.points_per_plot,
                heatmap_devices: limits.heatmap_devices,
            },
        };
        let page = render(&data);
        assert!(page.len() < 3_000_000, "{} bytes", page.len());
    }
}
