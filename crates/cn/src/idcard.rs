//! Resident identity card numbers (居民身份证号码, GB 11643-1999): six-digit
//! administrative division of first registration, birth date, a three-digit sequence whose
//! parity is the sex, and an ISO 7064 MOD 11-2 check character. Legacy 15-digit numbers
//! (before 1999) have a two-digit year and no check character.

use crate::division;

const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const CHECK: &[u8; 11] = b"10X98765432";

/// Why a string is not a valid ID number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an ID number has 18 characters (or 15 digits for a legacy number), not {0}")]
    Length(usize),
    #[error("an ID number is digits, with an optional final X")]
    Characters,
    #[error("province code {0} does not exist")]
    Province(String),
    #[error("birth date {0} is not a calendar date")]
    BirthDate(String),
    #[error("check character is {found}, the digits require {expected}")]
    CheckChar { expected: char, found: char },
}

/// A parsed, valid ID number, always in its 18-character form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdNumber {
    text: String,
    /// Whether it was written as a legacy 15-digit number.
    pub legacy: bool,
}

impl IdNumber {
    /// Parses after NFKC normalisation, trimming and upper-casing (so full-width digits and a
    /// lower-case `x` are accepted, as intake systems should).
    pub fn parse(input: &str) -> Result<IdNumber, IdError> {
        let s = crate::nfkc(input.trim()).to_ascii_uppercase();
        let b = s.as_bytes();
        match b.len() {
            18 => {
                if !b[..17].iter().all(u8::is_ascii_digit)
                    || !(b[17].is_ascii_digit() || b[17] == b'X')
                {
                    return Err(IdError::Characters);
                }
                check_parts(&s[..6], &s[6..14])?;
                let expected = check_char(&b[..17]);
                if b[17] as char != expected {
                    return Err(IdError::CheckChar {
                        expected,
                        found: b[17] as char,
                    });
                }
                Ok(IdNumber {
                    text: s,
                    legacy: false,
                })
            }
            15 => {
                if !b.iter().all(u8::is_ascii_digit) {
                    return Err(IdError::Characters);
                }
                let body = format!("{}19{}", &s[..6], &s[6..15]);
                check_parts(&body[..6], &body[6..14])?;
                let c = check_char(body.as_bytes());
                Ok(IdNumber {
                    text: format!("{body}{c}"),
                    legacy: true,
                })
            }
            n => Err(IdError::Length(n)),
        }
    }

    /// The 18-character form.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn division(&self) -> u32 {
        self.text[..6].parse().expect("checked digits")
    }

    /// (year, month, day)
    pub fn birth_date(&self) -> (u32, u32, u32) {
        let d = &self.text[6..14];
        (
            d[..4].parse().expect("digits"),
            d[4..6].parse().expect("digits"),
            d[6..].parse().expect("digits"),
        )
    }

    /// `true` for male (odd sequence digit).
    pub fn is_male(&self) -> bool {
        (self.text.as_bytes()[16] - b'0') % 2 == 1
    }

    /// The legacy 15-digit form, for people born in the 1900s.
    pub fn to_legacy(&self) -> Option<String> {
        (&self.text[6..8] == "19").then(|| format!("{}{}", &self.text[..6], &self.text[8..17]))
    }
}

fn check_parts(division: &str, date: &str) -> Result<(), IdError> {
    let code: u32 = division.parse().map_err(|_| IdError::Characters)?;
    if !division::province_exists(code) {
        return Err(IdError::Province(division[..2].to_string()));
    }
    let y: u32 = date[..4].parse().map_err(|_| IdError::Characters)?;
    let m: u32 = date[4..6].parse().map_err(|_| IdError::Characters)?;
    let d: u32 = date[6..].parse().map_err(|_| IdError::Characters)?;
    if !(1850..=2199).contains(&y) || !is_date(y, m, d) {
        return Err(IdError::BirthDate(date.to_string()));
    }
    Ok(())
}

/// ISO 7064 MOD 11-2 over the first 17 digits.
pub fn check_char(first17: &[u8]) -> char {
    let sum: u32 = first17
        .iter()
        .zip(WEIGHTS)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    CHECK[(sum % 11) as usize] as char
}

/// Builds a valid ID number. `seq` is the three-digit sequence (its parity must match the
/// sex the caller intends: odd for men).
pub fn make(division: u32, year: u32, month: u32, day: u32, seq: u32) -> String {
    let body = format!("{division:06}{year:04}{month:02}{day:02}{seq:03}");
    let c = check_char(body.as_bytes());
    format!("{body}{c}")
}

/// Whether `y-m-d` is a calendar date (the arithmetic is `hutong_fhir::date`'s).
pub fn is_date(y: u32, m: u32, d: u32) -> bool {
    hutong_fhir::date::is_date(i64::from(y), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_standards_own_example_is_valid() {
        // GB 11643-1999 appendix example.
        let id = IdNumber::parse("11010519491231002X").unwrap();
        assert_eq!(id.birth_date(), (1949, 12, 31));
        assert!(!id.is_male());
        assert_eq!(id.division(), 110105);
        assert_eq!(id.to_legacy().unwrap(), "110105491231002");
    }

    #[test]
    fn intake_spellings_are_normalised() {
        assert!(IdNumber::parse("11010519491231002x").is_ok());
        assert!(IdNumber::parse("１１０１０５１９４９１２３１００２Ｘ").is_ok());
        let legacy = IdNumber::parse("110105491231002").unwrap();
        assert!(legacy.legacy);
        assert_eq!(legacy.as_str(), "11010519491231002X");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            IdNumber::parse("110105194912310021"),
            Err(IdError::CheckChar {
                expected: 'X',
                found: '1'
            })
        );
        assert_eq!(IdNumber::parse("1101051949"), Err(IdError::Length(10)));
        assert!(matches!(
            IdNumber::parse("990105194912310021"),
            Err(IdError::Province(_))
        ));
        assert!(matches!(
            IdNumber::parse(&make(110105, 1949, 2, 30, 2)),
            Err(IdError::BirthDate(_))
        ));
    }

    proptest! {
        #[test]
        fn made_numbers_parse_back(y in 1900u32..2030, m in 1u32..=12, d in 1u32..=28, seq in 0u32..1000) {
            let s = make(330106, y, m, d, seq);
            let id = IdNumber::parse(&s).unwrap();
            prop_assert_eq!(id.birth_date(), (y, m, d));
            prop_assert_eq!(id.is_male(), seq % 2 == 1);
        }

        #[test]
        fn any_single_digit_error_is_caught(pos in 0usize..17, delta in 1u8..10, seq in 0u32..1000) {
            let s = make(330106, 1980, 6, 15, seq);
            let mut b = s.into_bytes();
            b[pos] = b'0' + (b[pos] - b'0' + delta) % 10;
            let t = String::from_utf8(b).unwrap();
            prop_assert!(IdNumber::parse(&t).is_err());
        }
    }
}
