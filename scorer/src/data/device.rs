//! Device-level feature rows (`score --device-features TAG,...`): a model of a whole device reads
//! several tags of that device per row, so the tags' readings are aligned by timestamp (raw
//! values: one feature per tag) or by aggregation window (each tag's window features in turn:
//! `tagA.mean, tagA.max, tagB.mean, ...`). Every row needs every tag: a tag without a reading at
//! a timestamp (or window) another tag has is an error naming both, never a silent gap.

use std::collections::BTreeMap;

use ndarray::Array2;

use super::Series;
use super::aggregate::{Aggregation, aggregate};
use super::time::format_ms;

/// Why a device's rows could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeviceError {
    /// A configured tag has no readings at all.
    #[error("device {device}: tag {tag} has no readings (--device-features {tags})")]
    NoReadings {
        /// Device.
        device: String,
        /// The missing tag.
        tag: String,
        /// The configured tag list.
        tags: String,
    },
    /// A tag lacks a reading at a timestamp (or window) another tag has.
    #[error(
        "device {device}: tag {tag} has no {what} at {at}, which tag {other} has (--device-features aligns tags by {what})"
    )]
    Missing {
        /// Device.
        device: String,
        /// The tag without a value.
        tag: String,
        /// A tag that has one.
        other: String,
        /// `reading` or `window`.
        what: &'static str,
        /// The timestamp or window start.
        at: String,
    },
    /// A tag has two readings at one timestamp, so the row is ambiguous.
    #[error("device {device}: tag {tag} has two readings at {at}")]
    Duplicate {
        /// Device.
        device: String,
        /// The tag.
        tag: String,
        /// The timestamp.
        at: String,
    },
}

/// Aligned rows of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRows {
    /// rows × features, ascending by time.
    pub x: Array2<f64>,
    /// Each row's time: the reading's timestamp text, or the window start.
    pub ts: Vec<String>,
}

/// Builds a device's rows from its tags' series (parsed with times), in `tags` order.
pub fn device_rows(
    device: &str,
    tags: &[String],
    series: &[Option<&Series>],
    agg: Option<&Aggregation>,
) -> Result<DeviceRows, DeviceError> {
    let mut per_tag: Vec<BTreeMap<i64, Vec<f64>>> = Vec::with_capacity(tags.len());
    let mut ts_text: BTreeMap<i64, String> = BTreeMap::new();
    for (tag, s) in tags.iter().zip(series) {
        let s = s
            .filter(|s| !s.is_empty())
            .ok_or_else(|| DeviceError::NoReadings {
                device: device.into(),
                tag: tag.clone(),
                tags: tags.join(","),
            })?;
        let mut m = BTreeMap::new();
        match agg {
            None => {
                for (i, t) in s.time_ms.iter().enumerate() {
                    if m.insert(*t, vec![s.values[i]]).is_some() {
                        return Err(DeviceError::Duplicate {
                            device: device.into(),
                            tag: tag.clone(),
                            at: s.ts_text(i),
                        });
                    }
                    ts_text.entry(*t).or_insert_with(|| s.ts_text(i));
                }
            }
            Some(a) => {
                let w = aggregate(a, &s.time_ms, &s.values);
                for (r, start) in w.start_ms.iter().enumerate() {
                    m.insert(*start, w.x.row(r).to_vec());
                }
            }
        }
        per_tag.push(m);
    }
    // Every time any tag has must be in every tag.
    let mut times: Vec<i64> = per_tag.iter().flat_map(|m| m.keys().copied()).collect();
    times.sort_unstable();
    times.dedup();
    let width: usize = per_tag
        .iter()
        .map(|m| m.values().next().map_or(0, Vec::len))
        .sum();
    let mut flat = Vec::with_capacity(times.len() * width);
    let what = if agg.is_some() { "window" } else { "reading" };
    for t in &times {
        for (k, m) in per_tag.iter().enumerate() {
            match m.get(t) {
                Some(v) => flat.extend_from_slice(v),
                None => {
                    let other = per_tag.iter().position(|o| o.contains_key(t)).unwrap_or(0);
                    let at = ts_text.get(t).cloned().unwrap_or_else(|| format_ms(*t));
                    return Err(DeviceError::Missing {
                        device: device.into(),
                        tag: tags[k].clone(),
                        other: tags[other].clone(),
                        what,
                        at,
                    });
                }
            }
        }
    }
    let ts = times
        .iter()
        .map(|t| ts_text.get(t).cloned().unwrap_or_else(|| format_ms(*t)))
        .collect();
    // The shape is consistent by construction (every row took `width` values).
    let x = Array2::from_shape_vec((times.len(), width), flat)
        .unwrap_or_else(|_| Array2::zeros((0, width)));
    Ok(DeviceRows { x, ts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::csv::{CsvOptions, parse};
    use crate::sensor::SensorId;

    fn series(csv: &str) -> BTreeMap<SensorId, Series> {
        let opts = CsvOptions {
            strict: false,
            parse_time: true,
            select: None,
        };
        parse("t.csv", &bytes::Bytes::from(csv.to_string()), &opts)
            .unwrap()
            .sensors
    }

    #[test]
    fn tags_are_aligned_by_timestamp_in_the_configured_order() {
        let s = series(
            "TS,Device,Tag,Value\n2018-08-28 00:00:00.000,1,b,10\n2018-08-28 00:00:00.000,1,a,1\n\
             2018-08-28 00:01:00.000,1,a,2\n2018-08-28 00:01:00.000,1,b,20\n",
        );
        let tags = ["a".to_string(), "b".to_string()];
        let refs = [
            s.get(&SensorId::new("1", "a")),
            s.get(&SensorId::new("1", "b")),
        ];
        let rows = device_rows("1", &tags, &refs, None).unwrap();
        assert_eq!(rows.x, ndarray::array![[1.0, 10.0], [2.0, 20.0]]);
        assert_eq!(
            rows.ts,
            ["2018-08-28 00:00:00.000", "2018-08-28 00:01:00.000"]
        );
    }

    #[test]
    fn a_tag_missing_at_a_timestamp_is_an_error_naming_tag_and_time() {
        let s = series(
            "TS,Device,Tag,Value\n2018-08-28 00:00:00.000,1,a,1\n2018-08-28 00:01:00.000,1,a,2\n2018-08-28 00:00:00.000,1,b,3\n",
        );
        let tags = ["a".to_string(), "b".to_string()];
        let refs = [
            s.get(&SensorId::new("1", "a")),
            s.get(&SensorId::new("1", "b")),
        ];
        let err = device_rows("1", &tags, &refs, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tag b has no reading at 2018-08-28 00:01:00.000, which tag a has"),
            "{err}"
        );
        let err = device_rows("1", &["a".into(), "c".into()], &[refs[0], None], None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("tag c has no readings"), "{err}");
    }

    #[test]
    fn with_aggregation_each_tag_contributes_its_window_features() {
        let s = series(
            "TS,Device,Tag,Value\n2018-08-28 00:00:10.000,1,a,1\n2018-08-28 00:00:20.000,1,a,3\n\
             2018-08-28 00:00:30.000,1,b,5\n",
        );
        let agg = Aggregation::parse("1m", "mean,max").unwrap();
        let tags = ["a".to_string(), "b".to_string()];
        let refs = [
            s.get(&SensorId::new("1", "a")),
            s.get(&SensorId::new("1", "b")),
        ];
        let rows = device_rows("1", &tags, &refs, Some(&agg)).unwrap();
        assert_eq!(rows.x, ndarray::array![[2.0, 3.0, 5.0, 5.0]]);
    }
}
