//! Waiting for Kubernetes objects to reach a condition or to disappear.

use std::fmt::Debug;
use std::time::Duration;

use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

/// Why a wait ended without the condition.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The timeout passed first; `last` is the object's last state (debug text, shortened).
    #[error("timed out after {timeout:?} waiting for {kind} {name} to {what}; last seen: {last}")]
    Timeout {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// What was awaited.
        what: &'static str,
        /// The timeout.
        timeout: Duration,
        /// The object's last state, or "absent".
        last: String,
    },
    /// The watch failed.
    #[error("watching {kind} {name} failed: {source}")]
    Watch {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// What went wrong.
        #[source]
        source: kube::runtime::wait::Error,
    },
    /// The object was deleted while waiting for a condition on it.
    #[error("{kind} {name} disappeared while waiting for it to {what}")]
    Gone {
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// What was awaited.
        what: &'static str,
    },
}

/// Waits until the object `name` exists and satisfies `condition`, and returns it.
/// `what` describes the condition for the timeout message ("complete", "be Running").
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &'static str,
    condition: impl Fn(&K) -> bool,
    timeout: Duration,
) -> Result<K, WaitError>
where
    K: Clone + Debug + Send + DeserializeOwned + Resource + 'static,
    K::DynamicType: Default,
{
    let cond = |obj: Option<&K>| obj.is_some_and(&condition);
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(obj))) => Ok(obj),
        Ok(Ok(None)) => Err(WaitError::Gone {
            kind: kind::<K>(),
            name: name.to_owned(),
            what,
        }),
        Ok(Err(source)) => Err(WaitError::Watch {
            kind: kind::<K>(),
            name: name.to_owned(),
            source,
        }),
        Err(_) => Err(timeout_error(api, name, what, timeout).await),
    }
}

/// Waits until the object `name` (with `uid`, if given; a recreated object counts as deleted)
/// no longer exists.
pub async fn wait_deleted<K>(
    api: &Api<K>,
    name: &str,
    uid: Option<&str>,
    timeout: Duration,
) -> Result<(), WaitError>
where
    K: Clone + Debug + Send + DeserializeOwned + Resource + 'static,
    K::DynamicType: Default,
{
    const WHAT: &str = "be deleted";
    let result = match uid {
        Some(uid) => {
            tokio::time::timeout(
                timeout,
                await_condition(api.clone(), name, conditions::is_deleted(uid)),
            )
            .await
        }
        None => {
            let gone = |obj: Option<&K>| obj.is_none();
            tokio::time::timeout(timeout, await_condition(api.clone(), name, gone)).await
        }
    };
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(WaitError::Watch {
            kind: kind::<K>(),
            name: name.to_owned(),
            source,
        }),
        Err(_) => Err(timeout_error(api, name, WHAT, timeout).await),
    }
}

fn kind<K: Resource>() -> String
where
    K::DynamicType: Default,
{
    K::kind(&K::DynamicType::default()).into_owned()
}

async fn timeout_error<K>(
    api: &Api<K>,
    name: &str,
    what: &'static str,
    timeout: Duration,
) -> WaitError
where
    K: Clone + Debug + DeserializeOwned + Resource,
    K::DynamicType: Default,
{
    let last = match api.get_opt(name).await {
        Ok(Some(obj)) => {
            // Enough to see the status without drowning the message.
            let text = format!("{obj:?}");
            match text.char_indices().nth(4000) {
                Some((cut, _)) => format!("{}...", &text[..cut]),
                None => text,
            }
        }
        Ok(None) => "absent".to_owned(),
        Err(e) => format!("unknown ({e})"),
    };
    WaitError::Timeout {
        kind: kind::<K>(),
        name: name.to_owned(),
        what,
        timeout,
        last,
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics naming `what` after `timeout`:
/// for conditions no single object's watch expresses (counts across objects, fakes' state).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
