//! The generator's randomness: ChaCha8 streams derived from the seed, so that every chunk
//! of residents has its own reproducible stream whatever thread generates it.

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

pub struct Rng(ChaCha8Rng);

/// SplitMix64 finaliser: spreads (seed, stream) over the 256-bit ChaCha key.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64, stream: u64) -> Rng {
        let mut key = [0u8; 32];
        let mut s = mix(seed) ^ mix(stream.wrapping_mul(0xA24B_AED4_963E_E407));
        for c in key.chunks_mut(8) {
            s = mix(s);
            c.copy_from_slice(&s.to_le_bytes());
        }
        Rng(ChaCha8Rng::from_seed(key))
    }

    /// Uniform in [0, 1).
    pub fn f(&mut self) -> f64 {
        self.0.random::<f64>()
    }

    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.f() < p.min(1.0)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            lo
        } else {
            self.0.random_range(lo..hi)
        }
    }

    pub fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            0
        } else {
            self.0.random_range(0..n)
        }
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }

    /// Normal(mean, sd) by Box–Muller.
    pub fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let u1 = self.f().max(1e-12);
        let u2 = self.f();
        mean + sd * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Poisson(lambda) by inversion (lambda is small here: visits per year).
    pub fn poisson(&mut self, lambda: f64) -> u32 {
        let l = (-lambda).exp();
        let mut k = 0;
        let mut p = 1.0;
        loop {
            p *= self.f();
            if p <= l || k > 200 {
                return k;
            }
            k += 1;
        }
    }

    /// An index drawn by weight from cumulative weights.
    pub fn weighted(&mut self, cumulative: &[u32]) -> usize {
        let total = *cumulative.last().expect("non-empty weights");
        let x = self.0.random_range(0..total);
        cumulative.partition_point(|&c| c <= x)
    }
}

/// Running sums of weights, for [`Rng::weighted`].
pub fn cumulative(weights: impl IntoIterator<Item = u32>) -> Vec<u32> {
    let mut acc = 0;
    weights
        .into_iter()
        .map(|w| {
            acc += w.max(1);
            acc
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<i64> = (0..5).map(|_| Rng::new(7, 1).range(0, 1000)).collect();
        let mut r = Rng::new(7, 1);
        let b: Vec<i64> = (0..5).map(|_| r.range(0, 1000)).collect();
        assert!(a.iter().all(|x| *x == a[0]));
        let mut r2 = Rng::new(7, 1);
        assert_eq!(b, (0..5).map(|_| r2.range(0, 1000)).collect::<Vec<_>>());
        let mut r3 = Rng::new(7, 2);
        assert_ne!(b, (0..5).map(|_| r3.range(0, 1000)).collect::<Vec<_>>());
    }

    #[test]
    fn weighted_respects_weights() {
        let cum = cumulative([1, 0, 8]);
        let mut r = Rng::new(1, 1);
        let mut counts = [0; 3];
        for _ in 0..9000 {
            counts[r.weighted(&cum)] += 1;
        }
        assert!(counts[2] > counts[0] * 4, "{counts:?}");
    }
}
