//! `report.html` in a real browser: headless Chromium (Debian's `chromium`, installed by
//! scripts/test) renders the report of the example fleet and of a run with failures, scripts and
//! all; the test reads the DOM after the scripts ran (`--dump-dom`) and checks it against
//! `summary.json`, one table row per sensor, the plots, and sorting (driven by the page's own
//! `#sort=` address, the code path a click takes). A screenshot of each is kept under
//! `~/.cache/fleetscore/artifacts/`.

// Tests may unwrap: a failed unwrap is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fleetscore_testenv::skip::skip_or_fail;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Chromium: `FLEETSCORE_CHROMIUM`, else `chromium` or `chromium-browser` on PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLEETSCORE_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| [d.join("chromium"), d.join("chromium-browser")])
        .find(|p| p.is_file())
}

/// The `fleetscore` binary of this build (`FLEETSCORE_OPERATOR_BIN`, or beside the test binary).
fn fleetscore_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLEETSCORE_OPERATOR_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("fleetscore")).filter(|p| p.is_file())
}

/// Where screenshots are kept: `$FLEETSCORE_CACHE/artifacts` (default `~/.cache/fleetscore`).
fn artifacts() -> PathBuf {
    let cache = std::env::var_os("FLEETSCORE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/fleetscore")
        });
    let dir = cache.join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs Chromium headless on `url` with `mode` (`--dump-dom` or `--screenshot=...`), in a fresh
/// profile, and returns its stdout.
fn browse(chrome: &Path, url: &str, mode: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,1600",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(mode)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", chrome.display()));
    assert!(
        out.status.success(),
        "chromium {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Scores `manifest` locally into `out` with the real binary; returns the run's folder.
fn run_local(bin: &Path, manifest: &Path, out: &Path) -> (PathBuf, bool) {
    let status = Command::new(bin)
        .current_dir(repo())
        .args(["run", "--local", "--progress", "never", "--output"])
        .arg(out)
        .arg(manifest)
        .status()
        .unwrap();
    let name = std::fs::read_to_string(manifest)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("name:").map(|n| n.trim().to_string()))
        .unwrap();
    (out.join(name), status.success())
}

/// Text of the element `<tag id="id" ...>text<` in the dumped DOM.
fn text_of(dom: &str, id: &str) -> String {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element #{id} in the DOM"));
    let start = at + dom[at..].find('>').unwrap() + 1;
    let end = start + dom[start..].find('<').unwrap();
    dom[start..end].to_string()
}

/// `data-sensor` of every table row, in DOM order.
fn table_rows(dom: &str) -> Vec<String> {
    let body = &dom[dom.find("<tbody>").expect("table body")..];
    let body = &body[..body.find("</tbody>").unwrap()];
    body.split("<tr data-sensor=\"")
        .skip(1)
        .map(|r| r[..r.find('"').unwrap()].to_string())
        .collect()
}

fn number(text: &str) -> i64 {
    text.replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

struct Checked {
    dom: String,
    summary: serde_json::Value,
}

/// Renders a run's report and checks what every report must show.
fn check_report(chrome: &Path, run_dir: &Path) -> Checked {
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir.join("summary.json")).unwrap()).unwrap();
    let report = run_dir.join("report.html");
    assert!(
        report.is_file(),
        "no report.html beside summary.json in {}",
        run_dir.display()
    );
    let url = format!("file://{}", report.canonicalize().unwrap().display());
    let dom = browse(chrome, &url, "--dump-dom");
    assert!(
        dom.contains("data-rendered=\"true\""),
        "the report's script did not finish:\n{}",
        &dom[..dom.len().min(2000)]
    );
    for (id, key) in [
        ("n-total", "total"),
        ("n-succeeded", "succeeded"),
        ("n-failed", "failed"),
        ("n-rows", "rows"),
        ("n-anomalies", "anomalies"),
    ] {
        assert_eq!(
            number(&text_of(&dom, id)),
            summary[key].as_i64().unwrap(),
            "#{id} shows summary.json's {key}"
        );
    }
    assert_eq!(text_of(&dom, "n-phase"), summary["phase"].as_str().unwrap());
    let rows = table_rows(&dom);
    assert_eq!(
        rows.len() as i64,
        summary["total"].as_i64().unwrap(),
        "one table row per sensor"
    );
    let mut unique = rows.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), rows.len(), "no sensor twice");
    assert!(dom.contains("id=\"heatmap-svg\""), "heat map drawn");
    assert_eq!(
        dom.matches("class=\"cell\"").count(),
        rows.len(),
        "one heat-map cell per sensor"
    );

    // Sorting: by sensor ascending, then by anomalies descending, through the page's own sort.
    let by_sensor = table_rows(&browse(
        chrome,
        &format!("{url}#sort=sensor:asc"),
        "--dump-dom",
    ));
    let mut expected = rows.clone();
    expected.sort();
    assert_eq!(by_sensor, expected, "sorted by sensor");
    let by_anomalies_dom = browse(chrome, &format!("{url}#sort=anomalies:desc"), "--dump-dom");
    assert!(
        by_anomalies_dom.contains("data-key=\"anomalies\" class=\"num sorted-desc\""),
        "the sorted column is marked"
    );
    let counts: Vec<i64> = by_anomalies_dom[by_anomalies_dom.find("<tbody>").unwrap()..]
        .split("<tr data-sensor=")
        .skip(1)
        .map(|r| {
            let cells: Vec<&str> = r.split("<td").collect();
            let cell = cells[5];
            number(&cell[cell.find('>').unwrap() + 1..cell.find('<').unwrap()])
        })
        .collect();
    assert!(
        counts.windows(2).all(|w| w[0] >= w[1]),
        "anomalies descending: {counts:?}"
    );
    Checked { dom, summary }
}

fn screenshot(chrome: &Path, run_dir: &Path, name: &str) {
    let shot = artifacts().join(name);
    let _ = std::fs::remove_file(&shot);
    let url = format!(
        "file://{}",
        run_dir
            .join("report.html")
            .canonicalize()
            .unwrap()
            .display()
    );
    browse(chrome, &url, &format!("--screenshot={}", shot.display()));
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "screenshot {} written",
        shot.display()
    );
    eprintln!("screenshot: {}", shot.display());
}

fn tools() -> Option<(PathBuf, PathBuf)> {
    let Some(chrome) = chromium() else {
        skip_or_fail("chromium is not installed (scripts/test installs the Debian package)");
        return None;
    };
    let Some(bin) = fleetscore_binary() else {
        skip_or_fail("the fleetscore binary is not built (cargo build -p fleetscore-operator)");
        return None;
    };
    Some((chrome, bin))
}

#[test]
fn the_example_fleets_report_renders_with_its_numbers_rows_and_plots() {
    let Some((chrome, bin)) = tools() else { return };
    let out = tempfile::tempdir().unwrap();
    let (run_dir, ok) = run_local(&bin, &repo().join("examples/run-local.yaml"), out.path());
    assert!(ok, "the example fleet scores");
    let Checked { dom, summary } = check_report(&chrome, &run_dir);
    assert_eq!(summary["total"], 15);
    let plots = dom.matches("class=\"plot\"").count();
    assert_eq!(
        plots, 15,
        "every one of the 15 sensors gets a plot (under the limit)"
    );
    assert!(
        dom.matches("class=\"anomaly\"").count() > 100,
        "anomalies are marked"
    );
    assert_eq!(dom.matches("class=\"series\"").count(), 15);
    assert!(dom.contains("No sensor failed."));
    screenshot(&chrome, &run_dir, "report-example-fleet.png");

    // `fleetscore report` rebuilds the same page from the ledger alone.
    let before = std::fs::read(run_dir.join("report.html")).unwrap();
    std::fs::remove_file(run_dir.join("report.html")).unwrap();
    let rebuilt = Command::new(&bin)
        .arg("report")
        .arg(&run_dir)
        .output()
        .unwrap();
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    assert!(
        String::from_utf8_lossy(&rebuilt.stdout).contains("15 sensors, 15 plots"),
        "{}",
        String::from_utf8_lossy(&rebuilt.stdout)
    );
    assert_eq!(
        std::fs::read(run_dir.join("report.html")).unwrap(),
        before,
        "the rebuild is the same page"
    );
}

#[test]
fn a_report_with_failures_lists_them_with_reasons() {
    let Some((chrome, bin)) = tools() else { return };
    let out = tempfile::tempdir().unwrap();
    let manifest = out.path().join("failing.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: fleetscore.dev/v1alpha1
kind: ScoringRun
metadata:
  name: with-failures
spec:
  sensors:
    list:
      - {device: "1", tag: "1"}
      - {device: "1", tag: "2"}
      - {device: "2", tag: "3"}
      - {device: "7", tag: "1"}
      - {device: "8", tag: "9"}
  storage:
    models: examples/reference-fleet/models
    data: examples/reference-fleet/readings.csv
    output: unused
  failurePolicy: {maxFailedSensors: 2}
"#,
    )
    .unwrap();
    let (run_dir, ok) = run_local(&bin, &manifest, &out.path().join("out"));
    assert!(!ok, "a run with failed sensors exits non-zero");
    let Checked { dom, summary } = check_report(&chrome, &run_dir);
    assert_eq!(summary["phase"], "PartiallySucceeded");
    assert_eq!(summary["failed"], 2);
    let failed = &dom[dom.find("id=\"failed\"").unwrap()..];
    let failed = &failed[..failed.find("</ul>").unwrap()];
    for sensor in ["7:1", "8:9"] {
        assert!(
            failed.contains(&format!("data-sensor=\"{sensor}\"")),
            "{sensor} listed as failed: {failed}"
        );
    }
    assert_eq!(failed.matches("<li").count(), 2, "{failed}");
    assert!(
        failed.to_lowercase().contains("model"),
        "the reason names the missing model: {failed}"
    );
    assert_eq!(
        dom.matches("class=\"plot\"").count(),
        3,
        "only the 3 scored sensors are plotted"
    );
    assert_eq!(
        dom.matches("<tr data-sensor=\"7:1\" class=\"Failed\"")
            .count(),
        1,
        "failed rows are marked"
    );
    screenshot(&chrome, &run_dir, "report-with-failures.png");
}
