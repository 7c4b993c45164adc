//! The node-pool scaler in `aks` mode: the real control plane supplies the runs and Jobs, and
//! Azure Resource Manager is the loopback fake of `operator/tests/support/fake_arm.rs` — the only
//! fake in the suite, because ARM has no emulator. Proves the controller resizes the agent pool
//! through ARM with the Jobs' demand, and leaves an autoscaler-enabled pool alone while saying so
//! in the run's status.
//!
//! Run: `testenv/with-env -- cargo test -p fleetscore-testenv --test scaler_aks`

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "../../operator/tests/support/fake_arm.rs"]
#[allow(dead_code)] // the client tests use the rest of the fake
mod fake_arm;

use std::time::Duration;

use fake_arm::{FakeArm, POOL_PATH};
use fleetscore_operator::crd::run::ScoringRun;
use fleetscore_operator::scaler::aks::{AgentPoolRef, RetryPolicy};
use fleetscore_operator::scaler::auth::Credential;
use fleetscore_operator::scaler::controller::AksSettings;
use fleetscore_operator::scaler::policy::PolicyConfig;
use fleetscore_operator::scaler::{Mode, ScalerConfig, ScalerMetrics, controller};
use fleetscore_testenv::TestEnv;
use fleetscore_testenv::events::event_notes;
use fleetscore_testenv::wait::eventually;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{DeleteParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A Job of `run` whose pod selects a pool no node has: it stays Pending, as on AKS before
/// the pool grows.
fn job(name: &str, run: &str) -> Job {
    let labels = json!({"fleetscore.dev/run": run, "app.kubernetes.io/managed-by": "fleetscore"});
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": { "name": name, "labels": labels },
        "spec": { "backoffLimit": 0, "template": {
            "metadata": { "labels": labels },
            "spec": { "restartPolicy": "Never",
                "nodeSelector": { "kubernetes.azure.com/agentpool": "scoring" },
                "containers": [{ "name": "scorer", "image": "fleetscore-scorer" }] } } }
    }))
    .unwrap()
}

fn config(fake: &FakeArm, ns: &str) -> ScalerConfig {
    ScalerConfig {
        mode: Mode::Aks,
        pool: "scoring".into(),
        policy: PolicyConfig {
            min_nodes: 0,
            max_nodes: 5,
            jobs_per_node: 2,
            scale_down_delay: Duration::from_secs(2),
            prewarm_lead: None,
        },
        namespace: Some(ns.into()),
        resync: Duration::from_secs(1),
        kwok: Default::default(),
        aks: Some(AksSettings {
            pool: AgentPoolRef {
                subscription: "sub-1".into(),
                resource_group: "rg-1".into(),
                cluster: "aks-1".into(),
                pool: "scoring".into(),
            },
            endpoint: fake.base.clone(),
            // Never the real 169.254.169.254: the fake's IMDS endpoint.
            credential: Credential::ManagedIdentity {
                endpoint: format!("{}/metadata/identity/oauth2/token", fake.base),
                client_id: None,
            },
            retry: RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(50),
                max_delay: Duration::from_secs(2),
                operation_timeout: Duration::from_secs(20),
            },
            read_interval: Duration::from_secs(1),
            error_backoff: Duration::from_secs(1),
        }),
    }
}

fn start(client: &Client, cfg: ScalerConfig) -> tokio::task::JoinHandle<()> {
    let c = client.clone();
    tokio::spawn(async move {
        if let Err(e) = controller::run(c, cfg, ScalerMetrics::default()).await {
            panic!("scaler stopped: {e}");
        }
    })
}

#[tokio::test]
async fn the_aks_pool_grows_with_the_jobs_and_shrinks_after_the_delay_through_arm() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    fleetscore_testenv::install_crds(&env.client).await;
    env.with_temp_ns(|client, ns| async move {
        let fake = FakeArm::start(0, false).await;
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        for i in 0..3 {
            jobs.create(&PostParams::default(), &job(&format!("j{i}"), "r1"))
                .await
                .unwrap();
        }
        let scaler = start(&client, config(&fake, &ns));
        // 3 Jobs at 2 per node: the pool's count becomes 2 through a PUT.
        eventually("the agent pool has 2 nodes", TIMEOUT, || async {
            (fake.count() == 2).then_some(())
        })
        .await;
        let put = fake.seen_to("PUT", POOL_PATH).into_iter().next().unwrap();
        let body: Value = serde_json::from_str(&put.body).unwrap();
        assert_eq!(body["properties"]["count"], 2);
        assert_eq!(put.query, "api-version=2025-08-01");
        for i in 0..3 {
            jobs.delete(&format!("j{i}"), &DeleteParams::background())
                .await
                .unwrap();
        }
        eventually("the agent pool is back to 0", TIMEOUT, || async {
            (fake.count() == 0).then_some(())
        })
        .await;
        scaler.abort();
    })
    .await;
}

#[tokio::test]
async fn a_pool_with_the_cluster_autoscaler_enabled_is_never_scaled_and_the_run_says_so() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    fleetscore_testenv::install_crds(&env.client).await;
    env.with_temp_ns(|client, ns| async move {
        let fake = FakeArm::start(1, true).await;
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        let run: ScoringRun = serde_json::from_value(json!({
            "apiVersion": "fleetscore.dev/v1alpha1", "kind": "ScoringRun",
            "metadata": { "name": "r1" },
            "spec": { "sensors": { "list": [{ "device": "1", "tag": "4" }] },
                "storage": { "models": "az://m", "data": "az://d", "output": "az://o" } }
        }))
        .unwrap();
        runs.create(&PostParams::default(), &run).await.unwrap();
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        for i in 0..4 {
            jobs.create(&PostParams::default(), &job(&format!("j{i}"), "r1"))
                .await
                .unwrap();
        }
        let scaler = start(&client, config(&fake, &ns));
        let scaling: Value = eventually(
            "the run reports the scaler's condition",
            TIMEOUT,
            || async {
                let r = runs.get("r1").await.ok()?;
                let s = r.status?.scaler?;
                s.get("scaling").cloned()
            },
        )
        .await;
        assert_eq!(scaling["status"], "False", "{scaling}");
        assert_eq!(scaling["reason"], "ClusterAutoscalerEnabled", "{scaling}");
        let notes = eventually("a NodePoolNotScaled event on r1", TIMEOUT, || async {
            let notes = event_notes(&client, &ns, "NodePoolNotScaled", "r1").await;
            (!notes.is_empty()).then_some(notes)
        })
        .await;
        assert!(notes[0].contains("autoscaler"), "{notes:?}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            fake.seen_to("PUT", POOL_PATH).is_empty(),
            "an autoscaler-enabled pool was resized"
        );
        assert_eq!(fake.count(), 1);
        scaler.abort();
    })
    .await;
}
