//! Two-way referral (双向转诊) over HTTP: the referring institution refers, the resident
//! consents (or does not), the receiving institution accepts or rejects, the family doctor
//! books the visit from the reserved share, the receiver completes it — each step visible to
//! both sides, nothing visible to the receiver before consent, and the access ending with a
//! referral that ends early.

use serde_json::{json, Value};

use crate::access::{
    code_in, create_as, outbox, params, patient, region, status_as, Region, A, B, C, ICD,
    ID_NUMBER, PHONE,
};
use crate::helpers::TestApp;
use crate::pool::{appointment, publish, with_resource};

crate::on_both_with!(super::settings;
    an_upward_referral_goes_from_consent_to_completion,
    a_refused_consent_or_a_rejection_opens_nothing,
    referrals_not_accepted_in_time_are_escalated,
    bad_referrals_are_refused_precisely,
);

fn settings(s: &mut hutong_server::Settings) {
    s.pool.referral_accept_ms = 50;
}

const DAY: i64 = 86_400_000;

fn refer(patient: &str, to: &str, method: &str) -> Value {
    params(vec![
        json!({"name": "patient", "valueReference": {"reference": format!("Patient/{patient}")}}),
        json!({"name": "performer", "valueReference": {"reference": format!("Organization/{to}")}}),
        json!({"name": "direction", "valueCode": "up"}),
        json!({"name": "reason", "valueString": "血压控制不佳，请上级医院调整用药"}),
        json!({"name": "method", "valueCode": method}),
        json!({"name": "days", "valueInteger": 30}),
    ])
}

fn step(action: &str, extra: Vec<Value>) -> Value {
    let mut p = vec![json!({"name": "action", "valueCode": action})];
    p.extend(extra);
    params(p)
}

fn state(task: &Value) -> String {
    task["businessStatus"]["coding"][0]["code"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// The community centre's own record of the resident, with a hypertension diagnosis.
async fn at_c(app: &TestApp) -> String {
    let sc = app.system(C);
    let pc = create_as(app, &sc, patient("c1", Some(ID_NUMBER), "欧阳雪梅")).await;
    create_as(
        app,
        &sc,
        json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{pc}")},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "code": {"coding": [{"system": ICD, "code": "I10", "display": "原发性高血压"}], "text": "原发性高血压"}}),
    )
    .await;
    // Linked to the resident's person before the referral asks for it.
    let _ = app.get(&format!("Person?link=Patient/{pc}")).await;
    pc
}

async fn an_upward_referral_goes_from_consent_to_completion(app: &TestApp) {
    let r: Region = region(app).await;
    let now = hutong_fhir::date::now_ms();
    let slots = publish(app, now + 5 * DAY).await;
    let pc = at_c(app).await;
    let (sc, sa) = (app.system(C), app.system(A));
    let made = app
        .send_as(
            &sc,
            "POST",
            "ServiceRequest/$refer",
            Some(refer(&pc, "a", "sms")),
            &[],
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let task = made.body["id"].as_str().unwrap().to_string();
    assert_eq!(state(&made.body), "awaiting-consent");
    assert_eq!(made.body["status"], "requested");
    let consent = made.body["contained"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Before consent the hospital sees nothing of it.
    let inbox = app
        .send_as(&sa, "GET", "$referrals?box=in", None, &[])
        .await;
    assert_eq!(inbox.status, 200, "{}", inbox.body);
    assert_eq!(inbox.body["entry"].as_array().unwrap().len(), 0);
    assert!(status_as(app, &sa, &format!("Task/{task}")).await >= 403);
    let early = app
        .send_as(
            &sa,
            "POST",
            &format!("Task/{task}/$referral"),
            Some(step("accept", vec![])),
            &[],
        )
        .await;
    assert_eq!(early.status, 404, "{}", early.body);
    // The resident reads the code out to the family doctor, who enters it.
    let sms = outbox(app, PHONE).await;
    let last = sms.last().unwrap();
    assert!(last.contains("上转") && last.contains("甲医院"), "{last}");
    let code = code_in(last);
    let ok = app
        .send_as(
            &sc,
            "POST",
            &format!("Consent/{consent}/$verify-code"),
            Some(params(vec![json!({"name": "code", "valueString": code})])),
            &[],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let t = app
        .send_as(&sc, "GET", &format!("Task/{task}"), None, &[])
        .await;
    assert_eq!(state(&t.body), "requested", "{}", t.body);
    // Now the hospital has it in its inbox, reads the letter and the record.
    let inbox = app
        .send_as(&sa, "GET", "$referrals?box=in", None, &[])
        .await;
    assert_eq!(
        inbox.body["entry"].as_array().unwrap().len(),
        1,
        "{}",
        inbox.body
    );
    let sr_ref = inbox.body["entry"][0]["resource"]["focus"]["reference"]
        .as_str()
        .unwrap()
        .to_string();
    let sr = app.send_as(&sa, "GET", &sr_ref, None, &[]).await;
    assert_eq!(sr.status, 200, "{}", sr.body);
    let letter = sr.body["supportingInfo"][0]["reference"]
        .as_str()
        .unwrap()
        .to_string();
    let l = app.send_as(&sa, "GET", &letter, None, &[]).await;
    assert_eq!(l.status, 200, "{}", l.body);
    assert!(l.body.to_string().contains("原发性高血压"), "{}", l.body);
    assert_eq!(
        status_as(app, &sa, &format!("Observation/{}", r.obs_b)).await,
        200,
        "the record is open for the referral"
    );
    // The referrer cannot accept its own referral; the hospital can.
    let wrong = app
        .send_as(
            &sc,
            "POST",
            &format!("Task/{task}/$referral"),
            Some(step("accept", vec![])),
            &[],
        )
        .await;
    assert_eq!(wrong.status, 403, "{}", wrong.body);
    let acc = app
        .send_as(
            &sa,
            "POST",
            &format!("Task/{task}/$referral"),
            Some(step("accept", vec![])),
            &[],
        )
        .await;
    assert_eq!(acc.status, 200, "{}", acc.body);
    assert_eq!(state(&acc.body), "accepted");
    // The family doctor books the visit from the reserved share, on the referral.
    let sr_id = sr_ref.trim_start_matches("ServiceRequest/");
    let mut a = appointment(&slots[4], &pc);
    a["basedOn"] = json!([{"reference": format!("ServiceRequest/{sr_id}")}]);
    let booked = app
        .send_as(
            &sc,
            "POST",
            "Appointment/$book",
            Some(with_resource(a)),
            &[],
        )
        .await;
    assert_eq!(booked.status, 200, "{}", booked.body);
    let appt = booked.body["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sch = app
        .send_as(&sc, "POST", &format!("Task/{task}/$referral"),
            Some(step("schedule", vec![json!({"name": "appointment", "valueReference": {"reference": format!("Appointment/{appt}")}})])), &[])
        .await;
    assert_eq!(sch.status, 200, "{}", sch.body);
    assert_eq!(state(&sch.body), "scheduled");
    // The hospital sees the patient and completes the referral with its encounter.
    let enc = create_as(
        app,
        &sa,
        json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{}", r.pa)}}),
    )
    .await;
    let done = app
        .send_as(&sa, "POST", &format!("Task/{task}/$referral"),
            Some(step("complete", vec![json!({"name": "encounter", "valueReference": {"reference": format!("Encounter/{enc}")}})])), &[])
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    // The referrer follows every step: its Task says completed, with the appointment and
    // the encounter; its request is completed.
    let t = app
        .send_as(&sc, "GET", &format!("Task/{task}"), None, &[])
        .await;
    assert_eq!(t.body["status"], "completed");
    assert_eq!(t.body["output"].as_array().unwrap().len(), 2, "{}", t.body);
    let out = app
        .send_as(&sc, "GET", "$referrals?box=out", None, &[])
        .await;
    assert_eq!(state(&out.body["entry"][0]["resource"]), "completed");
    let sr = app.send_as(&sc, "GET", &sr_ref, None, &[]).await;
    assert_eq!(sr.body["status"], "completed");
    // The Task changes only through the referral's steps.
    let mut edited = t.body.clone();
    edited["status"] = json!("cancelled");
    let put = app
        .send_as(&sc, "PUT", &format!("Task/{task}"), Some(edited), &[])
        .await;
    assert_eq!(put.status, 403, "{}", put.body);
    let again = app
        .send_as(
            &sc,
            "POST",
            &format!("Task/{task}/$referral"),
            Some(step(
                "cancel",
                vec![json!({"name": "reason", "valueString": "x"})],
            )),
            &[],
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
}

async fn a_refused_consent_or_a_rejection_opens_nothing(app: &TestApp) {
    let r: Region = region(app).await;
    publish(app, hutong_fhir::date::now_ms() + 5 * DAY).await;
    let pc = at_c(app).await;
    let (sc, sa) = (app.system(C), app.system(A));
    let me = app.resident(&r.person);
    // Asked in the app; the resident refuses: the referral is cancelled, nothing opens.
    let made = app
        .send_as(
            &sc,
            "POST",
            "ServiceRequest/$refer",
            Some(refer(&pc, "a", "app")),
            &[],
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let task = made.body["id"].as_str().unwrap().to_string();
    let consent = made.body["contained"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deny = app
        .send_as(
            &me,
            "POST",
            &format!("Consent/{consent}/$deny"),
            Some(params(vec![])),
            &[],
        )
        .await;
    assert_eq!(deny.status, 200, "{}", deny.body);
    let t = app
        .send_as(&sc, "GET", &format!("Task/{task}"), None, &[])
        .await;
    assert_eq!(state(&t.body), "cancelled", "{}", t.body);
    assert!(t.body["statusReason"]["text"]
        .as_str()
        .unwrap()
        .contains("consent"));
    assert_eq!(
        app.send_as(&sa, "GET", "$referrals?box=in", None, &[])
            .await
            .body["entry"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        status_as(app, &sa, &format!("Observation/{}", r.obs_b)).await,
        403
    );
    // Approved, then rejected by the hospital with a reason: the access it opened ends.
    let made = app
        .send_as(
            &sc,
            "POST",
            "ServiceRequest/$refer",
            Some(refer(&pc, "a", "app")),
            &[],
        )
        .await;
    let task = made.body["id"].as_str().unwrap().to_string();
    let consent = made.body["contained"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ok = app
        .send_as(
            &me,
            "POST",
            &format!("Consent/{consent}/$approve"),
            Some(params(vec![])),
            &[],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        status_as(app, &sa, &format!("Observation/{}", r.obs_b)).await,
        200
    );
    let no_reason = app
        .send_as(
            &sa,
            "POST",
            &format!("Task/{task}/$referral"),
            Some(step("reject", vec![])),
            &[],
        )
        .await;
    assert_eq!(no_reason.status, 400, "{}", no_reason.body);
    let rej = app
        .send_as(
            &sa,
            "POST",
            &format!("Task/{task}/$referral"),
            Some(step(
                "reject",
                vec![json!({"name": "reason", "valueString": "本院心内科号源已满，建议转乙医院"})],
            )),
            &[],
        )
        .await;
    assert_eq!(rej.status, 200, "{}", rej.body);
    assert_eq!(state(&rej.body), "rejected");
    let t = app
        .send_as(&sc, "GET", &format!("Task/{task}"), None, &[])
        .await;
    assert_eq!(
        t.body["statusReason"]["text"],
        "本院心内科号源已满，建议转乙医院"
    );
    assert_eq!(
        status_as(app, &sa, &format!("Observation/{}", r.obs_b)).await,
        403,
        "the referral's access ended with it"
    );
}

async fn referrals_not_accepted_in_time_are_escalated(app: &TestApp) {
    let r: Region = region(app).await;
    publish(app, hutong_fhir::date::now_ms() + 5 * DAY).await;
    let pc = at_c(app).await;
    let (sc, sa) = (app.system(C), app.system(A));
    let made = app
        .send_as(
            &sc,
            "POST",
            "ServiceRequest/$refer",
            Some(refer(&pc, "a", "app")),
            &[],
        )
        .await;
    let task = made.body["id"].as_str().unwrap().to_string();
    let consent = made.body["contained"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.send_as(
        &app.resident(&r.person),
        "POST",
        &format!("Consent/{consent}/$approve"),
        Some(params(vec![])),
        &[],
    )
    .await;
    std::thread::sleep(std::time::Duration::from_millis(80));
    let swept = app.post("$referrals/$sweep", json!({})).await;
    assert_eq!(swept.status, 200, "{}", swept.body);
    assert_eq!(swept.body["escalated"], 1);
    let overdue = app
        .send_as(&sa, "GET", "$referrals?box=in&overdue=true", None, &[])
        .await;
    let e = &overdue.body["entry"][0]["resource"];
    assert_eq!(e["id"], task.as_str());
    assert_eq!(e["priority"], "urgent");
    assert!(e["note"][0]["text"].as_str().unwrap().contains("超时"));
    // Once only.
    assert_eq!(
        app.post("$referrals/$sweep", json!({})).await.body["escalated"],
        0
    );
    let not_platform = app
        .send_as(&sa, "POST", "$referrals/$sweep", Some(json!({})), &[])
        .await;
    assert_eq!(not_platform.status, 403);
}

async fn bad_referrals_are_refused_precisely(app: &TestApp) {
    let r: Region = region(app).await;
    publish(app, hutong_fhir::date::now_ms() + 5 * DAY).await;
    let pc = at_c(app).await;
    let sc = app.system(C);
    let mut no_direction = refer(&pc, "a", "sms");
    no_direction["parameter"]
        .as_array_mut()
        .unwrap()
        .retain(|p| p["name"] != "direction");
    let e = app
        .send_as(
            &sc,
            "POST",
            "ServiceRequest/$refer",
            Some(no_direction),
            &[],
        )
        .await;
    assert_eq!(e.status, 400, "{}", e.body);
    assert!(e.body["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("direction"));
    let e = app
        .send_as(
            &sc,
            "POST",
            "ServiceRequest/$refer",
            Some(refer(&pc, "nowhere", "sms")),
            &[],
        )
        .await;
    assert_eq!(e.status, 404, "{}", e.body);
    let e = app
        .send_as(
            &sc,
            "POST",
            "ServiceRequest/$refer",
            Some(refer(&pc, "c", "sms")),
            &[],
        )
        .await;
    assert_eq!(e.status, 422, "{}", e.body);
    // A patient the referrer may not read.
    let e = app
        .send_as(
            &sc,
            "POST",
            "ServiceRequest/$refer",
            Some(refer(&r.pb, "a", "sms")),
            &[],
        )
        .await;
    assert!(e.status == 403 || e.status == 404, "{}", e.body);
    let resident = app
        .send_as(
            &app.resident(&r.person),
            "POST",
            "ServiceRequest/$refer",
            Some(refer(&pc, "a", "sms")),
            &[],
        )
        .await;
    assert_eq!(resident.status, 403);
    // An institution party to nothing learns nothing.
    let made = app
        .send_as(
            &sc,
            "POST",
            "ServiceRequest/$refer",
            Some(refer(&pc, "a", "app")),
            &[],
        )
        .await;
    let task = made.body["id"].as_str().unwrap();
    let b = app
        .send_as(
            &app.system(B),
            "POST",
            &format!("Task/{task}/$referral"),
            Some(step(
                "cancel",
                vec![json!({"name": "reason", "valueString": "x"})],
            )),
            &[],
        )
        .await;
    assert_eq!(b.status, 404, "{}", b.body);
    let bad = app
        .send_as(
            &sc,
            "POST",
            &format!("Task/{task}/$referral"),
            Some(step("finish", vec![])),
            &[],
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let cancel = app
        .send_as(
            &sc,
            "POST",
            &format!("Task/{task}/$referral"),
            Some(step(
                "cancel",
                vec![json!({"name": "reason", "valueString": "患者改变主意"})],
            )),
            &[],
        )
        .await;
    assert_eq!(cancel.status, 200, "{}", cancel.body);
    assert_eq!(state(&cancel.body), "cancelled");
    // Its consent request is withdrawn with it.
    let consent = made.body["contained"][0]["id"].as_str().unwrap();
    let c = app.get(&format!("Consent/{consent}")).await;
    assert_ne!(c.body["status"], "proposed", "{}", c.body);
}
