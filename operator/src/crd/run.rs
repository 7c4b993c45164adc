//! The `ScoringRun` custom resource: one batch scoring pass over a fleet of sensors.
//!
//! The spec says which sensors to score, where models, readings and predictions live, and how
//! the scorer Jobs run; the status is written by the operator only (server-side apply, field
//! manager `fleetscore`). Validation lives in the schema (CEL rules and patterns) so that the
//! API server refuses a bad manifest with a readable message.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every fleetscore kind.
pub const GROUP: &str = "fleetscore.dev";
/// API version of every fleetscore kind.
pub const VERSION: &str = "v1alpha1";
/// Label (on runs) naming the ScoringSchedule that created the run.
pub const SCHEDULE_LABEL: &str = "fleetscore.dev/schedule";
/// Annotation that asks the operator to rerun the failed sensors of a finished run; every new
/// value creates one new run `<run>-rerun-<n>` with `spec.rerunOf` set.
pub const RERUN_ANNOTATION: &str = "fleetscore.dev/rerun-failed";
/// Default scorer image.
pub const DEFAULT_IMAGE: &str = "ghcr.io/fleetscore/fleetscore-scorer:latest";
/// How many failed sensors the status lists by name (the rest are in `failedBatches`).
pub const MAX_LISTED_FAILURES: usize = 50;

/// One batch scoring pass: scores each selected sensor's readings with its model and writes
/// predictions, with at most `parallelism` Jobs at once.
// kube's derive takes one `printcolumn(...)` per column: repeated on purpose.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fleetscore.dev",
    version = "v1alpha1",
    kind = "ScoringRun",
    namespaced,
    status = "ScoringRunStatus",
    shortname = "sr",
    category = "fleetscore",
    doc = "One batch scoring pass over a fleet of sensors (one Kubernetes Job per sensor or per batch of sensors).",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Sensors", type_ = "integer", json_path = ".status.total"),
    printcolumn(name = "Succeeded", type_ = "integer", json_path = ".status.succeeded"),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.failed"),
    printcolumn(name = "Active", type_ = "integer", json_path = ".status.active"),
    printcolumn(name = "Duration", type_ = "string", json_path = ".status.duration"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // The fields that define the work are fixed once the run exists: an edit mid-run would
    // remap batches to other sensors. Rules on the root, so a schedule's run template stays editable.
    validation = Rule::new("has(self.spec.sensors) == has(oldSelf.spec.sensors) && (!has(self.spec.sensors) || self.spec.sensors == oldSelf.spec.sensors)").message("spec.sensors is immutable: it fixes the run's work when it starts; create a new ScoringRun instead"),
    validation = Rule::new("has(self.spec.rerunOf) == has(oldSelf.spec.rerunOf) && (!has(self.spec.rerunOf) || self.spec.rerunOf == oldSelf.spec.rerunOf)").message("spec.rerunOf is immutable; create a new ScoringRun instead"),
    validation = Rule::new("has(self.spec.credentials) == has(oldSelf.spec.credentials) && (!has(self.spec.credentials) || self.spec.credentials == oldSelf.spec.credentials)").message("spec.credentials is immutable; create a new ScoringRun instead"),
    validation = Rule::new("self.spec.storage == oldSelf.spec.storage").message("spec.storage is immutable: a run's outputs come from one set of inputs; create a new ScoringRun instead"),
    validation = Rule::new("self.spec.scorer == oldSelf.spec.scorer").message("spec.scorer is immutable: every sensor of a run is scored alike; create a new ScoringRun instead"),
    validation = Rule::new("self.spec.sensorsPerJob == oldSelf.spec.sensorsPerJob").message("spec.sensorsPerJob is immutable: it fixes which sensors each Job scores; create a new ScoringRun instead"),
    validation = Rule::new("self.metadata.name.size() <= 63").message("metadata.name: at most 63 characters (it is a label value on the run's Jobs and pods)")
)]
#[x_kube(validation = Rule::new("!has(self.credentials) || !(has(self.credentials.secretName) && has(self.credentials.workloadIdentityServiceAccount))").message("credentials: set either secretName or workloadIdentityServiceAccount, not both"))]
#[x_kube(validation = Rule::new("!has(self.rerunOf) || !has(self.sensors)").message("rerunOf takes its sensors from the earlier run: leave sensors unset"))]
#[x_kube(validation = Rule::new("has(self.rerunOf) || has(self.sensors)").message("sensors is required (or rerunOf, to rerun another run's failed sensors)"))]
#[serde(rename_all = "camelCase")]
pub struct ScoringRunSpec {
    /// Which sensors to score. Required unless `rerunOf` is set. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensors: Option<SensorSelector>,
    /// Name of an earlier run (same namespace) whose failed sensors this run scores again. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
    /// Where models, readings and predictions live. Immutable.
    pub storage: StorageSpec,
    /// The scorer container. Immutable (every sensor of a run is scored alike).
    #[serde(default)]
    pub scorer: ScorerSpec,
    /// How the scorer reaches storage; by reference only, never a secret in the spec. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<CredentialsSpec>,
    /// Maximum number of scoring Jobs at once; the rest wait in the operator's queue.
    #[serde(default = "default_parallelism")]
    #[schemars(range(min = 1, max = 5000))]
    pub parallelism: i32,
    /// Sensors per Job: 1 = one Job per sensor; more packs sensors to save pod start-up.
    /// Immutable (it fixes which sensors each batch holds).
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 10000))]
    pub sensors_per_job: i32,
    /// Retries per Job (the Job's `backoffLimit`).
    #[serde(default = "default_backoff")]
    #[schemars(range(min = 0, max = 20))]
    pub backoff_limit: i32,
    /// Deadline of each Job in seconds (the Job's `activeDeadlineSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub job_deadline_seconds: Option<i64>,
    /// Deadline of the whole run in seconds; sensors not finished by then count as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub run_deadline_seconds: Option<i64>,
    /// How long finished Jobs stay after their outcome is recorded (`ttlSecondsAfterFinished`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub finished_job_ttl_seconds: Option<i32>,
    /// How many failed sensors the run tolerates before it counts as Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_policy: Option<FailurePolicy>,
    /// Node selector of the scoring pods (e.g. the scoring node pool).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the scoring pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Extra labels on the scoring pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_labels: BTreeMap<String, String>,
    /// Extra annotations on the scoring pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// Name of the ScoringSchedule that created this run (set by the schedule controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

fn default_parallelism() -> i32 {
    10
}
fn default_one() -> i32 {
    1
}
fn default_backoff() -> i32 {
    1
}

/// Which sensors a run scores: exactly one of `list`, `devices` × `tags`, or `allModels`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new("[has(self.list), has(self.devices) || has(self.tags), has(self.allModels) && self.allModels].exists_one(x, x)").message("sensors: set exactly one of list, devices+tags, or allModels: true"))]
#[x_kube(validation = Rule::new("has(self.devices) == has(self.tags)").message("sensors: devices and tags go together (every device × every tag)"))]
#[serde(rename_all = "camelCase")]
pub struct SensorSelector {
    /// An explicit list of sensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub list: Option<Vec<SensorRef>>,
    /// Devices; the run scores every device × every tag (like the reference's `device_ids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub devices: Option<Vec<LabelSafe>>,
    /// Tags; the run scores every device × every tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub tags: Option<Vec<LabelSafe>>,
    /// Score every model found under `storage.models` (listed once, at run start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_models: Option<bool>,
}

/// A device or tag name: usable as a label value (letters, digits, `-`, `_`, `.`; ≤ 63).
pub type LabelSafe = String;

/// One sensor, by device and tag (as written in the readings CSV).
#[derive(
    JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash,
)]
pub struct SensorRef {
    /// Device id, e.g. `"1"`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"))]
    pub device: String,
    /// Tag id, e.g. `"4"`.
    #[schemars(regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"))]
    pub tag: String,
}

impl std::fmt::Display for SensorRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.device, self.tag)
    }
}

/// Storage locations: a local path, `file:///...` or `az://<container>/<path>`.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Models, `<models>/model_<D>_<T>[.pkl|.joblib|.json]`.
    #[x_kube(validation = Rule::new("self.size() > 0").message("storage.models must not be empty"))]
    pub models: String,
    /// Readings: one long CSV (`.csv`) or a partitioned prefix `<data>/device=<D>/tag=<T>/`.
    #[x_kube(validation = Rule::new("self.size() > 0").message("storage.data must not be empty"))]
    pub data: String,
    /// Output prefix; the run writes `<output>/<run>/preds/`, `logs/` and `summary.json`.
    #[x_kube(validation = Rule::new("self.size() > 0").message("storage.output must not be empty"))]
    pub output: String,
    /// Split a single CSV into per-sensor parts once before scoring (Auto) or not (Never).
    #[serde(default)]
    pub partition: PartitionMode,
    /// Keep `<output>/<run>/partitions/` after the run (default: deleted once the run finished,
    /// since it is a full copy of the readings).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retain_partitions: bool,
}

/// Whether a one-file data set is partitioned per sensor first.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PartitionMode {
    /// Partition when `storage.data` ends in `.csv`.
    #[default]
    Auto,
    /// Every Job reads the data as given.
    Never,
}

/// The scorer container and its options.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScorerSpec {
    /// Container image with the `fleetscore-scorer` binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(Always|IfNotPresent|Never)$"))]
    pub image_pull_policy: Option<String>,
    /// Container resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment variables (no secrets: use `credentials`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Scoring threads per Job (`--threads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub threads: Option<i32>,
    /// Treat malformed rows as errors (`--strict`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strict: bool,
    /// Fail a sensor whose bad rows exceed this percentage of its rows (`--max-bad-rows-percent`;
    /// the scorer's default, 1, when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_bad_rows_percent: Option<f64>,
    /// Aggregate readings into windows before scoring (`--aggregate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<AggregateWindow>,
    /// Features per window (`--features`), e.g. `[mean, max]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<Feature>,
}

/// Aggregation window.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggregateWindow {
    /// One minute.
    #[serde(rename = "1m")]
    OneMinute,
    /// Five minutes.
    #[serde(rename = "5m")]
    FiveMinutes,
    /// One hour.
    #[serde(rename = "1h")]
    OneHour,
}

impl AggregateWindow {
    /// The scorer's spelling (`1m`, `5m`, `1h`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OneMinute => "1m",
            Self::FiveMinutes => "5m",
            Self::OneHour => "1h",
        }
    }
}

/// A window feature: the scorer's own type, so the CRD and the scorer spell it alike.
pub use fleetscore_scorer::data::aggregate::Feature;

/// Storage credentials, by reference.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSpec {
    /// A Secret in the run's namespace whose keys become the scorer's environment
    /// (e.g. AZURE_STORAGE_ACCOUNT_NAME, AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_KEY).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// A ServiceAccount federated with an Azure identity (workload identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity_service_account: Option<String>,
}

/// Tolerated failures; a run with more failed sensors than this ends Failed, otherwise
/// PartiallySucceeded (or Succeeded when none failed). Unset = no failure tolerated.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FailurePolicy {
    /// At most this many failed sensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_failed_sensors: Option<i64>,
    /// At most this percentage of sensors failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub max_failed_percent: Option<i32>,
}

/// Phase of a run.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// Accepted; sensors being resolved or data being partitioned.
    #[default]
    Pending,
    /// Scoring Jobs are queued or running.
    Running,
    /// Every sensor succeeded.
    Succeeded,
    /// Some sensors failed, within the failure policy.
    PartiallySucceeded,
    /// Too many sensors failed, the run's deadline passed, or the run could not start.
    Failed,
}

impl Phase {
    /// True once the run will not change any more.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::PartiallySucceeded | Self::Failed
        )
    }
    /// The name as written in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::PartiallySucceeded => "PartiallySucceeded",
            Self::Failed => "Failed",
        }
    }
}

/// A failed sensor and why.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct FailedSensor {
    /// The sensor, `device:tag`.
    pub sensor: String,
    /// Short machine-readable reason (e.g. BackoffLimitExceeded, DeadlineExceeded).
    pub reason: String,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Observed state of a run; written by the operator only.
#[derive(JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScoringRunStatus {
    /// Pending, Running, Succeeded, PartiallySucceeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Number of sensors in the run.
    #[serde(default)]
    pub total: i64,
    /// Sensors waiting in the operator's queue (no Job yet).
    #[serde(default)]
    pub queued: i64,
    /// Sensors whose Job is running.
    #[serde(default)]
    pub active: i64,
    /// Sensors scored successfully.
    #[serde(default)]
    pub succeeded: i64,
    /// Sensors that failed.
    #[serde(default)]
    pub failed: i64,
    /// When scoring started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Wall time so far or in total, e.g. `2m31s` (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// Conditions: Ready (True once the run finished, reason = phase), Prepared (data
    /// partitioned), ChildrenOwned (False while Jobs of another owner carry this run's name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Up to 50 failed sensors with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_sensors: Vec<FailedSensor>,
    /// Where per-sensor outcomes live: `<output>/<run>/` (logs/, preds/, summary.json).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<String>,
    /// Queue position: batches `0..nextBatch` have had a Job created.
    #[serde(default)]
    pub next_batch: i64,
    /// Number of batches (Jobs) the run needs.
    #[serde(default)]
    pub total_batches: i64,
    /// Batches whose outcome is recorded, as ranges (`0-99,101`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub recorded_batches: String,
    /// Batches that failed, as ranges; rerunning failed sensors uses this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failed_batches: String,
    /// ConfigMap holding the resolved sensor list, when it is not computable from the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensor_list: Option<String>,
    /// Scoring data actually used by the Jobs (the partitions, after a prepare step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoring_data: Option<String>,
    /// Values of the rerun-failed annotation already acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_handled: Option<String>,
    /// Where `summary.json` was written, once it was (retried until storage takes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// Human-readable summary of the latest state change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Written by the node-pool scaler under its own field manager; free-form here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub scaler: Option<serde_json::Value>,
}

/// Schema of an object whose fields the API server keeps as they are.
fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}
