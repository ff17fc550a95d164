use serde_json::json;

use crate::helpers::{spawn_app, TestApp};

async fn seed(app: &TestApp) {
    app.put("Patient/p1", json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "王", "given": ["芳"]}], "birthDate": "1970-05-01"})).await;
    app.put("Patient/p2", json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "李"}], "birthDate": "2001-01-01"})).await;
    for i in 0..5 {
        app.put(&format!("Observation/o{i}"), json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final",
            "subject": {"reference": if i < 4 { "Patient/p1" } else { "Patient/p2" }},
            "code": {"coding": [{"system": "http://loinc.org", "code": if i % 2 == 0 { "8480-6" } else { "8462-4" }}]},
            "effectiveDateTime": format!("2024-0{}-01", i + 1),
            "valueQuantity": {"value": 120 + i, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}})).await;
    }
}

#[tokio::test]
async fn search_paging_includes_and_handling() {
    let app = spawn_app().await;
    seed(&app).await;
    let r = app.get("Observation?code=http://loinc.org|8480-6").await;
    assert_eq!(r.ids(), ["o0", "o2", "o4"]);
    assert_eq!(r.body["total"], 3);
    let r = app
        .get("Observation?subject:Patient.name=王&date=ge2024-02&_sort=-date")
        .await;
    let order: Vec<&str> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["o3", "o2", "o1"]);
    let r = app
        .get("Patient?_has:Observation:subject:value-quantity=gt123")
        .await;
    assert_eq!(r.ids(), ["p2"]);
    // Paging: follow next links until the end, every result exactly once.
    let mut seen = Vec::new();
    let mut url = format!("{}/Observation?_count=2&_sort=_id", app.base);
    loop {
        let page = app.get(&url).await;
        for e in page.body["entry"].as_array().into_iter().flatten() {
            seen.push(e["resource"]["id"].as_str().unwrap().to_string());
        }
        match page.body["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
        {
            Some(l) => url = l["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ["o0", "o1", "o2", "o3", "o4"]);
    let r = app
        .get("Observation?_id=o1&_include=Observation:subject")
        .await;
    let modes: Vec<&str> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["search"]["mode"].as_str().unwrap())
        .collect();
    assert_eq!(modes, ["match", "include"]);
    let r = app
        .get("Patient?_id=p2&_revinclude=Observation:subject")
        .await;
    assert_eq!(r.body["entry"].as_array().unwrap().len(), 2);
    // POST _search is the same search.
    let r = app
        .raw(
            "POST",
            "Observation/_search",
            b"code=8462-4".to_vec(),
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .await;
    assert_eq!(r.ids(), ["o1", "o3"]);
    // Unknown parameters: ignored and reported, or refused when strict.
    let r = app.get("Observation?bogus=1&code=8462-4").await;
    assert_eq!(r.status, 200);
    let last = r.body["entry"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["search"]["mode"], "outcome");
    assert!(last["resource"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("bogus"));
    let r = app
        .send(
            "GET",
            "Observation?bogus=1",
            None,
            &[("Prefer", "handling=strict")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.diagnostics().contains("bogus"));
    let r = app.get("Observation?_summary=count").await;
    assert_eq!(r.body["total"], 5);
    assert!(r.body["entry"].as_array().unwrap().is_empty());
    let r = app.get("Observation?_id=o1&_elements=status").await;
    let res = &r.body["entry"][0]["resource"];
    assert_eq!(res["status"], "final");
    assert!(res.get("code").is_none());
    assert!(app
        .get("Observation?_total=none")
        .await
        .body
        .get("total")
        .is_none());
}

#[tokio::test]
async fn compartment_and_everything() {
    let app = spawn_app().await;
    seed(&app).await;
    let r = app.get("Patient/p1/Observation?code=8480-6").await;
    assert_eq!(r.ids(), ["o0", "o2"]);
    let r = app.get("Patient/p1/$everything").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["total"], 5);
    let r = app.get("Patient/p1/$everything?_count=2").await;
    assert_eq!(r.body["entry"].as_array().unwrap().len(), 2);
    assert!(r.body["link"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["relation"] == "next"));
    let r = app
        .get("Patient/p1/$everything?start=2024-03-01&_type=Observation")
        .await;
    assert_eq!(r.body["total"], 2);
    assert_eq!(app.get("Patient/zzz/$everything").await.status, 404);
}

#[tokio::test]
async fn bulk_export_kick_off_poll_and_download() {
    let app = spawn_app().await;
    seed(&app).await;
    let r = app.get("$export").await;
    assert_eq!(r.status, 400);
    let r = app
        .send(
            "GET",
            "$export?_type=Patient,Observation",
            None,
            &[("Prefer", "respond-async")],
        )
        .await;
    assert_eq!(r.status, 202);
    let status_url = r.header("content-location").unwrap();
    let manifest = loop {
        let s = app.get(&status_url).await;
        if s.status == 200 {
            break s.body;
        }
        assert_eq!(s.status, 202);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let outputs = manifest["output"].as_array().unwrap();
    assert_eq!(outputs.len(), 2);
    let obs = outputs.iter().find(|o| o["type"] == "Observation").unwrap();
    assert_eq!(obs["count"], 5);
    assert_eq!(manifest["requiresAccessToken"], true);
    let anonymous = app
        .client
        .get(obs["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401, "export files need the token");
    let text = app
        .client
        .get(obs["url"].as_str().unwrap())
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text.lines().count(), 5);
    assert!(text
        .lines()
        .all(
            |l| serde_json::from_str::<serde_json::Value>(l).unwrap()["resourceType"]
                == "Observation"
        ));
    let r = app
        .send(
            "GET",
            "Patient/$export",
            None,
            &[("Prefer", "respond-async")],
        )
        .await;
    assert_eq!(r.status, 202);
}
