//! Code systems the intake rules check: LOINC (form and check digit), ICD-10 (form, with the
//! national extension's suffixes), UCUM unit codes (syntax), and the platform's laboratory
//! catalogue (`data/lab-tests.tsv`).

use std::collections::HashMap;
use std::sync::OnceLock;

pub const LOINC: &str = "http://loinc.org";
pub const ICD10: &str = "http://hl7.org/fhir/sid/icd-10";
pub const UCUM: &str = "http://unitsofmeasure.org";

/// The LOINC check digit of the part before the hyphen (mod 10, doubling every other digit
/// from the right, starting with the rightmost).
pub fn loinc_check_digit(body: &str) -> Option<u32> {
    if body.is_empty() || body.len() > 7 || !body.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut sum = 0;
    for (i, b) in body.bytes().rev().enumerate() {
        let d = u32::from(b - b'0');
        sum += if i % 2 == 0 {
            let x = d * 2;
            x / 10 + x % 10
        } else {
            d
        };
    }
    Some((10 - sum % 10) % 10)
}

/// Why a LOINC code is not one, or `None` when it is well formed.
pub fn loinc_problem(code: &str) -> Option<String> {
    let Some((body, check)) = code.split_once('-') else {
        return Some(format!("'{code}' is not of the form NNNNN-C"));
    };
    let Some(expected) = loinc_check_digit(body) else {
        return Some(format!("'{code}' is not of the form NNNNN-C"));
    };
    match check.parse::<u32>() {
        Ok(c) if check.len() == 1 && c == expected => None,
        _ => Some(format!("the check digit of '{code}' should be {expected}")),
    }
}

/// Why an ICD-10 code is malformed, or `None`: a letter, two digits, an optional third
/// character after the category and up to four more after the dot, and the national
/// extension's `x` suffix (GB/T 14396: `J06.900x001`).
pub fn icd10_problem(code: &str) -> Option<String> {
    let b = code.as_bytes();
    let ok = b.len() >= 3
        && b[0].is_ascii_uppercase()
        && b[1].is_ascii_digit()
        && (b[2].is_ascii_digit() || b[2].is_ascii_uppercase())
        && {
            let rest = &code[3..];
            let (sub, ext) = match rest.split_once('x') {
                Some((s, e)) => (s, Some(e)),
                None => (rest, None),
            };
            let sub_ok = sub.is_empty()
                || (sub.starts_with('.')
                    && (2..=5).contains(&sub.len())
                    && sub[1..]
                        .bytes()
                        .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
            let ext_ok = ext.is_none_or(|e| e.len() == 3 && e.bytes().all(|c| c.is_ascii_digit()));
            sub_ok && ext_ok
        };
    (!ok).then(|| {
        let hint = if b.len() > 1 && (b[1] == b'O' || b[1] == b'I') {
            " (a letter where a digit belongs: O for 0, I for 1?)"
        } else {
            ""
        };
        format!("'{code}' is not an ICD-10 code{hint}")
    })
}

/// Why a UCUM unit code is malformed, or `None`. UCUM codes are printable ASCII without
/// spaces, with balanced brackets; a unit written in words or Chinese (`克/升`) is not one.
pub fn ucum_problem(code: &str) -> Option<String> {
    if code.is_empty() {
        return Some("the unit code is empty".into());
    }
    if let Some(c) = code.chars().find(|c| !c.is_ascii_graphic()) {
        return Some(format!(
            "'{code}' is not a UCUM code: '{c}' cannot appear in one"
        ));
    }
    let mut depth: Vec<u8> = Vec::new();
    let mut in_annotation = false;
    for b in code.bytes() {
        match b {
            b'{' if !in_annotation => in_annotation = true,
            b'}' if in_annotation => in_annotation = false,
            b'[' | b'(' if !in_annotation => depth.push(b),
            b']' if !in_annotation && depth.pop() != Some(b'[') => {
                return Some(format!("'{code}' has unbalanced brackets"))
            }
            b')' if !in_annotation && depth.pop() != Some(b'(') => {
                return Some(format!("'{code}' has unbalanced parentheses"))
            }
            _ => {}
        }
    }
    if in_annotation || !depth.is_empty() {
        return Some(format!("'{code}' has an unclosed bracket"));
    }
    None
}

/// A catalogued laboratory test or vital sign.
#[derive(Debug, Clone)]
pub struct LabTest {
    pub loinc: String,
    pub unit: String,
    pub min: f64,
    pub max: f64,
    pub en: String,
    pub zh: String,
}

/// The platform's laboratory catalogue by LOINC code.
pub fn lab_tests() -> &'static HashMap<String, LabTest> {
    static T: OnceLock<HashMap<String, LabTest>> = OnceLock::new();
    T.get_or_init(|| {
        include_str!("../data/lab-tests.tsv")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                let num = |s: &str| s.parse::<f64>().expect("catalogue limits are numbers");
                let t = LabTest {
                    loinc: f[0].into(),
                    unit: f[1].into(),
                    min: num(f[2]),
                    max: num(f[3]),
                    en: f[4].into(),
                    zh: f[5].into(),
                };
                (t.loinc.clone(), t)
            })
            .collect()
    })
}

/// One way to bring a catalogued test's value into the platform's unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversion {
    pub to: String,
    pub factor: f64,
}

/// The conversion of test `loinc`'s value from `unit` to the platform's unit, if the
/// platform makes it (`data/unit-conversions.tsv`): a row for the test itself first, then
/// one for any test in that unit.
pub fn conversion(loinc: &str, unit: &str) -> Option<Conversion> {
    type Table = HashMap<(String, String), Conversion>;
    static T: OnceLock<Table> = OnceLock::new();
    let table = T.get_or_init(|| {
        include_str!("../data/unit-conversions.tsv")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                let c = Conversion {
                    to: f[2].into(),
                    factor: f[3].parse().expect("conversion factors are numbers"),
                };
                ((f[0].to_string(), format!("{}>{}", f[1], f[2])), c)
            })
            .collect()
    });
    let test = lab_tests().get(loinc)?;
    let key = format!("{unit}>{}", test.unit);
    table
        .get(&(loinc.to_string(), key.clone()))
        .or_else(|| table.get(&("*".to_string(), key)))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn loinc_check_digits() {
        for good in [
            "6690-2", "718-7", "777-3", "14771-0", "8480-6", "39156-5", "2345-7",
        ] {
            assert_eq!(loinc_problem(good), None, "{good}");
        }
        assert!(loinc_problem("6690-3").unwrap().contains("should be 2"));
        assert!(loinc_problem("6690").is_some());
        assert!(loinc_problem("66a0-2").is_some());
        assert!(loinc_problem("6690-22").is_some());
    }

    #[test]
    fn every_catalogued_code_is_valid_loinc_and_ucum() {
        assert!(lab_tests().len() >= 15);
        for t in lab_tests().values() {
            assert_eq!(loinc_problem(&t.loinc), None, "{}", t.loinc);
            assert_eq!(ucum_problem(&t.unit), None, "{}", t.unit);
            assert!(t.min < t.max, "{}", t.loinc);
        }
    }

    #[test]
    fn icd10_forms() {
        for good in [
            "J06.9",
            "A09",
            "O80",
            "E11.9",
            "I10",
            "J06.900x001",
            "C34.1",
        ] {
            assert_eq!(icd10_problem(good), None, "{good}");
        }
        assert!(icd10_problem("JO6.9").unwrap().contains("O for 0"));
        for bad in ["J6", "j06.9", "J06.", "J06.123456", "J06x1", "06.9"] {
            assert!(icd10_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn ucum_syntax() {
        for good in [
            "mmol/L",
            "10*9/L",
            "mm[Hg]",
            "/min",
            "Cel",
            "kg/m2",
            "%",
            "{beats}/min",
        ] {
            assert_eq!(ucum_problem(good), None, "{good}");
        }
        for bad in ["克/升", "mm Hg", "mm[Hg", "", "kg)"] {
            assert!(ucum_problem(bad).is_some(), "{bad}");
        }
    }

    proptest! {
        /// Exactly one check digit fits each body, and a changed digit is caught.
        #[test]
        fn one_check_digit_fits(body in "[1-9][0-9]{0,6}", wrong in 1u32..10) {
            let d = loinc_check_digit(&body).unwrap();
            let good = format!("{body}-{d}");
            prop_assert!(loinc_problem(&good).is_none());
            let bad = format!("{body}-{}", (d + wrong) % 10);
            prop_assert!(loinc_problem(&bad).is_some());
        }

        #[test]
        fn checkers_never_panic(s in "\\PC{0,16}") {
            let _ = loinc_problem(&s);
            let _ = icd10_problem(&s);
            let _ = ucum_problem(&s);
        }
    }
}

/// A childhood vaccine of the national immunization programme.
#[derive(Debug, Clone, PartialEq)]
pub struct NipVaccine {
    pub code: String,
    pub zh: String,
    /// The age (years) from which the programme no longer gives it.
    pub until_years: u32,
}

/// The programme's childhood vaccines (`data/nip-vaccines.tsv`), by code and by Chinese name.
pub fn nip_vaccine(code_or_name: &str) -> Option<&'static NipVaccine> {
    static T: OnceLock<Vec<NipVaccine>> = OnceLock::new();
    T.get_or_init(|| {
        include_str!("../data/nip-vaccines.tsv")
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                NipVaccine {
                    code: f[0].to_string(),
                    zh: f[1].to_string(),
                    until_years: f[2].parse().expect("nip-vaccines.tsv: age in years"),
                }
            })
            .collect()
    })
    .iter()
    .find(|v| v.code == code_or_name || v.zh == code_or_name)
}
