//! Appointment-linked grants: booking a visit gives the institution access to the
//! resident's record for the visit's window; cancelling it ends the grant.

use crate::consent::institution_name;
use crate::consent::institution_of_org;
use crate::consent::save;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::guard::Guard;
use hutong_access::grants::{Grant, Grantee, Method, Status};
use hutong_access::principal::Kind;
use hutong_fhir::date::now_ms;
use hutong_store::{Scope, Stored};

/// After a write: an Appointment booked through the appointment platform (a booking client)
/// opens the booked institution's access to the patient's record for the visit window; a
/// cancelled one closes it.
pub fn after_write(engine: &Engine, g: &Guard, s: &Stored) -> Result<(), ApiError> {
    if s.rtype != "Appointment" || !(g.principal.booking || g.principal.kind == Kind::Platform) {
        return Ok(());
    }
    visit_grant(engine, &g.principal.label(), s)
}

/// Opens (booked and after) or closes (anything else) the visit grant of an Appointment
/// `by` booked or changed: a booking through the slot pool, whoever made it, or one an
/// appointment platform's client wrote.
pub fn visit_grant(engine: &Engine, by: &str, s: &Stored) -> Result<(), ApiError> {
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
                requested_by: Some(by.to_string()),
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
    pg.note(format!("for Appointment/{} booked by {by}", s.id));
    save(engine, &pg, &grant, None)?;
    pg.finish(engine, 200, None);
    Ok(())
}
