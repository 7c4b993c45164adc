//! The pure middle of a reconcile: from what [`super::controller`] observed (the run, its
//! resolved sensors, its Jobs, the ledger records of failed packed Jobs, the time) to a
//! [`RunDecision`]: the status to write, the Jobs to create, mark and delete, the events and the
//! metrics. No API calls and no clock here, so every rule is unit-tested without a cluster.
//!
//! The controller applies a decision in this order, each step safe to repeat after a crash:
//! 1. create Jobs (deterministic names: a repeat is a 409, never a second Job);
//! 2. write the status (counts, `nextBatch`, recorded batches) by server-side apply, conditional
//!    on the resourceVersion it read;
//! 3. only then mark recorded Jobs for the TTL controller (a Job's outcome is never lost);
//! 4. delete Jobs (run deadline), publish events, update metrics.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::jobs::{self, PodDefaults};
use super::plan::{self, BatchSet, JobState, Layout, ObservedJob, Progress};
use crate::crd::run::{
    FailedSensor, MAX_LISTED_FAILURES, Phase, ScoringRun, ScoringRunStatus, SensorRef,
};
use crate::kit::{condition_is_true, set_condition};

/// Condition that is True once the run has finished (any final phase); `kubectl wait
/// --for=condition=Ready` waits for it.
pub const READY: &str = "Ready";
/// Condition: the one big CSV was partitioned per sensor.
pub const PREPARED: &str = "Prepared";
/// Condition: False when Jobs labelled for this run's name belong to something else.
pub const CHILDREN_OWNED: &str = "ChildrenOwned";

/// The run controller's settings that decisions depend on.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// TTL of recorded Jobs unless the run sets one.
    pub finished_job_ttl_seconds: i32,
    /// Operator-wide defaults of scoring pods.
    pub pod_defaults: PodDefaults,
    /// Re-check interval of an unfinished run.
    pub resync: Duration,
}

/// Where the prepare (partition) step stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrepareState {
    /// The run reads its data as given.
    NotNeeded,
    /// Partitioned earlier (the `Prepared` condition is True).
    Done,
    /// The prepare Job does not exist yet.
    Missing,
    /// The prepare Job is running.
    Running,
    /// The prepare Job completed; its outcome is not in the status yet.
    Succeeded,
    /// The prepare Job failed, with reason and message.
    Failed(String, String),
}

/// Everything one reconcile read.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The run, read fresh.
    pub run: ScoringRun,
    /// The current time.
    pub now: Timestamp,
    /// The run's sensors, fixed at run start.
    pub sensors: Vec<SensorRef>,
    /// The ConfigMap holding them, when they are not computable from the spec.
    pub sensor_list: Option<String>,
    /// The prepare step.
    pub prepare: PrepareState,
    /// Scoring Jobs controlled by this run (by UID).
    pub jobs: Vec<Job>,
    /// Names of Jobs labelled with this run's name but controlled by something else.
    pub foreign: Vec<String>,
    /// Per failed packed batch, the failed sensors as the scorer's ledger records name them.
    pub refined: BTreeMap<i64, Vec<FailedSensor>>,
}

/// An event to publish on the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunEvent {
    /// Warning (else Normal).
    pub warning: bool,
    /// PascalCase reason.
    pub reason: String,
    /// Human-readable note.
    pub note: String,
}

impl RunEvent {
    fn normal(reason: &str, note: String) -> Self {
        Self {
            warning: false,
            reason: reason.into(),
            note,
        }
    }
    fn warning(reason: &str, note: String) -> Self {
        Self {
            warning: true,
            reason: reason.into(),
            note,
        }
    }
}

/// A Job to create, and which batch it is (None: the prepare Job).
#[derive(Clone, Debug)]
pub struct Create {
    /// The batch it scores; None for the prepare Job.
    pub batch: Option<i64>,
    /// The Job, with operator defaults filled in.
    pub job: Job,
}

/// What one reconcile does.
#[derive(Clone, Debug, Default)]
pub struct RunDecision {
    /// The status to write (the fields this controller owns; never `scaler`).
    pub status: ScoringRunStatus,
    /// False when the status equals the one read except for the duration text.
    pub write_status: bool,
    /// Jobs to create.
    pub create: Vec<Create>,
    /// Finished Jobs to mark recorded (and hand to the TTL controller) after the status write.
    pub mark: Vec<String>,
    /// Their TTL.
    pub ttl: i32,
    /// Jobs to delete after the status write.
    pub delete: Vec<String>,
    /// Events to publish.
    pub events: Vec<RunEvent>,
    /// The final phase, when the run finished in this pass.
    pub finished: Option<Phase>,
    /// Sensors newly recorded as succeeded / failed (metrics).
    pub newly: (u64, u64),
    /// The newly failed sensors by reason (metrics; sums to `newly.1`).
    pub newly_failed: BTreeMap<String, u64>,
    /// Queue depth and active Jobs (per-run gauges) while the run is unfinished.
    pub gauges: Option<(i64, i64)>,
    /// When to look again; None: on the next change only.
    pub requeue: Option<Duration>,
    /// True when this pass creates the run's very first scoring Jobs (no Job existed, none was
    /// recorded): if the API server refuses all of them, it refuses the run.
    pub first_creates: bool,
}

impl RunDecision {
    /// Counts `n` newly failed sensors under `reason`: keeps `newly.1` and `newly_failed` in step.
    fn count_failed(&mut self, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.newly.1 += n;
        *self.newly_failed.entry(reason.to_string()).or_default() += n;
    }
}

/// Most `SensorFailed` events one reconcile publishes (events are API writes too).
const MAX_FAILURE_EVENTS: usize = 5;

/// Decides one reconcile of an unfinished run.
pub fn decide(obs: &Observed, settings: &Settings) -> RunDecision {
    let run = &obs.run;
    let spec = &run.spec;
    let read = owned_status(run.status.as_ref());
    let mut st = read.clone();
    let mut d = RunDecision {
        ttl: spec
            .finished_job_ttl_seconds
            .unwrap_or(settings.finished_job_ttl_seconds),
        ..RunDecision::default()
    };
    let layout = Layout::new(obs.sensors.len(), spec.sensors_per_job);
    if st.start_time.is_none() {
        st.start_time = Some(Time(obs.now));
        st.ledger = Some(jobs::ledger_url(run));
        d.events.push(RunEvent::normal(
            "RunStarted",
            format!(
                "scoring {} sensors in {} Jobs, {} at a time",
                layout.sensors,
                layout.batches(),
                spec.parallelism
            ),
        ));
    }
    st.total = layout.sensors;
    st.total_batches = layout.batches();
    st.sensor_list.clone_from(&obs.sensor_list);
    note_foreign_children(obs, &mut st, &mut d);
    let deadline_passed = deadline_passed(run, &st, obs.now);

    let data = match &obs.prepare {
        PrepareState::NotNeeded => {
            st.scoring_data = Some(spec.storage.data.clone());
            spec.storage.data.clone()
        }
        PrepareState::Done => st
            .scoring_data
            .clone()
            .unwrap_or_else(|| jobs::partitions_url(run)),
        PrepareState::Missing | PrepareState::Running if deadline_passed => {
            if obs.prepare == PrepareState::Running {
                d.delete.push(super::naming::prepare_job_name(run));
            }
            let message =
                "the run's deadline passed while the readings were being partitioned".to_string();
            return finish_failed(obs, st, d, "DeadlineExceeded", &message);
        }
        PrepareState::Missing | PrepareState::Running => {
            if obs.prepare == PrepareState::Missing {
                let job = jobs::apply_defaults(jobs::prepare_job(run), run, &settings.pod_defaults);
                d.create.push(Create { batch: None, job });
            }
            st.phase = Some(Phase::Pending);
            st.queued = layout.sensors;
            st.message = Some("partitioning the readings once before scoring".into());
            d.requeue = Some(next_check(run, &st, obs.now, settings));
            return finish(obs, &read, st, d);
        }
        PrepareState::Succeeded => {
            let url = jobs::partitions_url(run);
            st.scoring_data = Some(url.clone());
            let message = format!("readings partitioned into {url}");
            set_condition(
                &mut st.conditions,
                PREPARED,
                true,
                "Partitioned",
                &message,
                run.metadata.generation,
                obs.now,
            );
            // The TTL goes on only after `Prepared` is in the status: a crash in between would
            // otherwise let the Job vanish unrecorded and the data be partitioned twice.
            d.mark.push(super::naming::prepare_job_name(run));
            url
        }
        PrepareState::Failed(reason, message) => {
            d.mark.push(super::naming::prepare_job_name(run));
            let message = format!(
                "partitioning {} failed: {reason} {message}",
                spec.storage.data
            );
            return finish_failed(obs, st, d, "PrepareFailed", &message);
        }
    };

    let prior = match progress_of(&st) {
        Ok(p) => p,
        Err(e) => return finish_failed(obs, st, d, "BadStatus", &e.to_string()),
    };
    let mut observed = Vec::with_capacity(obs.jobs.len());
    let mut names: BTreeMap<i64, String> = BTreeMap::new();
    for job in &obs.jobs {
        let Some(batch) = jobs::batch_of(job) else {
            continue;
        };
        let mut state = jobs::job_state(job, &obs.sensors[layout.range(batch)]);
        if let (JobState::Failed { failed }, Some(refined)) = (&mut state, obs.refined.get(&batch))
            && !refined.is_empty()
        {
            failed.clone_from(refined);
        }
        observed.push(ObservedJob {
            batch,
            state,
            marked: jobs::is_marked(job),
        });
        names.insert(batch, job.name_any());
    }
    d.first_creates = obs.jobs.is_empty() && prior.next_batch == 0 && prior.recorded.is_empty();
    let sensor_name = |i: usize| {
        obs.sensors
            .get(i)
            .map(ToString::to_string)
            .unwrap_or_default()
    };
    let p = plan::plan(
        layout,
        &prior,
        &observed,
        spec.parallelism,
        deadline_passed,
        &sensor_name,
    );

    for &b in &p.create {
        let job = jobs::scoring_job(run, b, &obs.sensors[layout.range(b)], &data);
        d.create.push(Create {
            batch: Some(b),
            job: jobs::apply_defaults(job, run, &settings.pod_defaults),
        });
    }
    let job_name = |b: &i64| {
        names
            .get(b)
            .cloned()
            .unwrap_or_else(|| super::naming::batch_job_name(run, *b))
    };
    d.mark.extend(p.mark.iter().map(job_name));
    d.delete.extend(p.delete.iter().map(job_name));
    write_progress(&mut st, &p.progress);
    st.queued = p.counts.queued;
    st.active = p.counts.active;
    let finished = p
        .done
        .then(|| plan::final_phase(p.counts, spec.failure_policy.as_ref()));
    st.phase = Some(finished.unwrap_or(Phase::Running));
    st.message = Some(match finished {
        Some(phase) => outcome_message(phase, &st),
        None if deadline_passed => "run deadline passed".into(),
        None => format!("{} active, {} queued", p.counts.active, p.counts.queued),
    });

    for f in p
        .recorded_now
        .iter()
        .flat_map(|(_, failed)| failed)
        .take(MAX_FAILURE_EVENTS)
    {
        d.events.push(RunEvent::warning(
            "SensorFailed",
            format!("{}: {} {}", f.sensor, f.reason, f.message),
        ));
    }
    for f in p.recorded_now.iter().flat_map(|(_, failed)| failed) {
        d.count_failed(&f.reason, 1);
    }
    let recorded_now: i64 = p.recorded_now.iter().map(|(b, _)| layout.size(*b)).sum();
    d.newly.0 = to_u64(recorded_now).saturating_sub(d.newly.1);
    match finished {
        Some(phase) => {
            st.completion_time = Some(Time(obs.now));
            d.finished = Some(phase);
            let reason = match phase {
                Phase::Succeeded => "RunSucceeded",
                Phase::PartiallySucceeded => "RunPartiallySucceeded",
                _ => "RunFailed",
            };
            let note = st.message.clone().unwrap_or_default();
            d.events.push(if phase == Phase::Succeeded {
                RunEvent::normal(reason, note)
            } else {
                RunEvent::warning(reason, note)
            });
        }
        None => {
            d.gauges = Some((p.counts.queued, i64::try_from(observed.len()).unwrap_or(0)));
            d.requeue = Some(next_check(run, &st, obs.now, settings));
        }
    }
    finish(obs, &read, st, d)
}

/// Records Jobs the API server refused for good (422, 403): each such batch fails with reason
/// `JobRejected` and the server's message. When every one of a run's first Jobs is refused, the
/// cause is the run itself (its pod template), so the whole run fails instead of trying each
/// remaining batch. Returns whether the run finished.
pub fn record_rejections(obs: &Observed, d: &mut RunDecision, rejected: &[(i64, String)]) -> bool {
    if rejected.is_empty() {
        return false;
    }
    let scoring_creates = d.create.iter().filter(|c| c.batch.is_some()).count();
    let layout = Layout::new(obs.sensors.len(), obs.run.spec.sensors_per_job);
    let Ok(mut progress) = progress_of(&d.status) else {
        return false;
    };
    let whole_run = d.first_creates && rejected.len() == scoring_creates;
    let batches: Vec<(i64, String)> = if whole_run {
        (0..layout.batches())
            .map(|b| (b, rejected[0].1.clone()))
            .collect()
    } else {
        rejected.to_vec()
    };
    for (batch, message) in &batches {
        if progress.recorded.contains(*batch) {
            continue;
        }
        let range = layout.range(*batch);
        let n = i64::try_from(range.len()).unwrap_or(0);
        for s in &obs.sensors[range] {
            if progress.failed_sensors.len() < MAX_LISTED_FAILURES {
                progress.failed_sensors.push(FailedSensor {
                    sensor: s.to_string(),
                    reason: "JobRejected".into(),
                    message: message.clone(),
                });
            }
        }
        progress.failed += n;
        progress.recorded.insert(*batch);
        progress.failed_batches.insert(*batch);
        d.status.active = (d.status.active - n).max(0);
        d.count_failed("JobRejected", to_u64(n));
    }
    progress.next_batch = progress
        .next_batch
        .max(batches.iter().map(|(b, _)| b + 1).max().unwrap_or(0));
    let st = &mut d.status;
    write_progress(st, &progress);
    st.queued = (progress.next_batch..layout.batches())
        .map(|b| layout.size(b))
        .sum();
    let note = format!(
        "the API server refused {} Job(s): {}",
        rejected.len(),
        rejected[0].1
    );
    d.events
        .push(RunEvent::warning("JobRejected", note.clone()));
    d.write_status = true;
    if progress.recorded.len() >= layout.batches() {
        let counts = plan::Counts {
            total: layout.sensors,
            queued: 0,
            active: 0,
            succeeded: st.succeeded,
            failed: st.failed,
        };
        let phase = plan::final_phase(counts, obs.run.spec.failure_policy.as_ref());
        st.phase = Some(phase);
        st.message = Some(if whole_run {
            note
        } else {
            outcome_message(phase, st)
        });
        st.completion_time = Some(Time(obs.now));
        set_ready(st, &obs.run, obs.now);
        d.finished = Some(phase);
        d.gauges = None;
        d.requeue = None;
        return true;
    }
    // The next pass records the rest and finishes on fresh state.
    d.requeue = Some(Duration::from_secs(1));
    false
}

/// A run that ends Failed before or without scoring (invalid, prepare failed, deadline during
/// prepare): every sensor not yet recorded counts as failed.
pub fn finish_failed(
    obs: &Observed,
    mut st: ScoringRunStatus,
    mut d: RunDecision,
    reason: &str,
    message: &str,
) -> RunDecision {
    let read = owned_status(obs.run.status.as_ref());
    if st.start_time.is_none() {
        st.start_time = Some(Time(obs.now));
    }
    st.phase = Some(Phase::Failed);
    st.message = Some(message.to_string());
    st.failed = (st.total - st.succeeded).max(st.failed);
    st.queued = 0;
    st.active = 0;
    st.completion_time = Some(Time(obs.now));
    d.finished = Some(Phase::Failed);
    d.count_failed(reason, to_u64(st.failed - read.failed));
    d.events
        .push(RunEvent::warning(reason, message.to_string()));
    d.gauges = None;
    d.requeue = None;
    let generation = obs.run.metadata.generation;
    set_condition(
        &mut st.conditions,
        READY,
        true,
        reason,
        message,
        generation,
        obs.now,
    );
    st.observed_generation = generation;
    st.duration = duration_text(&st, obs.now);
    d.write_status = true;
    d.status = st;
    d
}

/// Fills in observedGeneration, duration and the Ready condition, and whether to write.
fn finish(
    obs: &Observed,
    read: &ScoringRunStatus,
    mut st: ScoringRunStatus,
    mut d: RunDecision,
) -> RunDecision {
    st.observed_generation = obs.run.metadata.generation;
    st.duration = duration_text(&st, obs.now);
    set_ready(&mut st, &obs.run, obs.now);
    d.write_status = !same_progress(read, &st);
    d.status = st;
    d
}

fn set_ready(st: &mut ScoringRunStatus, run: &ScoringRun, now: Timestamp) {
    let phase = st.phase.unwrap_or_default();
    let message = if phase.is_finished() {
        st.message.clone().unwrap_or_default()
    } else {
        String::new()
    };
    set_condition(
        &mut st.conditions,
        READY,
        phase.is_finished(),
        phase.as_str(),
        &message,
        run.metadata.generation,
        now,
    );
}

/// Condition `ChildrenOwned`: False, with the names, while Jobs labelled for this run's name
/// belong to another owner (an earlier run of the same name, orphaned). Their outcomes are
/// never taken for this run's.
fn note_foreign_children(obs: &Observed, st: &mut ScoringRunStatus, d: &mut RunDecision) {
    let generation = obs.run.metadata.generation;
    if obs.foreign.is_empty() {
        if st.conditions.iter().any(|c| c.type_ == CHILDREN_OWNED) {
            set_condition(
                &mut st.conditions,
                CHILDREN_OWNED,
                true,
                "AllOwned",
                "",
                generation,
                obs.now,
            );
        }
        return;
    }
    let shown: Vec<&str> = obs.foreign.iter().take(5).map(String::as_str).collect();
    let message = format!(
        "{} Job(s) labelled for this run belong to another owner and are ignored: {}",
        obs.foreign.len(),
        shown.join(", ")
    );
    let was_false = st
        .conditions
        .iter()
        .any(|c| c.type_ == CHILDREN_OWNED && c.status == "False");
    set_condition(
        &mut st.conditions,
        CHILDREN_OWNED,
        false,
        "ForeignJobs",
        &message,
        generation,
        obs.now,
    );
    if !was_false {
        d.events
            .push(RunEvent::warning("ForeignJobsIgnored", message));
    }
}

/// The status fields this controller owns, as read (the scaler's report left out).
pub fn owned_status(status: Option<&ScoringRunStatus>) -> ScoringRunStatus {
    let mut st = status.cloned().unwrap_or_default();
    st.scaler = None;
    st
}

/// The queue's memory, from the status.
fn progress_of(st: &ScoringRunStatus) -> Result<Progress, plan::QueueError> {
    Ok(Progress {
        next_batch: st.next_batch,
        recorded: BatchSet::parse(&st.recorded_batches, "status.recordedBatches")?,
        failed_batches: BatchSet::parse(&st.failed_batches, "status.failedBatches")?,
        succeeded: st.succeeded,
        failed: st.failed,
        failed_sensors: st.failed_sensors.clone(),
    })
}

fn write_progress(st: &mut ScoringRunStatus, p: &Progress) {
    st.next_batch = p.next_batch;
    st.recorded_batches = p.recorded.to_string();
    st.failed_batches = p.failed_batches.to_string();
    st.failed_sensors.clone_from(&p.failed_sensors);
    st.succeeded = p.succeeded;
    st.failed = p.failed;
}

fn outcome_message(phase: Phase, st: &ScoringRunStatus) -> String {
    format!(
        "{}: {} of {} sensors succeeded, {} failed",
        phase.as_str(),
        st.succeeded,
        st.total,
        st.failed
    )
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// True when `new` differs from `old` in no more than the duration text.
fn same_progress(old: &ScoringRunStatus, new: &ScoringRunStatus) -> bool {
    let mut a = old.clone();
    let mut b = new.clone();
    a.duration = None;
    b.duration = None;
    for c in a.conditions.iter_mut().chain(b.conditions.iter_mut()) {
        c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
    }
    a == b
}

/// True once the run's own deadline has passed (it runs from the run's start, in every phase).
pub fn deadline_passed(run: &ScoringRun, st: &ScoringRunStatus, now: Timestamp) -> bool {
    match (run.spec.run_deadline_seconds, &st.start_time) {
        (Some(limit), Some(start)) => now.as_second() >= start.0.as_second().saturating_add(limit),
        _ => false,
    }
}

/// Periodic re-check; earlier when the run's deadline comes sooner.
fn next_check(
    run: &ScoringRun,
    st: &ScoringRunStatus,
    now: Timestamp,
    settings: &Settings,
) -> Duration {
    match (run.spec.run_deadline_seconds, &st.start_time) {
        (Some(limit), Some(start)) => {
            let left = start.0.as_second().saturating_add(limit) - now.as_second();
            settings
                .resync
                .min(Duration::from_secs(u64::try_from(left.max(1)).unwrap_or(1)))
        }
        _ => settings.resync,
    }
}

/// Wall time so far or in total, e.g. `2m31s`.
fn duration_text(st: &ScoringRunStatus, now: Timestamp) -> Option<String> {
    let start = st.start_time.as_ref()?;
    let end = st.completion_time.as_ref().map_or(now, |t| t.0);
    Some(plan::human_duration(end.as_second() - start.0.as_second()))
}

/// True when the run is finished and the `Ready` condition says so.
pub fn is_ready(st: &ScoringRunStatus) -> bool {
    condition_is_true(&st.conditions, READY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::run::ScoringRunSpec;
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn run(extra: serde_json::Value) -> ScoringRun {
        let mut spec = serde_json::json!({
            "sensors": { "devices": ["1", "2"], "tags": ["1", "2", "3"] },
            "storage": { "models": "m", "data": "d/parts", "output": "o" },
            "parallelism": 2,
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        let spec: ScoringRunSpec = serde_json::from_value(spec).unwrap_or_else(|e| panic!("{e}"));
        let mut r = ScoringRun::new("nightly", spec);
        r.metadata.namespace = Some("ns".into());
        r.metadata.uid = Some("uid-1".into());
        r.metadata.generation = Some(1);
        r
    }

    fn sensors(r: &ScoringRun) -> Vec<SensorRef> {
        plan::resolve_static(r.spec.sensors.as_ref().unwrap_or_else(|| panic!("sensors")))
            .unwrap_or_else(|| panic!("static"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn observed(r: ScoringRun, now: Timestamp, jobs: Vec<Job>) -> Observed {
        let sensors = sensors(&r);
        Observed {
            run: r,
            now,
            sensors,
            sensor_list: None,
            prepare: PrepareState::NotNeeded,
            jobs,
            foreign: Vec::new(),
            refined: BTreeMap::new(),
        }
    }

    fn settings() -> Settings {
        Settings {
            resync: Duration::from_secs(30),
            ..Settings::default()
        }
    }

    fn with(mut r: ScoringRun, st: ScoringRunStatus) -> ScoringRun {
        r.status = Some(st);
        r
    }

    fn finished_job(r: &ScoringRun, batch: i64, ok: bool) -> Job {
        let mut job = jobs::scoring_job(
            r,
            batch,
            &sensors(r)[batch as usize..batch as usize + 1],
            "d",
        );
        job.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: if ok { "Complete" } else { "Failed" }.into(),
                status: "True".into(),
                reason: (!ok).then(|| "BackoffLimitExceeded".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        job
    }

    #[test]
    fn a_new_run_starts_parallelism_jobs_and_says_so() {
        let d = decide(
            &observed(run(serde_json::json!({})), t(0), vec![]),
            &settings(),
        );
        assert_eq!(
            d.create.iter().map(|c| c.batch).collect::<Vec<_>>(),
            [Some(0), Some(1)]
        );
        assert_eq!(
            (
                d.status.total,
                d.status.queued,
                d.status.active,
                d.status.next_batch
            ),
            (6, 4, 2, 2)
        );
        assert_eq!(d.status.phase, Some(Phase::Running));
        assert!(d.write_status && d.first_creates);
        assert_eq!(d.events[0].reason, "RunStarted");
        assert!(!is_ready(&d.status));
        assert_eq!(d.requeue, Some(Duration::from_secs(30)));
    }

    #[test]
    fn finished_jobs_are_recorded_then_marked_and_the_run_ends_ready() {
        let r = run(serde_json::json!({ "sensors": { "devices": ["1"], "tags": ["1", "2"] } }));
        let st = decide(&observed(r.clone(), t(0), vec![]), &settings()).status;
        let r = with(r, st);
        let jobs = vec![finished_job(&r, 0, true), finished_job(&r, 1, false)];
        let d = decide(&observed(r.clone(), t(60), jobs), &settings());
        assert_eq!(
            d.finished,
            Some(Phase::Failed),
            "no failure tolerated by default"
        );
        assert_eq!((d.status.succeeded, d.status.failed), (1, 1));
        assert_eq!(
            d.mark.len(),
            2,
            "both Jobs get their TTL after the status write"
        );
        assert!(is_ready(&d.status));
        assert_eq!(d.status.duration.as_deref(), Some("1m0s"));
        assert_eq!(d.newly, (1, 1));
        let reason = d.status.failed_sensors[0].reason.clone();
        assert_eq!(
            d.newly_failed,
            BTreeMap::from([(reason, 1)]),
            "the failure is counted under its reason"
        );
        assert_eq!(d.requeue, None);
        assert!(
            d.events.iter().any(|e| e.reason == "SensorFailed")
                && d.events.iter().any(|e| e.reason == "RunFailed")
        );
    }

    #[test]
    fn jobs_of_another_owner_are_never_counted_and_raise_a_condition() {
        let r = run(serde_json::json!({}));
        let st = decide(&observed(r.clone(), t(0), vec![]), &settings()).status;
        let r = with(r, st);
        let mut obs = observed(r, t(5), vec![]);
        obs.foreign = vec!["nightly-old-0".into()];
        let d = decide(&obs, &settings());
        assert_eq!((d.status.succeeded, d.status.failed), (0, 0));
        assert!(
            d.status
                .conditions
                .iter()
                .any(|c| c.type_ == CHILDREN_OWNED && c.status == "False")
        );
        assert!(d.events.iter().any(|e| e.reason == "ForeignJobsIgnored"));
        // Created again (the lost batches 0 and 1), under this run's own names.
        assert_eq!(d.create.len(), 2);
    }

    #[test]
    fn the_scalers_report_is_never_written_back() {
        let r = run(serde_json::json!({}));
        let mut st = decide(&observed(r.clone(), t(0), vec![]), &settings()).status;
        st.scaler = Some(serde_json::json!({ "nodes": 3 }));
        let d = decide(&observed(with(r, st), t(1), vec![]), &settings());
        assert_eq!(d.status.scaler, None);
    }

    #[test]
    fn an_unchanged_run_costs_no_status_write() {
        let r = run(serde_json::json!({}));
        let d0 = decide(&observed(r.clone(), t(0), vec![]), &settings());
        let r = with(r, d0.status);
        let jobs: Vec<Job> = d0.create.into_iter().map(|c| c.job).collect();
        let d = decide(&observed(r, t(3), jobs), &settings());
        assert!(!d.write_status, "only the duration changed");
        assert!(d.create.is_empty());
    }

    #[test]
    fn the_deadline_is_enforced_while_partitioning() {
        let r = run(
            serde_json::json!({ "runDeadlineSeconds": 60, "storage": { "models": "m", "data": "d/readings.csv", "output": "o" } }),
        );
        let mut obs = observed(r.clone(), t(0), vec![]);
        obs.prepare = PrepareState::Missing;
        let d = decide(&obs, &settings());
        assert_eq!(d.create.len(), 1);
        assert_eq!(d.create[0].batch, None, "the prepare Job first");
        assert_eq!(d.status.phase, Some(Phase::Pending));
        let mut obs = observed(with(r, d.status), t(61), vec![]);
        obs.prepare = PrepareState::Running;
        let d = decide(&obs, &settings());
        assert_eq!(d.finished, Some(Phase::Failed));
        assert_eq!(d.status.failed, 6);
        assert_eq!(d.delete.len(), 1, "the prepare Job is stopped");
        assert!(is_ready(&d.status));
    }

    #[test]
    fn a_partitioned_run_gets_prepared_before_the_prepare_job_gets_its_ttl() {
        let r = run(
            serde_json::json!({ "storage": { "models": "m", "data": "d/readings.csv", "output": "o" } }),
        );
        let mut obs = observed(r, t(0), vec![]);
        obs.prepare = PrepareState::Succeeded;
        let d = decide(&obs, &settings());
        assert!(
            d.status
                .conditions
                .iter()
                .any(|c| c.type_ == PREPARED && c.status == "True")
        );
        assert_eq!(d.mark, [super::super::naming::prepare_job_name(&obs.run)]);
        assert_eq!(d.create.len(), 2, "scoring starts in the same pass");
        assert!(
            d.write_status,
            "the mark is applied only after this status write"
        );
    }

    #[test]
    fn when_every_first_job_is_refused_the_run_fails_with_the_servers_message() {
        let obs = observed(run(serde_json::json!({})), t(0), vec![]);
        let mut d = decide(&obs, &settings());
        let msg = "Job.batch \"x\" is invalid: spec.template.spec.containers[0].imagePullPolicy: Unsupported value".to_string();
        let done = record_rejections(&obs, &mut d, &[(0, msg.clone()), (1, msg.clone())]);
        assert!(done);
        assert_eq!(d.finished, Some(Phase::Failed));
        assert_eq!(
            (d.status.failed, d.status.queued, d.status.active),
            (6, 0, 0)
        );
        assert!(
            d.status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("imagePullPolicy"))
        );
        assert!(
            d.status
                .failed_sensors
                .iter()
                .all(|f| f.reason == "JobRejected")
        );
        assert!(is_ready(&d.status));
    }

    #[test]
    fn a_refused_batch_fails_alone_when_others_were_accepted() {
        let obs = observed(run(serde_json::json!({})), t(0), vec![]);
        let mut d = decide(&obs, &settings());
        let done = record_rejections(
            &obs,
            &mut d,
            &[(1, "label value \"a/b\" is invalid".into())],
        );
        assert!(!done);
        assert_eq!(
            (
                d.status.failed,
                d.status.active,
                d.status.failed_batches.as_str()
            ),
            (1, 1, "1")
        );
        assert_eq!(d.requeue, Some(Duration::from_secs(1)));
    }
}
