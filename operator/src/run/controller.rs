//! The ScoringRun controller's IO: `reconcile` reads fresh (`observe`), hands everything to the
//! pure [`super::decide`], then applies the decision in the order documented there. A finished
//! run only has its summary written (again, until it lands) and rerun requests handled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleetscore_scorer::output::{Outcome, SensorRecord};
use fleetscore_scorer::sensor::SensorId;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn};

use super::context::Context;
use super::decide::{self, Observed, PrepareState, RunDecision, Settings};
use super::jobs::{self, MANAGED_BY, MANAGED_BY_LABEL, ROLE_LABEL, ROLE_SCORE, RUN_LABEL};
use super::metrics::{OutcomeLabels, ReasonLabels, RunLabels};
use super::naming;
use super::plan::{self, BatchSet, Layout, QueueError};
use crate::crd::run::{
    FailedSensor, Phase, RERUN_ANNOTATION, ScoringRun, ScoringRunSpec, ScoringRunStatus, SensorRef,
};
use crate::kit::{self, RUN_MANAGER};

/// API calls one reconcile makes at once (Job creates, recorded markers).
const API_CONCURRENCY: usize = 16;
/// Sensor lists longer than this (in bytes) are kept in the run's storage, not in a ConfigMap
/// (whose limit is 1 MiB including metadata).
const MAX_CONFIGMAP_LIST: usize = 900 * 1024;

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The run's spec or its references cannot work; the run is marked Failed.
    #[error("{0}")]
    Invalid(String),
    /// Storage could not be read or written; retried with backoff.
    #[error("{0}")]
    Storage(String),
    /// The status could not be read.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The object has no namespace or name.
    #[error("ScoringRun without namespace or name")]
    MissingObjectKey,
}

impl RunError {
    /// Stable name for metrics and events.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube { source, .. } if kit::is_conflict(source) => "Conflict",
            Self::Kube { .. } => "Kube",
            Self::Invalid(_) => "Invalid",
            Self::Storage(_) => "Storage",
            Self::Queue(_) => "Queue",
            Self::MissingObjectKey => "MissingObjectKey",
        }
    }
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> RunError {
    let action = action.into();
    move |source| RunError::Kube { action, source }
}

/// Runs the ScoringRun controller until the stream ends (shutdown signal) or the task is
/// aborted.
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let (runs, jobs): (Api<ScoringRun>, Api<Job>) = match &ctx.config.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    let job_watch = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let config = ControllerConfig::default()
        .debounce(ctx.config.debounce)
        .concurrency(8);
    let controller = Controller::new(runs, watcher::Config::default().any_semantic())
        .owns(jobs, job_watch.any_semantic())
        .with_config(config);
    ctx.ready.store(true, Ordering::SeqCst);
    controller
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
}

/// Logs and counts a failed reconcile, then retries: invalid input waits for a spec change, a
/// lost conditional write retries at once on fresh state, storage errors back off.
pub fn error_policy(run: Arc<ScoringRun>, error: &RunError, ctx: Arc<Context>) -> Action {
    match error {
        // Expected now and then (the scaler writes the same status): retried at once.
        RunError::Kube { source, .. } if kit::is_conflict(source) => {
            tracing::debug!(run = %run.name_any(), error = %error, "status write lost to a newer version; retrying");
        }
        _ => warn!(run = %run.name_any(), error = %error, "reconcile failed"),
    }
    ctx.metrics
        .failures
        .get_or_create(&super::metrics::ErrorLabels {
            error: error.metric_label().into(),
        })
        .inc();
    match error {
        RunError::Invalid(_) => Action::await_change(),
        RunError::Kube { source, .. } if kit::is_conflict(source) => {
            Action::requeue(Duration::from_millis(200))
        }
        RunError::Storage(_) => Action::requeue(Duration::from_secs(15)),
        _ => Action::requeue(Duration::from_secs(5)),
    }
}

/// Reconciles one ScoringRun.
pub async fn reconcile(obj: Arc<ScoringRun>, ctx: Arc<Context>) -> Result<Action, RunError> {
    ctx.metrics.reconciles.inc();
    let started = Instant::now();
    let result = Reconciler::new(&obj, ctx.clone())?.reconcile().await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    result
}

/// One reconcile of one run.
struct Reconciler {
    ctx: Arc<Context>,
    ns: String,
    name: String,
    runs: Api<ScoringRun>,
    jobs: Api<Job>,
}

impl Reconciler {
    fn new(obj: &ScoringRun, ctx: Arc<Context>) -> Result<Self, RunError> {
        let ns = obj.namespace().ok_or(RunError::MissingObjectKey)?;
        let name = obj
            .metadata
            .name
            .clone()
            .ok_or(RunError::MissingObjectKey)?;
        let runs = Api::namespaced(ctx.client.clone(), &ns);
        let jobs = Api::namespaced(ctx.client.clone(), &ns);
        Ok(Self {
            ctx,
            ns,
            name,
            runs,
            jobs,
        })
    }

    fn settings(&self) -> Settings {
        Settings {
            finished_job_ttl_seconds: self.ctx.config.finished_job_ttl_seconds,
            pod_defaults: self.ctx.config.pod_defaults.clone(),
            resync: self.ctx.config.resync,
        }
    }

    async fn reconcile(&self) -> Result<Action, RunError> {
        // Fresh read: the cached object may predate our own last status write.
        let run = self
            .runs
            .get_opt(&self.name)
            .await
            .map_err(kube_err("read ScoringRun"))?;
        let Some(run) = run.filter(|r| r.metadata.deletion_timestamp.is_none()) else {
            self.forget_gauges();
            return Ok(Action::await_change());
        };
        let status = run.status.clone().unwrap_or_default();
        if status.phase.is_some_and(Phase::is_finished) {
            self.handle_rerun_request(&run, &status).await?;
            return self.ensure_summary(&run).await;
        }
        let now = Timestamp::now();
        let obs = match self.observe(&run, now).await {
            Ok(obs) => obs,
            Err(RunError::Invalid(message)) => {
                let obs = Observed {
                    run: run.clone(),
                    now,
                    sensors: Vec::new(),
                    sensor_list: None,
                    prepare: PrepareState::NotNeeded,
                    jobs: Vec::new(),
                    foreign: Vec::new(),
                    refined: BTreeMap::new(),
                };
                let st = decide::owned_status(run.status.as_ref());
                let d =
                    decide::finish_failed(&obs, st, RunDecision::default(), "InvalidRun", &message);
                return self.apply(&obs, d).await;
            }
            Err(RunError::Storage(message)) => {
                self.publish(
                    &run,
                    EventType::Warning,
                    "StorageUnavailable",
                    format!("{message} (retrying)"),
                )
                .await;
                return Err(RunError::Storage(message));
            }
            Err(e) => return Err(e),
        };
        let decision = decide::decide(&obs, &self.settings());
        self.apply(&obs, decision).await
    }

    /// Every read of one reconcile: the sensors (resolved once, at run start), the prepare
    /// step, this run's Jobs (by owner UID), and ledger records of failed packed Jobs.
    async fn observe(&self, run: &ScoringRun, now: Timestamp) -> Result<Observed, RunError> {
        let (sensors, sensor_list) = self.resolve_sensors(run).await?;
        let prepare = self.observe_prepare(run).await?;
        let lp = ListParams::default().labels(&format!(
            "{RUN_LABEL}={},{ROLE_LABEL}={ROLE_SCORE}",
            naming::run_label_value(&self.name)
        ));
        let listed = self
            .jobs
            .list(&lp)
            .await
            .map_err(kube_err("list Jobs"))?
            .items;
        let (jobs, foreign): (Vec<Job>, Vec<Job>) = listed
            .into_iter()
            .partition(|j| jobs::owned_by(&j.metadata, run));
        let foreign = foreign.iter().map(ResourceExt::name_any).collect();

        // Which sensors of a failed packed Job failed, from the scorer's records.
        let recorded = BatchSet::parse(
            &run.status.clone().unwrap_or_default().recorded_batches,
            "status.recordedBatches",
        )?;
        let layout = Layout::new(sensors.len(), run.spec.sensors_per_job);
        let mut refined = BTreeMap::new();
        for job in &jobs {
            let Some(batch) = jobs::batch_of(job) else {
                continue;
            };
            let failed = matches!(jobs::job_outcome(job), Some(Err(_)));
            let batch_sensors = sensors.get(layout.range(batch)).unwrap_or_default();
            if failed
                && batch_sensors.len() > 1
                && !recorded.contains(batch)
                && let Some(names) = self.refine_failures(run, batch_sensors).await
            {
                refined.insert(batch, names);
            }
        }
        Ok(Observed {
            run: run.clone(),
            now,
            sensors,
            sensor_list,
            prepare,
            jobs,
            foreign,
            refined,
        })
    }

    /// Where the prepare step stands (read from the status, then from the Job).
    async fn observe_prepare(&self, run: &ScoringRun) -> Result<PrepareState, RunError> {
        if !jobs::needs_prepare(run) {
            return Ok(PrepareState::NotNeeded);
        }
        let st = run.status.clone().unwrap_or_default();
        if kit::condition_is_true(&st.conditions, decide::PREPARED) {
            return Ok(PrepareState::Done);
        }
        let name = naming::prepare_job_name(run);
        let job = self
            .jobs
            .get_opt(&name)
            .await
            .map_err(kube_err("read prepare Job"))?;
        Ok(match job.filter(|j| jobs::owned_by(&j.metadata, run)) {
            None => PrepareState::Missing,
            Some(job) => match jobs::job_outcome(&job) {
                None => PrepareState::Running,
                Some(Ok(())) => PrepareState::Succeeded,
                Some(Err((reason, message))) => PrepareState::Failed(reason, message),
            },
        })
    }

    /// Applies a decision: creates, status, marks, deletes, events, metrics (see
    /// [`super::decide`] for why in this order).
    async fn apply(&self, obs: &Observed, mut d: RunDecision) -> Result<Action, RunError> {
        let run = &obs.run;
        let (rejected, transient) = self.create_jobs(&d).await;
        let mut prepare_rejected = None;
        let mut batch_rejected = Vec::new();
        for (batch, message) in rejected {
            match batch {
                Some(b) => batch_rejected.push((b, message)),
                None => prepare_rejected = Some(message),
            }
        }
        if let Some(message) = prepare_rejected {
            let message = format!("the API server refused the prepare Job: {message}");
            d = decide::finish_failed(
                obs,
                d.status,
                RunDecision::default(),
                "JobRejected",
                &message,
            );
        }
        decide::record_rejections(obs, &mut d, &batch_rejected);
        if d.write_status {
            self.write_status(run, &d.status).await?;
        }
        let ttl = d.ttl;
        futures::stream::iter(d.mark.clone())
            .for_each_concurrent(API_CONCURRENCY, |name| async move {
                self.mark_recorded(&name, ttl).await
            })
            .await;
        for name in &d.delete {
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            match self.jobs.delete(name, &dp).await {
                Ok(_) => self.ctx.metrics.write("delete", "job"),
                Err(e) if kit::is_not_found(&e) => {}
                Err(e) => {
                    warn!(job = %name, error = %e, "deleting a Job after the run deadline failed")
                }
            }
        }
        for e in &d.events {
            let type_ = if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            self.publish(run, type_, &e.reason, e.note.clone()).await;
        }
        self.count(&d);
        if let Some(phase) = d.finished {
            info!(run = %self.name, phase = phase.as_str(), succeeded = d.status.succeeded, failed = d.status.failed, "run finished");
            // The summary is written from the finished branch, retried until it lands.
            return Ok(Action::requeue(Duration::ZERO));
        }
        let requeue = if transient {
            Some(Duration::from_secs(5))
        } else {
            d.requeue
        };
        Ok(requeue.map_or_else(Action::await_change, Action::requeue))
    }

    /// Creates the decided Jobs a few at a time. Returns the ones the API server refused for
    /// good (with its message) and whether any create failed transiently (retried next pass:
    /// a batch below `nextBatch` with no Job and no record is created again).
    async fn create_jobs(&self, d: &RunDecision) -> (Vec<(Option<i64>, String)>, bool) {
        let results: Vec<(Option<i64>, Result<(), kube::Error>)> =
            futures::stream::iter(d.create.clone())
                .map(|c| async move {
                    let r = self
                        .jobs
                        .create(
                            &PostParams {
                                field_manager: Some(RUN_MANAGER.into()),
                                ..Default::default()
                            },
                            &c.job,
                        )
                        .await;
                    (c.batch, r.map(|_| ()))
                })
                .buffer_unordered(API_CONCURRENCY)
                .collect()
                .await;
        let mut rejected = Vec::new();
        let mut transient = false;
        for (batch, r) in results {
            match r {
                Ok(()) => self.ctx.metrics.write("create", "job"),
                Err(e) if kit::is_conflict(&e) => {}
                Err(e) if kit::is_permanent(&e) => {
                    warn!(run = %self.name, batch = ?batch, error = %e, "the API server refused a Job");
                    rejected.push((batch, kit::api_message(&e)));
                }
                Err(e) => {
                    warn!(run = %self.name, batch = ?batch, error = %e, "creating a Job failed (retrying)");
                    transient = true;
                }
            }
        }
        (rejected, transient)
    }

    fn count(&self, d: &RunDecision) {
        let m = &self.ctx.metrics;
        if d.newly.0 > 0 {
            m.sensors
                .get_or_create(&OutcomeLabels {
                    outcome: "succeeded".into(),
                })
                .inc_by(d.newly.0);
        }
        if d.newly.1 > 0 {
            m.sensors
                .get_or_create(&OutcomeLabels {
                    outcome: "failed".into(),
                })
                .inc_by(d.newly.1);
        }
        for (reason, n) in &d.newly_failed {
            m.sensor_failures
                .get_or_create(&ReasonLabels {
                    reason: reason.clone(),
                })
                .inc_by(*n);
        }
        if let Some(phase) = d.finished {
            m.runs
                .get_or_create(&OutcomeLabels {
                    outcome: phase.as_str().into(),
                })
                .inc();
        }
        match d.gauges {
            Some((queued, active)) => {
                let labels = self.labels();
                m.queue_depth.get_or_create(&labels).set(queued);
                m.active_jobs.get_or_create(&labels).set(active);
            }
            None => self.forget_gauges(),
        }
    }

    fn labels(&self) -> RunLabels {
        RunLabels {
            namespace: self.ns.clone(),
            run: self.name.clone(),
        }
    }

    /// Drops the per-run series of a finished or deleted run, so they do not pile up.
    fn forget_gauges(&self) {
        let labels = self.labels();
        self.ctx.metrics.queue_depth.remove(&labels);
        self.ctx.metrics.active_jobs.remove(&labels);
    }

    /// The run's sensors, fixed at run start: from the spec (immutable once created), or from
    /// the list written at run start for `allModels` and `rerunOf` — a ConfigMap owned by the
    /// run (by UID), or for lists beyond a ConfigMap's size the run's storage.
    async fn resolve_sensors(
        &self,
        run: &ScoringRun,
    ) -> Result<(Vec<SensorRef>, Option<String>), RunError> {
        if let Some(selector) = &run.spec.sensors
            && let Some(list) = plan::resolve_static(selector)
        {
            return list
                .map(|l| (l, None))
                .map_err(|e| RunError::Invalid(e.to_string()));
        }
        let cm_name = naming::sensor_list_name(run);
        let cms: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        if let Some(cm) = cms
            .get_opt(&cm_name)
            .await
            .map_err(kube_err("read sensor list ConfigMap"))?
            && jobs::owned_by(&cm.metadata, run)
        {
            let data = cm.data.unwrap_or_default();
            let text = match data.get("location") {
                Some(url) => self.read_list(url).await?,
                None => data.get("sensors").cloned().unwrap_or_default(),
            };
            return Ok((parse_sensor_lines(&text)?, Some(cm_name)));
        }
        let sensors = match &run.spec.rerun_of {
            Some(earlier) => Box::pin(self.failed_sensors_of(earlier)).await?,
            None => self.list_models(run).await?,
        };
        if sensors.is_empty() {
            return Err(RunError::Invalid(match &run.spec.rerun_of {
                Some(earlier) => format!("run {earlier} has no failed sensors to rerun"),
                None => format!("no model_<D>_<T> files under {}", run.spec.storage.models),
            }));
        }
        let text = sensors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        let mut data = BTreeMap::new();
        if text.len() > MAX_CONFIGMAP_LIST {
            // Too big for a ConfigMap: the list goes to the run's ledger, the ConfigMap points to it.
            let url = jobs::join_url(&jobs::ledger_url(run), "sensors.txt");
            let store = fleetscore_scorer::storage::open(&jobs::ledger_url(run))
                .map_err(|e| RunError::Invalid(format!("storage.output: {e}")))?;
            store
                .child("sensors.txt")
                .put(text.clone().into_bytes().into())
                .await
                .map_err(|e| RunError::Storage(format!("writing the sensor list to {url}: {e}")))?;
            data.insert("location".to_string(), url);
            data.insert("count".to_string(), sensors.len().to_string());
        } else {
            data.insert("sensors".to_string(), text);
        }
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(cm_name.clone()),
                namespace: Some(self.ns.clone()),
                labels: Some(jobs::run_labels(&self.name, "sensors")),
                owner_references: run.controller_owner_ref(&()).map(|o| vec![o]),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        match cms.create(&PostParams::default(), &cm).await {
            Ok(_) => self.ctx.metrics.write("create", "configmap"),
            // Another pass (or replica) wrote it first: its list is the run's, read it back.
            Err(e) if kit::is_conflict(&e) => return Box::pin(self.resolve_sensors(run)).await,
            Err(e) => return Err(kube_err("create sensor list ConfigMap")(e)),
        }
        Ok((sensors, Some(cm_name)))
    }

    /// Reads a sensor list kept in storage.
    async fn read_list(&self, url: &str) -> Result<String, RunError> {
        let (base, file) = url
            .rsplit_once('/')
            .ok_or_else(|| RunError::Invalid(format!("sensor list location {url}")))?;
        let store = fleetscore_scorer::storage::open(base)
            .map_err(|e| RunError::Invalid(format!("{url}: {e}")))?;
        let bytes = store
            .child(file)
            .get()
            .await
            .map_err(|e| RunError::Storage(format!("reading the sensor list {url}: {e}")))?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| RunError::Invalid(format!("sensor list {url} is not UTF-8")))
    }

    /// Every sensor with a model under `storage.models`. A malformed URL is the run's fault; a
    /// listing error is storage's, and is retried.
    async fn list_models(&self, run: &ScoringRun) -> Result<Vec<SensorRef>, RunError> {
        let models = fleetscore_scorer::storage::open(&run.spec.storage.models)
            .map_err(|e| RunError::Invalid(format!("storage.models: {e}")))?;
        let found = fleetscore_scorer::fleet::list_models(&models)
            .await
            .map_err(|e| {
                RunError::Storage(format!(
                    "listing models under {}: {e}",
                    run.spec.storage.models
                ))
            })?;
        Ok(found
            .into_keys()
            .map(|s| SensorRef {
                device: s.device,
                tag: s.tag,
            })
            .collect())
    }

    /// The failed sensors of an earlier, finished run.
    async fn failed_sensors_of(&self, earlier: &str) -> Result<Vec<SensorRef>, RunError> {
        let Some(old) = self
            .runs
            .get_opt(earlier)
            .await
            .map_err(kube_err("read the run to rerun"))?
        else {
            return Err(RunError::Invalid(format!(
                "rerunOf: run {earlier} not found"
            )));
        };
        let st = old.status.clone().unwrap_or_default();
        if !st.phase.is_some_and(Phase::is_finished) {
            return Err(RunError::Invalid(format!(
                "rerunOf: run {earlier} has not finished"
            )));
        }
        let old_sensors = match old.spec.sensors.as_ref().and_then(plan::resolve_static) {
            Some(list) => list.map_err(|e| RunError::Invalid(e.to_string()))?,
            None => Box::pin(self.resolve_sensors(&old))
                .await
                .map(|(s, _)| s)
                .map_err(|e| match e {
                    RunError::Invalid(m) => {
                        RunError::Invalid(format!("rerunOf: the sensor list of run {earlier}: {m}"))
                    }
                    other => other,
                })?,
        };
        let layout = Layout::new(old_sensors.len(), old.spec.sensors_per_job);
        let failed = BatchSet::parse(&st.failed_batches, "status.failedBatches")?;
        let mut rerun = Vec::new();
        for b in failed.iter() {
            let batch = old_sensors.get(layout.range(b)).unwrap_or_default();
            if batch.len() == 1 {
                rerun.extend_from_slice(batch);
                continue;
            }
            // A packed Job fails when any of its sensors fails: rerun only those the ledger does not
            // show as succeeded (all of them when it cannot be read).
            match self
                .sensor_records(&old.spec.storage.output, earlier, batch)
                .await
            {
                Some(records) => rerun.extend(
                    batch
                        .iter()
                        .zip(records)
                        .filter(|(_, r)| {
                            !r.as_ref().is_some_and(|r| r.outcome == Outcome::Succeeded)
                        })
                        .map(|(s, _)| s.clone()),
                ),
                None => rerun.extend_from_slice(batch),
            }
        }
        Ok(rerun)
    }

    /// Names which sensors of a failed multi-sensor Job failed, from the scorer's log records
    /// (None when any record is missing: the Job-level failure stands).
    async fn refine_failures(
        &self,
        run: &ScoringRun,
        batch: &[SensorRef],
    ) -> Option<Vec<FailedSensor>> {
        let records = self
            .sensor_records(&run.spec.storage.output, &self.name, batch)
            .await?;
        let mut refined = Vec::new();
        for (s, record) in batch.iter().zip(records) {
            let record = record?;
            if record.outcome != Outcome::Succeeded {
                refined.push(FailedSensor {
                    sensor: s.to_string(),
                    reason: "ScorerFailed".into(),
                    message: record.error.unwrap_or_default(),
                });
            }
        }
        (!refined.is_empty()).then_some(refined)
    }

    /// The scorer's log record of each of `sensors` in `run_name`'s output (`None` where it is
    /// missing or unreadable); `None` as a whole when the ledger is not read or the store won't open.
    async fn sensor_records(
        &self,
        output: &str,
        run_name: &str,
        sensors: &[SensorRef],
    ) -> Option<Vec<Option<SensorRecord>>> {
        if !self.ctx.config.read_ledger {
            return None;
        }
        let out = fleetscore_scorer::storage::open(output).ok()?;
        let mut records = Vec::with_capacity(sensors.len());
        for s in sensors {
            let id = SensorId::new(s.device.clone(), s.tag.clone());
            let bytes = out
                .child(&fleetscore_scorer::output::log_path(run_name, &id))
                .get()
                .await
                .ok();
            records.push(bytes.and_then(|b| serde_json::from_slice::<SensorRecord>(&b).ok()));
        }
        Some(records)
    }

    /// Writes `<output>/<run>/summary.json` once the run finished, and notes it in the status;
    /// while storage refuses, retries with backoff.
    async fn ensure_summary(&self, run: &ScoringRun) -> Result<Action, RunError> {
        let mut st = decide::owned_status(run.status.as_ref());
        if !self.ctx.config.read_ledger || st.summary.is_some() {
            return Ok(Action::await_change());
        }
        if let Err(e) = self.drop_partitions(run, &st).await {
            warn!(run = %self.name, error = %e, "could not delete the partitions (retrying)");
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        let url = jobs::join_url(&jobs::ledger_url(run), "summary.json");
        let summary = serde_json::json!({
            "run": self.name,
            "namespace": self.ns,
            "phase": st.phase,
            "total": st.total,
            "succeeded": st.succeeded,
            "failed": st.failed,
            "startTime": st.start_time,
            "completionTime": st.completion_time,
            "failedSensors": st.failed_sensors,
            "failedBatches": st.failed_batches,
            "sensorsPerJob": run.spec.sensors_per_job,
            "parallelism": run.spec.parallelism,
            "sensors": st.total,
        });
        let written = match fleetscore_scorer::storage::open(&jobs::ledger_url(run)) {
            Ok(out) => match serde_json::to_vec_pretty(&summary) {
                Ok(bytes) => out
                    .child("summary.json")
                    .put(bytes.into())
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = written {
            warn!(run = %self.name, error = %e, "could not write summary.json (retrying)");
            self.publish(
                run,
                EventType::Warning,
                "SummaryNotWritten",
                format!("{url}: {e} (retrying)"),
            )
            .await;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        // The human view beside it (best effort: the summary is what other tools read).
        let scaler = run.status.as_ref().and_then(|s| s.scaler.clone());
        if let Ok(out) = fleetscore_scorer::storage::open(&run.spec.storage.output)
            && let Err(e) =
                fleetscore_scorer::report::write_report(&out, &self.name, &summary, scaler.as_ref())
                    .await
        {
            warn!(run = %self.name, error = %e, "could not write report.html");
        }
        st.summary = Some(url);
        self.write_status(run, &st).await?;
        Ok(Action::await_change())
    }

    /// Deletes the run's partitions (a full copy of its readings) once it finished, unless
    /// `storage.retainPartitions` keeps them.
    async fn drop_partitions(&self, run: &ScoringRun, st: &ScoringRunStatus) -> Result<(), String> {
        let url = jobs::partitions_url(run);
        if run.spec.storage.retain_partitions || st.scoring_data.as_deref() != Some(url.as_str()) {
            return Ok(());
        }
        let store = fleetscore_scorer::storage::open(&url).map_err(|e| e.to_string())?;
        let n = store.delete_all().await.map_err(|e| e.to_string())?;
        if n > 0 {
            info!(run = %self.name, objects = n, "deleted the run's partitions");
        }
        Ok(())
    }

    /// A finished run given a rerun request: creates `<run>-rerun-<value hash>` over the failed
    /// sensors, once per annotation value.
    async fn handle_rerun_request(
        &self,
        run: &ScoringRun,
        status: &ScoringRunStatus,
    ) -> Result<(), RunError> {
        let Some(value) = run.annotations().get(RERUN_ANNOTATION).cloned() else {
            return Ok(());
        };
        if status.rerun_handled.as_deref() == Some(value.as_str()) {
            return Ok(());
        }
        let mut st = decide::owned_status(Some(status));
        st.rerun_handled = Some(value.clone());
        if status.failed == 0 {
            self.publish(
                run,
                EventType::Normal,
                "RerunSkipped",
                "no failed sensors to rerun".into(),
            )
            .await;
        } else {
            let name = naming::rerun_name(&self.name, &value);
            let spec = ScoringRunSpec {
                sensors: None,
                rerun_of: Some(self.name.clone()),
                schedule: None,
                ..run.spec.clone()
            };
            let mut new_run = ScoringRun::new(&name, spec);
            new_run.metadata.namespace = Some(self.ns.clone());
            match self.runs.create(&PostParams::default(), &new_run).await {
                Ok(_) => self.ctx.metrics.write("create", "scoringrun"),
                Err(e) if kit::is_conflict(&e) => {}
                Err(e) => return Err(kube_err("create rerun ScoringRun")(e)),
            }
            self.publish(
                run,
                EventType::Normal,
                "RerunCreated",
                format!("{name} reruns {} failed sensors", status.failed),
            )
            .await;
        }
        self.write_status(run, &st).await
    }

    /// Server-side apply of the fields this controller owns (never `status.scaler`), conditional
    /// on the resourceVersion it read: a stale copy (an older read, another replica) loses with a
    /// 409 and the reconcile retries on fresh state instead of overwriting newer counts.
    async fn write_status(
        &self,
        run: &ScoringRun,
        status: &ScoringRunStatus,
    ) -> Result<(), RunError> {
        let mut status = status.clone();
        status.scaler = None;
        let patch = serde_json::json!({
            "apiVersion": ScoringRun::api_version(&()),
            "kind": ScoringRun::kind(&()),
            "metadata": { "resourceVersion": run.resource_version() },
            "status": status,
        });
        let pp = PatchParams::apply(RUN_MANAGER).force();
        self.runs
            .patch_status(&run.name_any(), &pp, &Patch::Apply(&patch))
            .await
            .map_err(kube_err("write ScoringRun status"))?;
        self.ctx.metrics.write("patch", "scoringrun");
        Ok(())
    }

    /// Marks a finished Job as recorded and hands it to the TTL controller.
    async fn mark_recorded(&self, name: &str, ttl: i32) {
        let patch = jobs::recorded_patch(ttl);
        match self
            .jobs
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => self.ctx.metrics.write("patch", "job"),
            Err(e) if kit::is_not_found(&e) => {}
            Err(e) => warn!(job = %name, error = %e, "marking a finished Job failed"),
        }
    }

    /// Publishes an event on the run (best effort).
    async fn publish(&self, run: &ScoringRun, type_: EventType, reason: &str, note: String) {
        if kit::publish(&self.ctx.recorder, run, type_, reason, note).await {
            self.ctx.metrics.write("create", "event");
        }
    }
}

/// Reads the sensor list's `device:tag` lines.
fn parse_sensor_lines(text: &str) -> Result<Vec<SensorRef>, RunError> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once(':')
                .map(|(d, t)| SensorRef {
                    device: d.to_string(),
                    tag: t.to_string(),
                })
                .ok_or_else(|| RunError::Invalid(format!("sensor list: {l:?} is not device:tag")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::metrics::RunMetrics;
    use http::{Request, Response};
    use kube::client::Body;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// A context whose client talks to a mock API server (the returned handle).
    fn mock_context() -> (Arc<Context>, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "ns");
        let config = super::super::context::RunConfig {
            read_ledger: false,
            ..Default::default()
        };
        (
            Arc::new(Context::new(
                client,
                Arc::new(RunMetrics::default()),
                config,
            )),
            handle,
        )
    }

    fn test_run(status: serde_json::Value) -> ScoringRun {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "fleetscore.dev/v1alpha1", "kind": "ScoringRun",
            "metadata": { "name": "r", "namespace": "ns", "uid": "uid-1", "resourceVersion": "7", "generation": 1 },
            "spec": {
                "sensors": { "devices": ["1"], "tags": ["1", "2"] },
                "storage": { "models": "m", "data": "d/parts", "output": "o" },
                "parallelism": 2,
            },
            "status": status,
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn ok(value: &impl serde::Serialize) -> Response<Body> {
        Response::builder()
            .body(Body::from(serde_json::to_vec(value).unwrap_or_default()))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Answers requests in arrival order, recording `METHOD path` for each, until `n` were seen.
    async fn serve(
        mut handle: Handle,
        run: ScoringRun,
        jobs: Vec<Job>,
        n: usize,
    ) -> Vec<(String, serde_json::Value)> {
        let mut seen = Vec::new();
        while seen.len() < n {
            let Some((req, send)) = handle.next_request().await else {
                break;
            };
            let line = format!("{} {}", req.method(), req.uri().path());
            let body = req.into_body().collect_bytes().await.unwrap_or_default();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let reply = if line.ends_with("/scoringruns/r") && line.starts_with("GET") {
                ok(&run)
            } else if line.starts_with("GET") && line.ends_with("/jobs") {
                ok(
                    &serde_json::json!({ "apiVersion": "batch/v1", "kind": "JobList", "metadata": {}, "items": jobs }),
                )
            } else if line.contains("/events") {
                ok(
                    &serde_json::json!({ "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": { "name": "e" }, "eventTime": null }),
                )
            } else if line.ends_with("/status") {
                ok(&run)
            } else {
                ok(&json)
            };
            send.send_response(reply);
            seen.push((line, json));
        }
        seen
    }

    #[tokio::test]
    async fn a_new_run_creates_its_jobs_before_it_writes_the_status_conditionally_and_owns_no_scaler_field()
     {
        let (ctx, handle) = mock_context();
        let run = test_run(serde_json::json!(null));
        let server = tokio::spawn(serve(handle, run.clone(), vec![], 6));
        let action = reconcile(Arc::new(run), ctx).await;
        assert!(action.is_ok(), "{action:?}");
        let seen = server.await.unwrap_or_default();
        let lines: Vec<&str> = seen.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            lines[0],
            "GET /apis/fleetscore.dev/v1alpha1/namespaces/ns/scoringruns/r"
        );
        assert_eq!(lines[1], "GET /apis/batch/v1/namespaces/ns/jobs");
        assert!(
            lines[2..4]
                .iter()
                .all(|l| *l == "POST /apis/batch/v1/namespaces/ns/jobs"),
            "{lines:?}"
        );
        assert_eq!(
            lines[4],
            "PATCH /apis/fleetscore.dev/v1alpha1/namespaces/ns/scoringruns/r/status"
        );
        let status_body = &seen[4].1;
        assert_eq!(
            status_body["metadata"]["resourceVersion"], "7",
            "the write is conditional on what was read"
        );
        assert_eq!(status_body["status"]["nextBatch"], 2);
        assert!(status_body["status"].get("scaler").is_none());
        assert!(lines[5].contains("/events"), "events come last: {lines:?}");
    }

    #[tokio::test]
    async fn a_finished_job_is_marked_for_removal_only_after_its_outcome_is_in_the_status() {
        let (ctx, handle) = mock_context();
        let started = serde_json::json!({ "phase": "Running", "startTime": "2026-12-02T10:00:00Z", "total": 2, "nextBatch": 2, "totalBatches": 2 });
        let run = test_run(started);
        let sensors = [SensorRef {
            device: "1".into(),
            tag: "1".into(),
        }];
        let mut job = jobs::scoring_job(&run, 0, &sensors, "d/parts");
        job.status = Some(k8s_openapi::api::batch::v1::JobStatus {
            conditions: Some(vec![k8s_openapi::api::batch::v1::JobCondition {
                type_: "Complete".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let mut running = jobs::scoring_job(&run, 1, &sensors, "d/parts");
        running.metadata.name = Some(naming::batch_job_name(&run, 1));
        let server = tokio::spawn(serve(handle, run.clone(), vec![job, running], 4));
        let action = reconcile(Arc::new(run), ctx).await;
        assert!(action.is_ok(), "{action:?}");
        let seen = server.await.unwrap_or_default();
        let lines: Vec<&str> = seen.iter().map(|(l, _)| l.as_str()).collect();
        let status_at = lines
            .iter()
            .position(|l| l.ends_with("/scoringruns/r/status"));
        let mark_at = lines
            .iter()
            .position(|l| l.starts_with("PATCH /apis/batch/v1/namespaces/ns/jobs/"));
        assert!(status_at.is_some() && mark_at.is_some(), "{lines:?}");
        assert!(
            status_at < mark_at,
            "status first, then the TTL mark: {lines:?}"
        );
        assert_eq!(seen[status_at.unwrap_or(0)].1["status"]["succeeded"], 1);
    }

    #[test]
    fn sensor_lists_read_back_as_written() {
        let got = parse_sensor_lines("1:4\n\n2:5\n").unwrap_or_default();
        assert_eq!(
            got.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["1:4", "2:5"]
        );
        assert!(parse_sensor_lines("nocolon").is_err());
    }

    #[test]
    fn rerun_names_are_deterministic_per_request() {
        assert_eq!(
            naming::rerun_name("nightly", "1"),
            naming::rerun_name("nightly", "1")
        );
        assert_ne!(
            naming::rerun_name("nightly", "1"),
            naming::rerun_name("nightly", "2")
        );
        assert!(naming::rerun_name("nightly", "1").starts_with("nightly-rerun-"));
    }
}
