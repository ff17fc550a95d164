//! Work orders (工单): the lifecycle every anomaly or complaint about a source's data goes
//! through, whoever raised it — 谁提供谁负责, the institution that produced the data answers.
//!
//! open → accepted → in progress → resolved | rejected (with a reason) → closed by the
//! reporter; the reporter may reopen a resolution they do not accept. The platform's quality
//! officers may do anything the parties may (they step in when an order is escalated). The
//! rules here are pure so that the server, the portals and the property test share them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a work order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    Open,
    Accepted,
    InProgress,
    Resolved,
    Rejected,
    Closed,
}

impl State {
    pub const ALL: [State; 6] = [
        State::Open,
        State::Accepted,
        State::InProgress,
        State::Resolved,
        State::Rejected,
        State::Closed,
    ];

    /// The code in `Task.businessStatus`.
    pub fn code(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Accepted => "accepted",
            State::InProgress => "in-progress",
            State::Resolved => "resolved",
            State::Rejected => "rejected",
            State::Closed => "closed",
        }
    }

    pub fn parse(code: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.code() == code)
    }

    pub fn label(self) -> &'static str {
        match self {
            State::Open => "待受理",
            State::Accepted => "已受理",
            State::InProgress => "处理中",
            State::Resolved => "已解决",
            State::Rejected => "已驳回",
            State::Closed => "已关闭",
        }
    }

    /// The FHIR `Task.status` this state shows as. A closed order keeps the status of how
    /// it ended (`completed` or `rejected`); `businessStatus` says it is closed.
    pub fn task_status(self, ended_rejected: bool) -> &'static str {
        match self {
            State::Open => "requested",
            State::Accepted => "accepted",
            State::InProgress => "in-progress",
            State::Resolved => "completed",
            State::Rejected => "rejected",
            State::Closed if ended_rejected => "rejected",
            State::Closed => "completed",
        }
    }

    /// Whether the source still owes an answer (the SLA clock runs).
    pub fn pending(self) -> bool {
        matches!(self, State::Open | State::Accepted | State::InProgress)
    }
}

/// What someone does to a work order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Accept,
    Start,
    Resolve,
    Reject,
    Close,
    Reopen,
    Comment,
}

impl Action {
    pub const ALL: [Action; 7] = [
        Action::Accept,
        Action::Start,
        Action::Resolve,
        Action::Reject,
        Action::Close,
        Action::Reopen,
        Action::Comment,
    ];

    /// The operation name (`Task/{id}/$accept` …).
    pub fn op(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Start => "start",
            Action::Resolve => "resolve",
            Action::Reject => "reject",
            Action::Close => "close",
            Action::Reopen => "reopen",
            Action::Comment => "comment",
        }
    }

    pub fn parse(op: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.op() == op)
    }
}

/// How the asker stands to a work order (one person can be several: a clinician who reports
/// an error in their own institution's data is reporter and owner).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Parties {
    /// Of the institution the order is routed to.
    pub owner: bool,
    /// Who opened it.
    pub reporter: bool,
    /// A quality officer or administrator of the platform.
    pub operator: bool,
}

/// Why an action is not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("a work order that is {from} cannot be {action}")]
    State {
        from: &'static str,
        action: &'static str,
    },
    #[error("{0}")]
    Party(&'static str),
}

/// The state `action` leads to from `from`, if the asker may take it.
pub fn transition(from: State, action: Action, who: Parties) -> Result<State, Refused> {
    use Action::*;
    use State::*;
    let to = match (action, from) {
        (Accept, Open) => Accepted,
        (Start, Open | Accepted) => InProgress,
        (Resolve, Accepted | InProgress) => Resolved,
        (Reject, Open | Accepted | InProgress) => Rejected,
        (Close, Resolved | Rejected) => Closed,
        (Reopen, Resolved | Rejected) => Open,
        (Comment, s) if s != Closed => s,
        _ => {
            return Err(Refused::State {
                from: from.code(),
                action: match action {
                    Accept => "accepted",
                    Start => "started",
                    Resolve => "resolved",
                    Reject => "rejected",
                    Close => "closed",
                    Reopen => "reopened",
                    Comment => "commented on",
                },
            })
        }
    };
    let allowed = who.operator
        || match action {
            Accept | Start | Resolve | Reject => who.owner,
            Close | Reopen => who.reporter,
            Comment => who.owner || who.reporter,
        };
    if !allowed {
        return Err(Refused::Party(match action {
            Accept | Start | Resolve | Reject => {
                "Only the institution the work order is routed to (or a quality officer) works on it"
            }
            Close | Reopen => {
                "Only whoever reported the problem (or a quality officer) closes or reopens its work order"
            }
            Comment => "Only the reporter, the responsible institution and quality officers comment",
        }));
    }
    Ok(to)
}

/// What a work order is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Category {
    /// A resident: "this result is not mine".
    NotMine,
    /// A value, code or date is wrong.
    Incorrect,
    /// The same thing recorded twice.
    Duplicate,
    /// Something expected is missing.
    Missing,
    /// An intake rule keeps failing for this source.
    RuleFailures,
    /// Reconciliation found the source and the platform disagree.
    ReconciliationGap,
    /// Intake suspects the record was filed to the wrong patient.
    WrongPatient,
    /// The upstream platform (city, province) refused a record this node forwarded.
    UpstreamRejected,
    Other,
}

impl Category {
    pub const ALL: [Category; 9] = [
        Category::NotMine,
        Category::Incorrect,
        Category::Duplicate,
        Category::Missing,
        Category::RuleFailures,
        Category::ReconciliationGap,
        Category::WrongPatient,
        Category::UpstreamRejected,
        Category::Other,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Category::NotMine => "not-mine",
            Category::Incorrect => "incorrect",
            Category::Duplicate => "duplicate",
            Category::Missing => "missing",
            Category::RuleFailures => "rule-failures",
            Category::ReconciliationGap => "reconciliation-gap",
            Category::WrongPatient => "wrong-patient",
            Category::UpstreamRejected => "upstream-rejected",
            Category::Other => "other",
        }
    }

    pub fn parse(code: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.code() == code)
    }

    pub fn label(self) -> &'static str {
        match self {
            Category::NotMine => "不是我的记录",
            Category::Incorrect => "内容有误",
            Category::Duplicate => "重复记录",
            Category::Missing => "记录缺失",
            Category::RuleFailures => "质控规则反复不通过",
            Category::ReconciliationGap => "对账差异",
            Category::WrongPatient => "疑似错挂患者",
            Category::UpstreamRejected => "上级平台拒收",
            Category::Other => "其他",
        }
    }

    /// Opened by the platform itself, not by a person.
    pub fn automatic(self) -> bool {
        matches!(
            self,
            Category::RuleFailures
                | Category::ReconciliationGap
                | Category::WrongPatient
                | Category::UpstreamRejected
        )
    }
}

/// The work-order policy of the rules file's `[work-orders]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Hours the source has to resolve an order, by FHIR priority.
    pub sla_hours: BTreeMap<String, i64>,
    /// This many failures of one rule by one source within the window open a work order.
    pub repeat_threshold: i64,
    pub repeat_window_hours: i64,
}

impl Policy {
    /// The FHIR priorities, most relaxed first.
    pub const PRIORITIES: [&'static str; 4] = ["routine", "urgent", "asap", "stat"];

    /// When an order of `priority` opened at `opened` (ms) is due.
    pub fn due(&self, priority: &str, opened: i64) -> i64 {
        let hours = self
            .sla_hours
            .get(priority)
            .or_else(|| self.sla_hours.get("routine"))
            .copied()
            .unwrap_or(120);
        opened + hours * 3_600_000
    }
}

impl Default for Policy {
    fn default() -> Policy {
        crate::Rules::default().work_orders
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OWNER: Parties = Parties {
        owner: true,
        reporter: false,
        operator: false,
    };
    const REPORTER: Parties = Parties {
        owner: false,
        reporter: true,
        operator: false,
    };
    const NOBODY: Parties = Parties {
        owner: false,
        reporter: false,
        operator: false,
    };

    #[test]
    fn the_whole_lifecycle() {
        let s = transition(State::Open, Action::Accept, OWNER).unwrap();
        assert_eq!(s, State::Accepted);
        let s = transition(s, Action::Start, OWNER).unwrap();
        assert_eq!(s, State::InProgress);
        let s = transition(s, Action::Comment, REPORTER).unwrap();
        assert_eq!(s, State::InProgress, "a comment changes nothing");
        let s = transition(s, Action::Resolve, OWNER).unwrap();
        assert_eq!(s, State::Resolved);
        // The reporter disagrees, then accepts the second answer.
        let s = transition(s, Action::Reopen, REPORTER).unwrap();
        assert_eq!(s, State::Open);
        let s = transition(s, Action::Reject, OWNER).unwrap();
        assert_eq!(s, State::Rejected);
        assert_eq!(s.task_status(true), "rejected");
        let s = transition(s, Action::Close, REPORTER).unwrap();
        assert_eq!(s, State::Closed);
        assert_eq!(s.task_status(true), "rejected");
        assert_eq!(State::Closed.task_status(false), "completed");
    }

    #[test]
    fn parties_do_only_their_part() {
        assert!(matches!(
            transition(State::Open, Action::Accept, REPORTER),
            Err(Refused::Party(_))
        ));
        assert!(matches!(
            transition(State::Resolved, Action::Close, OWNER),
            Err(Refused::Party(_))
        ));
        assert!(matches!(
            transition(State::Open, Action::Comment, NOBODY),
            Err(Refused::Party(_))
        ));
        let officer = Parties {
            operator: true,
            ..NOBODY
        };
        assert_eq!(
            transition(State::Resolved, Action::Close, officer),
            Ok(State::Closed)
        );
    }

    #[test]
    fn out_of_order_steps_are_conflicts() {
        assert!(matches!(
            transition(State::Open, Action::Resolve, OWNER),
            Err(Refused::State { .. })
        ));
        assert!(matches!(
            transition(State::Closed, Action::Comment, OWNER),
            Err(Refused::State { .. })
        ));
        assert!(matches!(
            transition(State::InProgress, Action::Close, REPORTER),
            Err(Refused::State { .. })
        ));
    }

    #[test]
    fn deadlines_follow_the_priority() {
        let p = Policy::default();
        assert_eq!(p.due("routine", 0), 120 * 3_600_000);
        assert_eq!(p.due("stat", 0), 2 * 3_600_000);
        assert_eq!(p.due("unknown", 0), p.due("routine", 0));
    }

    #[test]
    fn the_rules_file_sets_the_policy() {
        let r = crate::Rules::from_toml(
            "[work-orders]\nsla_hours = { urgent = 6 }\nrepeat_threshold = 3\n",
        )
        .unwrap();
        assert_eq!(r.work_orders.due("urgent", 0), 6 * 3_600_000);
        assert_eq!(r.work_orders.due("routine", 0), 120 * 3_600_000);
        assert_eq!(r.work_orders.repeat_threshold, 3);
        assert!(crate::Rules::from_toml("[work-orders]\nsla_hours = { soon = 1 }\n").is_err());
        assert!(crate::Rules::from_toml("[work-orders]\nescalate = true\n").is_err());
        assert!(crate::Rules::from_toml("[work-orders]\nrepeat_threshold = -1\n").is_err());
    }

    fn state() -> impl Strategy<Value = State> {
        proptest::sample::select(State::ALL.to_vec())
    }
    fn action() -> impl Strategy<Value = Action> {
        proptest::sample::select(Action::ALL.to_vec())
    }
    fn parties() -> impl Strategy<Value = Parties> {
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(owner, reporter, operator)| {
            Parties {
                owner,
                reporter,
                operator,
            }
        })
    }

    proptest! {
        /// Whatever anyone does, a closed order stays closed, only the owner's side (or an
        /// officer) ends the SLA clock, and only the reporter's side (or an officer) closes.
        #[test]
        fn lifecycle_invariants(steps in proptest::collection::vec((action(), parties()), 0..40), start in state()) {
            let mut s = start;
            for (a, who) in steps {
                if let Ok(to) = transition(s, a, who) {
                        prop_assert!(s != State::Closed);
                        if s.pending() && !to.pending() {
                            prop_assert!(who.owner || who.operator);
                        }
                        if to == State::Closed {
                            prop_assert!(who.reporter || who.operator);
                        }
                        if a == Action::Comment {
                            prop_assert_eq!(to, s);
                        }
                        s = to;
                }
            }
        }
    }
}
