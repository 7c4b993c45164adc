//! The embedded default: a ScoringRun manifest scored on this machine, without Kubernetes, with
//! the scorer library on all cores (`fleetscore run --local FILE.yaml`).
//!
//! The same YAML the cluster takes: sensors from the spec (or every model under the prefix),
//! predictions and per-sensor records written by the scorer under `<output>/<run>/`, plus the
//! `summary.json` the operator writes in a cluster, and `report.html` beside it.

use std::path::Path;

use fleetscore_scorer::data::aggregate::Aggregation;
use fleetscore_scorer::fleet::{FleetSpec, FleetSummary, SensorSelection, score_fleet};
use fleetscore_scorer::output::SensorRecord;
use fleetscore_scorer::sensor::SensorId;
use kube::ResourceExt;
use serde::Deserialize as _;

use super::jobs;
use super::plan::{self as queue, Counts};
use crate::crd::run::{Phase, ScoringRun};

/// Errors of a local run.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The manifest file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not valid YAML of a known kind.
    #[error("{path}: {message}")]
    Manifest {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The run cannot be scored locally as written.
    #[error("ScoringRun {run}: {message}")]
    Unsupported {
        /// The run's name.
        run: String,
        /// Why.
        message: String,
    },
    /// The scorer could not run the fleet at all.
    #[error("ScoringRun {run}: {source}")]
    Fleet {
        /// The run's name.
        run: String,
        /// The scorer's error (boxed: it is large).
        #[source]
        source: Box<fleetscore_scorer::fleet::FleetError>,
    },
}

/// Settings of a local run (command-line overrides).
#[derive(Clone, Debug, Default)]
pub struct LocalOptions {
    /// Worker threads (None: every core).
    pub threads: Option<usize>,
    /// Output override (instead of `spec.storage.output`).
    pub output: Option<String>,
}

/// A manifest document the local runner understands.
#[derive(Debug)]
pub enum Manifest {
    /// A ScoringRun.
    Run(Box<ScoringRun>),
    /// Another kind (e.g. ScoringSchedule), left as YAML for its own runner.
    Other {
        /// Its `kind`.
        kind: String,
        /// The document.
        doc: serde_yaml::Value,
    },
}

/// Reads every document of a YAML file.
pub fn read_manifests(path: &Path) -> Result<Vec<Manifest>, LocalError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LocalError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_manifests(&text, &shown)
}

/// Parses every document of a YAML text (`path` is for messages).
pub fn parse_manifests(text: &str, path: &str) -> Result<Vec<Manifest>, LocalError> {
    let bad = |message: String| LocalError::Manifest {
        path: path.to_string(),
        message,
    };
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| bad(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        if kind == "ScoringRun" {
            let run: ScoringRun =
                serde_yaml::from_value(value).map_err(|e| bad(format!("ScoringRun: {e}")))?;
            if run.metadata.name.as_deref().unwrap_or_default().is_empty() {
                return Err(bad(
                    "ScoringRun: metadata.name is required (it is the run id)".into(),
                ));
            }
            out.push(Manifest::Run(Box::new(run)));
        } else if kind.is_empty() {
            return Err(bad("a document has no kind".into()));
        } else {
            out.push(Manifest::Other { kind, doc: value });
        }
    }
    if out.is_empty() {
        return Err(bad("no documents".into()));
    }
    Ok(out)
}

/// The scorer's fleet spec for a run, scoring `sensors` (None: every model under the prefix).
pub fn fleet_spec(run: &ScoringRun, opts: &LocalOptions) -> Result<FleetSpec, LocalError> {
    let name = run.name_any();
    let unsupported = |message: &str| LocalError::Unsupported {
        run: name.clone(),
        message: message.into(),
    };
    if run.spec.rerun_of.is_some() {
        return Err(unsupported(
            "rerunOf needs the cluster's record of the earlier run; list the sensors instead",
        ));
    }
    let selector = run
        .spec
        .sensors
        .as_ref()
        .ok_or_else(|| unsupported("spec.sensors is required"))?;
    let sensors = match queue::resolve_static(selector) {
        Some(list) => SensorSelection::List(
            list.map_err(|e| unsupported(&e.to_string()))?
                .into_iter()
                .map(|s| SensorId::new(s.device, s.tag))
                .collect(),
        ),
        None => SensorSelection::All,
    };
    let aggregation = match run.spec.scorer.aggregate {
        Some(w) => Some(
            Aggregation::parse(w.as_str(), &jobs::features_arg(&run.spec.scorer.features))
                .map_err(|e| unsupported(&e.to_string()))?,
        ),
        None => None,
    };
    Ok(FleetSpec {
        models: run.spec.storage.models.clone(),
        data: run.spec.storage.data.clone(),
        output: opts
            .output
            .clone()
            .unwrap_or_else(|| run.spec.storage.output.clone()),
        run_id: name,
        sensors,
        aggregation,
        strict: run.spec.scorer.strict,
        max_bad_rows_percent: run
            .spec
            .scorer
            .max_bad_rows_percent
            .unwrap_or(fleetscore_scorer::fleet::DEFAULT_MAX_BAD_ROWS_PERCENT),
        threads: opts.threads.or_else(|| {
            run.spec
                .scorer
                .threads
                .and_then(|t| usize::try_from(t).ok())
        }),
        device_features: None,
    })
}

/// How many sensors a spec will score (listing the model store for `allModels`), so a progress
/// bar can show a length before scoring starts.
pub async fn count_sensors(spec: &FleetSpec) -> Option<usize> {
    match &spec.sensors {
        SensorSelection::List(list) => Some(list.len()),
        SensorSelection::All => {
            let models = fleetscore_scorer::storage::open(&spec.models).ok()?;
            fleetscore_scorer::fleet::list_models(&models)
                .await
                .ok()
                .map(|m| m.len())
        }
    }
}

/// Scores a run locally, calling `on_sensor_done` per sensor, and writes `summary.json`.
pub async fn run_local(
    run: &ScoringRun,
    opts: &LocalOptions,
    on_sensor_done: impl Fn(&SensorRecord) + Send + Sync,
) -> Result<(FleetSummary, Phase), LocalError> {
    let spec = fleet_spec(run, opts)?;
    let summary = score_fleet(&spec, on_sensor_done)
        .await
        .map_err(|source| LocalError::Fleet {
            run: run.name_any(),
            source: Box::new(source),
        })?;
    let counts = Counts {
        total: i64::try_from(summary.sensors).unwrap_or(i64::MAX),
        succeeded: i64::try_from(summary.succeeded).unwrap_or(0),
        failed: i64::try_from(summary.failed).unwrap_or(0),
        ..Counts::default()
    };
    let phase = queue::final_phase(counts, run.spec.failure_policy.as_ref());
    let ledger = serde_json::json!({
        "run": run.name_any(),
        "phase": phase,
        "total": counts.total,
        "succeeded": counts.succeeded,
        "failed": counts.failed,
        "failedSensors": summary.failures.iter().map(|(s, e)| serde_json::json!({"sensor": s, "reason": "ScorerFailed", "message": e})).collect::<Vec<_>>(),
        "rows": summary.rows,
        "anomalies": summary.anomalies,
        "wallMs": summary.wall_ms,
        "executor": "local",
    });
    if let Ok(out) = fleetscore_scorer::storage::open(&jobs::join_url(&spec.output, &spec.run_id))
        && let Ok(bytes) = serde_json::to_vec_pretty(&ledger)
        && let Err(e) = out.child("summary.json").put(bytes.into()).await
    {
        tracing::warn!(error = %e, "could not write summary.json");
    }
    // The report beside it: best effort, like the summary (the predictions are what counts).
    match fleetscore_scorer::storage::open(&spec.output) {
        Ok(out) => {
            if let Err(e) =
                fleetscore_scorer::report::write_report(&out, &spec.run_id, &ledger, None).await
            {
                tracing::warn!(error = %e, "could not write report.html");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not write report.html"),
    }
    Ok((summary, phase))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = r#"
apiVersion: fleetscore.dev/v1alpha1
kind: ScoringRun
metadata:
  name: local-demo
spec:
  sensors:
    devices: ["1", "2"]
    tags: ["4"]
  storage:
    models: examples/reference-fleet/models
    data: examples/reference-fleet/readings.csv
    output: target/predictions
  scorer:
    aggregate: 5m
"#;

    #[test]
    fn a_scoring_run_manifest_becomes_the_scorers_fleet_spec() {
        let docs = parse_manifests(RUN, "run.yaml").unwrap();
        let Manifest::Run(run) = &docs[0] else {
            panic!("not a run")
        };
        let spec = fleet_spec(
            run,
            &LocalOptions {
                threads: Some(2),
                output: Some("/tmp/o".into()),
            },
        )
        .unwrap();
        assert_eq!(spec.run_id, "local-demo");
        assert_eq!(spec.output, "/tmp/o");
        assert_eq!(spec.threads, Some(2));
        assert_eq!(
            spec.sensors,
            SensorSelection::List(vec![SensorId::new("1", "4"), SensorId::new("2", "4")])
        );
        assert_eq!(spec.aggregation.unwrap().interval_ms, 300_000);
    }

    #[test]
    fn other_kinds_are_handed_on_and_nameless_runs_are_refused() {
        let docs =
            parse_manifests("kind: ScoringSchedule\nmetadata: {name: s}\n", "s.yaml").unwrap();
        assert!(matches!(&docs[0], Manifest::Other { kind, .. } if kind == "ScoringSchedule"));
        let nameless = RUN.replace("name: local-demo", "labels: {}");
        let err = parse_manifests(&nameless, "run.yaml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("metadata.name"), "{err}");
    }
}
