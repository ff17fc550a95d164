//! Posting lists: the embedded store's token, reference and code-text index rows.
//!
//! Most of those rows share their value with thousands of others (`status = final`, one
//! LOINC code, one Patient as subject), and a row per resource repeated the value and the
//! 8-byte shard each time: a third of the store. On SQLite `ix_tok`, `ix_ref` and `ix_txt`
//! are therefore views over `<table>_g`, which holds one row per value, shard and *chunk*:
//! `first` is the chunk's smallest rid and `rids` the chunk's rids ascending, as LEB128
//! varints of their differences (one or two bytes each — a patient's rids are close). The
//! table-valued function `hutong_rids(blob)` unrolls a chunk into rows, so every query
//! written against the row tables reads the views unchanged.
//!
//! Why chunks rather than one list per value and shard: a write rewrites only the chunk it
//! touches, and a row stays within a b-tree cell (no overflow pages). Chunks of a value and
//! shard hold disjoint rid ranges in `first` order. Because `first` is in the key and neither
//! fixed by the query nor in its ORDER BY, SQLite knows a value's rows come in shard order
//! but not as one row per shard, and sorts only within each shard ("RIGHT PART OF ORDER
//! BY"): a first page still reads one shard's rows, not every match.
//!
//! PostgreSQL keeps one row per resource (it is the scale backend, not size-bound).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::os::raw::c_int;

use rusqlite::ffi;
use rusqlite::vtab::{
    eponymous_only_module, Context, IndexConstraintOp, IndexInfo, VTab, VTabConfig, VTabConnection,
    VTabCursor, Values,
};

use crate::sql::{Conn, Row, Val};
use crate::StoreError;

/// Bytes of varints per chunk. With its key (a reference's target id is the longest part)
/// a row stays under the ~1,000 bytes an index b-tree cell holds on a 4 KiB page.
const CHUNK_BYTES: usize = 768;

/// A grouped index table: the view's name and the columns of its group key, in key order
/// (`shard` last: a value's chunks come in shard order).
pub(crate) struct Grouped {
    pub view: &'static str,
    pub key: &'static [&'static str],
}

pub(crate) const GROUPED: [Grouped; 3] = [
    Grouped {
        view: "ix_tok",
        key: &["pid", "code", "sid", "shard"],
    },
    Grouped {
        view: "ix_ref",
        key: &["tid", "ttype", "pid", "shard"],
    },
    Grouped {
        view: "ix_txt",
        key: &["pid", "norm", "shard"],
    },
];

/// The grouped table behind `table`, if it is one.
pub(crate) fn grouped(table: &str) -> Option<&'static Grouped> {
    GROUPED.iter().find(|g| g.view == table)
}

/// The DDL of the grouped tables and their views (SQLite).
pub(crate) fn ddl() -> String {
    let mut sql = String::new();
    for g in &GROUPED {
        let cols: Vec<String> = g
            .key
            .iter()
            .map(|c| format!("{c} {} NOT NULL", column_type(c)))
            .collect();
        let picked: Vec<String> = g.key.iter().map(|c| format!("g.{c} AS {c}")).collect();
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {v}_g ({cols}, first INTEGER NOT NULL, \
             rids BLOB NOT NULL, PRIMARY KEY ({key}, first)) WITHOUT ROWID;\n\
             CREATE VIEW IF NOT EXISTS {v} AS SELECT {picked}, p.rid AS rid \
             FROM {v}_g g, hutong_rids(g.rids) p;\n",
            v = g.view,
            cols = cols.join(", "),
            key = g.key.join(", "),
            picked = picked.join(", "),
        ));
    }
    sql
}

fn column_type(c: &str) -> &'static str {
    match c {
        "code" | "tid" | "norm" => "TEXT",
        _ => "INTEGER",
    }
}

/// Appends `v` as an unsigned LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Ascending rids, delta-coded: the first as itself, then each difference from the one before.
pub(crate) fn encode(rids: &[i64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rids.len() * 2);
    let mut prev = 0i64;
    for &r in rids {
        put_varint(&mut out, r.wrapping_sub(prev) as u64);
        prev = r;
    }
    out
}

/// The rids of a chunk, ascending. A truncated or overlong varint ends the list there (a
/// damaged chunk loses its tail rather than yielding rids that were never written).
pub(crate) fn decode(blob: &[u8]) -> Vec<i64> {
    let mut out = Vec::with_capacity(blob.len());
    let mut it = Rids::new(blob);
    while let Some(r) = it.next_rid() {
        out.push(r);
    }
    out
}

/// A varint cursor over a chunk.
struct Rids<'a> {
    blob: &'a [u8],
    at: usize,
    prev: i64,
}

impl<'a> Rids<'a> {
    fn new(blob: &'a [u8]) -> Rids<'a> {
        Rids {
            blob,
            at: 0,
            prev: 0,
        }
    }
    fn next_rid(&mut self) -> Option<i64> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = *self.blob.get(self.at)?;
            self.at += 1;
            if shift > 63 {
                self.at = self.blob.len();
                return None;
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        self.prev = self.prev.wrapping_add(v as i64);
        Some(self.prev)
    }
}

/// Splits ascending rids into chunks of at most [`CHUNK_BYTES`], filled greedily from the
/// first: re-packing a full chunk with rids added after it gives the same chunk back.
fn pack(rids: &[i64]) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < rids.len() {
        let mut bytes = varint_len(rids[start] as u64);
        let mut end = start + 1;
        while end < rids.len() {
            let more = varint_len((rids[end] - rids[end - 1]) as u64);
            if bytes + more > CHUNK_BYTES {
                break;
            }
            bytes += more;
            end += 1;
        }
        out.push((rids[start], encode(&rids[start..end])));
        start = end;
    }
    out
}

fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

/// A key part of a group (index values are integers or text).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    Int(i64),
    Text(String),
}

impl Part {
    fn of(v: &Val) -> Part {
        match v {
            Val::Int(i) => Part::Int(*i),
            Val::Text(t) => Part::Text(t.clone()),
            other => Part::Text(format!("{other:?}")),
        }
    }
    fn val(&self) -> Val {
        match self {
            Part::Int(i) => Val::Int(*i),
            Part::Text(t) => Val::Text(t.clone()),
        }
    }
}

/// Adds (`add` true) or removes the index rows `rows` (columns as in `columns`, which name
/// the group key and `rid`) to or from the chunks of `g`. Rows already present are not added
/// twice; rows absent are not removed.
pub(crate) fn apply(
    conn: &mut dyn Conn,
    g: &Grouped,
    columns: &[&str],
    rows: &[Row],
    add: bool,
) -> Result<(), StoreError> {
    let at = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .expect("a grouped table's rows carry its key and rid")
    };
    let key_at: Vec<usize> = g.key.iter().map(|c| at(c)).collect();
    let rid_at = at("rid");
    let mut groups: BTreeMap<Vec<Part>, Vec<i64>> = BTreeMap::new();
    for r in rows {
        let key = key_at.iter().map(|&i| Part::of(&r[i])).collect();
        groups.entry(key).or_default().push(r[rid_at].int());
    }
    let table = format!("{}_g", g.view);
    let key_sql = g
        .key
        .iter()
        .map(|c| format!("{c} = ?"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let floor = format!(
        "SELECT first, rids FROM {table} WHERE {key_sql} AND first <= ? ORDER BY first DESC LIMIT 1"
    );
    let after = format!(
        "SELECT first, rids FROM {table} WHERE {key_sql} AND first > ? AND first <= ? ORDER BY first"
    );
    let delete = format!("DELETE FROM {table} WHERE {key_sql} AND first = ?");
    let put = format!(
        "INSERT OR REPLACE INTO {table} ({}, first, rids) VALUES ({}?, ?)",
        g.key.join(", "),
        "?, ".repeat(g.key.len())
    );
    for (key, mut rids) in groups {
        rids.sort_unstable();
        rids.dedup();
        let (lo, hi) = (rids[0], rids[rids.len() - 1]);
        let kv: Vec<Val> = key.iter().map(Part::val).collect();
        // The chunks that hold or would hold rids in [lo, hi]: the one starting at or before
        // lo, and every one starting after it up to hi.
        let mut params = kv.clone();
        params.push(Val::Int(lo));
        let mut old: Vec<(i64, Vec<u8>)> = conn
            .query(&floor, &params)?
            .into_iter()
            .map(chunk_of)
            .collect();
        let mut params = kv.clone();
        params.push(Val::Int(old.first().map_or(lo - 1, |c| c.0)));
        params.push(Val::Int(hi));
        old.extend(conn.query(&after, &params)?.into_iter().map(chunk_of));
        // Each rid goes to the chunk it falls in (the first chunk when it is below them all),
        // and only the chunks that change are re-packed: a full chunk between two touched
        // ones is never rewritten.
        let mut lists: Vec<Vec<i64>> = old.iter().map(|(_, b)| decode(b)).collect();
        let mut touched = vec![false; old.len()];
        if lists.is_empty() {
            if add {
                lists.push(Vec::new());
                touched.push(true);
            } else {
                continue;
            }
        }
        for &rid in &rids {
            let i = old
                .partition_point(|(first, _)| *first <= rid)
                .saturating_sub(1);
            let list = &mut lists[i];
            match (list.binary_search(&rid), add) {
                (Err(at), true) => list.insert(at, rid),
                (Ok(at), false) => {
                    list.remove(at);
                }
                _ => continue,
            }
            touched[i] = true;
        }
        for (i, list) in lists.iter().enumerate() {
            if !touched[i] {
                continue;
            }
            let new = pack(list);
            // A chunk whose first rid changed (or that emptied) leaves its old key.
            if let Some((first, _)) = old.get(i) {
                if !new.iter().any(|(f, _)| f == first) {
                    let mut p = kv.clone();
                    p.push(Val::Int(*first));
                    conn.exec(&delete, &p)?;
                }
            }
            for (first, blob) in new {
                let mut p = kv.clone();
                p.push(Val::Int(first));
                p.push(Val::Blob(blob));
                conn.exec(&put, &p)?;
            }
        }
    }
    Ok(())
}

/// A `(first, rids)` row, the blob moved out rather than copied.
fn chunk_of(row: Row) -> (i64, Vec<u8>) {
    let mut cells = row.into_iter();
    let first = cells.next().map_or(0, |v| v.int());
    (first, cells.next().map(Val::into_blob).unwrap_or_default())
}

/// Rebuilds a grouped table from row-per-resource rows: `source` is what follows `FROM`
/// (a table, with a WHERE clause if need be) and has the group key's columns and `rid`
/// (a migration into an empty grouped table). Rows are packed as they stream in, so memory
/// holds the chunks (a tenth of the rows' size), not the rows.
pub(crate) fn regroup(conn: &mut dyn Conn, g: &Grouped, source: &str) -> Result<(), StoreError> {
    type Chunks = Vec<(Vec<Part>, i64, Vec<u8>)>;
    fn close(key: &[Part], rids: &mut Vec<i64>, chunks: &mut Chunks) {
        rids.dedup();
        for (first, blob) in pack(rids) {
            chunks.push((key.to_vec(), first, blob));
        }
        rids.clear();
    }
    let width = g.key.len();
    let mut chunks: Chunks = Vec::new();
    let mut key: Option<Vec<Part>> = None;
    let mut rids: Vec<i64> = Vec::new();
    let cols = g.key.join(", ");
    let select = format!("SELECT {cols}, rid FROM {source} ORDER BY {cols}, rid");
    conn.query_each(&select, &[], &mut |r| {
        let k: Vec<Part> = (0..width).map(|i| Part::of(&r.val(i))).collect();
        if key.as_ref() != Some(&k) {
            if let Some(done) = key.take() {
                close(&done, &mut rids, &mut chunks);
            }
            key = Some(k);
        }
        rids.push(r.int(width));
        Ok(())
    })?;
    if let Some(done) = key {
        close(&done, &mut rids, &mut chunks);
    }
    let put = format!(
        "INSERT OR REPLACE INTO {}_g ({}, first, rids) VALUES ({}?, ?)",
        g.view,
        g.key.join(", "),
        "?, ".repeat(width)
    );
    for (key, first, blob) in chunks {
        let mut p: Vec<Val> = key.iter().map(Part::val).collect();
        p.push(Val::Int(first));
        p.push(Val::Blob(blob));
        conn.exec(&put, &p)?;
    }
    Ok(())
}

/// Registers `hutong_rids` on a connection: every connection that reads the views needs it.
pub(crate) fn register(c: &rusqlite::Connection) -> rusqlite::Result<()> {
    c.create_module("hutong_rids", eponymous_only_module::<RidsTab>(), None)
}

#[repr(C)]
struct RidsTab {
    base: ffi::sqlite3_vtab,
}

// SAFETY: the contract of `VTab` — `RidsTab` is `#[repr(C)]` with the `sqlite3_vtab` base as its
// first field, which is what rusqlite casts to and from.
#[allow(unsafe_code)]
unsafe impl<'vtab> VTab<'vtab> for RidsTab {
    type Aux = ();
    type Cursor = RidsCursor<'vtab>;

    fn connect(
        db: &mut VTabConnection,
        _aux: Option<&()>,
        _args: &[&[u8]],
    ) -> rusqlite::Result<(String, RidsTab)> {
        db.config(VTabConfig::Innocuous)?;
        Ok((
            "CREATE TABLE x(rid INTEGER, rids HIDDEN)".to_owned(),
            RidsTab {
                base: ffi::sqlite3_vtab::default(),
            },
        ))
    }

    fn best_index(&self, info: &mut IndexInfo) -> rusqlite::Result<()> {
        let mut arg = None;
        let mut unusable = false;
        for (i, c) in info.constraints().enumerate() {
            if c.column() != 1 {
                continue;
            }
            if c.is_usable() && c.operator() == IndexConstraintOp::SQLITE_INDEX_CONSTRAINT_EQ {
                arg = Some(i);
            } else {
                unusable = true;
            }
        }
        let Some(i) = arg else {
            if unusable {
                // Not a plan: the blob comes from a table that must be read first.
                return Err(rusqlite::Error::SqliteFailure(
                    ffi::Error::new(ffi::SQLITE_CONSTRAINT),
                    None,
                ));
            }
            info.set_estimated_cost(1e12);
            info.set_idx_num(0);
            return Ok(());
        };
        let mut usage = info.constraint_usage(i);
        usage.set_argv_index(1);
        usage.set_omit(true);
        // A chunk's rows, as the planner should weigh them: like the handful of index rows
        // an equality on a row table's key yields. Larger figures made it drive a join from
        // the other side (every resource of a type) rather than from the list.
        info.set_estimated_cost(1.0);
        info.set_estimated_rows(1);
        info.set_idx_num(1);
        let ascending_rid = {
            let mut by = info.order_bys();
            matches!((by.next(), by.next()), (Some(o), None) if o.column() == 0 && !o.is_order_by_desc())
        };
        if ascending_rid {
            info.set_order_by_consumed(true);
        }
        Ok(())
    }

    fn open(&'vtab mut self) -> rusqlite::Result<RidsCursor<'vtab>> {
        Ok(RidsCursor {
            base: ffi::sqlite3_vtab_cursor::default(),
            blob: Vec::new(),
            at: 0,
            prev: 0,
            row: 0,
            done: true,
            phantom: PhantomData,
        })
    }
}

#[repr(C)]
struct RidsCursor<'vtab> {
    base: ffi::sqlite3_vtab_cursor,
    blob: Vec<u8>,
    at: usize,
    prev: i64,
    row: i64,
    done: bool,
    phantom: PhantomData<&'vtab RidsTab>,
}

impl RidsCursor<'_> {
    fn step(&mut self) {
        let mut it = Rids {
            blob: &self.blob,
            at: self.at,
            prev: self.prev,
        };
        match it.next_rid() {
            Some(r) => {
                self.at = it.at;
                self.prev = r;
                self.row += 1;
            }
            None => self.done = true,
        }
    }
}

// SAFETY: as for `RidsTab`: `#[repr(C)]`, the `sqlite3_vtab_cursor` base first.
#[allow(unsafe_code)]
unsafe impl VTabCursor for RidsCursor<'_> {
    fn filter(
        &mut self,
        idx_num: c_int,
        _idx_str: Option<&str>,
        args: &Values<'_>,
    ) -> rusqlite::Result<()> {
        self.blob = if idx_num == 1 && !args.is_empty() {
            args.get::<Option<Vec<u8>>>(0)?.unwrap_or_default()
        } else {
            Vec::new()
        };
        self.at = 0;
        self.prev = 0;
        self.row = 0;
        self.done = false;
        self.step();
        Ok(())
    }
    fn next(&mut self) -> rusqlite::Result<()> {
        self.step();
        Ok(())
    }
    fn eof(&self) -> bool {
        self.done
    }
    fn column(&self, ctx: &mut Context, i: c_int) -> rusqlite::Result<()> {
        if i == 0 {
            ctx.set_result(&self.prev)
        } else {
            ctx.set_result(&rusqlite::types::Null)
        }
    }
    fn rowid(&self) -> rusqlite::Result<i64> {
        Ok(self.row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn chunks_round_trip(mut rids in proptest::collection::vec(1i64..5_000_000, 0..3000)) {
            rids.sort_unstable();
            rids.dedup();
            let chunks = pack(&rids);
            let mut back = Vec::new();
            for (first, blob) in &chunks {
                prop_assert!(blob.len() <= CHUNK_BYTES);
                let got = decode(blob);
                prop_assert_eq!(got[0], *first);
                back.extend(got);
            }
            prop_assert_eq!(back, rids);
        }

        #[test]
        fn decoding_never_panics(blob in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&blob);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Adds and removals in batches keep what a set of rids would, read back through
        /// the view — chunks split, shrink, empty and change their first rid on the way.
        #[test]
        fn apply_keeps_what_a_set_would(
            ops in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(1i64..20_000, 1..400)),
                1..12,
            )
        ) {
            let c = rusqlite::Connection::open_in_memory().unwrap();
            register(&c).unwrap();
            c.execute_batch(&ddl()).unwrap();
            let mut conn = crate::sql::SqliteConn(c);
            let g = grouped("ix_tok").unwrap();
            let cols = ["shard", "rid", "pid", "sid", "code"];
            let mut model = std::collections::BTreeSet::new();
            for (add, rids) in ops {
                let rows: Vec<Row> = rids
                    .iter()
                    .map(|r| {
                        vec![Val::Int(7), Val::Int(*r), Val::Int(1), Val::Int(0), Val::Text("c".into())]
                    })
                    .collect();
                apply(&mut conn, g, &cols, &rows, add).unwrap();
                for r in rids {
                    if add {
                        model.insert(r);
                    } else {
                        model.remove(&r);
                    }
                }
            }
            let got: Vec<i64> = conn
                .query(
                    "SELECT rid FROM ix_tok WHERE pid = 1 AND code = 'c' AND sid = 0 \
                     AND shard = 7 ORDER BY rid",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| r[0].int())
                .collect();
            prop_assert_eq!(got, model.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn close_rids_take_a_byte_each() {
        let rids: Vec<i64> = (1_000_000..1_000_500).collect();
        assert_eq!(encode(&rids).len(), 3 + 499);
    }

    #[test]
    fn a_full_chunk_packs_the_same_with_rids_after_it() {
        let rids: Vec<i64> = (0..2000).map(|i| 10 + i * 3).collect();
        let before = pack(&rids);
        let mut more = rids.clone();
        more.extend([7000, 7001]);
        let after = pack(&more);
        assert_eq!(before[..before.len() - 1], after[..before.len() - 1]);
    }
}
