//! Prometheus metrics of the ScoringRun controller: reconciles, errors, runs and sensors by
//! outcome, queue depth, and API writes (the benchmark's writes-per-sensor figure).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of an error counter: the error's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Error variant name (e.g. `Kube`).
    pub error: String,
}

/// Label of an outcome counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Phase of a run, or `succeeded` / `failed` for sensors.
    pub outcome: String,
}

/// Label of the sensor-failure counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The failed sensor's reason, as in `status.failedSensors[].reason`.
    pub reason: String,
}

/// Labels of a per-run gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// Namespace of the run.
    pub namespace: String,
    /// Name of the run.
    pub run: String,
}

/// Labels of an API write.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// `create`, `patch` or `delete`.
    pub verb: String,
    /// `job`, `scoringrun`, `configmap`.
    pub resource: String,
}

/// The run controller's metrics.
#[derive(Clone)]
pub struct RunMetrics {
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconcile errors by kind.
    pub failures: Family<ErrorLabels, Counter>,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// Finished runs by phase.
    pub runs: Family<OutcomeLabels, Counter>,
    /// Finished sensors by outcome.
    pub sensors: Family<OutcomeLabels, Counter>,
    /// Failed sensors by reason (the dashboard's "failures by reason").
    pub sensor_failures: Family<ReasonLabels, Counter>,
    /// Sensors waiting in the operator's queue, per run.
    pub queue_depth: Family<RunLabels, Gauge>,
    /// Scoring Jobs active, per run.
    pub active_jobs: Family<RunLabels, Gauge>,
    /// API writes by verb and resource.
    pub api_writes: Family<WriteLabels, Counter>,
}

impl Default for RunMetrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            failures: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            runs: Family::default(),
            sensors: Family::default(),
            sensor_failures: Family::default(),
            queue_depth: Family::default(),
            active_jobs: Family::default(),
            api_writes: Family::default(),
        }
    }
}

impl RunMetrics {
    /// New metrics, registered under `fleetscore_run_*` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("fleetscore_run");
        r.register("reconciles", "ScoringRun reconciles", m.reconciles.clone());
        r.register(
            "reconcile_errors",
            "ScoringRun reconcile errors by kind",
            m.failures.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "ScoringRun reconcile duration",
            m.reconcile_duration.clone(),
        );
        r.register(
            "runs_finished",
            "Finished ScoringRuns by phase",
            m.runs.clone(),
        );
        r.register(
            "sensors_finished",
            "Finished sensors by outcome",
            m.sensors.clone(),
        );
        r.register(
            "sensor_failures",
            "Failed sensors by reason",
            m.sensor_failures.clone(),
        );
        r.register(
            "queue_depth",
            "Sensors waiting in the operator's queue",
            m.queue_depth.clone(),
        );
        r.register("active_jobs", "Scoring Jobs active", m.active_jobs.clone());
        r.register(
            "api_writes",
            "Kubernetes API writes by verb and resource",
            m.api_writes.clone(),
        );
        m
    }

    /// Counts one API write.
    pub fn write(&self, verb: &str, resource: &str) {
        self.api_writes
            .get_or_create(&WriteLabels {
                verb: verb.into(),
                resource: resource.into(),
            })
            .inc();
    }

    /// Sum of every API write so far.
    pub fn total_writes(&self) -> u64 {
        let mut total = 0;
        for verb in ["create", "patch", "delete"] {
            for resource in ["job", "scoringrun", "configmap", "event"] {
                let labels = WriteLabels {
                    verb: verb.into(),
                    resource: resource.into(),
                };
                if let Some(c) = self.api_writes.get(&labels) {
                    total += c.get();
                }
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_counted_by_verb_and_resource_and_exposed_in_text() {
        let mut registry = Registry::default();
        let m = RunMetrics::register(&mut registry);
        m.write("create", "job");
        m.write("create", "job");
        m.write("patch", "scoringrun");
        assert_eq!(m.total_writes(), 3);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("fleetscore_run_api_writes_total{verb=\"create\",resource=\"job\"} 2"),
            "{text}"
        );
    }
}
