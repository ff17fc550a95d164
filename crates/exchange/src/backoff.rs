//! When a failed delivery is tried again: doubling from one second, capped at five minutes,
//! with a spread (from the subscription's id, not a random source, so the schedule is
//! reproducible) so that receivers coming back from an outage are not hit by every
//! subscription in the same instant.

/// The delay (ms) before attempt `failures + 1`, after `failures` consecutive failures.
pub fn delay_ms(failures: u32, spread_key: u64) -> i64 {
    if failures == 0 {
        return 0;
    }
    let base = 1_000i64 << (failures - 1).min(9);
    let capped = base.min(300_000);
    // Up to a quarter more, fixed per subscription.
    let spread = (spread_key % 1000) as i64 * capped / 4000;
    (capped + spread).min(375_000)
}

/// A stable key from a subscription's id.
pub fn key(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn doubles_from_a_second_to_five_minutes() {
        assert_eq!(delay_ms(0, 0), 0);
        assert_eq!(delay_ms(1, 0), 1_000);
        assert_eq!(delay_ms(2, 0), 2_000);
        assert_eq!(delay_ms(9, 0), 256_000);
        assert_eq!(delay_ms(10, 0), 300_000);
        assert_eq!(delay_ms(1000, 0), 300_000);
    }

    proptest! {
        #[test]
        fn never_shrinks_and_stays_bounded(f in 0u32..64, k in any::<u64>()) {
            let (a, b) = (delay_ms(f, k), delay_ms(f + 1, k));
            prop_assert!(a <= b);
            prop_assert!((0..=375_000).contains(&b));
        }
    }
}
