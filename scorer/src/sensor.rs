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

    /// `<D>_<T>` with each part escaped by [`name_segment`]: the one `_` is the separator, so
    /// every sensor has its own name (`1_2:3` is `1=5F2_3`, `1:2_3` is `1_2=5F3`).
    pub fn file_stem(&self) -> String {
        format!("{}_{}", name_segment(&self.device), name_segment(&self.tag))
    }

    /// The model's object name without extension: `model_<D>_<T>`, escaped as [`Self::file_stem`].
    pub fn model_stem(&self) -> String {
        format!("model_{}", self.file_stem())
    }

    /// The reference's model name, `model_<D>_<T>` unescaped; the same as [`Self::model_stem`]
    /// unless the device or tag holds `_`, `%`, `/` or `\`.
    pub fn raw_model_stem(&self) -> String {
        format!("model_{}_{}", self.device, self.tag)
    }

    /// Parses a model object's file name (`model_<D>_<T>[.pkl|.joblib|.json]`) into a sensor.
    ///
    /// Exactly one `_` after `model_` separates device and tag (escaped ones are `=5F`); a name
    /// with more (`model_pump_temp_1`: `pump:temp_1` or `pump_temp:1`?) is ambiguous and None.
    pub fn from_model_file_name(name: &str) -> Option<Self> {
        let stem = model_file_stem(name)?;
        let (device, tag) = stem.split_once('_')?;
        if device.is_empty() || tag.is_empty() || tag.contains('_') {
            return None;
        }
        Some(Self::new(
            decode_name_segment(device),
            decode_name_segment(tag),
        ))
    }
}

/// The part of a model file name between `model_` and its extension (`.pkl`, `.joblib`,
/// `.json` or none), if it is one.
pub fn model_file_stem(name: &str) -> Option<&str> {
    let stem = name.strip_prefix("model_")?;
    let stem = [".pkl", ".joblib", ".json"]
        .iter()
        .find_map(|ext| stem.strip_suffix(ext))
        .unwrap_or(stem);
    (!stem.contains('.') && !stem.is_empty()).then_some(stem)
}

/// Escapes a device or tag for a file name, quoted-printable style: `=` `_` `/` `\\` become
/// `=3D` `=5F` `=2F` `=5C`, so `_` can separate device from tag and no name reaches another
/// directory. (`=` because object stores keep it as it is; `%` and the like are left to
/// object_store's own encoding.)
pub fn name_segment(s: &str) -> String {
    if !s.contains(['=', '_', '/', '\\']) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '=' => out.push_str("=3D"),
            '_' => out.push_str("=5F"),
            '/' => out.push_str("=2F"),
            '\\' => out.push_str("=5C"),
            c => out.push(c),
        }
    }
    out
}

/// The inverse of [`name_segment`] (other `=` sequences are kept as they are).
pub fn decode_name_segment(s: &str) -> String {
    if !s.contains('=') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let c = match rest.get(i + 1..i + 3) {
            Some("3D" | "3d") => Some('='),
            Some("5F" | "5f") => Some('_'),
            Some("2F" | "2f") => Some('/'),
            Some("5C" | "5c") => Some('\\'),
            _ => None,
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[i + 3..];
            }
            None => {
                out.push('=');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
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
    fn file_names_are_injective_and_decode_back_to_their_sensor() {
        let sensors = [
            SensorId::new("1_2", "3"),
            SensorId::new("1", "2_3"),
            SensorId::new("pump", "temp_1"),
            SensorId::new("pump_temp", "1"),
            SensorId::new("a=5F", "b"),
            SensorId::new("100%", "b"),
            SensorId::new("a_", "b"),
            SensorId::new("x/y", "z\\w"),
        ];
        let stems: std::collections::HashSet<String> =
            sensors.iter().map(SensorId::file_stem).collect();
        assert_eq!(stems.len(), sensors.len(), "{stems:?}");
        for s in &sensors {
            assert_eq!(
                SensorId::from_model_file_name(&format!("{}.pkl", s.model_stem())).as_ref(),
                Some(s)
            );
            assert!(!s.file_stem().contains('/'));
        }
        assert_eq!(
            SensorId::new("pump", "temp_1").model_stem(),
            "model_pump_temp=5F1"
        );
        assert_eq!(
            SensorId::new("pump", "temp_1").raw_model_stem(),
            "model_pump_temp_1"
        );
        // The reference's names with more than one `_` say nothing for sure.
        assert_eq!(
            SensorId::from_model_file_name("model_pump_temp_1.pkl"),
            None
        );
        assert_eq!(decode_name_segment("a=b"), "a=b");
        assert_eq!(decode_name_segment("=3D5F"), "=5F");
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
