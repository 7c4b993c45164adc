//! Names of a run's children. Every child name carries a short hash of the run's UID, so a run
//! deleted with `--cascade=orphan` and applied again never finds (and never adopts) the Jobs or
//! the sensor list of its earlier incarnation under the same name.

use kube::ResourceExt;

use crate::crd::run::ScoringRun;
use crate::kit::{shorten, stable_hash};

/// Kubernetes' limit for names that are also label values.
const MAX_NAME: usize = 63;

/// Six hex digits of the run's UID (empty for an object not stored yet, e.g. a local run).
pub fn uid_tag(run: &ScoringRun) -> String {
    run.uid()
        .map(|u| format!("{:06x}", stable_hash(u.as_bytes()) & 0xff_ffff))
        .unwrap_or_default()
}

/// `<run>-<uid tag>-<suffix>` within 63 characters.
pub fn child_name(run: &ScoringRun, suffix: &str) -> String {
    let tag = uid_tag(run);
    let suffix = if tag.is_empty() {
        suffix.to_string()
    } else {
        format!("{tag}-{suffix}")
    };
    shorten(&run.name_any(), &suffix, MAX_NAME)
}

/// Name of a scoring batch's Job.
pub fn batch_job_name(run: &ScoringRun, batch: i64) -> String {
    child_name(run, &batch.to_string())
}

/// Name of the prepare (partition) Job.
pub fn prepare_job_name(run: &ScoringRun) -> String {
    child_name(run, "prepare")
}

/// Name of the ConfigMap holding a run's resolved sensor list.
pub fn sensor_list_name(run: &ScoringRun) -> String {
    child_name(run, "sensors")
}

/// Name of the run created by a rerun request with annotation value `value` on run `run`.
pub fn rerun_name(run: &str, value: &str) -> String {
    let hash = stable_hash(value.as_bytes()) & 0xff_ffff;
    shorten(run, &format!("rerun-{hash:06x}"), MAX_NAME)
}

/// The run's name as a label value: cut with a hash when longer than 63 characters.
pub fn run_label_value(run: &str) -> String {
    if run.len() <= MAX_NAME {
        return run.to_string();
    }
    let hash = stable_hash(run.as_bytes()) & 0xff_ffff;
    let cut: String = run.chars().take(MAX_NAME - 7).collect();
    format!("{}-{hash:06x}", cut.trim_end_matches(['-', '.']))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::run::ScoringRunSpec;

    fn run(name: &str, uid: &str) -> ScoringRun {
        let spec: ScoringRunSpec = serde_json::from_value(serde_json::json!({
            "sensors": { "devices": ["1"], "tags": ["4"] },
            "storage": { "models": "m", "data": "d", "output": "o" },
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let mut r = ScoringRun::new(name, spec);
        r.metadata.uid = Some(uid.into());
        r
    }

    #[test]
    fn a_run_applied_again_under_the_same_name_gets_other_child_names() {
        let (a, b) = (run("nightly", "uid-1"), run("nightly", "uid-2"));
        assert_ne!(batch_job_name(&a, 0), batch_job_name(&b, 0));
        assert_ne!(sensor_list_name(&a), sensor_list_name(&b));
        assert!(
            batch_job_name(&a, 7).starts_with("nightly-") && batch_job_name(&a, 7).ends_with("-7")
        );
    }

    #[test]
    fn long_run_names_give_distinct_names_and_label_values_within_63_characters() {
        let (a, b) = ("a".repeat(70), format!("{}b", "a".repeat(69)));
        let (ja, jb) = (
            batch_job_name(&run(&a, "u"), 12345),
            batch_job_name(&run(&b, "u"), 12345),
        );
        assert!(ja.len() <= 63 && jb.len() <= 63 && ja != jb);
        assert!(run_label_value(&a).len() <= 63);
        assert_ne!(run_label_value(&a), run_label_value(&b));
        assert_eq!(run_label_value("short"), "short");
        assert!(rerun_name(&a, "1").len() <= 63);
    }
}
