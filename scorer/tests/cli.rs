//! The `fleetscore-scorer` binary end to end on local files: exit codes, outputs, layouts.
// Test helpers may unwrap: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fleetscore-scorer"));
    c.env("RUST_LOG", "warn");
    c
}

fn run(args: &[&str], dir: &Path) -> Output {
    bin().args(args).current_dir(dir).output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A temp dir with `data.csv` (3 devices × 2 tags, 6 h of minutes) and native models for all.
fn fleet() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let o = run(
        &[
            "generate",
            "--output",
            "data.csv",
            "--devices",
            "3",
            "--tags",
            "2",
            "--duration",
            "6h",
            "--anomaly-rate",
            "0.01",
        ],
        dir.path(),
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = run(
        &[
            "train",
            "--data",
            "data.csv",
            "--models",
            "models",
            "--max-rows",
            "200",
            "--nu",
            "0.05",
        ],
        dir.path(),
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    dir
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn scoring_every_sensor_exits_zero_and_writes_predictions_and_logs() {
    let dir = fleet();
    let d = dir.path();
    let o = run(
        &[
            "score", "--models", "models", "--data", "data.csv", "--output", "out", "--run-id",
            "r1", "--all",
        ],
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("succeeded    6"),
        "{}",
        text(&o)
    );
    let preds = read(d, "out/r1/preds/preds_2_1.csv");
    let mut lines = preds.lines();
    assert_eq!(lines.next(), Some("TS,Device,Tag,Val,Prediction,Score"));
    let first: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(first[0], "2018-08-28 23:00:00.000");
    assert_eq!((first[1], first[2]), ("2", "1"));
    assert!(first[4] == "0" || first[4] == "1");
    assert_eq!(preds.lines().count(), 361);
    let log: serde_json::Value = serde_json::from_str(&read(d, "out/r1/logs/2_1.json")).unwrap();
    assert_eq!(log["outcome"], "Succeeded");
    assert_eq!(log["rows"], 360);
    assert_eq!(log["sensor"], "2:1");
    for k in ["read_ms", "parse_ms", "score_ms", "write_ms"] {
        assert!(log["timings"][k].is_number(), "{k}");
    }
}

#[test]
fn a_rerun_overwrites_its_outputs_instead_of_adding_new_ones() {
    let dir = fleet();
    let d = dir.path();
    let args = [
        "score", "--models", "models", "--data", "data.csv", "--output", "out", "--run-id",
        "again", "--sensor", "1:1",
    ];
    assert_eq!(code(&run(&args, d)), 0);
    let before = read(d, "out/again/preds/preds_1_1.csv");
    assert_eq!(code(&run(&args, d)), 0);
    assert_eq!(read(d, "out/again/preds/preds_1_1.csv"), before);
    assert_eq!(
        std::fs::read_dir(d.join("out/again/preds"))
            .unwrap()
            .count(),
        1
    );
    assert_eq!(
        std::fs::read_dir(d.join("out/again/logs")).unwrap().count(),
        1
    );
}

#[test]
fn a_failing_sensor_never_hides_the_others_and_a_missing_model_exits_three() {
    let dir = fleet();
    let d = dir.path();
    let o = run(
        &[
            "score", "--models", "models", "--data", "data.csv", "--output", "out", "--run-id",
            "r", "--sensor", "1:1", "--sensor", "7:7",
        ],
        d,
    );
    // 3: every failure is one a retry cannot fix (the operator's podFailurePolicy fails the Job at once).
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no model model_7_7"),
        "{}",
        text(&o)
    );
    assert!(d.join("out/r/preds/preds_1_1.csv").exists());
    let log: serde_json::Value = serde_json::from_str(&read(d, "out/r/logs/7_7.json")).unwrap();
    assert_eq!(log["outcome"], "Failed");
    assert!(log["error"].as_str().unwrap().contains("7:7"));
}

#[test]
fn usage_errors_exit_two() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for args in [
        vec![
            "score", "--models", "m", "--data", "x.csv", "--output", "o", "--all",
        ],
        vec![
            "score", "--models", "m", "--data", "x.csv", "--output", "o", "--run-id", "r",
            "--sensor", "1-4",
        ],
        vec![
            "score",
            "--models",
            "m",
            "--data",
            "x.csv",
            "--output",
            "o",
            "--run-id",
            "r",
            "--all",
            "--aggregate",
            "5q",
        ],
        vec![
            "score", "--models", "m", "--data", "x.csv", "--output", "o", "--run-id", "r", "--all",
            "--sensor", "1:4",
        ],
        vec![
            "score", "--models", "s3://b/m", "--data", "x.csv", "--output", "o", "--run-id", "r",
            "--all",
        ],
        vec!["no-such-command"],
    ] {
        let o = run(&args, d);
        assert_eq!(code(&o), 2, "{args:?}\n{}", text(&o));
    }
}

#[test]
fn help_describes_every_command() {
    let o = bin().arg("--help").output().unwrap();
    assert_eq!(code(&o), 0);
    let help = String::from_utf8_lossy(&o.stdout);
    for c in ["score", "partition", "train", "generate", "inspect-model"] {
        assert!(help.contains(c), "{c} missing from\n{help}");
    }
    let o = bin().args(["score", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("--aggregate"));
    let o = bin().args(["score", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("--max-bad-rows-percent"));
    // The CLI thins training data exactly as the library (and MODEL_FORMAT.md) says.
    let o = bin().args(["train", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("[default: 4000]"), "{help}");
}

#[test]
fn the_partitioned_layout_gives_the_same_predictions_as_the_long_csv() {
    let dir = fleet();
    let d = dir.path();
    let o = run(
        &["partition", "--input", "data.csv", "--output", "parts"],
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(d.join("parts/device=3/tag=2/part-0.csv").exists());
    let base = ["score", "--models", "models", "--output", "out", "--all"];
    let o = run(
        &[&base[..], &["--data", "data.csv", "--run-id", "long"]].concat(),
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = run(
        &[&base[..], &["--data", "parts", "--run-id", "parts"]].concat(),
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    for s in ["1_1", "2_2", "3_2"] {
        let rel = format!("preds/preds_{s}.csv");
        assert_eq!(
            read(d, &format!("out/long/{rel}")),
            read(d, &format!("out/parts/{rel}")),
            "{s}"
        );
    }
}

#[test]
fn bad_values_are_skipped_and_counted_or_fail_the_sensor_under_strict() {
    let dir = fleet();
    let d = dir.path();
    let mut csv = read(d, "data.csv");
    csv.push_str("2018-08-29 05:00:00.000,1,1,\n2018-08-29 05:01:00.000,1,1,oops\n");
    std::fs::write(d.join("bad.csv"), &csv).unwrap();
    let base = [
        "score", "--models", "models", "--data", "bad.csv", "--output", "out", "--sensor",
        "1:1,1:2",
    ];
    let o = run(&[&base[..], &["--run-id", "lenient"]].concat(), d);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let log: serde_json::Value =
        serde_json::from_str(&read(d, "out/lenient/logs/1_1.json")).unwrap();
    assert_eq!(log["skipped_rows"], 2);

    let o = run(
        &[&base[..], &["--run-id", "strict", "--strict"]].concat(),
        d,
    );
    assert_eq!(code(&o), 1, "{}", text(&o));
    let log: serde_json::Value =
        serde_json::from_str(&read(d, "out/strict/logs/1_1.json")).unwrap();
    assert_eq!(log["outcome"], "Failed");
    let err = log["error"].as_str().unwrap();
    let line = csv.lines().count() - 1;
    assert!(
        err.contains(&format!("bad.csv:{line}")) && err.contains("Value"),
        "{err}"
    );
    // The sensor without bad rows still succeeds.
    let log: serde_json::Value =
        serde_json::from_str(&read(d, "out/strict/logs/1_2.json")).unwrap();
    assert_eq!(log["outcome"], "Succeeded");
}

#[test]
fn more_bad_rows_than_the_limit_fail_the_sensor_naming_the_first_and_remove_stale_predictions() {
    let dir = fleet();
    let d = dir.path();
    let good = read(d, "data.csv");
    // 360 rows per sensor; 5 bad ones for 1:1 are 1.4%, above the default 1%.
    let mut csv = good.clone();
    for i in 0..5 {
        csv.push_str(&format!(
            "2018-08-29 05:0{i}:00.000,1,1,{}\n",
            ["", "nan", "inf", "x", "1e999"][i]
        ));
    }
    std::fs::write(d.join("bad.csv"), &csv).unwrap();
    let base = [
        "score", "--models", "models", "--output", "out", "--sensor", "1:1,1:2", "--run-id", "r",
    ];
    // A first, good run writes predictions for 1:1 ...
    let o = run(&[&base[..], &["--data", "data.csv"]].concat(), d);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(d.join("out/r/preds/preds_1_1.csv").exists());
    // ... the re-run under the same id fails it: no stale predictions stay beside the record.
    let o = run(&[&base[..], &["--data", "bad.csv"]].concat(), d);
    assert_eq!(code(&o), 1, "{}", text(&o));
    let log: serde_json::Value = serde_json::from_str(&read(d, "out/r/logs/1_1.json")).unwrap();
    assert_eq!(log["outcome"], "Failed");
    assert_eq!(log["skipped_rows"], 5);
    let err = log["error"].as_str().unwrap();
    let first = good.lines().count() + 1;
    assert!(
        err.contains("5 of 365 rows are bad") && err.contains(&format!("bad.csv:{first}")),
        "{err}"
    );
    assert!(!d.join("out/r/preds/preds_1_1.csv").exists());
    assert!(d.join("out/r/preds/preds_1_2.csv").exists());
    // A looser policy accepts them, still counted and named in the record.
    let o = run(
        &[
            &base[..],
            &["--data", "bad.csv", "--max-bad-rows-percent", "5"],
        ]
        .concat(),
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let log: serde_json::Value = serde_json::from_str(&read(d, "out/r/logs/1_1.json")).unwrap();
    assert_eq!(
        (log["outcome"].as_str(), log["skipped_rows"].as_u64()),
        (Some("Succeeded"), Some(5))
    );
    assert!(
        log["first_bad_row"]
            .as_str()
            .unwrap()
            .contains(&format!("bad.csv:{first}")),
        "{log}"
    );
    let o = run(
        &[
            &base[..],
            &["--data", "bad.csv", "--max-bad-rows-percent", "101"],
        ]
        .concat(),
        d,
    );
    assert_eq!(code(&o), 2, "{}", text(&o));
}

#[test]
fn lines_naming_no_sensor_above_the_limit_fail_the_run() {
    let dir = fleet();
    let d = dir.path();
    let mut csv = read(d, "data.csv");
    for _ in 0..40 {
        csv.push_str("2018-08-29 05:00:00.000,1\n");
    }
    std::fs::write(d.join("bad.csv"), &csv).unwrap();
    let base = [
        "score", "--models", "models", "--data", "bad.csv", "--output", "out", "--all", "--json",
    ];
    let o = run(&[&base[..], &["--run-id", "a"]].concat(), d);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(
        text(&o).contains("lines naming no sensor: 40 of 2200 rows are bad"),
        "{}",
        text(&o)
    );
    let o = run(
        &[&base[..], &["--run-id", "b", "--max-bad-rows-percent", "2"]].concat(),
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("\"bad_rows\":40"),
        "{}",
        text(&o)
    );
    // The prepare step drops such lines from the parts, so it applies the same policy.
    let line = read(d, "data.csv").lines().count() + 1;
    let o = run(&["partition", "--input", "bad.csv", "--output", "parts"], d);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(
        text(&o).contains("40 of 2200 rows are bad (1.82%")
            && text(&o).contains(&format!("bad.csv:{line}")),
        "{}",
        text(&o)
    );
    assert!(!d.join("parts").exists());
    let o = run(
        &[
            "partition",
            "--input",
            "bad.csv",
            "--output",
            "parts",
            "--max-bad-rows-percent",
            "2",
        ],
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
}

#[test]
fn tags_with_underscores_get_their_own_files_and_the_reference_s_names_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut csv = String::from("TS,Device,Tag,Value\n");
    for i in 0..60 {
        for (dev, tag) in [("pump", "temp_1"), ("1_2", "3"), ("1", "2_3")] {
            csv.push_str(&format!(
                "2018-08-28 23:{i:02}:00.000,{dev},{tag},{}\n",
                50.0 + (i % 7) as f64
            ));
        }
    }
    std::fs::write(d.join("data.csv"), csv).unwrap();
    let o = run(
        &[
            "train", "--data", "data.csv", "--models", "models", "--nu", "0.1",
        ],
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = run(
        &[
            "score", "--models", "models", "--data", "data.csv", "--output", "out", "--run-id",
            "r", "--all",
        ],
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    // `1_2:3` and `1:2_3` no longer write the same file; --all invents no `pump_temp:1`.
    for stem in ["pump_temp=5F1", "1=5F2_3", "1_2=5F3"] {
        assert_eq!(
            read(d, &format!("out/r/preds/preds_{stem}.csv"))
                .lines()
                .count(),
            61,
            "{stem}"
        );
        assert!(d.join(format!("out/r/logs/{stem}.json")).exists(), "{stem}");
    }
    // The reference names the model model_pump_temp_1: ambiguous for --all, found by name.
    std::fs::create_dir_all(d.join("reference")).unwrap();
    std::fs::copy(
        d.join("models/model_pump_temp=5F1.json"),
        d.join("reference/model_pump_temp_1.json"),
    )
    .unwrap();
    let o = run(
        &[
            "score",
            "--models",
            "reference",
            "--data",
            "data.csv",
            "--output",
            "out",
            "--run-id",
            "all",
            "--all",
        ],
        d,
    );
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(
        text(&o).contains("no model_<D>_<T> files under reference"),
        "{}",
        text(&o)
    );
    let base = [
        "score",
        "--models",
        "reference",
        "--data",
        "data.csv",
        "--output",
        "out",
    ];
    let o = run(
        &[&base[..], &["--run-id", "one", "--sensor", "pump:temp_1"]].concat(),
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(
        read(d, "out/one/preds/preds_pump_temp=5F1.csv"),
        read(d, "out/r/preds/preds_pump_temp=5F1.csv")
    );
    // Asked for together, pump:temp_1 and pump_temp:1 could both mean that file: neither takes it.
    let o = run(
        &[
            &base[..],
            &["--run-id", "two", "--sensor", "pump:temp_1,pump_temp:1"],
        ]
        .concat(),
        d,
    );
    // 3: both fail for want of a model, which no retry fixes.
    assert_eq!(code(&o), 3, "{}", text(&o));
    let log: serde_json::Value =
        serde_json::from_str(&read(d, "out/two/logs/pump_temp=5F1.json")).unwrap();
    assert!(
        log["error"]
            .as_str()
            .unwrap()
            .contains("or, unless another sensor"),
        "{log}"
    );
}

#[test]
fn aggregated_features_must_match_the_model_and_then_score_windows() {
    let dir = fleet();
    let d = dir.path();
    let o = run(
        &[
            "train",
            "--data",
            "data.csv",
            "--models",
            "agg-models",
            "--aggregate",
            "5m",
            "--features",
            "mean,std,max",
            "--sensor",
            "1:1",
        ],
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = run(
        &[
            "score",
            "--models",
            "agg-models",
            "--data",
            "data.csv",
            "--output",
            "out",
            "--run-id",
            "agg",
            "--sensor",
            "1:1",
            "--aggregate",
            "5m",
            "--features",
            "mean,std,max",
        ],
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let preds = read(d, "out/agg/preds/preds_1_1.csv");
    assert_eq!(preds.lines().count(), 1 + 72);
    assert!(
        preds
            .lines()
            .nth(2)
            .unwrap()
            .starts_with("2018-08-28 23:05:00.000,1,1,")
    );
    // Raw values (one feature) against a three-feature model: the sensor fails, naming it.
    let o = run(
        &[
            "score",
            "--models",
            "agg-models",
            "--data",
            "data.csv",
            "--output",
            "out",
            "--run-id",
            "raw",
            "--sensor",
            "1:1",
        ],
        d,
    );
    assert_eq!(code(&o), 1);
    let log: serde_json::Value = serde_json::from_str(&read(d, "out/raw/logs/1_1.json")).unwrap();
    assert!(
        log["error"]
            .as_str()
            .unwrap()
            .contains("fitted on 5m windows of mean,std,max"),
        "{log}"
    );
    // The contract is stored: another window or other features are refused, naming both ...
    let agg = |id: &str, window: &str, features: &str| {
        let args = [
            "score",
            "--models",
            "agg-models",
            "--data",
            "data.csv",
            "--output",
            "out",
            "--sensor",
            "1:1",
        ];
        run(
            &[
                &args[..],
                &[
                    "--run-id",
                    id,
                    "--aggregate",
                    window,
                    "--features",
                    features,
                ],
            ]
            .concat(),
            d,
        )
    };
    let o = agg("1m", "1m", "mean,std,max");
    assert_eq!(code(&o), 1);
    assert!(
        read(d, "out/1m/logs/1_1.json").contains("fitted on 5m windows, but --aggregate is 1m")
    );
    let o = agg("min", "5m", "mean,std,min");
    assert_eq!(code(&o), 1);
    assert!(
        read(d, "out/min/logs/1_1.json")
            .contains("fitted on features [mean,std,max] but --features gives [mean,std,min]")
    );
    // ... and the same features in another order are mapped by name: the same scores.
    let o = agg("reordered", "5m", "max,mean,std");
    assert_eq!(code(&o), 0, "{}", text(&o));
    let scores = |rel: &str| {
        read(d, rel)
            .lines()
            .map(|l| l.rsplit(',').next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        scores("out/reordered/preds/preds_1_1.csv"),
        scores("out/agg/preds/preds_1_1.csv")
    );
    let model = read(d, "agg-models/model_1_1.json");
    assert!(
        model.contains("\"std_ddof\": 0") && model.contains("\"interval\": \"5m\""),
        "{model}"
    );
}

#[test]
fn inspect_model_prints_text_or_json() {
    let dir = fleet();
    let o = run(&["inspect-model", "models/model_1_1.json"], dir.path());
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("support vectors"));
    let o = run(
        &["inspect-model", "--json", "models/model_1_1.json"],
        dir.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n_features"], 1);
    let o = run(&["inspect-model", "models/missing.json"], dir.path());
    assert_eq!(code(&o), 1);
}

#[test]
fn report_builds_report_html_from_the_records_of_a_scored_run() {
    let dir = fleet();
    let d = dir.path();
    let o = run(
        &[
            "score", "--models", "models", "--data", "data.csv", "--output", "out", "--run-id",
            "rep", "--all",
        ],
        d,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = run(&["report", "out/rep"], d);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("(6 sensors, 6 plots"),
        "{}",
        text(&o)
    );
    let page = read(d, "out/rep/report.html");
    assert!(
        page.starts_with("<!DOCTYPE html>") && page.contains("\"total\":6"),
        "the records are the summary"
    );
    let o = run(&["report", "out/nothing"], d);
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("summary.json"),
        "{}",
        text(&o)
    );
}
