//! Two-way referral (双向转诊): upward from primary care to a hospital, downward from a
//! hospital back to the family doctor. A referral moves through its states only by the
//! actions each side may take; the resident's consent opens it to the receiving side.

use std::fmt;

/// Where a referral stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Sent, waiting for the resident's consent (SMS code or approval in the app).
    AwaitingConsent,
    /// Consented: waiting for the receiving institution to accept it.
    Requested,
    Accepted,
    /// An appointment is booked for it.
    Scheduled,
    /// The receiving side saw the patient (its encounter linked).
    Completed,
    Rejected,
    Cancelled,
}

/// Who acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Referrer,
    Receiver,
    /// The resident, by giving or refusing consent (through the grant).
    Resident,
    /// The platform (the overdue sweep, an operator's correction).
    Platform,
}

/// What can happen to a referral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ConsentGiven,
    ConsentRefused,
    Accept,
    Reject,
    Schedule,
    Complete,
    Cancel,
}

/// Why an action was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the referral is {state}: {action} is not possible now")]
    State { state: State, action: &'static str },
    #[error("{action} is for the {side}")]
    Side {
        action: &'static str,
        side: &'static str,
    },
}

impl State {
    pub const ALL: [State; 7] = [
        State::AwaitingConsent,
        State::Requested,
        State::Accepted,
        State::Scheduled,
        State::Completed,
        State::Rejected,
        State::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::AwaitingConsent => "awaiting-consent",
            State::Requested => "requested",
            State::Accepted => "accepted",
            State::Scheduled => "scheduled",
            State::Completed => "completed",
            State::Rejected => "rejected",
            State::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|x| x.as_str() == s)
    }

    pub fn is_final(self) -> bool {
        matches!(self, State::Completed | State::Rejected | State::Cancelled)
    }

    /// `Task.status` for this state (the state itself is `Task.businessStatus`).
    pub fn task_status(self) -> &'static str {
        match self {
            State::AwaitingConsent | State::Requested => "requested",
            State::Accepted => "accepted",
            State::Scheduled => "in-progress",
            State::Completed => "completed",
            State::Rejected => "rejected",
            State::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Action {
    pub const ALL: [Action; 7] = [
        Action::ConsentGiven,
        Action::ConsentRefused,
        Action::Accept,
        Action::Reject,
        Action::Schedule,
        Action::Complete,
        Action::Cancel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::ConsentGiven => "consent-given",
            Action::ConsentRefused => "consent-refused",
            Action::Accept => "accept",
            Action::Reject => "reject",
            Action::Schedule => "schedule",
            Action::Complete => "complete",
            Action::Cancel => "cancel",
        }
    }

    /// The actions a caller names (consent is the resident's, through the grant).
    pub fn parse(s: &str) -> Option<Action> {
        [
            Action::Accept,
            Action::Reject,
            Action::Schedule,
            Action::Complete,
            Action::Cancel,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }

    /// Who may take it.
    fn sides(self) -> (&'static [Side], &'static str) {
        match self {
            Action::ConsentGiven | Action::ConsentRefused => {
                (&[Side::Resident, Side::Platform], "resident")
            }
            Action::Accept | Action::Reject | Action::Complete => {
                (&[Side::Receiver, Side::Platform], "receiving institution")
            }
            Action::Schedule => (
                &[Side::Referrer, Side::Receiver, Side::Platform],
                "referring or receiving institution",
            ),
            Action::Cancel => (&[Side::Referrer, Side::Platform], "referring institution"),
        }
    }
}

/// The state after `side` takes `action` on a referral in `state`.
pub fn next(state: State, action: Action, side: Side) -> Result<State, Refused> {
    let (sides, who) = action.sides();
    if !sides.contains(&side) {
        return Err(Refused::Side {
            action: action.as_str(),
            side: who,
        });
    }
    use State::*;
    let to = match (state, action) {
        (AwaitingConsent, Action::ConsentGiven) => Requested,
        (AwaitingConsent, Action::ConsentRefused) => Cancelled,
        (Requested, Action::Accept) => Accepted,
        (Requested, Action::Reject) => Rejected,
        (Accepted | Scheduled, Action::Schedule) => Scheduled,
        (Accepted | Scheduled, Action::Complete) => Completed,
        (s, Action::Cancel) if !s.is_final() => Cancelled,
        // Consent withdrawn before the receiver took the referral on ends it.
        (Requested, Action::ConsentRefused) => Cancelled,
        _ => {
            return Err(Refused::State {
                state,
                action: action.as_str(),
            })
        }
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_usual_path_and_its_refusals() {
        let s = next(State::AwaitingConsent, Action::ConsentGiven, Side::Resident).unwrap();
        assert_eq!(s, State::Requested);
        assert!(matches!(
            next(s, Action::Accept, Side::Referrer),
            Err(Refused::Side { .. })
        ));
        let s = next(s, Action::Accept, Side::Receiver).unwrap();
        let s = next(s, Action::Schedule, Side::Referrer).unwrap();
        assert_eq!(s, State::Scheduled);
        let s = next(s, Action::Complete, Side::Receiver).unwrap();
        assert_eq!(s, State::Completed);
        assert!(next(s, Action::Cancel, Side::Referrer).is_err());
        assert!(next(State::AwaitingConsent, Action::Accept, Side::Receiver).is_err());
        assert_eq!(
            next(
                State::AwaitingConsent,
                Action::ConsentRefused,
                Side::Resident
            ),
            Ok(State::Cancelled)
        );
    }

    fn side() -> impl Strategy<Value = Side> {
        prop_oneof![
            Just(Side::Referrer),
            Just(Side::Receiver),
            Just(Side::Resident),
            Just(Side::Platform)
        ]
    }

    proptest! {
        /// Whatever is tried by whomever: final states never change; a referral reaches the
        /// receiver's hands (accepted, scheduled, completed) only through the resident's
        /// consent and the receiver's acceptance; only the referrer (or the platform)
        /// cancels; states and actions round-trip their names.
        #[test]
        fn lifecycle_holds(steps in proptest::collection::vec((0usize..7, side()), 0..40)) {
            let mut s = State::AwaitingConsent;
            let mut consented = false;
            let mut accepted = false;
            for (a, who) in steps {
                let action = Action::ALL[a];
                if let Ok(to) = next(s, action, who) {
                        prop_assert!(!s.is_final(), "{} left a final state", s);
                        if action == Action::ConsentGiven { consented = true; }
                        if action == Action::Accept { accepted = true; prop_assert!(consented); }
                        if matches!(to, State::Accepted | State::Scheduled | State::Completed) {
                            prop_assert!(consented && accepted);
                        }
                        if action == Action::Cancel {
                            prop_assert!(matches!(who, Side::Referrer | Side::Platform));
                        }
                        s = to;
                }
            }
            for st in State::ALL { prop_assert_eq!(State::parse(st.as_str()), Some(st)); }
        }
    }
}
