//! The portals in a real browser, against `hutong demo`: Debian's chromium, headless, driven
//! by playwright-core. `e2e/resident.mjs`: the resident signs in with the code from the demo
//! outbox, sees the timeline, reports an error, approves a clinician's request and revokes it
//! — after which the clinician is refused. `e2e/clinician.mjs`: a clinician finds the
//! resident (masked), asks by SMS code, enters it, reads the summary; the resident revokes in
//! their portal and the clinician is refused again. Screenshots of each page are kept in
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

#[tokio::test(flavor = "multi_thread")]
async fn residents_and_clinicians_use_the_portals_in_a_real_browser() {
    if let Some(why) = missing() {
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
    let t: Value = client
        .post(format!("{root}/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let doctor = t["access_token"]
        .as_str()
        .expect("clinician token")
        .to_string();
    let r = client
        .post(format!("{root}/fhir/Person/{person}/$request-access"))
        .bearer_auth(&doctor)
        .header("content-type", "application/fhir+json")
        .body(
            json!({"resourceType": "Parameters", "parameter": [{"name": "method", "valueCode": "app"}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    let shots = repo().join("target/e2e-screenshots");
    for script in ["resident.mjs", "clinician.mjs"] {
        let env = [
            ("HUTONG_ROOT", root.clone()),
            ("HUTONG_PHONE", phone.clone()),
            ("HUTONG_ID_NUMBER", id_number.clone()),
            ("HUTONG_REQUESTER", institution.trim().to_string()),
            ("HUTONG_USER", user.clone()),
            ("HUTONG_PASSWORD", password.clone()),
            ("HUTONG_SHOTS", shots.display().to_string()),
        ];
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
    let platform = lines
        .iter()
        .find_map(|l| l.strip_prefix("export TOKEN="))
        .unwrap()
        .to_string();
    let all: Value = client
        .get(format!("{root}/fhir/Person/{person}/$everything"))
        .bearer_auth(&platform)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
