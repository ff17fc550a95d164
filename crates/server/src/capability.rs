//! The CapabilityStatement: generated from the definitions and the interactions the engine
//! implements, so it states exactly what the server does.

use std::sync::OnceLock;

use hutong_fhir::{Definitions, ParamType};
use serde_json::{json, Value};

static CACHED: OnceLock<Value> = OnceLock::new();

/// The OperationDefinitions the CapabilityStatement's canonicals name, by id: the R4 core
/// ones the server implements (from the specification) and the platform's own
/// (`data/operations.json`), so that a client can read each at `OperationDefinition/{id}`
/// or find it by `url`.
pub fn operation_definitions() -> &'static [Value] {
    static DEFS: OnceLock<Vec<Value>> = OnceLock::new();
    DEFS.get_or_init(|| {
        let mut all: Vec<Value> = serde_json::from_str(hutong_fhir::defs::R4_OPERATIONS_JSON)
            .expect("the embedded core operation definitions are JSON");
        let own: Vec<Value> = serde_json::from_str(include_str!("../data/operations.json"))
            .expect("the platform's operation definitions are JSON");
        all.extend(own);
        all
    })
}

/// The OperationDefinition with this id, if it is one of [`operation_definitions`].
pub fn operation_definition(id: &str) -> Option<&'static Value> {
    operation_definitions()
        .iter()
        .find(|d| d.get("id").and_then(Value::as_str) == Some(id))
}

/// Those whose canonical URL is `url`.
pub fn operation_definitions_by_url(url: &str) -> Vec<&'static Value> {
    operation_definitions()
        .iter()
        .filter(|d| d.get("url").and_then(Value::as_str) == Some(url))
        .collect()
}

/// Parameters the engine cannot evaluate (no expression, or a special type).
fn supported(kind: ParamType, expression: &str, components: usize) -> bool {
    !expression.is_empty()
        && kind != ParamType::Special
        && (kind != ParamType::Composite || components == 2)
}

pub fn statement(base: &str) -> Value {
    let mut v = CACHED.get_or_init(build).clone();
    v["implementation"] =
        json!({"description": "Hutong regional health-record platform", "url": base});
    let root = base.trim_end_matches("/fhir");
    v["rest"][0]["security"] = json!({
        "cors": false,
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
        "extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "token", "valueUri": format!("{root}/auth/token")}]}],
        "description": "Every request but this statement needs a bearer token: institution systems by OAuth2 client credentials (/auth/token, SMART v2 system scopes), clinicians and operators by password (/auth/login), residents by a one-time code sent to their phone (/auth/otp). An institution reads its own submissions and, under a resident's grant, the rest of that resident's record."
    });
    v
}

fn build() -> Value {
    let defs = Definitions::get();
    let interactions = [
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    ];
    let resources: Vec<Value> = defs
        .resource_types()
        .iter()
        .map(|t| {
            let params: Vec<Value> = defs
                .params(t)
                .into_iter()
                .flatten()
                .filter(|(_, p)| supported(p.kind, &p.expression, p.components.len()) || p.code == "_id" || p.code == "_lastUpdated")
                .map(|(code, p)| json!({"name": code, "type": p.kind.as_str()}))
                .collect();
            // The audit trail is written by the platform alone and read through its own
            // search (no versions, no history): nothing else is offered on it.
            let offered: Vec<Value> = if t == "AuditEvent" {
                ["read", "search-type"].iter().map(|i| json!({"code": i})).collect()
            } else {
                interactions.iter().map(|i| json!({"code": i})).collect()
            };
            let mut r = json!({
                "type": t,
                "interaction": offered,
                "versioning": "versioned",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-match",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "searchInclude": ["*"],
                "searchRevInclude": ["*"],
                "searchParam": params,
            });
            if t == "AuditEvent" {
                let o = r.as_object_mut().expect("an object");
                for k in ["updateCreate", "conditionalCreate", "conditionalUpdate", "conditionalDelete", "readHistory"] {
                    o.remove(k);
                }
                r["versioning"] = json!("no-version");
                r["documentation"] = json!("Written by the platform only, one entry per access or change; create, update, patch and delete are refused (405).");
            }
            let mut ops = Vec::new();
            // Patient's export is the patient-level one, listed below (once).
            if t != "Patient" {
                // Bulk Data v2 defines system and patient (and group) export only: the
                // type-level one is the platform's own, on the same parameters.
                ops.push(json!({"name": "export", "definition": "https://hutong.dev/fhir/OperationDefinition/type-export"}));
            }
            if t == "Patient" {
                ops.push(json!({"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}));
                ops.push(json!({"name": "match", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match"}));
                ops.push(json!({"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"}));
                ops.push(json!({"name": "ihe-pix", "definition": "https://profiles.ihe.net/ITI/PIXm/OperationDefinition/IHE.PIXm.pix"}));
            }
            if t == "Appointment" {
                // IHE ITI Scheduling (ITI-115, -116, -117) over the regional slot pool.
                for op in ["find", "hold", "book"] {
                    ops.push(json!({"name": op, "definition": format!("https://profiles.ihe.net/ITI/Scheduling/OperationDefinition/appointment-{op}")}));
                }
            }
            if t == "EpisodeOfCare" {
                for op in ["renew", "end"] {
                    ops.push(json!({"name": op, "definition": format!("https://hutong.dev/fhir/OperationDefinition/EpisodeOfCare-{op}")}));
                }
            }
            if t == "ServiceRequest" {
                for op in ["check-recognition", "recognition-decision", "refer"] {
                    ops.push(json!({"name": op, "definition": format!("https://hutong.dev/fhir/OperationDefinition/ServiceRequest-{op}")}));
                }
            }
            if t == "Person" {
                for op in [
                    "everything",
                    "summary",
                    "link",
                    "unlink",
                    "merge",
                    "split",
                    "find",
                    "request-access",
                    "break-glass",
                    "grant",
                    "grant-proxy",
                    "access-history",
                    "sign-contract",
                ] {
                    ops.push(json!({"name": op, "definition": format!("https://hutong.dev/fhir/OperationDefinition/Person-{op}")}));
                }
            }
            if t == "Task" {
                ops.push(json!({"name": "decide", "definition": "https://hutong.dev/fhir/OperationDefinition/Task-decide"}));
                ops.push(json!({"name": "review", "definition": "https://hutong.dev/fhir/OperationDefinition/Task-review"}));
                ops.push(json!({"name": "referral", "definition": "https://hutong.dev/fhir/OperationDefinition/Task-referral"}));
                for a in hutong_quality::workorder::Action::ALL {
                    ops.push(json!({"name": a.op(), "definition": format!("https://hutong.dev/fhir/OperationDefinition/Task-{}", a.op())}));
                }
            }
            if t == "Consent" {
                for op in ["verify-code", "approve", "deny", "revoke"] {
                    ops.push(json!({"name": op, "definition": format!("https://hutong.dev/fhir/OperationDefinition/Consent-{op}")}));
                }
            }
            if t == "Subscription" {
                // The Subscriptions R5 Backport IG's operations, and the topics offered.
                for op in ["status", "events", "get-ws-binding-token"] {
                    ops.push(json!({"name": op, "definition": format!("http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-{op}")}));
                }
                r["extension"] = json!(crate::exchange::topics()
                    .all()
                    .iter()
                    .map(|t| json!({"url": hutong_exchange::ig::TOPIC_CANONICAL, "valueCanonical": t.url}))
                    .collect::<Vec<_>>());
                r["supportedProfile"] = json!([hutong_exchange::ig::SUBSCRIPTION_PROFILE]);
            }
            if t == "AuditEvent" {
                ops.push(json!({"name": "verify", "definition": "https://hutong.dev/fhir/OperationDefinition/AuditEvent-verify"}));
            }
            ops.push(json!({"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}));
            ops.push(json!({"name": "restrict", "definition": "https://hutong.dev/fhir/OperationDefinition/Resource-restrict"}));
            ops.push(json!({"name": "unrestrict", "definition": "https://hutong.dev/fhir/OperationDefinition/Resource-unrestrict"}));
            r["operation"] = json!(ops);
            r
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "kind": "instance",
        "software": {"name": "Hutong", "version": env!("CARGO_PKG_VERSION")},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
            "operation": [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"},
                          {"name": "quarantine", "definition": "https://hutong.dev/fhir/OperationDefinition/quarantine"},
                          {"name": "work-order", "definition": "https://hutong.dev/fhir/OperationDefinition/work-order"},
                          {"name": "work-orders", "definition": "https://hutong.dev/fhir/OperationDefinition/work-orders"},
                          {"name": "reconcile", "definition": "https://hutong.dev/fhir/OperationDefinition/reconcile"},
                          {"name": "scorecard", "definition": "https://hutong.dev/fhir/OperationDefinition/scorecard"},
                          {"name": "intake", "definition": "https://hutong.dev/fhir/OperationDefinition/intake"},
                          {"name": "recognition", "definition": "https://hutong.dev/fhir/OperationDefinition/recognition"},
                          {"name": "referrals", "definition": "https://hutong.dev/fhir/OperationDefinition/referrals"},
                          {"name": "follow-ups", "definition": "https://hutong.dev/fhir/OperationDefinition/follow-ups"},
                          {"name": "coordination", "definition": "https://hutong.dev/fhir/OperationDefinition/coordination"}]
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation the CapabilityStatement names by a canonical of this server or of the
    /// R4 core resolves to a definition the server serves, which is valid R4 and says the
    /// same code; the Bulk Data and IHE canonicals are their publishers'.
    #[test]
    fn every_named_operation_is_defined_here_or_by_its_publisher() {
        let cap = statement("http://h/fhir");
        let mut named: Vec<(String, String)> = Vec::new();
        for r in cap["rest"][0]["resource"].as_array().unwrap() {
            for o in r["operation"].as_array().unwrap() {
                named.push((
                    o["name"].as_str().unwrap().into(),
                    o["definition"].as_str().unwrap().into(),
                ));
            }
        }
        for o in cap["rest"][0]["operation"].as_array().unwrap() {
            named.push((
                o["name"].as_str().unwrap().into(),
                o["definition"].as_str().unwrap().into(),
            ));
        }
        for (name, url) in &named {
            if url.starts_with("https://hutong.dev/")
                || url.starts_with("http://hl7.org/fhir/OperationDefinition/")
            {
                let defs = operation_definitions_by_url(url);
                assert_eq!(defs.len(), 1, "{url} is not defined here");
                assert_eq!(defs[0]["code"], name.as_str(), "{url}");
            } else {
                assert!(
                    url.starts_with("http://hl7.org/fhir/uv/bulkdata/")
                        || url.starts_with("http://hl7.org/fhir/uv/subscriptions-backport/")
                        || url.starts_with("https://profiles.ihe.net/"),
                    "{url}: whose canonical is this?"
                );
            }
        }
        for d in operation_definitions() {
            let found = hutong_fhir::validate::validate(d);
            assert!(found.is_empty(), "{}: {found:?}", d["id"]);
        }
    }
}
