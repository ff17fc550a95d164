//! Test support: a fresh store on each backend. PostgreSQL tests create a uniquely named
//! database on the server at `HUTONG_TEST_PG` (default `postgres://postgres@127.0.0.1:5432`)
//! and drop it afterwards; they are skipped, with a message, when no server answers.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{AuditEntry, AuditHook, Change, Location, Store};

/// An audit hook for tests: records the changes of each write under a test actor.
pub struct TestAudit;

/// The audit hook storage tests write with.
pub static AUDIT: TestAudit = TestAudit;

impl AuditHook for TestAudit {
    fn entry(&self, changes: &[Change]) -> AuditEntry {
        let what: Vec<String> = changes
            .iter()
            .map(|c| format!("{}/{}/_history/{}", c.rtype, c.id, c.version))
            .collect();
        AuditEntry {
            ts: hutong_fhir::date::now_ms(),
            entry: serde_json::json!({"who": "test", "changes": what}).to_string(),
            subjects: changes
                .iter()
                .map(|c| c.shard)
                .filter(|s| *s != 0)
                .collect(),
        }
    }
}

static N: AtomicUsize = AtomicUsize::new(0);

/// A store that cleans up after itself.
pub struct TestStore {
    pub store: Store,
    pub location: Location,
    _dir: Option<TempDir>,
    pg_drop: Option<(String, String)>,
}

/// A temporary directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = N.fetch_add(1, Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("hutong-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Some((admin, db)) = self.pg_drop.take() {
            // FORCE ends our own pooled connections too.
            if let Ok(mut c) = postgres::Client::connect(&admin, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
            }
        }
    }
}

pub fn sqlite() -> TestStore {
    let dir = TempDir::new("store");
    let location = Location::Sqlite(dir.0.clone());
    let store = Store::open(&location).expect("open sqlite store");
    TestStore {
        store,
        location,
        _dir: Some(dir),
        pg_drop: None,
    }
}

/// Whether the tests run in CI (`CI=true`), where a test whose server or browser is missing
/// fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The PostgreSQL server URL for tests (without a database name).
pub fn pg_server() -> String {
    std::env::var("HUTONG_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A fresh PostgreSQL database, or `None` (with a message) when no server is reachable.
pub fn postgres() -> Option<TestStore> {
    let server = pg_server();
    let admin = format!("{server}/postgres");
    let mut c = match postgres::Client::connect(&admin, postgres::NoTls) {
        Ok(c) => c,
        // In CI a missing server is a failure, never a quiet skip: its `.ci/run` starts one.
        Err(e) if in_ci() => panic!("CI=true and no PostgreSQL server at {server}: {e}"),
        Err(e) => {
            eprintln!("SKIPPED: no PostgreSQL server at {server} ({e})");
            return None;
        }
    };
    let n = N.fetch_add(1, Ordering::SeqCst);
    let db = format!("hutong_test_{}_{n}", std::process::id());
    c.batch_execute(&format!("CREATE DATABASE {db}"))
        .expect("create test database");
    let location = Location::Postgres(format!("{server}/{db}"));
    let store = Store::open(&location).expect("open postgres store");
    Some(TestStore {
        store,
        location,
        _dir: None,
        pg_drop: Some((admin, db)),
    })
}
