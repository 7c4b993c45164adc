//! Windowed aggregation: readings grouped into fixed intervals aligned to epoch multiples
//! (a 5m window starts at a multiple of 5 minutes since 1970), each window one feature row.

use std::fmt;
use std::str::FromStr;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::DataError;

/// One per-window feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Feature {
    /// Arithmetic mean.
    Mean,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Population standard deviation (ddof 0, so a one-reading window gives 0, not NaN).
    Std,
    /// Number of readings.
    Count,
}

impl FromStr for Feature {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "mean" => Self::Mean,
            "min" => Self::Min,
            "max" => Self::Max,
            "std" => Self::Std,
            "count" => Self::Count,
            other => {
                return Err(DataError::Aggregation(format!(
                    "unknown feature {other:?} (expected mean, min, max, std, count)"
                )));
            }
        })
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mean => "mean",
            Self::Min => "min",
            Self::Max => "max",
            Self::Std => "std",
            Self::Count => "count",
        })
    }
}

/// An aggregation setting: interval and features (the model's inputs, in this order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aggregation {
    /// Window length in milliseconds.
    pub interval_ms: i64,
    /// Features per window; the first one is echoed as `Val` in the predictions.
    pub features: Vec<Feature>,
}

impl Aggregation {
    /// Parses `--aggregate` (`30s`, `1m`, `5m`, `1h`, `1d`) and `--features` (`mean,min,…`).
    pub fn parse(interval: &str, features: &str) -> Result<Self, DataError> {
        let interval_ms = parse_interval_ms(interval)?;
        let features = features
            .split(',')
            .filter(|f| !f.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Feature>, _>>()?;
        if features.is_empty() {
            return Err(DataError::Aggregation("no features given".into()));
        }
        Ok(Self {
            interval_ms,
            features,
        })
    }

    /// The interval as text (`5m`), as `--aggregate` takes it.
    pub fn interval_text(&self) -> String {
        let ms = self.interval_ms;
        for (unit, len) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ] {
            if ms % len == 0 {
                return format!("{}{unit}", ms / len);
            }
        }
        format!("{ms}ms")
    }

    /// The features as text (`mean,max`), as `--features` takes it.
    pub fn features_text(&self) -> String {
        self.features
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Parses an interval such as `500ms`, `30s`, `5m`, `1h`, `1d`.
pub fn parse_interval_ms(s: &str) -> Result<i64, DataError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| DataError::Aggregation(format!("bad interval {s:?}")))?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(DataError::Aggregation(format!(
                "bad interval {s:?}: expected a number and ms, s, m, h or d (e.g. 5m)"
            )));
        }
    };
    if n <= 0 {
        return Err(DataError::Aggregation(format!(
            "interval {s:?} must be positive"
        )));
    }
    Ok(n * unit_ms)
}

/// The windows of one sensor: start times and one feature row per window.
#[derive(Debug, Clone)]
pub struct Windows {
    /// Window start, epoch milliseconds, ascending.
    pub start_ms: Vec<i64>,
    /// rows × features.
    pub x: Array2<f64>,
}

/// Aggregates readings (any order) into windows, ascending by start time.
pub fn aggregate(agg: &Aggregation, time_ms: &[i64], values: &[f64]) -> Windows {
    let step = agg.interval_ms.max(1);
    let mut pairs: Vec<(i64, f64)> = time_ms
        .iter()
        .zip(values)
        .map(|(&t, &v)| (t.div_euclid(step) * step, v))
        .collect();
    if !pairs.is_sorted_by_key(|p| p.0) {
        pairs.sort_by_key(|p| p.0);
    }
    let k = agg.features.len();
    let mut start_ms = Vec::new();
    let mut flat = Vec::new();
    let mut i = 0;
    while i < pairs.len() {
        let w = pairs[i].0;
        let (mut n, mut mean, mut m2) = (0f64, 0f64, 0f64);
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        while i < pairs.len() && pairs[i].0 == w {
            let v = pairs[i].1;
            // Welford's update: stable for large offsets.
            n += 1.0;
            let d = v - mean;
            mean += d / n;
            m2 += d * (v - mean);
            lo = lo.min(v);
            hi = hi.max(v);
            i += 1;
        }
        start_ms.push(w);
        for f in &agg.features {
            flat.push(match f {
                Feature::Mean => mean,
                Feature::Min => lo,
                Feature::Max => hi,
                Feature::Std => (m2 / n).sqrt(),
                Feature::Count => n,
            });
        }
    }
    let rows = start_ms.len();
    let x = Array2::from_shape_vec((rows, k), flat).unwrap_or_else(|_| Array2::zeros((0, k)));
    Windows { start_ms, x }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_and_features_parse_and_print_back() {
        let a = Aggregation::parse("5m", "mean, std,count").unwrap();
        assert_eq!(a.interval_ms, 300_000);
        assert_eq!(
            a.features,
            vec![Feature::Mean, Feature::Std, Feature::Count]
        );
        assert_eq!(a.interval_text(), "5m");
        assert_eq!(a.features_text(), "mean,std,count");
        assert_eq!(
            Aggregation::parse("1h", "max").unwrap().interval_text(),
            "1h"
        );
        assert!(Aggregation::parse("5x", "mean").is_err());
        assert!(Aggregation::parse("0m", "mean").is_err());
        assert!(Aggregation::parse("1m", "median").is_err());
        assert!(Aggregation::parse("1m", "").is_err());
    }

    #[test]
    fn windows_align_to_epoch_multiples_and_compute_each_feature() {
        let agg = Aggregation::parse("1m", "mean,min,max,std,count").unwrap();
        // 59.9 s and 60.0 s fall in different windows; the input order does not matter.
        let t = [60_000, 0, 59_900, 119_999];
        let v = [10.0, 1.0, 3.0, 20.0];
        let w = aggregate(&agg, &t, &v);
        assert_eq!(w.start_ms, vec![0, 60_000]);
        assert_eq!(w.x.row(0).to_vec(), vec![2.0, 1.0, 3.0, 1.0, 2.0]);
        assert_eq!(w.x.row(1).to_vec(), vec![15.0, 10.0, 20.0, 5.0, 2.0]);
    }

    #[test]
    fn a_one_reading_window_has_zero_spread_and_negative_times_floor() {
        let agg = Aggregation::parse("1m", "std").unwrap();
        let w = aggregate(&agg, &[-1], &[4.0]);
        assert_eq!(w.start_ms, vec![-60_000]);
        assert_eq!(w.x[[0, 0]], 0.0);
    }
}
