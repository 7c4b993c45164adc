//! Splits one long readings CSV into the per-sensor layout `device=<D>/tag=<T>/part-0.csv` in one
//! pass, copying each line as it was, so a fleet run reads every sensor's data once.

use std::collections::BTreeMap;
use std::collections::HashMap;

use bytes::Bytes;
use rayon::prelude::*;

use super::DataError;
use super::csv::{field_text, read_header, split_chunks, split_quoted};
use crate::output::{decode_path_segment, path_segment};
use crate::sensor::SensorId;

/// One sensor's part file: its relative path and its content (header plus the sensor's lines).
#[derive(Debug, Clone)]
pub struct Part {
    /// The sensor.
    pub sensor: SensorId,
    /// Path relative to the output prefix, e.g. `device=1/tag=4/part-0.csv`.
    pub path: String,
    /// The file's bytes.
    pub content: Bytes,
    /// Data lines in it.
    pub rows: usize,
}

/// The result of partitioning one file.
#[derive(Debug, Default)]
pub struct Partitioned {
    /// One part per sensor, sorted by sensor.
    pub parts: Vec<Part>,
    /// Lines that name no sensor (wrong field count, empty Device or Tag), left out.
    pub bad_rows: usize,
    /// The first such line as `file:line`.
    pub first_bad_row: Option<String>,
}

/// The relative path of a sensor's part file.
pub fn part_path(sensor: &SensorId) -> String {
    format!(
        "device={}/tag={}/part-0.csv",
        path_segment(&sensor.device),
        path_segment(&sensor.tag)
    )
}

/// Parses `device=<D>/tag=<T>/<file>.csv` back into the sensor.
pub fn sensor_of_part(rel: &str) -> Option<SensorId> {
    let mut it = rel.split('/');
    let device = it.next()?.strip_prefix("device=")?;
    let tag = it.next()?.strip_prefix("tag=")?;
    let file = it.next()?;
    if it.next().is_some() || !file.ends_with(".csv") || device.is_empty() || tag.is_empty() {
        return None;
    }
    Some(SensorId::new(
        decode_path_segment(device),
        decode_path_segment(tag),
    ))
}

/// Splits `buf` (named `file` in errors) into one part per sensor.
pub fn partition(file: &str, buf: &[u8]) -> Result<Partitioned, DataError> {
    let body_start = usize::from(buf.starts_with(b"\xEF\xBB\xBF")) * 3;
    let header_end =
        memchr::memchr(b'\n', &buf[body_start..]).map_or(buf.len(), |i| body_start + i);
    if buf.len() <= body_start {
        return Err(DataError::Header {
            file: file.to_string(),
            reason: "the file is empty".into(),
        });
    }
    let header = &buf[body_start..header_end];
    let layout = read_header(file, header)?;
    let header = header.strip_suffix(b"\r").unwrap_or(header);
    let start = (header_end + 1).min(buf.len());

    type Lines<'b> = Vec<((&'b [u8], &'b [u8]), Vec<(usize, usize)>)>;
    let chunks = split_chunks(buf, start);
    let outs: Vec<(Lines<'_>, usize, Option<usize>)> = chunks
        .par_iter()
        .map(|&(s, e)| {
            let mut index: HashMap<(&[u8], &[u8]), usize> = HashMap::new();
            let mut groups: Lines<'_> = Vec::new();
            let mut bad = 0;
            let mut first_bad: Option<usize> = None;
            let mut fields = Vec::with_capacity(layout.fields + 1);
            let mut ls = s;
            while ls < e {
                let nl = memchr::memchr(b'\n', &buf[ls..e]).map_or(e, |i| ls + i);
                let le = if nl > ls && buf[nl - 1] == b'\r' {
                    nl - 1
                } else {
                    nl
                };
                let line_start = ls;
                ls = nl + 1;
                if le == line_start {
                    continue;
                }
                fields.clear();
                if split_quoted(buf, line_start, le, layout.fields, &mut fields) != layout.fields {
                    bad += 1;
                    first_bad.get_or_insert(line_start);
                    continue;
                }
                let device = buf[fields[layout.device].0..fields[layout.device].1].trim_ascii();
                let tag = buf[fields[layout.tag].0..fields[layout.tag].1].trim_ascii();
                if device.is_empty() || tag.is_empty() {
                    bad += 1;
                    first_bad.get_or_insert(line_start);
                    continue;
                }
                let slot = *index.entry((device, tag)).or_insert_with(|| {
                    groups.push(((device, tag), Vec::new()));
                    groups.len() - 1
                });
                groups[slot].1.push((line_start, le));
            }
            (groups, bad, first_bad)
        })
        .collect();

    let mut merged: BTreeMap<SensorId, Vec<(usize, usize)>> = BTreeMap::new();
    let mut result = Partitioned::default();
    for (groups, bad, first_bad) in outs {
        result.bad_rows += bad;
        if result.first_bad_row.is_none()
            && let Some(offset) = first_bad
        {
            result.first_bad_row = Some(format!("{file}:{}", super::csv::line_of(buf, offset)));
        }
        for ((d, t), lines) in groups {
            let id = SensorId::new(field_text(d), field_text(t));
            merged.entry(id).or_default().extend(lines);
        }
    }
    result.parts = merged
        .into_par_iter()
        .map(|(sensor, lines)| {
            let size = header.len() + 1 + lines.iter().map(|(s, e)| e - s + 1).sum::<usize>();
            let mut out = Vec::with_capacity(size);
            out.extend_from_slice(header);
            out.push(b'\n');
            for &(s, e) in &lines {
                out.extend_from_slice(&buf[s..e]);
                out.push(b'\n');
            }
            Part {
                path: part_path(&sensor),
                sensor,
                content: Bytes::from(out),
                rows: lines.len(),
            }
        })
        .collect();
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sensor_gets_its_lines_in_file_order_under_a_deterministic_path() {
        let input = b"TS,Device,Tag,Value\r\nt1,1,4,1.0\r\nt1,2,4,2.0\r\nt2,1,4,\r\nbad line\r\n";
        let p = partition("in.csv", input).unwrap();
        assert_eq!(p.bad_rows, 1);
        assert_eq!(p.first_bad_row.as_deref(), Some("in.csv:5"));
        assert_eq!(p.parts.len(), 2);
        assert_eq!(p.parts[0].path, "device=1/tag=4/part-0.csv");
        assert_eq!(
            &p.parts[0].content[..],
            b"TS,Device,Tag,Value\nt1,1,4,1.0\nt2,1,4,\n"
        );
        assert_eq!(p.parts[0].rows, 2);
        assert_eq!(p.parts[1].sensor, SensorId::new("2", "4"));
        assert_eq!(
            sensor_of_part(&p.parts[1].path),
            Some(SensorId::new("2", "4"))
        );
        assert_eq!(sensor_of_part("device=1/x.csv"), None);
    }

    #[test]
    fn partitioning_twice_gives_identical_bytes() {
        let mut text = String::from("TS,Device,Tag,Value\n");
        for i in 0..50_000 {
            text.push_str(&format!("t{i},{},{},{i}\n", i % 13, i % 2));
        }
        let a = partition("x.csv", text.as_bytes()).unwrap();
        let b = partition("x.csv", text.as_bytes()).unwrap();
        assert_eq!(a.parts.len(), 26);
        for (pa, pb) in a.parts.iter().zip(&b.parts) {
            assert_eq!(pa.content, pb.content);
        }
        assert_eq!(a.parts.iter().map(|p| p.rows).sum::<usize>(), 50_000);
    }

    #[test]
    fn a_header_without_the_needed_columns_is_an_error_naming_the_file() {
        let err = partition("in.csv", b"a,b\n1,2\n").unwrap_err();
        assert!(err.to_string().contains("in.csv"));
    }
}
