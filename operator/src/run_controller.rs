//! The ScoringRun reconciler: resolve sensors → (partition once) → keep at most `parallelism`
//! scoring Jobs → record outcomes in the status → finish with a phase decided by the failure
//! policy.
//!
//! Each reconcile reads the run and its Jobs fresh from the API (the watch cache can lag behind
//! our own status writes), decides with the pure [`crate::queue::plan`], creates Jobs, writes the
//! status by server-side apply right after, and only then marks finished Jobs for removal. The
//! order makes every step safe to repeat after a crash: see [`crate::queue`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleetscore_scorer::output::{Outcome, SensorRecord};
use fleetscore_scorer::sensor::SensorId;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn};

use crate::context::{Context, FIELD_MANAGER};
use crate::crd::run::{
    FailedSensor, Phase, RERUN_ANNOTATION, ScoringRun, ScoringRunSpec, ScoringRunStatus, SensorRef,
};
use crate::jobs::{self, MANAGED_BY, MANAGED_BY_LABEL, ROLE_LABEL, ROLE_SCORE, RUN_LABEL};
use crate::metrics::{OutcomeLabels, RunLabels};
use crate::queue::{self, BatchSet, JobState, Layout, ObservedJob, Progress, QueueError};

/// API calls one reconcile makes at once (Job creates, recorded markers).
const API_CONCURRENCY: usize = 16;

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
            Self::Kube { .. } => "Kube",
            Self::Invalid(_) => "Invalid",
            Self::Queue(_) => "Queue",
            Self::MissingObjectKey => "MissingObjectKey",
        }
    }
}

fn kube_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> RunError {
    let action = action.into();
    move |source| RunError::Kube { action, source }
}

fn is_conflict_or_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
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
    ctx.ready.store(true, Ordering::SeqCst);
    Controller::new(runs, watcher::Config::default().any_semantic())
        .owns(jobs, job_watch.any_semantic())
        .with_config(config)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
}

/// Logs and counts a failed reconcile, then retries: invalid input waits for a spec change.
pub fn error_policy(run: Arc<ScoringRun>, error: &RunError, ctx: Arc<Context>) -> Action {
    warn!(run = %run.name_any(), error = %error, "reconcile failed");
    ctx.metrics
        .failures
        .get_or_create(&crate::metrics::ErrorLabels {
            error: error.metric_label().into(),
        })
        .inc();
    match error {
        RunError::Invalid(_) => Action::await_change(),
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

/// Where a run's data preparation stands.
enum Prepared {
    /// Scoring reads this data URL.
    Ready(String),
    /// The prepare Job is still running.
    Waiting,
    /// The prepare Job failed.
    Failed(String),
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

    async fn reconcile(&self) -> Result<Action, RunError> {
        // Fresh read: the cached object may predate our own last status write.
        let Some(run) = self
            .runs
            .get_opt(&self.name)
            .await
            .map_err(kube_err("read ScoringRun"))?
        else {
            return Ok(Action::await_change());
        };
        if run.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let status = run.status.clone().unwrap_or_default();
        if status.phase.is_some_and(Phase::is_finished) {
            self.handle_rerun_request(&run, &status).await?;
            return Ok(Action::await_change());
        }
        match self.progress(&run, status.clone()).await {
            Err(RunError::Invalid(message)) => {
                self.fail_run(&run, status, "InvalidRun", &message).await?;
                Ok(Action::await_change())
            }
            other => other,
        }
    }

    async fn progress(
        &self,
        run: &ScoringRun,
        mut status: ScoringRunStatus,
    ) -> Result<Action, RunError> {
        let first_time = status.start_time.is_none();
        if first_time {
            status.start_time = Some(Time(Timestamp::now()));
            status.ledger = Some(jobs::ledger_url(run));
        }
        let sensors = self.resolve_sensors(run, &mut status).await?;
        let layout = Layout::new(sensors.len(), run.spec.sensors_per_job);
        status.total = layout.sensors;
        status.total_batches = layout.batches();
        if first_time {
            self.publish(
                run,
                EventType::Normal,
                "RunStarted",
                format!(
                    "scoring {} sensors in {} Jobs, {} at a time",
                    layout.sensors,
                    layout.batches(),
                    run.spec.parallelism
                ),
            )
            .await;
        }

        let data = match self.prepare(run, &mut status).await? {
            Prepared::Ready(data) => data,
            Prepared::Waiting => {
                status.phase = Some(Phase::Pending);
                status.queued = layout.sensors;
                status.message = Some("partitioning the readings once before scoring".into());
                self.finish_status(run, &mut status);
                self.write_status(run, &status).await?;
                return Ok(Action::requeue(self.ctx.config.resync));
            }
            Prepared::Failed(message) => {
                self.fail_run(run, status, "PrepareFailed", &message)
                    .await?;
                return Ok(Action::await_change());
            }
        };

        // Queue: observe Jobs, decide, create, record.
        let lp = ListParams::default().labels(&format!(
            "{RUN_LABEL}={},{ROLE_LABEL}={ROLE_SCORE}",
            self.name
        ));
        let existing = self
            .jobs
            .list(&lp)
            .await
            .map_err(kube_err("list Jobs"))?
            .items;
        let prior = Progress {
            next_batch: status.next_batch,
            recorded: BatchSet::parse(&status.recorded_batches, "status.recordedBatches")?,
            failed_batches: BatchSet::parse(&status.failed_batches, "status.failedBatches")?,
            succeeded: status.succeeded,
            failed: status.failed,
            failed_sensors: status.failed_sensors.clone(),
        };
        let mut observed = Vec::with_capacity(existing.len());
        let mut by_batch: BTreeMap<i64, &Job> = BTreeMap::new();
        for job in &existing {
            let Some(batch) = jobs::batch_of(job) else {
                continue;
            };
            let batch_sensors = &sensors[layout.range(batch)];
            let mut state = jobs::job_state(job, batch_sensors);
            if let JobState::Failed { failed } = &mut state
                && batch_sensors.len() > 1
                && !prior.recorded.contains(batch)
            {
                self.refine_failures(run, batch_sensors, failed).await;
            }
            observed.push(ObservedJob {
                batch,
                state,
                marked: jobs::is_marked(job),
            });
            by_batch.insert(batch, job);
        }
        let deadline_passed = run_deadline_passed(run, &status);
        let sensor_name = |i: usize| sensors.get(i).map(ToString::to_string).unwrap_or_default();
        let plan = queue::plan(
            layout,
            &prior,
            &observed,
            run.spec.parallelism,
            deadline_passed,
            &sensor_name,
        );

        // Creates run a few at a time; a batch whose create failed is below nextBatch with no Job
        // and no record, so the next reconcile creates it again (see queue::plan).
        let built: Vec<Job> = plan
            .create
            .iter()
            .map(|&b| {
                self.with_defaults(
                    jobs::scoring_job(run, b, &sensors[layout.range(b)], &data),
                    run,
                )
            })
            .collect();
        futures::stream::iter(built)
            .for_each_concurrent(API_CONCURRENCY, |job| async move {
                match self.jobs.create(&PostParams::default(), &job).await {
                    Ok(_) => self.ctx.metrics.write("create", "job"),
                    Err(e) if is_conflict_or_exists(&e) => {}
                    Err(e) => warn!(run = %self.name, job = %job.name_any(), error = %e, "creating a Job failed"),
                }
            })
            .await;

        let p = &plan.progress;
        status.next_batch = p.next_batch;
        status.recorded_batches = p.recorded.to_string();
        status.failed_batches = p.failed_batches.to_string();
        status.failed_sensors = p.failed_sensors.clone();
        status.total = plan.counts.total;
        status.queued = plan.counts.queued;
        status.active = plan.counts.active;
        status.succeeded = plan.counts.succeeded;
        status.failed = plan.counts.failed;
        let finished_phase = plan
            .done
            .then(|| queue::final_phase(plan.counts, run.spec.failure_policy.as_ref()));
        status.phase = Some(finished_phase.unwrap_or(Phase::Running));
        status.message = Some(match finished_phase {
            Some(phase) => format!(
                "{}: {} of {} sensors succeeded, {} failed",
                phase.as_str(),
                plan.counts.succeeded,
                plan.counts.total,
                plan.counts.failed
            ),
            None if deadline_passed => "run deadline passed".into(),
            None => format!(
                "{} active, {} queued",
                plan.counts.active, plan.counts.queued
            ),
        });
        if finished_phase.is_some() {
            status.completion_time = Some(Time(Timestamp::now()));
        }
        self.finish_status(run, &mut status);
        // A Job event that changed nothing we track (e.g. its pod started) costs no write.
        if !same_progress(run.status.as_ref(), &status) {
            self.write_status(run, &status).await?;
        }

        // Only now that outcomes are in the status may finished Jobs go.
        let ttl = run
            .spec
            .finished_job_ttl_seconds
            .unwrap_or(self.ctx.config.finished_job_ttl_seconds);
        let to_mark: Vec<String> = plan
            .mark
            .iter()
            .map(|b| {
                by_batch
                    .get(b)
                    .map(|j| j.name_any())
                    .unwrap_or_else(|| jobs::batch_job_name(&self.name, *b))
            })
            .collect();
        futures::stream::iter(to_mark)
            .for_each_concurrent(API_CONCURRENCY, |name| async move {
                self.mark_recorded(&name, ttl).await
            })
            .await;
        for batch in &plan.delete {
            let name = jobs::batch_job_name(&self.name, *batch);
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            match self.jobs.delete(&name, &dp).await {
                Ok(_) => self.ctx.metrics.write("delete", "job"),
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    warn!(job = %name, error = %e, "deleting a Job after the run deadline failed")
                }
            }
        }

        // Events and metrics.
        let mut published = 0;
        for (_, failed) in &plan.recorded_now {
            for f in failed {
                self.ctx
                    .metrics
                    .sensors
                    .get_or_create(&OutcomeLabels {
                        outcome: "failed".into(),
                    })
                    .inc();
                // Events are API writes too: a few per reconcile is enough to be noticed.
                if published < 5 {
                    published += 1;
                    self.publish(
                        run,
                        EventType::Warning,
                        "SensorFailed",
                        format!("{}: {} {}", f.sensor, f.reason, f.message),
                    )
                    .await;
                }
            }
        }
        let newly_succeeded: i64 = plan
            .recorded_now
            .iter()
            .map(|(b, failed)| layout.size(*b) - i64::try_from(failed.len()).unwrap_or(0))
            .sum();
        if newly_succeeded > 0 {
            self.ctx
                .metrics
                .sensors
                .get_or_create(&OutcomeLabels {
                    outcome: "succeeded".into(),
                })
                .inc_by(u64::try_from(newly_succeeded).unwrap_or(0));
        }
        let labels = RunLabels {
            namespace: self.ns.clone(),
            run: self.name.clone(),
        };
        if let Some(phase) = finished_phase {
            self.ctx.metrics.queue_depth.remove(&labels);
            self.ctx.metrics.active_jobs.remove(&labels);
            self.ctx
                .metrics
                .runs
                .get_or_create(&OutcomeLabels {
                    outcome: phase.as_str().into(),
                })
                .inc();
            let (kind, reason) = match phase {
                Phase::Succeeded => (EventType::Normal, "RunSucceeded"),
                Phase::PartiallySucceeded => (EventType::Warning, "RunPartiallySucceeded"),
                _ => (EventType::Warning, "RunFailed"),
            };
            self.publish(
                run,
                kind,
                reason,
                status.message.clone().unwrap_or_default(),
            )
            .await;
            self.write_summary(run, &status, &sensors).await;
            info!(run = %self.name, phase = phase.as_str(), succeeded = status.succeeded, failed = status.failed, "run finished");
            return Ok(Action::await_change());
        }
        self.ctx
            .metrics
            .queue_depth
            .get_or_create(&labels)
            .set(plan.counts.queued);
        self.ctx
            .metrics
            .active_jobs
            .get_or_create(&labels)
            .set(i64::try_from(observed.len()).unwrap_or(0));
        Ok(Action::requeue(self.next_check(run, &status)))
    }

    /// Fills in the operator-wide defaults (image, Secret, ServiceAccount, placement) a run leaves open.
    fn with_defaults(&self, job: Job, run: &ScoringRun) -> Job {
        jobs::apply_defaults(job, run, &self.ctx.config.pod_defaults)
    }

    /// Periodic re-check; earlier when the run's deadline comes sooner.
    fn next_check(&self, run: &ScoringRun, status: &ScoringRunStatus) -> Duration {
        let resync = self.ctx.config.resync;
        match (run.spec.run_deadline_seconds, &status.start_time) {
            (Some(limit), Some(start)) => {
                let left = start.0.as_second() + limit - Timestamp::now().as_second();
                resync.min(Duration::from_secs(u64::try_from(left.max(1)).unwrap_or(1)))
            }
            _ => resync,
        }
    }

    /// The run's sensors: from the spec (pure), or from the ConfigMap written at run start for
    /// `allModels` and `rerunOf` (a listing of 10,000 models is too big for the status, and a
    /// ConfigMap owned by the run survives restarts and goes with the run).
    async fn resolve_sensors(
        &self,
        run: &ScoringRun,
        status: &mut ScoringRunStatus,
    ) -> Result<Vec<SensorRef>, RunError> {
        if let Some(selector) = &run.spec.sensors
            && let Some(list) = queue::resolve_static(selector)
        {
            return list.map_err(|e| RunError::Invalid(e.to_string()));
        }
        let cm_name = jobs::job_name(&self.name, "sensors");
        let cms: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        if let Some(cm) = cms
            .get_opt(&cm_name)
            .await
            .map_err(kube_err("read sensor list ConfigMap"))?
        {
            status.sensor_list = Some(cm_name);
            let text = cm
                .data
                .as_ref()
                .and_then(|d| d.get("sensors"))
                .cloned()
                .unwrap_or_default();
            return parse_sensor_lines(&text);
        }
        let sensors = match &run.spec.rerun_of {
            Some(earlier) => self.failed_sensors_of(earlier).await?,
            None => self.list_models(run).await?,
        };
        if sensors.is_empty() {
            return Err(RunError::Invalid(match &run.spec.rerun_of {
                Some(earlier) => format!("run {earlier} has no failed sensors to rerun"),
                None => format!("no model_<D>_<T> files under {}", run.spec.storage.models),
            }));
        }
        let text: Vec<String> = sensors.iter().map(ToString::to_string).collect();
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(cm_name.clone()),
                namespace: Some(self.ns.clone()),
                labels: Some(jobs::run_labels(&self.name, "sensors")),
                owner_references: run.controller_owner_ref(&()).map(|o| vec![o]),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("sensors".to_string(), text.join("\n"))])),
            ..Default::default()
        };
        match cms.create(&PostParams::default(), &cm).await {
            Ok(_) => self.ctx.metrics.write("create", "configmap"),
            Err(e) if is_conflict_or_exists(&e) => {}
            Err(e) => return Err(kube_err("create sensor list ConfigMap")(e)),
        }
        status.sensor_list = Some(cm_name);
        Ok(sensors)
    }

    /// Every sensor with a model under `storage.models`, listed with the operator's credentials.
    async fn list_models(&self, run: &ScoringRun) -> Result<Vec<SensorRef>, RunError> {
        let models = fleetscore_scorer::storage::open(&run.spec.storage.models)
            .map_err(|e| RunError::Invalid(format!("storage.models: {e}")))?;
        let found = fleetscore_scorer::fleet::list_models(&models)
            .await
            .map_err(|e| {
                RunError::Invalid(format!(
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
        let old_sensors =
            if let Some(list) = old.spec.sensors.as_ref().and_then(queue::resolve_static) {
                list.map_err(|e| RunError::Invalid(e.to_string()))?
            } else {
                let cms: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.ns);
                let cm_name = st
                    .sensor_list
                    .clone()
                    .unwrap_or_else(|| jobs::job_name(earlier, "sensors"));
                let cm = cms
                    .get_opt(&cm_name)
                    .await
                    .map_err(kube_err("read the earlier run's sensor list"))?
                    .ok_or_else(|| {
                        RunError::Invalid(format!(
                            "rerunOf: sensor list {cm_name} of run {earlier} is gone"
                        ))
                    })?;
                parse_sensor_lines(
                    &cm.data
                        .as_ref()
                        .and_then(|d| d.get("sensors"))
                        .cloned()
                        .unwrap_or_default(),
                )?
            };
        let layout = Layout::new(old_sensors.len(), old.spec.sensors_per_job);
        let failed = BatchSet::parse(&st.failed_batches, "status.failedBatches")?;
        let mut rerun = Vec::new();
        for b in failed.iter() {
            let batch = &old_sensors[layout.range(b)];
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

    /// Partitions one big CSV once (the prepare Job) and returns the data URL scoring reads.
    async fn prepare(
        &self,
        run: &ScoringRun,
        status: &mut ScoringRunStatus,
    ) -> Result<Prepared, RunError> {
        if !jobs::needs_prepare(run) {
            status.scoring_data = Some(run.spec.storage.data.clone());
            return Ok(Prepared::Ready(run.spec.storage.data.clone()));
        }
        if has_condition(status, "Prepared", "True") {
            return Ok(Prepared::Ready(
                status
                    .scoring_data
                    .clone()
                    .unwrap_or_else(|| jobs::partitions_url(run)),
            ));
        }
        let name = jobs::prepare_job_name(&self.name);
        let job = match self
            .jobs
            .get_opt(&name)
            .await
            .map_err(kube_err("read prepare Job"))?
        {
            Some(job) => job,
            None => {
                match self
                    .jobs
                    .create(
                        &PostParams::default(),
                        &self.with_defaults(jobs::prepare_job(run), run),
                    )
                    .await
                {
                    Ok(_) => self.ctx.metrics.write("create", "job"),
                    Err(e) if is_conflict_or_exists(&e) => {}
                    Err(e) => return Err(kube_err("create prepare Job")(e)),
                }
                return Ok(Prepared::Waiting);
            }
        };
        match jobs::job_outcome(&job) {
            None => Ok(Prepared::Waiting),
            Some(Ok(())) => {
                let url = jobs::partitions_url(run);
                status.scoring_data = Some(url.clone());
                set_condition(
                    status,
                    "Prepared",
                    "True",
                    "Partitioned",
                    &format!("readings partitioned into {url}"),
                    run,
                );
                self.mark_recorded(
                    &name,
                    run.spec
                        .finished_job_ttl_seconds
                        .unwrap_or(self.ctx.config.finished_job_ttl_seconds),
                )
                .await;
                Ok(Prepared::Ready(url))
            }
            Some(Err((reason, message))) => Ok(Prepared::Failed(format!(
                "partitioning {} failed: {reason} {message}",
                run.spec.storage.data
            ))),
        }
    }

    /// Names which sensors of a failed multi-sensor Job failed, from the scorer's log records.
    async fn refine_failures(
        &self,
        run: &ScoringRun,
        batch: &[SensorRef],
        failed: &mut Vec<FailedSensor>,
    ) {
        let Some(records) = self
            .sensor_records(&run.spec.storage.output, &self.name, batch)
            .await
        else {
            return;
        };
        let mut refined = Vec::new();
        for (s, record) in batch.iter().zip(records) {
            // A sensor without a record never ran to the end: the Job-level failure stands.
            let Some(record) = record else { return };
            if record.outcome != Outcome::Succeeded {
                refined.push(FailedSensor {
                    sensor: s.to_string(),
                    reason: "ScorerFailed".into(),
                    message: record.error.unwrap_or_default(),
                });
            }
        }
        if !refined.is_empty() {
            *failed = refined;
        }
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

    /// Writes `<output>/<run>/summary.json` (best effort, operator credentials).
    async fn write_summary(
        &self,
        run: &ScoringRun,
        status: &ScoringRunStatus,
        sensors: &[SensorRef],
    ) {
        if !self.ctx.config.read_ledger {
            return;
        }
        let summary = serde_json::json!({
            "run": self.name,
            "namespace": self.ns,
            "phase": status.phase,
            "total": status.total,
            "succeeded": status.succeeded,
            "failed": status.failed,
            "startTime": status.start_time,
            "completionTime": status.completion_time,
            "failedSensors": status.failed_sensors,
            "failedBatches": status.failed_batches,
            "sensorsPerJob": run.spec.sensors_per_job,
            "sensors": sensors.len(),
        });
        let Ok(out) = fleetscore_scorer::storage::open(&jobs::ledger_url(run)) else {
            return;
        };
        let Ok(bytes) = serde_json::to_vec_pretty(&summary) else {
            return;
        };
        if let Err(e) = out.child("summary.json").put(bytes.into()).await {
            warn!(run = %self.name, error = %e, "could not write summary.json");
        }
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
        let mut st = status.clone();
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
            let name = rerun_name(&self.name, &value);
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
                Err(e) if is_conflict_or_exists(&e) => {}
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

    /// Ends the run as Failed with a reason (invalid spec, failed prepare step).
    async fn fail_run(
        &self,
        run: &ScoringRun,
        mut status: ScoringRunStatus,
        reason: &str,
        message: &str,
    ) -> Result<(), RunError> {
        status.phase = Some(Phase::Failed);
        status.message = Some(message.to_string());
        if status.start_time.is_none() {
            status.start_time = Some(Time(Timestamp::now()));
        }
        status.completion_time = Some(Time(Timestamp::now()));
        self.finish_status(run, &mut status);
        set_condition(&mut status, "Complete", "True", reason, message, run);
        self.write_status(run, &status).await?;
        self.ctx
            .metrics
            .runs
            .get_or_create(&OutcomeLabels {
                outcome: "Failed".into(),
            })
            .inc();
        self.publish(run, EventType::Warning, reason, message.to_string())
            .await;
        Ok(())
    }

    /// Fills in duration, observedGeneration and the Complete condition.
    fn finish_status(&self, run: &ScoringRun, status: &mut ScoringRunStatus) {
        status.observed_generation = run.metadata.generation;
        if let Some(start) = &status.start_time {
            let end = status
                .completion_time
                .as_ref()
                .map_or_else(Timestamp::now, |t| t.0);
            status.duration = Some(queue::human_duration(end.as_second() - start.0.as_second()));
        }
        let phase = status.phase.unwrap_or_default();
        if phase.is_finished() {
            let message = status.message.clone().unwrap_or_default();
            set_condition(status, "Complete", "True", phase.as_str(), &message, run);
        } else {
            set_condition(status, "Complete", "False", phase.as_str(), "", run);
        }
    }

    /// Server-side apply of our status fields, with force (we own them all).
    async fn write_status(
        &self,
        run: &ScoringRun,
        status: &ScoringRunStatus,
    ) -> Result<(), RunError> {
        let patch = serde_json::json!({
            "apiVersion": ScoringRun::api_version(&()),
            "kind": ScoringRun::kind(&()),
            "status": status,
        });
        let pp = PatchParams::apply(FIELD_MANAGER).force();
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
            Err(e) if is_not_found(&e) => {}
            Err(e) => warn!(job = %name, error = %e, "marking a finished Job failed"),
        }
    }

    /// Publishes an event on the run (best effort).
    async fn publish(&self, run: &ScoringRun, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        match self.ctx.recorder.publish(&ev, &run.object_ref(&())).await {
            Ok(()) => self.ctx.metrics.write("create", "event"),
            Err(e) => warn!(run = %self.name, error = %e, "publishing an event failed"),
        }
    }
}

/// True when `new` differs from `old` in more than the duration text.
fn same_progress(old: Option<&ScoringRunStatus>, new: &ScoringRunStatus) -> bool {
    let Some(old) = old else { return false };
    let mut a = old.clone();
    let mut b = new.clone();
    a.duration = None;
    b.duration = None;
    a.scaler = None;
    b.scaler = None;
    a == b
}

/// True when the run's own deadline has passed.
fn run_deadline_passed(run: &ScoringRun, status: &ScoringRunStatus) -> bool {
    match (run.spec.run_deadline_seconds, &status.start_time) {
        (Some(limit), Some(start)) => Timestamp::now().as_second() >= start.0.as_second() + limit,
        _ => false,
    }
}

/// Reads the ConfigMap's `device:tag` lines.
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

/// Name of the run created by a rerun request with annotation value `value`.
pub fn rerun_name(run: &str, value: &str) -> String {
    let hash = value.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    jobs::job_name(run, &format!("rerun-{:06x}", hash & 0xff_ffff))
}

fn has_condition(status: &ScoringRunStatus, type_: &str, value: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == value)
}

/// Sets a condition, keeping its transition time when its status does not change.
fn set_condition(
    status: &mut ScoringRunStatus,
    type_: &str,
    value: &str,
    reason: &str,
    message: &str,
    run: &ScoringRun,
) {
    let now = Time(Timestamp::now());
    let reason = if reason.is_empty() {
        "Unknown".to_string()
    } else {
        reason.to_string()
    };
    if let Some(c) = status.conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != value {
            c.last_transition_time = now;
        }
        c.status = value.into();
        c.reason = reason;
        c.message = message.into();
        c.observed_generation = run.metadata.generation;
        return;
    }
    status.conditions.push(Condition {
        type_: type_.into(),
        status: value.into(),
        reason,
        message: message.into(),
        last_transition_time: now,
        observed_generation: run.metadata.generation,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensor_lists_read_back_as_written() {
        let got = parse_sensor_lines("1:4\n\n2:5\n").unwrap();
        assert_eq!(
            got.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["1:4", "2:5"]
        );
        assert!(parse_sensor_lines("nocolon").is_err());
    }

    #[test]
    fn rerun_names_are_deterministic_per_request() {
        assert_eq!(rerun_name("nightly", "1"), rerun_name("nightly", "1"));
        assert_ne!(rerun_name("nightly", "1"), rerun_name("nightly", "2"));
        assert!(rerun_name("nightly", "1").starts_with("nightly-rerun-"));
    }
}
