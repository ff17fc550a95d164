//! The portals in a real browser, against `hutong demo`: Debian's chromium, headless, driven
//! by playwright-core. `e2e/resident.mjs`: the resident signs in with the code from the demo
//! outbox, sees the timeline, reports an error, approves a clinician's request and revokes it
//! — after which the clinician is refused. `e2e/clinician.mjs`: a clinician finds the
//! resident (masked), asks by SMS code, enters it, reads the summary; the resident revokes in
//! their portal and the clinician is refused again. `e2e/operator.mjs`: the identity steward
//! resolves a review-queue pair side by side, the quality officer reads intake and scorecards
//! (and exports the report) and the work-order queue, the auditor verifies the chain, the
//! privacy officer rules on a break-glass access. Screenshots of each page are kept in
//! `target/e2e-screenshots/`.
//!
//! `.ci/run` installs chromium and the npm dependencies; where either is missing the test
//! says so and passes without running the browser.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

mod common;
use common::start;

/// The text between `before` and the next `after` on the first line that has `before`.
fn between(lines: &[String], before: &str, after: &str) -> String {
    lines
        .iter()
        .find_map(|l| {
            let i = l.find(before)? + before.len();
            let rest = &l[i..];
            Some(rest[..rest.find(after)?].to_string())
        })
        .unwrap_or_else(|| panic!("nothing after {before:?} in {lines:#?}"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Why the browser cannot run here, if it cannot.
fn missing() -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "no chromium at {chromium} (apt-get install chromium)"
        ));
    }
    if !repo().join("e2e/node_modules/playwright-core").exists() {
        return Some("e2e/node_modules is missing (cd e2e && npm ci)".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("node is not installed".into());
    }
    None
}

/// The access token of a staff account signed in through `/auth/login`.
async fn sign_in(client: &reqwest::Client, root: &str, user: &Value, password: &Value) -> String {
    let t: Value = client
        .post(format!("{root}/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    t["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{user} signs in: {t}"))
        .to_string()
}

/// POSTs a Parameters body to an operation; asserts `status`.
async fn operate(client: &reqwest::Client, url: String, token: &str, params: Value, status: u16) {
    let r = client
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Parameters", "parameter": params}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), status, "{}", r.text().await.unwrap());
}

/// A GET's JSON answer.
async fn get_json(client: &reqwest::Client, url: impl reqwest::IntoUrl, token: &str) -> Value {
    let r = client.get(url).bearer_auth(token).send().await.unwrap();
    r.json().await.unwrap()
}

/// A possible duplicate waiting in the identity review queue, made the way it happens: a
/// steward unlinks one institution's record from a person (who is not `keep`), the institution
/// then updates that record, and the platform — which never moves a link a person placed —
/// puts the certain match in front of a reviewer.
async fn review_task(
    client: &reqwest::Client,
    root: &str,
    platform: &str,
    creds: &Value,
    keep: &str,
) -> String {
    let fhir = |path: &str| format!("{root}/fhir/{path}");
    let steward = sign_in(
        client,
        root,
        &json!("steward"),
        &creds["operators"][0]["password"],
    )
    .await;
    let persons: Value = get_json(client, fhir("Person?_count=100"), platform).await;
    let person = persons["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|p| p["id"] != keep && p["link"].as_array().is_some_and(|l| l.len() >= 2))
        .expect("a person with records from two institutions");
    let patient = person["link"][1]["target"]["reference"]
        .as_str()
        .unwrap()
        .to_string();
    operate(
        client,
        fhir(&format!(
            "Person/{}/$unlink",
            person["id"].as_str().unwrap()
        )),
        &steward,
        json!([
            {"name": "patient", "valueReference": {"reference": patient}},
            {"name": "reason", "valueString": "就诊卡疑似借用，待核实"}]),
        200,
    )
    .await;
    // The institution that registered it updates the record.
    let mut record: Value = get_json(client, fhir(&patient), platform).await;
    let inst = creds["institutions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["source"] == record["meta"]["source"])
        .expect("the record's institution");
    let t = system_token(client, root, inst).await;
    record["telecom"] = json!([{"system": "phone", "value": "13600001234", "use": "mobile"}]);
    let r = client
        .put(fhir(&patient))
        .bearer_auth(&t)
        .header("content-type", "application/fhir+json")
        .body(record.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let code = format!(
        "{}|{}",
        hutong_link::persons::IDENTITY_CS,
        hutong_link::persons::REVIEW_CODE
    );
    for _ in 0..60 {
        let found: Value = client
            .get(fhir("Task"))
            .query(&[
                ("code", code.as_str()),
                ("status", "requested"),
                ("focus", patient.as_str()),
            ])
            .bearer_auth(platform)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(id) = found["entry"][0]["resource"]["id"].as_str() {
            return id.to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("no review task for {patient}");
}

#[tokio::test(flavor = "multi_thread")]
async fn residents_clinicians_and_operators_use_the_portals_in_a_real_browser() {
    if let Some(why) = missing() {
        // In CI the browser is installed by `.ci/run`: missing, it is a failure.
        assert!(
            !hutong_store::testing::in_ci(),
            "CI=true and the browser test cannot run: {why}"
        );
        eprintln!("SKIPPED: the browser test needs chromium and the e2e npm packages: {why}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("hutong-portal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let demo = start(&dir);
    let lines = &demo.lines;
    let login = between(
        lines,
        "Web portal for residents (居民端): ",
        "/portal/login",
    );
    let root = login.trim().to_string();
    let phone = between(lines, "{\"phone\":\"", "\"");
    let id_number = between(lines, "\"id_number\":\"", "\"");
    let person = between(lines, "/fhir/Person/", "/$everything");
    let institution = between(lines, "  ", "'s HIS");
    let user = between(lines, "{\"username\":\"", "\"");
    let password = between(lines, "\"password\":\"", "\"");

    // A clinician of the first institution asks for the resident's approval in the app.
    let client = reqwest::Client::new();
    let doctor = sign_in(&client, &root, &json!(user), &json!(password)).await;
    operate(
        &client,
        format!("{root}/fhir/Person/{person}/$request-access"),
        &doctor,
        json!([{"name": "method", "valueCode": "app"}]),
        201,
    )
    .await;

    // For the operators: a break-glass access to review, and a possible duplicate in the
    // identity review queue.
    // (By another institution's clinician: the first one's workstation flow starts unauthorized.)
    let creds: Value =
        serde_json::from_slice(&std::fs::read(dir.join("credentials.json")).unwrap()).unwrap();
    let other = &creds["institutions"][1];
    let emergency = sign_in(&client, &root, &other["clinician"], &other["password"]).await;
    operate(
        &client,
        format!("{root}/fhir/Person/{person}/$break-glass"),
        &emergency,
        json!([{"name": "reason", "valueString": "急诊抢救，患者昏迷"}]),
        201,
    )
    .await;
    let platform = lines
        .iter()
        .find_map(|l| l.strip_prefix("export TOKEN="))
        .unwrap()
        .to_string();
    let review_task = review_task(&client, &root, &platform, &creds, &person).await;

    let coordination = coordination_env(&client, &root, &platform, &creds).await;
    let shots = repo().join("target/e2e-screenshots");
    for script in [
        "resident.mjs",
        "clinician.mjs",
        "operator.mjs",
        "coordination.mjs",
    ] {
        let mut env = vec![
            ("HUTONG_REVIEW_TASK", review_task.clone()),
            ("HUTONG_ROOT", root.clone()),
            ("HUTONG_PHONE", phone.clone()),
            ("HUTONG_ID_NUMBER", id_number.clone()),
            ("HUTONG_REQUESTER", institution.trim().to_string()),
            ("HUTONG_USER", user.clone()),
            ("HUTONG_PASSWORD", password.clone()),
            ("HUTONG_SHOTS", shots.display().to_string()),
        ];
        env.extend(coordination.iter().cloned());
        let out = tokio::task::spawn_blocking(move || {
            Command::new("node")
                .arg(script)
                .current_dir(repo().join("e2e"))
                .envs(env)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{script} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(shots.join("02-timeline.png").exists());
    // Revoked in the browser: the clinician no longer reads another institution's record.
    let claims: Value = {
        use base64::Engine as _;
        let part = doctor.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    let own = claims.to_string();
    let all: Value = get_json(
        &client,
        format!("{root}/fhir/Person/{person}/$everything"),
        &platform,
    )
    .await;
    let foreign = all["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| {
            r["meta"]["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("urn:hutong:org:") && !own.contains(s))
        })
        .expect("the person has records from another institution");
    let r = client
        .get(format!(
            "{root}/fhir/{}/{}",
            foreign["resourceType"].as_str().unwrap(),
            foreign["id"].as_str().unwrap()
        ))
        .bearer_auth(&doctor)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "refused after the resident revoked");
    drop(demo);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A system client's token, by the institution's credentials.
async fn system_token(client: &reqwest::Client, root: &str, inst: &Value) -> String {
    let t: Value = client
        .post(format!("{root}/auth/token"))
        .basic_auth(
            inst["client_id"].as_str().unwrap(),
            inst["client_secret"].as_str(),
        )
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    t["access_token"].as_str().unwrap().to_string()
}

/// What `coordination.mjs` needs, found in the demo's region (or made through the API where
/// a small region lacks it): a family doctor with a contracted resident, a hospital and its
/// clinician, and a clinician of another institution about to order an HbA1c the resident
/// had at the hospital last month.
async fn coordination_env(
    client: &reqwest::Client,
    root: &str,
    platform: &str,
    creds: &Value,
) -> Vec<(&'static str, String)> {
    let fhir = |p: &str| format!("{root}/fhir/{p}");
    let insts = creds["institutions"].as_array().unwrap();
    let code = |i: &Value| i["client_id"].as_str().unwrap().to_string();
    let hospital = insts
        .iter()
        .find(|i| code(i).starts_with('t'))
        .expect("a tertiary hospital");
    let persons: Value = get_json(client, fhir("Person?_count=200"), platform).await;
    let persons: Vec<&Value> = persons["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .collect();
    let links = |p: &Value| -> Vec<String> {
        p["link"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["target"]["reference"].as_str())
            .map(|r| r.trim_start_matches("Patient/").to_string())
            .collect()
    };
    let phone = |p: &Value| -> String {
        p["telecom"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["system"] == "phone")
            .and_then(|t| t["value"].as_str())
            .unwrap_or("")
            .to_string()
    };
    // The family doctor: a centre's clinician, a resident with a record there and a phone.
    let (fd_person, fd_patient, centre) = persons
        .iter()
        .find_map(|p| {
            if phone(p).is_empty() {
                return None;
            }
            links(p).into_iter().find_map(|pt| {
                let c = insts.iter().find(|i| {
                    code(i).starts_with('c') && pt.starts_with(&format!("{}-", code(i)))
                })?;
                Some((*p, pt, c))
            })
        })
        .expect("a resident with a record at a community centre");
    // Their contract with it (recorded as the centre records one, if the region has none).
    let contracts: Value = get_json(
        client,
        fhir(&format!(
            "EpisodeOfCare?patient=Patient/{fd_patient}&status=active"
        )),
        platform,
    )
    .await;
    if contracts["total"].as_u64().unwrap_or(0) == 0 {
        let now = hutong_fhir::date::now_ms();
        let c = json!({"resourceType": "EpisodeOfCare", "status": "active",
            "type": [{"coding": [{"system": hutong_fhir::vocab::CONTRACT_SYSTEM, "code": "hypertension"}]}],
            "patient": {"reference": format!("Patient/{fd_patient}")},
            "managingOrganization": {"reference": format!("Organization/{}", code(centre))},
            "period": {"start": hutong_fhir::date::format_instant(now - 86_400_000),
                       "end": hutong_fhir::date::format_instant(now + 300 * 86_400_000)}});
        let t = system_token(client, root, centre).await;
        let r = client
            .post(fhir("EpisodeOfCare"))
            .bearer_auth(&t)
            .header("content-type", "application/fhir+json")
            .body(c.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    // Recognition: a person with records at the hospital and elsewhere; the hospital reports
    // an HbA1c last month; the other institution's clinician opens the record (break-glass:
    // the flow needs access, not the request pages another test walks through).
    let (rc_person, at_hospital, other) = persons
        .iter()
        .find_map(|p| {
            let l = links(p);
            let h = l
                .iter()
                .find(|x| x.starts_with(&format!("{}-", code(hospital))))?
                .clone();
            let o = l.iter().find_map(|x| {
                insts.iter().find(|i| {
                    let c = code(i);
                    x.starts_with(&format!("{c}-")) && !c.starts_with('t') && !c.starts_with("bc")
                })
            })?;
            Some((p["id"].as_str().unwrap().to_string(), h, o))
        })
        .expect("a resident with records at the hospital and elsewhere");
    let ht = system_token(client, root, hospital).await;
    let when = hutong_fhir::date::format_instant(hutong_fhir::date::now_ms() - 30 * 86_400_000);
    let obs = json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4", "display": "糖化血红蛋白"}], "text": "糖化血红蛋白"},
        "subject": {"reference": format!("Patient/{at_hospital}")}, "effectiveDateTime": when,
        "valueQuantity": {"value": 7.4, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}});
    let r = client
        .post(fhir("Observation"))
        .bearer_auth(&ht)
        .header("content-type", "application/fhir+json")
        .body(obs.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let rc = sign_in(client, root, &other["clinician"], &other["password"]).await;
    operate(
        client,
        fhir(&format!("Person/{rc_person}/$break-glass")),
        &rc,
        json!([{"name": "reason", "valueString": "门诊开单前核对既往检验结果"}]),
        201,
    )
    .await;
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    vec![
        ("HUTONG_FD_USER", s(&centre["clinician"])),
        ("HUTONG_FD_PASSWORD", s(&centre["password"])),
        ("HUTONG_FD_PERSON", s(&fd_person["id"])),
        ("HUTONG_FD_PHONE", phone(fd_person)),
        ("HUTONG_HOSPITAL_ORG", code(hospital)),
        ("HUTONG_HOSPITAL_USER", s(&hospital["clinician"])),
        ("HUTONG_HOSPITAL_PASSWORD", s(&hospital["password"])),
        ("HUTONG_RC_USER", s(&other["clinician"])),
        ("HUTONG_RC_PASSWORD", s(&other["password"])),
        ("HUTONG_RC_PERSON", rc_person),
        ("HUTONG_RC_VALUE", "7.4".into()),
        (
            "HUTONG_OPERATOR_PASSWORD",
            s(&creds["operators"][0]["password"]),
        ),
    ]
}
