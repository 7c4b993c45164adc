//! `ScoringSchedule`: cron slots evaluated in a time zone, the controller that turns each slot into
//! exactly one `ScoringRun`, and the local runner behind `fleetscore run --local <schedule.yaml>`.

pub mod clock;
pub mod controller;
pub mod cron;
pub mod local;
pub mod metrics;
pub mod naming;
pub mod plan;
pub mod slots;
