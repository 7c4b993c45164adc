//! What every reconcile of the ScoringRun controller shares.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::jobs::PodDefaults;
use crate::metrics::RunMetrics;

/// Field manager of everything the run controller writes (server-side apply).
pub const FIELD_MANAGER: &str = "fleetscore";

/// Settings of the run controller.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Namespace to watch (None: all).
    pub namespace: Option<String>,
    /// `ttlSecondsAfterFinished` set on a Job once its outcome is recorded (unless the run says).
    pub finished_job_ttl_seconds: i32,
    /// Re-check interval of an unfinished run when no watch event arrives.
    pub resync: Duration,
    /// Quiet time before a reconcile (kube-runtime's debounce). Zero by default: with hundreds of
    /// Jobs changing, any debounce keeps postponing the reconcile; without it, events arriving
    /// during a reconcile are merged into the next one anyway.
    pub debounce: Duration,
    /// Read the scorer's per-sensor log records from storage (with the operator's own
    /// credentials) to name failed sensors of packed Jobs and write `summary.json`.
    pub read_ledger: bool,
    /// Image, credentials, ServiceAccount and placement of scoring pods whose run sets none.
    pub pod_defaults: PodDefaults,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            finished_job_ttl_seconds: 0,
            resync: Duration::from_secs(30),
            debounce: Duration::ZERO,
            read_ledger: true,
            pod_defaults: PodDefaults::default(),
        }
    }
}

/// Shared state of the run controller.
#[derive(Clone)]
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// The one event recorder, shared by every reconcile.
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Arc<RunMetrics>,
    /// Settings.
    pub config: RunConfig,
    /// Set once the controller's watches have started (for /readyz).
    pub ready: Arc<AtomicBool>,
}

impl Context {
    /// A context with the given client, metrics and settings.
    pub fn new(client: Client, metrics: Arc<RunMetrics>, config: RunConfig) -> Self {
        let recorder = Recorder::new(client.clone(), Reporter::from(FIELD_MANAGER));
        Self {
            client,
            recorder,
            metrics,
            config,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }
}
