//! UTC timestamps: RFC 3339 parsing and formatting, and the calendar arithmetic behind them.
//!
//! Every time in Kura is unix seconds (`i64`) in UTC; this module is the one place that turns
//! them into calendar dates and text and back. Formatting always writes UTC with a `Z`
//! (`2026-11-25T17:14:41Z`, or with nine fraction digits for manifests); parsing accepts any
//! RFC 3339 date-time (fractional seconds are truncated, numeric offsets are applied) and refuses
//! everything else with a [`TimeError`] naming the problem. Dates are proleptic Gregorian,
//! converted with Howard Hinnant's `days_from_civil` / `civil_from_days` algorithms.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds in a (UTC, leap-second-free) day.
pub const DAY: i64 = 86_400;

/// The earliest time RFC 3339 can write: `0000-01-01T00:00:00Z`.
pub const MIN_RFC3339: i64 = -62_167_219_200;
/// The latest time RFC 3339 can write: `9999-12-31T23:59:59Z`.
pub const MAX_RFC3339: i64 = 253_402_300_799;

/// Text that is not an RFC 3339 date-time, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not an RFC 3339 time like 2026-01-01T02:00:00Z: {reason}")]
pub struct TimeError {
    pub input: String,
    pub reason: String,
}

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d` (month 1-12, day 1-31; out of
/// range values are not checked).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date (year, month 1-12, day 1-31) of a day number since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The day of the week of a day number since 1970-01-01, numbered as cron does: 0 = Sunday
/// … 6 = Saturday.
pub fn weekday(days: i64) -> u32 {
    (days + 4).rem_euclid(7) as u32 // 1970-01-01 was a Thursday
}

/// Whether `y` is a Gregorian leap year.
pub fn is_leap_year(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

/// The number of days in month `m` (1-12) of year `y`.
pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap_year(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Splits a unix time into its day number since 1970-01-01 and the second of that day.
pub fn split_day(t: i64) -> (i64, i64) {
    (t.div_euclid(DAY), t.rem_euclid(DAY))
}

/// Formats a unix time as RFC 3339 UTC with second precision (`2026-11-25T17:14:41Z`). Times
/// outside the years 0000-9999, which RFC 3339 cannot write, are clamped to that range.
pub fn format_rfc3339(unix_secs: i64) -> String {
    let (days, secs) = split_day(unix_secs.clamp(MIN_RFC3339, MAX_RFC3339));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// Formats a time as RFC 3339 UTC with nanoseconds (`2026-11-25T17:14:41.123456789Z`), as
/// manifests record their creation: two captures of the same disk in the same second still get
/// distinct manifests.
pub fn format_rfc3339_nanos(t: SystemTime) -> String {
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).unwrap_or(i64::MAX), d.subsec_nanos()),
        Err(e) => {
            // Before 1970: floor to the whole second, the fraction counts forward from it.
            let d = e.duration();
            let back = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (-back, 0),
                n => (-back - 1, 1_000_000_000 - n),
            }
        }
    };
    let (secs, nanos) = if (MIN_RFC3339..=MAX_RFC3339).contains(&secs) { (secs, nanos) } else { (secs, 0) };
    let s = format_rfc3339(secs);
    format!("{}.{nanos:09}Z", s.trim_end_matches('Z'))
}

/// Parses an RFC 3339 date-time (`YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `t`, `z` and a
/// space for `T` are accepted as the RFC allows) into unix seconds. A fraction is truncated, an
/// offset is applied. Leap seconds (`:60`) are refused: a unix time cannot name them.
pub fn parse_rfc3339(s: &str) -> Result<i64, TimeError> {
    let fail = |reason: &str| TimeError { input: s.to_string(), reason: reason.to_string() };
    let b = s.as_bytes();
    // Fixed-width digits at `at..at + n`.
    let digits = |at: usize, n: usize, what: &str| -> Result<i64, TimeError> {
        match b.get(at..at + n) {
            Some(d) if d.iter().all(u8::is_ascii_digit) => Ok(d.iter().fold(0i64, |v, c| v * 10 + i64::from(c - b'0'))),
            _ => Err(fail(&format!("the {what} is not {n} digits"))),
        }
    };
    let sep = |at: usize, want: &[u8], what: &str| -> Result<(), TimeError> {
        match b.get(at) {
            Some(c) if want.contains(c) => Ok(()),
            _ => Err(fail(&format!("expected {what} at position {}", at + 1))),
        }
    };

    let year = digits(0, 4, "year")?;
    sep(4, b"-", "'-' after the year")?;
    let month = digits(5, 2, "month")?;
    sep(7, b"-", "'-' after the month")?;
    let day = digits(8, 2, "day")?;
    sep(10, b"Tt ", "'T' between the date and the time")?;
    let hour = digits(11, 2, "hour")?;
    sep(13, b":", "':' after the hour")?;
    let minute = digits(14, 2, "minute")?;
    sep(16, b":", "':' after the minute")?;
    let second = digits(17, 2, "second")?;

    if !(1..=12).contains(&month) {
        return Err(fail(&format!("month {month} is outside 01-12")));
    }
    let month = month as u32;
    let last = days_in_month(year, month);
    if day < 1 || day > i64::from(last) {
        return Err(fail(&format!("day {day} is outside 01-{last} for {year:04}-{month:02}")));
    }
    if hour > 23 {
        return Err(fail(&format!("hour {hour} is outside 00-23")));
    }
    if minute > 59 {
        return Err(fail(&format!("minute {minute} is outside 00-59")));
    }
    if second == 60 {
        return Err(fail("second 60 (a leap second) has no unix time"));
    }
    if second > 59 {
        return Err(fail(&format!("second {second} is outside 00-59")));
    }

    let mut at = 19;
    if b.get(at) == Some(&b'.') {
        let n = b[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return Err(fail("the fraction after '.' has no digits"));
        }
        at += 1 + n;
    }
    let offset = match b.get(at) {
        None => return Err(fail("no time zone offset (end with Z for UTC)")),
        Some(b'Z' | b'z') => {
            at += 1;
            0
        }
        Some(&c @ (b'+' | b'-')) => {
            let oh = digits(at + 1, 2, "offset hour")?;
            sep(at + 3, b":", "':' in the offset")?;
            let om = digits(at + 4, 2, "offset minute")?;
            if oh > 23 || om > 59 {
                return Err(fail(&format!("offset {oh:02}:{om:02} is out of range")));
            }
            at += 6;
            let o = oh * 3600 + om * 60;
            if c == b'-' {
                -o
            } else {
                o
            }
        }
        Some(_) => return Err(fail(&format!("expected a fraction, Z or an offset at position {}", at + 1))),
    };
    if at != b.len() {
        return Err(fail(&format!("unexpected text after the time zone at position {}", at + 1)));
    }
    let local = days_from_civil(year, month, day as u32) * DAY + hour * 3600 + minute * 60 + second;
    Ok(local - offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn formats() {
        assert_eq!(format_rfc3339(1_795_626_881), "2026-11-25T17:14:41Z");
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_rfc3339(MIN_RFC3339), "0000-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(MAX_RFC3339), "9999-12-31T23:59:59Z");
        assert_eq!(format_rfc3339(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(format_rfc3339(i64::MIN), "0000-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_626_881) + Duration::from_nanos(5);
        assert_eq!(format_rfc3339_nanos(t), "2026-11-25T17:14:41.000000005Z");
        assert_eq!(format_rfc3339_nanos(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let before = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(format_rfc3339_nanos(before), "1969-12-31T23:59:58.500000000Z");
    }

    #[test]
    fn parses_what_manifests_and_the_rfc_write() {
        for (s, want) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2026-11-25T17:14:41Z", 1_795_626_881),
            ("2026-11-25T17:14:41.123Z", 1_795_626_881),
            ("2026-11-25T17:14:41.000000005Z", 1_795_626_881),
            ("2026-11-25t17:14:41z", 1_795_626_881),
            ("2026-11-25 17:14:41Z", 1_795_626_881),
            ("2026-11-25T19:14:41+02:00", 1_795_626_881),
            ("2026-11-25T12:44:41.9-04:30", 1_795_626_881),
            ("2026-11-25T17:14:41-00:00", 1_795_626_881),
            ("2000-02-29T00:00:00Z", 951_782_400),
            ("1969-12-31T23:59:59Z", -1),
            ("0000-01-01T00:00:00Z", MIN_RFC3339),
            ("9999-12-31T23:59:59Z", MAX_RFC3339),
        ] {
            assert_eq!(parse_rfc3339(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn refuses_bad_input_naming_the_problem() {
        for (bad, says) in [
            ("", "year is not 4 digits"),
            ("garbage", "year is not 4 digits"),
            ("26-11-25T17:14:41Z", "year is not 4 digits"),
            ("2026/11/25T17:14:41Z", "'-' after the year"),
            ("2026-1-25T17:14:41Z", "month is not 2 digits"),
            ("2026-00-25T17:14:41Z", "month 0 is outside"),
            ("2026-13-25T17:14:41Z", "month 13 is outside"),
            ("2026-11-00T17:14:41Z", "day 0 is outside 01-30"),
            ("2026-11-31T17:14:41Z", "day 31 is outside 01-30"),
            ("2026-02-29T00:00:00Z", "day 29 is outside 01-28"),
            ("2100-02-29T00:00:00Z", "day 29 is outside 01-28"),
            ("2026-11-25", "'T' between the date and the time"),
            ("2026-11-25X17:14:41Z", "'T' between the date and the time"),
            ("2026-11-25T24:00:00Z", "hour 24"),
            ("2026-11-25T17:60:00Z", "minute 60"),
            ("2026-11-25T17:14:60Z", "leap second"),
            ("2026-11-25T17:14:61Z", "second 61"),
            ("2026-11-25T17:14:4", "second is not 2 digits"),
            ("2026-11-25T17:14:41", "no time zone offset"),
            ("2026-11-25T17:14:41.Z", "fraction after '.' has no digits"),
            ("2026-11-25T17:14:41 Z", "expected a fraction, Z or an offset"),
            ("2026-11-25T17:14:41+0200", "':' in the offset"),
            ("2026-11-25T17:14:41+2", "offset hour"),
            ("2026-11-25T17:14:41+24:00", "offset 24:00 is out of range"),
            ("2026-11-25T17:14:41ZZ", "unexpected text after the time zone"),
            ("2026-11-25T17:14:41Z\n", "unexpected text"),
            (" 2026-11-25T17:14:41Z", "year is not 4 digits"),
            ("+026-11-25T17:14:41Z", "year is not 4 digits"),
            ("２026-11-25T17:14:41Z", "year is not 4 digits"),
        ] {
            let e = parse_rfc3339(bad).expect_err(bad);
            assert!(e.to_string().contains(says), "{bad:?}: {e}");
            assert!(e.to_string().contains(&format!("{bad:?}")), "{bad:?}: {e}");
        }
    }

    #[test]
    fn civil_agrees_with_the_manifest_time_format() {
        for s in ["1970-01-01T00:00:00Z", "2000-02-29T00:00:00Z", "2026-12-31T00:00:00Z", "2100-03-01T00:00:00Z"] {
            let (days, secs) = split_day(parse_rfc3339(s).unwrap());
            assert_eq!(secs, 0);
            let (y, m, d) = civil_from_days(days);
            assert_eq!(format!("{y:04}-{m:02}-{d:02}T00:00:00Z"), s);
        }
    }

    #[test]
    fn weekdays() {
        assert_eq!(weekday(0), 4); // 1970-01-01, a Thursday
        assert_eq!(weekday(days_from_civil(2026, 1, 4)), 0); // a Sunday
        assert_eq!(weekday(days_from_civil(1969, 12, 27)), 6); // a Saturday
    }

    proptest! {
        #[test]
        fn civil_round_trips(days in -800_000i64..800_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            prop_assert_eq!(days_from_civil(y, m, d), days);
        }

        #[test]
        fn next_day_is_one_later(days in -800_000i64..800_000) {
            let (y, m, d) = civil_from_days(days);
            let next = if d < days_in_month(y, m) { (y, m, d + 1) } else if m < 12 { (y, m + 1, 1) } else { (y + 1, 1, 1) };
            prop_assert_eq!(civil_from_days(days + 1), next);
            prop_assert_eq!(weekday(days + 1), (weekday(days) + 1) % 7);
        }

        #[test]
        fn parse_inverts_format(t in MIN_RFC3339..=MAX_RFC3339, nanos in 0u32..1_000_000_000) {
            let s = format_rfc3339(t);
            prop_assert_eq!(parse_rfc3339(&s), Ok(t));
            if t >= 0 {
                let st = UNIX_EPOCH + Duration::new(t as u64, nanos);
                let n = format_rfc3339_nanos(st);
                prop_assert_eq!(&n[..19], &s[..19]);
                prop_assert_eq!(parse_rfc3339(&n), Ok(t));
            }
        }

        #[test]
        fn offsets_name_the_same_instant(t in 0i64..4_000_000_000, off in -1439i64..=1439) {
            let local = format_rfc3339(t + off * 60);
            let sign = if off < 0 { '-' } else { '+' };
            let s = format!("{}{sign}{:02}:{:02}", &local[..19], off.abs() / 60, off.abs() % 60);
            prop_assert_eq!(parse_rfc3339(&s), Ok(t));
        }

        #[test]
        fn garbage_never_panics(s in "\\PC{0,40}") {
            let _ = parse_rfc3339(&s);
        }

        #[test]
        fn near_misses_never_panic(s in "[0-9:TZ.+ -]{0,30}") {
            if let Ok(t) = parse_rfc3339(&s) {
                prop_assert!((MIN_RFC3339 - DAY..=MAX_RFC3339 + DAY).contains(&t));
            }
        }
    }
}
