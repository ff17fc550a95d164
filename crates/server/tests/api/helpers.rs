use std::sync::{Arc, RwLock};

use hutong_access::principal::{Kind, Principal, Role, Scopes};
use hutong_access::Keyring;
use hutong_server::{Application, Engine, Settings};
use hutong_store::testing::TempDir;
use serde_json::Value;

pub struct TestApp {
    pub base: String,
    /// The server's origin (`http://127.0.0.1:port`), for `/auth` and `/dev`.
    #[allow(dead_code)]
    pub root: String,
    pub client: reqwest::Client,
    /// The running server's engine: for minting tokens and registering accounts.
    pub engine: Engine,
    /// The token requests carry unless they say otherwise: a platform service's.
    pub token: String,
    _dir: Option<TempDir>,
    _pg: Option<hutong_store::testing::TestStore>,
}

fn settings(database: String) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        body_limit: 1024 * 1024,
        default_source: "urn:test:default".into(),
        link_interval: None,
        dev_outbox: true,
        ..Settings::new(database)
    }
}

async fn start(s: Settings, store: Option<hutong_store::Store>) -> (String, String, Engine) {
    let app = match store {
        Some(st) => {
            let keys = Arc::new(RwLock::new(Keyring::generate().unwrap()));
            let k = keys.clone();
            let st2 = st.clone();
            tokio::task::spawn_blocking(move || hutong_server::protect(&st2, k))
                .await
                .unwrap()
                .unwrap();
            Application::with_store(s, st, keys).await.unwrap()
        }
        None => Application::build(s).await.unwrap(),
    };
    let port = app.port();
    let engine = app.engine.clone();
    tokio::spawn(app.run_until(std::future::pending()));
    (
        format!("http://127.0.0.1:{port}/fhir"),
        format!("http://127.0.0.1:{port}"),
        engine,
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

fn app_from(base: String, root: String, engine: Engine) -> TestApp {
    let token = engine
        .access
        .tokens
        .issue_for(&Principal::platform("test-suite"), 3600);
    TestApp {
        base,
        root,
        client: reqwest::Client::new(),
        engine,
        token,
        _dir: None,
        _pg: None,
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
    let (base, root, engine) = start(s, None).await;
    let mut app = app_from(base, root, engine);
    app._dir = Some(dir);
    app
}

/// A server on a fresh PostgreSQL database, or `None` when no server is reachable.
#[allow(dead_code)]
pub async fn spawn_pg_app() -> Option<TestApp> {
    spawn_pg_app_with(|_| {}).await
}

/// The same, with settings adjusted by `f`.
#[allow(dead_code)]
pub async fn spawn_pg_app_with(f: impl FnOnce(&mut Settings)) -> Option<TestApp> {
    let ts = tokio::task::spawn_blocking(hutong_store::testing::postgres)
        .await
        .unwrap()?;
    let db = match &ts.location {
        hutong_store::Location::Postgres(u) => u.clone(),
        _ => unreachable!(),
    };
    let mut s = settings(db);
    f(&mut s);
    let (base, root, engine) = start(s, Some(ts.store.clone())).await;
    let mut app = app_from(base, root, engine);
    app._pg = Some(ts);
    Some(app)
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

#[allow(dead_code)]
impl TestApp {
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Res {
        let token = self.token.clone();
        self.send_as(&token, method, path, body, headers).await
    }

    /// A request with `token` (empty: no Authorization header).
    pub async fn send_as(
        &self,
        token: &str,
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
        if !token.is_empty() {
            rb = rb.bearer_auth(token);
        }
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
            .bearer_auth(&self.token)
            .body(body);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        self.finish(rb).await
    }

    pub async fn finish(&self, rb: reqwest::RequestBuilder) -> Res {
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

    /// A token for `p`, signed by the server.
    pub fn token_for(&self, p: &Principal) -> String {
        self.engine.access.tokens.issue_for(p, 3600)
    }

    /// A token for an institution's system.
    pub fn system(&self, institution: &str) -> String {
        self.token_for(&Principal {
            kind: Kind::System,
            subject: format!("his@{institution}"),
            name: None,
            institution: Some(institution.into()),
            practitioner: None,
            person: None,
            roles: vec![],
            scopes: Scopes::parse("system/*.cruds"),
            booking: false,
        })
    }

    /// A token for a clinician of an institution.
    pub fn clinician(&self, institution: &str) -> String {
        self.token_for(&Principal {
            kind: Kind::Clinician,
            subject: format!("dr@{institution}"),
            name: Some("医生".into()),
            institution: Some(institution.into()),
            practitioner: None,
            person: None,
            roles: vec![],
            scopes: Scopes::parse("user/*.rs"),
            booking: false,
        })
    }

    /// A token for the resident whose Person is `person`.
    pub fn resident(&self, person: &str) -> String {
        self.token_for(&Principal {
            kind: Kind::Resident,
            subject: format!("resident:{person}"),
            name: None,
            institution: None,
            practitioner: None,
            person: Some(person.into()),
            roles: vec![],
            scopes: Scopes::parse("patient/*.rs"),
            booking: false,
        })
    }

    /// A token for an operator with `roles`.
    pub fn operator(&self, roles: &[Role]) -> String {
        self.token_for(&Principal {
            kind: Kind::Operator,
            subject: "op".into(),
            name: Some("运营".into()),
            institution: None,
            practitioner: None,
            person: None,
            roles: roles.to_vec(),
            scopes: Scopes::parse("user/*.rs"),
            booking: false,
        })
    }

    /// Waits until every audit entry handed over so far is written.
    pub fn flush_audit(&self) {
        assert!(self.engine.audit.flush(std::time::Duration::from_secs(10)));
    }
}

/// Declares each named flow (an `async fn(&TestApp)` of the calling module) as two tests: on
/// the embedded store and on PostgreSQL, the server's settings adjusted by `$settings`.
#[macro_export]
macro_rules! on_both_with {
    ($settings:path; $($name:ident),* $(,)?) => {
        mod on_sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() {
                let app = $crate::helpers::spawn_app_with($settings).await;
                super::$name(&app).await;
            } )*
        }
        mod on_postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() {
                if let Some(app) = $crate::helpers::spawn_pg_app_with($settings).await {
                    super::$name(&app).await;
                }
            } )*
        }
    };
}
