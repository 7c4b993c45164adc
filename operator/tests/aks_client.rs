//! The AKS agent-pool client against a loopback fake of Azure Resource Manager.
//!
//! This is the only fake in fleetscore's test suite: ARM has no emulator, so
//! `support::fake_arm` follows ARM's documented contract (api-version, bearer tokens, PUT with
//! Azure-AsyncOperation or Location polling, 409 operation in progress, 429 with Retry-After,
//! 401/403/404) and records every request so the tests can check what the client sent.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use fleetscore_operator::scaler::aks::{AgentPoolRef, ArmClient, ArmError, RetryPolicy};
use fleetscore_operator::scaler::auth::{Credential, TokenProvider};
use serde_json::Value;
use std::time::{Duration, Instant};
use support::fake_arm::{FakeArm, Operation, POOL_PATH, Scripted};

fn pool() -> AgentPoolRef {
    AgentPoolRef {
        subscription: "sub-1".into(),
        resource_group: "rg-1".into(),
        cluster: "aks-1".into(),
        pool: "scoring".into(),
    }
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_secs(5),
        operation_timeout: Duration::from_secs(20),
    }
}

/// A client authenticating by workload identity against the fake's token endpoint.
fn wi_client(fake: &FakeArm, dir: &tempfile::TempDir) -> ArmClient {
    let file = dir.path().join("token");
    std::fs::write(&file, "federated-jwt-from-kubelet\n").unwrap();
    let cred = Credential::WorkloadIdentity {
        authority: format!("{}/", fake.base),
        tenant_id: "tenant-1".into(),
        client_id: "client-1".into(),
        token_file: file,
    };
    let http = reqwest::Client::new();
    ArmClient::new(
        http.clone(),
        &fake.base,
        TokenProvider::new(cred, http),
        fast_retry(),
    )
    .unwrap()
}

/// A client authenticating by managed identity against the fake's IMDS endpoint.
fn mi_client(fake: &FakeArm) -> ArmClient {
    let cred = Credential::ManagedIdentity {
        endpoint: format!("{}/metadata/identity/oauth2/token", fake.base),
        client_id: None,
    };
    let http = reqwest::Client::new();
    ArmClient::new(
        http.clone(),
        &fake.base,
        TokenProvider::new(cred, http),
        fast_retry(),
    )
    .unwrap()
}

#[tokio::test]
async fn reading_a_pool_sends_the_pinned_api_version_and_a_workload_identity_token() {
    let fake = FakeArm::start(3, false).await;
    let dir = tempfile::tempdir().unwrap();
    let client = wi_client(&fake, &dir);
    let p = client.get_pool(&pool()).await.unwrap();
    assert_eq!(p.count, 3);
    assert!(!p.enable_auto_scaling);
    assert_eq!(p.provisioning_state.as_deref(), Some("Succeeded"));
    assert_eq!(p.power_state.as_deref(), Some("Running"));

    let token_req = &fake.seen_to("POST", "/tenant-1/oauth2/v2.0/token")[0];
    for part in [
        "client_assertion=federated-jwt-from-kubelet",
        "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer",
        "client_id=client-1",
        "grant_type=client_credentials",
        "scope=https%3A%2F%2Fmanagement.azure.com%2F.default",
    ] {
        assert!(
            token_req.body.split('&').any(|kv| kv == part),
            "{part} missing in {}",
            token_req.body
        );
    }
    let get = &fake.seen_to("GET", POOL_PATH)[0];
    assert_eq!(get.query, "api-version=2025-08-01");
    assert_eq!(get.authorization.as_deref(), Some("Bearer tok-1"));
}

#[tokio::test]
async fn tokens_are_cached_between_calls() {
    let fake = FakeArm::start(1, false).await;
    let client = mi_client(&fake);
    client.get_pool(&pool()).await.unwrap();
    client.get_pool(&pool()).await.unwrap();
    assert_eq!(fake.tokens_issued(), 1);
    let imds = &fake.seen_to("GET", "/metadata/identity/oauth2/token")[0];
    assert_eq!(imds.metadata.as_deref(), Some("true"));
    assert!(
        imds.query.contains("api-version=2018-02-01"),
        "{}",
        imds.query
    );
    assert!(
        imds.query
            .contains("resource=https%3A%2F%2Fmanagement.azure.com%2F"),
        "{}",
        imds.query
    );
}

#[tokio::test]
async fn setting_the_count_puts_the_pool_back_and_polls_the_async_operation_until_it_succeeds() {
    let fake = FakeArm::start(0, false).await;
    fake.operation(Operation::Async {
        in_progress: 2,
        end: "Succeeded",
    });
    let dir = tempfile::tempdir().unwrap();
    let after = wi_client(&fake, &dir).set_count(&pool(), 5).await.unwrap();
    assert_eq!(after.count, 5);
    assert_eq!(after.provisioning_state.as_deref(), Some("Succeeded"));
    assert_eq!(fake.count(), 5);

    let puts = fake.seen_to("PUT", POOL_PATH);
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].query, "api-version=2025-08-01");
    let body: Value = serde_json::from_str(&puts[0].body).unwrap();
    assert_eq!(body["properties"]["count"], 5);
    assert_eq!(
        body["properties"]["vmSize"], "Standard_D4s_v5",
        "the PUT carries the pool's other properties"
    );
    assert!(
        body["properties"].get("provisioningState").is_none(),
        "read-only fields are not sent"
    );
    assert_eq!(
        puts[0].if_match.as_deref(),
        Some("etag-1"),
        "the PUT is conditional on the read"
    );
    // Two InProgress answers, then Succeeded: three polls, each with the token.
    let polls = fake.seen_to("GET", "/operations/");
    assert_eq!(polls.len(), 3);
    assert!(
        polls
            .iter()
            .all(|p| p.authorization.as_deref() == Some("Bearer tok-1"))
    );
}

#[tokio::test]
async fn a_location_header_is_polled_until_the_operation_is_done() {
    let fake = FakeArm::start(2, false).await;
    fake.operation(Operation::Location { in_progress: 2 });
    let after = mi_client(&fake).set_count(&pool(), 0).await.unwrap();
    assert_eq!(after.count, 0);
    assert_eq!(fake.seen_to("GET", "/locations/").len(), 3);
}

#[tokio::test]
async fn a_409_operation_in_progress_is_retried() {
    let fake = FakeArm::start(1, false).await;
    fake.script_put(Scripted::Error {
        status: 409,
        code: "OperationNotAllowed",
        retry_after: None,
    });
    let after = mi_client(&fake).set_count(&pool(), 4).await.unwrap();
    assert_eq!(after.count, 4);
    assert_eq!(fake.seen_to("PUT", POOL_PATH).len(), 2);
}

#[tokio::test]
async fn a_429_waits_for_retry_after_before_retrying() {
    let fake = FakeArm::start(1, false).await;
    fake.script_get(Scripted::Error {
        status: 429,
        code: "TooManyRequests",
        retry_after: Some(1),
    });
    let started = Instant::now();
    let p = mi_client(&fake).get_pool(&pool()).await.unwrap();
    assert_eq!(p.count, 1);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried after {:?}",
        started.elapsed()
    );
    assert_eq!(fake.seen_to("GET", POOL_PATH).len(), 2);
}

#[tokio::test]
async fn retries_run_out_on_a_pool_that_stays_busy_and_say_so() {
    let fake = FakeArm::start(1, false).await;
    for _ in 0..4 {
        fake.script_put(Scripted::Error {
            status: 409,
            code: "OperationNotAllowed",
            retry_after: None,
        });
    }
    let err = mi_client(&fake).set_count(&pool(), 3).await.unwrap_err();
    assert!(
        matches!(
            err,
            ArmError::GaveUp {
                status: 409,
                attempts: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("OperationNotAllowed"), "{err}");
    assert_eq!(fake.count(), 1);
}

#[tokio::test]
async fn server_errors_are_retried() {
    let fake = FakeArm::start(1, false).await;
    fake.script_get(Scripted::Error {
        status: 503,
        code: "ServiceUnavailable",
        retry_after: None,
    });
    fake.script_get(Scripted::Error {
        status: 500,
        code: "InternalServerError",
        retry_after: None,
    });
    assert_eq!(mi_client(&fake).get_pool(&pool()).await.unwrap().count, 1);
}

#[tokio::test]
async fn a_401_fetches_a_fresh_token_once_and_then_succeeds() {
    let fake = FakeArm::start(1, false).await;
    let client = mi_client(&fake);
    client.get_pool(&pool()).await.unwrap();
    fake.revoke_tokens();
    client.get_pool(&pool()).await.unwrap();
    assert_eq!(fake.tokens_issued(), 2);
    let gets = fake.seen_to("GET", POOL_PATH);
    assert_eq!(
        gets.last().unwrap().authorization.as_deref(),
        Some("Bearer tok-2")
    );
}

#[tokio::test]
async fn a_401_with_a_fresh_token_is_surfaced_as_unauthorized() {
    let fake = FakeArm::start(1, false).await;
    fake.reject_all_tokens();
    let err = mi_client(&fake).get_pool(&pool()).await.unwrap_err();
    assert!(matches!(err, ArmError::Unauthorized { .. }), "{err}");
    assert_eq!(fake.tokens_issued(), 2, "one refresh, then give up");
}

#[tokio::test]
async fn a_403_is_surfaced_as_forbidden_without_retrying() {
    let fake = FakeArm::start(1, false).await;
    fake.script_put(Scripted::Error {
        status: 403,
        code: "AuthorizationFailed",
        retry_after: None,
    });
    let err = mi_client(&fake).set_count(&pool(), 2).await.unwrap_err();
    assert!(matches!(err, ArmError::Forbidden { .. }), "{err}");
    assert!(err.to_string().contains("AuthorizationFailed"), "{err}");
    assert_eq!(err.code(), "Forbidden");
    assert_eq!(fake.seen_to("PUT", POOL_PATH).len(), 1);
}

#[tokio::test]
async fn a_missing_pool_is_reported_as_not_found() {
    let fake = FakeArm::start(1, false).await;
    let mut other = pool();
    other.pool = "nosuchpool".into();
    let err = mi_client(&fake).get_pool(&other).await.unwrap_err();
    assert!(matches!(err, ArmError::NotFound { .. }), "{err}");
    assert_eq!(err.code(), "PoolNotFound");
}

#[tokio::test]
async fn a_pool_with_the_cluster_autoscaler_enabled_is_never_scaled() {
    let fake = FakeArm::start(2, true).await;
    let err = mi_client(&fake).set_count(&pool(), 5).await.unwrap_err();
    assert!(matches!(err, ArmError::AutoscalerEnabled { .. }), "{err}");
    assert_eq!(err.code(), "ClusterAutoscalerEnabled");
    assert!(fake.seen_to("PUT", POOL_PATH).is_empty());
    assert_eq!(fake.count(), 2);
}

#[tokio::test]
async fn a_failed_operation_is_surfaced_with_arms_message() {
    let fake = FakeArm::start(1, false).await;
    fake.operation(Operation::Async {
        in_progress: 1,
        end: "Failed",
    });
    let err = mi_client(&fake).set_count(&pool(), 9).await.unwrap_err();
    assert!(matches!(err, ArmError::OperationFailed { .. }), "{err}");
    assert!(err.to_string().contains("quota exceeded"), "{err}");
    assert_eq!(fake.count(), 1);
}

#[tokio::test]
async fn setting_the_count_it_already_has_sends_no_put() {
    let fake = FakeArm::start(3, false).await;
    assert_eq!(
        mi_client(&fake).set_count(&pool(), 3).await.unwrap().count,
        3
    );
    assert!(fake.seen_to("PUT", POOL_PATH).is_empty());
}
