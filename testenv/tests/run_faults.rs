//! Faults injected into real runs on the real control plane, with the real `fleetscore` binary:
//! SIGKILL of the operator at 20 random points, two replicas with leader election and the leader
//! killed, and the kube-apiserver restarted mid-run. Each test counts what users care about:
//! Jobs created twice for one batch (by Job UID, from a watch), sensors lost, exact final counts.
//! Pods run on kwok nodes. The tests take turns (one lock): the apiserver restart would otherwise
//! disturb the others' figures. Each prints its figures (`cargo test -- --nocapture`).
//!
//! Run: `scripts/test -- -p fleetscore-testenv --test run_faults`.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleetscore_operator::crd::run::{Phase, ScoringRun};
use fleetscore_testenv::{TestEnv, free_port, install_crds, wait_for};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::process::Child;
use tokio::task::JoinHandle;

/// One fault test at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Longest a run may take under faults.
const TIMEOUT: Duration = Duration::from_secs(600);

fn operator_bin() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|t| !t.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = std::env::var_os("FLEETSCORE_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("debug/fleetscore"));
    if bin.exists() {
        return Some(bin);
    }
    fleetscore_testenv::skip::skip_or_fail(format!(
        "{} missing (cargo build -p fleetscore-operator)",
        bin.display()
    ));
    None
}

/// The operator binary for one namespace, as a child process (killed with SIGKILL on drop).
fn spawn_operator(
    bin: &PathBuf,
    kubeconfig: &PathBuf,
    ns: &str,
    extra: &[&str],
    identity: &str,
) -> Child {
    let mut args = vec![
        "operator".to_string(),
        "--namespace".into(),
        ns.into(),
        "--metrics-addr".into(),
        format!("127.0.0.1:{}", free_port()),
        "--log-format".into(),
        "text".into(),
        "--no-schedules".into(),
    ];
    args.extend(extra.iter().map(ToString::to_string));
    tokio::process::Command::new(bin)
        .args(&args)
        .env("KUBECONFIG", kubeconfig)
        .env("FLEETSCORE_SCALER_MODE", "none")
        .env("POD_NAME", identity)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A run of `n` kwok-simulated sensors (each pod "runs" for `run_for`).
fn sim_run(name: &str, n: usize, per_job: i32, parallelism: i32, run_for: &str) -> ScoringRun {
    let list: Vec<_> = (0..n)
        .map(|i| json!({ "device": format!("d{}", i / 10), "tag": format!("t{}", i % 10) }))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "fleetscore.dev/v1alpha1",
        "kind": "ScoringRun",
        "metadata": { "name": name },
        "spec": {
            "sensors": { "list": list },
            "storage": { "models": "/nonexistent/models", "data": "/nonexistent/parts", "output": "/nonexistent/out" },
            "parallelism": parallelism,
            "sensorsPerJob": per_job,
            "backoffLimit": 0,
            "podAnnotations": { "kwok.fleetscore.dev/run-for": run_for },
        },
    }))
    .unwrap()
}

/// Every Job UID ever seen per (run, batch), from a watch started before the run.
#[derive(Default, Debug)]
struct Creations {
    uids: BTreeMap<(String, String), BTreeSet<String>>,
}

impl Creations {
    /// Batches for which more than one Job was ever created.
    fn duplicates(&self) -> usize {
        self.uids.values().filter(|u| u.len() > 1).count()
    }
    fn batches(&self, run: &str) -> usize {
        self.uids.keys().filter(|(r, _)| r == run).count()
    }
}

fn watch_creations(client: &Client, ns: &str) -> (Arc<Mutex<Creations>>, JoinHandle<()>) {
    let log = Arc::new(Mutex::new(Creations::default()));
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    let sink = log.clone();
    let handle = tokio::spawn(async move {
        let cfg = watcher::Config::default().labels("fleetscore.dev/role=score");
        let mut stream = watcher(api, cfg).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            let Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job)) = event else {
                continue;
            };
            let labels = job.labels();
            let (Some(run), Some(batch)) = (
                labels.get("fleetscore.dev/run"),
                labels.get("fleetscore.dev/batch"),
            ) else {
                continue;
            };
            let key = (run.clone(), batch.clone());
            sink.lock()
                .unwrap()
                .uids
                .entry(key)
                .or_default()
                .insert(job.uid().unwrap_or_default());
        }
    });
    (log, handle)
}

async fn finished(runs: &Api<ScoringRun>, name: &str) -> ScoringRun {
    let done = |r: &ScoringRun| {
        r.status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(Phase::is_finished)
    };
    wait_for(runs, name, "finish", done, TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("run {name}: {e}"))
}

/// Asserts a simulated run finished with every sensor succeeded, each batch created once.
fn assert_exact(run: &ScoringRun, sensors: i64, batches: usize, creations: &Creations) {
    let name = run.name_any();
    let st = run.status.clone().unwrap();
    assert_eq!(st.phase, Some(Phase::Succeeded), "{name}: {:?}", st.message);
    assert_eq!(
        (st.total, st.succeeded, st.failed, st.active, st.queued),
        (sensors, sensors, 0, 0, 0),
        "{name}"
    );
    assert_eq!(
        creations.batches(&name),
        batches,
        "{name}: every batch had a Job"
    );
}

#[tokio::test]
async fn sigkill_at_20_random_points_of_two_1000_sensor_runs_duplicates_and_loses_nothing() {
    let _turn = TURN.lock().await;
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    let Some(bin) = operator_bin() else { return };
    install_crds(&env.client).await;
    let kubeconfig = env.kubeconfig();
    env.with_temp_ns(|client, ns| async move {
        let (creations, watch) = watch_creations(&client, &ns);
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        let mut op = spawn_operator(&bin, &kubeconfig, &ns, &[], "solo");
        runs.create(&PostParams::default(), &sim_run("one-per-job", 1000, 1, 40, "1s")).await.unwrap();
        runs.create(&PostParams::default(), &sim_run("ten-per-job", 1000, 10, 8, "2s")).await.unwrap();
        // A fixed seed: the kill points are random but the same in every CI run.
        let mut seed: u64 = 0x5eed_f1ee_7c0e;
        let mut rand = move |lo: u64, hi: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            lo + seed % (hi - lo)
        };
        let mut kills = 0;
        while kills < 20 {
            tokio::time::sleep(Duration::from_millis(rand(300, 2500))).await;
            op.start_kill().unwrap(); // SIGKILL: no graceful shutdown, requests in flight are cut
            let _ = op.wait().await;
            kills += 1;
            op = spawn_operator(&bin, &kubeconfig, &ns, &[], "solo");
        }
        let a = finished(&runs, "one-per-job").await;
        let b = finished(&runs, "ten-per-job").await;
        let c = std::mem::take(&mut *creations.lock().unwrap());
        println!(
            "figures: operator SIGKILLed {kills} times during two 1000-sensor runs; duplicate Jobs {}; \
             sensors lost {}",
            c.duplicates(),
            2000 - a.status.as_ref().unwrap().succeeded - b.status.as_ref().unwrap().succeeded
        );
        assert_eq!(c.duplicates(), 0, "no batch ever got a second Job: {:?}", c.uids.iter().filter(|(_, u)| u.len() > 1).collect::<Vec<_>>());
        assert_exact(&a, 1000, 1000, &c);
        assert_exact(&b, 1000, 100, &c);
        let _ = op.kill().await;
        watch.abort();
    })
    .await;
}

#[tokio::test]
async fn two_replicas_elect_one_leader_and_the_standby_takes_over_when_it_is_killed() {
    let _turn = TURN.lock().await;
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    let Some(bin) = operator_bin() else { return };
    install_crds(&env.client).await;
    let kubeconfig = env.kubeconfig();
    env.with_temp_ns(|client, ns| async move {
        let (creations, watch) = watch_creations(&client, &ns);
        let lease_args = [
            "--leader-elect",
            "--lease-namespace",
            &ns,
            "--lease-duration-seconds",
            "4",
            "--lease-grace-seconds",
            "2",
        ];
        let mut first = spawn_operator(&bin, &kubeconfig, &ns, &lease_args, "replica-a");
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let holder = |l: &Lease| {
            l.spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty())
        };
        wait_for(
            &leases,
            "fleetscore-operator",
            "be held",
            |l: &Lease| holder(l).is_some(),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let mut second = spawn_operator(&bin, &kubeconfig, &ns, &lease_args, "replica-b");
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        runs.create(
            &PostParams::default(),
            &sim_run("failover", 300, 1, 20, "1s"),
        )
        .await
        .unwrap();
        let leader = holder(&leases.get("fleetscore-operator").await.unwrap()).unwrap();
        assert_eq!(
            leader, "replica-a",
            "the first replica leads; the second waits"
        );
        // Kill the leader mid-run.
        wait_for(
            &runs,
            "failover",
            "score some sensors",
            |r: &ScoringRun| r.status.as_ref().is_some_and(|s| s.succeeded >= 40),
            TIMEOUT,
        )
        .await
        .unwrap();
        first.start_kill().unwrap();
        let killed = Instant::now();
        let _ = first.wait().await;
        wait_for(
            &leases,
            "fleetscore-operator",
            "pass to replica-b",
            |l: &Lease| holder(l).as_deref() == Some("replica-b"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let takeover = killed.elapsed();
        let done = finished(&runs, "failover").await;
        let c = std::mem::take(&mut *creations.lock().unwrap());
        println!(
            "figures: leader killed; standby took over in {:.1} s (lease 4 s); duplicate Jobs {}",
            takeover.as_secs_f64(),
            c.duplicates()
        );
        assert!(
            takeover < Duration::from_secs(15),
            "takeover within the lease duration plus a renew: {takeover:?}"
        );
        assert_eq!(c.duplicates(), 0);
        assert_exact(&done, 300, 300, &c);
        let _ = second.kill().await;
        watch.abort();
    })
    .await;
}

#[tokio::test]
async fn a_kube_apiserver_restart_mid_run_leaves_exact_counts() {
    let _turn = TURN.lock().await;
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    let Some(bin) = operator_bin() else { return };
    install_crds(&env.client).await;
    let kubeconfig = env.kubeconfig();
    let dir = env.dir.clone();
    env.with_temp_ns(|client, ns| async move {
        let (creations, watch) = watch_creations(&client, &ns);
        let mut op = spawn_operator(&bin, &kubeconfig, &ns, &[], "solo");
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        runs.create(
            &PostParams::default(),
            &sim_run("through-restart", 200, 1, 20, "1s"),
        )
        .await
        .unwrap();
        wait_for(
            &runs,
            "through-restart",
            "score some sensors",
            |r: &ScoringRun| r.status.as_ref().is_some_and(|s| s.succeeded >= 30),
            TIMEOUT,
        )
        .await
        .unwrap();
        let d = dir.clone();
        tokio::task::spawn_blocking(move || {
            fleetscore_testenv::restart::restart(&d, "kube-apiserver", Duration::from_secs(3))
        })
        .await
        .unwrap()
        .unwrap();
        // The test's own client reconnects too: wait until the API server answers again.
        fleetscore_testenv::eventually("the API server is back", Duration::from_secs(90), || {
            let client = client.clone();
            async move { client.apiserver_version().await.ok() }
        })
        .await;
        let done = finished(&runs, "through-restart").await;
        // The watch reconnects after the restart and lists the Jobs again: creations stay exact.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let c = std::mem::take(&mut *creations.lock().unwrap());
        println!(
            "figures: kube-apiserver restarted (3 s down) mid-run; duplicate Jobs {}",
            c.duplicates()
        );
        assert_eq!(c.duplicates(), 0);
        let st = done.status.clone().unwrap();
        assert_eq!(st.phase, Some(Phase::Succeeded), "{:?}", st.message);
        assert_eq!((st.total, st.succeeded, st.failed), (200, 200, 0));
        let _ = op.kill().await;
        watch.abort();
    })
    .await;
}
