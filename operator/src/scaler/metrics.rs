//! Prometheus metrics of the scaler, registered in the operator's registry.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Current and desired pool size, demand, and operation counters.
#[derive(Clone, Default, Debug)]
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
}

impl ScalerMetrics {
    /// Registers the metrics as `fleetscore_scaler_*` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("fleetscore_scaler");
        r.register("current_nodes", "Nodes in the scoring node pool", self.current.clone());
        r.register("desired_nodes", "Nodes the scaler wants in the pool", self.desired.clone());
        r.register(
            "jobs_needing_node",
            "Scoring Jobs that need a node (queued within parallelism plus active)",
            self.jobs_needing_node.clone(),
        );
        r.register("scale_operations", "Pool resize operations started", self.scale_operations.clone());
        r.register("errors", "Failed pool reads or resizes", self.errors.clone());
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
        assert!(out.contains("fleetscore_scaler_scale_operations_total 0"), "{out}");
    }
}
