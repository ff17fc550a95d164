//! Break-glass (紧急授权): a clinician's emergency access without the resident's consent,
//! granted at once for a short time, always reviewed afterwards.

use crate::consent::consent_resp;
use crate::consent::first_patient;
use crate::consent::grant_of;
use crate::consent::institution_name;
use crate::consent::person_json;
use crate::consent::phone_of;
use crate::consent::save;
use crate::consent::ACCESS_CS;
use crate::consent::BREAK_GLASS_REVIEW;
use crate::engine::Engine;
use crate::error::Code;
use crate::error::{forbidden, ApiError};
use crate::guard::Guard;
use crate::wire::{check_id, Params};
use crate::wire::{Req, Resp};
use hutong_access::grants::{Grant, Grantee, Method, Status, ACCESS_SOURCE};
use hutong_access::principal::{Capability, Kind};
use hutong_fhir::date::{format_instant, now_ms};
use hutong_fhir::security;
use hutong_fhir::vocab::stamp;
use serde_json::{json, Value};

/// `Person/{id}/$break-glass`: emergency access by a clinician, with a mandatory `reason`:
/// immediate, short (4 h by default), opening the sensitive categories a clinician may need
/// in an emergency (not the resident's restricted items), highlighted in the audit trail,
/// notified to the resident, and queued for the privacy officer's review.
pub fn break_glass(engine: &Engine, req: &Req, g: &Guard, person: &str) -> Result<Resp, ApiError> {
    g.act("break-glass");
    let Some(inst) = g
        .principal
        .institution
        .clone()
        .filter(|_| g.principal.kind == Kind::Clinician)
    else {
        return Err(forbidden("Break-glass access is declared by a clinician"));
    };
    let p = Params::parse(req, "$break-glass")?;
    let reason = p.required("reason", "$break-glass")?;
    if reason.chars().count() < 4 {
        return Err(ApiError::bad_request(
            "The reason for break-glass access must say what the emergency is",
        ));
    }
    g.break_glass(&reason);
    let pv = person_json(engine, person)?;
    let patient = first_patient(engine, person)?;
    let now = now_ms();
    let name = institution_name(engine, &inst);
    let grant = Grant {
        id: uuid::Uuid::new_v4().to_string(),
        person: person.to_string(),
        patient: patient.clone(),
        grantee: Grantee::Institution(inst.clone()),
        grantee_name: name.clone(),
        method: Method::BreakGlass,
        status: Status::Active,
        categories: security::MENTAL_HEALTH | security::HIV_STI | security::REPRODUCTIVE,
        start: now,
        end: Some(now + engine.access.policy.break_glass_ms),
        requested_by: Some(g.principal.label()),
        reason: Some(reason.clone()),
        recorded: now,
    };
    let task = json!({
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "priority": "urgent",
        "code": {"coding": [{"system": ACCESS_CS, "code": BREAK_GLASS_REVIEW, "display": "紧急调阅复核"}]},
        "description": format!("Break-glass access by {} to Person/{person}: {reason}", g.principal.label()),
        "focus": {"reference": format!("Consent/{}", grant.id)},
        "for": {"reference": format!("Patient/{patient}")},
        "authoredOn": format_instant(now),
        "requester": {"display": g.principal.label()},
        "reasonCode": {"text": reason}
    });
    let v = save(engine, g, &grant, Some(task))?;
    let who = name.unwrap_or(inst);
    let text = format!(
        "【互通】{who}因紧急救治调阅了您的健康档案（原因：{reason}）。如有疑问请联系平台隐私专员。"
    );
    if let Some(phone) = phone_of(&pv) {
        let _ = engine.access.accounts.send("sms", &phone, &text);
    }
    let _ = engine
        .access
        .accounts
        .send("app", &format!("Person/{person}"), &text);
    Ok(consent_resp(201, req, v))
}

/// `Task/{id}/$review`: the privacy officer's verdict on a break-glass access
/// (`outcome` `justified` | `unjustified`, `note`); an unjustified access that is still in
/// force is ended.
pub fn review(engine: &Engine, req: &Req, g: &Guard, id: &str) -> Result<Resp, ApiError> {
    g.act("review");
    if !g.principal.can(Capability::ReviewBreakGlass) {
        return Err(forbidden("Break-glass reviews are for the privacy officer"));
    }
    check_id(id)?;
    let p = Params::parse(req, "$review")?;
    let outcome = p.required("outcome", "$review")?;
    if !matches!(outcome.as_str(), "justified" | "unjustified") {
        return Err(ApiError::bad_request(
            "outcome must be 'justified' or 'unjustified'",
        ));
    }
    let note = p.string("note").unwrap_or_default();
    let stored = engine
        .store
        .read("Task", id, &g.scope)?
        .found()
        .filter(|s| !s.deleted)
        .ok_or_else(|| ApiError::not_found(format!("Task/{id} is not known")))?;
    let mut t = stored.json()?;
    let is_review = t["code"]["coding"][0]["code"] == BREAK_GLASS_REVIEW;
    if !is_review {
        return Err(ApiError::bad_request(format!(
            "Task/{id} is not a break-glass review"
        )));
    }
    if t["status"] != "requested" {
        return Err(ApiError::of(
            Code::Conflict,
            format!("Task/{id} was already reviewed"),
        ));
    }
    let consent = t["focus"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Consent/"))
        .map(String::from);
    t["status"] = json!("completed");
    t["lastModified"] = json!(format_instant(now_ms()));
    t["owner"] = json!({"display": g.principal.label()});
    t["output"] = json!([{"type": {"text": "outcome"}, "valueCode": outcome}]);
    if !note.is_empty() {
        t["note"] = json!([{"authorString": g.principal.label(), "text": note}]);
    }
    stamp(&mut t, ACCESS_SOURCE, now_ms());
    let mut ended: Option<Grant> = None;
    if outcome == "unjustified" {
        if let Some(c) = &consent {
            let gr = grant_of(engine, c)?;
            if gr.in_force(now_ms()) {
                let mut gr = gr;
                gr.status = Status::Inactive;
                gr.end = Some(now_ms());
                gr.recorded = now_ms();
                ended = Some(gr);
            }
        }
    }
    let s = g.write(engine, |tx| {
        let (s, _) = tx.update("Task", id, t.clone(), None)?;
        if let Some(gr) = &ended {
            let mut v = gr.to_consent();
            stamp(&mut v, ACCESS_SOURCE, now_ms());
            tx.update("Consent", &gr.id, v, None)?;
        }
        Ok(s)
    })?;
    if let Some(gr) = ended {
        engine.access.grant_written(gr);
    }
    let _ = req;
    Ok(Resp::json(
        200,
        serde_json::from_slice(&g.release(&s)).unwrap_or(Value::Null),
    ))
}
