//! Calendar arithmetic in days since 1970-01-01 and local (UTC+8) timestamps.

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub fn days(y: i32, m: u32, d: u32) -> i32 {
    hutong_fhir::date::days_from_civil(i64::from(y), m, d) as i32
}

/// The civil date of a day number.
pub fn civil(z: i32) -> (i32, u32, u32) {
    let (y, m, d) = hutong_fhir::date::civil_from_days(i64::from(z));
    (y as i32, m, d)
}

pub fn date(day: i32) -> String {
    let (y, m, d) = civil(day);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A moment: a day and the seconds into it, local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct At {
    pub day: i32,
    pub sec: i32,
}

impl At {
    pub fn new(day: i32, sec: i32) -> At {
        At {
            day: day + sec.div_euclid(86_400),
            sec: sec.rem_euclid(86_400),
        }
    }

    pub fn plus_secs(self, s: i64) -> At {
        let total = i64::from(self.sec) + s;
        At {
            day: self.day + total.div_euclid(86_400) as i32,
            sec: total.rem_euclid(86_400) as i32,
        }
    }

    pub fn dt(self) -> String {
        format!(
            "{}T{:02}:{:02}:{:02}+08:00",
            date(self.day),
            self.sec / 3600,
            self.sec / 60 % 60,
            self.sec % 60
        )
    }
}

/// Whole years from `birth` to `day`.
pub fn age(birth: i32, day: i32) -> i32 {
    let (by, bm, bd) = civil(birth);
    let (y, m, d) = civil(day);
    y - by - i32::from((m, d) < (bm, bd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for z in [-25_000, -1, 0, 1, 10_957, 19_000, 20_000, 60_000] {
            let (y, m, d) = civil(z);
            assert_eq!(days(y, m, d), z);
        }
        assert_eq!(date(days(2024, 2, 29)), "2024-02-29");
        assert_eq!(age(days(1990, 6, 15), days(2020, 6, 14)), 29);
        assert_eq!(age(days(1990, 6, 15), days(2020, 6, 15)), 30);
        assert_eq!(
            At::new(0, 3600).plus_secs(86_400).dt(),
            "1970-01-02T01:00:00+08:00"
        );
    }
}
