//! Azure Resource Manager client for one AKS agent pool: read it, set `properties.count`, and
//! follow the long-running operation (Azure-AsyncOperation or Location) until it settles.
//! Transient answers (409 operation in progress, 429, 5xx, one 401 with a stale token) are
//! retried; the rest come back as [`ArmError`] for the controller to report.

use super::auth::{AuthError, TokenProvider};
use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::Value;
use std::time::Duration;
use tokio::time::Instant;

/// The pinned, stable AKS REST API version.
pub const API_VERSION: &str = "2025-08-01";
/// Public-cloud ARM endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://management.azure.com";

/// An ARM call failed in a way retrying did not fix.
#[derive(Debug, thiserror::Error)]
pub enum ArmError {
    /// No token.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Network-level failure.
    #[error("ARM {method} {url}: {source}")]
    Http {
        /// Method.
        method: String,
        /// URL.
        url: String,
        /// Error.
        #[source]
        source: reqwest::Error,
    },
    /// 401 even with a fresh token.
    #[error("ARM {url}: 401 Unauthorized with a fresh token: {message}")]
    Unauthorized {
        /// URL.
        url: String,
        /// ARM's error message.
        message: String,
    },
    /// 403: the identity lacks a role on the cluster.
    #[error(
        "ARM {url}: 403 Forbidden (the identity needs Microsoft.ContainerService/managedClusters/agentPools/write, e.g. the Azure Kubernetes Service Contributor role): {message}"
    )]
    Forbidden {
        /// URL.
        url: String,
        /// ARM's error message.
        message: String,
    },
    /// 404: the pool (or cluster, resource group, subscription) does not exist.
    #[error("ARM {url}: agent pool not found: {message}")]
    NotFound {
        /// URL.
        url: String,
        /// ARM's error message.
        message: String,
    },
    /// Retries ran out on a transient answer (409, 429, 5xx).
    #[error("ARM {url}: still {status} after {attempts} attempts: {message}")]
    GaveUp {
        /// URL.
        url: String,
        /// Last HTTP status.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// ARM's error message.
        message: String,
    },
    /// Any other error status.
    #[error("ARM {url}: {status}: {message}")]
    Status {
        /// URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// ARM's error message.
        message: String,
    },
    /// The long-running operation ended Failed or Canceled.
    #[error("ARM operation for {url} ended {status}: {message}")]
    OperationFailed {
        /// The pool URL.
        url: String,
        /// Failed or Canceled.
        status: String,
        /// ARM's error message.
        message: String,
    },
    /// The long-running operation did not settle in time.
    #[error("ARM operation for {url} did not settle within {seconds}s")]
    OperationTimeout {
        /// The pool URL.
        url: String,
        /// The limit.
        seconds: u64,
    },
    /// A body that is not the documented shape.
    #[error("ARM {url}: unexpected answer: {reason}")]
    BadAnswer {
        /// URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The pool has the cluster autoscaler on: we never scale it.
    #[error(
        "agent pool {pool} has the cluster autoscaler enabled; fleetscore leaves its size to AKS"
    )]
    AutoscalerEnabled {
        /// Pool name.
        pool: String,
    },
}

impl ArmError {
    /// A PascalCase code for conditions and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ArmError::Auth(_) => "AuthFailed",
            ArmError::Http { .. } => "Unreachable",
            ArmError::Unauthorized { .. } => "Unauthorized",
            ArmError::Forbidden { .. } => "Forbidden",
            ArmError::NotFound { .. } => "PoolNotFound",
            ArmError::GaveUp { .. } => "RetriesExhausted",
            ArmError::Status { .. } => "ArmError",
            ArmError::OperationFailed { .. } => "OperationFailed",
            ArmError::OperationTimeout { .. } => "OperationTimeout",
            ArmError::BadAnswer { .. } => "BadAnswer",
            ArmError::AutoscalerEnabled { .. } => "ClusterAutoscalerEnabled",
        }
    }
}

/// Which agent pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPoolRef {
    /// Subscription id.
    pub subscription: String,
    /// Resource group.
    pub resource_group: String,
    /// Managed cluster name.
    pub cluster: String,
    /// Agent pool name.
    pub pool: String,
}

impl AgentPoolRef {
    fn path(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.ContainerService/managedClusters/{}/agentPools/{}",
            self.subscription, self.resource_group, self.cluster, self.pool
        )
    }
}

/// Retry and polling limits.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request for transient answers.
    pub max_attempts: u32,
    /// First backoff when the server sends no Retry-After.
    pub base_delay: Duration,
    /// Largest wait between attempts or polls.
    pub max_delay: Duration,
    /// Give up on a long-running operation after this long.
    pub operation_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(60),
            operation_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// The agent pool fields the scaler uses, plus the full resource for the PUT.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentPool {
    /// `properties.count`.
    pub count: u32,
    /// `properties.enableAutoScaling`.
    pub enable_auto_scaling: bool,
    /// `properties.provisioningState` (Succeeded, Updating, Scaling, Failed…).
    pub provisioning_state: Option<String>,
    /// `properties.powerState.code` (Running, Stopped).
    pub power_state: Option<String>,
    /// The resource as ARM returned it.
    pub raw: Value,
}

impl AgentPool {
    fn from_value(raw: Value, url: &str) -> Result<Self, ArmError> {
        let props = raw.get("properties").ok_or_else(|| ArmError::BadAnswer {
            url: url.into(),
            reason: "no `properties`".into(),
        })?;
        let count = props
            .get("count")
            .and_then(Value::as_u64)
            .and_then(|c| u32::try_from(c).ok())
            .ok_or_else(|| ArmError::BadAnswer {
                url: url.into(),
                reason: "no integer `properties.count`".into(),
            })?;
        let s = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
        Ok(Self {
            count,
            enable_auto_scaling: props
                .get("enableAutoScaling")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            provisioning_state: s(props.get("provisioningState")),
            power_state: s(props.get("powerState").and_then(|p| p.get("code"))),
            raw,
        })
    }

    /// The PUT body: what GET returned with `count` changed and read-only fields dropped.
    fn put_body(&self, count: u32) -> Value {
        let mut body = self.raw.clone();
        if let Some(obj) = body.as_object_mut() {
            for k in ["id", "name", "type", "etag"] {
                obj.remove(k);
            }
        }
        if let Some(props) = body.get_mut("properties").and_then(Value::as_object_mut) {
            for k in [
                "provisioningState",
                "nodeImageVersion",
                "currentOrchestratorVersion",
                "eTag",
            ] {
                props.remove(k);
            }
            props.insert("count".into(), Value::from(count));
        }
        body
    }

    fn etag(&self) -> Option<&str> {
        self.raw
            .get("etag")
            .or_else(|| self.raw.get("properties").and_then(|p| p.get("eTag")))
            .and_then(Value::as_str)
    }
}

/// An answer worth keeping: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// The ARM client for agent pools.
#[derive(Debug)]
pub struct ArmClient {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    api_version: String,
    tokens: TokenProvider,
    retry: RetryPolicy,
}

impl ArmClient {
    /// A client for `endpoint` (tests point it at a loopback server).
    pub fn new(
        http: reqwest::Client,
        endpoint: &str,
        tokens: TokenProvider,
        retry: RetryPolicy,
    ) -> Result<Self, ArmError> {
        let endpoint = reqwest::Url::parse(endpoint).map_err(|e| ArmError::BadAnswer {
            url: endpoint.into(),
            reason: format!("not a URL: {e}"),
        })?;
        Ok(Self {
            http,
            endpoint,
            api_version: API_VERSION.into(),
            tokens,
            retry,
        })
    }

    /// Overrides the pinned api-version (for a sovereign cloud lagging behind).
    pub fn with_api_version(mut self, v: impl Into<String>) -> Self {
        self.api_version = v.into();
        self
    }

    fn pool_url(&self, pool: &AgentPoolRef) -> Result<reqwest::Url, ArmError> {
        let mut url = self
            .endpoint
            .join(&pool.path())
            .map_err(|e| ArmError::BadAnswer {
                url: self.endpoint.to_string(),
                reason: e.to_string(),
            })?;
        url.query_pairs_mut()
            .append_pair("api-version", &self.api_version);
        Ok(url)
    }

    /// Reads the agent pool.
    pub async fn get_pool(&self, pool: &AgentPoolRef) -> Result<AgentPool, ArmError> {
        let url = self.pool_url(pool)?;
        let a = self.send(Method::GET, url.clone(), None, None).await?;
        AgentPool::from_value(a.body, url.as_str())
    }

    /// Sets the pool's node count and waits until ARM reports the operation settled. Refuses
    /// pools with the cluster autoscaler on. Returns the pool as read afterwards.
    pub async fn set_count(&self, pool: &AgentPoolRef, count: u32) -> Result<AgentPool, ArmError> {
        let url = self.pool_url(pool)?;
        let current = AgentPool::from_value(
            self.send(Method::GET, url.clone(), None, None).await?.body,
            url.as_str(),
        )?;
        if current.enable_auto_scaling {
            return Err(ArmError::AutoscalerEnabled {
                pool: pool.pool.clone(),
            });
        }
        if current.count == count && current.provisioning_state.as_deref() == Some("Succeeded") {
            return Ok(current);
        }
        let body = current.put_body(count);
        let a = self
            .send(Method::PUT, url.clone(), Some(&body), current.etag())
            .await?;
        self.wait_for_operation(&url, &a).await?;
        let after = self.send(Method::GET, url.clone(), None, None).await?;
        AgentPool::from_value(after.body, url.as_str())
    }

    /// Follows Azure-AsyncOperation (preferred) or Location until the operation settles.
    async fn wait_for_operation(&self, url: &reqwest::Url, put: &Answer) -> Result<(), ArmError> {
        let deadline = Instant::now() + self.retry.operation_timeout;
        let header = |name: &str| {
            put.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let timeout = || ArmError::OperationTimeout {
            url: url.to_string(),
            seconds: self.retry.operation_timeout.as_secs(),
        };
        if let Some(op) = header("azure-asyncoperation") {
            let op_url = self.same_origin(&op)?;
            let mut wait = retry_after(&put.headers).unwrap_or(self.retry.base_delay);
            loop {
                if Instant::now() + wait > deadline {
                    return Err(timeout());
                }
                tokio::time::sleep(wait).await;
                let a = self.send(Method::GET, op_url.clone(), None, None).await?;
                let status = a.body.get("status").and_then(Value::as_str).unwrap_or("");
                match status {
                    "Succeeded" => return Ok(()),
                    "Failed" | "Canceled" => {
                        return Err(ArmError::OperationFailed {
                            url: url.to_string(),
                            status: status.into(),
                            message: arm_message(&a.body),
                        });
                    }
                    _ => {}
                }
                wait = retry_after(&a.headers).unwrap_or(self.retry.base_delay);
            }
        } else if let Some(loc) = header("location") {
            let loc_url = self.same_origin(&loc)?;
            let mut wait = retry_after(&put.headers).unwrap_or(self.retry.base_delay);
            loop {
                if Instant::now() + wait > deadline {
                    return Err(timeout());
                }
                tokio::time::sleep(wait).await;
                let a = self.send(Method::GET, loc_url.clone(), None, None).await?;
                if a.status != StatusCode::ACCEPTED {
                    return Ok(());
                }
                wait = retry_after(&a.headers).unwrap_or(self.retry.base_delay);
            }
        } else {
            // No operation header: the body's provisioningState says whether we are done.
            let mut pool = AgentPool::from_value(put.body.clone(), url.as_str()).ok();
            let mut wait = self.retry.base_delay;
            loop {
                match pool.as_ref().and_then(|p| p.provisioning_state.as_deref()) {
                    None | Some("Succeeded") => return Ok(()),
                    Some(s @ ("Failed" | "Canceled")) => {
                        return Err(ArmError::OperationFailed {
                            url: url.to_string(),
                            status: s.into(),
                            message: "provisioningState".into(),
                        });
                    }
                    Some(_) => {}
                }
                if Instant::now() + wait > deadline {
                    return Err(timeout());
                }
                tokio::time::sleep(wait).await;
                let a = self.send(Method::GET, url.clone(), None, None).await?;
                wait = retry_after(&a.headers).unwrap_or(self.retry.base_delay);
                pool = Some(AgentPool::from_value(a.body, url.as_str())?);
            }
        }
    }

    /// Polling URLs come from the server; the token only goes back to the configured origin.
    fn same_origin(&self, u: &str) -> Result<reqwest::Url, ArmError> {
        let parsed = reqwest::Url::parse(u).map_err(|e| ArmError::BadAnswer {
            url: u.into(),
            reason: e.to_string(),
        })?;
        if parsed.origin() != self.endpoint.origin() {
            return Err(ArmError::BadAnswer {
                url: u.into(),
                reason: format!(
                    "operation URL is not on {}",
                    self.endpoint.origin().ascii_serialization()
                ),
            });
        }
        Ok(parsed)
    }

    /// One request with retries: 401 once with a fresh token; 409/429/5xx with Retry-After or
    /// exponential backoff; 412 (etag moved) is surfaced as a status for the caller to re-read.
    async fn send(
        &self,
        method: Method,
        url: reqwest::Url,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer, ArmError> {
        let mut attempt = 0u32;
        let mut refreshed_token = false;
        let mut backoff = self.retry.base_delay;
        loop {
            attempt += 1;
            let token = self.tokens.token().await?;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token);
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(tag) = if_match {
                req = req.header("If-Match", tag);
            }
            let http_err = |source| ArmError::Http {
                method: method.to_string(),
                url: url.to_string(),
                source,
            };
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e)
                    if attempt < self.retry.max_attempts && (e.is_connect() || e.is_timeout()) =>
                {
                    tracing::warn!(%url, error = %e, attempt, "ARM request failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry.max_delay);
                    continue;
                }
                Err(e) => return Err(http_err(e)),
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            let text = resp.text().await.map_err(http_err)?;
            let body_json: Value = if text.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            };
            if status.is_success() {
                return Ok(Answer {
                    status,
                    headers,
                    body: body_json,
                });
            }
            let message = arm_message(&body_json);
            let u = url.to_string();
            match status.as_u16() {
                401 if !refreshed_token => {
                    refreshed_token = true;
                    self.tokens.invalidate().await;
                    continue;
                }
                401 => return Err(ArmError::Unauthorized { url: u, message }),
                403 => return Err(ArmError::Forbidden { url: u, message }),
                404 => return Err(ArmError::NotFound { url: u, message }),
                409 | 429 | 500..=599 => {
                    if attempt >= self.retry.max_attempts {
                        return Err(ArmError::GaveUp {
                            url: u,
                            status: status.as_u16(),
                            attempts: attempt,
                            message,
                        });
                    }
                    let wait = retry_after(&headers)
                        .unwrap_or(backoff)
                        .min(self.retry.max_delay);
                    tracing::info!(%url, status = status.as_u16(), ?wait, attempt, %message, "ARM busy, retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(self.retry.max_delay);
                }
                _ => {
                    return Err(ArmError::Status {
                        url: u,
                        status: status.as_u16(),
                        message,
                    });
                }
            }
        }
    }
}

/// ARM's `{"error": {"code", "message"}}`, or the raw body.
fn arm_message(body: &Value) -> String {
    match body.get("error") {
        Some(e) => {
            let code = e.get("code").and_then(Value::as_str).unwrap_or("");
            let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
            format!("{code}: {msg}")
                .trim_matches([':', ' '])
                .to_string()
        }
        None => match body {
            Value::Null => String::new(),
            Value::String(s) => s.chars().take(500).collect(),
            other => other.to_string().chars().take(500).collect(),
        },
    }
}

/// `Retry-After` in seconds (ARM sends integers).
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_put_body_is_the_read_pool_with_a_new_count_and_no_read_only_fields() {
        let raw = json!({"id": "/x", "name": "pool", "etag": "e1", "properties": {
            "count": 1, "vmSize": "Standard_D4s_v5", "provisioningState": "Succeeded",
            "enableAutoScaling": false, "mode": "User"}});
        let p = AgentPool::from_value(raw, "u").unwrap();
        assert_eq!(p.etag(), Some("e1"));
        let body = p.put_body(7);
        assert_eq!(
            body,
            json!({"properties": {"count": 7, "vmSize": "Standard_D4s_v5",
                "enableAutoScaling": false, "mode": "User"}})
        );
    }

    #[test]
    fn arm_errors_read_as_code_and_message() {
        let b = json!({"error": {"code": "OperationNotAllowed", "message": "busy"}});
        assert_eq!(arm_message(&b), "OperationNotAllowed: busy");
    }

    #[test]
    fn pool_urls_carry_the_pinned_api_version() {
        let c = ArmClient::new(
            reqwest::Client::new(),
            "https://management.azure.com",
            TokenProvider::new(
                super::super::auth::Credential::Static("t".into()),
                reqwest::Client::new(),
            ),
            RetryPolicy::default(),
        )
        .unwrap();
        let r = AgentPoolRef {
            subscription: "s".into(),
            resource_group: "rg".into(),
            cluster: "c".into(),
            pool: "p".into(),
        };
        assert_eq!(
            c.pool_url(&r).unwrap().as_str(),
            "https://management.azure.com/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/c/agentPools/p?api-version=2025-08-01"
        );
    }
}
