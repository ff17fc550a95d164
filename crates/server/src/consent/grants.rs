//! Access grants as the resident and the requester see them: finding a person before any
//! authorization, access requests (SMS code or app approval) with their throttles, the
//! resident's decisions (approve, deny, revoke, standing grants, proxies, restricted items).

use crate::consent::acts_for;
use crate::consent::auth_error;
use crate::consent::consent_resp;
use crate::consent::first_patient;
use crate::consent::grant_of;
use crate::consent::institution_name;
use crate::consent::institution_of_org;
use crate::consent::patients_of;
use crate::consent::person_json;
use crate::consent::phone_of;
use crate::consent::save;
use crate::consent::unprocessable;
use crate::engine::Engine;
use crate::error::Code;
use crate::error::{forbidden, ApiError};
use crate::guard::Guard;
use crate::wire::{check_id, Params};
use crate::wire::{Body, BundleWriter, Req, Resp};
use hutong_access::grants::{Grant, Grantee, Method, Status};
use hutong_access::principal::{Capability, Kind};
use hutong_access::{AuthError, View};
use hutong_fhir::date::now_ms;
use hutong_fhir::security;
use hutong_store::{Lookup, Query, Scope};
use serde_json::json;
use std::collections::BTreeSet;

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
        AuthError::Locked(until) => ApiError::of(
            Code::Throttled,
            format!("Too many access requests {what}: try again after {until}"),
        ),
        other => auth_error(other),
    }
}

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
            return Err(ApiError::of(Code::Required,
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
    let v = ask(
        engine,
        g,
        &Ask {
            person,
            grantee: &inst,
            method,
            categories: cats,
            duration,
            reason: p.string("reason"),
            purpose: None,
        },
    )?;
    Ok(consent_resp(201, req, v))
}

/// A request for a resident's consent to open their record to an institution.
pub(crate) struct Ask<'a> {
    pub person: &'a str,
    /// The institution the grant would open the record to.
    pub grantee: &'a str,
    pub method: Method,
    pub categories: u32,
    pub duration: i64,
    pub reason: Option<String>,
    /// What the request is for, as the resident's message opens (a referral says so); by
    /// default the grantee asks for itself.
    pub purpose: Option<String>,
}

/// Asks the resident (a code by SMS, or a request in the app) and records the proposed
/// grant; returns its Consent. The limits on requests apply whoever asks.
pub(crate) fn ask(engine: &Engine, g: &Guard, a: &Ask<'_>) -> Result<serde_json::Value, ApiError> {
    let (person, inst, method, cats, duration) = (
        a.person,
        a.grantee.to_string(),
        a.method,
        a.categories,
        a.duration,
    );
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
        return Err(ApiError::of(Code::Throttled,
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
        reason: a.reason.clone(),
        recorded: now,
    };
    let who = name.unwrap_or(inst.clone());
    // The message says who asks, for what and for how long: the resident decides on that.
    let asker = match (&a.purpose, &g.principal.kind, &g.principal.name) {
        (Some(p), _, _) => p.clone(),
        (None, Kind::Clinician, Some(n)) => format!("{who}{n}医生请求调阅您的健康档案"),
        (None, _, _) => format!("{who}请求调阅您的健康档案"),
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
                "【互通】{asker}：{what}。验证码{code}，5分钟内有效。同意才告知医生；如非本人就诊，请勿告知他人。"
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
            let text = format!("【互通】{asker}：{what}。请在互通 App 中查看并批准或拒绝。");
            engine
                .access
                .accounts
                .send("app", &format!("Person/{person}"), &text)
                .map_err(auth_error)?;
        }
    }
    Ok(v)
}

/// `Consent/{id}/$verify-code`: the clinician enters the code the resident read out; the
/// grant becomes active for the hours asked. Wrong codes count; five lock the request.
pub fn verify_code(engine: &Engine, req: &Req, g: &Guard, id: &str) -> Result<Resp, ApiError> {
    g.act("grant");
    let mut grant = grant_of(engine, id)?;
    g.on_behalf_of(&grant.person);
    // The institution that asked enters the code: the grantee asking for itself, or the
    // referring institution that asked for the one it refers to (the requester's label
    // ends with its institution).
    let mine = g.principal.institution.as_deref();
    let asked = grant
        .requested_by
        .as_deref()
        .and_then(|l| l.rsplit_once('@'))
        .map(|(_, i)| i);
    if mine.map(|i| Grantee::Institution(i.to_string())) != Some(grant.grantee.clone())
        && (mine.is_none() || asked != mine)
    {
        return Err(forbidden(
            "Only the institution that asked may enter the code",
        ));
    }
    if grant.method != Method::Sms || grant.status != Status::Proposed {
        return Err(ApiError::of(
            Code::Conflict,
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
        return Err(ApiError::of(
            Code::Conflict,
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
        return Err(ApiError::of(
            Code::Conflict,
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
