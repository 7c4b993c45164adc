//! Sensor readings: the reference's long CSV, the partitioned per-sensor layout, windowed
//! aggregation and a synthetic fleet generator.

pub mod aggregate;
pub mod csv;
pub mod device;
pub mod generate;
pub mod partition;
pub mod time;

use bytes::Bytes;

/// Why readings could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DataError {
    /// The header line is missing or lacks a needed column.
    #[error("{file}: bad header: {reason}")]
    Header {
        /// The file read.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// A data line is malformed (reported under `--strict`, counted otherwise).
    #[error("{file}:{line}: field {field}: {reason}")]
    Row {
        /// The file read.
        file: String,
        /// 1-based line number (the header is line 1).
        line: usize,
        /// The column at fault (`TS`, `Device`, `Tag`, `Value`, or `row` for the field count).
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An aggregation setting is invalid.
    #[error("invalid aggregation: {0}")]
    Aggregation(String),
}

/// Where one timestamp's original text sits: in `Series::sources[src]` at `start..start+len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsRef {
    /// Index into the series' source buffers.
    pub src: u32,
    /// Length in bytes.
    pub len: u32,
    /// Byte offset in the source buffer.
    pub start: u64,
}

/// One sensor's readings in file order: timestamps kept as their original text (echoed to the
/// output), values as floats, and the count of rows skipped for missing or bad values.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// The buffers the timestamps point into (shared, not copied).
    pub sources: Vec<Bytes>,
    /// Each reading's timestamp text.
    pub ts: Vec<TsRef>,
    /// Each reading's timestamp in epoch milliseconds (empty unless asked for).
    pub time_ms: Vec<i64>,
    /// Each reading's value.
    pub values: Vec<f64>,
    /// Rows of this sensor skipped for a missing or malformed value or timestamp.
    pub skipped_rows: usize,
    /// The first skipped row's problem (file, line, field): the error under `--strict`.
    pub first_issue: Option<DataError>,
}

impl Series {
    /// Number of readings kept.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when no reading was kept.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The raw bytes of reading `i`'s timestamp.
    pub fn ts_bytes(&self, i: usize) -> &[u8] {
        let r = self.ts[i];
        let start = r.start as usize;
        &self.sources[r.src as usize][start..start + r.len as usize]
    }

    /// Reading `i`'s timestamp as text (lossy for non-UTF-8 input).
    pub fn ts_text(&self, i: usize) -> String {
        String::from_utf8_lossy(self.ts_bytes(i)).into_owned()
    }

    /// Appends another series (e.g. the next part file of a partition).
    pub fn append(&mut self, mut other: Series) {
        let offset = self.sources.len() as u32;
        self.sources.append(&mut other.sources);
        self.ts.extend(other.ts.into_iter().map(|mut r| {
            r.src += offset;
            r
        }));
        self.time_ms.extend(other.time_ms);
        self.values.extend(other.values);
        self.skipped_rows += other.skipped_rows;
        if self.first_issue.is_none() {
            self.first_issue = other.first_issue;
        }
    }
}
