//! Parity with scikit-learn: fits models with today's scikit-learn (the venv's Python), pickles
//! them in every supported layout (protocols 2–5, joblib, and the 2018 sklearn 0.19 layout
//! written by `tests/py/old_pickle.py`), and checks that fleetscore reads each one and scores
//! every row with the same label and a decision within 1e-9 of scikit-learn's.
//!
//! Needs Python with scikit-learn: `FLEETSCORE_PYTHON`, else `~/.cache/fleetscore/venv/bin/python`.
//! Without it the tests skip, or fail when `FLEETSCORE_REQUIRE_ALL=1`.

#![allow(clippy::unwrap_used)] // a test: failing loudly is the point

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use fleetscore_scorer::model::{Model, is_anomaly};
use ndarray::Array2;

/// Fixture directory made once per test process (None when Python is unavailable).
fn fixtures() -> Option<&'static Path> {
    static DIR: OnceLock<Option<tempfile::TempDir>> = OnceLock::new();
    DIR.get_or_init(make_fixtures).as_ref().map(|d| d.path())
}

fn python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FLEETSCORE_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var("HOME").ok()?;
    let p = PathBuf::from(home).join(".cache/fleetscore/venv/bin/python");
    p.exists().then_some(p)
}

fn make_fixtures() -> Option<tempfile::TempDir> {
    let require = std::env::var("FLEETSCORE_REQUIRE_ALL").is_ok_and(|v| v == "1");
    let missing = |why: String| {
        if require {
            panic!("FLEETSCORE_REQUIRE_ALL=1 but the parity tests cannot run: {why}");
        }
        eprintln!("skipping scikit-learn parity tests: {why}");
        None
    };
    let Some(py) = python() else {
        return missing(
            "no Python found (set FLEETSCORE_PYTHON or create ~/.cache/fleetscore/venv)".into(),
        );
    };
    let check = Command::new(&py)
        .args(["-c", "import sklearn, joblib, numpy"])
        .output();
    match check {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return missing(format!(
                "{} cannot import sklearn: {}",
                py.display(),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Err(e) => return missing(format!("cannot run {}: {e}", py.display())),
    }
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/make_fixtures.py");
    let out = Command::new(&py)
        .arg(&script)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make_fixtures.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(dir)
}

fn read_f64(path: &Path) -> Vec<f64> {
    let b = std::fs::read(path).unwrap();
    b.chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

struct Case {
    name: String,
    rows: Array2<f64>,
    dec: Vec<f64>,
    pred: Vec<i8>,
    intercept: f64,
    files: Vec<serde_json::Value>,
}

fn cases(dir: &Path) -> Vec<Case> {
    let m = manifest(dir);
    m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_string();
            let d = c["d"].as_u64().unwrap() as usize;
            let flat = read_f64(&dir.join(format!("{name}.rows.f64")));
            let rows = Array2::from_shape_vec((flat.len() / d, d), flat).unwrap();
            let dec = read_f64(&dir.join(format!("{name}.dec.f64")));
            let pred = std::fs::read(dir.join(format!("{name}.pred.i8")))
                .unwrap()
                .into_iter()
                .map(|b| b as i8)
                .collect();
            Case {
                name,
                rows,
                dec,
                pred,
                intercept: c["intercept"].as_f64().unwrap(),
                files: c["files"].as_array().unwrap().clone(),
            }
        })
        .collect()
}

/// Compares decisions and labels; returns a description of every mismatch.
fn compare(case: &Case, label: &str, got: &[f64]) -> Vec<String> {
    let mut bad = Vec::new();
    for (r, ((g, want), p)) in got.iter().zip(&case.dec).zip(&case.pred).enumerate() {
        let tol = 1e-9 * (want.abs() + case.intercept.abs());
        // Written so that a NaN decision fails too.
        let close = (g - want).abs() <= tol;
        if !close {
            bad.push(format!(
                "{label} row {r}: decision {g:e} vs sklearn {want:e} (tol {tol:e})"
            ));
        }
        if i8::from(is_anomaly(*g)) != *p {
            bad.push(format!(
                "{label} row {r}: label {} vs sklearn {p} (decision {g:e})",
                is_anomaly(*g)
            ));
        }
    }
    bad
}

#[test]
fn every_pickle_layout_scores_every_row_like_sklearn() {
    let Some(dir) = fixtures() else { return };
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases(dir) {
        assert_eq!(case.rows.nrows(), case.dec.len());
        for f in &case.files {
            let file = f["file"].as_str().unwrap();
            let model = match Model::from_bytes(&std::fs::read(dir.join(file)).unwrap()) {
                Ok(m) => m,
                Err(e) => {
                    failures.push(format!("{file}: {e}"));
                    continue;
                }
            };
            let info = model.info();
            let want_source = f["source"].as_str().unwrap();
            if !info.source.starts_with(want_source) {
                failures.push(format!(
                    "{file}: source {:?}, expected {want_source:?}",
                    info.source
                ));
            }
            if let Some(v) = f.get("sklearn_version").and_then(|v| v.as_str())
                && info.sklearn_version.as_deref() != Some(v)
            {
                failures.push(format!(
                    "{file}: sklearn_version {:?}, expected {v}",
                    info.sklearn_version
                ));
            }
            let got = model.decision_function(case.rows.view()).unwrap();
            failures.extend(
                compare(&case, file, got.as_slice().unwrap())
                    .into_iter()
                    .take(3),
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} model files checked");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn native_copies_of_the_fixtures_score_identically() {
    let Some(dir) = fixtures() else { return };
    for case in cases(dir) {
        let file = case.files[1]["file"].as_str().unwrap();
        let model = Model::from_bytes(&std::fs::read(dir.join(file)).unwrap()).unwrap();
        let native = Model::from_bytes(&model.to_native_bytes().unwrap()).unwrap();
        let a = model.decision_function(case.rows.view()).unwrap();
        let b = native.decision_function(case.rows.view()).unwrap();
        assert_eq!(a, b, "{}", case.name);
        assert_eq!(native.info().source, "native v1");
    }
}

#[test]
fn parallel_scoring_equals_serial_scoring() {
    let Some(dir) = fixtures() else { return };
    for case in cases(dir) {
        let file = case.files[0]["file"].as_str().unwrap();
        let model = Model::from_bytes(&std::fs::read(dir.join(file)).unwrap()).unwrap();
        // Repeat the rows so the parallel split has several chunks.
        let big = ndarray::concatenate(ndarray::Axis(0), &[case.rows.view(); 4]).unwrap();
        let a = model.decision_function(big.view()).unwrap();
        let b = model.decision_function_parallel(big.view()).unwrap();
        assert_eq!(a, b, "{}", case.name);
    }
}

#[test]
fn data_far_from_zero_keeps_every_label() {
    let Some(dir) = fixtures() else { return };
    let case = cases(dir)
        .into_iter()
        .find(|c| c.name == "rbf_1d_offset_1e5")
        .unwrap();
    let model = Model::from_bytes(
        &std::fs::read(dir.join(case.files[0]["file"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let got = model.decision_function(case.rows.view()).unwrap();
    let flips = got
        .iter()
        .zip(&case.pred)
        .filter(|(g, p)| i8::from(is_anomaly(**g)) != **p)
        .count();
    assert_eq!(flips, 0);
}

#[test]
fn unsupported_pickles_are_rejected_naming_what_they_hold() {
    let Some(dir) = fixtures() else { return };
    let m = manifest(dir);
    for e in m["errors"].as_array().unwrap() {
        let file = e["file"].as_str().unwrap();
        let needle = e["needle"].as_str().unwrap();
        let err = Model::from_bytes(&std::fs::read(dir.join(file)).unwrap()).expect_err(file);
        assert!(
            err.to_string().contains(needle),
            "{file}: error {err:?} does not name {needle}"
        );
    }
}
