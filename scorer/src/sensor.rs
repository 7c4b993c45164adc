//! Sensor identity: a (device, tag) pair as written in the readings CSV, shown as `1:4`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a sensor name could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SensorError {
    /// The text is not `DEVICE:TAG` with both parts non-empty.
    #[error("invalid sensor {0:?}: expected DEVICE:TAG, e.g. 1:4")]
    Invalid(String),
}

/// One sensor: the Device and Tag columns of the readings, kept as text ("1", "4").
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SensorId {
    /// The Device column's value.
    pub device: String,
    /// The Tag column's value.
    pub tag: String,
}

impl SensorId {
    /// A sensor from its device and tag.
    pub fn new(device: impl Into<String>, tag: impl Into<String>) -> Self {
        Self {
            device: device.into(),
            tag: tag.into(),
        }
    }

    /// The model's object name without extension: `model_<D>_<T>`.
    pub fn model_stem(&self) -> String {
        format!("model_{}_{}", self.device, self.tag)
    }

    /// Parses a model object's file name (`model_<D>_<T>[.pkl|.joblib|.json]`) into a sensor.
    ///
    /// Device and tag may not contain `_` in this form (the reference's names are numbers), so the
    /// last `_` separates them.
    pub fn from_model_file_name(name: &str) -> Option<Self> {
        let stem = name.strip_prefix("model_")?;
        let stem = ["pkl", "joblib", "json"]
            .iter()
            .find_map(|ext| stem.strip_suffix(&format!(".{ext}")))
            .unwrap_or(stem);
        if stem.contains('.') {
            return None;
        }
        let (device, tag) = stem.rsplit_once('_')?;
        if device.is_empty() || tag.is_empty() {
            return None;
        }
        Some(Self::new(device, tag))
    }
}

impl fmt::Display for SensorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.device, self.tag)
    }
}

impl FromStr for SensorId {
    type Err = SensorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().split_once(':') {
            Some((d, t)) if !d.is_empty() && !t.is_empty() && !t.contains(':') => {
                Ok(Self::new(d, t))
            }
            _ => Err(SensorError::Invalid(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sensor_round_trips_through_its_text_form() {
        let s: SensorId = "1:4".parse().unwrap();
        assert_eq!(s, SensorId::new("1", "4"));
        assert_eq!(s.to_string(), "1:4");
        assert_eq!(s.model_stem(), "model_1_4");
    }

    #[test]
    fn malformed_sensor_names_are_rejected() {
        for bad in ["1", ":4", "1:", "1:2:3", ""] {
            assert!(bad.parse::<SensorId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn model_file_names_map_back_to_sensors() {
        assert_eq!(
            SensorId::from_model_file_name("model_1_4.pkl"),
            Some(SensorId::new("1", "4"))
        );
        assert_eq!(
            SensorId::from_model_file_name("model_12_7"),
            Some(SensorId::new("12", "7"))
        );
        assert_eq!(
            SensorId::from_model_file_name("model_1_4.json"),
            Some(SensorId::new("1", "4"))
        );
        assert_eq!(SensorId::from_model_file_name("model_1_4.txt"), None);
        assert_eq!(SensorId::from_model_file_name("readme.md"), None);
    }
}
