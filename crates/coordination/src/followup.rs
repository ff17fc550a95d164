//! Follow-up lists for contracted residents with hypertension or diabetes (慢病随访), after
//! the national basic public health service norms (国家基本公共卫生服务规范): at least four
//! face-to-face follow-ups a year, so one is due three months after the last; a follow-up
//! recorded by any institution in the region counts.

/// Days between follow-ups (four a year).
pub const INTERVAL_DAYS: i64 = 90;

/// Follow-ups a year for the management to be standard (规范管理).
pub const PER_YEAR: usize = 4;

const DAY: i64 = 86_400_000;

/// The chronic diseases followed up, by their ICD-10 code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Chronic {
    /// I10–I15.
    Hypertension,
    /// E10–E14.
    Diabetes,
}

impl Chronic {
    pub fn of_icd10(code: &str) -> Option<Chronic> {
        let c = code.trim().to_ascii_uppercase();
        let head = c.get(..3)?;
        match head {
            "I10" | "I11" | "I12" | "I13" | "I14" | "I15" => Some(Chronic::Hypertension),
            "E10" | "E11" | "E12" | "E13" | "E14" => Some(Chronic::Diabetes),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Chronic::Hypertension => "hypertension",
            Chronic::Diabetes => "diabetes",
        }
    }

    pub fn zh(self) -> &'static str {
        match self {
            Chronic::Hypertension => "高血压",
            Chronic::Diabetes => "糖尿病",
        }
    }
}

/// Where a resident stands on the list today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Due {
    /// Past the due date.
    Overdue,
    /// Due within the next seven days.
    ThisWeek,
    /// Followed up in time; next one later.
    Done,
}

impl Due {
    pub fn as_str(self) -> &'static str {
        match self {
            Due::Overdue => "overdue",
            Due::ThisWeek => "due",
            Due::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Option<Due> {
        [Due::Overdue, Due::ThisWeek, Due::Done]
            .into_iter()
            .find(|d| d.as_str() == s)
    }
}

/// One resident's follow-up standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub due: i64,
    pub status: Due,
    /// Follow-ups in the twelve months before `now`.
    pub in_year: usize,
    /// Whether that is the norm's four.
    pub standard: bool,
}

/// The standing of a resident whose follow-ups happened at `visits` (ms, any order), under a
/// contract since `since`, at `now`: the next one is due three months after the last (or
/// after the contract began, when there was none).
pub fn standing(visits: &[i64], since: i64, now: i64) -> Standing {
    let last = visits.iter().copied().filter(|v| *v <= now).max();
    let due = last.unwrap_or(since) + INTERVAL_DAYS * DAY;
    let in_year = visits
        .iter()
        .filter(|v| **v <= now && now - **v < 365 * DAY)
        .count();
    let status = if due < now {
        Due::Overdue
    } else if due < now + 7 * DAY {
        Due::ThisWeek
    } else {
        Due::Done
    };
    Standing {
        due,
        status,
        in_year,
        standard: in_year >= PER_YEAR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codes_and_a_year_of_visits() {
        assert_eq!(Chronic::of_icd10("I10"), Some(Chronic::Hypertension));
        assert_eq!(Chronic::of_icd10("e11.9"), Some(Chronic::Diabetes));
        assert_eq!(Chronic::of_icd10("I20"), None);
        assert_eq!(Chronic::of_icd10("E1"), None);
        let now = 1_000 * DAY;
        let quarterly: Vec<i64> = (0..4).map(|k| now - (10 + k * 90) * DAY).collect();
        let s = standing(&quarterly, 0, now);
        assert_eq!((s.in_year, s.standard, s.status), (4, true, Due::Done));
        assert_eq!(s.due, now + 80 * DAY);
        let late = standing(&[now - 100 * DAY], 0, now);
        assert_eq!(late.status, Due::Overdue);
        let soon = standing(&[now - 85 * DAY], 0, now);
        assert_eq!(soon.status, Due::ThisWeek);
        let new = standing(&[], now - 10 * DAY, now);
        assert_eq!((new.status, new.due), (Due::Done, now + 80 * DAY));
    }

    proptest! {
        /// The due date is three months after the last follow-up up to now; a resident is
        /// overdue exactly when it has passed; the year's count never exceeds the visits.
        #[test]
        fn due_follows_the_last_visit(visits in proptest::collection::vec(0i64..800, 0..12), since in 0i64..800, now in 0i64..1000) {
            let v: Vec<i64> = visits.iter().map(|d| d * DAY).collect();
            let s = standing(&v, since * DAY, now * DAY);
            let last = v.iter().copied().filter(|x| *x <= now * DAY).max().unwrap_or(since * DAY);
            prop_assert_eq!(s.due, last + INTERVAL_DAYS * DAY);
            prop_assert_eq!(s.status == Due::Overdue, s.due < now * DAY);
            prop_assert!(s.in_year <= v.len());
            prop_assert_eq!(s.standard, s.in_year >= 4);
        }
    }
}
