//! ScoringRun on the real control plane: the run controller runs in-process (one per test
//! namespace; aborting its task "kills" the operator), plus one test with the real `fleetscore`
//! binary. Pods labelled `fleetscore.dev/exec=local` are run for real by the testenv pod executor
//! (the scorer binary on this machine); other pods are simulated by kwok's stages.
//!
//! Run: `testenv/with-env -- cargo test -p fleetscore-testenv --test operator_run`
//! (needs `cargo build -p fleetscore-scorer -p fleetscore-operator --bins` first).

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleetscore_operator::crd::run::{Phase, RERUN_ANNOTATION, ScoringRun};
use fleetscore_operator::run::context::{Context, RunConfig};
use fleetscore_operator::run::controller as run_controller;
use fleetscore_operator::run::metrics::RunMetrics;
use fleetscore_testenv::podexec::{EXEC_LABEL, EXEC_LOCAL};
use fleetscore_testenv::{
    ExecConfig, PodExecutor, TestEnv, free_port, http_get, install_crds, wait_for,
};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

/// Longest any test waits for a run to finish.
const TIMEOUT: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn reference_fleet() -> PathBuf {
    repo_root()
        .join("examples/reference-fleet")
        .canonicalize()
        .unwrap()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .filter(|t| !t.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// The run controller running in this process for one namespace.
struct Operator {
    handle: JoinHandle<()>,
    metrics: Arc<RunMetrics>,
}

impl Operator {
    fn start(client: &Client, ns: &str) -> Self {
        let metrics = Arc::new(RunMetrics::default());
        let config = RunConfig {
            namespace: Some(ns.to_string()),
            resync: Duration::from_secs(5),
            ..RunConfig::default()
        };
        let ctx = Arc::new(Context::new(client.clone(), metrics.clone(), config));
        Self {
            handle: tokio::spawn(run_controller::run(ctx)),
            metrics,
        }
    }

    /// Kills the operator (no graceful shutdown).
    async fn kill(self) {
        self.handle.abort();
        let _ = self.handle.await;
    }
}

/// A ScoringRun with `spec` as given.
fn run(name: &str, spec: serde_json::Value) -> ScoringRun {
    serde_json::from_value(json!({
        "apiVersion": "fleetscore.dev/v1alpha1",
        "kind": "ScoringRun",
        "metadata": { "name": name },
        "spec": spec,
    }))
    .unwrap()
}

/// Waits until the run has finished and returns it.
async fn finished(api: &Api<ScoringRun>, name: &str) -> ScoringRun {
    wait_for(
        api,
        name,
        "finish",
        |r: &ScoringRun| {
            r.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(Phase::is_finished)
        },
        TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("run {name}: {e}"))
}

/// Records every Job seen in a namespace: uids per name, and the most unfinished at once.
#[derive(Default, Debug)]
struct JobLog {
    uids: BTreeMap<String, BTreeSet<String>>,
    unfinished: BTreeSet<String>,
    max_unfinished: usize,
}

fn watch_jobs(client: &Client, ns: &str) -> (Arc<Mutex<JobLog>>, JoinHandle<()>) {
    let log = Arc::new(Mutex::new(JobLog::default()));
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let cfg = watcher::Config::default().labels("fleetscore.dev/role=score");
    let sink = log.clone();
    let handle = tokio::spawn(async move {
        let mut stream = watcher(api, cfg).boxed();
        while let Some(Ok(event)) = stream.next().await {
            let mut log = sink.lock().unwrap();
            match event {
                watcher::Event::Apply(job) | watcher::Event::InitApply(job) => {
                    let name = job.name_any();
                    log.uids
                        .entry(name.clone())
                        .or_default()
                        .insert(job.uid().unwrap_or_default());
                    let done = fleetscore_operator::run::jobs::job_outcome(&job).is_some();
                    if done {
                        log.unfinished.remove(&name);
                    } else {
                        log.unfinished.insert(name);
                    }
                    log.max_unfinished = log.max_unfinished.max(log.unfinished.len());
                }
                watcher::Event::Delete(job) => {
                    log.unfinished.remove(&job.name_any());
                }
                _ => {}
            }
        }
    });
    (log, handle)
}

/// A spec for kwok-simulated pods (each "runs" for `run_for`) over `n` sensors.
fn simulated_spec(n: usize, parallelism: i32, run_for: &str) -> serde_json::Value {
    let list: Vec<_> = (0..n)
        .map(|i| json!({ "device": format!("{}", i / 5 + 1), "tag": format!("{}", i % 5 + 1) }))
        .collect();
    json!({
        "sensors": { "list": list },
        "storage": { "models": "/nonexistent/models", "data": "/nonexistent/parts", "output": "/nonexistent/out" },
        "parallelism": parallelism,
        "backoffLimit": 0,
        "podAnnotations": { "kwok.fleetscore.dev/run-for": run_for },
    })
}

fn scorer_available() -> bool {
    let bin = fleetscore_testenv::podexec::default_scorer_bin();
    if bin.exists() {
        return true;
    }
    fleetscore_testenv::skip::skip_or_fail(format!(
        "scorer binary {} missing (cargo build -p fleetscore-scorer)",
        bin.display()
    ));
    false
}

#[tokio::test]
async fn a_15_sensor_run_partitions_once_and_completes_with_correct_counts_and_predictions() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    if !scorer_available() {
        return;
    }
    install_crds(&env.client).await;
    env.with_temp_ns(|client, ns| async move {
        let out = tempfile::tempdir().unwrap();
        let fleet = reference_fleet();
        let exec = PodExecutor::start(client.clone(), &ns, ExecConfig::from_env());
        let op = Operator::start(&client, &ns);
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        let spec = json!({
            "sensors": { "devices": ["1", "2", "3"], "tags": ["1", "2", "3", "4", "5"] },
            "storage": {
                "models": fleet.join("models"),
                "data": fleet.join("readings.csv"),
                "output": out.path(),
            },
            "parallelism": 4,
            "podLabels": { EXEC_LABEL: EXEC_LOCAL },
        });
        runs.create(&PostParams::default(), &run("fleet", spec)).await.unwrap();
        let done = finished(&runs, "fleet").await;
        let st = done.status.unwrap();
        assert_eq!(st.phase, Some(Phase::Succeeded), "{:?}", st.message);
        assert_eq!((st.total, st.succeeded, st.failed, st.active, st.queued), (15, 15, 0, 0, 0));
        assert!(st.conditions.iter().any(|c| c.type_ == "Prepared" && c.status == "True"));
        // The partitions (a full copy of the readings) go once the run finished and its summary is written.
        let leftover = fleetscore_testenv::eventually("the partitions are deleted", TIMEOUT, || async {
            let files = walk_files(&out.path().join("fleet/partitions"));
            files.is_empty().then_some(files)
        })
        .await;
        assert!(leftover.is_empty());
        assert!(st.completion_time.is_some() && st.duration.is_some());

        // The predictions equal a local run's of the same fleet.
        let local_out = tempfile::tempdir().unwrap();
        let local_run: ScoringRun = serde_json::from_value(json!({
            "apiVersion": "fleetscore.dev/v1alpha1", "kind": "ScoringRun",
            "metadata": { "name": "fleet" },
            "spec": {
                "sensors": { "devices": ["1", "2", "3"], "tags": ["1", "2", "3", "4", "5"] },
                "storage": { "models": fleet.join("models"), "data": fleet.join("readings.csv"), "output": local_out.path() },
            },
        }))
        .unwrap();
        let opts = fleetscore_operator::run::local::LocalOptions { threads: Some(2), output: None };
        fleetscore_operator::run::local::run_local(&local_run, &opts, |_| {}).await.unwrap();
        for d in 1..=3 {
            for t in 1..=5 {
                let rel = format!("fleet/preds/preds_{d}_{t}.csv");
                let cluster = std::fs::read_to_string(out.path().join(&rel)).unwrap();
                let local = std::fs::read_to_string(local_out.path().join(&rel)).unwrap();
                assert_eq!(cluster.lines().count(), 1441, "{rel}");
                assert_eq!(cluster, local, "{rel} differs from the local run");
            }
        }
        let summary = out.path().join("fleet/summary.json");
        fleetscore_testenv::eventually("the operator writes the ledger summary", TIMEOUT, || async { summary.exists().then_some(()) }).await;
        let report = out.path().join("fleet/report.html");
        fleetscore_testenv::eventually("the operator writes report.html beside summary.json", TIMEOUT, || async {
            report.exists().then_some(())
        })
        .await;
        // Finished Jobs were handed to the TTL controller once recorded.
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let left = jobs.list(&Default::default()).await.unwrap().items;
        assert!(
            left.iter().all(|j| j.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished).is_some()),
            "every finished Job has a TTL"
        );
        op.kill().await;
        exec.stop();
    })
    .await;
}

/// Every file below `dir` (none when it does not exist).
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            if e.path().is_dir() {
                walk_files(&e.path())
            } else {
                vec![e.path()]
            }
        })
        .collect()
}

/// Copies the reference fleet's models of device 1, tags `tags`, into `dir`.
fn copy_device1_models(dir: &Path, tags: std::ops::RangeInclusive<u32>) {
    for t in tags {
        let name = format!("model_1_{t}.pkl");
        std::fs::copy(
            reference_fleet().join("models").join(&name),
            dir.join(&name),
        )
        .unwrap();
    }
}

/// A run of device 1's five sensors on the reference readings, scored by the real scorer;
/// `extra` adds or overrides spec fields.
fn device1_spec(models: &Path, out: &Path, extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "sensors": { "devices": ["1"], "tags": ["1", "2", "3", "4", "5"] },
        "storage": {
            "models": models,
            "data": reference_fleet().join("readings.csv"),
            "output": out,
            "partition": "Never",
        },
        "backoffLimit": 0,
        "podLabels": { EXEC_LABEL: EXEC_LOCAL },
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    spec
}

/// Asks finished run `name` to rerun its failed sensors and returns the rerun once it finished.
async fn rerun_failed(runs: &Api<ScoringRun>, name: &str) -> ScoringRun {
    let annotate = json!({ "metadata": { "annotations": { RERUN_ANNOTATION: "1" } } });
    runs.patch(name, &PatchParams::default(), &Patch::Merge(&annotate))
        .await
        .unwrap();
    let rerun = finished(
        runs,
        &fleetscore_operator::run::naming::rerun_name(name, "1"),
    )
    .await;
    assert_eq!(rerun.spec.rerun_of.as_deref(), Some(name));
    rerun
}

#[tokio::test]
async fn failing_sensors_are_counted_with_reasons_the_policy_decides_and_rerun_failed_works() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    if !scorer_available() {
        return;
    }
    install_crds(&env.client).await;
    env.with_temp_ns(|client, ns| async move {
        // Models for tags 1-3 only: sensors 1:4 and 1:5 fail until their models appear.
        let models = tempfile::tempdir().unwrap();
        copy_device1_models(models.path(), 1..=3);
        let out = tempfile::tempdir().unwrap();
        let exec = PodExecutor::start(client.clone(), &ns, ExecConfig::from_env());
        let op = Operator::start(&client, &ns);
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        let spec = |tolerate: i64| {
            let policy =
                json!({ "parallelism": 5, "failurePolicy": { "maxFailedSensors": tolerate } });
            device1_spec(models.path(), out.path(), policy)
        };
        runs.create(&PostParams::default(), &run("tolerant", spec(2)))
            .await
            .unwrap();
        runs.create(&PostParams::default(), &run("strict", spec(1)))
            .await
            .unwrap();
        let tolerant = finished(&runs, "tolerant").await.status.unwrap();
        assert_eq!(
            tolerant.phase,
            Some(Phase::PartiallySucceeded),
            "{:?}",
            tolerant.message
        );
        assert_eq!((tolerant.succeeded, tolerant.failed), (3, 2));
        let failed: BTreeSet<_> = tolerant
            .failed_sensors
            .iter()
            .map(|f| f.sensor.clone())
            .collect();
        assert_eq!(
            failed,
            BTreeSet::from(["1:4".to_string(), "1:5".to_string()])
        );
        // A missing model is the scorer's exit code 3: the podFailurePolicy fails the Job at once
        // (no retries burnt), and the reason says so.
        assert!(
            tolerant
                .failed_sensors
                .iter()
                .all(|f| f.reason == "PodFailurePolicy" && f.message.contains("exit code 3")),
            "{:?}",
            tolerant.failed_sensors
        );
        let strict = finished(&runs, "strict").await.status.unwrap();
        assert_eq!(strict.phase, Some(Phase::Failed));
        assert_eq!((strict.succeeded, strict.failed), (3, 2));

        // The models arrive; rerunning the failed sensors succeeds.
        copy_device1_models(models.path(), 4..=5);
        let rerun = rerun_failed(&runs, "tolerant").await;
        let rerun_name = rerun.name_any();
        let st = rerun.status.unwrap();
        assert_eq!(
            (st.phase, st.total, st.succeeded),
            (Some(Phase::Succeeded), 2, 2)
        );
        assert!(
            out.path()
                .join(format!("{rerun_name}/preds/preds_1_4.csv"))
                .exists()
        );
        op.kill().await;
        exec.stop();
    })
    .await;
}

#[tokio::test]
async fn a_packed_job_names_its_failed_sensors_and_rerun_repeats_only_those() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    if !scorer_available() {
        return;
    }
    install_crds(&env.client).await;
    env.with_temp_ns(|client, ns| async move {
        // One Job scores all five sensors; the models of tags 4 and 5 are missing at first.
        let models = tempfile::tempdir().unwrap();
        copy_device1_models(models.path(), 1..=3);
        let out = tempfile::tempdir().unwrap();
        let exec = PodExecutor::start(client.clone(), &ns, ExecConfig::from_env());
        let op = Operator::start(&client, &ns);
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        let policy = json!({ "sensorsPerJob": 5, "failurePolicy": { "maxFailedSensors": 2 } });
        let spec = device1_spec(models.path(), out.path(), policy);
        runs.create(&PostParams::default(), &run("packed", spec))
            .await
            .unwrap();
        let st = finished(&runs, "packed").await.status.unwrap();
        // The Job failed as a whole; the scorer's log records name the two sensors that failed.
        assert_eq!(
            st.phase,
            Some(Phase::PartiallySucceeded),
            "{:?}",
            st.message
        );
        assert_eq!((st.total, st.succeeded, st.failed), (5, 3, 2));
        let failed: BTreeSet<_> = st
            .failed_sensors
            .iter()
            .map(|f| (f.sensor.as_str(), f.reason.as_str()))
            .collect();
        assert_eq!(
            failed,
            BTreeSet::from([("1:4", "ScorerFailed"), ("1:5", "ScorerFailed")])
        );

        copy_device1_models(models.path(), 4..=5);
        let rerun = rerun_failed(&runs, "packed").await;
        let rerun_name = rerun.name_any();
        let st = rerun.status.unwrap();
        assert_eq!(
            (st.phase, st.total, st.succeeded),
            (Some(Phase::Succeeded), 2, 2)
        );
        let preds = out.path().join(&rerun_name).join("preds");
        let mut written: Vec<_> = std::fs::read_dir(&preds)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        written.sort();
        assert_eq!(written, ["preds_1_4.csv", "preds_1_5.csv"]);
        op.kill().await;
        exec.stop();
    })
    .await;
}

#[tokio::test]
async fn parallelism_is_never_exceeded_and_jobs_are_removed_once_recorded() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    install_crds(&env.client).await;
    env.with_temp_ns(|client, ns| async move {
        let (log, watch) = watch_jobs(&client, &ns);
        let op = Operator::start(&client, &ns);
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        runs.create(
            &PostParams::default(),
            &run("wide", simulated_spec(12, 3, "2s")),
        )
        .await
        .unwrap();
        let st = finished(&runs, "wide").await.status.unwrap();
        assert_eq!((st.phase, st.succeeded), (Some(Phase::Succeeded), 12));
        let log = std::mem::take(&mut *log.lock().unwrap());
        assert_eq!(log.uids.len(), 12, "one Job per sensor");
        assert!(
            log.max_unfinished <= 3,
            "{} Jobs ran at once with parallelism 3",
            log.max_unfinished
        );
        assert!(
            log.max_unfinished >= 2,
            "the queue did run Jobs in parallel"
        );
        // Writes: one create per Job, a marker per Job, and status patches.
        let writes = op.metrics.total_writes();
        eprintln!("API writes: {writes} for 12 sensors");
        watch.abort();
        op.kill().await;
    })
    .await;
}

#[tokio::test]
async fn an_operator_killed_mid_run_creates_no_duplicate_job_after_restart_and_finishes() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    install_crds(&env.client).await;
    env.with_temp_ns(|client, ns| async move {
        let (log, watch) = watch_jobs(&client, &ns);
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        let op = Operator::start(&client, &ns);
        runs.create(
            &PostParams::default(),
            &run("restart", simulated_spec(10, 4, "3s")),
        )
        .await
        .unwrap();
        wait_for(
            &runs,
            "restart",
            "start Jobs",
            |r: &ScoringRun| r.status.as_ref().is_some_and(|s| s.active > 0),
            TIMEOUT,
        )
        .await
        .unwrap();
        op.kill().await;
        // Jobs finish while nobody watches.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let op = Operator::start(&client, &ns);
        let st = finished(&runs, "restart").await.status.unwrap();
        assert_eq!(
            (st.phase, st.total, st.succeeded, st.failed),
            (Some(Phase::Succeeded), 10, 10, 0)
        );
        let log = std::mem::take(&mut *log.lock().unwrap());
        assert_eq!(log.uids.len(), 10);
        let twice: Vec<_> = log.uids.iter().filter(|(_, u)| u.len() > 1).collect();
        assert!(twice.is_empty(), "Jobs created twice: {twice:?}");
        watch.abort();
        op.kill().await;
    })
    .await;
}

#[tokio::test]
async fn sensors_whose_pods_fail_are_named_with_the_job_reason() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    install_crds(&env.client).await;
    env.with_temp_ns(|client, ns| async move {
        let op = Operator::start(&client, &ns);
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        let mut spec = simulated_spec(3, 3, "1s");
        spec["podLabels"] = json!({ "kwok.fleetscore.dev/fail": "true" });
        spec["failurePolicy"] = json!({ "maxFailedPercent": 50 });
        runs.create(&PostParams::default(), &run("doomed", spec))
            .await
            .unwrap();
        let st = finished(&runs, "doomed").await.status.unwrap();
        assert_eq!((st.phase, st.failed), (Some(Phase::Failed), 3));
        assert_eq!(st.failed_sensors.len(), 3);
        assert_eq!(st.failed_sensors[0].reason, "BackoffLimitExceeded");
        assert!(st.failed_batches == "0-2", "{}", st.failed_batches);
        op.kill().await;
    })
    .await;
}

/// Runs kubectl with the environment's kubeconfig; returns (success, stdout + stderr).
fn kubectl(env: &TestEnv, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = env.kubectl();
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn invalid_manifests_are_refused_by_the_api_server_with_a_readable_message() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    install_crds(&env.client).await;
    let env = Arc::new(env);
    let e2 = env.clone();
    env.with_temp_ns(|_client, ns| async move {
        let manifest = |name: &str, spec: &str| {
            format!(
                "apiVersion: fleetscore.dev/v1alpha1\nkind: ScoringRun\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
            )
        };
        let storage = "  storage: {models: /m, data: /d, output: /o}\n";
        let cases = [
            ("both", format!("  sensors: {{list: [{{device: '1', tag: '4'}}], devices: ['1'], tags: ['4']}}\n{storage}"), "set exactly one of list, devices+tags, or allModels"),
            ("none", storage.to_string(), "sensors is required"),
            ("half", format!("  sensors: {{devices: ['1']}}\n{storage}"), "devices and tags go together"),
            ("zero", format!("  sensors: {{devices: ['1'], tags: ['4']}}\n  parallelism: 0\n{storage}"), "parallelism"),
            ("slash", format!("  sensors: {{list: [{{device: 'a/b', tag: '4'}}]}}\n{storage}"), "device"),
            ("creds", format!("  sensors: {{devices: ['1'], tags: ['4']}}\n  credentials: {{secretName: s, workloadIdentityServiceAccount: w}}\n{storage}"), "either secretName or workloadIdentityServiceAccount"),
            ("empty", "  sensors: {devices: ['1'], tags: ['4']}\n  storage: {models: '', data: /d, output: /o}\n".to_string(), "storage.models must not be empty"),
        ];
        for (name, spec, expected) in cases {
            let (ok, out) = kubectl(&e2, &["apply", "-f", "-"], Some(&manifest(name, &spec)));
            assert!(!ok, "{name}: the API server accepted an invalid run: {out}");
            assert!(out.contains(expected), "{name}: message {out:?} lacks {expected:?}");
        }
        let (ok, out) = kubectl(&e2, &["apply", "-f", "-"], Some(&manifest("good", &format!("  sensors: {{devices: ['1'], tags: ['4']}}\n{storage}"))));
        assert!(ok, "a valid run is accepted: {out}");
    })
    .await;
}

#[tokio::test]
async fn kubectl_get_scoringruns_shows_phase_counts_duration_and_age() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    install_crds(&env.client).await;
    let env = Arc::new(env);
    let e2 = env.clone();
    env.with_temp_ns(|client, ns| async move {
        let op = Operator::start(&client, &ns);
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        runs.create(
            &PostParams::default(),
            &run("shown", simulated_spec(2, 2, "1s")),
        )
        .await
        .unwrap();
        finished(&runs, "shown").await;
        let (ok, out) = kubectl(&e2, &["get", "sr", "-n", &ns], None);
        assert!(ok, "{out}");
        let header: Vec<&str> = out
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            [
                "NAME",
                "PHASE",
                "SENSORS",
                "SUCCEEDED",
                "FAILED",
                "ACTIVE",
                "DURATION",
                "SCHEDULE",
                "AGE"
            ]
        );
        let row: Vec<&str> = out
            .lines()
            .nth(1)
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            &row[..6],
            ["shown", "Succeeded", "2", "2", "0", "0"],
            "{out}"
        );
        op.kill().await;
    })
    .await;
}

#[tokio::test]
async fn the_operator_binary_completes_a_run_and_serves_health_and_metrics() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    let bin = std::env::var_os("FLEETSCORE_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug/fleetscore"));
    if !bin.exists() {
        fleetscore_testenv::skip::skip_or_fail(format!(
            "{} missing (cargo build -p fleetscore-operator)",
            bin.display()
        ));
        return;
    }
    install_crds(&env.client).await;
    let kubeconfig = env.kubeconfig();
    env.with_temp_ns(|client, ns| async move {
        let port = free_port();
        let mut child = tokio::process::Command::new(&bin)
            .args([
                "operator",
                "--namespace",
                &ns,
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
                "--log-format",
                "text",
                "--no-schedules",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("FLEETSCORE_SCALER_MODE", "none")
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        runs.create(
            &PostParams::default(),
            &run("binary", simulated_spec(4, 2, "1s")),
        )
        .await
        .unwrap();
        let st = finished(&runs, "binary").await.status.unwrap();
        assert_eq!((st.phase, st.succeeded), (Some(Phase::Succeeded), 4));
        let health = http_get(port, "/healthz").unwrap_or_default();
        assert!(
            health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
            "{health}"
        );
        // The finish is counted right after the status write that the test saw.
        let mut metrics = String::new();
        for _ in 0..50 {
            metrics = http_get(port, "/metrics").unwrap_or_default();
            if metrics.contains("fleetscore_run_runs_finished_total{outcome=\"Succeeded\"} 1") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            metrics.contains("fleetscore_run_runs_finished_total{outcome=\"Succeeded\"} 1"),
            "{metrics}"
        );
        // Every controller's metrics are served, also those of disabled parts.
        for family in [
            "fleetscore_run_api_writes_total",
            "fleetscore_schedule_reconciles_total",
            "fleetscore_scaler_desired_nodes",
        ] {
            assert!(metrics.contains(family), "{family} missing: {metrics}");
        }
        let _ = child.kill().await;
    })
    .await;
}

/// The run's condition `type_`, if set.
fn condition(
    run: &ScoringRun,
    type_: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    run.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

#[tokio::test]
async fn a_spec_edit_that_would_reshuffle_the_work_is_refused_and_a_parallelism_edit_is_not() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    install_crds(&env.client).await;
    env.with_temp_ns(|client, ns| async move {
        let op = Operator::start(&client, &ns);
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        runs.create(&PostParams::default(), &run("edited", simulated_spec(5, 2, "3s")))
            .await
            .unwrap();
        // Hole 1 of issue 10: adding a sensor mid-run remapped batches to other sensors.
        let add = json!({ "spec": { "sensors": { "list": [
            { "device": "1", "tag": "1" }, { "device": "1", "tag": "2" }, { "device": "1", "tag": "3" },
            { "device": "1", "tag": "4" }, { "device": "1", "tag": "5" }, { "device": "1", "tag": "6" } ] } } });
        let err = runs
            .patch("edited", &PatchParams::default(), &Patch::Merge(&add))
            .await
            .expect_err("the API server refuses a new sensor list");
        assert!(err.to_string().contains("spec.sensors is immutable"), "{err}");
        for (field, value) in [("storage", json!({ "models": "/x", "data": "/y", "output": "/z" })), ("sensorsPerJob", json!(2))] {
            let err = runs
                .patch("edited", &PatchParams::default(), &Patch::Merge(&json!({ "spec": { field: value } })))
                .await
                .expect_err(field);
            assert!(err.to_string().contains(&format!("spec.{field} is immutable")), "{field}: {err}");
        }
        runs.patch("edited", &PatchParams::default(), &Patch::Merge(&json!({ "spec": { "parallelism": 5 } })))
            .await
            .expect("parallelism may change mid-run");
        let st = finished(&runs, "edited").await.status.unwrap();
        assert_eq!((st.total, st.succeeded, st.failed), (5, 5, 0));
        op.kill().await;
    })
    .await;
}

#[tokio::test]
async fn jobs_the_api_server_refuses_fail_the_run_with_its_message_and_kubectl_wait_ready_returns()
{
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    install_crds(&env.client).await;
    let env = Arc::new(env);
    let e2 = env.clone();
    env.with_temp_ns(|client, ns| async move {
        let op = Operator::start(&client, &ns);
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        // Hole 2: a 422 on Job create (a device that is no label value) was only logged, and
        // the run stayed Running for ever.
        let mut spec = simulated_spec(1, 2, "1s");
        spec["sensors"] = json!({ "devices": ["a/b"], "tags": ["4", "5"] });
        runs.create(&PostParams::default(), &run("refused", spec))
            .await
            .unwrap();
        // Hole 9: `kubectl wait --for=condition=Ready` is what the README promises.
        // kubectl blocks: off the test's runtime thread, so the in-process operator keeps running.
        let (e3, ns3) = (e2.clone(), ns.clone());
        let (ok, out) = tokio::task::spawn_blocking(move || {
            kubectl(
                &e3,
                &[
                    "wait",
                    "-n",
                    &ns3,
                    "--for=condition=Ready",
                    "scoringrun/refused",
                    "--timeout=60s",
                ],
                None,
            )
        })
        .await
        .unwrap();
        let done = runs.get("refused").await.unwrap();
        assert!(ok, "kubectl wait: {out}; status {:?}", done.status);
        let st = done.status.clone().unwrap();
        assert_eq!(st.phase, Some(Phase::Failed), "{:?}", st.message);
        assert_eq!((st.total, st.failed, st.active, st.queued), (2, 2, 0, 0));
        assert!(
            st.failed_sensors.iter().all(|f| f.reason == "JobRejected"),
            "{:?}",
            st.failed_sensors
        );
        assert!(
            st.message.as_deref().unwrap_or_default().contains("a/b"),
            "{:?}",
            st.message
        );
        assert_eq!(
            condition(&done, "Ready").map(|c| c.reason),
            Some("Failed".to_string())
        );
        let note =
            fleetscore_testenv::eventually("a JobRejected event is published", TIMEOUT, || {
                let (client, ns) = (client.clone(), ns.clone());
                async move {
                    fleetscore_testenv::events::event_notes(&client, &ns, "JobRejected", "refused")
                        .await
                        .into_iter()
                        .next()
                }
            })
            .await;
        assert!(note.contains("refused"), "{note}");
        op.kill().await;
    })
    .await;
}

#[tokio::test]
async fn a_run_applied_again_after_an_orphaning_delete_never_takes_the_old_jobs_results() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    install_crds(&env.client).await;
    env.with_temp_ns(|client, ns| async move {
        let op = Operator::start(&client, &ns);
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let mut spec = simulated_spec(2, 2, "1s");
        spec["finishedJobTtlSeconds"] = json!(3600);
        runs.create(&PostParams::default(), &run("again", spec.clone()))
            .await
            .unwrap();
        let first = finished(&runs, "again").await;
        assert_eq!(first.status.unwrap().succeeded, 2);
        let old_jobs = jobs.list(&Default::default()).await.unwrap().items.len();
        assert_eq!(old_jobs, 2);
        // Hole 3: `kubectl delete sr again --cascade=orphan && kubectl apply` "finished" the new
        // run at once with the old Jobs' results.
        let dp = kube::api::DeleteParams {
            propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
            ..Default::default()
        };
        runs.delete("again", &dp).await.unwrap();
        fleetscore_testenv::wait_deleted(&runs, "again", None, TIMEOUT)
            .await
            .unwrap();
        spec["podLabels"] = json!({ "kwok.fleetscore.dev/fail": "true" });
        runs.create(&PostParams::default(), &run("again", spec))
            .await
            .unwrap();
        let second = finished(&runs, "again").await;
        let st = second.status.clone().unwrap();
        assert_eq!(
            (st.succeeded, st.failed),
            (0, 2),
            "the new run's own (failing) Jobs decide: {:?}",
            st.message
        );
        let owned = condition(&second, "ChildrenOwned").expect("the foreign Jobs are reported");
        assert_eq!(owned.status, "False");
        assert!(owned.message.contains("ignored"), "{}", owned.message);
        assert_eq!(
            jobs.list(&Default::default()).await.unwrap().items.len(),
            4,
            "the orphans were left alone"
        );
        op.kill().await;
    })
    .await;
}

#[tokio::test]
async fn a_20000_sensor_all_models_list_beyond_a_configmaps_size_is_kept_in_storage_and_read_back()
{
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    install_crds(&env.client).await;
    env.with_temp_ns(|client, ns| async move {
        // Hole 7: a sensor list over 1 MiB could not be stored and the run retried for ever.
        let models = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        for i in 0..20_000 {
            let device = format!("{:0>60}", i / 10);
            std::fs::write(models.path().join(format!("model_{device}_t{}.json", i % 10)), b"").unwrap();
        }
        let op = Operator::start(&client, &ns);
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        let spec = json!({
            "sensors": { "allModels": true },
            "storage": { "models": models.path(), "data": "/nonexistent/parts", "output": out.path() },
            "parallelism": 1,
            "podAnnotations": { "kwok.fleetscore.dev/run-for": "1h" },
        });
        runs.create(&PostParams::default(), &run("wide", spec)).await.unwrap();
        let started = |r: &ScoringRun| r.status.as_ref().is_some_and(|s| s.total == 20_000 && s.active == 1);
        wait_for(&runs, "wide", "list 20,000 sensors", started, TIMEOUT).await.unwrap();
        let listed = std::fs::read_to_string(out.path().join("wide/sensors.txt")).unwrap();
        assert_eq!(listed.lines().count(), 20_000);
        assert!(listed.len() > 1024 * 1024, "the list is beyond a ConfigMap's size");
        // A restarted operator reads the list back from storage: same run, same counts.
        op.kill().await;
        let op = Operator::start(&client, &ns);
        runs.patch("wide", &PatchParams::default(), &Patch::Merge(&json!({ "spec": { "parallelism": 2 } })))
            .await
            .unwrap();
        let two = |r: &ScoringRun| r.status.as_ref().is_some_and(|s| s.total == 20_000 && s.active == 2);
        wait_for(&runs, "wide", "run two Jobs after the restart", two, TIMEOUT).await.unwrap();
        op.kill().await;
    })
    .await;
}
