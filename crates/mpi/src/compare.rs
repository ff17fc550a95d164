//! Comparators: each field of a pair of records becomes an agreement level (higher = closer)
//! or `None` when either side lacks it. The levels are what the model weighs.

use strsim::jaro_winkler;

use crate::normalize::{IdNorm, Name, Place, Record};

pub const FIELDS: usize = 12;
pub const ID: usize = 0;
pub const NAME: usize = 1;
pub const BIRTH: usize = 2;
pub const SEX: usize = 3;
/// Phone, address line and place together: household members share all three, so weighing
/// them as independent fields would count one household as three agreements.
pub const CONTACT: usize = 4;
// Fields of the Western profile, where names and addresses come in parts.
pub const FAMILY: usize = 5;
pub const GIVEN: usize = 6;
pub const LINE: usize = 7;
pub const CITY: usize = 8;
pub const POSTCODE: usize = 9;
pub const STATE: usize = 10;
pub const PHONE: usize = 11;
pub const FIELD_NAMES: [&str; FIELDS] = [
    "id_number",
    "name",
    "birth_date",
    "sex",
    "contact",
    "family",
    "given",
    "address_line",
    "city",
    "postcode",
    "state",
    "phone",
];
/// Levels per field (level `n - 1` is full agreement).
pub const LEVELS: [usize; FIELDS] = [3, 5, 4, 2, 4, 4, 4, 4, 3, 3, 2, 2];
pub const MAX_LEVELS: usize = 5;

/// Which fields a data set is compared on. Chinese registrations are compared on whole
/// names and household contact; Western files, whose names and addresses come in parts with
/// independent errors, on the parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Profile {
    Chinese,
    Western,
}

impl Profile {
    /// The fields a pair is compared on (the name field stands in on the Western profile
    /// when a record's name does not split into parts).
    pub fn fields(self) -> &'static [usize] {
        match self {
            Profile::Chinese => &[ID, NAME, BIRTH, SEX, CONTACT],
            Profile::Western => &[
                ID, NAME, BIRTH, SEX, FAMILY, GIVEN, LINE, CITY, POSTCODE, STATE, PHONE,
            ],
        }
    }
}

/// The profile of a data set: Chinese when a fair share of the names are written in Han
/// characters.
pub fn profile_of(records: &[Record]) -> Profile {
    let named = records.iter().filter(|r| r.name.is_some()).count();
    let han = records
        .iter()
        .filter(|r| r.name.as_ref().is_some_and(|n| n.han))
        .count();
    if named == 0 || han * 5 >= named {
        Profile::Chinese
    } else {
        Profile::Western
    }
}

/// The agreement pattern of a pair.
pub type Pattern = [Option<u8>; FIELDS];

/// Two valid, different 18-digit ID numbers: different people, whatever else agrees.
/// (MOD 11-2 catches every single-digit error and adjacent transposition, so two valid
/// numbers never differ by one typo.)
pub fn ids_conflict(a: &Record, b: &Record) -> bool {
    matches!((&a.id_number, &b.id_number), (Some(x), Some(y)) if x.valid && y.valid && x.text != y.text)
}

/// Twins (or siblings born the same day): the same surname and birth date, given names that
/// are plainly different, and no ID number in common — different people however much their
/// household details agree.
pub fn twins(a: &Record, b: &Record) -> bool {
    let (Some(na), Some(nb)) = (&a.name, &b.name) else {
        return false;
    };
    if a.birth.is_none() || a.birth != b.birth {
        return false;
    }
    if matches!((&a.id_number, &b.id_number), (Some(x), Some(y)) if x.text == y.text) {
        return false;
    }
    // A pinyin name without parts ("Ouyang Xue") shares the surname if it starts with it.
    let family_of = |x: &Name, y: &Name| {
        x.family_py.iter().any(|f| {
            y.family_py.contains(f)
                || y.py
                    .iter()
                    .any(|p| p.starts_with(f.as_str()) && p.len() > f.len())
        })
    };
    let same_family = family_of(na, nb) || family_of(nb, na);
    let both_given = na.py.iter().chain(&nb.py).all(|p| {
        na.family_py
            .iter()
            .chain(&nb.family_py)
            .any(|f| p.len() > f.len())
    });
    same_family && both_given && name_level(na, nb) <= 1
}

/// A parent and child with the same name at the same address (沈宇 born 1987 and 沈宇 born
/// 2013): birth dates that share nothing and lie a generation apart are never one person's
/// typos.
pub fn generations_apart(a: &Record, b: &Record) -> bool {
    match (a.birth, b.birth) {
        (Some(x), Some(y)) => birth_level(x, y) == 0 && x.0.abs_diff(y.0) >= 12,
        _ => false,
    }
}

/// Pairs that sound rules keep apart whatever their score.
/// The twins and generations rules rest on Chinese civil registration practice (a given
/// name is chosen once and kept, children share the household's address and phone); they are
/// applied when a Han name is involved — Western files corrupt given names and dates in
/// other ways.
pub fn known_apart(a: &Record, b: &Record) -> bool {
    let same_id =
        matches!((&a.id_number, &b.id_number), (Some(x), Some(y)) if x.valid && x.text == y.text);
    let han = matches!((&a.name, &b.name), (Some(x), Some(y)) if x.han || y.han);
    ids_conflict(a, b) || (han && !same_id && (twins(a, b) || generations_apart(a, b)))
}

/// Compares on the Chinese profile.
pub fn compare(a: &Record, b: &Record) -> Pattern {
    compare_with(a, b, Profile::Chinese)
}

pub fn compare_with(a: &Record, b: &Record, profile: Profile) -> Pattern {
    let mut p: Pattern = [None; FIELDS];
    p[ID] = both(&a.id_number, &b.id_number, id_level);
    p[BIRTH] = both(&a.birth, &b.birth, |x, y| birth_level(*x, *y));
    p[SEX] = both(&a.sex, &b.sex, |x, y| u8::from(x == y));
    match profile {
        Profile::Chinese => {
            p[NAME] = both(&a.name, &b.name, name_level);
            p[CONTACT] = contact_level(a, b);
        }
        Profile::Western => {
            let parts = |r: &Record| {
                r.name
                    .as_ref()
                    .and_then(|n| Some((n.family.clone()?, n.given.clone()?)))
            };
            match (parts(a), parts(b)) {
                (Some((af, ag)), Some((bf, bg))) => {
                    // Family and given recorded the other way round are the same name (with
                    // whatever typing errors each part has): the better reading counts.
                    let straight = (text_level(&af, &bf), text_level(&ag, &bg));
                    let crossed = (text_level(&af, &bg), text_level(&ag, &bf));
                    let (f, g) = if af != ag
                        && crossed.0.min(crossed.1) >= 2
                        && crossed.0 + crossed.1 > straight.0 + straight.1
                    {
                        crossed
                    } else {
                        straight
                    };
                    p[FAMILY] = Some(f);
                    p[GIVEN] = Some(g);
                }
                _ => p[NAME] = both(&a.name, &b.name, name_level),
            }
            // Addresses share words ("street", "place"): only close agreement counts. Their
            // parts come in either order and with spaces lost ("munmurra park" /
            // "munmurrapark"), so the words are also compared sorted and run together.
            p[LINE] = both(&a.place.line, &b.place.line, |x, y| {
                match line_similarity(x, y) {
                    s if s >= 1.0 => 3,
                    s if s >= 0.95 => 2,
                    s if s >= 0.9 => 1,
                    _ => 0,
                }
            });
            p[CITY] = both(&a.place.city, &b.place.city, |x, y| match jw(x, y) {
                1.0 => 2,
                s if s >= 0.85 => 1,
                _ => 0,
            });
            p[POSTCODE] = both(&a.place.postcode, &b.place.postcode, |x, y| {
                if x == y {
                    2
                } else if osa(x.as_bytes(), y.as_bytes()) <= 1 {
                    1
                } else {
                    0
                }
            });
            p[STATE] = both(&a.place.state, &b.place.state, |x, y| u8::from(x == y));
            p[PHONE] = both(&a.phone, &b.phone, |x, y| u8::from(x == y));
        }
    }
    p
}

/// An address line's words run together.
pub(crate) fn joined(line: &str) -> std::borrow::Cow<'_, str> {
    if line.contains(' ') {
        std::borrow::Cow::Owned(line.split(' ').collect())
    } else {
        std::borrow::Cow::Borrowed(line)
    }
}

/// How alike two address lines are: the best of the lines as written, their words sorted,
/// and their words run together (1.0 when any of these is equal).
fn line_similarity(a: &str, b: &str) -> f64 {
    if a == b {
        return 1.0;
    }
    let sorted = |s: &str| {
        let mut w: Vec<&str> = s.split_whitespace().collect();
        w.sort_unstable();
        w.join(" ")
    };
    let joined = |s: &str| s.split_whitespace().collect::<String>();
    let plain = jw(a, b);
    // Reordered or run-together words still share most characters near their places, so a
    // pair that far apart as written is not worth re-arranging (most pairs the model
    // samples are strangers).
    if !(0.7..0.95).contains(&plain) {
        return plain;
    }
    let (sa, sb) = (sorted(a), sorted(b));
    let (ja, jb) = (joined(a), joined(b));
    if sa == sb || ja == jb {
        return 1.0;
    }
    plain.max(jw(&sa, &sb)).max(jw(&ja, &jb))
}

/// 3: equal; 2: Jaro–Winkler ≥ 0.92; 1: ≥ 0.8; 0: otherwise.
fn text_level(a: &str, b: &str) -> u8 {
    if a == b {
        return 3;
    }
    match jw(a, b) {
        s if s >= 0.92 => 2,
        s if s >= 0.8 => 1,
        _ => 0,
    }
}

/// 3: same phone and address; 2: same phone or address; 1: same district (or postcode)
/// or a similar address; 0: elsewhere.
fn contact_level(a: &Record, b: &Record) -> Option<u8> {
    let phone = both(&a.phone, &b.phone, |x, y| u8::from(x == y));
    let line = both(&a.place.line, &b.place.line, |x, y| line_level(x, y));
    let place = place_level(&a.place, &b.place);
    if phone.is_none() && line.is_none() && place.is_none() {
        return None;
    }
    let phone_ok = phone == Some(1);
    let line_ok = line.is_some_and(|l| l >= 2);
    Some(if phone_ok && line_ok {
        3
    } else if phone_ok || line_ok {
        2
    } else if place == Some(2) || line == Some(1) {
        1
    } else {
        0
    })
}

fn both<T>(a: &Option<T>, b: &Option<T>, f: impl Fn(&T, &T) -> u8) -> Option<u8> {
    match (a, b) {
        (Some(x), Some(y)) => Some(f(x, y)),
        _ => None,
    }
}

/// Damerau–Levenshtein distance (optimal string alignment) on bytes, for short codes.
fn osa(a: &[u8], b: &[u8]) -> usize {
    strsim::osa_distance(
        std::str::from_utf8(a).unwrap_or(""),
        std::str::from_utf8(b).unwrap_or(""),
    )
}

fn id_level(a: &IdNorm, b: &IdNorm) -> u8 {
    if a.text == b.text {
        2
    } else if !(a.valid && b.valid) && osa(a.text.as_bytes(), b.text.as_bytes()) <= 2 {
        1
    } else {
        0
    }
}

fn jw(a: &str, b: &str) -> f64 {
    jaro_winkler(a, b)
}

fn best_py(a: &Name, b: &Name) -> f64 {
    let mut best: f64 = 0.0;
    for x in &a.py {
        for y in &b.py {
            best = best.max(jw(x, y));
        }
    }
    best
}

fn part_sim(a: Option<&str>, b: Option<&str>) -> Option<f64> {
    Some(jw(a?, b?))
}

fn name_level(a: &Name, b: &Name) -> u8 {
    if a.text == b.text {
        return 4;
    }
    let py_equal = a.py.iter().any(|x| b.py.contains(x));
    let fam = part_sim(a.family.as_deref(), b.family.as_deref());
    let giv = part_sim(a.given.as_deref(), b.given.as_deref());
    // Family and given recorded the other way round (Western files) are the same name.
    let swapped = matches!((&a.family, &a.given, &b.family, &b.given),
        (Some(af), Some(ag), Some(bf), Some(bg)) if af == bg && ag == bf);
    let fam_py = a.family_py.iter().any(|x| b.family_py.contains(x));
    if py_equal || swapped {
        return 3;
    }
    let fam_s = fam.unwrap_or(0.0).max(if fam_py { 1.0 } else { 0.0 });
    let giv_s = giv
        .unwrap_or(0.0)
        .max(jw(&a.given_py, &b.given_py) * f64::from(u8::from(!a.given_py.is_empty())));
    // Given-name characters swapped or one dropped, the surname the same (张伟明 / 张明伟 / 张伟).
    let reordered = fam_py && {
        let (x, y) = (
            a.given.as_deref().unwrap_or(""),
            b.given.as_deref().unwrap_or(""),
        );
        let mut xs: Vec<char> = x.chars().collect();
        let mut ys: Vec<char> = y.chars().collect();
        let dropped = !x.is_empty() && !y.is_empty() && (x.contains(y) || y.contains(x));
        xs.sort_unstable();
        ys.sort_unstable();
        (xs == ys && xs.len() > 1) || (dropped && a.han && b.han)
    };
    let full = jw(&a.text, &b.text).max(best_py(a, b));
    if (fam_s >= 0.95 && giv_s >= 0.92) || reordered || full >= 0.95 {
        2
    } else if (fam_s >= 0.9 && giv_s >= 0.75) || full >= 0.85 {
        1
    } else {
        0
    }
}

fn birth_level(a: (u16, u8, u8), b: (u16, u8, u8)) -> u8 {
    if a == b {
        return 3;
    }
    let swapped = a.0 == b.0 && a.1 == b.2 && a.2 == b.1;
    let same = u8::from(a.0 == b.0) + u8::from(a.1 == b.1) + u8::from(a.2 == b.2);
    let digit_typo = |x: u32, y: u32| {
        let (sx, sy) = (format!("{x:04}"), format!("{y:04}"));
        sx.bytes().zip(sy.bytes()).filter(|(p, q)| p != q).count() == 1
    };
    let one_typo = same == 2
        && (digit_typo(a.0.into(), b.0.into())
            || digit_typo(a.1.into(), b.1.into())
            || digit_typo(a.2.into(), b.2.into()));
    if swapped || one_typo {
        2
    } else if a.0 == b.0 || (a.1 == b.1 && a.2 == b.2) {
        1
    } else {
        0
    }
}

fn line_level(a: &str, b: &str) -> u8 {
    // Household contact compares the address as one run of characters (Chinese addresses
    // are written without spaces; a space typed into one is no difference).
    let (a, b) = (joined(a), joined(b));
    let (a, b) = (a.as_ref(), b.as_ref());
    if a == b {
        return 3;
    }
    // A partial address that is the start of the full one still agrees as far as it goes.
    if a.len() > 6 && b.len() > 6 && (a.starts_with(b) || b.starts_with(a)) {
        return 2;
    }
    match jw(a, b) {
        s if s >= 0.92 => 2,
        s if s >= 0.8 => 1,
        _ => 0,
    }
}

fn place_level(a: &Place, b: &Place) -> Option<u8> {
    let mut agree = 0;
    let mut common = 0;
    for (x, y, fuzzy) in [
        (&a.district, &b.district, false),
        (&a.postcode, &b.postcode, false),
        (&a.city, &b.city, true),
        (&a.state, &b.state, false),
    ] {
        if let (Some(x), Some(y)) = (x, y) {
            common += 1;
            if x == y || (fuzzy && jw(x, y) >= 0.9) {
                agree += 1;
            } else {
                return Some(0);
            }
        }
    }
    match (common, agree) {
        (0, _) => None,
        (_, 1) => Some(1),
        _ => Some(2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::{name, Raw};

    fn lvl(a: &str, b: &str) -> u8 {
        name_level(
            &name(Some(a), None, None).unwrap(),
            &name(Some(b), None, None).unwrap(),
        )
    }

    #[test]
    fn name_levels() {
        assert_eq!(lvl("张伟", "张伟"), 4);
        assert_eq!(lvl("张伟", "張偉"), 4);
        assert_eq!(lvl("张伟", "章伟"), 3, "homophone");
        assert_eq!(lvl("张伟", "Zhang Wei"), 3, "pinyin");
        assert_eq!(lvl("曾小明", "Zeng Xiaoming"), 3, "surname reading of 曾");
        assert_eq!(lvl("张伟明", "张明伟"), 2, "given characters swapped");
        assert_eq!(lvl("张伟明", "张伟"), 2, "a given character dropped");
        assert_eq!(lvl("张伟", "李娜"), 0);
        let a = name(None, Some("smith"), Some("john")).unwrap();
        let b = name(None, Some("john"), Some("smith")).unwrap();
        assert_eq!(name_level(&a, &b), 3, "family and given swapped");
    }

    #[test]
    fn date_and_id_levels() {
        assert_eq!(birth_level((1980, 5, 13), (1980, 5, 13)), 3);
        assert_eq!(birth_level((1980, 5, 3), (1980, 3, 5)), 2);
        assert_eq!(birth_level((1980, 5, 13), (1981, 5, 13)), 2);
        assert_eq!(birth_level((1980, 5, 13), (1980, 7, 22)), 1);
        assert_eq!(birth_level((1980, 5, 13), (1975, 7, 22)), 0);
        let r = |id: &str| {
            Raw {
                id_number: Some(id.into()),
                ..Raw::default()
            }
            .normalize()
        };
        let good = r("11010519491231002X");
        assert_eq!(
            compare(&good, &r("110105491231002"))[ID],
            Some(2),
            "legacy form"
        );
        assert_eq!(
            compare(&good, &r("110105194912310021"))[ID],
            Some(1),
            "typo"
        );
        assert_eq!(
            compare(&good, &r("110105194912130021"))[ID],
            Some(1),
            "transposition"
        );
        let other = r(&hutong_cn::idcard::make(110105, 1949, 12, 31, 4));
        assert!(ids_conflict(&good, &other));
        assert!(!ids_conflict(&good, &r("110105194912310021")));
    }

    #[test]
    fn western_profile_compares_parts() {
        let r = |family: &str, given: &str, line: &str, postcode: &str| {
            Raw {
                family: Some(family.into()),
                given: Some(given.into()),
                address_line: Some(line.into()),
                postcode: Some(postcode.into()),
                ..Raw::default()
            }
            .normalize()
        };
        let a = r("smith", "john", "12 kent street", "2600");
        let b = r("john", "smith", "12 kent street", "2601");
        let p = compare_with(&a, &b, Profile::Western);
        assert_eq!((p[FAMILY], p[GIVEN]), (Some(3), Some(3)), "swapped parts");
        assert_eq!(p[LINE], Some(3));
        assert_eq!(p[POSTCODE], Some(1), "one digit off");
        assert_eq!(p[NAME], None, "parts replace the whole name");
        assert_eq!(p[CONTACT], None);
        let c = compare_with(
            &a,
            &r("smyth", "jon", "99 hill road", "4000"),
            Profile::Western,
        );
        assert!(c[FAMILY] < Some(3) && c[FAMILY] > Some(0));
        assert_eq!((c[LINE], c[POSTCODE]), (Some(0), Some(0)));
        // Swapped and mistyped; address parts in the other order or run together.
        let d = compare_with(
            &r(
                "harley",
                "matthews",
                "32 badimara street munmurra park",
                "6051",
            ),
            &r(
                "matthews",
                "harely",
                "32 munmurrapark badimara street",
                "6015",
            ),
            Profile::Western,
        );
        assert_eq!(
            (d[FAMILY], d[GIVEN]),
            (Some(2), Some(3)),
            "swapped, one typo"
        );
        assert!(d[LINE] >= Some(2), "{:?}", d[LINE]);
        assert_eq!(
            line_similarity("31 bamir square corridella", "31 corridella bamir square"),
            1.0
        );
        assert!(line_similarity("12 kent street", "99 hill road") < 0.9);
        // Two different given names that happen to look like each other's surname do not
        // swap: both crossed parts must be close.
        let e = compare_with(
            &r("green", "joel", "1 a street", "4670"),
            &r("green", "tiana", "1 a street", "4670"),
            Profile::Western,
        );
        assert_eq!((e[FAMILY], e[GIVEN]), (Some(3), Some(0)));
        // Chinese comparison of the same records keeps the whole name and household contact.
        let q = compare(&a, &b);
        assert_eq!((q[FAMILY], q[GIVEN], q[LINE]), (None, None, None));
        assert!(q[NAME].is_some());

        let han = Raw {
            name: Some("张伟".into()),
            ..Raw::default()
        }
        .normalize();
        assert_eq!(profile_of(&[a.clone(), b.clone()]), Profile::Western);
        assert_eq!(
            profile_of(&[a, b, han]),
            Profile::Chinese,
            "a fifth Han is Chinese"
        );
        assert_eq!(profile_of(&[]), Profile::Chinese);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::normalize::Raw;
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = Record> {
        (
            prop::sample::select(vec![
                "张伟",
                "章伟",
                "Zhang Wei",
                "李娜",
                "欧阳雪",
                "曾小明",
                "张伟明",
            ]),
            1950u32..2020,
            1u32..=12,
            1u32..=28,
            prop::option::of(0u32..1000),
            prop::option::of(prop::sample::select(vec!["13800138000", "13900139000"])),
        )
            .prop_map(|(n, y, m, d, seq, phone)| {
                Raw {
                    name: Some(n.into()),
                    birth_date: Some(format!("{y:04}-{m:02}-{d:02}")),
                    id_number: seq.map(|s| hutong_cn::idcard::make(330106, y, m, d, s)),
                    phone: phone.map(String::from),
                    ..Raw::default()
                }
                .normalize()
            })
    }

    proptest! {
        #[test]
        fn comparison_is_symmetric(a in record(), b in record()) {
            prop_assert_eq!(compare(&a, &b), compare(&b, &a));
            prop_assert_eq!(known_apart(&a, &b), known_apart(&b, &a));
        }

        #[test]
        fn a_record_fully_agrees_with_itself(a in record()) {
            let p = compare(&a, &a);
            for f in 0..FIELDS {
                // Contact reaches its top level only when both phone and address are known.
                let top = if f == CONTACT { 2 } else { LEVELS[f] - 1 };
                if let Some(l) = p[f] {
                    prop_assert!(l as usize >= top, "field {}", FIELD_NAMES[f]);
                }
            }
            prop_assert!(!known_apart(&a, &a));
        }
    }
}
