//! Characters: Mandarin readings (toneless, most common first) and the traditional ↔
//! simplified maps.

use std::collections::HashMap;
use std::sync::OnceLock;

const PINYIN: &str = include_str!("../data/pinyin.tsv");
const T2S: &str = include_str!("../data/t2s.tsv");
const S2T: &str = include_str!("../data/s2t.tsv");

fn char_table(src: &'static str) -> HashMap<char, &'static str> {
    src.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once('\t')?;
            Some((k.chars().next()?, v))
        })
        .collect()
}

fn pinyin() -> &'static HashMap<char, &'static str> {
    static T: OnceLock<HashMap<char, &'static str>> = OnceLock::new();
    T.get_or_init(|| char_table(PINYIN))
}

fn map(
    src: &'static str,
    cell: &'static OnceLock<HashMap<char, char>>,
) -> &'static HashMap<char, char> {
    cell.get_or_init(|| {
        char_table(src)
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.chars().next()?)))
            .collect()
    })
}

/// Every toneless reading of a character (`ü` written `v`), most common first; empty for
/// characters that are not Han.
pub fn readings(c: char) -> impl Iterator<Item = &'static str> {
    pinyin()
        .get(&c)
        .copied()
        .unwrap_or("")
        .split(',')
        .filter(|s| !s.is_empty())
}

/// The most common reading.
pub fn reading(c: char) -> Option<&'static str> {
    readings(c).next()
}

pub fn is_han(c: char) -> bool {
    pinyin().contains_key(&c)
}

pub fn to_simplified(s: &str) -> String {
    static T: OnceLock<HashMap<char, char>> = OnceLock::new();
    let t = map(T2S, &T);
    s.chars().map(|c| *t.get(&c).unwrap_or(&c)).collect()
}

pub fn to_traditional(s: &str) -> String {
    static T: OnceLock<HashMap<char, char>> = OnceLock::new();
    let t = map(S2T, &T);
    s.chars().map(|c| *t.get(&c).unwrap_or(&c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_and_scripts() {
        assert_eq!(reading('张'), Some("zhang"));
        assert!(readings('曾').any(|r| r == "zeng"));
        assert!(readings('单').any(|r| r == "shan"));
        assert_eq!(reading('吕'), Some("lv"));
        assert_eq!(to_traditional("张伟"), "張偉");
        assert_eq!(to_simplified("張偉"), "张伟");
        assert!(!is_han('A'));
    }
}
