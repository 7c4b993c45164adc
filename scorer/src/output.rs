//! What a run writes, at deterministic paths so a re-run overwrites instead of duplicating:
//! `<output>/<run-id>/preds/preds_<D>_<T>.csv` and `<output>/<run-id>/logs/<D>_<T>.json`, with
//! device and tag escaped by [`crate::sensor::name_segment`] so each sensor has its own files.

use serde::{Deserialize, Serialize};

use crate::sensor::SensorId;

/// The predictions CSV's header.
pub const PREDS_HEADER: &str = "TS,Device,Tag,Val,Prediction,Score";

/// Path of a sensor's predictions, relative to the output URL.
pub fn preds_path(run_id: &str, sensor: &SensorId) -> String {
    format!("{run_id}/preds/preds_{}.csv", sensor.file_stem())
}

/// Path of a sensor's log record, relative to the output URL.
pub fn log_path(run_id: &str, sensor: &SensorId) -> String {
    format!("{run_id}/logs/{}.json", sensor.file_stem())
}

/// Makes a device or tag safe inside one path segment: `%` and `/` are percent-encoded, so a
/// name from the data can never reach another directory.
pub fn path_segment(s: &str) -> String {
    if s.contains(['/', '%', '\\']) {
        s.replace('%', "%25")
            .replace('/', "%2F")
            .replace('\\', "%5C")
    } else {
        s.to_string()
    }
}

/// The inverse of [`path_segment`].
pub fn decode_path_segment(s: &str) -> String {
    if s.contains('%') {
        s.replace("%2F", "/")
            .replace("%5C", "\\")
            .replace("%25", "%")
    } else {
        s.to_string()
    }
}

/// How a sensor's scoring ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Predictions were written.
    Succeeded,
    /// Something failed; `error` says what.
    Failed,
}

/// Milliseconds spent in each step for one sensor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Reading the model and (partitioned layout) the sensor's data objects.
    pub read_ms: f64,
    /// Parsing the model and (partitioned layout) the sensor's data, plus aggregation.
    pub parse_ms: f64,
    /// Computing decisions.
    pub score_ms: f64,
    /// Formatting and writing the predictions.
    pub write_ms: f64,
}

/// The per-sensor JSON log record (C1/C3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SensorRecord {
    /// The run's id.
    pub run_id: String,
    /// The sensor as `D:T`.
    pub sensor: String,
    /// Device.
    pub device: String,
    /// Tag.
    pub tag: String,
    /// The model object used (URL), if one was found.
    pub model: Option<String>,
    /// Rows scored (windows, when aggregating).
    pub rows: usize,
    /// Rows predicted anomalous.
    pub anomalies: usize,
    /// Rows skipped for missing or malformed values.
    pub skipped_rows: usize,
    /// The first skipped row (file:line: field: problem), when any was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad_row: Option<String>,
    /// Where the predictions were written, if they were.
    pub predictions: Option<String>,
    /// Time per step.
    pub timings: Timings,
    /// Succeeded or Failed.
    pub outcome: Outcome,
    /// Why it failed.
    pub error: Option<String>,
}

impl SensorRecord {
    /// A record for a sensor, not yet scored.
    pub fn new(run_id: &str, sensor: &SensorId) -> Self {
        Self {
            run_id: run_id.to_string(),
            sensor: sensor.to_string(),
            device: sensor.device.clone(),
            tag: sensor.tag.clone(),
            model: None,
            rows: 0,
            anomalies: 0,
            skipped_rows: 0,
            first_bad_row: None,
            predictions: None,
            timings: Timings::default(),
            outcome: Outcome::Succeeded,
            error: None,
        }
    }

    /// Marks the record failed with a reason.
    pub fn fail(&mut self, error: impl Into<String>) {
        self.outcome = Outcome::Failed;
        self.error = Some(error.into());
    }

    /// The record as one line of JSON.
    pub fn to_json_line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_else(|e| {
            format!(
                "{{\"sensor\":{:?},\"outcome\":\"Failed\",\"error\":{:?}}}",
                self.sensor,
                e.to_string()
            )
            .into_bytes()
        });
        v.push(b'\n');
        v
    }
}

/// Builds a predictions CSV: one line per row with the row's timestamp text, value, 0/1 and score.
pub struct PredsWriter {
    buf: Vec<u8>,
    label: Vec<u8>,
    ryu: ryu::Buffer,
}

impl PredsWriter {
    /// Starts a file for a sensor, sized for `rows` lines.
    pub fn new(sensor: &SensorId, rows: usize) -> Self {
        let mut buf = Vec::with_capacity(64 + rows * 56);
        buf.extend_from_slice(PREDS_HEADER.as_bytes());
        buf.push(b'\n');
        let label =
            format!(",{},{},", csv_field(&sensor.device), csv_field(&sensor.tag)).into_bytes();
        Self {
            buf,
            label,
            ryu: ryu::Buffer::new(),
        }
    }

    /// Appends one row.
    pub fn row(&mut self, ts: &[u8], val: f64, anomaly: bool, score: f64) {
        let quote = ts.contains(&b',') || ts.contains(&b'"');
        if quote {
            self.buf
                .extend_from_slice(csv_field(&String::from_utf8_lossy(ts)).as_bytes());
        } else {
            self.buf.extend_from_slice(ts);
        }
        self.buf.extend_from_slice(&self.label);
        self.buf.extend_from_slice(self.ryu.format(val).as_bytes());
        self.buf
            .extend_from_slice(if anomaly { b",1," } else { b",0," });
        self.buf
            .extend_from_slice(self.ryu.format(score).as_bytes());
        self.buf.push(b'\n');
    }

    /// The finished file.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Quotes a CSV field when it holds a comma or a quote.
fn csv_field(s: &str) -> String {
    if s.contains(',') || s.contains('"') || s.contains('\n') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_paths_are_deterministic_per_run_and_sensor() {
        let s = SensorId::new("1", "4");
        assert_eq!(preds_path("run-7", &s), "run-7/preds/preds_1_4.csv");
        assert_eq!(log_path("run-7", &s), "run-7/logs/1_4.json");
        let odd = SensorId::new("../a", "b%/c");
        assert_eq!(preds_path("r", &odd), "r/preds/preds_..=2Fa_b%=2Fc.csv");
        // `_` inside a name is escaped, so the separator is unique.
        assert_ne!(
            preds_path("r", &SensorId::new("1_2", "3")),
            preds_path("r", &SensorId::new("1", "2_3"))
        );
    }

    #[test]
    fn predictions_echo_the_timestamp_and_write_prediction_and_score() {
        let mut w = PredsWriter::new(&SensorId::new("1", "4"), 2);
        w.row(b"2018-08-28 23:00:05.000", 84.53, false, 0.25);
        w.row(b"2018-08-28 23:00:06.000", 300.0, true, -1.5);
        let text = String::from_utf8(w.finish()).unwrap();
        assert_eq!(
            text,
            "TS,Device,Tag,Val,Prediction,Score\n2018-08-28 23:00:05.000,1,4,84.53,0,0.25\n2018-08-28 23:00:06.000,1,4,300.0,1,-1.5\n"
        );
    }

    #[test]
    fn a_record_serialises_with_outcome_and_error() {
        let mut r = SensorRecord::new("r", &SensorId::new("1", "4"));
        r.fail("no model");
        let v: serde_json::Value = serde_json::from_slice(&r.to_json_line()).unwrap();
        assert_eq!(v["outcome"], "Failed");
        assert_eq!(v["error"], "no model");
        assert_eq!(v["sensor"], "1:4");
        assert!(v["timings"]["score_ms"].is_number());
    }
}
