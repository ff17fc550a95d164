//! The audit trail's storage: an append-only log, hash-chained per partition.
//!
//! Each entry carries the hash of the one before it in its partition:
//! `hash = SHA-256(prev ‖ part ‖ seq ‖ ts ‖ entry)`, with `seq` counting 1, 2, 3… without
//! gaps. An entry changed in place no longer matches its hash; one deleted leaves a gap; one
//! inserted breaks the chain of the next. `audit_head` records each partition's last entry,
//! and signed checkpoints (written by `hutong-audit`) pin the chain at intervals, so that a
//! rewritten tail is caught too.
//!
//! Changes are audited in the transaction that makes them ([`AuditHook`], called by
//! `Store::write` before it commits); reads, which have no transaction, are appended in
//! batches by the audit crate through [`crate::Store::append_audit`]. An entry names the
//! Patient shards it concerns (`audit_subject`), which is how a resident finds who viewed
//! their record.

use sha2::{Digest, Sha256};

use crate::sql::{Conn, Dialect, Val};
use crate::StoreError;

/// One audit entry to append: when, the entry itself (JSON, opaque to the store), and the
/// Patient shards it is about.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub ts: i64,
    pub entry: String,
    pub subjects: Vec<i64>,
}

/// A version written by a transaction, as the audit trail records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub rtype: String,
    pub id: String,
    pub version: i64,
    pub shard: i64,
    pub deleted: bool,
    /// The version's token index values (see [`crate::changelog::tokens_of`]); `None` when
    /// they are not known in the clear (a deletion, identity data under keyed hashes).
    pub tokens: Option<String>,
}

/// Describes a write transaction for the audit trail. `Store::write` asks it for the entry
/// once the transaction has done its work, and appends that entry before committing, so a
/// change and its audit entry commit together or not at all.
pub trait AuditHook {
    fn entry(&self, changes: &[Change]) -> AuditEntry;
}

/// A stored entry.
#[derive(Debug, Clone)]
pub struct AuditRow {
    pub part: i64,
    pub seq: i64,
    pub ts: i64,
    pub prev: Vec<u8>,
    pub hash: Vec<u8>,
    pub entry: String,
}

/// A signed checkpoint of a partition's chain.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub part: i64,
    pub seq: i64,
    pub hash: Vec<u8>,
    pub ts: i64,
    pub kid: String,
    pub sig: Vec<u8>,
}

/// The hash of an entry given the one before it.
pub fn chain_hash(prev: &[u8], part: i64, seq: i64, ts: i64, entry: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(part.to_be_bytes());
    h.update(seq.to_be_bytes());
    h.update(ts.to_be_bytes());
    h.update(entry.as_bytes());
    h.finalize().to_vec()
}

/// The hash a partition starts from.
pub const GENESIS: [u8; 32] = [0; 32];

/// Partitions of the chain: one on SQLite (one writer at a time anyway); several on
/// PostgreSQL so that concurrent writers about different patients do not queue on one head.
pub fn partitions(d: Dialect) -> i64 {
    match d {
        Dialect::Sqlite => 1,
        Dialect::Postgres => 8,
    }
}

/// Appends `e` to its partition's chain, inside the caller's transaction.
pub(crate) fn append(conn: &mut dyn Conn, e: &AuditEntry) -> Result<(i64, i64), StoreError> {
    let parts = partitions(conn.dialect());
    let part = e.subjects.first().map_or(0, |s| s.rem_euclid(parts));
    let lock = match conn.dialect() {
        Dialect::Sqlite => "SELECT seq, hash FROM audit_head WHERE part = ?",
        // The head row is the partition's lock: writers of one partition append in turn.
        Dialect::Postgres => "SELECT seq, hash FROM audit_head WHERE part = ? FOR UPDATE",
    };
    let mut head = conn.query(lock, &[Val::Int(part)])?;
    if head.is_empty() {
        let sql = crate::schema::insert_ignore(
            conn.dialect(),
            "audit_head (part, seq, hash) VALUES (?, 0, ?)",
        );
        conn.exec(&sql, &[Val::Int(part), Val::Blob(GENESIS.to_vec())])?;
        head = conn.query(lock, &[Val::Int(part)])?;
    }
    let mut row = head
        .into_iter()
        .next()
        .ok_or_else(|| StoreError::Corrupt("audit head missing".into()))?;
    let seq = row[0].int() + 1;
    let prev = std::mem::replace(&mut row[1], Val::Null).into_blob();
    let hash = chain_hash(&prev, part, seq, e.ts, &e.entry);
    conn.exec(
        "INSERT INTO audit (part, seq, ts, prev, hash, entry) VALUES (?, ?, ?, ?, ?, ?)",
        &[
            Val::Int(part),
            Val::Int(seq),
            Val::Int(e.ts),
            Val::Blob(prev),
            Val::Blob(hash.clone()),
            Val::Text(e.entry.clone()),
        ],
    )?;
    let mut subjects = e.subjects.clone();
    subjects.sort_unstable();
    subjects.dedup();
    if !subjects.is_empty() {
        let rows: Vec<Vec<Val>> = subjects
            .iter()
            .map(|s| vec![Val::Int(*s), Val::Int(e.ts), Val::Int(part), Val::Int(seq)])
            .collect();
        conn.insert_rows("audit_subject", &["shard", "ts", "part", "seq"], &rows)?;
    }
    conn.exec(
        "UPDATE audit_head SET seq = ?, hash = ? WHERE part = ?",
        &[Val::Int(seq), Val::Blob(hash), Val::Int(part)],
    )?;
    Ok((part, seq))
}

pub(crate) fn row_from(mut r: Vec<Val>) -> AuditRow {
    AuditRow {
        part: r[0].int(),
        seq: r[1].int(),
        ts: r[2].int(),
        prev: std::mem::replace(&mut r[3], Val::Null).into_blob(),
        hash: std::mem::replace(&mut r[4], Val::Null).into_blob(),
        entry: r[5].text().to_string(),
    }
}

pub(crate) const SELECT_AUDIT: &str = "SELECT part, seq, ts, prev, hash, entry FROM audit";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_hash_covers_every_field() {
        let h = chain_hash(&GENESIS, 0, 1, 10, "{}");
        assert_eq!(h.len(), 32);
        assert_ne!(h, chain_hash(&GENESIS, 1, 1, 10, "{}"));
        assert_ne!(h, chain_hash(&GENESIS, 0, 2, 10, "{}"));
        assert_ne!(h, chain_hash(&GENESIS, 0, 1, 11, "{}"));
        assert_ne!(h, chain_hash(&GENESIS, 0, 1, 10, "{ }"));
        assert_ne!(h, chain_hash(&h, 0, 1, 10, "{}"));
    }
}
