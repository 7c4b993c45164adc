//! Parity with scikit-learn: fits models with today's scikit-learn (the venv's Python), pickles
//! them in every supported layout (protocols 2–5, joblib, and the 2018 sklearn 0.19 layout
//! written by `tests/py/old_pickle.py`), and checks that fleetscore reads each one and scores
//! every row with the same label and a decision within 1e-9 of scikit-learn's. Besides
//! one-class SVMs this covers models as found in the wild: IsolationForest (bare, in a Pipeline,
//! with feature subsampling, pre-1.3 layout), models fitted on DataFrames (feature names),
//! OneClassSVM fitted on scipy CSR input, pyod's OCSVM/IForest wrappers, and a bare SVM with
//! its StandardScaler in a separate file.
//!
//! Needs Python with scikit-learn: `FLEETSCORE_PYTHON`, else `~/.cache/fleetscore/venv/bin/python`.
//! Without it the tests skip, or fail when `FLEETSCORE_REQUIRE_ALL=1`.

#![allow(clippy::unwrap_used)] // a test: failing loudly is the point

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use fleetscore_scorer::model::Model;
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
    estimator: String,
    feature_names: Option<Vec<String>>,
    rows: Array2<f64>,
    dec: Vec<f64>,
    pred: Vec<i8>,
    /// Per row, the size of the decision's terms (`make_fixtures.py: term_scale`).
    scale: Vec<f64>,
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
            let scale = read_f64(&dir.join(format!("{name}.scale.f64")));
            let pred = std::fs::read(dir.join(format!("{name}.pred.i8")))
                .unwrap()
                .into_iter()
                .map(|b| b as i8)
                .collect();
            Case {
                name,
                estimator: c["estimator"].as_str().unwrap_or("OneClassSVM").to_string(),
                feature_names: c["feature_names"]
                    .as_array()
                    .map(|a| a.iter().map(|n| n.as_str().unwrap().to_string()).collect()),
                rows,
                dec,
                pred,
                scale,
                intercept: c["intercept"].as_f64().unwrap(),
                files: c["files"].as_array().unwrap().clone(),
            }
        })
        .collect()
}

/// Compares decisions and labels; returns a description of every mismatch.
fn compare(case: &Case, model: &Model, label: &str, got: &[f64]) -> Vec<String> {
    let mut bad = Vec::new();
    for (r, (((g, want), p), scale)) in got
        .iter()
        .zip(&case.dec)
        .zip(&case.pred)
        .zip(&case.scale)
        .enumerate()
    {
        // 1e-9 of the result, plus rounding of a sum that cancels: sklearn's own linear and poly
        // decisions near 0 move by ~1e-16 of the terms' size with the CPU's BLAS kernel.
        let tol = 1e-9 * (want.abs() + case.intercept.abs()) + 1e-12 * scale;
        // Written so that a NaN decision fails too.
        let close = (g - want).abs() <= tol;
        if !close {
            bad.push(format!(
                "{label} row {r}: decision {g:e} vs sklearn {want:e} (tol {tol:e})"
            ));
        }
        if i8::from(model.is_anomaly(*g)) != *p {
            bad.push(format!(
                "{label} row {r}: label {} vs sklearn {p} (decision {g:e})",
                model.is_anomaly(*g)
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
            if info.estimator != case.estimator {
                failures.push(format!(
                    "{file}: estimator {}, expected {}",
                    info.estimator, case.estimator
                ));
            }
            if model.feature_names().map(|n| n.to_vec()) != case.feature_names {
                failures.push(format!(
                    "{file}: feature names {:?}, expected {:?}",
                    model.feature_names(),
                    case.feature_names
                ));
            }
            let got = model.decision_function(case.rows.view()).unwrap();
            failures.extend(
                compare(&case, &model, file, got.as_slice().unwrap())
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
    for case in cases(dir)
        .into_iter()
        .filter(|c| c.estimator == "OneClassSVM")
    {
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
        .filter(|(g, p)| i8::from(model.is_anomaly(**g)) != **p)
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

/// Largest |ours - sklearn's| over every file of the cases an estimator class has, for the log.
fn max_diff(dir: &Path, estimator: &str) -> (f64, usize) {
    let (mut worst, mut files) = (0.0f64, 0);
    for case in cases(dir).into_iter().filter(|c| c.estimator == estimator) {
        for f in &case.files {
            let model =
                Model::from_bytes(&std::fs::read(dir.join(f["file"].as_str().unwrap())).unwrap())
                    .unwrap();
            let got = model.decision_function(case.rows.view()).unwrap();
            worst = got
                .iter()
                .zip(&case.dec)
                .map(|(a, b)| (a - b).abs())
                .fold(worst, f64::max);
            files += 1;
        }
    }
    (worst, files)
}

#[test]
fn isolation_forests_score_like_sklearn_including_ties_at_zero() {
    let Some(dir) = fixtures() else { return };
    let (worst, files) = max_diff(dir, "IsolationForest");
    eprintln!("IsolationForest: {files} files, max |decision - sklearn| = {worst:e}");
    assert!(files >= 40, "only {files} IsolationForest files");
    assert!(worst <= 1e-9, "max difference {worst:e}");
    // The contamination case has rows exactly at the threshold, which sklearn calls inliers.
    let case = cases(dir)
        .into_iter()
        .find(|c| c.name == "iforest_3d_contamination")
        .unwrap();
    let model = Model::from_bytes(
        &std::fs::read(dir.join(case.files[0]["file"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let got = model.decision_function(case.rows.view()).unwrap();
    // sklearn's own tie rows; ours may sit an ulp off 0 (numpy's vectorised pow), still inliers.
    let ties: Vec<usize> = case
        .dec
        .iter()
        .enumerate()
        .filter(|(_, d)| **d == 0.0)
        .map(|(i, _)| i)
        .collect();
    assert!(!ties.is_empty(), "no sklearn decision is exactly 0");
    for i in ties {
        assert_eq!(
            case.pred[i], 0,
            "row {i}: sklearn calls a decision of 0 an inlier"
        );
        assert!(!model.is_anomaly(got[i]), "row {i}: decision {:e}", got[i]);
    }
    assert!(
        model
            .to_native_bytes()
            .unwrap_err()
            .to_string()
            .contains("IsolationForest")
    );
}

#[test]
fn a_bare_svm_with_its_scaler_in_a_separate_file_scores_like_the_two_in_sklearn() {
    let Some(dir) = fixtures() else { return };
    let m = manifest(dir);
    let all = cases(dir);
    let sidecars = m["sidecars"].as_array().unwrap();
    assert_eq!(sidecars.len(), 2);
    for s in sidecars {
        let name = s["name"].as_str().unwrap();
        let d = s["d"].as_u64().unwrap() as usize;
        let flat = read_f64(&dir.join(format!("{name}.rows.f64")));
        let case = Case {
            name: name.to_string(),
            estimator: "OneClassSVM".into(),
            feature_names: None,
            rows: Array2::from_shape_vec((flat.len() / d, d), flat).unwrap(),
            dec: read_f64(&dir.join(format!("{name}.dec.f64"))),
            pred: std::fs::read(dir.join(format!("{name}.pred.i8")))
                .unwrap()
                .into_iter()
                .map(|b| b as i8)
                .collect(),
            intercept: s["intercept"].as_f64().unwrap(),
            scale: read_f64(&dir.join(format!("{name}.scale.f64"))),
            files: Vec::new(),
        };
        let read = |k: &str| std::fs::read(dir.join(s[k].as_str().unwrap())).unwrap();
        let model = Model::from_bytes_with_scaler(&read("model"), &read("scaler")).unwrap();
        assert!(model.scaler().is_some());
        let got = model.decision_function(case.rows.view()).unwrap();
        let bad = compare(
            &case,
            &model,
            s["model"].as_str().unwrap(),
            got.as_slice().unwrap(),
        );
        assert!(bad.is_empty(), "{}", bad.join("\n"));
        // The scaler file alone is refused, naming the sidecar convention.
        let err = Model::from_bytes(&read("scaler")).unwrap_err().to_string();
        assert!(err.contains("sidecar"), "{err}");
        // A pipeline that already has a scaler does not take another.
        let piped = all.iter().find(|c| c.name == "rbf_3d_scale").unwrap();
        let piped = std::fs::read(dir.join(piped.files[0]["file"].as_str().unwrap())).unwrap();
        let err = Model::from_bytes_with_scaler(&piped, &read("scaler"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("already has a StandardScaler"), "{err}");
    }
}

#[test]
fn feature_names_of_dataframe_fits_are_exposed() {
    let Some(dir) = fixtures() else { return };
    let case = cases(dir)
        .into_iter()
        .find(|c| c.name == "df_pipeline_svm")
        .unwrap();
    for f in &case.files {
        let model =
            Model::from_bytes(&std::fs::read(dir.join(f["file"].as_str().unwrap())).unwrap())
                .unwrap();
        let names: Vec<&str> = model
            .feature_names()
            .unwrap()
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(
            names,
            ["Temperature", "Pressure", "Vibration_RMS"],
            "{}",
            f["file"]
        );
        assert_eq!(
            model.info().feature_names.as_deref().map(|n| n.len()),
            Some(3)
        );
    }
}

#[test]
fn score_applies_a_scaler_sidecar_found_next_to_a_bare_model() {
    let Some(dir) = fixtures() else { return };
    let out = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_fleetscore-scorer"))
        .args(["score", "--models"])
        .arg(dir.join("fleet_models"))
        .arg("--data")
        .arg(dir.join("fleet_data.csv"))
        .arg("--output")
        .arg(out.path())
        .args(["--run-id", "side", "--all"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let preds = std::fs::read_to_string(out.path().join("side/preds/preds_7_3.csv")).unwrap();
    let want = read_f64(&dir.join("fleet_sidecar.dec.f64"));
    let got: Vec<f64> = preds
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got.len(), want.len());
    for (r, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
            "row {r}: {g} vs sklearn {w}"
        );
    }
    let log = std::fs::read_to_string(out.path().join("side/logs/7_3.json")).unwrap();
    assert!(log.contains("Succeeded"), "{log}");
}

fn score_cli(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fleetscore-scorer"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn device_features_align_a_devices_tags_into_one_row_per_timestamp() {
    let Some(dir) = fixtures() else { return };
    let out = tempfile::tempdir().unwrap();
    let (models, data) = (dir.join("device_models"), dir.join("device_data.csv"));
    let run = |data: &Path, id: &str, tags: &str| {
        score_cli(&[
            "score".as_ref(),
            "--models".as_ref(),
            models.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
            "--output".as_ref(),
            out.path().as_os_str(),
            "--run-id".as_ref(),
            id.as_ref(),
            "--all".as_ref(),
            "--device-features".as_ref(),
            tags.as_ref(),
        ])
    };
    let o = run(&data, "dev", "Temp,Pressure,Flow");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let preds = std::fs::read_to_string(out.path().join("dev/preds/preds_5_all.csv")).unwrap();
    let want = read_f64(&dir.join("device.dec.f64"));
    let got: Vec<f64> = preds
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(got.len(), want.len());
    for (r, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-9 * (1.0 + w.abs()),
            "row {r}: {g} vs sklearn {w}"
        );
    }
    // A tag missing at one timestamp fails the model's sensor, naming the tag and the time.
    let o = run(&dir.join("device_bad.csv"), "bad", "Temp,Pressure,Flow");
    assert!(!o.status.success());
    let log = std::fs::read_to_string(out.path().join("bad/logs/5_all.json")).unwrap();
    assert!(
        log.contains("tag Flow has no reading at 2018-08-28 00:00:10.000"),
        "{log}"
    );
    // Tags in another order than the model was fitted with are refused by its feature names.
    let o = run(&data, "order", "Pressure,Temp,Flow");
    assert!(!o.status.success());
    let log = std::fs::read_to_string(out.path().join("order/logs/5_all.json")).unwrap();
    assert!(
        log.contains("fitted on features Temp,Pressure,Flow"),
        "{log}"
    );
}
