//! Native training: a `StandardScaler` then a one-class RBF SVM fitted with linfa-svm, converted
//! into a [`Model`] so scoring uses fleetscore's kernel (and scikit-learn's tie rule).
//!
//! linfa-svm builds a dense kernel matrix (memory grows with rows²), so at most
//! [`TrainParams::max_rows`] evenly spaced rows are used; the scaler is fitted on the same rows.

use std::panic::{AssertUnwindSafe, catch_unwind};

use linfa::dataset::Pr;
use linfa::prelude::*;
use linfa_svm::Svm;
use ndarray::{Array2, ArrayView2, Axis};

use super::{KernelKind, Model, ModelError, ModelMeta, OneClassSvm, Scaler};

/// How gamma is chosen, as scikit-learn's `gamma` parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gamma {
    /// 1 / (n_features · var(X)) on the scaled data (scikit-learn's default).
    Scale,
    /// 1 / n_features.
    Auto,
    /// A fixed positive value.
    Value(f64),
}

impl std::str::FromStr for Gamma {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "scale" => Ok(Gamma::Scale),
            "auto" => Ok(Gamma::Auto),
            _ => match s.parse::<f64>() {
                Ok(g) if g > 0.0 && g.is_finite() => Ok(Gamma::Value(g)),
                _ => Err(format!(
                    "gamma must be scale, auto or a positive number, not {s:?}"
                )),
            },
        }
    }
}

/// Training parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainParams {
    /// nu in (0, 1]: upper bound on the fraction of training outliers (scikit-learn default 0.5).
    pub nu: f64,
    /// Kernel coefficient.
    pub gamma: Gamma,
    /// Solver stopping tolerance (scikit-learn's `tol`).
    pub tol: f64,
    /// Most training rows used; more are thinned to evenly spaced rows.
    pub max_rows: usize,
}

impl Default for TrainParams {
    fn default() -> Self {
        TrainParams {
            nu: 0.5,
            gamma: Gamma::Scale,
            tol: 1e-3,
            max_rows: 4000,
        }
    }
}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// No rows or no features.
    #[error("no training data ({rows} rows × {features} features)")]
    Empty {
        /// Rows given.
        rows: usize,
        /// Features given.
        features: usize,
    },
    /// A training value is NaN or infinite.
    #[error("training value at row {row}, feature {feature} is not finite")]
    NotFinite {
        /// Row index.
        row: usize,
        /// Feature index.
        feature: usize,
    },
    /// A parameter is out of range.
    #[error("invalid parameter {name}: {reason}")]
    Param {
        /// Parameter name.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// linfa-svm reported an error or panicked.
    #[error("linfa-svm failed: {0}")]
    Solver(String),
    /// The fitted model did not validate.
    #[error(transparent)]
    Model(#[from] Box<ModelError>),
}

/// Fits a scaler and a one-class RBF SVM on `x` (rows × features).
pub fn train(x: ArrayView2<f64>, params: &TrainParams) -> Result<Model, TrainError> {
    let (rows, d) = x.dim();
    if rows == 0 || d == 0 {
        return Err(TrainError::Empty { rows, features: d });
    }
    if !(params.nu > 0.0 && params.nu <= 1.0) {
        return Err(TrainError::Param {
            name: "nu",
            reason: format!("{} is outside (0, 1]", params.nu),
        });
    }
    if !(params.tol > 0.0 && params.tol.is_finite()) {
        return Err(TrainError::Param {
            name: "tol",
            reason: format!("{} is not positive", params.tol),
        });
    }
    if params.max_rows == 0 {
        return Err(TrainError::Param {
            name: "max_rows",
            reason: "is zero".into(),
        });
    }
    if let Some((i, _)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(TrainError::NotFinite {
            row: i / d,
            feature: i % d,
        });
    }
    let x = if rows > params.max_rows {
        let idx: Vec<usize> = (0..params.max_rows)
            .map(|i| i * rows / params.max_rows)
            .collect();
        x.select(Axis(0), &idx)
    } else {
        x.to_owned()
    };
    let n = x.nrows() as f64;

    // StandardScaler: population mean and std; constant features keep scale 1 as scikit-learn does.
    let mean: Vec<f64> = x.columns().into_iter().map(|c| c.sum() / n).collect();
    let scale: Vec<f64> = x
        .columns()
        .into_iter()
        .zip(&mean)
        .map(|(c, m)| {
            let var = c.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / n;
            if var > 0.0 { var.sqrt() } else { 1.0 }
        })
        .collect();
    let mut z = x;
    for (mut col, (m, s)) in z.columns_mut().into_iter().zip(mean.iter().zip(&scale)) {
        col.mapv_inplace(|v| (v - m) / s);
    }

    let gamma = match params.gamma {
        Gamma::Scale => {
            let zm = z.sum() / z.len() as f64;
            let var = z.iter().map(|v| (v - zm) * (v - zm)).sum::<f64>() / z.len() as f64;
            if var > 0.0 {
                1.0 / (d as f64 * var)
            } else {
                1.0
            }
        }
        Gamma::Auto => 1.0 / d as f64,
        Gamma::Value(g) if g > 0.0 && g.is_finite() => g,
        Gamma::Value(g) => {
            return Err(TrainError::Param {
                name: "gamma",
                reason: format!("{g} is not positive"),
            });
        }
    };

    let dataset = Dataset::from(z.clone());
    // linfa's gaussian kernel is exp(-||a-b||²/eps): eps = 1/gamma. Shrinking off: it panicked in tests.
    let fit = catch_unwind(AssertUnwindSafe(|| {
        Svm::<f64, Pr>::params()
            .nu_weight(params.nu)
            .gaussian_kernel(1.0 / gamma)
            .shrinking(false)
            .eps(params.tol)
            .fit(&dataset)
    }));
    let svm = match fit {
        Ok(Ok(svm)) => svm,
        Ok(Err(e)) => return Err(TrainError::Solver(e.to_string())),
        Err(_) => return Err(TrainError::Solver("the solver panicked".into())),
    };

    // linfa keeps one alpha per training row; its own support vectors are those above 100·eps.
    let keep: Vec<usize> = svm
        .alpha
        .iter()
        .enumerate()
        .filter(|(_, a)| a.abs() > 100.0 * f64::EPSILON)
        .map(|(i, _)| i)
        .collect();
    let support_vectors: Array2<f64> = z.select(Axis(0), &keep);
    let dual_coef: Vec<f64> = keep.iter().map(|&i| svm.alpha[i]).collect();
    let model_svm = OneClassSvm {
        kernel: KernelKind::Rbf,
        gamma,
        coef0: 0.0,
        degree: 3,
        support_vectors,
        dual_coef,
        // linfa's decision is weighted_sum - rho.
        intercept: -svm.rho,
        nu: Some(params.nu),
    };
    let meta = ModelMeta {
        source: None,
        sklearn_version: None,
        trained_by: Some(format!(
            "fleetscore {} (linfa-svm 0.8.1): nu={}, gamma={gamma}, tol={}, rows={}",
            env!("CARGO_PKG_VERSION"),
            params.nu,
            params.tol,
            z.nrows()
        )),
        ..ModelMeta::default()
    };
    Model::new(
        Some(Scaler {
            mean: Some(mean),
            scale: Some(scale),
        }),
        model_svm,
        meta,
    )
    .map_err(|e| Box::new(e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: usize, d: usize) -> Array2<f64> {
        // Deterministic bell-shaped points around 100 (a sum of four uniforms, spread about 3).
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut uniform = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        Array2::from_shape_fn((n, d), |_| {
            100.0 + 3.0 * ((0..4).map(|_| uniform()).sum::<f64>() - 2.0)
        })
    }

    #[test]
    fn a_trained_model_flags_far_points_and_accepts_central_ones() {
        let x = blob(300, 2);
        let m = train(
            x.view(),
            &TrainParams {
                nu: 0.1,
                ..TrainParams::default()
            },
        )
        .unwrap();
        assert!(m.n_support_vectors() > 0);
        let probe = ndarray::array![[100.0, 100.0], [160.0, 40.0]];
        let dec = m.decision_function(probe.view()).unwrap();
        assert!(dec[0] > 0.0, "centre scored {}", dec[0]);
        assert!(dec[1] < 0.0, "far point scored {}", dec[1]);
        // Roughly nu of the training rows are outliers.
        let out = m
            .decision_function(x.view())
            .unwrap()
            .iter()
            .filter(|d| **d <= 0.0)
            .count();
        assert!(out <= 60, "{out} training outliers");
    }

    #[test]
    fn a_trained_model_survives_the_native_format() {
        let x = blob(120, 1);
        let m = train(
            x.view(),
            &TrainParams {
                nu: 0.2,
                gamma: Gamma::Auto,
                ..TrainParams::default()
            },
        )
        .unwrap();
        let back = Model::from_bytes(&m.to_native_bytes().unwrap()).unwrap();
        let a = m.decision_function(x.view()).unwrap();
        let b = back.decision_function(x.view()).unwrap();
        assert_eq!(a, b);
        assert!(back.info().trained_by.unwrap().contains("linfa-svm"));
    }

    #[test]
    fn bad_parameters_are_errors_naming_them() {
        let x = blob(10, 1);
        let err = train(
            x.view(),
            &TrainParams {
                nu: 1.5,
                ..TrainParams::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("nu"));
        let mut y = x.clone();
        y[[3, 0]] = f64::NAN;
        let err = train(y.view(), &TrainParams::default()).unwrap_err();
        assert!(err.to_string().contains("row 3"), "{err}");
        assert_eq!("scale".parse::<Gamma>().unwrap(), Gamma::Scale);
        assert!("-1".parse::<Gamma>().is_err());
    }
}
