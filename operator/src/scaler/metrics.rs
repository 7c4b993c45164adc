//! Prometheus metrics of the scaler, registered in the operator's registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::report::NodePoolReport;

/// Current and desired pool size, demand, operation counters, and what each run cost.
#[derive(Clone, Debug)]
pub struct ScalerMetrics {
    /// Nodes the pool has.
    pub current: Gauge,
    /// Nodes the policy wants.
    pub desired: Gauge,
    /// Jobs that need a node (queued within parallelism + active).
    pub jobs_needing_node: Gauge,
    /// Resize operations started.
    pub scale_operations: Counter,
    /// Failed pool reads or resizes.
    pub errors: Counter,
    /// Node-minutes per finished run (histogram over runs).
    pub run_node_minutes: Histogram,
    /// Seconds from a run's start to its first pod running.
    pub run_first_pod_seconds: Histogram,
    /// Seconds the pool idled above its minimum after a run's last Job.
    pub run_idle_tail_seconds: Histogram,
}

impl Default for ScalerMetrics {
    fn default() -> Self {
        Self {
            current: Gauge::default(),
            desired: Gauge::default(),
            jobs_needing_node: Gauge::default(),
            scale_operations: Counter::default(),
            errors: Counter::default(),
            // 0.25 node-minutes up to about 34 node-days.
            run_node_minutes: Histogram::new(exponential_buckets(0.25, 2.0, 18)),
            // 1 s up to about 9 hours: a cold AKS node takes minutes, a warm one seconds.
            run_first_pod_seconds: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            run_idle_tail_seconds: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
        }
    }
}

impl ScalerMetrics {
    /// Registers the metrics as `fleetscore_scaler_*` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("fleetscore_scaler");
        r.register(
            "current_nodes",
            "Nodes in the scoring node pool",
            self.current.clone(),
        );
        r.register(
            "desired_nodes",
            "Nodes the scaler wants in the pool",
            self.desired.clone(),
        );
        r.register(
            "jobs_needing_node",
            "Scoring Jobs that need a node (queued within parallelism plus active)",
            self.jobs_needing_node.clone(),
        );
        r.register(
            "scale_operations",
            "Pool resize operations started",
            self.scale_operations.clone(),
        );
        r.register(
            "errors",
            "Failed pool reads or resizes",
            self.errors.clone(),
        );
        r.register(
            "run_node_minutes",
            "Pool node-minutes per finished run",
            self.run_node_minutes.clone(),
        );
        r.register(
            "run_first_pod_seconds",
            "Seconds from a run's start to its first pod running",
            self.run_first_pod_seconds.clone(),
        );
        r.register(
            "run_idle_tail_seconds",
            "Seconds the pool idled above its minimum after a run's last Job",
            self.run_idle_tail_seconds.clone(),
        );
    }

    /// Records a run's final node-pool report.
    pub fn observe_run(&self, report: &NodePoolReport) {
        self.run_node_minutes.observe(report.node_minutes);
        if let Some(s) = report.time_to_first_pod_running_seconds {
            self.run_first_pod_seconds.observe(s);
        }
        if let Some(s) = report.idle_tail_seconds {
            self.run_idle_tail_seconds.observe(s);
        }
    }

    /// Records one decision.
    pub fn observe(&self, current: u32, desired: u32, jobs: u32) {
        self.current.set(i64::from(current));
        self.desired.set(i64::from(desired));
        self.jobs_needing_node.set(i64::from(jobs));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exported_with_the_scaler_prefix() {
        let m = ScalerMetrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        m.observe(2, 3, 9);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(out.contains("fleetscore_scaler_current_nodes 2"), "{out}");
        assert!(out.contains("fleetscore_scaler_desired_nodes 3"), "{out}");
        assert!(
            out.contains("fleetscore_scaler_scale_operations_total 0"),
            "{out}"
        );
        let report = NodePoolReport {
            node_minutes: 3.0,
            idle_tail_seconds: Some(40.0),
            ..NodePoolReport::default()
        };
        m.observe_run(&report);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        assert!(
            out.contains("fleetscore_scaler_run_node_minutes_count 1"),
            "{out}"
        );
        assert!(
            out.contains("fleetscore_scaler_run_node_minutes_sum 3.0"),
            "{out}"
        );
        assert!(
            out.contains("fleetscore_scaler_run_idle_tail_seconds_count 1"),
            "{out}"
        );
        assert!(
            out.contains("fleetscore_scaler_run_first_pod_seconds_count 0"),
            "{out}"
        );
    }
}
