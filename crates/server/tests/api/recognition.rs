//! Result mutual recognition at order time (检查检验结果互认) over HTTP: recent results of
//! qualified institutions are offered instead of a repeat — in full when the clinician may
//! read them, only counted when not — and the decision is recorded and counted.

use serde_json::{json, Value};

use crate::access::{create_as, grant_by_sms, params, region, Region, A, B};
use crate::helpers::TestApp;

crate::on_both_with!(super::settings;
    recent_results_of_qualified_institutions_are_offered_instead_of_a_repeat,
    bad_recognition_checks_are_refused_precisely,
);

fn settings(_: &mut hutong_server::Settings) {}

const DAY: i64 = 86_400_000;

fn lab(patient: &str, code: &str, value: f64, unit: &str, days_ago: i64) -> Value {
    let t = hutong_fhir::date::format_instant(hutong_fhir::date::now_ms() - days_ago * DAY);
    json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": t,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})
}

/// B is qualified (passed external quality assessment); A is not.
async fn qualify_b(app: &TestApp) {
    let r = app
        .put(
            "Organization/b",
            json!({"resourceType": "Organization", "id": "b", "name": "乙医院",
                "identifier": [{"system": "https://hutong.dev/sid/uscc", "value": "91330100B"}],
                "extension": [{"url": "https://hutong.dev/fhir/StructureDefinition/recognition-qualified", "valueBoolean": true}]}),
        )
        .await;
    assert!(r.status < 300, "{}", r.body);
}

fn order(patient: &str, codes: &[&str]) -> Value {
    let mut p = vec![
        json!({"name": "patient", "valueReference": {"reference": format!("Patient/{patient}")}}),
    ];
    for c in codes {
        p.push(json!({"name": "code", "valueCoding": {"system": "http://loinc.org", "code": c}}));
    }
    params(p)
}

fn item<'a>(v: &'a Value, code: &str) -> &'a Value {
    v["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "item" && p["part"][0]["valueCoding"]["code"] == code)
        .unwrap_or_else(|| panic!("no item {code} in {v}"))
}

fn part<'a>(item: &'a Value, name: &str) -> Vec<&'a Value> {
    item["part"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == name)
        .collect()
}

async fn recent_results_of_qualified_institutions_are_offered_instead_of_a_repeat(app: &TestApp) {
    let r: Region = region(app).await;
    qualify_b(app).await;
    let sa = app.system(A);
    let sb = app.system(B);
    // At B (qualified): an HbA1c ten days ago and one 100 days ago (past its 90 days); a
    // creatinine last week.
    let recent = create_as(app, &sb, lab(&r.pb, "4548-4", 7.2, "%", 10)).await;
    create_as(app, &sb, lab(&r.pb, "4548-4", 6.8, "%", 100)).await;
    create_as(app, &sb, lab(&r.pb, "14682-9", 88.0, "umol/L", 7)).await;
    // At A (not qualified): a glucose two days ago — A's own, so A may use it.
    create_as(app, &sa, lab(&r.pa, "2345-7", 6.1, "mmol/L", 2)).await;

    let dr = app.clinician(A);
    let check = app
        .send_as(
            &dr,
            "POST",
            "ServiceRequest/$check-recognition",
            Some(order(&r.pa, &["4548-4", "2345-7", "8480-6", "24627-2"])),
            &[],
        )
        .await;
    assert_eq!(check.status, 200, "{}", check.body);
    let v = &check.body;
    // B's HbA1c exists but A may not read it: counted, never shown.
    let a1c = item(v, "4548-4");
    assert_eq!(part(a1c, "outcome")[0]["valueCode"], "ask-consent", "{a1c}");
    assert_eq!(part(a1c, "unreadable")[0]["valueInteger"], 1);
    assert!(part(a1c, "result").is_empty());
    assert!(
        !v.to_string().contains(&recent),
        "the unreadable result's id leaks: {v}"
    );
    assert!(!v.to_string().contains("7.2"));
    // A's own glucose.
    let glu = item(v, "2345-7");
    assert_eq!(part(glu, "outcome")[0]["valueCode"], "recognizable");
    assert_eq!(part(glu, "result").len(), 1);
    assert_eq!(item(v, "8480-6")["part"][1]["valueCode"], "not-listed");
    assert_eq!(part(item(v, "24627-2"), "outcome")[0]["valueCode"], "none");
    let check_id = v["parameter"][0]["valueString"]
        .as_str()
        .unwrap()
        .to_string();

    // With the resident's consent, B's HbA1c (the recent one only) is shown and used.
    grant_by_sms(app, &r, &[]).await;
    let again = app
        .send_as(
            &dr,
            "POST",
            "ServiceRequest/$check-recognition",
            Some(params(vec![json!({"name": "order", "resource": {"resourceType": "ServiceRequest",
                "status": "draft", "intent": "order", "subject": {"reference": format!("Patient/{}", r.pa)},
                "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]}}})])),
            &[],
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    let a1c = item(&again.body, "4548-4");
    assert_eq!(
        part(a1c, "outcome")[0]["valueCode"],
        "recognizable",
        "{a1c}"
    );
    let shown = part(a1c, "result");
    assert_eq!(shown.len(), 1, "the 100-day-old one is past its period");
    assert_eq!(shown[0]["resource"]["id"], recent.as_str());
    let second = again.body["parameter"][0]["valueString"]
        .as_str()
        .unwrap()
        .to_string();

    // Decisions: the first check's glucose was used; the second's HbA1c was used too. An
    // item with nothing to use cannot be "used".
    let decide = |check: &str, decision: &str, code: &str| {
        params(vec![
            json!({"name": "check", "valueString": check}),
            json!({"name": "decision", "valueCode": decision}),
            json!({"name": "code", "valueCoding": {"system": "http://loinc.org", "code": code}}),
        ])
    };
    let d = app
        .send_as(
            &dr,
            "POST",
            "ServiceRequest/$recognition-decision",
            Some(decide(&check_id, "used-existing", "2345-7")),
            &[],
        )
        .await;
    assert_eq!(d.status, 200, "{}", d.body);
    let bad = app
        .send_as(
            &dr,
            "POST",
            "ServiceRequest/$recognition-decision",
            Some(decide(&check_id, "used-existing", "24627-2")),
            &[],
        )
        .await;
    assert_eq!(bad.status, 409, "{}", bad.body);
    let d = app
        .send_as(
            &dr,
            "POST",
            "ServiceRequest/$recognition-decision",
            Some(decide(&second, "used-existing", "4548-4")),
            &[],
        )
        .await;
    assert_eq!(d.status, 200, "{}", d.body);
    // Another institution cannot decide A's check.
    let other = app
        .send_as(
            &sb,
            "POST",
            "ServiceRequest/$recognition-decision",
            Some(decide(&second, "ordered", "4548-4")),
            &[],
        )
        .await;
    assert_eq!(other.status, 404, "{}", other.body);

    // The figures: A made two checks of listed items (5 items), 2 repeats avoided.
    let stats = app.send_as(&dr, "GET", "$recognition", None, &[]).await;
    assert_eq!(stats.status, 200, "{}", stats.body);
    let mine = &stats.body["institutions"][0];
    assert_eq!(mine["institution"], A);
    assert_eq!(mine["items"], 4, "{mine}");
    assert_eq!(mine["avoided"], 2, "{mine}");
    assert_eq!(mine["askConsent"], 1, "{mine}");
    // The reads the checks showed are in the audit trail as reads by A's clinician.
    app.flush_audit();
    let trail = app
        .send_as(
            &app.operator(&[hutong_access::principal::Role::Auditor]),
            "GET",
            &format!("AuditEvent?entity=Observation/{recent}"),
            None,
            &[],
        )
        .await;
    assert!(
        trail.body["total"].as_u64().unwrap_or(0) >= 1,
        "{}",
        trail.body
    );
}

async fn bad_recognition_checks_are_refused_precisely(app: &TestApp) {
    let r: Region = region(app).await;
    let dr = app.clinician(A);
    // A patient A may not see: refused as a read would be, nothing said about their results.
    let hidden = app
        .send_as(
            &dr,
            "POST",
            "ServiceRequest/$check-recognition",
            Some(order(&r.other, &["4548-4"])),
            &[],
        )
        .await;
    assert!(
        hidden.status == 403 || hidden.status == 404,
        "{}",
        hidden.body
    );
    let no_code = app
        .send_as(
            &dr,
            "POST",
            "ServiceRequest/$check-recognition",
            Some(order(&r.pa, &[])),
            &[],
        )
        .await;
    assert_eq!(no_code.status, 400, "{}", no_code.body);
    assert!(no_code.body["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("what is ordered"));
    let no_patient = app
        .send_as(
            &dr,
            "POST",
            "ServiceRequest/$check-recognition",
            Some(params(vec![json!({"name": "code", "valueCoding": {"system": "http://loinc.org", "code": "4548-4"}})])),
            &[],
        )
        .await;
    assert_eq!(no_patient.status, 400, "{}", no_patient.body);
    let resident = app
        .send_as(
            &app.resident(&r.person),
            "POST",
            "ServiceRequest/$check-recognition",
            Some(order(&r.pa, &["4548-4"])),
            &[],
        )
        .await;
    assert_eq!(resident.status, 403, "{}", resident.body);
    let bad_decision = app
        .send_as(
            &dr,
            "POST",
            "ServiceRequest/$recognition-decision",
            Some(params(vec![
                json!({"name": "check", "valueString": "x"}),
                json!({"name": "decision", "valueCode": "maybe"}),
            ])),
            &[],
        )
        .await;
    assert_eq!(bad_decision.status, 400, "{}", bad_decision.body);
}
