//! The Helm chart (`charts/fleetscore`), checked for real: `helm lint`, the rendered manifests
//! validated by the real API server (server-side dry-run), `helm install` on the test control
//! plane, the operator binary run with the chart's own flags and environment as the chart's
//! ServiceAccount (impersonated, so only the chart's RBAC applies) completing a scoring run, and
//! `helm uninstall` leaving nothing behind but the CRDs.

// Tests may unwrap: a failed unwrap is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use fleetscore_operator::crd::run::ScoringRun;
use fleetscore_operator::crd::schedule::ScoringSchedule;
use fleetscore_testenv::skip::skip_or_fail;
use fleetscore_testenv::{TestEnv, wait_for};
use k8s_openapi::api::batch::v1::Job;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use serde::Deserialize;

/// The repository root (this crate lives in `testenv/`).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chart() -> PathBuf {
    repo().join("charts/fleetscore")
}

/// Value sets every check renders the chart with: defaults, the AKS example, and a namespaced
/// kwok-scaler install with a ServiceMonitor.
fn value_sets(namespace: &str) -> Vec<(&'static str, Vec<String>)> {
    vec![
        ("defaults", vec![]),
        (
            "examples/aks/values.yaml",
            vec![
                "-f".into(),
                repo()
                    .join("examples/aks/values.yaml")
                    .display()
                    .to_string(),
            ],
        ),
        (
            "namespaced kwok scaler",
            vec![
                "--set".into(),
                format!("operator.watchNamespace={namespace}"),
                "--set".into(),
                "scaler.mode=kwok".into(),
                "--set".into(),
                "scorer.storageSecret=fleetscore-storage".into(),
                "--set".into(),
                "metrics.serviceMonitor.enabled=true".into(),
                "--set".into(),
                "metrics.podMonitor.enabled=true".into(),
                "--set".into(),
                "metrics.prometheusRule.enabled=true".into(),
                "--set".into(),
                "metrics.grafanaDashboard.enabled=true".into(),
            ],
        ),
    ]
}

/// helm from `FLEETSCORE_BIN` (the version the project pins), else from `PATH`.
fn helm_binary() -> Option<PathBuf> {
    let from_bin = std::env::var_os("FLEETSCORE_BIN").map(|d| PathBuf::from(d).join("helm"));
    if let Some(p) = from_bin.filter(|p| p.is_file()) {
        return Some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("helm"))
        .find(|p| p.is_file())
}

/// Runs `cmd`, feeding `stdin`, and panics with its output when it fails.
fn run(cmd: &mut Command, stdin: Option<&[u8]>, what: &str) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_charts_crds_are_the_same_bytes_as_the_crds_folder() {
    let read = |dir: PathBuf| -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect()
    };
    let generated = read(repo().join("crds"));
    let in_chart = read(chart().join("crds"));
    assert!(
        !generated.is_empty(),
        "crds/ has no CRDs: run scripts/crdgen"
    );
    let names = |m: &BTreeMap<String, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&generated),
        names(&in_chart),
        "charts/fleetscore/crds/ must hold the same files as crds/: run scripts/crdgen (it copies them)"
    );
    for (name, bytes) in &generated {
        assert!(
            in_chart[name] == *bytes,
            "charts/fleetscore/crds/{name} differs from crds/{name}: run scripts/crdgen (it copies them)"
        );
    }
}

#[test]
fn helm_lint_accepts_the_chart_with_every_example_value_set() {
    let Some(helm) = helm_binary() else {
        skip_or_fail("helm is not built: run testenv/build-binaries and set FLEETSCORE_BIN");
        return;
    };
    for (name, args) in value_sets("fleetscore") {
        let out = run(
            Command::new(&helm)
                .arg("lint")
                .arg("--strict")
                .arg(chart())
                .args(&args),
            None,
            &format!("helm lint --strict with {name}"),
        );
        assert!(
            text(&out).contains("0 chart(s) failed"),
            "helm lint with {name}: {}",
            text(&out)
        );
    }
}

#[test]
fn helm_refuses_values_the_operator_could_not_use() {
    let Some(helm) = helm_binary() else {
        skip_or_fail("helm is not built: run testenv/build-binaries and set FLEETSCORE_BIN");
        return;
    };
    let cases = [
        (
            vec!["scaler.mode=aks"],
            "scaler.subscription is required when scaler.mode=aks",
        ),
        (
            vec!["scaler.mode=autoscale"],
            "value must be one of 'none', 'aks', 'kwok'",
        ),
        (
            vec!["scaler.scaleDownDelay=ten minutes"],
            "/scaler/scaleDownDelay",
        ),
        (vec!["operator.logFormat=xml"], "/operator/logFormat"),
        (
            vec!["serviceAccount.workloadIdentity.enabled=true"],
            "serviceAccount.workloadIdentity.clientId is required",
        ),
    ];
    for (sets, expected) in cases {
        let mut cmd = Command::new(&helm);
        cmd.args(["template", "fs", "--kube-version", "1.36.3"])
            .arg(chart());
        for set in &sets {
            cmd.args(["--set", set]);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "helm template accepted {sets:?}");
        assert!(
            err.contains(expected),
            "helm template with {sets:?}: expected {expected:?} in: {err}"
        );
    }
}

#[tokio::test]
async fn the_rendered_chart_is_accepted_by_the_api_server() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    env.clone()
        .with_temp_ns(|_client, ns| async move {
            for (name, args) in value_sets(&ns) {
                let mut template = env.helm();
                template
                    .args(["template", "fs-dry-run"])
                    .arg(chart())
                    // helm built from source defaults to Kubernetes v1.20 for templates.
                    .args(["--kube-version", "1.36.3"])
                    .args(["--namespace", &ns, "--include-crds"])
                    .args(&args);
                if name == "namespaced kwok scaler" {
                    // The ServiceMonitor kind needs prometheus-operator's CRD, which the test
                    // cluster does not have; render it here but validate it only with lint.
                    template.args(["--set", "metrics.serviceMonitor.enabled=false"]);
                    // So do PodMonitor and PrometheusRule (checked by the monitoring tests below);
                    // the dashboard's ConfigMap stays and is validated here.
                    template.args(["--set", "metrics.podMonitor.enabled=false"]);
                    template.args(["--set", "metrics.prometheusRule.enabled=false"]);
                }
                let manifests = run(&mut template, None, &format!("helm template with {name}"));
                let applied = run(
                    env.kubectl()
                        .args(["apply", "--dry-run=server", "-n", &ns, "-f", "-"]),
                    Some(&manifests.stdout),
                    &format!("kubectl apply --dry-run=server of the chart with {name}"),
                );
                let applied = text(&applied);
                for kind in [
                    "deployment.apps/",
                    "serviceaccount/",
                    "service/",
                    "customresourcedefinition",
                ] {
                    assert!(
                        applied.contains(kind),
                        "{name}: no {kind} in the dry run:\n{applied}"
                    );
                }
            }
        })
        .await;
}

#[tokio::test]
async fn the_aks_examples_are_accepted_by_the_api_server() {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    // The CRDs must be served for a dry run of custom resources; applying the committed files is
    // idempotent (other tests apply the same bytes).
    run(
        env.kubectl()
            .args([
                "apply",
                "--server-side",
                "--force-conflicts",
                "--field-manager=fleetscore-test-crds",
                "-f",
            ])
            .arg(repo().join("crds")),
        None,
        "kubectl apply crds/",
    );
    run(
        env.kubectl().args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/scoringruns.fleetscore.dev",
            "crd/scoringschedules.fleetscore.dev",
        ]),
        None,
        "waiting for the CRDs",
    );
    env.clone()
        .with_temp_ns(|_client, ns| async move {
            let dir = repo().join("examples/aks");
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                // values.yaml is Helm values, not a manifest (helm lint checks it).
                .filter(|p| !p.ends_with("values.yaml"))
                .collect();
            files.sort();
            assert!(
                files.len() >= 5,
                "expected the AKS examples in {}: {files:?}",
                dir.display()
            );
            for file in files {
                // The examples name no namespace: users pick one with `kubectl -n`.
                let out = run(
                    env.kubectl()
                        .args(["apply", "--dry-run=server", "-n", &ns, "-f"])
                        .arg(&file),
                    None,
                    &format!("kubectl apply --dry-run=server -f {}", file.display()),
                );
                assert!(
                    text(&out).contains("(server dry run)"),
                    "{}: {}",
                    file.display(),
                    text(&out)
                );
            }
        })
        .await;
}

/// A free loopback port for the operator's metrics and health server.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `fleetscore` binary built for this test run: `FLEETSCORE_OPERATOR_BIN`, or next to the test
/// binary's directory (`target/<profile>/fleetscore`, built by `cargo test --workspace`).
fn operator_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLEETSCORE_OPERATOR_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    Some(profile_dir.join("fleetscore")).filter(|p| p.is_file())
}

/// The environment's kubeconfig, changed to impersonate `system:serviceaccount:<ns>:<sa>`: the API
/// server then authorises every request against that ServiceAccount's RBAC only.
fn impersonating_kubeconfig(env: &TestEnv, ns: &str, sa: &str, dir: &Path) -> PathBuf {
    let raw = std::fs::read_to_string(env.kubeconfig()).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&raw).unwrap();
    let users = config["users"]
        .as_sequence_mut()
        .expect("kubeconfig has users");
    for user in users {
        let user = user["user"]
            .as_mapping_mut()
            .expect("kubeconfig user is a mapping");
        user.insert(
            "as".into(),
            format!("system:serviceaccount:{ns}:{sa}").into(),
        );
        user.insert(
            "as-groups".into(),
            serde_yaml::Value::Sequence(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}").into(),
                "system:authenticated".into(),
            ]),
        );
    }
    let path = dir.join("kubeconfig-as-operator");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// Kills the operator process when the test ends, also on panic.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The operator pod of the Deployment the chart installed: (ServiceAccount, args, env) as the pod
/// would get them, with `metadata.namespace` field references resolved.
fn operator_pod(manifest: &str, ns: &str) -> (String, Vec<String>, Vec<(String, String)>) {
    let deployment = serde_yaml::Deserializer::from_str(manifest)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "Deployment")
        .expect("the chart installs a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    let service_account = pod["serviceAccountName"]
        .as_str()
        .expect("the pod names its ServiceAccount")
        .to_owned();
    let container = &pod["containers"][0];
    let args = container["args"]
        .as_sequence()
        .expect("the operator container has args")
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let env = container["env"]
        .as_sequence()
        .map(|vars| {
            vars.iter()
                .filter_map(|v| {
                    let name = v["name"].as_str()?.to_owned();
                    if let Some(value) = v["value"].as_str() {
                        return Some((name, value.to_owned()));
                    }
                    let field = v["valueFrom"]["fieldRef"]["fieldPath"].as_str()?;
                    // The downward API, as the kubelet would fill it in for this one "pod".
                    let value = match field {
                        "metadata.namespace" => ns.to_owned(),
                        "metadata.name" => "fleetscore-operator-0".to_owned(),
                        other => panic!("unexpected field reference {other}"),
                    };
                    Some((name, value))
                })
                .collect()
        })
        .unwrap_or_default();
    (service_account, args, env)
}

/// What `helm install` created, listed by the chart's instance label.
fn chart_leftovers(env: &TestEnv, ns: &str, release: &str) -> Vec<String> {
    let selector = format!("app.kubernetes.io/instance={release}");
    let mut left = text(&run(
        env.kubectl().args([
            "get",
            "deployments,services,serviceaccounts,roles,rolebindings,configmaps,secrets",
            "-n",
            ns,
            "-l",
            &selector,
            "-o",
            "name",
        ]),
        None,
        "kubectl get the chart's namespaced objects",
    ));
    left += &text(&run(
        env.kubectl().args([
            "get",
            "clusterroles,clusterrolebindings",
            "-l",
            &selector,
            "-o",
            "name",
        ]),
        None,
        "kubectl get the chart's cluster objects",
    ));
    // Helm's own release record.
    left += &text(&run(
        env.kubectl().args([
            "get",
            "secrets",
            "-n",
            ns,
            "-l",
            &format!("owner=helm,name={release}"),
            "-o",
            "name",
        ]),
        None,
        "kubectl get helm's release secrets",
    ));
    left.lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

/// One operator at a time: a cluster-wide one would also reconcile the namespaced test's runs.
static ONE_OPERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What the RBAC check proves besides a ScoringRun completing.
#[derive(Clone, Copy, PartialEq)]
enum Scope {
    /// Default install (ClusterRole, every namespace), plus a ScoringSchedule creating a run.
    ClusterWideWithSchedule,
    /// `operator.watchNamespace` set to the test namespace (a Role there).
    Namespaced,
}

/// A small ScoringRun spec (kwok-simulated pods, local paths that the pods never read).
fn small_run_spec(store: &Path) -> String {
    format!(
        r#"
  sensors: {{devices: ["1"], tags: ["1", "2", "3"]}}
  storage:
    models: {store}/models
    data: {store}/data
    output: {store}/predictions
  parallelism: 2"#,
        store = store.display()
    )
}

fn assert_succeeded(run: ScoringRun, operator_log: &str) {
    let status = run.status.unwrap_or_default();
    assert_eq!(
        (
            status.phase.map(|p| p.as_str()),
            status.total,
            status.succeeded,
            status.failed
        ),
        (Some("Succeeded"), 3, 3, 0),
        "run status {status:?}\n--- operator log\n{operator_log}"
    );
}

/// Installs the chart, runs the operator binary with the Deployment's own args and env as the
/// chart's ServiceAccount (impersonated), completes a run (and, cluster-wide, a scheduled run),
/// then uninstalls and checks that only the CRDs remain.
async fn install_score_uninstall(scope: Scope) {
    let Some(env) = TestEnv::for_test().await else {
        return;
    };
    let Some(operator) = operator_binary() else {
        skip_or_fail(
            "the fleetscore binary is not built: cargo build -p fleetscore-operator --bin fleetscore \
             (or set FLEETSCORE_OPERATOR_BIN)",
        );
        return;
    };
    let _one = ONE_OPERATOR.lock().await;
    env.clone()
        .with_temp_ns(|client, ns| async move {
            let release = format!("fs-{}", ns.trim_start_matches("fleetscore-test-"));
            let mut install = env.helm();
            install
                .args(["install", &release])
                .arg(chart())
                .args(["--namespace", &ns, "--set", "scorer.storageSecret=fleetscore-storage"]);
            if scope == Scope::Namespaced {
                install.args(["--set", &format!("operator.watchNamespace={ns}")]);
                // Placement defaults for runs that set none; the kwok nodes carry `type: kwok`.
                // Finished Jobs stay a while so their pods' placement can be checked.
                install.args([
                    "--set-json",
                    r#"scorer.nodeSelector={"type":"kwok"}"#,
                    "--set-json",
                    r#"scorer.tolerations=[{"key":"fleetscore.dev/scoring","operator":"Exists","effect":"NoSchedule"}]"#,
                    "--set",
                    "operator.finishedJobTtlSeconds=600",
                ]);
            }
            run(&mut install, None, "helm install");
            let manifest = text(&run(
                env.helm().args(["get", "manifest", &release, "--namespace", &ns]),
                None,
                "helm get manifest",
            ));
            let (service_account, mut args, vars) = operator_pod(&manifest, &ns);
            // Same flags as in the pod, but the health server on loopback only.
            let port = free_port();
            for a in &mut args {
                if a.starts_with("--metrics-addr") {
                    *a = format!("--metrics-addr=127.0.0.1:{port}");
                }
            }
            let work = tempfile::tempdir().unwrap();
            let kubeconfig = impersonating_kubeconfig(&env, &ns, &service_account, work.path());
            let log_path = work.path().join("operator.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let child = Command::new(&operator)
                .args(&args)
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("KUBECONFIG", &kubeconfig)
                .envs(vars)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", operator.display()));
            let mut child = KillOnDrop(child);
            let operator_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

            // The probes the Deployment declares answer.
            let http = reqwest::Client::new();
            for path in ["/healthz", "/readyz", "/metrics"] {
                let url = format!("http://127.0.0.1:{port}{path}");
                let mut ok = false;
                for _ in 0..150 {
                    if let Some(status) = child.0.try_wait().unwrap() {
                        panic!("the operator exited ({status}) with the chart's flags {args:?}:\n{}", operator_log());
                    }
                    if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                        ok = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                assert!(ok, "{url} never answered 2xx:\n{}", operator_log());
            }

            // A small run with kwok-simulated pods: it completes only if every API call the
            // operator makes on the way is allowed by the chart's RBAC.
            let store = work.path().join("store");
            let run_yaml = format!(
                "apiVersion: fleetscore.dev/v1alpha1\nkind: ScoringRun\nmetadata: {{name: rbac-check}}\nspec:{}\n",
                small_run_spec(&store)
            );
            let sr: ScoringRun = serde_yaml::from_str(&run_yaml).unwrap();
            let runs: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
            runs.create(&PostParams::default(), &sr).await.unwrap();
            let finished =
                |r: &ScoringRun| r.status.as_ref().and_then(|s| s.phase).is_some_and(|p| p.is_finished());
            let done = wait_for(&runs, "rbac-check", "finish", finished, Duration::from_secs(180))
                .await
                .unwrap_or_else(|e| panic!("{e}\n--- operator log\n{}", operator_log()));
            assert_succeeded(done, &operator_log());
            if scope == Scope::Namespaced {
                let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
                let list = jobs.list(&ListParams::default().labels("fleetscore.dev/run=rbac-check")).await.unwrap().items;
                assert!(!list.is_empty(), "the run's Jobs are kept for 600 s");
                for job in list {
                    let pod = job.spec.unwrap().template.spec.unwrap();
                    assert_eq!(pod.node_selector, Some(BTreeMap::from([("type".to_string(), "kwok".to_string())])));
                    let tolerations = pod.tolerations.unwrap_or_default();
                    assert_eq!(tolerations.len(), 1, "{tolerations:?}");
                    assert_eq!(tolerations[0].key.as_deref(), Some("fleetscore.dev/scoring"));
                }
            }

            if scope == Scope::ClusterWideWithSchedule {
                // The schedule controller creates a run at the next minute, as the same identity.
                let schedule_yaml = format!(
                    "apiVersion: fleetscore.dev/v1alpha1\nkind: ScoringSchedule\nmetadata: {{name: rbac-every-minute}}\n\
                     spec:\n  schedule: \"* * * * *\"\n  runTemplate:\n    spec:{}\n",
                    small_run_spec(&store).replace("\n  ", "\n      ")
                );
                let schedule: ScoringSchedule = serde_yaml::from_str(&schedule_yaml).unwrap();
                let schedules: Api<ScoringSchedule> = Api::namespaced(client.clone(), &ns);
                schedules.create(&PostParams::default(), &schedule).await.unwrap();
                let lp = ListParams::default().labels("fleetscore.dev/schedule=rbac-every-minute");
                let deadline = tokio::time::Instant::now() + Duration::from_secs(150);
                let scheduled = loop {
                    let list = runs.list(&lp).await.unwrap().items;
                    if let Some(r) = list.into_iter().find(|r| finished(r)) {
                        break r;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no scheduled run finished within 150 s\n--- operator log\n{}",
                        operator_log()
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                };
                assert_succeeded(scheduled, &operator_log());
                schedules.delete("rbac-every-minute", &DeleteParams::default()).await.unwrap();
            }

            // RBAC denials read `... is forbidden: User "system:serviceaccount:..."` (a terminating
            // namespace of another test says "forbidden: unable to create", which is no RBAC gap).
            let log = operator_log();
            assert!(
                !log.contains("is forbidden: User"),
                "the operator hit RBAC denials with the chart's rules:\n{log}"
            );
            drop(child);

            run(env.helm().args(["uninstall", &release, "--namespace", &ns, "--wait"]), None, "helm uninstall");
            let left = chart_leftovers(&env, &ns, &release);
            assert!(left.is_empty(), "helm uninstall left chart objects behind: {left:?}");
            // Helm never deletes a chart's CRDs: the runs users made survive an uninstall.
            for crd in ["scoringruns.fleetscore.dev", "scoringschedules.fleetscore.dev"] {
                run(env.kubectl().args(["get", "crd", crd]), None, &format!("the CRD {crd} after uninstall"));
            }
        })
        .await;
}

#[tokio::test]
async fn the_operator_runs_and_schedules_with_only_the_charts_cluster_rbac_and_uninstall_leaves_only_the_crds()
 {
    install_score_uninstall(Scope::ClusterWideWithSchedule).await;
}

#[tokio::test]
async fn a_namespaced_install_completes_a_run_with_only_its_role() {
    install_score_uninstall(Scope::Namespaced).await;
}

/// `helm template` of the chart with `sets`, as parsed YAML documents.
fn rendered(helm: &Path, sets: &[&str]) -> Vec<serde_yaml::Value> {
    let mut cmd = Command::new(helm);
    cmd.args([
        "template",
        "fs",
        "--kube-version",
        "1.36.3",
        "--namespace",
        "mon",
    ])
    .arg(chart());
    for set in sets {
        cmd.args(["--set", set]);
    }
    let out = run(&mut cmd, None, &format!("helm template with {sets:?}"));
    serde_yaml::Deserializer::from_slice(&out.stdout)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn kind_of(doc: &serde_yaml::Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

const MONITORING: [&str; 3] = [
    "metrics.podMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true",
    "metrics.grafanaDashboard.enabled=true",
];

/// Every metric name the operator exports (run controller, schedule controller, scaler), with
/// the suffixes Prometheus sees: `_total` for counters, `_bucket`/`_sum`/`_count` for histograms.
fn exported_metric_names() -> std::collections::BTreeSet<String> {
    let mut registry = prometheus_client::registry::Registry::default();
    let run = fleetscore_operator::run::metrics::RunMetrics::register(&mut registry);
    let schedule = fleetscore_operator::schedule::metrics::ScheduleMetrics::default();
    schedule.register(&mut registry);
    // Label families are encoded only once they have a child: give each one.
    use fleetscore_operator::run::metrics::{ErrorLabels, OutcomeLabels, ReasonLabels, RunLabels};
    let outcome = OutcomeLabels {
        outcome: "Failed".into(),
    };
    let per_run = RunLabels {
        namespace: "ns".into(),
        run: "r".into(),
    };
    run.runs.get_or_create(&outcome).inc();
    run.sensors.get_or_create(&outcome).inc();
    run.failures
        .get_or_create(&ErrorLabels {
            error: "Kube".into(),
        })
        .inc();
    run.sensor_failures
        .get_or_create(&ReasonLabels {
            reason: "NoModel".into(),
        })
        .inc();
    run.queue_depth.get_or_create(&per_run).set(1);
    run.active_jobs.get_or_create(&per_run).set(1);
    run.write("create", "job");
    schedule.slots("missed", 1);
    fleetscore_operator::scaler::metrics::ScalerMetrics::default().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    assert!(
        names.contains("fleetscore_run_runs_finished_total"),
        "{names:?}"
    );
    names
}

/// The `fleetscore_*` metric names a PromQL expression uses.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("fleetscore_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// A PromQL expression's brackets are balanced (outside quoted strings).
fn balanced(expr: &str) -> bool {
    let mut stack = Vec::new();
    let mut quoted = false;
    for c in expr.chars() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            '(' | '{' | '[' => stack.push(c),
            ')' | '}' | ']' => {
                let open = stack.pop();
                if open
                    != Some(match c {
                        ')' => '(',
                        '}' => '{',
                        _ => '[',
                    })
                {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty() && !quoted
}

#[test]
fn dashboards_and_alerts_are_off_by_default_and_rendered_when_enabled() {
    let Some(helm) = helm_binary() else {
        skip_or_fail("helm is not built: run testenv/build-binaries and set FLEETSCORE_BIN");
        return;
    };
    let defaults = rendered(&helm, &[]);
    for kind in ["PodMonitor", "PrometheusRule", "ServiceMonitor"] {
        assert!(
            !defaults.iter().any(|d| kind_of(d) == kind),
            "{kind} rendered by default"
        );
    }
    assert!(
        !defaults
            .iter()
            .any(|d| d["metadata"]["labels"]["grafana_dashboard"].is_string()),
        "dashboard rendered by default"
    );

    let docs = rendered(&helm, &MONITORING);
    let pm = docs
        .iter()
        .find(|d| kind_of(d) == "PodMonitor")
        .expect("a PodMonitor");
    assert_eq!(pm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(
        pm["spec"]["podMetricsEndpoints"][0]["port"], "http",
        "the container port named http"
    );
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["path"], "/metrics");
    assert_eq!(
        pm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
        "operator"
    );
    let deployment = docs.iter().find(|d| kind_of(d) == "Deployment").unwrap();
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(
            &pod_labels[k], v,
            "the PodMonitor selects the operator pod ({k:?})"
        );
    }

    let cm = docs
        .iter()
        .find(|d| kind_of(d) == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("a dashboard ConfigMap with the sidecar's label");
    let dashboard: serde_json::Value =
        serde_json::from_str(cm["data"]["fleetscore.json"].as_str().unwrap())
            .expect("the dashboard is JSON");
    let titles: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in [
        "Runs finished by phase",
        "Sensors scored per hour",
        "Failures by reason",
        "Schedule slots",
        "Node-pool size",
        "Node-minutes per run",
    ] {
        assert!(
            titles.iter().any(|t| t.starts_with(want)),
            "no panel {want:?} in {titles:?}"
        );
    }
    let exported = exported_metric_names();
    for panel in dashboard["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} has queries", panel["title"]);
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(balanced(expr), "{expr}");
            let used = metrics_in(expr);
            assert!(!used.is_empty(), "{expr} uses a fleetscore metric");
            for m in used {
                assert!(
                    exported.contains(&m),
                    "dashboard panel {}: {m} is not exported by the operator ({exported:?})",
                    panel["title"]
                );
            }
        }
    }
}

/// Alert rules, checked against the Prometheus rule-file schema: promtool cannot be built here
/// (`go install github.com/prometheus/prometheus/cmd/promtool@v0.306.0` is refused, the module's
/// go.mod has replace directives), so the test checks what promtool's `check rules` would: names,
/// durations, labels and annotations, balanced expressions, and only metrics the operator exports.
#[test]
fn the_alert_rules_follow_the_rule_schema_and_use_only_exported_metrics() {
    let Some(helm) = helm_binary() else {
        skip_or_fail("helm is not built: run testenv/build-binaries and set FLEETSCORE_BIN");
        return;
    };
    let docs = rendered(&helm, &MONITORING);
    let rule = docs
        .iter()
        .find(|d| kind_of(d) == "PrometheusRule")
        .expect("a PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    let exported = exported_metric_names();
    let duration = |s: &str| {
        !s.is_empty()
            && s.split_inclusive(|c: char| c.is_ascii_alphabetic())
                .all(|part| {
                    let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                    let unit = &part[digits.len()..];
                    !digits.is_empty()
                        && digits.chars().all(|c| c.is_ascii_digit())
                        && ["ms", "s", "m", "h", "d", "w", "y", ""].contains(&unit)
                })
    };
    let mut alerts = Vec::new();
    let groups = rule["spec"]["groups"].as_sequence().expect("spec.groups");
    assert!(!groups.is_empty());
    for group in groups {
        assert!(
            group["name"].as_str().is_some_and(|n| !n.is_empty()),
            "group name"
        );
        for r in group["rules"].as_sequence().expect("rules") {
            let map = r.as_mapping().unwrap();
            for key in map.keys() {
                let key = key.as_str().unwrap();
                assert!(
                    [
                        "alert",
                        "expr",
                        "for",
                        "keep_firing_for",
                        "labels",
                        "annotations"
                    ]
                    .contains(&key),
                    "unknown rule field {key}"
                );
            }
            let name = r["alert"].as_str().expect("an alerting rule has a name");
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
            let expr = r["expr"].as_str().expect("expr").trim();
            assert!(!expr.is_empty() && balanced(expr), "{name}: {expr}");
            assert!(
                !expr.contains("{{"),
                "{name}: Helm left a template in {expr}"
            );
            if let Some(f) = r["for"].as_str() {
                assert!(duration(f), "{name}: for {f:?}");
            }
            for (k, v) in r["labels"].as_mapping().unwrap() {
                assert!(k.is_string() && v.is_string(), "{name}: labels are strings");
            }
            assert!(
                ["critical", "warning", "info"]
                    .contains(&r["labels"]["severity"].as_str().unwrap()),
                "{name}: severity"
            );
            assert!(
                r["annotations"]["summary"]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{name}: summary"
            );
            let desc = r["annotations"]["description"].as_str().unwrap();
            assert!(
                desc.matches("{{").count() == desc.matches("}}").count(),
                "{name}: {desc}"
            );
            for m in metrics_in(expr) {
                assert!(
                    exported.contains(&m),
                    "alert {name}: {m} is not exported by the operator"
                );
            }
            assert!(
                expr.contains("namespace=\"mon\""),
                "{name} is scoped to the release namespace: {expr}"
            );
            alerts.push(name.to_string());
        }
    }
    for want in [
        "FleetscoreRunFailed",
        "FleetscoreRunPartiallySucceeded",
        "FleetscoreScheduleMissedSlots",
        "FleetscoreScalerFailing",
        "FleetscoreOperatorNotReady",
    ] {
        assert!(
            alerts.iter().any(|a| a == want),
            "no alert {want} in {alerts:?}"
        );
    }
    let not_ready = &groups[0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| r["alert"] == "FleetscoreOperatorNotReady")
        .unwrap()["expr"];
    assert!(
        not_ready
            .as_str()
            .unwrap()
            .contains("job=~\"fs-fleetscore-metrics|mon/fs-fleetscore\""),
        "{not_ready:?}: the ServiceMonitor's and PodMonitor's job names"
    );
}
