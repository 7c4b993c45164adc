//! Pure builders of the Kubernetes Jobs a run needs (scoring batches and the prepare step), and
//! the reading of a finished Job's outcome. No API calls here.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
    PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Container, EnvFromSource, PodSpec, PodTemplateSpec, SecretEnvSource, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use super::naming;
use super::plan::JobState;
use crate::crd::run::{DEFAULT_IMAGE, FailedSensor, PartitionMode, ScoringRun, SensorRef};

pub use crate::kit::{MANAGED_BY, MANAGED_BY_LABEL, RUN_LABEL};
/// Label with the device of a single-sensor Job.
pub const DEVICE_LABEL: &str = "fleetscore.dev/device";
/// Label with the tag of a single-sensor Job.
pub const TAG_LABEL: &str = "fleetscore.dev/tag";
/// Label with the batch number of a scoring Job.
pub const BATCH_LABEL: &str = "fleetscore.dev/batch";
/// Label saying what a Job does: `score` or `prepare`.
pub const ROLE_LABEL: &str = "fleetscore.dev/role";
/// Annotation the operator sets once a finished Job's outcome is in the run's status.
pub const RECORDED_ANNOTATION: &str = "fleetscore.dev/recorded";
/// Annotation listing a multi-sensor Job's sensors (`1:4,1:5`).
pub const SENSORS_ANNOTATION: &str = "fleetscore.dev/sensors";
/// Role of scoring Jobs.
pub const ROLE_SCORE: &str = "score";
/// Role of the prepare (partition) Job.
pub const ROLE_PREPARE: &str = "prepare";
/// Name of the scorer container.
pub const CONTAINER: &str = "scorer";

/// `a/b` with exactly one slash between, keeping a trailing part's own slashes.
pub fn join_url(base: &str, part: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        part.trim_start_matches('/')
    )
}

/// Where a run's outputs live: `<output>/<run>`.
pub fn ledger_url(run: &ScoringRun) -> String {
    join_url(&run.spec.storage.output, &run.name_any())
}

/// True when the run first splits one big CSV into per-sensor parts.
pub fn needs_prepare(run: &ScoringRun) -> bool {
    run.spec.storage.partition == PartitionMode::Auto
        && run.spec.storage.data.to_ascii_lowercase().ends_with(".csv")
}

/// The partitioned data prefix a prepare step writes: `<output>/<run>/partitions`.
pub fn partitions_url(run: &ScoringRun) -> String {
    join_url(&ledger_url(run), "partitions")
}

/// Scorer exit code for a failure that a retry cannot fix (every failed sensor lacks a usable
/// model or has unusable input): the Job fails at once instead of using its `backoffLimit`.
pub const EXIT_PERMANENT: i32 = 3;

/// Labels every child of a run carries (the run's name as a label value: cut with a hash when
/// longer than 63 characters).
pub fn run_labels(run: &str, role: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (RUN_LABEL.to_string(), naming::run_label_value(run)),
        (ROLE_LABEL.to_string(), role.to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ])
}

/// The scorer's arguments for a batch of sensors.
pub fn score_args(run: &ScoringRun, data: &str, sensors: &[SensorRef]) -> Vec<String> {
    let spec = &run.spec;
    let mut args: Vec<String> = vec![
        "score".into(),
        "--models".into(),
        spec.storage.models.clone(),
        "--data".into(),
        data.to_string(),
        "--output".into(),
        spec.storage.output.clone(),
        "--run-id".into(),
        run.name_any(),
    ];
    for s in sensors {
        args.push("--sensor".into());
        args.push(s.to_string());
    }
    if let Some(w) = spec.scorer.aggregate {
        args.extend(["--aggregate".into(), w.as_str().into()]);
    }
    if spec.scorer.aggregate.is_some() {
        args.extend(["--features".into(), features_arg(&spec.scorer.features)]);
    }
    if spec.scorer.strict {
        args.push("--strict".into());
    }
    if let Some(p) = spec.scorer.max_bad_rows_percent {
        args.extend(["--max-bad-rows-percent".into(), p.to_string()]);
    }
    if let Some(t) = spec.scorer.threads {
        args.extend(["--threads".into(), t.to_string()]);
    }
    args.extend(["--progress".into(), "never".into()]);
    args
}

/// `--features` text; the mean alone when none is given.
pub fn features_arg(features: &[crate::crd::run::Feature]) -> String {
    if features.is_empty() {
        return "mean".into();
    }
    features
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The prepare step's arguments: partition the one CSV into `<output>/<run>/partitions`.
pub fn prepare_args(run: &ScoringRun) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "partition".into(),
        "--input".into(),
        run.spec.storage.data.clone(),
        "--output".into(),
        partitions_url(run),
    ];
    if let Some(p) = run.spec.scorer.max_bad_rows_percent {
        args.extend(["--max-bad-rows-percent".into(), p.to_string()]);
    }
    args
}

fn owner_ref(run: &ScoringRun) -> Option<OwnerReference> {
    run.controller_owner_ref(&())
}

/// True when `meta`'s controller is this very run (by UID, not by name): a child of an earlier
/// run of the same name, orphaned and left behind, is never taken for this run's.
pub fn owned_by(meta: &ObjectMeta, run: &ScoringRun) -> bool {
    let Some(uid) = run.uid() else { return false };
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.kind == "ScoringRun" && o.uid == uid)
}

/// Pod disruptions (a node drained by a scale-down, a preemption) never count against
/// `backoffLimit`; the scorer's permanent-failure exit code fails the Job without retries.
fn pod_failure_policy() -> PodFailurePolicy {
    PodFailurePolicy {
        rules: vec![
            PodFailurePolicyRule {
                action: "Ignore".into(),
                on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                    type_: "DisruptionTarget".into(),
                    status: Some("True".into()),
                }]),
                on_exit_codes: None,
            },
            PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(CONTAINER.into()),
                    operator: "In".into(),
                    values: vec![EXIT_PERMANENT],
                }),
                on_pod_conditions: None,
            },
        ],
    }
}

/// A Job of the run with the given name, labels (Job and pod), extra annotations and scorer args.
fn build_job(
    run: &ScoringRun,
    name: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    args: Vec<String>,
) -> Job {
    let spec = &run.spec;
    let mut pod_labels = spec.pod_labels.clone();
    pod_labels.extend(labels.clone());
    let mut service_account = None;
    let mut env_from = None;
    if let Some(c) = &spec.credentials {
        if let Some(secret) = &c.secret_name {
            env_from = Some(vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: secret.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }]);
        }
        if let Some(sa) = &c.workload_identity_service_account {
            service_account = Some(sa.clone());
            pod_labels.insert("azure.workload.identity/use".into(), "true".into());
        }
    }
    let mut pod_annotations = spec.pod_annotations.clone();
    pod_annotations.extend(annotations.clone());
    let container = Container {
        name: CONTAINER.into(),
        image: Some(
            spec.scorer
                .image
                .clone()
                .unwrap_or_else(|| DEFAULT_IMAGE.to_string()),
        ),
        image_pull_policy: spec.scorer.image_pull_policy.clone(),
        command: Some(vec!["fleetscore-scorer".into()]),
        args: Some(args),
        env: (!spec.scorer.env.is_empty()).then(|| spec.scorer.env.clone()),
        env_from,
        resources: spec.scorer.resources.clone(),
        ..Default::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: run.namespace(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: owner_ref(run).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(spec.backoff_limit),
            active_deadline_seconds: spec.job_deadline_seconds,
            pod_failure_policy: Some(pod_failure_policy()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: (!pod_annotations.is_empty()).then_some(pod_annotations),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    restart_policy: Some("Never".into()),
                    service_account_name: service_account,
                    node_selector: (!spec.node_selector.is_empty())
                        .then(|| spec.node_selector.clone()),
                    tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The Job scoring one batch: labels run/batch (and device/tag for one sensor), the scorer
/// command line for its sensors, reading `data` (the partitions after a prepare step).
pub fn scoring_job(run: &ScoringRun, batch: i64, sensors: &[SensorRef], data: &str) -> Job {
    let run_name = run.name_any();
    let mut labels = run_labels(&run_name, ROLE_SCORE);
    labels.insert(BATCH_LABEL.into(), batch.to_string());
    let mut annotations = BTreeMap::new();
    if let [only] = sensors {
        labels.insert(DEVICE_LABEL.into(), only.device.clone());
        labels.insert(TAG_LABEL.into(), only.tag.clone());
    }
    let names: Vec<String> = sensors.iter().map(ToString::to_string).collect();
    annotations.insert(SENSORS_ANNOTATION.into(), names.join(","));
    build_job(
        run,
        naming::batch_job_name(run, batch),
        labels,
        annotations,
        score_args(run, data, sensors),
    )
}

/// The prepare Job: partitions the run's one CSV once, so each scoring Job reads only its part.
pub fn prepare_job(run: &ScoringRun) -> Job {
    let run_name = run.name_any();
    let labels = run_labels(&run_name, ROLE_PREPARE);
    build_job(
        run,
        naming::prepare_job_name(run),
        labels,
        BTreeMap::new(),
        prepare_args(run),
    )
}

/// Operator-wide settings for what a run leaves open (the operator's flags, from Helm values).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodDefaults {
    /// Scorer image for runs that name none.
    pub image: Option<String>,
    /// Storage Secret (envFrom) for runs without credentials.
    pub secret: Option<String>,
    /// ServiceAccount of scoring pods that have none.
    pub service_account: Option<String>,
    /// Node selector of scoring pods whose run sets none (e.g. the scoring pool's label).
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of scoring pods whose run sets none (e.g. the scoring pool's taint).
    pub tolerations: Vec<Toleration>,
}

/// Fills a built Job's open settings from operator-wide defaults; what the run sets wins.
pub fn apply_defaults(mut job: Job, run: &ScoringRun, defaults: &PodDefaults) -> Job {
    let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) else {
        return job;
    };
    if pod.service_account_name.is_none() {
        pod.service_account_name
            .clone_from(&defaults.service_account);
    }
    if pod.node_selector.is_none() && !defaults.node_selector.is_empty() {
        pod.node_selector = Some(defaults.node_selector.clone());
    }
    if pod.tolerations.is_none() && !defaults.tolerations.is_empty() {
        pod.tolerations = Some(defaults.tolerations.clone());
    }
    let image = defaults
        .image
        .as_deref()
        .filter(|_| run.spec.scorer.image.is_none());
    let secret = defaults
        .secret
        .as_deref()
        .filter(|_| run.spec.credentials.is_none());
    for c in &mut pod.containers {
        if let Some(image) = image {
            c.image = Some(image.to_string());
        }
        if let (Some(secret), None) = (secret, &c.env_from) {
            c.env_from = Some(vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: secret.to_string(),
                    optional: Some(false),
                }),
                ..Default::default()
            }]);
        }
    }
    job
}

/// The merge patch that marks a finished Job as recorded and lets the TTL controller remove it.
pub fn recorded_patch(ttl_seconds: i32) -> serde_json::Value {
    serde_json::json!({
        "metadata": { "annotations": { RECORDED_ANNOTATION: "true" } },
        "spec": { "ttlSecondsAfterFinished": ttl_seconds },
    })
}

/// The batch number of a scoring Job, from its label.
pub fn batch_of(job: &Job) -> Option<i64> {
    job.labels().get(BATCH_LABEL)?.parse().ok()
}

/// True when the Job carries the recorded marker.
pub fn is_marked(job: &Job) -> bool {
    job.annotations()
        .get(RECORDED_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// Terminal condition of a Job: `Some(Ok(()))` completed, `Some(Err((reason, message)))` failed,
/// `None` still running.
pub fn job_outcome(job: &Job) -> Option<Result<(), (String, String)>> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    for c in conditions {
        if c.status != "True" {
            continue;
        }
        match c.type_.as_str() {
            "Complete" => return Some(Ok(())),
            "Failed" => {
                return Some(Err((
                    c.reason.clone().unwrap_or_else(|| "JobFailed".into()),
                    c.message.clone().unwrap_or_default(),
                )));
            }
            _ => {}
        }
    }
    None
}

/// A scoring Job's state for the queue; a failed Job fails each of `sensors` with the Job's
/// reason (refined later by the scorer's per-sensor records when they can be read).
pub fn job_state(job: &Job, sensors: &[SensorRef]) -> JobState {
    match job_outcome(job) {
        None => JobState::Active,
        Some(Ok(())) => JobState::Succeeded,
        Some(Err((reason, message))) => JobState::Failed {
            failed: sensors
                .iter()
                .map(|s| FailedSensor {
                    sensor: s.to_string(),
                    reason: reason.clone(),
                    message: message.clone(),
                })
                .collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::run::{CredentialsSpec, ScoringRunSpec, SensorSelector, StorageSpec};
    use k8s_openapi::api::batch::v1::JobCondition;
    use k8s_openapi::api::batch::v1::JobStatus;

    fn run() -> ScoringRun {
        let spec: ScoringRunSpec = serde_json::from_value(serde_json::json!({
            "sensors": { "devices": ["1"], "tags": ["4"] },
            "storage": { "models": "az://models", "data": "az://data/readings.csv", "output": "az://preds/" },
            "podLabels": { "fleetscore.dev/exec": "local" },
            "nodeSelector": { "pool": "scoring" },
            "scorer": { "image": "scorer:1", "aggregate": "5m", "features": ["mean", "max"], "threads": 2 },
        }))
        .unwrap();
        let mut r = ScoringRun::new("nightly", spec);
        r.metadata.namespace = Some("ns".into());
        r.metadata.uid = Some("uid-1".into());
        r
    }

    fn s(d: &str, t: &str) -> SensorRef {
        SensorRef {
            device: d.into(),
            tag: t.into(),
        }
    }

    #[test]
    fn a_single_sensor_job_is_named_labelled_owned_and_runs_the_scorer_for_its_sensor() {
        let r = run();
        let job = scoring_job(&r, 7, &[s("1", "4")], "az://preds/nightly/partitions");
        assert_eq!(
            job.metadata.name.as_deref(),
            Some(naming::batch_job_name(&r, 7).as_str())
        );
        assert!(owned_by(&job.metadata, &r));
        let rules = job
            .spec
            .as_ref()
            .and_then(|s| s.pod_failure_policy.clone())
            .unwrap()
            .rules;
        assert_eq!(rules[0].action, "Ignore", "disruptions do not burn retries");
        let labels = job.metadata.labels.clone().unwrap();
        assert_eq!(labels[RUN_LABEL], "nightly");
        assert_eq!(labels[DEVICE_LABEL], "1");
        assert_eq!(labels[TAG_LABEL], "4");
        assert_eq!(labels[BATCH_LABEL], "7");
        assert_eq!(labels[MANAGED_BY_LABEL], "fleetscore");
        let owner = &job.metadata.owner_references.clone().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("ScoringRun", Some(true))
        );
        let pod = job.spec.as_ref().unwrap().template.clone();
        assert_eq!(
            pod.metadata.unwrap().labels.unwrap()["fleetscore.dev/exec"],
            "local"
        );
        let ps = pod.spec.unwrap();
        assert_eq!(ps.restart_policy.as_deref(), Some("Never"));
        assert_eq!(ps.node_selector.unwrap()["pool"], "scoring");
        let args = ps.containers[0].args.clone().unwrap().join(" ");
        assert_eq!(
            args,
            "score --models az://models --data az://preds/nightly/partitions --output az://preds/ \
             --run-id nightly --sensor 1:4 --aggregate 5m --features mean,max --threads 2 --progress never"
        );
        assert_eq!(
            ps.containers[0].command.clone().unwrap(),
            ["fleetscore-scorer"]
        );
    }

    #[test]
    fn a_run_s_bad_row_limit_becomes_the_scorer_flag() {
        let mut r = run();
        r.spec.scorer.max_bad_rows_percent = Some(2.5);
        let job = scoring_job(&r, 0, &[s("1", "4")], "d");
        let args = job.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap()
            .join(" ");
        assert!(args.contains("--max-bad-rows-percent 2.5"), "{args}");
        assert!(
            prepare_args(&r)
                .join(" ")
                .ends_with("--max-bad-rows-percent 2.5")
        );
    }

    #[test]
    fn operator_defaults_fill_only_what_the_run_leaves_open() {
        let toleration = Toleration {
            key: Some("fleetscore.dev/scoring".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        };
        let defaults = PodDefaults {
            image: Some("registry/scorer:1".into()),
            secret: Some("storage".into()),
            service_account: Some("scorer".into()),
            node_selector: BTreeMap::from([(
                "fleetscore.dev/pool".to_string(),
                "scoring".to_string(),
            )]),
            tolerations: vec![toleration.clone()],
        };
        // The test run sets a node selector and an image: those stay.
        let r = run();
        let pod = |job: Job| job.spec.unwrap().template.spec.unwrap();
        let ps = pod(apply_defaults(
            scoring_job(&r, 0, &[s("1", "4")], "d"),
            &r,
            &defaults,
        ));
        assert_eq!(ps.node_selector.unwrap()["pool"], "scoring");
        assert_eq!(ps.tolerations, Some(vec![toleration.clone()]));
        assert_eq!(ps.service_account_name.as_deref(), Some("scorer"));
        assert_ne!(ps.containers[0].image.as_deref(), Some("registry/scorer:1"));
        // A run that leaves them open gets the operator's.
        let mut open = run();
        open.spec.node_selector.clear();
        open.spec.scorer.image = None;
        open.spec.credentials = None;
        let ps = pod(apply_defaults(
            scoring_job(&open, 0, &[s("1", "4")], "d"),
            &open,
            &defaults,
        ));
        assert_eq!(ps.node_selector.unwrap()["fleetscore.dev/pool"], "scoring");
        assert_eq!(ps.containers[0].image.as_deref(), Some("registry/scorer:1"));
        let env_from = ps.containers[0].env_from.clone().unwrap();
        assert_eq!(
            env_from[0].secret_ref.as_ref().map(|r| r.name.as_str()),
            Some("storage")
        );
        // No defaults: nothing changes.
        let ps = pod(apply_defaults(
            scoring_job(&open, 0, &[s("1", "4")], "d"),
            &open,
            &PodDefaults::default(),
        ));
        assert_eq!((ps.node_selector, ps.tolerations), (None, None));
    }

    #[test]
    fn a_packed_job_lists_every_sensor_and_has_no_device_label() {
        let job = scoring_job(&run(), 0, &[s("1", "4"), s("1", "5")], "d");
        assert!(
            !job.metadata
                .labels
                .clone()
                .unwrap()
                .contains_key(DEVICE_LABEL)
        );
        let args = job.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        assert_eq!(args.iter().filter(|a| *a == "--sensor").count(), 2);
    }

    #[test]
    fn credentials_are_passed_by_reference_only() {
        let mut r = run();
        r.spec.credentials = Some(CredentialsSpec {
            secret_name: Some("storage".into()),
            ..Default::default()
        });
        let ps = scoring_job(&r, 0, &[s("1", "4")], "d")
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let secret = ps.containers[0].env_from.clone().unwrap()[0]
            .secret_ref
            .clone()
            .unwrap();
        assert_eq!(secret.name, "storage");
        r.spec.credentials = Some(CredentialsSpec {
            workload_identity_service_account: Some("scorer".into()),
            ..Default::default()
        });
        let t = scoring_job(&r, 0, &[s("1", "4")], "d")
            .spec
            .unwrap()
            .template;
        assert_eq!(
            t.spec.unwrap().service_account_name.as_deref(),
            Some("scorer")
        );
        assert_eq!(
            t.metadata.unwrap().labels.unwrap()["azure.workload.identity/use"],
            "true"
        );
    }

    #[test]
    fn one_big_csv_is_partitioned_once_by_a_prepare_job() {
        let r = run();
        assert!(needs_prepare(&r));
        let job = prepare_job(&r);
        assert_eq!(
            job.metadata.name.as_deref(),
            Some(naming::prepare_job_name(&r).as_str())
        );
        let args = job.spec.unwrap().template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap()
            .join(" ");
        assert_eq!(
            args,
            "partition --input az://data/readings.csv --output az://preds/nightly/partitions"
        );
        let mut r = run();
        r.spec.storage = StorageSpec {
            data: "az://data/parts".into(),
            ..r.spec.storage.clone()
        };
        assert!(!needs_prepare(&r));
        let _ = SensorSelector::default();
    }

    #[test]
    fn a_job_of_an_earlier_run_of_the_same_name_is_not_owned() {
        let r = run();
        let mut job = scoring_job(&r, 0, &[s("1", "4")], "d");
        let mut again = run();
        again.metadata.uid = Some("uid-2".into());
        assert!(!owned_by(&job.metadata, &again));
        job.metadata.owner_references = None; // `--cascade=orphan` removes them
        assert!(!owned_by(&job.metadata, &r));
    }

    #[test]
    fn a_failed_job_fails_its_sensors_with_the_job_reason() {
        let mut job = scoring_job(&run(), 0, &[s("1", "4")], "d");
        assert_eq!(job_state(&job, &[s("1", "4")]), JobState::Active);
        job.status = Some(JobStatus {
            conditions: Some(vec![JobCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some("BackoffLimitExceeded".into()),
                message: Some("Job has reached the specified backoff limit".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        match job_state(&job, &[s("1", "4")]) {
            JobState::Failed { failed } => {
                assert_eq!(failed[0].sensor, "1:4");
                assert_eq!(failed[0].reason, "BackoffLimitExceeded");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(batch_of(&job), Some(0));
    }
}
