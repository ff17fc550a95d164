//! Chinese surnames and how common each is: the public statistics the generator draws
//! names from and the matcher weighs namesakes by (`data/surnames.tsv`).

use std::collections::HashMap;
use std::sync::OnceLock;

/// The table: surname, people per 10,000 bearing it, and its reading where it differs from
/// the character's most common one.
pub const SURNAMES_TSV: &str = include_str!("../data/surnames.tsv");

fn shares() -> &'static HashMap<&'static str, f64> {
    static S: OnceLock<HashMap<&'static str, f64>> = OnceLock::new();
    S.get_or_init(|| {
        SURNAMES_TSV
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let mut f = l.split('\t');
                let name = f.next()?;
                let per_10k: f64 = f.next()?.trim().parse().ok()?;
                Some((name, per_10k / 10_000.0))
            })
            .collect()
    })
}

/// The share of the population bearing `surname` (simplified characters), when the table
/// knows it.
pub fn surname_share(surname: &str) -> Option<f64> {
    shares().get(surname).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_surnames_carry_their_published_shares() {
        assert_eq!(surname_share("王"), Some(0.0712));
        assert_eq!(surname_share("张"), Some(0.0674));
        assert!(surname_share("欧阳").is_some_and(|s| s < 0.001));
        assert_eq!(surname_share("奥"), None);
        let total: f64 = shares().values().sum();
        assert!((0.5..1.0).contains(&total), "{total}");
    }
}
