//! fleetscore's operator: the `ScoringRun` and `ScoringSchedule` CRDs, their reconcilers, the
//! node-pool scaler, and the executors that turn a run into Kubernetes Jobs or score it locally.

pub mod cli;
pub mod crd;
pub mod kit;
pub mod run;
pub mod scaler;
pub mod schedule;
