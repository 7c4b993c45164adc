//! Pure slot computation for `ScoringSchedule`: a schedule in the grammar of
//! [`crate::schedule::cron`] (what Kubernetes CronJob accepts) evaluated in an IANA time zone,
//! with no clock and no Kubernetes in sight.
//!
//! Which local times match is exactly CronJob's (robfig/cron v3). How matching local times map
//! to instants across daylight-saving and other offset changes is fleetscore's own rule, the one
//! of Vixie cron, and differs from CronJob's on purpose:
//! - a *fixed-time* schedule (no `*` or `?` item in the minute and hour fields, e.g. `30 2 * * *`)
//!   whose local time does not exist (spring forward, 02:00 → 03:00) runs once, at the first
//!   instant after the gap (03:00); CronJob skips that day's run;
//! - a fixed-time schedule whose local time happens twice (fall back) runs once, at the first
//!   occurrence; CronJob runs at both;
//! - an *interval* schedule (a `*` or `?` item in the minute or hour field: `*/15 * * * *`,
//!   `0 * * * *`) follows real time, as CronJob does: slots inside a skipped hour do not exist,
//!   slots in a repeated hour run in both passes;
//! - `@every d` runs every `d` of real time from an anchor (the controller uses the newest
//!   handled slot, or the creation time, as CronJob does).
//!
//! Any size of offset change is handled (Pacific/Apia skipped 30 December 2011 entirely).
//! Every slot is an instant (`DateTime<Utc>`), so two slots never share a name even when their
//! local wall-clock times are equal.

use std::collections::VecDeque;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike, Utc,
};
/// The zone type of schedules (re-exported so tests name it without depending on chrono-tz).
pub use chrono_tz::Tz;

use crate::schedule::cron::{self, Fields, Spec};

/// How many missed slots [`CronSchedule::missed_between`] counts one by one before it reports a
/// lower bound; beyond this it jumps to the newest slots instead of walking the whole gap.
pub const MAX_COUNTED_SLOTS: usize = 10_000;

/// How far before a backward-search result a forward walk starts, so that slots moved by a
/// daylight-saving change (at most a few hours anywhere) are never skipped.
const DST_MARGIN_HOURS: i64 = 3;

/// The largest possible difference of two UTC offsets (UTC-12 to UTC+14), with a margin.
const MAX_OFFSET_SPAN_HOURS: i64 = 27;

/// Offsets are sampled this far apart when looking for a change (no zone changes its offset
/// twice within this span).
const OFFSET_SAMPLE_HOURS: i64 = 12;

/// How far ahead a slot is searched for: a 29 February schedule waits at most 8 years.
const HORIZON_DAYS: i64 = 10 * 366;

/// Errors from parsing a schedule or computing its slots.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// The expression is not in the schedule grammar.
    #[error("schedule {expr:?} is invalid: {reason}; {allowed}", allowed = cron::ALLOWED)]
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

/// A parsed schedule bound to its time zone (and, for `@every`, to an anchor instant).
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expr: String,
    spec: Spec,
    tz: Tz,
    anchor: DateTime<Utc>,
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
    /// Parses a schedule (see [`crate::schedule::cron`]) in the IANA zone `time_zone` (UTC when
    /// `None`). An `@every` schedule is anchored at the Unix epoch until [`anchored`](Self::anchored).
    pub fn parse(expr: &str, time_zone: Option<&str>) -> Result<Self, SlotError> {
        let tz = parse_time_zone(time_zone.unwrap_or("UTC"))?;
        let spec = cron::parse(expr).map_err(|reason| SlotError::InvalidCron {
            expr: expr.to_string(),
            reason,
        })?;
        Ok(Self {
            expr: expr.to_string(),
            spec,
            tz,
            anchor: DateTime::UNIX_EPOCH,
        })
    }

    /// Anchors an `@every` schedule: its slots are `anchor + k·interval` (whole seconds). No
    /// effect on other schedules.
    pub fn anchored(mut self, anchor: DateTime<Utc>) -> Self {
        self.anchor = DateTime::from_timestamp(anchor.timestamp(), 0).unwrap_or(anchor);
        self
    }

    /// The expression as written.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone the expression is evaluated in.
    pub fn time_zone(&self) -> Tz {
        self.tz
    }

    /// The parsed schedule.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Result<DateTime<Utc>, SlotError> {
        let found = match &self.spec {
            Spec::Every { seconds } => every_next(self.anchor, *seconds, t),
            Spec::Fields(f) => self.fields_next(f, t),
        };
        found.ok_or_else(|| SlotError::NoSlot {
            expr: self.expr.clone(),
            after: t,
        })
    }

    /// The UTC offset of the zone at `t`, in seconds.
    fn offset(&self, t: DateTime<Utc>) -> i64 {
        i64::from(
            self.tz
                .offset_from_utc_datetime(&t.naive_utc())
                .fix()
                .local_minus_utc(),
        )
    }

    /// The first instant in `(from, until]` whose offset differs from the offset at `from`.
    fn next_change(&self, from: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let base = self.offset(from);
        let mut lo = from;
        while lo < until {
            let hi = (lo + Duration::hours(OFFSET_SAMPLE_HOURS)).min(until);
            if self.offset(hi) != base {
                // Bisect in whole seconds: transitions fall on whole seconds.
                let (mut a, mut b) = (
                    lo.timestamp(),
                    hi.timestamp() + i64::from(hi.timestamp_subsec_nanos() > 0),
                );
                while b - a > 1 {
                    let mid = a + (b - a) / 2;
                    let at = DateTime::from_timestamp(mid, 0)?;
                    if self.offset(at) == base {
                        a = mid
                    } else {
                        b = mid
                    }
                }
                return DateTime::from_timestamp(b, 0);
            }
            lo = hi;
        }
        None
    }

    /// Next slot of a five-field schedule: walks the zone's constant-offset stretches from `t`,
    /// applying the daylight-saving rule of the module doc at each offset change.
    fn fields_next(&self, f: &Fields, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let horizon = t + Duration::days(HORIZON_DAYS);
        let mut cursor = t;
        let mut offset = self.offset(t);
        // Fixed-time schedules skip local times that an offset decrease repeats: walls below
        // this were already passed once.
        let mut skip_below: Option<NaiveDateTime> = None;
        if !f.interval {
            let mut p = t - Duration::hours(MAX_OFFSET_SPAN_HOURS);
            let mut last = None;
            while let Some(change) = self.next_change(p, t) {
                last = Some(change);
                p = change;
            }
            if let Some(change) = last {
                let before = self.offset(change - Duration::seconds(1));
                if before > self.offset(change) {
                    skip_below = Some(wall(change, before));
                }
            }
        }
        let mut from = minute_after(wall(t, offset));
        while cursor < horizon {
            let start = skip_below.map_or(from, |s| s.max(from));
            let w = next_match(f, start, wall(horizon, offset))?;
            let candidate = instant(w, offset);
            match self.next_change(cursor, candidate) {
                None => return Some(candidate),
                Some(change) => {
                    let after = self.offset(change);
                    if !f.interval && after > offset {
                        // Local times in [wall before, wall after) do not exist: one run at the
                        // end of the gap if any of them matches.
                        let gap_end = wall(change, after);
                        if next_match(f, minute_at_or_after(wall(change, offset)), gap_end)
                            .is_some()
                        {
                            return Some(change);
                        }
                    }
                    skip_below = (!f.interval && after < offset).then(|| wall(change, offset));
                    cursor = change;
                    offset = after;
                    from = minute_at_or_after(wall(change, offset));
                }
            }
        }
        None
    }

    /// The last slot strictly before `t`, or `None` if there is none in the supported range.
    ///
    /// The answer comes from a forward walk so it is always one of the slots
    /// [`next_after`](Self::next_after) produces, even across DST changes.
    pub fn previous_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if let Spec::Every { seconds } = self.spec {
            let slot = every_next(self.anchor, seconds, t - Duration::seconds(seconds))?;
            return Some(if slot >= t {
                slot - Duration::seconds(seconds)
            } else {
                slot
            });
        }
        let mut span = Duration::hours(DST_MARGIN_HOURS);
        let limit = Duration::days(HORIZON_DAYS);
        loop {
            let mut cursor = t - span;
            let mut last = None;
            while let Ok(next) = self.next_after(cursor) {
                if next >= t {
                    break;
                }
                last = Some(next);
                cursor = next;
            }
            if last.is_some() || span >= limit {
                return last;
            }
            span = (span * 8).min(limit);
        }
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

/// The wall-clock time of `t` at `offset` seconds.
fn wall(t: DateTime<Utc>, offset: i64) -> NaiveDateTime {
    t.naive_utc() + Duration::seconds(offset)
}

/// The instant of wall-clock time `w` at `offset` seconds.
fn instant(w: NaiveDateTime, offset: i64) -> DateTime<Utc> {
    (w - Duration::seconds(offset)).and_utc()
}

/// The first whole minute strictly after `w`.
fn minute_after(w: NaiveDateTime) -> NaiveDateTime {
    truncate_minute(w) + Duration::minutes(1)
}

/// The first whole minute at or after `w`.
fn minute_at_or_after(w: NaiveDateTime) -> NaiveDateTime {
    let m = truncate_minute(w);
    if m == w { m } else { m + Duration::minutes(1) }
}

fn truncate_minute(w: NaiveDateTime) -> NaiveDateTime {
    w.date().and_hms_opt(w.hour(), w.minute(), 0).unwrap_or(w)
}

/// The first matching local time in `[from, until)` (`from` a whole minute).
fn next_match(f: &Fields, from: NaiveDateTime, until: NaiveDateTime) -> Option<NaiveDateTime> {
    let mut date: NaiveDate = from.date();
    let (mut h0, mut m0) = (from.hour(), from.minute());
    while date.and_hms_opt(0, 0, 0)? < until {
        if f.day_matches(
            date.month(),
            date.day(),
            date.weekday().num_days_from_sunday(),
        ) {
            for h in h0..24 {
                if f.hour & (1 << h) == 0 {
                    continue;
                }
                let first = if h == h0 { m0 } else { 0 };
                if let Some(m) = (first..60).find(|m| f.minute & (1u64 << m) != 0) {
                    let w = date.and_hms_opt(h, m, 0)?;
                    return (w < until).then_some(w);
                }
            }
        }
        date = date.succ_opt()?;
        (h0, m0) = (0, 0);
    }
    None
}

/// The first slot of `anchor + k·seconds` (any integer k) strictly after `t`.
fn every_next(anchor: DateTime<Utc>, seconds: i64, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let step = i128::from(seconds.max(1)) * 1_000_000_000;
    let since = i128::from((t - anchor).num_nanoseconds()?);
    let k = since.div_euclid(step) + 1;
    let offset = i64::try_from(k * step / 1_000_000_000).ok()?;
    anchor.checked_add_signed(Duration::try_seconds(offset)?)
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
            ("* * * *", "exactly 5 fields"),
            ("0 0 * * * *", "exactly 5 fields"),
            ("61 * * * *", "above the maximum 59"),
            ("0 0 L * *", "not a number"),
            ("0 0 * * 5#3", "not a number"),
            ("@reboot", "unknown descriptor"),
            ("CRON_TZ=UTC 0 * * * *", "set timeZone instead"),
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
