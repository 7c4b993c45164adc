//! Smoke tests proving the test environment is real: Jobs become Pods through the controller
//! manager, the scheduler binds them to kwok nodes, kwok's stages finish them, the garbage
//! collector removes them, the tools match the server, Azurite stores blobs, and the pod executor
//! runs labelled pods as local processes.
//!
//! Run: `testenv/with-env -- cargo test -p fleetscore-testenv --test smoke`

// Tests may unwrap: a panic with the error is the clearest failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetscore_testenv::podexec::{EXEC_LABEL, EXEC_LOCAL};
use fleetscore_testenv::{ExecConfig, PodExecutor, TestEnv, wait_deleted, wait_for};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use object_store::ObjectStoreExt;
use object_store::path::Path as StorePath;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(60);

/// A one-pod Job (no retries) running `command`, with extra pod labels and annotations.
fn job(
    name: &str,
    labels: serde_json::Value,
    annotations: serde_json::Value,
    command: &[&str],
) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": { "name": name },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": { "labels": labels, "annotations": annotations },
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{ "name": "main", "image": "busybox", "command": command }]
                }
            }
        }
    }))
    .unwrap()
}

fn has_condition(job: &Job, kind: &str) -> bool {
    let conditions = job.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
}

async fn job_pods(client: &Client, ns: &str, job: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("batch.kubernetes.io/job-name={job}");
    pods.list(&ListParams::default().labels(&selector))
        .await
        .unwrap()
        .items
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn terminated(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStateTerminated> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    statuses.first()?.state.as_ref()?.terminated.clone()
}

#[tokio::test]
async fn a_job_gets_a_pod_bound_to_a_kwok_node_that_succeeds_and_the_job_completes() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    env.with_temp_ns(|client, ns| async move {
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        jobs.create(
            &PostParams::default(),
            &job("ok", json!({}), json!({}), &["true"]),
        )
        .await
        .unwrap();
        wait_for(
            &jobs,
            "ok",
            "complete",
            |j| has_condition(j, "Complete"),
            TIMEOUT,
        )
        .await
        .unwrap();

        let pods = job_pods(&client, &ns, "ok").await;
        assert_eq!(pods.len(), 1, "one pod for a one-completion job");
        let pod = &pods[0];
        assert_eq!(phase(pod), "Succeeded");
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(
            node.starts_with("kwok-node-"),
            "bound by the scheduler to a kwok node, got {node:?}"
        );
        assert_eq!(terminated(pod).map(|t| t.exit_code), Some(0));
    })
    .await;
}

#[tokio::test]
async fn deleting_a_job_with_background_propagation_garbage_collects_its_pod() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    env.with_temp_ns(|client, ns| async move {
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        jobs.create(
            &PostParams::default(),
            &job("gc", json!({}), json!({}), &["true"]),
        )
        .await
        .unwrap();
        wait_for(
            &jobs,
            "gc",
            "complete",
            |j| has_condition(j, "Complete"),
            TIMEOUT,
        )
        .await
        .unwrap();
        let pod = job_pods(&client, &ns, "gc")
            .await
            .pop()
            .expect("the job's pod");
        let (name, uid) = (pod.metadata.name.unwrap(), pod.metadata.uid.unwrap());

        jobs.delete("gc", &DeleteParams::background())
            .await
            .unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        wait_deleted(&pods, &name, Some(&uid), TIMEOUT)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_pod_labelled_to_fail_fails_its_job_with_exit_code_1() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    env.with_temp_ns(|client, ns| async move {
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let failing = job(
            "bad",
            json!({ "kwok.fleetscore.dev/fail": "true" }),
            json!({}),
            &["true"],
        );
        jobs.create(&PostParams::default(), &failing).await.unwrap();
        wait_for(
            &jobs,
            "bad",
            "fail",
            |j| has_condition(j, "Failed"),
            TIMEOUT,
        )
        .await
        .unwrap();

        let pods = job_pods(&client, &ns, "bad").await;
        assert_eq!(pods.len(), 1, "backoffLimit 0: no retry");
        assert_eq!(phase(&pods[0]), "Failed");
        assert_eq!(terminated(&pods[0]).map(|t| t.exit_code), Some(1));
    })
    .await;
}

#[tokio::test]
async fn a_pod_annotated_to_run_for_two_seconds_stays_running_that_long() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    env.with_temp_ns(|client, ns| async move {
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        let slow = job(
            "slow",
            json!({}),
            json!({ "kwok.fleetscore.dev/run-for": "2s" }),
            &["true"],
        );
        let created = Instant::now();
        jobs.create(&PostParams::default(), &slow).await.unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let running = loop {
            if let Some(pod) = job_pods(&client, &ns, "slow").await.pop()
                && phase(&pod) == "Running"
            {
                break pod;
            }
            assert!(created.elapsed() < TIMEOUT, "the pod never ran");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let name = running.metadata.name.unwrap();
        let started = Instant::now();
        wait_for(
            &pods,
            &name,
            "succeed",
            |p| phase(p) == "Succeeded",
            TIMEOUT,
        )
        .await
        .unwrap();
        // kwok measures from when it saw the pod Running, a little before we did.
        assert!(
            started.elapsed() >= Duration::from_millis(1500),
            "completed after {:?}",
            started.elapsed()
        );
        wait_for(
            &jobs,
            "slow",
            "complete",
            |j| has_condition(j, "Complete"),
            TIMEOUT,
        )
        .await
        .unwrap();
    })
    .await;
}

#[tokio::test]
async fn kubectl_reports_the_servers_version_v1_36() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    let out = env
        .kubectl()
        .args(["version", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl version failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let server = version["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    let client = version["clientVersion"]["gitVersion"]
        .as_str()
        .unwrap_or_default();
    assert!(server.starts_with("v1.36."), "server version {server}");
    assert_eq!(client, server, "kubectl matches the server");
    // The API server itself, through kube-rs.
    let info = env.client.apiserver_version().await.unwrap();
    assert_eq!((info.major.as_str(), info.minor.as_str()), ("1", "36"));
}

#[tokio::test]
async fn helm_version_runs() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    let out = env.helm().args(["version", "--short"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helm version failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("v3."), "helm version printed {text:?}");
}

#[tokio::test]
async fn a_blob_written_to_azurite_with_object_store_reads_back() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    let container = fleetscore_testenv::azurite::unique_container_name("smoke");
    let store = env.azurite_store(&container).await.unwrap();
    let path = StorePath::from("device=1/tag=4/readings.csv");
    let body = Bytes::from_static(b"TS,Device,Tag,Value\n2018-08-28 23:00:05.000,1,4,84.53\n");
    store.put(&path, body.clone().into()).await.unwrap();
    let read = store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(read, body);
    // Creating the container again is fine (tests share names across reruns).
    env.azurite_store(&container).await.unwrap();
}

#[tokio::test]
async fn the_pod_executor_runs_a_local_pod_and_reports_its_exit_code_and_stderr() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    env.with_temp_ns(|client, ns| async move {
        let _executor = PodExecutor::start(client.clone(), &ns, ExecConfig::from_env());
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": { "name": "exit3", "labels": { EXEC_LABEL: EXEC_LOCAL } },
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "main", "image": "busybox",
                    "command": ["/bin/sh", "-c"], "args": ["echo \"about to fail in $(WHERE)\" >&2; exit 3"],
                    "env": [{ "name": "POD", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                            { "name": "WHERE", "value": "pod $(POD)" }]
                }]
            }
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let done = wait_for(&pods, "exit3", "fail", |p| phase(p) == "Failed", TIMEOUT).await.unwrap();
        let state = terminated(&done).expect("a terminated container state");
        assert_eq!(state.exit_code, 3);
        assert_eq!(state.message.as_deref(), Some("about to fail in pod exit3"));
        assert!(done.spec.and_then(|s| s.node_name).is_some_and(|n| n.starts_with("kwok-node-")));
    })
    .await;
}

#[tokio::test]
async fn the_pod_executor_completes_a_job_whose_env_comes_from_a_secret() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    env.with_temp_ns(|client, ns| async move {
        let _executor = PodExecutor::start(client.clone(), &ns, ExecConfig::from_env());
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret: Secret = serde_json::from_value(json!({
            "metadata": { "name": "creds" },
            "stringData": { "AZURE_STORAGE_ACCOUNT_KEY": "s3cret", "OTHER": "x" }
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let mut local = job(
            "local",
            json!({ EXEC_LABEL: EXEC_LOCAL }),
            json!({}),
            &[
                "/bin/sh",
                "-c",
                "test \"$AZURE_STORAGE_ACCOUNT_KEY\" = s3cret && test \"$P_OTHER\" = x",
            ],
        );
        let container = &mut local
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0];
        container.env = Some(vec![serde_json::from_value(json!({
            "name": "AZURE_STORAGE_ACCOUNT_KEY",
            "valueFrom": { "secretKeyRef": { "name": "creds", "key": "AZURE_STORAGE_ACCOUNT_KEY" } }
        }))
        .unwrap()]);
        container.env_from = Some(vec![
            serde_json::from_value(json!({ "prefix": "P_", "secretRef": { "name": "creds" } }))
                .unwrap(),
        ]);
        let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
        jobs.create(&PostParams::default(), &local).await.unwrap();
        let outcome = wait_for(
            &jobs,
            "local",
            "finish",
            |j| has_condition(j, "Complete") || has_condition(j, "Failed"),
            TIMEOUT,
        )
        .await
        .unwrap();
        let pods = job_pods(&client, &ns, "local").await;
        assert!(
            has_condition(&outcome, "Complete"),
            "the job failed; pod states: {:?}",
            pods.iter().map(terminated).collect::<Vec<_>>()
        );
    })
    .await;
}

#[tokio::test]
async fn a_temporary_namespace_is_deleted_after_the_test_body_even_when_it_panics() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen_inside = seen.clone();
    let body = std::panic::AssertUnwindSafe(env.with_temp_ns(|_client, ns| async move {
        *seen_inside.lock().unwrap() = ns;
        panic!("the test body fails");
    }));
    let outcome = futures::FutureExt::catch_unwind(body).await;
    assert!(outcome.is_err(), "the panic is passed on");
    let ns = seen.lock().unwrap().clone();
    assert!(ns.starts_with(fleetscore_testenv::namespace::NAMESPACE_PREFIX));
    // Deleted or being deleted (the namespace controller empties it in the background).
    let gone = namespaces.get_opt(&ns).await.unwrap();
    assert!(
        gone.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "namespace {ns} still active"
    );
}

#[tokio::test]
async fn with_env_runs_a_second_environment_beside_this_one_passes_on_the_exit_code_and_ends_every_process()
 {
    let Some(_env) = TestEnv::for_test().await else {
        return;
    };
    let with_env = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("with-env");
    let script = "echo \"$FLEETSCORE_TESTENV\"; cat \"$FLEETSCORE_TESTENV/pids\"; \
                  kubectl get nodes -o name; exit 7";
    let out = tokio::process::Command::new(with_env)
        .args(["--no-azurite", "--nodes", "1", "--", "sh", "-c", script])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let dir = lines.next().unwrap_or_default().to_owned();
    assert!(
        dir.contains("fleetscore-env."),
        "FLEETSCORE_TESTENV was {dir:?}"
    );
    assert_ne!(
        Some(dir.as_str()),
        std::env::var("FLEETSCORE_TESTENV").ok().as_deref(),
        "a fresh environment"
    );
    let rest: Vec<&str> = lines.collect();
    assert!(rest.contains(&"node/kwok-node-0"), "its own node: {rest:?}");
    assert!(
        !std::path::Path::new(&dir).exists(),
        "{dir} removed on teardown"
    );
    let pids: Vec<u32> = rest
        .iter()
        .filter_map(|l| l.split_once(' ')?.1.parse().ok())
        .collect();
    assert!(
        pids.len() >= 5,
        "etcd, apiserver, controller manager, scheduler, kwok: {rest:?}"
    );
    for pid in pids {
        // Gone, or a zombie waiting for init to reap it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, s)| s.chars().next());
        assert!(
            matches!(state, None | Some(Some('Z' | 'X'))),
            "process {pid} still runs: {stat}"
        );
    }
}
