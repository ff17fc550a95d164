use serde_json::json;

use crate::helpers::spawn_app;

fn tx_bundle() -> serde_json::Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:obs-1", "resource": {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "subject": {"reference": "urn:uuid:pat-1"},
            "performer": [{"reference": "Organization?identifier=urn:uscc|91440101MA5CXXXX1X"}]},
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:pat-1", "resource": {"resourceType": "Patient",
            "identifier": [{"system": "urn:mrn", "value": "T1"}]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|T1"}},
        {"request": {"method": "GET", "url": "Patient?identifier=urn:mrn|T1"}}
    ]})
}

#[tokio::test]
async fn transactions_resolve_references_and_are_atomic() {
    let app = spawn_app().await;
    app.post(
        "Organization",
        json!({"resourceType": "Organization",
        "identifier": [{"system": "urn:uscc", "value": "91440101MA5CXXXX1X"}]}),
    )
    .await;
    let r = app.post("", tx_bundle()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["type"], "transaction-response");
    let entries = r.body["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    assert_eq!(entries[1]["response"]["status"], "201 Created");
    // The GET runs last and sees the transaction's own writes.
    assert_eq!(entries[2]["resource"]["total"], 1);
    let obs_loc = entries[0]["response"]["location"].as_str().unwrap();
    let obs_id = obs_loc.split('/').nth(1).unwrap();
    let obs = app.get(&format!("Observation/{obs_id}")).await;
    let pat_loc = entries[1]["response"]["location"].as_str().unwrap();
    let pat_id = pat_loc.split('/').nth(1).unwrap();
    assert_eq!(
        obs.body["subject"]["reference"],
        format!("Patient/{pat_id}")
    );
    assert!(obs.body["performer"][0]["reference"]
        .as_str()
        .unwrap()
        .starts_with("Organization/"));
    // Again: ifNoneExist finds the patient, so no second patient appears.
    let again = app.post("", tx_bundle()).await;
    assert_eq!(again.body["entry"][1]["response"]["status"], "200 OK");
    assert_eq!(app.get("Patient?_summary=count").await.body["total"], 1);
    assert_eq!(app.get("Observation?_summary=count").await.body["total"], 2);
    // A failing entry rolls back everything before it.
    let bad = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "female"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
            "subject": {"reference": "Patient?identifier=urn:mrn|NOPE"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = app.post("", bad).await;
    assert_eq!(r.status, 404);
    assert!(
        r.diagnostics().contains("Bundle entry 1"),
        "{}",
        r.diagnostics()
    );
    assert_eq!(app.get("Patient?gender=female").await.body["total"], 0);
}

#[tokio::test]
async fn batches_report_each_entry() {
    let app = spawn_app().await;
    let b = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/none"}}
    ]});
    let r = app.post("", b).await;
    assert_eq!(r.body["type"], "batch-response");
    let e = r.body["entry"].as_array().unwrap();
    assert_eq!(e[0]["response"]["status"], "201 Created");
    assert_eq!(e[1]["response"]["status"], "400 Bad Request");
    assert_eq!(
        e[1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(e[2]["response"]["status"], "404 Not Found");
    assert_eq!(app.get("Patient?_summary=count").await.body["total"], 1);
    let r = app
        .post("", json!({"resourceType": "Bundle", "type": "collection"}))
        .await;
    assert_eq!(r.status, 400);
}
