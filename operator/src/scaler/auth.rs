//! Entra ID tokens for Azure Resource Manager: workload identity (a federated token file
//! exchanged at the token endpoint) or managed identity (IMDS). Tokens are cached until shortly
//! before they expire.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;
use std::path::PathBuf;
use tokio::sync::Mutex;

/// The ARM audience.
pub const ARM_SCOPE: &str = "https://management.azure.com/.default";
/// The ARM resource, as IMDS names it.
pub const ARM_RESOURCE: &str = "https://management.azure.com/";
/// The IMDS token endpoint (reachable only on an Azure VM).
pub const IMDS_TOKEN_URL: &str = "http://169.254.169.254/metadata/identity/oauth2/token";
/// The public-cloud Entra authority.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com/";

/// Getting a token failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The federated token file could not be read.
    #[error("workload identity: cannot read federated token file {path}: {source}")]
    TokenFile {
        /// The file (AZURE_FEDERATED_TOKEN_FILE).
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The token endpoint could not be reached.
    #[error("{source_name}: token request to {url} failed: {source}")]
    Request {
        /// Which credential.
        source_name: &'static str,
        /// The endpoint.
        url: String,
        /// The HTTP error.
        #[source]
        source: reqwest::Error,
    },
    /// The token endpoint answered with an error.
    #[error("{source_name}: token endpoint {url} answered {status}: {body}")]
    Refused {
        /// Which credential.
        source_name: &'static str,
        /// The endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// Body (Entra's error description), shortened.
        body: String,
    },
    /// The answer was not a token.
    #[error("{source_name}: token endpoint {url} sent an unreadable answer: {reason}")]
    BadAnswer {
        /// Which credential.
        source_name: &'static str,
        /// The endpoint.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// Neither workload identity nor managed identity is configured.
    #[error(
        "no Azure credential: set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE (workload identity) or run where managed identity is available"
    )]
    NotConfigured,
}

/// Where tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// Workload identity: a Kubernetes-issued token exchanged for an Entra token.
    WorkloadIdentity {
        /// Authority host, e.g. `https://login.microsoftonline.com/` (AZURE_AUTHORITY_HOST).
        authority: String,
        /// Tenant id (AZURE_TENANT_ID).
        tenant_id: String,
        /// Application (client) id (AZURE_CLIENT_ID).
        client_id: String,
        /// The projected service-account token (AZURE_FEDERATED_TOKEN_FILE), re-read each time.
        token_file: PathBuf,
    },
    /// Managed identity through IMDS.
    ManagedIdentity {
        /// IMDS token URL (configurable so tests never reach 169.254.169.254).
        endpoint: String,
        /// User-assigned identity's client id, if any.
        client_id: Option<String>,
    },
    /// A fixed bearer token (for tests and `az account get-access-token` debugging).
    Static(String),
}

impl Credential {
    /// Workload identity if its three variables are set, managed identity otherwise.
    /// `imds_endpoint` overrides the IMDS URL.
    pub fn from_env(imds_endpoint: Option<String>) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match (
            var("AZURE_CLIENT_ID"),
            var("AZURE_TENANT_ID"),
            var("AZURE_FEDERATED_TOKEN_FILE"),
        ) {
            (Some(client_id), Some(tenant_id), Some(file)) => Credential::WorkloadIdentity {
                authority: var("AZURE_AUTHORITY_HOST").unwrap_or_else(|| DEFAULT_AUTHORITY.into()),
                tenant_id,
                client_id,
                token_file: file.into(),
            },
            (client_id, _, _) => Credential::ManagedIdentity {
                endpoint: imds_endpoint.unwrap_or_else(|| IMDS_TOKEN_URL.into()),
                client_id,
            },
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Credential::WorkloadIdentity { .. } => "workload identity",
            Credential::ManagedIdentity { .. } => "managed identity",
            Credential::Static(_) => "static token",
        }
    }
}

/// A token and when it stops being usable.
#[derive(Debug, Clone)]
struct Cached {
    token: String,
    refresh_at: DateTime<Utc>,
}

/// Hands out ARM bearer tokens, fetching a new one only when the cached one is near expiry.
#[derive(Debug)]
pub struct TokenProvider {
    credential: Credential,
    http: reqwest::Client,
    cache: Mutex<Option<Cached>>,
}

/// Entra and IMDS token answers (IMDS sends numbers as strings).
#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<NumOrString>,
    #[serde(default)]
    expires_on: Option<NumOrString>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum NumOrString {
    Num(i64),
    Str(String),
}

impl NumOrString {
    fn value(&self) -> Option<i64> {
        match self {
            NumOrString::Num(n) => Some(*n),
            NumOrString::Str(s) => s.trim().parse().ok(),
        }
    }
}

impl TokenProvider {
    /// A provider for `credential`, sending requests through `http`.
    pub fn new(credential: Credential, http: reqwest::Client) -> Self {
        Self {
            credential,
            http,
            cache: Mutex::new(None),
        }
    }

    /// Which credential this provider uses.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// A valid bearer token, from cache when possible.
    pub async fn token(&self) -> Result<String, AuthError> {
        let mut cache = self.cache.lock().await;
        if let Some(c) = cache.as_ref().filter(|c| Utc::now() < c.refresh_at) {
            return Ok(c.token.clone());
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *cache = Some(fresh);
        Ok(token)
    }

    /// Forgets the cached token (after ARM answered 401 with it).
    pub async fn invalidate(&self) {
        *self.cache.lock().await = None;
    }

    async fn fetch(&self) -> Result<Cached, AuthError> {
        let name = self.credential.name();
        let (url, request) = match &self.credential {
            Credential::Static(t) => {
                return Ok(Cached {
                    token: t.clone(),
                    refresh_at: DateTime::<Utc>::MAX_UTC,
                });
            }
            Credential::WorkloadIdentity {
                authority,
                tenant_id,
                client_id,
                token_file,
            } => {
                // Re-read every time: the kubelet rotates the projected token.
                let assertion = tokio::fs::read_to_string(token_file)
                    .await
                    .map_err(|source| AuthError::TokenFile {
                        path: token_file.clone(),
                        source,
                    })?;
                let url = format!(
                    "{}/{}/oauth2/v2.0/token",
                    authority.trim_end_matches('/'),
                    tenant_id
                );
                let form = [
                    ("client_id", client_id.as_str()),
                    ("scope", ARM_SCOPE),
                    ("grant_type", "client_credentials"),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion.trim()),
                ];
                let body = serde_urlencoded_form(&form);
                let req = self
                    .http
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body);
                (url, req)
            }
            Credential::ManagedIdentity {
                endpoint,
                client_id,
            } => {
                let mut query = vec![("api-version", "2018-02-01"), ("resource", ARM_RESOURCE)];
                if let Some(id) = client_id {
                    query.push(("client_id", id.as_str()));
                }
                let req = self
                    .http
                    .get(endpoint)
                    .query(&query)
                    .header("Metadata", "true");
                (endpoint.clone(), req)
            }
        };
        let started = Utc::now();
        let resp = request.send().await.map_err(|source| AuthError::Request {
            source_name: name,
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|source| AuthError::Request {
            source_name: name,
            url: url.clone(),
            source,
        })?;
        if !status.is_success() {
            return Err(AuthError::Refused {
                source_name: name,
                url,
                status: status.as_u16(),
                body: shorten(&text),
            });
        }
        let answer: TokenAnswer =
            serde_json::from_str(&text).map_err(|e| AuthError::BadAnswer {
                source_name: name,
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let expires_at = answer
            .expires_in
            .as_ref()
            .and_then(NumOrString::value)
            .map(|s| started + TimeDelta::seconds(s))
            .or_else(|| {
                answer
                    .expires_on
                    .as_ref()
                    .and_then(NumOrString::value)
                    .and_then(|t| DateTime::from_timestamp(t, 0))
            })
            .ok_or_else(|| AuthError::BadAnswer {
                source_name: name,
                url: url.clone(),
                reason: "no expires_in or expires_on".into(),
            })?;
        Ok(Cached {
            token: answer.access_token,
            refresh_at: refresh_time(started, expires_at),
        })
    }
}

/// Refresh 5 minutes before expiry, or at half the lifetime for short-lived tokens.
fn refresh_time(now: DateTime<Utc>, expires_at: DateTime<Utc>) -> DateTime<Utc> {
    let life = expires_at - now;
    let margin = TimeDelta::minutes(5).min(life / 2);
    expires_at - margin
}

fn shorten(s: &str) -> String {
    let s = s.trim();
    match s.char_indices().nth(500) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// `application/x-www-form-urlencoded` without pulling in another crate.
fn serde_urlencoded_form(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                    out.push(b as char)
                }
                b' ' => out.push('+'),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_five_minutes_before_expiry_or_at_half_life() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(
            refresh_time(now, now + TimeDelta::hours(1)),
            now + TimeDelta::minutes(55)
        );
        assert_eq!(
            refresh_time(now, now + TimeDelta::minutes(2)),
            now + TimeDelta::minutes(1)
        );
    }

    #[test]
    fn form_encoding_escapes_reserved_characters() {
        assert_eq!(
            serde_urlencoded_form(&[("scope", "https://x/.default"), ("a b", "c&d")]),
            "scope=https%3A%2F%2Fx%2F.default&a+b=c%26d"
        );
    }

    #[test]
    fn imds_numbers_may_come_as_strings() {
        let a: TokenAnswer =
            serde_json::from_str(r#"{"access_token":"t","expires_in":"3599"}"#).unwrap();
        assert_eq!(a.expires_in.unwrap().value(), Some(3599));
        let a: TokenAnswer =
            serde_json::from_str(r#"{"access_token":"t","expires_in":3599}"#).unwrap();
        assert_eq!(a.expires_in.unwrap().value(), Some(3599));
    }
}
