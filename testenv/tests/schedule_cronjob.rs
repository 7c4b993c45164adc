//! Differential test of `ScoringSchedule` schedules against Kubernetes CronJob's own code:
//! robfig/cron v3, built from the Go module proxy (testenv/gomod/crondiff, by
//! testenv/build-crondiff, cached by its go.sum) and run as the CronJob API validation and
//! controller run it.
//!
//! Checked: every expression CronJob accepts parses, with the same slots, over random and
//! hand-written expressions × zones with odd rules × starts just before every offset change of
//! 2024–2027 (and Pacific/Apia's skipped day in 2011). Each difference must fall in one of the
//! documented classes (README, "ScoringSchedule" → "Differences from CronJob"):
//! - `seven-is-sunday`: fleetscore also accepts 7 (Sunday) in the day-of-week field;
//! - `nel-refused`: fleetscore refuses U+0085 (NEL) as a field separator (the API server's CEL
//!   regex does not match it reliably);
//! - `dst-gap`: a fixed-time slot whose local time does not exist runs once at the end of the
//!   gap; CronJob skips it;
//! - `dst-repeat`: a fixed-time slot whose local time happens twice runs once; CronJob runs it
//!   again at the second occurrence;
//! - `cronjob-half-hour-change`: after a change by half an hour (Lord Howe), CronJob's hour steps
//!   (real hours) land on :30: it passes by the slots in the first half of the next local hour
//!   that has slots, and in the hour after the change it can fire on a matching minute whose hour
//!   does not match;
//! - `cronjob-midnight-gap`: on a day whose midnight does not exist (America/Santiago), CronJob
//!   can fire on that day although the day fields do not match it;
//! - `cronjob-hangs`: robfig's Next never returns (the reference reports `hang`), fleetscore has
//!   a next slot.
//!
//! Run: `cargo test -p fleetscore-testenv --test schedule_cronjob` (needs Go, or skips).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use chrono::{DateTime, Datelike, Duration, LocalResult, Offset, TimeZone, Timelike, Utc};
use fleetscore_operator::schedule::cron::{Spec, sample_expressions};
use fleetscore_operator::schedule::slots::{CronSchedule, Tz};
use fleetscore_testenv::skip::skip_or_fail;

/// Zones with odd rules: 30-minute DST, +05:45, negative DST, abolished DST, midnight changes,
/// a skipped day, Ramadan DST breaks, southern hemisphere.
const ZONES: [&str; 14] = [
    "UTC",
    "Europe/Amsterdam",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Europe/Dublin",
    "Pacific/Apia",
    "America/Sao_Paulo",
    "Asia/Tehran",
    "America/Santiago",
    "America/Havana",
    "Africa/Casablanca",
    "Australia/Sydney",
    "Asia/Kolkata",
];

/// Slots compared per case.
const SLOTS: usize = 4;

/// Expressions written by hand: the examples and DST-sensitive shapes.
const HAND: &[&str] = &[
    "0 * * * *",
    "*/15 * * * *",
    "30 2 * * *",
    "0 2 * * *",
    "30 1 * * *",
    "0 0 * * *",
    "0 1-3 * * *",
    "*/15 1 * * *",
    "0,30 2 * * *",
    "15 2 * * *",
    "45 1 * * *",
    "0 0 1 * *",
    "0 12 * * *",
    "0 12 * * FRI",
    "5/15 * * * *",
    "*,15 * * * *",
    "0 0 1,* * MON",
    "? ? * * *",
    "+5 * * * *",
    "1,,2 * * * *",
    "005 3 * * *",
    " 0 * * * * ",
    "0 0 * * SUN-SUN",
    "0 0 * * 0-SUN",
    "0 0 1 * */1",
    "0 0 */1 * MON",
    "0 0 * * 7",
    "0 0 * * FRI-7",
    "0 0 * * FRI-SUN",
    "*-junk/20 * * * *",
    "0 0 29 2 *",
    "0 0 31 2 *",
    "59 23 31 12 6",
    "@hourly",
    "@daily",
    "@weekly",
    "@monthly",
    "@yearly",
    "@every 1h",
    "@every 90m",
    "@every 1h30m10s",
    "30 0 * * *",
    "0 23 * * *",
    "0 0 * * 1-5",
    "*/7 */5 * * *",
    "0 2 8-14 3 SUN",
    "30 2 * 3,10 *",
    "0 */2 * * *",
    "0 0,12 1 */2 *",
];

/// Builds the CronJob reference, or `None` (skipped) without Go.
fn crondiff() -> Option<PathBuf> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("build-crondiff");
    match Command::new(&script).stderr(Stdio::inherit()).output() {
        Ok(out) if out.status.success() => {
            let path = String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or("")
                .to_string();
            Some(PathBuf::from(path))
        }
        Ok(out) => {
            skip_or_fail(format!("{} failed: {}", script.display(), out.status));
            None
        }
        Err(e) => {
            skip_or_fail(format!("cannot run {}: {e}", script.display()));
            None
        }
    }
}

/// CronJob's answer for one case.
#[derive(Debug, Clone, PartialEq)]
enum Reference {
    Invalid(String),
    Slots(Vec<i64>),
    /// robfig's Next did not return within a second (it loops forever).
    Hang,
}

/// Asks the reference about many cases, in one process until a case hangs (robfig's Next can
/// loop forever; the reference then exits after answering `hang`, and is started again).
fn ask(bin: &PathBuf, cases: &[(String, &str, i64)]) -> Vec<Reference> {
    let mut answers = Vec::with_capacity(cases.len());
    while answers.len() < cases.len() {
        let rest = &cases[answers.len()..];
        let mut child = Command::new(bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = String::new();
        for (expr, zone, start) in rest {
            input.push_str(&format!(
                "{}\t{zone}\t{start}\t{SLOTS}\n",
                serde_json::to_string(expr).unwrap()
            ));
        }
        let mut stdin = child.stdin.take().unwrap();
        // The reference may exit early (hang): a broken pipe then is expected.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        for line in text.lines() {
            answers.push(if line == "hang" {
                Reference::Hang
            } else if let Some(reason) = line.strip_prefix("invalid ") {
                Reference::Invalid(reason.to_string())
            } else if let Some(slots) = line.strip_prefix("ok ") {
                Reference::Slots(slots.split(' ').map(|s| s.parse().unwrap()).collect())
            } else {
                panic!("crondiff: {line}")
            });
        }
        assert!(
            out.status.success() || answers.last() == Some(&Reference::Hang),
            "crondiff failed: {}",
            out.status
        );
    }
    answers
}

/// The instants in 2024–2027 where `zone`'s UTC offset changes (found by hourly sampling and
/// bisection), plus Apia's skipped day.
fn changes(zone: &str) -> Vec<DateTime<Utc>> {
    let tz: Tz = zone.parse().unwrap();
    let offset = |t: DateTime<Utc>| {
        tz.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc()
    };
    let mut out = Vec::new();
    let mut t = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let end = Utc.with_ymd_and_hms(2028, 1, 1, 0, 0, 0).unwrap();
    if zone == "Pacific/Apia" {
        out.push(Utc.with_ymd_and_hms(2011, 12, 30, 10, 0, 0).unwrap());
    }
    while t < end {
        let next = t + Duration::hours(1);
        if offset(next) != offset(t) {
            let (mut a, mut b) = (t, next);
            while b - a > Duration::seconds(1) {
                let mid = a + (b - a) / 2;
                if offset(mid) == offset(t) {
                    a = mid
                } else {
                    b = mid
                }
            }
            out.push(b);
        }
        t = next;
    }
    out
}

/// The starts of one zone: just before each change (a few hours and a day before), and a few
/// ordinary instants.
fn starts(zone: &str) -> Vec<i64> {
    let mut out: Vec<i64> = [1_704_067_200i64, 1_735_689_600 + 3 * 86_400 + 1234].to_vec();
    for change in changes(zone) {
        for before in [
            Duration::minutes(150),
            Duration::minutes(61),
            Duration::hours(25),
        ] {
            out.push((change - before).timestamp());
        }
    }
    out
}

/// Whether the zone's offset rises at `t` (the end of a gap of nonexistent local times).
fn is_gap_end(tz: Tz, t: DateTime<Utc>) -> bool {
    let offset = |t: DateTime<Utc>| {
        tz.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc()
    };
    offset(t) > offset(t - Duration::seconds(1))
}

/// Whether `t` lies in the first half of the first local hour with slots after a change of the
/// zone's offset by a fraction of an hour (Australia/Lord_Howe's 30-minute DST): robfig steps
/// hours by adding real hours, so after such a change it lands on :30 and passes by the slots of
/// that hour's first half (for a daily fixed time: the whole next day's run).
fn is_after_fractional_change(sched: &CronSchedule, t: DateTime<Utc>) -> bool {
    let tz = sched.time_zone();
    let offset = |t: DateTime<Utc>| {
        tz.offset_from_utc_datetime(&t.naive_utc())
            .fix()
            .local_minus_utc()
    };
    let hour = |t: DateTime<Utc>| {
        let local = tz.from_utc_datetime(&t.naive_utc()).naive_local();
        (local.date(), local.hour(), local.minute())
    };
    let (date, h, minute) = hour(t);
    if minute >= 30 {
        return false;
    }
    // The first slot of t's local hour.
    let mut first = t;
    while let Some(p) = sched
        .previous_before(first)
        .filter(|p| hour(*p).0 == date && hour(*p).1 == h)
    {
        first = p;
    }
    let Some(prev) = sched.previous_before(first) else {
        return false;
    };
    let delta = offset(first) - offset(prev);
    delta != 0 && delta % 3600 != 0
}

/// Whether `t`'s local time happened before, at another instant (a repeated local time).
fn is_second_occurrence(tz: Tz, t: DateTime<Utc>) -> bool {
    let local = tz.from_utc_datetime(&t.naive_utc()).naive_local();
    matches!(tz.from_local_datetime(&local), LocalResult::Ambiguous(first, _) if first.with_timezone(&Utc) < t)
}

#[test]
fn cronjob_accepts_what_fleetscore_accepts_but_the_documented_forms() {
    let Some(bin) = crondiff() else { return };
    let mut exprs: Vec<String> = HAND.iter().map(|s| s.to_string()).collect();
    exprs.extend(sample_expressions(7, 20_000));
    let cases: Vec<(String, &str, i64)> = exprs
        .iter()
        .map(|e| (e.clone(), "UTC", 1_704_067_200))
        .collect();
    let answers = ask(&bin, &cases);
    let mut classes: BTreeMap<&str, usize> = BTreeMap::new();
    for ((expr, _, _), answer) in cases.iter().zip(&answers) {
        let ours = CronSchedule::parse(expr, None);
        let class = match (&ours, answer) {
            (Ok(_), Reference::Slots(_)) => "both accept",
            (Err(_), Reference::Invalid(_)) => "both refuse",
            (Ok(_), Reference::Invalid(reason)) if reason.contains("(7) above maximum (6)") => {
                "seven-is-sunday"
            }
            (Ok(_), Reference::Hang) => "cronjob-hangs",
            (Err(_), Reference::Slots(_)) if expr.contains('\u{85}') => "nel-refused",
            _ => panic!("{expr:?}: fleetscore {ours:?}, CronJob {answer:?}"),
        };
        *classes.entry(class).or_default() += 1;
    }
    eprintln!("acceptance classes: {classes:?}");
    assert!(
        classes["both accept"] > 1_000 && classes["both refuse"] > 1_000,
        "{classes:?}"
    );
    assert!(classes.contains_key("seven-is-sunday"), "{classes:?}");
}

#[test]
fn slots_equal_cronjobs_but_for_the_documented_dst_policy() {
    let Some(bin) = crondiff() else { return };
    let mut exprs: Vec<String> = HAND.iter().map(|s| s.to_string()).collect();
    // Random valid expressions (CronJob's acceptance is the other test's business).
    exprs.extend(
        sample_expressions(11, 4_000)
            .into_iter()
            .filter(|e| CronSchedule::parse(e, None).is_ok() && !e.contains('7'))
            .take(150),
    );
    let mut cases = Vec::new();
    for zone in ZONES {
        for start in starts(zone) {
            // Apia's 2011 day makes robfig hang (a quarter second each): hand-written ones only.
            let take = if start < 1_400_000_000 {
                HAND.len()
            } else {
                exprs.len()
            };
            for expr in &exprs[..take] {
                cases.push((expr.clone(), zone, start));
            }
        }
    }
    let asked = std::time::Instant::now();
    let answers = ask(&bin, &cases);
    eprintln!(
        "CronJob's answers for {} cases in {:?}",
        cases.len(),
        asked.elapsed()
    );
    let mut classes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut examples: BTreeMap<&str, String> = BTreeMap::new();
    for ((expr, zone, start), answer) in cases.iter().zip(&answers) {
        let theirs = match answer {
            Reference::Slots(s) => s.clone(),
            Reference::Invalid(reason) if reason.contains("(7) above maximum (6)") => continue,
            Reference::Invalid(_) if CronSchedule::parse(expr, None).is_err() => continue,
            Reference::Hang => {
                // CronJob's controller never gets a next slot: fleetscore must have one.
                let sched = CronSchedule::parse(expr, Some(zone)).unwrap();
                assert!(
                    sched
                        .next_after(DateTime::from_timestamp(*start, 0).unwrap())
                        .is_ok(),
                    "{expr:?} in {zone}"
                );
                *classes.entry("cronjob-hangs").or_default() += 1;
                examples
                    .entry("cronjob-hangs")
                    .or_insert_with(|| format!("{expr:?} in {zone} from {start}"));
                continue;
            }
            Reference::Invalid(reason) => {
                panic!("{expr:?}: CronJob refuses it ({reason}), fleetscore accepts it")
            }
        };
        let start_t = DateTime::from_timestamp(*start, 0).unwrap();
        let sched = CronSchedule::parse(expr, Some(zone))
            .unwrap()
            .anchored(start_t);
        let tz = sched.time_zone();
        let mut ours = Vec::new();
        let mut t = start_t;
        for _ in 0..SLOTS {
            match sched.next_after(t) {
                Ok(next) => {
                    ours.push(next.timestamp());
                    t = next;
                }
                Err(_) => {
                    ours.push(0);
                    break;
                }
            }
        }
        if ours == theirs {
            *classes.entry("equal").or_default() += 1;
            continue;
        }
        let fixed = matches!(sched.spec(), Spec::Fields(f) if !f.interval);
        // Compare up to the earlier of the two last slots: beyond it one side has not looked.
        let horizon = ours.iter().chain(&theirs).copied().filter(|s| *s != 0);
        let horizon = ours
            .last()
            .copied()
            .min(theirs.last().copied())
            .filter(|h| *h != 0)
            .unwrap_or_else(|| horizon.max().unwrap_or(0));
        let only_ours: Vec<i64> = ours
            .iter()
            .copied()
            .filter(|s| *s != 0 && *s <= horizon && !theirs.contains(s))
            .collect();
        let only_theirs: Vec<i64> = theirs
            .iter()
            .copied()
            .filter(|s| *s != 0 && *s <= horizon && !ours.contains(s))
            .collect();
        let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        let mut case_classes = Vec::new();
        let half_hour = |s: &&i64| is_after_fractional_change(&sched, at(**s));
        let n = only_ours.iter().filter(half_hour).count();
        case_classes.extend(std::iter::repeat_n("cronjob-half-hour-change", n));
        for s in only_ours.iter().filter(|s| !half_hour(s)) {
            assert!(
                fixed && is_gap_end(tz, at(*s)),
                "{expr:?} in {zone} from {start_t}: fleetscore's slot {} is not CronJob's and not a gap end\n ours   {ours:?}\n theirs {theirs:?}",
                at(*s)
            );
            case_classes.push("dst-gap");
        }
        let fractional_before = |s: &&i64| {
            let offset = |t: DateTime<Utc>| {
                tz.offset_from_utc_datetime(&t.naive_utc())
                    .fix()
                    .local_minus_utc()
            };
            let delta = offset(at(**s)) - offset(at(**s) - Duration::hours(1));
            delta != 0 && delta % 3600 != 0
        };
        let n = only_theirs.iter().filter(fractional_before).count();
        case_classes.extend(std::iter::repeat_n("cronjob-half-hour-change", n));
        // robfig's day loop meets a nonexistent midnight, steps back an hour into the previous
        // day and then fires on the following day without checking it (America/Santiago).
        let wrong_day_after_midnight_gap = |s: &&i64| {
            let Spec::Fields(f) = sched.spec() else {
                return false;
            };
            let local = tz
                .from_utc_datetime(&at(**s).naive_utc())
                .naive_local()
                .date();
            let midnight_missing = matches!(
                tz.from_local_datetime(&local.and_hms_opt(0, 0, 0).unwrap()),
                LocalResult::None
            );
            midnight_missing
                && !f.day_matches(
                    local.month(),
                    local.day(),
                    local.weekday().num_days_from_sunday(),
                )
        };
        let n = only_theirs
            .iter()
            .filter(|s| !fractional_before(s) && wrong_day_after_midnight_gap(s))
            .count();
        case_classes.extend(std::iter::repeat_n("cronjob-midnight-gap", n));
        for s in only_theirs
            .iter()
            .filter(|s| !fractional_before(s) && !wrong_day_after_midnight_gap(s))
        {
            assert!(
                fixed && is_second_occurrence(tz, at(*s)),
                "{expr:?} in {zone} from {start_t}: CronJob's slot {} is not fleetscore's and not a repeated local time\n ours   {ours:?}\n theirs {theirs:?}",
                at(*s)
            );
            case_classes.push("dst-repeat");
        }
        assert!(
            !case_classes.is_empty(),
            "{expr:?} in {zone} from {start_t}: differs beyond the compared slots\n ours   {ours:?}\n theirs {theirs:?}"
        );
        for class in case_classes {
            *classes.entry(class).or_default() += 1;
            examples
                .entry(class)
                .or_insert_with(|| format!("{expr:?} in {zone} from {start_t}"));
        }
    }
    eprintln!(
        "{} cases; classes: {classes:?}; examples: {examples:?}",
        cases.len()
    );
    assert!(classes["equal"] > cases.len() / 2, "{classes:?}");
    // Both documented DST differences do occur in this sample (so the classifier is exercised).
    assert!(
        classes.contains_key("dst-gap") && classes.contains_key("dst-repeat"),
        "{classes:?}"
    );
}
