//! Normalisation of demographic fields into comparable values: ID numbers (NFKC, upper-case,
//! 15 → 18 digits, check character validated — an invalid number is evidence, not identity),
//! names (NFKC, traditional → simplified, every pinyin reading of the surname), phones, dates,
//! sex, and address parts.

use hutong_cn::{hanzi, idcard::IdNumber, nfkc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Sex {
    Male,
    Female,
}

/// An ID number as recorded: the 18-character form when valid, the cleaned text otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdNorm {
    pub text: String,
    pub valid: bool,
}

/// A name made comparable across scripts: Han names are simplified and carry their pinyin
/// (every reading of the surname's first character, since 曾 单 解 朴 区 仇 have surname
/// readings of their own); Latin names (pinyin or Western) are lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Name {
    /// Full name without spaces (family first for Han names).
    pub text: String,
    pub family: Option<String>,
    pub given: Option<String>,
    /// Full-name pinyin variants, the most common reading first.
    pub py: Vec<String>,
    pub family_py: Vec<String>,
    pub given_py: String,
    pub han: bool,
}

/// The parts of an address that locate a person: free text and administrative parts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Place {
    pub line: Option<String>,
    pub district: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub postcode: Option<String>,
}

/// Raw demographic fields as a source recorded them.
#[derive(Debug, Clone, Default)]
pub struct Raw {
    pub name: Option<String>,
    pub family: Option<String>,
    pub given: Option<String>,
    pub sex: Option<String>,
    /// ISO `YYYY-MM-DD` (or `YYYYMMDD`).
    pub birth_date: Option<String>,
    pub id_number: Option<String>,
    pub phone: Option<String>,
    pub address_line: Option<String>,
    pub district: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub postcode: Option<String>,
}

/// A normalised record, ready for blocking and comparison.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id_number: Option<IdNorm>,
    pub name: Option<Name>,
    pub sex: Option<Sex>,
    /// (year, month, day)
    pub birth: Option<(u16, u8, u8)>,
    pub phone: Option<String>,
    pub place: Place,
}

fn clean(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// NFKC, simplified characters, lower case, without spaces and punctuation.
pub fn text(s: &str) -> String {
    hanzi::to_simplified(&nfkc(s))
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Like [`text`] word by word, the words kept apart by single spaces: address parts come
/// in either order in some files, which only a comparison of words can see.
pub fn words(s: &str) -> String {
    s.split_whitespace()
        .map(text)
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn id_number(s: &str) -> Option<IdNorm> {
    let cleaned: String = nfkc(s)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_uppercase();
    if cleaned.len() < 6 {
        return None;
    }
    match IdNumber::parse(&cleaned) {
        Ok(id) => Some(IdNorm {
            text: id.as_str().to_string(),
            valid: true,
        }),
        Err(_) => Some(IdNorm {
            text: cleaned,
            valid: false,
        }),
    }
}

pub fn sex(s: &str) -> Option<Sex> {
    match nfkc(s).trim().to_lowercase().as_str() {
        "m" | "male" | "1" | "男" | "man" => Some(Sex::Male),
        "f" | "female" | "2" | "女" | "woman" | "w" => Some(Sex::Female),
        _ => None,
    }
}

/// Dates in `YYYY-MM-DD`, `YYYYMMDD` or `YYYY/MM/DD`; impossible dates are dropped.
pub fn date(s: &str) -> Option<(u16, u8, u8)> {
    let digits: String = nfkc(s).chars().filter(char::is_ascii_digit).collect();
    if digits.len() != 8 {
        return None;
    }
    let y: u32 = digits[..4].parse().ok()?;
    let m: u32 = digits[4..6].parse().ok()?;
    let d: u32 = digits[6..].parse().ok()?;
    // A birth date in the future is evidence of an error, not of identity.
    (hutong_cn::idcard::is_date(y, m, d) && y >= 1880 && (y, m, d) <= today())
        .then_some((y as u16, m as u8, d as u8))
}

/// Today's civil date (UTC), for rejecting birth dates in the future.
fn today() -> (u32, u32, u32) {
    let (y, m, d) = hutong_fhir::date::today();
    (y as u32, m, d)
}

pub fn phone(s: &str) -> Option<String> {
    let d = hutong_cn::phone::normalize(s);
    (d.len() >= 7).then(|| {
        if d.len() > 11 {
            d[d.len() - 11..].to_string()
        } else {
            d
        }
    })
}

fn pinyin_of(s: &str) -> String {
    s.chars()
        .map(|c| hanzi::reading(c).map_or_else(|| c.to_string(), str::to_string))
        .collect()
}

/// What registration desks write before a person has a name of their own — a newborn
/// (婴儿, 新生儿, 男婴, 张某之子, 王芳之女), an unidentified patient (无名氏, 某某) — names
/// no one: such a record is matched on its other fields.
fn placeholder(t: &str) -> bool {
    const WHOLE: &[&str] = &[
        "婴儿",
        "新生儿",
        "男婴",
        "女婴",
        "婴",
        "无名氏",
        "无名",
        "某某",
        "未知",
        "不详",
        "baby",
        "unknown",
        "newborn",
    ];
    const ENDS: &[&str] = &[
        "之子",
        "之女",
        "之婴",
        "之儿",
        "婴儿",
        "新生儿",
        "男婴",
        "女婴",
        "某",
    ];
    WHOLE.contains(&t) || ENDS.iter().any(|e| t.ends_with(e))
}

/// Builds a comparable name from a full name and/or its family and given parts.
pub fn name(full: Option<&str>, family: Option<&str>, given: Option<&str>) -> Option<Name> {
    let family = family.map(text).filter(|s| !s.is_empty());
    let given = given.map(text).filter(|s| !s.is_empty());
    let full_text = match (&family, &given) {
        (Some(f), Some(g)) => format!("{f}{g}"),
        (Some(f), None) => f.clone(),
        (None, Some(g)) => g.clone(),
        (None, None) => text(full?),
    };
    if full_text.is_empty() || placeholder(&full_text) {
        return None;
    }
    let han = full_text.chars().any(hanzi::is_han);
    // A Han name without parts: the surname is its first character (or a known compound).
    let (family, given) = match (family, given) {
        (None, None) if han => {
            let chars: Vec<char> = full_text.chars().collect();
            let two = chars.iter().take(2).collect::<String>();
            let n = if COMPOUND_SURNAMES.contains(&two.as_str()) && chars.len() > 2 {
                2
            } else {
                1
            };
            (
                Some(chars[..n].iter().collect::<String>()),
                Some(chars[n..].iter().collect::<String>()).filter(|s| !s.is_empty()),
            )
        }
        other => other,
    };
    let given_py = given.as_deref().map(pinyin_of).unwrap_or_default();
    let family_py: Vec<String> = match &family {
        Some(f) if han => {
            let mut chars = f.chars();
            let first = chars.next().expect("non-empty");
            let rest = pinyin_of(chars.as_str());
            let mut v: Vec<String> = hanzi::readings(first)
                .map(|r| format!("{r}{rest}"))
                .collect();
            if v.is_empty() {
                v.push(pinyin_of(f));
            }
            v
        }
        Some(f) => vec![f.clone()],
        None => Vec::new(),
    };
    let py = if family_py.is_empty() {
        vec![pinyin_of(&full_text)]
    } else {
        family_py.iter().map(|f| format!("{f}{given_py}")).collect()
    };
    Some(Name {
        text: full_text,
        family,
        given,
        py,
        family_py,
        given_py,
        han,
    })
}

const COMPOUND_SURNAMES: &[&str] = &[
    "欧阳", "司马", "诸葛", "上官", "尉迟", "令狐", "东方", "皇甫", "慕容", "公孙", "夏侯", "端木",
];

/// An ID number that cannot be the person's own: its embedded birth date lies a generation
/// from the record's, sharing nothing a typo would leave (a newborn or child registered
/// under a parent's card, an elderly patient under a child's — common at registration
/// desks). It names a household member, not this person, so it is no evidence of identity
/// either way and the record is matched on its other fields.
fn borrowed(id: &IdNorm, birth: Option<(u16, u8, u8)>) -> bool {
    let (Some(b), true) = (birth, id.valid) else {
        return false;
    };
    let Ok(parsed) = IdNumber::parse(&id.text) else {
        return false;
    };
    let (y, m, d) = parsed.birth_date();
    let embedded = (y as u16, m as u8, d as u8);
    // A generation apart and not the same day of the year (a year mistyped by a generation
    // keeps the month and day): the same test as the generations rule of `compare`.
    embedded.0.abs_diff(b.0) >= 12 && (embedded.1, embedded.2) != (b.1, b.2)
}

impl Raw {
    pub fn normalize(&self) -> Record {
        let some = |s: &Option<String>| clean(s).map(text).filter(|s| !s.is_empty());
        let birth = clean(&self.birth_date).and_then(date);
        Record {
            id_number: clean(&self.id_number)
                .and_then(id_number)
                .filter(|id| !borrowed(id, birth)),
            name: name(clean(&self.name), clean(&self.family), clean(&self.given)),
            sex: clean(&self.sex).and_then(sex),
            birth,
            phone: clean(&self.phone).and_then(phone),
            place: Place {
                line: clean(&self.address_line)
                    .map(words)
                    .filter(|s| !s.is_empty()),
                district: some(&self.district),
                city: some(&self.city),
                state: some(&self.state),
                postcode: some(&self.postcode),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_numbers() {
        let legacy = id_number("110105491231002").unwrap();
        assert_eq!(
            legacy,
            IdNorm {
                text: "11010519491231002X".into(),
                valid: true
            }
        );
        assert!(id_number("11010519491231002x").unwrap().valid);
        assert!(
            id_number("１１０１０５１９４９１２３１００２Ｘ")
                .unwrap()
                .valid
        );
        let typo = id_number("110105194912310021").unwrap();
        assert!(!typo.valid);
        assert_eq!(typo.text, "110105194912310021");
        assert_eq!(id_number(" "), None);
    }

    #[test]
    fn names_across_scripts_and_heteronym_surnames() {
        let a = name(Some("張偉"), None, None).unwrap();
        assert_eq!(a.text, "张伟");
        assert_eq!(a.family.as_deref(), Some("张"));
        assert_eq!(a.py, vec!["zhangwei".to_string()]);
        let p = name(Some("Zhang Wei"), None, None).unwrap();
        assert_eq!(p.py, vec!["zhangwei".to_string()]);
        assert!(!p.han);
        let z = name(None, Some("曾"), Some("小明")).unwrap();
        assert!(z.py.contains(&"zengxiaoming".to_string()), "{:?}", z.py);
        assert!(z.py.contains(&"cengxiaoming".to_string()));
        let s = name(Some("单田芳"), None, None).unwrap();
        assert!(s.py.iter().any(|v| v == "shantianfang"), "{:?}", s.py);
        let o = name(Some("欧阳雪"), None, None).unwrap();
        assert_eq!(o.family.as_deref(), Some("欧阳"));
        assert_eq!(o.given.as_deref(), Some("雪"));
    }

    #[test]
    fn other_fields() {
        assert_eq!(sex("男"), Some(Sex::Male));
        assert_eq!(sex("F"), Some(Sex::Female));
        assert_eq!(sex("2"), Some(Sex::Female));
        assert_eq!(date("1980-02-29"), Some((1980, 2, 29)));
        assert_eq!(date("19810229"), None);
        assert_eq!(date("2999-01-01"), None, "future");
        assert_eq!(phone("+86 138 0013 8000").as_deref(), Some("13800138000"));
        assert_eq!(text("浙江省 杭州市，西湖區"), "浙江省杭州市西湖区");
    }
}
