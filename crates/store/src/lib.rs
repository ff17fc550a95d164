//! Versioned FHIR resource storage and search.
//!
//! Layout:
//! - [`Store`]: the handle the rest of Hutong uses: `read`, `vread`, `history`, `search`,
//!   `everything`, and `write` (one database transaction, in which [`Tx`] creates, updates,
//!   deletes and searches).
//! - `sql`: the two backends (embedded SQLite, PostgreSQL) behind one small connection trait.
//! - `schema`: tables for both dialects and the catalog of interned ids.
//! - `search`: FHIR search parameters → conditions → SQL; includes, sorting, paging.
//! - `pool`: connection pools.
//!
//! Architecture invariants:
//! - A `write` is one database transaction: every resource, version and index row of it
//!   commits together or not at all.
//! - Index rows exist only for current, non-deleted versions, so a search never sees a
//!   superseded or deleted resource.
//! - Every clinical row carries `shard` (the owning Patient's hash) first in its key.

pub mod codec;
mod pool;
pub mod schema;
pub mod search;
pub mod sql;
/// The PostgreSQL client, re-exported for tools that administer databases.
pub mod pg {
    pub use postgres::{Client, NoTls};
}
#[doc(hidden)]
pub mod testing;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde_json::Value;

use pool::{Pool, Pooled};
use schema::Catalog;
pub use search::{Include, Page, Query, SearchError, Total};
use sql::{Conn, Dialect, PgConn, SqliteConn, Val};
pub use write::{Prepared, Tx};

/// Errors from the store. `Conflict`, `VersionMismatch`, `Gone`, `Invalid` and `Search` are
/// the caller's fault (4xx); the rest are the platform's (5xx).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("version conflict: expected version {expected}, current is {current}")]
    VersionMismatch { expected: i64, current: i64 },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error("database schema: {0}")]
    Schema(String),
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] postgres::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// True when a concurrent writer got there first (unique violation, serialization
    /// failure, deadlock): the caller may retry the whole transaction.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Postgres(e) => e.code().is_some_and(|c| {
                let c = c.code();
                c == "23505" || c == "40001" || c == "40P01"
            }),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DatabaseBusy
            }
            _ => false,
        }
    }
}

/// An error type a write transaction can fail with: anything a `StoreError` converts into,
/// and which says whether running the transaction again may succeed.
pub trait TxError: From<StoreError> {
    fn retryable(&self) -> bool;
}

impl TxError for StoreError {
    fn retryable(&self) -> bool {
        self.is_retryable()
    }
}

/// One stored version of a resource.
#[derive(Debug, Clone)]
pub struct Stored {
    pub rtype: String,
    pub id: String,
    pub version: i64,
    pub last_updated: i64,
    pub deleted: bool,
    /// The resource JSON exactly as served (with `id` and `meta`); empty when deleted.
    pub body: Vec<u8>,
}

impl Stored {
    pub fn json(&self) -> Result<Value, StoreError> {
        serde_json::from_slice(&self.body).map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

/// Where the data lives.
#[derive(Debug, Clone)]
pub enum Location {
    /// An embedded SQLite database in this directory.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL.
    Postgres(String),
}

impl Location {
    /// `postgres://…` or `postgresql://…` selects PostgreSQL; anything else is a directory.
    pub fn parse(s: &str) -> Location {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Location::Postgres(s.to_string())
        } else {
            Location::Sqlite(PathBuf::from(s))
        }
    }
}

/// Which versions a history request covers.
#[derive(Debug, Clone)]
pub enum HistoryScope {
    Instance { rtype: String, id: String },
    Type(String),
    System,
}

pub(crate) struct Inner {
    writer: Pool,
    readers: Pool,
    catalog: RwLock<Catalog>,
    dialect: Dialect,
    written: std::sync::atomic::AtomicU64,
    training: std::sync::atomic::AtomicBool,
}

/// The store handle; cheap to clone, shared across threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
    PRAGMA foreign_keys=OFF; PRAGMA busy_timeout=10000; PRAGMA cache_size=-65536;
    PRAGMA temp_store=MEMORY; PRAGMA mmap_size=1073741824; PRAGMA wal_autocheckpoint=10000;";

fn open_sqlite(path: &Path) -> Result<Box<dyn Conn>, StoreError> {
    let c = rusqlite::Connection::open(path)?;
    c.execute_batch(SQLITE_PRAGMAS)?;
    c.set_prepared_statement_cache_capacity(256);
    Ok(Box::new(SqliteConn(c)))
}

fn open_pg(url: &str) -> Result<Box<dyn Conn>, StoreError> {
    let client = postgres::Client::connect(url, postgres::NoTls)?;
    Ok(Box::new(PgConn::new(client)))
}

impl Store {
    /// Opens (creating if needed) the store at `loc`.
    pub fn open(loc: &Location) -> Result<Store, StoreError> {
        let (writer, readers, dialect) = match loc {
            Location::Sqlite(dir) => {
                std::fs::create_dir_all(dir)?;
                let file = dir.join("hutong.db");
                let f1 = file.clone();
                let writer = Pool::new(1, Box::new(move || open_sqlite(&f1)));
                let readers = Pool::new(8, Box::new(move || open_sqlite(&file)));
                (writer, readers, Dialect::Sqlite)
            }
            Location::Postgres(url) => {
                let u1 = url.clone();
                let u2 = url.clone();
                // Writers run concurrently on PostgreSQL; readers get their own connections
                // so a long import never starves reads.
                let writer = Pool::new(4, Box::new(move || open_pg(&u1)));
                let readers = Pool::new(8, Box::new(move || open_pg(&u2)));
                (writer, readers, Dialect::Postgres)
            }
        };
        let catalog = {
            let mut c = writer.get()?;
            schema::create(c.conn())?;
            Catalog::load(c.conn())?
        };
        tracing::info!(backend = ?dialect, "Store opened.");
        let store = Store {
            inner: Arc::new(Inner {
                writer,
                readers,
                catalog: RwLock::new(catalog),
                dialect,
                written: Default::default(),
                training: Default::default(),
            }),
        };
        // A store that grew before it had a dictionary gets one now.
        if dialect == Dialect::Sqlite && store.catalog().codec.current_id().is_none() {
            let n = store.query_admin("SELECT COUNT(*) FROM res", &[])?[0][0].int() as u64;
            store.after_commit(n);
        }
        Ok(store)
    }

    pub fn dialect(&self) -> Dialect {
        self.inner.dialect
    }

    fn reader(&self) -> Result<Pooled<'_>, StoreError> {
        self.inner.readers.get()
    }

    pub(crate) fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.inner.catalog.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in one database transaction; commits when it returns `Ok`, rolls back
    /// otherwise. Retries the whole closure when a concurrent writer won a race.
    pub fn write<R, E: TxError>(
        &self,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.write_once(&mut f) {
                Err(e) if e.retryable() && attempt < 5 => {
                    tracing::debug!(attempt, "Retrying a transaction after a conflict.");
                    std::thread::sleep(std::time::Duration::from_millis(5 * attempt));
                }
                r => return r,
            }
        }
    }

    fn write_once<R, E: TxError>(
        &self,
        f: &mut impl FnMut(&mut Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut pooled = self.inner.writer.get()?;
        let conn = pooled.conn();
        conn.batch(match self.inner.dialect {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        })?;
        let mut added = HashMap::new();
        let (result, written) = {
            let cat = self.catalog();
            let mut tx = Tx::new(conn, &cat, &mut added);
            let r = f(&mut tx).and_then(|r| tx.flush().map(|()| r).map_err(E::from));
            (r, tx.written)
        };
        match result {
            Ok(r) => match conn.batch("COMMIT") {
                Ok(()) => {
                    drop(pooled);
                    self.after_commit(written);
                    if !added.is_empty() {
                        self.inner
                            .catalog
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .publish(added);
                    }
                    Ok(r)
                }
                Err(e) => {
                    let _ = conn.batch("ROLLBACK");
                    Err(e.into())
                }
            },
            Err(e) => {
                if conn.batch("ROLLBACK").is_err() {
                    pooled.discard();
                }
                Err(e)
            }
        }
    }

    /// Prepares a new resource (version 1) outside any transaction; see [`Prepared`].
    pub fn prepare(
        &self,
        rtype: &str,
        id: Option<&str>,
        res: Value,
    ) -> Result<Prepared, StoreError> {
        let codec = self.catalog().codec.clone();
        Prepared::new(&codec, rtype, id, res)
    }

    /// Trains the body dictionary once enough resources exist (embedded store only: on
    /// PostgreSQL several API nodes would race, and its TOAST compresses large rows anyway).
    fn after_commit(&self, written: u64) {
        use std::sync::atomic::Ordering;
        if written == 0 || self.inner.dialect != Dialect::Sqlite {
            return;
        }
        let total = self.inner.written.fetch_add(written, Ordering::Relaxed) + written;
        if total < codec::TRAIN_AFTER
            || self.catalog().codec.current_id().is_some()
            || self.inner.training.swap(true, Ordering::SeqCst)
        {
            return;
        }
        if let Err(e) = self.train_dictionary() {
            tracing::warn!(error = %e, "Could not train the body dictionary; bodies stay compressed without one.");
        }
    }

    fn train_dictionary(&self) -> Result<(), StoreError> {
        let samples: Vec<Vec<u8>> = {
            let mut c = self.reader()?;
            let cat = self.catalog();
            let rows = c
                .conn()
                .query("SELECT body FROM res WHERE deleted = 0 LIMIT 5000", &[])?;
            rows.into_iter()
                .filter_map(|mut r| {
                    cat.codec
                        .decompress(&std::mem::replace(&mut r[0], Val::Null).into_blob())
                        .ok()
                })
                .collect()
        };
        let Some(dict) = codec::train(&samples) else {
            return Ok(());
        };
        let mut w = self.inner.writer.get()?;
        w.conn().exec(
            "INSERT INTO dict (data) VALUES (?)",
            &[Val::Blob(dict.clone())],
        )?;
        let id = self.catalog().codec.add(&dict, true);
        tracing::info!(samples = samples.len(), dictionary = ?id, "Trained the body compression dictionary.");
        Ok(())
    }

    /// The current version of a resource (a deleted one comes back with `deleted` set).
    pub fn read(&self, rtype: &str, id: &str) -> Result<Option<Stored>, StoreError> {
        let mut c = self.reader()?;
        let cat = self.catalog();
        write::read_current(c.conn(), &cat, rtype, id)
    }

    /// A specific version.
    pub fn vread(&self, rtype: &str, id: &str, version: i64) -> Result<Option<Stored>, StoreError> {
        let mut c = self.reader()?;
        let cat = self.catalog();
        write::read_version(c.conn(), &cat, rtype, id, version)
    }

    /// Versions, newest first.
    pub fn history(
        &self,
        scope: &HistoryScope,
        since: Option<i64>,
        count: usize,
        offset: usize,
    ) -> Result<(Vec<Stored>, Option<u64>), StoreError> {
        let mut c = self.reader()?;
        let cat = self.catalog();
        write::history(c.conn(), &cat, scope, since, count, offset)
    }

    /// Runs a search.
    pub fn search(&self, q: &Query) -> Result<Page, StoreError> {
        let mut c = self.reader()?;
        let cat = self.catalog();
        search::run(c.conn(), &cat, q)
    }

    /// Parses search parameters for `rtype` into a query (see [`Query::parse`]).
    pub fn parse_query(
        &self,
        rtype: &str,
        params: &[(String, String)],
        strict: bool,
    ) -> Result<Query, SearchError> {
        Query::parse(rtype, params, strict)
    }

    /// Every resource in a Patient's compartment (and the Patient), oldest first.
    pub fn everything(&self, req: &search::Everything) -> Result<Page, StoreError> {
        let mut c = self.reader()?;
        let cat = self.catalog();
        search::everything(c.conn(), &cat, req)
    }

    /// Current, non-deleted resources of `rtype` in storage order after `after` (a cursor
    /// returned by the previous call), for bulk export. `patients_only` keeps resources that
    /// belong to some Patient's compartment.
    pub fn scan(
        &self,
        rtype: &str,
        since: Option<i64>,
        patients_only: bool,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<Stored>, i64), StoreError> {
        let mut c = self.reader()?;
        let cat = self.catalog();
        let Some(t) = cat.type_id(rtype) else {
            return Ok((Vec::new(), after));
        };
        let shard_filter = if patients_only {
            " AND r.shard <> 0"
        } else {
            ""
        };
        let rows = c.conn().query(
            &format!(
                "SELECT r.rid, r.rtype, r.version, r.lastmod, r.deleted, r.body, rr.id FROM res r                  JOIN res_route rr ON rr.rid = r.rid WHERE r.rtype = ? AND r.deleted = 0                  AND r.lastmod >= ? AND r.rid > ?{shard_filter} ORDER BY r.rid LIMIT ?"
            ),
            &[Val::Int(t), Val::Int(since.unwrap_or(i64::MIN)), Val::Int(after), Val::Int(limit as i64)],
        )?;
        let mut last = after;
        let mut out = Vec::with_capacity(rows.len());
        for mut r in rows {
            last = r[0].int();
            let blob = std::mem::replace(&mut r[5], Val::Null).into_blob();
            out.push(write::stored_from(
                &cat,
                t,
                r[6].text().to_string(),
                r[2].int(),
                r[3].int(),
                r[4].int(),
                blob,
            )?);
        }
        Ok((out, last))
    }

    /// Rows of a bookkeeping table (`import_done`, `jobs`), read or written outside FHIR.
    pub fn exec_admin(&self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let mut c = self.inner.writer.get()?;
        c.conn().exec(sql, params)
    }

    pub fn query_admin(&self, sql: &str, params: &[Val]) -> Result<Vec<sql::Row>, StoreError> {
        let mut c = self.reader()?;
        c.conn().query(sql, params)
    }

    /// Bytes the database occupies (SQLite file + WAL, or the PostgreSQL database size).
    pub fn size_bytes(&self) -> Result<u64, StoreError> {
        let mut c = self.reader()?;
        let conn = c.conn();
        match self.inner.dialect {
            Dialect::Sqlite => {
                let r = conn.query(
                    "SELECT page_count * page_size FROM pragma_page_count, pragma_page_size",
                    &[],
                )?;
                Ok(r[0][0].int() as u64)
            }
            Dialect::Postgres => {
                let r = conn.query("SELECT pg_database_size(current_database())::bigint", &[])?;
                Ok(r[0][0].int() as u64)
            }
        }
    }

    /// Checkpoints the SQLite WAL into the main file (no-op on PostgreSQL).
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        if self.inner.dialect == Dialect::Sqlite {
            let mut c = self.inner.writer.get()?;
            c.conn().batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        }
        Ok(())
    }
}

/// The 64-bit shard key of a Patient's compartment (FNV-1a of the Patient id). 0 means
/// "no patient": reference data such as Organization.
pub fn shard_of(patient_id: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in patient_id.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    match h as i64 {
        0 => 1,
        v => v,
    }
}
