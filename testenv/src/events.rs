//! Reading the Events controllers publish (events.k8s.io/v1, what `kubectl describe` shows).

use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client};

/// The Events in `ns` with `reason` (about any object); an empty list when they cannot be read.
pub async fn events_with_reason(client: &Client, ns: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let items = api
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

/// The notes of the Events in `ns` with `reason` about the object named `name`.
pub async fn event_notes(client: &Client, ns: &str, reason: &str, name: &str) -> Vec<String> {
    events_with_reason(client, ns, reason)
        .await
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| e.note.unwrap_or_default())
        .collect()
}
