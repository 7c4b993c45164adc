//! The scaling policy: how many nodes the pool should have now, and why. Pure: no I/O and no
//! clock of its own (the caller passes `now`), so every rule is unit-tested with a fake clock.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A policy configuration that cannot be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// `jobsPerNode` must be at least 1.
    #[error("scaler policy: jobsPerNode must be at least 1")]
    ZeroJobsPerNode,
    /// `min` above `max`.
    #[error("scaler policy: minNodes ({min}) is above maxNodes ({max})")]
    MinAboveMax {
        /// Configured minimum.
        min: u32,
        /// Configured maximum.
        max: u32,
    },
    /// A duration too large for the clock arithmetic.
    #[error("scaler policy: {field} is too large")]
    DurationTooLarge {
        /// Name of the offending field.
        field: &'static str,
    },
}

/// The policy's knobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyConfig {
    /// The pool never goes below this many nodes.
    pub min_nodes: u32,
    /// The pool never goes above this many nodes.
    pub max_nodes: u32,
    /// How many scoring Jobs one node runs at once.
    pub jobs_per_node: u32,
    /// How long the pool stays at its size after demand drops (keep-warm).
    pub scale_down_delay: Duration,
    /// Grow the pool this long before a schedule's next slot; `None` disables pre-warming.
    pub prewarm_lead: Option<Duration>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            min_nodes: 0,
            max_nodes: 10,
            jobs_per_node: 4,
            scale_down_delay: Duration::from_secs(600),
            prewarm_lead: None,
        }
    }
}

impl PolicyConfig {
    /// Checks the configuration once, so [`decide`] can rely on it.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.jobs_per_node == 0 {
            return Err(PolicyError::ZeroJobsPerNode);
        }
        if self.min_nodes > self.max_nodes {
            return Err(PolicyError::MinAboveMax {
                min: self.min_nodes,
                max: self.max_nodes,
            });
        }
        delta(self.scale_down_delay, "scaleDownDelay")?;
        if let Some(lead) = self.prewarm_lead {
            delta(lead, "prewarmLead")?;
        }
        Ok(())
    }

    /// Nodes needed for `jobs` Jobs, before clamping.
    pub fn nodes_for(&self, jobs: u32) -> u32 {
        jobs.div_ceil(self.jobs_per_node.max(1))
    }

    fn clamp(&self, nodes: u32) -> u32 {
        nodes.clamp(self.min_nodes, self.max_nodes.max(self.min_nodes))
    }
}

fn delta(d: Duration, field: &'static str) -> Result<TimeDelta, PolicyError> {
    TimeDelta::from_std(d).map_err(|_| PolicyError::DurationTooLarge { field })
}

/// What one run needs: Jobs waiting for a slot and Jobs created but not finished.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunDemand {
    /// `namespace/name` of the run (or of the `fleetscore.dev/run` label value).
    pub run: String,
    /// Jobs the run will still create.
    pub queued: u32,
    /// Jobs created and not finished (their pods need or hold a node).
    pub active: u32,
}

impl RunDemand {
    /// True while the run has Jobs queued or active.
    pub fn needs_nodes(&self) -> bool {
        self.queued > 0 || self.active > 0
    }
}

/// A schedule's next slot and the size of the run it will create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpcomingRun {
    /// `namespace/name` of the schedule.
    pub schedule: String,
    /// When the next run will be created.
    pub at: DateTime<Utc>,
    /// Jobs that run will need.
    pub jobs: u32,
}

/// Everything the policy looks at, observed at `now`.
#[derive(Debug, Clone, Default)]
pub struct PolicyInput {
    /// Demand per run.
    pub runs: Vec<RunDemand>,
    /// Nodes the pool has now.
    pub current_nodes: u32,
    /// Schedules' next slots (used only with pre-warming on).
    pub upcoming: Vec<UpcomingRun>,
}

/// What the policy remembers between decisions (kept by the caller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyMemory {
    /// Last time the pool's current size was all needed; the keep-warm delay counts from here.
    pub last_needed_at: Option<DateTime<Utc>>,
}

/// Why the pool gets the size it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// More nodes are needed now; scale-up is immediate.
    ScaleUp,
    /// Nodes are added ahead of a schedule's next slot.
    Prewarm {
        /// The schedule whose slot is coming.
        schedule: String,
        /// The slot.
        at: DateTime<Utc>,
    },
    /// The pool already has the size it needs.
    Steady,
    /// Demand dropped but the pool is kept warm until the delay has passed.
    KeepWarm {
        /// When scale-down may happen.
        until: DateTime<Utc>,
    },
    /// The delay has passed; the pool shrinks (never below what active Jobs need).
    ScaleDown,
}

impl Reason {
    /// A PascalCase code for conditions, events and metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::ScaleUp => "ScaleUp",
            Reason::Prewarm { .. } => "Prewarm",
            Reason::Steady => "Steady",
            Reason::KeepWarm { .. } => "KeepWarm",
            Reason::ScaleDown => "ScaleDown",
        }
    }
}

/// The policy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Nodes the pool should have.
    pub desired: u32,
    /// Jobs that need a node now (queued + active, all runs).
    pub jobs_needing_node: u32,
    /// Jobs created and not finished (all runs).
    pub active_jobs: u32,
    /// Why.
    pub reason: Reason,
    /// Wake up again at this time even if nothing changes (end of keep-warm, pre-warm start).
    pub recheck_at: Option<DateTime<Utc>>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "desired {} nodes ({}; {} jobs need a node, {} active)",
            self.desired,
            self.reason.code(),
            self.jobs_needing_node,
            self.active_jobs
        )?;
        match &self.reason {
            Reason::KeepWarm { until } => write!(f, ", keep warm until {}", until.to_rfc3339()),
            Reason::Prewarm { schedule, at } => {
                write!(f, ", pre-warm for {schedule} at {}", at.to_rfc3339())
            }
            _ => Ok(()),
        }
    }
}

/// Decides the pool size: clamp(ceil(jobs needing a node / jobsPerNode), min, max); up at
/// once, down only after `scaleDownDelay` of lower demand and never below what active Jobs
/// need; optionally pre-warmed before a schedule's next slot. `config` must be validated.
pub fn decide(
    config: &PolicyConfig,
    input: &PolicyInput,
    now: DateTime<Utc>,
    memory: &mut PolicyMemory,
) -> Decision {
    let jobs_needing_node: u32 = input
        .runs
        .iter()
        .map(|r| r.queued.saturating_add(r.active))
        .sum();
    let active_jobs: u32 = input.runs.iter().map(|r| r.active).sum();
    let demand_nodes = config.clamp(config.nodes_for(jobs_needing_node));
    let active_floor = config.clamp(config.nodes_for(active_jobs));

    // Pre-warm: the largest upcoming run whose slot is within the lead time.
    let mut prewarm: Option<(u32, &UpcomingRun)> = None;
    let mut next_prewarm_start: Option<DateTime<Utc>> = None;
    if let Some(lead) = config
        .prewarm_lead
        .and_then(|l| TimeDelta::from_std(l).ok())
    {
        for up in &input.upcoming {
            let start = up.at - lead;
            if now >= start && now <= up.at {
                let nodes = config.clamp(config.nodes_for(up.jobs));
                if prewarm.is_none_or(|(n, _)| nodes > n) {
                    prewarm = Some((nodes, up));
                }
            } else if start > now {
                next_prewarm_start = Some(next_prewarm_start.map_or(start, |t| t.min(start)));
            }
        }
    }
    let (target, prewarm_wins) = match prewarm {
        Some((nodes, _)) if nodes > demand_nodes => (nodes, true),
        _ => (demand_nodes, false),
    };

    let current = input.current_nodes;
    let (desired, reason, mut recheck_at) = if target >= current {
        memory.last_needed_at = Some(now);
        let reason = match prewarm {
            Some((_, up)) if prewarm_wins && target > current => Reason::Prewarm {
                schedule: up.schedule.clone(),
                at: up.at,
            },
            _ if target > current => Reason::ScaleUp,
            _ => Reason::Steady,
        };
        (target, reason, None)
    } else {
        // The delay starts at the first observation if we never saw the pool needed (restart).
        let since = *memory.last_needed_at.get_or_insert(now);
        let delay = TimeDelta::from_std(config.scale_down_delay).unwrap_or(TimeDelta::MAX);
        let until = since
            .checked_add_signed(delay)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        if now >= until {
            (target.max(active_floor), Reason::ScaleDown, None)
        } else {
            (current, Reason::KeepWarm { until }, Some(until))
        }
    };
    if let Some(start) = next_prewarm_start {
        recheck_at = Some(recheck_at.map_or(start, |t| t.min(start)));
    }
    Decision {
        desired,
        jobs_needing_node,
        active_jobs,
        reason,
        recheck_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn cfg() -> PolicyConfig {
        PolicyConfig {
            min_nodes: 0,
            max_nodes: 5,
            jobs_per_node: 4,
            scale_down_delay: Duration::from_secs(300),
            prewarm_lead: None,
        }
    }

    fn run(name: &str, queued: u32, active: u32) -> RunDemand {
        RunDemand {
            run: name.into(),
            queued,
            active,
        }
    }

    fn input(runs: Vec<RunDemand>, current: u32) -> PolicyInput {
        PolicyInput {
            runs,
            current_nodes: current,
            upcoming: vec![],
        }
    }

    #[test]
    fn desired_nodes_is_the_ceiling_of_jobs_over_jobs_per_node() {
        let mut m = PolicyMemory::default();
        let d = decide(&cfg(), &input(vec![run("a", 5, 4)], 0), t(0), &mut m);
        assert_eq!(d.desired, 3);
        assert_eq!(d.reason, Reason::ScaleUp);
        assert_eq!(d.jobs_needing_node, 9);
    }

    #[test]
    fn desired_nodes_never_exceed_max_or_fall_below_min() {
        let mut c = cfg();
        c.min_nodes = 1;
        let mut m = PolicyMemory::default();
        assert_eq!(
            decide(&c, &input(vec![run("a", 100, 0)], 0), t(0), &mut m).desired,
            5
        );
        let mut m = PolicyMemory::default();
        let d = decide(&c, &input(vec![], 0), t(0), &mut m);
        assert_eq!(d.desired, 1);
        assert_eq!(d.reason, Reason::ScaleUp);
    }

    #[test]
    fn scale_up_happens_at_once_even_during_keep_warm() {
        let mut m = PolicyMemory::default();
        decide(&cfg(), &input(vec![run("a", 0, 8)], 2), t(0), &mut m);
        let d = decide(&cfg(), &input(vec![run("a", 0, 1)], 2), t(10), &mut m);
        assert!(matches!(d.reason, Reason::KeepWarm { .. }));
        let d = decide(&cfg(), &input(vec![run("a", 12, 0)], 2), t(20), &mut m);
        assert_eq!((d.desired, d.reason), (3, Reason::ScaleUp));
    }

    #[test]
    fn scale_down_waits_for_the_delay_after_demand_drops() {
        let mut m = PolicyMemory::default();
        decide(&cfg(), &input(vec![run("a", 0, 8)], 2), t(0), &mut m);
        let d = decide(&cfg(), &input(vec![], 2), t(1), &mut m);
        assert_eq!(d.desired, 2);
        assert_eq!(d.reason, Reason::KeepWarm { until: t(300) });
        assert_eq!(d.recheck_at, Some(t(300)));
        let d = decide(&cfg(), &input(vec![], 2), t(299), &mut m);
        assert_eq!(d.desired, 2);
        let d = decide(&cfg(), &input(vec![], 2), t(300), &mut m);
        assert_eq!((d.desired, d.reason), (0, Reason::ScaleDown));
    }

    #[test]
    fn a_zero_delay_scales_down_immediately() {
        let mut c = cfg();
        c.scale_down_delay = Duration::ZERO;
        let mut m = PolicyMemory::default();
        decide(&c, &input(vec![run("a", 0, 8)], 2), t(0), &mut m);
        let d = decide(&c, &input(vec![], 2), t(1), &mut m);
        assert_eq!((d.desired, d.reason), (0, Reason::ScaleDown));
    }

    #[test]
    fn scale_down_never_goes_below_what_active_jobs_need() {
        let mut m = PolicyMemory::default();
        decide(&cfg(), &input(vec![run("a", 12, 8)], 5), t(0), &mut m);
        let d = decide(&cfg(), &input(vec![run("a", 0, 5)], 5), t(400), &mut m);
        assert_eq!((d.desired, d.reason), (2, Reason::ScaleDown));
        assert_eq!(d.active_jobs, 5);
    }

    #[test]
    fn a_restarted_operator_starts_the_delay_at_its_first_look() {
        let mut m = PolicyMemory::default();
        let d = decide(&cfg(), &input(vec![], 3), t(0), &mut m);
        assert_eq!(d.reason, Reason::KeepWarm { until: t(300) });
        assert_eq!(decide(&cfg(), &input(vec![], 3), t(300), &mut m).desired, 0);
    }

    #[test]
    fn two_overlapping_runs_add_up_and_the_pool_waits_for_the_second() {
        let mut m = PolicyMemory::default();
        let d = decide(
            &cfg(),
            &input(vec![run("a", 2, 4), run("b", 0, 4)], 0),
            t(0),
            &mut m,
        );
        assert_eq!(d.desired, 3);
        // Run a finishes; b still holds a node, so 2 idle nodes wait for the delay, then go.
        let d = decide(&cfg(), &input(vec![run("b", 0, 4)], 3), t(60), &mut m);
        assert_eq!(
            (d.desired, d.reason),
            (3, Reason::KeepWarm { until: t(300) })
        );
        let d = decide(&cfg(), &input(vec![run("b", 0, 4)], 3), t(300), &mut m);
        assert_eq!((d.desired, d.reason), (1, Reason::ScaleDown));
    }

    #[test]
    fn prewarm_grows_the_pool_before_the_slot_sized_from_the_next_run() {
        let mut c = cfg();
        c.prewarm_lead = Some(Duration::from_secs(120));
        let up = UpcomingRun {
            schedule: "ns/hourly".into(),
            at: t(1000),
            jobs: 10,
        };
        let mut i = input(vec![], 0);
        i.upcoming = vec![up];
        let mut m = PolicyMemory::default();
        let d = decide(&c, &i, t(0), &mut m);
        assert_eq!((d.desired, d.reason.code()), (0, "Steady"));
        assert_eq!(d.recheck_at, Some(t(880)));
        let d = decide(&c, &i, t(880), &mut m);
        assert_eq!(d.desired, 3);
        assert_eq!(
            d.reason,
            Reason::Prewarm {
                schedule: "ns/hourly".into(),
                at: t(1000)
            }
        );
    }

    #[test]
    fn prewarm_is_off_without_a_lead_time() {
        let mut i = input(vec![], 0);
        i.upcoming = vec![UpcomingRun {
            schedule: "s".into(),
            at: t(10),
            jobs: 10,
        }];
        let mut m = PolicyMemory::default();
        assert_eq!(decide(&cfg(), &i, t(5), &mut m).desired, 0);
    }

    #[test]
    fn invalid_configs_are_refused() {
        let mut c = cfg();
        c.jobs_per_node = 0;
        assert_eq!(c.validate(), Err(PolicyError::ZeroJobsPerNode));
        let mut c = cfg();
        c.min_nodes = 6;
        assert_eq!(
            c.validate(),
            Err(PolicyError::MinAboveMax { min: 6, max: 5 })
        );
        assert_eq!(cfg().validate(), Ok(()));
    }

    #[test]
    fn the_decision_reads_as_a_sentence() {
        let mut m = PolicyMemory::default();
        let d = decide(&cfg(), &input(vec![run("a", 1, 0)], 0), t(0), &mut m);
        assert_eq!(
            d.to_string(),
            "desired 1 nodes (ScaleUp; 1 jobs need a node, 0 active)"
        );
    }
}
