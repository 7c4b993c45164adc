//! The node-pool scaler on the real control plane with its kwok pool: scoring pods stay Pending
//! until the scaler creates nodes, a run scales the pool 0 → N → 0, scale-down waits for the
//! keep-warm delay and never removes a node that holds an active Job, and overlapping runs share
//! the pool. Each test runs the scaler in-process on its own pool name and namespace.
//!
//! Run: `testenv/with-env -- cargo test -p fleetscore-testenv --test scaler_kwok`

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetscore_operator::run::context::{Context, RunConfig};
use fleetscore_operator::run::controller as run_controller;
use fleetscore_operator::run::metrics::RunMetrics;

use fleetscore_operator::crd::run::ScoringRun;
use fleetscore_operator::crd::schedule::ScoringSchedule;
use fleetscore_operator::scaler::kwok::{NodeTemplate, POOL_LABEL};
use fleetscore_operator::scaler::policy::PolicyConfig;
use fleetscore_operator::scaler::{Mode, ScalerConfig, ScalerMetrics, controller};
use fleetscore_testenv::TestEnv;
use fleetscore_testenv::events::event_notes;
use fleetscore_testenv::wait::eventually;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);

/// A scorer-like Job of `run` that targets `pool` and stays Running for `run_for`.
fn job(name: &str, run: &str, pool: &str, run_for: &str) -> Job {
    let labels = json!({"fleetscore.dev/run": run, "app.kubernetes.io/managed-by": "fleetscore"});
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": { "kwok.fleetscore.dev/run-for": run_for }
                },
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": { POOL_LABEL: pool },
                    "containers": [{ "name": "scorer", "image": "fleetscore-scorer", "command": ["fleetscore-scorer"] }]
                }
            }
        }
    }))
    .unwrap()
}

/// A ScoringRun object standing in for one the run controller would manage.
async fn create_run(client: &Client, ns: &str, name: &str) {
    let runs: Api<ScoringRun> = Api::namespaced(client.clone(), ns);
    let run: ScoringRun = serde_json::from_value(json!({
        "apiVersion": "fleetscore.dev/v1alpha1",
        "kind": "ScoringRun",
        "metadata": { "name": name },
        "spec": {
            "sensors": { "list": [{ "device": "1", "tag": "4" }] },
            "storage": { "models": "az://models", "data": "az://data", "output": "az://out" }
        }
    }))
    .unwrap();
    runs.create(&PostParams::default(), &run).await.unwrap();
    set_run_phase(client, ns, name, "Running").await;
}

/// Writes the run's phase as the run controller would (its own field manager).
async fn set_run_phase(client: &Client, ns: &str, name: &str, phase: &str) {
    let runs: Api<ScoringRun> = Api::namespaced(client.clone(), ns);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let mut status = json!({ "phase": phase });
    if phase == "Running" {
        status["startTime"] = json!(now);
    } else {
        status["completionTime"] = json!(now);
    }
    let body =
        json!({ "apiVersion": "fleetscore.dev/v1alpha1", "kind": "ScoringRun", "status": status });
    runs.patch_status(
        name,
        &PatchParams::apply("fleetscore-test-run-controller").force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
}

fn config(pool: &str, ns: &str, jobs_per_node: u32, delay: Duration) -> ScalerConfig {
    ScalerConfig {
        mode: Mode::Kwok,
        pool: pool.into(),
        policy: PolicyConfig {
            min_nodes: 0,
            max_nodes: 4,
            jobs_per_node,
            scale_down_delay: delay,
            prewarm_lead: None,
        },
        namespace: Some(ns.into()),
        resync: Duration::from_secs(1),
        kwok: NodeTemplate::default(),
        aks: None,
    }
}

/// Starts the scaler in the background; aborted when the handle drops.
struct Scaler(tokio::task::JoinHandle<()>, ScalerMetrics);

impl Scaler {
    fn start(client: &Client, cfg: ScalerConfig) -> Self {
        let metrics = ScalerMetrics::default();
        let (c, m) = (client.clone(), metrics.clone());
        Scaler(
            tokio::spawn(async move {
                if let Err(e) = controller::run(c, cfg, m).await {
                    panic!("scaler stopped: {e}");
                }
            }),
            metrics,
        )
    }
}

impl Drop for Scaler {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn pool_nodes(client: &Client, pool: &str) -> Vec<String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let list = nodes
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}={pool}")))
        .await
        .unwrap();
    list.items
        .into_iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter_map(|n| n.metadata.name)
        .collect()
}

async fn run_pods(client: &Client, ns: &str, run: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default().labels(&format!("fleetscore.dev/run={run}")))
        .await
        .unwrap()
        .items
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref().and_then(|s| s.node_name.clone())
}

async fn remove_pool(client: &Client, pool: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    for n in pool_nodes(client, pool).await {
        let _ = nodes.delete(&n, &DeleteParams::background()).await;
    }
}

async fn job_done(client: &Client, ns: &str, name: &str) -> bool {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    jobs.get(name)
        .await
        .is_ok_and(|j| controller::job_finished(&j))
}

#[tokio::test]
async fn a_run_scales_the_pool_from_zero_to_n_and_back_to_zero_and_reports_it() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    fleetscore_testenv::install_crds(&env.client).await;
    let pool = "scale-zero-n";
    env.with_temp_ns(|client, ns| async move {
        create_run(&client, &ns, "r1").await;
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        for i in 0..4 {
            jobs.create(
                &PostParams::default(),
                &job(&format!("r1-{i}"), "r1", pool, "4s"),
            )
            .await
            .unwrap();
        }
        // Without nodes in the pool the scoring pods wait, unscheduled.
        eventually("4 pods wait Pending without a node", TIMEOUT, || async {
            let pods = run_pods(&client, &ns, "r1").await;
            (pods.len() == 4
                && pods
                    .iter()
                    .all(|p| phase(p) == "Pending" && node_of(p).is_none()))
            .then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            run_pods(&client, &ns, "r1")
                .await
                .iter()
                .all(|p| node_of(p).is_none())
        );
        assert!(pool_nodes(&client, pool).await.is_empty());

        let scaler = Scaler::start(&client, config(pool, &ns, 2, Duration::from_secs(4)));
        // 4 Jobs / 2 per node = 2 nodes, then the pods run on them.
        eventually("the pool has 2 nodes", TIMEOUT, || async {
            (pool_nodes(&client, pool).await.len() == 2).then_some(())
        })
        .await;
        let nodes: BTreeSet<String> = pool_nodes(&client, pool).await.into_iter().collect();
        eventually("every pod ran on a pool node", TIMEOUT, || async {
            let pods = run_pods(&client, &ns, "r1").await;
            pods.iter()
                .all(|p| {
                    matches!(phase(p), "Running" | "Succeeded")
                        && node_of(p).is_some_and(|n| nodes.contains(&n))
                })
                .then_some(())
        })
        .await;
        assert_eq!(scaler.1.desired.get(), 2);
        eventually("all Jobs complete", TIMEOUT, || async {
            let mut all = true;
            for i in 0..4 {
                all &= job_done(&client, &ns, &format!("r1-{i}")).await;
            }
            all.then_some(())
        })
        .await;
        let done_at = Instant::now();
        set_run_phase(&client, &ns, "r1", "Succeeded").await;
        eventually("the pool is back to 0 nodes", TIMEOUT, || async {
            pool_nodes(&client, pool).await.is_empty().then_some(())
        })
        .await;
        // The delay (4 s) counts from the scaler's last look at full demand, up to a resync earlier.
        assert!(
            done_at.elapsed() >= Duration::from_secs(1),
            "scaled down before the keep-warm delay: {:?}",
            done_at.elapsed()
        );

        // The run's report, written under the scaler's own field manager.
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        let report: Value = eventually("the run's node-pool report is final", TIMEOUT, || async {
            let r = runs.get("r1").await.ok()?;
            let rep = r.status?.scaler?;
            rep.get("idleTailSeconds").is_some().then_some(rep)
        })
        .await;
        eprintln!("node-pool report of r1: {report}");
        assert_eq!(report["pool"], pool);
        assert_eq!(report["mode"], "kwok");
        assert_eq!(report["nodesAtStart"], 0);
        assert_eq!(report["nodesPeak"], 2);
        assert!(report["nodeMinutes"].as_f64().unwrap() > 0.0, "{report}");
        assert!(
            report["timeToFirstPodRunningSeconds"].as_f64().is_some(),
            "{report}"
        );
        assert!(
            report["idleTailSeconds"].as_f64().unwrap() > 0.5,
            "{report}"
        );
        let managers: Vec<String> = runs
            .get("r1")
            .await
            .unwrap()
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| m.manager)
            .collect();
        assert!(
            managers.iter().any(|m| m == "fleetscore-scaler"),
            "{managers:?}"
        );
        // The final report also went into the per-run histograms.
        let mut registry = prometheus_client::registry::Registry::default();
        scaler.1.register(&mut registry);
        eventually(
            "the run is in fleetscore_scaler_run_node_minutes",
            TIMEOUT,
            || async {
                let mut text = String::new();
                prometheus_client::encoding::text::encode(&mut text, &registry).ok()?;
                text.contains("fleetscore_scaler_run_node_minutes_count 1")
                    .then_some(())
            },
        )
        .await;
        // `kubectl describe scoringrun r1` says why nodes came and went.
        for reason in ["NodePoolScaledUp", "NodePoolScaledDown"] {
            let notes = eventually(&format!("a {reason} event on r1"), TIMEOUT, || async {
                let notes = event_notes(&client, &ns, reason, "r1").await;
                (!notes.is_empty()).then_some(notes)
            })
            .await;
            assert!(notes[0].contains(pool), "{reason}: {notes:?}");
        }
        drop(scaler);
    })
    .await;
    remove_pool(&env.client, pool).await;
}

#[tokio::test]
async fn scale_down_waits_for_the_delay_and_never_strands_an_active_job() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    fleetscore_testenv::install_crds(&env.client).await;
    let pool = "no-strand";
    env.with_temp_ns(|client, ns| async move {
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        jobs.create(&PostParams::default(), &job("short", "r2", pool, "2s"))
            .await
            .unwrap();
        jobs.create(&PostParams::default(), &job("long", "r2", pool, "1h"))
            .await
            .unwrap();
        let delay = Duration::from_secs(6);
        let scaler = Scaler::start(&client, config(pool, &ns, 1, delay));
        eventually("the pool has 2 nodes", TIMEOUT, || async {
            (pool_nodes(&client, pool).await.len() == 2).then_some(())
        })
        .await;
        let long_node = eventually("the long Job's pod runs", TIMEOUT, || async {
            let pods = run_pods(&client, &ns, "r2").await;
            pods.iter()
                .find(|p| {
                    p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("batch.kubernetes.io/job-name"))
                        .map(String::as_str)
                        == Some("long")
                        && phase(p) == "Running"
                })
                .and_then(node_of)
        })
        .await;
        eventually("the short Job completes", TIMEOUT, || async {
            job_done(&client, &ns, "short").await.then_some(())
        })
        .await;
        let short_done = Instant::now();
        // Keep-warm: both nodes stay for the delay (6 s, counted from up to a resync earlier).
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            pool_nodes(&client, pool).await.len(),
            2,
            "a node went before the keep-warm delay"
        );
        // Then the idle node goes and the one holding the long Job stays.
        eventually("the pool shrinks to 1 node", TIMEOUT, || async {
            (pool_nodes(&client, pool).await.len() == 1).then_some(())
        })
        .await;
        assert!(
            short_done.elapsed() >= delay - Duration::from_secs(3),
            "{:?}",
            short_done.elapsed()
        );
        assert_eq!(pool_nodes(&client, pool).await, vec![long_node.clone()]);
        let pods = run_pods(&client, &ns, "r2").await;
        let long = pods
            .iter()
            .find(|p| node_of(p).as_deref() == Some(long_node.as_str()) && phase(p) == "Running");
        assert!(long.is_some(), "the long Job's pod still runs on its node");
        // Stays at 1 while the Job is active, well past the delay.
        tokio::time::sleep(delay + Duration::from_secs(2)).await;
        assert_eq!(pool_nodes(&client, pool).await, vec![long_node]);

        jobs.delete("long", &DeleteParams::background())
            .await
            .unwrap();
        eventually("the pool is back to 0 nodes", TIMEOUT, || async {
            pool_nodes(&client, pool).await.is_empty().then_some(())
        })
        .await;
        drop(scaler);
    })
    .await;
    remove_pool(&env.client, pool).await;
}

#[tokio::test]
async fn two_overlapping_runs_share_the_pool() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    fleetscore_testenv::install_crds(&env.client).await;
    let pool = "shared";
    env.with_temp_ns(|client, ns| async move {
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        for run in ["ra", "rb"] {
            for i in 0..2 {
                jobs.create(
                    &PostParams::default(),
                    &job(&format!("{run}-{i}"), run, pool, "20s"),
                )
                .await
                .unwrap();
            }
        }
        let scaler = Scaler::start(&client, config(pool, &ns, 2, Duration::from_secs(2)));
        // 4 Jobs of two runs at 2 per node: 2 nodes, not one pool per run.
        eventually("both runs' pods run", TIMEOUT, || async {
            let mut all = run_pods(&client, &ns, "ra").await;
            all.extend(run_pods(&client, &ns, "rb").await);
            (all.len() == 4 && all.iter().all(|p| phase(p) == "Running")).then_some(())
        })
        .await;
        let nodes: BTreeSet<String> = pool_nodes(&client, pool).await.into_iter().collect();
        assert_eq!(nodes.len(), 2, "{nodes:?}");
        let mut used = BTreeSet::new();
        for run in ["ra", "rb"] {
            for p in run_pods(&client, &ns, run).await {
                let n = node_of(&p).unwrap();
                assert!(nodes.contains(&n), "{n} is not a pool node");
                used.insert(n);
            }
        }
        assert!(used.len() <= 2);
        assert_eq!(scaler.1.desired.get(), 2);
        for run in ["ra", "rb"] {
            for i in 0..2 {
                jobs.delete(&format!("{run}-{i}"), &DeleteParams::background())
                    .await
                    .unwrap();
            }
        }
        eventually("the pool is back to 0 nodes", TIMEOUT, || async {
            pool_nodes(&client, pool).await.is_empty().then_some(())
        })
        .await;
        drop(scaler);
    })
    .await;
    remove_pool(&env.client, pool).await;
}

#[tokio::test]
async fn a_schedule_prewarms_the_pool_before_its_next_slot() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    fleetscore_testenv::install_crds(&env.client).await;
    let pool = "prewarm";
    env.with_temp_ns(|client, ns| async move {
        // Every minute, 3 sensors in one-sensor Jobs: the next run needs 3 Jobs = 2 nodes.
        let schedules: Api<ScoringSchedule> = Api::namespaced(client.clone(), &ns);
        let sched: ScoringSchedule = serde_json::from_value(json!({
            "apiVersion": "fleetscore.dev/v1alpha1",
            "kind": "ScoringSchedule",
            "metadata": { "name": "every-minute" },
            "spec": {
                "schedule": "* * * * *",
                "runTemplate": { "spec": {
                    "sensors": { "devices": ["1", "2", "3"], "tags": ["4"] },
                    "storage": { "models": "az://models", "data": "az://data", "output": "az://out" }
                }}
            }
        }))
        .unwrap();
        schedules.create(&PostParams::default(), &sched).await.unwrap();
        let mut cfg = config(pool, &ns, 2, Duration::from_secs(2));
        // A lead longer than the period: a slot is always within reach.
        cfg.policy.prewarm_lead = Some(Duration::from_secs(61));
        let scaler = Scaler::start(&client, cfg);
        eventually("the pool is pre-warmed to 2 nodes", TIMEOUT, || async { (pool_nodes(&client, pool).await.len() == 2).then_some(()) }).await;
        // Suspending the schedule drops the pre-warm; the pool goes after the delay.
        schedules
            .patch("every-minute", &PatchParams::default(), &Patch::Merge(json!({"spec": {"suspend": true}})))
            .await
            .unwrap();
        eventually("the pool is back to 0 nodes", TIMEOUT, || async { pool_nodes(&client, pool).await.is_empty().then_some(()) }).await;
        drop(scaler);
    })
    .await;
    remove_pool(&env.client, pool).await;
}

#[tokio::test]
async fn the_run_controllers_jobs_wait_for_the_pool_and_the_run_reports_its_nodes() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    fleetscore_testenv::install_crds(&env.client).await;
    let pool = "e2e";
    env.with_temp_ns(|client, ns| async move {
        let run_config = RunConfig {
            namespace: Some(ns.clone()),
            resync: Duration::from_secs(2),
            debounce: Duration::from_millis(200),
            read_ledger: false,
            ..RunConfig::default()
        };
        let ctx = Arc::new(Context::new(client.clone(), Arc::new(RunMetrics::default()), run_config));
        let operator = tokio::spawn(run_controller::run(ctx));
        let scaler = Scaler::start(&client, config(pool, &ns, 2, Duration::from_secs(2)));
        // 6 sensors, 4 Jobs at once, 2 Jobs per node: the pool peaks at 2 nodes.
        let list: Vec<Value> = (1..=6).map(|t| json!({ "device": "1", "tag": t.to_string() })).collect();
        let run: ScoringRun = serde_json::from_value(json!({
            "apiVersion": "fleetscore.dev/v1alpha1",
            "kind": "ScoringRun",
            "metadata": { "name": "pooled" },
            "spec": {
                "sensors": { "list": list },
                "storage": { "models": "/nonexistent/models", "data": "/nonexistent/parts", "output": "/nonexistent/out" },
                "parallelism": 4,
                "backoffLimit": 0,
                "nodeSelector": { POOL_LABEL: pool },
                "podAnnotations": { "kwok.fleetscore.dev/run-for": "2s" },
            }
        }))
        .unwrap();
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        runs.create(&PostParams::default(), &run).await.unwrap();
        let report: Value = eventually("the run finished and its node-pool report is final", TIMEOUT, || async {
            let st = runs.get("pooled").await.ok()?.status?;
            let rep = st.scaler?;
            (st.phase.is_some_and(|p| p.is_finished()) && rep.get("idleTailSeconds").is_some()).then_some(rep)
        })
        .await;
        eprintln!("node-pool report of the pooled run: {report}");
        let st = runs.get("pooled").await.unwrap().status.unwrap();
        assert_eq!(st.succeeded, 6, "{:?}", st.message);
        assert_eq!(report["nodesAtStart"], 0, "{report}");
        assert_eq!(report["nodesPeak"], 2, "{report}");
        // Kubernetes timestamps have whole seconds: a warm-enough start can read 0.
        assert!(report["timeToFirstPodRunningSeconds"].as_f64().is_some(), "{report}");
        assert!(pool_nodes(&client, pool).await.is_empty());
        drop(scaler);
        operator.abort();
    })
    .await;
    remove_pool(&env.client, pool).await;
}
