//! Writing versions and their index rows; reading versions back.
//!
//! One file past the ~800 lines we keep to, because versions and their index rows are written
//! and read back in one place, so the invariants at the top of `lib.rs` are kept by one file.

use std::collections::HashMap;

use hutong_fhir::date::{format_instant, now_ms};
use hutong_fhir::index::{compartment_owner, extract, IndexValue};
use serde_json::{json, Value};

use crate::audit::Change;
use crate::codec::Codec;
use crate::row::{stored_from, RowMeta, VERSION_COLS};
use crate::schema::Catalog;
use crate::scope::Scope;
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
    /// `meta.source`: who submitted it.
    source: String,
    /// Sensitive-category bits of its security labels (`hutong_fhir::security`).
    sens: u32,
}

impl Prepared {
    /// The resource as it will be stored (JSON, `meta` stamped).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Version 1 of a new resource, stamped now; `id` is generated when absent.
    pub(crate) fn new(
        codec: &Codec,
        rtype: &str,
        id: Option<&str>,
        res: &mut Value,
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
        res: Option<&mut Value>,
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
            source: String::new(),
            sens: 0,
        };
        let Some(r) = res else { return Ok(p) };
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
        p.entries = extract(rtype, r);
        if let Some(prot) = codec.protector() {
            blind_entries(prot.as_ref(), rtype, &mut p.entries);
        }
        p.source = r["meta"]["source"].as_str().unwrap_or("").to_string();
        p.sens = hutong_fhir::security::bits(r);
        p.body = serde_json::to_vec(&r).map_err(|e| StoreError::Invalid(e.to_string()))?;
        p.compressed = codec.encode(rtype, &p.body)?;
        p.owner = compartment_owner(rtype, id, &p.entries);
        Ok(p)
    }
}

/// Replaces the identifying index values of `rtype` by keyed hashes: tokens whole, strings
/// by every prefix (FHIR string search matches prefixes) and whole for `:exact`.
fn blind_entries(
    p: &dyn crate::codec::Protector,
    rtype: &str,
    entries: &mut Vec<hutong_fhir::index::Entry>,
) {
    use crate::codec::BLIND_PREFIX_CHARS;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries.drain(..) {
        let base = e.param.split(':').next().unwrap_or(e.param);
        if !p.blinds(rtype, base) {
            out.push(e);
            continue;
        }
        match e.value {
            IndexValue::String { norm, raw } => {
                let chars: Vec<char> = norm.chars().collect();
                let mut prefixes: Vec<String> = (1..=chars.len().min(BLIND_PREFIX_CHARS))
                    .map(|n| chars[..n].iter().collect())
                    .collect();
                if chars.len() > BLIND_PREFIX_CHARS {
                    prefixes.push(norm.clone());
                }
                for pre in prefixes {
                    out.push(hutong_fhir::index::Entry {
                        param: e.param,
                        value: IndexValue::String {
                            norm: p.blind("prefix", &pre),
                            raw: String::new(),
                        },
                    });
                }
                out.push(hutong_fhir::index::Entry {
                    param: e.param,
                    value: IndexValue::String {
                        norm: p.blind("exact", &raw),
                        raw: String::new(),
                    },
                });
            }
            IndexValue::Token { system, code, .. } => {
                if !code.is_empty() {
                    out.push(hutong_fhir::index::Entry {
                        param: e.param,
                        value: IndexValue::Token {
                            system,
                            code: p.blind("token", &code),
                            text: String::new(),
                        },
                    });
                }
            }
            other => out.push(hutong_fhir::index::Entry {
                param: e.param,
                value: other,
            }),
        }
    }
    *entries = out;
}

/// A write transaction. Everything done through it commits together.
pub struct Tx<'a> {
    pub(crate) conn: &'a mut dyn Conn,
    cat: &'a Catalog,
    added: &'a mut HashMap<String, i64>,
    pub(crate) now: i64,
    /// Versions written, for the store's dictionary-training trigger.
    pub(crate) written: u64,
    /// Index rows not yet written, per index table.
    pending: [Vec<Row>; 8],
    /// What this transaction wrote, for its audit entry.
    pub(crate) changes: Vec<Change>,
    /// Shards whose owner this transaction has already checked (see [`Tx::claim_shard`]).
    owners: HashMap<i64, String>,
}

/// Buffered index rows that trigger a flush (bounds memory for huge transactions).
const FLUSH_ROWS: usize = 20_000;

struct Current {
    shard: i64,
    rid: i64,
    version: i64,
    deleted: bool,
    src: i64,
    sens: u32,
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
            changes: Vec::new(),
            owners: HashMap::new(),
        }
    }

    /// Makes sure `shard` belongs to Patient `patient` and to no other. A shard is a 64-bit
    /// hash of the Patient id, and the access decision opens records by shard: two ids
    /// with the same hash — by chance, or crafted by a submitter who knows another
    /// patient's id — would put one patient's records in the other's. The first Patient id
    /// written into a shard owns it (`shard_owner`); anything filed under another id with
    /// the same shard is refused, and the transaction with it.
    fn claim_shard(&mut self, shard: i64, patient: &str) -> Result<(), StoreError> {
        if let Some(owner) = self.owners.get(&shard) {
            return check_owner(owner, patient);
        }
        let lookup = "SELECT patient FROM shard_owner WHERE shard = ?";
        let mut found = self.conn.query(lookup, &[Val::Int(shard)])?;
        if found.is_empty() {
            let sql = crate::schema::insert_ignore(
                self.conn.dialect(),
                "shard_owner (shard, patient) VALUES (?, ?)",
            );
            let inserted = self
                .conn
                .exec(&sql, &[Val::Int(shard), Val::Text(patient.to_string())])?;
            if inserted == 0 {
                // Another writer claimed it meanwhile (PostgreSQL): compare with theirs.
                found = self.conn.query(lookup, &[Val::Int(shard)])?;
            }
        }
        let owner = found
            .first()
            .map_or_else(|| patient.to_string(), |r| r[0].text().to_string());
        check_owner(&owner, patient)?;
        self.owners.insert(shard, owner);
        Ok(())
    }

    /// The transaction's connection, for tables other crates keep beside the FHIR data
    /// (written in the same transaction as the resources they describe).
    pub fn conn(&mut self) -> &mut dyn Conn {
        self.conn
    }

    /// Re-encodes the stored bodies of `rtype/id` (every version) and rebuilds the index rows
    /// of its current version, without a new version: how identity data written before
    /// encryption was switched on, or under a retired key, is brought under the current one.
    /// Returns whether anything was rewritten.
    pub fn reprotect(&mut self, rtype: &str, id: &str) -> Result<bool, StoreError> {
        let Some(cur) = self.current(rtype, id)? else {
            return Ok(false);
        };
        let key = [Val::Int(cur.shard), Val::Int(cur.rid)];
        let rows = self.conn.query(
            "SELECT 0, version, lastmod, body FROM res WHERE shard = ? AND rid = ? \
             UNION ALL SELECT 1, version, lastmod, body FROM res_hist WHERE shard = ? AND rid = ?",
            &[
                key[0].clone(),
                key[1].clone(),
                key[0].clone(),
                key[1].clone(),
            ],
        )?;
        let mut changed = false;
        for mut r in rows {
            let blob = std::mem::replace(&mut r[3], Val::Null).into_blob();
            if blob.is_empty() {
                continue;
            }
            let plain = self.cat.codec.decompress(&blob)?;
            let sealed = self.cat.codec.encode(rtype, &plain)?;
            let current = r[0].int() == 0;
            if current {
                // The index rows too: identifying values become keyed hashes. The rows there
                // are were written in the clear (before encryption) or blinded: both go.
                let v: Value = serde_json::from_slice(&plain)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let clear = extract(rtype, &v);
                let mut entries = clear.clone();
                if let Some(prot) = self.cat.codec.protector() {
                    blind_entries(prot.as_ref(), rtype, &mut entries);
                }
                self.unindex(rtype, cur.shard, cur.rid, &clear)?;
                self.unindex(rtype, cur.shard, cur.rid, &entries)?;
                self.insert_index(rtype, cur.shard, cur.rid, &entries)?;
                self.conn.exec(
                    "UPDATE res SET body = ? WHERE shard = ? AND rid = ?",
                    &[Val::Blob(sealed), key[0].clone(), key[1].clone()],
                )?;
            } else {
                self.conn.exec(
                    "UPDATE res_hist SET body = ? WHERE shard = ? AND rid = ? AND version = ?",
                    &[
                        Val::Blob(sealed),
                        key[0].clone(),
                        key[1].clone(),
                        Val::Int(r[1].int()),
                    ],
                )?;
            }
            changed = true;
        }
        Ok(changed)
    }

    /// Who submitted the current version of `rtype/id` (deleted or not), if it exists.
    pub fn source_of(&mut self, rtype: &str, id: &str) -> Result<Option<String>, StoreError> {
        let Some(c) = self.current(rtype, id)? else {
            return Ok(None);
        };
        Ok(Some(
            self.cat
                .system_name(c.src)
                .or_else(|| {
                    self.added
                        .iter()
                        .find(|(_, v)| **v == c.src)
                        .map(|(k, _)| k.as_str())
                })
                .unwrap_or("")
                .to_string(),
        ))
    }

    /// What this transaction has written so far.
    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    fn type_id(&self, rtype: &str) -> Result<i64, StoreError> {
        self.cat
            .type_id(rtype)
            .ok_or_else(|| StoreError::Invalid(format!("unknown resource type {rtype}")))
    }

    fn current(&mut self, rtype: &str, id: &str) -> Result<Option<Current>, StoreError> {
        let t = self.type_id(rtype)?;
        let rows = self.conn.query(
            "SELECT r.shard, r.rid, s.version, s.deleted, s.src, s.sens FROM res_route r \
             JOIN res s ON s.shard = r.shard AND s.rid = r.rid WHERE r.rtype = ? AND r.id = ?",
            &[Val::Int(t), Val::Text(id.to_string())],
        )?;
        Ok(rows.first().map(|r| Current {
            shard: r[0].int(),
            rid: r[1].int(),
            version: r[2].int(),
            deleted: r[3].int() != 0,
            src: r[4].int(),
            sens: r[5].int() as u32,
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
        let mut found = read_current(self.conn, self.cat, rtype, id)?;
        // A source first seen in this transaction is not in the shared catalog yet: its
        // name is among the transaction's own additions (else a version it just wrote would
        // read as submitted by nobody, and fail the writer's own-source check).
        if let Some(s) = found
            .as_mut()
            .filter(|s| s.source.is_empty() && !self.added.is_empty())
        {
            let rows = self.conn.query(
                "SELECT src FROM res WHERE shard = ? AND rid = ?",
                &[Val::Int(s.shard), Val::Int(s.rid)],
            )?;
            if let Some(src) = rows.first().map(|r| r[0].int()) {
                if let Some((name, _)) = self.added.iter().find(|(_, v)| **v == src) {
                    s.source = name.clone();
                }
            }
        }
        Ok(found)
    }

    /// Searches inside the transaction (sees its own writes), within `scope`.
    pub fn search(&mut self, q: &Query, scope: &Scope) -> Result<Page, StoreError> {
        self.flush()?;
        if self.added.is_empty() {
            return search::run(self.conn, self.cat, q, scope);
        }
        // Code systems first seen in this transaction are not in the shared catalog yet.
        let mut cat = self.cat.clone();
        cat.publish(self.added.clone());
        search::run(self.conn, &cat, q, scope)
    }

    /// Marks a resource restricted by its resident (`on`), or lifts that mark. The mark is
    /// kept with the resource, not in a new version: the content is the source's, and later
    /// versions from the source stay restricted until the resident lifts it.
    pub fn set_resident_restricted(
        &mut self,
        rtype: &str,
        id: &str,
        on: bool,
    ) -> Result<Option<Stored>, StoreError> {
        let Some(cur) = self.current(rtype, id)?.filter(|c| !c.deleted) else {
            return Ok(None);
        };
        let bit = hutong_fhir::security::RESIDENT_RESTRICTED;
        let sens = if on { cur.sens | bit } else { cur.sens & !bit };
        self.flush()?;
        self.conn.exec(
            "UPDATE res SET sens = ? WHERE shard = ? AND rid = ?",
            &[
                Val::Int(sens as i64),
                Val::Int(cur.shard),
                Val::Int(cur.rid),
            ],
        )?;
        self.conn.exec(
            "DELETE FROM ix_sens WHERE shard = ? AND rid = ?",
            &[Val::Int(cur.shard), Val::Int(cur.rid)],
        )?;
        if sens != 0 {
            self.conn.exec(
                "INSERT INTO ix_sens (shard, rid, sens) VALUES (?, ?, ?)",
                &[
                    Val::Int(cur.shard),
                    Val::Int(cur.rid),
                    Val::Int(sens as i64),
                ],
            )?;
        }
        self.read(rtype, id)
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
    /// ids the caller has just generated. It is borrowed: a transaction retried after a
    /// conflict writes it again.
    pub fn write_prepared(&mut self, p: &Prepared, fresh: bool) -> Result<Stored, StoreError> {
        if !fresh {
            // Claim the id; only when it is taken do we pay for reading the current version.
            let t = self.type_id(&p.rtype)?;
            let shard = p.owner.as_deref().map_or(0, shard_of);
            let src = self.cat.intern_system(self.conn, &p.source, self.added)?;
            let sql = match self.conn.dialect() {
                crate::sql::Dialect::Sqlite => {
                    "INSERT OR IGNORE INTO res_route (rtype, id, shard, src) VALUES (?, ?, ?, ?) RETURNING rid"
                }
                crate::sql::Dialect::Postgres => {
                    "INSERT INTO res_route (rtype, id, shard, src) VALUES (?, ?, ?, ?) \
                     ON CONFLICT DO NOTHING RETURNING rid"
                }
            };
            let claimed = self.conn.insert_rid(
                sql,
                &[
                    Val::Int(t),
                    Val::Text(p.id.clone()),
                    Val::Int(shard),
                    Val::Int(src),
                ],
            )?;
            if let Some(rid) = claimed {
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
            return self.put(&p.rtype, &p.id, cur, Some(v));
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
        let mut res = res;
        let p = Prepared::build(&self.cat.codec, rtype, id, version, self.now, res.as_mut())?;
        self.written += 1;
        self.put_prepared(cur, &p, None)
    }

    fn put_prepared(
        &mut self,
        cur: Option<Current>,
        p: &Prepared,
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
            source,
            sens,
        } = p;
        let (rtype, id, version, now, sens) = (rtype.as_str(), id.as_str(), *version, *now, *sens);
        let t = self.type_id(rtype)?;
        let deleted = body.is_empty();
        // A deletion keeps the submitter of the version it ends; a resident's restriction
        // outlives new versions from the source.
        let (src, sens) = match &cur {
            Some(c) if deleted => (c.src, 0),
            Some(c) => (
                self.cat.intern_system(self.conn, source, self.added)?,
                sens | (c.sens & hutong_fhir::security::RESIDENT_RESTRICTED),
            ),
            None => (self.cat.intern_system(self.conn, source, self.added)?, sens),
        };
        // A deleted version stays in the shard it was in.
        let shard = match (&owner, &cur) {
            (Some(p), _) => shard_of(p),
            (None, Some(c)) if deleted => c.shard,
            (None, _) => 0,
        };
        if let Some(p) = &owner {
            self.claim_shard(shard, p)?;
        }
        let rid = match &cur {
            Some(c) => {
                let key = [Val::Int(c.shard), Val::Int(c.rid)];
                let old = if c.deleted {
                    // A deleted version has no index rows.
                    Vec::new()
                } else {
                    let rows = self
                        .conn
                        .query("SELECT body FROM res WHERE shard = ? AND rid = ?", &key)?;
                    match rows.into_iter().next() {
                        Some(mut r) => {
                            let blob = std::mem::replace(&mut r[0], Val::Null).into_blob();
                            self.stored_entries(rtype, &blob)?
                        }
                        None => Vec::new(),
                    }
                };
                self.conn.exec(
                    "INSERT INTO res_hist (shard, rid, version, rtype, lastmod, deleted, body, \
                     src, sens) SELECT shard, rid, version, rtype, lastmod, deleted, body, src, \
                     sens FROM res WHERE shard = ? AND rid = ?",
                    &key,
                )?;
                self.unindex(rtype, c.shard, c.rid, &old)?;
                self.conn
                    .exec("DELETE FROM ix_sens WHERE shard = ? AND rid = ?", &key)?;
                if c.src != src {
                    // The route carries the current submitter, for the access decision.
                    self.conn.exec(
                        "UPDATE res_route SET src = ? WHERE rid = ?",
                        &[Val::Int(src), Val::Int(c.rid)],
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
            None => self
                .conn
                .insert_rid(
                    "INSERT INTO res_route (rtype, id, shard, src) VALUES (?, ?, ?, ?) RETURNING rid",
                    &[Val::Int(t), Val::Text(id.to_string()), Val::Int(shard), Val::Int(src)],
                )?
                .ok_or_else(|| {
                    StoreError::Corrupt("insert into res_route returned no id".into())
                })?,
        };
        self.conn.exec(
            "INSERT INTO res (shard, rid, rtype, version, lastmod, deleted, body, src, sens) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (shard, rid) DO UPDATE SET \
             version = excluded.version, lastmod = excluded.lastmod, \
             deleted = excluded.deleted, body = excluded.body, src = excluded.src, \
             sens = excluded.sens",
            &[
                Val::Int(shard),
                Val::Int(rid),
                Val::Int(t),
                Val::Int(version),
                Val::Int(now),
                Val::Int(deleted as i64),
                Val::Blob(compressed.clone()),
                Val::Int(src),
                Val::Int(sens as i64),
            ],
        )?;
        self.insert_index(rtype, shard, rid, entries)?;
        if sens != 0 && !deleted {
            self.pending[6].push(vec![Val::Int(shard), Val::Int(rid), Val::Int(sens as i64)]);
        }
        // The change log carries the version's tokens, so that a subscription on a code is
        // decided without reading the body back (not for values kept as keyed hashes).
        let blinded = self.cat.codec.protector().is_some_and(|p| p.seals(rtype));
        self.changes.push(Change {
            rtype: rtype.to_string(),
            id: id.to_string(),
            version,
            shard,
            deleted,
            tokens: (!deleted && !blinded).then(|| crate::changelog::tokens_of(entries)),
        });
        Ok(Stored {
            rtype: rtype.to_string(),
            id: id.to_string(),
            version,
            last_updated: now,
            deleted,
            body: body.clone(),
            shard,
            rid,
            source: if deleted {
                self.cat.system_name(src).unwrap_or("").to_string()
            } else {
                source.clone()
            },
            sens,
        })
    }

    fn insert_index(
        &mut self,
        rtype: &str,
        shard: i64,
        rid: i64,
        entries: &[hutong_fhir::index::Entry],
    ) -> Result<(), StoreError> {
        let rows = self.index_rows(rtype, shard, rid, entries, true)?;
        for (pending, new) in self.pending.iter_mut().zip(rows) {
            pending.extend(new);
        }
        if self.pending.iter().map(Vec::len).sum::<usize>() >= FLUSH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    /// Deletes the index rows `entries` gave a resource (other than its sensitivity row).
    /// The value-first tables have no `(shard, rid)` key to find them by: each row is
    /// computed again, exactly as [`Tx::insert_index`] wrote it, and deleted by its key.
    fn unindex(
        &mut self,
        rtype: &str,
        shard: i64,
        rid: i64,
        entries: &[hutong_fhir::index::Entry],
    ) -> Result<(), StoreError> {
        // The rows may still be buffered in this transaction.
        self.flush()?;
        let key = [Val::Int(shard), Val::Int(rid)];
        for (i, table) in INDEX_TABLES.iter().enumerate() {
            if BY_RESOURCE[i] && *table != "ix_sens" {
                self.conn.exec(
                    &format!("DELETE FROM {table} WHERE shard = ? AND rid = ?"),
                    &key,
                )?;
            }
        }
        let rows = self.index_rows(rtype, shard, rid, entries, false)?;
        for (i, rows) in rows.iter().enumerate() {
            if BY_RESOURCE[i] || rows.is_empty() {
                continue;
            }
            if let Some(g) = self.grouped(INDEX_TABLES[i]) {
                crate::postings::apply(self.conn, g, INDEX_COLUMNS[i], rows, false)?;
                continue;
            }
            let sql = format!(
                "DELETE FROM {} WHERE {}",
                INDEX_TABLES[i],
                INDEX_COLUMNS[i]
                    .iter()
                    .map(|c| format!("{c} = ?"))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            );
            for r in rows {
                self.conn.exec(&sql, r)?;
            }
        }
        Ok(())
    }

    /// The index entries of a stored body, as they were computed when it was written.
    fn stored_entries(
        &self,
        rtype: &str,
        blob: &[u8],
    ) -> Result<Vec<hutong_fhir::index::Entry>, StoreError> {
        let plain = self.cat.codec.decompress(blob)?;
        let v: Value =
            serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut entries = extract(rtype, &v);
        if let Some(prot) = self.cat.codec.protector() {
            blind_entries(prot.as_ref(), rtype, &mut entries);
        }
        Ok(entries)
    }

    /// The index rows of `entries`, per table of [`INDEX_TABLES`]. With `intern` false (rows
    /// to delete) a code system the catalog does not know yields no row: none can exist.
    fn index_rows(
        &mut self,
        rtype: &str,
        shard: i64,
        rid: i64,
        entries: &[hutong_fhir::index::Entry],
        intern: bool,
    ) -> Result<[Vec<Row>; 8], StoreError> {
        let mut rows: [Vec<Row>; 8] = Default::default();
        let (s, r) = (Val::Int(shard), Val::Int(rid));
        for e in entries {
            let Some(pid) = self.cat.param_id(rtype, e.param) else {
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
                        let Some(sid) = self.system(system, intern)? else {
                            continue;
                        };
                        rows[1].push(vec![
                            s.clone(),
                            r.clone(),
                            p,
                            Val::Int(sid),
                            Val::Text(code.clone()),
                        ]);
                    }
                    if !text.is_empty() {
                        if let Some(tp) = self.cat.text_param_id(rtype, e.param) {
                            rows[7].push(vec![
                                s.clone(),
                                r.clone(),
                                Val::Int(tp),
                                Val::Text(text.clone()),
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
                    let Some(sid) = self.system(system, intern)? else {
                        continue;
                    };
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
        Ok(rows)
    }

    /// The posting-list table behind `table` on the embedded store (see `postings`).
    fn grouped(&self, table: &str) -> Option<&'static crate::postings::Grouped> {
        match self.conn.dialect() {
            crate::sql::Dialect::Sqlite => crate::postings::grouped(table),
            crate::sql::Dialect::Postgres => None,
        }
    }

    fn system(&mut self, system: &str, intern: bool) -> Result<Option<i64>, StoreError> {
        if intern {
            self.cat
                .intern_system(self.conn, system, self.added)
                .map(Some)
        } else {
            Ok(self.cat.system_id(system))
        }
    }

    /// Writes the buffered index rows. Buffering turns a bundle's thousands of row inserts
    /// into a few statements (one round trip per table on PostgreSQL); anything that reads
    /// the index inside the transaction flushes first.
    pub(crate) fn flush(&mut self) -> Result<(), StoreError> {
        for (i, table) in INDEX_TABLES.iter().enumerate() {
            if !self.pending[i].is_empty() {
                let rows = std::mem::take(&mut self.pending[i]);
                match self.grouped(table) {
                    Some(g) => crate::postings::apply(self.conn, g, INDEX_COLUMNS[i], &rows, true)?,
                    None => self.conn.insert_rows(table, INDEX_COLUMNS[i], &rows)?,
                }
            }
        }
        Ok(())
    }
}

const INDEX_TABLES: [&str; 8] = [
    "ix_str", "ix_tok", "ix_date", "ix_ref", "ix_num", "ix_comp", "ix_sens", "ix_txt",
];
const INDEX_COLUMNS: [&[&str]; 8] = [
    &["shard", "rid", "pid", "norm", "raw"],
    &["shard", "rid", "pid", "sid", "code"],
    &["shard", "rid", "pid", "lo", "hi"],
    &["shard", "rid", "pid", "ttype", "tid"],
    &["shard", "rid", "pid", "lo", "hi", "sid", "code"],
    &["shard", "rid", "pid", "k", "lo", "hi", "v"],
    &["shard", "rid", "sens"],
    &["shard", "rid", "pid", "norm"],
];
/// Whether a table's key leads with `(shard, rid)`, so that a resource's rows are deleted by
/// that prefix; the others lead with the value (see `schema`).
const BY_RESOURCE: [bool; 8] = [true, false, true, false, false, false, true, false];

fn check_owner(owner: &str, patient: &str) -> Result<(), StoreError> {
    if owner == patient {
        return Ok(());
    }
    // The other patient's id is not named: it is not the submitter's to learn.
    Err(StoreError::Conflict(format!(
        "Patient/{patient} cannot be filed: its id hashes to the storage key of another \
         patient already on the platform, and records of two patients must never share one; \
         submit it under another Patient id"
    )))
}

fn check_match(cur: &Option<Current>, if_match: Option<i64>) -> Result<(), StoreError> {
    if let Some(expected) = if_match {
        let current = cur.as_ref().map_or(0, |c| c.version);
        if current != expected {
            return Err(StoreError::VersionMismatch { expected, current });
        }
    }
    Ok(())
}

/// A row of [`VERSION_COLS`] then `s.rid` as a stored version of `id`.
fn version_row(cat: &Catalog, id: &str, r: Vec<Val>) -> Result<Stored, StoreError> {
    let m = RowMeta::at(&r, 0);
    stored_from(cat, m, r[8].int(), id.to_string(), r[7].blob())
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
        &format!(
            "SELECT {VERSION_COLS}, s.rid FROM res_route r \
             JOIN res s ON s.shard = r.shard AND s.rid = r.rid WHERE r.rtype = ? AND r.id = ?"
        ),
        &[Val::Int(t), Val::Text(id.to_string())],
    )?;
    rows.into_iter()
        .next()
        .map(|r| version_row(cat, id, r))
        .transpose()
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
        &format!(
            "SELECT {VERSION_COLS}, s.rid FROM res_route r \
             JOIN res s ON s.shard = r.shard AND s.rid = r.rid \
             WHERE r.rtype = ? AND r.id = ? AND s.version = ? \
             UNION ALL SELECT {VERSION_COLS}, s.rid FROM res_route r \
             JOIN res_hist s ON s.shard = r.shard AND s.rid = r.rid \
             WHERE r.rtype = ? AND r.id = ? AND s.version = ?"
        ),
        &[
            Val::Int(t),
            Val::Text(id.to_string()),
            Val::Int(version),
            Val::Int(t),
            Val::Text(id.to_string()),
            Val::Int(version),
        ],
    )?;
    rows.into_iter()
        .next()
        .map(|r| version_row(cat, id, r))
        .transpose()
}

pub(crate) fn history(
    conn: &mut dyn Conn,
    cat: &Catalog,
    which: &HistoryScope,
    since: Option<i64>,
    count: usize,
    offset: usize,
    scope: &Scope,
) -> Result<(Vec<Stored>, Option<u64>), StoreError> {
    let since = since.unwrap_or(i64::MIN);
    let (filter, mut params): (String, Vec<Val>) = match which {
        HistoryScope::Instance { rtype, id } => {
            let Some(t) = cat.type_id(rtype) else {
                return Ok((Vec::new(), Some(0)));
            };
            (
                "r.rtype = ? AND r.id = ?".into(),
                vec![Val::Int(t), Val::Text(id.clone())],
            )
        }
        HistoryScope::Type(rtype) => {
            let Some(t) = cat.type_id(rtype) else {
                return Ok((Vec::new(), Some(0)));
            };
            ("r.rtype = ?".into(), vec![Val::Int(t)])
        }
        HistoryScope::System => ("1 = 1".into(), vec![]),
    };
    let filter = match scope {
        Scope::All => filter,
        Scope::Rows(r) => format!("{filter} AND {}", r.sql_row(cat, "s")),
    };
    let sub = |table: &str| {
        format!(
            "SELECT r.id, {VERSION_COLS}, s.rid FROM res_route r \
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
    for r in rows {
        let id = r[0].text().to_string();
        let m = RowMeta::at(&r, 1);
        out.push(stored_from(cat, m, r[9].int(), id, r[8].blob())?);
    }
    Ok((out, Some(total[0][0].int() as u64)))
}
