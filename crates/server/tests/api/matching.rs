use serde_json::{json, Value};

use crate::helpers::spawn_app;

fn patient(name: &str, birth: &str, id_number: Option<&str>, phone: &str) -> Value {
    let mut p = json!({
        "resourceType": "Patient",
        "name": [{"text": name}],
        "gender": "female",
        "birthDate": birth,
        "telecom": [{"system": "phone", "value": phone}],
        "address": [{"use": "home", "line": ["文三路1号"], "district": "西湖区", "city": "杭州市"}]
    });
    if let Some(i) = id_number {
        p["identifier"] = json!([{"system": "urn:oid:2.16.156.10011.1.3", "value": i}]);
    }
    p
}

fn params(p: Value, extra: &[(&str, Value)]) -> Value {
    let mut ps = vec![json!({"name": "resource", "resource": p})];
    for (k, v) in extra {
        let mut x = json!({"name": k});
        x.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        ps.push(x);
    }
    json!({"resourceType": "Parameters", "parameter": ps})
}

#[tokio::test]
async fn patient_match_finds_the_same_person_across_scripts_and_sees_every_write_path() {
    let app = spawn_app().await;
    let id = hutong_cn::idcard::make(330106, 1990, 4, 8, 22);
    let twin = hutong_cn::idcard::make(330106, 1990, 4, 8, 24);
    let me = app
        .send(
            "POST",
            "Patient",
            Some(patient("欧阳雪", "1990-04-08", Some(&id), "13800001111")),
            &[],
        )
        .await;
    assert_eq!(me.status, 201);
    let me_id = me.body["id"].as_str().unwrap().to_string();
    app.send(
        "POST",
        "Patient",
        Some(patient("欧阳霜", "1990-04-08", Some(&twin), "13800001111")),
        &[],
    )
    .await;
    app.send(
        "POST",
        "Patient",
        Some(patient("李娜", "1975-01-02", None, "13900002222")),
        &[],
    )
    .await;

    // Another institution registered her in pinyin, without an ID number.
    let probe = patient("Ouyang Xue", "1990-04-08", None, "13800001111");
    let r = app
        .send("POST", "Patient/$match", Some(params(probe, &[])), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["type"], "searchset");
    let entries = r.body["entry"].as_array().unwrap();
    assert_eq!(entries[0]["resource"]["id"], me_id.as_str(), "{}", r.body);
    let search = &entries[0]["search"];
    assert_eq!(search["mode"], "match");
    assert!(search["score"].as_f64().unwrap() > 0.9);
    assert_eq!(
        search["extension"][0]["url"],
        "http://hl7.org/fhir/StructureDefinition/match-grade"
    );
    assert!(entries
        .iter()
        .all(|e| e["resource"]["name"][0]["text"] != "李娜"));
    assert!(
        entries
            .iter()
            .all(|e| e["resource"]["name"][0]["text"] != "欧阳霜"),
        "the twin is not a match"
    );
    assert_eq!(r.body["total"], entries.len());

    // A Patient written by a transaction is seen by the next $match; a deleted one is gone.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("张伟", "1980-01-01", None, "13700003333"), "request": {"method": "POST", "url": "Patient"}}]});
    let t = app.send("POST", "", Some(bundle), &[]).await;
    assert_eq!(t.status, 200, "{}", t.body);
    let r = app
        .send(
            "POST",
            "Patient/$match",
            Some(params(
                patient("張偉", "1980-01-01", None, "13700003333"),
                &[],
            )),
            &[],
        )
        .await;
    let found: Vec<String> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(found.len(), 1, "{}", r.body);
    assert_eq!(
        app.send("DELETE", &format!("Patient/{}", found[0]), None, &[])
            .await
            .status,
        200
    );
    let r = app
        .send(
            "POST",
            "Patient/$match",
            Some(params(
                patient("張偉", "1980-01-01", None, "13700003333"),
                &[],
            )),
            &[],
        )
        .await;
    assert!(r.body["entry"].as_array().unwrap().is_empty(), "{}", r.body);

    // onlyCertainMatches and count.
    let probe = patient("欧阳雪", "1990-04-08", Some(&id), "13800001111");
    let r = app
        .send(
            "POST",
            "Patient/$match",
            Some(params(
                probe,
                &[
                    ("onlyCertainMatches", json!({"valueBoolean": true})),
                    ("count", json!({"valueInteger": 1})),
                ],
            )),
            &[],
        )
        .await;
    let entries = r.body["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["search"]["extension"][0]["valueCode"], "certain");
}

#[tokio::test]
async fn patient_match_rejects_bad_input_with_an_outcome() {
    let app = spawn_app().await;
    for (body, expect) in [
        (json!({"resourceType": "Patient"}), "Parameters"),
        (
            json!({"resourceType": "Parameters", "parameter": []}),
            "'resource'",
        ),
        (
            json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {"resourceType": "Observation"}}]}),
            "must be a Patient",
        ),
        (
            params(
                patient("李娜", "1975-01-02", None, "139"),
                &[("count", json!({"valueInteger": 0}))],
            ),
            "count",
        ),
    ] {
        let r = app.send("POST", "Patient/$match", Some(body), &[]).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.body["resourceType"], "OperationOutcome");
        assert!(r.diagnostics().contains(expect), "{}", r.diagnostics());
    }
    let r = app
        .raw(
            "POST",
            "Patient/$match",
            b"{not json".to_vec(),
            &[("Content-Type", "application/fhir+json")],
        )
        .await;
    assert_eq!(r.status, 400);
}
