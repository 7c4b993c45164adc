//! Anomaly models as scikit-learn fits them: an optional `StandardScaler` in front of a
//! `OneClassSVM` or an `IsolationForest`. Models load from scikit-learn pickles (read as data,
//! never executed), joblib files, or fleetscore's native JSON format (SVMs only), and score
//! with [`crate::kernel`] (SVM) or [`iforest`], which reproduce scikit-learn's
//! `decision_function` to within 1e-9.
//!
//! The contract other parts rely on (C2): [`Model::from_bytes`], [`Model::n_features`],
//! [`Model::decision_function`] (anomaly per [`Model::is_anomaly`]: decision <= 0.0 for SVMs,
//! see [`is_anomaly`], < 0.0 for forests), [`Model::feature_names`], [`Model::to_native_bytes`],
//! [`Model::info`] and [`train::train`].

pub mod iforest;
pub mod native;
pub mod pickle;
pub mod sklearn;
pub mod train;

pub use iforest::IsolationForest;

use ndarray::{Array1, Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::kernel::ScoringKernel;

/// Why a model could not be loaded, built or used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The bytes were not a pickle the reader could parse.
    #[error("reading the pickle: {0}")]
    Pickle(#[from] pickle::PickleError),
    /// The pickle parsed but did not hold a supported scikit-learn model.
    #[error("converting the scikit-learn model: {0}")]
    Sklearn(#[from] sklearn::SklearnError),
    /// The native JSON model file was invalid.
    #[error("reading the native model: {0}")]
    Native(#[from] native::NativeError),
    /// The bytes match no known model format.
    #[error("unrecognised model format: {0}")]
    UnknownFormat(String),
    /// A compressed joblib file could not be decompressed.
    #[error("decompressing the {kind}-compressed joblib file: {reason}")]
    Decompress {
        /// `zlib` or `gzip`.
        kind: &'static str,
        /// What went wrong (corrupt stream, too big).
        reason: String,
    },
    /// A field of the model is inconsistent or not finite.
    #[error("invalid model: field `{field}`: {reason}")]
    Invalid {
        /// The offending field, e.g. `support_vectors` or `scaler.scale`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An IsolationForest is inconsistent (a tree that would not terminate, a bad feature index).
    #[error("invalid IsolationForest: {0}")]
    Forest(#[from] iforest::ForestError),
    /// A model part given separately (a scaler sidecar) does not fit the model.
    #[error("combining the model with {part}: {reason}")]
    Parts {
        /// Which part, e.g. `the scaler file`.
        part: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The input rows have another number of features than the model.
    #[error("the model expects {expected} feature(s) per row but the input has {found}")]
    FeatureMismatch {
        /// Features the model was fitted on.
        expected: usize,
        /// Columns in the input.
        found: usize,
    },
}

/// True when a decision value marks an anomaly: scikit-learn calls a row an inlier only when its
/// decision is strictly positive, so 0.0 (and NaN) are anomalies.
#[allow(clippy::neg_cmp_op_on_partial_ord)] // deliberate: NaN must count as an anomaly
pub fn is_anomaly(decision: f64) -> bool {
    !(decision > 0.0)
}

/// The SVM kernel function, with scikit-learn's (libsvm's) definitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelKind {
    /// exp(-gamma ||a - b||²), summed as squared differences like libsvm.
    Rbf,
    /// a · b.
    Linear,
    /// (gamma a · b + coef0)^degree.
    Poly,
    /// tanh(gamma a · b + coef0).
    Sigmoid,
}

impl KernelKind {
    /// scikit-learn's name for the kernel (`rbf`, `linear`, `poly`, `sigmoid`).
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::Rbf => "rbf",
            KernelKind::Linear => "linear",
            KernelKind::Poly => "poly",
            KernelKind::Sigmoid => "sigmoid",
        }
    }

    /// Parses scikit-learn's kernel name; `None` for unsupported kernels (precomputed, callables).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "rbf" => Some(KernelKind::Rbf),
            "linear" => Some(KernelKind::Linear),
            "poly" => Some(KernelKind::Poly),
            "sigmoid" => Some(KernelKind::Sigmoid),
            _ => None,
        }
    }
}

/// A fitted `StandardScaler`: z = (x - mean) / scale, each step optional as with_mean/with_std.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaler {
    /// Per-feature mean, `None` when fitted with `with_mean=False`.
    pub mean: Option<Vec<f64>>,
    /// Per-feature scale (std, 1.0 for constant features), `None` when `with_std=False`.
    pub scale: Option<Vec<f64>>,
}

/// A fitted one-class SVM: decision(z) = Σ dual_coef_i · K(sv_i, z) + intercept.
#[derive(Debug, Clone, PartialEq)]
pub struct OneClassSvm {
    /// Kernel function.
    pub kernel: KernelKind,
    /// The fitted gamma (scikit-learn's `_gamma`, resolved from 'scale'/'auto' at fit time).
    pub gamma: f64,
    /// Independent term of poly and sigmoid kernels.
    pub coef0: f64,
    /// Degree of the poly kernel.
    pub degree: u32,
    /// Support vectors, n_sv × n_features, in the scaled space.
    pub support_vectors: Array2<f64>,
    /// One coefficient per support vector (`_dual_coef_[0]`).
    pub dual_coef: Vec<f64>,
    /// `_intercept_[0]` (= -rho).
    pub intercept: f64,
    /// nu, when known (informational only).
    pub nu: Option<f64>,
}

/// Where a model came from, for [`ModelInfo`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "kebab-case")]
pub enum SourceFormat {
    /// A scikit-learn pickle (`pickle.dump`).
    SklearnPickle {
        /// Pickle protocol (from the PROTO opcode; 0/1 pickles have none).
        protocol: Option<u8>,
    },
    /// A `joblib.dump` file (pickle with raw array bytes following each array wrapper).
    Joblib {
        /// Pickle protocol of the joblib stream.
        protocol: Option<u8>,
        /// `zlib` or `gzip` when the file was written with `compress=`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compression: Option<String>,
    },
    /// fleetscore's native JSON format.
    Native {
        /// Format version.
        version: u32,
    },
    /// Built in memory, e.g. by [`train::train`].
    InMemory,
}

impl std::fmt::Display for SourceFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceFormat::SklearnPickle { protocol: Some(p) } => {
                write!(f, "sklearn-pickle protocol {p}")
            }
            SourceFormat::SklearnPickle { protocol: None } => {
                write!(f, "sklearn-pickle protocol 0-1")
            }
            SourceFormat::Joblib {
                protocol,
                compression,
            } => {
                write!(f, "joblib")?;
                if let Some(c) = compression {
                    write!(f, " {c}")?;
                }
                if let Some(p) = protocol {
                    write!(f, " (pickle protocol {p})")?;
                }
                Ok(())
            }
            SourceFormat::Native { version } => write!(f, "native v{version}"),
            SourceFormat::InMemory => write!(f, "in-memory"),
        }
    }
}

/// Descriptive facts about a model that do not affect scoring.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelMeta {
    /// The format the model was read from.
    pub source: Option<SourceFormat>,
    /// `_sklearn_version` from the pickle's state, when present.
    pub sklearn_version: Option<String>,
    /// Free text on how the model was made (e.g. the trainer and its parameters).
    pub trained_by: Option<String>,
    /// Input feature names in order, when recorded (scikit-learn's `feature_names_in_`, a native
    /// model's aggregation features): scoring maps the run's features to them by name.
    pub feature_names: Option<Vec<String>>,
    /// The aggregation window the model was fitted on (e.g. `5m`), when recorded.
    pub aggregate: Option<String>,
}

/// A serialisable summary of a model (`inspect-model`, log records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The estimator class: `OneClassSVM` or `IsolationForest`.
    pub estimator: String,
    /// Kernel name (SVMs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelKind>,
    /// Number of support vectors (0 for forests).
    pub n_support_vectors: usize,
    /// Number of input features.
    pub n_features: usize,
    /// Feature names the model was fitted with (`feature_names_in_`), if recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_names: Option<Vec<String>>,
    /// Fitted gamma (SVMs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gamma: Option<f64>,
    /// coef0 (poly, sigmoid; SVMs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coef0: Option<f64>,
    /// Degree (poly; SVMs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degree: Option<u32>,
    /// nu, if known.
    pub nu: Option<f64>,
    /// Decision intercept (SVMs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intercept: Option<f64>,
    /// Number of trees (forests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_estimators: Option<usize>,
    /// `max_samples_` (forests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_samples: Option<f64>,
    /// `offset_` (forests only): decision = score_samples - offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<f64>,
    /// Whether a StandardScaler runs first, and which of its steps.
    pub scaler: Option<ScalerInfo>,
    /// Source format, e.g. "sklearn-pickle protocol 3".
    pub source: String,
    /// scikit-learn version that wrote the pickle, if recorded.
    pub sklearn_version: Option<String>,
    /// How a native model was trained, if recorded.
    pub trained_by: Option<String>,
}

/// Which steps a model's scaler applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScalerInfo {
    /// Subtracts the mean.
    pub with_mean: bool,
    /// Divides by the scale.
    pub with_std: bool,
}

/// The estimator behind the optional scaler.
#[derive(Debug, Clone, PartialEq)]
pub enum Estimator {
    /// A one-class SVM.
    OneClassSvm(OneClassSvm),
    /// An isolation forest.
    IsolationForest(IsolationForest),
}

impl Estimator {
    /// scikit-learn's class name.
    pub fn class_name(&self) -> &'static str {
        match self {
            Estimator::OneClassSvm(_) => "OneClassSVM",
            Estimator::IsolationForest(_) => "IsolationForest",
        }
    }

    /// Features per input row.
    pub fn n_features(&self) -> usize {
        match self {
            Estimator::OneClassSvm(s) => s.support_vectors.ncols(),
            Estimator::IsolationForest(f) => f.n_features,
        }
    }
}

/// A validated model ready to score.
#[derive(Debug, Clone)]
pub struct Model {
    scaler: Option<Scaler>,
    estimator: Estimator,
    meta: ModelMeta,
    /// The SVM laid out for scoring (None for forests).
    kernel: Option<ScoringKernel>,
    /// The forest laid out for scoring (None for SVMs).
    forest: Option<iforest::ForestKernel>,
    feature_names: Option<Vec<String>>,
}

impl Model {
    /// Builds an SVM model after checking shapes and that every number is finite.
    pub fn new(
        scaler: Option<Scaler>,
        svm: OneClassSvm,
        meta: ModelMeta,
    ) -> Result<Model, ModelError> {
        let (n_sv, d) = svm.support_vectors.dim();
        let invalid = |field: &'static str, reason: String| ModelError::Invalid { field, reason };
        if d == 0 {
            return Err(invalid("support_vectors", "has zero features".into()));
        }
        if svm.dual_coef.len() != n_sv {
            return Err(invalid(
                "dual_coef",
                format!(
                    "has {} coefficients for {n_sv} support vectors",
                    svm.dual_coef.len()
                ),
            ));
        }
        if let Some(i) = svm.support_vectors.iter().position(|v| !v.is_finite()) {
            return Err(invalid(
                "support_vectors",
                format!("element {i} is not finite"),
            ));
        }
        if let Some(i) = svm.dual_coef.iter().position(|v| !v.is_finite()) {
            return Err(invalid("dual_coef", format!("element {i} is not finite")));
        }
        for (field, v) in [
            ("intercept", svm.intercept),
            ("gamma", svm.gamma),
            ("coef0", svm.coef0),
        ] {
            if !v.is_finite() {
                return Err(invalid(field, format!("{v} is not finite")));
            }
        }
        if svm.kernel == KernelKind::Rbf && svm.gamma < 0.0 {
            return Err(invalid(
                "gamma",
                format!("{} is negative for an rbf kernel", svm.gamma),
            ));
        }
        if let Some(nu) = svm.nu.filter(|nu| !nu.is_finite()) {
            return Err(invalid("nu", format!("{nu} is not finite")));
        }
        check_scaler(scaler.as_ref(), d)?;
        let kernel = ScoringKernel::new(scaler.as_ref(), &svm);
        Ok(Model {
            scaler,
            estimator: Estimator::OneClassSvm(svm),
            meta,
            kernel: Some(kernel),
            forest: None,
            feature_names: None,
        })
    }

    /// Builds an IsolationForest model after checking that every tree terminates and indexes
    /// only existing features.
    pub fn isolation_forest(
        scaler: Option<Scaler>,
        forest: IsolationForest,
        meta: ModelMeta,
    ) -> Result<Model, ModelError> {
        if forest.n_features == 0 {
            return Err(ModelError::Invalid {
                field: "n_features_in_",
                reason: "is zero".into(),
            });
        }
        forest.validate()?;
        check_scaler(scaler.as_ref(), forest.n_features)?;
        let kernel = iforest::ForestKernel::new(&forest);
        Ok(Model {
            scaler,
            estimator: Estimator::IsolationForest(forest),
            meta,
            kernel: None,
            forest: Some(kernel),
            feature_names: None,
        })
    }

    /// Records the feature names the model was fitted with (one per feature).
    pub fn with_feature_names(mut self, names: Option<Vec<String>>) -> Result<Model, ModelError> {
        if let Some(n) = &names
            && n.len() != self.n_features()
        {
            return Err(ModelError::Invalid {
                field: "feature_names_in_",
                reason: format!("has {} names for {} features", n.len(), self.n_features()),
            });
        }
        // The aggregation-contract check reads them from the metadata.
        self.meta.feature_names.clone_from(&names);
        self.feature_names = names;
        Ok(self)
    }

    /// Reads a model, detecting the format: native JSON, sklearn pickle or joblib file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model, ModelError> {
        let first = bytes.iter().copied().find(|b| !b.is_ascii_whitespace());
        match first {
            None => Err(ModelError::UnknownFormat("the model file is empty".into())),
            Some(b'{') => native::from_json(bytes),
            Some(_) => {
                let (p, compression) = parse_pickle(bytes)?;
                let mut model = sklearn::model_from_pickle(&p)?;
                model.set_compression(compression);
                Ok(model)
            }
        }
    }

    /// Reads a bare estimator whose `StandardScaler` was saved as a separate file (the layout
    /// `joblib.dump(scaler, ...)` + `joblib.dump(model, ...)`), and puts the scaler in front.
    pub fn from_bytes_with_scaler(
        model_bytes: &[u8],
        scaler_bytes: &[u8],
    ) -> Result<Model, ModelError> {
        let model = Model::from_bytes(model_bytes)?;
        if model.scaler.is_some() {
            return Err(ModelError::Parts {
                part: "the scaler file",
                reason: "the model already has a StandardScaler in front".into(),
            });
        }
        let (p, _) = parse_pickle(scaler_bytes)?;
        let (scaler, scaler_names) = sklearn::scaler_from_pickle(&p)?;
        let d = model.n_features();
        check_scaler(Some(&scaler), d).map_err(|e| ModelError::Parts {
            part: "the scaler file",
            reason: e.to_string(),
        })?;
        let names = model.feature_names.clone().or(scaler_names);
        let Model {
            estimator, meta, ..
        } = model;
        let model = match estimator {
            Estimator::OneClassSvm(svm) => Model::new(Some(scaler), svm, meta)?,
            Estimator::IsolationForest(f) => Model::isolation_forest(Some(scaler), f, meta)?,
        };
        model.with_feature_names(names)
    }

    fn set_compression(&mut self, compression: Option<&'static str>) {
        if let (Some(kind), Some(SourceFormat::Joblib { compression, .. })) =
            (compression, &mut self.meta.source)
        {
            *compression = Some(kind.to_string());
        }
    }

    /// Number of input features per row.
    pub fn n_features(&self) -> usize {
        self.estimator.n_features()
    }

    /// Number of support vectors (0 for a forest).
    pub fn n_support_vectors(&self) -> usize {
        match &self.estimator {
            Estimator::OneClassSvm(s) => s.support_vectors.nrows(),
            Estimator::IsolationForest(_) => 0,
        }
    }

    /// The feature names the model was fitted with (`feature_names_in_` of a model fitted on a
    /// DataFrame), in column order; `None` when the pickle records none.
    pub fn feature_names(&self) -> Option<&[String]> {
        self.feature_names.as_deref()
    }

    /// Whether a decision of this model marks an anomaly: `decision <= 0` for a OneClassSVM
    /// (see [`is_anomaly`]); for an IsolationForest `decision < 0` (sklearn's `predict` calls 0
    /// an inlier), where a decision within [`iforest::tie_band`] below 0 counts as the tie at 0;
    /// NaN is always an anomaly.
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // deliberate: NaN must count as an anomaly
    pub fn is_anomaly(&self, decision: f64) -> bool {
        match &self.estimator {
            Estimator::OneClassSvm(_) => is_anomaly(decision),
            Estimator::IsolationForest(f) => !(decision >= -iforest::tie_band(f.offset)),
        }
    }

    /// scikit-learn's `decision_function` for each row (rows × features), on this thread.
    pub fn decision_function(&self, x: ArrayView2<f64>) -> Result<Array1<f64>, ModelError> {
        self.check_features(x.ncols())?;
        let mut out = vec![0.0; x.nrows()];
        self.decide(x, &mut out, false);
        Ok(Array1::from(out))
    }

    /// Like [`Model::decision_function`] but splits rows across rayon's current thread pool.
    pub fn decision_function_parallel(
        &self,
        x: ArrayView2<f64>,
    ) -> Result<Array1<f64>, ModelError> {
        self.check_features(x.ncols())?;
        let mut out = vec![0.0; x.nrows()];
        self.decide(x, &mut out, true);
        Ok(Array1::from(out))
    }

    /// Decision for rows given as one flat row-major slice (`rows × n_features`), written to `out`.
    pub fn decision_into(&self, flat: &[f64], out: &mut [f64]) -> Result<(), ModelError> {
        let d = self.n_features();
        if !flat.len().is_multiple_of(d) || flat.len() / d != out.len() {
            return Err(ModelError::FeatureMismatch {
                expected: d,
                found: flat.len() / out.len().max(1),
            });
        }
        let view =
            ArrayView2::from_shape((out.len(), d), flat).map_err(|e| ModelError::Invalid {
                field: "input",
                reason: e.to_string(),
            })?;
        self.decide(view, out, false);
        Ok(())
    }

    fn decide(&self, x: ArrayView2<f64>, out: &mut [f64], parallel: bool) {
        match (&self.kernel, &self.forest) {
            (Some(k), _) => {
                if parallel {
                    k.decide_into_parallel(x, out)
                } else {
                    k.decide_into(x, out)
                }
            }
            (None, Some(f)) => {
                // sklearn's StandardScaler.transform: x -= mean_, then x /= scale_, in f64.
                let scaled = self.scaler.as_ref().map(|s| {
                    let mut z = x.to_owned();
                    for mut row in z.rows_mut() {
                        for (j, v) in row.iter_mut().enumerate() {
                            if let Some(m) = &s.mean {
                                *v -= m[j];
                            }
                            if let Some(sc) = &s.scale {
                                *v /= sc[j];
                            }
                        }
                    }
                    z
                });
                let view = match &scaled {
                    Some(z) => z.view(),
                    None => x.view(),
                };
                if parallel {
                    f.decide_into_parallel(view, out)
                } else {
                    f.decide_into(view, out)
                }
            }
            // Both constructors lay out their estimator.
            (None, None) => out.fill(f64::NAN),
        }
    }

    fn check_features(&self, found: usize) -> Result<(), ModelError> {
        if found == self.n_features() {
            Ok(())
        } else {
            Err(ModelError::FeatureMismatch {
                expected: self.n_features(),
                found,
            })
        }
    }

    /// The scaler in front of the estimator, if any.
    pub fn scaler(&self) -> Option<&Scaler> {
        self.scaler.as_ref()
    }

    /// The estimator.
    pub fn estimator(&self) -> &Estimator {
        &self.estimator
    }

    /// The SVM, when the model is one.
    pub fn svm(&self) -> Option<&OneClassSvm> {
        match &self.estimator {
            Estimator::OneClassSvm(s) => Some(s),
            Estimator::IsolationForest(_) => None,
        }
    }

    /// Descriptive metadata, to record what scoring does not read (e.g. a trainer's contract).
    pub fn meta_mut(&mut self) -> &mut ModelMeta {
        &mut self.meta
    }

    /// Descriptive metadata.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// Serialises to fleetscore's native JSON format (see `scorer/MODEL_FORMAT.md`); SVMs only.
    pub fn to_native_bytes(&self) -> Result<Vec<u8>, ModelError> {
        native::to_json(self)
    }

    /// A serialisable summary.
    pub fn info(&self) -> ModelInfo {
        let svm = self.svm();
        let forest = match &self.estimator {
            Estimator::IsolationForest(f) => Some(f),
            Estimator::OneClassSvm(_) => None,
        };
        ModelInfo {
            estimator: self.estimator.class_name().to_string(),
            kernel: svm.map(|s| s.kernel),
            n_support_vectors: self.n_support_vectors(),
            n_features: self.n_features(),
            feature_names: self.feature_names.clone(),
            gamma: svm.map(|s| s.gamma),
            coef0: svm.map(|s| s.coef0),
            degree: svm.map(|s| s.degree),
            nu: svm.and_then(|s| s.nu),
            intercept: svm.map(|s| s.intercept),
            n_estimators: forest.map(|f| f.trees.len()),
            max_samples: forest.map(|f| f.max_samples),
            offset: forest.map(|f| f.offset),
            scaler: self.scaler.as_ref().map(|s| ScalerInfo {
                with_mean: s.mean.is_some(),
                with_std: s.scale.is_some(),
            }),
            source: self
                .meta
                .source
                .as_ref()
                .unwrap_or(&SourceFormat::InMemory)
                .to_string(),
            sklearn_version: self.meta.sklearn_version.clone(),
            trained_by: self.meta.trained_by.clone(),
        }
    }
}

/// Checks a scaler's vectors against the model's feature count: lengths, finite, no zero scale.
fn check_scaler(scaler: Option<&Scaler>, d: usize) -> Result<(), ModelError> {
    let invalid = |field: &'static str, reason: String| ModelError::Invalid { field, reason };
    if let Some(s) = scaler {
        for (field, v) in [("scaler.mean", &s.mean), ("scaler.scale", &s.scale)] {
            if let Some(v) = v {
                if v.len() != d {
                    return Err(invalid(
                        field,
                        format!("has {} values for {d} features", v.len()),
                    ));
                }
                if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                    return Err(invalid(field, format!("element {i} is not finite")));
                }
            }
        }
        if let Some(i) = s.scale.iter().flatten().position(|x| *x == 0.0) {
            return Err(invalid("scaler.scale", format!("element {i} is zero")));
        }
    }
    Ok(())
}

/// Parses a pickle or joblib file, inflating a zlib/gzip-compressed joblib file first;
/// returns the compression found.
fn parse_pickle(bytes: &[u8]) -> Result<(pickle::Pickle, Option<&'static str>), ModelError> {
    match compressed_kind(bytes) {
        None => Ok((pickle::parse(bytes)?, None)),
        Some(kind @ ("zlib" | "gzip")) => {
            // joblib compresses the whole file: inside is an uncompressed joblib stream.
            let plain = decompress(kind, bytes, MAX_DECOMPRESSED)?;
            Ok((pickle::parse(&plain)?, Some(kind)))
        }
        Some(kind) => Err(ModelError::UnknownFormat(format!(
            "{kind}-compressed joblib files are not supported (zlib and gzip are); save with \
             joblib.dump(..., compress=3) or pickle.dump"
        ))),
    }
}

/// Largest decompressed model read: far above any one-class SVM, below a scoring pod's memory.
const MAX_DECOMPRESSED: u64 = 256 << 20;

/// Inflates a zlib or gzip joblib file, refusing streams that grow past `limit` bytes.
fn decompress(kind: &'static str, bytes: &[u8], limit: u64) -> Result<Vec<u8>, ModelError> {
    use std::io::Read;
    let reader: Box<dyn Read + '_> = match kind {
        "gzip" => Box::new(flate2::read::MultiGzDecoder::new(bytes)),
        _ => Box::new(flate2::read::ZlibDecoder::new(bytes)),
    };
    let mut out = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| ModelError::Decompress {
            kind,
            reason: e.to_string(),
        })?;
    if out.len() as u64 > limit {
        let reason = format!("it inflates to more than {} MiB", limit >> 20);
        return Err(ModelError::Decompress { kind, reason });
    }
    Ok(out)
}

/// Names the compression of a compressed joblib file, from its magic bytes.
fn compressed_kind(bytes: &[u8]) -> Option<&'static str> {
    const MAGICS: [(&[u8], &str); 5] = [
        (b"\x78", "zlib"),
        (b"\x1f\x8b", "gzip"),
        (b"BZh", "bz2"),
        (b"\xfd7zXZ", "xz"),
        (b"\x04\x22\x4d\x18", "lz4"),
    ];
    MAGICS
        .iter()
        .find(|(m, _)| bytes.starts_with(m))
        .map(|(_, k)| *k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    pub(crate) fn toy_model(kernel: KernelKind) -> Model {
        let svm = OneClassSvm {
            kernel,
            gamma: 0.5,
            coef0: 0.25,
            degree: 3,
            support_vectors: array![[0.0, 1.0], [1.0, -1.0], [-0.5, 0.25]],
            dual_coef: vec![0.5, 1.0, 0.25],
            intercept: -0.8,
            nu: Some(0.1),
        };
        let scaler = Scaler {
            mean: Some(vec![10.0, -2.0]),
            scale: Some(vec![2.0, 0.5]),
        };
        Model::new(Some(scaler), svm, ModelMeta::default()).unwrap()
    }

    #[test]
    fn a_decision_of_exactly_zero_is_an_anomaly() {
        assert!(is_anomaly(0.0));
        assert!(is_anomaly(-0.0));
        assert!(is_anomaly(f64::NAN));
        assert!(!is_anomaly(1e-300));
    }

    #[test]
    fn decisions_match_a_direct_evaluation_for_every_kernel() {
        let x = array![[10.0, -2.0], [11.0, -1.5], [9.0, -2.25], [100.0, 3.0]];
        for kernel in [
            KernelKind::Rbf,
            KernelKind::Linear,
            KernelKind::Poly,
            KernelKind::Sigmoid,
        ] {
            let m = toy_model(kernel);
            let got = m.decision_function(x.view()).unwrap();
            for (r, row) in x.rows().into_iter().enumerate() {
                let z = [(row[0] - 10.0) / 2.0, (row[1] + 2.0) / 0.5];
                let mut s = 0.0;
                for (j, sv) in m
                    .svm()
                    .unwrap()
                    .support_vectors
                    .rows()
                    .into_iter()
                    .enumerate()
                {
                    let dot = z[0] * sv[0] + z[1] * sv[1];
                    let k = match kernel {
                        KernelKind::Rbf => {
                            (-0.5 * ((z[0] - sv[0]).powi(2) + (z[1] - sv[1]).powi(2))).exp()
                        }
                        KernelKind::Linear => dot,
                        KernelKind::Poly => (0.5 * dot + 0.25).powi(3),
                        KernelKind::Sigmoid => (0.5 * dot + 0.25).tanh(),
                    };
                    s += m.svm().unwrap().dual_coef[j] * k;
                }
                let want = s - 0.8;
                assert!(
                    (got[r] - want).abs() <= 1e-13 * (1.0 + want.abs()),
                    "{kernel:?} row {r}: {} vs {want}",
                    got[r]
                );
            }
        }
    }

    #[test]
    fn a_row_with_the_wrong_number_of_features_is_an_error() {
        let m = toy_model(KernelKind::Rbf);
        let x = Array2::<f64>::zeros((3, 5));
        assert!(matches!(
            m.decision_function(x.view()),
            Err(ModelError::FeatureMismatch {
                expected: 2,
                found: 5
            })
        ));
    }

    #[test]
    fn a_model_with_a_non_finite_coefficient_is_rejected_naming_the_field() {
        let mut svm = toy_model(KernelKind::Rbf).svm().unwrap().clone();
        svm.dual_coef[1] = f64::NAN;
        let err = Model::new(None, svm, ModelMeta::default()).unwrap_err();
        assert!(err.to_string().contains("dual_coef"), "{err}");
    }

    #[test]
    fn corrupt_or_unsupported_compressed_files_get_a_clear_error() {
        let err = Model::from_bytes(b"\x78\x9c\x00\x00").unwrap_err();
        assert!(
            err.to_string()
                .contains("decompressing the zlib-compressed joblib file"),
            "{err}"
        );
        let err = Model::from_bytes(b"\xfd7zXZ\x00\x00").unwrap_err();
        assert!(
            err.to_string()
                .contains("xz-compressed joblib files are not supported"),
            "{err}"
        );
    }

    #[test]
    fn a_compression_bomb_is_refused() {
        use std::io::Write;
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&vec![0u8; (2 << 20) + 1]).unwrap();
        let bomb = enc.finish().unwrap();
        let err = decompress("zlib", &bomb, 2 << 20).unwrap_err();
        assert!(
            err.to_string().contains("inflates to more than 2 MiB"),
            "{err}"
        );
        assert_eq!(
            decompress("zlib", &bomb, 3 << 20).map(|v| v.len()).ok(),
            Some((2 << 20) + 1)
        );
    }
}
