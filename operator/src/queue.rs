//! The run queue, as pure functions: sensors → batches, which batches to record and create
//! next, and the status counts and phase that follow.
//!
//! The queue lives in the operator, not in etcd: at most `parallelism` Jobs exist at once. Its
//! state is (status.nextBatch, status.recordedBatches, status.failedBatches, counts) plus the
//! Jobs that exist, so it is rebuilt exactly after a restart: a finished Job whose batch is not in
//! `recordedBatches` is recorded once, a batch below `nextBatch` with neither a Job nor a record is
//! created again under the same deterministic name, and nothing is created twice.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::crd::run::{
    FailedSensor, FailurePolicy, MAX_LISTED_FAILURES, Phase, SensorRef, SensorSelector,
};

/// Errors of the queue's pure parts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    /// A range list in the status could not be read.
    #[error("status field {field}: cannot read batch range {text:?}")]
    BadRange {
        /// The status field.
        field: &'static str,
        /// The offending text.
        text: String,
    },
    /// The selector names no sensor.
    #[error("spec.sensors selects no sensor")]
    NoSensors,
}

/// A set of batch numbers kept as sorted, disjoint, inclusive ranges (`0-99,101,103-120`).
/// Jobs finish roughly in order, so the text stays short even for 10,000 batches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchSet {
    ranges: Vec<(i64, i64)>,
}

impl BatchSet {
    /// Reads the status text; `field` names the status field in errors.
    pub fn parse(text: &str, field: &'static str) -> Result<Self, QueueError> {
        let bad = || QueueError::BadRange {
            field,
            text: text.to_string(),
        };
        let mut set = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
                None => {
                    let v: i64 = part.parse().map_err(|_| bad())?;
                    (v, v)
                }
            };
            if a > b || a < 0 {
                return Err(bad());
            }
            for i in a..=b {
                set.insert(i);
            }
        }
        Ok(set)
    }

    /// True when `batch` is in the set.
    pub fn contains(&self, batch: i64) -> bool {
        let i = self.ranges.partition_point(|&(_, end)| end < batch);
        self.ranges.get(i).is_some_and(|&(start, _)| start <= batch)
    }

    /// Adds `batch`, merging neighbouring ranges.
    pub fn insert(&mut self, batch: i64) {
        if self.contains(batch) {
            return;
        }
        let i = self.ranges.partition_point(|&(_, end)| end < batch);
        let joins_prev = i > 0 && self.ranges[i - 1].1 + 1 == batch;
        let joins_next = i < self.ranges.len() && self.ranges[i].0 == batch + 1;
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[i - 1].1 = self.ranges[i].1;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].1 = batch,
            (false, true) => self.ranges[i].0 = batch,
            (false, false) => self.ranges.insert(i, (batch, batch)),
        }
    }

    /// Number of batches in the set.
    pub fn len(&self) -> i64 {
        self.ranges.iter().map(|(a, b)| b - a + 1).sum()
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The batches in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        self.ranges.iter().flat_map(|&(a, b)| a..=b)
    }
}

impl fmt::Display for BatchSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, (a, b)) in self.ranges.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for BatchSet {
    type Err = QueueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s, "batches")
    }
}

/// The sensors a selector names without looking at storage: the list (deduplicated, in order)
/// or devices × tags (device-major). `None` for `allModels`, which needs a listing of the store.
pub fn resolve_static(selector: &SensorSelector) -> Option<Result<Vec<SensorRef>, QueueError>> {
    let sensors: Vec<SensorRef> = if let Some(list) = &selector.list {
        let mut seen = std::collections::HashSet::new();
        list.iter()
            .filter(|s| seen.insert((*s).clone()))
            .cloned()
            .collect()
    } else if let (Some(devices), Some(tags)) = (&selector.devices, &selector.tags) {
        devices
            .iter()
            .flat_map(|d| {
                tags.iter().map(move |t| SensorRef {
                    device: d.clone(),
                    tag: t.clone(),
                })
            })
            .collect()
    } else {
        return None;
    };
    Some(if sensors.is_empty() {
        Err(QueueError::NoSensors)
    } else {
        Ok(sensors)
    })
}

/// How a run's sensors split into batches (one Job each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Number of sensors.
    pub sensors: i64,
    /// Sensors per batch (≥ 1).
    pub per_job: i64,
}

impl Layout {
    /// A layout; `per_job` below 1 counts as 1.
    pub fn new(sensors: usize, per_job: i32) -> Self {
        Self {
            sensors: i64::try_from(sensors).unwrap_or(i64::MAX),
            per_job: i64::from(per_job.max(1)),
        }
    }
    /// Number of batches.
    pub fn batches(&self) -> i64 {
        (self.sensors + self.per_job - 1) / self.per_job
    }
    /// Index range (into the sensor list) of a batch.
    pub fn range(&self, batch: i64) -> std::ops::Range<usize> {
        let start = (batch * self.per_job).clamp(0, self.sensors);
        let end = (start + self.per_job).min(self.sensors);
        to_usize(start)..to_usize(end)
    }
    /// Number of sensors in a batch.
    pub fn size(&self, batch: i64) -> i64 {
        let r = self.range(batch);
        i64::try_from(r.end - r.start).unwrap_or(0)
    }
}

fn to_usize(v: i64) -> usize {
    usize::try_from(v).unwrap_or(0)
}

/// What a finished Job tells about its batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Still running (or pending).
    Active,
    /// Completed; every sensor succeeded.
    Succeeded,
    /// Failed; `failed` lists the sensors that failed with reasons (all of the batch when the
    /// per-sensor records are not known).
    Failed {
        /// Failed sensors and reasons.
        failed: Vec<FailedSensor>,
    },
}

/// One existing scoring Job, as the queue sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedJob {
    /// Batch number (from the Job's label).
    pub batch: i64,
    /// Its state.
    pub state: JobState,
    /// True when the Job already carries the recorded marker (TTL set).
    pub marked: bool,
}

/// What the queue remembers between reconciles (from the status).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// Batches `0..next_batch` have had a Job created.
    pub next_batch: i64,
    /// Batches whose outcome is in the counts.
    pub recorded: BatchSet,
    /// Recorded batches with at least one failed sensor.
    pub failed_batches: BatchSet,
    /// Sensors succeeded so far.
    pub succeeded: i64,
    /// Sensors failed so far.
    pub failed: i64,
    /// Up to 50 failed sensors with reasons.
    pub failed_sensors: Vec<FailedSensor>,
}

/// Sensor counts of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// All sensors.
    pub total: i64,
    /// Waiting for a Job.
    pub queued: i64,
    /// In a running Job.
    pub active: i64,
    /// Succeeded.
    pub succeeded: i64,
    /// Failed.
    pub failed: i64,
}

/// One reconcile's decisions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Batches whose Job to create (new ones and lost ones), ascending.
    pub create: Vec<i64>,
    /// Batches newly recorded in this pass with their failures (empty = all succeeded).
    pub recorded_now: Vec<(i64, Vec<FailedSensor>)>,
    /// Finished, recorded Jobs that still lack the recorded marker (TTL).
    pub mark: Vec<i64>,
    /// Active Jobs to delete (run deadline passed).
    pub delete: Vec<i64>,
    /// Progress after this pass (to write to the status).
    pub progress: Progress,
    /// Counts after this pass.
    pub counts: Counts,
    /// True when every batch is recorded.
    pub done: bool,
}

/// Decides one reconcile: records finished Jobs not yet recorded, recreates lost ones, and fills
/// free slots up to `parallelism` from the queue. With `deadline_passed`, every batch not yet
/// recorded fails with reason `DeadlineExceeded` and active Jobs are deleted.
pub fn plan(
    layout: Layout,
    prior: &Progress,
    jobs: &[ObservedJob],
    parallelism: i32,
    deadline_passed: bool,
    sensor_name: &dyn Fn(usize) -> String,
) -> Plan {
    let total_batches = layout.batches();
    let mut progress = prior.clone();
    let mut plan = Plan::default();
    let by_batch: BTreeMap<i64, &ObservedJob> = jobs
        .iter()
        .filter(|j| j.batch >= 0 && j.batch < total_batches)
        .map(|j| (j.batch, j))
        .collect();
    // Jobs created after the last status write still count as created.
    let highest_job = by_batch.keys().next_back().map_or(0, |b| b + 1);
    progress.next_batch = progress.next_batch.max(highest_job).min(total_batches);

    let mut active_jobs = 0i64;
    let mut active_sensors = 0i64;
    for (&batch, job) in &by_batch {
        let recorded = progress.recorded.contains(batch);
        match &job.state {
            JobState::Active if recorded => {}
            JobState::Active if deadline_passed => {
                let failed = deadline_failures(layout, batch, sensor_name);
                record_batch(layout, &mut progress, &mut plan.recorded_now, batch, failed);
                plan.delete.push(batch);
            }
            JobState::Active => {
                active_jobs += 1;
                active_sensors += layout.size(batch);
            }
            JobState::Succeeded | JobState::Failed { .. } => {
                if !recorded {
                    let failed = match &job.state {
                        JobState::Failed { failed } => failed.clone(),
                        _ => Vec::new(),
                    };
                    record_batch(layout, &mut progress, &mut plan.recorded_now, batch, failed);
                }
                if !job.marked {
                    plan.mark.push(batch);
                }
            }
        }
    }

    // Batches created earlier whose Job vanished before its outcome was recorded.
    let lost: Vec<i64> = (0..progress.next_batch)
        .filter(|b| !progress.recorded.contains(*b) && !by_batch.contains_key(b))
        .collect();
    if deadline_passed {
        for batch in lost.into_iter().chain(progress.next_batch..total_batches) {
            let failed = deadline_failures(layout, batch, sensor_name);
            record_batch(layout, &mut progress, &mut plan.recorded_now, batch, failed);
        }
        progress.next_batch = total_batches;
    } else {
        let mut free = i64::from(parallelism.max(1)) - active_jobs;
        for batch in lost {
            if free <= 0 {
                break;
            }
            plan.create.push(batch);
            free -= 1;
            active_sensors += layout.size(batch);
        }
        while free > 0 && progress.next_batch < total_batches {
            plan.create.push(progress.next_batch);
            active_sensors += layout.size(progress.next_batch);
            progress.next_batch += 1;
            free -= 1;
        }
    }

    let queued: i64 = (progress.next_batch..total_batches)
        .map(|b| layout.size(b))
        .sum();
    plan.counts = Counts {
        total: layout.sensors,
        queued,
        active: active_sensors,
        succeeded: progress.succeeded,
        failed: progress.failed,
    };
    plan.done = progress.recorded.len() >= total_batches;
    plan.progress = progress;
    plan
}

/// Adds a finished batch's outcome to the progress.
fn record_batch(
    layout: Layout,
    progress: &mut Progress,
    recorded_now: &mut Vec<(i64, Vec<FailedSensor>)>,
    batch: i64,
    failed: Vec<FailedSensor>,
) {
    let size = layout.size(batch);
    let n_failed = i64::try_from(failed.len()).unwrap_or(size).min(size);
    progress.succeeded += size - n_failed;
    progress.failed += n_failed;
    if n_failed > 0 {
        progress.failed_batches.insert(batch);
    }
    for f in &failed {
        if progress.failed_sensors.len() < MAX_LISTED_FAILURES {
            progress.failed_sensors.push(f.clone());
        }
    }
    progress.recorded.insert(batch);
    recorded_now.push((batch, failed));
}

fn deadline_failures(
    layout: Layout,
    batch: i64,
    sensor_name: &dyn Fn(usize) -> String,
) -> Vec<FailedSensor> {
    layout
        .range(batch)
        .map(|i| FailedSensor {
            sensor: sensor_name(i),
            reason: "DeadlineExceeded".into(),
            message: "the run's deadline passed before this sensor finished".into(),
        })
        .collect()
}

/// How many failed sensors the policy tolerates out of `total` (no policy: none).
pub fn tolerated_failures(policy: Option<&FailurePolicy>, total: i64) -> i64 {
    let Some(p) = policy else { return 0 };
    let by_count = p.max_failed_sensors;
    let by_percent = p.max_failed_percent.map(|pct| total * i64::from(pct) / 100);
    match (by_count, by_percent) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (None, None) => 0,
    }
}

/// Phase of a finished run: Succeeded without failures, PartiallySucceeded within the policy,
/// Failed beyond it (or when nothing succeeded).
pub fn final_phase(counts: Counts, policy: Option<&FailurePolicy>) -> Phase {
    if counts.failed == 0 {
        Phase::Succeeded
    } else if counts.succeeded > 0 && counts.failed <= tolerated_failures(policy, counts.total) {
        Phase::PartiallySucceeded
    } else {
        Phase::Failed
    }
}

/// `2m31s`-style duration for the printer column.
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(i: usize) -> String {
        format!("s{i}")
    }

    fn active(batch: i64) -> ObservedJob {
        ObservedJob {
            batch,
            state: JobState::Active,
            marked: false,
        }
    }
    fn succeeded(batch: i64) -> ObservedJob {
        ObservedJob {
            batch,
            state: JobState::Succeeded,
            marked: false,
        }
    }
    fn failed(batch: i64, sensor: &str) -> ObservedJob {
        ObservedJob {
            batch,
            state: JobState::Failed {
                failed: vec![FailedSensor {
                    sensor: sensor.into(),
                    reason: "BackoffLimitExceeded".into(),
                    message: String::new(),
                }],
            },
            marked: false,
        }
    }

    #[test]
    fn batch_sets_round_trip_through_their_compact_text() {
        let mut s = BatchSet::default();
        for b in [5, 1, 0, 2, 9, 7, 8, 4] {
            s.insert(b);
        }
        assert_eq!(s.to_string(), "0-2,4-5,7-9");
        s.insert(3);
        s.insert(6);
        assert_eq!(s.to_string(), "0-9");
        assert_eq!(
            BatchSet::parse("0-2,4,7-9", "f").unwrap().to_string(),
            "0-2,4,7-9"
        );
        assert_eq!(BatchSet::parse("", "f").unwrap().len(), 0);
        assert!(BatchSet::parse("3-1", "f").is_err());
        assert!(BatchSet::parse("x", "f").is_err());
        assert!(s.contains(9) && !s.contains(10));
    }

    #[test]
    fn devices_times_tags_expands_device_major_and_lists_are_deduplicated() {
        let sel = SensorSelector {
            devices: Some(vec!["1".into(), "2".into()]),
            tags: Some(vec!["4".into(), "5".into()]),
            ..Default::default()
        };
        let got: Vec<String> = resolve_static(&sel)
            .unwrap()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["1:4", "1:5", "2:4", "2:5"]);
        let s = |d: &str, t: &str| SensorRef {
            device: d.into(),
            tag: t.into(),
        };
        let sel = SensorSelector {
            list: Some(vec![s("1", "4"), s("1", "4"), s("2", "1")]),
            ..Default::default()
        };
        assert_eq!(resolve_static(&sel).unwrap().unwrap().len(), 2);
        let all = SensorSelector {
            all_models: Some(true),
            ..Default::default()
        };
        assert!(resolve_static(&all).is_none());
    }

    #[test]
    fn the_last_batch_holds_the_remainder() {
        let l = Layout::new(10, 4);
        assert_eq!(l.batches(), 3);
        assert_eq!(l.range(2), 8..10);
        assert_eq!(l.size(2), 2);
        assert_eq!(Layout::new(15, 1).batches(), 15);
    }

    #[test]
    fn a_fresh_run_creates_only_parallelism_jobs_and_queues_the_rest() {
        let p = plan(
            Layout::new(15, 1),
            &Progress::default(),
            &[],
            4,
            false,
            &name,
        );
        assert_eq!(p.create, [0, 1, 2, 3]);
        assert_eq!(
            p.counts,
            Counts {
                total: 15,
                queued: 11,
                active: 4,
                succeeded: 0,
                failed: 0
            }
        );
        assert_eq!(p.progress.next_batch, 4);
        assert!(!p.done);
    }

    #[test]
    fn finished_jobs_are_recorded_once_and_free_their_slots() {
        let prior = Progress {
            next_batch: 4,
            ..Default::default()
        };
        let jobs = [succeeded(0), failed(1, "s1"), active(2), active(3)];
        let p = plan(Layout::new(15, 1), &prior, &jobs, 4, false, &name);
        assert_eq!(p.create, [4, 5]);
        assert_eq!(p.mark, [0, 1]);
        assert_eq!(
            p.counts,
            Counts {
                total: 15,
                queued: 9,
                active: 4,
                succeeded: 1,
                failed: 1
            }
        );
        assert_eq!(p.progress.recorded.to_string(), "0-1");
        assert_eq!(p.progress.failed_batches.to_string(), "1");
        assert_eq!(p.progress.failed_sensors.len(), 1);
        // The same Jobs seen again (marker not yet applied) are not counted twice.
        let again = plan(Layout::new(15, 1), &p.progress, &jobs, 4, false, &name);
        assert_eq!(again.counts.succeeded, 1);
        assert_eq!(again.counts.failed, 1);
        assert!(again.recorded_now.is_empty());
    }

    #[test]
    fn a_restart_after_creating_jobs_but_before_the_status_write_creates_no_duplicate() {
        // Status says nothing was created, but Jobs 0..3 exist.
        let jobs = [active(0), active(1), active(2)];
        let p = plan(
            Layout::new(5, 1),
            &Progress::default(),
            &jobs,
            3,
            false,
            &name,
        );
        assert!(p.create.is_empty());
        assert_eq!(p.progress.next_batch, 3);
        assert_eq!(p.counts.active, 3);
        assert_eq!(p.counts.queued, 2);
    }

    #[test]
    fn a_job_that_vanished_before_being_recorded_is_created_again() {
        let prior = Progress {
            next_batch: 3,
            ..Default::default()
        };
        let p = plan(
            Layout::new(5, 1),
            &prior,
            &[active(0), active(2)],
            3,
            false,
            &name,
        );
        assert_eq!(p.create, [1]);
    }

    #[test]
    fn recorded_jobs_deleted_by_their_ttl_are_not_recreated() {
        let mut recorded = BatchSet::default();
        recorded.insert(0);
        let prior = Progress {
            next_batch: 2,
            recorded,
            succeeded: 1,
            ..Default::default()
        };
        let p = plan(Layout::new(2, 1), &prior, &[active(1)], 2, false, &name);
        assert!(p.create.is_empty());
        assert_eq!(p.counts.succeeded, 1);
    }

    #[test]
    fn the_run_is_done_when_every_batch_is_recorded() {
        let prior = Progress {
            next_batch: 2,
            ..Default::default()
        };
        let p = plan(
            Layout::new(3, 2),
            &prior,
            &[succeeded(0), failed(1, "s2")],
            5,
            false,
            &name,
        );
        assert!(p.done);
        assert_eq!(
            p.counts,
            Counts {
                total: 3,
                queued: 0,
                active: 0,
                succeeded: 2,
                failed: 1
            }
        );
    }

    #[test]
    fn a_passed_deadline_fails_everything_unfinished_and_deletes_active_jobs() {
        let prior = Progress {
            next_batch: 2,
            ..Default::default()
        };
        let p = plan(
            Layout::new(4, 1),
            &prior,
            &[succeeded(0), active(1)],
            2,
            true,
            &name,
        );
        assert!(p.done);
        assert_eq!(p.delete, [1]);
        assert!(p.create.is_empty());
        assert_eq!(p.counts.succeeded, 1);
        assert_eq!(p.counts.failed, 3);
        assert_eq!(p.progress.failed_sensors[0].reason, "DeadlineExceeded");
    }

    #[test]
    fn the_failed_list_is_bounded() {
        let prior = Progress {
            next_batch: 60,
            ..Default::default()
        };
        let jobs: Vec<_> = (0..60).map(|b| failed(b, "x")).collect();
        let p = plan(Layout::new(60, 1), &prior, &jobs, 10, false, &name);
        assert_eq!(p.counts.failed, 60);
        assert_eq!(p.progress.failed_sensors.len(), MAX_LISTED_FAILURES);
    }

    #[test]
    fn the_failure_policy_decides_between_partial_success_and_failure() {
        let c = |s, f| Counts {
            total: s + f,
            succeeded: s,
            failed: f,
            ..Default::default()
        };
        assert_eq!(final_phase(c(15, 0), None), Phase::Succeeded);
        assert_eq!(final_phase(c(14, 1), None), Phase::Failed);
        let two = FailurePolicy {
            max_failed_sensors: Some(2),
            max_failed_percent: None,
        };
        assert_eq!(final_phase(c(13, 2), Some(&two)), Phase::PartiallySucceeded);
        assert_eq!(final_phase(c(12, 3), Some(&two)), Phase::Failed);
        let pct = FailurePolicy {
            max_failed_sensors: None,
            max_failed_percent: Some(20),
        };
        assert_eq!(final_phase(c(12, 3), Some(&pct)), Phase::PartiallySucceeded);
        assert_eq!(final_phase(c(11, 4), Some(&pct)), Phase::Failed);
        assert_eq!(final_phase(c(0, 3), Some(&pct)), Phase::Failed);
    }

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(151), "2m31s");
        assert_eq!(human_duration(7322), "2h2m");
    }
}
