//! Cron expressions: parsing the classic five fields and finding the next due time. Pure, no
//! clock; every time is unix seconds in **UTC** (Kura schedules have no time zone).
//!
//! ```text
//! ┌ minute        0-59
//! │ ┌ hour        0-23
//! │ │ ┌ day of month 1-31
//! │ │ │ ┌ month    1-12 or jan-dec
//! │ │ │ │ ┌ day of week 0-7 or sun-sat (0 and 7 are Sunday)
//! 0 2 1 * *       02:00 on the first of every month
//! ```
//!
//! Each field is `*` or a comma-separated list of `N`, `A-B`, `*/S`, `A-B/S` or `A/S` (from A
//! to the field's maximum, every S). Names are case-insensitive. Day of month and day of week
//! follow Vixie cron: if both are restricted (neither starts with `*`) a day matches when
//! *either* matches; otherwise both must (so the restricted one decides).

use kura_imaging::time::{civil_from_days, days_from_civil, split_day, weekday, DAY};
use std::fmt;
use std::str::FromStr;

/// A parse error: which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cron expression {expr:?}: {reason}")]
pub struct CronError {
    pub expr: String,
    pub reason: String,
}

/// A parsed cron expression. `Display` gives back the text it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    minutes: u64,
    hours: u64,
    doms: u64,
    months: u64,
    /// Bit 0 = Sunday ... bit 6 = Saturday (7 is folded onto 0).
    dows: u64,
    dom_star: bool,
    dow_star: bool,
}

const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The value of the first name (months start at 1, days at 0).
    names_from: u32,
}

const FIELDS: [Field; 5] = [
    Field { name: "minute", min: 0, max: 59, names: &[], names_from: 0 },
    Field { name: "hour", min: 0, max: 23, names: &[], names_from: 0 },
    Field { name: "day of month", min: 1, max: 31, names: &[], names_from: 0 },
    Field { name: "month", min: 1, max: 12, names: &MONTHS, names_from: 1 },
    Field { name: "day of week", min: 0, max: 7, names: &DAYS, names_from: 0 },
];

impl Field {
    fn value(&self, s: &str) -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + self.names_from);
        }
        let v: u32 = s.parse().map_err(|_| format!("{} {s:?} is not a number", self.name))?;
        if v < self.min || v > self.max {
            return Err(format!("{} {v} is outside {}-{}", self.name, self.min, self.max));
        }
        Ok(v)
    }

    /// The set of values `text` selects, as bits.
    fn parse(&self, text: &str) -> Result<u64, String> {
        let mut bits = 0u64;
        for item in text.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((r, s)) => {
                    let step: u32 = s.parse().map_err(|_| format!("{} step {s:?} is not a number", self.name))?;
                    if step == 0 {
                        return Err(format!("{} step must be at least 1", self.name));
                    }
                    (r, Some(step))
                }
                None => (item, None),
            };
            let (lo, hi) = if range == "*" {
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                let (a, b) = (self.value(a)?, self.value(b)?);
                if a > b {
                    return Err(format!("{} range {range:?} runs backwards", self.name));
                }
                (a, b)
            } else if range.is_empty() {
                return Err(format!("empty item in the {} field", self.name));
            } else {
                let v = self.value(range)?;
                // `A/S` means from A to the maximum, every S.
                (v, if step.is_some() { self.max } else { v })
            };
            let step = step.unwrap_or(1);
            let mut v = lo;
            while v <= hi {
                bits |= 1 << v;
                v += step;
            }
        }
        Ok(bits)
    }
}

impl FromStr for Cron {
    type Err = CronError;

    fn from_str(expr: &str) -> Result<Cron, CronError> {
        let err = |reason: String| CronError { expr: expr.to_string(), reason };
        let parts: Vec<&str> = expr.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), found {}",
                parts.len()
            )));
        }
        let mut sets = [0u64; 5];
        for (i, (f, p)) in FIELDS.iter().zip(&parts).enumerate() {
            sets[i] = f.parse(p).map_err(err)?;
        }
        // Sunday is 0 and 7.
        let dows = (sets[4] | (sets[4] >> 7)) & 0x7f;
        Ok(Cron {
            text: parts.join(" "),
            minutes: sets[0],
            hours: sets[1],
            doms: sets[2],
            months: sets[3],
            dows,
            dom_star: parts[2].starts_with('*'),
            dow_star: parts[4].starts_with('*'),
        })
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// How far ahead [`Cron::next_after`] looks before deciding an expression never matches
/// (Feb 29 can be 8 years away).
const HORIZON_YEARS: i64 = 10;

impl Cron {
    fn day_matches(&self, days: i64, d: u32) -> bool {
        let dow = weekday(days);
        let dom_ok = self.doms & (1 << d) != 0;
        let dow_ok = self.dows & (1 << dow) != 0;
        if self.dom_star || self.dow_star {
            dom_ok && dow_ok
        } else {
            dom_ok || dow_ok
        }
    }

    /// Whether the minute starting at `t` (seconds ignored) is a due time.
    pub fn matches(&self, t: i64) -> bool {
        let (days, secs) = split_day(t);
        let (_, m, d) = civil_from_days(days);
        self.months & (1 << m) != 0
            && self.day_matches(days, d)
            && self.hours & (1 << (secs / 3600)) != 0
            && self.minutes & (1 << (secs % 3600 / 60)) != 0
    }

    /// The first due time strictly after `t` (a whole minute, UTC), or `None` if the expression
    /// never matches within ten years (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, t: i64) -> Option<i64> {
        let mut cur = t.div_euclid(60) * 60 + 60;
        let (start_year, _, _) = civil_from_days(split_day(cur).0);
        loop {
            let (days, secs) = split_day(cur);
            let (y, m, d) = civil_from_days(days);
            if y > start_year + HORIZON_YEARS {
                return None;
            }
            if self.months & (1 << m) == 0 {
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                cur = days_from_civil(ny, nm, 1) * DAY;
                continue;
            }
            if !self.day_matches(days, d) {
                cur = (days + 1) * DAY;
                continue;
            }
            let (h, min) = (secs / 3600, secs % 3600 / 60);
            if self.hours & (1 << h) == 0 {
                cur = days * DAY + (h + 1) * 3600;
                continue;
            }
            if self.minutes & (1 << min) == 0 {
                cur += 60;
                continue;
            }
            return Some(cur);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kura_imaging::time::{format_rfc3339, parse_rfc3339};
    use proptest::prelude::*;

    fn at(s: &str) -> i64 {
        parse_rfc3339(s).unwrap()
    }

    fn next(expr: &str, after: &str) -> Option<String> {
        let c: Cron = expr.parse().unwrap();
        c.next_after(at(after)).map(format_rfc3339)
    }

    #[test]
    fn examples() {
        let cases = [
            ("0 2 1 * *", "2026-01-15T10:00:00Z", "2026-02-01T02:00:00Z"),
            ("0 2 1 * *", "2026-02-01T02:00:00Z", "2026-03-01T02:00:00Z"),
            ("0 2 1 * *", "2026-02-01T01:59:59Z", "2026-02-01T02:00:00Z"),
            ("0 2 1 * *", "2026-12-05T00:00:00Z", "2027-01-01T02:00:00Z"),
            ("*/15 * * * *", "2026-01-01T00:07:00Z", "2026-01-01T00:15:00Z"),
            ("* * * * *", "2026-01-01T00:07:30Z", "2026-01-01T00:08:00Z"),
            ("30 4 * * mon-fri", "2026-01-02T05:00:00Z", "2026-01-05T04:30:00Z"), // Fri -> Mon
            ("0 0 * * 7", "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"),        // Sunday
            ("0 0 * * SUN", "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"),
            ("0 0 29 feb *", "2026-01-01T00:00:00Z", "2028-02-29T00:00:00Z"),
            ("0 12 13 * fri", "2026-01-01T00:00:00Z", "2026-01-02T12:00:00Z"), // Vixie OR: a Friday
            ("0 12 13 * fri", "2026-01-02T12:00:00Z", "2026-01-09T12:00:00Z"),
            ("0 12 13 * fri", "2026-01-09T12:00:00Z", "2026-01-13T12:00:00Z"), // the 13th, a Tuesday
            ("0 12 */10 * fri", "2026-01-01T00:00:00Z", "2026-05-01T12:00:00Z"), // dom starts with *: AND
            ("5-10/5,59 23 31 dec *", "2026-06-01T00:00:00Z", "2026-12-31T23:05:00Z"),
            ("10/20 * * * *", "2026-01-01T00:11:00Z", "2026-01-01T00:30:00Z"),
            ("0 0 1 jan,jul *", "2026-02-01T00:00:00Z", "2026-07-01T00:00:00Z"),
        ];
        for (expr, after, want) in cases {
            assert_eq!(next(expr, after).as_deref(), Some(want), "{expr} after {after}");
        }
        assert_eq!(next("0 0 30 2 *", "2026-01-01T00:00:00Z"), None);
        assert_eq!(next("0 12 */10 * fri", "2026-05-01T12:00:00Z").as_deref(), Some("2026-07-31T12:00:00Z"));
    }

    #[test]
    fn bad_expressions_are_refused_naming_the_problem() {
        for (bad, says) in [
            ("", "5 fields"),
            ("* * * *", "5 fields"),
            ("* * * * * *", "5 fields"),
            ("60 * * * *", "minute 60 is outside 0-59"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day of month 0"),
            ("* * * 13 *", "month 13"),
            ("* * * * 8", "day of week 8"),
            ("*/0 * * * *", "step"),
            ("5-1 * * * *", "backwards"),
            ("a * * * *", "not a number"),
            ("1,,2 * * * *", "empty"),
            ("* * * foo *", "month \"foo\""),
        ] {
            let e = bad.parse::<Cron>().unwrap_err();
            assert!(e.to_string().contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["0 2 1 * *", "*/5 1-3 * jan-mar mon,wed", "0  0 * * *"] {
            let c: Cron = s.parse().unwrap();
            let again: Cron = c.to_string().parse().unwrap();
            assert_eq!(c, again);
        }
    }

    fn field(max: u32, min: u32) -> impl Strategy<Value = String> {
        prop_oneof![
            Just("*".to_string()),
            (min..=max).prop_map(|v| v.to_string()),
            (min..=max, min..=max).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
            (1..=max.max(1)).prop_map(|s| format!("*/{s}")),
            prop::collection::vec(min..=max, 1..4).prop_map(|v| v
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// `next_after` is strictly later, matches, and no minute in between matches (checked
        /// minute by minute, within 40 days).
        #[test]
        fn next_after_is_the_first_match(
            minute in field(59, 0), hour in field(23, 0), dom in field(31, 1), dow in field(7, 0),
            t in 1_700_000_000i64..1_900_000_000,
        ) {
            let expr = format!("{minute} {hour} {dom} * {dow}");
            let c: Cron = expr.parse().unwrap();
            let n = c.next_after(t).expect("every month has a match within the horizon");
            prop_assert!(n > t && n % 60 == 0);
            prop_assert!(c.matches(n), "{expr}: {n} does not match");
            let mut m = t.div_euclid(60) * 60 + 60;
            let stop = n.min(t + 40 * DAY);
            while m < stop {
                prop_assert!(!c.matches(m), "{expr}: {m} matches before {n}");
                m += 60;
            }
        }
    }
}
