//! The pool's index kept in the writer's transaction: every version of a Slot, Schedule,
//! Appointment or Organization written by any path passes [`written`], every deletion
//! [`deleted`]. This is where a slot changes hands (`SlotState::claim`, its row locked) and
//! where the family-doctor share is enforced.

use hutong_access::principal::Kind;
use hutong_coordination::followup::Chronic;
use hutong_coordination::{Booker, Claim, ClaimError, SlotState};
use hutong_fhir::date::{format_instant, now_ms};
use hutong_fhir::vocab::{
    CONTRACT_SYSTEM, ENCOUNTER_TYPE_SYSTEM, FOLLOW_UP_CODE, INSTITUTION_KIND_SYSTEM,
    PRIMARY_CARE_KINDS, RECOGNITION_QUALIFIED_URL,
};
use hutong_store::sql::Val;
use hutong_store::{StoreError, Stored, Tx};
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::error::{ApiError, Code};
use crate::guard::Guard;

/// A Schedule's descriptions as the pool files its slots under.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Described {
    pub org: String,
    pub district: String,
    pub specialty: String,
    pub practitioner: String,
    pub service: String,
}

/// After a version of a Slot, Schedule or Appointment is written, in its transaction.
pub(crate) fn written(
    engine: &Engine,
    tx: &mut Tx<'_>,
    g: &Guard,
    s: &Stored,
) -> Result<(), ApiError> {
    match s.rtype.as_str() {
        "Slot" => slot_written(engine, tx, s),
        "Schedule" => schedule_written(tx, s),
        "Appointment" => appointment_written(engine, tx, g, s),
        "Organization" => organization_written(tx, s),
        "EpisodeOfCare" => contract_written(tx, s),
        "Encounter" => visit_written(tx, s),
        "Condition" => chronic_written(tx, s),
        _ => Ok(()),
    }
}

/// Before `t/id` is deleted, in the deleting transaction: a booked or held slot stays
/// (its Appointment is cancelled first); an Appointment lets its slots go.
pub(crate) fn deleted(engine: &Engine, tx: &mut Tx<'_>, t: &str, id: &str) -> Result<(), ApiError> {
    match t {
        "Slot" => {
            if let Some(row) = slot_row(engine, tx, id)? {
                if let Some(by) = row.state.holder() {
                    return Err(ApiError::of(
                        Code::Conflict,
                        format!("Slot/{id} is {} by Appointment/{by}: cancel the appointment before deleting the slot", row.state),
                    ));
                }
                tx.conn().exec(
                    "DELETE FROM co_slot WHERE slot = ?",
                    &[Val::Text(id.into())],
                )?;
            }
            Ok(())
        }
        "Appointment" => {
            for row in slots_of(tx, id)? {
                set_state(tx, &row, row.state.release(id))?;
            }
            Ok(())
        }
        "EpisodeOfCare" | "Encounter" | "Condition" => {
            let (table, key) = match t {
                "EpisodeOfCare" => ("co_contract", "episode"),
                "Encounter" => ("co_visit", "encounter"),
                _ => ("co_chronic", "condition"),
            };
            tx.conn().exec(
                &format!("DELETE FROM {table} WHERE {key} = ?"),
                &[Val::Text(id.into())],
            )?;
            Ok(())
        }
        _ => Ok(()),
    }
}

/// One pooled slot as its row says.
#[derive(Debug, Clone)]
pub(crate) struct SlotRow {
    pub slot: String,
    pub start: i64,
    pub reserved: bool,
    pub state: SlotState,
}

const ROW: &str = "slot, start_ms, reserved, state, appt, until_ms";

fn to_row(r: &hutong_store::sql::Row) -> SlotRow {
    SlotRow {
        slot: r[0].text().to_string(),
        start: r[1].int(),
        reserved: r[2].int() != 0,
        state: SlotState::from_row(r[3].text(), r[4].text(), r[5].int()),
    }
}

/// The slot's row, locked until the transaction ends (SQLite's writer already holds the
/// database; PostgreSQL locks the row, so concurrent claims on one slot take turns and each
/// sees the last one's result).
fn slot_row(engine: &Engine, tx: &mut Tx<'_>, id: &str) -> Result<Option<SlotRow>, StoreError> {
    let lock = engine.store.dialect().lock_row();
    let rows = tx.conn().query(
        &format!("SELECT {ROW} FROM co_slot WHERE slot = ?{lock}"),
        &[Val::Text(id.into())],
    )?;
    Ok(rows.first().map(to_row))
}

fn slots_of(tx: &mut Tx<'_>, appointment: &str) -> Result<Vec<SlotRow>, StoreError> {
    Ok(tx
        .conn()
        .query(
            &format!("SELECT {ROW} FROM co_slot WHERE appt = ?"),
            &[Val::Text(appointment.into())],
        )?
        .iter()
        .map(to_row)
        .collect())
}

/// Records a slot's new state in the index and in the Slot itself (its `status`, so that a
/// plain `Slot?status=free` search tells the truth too).
fn set_state(tx: &mut Tx<'_>, row: &SlotRow, next: SlotState) -> Result<(), ApiError> {
    if next == row.state {
        return Ok(());
    }
    let (state, by, until) = next.to_row();
    tx.conn().exec(
        "UPDATE co_slot SET state = ?, appt = ?, until_ms = ? WHERE slot = ?",
        &[
            Val::Text(state.into()),
            Val::Text(by.into()),
            Val::Int(until),
            Val::Text(row.slot.clone()),
        ],
    )?;
    if let Some(cur) = tx.read("Slot", &row.slot)? {
        if !cur.deleted {
            let mut v = cur.json()?;
            if v["status"] != next.slot_status() {
                v["status"] = json!(next.slot_status());
                tx.update("Slot", &row.slot, v, Some(cur.version))?;
            }
        }
    }
    Ok(())
}

pub(crate) fn local_id<'a>(reference: &'a Value, t: &str) -> Option<&'a str> {
    reference["reference"]
        .as_str()?
        .strip_prefix(t)?
        .strip_prefix('/')
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

fn ms(v: &Value) -> Option<i64> {
    v.as_str().and_then(hutong_fhir::date::parse).map(|r| r.lo)
}

/// A code, else the text, of the first CodeableConcept in `v` (an array or one).
fn concept(v: &Value) -> String {
    let c = if v.is_array() { &v[0] } else { v };
    c["coding"][0]["code"]
        .as_str()
        .or(c["text"].as_str())
        .or(c["coding"][0]["display"].as_str())
        .unwrap_or("")
        .to_string()
}

/// What a Schedule says about where and by whom its slots are served: its actors (an
/// Organization, a PractitionerRole and its organization, a Practitioner, a
/// HealthcareService or Location and its organization), its specialty and service type.
fn describe(tx: &mut Tx<'_>, v: &Value) -> Result<Described, StoreError> {
    let mut d = Described {
        specialty: concept(&v["specialty"]),
        service: concept(&v["serviceType"]),
        ..Default::default()
    };
    for a in v["actor"].as_array().into_iter().flatten() {
        if let Some(o) = local_id(a, "Organization") {
            d.org = o.to_string();
        } else if let Some(p) = local_id(a, "Practitioner") {
            d.practitioner = p.to_string();
        } else {
            for (t, field) in [
                ("PractitionerRole", "organization"),
                ("HealthcareService", "providedBy"),
                ("Location", "managingOrganization"),
            ] {
                let Some(id) = local_id(a, t) else { continue };
                let Some(x) = tx.read(t, id)?.filter(|x| !x.deleted) else {
                    continue;
                };
                let x = x.json()?;
                if d.org.is_empty() {
                    d.org = local_id(&x[field], "Organization")
                        .unwrap_or("")
                        .to_string();
                }
                if t == "PractitionerRole" {
                    if let Some(p) = local_id(&x["practitioner"], "Practitioner") {
                        d.practitioner = p.to_string();
                    }
                    if d.specialty.is_empty() {
                        d.specialty = concept(&x["specialty"]);
                    }
                }
            }
        }
    }
    if !d.org.is_empty() {
        if let Some(o) = tx.read("Organization", &d.org)?.filter(|o| !o.deleted) {
            let o = o.json()?;
            d.district = o["address"][0]["district"]
                .as_str()
                .unwrap_or("")
                .to_string();
        }
    }
    Ok(d)
}

fn schedule_written(tx: &mut Tx<'_>, s: &Stored) -> Result<(), ApiError> {
    let d = describe(tx, &s.json()?)?;
    let p = |x: &str| Val::Text(x.to_string());
    let n = tx.conn().exec(
        "UPDATE co_schedule SET org = ?, district = ?, specialty = ?, practitioner = ?, service = ? WHERE schedule = ?",
        &[p(&d.org), p(&d.district), p(&d.specialty), p(&d.practitioner), p(&d.service), p(&s.id)],
    )?;
    if n == 0 {
        tx.conn().exec(
            "INSERT INTO co_schedule (schedule, org, district, specialty, practitioner, service) VALUES (?, ?, ?, ?, ?, ?)",
            &[p(&s.id), p(&d.org), p(&d.district), p(&d.specialty), p(&d.practitioner), p(&d.service)],
        )?;
    }
    tx.conn().exec(
        "UPDATE co_slot SET org = ?, district = ?, specialty = ?, practitioner = ?, service = ? WHERE schedule = ?",
        &[p(&d.org), p(&d.district), p(&d.specialty), p(&d.practitioner), p(&d.service), p(&s.id)],
    )?;
    Ok(())
}

/// The next ordinal of a slot in `schedule` and the schedule's descriptions (described from
/// the Schedule when it is stored; a Slot may arrive first, and its Schedule's write fills
/// the descriptions in later).
fn next_ordinal(tx: &mut Tx<'_>, schedule: &str) -> Result<(i64, Described), ApiError> {
    let p = |x: &str| Val::Text(x.to_string());
    let bumped = tx.conn().exec(
        "UPDATE co_schedule SET published = published + 1 WHERE schedule = ?",
        &[p(schedule)],
    )?;
    if bumped == 0 {
        let d = match tx.read("Schedule", schedule)?.filter(|x| !x.deleted) {
            Some(x) => describe(tx, &x.json()?)?,
            None => Described::default(),
        };
        tx.conn().exec(
            "INSERT INTO co_schedule (schedule, org, district, specialty, practitioner, service, published) VALUES (?, ?, ?, ?, ?, ?, 1)",
            &[p(schedule), p(&d.org), p(&d.district), p(&d.specialty), p(&d.practitioner), p(&d.service)],
        )?;
        return Ok((1, d));
    }
    let r = tx.conn().query(
        "SELECT published, org, district, specialty, practitioner, service FROM co_schedule WHERE schedule = ?",
        &[p(schedule)],
    )?;
    let r = r
        .first()
        .ok_or_else(|| ApiError::of(Code::Internal, "a schedule row vanished"))?;
    Ok((
        r[0].int(),
        Described {
            org: r[1].text().into(),
            district: r[2].text().into(),
            specialty: r[3].text().into(),
            practitioner: r[4].text().into(),
            service: r[5].text().into(),
        },
    ))
}

fn slot_written(engine: &Engine, tx: &mut Tx<'_>, s: &Stored) -> Result<(), ApiError> {
    let v = s.json()?;
    let Some(schedule) = local_id(&v["schedule"], "Schedule") else {
        // A slot of a schedule kept elsewhere is not the pool's to offer.
        return Ok(());
    };
    let (Some(start), Some(end)) = (ms(&v["start"]), ms(&v["end"])) else {
        return Err(
            ApiError::bad_request("A Slot needs a start and an end").with_expression("Slot.start")
        );
    };
    if end < start {
        return Err(
            ApiError::bad_request("A Slot cannot end before it starts").with_expression("Slot.end")
        );
    }
    // The publisher's status opens or closes a slot the pool does not hold for anyone;
    // one the pool has given to an Appointment keeps its state (the status written back
    // is the pool's).
    let published = if v["status"] == "free" {
        SlotState::Free
    } else {
        SlotState::Closed
    };
    let t = |x: &str| Val::Text(x.to_string());
    match slot_row(engine, tx, &s.id)? {
        Some(row) => {
            let state = if row.state.holder().is_some() {
                row.state.clone()
            } else {
                published
            };
            let (st, by, until) = state.to_row();
            tx.conn().exec(
                "UPDATE co_slot SET start_ms = ?, end_ms = ?, state = ?, appt = ?, until_ms = ? WHERE slot = ?",
                &[Val::Int(start), Val::Int(end), t(st), t(by), Val::Int(until), t(&s.id)],
            )?;
        }
        None => {
            let (ordinal, d) = next_ordinal(tx, schedule)?;
            let share = engine.config.pool.share_for(&d.org, &d.specialty);
            let reserved = hutong_coordination::Policy::reserved_at(ordinal as u64, share);
            let (st, _, _) = published.to_row();
            tx.conn().exec(
                "INSERT INTO co_slot (slot, schedule, org, district, specialty, practitioner, service, start_ms, end_ms, ordinal, reserved, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                &[t(&s.id), t(schedule), t(&d.org), t(&d.district), t(&d.specialty), t(&d.practitioner), t(&d.service), Val::Int(start), Val::Int(end), Val::Int(ordinal), Val::Int(i64::from(reserved)), t(st)],
            )?;
        }
    }
    Ok(())
}

/// What an Appointment's status asks of its slots: a hold (`pending`), a booking (booked and
/// what follows it — a no-show's slot was used up too), or nothing (proposed, waitlisted,
/// cancelled, entered in error: its slots go back to the pool).
fn claim_of(status: &str, until: i64) -> Option<Claim> {
    match status {
        "pending" => Some(Claim::Hold { until }),
        "booked" | "arrived" | "checked-in" | "fulfilled" | "noshow" => Some(Claim::Book),
        _ => None,
    }
}

/// The extension on a held Appointment saying until when its slots are held.
pub const HOLD_UNTIL_URL: &str = "https://hutong.dev/fhir/StructureDefinition/hold-until";

fn appointment_written(
    engine: &Engine,
    tx: &mut Tx<'_>,
    g: &Guard,
    s: &Stored,
) -> Result<(), ApiError> {
    let v = s.json()?;
    let now = now_ms();
    let until = v["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == HOLD_UNTIL_URL)
        .and_then(|e| ms(&e["valueInstant"]))
        .unwrap_or(now + engine.config.pool.hold_ms);
    let claim = claim_of(v["status"].as_str().unwrap_or(""), until);
    let wanted: Vec<&str> = v["slot"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| local_id(r, "Slot"))
        .collect();
    // Slots it had and lets go: cancelled, or moved to other slots (a reschedule).
    for row in slots_of(tx, &s.id)? {
        if claim.is_none() || !wanted.contains(&row.slot.as_str()) {
            set_state(tx, &row, row.state.release(&s.id))?;
        }
    }
    let Some(claim) = claim else {
        return Ok(());
    };
    let mut booker = None;
    for slot in wanted {
        let Some(row) = slot_row(engine, tx, slot)? else {
            continue;
        };
        if row.state.holder() != Some(s.id.as_str()) {
            let b = match booker {
                Some(b) => b,
                None => *booker.insert(booker_of(engine, tx, g, &v)?),
            };
            if let Err(r) = engine.config.pool.may_take(row.reserved, row.start, b, now) {
                return Err(ApiError::of(
                    Code::Reserved,
                    format!(
                        "Slot/{slot} is in the family doctors' share until {}: it is booked by a family doctor's referral until then",
                        format_instant(r.release_at)
                    ),
                )
                .with_expression("Appointment.slot"));
            }
        }
        let next = row
            .state
            .claim(&s.id, claim, now)
            .map_err(|e| taken(slot, &e))?;
        set_state(tx, &row, next)?;
    }
    Ok(())
}

/// The refusal of a slot someone else has.
fn taken(slot: &str, e: &ClaimError) -> ApiError {
    let why = match e {
        ClaimError::Held { until } => format!(
            "Slot/{slot} is held for another appointment until {}",
            format_instant(*until)
        ),
        ClaimError::Booked => format!("Slot/{slot} is already booked"),
        ClaimError::Closed => {
            format!("Slot/{slot} is not available: its institution has closed it")
        }
    };
    ApiError::of(Code::Conflict, why).with_expression("Appointment.slot")
}

/// Who is taking slots, for the family-doctor share: a clinician or system of a
/// primary-care institution booking on a referral (`basedOn` a ServiceRequest their
/// institution submitted) is a family doctor; the platform acting by itself is the
/// platform; everyone else — residents, proxies, the platform acting for a resident,
/// hospitals — books from the public pool.
fn booker_of(engine: &Engine, tx: &mut Tx<'_>, g: &Guard, v: &Value) -> Result<Booker, ApiError> {
    let p = &g.principal;
    match p.kind {
        Kind::Platform if g.acting_for().is_none() => return Ok(Booker::Platform),
        Kind::System | Kind::Clinician => {}
        _ => return Ok(Booker::Public),
    }
    let Some(inst) = p.institution.as_deref() else {
        return Ok(Booker::Public);
    };
    let mut referral = false;
    for r in v["basedOn"].as_array().into_iter().flatten() {
        if let Some(id) = local_id(r, "ServiceRequest") {
            if tx.source_of("ServiceRequest", id)?.as_deref() == Some(inst) {
                referral = true;
            }
        }
    }
    if referral && is_primary_care(engine, inst)? {
        Ok(Booker::FamilyDoctor)
    } else {
        Ok(Booker::Public)
    }
}

/// Whether the institution (`urn:hutong:org:{USCC}`) is a primary-care one, by its
/// Organization's kind.
pub(crate) fn is_primary_care(engine: &Engine, inst: &str) -> Result<bool, ApiError> {
    Ok(crate::consent::organization_of(engine, inst)?.is_some_and(|o| primary_care(&o)))
}

/// Whether an institution's Organization is of a primary-care kind.
pub(crate) fn primary_care(org: &Value) -> bool {
    org["type"].as_array().into_iter().flatten().any(|t| {
        t["coding"].as_array().into_iter().flatten().any(|c| {
            c["system"] == INSTITUTION_KIND_SYSTEM
                && c["code"]
                    .as_str()
                    .is_some_and(|k| PRIMARY_CARE_KINDS.contains(&k))
        })
    })
}

/// After an Organization is written: whether its institution's results are recognized.
pub(crate) fn organization_written(tx: &mut Tx<'_>, s: &Stored) -> Result<(), ApiError> {
    let v = s.json()?;
    let Some(source) = crate::consent::institution_of_org(&v) else {
        return Ok(());
    };
    let qualified = v["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["url"] == RECOGNITION_QUALIFIED_URL && e["valueBoolean"] == true);
    let n = tx.conn().exec(
        "UPDATE co_qualified SET qualified = ?, org = ? WHERE source = ?",
        &[
            Val::Int(i64::from(qualified)),
            Val::Text(s.id.clone()),
            Val::Text(source.clone()),
        ],
    )?;
    if n == 0 {
        tx.conn().exec(
            "INSERT INTO co_qualified (source, org, qualified) VALUES (?, ?, ?)",
            &[
                Val::Text(source),
                Val::Text(s.id.clone()),
                Val::Int(i64::from(qualified)),
            ],
        )?;
    }
    Ok(())
}

/// Whether `Task/{id}` is a referral's (they change only through `Task/{id}/$referral`).
pub(crate) fn is_referral_task(tx: &mut Tx<'_>, id: &str) -> Result<bool, StoreError> {
    Ok(!tx
        .conn()
        .query(
            "SELECT 1 FROM co_referral WHERE task = ?",
            &[Val::Text(id.into())],
        )?
        .is_empty())
}

/// The same, outside any transaction: a write to such a Task is refused before its content
/// is looked at (and quarantined for findings that do not matter).
pub(crate) fn is_referral_task_id(
    store: &hutong_store::Store,
    id: &str,
) -> Result<bool, StoreError> {
    Ok(!store
        .query_admin(
            "SELECT 1 FROM co_referral WHERE task = ?",
            &[Val::Text(id.into())],
        )?
        .is_empty())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn patient_of(v: &Value) -> Option<&str> {
    local_id(&v["patient"], "Patient").or_else(|| local_id(&v["subject"], "Patient"))
}

/// A family-doctor contract (an EpisodeOfCare of the contract type) in `co_contract`.
fn contract_written(tx: &mut Tx<'_>, s: &Stored) -> Result<(), ApiError> {
    if !contains(&s.body, CONTRACT_SYSTEM.as_bytes()) {
        return Ok(());
    }
    let v = s.json()?;
    let is_contract = v["type"].as_array().into_iter().flatten().any(|t| {
        t["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["system"] == CONTRACT_SYSTEM)
    });
    let Some(patient) = patient_of(&v).filter(|_| is_contract) else {
        return Ok(());
    };
    let package = v["type"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["coding"].as_array().into_iter().flatten())
        .find(|c| c["system"] == CONTRACT_SYSTEM)
        .and_then(|c| c["code"].as_str())
        .unwrap_or("basic");
    let t = |x: &str| Val::Text(x.to_string());
    tx.conn()
        .exec("DELETE FROM co_contract WHERE episode = ?", &[t(&s.id)])?;
    tx.conn().exec(
        "INSERT INTO co_contract (episode, patient, institution, org, team, package, status, start_ms, end_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        &[
            t(&s.id),
            t(patient),
            t(&s.source),
            t(local_id(&v["managingOrganization"], "Organization").unwrap_or("")),
            t(local_id(&v["team"][0], "CareTeam").unwrap_or("")),
            t(package),
            t(v["status"].as_str().unwrap_or("")),
            Val::Int(ms(&v["period"]["start"]).unwrap_or(s.last_updated)),
            Val::Int(v["period"]["end"].as_str().and_then(hutong_fhir::date::parse).map_or(0, |r| r.hi)),
        ],
    )?;
    Ok(())
}

/// A chronic-disease follow-up (an Encounter of that type) in `co_visit`, by any
/// institution: every one counts.
fn visit_written(tx: &mut Tx<'_>, s: &Stored) -> Result<(), ApiError> {
    // Most encounters are not follow-ups: only a version that names the type, or one that
    // may have been one before, is read.
    if s.version == 1 && !contains(&s.body, FOLLOW_UP_CODE.as_bytes()) {
        return Ok(());
    }
    let v = s.json()?;
    let follow_up = v["type"].as_array().into_iter().flatten().any(|t| {
        t["coding"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["system"] == ENCOUNTER_TYPE_SYSTEM && c["code"] == FOLLOW_UP_CODE)
    }) && !matches!(
        v["status"].as_str(),
        Some("cancelled" | "entered-in-error" | "planned")
    );
    tx.conn().exec(
        "DELETE FROM co_visit WHERE encounter = ?",
        &[Val::Text(s.id.clone())],
    )?;
    let at = ms(&v["period"]["start"]).or_else(|| ms(&v["period"]["end"]));
    if let (true, Some(patient), Some(at)) = (follow_up, patient_of(&v), at) {
        tx.conn().exec(
            "INSERT INTO co_visit (encounter, patient, at) VALUES (?, ?, ?)",
            &[
                Val::Text(s.id.clone()),
                Val::Text(patient.into()),
                Val::Int(at),
            ],
        )?;
    }
    Ok(())
}

/// A hypertension or diabetes diagnosis in `co_chronic` (while it is active).
fn chronic_written(tx: &mut Tx<'_>, s: &Stored) -> Result<(), ApiError> {
    if s.version == 1 && !contains(&s.body, b"\"I1") && !contains(&s.body, b"\"E1") {
        return Ok(());
    }
    let v = s.json()?;
    let kinds: std::collections::BTreeSet<Chronic> = v["code"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["system"].as_str().is_some_and(|x| x.contains("icd-10")))
        .filter_map(|c| c["code"].as_str().and_then(Chronic::of_icd10))
        .collect();
    let clinical = v["clinicalStatus"]["coding"][0]["code"].as_str();
    let verification = v["verificationStatus"]["coding"][0]["code"].as_str();
    let active = matches!(clinical, None | Some("active" | "recurrence" | "relapse"))
        && !matches!(verification, Some("entered-in-error" | "refuted"));
    tx.conn().exec(
        "DELETE FROM co_chronic WHERE condition = ?",
        &[Val::Text(s.id.clone())],
    )?;
    if let (true, Some(patient)) = (active, patient_of(&v)) {
        for k in kinds {
            tx.conn().exec(
                "INSERT INTO co_chronic (condition, kind, patient) VALUES (?, ?, ?)",
                &[
                    Val::Text(s.id.clone()),
                    Val::Text(k.as_str().into()),
                    Val::Text(patient.into()),
                ],
            )?;
        }
    }
    Ok(())
}
