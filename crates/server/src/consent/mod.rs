//! The access operations: finding a person before authorization, requesting access (SMS
//! code or app approval), the resident's decisions (approve, deny, revoke, standing grants,
//! proxies, restricted items), break-glass with its review, appointment-linked grants, and
//! the audit trail as FHIR `AuditEvent` — for auditors, and for residents about their own
//! record ("who viewed my record").
//!
//! Every grant is a `Consent` written by the platform (see `hutong_access::grants`), in the
//! same transaction as the request's audit entry, and takes effect at once.

pub(crate) mod appointments;
pub(crate) mod break_glass;
pub(crate) mod grants;
pub mod trail;

use hutong_access::grants::{Grant, Grantee, ACCESS_SOURCE};
use hutong_access::principal::Kind;
use hutong_access::AuthError;
use hutong_fhir::date::now_ms;
use hutong_fhir::security;
use hutong_store::{Lookup, Query, Scope};
use serde_json::Value;

use crate::engine::Engine;
use crate::error::ApiError;
use crate::guard::Guard;
use crate::wire::check_id;
use crate::wire::{Req, Resp};
use hutong_fhir::vocab::stamp;

/// Codes of the platform's access Tasks.
pub const ACCESS_CS: &str = "https://hutong.dev/fhir/CodeSystem/access";
pub const BREAK_GLASS_REVIEW: &str = "break-glass-review";
use crate::error::Code;
use hutong_fhir::vocab::USCC_SYSTEM;

pub(crate) fn unprocessable(msg: impl Into<String>) -> ApiError {
    ApiError::of(Code::Unprocessable, msg)
}

pub(crate) fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::BadCredentials(m) => unprocessable(m),
        AuthError::Locked(until) => ApiError::of(
            Code::Locked,
            format!("Too many wrong codes: locked until {until}"),
        ),
        AuthError::Invalid(m) => ApiError::bad_request(m),
        AuthError::Store(e) => e.into(),
    }
}

/// The source URI of an institution, from its Organization (unified social credit code).
pub fn institution_of_org(v: &Value) -> Option<String> {
    v["identifier"].as_array()?.iter().find_map(|i| {
        let value = i["value"].as_str()?;
        match i["system"].as_str()? {
            USCC_SYSTEM => Some(format!("urn:hutong:org:{value}")),
            hutong_access::grants::SID_SOURCE => Some(value.to_string()),
            _ => None,
        }
    })
}

/// An institution's display name, from its Organization.
pub fn institution_name(engine: &Engine, source: &str) -> Option<String> {
    let v = organization_of(engine, source).ok()??;
    v["name"].as_str().map(String::from)
}

/// The Organization of an institution (`urn:hutong:org:{USCC}`), read as the platform
/// (organisations are reference data).
pub(crate) fn organization_of(engine: &Engine, source: &str) -> Result<Option<Value>, ApiError> {
    let Some(uscc) = source.strip_prefix("urn:hutong:org:") else {
        return Ok(None);
    };
    let q = Query::parse(
        "Organization",
        &[("identifier".into(), format!("{USCC_SYSTEM}|{uscc}"))],
        true,
    )?;
    match engine.store.search(&q, &Scope::All)?.matches.first() {
        Some(s) => Ok(Some(s.json()?)),
        None => Ok(None),
    }
}

/// The person's current Person resource (the platform's own read, for its bookkeeping).
pub(crate) fn person_json(engine: &Engine, person: &str) -> Result<Value, ApiError> {
    check_id(person)?;
    match engine.store.read("Person", person, &Scope::All)? {
        Lookup::Found(s) if !s.deleted => {
            let v = s.json()?;
            if v["active"] == false {
                return Err(unprocessable(format!(
                    "Person/{person} is no longer active (merged or retired)"
                )));
            }
            Ok(v)
        }
        _ => Err(ApiError::not_found(format!("Person/{person} is not known"))),
    }
}

/// The mobile number on a person's golden record.
pub(crate) fn phone_of(person: &Value) -> Option<String> {
    person["telecom"].as_array()?.iter().find_map(|t| {
        (t["system"] == "phone" || t["system"] == "sms")
            .then(|| t["value"].as_str().map(String::from))
            .flatten()
    })
}

pub(crate) fn patients_of(engine: &Engine, person: &str) -> Result<Vec<String>, ApiError> {
    Ok(engine
        .matcher
        .patients_of(&engine.store, person)?
        .into_iter()
        .map(|p| p.trim_start_matches("Patient/").to_string())
        .collect())
}

/// The person's first Patient: the one a grant's Consent is filed under.
pub(crate) fn first_patient(engine: &Engine, person: &str) -> Result<String, ApiError> {
    patients_of(engine, person)?
        .first()
        .cloned()
        .ok_or_else(|| unprocessable(format!("Person/{person} has no records")))
}

/// Writes a grant as its Consent with the request's audit entry, and makes it effective.
pub(crate) fn save(
    engine: &Engine,
    g: &Guard,
    grant: &Grant,
    extra: Option<Value>,
) -> Result<Value, ApiError> {
    let mut v = grant.to_consent();
    stamp(&mut v, ACCESS_SOURCE, now_ms());
    g.on_behalf_of(&grant.person);
    let id = grant.id.clone();
    g.write(engine, |tx| {
        tx.update("Consent", &id, v.clone(), None)?;
        if let Some(t) = &extra {
            let mut t = t.clone();
            security::add_labels(&mut t, security::ACCESS_RECORD);
            stamp(&mut t, ACCESS_SOURCE, now_ms());
            tx.create("Task", None, t)?;
        }
        // What follows a grant in the same transaction (a referral waiting for consent).
        (engine.grant_hook)(engine, tx, grant)
    })?;
    engine.access.grant_written(grant.clone());
    Ok(v)
}

/// Records a grant as the platform (operators' tools, migrations from other platforms, tests):
/// its Consent, audited, effective at once.
pub fn record_grant(engine: &Engine, grant: &Grant) -> Result<(), ApiError> {
    let g = Guard::platform(engine, "grant-import", "grant");
    save(engine, &g, grant, None)?;
    g.finish(engine, 200, None);
    Ok(())
}

pub(crate) fn grant_of(engine: &Engine, id: &str) -> Result<Grant, ApiError> {
    check_id(id)?;
    engine.access.sync_grants(&engine.store, true)?;
    engine
        .access
        .grants
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("Consent/{id} is not an access grant")))
}

/// Whether the requester is the resident whose record this is, or their proxy.
pub(crate) fn acts_for(engine: &Engine, g: &Guard, person: &str) -> bool {
    let p = &g.principal;
    if p.kind != Kind::Resident {
        return false;
    }
    let Some(me) = &p.person else { return false };
    if me == person {
        return true;
    }
    engine
        .access
        .grants
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .in_force_for(&Grantee::Person(me.clone()), now_ms())
        .iter()
        .any(|gr| gr.person == person)
}

pub(crate) fn consent_resp(status: u16, req: &Req, v: Value) -> Resp {
    let loc = format!("{}/Consent/{}", req.base, v["id"].as_str().unwrap_or(""));
    let mut r = Resp::json(status, v);
    r.headers.push(("Location".into(), loc));
    r
}
