//! fleetscore's operator: the `ScoringRun` and `ScoringSchedule` CRDs, their reconcilers, the
//! node-pool scaler, and the executors that turn a run into Kubernetes Jobs or score it locally.

pub mod cli;
pub mod context;
pub mod crd;
pub mod jobs;
pub mod local;
pub mod metrics;
pub mod queue;
pub mod run_controller;
pub mod scaler;
pub mod schedule;
