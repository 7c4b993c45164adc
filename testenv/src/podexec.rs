//! The pod executor: runs pods labelled `fleetscore.dev/exec=local` as local processes.
//!
//! kwok only pretends pods run. For end-to-end tests the executor plays the kubelet for pods that
//! carry the label (kwok's stages leave them alone): once a pod is bound to a node it runs the
//! first container's command and args, with its environment, as a local process, and writes the
//! pod status Running, then Succeeded or Failed with the exit code and the last lines of stderr.
//! A command `fleetscore-scorer` (or none, as the scorer image's entrypoint) maps to the scorer
//! binary built by cargo. Deleting the pod kills the process. Containers run once (no restarts).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::Stdio;
use std::sync::Arc;

use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Pod, Secret};
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;

use crate::azurite::AzuriteSettings;

/// Label key that hands a pod to the executor (and hides it from kwok's stages).
pub const EXEC_LABEL: &str = "fleetscore.dev/exec";
/// Label value that hands a pod to the executor.
pub const EXEC_LOCAL: &str = "local";
/// The scorer's command name, mapped to [`ExecConfig::scorer_bin`].
pub const SCORER_COMMAND: &str = "fleetscore-scorer";
/// Lines of stderr (or stdout, when stderr is empty) copied into the terminated state's message.
const TAIL_LINES: usize = 20;
/// Variables passed through from the test process, like a node's basic environment.
const PASSED_THROUGH: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "LANG",
];

/// Why a pod could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PodExecError {
    /// The pod has no containers.
    #[error("pod {pod} has no containers")]
    NoContainer {
        /// Namespace/name of the pod.
        pod: String,
    },
    /// Neither command nor args are given (an image's entrypoint cannot be known).
    #[error("container {container} of pod {pod} has neither command nor args")]
    NoCommand {
        /// Namespace/name of the pod.
        pod: String,
        /// The container.
        container: String,
    },
    /// An environment variable could not be resolved.
    #[error("pod {pod}: environment variable {var}: {reason}")]
    Env {
        /// Namespace/name of the pod.
        pod: String,
        /// The variable (or envFrom source).
        var: String,
        /// What went wrong.
        reason: String,
    },
    /// The process could not be started.
    #[error("pod {pod}: cannot start {program}: {source}")]
    Spawn {
        /// Namespace/name of the pod.
        pod: String,
        /// The program.
        program: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The process's working directory or log files could not be made.
    #[error("pod {pod}: cannot prepare {path}: {source}")]
    Io {
        /// Namespace/name of the pod.
        pod: String,
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

/// What the executor needs besides the pods.
#[derive(Clone, Debug)]
pub struct ExecConfig {
    /// Binary run for the command `fleetscore-scorer` (and for containers with args only).
    pub scorer_bin: PathBuf,
    /// Variables every process gets, before the pod's own env (which wins on conflicts).
    pub extra_env: Vec<(String, String)>,
    /// Where to keep each pod's full output as `<namespace>_<pod>.stdout|.stderr`
    /// (`None`: a temp dir removed when the pod ends).
    pub log_dir: Option<PathBuf>,
}

impl ExecConfig {
    /// The usual configuration: [`default_scorer_bin`], Azurite's variables from this process's
    /// environment (so scorer pods reach the test Azurite) and logs in the test environment's
    /// `logs/pods` directory when there is one.
    pub fn from_env() -> ExecConfig {
        ExecConfig {
            scorer_bin: default_scorer_bin(),
            extra_env: AzuriteSettings::from_env()
                .map(|a| a.env_vars())
                .unwrap_or_default(),
            log_dir: std::env::var_os(crate::env::TESTENV_VAR)
                .filter(|d| !d.is_empty())
                .map(|d| PathBuf::from(d).join("logs").join("pods")),
        }
    }
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig::from_env()
    }
}

/// The scorer binary: `FLEETSCORE_SCORER_BIN`, else `$CARGO_TARGET_DIR/debug/fleetscore-scorer`,
/// else the workspace's `target/debug/fleetscore-scorer`.
pub fn default_scorer_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("FLEETSCORE_SCORER_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|t| !t.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    target.join("debug").join(SCORER_COMMAND)
}

/// A running executor; stops (killing its processes) when stopped or dropped.
#[derive(Debug)]
pub struct PodExecutor {
    task: tokio::task::JoinHandle<()>,
}

impl PodExecutor {
    /// Starts executing the labelled pods of `namespace` on the current tokio runtime.
    pub fn start(client: Client, namespace: &str, config: ExecConfig) -> PodExecutor {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        PodExecutor {
            task: tokio::spawn(watch_pods(client, pods, config)),
        }
    }

    /// Starts executing the labelled pods of every namespace.
    pub fn start_all_namespaces(client: Client, config: ExecConfig) -> PodExecutor {
        let pods: Api<Pod> = Api::all(client.clone());
        PodExecutor {
            task: tokio::spawn(watch_pods(client, pods, config)),
        }
    }

    /// Stops watching and kills the processes still running.
    pub fn stop(self) {
        // Drop does the work.
    }
}

impl Drop for PodExecutor {
    fn drop(&mut self) {
        // Aborting drops the JoinSet of pod tasks, whose children are kill_on_drop.
        self.task.abort();
    }
}

async fn watch_pods(client: Client, pods: Api<Pod>, config: ExecConfig) {
    let config = Arc::new(config);
    let parallel = std::thread::available_parallelism().map_or(4, |n| n.get().max(4));
    let slots = Arc::new(Semaphore::new(parallel));
    let selector = format!("{EXEC_LABEL}={EXEC_LOCAL}");
    let mut events = pin!(
        watcher(pods, watcher::Config::default().labels(&selector))
            .default_backoff()
            .applied_objects()
    );
    let mut started: HashSet<String> = HashSet::new();
    let mut cancels: HashMap<String, oneshot::Sender<()>> = HashMap::new();
    let mut tasks: JoinSet<String> = JoinSet::new();
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(pod)) => {
                    let uid = pod.metadata.uid.clone().unwrap_or_default();
                    if pod.metadata.deletion_timestamp.is_some() {
                        if let Some(cancel) = cancels.remove(&uid) {
                            let _ = cancel.send(());
                        }
                        continue;
                    }
                    if !should_start(&pod) || !started.insert(uid.clone()) {
                        continue;
                    }
                    let (cancel_tx, cancel_rx) = oneshot::channel();
                    cancels.insert(uid.clone(), cancel_tx);
                    let (client, config, slots) = (client.clone(), config.clone(), slots.clone());
                    tasks.spawn(async move {
                        // Holding a slot keeps the pod Pending, as a full node would.
                        let _slot = slots.acquire_owned().await;
                        run_pod(client, pod, &config, cancel_rx).await;
                        uid
                    });
                }
                Some(Err(e)) => tracing::warn!("pod executor: watch error (retrying): {e}"),
                None => break,
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(uid) = done {
                    cancels.remove(&uid);
                }
            }
        }
    }
}

/// A pod is started once: when bound to a node and not yet running or finished.
fn should_start(pod: &Pod) -> bool {
    let bound = pod.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    bound && matches!(phase, None | Some("Pending"))
}

/// A process ready to start.
struct Launch {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    container: Container,
}

async fn run_pod(client: Client, pod: Pod, config: &ExecConfig, cancel: oneshot::Receiver<()>) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let id = format!("{ns}/{name}");
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let started_at = now();
    let launch = match prepare(&client, &pod, &id, config).await {
        Ok(launch) => launch,
        Err(e) => {
            let container = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.first().cloned())
                .unwrap_or_default();
            let status = terminated_status(
                &container,
                128,
                "StartError",
                &e.to_string(),
                &started_at,
                "",
            );
            patch_status(&api, &name, status).await;
            return;
        }
    };
    let outcome = execute(&id, &launch, config, &api, &name, &started_at, cancel).await;
    let (code, message, container_id) = match outcome {
        Ok(Some(done)) => done,
        Ok(None) => return, // deleted while running: the pod is going away, no status to write
        Err(e) => (128, e.to_string(), String::new()),
    };
    let reason = if code == 0 { "Completed" } else { "Error" };
    let status = terminated_status(
        &launch.container,
        code,
        reason,
        &message,
        &started_at,
        &container_id,
    );
    patch_status(&api, &name, status).await;
}

/// Runs the process; `Ok(None)` when the pod was deleted meanwhile (process killed).
async fn execute(
    id: &str,
    launch: &Launch,
    config: &ExecConfig,
    api: &Api<Pod>,
    name: &str,
    started_at: &str,
    cancel: oneshot::Receiver<()>,
) -> Result<Option<(i32, String, String)>, PodExecError> {
    let io_err = |path: &Path| {
        let (pod, path) = (id.to_owned(), path.to_owned());
        move |source| PodExecError::Io { pod, path, source }
    };
    let workdir = tempfile::Builder::new()
        .prefix("fleetscore-pod-")
        .tempdir()
        .map_err(io_err(Path::new("a temp dir")))?;
    let log_dir = config
        .log_dir
        .clone()
        .unwrap_or_else(|| workdir.path().to_owned());
    std::fs::create_dir_all(&log_dir).map_err(io_err(&log_dir))?;
    let base = log_dir.join(id.replace('/', "_"));
    let (out_path, err_path) = (base.with_extension("stdout"), base.with_extension("stderr"));
    let stdout = std::fs::File::create(&out_path).map_err(io_err(&out_path))?;
    let stderr = std::fs::File::create(&err_path).map_err(io_err(&err_path))?;
    let cwd = match launch.container.working_dir.as_deref() {
        Some(dir) if Path::new(dir).is_dir() => PathBuf::from(dir),
        _ => workdir.path().to_owned(),
    };

    let mut child = tokio::process::Command::new(&launch.program)
        .args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| PodExecError::Spawn {
            pod: id.to_owned(),
            program: launch.program.clone(),
            source,
        })?;
    let container_id = format!("local://{}", child.id().unwrap_or_default());
    patch_status(
        api,
        name,
        running_status(&launch.container, started_at, &container_id),
    )
    .await;
    tracing::debug!(
        "pod executor: {id} runs {} as {container_id}",
        launch.program.display()
    );

    let status = tokio::select! {
        status = child.wait() => status,
        _ = cancel => {
            let _ = child.kill().await;
            return Ok(None);
        }
    };
    let code = match status {
        Ok(status) => exit_code(status),
        Err(e) => {
            return Ok(Some((
                128,
                format!("waiting for the process failed: {e}"),
                container_id,
            )));
        }
    };
    let mut message = tail(&err_path);
    if message.is_empty() {
        message = tail(&out_path);
    }
    Ok(Some((code, message, container_id)))
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(128)
}

/// The last [`TAIL_LINES`] lines of a file (empty when unreadable).
fn tail(path: &Path) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

async fn prepare(
    client: &Client,
    pod: &Pod,
    id: &str,
    config: &ExecConfig,
) -> Result<Launch, PodExecError> {
    let spec = pod.spec.as_ref();
    let container = spec
        .and_then(|s| s.containers.first())
        .cloned()
        .ok_or_else(|| PodExecError::NoContainer { pod: id.to_owned() })?;
    let mut env: Vec<(String, String)> = PASSED_THROUGH
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| ((*k).to_owned(), v)))
        .collect();
    env.extend(config.extra_env.iter().cloned());
    let pod_env = resolve_env(client, pod, &container, id).await?;
    env.extend(pod_env.iter().cloned());
    // Later entries win, as in a container; keep the last value of each name.
    let env: Vec<(String, String)> = env
        .into_iter()
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect();
    let lookup: HashMap<&str, &str> = pod_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let command: Vec<String> = container.command.clone().unwrap_or_default();
    let args: Vec<String> = container.args.clone().unwrap_or_default();
    let mut argv: Vec<String> = if command.is_empty() {
        if args.is_empty() {
            return Err(PodExecError::NoCommand {
                pod: id.to_owned(),
                container: container.name.clone(),
            });
        }
        // The scorer image's entrypoint is the scorer.
        std::iter::once(SCORER_COMMAND.to_owned())
            .chain(args)
            .collect()
    } else {
        command.into_iter().chain(args).collect()
    };
    for arg in &mut argv {
        *arg = expand(arg, &lookup);
    }
    let first = argv.remove(0);
    let program = if Path::new(&first)
        .file_name()
        .is_some_and(|n| n == SCORER_COMMAND)
    {
        config.scorer_bin.clone()
    } else {
        PathBuf::from(first)
    };
    Ok(Launch {
        program,
        args: argv,
        env,
        container,
    })
}

/// The container's environment: `envFrom` sources, then `env` entries (later ones win).
async fn resolve_env(
    client: &Client,
    pod: &Pod,
    container: &Container,
    id: &str,
) -> Result<Vec<(String, String)>, PodExecError> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let env_err = |var: &str, reason: String| PodExecError::Env {
        pod: id.to_owned(),
        var: var.to_owned(),
        reason,
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        if let Some(r) = &source.secret_ref {
            match secret_data(&secrets, &r.name)
                .await
                .map_err(|e| env_err(&r.name, e))?
            {
                Some(data) => {
                    out.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)))
                }
                None if r.optional == Some(true) => {}
                None => return Err(env_err(&r.name, format!("Secret {} not found", r.name))),
            }
        }
        if let Some(r) = &source.config_map_ref {
            match config_map_data(&config_maps, &r.name)
                .await
                .map_err(|e| env_err(&r.name, e))?
            {
                Some(data) => {
                    out.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)))
                }
                None if r.optional == Some(true) => {}
                None => return Err(env_err(&r.name, format!("ConfigMap {} not found", r.name))),
            }
        }
    }
    for var in container.env.iter().flatten() {
        let known: HashMap<&str, &str> =
            out.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        if let Some(value) = env_value(var, pod, &known, &secrets, &config_maps)
            .await
            .map_err(|e| env_err(&var.name, e))?
        {
            out.push((var.name.clone(), value));
        }
    }
    Ok(out)
}

/// One `env` entry's value; `None` for a missing optional reference.
async fn env_value(
    var: &EnvVar,
    pod: &Pod,
    known: &HashMap<&str, &str>,
    secrets: &Api<Secret>,
    config_maps: &Api<ConfigMap>,
) -> Result<Option<String>, String> {
    let Some(from) = &var.value_from else {
        return Ok(Some(expand(
            var.value.as_deref().unwrap_or_default(),
            known,
        )));
    };
    if let Some(r) = &from.secret_key_ref {
        let data = secret_data(secrets, &r.name).await?;
        return match data.and_then(|d| d.get(&r.key).cloned()) {
            Some(v) => Ok(Some(v)),
            None if r.optional == Some(true) => Ok(None),
            None => Err(format!("key {} of Secret {} not found", r.key, r.name)),
        };
    }
    if let Some(r) = &from.config_map_key_ref {
        let data = config_map_data(config_maps, &r.name).await?;
        return match data.and_then(|d| d.get(&r.key).cloned()) {
            Some(v) => Ok(Some(v)),
            None if r.optional == Some(true) => Ok(None),
            None => Err(format!("key {} of ConfigMap {} not found", r.key, r.name)),
        };
    }
    if let Some(r) = &from.field_ref {
        return field_value(pod, &r.field_path)
            .map(Some)
            .ok_or_else(|| format!("unsupported fieldRef {}", r.field_path));
    }
    Err("only value, secretKeyRef, configMapKeyRef and fieldRef are supported".to_owned())
}

fn field_value(pod: &Pod, path: &str) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_key = |prefix: &str| {
        path.strip_prefix(prefix)?
            .strip_suffix("']")
            .map(str::to_owned)
    };
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.hostIP" | "status.podIP" => Some("127.0.0.1".to_owned()),
        _ => {
            if let Some(k) = map_key("metadata.labels['") {
                return Some(meta.labels.as_ref()?.get(&k).cloned().unwrap_or_default());
            }
            let k = map_key("metadata.annotations['")?;
            Some(
                meta.annotations
                    .as_ref()?
                    .get(&k)
                    .cloned()
                    .unwrap_or_default(),
            )
        }
    }
}

async fn secret_data(
    api: &Api<Secret>,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let secret = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading Secret {name}: {e}"))?;
    Ok(secret.map(|s| {
        let mut data: BTreeMap<String, String> = s.string_data.unwrap_or_default();
        for (k, v) in s.data.unwrap_or_default() {
            data.insert(k, String::from_utf8_lossy(&v.0).into_owned());
        }
        data
    }))
}

async fn config_map_data(
    api: &Api<ConfigMap>,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>, String> {
    let cm = api
        .get_opt(name)
        .await
        .map_err(|e| format!("reading ConfigMap {name}: {e}"))?;
    Ok(cm.map(|c| c.data.unwrap_or_default()))
}

/// Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$` is a literal `$`, and
/// unknown references stay as written.
fn expand(input: &str, vars: &HashMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn running_status(
    container: &Container,
    started_at: &str,
    container_id: &str,
) -> serde_json::Value {
    json!({
        "phase": "Running",
        "startTime": started_at,
        "hostIP": "127.0.0.1",
        "conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": started_at},
            {"type": "Ready", "status": "True", "lastTransitionTime": started_at},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": started_at},
        ],
        "containerStatuses": [{
            "name": container.name,
            "image": container.image.clone().unwrap_or_default(),
            "imageID": "",
            "containerID": container_id,
            "ready": true,
            "started": true,
            "restartCount": 0,
            "state": {"running": {"startedAt": started_at}},
        }],
    })
}

fn terminated_status(
    container: &Container,
    exit_code: i32,
    reason: &str,
    message: &str,
    started_at: &str,
    container_id: &str,
) -> serde_json::Value {
    let finished_at = now();
    let phase = if exit_code == 0 {
        "Succeeded"
    } else {
        "Failed"
    };
    json!({
        "phase": phase,
        "startTime": started_at,
        "hostIP": "127.0.0.1",
        "conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": started_at},
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished_at},
            {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": finished_at},
        ],
        "containerStatuses": [{
            "name": container.name,
            "image": container.image.clone().unwrap_or_default(),
            "imageID": "",
            "containerID": container_id,
            "ready": false,
            "started": false,
            "restartCount": 0,
            "state": {"terminated": {
                "exitCode": exit_code,
                "reason": reason,
                "message": message,
                "startedAt": started_at,
                "finishedAt": finished_at,
                "containerID": container_id,
            }},
        }],
    })
}

async fn patch_status(api: &Api<Pod>, name: &str, status: serde_json::Value) {
    // Strategic merge keeps conditions we do not mention (PodScheduled) and merges by type.
    let patch = Patch::Strategic(json!({ "status": status }));
    if let Err(e) = api
        .patch_status(name, &PatchParams::default(), &patch)
        .await
    {
        tracing::warn!("pod executor: cannot update the status of pod {name}: {e}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn vars() -> HashMap<&'static str, &'static str> {
        [("RUN", "r1"), ("OUT", "az://out")].into()
    }

    #[test]
    fn variable_references_expand_like_kubernetes() {
        assert_eq!(expand("--run-id=$(RUN)", &vars()), "--run-id=r1");
        assert_eq!(expand("$(OUT)/$(RUN)", &vars()), "az://out/r1");
        assert_eq!(
            expand("$(MISSING) $$(RUN) $5", &vars()),
            "$(MISSING) $(RUN) $5"
        );
        assert_eq!(expand("trailing $", &vars()), "trailing $");
        assert_eq!(expand("$(unclosed", &vars()), "$(unclosed");
    }

    #[test]
    fn only_bound_pending_pods_are_started() {
        let mut pod = Pod::default();
        assert!(!should_start(&pod), "unbound");
        pod.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some("kwok-node-0".into()),
            ..Default::default()
        });
        assert!(should_start(&pod));
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        });
        assert!(!should_start(&pod), "already running");
    }

    #[test]
    fn the_scorer_command_and_bare_args_map_to_the_scorer_binary() {
        let container = |command: Option<Vec<&str>>, args: Vec<&str>| Container {
            name: "c".into(),
            command: command.map(|c| c.into_iter().map(String::from).collect()),
            args: Some(args.into_iter().map(String::from).collect()),
            ..Default::default()
        };
        let config = ExecConfig {
            scorer_bin: "/bin/scorer".into(),
            extra_env: vec![],
            log_dir: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        crate::env::install_crypto_provider();
        // No API calls happen for containers without env sources, so any client config works.
        let client = rt.block_on(async {
            let cfg = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
            Client::try_from(cfg).unwrap()
        });
        let pod_with = |c: Container| Pod {
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                containers: vec![c],
                ..Default::default()
            }),
            ..Default::default()
        };
        let launch = rt
            .block_on(prepare(
                &client,
                &pod_with(container(Some(vec!["fleetscore-scorer"]), vec!["score"])),
                "ns/p",
                &config,
            ))
            .unwrap();
        assert_eq!(launch.program, PathBuf::from("/bin/scorer"));
        assert_eq!(launch.args, vec!["score"]);
        let launch = rt
            .block_on(prepare(
                &client,
                &pod_with(container(None, vec!["score", "--all"])),
                "ns/p",
                &config,
            ))
            .unwrap();
        assert_eq!(launch.program, PathBuf::from("/bin/scorer"));
        assert_eq!(launch.args, vec!["score", "--all"]);
        let launch = rt
            .block_on(prepare(
                &client,
                &pod_with(container(Some(vec!["/bin/sh", "-c"]), vec!["exit 3"])),
                "ns/p",
                &config,
            ))
            .unwrap();
        assert_eq!(launch.program, PathBuf::from("/bin/sh"));
        let err = rt
            .block_on(prepare(
                &client,
                &pod_with(container(None, vec![])),
                "ns/p",
                &config,
            ))
            .err();
        assert!(matches!(err, Some(PodExecError::NoCommand { .. })));
    }
}
