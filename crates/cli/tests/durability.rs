//! Crash tests: `kill -9` of the real binary in the middle of transactions and of a bulk
//! import leaves the store consistent — no partial bundle, no lost acknowledged write, and a
//! re-run import that loads nothing twice.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_hutong");

struct Dir(std::path::PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn temp_dir(tag: &str) -> Dir {
    let p = std::env::temp_dir().join(format!("hutong-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    Dir(p)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(data: &std::path::Path, port: u16) -> Child {
    Command::new(BIN)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data)
        .env("HUTONG_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn wait_ready(client: &reqwest::Client, port: u16) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not start");
}

/// Registers a platform client in the store at `data` (before it is served) and returns its
/// secret.
fn add_client(data: &std::path::Path) -> String {
    let out = Command::new(BIN)
        .args([
            "access",
            "add-client",
            "--id",
            "crash",
            "--platform",
            "--data-dir",
        ])
        .arg(data)
        .env("HUTONG_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("client_secret:"))
        .unwrap()
        .trim()
        .to_string()
}

/// A client that signs in with the platform client's credentials and sends its token.
async fn signed_in(port: u16, secret: &str) -> reqwest::Client {
    let tok: Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/auth/token"))
        .basic_auth("crash", Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", tok["access_token"].as_str().unwrap())
            .parse()
            .unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap()
}

fn kill9(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn bundle(n: usize, size: usize) -> Value {
    let entries: Vec<Value> = (0..size)
        .map(|i| {
            json!({"fullUrl": format!("urn:uuid:{n}-{i}"),
                "resource": {"resourceType": "Observation", "status": "final",
                    "meta": {"tag": [{"system": "urn:crash", "code": format!("b{n}")}]},
                    "code": {"text": "x"}, "subject": {"reference": format!("urn:uuid:{n}-0")}},
                "request": {"method": "POST", "url": "Observation"}})
        })
        .map(|mut e| {
            if e["fullUrl"].as_str().unwrap().ends_with("-0") {
                e["resource"] = json!({"resourceType": "Patient",
                    "meta": {"tag": [{"system": "urn:crash", "code": format!("b{}", n)}]}});
                e["request"]["url"] = json!("Patient");
            }
            e
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

async fn count(client: &reqwest::Client, port: u16, rtype: &str, query: &str) -> u64 {
    let v: Value = client
        .get(format!(
            "http://127.0.0.1:{port}/fhir/{rtype}?{query}&_summary=count"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["total"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_during_transactions_loses_no_acknowledged_bundle_and_leaves_no_partial_one() {
    let dir = temp_dir("crash-tx");
    let port = free_port();
    let secret = add_client(&dir.0);
    let mut server = serve(&dir.0, port);
    wait_ready(&reqwest::Client::new(), port).await;
    let client = signed_in(port, &secret).await;
    const SIZE: usize = 300;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for w in 0..3 {
        let client = client.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0.. {
                let n = k * 3 + w;
                let body = serde_json::to_vec(&bundle(n, SIZE)).unwrap();
                let r = client
                    .post(format!("http://127.0.0.1:{port}/fhir"))
                    .header("content-type", "application/fhir+json")
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        if r.bytes().await.is_ok() {
                            acked.lock().unwrap().push(n);
                        }
                    }
                    _ => return k * 3 + w,
                }
            }
            unreachable!()
        }));
    }
    // Let several bundles commit, then kill the server mid-stream.
    let t0 = Instant::now();
    while acked.lock().unwrap().len() < 6 && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    kill9(&mut server);
    let mut attempted = 0;
    for t in tasks {
        attempted = attempted.max(t.await.unwrap());
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 6,
        "the server acknowledged too few bundles before the kill"
    );

    let mut server = serve(&dir.0, port);
    wait_ready(&client, port).await;
    // Tokens outlive the restart: same keyring.
    for n in 0..=attempted + 3 {
        let q = format!("_tag=urn:crash|b{n}");
        let obs = count(&client, port, "Observation", &q).await;
        let pat = count(&client, port, "Patient", &q).await;
        let total = obs + pat;
        assert!(
            total == 0 || total == SIZE as u64,
            "bundle {n} is partial: {total} of {SIZE}"
        );
        if acked.contains(&n) {
            assert_eq!(total, SIZE as u64, "acknowledged bundle {n} was lost");
        }
    }
    kill9(&mut server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_import_resumes_without_loading_anything_twice() {
    let dir = temp_dir("crash-import");
    let data = dir.0.join("data");
    let file = dir.0.join("patients.ndjson");
    const N: usize = 30_000;
    {
        use std::io::Write;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for i in 0..N {
            // No ids: a chunk loaded twice would show up as extra resources.
            let p = json!({"resourceType": "Patient", "identifier": [{"system": "urn:crash", "value": format!("p{i}")}],
                "name": [{"family": "张", "given": ["伟"]}], "birthDate": "1980-01-01"});
            writeln!(f, "{p}").unwrap();
        }
    }
    let import = || {
        Command::new(BIN)
            .arg("import")
            .arg(&file)
            .arg("--data-dir")
            .arg(&data)
            // Killed while the value indexes are away: the next run (or open) builds them.
            .args(["--indexes", "defer"])
            .env("HUTONG_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut first = import();
    // Kill it once some chunks are in.
    let t0 = Instant::now();
    loop {
        let db = data.join("hutong.db-wal");
        if db.exists() && std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) > 2_000_000 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) || first.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    kill9(&mut first);
    let second = import().wait_with_output().unwrap();
    assert!(second.status.success());
    let out = String::from_utf8_lossy(&second.stdout);
    assert!(out.contains("chunks were already loaded"), "{out}");

    let port = free_port();
    let secret = add_client(&data);
    let mut server = serve(&data, port);
    wait_ready(&reqwest::Client::new(), port).await;
    let client = signed_in(port, &secret).await;
    assert_eq!(
        count(&client, port, "Patient", "identifier=urn:crash|p0").await,
        1
    );
    assert_eq!(
        count(
            &client,
            port,
            "Patient",
            &format!("identifier=urn:crash|p{}", N - 1)
        )
        .await,
        1
    );
    assert_eq!(
        count(&client, port, "Patient", "birthdate=1980").await,
        N as u64
    );
    // A third run finds everything done.
    let third = import().wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&third.stdout).contains("Loaded 0 resources"));
    kill9(&mut server);
}
