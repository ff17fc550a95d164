//! Service coordination (业务协同) as rules without I/O, so that the server's slot pool, the
//! tests and the benchmarks decide the same way.
//!
//! Layout:
//! - [`share`]: the family-doctor share (号源池 reserve) — which of a schedule's slots are
//!   reserved for family doctors' referrals, until when, and who may take one.
//! - [`recognition`]: the regional list of results recognized across institutions
//!   (检查检验结果互认) and how long each is recognized.
//! - [`followup`]: when a contracted resident with hypertension or diabetes is due a
//!   follow-up, and whether the year's management met the norm.
//! - [`referral`]: two-way referral's states and who may move them.
//! - [`lifecycle`]: a slot's state in the pool (free, held, booked, out of the pool) and the
//!   claims that move it, so that no slot is ever booked twice.
//!
//! Architecture invariant: the server never changes a pooled slot's state except through
//! [`lifecycle::SlotState::claim`] and [`lifecycle::SlotState::release`], and only after
//! [`share::Policy::may_take`] has allowed the booker.

pub mod followup;
pub mod lifecycle;
pub mod recognition;
pub mod referral;
pub mod share;

pub use lifecycle::{Claim, ClaimError, SlotState};
pub use share::{Booker, Policy, Reserve, ShareOverride};
