//! Intake governance over HTTP: rejection feedback, quarantine and resubmission,
//! transactions rejected whole, warnings recorded, `$validate`.

use hutong_access::principal::Role;
use hutong_store::sql::Val;
use serde_json::{json, Value};

use crate::helpers::TestApp;

macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() {
                let app = crate::helpers::spawn_app().await;
                super::$name(&app).await;
            } )*
        }
        mod on_postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() {
                if let Some(app) = crate::helpers::spawn_pg_app().await {
                    super::$name(&app).await;
                }
            } )*
        }
    };
}

on_both!(
    rejections_are_explained_quarantined_and_resubmitted,
    warnings_are_recorded_and_validate_reports,
    vaccinations_are_checked_against_the_record,
    bulk_loads_check_references_once_every_file_is_in,
    bulk_loads_resume_in_their_chunk_size_and_may_defer_indexes
);

const A: &str = "urn:hutong:org:91330100QA";
const B: &str = "urn:hutong:org:91330100QB";

fn glucose(patient: &str, value: f64) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "14771-0"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": "2026-03-01T08:00:00+08:00",
        "valueQuantity": {"value": value, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}})
}

async fn count(app: &TestApp, token: &str, path: &str) -> u64 {
    let r = app.send_as(token, "GET", path, None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["total"].as_u64().unwrap()
}

async fn rejections_are_explained_quarantined_and_resubmitted(app: &TestApp) {
    let a = app.system(A);
    let b = app.system(B);
    let p = app
        .send_as(
            &a,
            "PUT",
            "Patient/qa-1",
            Some(json!({"resourceType": "Patient", "id": "qa-1",
            "name": [{"text": "王芳"}], "gender": "female", "birthDate": "1980-02-03",
            "identifier": [{"system": "urn:mrn:qa", "value": "1"}]})),
            &[],
        )
        .await;
    assert_eq!(p.status, 201, "{}", p.body);
    // A mg/dL value labelled mmol/L: rejected, with the rule, place, both languages and a fix.
    let bad = glucose("qa-1", 94.0);
    let r = app
        .send_as(&a, "POST", "Observation", Some(bad.clone()), &[])
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let issue = &r.body["issue"][0];
    assert_eq!(issue["severity"], "error");
    assert_eq!(issue["code"], "business-rule");
    assert_eq!(issue["details"]["coding"][0]["code"], "value-plausible");
    assert_eq!(issue["expression"][0], "Observation.valueQuantity.value");
    assert!(issue["extension"][0]["valueString"]
        .as_str()
        .unwrap()
        .contains("空腹血糖"));
    assert!(issue["extension"][1]["valueString"]
        .as_str()
        .unwrap()
        .contains("mg/dL"));
    let note = r.body["issue"].as_array().unwrap().last().unwrap()["diagnostics"]
        .as_str()
        .unwrap()
        .to_string();
    let qid = note
        .split_whitespace()
        .find(|w| w.starts_with("q-"))
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    assert_eq!(count(app, &a, "Observation?_summary=count").await, 0);
    // The source sees it in its quarantine; another institution does not.
    let list = app.send_as(&a, "GET", "$quarantine", None, &[]).await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert_eq!(list.body["total"], 1);
    assert_eq!(list.body["items"][0]["id"], qid.as_str());
    assert_eq!(list.body["items"][0]["rules"], json!(["value-plausible"]));
    assert_eq!(list.body["items"][0]["status"], "open");
    let other = app.send_as(&b, "GET", "$quarantine", None, &[]).await;
    assert_eq!(other.body["total"], 0);
    let hidden = app
        .send_as(&b, "GET", &format!("$quarantine/{qid}"), None, &[])
        .await;
    assert_eq!(hidden.status, 404);
    let officer = app.operator(&[Role::QualityOfficer]);
    let all = app
        .send_as(
            &officer,
            "GET",
            &format!("$quarantine?source={A}"),
            None,
            &[],
        )
        .await;
    assert_eq!(all.body["total"], 1, "{}", all.body);
    let shown = app
        .send_as(&a, "GET", &format!("$quarantine/{qid}"), None, &[])
        .await;
    assert_eq!(
        shown.body["outcome"]["issue"][0]["details"]["coding"][0]["code"],
        "value-plausible"
    );
    // Download: exactly what was sent (kept sealed at rest).
    let body = app
        .send_as(&a, "GET", &format!("$quarantine/{qid}/body"), None, &[])
        .await;
    assert_eq!(body.status, 200);
    assert_eq!(body.body, bad);
    let raw = tokio::task::block_in_place(|| {
        app.engine
            .store
            .query_admin("SELECT body FROM qc_quarantine", &[])
            .unwrap()
    });
    assert!(!String::from_utf8_lossy(&raw[0][0].clone().into_blob()).contains("14771-0"));
    // Only the source resubmits; corrected, it is accepted and the item closed.
    let by_b = app
        .send_as(
            &b,
            "POST",
            &format!("$quarantine/{qid}/$resubmit"),
            Some(glucose("qa-1", 5.2)),
            &[],
        )
        .await;
    assert_eq!(by_b.status, 404);
    let again = app
        .send_as(
            &a,
            "POST",
            &format!("$quarantine/{qid}/$resubmit"),
            Some(glucose("qa-1", 94.0)),
            &[],
        )
        .await;
    assert_eq!(again.status, 422);
    let newer = app.send_as(&a, "GET", "$quarantine", None, &[]).await;
    assert_eq!(
        newer.body["total"], 1,
        "the old item is superseded by the new one"
    );
    let newer_id = newer.body["items"][0]["id"].as_str().unwrap().to_string();
    assert_ne!(newer_id, qid);
    let fixed = app
        .send_as(
            &a,
            "POST",
            &format!("$quarantine/{newer_id}/$resubmit"),
            Some(glucose("qa-1", 5.2)),
            &[],
        )
        .await;
    assert_eq!(fixed.status, 201, "{}", fixed.body);
    assert_eq!(count(app, &a, "Observation?_summary=count").await, 1);
    let closed = app
        .send_as(&a, "GET", "$quarantine?status=resubmitted", None, &[])
        .await;
    assert_eq!(closed.body["total"], 1);
    assert!(closed.body["items"][0]["resolution"]
        .as_str()
        .unwrap()
        .contains("Observation/"));
    let twice = app
        .send_as(
            &a,
            "POST",
            &format!("$quarantine/{newer_id}/$resubmit"),
            Some(glucose("qa-1", 5.2)),
            &[],
        )
        .await;
    assert_eq!(twice.status, 409);
    // A transaction with one bad entry is rejected whole, located in the bundle.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": glucose("qa-1", 6.0), "request": {"method": "POST", "url": "Observation"}},
        {"resource": glucose("qa-nobody", 6.0), "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = app.send_as(&a, "POST", "", Some(tx), &[]).await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(
        r.body["issue"][0]["details"]["coding"][0]["code"],
        "reference"
    );
    assert_eq!(
        r.body["issue"][0]["expression"][0],
        "Bundle.entry[1].resource.subject.reference"
    );
    assert_eq!(count(app, &a, "Observation?_summary=count").await, 1);
    assert_eq!(count(app, &a, "$quarantine").await, 1);
    // Wrong types are structure findings of the intake rules.
    let r = app
        .send_as(
            &a,
            "POST",
            "Observation",
            Some(json!({"resourceType": "Observation", "status": 7})),
            &[],
        )
        .await;
    assert_eq!(
        r.status, 422,
        "structure errors are intake rule findings: {}",
        r.body
    );
    assert_eq!(r.body["issue"][0]["code"], "structure");
}

async fn warnings_are_recorded_and_validate_reports(app: &TestApp) {
    let a = app.system(A);
    let p = app
        .send_as(&a, "PUT", "Patient/qw-1", Some(json!({"resourceType": "Patient", "id": "qw-1",
            "name": [{"text": "李雷"}], "gender": "male", "birthDate": "1979-01-01",
            "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "110101197901010010"}]})), &[])
        .await;
    // A wrong check character is a warning: accepted, recorded.
    assert_eq!(p.status, 201, "{}", p.body);
    let first = app
        .send_as(&a, "POST", "Observation", Some(glucose("qw-1", 5.5)), &[])
        .await;
    assert_eq!(first.status, 201);
    let copy = app
        .send_as(&a, "POST", "Observation", Some(glucose("qw-1", 5.5)), &[])
        .await;
    assert_eq!(copy.status, 201);
    let rows = tokio::task::block_in_place(|| {
        app.engine
            .store
            .query_admin(
                "SELECT rule, severity, rtype, id, expression FROM qc_finding WHERE src = ? ORDER BY rule",
                &[Val::Text(A.into())],
            )
            .unwrap()
    });
    let found: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r[0].text().to_string(),
                r[1].text().to_string(),
                r[2].text().to_string(),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![
            ("duplicate".into(), "warning".into(), "Observation".into()),
            ("id-number".into(), "warning".into(), "Patient".into()),
        ]
    );
    assert_eq!(rows[0][3].text(), copy.body["id"].as_str().unwrap());
    assert_eq!(rows[1][4].text(), "Patient.identifier[0].value");
    // $validate: the same rules, nothing written.
    let v = app
        .send_as(
            &a,
            "POST",
            "Observation/$validate",
            Some(glucose("qw-1", 940.0)),
            &[],
        )
        .await;
    assert_eq!(v.status, 200, "{}", v.body);
    assert_eq!(v.body["issue"][0]["severity"], "error");
    assert_eq!(
        v.body["issue"][0]["details"]["coding"][0]["code"],
        "value-plausible"
    );
    let ok = app
        .send_as(
            &a,
            "POST",
            "Observation/$validate",
            Some(glucose("qw-1", 6.5)),
            &[],
        )
        .await;
    assert_eq!(
        ok.body["issue"][0]["severity"], "information",
        "{}",
        ok.body
    );
    assert_eq!(count(app, &a, "Observation?_summary=count").await, 2);
    assert_eq!(count(app, &a, "$quarantine").await, 0);
}

async fn vaccinations_are_checked_against_the_record(app: &TestApp) {
    let a = app.system(A);
    for (id, birth) in [("qv-child", "2023-01-10"), ("qv-adult", "1962-09-03")] {
        let p = app
            .send_as(
                &a,
                "PUT",
                &format!("Patient/{id}"),
                Some(json!({"resourceType": "Patient", "id": id,
                "name": [{"text": "王小明"}], "birthDate": birth,
                "identifier": [{"system": "urn:mrn:qv", "value": id}]})),
                &[],
            )
            .await;
        assert_eq!(p.status, 201, "{}", p.body);
    }
    let shot = |patient: &str, code: &str, dose: u32, when: &str| {
        json!({"resourceType": "Immunization", "status": "completed",
            "vaccineCode": {"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/cn-nip-vaccine", "code": code}]},
            "patient": {"reference": format!("Patient/{patient}")}, "occurrenceDateTime": when,
            "protocolApplied": [{"doseNumberPositiveInt": dose}]})
    };
    let post = |v: Value| {
        let a = a.clone();
        async move {
            let r = app.send_as(&a, "POST", "Immunization", Some(v), &[]).await;
            assert_eq!(r.status, 201, "{}", r.body);
            r.body["id"].as_str().unwrap().to_string()
        }
    };
    post(shot("qv-child", "MMR", 1, "2023-09-12T09:00:00+08:00")).await;
    post(shot("qv-child", "MMR", 2, "2024-07-10T09:00:00+08:00")).await;
    // The same dose again (stored on the platform, found by the patient's record), and a
    // child's vaccine filed to a 60-year-old (the birth date read from the platform).
    let again = post(shot("qv-child", "MMR", 2, "2024-08-01T09:00:00+08:00")).await;
    let adult = post(shot("qv-adult", "JE-L", 2, "2022-08-11T09:00:00+08:00")).await;
    let rows = tokio::task::block_in_place(|| {
        app.engine
            .store
            .query_admin(
                "SELECT rule, id FROM qc_finding WHERE src = ? AND rtype = 'Immunization' ORDER BY rule",
                &[Val::Text(A.into())],
            )
            .unwrap()
    });
    let found: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r[0].text().to_string(), r[1].text().to_string()))
        .collect();
    assert_eq!(
        found,
        vec![
            ("dose-repeated".into(), again),
            ("vaccine-age".into(), adult)
        ]
    );
}

async fn bulk_loads_check_references_once_every_file_is_in(app: &TestApp) {
    let tmp = hutong_store::testing::TempDir::new("bulk-refs");
    let dir = tmp.0.clone();
    let obs = |id: &str, patient: &str| {
        let mut o = glucose(patient, 5.5);
        o["id"] = json!(id);
        o.to_string()
    };
    // Observations first, their Patient in a later file, and one pointing at nobody.
    std::fs::write(
        dir.join("1-Observation.ndjson"),
        format!(
            "{}\n{}\n",
            obs("qb-o1", "qb-late"),
            obs("qb-o2", "qb-ghost")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("2-Patient.ndjson"),
        json!({"resourceType": "Patient", "id": "qb-late", "name": [{"text": "赵丽"}],
            "birthDate": "1990-01-01", "identifier": [{"system": "urn:mrn:qb", "value": "1"}]})
        .to_string()
            + "\n",
    )
    .unwrap();
    // A record longer than a chunk: what points into the chunk before (still on its way to
    // the database as the next is checked) resolves then, without a second look.
    let mut big = json!({"resourceType": "Patient", "id": "qb-big", "name": [{"text": "钱多"}],
        "birthDate": "1980-02-02", "identifier": [{"system": "urn:mrn:qb", "value": "2"}]})
    .to_string();
    for i in 0..hutong_server::engine::bulk::CHUNK + 200 {
        big.push('\n');
        big.push_str(&obs(&format!("qb-big-{i}"), "qb-big"));
    }
    std::fs::write(dir.join("0-long.ndjson"), big + "\n").unwrap();
    // A collection bundle goes through the same rules: the mg/dL glucose is rejected.
    std::fs::write(
        dir.join("3-collection.json"),
        json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": serde_json::from_str::<Value>(&obs("qb-o3", "qb-late")).unwrap()},
            {"resource": glucose("qb-late", 94.0)}
        ]})
        .to_string(),
    )
    .unwrap();
    let files = hutong_server::engine::bulk::collect_files(std::slice::from_ref(&dir)).unwrap();
    let report = tokio::task::block_in_place(|| {
        hutong_server::engine::bulk::import(&app.engine, &files, A, &|_, _| {}).unwrap()
    });
    assert_eq!(
        report.loaded,
        4 + 1 + hutong_server::engine::bulk::CHUNK as u64 + 200,
        "{:?}",
        report.rejected
    );
    // Only the two Observations of the first file, whose Patient came later (or never).
    assert_eq!(report.rechecked, 2);
    assert_eq!(report.rejected.len(), 1, "{:?}", report.rejected);
    assert!(
        report.rejected[0].2.contains("value-plausible"),
        "{:?}",
        report.rejected
    );
    assert_eq!(report.unresolved.len(), 1, "{:?}", report.unresolved);
    assert!(report.unresolved[0].2.contains("qb-ghost"));
    let rows = tokio::task::block_in_place(|| {
        app.engine
            .store
            .query_admin(
                "SELECT id FROM qc_finding WHERE src = ? AND rule = 'reference'",
                &[Val::Text(A.into())],
            )
            .unwrap()
    });
    let ids: Vec<&str> = rows.iter().map(|r| r[0].text()).collect();
    assert_eq!(ids, ["qb-o2"]);
}

/// A load begun in the 1,000-line chunks of earlier versions resumes in those (its
/// `import_done` rows count them) and loads nothing twice; a load that defers the value
/// indexes answers date and string searches like one that keeps them.
async fn bulk_loads_resume_in_their_chunk_size_and_may_defer_indexes(app: &TestApp) {
    use hutong_server::engine::bulk::{import_with, Indexes};
    let tmp = hutong_store::testing::TempDir::new("bulk-resume");
    let dir = tmp.0.clone();
    // No ids: a line loaded twice would be a second Patient.
    let line = |i: usize| {
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn:qr", "value": format!("r{i}")}],
            "name": [{"family": "孙", "given": [format!("{i}")]}], "birthDate": format!("19{:02}-03-04", i % 100)})
        .to_string()
            + "\n"
    };
    let first: String = (0..2000).map(line).collect();
    let all: String = (0..2500).map(line).collect();
    std::fs::write(dir.join("first.ndjson"), &first).unwrap();
    let whole = dir.join("whole.ndjson");
    std::fs::write(&whole, &all).unwrap();
    let engine = &app.engine;
    let count = |q: &str| {
        let q = hutong_store::Query::parse(
            "Patient",
            &hutong_server::wire::parse_query_string(q),
            true,
        )
        .unwrap();
        engine
            .store
            .search(&q, &hutong_store::Scope::All)
            .unwrap()
            .total
            .unwrap()
    };
    tokio::task::block_in_place(|| {
        // An earlier version loaded the first two 1,000-line chunks of `whole`, then died.
        let r = import_with(
            engine,
            &[dir.join("first.ndjson")],
            A,
            Indexes::Keep,
            &|_, _| {},
        )
        .unwrap();
        assert_eq!(r.loaded, 2000);
        let legacy = format!(
            "{}#{}",
            std::fs::canonicalize(&whole).unwrap().display(),
            all.len()
        );
        engine
            .store
            .write(&hutong_store::testing::AUDIT, |tx| {
                tx.mark_done(&legacy, 0)?;
                tx.mark_done(&legacy, 1)
            })
            .unwrap();
        let r = import_with(
            engine,
            std::slice::from_ref(&whole),
            A,
            Indexes::Defer,
            &|_, _| {},
        )
        .unwrap();
        assert_eq!((r.loaded, r.skipped_chunks), (500, 2), "{:?}", r.rejected);
        assert_eq!(count("identifier=urn:mrn:qr|r0"), 1);
        assert_eq!(count("identifier=urn:mrn:qr|r2499"), 1);
        assert_eq!(count("family=孙"), 2500);
        // Values written while the indexes were away: 1907-03-04 for r7, r107, …, r2407.
        assert_eq!(count("birthdate=1907-03-04&family=孙"), 25);
        assert_eq!(count("birthdate=lt1901&family=孙"), 25);
        // Nothing left to do, in the new chunks either.
        let again = import_with(
            engine,
            std::slice::from_ref(&whole),
            A,
            Indexes::Auto,
            &|_, _| {},
        )
        .unwrap();
        assert_eq!(again.loaded, 0);
    });
}
