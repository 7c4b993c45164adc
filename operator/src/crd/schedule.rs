//! The `ScoringSchedule` custom resource: creates one `ScoringRun` per cron slot, evaluated in an
//! IANA time zone, with CronJob's knobs (suspend, concurrency policy, starting deadline, history
//! limits) plus a bounded backfill of missed slots.
//!
//! The API server refuses a schedule outside the grammar of [`crate::schedule::cron`] through a
//! CEL rule built from the same tables as the controller's parser, so it admits exactly what the
//! controller parses; time-zone names are checked for shape by CEL and against the zone database
//! by the controller (condition `Invalid`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::run::ScoringRunSpec;

/// Annotation on a scheduled run: the slot it was created for (RFC 3339, UTC).
pub const SCHEDULED_AT_ANNOTATION: &str = "fleetscore.dev/scheduled-at";
/// Annotation on a scheduled run: start of the data window it covers (the previous slot).
pub const WINDOW_START_ANNOTATION: &str = "fleetscore.dev/window-start";
/// Annotation on a scheduled run: end of the data window it covers (its own slot).
pub const WINDOW_END_ANNOTATION: &str = "fleetscore.dev/window-end";
/// Annotation on a schedule: set it to a new value to run the current slot now, once per value
/// (what `kubectl create job --from=cronjob/x` does for a CronJob); the triggered run carries
/// it too, with the same value.
pub const TRIGGER_ANNOTATION: &str = "fleetscore.dev/trigger";

/// CEL rule for `spec.timeZone`: an IANA name such as `UTC`, `Europe/Amsterdam` or
/// `America/Argentina/Buenos_Aires` (the controller checks it against the zone database).
pub const TIME_ZONE_CEL: &str =
    "self.matches('^[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9_+-]+){0,2}$')";

/// Creates a `ScoringRun` from `runTemplate` at every slot of a cron schedule in a time zone.
// The printcolumn(...) entries repeat `type_ = ...`, which clippy takes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fleetscore.dev",
    version = "v1alpha1",
    kind = "ScoringSchedule",
    namespaced,
    status = "ScoringScheduleStatus",
    shortname = "ss",
    category = "fleetscore",
    doc = "Creates one ScoringRun per cron slot (named after the slot, so never twice), in an IANA time zone.",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "TimeZone", type_ = "string", json_path = ".spec.timeZone"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(name = "Active", type_ = "integer", json_path = ".status.activeCount"),
    printcolumn(
        name = "Last Run",
        type_ = "date",
        json_path = ".status.lastScheduleTime"
    ),
    printcolumn(
        name = "Next Run",
        type_ = "string",
        json_path = ".status.nextScheduleTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ScoringScheduleSpec {
    /// Cron schedule as Kubernetes CronJob accepts it: 5 fields (minute hour day-of-month month
    /// day-of-week) or @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly,
    /// @every <duration>; 7 is also Sunday.
    #[x_kube(validation = Rule::new(crate::schedule::cron::schedule_cel()).message(crate::schedule::cron::ALLOWED))]
    #[schemars(length(min = 1, max = 256))]
    pub schedule: String,
    /// IANA time zone the schedule is evaluated in, e.g. `Europe/Amsterdam`; daylight-saving
    /// changes follow Vixie cron (a skipped fixed time runs right after the gap, a repeated one
    /// runs once; interval schedules follow real time).
    #[serde(default = "default_time_zone")]
    #[x_kube(validation = Rule::new(TIME_ZONE_CEL).message("timeZone must be an IANA time zone name such as UTC, Europe/Amsterdam or America/New_York"))]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
    /// Stops new runs; active runs go on. Slots that pass meanwhile are missed slots, handled on
    /// resume as after downtime (the latest runs unless past startingDeadlineSeconds), as CronJob.
    #[serde(default)]
    pub suspend: bool,
    /// What to do when a slot comes while an earlier run is still active.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A slot not started within this many seconds of its time is missed, not run late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<i64>,
    /// Run missed slots after downtime or suspension; off by default (only the latest due slot
    /// runs, as with CronJob).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillSpec>,
    /// Finished successful runs kept; older ones are deleted.
    #[serde(default = "default_successful_history")]
    #[schemars(range(min = 0, max = 1000))]
    pub successful_runs_history_limit: i32,
    /// Finished failed runs kept; older ones are deleted.
    #[serde(default = "default_failed_history")]
    #[schemars(range(min = 0, max = 1000))]
    pub failed_runs_history_limit: i32,
    /// The run created at each slot.
    pub run_template: ScoringRunTemplate,
}

fn default_time_zone() -> String {
    "UTC".to_string()
}
fn default_successful_history() -> i32 {
    3
}
fn default_failed_history() -> i32 {
    1
}

/// Concurrency policy, as in CronJob.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConcurrencyPolicy {
    /// Runs may overlap.
    #[default]
    Allow,
    /// A slot that comes while a run is active is skipped (event `Skipped`).
    Forbid,
    /// The active runs are deleted (their Jobs with them) and the new slot runs.
    Replace,
}

/// Bounded backfill of slots missed while the operator was down or the schedule was suspended.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackfillSpec {
    /// Besides the latest due slot, create runs for at most this many earlier missed slots
    /// (the most recent ones, created oldest first); older ones are counted as missed.
    #[schemars(range(min = 0, max = 100))]
    pub limit: i32,
}

/// The run created at each slot: metadata to add and the `ScoringRun` spec.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScoringRunTemplate {
    /// Labels and annotations copied onto every run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// The run's spec.
    pub spec: ScoringRunSpec,
}

/// Labels and annotations for the runs.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
pub struct TemplateMetadata {
    /// Labels added to every run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to every run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A run created by the schedule that has not finished.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ActiveRun {
    /// Name of the ScoringRun.
    pub name: String,
    /// The slot it was created for.
    pub scheduled_time: DateTime<Utc>,
}

/// Observed state of a schedule; written by the operator only (field manager
/// `fleetscore-schedule`).
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScoringScheduleStatus {
    /// The newest slot handled (run, skipped or missed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<DateTime<Utc>>,
    /// Slot of the newest run that succeeded (or partially succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<DateTime<Utc>>,
    /// Slot of the newest run that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<DateTime<Utc>>,
    /// Runs not finished yet, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<ActiveRun>,
    /// Number of active runs (for `kubectl get`).
    #[serde(default)]
    pub active_count: i32,
    /// The next slot (unset while suspended or invalid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<DateTime<Utc>>,
    /// Slots missed since the schedule was created (past the deadline, beyond the backfill
    /// limit, or skipped by Forbid).
    #[serde(default)]
    pub missed_slots: i64,
    /// Conditions: `Invalid` (spec refused), `Missed` (slots missed at the last tick),
    /// `Suspended`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last `fleetscore.dev/trigger` annotation value turned into a run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trigger: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    /// The regex inside a CEL `self.matches('...')` rule.
    fn regex_of(rule: &str) -> regex::Regex {
        let inner = rule
            .strip_prefix("self.matches('")
            .and_then(|r| r.strip_suffix("')"))
            .unwrap();
        assert!(!inner.contains('\\') && !inner.contains('\''));
        regex::Regex::new(inner).unwrap()
    }

    #[test]
    fn the_time_zone_rule_accepts_iana_names_and_refuses_offsets() {
        let re = regex_of(TIME_ZONE_CEL);
        for ok in [
            "UTC",
            "Europe/Amsterdam",
            "America/Argentina/Buenos_Aires",
            "Etc/GMT+5",
            "EST5EDT",
        ] {
            assert!(re.is_match(ok), "should accept {ok:?}");
        }
        for bad in [
            "",
            "+02:00",
            "Europe/",
            "/UTC",
            "Europe Amsterdam",
            "a/b/c/d",
        ] {
            assert!(!re.is_match(bad), "should refuse {bad:?}");
        }
    }

    #[test]
    fn the_crd_carries_the_rules_columns_and_defaults() {
        let crd = serde_json::to_string(&ScoringSchedule::crd()).unwrap();
        for needle in [
            "schedule must be 5 fields separated by spaces",
            "timeZone must be an IANA time zone name",
            "\"shortNames\":[\"ss\"]",
            "Next Run",
            "\"default\":\"UTC\"",
        ] {
            assert!(crd.contains(needle), "CRD lacks {needle}");
        }
    }

    #[test]
    fn a_minimal_manifest_gets_cronjob_like_defaults() {
        let spec: ScoringScheduleSpec = serde_yaml::from_str(
            "schedule: '@hourly'\nrunTemplate:\n  spec:\n    sensors: {allModels: true}\n    storage: {models: m, data: d, output: o}\n",
        )
        .unwrap();
        assert_eq!(spec.time_zone, "UTC");
        assert_eq!(spec.concurrency_policy, ConcurrencyPolicy::Allow);
        assert_eq!(
            (
                spec.successful_runs_history_limit,
                spec.failed_runs_history_limit
            ),
            (3, 1)
        );
        assert!(!spec.suspend && spec.backfill.is_none());
    }
}
