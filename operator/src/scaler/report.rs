//! The per-run node-pool report (`status.scaler` of a ScoringRun): nodes at start and peak,
//! node-minutes, time from run start to the first pod running, and the idle tail after the
//! run's last Job. Pure bookkeeping fed with observations; the controller writes the result.
//!
//! The pool is shared, so overlapping runs each count the whole pool's node-minutes while they
//! are active (the numbers answer "what did the pool cost while this run needed it").

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What `status.scaler` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodePoolReport {
    /// Pool name.
    pub pool: String,
    /// Scaler mode: aks, kwok or none.
    pub mode: String,
    /// Pool nodes when the scaler first saw the run.
    pub nodes_at_start: u32,
    /// Most pool nodes seen while the run was active or idling after it.
    pub nodes_peak: u32,
    /// Pool nodes × minutes from the run's start to the end of its idle tail.
    pub node_minutes: f64,
    /// Seconds from the run's start to its first pod running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_first_pod_running_seconds: Option<f64>,
    /// Seconds the pool stayed above its minimum after the run's last Job, with no other run
    /// needing it; set once the tail ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_tail_seconds: Option<f64>,
    /// The scaler's latest decision while the run is tracked, e.g. `ScaleUp`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Human-readable detail: the decision, or why the pool is not being scaled.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Whether the scaler is scaling the pool (`False` with autoscaler on, mode none, errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingCondition>,
}

/// A condition-like record of whether the scaler acts on the pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScalingCondition {
    /// `True` when the scaler manages the pool size.
    pub status: String,
    /// PascalCase reason, e.g. `ClusterAutoscalerEnabled`, `ModeNone`, `Forbidden`.
    pub reason: String,
    /// Detail.
    pub message: String,
}

/// Tracks one run between observations.
#[derive(Debug, Clone)]
pub struct RunTracker {
    start: DateTime<Utc>,
    last_sample: DateTime<Utc>,
    last_nodes: u32,
    node_seconds: f64,
    nodes_at_start: u32,
    nodes_peak: u32,
    first_pod_running: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    tail_end: Option<DateTime<Utc>>,
}

/// One observation of a run and the pool.
#[derive(Debug, Clone, Copy)]
pub struct Observation {
    /// When.
    pub now: DateTime<Utc>,
    /// Pool nodes now.
    pub nodes: u32,
    /// Earliest time any of the run's pods started running, if one has.
    pub first_pod_running: Option<DateTime<Utc>>,
    /// When the run's last Job finished, once the run is finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// The pool is at rest: at or below its minimum, or another run needs it.
    pub pool_released: bool,
}

impl RunTracker {
    /// Starts tracking a run that started at `start`, first seen with `nodes` pool nodes.
    pub fn new(start: DateTime<Utc>, seen_at: DateTime<Utc>, nodes: u32) -> Self {
        Self {
            start,
            last_sample: seen_at,
            last_nodes: nodes,
            node_seconds: 0.0,
            nodes_at_start: nodes,
            nodes_peak: nodes,
            first_pod_running: None,
            finished_at: None,
            tail_end: None,
        }
    }

    /// Folds in an observation; node-minutes stop growing once the idle tail ended.
    pub fn observe(&mut self, o: Observation) {
        if self.tail_end.is_some() {
            return;
        }
        let dt = (o.now - self.last_sample).num_milliseconds().max(0) as f64 / 1000.0;
        self.node_seconds += dt * f64::from(self.last_nodes);
        self.last_sample = o.now;
        self.last_nodes = o.nodes;
        self.nodes_peak = self.nodes_peak.max(o.nodes);
        if self.first_pod_running.is_none() {
            self.first_pod_running = o.first_pod_running;
        }
        if self.finished_at.is_none() {
            self.finished_at = o.finished_at;
        }
        if self.finished_at.is_some() && o.pool_released {
            self.tail_end = Some(o.now);
        }
    }

    /// True once the run finished and its idle tail ended: the report is final.
    pub fn is_final(&self) -> bool {
        self.tail_end.is_some()
    }

    /// The report's numbers (pool, mode and the decision fields are filled by the caller).
    pub fn report(&self) -> NodePoolReport {
        let secs = |a: DateTime<Utc>, b: DateTime<Utc>| {
            ((b - a).num_milliseconds().max(0) as f64 / 1000.0 * 10.0).round() / 10.0
        };
        NodePoolReport {
            nodes_at_start: self.nodes_at_start,
            nodes_peak: self.nodes_peak,
            node_minutes: (self.node_seconds / 60.0 * 100.0).round() / 100.0,
            time_to_first_pod_running_seconds: self.first_pod_running.map(|t| secs(self.start, t)),
            idle_tail_seconds: match (self.finished_at, self.tail_end) {
                (Some(f), Some(e)) => Some(secs(f, e)),
                _ => None,
            },
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    fn obs(now: i64, nodes: u32) -> Observation {
        Observation {
            now: t(now),
            nodes,
            first_pod_running: None,
            finished_at: None,
            pool_released: false,
        }
    }

    #[test]
    fn a_run_that_scales_zero_to_two_and_back_reports_its_nodes_and_tail() {
        let mut r = RunTracker::new(t(0), t(1), 0);
        r.observe(obs(5, 2));
        r.observe(Observation {
            first_pod_running: Some(t(8)),
            ..obs(10, 2)
        });
        r.observe(obs(65, 2));
        // Last Job done at 65; the pool stays warm until 125, then reaches 0.
        r.observe(Observation {
            finished_at: Some(t(65)),
            ..obs(70, 2)
        });
        assert!(!r.is_final());
        r.observe(Observation {
            finished_at: Some(t(65)),
            pool_released: true,
            ..obs(125, 0)
        });
        assert!(r.is_final());
        let rep = r.report();
        assert_eq!(rep.nodes_at_start, 0);
        assert_eq!(rep.nodes_peak, 2);
        assert_eq!(rep.time_to_first_pod_running_seconds, Some(8.0));
        assert_eq!(rep.idle_tail_seconds, Some(60.0));
        // 2 nodes from 5 s to 125 s = 240 node-seconds = 4 node-minutes.
        assert_eq!(rep.node_minutes, 4.0);
        r.observe(obs(500, 7));
        assert_eq!(r.report(), rep);
    }

    #[test]
    fn the_report_serialises_with_camel_case_names() {
        let v = serde_json::to_value(RunTracker::new(t(0), t(0), 3).report()).unwrap();
        assert_eq!(v["nodesAtStart"], 3);
        assert_eq!(v["nodeMinutes"], 0.0);
        assert!(v.get("idleTailSeconds").is_none());
    }
}
