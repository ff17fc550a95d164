//! Administrative divisions (GB/T 2260): province `PP0000`, prefecture `PPCC00`, county
//! `PPCCDD`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

const DIVISIONS: &str = include_str!("../data/divisions.tsv");

fn table() -> &'static BTreeMap<u32, &'static str> {
    static T: OnceLock<BTreeMap<u32, &'static str>> = OnceLock::new();
    T.get_or_init(|| {
        DIVISIONS
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (c, n) = l.split_once('\t')?;
                Some((c.parse().ok()?, n))
            })
            .collect()
    })
}

/// The name of a division, if the code exists.
pub fn name(code: u32) -> Option<&'static str> {
    table().get(&code).copied()
}

pub fn exists(code: u32) -> bool {
    table().contains_key(&code)
}

pub fn province_exists(code: u32) -> bool {
    exists(code / 10000 * 10000)
}

/// The counties (districts) of a prefecture, in code order.
pub fn counties_of(prefecture: u32) -> Vec<(u32, &'static str)> {
    let base = prefecture / 100 * 100;
    table()
        .range(base + 1..base + 100)
        .map(|(c, n)| (*c, *n))
        .collect()
}

/// The prefectures of a province, in code order.
pub fn prefectures_of(province: u32) -> Vec<(u32, &'static str)> {
    let base = province / 10000 * 10000;
    table()
        .range(base + 1..base + 10000)
        .filter(|(c, _)| *c % 100 == 0)
        .map(|(c, n)| (*c, *n))
        .collect()
}

/// Province, prefecture and county names of a county code. Municipalities list their
/// districts under a prefecture called 市辖区; the province name stands in for it.
pub fn path(code: u32) -> Option<(&'static str, &'static str, &'static str)> {
    let p = name(code / 10000 * 10000)?;
    let c = name(code / 100 * 100)?;
    let d = name(code)?;
    let c = if c == "市辖区" || c == "县" { p } else { c };
    Some((p, c, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(name(330000), Some("浙江省"));
        assert_eq!(path(330106), Some(("浙江省", "杭州市", "西湖区")));
        assert_eq!(path(110105), Some(("北京市", "北京市", "朝阳区")));
        assert!(counties_of(330100).iter().any(|(_, n)| *n == "西湖区"));
        assert!(prefectures_of(330000).iter().any(|(_, n)| *n == "宁波市"));
        assert!(!province_exists(990000));
    }
}
