//! A fast reader for the readings CSV (`TS,Device,Tag,Value`): one pass over the whole buffer,
//! split into line-aligned chunks parsed in parallel, rows grouped per sensor.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use bytes::Bytes;
use rayon::prelude::*;

use super::time::parse_timestamp_ms;
use super::{DataError, Series, TsRef};
use crate::sensor::SensorId;

/// The columns the reader needs, by name (case-insensitive), in any order.
pub const COLUMNS: [&str; 4] = ["TS", "Device", "Tag", "Value"];

/// Longest header line accepted.
pub const MAX_HEADER_BYTES: usize = 64 << 10;

/// How to read a CSV.
#[derive(Debug, Clone, Default)]
pub struct CsvOptions<'a> {
    /// Reject the first missing or malformed value instead of counting and skipping it.
    pub strict: bool,
    /// Also parse each timestamp into epoch milliseconds (needed for aggregation).
    pub parse_time: bool,
    /// Keep only these sensors (None: every sensor in the file).
    pub select: Option<&'a HashSet<SensorId>>,
}

/// The readings of one CSV buffer, grouped by sensor.
#[derive(Debug, Default)]
pub struct Parsed {
    /// Each selected sensor's readings, in file order.
    pub sensors: BTreeMap<SensorId, Series>,
    /// Data lines read (selected or not, good or bad; empty lines excluded).
    pub rows: usize,
    /// Lines that could not be attributed to any sensor (wrong field count, empty Device or Tag).
    pub bad_rows: usize,
    /// The first such line's problem.
    pub first_bad_row: Option<DataError>,
}

/// Where the four needed columns sit in a line.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub(super) ts: usize,
    pub(super) device: usize,
    pub(super) tag: usize,
    pub(super) value: usize,
    pub(super) fields: usize,
}

/// A problem found in one line, kept by byte offset so the line number is counted only on error.
#[derive(Debug, Clone)]
struct RowProblem {
    offset: usize,
    field: &'static str,
    reason: String,
}

/// FxHash: a fast non-cryptographic hasher; keys here are short byte strings from our own input.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// A sensor key: short (device, tag) pairs packed into one integer (no pointer to chase, one
/// compare), longer ones as slices.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key<'b> {
    Packed(u128),
    Long(&'b [u8], &'b [u8]),
}

fn key<'b>(device: &'b [u8], tag: &'b [u8]) -> Key<'b> {
    let (d, t) = (device.len(), tag.len());
    if d + t <= 14 {
        // Both lengths first, so ("1", "23") and ("12", "3") differ.
        let mut b = [0u8; 16];
        b[0] = d as u8;
        b[1] = t as u8;
        b[2..2 + d].copy_from_slice(device);
        b[2 + d..2 + d + t].copy_from_slice(tag);
        Key::Packed(u128::from_le_bytes(b))
    } else {
        Key::Long(device, tag)
    }
}

/// A sensor's (device, tag) as bytes in the buffer.
type RawId<'b> = (&'b [u8], &'b [u8]);

/// One chunk's result: per-sensor series keyed by the raw (device, tag) bytes.
#[derive(Default)]
struct ChunkOut<'b> {
    /// Position in `order` of each key seen.
    index: FxMap<Key<'b>, usize>,
    /// Keys in order of first appearance, with their series slot (None: not selected).
    order: Vec<(Key<'b>, Option<usize>)>,
    /// Position in `order` of the previous row's key: the reference's data cycles through the
    /// sensors in the same order at every timestamp, so the next key is usually the next one.
    last: usize,
    /// Selected sensors' series with their raw (device, tag).
    series: Vec<(RawId<'b>, Series)>,
    series_problem: Vec<Option<RowProblem>>,
    rows: usize,
    bad_rows: usize,
    first_problem: Option<RowProblem>,
}

/// Parses a whole CSV buffer (`file` names it in errors).
pub fn parse(file: &str, buf: &Bytes, opts: &CsvOptions<'_>) -> Result<Parsed, DataError> {
    let data: &[u8] = buf;
    let body_start = usize::from(data.starts_with(b"\xEF\xBB\xBF")) * 3;
    let header_end =
        memchr::memchr(b'\n', &data[body_start..]).map_or(data.len(), |i| body_start + i);
    if header_end == body_start && data.len() <= body_start {
        return Err(DataError::Header {
            file: file.to_string(),
            reason: "the file is empty".into(),
        });
    }
    let layout = read_header(file, &data[body_start..header_end])?;
    let start = (header_end + 1).min(data.len());

    let chunks = split_chunks(data, start);
    let outs: Vec<ChunkOut<'_>> = chunks
        .par_iter()
        .map(|&(s, e)| parse_chunk(data, s, e, layout, opts))
        .collect();

    if opts.strict {
        let first = outs
            .iter()
            .flat_map(|o| {
                o.first_problem
                    .iter()
                    .chain(o.series_problem.iter().flatten())
            })
            .min_by_key(|p| p.offset);
        if let Some(p) = first {
            return Err(row_error(file, data, p.clone()));
        }
    }
    Ok(merge(file, buf, outs))
}

/// Counts the line number (1-based, header = line 1) of a byte offset: done only on error.
pub(super) fn line_of(data: &[u8], offset: usize) -> usize {
    memchr::memchr_iter(b'\n', &data[..offset.min(data.len())]).count() + 1
}

fn row_error(file: &str, data: &[u8], p: RowProblem) -> DataError {
    DataError::Row {
        file: file.to_string(),
        line: line_of(data, p.offset),
        field: p.field,
        reason: p.reason,
    }
}

pub(super) fn read_header(file: &str, line: &[u8]) -> Result<Layout, DataError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // Column names are stored one by one: a huge header (say, a file of commas) must not be.
    if line.len() > MAX_HEADER_BYTES {
        return Err(DataError::Header {
            file: file.to_string(),
            reason: format!(
                "the header line is {} bytes long (at most {MAX_HEADER_BYTES})",
                line.len()
            ),
        });
    }
    let text = std::str::from_utf8(line).map_err(|_| DataError::Header {
        file: file.to_string(),
        reason: "the header is not UTF-8".into(),
    })?;
    let names: Vec<String> = text
        .split(',')
        .map(|n| n.trim().trim_matches('"').to_ascii_lowercase())
        .collect();
    let find = |col: &str| {
        names
            .iter()
            .position(|n| n == &col.to_ascii_lowercase())
            .ok_or_else(|| DataError::Header {
                file: file.to_string(),
                reason: format!(
                    "missing column {col} (expected {}; found {text:?})",
                    COLUMNS.join(",")
                ),
            })
    };
    Ok(Layout {
        ts: find("TS")?,
        device: find("Device")?,
        tag: find("Tag")?,
        value: find("Value")?,
        fields: names.len(),
    })
}

/// Splits the body into line-aligned chunks, a few per thread, so rayon can balance them.
pub(super) fn split_chunks(data: &[u8], start: usize) -> Vec<(usize, usize)> {
    let len = data.len().saturating_sub(start);
    let target = (len / (rayon::current_num_threads() * 4).max(1)).max(1 << 20);
    let mut chunks = Vec::new();
    let mut s = start;
    while s < data.len() {
        let want = (s + target).min(data.len());
        let e = if want >= data.len() {
            data.len()
        } else {
            memchr::memchr(b'\n', &data[want..]).map_or(data.len(), |i| want + i + 1)
        };
        chunks.push((s, e));
        s = e;
    }
    chunks
}

fn parse_chunk<'b>(
    data: &'b [u8],
    start: usize,
    end: usize,
    layout: Layout,
    opts: &CsvOptions<'_>,
) -> ChunkOut<'b> {
    let mut out = ChunkOut::default();
    let chunk = &data[start..end];
    let quoted = memchr::memchr(b'"', chunk).is_some();
    let mut fields: Vec<(usize, usize)> = Vec::with_capacity(layout.fields + 1);
    let mut line_start = start;
    let note = |out: &mut ChunkOut<'b>, p: RowProblem| {
        if out.first_problem.is_none() {
            out.first_problem = Some(p);
        }
    };
    while line_start < end {
        let nl = memchr::memchr(b'\n', &data[line_start..end]).map_or(end, |i| line_start + i);
        let mut line_end = nl;
        if line_end > line_start && data[line_end - 1] == b'\r' {
            line_end -= 1;
        }
        let ls = line_start;
        line_start = nl + 1;
        if line_end == ls {
            continue; // empty line (e.g. the trailing one)
        }
        out.rows += 1;
        fields.clear();
        let found = if quoted {
            split_quoted(data, ls, line_end, layout.fields, &mut fields)
        } else {
            split_plain(data, ls, line_end, layout.fields, &mut fields)
        };
        if found != layout.fields {
            out.bad_rows += 1;
            note(
                &mut out,
                RowProblem {
                    offset: ls,
                    field: "row",
                    reason: format!("expected {} fields, found {found}", layout.fields),
                },
            );
            continue;
        }
        let (ds, de) = fields[layout.device];
        let (gs, ge) = fields[layout.tag];
        let device = trim(&data[ds..de]);
        let tag = trim(&data[gs..ge]);
        if device.is_empty() || tag.is_empty() {
            out.bad_rows += 1;
            let field = if device.is_empty() { "Device" } else { "Tag" };
            note(
                &mut out,
                RowProblem {
                    offset: ls,
                    field,
                    reason: "empty".into(),
                },
            );
            continue;
        }
        let k = key(device, tag);
        let next = if out.last + 1 < out.order.len() {
            out.last + 1
        } else {
            0
        };
        let pos = if out.order.get(next).is_some_and(|e| e.0 == k) {
            next
        } else if let Some(&pos) = out.index.get(&k) {
            pos
        } else {
            let slot = match (std::str::from_utf8(device), std::str::from_utf8(tag)) {
                (Ok(d), Ok(t)) => {
                    let id = SensorId::new(unescape_quotes(d), unescape_quotes(t));
                    if opts.select.is_none_or(|s| s.contains(&id)) {
                        out.series.push(((device, tag), Series::default()));
                        out.series_problem.push(None);
                        Some(out.series.len() - 1)
                    } else {
                        None
                    }
                }
                _ => {
                    out.bad_rows += 1;
                    note(
                        &mut out,
                        RowProblem {
                            offset: ls,
                            field: "Device",
                            reason: "not UTF-8".into(),
                        },
                    );
                    continue;
                }
            };
            out.order.push((k, slot));
            out.index.insert(k, out.order.len() - 1);
            out.order.len() - 1
        };
        out.last = pos;
        let slot = out.order[pos].1;
        let Some(slot) = slot else { continue };
        let (ts_s, ts_e) = fields[layout.ts];
        let ts_bytes = trim(&data[ts_s..ts_e]);
        let (vs, ve) = fields[layout.value];
        let vbytes = trim(&data[vs..ve]);
        let value = match parse_value(vbytes) {
            Some(v) => v,
            None => {
                out.series[slot].1.skipped_rows += 1;
                let reason = if vbytes.is_empty() {
                    "missing value".to_string()
                } else {
                    format!("not a number: {:?}", String::from_utf8_lossy(vbytes))
                };
                note_series(
                    &mut out,
                    slot,
                    RowProblem {
                        offset: ls,
                        field: "Value",
                        reason,
                    },
                );
                continue;
            }
        };
        if ts_bytes.is_empty() {
            out.series[slot].1.skipped_rows += 1;
            note_series(
                &mut out,
                slot,
                RowProblem {
                    offset: ls,
                    field: "TS",
                    reason: "missing timestamp".into(),
                },
            );
            continue;
        }
        if opts.parse_time {
            match parse_timestamp_ms(ts_bytes) {
                Some(ms) => out.series[slot].1.time_ms.push(ms),
                None => {
                    out.series[slot].1.skipped_rows += 1;
                    let reason =
                        format!("not a timestamp: {:?}", String::from_utf8_lossy(ts_bytes));
                    note_series(
                        &mut out,
                        slot,
                        RowProblem {
                            offset: ls,
                            field: "TS",
                            reason,
                        },
                    );
                    continue;
                }
            }
        }
        let series = &mut out.series[slot].1;
        let ts_off = ts_bytes.as_ptr() as usize - data.as_ptr() as usize;
        series.ts.push(TsRef {
            src: 0,
            len: ts_bytes.len() as u32,
            start: ts_off as u64,
        });
        series.values.push(value);
    }
    out
}

fn note_series(out: &mut ChunkOut<'_>, slot: usize, p: RowProblem) {
    if out.series_problem[slot].is_none() {
        out.series_problem[slot] = Some(p);
    }
}

/// A quoted field's text with each doubled quote made single (`a""b` is `a"b`).
pub(super) fn unescape_quotes(field: &str) -> std::borrow::Cow<'_, str> {
    if field.contains("\"\"") {
        field.replace("\"\"", "\"").into()
    } else {
        field.into()
    }
}

/// A Device or Tag field as text (invalid UTF-8 replaced, doubled quotes made single).
pub(super) fn field_text(bytes: &[u8]) -> String {
    unescape_quotes(&String::from_utf8_lossy(bytes)).into_owned()
}

/// Splits one unquoted line at commas into at most `max` fields; returns how many it has.
/// Storing no more than `max` keeps memory per line bounded (a line of commas is one count).
pub(super) fn split_plain(
    data: &[u8],
    ls: usize,
    le: usize,
    max: usize,
    fields: &mut Vec<(usize, usize)>,
) -> usize {
    let mut fs = ls;
    let mut found = 0;
    for i in memchr::memchr_iter(b',', &data[ls..le]) {
        if found < max {
            fields.push((fs, ls + i));
        }
        found += 1;
        fs = ls + i + 1;
    }
    if found < max {
        fields.push((fs, le));
    }
    found + 1
}

/// Splits one line into at most `max` fields, honouring double quotes (the enclosing quotes are
/// left out; doubled quotes inside stay doubled, see [`unescape_quotes`]); returns how many fields
/// the line has, stored or not, so memory per line stays bounded.
pub(super) fn split_quoted(
    data: &[u8],
    ls: usize,
    le: usize,
    max: usize,
    fields: &mut Vec<(usize, usize)>,
) -> usize {
    let mut found = 0;
    let mut push = |f: (usize, usize)| {
        if found < max {
            fields.push(f);
        }
        found += 1;
    };
    let mut i = ls;
    loop {
        if i < le && data[i] == b'"' {
            let s = i + 1;
            let mut j = s;
            // A doubled quote inside a quoted field is an escaped quote (RFC 4180), not its end.
            while j < le {
                if data[j] == b'"' {
                    if j + 1 < le && data[j + 1] == b'"' {
                        j += 2;
                        continue;
                    }
                    break;
                }
                j += 1;
            }
            push((s, j));
            // Skip to the comma after the closing quote.
            while j < le && data[j] != b',' {
                j += 1;
            }
            if j >= le {
                return found;
            }
            i = j + 1;
        } else {
            let s = i;
            while i < le && data[i] != b',' {
                i += 1;
            }
            push((s, i));
            if i >= le {
                return found;
            }
            i += 1;
        }
    }
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// Parses a decimal number; None for empty, non-numeric or non-finite text.
///
/// Plain decimals with at most 15 significant digits take an exact fast path (the mantissa and
/// the power of ten are both exact doubles, and one IEEE division rounds correctly); anything else
/// goes through the standard library.
pub fn parse_value(b: &[u8]) -> Option<f64> {
    if let Some(v) = fast_decimal(b) {
        return Some(v);
    }
    let s = std::str::from_utf8(b).ok()?;
    let v: f64 = s.parse().ok()?;
    v.is_finite().then_some(v)
}

fn fast_decimal(b: &[u8]) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (neg, digits) = match b.first()? {
        b'-' => (true, &b[1..]),
        b'+' => (false, &b[1..]),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    let mut mant: u64 = 0;
    let mut n_digits = 0usize;
    let mut frac_digits = 0usize;
    let mut seen_dot = false;
    for &c in digits {
        match c {
            b'0'..=b'9' => {
                mant = mant * 10 + u64::from(c - b'0');
                n_digits += 1;
                if seen_dot {
                    frac_digits += 1;
                }
            }
            b'.' if !seen_dot => seen_dot = true,
            _ => return None,
        }
    }
    if n_digits == 0 || n_digits > 15 {
        return None;
    }
    let v = mant as f64 / POW10[frac_digits];
    Some(if neg { -v } else { v })
}

/// Joins the chunks' results in file order (sensors concatenated in parallel).
fn merge(file: &str, buf: &Bytes, outs: Vec<ChunkOut<'_>>) -> Parsed {
    let mut parsed = Parsed::default();
    let mut names: HashMap<(&[u8], &[u8]), SensorId> = HashMap::new();
    let mut groups: BTreeMap<SensorId, (Vec<Series>, Option<RowProblem>)> = BTreeMap::new();
    let mut first_bad: Option<RowProblem> = None;
    for out in outs {
        parsed.rows += out.rows;
        parsed.bad_rows += out.bad_rows;
        if first_bad.is_none() {
            first_bad = out.first_problem;
        }
        for ((key, series), problem) in out.series.into_iter().zip(out.series_problem) {
            let id = names
                .entry(key)
                .or_insert_with(|| SensorId::new(field_text(key.0), field_text(key.1)))
                .clone();
            let group = groups.entry(id).or_default();
            group.0.push(series);
            if group.1.is_none() {
                group.1 = problem;
            }
        }
    }
    // Line numbers for the (rare) problems, counted in one forward pass.
    let mut problems: Vec<(usize, Option<SensorId>, RowProblem)> = Vec::new();
    if let Some(p) = first_bad {
        problems.push((p.offset, None, p));
    }
    for (id, (_, p)) in groups.iter_mut() {
        if let Some(p) = p.take() {
            problems.push((p.offset, Some(id.clone()), p));
        }
    }
    problems.sort_by_key(|p| p.0);
    let mut lines = LineCounter::default();
    let mut issues: HashMap<SensorId, DataError> = HashMap::new();
    for (_, id, p) in problems {
        let err = lines.error(file, buf, p);
        match id {
            None => parsed.first_bad_row = Some(err),
            Some(id) => {
                issues.insert(id, err);
            }
        }
    }
    parsed.sensors = groups
        .into_par_iter()
        .map(|(id, (parts, _))| {
            let n: usize = parts.iter().map(|p| p.values.len()).sum();
            let nt: usize = parts.iter().map(|p| p.time_ms.len()).sum();
            let mut s = Series {
                sources: vec![buf.clone()],
                ts: Vec::with_capacity(n),
                time_ms: Vec::with_capacity(nt),
                values: Vec::with_capacity(n),
                skipped_rows: 0,
                first_issue: None,
            };
            for p in parts {
                s.ts.extend_from_slice(&p.ts);
                s.values.extend_from_slice(&p.values);
                s.time_ms.extend_from_slice(&p.time_ms);
                s.skipped_rows += p.skipped_rows;
            }
            (id, s)
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|(id, mut s)| {
            s.first_issue = issues.remove(&id);
            (id, s)
        })
        .collect();
    parsed
}

/// Turns byte offsets into line numbers, counting newlines forward from the last offset asked
/// (offsets asked in mostly rising order, so the file is scanned about once).
#[derive(Default)]
struct LineCounter {
    offset: usize,
    line: usize,
}

impl LineCounter {
    fn error(&mut self, file: &str, data: &[u8], p: RowProblem) -> DataError {
        let line = if p.offset >= self.offset && self.line > 0 {
            self.line + memchr::memchr_iter(b'\n', &data[self.offset..p.offset]).count()
        } else {
            line_of(data, p.offset)
        };
        self.offset = p.offset;
        self.line = line;
        DataError::Row {
            file: file.to_string(),
            line,
            field: p.field,
            reason: p.reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str, strict: bool) -> Result<Parsed, DataError> {
        let buf = Bytes::from(text.to_string());
        parse(
            "test.csv",
            &buf,
            &CsvOptions {
                strict,
                parse_time: true,
                select: None,
            },
        )
    }

    #[test]
    fn the_reference_format_is_grouped_per_sensor_in_file_order() {
        let p = parse_str(
            "TS,Device,Tag,Value\n2018-08-28 23:00:05.000,1,4,84.53\n2018-08-28 23:00:05.000,2,4,1.5\n2018-08-28 23:00:06.000,1,4,-3\n",
            false,
        )
        .unwrap();
        assert_eq!(p.rows, 3);
        let s = &p.sensors[&SensorId::new("1", "4")];
        assert_eq!(s.values, vec![84.53, -3.0]);
        assert_eq!(s.ts_text(0), "2018-08-28 23:00:05.000");
        assert_eq!(s.time_ms[1] - s.time_ms[0], 1000);
        assert_eq!(p.sensors[&SensorId::new("2", "4")].values, vec![1.5]);
    }

    #[test]
    fn crlf_a_bom_quotes_and_a_missing_final_newline_are_accepted() {
        let p = parse_str(
            "\u{feff}\"TS\",\"Device\",\"Tag\",\"Value\"\r\n\"2018-08-28 23:00:05\",\"1\",\"4\",\"2.5\"\r\n2018-08-28 23:00:06,1,4,3.5",
            true,
        )
        .unwrap();
        let s = &p.sensors[&SensorId::new("1", "4")];
        assert_eq!(s.values, vec![2.5, 3.5]);
        assert_eq!(s.ts_text(0), "2018-08-28 23:00:05");
    }

    #[test]
    fn doubled_quotes_inside_a_quoted_field_are_one_quote_and_keep_commas_inside() {
        let csv = "TS,Device,Tag,Value\n2018-08-28 23:00:05,\"pump \"\"A\"\", north\",4,1.5\n2018-08-28 23:00:06,\"pump \"\"A\"\", north\",4,2.5\n";
        let p = parse_str(csv, true).unwrap();
        let s = &p.sensors[&SensorId::new("pump \"A\", north", "4")];
        assert_eq!(s.values, vec![1.5, 2.5]);
    }

    #[test]
    fn columns_may_come_in_another_order() {
        let p = parse_str("Value,Tag,Device,TS\n7.25,4,1,2018-08-28T23:00:05Z\n", true).unwrap();
        assert_eq!(p.sensors[&SensorId::new("1", "4")].values, vec![7.25]);
    }

    #[test]
    fn missing_and_non_numeric_values_are_counted_and_skipped() {
        let p = parse_str(
            "TS,Device,Tag,Value\nt1,1,4,\nt2,1,4,abc\nt3,1,4,NaN\nt4,1,4,5\n",
            false,
        );
        // Timestamps "t1".. are not parseable, but only parse_time makes that matter: use a second read.
        assert!(p.is_ok());
        let buf =
            Bytes::from_static(b"TS,Device,Tag,Value\nt1,1,4,\nt2,1,4,abc\nt3,1,4,NaN\nt4,1,4,5\n");
        let p = parse("x.csv", &buf, &CsvOptions::default()).unwrap();
        let s = &p.sensors[&SensorId::new("1", "4")];
        assert_eq!(s.values, vec![5.0]);
        assert_eq!(s.skipped_rows, 3);
    }

    #[test]
    fn strict_mode_names_the_file_line_and_field_of_the_first_bad_value() {
        let buf = Bytes::from_static(b"TS,Device,Tag,Value\nt1,1,4,1\nt2,1,4,abc\nt3,1,4,\n");
        let opts = CsvOptions {
            strict: true,
            ..CsvOptions::default()
        };
        let err = parse("data/x.csv", &buf, &opts).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("data/x.csv:3"), "{msg}");
        assert!(msg.contains("Value"), "{msg}");
        assert!(msg.contains("abc"), "{msg}");
    }

    #[test]
    fn rows_with_the_wrong_field_count_are_bad_rows_or_strict_errors() {
        let buf = Bytes::from_static(b"TS,Device,Tag,Value\nt1,1,4\nt2,1,4,2\n");
        let p = parse("x.csv", &buf, &CsvOptions::default()).unwrap();
        assert_eq!(p.bad_rows, 1);
        let opts = CsvOptions {
            strict: true,
            ..CsvOptions::default()
        };
        let msg = parse("x.csv", &buf, &opts).unwrap_err().to_string();
        assert!(
            msg.contains("x.csv:2") && msg.contains("expected 4 fields"),
            "{msg}"
        );
    }

    #[test]
    fn a_line_of_commas_stores_at_most_the_expected_fields() {
        // 4 MB of commas: before, one (start, end) pair (16 bytes) was stored per comma.
        let commas = vec![b','; 4 << 20];
        let mut fields = Vec::new();
        assert_eq!(
            split_plain(&commas, 0, commas.len(), 4, &mut fields),
            (4 << 20) + 1
        );
        assert_eq!(fields.len(), 4);
        fields.clear();
        assert_eq!(
            split_quoted(&commas, 0, commas.len(), 4, &mut fields),
            (4 << 20) + 1
        );
        assert_eq!(fields.len(), 4);
        fields.clear();
        let quoted = b"\"a,b\",2,\"x\"\"y\"";
        assert_eq!(split_quoted(quoted, 0, quoted.len(), 2, &mut fields), 3);
        assert_eq!(fields, vec![(1, 4), (6, 7)]);
        let mut text = b"TS,Device,Tag,Value\nt1,1,4,1\n".to_vec();
        text.extend_from_slice(&commas);
        text.extend_from_slice(b"\nt2,1,4,2\n");
        let buf = Bytes::from(text);
        let p = parse("c.csv", &buf, &CsvOptions::default()).unwrap();
        assert_eq!((p.rows, p.bad_rows), (3, 1));
        let err = p.first_bad_row.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("c.csv:3") && err.contains("found 4194305"),
            "{err}"
        );
    }

    #[test]
    fn a_header_longer_than_the_limit_is_refused_before_it_is_split() {
        let mut text = vec![b','; MAX_HEADER_BYTES + 1];
        text.push(b'\n');
        let msg = parse("h.csv", &Bytes::from(text), &CsvOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("h.csv") && msg.contains("header line is 65537 bytes"),
            "{msg}"
        );
    }

    #[test]
    fn a_wrong_header_names_the_file_and_the_missing_column() {
        let buf = Bytes::from_static(b"time,device,tag,val\n1,1,4,1\n");
        let msg = parse("in.csv", &buf, &CsvOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("in.csv") && msg.contains("TS"), "{msg}");
        let empty = parse("e.csv", &Bytes::new(), &CsvOptions::default()).unwrap_err();
        assert!(empty.to_string().contains("e.csv"));
    }

    #[test]
    fn sensors_whose_names_concatenate_alike_stay_apart() {
        let buf = Bytes::from_static(b"TS,Device,Tag,Value\nt,1,23,1\nt,12,3,2\nt,1,23,3\nt,123456789012345,6,4\nt,1234567890123456,,5\n");
        let p = parse("x.csv", &buf, &CsvOptions::default()).unwrap();
        assert_eq!(p.sensors[&SensorId::new("1", "23")].values, vec![1.0, 3.0]);
        assert_eq!(p.sensors[&SensorId::new("12", "3")].values, vec![2.0]);
        assert_eq!(
            p.sensors[&SensorId::new("123456789012345", "6")].values,
            vec![4.0]
        );
        assert_eq!(p.bad_rows, 1);
    }

    #[test]
    fn a_selection_keeps_only_the_chosen_sensors() {
        let buf = Bytes::from_static(b"TS,Device,Tag,Value\nt,1,4,1\nt,1,5,2\nt,2,4,3\n");
        let sel: HashSet<SensorId> = [SensorId::new("1", "5")].into_iter().collect();
        let p = parse(
            "x.csv",
            &buf,
            &CsvOptions {
                select: Some(&sel),
                ..CsvOptions::default()
            },
        )
        .unwrap();
        assert_eq!(p.sensors.len(), 1);
        assert_eq!(p.sensors[&SensorId::new("1", "5")].values, vec![2.0]);
    }

    #[test]
    fn the_fast_float_path_agrees_with_the_standard_library() {
        for s in [
            "84.53",
            "-0.1",
            "0",
            "123456789.012345",
            "1e5",
            "0.30000000000000004",
            ".5",
            "5.",
        ] {
            let ours = parse_value(s.as_bytes()).unwrap();
            let std: f64 = s.parse().unwrap();
            assert_eq!(ours.to_bits(), std.to_bits(), "{s}");
        }
        assert_eq!(parse_value(b"inf"), None);
        assert_eq!(parse_value(b"-"), None);
        assert_eq!(parse_value(b"."), None);
    }

    #[test]
    fn many_chunks_give_the_same_result_as_one() {
        let mut text = String::from("TS,Device,Tag,Value\n");
        for i in 0..200_000 {
            text.push_str(&format!(
                "2018-08-28 23:00:{:02}.000,{},{},{}.25\n",
                i % 60,
                i % 7,
                i % 3,
                i
            ));
        }
        let p = parse_str(&text, true).unwrap();
        assert_eq!(p.rows, 200_000);
        let total: usize = p.sensors.values().map(|s| s.values.len()).sum();
        assert_eq!(total, 200_000);
        let s = &p.sensors[&SensorId::new("0", "0")];
        assert!(s.values.windows(2).all(|w| w[0] < w[1]));
    }
}
