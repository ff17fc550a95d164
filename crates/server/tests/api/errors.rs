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
