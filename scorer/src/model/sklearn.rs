//! Turns a parsed pickle ([`super::pickle::Pickle`]) into a [`Model`] when it holds a
//! scikit-learn `Pipeline(StandardScaler, OneClassSVM)` or a bare `OneClassSVM`, from
//! scikit-learn 0.19 (2018 module paths, numpy 1.x `_reconstruct` arrays) to today's
//! (`sklearn.svm._classes`, numpy 2's `numpy._core`, protocol 5 `_frombuffer`, joblib wrappers).
//! Anything else is an error naming the class found.

use ndarray::Array2;

use super::pickle::{Obj, Pickle, Value};
use super::{KernelKind, Model, ModelError, ModelMeta, OneClassSvm, Scaler, SourceFormat};

/// Why a pickle did not hold a supported scikit-learn model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SklearnError {
    /// The pickled object is not a Pipeline or OneClassSVM.
    #[error(
        "expected a scikit-learn Pipeline(StandardScaler, OneClassSVM) or OneClassSVM, found {found}"
    )]
    UnsupportedClass {
        /// The class (or type) found, e.g. `sklearn.ensemble._iforest.IsolationForest` or `dict`.
        found: String,
    },
    /// A Pipeline step other than StandardScaler before the OneClassSVM.
    #[error(
        "pipeline step {step:?} is {found}; only StandardScaler then OneClassSVM are supported"
    )]
    UnsupportedStep {
        /// The step's name.
        step: String,
        /// Its class.
        found: String,
    },
    /// A Pipeline whose last step is not a OneClassSVM.
    #[error("the pipeline's last step is {found}, not a OneClassSVM")]
    NoSvm {
        /// What the last step is.
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
    /// Fitted on a sparse matrix.
    #[error("OneClassSVM was fitted on sparse input, which is not supported")]
    Sparse,
}

/// Reads the model a pickle holds.
pub fn model_from_pickle(p: &Pickle) -> Result<Model, ModelError> {
    let (scaler, svm, version) = match class_of(p, p.root) {
        Some(("sklearn.pipeline", "Pipeline")) => pipeline(p, p.root)?,
        Some((m, "OneClassSVM")) if m.starts_with("sklearn.svm") => {
            let (svm, version) = one_class_svm(p, p.root)?;
            (None, svm, version)
        }
        _ => {
            return Err(SklearnError::UnsupportedClass {
                found: p.describe(p.root),
            }
            .into());
        }
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
    Model::new(
        scaler,
        svm,
        ModelMeta {
            source: Some(source),
            sklearn_version: version,
            ..ModelMeta::default()
        },
    )
}

type Parts = (Option<Scaler>, OneClassSvm, Option<String>);

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
    match class_of(p, last) {
        Some((m, "OneClassSVM")) if m.starts_with("sklearn.svm") => {
            let (svm, inner_version) = one_class_svm(p, last)?;
            let version = state_of(p, v)
                .and_then(|s| p.dict_get(s, "_sklearn_version"))
                .and_then(|s| p.str(s));
            Ok((scaler, svm, version.map(String::from).or(inner_version)))
        }
        _ => Err(SklearnError::NoSvm {
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

fn one_class_svm(p: &Pickle, v: Value) -> Result<(OneClassSvm, Option<String>), SklearnError> {
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
    if matches!(
        get("_sparse"),
        Some(Value::Bool(true)) | Some(Value::Int(1))
    ) {
        return Err(SklearnError::Sparse);
    }

    let sv = array(p, need("support_vectors_")?).map_err(|r| bad(CLASS, "support_vectors_", &r))?;
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
    let dual = array(p, coef_v).map_err(|r| bad(CLASS, coef_field, &r))?;
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
    let version = get("_sklearn_version")
        .and_then(|v| p.str(v))
        .map(String::from);
    let svm = OneClassSvm {
        kernel,
        gamma,
        coef0,
        degree,
        support_vectors,
        dual_coef: dual.data,
        intercept,
        nu,
    };
    Ok((svm, version))
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

/// Decodes a numpy array from any of the layouts pickles use.
pub fn array(p: &Pickle, v: Value) -> Result<NdArray, String> {
    let (shape, dt, raw, fortran) = match p.obj(v) {
        Some(Obj::JoblibArray { state, data }) => {
            let shape = shape_of(
                p,
                p.dict_get(*state, "shape")
                    .ok_or("joblib array without shape")?,
            )?;
            let dt = dtype(
                p,
                p.dict_get(*state, "dtype")
                    .ok_or("joblib array without dtype")?,
            )?;
            let fortran = p.dict_get(*state, "order").and_then(|o| p.str(o)) == Some("F");
            (shape, dt, data.clone(), fortran)
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
                let dt = dtype(p, st[1])?;
                let raw = bytes_of(p, st[3])
                    .ok_or_else(|| format!("array data is {}", p.describe(st[3])))?;
                (shape_of(p, st[0])?, dt, raw, fortran)
            } else if is_numpy(m, "numeric") && n == "_frombuffer" {
                // numpy's protocol-5 layout: _frombuffer(buffer, dtype, shape, order).
                let a = p
                    .seq(*args)
                    .filter(|a| a.len() == 4)
                    .ok_or("_frombuffer needs 4 arguments")?;
                let raw = bytes_of(p, a[0])
                    .ok_or_else(|| format!("array data is {}", p.describe(a[0])))?;
                let fortran = p.str(a[3]) == Some("F");
                (shape_of(p, a[2])?, dtype(p, a[1])?, raw, fortran)
            } else if is_numpy(m, "multiarray") && n == "scalar" {
                let x = number(p, v).ok_or("unreadable numpy scalar")?;
                return Ok(NdArray {
                    shape: vec![],
                    data: vec![x],
                });
            } else {
                return Err(format!("is {}, not a numpy array", p.describe(v)));
            }
        }
        _ => return Err(format!("is {}, not a numpy array", p.describe(v))),
    };
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
        let p = b"\x80\x02csklearn.ensemble._iforest\nIsolationForest\n)\x81}b.";
        let err = Model::from_bytes(p).unwrap_err();
        assert!(
            err.to_string()
                .contains("sklearn.ensemble._iforest.IsolationForest"),
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
