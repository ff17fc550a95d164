//! A pooled slot's state and the claims that change it. IHE Scheduling's `$hold` and
//! `$book` and the Appointment's own status all come down to one question — may this
//! Appointment have this slot now? — answered here, so that it is answered the same way by
//! every path, and the database's row lock only has to make the answers take turns.

use std::fmt;

/// Where a slot stands in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// Bookable.
    Free,
    /// Held for an Appointment (`$hold`) until a time; anyone may take it after that.
    Held { by: String, until: i64 },
    /// Booked by an Appointment.
    Booked { by: String },
    /// Taken out of the pool by its institution (the Slot's own status says busy or
    /// unavailable: a walk-in, the doctor away).
    Closed,
}

/// What an Appointment asks of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// A hold until the given time.
    Hold {
        until: i64,
    },
    Book,
}

/// Why a claim was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("the slot is held for another appointment until {until}")]
    Held { until: i64 },
    #[error("the slot is already booked")]
    Booked,
    #[error("the slot is not available (its institution has closed it)")]
    Closed,
}

impl SlotState {
    /// The state after `by` claims the slot at `now`, or why it may not.
    pub fn claim(&self, by: &str, claim: Claim, now: i64) -> Result<SlotState, ClaimError> {
        let next = || match claim {
            Claim::Hold { until } => SlotState::Held {
                by: by.to_string(),
                until,
            },
            Claim::Book => SlotState::Booked { by: by.to_string() },
        };
        match self {
            SlotState::Free => Ok(next()),
            SlotState::Held { by: b, .. } if b == by => Ok(next()),
            SlotState::Held { until, .. } if *until <= now => Ok(next()),
            SlotState::Held { until, .. } => Err(ClaimError::Held { until: *until }),
            // Saving a booked Appointment again (another field changed) keeps its slot.
            SlotState::Booked { by: b } if b == by && claim == Claim::Book => Ok(self.clone()),
            SlotState::Booked { .. } => Err(ClaimError::Booked),
            SlotState::Closed => Err(ClaimError::Closed),
        }
    }

    /// The state after `by` lets the slot go (cancelled, rescheduled elsewhere, entered in
    /// error): free when `by` had it, unchanged otherwise.
    pub fn release(&self, by: &str) -> SlotState {
        match self {
            SlotState::Held { by: b, .. } | SlotState::Booked { by: b } if b == by => {
                SlotState::Free
            }
            other => other.clone(),
        }
    }

    /// Whether a `$find` at `now` offers the slot.
    pub fn offered(&self, now: i64) -> bool {
        match self {
            SlotState::Free => true,
            SlotState::Held { until, .. } => *until <= now,
            _ => false,
        }
    }

    /// The Appointment that has the slot, if one does.
    pub fn holder(&self) -> Option<&str> {
        match self {
            SlotState::Held { by, .. } | SlotState::Booked { by } => Some(by),
            _ => None,
        }
    }

    /// The state's name as stored, the holding Appointment (or ""), and the hold's end.
    pub fn to_row(&self) -> (&'static str, &str, i64) {
        match self {
            SlotState::Free => ("free", "", 0),
            SlotState::Held { by, until } => ("held", by, *until),
            SlotState::Booked { by } => ("booked", by, 0),
            SlotState::Closed => ("closed", "", 0),
        }
    }

    /// The state from its stored row; an unknown name reads as closed (never bookable).
    pub fn from_row(state: &str, by: &str, until: i64) -> SlotState {
        match state {
            "free" => SlotState::Free,
            "held" => SlotState::Held {
                by: by.to_string(),
                until,
            },
            "booked" => SlotState::Booked { by: by.to_string() },
            _ => SlotState::Closed,
        }
    }

    /// The FHIR `Slot.status` the pool shows for this state.
    pub fn slot_status(&self) -> &'static str {
        match self {
            SlotState::Free => "free",
            SlotState::Held { .. } => "busy-tentative",
            SlotState::Booked { .. } => "busy",
            SlotState::Closed => "busy-unavailable",
        }
    }
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.to_row().0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_hold_blocks_others_until_it_expires() {
        let held = SlotState::Free
            .claim("a", Claim::Hold { until: 100 }, 0)
            .unwrap();
        assert_eq!(
            held.claim("b", Claim::Book, 99),
            Err(ClaimError::Held { until: 100 })
        );
        assert_eq!(
            held.claim("b", Claim::Book, 100),
            Ok(SlotState::Booked { by: "b".into() })
        );
        assert_eq!(
            held.claim("a", Claim::Book, 50),
            Ok(SlotState::Booked { by: "a".into() })
        );
        assert!(!held.offered(99) && held.offered(100));
    }

    #[test]
    fn a_booking_is_kept_by_its_appointment_and_refused_to_others() {
        let booked = SlotState::Booked { by: "a".into() };
        assert_eq!(booked.claim("a", Claim::Book, 0), Ok(booked.clone()));
        assert_eq!(
            booked.claim("a", Claim::Hold { until: 9 }, 0),
            Err(ClaimError::Booked)
        );
        assert_eq!(booked.claim("b", Claim::Book, 0), Err(ClaimError::Booked));
        assert_eq!(booked.release("b"), booked);
        assert_eq!(booked.release("a"), SlotState::Free);
        assert_eq!(
            SlotState::Closed.claim("a", Claim::Book, 0),
            Err(ClaimError::Closed)
        );
    }

    #[test]
    fn rows_round_trip() {
        for s in [
            SlotState::Free,
            SlotState::Held {
                by: "x".into(),
                until: 7,
            },
            SlotState::Booked { by: "y".into() },
            SlotState::Closed,
        ] {
            let (n, by, until) = s.to_row();
            assert_eq!(SlotState::from_row(n, by, until), s);
        }
        assert_eq!(SlotState::from_row("??", "", 0), SlotState::Closed);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Hold(usize, i64),
        Book(usize),
        Release(usize),
        Wait(i64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..4, 1i64..50).prop_map(|(a, t)| Op::Hold(a, t)),
            (0usize..4).prop_map(Op::Book),
            (0usize..4).prop_map(Op::Release),
            (1i64..30).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Whatever appointments hold, book, release and however time passes: at most one
        /// appointment has the slot booked at any moment; a booking is taken away only by
        /// its own release; an unexpired hold is never overtaken.
        #[test]
        fn one_slot_one_booking(ops in proptest::collection::vec(op(), 1..60)) {
            let mut s = SlotState::Free;
            let mut now = 0i64;
            let mut booked: Option<usize> = None;
            for o in ops {
                let before = s.clone();
                match o {
                    Op::Hold(a, ttl) => {
                        if let Ok(n) = s.claim(&a.to_string(), Claim::Hold { until: now + ttl }, now) {
                            prop_assert!(booked.is_none(), "a hold displaced booking {:?}", booked);
                            s = n;
                        }
                    }
                    Op::Book(a) => match s.claim(&a.to_string(), Claim::Book, now) {
                        Ok(n) => {
                            prop_assert!(booked.is_none() || booked == Some(a));
                            if let SlotState::Held { by, until } = &before {
                                prop_assert!(*by == a.to_string() || *until <= now, "an unexpired hold was overtaken");
                            }
                            booked = Some(a);
                            s = n;
                        }
                        Err(_) => {
                            // The booking's own appointment is never refused its slot.
                            let own = booked == Some(a);
                            prop_assert!(!own);
                        }
                    },
                    Op::Release(a) => {
                        s = s.release(&a.to_string());
                        if booked == Some(a) { booked = None; }
                    }
                    Op::Wait(d) => now += d,
                }
                prop_assert_eq!(booked.map(|a| a.to_string()), match &s { SlotState::Booked { by } => Some(by.clone()), _ => None });
            }
        }
    }
}
