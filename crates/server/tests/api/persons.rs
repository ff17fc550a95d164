//! One person, one record over HTTP: automatic linking, link management with who/why and
//! history, re-evaluation, the review queue, the person's `$everything` and `$summary`, and
//! the PIXm cross-reference.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, Res, TestApp};

const ID_SYSTEM: &str = "urn:oid:2.16.156.10011.1.3";
const HOSPITAL: &str = "urn:hutong:org:hospital";
const CLINIC: &str = "urn:hutong:org:clinic";

struct Pt<'a> {
    name: &'a str,
    birth: &'a str,
    gender: &'a str,
    id_number: Option<&'a str>,
    phone: Option<&'a str>,
    line: Option<&'a str>,
    mrn: (&'a str, &'a str),
}

fn patient(p: &Pt) -> Value {
    let mut ids = vec![json!({"system": p.mrn.0, "value": p.mrn.1})];
    if let Some(i) = p.id_number {
        ids.push(json!({"system": ID_SYSTEM, "value": i}));
    }
    let mut v = json!({
        "resourceType": "Patient",
        "identifier": ids,
        "name": [{"text": p.name}],
        "gender": p.gender,
        "birthDate": p.birth,
    });
    if let Some(ph) = p.phone {
        v["telecom"] = json!([{"system": "phone", "value": ph}]);
    }
    if let Some(l) = p.line {
        v["address"] =
            json!([{"use": "home", "line": [l], "district": "西湖区", "city": "杭州市"}]);
    }
    v
}

/// The test on the embedded default (the index and the persons in memory) and again with
/// the database index (the province configuration: persons read in as decisions need them).
macro_rules! on_both_indexes {
    ($name:ident) => {
        paste_tests!($name);
    };
}

macro_rules! paste_tests {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn memory_index() {
                super::on(stringify!($name), spawn_app().await).await
            }

            #[tokio::test]
            async fn database_index() {
                let app = crate::helpers::spawn_app_with(|s| {
                    s.mpi_index = Some(hutong_link::matching::IndexKind::Database)
                })
                .await;
                super::on(stringify!($name), app).await
            }
        }
    };
}

async fn create(app: &TestApp, source: &str, v: Value) -> String {
    let t = v["resourceType"].as_str().unwrap().to_string();
    let r = app
        .send("POST", &t, Some(v), &[("x-hutong-source", source)])
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

/// The Person a Patient belongs to (searching Persons brings the registry up to date).
async fn person_of(app: &TestApp, patient: &str) -> Value {
    let r = app.get(&format!("Person?link=Patient/{patient}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let entries = r.body["entry"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "one person per patient: {}", r.body);
    entries[0]["resource"].clone()
}

fn linked(person: &Value) -> Vec<String> {
    let mut v: Vec<String> = person["link"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["target"]["reference"].as_str())
        .filter(|r| r.starts_with("Patient/"))
        .map(|r| r.trim_start_matches("Patient/").to_string())
        .collect();
    v.sort();
    v
}

fn who_why(author: &str, reason: &str, extra: Vec<Value>) -> Value {
    let mut p = vec![
        json!({"name": "author", "valueString": author}),
        json!({"name": "reason", "valueString": reason}),
    ];
    p.extend(extra);
    json!({"resourceType": "Parameters", "parameter": p})
}

fn pref(name: &str, reference: &str) -> Value {
    json!({"name": name, "valueReference": {"reference": reference}})
}

async fn op(app: &TestApp, path: &str, body: Value) -> Res {
    app.post(path, body).await
}

on_both_indexes!(each_patient_gets_one_person_with_a_golden_record);
async fn each_patient_gets_one_person_with_a_golden_record_on(app: TestApp) {
    let id = hutong_cn::idcard::make(330106, 1990, 4, 8, 22);
    let a1 = create(
        &app,
        HOSPITAL,
        patient(&Pt {
            name: "欧阳雪",
            birth: "1990-04-08",
            gender: "female",
            id_number: Some(&id),
            phone: Some("13800001111"),
            line: Some("文三路1号"),
            mrn: ("urn:mrn:hospital", "H-1"),
        }),
    )
    .await;
    let a2 = create(
        &app,
        CLINIC,
        patient(&Pt {
            name: "歐陽雪",
            birth: "1990-04-08",
            gender: "female",
            id_number: Some(&id),
            phone: None,
            line: None,
            mrn: ("urn:mrn:clinic", "C-9"),
        }),
    )
    .await;
    let b = create(
        &app,
        CLINIC,
        patient(&Pt {
            name: "李娜",
            birth: "1975-01-02",
            gender: "female",
            id_number: None,
            phone: Some("13900002222"),
            line: None,
            mrn: ("urn:mrn:clinic", "C-10"),
        }),
    )
    .await;
    let p = person_of(&app, &a1).await;
    let mut want = vec![a1.clone(), a2.clone()];
    want.sort();
    assert_eq!(linked(&p), want);
    assert!(p["link"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["assurance"] == "level3"));
    assert_eq!(p["meta"]["source"], "urn:hutong:mpi");
    assert_eq!(
        p["identifier"][0]["value"],
        id.as_str(),
        "the verified ID first"
    );
    assert_eq!(p["birthDate"], "1990-04-08");
    assert_eq!(linked(&person_of(&app, &b).await), vec![b.clone()]);

    // Any institution's MRN finds the person, and with it every source record.
    let r = app
        .get("Person?identifier=urn:mrn:clinic|C-9&_include=Person:link")
        .await;
    assert_eq!(r.status, 200);
    let included: Vec<&str> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert!(included.contains(&a1.as_str()) && included.contains(&a2.as_str()));

    // Why they are together is on record.
    let r = app
        .get(&format!(
            "Provenance?target=Person/{}",
            p["id"].as_str().unwrap()
        ))
        .await;
    let prov = &r.body["entry"][0]["resource"];
    assert_eq!(prov["activity"]["coding"][0]["code"], "link");
    assert!(prov["reason"][0]["text"]
        .as_str()
        .unwrap()
        .contains("certain match"));

    // PIXm: the hospital's MRN cross-references to the clinic's and to the resident ID.
    let r = app
        .get("Patient/$ihe-pix?sourceIdentifier=urn:mrn:hospital|H-1")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let params = r.body["parameter"].as_array().unwrap();
    let has =
        |name: &str, f: &dyn Fn(&Value) -> bool| params.iter().any(|p| p["name"] == name && f(p));
    assert!(has("targetIdentifier", &|p| p["valueIdentifier"]["value"]
        == "C-9"));
    assert!(has("targetIdentifier", &|p| p["valueIdentifier"]["value"]
        == id.as_str()));
    assert!(!has("targetIdentifier", &|p| p["valueIdentifier"]["value"]
        == "H-1"));
    assert!(has("targetId", &|p| p["valueReference"]["reference"]
        == format!("Patient/{a2}")));
    assert!(!has("targetId", &|p| p["valueReference"]["reference"]
        == format!("Patient/{b}")));
    let r = app
        .get("Patient/$ihe-pix?sourceIdentifier=urn:mrn:hospital|H-1&targetSystem=urn:mrn:clinic")
        .await;
    let idents: Vec<&Value> = r.body["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "targetIdentifier")
        .collect();
    assert_eq!(idents.len(), 1);
    assert_eq!(
        app.get("Patient/$ihe-pix?sourceIdentifier=urn:mrn:hospital|nope")
            .await
            .status,
        404
    );
    assert_eq!(
        app.get("Patient/$ihe-pix?sourceIdentifier=H-1")
            .await
            .status,
        400
    );

    // The CapabilityStatement says so.
    let meta = app.get("metadata").await.body;
    let ops = |t: &str| -> Vec<String> {
        meta["rest"][0]["resource"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["type"] == t)
            .unwrap()["operation"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect()
    };
    for op in ["everything", "summary", "link", "unlink", "merge", "split"] {
        assert!(ops("Person").contains(&op.to_string()), "{op}");
    }
    assert!(ops("Patient").contains(&"ihe-pix".to_string()));
    assert!(ops("Task").contains(&"decide".to_string()));

    // A deleted Patient leaves its person.
    assert_eq!(
        app.send("DELETE", &format!("Patient/{a2}"), None, &[])
            .await
            .status,
        200
    );
    assert_eq!(linked(&person_of(&app, &a1).await), vec![a1.clone()]);
}

on_both_indexes!(link_unlink_merge_and_split_are_recorded_and_reversible);
async fn link_unlink_merge_and_split_are_recorded_and_reversible_on(app: TestApp) {
    let mk = |name: &'static str, birth: &'static str, mrn: &'static str, phone: &'static str| {
        patient(&Pt {
            name,
            birth,
            gender: "male",
            id_number: None,
            phone: Some(phone),
            line: None,
            mrn: ("urn:mrn:hospital", mrn),
        })
    };
    let a = create(
        &app,
        HOSPITAL,
        mk("王建国", "1950-03-03", "1", "13700000001"),
    )
    .await;
    let b = create(&app, CLINIC, mk("赵小军", "1953-06-10", "2", "13700000002")).await;
    let pa = person_of(&app, &a).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pb = person_of(&app, &b).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(pa, pb);

    // Why is required (who is the signed-in principal).
    let r = op(
        &app,
        &format!("Person/{pa}/$merge"),
        json!({"resourceType": "Parameters", "parameter": [pref("source", &format!("Person/{pb}"))]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.diagnostics().contains("reason"));

    // Merge: one person with both records; the other retired, pointing at the survivor.
    let r = op(
        &app,
        &format!("Person/{pa}/$merge"),
        who_why(
            "steward 李",
            "same man, confirmed by phone",
            vec![pref("source", &format!("Person/{pb}"))],
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(linked(&person_of(&app, &a).await), both);
    let retired = app.get(&format!("Person/{pb}")).await.body;
    assert_eq!(retired["active"], false);
    assert!(retired["link"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["target"]["reference"] == format!("Person/{pa}")));
    // A retired person cannot take part in another change.
    let r = op(
        &app,
        &format!("Person/{pb}/$link"),
        who_why("x", "y", vec![pref("patient", &format!("Patient/{a}"))]),
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(r.diagnostics().contains("merged into"));

    // Split undoes the merge: b goes back into its old person.
    let r = op(
        &app,
        &format!("Person/{pa}/$split"),
        who_why(
            "steward 李",
            "merged by mistake",
            vec![
                pref("patient", &format!("Patient/{b}")),
                pref("into", &format!("Person/{pb}")),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(linked(&person_of(&app, &a).await), vec![a.clone()]);
    let back = person_of(&app, &b).await;
    assert_eq!(back["id"], pb.as_str());
    assert_eq!(back["active"], true);

    // Link and unlink.
    let r = op(
        &app,
        &format!("Person/{pa}/$link"),
        who_why(
            "steward 王",
            "same ID card seen at the desk",
            vec![pref("patient", &format!("Patient/{b}"))],
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let p = person_of(&app, &b).await;
    assert_eq!(p["id"], pa.as_str());
    assert!(p["link"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["target"]["reference"] == format!("Patient/{b}") && l["assurance"] == "level4"));
    let r = op(
        &app,
        &format!("Person/{pa}/$unlink"),
        who_why(
            "steward 王",
            "wrong card",
            vec![pref("patient", &format!("Patient/{b}"))],
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let own = person_of(&app, &b).await;
    assert_ne!(own["id"], pa.as_str());
    // Unlinked by a person, it stays where it was put even when its record changes.
    let mut v = app.get(&format!("Patient/{b}")).await.body;
    v["name"] = json!([{"text": "王建国"}]);
    v["birthDate"] = json!("1950-03-03");
    v["telecom"] = json!([{"system": "phone", "value": "13700000001"}]);
    assert_eq!(app.put(&format!("Patient/{b}"), v).await.status, 200);
    assert_eq!(person_of(&app, &b).await["id"], own["id"]);
    // …but the certain match is put in front of a reviewer.
    let tasks = app
        .get(&format!("Task?focus=Patient/{b}&status=requested"))
        .await;
    assert_eq!(tasks.body["total"], 1, "{}", tasks.body);

    // Every change is a version of the Person with a Provenance naming who and why.
    let hist = app.get(&format!("Person/{pa}/_history")).await;
    assert!(hist.body["total"].as_u64().unwrap() >= 5, "{}", hist.body);
    let provs = app
        .get(&format!("Provenance?target=Person/{pa}&_count=50"))
        .await;
    let mut seen: Vec<(String, String, String)> = provs.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let r = &e["resource"];
            (
                r["activity"]["coding"][0]["code"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                r["agent"][0]["who"]["display"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                r["reason"][0]["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    for (code, who, why) in [
        ("merge", "steward 李", "same man, confirmed by phone"),
        ("split", "steward 李", "merged by mistake"),
        ("link", "steward 王", "same ID card seen at the desk"),
        ("unlink", "steward 王", "wrong card"),
    ] {
        assert!(
            seen.iter().any(|s| s.0 == code && s.1 == who && s.2 == why),
            "{code} by {who}: {seen:?}"
        );
    }
}

on_both_indexes!(a_sound_rule_refuses_a_link_unless_forced);
async fn a_sound_rule_refuses_a_link_unless_forced_on(app: TestApp) {
    let id1 = hutong_cn::idcard::make(330106, 1990, 4, 8, 22);
    let id2 = hutong_cn::idcard::make(330106, 1990, 4, 8, 24);
    let mk = |id: &str, mrn: &'static str| {
        patient(&Pt {
            name: "欧阳雪",
            birth: "1990-04-08",
            gender: "female",
            id_number: Some(id),
            phone: Some("13800001111"),
            line: Some("文三路1号"),
            mrn: ("urn:mrn:hospital", mrn),
        })
    };
    let a = create(&app, HOSPITAL, mk(&id1, "1")).await;
    let b = create(&app, HOSPITAL, mk(&id2, "2")).await;
    let pa = person_of(&app, &a).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(
        person_of(&app, &b).await["id"],
        pa.as_str(),
        "two valid IDs: two people"
    );
    let body = |force: bool| {
        who_why(
            "steward",
            "twins?",
            vec![
                pref("patient", &format!("Patient/{b}")),
                json!({"name": "force", "valueBoolean": force}),
            ],
        )
    };
    let r = op(&app, &format!("Person/{pa}/$link"), body(false)).await;
    assert_eq!(r.status, 422);
    assert!(r.diagnostics().contains("force"), "{}", r.diagnostics());
    assert_eq!(
        linked(&person_of(&app, &a).await),
        vec![a.clone()],
        "nothing half-done"
    );
    let r = op(&app, &format!("Person/{pa}/$link"), body(true)).await;
    assert_eq!(r.status, 200);
    let r = op(&app, "Person/nope/$link", body(true)).await;
    assert_eq!(r.status, 404);
}

on_both_indexes!(a_later_record_joins_persons_kept_apart_and_reviews_decide_the_rest);
async fn a_later_record_joins_persons_kept_apart_and_reviews_decide_the_rest_on(app: TestApp) {
    let id = hutong_cn::idcard::make(330102, 1962, 7, 11, 13);
    // The hospital knows the ID number and an old address; the clinic knows the phone and the
    // new address and wrote the sex wrong. The same name born the same day is a probable
    // match, not enough to link: a city holds namesakes born on one day.
    let x1 = create(
        &app,
        HOSPITAL,
        patient(&Pt {
            name: "陈国华",
            birth: "1962-07-11",
            gender: "male",
            id_number: Some(&id),
            phone: None,
            line: Some("文一路5号"),
            mrn: ("urn:mrn:hospital", "77"),
        }),
    )
    .await;
    let x2 = create(
        &app,
        CLINIC,
        patient(&Pt {
            name: "陈国华",
            birth: "1962-07-11",
            gender: "female",
            id_number: None,
            phone: Some("13512345678"),
            line: Some("延安路88号"),
            mrn: ("urn:mrn:clinic", "88"),
        }),
    )
    .await;
    let p1 = person_of(&app, &x1).await;
    let p2 = person_of(&app, &x2).await;
    assert_ne!(p1["id"], p2["id"], "kept apart");
    // The pair is waiting for review.
    let q = app
        .get("Task?code=https://hutong.dev/fhir/CodeSystem/identity|match-review&status=requested")
        .await;
    assert_eq!(q.body["total"], 1, "{}", q.body);
    let task = q.body["entry"][0]["resource"].clone();
    // A community health centre then registers him with all of it.
    let x3 = create(
        &app,
        "urn:hutong:org:chc",
        patient(&Pt {
            name: "陈国华",
            birth: "1962-07-11",
            gender: "male",
            id_number: Some(&id),
            phone: Some("13512345678"),
            line: Some("延安路88号"),
            mrn: ("urn:mrn:chc", "5"),
        }),
    )
    .await;
    let p = person_of(&app, &x3).await;
    let mut all = vec![x1.clone(), x2.clone(), x3.clone()];
    all.sort();
    assert_eq!(linked(&p), all, "re-evaluated into one person");
    let provs = app
        .get(&format!(
            "Provenance?target=Person/{}",
            p["id"].as_str().unwrap()
        ))
        .await;
    assert!(provs.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .any(
            |e| e["resource"]["activity"]["coding"][0]["code"] == "merge"
                && e["resource"]["reason"][0]["text"]
                    .as_str()
                    .unwrap()
                    .starts_with("re-evaluation")
        ));

    // The reviewer now says the old pair are different people after all: they are separated
    // and stay so.
    let tid = task["id"].as_str().unwrap();
    let decide = |d: &str| {
        who_why(
            "steward 周",
            "checked the ID copy",
            vec![json!({"name": "decision", "valueCode": d})],
        )
    };
    let r = op(&app, &format!("Task/{tid}/$decide"), decide("maybe")).await;
    assert_eq!(r.status, 400);
    let r = op(&app, &format!("Task/{tid}/$decide"), decide("different")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "completed");
    assert_eq!(r.body["output"][0]["valueCode"], "different");
    let (f, c) = (
        task["focus"]["reference"]
            .as_str()
            .unwrap()
            .trim_start_matches("Patient/")
            .to_string(),
        task["input"][0]["valueReference"]["reference"]
            .as_str()
            .unwrap()
            .trim_start_matches("Patient/")
            .to_string(),
    );
    assert_ne!(
        person_of(&app, &f).await["id"],
        person_of(&app, &c).await["id"]
    );
    let r = op(&app, &format!("Task/{tid}/$decide"), decide("same")).await;
    assert_eq!(r.status, 409, "decided once");
}

on_both_indexes!(the_persons_record_spans_institutions_in_time_order_with_a_summary);
async fn the_persons_record_spans_institutions_in_time_order_with_a_summary_on(app: TestApp) {
    let id = hutong_cn::idcard::make(330106, 1970, 2, 2, 31);
    let mk = |mrn: &'static str| {
        patient(&Pt {
            name: "孙丽",
            birth: "1970-02-02",
            gender: "female",
            id_number: Some(&id),
            phone: Some("13600000000"),
            line: None,
            mrn: ("urn:mrn:x", mrn),
        })
    };
    let h = create(&app, HOSPITAL, mk("h")).await;
    let c = create(&app, CLINIC, mk("c")).await;
    let other = create(
        &app,
        CLINIC,
        patient(&Pt {
            name: "周强",
            birth: "1980-01-01",
            gender: "male",
            id_number: None,
            phone: None,
            line: None,
            mrn: ("urn:mrn:x", "o"),
        }),
    )
    .await;
    let obs = |p: &str, code: &str, when: &str, value: f64| {
        json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": format!("Patient/{p}")},
            "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": unit_of(code), "system": "http://unitsofmeasure.org", "code": unit_of(code)}})
    };
    let glucose_old = create(&app, CLINIC, obs(&c, "2345-7", "2019-05-01", 6.1)).await;
    let glucose_new = create(&app, HOSPITAL, obs(&h, "2345-7", "2023-05-01", 7.4)).await;
    let hba1c = create(&app, HOSPITAL, obs(&h, "4548-4", "2021-01-10", 6.9)).await;
    create(&app, CLINIC, obs(&other, "2345-7", "2022-01-01", 5.0)).await;
    let cond = |p: &str, code: &str, status: &str, onset: &str| {
        json!({"resourceType": "Condition",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": status}]},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}]},
            "subject": {"reference": format!("Patient/{p}")}, "onsetDateTime": onset})
    };
    let dm = create(&app, HOSPITAL, cond(&h, "E11", "active", "2018-03-01")).await;
    let flu = create(&app, CLINIC, cond(&c, "J11", "resolved", "2020-12-01")).await;
    let allergy = create(
        &app,
        CLINIC,
        json!({"resourceType": "AllergyIntolerance", "patient": {"reference": format!("Patient/{c}")},
            "code": {"text": "青霉素"}, "recordedDate": "2015-06-01"}),
    )
    .await;
    let med = create(
        &app,
        HOSPITAL,
        json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "subject": {"reference": format!("Patient/{h}")}, "authoredOn": "2023-05-02",
            "medicationCodeableConcept": {"text": "二甲双胍"}}),
    )
    .await;
    let stopped = create(
        &app,
        HOSPITAL,
        json!({"resourceType": "MedicationRequest", "status": "stopped", "intent": "order",
            "subject": {"reference": format!("Patient/{h}")}, "authoredOn": "2019-05-02",
            "medicationCodeableConcept": {"text": "格列齐特"}}),
    )
    .await;
    let vaccine = create(
        &app,
        CLINIC,
        json!({"resourceType": "Immunization", "status": "completed", "patient": {"reference": format!("Patient/{c}")},
            "vaccineCode": {"text": "流感疫苗"}, "occurrenceDateTime": "2022-10-01"}),
    )
    .await;
    let visit = create(
        &app,
        HOSPITAL,
        json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": format!("Patient/{h}")}, "period": {"start": "2023-05-01T09:00:00+08:00"}}),
    )
    .await;
    let person = person_of(&app, &h).await;
    let pid = person["id"].as_str().unwrap();

    let r = app.get(&format!("Person/{pid}/$everything")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let entries = r.body["entry"].as_array().unwrap();
    let order: Vec<String> = entries
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(order[0], pid, "the person first");
    let pos = |id: &str| {
        order
            .iter()
            .position(|x| x == id)
            .unwrap_or_else(|| panic!("{id} missing"))
    };
    // Both institutions' records, none of the other person's, in clinical time order.
    for id in [&h, &c] {
        pos(id);
    }
    assert_eq!(r.body["total"], 1 + 2 + 10, "{:?}", order);
    assert!(pos(&allergy) < pos(&dm) && pos(&dm) < pos(&glucose_old));
    assert!(pos(&glucose_old) < pos(&stopped) && pos(&stopped) < pos(&flu));
    assert!(pos(&flu) < pos(&hba1c) && pos(&hba1c) < pos(&vaccine));
    assert!(pos(&vaccine) < pos(&glucose_new) && pos(&glucose_new) < pos(&med));
    let sources: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["resource"]["meta"]["source"].as_str())
        .collect();
    assert!(sources.contains(&HOSPITAL) && sources.contains(&CLINIC));
    assert!(entries
        .iter()
        .skip(1)
        .all(|e| e["resource"]["meta"]["extension"]
            .as_array()
            .is_some_and(|x| x.iter().any(
                |x| x["url"] == "https://hutong.dev/fhir/StructureDefinition/collection-time"
            ))));
    // Paging walks the same order.
    let page = app.get(&format!("Person/{pid}/$everything?_count=5")).await;
    assert_eq!(page.body["entry"].as_array().unwrap().len(), 5);
    let next = page.body["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .unwrap()["url"]
        .as_str()
        .unwrap()
        .to_string();
    let page2 = app.get(&next).await;
    assert_eq!(page2.body["entry"][0]["resource"]["id"], order[5].as_str());
    // Filters of Patient/$everything apply.
    let r = app
        .get(&format!("Person/{pid}/$everything?_type=Observation"))
        .await;
    assert_eq!(r.body["total"], 1 + 3);
    // Newest first (a timeline's first page): the dated items in reverse order.
    let r = app
        .get(&format!(
            "Person/{pid}/$everything?_sort=-date&_type=Observation"
        ))
        .await;
    let newest: Vec<&str> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .skip(1)
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert_eq!(
        newest,
        [glucose_new.as_str(), hba1c.as_str(), glucose_old.as_str()]
    );
    let bad = app
        .get(&format!("Person/{pid}/$everything?_sort=name"))
        .await;
    assert_eq!(bad.status, 400);

    let r = app.get(&format!("Person/{pid}/$summary")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let comp = &r.body["entry"][0]["resource"];
    assert_eq!(comp["resourceType"], "Composition");
    let section = |title: &str| -> Vec<String> {
        comp["section"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["title"] == title)
            .unwrap()["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["reference"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .nth(1)
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(section("Active problems"), vec![dm.clone()]);
    assert_eq!(section("Allergies and intolerances"), vec![allergy.clone()]);
    assert_eq!(section("Current medications"), vec![med.clone()]);
    let mut last = section("Last results");
    last.sort();
    let mut want = vec![glucose_new.clone(), hba1c.clone()];
    want.sort();
    assert_eq!(last, want, "the newest of each test only");
    assert_eq!(section("Vaccinations"), vec![vaccine.clone()]);
    assert_eq!(section("Recent encounters"), vec![visit.clone()]);
    // Every referenced resource is in the bundle.
    let in_bundle: Vec<&str> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    for id in [&dm, &allergy, &med, &glucose_new, &hba1c, &vaccine, &visit] {
        assert!(in_bundle.contains(&id.as_str()));
    }
    assert_eq!(app.get("Person/nope/$summary").await.status, 404);
}

on_both_indexes!(a_record_between_two_namesakes_waits_for_review);
/// Two people with the same rare name and birth date and their own ID numbers; then a
/// record with neither ID nor contact that fits both equally: it joins neither person, and
/// both pairs wait for review side by side. Without the rival it would have linked.
async fn a_record_between_two_namesakes_waits_for_review_on(app: TestApp) {
    let id1 = hutong_cn::idcard::make(330106, 1980, 5, 6, 21);
    let id2 = hutong_cn::idcard::make(330108, 1980, 5, 6, 43);
    let mk = |id: Option<&str>, phone: Option<&str>, line: Option<&str>, mrn: &str| {
        patient(&Pt {
            name: "欧阳雪",
            birth: "1980-05-06",
            gender: "female",
            id_number: id,
            phone,
            line,
            mrn: ("urn:mrn:ns", mrn),
        })
    };
    let a = create(
        &app,
        HOSPITAL,
        mk(Some(&id1), Some("13800138000"), Some("文三路1号"), "1"),
    )
    .await;
    let c = create(
        &app,
        HOSPITAL,
        mk(Some(&id2), Some("13700137000"), Some("延安路200号"), "2"),
    )
    .await;
    let b = create(&app, CLINIC, mk(None, None, None, "3")).await;
    let (pa, pb, pc) = (
        person_of(&app, &a).await,
        person_of(&app, &b).await,
        person_of(&app, &c).await,
    );
    assert_ne!(pb["id"], pa["id"], "joined the first namesake");
    assert_ne!(pb["id"], pc["id"], "joined the second namesake");
    assert_ne!(pa["id"], pc["id"]);
    let q = app
        .get(&format!(
            "Task?code=https://hutong.dev/fhir/CodeSystem/identity|match-review&focus=Patient/{b}"
        ))
        .await;
    let candidates: std::collections::BTreeSet<String> = q.body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            e["resource"]["input"]
                .as_array()?
                .iter()
                .find(|i| i["type"]["text"] == "candidate")?["valueReference"]["reference"]
                .as_str()
                .map(String::from)
        })
        .collect();
    let want: std::collections::BTreeSet<String> =
        [format!("Patient/{a}"), format!("Patient/{c}")].into();
    assert_eq!(candidates, want, "{}", q.body);
    // `$match` answers the same: both namesakes, neither of them certain.
    let probe = mk(None, None, None, "9");
    let params = |only: bool| {
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": probe.clone()},
            {"name": "onlyCertainMatches", "valueBoolean": only}]})
    };
    let r = app
        .send("POST", "Patient/$match", Some(params(false)), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let grades: Vec<&str> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["search"]["extension"][0]["valueCode"]
                .as_str()
                .unwrap_or("")
        })
        .collect();
    assert!(
        grades.len() >= 2 && !grades.contains(&"certain"),
        "{}",
        r.body
    );
    let r = app
        .send("POST", "Patient/$match", Some(params(true)), &[])
        .await;
    assert_eq!(
        r.body["entry"].as_array().map_or(0, Vec::len),
        0,
        "{}",
        r.body
    );
    // The same record for someone with one namesake only joins them.
    let d = create(&app, CLINIC, {
        let mut v = mk(None, None, None, "4");
        v["name"] = json!([{"text": "司马琴"}]);
        v
    })
    .await;
    let e = create(&app, HOSPITAL, {
        let mut v = mk(Some(&id1), Some("13800138000"), Some("文三路1号"), "5");
        v["name"] = json!([{"text": "司马琴"}]);
        v["identifier"][1]["value"] = json!(hutong_cn::idcard::make(330106, 1980, 5, 6, 61));
        v
    })
    .await;
    assert_eq!(
        person_of(&app, &d).await["id"],
        person_of(&app, &e).await["id"]
    );
}

#[tokio::test]
async fn persons_work_the_same_on_postgres() {
    let Some(app) = crate::helpers::spawn_pg_app().await else {
        eprintln!("skipped: no PostgreSQL server reachable on 127.0.0.1:5432");
        return;
    };
    let id = hutong_cn::idcard::make(330106, 1985, 9, 9, 41);
    let mk = |name: &'static str, mrn: &'static str| {
        patient(&Pt {
            name,
            birth: "1985-09-09",
            gender: "male",
            id_number: Some(&id),
            phone: None,
            line: None,
            mrn: ("urn:mrn:pg", mrn),
        })
    };
    let a = create(&app, HOSPITAL, mk("吴磊", "1")).await;
    let b = create(&app, CLINIC, mk("吳磊", "2")).await;
    let p = person_of(&app, &a).await;
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(linked(&p), want);
    let pid = p["id"].as_str().unwrap();
    let r = app
        .post(
            &format!("Person/{pid}/$unlink"),
            who_why(
                "steward",
                "test",
                vec![pref("patient", &format!("Patient/{b}"))],
            ),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(linked(&person_of(&app, &a).await), vec![a.clone()]);
    let r = app.get(&format!("Person/{pid}/$everything")).await;
    assert_eq!(r.body["total"], 2);
}

#[tokio::test]
async fn decision_thresholds_are_configurable() {
    // With the link threshold out of reach, even the same ID number only goes to review.
    let app = crate::helpers::spawn_app_with(|s| {
        s.thresholds = hutong_mpi::Thresholds {
            link: 1_000.0,
            review: -2.0,
            ..Default::default()
        }
    })
    .await;
    let id = hutong_cn::idcard::make(330106, 1990, 4, 8, 22);
    let mk = |mrn: &'static str| {
        patient(&Pt {
            name: "欧阳雪",
            birth: "1990-04-08",
            gender: "female",
            id_number: Some(&id),
            phone: None,
            line: None,
            mrn: ("urn:mrn:t", mrn),
        })
    };
    let a = create(&app, HOSPITAL, mk("1")).await;
    let b = create(&app, CLINIC, mk("2")).await;
    assert_ne!(
        person_of(&app, &a).await["id"],
        person_of(&app, &b).await["id"]
    );
    let q = app.get("Task?status=requested").await;
    assert_eq!(q.body["total"], 1, "{}", q.body);
    // With the default thresholds they are one person.
    let app = spawn_app().await;
    let a = create(&app, HOSPITAL, mk("1")).await;
    let b = create(&app, CLINIC, mk("2")).await;
    assert_eq!(
        person_of(&app, &a).await["id"],
        person_of(&app, &b).await["id"]
    );
    assert_eq!(app.get("Task?status=requested").await.body["total"], 0);
}

/// The platform's unit for a test (the intake rules reject any other).
fn unit_of(loinc: &str) -> &'static str {
    if loinc == "4548-4" {
        "%"
    } else {
        "mmol/L"
    }
}

/// Runs the named test body.
async fn on(name: &str, app: TestApp) {
    match name {
        "each_patient_gets_one_person_with_a_golden_record" => {
            each_patient_gets_one_person_with_a_golden_record_on(app).await
        }
        "link_unlink_merge_and_split_are_recorded_and_reversible" => {
            link_unlink_merge_and_split_are_recorded_and_reversible_on(app).await
        }
        "a_sound_rule_refuses_a_link_unless_forced" => {
            a_sound_rule_refuses_a_link_unless_forced_on(app).await
        }
        "a_later_record_joins_persons_kept_apart_and_reviews_decide_the_rest" => {
            a_later_record_joins_persons_kept_apart_and_reviews_decide_the_rest_on(app).await
        }
        "the_persons_record_spans_institutions_in_time_order_with_a_summary" => {
            the_persons_record_spans_institutions_in_time_order_with_a_summary_on(app).await
        }
        "a_record_between_two_namesakes_waits_for_review" => {
            a_record_between_two_namesakes_waits_for_review_on(app).await
        }
        _ => unreachable!("no test {name}"),
    }
}
