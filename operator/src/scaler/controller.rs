//! The scaler loop: woken by watches on ScoringRuns, scoring Jobs and their pods, and by a timer
//! (keep-warm end, resync); it computes demand, asks the policy for a size, applies it to the
//! backend (kwok Nodes, an AKS agent pool, or nothing in `none` mode), exports metrics, and
//! writes each run's node-pool report into `status.scaler` under its own field manager.

use super::aks::{AgentPool, AgentPoolRef, ArmClient, ArmError, RetryPolicy};
use super::auth::{Credential, TokenProvider};
use super::kwok::{KwokError, KwokPool, NodeTemplate};
use super::metrics::ScalerMetrics;
use super::policy::UpcomingRun;
use super::policy::{
    self, Decision, PolicyConfig, PolicyError, PolicyInput, PolicyMemory, RunDemand,
};
use super::report::{NodePoolReport, Observation, RunTracker, ScalingCondition};
use crate::crd::run::{ScoringRun, ScoringRunSpec};
use crate::crd::schedule::ScoringSchedule;
use crate::schedule::slots::CronSchedule;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Field manager of the scaler's status writes (the run controller uses its own).
pub const FIELD_MANAGER: &str = "fleetscore-scaler";
/// Label naming a Job's or pod's ScoringRun.
pub const RUN_LABEL: &str = "fleetscore.dev/run";
/// Label on everything the operator creates.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by=fleetscore";
/// AKS's node label naming the agent pool (used to count nodes in `none` mode).
pub const AKS_POOL_LABEL: &str = "kubernetes.azure.com/agentpool";

/// The scaler could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ScalerError {
    /// Bad policy settings.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// AKS mode without the agent pool's coordinates.
    #[error("scaler mode aks needs --aks-subscription, --aks-resource-group and --aks-cluster")]
    MissingAksSettings,
    /// The ARM client could not be built.
    #[error(transparent)]
    Arm(#[from] ArmError),
    /// The HTTP client could not be built.
    #[error("scaler: cannot build the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
    /// A watch stream ended (the API server connection is gone for good).
    #[error("scaler: the {0} watch ended")]
    WatchEnded(&'static str),
}

/// Which backend sizes the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mode {
    /// Report only; the AKS cluster autoscaler (or nobody) sizes the pool.
    #[default]
    None,
    /// Fake kwok Nodes (local runs, tests, demos).
    Kwok,
    /// An AKS agent pool through Azure Resource Manager.
    Aks,
}

impl Mode {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Kwok => "kwok",
            Mode::Aks => "aks",
        }
    }
}

/// AKS coordinates and client settings.
#[derive(Debug, Clone)]
pub struct AksSettings {
    /// The agent pool.
    pub pool: AgentPoolRef,
    /// ARM endpoint (tests: a loopback fake).
    pub endpoint: String,
    /// Token source.
    pub credential: Credential,
    /// Retry limits.
    pub retry: RetryPolicy,
    /// How often the pool is re-read from ARM when nothing happens.
    pub read_interval: Duration,
    /// Wait after a failed scale operation before trying again.
    pub error_backoff: Duration,
}

/// Everything the scaler needs.
#[derive(Debug, Clone)]
pub struct ScalerConfig {
    /// Backend.
    pub mode: Mode,
    /// Pool name (the `fleetscore.dev/pool` label value in kwok mode; AKS agent pool name).
    pub pool: String,
    /// Policy knobs.
    pub policy: PolicyConfig,
    /// Watch only this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// Re-evaluate at least this often.
    pub resync: Duration,
    /// Fake node shape (kwok mode).
    pub kwok: NodeTemplate,
    /// AKS settings (aks mode).
    pub aks: Option<AksSettings>,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        Self {
            mode: Mode::None,
            pool: "scoring".into(),
            policy: PolicyConfig::default(),
            namespace: None,
            resync: Duration::from_secs(15),
            kwok: NodeTemplate::default(),
            aks: None,
        }
    }
}

/// Whether the scaler can act on the pool right now.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scalable {
    ok: bool,
    reason: &'static str,
    message: String,
}

impl Scalable {
    fn yes() -> Self {
        Self {
            ok: true,
            reason: "Scaling",
            message: String::new(),
        }
    }
    fn no(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            ok: false,
            reason,
            message: message.into(),
        }
    }
}

struct AksBackend {
    client: Arc<ArmClient>,
    pool: AgentPoolRef,
    last: Option<(Instant, AgentPool)>,
    in_flight: Option<JoinHandle<Result<AgentPool, ArmError>>>,
    last_error: Option<(Instant, String, &'static str)>,
    read_interval: Duration,
    error_backoff: Duration,
}

enum Backend {
    None {
        nodes: Box<Api<Node>>,
        selector: String,
    },
    Kwok(Box<KwokPool>),
    Aks(Box<AksBackend>),
}

impl Backend {
    /// Current node count and whether we may scale.
    async fn observe(&mut self) -> Result<(u32, Scalable), String> {
        match self {
            Backend::None { nodes, selector } => {
                let list = nodes
                    .list_metadata(&ListParams::default().labels(selector))
                    .await
                    .map_err(|e| format!("cannot list pool nodes: {e}"))?;
                Ok((
                    u32::try_from(list.items.len()).unwrap_or(u32::MAX),
                    Scalable::no(
                        "ModeNone",
                        "scaler mode none: the pool size is left to the AKS cluster autoscaler",
                    ),
                ))
            }
            Backend::Kwok(pool) => {
                let n = pool.list().await.map_err(|e| e.to_string())?.names.len();
                Ok((u32::try_from(n).unwrap_or(u32::MAX), Scalable::yes()))
            }
            Backend::Aks(b) => b.observe().await,
        }
    }

    /// Starts (AKS) or performs (kwok) a resize; returns the count after when known.
    async fn apply(&mut self, desired: u32) -> Result<Option<u32>, KwokError> {
        match self {
            Backend::None { .. } => Ok(None),
            Backend::Kwok(pool) => pool.scale_to(desired).await.map(Some),
            Backend::Aks(b) => {
                if b.in_flight.is_none() {
                    let client = b.client.clone();
                    let pool = b.pool.clone();
                    tracing::info!(pool = %pool.pool, desired, "setting AKS agent pool count");
                    b.in_flight = Some(tokio::spawn(async move {
                        client.set_count(&pool, desired).await
                    }));
                }
                Ok(None)
            }
        }
    }

    fn busy(&self) -> bool {
        matches!(self, Backend::Aks(b) if b.in_flight.is_some()
            || b.last_error.as_ref().is_some_and(|(t, _, _)| t.elapsed() < b.error_backoff))
    }
}

impl AksBackend {
    async fn observe(&mut self) -> Result<(u32, Scalable), String> {
        if let Some(h) = self.in_flight.take_if(|h| h.is_finished()) {
            {
                match h.await {
                    Ok(Ok(pool)) => {
                        self.last_error = None;
                        self.last = Some((Instant::now(), pool));
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "AKS scale operation failed");
                        self.last_error = Some((Instant::now(), e.to_string(), e.code()));
                        self.last = None;
                    }
                    Err(e) => {
                        self.last_error = Some((Instant::now(), e.to_string(), "TaskFailed"));
                    }
                }
            }
        }
        let stale = self
            .last
            .as_ref()
            .is_none_or(|(t, _)| t.elapsed() >= self.read_interval);
        if stale && self.in_flight.is_none() {
            match self.client.get_pool(&self.pool).await {
                Ok(p) => self.last = Some((Instant::now(), p)),
                Err(e) => {
                    let code = e.code();
                    self.last_error = Some((Instant::now(), e.to_string(), code));
                    return Err(e.to_string());
                }
            }
        }
        let Some((_, pool)) = &self.last else {
            return Err("agent pool not read yet".into());
        };
        let scalable = if pool.enable_auto_scaling {
            Scalable::no(
                "ClusterAutoscalerEnabled",
                format!(
                    "agent pool {} has the cluster autoscaler enabled; fleetscore never scales it",
                    self.pool.pool
                ),
            )
        } else if let Some((_, msg, code)) = &self.last_error {
            Scalable::no(code, msg.clone())
        } else if self.in_flight.is_some() {
            Scalable {
                ok: true,
                reason: "Scaling",
                message: "scale operation in progress".into(),
            }
        } else {
            Scalable::yes()
        };
        Ok((pool.count, scalable))
    }
}

/// Builds the backend for `config`.
fn backend(client: &Client, config: &ScalerConfig) -> Result<Backend, ScalerError> {
    Ok(match config.mode {
        Mode::None => Backend::None {
            nodes: Box::new(Api::all(client.clone())),
            selector: format!("{AKS_POOL_LABEL}={}", config.pool),
        },
        Mode::Kwok => Backend::Kwok(Box::new(KwokPool::new(
            client.clone(),
            &config.pool,
            config.kwok.clone(),
        ))),
        Mode::Aks => {
            let s = config.aks.clone().ok_or(ScalerError::MissingAksSettings)?;
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .map_err(ScalerError::Http)?;
            let tokens = TokenProvider::new(s.credential.clone(), http.clone());
            let arm = ArmClient::new(http, &s.endpoint, tokens, s.retry.clone())?;
            Backend::Aks(Box::new(AksBackend {
                client: Arc::new(arm),
                pool: s.pool,
                last: None,
                in_flight: None,
                last_error: None,
                read_interval: s.read_interval,
                error_backoff: s.error_backoff,
            }))
        }
    })
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Starts a reflector for `api` and returns its store; `wake` is notified on every change.
fn reflect<K>(
    api: Api<K>,
    cfg: watcher::Config,
    wake: Arc<Notify>,
    name: &'static str,
) -> (Store<K>, JoinHandle<()>)
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, cfg))
        .default_backoff()
        .touched_objects();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::warn!(watch = name, error = %e, "scaler watch error (retrying)");
            }
            wake.notify_one();
        }
        tracing::error!(watch = name, "scaler watch ended");
    });
    (reader, task)
}

/// `namespace/name`: how the scaler keys runs and schedules (and [`RunDemand::run`]).
fn object_key<K: ResourceExt>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

/// Demand per run, from the runs' status (queued Jobs) and the live Jobs (active ones). Jobs
/// whose run object is missing still count, so hand-made Jobs with the run label get nodes.
pub fn demand(runs: &[Arc<ScoringRun>], jobs: &[Arc<Job>]) -> Vec<RunDemand> {
    let mut active: BTreeMap<String, u32> = BTreeMap::new();
    for j in jobs.iter().filter(|j| !job_finished(j)) {
        if let Some(run) = j.labels().get(RUN_LABEL) {
            *active
                .entry(format!("{}/{run}", j.namespace().unwrap_or_default()))
                .or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for r in runs {
        let key = object_key(&**r);
        let act = active.remove(&key).unwrap_or(0);
        let Some(st) = r.status.as_ref() else {
            out.push(RunDemand {
                run: key,
                queued: 0,
                active: act,
            });
            continue;
        };
        if st.phase.is_some_and(|p| p.is_finished()) {
            if act > 0 {
                out.push(RunDemand {
                    run: key,
                    queued: 0,
                    active: act,
                });
            }
            continue;
        }
        // Only `parallelism` Jobs run at once: the rest of the queue needs no node yet.
        let not_created =
            u32::try_from((st.total_batches - st.next_batch).max(0)).unwrap_or(u32::MAX);
        let room = u32::try_from(r.spec.parallelism.max(1))
            .unwrap_or(1)
            .saturating_sub(act);
        out.push(RunDemand {
            run: key,
            queued: not_created.min(room),
            active: act,
        });
    }
    out.extend(active.into_iter().map(|(run, a)| RunDemand {
        run,
        queued: 0,
        active: a,
    }));
    out
}

/// Jobs a run with this spec will have at once: min(parallelism, batches). `allModels` runs
/// (sensor count known only at run start) count as `parallelism`.
pub fn expected_jobs(spec: &ScoringRunSpec) -> u32 {
    let parallelism = u64::try_from(spec.parallelism.max(1)).unwrap_or(1);
    let per_job = u64::try_from(spec.sensors_per_job.max(1)).unwrap_or(1);
    let sensors = spec.sensors.as_ref().and_then(|s| {
        if let Some(list) = &s.list {
            return Some(list.len() as u64);
        }
        match (&s.devices, &s.tags) {
            (Some(d), Some(t)) => Some(d.len() as u64 * t.len() as u64),
            _ => None,
        }
    });
    let jobs = sensors.map_or(parallelism, |n| n.div_ceil(per_job).min(parallelism));
    u32::try_from(jobs).unwrap_or(u32::MAX)
}

/// The next slot of every active schedule and the size of the run it will create.
pub fn upcoming(schedules: &[Arc<ScoringSchedule>], now: DateTime<Utc>) -> Vec<UpcomingRun> {
    schedules
        .iter()
        .filter(|s| !s.spec.suspend)
        .filter_map(|s| {
            let cron = CronSchedule::parse(&s.spec.schedule, Some(&s.spec.time_zone)).ok()?;
            let at = cron.next_after(now).ok()?;
            Some(UpcomingRun {
                schedule: object_key(&**s),
                at,
                jobs: expected_jobs(&s.spec.run_template.spec),
            })
        })
        .collect()
}

/// A Job is finished once it has a Complete or Failed condition.
pub fn job_finished(j: &Job) -> bool {
    j.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

/// k8s-openapi's `Time` (jiff) as chrono.
fn to_chrono(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> DateTime<Utc> {
    let ts = t.0;
    DateTime::from_timestamp(
        ts.as_second(),
        u32::try_from(ts.subsec_nanosecond()).unwrap_or(0),
    )
    .unwrap_or_default()
}

/// Earliest time one of the run's pods started running.
fn first_pod_running(
    pods: &[Arc<Pod>],
    ns: &str,
    run: &str,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    pods.iter()
        .filter(|p| {
            p.namespace().as_deref() == Some(ns)
                && p.labels().get(RUN_LABEL).map(String::as_str) == Some(run)
        })
        .filter_map(|p| {
            let st = p.status.as_ref()?;
            let started = st
                .container_statuses
                .iter()
                .flatten()
                .filter_map(|c| {
                    let s = c.state.as_ref()?;
                    s.running
                        .as_ref()
                        .and_then(|r| r.started_at.as_ref())
                        .or_else(|| s.terminated.as_ref().and_then(|t| t.started_at.as_ref()))
                })
                .map(to_chrono)
                .min();
            match st.phase.as_deref() {
                Some("Running" | "Succeeded" | "Failed") => Some(started.unwrap_or(now)),
                _ => started,
            }
        })
        .min()
}

/// Runs the scaler until a watch ends for good. Metrics go to `metrics`.
pub async fn run(
    client: Client,
    config: ScalerConfig,
    metrics: ScalerMetrics,
) -> Result<(), ScalerError> {
    config.policy.validate()?;
    let mut backend = backend(&client, &config)?;
    let ns = config.namespace.as_deref();
    let wake = Arc::new(Notify::new());
    let (runs, t1) = reflect(
        api::<ScoringRun>(&client, ns),
        watcher::Config::default(),
        wake.clone(),
        "ScoringRun",
    );
    let (jobs, t2) = reflect(
        api::<Job>(&client, ns),
        watcher::Config::default().labels(MANAGED_BY),
        wake.clone(),
        "Job",
    );
    let (pods, t3) = reflect(
        api::<Pod>(&client, ns),
        watcher::Config::default().labels(RUN_LABEL),
        wake.clone(),
        "Pod",
    );
    // Schedules are watched only for pre-warming, so the scaler runs without their CRD otherwise.
    let schedules = config.policy.prewarm_lead.map(|_| {
        reflect(
            api::<ScoringSchedule>(&client, ns),
            watcher::Config::default(),
            wake.clone(),
            "ScoringSchedule",
        )
    });
    let _ = tokio::join!(
        runs.wait_until_ready(),
        jobs.wait_until_ready(),
        pods.wait_until_ready()
    );
    if let Some((s, _)) = &schedules {
        let _ = s.wait_until_ready().await;
    }
    let schedules = schedules
        .map(|(s, t)| (Some(s), Some(t)))
        .unwrap_or((None, None));
    // The watch tasks go with this future, also when it is aborted.
    let _watches = AbortOnDrop(
        [t1.abort_handle(), t2.abort_handle(), t3.abort_handle()]
            .into_iter()
            .chain(schedules.1.as_ref().map(JoinHandle::abort_handle))
            .collect(),
    );
    tracing::info!(mode = config.mode.as_str(), pool = %config.pool, policy = ?config.policy, "node-pool scaler started");

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let mut state = LoopState::default();
    loop {
        if t1.is_finished() {
            return Err(ScalerError::WatchEnded("ScoringRun"));
        }
        if t2.is_finished() {
            return Err(ScalerError::WatchEnded("Job"));
        }
        if t3.is_finished() {
            return Err(ScalerError::WatchEnded("Pod"));
        }
        if schedules.1.as_ref().is_some_and(JoinHandle::is_finished) {
            return Err(ScalerError::WatchEnded("ScoringSchedule"));
        }
        let stores = Stores {
            runs: &runs,
            jobs: &jobs,
            pods: &pods,
            schedules: schedules.0.as_ref(),
        };
        let recheck = tick(
            &client,
            &recorder,
            &config,
            &mut backend,
            &stores,
            &metrics,
            &mut state,
        )
        .await;
        let mut sleep_for = config.resync;
        if let Some(at) = recheck {
            let until =
                (at - Utc::now()).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(50);
            sleep_for = sleep_for.min(until);
        }
        if backend.busy() {
            sleep_for = sleep_for.min(Duration::from_secs(2));
        }
        tokio::select! {
            _ = wake.notified() => {
                // Let a burst of watch events settle into one decision.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ = tokio::time::sleep(sleep_for) => {}
        }
    }
}

#[derive(Default)]
struct LoopState {
    memory: PolicyMemory,
    trackers: HashMap<String, RunTracker>,
    last_patched: HashMap<String, (NodePoolReport, Instant)>,
    last_logged: Option<(u32, u32, &'static str)>,
    last_scalable: Option<Scalable>,
}

/// Aborts the watch tasks when the scaler stops.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// The watched objects.
struct Stores<'a> {
    runs: &'a Store<ScoringRun>,
    jobs: &'a Store<Job>,
    pods: &'a Store<Pod>,
    schedules: Option<&'a Store<ScoringSchedule>>,
}

async fn tick(
    client: &Client,
    recorder: &Recorder,
    config: &ScalerConfig,
    backend: &mut Backend,
    stores: &Stores<'_>,
    metrics: &ScalerMetrics,
    st: &mut LoopState,
) -> Option<DateTime<Utc>> {
    let now = Utc::now();
    let run_list = stores.runs.state();
    let demand = demand(&run_list, &stores.jobs.state());
    let upcoming = stores
        .schedules
        .map(|s| upcoming(&s.state(), now))
        .unwrap_or_default();
    let (current, scalable) = match backend.observe().await {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %e, "scaler cannot read the pool");
            metrics.errors.inc();
            return None;
        }
    };
    if st.last_scalable.as_ref() != Some(&scalable) {
        if scalable.ok {
            tracing::info!(pool = %config.pool, mode = config.mode.as_str(), "scaler manages the pool size");
        } else if scalable.reason == "ModeNone" {
            // Chosen by the user: nothing to warn about.
            tracing::info!(pool = %config.pool, "scaler leaves the pool size alone: {}", scalable.message);
        } else {
            tracing::warn!(pool = %config.pool, reason = scalable.reason, "scaler does not resize the pool: {}", scalable.message);
            let note = format!(
                "pool {} is not resized by fleetscore: {}",
                config.pool, scalable.message
            );
            announce(
                recorder,
                &run_list,
                &demand,
                EventType::Warning,
                "NodePoolNotScaled",
                note,
            )
            .await;
        }
        st.last_scalable = Some(scalable.clone());
    }
    let input = PolicyInput {
        runs: demand.clone(),
        current_nodes: current,
        upcoming,
    };
    let decision = policy::decide(&config.policy, &input, now, &mut st.memory);
    metrics.observe(current, decision.desired, decision.jobs_needing_node);

    let mut after = current;
    if scalable.ok && decision.desired != current && !backend.busy() {
        tracing::info!(pool = %config.pool, current, "{decision}");
        let result = backend.apply(decision.desired).await;
        let (type_, reason, note) = match &result {
            Ok(_) => {
                metrics.scale_operations.inc();
                let reason = if decision.desired > current {
                    "NodePoolScaledUp"
                } else {
                    "NodePoolScaledDown"
                };
                (
                    EventType::Normal,
                    reason,
                    format!("pool {}: {current} nodes, {decision}", config.pool),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "scaler could not resize the pool");
                metrics.errors.inc();
                let note = format!(
                    "pool {}: resizing {current} -> {} nodes failed: {e}",
                    config.pool, decision.desired
                );
                (EventType::Warning, "NodePoolScaleFailed", note)
            }
        };
        if let Ok(Some(n)) = result {
            after = n;
        }
        announce(recorder, &run_list, &demand, type_, reason, note).await;
        metrics.current.set(i64::from(after));
    } else if st.last_logged != Some((current, decision.desired, decision.reason.code())) {
        tracing::debug!(pool = %config.pool, current, scalable = scalable.ok, "{decision}");
    }
    st.last_logged = Some((current, decision.desired, decision.reason.code()));

    let observed = (current, after);
    update_reports(
        client,
        config,
        metrics,
        &run_list,
        &demand,
        stores.pods,
        observed,
        &decision,
        &scalable,
        st,
        now,
    )
    .await;
    decision.recheck_at
}

/// Publishes a scaler Event on the runs that need nodes now or, when none does (a scale-down),
/// on the run that finished last: `kubectl describe scoringrun` then shows why nodes came and went.
async fn announce(
    recorder: &Recorder,
    runs: &[Arc<ScoringRun>],
    demand: &[RunDemand],
    type_: EventType,
    reason: &str,
    note: String,
) {
    let busy: Vec<&Arc<ScoringRun>> = runs
        .iter()
        .filter(|&r| {
            demand
                .iter()
                .any(|d| d.needs_nodes() && d.run == object_key(&**r))
        })
        .collect();
    let targets = if busy.is_empty() {
        runs.iter()
            .filter_map(|r| Some((r.status.as_ref()?.completion_time.as_ref()?.0, r)))
            .max_by_key(|(t, _)| *t)
            .map(|(_, r)| r)
            .into_iter()
            .collect()
    } else {
        busy
    };
    for r in targets {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.clone()),
            action: "Scale".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &r.object_ref(&())).await {
            tracing::warn!(run = %object_key(&**r), error = %e, "publishing a scaler event failed");
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn update_reports(
    client: &Client,
    config: &ScalerConfig,
    metrics: &ScalerMetrics,
    runs: &[Arc<ScoringRun>],
    demand: &[RunDemand],
    pods: &Store<Pod>,
    (before, nodes): (u32, u32),
    decision: &Decision,
    scalable: &Scalable,
    st: &mut LoopState,
    now: DateTime<Utc>,
) {
    let pod_list = pods.state();
    let busy: Vec<&str> = demand
        .iter()
        .filter(|d| d.needs_nodes())
        .map(|d| d.run.as_str())
        .collect();
    let mut seen = Vec::new();
    for r in runs {
        let ns = r.namespace().unwrap_or_default();
        let name = r.name_any();
        let key = format!("{ns}/{name}");
        let status = r.status.as_ref();
        let finished = status
            .and_then(|s| s.phase)
            .is_some_and(|p| p.is_finished());
        seen.push(key.clone());
        if !st.trackers.contains_key(&key) {
            if finished {
                continue; // finished before we watched it: nothing to report
            }
            let start = status
                .and_then(|s| s.start_time.as_ref())
                .map(to_chrono)
                .or_else(|| r.creation_timestamp().as_ref().map(to_chrono))
                .unwrap_or(now);
            st.trackers
                .insert(key.clone(), RunTracker::new(start, now, before));
        }
        let Some(tracker) = st.trackers.get_mut(&key) else {
            continue;
        };
        if tracker.is_final() {
            continue;
        }
        let finished_at = finished.then(|| {
            status
                .and_then(|s| s.completion_time.as_ref())
                .map_or(now, to_chrono)
        });
        let others_busy = busy.iter().any(|b| *b != key);
        tracker.observe(Observation {
            now,
            nodes,
            first_pod_running: first_pod_running(&pod_list, &ns, &name, now),
            finished_at,
            pool_released: nodes <= config.policy.min_nodes || others_busy,
        });
        let mut report = tracker.report();
        report.pool = config.pool.clone();
        report.mode = config.mode.as_str().into();
        report.reason = decision.reason.code().into();
        report.message = decision.to_string();
        report.scaling = Some(ScalingCondition {
            status: if scalable.ok { "True" } else { "False" }.into(),
            reason: scalable.reason.into(),
            message: scalable.message.clone(),
        });
        let is_final = tracker.is_final();
        let due = match st.last_patched.get(&key) {
            None => true,
            Some((prev, at)) => {
                let mut a = prev.clone();
                a.node_minutes = report.node_minutes;
                a.reason.clone_from(&report.reason);
                a.message.clone_from(&report.message);
                a != report || is_final || at.elapsed() >= Duration::from_secs(30)
            }
        };
        if due {
            let api: Api<ScoringRun> = Api::namespaced(client.clone(), &ns);
            let body = json!({
                "apiVersion": "fleetscore.dev/v1alpha1",
                "kind": "ScoringRun",
                "status": { "scaler": report },
            });
            match api
                .patch_status(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await
            {
                Ok(_) => {
                    if is_final {
                        metrics.observe_run(&report);
                        st.trackers.remove(&key);
                    }
                    st.last_patched
                        .insert(key.clone(), (report, Instant::now()));
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    tracing::warn!(run = %key, error = %e, "cannot write the node-pool report")
                }
            }
        }
    }
    st.trackers.retain(|k, _| seen.contains(k));
    st.last_patched.retain(|k, _| seen.contains(k));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(name: &str, status: serde_json::Value, parallelism: i32) -> Arc<ScoringRun> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "fleetscore.dev/v1alpha1", "kind": "ScoringRun",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"sensors": {"list": [{"device": "1", "tag": "4"}]}, "parallelism": parallelism,
                    "storage": {"models": "m", "data": "d", "output": "o"}},
                "status": status,
            }))
            .unwrap(),
        )
    }

    fn job(run: &str, finished: bool) -> Arc<Job> {
        let conditions = if finished {
            json!([{"type": "Complete", "status": "True"}])
        } else {
            json!([])
        };
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": "j", "namespace": "ns", "labels": {RUN_LABEL: run}},
                "status": {"conditions": conditions},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn queued_jobs_count_only_up_to_the_runs_parallelism() {
        let runs = [run(
            "a",
            json!({"phase": "Running", "totalBatches": 100, "nextBatch": 3}),
            5,
        )];
        let jobs = [job("a", false), job("a", false), job("a", true)];
        let d = demand(&runs, &jobs);
        assert_eq!(
            d,
            vec![RunDemand {
                run: "ns/a".into(),
                queued: 3,
                active: 2
            }]
        );
    }

    #[test]
    fn finished_runs_need_nothing_and_jobs_without_a_run_still_count() {
        let runs = [run(
            "done",
            json!({"phase": "Succeeded", "totalBatches": 4, "nextBatch": 4}),
            5,
        )];
        let jobs = [job("done", true), job("handmade", false)];
        let d = demand(&runs, &jobs);
        assert_eq!(
            d,
            vec![RunDemand {
                run: "ns/handmade".into(),
                queued: 0,
                active: 1
            }]
        );
    }

    #[test]
    fn a_schedules_next_run_is_sized_from_its_sensors_and_parallelism() {
        let spec = |sensors: serde_json::Value, parallelism: i32, per_job: i32| -> ScoringRunSpec {
            serde_json::from_value(json!({"sensors": sensors, "parallelism": parallelism,
                "sensorsPerJob": per_job, "storage": {"models": "m", "data": "d", "output": "o"}}))
            .unwrap()
        };
        assert_eq!(
            expected_jobs(&spec(
                json!({"devices": ["1", "2", "3"], "tags": ["4", "5"]}),
                10,
                1
            )),
            6
        );
        assert_eq!(
            expected_jobs(&spec(
                json!({"devices": ["1", "2", "3"], "tags": ["4", "5"]}),
                10,
                4
            )),
            2
        );
        assert_eq!(
            expected_jobs(&spec(
                json!({"devices": ["1", "2", "3"], "tags": ["4", "5"]}),
                4,
                1
            )),
            4
        );
        assert_eq!(expected_jobs(&spec(json!({"allModels": true}), 7, 1)), 7);
    }
}
