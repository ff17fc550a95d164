//! The schema, for both dialects, and the catalog of interned ids (resource types, search
//! parameters, code systems) that keeps index rows small.
//!
//! Province scale (see ARCHITECTURE.md): every clinical table carries `shard` — a 64-bit
//! hash of the Patient whose compartment owns the row — in its primary key, so a distributed
//! PostgreSQL (Citus) can distribute on it and keep one patient's rows together. Bodies,
//! versions, dates, strings and sensitivity lead with it (read per resource: `$everything`,
//! sorting); the token, reference, number, composite and code-text tables lead with the value
//! and hold one copy only, for size: a resource's rows there are found again from its body
//! (see `write::Tx::unindex`), never by `(shard, rid)`. On SQLite the token, reference and
//! code-text rows are posting lists behind views of the same names (`crate::postings`).
//! `res_route` (logical id → shard, rid) is keyed by the logical id, and `catalog` is a small
//! reference table.

use std::collections::HashMap;

use hutong_fhir::Definitions;

use crate::postings;
use crate::sql::{Conn, Dialect, Val};
use crate::StoreError;

/// 2: `src` and `sens` on versions, `ix_sens`, the audit trail.
/// 3: value-first, single-copy `ix_tok`, `ix_ref`, `ix_num`, `ix_comp`; code texts in `ix_txt`.
/// 4: on SQLite, `ix_tok`, `ix_ref` and `ix_txt` as posting lists (`crate::postings`);
///    nothing changes on PostgreSQL.
pub const SCHEMA_VERSION: i64 = 4;

/// Secondary indexes over values on SQLite that a bulk load may drop and build again at its
/// end ([`crate::Store::defer_value_indexes`]). Their keys lead with the value, so each row
/// a load writes lands on a random page: together they were four in ten of the pages a
/// 1,000-resource import chunk dirtied (and wrote to the WAL) on a 200k store. [`create`]
/// makes any that are missing, so a load killed before it rebuilt them loses nothing.
pub const DEFERRABLE: [&str; 3] = ["ix_date_lo", "ix_date_hi", "ix_str_v"];

const SQLITE: &str = r#"
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS catalog (kind INTEGER NOT NULL, name TEXT NOT NULL,
    cid INTEGER NOT NULL, PRIMARY KEY (kind, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS res_route (rid INTEGER PRIMARY KEY, rtype INTEGER NOT NULL,
    id TEXT NOT NULL, shard INTEGER NOT NULL, src INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS res_route_id ON res_route (rtype, id);
CREATE INDEX IF NOT EXISTS res_route_src ON res_route (shard, src);
CREATE TABLE IF NOT EXISTS res (shard INTEGER NOT NULL, rid INTEGER NOT NULL,
    rtype INTEGER NOT NULL, version INTEGER NOT NULL, lastmod INTEGER NOT NULL,
    deleted INTEGER NOT NULL, body BLOB NOT NULL, src INTEGER NOT NULL DEFAULT 0,
    sens INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (shard, rid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS res_type ON res (rtype, lastmod);
DROP INDEX IF EXISTS res_src_lastmod;
DROP INDEX IF EXISTS res_lastmod;
CREATE INDEX IF NOT EXISTS res_lastmod_src ON res (lastmod, src);
CREATE TABLE IF NOT EXISTS res_hist (shard INTEGER NOT NULL, rid INTEGER NOT NULL,
    version INTEGER NOT NULL, rtype INTEGER NOT NULL, lastmod INTEGER NOT NULL,
    deleted INTEGER NOT NULL, body BLOB NOT NULL, src INTEGER NOT NULL DEFAULT 0,
    sens INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (shard, rid, version)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS res_hist_type ON res_hist (rtype, lastmod);
CREATE INDEX IF NOT EXISTS res_hist_lastmod ON res_hist (lastmod);
CREATE TABLE IF NOT EXISTS ix_str (shard INTEGER NOT NULL, rid INTEGER NOT NULL,
    pid INTEGER NOT NULL, norm TEXT NOT NULL, raw TEXT NOT NULL,
    PRIMARY KEY (shard, rid, pid, norm, raw)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ix_str_v ON ix_str (pid, norm);
CREATE TABLE IF NOT EXISTS ix_date (shard INTEGER NOT NULL, rid INTEGER NOT NULL,
    pid INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL,
    PRIMARY KEY (shard, rid, pid, lo, hi)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ix_date_lo ON ix_date (pid, lo);
CREATE INDEX IF NOT EXISTS ix_date_hi ON ix_date (pid, hi);
CREATE TABLE IF NOT EXISTS ix_num (shard INTEGER NOT NULL, rid INTEGER NOT NULL,
    pid INTEGER NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL, sid INTEGER NOT NULL,
    code TEXT NOT NULL, PRIMARY KEY (pid, lo, hi, sid, code, shard, rid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix_comp (shard INTEGER NOT NULL, rid INTEGER NOT NULL,
    pid INTEGER NOT NULL, k TEXT NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL,
    v TEXT NOT NULL, PRIMARY KEY (pid, k, lo, hi, v, shard, rid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix_sens (shard INTEGER NOT NULL, rid INTEGER NOT NULL,
    sens INTEGER NOT NULL, PRIMARY KEY (shard, rid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (part INTEGER NOT NULL, seq INTEGER NOT NULL,
    ts INTEGER NOT NULL, prev BLOB NOT NULL, hash BLOB NOT NULL, entry TEXT NOT NULL,
    PRIMARY KEY (part, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
CREATE TABLE IF NOT EXISTS audit_subject (shard INTEGER NOT NULL, ts INTEGER NOT NULL,
    part INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (shard, ts, part, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_head (part INTEGER PRIMARY KEY, seq INTEGER NOT NULL,
    hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS audit_checkpoint (part INTEGER NOT NULL, seq INTEGER NOT NULL,
    hash BLOB NOT NULL, ts INTEGER NOT NULL, kid TEXT NOT NULL, sig BLOB NOT NULL,
    PRIMARY KEY (part, seq)) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoint_no_update BEFORE UPDATE ON audit_checkpoint
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_checkpoint_no_delete BEFORE DELETE ON audit_checkpoint
    BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TABLE IF NOT EXISTS dict (seq INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS shard_owner (shard INTEGER PRIMARY KEY, patient TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS import_done (file TEXT NOT NULL, chunk INTEGER NOT NULL,
    PRIMARY KEY (file, chunk)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL,
    state TEXT NOT NULL, request TEXT NOT NULL, result TEXT NOT NULL,
    created INTEGER NOT NULL, updated INTEGER NOT NULL);
"#;

const POSTGRES: &str = r#"
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE SEQUENCE IF NOT EXISTS catalog_cid;
CREATE TABLE IF NOT EXISTS catalog (kind BIGINT NOT NULL, name TEXT NOT NULL,
    cid BIGINT NOT NULL, PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS res_route (rid BIGINT GENERATED BY DEFAULT AS IDENTITY,
    rtype BIGINT NOT NULL, id TEXT NOT NULL, shard BIGINT NOT NULL,
    src BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (rtype, id));
CREATE INDEX IF NOT EXISTS res_route_rid ON res_route (rid, src);
CREATE INDEX IF NOT EXISTS res_route_src ON res_route (shard, src, rid);
CREATE TABLE IF NOT EXISTS res (shard BIGINT NOT NULL, rid BIGINT NOT NULL,
    rtype BIGINT NOT NULL, version BIGINT NOT NULL, lastmod BIGINT NOT NULL,
    deleted BIGINT NOT NULL, body BYTEA NOT NULL, src BIGINT NOT NULL DEFAULT 0,
    sens BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (shard, rid));
CREATE INDEX IF NOT EXISTS res_type ON res (rtype, lastmod);
DROP INDEX IF EXISTS res_src_lastmod;
DROP INDEX IF EXISTS res_lastmod;
CREATE INDEX IF NOT EXISTS res_lastmod_src ON res (lastmod, src);
CREATE TABLE IF NOT EXISTS res_hist (shard BIGINT NOT NULL, rid BIGINT NOT NULL,
    version BIGINT NOT NULL, rtype BIGINT NOT NULL, lastmod BIGINT NOT NULL,
    deleted BIGINT NOT NULL, body BYTEA NOT NULL, src BIGINT NOT NULL DEFAULT 0,
    sens BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (shard, rid, version));
CREATE INDEX IF NOT EXISTS res_hist_type ON res_hist (rtype, lastmod);
CREATE INDEX IF NOT EXISTS res_hist_lastmod ON res_hist (lastmod);
CREATE TABLE IF NOT EXISTS ix_str (shard BIGINT NOT NULL, rid BIGINT NOT NULL,
    pid BIGINT NOT NULL, norm TEXT NOT NULL, raw TEXT NOT NULL,
    PRIMARY KEY (shard, rid, pid, norm, raw));
CREATE INDEX IF NOT EXISTS ix_str_v ON ix_str (pid, norm text_pattern_ops);
CREATE TABLE IF NOT EXISTS ix_txt (shard BIGINT NOT NULL, rid BIGINT NOT NULL,
    pid BIGINT NOT NULL, norm TEXT NOT NULL, PRIMARY KEY (pid, norm, shard, rid));
CREATE TABLE IF NOT EXISTS ix_tok (shard BIGINT NOT NULL, rid BIGINT NOT NULL,
    pid BIGINT NOT NULL, sid BIGINT NOT NULL, code TEXT NOT NULL,
    PRIMARY KEY (pid, code, sid, shard, rid));
CREATE TABLE IF NOT EXISTS ix_date (shard BIGINT NOT NULL, rid BIGINT NOT NULL,
    pid BIGINT NOT NULL, lo BIGINT NOT NULL, hi BIGINT NOT NULL,
    PRIMARY KEY (shard, rid, pid, lo, hi));
CREATE INDEX IF NOT EXISTS ix_date_lo ON ix_date (pid, lo);
CREATE INDEX IF NOT EXISTS ix_date_hi ON ix_date (pid, hi);
CREATE TABLE IF NOT EXISTS ix_ref (shard BIGINT NOT NULL, rid BIGINT NOT NULL,
    pid BIGINT NOT NULL, ttype BIGINT NOT NULL, tid TEXT NOT NULL,
    PRIMARY KEY (tid, ttype, pid, shard, rid));
CREATE TABLE IF NOT EXISTS ix_num (shard BIGINT NOT NULL, rid BIGINT NOT NULL,
    pid BIGINT NOT NULL, lo DOUBLE PRECISION NOT NULL, hi DOUBLE PRECISION NOT NULL,
    sid BIGINT NOT NULL, code TEXT NOT NULL, PRIMARY KEY (pid, lo, hi, sid, code, shard, rid));
CREATE TABLE IF NOT EXISTS ix_comp (shard BIGINT NOT NULL, rid BIGINT NOT NULL,
    pid BIGINT NOT NULL, k TEXT NOT NULL, lo DOUBLE PRECISION NOT NULL,
    hi DOUBLE PRECISION NOT NULL, v TEXT NOT NULL, PRIMARY KEY (pid, k, lo, hi, v, shard, rid));
CREATE TABLE IF NOT EXISTS ix_sens (shard BIGINT NOT NULL, rid BIGINT NOT NULL,
    sens BIGINT NOT NULL, PRIMARY KEY (shard, rid));
CREATE TABLE IF NOT EXISTS audit (part BIGINT NOT NULL, seq BIGINT NOT NULL,
    ts BIGINT NOT NULL, prev BYTEA NOT NULL, hash BYTEA NOT NULL, entry TEXT NOT NULL,
    PRIMARY KEY (part, seq));
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
CREATE TABLE IF NOT EXISTS audit_subject (shard BIGINT NOT NULL, ts BIGINT NOT NULL,
    part BIGINT NOT NULL, seq BIGINT NOT NULL, PRIMARY KEY (shard, ts, part, seq));
CREATE TABLE IF NOT EXISTS audit_head (part BIGINT PRIMARY KEY, seq BIGINT NOT NULL,
    hash BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS audit_checkpoint (part BIGINT NOT NULL, seq BIGINT NOT NULL,
    hash BYTEA NOT NULL, ts BIGINT NOT NULL, kid TEXT NOT NULL, sig BYTEA NOT NULL,
    PRIMARY KEY (part, seq));
CREATE OR REPLACE FUNCTION hutong_append_only() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$;
DROP TRIGGER IF EXISTS audit_append_only ON audit;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION hutong_append_only();
DROP TRIGGER IF EXISTS audit_checkpoint_append_only ON audit_checkpoint;
CREATE TRIGGER audit_checkpoint_append_only BEFORE UPDATE OR DELETE ON audit_checkpoint
    FOR EACH ROW EXECUTE FUNCTION hutong_append_only();
CREATE TABLE IF NOT EXISTS dict (seq BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    data BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS shard_owner (shard BIGINT PRIMARY KEY, patient TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS import_done (file TEXT NOT NULL, chunk BIGINT NOT NULL,
    PRIMARY KEY (file, chunk));
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL,
    state TEXT NOT NULL, request TEXT NOT NULL, result TEXT NOT NULL,
    created BIGINT NOT NULL, updated BIGINT NOT NULL);
"#;

/// The change log (`crate::changelog`): one row per version written, and each consumer's
/// cursor.
pub(crate) const CHANGELOG_SQLITE: &str = "
CREATE TABLE IF NOT EXISTS chg (seq INTEGER PRIMARY KEY AUTOINCREMENT,
    xid INTEGER NOT NULL DEFAULT 0, rtype TEXT NOT NULL, id TEXT NOT NULL,
    version INTEGER NOT NULL, shard INTEGER NOT NULL, deleted INTEGER NOT NULL,
    ts INTEGER NOT NULL, tokens TEXT);
CREATE TABLE IF NOT EXISTS chg_cursor (consumer TEXT PRIMARY KEY, xid INTEGER NOT NULL,
    seq INTEGER NOT NULL);
";

pub(crate) const CHANGELOG_POSTGRES: &str = "
CREATE TABLE IF NOT EXISTS chg (seq BIGINT GENERATED BY DEFAULT AS IDENTITY,
    xid BIGINT NOT NULL, rtype TEXT NOT NULL, id TEXT NOT NULL, version BIGINT NOT NULL,
    shard BIGINT NOT NULL, deleted BIGINT NOT NULL, ts BIGINT NOT NULL, tokens TEXT,
    PRIMARY KEY (xid, seq));
CREATE TABLE IF NOT EXISTS chg_cursor (consumer TEXT PRIMARY KEY, xid BIGINT NOT NULL,
    seq BIGINT NOT NULL);
";

/// Creates the schema if absent, and brings an older one up to date. Returns true when the
/// rows of an older schema still need their derived columns filled (see `Store::open`),
/// after which [`mark_current`] records the new version.
pub fn create(conn: &mut dyn Conn) -> Result<bool, StoreError> {
    match conn.dialect() {
        Dialect::Sqlite => create_locked(conn),
        Dialect::Postgres => {
            // Serialise concurrent first starts (several test processes, several API nodes).
            conn.batch("SELECT pg_advisory_lock(7243)")?;
            let r = create_locked(conn);
            conn.batch("SELECT pg_advisory_unlock(7243)")?;
            r
        }
    }
}

fn create_locked(conn: &mut dyn Conn) -> Result<bool, StoreError> {
    let existing = match conn.query("SELECT v FROM meta WHERE k = 'schema'", &[]) {
        Ok(rows) => rows.first().map(|r| r[0].text().to_string()),
        // No meta table: a new database.
        Err(_) => None,
    };
    let from = match existing.as_deref() {
        None => None,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=SCHEMA_VERSION).contains(&n) => Some(n),
            _ => {
                return Err(StoreError::Schema(format!(
                    "database schema version {v} but this build uses {SCHEMA_VERSION}"
                )))
            }
        },
    };
    let migrate = from == Some(1);
    if migrate {
        // Version 1 → 2: who submitted each version and its sensitivity, as columns.
        for table in ["res", "res_hist", "res_route"] {
            if conn
                .query(&format!("SELECT src FROM {table} LIMIT 0"), &[])
                .is_err()
            {
                if table == "res_route" {
                    conn.batch("ALTER TABLE res_route ADD COLUMN src BIGINT NOT NULL DEFAULT 0")?;
                    continue;
                }
                conn.batch(&format!(
                    "ALTER TABLE {table} ADD COLUMN src BIGINT NOT NULL DEFAULT 0; \
                     ALTER TABLE {table} ADD COLUMN sens BIGINT NOT NULL DEFAULT 0;"
                ))?;
            }
        }
    }
    let to_v3 = from.is_some_and(|v| v < 3);
    let to_v4 = from.is_some_and(|v| v < 4);
    let sqlite = conn.dialect() == Dialect::Sqlite;
    if to_v4 && sqlite {
        // SQLite cannot change a primary key: the old tables step aside for new ones, all in
        // one transaction so that a crash leaves the older store as it was.
        conn.batch("BEGIN IMMEDIATE")?;
        // A table already in the new layout (a posting-list view) stays as it is.
        if to_v3 {
            for (table, index) in VALUE_FIRST {
                if sqlite_table(conn, table)? {
                    conn.batch(&format!(
                        "DROP INDEX IF EXISTS {index}; ALTER TABLE {table} RENAME TO {table}_v2;"
                    ))?;
                }
            }
        } else {
            for g in &postings::GROUPED {
                if sqlite_table(conn, g.view)? {
                    conn.batch(&format!("ALTER TABLE {0} RENAME TO {0}_v3;", g.view))?;
                }
            }
        }
    }
    match conn.dialect() {
        Dialect::Sqlite => {
            conn.batch(&format!("{SQLITE}{}{}", postings::ddl(), CHANGELOG_SQLITE))?
        }
        Dialect::Postgres => conn.batch(&format!("{POSTGRES}{}", CHANGELOG_POSTGRES))?,
    }
    if to_v3 {
        to_value_first(conn)?;
    } else if to_v4 && sqlite {
        // Version 3 → 4: a row per resource becomes a posting list per value and shard.
        for g in &postings::GROUPED {
            if !sqlite_table(conn, &format!("{}_v3", g.view))? {
                continue;
            }
            postings::regroup(conn, g, &format!("{}_v3", g.view))?;
            conn.batch(&format!("DROP TABLE {}_v3", g.view))?;
        }
    }
    if to_v4 {
        if !migrate {
            mark_current(conn)?;
        }
        if sqlite {
            conn.batch("COMMIT")?;
        }
    }
    if existing.is_none() {
        let sql = insert_ignore(conn.dialect(), "meta (k, v) VALUES ('schema', ?)");
        conn.exec(&sql, &[Val::Text(SCHEMA_VERSION.to_string())])?;
    }
    // A store made before shards had owners (see `Tx::claim_shard`): every stored Patient
    // claims its shard before any new write can.
    if conn
        .query("SELECT v FROM meta WHERE k = 'shard_owner'", &[])?
        .is_empty()
    {
        let d = conn.dialect();
        conn.exec(
            &insert_ignore(
                d,
                &format!(
                    "shard_owner (shard, patient) SELECT r.shard, r.id FROM res_route r \
                     JOIN catalog c ON c.kind = {KIND_TYPE} AND c.name = 'Patient' \
                     AND c.cid = r.rtype"
                ),
            ),
            &[],
        )?;
        conn.exec(
            &insert_ignore(d, "meta (k, v) VALUES ('shard_owner', 'claimed')"),
            &[],
        )?;
    }
    Ok(migrate)
}

/// The tables that lead with the value from version 3, and the value index each had before.
const VALUE_FIRST: [(&str, &str); 4] = [
    ("ix_tok", "ix_tok_v"),
    ("ix_ref", "ix_ref_t"),
    ("ix_num", "ix_num_v"),
    ("ix_comp", "ix_comp_v"),
];

/// Version 2 → 3: the token, reference, number and composite rows move to value-first keys
/// (their second copy goes), and code texts move from `ix_str` to `ix_txt`. On SQLite this
/// runs inside the transaction that renamed the old tables; on PostgreSQL it is one
/// multi-statement batch, which the server runs as one transaction.
fn to_value_first(conn: &mut dyn Conn) -> Result<(), StoreError> {
    let columns = [
        "shard, rid, pid, sid, code",
        "shard, rid, pid, ttype, tid",
        "shard, rid, pid, lo, hi, sid, code",
        "shard, rid, pid, k, lo, hi, v",
    ];
    let keys = [
        "pid, code, sid, shard, rid",
        "tid, ttype, pid, shard, rid",
        "pid, lo, hi, sid, code, shard, rid",
        "pid, k, lo, hi, v, shard, rid",
    ];
    let d = conn.dialect();
    let mut sql = String::new();
    let texts = format!("SELECT cid FROM catalog WHERE kind = {KIND_PARAM} AND name LIKE '%:text'");
    for (((table, index), cols), key) in VALUE_FIRST.iter().zip(columns).zip(keys) {
        sql.push_str(&match (d, postings::grouped(table)) {
            (Dialect::Sqlite, _) if !sqlite_table(conn, &format!("{table}_v2"))? => String::new(),
            (Dialect::Sqlite, Some(g)) => {
                postings::regroup(conn, g, &format!("{table}_v2"))?;
                format!("DROP TABLE {table}_v2;\n")
            }
            (Dialect::Sqlite, None) => format!(
                "INSERT INTO {table} ({cols}) SELECT {cols} FROM {table}_v2; DROP TABLE {table}_v2;\n"
            ),
            (Dialect::Postgres, _) => format!(
                "DROP INDEX IF EXISTS {index}; ALTER TABLE {table} DROP CONSTRAINT {table}_pkey; \
                 ALTER TABLE {table} ADD PRIMARY KEY ({key});\n"
            ),
        });
    }
    match d {
        Dialect::Sqlite => {
            let g = postings::grouped("ix_txt").expect("code texts are grouped on SQLite");
            postings::regroup(conn, g, &format!("ix_str WHERE pid IN ({texts})"))?;
        }
        Dialect::Postgres => {
            sql.push_str(&insert_ignore(
                d,
                &format!(
                    "ix_txt (shard, rid, pid, norm) SELECT shard, rid, pid, norm FROM ix_str \
                     WHERE pid IN ({texts})"
                ),
            ));
            sql.push_str(";\n");
        }
    }
    sql.push_str(&format!("DELETE FROM ix_str WHERE pid IN ({texts});"));
    conn.batch(&sql)
}

/// Whether SQLite has a table (not a view) of that name.
fn sqlite_table(conn: &mut dyn Conn, name: &str) -> Result<bool, StoreError> {
    Ok(!conn
        .query(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
            &[Val::Text(name.to_string())],
        )?
        .is_empty())
}

/// Records that the schema is the current version (after a migration's backfill).
pub fn mark_current(conn: &mut dyn Conn) -> Result<(), StoreError> {
    conn.exec(
        "UPDATE meta SET v = ? WHERE k = 'schema'",
        &[Val::Text(SCHEMA_VERSION.to_string())],
    )?;
    Ok(())
}

/// Catalog kinds.
pub const KIND_TYPE: i64 = 1;
const KIND_PARAM: i64 = 2;
pub(crate) const KIND_SYSTEM: i64 = 3;

/// The catalog's tables, looked up for every index row written: foldhash (randomly seeded)
/// rather than SipHash, whose cost showed in a bulk load's writer. Their keys are the
/// platform's own definitions and the code systems its sources use.
type Lookup<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Interned ids, loaded once per process and extended as new code systems appear.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    /// The body compressor (shared by every copy of the catalog).
    pub codec: std::sync::Arc<crate::codec::Codec>,
    types: Lookup<String, i64>,
    type_names: Lookup<i64, String>,
    /// type → parameter → id; nested so a lookup borrows its keys (it runs for every index
    /// entry written).
    params: Lookup<String, Lookup<String, i64>>,
    /// type → token parameter → the id of its `:text` rows.
    text_params: Lookup<String, Lookup<String, i64>>,
    systems: Lookup<String, i64>,
    system_names: Lookup<i64, String>,
    /// See [`Catalog::compartment_pids`].
    compartment: std::sync::OnceLock<(Vec<i64>, Vec<i64>)>,
}

impl Catalog {
    /// Loads the catalog, assigning ids to every resource type and search parameter of the
    /// definitions that has none yet.
    pub fn load(conn: &mut dyn Conn) -> Result<Catalog, StoreError> {
        let mut cat = Catalog::read(conn)?;
        let defs = Definitions::get();
        let mut wanted: Vec<(i64, String)> = Vec::new();
        for t in defs.resource_types() {
            if !cat.types.contains_key(t) {
                wanted.push((KIND_TYPE, t.clone()));
            }
            for (code, p) in defs.params(t).into_iter().flatten() {
                let mut names = vec![code.clone()];
                match p.kind {
                    hutong_fhir::ParamType::Token => {
                        names.push(format!("{code}:of-type"));
                        names.push(format!("{code}:text"));
                    }
                    hutong_fhir::ParamType::Reference => names.push(format!("{code}:identifier")),
                    _ => {}
                }
                for n in names {
                    if cat.param_id(t, &n).is_none() {
                        wanted.push((KIND_PARAM, format!("{t}.{n}")));
                    }
                }
            }
        }
        if !wanted.is_empty() {
            conn.batch("BEGIN")?;
            let r = (|| {
                let sql =
                    insert_ignore(conn.dialect(), "catalog (kind, name, cid) VALUES (?, ?, ?)");
                let mut last = next_cid(conn)? - 1;
                for (kind, name) in &wanted {
                    let next = match conn.dialect() {
                        Dialect::Sqlite => last + 1,
                        Dialect::Postgres => next_cid(conn)?,
                    };
                    last = next;
                    conn.exec(
                        &sql,
                        &[Val::Int(*kind), Val::Text(name.clone()), Val::Int(next)],
                    )?;
                }
                Ok::<_, StoreError>(())
            })();
            match r {
                Ok(()) => conn.batch("COMMIT")?,
                Err(e) => {
                    let _ = conn.batch("ROLLBACK");
                    return Err(e);
                }
            }
            cat = Catalog::read(conn)?;
        }
        Ok(cat)
    }

    fn read(conn: &mut dyn Conn) -> Result<Catalog, StoreError> {
        let mut cat = Catalog::default();
        for r in conn.query("SELECT kind, name, cid FROM catalog", &[])? {
            let (kind, name, cid) = (r[0].int(), r[1].text().to_string(), r[2].int());
            match kind {
                KIND_TYPE => {
                    cat.type_names.insert(cid, name.clone());
                    cat.types.insert(name, cid);
                }
                KIND_PARAM => {
                    if let Some((t, p)) = name.split_once('.') {
                        if let Some(base) = p.strip_suffix(":text") {
                            cat.text_params
                                .entry(t.to_string())
                                .or_default()
                                .insert(base.to_string(), cid);
                        }
                        cat.params
                            .entry(t.to_string())
                            .or_default()
                            .insert(p.to_string(), cid);
                    }
                }
                _ => {
                    cat.system_names.insert(cid, name.clone());
                    cat.systems.insert(name, cid);
                }
            }
        }
        for r in conn.query("SELECT data FROM dict ORDER BY seq", &[])? {
            cat.codec.add(&r[0].clone().into_blob(), true);
        }
        // The empty system is always 0.
        cat.systems.insert(String::new(), 0);
        cat.system_names.insert(0, String::new());
        Ok(cat)
    }

    pub fn type_id(&self, t: &str) -> Option<i64> {
        self.types.get(t).copied()
    }

    pub fn type_name(&self, id: i64) -> Option<&str> {
        self.type_names.get(&id).map(String::as_str)
    }

    pub fn param_id(&self, t: &str, code: &str) -> Option<i64> {
        self.params.get(t)?.get(code).copied()
    }

    /// `param_id(t, "{code}:text")`, without building the name.
    pub fn text_param_id(&self, t: &str, code: &str) -> Option<i64> {
        self.text_params.get(t)?.get(code).copied()
    }

    /// The stored parameter ids that serve search parameter `code` (which may carry a
    /// `:identifier`/`:text`/`:of-type` suffix) and, for a `X.where(resolve() is T)`
    /// parameter, the target type id its references must have. Parameters derived from
    /// another one (`fhir::Derived`) are served from that one's rows.
    pub fn pids(&self, rtype: &str, code: &str) -> (Vec<i64>, Option<i64>) {
        let (name, suffix) = match code.split_once(':') {
            Some((n, s)) => (n, format!(":{s}")),
            None => (code, String::new()),
        };
        let id = |c: &str| self.param_id(rtype, &format!("{c}{suffix}")).unwrap_or(-1);
        match Definitions::get()
            .param(rtype, name)
            .and_then(|p| p.derived.as_ref())
        {
            None => (vec![id(name)], None),
            Some(hutong_fhir::Derived::Same { base }) => (vec![id(base)], None),
            Some(hutong_fhir::Derived::Restrict { base, target }) => {
                (vec![id(base)], Some(self.type_id(target).unwrap_or(-1)))
            }
            Some(hutong_fhir::Derived::Union { base }) => (vec![id(name), id(base)], None),
        }
    }

    /// The stored parameter ids through which a resource of `types` (every compartment type
    /// when empty) is in a Patient's compartment, and their `date` parameters' ids: what
    /// `$everything` follows. The whole-compartment answer is kept (it only depends on the
    /// definitions and the ids loaded at open).
    pub fn compartment_pids(&self, types: &[String]) -> std::borrow::Cow<'_, (Vec<i64>, Vec<i64>)> {
        let compute = || {
            let defs = Definitions::get();
            let (mut pids, mut dates) = (Vec::new(), Vec::new());
            for t in defs.compartment_types() {
                if !types.is_empty() && !types.iter().any(|x| x == t) {
                    continue;
                }
                for p in defs.compartment_params(t).unwrap_or(&[]) {
                    pids.extend(self.pids(t, p).0);
                }
                if defs.param(t, "date").is_some() {
                    dates.extend(self.pids(t, "date").0);
                }
            }
            (pids, dates)
        };
        if types.is_empty() {
            std::borrow::Cow::Borrowed(self.compartment.get_or_init(compute))
        } else {
            std::borrow::Cow::Owned(compute())
        }
    }

    pub fn system_id(&self, s: &str) -> Option<i64> {
        self.systems.get(s).copied()
    }

    pub fn system_name(&self, id: i64) -> Option<&str> {
        self.system_names.get(&id).map(String::as_str)
    }

    /// The id of code system `s`, inserting it (inside the caller's transaction) if new.
    /// New ids are returned in `added` so the caller can publish them after commit.
    pub fn intern_system(
        &self,
        conn: &mut dyn Conn,
        s: &str,
        added: &mut HashMap<String, i64>,
    ) -> Result<i64, StoreError> {
        if let Some(id) = self.systems.get(s).or_else(|| added.get(s)) {
            return Ok(*id);
        }
        let sql = insert_ignore(conn.dialect(), "catalog (kind, name, cid) VALUES (?, ?, ?)");
        // Another writer (PostgreSQL) may have added it since we loaded: look first.
        let found = conn.query(
            "SELECT cid FROM catalog WHERE kind = ? AND name = ?",
            &[Val::Int(KIND_SYSTEM), Val::Text(s.to_string())],
        )?;
        let id = if let Some(r) = found.first() {
            r[0].int()
        } else {
            let next = next_cid(conn)?;
            conn.exec(
                &sql,
                &[
                    Val::Int(KIND_SYSTEM),
                    Val::Text(s.to_string()),
                    Val::Int(next),
                ],
            )?;
            // A concurrent writer may have won the insert: its id is the one that counts.
            conn.query(
                "SELECT cid FROM catalog WHERE kind = ? AND name = ?",
                &[Val::Int(KIND_SYSTEM), Val::Text(s.to_string())],
            )?
            .first()
            .map_or(next, |r| r[0].int())
        };
        added.insert(s.to_string(), id);
        Ok(id)
    }

    pub fn publish(&mut self, added: HashMap<String, i64>) {
        for (s, id) in added {
            self.system_names.insert(id, s.clone());
            self.systems.insert(s, id);
        }
    }
}

/// A fresh catalog id: a sequence on PostgreSQL (concurrent writers), the next integer on
/// SQLite (one writer at a time).
fn next_cid(conn: &mut dyn Conn) -> Result<i64, StoreError> {
    let sql = match conn.dialect() {
        Dialect::Sqlite => "SELECT COALESCE(MAX(cid), 0) + 1 FROM catalog",
        Dialect::Postgres => "SELECT nextval('catalog_cid')",
    };
    Ok(conn.query(sql, &[])?[0][0].int())
}

/// `INSERT … ON CONFLICT DO NOTHING` in either dialect.
pub fn insert_ignore(d: Dialect, rest: &str) -> String {
    d.insert_ignore(rest)
}
