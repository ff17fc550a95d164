//! The FHIR `AuditEvent` view of an entry, in the shape of IHE Basic Audit Log Patterns
//! (BALP): a RESTful-interaction event with the requesting agent, the purpose of use, the
//! entities touched and the query.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::Entry;

const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";

/// The id an entry has as an AuditEvent: its partition and position.
pub fn event_id(part: i64, seq: i64) -> String {
    format!("{part}-{seq}")
}

/// Parses an AuditEvent id back into `(part, seq)`.
pub fn parse_id(id: &str) -> Option<(i64, i64)> {
    let (a, b) = id.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn action_code(action: &str) -> &'static str {
    match action {
        "create" | "transaction" | "import" | "grant" | "request-access" | "break-glass" => "C",
        "update" | "patch" | "revoke" | "approve" | "deny" | "restrict" | "link" | "unlink"
        | "merge" | "split" | "review" => "U",
        "delete" => "D",
        "read" | "vread" | "search" | "history" | "everything" | "export" | "summary" => "R",
        _ => "E",
    }
}

fn subtype(action: &str) -> (&'static str, &'static str) {
    match action {
        "read" => (INTERACTION, "read"),
        "vread" => (INTERACTION, "vread"),
        "search" => (INTERACTION, "search-type"),
        "history" => (INTERACTION, "history-instance"),
        "create" => (INTERACTION, "create"),
        "update" => (INTERACTION, "update"),
        "patch" => (INTERACTION, "patch"),
        "delete" => (INTERACTION, "delete"),
        "transaction" => (INTERACTION, "transaction"),
        "batch" => (INTERACTION, "batch"),
        _ => (INTERACTION, "operation"),
    }
}

fn outcome_code(status: u16) -> &'static str {
    match status {
        0..=399 => "0",
        400..=499 => "4",
        _ => "8",
    }
}

/// The AuditEvent for an entry at `(part, seq)`.
pub fn to_audit_event(part: i64, seq: i64, e: &Entry) -> Value {
    let (sub_sys, sub_code) = subtype(&e.action);
    let who = &e.who;
    let who_display = match (&who.name, &who.institution) {
        (Some(n), Some(i)) => format!("{n} ({i})"),
        (Some(n), None) => n.clone(),
        (None, Some(i)) => format!("{} ({i})", who.subject),
        (None, None) => who.subject.clone(),
    };
    let mut agent = json!({
        "type": {"coding": [{"system": PARTICIPATION, "code": "IRCP", "display": "information recipient"}]},
        "who": {"identifier": {"system": format!("https://hutong.dev/sid/{}", who.kind), "value": who.subject}, "display": who_display},
        "requestor": true
    });
    if !who.roles.is_empty() {
        agent["role"] = json!(who
            .roles
            .iter()
            .map(|r| json!({"text": r}))
            .collect::<Vec<_>>());
    }
    if let Some(ip) = &e.from {
        agent["network"] = json!({"address": ip, "type": "2"});
    }
    let mut agents = vec![agent];
    if let Some(inst) = &who.institution {
        agents.push(json!({
            "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID"}]},
            "who": {"identifier": {"system": "https://hutong.dev/sid/source", "value": inst}},
            "requestor": false
        }));
    }
    let mut entities: Vec<Value> = e
        .entities
        .iter()
        .map(|w| {
            let patient = w.starts_with("Patient/") || w.starts_with("Person/");
            json!({
                "what": {"reference": w},
                "type": {"system": ENTITY_TYPE, "code": if patient { "1" } else { "2" }},
            })
        })
        .collect();
    if let Some(p) = &e.on_behalf_of {
        entities.push(json!({"what": {"reference": format!("Person/{p}")}, "type": {"system": ENTITY_TYPE, "code": "1"}, "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}}));
    }
    entities.push(json!({
        "type": {"system": ENTITY_TYPE, "code": "2"},
        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
        "query": base64::engine::general_purpose::STANDARD.encode(e.request.as_bytes()),
        "description": e.request
    }));
    let mut ev = json!({
        "resourceType": "AuditEvent",
        "id": event_id(part, seq),
        "meta": {"security": [{"system": hutong_fhir::security::HUTONG_SECURITY, "code": "access-record"}]},
        "type": {"system": EVENT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": sub_sys, "code": sub_code}, {"system": "https://hutong.dev/fhir/CodeSystem/audit-action", "code": e.action}],
        "action": action_code(&e.action),
        "recorded": hutong_fhir::date::format_instant(e.ts),
        "outcome": outcome_code(e.outcome),
        "agent": agents,
        "source": {"observer": {"display": "Hutong"}, "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
        "entity": entities
    });
    if let Some(p) = &e.purpose {
        ev["purposeOfEvent"] = json!([{"coding": [{"system": ACT_REASON, "code": p}]}]);
    }
    let mut desc = Vec::new();
    if e.break_glass {
        desc.push("BREAK-GLASS".to_string());
    }
    if let Some(r) = &e.reason {
        desc.push(format!("reason: {r}"));
    }
    if let Some(d) = &e.detail {
        desc.push(d.clone());
    }
    if !desc.is_empty() {
        ev["outcomeDesc"] = json!(desc.join("; "));
    }
    if e.break_glass {
        ev["meta"]["tag"] = json!([{"system": "https://hutong.dev/fhir/CodeSystem/audit-flag", "code": "break-glass", "display": "紧急调阅"}]);
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Who;

    #[test]
    fn balp_shape() {
        let e = Entry {
            ts: 0,
            action: "read".into(),
            outcome: 200,
            who: Who {
                kind: "clinician".into(),
                subject: "dr.li".into(),
                name: Some("李医生".into()),
                institution: Some("urn:hutong:org:x".into()),
                ..Default::default()
            },
            purpose: Some("ETREAT".into()),
            reason: Some("unconscious patient".into()),
            break_glass: true,
            from: Some("10.0.0.7".into()),
            request: "GET Observation/1".into(),
            entities: vec!["Observation/1/_history/2".into()],
            ..Default::default()
        };
        let ev = to_audit_event(0, 7, &e);
        assert_eq!(ev["id"], "0-7");
        assert_eq!(parse_id("0-7"), Some((0, 7)));
        assert_eq!(ev["action"], "R");
        assert_eq!(ev["subtype"][0]["code"], "read");
        assert_eq!(ev["purposeOfEvent"][0]["coding"][0]["code"], "ETREAT");
        assert_eq!(ev["agent"][0]["network"]["address"], "10.0.0.7");
        assert_eq!(
            ev["entity"][0]["what"]["reference"],
            "Observation/1/_history/2"
        );
        assert_eq!(ev["meta"]["tag"][0]["code"], "break-glass");
        assert!(ev["outcomeDesc"].as_str().unwrap().contains("unconscious"));
        let errs = hutong_fhir::validate::validate(&ev);
        assert!(errs.is_empty(), "{errs:?}");
    }
}
