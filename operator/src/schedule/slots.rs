//! Pure slot computation for `ScoringSchedule`: a standard 5-field cron expression evaluated in an
//! IANA time zone, with no clock and no Kubernetes in sight.
//!
//! Daylight-saving rules (those of Vixie cron and of Kubernetes CronJob with `timeZone`, as
//! implemented by the `croner` crate):
//! - a fixed local time that does not exist (spring forward, e.g. 02:30 on a day that jumps from
//!   02:00 to 03:00) runs once, at the first valid instant after the gap (03:00);
//! - a fixed local time that happens twice (fall back) runs once, at its first occurrence;
//! - interval or wildcard schedules (`*/15 * * * *`, `0 * * * *`) follow real time: slots inside a
//!   skipped hour do not exist, slots in a repeated hour run in both passes.
//!
//! Every slot is an instant (`DateTime<Utc>`), so two slots never share a name even when their
//! local wall-clock times are equal.

use std::collections::VecDeque;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// How many missed slots [`CronSchedule::missed_between`] counts one by one before it reports a
/// lower bound; beyond this it jumps to the newest slots instead of walking the whole gap.
pub const MAX_COUNTED_SLOTS: usize = 10_000;

/// How far before a backward-search result a forward walk starts, so that slots moved by a
/// daylight-saving change (at most a few hours anywhere) are never skipped.
const DST_MARGIN_HOURS: i64 = 3;

/// Errors from parsing a schedule or computing its slots.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The cron expression is not a standard 5-field expression or `@macro`.
    #[error("schedule {expr:?} is not a valid 5-field cron expression: {reason}")]
    InvalidCron {
        /// The expression as written in the spec.
        expr: String,
        /// Why it was refused.
        reason: String,
    },
    /// The time zone is not in the IANA database compiled into chrono-tz.
    #[error(
        "timeZone {zone:?} is not a known IANA time zone (for example \"UTC\" or \"Europe/Amsterdam\")"
    )]
    UnknownTimeZone {
        /// The zone as written in the spec.
        zone: String,
    },
    /// The expression never matches after the given instant (e.g. `0 0 30 2 *`).
    #[error("schedule {expr:?} has no slot after {after}")]
    NoSlot {
        /// The expression as written in the spec.
        expr: String,
        /// The instant searched from.
        after: DateTime<Utc>,
    },
}

/// A parsed cron expression bound to its time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expr: String,
    cron: Cron,
    tz: Tz,
}

/// The slots that fell due in an interval, as returned by [`CronSchedule::missed_between`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissedSlots {
    /// The newest slots of the interval (at most the requested limit), oldest first.
    pub slots: Vec<DateTime<Utc>>,
    /// How many slots fell due in the interval (a lower bound when `total_is_lower_bound`).
    pub total: usize,
    /// True when more than [`MAX_COUNTED_SLOTS`] fell due and `total` stopped counting.
    pub total_is_lower_bound: bool,
}

impl CronSchedule {
    /// Parses a 5-field cron expression (or `@yearly`, `@annually`, `@monthly`, `@weekly`,
    /// `@daily`, `@midnight`, `@hourly`) in the IANA zone `time_zone` (UTC when `None`).
    pub fn parse(expr: &str, time_zone: Option<&str>) -> Result<Self, SlotError> {
        let tz = parse_time_zone(time_zone.unwrap_or("UTC"))?;
        let invalid = |reason: String| SlotError::InvalidCron {
            expr: expr.to_string(),
            reason,
        };
        let trimmed = expr.trim();
        let normalised = if trimmed.eq_ignore_ascii_case("@midnight") {
            "@daily".to_string()
        } else {
            trimmed.to_string()
        };
        if normalised.starts_with('@') {
            const MACROS: [&str; 6] = [
                "@yearly",
                "@annually",
                "@monthly",
                "@weekly",
                "@daily",
                "@hourly",
            ];
            if !MACROS.iter().any(|m| m.eq_ignore_ascii_case(&normalised)) {
                return Err(invalid(format!(
                    "unknown macro; use one of {} or @midnight",
                    MACROS.join(", ")
                )));
            }
        } else {
            check_standard_fields(&normalised).map_err(invalid)?;
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(&normalised)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            expr: expr.to_string(),
            cron,
            tz,
        })
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone the expression is evaluated in.
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>, SlotError> {
        let local = t.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .map(|d| d.with_timezone(&Utc))
            .map_err(|_| SlotError::NoSlot {
                expr: self.expr.clone(),
                after: t,
            })
    }

    /// The last slot strictly before `t`, or `None` if there is none in the supported range.
    ///
    /// The backward search only gives an anchor; the answer comes from a forward walk so it is
    /// always one of the slots [`next_after`](Self::next_after) produces, even across DST changes.
    pub fn previous_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.tz);
        let anchor = self.cron.find_previous_occurrence(&local, false).ok()?;
        let mut cursor = anchor.with_timezone(&Utc) - Duration::hours(DST_MARGIN_HOURS);
        let mut last = None;
        while let Ok(next) = self.next_after(cursor) {
            if next >= t {
                break;
            }
            last = Some(next);
            cursor = next;
        }
        last
    }

    /// The slots in `(from, to]`: their count and the newest `limit` of them, oldest first.
    ///
    /// Counting stops at [`MAX_COUNTED_SLOTS`]; the newest slots are still exact then.
    pub fn missed_between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limit: usize,
    ) -> MissedSlots {
        let mut newest: VecDeque<DateTime<Utc>> = VecDeque::with_capacity(limit.min(1024) + 1);
        let mut total = 0usize;
        let mut cursor = from;
        let mut truncated = false;
        while let Ok(next) = self.next_after(cursor) {
            if next > to {
                break;
            }
            total += 1;
            push_bounded(&mut newest, next, limit);
            cursor = next;
            if total >= MAX_COUNTED_SLOTS {
                truncated = true;
                break;
            }
        }
        if truncated {
            // Jump near `to`: walk back `limit` slots for an anchor, then forward from a little
            // before it so the newest slots are exactly the ones next_after yields.
            let mut anchor = to + Duration::seconds(1);
            for _ in 0..limit {
                match self.previous_before(anchor) {
                    Some(p) if p > cursor => anchor = p,
                    _ => break,
                }
            }
            let mut walk = (anchor - Duration::hours(DST_MARGIN_HOURS)).max(cursor);
            let resume_from = cursor;
            while let Ok(next) = self.next_after(walk) {
                if next > to {
                    break;
                }
                if next > resume_from {
                    push_bounded(&mut newest, next, limit);
                }
                walk = next;
            }
        }
        MissedSlots {
            slots: newest.into_iter().collect(),
            total,
            total_is_lower_bound: truncated,
        }
    }
}

/// Keeps the newest `limit` instants in `buf`, in order.
fn push_bounded(buf: &mut VecDeque<DateTime<Utc>>, t: DateTime<Utc>, limit: usize) {
    if limit == 0 {
        return;
    }
    if buf.back().is_some_and(|last| *last >= t) {
        return;
    }
    buf.push_back(t);
    while buf.len() > limit {
        buf.pop_front();
    }
}

/// Parses an IANA zone name such as `Europe/Amsterdam` or `UTC`.
pub fn parse_time_zone(zone: &str) -> Result<Tz, SlotError> {
    Tz::from_str(zone).map_err(|_| SlotError::UnknownTimeZone {
        zone: zone.to_string(),
    })
}

/// Refuses everything but standard cron fields: numbers, `*`, ranges, steps, lists, and
/// three-letter month/day names; croner's extensions (`L`, `W`, `#`, `+`, seconds) are not
/// portable to Kubernetes CronJob users and are rejected with a message.
fn check_standard_fields(expr: &str) -> Result<(), String> {
    const FIELD_NAMES: [&str; 5] = ["minute", "hour", "day of month", "month", "day of week"];
    const MONTHS: [&str; 12] = [
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ];
    const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
            fields.len()
        ));
    }
    for (i, field) in fields.iter().enumerate() {
        let name = FIELD_NAMES[i];
        if let Some(bad) = field
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '*' | '/' | ',' | '-' | '?')))
        {
            return Err(format!("{name} field {field:?} contains {bad:?}"));
        }
        if field.contains('?') && !matches!(i, 2 | 4) {
            return Err(format!(
                "{name} field {field:?}: '?' is only allowed in day fields"
            ));
        }
        // Letters are only allowed as whole month or day names.
        for token in field.split(|c: char| !c.is_ascii_alphabetic()) {
            if token.is_empty() {
                continue;
            }
            let upper = token.to_ascii_uppercase();
            let ok = match i {
                3 => MONTHS.contains(&upper.as_str()),
                4 => DAYS.contains(&upper.as_str()),
                _ => false,
            };
            if !ok {
                return Err(format!(
                    "{name} field {field:?}: {token:?} is not a standard value (no L, W or # extensions)"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn slots(s: &CronSchedule, from: &str, n: usize) -> Vec<String> {
        let mut t = utc(from);
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                t.to_rfc3339()
            })
            .collect()
    }

    #[test]
    fn an_hourly_schedule_in_utc_fires_on_the_hour() {
        let s = CronSchedule::parse("0 * * * *", None).unwrap();
        assert_eq!(
            slots(&s, "2026-01-01T10:00:00Z", 3),
            [
                "2026-01-01T11:00:00+00:00",
                "2026-01-01T12:00:00+00:00",
                "2026-01-01T13:00:00+00:00"
            ]
        );
    }

    #[test]
    fn next_after_is_strict_and_ignores_subseconds() {
        let s = CronSchedule::parse("*/5 * * * *", None).unwrap();
        assert_eq!(
            s.next_after(utc("2026-01-01T10:05:00Z")).unwrap(),
            utc("2026-01-01T10:10:00Z")
        );
        assert_eq!(
            s.next_after(utc("2026-01-01T10:04:59.9Z")).unwrap(),
            utc("2026-01-01T10:05:00Z")
        );
    }

    #[test]
    fn macros_and_names_are_understood() {
        let daily = CronSchedule::parse("@midnight", Some("Asia/Tokyo")).unwrap();
        assert_eq!(
            daily.next_after(utc("2026-03-01T16:00:00Z")).unwrap(),
            utc("2026-03-02T15:00:00Z")
        );
        let weekday = CronSchedule::parse("30 9 * jan-mar MON-FRI", None).unwrap();
        // 2026-01-03 is a Saturday: next is Monday 5 January.
        assert_eq!(
            weekday.next_after(utc("2026-01-02T10:00:00Z")).unwrap(),
            utc("2026-01-05T09:30:00Z")
        );
        assert!(CronSchedule::parse("@hourly", None).is_ok());
    }

    #[test]
    fn a_daily_schedule_follows_the_zone_across_summer_time() {
        let s = CronSchedule::parse("0 6 * * *", Some("Europe/Amsterdam")).unwrap();
        // Winter: UTC+1, summer: UTC+2; the local hour stays 06:00.
        assert_eq!(
            slots(&s, "2026-03-28T00:00:00Z", 2),
            ["2026-03-28T05:00:00+00:00", "2026-03-29T04:00:00+00:00"]
        );
    }

    #[test]
    fn a_fixed_time_inside_the_spring_forward_gap_runs_once_right_after_the_gap() {
        // Europe/Amsterdam jumps from 02:00 to 03:00 local on 2026-03-29 (01:00 UTC).
        let s = CronSchedule::parse("30 2 * * *", Some("Europe/Amsterdam")).unwrap();
        assert_eq!(
            slots(&s, "2026-03-28T12:00:00Z", 2),
            // 03:00 local (CEST) = 01:00 UTC; the day after, 02:30 CEST = 00:30 UTC.
            ["2026-03-29T01:00:00+00:00", "2026-03-30T00:30:00+00:00"]
        );
    }

    #[test]
    fn an_interval_schedule_skips_the_missing_hour() {
        let s = CronSchedule::parse("0 * * * *", Some("America/New_York")).unwrap();
        // 2026-03-08 02:00 EST jumps to 03:00 EDT (07:00 UTC): slots stay one real hour apart.
        assert_eq!(
            slots(&s, "2026-03-08T05:30:00Z", 3),
            [
                "2026-03-08T06:00:00+00:00",
                "2026-03-08T07:00:00+00:00",
                "2026-03-08T08:00:00+00:00"
            ]
        );
    }

    #[test]
    fn a_fixed_time_in_the_repeated_autumn_hour_runs_once() {
        // America/New_York: 2026-11-01 02:00 EDT goes back to 01:00 EST; 01:30 happens twice.
        let s = CronSchedule::parse("30 1 * * *", Some("America/New_York")).unwrap();
        assert_eq!(
            slots(&s, "2026-10-31T12:00:00Z", 2),
            // First 01:30 is EDT (05:30 UTC); the next day 01:30 EST (06:30 UTC).
            ["2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00"]
        );
    }

    #[test]
    fn an_hourly_schedule_runs_in_both_passes_of_the_repeated_hour() {
        let s = CronSchedule::parse("0 * * * *", Some("America/New_York")).unwrap();
        assert_eq!(
            slots(&s, "2026-11-01T04:30:00Z", 3),
            // 01:00 EDT (05:00 UTC), 01:00 EST (06:00 UTC), 02:00 EST (07:00 UTC).
            [
                "2026-11-01T05:00:00+00:00",
                "2026-11-01T06:00:00+00:00",
                "2026-11-01T07:00:00+00:00"
            ]
        );
    }

    #[test]
    fn a_half_hour_zone_is_evaluated_in_local_time() {
        let s = CronSchedule::parse("0 0 * * *", Some("Asia/Kolkata")).unwrap();
        assert_eq!(
            s.next_after(utc("2026-05-01T00:00:00Z")).unwrap(),
            utc("2026-05-01T18:30:00Z")
        );
    }

    #[test]
    fn previous_before_matches_the_forward_slots_even_across_dst() {
        for (expr, zone) in [
            ("30 2 * * *", "Europe/Amsterdam"),
            ("0 * * * *", "America/New_York"),
            ("30 1 * * *", "America/New_York"),
            ("*/20 * * * *", "Australia/Lord_Howe"),
        ] {
            let s = CronSchedule::parse(expr, Some(zone)).unwrap();
            for start in [
                "2026-03-07T00:00:00Z",
                "2026-03-28T00:00:00Z",
                "2026-10-31T00:00:00Z",
                "2026-04-04T00:00:00Z",
            ] {
                let mut prev = s.next_after(utc(start)).unwrap();
                for _ in 0..60 {
                    let next = s.next_after(prev).unwrap();
                    assert_eq!(
                        s.previous_before(next),
                        Some(prev),
                        "{expr} in {zone} before {next}"
                    );
                    prev = next;
                }
            }
        }
    }

    #[test]
    fn missed_between_counts_all_and_keeps_the_newest_oldest_first() {
        let s = CronSchedule::parse("*/10 * * * *", None).unwrap();
        let m = s.missed_between(utc("2026-01-01T10:00:00Z"), utc("2026-01-01T11:00:00Z"), 3);
        assert_eq!(m.total, 6);
        assert!(!m.total_is_lower_bound);
        assert_eq!(
            m.slots,
            vec![
                utc("2026-01-01T10:40:00Z"),
                utc("2026-01-01T10:50:00Z"),
                utc("2026-01-01T11:00:00Z")
            ]
        );
        let none = s.missed_between(utc("2026-01-01T10:00:00Z"), utc("2026-01-01T10:09:59Z"), 3);
        assert_eq!(none.total, 0);
        assert!(none.slots.is_empty());
        let zero = s.missed_between(utc("2026-01-01T10:00:00Z"), utc("2026-01-01T11:00:00Z"), 0);
        assert_eq!((zero.total, zero.slots.len()), (6, 0));
    }

    #[test]
    fn a_gap_longer_than_the_count_cap_still_yields_the_exact_newest_slots() {
        let s = CronSchedule::parse("* * * * *", Some("Europe/Amsterdam")).unwrap();
        let from = utc("2025-01-01T00:00:00Z");
        let to = utc("2026-03-29T01:02:30Z");
        let m = s.missed_between(from, to, 4);
        assert!(m.total_is_lower_bound);
        assert_eq!(m.total, MAX_COUNTED_SLOTS);
        assert_eq!(
            m.slots,
            vec![
                utc("2026-03-29T00:59:00Z"),
                utc("2026-03-29T01:00:00Z"),
                utc("2026-03-29T01:01:00Z"),
                utc("2026-03-29T01:02:00Z")
            ]
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_refused_with_readable_messages() {
        for (expr, needle) in [
            ("* * * *", "expected 5 fields"),
            ("0 0 * * * *", "expected 5 fields"),
            ("61 * * * *", "valid 5-field"),
            ("0 0 L * *", "no L, W or # extensions"),
            ("0 0 * * 5#3", "contains '#'"),
            ("@reboot", "unknown macro"),
            ("CRON_TZ=UTC 0 * * * *", "expected 5 fields"),
        ] {
            let err = CronSchedule::parse(expr, None).unwrap_err().to_string();
            assert!(err.contains(needle), "{expr}: {err}");
        }
        let err = CronSchedule::parse("0 * * * *", Some("Mars/Olympus"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Mars/Olympus") && err.contains("IANA"),
            "{err}"
        );
    }

    #[test]
    fn an_impossible_date_has_no_slot() {
        let s = CronSchedule::parse("0 0 30 2 *", None).unwrap();
        assert!(matches!(
            s.next_after(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()),
            Err(SlotError::NoSlot { .. })
        ));
    }
}
