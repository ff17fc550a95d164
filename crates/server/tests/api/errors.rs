use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn bad_input_gets_a_precise_outcome_and_the_server_keeps_serving() {
    let app = spawn_app().await;
    let ct = [("content-type", "application/fhir+json")];
    let r = app
        .raw(
            "POST",
            "Patient",
            b"{\n \"resourceType\": \"Patient\",\n oops\n}".to_vec(),
            &ct,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(
        r.diagnostics().contains("line 3, column 2"),
        "{}",
        r.diagnostics()
    );
    let r = app
        .post("Patient", json!({"resourceType": "Observation"}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.body["issue"][0]["expression"][0], "resourceType");
    let r = app.get("Nonsense/1").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["issue"][0]["code"], "not-found");
    let r = app.get("Patient/bad$id").await;
    assert_eq!(r.status, 400);
    let r = app
        .put("Patient/a", json!({"resourceType": "Patient", "id": "b"}))
        .await;
    assert_eq!(r.status, 400);
    let r = app.post("Patient", json!([1, 2])).await;
    assert_eq!(r.status, 400);
    let r = app
        .post("Patient", json!({"resourceType": "Patient", "meta": "x"}))
        .await;
    assert_eq!(r.status, 400);
    let r = app
        .raw(
            "POST",
            "Patient",
            b"<Patient/>".to_vec(),
            &[("content-type", "application/xml")],
        )
        .await;
    assert_eq!(r.status, 415);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    let big = vec![b' '; 2 * 1024 * 1024];
    let r = app.raw("POST", "Patient", big, &ct).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.body["issue"][0]["code"], "too-long");
    let r = app.get("Observation?date=2024-13-45").await;
    assert_eq!(r.status, 400);
    let r = app.get("Patient/nope").await;
    assert_eq!(r.status, 404);
    // Nothing was stored by any of that, and the server still answers.
    assert_eq!(app.get("Patient?_summary=count").await.body["total"], 0);
    assert_eq!(app.get("metadata").await.status, 200);
}

/// A Patient id whose storage shard another patient holds (a 64-bit hash collision, chance or
/// crafted) is refused with 409 — the whole transaction, the other patient not named — and
/// the server goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_colliding_patient_id_is_refused_whole() {
    let app = spawn_app().await;
    let own = app
        .put(
            "Patient/own",
            json!({"resourceType": "Patient", "id": "own", "gender": "female"}),
        )
        .await;
    assert_eq!(own.status, 201, "{}", own.body);
    // Stand-in for a collision: "forged"'s shard already belongs to another patient.
    tokio::task::block_in_place(|| {
        app.engine
            .store
            .exec_admin(
                "INSERT INTO shard_owner (shard, patient) VALUES (?, 'someone-else')",
                &[hutong_store::sql::Val::Int(hutong_store::shard_of(
                    "forged",
                ))],
            )
            .unwrap()
    });
    let obs = |patient: &str| {
        json!({"resource": {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "effectiveDateTime": "2026-11-30T08:00:00+08:00",
            "subject": {"reference": format!("Patient/{patient}")}},
            "request": {"method": "POST", "url": "Observation"}})
    };
    let r = app
        .post(
            "",
            json!({"resourceType": "Bundle", "type": "transaction",
                "entry": [obs("own"), obs("forged"),
                    {"resource": {"resourceType": "Patient", "id": "forged", "gender": "male"},
                     "request": {"method": "PUT", "url": "Patient/forged"}}]}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    let why = r.diagnostics();
    assert!(
        why.contains("Patient/forged") && !why.contains("someone-else"),
        "{why}"
    );
    assert_eq!(
        app.get("Observation?_summary=count").await.body["total"],
        0,
        "nothing of the transaction was kept"
    );
    assert_eq!(app.get("Patient/forged").await.status, 404);
    let r = app
        .post("Observation", obs("own")["resource"].clone())
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
}
