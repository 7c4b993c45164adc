//! Everyday commands on a run, for people at a terminal: `report` (rebuild `report.html`),
//! `rerun --failed`, `describe` and `logs --sensor D:T`. The binary also answers as the kubectl
//! plugin `kubectl-fleetscore` (same commands, `kubectl fleetscore describe <run>`).
//!
//! Each command returns the text to print, so tests can check it without a terminal.

use std::fmt::Write as _;

use fleetscore_scorer::output::{SensorRecord, log_path};
use fleetscore_scorer::sensor::SensorId;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, LogParams, Patch, PatchParams};
use kube::{Api, Client};

use crate::crd::run::{Phase, RERUN_ANNOTATION, ScoringRun, SensorRef};
use crate::run::jobs::{self, BATCH_LABEL, RUN_LABEL};
use crate::run::naming;
use crate::run::plan::{self as queue, Layout};

/// Field manager of the commands' writes (the rerun annotation).
const CLI_MANAGER: &str = "fleetscore-cli";

/// Lines of a pod log `logs` shows by default.
pub const DEFAULT_LOG_LINES: i64 = 200;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The run does not exist.
    #[error("ScoringRun {namespace}/{name} not found")]
    NotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The request cannot be carried out as asked.
    #[error("{0}")]
    Refused(String),
    /// The report could not be rebuilt.
    #[error(transparent)]
    Report(#[from] fleetscore_scorer::report::ReportError),
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> CliError {
    let action = action.into();
    move |source| CliError::Kube { action, source }
}

async fn get_run(client: &Client, ns: &str, name: &str) -> Result<ScoringRun, CliError> {
    let runs: Api<ScoringRun> = Api::namespaced(client.clone(), ns);
    runs.get_opt(name)
        .await
        .map_err(kube_err(format!("read ScoringRun {ns}/{name}")))?
        .ok_or_else(|| CliError::NotFound {
            namespace: ns.into(),
            name: name.into(),
        })
}

/// `fleetscore report <output>/<run>`: rebuilds the run's `report.html` from its ledger.
pub async fn report(run_dir_url: &str) -> Result<String, CliError> {
    let info = fleetscore_scorer::report::rebuild(run_dir_url).await?;
    Ok(format!(
        "wrote {} ({} sensors, {} plots, {} KiB)\n",
        info.url,
        info.sensors,
        info.plots,
        info.bytes.div_ceil(1024)
    ))
}

/// `fleetscore rerun <run> --failed`: sets the rerun annotation on a finished run with failures;
/// the operator then creates `<run>-rerun-<hash>` over the failed sensors.
pub async fn rerun_failed(client: &Client, ns: &str, name: &str) -> Result<String, CliError> {
    let run = get_run(client, ns, name).await?;
    let status = run.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_default();
    if !phase.is_finished() {
        return Err(CliError::Refused(format!(
            "ScoringRun {ns}/{name} is {}: only a finished run can be rerun",
            phase.as_str()
        )));
    }
    if status.failed == 0 {
        return Err(CliError::Refused(format!(
            "ScoringRun {ns}/{name} has no failed sensors to rerun"
        )));
    }
    // A new value each time: the operator handles each value once.
    let value = Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {RERUN_ANNOTATION: value}}});
    let runs: Api<ScoringRun> = Api::namespaced(client.clone(), ns);
    runs.patch(
        name,
        &PatchParams {
            field_manager: Some(CLI_MANAGER.into()),
            ..Default::default()
        },
        &Patch::Merge(&patch),
    )
    .await
    .map_err(kube_err(format!("annotate ScoringRun {ns}/{name}")))?;
    let new_run = crate::run::naming::rerun_name(name, &value);
    Ok(format!(
        "requested a rerun of the {} failed sensors of {ns}/{name} ({RERUN_ANNOTATION}={value}); the operator creates ScoringRun {new_run}\n",
        status.failed
    ))
}

/// `fleetscore describe <run>`: status, failed sensors with reasons, where outputs and report are.
pub async fn describe(client: &Client, ns: &str, name: &str) -> Result<String, CliError> {
    let run = get_run(client, ns, name).await?;
    Ok(describe_text(&run, ns))
}

/// The text of `describe` for a run already read.
pub fn describe_text(run: &ScoringRun, ns: &str) -> String {
    let name = run.metadata.name.clone().unwrap_or_default();
    let st = run.status.clone().unwrap_or_default();
    let ledger = st.ledger.clone().unwrap_or_else(|| jobs::ledger_url(run));
    let mut s = String::new();
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(s, "{:<16}{v}", format!("{k}:"));
    };
    line("Name", &name);
    line("Namespace", ns);
    line("Phase", st.phase.unwrap_or(Phase::Pending).as_str());
    if let Some(m) = &st.message {
        line("Message", m);
    }
    if let Some(sched) = &run.spec.schedule {
        line("Schedule", sched);
    }
    if let Some(earlier) = &run.spec.rerun_of {
        line("Rerun of", earlier);
    }
    line(
        "Sensors",
        &format!(
            "{} total, {} succeeded, {} failed, {} active, {} queued",
            st.total, st.succeeded, st.failed, st.active, st.queued
        ),
    );
    if let Some(t) = &st.start_time {
        line("Started", &t.0.to_string());
    }
    if let Some(t) = &st.completion_time {
        line("Completed", &t.0.to_string());
    }
    if let Some(d) = &st.duration {
        line("Duration", d);
    }
    line("Outputs", &ledger);
    line("Predictions", &jobs::join_url(&ledger, "preds/"));
    line("Records", &jobs::join_url(&ledger, "logs/"));
    line(
        "Summary",
        &jobs::join_url(&ledger, fleetscore_scorer::report::SUMMARY_FILE),
    );
    line(
        "Report",
        &jobs::join_url(&ledger, fleetscore_scorer::report::REPORT_FILE),
    );
    if let Some(scaler) = &st.scaler {
        let get = |k: &str| {
            scaler
                .get(k)
                .map(|v| v.to_string().trim_matches('"').to_string())
        };
        let mut parts = Vec::new();
        for (k, label) in [
            ("nodesAtStart", "nodes at start"),
            ("nodesPeak", "peak"),
            ("nodeMinutes", "node-minutes"),
            ("timeToFirstPodRunningSeconds", "first pod after (s)"),
            ("idleTailSeconds", "idle tail (s)"),
        ] {
            if let Some(v) = get(k) {
                parts.push(format!("{label} {v}"));
            }
        }
        if !parts.is_empty() {
            line("Node pool", &parts.join(", "));
        }
    }
    if st.failed_sensors.is_empty() {
        if st.failed > 0 {
            let _ = writeln!(
                s,
                "Failed sensors: {} (see the records under {}/logs/)",
                st.failed, ledger
            );
        }
    } else {
        let _ = writeln!(s, "Failed sensors ({}):", st.failed);
        for f in &st.failed_sensors {
            let _ = writeln!(s, "  {:<14}{:<16}{}", f.sensor, f.reason, f.message);
        }
        let more = st.failed - i64::try_from(st.failed_sensors.len()).unwrap_or(0);
        if more > 0 {
            let _ = writeln!(s, "  … and {more} more in the records under {ledger}/logs/");
        }
    }
    if st.phase.is_some_and(Phase::is_finished) && st.failed > 0 {
        let _ = writeln!(
            s,
            "Rerun the failed sensors: fleetscore rerun {name} --failed -n {ns}"
        );
    }
    s
}

/// `fleetscore logs <run> --sensor D:T`: the sensor's ledger record and its pod's log.
pub async fn logs(
    client: &Client,
    ns: &str,
    name: &str,
    sensor: &SensorId,
    lines: i64,
) -> Result<String, CliError> {
    let run = get_run(client, ns, name).await?;
    let mut s = String::new();
    let record_rel = log_path(name, sensor);
    let record_url = jobs::join_url(&run.spec.storage.output, &record_rel);
    let _ = writeln!(s, "== ledger record {record_url}");
    match read_record(&run.spec.storage.output, &record_rel).await {
        Ok(record) => {
            let _ = writeln!(
                s,
                "{}",
                serde_json::to_string_pretty(&record).unwrap_or_default()
            );
        }
        Err(why) => {
            let _ = writeln!(s, "(none: {why})");
        }
    }
    let pod_log = pod_log(client, ns, &run, sensor, lines).await;
    match pod_log {
        Ok((pod, text)) => {
            let _ = writeln!(s, "== pod {ns}/{pod} log");
            s.push_str(&text);
            if !text.ends_with('\n') && !text.is_empty() {
                s.push('\n');
            }
        }
        Err(why) => {
            let _ = writeln!(s, "== pod log\n(unavailable: {why})");
        }
    }
    Ok(s)
}

async fn read_record(output: &str, rel: &str) -> Result<SensorRecord, String> {
    let out = fleetscore_scorer::storage::open(output).map_err(|e| e.to_string())?;
    let bytes = out.child(rel).get().await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("not a sensor record: {e}"))
}

/// The sensors of a run in queue order: from the spec, or the run's sensor-list ConfigMap.
async fn run_sensors(
    client: &Client,
    ns: &str,
    run: &ScoringRun,
) -> Result<Vec<SensorRef>, String> {
    if let Some(sel) = &run.spec.sensors
        && let Some(list) = queue::resolve_static(sel)
    {
        return list.map_err(|e| e.to_string());
    }
    let cm_name = run
        .status
        .as_ref()
        .and_then(|s| s.sensor_list.clone())
        .unwrap_or_else(|| naming::sensor_list_name(run));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = cms
        .get_opt(&cm_name)
        .await
        .map_err(|e| format!("reading sensor list {cm_name}: {e}"))?
        .ok_or_else(|| format!("sensor list ConfigMap {cm_name} is gone"))?;
    let data = cm.data.unwrap_or_default();
    // Lists beyond a ConfigMap's size live in the run's storage; the ConfigMap names where.
    let text = match data.get("location") {
        Some(url) => {
            let (base, file) = url
                .rsplit_once('/')
                .ok_or_else(|| format!("sensor list location {url}"))?;
            let store =
                fleetscore_scorer::storage::open(base).map_err(|e| format!("{url}: {e}"))?;
            let bytes = store
                .child(file)
                .get()
                .await
                .map_err(|e| format!("reading {url}: {e}"))?;
            String::from_utf8_lossy(&bytes).into_owned()
        }
        None => data.get("sensors").cloned().unwrap_or_default(),
    };
    Ok(text
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(d, t)| SensorRef {
            device: d.into(),
            tag: t.into(),
        })
        .collect())
}

/// The newest pod of the Job that scored `sensor`, and the end of its log.
async fn pod_log(
    client: &Client,
    ns: &str,
    run: &ScoringRun,
    sensor: &SensorId,
    lines: i64,
) -> Result<(String, String), String> {
    let name = run.metadata.name.clone().unwrap_or_default();
    let sensors = run_sensors(client, ns, run).await?;
    let index = sensors
        .iter()
        .position(|s| s.device == sensor.device && s.tag == sensor.tag)
        .ok_or_else(|| format!("sensor {sensor} is not one of run {name}'s sensors"))?;
    let layout = Layout::new(sensors.len(), run.spec.sensors_per_job);
    let batch = i64::try_from(index).unwrap_or(0) / layout.per_job;
    let job = naming::batch_job_name(run, batch);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!(
        "{RUN_LABEL}={},{BATCH_LABEL}={batch}",
        naming::run_label_value(&name)
    ));
    let mut found = pods
        .list(&lp)
        .await
        .map_err(|e| format!("listing pods of Job {job}: {e}"))?
        .items;
    found.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let pod = found.pop().ok_or_else(|| {
        format!("Job {job} has no pods left (finished Jobs go after finishedJobTtlSeconds); the record above is what stays")
    })?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let lp = LogParams {
        tail_lines: Some(lines),
        ..LogParams::default()
    };
    let text = pods
        .logs(&pod_name, &lp)
        .await
        .map_err(|e| format!("pod {pod_name}: {e}"))?;
    Ok((pod_name, text))
}

/// True when the binary was started under the kubectl plugin name (`kubectl-fleetscore`).
pub fn invoked_as_kubectl_plugin(argv0: &str) -> bool {
    std::path::Path::new(argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.trim_end_matches(".exe") == "kubectl-fleetscore")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::run::{FailedSensor, ScoringRunStatus};

    fn run() -> ScoringRun {
        let yaml = r#"
apiVersion: fleetscore.dev/v1alpha1
kind: ScoringRun
metadata: {name: nightly, namespace: ops}
spec:
  sensors: {devices: ["1", "2"], tags: ["4"]}
  storage: {models: az://models/f, data: az://data/f.csv, output: az://predictions/f}
"#;
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn describe_names_the_status_failures_and_where_the_report_is() {
        let mut r = run();
        r.status = Some(ScoringRunStatus {
            phase: Some(Phase::PartiallySucceeded),
            total: 2,
            succeeded: 1,
            failed: 1,
            failed_sensors: vec![FailedSensor {
                sensor: "2:4".into(),
                reason: "ScorerFailed".into(),
                message: "no model".into(),
            }],
            ..Default::default()
        });
        let text = describe_text(&r, "ops");
        assert!(
            text.contains("Phase:          PartiallySucceeded"),
            "{text}"
        );
        assert!(text.contains("2 total, 1 succeeded, 1 failed"), "{text}");
        assert!(
            text.contains("Report:         az://predictions/f/nightly/report.html"),
            "{text}"
        );
        assert!(
            text.contains("2:4           ScorerFailed    no model"),
            "{text}"
        );
        assert!(
            text.contains("fleetscore rerun nightly --failed -n ops"),
            "{text}"
        );
    }

    #[test]
    fn the_plugin_name_is_recognised_with_or_without_a_path() {
        assert!(invoked_as_kubectl_plugin(
            "/usr/local/bin/kubectl-fleetscore"
        ));
        assert!(invoked_as_kubectl_plugin("kubectl-fleetscore"));
        assert!(!invoked_as_kubectl_plugin("/usr/local/bin/fleetscore"));
    }
}
