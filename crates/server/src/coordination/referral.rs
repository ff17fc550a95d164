//! Two-way referral (双向转诊) on the platform: a `ServiceRequest` (category referral) from
//! the referring institution, its `Task` carrying the lifecycle (`Task.businessStatus` is the
//! state of [`hutong_coordination::referral`]), a letter (`Composition`: the problems,
//! medications, allergies and recent results the referrer may see), and the resident's
//! consent, asked as any grant is (SMS code or approval in the app) for the receiving
//! institution and the referral's window. Until the resident consents the receiver sees
//! nothing; a refusal cancels the referral.
//!
//! - `POST ServiceRequest/$refer`: refer a patient up or down.
//! - `POST Task/{id}/$referral`: `accept`, `reject` (with a reason), `schedule` (with the
//!   booked Appointment), `complete` (with the receiver's Encounter), `cancel`.
//! - `GET $referrals?box=in|out`: the institution's inbox and outbox; overdue ones (not
//!   accepted in time) are escalated by the sweep.
//!
//! The Task and ServiceRequest are the referrer's submissions; the Task changes only through
//! these operations ([`super::index::is_referral_task`]), written by the platform for whoever
//! acted, each change audited.

use std::borrow::Cow;

use hutong_access::grants::{Grant, Method, Status};
use hutong_access::principal::{Kind, Perms};
use hutong_coordination::referral::{next, Action, Side, State};
use hutong_fhir::date::{format_instant, now_ms};
use hutong_store::sql::Val;
use hutong_store::{Query, Scope, Tx};
use serde_json::{json, Value};

use super::index::local_id;
use crate::consent::grants::{ask, Ask};
use crate::engine::write::Submission;
use crate::engine::Engine;
use crate::error::{ApiError, Code};
use crate::guard::Guard;
use crate::wire::{Params, Req, Resp};

/// SNOMED CT 3457005 "Patient referral": the ServiceRequest's category.
pub const REFERRAL_CATEGORY: (&str, &str) = ("http://snomed.info/sct", "3457005");

/// The Task code of a referral, and the system of its direction and state.
pub const REFERRAL_CS: &str = "https://hutong.dev/fhir/CodeSystem/referral";

/// The extension giving a referral's direction (`up`, `down`).
pub const DIRECTION_URL: &str = "https://hutong.dev/fhir/StructureDefinition/referral-direction";

const ROW: &str = "task, request, grant_id, referrer, receiver, receiver_org, person, patient, direction, state, created, due, escalated, opened";

/// A referral as its row says.
#[derive(Debug, Clone)]
struct Row {
    task: String,
    request: String,
    grant: String,
    referrer: String,
    receiver: String,
    person: String,
    patient: String,
    direction: String,
    state: State,
    due: i64,
    escalated: i64,
    /// When the resident consented (0: never): from then on the receiver knows of it.
    opened: i64,
}

fn to_row(r: &hutong_store::sql::Row) -> Row {
    Row {
        task: r[0].text().into(),
        request: r[1].text().into(),
        grant: r[2].text().into(),
        referrer: r[3].text().into(),
        receiver: r[4].text().into(),
        person: r[6].text().into(),
        patient: r[7].text().into(),
        direction: r[8].text().into(),
        state: State::parse(r[9].text()).unwrap_or(State::Cancelled),
        due: r[11].int(),
        escalated: r[12].int(),
        opened: r[13].int(),
    }
}

fn direction_zh(d: &str) -> &'static str {
    if d == "down" {
        "下转"
    } else {
        "上转"
    }
}

/// The Task of a referral in `state`, from its current JSON: status, business status, the
/// reason for a rejection or cancellation, and outputs.
fn with_state(mut t: Value, state: State, reason: Option<&str>, now: i64) -> Value {
    t["status"] = json!(state.task_status());
    t["businessStatus"] = json!({"coding": [{"system": REFERRAL_CS, "code": state.as_str()}], "text": state_zh(state)});
    t["lastModified"] = json!(format_instant(now));
    if let Some(r) = reason {
        t["statusReason"] = json!({"text": r});
    }
    t
}

fn state_zh(s: State) -> &'static str {
    match s {
        State::AwaitingConsent => "待居民同意",
        State::Requested => "待接收",
        State::Accepted => "已接收",
        State::Scheduled => "已预约",
        State::Completed => "已完成",
        State::Rejected => "已拒绝",
        State::Cancelled => "已取消",
    }
}

/// Moves the referral's Task and row to `to`, in `tx`.
fn move_to(
    tx: &mut Tx<'_>,
    row: &Row,
    to: State,
    reason: Option<&str>,
    output: Option<(&str, Value)>,
    now: i64,
) -> Result<(), ApiError> {
    let Some(cur) = tx.read("Task", &row.task)? else {
        return Err(ApiError::of(
            Code::Internal,
            format!("the Task of referral {} is missing", row.task),
        ));
    };
    let mut t = with_state(cur.json()?, to, reason, now);
    if let Some((kind, reference)) = output {
        let mut outs = t["output"].as_array().cloned().unwrap_or_default();
        outs.push(json!({"type": {"coding": [{"system": REFERRAL_CS, "code": kind}]}, "valueReference": reference}));
        t["output"] = json!(outs);
    }
    tx.update("Task", &row.task, t, Some(cur.version))?;
    tx.conn().exec(
        "UPDATE co_referral SET state = ?, updated = ? WHERE task = ?",
        &[
            Val::Text(to.as_str().into()),
            Val::Int(now),
            Val::Text(row.task.clone()),
        ],
    )?;
    if row.state == State::AwaitingConsent && to == State::Requested {
        tx.conn().exec(
            "UPDATE co_referral SET opened = ? WHERE task = ?",
            &[Val::Int(now), Val::Text(row.task.clone())],
        )?;
    }
    Ok(())
}

/// The grant hook: a referral waiting for consent opens when its grant becomes active, and
/// ends when the resident refuses (or withdraws before the receiver took it on).
pub(crate) fn grant_changed(
    engine: &Engine,
    tx: &mut Tx<'_>,
    grant: &Grant,
) -> Result<(), ApiError> {
    let _ = engine;
    let rows = tx.conn().query(
        &format!("SELECT {ROW} FROM co_referral WHERE grant_id = ?"),
        &[Val::Text(grant.id.clone())],
    )?;
    let Some(row) = rows.first().map(to_row) else {
        return Ok(());
    };
    let action = match grant.status {
        Status::Active => Action::ConsentGiven,
        Status::Rejected | Status::Inactive => Action::ConsentRefused,
        _ => return Ok(()),
    };
    if let Ok(to) = next(row.state, action, Side::Resident) {
        let why = (action == Action::ConsentRefused)
            .then_some("居民未同意或撤回授权 The resident did not consent");
        move_to(tx, &row, to, why, None, now_ms())?;
    }
    Ok(())
}

fn referral_of(engine: &Engine, task: &str) -> Result<Option<Row>, ApiError> {
    Ok(engine
        .store
        .query_admin(
            &format!("SELECT {ROW} FROM co_referral WHERE task = ?"),
            &[Val::Text(task.into())],
        )?
        .first()
        .map(to_row))
}

/// The letter: what the receiver needs (active problems, allergies, current medications,
/// the latest results), as the referrer may see it — nothing the referrer may not read
/// goes into a letter it signs.
fn letter(
    engine: &Engine,
    g: &Guard,
    patients: &[String],
    patient: &str,
    reason: &str,
) -> Result<Value, ApiError> {
    let mut sections = Vec::new();
    for (title, zh, code, t, filter) in [
        (
            "Active problems",
            "现患疾病",
            "11450-4",
            "Condition",
            vec![("clinical-status", "active")],
        ),
        (
            "Allergies and intolerances",
            "过敏史",
            "48765-2",
            "AllergyIntolerance",
            vec![],
        ),
        (
            "Current medications",
            "当前用药",
            "10160-0",
            "MedicationRequest",
            vec![("status", "active")],
        ),
        (
            "Last results",
            "近期检查检验结果",
            "30954-2",
            "Observation",
            vec![("category", "laboratory")],
        ),
    ] {
        let mut q: Vec<(String, String)> = vec![
            ("patient".into(), patients.join(",")),
            ("_count".into(), "20".into()),
            ("_sort".into(), "-_lastUpdated".into()),
        ];
        q.extend(filter.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let page = engine.store.search(&Query::parse(t, &q, true)?, &g.scope)?;
        let mut entries = Vec::new();
        let mut lines = Vec::new();
        for s in &page.matches {
            g.touch(
                format!("{}/{}/_history/{}", s.rtype, s.id, s.version),
                s.shard,
            );
            let v = s.json()?;
            let what = v["code"]["text"]
                .as_str()
                .or(v["code"]["coding"][0]["display"].as_str())
                .or(v["medicationCodeableConcept"]["text"].as_str())
                .or(v["medicationCodeableConcept"]["coding"][0]["display"].as_str())
                .or(v["code"]["coding"][0]["code"].as_str())
                .unwrap_or("")
                .to_string();
            let value = match (
                &v["valueQuantity"]["value"],
                v["valueQuantity"]["unit"].as_str(),
            ) {
                (Value::Number(n), Some(u)) => format!(" {n} {u}"),
                _ => String::new(),
            };
            lines.push(format!(
                "<li>{}{}</li>",
                html_escape(&what),
                html_escape(&value)
            ));
            entries.push(json!({"reference": format!("{}/{}", s.rtype, s.id)}));
        }
        let mut sec = json!({
            "title": format!("{zh} {title}"),
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "text": {"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><ul>{}</ul></div>", lines.join(""))},
            "entry": entries
        });
        if lines.is_empty() {
            sec["text"]["div"] =
                json!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>无 None recorded</p></div>");
            sec.as_object_mut().map(|o| o.remove("entry"));
            sec["emptyReason"] = json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/list-empty-reason", "code": "nilknown"}]});
        }
        sections.push(sec);
    }
    Ok(json!({
        "resourceType": "Composition",
        "status": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "57133-1", "display": "Referral note"}], "text": "转诊单"},
        "subject": {"reference": format!("Patient/{patient}")},
        "date": format_instant(now_ms()),
        "author": [{"display": g.principal.name.clone().unwrap_or_else(|| g.principal.label())}],
        "title": format!("转诊单 Referral: {reason}"),
        "section": sections
    }))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// `POST ServiceRequest/$refer`.
pub(crate) fn refer(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("refer");
    let Some(referrer) = g
        .principal
        .institution
        .clone()
        .filter(|_| matches!(g.principal.kind, Kind::Clinician | Kind::System))
    else {
        return Err(ApiError::of(
            Code::Forbidden,
            "Referrals are made by an institution's clinicians or systems",
        ));
    };
    g.may("ServiceRequest", Perms::CREATE)?;
    let p = Params::parse(req, "$refer")?;
    let [patient] = p.refs("patient", "Patient")?.try_into().map_err(|_| {
        ApiError::of(Code::Required, "$refer needs one 'patient' (Patient/id)")
            .with_expression("Parameters.parameter.where(name='patient')")
    })?;
    let [org] = p
        .refs("performer", "Organization")?
        .try_into()
        .map_err(|_| {
            ApiError::of(
                Code::Required,
                "$refer needs one 'performer': the receiving institution (Organization/id)",
            )
            .with_expression("Parameters.parameter.where(name='performer')")
        })?;
    let direction = p.required("direction", "$refer")?;
    if direction != "up" && direction != "down" {
        return Err(ApiError::of(
            Code::Value,
            format!(
                "direction is 'up' (to a hospital) or 'down' (to primary care), not '{direction}'"
            ),
        )
        .with_expression("Parameters.parameter.where(name='direction')"));
    }
    let reason = p.required("reason", "$refer")?;
    let method = match p.string("method").as_deref() {
        None | Some("sms") => Method::Sms,
        Some("app") => Method::App,
        Some(m) => {
            return Err(
                ApiError::of(Code::Value, format!("method is 'sms' or 'app', not '{m}'"))
                    .with_expression("Parameters.parameter.where(name='method')"),
            )
        }
    };
    let days = match p.all("days").next().map(|x| &x["valueInteger"]) {
        None => 30,
        Some(v) => v
            .as_i64()
            .filter(|d| (1..=180).contains(d))
            .ok_or_else(|| {
                ApiError::of(Code::Value, "days is a whole number from 1 to 180")
                    .with_expression("Parameters.parameter.where(name='days')")
            })?,
    };
    match engine.store.read("Patient", &patient, &g.scope)?.found() {
        Some(s) if !s.deleted => {}
        _ => return Err(g.hidden(&format!("Patient/{patient}"))),
    }
    let receiver_org = engine
        .store
        .read("Organization", &org, &Scope::All)?
        .found()
        .filter(|s| !s.deleted)
        .ok_or_else(|| {
            ApiError::not_found(format!("Organization/{org} is not known"))
                .with_expression("Parameters.parameter.where(name='performer')")
        })?
        .json()?;
    let receiver = crate::consent::institution_of_org(&receiver_org).ok_or_else(|| {
        ApiError::of(
            Code::Unprocessable,
            format!(
                "Organization/{org} has no unified social credit code: it cannot receive referrals"
            ),
        )
    })?;
    if receiver == referrer {
        return Err(ApiError::of(
            Code::Unprocessable,
            "A referral goes to another institution",
        ));
    }
    engine.matcher.sync(&engine.store)?;
    let person = engine
        .matcher
        .person_of(&engine.store, &format!("Patient/{patient}"))?
        .ok_or_else(|| {
            ApiError::of(
                Code::Unprocessable,
                format!("Patient/{patient} is not yet linked to a person: try again in a moment"),
            )
        })?;
    let patients = crate::consent::patients_of(engine, &person)?;
    let now = now_ms();
    let window = days * 86_400_000;
    let referrer_name =
        crate::consent::institution_name(engine, &referrer).unwrap_or_else(|| referrer.clone());
    let receiver_name = receiver_org["name"].as_str().unwrap_or(&org).to_string();
    // The resident's consent first: it is what most often cannot be had (no phone on
    // record, too many requests), and nothing is written without it being asked.
    let consent = ask(
        engine,
        g,
        &Ask {
            person: &person,
            grantee: &receiver,
            method,
            categories: 0,
            duration: window,
            reason: Some(format!("转诊 referral: {reason}")),
            purpose: Some(format!(
                "{referrer_name}为您办理{}至{receiver_name}（{reason}），接诊机构需调阅您的健康档案",
                direction_zh(&direction)
            )),
        },
    )?;
    let grant_id = consent["id"].as_str().unwrap_or_default().to_string();
    let mut letter = letter(engine, g, &patients, &patient, &reason)?;
    // Filed as the referrer's submissions, as any of its writes are.
    engine.intake(&mut letter, &referrer, now);
    let sub = Submission {
        findings: &[],
        fingerprint: "",
    };
    let written = g.write(engine, |tx| {
        let (composition, _) = engine.create_in(tx, g, &referrer, "Composition", None, Cow::Borrowed(&letter), None, &sub, None)?;
        let sr = json!({
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "category": [{"coding": [{"system": REFERRAL_CATEGORY.0, "code": REFERRAL_CATEGORY.1, "display": "Patient referral"}], "text": "转诊"}],
            "code": {"coding": [{"system": REFERRAL_CS, "code": direction.clone()}], "text": format!("{}转诊", direction_zh(&direction))},
            "extension": [{"url": DIRECTION_URL, "valueCode": direction.clone()}],
            "subject": {"reference": format!("Patient/{patient}")},
            "authoredOn": format_instant(now),
            "requester": {"display": g.principal.name.clone().unwrap_or_else(|| referrer_name.clone())},
            "performer": [{"reference": format!("Organization/{org}"), "display": receiver_name.clone()}],
            "reasonCode": [{"text": reason.clone()}],
            "occurrencePeriod": {"start": format_instant(now), "end": format_instant(now + window)},
            "supportingInfo": [{"reference": format!("Composition/{}", composition.id), "display": "转诊单"}]
        });
        let mut sr = sr;
        engine.intake(&mut sr, &referrer, now);
        let (request, _) = engine.create_in(tx, g, &referrer, "ServiceRequest", None, Cow::Borrowed(&sr), None, &sub, None)?;
        let task = with_state(
            json!({
                "resourceType": "Task",
                "intent": "order",
                "priority": "routine",
                "code": {"coding": [{"system": REFERRAL_CS, "code": "referral", "display": "转诊"}]},
                "focus": {"reference": format!("ServiceRequest/{}", request.id)},
                "for": {"reference": format!("Patient/{patient}")},
                "authoredOn": format_instant(now),
                "requester": {"display": referrer_name.clone()},
                "owner": {"reference": format!("Organization/{org}"), "display": receiver_name.clone()},
                "restriction": {"period": {"start": format_instant(now), "end": format_instant(now + window)}},
                "input": [{"type": {"text": "reason"}, "valueString": reason.clone()},
                          {"type": {"text": "consent"}, "valueReference": {"reference": format!("Consent/{grant_id}")}}],
                "extension": [{"url": DIRECTION_URL, "valueCode": direction.clone()}]
            }),
            State::AwaitingConsent,
            None,
            now,
        );
        let mut task = task;
        engine.intake(&mut task, &referrer, now);
        let (task, _) = engine.create_in(tx, g, &referrer, "Task", None, Cow::Borrowed(&task), None, &sub, None)?;
        tx.conn().exec(
            "INSERT INTO co_referral (task, request, grant_id, referrer, receiver, receiver_org, person, patient, direction, state, created, updated, due) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &[Val::Text(task.id.clone()), Val::Text(request.id.clone()), Val::Text(grant_id.clone()), Val::Text(referrer.clone()), Val::Text(receiver.clone()), Val::Text(org.clone()), Val::Text(person.clone()), Val::Text(patient.clone()), Val::Text(direction.clone()), Val::Text(State::AwaitingConsent.as_str().into()), Val::Int(now), Val::Int(now), Val::Int(now + engine.config.pool.referral_accept_ms)],
        )?;
        Ok(task)
    });
    let task = match written {
        Ok(t) => t,
        Err(e) => {
            // Nothing of the referral was written: withdraw the consent request asked for it.
            if let Ok(mut gr) = crate::consent::grant_of(engine, &grant_id) {
                gr.status = Status::Rejected;
                gr.reason = Some("withdrawn: the referral could not be recorded".into());
                gr.recorded = now_ms();
                let _ = crate::consent::save(engine, g, &gr, None);
            }
            return Err(e);
        }
    };
    g.note(format!(
        "referral {} {direction} to {receiver}, consent Consent/{grant_id}",
        task.id
    ));
    let mut body: Value = serde_json::from_slice(&g.release(&task))
        .map_err(|e| ApiError::of(Code::Internal, e.to_string()))?;
    body["contained"] = json!([consent]);
    let mut r = Resp::json(201, body);
    r.headers
        .push(("Location".into(), format!("{}/Task/{}", req.base, task.id)));
    Ok(r)
}

fn side_of(g: &Guard, row: &Row) -> Option<Side> {
    match (g.principal.kind, g.principal.institution.as_deref()) {
        (Kind::Platform, _) => Some(Side::Platform),
        (Kind::Clinician | Kind::System, Some(i)) if i == row.referrer => Some(Side::Referrer),
        // The receiver knows of a referral only once the resident consented.
        (Kind::Clinician | Kind::System, Some(i)) if i == row.receiver && row.opened > 0 => {
            Some(Side::Receiver)
        }
        _ => None,
    }
}

/// `POST Task/{id}/$referral`: one step of the lifecycle.
pub(crate) fn act(engine: &Engine, req: &Req, g: &Guard, id: &str) -> Result<Resp, ApiError> {
    g.act("referral");
    let row = referral_of(engine, id)?;
    let (row, side) = match row
        .as_ref()
        .and_then(|r| side_of(g, r).map(|s| (r.clone(), s)))
    {
        Some(x) => x,
        None => {
            return Err(ApiError::not_found(format!(
                "Task/{id} is not a referral of your institution"
            )))
        }
    };
    let p = Params::parse(req, "$referral")?;
    let name = p.required("action", "$referral")?;
    let action = Action::parse(&name).ok_or_else(|| {
        ApiError::of(
            Code::Value,
            format!("action is accept, reject, schedule, complete or cancel, not '{name}'"),
        )
        .with_expression("Parameters.parameter.where(name='action')")
    })?;
    let to = next(row.state, action, side).map_err(|e| {
        let code = if matches!(e, hutong_coordination::referral::Refused::Side { .. }) {
            Code::Forbidden
        } else {
            Code::Conflict
        };
        ApiError::of(code, format!("Task/{id}: {e}"))
    })?;
    let reason = p.string("reason");
    if matches!(action, Action::Reject | Action::Cancel) && reason.is_none() {
        return Err(ApiError::of(
            Code::Required,
            format!("{name} needs a 'reason' the other side will read"),
        )
        .with_expression("Parameters.parameter.where(name='reason')"));
    }
    let output = match action {
        Action::Schedule => {
            let [a] = p
                .refs("appointment", "Appointment")?
                .try_into()
                .map_err(|_| {
                    ApiError::of(
                        Code::Required,
                        "schedule needs the booked 'appointment' (Appointment/id)",
                    )
                    .with_expression("Parameters.parameter.where(name='appointment')")
                })?;
            let appt = engine
                .store
                .read("Appointment", &a, &g.scope)?
                .found()
                .filter(|s| !s.deleted)
                .ok_or_else(|| ApiError::not_found(format!("Appointment/{a} is not known")))?
                .json()?;
            if !matches!(
                appt["status"].as_str(),
                Some("booked" | "arrived" | "checked-in" | "fulfilled")
            ) {
                return Err(ApiError::of(
                    Code::Conflict,
                    format!("Appointment/{a} is not booked"),
                ));
            }
            let for_patient = appt["participant"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| local_id(&x["actor"], "Patient") == Some(row.patient.as_str()));
            if !for_patient {
                return Err(ApiError::of(
                    Code::Conflict,
                    format!("Appointment/{a} is not for the referred patient"),
                ));
            }
            Some((
                "appointment",
                json!({"reference": format!("Appointment/{a}")}),
            ))
        }
        Action::Complete => {
            let [e] = p.refs("encounter", "Encounter")?.try_into().map_err(|_| {
                ApiError::of(
                    Code::Required,
                    "complete needs the receiving side's 'encounter' (Encounter/id)",
                )
                .with_expression("Parameters.parameter.where(name='encounter')")
            })?;
            match engine.store.read("Encounter", &e, &g.scope)?.found() {
                Some(s) if !s.deleted && s.source == row.receiver => {}
                _ => {
                    return Err(ApiError::not_found(format!(
                        "Encounter/{e} is not an encounter of the receiving institution"
                    )))
                }
            }
            Some(("encounter", json!({"reference": format!("Encounter/{e}")})))
        }
        _ => None,
    };
    let now = now_ms();
    let pg = Guard::platform(engine, "referral", &format!("referral-{name}"));
    pg.note(format!(
        "Task/{id} {} -> {} by {}",
        row.state,
        to,
        g.principal.label()
    ));
    pg.on_behalf_of(&row.person);
    let r = pg.write(engine, |tx| {
        move_to(tx, &row, to, reason.as_deref(), output.clone(), now)?;
        if to == State::Cancelled || to == State::Rejected || to == State::Completed {
            // The request is done with, whichever way.
            if let Some(sr) = tx.read("ServiceRequest", &row.request)? {
                let mut v = sr.json()?;
                v["status"] = json!(if to == State::Completed {
                    "completed"
                } else {
                    "revoked"
                });
                tx.update("ServiceRequest", &row.request, v, Some(sr.version))?;
            }
        }
        Ok(())
    });
    pg.finish(engine, if r.is_ok() { 200 } else { 409 }, None);
    r?;
    // A referral that ends before it was taken on ends the access it opened.
    if matches!(to, State::Cancelled | State::Rejected) {
        if let Ok(mut gr) = crate::consent::grant_of(engine, &row.grant) {
            if matches!(gr.status, Status::Active | Status::Proposed) {
                gr.status = Status::Inactive;
                gr.end = Some(now);
                gr.recorded = now;
                crate::consent::save(engine, &pg, &gr, None)?;
            }
        }
    }
    let task = engine
        .store
        .read("Task", id, &Scope::All)?
        .found()
        .ok_or_else(|| ApiError::of(Code::Internal, "the referral's Task vanished"))?;
    Ok(Resp::json(
        200,
        serde_json::from_slice(&g.release(&task))
            .map_err(|e| ApiError::of(Code::Internal, e.to_string()))?,
    ))
}

/// `GET $referrals?box=in|out[&state=…][&overdue=true]`: the institution's referrals,
/// newest first, as their Tasks (each read is the caller's, audited). The inbox holds only
/// referrals the resident consented to.
pub(crate) fn list(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("referrals");
    let Some(inst) = g
        .principal
        .institution
        .clone()
        .filter(|_| matches!(g.principal.kind, Kind::Clinician | Kind::System))
    else {
        return Err(ApiError::of(
            Code::Forbidden,
            "Referral boxes are an institution's",
        ));
    };
    let get = |k: &str| {
        req.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let (col, extra) = match get("box").unwrap_or("in") {
        "in" => ("receiver", " AND opened > 0"),
        "out" => ("referrer", ""),
        other => {
            return Err(
                ApiError::of(Code::Value, format!("box is 'in' or 'out', not '{other}'"))
                    .with_expression("box"),
            )
        }
    };
    let mut sql = format!("SELECT {ROW} FROM co_referral WHERE {col} = ?{extra}");
    let mut params = vec![Val::Text(inst)];
    if let Some(s) = get("state") {
        let st = State::parse(s).ok_or_else(|| {
            ApiError::of(Code::Value, format!("'{s}' is not a referral state"))
                .with_expression("state")
        })?;
        sql.push_str(" AND state = ?");
        params.push(Val::Text(st.as_str().into()));
    }
    if get("overdue") == Some("true") {
        sql.push_str(" AND escalated > 0 AND state = 'requested'");
    }
    let paging = crate::wire::Paging::parse(&req.query, crate::wire::Paging::LISTS)?;
    sql.push_str(" ORDER BY created DESC, task LIMIT ? OFFSET ?");
    params.push(Val::Int(paging.count as i64));
    params.push(Val::Int(paging.offset as i64));
    let rows: Vec<Row> = engine
        .store
        .query_admin(&sql, &params)?
        .iter()
        .map(to_row)
        .collect();
    let mut entries = Vec::new();
    for r in rows {
        let Some(t) = engine.store.read("Task", &r.task, &g.scope)?.found() else {
            // Past the referral's window the receiver's access has ended: listed, not shown.
            entries.push(json!({"resource": {"resourceType": "Task", "id": r.task, "status": r.state.task_status(),
                "intent": "order", "businessStatus": {"coding": [{"system": REFERRAL_CS, "code": r.state.as_str()}]}},
                "search": {"mode": "match"}}));
            continue;
        };
        let mut v: Value = serde_json::from_slice(&g.release(&t))
            .map_err(|e| ApiError::of(Code::Internal, e.to_string()))?;
        if r.escalated > 0 {
            v["meta"]["tag"] =
                json!([{"system": REFERRAL_CS, "code": "overdue", "display": "超时未接收"}]);
        }
        entries.push(json!({"fullUrl": format!("{}/Task/{}", req.base, r.task), "resource": v, "search": {"mode": "match"},
            "extension": [{"url": DIRECTION_URL, "valueCode": r.direction}]}));
    }
    Ok(Resp::json(
        200,
        json!({"resourceType": "Bundle", "type": "searchset", "entry": entries}),
    ))
}

/// Referrals not accepted by their due time: escalated once (the Task made urgent with a
/// note, listed as overdue in both boxes). Returns how many.
pub fn sweep(engine: &Engine, now: i64) -> Result<usize, ApiError> {
    let rows: Vec<Row> = engine
        .store
        .query_admin(&format!("SELECT {ROW} FROM co_referral WHERE state = 'requested' AND due < ? AND escalated = 0"), &[Val::Int(now)])?
        .iter()
        .map(to_row)
        .collect();
    let g = Guard::platform(engine, "referral-sweep", "referral-escalate");
    let mut n = 0;
    for r in rows {
        g.on_behalf_of(&r.person);
        g.write(engine, |tx| {
            if let Some(cur) = tx.read("Task", &r.task)? {
                let mut t = cur.json()?;
                t["priority"] = json!("urgent");
                let mut notes = t["note"].as_array().cloned().unwrap_or_default();
                notes.push(json!({"authorString": "platform", "time": format_instant(now),
                    "text": format!("[超时] 转诊未在 {} 前接收，已催办。Not accepted by {}; escalated.", format_instant(r.due), format_instant(r.due))}));
                t["note"] = json!(notes);
                tx.update("Task", &r.task, t, Some(cur.version))?;
            }
            tx.conn().exec("UPDATE co_referral SET escalated = ? WHERE task = ? AND escalated = 0", &[Val::Int(now), Val::Text(r.task.clone())])?;
            Ok(())
        })?;
        n += 1;
    }
    if n > 0 {
        g.finish(engine, 200, Some(format!("{n} referrals escalated")));
    }
    Ok(n)
}

/// `POST $referrals/$sweep` (the platform's services): runs the sweep now.
pub(crate) fn sweep_op(engine: &Engine, g: &Guard) -> Result<Resp, ApiError> {
    g.act("referral-sweep");
    if g.principal.kind != Kind::Platform {
        return Err(ApiError::of(
            Code::Forbidden,
            "The referral sweep is the platform's",
        ));
    }
    let n = sweep(engine, now_ms())?;
    Ok(Resp::json(200, json!({"escalated": n})))
}
