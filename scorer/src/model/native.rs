//! fleetscore's native model file: versioned JSON whose floats round-trip exactly.
//!
//! Format `fleetscore-ocsvm`, version 1 (also documented in `scorer/MODEL_FORMAT.md`):
//!
//! ```json
//! {
//!   "format": "fleetscore-ocsvm",      // fixed marker
//!   "version": 1,                      // this layout
//!   "kernel": "rbf",                   // rbf | linear | poly | sigmoid
//!   "gamma": 0.5,                      // fitted gamma (scikit-learn's _gamma)
//!   "coef0": 0.0,                      // poly / sigmoid term
//!   "degree": 3,                       // poly degree
//!   "nu": 0.05,                        // or null when unknown (informational)
//!   "n_features": 1,
//!   "scaler": {"mean": [..] | null, "scale": [..] | null} | null,
//!   "support_vectors": [[..], ..],     // n_sv rows of n_features, in the scaled space
//!   "dual_coef": [..],                 // n_sv coefficients
//!   "intercept": -1.25,                // decision = Σ dual_coef·K(sv, scale(x)) + intercept
//!   "sklearn_version": null,           // provenance, informational
//!   "trained_by": "..."                // provenance, informational
//! }
//! ```
//!
//! Floats are written by serde_json's shortest round-trip formatting and parsed with its
//! `float_roundtrip` feature, so every f64 reads back bit for bit.

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::{KernelKind, Model, ModelError, ModelMeta, OneClassSvm, Scaler, SourceFormat};

/// The `format` marker of native files.
pub const FORMAT: &str = "fleetscore-ocsvm";
/// The version this code writes and reads.
pub const VERSION: u32 = 1;

/// Why a native model file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    /// Not valid JSON, or a field has the wrong type.
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// serde_json's message (names the field).
        message: String,
    },
    /// The `format` field is not `fleetscore-ocsvm`.
    #[error("field `format` is {0:?}, expected \"fleetscore-ocsvm\"")]
    WrongFormat(String),
    /// A version this code does not read.
    #[error("field `version` is {0}; this build reads version 1")]
    UnsupportedVersion(u64),
    /// Rows of `support_vectors` differ in length from `n_features`.
    #[error(
        "field `support_vectors` row {row} has {len} values, expected n_features = {n_features}"
    )]
    RaggedSupportVectors {
        /// Offending row.
        row: usize,
        /// Its length.
        len: usize,
        /// Declared features.
        n_features: usize,
    },
    /// Serialising failed.
    #[error("writing JSON: {0}")]
    Write(String),
}

#[derive(Serialize, Deserialize)]
struct NativeScaler {
    mean: Option<Vec<f64>>,
    scale: Option<Vec<f64>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeModel {
    format: String,
    version: u64,
    kernel: KernelKind,
    gamma: f64,
    coef0: f64,
    degree: u32,
    nu: Option<f64>,
    n_features: usize,
    scaler: Option<NativeScaler>,
    support_vectors: Vec<Vec<f64>>,
    dual_coef: Vec<f64>,
    intercept: f64,
    #[serde(default)]
    sklearn_version: Option<String>,
    #[serde(default)]
    trained_by: Option<String>,
    /// The aggregation contract the model was fitted with; scoring refuses another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aggregation: Option<NativeAggregation>,
}

/// How readings were aggregated into the model's features.
#[derive(Debug, Serialize, Deserialize)]
struct NativeAggregation {
    /// Window, e.g. `5m`.
    interval: String,
    /// Features in input order, e.g. `["mean", "std"]`.
    features: Vec<String>,
    /// Delta degrees of freedom of `std` (fleetscore computes 0, the population std).
    std_ddof: u32,
}

fn json_error(e: serde_json::Error) -> NativeError {
    NativeError::Json {
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    }
}

/// Reads a native model file.
pub fn from_json(bytes: &[u8]) -> Result<Model, ModelError> {
    // Check the marker first so a JSON file of another kind gets a clear message.
    let head: serde_json::Value = serde_json::from_slice(bytes).map_err(json_error)?;
    match head.get("format").and_then(|f| f.as_str()) {
        Some(FORMAT) => {}
        other => {
            return Err(NativeError::WrongFormat(other.unwrap_or("<missing>").to_string()).into());
        }
    }
    match head.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => return Err(NativeError::UnsupportedVersion(v).into()),
        None => return Err(NativeError::UnsupportedVersion(0).into()),
    }
    let m: NativeModel = serde_json::from_slice(bytes).map_err(json_error)?;
    let d = m.n_features;
    let mut flat = Vec::with_capacity(m.support_vectors.len() * d);
    for (row, sv) in m.support_vectors.iter().enumerate() {
        if sv.len() != d {
            return Err(NativeError::RaggedSupportVectors {
                row,
                len: sv.len(),
                n_features: d,
            }
            .into());
        }
        flat.extend_from_slice(sv);
    }
    let support_vectors =
        Array2::from_shape_vec((m.support_vectors.len(), d), flat).map_err(|e| {
            ModelError::Invalid {
                field: "support_vectors",
                reason: e.to_string(),
            }
        })?;
    let svm = OneClassSvm {
        kernel: m.kernel,
        gamma: m.gamma,
        coef0: m.coef0,
        degree: m.degree,
        support_vectors,
        dual_coef: m.dual_coef,
        intercept: m.intercept,
        nu: m.nu,
    };
    let scaler = m.scaler.map(|s| Scaler {
        mean: s.mean,
        scale: s.scale,
    });
    if let Some(a) = &m.aggregation
        && a.std_ddof != 0
    {
        let reason = format!(
            "is {}; fleetscore's std is the population std (ddof 0)",
            a.std_ddof
        );
        return Err(ModelError::Invalid {
            field: "aggregation.std_ddof",
            reason,
        });
    }
    let (aggregate, feature_names) = m
        .aggregation
        .map_or((None, None), |a| (Some(a.interval), Some(a.features)));
    let meta = ModelMeta {
        source: Some(SourceFormat::Native { version: VERSION }),
        sklearn_version: m.sklearn_version,
        trained_by: m.trained_by,
        feature_names,
        aggregate,
    };
    Model::new(scaler, svm, meta)
}

/// Writes a model as a native file (pretty-printed JSON, one support vector per line).
pub fn to_json(model: &Model) -> Result<Vec<u8>, ModelError> {
    let Some(svm) = model.svm() else {
        let class = model.estimator().class_name();
        return Err(NativeError::Write(format!(
            "the native format holds OneClassSVMs only, not {class}: keep the pickle"
        ))
        .into());
    };
    let m = NativeModel {
        format: FORMAT.to_string(),
        version: u64::from(VERSION),
        kernel: svm.kernel,
        gamma: svm.gamma,
        coef0: svm.coef0,
        degree: svm.degree,
        nu: svm.nu,
        n_features: model.n_features(),
        scaler: model.scaler().map(|s| NativeScaler {
            mean: s.mean.clone(),
            scale: s.scale.clone(),
        }),
        support_vectors: svm
            .support_vectors
            .rows()
            .into_iter()
            .map(|r| r.to_vec())
            .collect(),
        dual_coef: svm.dual_coef.clone(),
        intercept: svm.intercept,
        sklearn_version: model.meta().sklearn_version.clone(),
        trained_by: model.meta().trained_by.clone(),
        aggregation: model
            .meta()
            .aggregate
            .clone()
            .map(|interval| NativeAggregation {
                interval,
                features: model.meta().feature_names.clone().unwrap_or_default(),
                std_ddof: 0,
            }),
    };
    let mut out = serde_json::to_vec_pretty(&m).map_err(|e| NativeError::Write(e.to_string()))?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tests::toy_model;

    #[test]
    fn every_float_survives_a_round_trip_bit_for_bit() {
        let mut svm = toy_model(KernelKind::Poly).svm().unwrap().clone();
        // Values whose shortest decimal form is long or near the edges of f64.
        svm.support_vectors[[0, 0]] = 0.1 + 0.2;
        svm.support_vectors[[1, 1]] = 1.0 / 3.0;
        svm.support_vectors[[2, 0]] = f64::MIN_POSITIVE;
        svm.dual_coef[0] = f64::MAX;
        svm.dual_coef[2] = 5e-324;
        svm.gamma = std::f64::consts::PI * 1e-7;
        svm.intercept = -123456.789e-3;
        let scaler = Scaler {
            mean: Some(vec![1e300, -2.5e-300]),
            scale: None,
        };
        let model = Model::new(Some(scaler), svm, ModelMeta::default()).unwrap();
        let back = Model::from_bytes(&model.to_native_bytes().unwrap()).unwrap();
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(back.svm().unwrap().kernel, KernelKind::Poly);
        assert_eq!(
            bits(back.svm().unwrap().support_vectors.as_slice().unwrap()),
            bits(model.svm().unwrap().support_vectors.as_slice().unwrap())
        );
        assert_eq!(
            bits(&back.svm().unwrap().dual_coef),
            bits(&model.svm().unwrap().dual_coef)
        );
        assert_eq!(
            back.svm().unwrap().gamma.to_bits(),
            model.svm().unwrap().gamma.to_bits()
        );
        assert_eq!(
            back.svm().unwrap().intercept.to_bits(),
            model.svm().unwrap().intercept.to_bits()
        );
        assert_eq!(back.scaler(), model.scaler());
        assert_eq!(back.info().source, "native v1");
    }

    #[test]
    fn another_json_document_is_rejected_naming_the_format_field() {
        let err = Model::from_bytes(br#"{"hello": 1}"#).unwrap_err();
        assert!(err.to_string().contains("format"), "{err}");
    }

    #[test]
    fn a_future_version_is_rejected() {
        let err =
            Model::from_bytes(br#"{"format": "fleetscore-ocsvm", "version": 2}"#).unwrap_err();
        assert!(err.to_string().contains("version"), "{err}");
    }

    #[test]
    fn a_ragged_support_vector_is_rejected_naming_the_row() {
        let model = toy_model(KernelKind::Rbf);
        let mut v: serde_json::Value =
            serde_json::from_slice(&model.to_native_bytes().unwrap()).unwrap();
        v["support_vectors"][1] = serde_json::json!([1.0]);
        let err = Model::from_bytes(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(err.to_string().contains("row 1"), "{err}");
    }
}
