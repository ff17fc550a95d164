//! Across the region (跨地区调阅): a clinician reads a resident's whole record — what every
//! node forwarded up — through the top of the hierarchy, with the resident's consent.
//!
//! 1. At the clinician's own node, `GET Person/{id}/$regional-record`: the node's access
//!    decision must already let the clinician read the person there *under a consent the
//!    resident gave* (an SMS code, the app, a standing authorization…); the node sends the
//!    resident's ID number, the clinician and that consent up as `Patient/$regional-record`,
//!    under its own node credentials, with a trace id.
//! 2. Each node on the way records the relay in its own audit trail (the same trace id) and
//!    passes it up; the top node finds the person by the ID number (its identity registry
//!    links the Patients every node sent) and answers `Person/$everything` as a read by that
//!    clinician under that consent alone ([`Guard::vouched`]): its own decision (sensitive
//!    categories the consent does not open stay closed, restricted records stay hidden), its
//!    own release (identity masked as for any other institution's clinician), its own audit
//!    entry naming the clinician, the consent, the route and the trace.
//!
//! The trace id links the entries of every node's trail.

use std::sync::Arc;

use hutong_access::principal::{Kind, Principal, Scopes};
use hutong_access::{Grant, Grantee, Method, Status};
use hutong_fhir::date::now_ms;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::error::{forbidden, ApiError, Code};
use crate::guard::Guard;
use crate::wire::{check_id, Req, Resp};

/// The consent a node vouches for, as it travels.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Vouched {
    /// The Consent's id at the node that recorded it.
    id: String,
    method: String,
    categories: u32,
    start: i64,
    end: Option<i64>,
    requested_by: Option<String>,
}

/// How long a vouched consent can open a record at most, whatever its own end: the request
/// is answered now.
const VOUCHED_MS: i64 = 3_600_000;

/// `GET [base]/Person/{id}/$regional-record` at the clinician's own node.
pub(crate) fn ask(engine: &Engine, req: &Req, g: &Guard, person: &str) -> Result<Resp, ApiError> {
    g.act("regional-record");
    check_id(person)?;
    let p = &g.principal;
    let inst = match (p.kind, &p.institution) {
        (Kind::Clinician, Some(i)) => i.clone(),
        _ => {
            return Err(forbidden(
                "A regional record is read by a clinician for their institution, under the resident's consent",
            ))
        }
    };
    let Some(node) = engine.hub.node().filter(|n| n.upstream.is_some()) else {
        return Err(ApiError::of(
            Code::BusinessRule,
            "This platform has no upstream: a regional record is read through the hierarchy (serve --upstream)",
        ));
    };
    let now = now_ms();
    let grant = engine
        .access
        .grants
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .in_force_for(&Grantee::Institution(inst), now)
        .into_iter()
        .find(|gr| gr.person == person && gr.method != Method::BreakGlass)
        .cloned();
    let Some(grant) = grant else {
        return Err(forbidden(format!(
            "No consent of the resident for your institution is in force: ask for it first (Person/{person}/$request-access)"
        )));
    };
    let id_number = national_id(engine, person)?.ok_or_else(|| {
        ApiError::of(
            Code::BusinessRule,
            "The resident's ID number is not on record here: the region finds a person by it",
        )
    })?;
    let trace = uuid::Uuid::new_v4().to_string();
    let vouched = Vouched {
        id: grant.id.clone(),
        method: grant.method.as_str().to_string(),
        categories: grant.categories,
        start: grant.start,
        end: grant.end,
        requested_by: grant.requested_by.clone(),
    };
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "identifier", "valueIdentifier": {"system": hutong_fhir::vocab::ID_SYSTEM, "value": id_number}},
        {"name": "on-behalf-of", "valueString": serde_json::to_string(&**p).unwrap_or_default()},
        {"name": "consent", "valueString": serde_json::to_string(&vouched).unwrap_or_default()},
        {"name": "trace", "valueString": trace},
        {"name": "route", "valueString": node.id}
    ]});
    g.touch(format!("Person/{person}"), 0);
    g.note(format!(
        "trace {trace}; consent Consent/{} asked of the region",
        grant.id
    ));
    relay(engine, &params, &req.query)
}

/// The resident ID number on the person's Patients here.
fn national_id(engine: &Engine, person: &str) -> Result<Option<String>, ApiError> {
    for p in engine.matcher.patients_of(&engine.store, person)? {
        let Some(s) = engine
            .store
            .read(
                "Patient",
                p.trim_start_matches("Patient/"),
                &hutong_store::Scope::All,
            )?
            .found()
        else {
            continue;
        };
        let v = s.json()?;
        let found = v["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["system"] == hutong_fhir::vocab::ID_SYSTEM)
            .and_then(|i| i["value"].as_str().map(String::from));
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Sends the request to this node's upstream and answers with what it said.
fn relay(engine: &Engine, params: &Value, query: &[(String, String)]) -> Result<Resp, ApiError> {
    let node = engine
        .hub
        .node()
        .cloned()
        .ok_or_else(|| ApiError::of(Code::BusinessRule, "This platform is not a node"))?;
    let up = node
        .upstream
        .clone()
        .ok_or_else(|| ApiError::of(Code::BusinessRule, "This node has no upstream"))?;
    let e = engine.clone();
    let body = params.clone();
    let query = query.to_vec();
    let url = format!("{}/Patient/$regional-record", up.url);
    // The engine runs requests on blocking threads of the runtime: its handle reaches the
    // upstream from here.
    let answer = tokio::runtime::Handle::current().block_on(async move {
        let (token, _) = crate::exchange::upward::token(&e, &node).await?;
        let r = e
            .hub
            .client()
            .post(&url)
            .query(&query)
            .bearer_auth(token)
            .header("Content-Type", "application/fhir+json")
            .json(&body)
            .timeout(std::time::Duration::from_secs(60))
            .send()
            .await
            .map_err(|err| format!("the upstream did not answer: {err}"))?;
        let status = r.status().as_u16();
        let v: Value = r
            .json()
            .await
            .map_err(|err| format!("the upstream's answer is not JSON: {err}"))?;
        Ok::<_, String>((status, v))
    });
    match answer {
        Ok((status, v)) => Ok(Resp::json(status, v)),
        Err(msg) => Err(ApiError::of(
            Code::BadGateway,
            format!("The regional record could not be read: {msg}"),
        )),
    }
}

/// `POST [base]/Patient/$regional-record`: a node below asks on behalf of its clinician.
/// Relayed up while there is an upstream; answered at the top.
pub(crate) fn answer(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("regional-record-relay");
    if g.principal.kind != Kind::Platform {
        return Err(forbidden(
            "Only a node of the hierarchy asks for a regional record on a clinician's behalf",
        ));
    }
    let params = crate::wire::Params::parse(req, "$regional-record")?;
    let trace = params.required("trace", "$regional-record")?;
    let route = format!(
        "{},{}",
        params.required("route", "$regional-record")?,
        g.principal.subject
    );
    let on_behalf = params.required("on-behalf-of", "$regional-record")?;
    let clinician: Principal = serde_json::from_str(&on_behalf).map_err(|e| {
        ApiError::bad_request(format!("on-behalf-of is not a principal: {e}"))
            .with_expression("Parameters.parameter[on-behalf-of]")
    })?;
    let consent: Vouched = serde_json::from_str(&params.required("consent", "$regional-record")?)
        .map_err(|e| {
        ApiError::bad_request(format!("consent is not a vouched consent: {e}"))
            .with_expression("Parameters.parameter[consent]")
    })?;
    let identifier = params
        .all("identifier")
        .find_map(|p| {
            let i = &p["valueIdentifier"];
            Some(format!(
                "{}|{}",
                i["system"].as_str()?,
                i["value"].as_str()?
            ))
        })
        .ok_or_else(|| {
            ApiError::of(
                Code::Required,
                "$regional-record needs the resident's identifier (valueIdentifier)",
            )
        })?;
    g.note(format!(
        "trace {trace}; for {} through {route}",
        clinician.label()
    ));
    if engine.hub.node().is_some_and(|n| n.upstream.is_some()) {
        let mut up =
            serde_json::to_value(params.all("identifier").cloned().collect::<Vec<Value>>())
                .unwrap_or_default();
        let list = up.as_array_mut().expect("an array");
        list.push(json!({"name": "on-behalf-of", "valueString": on_behalf}));
        list.push(json!({"name": "consent", "valueString": serde_json::to_string(&consent).unwrap_or_default()}));
        list.push(json!({"name": "trace", "valueString": trace}));
        list.push(json!({"name": "route", "valueString": route}));
        let body = json!({"resourceType": "Parameters", "parameter": up});
        return relay(engine, &body, &req.query);
    }
    // The top: the clinician is who the node says, reading only, for their institution.
    let inst = match (clinician.kind, &clinician.institution) {
        (Kind::Clinician, Some(i)) => i.clone(),
        _ => {
            return Err(forbidden(
                "A regional record is read on behalf of a clinician of an institution",
            ))
        }
    };
    let reader = Principal {
        scopes: Scopes::parse("user/*.rs"),
        roles: Vec::new(),
        person: None,
        booking: false,
        ..clinician
    };
    let q = engine
        .store
        .parse_query("Patient", &[("identifier".to_string(), identifier)], true)
        .map_err(ApiError::from)?;
    let found = engine.store.search(&q, &hutong_store::Scope::All)?;
    let mut person = None;
    for p in &found.matches {
        if let Some(x) = engine
            .matcher
            .person_of(&engine.store, &format!("Patient/{}", p.id))?
        {
            person = Some((x, p.id.clone()));
            break;
        }
    }
    let Some((person, patient)) = person else {
        return Err(ApiError::not_found(
            "No record of this resident has reached the region",
        ));
    };
    let now = now_ms();
    let origin = route.split(',').next().unwrap_or("").to_string();
    let grant = Grant {
        id: format!("{}@{origin}", consent.id),
        person: person.clone(),
        patient,
        grantee: Grantee::Institution(inst),
        grantee_name: None,
        method: Method::parse(&consent.method).unwrap_or(Method::Sms),
        status: Status::Active,
        categories: consent.categories,
        start: consent.start,
        end: Some(consent.end.unwrap_or(i64::MAX).min(now + VOUCHED_MS)),
        requested_by: consent.requested_by.clone(),
        reason: Some(format!("vouched for by node {origin}; trace {trace}")),
        recorded: now,
    };
    let label = reader.label();
    let g2 = Guard::vouched(
        engine,
        Arc::new(reader.clone()),
        grant,
        req.from.clone(),
        format!("regional record of Person/{person} for {label} (trace {trace})"),
    );
    let sub = Req {
        method: "GET".into(),
        segments: vec!["Person".into(), person.clone(), "$everything".into()],
        query: req.query.clone(),
        headers: Default::default(),
        body: Vec::new(),
        base: req.base.clone(),
        source: String::new(),
        import_key: None,
        principal: Arc::new(reader),
        reason: None,
        from: req.from.clone(),
    };
    let r = crate::identity::everything(engine, &sub, &g2, &person);
    g2.act("regional-record");
    g2.note(format!(
        "trace {trace}; through {route}; consent Consent/{} recorded at node {origin}",
        consent.id
    ));
    match &r {
        Ok(resp) => g2.finish(engine, resp.status, None),
        Err(e) => g2.finish(engine, e.status, Some(e.message().to_string())),
    }
    r
}
