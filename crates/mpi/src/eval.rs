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
