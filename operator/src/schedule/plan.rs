//! What one tick of a schedule does, decided without I/O: which slots get a run, which are
//! skipped or missed, whether active runs are replaced, and when the next tick is.
//!
//! Rules (documented in the CRD too):
//! - The due slots are those after the newest handled slot, up to now.
//! - Without backfill only the latest due slot runs (as with CronJob); with `backfill.limit = N`
//!   the latest N+1 due slots run, oldest first. Older ones count as missed.
//! - `startingDeadlineSeconds`: a slot older than that is missed, not run late.
//! - Allow creates every chosen slot. Replace runs only the latest (backfilling slots that would
//!   be replaced at once makes no sense) and deletes the active runs. Forbid with an active run
//!   skips the slot (event `Skipped`); with backfill it keeps the chosen slots pending and runs
//!   them one at a time, oldest first, as the active run finishes.
//! - While suspended nothing runs and nothing is handled: the slots that pass count as missed
//!   slots at resume, exactly like slots missed while the operator was down (CronJob's rule).
//!   So on resume the latest of them runs at once (plus `backfill.limit` earlier ones), unless
//!   `startingDeadlineSeconds` has passed for them; set that to resume without a catch-up run.

use chrono::{DateTime, Duration, Utc};

use crate::crd::schedule::{ConcurrencyPolicy, ScoringScheduleSpec};
use crate::schedule::slots::CronSchedule;

/// The inputs of one tick.
#[derive(Debug, Clone)]
pub struct TickInput<'a> {
    /// The schedule's spec.
    pub spec: &'a ScoringScheduleSpec,
    /// The parsed cron expression in its zone.
    pub cron: &'a CronSchedule,
    /// The clock's current time.
    pub now: DateTime<Utc>,
    /// The newest slot already handled (or the schedule's creation time).
    pub last_handled: DateTime<Utc>,
    /// Number of runs of this schedule not finished.
    pub active: usize,
}

/// The decisions of one tick.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickPlan {
    /// Slots to create runs for, oldest first.
    pub create: Vec<DateTime<Utc>>,
    /// Slots skipped because a run is active (Forbid).
    pub skipped: Vec<DateTime<Utc>>,
    /// Slots missed (past the deadline or beyond the backfill limit).
    pub missed: usize,
    /// True when `missed` is a lower bound (a very long gap).
    pub missed_is_lower_bound: bool,
    /// Slots due while suspended (they stay due: handled on resume).
    pub suspended: usize,
    /// Delete the active runs before creating (Replace).
    pub replace_active: bool,
    /// Slots still pending after this tick (Forbid with backfill, waiting for the active run).
    pub pending: usize,
    /// The newest slot handled after this tick (created, skipped, missed or passed over).
    pub last_handled: Option<DateTime<Utc>>,
    /// The next slot after now.
    pub next: Option<DateTime<Utc>>,
}

/// Decides one tick.
pub fn plan_tick(input: &TickInput<'_>) -> TickPlan {
    let spec = input.spec;
    let backfill = spec
        .backfill
        .as_ref()
        .map_or(0, |b| usize::try_from(b.limit.max(0)).unwrap_or(0));
    let keep = match spec.concurrency_policy {
        ConcurrencyPolicy::Replace => 1,
        _ => backfill + 1,
    };
    let due = input
        .cron
        .missed_between(input.last_handled, input.now, keep);
    let mut plan = TickPlan {
        next: input.cron.next_after(input.now).ok(),
        ..TickPlan::default()
    };
    if due.total == 0 {
        return plan;
    }
    let newest_due = due.slots.last().copied();
    if spec.suspend {
        plan.suspended = due.total;
        return plan;
    }
    let eligible: Vec<DateTime<Utc>> = match spec.starting_deadline_seconds {
        Some(secs) => {
            let oldest_allowed = input.now - Duration::seconds(secs);
            due.slots
                .iter()
                .copied()
                .filter(|s| *s >= oldest_allowed)
                .collect()
        }
        None => due.slots.clone(),
    };
    plan.missed = due.total - eligible.len();
    plan.missed_is_lower_bound = due.total_is_lower_bound;
    // The newest slot given up: everything up to it is handled even if nothing else happens.
    let newest_dropped = if plan.missed == 0 {
        None
    } else {
        match eligible.first() {
            Some(oldest_kept) => input.cron.previous_before(*oldest_kept),
            None => newest_due,
        }
    };
    plan.last_handled = newest_dropped;
    let Some(newest_eligible) = eligible.last().copied() else {
        return plan;
    };
    match spec.concurrency_policy {
        ConcurrencyPolicy::Allow => {
            plan.create = eligible;
            plan.last_handled = Some(newest_eligible);
        }
        ConcurrencyPolicy::Replace => {
            plan.replace_active = input.active > 0;
            plan.create = vec![newest_eligible];
            plan.last_handled = Some(newest_eligible);
        }
        ConcurrencyPolicy::Forbid if input.active == 0 => {
            plan.create = vec![eligible[0]];
            plan.pending = eligible.len() - 1;
            plan.last_handled = Some(eligible[0]);
        }
        ConcurrencyPolicy::Forbid if backfill == 0 => {
            plan.skipped = eligible;
            plan.last_handled = Some(newest_eligible);
        }
        ConcurrencyPolicy::Forbid => {
            plan.pending = eligible.len();
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::schedule::BackfillSpec;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn spec(yaml_extra: &str) -> ScoringScheduleSpec {
        serde_yaml::from_str(&format!(
            "schedule: '0 * * * *'\n{yaml_extra}\nrunTemplate:\n  spec:\n    sensors: {{allModels: true}}\n    storage: {{models: m, data: d, output: o}}\n"
        ))
        .unwrap()
    }

    fn tick(spec: &ScoringScheduleSpec, last: &str, now: &str, active: usize) -> TickPlan {
        let cron = CronSchedule::parse(&spec.schedule, Some(&spec.time_zone)).unwrap();
        plan_tick(&TickInput {
            spec,
            cron: &cron,
            now: t(now),
            last_handled: t(last),
            active,
        })
    }

    #[test]
    fn nothing_is_due_before_the_next_slot() {
        let p = tick(&spec(""), "2026-01-01T10:00:00Z", "2026-01-01T10:59:59Z", 0);
        assert!(p.create.is_empty() && p.last_handled.is_none());
        assert_eq!(p.next, Some(t("2026-01-01T11:00:00Z")));
    }

    #[test]
    fn a_due_slot_is_created_and_becomes_the_last_handled() {
        let p = tick(
            &spec(""),
            "2026-01-01T10:00:00Z",
            "2026-01-01T11:00:00.2Z",
            0,
        );
        assert_eq!(p.create, vec![t("2026-01-01T11:00:00Z")]);
        assert_eq!(p.last_handled, Some(t("2026-01-01T11:00:00Z")));
        assert_eq!(p.next, Some(t("2026-01-01T12:00:00Z")));
        assert_eq!(p.missed, 0);
    }

    #[test]
    fn without_backfill_only_the_latest_missed_slot_runs() {
        let p = tick(&spec(""), "2026-01-01T05:00:00Z", "2026-01-01T10:30:00Z", 0);
        assert_eq!(p.create, vec![t("2026-01-01T10:00:00Z")]);
        assert_eq!(p.missed, 4);
    }

    #[test]
    fn backfill_runs_exactly_the_bounded_newest_missed_slots_oldest_first() {
        let mut s = spec("");
        s.backfill = Some(BackfillSpec { limit: 2 });
        let p = tick(&s, "2026-01-01T05:00:00Z", "2026-01-01T10:30:00Z", 0);
        assert_eq!(
            p.create,
            vec![
                t("2026-01-01T08:00:00Z"),
                t("2026-01-01T09:00:00Z"),
                t("2026-01-01T10:00:00Z")
            ]
        );
        assert_eq!(p.missed, 2);
        assert_eq!(p.last_handled, Some(t("2026-01-01T10:00:00Z")));
    }

    #[test]
    fn the_starting_deadline_turns_late_slots_into_missed_ones() {
        let mut s = spec("startingDeadlineSeconds: 600");
        s.backfill = Some(BackfillSpec { limit: 5 });
        let late = tick(&s, "2026-01-01T05:00:00Z", "2026-01-01T10:11:00Z", 0);
        assert!(late.create.is_empty());
        assert_eq!(late.missed, 5);
        assert_eq!(late.last_handled, Some(t("2026-01-01T10:00:00Z")));
        let in_time = tick(&s, "2026-01-01T05:00:00Z", "2026-01-01T10:09:00Z", 0);
        assert_eq!(in_time.create, vec![t("2026-01-01T10:00:00Z")]);
        assert_eq!(in_time.missed, 4);
    }

    #[test]
    fn forbid_skips_a_slot_while_a_run_is_active() {
        let s = spec("concurrencyPolicy: Forbid");
        let p = tick(&s, "2026-01-01T10:00:00Z", "2026-01-01T11:00:01Z", 1);
        assert!(p.create.is_empty());
        assert_eq!(p.skipped, vec![t("2026-01-01T11:00:00Z")]);
        assert_eq!(p.last_handled, Some(t("2026-01-01T11:00:00Z")));
    }

    #[test]
    fn forbid_with_backfill_queues_slots_and_runs_them_one_at_a_time() {
        let mut s = spec("concurrencyPolicy: Forbid");
        s.backfill = Some(BackfillSpec { limit: 2 });
        let first = tick(&s, "2026-01-01T07:00:00Z", "2026-01-01T10:30:00Z", 0);
        assert_eq!(first.create, vec![t("2026-01-01T08:00:00Z")]);
        assert_eq!(first.pending, 2);
        let waiting = tick(&s, "2026-01-01T08:00:00Z", "2026-01-01T10:40:00Z", 1);
        assert!(waiting.create.is_empty() && waiting.skipped.is_empty());
        assert_eq!((waiting.pending, waiting.last_handled), (2, None));
        let second = tick(&s, "2026-01-01T08:00:00Z", "2026-01-01T10:50:00Z", 0);
        assert_eq!(second.create, vec![t("2026-01-01T09:00:00Z")]);
    }

    #[test]
    fn replace_runs_the_latest_slot_and_replaces_the_active_run() {
        let mut s = spec("concurrencyPolicy: Replace");
        s.backfill = Some(BackfillSpec { limit: 3 });
        let p = tick(&s, "2026-01-01T08:00:00Z", "2026-01-01T10:00:00Z", 1);
        assert!(p.replace_active);
        assert_eq!(p.create, vec![t("2026-01-01T10:00:00Z")]);
        assert_eq!(p.missed, 1);
    }

    #[test]
    fn a_suspended_schedule_runs_nothing_and_keeps_its_slots_due() {
        let p = tick(
            &spec("suspend: true"),
            "2026-01-01T05:00:00Z",
            "2026-01-01T10:30:00Z",
            0,
        );
        assert!(p.create.is_empty());
        assert_eq!((p.suspended, p.missed, p.last_handled), (5, 0, None));
    }

    #[test]
    fn on_resume_the_slots_missed_while_suspended_are_handled_like_downtime() {
        // As CronJob: the latest missed slot runs at once, the older ones count as missed.
        let resumed = tick(&spec(""), "2026-01-01T05:00:00Z", "2026-01-01T10:30:00Z", 0);
        assert_eq!(
            (resumed.create.clone(), resumed.missed),
            (vec![t("2026-01-01T10:00:00Z")], 4)
        );
        // With a starting deadline they are all too late: nothing runs until the next slot.
        let late = tick(
            &spec("startingDeadlineSeconds: 300"),
            "2026-01-01T05:00:00Z",
            "2026-01-01T10:30:00Z",
            0,
        );
        assert!(late.create.is_empty());
        assert_eq!(
            (late.missed, late.last_handled),
            (5, Some(t("2026-01-01T10:00:00Z")))
        );
    }
}
