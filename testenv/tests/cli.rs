//! The everyday commands on the real control plane: `fleetscore describe`, `logs --sensor` and
//! `rerun --failed` run as the real binary against the test API server, also as the kubectl
//! plugin (`kubectl fleetscore ...` through a `kubectl-fleetscore` symlink on PATH), and the run
//! controller (in this process) turns the rerun request into the rerun run.

// Tests may unwrap: a failed unwrap is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleetscore_operator::crd::run::{RERUN_ANNOTATION, ScoringRun};
use fleetscore_operator::run::context::{Context, RunConfig};
use fleetscore_operator::run::controller as run_controller;
use fleetscore_operator::run::metrics::RunMetrics;
use fleetscore_scorer::output::{SensorRecord, log_path};
use fleetscore_scorer::sensor::SensorId;
use fleetscore_testenv::skip::skip_or_fail;
use fleetscore_testenv::{TestEnv, wait_for};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `fleetscore` binary of this build (`FLEETSCORE_OPERATOR_BIN`, or beside the test binary).
fn fleetscore_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLEETSCORE_OPERATOR_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("fleetscore")).filter(|p| p.is_file())
}

async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for file in ["scoringruns.yaml", "scoringschedules.yaml"] {
        let text = std::fs::read_to_string(repo().join("crds").join(file)).unwrap();
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("fleetscore-test").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
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

fn cli(bin: &Path, env: &TestEnv, args: &[&str]) -> Output {
    Command::new(bin)
        .env("KUBECONFIG", env.kubeconfig())
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn describe_logs_and_rerun_work_on_a_finished_run_also_as_a_kubectl_plugin() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    let Some(bin) = fleetscore_binary() else {
        skip_or_fail("the fleetscore binary is not built (cargo build -p fleetscore-operator)");
        return;
    };
    install_crds(&env.client).await;
    let env2 = env.clone();
    env.with_temp_ns(|client, ns| async move {
        let env = env2;
        let store = tempfile::tempdir().unwrap();
        let output = store.path().display().to_string();
        let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
        let run: ScoringRun = serde_json::from_value(json!({
            "apiVersion": "fleetscore.dev/v1alpha1",
            "kind": "ScoringRun",
            "metadata": {"name": "nightly"},
            "spec": {
                "sensors": {"list": [{"device": "1", "tag": "4"}, {"device": "2", "tag": "4"}]},
                "storage": {"models": format!("{output}/models"), "data": format!("{output}/data"), "output": output, "partition": "Never"},
            },
        }))
        .unwrap();
        runs.create(&PostParams::default(), &run).await.unwrap();
        // A finished run with one failed sensor, as the run controller records it.
        let status = json!({"status": {
            "phase": "PartiallySucceeded", "total": 2, "succeeded": 1, "failed": 1,
            "failedSensors": [{"sensor": "2:4", "reason": "ScorerFailed", "message": "no model model_2_4 under the models folder"}],
            "failedBatches": "1", "recordedBatches": "0-1", "nextBatch": 2, "totalBatches": 2,
            "ledger": format!("{output}/nightly"),
            "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:02:31Z", "duration": "2m31s",
        }});
        runs.patch_status("nightly", &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();
        let out = fleetscore_scorer::storage::open(&output).unwrap();
        let mut record = SensorRecord::new("nightly", &SensorId::new("2", "4"));
        record.fail("no model model_2_4 under the models folder");
        out.child(&log_path("nightly", &SensorId::new("2", "4"))).put(Bytes::from(record.to_json_line())).await.unwrap();

        // describe, directly and as `kubectl fleetscore`.
        let described = cli(&bin, &env, &["describe", "nightly", "-n", &ns]);
        assert!(described.status.success(), "{}", String::from_utf8_lossy(&described.stderr));
        let text = stdout(&described);
        for want in [
            "Phase:          PartiallySucceeded",
            "2 total, 1 succeeded, 1 failed",
            "Duration:       2m31s",
            "2:4           ScorerFailed    no model model_2_4",
            &format!("Report:         {output}/nightly/report.html"),
            &format!("Summary:        {output}/nightly/summary.json"),
        ] {
            assert!(text.contains(want), "describe lacks {want:?}:\n{text}");
        }
        let plugins = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&bin, plugins.path().join("kubectl-fleetscore")).unwrap();
        let path = std::env::join_paths(
            std::iter::once(plugins.path().to_path_buf()).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
        )
        .unwrap();
        let via_kubectl = env.kubectl().env("PATH", &path).args(["fleetscore", "describe", "nightly", "-n", &ns]).output().unwrap();
        assert!(via_kubectl.status.success(), "kubectl fleetscore: {}", String::from_utf8_lossy(&via_kubectl.stderr));
        assert_eq!(stdout(&via_kubectl), text, "the plugin prints the same");
        let help = env.kubectl().env("PATH", &path).args(["fleetscore", "--help"]).output().unwrap();
        assert!(stdout(&help).contains("kubectl fleetscore"), "{}", stdout(&help));

        // logs: the ledger record, and why there is no pod log (the Job's pods are gone).
        let logs = cli(&bin, &env, &["logs", "nightly", "--sensor", "2:4", "-n", &ns]);
        assert!(logs.status.success(), "{}", String::from_utf8_lossy(&logs.stderr));
        let text = stdout(&logs);
        assert!(text.contains(&format!("== ledger record {output}/nightly/logs/2_4.json")), "{text}");
        assert!(text.contains("\"outcome\": \"Failed\"") && text.contains("no model model_2_4"), "{text}");
        // Job names carry the run's UID tag: nightly-<6 hex>-<batch>.
        let named = text.lines().any(|l| l.contains("Job nightly-") && l.contains("-1 has no pods left"));
        assert!(named, "the sensor's Job is named: {text}");
        let missing = cli(&bin, &env, &["logs", "nightly", "--sensor", "1:4", "-n", &ns]);
        assert!(stdout(&missing).contains("(none:"), "{}", stdout(&missing));
        let bad = cli(&bin, &env, &["logs", "nightly", "--sensor", "nocolon", "-n", &ns]);
        assert!(!bad.status.success());

        // rerun --failed: the annotation, and the run controller creates the rerun run.
        let operator = tokio::spawn(run_controller::run(Arc::new(Context::new(
            client.clone(),
            Arc::new(RunMetrics::default()),
            RunConfig { namespace: Some(ns.clone()), resync: Duration::from_secs(5), ..RunConfig::default() },
        ))));
        let rerun = cli(&bin, &env, &["rerun", "nightly", "--failed", "-n", &ns]);
        assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
        let annotated = runs.get("nightly").await.unwrap();
        let value = annotated.annotations().get(RERUN_ANNOTATION).cloned().expect("the rerun annotation is set");
        let new_name = fleetscore_operator::run::naming::rerun_name("nightly", &value);
        assert!(stdout(&rerun).contains(&new_name), "{}", stdout(&rerun));
        let created = wait_for(&runs, &new_name, "be created by the operator", |r: &ScoringRun| r.spec.rerun_of.as_deref() == Some("nightly"), Duration::from_secs(60)).await;
        operator.abort();
        created.unwrap();

        // Refused: a run that has not finished.
        let pending: ScoringRun = serde_json::from_value(json!({
            "apiVersion": "fleetscore.dev/v1alpha1", "kind": "ScoringRun", "metadata": {"name": "pending"},
            "spec": {"sensors": {"list": [{"device": "1", "tag": "4"}]}, "storage": {"models": "m", "data": "d", "output": "o"}},
        }))
        .unwrap();
        runs.create(&PostParams::default(), &pending).await.unwrap();
        let refused = cli(&bin, &env, &["rerun", "pending", "--failed", "-n", &ns]);
        assert!(!refused.status.success());
        assert!(String::from_utf8_lossy(&refused.stderr).contains("only a finished run can be rerun"));
        let absent = cli(&bin, &env, &["describe", "no-such-run", "-n", &ns]);
        assert!(String::from_utf8_lossy(&absent.stderr).contains("not found"));
    })
    .await;
}
