//! The access decision: what a principal may see and change, as a store [`Scope`], a masking
//! [`View`] per resource, and a yes or no per write. It is a pure function of the principal,
//! the grants in force and which Patients make up each person — so that every read path asks
//! it the same question, and a property test can check the answers.
//!
//! The rules:
//! - An institution (its systems and its clinicians) reads and writes its own submissions
//!   always, and reads the rest of a person's record only under a grant in force — minus the
//!   sensitive categories the grant does not name.
//! - A resident reads their own record whole, and the records of those who made them proxy,
//!   minus the sensitive categories the proxy grant does not name.
//! - Operators read what their role needs (identity data for the identity steward, grants for
//!   the privacy officer), masked; with a recorded reason, anything.
//! - The platform's own services read everything.
//! - Everyone reads reference data (organisations, practitioners, locations, terminology).
//! - SMART scopes narrow all of this to the types and interactions the token grants.

use std::collections::{BTreeMap, BTreeSet};

use hutong_fhir::security;
use hutong_store::{RowScope, Scope};

use crate::grants::{Grantee, Grants};
use crate::mask::View;
use crate::principal::{Kind, Perms, Principal, Role};

/// Resource types that are reference data when filed outside any Patient's compartment:
/// visible to every authenticated reader.
pub const REFERENCE_TYPES: &[&str] = &[
    "Organization",
    "OrganizationAffiliation",
    "Practitioner",
    "PractitionerRole",
    "Location",
    "HealthcareService",
    "Endpoint",
    // The slot pool's offer: what can be booked where and when (no patient in it).
    "Schedule",
    "Slot",
    "Medication",
    "MedicationKnowledge",
    "Substance",
    "Device",
    "DeviceDefinition",
    "ValueSet",
    "CodeSystem",
    "ConceptMap",
    "NamingSystem",
    "StructureDefinition",
    "SearchParameter",
    "OperationDefinition",
    "CapabilityStatement",
    "Questionnaire",
    "ActivityDefinition",
    "PlanDefinition",
    "Library",
    "Measure",
    "ObservationDefinition",
    "SpecimenDefinition",
];

/// Types only the platform writes: institutions submit clinical data; persons, grants and
/// the audit trail are the platform's.
pub const PLATFORM_TYPES: &[&str] = &["Person", "Consent", "AuditEvent"];

/// What each operator role reads without giving a reason.
fn role_types(r: Role) -> &'static [&'static str] {
    match r {
        Role::IdentitySteward => &["Patient", "Person", "RelatedPerson", "Task", "Provenance"],
        Role::PrivacyOfficer => &["Consent", "Task"],
        Role::QualityOfficer => &["Task", "OperationOutcome"],
        Role::Auditor | Role::Administrator => &[],
    }
}

/// Which Patients make up a person (the identity registry's answer).
pub trait Directory {
    /// The ids of the Patients linked to `person` (without the `Patient/` prefix).
    fn patients_of(&self, person: &str) -> Vec<String>;
}

/// Who is asking, with what this request says about why.
#[derive(Debug, Clone, Copy)]
pub struct Asker<'a> {
    pub principal: &'a Principal,
    /// A reason recorded with the request (operators reading clinical content).
    pub reason: Option<&'a str>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

fn reference() -> BTreeSet<String> {
    REFERENCE_TYPES.iter().map(|t| t.to_string()).collect()
}

fn shards_of(dir: &dyn Directory, person: &str, open: u32, out: &mut BTreeMap<i64, u32>) {
    for p in dir.patients_of(person) {
        *out.entry(hutong_store::shard_of(&p)).or_default() |= open;
    }
}

/// The rows `a` may see now.
pub fn scope(a: Asker<'_>, grants: &Grants, dir: &dyn Directory, now: i64) -> Scope {
    let p = a.principal;
    let types = p.scopes.readable_types();
    match p.kind {
        Kind::Platform if types.is_none() => Scope::All,
        Kind::Platform => Scope::rows(RowScope {
            types,
            everywhere: Some(security::ALL),
            reference: reference(),
            ..Default::default()
        }),
        Kind::Operator if a.reason.is_some() => Scope::All,
        Kind::Operator => {
            let mut t: BTreeSet<String> = reference();
            for r in &p.roles {
                t.extend(role_types(*r).iter().map(|x| x.to_string()));
            }
            Scope::rows(RowScope {
                types: Some(t),
                everywhere: Some(security::ACCESS_RECORD),
                ..Default::default()
            })
        }
        Kind::System | Kind::Clinician => {
            let Some(inst) = &p.institution else {
                return Scope::none();
            };
            let mut shards = BTreeMap::new();
            for g in grants.in_force_for(&Grantee::Institution(inst.clone()), now) {
                shards_of(dir, &g.person, security::opens(g.categories), &mut shards);
            }
            Scope::rows(RowScope {
                types,
                sources: [inst.clone()].into(),
                shards,
                reference: reference(),
                everywhere: None,
            })
        }
        Kind::Resident => {
            let Some(me) = &p.person else {
                return Scope::none();
            };
            let mut shards = BTreeMap::new();
            shards_of(dir, me, security::ALL, &mut shards);
            for g in grants.in_force_for(&Grantee::Person(me.clone()), now) {
                // A proxy manages the record for the person (approves requests, follows who
                // viewed it), so the person's authorizations and access records open too.
                let open = match g.method {
                    crate::grants::Method::Proxy => {
                        security::opens(g.categories) | security::ACCESS_RECORD
                    }
                    _ => security::opens(g.categories),
                };
                shards_of(dir, &g.person, open, &mut shards);
            }
            Scope::rows(RowScope {
                types,
                shards,
                reference: reference(),
                ..Default::default()
            })
        }
    }
}

/// How much identity data of a resource submitted by `source` `a` sees.
pub fn view(a: Asker<'_>, source: &str) -> View {
    let p = a.principal;
    match p.kind {
        Kind::Platform | Kind::Resident => View::Full,
        Kind::Operator if a.reason.is_some() => View::Full,
        Kind::Operator => View::Masked,
        Kind::System | Kind::Clinician if p.institution.as_deref() == Some(source) => View::Full,
        Kind::System | Kind::Clinician => View::Treatment,
    }
}

/// Whether the token allows `perm` on `rtype` at all.
pub fn may(a: Asker<'_>, rtype: &str, perm: Perms) -> Result<(), Refusal> {
    if a.principal.scopes.allows(rtype, perm) {
        Ok(())
    } else {
        let what = match perm {
            Perms::CREATE => "create",
            Perms::UPDATE => "update",
            Perms::DELETE => "delete",
            Perms::SEARCH => "search",
            _ => "read",
        };
        Err(Refusal(format!(
            "The access token's scopes ({}) do not allow {what} on {rtype}",
            a.principal.scopes
        )))
    }
}

/// Whether `a` may write (`perm`: create, update or delete) a resource of `rtype` whose
/// current version, if any, was submitted by `existing`.
pub fn may_write(
    a: Asker<'_>,
    rtype: &str,
    perm: Perms,
    existing: Option<&str>,
) -> Result<(), Refusal> {
    may(a, rtype, perm)?;
    let p = a.principal;
    match p.kind {
        Kind::Platform => Ok(()),
        Kind::System | Kind::Clinician => {
            if PLATFORM_TYPES.contains(&rtype) {
                return Err(Refusal(format!(
                    "{rtype} resources are kept by the platform; use its operations instead"
                )));
            }
            match (existing, &p.institution) {
                (Some(src), Some(inst)) if src != inst => Err(Refusal(format!(
                    "This {rtype} was submitted by another institution: an institution changes only its own submissions"
                ))),
                (_, None) => Err(Refusal("The client belongs to no institution".into())),
                _ => Ok(()),
            }
        }
        Kind::Resident => Err(Refusal(
            "Residents change their record through the platform's operations (restrict, report an error), not by writing resources".into(),
        )),
        Kind::Operator => Err(Refusal(
            "Operators change data through the platform's operations, not by writing resources"
                .into(),
        )),
    }
}

/// The source an institution's writes are recorded under.
pub fn write_source(a: Asker<'_>, fallback: &str) -> String {
    a.principal
        .institution
        .clone()
        .unwrap_or_else(|| fallback.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grants::{Grant, Method, Status};
    use crate::principal::Scopes;
    use std::collections::HashMap;

    struct Dir(HashMap<String, Vec<String>>);
    impl Directory for Dir {
        fn patients_of(&self, person: &str) -> Vec<String> {
            self.0.get(person).cloned().unwrap_or_default()
        }
    }

    fn clinician(inst: &str) -> Principal {
        Principal {
            kind: Kind::Clinician,
            subject: "dr".into(),
            name: None,
            institution: Some(inst.into()),
            practitioner: None,
            person: None,
            roles: vec![],
            scopes: Scopes::parse("user/*.cruds"),
            booking: false,
        }
    }

    fn grant(person: &str, to: Grantee, cats: u32) -> Grant {
        Grant {
            id: format!("g-{person}"),
            person: person.into(),
            patient: "x".into(),
            grantee: to,
            grantee_name: None,
            method: Method::Sms,
            status: Status::Active,
            categories: cats,
            start: 0,
            end: Some(100),
            requested_by: None,
            reason: None,
            recorded: 0,
        }
    }

    #[test]
    fn institutions_see_own_data_and_granted_persons() {
        let dir = Dir([("per1".to_string(), vec!["pa".to_string(), "pb".to_string()])].into());
        let mut gs = Grants::default();
        gs.put(grant("per1", Grantee::Institution("urn:a".into()), 0));
        let c = clinician("urn:a");
        let a = Asker {
            principal: &c,
            reason: None,
        };
        let s = scope(a, &gs, &dir, 50);
        let pb = hutong_store::shard_of("pb");
        assert!(s.permits("Observation", pb, "urn:b", 0));
        assert!(!s.permits("Observation", pb, "urn:b", security::MENTAL_HEALTH));
        assert!(s.permits("Observation", 42, "urn:a", security::MENTAL_HEALTH));
        assert!(s.permits("Organization", 0, "urn:registry", 0));
        assert!(
            !scope(a, &gs, &dir, 100).permits("Observation", pb, "urn:b", 0),
            "expired"
        );
        let other = clinician("urn:c");
        assert!(!scope(
            Asker {
                principal: &other,
                reason: None
            },
            &gs,
            &dir,
            50
        )
        .permits("Observation", pb, "urn:b", 0));
        assert_eq!(view(a, "urn:a"), View::Full);
        assert_eq!(view(a, "urn:b"), View::Treatment);
        assert!(may_write(a, "Observation", Perms::UPDATE, Some("urn:a")).is_ok());
        assert!(may_write(a, "Observation", Perms::UPDATE, Some("urn:b")).is_err());
        assert!(may_write(a, "Consent", Perms::CREATE, None).is_err());
    }

    #[test]
    fn residents_and_proxies() {
        let dir = Dir([
            ("me".to_string(), vec!["m1".to_string()]),
            ("child".to_string(), vec!["c1".to_string()]),
        ]
        .into());
        let mut gs = Grants::default();
        gs.put(grant("child", Grantee::Person("me".into()), 0));
        let r = Principal {
            kind: Kind::Resident,
            person: Some("me".into()),
            scopes: Scopes::parse("patient/*.rs"),
            ..clinician("x")
        };
        let a = Asker {
            principal: &r,
            reason: None,
        };
        let s = scope(a, &gs, &dir, 10);
        assert!(s.permits(
            "Condition",
            hutong_store::shard_of("m1"),
            "urn:x",
            security::ALL
        ));
        assert!(s.permits("Condition", hutong_store::shard_of("c1"), "urn:x", 0));
        assert!(!s.permits(
            "Condition",
            hutong_store::shard_of("c1"),
            "urn:x",
            security::REPRODUCTIVE
        ));
        assert!(may_write(a, "Observation", Perms::CREATE, None).is_err());
    }

    #[test]
    fn operators_need_a_reason_for_clinical_content() {
        let op = Principal {
            kind: Kind::Operator,
            roles: vec![Role::IdentitySteward],
            institution: None,
            scopes: Scopes::parse("user/*.rs"),
            ..clinician("x")
        };
        let gs = Grants::default();
        let dir = Dir(HashMap::new());
        let a = Asker {
            principal: &op,
            reason: None,
        };
        let s = scope(a, &gs, &dir, 0);
        assert!(s.permits("Patient", 77, "urn:b", 0));
        assert!(!s.permits("Observation", 77, "urn:b", 0));
        assert_eq!(view(a, "urn:b"), View::Masked);
        let why = Asker {
            principal: &op,
            reason: Some("merge review #12"),
        };
        assert!(scope(why, &gs, &dir, 0).permits("Observation", 77, "urn:b", security::ALL));
        assert_eq!(view(why, "urn:b"), View::Full);
    }
}
