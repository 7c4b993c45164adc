//! The `ScoringSchedule` reconciler: at each slot it creates one `ScoringRun` named after the
//! slot (so a restart or a second replica cannot create it twice), applies the concurrency
//! policy, prunes finished runs beyond the history limits, writes status by server-side apply
//! (field manager `fleetscore-schedule`), and requeues exactly for the next slot.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::crd::run::{SCHEDULE_LABEL, ScoringRun};
use crate::crd::schedule::{
    SCHEDULED_AT_ANNOTATION, ScoringSchedule, ScoringScheduleStatus, TRIGGER_ANNOTATION,
    WINDOW_END_ANNOTATION, WINDOW_START_ANNOTATION,
};
use crate::schedule::clock::Clock;
use crate::schedule::metrics::ScheduleMetrics;
use crate::schedule::naming::{label_value, run_name, trigger_run_name};
use crate::schedule::plan::{TickInput, TickPlan, plan_tick};
use crate::schedule::slots::{CronSchedule, SlotError};

/// Field manager of the schedule controller's writes.
pub const FIELD_MANAGER: &str = crate::kit::SCHEDULE_MANAGER;

/// Errors of one reconcile; each names the object it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The schedule has no namespace (it is a namespaced kind, so the API sent something odd).
    #[error("ScoringSchedule {0} has no namespace")]
    NoNamespace(String),
    /// Reading the schedule failed.
    #[error("reading ScoringSchedule {schedule}: {source}")]
    GetSchedule {
        /// The schedule.
        schedule: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Listing the schedule's runs failed.
    #[error("listing the runs of ScoringSchedule {schedule}: {source}")]
    ListRuns {
        /// The schedule.
        schedule: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Creating a run failed (other than AlreadyExists, which means it exists: fine).
    #[error("creating ScoringRun {run} for ScoringSchedule {schedule}: {source}")]
    CreateRun {
        /// The schedule.
        schedule: String,
        /// The run.
        run: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Deleting a run (Replace or history pruning) failed.
    #[error("deleting ScoringRun {run} of ScoringSchedule {schedule}: {source}")]
    DeleteRun {
        /// The schedule.
        schedule: String,
        /// The run.
        run: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Writing the status failed.
    #[error("writing the status of ScoringSchedule {schedule}: {source}")]
    WriteStatus {
        /// The schedule.
        schedule: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Shared state of the schedule controller.
#[derive(Clone)]
pub struct ScheduleContext {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder (one for the controller).
    pub recorder: Recorder,
    /// The clock slots are compared with (the system clock in production).
    pub clock: Arc<dyn Clock>,
    /// Reconciles, errors and slot outcomes.
    pub metrics: ScheduleMetrics,
}

impl ScheduleContext {
    /// A context with a recorder reporting as `fleetscore-schedule`.
    pub fn new(client: Client, clock: Arc<dyn Clock>, metrics: ScheduleMetrics) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            clock,
            metrics,
        }
    }
}

/// Runs the schedule controller until `shutdown` resolves; `namespace` limits it to one
/// namespace (tests run one controller per namespace, each with its own clock).
pub async fn run_controller(
    client: Client,
    clock: Arc<dyn Clock>,
    metrics: ScheduleMetrics,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (schedules, runs) = match &namespace {
        Some(ns) => (
            Api::<ScoringSchedule>::namespaced(client.clone(), ns),
            Api::<ScoringRun>::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let ctx = Arc::new(ScheduleContext::new(client, clock, metrics));
    Controller::new(schedules, watcher::Config::default())
        .owns(runs, watcher::Config::default().labels(SCHEDULE_LABEL))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "schedule reconcile failed");
            }
        })
        .await;
}

/// Requeues a failed reconcile after a short pause.
pub fn error_policy(
    sched: Arc<ScoringSchedule>,
    error: &ScheduleError,
    ctx: Arc<ScheduleContext>,
) -> Action {
    ctx.metrics.errors.inc();
    // A conflicting status write means another writer was faster: retry at once on fresh state.
    if let ScheduleError::WriteStatus {
        source: kube::Error::Api(s),
        ..
    } = error
        && s.is_conflict()
    {
        return Action::requeue(StdDuration::from_millis(100));
    }
    warn!(schedule = %sched.name_any(), error = %error, "retrying in 5s");
    Action::requeue(StdDuration::from_secs(5))
}

/// A run of this schedule, with its slot.
#[derive(Debug, Clone)]
struct OwnedRun {
    slot: DateTime<Utc>,
    name: String,
    /// None while running; Some(true) succeeded (fully or partially), Some(false) failed.
    finished: Option<bool>,
    /// Being deleted (replaced or pruned): neither active nor history.
    deleting: bool,
    /// Created by the trigger annotation: active and history, but no slot handled.
    triggered: bool,
}

/// One reconcile of a schedule: validate, plan the tick, act, write status, requeue.
pub async fn reconcile(
    cached: Arc<ScoringSchedule>,
    ctx: Arc<ScheduleContext>,
) -> Result<Action, ScheduleError> {
    ctx.metrics.reconciles.inc();
    let name = cached.name_any();
    let ns = cached
        .namespace()
        .ok_or_else(|| ScheduleError::NoNamespace(name.clone()))?;
    let schedules: Api<ScoringSchedule> = Api::namespaced(ctx.client.clone(), &ns);
    // The cache may lag our own last status write; acting on it could count a slot twice or
    // undo a count, so read the schedule fresh (the status write is conditional on this version).
    let sched = match schedules.get_opt(&name).await {
        Ok(Some(fresh)) => fresh,
        Ok(None) => return Ok(Action::await_change()),
        Err(source) => {
            return Err(ScheduleError::GetSchedule {
                schedule: name,
                source,
            });
        }
    };
    let runs_api: Api<ScoringRun> = Api::namespaced(ctx.client.clone(), &ns);
    let now = ctx.clock.now();
    let old = sched.status.clone().unwrap_or_default();
    let generation = sched.metadata.generation;

    let cron = match CronSchedule::parse(&sched.spec.schedule, Some(&sched.spec.time_zone)) {
        Ok(cron) => cron,
        Err(e) => {
            let mut status = old.clone();
            status.next_schedule_time = None;
            status.observed_generation = generation;
            let reason = match e {
                SlotError::UnknownTimeZone { .. } => "UnknownTimeZone",
                _ => "InvalidSchedule",
            };
            let changed = set_condition(
                &mut status.conditions,
                "Invalid",
                true,
                reason,
                &e.to_string(),
                generation,
                now,
            );
            if changed {
                publish(
                    &ctx,
                    &sched,
                    EventType::Warning,
                    "Invalid",
                    "Validate",
                    e.to_string(),
                )
                .await;
            }
            write_status(&schedules, &sched, &old, &status).await?;
            return Ok(Action::await_change());
        }
    };

    let runs = list_runs(&runs_api, &sched).await?;
    let mut active: Vec<&OwnedRun> = runs
        .iter()
        .filter(|r| r.finished.is_none() && !r.deleting)
        .collect();
    let newest_run = runs.iter().filter(|r| !r.triggered).map(|r| r.slot).max();
    let created = sched
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| DateTime::<Utc>::from_timestamp(t.0.as_second(), 0));
    // The newest slot known handled (status, or the runs themselves if a status write was lost);
    // the creation time only when nothing ran yet.
    let last_handled = [old.last_schedule_time, newest_run]
        .into_iter()
        .flatten()
        .max()
        .or(created)
        .unwrap_or(now);
    // `@every` counts from the newest handled slot, as CronJob counts from lastScheduleTime.
    let cron = cron.anchored(last_handled);

    let plan = plan_tick(&TickInput {
        spec: &sched.spec,
        cron: &cron,
        now,
        last_handled,
        active: active.len(),
    });

    if plan.replace_active {
        for run in &active {
            delete_run(&runs_api, &name, &run.name).await?;
            ctx.metrics.replaced.inc();
            publish(
                &ctx,
                &sched,
                EventType::Normal,
                "Replaced",
                "DeleteRun",
                format!(
                    "deleted active run {} (concurrencyPolicy Replace)",
                    run.name
                ),
            )
            .await;
        }
        active.clear();
    }

    let mut created_runs: Vec<OwnedRun> = Vec::new();
    for slot in &plan.create {
        let run = build_run(&sched, &cron, *slot);
        let run_name = run.name_any();
        match runs_api.create(&PostParams::default(), &run).await {
            Ok(_) => {
                ctx.metrics.slots("created", 1);
                info!(schedule = %name, run = %run_name, slot = %slot, "created run");
                publish(
                    &ctx,
                    &sched,
                    EventType::Normal,
                    "Created",
                    "CreateRun",
                    format!("created run {run_name} for slot {}", slot.to_rfc3339()),
                )
                .await;
            }
            // Created earlier by us (before a restart) or by another replica: the slot is done.
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(source) => {
                return Err(ScheduleError::CreateRun {
                    schedule: name,
                    run: run_name,
                    source,
                });
            }
        }
        if !runs.iter().any(|r| r.name == run_name) {
            created_runs.push(OwnedRun {
                slot: *slot,
                name: run_name,
                finished: None,
                deleting: false,
                triggered: false,
            });
        }
    }

    let trigger = sched.annotations().get(TRIGGER_ANNOTATION).cloned();
    let new_trigger = trigger.filter(|v| old.last_trigger.as_ref() != Some(v));
    if let Some(value) = &new_trigger {
        let run = build_triggered_run(&sched, &cron, now, value);
        let run_name = run.name_any();
        let slot = run_slot(&run).unwrap_or(now);
        match runs_api.create(&PostParams::default(), &run).await {
            Ok(_) => {
                ctx.metrics.slots("triggered", 1);
                info!(schedule = %name, run = %run_name, slot = %slot, "created triggered run");
                publish(
                    &ctx,
                    &sched,
                    EventType::Normal,
                    "Triggered",
                    "CreateRun",
                    format!("created run {run_name} for the current slot {} ({TRIGGER_ANNOTATION}={value})", rfc3339(slot)),
                )
                .await;
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => {}
            Err(source) => {
                return Err(ScheduleError::CreateRun {
                    schedule: name,
                    run: run_name,
                    source,
                });
            }
        }
        if !runs.iter().any(|r| r.name == run_name) {
            created_runs.push(OwnedRun {
                slot,
                name: run_name,
                finished: None,
                deleting: false,
                triggered: true,
            });
        }
    }

    if !plan.skipped.is_empty() {
        let blocking: Vec<&str> = active.iter().map(|r| r.name.as_str()).collect();
        publish(
            &ctx,
            &sched,
            EventType::Warning,
            "Skipped",
            "SkipSlot",
            format!(
                "skipped slot(s) {}: run {} still active (concurrencyPolicy Forbid)",
                join_slots(&plan.skipped),
                blocking.join(", ")
            ),
        )
        .await;
    }
    if plan.missed > 0 {
        publish(
            &ctx,
            &sched,
            EventType::Warning,
            "Missed",
            "MissSlot",
            missed_message(&plan),
        )
        .await;
    }

    prune_history(&runs_api, &sched, &runs).await?;

    let mut status = next_status(&sched, &old, &plan, &runs, &active, &created_runs, now);
    if new_trigger.is_some() {
        status.last_trigger = new_trigger;
    }
    write_status(&schedules, &sched, &old, &status).await?;
    // Counted once the status holds them, so a retried tick does not count them twice.
    ctx.metrics.slots("skipped", plan.skipped.len() as u64);
    ctx.metrics.slots("missed", plan.missed as u64);

    Ok(match plan.next {
        Some(next) => Action::requeue(ctx.clock.real_duration_until(next)),
        None => Action::await_change(),
    })
}

/// Lists the runs this schedule controls, with their slots, oldest first.
async fn list_runs(
    api: &Api<ScoringRun>,
    sched: &ScoringSchedule,
) -> Result<Vec<OwnedRun>, ScheduleError> {
    let name = sched.name_any();
    let selector = format!("{SCHEDULE_LABEL}={}", label_value(&name));
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| ScheduleError::ListRuns {
            schedule: name.clone(),
            source,
        })?;
    let uid = sched.uid();
    let mut runs: Vec<OwnedRun> = list
        .items
        .into_iter()
        .filter(|run| {
            // A schedule deleted and created again under the same name must not adopt the old runs.
            run.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
        })
        .filter_map(|run| {
            let slot = run
                .annotations()
                .get(SCHEDULED_AT_ANNOTATION)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())?
                .with_timezone(&Utc);
            let finished = run
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .filter(|p| p.is_finished())
                .map(|p| p != crate::crd::run::Phase::Failed);
            Some(OwnedRun {
                slot,
                name: run.name_any(),
                finished,
                deleting: run.metadata.deletion_timestamp.is_some(),
                triggered: run.annotations().contains_key(TRIGGER_ANNOTATION),
            })
        })
        .collect();
    runs.sort_by_key(|r| r.slot);
    Ok(runs)
}

/// The run for `slot`: the template's spec and metadata, the schedule label, the slot and data
/// window annotations, and an owner reference to the schedule.
pub fn build_run(sched: &ScoringSchedule, cron: &CronSchedule, slot: DateTime<Utc>) -> ScoringRun {
    let name = sched.name_any();
    let template = &sched.spec.run_template;
    let mut spec = template.spec.clone();
    spec.schedule = Some(name.clone());
    let mut labels = BTreeMap::new();
    let mut annotations = BTreeMap::new();
    if let Some(meta) = &template.metadata {
        labels.extend(meta.labels.clone());
        annotations.extend(meta.annotations.clone());
    }
    labels.insert(SCHEDULE_LABEL.to_string(), label_value(&name));
    labels.insert(
        "app.kubernetes.io/managed-by".to_string(),
        "fleetscore".to_string(),
    );
    annotations.insert(SCHEDULED_AT_ANNOTATION.to_string(), rfc3339(slot));
    if let Some(start) = cron.previous_before(slot) {
        annotations.insert(WINDOW_START_ANNOTATION.to_string(), rfc3339(start));
    }
    annotations.insert(WINDOW_END_ANNOTATION.to_string(), rfc3339(slot));
    let mut run = ScoringRun::new(&run_name(&name, slot), spec);
    run.metadata = ObjectMeta {
        name: Some(run_name(&name, slot)),
        namespace: sched.namespace(),
        labels: Some(labels),
        annotations: Some(annotations),
        owner_references: sched.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    };
    run
}

/// The run the trigger annotation value `value` asks for: the current slot (the latest at or
/// before `now`) with that slot's data window, named after the slot and the value.
pub fn build_triggered_run(
    sched: &ScoringSchedule,
    cron: &CronSchedule,
    now: DateTime<Utc>,
    value: &str,
) -> ScoringRun {
    let slot = cron
        .previous_before(now + chrono::Duration::seconds(1))
        .unwrap_or_else(|| DateTime::from_timestamp(now.timestamp(), 0).unwrap_or(now));
    let mut run = build_run(sched, cron, slot);
    let name = trigger_run_name(&sched.name_any(), slot, value);
    run.metadata.name = Some(name);
    run.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(TRIGGER_ANNOTATION.to_string(), value.to_string());
    run
}

/// The slot a run was created for (its `scheduled-at` annotation).
fn run_slot(run: &ScoringRun) -> Option<DateTime<Utc>> {
    run.annotations()
        .get(SCHEDULED_AT_ANNOTATION)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Deletes finished runs beyond the history limits, oldest first.
async fn prune_history(
    api: &Api<ScoringRun>,
    sched: &ScoringSchedule,
    runs: &[OwnedRun],
) -> Result<(), ScheduleError> {
    let name = sched.name_any();
    for (outcome, limit) in [
        (true, sched.spec.successful_runs_history_limit),
        (false, sched.spec.failed_runs_history_limit),
    ] {
        let finished: Vec<&OwnedRun> = runs
            .iter()
            .filter(|r| r.finished == Some(outcome) && !r.deleting)
            .collect();
        let keep = usize::try_from(limit.max(0)).unwrap_or(0);
        let excess = finished.len().saturating_sub(keep);
        // `runs` is sorted oldest first.
        for run in finished.into_iter().take(excess) {
            delete_run(api, &name, &run.name).await?;
        }
    }
    Ok(())
}

/// Deletes a run and, in the background, what it owns; a run already gone is fine.
async fn delete_run(api: &Api<ScoringRun>, schedule: &str, run: &str) -> Result<(), ScheduleError> {
    match api.delete(run, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(source) => Err(ScheduleError::DeleteRun {
            schedule: schedule.to_string(),
            run: run.to_string(),
            source,
        }),
    }
}

/// The status after a tick.
fn next_status(
    sched: &ScoringSchedule,
    old: &ScoringScheduleStatus,
    plan: &TickPlan,
    runs: &[OwnedRun],
    active: &[&OwnedRun],
    created: &[OwnedRun],
    now: DateTime<Utc>,
) -> ScoringScheduleStatus {
    let generation = sched.metadata.generation;
    let mut status = old.clone();
    status.observed_generation = generation;
    // Runs found (possibly created before a restart that lost the status write) count too.
    let newest_run = runs
        .iter()
        .chain(created.iter())
        .filter(|r| !r.triggered)
        .map(|r| r.slot)
        .max();
    status.last_schedule_time = [old.last_schedule_time, plan.last_handled, newest_run]
        .into_iter()
        .flatten()
        .max();
    let newest = |ok: bool| {
        runs.iter()
            .filter(|r| r.finished == Some(ok))
            .map(|r| r.slot)
            .max()
    };
    status.last_successful_time = old.last_successful_time.max(newest(true));
    status.last_failure_time = old.last_failure_time.max(newest(false));
    let mut active_runs: Vec<crate::crd::schedule::ActiveRun> = active
        .iter()
        .copied()
        .chain(created.iter())
        .map(|r| crate::crd::schedule::ActiveRun {
            name: r.name.clone(),
            scheduled_time: r.slot,
        })
        .collect();
    active_runs.sort_by_key(|r| r.scheduled_time);
    active_runs.dedup();
    status.active_count = i32::try_from(active_runs.len()).unwrap_or(i32::MAX);
    status.active = active_runs;
    status.next_schedule_time = if sched.spec.suspend { None } else { plan.next };
    let lost = plan.missed + plan.skipped.len();
    status.missed_slots = old
        .missed_slots
        .saturating_add(i64::try_from(lost).unwrap_or(i64::MAX));
    set_condition(
        &mut status.conditions,
        "Invalid",
        false,
        "Valid",
        "schedule and timeZone are valid",
        generation,
        now,
    );
    let (suspended, why) = if sched.spec.suspend {
        (true, "spec.suspend is true: no new runs")
    } else {
        (false, "runs are created on schedule")
    };
    set_condition(
        &mut status.conditions,
        "Suspended",
        suspended,
        if suspended { "Suspended" } else { "Active" },
        why,
        generation,
        now,
    );
    // Only a tick that had due slots says whether slots were missed.
    if !plan.create.is_empty() || lost > 0 {
        if lost > 0 {
            let reason = if plan.skipped.is_empty() {
                "SlotsMissed"
            } else {
                "SlotsSkipped"
            };
            set_condition(
                &mut status.conditions,
                "Missed",
                true,
                reason,
                &missed_message(plan),
                generation,
                now,
            );
        } else {
            set_condition(
                &mut status.conditions,
                "Missed",
                false,
                "OnTime",
                "the latest due slots ran",
                generation,
                now,
            );
        }
    }
    status
}

/// Human-readable account of the slots lost in a tick.
fn missed_message(plan: &TickPlan) -> String {
    let mut parts = Vec::new();
    if plan.missed > 0 {
        let more = if plan.missed_is_lower_bound {
            " or more"
        } else {
            ""
        };
        parts.push(format!(
            "{}{more} slot(s) missed (past startingDeadlineSeconds or beyond backfill.limit)",
            plan.missed
        ));
    }
    if !plan.skipped.is_empty() {
        parts.push(format!(
            "{} slot(s) skipped because a run was active (Forbid): {}",
            plan.skipped.len(),
            join_slots(&plan.skipped)
        ));
    }
    parts.join("; ")
}

fn join_slots(slots: &[DateTime<Utc>]) -> String {
    slots
        .iter()
        .map(|s| rfc3339(*s))
        .collect::<Vec<_>>()
        .join(", ")
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Sets a condition (the shared [`crate::kit::set_condition`], at the schedule clock's time).
/// Returns whether anything changed.
fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> bool {
    let now = k8s_openapi::jiff::Timestamp::from_second(now.timestamp())
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    crate::kit::set_condition(conditions, type_, status, reason, message, generation, now)
}

/// Writes the status by server-side apply, unless it did not change (a write would wake the
/// controller again for nothing).
async fn write_status(
    api: &Api<ScoringSchedule>,
    sched: &ScoringSchedule,
    old: &ScoringScheduleStatus,
    new: &ScoringScheduleStatus,
) -> Result<(), ScheduleError> {
    if old == new {
        return Ok(());
    }
    let name = sched.name_any();
    // resourceVersion makes the apply conditional: a concurrent writer (another replica) wins,
    // and this reconcile retries on fresh state instead of overwriting its counts.
    let body = serde_json::json!({
        "apiVersion": "fleetscore.dev/v1alpha1",
        "kind": "ScoringSchedule",
        "metadata": { "resourceVersion": sched.resource_version() },
        "status": new,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map(|_| ())
    .map_err(|source| ScheduleError::WriteStatus {
        schedule: name,
        source,
    })
}

/// Publishes an event about the schedule; a failure to publish is logged, never fatal.
async fn publish(
    ctx: &ScheduleContext,
    sched: &ScoringSchedule,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &sched.object_ref(&())).await {
        warn!(schedule = %sched.name_any(), error = %e, "could not publish event {reason}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::schedule::ScoringScheduleSpec;

    #[test]
    fn a_slot_run_carries_its_name_slot_window_labels_and_owner() {
        let spec: ScoringScheduleSpec = serde_yaml::from_str(
            "schedule: '0 * * * *'\ntimeZone: Europe/Amsterdam\nrunTemplate:\n  metadata: {labels: {team: iot}}\n  spec:\n    sensors: {allModels: true}\n    storage: {models: m, data: d, output: o}\n",
        )
        .unwrap();
        let mut sched = ScoringSchedule::new("hourly", spec);
        sched.metadata.namespace = Some("ns".into());
        sched.metadata.uid = Some("uid-1".into());
        let cron = CronSchedule::parse("0 * * * *", Some("Europe/Amsterdam")).unwrap();
        let slot = DateTime::parse_from_rfc3339("2026-01-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let run = build_run(&sched, &cron, slot);
        assert_eq!(run.name_any(), "hourly-202601011000");
        assert_eq!(run.namespace().as_deref(), Some("ns"));
        assert_eq!(run.spec.schedule.as_deref(), Some("hourly"));
        assert_eq!(
            run.labels().get(SCHEDULE_LABEL).map(String::as_str),
            Some("hourly")
        );
        assert_eq!(run.labels().get("team").map(String::as_str), Some("iot"));
        assert_eq!(
            run.annotations()[SCHEDULED_AT_ANNOTATION],
            "2026-01-01T10:00:00Z"
        );
        assert_eq!(
            run.annotations()[WINDOW_START_ANNOTATION],
            "2026-01-01T09:00:00Z"
        );
        assert_eq!(
            run.annotations()[WINDOW_END_ANNOTATION],
            "2026-01-01T10:00:00Z"
        );
        let owner = &run.owner_references()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            ("uid-1", Some(true))
        );
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let t0 = DateTime::parse_from_rfc3339("2026-01-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut conditions = Vec::new();
        assert!(set_condition(
            &mut conditions,
            "Missed",
            true,
            "SlotsMissed",
            "2 missed",
            None,
            t0
        ));
        assert!(!set_condition(
            &mut conditions,
            "Missed",
            true,
            "SlotsMissed",
            "2 missed",
            None,
            t0 + chrono::Duration::hours(1)
        ));
        assert_eq!(
            conditions[0].last_transition_time.0.as_second(),
            t0.timestamp()
        );
        assert!(set_condition(
            &mut conditions,
            "Missed",
            false,
            "OnTime",
            "ok",
            None,
            t0 + chrono::Duration::hours(2)
        ));
        assert_eq!(
            conditions[0].last_transition_time.0.as_second(),
            t0.timestamp() + 7200
        );
    }
}
