//! Turns a parsed pickle ([`super::pickle::Pickle`]) into a [`Model`] when it holds one of the
//! scikit-learn layouts found in the wild: a `Pipeline(StandardScaler, OneClassSVM)`, a
//! `Pipeline(StandardScaler, IsolationForest)`, a bare `OneClassSVM` (also fitted on scipy CSR
//! input) or `IsolationForest`, or pyod's `OCSVM` / `IForest` wrappers (read through their
//! `detector_`), from scikit-learn 0.19 (2018 module paths, numpy 1.x `_reconstruct` arrays) to
//! today's (`sklearn.svm._classes`, numpy 2's `numpy._core`, protocol 5 `_frombuffer`, joblib
//! wrappers, object arrays such as `feature_names_in_`). Anything else is an error naming the
//! class found.

use ndarray::Array2;

use super::iforest::{self, IsolationForest, IsolationTree, LEAF, TreeNode};
use super::pickle::{Obj, Pickle, Value};
use super::{KernelKind, Model, ModelError, ModelMeta, OneClassSvm, Scaler, SourceFormat};

/// Why a pickle did not hold a supported scikit-learn model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SklearnError {
    /// The pickled object is not a supported model.
    #[error(
        "expected a scikit-learn OneClassSVM or IsolationForest (bare, after a StandardScaler in a \
         Pipeline, or in pyod's OCSVM/IForest), found {found}"
    )]
    UnsupportedClass {
        /// The class (or type) found, e.g. `sklearn.neighbors._lof.LocalOutlierFactor` or `dict`.
        found: String,
    },
    /// A Pipeline step other than StandardScaler before the estimator.
    #[error(
        "pipeline step {step:?} is {found}; only StandardScaler then OneClassSVM or IsolationForest are supported"
    )]
    UnsupportedStep {
        /// The step's name.
        step: String,
        /// Its class.
        found: String,
    },
    /// A Pipeline whose last step is not a supported estimator.
    #[error("the pipeline's last step is {found}, not a OneClassSVM or IsolationForest")]
    NoSvm {
        /// What the last step is.
        found: String,
    },
    /// A scaler file that holds something else than a StandardScaler.
    #[error("expected a scikit-learn StandardScaler in the scaler file, found {found}")]
    NotAScaler {
        /// What the file holds.
        found: String,
    },
    /// A fitted attribute is missing.
    #[error("{class} has no attribute `{field}` (is it fitted?)")]
    MissingField {
        /// Estimator class.
        class: &'static str,
        /// Attribute name.
        field: &'static str,
    },
    /// A fitted attribute has an unexpected type or shape.
    #[error("{class}.{field}: {reason}")]
    BadField {
        /// Estimator class.
        class: &'static str,
        /// Attribute name.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A kernel other than rbf, linear, poly, sigmoid.
    #[error("OneClassSVM kernel {0:?} is not supported (rbf, linear, poly, sigmoid are)")]
    UnsupportedKernel(String),
}

/// The estimator found behind the optional scaler.
enum Est {
    Svm(OneClassSvm),
    Forest(IsolationForest),
}

/// What the pickle holds: scaler, estimator, `_sklearn_version`, `feature_names_in_`.
struct Parts {
    scaler: Option<Scaler>,
    est: Est,
    version: Option<String>,
    names: Option<Vec<String>>,
}

/// Reads the model a pickle holds.
pub fn model_from_pickle(p: &Pickle) -> Result<Model, ModelError> {
    let parts = match class_of(p, p.root) {
        Some(("sklearn.pipeline", "Pipeline")) => pipeline(p, p.root)?,
        Some((m, "StandardScaler")) if m.starts_with("sklearn.preprocessing") => {
            return Err(SklearnError::UnsupportedClass {
                found: format!(
                    "{} alone (a scaler saved on its own: name it as the model's scaler sidecar, see MODEL_FORMAT.md)",
                    p.describe(p.root)
                ),
            }
            .into());
        }
        _ => match estimator(p, p.root)? {
            Some((est, version, names)) => Parts {
                scaler: None,
                est,
                version,
                names,
            },
            None => {
                return Err(SklearnError::UnsupportedClass {
                    found: p.describe(p.root),
                }
                .into());
            }
        },
    };
    let source = if p.joblib {
        SourceFormat::Joblib {
            protocol: p.protocol,
            compression: None,
        }
    } else {
        SourceFormat::SklearnPickle {
            protocol: p.protocol,
        }
    };
    let meta = ModelMeta {
        source: Some(source),
        sklearn_version: parts.version,
        ..ModelMeta::default()
    };
    let model = match parts.est {
        Est::Svm(svm) => Model::new(parts.scaler, svm, meta)?,
        Est::Forest(f) => Model::isolation_forest(parts.scaler, f, meta)?,
    };
    model.with_feature_names(parts.names)
}

/// Reads a pickle holding a bare fitted `StandardScaler` (a scaler sidecar file), with the
/// feature names it was fitted with, if any.
pub fn scaler_from_pickle(p: &Pickle) -> Result<(Scaler, Option<Vec<String>>), SklearnError> {
    match class_of(p, p.root) {
        Some((m, "StandardScaler")) if m.starts_with("sklearn.preprocessing") => Ok((
            standard_scaler(p, p.root)?,
            feature_names(p, p.root, "StandardScaler")?,
        )),
        _ => Err(SklearnError::NotAScaler {
            found: p.describe(p.root),
        }),
    }
}

/// A supported estimator (`None` for any other class), with its version and feature names.
#[allow(clippy::type_complexity)]
fn estimator(
    p: &Pickle,
    v: Value,
) -> Result<Option<(Est, Option<String>, Option<Vec<String>>)>, SklearnError> {
    let version = |v: Value| {
        state_of(p, v)
            .and_then(|s| p.dict_get(s, "_sklearn_version"))
            .and_then(|s| p.str(s))
            .map(String::from)
    };
    match class_of(p, v) {
        Some((m, "OneClassSVM")) if m.starts_with("sklearn.svm") => {
            let svm = one_class_svm(p, v)?;
            Ok(Some((
                Est::Svm(svm),
                version(v),
                feature_names(p, v, "OneClassSVM")?,
            )))
        }
        Some((m, "IsolationForest")) if m.starts_with("sklearn.ensemble") => {
            let f = isolation_forest(p, v)?;
            Ok(Some((
                Est::Forest(f),
                version(v),
                feature_names(p, v, "IsolationForest")?,
            )))
        }
        // pyod's wrappers keep the fitted sklearn model in `detector_`; pyod's own
        // decision_function is its negation (bigger = more anomalous), sklearn's is scored here.
        Some(("pyod.models.ocsvm", "OCSVM")) | Some(("pyod.models.iforest", "IForest")) => {
            let class = if matches!(class_of(p, v), Some((_, "OCSVM"))) {
                "pyod OCSVM"
            } else {
                "pyod IForest"
            };
            let state = state_of(p, v).ok_or(SklearnError::MissingField {
                class,
                field: "detector_",
            })?;
            let inner = p
                .dict_get(state, "detector_")
                .ok_or(SklearnError::MissingField {
                    class,
                    field: "detector_",
                })?;
            match class_of(p, inner) {
                Some((m, "OneClassSVM"))
                    if m.starts_with("sklearn.svm") && class == "pyod OCSVM" =>
                {
                    estimator(p, inner)
                }
                Some((m, "IsolationForest"))
                    if m.starts_with("sklearn.ensemble") && class == "pyod IForest" =>
                {
                    estimator(p, inner)
                }
                _ => Err(bad(
                    class,
                    "detector_",
                    &format!("is {}", p.describe(inner)),
                )),
            }
        }
        _ => Ok(None),
    }
}

/// `feature_names_in_` of a fitted estimator (an object array of str), if present.
fn feature_names(
    p: &Pickle,
    v: Value,
    class: &'static str,
) -> Result<Option<Vec<String>>, SklearnError> {
    let Some(state) = state_of(p, v) else {
        return Ok(None);
    };
    match p.dict_get(state, "feature_names_in_") {
        None | Some(Value::None) => Ok(None),
        Some(a) => strings(p, a)
            .map(Some)
            .map_err(|r| bad(class, "feature_names_in_", &r)),
    }
}

fn pipeline(p: &Pickle, v: Value) -> Result<Parts, SklearnError> {
    const CLASS: &str = "Pipeline";
    let state = state_of(p, v).ok_or(SklearnError::MissingField {
        class: CLASS,
        field: "steps",
    })?;
    let steps = p
        .dict_get(state, "steps")
        .ok_or(SklearnError::MissingField {
            class: CLASS,
            field: "steps",
        })?;
    let steps = p
        .seq(steps)
        .ok_or_else(|| bad(CLASS, "steps", "is not a list"))?;
    let mut scaler = None;
    let mut names = None;
    let mut last: Option<Value> = None;
    let mut last_name = String::new();
    for step in steps {
        let pair = p
            .seq(*step)
            .filter(|s| s.len() == 2)
            .ok_or_else(|| bad(CLASS, "steps", "holds a non-pair"))?;
        let name = p.str(pair[0]).unwrap_or("?").to_string();
        let est = pair[1];
        // None and 'passthrough' steps do nothing.
        if est == Value::None || p.str(est) == Some("passthrough") {
            continue;
        }
        if let Some(prev) = last.take() {
            // Only a scaler may come before the last estimator.
            match class_of(p, prev) {
                Some((m, "StandardScaler"))
                    if m.starts_with("sklearn.preprocessing") && scaler.is_none() =>
                {
                    scaler = Some(standard_scaler(p, prev)?);
                    // A Pipeline's feature names are its first step's.
                    names = feature_names(p, prev, "StandardScaler")?;
                }
                _ => {
                    return Err(SklearnError::UnsupportedStep {
                        step: last_name,
                        found: p.describe(prev),
                    });
                }
            }
        }
        last = Some(est);
        last_name = name;
    }
    let last = last.ok_or_else(|| SklearnError::NoSvm {
        found: "nothing (an empty pipeline)".into(),
    })?;
    match estimator(p, last)? {
        Some((est, inner_version, inner_names)) => {
            let version = state_of(p, v)
                .and_then(|s| p.dict_get(s, "_sklearn_version"))
                .and_then(|s| p.str(s));
            let names = if scaler.is_some() { names } else { inner_names };
            Ok(Parts {
                scaler,
                est,
                version: version.map(String::from).or(inner_version),
                names,
            })
        }
        None => Err(SklearnError::NoSvm {
            found: p.describe(last),
        }),
    }
}

fn standard_scaler(p: &Pickle, v: Value) -> Result<Scaler, SklearnError> {
    const CLASS: &str = "StandardScaler";
    let state = state_of(p, v).ok_or(SklearnError::MissingField {
        class: CLASS,
        field: "mean_",
    })?;
    let flag = |field: &'static str| -> Result<bool, SklearnError> {
        match p.dict_get(state, field) {
            None => Ok(true),
            Some(Value::Bool(b)) => Ok(b),
            Some(Value::Int(i)) => Ok(i != 0),
            Some(_) => Err(bad(CLASS, field, "is not a bool")),
        }
    };
    let (with_mean, with_std) = (flag("with_mean")?, flag("with_std")?);
    let vector = |field: &'static str| -> Result<Vec<f64>, SklearnError> {
        let v = p.dict_get(state, field).ok_or(SklearnError::MissingField {
            class: CLASS,
            field,
        })?;
        Ok(array(p, v).map_err(|r| bad(CLASS, field, &r))?.data)
    };
    Ok(Scaler {
        mean: if with_mean {
            Some(vector("mean_")?)
        } else {
            None
        },
        scale: if with_std {
            Some(vector("scale_")?)
        } else {
            None
        },
    })
}

fn one_class_svm(p: &Pickle, v: Value) -> Result<OneClassSvm, SklearnError> {
    const CLASS: &str = "OneClassSVM";
    let state = state_of(p, v).ok_or(SklearnError::MissingField {
        class: CLASS,
        field: "support_vectors_",
    })?;
    let get = |field: &'static str| p.dict_get(state, field);
    let need = |field: &'static str| {
        get(field).ok_or(SklearnError::MissingField {
            class: CLASS,
            field,
        })
    };
    let num = |field: &'static str, v: Value| {
        number(p, v).ok_or_else(|| bad(CLASS, field, "is not a number"))
    };

    let kernel_v = need("kernel")?;
    let kernel_name = p
        .str(kernel_v)
        .ok_or_else(|| SklearnError::UnsupportedKernel(p.describe(kernel_v)))?;
    let kernel = KernelKind::from_name(kernel_name)
        .ok_or_else(|| SklearnError::UnsupportedKernel(kernel_name.into()))?;

    // Fitted on sparse input, support_vectors_ and dual_coef_ are scipy CSR matrices. libsvm's
    // sparse kernels sum over the non-zero entries in index order, which gives the same sums
    // as the dense formulas (the skipped terms are exact zeros), so densifying scores exactly.
    let sv =
        matrix(p, need("support_vectors_")?).map_err(|r| bad(CLASS, "support_vectors_", &r))?;
    let support_vectors = match sv.shape.as_slice() {
        [n, d] => Array2::from_shape_vec((*n, *d), sv.data)
            .map_err(|e| bad(CLASS, "support_vectors_", &e.to_string()))?,
        s => {
            return Err(bad(
                CLASS,
                "support_vectors_",
                &format!("has shape {s:?}, expected 2-D"),
            ));
        }
    };
    // Count support vectors from support_vectors_: 0.19's n_support_ is garbage for one-class.
    let n_sv = support_vectors.nrows();
    let (coef_field, coef_v) = match get("_dual_coef_") {
        Some(v) => ("_dual_coef_", v),
        None => ("dual_coef_", need("dual_coef_")?),
    };
    let dual = matrix(p, coef_v).map_err(|r| bad(CLASS, coef_field, &r))?;
    if dual.data.len() != n_sv {
        return Err(bad(
            CLASS,
            coef_field,
            &format!("has {} values for {n_sv} support vectors", dual.data.len()),
        ));
    }
    let (icpt_field, icpt_v) = match get("_intercept_") {
        Some(v) => ("_intercept_", v),
        None => ("intercept_", need("intercept_")?),
    };
    let intercept = match number(p, icpt_v) {
        Some(x) => x,
        None => {
            let a = array(p, icpt_v).map_err(|r| bad(CLASS, icpt_field, &r))?;
            match a.data.as_slice() {
                [x] => *x,
                d => {
                    return Err(bad(
                        CLASS,
                        icpt_field,
                        &format!("has {} values, expected 1", d.len()),
                    ));
                }
            }
        }
    };
    // The fitted `_gamma` ('scale'/'auto' resolved at fit); older files may only have a number in `gamma`.
    let gamma = match (get("_gamma"), get("gamma")) {
        (Some(g), _) => num("_gamma", g)?,
        (None, Some(g)) if number(p, g).is_some() => num("gamma", g)?,
        _ if kernel == KernelKind::Linear => 0.0,
        _ => {
            return Err(SklearnError::MissingField {
                class: CLASS,
                field: "_gamma",
            });
        }
    };
    let coef0 = match get("coef0") {
        Some(c) => num("coef0", c)?,
        None => 0.0,
    };
    let degree = match get("degree") {
        Some(d) => {
            let x = num("degree", d)?;
            if x < 0.0 || x.fract() != 0.0 || x > f64::from(u32::MAX) {
                return Err(bad(
                    CLASS,
                    "degree",
                    &format!("{x} is not a non-negative integer"),
                ));
            }
            x as u32
        }
        None => 3,
    };
    let nu = get("nu").and_then(|v| number(p, v));
    Ok(OneClassSvm {
        kernel,
        gamma,
        coef0,
        degree,
        support_vectors,
        dual_coef: dual.data,
        intercept,
        nu,
    })
}

/// Most trees and nodes per tree accepted (far above real forests; bounds the work of loading).
const MAX_TREES: usize = 1 << 16;
const MAX_NODES: usize = 1 << 24;

fn isolation_forest(p: &Pickle, v: Value) -> Result<IsolationForest, SklearnError> {
    const CLASS: &str = "IsolationForest";
    let state = state_of(p, v).ok_or(SklearnError::MissingField {
        class: CLASS,
        field: "estimators_",
    })?;
    let get = |field: &'static str| p.dict_get(state, field);
    let need = |field: &'static str| {
        get(field).ok_or(SklearnError::MissingField {
            class: CLASS,
            field,
        })
    };
    let num = |field: &'static str| -> Result<f64, SklearnError> {
        number(p, need(field)?).ok_or_else(|| bad(CLASS, field, "is not a number"))
    };
    let count = |field: &'static str| -> Result<usize, SklearnError> {
        let x = num(field)?;
        if x < 0.0 || x.fract() != 0.0 || x > 1e9 {
            return Err(bad(CLASS, field, &format!("{x} is not a count")));
        }
        Ok(x as usize)
    };
    let offset = num("offset_")?;
    // sklearn ≥ 0.24 records n_features_in_; older releases n_features_.
    let n_features = if get("n_features_in_").is_some() {
        count("n_features_in_")?
    } else {
        count("n_features_")?
    };
    let max_samples = if get("_max_samples").is_some() {
        num("_max_samples")?
    } else {
        num("max_samples_")?
    };
    // sklearn reindexes the input columns per tree only when features were subsampled.
    let max_features = if get("_max_features").is_some() {
        count("_max_features")?
    } else {
        n_features
    };
    let subsample = max_features != n_features;

    let trees_v = p
        .seq(need("estimators_")?)
        .ok_or_else(|| bad(CLASS, "estimators_", "is not a list"))?;
    if trees_v.len() > MAX_TREES {
        return Err(bad(
            CLASS,
            "estimators_",
            &format!("has {} trees (at most {MAX_TREES})", trees_v.len()),
        ));
    }
    let feats_v = p
        .seq(need("estimators_features_")?)
        .ok_or_else(|| bad(CLASS, "estimators_features_", "is not a list"))?;
    if feats_v.len() != trees_v.len() {
        return Err(bad(
            CLASS,
            "estimators_features_",
            &format!("has {} entries for {} trees", feats_v.len(), trees_v.len()),
        ));
    }
    // Since sklearn 1.3 the per-leaf terms are stored; earlier, computed from the tree as sklearn did.
    let stored = |field: &'static str| {
        get(field)
            .and_then(|v| p.seq(v))
            .filter(|s| s.len() == trees_v.len())
    };
    let (paths, averages) = (
        stored("_decision_path_lengths"),
        stored("_average_path_length_per_tree"),
    );

    let mut trees = Vec::with_capacity(trees_v.len());
    for (t, (&tree_v, &feat_v)) in trees_v.iter().zip(feats_v).enumerate() {
        let nodes = tree_nodes(p, tree_v)
            .map_err(|r| bad(CLASS, "estimators_", &format!("tree {t}: {r}")))?;
        let n = nodes.left.len();
        let per_node =
            |s: Option<&[Value]>, field: &'static str| -> Result<Option<Vec<f64>>, SklearnError> {
                let Some(s) = s else { return Ok(None) };
                let a = array(p, s[t]).map_err(|r| bad(CLASS, field, &format!("tree {t}: {r}")))?;
                if a.data.len() != n {
                    return Err(bad(
                        CLASS,
                        field,
                        &format!("tree {t}: {} values for {n} nodes", a.data.len()),
                    ));
                }
                Ok(Some(a.data))
            };
        let path = match per_node(paths, "_decision_path_lengths")? {
            Some(v) => v,
            None => iforest::node_depths(&nodes.left, &nodes.right)
                .into_iter()
                .map(|d| d as f64)
                .collect(),
        };
        let average = match per_node(averages, "_average_path_length_per_tree")? {
            Some(v) => v,
            None => nodes
                .n_samples
                .iter()
                .map(|n| iforest::average_path_length(*n))
                .collect(),
        };
        let features = if subsample {
            let f = array(p, feat_v)
                .map_err(|r| bad(CLASS, "estimators_features_", &format!("tree {t}: {r}")))?;
            let cols = f
                .data
                .iter()
                .map(|c| {
                    if *c >= 0.0 && c.fract() == 0.0 && *c < n_features as f64 {
                        Ok(*c as usize)
                    } else {
                        Err(*c)
                    }
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|c| {
                    bad(
                        CLASS,
                        "estimators_features_",
                        &format!("tree {t}: column {c} of {n_features}"),
                    )
                })?;
            Some(cols)
        } else {
            None
        };
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let child = |c: i64| {
                if c < 0 {
                    Ok(LEAF)
                } else {
                    u32::try_from(c).map_err(|_| c)
                }
            };
            let (left, right) = match (child(nodes.left[i]), child(nodes.right[i])) {
                (Ok(l), Ok(r)) if (l == LEAF) == (r == LEAF) => (l, r),
                _ => {
                    return Err(bad(
                        CLASS,
                        "estimators_",
                        &format!(
                            "tree {t}: node {i} has children {} and {}",
                            nodes.left[i], nodes.right[i]
                        ),
                    ));
                }
            };
            let node = if left == LEAF {
                // sklearn: depths += path[leaf] + average[leaf] - 1.0, in that order.
                TreeNode {
                    value: (path[i] + average[i]) - 1.0,
                    left,
                    right,
                    feature: 0,
                    missing_left: false,
                }
            } else {
                let feature = u32::try_from(nodes.feature[i]).map_err(|_| {
                    bad(
                        CLASS,
                        "estimators_",
                        &format!("tree {t}: node {i} has feature {}", nodes.feature[i]),
                    )
                })?;
                TreeNode {
                    value: nodes.threshold[i],
                    left,
                    right,
                    feature,
                    missing_left: nodes.missing_left[i],
                }
            };
            out.push(node);
        }
        trees.push(IsolationTree {
            nodes: out,
            features,
        });
    }
    Ok(IsolationForest {
        trees,
        n_features,
        max_samples,
        offset,
    })
}

/// The columns of a fitted `sklearn.tree._tree.Tree`'s `nodes` record array that scoring needs.
struct Nodes {
    left: Vec<i64>,
    right: Vec<i64>,
    feature: Vec<i64>,
    threshold: Vec<f64>,
    n_samples: Vec<f64>,
    missing_left: Vec<bool>,
}

/// Reads the nodes of one fitted tree (an `ExtraTreeRegressor` whose `tree_` is pickled as
/// `Tree(n_features, n_classes, n_outputs)` + a state dict holding `nodes` and `node_count`).
fn tree_nodes(p: &Pickle, est: Value) -> Result<Nodes, String> {
    let st =
        state_of(p, est).ok_or_else(|| format!("is {}, not a fitted tree", p.describe(est)))?;
    let tree = p.dict_get(st, "tree_").ok_or("has no tree_")?;
    match p.obj(tree) {
        Some(Obj::Object { class, .. })
            if p.global(*class)
                .is_some_and(|(m, n)| m.starts_with("sklearn.tree") && n == "Tree") => {}
        _ => return Err(format!("tree_ is {}", p.describe(tree))),
    }
    let Some(Obj::Object {
        state: Some(ts), ..
    }) = p.obj(tree)
    else {
        return Err("tree_ has no state".into());
    };
    let nodes_v = p.dict_get(*ts, "nodes").ok_or("tree_ has no nodes")?;
    let rec = records(p, nodes_v)?;
    if rec.count > MAX_NODES {
        return Err(format!("{} nodes (at most {MAX_NODES})", rec.count));
    }
    let count = p
        .dict_get(*ts, "node_count")
        .and_then(|v| number(p, v))
        .ok_or("tree_ has no node_count")?;
    if count != rec.count as f64 {
        return Err(format!("node_count {count} but {} nodes", rec.count));
    }
    let int = |name: &str| {
        rec.column(name)
            .map(|c| c.iter().map(|x| *x as i64).collect::<Vec<_>>())
    };
    Ok(Nodes {
        left: int("left_child")?,
        right: int("right_child")?,
        feature: int("feature")?,
        threshold: rec.column("threshold")?,
        n_samples: rec.column("n_node_samples")?,
        // Before sklearn 1.3 there was no such field: NaN went right (it fails `x <= t`).
        missing_left: match rec.column("missing_go_to_left") {
            Ok(c) => c.iter().map(|x| *x != 0.0).collect(),
            Err(_) => vec![false; rec.count],
        },
    })
}

/// A numpy record array: item count, raw bytes and named fields.
struct Records {
    count: usize,
    itemsize: usize,
    raw: Vec<u8>,
    fields: Vec<(String, DType, usize)>,
}

impl Records {
    /// One field of every record, as f64 (integer fields are exact below 2^53).
    fn column(&self, name: &str) -> Result<Vec<f64>, String> {
        let (_, dt, off) = self
            .fields
            .iter()
            .find(|(n, _, _)| n == name)
            .ok_or_else(|| format!("no field {name:?}"))?;
        if off + dt.size > self.itemsize {
            return Err(format!(
                "field {name:?} lies outside its {}-byte record",
                self.itemsize
            ));
        }
        let mut bytes = Vec::with_capacity(self.count * dt.size);
        for r in self.raw.chunks_exact(self.itemsize) {
            bytes.extend_from_slice(&r[*off..off + dt.size]);
        }
        decode(dt, &bytes)
    }
}

/// Reads a structured numpy array (dtype `V<n>` with named fields), from any array layout.
fn records(p: &Pickle, v: Value) -> Result<Records, String> {
    let (shape, dtype_v, raw) = raw_array(p, v)?;
    let Some(Obj::Object {
        class,
        args,
        state: Some(ds),
        ..
    }) = p.obj(dtype_v)
    else {
        return Err("record dtype without fields".into());
    };
    if p.global(*class) != Some(("numpy", "dtype")) {
        return Err(format!("dtype is {}", p.describe(dtype_v)));
    }
    let descr = p
        .seq(*args)
        .and_then(|a| a.first().copied())
        .and_then(|d| p.str(d))
        .ok_or("dtype without a name")?;
    let itemsize: usize = descr
        .trim_start_matches(['<', '>', '|', '='])
        .strip_prefix('V')
        .and_then(|s| s.parse().ok())
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("dtype {descr:?} is not a record type"))?;
    // dtype state: (version, byteorder, subarray, names, fields {name: (dtype, offset)}, ...).
    let st = p.seq(*ds).ok_or("record dtype state is not a tuple")?;
    let fields_v = *st.get(4).ok_or("record dtype state without fields")?;
    let Some(Obj::Dict(pairs)) = p.obj(fields_v) else {
        return Err("record dtype fields are not a dict".into());
    };
    let mut fields = Vec::with_capacity(pairs.len());
    for (k, f) in pairs {
        let name = p
            .str(*k)
            .ok_or("record field name is not a str")?
            .to_string();
        let f = p
            .seq(*f)
            .filter(|f| f.len() >= 2)
            .ok_or("record field is not (dtype, offset)")?;
        let dt = dtype(p, f[0])?;
        let off = match f[1] {
            Value::Int(o) if o >= 0 => o as usize,
            _ => return Err(format!("field {name:?} has a bad offset")),
        };
        fields.push((name, dt, off));
    }
    let count = shape
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .ok_or("shape overflows")?;
    if count.checked_mul(itemsize) != Some(raw.len()) {
        return Err(format!(
            "{count} records of {itemsize} bytes but the data has {} bytes",
            raw.len()
        ));
    }
    Ok(Records {
        count,
        itemsize,
        raw,
        fields,
    })
}

/// A dense matrix from a numpy array or a scipy CSR matrix (`scipy.sparse.csr` before scipy
/// 1.8, `scipy.sparse._csr` since; `csr_matrix` or `csr_array`).
fn matrix(p: &Pickle, v: Value) -> Result<NdArray, String> {
    match class_of(p, v) {
        Some(("scipy.sparse.csr" | "scipy.sparse._csr", "csr_matrix" | "csr_array")) => {
            csr_dense(p, v)
        }
        Some((m, n)) if m.starts_with("scipy.sparse") => Err(format!(
            "is a scipy {m}.{n}; only CSR matrices are supported"
        )),
        _ => array(p, v),
    }
}

/// Densifies a scipy CSR matrix (duplicate entries add up, as in `toarray()`).
fn csr_dense(p: &Pickle, v: Value) -> Result<NdArray, String> {
    let st = state_of(p, v).ok_or("CSR matrix without state")?;
    let shape = shape_of(
        p,
        p.dict_get(st, "_shape")
            .ok_or("CSR matrix without _shape")?,
    )?;
    let [rows, cols] = shape[..] else {
        return Err(format!("CSR matrix of shape {shape:?}"));
    };
    let part = |f: &str| -> Result<Vec<f64>, String> {
        Ok(array(
            p,
            p.dict_get(st, f)
                .ok_or_else(|| format!("CSR matrix without {f}"))?,
        )?
        .data)
    };
    let (data, indices, indptr) = (part("data")?, part("indices")?, part("indptr")?);
    let size = rows
        .checked_mul(cols)
        .filter(|s| *s <= 1 << 28)
        .ok_or_else(|| format!("CSR matrix {rows}×{cols} is too large to densify"))?;
    if indptr.len() != rows + 1
        || indices.len() != data.len()
        || indptr.last().copied() != Some(data.len() as f64)
    {
        return Err("CSR matrix: indptr, indices and data disagree".into());
    }
    let mut dense = vec![0.0; size];
    for r in 0..rows {
        let (a, b) = (indptr[r], indptr[r + 1]);
        if !(a >= 0.0 && a <= b && b <= data.len() as f64) {
            return Err(format!("CSR matrix: bad indptr at row {r}"));
        }
        for k in a as usize..b as usize {
            let c = indices[k];
            if !(c >= 0.0 && c < cols as f64) {
                return Err(format!("CSR matrix: column {c} of {cols}"));
            }
            dense[r * cols + c as usize] += data[k];
        }
    }
    Ok(NdArray {
        shape: vec![rows, cols],
        data: dense,
    })
}

/// The strings of a numpy object array of `str` (how `feature_names_in_` is stored): a
/// `_reconstruct` array whose BUILD state holds a list of objects instead of raw bytes. In a
/// joblib file it is a pickle nested after the wrapper, which the reader has already inlined.
fn strings(p: &Pickle, v: Value) -> Result<Vec<String>, String> {
    let Some(Obj::Object { class, state, .. }) = p.obj(v) else {
        return Err(format!("is {}", p.describe(v)));
    };
    let (m, n) = p
        .global(*class)
        .ok_or_else(|| format!("is {}", p.describe(v)))?;
    if !(is_numpy(m, "multiarray") && n == "_reconstruct") {
        return Err(format!("is {}, not a numpy array", p.describe(v)));
    }
    let st = state.and_then(|s| p.seq(s)).ok_or("array without state")?;
    let st = match st.len() {
        5 => &st[1..],
        4 => st,
        l => return Err(format!("array state has {l} items")),
    };
    let items = p.seq(st[3]).ok_or("is not an object array")?;
    let count = shape_of(p, st[0])?.iter().product::<usize>();
    if count != items.len() {
        return Err(format!(
            "shape says {count} items but there are {}",
            items.len()
        ));
    }
    items
        .iter()
        .map(|i| {
            p.str(*i)
                .map(String::from)
                .ok_or_else(|| format!("holds {}", p.describe(*i)))
        })
        .collect()
}

fn bad(class: &'static str, field: &'static str, reason: &str) -> SklearnError {
    SklearnError::BadField {
        class,
        field,
        reason: reason.to_string(),
    }
}

/// The class `(module, name)` of an object, looking through `copyreg._reconstructor`
/// (protocols 0–1) to the real class.
fn class_of(p: &Pickle, v: Value) -> Option<(&str, &str)> {
    let Some(Obj::Object { class, args, .. }) = p.obj(v) else {
        return None;
    };
    match p.global(*class)? {
        ("copyreg" | "copy_reg", "_reconstructor") => p.global(*p.seq(*args)?.first()?),
        g => Some(g),
    }
}

/// The `__dict__` state of an object (BUILD's dict, or the first of a (dict, slots) pair).
fn state_of(p: &Pickle, v: Value) -> Option<Value> {
    let Some(Obj::Object { state: Some(s), .. }) = p.obj(v) else {
        return None;
    };
    match p.obj(*s)? {
        Obj::Dict(_) => Some(*s),
        Obj::Tuple(t) => t
            .first()
            .copied()
            .filter(|d| matches!(p.obj(*d), Some(Obj::Dict(_)))),
        _ => None,
    }
}

fn is_numpy(module: &str, sub: &str) -> bool {
    module == format!("numpy.core.{sub}") || module == format!("numpy._core.{sub}")
}

/// A Python or numpy scalar as f64.
fn number(p: &Pickle, v: Value) -> Option<f64> {
    match v {
        Value::Float(x) => Some(x),
        Value::Int(i) => Some(i as f64),
        Value::Bool(b) => Some(f64::from(u8::from(b))),
        Value::None => None,
        Value::Ref(_) => {
            let Some(Obj::Object { class, args, .. }) = p.obj(v) else {
                return None;
            };
            let (m, n) = p.global(*class)?;
            if !(is_numpy(m, "multiarray") && n == "scalar") {
                return None;
            }
            let a = p.seq(*args)?;
            let dt = dtype(p, *a.first()?).ok()?;
            let raw = bytes_of(p, *a.get(1)?)?;
            let vals = decode(&dt, &raw).ok()?;
            match vals.as_slice() {
                [x] => Some(*x),
                _ => None,
            }
        }
    }
}

/// A decoded numeric array in C order.
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: Vec<f64>,
}

/// A numpy dtype reduced to what decoding needs.
#[derive(Debug, Clone, PartialEq)]
struct DType {
    kind: char,
    size: usize,
    big_endian: bool,
}

fn dtype(p: &Pickle, v: Value) -> Result<DType, String> {
    let Some(Obj::Object {
        class, args, state, ..
    }) = p.obj(v)
    else {
        return Err(format!("dtype is {}", p.describe(v)));
    };
    if p.global(*class) != Some(("numpy", "dtype")) {
        return Err(format!("dtype is {}", p.describe(v)));
    }
    let descr = p
        .seq(*args)
        .and_then(|a| a.first().copied())
        .and_then(|d| p.str(d))
        .ok_or("dtype without a name")?;
    // The byte order is the second item of the dtype's state; the name may carry it too.
    let order = state
        .and_then(|s| p.seq(s).and_then(|t| t.get(1).copied()))
        .and_then(|o| p.str(o));
    let mut name = descr;
    let mut big_endian = false;
    if let Some(rest) = name.strip_prefix(['<', '>', '|', '=']) {
        big_endian = name.starts_with('>');
        name = rest;
    }
    if order == Some(">") {
        big_endian = true;
    }
    let mut chars = name.chars();
    let kind = chars.next().ok_or("empty dtype")?;
    let size: usize = chars
        .as_str()
        .parse()
        .map_err(|_| format!("unsupported dtype {descr:?}"))?;
    match (kind, size) {
        ('f', 4 | 8) | ('i' | 'u', 1 | 2 | 4 | 8) | ('b', 1) => Ok(DType {
            kind,
            size,
            big_endian,
        }),
        _ => Err(format!("unsupported dtype {descr:?}")),
    }
}

fn decode(dt: &DType, raw: &[u8]) -> Result<Vec<f64>, String> {
    if !raw.len().is_multiple_of(dt.size) {
        return Err(format!(
            "{} data bytes is not a whole number of {}-byte items",
            raw.len(),
            dt.size
        ));
    }
    let mut out = Vec::with_capacity(raw.len() / dt.size);
    for c in raw.chunks_exact(dt.size) {
        let mut b = [0u8; 8];
        if dt.big_endian {
            for (i, x) in c.iter().rev().enumerate() {
                b[i] = *x;
            }
        } else {
            b[..dt.size].copy_from_slice(c);
        }
        let x = match (dt.kind, dt.size) {
            ('f', 8) => f64::from_le_bytes(b),
            ('f', 4) => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ('i', n) => {
                let shift = 64 - 8 * n as u32;
                ((i64::from_le_bytes(b) << shift) >> shift) as f64
            }
            ('u', _) => u64::from_le_bytes(b) as f64,
            ('b', _) => f64::from(u8::from(b[0] != 0)),
            _ => return Err("unsupported dtype".into()),
        };
        out.push(x);
    }
    Ok(out)
}

/// The raw bytes of a bytes-like pickle value, including protocol 2's `_codecs.encode(str, 'latin1')`.
fn bytes_of(p: &Pickle, v: Value) -> Option<Vec<u8>> {
    bytes_within(p, v, 4)
}

/// [`bytes_of`] following at most `depth` nested `bytes(...)` calls (hostile input can chain many).
fn bytes_within(p: &Pickle, v: Value, depth: u32) -> Option<Vec<u8>> {
    match p.obj(v)? {
        Obj::Bytes(b) | Obj::ByteArray(b) => Some(b.clone()),
        Obj::Str(s) => latin1(s),
        Obj::Object { class, args, .. } => match p.global(*class)? {
            ("_codecs", "encode") => {
                let a = p.seq(*args)?;
                latin1(p.str(*a.first()?)?)
            }
            ("builtins" | "__builtin__", "bytes" | "bytearray") => match p.seq(*args)? {
                [] => Some(Vec::new()),
                [inner, ..] if depth > 0 => bytes_within(p, *inner, depth - 1),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

fn latin1(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

fn shape_of(p: &Pickle, v: Value) -> Result<Vec<usize>, String> {
    let dims = p.seq(v).ok_or("shape is not a tuple")?;
    dims.iter()
        .map(|d| match d {
            Value::Int(n) if *n >= 0 => {
                usize::try_from(*n).map_err(|_| "shape too large".to_string())
            }
            _ => Err("shape holds a non-integer".to_string()),
        })
        .collect()
}

/// An array's shape, dtype value, raw bytes and Fortran flag, from any of the layouts pickles
/// use (joblib wrapper, `_reconstruct` + BUILD, protocol 5's `_frombuffer`).
fn raw_parts(p: &Pickle, v: Value) -> Result<(Vec<usize>, Value, Vec<u8>, bool), String> {
    match p.obj(v) {
        Some(Obj::JoblibArray { state, data }) => {
            let shape = shape_of(
                p,
                p.dict_get(*state, "shape")
                    .ok_or("joblib array without shape")?,
            )?;
            let dt = p
                .dict_get(*state, "dtype")
                .ok_or("joblib array without dtype")?;
            let fortran = p.dict_get(*state, "order").and_then(|o| p.str(o)) == Some("F");
            Ok((shape, dt, data.clone(), fortran))
        }
        Some(Obj::Object {
            class, args, state, ..
        }) => {
            let (m, n) = p
                .global(*class)
                .ok_or_else(|| format!("is {}", p.describe(v)))?;
            if is_numpy(m, "multiarray") && n == "_reconstruct" {
                // BUILD state: (version, shape, dtype, is_fortran, raw bytes); very old numpy omits version.
                let st = state.and_then(|s| p.seq(s)).ok_or("array without state")?;
                let st = match st.len() {
                    5 => &st[1..],
                    4 => st,
                    l => return Err(format!("array state has {l} items")),
                };
                let fortran = matches!(st[2], Value::Bool(true) | Value::Int(1));
                let raw = bytes_of(p, st[3])
                    .ok_or_else(|| format!("array data is {}", p.describe(st[3])))?;
                Ok((shape_of(p, st[0])?, st[1], raw, fortran))
            } else if is_numpy(m, "numeric") && n == "_frombuffer" {
                // numpy's protocol-5 layout: _frombuffer(buffer, dtype, shape, order).
                let a = p
                    .seq(*args)
                    .filter(|a| a.len() == 4)
                    .ok_or("_frombuffer needs 4 arguments")?;
                let raw = bytes_of(p, a[0])
                    .ok_or_else(|| format!("array data is {}", p.describe(a[0])))?;
                let fortran = p.str(a[3]) == Some("F");
                Ok((shape_of(p, a[2])?, a[1], raw, fortran))
            } else {
                Err(format!("is {}, not a numpy array", p.describe(v)))
            }
        }
        _ => Err(format!("is {}, not a numpy array", p.describe(v))),
    }
}

/// [`raw_parts`] for a C-ordered array (record arrays are never Fortran-ordered in practice).
fn raw_array(p: &Pickle, v: Value) -> Result<(Vec<usize>, Value, Vec<u8>), String> {
    let (shape, dt, raw, fortran) = raw_parts(p, v)?;
    if fortran && shape.len() > 1 {
        return Err("a Fortran-order record array is not supported".into());
    }
    Ok((shape, dt, raw))
}

/// Decodes a numpy array from any of the layouts pickles use.
pub fn array(p: &Pickle, v: Value) -> Result<NdArray, String> {
    if let Some(Obj::Object { class, .. }) = p.obj(v)
        && p.global(*class)
            .is_some_and(|(m, n)| is_numpy(m, "multiarray") && n == "scalar")
    {
        let x = number(p, v).ok_or("unreadable numpy scalar")?;
        return Ok(NdArray {
            shape: vec![],
            data: vec![x],
        });
    }
    let (shape, dt_v, raw, fortran) = raw_parts(p, v)?;
    let dt = dtype(p, dt_v)?;
    let count = shape
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d))
        .ok_or("shape overflows")?;
    if count.checked_mul(dt.size) != Some(raw.len()) {
        return Err(format!(
            "shape {shape:?} needs {count} items but the data has {} bytes",
            raw.len()
        ));
    }
    let mut data = decode(&dt, &raw)?;
    if fortran && shape.len() == 2 {
        let (r, c) = (shape[0], shape[1]);
        let mut t = vec![0.0; data.len()];
        for i in 0..r {
            for j in 0..c {
                t[i * c + j] = data[j * r + i];
            }
        }
        data = t;
    } else if fortran && shape.len() > 2 {
        return Err("Fortran-order arrays above 2-D are not supported".into());
    }
    Ok(NdArray { shape, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pickle::parse;

    #[test]
    fn a_plain_dict_is_rejected_naming_dict() {
        // pickle.dumps({}, protocol=3)
        let err = Model::from_bytes(b"\x80\x03}q\x00.").unwrap_err();
        assert!(err.to_string().contains("found dict"), "{err}");
    }

    #[test]
    fn another_class_is_rejected_naming_it() {
        let p = b"\x80\x02csklearn.neighbors._lof\nLocalOutlierFactor\n)\x81}b.";
        let err = Model::from_bytes(p).unwrap_err();
        assert!(
            err.to_string()
                .contains("sklearn.neighbors._lof.LocalOutlierFactor"),
            "{err}"
        );
    }

    #[test]
    fn big_endian_and_integer_dtypes_decode() {
        let dt = DType {
            kind: 'f',
            size: 8,
            big_endian: true,
        };
        assert_eq!(decode(&dt, &1.5f64.to_be_bytes()).unwrap(), vec![1.5]);
        let dt = DType {
            kind: 'i',
            size: 2,
            big_endian: false,
        };
        assert_eq!(decode(&dt, &(-3i16).to_le_bytes()).unwrap(), vec![-3.0]);
        let dt = DType {
            kind: 'i',
            size: 4,
            big_endian: true,
        };
        assert_eq!(
            decode(&dt, &(-70000i32).to_be_bytes()).unwrap(),
            vec![-70000.0]
        );
    }

    #[test]
    fn protocol_2_latin1_bytes_decode() {
        // _codecs.encode('\x00\xff', 'latin1')
        let p =
            b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00\x00\xc3\xbfX\x06\x00\x00\x00latin1\x86R.";
        let pk = parse(p).unwrap();
        assert_eq!(bytes_of(&pk, pk.root), Some(vec![0x00, 0xff]));
    }
}
