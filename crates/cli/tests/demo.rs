//! `hutong demo` from the outside: the README's command generates a region, loads it, and
//! serves it; the printed guide's links work; a second run replaces the first; a directory
//! that is not a demo is left alone.

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::{start, Demo, BIN};

fn url_after(lines: &[String], needle: &str) -> String {
    lines
        .iter()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("http") && w.contains(needle))
        })
        .unwrap_or_else(|| panic!("no link with {needle} in {lines:#?}"))
        .to_string()
}

async fn get(client: &reqwest::Client, url: &str) -> Value {
    let r = client.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.json().await.unwrap()
}

/// The platform token the guide prints (`export TOKEN=…`).
fn token(lines: &[String]) -> String {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("export TOKEN="))
        .unwrap_or_else(|| panic!("no token in {lines:#?}"))
        .to_string()
}

fn authorized(token: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_generates_loads_serves_and_prints_working_links() {
    let dir = std::env::temp_dir().join(format!("hutong-demo-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for run in 0..2 {
        let demo = start(&dir);
        let lines = &demo.lines;
        // Without a token nothing but the capability statement is served.
        let anonymous = reqwest::Client::new()
            .get(url_after(lines, "/Organization"))
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 401);
        let client = authorized(&token(lines));
        // The generator injects defects into about 1 % of resources; the intake rules reject
        // those that are errors, and nothing else.
        let loaded = lines
            .iter()
            .find(|l| l.starts_with("Loaded "))
            .expect("a summary");
        let num = |s: &str| -> u64 { s.split_whitespace().next().unwrap().parse().unwrap() };
        let n_loaded = num(&loaded["Loaded ".len()..]);
        let n_rejected = loaded.split_once('(').map_or(0, |(_, r)| num(r));
        assert!(n_loaded > 5000 && n_rejected * 50 < n_loaded, "{loaded}");
        assert!(
            run == 1 || n_rejected > 0,
            "the injected defects are rejected: {lines:#?}"
        );
        let meta = get(&client, &url_after(lines, "/metadata")).await;
        assert_eq!(meta["resourceType"], "CapabilityStatement");
        let orgs = get(&client, &url_after(lines, "/Organization")).await;
        assert_eq!(
            orgs["total"], 8,
            "run {run}: a second run replaces the first region"
        );
        let by_id = get(&client, &url_after(lines, "identifier=")).await;
        let entries = by_id["entry"]
            .as_array()
            .expect("the example resident is found");
        assert!(entries.len() >= 2, "seen at several institutions: {by_id}");
        let sources: std::collections::HashSet<&str> = entries
            .iter()
            .map(|e| e["resource"]["meta"]["source"].as_str().unwrap())
            .collect();
        assert_eq!(sources.len(), entries.len(), "one Patient per institution");
        assert!(sources.iter().all(|s| s.starts_with("urn:hutong:org:")));
        let everything = get(&client, &url_after(lines, "$everything")).await;
        assert!(everything["entry"].as_array().unwrap().len() > 1);
        let hba1c = get(&client, &url_after(lines, "4548-4")).await;
        assert_eq!(hba1c["resourceType"], "Bundle");
        // The accounts it printed work: an institution's clinician signs in, and a resident
        // gets a code by SMS (the development outbox) and signs in with it.
        let creds: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("credentials.json")).unwrap())
                .unwrap();
        let root = url_after(lines, "/metadata").replace("/fhir/metadata", "");
        let login = reqwest::Client::new()
            .post(format!("{root}/auth/login"))
            .json(&serde_json::json!({"username": creds["institutions"][0]["clinician"], "password": "hutong-demo"}))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 200);
        let outbox = url_after(lines, "/dev/outbox?to=");
        let phone = outbox.rsplit('=').next().unwrap().to_string();
        let sent = reqwest::Client::new()
            .post(format!("{root}/auth/otp"))
            .json(&serde_json::json!({"phone": phone}))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 202);
        let messages = get(&reqwest::Client::new(), &outbox).await;
        let text = messages["messages"][0]["body"]
            .as_str()
            .unwrap()
            .to_string();
        let code: String = text.chars().filter(char::is_ascii_digit).take(6).collect();
        let id_number = url_after(lines, "identifier=")
            .rsplit('|')
            .next()
            .unwrap()
            .to_string();
        let signed_in = reqwest::Client::new()
            .post(format!("{root}/auth/otp/verify"))
            .json(&serde_json::json!({"phone": phone, "code": code, "id_number": id_number}))
            .send()
            .await
            .unwrap();
        let status = signed_in.status();
        let body: Value = signed_in.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        // The resident reads their own record, and sees who viewed it.
        let me = authorized(body["access_token"].as_str().unwrap());
        let person = body["patient"].as_str().unwrap();
        let own = get(&me, &url_after(lines, "$access-history")).await;
        assert!(
            own["total"].as_u64().unwrap() > 0,
            "the platform token's reads are listed"
        );
        assert!(url_after(lines, "$access-history").contains(person));
    }
    // Not a demo directory: refused, untouched.
    let other = dir.join("region");
    let status = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--dir"])
        .arg(&other)
        .env("HUTONG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    assert!(other.join("truth/residents.csv").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `--format both`: the per-patient transaction bundles hold exactly the NDJSON resources,
/// and the real server accepts them as transactions.
#[tokio::test(flavor = "multi_thread")]
async fn synth_bundles_match_the_ndjson_and_load_as_transactions() {
    let dir = std::env::temp_dir().join(format!("hutong-synth-bundles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("region");
    let ok = Command::new(BIN)
        .args([
            "synth",
            "--residents",
            "40",
            "--institutions",
            "6",
            "--years",
            "2",
            "--format",
            "both",
            // Clean data: every bundle must load (the intake rules reject injected defects).
            "--defect-rate",
            "0",
            "--out",
        ])
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let port = free_port();
    // The region's registry (institutions, practitioners) first: the bundles refer to it.
    let registry = Command::new(BIN)
        .arg("import")
        .arg(out.join("registry"))
        .arg("--data-dir")
        .arg(dir.join("store"))
        .env("HUTONG_LOG", "warn")
        .output()
        .unwrap();
    assert!(registry.status.success(), "{registry:?}");
    // A platform service's client, registered at the command line before serving.
    let added = Command::new(BIN)
        .args([
            "access",
            "add-client",
            "--id",
            "loader",
            "--platform",
            "--data-dir",
        ])
        .arg(dir.join("store"))
        .env("HUTONG_LOG", "warn")
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    let printed = String::from_utf8_lossy(&added.stdout).to_string();
    let secret = printed
        .lines()
        .find_map(|l| l.strip_prefix("client_secret:"))
        .unwrap()
        .trim()
        .to_string();
    let server_child = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.join("store"))
        .env("HUTONG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Demo {
        child: server_child,
        lines: Vec::new(),
    };
    let base = format!("http://127.0.0.1:{port}");
    for _ in 0..600 {
        if reqwest::Client::new()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tok: Value = reqwest::Client::new()
        .post(format!("{base}/auth/token"))
        .basic_auth("loader", Some(&secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client = authorized(tok["access_token"].as_str().unwrap());
    let mut from_bundles = std::collections::BTreeSet::new();
    let mut from_ndjson = std::collections::BTreeSet::new();
    let mut posted = 0;
    for inst in std::fs::read_dir(out.join("institutions")).unwrap() {
        let inst = inst.unwrap().path();
        for f in std::fs::read_dir(&inst).unwrap() {
            let f = f.unwrap().path();
            // The clinics' schedules and the family doctor teams are the institution's, not a
            // patient's: they are in the NDJSON only, not in the per-patient bundles.
            let clinic = f
                .file_stem()
                .is_some_and(|n| n == "Schedule" || n == "Slot" || n == "CareTeam");
            if f.extension().is_some_and(|x| x == "ndjson") && !clinic {
                for l in std::fs::read_to_string(&f).unwrap().lines() {
                    from_ndjson.insert(l.to_string());
                }
            }
        }
        for b in std::fs::read_dir(inst.join("bundles")).unwrap() {
            let body = std::fs::read(b.unwrap().path()).unwrap();
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["type"], "transaction");
            for e in v["entry"].as_array().unwrap() {
                let r = &e["resource"];
                assert_eq!(e["request"]["method"], "PUT");
                assert_eq!(
                    e["request"]["url"],
                    format!(
                        "{}/{}",
                        r["resourceType"].as_str().unwrap(),
                        r["id"].as_str().unwrap()
                    )
                );
                from_bundles.insert(r.to_string());
            }
            if posted < 25 {
                let resp = client
                    .post(format!("{base}/fhir"))
                    .header("content-type", "application/fhir+json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                let text = resp.text().await.unwrap();
                assert_eq!(status, 200, "{text}");
                posted += 1;
            }
        }
    }
    assert!(posted > 0);
    assert_eq!(from_bundles, from_ndjson);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
