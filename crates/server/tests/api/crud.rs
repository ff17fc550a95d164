use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn create_read_update_delete_history() {
    let app = spawn_app().await;
    let r = app
        .send(
            "POST",
            "Patient",
            Some(json!({"resourceType": "Patient", "gender": "male"})),
            &[("X-Hutong-Source", "urn:org:hospital-1")],
        )
        .await;
    assert_eq!(r.status, 201);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert_eq!(r.header("etag").unwrap(), "W/\"1\"");
    assert!(r
        .header("location")
        .unwrap()
        .ends_with(&format!("/Patient/{id}/_history/1")));
    // Provenance: submitting institution and collection time on every read.
    let got = app.get(&format!("Patient/{id}")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["meta"]["source"], "urn:org:hospital-1");
    assert_eq!(
        got.body["meta"]["extension"][0]["url"],
        hutong_fhir::vocab::COLLECTED_URL
    );
    assert!(got.body["meta"]["extension"][0]["valueInstant"].is_string());
    assert!(got.header("last-modified").is_some());
    assert!(got
        .header("content-type")
        .unwrap()
        .starts_with("application/fhir+json"));

    // Conditional read: the current ETag gets 304.
    let same = app
        .send(
            "GET",
            &format!("Patient/{id}"),
            None,
            &[("If-None-Match", "W/\"1\"")],
        )
        .await;
    assert_eq!(same.status, 304);
    let xml = app
        .send(
            "GET",
            &format!("Patient/{id}"),
            None,
            &[("Accept", "application/fhir+xml")],
        )
        .await;
    assert_eq!(xml.status, 406);
    assert_eq!(xml.body["resourceType"], "OperationOutcome");
    assert_eq!(
        app.get(&format!("Patient/{id}?_format=xml")).await.status,
        406
    );
    assert_eq!(
        app.get(&format!("Patient/{id}?_format=json")).await.status,
        200
    );
    let upd = app
        .put(
            &format!("Patient/{id}"),
            json!({"resourceType": "Patient", "id": id, "gender": "female"}),
        )
        .await;
    assert_eq!(upd.status, 200);
    assert_eq!(upd.body["meta"]["versionId"], "2");
    assert_eq!(upd.body["meta"]["source"], "urn:test:default");
    let v1 = app.get(&format!("Patient/{id}/_history/1")).await;
    assert_eq!(v1.body["gender"], "male");
    let del = app
        .send("DELETE", &format!("Patient/{id}"), None, &[])
        .await;
    assert_eq!(del.status, 200);
    assert_eq!(app.get(&format!("Patient/{id}")).await.status, 410);
    let h = app.get(&format!("Patient/{id}/_history")).await;
    assert_eq!(h.body["type"], "history");
    assert_eq!(h.body["total"], 3);
    assert_eq!(h.body["entry"][0]["request"]["method"], "DELETE");
    assert_eq!(h.body["entry"][2]["resource"]["gender"], "male");
    assert_eq!(app.get("Patient/_history").await.body["total"], 3);
    assert_eq!(app.get("_history").await.body["total"], 3);
    // Deleting again is a no-op.
    assert_eq!(
        app.send("DELETE", &format!("Patient/{id}"), None, &[])
            .await
            .status,
        204
    );
}

#[tokio::test]
async fn create_on_update_etags_and_prefer() {
    let app = spawn_app().await;
    let r = app
        .put(
            "Patient/mine-1",
            json!({"resourceType": "Patient", "id": "mine-1"}),
        )
        .await;
    assert_eq!(r.status, 201);
    let stale = app
        .send(
            "PUT",
            "Patient/mine-1",
            Some(json!({"resourceType": "Patient", "id": "mine-1", "active": true})),
            &[("If-Match", "W/\"9\"")],
        )
        .await;
    assert_eq!(stale.status, 412);
    assert!(stale.diagnostics().contains("expected version 9"));
    let ok = app
        .send(
            "PUT",
            "Patient/mine-1",
            Some(json!({"resourceType": "Patient", "id": "mine-1", "active": true})),
            &[("If-Match", "W/\"1\""), ("Prefer", "return=minimal")],
        )
        .await;
    assert_eq!(ok.status, 200);
    assert!(ok.body.is_null());
    assert_eq!(ok.header("etag").unwrap(), "W/\"2\"");
    let oo = app
        .send(
            "POST",
            "Patient",
            Some(json!({"resourceType": "Patient"})),
            &[("Prefer", "return=OperationOutcome")],
        )
        .await;
    assert_eq!(oo.status, 201);
    assert_eq!(oo.body["resourceType"], "OperationOutcome");
}

#[tokio::test]
async fn conditional_create_update_delete_and_patch() {
    let app = spawn_app().await;
    let p =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "A1"}]});
    let a = app
        .send(
            "POST",
            "Patient",
            Some(p.clone()),
            &[("If-None-Exist", "identifier=urn:mrn|A1")],
        )
        .await;
    assert_eq!(a.status, 201);
    let b = app
        .send(
            "POST",
            "Patient",
            Some(p.clone()),
            &[("If-None-Exist", "identifier=urn:mrn|A1")],
        )
        .await;
    assert_eq!(b.status, 200);
    assert_eq!(a.body["id"], b.body["id"]);
    let id = a.body["id"].as_str().unwrap().to_string();
    let cu = app
        .put("Patient?identifier=urn:mrn|A1", json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "A1"}], "gender": "female"}))
        .await;
    assert_eq!(cu.status, 200);
    assert_eq!(cu.body["id"], id.as_str());
    let created = app.put("Patient?identifier=urn:mrn|B2", json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "B2"}]})).await;
    assert_eq!(created.status, 201);
    // JSON Patch.
    let patch = app
        .raw(
            "PATCH",
            &format!("Patient/{id}"),
            serde_json::to_vec(&json!([{"op": "replace", "path": "/gender", "value": "male"}]))
                .unwrap(),
            &[("content-type", "application/json-patch+json")],
        )
        .await;
    assert_eq!(patch.status, 200);
    assert_eq!(patch.body["gender"], "male");
    assert_eq!(patch.body["meta"]["versionId"], "3");
    let bad_patch = app
        .raw(
            "PATCH",
            &format!("Patient/{id}"),
            serde_json::to_vec(&json!([{"op": "remove", "path": "/nothing/here"}])).unwrap(),
            &[("content-type", "application/json-patch+json")],
        )
        .await;
    assert_eq!(bad_patch.status, 422);
    let cd = app
        .send("DELETE", "Patient?identifier=urn:mrn|B2", None, &[])
        .await;
    assert_eq!(cd.status, 200);
    assert_eq!(
        app.get("Patient?identifier=urn:mrn|B2").await.body["total"],
        0
    );
    // Two matches: a conditional update must refuse.
    app.post(
        "Patient",
        json!({"resourceType": "Patient", "gender": "other"}),
    )
    .await;
    app.post(
        "Patient",
        json!({"resourceType": "Patient", "gender": "other"}),
    )
    .await;
    let many = app
        .put("Patient?gender=other", json!({"resourceType": "Patient"}))
        .await;
    assert_eq!(many.status, 412);
}

#[tokio::test]
async fn every_r4_type_can_be_stored_and_metadata_is_true() {
    // Storage of every type, so the structure rule (which a bare `{"resourceType": t}`
    // fails for types with required elements) is turned off here.
    let app = spawn_app_with(|s| {
        s.rules =
            hutong_quality::Rules::from_toml("[rules.structure]\nseverity = \"off\"\n").unwrap()
    })
    .await;
    let meta = app.get("metadata").await;
    assert_eq!(meta.body["resourceType"], "CapabilityStatement");
    assert_eq!(meta.body["fhirVersion"], "4.0.1");
    let resources = meta.body["rest"][0]["resource"].as_array().unwrap();
    assert!(resources.len() >= 145);
    for t in hutong_fhir::Definitions::get().resource_types() {
        let r = app.post(t, json!({"resourceType": t})).await;
        // The audit trail is the platform's own: never submitted. A Subscription is kept
        // only if the platform can honour it (a bare one names no criteria or channel).
        let want = match t.as_str() {
            "AuditEvent" => 405,
            "Subscription" => 422,
            _ => 201,
        };
        assert_eq!(r.status, want, "{t}: {}", r.body);
    }
    let obs = resources
        .iter()
        .find(|r| r["type"] == "Observation")
        .unwrap();
    let names: Vec<&str> = obs["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"code")
            && names.contains(&"code-value-quantity")
            && names.contains(&"_lastUpdated")
    );
}
