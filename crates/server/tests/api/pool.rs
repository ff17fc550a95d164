//! The regional slot pool over HTTP (IHE ITI Scheduling): institutions publish Schedules and
//! Slots by any write path; `Appointment/$find` offers what is free; `$hold` and `$book`
//! take a slot for exactly one appointment, whoever races for it; the family doctors' share
//! is kept for their referrals until its release; cancelling (by `$book` or by updating the
//! Appointment) gives the slot back; a booking opens the visit's access window.

use serde_json::{json, Value};

use crate::access::{create_as, params, patient, region, status_as, Region, A, B, C, ID_NUMBER};
use crate::helpers::TestApp;

crate::on_both_with!(super::settings;
    slots_are_found_held_and_booked_once,
    the_family_doctor_share_is_kept_for_referrals,
    concurrent_bookers_get_one_slot_each_and_the_rest_409,
    every_write_path_keeps_the_pool_true,
    bad_scheduling_requests_are_refused_precisely,
);

const DAY: i64 = 86_400_000;

fn settings(_: &mut hutong_server::Settings) {}

fn enc(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

fn at(ms: i64) -> String {
    hutong_fhir::date::format_instant(ms)
}

/// Hospital A (a tertiary hospital in 西湖区) and community centre C, with types; A's
/// internist publishes, in one transaction Bundle, a Schedule and ten 20-minute slots from
/// `first` on (so the 5th and 10th are the family doctors' share). Returns the slot ids.
pub(crate) async fn publish(app: &TestApp, first: i64) -> Vec<String> {
    for (id, uscc, name, kind, district) in [
        ("a", "91330100A", "甲医院", "tertiary-hospital", "西湖区"),
        ("b", "91330100B", "乙医院", "district-hospital", "上城区"),
        (
            "c",
            "91330100C",
            "丙中心",
            "community-health-centre",
            "西湖区",
        ),
    ] {
        let r = app
            .put(
                &format!("Organization/{id}"),
                json!({"resourceType": "Organization", "id": id, "name": name,
                    "identifier": [{"system": "https://hutong.dev/sid/uscc", "value": uscc}],
                    "type": [{"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/institution-kind", "code": kind}]}],
                    "address": [{"city": "杭州市", "district": district}]}),
            )
            .await;
        assert!(r.status < 300, "{}", r.body);
    }
    let mut entries = vec![
        json!({"fullUrl": "urn:uuid:role", "resource": {"resourceType": "PractitionerRole", "id": "a-dr1-role", "active": true,
            "organization": {"reference": "Organization/a"}, "specialty": [{"text": "内科"}]},
            "request": {"method": "PUT", "url": "PractitionerRole/a-dr1-role"}}),
    ];
    let mut ids = Vec::new();
    for i in 0..10 {
        let id = format!("a-s1-{i}");
        let start = first + i * 20 * 60_000;
        entries.push(json!({"resource": {"resourceType": "Slot", "id": id, "schedule": {"reference": "Schedule/a-s1"},
            "status": "free", "start": at(start), "end": at(start + 20 * 60_000)},
            "request": {"method": "PUT", "url": format!("Slot/{id}")}}));
        ids.push(id);
    }
    // The Schedule comes after its slots: the pool fills their descriptions in when it
    // arrives.
    entries.push(json!({"resource": {"resourceType": "Schedule", "id": "a-s1", "active": true,
        "specialty": [{"text": "内科"}], "serviceType": [{"text": "专科门诊"}],
        "actor": [{"reference": "PractitionerRole/a-dr1-role"}, {"reference": "Organization/a", "display": "甲医院"}]},
        "request": {"method": "PUT", "url": "Schedule/a-s1"}}));
    let r = app
        .send_as(
            &app.system(A),
            "POST",
            "",
            Some(json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    ids
}

fn find_path(from: i64, to: i64, extra: &str) -> String {
    format!(
        "Appointment/$find?start={}&end={}{extra}",
        enc(&at(from)),
        enc(&at(to))
    )
}

fn offered(b: &Value) -> Vec<String> {
    b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            e["resource"]["slot"][0]["reference"]
                .as_str()
                .unwrap()
                .trim_start_matches("Slot/")
                .to_string()
        })
        .collect()
}

pub(crate) fn appointment(slot: &str, patient: &str) -> Value {
    json!({"resourceType": "Appointment", "status": "proposed",
        "slot": [{"reference": format!("Slot/{slot}")}],
        "participant": [{"actor": {"reference": format!("Patient/{patient}")}, "status": "needs-action"},
                        {"actor": {"reference": "PractitionerRole/a-dr1-role"}, "status": "needs-action"}]})
}

pub(crate) fn with_resource(a: Value) -> Value {
    params(vec![json!({"name": "appointment-resource", "resource": a})])
}

async fn slot_status(app: &TestApp, id: &str) -> String {
    app.get(&format!("Slot/{id}")).await.body["status"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn slots_are_found_held_and_booked_once(app: &TestApp) {
    let r: Region = region(app).await;
    let now = hutong_fhir::date::now_ms();
    // Within the hour: the visit window (from 2 h before) is open once booked, and the
    // family doctors' share is already released (48 h before), so all ten are public.
    let first = now + 3_600_000;
    let slots = publish(app, first).await;
    let me = app.resident(&r.person);
    // A resident sees the free slots, earliest first, with the total and paging.
    let found = app
        .send_as(
            &me,
            "GET",
            &find_path(now, now + 10 * DAY, "&_count=3"),
            None,
            &[],
        )
        .await;
    assert_eq!(found.status, 200, "{}", found.body);
    assert_eq!(found.body["total"], 10, "{}", found.body);
    assert_eq!(offered(&found.body), ["a-s1-0", "a-s1-1", "a-s1-2"]);
    let a0 = &found.body["entry"][0]["resource"];
    assert_eq!(a0["status"], "proposed");
    assert_eq!(a0["start"], at(first).as_str());
    assert_eq!(a0["specialty"][0]["text"], "内科");
    assert!(found.body["link"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["relation"] == "next"));
    // Filters: specialty, organization, district (name or code); POST with Parameters.
    for (extra, n) in [
        ("&specialty=内科", 10),
        ("&specialty=儿科", 0),
        ("&organization=Organization/a", 10),
        ("&organization=Organization/b", 0),
        ("&district=西湖区", 10),
        ("&district=330106", 10),
        ("&district=上城区", 0),
    ] {
        let f = app
            .send_as(
                &me,
                "GET",
                &find_path(now, now + 10 * DAY, extra),
                None,
                &[],
            )
            .await;
        assert_eq!(f.body["total"], n, "{extra}: {}", f.body);
    }
    let posted = app
        .send_as(
            &me,
            "POST",
            "Appointment/$find",
            Some(params(vec![
                json!({"name": "start", "valueDateTime": at(first + 30 * 60_000)}),
                json!({"name": "end", "valueDateTime": at(first + DAY)}),
                json!({"name": "specialty", "valueCode": "内科"}),
            ])),
            &[],
        )
        .await;
    assert_eq!(posted.body["total"], 8, "{}", posted.body);

    // The resident holds the first slot for their record at B; someone else cannot take
    // it, and $find stops offering it.
    let held = app
        .send_as(
            &me,
            "POST",
            "Appointment/$hold",
            Some(with_resource(appointment(&slots[0], &r.pb))),
            &[],
        )
        .await;
    assert_eq!(held.status, 200, "{}", held.body);
    assert_eq!(held.body["status"], "pending");
    assert_eq!(held.body["start"], at(first).as_str());
    let appt = held.body["id"].as_str().unwrap().to_string();
    assert_eq!(slot_status(app, &slots[0]).await, "busy-tentative");
    let other = app.resident("someone-else");
    let rival = app
        .send_as(
            &app.system(B),
            "POST",
            "Appointment/$book",
            Some(with_resource(appointment(&slots[0], &r.other))),
            &[],
        )
        .await;
    assert_eq!(rival.status, 409, "{}", rival.body);
    assert!(rival.body["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("held for another appointment"));
    let f = app
        .send_as(
            &other,
            "GET",
            &find_path(now, now + 10 * DAY, ""),
            None,
            &[],
        )
        .await;
    assert!(!offered(&f.body).contains(&slots[0]));

    // Hospital A cannot read B's result before the visit is booked; booking opens it.
    let a = app.clinician(A);
    assert_eq!(
        status_as(app, &a, &format!("Observation/{}", r.obs_b)).await,
        403
    );
    let booked = app
        .send_as(
            &me,
            "POST",
            "Appointment/$book",
            Some(params(vec![json!({"name": "appointment-reference", "valueReference": {"reference": format!("Appointment/{appt}")}})])),
            &[],
        )
        .await;
    assert_eq!(booked.status, 200, "{}", booked.body);
    assert_eq!(booked.body["type"], "searchset");
    let b = &booked.body["entry"][0]["resource"];
    assert_eq!(b["id"], appt.as_str());
    assert_eq!(b["status"], "booked");
    assert_eq!(slot_status(app, &slots[0]).await, "busy");
    assert_eq!(
        status_as(app, &a, &format!("Observation/{}", r.obs_b)).await,
        200,
        "open for the visit"
    );
    // The resident sees their appointment; it was written by the pool for them.
    let mine = app
        .send_as(&me, "GET", &format!("Appointment/{appt}"), None, &[])
        .await;
    assert_eq!(mine.status, 200, "{}", mine.body);

    // Cancelled through $book: the slot is free again and the window closes.
    let mut cancel = b.clone();
    cancel["status"] = json!("cancelled");
    let c = app
        .send_as(
            &me,
            "POST",
            "Appointment/$book",
            Some(with_resource(cancel)),
            &[],
        )
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(c.body["entry"][0]["resource"]["status"], "cancelled");
    assert_eq!(slot_status(app, &slots[0]).await, "free");
    assert_eq!(
        status_as(app, &a, &format!("Observation/{}", r.obs_b)).await,
        403
    );
    let f = app
        .send_as(
            &me,
            "GET",
            &find_path(now, now + 10 * DAY, "&_count=1"),
            None,
            &[],
        )
        .await;
    assert_eq!(
        offered(&f.body),
        [slots[0].clone()],
        "first available again"
    );

    // Every step is in the audit trail: the resident's requests and the pool's writes.
    app.flush_audit();
    let trail = app
        .send_as(
            &app.operator(&[hutong_access::principal::Role::Auditor]),
            "GET",
            &format!("AuditEvent?entity=Appointment/{appt}"),
            None,
            &[],
        )
        .await;
    assert!(
        trail.body["total"].as_u64().unwrap_or(0) >= 3,
        "{}",
        trail.body
    );
}

async fn the_family_doctor_share_is_kept_for_referrals(app: &TestApp) {
    let r: Region = region(app).await;
    let now = hutong_fhir::date::now_ms();
    // Ten slots five days out: the 5th and 10th (a-s1-4, a-s1-9) are the reserve.
    let slots = publish(app, now + 5 * DAY).await;
    let me = app.resident(&r.person);
    let f = app
        .send_as(
            &me,
            "GET",
            &find_path(now, now + 10 * DAY, "&_count=20"),
            None,
            &[],
        )
        .await;
    let public = offered(&f.body);
    assert!(
        !public.contains(&slots[4]) && !public.contains(&slots[9]),
        "{public:?}"
    );
    let refused = app
        .send_as(
            &me,
            "POST",
            "Appointment/$book",
            Some(with_resource(appointment(&slots[4], &r.pb))),
            &[],
        )
        .await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    let why = refused.body["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(why.contains("family doctors' share until"), "{why}");
    assert_eq!(refused.body["issue"][0]["code"], "business-rule");

    // The community centre (primary care) sees the reserve, marked, and books from it on
    // its referral — not without one.
    let sc = app.system(C);
    let pc = create_as(app, &sc, patient("c1", Some(ID_NUMBER), "欧阳雪梅")).await;
    let f = app
        .send_as(
            &sc,
            "GET",
            &find_path(now, now + 10 * DAY, "&_count=20"),
            None,
            &[],
        )
        .await;
    assert_eq!(f.body["total"], 10, "{}", f.body);
    let reserved = f.body["entry"][4]["resource"]["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["url"] == "https://hutong.dev/fhir/StructureDefinition/family-doctor-share")
        .cloned();
    assert!(reserved.is_some(), "{}", f.body["entry"][4]);
    let no_referral = app
        .send_as(
            &sc,
            "POST",
            "Appointment/$book",
            Some(with_resource(appointment(&slots[4], &pc))),
            &[],
        )
        .await;
    assert_eq!(no_referral.status, 409, "{}", no_referral.body);
    let referral = create_as(
        app,
        &sc,
        json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005", "display": "Patient referral"}]}],
            "subject": {"reference": format!("Patient/{pc}")}, "reasonCode": [{"text": "血压控制不佳，转上级医院"}]}),
    )
    .await;
    let mut a = appointment(&slots[4], &pc);
    a["basedOn"] = json!([{"reference": format!("ServiceRequest/{referral}")}]);
    let ok = app
        .send_as(
            &sc,
            "POST",
            "Appointment/$book",
            Some(with_resource(a.clone())),
            &[],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    // A hospital's referral is no family doctor's: B may not take the other reserved slot.
    let sb = app.system(B);
    let rb = create_as(
        app,
        &sb,
        json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
            "subject": {"reference": format!("Patient/{}", r.pb)}}),
    )
    .await;
    let mut hb = appointment(&slots[9], &r.pb);
    hb["basedOn"] = json!([{"reference": format!("ServiceRequest/{rb}")}]);
    let h = app
        .send_as(
            &sb,
            "POST",
            "Appointment/$book",
            Some(with_resource(hb)),
            &[],
        )
        .await;
    assert_eq!(h.status, 409, "{}", h.body);

    // Within the release time (48 h) a reserved slot is anyone's.
    let soon = now + DAY;
    let sched = app
        .send_as(
            &app.system(A),
            "PUT",
            "Schedule/a-s2",
            Some(json!({"resourceType": "Schedule", "id": "a-s2", "actor": [{"reference": "PractitionerRole/a-dr1-role"}]})),
            &[],
        )
        .await;
    assert!(sched.status < 300, "{}", sched.body);
    for (i, id) in ["a-s2-0", "a-s2-1", "a-s2-2", "a-s2-3", "a-s2-4"]
        .iter()
        .enumerate()
    {
        let start = soon + i as i64 * 20 * 60_000;
        let put = app
            .send_as(
                &app.system(A),
                "PUT",
                &format!("Slot/{id}"),
                Some(json!({"resourceType": "Slot", "id": id, "schedule": {"reference": "Schedule/a-s2"},
                    "status": "free", "start": at(start), "end": at(start + 20 * 60_000)})),
                &[],
            )
            .await;
        assert!(put.status < 300, "{}", put.body);
    }
    let late = app
        .send_as(
            &me,
            "POST",
            "Appointment/$book",
            Some(with_resource(appointment("a-s2-4", &r.pb))),
            &[],
        )
        .await;
    assert_eq!(
        late.status, 200,
        "released to the public pool: {}",
        late.body
    );
}

async fn concurrent_bookers_get_one_slot_each_and_the_rest_409(app: &TestApp) {
    let r: Region = region(app).await;
    let now = hutong_fhir::date::now_ms();
    let slots = publish(app, now + 5 * DAY).await;
    // Sixteen booking clients of hospital A race for four public slots.
    let wanted: Vec<String> = slots.iter().take(4).cloned().collect();
    let token = app.system(A);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let slot = wanted[i % 4].clone();
        let body = with_resource(appointment(&slot, &r.pa));
        let client = app.client.clone();
        let url = format!("{}/Appointment/$book", app.base);
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/fhir+json")
                .body(serde_json::to_vec(&body).unwrap())
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let v: Value = res.json().await.unwrap();
            (slot, status, v)
        }));
    }
    let mut won = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        let (slot, status, v) = t.await.unwrap();
        match status {
            200 => *won.entry(slot).or_default() += 1,
            409 => assert_eq!(v["resourceType"], "OperationOutcome", "{v}"),
            other => panic!("{other}: {v}"),
        }
    }
    assert_eq!(won.len(), 4, "{won:?}");
    assert!(won.values().all(|n| *n == 1), "{won:?}");
    // The store agrees: one booked Appointment per slot.
    for s in &wanted {
        let found = app
            .get(&format!("Appointment?slot=Slot/{s}&status=booked"))
            .await;
        assert_eq!(found.body["total"], 1, "{s}: {}", found.body);
        assert_eq!(slot_status(app, s).await, "busy");
    }
}

async fn every_write_path_keeps_the_pool_true(app: &TestApp) {
    let r: Region = region(app).await;
    let now = hutong_fhir::date::now_ms();
    let slots = publish(app, now + 5 * DAY).await;
    let sa = app.system(A);
    // A plain POST of a booked Appointment takes the slot as $book would…
    let mut a = appointment(&slots[1], &r.pa);
    a["status"] = json!("booked");
    a["start"] = json!(at(now + 5 * DAY + 20 * 60_000));
    a["end"] = json!(at(now + 5 * DAY + 40 * 60_000));
    let made = app
        .send_as(&sa, "POST", "Appointment", Some(a.clone()), &[])
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    assert_eq!(slot_status(app, &slots[1]).await, "busy");
    // …and a second one on the same slot is refused, nothing written.
    let twice = app
        .send_as(&sa, "POST", "Appointment", Some(a.clone()), &[])
        .await;
    assert_eq!(twice.status, 409, "{}", twice.body);
    let n = app
        .get(&format!("Appointment?slot=Slot/{}", slots[1]))
        .await;
    assert_eq!(n.body["total"], 1);
    // A booked slot is not deleted from under its appointment.
    let del = app
        .send_as(&sa, "DELETE", &format!("Slot/{}", slots[1]), None, &[])
        .await;
    assert_eq!(del.status, 409, "{}", del.body);
    // Rescheduling (the Appointment updated to another slot) moves the booking.
    let id = made.body["id"].as_str().unwrap();
    let mut moved = made.body.clone();
    moved["slot"] = json!([{"reference": format!("Slot/{}", slots[2])}]);
    let m = app
        .send_as(
            &sa,
            "PUT",
            &format!("Appointment/{id}"),
            Some(moved.clone()),
            &[],
        )
        .await;
    assert_eq!(m.status, 200, "{}", m.body);
    assert_eq!(slot_status(app, &slots[1]).await, "free");
    assert_eq!(slot_status(app, &slots[2]).await, "busy");
    // A no-show keeps the slot used; cancelling by update frees it.
    moved["status"] = json!("noshow");
    let ns = app
        .send_as(
            &sa,
            "PUT",
            &format!("Appointment/{id}"),
            Some(moved.clone()),
            &[],
        )
        .await;
    assert_eq!(ns.status, 200, "{}", ns.body);
    assert_eq!(slot_status(app, &slots[2]).await, "busy");
    moved["status"] = json!("cancelled");
    let c = app
        .send_as(&sa, "PUT", &format!("Appointment/{id}"), Some(moved), &[])
        .await;
    assert_eq!(c.status, 200, "{}", c.body);
    assert_eq!(slot_status(app, &slots[2]).await, "free");
    // The institution closes a slot (the doctor is away): $find stops offering it; reopens.
    let mut s3 = app.get(&format!("Slot/{}", slots[3])).await.body;
    s3["status"] = json!("busy-unavailable");
    let closed = app
        .send_as(
            &sa,
            "PUT",
            &format!("Slot/{}", slots[3]),
            Some(s3.clone()),
            &[],
        )
        .await;
    assert_eq!(closed.status, 200, "{}", closed.body);
    let me = app.resident(&r.person);
    let f = app
        .send_as(
            &me,
            "GET",
            &find_path(now, now + 10 * DAY, "&_count=20"),
            None,
            &[],
        )
        .await;
    assert!(!offered(&f.body).contains(&slots[3]));
    let book = app
        .send_as(
            &me,
            "POST",
            "Appointment/$book",
            Some(with_resource(appointment(&slots[3], &r.pb))),
            &[],
        )
        .await;
    assert_eq!(book.status, 409, "{}", book.body);
    assert!(book.body["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("closed"));
    // An unbooked slot is deleted, and leaves the pool.
    let del = app
        .send_as(&sa, "DELETE", &format!("Slot/{}", slots[6]), None, &[])
        .await;
    assert!(del.status < 300, "{}", del.body);
    let f = app
        .send_as(
            &me,
            "GET",
            &find_path(now, now + 10 * DAY, "&_count=20"),
            None,
            &[],
        )
        .await;
    assert!(!offered(&f.body).contains(&slots[6]));
}

async fn bad_scheduling_requests_are_refused_precisely(app: &TestApp) {
    let r: Region = region(app).await;
    let now = hutong_fhir::date::now_ms();
    let slots = publish(app, now + 5 * DAY).await;
    let me = app.resident(&r.person);
    let no_start = app
        .send_as(
            &me,
            "GET",
            &format!("Appointment/$find?end={}", enc(&at(now))),
            None,
            &[],
        )
        .await;
    assert_eq!(no_start.status, 400, "{}", no_start.body);
    assert_eq!(no_start.body["issue"][0]["expression"][0], "start");
    let backwards = app
        .send_as(&me, "GET", &find_path(now + DAY, now, ""), None, &[])
        .await;
    assert_eq!(backwards.status, 400, "{}", backwards.body);
    let not_a_date = app
        .send_as(
            &me,
            "GET",
            "Appointment/$find?start=tomorrow&end=2030-01-01",
            None,
            &[],
        )
        .await;
    assert_eq!(not_a_date.status, 400);
    assert!(not_a_date.body["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("tomorrow"));
    let unknown = app
        .send_as(
            &me,
            "POST",
            "Appointment/$hold",
            Some(with_resource(appointment("nope", &r.pb))),
            &[],
        )
        .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let mut no_patient = appointment(&slots[0], &r.pb);
    no_patient["participant"] = json!([]);
    let np = app
        .send_as(
            &me,
            "POST",
            "Appointment/$book",
            Some(with_resource(no_patient)),
            &[],
        )
        .await;
    assert_eq!(np.status, 400, "{}", np.body);
    // Someone else's record: a resident books only for themselves (or whom they are proxy
    // for), and is not told whether the patient exists.
    let stranger = app
        .send_as(
            &app.resident("p-nobody"),
            "POST",
            "Appointment/$book",
            Some(with_resource(appointment(&slots[0], &r.pb))),
            &[],
        )
        .await;
    assert!(
        stranger.status == 403 || stranger.status == 404,
        "{}",
        stranger.body
    );
    let op = app
        .send_as(
            &app.operator(&[hutong_access::principal::Role::Administrator]),
            "POST",
            "Appointment/$book",
            Some(with_resource(appointment(&slots[0], &r.pb))),
            &[],
        )
        .await;
    assert_eq!(op.status, 403, "{}", op.body);
    let not_params = app
        .send_as(
            &me,
            "POST",
            "Appointment/$book",
            Some(appointment(&slots[0], &r.pb)),
            &[],
        )
        .await;
    assert_eq!(not_params.status, 400);
    // Nothing of the refusals was written: the slot is still free and no Appointment exists.
    assert_eq!(slot_status(app, &slots[0]).await, "free");
    assert_eq!(app.get("Appointment").await.body["total"], 0);
}
