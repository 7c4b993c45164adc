//! Timestamp text to epoch milliseconds and back, for `YYYY-MM-DD HH:MM:SS(.fff)` and ISO-8601.

/// Parses `YYYY-MM-DD[ T]HH:MM[:SS[.fff…]][Z|±HH:MM]` (naive times are taken as UTC).
pub fn parse_timestamp_ms(b: &[u8]) -> Option<i64> {
    let num = |s: &[u8]| -> Option<i64> {
        if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(s.iter().fold(0i64, |a, &c| a * 10 + i64::from(c - b'0')))
    };
    if b.len() < 16
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b' ' || b[10] == b'T')
        || b[13] != b':'
    {
        return None;
    }
    let year = num(&b[0..4])?;
    let month = num(&b[5..7])?;
    let day = num(&b[8..10])?;
    let hour = num(&b[11..13])?;
    let minute = num(&b[14..16])?;
    let mut i = 16;
    let mut second = 0;
    let mut millis = 0;
    if i < b.len() && b[i] == b':' {
        second = num(b.get(i + 1..i + 3)?)?;
        i += 3;
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let frac = &b[s..i];
            if frac.is_empty() {
                return None;
            }
            // Keep milliseconds; finer digits are truncated.
            for k in 0..3 {
                millis = millis * 10 + frac.get(k).map_or(0, |&c| i64::from(c - b'0'));
            }
        }
    }
    let mut offset_min = 0;
    match b.get(i) {
        None => {}
        Some(b'Z') if i + 1 == b.len() => {}
        Some(&sign @ (b'+' | b'-')) => {
            let rest = &b[i + 1..];
            let (h, m) = match rest.len() {
                5 if rest[2] == b':' => (num(&rest[0..2])?, num(&rest[3..5])?),
                4 => (num(&rest[0..2])?, num(&rest[2..4])?),
                2 => (num(rest)?, 0),
                _ => return None,
            };
            offset_min = (h * 60 + m) * if sign == b'+' { 1 } else { -1 };
        }
        _ => return None,
    }
    // The day must exist in its month: 2018-02-31 is an error, not March 3.
    if !(1..=12).contains(&month) || !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 || offset_min.abs() > 24 * 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute - offset_min) * 60_000 + second * 1000 + millis)
}

/// Days in a month of the proleptic Gregorian calendar.
fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats epoch milliseconds as `YYYY-MM-DD HH:MM:SS.fff` (UTC), the reference's style.
pub fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{millis:03}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// The inverse of `days_from_civil`.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_format_and_iso_8601_parse_to_the_same_instant() {
        let a = parse_timestamp_ms(b"2018-08-28 23:00:05.000").unwrap();
        let b = parse_timestamp_ms(b"2018-08-28T23:00:05Z").unwrap();
        let c = parse_timestamp_ms(b"2018-08-29T01:00:05+02:00").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a, 1_535_497_205_000);
        assert_eq!(
            parse_timestamp_ms(b"2018-08-28 23:00:05.25").unwrap() - a,
            250
        );
        assert_eq!(parse_timestamp_ms(b"2018-08-28 23:00").unwrap(), a - 5000);
    }

    #[test]
    fn malformed_timestamps_are_rejected() {
        for bad in [
            "",
            "2018-08-28",
            "28/08/2018 23:00:05",
            "2018-13-01 00:00:00",
            "2018-08-28 23:00:05x",
        ] {
            assert_eq!(parse_timestamp_ms(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn formatting_inverts_parsing() {
        for t in [
            "1970-01-01 00:00:00.000",
            "2018-08-28 23:00:05.123",
            "2000-02-29 12:34:56.789",
            "1969-12-31 23:59:59.999",
        ] {
            assert_eq!(format_ms(parse_timestamp_ms(t.as_bytes()).unwrap()), t);
        }
    }

    #[test]
    fn days_that_do_not_exist_in_their_month_are_not_timestamps() {
        for bad in [
            "2018-02-29 00:00:00",
            "2018-02-31 00:00:00",
            "2018-04-31T00:00:00Z",
            "1900-02-29 00:00",
        ] {
            assert_eq!(parse_timestamp_ms(bad.as_bytes()), None, "{bad}");
        }
        for good in [
            "2016-02-29 00:00:00",
            "2000-02-29 00:00",
            "2018-01-31 23:59:59.999",
            "2018-12-31T00:00Z",
        ] {
            assert!(parse_timestamp_ms(good.as_bytes()).is_some(), "{good}");
        }
        assert_eq!(
            parse_timestamp_ms(b"2018-03-01 00:00:00").map(|ms| ms - 86_400_000),
            parse_timestamp_ms(b"2018-02-28 00:00:00")
        );
    }
}
