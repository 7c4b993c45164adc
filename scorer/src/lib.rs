//! fleetscore's scorer: reads sensor readings, loads one-class SVM models (scikit-learn pickles or
//! native files), scores them exactly as scikit-learn does, and writes per-sensor predictions and
//! log records to local files or Azure Blob storage. No Kubernetes dependency: this library runs
//! inside each scoring Job's container and in the operator's local executor alike.

pub mod data;
pub mod fleet;
pub mod kernel;
pub mod model;
pub mod output;
pub mod report;
pub mod sensor;
pub mod storage;
