//! A fresh namespace per test, deleted afterwards.

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::TestEnv;

/// Prefix of every test namespace (the server appends a random suffix).
pub const NAMESPACE_PREFIX: &str = "fleetscore-test-";

/// Label on every test namespace, so leftovers can be found with `-l fleetscore.dev/test=true`.
pub const TEST_LABEL: &str = "fleetscore.dev/test";

/// Runs `f(client, namespace)` in a fresh namespace of the current test environment and deletes
/// the namespace afterwards, also when `f` panics. Returns `None` (after printing why) when there
/// is no environment; panics instead under `FLEETSCORE_REQUIRE_ALL=1`.
///
/// ```no_run
/// # async fn demo() {
/// fleetscore_testenv::with_temp_ns(|client, ns| async move {
///     // create objects in `ns` with `client`
/// })
/// .await;
/// # }
/// ```
pub async fn with_temp_ns<F, Fut, T>(f: F) -> Option<T>
where
    F: FnOnce(Client, String) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let env = TestEnv::for_test().await?;
    Some(env.with_temp_ns(f).await)
}

/// The body of [`with_temp_ns`] and [`TestEnv::with_temp_ns`].
pub(crate) async fn run_in_temp_ns<F, Fut, T>(client: Client, f: F) -> T
where
    F: FnOnce(Client, String) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta {
            generate_name: Some(NAMESPACE_PREFIX.to_owned()),
            labels: Some([(TEST_LABEL.to_owned(), "true".to_owned())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let created = match namespaces.create(&PostParams::default(), &ns).await {
        Ok(created) => created,
        Err(e) => panic!("cannot create a test namespace: {e}"),
    };
    let name = created.metadata.name.unwrap_or_default();
    let outcome = AssertUnwindSafe(f(client, name.clone()))
        .catch_unwind()
        .await;
    // Deletion finishes in the background (the namespace controller empties it); tests never
    // reuse a name, so there is no need to wait.
    if let Err(e) = namespaces.delete(&name, &DeleteParams::background()).await {
        eprintln!("warning: cannot delete test namespace {name}: {e}");
    }
    match outcome {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
