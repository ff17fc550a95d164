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
//! - `scope`: which rows a reader may see — every read takes a [`Scope`].
//! - `audit`: the hash-chained audit log; every `write` appends its entry before committing.
//!
//! Architecture invariants:
//! - A `write` is one database transaction: every resource, version and index row of it,
//!   and its audit entry, commit together or not at all.
//! - No read returns a row its [`Scope`] does not permit, and counts and pages are computed
//!   after the scope is applied.
//! - Index rows exist only for current, non-deleted versions, so a search never sees a
//!   superseded or deleted resource.
//! - Every clinical row carries `shard` (the owning Patient's hash) first in its key.
//!
//! One file past the ~800 lines we keep to, because the `Store` facade: each method is short,
//! and the invariants above are stated once for all of them.

pub mod audit;
pub mod changelog;
mod checkpointer;
pub mod codec;
mod pool;
mod postings;
pub mod schema;
pub mod scope;
pub mod search;
pub mod sql;
/// The PostgreSQL client, re-exported for tools that administer databases.
pub mod pg {
    pub use postgres::{Client, NoTls};
}
mod row;
#[doc(hidden)]
pub mod testing;
mod write;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde_json::Value;

pub use audit::{AuditEntry, AuditHook, AuditRow, Change, Checkpoint};
use pool::{Pool, Pooled};
use schema::Catalog;
pub use scope::{RowScope, Scope};
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
    /// The resource JSON exactly as stored (with `id` and `meta`); empty when deleted.
    pub body: Vec<u8>,
    /// The Patient shard it is filed under (0: not in any Patient's compartment).
    pub shard: i64,
    /// Its row id: with `shard`, the key of its rows (the same for all its versions).
    pub rid: i64,
    /// Who submitted it (`meta.source`).
    pub source: String,
    /// Sensitive-category bits (`hutong_fhir::security`).
    pub sens: u32,
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

/// A version, without its body (see [`Store::changes_since`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionKey {
    pub id: String,
    pub version: i64,
    pub last_updated: i64,
    pub deleted: bool,
}

/// What a read found, as the reader may know it.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Stored),
    /// It exists, but the reader's scope does not include it.
    Hidden,
    Missing,
}

impl Lookup {
    fn of(s: Option<Stored>, scope: &Scope) -> Lookup {
        match s {
            None => Lookup::Missing,
            Some(s) if scope.permits_stored(&s) => Lookup::Found(s),
            Some(_) => Lookup::Hidden,
        }
    }

    /// The version, when found and visible.
    pub fn found(self) -> Option<Stored> {
        match self {
            Lookup::Found(s) => Some(s),
            _ => None,
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
    /// The embedded store's checkpoint thread (declared last: it is joined after the
    /// connections close).
    checkpointer: Option<checkpointer::Checkpointer>,
}

/// The store handle; cheap to clone, shared across threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
    PRAGMA foreign_keys=OFF; PRAGMA busy_timeout=10000; PRAGMA cache_size=-65536;
    PRAGMA temp_store=MEMORY; PRAGMA mmap_size=68719476736; PRAGMA wal_autocheckpoint=0;
    PRAGMA journal_size_limit=134217728;";

fn open_sqlite(path: &Path) -> Result<Box<dyn Conn>, StoreError> {
    let c = rusqlite::Connection::open(path)?;
    c.execute_batch(SQLITE_PRAGMAS)?;
    c.set_prepared_statement_cache_capacity(256);
    scope::register(&c)?;
    postings::register(&c)?;
    Ok(Box::new(SqliteConn(c)))
}

fn open_pg(url: &str) -> Result<Box<dyn Conn>, StoreError> {
    let client = postgres::Client::connect(url, postgres::NoTls)?;
    Ok(Box::new(PgConn::new(client)))
}

impl Store {
    /// Whether a store has been made at `loc` (commands that only read one must not make
    /// an empty one and report on it).
    pub fn exists(loc: &Location) -> Result<bool, StoreError> {
        match loc {
            Location::Sqlite(dir) => Ok(dir.join("hutong.db").is_file()),
            Location::Postgres(url) => {
                let mut c = postgres::Client::connect(url, postgres::NoTls)?;
                let row = c.query_one("SELECT to_regclass('res') IS NOT NULL", &[])?;
                Ok(row.get::<_, bool>(0))
            }
        }
    }

    /// Opens (creating if needed) the store at `loc`.
    pub fn open(loc: &Location) -> Result<Store, StoreError> {
        let (writer, readers, dialect, file) = match loc {
            Location::Sqlite(dir) => {
                std::fs::create_dir_all(dir)?;
                let file = dir.join("hutong.db");
                let (f1, f2) = (file.clone(), file.clone());
                let writer = Pool::new(1, Box::new(move || open_sqlite(&f1)));
                let readers = Pool::new(8, Box::new(move || open_sqlite(&f2)));
                (writer, readers, Dialect::Sqlite, Some(file))
            }
            Location::Postgres(url) => {
                let u1 = url.clone();
                let u2 = url.clone();
                // Writers run concurrently on PostgreSQL; readers get their own connections
                // so a long import never starves reads.
                let writer = Pool::new(4, Box::new(move || open_pg(&u1)));
                let readers = Pool::new(8, Box::new(move || open_pg(&u2)));
                (writer, readers, Dialect::Postgres, None)
            }
        };
        let (catalog, migrate) = {
            let mut c = writer.get()?;
            let migrate = schema::create(c.conn())?;
            (Catalog::load(c.conn())?, migrate)
        };
        // Opened once the schema exists, so it never sees the database half-made.
        let checkpointer = match &file {
            Some(f) => Some(checkpointer::Checkpointer::start(open_sqlite(f)?)?),
            None => None,
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
                checkpointer,
            }),
        };
        if migrate {
            store.backfill_version_columns()?;
        }
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

    /// Protects identity data at rest from now on (see [`codec::Protector`]); set once,
    /// right after opening, before anything is read.
    pub fn set_protector(&self, p: Arc<dyn codec::Protector>) {
        self.catalog().codec.set_protector(p);
    }

    fn reader(&self) -> Result<Pooled<'_>, StoreError> {
        self.inner.readers.get()
    }

    pub(crate) fn catalog(&self) -> std::sync::RwLockReadGuard<'_, Catalog> {
        self.inner.catalog.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in one database transaction; commits when it returns `Ok`, rolls back
    /// otherwise. Before committing, appends the audit entry `audit` makes of what was
    /// written. Retries the whole closure when a concurrent writer won a race.
    pub fn write<R, E: TxError>(
        &self,
        audit: &dyn AuditHook,
        mut f: impl FnMut(&mut Tx<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.write_once(audit, &mut f) {
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
        audit: &dyn AuditHook,
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
            let r = f(&mut tx).and_then(|r| {
                tx.flush().map_err(E::from)?;
                changelog::append(&mut *tx.conn, &tx.changes, tx.now).map_err(E::from)?;
                let entry = audit.entry(&tx.changes);
                audit::append(tx.conn(), &entry).map_err(E::from)?;
                Ok(r)
            });
            (r, tx.written)
        };
        match result {
            Ok(r) => match conn.batch("COMMIT") {
                Ok(()) => {
                    drop(pooled);
                    if let Some(c) = &self.inner.checkpointer {
                        c.committed(written);
                    }
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
    /// `res` is stamped in place with its id and `meta`, and stays the caller's (to drop
    /// where it was made: a bulk load frees each resource on the thread that parsed it).
    pub fn prepare(
        &self,
        rtype: &str,
        id: Option<&str>,
        res: &mut Value,
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

    /// The current version of a resource (a deleted one comes back with `deleted` set), if
    /// `scope` lets the reader see it.
    pub fn read(&self, rtype: &str, id: &str, scope: &Scope) -> Result<Lookup, StoreError> {
        let mut c = self.reader()?;
        let cat = self.catalog();
        Ok(Lookup::of(
            write::read_current(c.conn(), &cat, rtype, id)?,
            scope,
        ))
    }

    /// Seals bytes kept outside resource bodies (a quarantined submission carries names and
    /// ID numbers too) with the protector that seals identity bodies; unchanged without one.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, StoreError> {
        match self.catalog().codec.protector() {
            Some(p) => p.seal(plain).map_err(StoreError::Corrupt),
            None => Ok(plain.to_vec()),
        }
    }

    /// Opens what [`Store::seal`] produced.
    pub fn unseal(&self, bytes: &[u8]) -> Result<Vec<u8>, StoreError> {
        if !bytes.starts_with(codec::SEALED) {
            return Ok(bytes.to_vec());
        }
        let p = self
            .catalog()
            .codec
            .protector()
            .ok_or_else(|| StoreError::Corrupt("sealed data but no keys to open it".into()))?;
        p.open(bytes).map_err(StoreError::Corrupt)
    }

    /// Which of `ids` exist as current, undeleted resources of `rtype` (for intake's
    /// reference checks: one query per type and chunk, not one per reference).
    pub fn existing(
        &self,
        rtype: &str,
        ids: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        self.existing_visible(rtype, ids, &Scope::All)
    }

    /// [`Store::existing`], of those `scope` lets the reader see: to a reader, a resource
    /// they may not read does not exist (else whether any id exists would show through).
    pub fn existing_visible(
        &self,
        rtype: &str,
        ids: &[String],
        scope: &Scope,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut found = std::collections::HashSet::new();
        let (t, filter) = {
            let cat = self.catalog();
            let Some(t) = cat.type_id(rtype) else {
                return Ok(found);
            };
            let filter = match scope {
                Scope::Rows(r) => format!(" AND {}", r.sql_row(&cat, "s")),
                Scope::All => String::new(),
            };
            (t, filter)
        };
        let mut c = self.reader()?;
        for chunk in ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let mut params = vec![Val::Int(t)];
            params.extend(chunk.iter().map(|id| Val::Text(id.clone())));
            let rows = c.conn().query(
                &format!(
                    "SELECT r.id FROM res_route r JOIN res s ON s.shard = r.shard \
                     AND s.rid = r.rid WHERE r.rtype = ? AND r.id IN ({marks}) AND s.deleted = 0\
                     {filter}"
                ),
                &params,
            )?;
            found.extend(rows.into_iter().map(|r| r[0].text().to_string()));
        }
        Ok(found)
    }

    /// A specific version, if `scope` lets the reader see it.
    pub fn vread(
        &self,
        rtype: &str,
        id: &str,
        version: i64,
        scope: &Scope,
    ) -> Result<Lookup, StoreError> {
        let mut c = self.reader()?;
        let cat = self.catalog();
        Ok(Lookup::of(
            write::read_version(c.conn(), &cat, rtype, id, version)?,
            scope,
        ))
    }

    /// The versions `scope` lets the reader see, newest first, and how many there are.
    pub fn history(
        &self,
        which: &HistoryScope,
        since: Option<i64>,
        count: usize,
        offset: usize,
        scope: &Scope,
    ) -> Result<(Vec<Stored>, Option<u64>), StoreError> {
        let mut c = self.reader()?;
        let cat = self.catalog();
        write::history(c.conn(), &cat, which, since, count, offset, scope)
    }

    /// The versions of `rtype` written at or after `since` (ms) — ids, versions, times and
    /// whether they are deletions, without bodies — oldest first: how the platform's in-memory
    /// views (matching index, persons, grants) catch up cheaply with what others wrote.
    pub fn changes_since(&self, rtype: &str, since: i64) -> Result<Vec<VersionKey>, StoreError> {
        let mut c = self.reader()?;
        let cat = self.catalog();
        let Some(t) = cat.type_id(rtype) else {
            return Ok(Vec::new());
        };
        let rows = c.conn().query(
            "SELECT r.id, s.version, s.lastmod, s.deleted FROM res s JOIN res_route r \
             ON r.rid = s.rid WHERE s.rtype = ? AND s.lastmod >= ? \
             UNION ALL SELECT r.id, h.version, h.lastmod, h.deleted FROM res_hist h \
             JOIN res_route r ON r.rid = h.rid WHERE h.rtype = ? AND h.lastmod >= ?",
            &[Val::Int(t), Val::Int(since), Val::Int(t), Val::Int(since)],
        )?;
        let mut out: Vec<VersionKey> = rows
            .iter()
            .map(|r| VersionKey {
                id: r[0].text().to_string(),
                version: r[1].int(),
                last_updated: r[2].int(),
                deleted: r[3].int() != 0,
            })
            .collect();
        out.sort_by_key(|k| (k.last_updated, k.version));
        Ok(out)
    }

    /// Runs a search within `scope`.
    pub fn search(&self, q: &Query, scope: &Scope) -> Result<Page, StoreError> {
        let mut c = self.reader()?;
        let cat = self.catalog();
        search::run(c.conn(), &cat, q, scope)
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

    /// The clinical time of each of `items` (current versions already read, and so already
    /// released by the access decision): the earliest `lo` of its date index rows, a death
    /// date aside — what `fhir::index::extract_kind(.., Date)` would give from its body — or
    /// none when it has no date. One index range per shard instead of parsing every body: a
    /// person's timeline orders thousands of resources to show a page of them.
    pub fn clinical_times(&self, items: &[Stored]) -> Result<Vec<Option<i64>>, StoreError> {
        let cat = self.catalog();
        let defs = hutong_fhir::Definitions::get();
        let skip: Vec<String> = defs
            .resource_types()
            .iter()
            .filter_map(|t| cat.param_id(t, "death-date"))
            .map(|p| p.to_string())
            .collect();
        let skip = if skip.is_empty() {
            String::new()
        } else {
            format!(" AND +d.pid NOT IN ({})", skip.join(","))
        };
        let mut shards: Vec<i64> = items.iter().map(|s| s.shard).collect();
        shards.sort_unstable();
        shards.dedup();
        let mut earliest: HashMap<(i64, String), i64> = HashMap::new();
        let mut c = self.reader()?;
        for shard in shards {
            c.conn().query_each(
                &format!(
                    "SELECT r.rtype, r.id, MIN(d.lo) FROM ix_date d JOIN res_route r \
                     ON r.rid = d.rid WHERE d.shard = ?{skip} GROUP BY d.rid, r.rtype, r.id"
                ),
                &[Val::Int(shard)],
                &mut |r| {
                    earliest.insert((r.int(0), r.text(1).to_string()), r.int(2));
                    Ok(())
                },
            )?;
        }
        Ok(items
            .iter()
            .map(|s| {
                let t = cat.type_id(&s.rtype)?;
                earliest.get(&(t, s.id.clone())).copied()
            })
            .collect())
    }

    /// Every resource in a Patient's compartment (and the Patient) that `scope` lets the
    /// reader see, oldest first.
    pub fn everything(&self, req: &search::Everything, scope: &Scope) -> Result<Page, StoreError> {
        let mut c = self.reader()?;
        let cat = self.catalog();
        search::everything(c.conn(), &cat, req, scope)
    }

    /// Current, non-deleted resources of `rtype` in storage order after `after` (a cursor
    /// returned by the previous call) that `scope` lets the reader see, for bulk export.
    /// `patients_only` keeps resources that belong to some Patient's compartment.
    pub fn scan(
        &self,
        rtype: &str,
        since: Option<i64>,
        patients_only: bool,
        after: i64,
        limit: usize,
        scope: &Scope,
    ) -> Result<(Vec<Stored>, i64), StoreError> {
        let mut c = self.reader()?;
        let cat = self.catalog();
        let Some(t) = cat.type_id(rtype) else {
            return Ok((Vec::new(), after));
        };
        // Two steps: the page's keys from the type's index alone (sorting integers, not
        // rows), then those rows. Sorting the rows themselves by rid would read and sort every
        // body of the type once per page.
        let shards = if patients_only {
            " AND s.shard <> 0"
        } else {
            ""
        };
        let filter = match scope {
            Scope::Rows(r) => format!(" AND {}", r.sql_row(&cat, "s")),
            Scope::All => String::new(),
        };
        let mut last = after;
        let mut out = Vec::new();
        loop {
            let keys = c.conn().query(
                &format!(
                    "SELECT s.rid FROM res s WHERE s.rtype = ? AND s.lastmod >= ? \
                     AND s.rid > ?{shards} ORDER BY s.rid LIMIT ?"
                ),
                &[
                    Val::Int(t),
                    Val::Int(since.unwrap_or(i64::MIN)),
                    Val::Int(last),
                    Val::Int(limit as i64),
                ],
            )?;
            let Some(end) = keys.last().map(|k| k[0].int()) else {
                return Ok((out, last));
            };
            last = end;
            let rids: Vec<i64> = keys.iter().map(|k| k[0].int()).collect();
            let rows = c.conn().query(
                &format!(
                    "SELECT s.rid, rr.id, {} FROM res_route rr JOIN res s \
                     ON s.shard = rr.shard AND s.rid = rr.rid \
                     WHERE rr.rid IN ({}) AND s.deleted = 0{filter} ORDER BY s.rid",
                    row::VERSION_COLS,
                    scope::int_list(&rids)
                ),
                &[],
            )?;
            for r in rows {
                let id = r[1].text().to_string();
                let m = row::RowMeta::at(&r, 2);
                out.push(row::stored_from(&cat, m, r[0].int(), id, r[9].blob())?);
            }
            if !out.is_empty() {
                return Ok((out, last));
            }
        }
    }

    /// Versions received at or after `since` (current and superseded, deletions included),
    /// counted per submitting source and hour: `(source, hour start in ms, versions)`.
    pub fn received_per_hour(&self, since: i64) -> Result<Vec<(String, i64, u64)>, StoreError> {
        let mut c = self.reader()?;
        let rows = c.conn().query(
            "SELECT src, lastmod / 3600000, COUNT(*) FROM res WHERE lastmod >= ? \
             GROUP BY src, lastmod / 3600000 \
             UNION ALL SELECT src, lastmod / 3600000, COUNT(*) FROM res_hist WHERE lastmod >= ? \
             GROUP BY src, lastmod / 3600000",
            &[Val::Int(since), Val::Int(since)],
        )?;
        let cat = self.catalog();
        let mut out: HashMap<(String, i64), u64> = HashMap::new();
        for r in rows {
            let src = cat.system_name(r[0].int()).unwrap_or("").to_string();
            *out.entry((src, r[1].int() * 3_600_000)).or_default() += r[2].int() as u64;
        }
        Ok(out.into_iter().map(|((s, h), n)| (s, h, n)).collect())
    }

    /// The `limit` most recently received current versions (not deleted) at or after `since`,
    /// newest first: a sample for measuring upload delays.
    pub fn latest_received(&self, since: i64, limit: usize) -> Result<Vec<Stored>, StoreError> {
        let mut c = self.reader()?;
        let rows = c.conn().query(
            &format!(
                "SELECT s.rid, rr.id, {} FROM res s JOIN res_route rr ON rr.rid = s.rid \
                 WHERE s.lastmod >= ? AND s.deleted = 0 ORDER BY s.lastmod DESC LIMIT ?",
                row::VERSION_COLS
            ),
            &[Val::Int(since), Val::Int(limit as i64)],
        )?;
        let cat = self.catalog();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id = r[1].text().to_string();
            let m = row::RowMeta::at(&r, 2);
            out.push(row::stored_from(&cat, m, r[0].int(), id, r[9].blob())?);
        }
        Ok(out)
    }

    /// Appends entries to the audit trail in one transaction (accesses, which have no
    /// transaction of their own to ride in).
    pub fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pooled = self.inner.writer.get()?;
        let conn = pooled.conn();
        conn.batch(match self.inner.dialect {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        })?;
        let r = entries
            .iter()
            .try_for_each(|e| audit::append(conn, e).map(|_| ()));
        match r.and_then(|()| conn.batch("COMMIT")) {
            Ok(()) => Ok(()),
            Err(e) => {
                if conn.batch("ROLLBACK").is_err() {
                    pooled.discard();
                }
                Err(e)
            }
        }
    }

    /// Audit entries of partition `part` from `from_seq` on, in order (for verification and
    /// the AuditEvent view).
    pub fn audit_rows(
        &self,
        part: i64,
        from_seq: i64,
        limit: usize,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut c = self.reader()?;
        Ok(c.conn()
            .query(
                &format!(
                    "{} WHERE part = ? AND seq >= ? ORDER BY seq LIMIT ?",
                    audit::SELECT_AUDIT
                ),
                &[Val::Int(part), Val::Int(from_seq), Val::Int(limit as i64)],
            )?
            .into_iter()
            .map(audit::row_from)
            .collect())
    }

    /// The partitions that have a chain, with their recorded head `(part, seq, hash)`.
    pub fn audit_heads(&self) -> Result<Vec<(i64, i64, Vec<u8>)>, StoreError> {
        let mut c = self.reader()?;
        Ok(c.conn()
            .query("SELECT part, seq, hash FROM audit_head ORDER BY part", &[])?
            .into_iter()
            .map(|mut r| {
                let h = std::mem::replace(&mut r[2], Val::Null).into_blob();
                (r[0].int(), r[1].int(), h)
            })
            .collect())
    }

    /// Newest entries first: those about any of `shards` (a person's Patients), or every
    /// entry when `shards` is `None`, within `[since, until)`.
    pub fn audit_about(
        &self,
        shards: Option<&[i64]>,
        since: i64,
        until: i64,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<AuditRow>, u64), StoreError> {
        let mut c = self.reader()?;
        let conn = c.conn();
        let (keys, total) = match shards {
            Some(shards) => {
                let list = if shards.is_empty() {
                    "NULL".to_string()
                } else {
                    shards
                        .iter()
                        .map(i64::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                };
                let from = format!(
                    "FROM (SELECT DISTINCT part, seq, ts FROM audit_subject WHERE shard IN ({list}) \
                     AND ts >= ? AND ts < ?) k"
                );
                let p = [Val::Int(since), Val::Int(until)];
                let total = conn.query(&format!("SELECT COUNT(*) {from}"), &p)?[0][0].int();
                let mut p = p.to_vec();
                p.push(Val::Int(limit as i64));
                p.push(Val::Int(offset as i64));
                let keys: Vec<(i64, i64)> = conn
                    .query(
                        &format!(
                            "SELECT part, seq {from} ORDER BY ts DESC, part, seq DESC LIMIT ? OFFSET ?"
                        ),
                        &p,
                    )?
                    .iter()
                    .map(|r| (r[0].int(), r[1].int()))
                    .collect();
                (keys, total)
            }
            None => {
                let p = [Val::Int(since), Val::Int(until)];
                let total = conn
                    .query("SELECT COUNT(*) FROM audit WHERE ts >= ? AND ts < ?", &p)?[0][0]
                    .int();
                let mut p = p.to_vec();
                p.push(Val::Int(limit as i64));
                p.push(Val::Int(offset as i64));
                let keys = conn
                    .query(
                        "SELECT part, seq FROM audit WHERE ts >= ? AND ts < ? \
                         ORDER BY ts DESC, part, seq DESC LIMIT ? OFFSET ?",
                        &p,
                    )?
                    .iter()
                    .map(|r| (r[0].int(), r[1].int()))
                    .collect();
                (keys, total)
            }
        };
        let mut out = Vec::with_capacity(keys.len());
        for (part, seq) in keys {
            if let Some(r) = conn
                .query(
                    &format!("{} WHERE part = ? AND seq = ?", audit::SELECT_AUDIT),
                    &[Val::Int(part), Val::Int(seq)],
                )?
                .into_iter()
                .next()
            {
                out.push(audit::row_from(r));
            }
        }
        Ok((out, total as u64))
    }

    /// One entry by its position.
    pub fn audit_row(&self, part: i64, seq: i64) -> Result<Option<AuditRow>, StoreError> {
        let mut c = self.reader()?;
        Ok(c.conn()
            .query(
                &format!("{} WHERE part = ? AND seq = ?", audit::SELECT_AUDIT),
                &[Val::Int(part), Val::Int(seq)],
            )?
            .into_iter()
            .next()
            .map(audit::row_from))
    }

    /// Records a signed checkpoint.
    pub fn add_checkpoint(&self, c: &Checkpoint) -> Result<(), StoreError> {
        let sql = schema::insert_ignore(
            self.inner.dialect,
            "audit_checkpoint (part, seq, hash, ts, kid, sig) VALUES (?, ?, ?, ?, ?, ?)",
        );
        self.exec_admin(
            &sql,
            &[
                Val::Int(c.part),
                Val::Int(c.seq),
                Val::Blob(c.hash.clone()),
                Val::Int(c.ts),
                Val::Text(c.kid.clone()),
                Val::Blob(c.sig.clone()),
            ],
        )?;
        Ok(())
    }

    /// Every checkpoint of a partition, in order.
    pub fn checkpoints(&self, part: i64) -> Result<Vec<Checkpoint>, StoreError> {
        let mut c = self.reader()?;
        Ok(c.conn()
            .query(
                "SELECT part, seq, hash, ts, kid, sig FROM audit_checkpoint WHERE part = ? ORDER BY seq",
                &[Val::Int(part)],
            )?
            .into_iter()
            .map(|mut r| Checkpoint {
                part: r[0].int(),
                seq: r[1].int(),
                hash: std::mem::replace(&mut r[2], Val::Null).into_blob(),
                ts: r[3].int(),
                kid: r[4].text().to_string(),
                sig: std::mem::replace(&mut r[5], Val::Null).into_blob(),
            })
            .collect())
    }

    /// Brings every resource of `rtype` under the current protection (see
    /// [`Tx::reprotect`]), a thousand per transaction, and returns how many it rewrote.
    /// Used when encryption is first switched on for a store that already holds identity
    /// data, and after a data key is rotated.
    pub fn reprotect(&self, rtype: &str, audit: &dyn AuditHook) -> Result<u64, StoreError> {
        let mut n = 0;
        let mut after = i64::MIN;
        loop {
            let ids: Vec<(i64, String)> = {
                let t = self.catalog().type_id(rtype).unwrap_or(-1);
                let mut c = self.reader()?;
                c.conn()
                    .query(
                        "SELECT rid, id FROM res_route WHERE rtype = ? AND rid > ? ORDER BY rid LIMIT 1000",
                        &[Val::Int(t), Val::Int(after)],
                    )?
                    .iter()
                    .map(|r| (r[0].int(), r[1].text().to_string()))
                    .collect()
            };
            let Some(last) = ids.last() else { break };
            after = last.0;
            n += self.write(audit, |tx| {
                let mut k = 0;
                for (_, id) in &ids {
                    if tx.reprotect(rtype, id)? {
                        k += 1;
                    }
                }
                Ok::<_, StoreError>(k)
            })?;
        }
        Ok(n)
    }

    /// A value recorded in the store's `meta` table.
    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let rows = self.query_admin("SELECT v FROM meta WHERE k = ?", &[Val::Text(key.into())])?;
        Ok(rows.first().map(|r| r[0].text().to_string()))
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.exec_admin("DELETE FROM meta WHERE k = ?", &[Val::Text(key.into())])?;
        self.exec_admin(
            "INSERT INTO meta (k, v) VALUES (?, ?)",
            &[Val::Text(key.into()), Val::Text(value.into())],
        )?;
        Ok(())
    }

    /// Fills `src` and `sens` of every version of a store made before they existed.
    fn backfill_version_columns(&self) -> Result<(), StoreError> {
        tracing::info!(
            "Upgrading the store: recording the source and sensitivity of every version."
        );
        for table in ["res", "res_hist"] {
            let mut after: (i64, i64, i64) = (i64::MIN, i64::MIN, i64::MIN);
            loop {
                let rows = {
                    let mut c = self.reader()?;
                    if table == "res" {
                        c.conn().query(
                            "SELECT shard, rid, 0, body FROM res WHERE (shard, rid) > (?, ?) \
                             ORDER BY shard, rid LIMIT 2000",
                            &[Val::Int(after.0), Val::Int(after.1)],
                        )?
                    } else {
                        c.conn().query(
                            "SELECT shard, rid, version, body FROM res_hist \
                             WHERE (shard, rid, version) > (?, ?, ?) ORDER BY shard, rid, version LIMIT 2000",
                            &[Val::Int(after.0), Val::Int(after.1), Val::Int(after.2)],
                        )?
                    }
                };
                if rows.is_empty() {
                    break;
                }
                let mut w = self.inner.writer.get()?;
                let conn = w.conn();
                conn.batch("BEGIN")?;
                let mut added = HashMap::new();
                let r = (|| {
                    for mut r in rows {
                        after = (r[0].int(), r[1].int(), r[2].int());
                        let body = std::mem::replace(&mut r[3], Val::Null).into_blob();
                        let cat = self.catalog();
                        let json: Value = match cat.codec.decompress(&body) {
                            Ok(b) if !b.is_empty() => {
                                serde_json::from_slice(&b).unwrap_or(Value::Null)
                            }
                            _ => Value::Null,
                        };
                        let source = json["meta"]["source"].as_str().unwrap_or("");
                        let src = cat.intern_system(conn, source, &mut added)?;
                        let sens = hutong_fhir::security::bits(&json) as i64;
                        let key = if table == "res" {
                            ""
                        } else {
                            " AND version = ?"
                        };
                        let mut p = vec![
                            Val::Int(src),
                            Val::Int(sens),
                            Val::Int(after.0),
                            Val::Int(after.1),
                        ];
                        if table == "res_hist" {
                            p.push(Val::Int(after.2));
                        }
                        conn.exec(
                            &format!("UPDATE {table} SET src = ?, sens = ? WHERE shard = ? AND rid = ?{key}"),
                            &p,
                        )?;
                        if table == "res" && sens != 0 {
                            let sql = schema::insert_ignore(
                                conn.dialect(),
                                "ix_sens (shard, rid, sens) VALUES (?, ?, ?)",
                            );
                            conn.exec(
                                &sql,
                                &[Val::Int(after.0), Val::Int(after.1), Val::Int(sens)],
                            )?;
                        }
                    }
                    Ok::<_, StoreError>(())
                })();
                match r.and_then(|()| conn.batch("COMMIT")) {
                    Ok(()) => self
                        .inner
                        .catalog
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .publish(added),
                    Err(e) => {
                        let _ = conn.batch("ROLLBACK");
                        return Err(e);
                    }
                }
            }
        }
        let mut w = self.inner.writer.get()?;
        w.conn().exec(
            "UPDATE res_route SET src = (SELECT r.src FROM res r WHERE r.shard = res_route.shard \
             AND r.rid = res_route.rid) WHERE EXISTS (SELECT 1 FROM res r \
             WHERE r.shard = res_route.shard AND r.rid = res_route.rid)",
            &[],
        )?;
        schema::mark_current(w.conn())
    }

    /// Where `consumer` stands in the change log (see [`changelog`]); a new consumer starts
    /// at its end.
    pub fn change_cursor(&self, consumer: &str) -> Result<changelog::Cursor, StoreError> {
        // Read off the writer (a consumer polls often; the writer is the bottleneck of the
        // embedded store); created there the first time only.
        let found = {
            let mut c = self.reader()?;
            changelog::cursor(c.conn(), consumer)?
        };
        match found {
            Some(c) => Ok(c),
            None => {
                let mut w = self.inner.writer.get()?;
                changelog::lock_cursor(w.conn(), consumer)
            }
        }
    }

    /// Up to `limit` logged changes after `from`, oldest first (read outside any write, so
    /// that a consumer's work on them does not hold the writer).
    pub fn changes_after(
        &self,
        from: changelog::Cursor,
        limit: usize,
    ) -> Result<Vec<changelog::Logged>, StoreError> {
        let mut c = self.reader()?;
        changelog::read_after(c.conn(), from, limit)
    }

    /// How many logged changes `consumer` has not read yet.
    pub fn change_backlog(&self, consumer: &str) -> Result<i64, StoreError> {
        let mut c = self.reader()?;
        changelog::backlog(c.conn(), consumer)
    }

    /// Deletes the logged changes every consumer has read.
    pub fn prune_changes(&self) -> Result<u64, StoreError> {
        let mut w = self.inner.writer.get()?;
        changelog::prune(w.conn())
    }

    /// Creates the tables of a crate that keeps its own, from definitions written once
    /// ([`sql::Dialect::ddl`]).
    pub fn create_tables(&self, portable: &str) -> Result<(), StoreError> {
        self.batch_admin(&self.dialect().ddl(portable))
    }

    /// Runs statements (DDL of tables kept outside FHIR by other crates) on the writer.
    pub fn batch_admin(&self, sql: &str) -> Result<(), StoreError> {
        let mut c = self.inner.writer.get()?;
        c.conn().batch(sql)
    }

    /// Rows of a bookkeeping table (`import_done`, `jobs`), read or written outside FHIR.
    pub fn exec_admin(&self, sql: &str, params: &[Val]) -> Result<u64, StoreError> {
        let mut c = self.inner.writer.get()?;
        c.conn().exec(sql, params)
    }

    /// Runs `f` on bookkeeping tables in one transaction (schema migrations of tables the
    /// store does not own); rolled back when it fails.
    pub fn with_admin_tx(
        &self,
        f: impl FnOnce(&mut dyn Conn) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut c = self.inner.writer.get()?;
        let conn = c.conn();
        // IMMEDIATE on SQLite: a transaction that reads first and then writes would otherwise
        // fail at once (not wait) when another connection (the audit sink's) writes between.
        conn.batch(match self.inner.dialect {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        })?;
        match f(&mut *conn) {
            Ok(()) => conn.batch("COMMIT"),
            Err(e) => {
                if conn.batch("ROLLBACK").is_err() {
                    c.discard();
                }
                Err(e)
            }
        }
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

    /// For a bulk load much larger than what the store holds: drops the value indexes that
    /// cost most per row written ([`schema::DEFERRABLE`]), to be built once, sorted, by
    /// [`Store::build_value_indexes`] when the load is done. Searches stay correct meanwhile
    /// (slower on those parameters); if the process dies first, the next open builds them.
    /// Whether anything was dropped (nothing on PostgreSQL, whose indexes stay as they are).
    pub fn defer_value_indexes(&self) -> Result<bool, StoreError> {
        if self.inner.dialect != Dialect::Sqlite {
            return Ok(false);
        }
        let mut w = self.inner.writer.get()?;
        let sql: String = schema::DEFERRABLE
            .iter()
            .map(|ix| format!("DROP INDEX IF EXISTS {ix};"))
            .collect();
        w.conn().batch(&sql)?;
        Ok(true)
    }

    /// Builds the value indexes [`Store::defer_value_indexes`] dropped (every missing index
    /// of the schema, in fact: the same statements as opening the store).
    pub fn build_value_indexes(&self) -> Result<(), StoreError> {
        let mut w = self.inner.writer.get()?;
        schema::create(w.conn())?;
        Ok(())
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
