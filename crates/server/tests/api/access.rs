//! Authorized access over HTTP: who is asking (tokens, passwords, one-time codes, lockout),
//! what they may see (own data, grants by SMS code, app approval, appointment, standing and
//! break-glass, proxies, sensitive categories, restricted items, expiry, revocation), how
//! identity data is masked and encrypted, and how every access lands in the audit trail.

use hutong_access::principal::Role;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};

/// Each flow runs on the embedded store and on PostgreSQL (skipped when no server answers).
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() {
                let app = crate::helpers::spawn_app_with(super::short_grants).await;
                super::$name(&app).await;
            } )*
        }
        mod on_postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() {
                if let Some(app) = crate::helpers::spawn_pg_app_with(super::short_grants).await {
                    super::$name(&app).await;
                }
            } )*
        }
    };
}

on_both!(
    requests_need_valid_tokens,
    client_credentials_passwords_and_lockout,
    residents_sign_in_with_a_one_time_code,
    institutions_see_their_own_data_and_nothing_else_without_a_grant,
    a_grant_by_sms_code_opens_the_record_until_revoked,
    app_approval_standing_grants_and_expiry,
    appointments_booked_through_the_platform_open_the_visit_window,
    break_glass_is_immediate_visible_notified_and_reviewed,
    proxies_read_for_those_who_made_them_proxy,
    residents_restrict_items_and_grants_must_name_them,
    operators_read_what_their_role_needs_masked_and_more_only_with_a_reason,
    every_access_is_audited_and_residents_see_who_viewed_their_record,
    identity_data_is_encrypted_at_rest_and_still_searchable,
);

/// Grants by code or approval last 1.5 s here, so that expiry can be seen; flows that ask
/// for longer say so (`hours`).
pub(crate) fn short_grants(s: &mut hutong_server::Settings) {
    s.policy.grant_ms = 1_500;
}

pub(crate) const ID_SYSTEM: &str = "urn:oid:2.16.156.10011.1.3";
pub(crate) const A: &str = "urn:hutong:org:91330100A";
pub(crate) const B: &str = "urn:hutong:org:91330100B";
pub(crate) const C: &str = "urn:hutong:org:91330100C";
pub(crate) const ICD: &str = "http://hl7.org/fhir/sid/icd-10";
pub(crate) const ID_NUMBER: &str = "330106199004080222";
pub(crate) const OTHER_ID: &str = "330106198502024325";
pub(crate) const PHONE: &str = "13812345678";

/// One resident registered at A and B (same ID number: one person), with an ordinary
/// result at each, a depression diagnosis at B, and another resident only at B.
pub(crate) struct Region {
    pub(crate) pa: String,
    pub(crate) pb: String,
    pub(crate) person: String,
    pub(crate) obs_a: String,
    pub(crate) obs_b: String,
    pub(crate) psy_b: String,
    pub(crate) other: String,
    pub(crate) other_obs: String,
}

pub(crate) async fn create_as(app: &TestApp, token: &str, v: Value) -> String {
    let t = v["resourceType"].as_str().unwrap().to_string();
    let r = app.send_as(token, "POST", &t, Some(v), &[]).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

pub(crate) fn patient(mrn: &str, id_number: Option<&str>, name: &str) -> Value {
    let birth = if id_number == Some(OTHER_ID) {
        "1985-02-02"
    } else {
        "1990-04-08"
    };
    let mut ids = vec![json!({"system": format!("urn:mrn:{mrn}"), "value": mrn})];
    if let Some(i) = id_number {
        ids.push(json!({"system": ID_SYSTEM, "value": i}));
    }
    json!({"resourceType": "Patient", "identifier": ids, "name": [{"text": name, "family": &name[..3]}],
        "gender": "female", "birthDate": birth,
        "telecom": [{"system": "phone", "value": PHONE}],
        "address": [{"line": ["文三路 8 号"], "district": "西湖区", "city": "杭州市"}]})
}

pub(crate) fn observation(patient: &str, code: &str) -> Value {
    // HbA1c in %, glucose in mmol/L: the platform's units for them.
    let (unit, value) = match code {
        "4548-4" => ("%", 6.1),
        "718-7" => ("g/L", 135.0),
        _ => ("mmol/L", 6.1),
    };
    json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": "2026-01-05",
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})
}

pub(crate) async fn region(app: &TestApp) -> Region {
    // The organisations, as reference data.
    for (id, uscc, name) in [
        ("a", "91330100A", "甲医院"),
        ("b", "91330100B", "乙医院"),
        ("c", "91330100C", "丙中心"),
    ] {
        let r = app
            .put(
                &format!("Organization/{id}"),
                json!({"resourceType": "Organization", "id": id, "name": name,
                    "identifier": [{"system": "https://hutong.dev/sid/uscc", "value": uscc}]}),
            )
            .await;
        assert!(r.status < 300, "{}", r.body);
    }
    let sa = app.system(A);
    let sb = app.system(B);
    let pa = create_as(app, &sa, patient("a1", Some(ID_NUMBER), "欧阳雪梅")).await;
    let pb = create_as(app, &sb, patient("b1", Some(ID_NUMBER), "欧阳雪梅")).await;
    let obs_a = create_as(app, &sa, observation(&pa, "4548-4")).await;
    let obs_b = create_as(app, &sb, observation(&pb, "2345-7")).await;
    let psy_b = create_as(
        app,
        &sb,
        json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{pb}")},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "code": {"coding": [{"system": ICD, "code": "F32.9", "display": "抑郁发作"}]}}),
    )
    .await;
    let other = create_as(app, &sb, patient("b2", Some(OTHER_ID), "张伟")).await;
    let other_obs = create_as(app, &sb, observation(&other, "4548-4")).await;
    let r = app.get(&format!("Person?link=Patient/{pa}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let person = r.body["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app.get(&format!("Person?link=Patient/{pb}")).await;
    assert_eq!(
        r.body["entry"][0]["resource"]["id"],
        person.as_str(),
        "one person for both"
    );
    Region {
        pa,
        pb,
        person,
        obs_a,
        obs_b,
        psy_b,
        other,
        other_obs,
    }
}

pub(crate) fn params(p: Vec<Value>) -> Value {
    json!({"resourceType": "Parameters", "parameter": p})
}

pub(crate) async fn outbox(app: &TestApp, to: &str) -> Vec<String> {
    app.flush_audit();
    let r = app
        .client
        .get(format!("{}/dev/outbox?to={to}", app.root))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_string())
        .collect()
}

pub(crate) fn code_in(text: &str) -> String {
    let i = text
        .find("验证码")
        .or_else(|| text.find("验证码是"))
        .expect("a code");
    text[i..]
        .chars()
        .filter(char::is_ascii_digit)
        .take(6)
        .collect()
}

/// A's clinician asks for access by SMS and enters the code the resident receives.
pub(crate) async fn grant_by_sms(app: &TestApp, r: &Region, categories: &[&str]) -> String {
    let dr = app.clinician(A);
    let mut p = vec![
        json!({"name": "method", "valueCode": "sms"}),
        json!({"name": "hours", "valueInteger": 1}),
    ];
    for c in categories {
        p.push(json!({"name": "category", "valueCode": c}));
    }
    let req = app
        .send_as(
            &dr,
            "POST",
            &format!("Person/{}/$request-access", r.person),
            Some(params(p)),
            &[],
        )
        .await;
    assert_eq!(req.status, 201, "{}", req.body);
    assert_eq!(req.body["status"], "proposed");
    let consent = req.body["id"].as_str().unwrap().to_string();
    let sms = outbox(app, PHONE).await;
    let code = code_in(&sms[0]);
    let ok = app
        .send_as(
            &dr,
            "POST",
            &format!("Consent/{consent}/$verify-code"),
            Some(params(vec![json!({"name": "code", "valueString": code})])),
            &[],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["status"], "active");
    consent
}

pub(crate) async fn status_as(app: &TestApp, token: &str, path: &str) -> u16 {
    app.send_as(token, "GET", path, None, &[]).await.status
}

async fn requests_need_valid_tokens(app: &TestApp) {
    // The capability statement is public and says how to sign in.
    let meta = app.send_as("", "GET", "metadata", None, &[]).await;
    assert_eq!(meta.status, 200);
    let sec = &meta.body["rest"][0]["security"];
    assert_eq!(sec["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    assert!(sec["extension"][0]["extension"][0]["valueUri"]
        .as_str()
        .unwrap()
        .ends_with("/auth/token"));
    let anon = app.send_as("", "GET", "Patient", None, &[]).await;
    assert_eq!(anon.status, 401);
    assert_eq!(anon.body["issue"][0]["code"], "login");
    assert!(anon
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer"));
    let forged = format!("{}x", app.token);
    assert_eq!(
        app.send_as(&forged, "GET", "Patient", None, &[])
            .await
            .status,
        401
    );
    assert_eq!(
        app.send_as("not.a.token", "GET", "Patient", None, &[])
            .await
            .status,
        401
    );
    // A token from another platform's keys.
    let other = spawn_app().await;
    assert_eq!(
        app.send_as(&other.token, "GET", "Patient", None, &[])
            .await
            .status,
        401
    );
    // Expired.
    let old = app
        .engine
        .access
        .tokens
        .issue_for(&hutong_access::Principal::platform("x"), -120);
    let r = app.send_as(&old, "GET", "Patient", None, &[]).await;
    assert_eq!(r.status, 401);
    assert!(r.diagnostics().contains("expired"));
    // Discovery documents.
    let smart: Value = app
        .client
        .get(format!("{}/.well-known/smart-configuration", app.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(smart["token_endpoint"]
        .as_str()
        .unwrap()
        .ends_with("/auth/token"));
    let jwks: Value = app
        .client
        .get(format!("{}/.well-known/jwks.json", app.root))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    // The refusals are audited.
    app.flush_audit();
    let (rows, _) = tokio::task::block_in_place(|| {
        app.engine
            .store
            .audit_about(None, i64::MIN, i64::MAX, 100, 0)
            .unwrap()
    });
    assert!(rows
        .iter()
        .any(|r| r.entry.contains("\"authenticate\"") && r.entry.contains("401")));
}

async fn client_credentials_passwords_and_lockout(app: &TestApp) {
    let a = &app.engine.access.accounts;
    let secret = tokio::task::block_in_place(|| {
        a.add_client(&hutong_access::accounts::Client {
            client_id: "his-a".into(),
            kind: hutong_access::Kind::System,
            institution: Some(A.into()),
            name: "甲医院 HIS".into(),
            scopes: hutong_access::Scopes::parse("system/*.cruds"),
            booking: false,
        })
        .unwrap()
    });
    let token = |id: &str, s: &str, scope: Option<&str>| {
        let mut form = vec![("grant_type", "client_credentials".to_string())];
        if let Some(sc) = scope {
            form.push(("scope", sc.to_string()));
        }
        app.client
            .post(format!("{}/auth/token", app.root))
            .basic_auth(id.to_string(), Some(s.to_string()))
            .form(&form)
    };
    let ok: Value = token(
        "his-a",
        &secret,
        Some("system/Observation.rs system/Patient.cruds"),
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(ok["token_type"], "Bearer");
    assert_eq!(
        ok["scope"], "system/Observation.rs system/Patient.cruds",
        "narrowed to what was asked"
    );
    let tok = ok["access_token"].as_str().unwrap().to_string();
    // Insufficient scope: 403.
    let w = app
        .send_as(
            &tok,
            "POST",
            "Observation",
            Some(observation("x", "1")),
            &[],
        )
        .await;
    assert_eq!(w.status, 403, "{}", w.body);
    assert_eq!(w.body["issue"][0]["code"], "forbidden");
    let p = app
        .send_as(
            &tok,
            "POST",
            "Patient",
            Some(patient("z", None, "李四")),
            &[],
        )
        .await;
    assert_eq!(p.status, 201);
    assert_eq!(
        p.body["meta"]["source"], A,
        "the source is the client's institution"
    );
    // Rotation: the old secret keeps working until the next rotation.
    let new = tokio::task::block_in_place(|| a.rotate_client_secret("his-a").unwrap());
    assert_eq!(
        token("his-a", &secret, None).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        token("his-a", &new, None).send().await.unwrap().status(),
        200
    );
    // Wrong secrets: 401, then locked after five.
    for _ in 0..5 {
        let r = token("his-a", "wrong", None).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let locked = token("his-a", &new, None).send().await.unwrap();
    assert_eq!(locked.status(), 429, "locked even with the right secret");
    tokio::task::block_in_place(|| a.unlock("client:his-a").unwrap());
    assert_eq!(
        token("his-a", &new, None).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        app.client
            .post(format!("{}/auth/token", app.root))
            .form(&[("grant_type", "password")])
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    // Clinicians and operators sign in with passwords.
    tokio::task::block_in_place(|| {
        a.add_user(
            &hutong_access::accounts::User {
                username: "dr.li".into(),
                kind: hutong_access::Kind::Clinician,
                name: "李医生".into(),
                institution: Some(A.into()),
                practitioner: None,
                roles: vec![],
            },
            "correct horse",
        )
        .unwrap()
    });
    let login = |pw: &str| {
        app.client
            .post(format!("{}/auth/login", app.root))
            .json(&json!({"username": "dr.li", "password": pw}))
    };
    let r = login("correct horse").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let dr = v["access_token"].as_str().unwrap();
    let me = app.send_as(dr, "GET", "Patient", None, &[]).await;
    assert_eq!(me.status, 200);
    for _ in 0..5 {
        assert_eq!(login("nope").send().await.unwrap().status(), 401);
    }
    assert_eq!(login("correct horse").send().await.unwrap().status(), 429);
    assert!(tokio::task::block_in_place(|| a
        .add_user(
            &hutong_access::accounts::User {
                username: "short".into(),
                kind: hutong_access::Kind::Clinician,
                name: "x".into(),
                institution: Some(A.into()),
                practitioner: None,
                roles: vec![],
            },
            "1234"
        )
        .is_err()));
}

async fn residents_sign_in_with_a_one_time_code(app: &TestApp) {
    let r = region(app).await;
    let send = |phone: &str| {
        app.client
            .post(format!("{}/auth/otp", app.root))
            .json(&json!({"phone": phone}))
    };
    let verify = |body: Value| {
        app.client
            .post(format!("{}/auth/otp/verify", app.root))
            .json(&body)
    };
    assert_eq!(send(PHONE).send().await.unwrap().status(), 202);
    // An unknown number gets the same answer, and no code.
    assert_eq!(send("13900000000").send().await.unwrap().status(), 202);
    assert!(outbox(app, "13900000000").await.is_empty());
    let code = code_in(&outbox(app, PHONE).await[0]);
    // Two residents share this number (the other one too): the ID number says who.
    let ambiguous = verify(json!({"phone": PHONE, "code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(ambiguous.status(), 409);
    assert_eq!(send(PHONE).send().await.unwrap().status(), 202);
    let code = code_in(&outbox(app, PHONE).await[0]);
    let ok = verify(json!({"phone": PHONE, "code": code, "id_number": ID_NUMBER}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let v: Value = ok.json().await.unwrap();
    assert_eq!(v["patient"], r.person.as_str());
    // A code works once.
    let replay = verify(json!({"phone": PHONE, "code": code, "id_number": ID_NUMBER}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 401);
    let body: Value = replay.json().await.unwrap();
    assert!(body["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("already been used"));
    // Wrong codes lock the number.
    assert_eq!(send(PHONE).send().await.unwrap().status(), 202);
    let good = code_in(&outbox(app, PHONE).await[0]);
    // (The replay above was the first failure.)
    let wrong = if good == "000000" { "111111" } else { "000000" };
    for _ in 0..4 {
        assert_eq!(
            verify(json!({"phone": PHONE, "code": wrong, "id_number": ID_NUMBER}))
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
    }
    assert_eq!(
        verify(json!({"phone": PHONE, "code": good, "id_number": ID_NUMBER}))
            .send()
            .await
            .unwrap()
            .status(),
        429,
        "locked, even with the right code"
    );
    // The resident sees their own record, whole, and nobody else's.
    let me = v["access_token"].as_str().unwrap();
    let everything = app
        .send_as(
            me,
            "GET",
            &format!("Person/{}/$everything", r.person),
            None,
            &[],
        )
        .await;
    assert_eq!(everything.status, 200);
    let ids: Vec<String> = everything.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect();
    for id in [&r.pa, &r.pb, &r.obs_a, &r.obs_b, &r.psy_b] {
        assert!(
            ids.contains(id),
            "{id} missing from the resident's own record"
        );
    }
    assert_eq!(
        status_as(app, me, &format!("Observation/{}", r.other_obs)).await,
        403
    );
    let mine = app
        .send_as(me, "GET", &format!("Patient/{}", r.pa), None, &[])
        .await;
    assert_eq!(
        mine.body["identifier"][1]["value"], ID_NUMBER,
        "unmasked for the resident"
    );
    assert_eq!(
        app.send_as(
            me,
            "POST",
            "Observation",
            Some(observation(&r.pa, "1")),
            &[]
        )
        .await
        .status,
        403
    );
    // Or, once signed in, the resident sets a password and signs in with ID number and
    // password.
    let set = |token: &str, idn: &str| {
        app.client
            .post(format!("{}/auth/password", app.root))
            .bearer_auth(token.to_string())
            .json(&json!({"id_number": idn, "password": "my own secret"}))
    };
    assert_eq!(
        set(me, OTHER_ID).send().await.unwrap().status(),
        422,
        "not my ID number"
    );
    assert_eq!(set(me, ID_NUMBER).send().await.unwrap().status(), 204);
    assert_eq!(
        set(&app.clinician(A), ID_NUMBER)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let login = |pw: &str| {
        app.client
            .post(format!("{}/auth/login", app.root))
            .json(&json!({"id_number": ID_NUMBER, "password": pw}))
    };
    let ok = login("my own secret").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let v: Value = ok.json().await.unwrap();
    assert_eq!(v["patient"], r.person.as_str());
    assert_eq!(login("wrong one!").send().await.unwrap().status(), 401);
    // A resident's account is not a clinician's.
    let as_user = app
        .client
        .post(format!("{}/auth/login", app.root))
        .json(&json!({"username": "resident:x", "password": "my own secret"}))
        .send()
        .await
        .unwrap();
    assert_eq!(as_user.status(), 401);
}

async fn institutions_see_their_own_data_and_nothing_else_without_a_grant(app: &TestApp) {
    let r = region(app).await;
    let a = app.clinician(A);
    assert_eq!(
        status_as(app, &a, &format!("Observation/{}", r.obs_a)).await,
        200
    );
    let denied = app
        .send_as(&a, "GET", &format!("Observation/{}", r.obs_b), None, &[])
        .await;
    assert_eq!(denied.status, 403);
    assert!(denied.diagnostics().contains("$request-access"));
    // Searches, counts, includes, chains, _has, history, $everything: only A's own.
    let s = app
        .send_as(&a, "GET", "Observation?_total=accurate", None, &[])
        .await;
    assert_eq!(s.body["total"], 1);
    let chained = app
        .send_as(
            &a,
            "GET",
            &format!("Observation?subject:Patient.identifier={ID_SYSTEM}|{ID_NUMBER}"),
            None,
            &[],
        )
        .await;
    assert_eq!(chained.ids(), vec![r.obs_a.clone()]);
    let has = app
        .send_as(
            &a,
            "GET",
            "Patient?_has:Observation:subject:code=2345-7",
            None,
            &[],
        )
        .await;
    assert_eq!(
        has.body["total"], 0,
        "B's result does not show through _has"
    );
    let inc = app
        .send_as(
            &a,
            "GET",
            &format!("Patient?_id={}&_revinclude=Observation:subject", r.pa),
            None,
            &[],
        )
        .await;
    assert_eq!(inc.body["entry"].as_array().unwrap().len(), 2);
    let hist = app
        .send_as(&a, "GET", "Observation/_history", None, &[])
        .await;
    assert_eq!(hist.body["total"], 1);
    assert_eq!(
        status_as(app, &a, &format!("Patient/{}/$everything", r.pb)).await,
        403
    );
    let person = app
        .send_as(
            &a,
            "GET",
            &format!("Person/{}/$everything", r.person),
            None,
            &[],
        )
        .await;
    assert_eq!(
        person.status, 403,
        "the golden record is B's patient's until a grant"
    );
    // Clinicians read (user/*.rs); their institution's systems write: own yes, another
    // institution's no.
    let mut v0 = app
        .send_as(&a, "GET", &format!("Observation/{}", r.obs_a), None, &[])
        .await
        .body;
    v0["status"] = json!("amended");
    assert_eq!(
        app.send_as(
            &a,
            "PUT",
            &format!("Observation/{}", r.obs_a),
            Some(v0),
            &[]
        )
        .await
        .status,
        403,
        "a clinician's token does not write"
    );
    let a = app.system(A);
    let mut v = app
        .send_as(&a, "GET", &format!("Observation/{}", r.obs_a), None, &[])
        .await
        .body;
    v["status"] = json!("amended");
    assert_eq!(
        app.send_as(&a, "PUT", &format!("Observation/{}", r.obs_a), Some(v), &[])
            .await
            .status,
        200
    );
    let mut w = app.get(&format!("Observation/{}", r.obs_b)).await.body;
    w["status"] = json!("amended");
    let put = app
        .send_as(&a, "PUT", &format!("Observation/{}", r.obs_b), Some(w), &[])
        .await;
    assert_eq!(put.status, 403, "{}", put.body);
    assert_eq!(
        app.send_as(&a, "DELETE", &format!("Observation/{}", r.obs_b), None, &[])
            .await
            .status,
        403
    );
    assert_eq!(
        app.send_as(
            &a,
            "POST",
            "Consent",
            Some(json!({"resourceType": "Consent", "status": "active"})),
            &[]
        )
        .await
        .status,
        403
    );
    // $match and PIXm show only what A may see.
    let pix = app
        .send_as(
            &a,
            "GET",
            "Patient/$ihe-pix?sourceIdentifier=urn:mrn:a1|a1",
            None,
            &[],
        )
        .await;
    assert_eq!(pix.status, 200);
    assert!(
        !pix.body.to_string().contains(&r.pb),
        "B's patient not cross-referenced without a grant"
    );
    // $find: the person, masked, enough to ask for access.
    let found = app
        .send_as(
            &a,
            "GET",
            &format!("Person/$find?identifier={ID_SYSTEM}|{ID_NUMBER}"),
            None,
            &[],
        )
        .await;
    assert_eq!(found.status, 200, "{}", found.body);
    let p = &found.body["entry"][0]["resource"];
    assert_eq!(p["id"], r.person.as_str());
    assert_eq!(p["identifier"][0]["value"], "3301**********0222");
    assert_eq!(p["name"][0]["text"], "欧***");
    assert!(p.get("link").is_none() && p.get("telecom").is_none());
    assert_eq!(
        found.body["entry"][0]["search"]["extension"][0]["valueBoolean"],
        false
    );
    let browse = app
        .send_as(&a, "GET", "Person/$find?name=欧", None, &[])
        .await;
    assert_eq!(
        browse.status, 400,
        "no browsing without a strong identifier"
    );
}

async fn a_grant_by_sms_code_opens_the_record_until_revoked(app: &TestApp) {
    let r = region(app).await;
    let a = app.clinician(A);
    // A wrong code is refused and the request stays open.
    let req = app
        .send_as(
            &a,
            "POST",
            &format!("Person/{}/$request-access", r.person),
            Some(params(vec![json!({"name": "hours", "valueInteger": 1})])),
            &[],
        )
        .await;
    assert_eq!(req.status, 201);
    assert_eq!(
        req.body["extension"].as_array().unwrap().last().unwrap()["valueString"],
        "138****5678"
    );
    let consent = req.body["id"].as_str().unwrap().to_string();
    let sms = outbox(app, PHONE).await;
    assert!(sms[0].contains("甲医院"), "{sms:?}");
    let right = code_in(&sms[0]);
    let wrong = if right == "123456" {
        "654321"
    } else {
        "123456"
    };
    let bad = app
        .send_as(
            &a,
            "POST",
            &format!("Consent/{consent}/$verify-code"),
            Some(params(vec![json!({"name": "code", "valueString": wrong})])),
            &[],
        )
        .await;
    assert_eq!(bad.status, 422);
    // Another institution cannot use the code.
    let c = app.clinician(C);
    let steal = app
        .send_as(
            &c,
            "POST",
            &format!("Consent/{consent}/$verify-code"),
            Some(params(vec![json!({"name": "code", "valueString": right})])),
            &[],
        )
        .await;
    assert_eq!(steal.status, 403);
    let ok = app
        .send_as(
            &a,
            "POST",
            &format!("Consent/{consent}/$verify-code"),
            Some(params(vec![json!({"name": "code", "valueString": right})])),
            &[],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    // A replayed code does nothing.
    let again = app
        .send_as(
            &a,
            "POST",
            &format!("Consent/{consent}/$verify-code"),
            Some(params(vec![json!({"name": "code", "valueString": right})])),
            &[],
        )
        .await;
    assert_eq!(again.status, 409);
    // Now A sees B's records of this person — but not the mental-health diagnosis, and not
    // the other resident.
    assert_eq!(
        status_as(app, &a, &format!("Observation/{}", r.obs_b)).await,
        200
    );
    assert_eq!(
        status_as(app, &a, &format!("Condition/{}", r.psy_b)).await,
        403
    );
    assert_eq!(
        status_as(app, &a, &format!("Observation/{}", r.other_obs)).await,
        403
    );
    let everything = app
        .send_as(
            &a,
            "GET",
            &format!("Person/{}/$everything", r.person),
            None,
            &[],
        )
        .await;
    assert_eq!(everything.status, 200);
    let text = everything.body.to_string();
    assert!(text.contains(&r.obs_b) && !text.contains(&r.psy_b));
    let total = app
        .send_as(&a, "GET", "Condition?_summary=count", None, &[])
        .await;
    assert_eq!(
        total.body["total"], 0,
        "the sensitive item is not even counted"
    );
    // B's copy of the patient is masked for A (treatment view): name yes, ID number no.
    let pb = app
        .send_as(&a, "GET", &format!("Patient/{}", r.pb), None, &[])
        .await;
    assert_eq!(pb.body["name"][0]["text"], "欧阳雪梅");
    let ids = pb.body["identifier"].to_string();
    assert!(
        !ids.contains(ID_NUMBER) && ids.contains("3301**********0222"),
        "{ids}"
    );
    assert!(!pb.body.to_string().contains(PHONE));
    // The resident revokes: effective at once.
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
    assert_eq!(revoked.body["status"], "inactive");
    assert_eq!(
        status_as(app, &a, &format!("Observation/{}", r.obs_b)).await,
        403
    );
    // With the category named, the diagnosis opens too.
    grant_by_sms(app, &r, &["mental-health"]).await;
    assert_eq!(
        status_as(app, &a, &format!("Condition/{}", r.psy_b)).await,
        200
    );
}

async fn app_approval_standing_grants_and_expiry(app: &TestApp) {
    let r = region(app).await;
    let a = app.clinician(A);
    let req = app
        .send_as(
            &a,
            "POST",
            &format!("Person/{}/$request-access", r.person),
            Some(params(vec![json!({"name": "method", "valueCode": "app"})])),
            &[],
        )
        .await;
    assert_eq!(req.status, 201);
    let consent = req.body["id"].as_str().unwrap().to_string();
    let note = outbox(app, &format!("Person/{}", r.person)).await;
    assert!(note[0].contains("批准"), "{note:?}");
    // The resident sees the pending request among their Consents, and approves it.
    let me = app.resident(&r.person);
    let pending = app
        .send_as(&me, "GET", "Consent?status=proposed", None, &[])
        .await;
    assert_eq!(pending.ids(), vec![consent.clone()]);
    // Only the resident decides.
    assert_eq!(
        app.send_as(
            &a,
            "POST",
            &format!("Consent/{consent}/$approve"),
            Some(params(vec![])),
            &[]
        )
        .await
        .status,
        403
    );
    let other = app.resident("someone-else");
    assert_eq!(
        app.send_as(
            &other,
            "POST",
            &format!("Consent/{consent}/$approve"),
            Some(params(vec![])),
            &[]
        )
        .await
        .status,
        403
    );
    let ok = app
        .send_as(
            &me,
            "POST",
            &format!("Consent/{consent}/$approve"),
            Some(params(vec![])),
            &[],
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        status_as(app, &a, &format!("Observation/{}", r.obs_b)).await,
        200
    );
    // It expires (1.5 s in this configuration).
    tokio::time::sleep(std::time::Duration::from_millis(1_800)).await;
    assert_eq!(
        status_as(app, &a, &format!("Observation/{}", r.obs_b)).await,
        403,
        "expired"
    );
    // A denied request opens nothing.
    let c = app.clinician(C);
    let req = app
        .send_as(
            &c,
            "POST",
            &format!("Person/{}/$request-access", r.person),
            Some(params(vec![json!({"name": "method", "valueCode": "app"})])),
            &[],
        )
        .await;
    let id = req.body["id"].as_str().unwrap();
    let denied = app
        .send_as(
            &me,
            "POST",
            &format!("Consent/{id}/$deny"),
            Some(params(vec![])),
            &[],
        )
        .await;
    assert_eq!(denied.body["status"], "rejected");
    assert_eq!(
        status_as(app, &c, &format!("Observation/{}", r.obs_b)).await,
        403
    );
    // A standing authorization: the family doctor's centre, until revoked.
    let standing = app
        .send_as(
            &me,
            "POST",
            &format!("Person/{}/$grant", r.person),
            Some(params(vec![
                json!({"name": "institution", "valueReference": {"reference": "Organization/c"}}),
            ])),
            &[],
        )
        .await;
    assert_eq!(standing.status, 201, "{}", standing.body);
    assert!(standing.body["provision"]["period"].get("end").is_none());
    assert_eq!(
        status_as(app, &c, &format!("Observation/{}", r.obs_a)).await,
        200
    );
    assert_eq!(
        status_as(app, &c, &format!("Condition/{}", r.psy_b)).await,
        403
    );
}

async fn appointments_booked_through_the_platform_open_the_visit_window(app: &TestApp) {
    let r = region(app).await;
    let hs = app
        .put("HealthcareService/c-gp", json!({"resourceType": "HealthcareService", "id": "c-gp", "providedBy": {"reference": "Organization/c"}, "name": "全科门诊"}))
        .await;
    assert!(hs.status < 300);
    let booking = app.token_for(&hutong_access::Principal {
        kind: hutong_access::Kind::System,
        subject: "appointments".into(),
        name: None,
        institution: Some("urn:hutong:appointments".into()),
        practitioner: None,
        person: None,
        roles: vec![],
        scopes: hutong_access::Scopes::parse("system/Appointment.cruds"),
        booking: true,
    });
    let now = hutong_fhir::date::now_ms();
    let appt = json!({"resourceType": "Appointment", "status": "booked",
        "start": hutong_fhir::date::format_instant(now + 3_600_000), "end": hutong_fhir::date::format_instant(now + 5_400_000),
        "participant": [{"actor": {"reference": format!("Patient/{}", r.pa)}, "status": "accepted"},
                        {"actor": {"reference": "HealthcareService/c-gp"}, "status": "accepted"}]});
    let c = app.clinician(C);
    assert_eq!(
        status_as(app, &c, &format!("Observation/{}", r.obs_b)).await,
        403
    );
    let made = app
        .send_as(&booking, "POST", "Appointment", Some(appt.clone()), &[])
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    assert_eq!(
        status_as(app, &c, &format!("Observation/{}", r.obs_b)).await,
        200,
        "open for the visit"
    );
    // Cancelled: closed again.
    let id = made.body["id"].as_str().unwrap();
    let mut cancelled = made.body.clone();
    cancelled["status"] = json!("cancelled");
    let upd = app
        .send_as(
            &booking,
            "PUT",
            &format!("Appointment/{id}"),
            Some(cancelled),
            &[],
        )
        .await;
    assert_eq!(upd.status, 200, "{}", upd.body);
    assert_eq!(
        status_as(app, &c, &format!("Observation/{}", r.obs_b)).await,
        403
    );
    // An institution cannot book for itself a patient it may not read (a write about a
    // patient needs what a read needs), and trying opens nothing.
    let self_booked = app
        .send_as(&app.system(C), "POST", "Appointment", Some(appt), &[])
        .await;
    assert_eq!(self_booked.status, 403, "{}", self_booked.body);
    assert_eq!(
        status_as(app, &c, &format!("Observation/{}", r.obs_b)).await,
        403
    );
}

async fn break_glass_is_immediate_visible_notified_and_reviewed(app: &TestApp) {
    let r = region(app).await;
    let a = app.clinician(A);
    let no_reason = app
        .send_as(
            &a,
            "POST",
            &format!("Person/{}/$break-glass", r.person),
            Some(params(vec![])),
            &[],
        )
        .await;
    assert_eq!(no_reason.status, 400);
    let sys = app.system(A);
    assert_eq!(
        app.send_as(
            &sys,
            "POST",
            &format!("Person/{}/$break-glass", r.person),
            Some(params(vec![
                json!({"name": "reason", "valueString": "unconscious, suspected overdose"})
            ])),
            &[]
        )
        .await
        .status,
        403,
        "declared by a clinician, not a system"
    );
    let bg = app
        .send_as(
            &a,
            "POST",
            &format!("Person/{}/$break-glass", r.person),
            Some(params(vec![
                json!({"name": "reason", "valueString": "unconscious, suspected overdose"}),
            ])),
            &[],
        )
        .await;
    assert_eq!(bg.status, 201, "{}", bg.body);
    let consent = bg.body["id"].as_str().unwrap().to_string();
    assert_eq!(bg.body["provision"]["purpose"][0]["code"], "ETREAT");
    // Immediate, and an emergency may need the psychiatric history.
    assert_eq!(
        status_as(app, &a, &format!("Condition/{}", r.psy_b)).await,
        200
    );
    // The resident is told.
    let sms = outbox(app, PHONE).await;
    assert!(
        sms[0].contains("紧急") && sms[0].contains("unconscious"),
        "{sms:?}"
    );
    // Highlighted in the resident's access history.
    let me = app.resident(&r.person);
    let hist = app
        .send_as(
            &me,
            "GET",
            &format!("Person/{}/$access-history", r.person),
            None,
            &[],
        )
        .await;
    assert_eq!(hist.status, 200);
    let events = hist.body["entry"].as_array().unwrap();
    assert!(events
        .iter()
        .any(|e| e["resource"]["meta"]["tag"][0]["code"] == "break-glass"));
    assert!(events
        .iter()
        .any(|e| e["resource"]["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"));
    // The privacy officer's queue has it; an unjustified verdict ends the access.
    let po = app.operator(&[Role::PrivacyOfficer]);
    let queue = app.send_as(&po, "GET", "Task?code=https://hutong.dev/fhir/CodeSystem/access|break-glass-review&status=requested", None, &[]).await;
    assert_eq!(queue.status, 200, "{}", queue.body);
    let task = queue.ids();
    assert_eq!(task.len(), 1);
    assert_eq!(
        status_as(app, &a, &format!("Task/{}", task[0])).await,
        403,
        "not the clinician's to see"
    );
    let steward = app.operator(&[Role::IdentitySteward]);
    assert_eq!(
        app.send_as(
            &steward,
            "POST",
            &format!("Task/{}/$review", task[0]),
            Some(params(vec![
                json!({"name": "outcome", "valueCode": "justified"})
            ])),
            &[]
        )
        .await
        .status,
        403
    );
    let verdict = app
        .send_as(
            &po,
            "POST",
            &format!("Task/{}/$review", task[0]),
            Some(params(vec![
                json!({"name": "outcome", "valueCode": "unjustified"}),
                json!({"name": "note", "valueString": "no emergency on record"}),
            ])),
            &[],
        )
        .await;
    assert_eq!(verdict.status, 200, "{}", verdict.body);
    assert_eq!(verdict.body["status"], "completed");
    assert_eq!(
        status_as(app, &a, &format!("Condition/{}", r.psy_b)).await,
        403
    );
    let g = app.get(&format!("Consent/{consent}")).await;
    assert_eq!(g.body["status"], "inactive");
}

async fn proxies_read_for_those_who_made_them_proxy(app: &TestApp) {
    let r = region(app).await;
    let other_person = app
        .get(&format!("Person?link=Patient/{}", r.other))
        .await
        .body["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let carer = app.resident(&other_person);
    assert_eq!(
        status_as(app, &carer, &format!("Observation/{}", r.obs_a)).await,
        403
    );
    let me = app.resident(&r.person);
    // Nobody else makes proxies for me.
    assert_eq!(
        app.send_as(
            &carer,
            "POST",
            &format!("Person/{}/$grant-proxy", r.person),
            Some(params(vec![
                json!({"name": "grantee", "valueString": format!("{ID_SYSTEM}|{OTHER_ID}")})
            ])),
            &[]
        )
        .await
        .status,
        403
    );
    let g = app
        .send_as(
            &me,
            "POST",
            &format!("Person/{}/$grant-proxy", r.person),
            Some(params(vec![
                json!({"name": "grantee", "valueString": format!("{ID_SYSTEM}|{OTHER_ID}")}),
                json!({"name": "end", "valueString": "2099-01-01"}),
            ])),
            &[],
        )
        .await;
    assert_eq!(g.status, 201, "{}", g.body);
    assert_eq!(
        status_as(app, &carer, &format!("Observation/{}", r.obs_a)).await,
        200
    );
    assert_eq!(
        status_as(app, &carer, &format!("Condition/{}", r.psy_b)).await,
        403,
        "not the sensitive category"
    );
    // The proxy may act for me: approve a request.
    let a = app.clinician(A);
    let req = app
        .send_as(
            &a,
            "POST",
            &format!("Person/{}/$request-access", r.person),
            Some(params(vec![
                json!({"name": "method", "valueCode": "app"}),
                json!({"name": "hours", "valueInteger": 1}),
            ])),
            &[],
        )
        .await;
    let id = req.body["id"].as_str().unwrap();
    assert_eq!(
        app.send_as(
            &carer,
            "POST",
            &format!("Consent/{id}/$approve"),
            Some(params(vec![])),
            &[]
        )
        .await
        .status,
        200
    );
    // Revoked by me: over.
    let consent = g.body["id"].as_str().unwrap();
    assert_eq!(
        app.send_as(
            &me,
            "POST",
            &format!("Consent/{consent}/$revoke"),
            Some(params(vec![])),
            &[]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        status_as(app, &carer, &format!("Observation/{}", r.obs_a)).await,
        403
    );
    // An identity steward may record a guardian's proxy, with a reason.
    let steward = app.operator(&[Role::IdentitySteward]);
    let no_reason = app.send_as(&steward, "POST", &format!("Person/{}/$grant-proxy", r.person), Some(params(vec![json!({"name": "grantee", "valueReference": {"reference": format!("Person/{other_person}")}})])), &[]).await;
    assert_eq!(no_reason.status, 403);
    let with = app
        .send_as(&steward, "POST", &format!("Person/{}/$grant-proxy", r.person), Some(params(vec![json!({"name": "grantee", "valueReference": {"reference": format!("Person/{other_person}")}})])), &[("X-Hutong-Reason", "guardianship order 2026-17")])
        .await;
    assert_eq!(with.status, 201, "{}", with.body);
}

async fn residents_restrict_items_and_grants_must_name_them(app: &TestApp) {
    let r = region(app).await;
    grant_by_sms(app, &r, &[]).await;
    let a = app.clinician(A);
    assert_eq!(
        status_as(app, &a, &format!("Observation/{}", r.obs_b)).await,
        200
    );
    let me = app.resident(&r.person);
    let restricted = app
        .send_as(
            &me,
            "POST",
            &format!("Observation/{}/$restrict", r.obs_b),
            Some(params(vec![])),
            &[],
        )
        .await;
    assert_eq!(restricted.status, 200, "{}", restricted.body);
    assert_eq!(
        status_as(app, &a, &format!("Observation/{}", r.obs_b)).await,
        403
    );
    assert_eq!(
        status_as(app, &me, &format!("Observation/{}", r.obs_b)).await,
        200,
        "still the resident's"
    );
    // Not someone else's item, and not by an institution.
    assert_eq!(
        app.send_as(
            &me,
            "POST",
            &format!("Observation/{}/$restrict", r.other_obs),
            Some(params(vec![])),
            &[]
        )
        .await
        .status,
        403
    );
    assert_eq!(
        app.send_as(
            &a,
            "POST",
            &format!("Observation/{}/$restrict", r.obs_a),
            Some(params(vec![])),
            &[]
        )
        .await
        .status,
        403
    );
    // A new version from the source stays restricted.
    let mut v = app.get(&format!("Observation/{}", r.obs_b)).await.body;
    v["status"] = json!("amended");
    let sb = app.system(B);
    assert_eq!(
        app.send_as(
            &sb,
            "PUT",
            &format!("Observation/{}", r.obs_b),
            Some(v),
            &[]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        status_as(app, &a, &format!("Observation/{}", r.obs_b)).await,
        403
    );
    // A grant naming restricted items opens it; lifting the restriction does too.
    grant_by_sms(app, &r, &["restricted"]).await;
    assert_eq!(
        status_as(app, &a, &format!("Observation/{}", r.obs_b)).await,
        200
    );
    let c = app.clinician(C);
    let _ = c;
    assert_eq!(
        app.send_as(
            &me,
            "POST",
            &format!("Observation/{}/$unrestrict", r.obs_b),
            Some(params(vec![])),
            &[]
        )
        .await
        .status,
        200
    );
}

async fn operators_read_what_their_role_needs_masked_and_more_only_with_a_reason(app: &TestApp) {
    let r = region(app).await;
    let steward = app.operator(&[Role::IdentitySteward]);
    let p = app
        .send_as(&steward, "GET", &format!("Patient/{}", r.pa), None, &[])
        .await;
    assert_eq!(p.status, 200);
    assert_eq!(
        p.body["name"][0]["text"], "欧***",
        "masked without a reason"
    );
    assert!(!p.body.to_string().contains(ID_NUMBER));
    assert_eq!(
        p.body["meta"]["security"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()["code"],
        "MASKED"
    );
    assert_eq!(
        status_as(app, &steward, &format!("Observation/{}", r.obs_a)).await,
        403
    );
    let with = app
        .send_as(
            &steward,
            "GET",
            &format!("Observation/{}", r.obs_a),
            None,
            &[(
                "X-Hutong-Reason",
                "%E5%90%88%E5%B9%B6%E5%A4%8D%E6%A0%B8 case 7",
            )],
        )
        .await;
    assert_eq!(with.status, 200);
    let full = app
        .send_as(
            &steward,
            "GET",
            &format!("Patient/{}", r.pa),
            None,
            &[("X-Hutong-Reason", "merge review 7")],
        )
        .await;
    assert!(full.body.to_string().contains(ID_NUMBER));
    // The reason is in the audit trail.
    app.flush_audit();
    let (rows, _) = tokio::task::block_in_place(|| {
        app.engine
            .store
            .audit_about(None, i64::MIN, i64::MAX, 50, 0)
            .unwrap()
    });
    assert!(rows.iter().any(|x| x.entry.contains("合并复核 case 7")));
    // Link management is the steward's; a clinician cannot.
    let a = app.clinician(A);
    let link = app.send_as(&a, "POST", &format!("Person/{}/$unlink", r.person), Some(params(vec![json!({"name": "patient", "valueReference": {"reference": format!("Patient/{}", r.pb)}}), json!({"name": "reason", "valueString": "x"})])), &[]).await;
    assert_eq!(link.status, 403);
    let auditor = app.operator(&[Role::Auditor]);
    assert_eq!(
        status_as(app, &auditor, &format!("Patient/{}", r.pa)).await,
        403
    );
    assert_eq!(status_as(app, &auditor, "AuditEvent?_count=5").await, 200);
    assert_eq!(status_as(app, &a, "AuditEvent").await, 403);
}

async fn every_access_is_audited_and_residents_see_who_viewed_their_record(app: &TestApp) {
    let r = region(app).await;
    grant_by_sms(app, &r, &[]).await;
    let a = app.clinician(A);
    let _ = app
        .send_as(&a, "GET", &format!("Observation/{}", r.obs_b), None, &[])
        .await;
    let _ = app
        .send_as(
            &a,
            "GET",
            &format!("Observation?subject=Patient/{}", r.pb),
            None,
            &[],
        )
        .await;
    let me = app.resident(&r.person);
    let hist = app
        .send_as(
            &me,
            "GET",
            &format!("Person/{}/$access-history", r.person),
            None,
            &[],
        )
        .await;
    assert_eq!(hist.status, 200);
    let events: Vec<&Value> = hist.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .collect();
    let by_a: Vec<&&Value> = events
        .iter()
        .filter(|e| e["agent"][0]["who"]["identifier"]["value"] == "dr@urn:hutong:org:91330100A")
        .collect();
    assert!(by_a.iter().any(|e| e["subtype"][0]["code"] == "read"
        && e["entity"][0]["what"]["reference"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Observation/{}", r.obs_b))));
    assert!(by_a
        .iter()
        .any(|e| e["subtype"][0]["code"] == "search-type"));
    assert!(by_a
        .iter()
        .all(|e| e["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"));
    assert!(
        events.iter().any(|e| e["subtype"][1]["code"] == "grant"),
        "the grant itself"
    );
    // Nobody else's history for them; and not for another resident.
    let other = app.resident("another-person");
    assert_eq!(
        status_as(app, &other, &format!("Person/{}/$access-history", r.person)).await,
        403
    );
    // The auditor's view: AuditEvents, one by id, the chain verified.
    let auditor = app.operator(&[Role::Auditor]);
    let all = app
        .send_as(
            &auditor,
            "GET",
            &format!("AuditEvent?patient=Patient/{}&_count=100", r.pb),
            None,
            &[],
        )
        .await;
    assert!(all.body["total"].as_u64().unwrap() >= 3);
    let first = all.body["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let one = app
        .send_as(&auditor, "GET", &format!("AuditEvent/{first}"), None, &[])
        .await;
    assert_eq!(one.body["resourceType"], "AuditEvent");
    let v = app
        .send_as(&auditor, "GET", "AuditEvent/$verify", None, &[])
        .await;
    assert_eq!(v.body["parameter"][0]["valueBoolean"], true, "{}", v.body);
    // Writes carry their entry in their own transaction: the created Observation is there.
    let sa = app.system(A);
    let id = create_as(app, &sa, observation(&r.pa, "718-7")).await;
    let (rows, _) = tokio::task::block_in_place(|| {
        app.engine
            .store
            .audit_about(
                Some(&[hutong_store::shard_of(&r.pa)]),
                i64::MIN,
                i64::MAX,
                200,
                0,
            )
            .unwrap()
    });
    assert!(rows.iter().any(
        |x| x.entry.contains(&format!("Observation/{id}/_history/1"))
            && x.entry.contains("\"create\"")
    ));
}

async fn identity_data_is_encrypted_at_rest_and_still_searchable(app: &TestApp) {
    let r = region(app).await;
    app.flush_audit();
    // Nowhere in the database: not the ID number, the phone, the name or the street — in
    // no body, history row, search index or audit entry.
    let store = app.engine.store.clone();
    let mut stored: Vec<Vec<u8>> = Vec::new();
    for (table, cols) in [
        ("res", "body"),
        ("res_hist", "body"),
        ("ix_str", "norm, raw"),
        ("ix_tok", "code"),
        ("audit", "entry"),
    ] {
        let rows = tokio::task::block_in_place(|| {
            store
                .query_admin(&format!("SELECT {cols} FROM {table}"), &[])
                .unwrap()
        });
        for row in rows {
            for v in row {
                stored.push(v.into_blob());
            }
        }
    }
    if let hutong_store::sql::Dialect::Sqlite = store.dialect() {
        store.checkpoint().unwrap();
        let dir = app.engine.config.export_dir.parent().unwrap().to_path_buf();
        stored.push(std::fs::read(dir.join("hutong.db")).unwrap());
    }
    for secret in [ID_NUMBER, PHONE, "欧阳雪梅", "文三路"] {
        for b in &stored {
            assert!(
                !b.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} is stored in the clear"
            );
        }
    }
    // Yet found by exact identifier, phone, and name prefix.
    let by_id = app
        .get(&format!("Patient?identifier={ID_SYSTEM}|{ID_NUMBER}"))
        .await;
    assert_eq!(by_id.ids().len(), 2);
    let by_phone = app.get(&format!("Patient?phone={PHONE}")).await;
    assert_eq!(by_phone.ids().len(), 3);
    let by_name = app.get("Patient?name=欧阳").await;
    assert_eq!(by_name.ids().len(), 2);
    let exact = app.get("Patient?name:exact=欧阳雪梅").await;
    assert_eq!(exact.ids().len(), 2);
    let contains = app.get("Patient?name:contains=雪").await;
    assert_eq!(
        contains.status, 400,
        "no substring search on encrypted names"
    );
    let chained = app
        .get(&format!(
            "Observation?subject:Patient.identifier={ID_SYSTEM}|{ID_NUMBER}"
        ))
        .await;
    assert_eq!(chained.ids().len(), 2);
    // A new data key: old bodies still read, new ones use it; re-encryption moves them all.
    app.engine
        .access
        .keys
        .write()
        .unwrap()
        .rotate_data()
        .unwrap();
    assert_eq!(app.get(&format!("Patient/{}", r.pa)).await.status, 200);
    let n = tokio::task::block_in_place(|| hutong_server::reprotect(&app.engine.store).unwrap());
    assert!(n >= 3);
    let p = app.get(&format!("Patient/{}", r.pa)).await;
    assert_eq!(p.body["identifier"][1]["value"], ID_NUMBER);
    assert_eq!(
        app.get(&format!("Patient?identifier={ID_SYSTEM}|{ID_NUMBER}"))
            .await
            .ids()
            .len(),
        2
    );
    let _ = r.other;
}
