//! Blocking: several keys per record so that no true pair is lost to one bad field — the ID
//! number's division-and-birth-date prefix, name pinyin with birth date, surname with birth
//! date, given name with birth date, phone, name with place, birth date with place and sex.

use std::collections::HashMap;

use crate::compare::Profile;
use crate::normalize::Record;

/// Blocks bigger than this are too common to say anything (a shared family phone is fine;
/// a whole district born on one day is not) and are skipped.
pub const MAX_BLOCK: usize = 400;

pub fn keys(r: &Record, profile: Profile) -> Vec<String> {
    let mut k = Vec::with_capacity(8);
    if let Some(id) = &r.id_number {
        k.push(format!("i:{}", id.text));
        if id.text.len() >= 14 {
            k.push(format!("ip:{}", &id.text[..14]));
        }
    }
    let birth = r.birth.map(|(y, m, d)| format!("{y:04}{m:02}{d:02}"));
    let place = r.place.district.as_ref().or(r.place.postcode.as_ref());
    if let Some(n) = &r.name {
        for py in n.py.iter().take(3) {
            if let Some(b) = &birth {
                k.push(format!("nb:{py}{b}"));
            }
            if let Some(p) = place {
                k.push(format!("np:{py}|{p}"));
            }
        }
        if let Some(b) = &birth {
            for f in n.family_py.iter().take(3) {
                k.push(format!("fb:{f}{b}"));
            }
            if !n.given_py.is_empty() {
                k.push(format!("gb:{}{b}", n.given_py));
            }
        }
    }
    if profile == Profile::Western {
        // Western files corrupt several fields of one record at once: more passes, each on
        // name parts with the locality or the birth month, and on the address line.
        if let Some(n) = &r.name {
            if let Some(p) = place {
                for f in n.family_py.iter().take(1) {
                    k.push(format!("fp:{f}|{p}"));
                }
                if !n.given_py.is_empty() {
                    k.push(format!("gp:{}|{p}", n.given_py));
                }
            }
            if let (Some((y, m, _)), Some(f)) = (r.birth, n.family_py.first()) {
                k.push(format!("fm:{f}{y}{m}"));
            }
        }
        if let Some(l) = r.place.line.as_deref().map(crate::compare::joined) {
            if l.len() >= 8 {
                k.push(format!("l:{l}"));
            }
        }
        // Family and given names written the other way round, and a locality written
        // right when its postcode is not: each name part, whichever it is recorded as.
        if let Some(n) = &r.name {
            let parts = n
                .family_py
                .iter()
                .take(1)
                .chain(Some(&n.given_py).filter(|g| !g.is_empty()));
            for part in parts {
                if let Some(b) = &birth {
                    k.push(format!("xb:{part}{b}"));
                }
                if let Some(c) = &r.place.city {
                    k.push(format!("xc:{part}|{c}"));
                }
            }
        }
        if let (Some(b), Some(c)) = (&birth, &r.place.city) {
            k.push(format!("bc:{b}|{c}"));
        }
        // Both name parts mistyped, and the birth date too: the parts' first letters (where
        // typing errors are rarest) with the postcode or the locality, and the address's
        // words without its house number.
        if let Some(n) = &r.name {
            let head = |s: &str| s.chars().take(3).collect::<String>();
            if let (Some(f), false) = (n.family_py.first(), n.given_py.is_empty()) {
                let h = format!("{}{}", head(f), head(&n.given_py));
                for p in [&r.place.postcode, &r.place.city].into_iter().flatten() {
                    k.push(format!("hp:{h}|{p}"));
                }
            }
        }
        if let (Some(l), Some(p)) = (&r.place.line, place) {
            let street: String = l.chars().filter(|c| c.is_alphabetic()).collect();
            if street.len() >= 6 {
                k.push(format!("ls:{street}|{p}"));
            }
        }
        // The address's two longest words (a street or building name typed right when the
        // rest is not) with the postcode or the locality.
        if let Some(l) = &r.place.line {
            let mut w: Vec<&str> = l
                .split(' ')
                .filter(|w| w.chars().count() >= 5 && w.chars().all(char::is_alphabetic))
                .collect();
            w.sort_unstable_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
            w.dedup();
            for word in w.iter().take(2) {
                for p in [&r.place.postcode, &r.place.city].into_iter().flatten() {
                    k.push(format!("lw:{word}|{p}"));
                }
            }
        }
    }
    if let Some(p) = &r.phone {
        k.push(format!("p:{p}"));
    }
    if let (Some(b), Some(p)) = (&birth, place) {
        k.push(format!("bp:{b}|{p}|{:?}", r.sex));
    }
    k
}

/// A blocking key as a stable 64-bit number (FNV-1a): what an index keeps, in memory or in
/// a database, so it must not change between runs or builds. Never 0 (0 pads key lists).
pub fn key_hash(k: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in k.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    match h as i64 {
        0 => 1,
        x => x,
    }
}

/// A record's blocking keys, hashed, each once, in order.
pub fn hashed_keys(r: &Record, profile: Profile) -> Vec<i64> {
    let mut k: Vec<i64> = keys(r, profile).iter().map(|k| key_hash(k)).collect();
    k.sort_unstable();
    k.dedup();
    k
}

/// Candidate pairs (i < j), each once.
pub fn candidates(records: &[Record], profile: Profile) -> Vec<(u32, u32)> {
    let mut blocks: HashMap<String, Vec<u32>> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        for key in keys(r, profile) {
            blocks.entry(key).or_default().push(i as u32);
        }
    }
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    for members in blocks.values() {
        if members.len() < 2 || members.len() > MAX_BLOCK {
            continue;
        }
        for (x, &a) in members.iter().enumerate() {
            for &b in &members[x + 1..] {
                if a != b {
                    pairs.push((a.min(b), a.max(b)));
                }
            }
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::normalize::Raw;

    /// Stored indexes keep these numbers: a change of hash would orphan every block row.
    #[test]
    fn key_hashes_are_stable() {
        assert_eq!(key_hash(""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(key_hash("a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
        assert_eq!(key_hash("foobar"), 0x8594_4171_f739_67e8_u64 as i64);
    }

    /// Western files swap family and given names and mistype postcodes in the same record;
    /// such a pair still meets in some block.
    #[test]
    fn swapped_names_with_a_postcode_typo_meet() {
        let r = |family: &str, given: &str, postcode: &str, line: &str| {
            Raw {
                family: Some(family.into()),
                given: Some(given.into()),
                birth_date: Some("1982-02-15".into()),
                city: Some("kinross".into()),
                postcode: Some(postcode.into()),
                address_line: Some(line.into()),
                ..Raw::default()
            }
            .normalize()
        };
        let a = r("matthews", "harley", "6051", "32 badimara street");
        let b = r("harley", "matthews", "6015", "32 badimaa street");
        let ka: std::collections::HashSet<String> =
            keys(&a, Profile::Western).into_iter().collect();
        assert!(keys(&b, Profile::Western).iter().any(|k| ka.contains(k)));
        assert_eq!(candidates(&[a, b], Profile::Western), [(0, 1)]);
    }
}
