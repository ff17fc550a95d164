//! The identity index kept in the database, for a province: no API node holds the persons'
//! records. Each indexed Patient is one `mpi_entry` row (its normalised record and blocking
//! keys) keyed by its shard — the source patient's compartment key, so the row sits beside
//! the Patient's resources — and one `mpi_block` row per blocking key, keyed by the key, as
//! the province-scale schema's rule 3 asks (distributed by blocking key for candidate search). Matching one
//! record reads its blocks (each capped at the size past which a block says nothing) and
//! the entries they name in one statement: a few dozen index seeks whatever the number of
//! persons. Name frequencies for the term-frequency weight are counted live in `mpi_name`;
//! the model, the person count and the sync marks live in `mpi_state`, so every node (and
//! a restarted one) shares them instead of rebuilding from the Patients.
//!
//! On distributed PostgreSQL (Citus): `mpi_block` by `k`, `mpi_entry` by `shard`,
//! `mpi_name` by `h`; `mpi_state` is a reference table.

use std::cell::RefCell;
use std::collections::HashMap;

use hutong_mpi::block::{hashed_keys, key_hash, MAX_BLOCK};
use hutong_mpi::index::{rank, Match};
use hutong_mpi::{Model, Record};
use hutong_store::sql::{Conn, Dialect, Row, Val};
use hutong_store::{shard_of, Store, StoreError};

use crate::candidates::Candidates;

/// The tables, written once for both dialects ([`hutong_store::sql::Dialect::ddl`]).
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS mpi_block (k BIGINT NOT NULL, shard BIGINT NOT NULL,
    idh BIGINT NOT NULL, PRIMARY KEY (k, shard) INCLUDE (idh)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mpi_entry (shard BIGINT NOT NULL, patient TEXT NOT NULL,
    version BIGINT NOT NULL, nh BIGINT NOT NULL, keys BYTEA NOT NULL, rec BYTEA NOT NULL,
    PRIMARY KEY (shard, patient)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mpi_name (h BIGINT PRIMARY KEY, n BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS mpi_state (name TEXT PRIMARY KEY, n BIGINT NOT NULL,
    doc TEXT NOT NULL DEFAULT '');
";

/// Records sampled (with their candidates) to re-estimate the model.
const TRAIN_SAMPLE: usize = 20_000;
/// Rows per multi-row statement.
const CHUNK: usize = 256;

/// The shard of `Patient/{id}`.
fn shard(patient: &str) -> i64 {
    shard_of(patient.strip_prefix("Patient/").unwrap_or(patient))
}

fn name_hash(r: &Record) -> i64 {
    r.name.as_ref().map_or(0, |n| key_hash(&n.text))
}

/// The hash of a record's valid ID number, 0 without one: kept in each block row so that
/// candidates whose valid ID differs from the incoming one's — different people, whatever
/// else agrees (`compare::ids_conflict`) — are dropped before their entries are read. At
/// scale they are most of a name's block: namesakes.
fn id_hash(r: &Record) -> i64 {
    r.id_number
        .as_ref()
        .filter(|i| i.valid)
        .map_or(0, |i| key_hash(&i.text))
}

fn keys_blob(keys: &[i64]) -> Vec<u8> {
    keys.iter().flat_map(|k| k.to_le_bytes()).collect()
}

fn blob_keys(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// Records are kept in postcard (compact, positional): a third the size of JSON and read
/// without parsing field names — every candidate of every match decodes one.
fn encode(r: &Record) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(r).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn decode(rec: &[u8]) -> Option<Record> {
    postcard::from_bytes(rec).ok()
}

/// `n` rounded up to a power of two (at least 8): lists are padded to it so that a few
/// statement shapes serve every length (each shape is prepared once per connection).
fn bucket(n: usize) -> usize {
    n.max(8).next_power_of_two()
}

fn marks(n: usize) -> String {
    vec!["?"; n].join(",")
}

/// `vals` padded with 0 (no key or shard is 0) to its bucket.
fn padded(vals: &[i64]) -> Vec<Val> {
    let mut v: Vec<Val> = vals.iter().map(|&x| Val::Int(x)).collect();
    v.resize(bucket(vals.len()), Val::Int(0));
    v
}

/// The candidates statement for `n` keys: each block read up to one row past the cap, the
/// blocks past it dropped (as the memory index drops them), the rows of the rest whose valid
/// ID number conflicts with the record's (the last two parameters) dropped, and the entries
/// of what is left, each with the count of the record's name (the parameter before them).
fn candidates_sql(d: Dialect, n: usize) -> String {
    let blocks = d.rows_per_key("mpi_block", "k", "shard, idh", MAX_BLOCK + 1, n);
    format!(
        "WITH b AS ({blocks}), ok AS (SELECT k FROM b GROUP BY k HAVING COUNT(*) <= {MAX_BLOCK}) \
         SELECT e.patient, e.rec, (SELECT n FROM mpi_name WHERE h = ?) FROM mpi_entry e \
         WHERE e.shard IN \
         (SELECT b.shard FROM b JOIN ok ON ok.k = b.k \
         WHERE b.idh = 0 OR CAST(? AS BIGINT) = 0 OR b.idh = ?)"
    )
}

/// Candidates of a match (`Patient/{id}` and record), and the count of the incoming name.
type Found = (Vec<(String, Record)>, Option<i64>);

/// Records, and candidate pairs among them (indexes into the records).
pub type TrainingSet = (Vec<Record>, Vec<(u32, u32)>);

/// One Patient version to index.
pub struct Put {
    /// `Patient/{id}`.
    pub id: String,
    pub version: i64,
    pub record: Record,
}

pub struct StoredIndex {
    store: Store,
    model: Model,
    /// log2 posterior odds for `certain` and `probable`.
    pub certain: f64,
    pub probable: f64,
    /// People in the region ([`hutong_mpi::Thresholds::population`]).
    pub population: f64,
    count: i64,
    trained_at: i64,
    /// The first error a lookup met since the last [`StoredIndex::take_error`]: lookups
    /// answer as if nothing was found, and whoever decided on them must throw the decision
    /// away.
    failed: RefCell<Option<StoreError>>,
}

impl StoredIndex {
    /// Opens the index in `store` (creating its tables), with the model it was left with.
    pub fn open(
        store: &Store,
        thresholds: hutong_mpi::Thresholds,
    ) -> Result<StoredIndex, StoreError> {
        store.create_tables(TABLES)?;
        let mut ix = StoredIndex {
            store: store.clone(),
            model: Model::starting(),
            certain: thresholds.link,
            probable: thresholds.review,
            population: thresholds.population,
            count: 0,
            trained_at: 0,
            failed: RefCell::new(None),
        };
        ix.refresh()?;
        Ok(ix)
    }

    /// Re-reads what other nodes may have changed: the person count and the model.
    pub fn refresh(&mut self) -> Result<(), StoreError> {
        for r in self
            .store
            .query_admin("SELECT name, n, doc FROM mpi_state", &[])?
        {
            match r[0].text() {
                "count" => self.count = r[1].int(),
                "model" if r[1].int() != self.trained_at => {
                    if let Ok(m) = serde_json::from_str::<Model>(r[2].text()) {
                        self.model = m;
                        self.trained_at = r[1].int();
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.count.max(0) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count <= 0
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Persons indexed when the model was last estimated.
    pub fn trained_at(&self) -> usize {
        self.trained_at.max(0) as usize
    }

    /// A mark kept with the index (`synced`: the Patient history is indexed up to it;
    /// `linked`: every Patient indexed before it has its person).
    pub fn mark(&self, name: &str) -> Result<Option<i64>, StoreError> {
        let r = self.store.query_admin(
            "SELECT n FROM mpi_state WHERE name = ?",
            &[Val::Text(name.into())],
        )?;
        Ok(r.first().map(|r| r[0].int()))
    }

    pub fn set_mark(&self, name: &str, value: i64) -> Result<(), StoreError> {
        self.store.with_admin_tx(|c| set_state(c, name, value, ""))
    }

    /// The versions indexed for these Patients.
    pub fn versions(&self, ids: &[&str]) -> Result<HashMap<String, i64>, StoreError> {
        let mut out = HashMap::new();
        let mut shards: Vec<i64> = ids.iter().map(|id| shard(id)).collect();
        shards.sort_unstable();
        shards.dedup();
        for chunk in shards.chunks(CHUNK) {
            let params = padded(chunk);
            let sql = format!(
                "SELECT patient, version FROM mpi_entry WHERE shard IN ({})",
                marks(params.len())
            );
            for r in self.store.query_admin(&sql, &params)? {
                out.insert(r[0].text().to_string(), r[1].int());
            }
        }
        Ok(out)
    }

    /// Indexes new Patient versions and drops deleted Patients, in one transaction; older
    /// versions than the indexed ones are ignored, and a Patient both put and removed is
    /// removed. `synced` moves the sync mark with them.
    pub fn apply(
        &mut self,
        puts: Vec<Put>,
        removes: &[String],
        synced: Option<i64>,
    ) -> Result<(), StoreError> {
        let profile = self.model.profile;
        let mut delta = 0;
        self.store.with_admin_tx(|c| {
            // What is indexed now for every Patient touched.
            let mut shards: Vec<i64> = puts
                .iter()
                .map(|p| shard(&p.id))
                .chain(removes.iter().map(|id| shard(id)))
                .collect();
            shards.sort_unstable();
            shards.dedup();
            let mut old: HashMap<(i64, String), (i64, i64, Vec<i64>)> = HashMap::new();
            for chunk in shards.chunks(CHUNK) {
                let params = padded(chunk);
                let sql = format!(
                    "SELECT shard, patient, version, nh, keys FROM mpi_entry WHERE shard IN ({})",
                    marks(params.len())
                );
                for r in c.query(&sql, &params)? {
                    let keys = blob_keys(r[4].blob());
                    old.insert(
                        (r[0].int(), r[1].text().to_string()),
                        (r[2].int(), r[3].int(), keys),
                    );
                }
            }
            let mut names: HashMap<i64, i64> = HashMap::new();
            let mut gone: Vec<(i64, String, Vec<i64>)> = Vec::new();
            let mut entries: Vec<Row> = Vec::new();
            let mut blocks: Vec<Row> = Vec::new();
            // A batch may carry several versions of one Patient: the newest is indexed.
            let mut newest: HashMap<String, i64> = HashMap::new();
            for p in &puts {
                let e = newest.entry(p.id.clone()).or_insert(i64::MIN);
                *e = (*e).max(p.version);
            }
            for id in removes {
                let s = shard(id);
                if let Some((_, nh, keys)) = old.remove(&(s, id.clone())) {
                    *names.entry(nh).or_default() -= 1;
                    delta -= 1;
                    gone.push((s, id.clone(), keys));
                }
            }
            let removed: std::collections::HashSet<&String> = removes.iter().collect();
            for p in puts {
                let s = shard(&p.id);
                if newest.get(&p.id) != Some(&p.version) || removed.contains(&p.id) {
                    continue;
                }
                match old.remove(&(s, p.id.clone())) {
                    Some((v, _, _)) if v >= p.version => continue,
                    Some((_, nh, keys)) => {
                        *names.entry(nh).or_default() -= 1;
                        gone.push((s, p.id.clone(), keys));
                    }
                    None => delta += 1,
                }
                let keys = hashed_keys(&p.record, profile);
                let (nh, idh) = (name_hash(&p.record), id_hash(&p.record));
                *names.entry(nh).or_default() += 1;
                for &k in &keys {
                    blocks.push(vec![Val::Int(k), Val::Int(s), Val::Int(idh)]);
                }
                let rec = encode(&p.record)?;
                entries.push(vec![
                    Val::Int(s),
                    Val::Text(p.id),
                    Val::Int(p.version),
                    Val::Int(nh),
                    Val::Blob(keys_blob(&keys)),
                    Val::Blob(rec),
                ]);
            }
            for (s, id, keys) in &gone {
                unblock(c, *s, keys)?;
                c.exec(
                    "DELETE FROM mpi_entry WHERE shard = ? AND patient = ?",
                    &[Val::Int(*s), Val::Text(id.clone())],
                )?;
            }
            c.insert_rows(
                "mpi_entry",
                &["shard", "patient", "version", "nh", "keys", "rec"],
                &entries,
            )?;
            c.insert_rows("mpi_block", &["k", "shard", "idh"], &blocks)?;
            names.remove(&0);
            names.retain(|_, d| *d != 0);
            let names: Vec<(i64, i64)> = names.into_iter().collect();
            for chunk in names.chunks(CHUNK) {
                let sql = format!(
                    "INSERT INTO mpi_name (h, n) VALUES {} ON CONFLICT (h) DO UPDATE \
                     SET n = mpi_name.n + excluded.n",
                    vec!["(?, ?)"; chunk.len()].join(",")
                );
                let params: Vec<Val> = chunk
                    .iter()
                    .flat_map(|&(h, d)| [Val::Int(h), Val::Int(d)])
                    .collect();
                c.exec(&sql, &params)?;
            }
            if delta != 0 {
                c.exec(
                    "INSERT INTO mpi_state (name, n) VALUES ('count', ?) ON CONFLICT (name) \
                     DO UPDATE SET n = mpi_state.n + excluded.n",
                    &[Val::Int(delta)],
                )?;
            }
            if let Some(t) = synced {
                set_state(c, "synced", t, "")?;
            }
            Ok(())
        })?;
        self.count += delta;
        Ok(())
    }

    /// Replaces the model (after re-estimating it) for every node; re-keys the index when
    /// the new model blocks on other fields.
    pub fn set_model(&mut self, model: Model, trained_at: usize) -> Result<(), StoreError> {
        let rekey = model.profile != self.model.profile;
        let doc = serde_json::to_string(&model).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.store
            .with_admin_tx(|c| set_state(c, "model", trained_at as i64, &doc))?;
        self.model = model;
        self.trained_at = trained_at as i64;
        if rekey {
            self.rekey()?;
        }
        Ok(())
    }

    /// Recomputes every entry's blocking keys, a page of entries per transaction.
    fn rekey(&mut self) -> Result<(), StoreError> {
        let profile = self.model.profile;
        let mut after = (i64::MIN, String::new());
        loop {
            let page = self.store.query_admin(
                "SELECT shard, patient, keys, rec FROM mpi_entry WHERE shard > ? \
                 OR (shard = ? AND patient > ?) ORDER BY shard, patient LIMIT 1000",
                &[
                    Val::Int(after.0),
                    Val::Int(after.0),
                    Val::Text(after.1.clone()),
                ],
            )?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = (last[0].int(), last[1].text().to_string());
            self.store.with_admin_tx(|c| {
                for r in &page {
                    let (s, id) = (r[0].int(), r[1].text().to_string());
                    let Some(rec) = decode(r[3].blob()) else {
                        continue;
                    };
                    unblock(c, s, &blob_keys(r[2].blob()))?;
                    let keys = hashed_keys(&rec, profile);
                    let idh = id_hash(&rec);
                    let rows: Vec<Row> = keys
                        .iter()
                        .map(|&k| vec![Val::Int(k), Val::Int(s), Val::Int(idh)])
                        .collect();
                    c.insert_rows("mpi_block", &["k", "shard", "idh"], &rows)?;
                    c.exec(
                        "UPDATE mpi_entry SET keys = ? WHERE shard = ? AND patient = ?",
                        &[Val::Blob(keys_blob(&keys)), Val::Int(s), Val::Text(id)],
                    )?;
                }
                Ok(())
            })?;
        }
    }

    /// Records to re-estimate the model from, and the candidate pairs among them: a sample of
    /// the indexed records (all of them while there are few) with each one's candidates, as
    /// blocking finds them — the pairs EM must learn to tell apart.
    pub fn training_set(&self) -> Result<TrainingSet, StoreError> {
        let want = TRAIN_SAMPLE.min(self.len().max(1));
        // Shards are hashes: a run of them from a random point is a random sample.
        let start = key_hash(&hutong_fhir::date::now_ms().to_string());
        let mut rows = self.store.query_admin(
            "SELECT patient, rec FROM mpi_entry WHERE shard >= ? ORDER BY shard LIMIT ?",
            &[Val::Int(start), Val::Int(want as i64)],
        )?;
        if rows.len() < want {
            rows.extend(self.store.query_admin(
                "SELECT patient, rec FROM mpi_entry WHERE shard < ? ORDER BY shard LIMIT ?",
                &[Val::Int(start), Val::Int((want - rows.len()) as i64)],
            )?);
        }
        let mut slot: HashMap<String, u32> = HashMap::new();
        let mut records: Vec<Record> = Vec::new();
        for r in rows {
            if let Some(rec) = decode(r[1].blob()) {
                slot.insert(r[0].text().to_string(), records.len() as u32);
                records.push(rec);
            }
        }
        let mut pairs = Vec::new();
        for a in 0..records.len() {
            let (found, _) = self.candidates(&records[a])?;
            for (id, rec) in found {
                let b = *slot.entry(id).or_insert_with(|| {
                    records.push(rec);
                    (records.len() - 1) as u32
                });
                if b != a as u32 {
                    pairs.push((b.min(a as u32), b.max(a as u32)));
                }
            }
        }
        pairs.sort_unstable();
        pairs.dedup();
        Ok((records, pairs))
    }

    /// The entries sharing a usable block with `record`, and how many records carry its
    /// name (when any entry does), in one round trip.
    fn candidates(&self, record: &Record) -> Result<Found, StoreError> {
        let keys = hashed_keys(record, self.model.profile);
        let d = self.store.dialect();
        let tail = [
            Val::Int(name_hash(record)),
            Val::Int(id_hash(record)),
            Val::Int(id_hash(record)),
        ];
        // No key is 0: the padding matches nothing.
        let chunks = d.key_set(&keys, 64, 0);
        let mut out = Vec::new();
        let mut name_count = None;
        for mut params in chunks.iter().cloned() {
            let sql = candidates_sql(d, params.len());
            params.extend(tail.iter().cloned());
            for r in self.store.query_admin(&sql, &params)? {
                let mut r = r.into_iter();
                let (Some(id), Some(rec), Some(n)) = (r.next(), r.next(), r.next()) else {
                    continue;
                };
                if let Val::Int(n) = n {
                    name_count = Some(n);
                }
                if let Some(rec) = decode(&rec.into_blob()) {
                    out.push((id.text().to_string(), rec));
                }
            }
        }
        if chunks.len() > 1 {
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out.dedup_by(|a, b| a.0 == b.0);
        }
        Ok((out, name_count))
    }

    fn try_matches(&self, record: &Record, limit: usize) -> Result<Vec<Match>, StoreError> {
        let (found, name_count) = self.candidates(record)?;
        let name_count = name_count.map(|c| (c as f64, self.count.max(1) as f64));
        Ok(rank(
            &self.model,
            (self.certain, self.probable, self.population),
            record,
            found.iter().map(|(id, r)| (id.as_str(), r)),
            name_count,
            limit,
        ))
    }

    fn try_record(&self, patient: &str) -> Result<Option<Record>, StoreError> {
        let r = self.store.query_admin(
            "SELECT rec FROM mpi_entry WHERE shard = ? AND patient = ?",
            &[Val::Int(shard(patient)), Val::Text(patient.into())],
        )?;
        Ok(r.into_iter().next().and_then(|r| decode(r[0].blob())))
    }

    /// The error a lookup met since the last call, if any.
    pub fn take_error(&self) -> Option<StoreError> {
        self.failed.borrow_mut().take()
    }

    fn note<T: Default>(&self, r: Result<T, StoreError>) -> T {
        r.unwrap_or_else(|e| {
            self.failed.borrow_mut().get_or_insert(e);
            T::default()
        })
    }
}

impl Candidates for StoredIndex {
    fn record(&self, patient: &str) -> Option<Record> {
        self.note(self.try_record(patient))
    }

    fn matches(&self, record: &Record, limit: usize) -> Vec<Match> {
        self.note(self.try_matches(record, limit))
    }
}

fn set_state(c: &mut dyn Conn, name: &str, n: i64, doc: &str) -> Result<(), StoreError> {
    c.exec(
        "INSERT INTO mpi_state (name, n, doc) VALUES (?, ?, ?) ON CONFLICT (name) \
         DO UPDATE SET n = excluded.n, doc = excluded.doc",
        &[Val::Text(name.into()), Val::Int(n), Val::Text(doc.into())],
    )?;
    Ok(())
}

/// Deletes an entry's block rows.
fn unblock(c: &mut dyn Conn, shard: i64, keys: &[i64]) -> Result<(), StoreError> {
    for chunk in keys.chunks(64) {
        let params: Vec<Val> = std::iter::once(Val::Int(shard))
            .chain(padded(chunk))
            .collect();
        c.exec(
            &format!(
                "DELETE FROM mpi_block WHERE shard = ? AND k IN ({})",
                marks(params.len() - 1)
            ),
            &params,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hutong_mpi::compare::{profile_of, Profile};
    use hutong_mpi::index::Index;
    use hutong_mpi::{block, Raw, Thresholds};
    use hutong_store::testing::{self, TestStore};

    fn backends() -> Vec<TestStore> {
        let mut v = vec![testing::sqlite()];
        v.extend(testing::postgres());
        v
    }

    /// `n` people of a district, every fourth one a second record of an earlier person
    /// (another phone, or no ID number, or the traditional form of the name), and a
    /// household of many sharing one phone — a block past the cap.
    fn people(n: usize) -> Vec<(String, Record)> {
        let family = ["王", "李", "张", "刘", "陈", "曾", "欧阳", "单"];
        let given = ["伟", "芳", "娜", "秀英", "敏", "静", "磊", "强", "雪", "军"];
        let mut raws: Vec<Raw> = Vec::new();
        let mut x: u64 = 7;
        for i in 0..n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (x >> 33) as usize;
            let raw = if i % 4 == 3 {
                let mut d = raws[i - 3].clone();
                match r % 3 {
                    0 => d.phone = Some(format!("139{:08}", r % 100_000_000)),
                    1 => d.id_number = None,
                    _ => d.name = d.name.map(|n| n.replace('张', "張").replace('陈', "陳")),
                }
                d
            } else {
                let (y, m, d) = (1940 + r % 70, 1 + r / 70 % 12, 1 + r / 840 % 28);
                Raw {
                    name: Some(format!("{}{}", family[r % 8], given[r / 8 % 10])),
                    sex: Some(if r.is_multiple_of(2) { "男" } else { "女" }.into()),
                    birth_date: Some(format!("{y:04}-{m:02}-{d:02}")),
                    id_number: (!r.is_multiple_of(5)).then(|| {
                        hutong_cn::idcard::make(
                            330106,
                            y as u32,
                            m as u32,
                            d as u32,
                            (r % 997) as u32,
                        )
                    }),
                    phone: Some(if i % 2 == 0 {
                        "13800000000".into()
                    } else {
                        format!("138{:08}", r % 100_000_000)
                    }),
                    address_line: Some(format!("杭州市西湖区文三路{}号", r % 300)),
                    ..Raw::default()
                }
            };
            raws.push(raw);
        }
        raws.iter()
            .enumerate()
            .map(|(i, r)| (format!("Patient/p{i}"), r.normalize()))
            .collect()
    }

    fn puts(data: &[(String, Record)], version: i64) -> Vec<Put> {
        data.iter()
            .map(|(id, record)| Put {
                id: id.clone(),
                version,
                record: record.clone(),
            })
            .collect()
    }

    /// The database index finds exactly what the memory index finds, with the same odds.
    fn assert_same(memory: &Index, db: &StoredIndex, probes: &[(String, Record)]) {
        let mut linked = 0;
        for (id, r) in probes {
            let want = memory.matches(r, 10);
            let got = Candidates::matches(db, r, 10);
            if let Some(e) = db.take_error() {
                panic!("{e}");
            }
            let show = |v: &[Match]| -> Vec<(String, f64)> {
                v.iter().map(|m| (m.id.clone(), m.odds)).collect()
            };
            assert_eq!(show(&got), show(&want), "matches of {id}");
            assert_eq!(db.record(id).as_ref(), memory.get(id), "record of {id}");
            linked += want.iter().filter(|m| &m.id != id).count();
        }
        assert!(linked > probes.len() / 8, "the data has matches to find");
    }

    fn trained(data: &[(String, Record)], profile: Option<Profile>) -> Model {
        let records: Vec<Record> = data.iter().map(|(_, r)| r.clone()).collect();
        let profile = profile.unwrap_or_else(|| profile_of(&records));
        Model::train(&records, &block::candidates(&records, profile), profile)
    }

    fn memory(model: Model, data: &[(String, Record)]) -> Index {
        let mut m = Index::new(model);
        for (id, r) in data {
            m.upsert(id, 1, r.clone());
        }
        m
    }

    #[test]
    fn the_database_index_matches_as_the_memory_index_does() {
        for t in backends() {
            let mut data = people(800);
            let shared = data
                .iter()
                .filter(|(_, r)| r.phone.as_deref() == Some("13800000000"))
                .count();
            assert!(shared > MAX_BLOCK, "a block past the cap: {shared}");
            let mut db = StoredIndex::open(&t.store, Thresholds::default()).unwrap();
            db.set_model(trained(&data, None), data.len()).unwrap();
            for chunk in data.chunks(300) {
                db.apply(puts(chunk, 1), &[], None).unwrap();
            }
            assert_eq!(db.len(), 800);
            assert_same(&memory(trained(&data, None), &data), &db, &data);

            // New versions of some, a stale version of others (ignored), some deleted.
            let mut newer = Vec::new();
            for (i, (id, r)) in data.iter_mut().enumerate() {
                if i % 5 == 0 {
                    r.phone = Some(format!("137{i:08}"));
                    newer.push(Put {
                        id: id.clone(),
                        version: 2,
                        record: r.clone(),
                    });
                }
            }
            let stale = vec![Put {
                id: "Patient/p1".into(),
                version: 1,
                record: data[0].1.clone(),
            }];
            let removed: Vec<String> = (0..800)
                .step_by(7)
                .map(|i| format!("Patient/p{i}"))
                .collect();
            db.apply(newer, &removed, Some(42)).unwrap();
            db.apply(stale, &[], None).unwrap();
            data.retain(|(id, _)| !removed.contains(id));
            assert_eq!(db.len(), data.len());
            assert_eq!(db.mark("synced").unwrap(), Some(42));
            let v = db
                .versions(&["Patient/p5", "Patient/p1", "Patient/p7"])
                .unwrap();
            assert_eq!(
                (
                    v.get("Patient/p5"),
                    v.get("Patient/p1"),
                    v.get("Patient/p7")
                ),
                (Some(&2), Some(&1), None)
            );
            // Name counts follow the index: a model trained on what is left weighs the same.
            db.set_model(trained(&data, None), data.len()).unwrap();
            assert_same(&memory(trained(&data, None), &data), &db, &data);

            // A model on other fields re-keys every entry.
            let western = trained(&data, Some(Profile::Western));
            db.set_model(western.clone(), data.len()).unwrap();
            assert_same(&memory(western, &data), &db, &data);

            // Another node (or a restart) opens it as it was left.
            let again = StoredIndex::open(&t.store, Thresholds::default()).unwrap();
            assert_eq!((again.len(), again.trained_at()), (data.len(), data.len()));
            assert_eq!(again.model().profile, Profile::Western);
        }
    }
}
