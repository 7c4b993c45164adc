//! The ScoringRun controller, shaped like the schedule controller: `controller` does the IO
//! (observe → apply), `decide` is the pure middle, `plan` the queue, `jobs` the pure Job
//! builders, `naming` the children's names, `metrics` its Prometheus series, `local` the
//! embedded executor that scores a run on this machine.

pub mod context;
pub mod controller;
pub mod decide;
pub mod jobs;
pub mod local;
pub mod metrics;
pub mod naming;
pub mod plan;
