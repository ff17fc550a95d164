//! FHIR date, dateTime and instant values as half-open millisecond ranges `[lo, hi)`.
//!
//! A value denotes the whole interval of its precision: `2024` is the year, `2024-03-01` the
//! day, `2024-03-01T10:00:00Z` that second. Search prefixes compare these intervals as the
//! specification prescribes. Values without a zone are taken as UTC (the platform runs on one
//! clock; a configurable zone can come later).

use std::time::{SystemTime, UNIX_EPOCH};

/// A half-open interval `[lo, hi)` of milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub lo: i64,
    pub hi: i64,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Whether `y` is a leap year (proleptic Gregorian).
pub fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

/// The days of month `m` of year `y`; 0 for a month that is not one.
pub fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Whether `y-m-d` is a calendar date.
pub fn is_date(y: i64, m: u32, d: u32) -> bool {
    d >= 1 && d <= days_in_month(y, m)
}

/// Today's civil date (UTC).
pub fn today() -> (i64, u32, u32) {
    civil_from_days(now_ms().div_euclid(DAY))
}

const DAY: i64 = 86_400_000;

fn num(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a FHIR date, dateTime or instant (also the minute-precision form search allows).
pub fn parse(s: &str) -> Option<Range> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let ys = parts.next()?;
    if ys.len() != 4 {
        return None;
    }
    let y = num(ys)? as i64;
    let m = match parts.next() {
        Some(p) if p.len() == 2 => Some(num(p).filter(|m| (1..=12).contains(m))?),
        Some(_) => return None,
        None => None,
    };
    let d = match parts.next() {
        Some(p) if p.len() == 2 && m.is_some() => {
            Some(num(p).filter(|d| *d >= 1 && *d <= days_in_month(y, m.unwrap_or(1)))?)
        }
        Some(_) => return None,
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    let Some(time) = time else {
        return Some(match (m, d) {
            (None, _) => Range {
                lo: days_from_civil(y, 1, 1) * DAY,
                hi: days_from_civil(y + 1, 1, 1) * DAY,
            },
            (Some(m), None) => {
                let lo = days_from_civil(y, m, 1) * DAY;
                Range {
                    lo,
                    hi: lo + days_in_month(y, m) as i64 * DAY,
                }
            }
            (Some(m), Some(d)) => {
                let lo = days_from_civil(y, m, d) * DAY;
                Range { lo, hi: lo + DAY }
            }
        });
    };
    let d = d?;
    let m = m?;
    // Split off the zone: Z, +hh:mm or -hh:mm.
    let (clock, offset_min) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0i64)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (c, z) = time.split_at(i);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (hh, mm) = z[1..].split_once(':')?;
        if hh.len() != 2 || mm.len() != 2 {
            return None;
        }
        let (hh, mm) = (num(hh)? as i64, num(mm)? as i64);
        if hh > 14 || mm > 59 {
            return None;
        }
        (c, sign * (hh * 60 + mm))
    } else {
        (time, 0)
    };
    let mut cp = clock.split(':');
    let hh = cp
        .next()
        .filter(|p| p.len() == 2)
        .and_then(num)
        .filter(|h| *h < 24)?;
    let mi = cp
        .next()
        .filter(|p| p.len() == 2)
        .and_then(num)
        .filter(|m| *m < 60)?;
    let (sec, frac_ms, width) = match cp.next() {
        None => (0, 0, 60_000),
        Some(sp) => {
            let (whole, frac) = match sp.split_once('.') {
                Some((w, f)) => (w, Some(f)),
                None => (sp, None),
            };
            let sec = Some(whole)
                .filter(|p| p.len() == 2)
                .and_then(num)
                .filter(|s| *s < 60)?;
            match frac {
                None => (sec, 0, 1000),
                Some(f) => {
                    num(f)?;
                    let ms: String = f.chars().chain("000".chars()).take(3).collect();
                    (sec, ms.parse::<i64>().ok()?, 1)
                }
            }
        }
    };
    if cp.next().is_some() {
        return None;
    }
    let lo = days_from_civil(y, m, d) * DAY
        + (hh as i64 * 3600 + mi as i64 * 60 + sec as i64) * 1000
        + frac_ms
        - offset_min * 60_000;
    Some(Range { lo, hi: lo + width })
}

/// Formats milliseconds since the epoch as a FHIR instant (`2024-03-01T10:00:00.123Z`).
pub fn format_instant(ms: i64) -> String {
    let days = ms.div_euclid(DAY);
    let rem = ms.rem_euclid(DAY);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, f) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{f:03}Z")
}

/// Formats as an HTTP date (`Last-Modified`).
pub fn format_http(ms: i64) -> String {
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = ms.div_euclid(DAY);
    let rem = ms.rem_euclid(DAY) / 1000;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        WD[days.rem_euclid(7) as usize],
        MO[m as usize - 1],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The current time in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_each_precision() {
        let y = parse("2024").unwrap();
        assert_eq!(format_instant(y.lo), "2024-01-01T00:00:00.000Z");
        assert_eq!(format_instant(y.hi), "2025-01-01T00:00:00.000Z");
        let m = parse("2024-02").unwrap();
        assert_eq!(format_instant(m.hi), "2024-03-01T00:00:00.000Z");
        let d = parse("2024-02-29").unwrap();
        assert_eq!(d.hi - d.lo, DAY);
        let t = parse("2024-02-29T10:30:00+08:00").unwrap();
        assert_eq!(format_instant(t.lo), "2024-02-29T02:30:00.000Z");
        assert_eq!(t.hi - t.lo, 1000);
        let f = parse("2024-02-29T10:30:00.5Z").unwrap();
        assert_eq!(format_instant(f.lo), "2024-02-29T10:30:00.500Z");
        assert_eq!(
            parse("2024-02-29T10:30").unwrap().hi - parse("2024-02-29T10:30").unwrap().lo,
            60_000
        );
        for bad in [
            "2023-02-29",
            "24",
            "2024-13",
            "2024-01-01T25:00:00Z",
            "2024-1-1",
            "x",
            "",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        assert_eq!(format_http(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    proptest! {
        #[test]
        fn instants_roundtrip(ms in -2_000_000_000_000i64..8_000_000_000_000i64) {
            let r = parse(&format_instant(ms)).unwrap();
            prop_assert_eq!(r.lo, ms);
            prop_assert_eq!(r.hi, ms + 1);
        }

        #[test]
        fn parse_never_panics(s in "[0-9T:+Z.-]{0,30}") {
            if let Some(r) = parse(&s) { prop_assert!(r.lo < r.hi); }
        }
    }
}
