//! Prometheus metrics of the schedule controller: reconciles, errors, and what became of each slot.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Label of the slot counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SlotLabels {
    /// `created` (a run was created), `skipped` (Forbid, a run still active), `missed`
    /// (past startingDeadlineSeconds or beyond the backfill limit) or `triggered` (a run made by
    /// the trigger annotation).
    pub outcome: String,
}

/// The schedule controller's metrics.
#[derive(Clone, Default, Debug)]
pub struct ScheduleMetrics {
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconciles that failed (retried).
    pub errors: Counter,
    /// Slots by outcome.
    pub slots: Family<SlotLabels, Counter>,
    /// Active runs deleted by concurrencyPolicy Replace.
    pub replaced: Counter,
}

impl ScheduleMetrics {
    /// Registers the metrics as `fleetscore_schedule_*` in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("fleetscore_schedule");
        r.register(
            "reconciles",
            "ScoringSchedule reconciles",
            self.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "ScoringSchedule reconciles that failed",
            self.errors.clone(),
        );
        r.register(
            "slots",
            "Schedule slots by outcome (created, skipped, missed)",
            self.slots.clone(),
        );
        r.register(
            "runs_replaced",
            "Active runs deleted by concurrencyPolicy Replace",
            self.replaced.clone(),
        );
    }

    /// Counts `n` slots with `outcome`.
    pub fn slots(&self, outcome: &str, n: u64) {
        if n > 0 {
            self.slots
                .get_or_create(&SlotLabels {
                    outcome: outcome.into(),
                })
                .inc_by(n);
        }
    }

    /// Slots counted so far with `outcome`.
    pub fn slot_count(&self, outcome: &str) -> u64 {
        self.slots
            .get(&SlotLabels {
                outcome: outcome.into(),
            })
            .map_or(0, |c| c.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_exported_by_outcome_with_the_schedule_prefix() {
        let m = ScheduleMetrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        m.slots("created", 2);
        m.slots("missed", 0);
        m.slots("skipped", 1);
        assert_eq!(
            (
                m.slot_count("created"),
                m.slot_count("missed"),
                m.slot_count("skipped")
            ),
            (2, 0, 1)
        );
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap_or_default();
        assert!(
            out.contains("fleetscore_schedule_slots_total{outcome=\"created\"} 2"),
            "{out}"
        );
        assert!(
            out.contains("fleetscore_schedule_reconciles_total 0"),
            "{out}"
        );
    }
}
