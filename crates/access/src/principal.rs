//! Who is asking: the principal a token names, and the SMART scopes it carries.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kinds of principal the platform knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// An institution's system (HIS, EMR, LIS…), by OAuth2 client credentials.
    System,
    /// A clinician acting for their institution.
    Clinician,
    /// A resident, for themselves and those they are proxy for.
    Resident,
    /// Platform staff, by role.
    Operator,
    /// The platform's own services and trusted platform clients (a higher-level platform,
    /// the command line): they see everything, and are audited like everyone else.
    Platform,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::System => "system",
            Kind::Clinician => "clinician",
            Kind::Resident => "resident",
            Kind::Operator => "operator",
            Kind::Platform => "platform",
        }
    }
}

/// Operator roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    IdentitySteward,
    QualityOfficer,
    Auditor,
    PrivacyOfficer,
    Administrator,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::IdentitySteward,
        Role::QualityOfficer,
        Role::Auditor,
        Role::PrivacyOfficer,
        Role::Administrator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::IdentitySteward => "identity-steward",
            Role::QualityOfficer => "quality-officer",
            Role::Auditor => "auditor",
            Role::PrivacyOfficer => "privacy-officer",
            Role::Administrator => "administrator",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// What a principal may do among the platform's own operations — beyond reading and
/// writing resources, which the access decision governs. [`Principal::can`] is the one
/// table of who may do what; ARCHITECTURE.md shows the same table, and a test holds the two
/// together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// Every source's quarantine, scorecards, reconciliations and work-order queue; the
    /// work-order sweep.
    OverseeQuality,
    /// Link, unlink, merge and split persons; decide review Tasks.
    ManageIdentity,
    /// Make someone a resident's proxy on documents (with a recorded reason).
    AssignProxy,
    /// Review break-glass accesses.
    ReviewBreakGlass,
    /// Read the audit trail and any resident's access history; verify the chain.
    ReadAuditTrail,
}

impl Capability {
    pub const ALL: [Capability; 5] = [
        Capability::OverseeQuality,
        Capability::ManageIdentity,
        Capability::AssignProxy,
        Capability::ReviewBreakGlass,
        Capability::ReadAuditTrail,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::OverseeQuality => "oversee-quality",
            Capability::ManageIdentity => "manage-identity",
            Capability::AssignProxy => "assign-proxy",
            Capability::ReviewBreakGlass => "review-break-glass",
            Capability::ReadAuditTrail => "read-audit-trail",
        }
    }

    /// The operator roles that hold it (the platform's own services hold every one).
    pub fn roles(self) -> &'static [Role] {
        match self {
            Capability::OverseeQuality => &[Role::QualityOfficer, Role::Administrator],
            Capability::ManageIdentity => &[Role::IdentitySteward],
            Capability::AssignProxy => &[Role::IdentitySteward, Role::Administrator],
            Capability::ReviewBreakGlass => &[Role::PrivacyOfficer],
            Capability::ReadAuditTrail => &[Role::Auditor, Role::PrivacyOfficer],
        }
    }
}

/// The interactions a scope allows, SMART v2 style (`c r u d s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Perms(u8);

impl Perms {
    pub const CREATE: Perms = Perms(1);
    pub const READ: Perms = Perms(2);
    pub const UPDATE: Perms = Perms(4);
    pub const DELETE: Perms = Perms(8);
    pub const SEARCH: Perms = Perms(16);
    pub const ALL: Perms = Perms(31);

    pub fn contains(self, other: Perms) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Perms) -> Perms {
        Perms(self.0 | other.0)
    }

    fn parse(s: &str) -> Option<Perms> {
        // SMART v1 names, then v2 letters in their prescribed order.
        match s {
            "read" => return Some(Perms(Perms::READ.0 | Perms::SEARCH.0)),
            "write" => return Some(Perms(Perms::CREATE.0 | Perms::UPDATE.0 | Perms::DELETE.0)),
            "*" => return Some(Perms::ALL),
            _ => {}
        }
        let mut bits = 0u8;
        let mut last = 0usize;
        for c in s.chars() {
            let (pos, bit) = match c {
                'c' => (1, Perms::CREATE.0),
                'r' => (2, Perms::READ.0),
                'u' => (3, Perms::UPDATE.0),
                'd' => (4, Perms::DELETE.0),
                's' => (5, Perms::SEARCH.0),
                _ => return None,
            };
            if pos <= last {
                return None;
            }
            last = pos;
            bits |= bit;
        }
        (bits != 0).then_some(Perms(bits))
    }
}

/// The context a SMART scope is granted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Context {
    Patient,
    User,
    System,
}

/// One SMART scope: `system/Observation.rs`, `user/*.cruds`, `patient/*.read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub context: Context,
    /// `None` is every type (`*`).
    pub rtype: Option<String>,
    pub perms: Perms,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        let (ctx, rest) = s.split_once('/')?;
        let context = match ctx {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            _ => return None,
        };
        let (t, p) = rest.split_once('.')?;
        let rtype = match t {
            "*" => None,
            t if hutong_fhir::Definitions::get().is_resource_type(t) => Some(t.to_string()),
            _ => return None,
        };
        Some(Scope {
            context,
            rtype,
            perms: Perms::parse(p)?,
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ctx = match self.context {
            Context::Patient => "patient",
            Context::User => "user",
            Context::System => "system",
        };
        let mut p = String::new();
        for (bit, c) in [
            (Perms::CREATE, 'c'),
            (Perms::READ, 'r'),
            (Perms::UPDATE, 'u'),
            (Perms::DELETE, 'd'),
            (Perms::SEARCH, 's'),
        ] {
            if self.perms.contains(bit) {
                p.push(c);
            }
        }
        write!(f, "{ctx}/{}.{p}", self.rtype.as_deref().unwrap_or("*"))
    }
}

/// A set of scopes, as granted in a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scopes(pub Vec<Scope>);

impl Scopes {
    /// Parses a space-separated scope string; unknown scopes (`openid`, `launch`…) are
    /// ignored, as OAuth2 allows.
    pub fn parse(s: &str) -> Scopes {
        Scopes(s.split_whitespace().filter_map(Scope::parse).collect())
    }

    /// Whether `perm` on `rtype` is granted.
    pub fn allows(&self, rtype: &str, perm: Perms) -> bool {
        self.0
            .iter()
            .any(|s| s.rtype.as_deref().is_none_or(|t| t == rtype) && s.perms.contains(perm))
    }

    /// The resource types readable, `None` when every type is (a `*` scope with `r`).
    pub fn readable_types(&self) -> Option<std::collections::BTreeSet<String>> {
        if self
            .0
            .iter()
            .any(|s| s.rtype.is_none() && s.perms.contains(Perms::READ))
        {
            return None;
        }
        Some(
            self.0
                .iter()
                .filter(|s| s.perms.contains(Perms::READ) || s.perms.contains(Perms::SEARCH))
                .filter_map(|s| s.rtype.clone())
                .collect(),
        )
    }

    /// Only the scopes also in `ceiling` (a client asks for less than it may have).
    pub fn narrowed_to(&self, ceiling: &Scopes) -> Scopes {
        Scopes(
            self.0
                .iter()
                .filter_map(|s| {
                    let perms = ceiling
                        .0
                        .iter()
                        .filter(|c| {
                            c.context == s.context
                                && c.rtype.as_ref().is_none_or(|t| Some(t) == s.rtype.as_ref())
                        })
                        .fold(Perms::default(), |a, c| a.union(c.perms));
                    let p = Perms(s.perms.0 & perms.0);
                    (p.0 != 0).then(|| Scope {
                        perms: p,
                        ..s.clone()
                    })
                })
                .collect(),
        )
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&v.join(" "))
    }
}

/// Who is asking, as a verified token names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Principal {
    pub kind: Kind,
    /// Client id, user name, or (residents) the account's user name.
    pub subject: String,
    /// A display name for audit and pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The institution acted for, as its source URI (`urn:hutong:org:<USCC>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub institution: Option<String>,
    /// The clinician's `Practitioner` id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub practitioner: Option<String>,
    /// The resident's `Person` id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    pub scopes: Scopes,
    /// May book appointments that open the booked institution's access (an appointment
    /// platform's client).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub booking: bool,
}

impl Principal {
    /// The platform itself, acting as `who` (a background job, the command line).
    pub fn platform(who: &str) -> Principal {
        Principal {
            kind: Kind::Platform,
            subject: who.to_string(),
            name: None,
            institution: None,
            practitioner: None,
            person: None,
            roles: Vec::new(),
            scopes: Scopes::parse("system/*.cruds"),
            booking: false,
        }
    }

    /// Nobody: an institution system with no institution and no scopes, which the decision
    /// lets see and do nothing (the default of a request not yet authenticated).
    pub fn nobody() -> Principal {
        Principal {
            kind: Kind::System,
            subject: "anonymous".into(),
            name: None,
            institution: None,
            practitioner: None,
            person: None,
            roles: Vec::new(),
            scopes: Scopes::default(),
            booking: false,
        }
    }

    pub fn has_role(&self, r: Role) -> bool {
        self.kind == Kind::Operator && self.roles.contains(&r)
    }

    /// Whether this principal holds `c` (see [`Capability`]): the platform's services
    /// always, operators by role, nobody else.
    pub fn can(&self, c: Capability) -> bool {
        self.kind == Kind::Platform || c.roles().iter().any(|r| self.has_role(*r))
    }

    /// A short label for logs and messages: `clinician dr.li@urn:hutong:org:…`.
    pub fn label(&self) -> String {
        match &self.institution {
            Some(i) => format!("{} {}@{i}", self.kind.as_str(), self.subject),
            None => format!("{} {}", self.kind.as_str(), self.subject),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn smart_scopes_parse_and_check() {
        let s = Scopes::parse("openid system/Observation.rs user/*.read patient/Patient.cruds bogus/x.r system/Nope.r system/Observation.rz");
        assert_eq!(s.0.len(), 3);
        assert!(s.allows("Observation", Perms::SEARCH));
        assert!(s.allows("Condition", Perms::READ), "user/*.read");
        assert!(!s.allows("Condition", Perms::CREATE));
        assert!(s.allows("Patient", Perms::DELETE));
        assert_eq!(
            s.to_string(),
            "system/Observation.rs user/*.rs patient/Patient.cruds"
        );
        assert_eq!(
            Scopes::parse("system/Observation.rs")
                .readable_types()
                .unwrap()
                .len(),
            1
        );
        assert!(Scopes::parse("system/*.rs").readable_types().is_none());
        // Out of order letters are not SMART v2.
        assert!(Scope::parse("system/*.sr").is_none());
        let asked = Scopes::parse("system/*.cruds");
        let ceiling = Scopes::parse("system/Observation.rs");
        assert_eq!(asked.narrowed_to(&ceiling).to_string(), "");
        let asked = Scopes::parse("system/Observation.cruds");
        assert_eq!(
            asked.narrowed_to(&ceiling).to_string(),
            "system/Observation.rs"
        );
    }

    proptest! {
        #[test]
        fn scope_parser_never_panics(s in "\\PC{0,40}") {
            let _ = Scopes::parse(&s);
        }

        #[test]
        fn scopes_round_trip(ctx in 0..3usize, t in proptest::sample::select(vec!["*", "Observation", "Patient"]), bits in 1u8..32) {
            let c = ["patient", "user", "system"][ctx];
            let letters: String = ['c','r','u','d','s'].iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, c)| *c).collect();
            let text = format!("{c}/{t}.{letters}");
            let s = Scope::parse(&text).unwrap();
            prop_assert_eq!(s.to_string(), text);
        }
    }
}

#[cfg(test)]
mod capability_table {
    use super::*;

    /// ARCHITECTURE.md's table of who may do what is the code's: every cell, both ways.
    #[test]
    fn the_documented_table_is_the_one_in_force() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ARCHITECTURE.md"),
        )
        .unwrap();
        let rows: Vec<Vec<String>> = doc
            .lines()
            .skip_while(|l| !l.starts_with("| capability |"))
            .take_while(|l| l.starts_with('|'))
            .map(|l| {
                l.trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().to_string())
                    .collect()
            })
            .collect();
        let header = &rows[0];
        let who = |col: &str| -> Principal {
            let (kind, roles) = match col {
                "platform" => (Kind::Platform, vec![]),
                "clinician" => (Kind::Clinician, vec![]),
                "system" => (Kind::System, vec![]),
                "resident" => (Kind::Resident, vec![]),
                r => (Kind::Operator, vec![Role::parse(r).expect("a role column")]),
            };
            Principal {
                kind,
                subject: "s".into(),
                name: None,
                institution: None,
                practitioner: None,
                person: None,
                roles,
                scopes: Scopes::default(),
                booking: false,
            }
        };
        let mut seen = Vec::new();
        for row in &rows[2..] {
            let c = Capability::ALL
                .into_iter()
                .find(|c| c.as_str() == row[0])
                .unwrap_or_else(|| panic!("unknown capability {}", row[0]));
            seen.push(c);
            for (col, cell) in header.iter().zip(row).skip(1) {
                let want = cell == "yes";
                assert_eq!(who(col).can(c), want, "{} for {col}", row[0]);
            }
        }
        assert_eq!(
            seen.len(),
            Capability::ALL.len(),
            "every capability has a row"
        );
        for r in Role::ALL {
            assert!(header.iter().any(|h| h == r.as_str()), "a column for {r:?}");
        }
    }
}
