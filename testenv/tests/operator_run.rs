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

use fleetscore_operator::context::{Context, RunConfig};
use fleetscore_operator::crd::run::{Phase, RERUN_ANNOTATION, ScoringRun};
use fleetscore_operator::metrics::RunMetrics;
use fleetscore_operator::run_controller;
use fleetscore_testenv::podexec::{EXEC_LABEL, EXEC_LOCAL};
use fleetscore_testenv::{ExecConfig, PodExecutor, TestEnv, wait_for};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
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

/// Installs the committed `crds/*.yaml` (what users apply) and waits until they are served.
async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in ["scoringruns.yaml", "scoringschedules.yaml"] {
        let text = std::fs::read_to_string(repo_root().join("crds").join(file)).unwrap();
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("fleetscore-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot apply CRD {name}: {e}"));
        wait_for(
            &crds,
            &name,
            "be established",
            |c: &CustomResourceDefinition| {
                c.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    }
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
                    let done = fleetscore_operator::jobs::job_outcome(&job).is_some();
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
        assert!(out.path().join("fleet/partitions").exists(), "the prepare step wrote partitions");
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
        let opts = fleetscore_operator::local::LocalOptions { threads: Some(2), output: None };
        fleetscore_operator::local::run_local(&local_run, &opts, |_| {}).await.unwrap();
        for d in 1..=3 {
            for t in 1..=5 {
                let rel = format!("fleet/preds/preds_{d}_{t}.csv");
                let cluster = std::fs::read_to_string(out.path().join(&rel)).unwrap();
                let local = std::fs::read_to_string(local_out.path().join(&rel)).unwrap();
                assert_eq!(cluster.lines().count(), 1441, "{rel}");
                assert_eq!(cluster, local, "{rel} differs from the local run");
            }
        }
        assert!(out.path().join("fleet/summary.json").exists(), "the operator wrote the ledger summary");
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
    let rerun = finished(runs, &run_controller::rerun_name(name, "1")).await;
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
        assert!(
            tolerant
                .failed_sensors
                .iter()
                .all(|f| f.reason == "BackoffLimitExceeded"),
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

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
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
