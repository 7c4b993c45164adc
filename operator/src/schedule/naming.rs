//! Deterministic names: one run name per (schedule, slot), so a restart or a second replica that
//! creates the same slot again gets AlreadyExists instead of a duplicate run.

use chrono::{DateTime, Utc};

/// Longest name usable as a label value (runs are named in their Jobs' labels).
pub const MAX_NAME: usize = 63;

/// Length of the slot suffix: `-` + `yyyymmddhhmm`.
const SLOT_SUFFIX: usize = 13;

/// The run created for `slot`: `<schedule>-<yyyymmddhhmm in UTC>`, at most 63 characters (a long
/// schedule name is shortened and made unique again with a hash).
pub fn run_name(schedule: &str, slot: DateTime<Utc>) -> String {
    let prefix = shorten(schedule, MAX_NAME - SLOT_SUFFIX);
    format!("{prefix}-{}", slot.format("%Y%m%d%H%M"))
}

/// The run created by the trigger annotation value `trigger` for `slot`:
/// `<schedule>-<yyyymmddhhmm>-t<hash of the value>` (≤ 63 characters), so one value makes one run
/// and never clashes with the slot's scheduled run.
pub fn trigger_run_name(schedule: &str, slot: DateTime<Utc>, trigger: &str) -> String {
    let prefix = shorten(schedule, MAX_NAME - SLOT_SUFFIX - TRIGGER_SUFFIX);
    format!(
        "{prefix}-{}-t{:08x}",
        slot.format("%Y%m%d%H%M"),
        fnv1a(trigger.as_bytes())
    )
}

/// Length of the trigger suffix: `-t` + 8 hex digits.
const TRIGGER_SUFFIX: usize = 10;

/// The schedule's name as a label value (≤ 63 characters; shortened with a hash if longer).
pub fn label_value(schedule: &str) -> String {
    shorten(schedule, MAX_NAME)
}

/// `name` if it fits in `max`, else its first characters, `-` and an 8-hex-digit hash of the
/// whole name; never ends in `-` or `.`, so it stays a valid DNS label and label value.
fn shorten(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let hash = format!("{:08x}", fnv1a(name.as_bytes()));
    let keep = max - hash.len() - 1;
    let head: String = name.chars().take(keep).collect();
    let head = head.trim_end_matches(['-', '.']);
    format!("{head}-{hash}")
}

/// 32-bit FNV-1a: stable across releases and platforms (std's hasher is not).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-01T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_run_is_named_after_its_schedule_and_utc_slot() {
        assert_eq!(
            run_name("hourly-scoring", slot()),
            "hourly-scoring-202611010600"
        );
    }

    #[test]
    fn a_triggered_run_is_named_after_its_slot_and_trigger_value() {
        let a = trigger_run_name("hourly-scoring", slot(), "1");
        assert!(
            a.starts_with("hourly-scoring-202611010600-t") && a.len() == 37,
            "{a}"
        );
        assert_ne!(a, trigger_run_name("hourly-scoring", slot(), "2"));
        assert_eq!(trigger_run_name(&"x".repeat(80), slot(), "1").len(), 63);
    }

    #[test]
    fn long_schedule_names_are_shortened_uniquely_to_63_characters() {
        let a = "a".repeat(80);
        let b = format!("{}b", "a".repeat(79));
        let (na, nb) = (run_name(&a, slot()), run_name(&b, slot()));
        assert_eq!(na.len(), 63);
        assert_eq!(nb.len(), 63);
        assert_ne!(na, nb);
        assert!(na.ends_with("-202611010600"));
        assert_eq!(run_name(&a, slot()), na, "deterministic");
        assert_eq!(label_value(&a).len(), 63);
        assert_eq!(label_value("short"), "short");
        let dashes = format!("{}-{}", "x".repeat(40), "y".repeat(30));
        assert!(!run_name(&dashes, slot()).contains("--"));
    }
}
