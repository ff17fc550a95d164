//! The access operations: finding a person before authorization, requesting access (SMS
//! code or app approval), the resident's decisions (approve, deny, revoke, standing grants,
//! proxies, restricted items), break-glass with its review, appointment-linked grants, and
//! the audit trail as FHIR `AuditEvent` — for auditors, and for residents about their own
//! record ("who viewed my record").
//!
//! Every grant is a `Consent` written by the platform (see `hutong_access::grants`), in the
//! same transaction as the request's audit entry, and takes effect at once.

use std::collections::BTreeSet;

use hutong_access::grants::{Grant, Grantee, Method, Status, ACCESS_SOURCE};
use hutong_access::principal::{Capability, Kind, Perms};
use hutong_access::{AuthError, View};
use hutong_fhir::date::{format_instant, now_ms};
use hutong_fhir::security;
use hutong_fhir::IssueCode;
use hutong_store::{Lookup, Query, Scope, Stored};
use serde_json::{json, Value};

use crate::engine::{stamp, Body, BundleWriter, Engine, Req, Resp};
use crate::error::{forbidden, ApiError};
use crate::guard::Guard;
use crate::person_api::{check_id, Params};

/// Codes of the platform's access Tasks.
pub const ACCESS_CS: &str = "https://hutong.dev/fhir/CodeSystem/access";
pub const BREAK_GLASS_REVIEW: &str = "break-glass-review";
use hutong_fhir::vocab::USCC_SYSTEM;

fn unprocessable(msg: impl Into<String>) -> ApiError {
    ApiError::new(422, IssueCode::Processing, msg)
}

fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::BadCredentials(m) => unprocessable(m),
        AuthError::Locked(until) => ApiError::new(
            429,
            IssueCode::Security,
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
    let uscc = source.strip_prefix("urn:hutong:org:")?;
    let q = Query::parse(
        "Organization",
        &[("identifier".into(), format!("{USCC_SYSTEM}|{uscc}"))],
        true,
    )
    .ok()?;
    let page = engine.store.search(&q, &Scope::All).ok()?;
    let v = page.matches.first()?.json().ok()?;
    v["name"].as_str().map(String::from)
}

/// The person's current Person resource (the platform's own read, for its bookkeeping).
fn person_json(engine: &Engine, person: &str) -> Result<Value, ApiError> {
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
fn phone_of(person: &Value) -> Option<String> {
    person["telecom"].as_array()?.iter().find_map(|t| {
        (t["system"] == "phone" || t["system"] == "sms")
            .then(|| t["value"].as_str().map(String::from))
            .flatten()
    })
}

fn patients_of(engine: &Engine, person: &str) -> Result<Vec<String>, ApiError> {
    Ok(engine
        .matcher
        .patients_of(&engine.store, person)?
        .into_iter()
        .map(|p| p.trim_start_matches("Patient/").to_string())
        .collect())
}

/// The person's first Patient: the one a grant's Consent is filed under.
fn first_patient(engine: &Engine, person: &str) -> Result<String, ApiError> {
    patients_of(engine, person)?
        .first()
        .cloned()
        .ok_or_else(|| unprocessable(format!("Person/{person} has no records")))
}

/// The optional `end` parameter (a date or instant; the grant holds until its end).
fn end_param(p: &Params) -> Result<Option<i64>, ApiError> {
    p.string("end")
        .map(|e| {
            hutong_fhir::date::parse(&e)
                .map(|r| r.hi)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid end '{e}'")))
        })
        .transpose()
}

fn categories(p: &Params) -> Result<u32, ApiError> {
    let mut bits = 0;
    for c in p.all("category") {
        let name = c["valueCode"]
            .as_str()
            .or(c["valueString"].as_str())
            .unwrap_or("");
        let cat = security::grantable(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Unknown category '{name}': expected one of mental-health, hiv-sti, reproductive, restricted"
            ))
        })?;
        bits |= cat.bit;
    }
    Ok(bits)
}

fn hours(p: &Params, default_ms: i64) -> Result<i64, ApiError> {
    match p.all("hours").next() {
        None => Ok(default_ms),
        Some(h) => match h["valueInteger"].as_i64() {
            Some(n @ 1..=8760) => Ok(n * 3_600_000),
            _ => Err(ApiError::bad_request(
                "hours must be an integer from 1 to 8760",
            )),
        },
    }
}

/// The longest grant a code read out over the phone may give: anything longer is a decision
/// the resident takes in the app, where they see what they approve.
const SMS_MAX_MS: i64 = 24 * 3_600_000;
/// Access requests one requester may make in an hour.
const REQUESTS_PER_REQUESTER_HOUR: i64 = 20;
/// Requests a resident may receive in an hour, and in a day.
const REQUESTS_PER_RESIDENT_HOUR: i64 = 5;
const REQUESTS_PER_RESIDENT_DAY: i64 = 12;
/// Requests from other institutions open at once for one resident.
const OPEN_REQUESTS_PER_RESIDENT: usize = 3;

/// The lockout subject of wrong codes over all of one grantee's requests to one resident.
fn guesses_key(grantee: &str, person: &str) -> String {
    format!("grant-guess:{grantee}:{person}")
}

/// A duration as a resident reads it: "2小时", "3天".
fn duration_text(ms: i64) -> String {
    let hours = (ms + 3_599_999) / 3_600_000;
    if hours >= 48 && hours % 24 == 0 {
        format!("{}天", hours / 24)
    } else {
        format!("{hours}小时")
    }
}

/// What a grant opens, as the resident reads it.
fn scope_text(bits: u32) -> String {
    let names: Vec<&str> = security::CATEGORIES
        .iter()
        .filter(|c| bits & c.bit != 0)
        .map(|c| c.zh)
        .collect();
    if names.is_empty() {
        "一般诊疗记录（不含敏感类别）".to_string()
    } else {
        format!("一般诊疗记录及敏感类别：{}", names.join("、"))
    }
}

fn throttled(e: AuthError, what: &str) -> ApiError {
    match e {
        AuthError::Locked(until) => ApiError::new(
            429,
            IssueCode::Throttled,
            format!("Too many access requests {what}: try again after {until}"),
        ),
        other => auth_error(other),
    }
}

/// Writes a grant as its Consent with the request's audit entry, and makes it effective.
fn save(
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
        Ok(())
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

fn grant_of(engine: &Engine, id: &str) -> Result<Grant, ApiError> {
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
fn acts_for(engine: &Engine, g: &Guard, person: &str) -> bool {
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

fn consent_resp(status: u16, req: &Req, v: Value) -> Resp {
    let loc = format!("{}/Consent/{}", req.base, v["id"].as_str().unwrap_or(""));
    let mut r = Resp::json(status, v);
    r.headers.push(("Location".into(), loc));
    r
}

// -- finding a person -------------------------------------------------------------------------

/// `Person/$find`: a clinician finds a person before they are authorized — by resident ID
/// number, health card, MRN or another identifier, or by name with birth date — and sees
/// them masked (surname, sex, year of birth, masked ID), enough to ask for access and no
/// more. Persons they are already authorized for come back as their view allows.
pub fn find(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("find");
    if !matches!(
        g.principal.kind,
        Kind::Clinician | Kind::System | Kind::Operator | Kind::Platform
    ) {
        return Err(forbidden(
            "Finding a person is for clinicians and operators",
        ));
    }
    let mut params: Vec<(String, String)> = req.query.clone();
    if req.method == "POST" && !req.body.is_empty() {
        let p = Params::parse(req, "$find")?;
        for k in ["identifier", "name", "birthdate"] {
            if let Some(v) = p.string(k) {
                params.push((k.to_string(), v));
            }
        }
    }
    let get = |k: &str| params.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
    let mut q: Vec<(String, String)> = Vec::new();
    match (get("identifier"), get("name"), get("birthdate")) {
        (Some(i), _, _) => q.push(("identifier".into(), i)),
        (None, Some(n), Some(b)) => {
            q.push(("name".into(), n));
            q.push(("birthdate".into(), b));
        }
        _ => {
            return Err(ApiError::new(
                400,
                IssueCode::Required,
                "$find needs an identifier (system|value), or a name with a birthdate: browsing the population is not allowed",
            ))
        }
    }
    q.push(("_count".into(), "20".into()));
    let query = Query::parse("Person", &q, true)?;
    let page = engine.store.search(&query, &Scope::All)?;
    let mut w = BundleWriter::new("searchset", Some(page.matches.len() as u64), &[]);
    for s in &page.matches {
        let authorized = g.scope.permits_stored(s);
        let body = if authorized {
            g.release(s).into_owned()
        } else {
            g.touch(format!("Person/{}", s.id), s.shard);
            let mut v = s.json()?;
            // Which institutions hold records says too much before authorization.
            if let Some(o) = v.as_object_mut() {
                o.remove("link");
                o.remove("address");
                o.remove("telecom");
            }
            if let Some(ids) = v["identifier"].as_array_mut() {
                ids.retain(|i| i["system"] == hutong_mpi::fhir::ID_SYSTEM);
            }
            hutong_access::mask::apply("Person", &mut v, View::Masked);
            serde_json::to_vec(&v).unwrap_or_default()
        };
        w.entry(
            json!({"fullUrl": format!("{}/Person/{}", req.base, s.id), "search": {"mode": "match",
                "extension": [{"url": "https://hutong.dev/fhir/StructureDefinition/authorized", "valueBoolean": authorized}]}}),
            Some(&body),
        );
    }
    Ok(Resp {
        status: 200,
        headers: Vec::new(),
        body: Body::Raw(w.finish()),
    })
}

// -- requests and codes -----------------------------------------------------------------------

/// `Person/{id}/$request-access`: an institution asks the resident for access to their
/// record — by a code sent to the resident's phone (`method` `sms`, the default) or a request
/// in the resident's portal or app (`app`). Optional `category` (repeating) names sensitive
/// categories asked for, `hours` how long (default 24), `reason` a note for the resident.
pub fn request_access(
    engine: &Engine,
    req: &Req,
    g: &Guard,
    person: &str,
) -> Result<Resp, ApiError> {
    g.act("request-access");
    let Some(inst) = g
        .principal
        .institution
        .clone()
        .filter(|_| matches!(g.principal.kind, Kind::Clinician | Kind::System))
    else {
        return Err(forbidden(
            "Access is requested by an institution's clinicians or systems",
        ));
    };
    let p = Params::parse(req, "$request-access")?;
    let method = match p.string("method").as_deref() {
        None | Some("sms") => Method::Sms,
        Some("app") => Method::App,
        Some(m) => {
            return Err(ApiError::bad_request(format!(
                "method must be 'sms' or 'app', not '{m}'"
            )))
        }
    };
    let cats = categories(&p)?;
    let duration = hours(&p, engine.access.policy.grant_ms)?;
    if method == Method::Sms && duration > SMS_MAX_MS {
        return Err(unprocessable(format!(
            "A code read out by the resident grants at most {} hours; for {} hours ask for approval in the app (method=app), where the resident sees what they approve",
            SMS_MAX_MS / 3_600_000,
            duration / 3_600_000
        )));
    }
    let pv = person_json(engine, person)?;
    let patients = patients_of(engine, person)?;
    let Some(patient) = patients.first().cloned() else {
        return Err(unprocessable(format!("Person/{person} has no records")));
    };
    let phone = phone_of(&pv);
    if method == Method::Sms && phone.is_none() {
        return Err(unprocessable(
            "The resident has no mobile number on record: ask for approval in the app (method=app)",
        ));
    }
    let now = now_ms();
    // Nobody may flood a resident with requests and codes: limits per requester and per
    // resident (kept in the store: they hold across API nodes), one open request per
    // institution (a new one withdraws the last), a few institutions' at once.
    let accounts = &engine.access.accounts;
    accounts
        .throttle(
            &format!("access-request:by:{}", g.principal.label()),
            REQUESTS_PER_REQUESTER_HOUR,
            3_600_000,
        )
        .map_err(|e| throttled(e, "from you"))?;
    let pending: Vec<Grant> = {
        let grants = engine
            .access
            .grants
            .read()
            .unwrap_or_else(|e| e.into_inner());
        grants
            .of_person(person)
            .into_iter()
            .filter(|x| x.status == Status::Proposed && x.end.is_none_or(|e| e > now))
            .cloned()
            .collect()
    };
    let mine = Grantee::Institution(inst.clone());
    let others = pending
        .iter()
        .filter(|x| x.grantee != mine)
        .map(|x| &x.grantee)
        .collect::<std::collections::HashSet<_>>()
        .len();
    if others >= OPEN_REQUESTS_PER_RESIDENT {
        return Err(ApiError::new(
            429,
            IssueCode::Throttled,
            format!("The resident already has {others} open access requests from other institutions: try again when they are decided"),
        ));
    }
    accounts
        .throttle(
            &format!("access-request:to:{person}"),
            REQUESTS_PER_RESIDENT_HOUR,
            3_600_000,
        )
        .map_err(|e| throttled(e, "to this resident"))?;
    accounts
        .throttle(
            &format!("access-request:to-day:{person}"),
            REQUESTS_PER_RESIDENT_DAY,
            86_400_000,
        )
        .map_err(|e| throttled(e, "to this resident today"))?;
    // Wrong codes count across requests: a new request brings no fresh guesses.
    accounts
        .check_attempts(&guesses_key(&inst, person))
        .map_err(auth_error)?;
    for mut old in pending.into_iter().filter(|x| x.grantee == mine) {
        old.status = Status::Rejected;
        old.reason = Some("withdrawn: superseded by a newer request".into());
        old.recorded = now;
        save(engine, g, &old, None)?;
    }
    let name = institution_name(engine, &inst);
    let grant = Grant {
        id: uuid::Uuid::new_v4().to_string(),
        person: person.to_string(),
        patient,
        grantee: Grantee::Institution(inst.clone()),
        grantee_name: name.clone(),
        method,
        status: Status::Proposed,
        categories: cats,
        start: now,
        // Until decided, `end` holds the duration asked for, as an instant from now.
        end: Some(now + duration),
        requested_by: Some(g.principal.label()),
        reason: p.string("reason"),
        recorded: now,
    };
    let who = name.unwrap_or(inst.clone());
    // The message says who asks, for what and for how long: the resident decides on that.
    let asker = match (&g.principal.kind, &g.principal.name) {
        (Kind::Clinician, Some(n)) => format!("{who}{n}医生"),
        _ => who.clone(),
    };
    let what = format!("{}，期限{}", scope_text(cats), duration_text(duration));
    let mut v = save(engine, g, &grant, None)?;
    match method {
        Method::Sms => {
            let phone = phone.expect("checked above");
            let code = engine
                .access
                .accounts
                .issue_code("grant", &grant.id)
                .map_err(auth_error)?;
            let text = format!(
                "【互通】{asker}请求调阅您的健康档案：{what}。验证码{code}，5分钟内有效。同意才告知医生；如非本人就诊，请勿告知他人。"
            );
            engine
                .access
                .accounts
                .send("sms", &phone, &text)
                .map_err(auth_error)?;
            if let Some(a) = v["extension"].as_array_mut() {
                a.push(json!({"url": "https://hutong.dev/fhir/StructureDefinition/code-sent-to", "valueString": hutong_access::mask::phone(&phone)}));
            }
        }
        _ => {
            let text = format!(
                "【互通】{asker}请求调阅您的健康档案：{what}。请在互通 App 中查看并批准或拒绝。"
            );
            engine
                .access
                .accounts
                .send("app", &format!("Person/{person}"), &text)
                .map_err(auth_error)?;
        }
    }
    Ok(consent_resp(201, req, v))
}

/// `Consent/{id}/$verify-code`: the clinician enters the code the resident read out; the
/// grant becomes active for the hours asked. Wrong codes count; five lock the request.
pub fn verify_code(engine: &Engine, req: &Req, g: &Guard, id: &str) -> Result<Resp, ApiError> {
    g.act("grant");
    let mut grant = grant_of(engine, id)?;
    g.on_behalf_of(&grant.person);
    if g.principal
        .institution
        .as_ref()
        .map(|i| Grantee::Institution(i.clone()))
        != Some(grant.grantee.clone())
    {
        return Err(forbidden(
            "Only the institution that asked may enter the code",
        ));
    }
    if grant.method != Method::Sms || grant.status != Status::Proposed {
        return Err(ApiError::new(
            409,
            IssueCode::Conflict,
            format!(
                "Consent/{id} is not waiting for a code (it is {})",
                grant.status.as_str()
            ),
        ));
    }
    let p = Params::parse(req, "$verify-code")?;
    let code = p.required("code", "$verify-code")?;
    let guesses = match &grant.grantee {
        Grantee::Institution(i) | Grantee::Person(i) => guesses_key(i, &grant.person),
    };
    let accounts = &engine.access.accounts;
    let checked = accounts
        .check_attempts(&guesses)
        .and_then(|_| accounts.check_code("grant", id, &code));
    match &checked {
        Ok(()) => accounts.attempt(&guesses, true),
        Err(AuthError::BadCredentials(_)) => accounts.attempt(&guesses, false),
        Err(_) => Ok(()),
    }
    .map_err(auth_error)?;
    if let Err(e) = checked {
        if matches!(e, AuthError::Locked(_)) {
            grant.status = Status::Rejected;
            grant.recorded = now_ms();
            save(engine, g, &grant, None)?;
        }
        return Err(auth_error(e));
    }
    let now = now_ms();
    let duration = grant.end.unwrap_or(now + engine.access.policy.grant_ms) - grant.start;
    grant.status = Status::Active;
    grant.start = now;
    grant.end = Some(now + duration.max(1));
    grant.recorded = now;
    let v = save(engine, g, &grant, None)?;
    Ok(consent_resp(200, req, v))
}

/// `Consent/{id}/$approve` and `$deny`: the resident (or their proxy) decides a request.
pub fn decide_request(
    engine: &Engine,
    req: &Req,
    g: &Guard,
    id: &str,
    approve: bool,
) -> Result<Resp, ApiError> {
    g.act(if approve { "approve" } else { "deny" });
    let mut grant = grant_of(engine, id)?;
    g.on_behalf_of(&grant.person);
    if !acts_for(engine, g, &grant.person) {
        return Err(forbidden(
            "Only the resident (or their proxy) decides a request for their record",
        ));
    }
    if grant.status != Status::Proposed {
        return Err(ApiError::new(
            409,
            IssueCode::Conflict,
            format!(
                "Consent/{id} was already decided ({})",
                grant.status.as_str()
            ),
        ));
    }
    let now = now_ms();
    if approve {
        let duration = grant.end.unwrap_or(now + engine.access.policy.grant_ms) - grant.start;
        grant.status = Status::Active;
        grant.start = now;
        grant.end = Some(now + duration.max(1));
    } else {
        grant.status = Status::Rejected;
    }
    grant.recorded = now;
    let v = save(engine, g, &grant, None)?;
    Ok(consent_resp(200, req, v))
}

/// `Consent/{id}/$revoke`: the resident (or proxy) ends a grant, or the institution gives
/// it up; effective immediately.
pub fn revoke(engine: &Engine, req: &Req, g: &Guard, id: &str) -> Result<Resp, ApiError> {
    g.act("revoke");
    let mut grant = grant_of(engine, id)?;
    g.on_behalf_of(&grant.person);
    let own_institution = g
        .principal
        .institution
        .as_ref()
        .is_some_and(|i| grant.grantee == Grantee::Institution(i.clone()));
    let grantor_operator = matches!(g.principal.kind, Kind::Operator | Kind::Platform)
        && (g.principal.kind == Kind::Platform || g.reason.is_some());
    if !acts_for(engine, g, &grant.person) && !own_institution && !grantor_operator {
        return Err(forbidden(
            "Only the resident, their proxy or the grantee may revoke a grant",
        ));
    }
    if !matches!(grant.status, Status::Active | Status::Proposed) {
        return Err(ApiError::new(
            409,
            IssueCode::Conflict,
            format!("Consent/{id} is not in force ({})", grant.status.as_str()),
        ));
    }
    grant.status = Status::Inactive;
    let now = now_ms();
    if grant.end.is_none_or(|e| e > now) {
        grant.end = Some(now);
    }
    grant.recorded = now;
    let v = save(engine, g, &grant, None)?;
    Ok(consent_resp(200, req, v))
}

fn institution_param(engine: &Engine, p: &Params) -> Result<(String, Option<String>), ApiError> {
    if let Some(org) = p
        .refs("institution", "Organization")
        .ok()
        .and_then(|v| v.into_iter().next())
    {
        let s = engine
            .store
            .read("Organization", &org, &Scope::All)?
            .found()
            .ok_or_else(|| ApiError::not_found(format!("Organization/{org} is not known")))?;
        let v = s.json()?;
        let src = institution_of_org(&v).ok_or_else(|| {
            unprocessable(format!(
                "Organization/{org} has no unified social credit code"
            ))
        })?;
        return Ok((src, v["name"].as_str().map(String::from)));
    }
    let src = p.required("institution", "$grant")?;
    if !src.starts_with("urn:") {
        return Err(ApiError::bad_request(
            "institution is an Organization reference or a source URI (urn:hutong:org:…)",
        ));
    }
    let name = institution_name(engine, &src);
    Ok((src, name))
}

/// `Person/{id}/$grant`: the resident's standing authorization for an institution (their
/// family doctor's centre, say) — until `end`, or until revoked.
pub fn standing_grant(
    engine: &Engine,
    req: &Req,
    g: &Guard,
    person: &str,
) -> Result<Resp, ApiError> {
    g.act("grant");
    if !acts_for(engine, g, person) {
        return Err(forbidden(
            "Only the resident (or their proxy) grants access to their record",
        ));
    }
    let p = Params::parse(req, "$grant")?;
    let (inst, name) = institution_param(engine, &p)?;
    let end = end_param(&p)?;
    person_json(engine, person)?;
    let patient = first_patient(engine, person)?;
    let now = now_ms();
    let grant = Grant {
        id: uuid::Uuid::new_v4().to_string(),
        person: person.to_string(),
        patient,
        grantee: Grantee::Institution(inst),
        grantee_name: name,
        method: Method::Standing,
        status: Status::Active,
        categories: categories(&p)?,
        start: now,
        end,
        requested_by: Some(g.principal.label()),
        reason: p.string("reason"),
        recorded: now,
    };
    let v = save(engine, g, &grant, None)?;
    Ok(consent_resp(201, req, v))
}

/// `Person/{id}/$grant-proxy`: makes another resident (`grantee`: their resident ID number
/// `system|value`, or a Person reference) proxy for this person's record — a carer for an
/// elder, a guardian for a child. Granted by the resident, or by an operator with a recorded
/// reason (a guardian's claim checked against documents).
pub fn grant_proxy(engine: &Engine, req: &Req, g: &Guard, person: &str) -> Result<Resp, ApiError> {
    g.act("grant");
    let operator = g.principal.can(Capability::AssignProxy) && g.reason.is_some();
    let own = g.principal.kind == Kind::Resident && g.principal.person.as_deref() == Some(person);
    if !own && !operator && g.principal.kind != Kind::Platform {
        return Err(forbidden(
            "A proxy is granted by the resident, or by an identity steward with a recorded reason",
        ));
    }
    let p = Params::parse(req, "$grant-proxy")?;
    let grantee = match p
        .refs("grantee", "Person")
        .ok()
        .and_then(|v| v.into_iter().next())
    {
        Some(id) => id,
        None => {
            let ident = p.required("grantee", "$grant-proxy")?;
            let q = Query::parse("Person", &[("identifier".into(), ident.clone())], true)?;
            let found = engine.store.search(&q, &Scope::All)?;
            match found.matches.as_slice() {
                [one] => one.id.clone(),
                [] => {
                    return Err(ApiError::not_found(format!(
                        "No person has the identifier {ident}"
                    )))
                }
                _ => {
                    return Err(unprocessable(format!(
                        "Several persons have the identifier {ident}"
                    )))
                }
            }
        }
    };
    if grantee == person {
        return Err(ApiError::bad_request("A person cannot be their own proxy"));
    }
    let gv = person_json(engine, &grantee)?;
    person_json(engine, person)?;
    let patient = first_patient(engine, person)?;
    let end = end_param(&p)?;
    let now = now_ms();
    let grant = Grant {
        id: uuid::Uuid::new_v4().to_string(),
        person: person.to_string(),
        patient,
        grantee: Grantee::Person(grantee),
        grantee_name: gv["name"][0]["text"].as_str().map(String::from),
        method: Method::Proxy,
        status: Status::Active,
        categories: categories(&p)?,
        start: now,
        end,
        requested_by: Some(g.principal.label()),
        reason: g.reason.clone().or(p.string("reason")),
        recorded: now,
    };
    let v = save(engine, g, &grant, None)?;
    Ok(consent_resp(201, req, v))
}

// -- break-glass --------------------------------------------------------------------------------

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
        return Err(ApiError::new(
            409,
            IssueCode::Conflict,
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

// -- the resident's own controls ------------------------------------------------------------------

/// `{type}/{id}/$restrict` and `$unrestrict`: the resident marks an item of their record
/// restricted (患者申明特控) — no grant opens it unless it names `restricted` — or lifts the
/// mark.
pub fn restrict(
    engine: &Engine,
    _req: &Req,
    g: &Guard,
    t: &str,
    id: &str,
    on: bool,
) -> Result<Resp, ApiError> {
    g.act("restrict");
    check_id(id)?;
    if !hutong_fhir::Definitions::get().is_resource_type(t) {
        return Err(ApiError::not_found(format!("Unknown resource type '{t}'")));
    }
    let Some(me) = g
        .principal
        .person
        .clone()
        .filter(|_| g.principal.kind == Kind::Resident)
    else {
        return Err(forbidden(
            "Items are restricted by the resident whose record they are in",
        ));
    };
    let s = match engine.store.read(t, id, &g.scope)? {
        Lookup::Found(s) if !s.deleted => s,
        Lookup::Hidden => return Err(g.hidden(&format!("{t}/{id}"))),
        _ => return Err(ApiError::not_found(format!("{t}/{id} is not known"))),
    };
    let mine: BTreeSet<i64> = patients_of(engine, &me)?
        .iter()
        .map(|p| hutong_store::shard_of(p))
        .collect();
    if !mine.contains(&s.shard) {
        return Err(forbidden(format!("{t}/{id} is not in your own record")));
    }
    g.on_behalf_of(&me);
    g.touch(format!("{t}/{id}/_history/{}", s.version), s.shard);
    g.write(engine, |tx| Ok(tx.set_resident_restricted(t, id, on)?))?;
    Ok(Resp::json(
        200,
        hutong_fhir::Outcome::info(if on {
            format!("{t}/{id} is restricted: only grants that name restricted items open it")
        } else {
            format!("{t}/{id} is no longer restricted")
        })
        .to_json(),
    ))
}

// -- appointments ----------------------------------------------------------------------------------

/// After a write: an Appointment booked through the appointment platform (a booking client)
/// opens the booked institution's access to the patient's record for the visit window; a
/// cancelled one closes it.
pub fn after_write(engine: &Engine, g: &Guard, s: &Stored) -> Result<(), ApiError> {
    if s.rtype != "Appointment" || !(g.principal.booking || g.principal.kind == Kind::Platform) {
        return Ok(());
    }
    let v = s.json()?;
    let status = v["status"].as_str().unwrap_or("");
    let id = format!("appt-{}", s.id);
    let open = matches!(status, "booked" | "arrived" | "checked-in" | "fulfilled");
    let mut patient = None;
    let mut institution = None;
    for p in v["participant"].as_array().into_iter().flatten() {
        let r = p["actor"]["reference"].as_str().unwrap_or("");
        if let Some(pid) = r.strip_prefix("Patient/") {
            patient = Some(pid.to_string());
            continue;
        }
        let Some(rf) = hutong_fhir::Reference::parse(r) else {
            continue;
        };
        let field = match rf.rtype.as_str() {
            "PractitionerRole" => "organization",
            "HealthcareService" => "providedBy",
            "Location" => "managingOrganization",
            _ => continue,
        };
        let Some(x) = engine.store.read(&rf.rtype, &rf.id, &Scope::All)?.found() else {
            continue;
        };
        let org = x.json()?[field]["reference"]
            .as_str()
            .and_then(|o| o.strip_prefix("Organization/"))
            .map(String::from);
        if let Some(org) = org {
            if let Some(o) = engine
                .store
                .read("Organization", &org, &Scope::All)?
                .found()
            {
                institution = institution_of_org(&o.json()?);
            }
        }
    }
    let (Some(patient), Some(inst)) = (patient, institution) else {
        return Ok(());
    };
    engine.matcher.sync(&engine.store)?;
    let Some(person) = engine
        .matcher
        .person_of(&engine.store, &format!("Patient/{patient}"))?
    else {
        return Ok(());
    };
    let existing = engine
        .access
        .grants
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned();
    let date = |k: &str| v[k].as_str().and_then(hutong_fhir::date::parse);
    let policy = &engine.access.policy;
    let now = now_ms();
    let grant = match (open, existing) {
        (true, _) => {
            let start = date("start").map_or(now, |r| r.lo) - policy.appointment_before_ms;
            let end =
                date("end").or(date("start")).map_or(now, |r| r.hi) + policy.appointment_after_ms;
            Grant {
                id: id.clone(),
                person: person.clone(),
                patient,
                grantee: Grantee::Institution(inst.clone()),
                grantee_name: institution_name(engine, &inst),
                method: Method::Appointment,
                status: Status::Active,
                categories: 0,
                start,
                end: Some(end),
                requested_by: Some(g.principal.label()),
                reason: Some(format!("Appointment/{}", s.id)),
                recorded: now,
            }
        }
        (false, Some(mut gr)) if gr.status == Status::Active => {
            gr.status = Status::Inactive;
            gr.end = Some(now);
            gr.recorded = now;
            gr
        }
        _ => return Ok(()),
    };
    // Recorded as the platform acting on the booking, in its own audited transaction.
    let pg = Guard::platform(engine, "appointment-grants", "grant");
    pg.note(format!(
        "for Appointment/{} booked by {}",
        s.id,
        g.principal.label()
    ));
    save(engine, &pg, &grant, None)?;
    pg.finish(engine, 200, None);
    Ok(())
}

// -- the audit trail -------------------------------------------------------------------------------

fn audit_bundle(
    req: &Req,
    rows: Vec<hutong_store::AuditRow>,
    total: u64,
    path: &str,
    count: usize,
    offset: usize,
) -> Resp {
    let link = |off: usize| crate::engine::page_link(path, &req.query, count, off);
    let mut links = vec![("self", link(offset))];
    if offset + rows.len() < total as usize {
        links.push(("next", link(offset + count)));
    }
    if offset > 0 {
        links.push(("previous", link(offset.saturating_sub(count))));
    }
    let mut w = BundleWriter::new("searchset", Some(total), &links);
    for r in rows {
        let Some(e) = hutong_audit::Entry::parse(&r.entry) else {
            continue;
        };
        let ev = hutong_audit::event::to_audit_event(r.part, r.seq, &e);
        w.entry(
            json!({"fullUrl": format!("{}/AuditEvent/{}-{}", req.base, r.part, r.seq), "search": {"mode": "match"}}),
            Some(&serde_json::to_vec(&ev).unwrap_or_default()),
        );
    }
    Resp {
        status: 200,
        headers: Vec::new(),
        body: Body::Raw(w.finish()),
    }
}

fn paging(req: &Req) -> Result<(usize, usize, i64, i64), ApiError> {
    let mut count = 50usize;
    let mut offset = 0usize;
    let (mut since, mut until) = (i64::MIN, i64::MAX);
    for (k, v) in &req.query {
        match k.as_str() {
            "_count" => {
                count = v
                    .parse::<usize>()
                    .map_err(|_| ApiError::bad_request("_count must be a number"))?
                    .clamp(1, 500)
            }
            "_offset" => {
                offset = v
                    .parse()
                    .map_err(|_| ApiError::bad_request("_offset must be a number"))?
            }
            "date" => {
                let (prefix, d) = match v.get(..2) {
                    Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, &v[2..]),
                    _ => ("eq", v.as_str()),
                };
                let r = hutong_fhir::date::parse(d)
                    .ok_or_else(|| ApiError::bad_request(format!("Invalid date '{v}'")))?;
                match prefix {
                    "ge" => since = since.max(r.lo),
                    "gt" => since = since.max(r.hi),
                    "le" => until = until.min(r.hi),
                    "lt" => until = until.min(r.lo),
                    _ => {
                        since = since.max(r.lo);
                        until = until.min(r.hi);
                    }
                }
            }
            _ => {}
        }
    }
    Ok((count, offset, since, until))
}

/// `Person/{id}/$access-history`: who read or changed this person's record, when, why and
/// from where, newest first — for the resident (and their proxy), the privacy officer and
/// auditors. Break-glass accesses are tagged.
pub fn access_history(
    engine: &Engine,
    req: &Req,
    g: &Guard,
    person: &str,
) -> Result<Resp, ApiError> {
    g.act("access-history");
    check_id(person)?;
    let allowed = acts_for(engine, g, person) || g.principal.can(Capability::ReadAuditTrail);
    if !allowed {
        return Err(forbidden(
            "The access history of a record is for its resident, the privacy officer and auditors",
        ));
    }
    g.on_behalf_of(person);
    person_json(engine, person)?;
    let shards: Vec<i64> = patients_of(engine, person)?
        .iter()
        .map(|p| hutong_store::shard_of(p))
        .collect();
    // What is about to be written (this very request) is not waited for; earlier accesses are.
    engine.audit.flush(std::time::Duration::from_secs(2));
    let (count, offset, since, until) = paging(req)?;
    let (rows, total) = engine
        .store
        .audit_about(Some(&shards), since, until, count, offset)?;
    Ok(audit_bundle(
        req,
        rows,
        total,
        &format!("{}/Person/{person}/$access-history", req.base),
        count,
        offset,
    ))
}

fn auditor(g: &Guard) -> Result<(), ApiError> {
    if g.principal.can(Capability::ReadAuditTrail) {
        Ok(())
    } else {
        Err(forbidden(
            "The audit trail is for auditors and the privacy officer",
        ))
    }
}

/// `GET AuditEvent[?date=…&patient=Patient/x&_count&_offset]`, `GET AuditEvent/{id}` and
/// `GET AuditEvent/$verify`: the trail for auditors.
pub fn audit_events(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("audit");
    auditor(g)?;
    g.may("AuditEvent", Perms::READ)?;
    engine.audit.flush(std::time::Duration::from_secs(2));
    match req.segments.get(1).map(String::as_str) {
        Some("$verify") => verify_trail(engine),
        Some(id) => {
            let (part, seq) = hutong_audit::event::parse_id(id)
                .ok_or_else(|| ApiError::not_found(format!("AuditEvent/{id} is not known")))?;
            let row = engine
                .store
                .audit_row(part, seq)?
                .ok_or_else(|| ApiError::not_found(format!("AuditEvent/{id} is not known")))?;
            let e = hutong_audit::Entry::parse(&row.entry).ok_or_else(|| {
                ApiError::new(500, IssueCode::Exception, "The audit entry cannot be read")
            })?;
            Ok(Resp::json(
                200,
                hutong_audit::event::to_audit_event(part, seq, &e),
            ))
        }
        None => {
            let (count, offset, since, until) = paging(req)?;
            let mut shards: Option<Vec<i64>> = None;
            for (k, v) in &req.query {
                if k == "patient" {
                    let id = v.strip_prefix("Patient/").unwrap_or(v);
                    shards
                        .get_or_insert_with(Vec::new)
                        .push(hutong_store::shard_of(id));
                }
            }
            let (rows, total) =
                engine
                    .store
                    .audit_about(shards.as_deref(), since, until, count, offset)?;
            Ok(audit_bundle(
                req,
                rows,
                total,
                &format!("{}/AuditEvent", req.base),
                count,
                offset,
            ))
        }
    }
}

/// Verifies the audit trail with the keyring's public keys.
pub fn verify_report(engine: &Engine) -> Result<hutong_audit::verify::Report, ApiError> {
    let keys = engine.access.keys.clone();
    let check = move |kid: &str, msg: &[u8], sig: &[u8]| {
        let k = keys.read().unwrap_or_else(|e| e.into_inner());
        k.signing_key(kid).is_some_and(|key| {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.public())
                .verify(msg, sig)
                .is_ok()
        })
    };
    Ok(hutong_audit::verify::verify(&engine.store, &check)?)
}

/// Signs a checkpoint of every partition that moved.
pub fn checkpoint(engine: &Engine) -> Result<usize, ApiError> {
    checkpoint_store(&engine.store, &engine.access.keys)
}

/// [`checkpoint`] on a store and keyring (commands that open no engine).
pub fn checkpoint_store(
    store: &hutong_store::Store,
    keys: &std::sync::Arc<std::sync::RwLock<hutong_access::Keyring>>,
) -> Result<usize, ApiError> {
    let keys = keys.clone();
    let sign = move |msg: &[u8]| {
        let k = keys.read().unwrap_or_else(|e| e.into_inner());
        let key = k.signing();
        (key.kid.clone(), key.pair.sign(msg).as_ref().to_vec())
    };
    Ok(hutong_audit::checkpoint::run(store, &sign)?)
}

fn verify_trail(engine: &Engine) -> Result<Resp, ApiError> {
    let r = verify_report(engine)?;
    let mut params = vec![
        json!({"name": "intact", "valueBoolean": r.intact()}),
        json!({"name": "entries", "valueInteger": r.entries}),
        json!({"name": "partitions", "valueInteger": r.partitions}),
        json!({"name": "checkpoints", "valueInteger": r.checkpoints}),
        json!({"name": "unsigned", "valueInteger": r.unsigned}),
    ];
    for p in &r.problems {
        params.push(json!({"name": "problem", "valueString": p.to_string()}));
    }
    Ok(Resp::json(
        200,
        json!({"resourceType": "Parameters", "parameter": params}),
    ))
}
