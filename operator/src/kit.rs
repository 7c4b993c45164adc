//! The small toolkit every controller shares: label and field-manager names, one condition
//! setter, one event publisher, one stable hash and name shortener, and the classifiers of kube
//! errors that decide between "retry" and "fail with a reason".

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use tracing::warn;

/// Field manager of the run controller's writes (server-side apply) and its event reporter.
pub const RUN_MANAGER: &str = "fleetscore";
/// Field manager of the schedule controller.
pub const SCHEDULE_MANAGER: &str = "fleetscore-schedule";
/// Field manager of the node-pool scaler (it alone writes `status.scaler`).
pub const SCALER_MANAGER: &str = "fleetscore-scaler";

/// Label with the run's name, on the run's Jobs, pods and ConfigMaps.
pub const RUN_LABEL: &str = "fleetscore.dev/run";
/// The standard managed-by label.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of the managed-by label.
pub const MANAGED_BY: &str = "fleetscore";

/// 64-bit FNV-1a: stable across releases and platforms (std's hasher is not), so names derived
/// from it survive an operator upgrade.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `<base>-<suffix>` within `max` characters: a long `base` is cut and gets a 6-hex-digit hash
/// of the whole, so distinct bases keep distinct names.
pub fn shorten(base: &str, suffix: &str, max: usize) -> String {
    let room = max.saturating_sub(1 + suffix.len());
    if base.len() <= room {
        return format!("{base}-{suffix}");
    }
    let hash = stable_hash(base.as_bytes()) & 0xff_ffff;
    let cut: String = base.chars().take(room.saturating_sub(7)).collect();
    format!("{}-{hash:06x}-{suffix}", cut.trim_end_matches(['-', '.']))
}

/// Sets condition `type_` in `conditions`, keeping its transition time while its status stays
/// the same. Returns whether anything changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> bool {
    let status = if status { "True" } else { "False" }.to_string();
    let reason = if reason.is_empty() { "Unknown" } else { reason };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            let changed = c.status != status
                || c.reason != reason
                || c.message != message
                || c.observed_generation != generation;
            if c.status != status {
                c.last_transition_time = Time(now);
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message.to_string();
            c.observed_generation = generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: type_.to_string(),
                status,
                reason: reason.to_string(),
                message: message.to_string(),
                observed_generation: generation,
                last_transition_time: Time(now),
            });
            true
        }
    }
}

/// True when condition `type_` has status `True`.
pub fn condition_is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// Publishes an event on `obj`; a failure to publish is logged, never fatal. Returns whether it
/// was written.
pub async fn publish<K>(
    recorder: &Recorder,
    obj: &K,
    type_: EventType,
    reason: &str,
    note: String,
) -> bool
where
    K: Resource<DynamicType = ()>,
{
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    match recorder.publish(&ev, &obj.object_ref(&())).await {
        Ok(()) => true,
        Err(e) => {
            warn!(object = %obj.name_any(), reason, error = %e, "publishing an event failed");
            false
        }
    }
}

/// The API's status code of an error, if it came from the API server.
fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// 409: the object exists already, or a conditional write lost to a newer version.
pub fn is_conflict(e: &kube::Error) -> bool {
    api_code(e) == Some(409)
}

/// 404: the object (or its namespace) is gone.
pub fn is_not_found(e: &kube::Error) -> bool {
    api_code(e) == Some(404)
}

/// An error that repeating the same request cannot fix: the object is invalid (400, 422), the
/// operator may not do it (401, 403), or the method or kind is not served (405, 415). Everything
/// else (timeouts, 429, 5xx, connection errors) is transient.
pub fn is_permanent(e: &kube::Error) -> bool {
    matches!(api_code(e), Some(400 | 401 | 403 | 405 | 415 | 422))
}

/// The API server's message for an API error, else the error's text.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_cut_with_a_hash_and_stay_distinct() {
        let a = "a".repeat(70);
        let b = format!("{}b", "a".repeat(69));
        let (na, nb) = (shorten(&a, "12345", 63), shorten(&b, "12345", 63));
        assert!(na.len() <= 63 && nb.len() <= 63, "{na} {nb}");
        assert_ne!(na, nb);
        assert!(na.ends_with("-12345"));
        assert_eq!(shorten("nightly", "7", 63), "nightly-7");
    }

    #[test]
    fn a_condition_keeps_its_transition_time_until_its_status_changes() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let mut cs = Vec::new();
        assert!(set_condition(
            &mut cs,
            "Ready",
            false,
            "Running",
            "",
            Some(1),
            t0
        ));
        assert!(!set_condition(
            &mut cs,
            "Ready",
            false,
            "Running",
            "",
            Some(1),
            t1
        ));
        assert_eq!(cs[0].last_transition_time, Time(t0));
        assert!(set_condition(
            &mut cs,
            "Ready",
            true,
            "Succeeded",
            "done",
            Some(1),
            t1
        ));
        assert_eq!(cs[0].last_transition_time, Time(t1));
        assert!(condition_is_true(&cs, "Ready"));
    }
}
