//! `fleetscore run --local <schedule.yaml>`: the embedded default understands the same
//! ScoringSchedule manifest as the cluster. It scores the latest slot now (the run the operator
//! would have created for it, same name and data window) and, with `--keep-running`, every
//! following slot at its time.

use std::future::Future;

use chrono::{DateTime, Duration, Utc};
use kube::ResourceExt;

use crate::crd::run::ScoringRun;
use crate::crd::schedule::ScoringSchedule;
use crate::schedule::clock::Clock;
use crate::schedule::controller::build_run;
use crate::schedule::slots::{CronSchedule, SlotError};

/// Errors of a local schedule.
#[derive(Debug, thiserror::Error)]
pub enum LocalScheduleError {
    /// The document is not a valid ScoringSchedule.
    #[error("{path}: ScoringSchedule: {message}")]
    Manifest {
        /// The manifest file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The cron expression or time zone is invalid (the reason is the source, which anyhow
    /// prints after this message).
    #[error("{path}: ScoringSchedule {name}")]
    Schedule {
        /// The manifest file.
        path: String,
        /// The schedule's name.
        name: String,
        /// Why.
        #[source]
        source: SlotError,
    },
}

/// A schedule read from a manifest, ready to produce the run of any slot.
#[derive(Debug, Clone)]
pub struct LocalSchedule {
    /// The schedule as written.
    pub schedule: ScoringSchedule,
    /// Its parsed cron expression.
    pub cron: CronSchedule,
}

impl LocalSchedule {
    /// Reads a ScoringSchedule document (`path` is for messages).
    pub fn from_yaml(doc: serde_yaml::Value, path: &str) -> Result<Self, LocalScheduleError> {
        let manifest = |message: String| LocalScheduleError::Manifest {
            path: path.to_string(),
            message,
        };
        let schedule: ScoringSchedule =
            serde_yaml::from_value(doc).map_err(|e| manifest(e.to_string()))?;
        let name = schedule.name_any();
        if name.is_empty() {
            return Err(manifest(
                "metadata.name is required (runs are named after it)".into(),
            ));
        }
        let cron = CronSchedule::parse(&schedule.spec.schedule, Some(&schedule.spec.time_zone))
            .map_err(|source| LocalScheduleError::Schedule {
                path: path.to_string(),
                name,
                source,
            })?;
        Ok(Self { schedule, cron })
    }

    /// The latest slot at or before `now` (None if the expression never matched before).
    pub fn latest_slot(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.previous_before(now + Duration::seconds(1))
    }

    /// The run for `slot`: the same name, spec, labels and window annotations as in a cluster.
    pub fn run_for(&self, slot: DateTime<Utc>) -> ScoringRun {
        build_run(&self.schedule, &self.cron, slot)
    }
}

/// Scores the latest slot now and, when `keep_running`, each next slot when the clock reaches
/// it. `score` runs one ScoringRun and says whether every sensor succeeded. Returns whether
/// every run succeeded (the loop only ends on an error from `score`, or after one run).
pub async fn run<F, Fut, E>(
    schedule: &LocalSchedule,
    clock: &dyn Clock,
    keep_running: bool,
    mut score: F,
) -> Result<bool, E>
where
    F: FnMut(ScoringRun, DateTime<Utc>) -> Fut,
    Fut: Future<Output = Result<bool, E>>,
{
    let now = clock.now();
    // No earlier slot (e.g. a yearly schedule read just before its first time): run "now".
    let mut slot = schedule.latest_slot(now).unwrap_or(now);
    let mut all_ok = true;
    loop {
        all_ok &= score(schedule.run_for(slot), slot).await?;
        if !keep_running {
            return Ok(all_ok);
        }
        let Ok(next) = schedule.cron.next_after(slot.max(clock.now())) else {
            return Ok(all_ok);
        };
        tokio::time::sleep(clock.real_duration_until(next)).await;
        slot = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::schedule::{SCHEDULED_AT_ANNOTATION, WINDOW_START_ANNOTATION};
    use crate::schedule::clock::ScaledClock;
    use std::sync::Mutex;

    const SCHEDULE: &str = r#"
apiVersion: fleetscore.dev/v1alpha1
kind: ScoringSchedule
metadata:
  name: hourly-scoring
spec:
  schedule: "0 * * * *"
  timeZone: Europe/Amsterdam
  runTemplate:
    spec:
      sensors: {devices: ["1"], tags: ["4"]}
      storage: {models: m, data: d.csv, output: out}
"#;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_local_run_is_the_one_the_operator_would_create_for_the_latest_slot() {
        let s =
            LocalSchedule::from_yaml(serde_yaml::from_str(SCHEDULE).unwrap(), "s.yaml").unwrap();
        let slot = s.latest_slot(t("2026-01-01T10:59:30Z")).unwrap();
        assert_eq!(slot, t("2026-01-01T10:00:00Z"));
        assert_eq!(
            s.latest_slot(t("2026-01-01T11:00:00Z")),
            Some(t("2026-01-01T11:00:00Z"))
        );
        let run = s.run_for(slot);
        assert_eq!(run.name_any(), "hourly-scoring-202601011000");
        assert_eq!(
            run.annotations()[SCHEDULED_AT_ANNOTATION],
            "2026-01-01T10:00:00Z"
        );
        assert_eq!(
            run.annotations()[WINDOW_START_ANNOTATION],
            "2026-01-01T09:00:00Z"
        );
        assert!(run.owner_references().is_empty());
    }

    #[test]
    fn a_bad_time_zone_is_reported_with_the_file_and_schedule() {
        let doc =
            serde_yaml::from_str(&SCHEDULE.replace("Europe/Amsterdam", "Europe/Atlantis")).unwrap();
        let err = LocalSchedule::from_yaml(doc, "s.yaml").unwrap_err();
        let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(
            text.contains("s.yaml")
                && text.contains("hourly-scoring")
                && text.contains("Europe/Atlantis"),
            "{text}"
        );
    }

    #[test]
    fn the_example_schedules_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .chain(std::fs::read_dir(dir.join("aks")).unwrap())
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .filter(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .contains("kind: ScoringSchedule")
            })
            .collect();
        files.sort();
        assert!(files.len() >= 2, "{files:?}");
        for file in files {
            let doc = serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            let s = LocalSchedule::from_yaml(doc, &file.display().to_string()).unwrap();
            let re = |rule: &str| {
                regex::Regex::new(
                    rule.strip_prefix("self.matches('")
                        .unwrap()
                        .strip_suffix("')")
                        .unwrap(),
                )
                .unwrap()
            };
            let fields = regex::Regex::new(&crate::schedule::cron::fields_regex()).unwrap();
            let duration =
                regex::Regex::new(&format!("^{}$", crate::schedule::cron::DURATION_RE)).unwrap();
            assert!(
                crate::schedule::cron::cel_admits(&s.schedule.spec.schedule, &fields, &duration),
                "{file:?}"
            );
            assert!(
                re(crate::crd::schedule::TIME_ZONE_CEL).is_match(&s.schedule.spec.time_zone),
                "{file:?}"
            );
        }
    }

    #[tokio::test]
    async fn keep_running_scores_each_next_slot_at_its_time() {
        let s = LocalSchedule::from_yaml(
            serde_yaml::from_str(&SCHEDULE.replace("0 * * * *", "* * * * *")).unwrap(),
            "s.yaml",
        )
        .unwrap();
        // 600× real time: a minute slot every 0.1 s.
        let clock = ScaledClock::new(t("2026-01-01T10:00:30Z"), 600.0);
        let seen = Mutex::new(Vec::new());
        let result: Result<bool, String> = run(&s, &clock, true, |run, slot| {
            let mut seen = seen.lock().unwrap();
            seen.push((run.name_any(), slot, clock.now()));
            let stop = seen.len() >= 3;
            async move {
                if stop {
                    Err("enough".to_string())
                } else {
                    Ok(true)
                }
            }
        })
        .await;
        assert_eq!(result, Err("enough".to_string()));
        let seen = seen.into_inner().unwrap();
        let names: Vec<&str> = seen.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "hourly-scoring-202601011000",
                "hourly-scoring-202601011001",
                "hourly-scoring-202601011002"
            ]
        );
        for (_, slot, at) in &seen[1..] {
            assert!(at >= slot, "ran {at} before its slot {slot}");
        }
    }
}
