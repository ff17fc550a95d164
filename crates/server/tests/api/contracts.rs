//! Family-doctor contracts and follow-up lists over HTTP: a resident signs online (or the
//! centre records a contract), the centre gets a standing authorization while the contract
//! lasts, and its follow-up worklist is computed from every institution's diagnoses and
//! follow-up visits.

use serde_json::{json, Value};

use crate::access::{
    create_as, params, patient, region, status_as, Region, A, B, C, ICD, ID_NUMBER,
};
use crate::helpers::TestApp;
use crate::pool::publish;

crate::on_both_with!(super::settings;
    a_contract_opens_the_record_and_puts_the_resident_on_the_list,
    a_downward_referral_puts_the_patient_on_the_centres_list,
    bad_contract_requests_are_refused_precisely,
);

fn settings(_: &mut hutong_server::Settings) {}

const DAY: i64 = 86_400_000;

fn follow_up(patient: &str, days_ago: i64) -> Value {
    let t = hutong_fhir::date::format_instant(hutong_fhir::date::now_ms() - days_ago * DAY);
    json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [{"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/encounter-type", "code": "chronic-followup", "display": "慢病随访"}]}],
        "subject": {"reference": format!("Patient/{patient}")},
        "period": {"start": t, "end": t}})
}

fn hypertension(patient: &str) -> Value {
    json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{patient}")},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": ICD, "code": "I10"}], "text": "原发性高血压"}})
}

fn sign(org: &str, package: &str) -> Value {
    params(vec![
        json!({"name": "organization", "valueReference": {"reference": format!("Organization/{org}")}}),
        json!({"name": "package", "valueCode": package}),
    ])
}

async fn list(app: &TestApp, token: &str, q: &str) -> Value {
    let r = app
        .send_as(token, "GET", &format!("$follow-ups{q}"), None, &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

async fn a_contract_opens_the_record_and_puts_the_resident_on_the_list(app: &TestApp) {
    let r: Region = region(app).await;
    publish(app, hutong_fhir::date::now_ms() + 5 * DAY).await; // the centres' kinds
    let (sa, sb, sc) = (app.system(A), app.system(B), app.system(C));
    let pc = create_as(app, &sc, patient("c1", Some(ID_NUMBER), "欧阳雪梅")).await;
    let _ = app.get(&format!("Person?link=Patient/{pc}")).await;
    let me = app.resident(&r.person);
    let dr_c = app.clinician(C);
    assert_eq!(
        status_as(app, &dr_c, &format!("Observation/{}", r.obs_b)).await,
        403
    );
    // Signed online: the centre holds a standing authorization.
    let signed = app
        .send_as(
            &me,
            "POST",
            &format!("Person/{}/$sign-contract", r.person),
            Some(sign("c", "hypertension")),
            &[],
        )
        .await;
    assert_eq!(signed.status, 201, "{}", signed.body);
    let episode = signed.body["id"].as_str().unwrap().to_string();
    assert_eq!(
        signed.body["patient"]["reference"],
        format!("Patient/{pc}").as_str(),
        "filed under the centre's own record"
    );
    assert_eq!(
        status_as(app, &dr_c, &format!("Observation/{}", r.obs_b)).await,
        200
    );
    let grant = app
        .send_as(
            &me,
            "GET",
            &format!("Consent/contract-{episode}"),
            None,
            &[],
        )
        .await;
    assert_eq!(
        grant.status, 200,
        "the resident sees the authorization: {}",
        grant.body
    );
    // No diagnosis yet: not on the list.
    assert_eq!(list(app, &sc, "").await["total"], 0);
    // The hospital diagnoses hypertension; the centre followed up 100 days ago: overdue.
    create_as(app, &sb, hypertension(&r.pb)).await;
    create_as(app, &sc, follow_up(&pc, 100)).await;
    let l = list(app, &sc, "").await;
    assert_eq!(l["total"], 1, "{l}");
    let e = &l["entries"][0];
    assert_eq!(e["status"], "overdue", "{e}");
    assert_eq!(e["conditions"][0], "hypertension");
    assert_eq!(e["name"], "欧阳雪梅");
    assert_eq!(l["counts"]["overdue"], 1);
    // The centre is told once a day, in its app inbox.
    let pushed = app.post("$follow-ups/$push", json!({})).await;
    assert_eq!(pushed.status, 200, "{}", pushed.body);
    assert_eq!(pushed.body["told"], 1, "{}", pushed.body);
    let out = crate::access::outbox(app, C).await;
    assert!(out.iter().any(|m| m.contains("逾期未随访 1 人")), "{out:?}");
    assert_eq!(
        app.post("$follow-ups/$push", json!({})).await.body["told"],
        0,
        "once a day"
    );
    // A follow-up at another institution counts: done, two in the year.
    create_as(app, &sa, follow_up(&r.pa, 20)).await;
    let l = list(app, &sc, "").await;
    let e = &l["entries"][0];
    assert_eq!(
        (e["status"].as_str(), e["followUpsInYear"].as_u64()),
        (Some("done"), Some(2)),
        "{e}"
    );
    assert_eq!(l["teams"][0]["completionRate"], 0.0);
    assert_eq!(list(app, &sc, "?status=overdue").await["total"], 0);
    // Exported.
    let csv = app
        .client
        .get(format!("{}/$follow-ups?format=csv", app.base))
        .bearer_auth(&sc)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    let text = csv.text().await.unwrap();
    assert!(
        text.starts_with("patient,name,") && text.contains("欧阳雪梅") && text.contains("done"),
        "{text}"
    );
    // Another centre has no list of this resident.
    assert_eq!(list(app, &sa, "").await["total"], 0);
    // Renewed by the centre: a year more.
    let renewed = app
        .send_as(
            &sc,
            "POST",
            &format!("EpisodeOfCare/{episode}/$renew"),
            Some(params(vec![])),
            &[],
        )
        .await;
    assert_eq!(renewed.status, 200, "{}", renewed.body);
    assert!(
        renewed.body["period"]["end"].as_str().unwrap()
            > signed.body["period"]["end"].as_str().unwrap()
    );
    // Ended by the resident: the access ends, the list empties.
    let ended = app
        .send_as(
            &me,
            "POST",
            &format!("EpisodeOfCare/{episode}/$end"),
            Some(params(vec![
                json!({"name": "reason", "valueString": "搬家"}),
            ])),
            &[],
        )
        .await;
    assert_eq!(ended.status, 200, "{}", ended.body);
    assert_eq!(ended.body["status"], "finished");
    assert_eq!(
        status_as(app, &dr_c, &format!("Observation/{}", r.obs_b)).await,
        403
    );
    assert_eq!(list(app, &sc, "").await["total"], 0);
    // Signed at the centre: its system records the contract like any record.
    let now = hutong_fhir::date::now_ms();
    let at_centre = json!({"resourceType": "EpisodeOfCare", "status": "active",
        "type": [{"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/family-doctor-contract", "code": "basic"}]}],
        "patient": {"reference": format!("Patient/{pc}")},
        "managingOrganization": {"reference": "Organization/c"},
        "period": {"start": hutong_fhir::date::format_instant(now), "end": hutong_fhir::date::format_instant(now + 365 * DAY)}});
    let made = app
        .send_as(&sc, "POST", "EpisodeOfCare", Some(at_centre), &[])
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    assert_eq!(
        status_as(app, &dr_c, &format!("Observation/{}", r.obs_b)).await,
        200
    );
    assert_eq!(list(app, &sc, "").await["total"], 1);
}

async fn bad_contract_requests_are_refused_precisely(app: &TestApp) {
    let r: Region = region(app).await;
    publish(app, hutong_fhir::date::now_ms() + 5 * DAY).await;
    let me = app.resident(&r.person);
    let hospital = app
        .send_as(
            &me,
            "POST",
            &format!("Person/{}/$sign-contract", r.person),
            Some(sign("a", "basic")),
            &[],
        )
        .await;
    assert_eq!(hospital.status, 422, "{}", hospital.body);
    let package = app
        .send_as(
            &me,
            "POST",
            &format!("Person/{}/$sign-contract", r.person),
            Some(sign("c", "gold")),
            &[],
        )
        .await;
    assert_eq!(package.status, 400, "{}", package.body);
    let other = app
        .send_as(
            &app.resident("someone-else"),
            "POST",
            &format!("Person/{}/$sign-contract", r.person),
            Some(sign("c", "basic")),
            &[],
        )
        .await;
    assert_eq!(other.status, 403, "{}", other.body);
    let ok = app
        .send_as(
            &me,
            "POST",
            &format!("Person/{}/$sign-contract", r.person),
            Some(sign("c", "basic")),
            &[],
        )
        .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    let twice = app
        .send_as(
            &me,
            "POST",
            &format!("Person/{}/$sign-contract", r.person),
            Some(sign("c", "basic")),
            &[],
        )
        .await;
    assert_eq!(twice.status, 409, "{}", twice.body);
    let episode = ok.body["id"].as_str().unwrap();
    let no_reason = app
        .send_as(
            &me,
            "POST",
            &format!("EpisodeOfCare/{episode}/$end"),
            Some(params(vec![])),
            &[],
        )
        .await;
    assert_eq!(no_reason.status, 400, "{}", no_reason.body);
    let stranger = app
        .send_as(
            &app.system(B),
            "POST",
            &format!("EpisodeOfCare/{episode}/$renew"),
            Some(params(vec![])),
            &[],
        )
        .await;
    assert_eq!(stranger.status, 404, "{}", stranger.body);
    let resident_list = app.send_as(&me, "GET", "$follow-ups", None, &[]).await;
    assert_eq!(resident_list.status, 403);
    let bad_status = app
        .send_as(&app.system(C), "GET", "$follow-ups?status=late", None, &[])
        .await;
    assert_eq!(bad_status.status, 400);
}

async fn a_downward_referral_puts_the_patient_on_the_centres_list(app: &TestApp) {
    let r: Region = region(app).await;
    publish(app, hutong_fhir::date::now_ms() + 5 * DAY).await;
    let (sa, sc) = (app.system(A), app.system(C));
    create_as(app, &sa, hypertension(&r.pa)).await;
    // The hospital refers its stable patient down to the community centre.
    let made = app
        .send_as(&sa, "POST", "ServiceRequest/$refer", Some(params(vec![
            json!({"name": "patient", "valueReference": {"reference": format!("Patient/{}", r.pa)}}),
            json!({"name": "performer", "valueReference": {"reference": "Organization/c"}}),
            json!({"name": "direction", "valueCode": "down"}),
            json!({"name": "reason", "valueString": "血压已控制稳定，转回社区随访管理"}),
            json!({"name": "method", "valueCode": "app"}),
        ])), &[])
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let task = made.body["id"].as_str().unwrap().to_string();
    let consent = made.body["contained"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(list(app, &sc, "").await["total"], 0);
    let ok = app
        .send_as(
            &app.resident(&r.person),
            "POST",
            &format!("Consent/{consent}/$approve"),
            Some(params(vec![])),
            &[],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(list(app, &sc, "").await["total"], 0, "not yet taken on");
    let acc = app
        .send_as(
            &sc,
            "POST",
            &format!("Task/{task}/$referral"),
            Some(params(vec![
                json!({"name": "action", "valueCode": "accept"}),
            ])),
            &[],
        )
        .await;
    assert_eq!(acc.status, 200, "{}", acc.body);
    let l = list(app, &sc, "").await;
    assert_eq!(l["total"], 1, "{l}");
    assert_eq!(l["entries"][0]["via"], format!("Task/{task}").as_str());
    assert_eq!(l["entries"][0]["conditions"][0], "hypertension");
}
