use hutong_server::{Application, Settings};
use hutong_store::testing::TempDir;
use serde_json::Value;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    _dir: Option<TempDir>,
    _pg: Option<hutong_store::testing::TestStore>,
}

fn settings(database: String) -> Settings {
    Settings {
        database,
        listen: "127.0.0.1:0".parse().unwrap(),
        body_limit: 1024 * 1024,
        default_source: "urn:test:default".into(),
        base_url: None,
        export_dir: None,
        link_interval: None,
        source_trust: Default::default(),
        thresholds: Default::default(),
    }
}

async fn start(s: Settings, store: Option<hutong_store::Store>) -> (String, reqwest::Client) {
    let app = match store {
        Some(st) => Application::with_store(s, st).await.unwrap(),
        None => Application::build(s).await.unwrap(),
    };
    let port = app.port();
    tokio::spawn(app.run_until(std::future::pending()));
    (
        format!("http://127.0.0.1:{port}/fhir"),
        reqwest::Client::new(),
    )
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Dropping the test database uses the blocking client, which must not run on the
        // async runtime's thread.
        if let Some(pg) = self._pg.take() {
            let _ = std::thread::spawn(move || drop(pg)).join();
        }
    }
}

/// A server on a fresh embedded store.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A server on a fresh embedded store, with settings adjusted by `f`.
pub async fn spawn_app_with(f: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = TempDir::new("api");
    let mut s = settings(dir.0.display().to_string());
    f(&mut s);
    let (base, client) = start(s, None).await;
    TestApp {
        base,
        client,
        _dir: Some(dir),
        _pg: None,
    }
}

/// A server on a fresh PostgreSQL database, or `None` when no server is reachable.
#[allow(dead_code)]
pub async fn spawn_pg_app() -> Option<TestApp> {
    let ts = tokio::task::spawn_blocking(hutong_store::testing::postgres)
        .await
        .unwrap()?;
    let db = match &ts.location {
        hutong_store::Location::Postgres(u) => u.clone(),
        _ => unreachable!(),
    };
    let (base, client) = start(settings(db), Some(ts.store.clone())).await;
    Some(TestApp {
        base,
        client,
        _dir: None,
        _pg: Some(ts),
    })
}

pub struct Res {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Res {
    pub fn header(&self, k: &str) -> Option<String> {
        self.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }
    /// The first issue's diagnostics of an OperationOutcome body.
    pub fn diagnostics(&self) -> String {
        assert_eq!(
            self.body["resourceType"], "OperationOutcome",
            "not an OperationOutcome: {}",
            self.body
        );
        self.body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    pub fn ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.body["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }
}

impl TestApp {
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Res {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        };
        let mut rb = self.client.request(method.parse().unwrap(), url);
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/fhir+json")
                .body(serde_json::to_vec(&b).unwrap());
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        self.finish(rb).await
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Res {
        let mut rb = self
            .client
            .request(method.parse().unwrap(), format!("{}/{}", self.base, path))
            .body(body);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        self.finish(rb).await
    }

    async fn finish(&self, rb: reqwest::RequestBuilder) -> Res {
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Res {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Res {
        self.send("GET", path, None, &[]).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Res {
        self.send("POST", path, Some(body), &[]).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Res {
        self.send("PUT", path, Some(body), &[]).await
    }
}
