//! The slot pool's operations, as IHE ITI Scheduling defines them for FHIR R4:
//! `Appointment/$find` (ITI-115: free slots as proposed Appointments, paged),
//! `Appointment/$hold` (ITI-116: a slot held for a short time) and `Appointment/$book`
//! (ITI-117: book a held or proposed appointment; with an existing Appointment's id, change
//! or cancel it). Booking writes the Appointment through the engine's one write path; the
//! slot changes hands in the same transaction, in [`super::index::written`].

use std::borrow::Cow;
use std::collections::HashMap;

use hutong_access::principal::{Kind, Perms};
use hutong_fhir::date::{format_instant, now_ms};
use hutong_store::sql::Val;
use hutong_store::{Scope, Stored};
use serde_json::{json, Value};

use super::index::{is_primary_care, local_id, HOLD_UNTIL_URL};
use crate::engine::write::Submission;
use crate::engine::Engine;
use crate::error::{ApiError, Code};
use crate::guard::Guard;
use crate::wire::{parse_json, Paging, Req, Resp};

/// The extension on a proposed Appointment naming the institution whose slot it is.
pub const INSTITUTION_URL: &str = "https://hutong.dev/fhir/StructureDefinition/institution";

/// The extension marking a proposed Appointment in the family doctors' share, with the time
/// it returns to the public pool.
pub const RESERVED_URL: &str = "https://hutong.dev/fhir/StructureDefinition/family-doctor-share";

/// The source recorded for Appointments the platform writes for residents.
pub const POOL_SOURCE: &str = "urn:hutong:platform:slot-pool";

/// `$find`'s default page and the most it returns at once.
const PAGE: (usize, usize) = (20, 100);

/// The operation's input as name–value pairs, from the query string (GET) or a
/// `Parameters` body (POST): dateTimes, strings and codes as written, references as
/// `Type/id`, tokens as `system|code` or `code`.
fn inputs(req: &Req) -> Result<Vec<(String, String)>, ApiError> {
    if req.method != "POST" || req.body.is_empty() {
        return Ok(req.query.clone());
    }
    let body = parse_json(&req.body)?;
    if body["resourceType"] != "Parameters" {
        return Err(ApiError::bad_request("$find takes a Parameters resource")
            .with_expression("resourceType"));
    }
    let mut out: Vec<(String, String)> = req
        .query
        .iter()
        .filter(|(k, _)| k.starts_with('_'))
        .cloned()
        .collect();
    for p in body["parameter"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("").to_string();
        let value = [
            "valueDateTime",
            "valueDate",
            "valueInstant",
            "valueString",
            "valueCode",
            "valueUri",
        ]
        .iter()
        .find_map(|k| p[*k].as_str().map(String::from))
        .or_else(|| p["valueReference"]["reference"].as_str().map(String::from))
        .or_else(|| p["valueInteger"].as_i64().map(|n| n.to_string()))
        .or_else(|| {
            let c = p["valueCoding"]
                .as_object()
                .map(|_| &p["valueCoding"])
                .or_else(|| {
                    p["valueCodeableConcept"]["coding"]
                        .as_array()
                        .and_then(|a| a.first())
                })?;
            c["code"].as_str().map(String::from)
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!("Parameter '{name}' has no value $find reads"))
                .with_expression(format!("Parameters.parameter.where(name='{name}')"))
        })?;
        out.push((name, value));
    }
    Ok(out)
}

fn instant(pairs: &[(String, String)], name: &str) -> Result<i64, ApiError> {
    let v = pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| {
            ApiError::of(
                Code::Required,
                format!("$find needs the parameter '{name}'"),
            )
            .with_expression(name.to_string())
        })?;
    hutong_fhir::date::parse(v)
        .map(|r| if name == "end" { r.hi } else { r.lo })
        .ok_or_else(|| {
            ApiError::of(
                Code::Value,
                format!("'{v}' is not a FHIR date or dateTime (parameter '{name}')"),
            )
            .with_expression(name.to_string())
        })
}

/// The ids a reference parameter names (`Organization/x` or `x`).
fn ids<'a>(pairs: &'a [(String, String)], name: &'a str, t: &'a str) -> Vec<String> {
    pairs
        .iter()
        .filter(|(k, _)| k == name)
        .flat_map(|(_, v)| v.split(','))
        .map(|v| {
            v.strip_prefix(t)
                .and_then(|r| r.strip_prefix('/'))
                .unwrap_or(v)
        })
        .filter(|v| !v.is_empty())
        .map(String::from)
        .collect()
}

/// Whether the principal may see the family doctors' share before its release: the
/// platform, and the clinicians and systems of primary-care institutions (who book from it
/// on their referrals).
fn sees_reserve(engine: &Engine, g: &Guard) -> Result<bool, ApiError> {
    Ok(match g.principal.kind {
        Kind::Platform => true,
        Kind::System | Kind::Clinician => match g.principal.institution.as_deref() {
            Some(i) => is_primary_care(engine, i)?,
            None => false,
        },
        _ => false,
    })
}

/// `Appointment/$find`: the free slots in `[start, end)` that fit the filters — specialty,
/// organization, practitioner, district (name or GB/T 2260 code), service-type — earliest
/// first, as proposed Appointments in a searchset Bundle with the total and paging links.
/// A slot held for someone else, booked, closed, or in the family doctors' share before its
/// release (unless the caller books from the share) is not offered.
pub(crate) fn find(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("find-slots");
    g.may("Slot", Perms::SEARCH)?;
    let pairs = inputs(req)?;
    let start = instant(&pairs, "start")?;
    let end = instant(&pairs, "end")?;
    if end <= start {
        return Err(
            ApiError::of(Code::Value, "$find's end must be after its start").with_expression("end"),
        );
    }
    let paging = Paging::parse(&pairs, PAGE)?;
    let now = now_ms();
    let mut cond = String::from(
        "start_ms >= ? AND start_ms < ? AND (state = 'free' OR (state = 'held' AND until_ms <= ?))",
    );
    let mut params = vec![Val::Int(start), Val::Int(end), Val::Int(now)];
    let mut any_of = |col: &str, vals: Vec<String>, cond: &mut String| {
        if vals.is_empty() {
            return;
        }
        cond.push_str(&format!(
            " AND {col} IN ({})",
            vec!["?"; vals.len()].join(", ")
        ));
        params.extend(vals.into_iter().map(Val::Text));
    };
    let tokens = |name: &str| -> Vec<String> {
        pairs
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(|v| v.rsplit('|').next().unwrap_or(v).to_string())
            .filter(|v| !v.is_empty())
            .collect()
    };
    any_of("specialty", tokens("specialty"), &mut cond);
    any_of("service", tokens("service-type"), &mut cond);
    any_of(
        "org",
        ids(&pairs, "organization", "Organization"),
        &mut cond,
    );
    any_of(
        "practitioner",
        ids(&pairs, "practitioner", "Practitioner"),
        &mut cond,
    );
    let districts: Vec<String> = tokens("district")
        .into_iter()
        .map(|d| {
            d.parse::<u32>()
                .ok()
                .and_then(hutong_cn::division::name)
                .map_or(d, String::from)
        })
        .collect();
    any_of("district", districts, &mut cond);
    let reserve_open = sees_reserve(engine, g)?;
    if !reserve_open {
        cond.push_str(" AND (reserved = 0 OR start_ms <= ?)");
        params.push(Val::Int(now + engine.config.pool.release_ms));
    }
    let total = engine
        .store
        .query_admin(
            &format!("SELECT COUNT(*) FROM co_slot WHERE {cond}"),
            &params,
        )?
        .first()
        .map_or(0, |r| r[0].int());
    let mut page_params = params.clone();
    page_params.push(Val::Int(paging.count as i64));
    page_params.push(Val::Int(paging.offset as i64));
    let rows = engine.store.query_admin(
        &format!(
            "SELECT slot, schedule, org, specialty, service, start_ms, end_ms, reserved FROM co_slot WHERE {cond} ORDER BY start_ms, slot LIMIT ? OFFSET ?"
        ),
        &page_params,
    )?;
    let mut schedules: HashMap<String, Option<Value>> = HashMap::new();
    let mut entries = Vec::with_capacity(rows.len());
    for r in &rows {
        let schedule = r[1].text();
        if !schedules.contains_key(schedule) {
            let s = engine
                .store
                .read("Schedule", schedule, &Scope::All)?
                .found()
                .filter(|s| !s.deleted)
                .map(|s| s.json())
                .transpose()?;
            schedules.insert(schedule.to_string(), s);
        }
        let sched = schedules.get(schedule).and_then(Option::as_ref);
        let mut participant: Vec<Value> = sched
            .and_then(|s| s["actor"].as_array())
            .into_iter()
            .flatten()
            .filter(|a| local_id(a, "Organization").is_none())
            .map(|a| json!({"actor": a, "required": "required", "status": "needs-action"}))
            .collect();
        if let Some(p) = pairs.iter().find(|(k, _)| k == "patient") {
            participant.push(json!({"actor": {"reference": p.1}, "required": "required", "status": "needs-action"}));
        }
        let mut ext = vec![];
        if !r[2].text().is_empty() {
            let display = sched
                .and_then(|s| s["actor"].as_array())
                .into_iter()
                .flatten()
                .find(|a| local_id(a, "Organization").is_some())
                .and_then(|a| a["display"].as_str());
            let mut reference = json!({"reference": format!("Organization/{}", r[2].text())});
            if let Some(d) = display {
                reference["display"] = json!(d);
            }
            ext.push(json!({"url": INSTITUTION_URL, "valueReference": reference}));
        }
        // Marked while it is still the family doctors' (released, it is anyone's slot).
        if r[7].int() != 0 && engine.config.pool.release_at(r[5].int()) > now {
            ext.push(json!({"url": RESERVED_URL, "valueDateTime": format_instant(engine.config.pool.release_at(r[5].int()))}));
        }
        let mut a = json!({
            "resourceType": "Appointment",
            "status": "proposed",
            "start": format_instant(r[5].int()),
            "end": format_instant(r[6].int()),
            "slot": [{"reference": format!("Slot/{}", r[0].text())}],
            "participant": participant,
        });
        if !ext.is_empty() {
            a["extension"] = json!(ext);
        }
        if let Some(s) = sched {
            for k in ["serviceType", "specialty"] {
                if s[k].is_array() {
                    a[k] = s[k].clone();
                }
            }
        }
        entries.push(json!({"resource": a, "search": {"mode": "match"}}));
    }
    g.note(format!("{} of {total} free slots", entries.len()));
    let link = |offset: usize| {
        let mut q: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| k != "_offset" && k != "_count")
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    crate::wire::percent_encode(k),
                    crate::wire::percent_encode(v)
                )
            })
            .collect();
        q.push(format!("_count={}&_offset={offset}", paging.count));
        format!("{}/Appointment/$find?{}", req.base, q.join("&"))
    };
    let mut links = vec![json!({"relation": "self", "url": link(paging.offset)})];
    if paging.offset + rows.len() < total as usize {
        links.push(json!({"relation": "next", "url": link(paging.offset + paging.count)}));
    }
    if paging.offset > 0 {
        links.push(json!({"relation": "previous", "url": link(paging.offset.saturating_sub(paging.count))}));
    }
    Ok(Resp::json(
        200,
        json!({"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries}),
    ))
}

/// The Appointment a `$hold` or `$book` names: `appointment-resource` (the proposed one
/// `$find` returned, with the patient added; with an id, a change to a stored one) or
/// `appointment-reference` (a stored one, held or proposed).
fn named_appointment(
    engine: &Engine,
    req: &Req,
    g: &Guard,
    op: &str,
) -> Result<(Value, Option<Stored>), ApiError> {
    let params = crate::wire::Params::parse(req, op)?;
    if let Some(p) = params.all("appointment-resource").next() {
        let a = p["resource"].clone();
        if a["resourceType"] != "Appointment" {
            return Err(ApiError::bad_request(format!(
                "{op}'s appointment-resource must be an Appointment"
            ))
            .with_expression("Parameters.parameter.where(name='appointment-resource').resource"));
        }
        let existing = match a["id"].as_str() {
            Some(id) => stored_appointment(engine, g, id)?,
            None => None,
        };
        return Ok((a, existing));
    }
    let Some(id) = params.refs("appointment-reference", "Appointment")?.pop() else {
        return Err(ApiError::of(
            Code::Required,
            format!("{op} needs an appointment-resource or an appointment-reference"),
        )
        .with_expression("Parameters.parameter"));
    };
    let s = stored_appointment(engine, g, &id)?
        .ok_or_else(|| ApiError::not_found(format!("Appointment/{id} is not known")))?;
    Ok((s.json()?, Some(s)))
}

/// A stored Appointment the caller may read (one they may not is as unknown).
fn stored_appointment(engine: &Engine, g: &Guard, id: &str) -> Result<Option<Stored>, ApiError> {
    match engine.store.read("Appointment", id, &g.scope)?.found() {
        Some(s) if !s.deleted => Ok(Some(s)),
        _ => Ok(None),
    }
}

/// The one Patient the appointment is for, which the caller must be allowed to book for: a
/// resident their own record or one they are proxy for; an institution a patient whose
/// record it may read; the platform anyone.
fn patient_of(engine: &Engine, g: &Guard, a: &Value) -> Result<String, ApiError> {
    let patients: Vec<&str> = a["participant"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| local_id(&p["actor"], "Patient"))
        .collect();
    let [patient] = patients.as_slice() else {
        return Err(ApiError::of(
            Code::Required,
            "The appointment needs exactly one participant that is a Patient (Patient/id)",
        )
        .with_expression("Appointment.participant.actor"));
    };
    if g.principal.kind == Kind::Operator {
        return Err(ApiError::of(
            Code::Forbidden,
            "Operators do not book appointments; residents, their proxies and institutions do",
        ));
    }
    match engine.store.read("Patient", patient, &g.scope)?.found() {
        Some(p) if !p.deleted => Ok(patient.to_string()),
        _ => Err(g.hidden(&format!("Patient/{patient}"))),
    }
}

/// Holds (`pending`) or books the appointment: the slots it names must be pooled ones, its
/// times are theirs, and it is written through the engine's write path by the caller (an
/// institution) or by the platform for the caller (a resident, a proxy).
fn take(
    engine: &Engine,
    req: &Req,
    g: &Guard,
    op: &str,
    mut a: Value,
    existing: Option<Stored>,
    status: &str,
) -> Result<Stored, ApiError> {
    let patient = patient_of(engine, g, &a)?;
    if let Some(e) = &existing {
        let before = e.json()?;
        if patient_of(engine, g, &before).ok().as_deref() != Some(patient.as_str()) {
            return Err(ApiError::of(
                Code::Conflict,
                format!("Appointment/{} is for another patient", e.id),
            )
            .with_expression("Appointment.participant"));
        }
    }
    let slots: Vec<String> = a["slot"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| local_id(r, "Slot").map(String::from))
        .collect();
    if status != "cancelled" {
        if slots.is_empty() {
            return Err(ApiError::of(
                Code::Required,
                format!("{op} needs the slot to take (Appointment.slot, as $find returned it)"),
            )
            .with_expression("Appointment.slot"));
        }
        let mut lo = i64::MAX;
        let mut hi = i64::MIN;
        for s in &slots {
            let r = engine.store.query_admin(
                "SELECT start_ms, end_ms FROM co_slot WHERE slot = ?",
                &[Val::Text(s.clone())],
            )?;
            let Some(r) = r.first() else {
                return Err(
                    ApiError::not_found(format!("Slot/{s} is not in the slot pool"))
                        .with_expression("Appointment.slot"),
                );
            };
            lo = lo.min(r[0].int());
            hi = hi.max(r[1].int());
        }
        a["start"] = json!(format_instant(lo));
        a["end"] = json!(format_instant(hi));
    }
    a["status"] = json!(status);
    let now = now_ms();
    let mut ext: Vec<Value> = a["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["url"] != HOLD_UNTIL_URL && e["url"] != RESERVED_URL)
        .cloned()
        .collect();
    if status == "pending" {
        ext.push(json!({"url": HOLD_UNTIL_URL, "valueInstant": format_instant(now + engine.config.pool.hold_ms)}));
    }
    if ext.is_empty() {
        if let Some(o) = a.as_object_mut() {
            o.remove("extension");
        }
    } else {
        a["extension"] = json!(ext);
    }
    if a["created"].is_null() {
        a["created"] = json!(format_instant(now));
    }
    for p in a["participant"].as_array_mut().into_iter().flatten() {
        if local_id(&p["actor"], "Patient").is_some() {
            p["status"] = json!("accepted");
        }
    }
    if let Some(o) = a.as_object_mut() {
        o.remove("meta");
        match &existing {
            Some(e) => {
                o.insert("id".into(), json!(e.id));
            }
            None => {
                o.remove("id");
            }
        }
    }
    // A resident (or proxy) books through the platform, which writes for them: residents
    // write no resources themselves. The platform's entry names whom it acted for.
    let platform_guard;
    let (writer, source) = match g.principal.kind {
        Kind::System | Kind::Clinician => (g, g.principal.institution.clone().unwrap_or_default()),
        _ => {
            platform_guard = Guard::platform(engine, "slot-pool", op.trim_start_matches('$'));
            if let Some(person) = g.principal.person.as_deref() {
                platform_guard.on_behalf_of(person);
            }
            platform_guard.note(format!("{op} by {}", g.principal.label()));
            let source = match &existing {
                Some(e) if !e.source.is_empty() => e.source.clone(),
                _ => POOL_SOURCE.to_string(),
            };
            (&platform_guard, source)
        }
    };
    engine.intake(&mut a, &source, now);
    crate::wire::check_resource(&a, "Appointment", a["id"].as_str())?;
    let (found, fp) = engine.govern(req, writer, &a)?;
    let sub = Submission {
        findings: &found,
        fingerprint: &fp,
    };
    let written = writer.write(engine, |tx| match &existing {
        Some(e) => Ok(engine
            .update_in(
                tx,
                writer,
                &source,
                "Appointment",
                &e.id,
                a.clone(),
                &sub,
                Some(e.version),
            )?
            .0),
        None => Ok(engine
            .create_in(
                tx,
                writer,
                &source,
                "Appointment",
                None,
                Cow::Borrowed(&a),
                None,
                &sub,
                None,
            )?
            .0),
    });
    if !std::ptr::eq(writer, g) {
        writer.finish(engine, if written.is_ok() { 200 } else { 409 }, None);
    }
    let s = written?;
    g.touch(format!("Appointment/{}", s.id), s.shard);
    if status == "booked" || status == "cancelled" {
        crate::consent::appointments::visit_grant(engine, &g.principal.label(), &s)?;
    }
    Ok(s)
}

/// The Appointment as the caller receives it (through the guard, which records it).
fn released(g: &Guard, s: &Stored) -> Result<Value, ApiError> {
    serde_json::from_slice(&g.release(s)).map_err(|e| {
        ApiError::of(
            Code::Internal,
            format!("a stored Appointment is not JSON: {e}"),
        )
    })
}

/// `Appointment/$hold`: the slot held for this appointment for the pool's hold time (the
/// Appointment is stored `pending`, with the time in its `hold-until` extension); nobody
/// else can hold or book it until then. Returns the Appointment.
pub(crate) fn hold(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("hold");
    let (a, existing) = named_appointment(engine, req, g, "$hold")?;
    if let Some(e) = &existing {
        let st = e.json()?["status"].as_str().unwrap_or("").to_string();
        if st != "proposed" && st != "pending" {
            return Err(ApiError::of(
                Code::Conflict,
                format!(
                    "Appointment/{} is {st}: only a proposed or held appointment is held",
                    e.id
                ),
            ));
        }
    }
    let s = take(engine, req, g, "$hold", a, existing, "pending")?;
    Ok(Resp::json(200, released(g, &s)?))
}

/// `Appointment/$book`: books a held or proposed appointment (its slot must still be free,
/// or held for it); with the id of a stored Appointment and status `cancelled`, cancels it
/// (its slot returns to the pool); with other slots, moves it there. Returns a searchset
/// Bundle holding the booked Appointment, as ITI-117 says.
pub(crate) fn book(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("book");
    let (a, existing) = named_appointment(engine, req, g, "$book")?;
    let asked = a["status"].as_str().unwrap_or("");
    let status = match asked {
        "cancelled" if existing.is_some() => "cancelled",
        "cancelled" => {
            return Err(ApiError::of(
                Code::NotFound,
                "Only a stored Appointment (give its id) can be cancelled",
            )
            .with_expression("Appointment.id"))
        }
        "" | "proposed" | "pending" | "booked" => "booked",
        other => {
            return Err(ApiError::of(
                Code::Value,
                format!("$book books (status proposed, pending or booked) or cancels (cancelled) an appointment, not '{other}'"),
            )
            .with_expression("Appointment.status"))
        }
    };
    let s = take(engine, req, g, "$book", a, existing, status)?;
    let body: Value = released(g, &s)?;
    Ok(Resp::json(
        200,
        json!({"resourceType": "Bundle", "type": "searchset", "total": 1, "entry": [{
            "fullUrl": format!("{}/Appointment/{}", req.base, s.id),
            "resource": body,
            "search": {"mode": "match"}
        }]}),
    ))
}
