//! Grants: a resident's authorization for an institution (or a proxy) to read their
//! cross-institution record, kept as FHIR `Consent` resources written by the platform
//! (`meta.source` [`ACCESS_SOURCE`]) and held in memory, indexed by person and grantee, for
//! the access decision.
//!
//! A grant is requested (`proposed`), made `active` by the resident's SMS code, approval in
//! the portal, an appointment, a standing authorization, a break-glass declaration or an
//! operator (proxies); it ends by expiry, by the resident's revocation (`inactive`) or by a
//! denial (`rejected`). It names the sensitive categories it opens, if any.

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};

/// The `meta.source` of every platform-written Consent.
pub const ACCESS_SOURCE: &str = "urn:hutong:access";
pub const EXT: &str = "https://hutong.dev/fhir/StructureDefinition";
pub const SID_SOURCE: &str = "https://hutong.dev/sid/source";
pub const SID_PERSON: &str = "https://hutong.dev/sid/person";
pub const METHOD_SYSTEM: &str = "https://hutong.dev/fhir/CodeSystem/grant-method";

/// How a grant came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// The clinician entered the code sent to the resident's phone.
    Sms,
    /// The resident approved a request in the portal or app.
    App,
    /// An appointment booked at the institution, for the visit window.
    Appointment,
    /// The resident's standing authorization ("my family doctor's centre, always").
    Standing,
    /// Emergency access declared by a clinician with a reason.
    BreakGlass,
    /// A guardian or carer acting for the resident.
    Proxy,
}

impl Method {
    pub const ALL: [Method; 6] = [
        Method::Sms,
        Method::App,
        Method::Appointment,
        Method::Standing,
        Method::BreakGlass,
        Method::Proxy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Sms => "sms",
            Method::App => "app",
            Method::Appointment => "appointment",
            Method::Standing => "standing",
            Method::BreakGlass => "break-glass",
            Method::Proxy => "proxy",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Proposed,
    Active,
    Rejected,
    Inactive,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Proposed => "proposed",
            Status::Active => "active",
            Status::Rejected => "rejected",
            Status::Inactive => "inactive",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        [
            Status::Proposed,
            Status::Active,
            Status::Rejected,
            Status::Inactive,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

/// Who a grant is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grantee {
    /// An institution, by its source URI.
    Institution(String),
    /// Another resident (a proxy), by Person id.
    Person(String),
}

/// One grant.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// The Consent id.
    pub id: String,
    /// Whose record (Person id).
    pub person: String,
    /// One of the person's Patients (the Consent's `patient`).
    pub patient: String,
    pub grantee: Grantee,
    pub grantee_name: Option<String>,
    pub method: Method,
    pub status: Status,
    /// Sensitive-category bits the grant opens.
    pub categories: u32,
    pub start: i64,
    /// `None`: until revoked.
    pub end: Option<i64>,
    /// Who asked (a clinician's label), for the resident's view and audit.
    pub requested_by: Option<String>,
    /// Why (break-glass reason, request note).
    pub reason: Option<String>,
    /// When it was recorded.
    pub recorded: i64,
}

impl Grant {
    /// Whether the grant lets its grantee read at `now`.
    pub fn in_force(&self, now: i64) -> bool {
        self.status == Status::Active && self.start <= now && self.end.is_none_or(|e| now < e)
    }

    pub fn purpose(&self) -> &'static str {
        if self.method == Method::BreakGlass {
            "ETREAT"
        } else if self.method == Method::Proxy {
            "PWATRNY"
        } else {
            "TREAT"
        }
    }

    /// The grant as a FHIR Consent.
    pub fn to_consent(&self) -> Value {
        let fmt = hutong_fhir::date::format_instant;
        let (actor_ref, role) = match &self.grantee {
            Grantee::Institution(s) => (
                json!({"type": "Organization", "identifier": {"system": SID_SOURCE, "value": s}, "display": self.grantee_name.clone().unwrap_or_else(|| s.clone())}),
                "IRCP",
            ),
            Grantee::Person(p) => (
                json!({"type": "Person", "identifier": {"system": SID_PERSON, "value": p}, "display": self.grantee_name.clone().unwrap_or_else(|| p.clone())}),
                "DELEGATEE",
            ),
        };
        let mut period = json!({"start": fmt(self.start)});
        if let Some(e) = self.end {
            period["end"] = json!(fmt(e));
        }
        let labels: Vec<Value> = hutong_fhir::security::CATEGORIES
            .iter()
            .filter(|c| self.categories & c.bit != 0)
            .map(|c| json!({"system": c.label.0, "code": c.label.1, "display": c.zh}))
            .collect();
        let mut provision = json!({
            "type": "permit",
            "period": period,
            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": role}]}, "reference": actor_ref}],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": self.purpose()}]
        });
        if !labels.is_empty() {
            provision["securityLabel"] = json!(labels);
        }
        let mut ext = vec![
            json!({"url": format!("{EXT}/grant-person"), "valueReference": {"reference": format!("Person/{}", self.person)}}),
            json!({"url": format!("{EXT}/grant-method"), "valueCode": self.method.as_str()}),
        ];
        if let Some(r) = &self.requested_by {
            ext.push(json!({"url": format!("{EXT}/grant-requested-by"), "valueString": r}));
        }
        if let Some(r) = &self.reason {
            ext.push(json!({"url": format!("{EXT}/grant-reason"), "valueString": r}));
        }
        json!({
            "resourceType": "Consent",
            "id": self.id,
            "meta": {"source": ACCESS_SOURCE, "security": [{"system": hutong_fhir::security::HUTONG_SECURITY, "code": "access-record"}]},
            "extension": ext,
            "status": self.status.as_str(),
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [
                {"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]},
                {"coding": [{"system": METHOD_SYSTEM, "code": self.method.as_str()}]}
            ],
            "patient": {"reference": format!("Patient/{}", self.patient)},
            "dateTime": fmt(self.recorded),
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
            "provision": provision
        })
    }

    /// A grant from a platform Consent; `None` for Consents that are not grants.
    pub fn from_consent(v: &Value) -> Option<Grant> {
        if v["meta"]["source"] != ACCESS_SOURCE {
            return None;
        }
        let ext = |name: &str| {
            v["extension"]
                .as_array()?
                .iter()
                .find(|e| e["url"] == format!("{EXT}/{name}"))
                .cloned()
        };
        let person = ext("grant-person")?["valueReference"]["reference"]
            .as_str()?
            .strip_prefix("Person/")?
            .to_string();
        let method = Method::parse(ext("grant-method")?["valueCode"].as_str()?)?;
        let prov = &v["provision"];
        let actor = &prov["actor"][0]["reference"];
        let ident = &actor["identifier"];
        let value = ident["value"].as_str()?.to_string();
        let grantee = match ident["system"].as_str()? {
            SID_SOURCE => Grantee::Institution(value),
            SID_PERSON => Grantee::Person(value),
            _ => return None,
        };
        let date = |x: &Value| x.as_str().and_then(hutong_fhir::date::parse).map(|r| r.lo);
        let categories = prov["securityLabel"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                hutong_fhir::security::bits_of_label(
                    c["system"].as_str().unwrap_or(""),
                    c["code"].as_str().unwrap_or(""),
                )
            })
            .fold(0, |a, b| a | b);
        Some(Grant {
            id: v["id"].as_str()?.to_string(),
            person,
            patient: v["patient"]["reference"]
                .as_str()
                .and_then(|r| r.strip_prefix("Patient/"))
                .unwrap_or("")
                .to_string(),
            grantee,
            grantee_name: actor["display"].as_str().map(String::from),
            method,
            status: Status::parse(v["status"].as_str()?)?,
            categories,
            start: date(&prov["period"]["start"])?,
            end: date(&prov["period"]["end"]),
            requested_by: ext("grant-requested-by")
                .and_then(|e| e["valueString"].as_str().map(String::from)),
            reason: ext("grant-reason").and_then(|e| e["valueString"].as_str().map(String::from)),
            recorded: date(&v["dateTime"]).unwrap_or(0),
        })
    }
}

/// Every grant, indexed for the decision.
#[derive(Debug, Default)]
pub struct Grants {
    by_id: HashMap<String, Grant>,
    by_person: HashMap<String, BTreeSet<String>>,
    by_grantee: HashMap<Grantee, BTreeSet<String>>,
    /// Bumped on every change, so derived views (scopes) know when to recompute.
    pub generation: u64,
}

impl Grants {
    /// Records a grant (new, or a new state of one already known).
    pub fn put(&mut self, g: Grant) {
        if let Some(old) = self.by_id.remove(&g.id) {
            if let Some(s) = self.by_grantee.get_mut(&old.grantee) {
                s.remove(&old.id);
            }
            if let Some(s) = self.by_person.get_mut(&old.person) {
                s.remove(&old.id);
            }
        }
        self.by_person
            .entry(g.person.clone())
            .or_default()
            .insert(g.id.clone());
        self.by_grantee
            .entry(g.grantee.clone())
            .or_default()
            .insert(g.id.clone());
        self.by_id.insert(g.id.clone(), g);
        self.generation += 1;
    }

    /// Records a Consent version as read from the store (ignored unless it is a grant).
    pub fn apply_consent(&mut self, v: &Value) {
        if let Some(g) = Grant::from_consent(v) {
            self.put(g);
        }
    }

    pub fn get(&self, id: &str) -> Option<&Grant> {
        self.by_id.get(id)
    }

    /// Every grant of a person's record, newest first.
    pub fn of_person(&self, person: &str) -> Vec<&Grant> {
        let mut v: Vec<&Grant> = self
            .by_person
            .get(person)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
            .collect();
        v.sort_by(|a, b| b.recorded.cmp(&a.recorded).then(b.id.cmp(&a.id)));
        v
    }

    /// Grants to `grantee` in force at `now`.
    pub fn in_force_for(&self, grantee: &Grantee, now: i64) -> Vec<&Grant> {
        self.by_grantee
            .get(grantee)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
            .filter(|g| g.in_force(now))
            .collect()
    }

    /// Grants to `grantee` (any state).
    pub fn to_grantee(&self, grantee: &Grantee) -> Vec<&Grant> {
        self.by_grantee
            .get(grantee)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
            .collect()
    }

    /// The earliest moment after `now` at which a grant to `grantee` starts or ends, when a
    /// scope computed now stops being right.
    pub fn next_change(&self, grantee: &Grantee, now: i64) -> Option<i64> {
        self.to_grantee(grantee)
            .into_iter()
            .filter(|g| g.status == Status::Active)
            .flat_map(|g| [Some(g.start), g.end])
            .flatten()
            .filter(|t| *t > now)
            .min()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn grant(id: &str, person: &str, to: Grantee, status: Status) -> Grant {
        Grant {
            id: id.into(),
            person: person.into(),
            patient: format!("{person}-p"),
            grantee: to,
            grantee_name: Some("医院".into()),
            method: Method::Sms,
            status,
            categories: hutong_fhir::security::MENTAL_HEALTH,
            start: 1_000,
            end: Some(5_000),
            requested_by: Some("clinician li".into()),
            reason: None,
            recorded: 900,
        }
    }

    #[test]
    fn consent_round_trip() {
        let g = grant(
            "g1",
            "per1",
            Grantee::Institution("urn:hutong:org:a".into()),
            Status::Active,
        );
        let c = g.to_consent();
        assert_eq!(c["status"], "active");
        assert_eq!(c["provision"]["securityLabel"][0]["code"], "PSY");
        assert_eq!(Grant::from_consent(&c).unwrap(), g);
        let p = Grant {
            grantee: Grantee::Person("per2".into()),
            method: Method::Proxy,
            end: None,
            ..g.clone()
        };
        assert_eq!(Grant::from_consent(&p.to_consent()).unwrap(), p);
        let mut foreign = c.clone();
        foreign["meta"]["source"] = json!("urn:org:x");
        assert!(
            Grant::from_consent(&foreign).is_none(),
            "only the platform's Consents grant"
        );
    }

    #[test]
    fn index_follows_state_and_time() {
        let a = Grantee::Institution("urn:a".into());
        let mut gs = Grants::default();
        gs.put(grant("g1", "per1", a.clone(), Status::Proposed));
        assert!(gs.in_force_for(&a, 2_000).is_empty());
        gs.put(grant("g1", "per1", a.clone(), Status::Active));
        assert_eq!(gs.in_force_for(&a, 2_000).len(), 1);
        assert!(gs.in_force_for(&a, 5_000).is_empty(), "expired");
        assert!(gs.in_force_for(&a, 999).is_empty(), "not yet");
        assert_eq!(gs.next_change(&a, 2_000), Some(5_000));
        gs.put(grant("g1", "per1", a.clone(), Status::Inactive));
        assert!(gs.in_force_for(&a, 2_000).is_empty(), "revoked");
        assert_eq!(gs.of_person("per1").len(), 1);
        assert_eq!(gs.len(), 1);
    }
}
