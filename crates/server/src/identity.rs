//! The person API: link management (`Person/{id}/$link`, `$unlink`, `$merge`, `$split`, review
//! decisions `Task/{id}/$decide`), the person's record (`Person/{id}/$everything`, `$summary`)
//! and the identifier cross-reference (`Patient/$ihe-pix`, IHE PIXm).
//!
//! Every change names who made it and why (`author`, `reason`): both are required, and both
//! land in the Provenance written with the new Person versions.

use std::collections::{BTreeMap, HashSet};

use hutong_fhir::index::{extract_kind, IndexValue};
use hutong_store::search::Everything;
use hutong_store::{Query, Stored};
use serde_json::{json, Value};

use hutong_access::principal::{Capability, Kind};
use hutong_store::{Lookup, Scope};

use crate::engine::Engine;
use crate::error::ApiError;
use crate::error::Code;
use crate::guard::Guard;
use crate::wire::check_id;
use crate::wire::Paging;
use crate::wire::Params;
use crate::wire::{Body, BundleWriter, Req, Resp};
use hutong_link::persons::{review_pair, Registry};

/// Link management is for identity stewards (and the platform itself).
fn steward(g: &Guard, op: &str) -> Result<(), ApiError> {
    g.act(op.trim_start_matches('$'));
    if g.principal.can(Capability::ManageIdentity) {
        Ok(())
    } else {
        Err(ApiError::of(
            Code::Forbidden,
            format!("{op} is for identity stewards"),
        ))
    }
}

/// Who a change is recorded as: the signed-in steward; the platform's own clients may name
/// the person they act for (`author`).
fn author(g: &Guard, p: &Params) -> String {
    let me = g
        .principal
        .name
        .clone()
        .map(|n| format!("{n} ({})", g.principal.subject))
        .unwrap_or_else(|| g.principal.subject.clone());
    match (g.principal.kind, p.string("author")) {
        (Kind::Platform, Some(a)) => a,
        _ => me,
    }
}

/// Runs a registry change; a refused change is a 422 with the reason.
fn change<T>(
    engine: &Engine,
    g: &Guard,
    f: impl FnOnce(&mut Registry, &dyn hutong_link::matching::Candidates) -> Result<T, String>,
) -> Result<T, ApiError> {
    let mut entry = g.entry();
    entry.outcome = 200;
    let r = engine.matcher.change(&engine.store, &entry, f)?;
    g.committed();
    r.map_err(|msg| {
        let code = if msg.ends_with("is not known") {
            Code::NotFound
        } else {
            Code::Unprocessable
        };
        ApiError::of(code, msg)
    })
}

/// The current versions of the persons a change touched, as a Parameters resource.
fn persons_out(engine: &Engine, g: &Guard, ids: &[String]) -> Result<Resp, ApiError> {
    let mut params = Vec::new();
    for id in ids {
        if let Some(s) = engine.store.read("Person", id, &g.scope)?.found() {
            let v: Value = serde_json::from_slice(&g.release(&s)).unwrap_or(Value::Null);
            params.push(json!({"name": "person", "resource": v}));
        }
    }
    Ok(Resp::json(
        200,
        json!({"resourceType": "Parameters", "parameter": params}),
    ))
}

pub fn link(engine: &Engine, req: &Req, g: &Guard, person: &str) -> Result<Resp, ApiError> {
    check_id(person)?;
    steward(g, "$link")?;
    let p = Params::parse(req, "$link")?;
    let author = author(g, &p);
    let reason = p.required("reason", "$link")?;
    let patients = p.refs("patient", "Patient")?;
    let [patient] = patients.as_slice() else {
        return Err(ApiError::bad_request("$link needs exactly one 'patient'"));
    };
    let force = p.boolean("force");
    let patient = format!("Patient/{patient}");
    let left = change(engine, g, |reg, index| {
        let before = reg.person_of(&patient).map(String::from);
        reg.link(index, person, &patient, &author, &reason, force)?;
        Ok(before)
    })?;
    let mut ids = vec![person.to_string()];
    ids.extend(left.filter(|l| l != person));
    persons_out(engine, g, &ids)
}

pub fn unlink(engine: &Engine, req: &Req, g: &Guard, person: &str) -> Result<Resp, ApiError> {
    check_id(person)?;
    steward(g, "$unlink")?;
    let p = Params::parse(req, "$unlink")?;
    let author = author(g, &p);
    let reason = p.required("reason", "$unlink")?;
    let patients = p.refs("patient", "Patient")?;
    let [patient] = patients.as_slice() else {
        return Err(ApiError::bad_request("$unlink needs exactly one 'patient'"));
    };
    let patient = format!("Patient/{patient}");
    let new = change(engine, g, |reg, _| {
        reg.unlink(person, &patient, &author, &reason)
    })?;
    persons_out(engine, g, &[person.to_string(), new])
}

pub fn merge(engine: &Engine, req: &Req, g: &Guard, person: &str) -> Result<Resp, ApiError> {
    check_id(person)?;
    steward(g, "$merge")?;
    let p = Params::parse(req, "$merge")?;
    let author = author(g, &p);
    let reason = p.required("reason", "$merge")?;
    let sources = p.refs("source", "Person")?;
    let [source] = sources.as_slice() else {
        return Err(ApiError::bad_request(
            "$merge needs exactly one 'source' Person",
        ));
    };
    change(engine, g, |reg, _| {
        reg.merge(person, source, &author, &reason)
    })?;
    persons_out(engine, g, &[person.to_string(), source.clone()])
}

pub fn split(engine: &Engine, req: &Req, g: &Guard, person: &str) -> Result<Resp, ApiError> {
    check_id(person)?;
    steward(g, "$split")?;
    let p = Params::parse(req, "$split")?;
    let author = author(g, &p);
    let reason = p.required("reason", "$split")?;
    let patients: Vec<String> = p
        .refs("patient", "Patient")?
        .into_iter()
        .map(|id| format!("Patient/{id}"))
        .collect();
    let into = p.refs("into", "Person")?.into_iter().next();
    let new = change(engine, g, |reg, _| {
        reg.split(person, &patients, into.as_deref(), &author, &reason)
    })?;
    persons_out(engine, g, &[person.to_string(), new])
}

/// `Task/{id}/$decide`: a reviewer's decision on a possible duplicate — `same` merges the two
/// persons, `different` keeps them apart for good (and separates them if they were together).
pub fn decide(engine: &Engine, req: &Req, g: &Guard, task: &str) -> Result<Resp, ApiError> {
    check_id(task)?;
    steward(g, "$decide")?;
    let p = Params::parse(req, "$decide")?;
    let author = author(g, &p);
    let reason = p.required("reason", "$decide")?;
    let decision = p.required("decision", "$decide")?;
    let same = match decision.as_str() {
        "same" => true,
        "different" => false,
        d => {
            return Err(ApiError::bad_request(format!(
                "decision must be 'same' or 'different', not '{d}'"
            )))
        }
    };
    let stored = engine
        .store
        .read("Task", task, &Scope::All)?
        .found()
        .filter(|s| !s.deleted)
        .ok_or_else(|| ApiError::not_found(format!("Task/{task} is not known")))?;
    let mut t = stored.json()?;
    if !hutong_link::persons::is_review_task(&t) {
        return Err(ApiError::bad_request(format!(
            "Task/{task} is not a match review"
        )));
    }
    if t["status"] != "requested" {
        return Err(ApiError::of(
            Code::Conflict,
            format!("Task/{task} was already decided ({})", t["status"]),
        ));
    }
    let (Some(a), Some(b)) = review_pair(&t) else {
        return Err(ApiError::bad_request(format!(
            "Task/{task} does not name two patients"
        )));
    };
    let why = format!("review Task/{task}: {reason}");
    change(engine, g, |reg, _| reg.decide(&a, &b, same, &author, &why))?;
    t["status"] = json!("completed");
    t["lastModified"] = json!(hutong_fhir::date::format_instant(
        hutong_fhir::date::now_ms()
    ));
    t["owner"] = json!({"display": author});
    t["note"] = json!([{"authorString": author, "text": reason}]);
    t["output"] = json!([{"type": {"text": "decision"}, "valueCode": decision}]);
    let s = g.write(engine, |tx| {
        Ok(hutong_link::persons::write_task(tx, task, t.clone())?)
    })?;
    Ok(Resp::json(200, s.json()?))
}

/// Every resource of every Patient linked to the person that the reader may see, once each.
pub(crate) fn person_resources(
    engine: &Engine,
    g: &Guard,
    person: &str,
    filter: &Everything,
) -> Result<(Stored, Vec<Stored>), ApiError> {
    g.on_behalf_of(person);
    let me = match engine.store.read("Person", person, &g.scope)? {
        Lookup::Found(s) if !s.deleted => s,
        Lookup::Hidden => return Err(g.hidden(&format!("Person/{person}"))),
        _ => return Err(ApiError::not_found(format!("Person/{person} is not known"))),
    };
    let patients = engine.matcher.patients_of(&engine.store, person)?;
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut out = Vec::new();
    for p in patients {
        let mut e = filter.clone();
        e.patient = p.trim_start_matches("Patient/").to_string();
        e.count = 5_000;
        e.offset = 0;
        loop {
            let page = engine.store.everything(&e, &g.scope)?;
            let n = page.matches.len();
            for s in page.matches {
                if s.rtype != "Person" && seen.insert((s.rtype.clone(), s.id.clone())) {
                    out.push(s);
                }
            }
            if !page.has_more || n == 0 {
                break;
            }
            e.offset += n;
        }
    }
    Ok((me, out))
}

/// The clinical time of a resource: the earliest of its date search values (the patient's
/// birth for a Patient), else none.
fn clinical_time(s: &Stored, v: &Value) -> Option<i64> {
    extract_kind(&s.rtype, v, hutong_fhir::ParamType::Date)
        .into_iter()
        .filter_map(|e| match e.value {
            IndexValue::Date(r) if e.param != "death-date" => Some(r.lo),
            _ => None,
        })
        .min()
}

fn everything_filter(req: &Req) -> Result<(Everything, usize, usize), ApiError> {
    let mut e = Everything::default();
    let Paging { count, offset } = Paging::parse(&req.query, (100, 5000))?;
    let date = |k: &str, v: &str| {
        hutong_fhir::date::parse(v)
            .ok_or_else(|| ApiError::bad_request(format!("Invalid {k} '{v}'")))
    };
    for (k, v) in &req.query {
        match k.as_str() {
            "start" => e.start = Some(date(k, v)?.lo),
            "end" => e.end = Some(date(k, v)?.hi),
            "_since" => e.since = Some(date(k, v)?.lo),
            "_type" => {
                for t in v.split(',') {
                    if !hutong_fhir::Definitions::get().is_resource_type(t) {
                        return Err(ApiError::bad_request(format!(
                            "Unknown type '{t}' in _type"
                        )));
                    }
                    e.types.push(t.to_string());
                }
            }
            _ => {}
        }
    }
    Ok((e, count, offset))
}

/// `Person/{id}/$everything`: the person first, then every linked Patient's resources from
/// every institution in chronological order (clinical time; undated ones last, by
/// collection), each with its own `meta.source` and collection time.
pub fn everything(engine: &Engine, req: &Req, g: &Guard, person: &str) -> Result<Resp, ApiError> {
    check_id(person)?;
    g.act("everything");
    let (filter, count, offset) = everything_filter(req)?;
    // `_sort=-date`: newest first (a timeline's first page), undated ones still last.
    let newest_first = match req
        .query
        .iter()
        .find(|(k, _)| k == "_sort")
        .map(|(_, v)| v.as_str())
    {
        None | Some("date") => false,
        Some("-date") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "$everything sorts by date or -date, not '{other}'"
            )))
        }
    };
    let (me, all) = person_resources(engine, g, person, &filter)?;
    let times = engine.store.clinical_times(&all)?;
    let mut keyed: Vec<(Option<i64>, i64, Stored)> = all
        .into_iter()
        .zip(times)
        .map(|(s, t)| (t, s.last_updated, s))
        .collect();
    keyed.sort_by(|a, b| {
        (a.0.is_none(), a.0, a.1, &a.2.rtype, &a.2.id).cmp(&(
            b.0.is_none(),
            b.0,
            b.1,
            &b.2.rtype,
            &b.2.id,
        ))
    });
    if newest_first {
        let undated = keyed
            .iter()
            .position(|k| k.0.is_none())
            .unwrap_or(keyed.len());
        keyed[..undated].reverse();
    }
    let total = keyed.len() as u64 + 1;
    let path = format!("{}/Person/{person}/$everything", req.base);
    let qs = |off: usize| crate::wire::page_link(&path, &req.query, count, off);
    let mut links = vec![("self", qs(offset))];
    if offset + count < total as usize {
        links.push(("next", qs(offset + count)));
    }
    if offset > 0 {
        links.push(("previous", qs(offset.saturating_sub(count))));
    }
    let mut w = BundleWriter::new("searchset", Some(total), &links);
    let everything = std::iter::once(&me).chain(keyed.iter().map(|k| &k.2));
    for s in everything.skip(offset).take(count) {
        w.entry(
            json!({"fullUrl": format!("{}/{}/{}", req.base, s.rtype, s.id), "search": {"mode": "match"}}),
            Some(g.release(s).as_ref()),
        );
    }
    Ok(Resp {
        status: 200,
        headers: Vec::new(),
        body: Body::Raw(w.finish()),
    })
}

fn code_of(v: &Value, field: &str) -> Option<String> {
    v[field]["coding"].as_array()?.iter().find_map(|c| {
        Some(format!(
            "{}|{}",
            c["system"].as_str().unwrap_or(""),
            c["code"].as_str()?
        ))
    })
}

fn status_code(v: &Value, field: &str) -> Option<String> {
    v[field]["coding"]
        .as_array()?
        .iter()
        .find_map(|c| c["code"].as_str().map(String::from))
}

/// `Person/{id}/$summary`: what a clinician needs first, across every institution — active
/// problems, allergies, current medications, the last result of each test, vaccinations and
/// recent encounters — as a Bundle whose Composition lists each section (sections follow the
/// International Patient Summary).
pub fn summary(engine: &Engine, req: &Req, g: &Guard, person: &str) -> Result<Resp, ApiError> {
    check_id(person)?;
    g.act("summary");
    let (_, all) = person_resources(engine, g, person, &Everything::default())?;
    let mut items: Vec<(Option<i64>, Value, Stored)> = Vec::new();
    for s in all {
        let v = s.json()?;
        items.push((clinical_time(&s, &v), v, s));
    }
    // Newest first within each section.
    items.sort_by(|a, b| b.0.cmp(&a.0).then(b.2.last_updated.cmp(&a.2.last_updated)));
    let mut problems = Vec::new();
    let mut allergies = Vec::new();
    let mut medications = Vec::new();
    let mut results: BTreeMap<String, usize> = BTreeMap::new();
    let mut vaccinations = Vec::new();
    let mut encounters = Vec::new();
    for (i, (_, v, s)) in items.iter().enumerate() {
        let verification = status_code(v, "verificationStatus");
        if matches!(
            verification.as_deref(),
            Some("entered-in-error" | "refuted")
        ) {
            continue;
        }
        let clinical = status_code(v, "clinicalStatus");
        let status = v["status"].as_str().unwrap_or("");
        match s.rtype.as_str() {
            "Condition"
                if matches!(
                    clinical.as_deref(),
                    Some("active" | "recurrence" | "relapse")
                ) =>
            {
                problems.push(i)
            }
            "AllergyIntolerance"
                if !matches!(clinical.as_deref(), Some("inactive" | "resolved")) =>
            {
                allergies.push(i)
            }
            "MedicationRequest" | "MedicationStatement" if status == "active" => {
                medications.push(i)
            }
            "Observation" if !matches!(status, "entered-in-error" | "cancelled") => {
                if let Some(c) = code_of(v, "code") {
                    results.entry(c).or_insert(i);
                }
            }
            "Immunization" if status == "completed" => vaccinations.push(i),
            "Encounter" if encounters.len() < 10 && status != "entered-in-error" => {
                encounters.push(i)
            }
            _ => {}
        }
    }
    let mut results: Vec<usize> = results.into_values().collect();
    results.sort_unstable();
    let sections = [
        (
            "Active problems",
            "11450-4",
            "Problem list - Reported",
            problems,
        ),
        (
            "Allergies and intolerances",
            "48765-2",
            "Allergies and adverse reactions Document",
            allergies,
        ),
        (
            "Current medications",
            "10160-0",
            "History of Medication use Narrative",
            medications,
        ),
        (
            "Last results",
            "30954-2",
            "Relevant diagnostic tests/laboratory data Narrative",
            results,
        ),
        (
            "Vaccinations",
            "11369-6",
            "History of Immunization Narrative",
            vaccinations,
        ),
        (
            "Recent encounters",
            "46240-8",
            "History of Hospitalizations+Outpatient visits Narrative",
            encounters,
        ),
    ];
    let mut included: Vec<usize> = Vec::new();
    let section_json: Vec<Value> = sections
        .iter()
        .map(|(title, code, display, idx)| {
            included.extend(idx);
            let mut sec = json!({
                "title": title,
                "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
                "entry": idx.iter().map(|i| json!({"reference": format!("{}/{}", items[*i].2.rtype, items[*i].2.id)})).collect::<Vec<_>>()
            });
            if idx.is_empty() {
                sec["emptyReason"] = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/list-empty-reason", "code": "unavailable"}]});
            }
            sec
        })
        .collect();
    let now = hutong_fhir::date::format_instant(hutong_fhir::date::now_ms());
    let composition = json!({
        "resourceType": "Composition",
        "status": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "60591-5", "display": "Patient summary Document"}]},
        "subject": {"reference": format!("Person/{person}")},
        "date": now,
        "author": [{"display": "Hutong"}],
        "title": "Person summary across institutions",
        "section": section_json
    });
    let mut w = BundleWriter::new("collection", None, &[]);
    let comp = serde_json::to_vec(&composition)
        .map_err(|e| ApiError::of(Code::Internal, e.to_string()))?;
    w.entry(json!({}), Some(&comp));
    included.sort_unstable();
    included.dedup();
    for i in included {
        let s = &items[i].2;
        w.entry(
            json!({"fullUrl": format!("{}/{}/{}", req.base, s.rtype, s.id)}),
            Some(g.release(s).as_ref()),
        );
    }
    Ok(Resp {
        status: 200,
        headers: Vec::new(),
        body: Body::Raw(w.finish()),
    })
}

/// `Patient/$ihe-pix` (IHE PIXm): given one institution's identifier, the identifiers and
/// Patients that every other institution holds for the same person.
pub fn pix(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("pix");
    g.may("Patient", hutong_access::Perms::SEARCH)?;
    let mut source = None;
    let mut targets: Vec<String> = Vec::new();
    for (k, v) in &req.query {
        match k.as_str() {
            "sourceIdentifier" => source = Some(v.clone()),
            "targetSystem" => targets.extend(v.split(',').map(String::from)),
            "_format" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "$ihe-pix does not take '{other}'"
                )))
            }
        }
    }
    let source = source.ok_or_else(|| {
        ApiError::of(
            Code::Required,
            "$ihe-pix needs sourceIdentifier=system|value",
        )
    })?;
    if !source.contains('|') || source.ends_with('|') {
        return Err(ApiError::bad_request(
            "sourceIdentifier must be system|value",
        ));
    }
    let q = Query::parse(
        "Patient",
        &[("identifier".to_string(), source.clone())],
        true,
    )?;
    let found = engine.store.search(&q, &g.scope)?;
    if found.matches.is_empty() {
        return Err(ApiError::not_found(format!(
            "No Patient has the identifier {source}"
        )));
    }
    let sources: Vec<String> = found
        .matches
        .iter()
        .map(|s| format!("Patient/{}", s.id))
        .collect();
    let source_refs: Vec<&str> = sources.iter().map(String::as_str).collect();
    let (persons, linked) = engine
        .matcher
        .view_of(&engine.store, &[], &source_refs, |reg| {
            let mut persons = Vec::new();
            let mut linked = Vec::new();
            for s in &sources {
                if let Some(p) = reg.person_of(s) {
                    if !persons.contains(&p.to_string()) {
                        persons.push(p.to_string());
                        linked.extend(reg.patients(p));
                    }
                }
            }
            (persons, linked)
        })?;
    let mut params = Vec::new();
    let mut seen = HashSet::new();
    for p in &linked {
        let id = p.trim_start_matches("Patient/");
        // Only the cross-references the reader is authorized to see.
        let Some(s) = engine
            .store
            .read("Patient", id, &g.scope)?
            .found()
            .filter(|s| !s.deleted)
        else {
            continue;
        };
        let v: Value = serde_json::from_slice(&g.release(&s)).unwrap_or(Value::Null);
        let mut any = false;
        for i in v["identifier"].as_array().into_iter().flatten() {
            let sys = i["system"].as_str().unwrap_or("");
            let key = format!("{sys}|{}", i["value"].as_str().unwrap_or(""));
            if key == source || (!targets.is_empty() && !targets.iter().any(|t| t == sys)) {
                continue;
            }
            any = true;
            if seen.insert(key) {
                params.push(json!({"name": "targetIdentifier", "valueIdentifier": {"system": sys, "value": i["value"]}}));
            }
        }
        if any || targets.is_empty() {
            params.push(json!({"name": "targetId", "valueReference": {"reference": p}}));
        }
    }
    for p in persons {
        // The person itself only for those who may read it.
        if engine.store.read("Person", &p, &g.scope)?.found().is_some() {
            params.push(
                json!({"name": "targetId", "valueReference": {"reference": format!("Person/{p}")}}),
            );
        }
    }
    Ok(Resp::json(
        200,
        json!({"resourceType": "Parameters", "parameter": params}),
    ))
}
