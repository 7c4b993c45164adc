//! The one grammar of `ScoringSchedule.spec.schedule`: what Kubernetes CronJob accepts
//! (robfig/cron v3 `ParseStandard`, which the CronJob API validation and controller run), with
//! its meaning for every field, plus `7` as a second name for Sunday.
//!
//! The same tables build both the parser the controller runs ([`parse`]) and the CEL rule the
//! API server runs ([`schedule_cel`]), so the CRD admits exactly what the controller parses.
//!
//! CronJob's rules, reproduced exactly:
//! - five fields split on Unicode whitespace (leading and trailing whitespace is fine), or a
//!   descriptor starting the string: `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//!   `@midnight`, `@hourly` (lower case) or `@every <Go duration>`;
//! - a field is a comma-separated list; empty items are ignored (`1,,2`, `,5,`);
//! - an item is `*` or `?` (anything after a `-` following them is ignored, as in CronJob), a
//!   value, or a range `a-b` with `a <= b`, each optionally followed by `/step` (step >= 1);
//!   `a/step` means `a-max/step`;
//! - values are decimal integers with an optional `+` and any leading zeros; months and days of
//!   week also take their three-letter English names in any case;
//! - day of month and day of week: when either field contains a `*` or `?` item whose step is 1
//!   (`*`, `?`, `*/1`, `1,*`), a day must match both fields, otherwise either;
//! - a schedule containing `TZ` is refused (`TZ=`/`CRON_TZ=` prefixes: use `timeZone`).
//!
//! One CronJob-valid form is refused: U+0085 (NEL) as a field separator, which the API server's
//! CEL regex does not match reliably.
//!
//! The one extension: `7` is Sunday in the day-of-week field as a value or range bound
//! (`FRI-7`); `SUN` is always 0, so `FRI-SUN` is refused as in CronJob, and `*` and `a/step` still
//! stop at Saturday (6).

use std::fmt::Write as _;

/// What a schedule may be, for error messages (the CRD's and the controller's).
pub const ALLOWED: &str = "schedule must be 5 fields separated by spaces: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or JAN-DEC), day of week (0-7 or SUN-SAT; 0 and 7 are Sunday); each field a comma-separated list of *, ?, a value or a range a-b (a <= b), each optionally with a step /n (n >= 1; a/n means a-max/n); or one of @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly, @every <duration> (e.g. @every 1h30m); no TZ= or CRON_TZ= prefix (set timeZone instead)";

/// The descriptors CronJob accepts besides `@every`, exactly as written (lower case).
pub const DESCRIPTORS: [&str; 7] = [
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

/// Whitespace that separates fields: Go's `unicode.IsSpace` (equal to Rust's
/// `char::is_whitespace`) but U+0085 (NEL), written as the inside of a regex character class
/// without backslashes. The API server's CEL rule does not reliably match NEL (tested on
/// kube-apiserver 1.36), so NEL is refused everywhere: the one CronJob-valid form refused.
const WS_CLASS: &str =
    "[:space:]\u{a0}\u{1680}\u{2000}-\u{200a}\u{2028}\u{2029}\u{202f}\u{205f}\u{3000}";

/// Largest value Go's `strconv.Atoi` returns on a 64-bit machine.
const ATOI_MAX: u64 = i64::MAX as u64;

/// One of the five fields: its value bounds and names.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    name: &'static str,
    min: u64,
    /// The end of `*` and of `a/step`.
    max: u64,
    /// The largest value that may be written (7 for day of week, else `max`).
    written_max: u64,
    /// Lower-case names and their values.
    names: &'static [(&'static str, u64)],
}

const MONTH_NAMES: &[(&str, u64)] = &[
    ("jan", 1),
    ("feb", 2),
    ("mar", 3),
    ("apr", 4),
    ("may", 5),
    ("jun", 6),
    ("jul", 7),
    ("aug", 8),
    ("sep", 9),
    ("oct", 10),
    ("nov", 11),
    ("dec", 12),
];
const DAY_NAMES: &[(&str, u64)] = &[
    ("sun", 0),
    ("mon", 1),
    ("tue", 2),
    ("wed", 3),
    ("thu", 4),
    ("fri", 5),
    ("sat", 6),
];

const FIELDS: [Bounds; 5] = [
    Bounds {
        name: "minute",
        min: 0,
        max: 59,
        written_max: 59,
        names: &[],
    },
    Bounds {
        name: "hour",
        min: 0,
        max: 23,
        written_max: 23,
        names: &[],
    },
    Bounds {
        name: "day of month",
        min: 1,
        max: 31,
        written_max: 31,
        names: &[],
    },
    Bounds {
        name: "month",
        min: 1,
        max: 12,
        written_max: 12,
        names: MONTH_NAMES,
    },
    Bounds {
        name: "day of week",
        min: 0,
        max: 6,
        written_max: 7,
        names: DAY_NAMES,
    },
];

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// Five cron fields (descriptors other than `@every` are expanded to fields).
    Fields(Fields),
    /// `@every`: a fixed interval in whole seconds (at least 1, as in CronJob).
    Every {
        /// The interval.
        seconds: i64,
    },
}

/// The five fields as bit sets (bit n = value n), with CronJob's star flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields {
    /// Minutes 0-59.
    pub minute: u64,
    /// Hours 0-23.
    pub hour: u64,
    /// Days of month 1-31.
    pub dom: u64,
    /// Months 1-12.
    pub month: u64,
    /// Days of week 0-6 (Sunday = 0; a written 7 is folded onto 0).
    pub dow: u64,
    /// Day of month has a `*`/`?` item with step 1: days must then match both day fields.
    pub dom_star: bool,
    /// Day of week has a `*`/`?` item with step 1.
    pub dow_star: bool,
    /// The minute or hour field has a `*` or `?` item (any step): an interval schedule, whose
    /// slots follow real time across daylight-saving changes.
    pub interval: bool,
}

impl Fields {
    /// Whether a calendar day matches (CronJob's rule for the two day fields).
    pub fn day_matches(&self, month: u32, day: u32, weekday_from_sunday: u32) -> bool {
        if self.month & (1 << month) == 0 {
            return false;
        }
        let dom = self.dom & (1 << day) != 0;
        let dow = self.dow & (1 << weekday_from_sunday) != 0;
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }
}

/// Parses a schedule; the error says what is wrong (the caller adds [`ALLOWED`]).
pub fn parse(expr: &str) -> Result<Spec, String> {
    if expr.is_empty() {
        return Err("the schedule is empty".into());
    }
    if expr.contains("TZ") {
        return Err(
            "TZ or CRON_TZ in the schedule is not supported (as in CronJob); set timeZone instead"
                .into(),
        );
    }
    if expr.contains('\u{85}') {
        return Err("U+0085 (NEL) is not allowed; separate fields with spaces".into());
    }
    if let Some(rest) = expr.strip_prefix('@') {
        let fields = match rest {
            "yearly" | "annually" => "0 0 1 1 *",
            "monthly" => "0 0 1 * *",
            "weekly" => "0 0 * * 0",
            "daily" | "midnight" => "0 0 * * *",
            "hourly" => "0 * * * *",
            _ => {
                let Some(duration) = rest.strip_prefix("every ") else {
                    return Err(format!("unknown descriptor {expr:?}"));
                };
                let nanos = go_parse_duration(duration).map_err(|e| format!("@every: {e}"))?;
                // robfig's Every: under a second becomes a second; sub-seconds are dropped.
                let seconds = if nanos < 1_000_000_000 {
                    1
                } else {
                    nanos / 1_000_000_000
                };
                return Ok(Spec::Every {
                    seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
                });
            }
        };
        return parse(fields);
    }
    let fields: Vec<&str> = expr.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!("expected exactly 5 fields, found {}", fields.len()));
    }
    let mut parsed = [(0u64, false, false); 5];
    for (i, field) in fields.iter().enumerate() {
        parsed[i] = parse_field(field, &FIELDS[i])
            .map_err(|e| format!("{} field {field:?}: {e}", FIELDS[i].name))?;
    }
    let fold = |bits: u64| (bits & 0x7f) | ((bits >> 7) & 1);
    Ok(Spec::Fields(Fields {
        minute: parsed[0].0,
        hour: parsed[1].0,
        dom: parsed[2].0,
        month: parsed[3].0,
        dow: fold(parsed[4].0),
        dom_star: parsed[2].1,
        dow_star: parsed[4].1,
        interval: parsed[0].2 || parsed[1].2,
    }))
}

/// One field: (bits, CronJob's star flag, has a `*`/`?` item).
fn parse_field(field: &str, b: &Bounds) -> Result<(u64, bool, bool), String> {
    let (mut bits, mut star, mut wild) = (0u64, false, false);
    for item in field.split(',').filter(|i| !i.is_empty()) {
        let parts: Vec<&str> = item.split('/').collect();
        if parts.len() > 2 {
            return Err(format!("too many slashes in {item:?}"));
        }
        let low_high: Vec<&str> = parts[0].split('-').collect();
        let (start, mut end, mut item_star);
        if low_high[0] == "*" || low_high[0] == "?" {
            (start, end, item_star) = (b.min, b.max, true);
            wild = true;
        } else {
            start = value(low_high[0], b)?;
            end = match low_high.len() {
                1 => start,
                2 => value(low_high[1], b)?,
                _ => return Err(format!("too many hyphens in {item:?}")),
            };
            item_star = false;
        }
        let step = match parts.get(1) {
            None => 1,
            Some(step) => {
                let step = atoi(step)?;
                if low_high.len() == 1 {
                    end = b.max;
                }
                if step > 1 {
                    item_star = false;
                }
                step
            }
        };
        if start < b.min {
            return Err(format!(
                "{start} is below the minimum {} in {item:?}",
                b.min
            ));
        }
        if end > b.written_max {
            return Err(format!(
                "{end} is above the maximum {} in {item:?}",
                b.written_max
            ));
        }
        if start > end {
            return Err(format!(
                "range start {start} is after its end {end} in {item:?}"
            ));
        }
        if step == 0 {
            return Err(format!("the step must be at least 1 in {item:?}"));
        }
        let mut v = start;
        while v <= end {
            bits |= 1 << v;
            v = v.saturating_add(step);
        }
        star |= item_star;
    }
    Ok((bits, star, wild))
}

/// A value: a name of this field (case-insensitive as Go's `strings.ToLower`) or an integer.
fn value(s: &str, b: &Bounds) -> Result<u64, String> {
    let lower: String = s.chars().map(go_to_lower).collect();
    if let Some((_, v)) = b.names.iter().find(|(n, _)| *n == lower) {
        return Ok(*v);
    }
    atoi(s)
}

/// Go's `unicode.ToLower` as far as it can produce an ASCII letter: ASCII letters, and the two
/// non-ASCII letters that lower-case to ASCII (dotted capital I and the Kelvin sign).
fn go_to_lower(c: char) -> char {
    match c {
        '\u{130}' => 'i',
        '\u{212a}' => 'k',
        c => c.to_ascii_lowercase(),
    }
}

/// Go's `strconv.Atoi` for a non-negative result: an optional sign and decimal digits.
fn atoi(s: &str) -> Result<u64, String> {
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return Err(format!("{s:?} is not a number{}", name_hint()));
    }
    let mut v: u64 = 0;
    for c in digits.bytes() {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(c - b'0')))
            .filter(|v| *v <= ATOI_MAX + u64::from(neg))
            .ok_or_else(|| format!("{s:?} is out of range"))?;
    }
    if neg && v != 0 {
        return Err(format!("{s:?} is negative"));
    }
    Ok(v)
}

fn name_hint() -> &'static str {
    " (names: JAN-DEC in the month field, SUN-SAT in the day-of-week field)"
}

/// Go's `time.ParseDuration`, in nanoseconds (negative durations included).
pub fn go_parse_duration(orig: &str) -> Result<i128, String> {
    let invalid = || format!("invalid duration {orig:?}");
    let mut s = orig;
    let mut neg = false;
    if let Some(c) = s.chars().next()
        && (c == '-' || c == '+')
    {
        neg = c == '-';
        s = &s[1..];
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    const LIMIT: u128 = 1 << 63;
    let mut d: u128 = 0;
    while !s.is_empty() {
        let b = s.as_bytes();
        if !(b[0] == b'.' || b[0].is_ascii_digit()) {
            return Err(invalid());
        }
        // [0-9]*
        let int_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let mut v: u128 = 0;
        for c in &b[..int_len] {
            v = v * 10 + u128::from(c - b'0');
            if v > LIMIT {
                return Err(invalid());
            }
        }
        let pre = int_len > 0;
        s = &s[int_len..];
        // (\.[0-9]*)?
        let (mut f, mut scale, mut post) = (0u128, 1f64, false);
        if s.as_bytes().first() == Some(&b'.') {
            s = &s[1..];
            let frac_len = s.bytes().take_while(|c| c.is_ascii_digit()).count();
            let mut overflow = false;
            for c in s[..frac_len].bytes() {
                if overflow {
                    continue;
                }
                // Go stops accumulating once another digit would overflow an int64.
                if f > (LIMIT - 1) / 10 {
                    overflow = true;
                    continue;
                }
                let y = f * 10 + u128::from(c - b'0');
                if y > LIMIT - 1 {
                    overflow = true;
                    continue;
                }
                f = y;
                scale *= 10.0;
            }
            post = frac_len > 0;
            s = &s[frac_len..];
        }
        if !pre && !post {
            return Err(invalid());
        }
        let unit_len = s
            .bytes()
            .take_while(|c| !(*c == b'.' || c.is_ascii_digit()))
            .count();
        if unit_len == 0 {
            return Err(format!("missing unit in duration {orig:?}"));
        }
        let unit: u128 = match &s[..unit_len] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            u => return Err(format!("unknown unit {u:?} in duration {orig:?}")),
        };
        s = &s[unit_len..];
        if v > LIMIT / unit {
            return Err(invalid());
        }
        v *= unit;
        if f > 0 {
            v += (f as f64 * (unit as f64 / scale)) as u128;
            if v > LIMIT {
                return Err(invalid());
            }
        }
        d += v;
        if d > LIMIT {
            return Err(invalid());
        }
    }
    if neg {
        return Ok(-(d as i128));
    }
    if d > LIMIT - 1 {
        return Err(invalid());
    }
    Ok(d as i128)
}

/// The CEL rule of `spec.schedule`: true exactly when [`parse`] accepts the string.
///
/// Field expressions are one RE2 regex built from the same tables as the parser; `@every`
/// durations are checked by CEL's `duration()`, which is Go's `time.ParseDuration` (a duration
/// past ±292 years is then an evaluation error, still a refusal). No backslashes, so the rule
/// survives every quoting layer.
pub fn schedule_cel() -> String {
    let descriptors: Vec<String> = DESCRIPTORS.iter().map(|d| format!("'{d}'")).collect();
    format!(
        "!self.contains('TZ') && (self.startsWith('@') ? (self in [{}] || (self.startsWith('@every ') && self.substring(7).matches('^{}$') && duration(self.substring(7)) == duration(self.substring(7)))) : self.matches('{}'))",
        descriptors.join(", "),
        DURATION_RE,
        fields_regex()
    )
}

/// The syntax of Go's `time.ParseDuration` (range aside).
pub const DURATION_RE: &str =
    "[-+]?(?:0|(?:(?:[0-9]+(?:[.][0-9]*)?|[.][0-9]+)(?:ns|us|\u{b5}s|\u{3bc}s|ms|s|m|h))+)";

/// The anchored regex of a five-field schedule.
pub fn fields_regex() -> String {
    let ws = format!("[{WS_CLASS}]");
    let fields: Vec<String> = FIELDS.iter().map(field_regex).collect();
    format!("^{ws}*{}{ws}*$", fields.join(&format!("{ws}+")))
}

/// One field: commas only, or items separated by commas with empty items anywhere.
fn field_regex(b: &Bounds) -> String {
    let item = item_regex(b);
    format!("(?:,+|,*{item}(?:,+{item})*,*)")
}

fn item_regex(b: &Bounds) -> String {
    let step = format!("/[+]?0*{}", le_regex(ATOI_MAX));
    let wild = format!("[*?](?:-[^,/{WS_CLASS}\u{85}]*)?(?:{step})?");
    let all: Vec<u64> = (b.min..=b.written_max).collect();
    // `a/step` runs to `max`, so a written value past max cannot take a step.
    let steppable: Vec<u64> = (b.min..=b.max).collect();
    let mut ranges = Vec::new();
    for a in b.min..=b.written_max {
        let ends: Vec<u64> = (a..=b.written_max).collect();
        ranges.push(format!(
            "{}-{}",
            values_regex(&[a], b),
            values_regex(&ends, b)
        ));
    }
    format!(
        "(?:{wild}|{}|{}{step}|(?:{})(?:{step})?)",
        values_regex(&all, b),
        values_regex(&steppable, b),
        ranges.join("|")
    )
}

/// Any written form of any of `values`: `+`, leading zeros, decimal digits, or a name.
fn values_regex(values: &[u64], b: &Bounds) -> String {
    let mut alts: Vec<String> = Vec::new();
    let numbers: Vec<String> = values.iter().map(u64::to_string).collect();
    alts.push(format!("[+]?0*(?:{})", numbers.join("|")));
    for (name, v) in b.names {
        if values.contains(v) {
            alts.push(name.chars().map(letter_class).collect());
        }
    }
    format!("(?:{})", alts.join("|"))
}

/// The characters Go lower-cases to `c`.
fn letter_class(c: char) -> String {
    let mut class = format!("[{c}{}", c.to_ascii_uppercase());
    if c == 'i' {
        class.push('\u{130}');
    }
    if c == 'k' {
        class.push('\u{212a}');
    }
    class.push(']');
    class
}

/// Canonical decimal numbers (no leading zeros) from 1 to `n`.
fn le_regex(n: u64) -> String {
    let digits: Vec<u8> = n.to_string().bytes().map(|c| c - b'0').collect();
    let len = digits.len();
    let mut alts = Vec::new();
    if len > 1 {
        alts.push(format!("[1-9][0-9]{{0,{}}}", len - 2));
    }
    // Numbers of `len` digits: equal to n on a prefix, then a smaller digit, then anything.
    for i in 0..len {
        let lowest = if i == 0 { 1 } else { 0 };
        if digits[i] > lowest {
            let mut alt = String::new();
            for d in &digits[..i] {
                let _ = write!(alt, "{d}");
            }
            let _ = write!(alt, "[{lowest}-{}]", digits[i] - 1);
            if len - i - 1 > 0 {
                let _ = write!(alt, "[0-9]{{{}}}", len - i - 1);
            }
            alts.push(alt);
        }
    }
    alts.push(n.to_string());
    format!("(?:{})", alts.join("|"))
}

/// Whether the CEL rule of [`schedule_cel`] admits `s`, evaluated in Rust: the same regexes
/// and Go's duration parser. For tests (the real check runs on the API server).
#[cfg(test)]
pub(crate) fn cel_admits(s: &str, fields: &regex::Regex, duration: &regex::Regex) -> bool {
    if s.contains("TZ") {
        return false;
    }
    if s.starts_with('@') {
        return DESCRIPTORS.contains(&s)
            || s.strip_prefix("@every ")
                .is_some_and(|d| duration.is_match(d) && go_parse_duration(d).is_ok());
    }
    fields.is_match(s)
}

/// Schedules drawn from the grammar and from near misses of it (for tests: the grammar,
/// CEL-versus-parser and CronJob differential tests use them). Deterministic in `seed`.
pub fn sample_expressions(seed: u64, n: usize) -> Vec<String> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    (0..n).map(|_| sample_expression(&mut rng)).collect()
}

/// A small xorshift generator: tests need reproducible, not cryptographic, randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

fn sample_expression(rng: &mut Rng) -> String {
    match rng.below(20) {
        0 => {
            let d = rng.pick(&DESCRIPTORS);
            let odd = ["@HOURLY", "@reboot", "@every", " @daily", "@daily "];
            if rng.below(3) == 0 {
                rng.pick(&odd).to_string()
            } else {
                d.to_string()
            }
        }
        1 => {
            let parts = [
                "1h",
                "90m",
                "1h30m",
                "0",
                "-5m",
                "+2s",
                ".5h",
                "1.5s",
                "500ms",
                "1\u{b5}s",
                "2\u{3bc}s",
                "3us",
                "10ns",
                "1",
                "x",
                "1h ",
                "2562048h",
                "9223372036854775807ns",
                "1e3s",
                "",
            ];
            format!(
                "@every {}{}",
                rng.pick(&parts),
                if rng.below(4) == 0 {
                    rng.pick(&parts)
                } else {
                    ""
                }
            )
        }
        _ => {
            let count = match rng.below(12) {
                0 => 4,
                1 => 6,
                _ => 5,
            };
            let seps = [
                " ", " ", " ", "  ", "\t", "\u{a0}", "\u{3000}", "\n", "\u{85}",
            ];
            let mut out = String::new();
            if rng.below(6) == 0 {
                out.push_str(rng.pick(&seps));
            }
            for i in 0..count {
                if i > 0 {
                    out.push_str(rng.pick(&seps));
                }
                out.push_str(&sample_field(rng, &FIELDS[i.min(4)]));
            }
            if rng.below(6) == 0 {
                out.push_str(rng.pick(&seps));
            }
            out
        }
    }
}

fn sample_field(rng: &mut Rng, b: &Bounds) -> String {
    let items = 1 + rng.below(2);
    let mut out = String::new();
    if rng.below(10) == 0 {
        out.push(',');
    }
    for i in 0..items {
        if i > 0 {
            out.push_str(if rng.below(10) == 0 { ",," } else { "," });
        }
        out.push_str(&sample_item(rng, b));
    }
    if rng.below(12) == 0 {
        out.push(',');
    }
    out
}

fn sample_item(rng: &mut Rng, b: &Bounds) -> String {
    let base = match rng.below(8) {
        0 | 1 => rng
            .pick(&[
                "*", "*", "*", "*", "?", "?", "*-", "*-5", "?-x-y", "**", "L", "5#3", "1W", "TZ",
            ])
            .to_string(),
        2 | 3 => sample_value(rng, b),
        _ => {
            let (lo, hi) = (sample_value(rng, b), sample_value(rng, b));
            // Mostly in order, so that five fields in a row are often all valid.
            let (lo_v, hi_v) = (value(&lo, b), value(&hi, b));
            match (lo_v, hi_v) {
                (Ok(l), Ok(h)) if l > h && rng.below(5) > 0 => format!("{hi}-{lo}"),
                _ => format!("{lo}-{hi}"),
            }
        }
    };
    match rng.below(4) {
        0 => format!(
            "{base}/{}",
            rng.pick(&[
                "1",
                "2",
                "2",
                "5",
                "5",
                "15",
                "3",
                "0",
                "+3",
                "007",
                "-1",
                "",
                "9223372036854775807",
                "9223372036854775808",
                "x",
                "2/3"
            ])
        ),
        _ => base,
    }
}

fn sample_value(rng: &mut Rng, b: &Bounds) -> String {
    if !b.names.is_empty() && rng.below(3) == 0 {
        let (name, _) = b.names[rng.below(b.names.len())];
        return match rng.below(5) {
            0 => name.to_ascii_uppercase(),
            1 => name.replace('i', "\u{130}"),
            2 => name[..2].to_string(),
            _ => name.to_string(),
        };
    }
    let v = if rng.below(8) == 0 {
        (b.min + rng.next() % (b.written_max - b.min + 3)).saturating_sub(1)
    } else {
        b.min + rng.next() % (b.written_max - b.min + 1)
    };
    match rng.below(20) {
        0 => format!("+{v}"),
        1 => format!("00{v}"),
        2 => "-1".to_string(),
        3 => "+".to_string(),
        _ => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(expr: &str) -> Fields {
        match parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}")) {
            Spec::Fields(f) => f,
            Spec::Every { .. } => panic!("{expr} is @every"),
        }
    }

    #[test]
    fn cronjob_forms_parse_with_cronjob_meaning() {
        // N/step is N-max/step.
        assert_eq!(
            fields("5/15 * * * *").minute,
            (1 << 5) | (1 << 20) | (1 << 35) | (1 << 50)
        );
        // * as a list item, ? in any field, +, empty items, leading zeros, whitespace.
        assert_eq!(fields("*,15 * * * *").minute, (1u64 << 60) - 1);
        assert_eq!(fields(" ? ?  1,,2 +3 ,MON, ").hour, (1 << 24) - 1);
        assert_eq!(fields("007 0 1 1 *").minute, 1 << 7);
        // SUN is 0 wherever it stands; 7 is Sunday too.
        assert_eq!(fields("0 0 * * SUN-SUN").dow, 1);
        assert_eq!(fields("0 0 * * 0-SUN").dow, 1);
        assert_eq!(fields("0 0 * * FRI-7").dow, (1 << 5) | (1 << 6) | 1);
        assert_eq!(
            fields("0 0 * * 1/6").dow,
            1 << 1,
            "a/step stops at Saturday"
        );
        assert!(parse("0 0 * * FRI-SUN").is_err());
        // */1, ?-lists and *,x are stars: the other day field restricts alone.
        for (expr, dom_star, dow_star) in [
            ("0 0 1 * */1", false, true),
            ("0 0 */1 * MON", true, false),
            ("0 0 1,* * MON", true, false),
            ("0 0 1 * ?", false, true),
            ("0 0 */2 * MON", false, false),
        ] {
            let f = fields(expr);
            assert_eq!((f.dom_star, f.dow_star), (dom_star, dow_star), "{expr}");
        }
        // Anything after *- is ignored, as robfig does.
        assert_eq!(fields("*-junk/30 * * * *").minute, 1 | (1 << 30));
        assert_eq!(fields("@daily"), fields("0 0 * * *"));
        assert!(fields("*/15 3 * * *").interval && !fields("0,30 3 * * *").interval);
    }

    #[test]
    fn every_takes_go_durations_rounded_down_to_seconds_and_at_least_one() {
        for (expr, secs) in [
            ("@every 1h", 3600),
            ("@every 90m", 5400),
            ("@every 1h30m", 5400),
            ("@every 1.5s", 1),
            ("@every 0", 1),
            ("@every -5m", 1),
            ("@every 500ms", 1),
            ("@every .5h", 1800),
        ] {
            assert_eq!(parse(expr), Ok(Spec::Every { seconds: secs }), "{expr}");
        }
        for bad in [
            "@every",
            "@every ",
            "@every 1",
            "@every 1x",
            "@every  1h",
            "@every 1h ",
            "@every 9999999999h",
            "@EVERY 1h",
            "@HOURLY",
            "@hourly ",
            " @hourly",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn go_durations_match_go() {
        assert_eq!(
            go_parse_duration("2562047h"),
            Ok(2562047 * 3_600_000_000_000)
        );
        assert!(go_parse_duration("2562048h").is_err());
        assert_eq!(
            go_parse_duration("-9223372036854775808ns"),
            Ok(-9223372036854775808)
        );
        assert!(go_parse_duration("9223372036854775808ns").is_err());
        assert_eq!(go_parse_duration("1.000000001s"), Ok(1_000_000_001));
        assert_eq!(go_parse_duration("1\u{b5}s"), Ok(1000));
        assert!(go_parse_duration(".s").is_err() && go_parse_duration("1").is_err());
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        for (expr, needle) in [
            ("* * * *", "exactly 5 fields"),
            ("60 * * * *", "above the maximum 59"),
            ("0 0 0 * *", "below the minimum 1"),
            ("0 0 * * 8", "above the maximum 7"),
            ("5-3 * * * *", "after its end"),
            ("*/0 * * * *", "at least 1"),
            ("0 0 L * *", "not a number"),
            ("0 0 * * 5#3", "not a number"),
            ("1-2-3 * * * *", "too many hyphens"),
            ("*/2/3 * * * *", "too many slashes"),
            ("-1 * * * *", "not a number"),
            ("CRON_TZ=UTC 0 * * * *", "timeZone"),
            ("@reboot", "unknown descriptor"),
            ("", "empty"),
        ] {
            let err = parse(expr).unwrap_err();
            assert!(err.contains(needle), "{expr:?}: {err}");
        }
    }

    fn rule_regexes() -> (regex::Regex, regex::Regex) {
        (
            regex::Regex::new(&fields_regex()).unwrap(),
            regex::Regex::new(&format!("^{DURATION_RE}$")).unwrap(),
        )
    }

    #[test]
    fn the_cel_rule_admits_exactly_what_the_parser_accepts() {
        let (fields, duration) = rule_regexes();
        let mut hand: Vec<String> = [
            "5/15 * * * *",
            "*,15 * * * *",
            "0 0 1,* * MON",
            "@every 1h",
            "@every 90m",
            "? ? * * *",
            "+5 * * * *",
            "1,,2 * * * *",
            "005 * * * *",
            " 0 * * * * ",
            "0 0 * * SUN-SUN",
            "0 0 * * 0-SUN",
            "0 0 1 * */1",
            "0 0 */1 * MON",
            "0 0 * * FRI-SUN",
            "0 0 * * FRI-7",
            "0 0 * * 7",
            "0 0 * * 7/1",
            "0 0 * * fr\u{130}",
            ", * * * *",
            "*-junk * * * *",
            "*-TZ * * * *",
            "0\u{a0}0 * * *",
            "0 0 31 2 *",
            "@every 2562047h",
            "@every 2562048h",
            "59 23 31 12 6",
            "60 * * * *",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        hand.extend(sample_expressions(1, 20_000));
        let (mut accepted, mut refused) = (0, 0);
        for expr in &hand {
            let parsed = parse(expr).is_ok();
            assert_eq!(
                cel_admits(expr, &fields, &duration),
                parsed,
                "{expr:?}: parser {:?}",
                parse(expr)
            );
            if parsed { accepted += 1 } else { refused += 1 }
        }
        // The sample exercises both sides of the grammar.
        assert!(
            accepted > 1_000 && refused > 1_000,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn the_step_bound_regex_is_exact() {
        let re = regex::Regex::new(&format!("^{}$", le_regex(ATOI_MAX))).unwrap();
        for ok in [
            "1",
            "9",
            "10",
            "922337203685477580",
            "9223372036854775807",
            "8999999999999999999",
            "9223372036854775799",
        ] {
            assert!(re.is_match(ok), "{ok}");
        }
        for bad in [
            "0",
            "9223372036854775808",
            "9300000000000000000",
            "10000000000000000000",
            "01",
        ] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }
}
