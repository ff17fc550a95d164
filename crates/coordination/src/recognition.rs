//! The regional recognition list (检查检验结果互认): which results are recognized across
//! institutions, and for how long. Data, not code: the shipped defaults are
//! `data/recognition.tsv`; a deployment loads its own file of the same shape.

use std::collections::HashMap;

/// One recognized item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The LOINC code of the test, panel or examination.
    pub code: String,
    /// `lab` (reported as Observations or a panel's DiagnosticReport) or `imaging` (a
    /// DiagnosticReport, with its ImagingStudy).
    pub kind: Kind,
    /// How many days after it was taken a result is recognized.
    pub days: u32,
    pub name_zh: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Lab,
    Imaging,
}

/// The list, by LOINC code.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct List {
    items: HashMap<String, Item>,
}

/// A line of a list file that is not `loinc<TAB>kind<TAB>days<TAB>name`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recognition list, line {line}: {why}")]
pub struct ListError {
    pub line: usize,
    pub why: String,
}

impl List {
    /// The shipped defaults.
    pub fn builtin() -> List {
        List::parse(include_str!("../data/recognition.tsv")).expect("the shipped list parses")
    }

    /// A list from a file of the shipped file's shape (`#` lines are comments).
    pub fn parse(text: &str) -> Result<List, ListError> {
        let mut items = HashMap::new();
        for (i, l) in text.lines().enumerate() {
            let l = l.trim_end();
            if l.trim().is_empty() || l.starts_with('#') {
                continue;
            }
            let bad = |why: &str| ListError {
                line: i + 1,
                why: why.to_string(),
            };
            let f: Vec<&str> = l.split('\t').collect();
            let [code, kind, days, name] = f.as_slice() else {
                return Err(bad(
                    "expected four tab-separated fields: loinc, kind, days, name",
                ));
            };
            let kind = match *kind {
                "lab" => Kind::Lab,
                "imaging" => Kind::Imaging,
                other => return Err(bad(&format!("kind '{other}' is neither lab nor imaging"))),
            };
            let days: u32 = days
                .parse()
                .ok()
                .filter(|d| (1..=3650).contains(d))
                .ok_or_else(|| bad(&format!("'{days}' is not a number of days from 1 to 3650")))?;
            if code.is_empty() {
                return Err(bad("no code"));
            }
            if items
                .insert(
                    code.to_string(),
                    Item {
                        code: code.to_string(),
                        kind,
                        days,
                        name_zh: name.to_string(),
                    },
                )
                .is_some()
            {
                return Err(bad(&format!("{code} is listed twice")));
            }
        }
        Ok(List { items })
    }

    /// The item for a LOINC code, if the region recognizes it.
    pub fn get(&self, loinc: &str) -> Option<&Item> {
        self.items.get(loinc)
    }

    /// Every item, by code.
    pub fn items(&self) -> Vec<&Item> {
        let mut v: Vec<&Item> = self.items.values().collect();
        v.sort_by(|a, b| a.code.cmp(&b.code));
        v
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl Item {
    /// Whether a result taken at `taken` (ms) is still recognized at `now`.
    pub fn recognizes(&self, taken: i64, now: i64) -> bool {
        taken <= now && now - taken <= i64::from(self.days) * 86_400_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_list_names_labs_and_imaging_with_their_periods() {
        let l = List::builtin();
        let a1c = l.get("4548-4").unwrap();
        assert_eq!((a1c.kind, a1c.days), (Kind::Lab, 90));
        assert_eq!(l.get("24627-2").unwrap().kind, Kind::Imaging);
        assert!(
            l.get("8480-6").is_none(),
            "a blood pressure is measured, not recognized"
        );
        let day = 86_400_000;
        assert!(a1c.recognizes(0, 90 * day));
        assert!(!a1c.recognizes(0, 90 * day + 1));
        assert!(!a1c.recognizes(day, 0), "not a result from the future");
    }

    #[test]
    fn a_bad_list_says_which_line() {
        let e = List::parse("# c\n4548-4\tlab\t90\tHbA1c\n718-7\tlab\tsoon\tHb\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.why.contains("soon"));
        assert!(List::parse("1-1\tblood\t3\tx\n").is_err());
        assert!(List::parse("1-1\tlab\t3\tx\n1-1\tlab\t4\ty\n").is_err());
    }
}
