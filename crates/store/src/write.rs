//! Writing versions and their index rows; reading versions back.

use std::collections::HashMap;

use hutong_fhir::date::{format_instant, now_ms};
use hutong_fhir::index::{compartment_owner, extract, IndexValue};
use serde_json::{json, Value};

use crate::codec::Codec;
use crate::schema::Catalog;
use crate::search::{self, Page, Query};
use crate::sql::{Conn, Row, Val};
use crate::{shard_of, HistoryScope, StoreError, Stored};

/// A version made ready for storage — JSON with `meta`, its compressed form, its index
/// entries and owner — without touching the database, so that this CPU work can run outside
/// the (single) writer's transaction, in parallel with it.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub rtype: String,
    pub id: String,
    pub version: i64,
    pub last_updated: i64,
    body: Vec<u8>,
    compressed: Vec<u8>,
    entries: Vec<hutong_fhir::index::Entry>,
    owner: Option<String>,
}

impl Prepared {
    /// Version 1 of a new resource, stamped now; `id` is generated when absent.
    pub(crate) fn new(
        codec: &Codec,
        rtype: &str,
        id: Option<&str>,
        res: Value,
    ) -> Result<Prepared, StoreError> {
        let id = id.map_or_else(|| uuid::Uuid::new_v4().to_string(), String::from);
        Prepared::build(codec, rtype, &id, 1, now_ms(), Some(res))
    }

    fn build(
        codec: &Codec,
        rtype: &str,
        id: &str,
        version: i64,
        now: i64,
        res: Option<Value>,
    ) -> Result<Prepared, StoreError> {
        let mut p = Prepared {
            rtype: rtype.to_string(),
            id: id.to_string(),
            version,
            last_updated: now,
            body: Vec::new(),
            compressed: Vec::new(),
            entries: Vec::new(),
            owner: None,
        };
        let Some(mut r) = res else { return Ok(p) };
        let obj = r
            .as_object_mut()
            .ok_or_else(|| StoreError::Invalid("a resource must be a JSON object".into()))?;
        obj.insert("id".into(), Value::String(id.to_string()));
        let meta = obj.entry("meta").or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        meta["versionId"] = Value::String(version.to_string());
        meta["lastUpdated"] = Value::String(format_instant(now));
        p.entries = extract(rtype, &r);
        p.body = serde_json::to_vec(&r).map_err(|e| StoreError::Invalid(e.to_string()))?;
        p.compressed = codec.compress(&p.body)?;
        p.owner = compartment_owner(rtype, id, &p.entries);
        Ok(p)
    }
}

/// A write transaction. Everything done through it commits together.
pub struct Tx<'a> {
    conn: &'a mut dyn Conn,
    cat: &'a Catalog,
    added: &'a mut HashMap<String, i64>,
    now: i64,
    /// Versions written, for the store's dictionary-training trigger.
    pub(crate) written: u64,
    /// Index rows not yet written, per index table.
    pending: [Vec<Row>; 6],
}

/// Buffered index rows that trigger a flush (bounds memory for huge transactions).
const FLUSH_ROWS: usize = 20_000;

struct Current {
    shard: i64,
    rid: i64,
    version: i64,
    deleted: bool,
}

impl<'a> Tx<'a> {
    pub(crate) fn new(
        conn: &'a mut dyn Conn,
        cat: &'a Catalog,
        added: &'a mut HashMap<String, i64>,
    ) -> Tx<'a> {
        Tx {
            conn,
            cat,
            added,
            now: now_ms(),
            written: 0,
            pending: Default::default(),
        }
    }

    fn type_id(&self, rtype: &str) -> Result<i64, StoreError> {
        self.cat
            .type_id(rtype)
            .ok_or_else(|| StoreError::Invalid(format!("unknown resource type {rtype}")))
    }

    fn current(&mut self, rtype: &str, id: &str) -> Result<Option<Current>, StoreError> {
        let t = self.type_id(rtype)?;
        let rows = self.conn.query(
            "SELECT r.shard, r.rid, s.version, s.deleted FROM res_route r \
             JOIN res s ON s.shard = r.shard AND s.rid = r.rid WHERE r.rtype = ? AND r.id = ?",
            &[Val::Int(t), Val::Text(id.to_string())],
        )?;
        Ok(rows.first().map(|r| Current {
            shard: r[0].int(),
            rid: r[1].int(),
            version: r[2].int(),
            deleted: r[3].int() != 0,
        }))
    }

    /// Creates a resource with a new server-assigned id (or `id`, which must be unused).
    pub fn create(
        &mut self,
        rtype: &str,
        id: Option<&str>,
        res: Value,
    ) -> Result<Stored, StoreError> {
        let id = match id {
            Some(i) => {
                if self.current(rtype, i)?.is_some() {
                    return Err(StoreError::Conflict(format!("{rtype}/{i} already exists")));
                }
                i.to_string()
            }
            // A fresh v4 UUID cannot collide: skip the lookup on the bulk path.
            None => uuid::Uuid::new_v4().to_string(),
        };
        self.put(rtype, &id, None, Some(res))
    }

    /// Creates a resource under an id the caller has just generated (a v4 UUID), without
    /// checking whether it exists: the bulk path of transaction bundles.
    pub fn insert_fresh(
        &mut self,
        rtype: &str,
        id: &str,
        res: Value,
    ) -> Result<Stored, StoreError> {
        self.put(rtype, id, None, Some(res))
    }

    /// Updates (or creates, with the client's id) a resource. `if_match` is the version the
    /// client last saw. Returns the stored version and whether it was created.
    pub fn update(
        &mut self,
        rtype: &str,
        id: &str,
        res: Value,
        if_match: Option<i64>,
    ) -> Result<(Stored, bool), StoreError> {
        let cur = self.current(rtype, id)?;
        check_match(&cur, if_match)?;
        let created = cur.as_ref().is_none_or(|c| c.deleted);
        Ok((self.put(rtype, id, cur, Some(res))?, created))
    }

    /// Deletes a resource (a new, deleted version). Returns `None` when there was nothing to
    /// delete (absent or already deleted).
    pub fn delete(
        &mut self,
        rtype: &str,
        id: &str,
        if_match: Option<i64>,
    ) -> Result<Option<Stored>, StoreError> {
        let cur = self.current(rtype, id)?;
        check_match(&cur, if_match)?;
        match cur {
            Some(c) if !c.deleted => Ok(Some(self.put(rtype, id, Some(c), None)?)),
            _ => Ok(None),
        }
    }

    /// Reads the current version inside the transaction (sees its own writes).
    pub fn read(&mut self, rtype: &str, id: &str) -> Result<Option<Stored>, StoreError> {
        read_current(self.conn, self.cat, rtype, id)
    }

    /// Searches inside the transaction (sees its own writes).
    pub fn search(&mut self, q: &Query) -> Result<Page, StoreError> {
        self.flush()?;
        if self.added.is_empty() {
            return search::run(self.conn, self.cat, q);
        }
        // Code systems first seen in this transaction are not in the shared catalog yet.
        let mut cat = self.cat.clone();
        cat.publish(self.added.clone());
        search::run(self.conn, &cat, q)
    }

    /// Marks a bookkeeping key as done in the same transaction (used by resumable imports).
    pub fn mark_done(&mut self, file: &str, chunk: i64) -> Result<(), StoreError> {
        let sql = crate::schema::insert_ignore(
            self.conn.dialect(),
            "import_done (file, chunk) VALUES (?, ?)",
        );
        self.conn
            .exec(&sql, &[Val::Text(file.to_string()), Val::Int(chunk)])?;
        Ok(())
    }

    /// Writes a version prepared outside the transaction (see [`Prepared`]). When the id
    /// already exists the resource becomes its next version; `fresh` skips that lookup for
    /// ids the caller has just generated.
    pub fn write_prepared(&mut self, p: Prepared, fresh: bool) -> Result<Stored, StoreError> {
        if !fresh {
            // Claim the id; only when it is taken do we pay for reading the current version.
            let t = self.type_id(&p.rtype)?;
            let shard = p.owner.as_deref().map_or(0, shard_of);
            let sql = match self.conn.dialect() {
                crate::sql::Dialect::Sqlite => {
                    "INSERT OR IGNORE INTO res_route (rtype, id, shard) VALUES (?, ?, ?) RETURNING rid"
                }
                crate::sql::Dialect::Postgres => {
                    "INSERT INTO res_route (rtype, id, shard) VALUES (?, ?, ?) \
                     ON CONFLICT DO NOTHING RETURNING rid"
                }
            };
            let rows = self.conn.query(
                sql,
                &[Val::Int(t), Val::Text(p.id.clone()), Val::Int(shard)],
            )?;
            if let Some(r) = rows.first() {
                let rid = r[0].int();
                self.written += 1;
                return self.put_prepared(None, p, Some(rid));
            }
        }
        let cur = if fresh {
            None
        } else {
            self.current(&p.rtype, &p.id)?
        };
        if cur.is_some() {
            let v: Value =
                serde_json::from_slice(&p.body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let (rtype, id) = (p.rtype.clone(), p.id.clone());
            return self.put(&rtype, &id, cur, Some(v));
        }
        self.written += 1;
        self.put_prepared(None, p, None)
    }

    fn put(
        &mut self,
        rtype: &str,
        id: &str,
        cur: Option<Current>,
        res: Option<Value>,
    ) -> Result<Stored, StoreError> {
        let version = cur.as_ref().map_or(1, |c| c.version + 1);
        let p = Prepared::build(&self.cat.codec, rtype, id, version, self.now, res)?;
        self.written += 1;
        self.put_prepared(cur, p, None)
    }

    fn put_prepared(
        &mut self,
        cur: Option<Current>,
        p: Prepared,
        claimed_rid: Option<i64>,
    ) -> Result<Stored, StoreError> {
        let Prepared {
            rtype,
            id,
            version,
            last_updated: now,
            body,
            compressed,
            entries,
            owner,
        } = p;
        let (rtype, id) = (rtype.as_str(), id.as_str());
        let t = self.type_id(rtype)?;
        let deleted = body.is_empty();
        // A deleted version stays in the shard it was in.
        let shard = match (&owner, &cur) {
            (Some(p), _) => shard_of(p),
            (None, Some(c)) if deleted => c.shard,
            (None, _) => 0,
        };
        let rid = match &cur {
            Some(c) => {
                self.conn.exec(
                    "INSERT INTO res_hist (shard, rid, version, rtype, lastmod, deleted, body) \
                     SELECT shard, rid, version, rtype, lastmod, deleted, body FROM res \
                     WHERE shard = ? AND rid = ?",
                    &[Val::Int(c.shard), Val::Int(c.rid)],
                )?;
                // The old version's rows may still be buffered in this transaction.
                self.flush()?;
                for table in INDEX_TABLES {
                    self.conn.exec(
                        &format!("DELETE FROM {table} WHERE shard = ? AND rid = ?"),
                        &[Val::Int(c.shard), Val::Int(c.rid)],
                    )?;
                }
                if c.shard != shard {
                    // Filed under another patient now: move the resource and its history.
                    self.conn.exec(
                        "DELETE FROM res WHERE shard = ? AND rid = ?",
                        &[Val::Int(c.shard), Val::Int(c.rid)],
                    )?;
                    self.conn.exec(
                        "UPDATE res_hist SET shard = ? WHERE shard = ? AND rid = ?",
                        &[Val::Int(shard), Val::Int(c.shard), Val::Int(c.rid)],
                    )?;
                    self.conn.exec(
                        "UPDATE res_route SET shard = ? WHERE rid = ?",
                        &[Val::Int(shard), Val::Int(c.rid)],
                    )?;
                }
                c.rid
            }
            None if claimed_rid.is_some() => claimed_rid.unwrap_or_default(),
            None => {
                let rows = self.conn.query(
                    "INSERT INTO res_route (rtype, id, shard) VALUES (?, ?, ?) RETURNING rid",
                    &[Val::Int(t), Val::Text(id.to_string()), Val::Int(shard)],
                )?;
                rows.first().map(|r| r[0].int()).ok_or_else(|| {
                    StoreError::Corrupt("insert into res_route returned no id".into())
                })?
            }
        };
        self.conn.exec(
            "INSERT INTO res (shard, rid, rtype, version, lastmod, deleted, body) \
             VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (shard, rid) DO UPDATE SET \
             version = excluded.version, lastmod = excluded.lastmod, \
             deleted = excluded.deleted, body = excluded.body",
            &[
                Val::Int(shard),
                Val::Int(rid),
                Val::Int(t),
                Val::Int(version),
                Val::Int(now),
                Val::Int(deleted as i64),
                Val::Blob(compressed),
            ],
        )?;
        self.insert_index(rtype, shard, rid, &entries)?;
        Ok(Stored {
            rtype: rtype.to_string(),
            id: id.to_string(),
            version,
            last_updated: now,
            deleted,
            body,
        })
    }

    fn insert_index(
        &mut self,
        rtype: &str,
        shard: i64,
        rid: i64,
        entries: &[hutong_fhir::index::Entry],
    ) -> Result<(), StoreError> {
        let mut rows: [Vec<Row>; 6] = Default::default();
        let (s, r) = (Val::Int(shard), Val::Int(rid));
        for e in entries {
            let Some(pid) = self.cat.param_id(rtype, &e.param) else {
                continue;
            };
            let p = Val::Int(pid);
            match &e.value {
                // The original is kept only where it differs from the folded form (`:exact`).
                IndexValue::String { norm, raw } => rows[0].push(vec![
                    s.clone(),
                    r.clone(),
                    p,
                    Val::Text(norm.clone()),
                    Val::Text(if raw == norm {
                        String::new()
                    } else {
                        raw.clone()
                    }),
                ]),
                IndexValue::Token { system, code, text } => {
                    if !code.is_empty() {
                        let sid = self.cat.intern_system(self.conn, system, self.added)?;
                        rows[1].push(vec![
                            s.clone(),
                            r.clone(),
                            p,
                            Val::Int(sid),
                            Val::Text(code.clone()),
                        ]);
                    }
                    if !text.is_empty() {
                        if let Some(tp) = self.cat.param_id(rtype, &format!("{}:text", e.param)) {
                            rows[0].push(vec![
                                s.clone(),
                                r.clone(),
                                Val::Int(tp),
                                Val::Text(text.clone()),
                                Val::Text(String::new()),
                            ]);
                        }
                    }
                }
                IndexValue::Uri(u) => rows[1].push(vec![
                    s.clone(),
                    r.clone(),
                    p,
                    Val::Int(0),
                    Val::Text(u.clone()),
                ]),
                IndexValue::Date(d) => rows[2].push(vec![
                    s.clone(),
                    r.clone(),
                    p,
                    Val::Int(d.lo),
                    Val::Int(d.hi),
                ]),
                IndexValue::Reference { rtype: tt, id } => {
                    let ttype = if tt.is_empty() {
                        0
                    } else {
                        self.cat.type_id(tt).unwrap_or(0)
                    };
                    rows[3].push(vec![
                        s.clone(),
                        r.clone(),
                        p,
                        Val::Int(ttype),
                        Val::Text(id.clone()),
                    ])
                }
                IndexValue::Quantity {
                    lo,
                    hi,
                    system,
                    code,
                } => {
                    let sid = self.cat.intern_system(self.conn, system, self.added)?;
                    rows[4].push(vec![
                        s.clone(),
                        r.clone(),
                        p,
                        Val::Real(*lo),
                        Val::Real(*hi),
                        Val::Int(sid),
                        Val::Text(code.clone()),
                    ])
                }
                IndexValue::Composite { key, second } => {
                    let (lo, hi, v) = match second.as_ref() {
                        IndexValue::Quantity { lo, hi, code, .. } => (*lo, *hi, code.clone()),
                        IndexValue::Date(d) => (d.lo as f64, d.hi as f64, String::new()),
                        IndexValue::Token { system, code, .. } => {
                            (0.0, 0.0, format!("{system}|{code}"))
                        }
                        IndexValue::String { norm, .. } => (0.0, 0.0, norm.clone()),
                        IndexValue::Uri(u) => (0.0, 0.0, u.clone()),
                        _ => continue,
                    };
                    rows[5].push(vec![
                        s.clone(),
                        r.clone(),
                        p,
                        Val::Text(key.clone()),
                        Val::Real(lo),
                        Val::Real(hi),
                        Val::Text(v),
                    ])
                }
            }
        }
        for (pending, new) in self.pending.iter_mut().zip(rows) {
            pending.extend(new);
        }
        if self.pending.iter().map(Vec::len).sum::<usize>() >= FLUSH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the buffered index rows. Buffering turns a bundle's thousands of row inserts
    /// into a few statements (one round trip per table on PostgreSQL); anything that reads
    /// the index inside the transaction flushes first.
    pub(crate) fn flush(&mut self) -> Result<(), StoreError> {
        for (i, table) in INDEX_TABLES.iter().enumerate() {
            if !self.pending[i].is_empty() {
                let rows = std::mem::take(&mut self.pending[i]);
                self.conn.insert_rows(table, INDEX_COLUMNS[i], &rows)?;
            }
        }
        Ok(())
    }
}

const INDEX_TABLES: [&str; 6] = ["ix_str", "ix_tok", "ix_date", "ix_ref", "ix_num", "ix_comp"];
const INDEX_COLUMNS: [&[&str]; 6] = [
    &["shard", "rid", "pid", "norm", "raw"],
    &["shard", "rid", "pid", "sid", "code"],
    &["shard", "rid", "pid", "lo", "hi"],
    &["shard", "rid", "pid", "ttype", "tid"],
    &["shard", "rid", "pid", "lo", "hi", "sid", "code"],
    &["shard", "rid", "pid", "k", "lo", "hi", "v"],
];

fn check_match(cur: &Option<Current>, if_match: Option<i64>) -> Result<(), StoreError> {
    if let Some(expected) = if_match {
        let current = cur.as_ref().map_or(0, |c| c.version);
        if current != expected {
            return Err(StoreError::VersionMismatch { expected, current });
        }
    }
    Ok(())
}

pub(crate) fn stored_from(
    cat: &Catalog,
    rtype_id: i64,
    id: String,
    version: i64,
    lastmod: i64,
    deleted: i64,
    blob: Vec<u8>,
) -> Result<Stored, StoreError> {
    Ok(Stored {
        rtype: cat.type_name(rtype_id).unwrap_or("").to_string(),
        id,
        version,
        last_updated: lastmod,
        deleted: deleted != 0,
        body: cat.codec.decompress(&blob)?,
    })
}

pub(crate) fn read_current(
    conn: &mut dyn Conn,
    cat: &Catalog,
    rtype: &str,
    id: &str,
) -> Result<Option<Stored>, StoreError> {
    let Some(t) = cat.type_id(rtype) else {
        return Ok(None);
    };
    let rows = conn.query(
        "SELECT s.version, s.lastmod, s.deleted, s.body FROM res_route r \
         JOIN res s ON s.shard = r.shard AND s.rid = r.rid WHERE r.rtype = ? AND r.id = ?",
        &[Val::Int(t), Val::Text(id.to_string())],
    )?;
    first_version(cat, t, id, rows)
}

/// The first `(version, lastmod, deleted, body)` row as a stored version of `t/id`.
fn first_version(
    cat: &Catalog,
    t: i64,
    id: &str,
    rows: Vec<crate::sql::Row>,
) -> Result<Option<Stored>, StoreError> {
    let Some(mut r) = rows.into_iter().next() else {
        return Ok(None);
    };
    let blob = std::mem::replace(&mut r[3], Val::Null).into_blob();
    let (version, lastmod, deleted) = (r[0].int(), r[1].int(), r[2].int());
    Ok(Some(stored_from(
        cat,
        t,
        id.to_string(),
        version,
        lastmod,
        deleted,
        blob,
    )?))
}

pub(crate) fn read_version(
    conn: &mut dyn Conn,
    cat: &Catalog,
    rtype: &str,
    id: &str,
    version: i64,
) -> Result<Option<Stored>, StoreError> {
    let Some(t) = cat.type_id(rtype) else {
        return Ok(None);
    };
    let rows = conn.query(
        "SELECT s.version, s.lastmod, s.deleted, s.body FROM res_route r \
         JOIN res s ON s.shard = r.shard AND s.rid = r.rid \
         WHERE r.rtype = ? AND r.id = ? AND s.version = ? \
         UNION ALL SELECT h.version, h.lastmod, h.deleted, h.body FROM res_route r \
         JOIN res_hist h ON h.shard = r.shard AND h.rid = r.rid \
         WHERE r.rtype = ? AND r.id = ? AND h.version = ?",
        &[
            Val::Int(t),
            Val::Text(id.to_string()),
            Val::Int(version),
            Val::Int(t),
            Val::Text(id.to_string()),
            Val::Int(version),
        ],
    )?;
    first_version(cat, t, id, rows)
}

pub(crate) fn history(
    conn: &mut dyn Conn,
    cat: &Catalog,
    scope: &HistoryScope,
    since: Option<i64>,
    count: usize,
    offset: usize,
) -> Result<(Vec<Stored>, Option<u64>), StoreError> {
    let since = since.unwrap_or(i64::MIN);
    let (filter, mut params): (&str, Vec<Val>) = match scope {
        HistoryScope::Instance { rtype, id } => {
            let Some(t) = cat.type_id(rtype) else {
                return Ok((Vec::new(), Some(0)));
            };
            (
                "r.rtype = ? AND r.id = ?",
                vec![Val::Int(t), Val::Text(id.clone())],
            )
        }
        HistoryScope::Type(rtype) => {
            let Some(t) = cat.type_id(rtype) else {
                return Ok((Vec::new(), Some(0)));
            };
            ("r.rtype = ?", vec![Val::Int(t)])
        }
        HistoryScope::System => ("1 = 1", vec![]),
    };
    let sub = |table: &str| {
        format!(
            "SELECT r.rtype, r.id, s.version, s.lastmod, s.deleted, s.body, s.rid FROM res_route r \
             JOIN {table} s ON s.shard = r.shard AND s.rid = r.rid WHERE {filter} AND s.lastmod >= ?"
        )
    };
    let mut all = params.clone();
    all.push(Val::Int(since));
    all.extend(params.iter().cloned());
    all.push(Val::Int(since));
    let union = format!("{} UNION ALL {}", sub("res"), sub("res_hist"));
    let total = conn.query(&format!("SELECT COUNT(*) FROM ({union}) AS h"), &all)?;
    params = all;
    params.push(Val::Int(count as i64));
    params.push(Val::Int(offset as i64));
    let rows = conn.query(
        &format!(
            "SELECT * FROM ({union}) AS h ORDER BY lastmod DESC, rid DESC, version DESC \
             LIMIT ? OFFSET ?"
        ),
        &params,
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for mut r in rows {
        let blob = std::mem::replace(&mut r[5], Val::Null).into_blob();
        out.push(stored_from(
            cat,
            r[0].int(),
            r[1].text().to_string(),
            r[2].int(),
            r[3].int(),
            r[4].int(),
            blob,
        )?);
    }
    Ok((out, Some(total[0][0].int() as u64)))
}
