//! Pairwise evaluation of a clustering against the truth.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PairCounts {
    pub true_positive: u64,
    pub false_positive: u64,
    pub false_negative: u64,
}

impl PairCounts {
    pub fn precision(&self) -> f64 {
        let d = self.true_positive + self.false_positive;
        if d == 0 {
            1.0
        } else {
            self.true_positive as f64 / d as f64
        }
    }

    pub fn recall(&self) -> f64 {
        let d = self.true_positive + self.false_negative;
        if d == 0 {
            1.0
        } else {
            self.true_positive as f64 / d as f64
        }
    }

    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 {
            0.0
        } else {
            2.0 * p * r / (p + r)
        }
    }
}

fn pairs(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

/// Compares predicted clusters with true entities, both given per record.
pub fn pairwise<P: std::hash::Hash + Eq, T: std::hash::Hash + Eq>(
    predicted: &[P],
    truth: &[T],
) -> PairCounts {
    let mut both: HashMap<(&P, &T), u64> = HashMap::new();
    let mut pred: HashMap<&P, u64> = HashMap::new();
    let mut tru: HashMap<&T, u64> = HashMap::new();
    for (p, t) in predicted.iter().zip(truth) {
        *both.entry((p, t)).or_default() += 1;
        *pred.entry(p).or_default() += 1;
        *tru.entry(t).or_default() += 1;
    }
    let tp: u64 = both.values().map(|&n| pairs(n)).sum();
    let pp: u64 = pred.values().map(|&n| pairs(n)).sum();
    let tt: u64 = tru.values().map(|&n| pairs(n)).sum();
    PairCounts {
        true_positive: tp,
        false_positive: pp - tp,
        false_negative: tt - tp,
    }
}

/// A set of labelled registration records (the independent evaluation set's CSV: columns
/// `record_id, person_id, source, name, family, given, sex, birth_date, id_number, phone,
/// address_line, district, city, state, postcode, error_kinds`).
pub struct Labelled {
    pub records: Vec<crate::Record>,
    /// The true person of each record.
    pub truth: Vec<String>,
    /// The deviations the generator applied to each record (`;`-separated kinds).
    pub errors: Vec<String>,
    pub ids: Vec<String>,
}

/// Reads a labelled CSV (header row required; columns by name).
pub fn read_labelled(input: impl std::io::Read) -> Result<Labelled, csv::Error> {
    let mut r = csv::Reader::from_reader(input);
    let headers = r.headers()?.clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let cols: Vec<Option<usize>> = [
        "record_id",
        "person_id",
        "name",
        "family",
        "given",
        "sex",
        "birth_date",
        "id_number",
        "phone",
        "address_line",
        "district",
        "city",
        "state",
        "postcode",
        "error_kinds",
    ]
    .iter()
    .map(|c| col(c))
    .collect();
    let mut out = Labelled {
        records: Vec::new(),
        truth: Vec::new(),
        errors: Vec::new(),
        ids: Vec::new(),
    };
    for row in r.records() {
        let row = row?;
        let f = |i: usize| {
            cols[i]
                .and_then(|c| row.get(c))
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(String::from)
        };
        out.ids.push(f(0).unwrap_or_default());
        out.truth.push(f(1).unwrap_or_default());
        out.records.push(
            crate::Raw {
                name: f(2),
                family: f(3),
                given: f(4),
                sex: f(5),
                birth_date: f(6),
                id_number: f(7),
                phone: f(8),
                address_line: f(9),
                district: f(10),
                city: f(11),
                state: f(12),
                postcode: f(13),
            }
            .normalize(),
        );
        out.errors.push(f(14).unwrap_or_default());
    }
    Ok(out)
}

/// The wrong links of a clustering: pairs of records put together that are different
/// people, as (record, record) indexes — at most `limit`.
pub fn false_links<P: std::hash::Hash + Eq + Clone, T: PartialEq>(
    predicted: &[P],
    truth: &[T],
    limit: usize,
) -> Vec<(usize, usize)> {
    let mut groups: HashMap<P, Vec<usize>> = HashMap::new();
    for (i, p) in predicted.iter().enumerate() {
        groups.entry(p.clone()).or_default().push(i);
    }
    let mut out = Vec::new();
    for g in groups.values() {
        for (x, &a) in g.iter().enumerate() {
            for &b in &g[x + 1..] {
                if truth[a] != truth[b] {
                    out.push((a.min(b), a.max(b)));
                }
            }
        }
    }
    out.sort_unstable();
    out.truncate(limit);
    out
}

/// The pairs of the same person left apart, as (record, record) indexes — at most `limit`.
pub fn missed_links<P: PartialEq, T: std::hash::Hash + Eq + Clone>(
    predicted: &[P],
    truth: &[T],
    limit: usize,
) -> Vec<(usize, usize)> {
    let mut groups: HashMap<T, Vec<usize>> = HashMap::new();
    for (i, t) in truth.iter().enumerate() {
        groups.entry(t.clone()).or_default().push(i);
    }
    let mut out = Vec::new();
    for g in groups.values() {
        for (x, &a) in g.iter().enumerate() {
            for &b in &g[x + 1..] {
                if predicted[a] != predicted[b] {
                    out.push((a.min(b), a.max(b)));
                }
            }
        }
    }
    out.sort_unstable();
    out.truncate(limit);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let c = pairwise(&[1, 1, 1, 2], &["a", "a", "b", "b"]);
        assert_eq!(
            c,
            PairCounts {
                true_positive: 1,
                false_positive: 2,
                false_negative: 1
            }
        );
        assert!((c.precision() - 1.0 / 3.0).abs() < 1e-9);
    }
}
