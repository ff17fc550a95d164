//! The family-doctor share of the slot pool. Chongqing's pool keeps at least a fifth of
//! every schedule's bookable slots for family doctors' referrals (seed 004); those slots go
//! back to the public pool a release time before they start, so that none is wasted.
//!
//! Which slots are reserved is the platform's decision, not the publisher's: the n-th slot
//! a schedule publishes is reserved when `floor(n·share) > floor((n-1)·share)`, which spreads
//! the reserve evenly through the schedule (every fifth slot at 20 %) and keeps exactly
//! `floor(n·share)` of the first `n` reserved however many are published, and in what order.

use serde::{Deserialize, Serialize};

/// A share in per mille, so that the rule is exact integer arithmetic.
const PER_MILLE: u64 = 1000;

/// The pool's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// The reserved share of every schedule, in per mille (default 200: 20 %).
    pub share_per_mille: u32,
    /// How long before its start a reserved slot returns to the public pool (default 48 h).
    pub release_ms: i64,
    /// How long a `$hold` keeps a slot (default 10 minutes).
    pub hold_ms: i64,
    /// Shares for an institution, a specialty (department), or both; the most specific wins.
    pub overrides: Vec<ShareOverride>,
    /// How long a receiving institution has to accept a referral before it is escalated
    /// (default 48 h).
    pub referral_accept_ms: i64,
    /// The results recognized across institutions, and for how long.
    #[serde(skip, default = "crate::recognition::List::builtin")]
    pub recognition: crate::recognition::List,
}

/// A share other than the default, for an institution and/or a specialty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareOverride {
    /// The institution's Organization id; `None` for every institution.
    #[serde(default)]
    pub institution: Option<String>,
    /// The specialty (department) code or name; `None` for every specialty.
    #[serde(default)]
    pub specialty: Option<String>,
    pub share_per_mille: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            share_per_mille: 200,
            release_ms: 48 * 3_600_000,
            hold_ms: 10 * 60_000,
            overrides: Vec::new(),
            referral_accept_ms: 48 * 3_600_000,
            recognition: crate::recognition::List::builtin(),
        }
    }
}

/// Who is taking a slot, as far as the share is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Booker {
    /// A resident, a proxy, an institution's booking system, a hospital clinician.
    Public,
    /// A family doctor (a clinician or system of a primary-care institution) booking on a
    /// referral of theirs.
    FamilyDoctor,
    /// The platform itself (an operator's correction, a migration).
    Platform,
}

/// Why a reserved slot was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserve {
    /// When the slot returns to the public pool (ms since the epoch).
    pub release_at: i64,
}

impl Policy {
    /// The share (per mille) for a schedule of `institution` in `specialty`: an override
    /// naming both, else one naming the specialty, else one naming the institution, else
    /// the default. Shares above 1000 count as 1000.
    pub fn share_for(&self, institution: &str, specialty: &str) -> u32 {
        let matches = |o: &ShareOverride, inst: bool, spec: bool| {
            o.institution.is_some() == inst
                && o.specialty.is_some() == spec
                && o.institution.as_deref().is_none_or(|i| i == institution)
                && o.specialty.as_deref().is_none_or(|s| s == specialty)
        };
        [(true, true), (false, true), (true, false)]
            .iter()
            .find_map(|&(i, s)| self.overrides.iter().find(|o| matches(o, i, s)))
            .map_or(self.share_per_mille, |o| o.share_per_mille)
            .min(PER_MILLE as u32)
    }

    /// Whether the `ordinal`-th slot (from 1) a schedule publishes is reserved at `share`.
    pub fn reserved_at(ordinal: u64, share_per_mille: u32) -> bool {
        let s = u64::from(share_per_mille.min(PER_MILLE as u32));
        ordinal > 0 && ordinal * s / PER_MILLE > (ordinal - 1) * s / PER_MILLE
    }

    /// When a reserved slot starting at `start` returns to the public pool.
    pub fn release_at(&self, start: i64) -> i64 {
        start.saturating_sub(self.release_ms)
    }

    /// Whether `booker` may take a slot starting at `start` (reserved or not) at `now`.
    pub fn may_take(
        &self,
        reserved: bool,
        start: i64,
        booker: Booker,
        now: i64,
    ) -> Result<(), Reserve> {
        let release_at = self.release_at(start);
        match booker {
            _ if !reserved || now >= release_at => Ok(()),
            Booker::FamilyDoctor | Booker::Platform => Ok(()),
            Booker::Public => Err(Reserve { release_at }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_fifth_slot_is_reserved_at_twenty_percent() {
        let reserved: Vec<u64> = (1..=20).filter(|&n| Policy::reserved_at(n, 200)).collect();
        assert_eq!(reserved, vec![5, 10, 15, 20]);
        assert!(!Policy::reserved_at(0, 200));
        assert!((1..=50).all(|n| !Policy::reserved_at(n, 0)));
        assert!((1..=50).all(|n| Policy::reserved_at(n, 1000)));
    }

    #[test]
    fn the_most_specific_override_wins() {
        let p = Policy {
            overrides: vec![
                ShareOverride {
                    institution: Some("t01".into()),
                    specialty: None,
                    share_per_mille: 300,
                },
                ShareOverride {
                    institution: None,
                    specialty: Some("儿科".into()),
                    share_per_mille: 100,
                },
                ShareOverride {
                    institution: Some("t01".into()),
                    specialty: Some("儿科".into()),
                    share_per_mille: 500,
                },
            ],
            ..Policy::default()
        };
        assert_eq!(p.share_for("t01", "儿科"), 500);
        assert_eq!(p.share_for("d01", "儿科"), 100);
        assert_eq!(p.share_for("t01", "内科"), 300);
        assert_eq!(p.share_for("d01", "内科"), 200);
    }

    #[test]
    fn a_reserved_slot_opens_to_everyone_at_its_release_time() {
        let p = Policy::default();
        let start = 10 * 86_400_000;
        let release = start - 48 * 3_600_000;
        assert_eq!(
            p.may_take(true, start, Booker::Public, release - 1),
            Err(Reserve {
                release_at: release
            })
        );
        assert_eq!(p.may_take(true, start, Booker::Public, release), Ok(()));
        assert_eq!(
            p.may_take(true, start, Booker::FamilyDoctor, release - 1),
            Ok(())
        );
        assert_eq!(p.may_take(false, start, Booker::Public, 0), Ok(()));
    }

    proptest! {
        /// However many slots a schedule publishes, exactly floor(n·share) of the first n
        /// are reserved, and any run of k consecutive slots holds floor or ceil of k·share
        /// of them: the reserve is neither short nor bunched at one end.
        #[test]
        fn the_reserve_is_exact_and_even(share in 0u32..=1000, n in 1u64..400, from in 1u64..400, k in 1u64..100) {
            let count = (1..=n).filter(|&i| Policy::reserved_at(i, share)).count() as u64;
            prop_assert_eq!(count, n * u64::from(share) / 1000);
            let run = (from..from + k).filter(|&i| Policy::reserved_at(i, share)).count() as u64;
            let lo = k * u64::from(share) / 1000;
            let hi = (k * u64::from(share)).div_ceil(1000);
            prop_assert!(run >= lo && run <= hi, "{} reserved in {}..{}", run, from, from + k);
        }

        /// A public booker never takes a reserved slot before its release, whatever the
        /// times; after it, anyone does; an unreserved slot is anyone's.
        #[test]
        fn only_family_doctors_take_the_reserve_before_release(
            start in 0i64..10_000_000_000, now in 0i64..10_000_000_000, release_h in 0i64..200, reserved: bool
        ) {
            let p = Policy { release_ms: release_h * 3_600_000, ..Policy::default() };
            let public = p.may_take(reserved, start, Booker::Public, now).is_ok();
            prop_assert_eq!(public, !reserved || now >= start - p.release_ms);
            prop_assert!(p.may_take(reserved, start, Booker::FamilyDoctor, now).is_ok());
            prop_assert!(p.may_take(reserved, start, Booker::Platform, now).is_ok());
        }
    }
}
