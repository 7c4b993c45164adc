//! The node-pool scaler: grows a pool of nodes with the scoring Jobs' demand and shrinks it
//! after a keep-warm delay. Backends: an AKS agent pool through ARM (`aks`), fake kwok Nodes
//! (`kwok`, for local runs and tests), or `none` (the AKS cluster autoscaler decides; the
//! scaler only reports).
//!
//! `operator` wiring: flatten [`ScalerArgs`] into the command, then
//! `tokio::spawn(scaler::controller::run(client, args.config()?, metrics))`.

pub mod aks;
pub mod auth;
pub mod controller;
pub mod kwok;
pub mod metrics;
pub mod policy;
pub mod report;

use std::time::Duration;

pub use controller::{Mode, ScalerConfig, ScalerError};
pub use metrics::ScalerMetrics;

/// A flag value that is not a duration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a duration: {0:?} (use e.g. 90s, 10m, 1h or plain seconds)")]
pub struct DurationError(String);

/// Parses `90`, `90s`, `10m`, `1h` or `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(s.to_string());
    let t = s.trim();
    if t.is_empty() {
        return Err(err());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| err())?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(err()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
    }
    if !num.is_empty() {
        return Err(err());
    }
    Ok(Duration::from_secs(total))
}

/// Command-line flags (and environment variables) of the scaler, for `fleetscore operator`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScalerArgs {
    /// none: report only (AKS cluster autoscaler decides); kwok: fake Nodes; aks: an AKS agent pool.
    #[arg(
        long = "scaler-mode",
        env = "FLEETSCORE_SCALER_MODE",
        value_enum,
        default_value = "none"
    )]
    pub mode: Mode,
    /// Node pool name: the `fleetscore.dev/pool` label of kwok nodes, or the AKS agent pool.
    #[arg(
        long = "scaler-pool",
        env = "FLEETSCORE_SCALER_POOL",
        default_value = "scoring"
    )]
    pub pool: String,
    /// Fewest nodes the pool keeps.
    #[arg(
        long = "scaler-min-nodes",
        env = "FLEETSCORE_SCALER_MIN_NODES",
        default_value_t = 0
    )]
    pub min_nodes: u32,
    /// Most nodes the pool gets.
    #[arg(
        long = "scaler-max-nodes",
        env = "FLEETSCORE_SCALER_MAX_NODES",
        default_value_t = 10
    )]
    pub max_nodes: u32,
    /// Scoring Jobs one node runs at once.
    #[arg(
        long = "scaler-jobs-per-node",
        env = "FLEETSCORE_SCALER_JOBS_PER_NODE",
        default_value_t = 4
    )]
    pub jobs_per_node: u32,
    /// Keep-warm: how long the pool keeps its size after demand drops (e.g. 10m).
    #[arg(long = "scaler-scale-down-delay", env = "FLEETSCORE_SCALER_SCALE_DOWN_DELAY", default_value = "10m", value_parser = parse_duration)]
    pub scale_down_delay: Duration,
    /// Grow the pool this long before a schedule's next slot (off when unset).
    #[arg(long = "scaler-prewarm-lead", env = "FLEETSCORE_SCALER_PREWARM_LEAD", value_parser = parse_duration)]
    pub prewarm_lead: Option<Duration>,
    /// Re-evaluate at least this often.
    #[arg(long = "scaler-resync", env = "FLEETSCORE_SCALER_RESYNC", default_value = "15s", value_parser = parse_duration)]
    pub resync: Duration,
    /// kwok node CPU capacity.
    #[arg(long = "kwok-node-cpu", default_value = "4")]
    pub kwok_cpu: String,
    /// kwok node memory capacity.
    #[arg(long = "kwok-node-memory", default_value = "16Gi")]
    pub kwok_memory: String,
    /// kwok node pod capacity.
    #[arg(long = "kwok-node-pods", default_value_t = 110)]
    pub kwok_pods: u32,
    /// NoSchedule taint `key=value` on kwok nodes (scoring pods must tolerate it).
    #[arg(long = "kwok-node-taint")]
    pub kwok_taint: Option<String>,
    /// AKS subscription id.
    #[arg(long = "aks-subscription", env = "AZURE_SUBSCRIPTION_ID")]
    pub aks_subscription: Option<String>,
    /// AKS resource group.
    #[arg(long = "aks-resource-group", env = "FLEETSCORE_AKS_RESOURCE_GROUP")]
    pub aks_resource_group: Option<String>,
    /// AKS managed cluster name.
    #[arg(long = "aks-cluster", env = "FLEETSCORE_AKS_CLUSTER")]
    pub aks_cluster: Option<String>,
    /// ARM endpoint.
    #[arg(long = "arm-endpoint", env = "FLEETSCORE_ARM_ENDPOINT", default_value = aks::DEFAULT_ENDPOINT)]
    pub arm_endpoint: String,
    /// IMDS token URL for managed identity (when workload identity variables are absent).
    #[arg(long = "imds-endpoint", env = "FLEETSCORE_IMDS_ENDPOINT")]
    pub imds_endpoint: Option<String>,
}

impl ScalerArgs {
    /// The scaler configuration these flags describe (credentials from the environment).
    pub fn config(&self, namespace: Option<String>) -> Result<ScalerConfig, ScalerError> {
        let policy = policy::PolicyConfig {
            min_nodes: self.min_nodes,
            max_nodes: self.max_nodes,
            jobs_per_node: self.jobs_per_node,
            scale_down_delay: self.scale_down_delay,
            prewarm_lead: self.prewarm_lead,
        };
        policy.validate()?;
        let aks = match self.mode {
            Mode::Aks => {
                let (Some(subscription), Some(resource_group), Some(cluster)) = (
                    &self.aks_subscription,
                    &self.aks_resource_group,
                    &self.aks_cluster,
                ) else {
                    return Err(ScalerError::MissingAksSettings);
                };
                Some(controller::AksSettings {
                    pool: aks::AgentPoolRef {
                        subscription: subscription.clone(),
                        resource_group: resource_group.clone(),
                        cluster: cluster.clone(),
                        pool: self.pool.clone(),
                    },
                    endpoint: self.arm_endpoint.clone(),
                    credential: auth::Credential::from_env(self.imds_endpoint.clone()),
                    retry: aks::RetryPolicy::default(),
                    read_interval: Duration::from_secs(60),
                    error_backoff: Duration::from_secs(60),
                })
            }
            _ => None,
        };
        Ok(ScalerConfig {
            mode: self.mode,
            pool: self.pool.clone(),
            policy,
            namespace,
            resync: self.resync,
            kwok: kwok::NodeTemplate {
                cpu: self.kwok_cpu.clone(),
                memory: self.kwok_memory.clone(),
                pods: self.kwok_pods,
                taint: self.kwok_taint.as_ref().map(|t| match t.split_once('=') {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (t.clone(), String::new()),
                }),
            },
            aks,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("").is_err());
    }
}
