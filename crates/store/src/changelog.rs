//! The change log: one row per version written, appended in the transaction that wrote it
//! (whatever wrote it — the REST API, a Bundle, a bulk load, an operation), so that the work
//! that follows a change (subscriptions, forwarding to an upstream node, refreshing views)
//! reads it afterwards and outside the request, and cannot miss a change that committed nor
//! see one that did not.
//!
//! Each consumer keeps a cursor, advanced in the transaction that records what it did with
//! the rows it read: a crash between the two leaves the cursor where it was, and the rows
//! are read again. Rows every consumer has passed are pruned.
//!
//! Reading in commit order: on SQLite the single writer assigns `seq` inside its lock, so
//! `seq` order is commit order. On PostgreSQL concurrent writers take sequence numbers in
//! one order and commit in another, so a cursor on `seq` alone could pass a row whose
//! transaction had not committed yet and never come back for it. There each row carries its
//! transaction id (`xid`), and a reader takes only rows of transactions older than every
//! transaction still running (the snapshot's `xmin`), ordered by `(xid, seq)`: no row can
//! appear later behind the cursor. Versions of one resource are not always read in version
//! order there (a transaction that took its id early may wait for another's row lock and
//! write the later version): consumers that care compare versions. A transaction held open
//! holds every consumer back until it ends.

use crate::audit::Change;
use crate::sql::{Conn, Dialect, Val};
use crate::StoreError;

/// A position in the log: everything up to and including it has been read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    pub xid: i64,
    pub seq: i64,
}

/// One logged change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub at: Cursor,
    pub rtype: String,
    pub id: String,
    pub version: i64,
    pub shard: i64,
    pub deleted: bool,
    /// When the transaction wrote it (ms).
    pub ts: i64,
    /// Its token index values, as [`tokens_of`] wrote them, when known in the clear.
    pub tokens: Option<String>,
}

/// The token index values of a version, one `param␟system␟code` per line (`␞`-separated):
/// what a subscription's filter on codes is decided on without reading the body.
pub fn tokens_of(entries: &[hutong_fhir::index::Entry]) -> String {
    let mut out: Vec<String> = entries
        .iter()
        .filter(|e| !e.param.contains(':'))
        .filter_map(|e| match &e.value {
            hutong_fhir::index::IndexValue::Token { system, code, .. } => {
                Some(format!("{}\u{1f}{system}\u{1f}{code}", e.param))
            }
            _ => None,
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out.join("\u{1e}")
}

/// Reads [`tokens_of`] back: (param, system, code).
pub fn parse_tokens(s: &str) -> impl Iterator<Item = (&str, &str, &str)> {
    s.split('\u{1e}').filter_map(|t| {
        let mut p = t.split('\u{1f}');
        Some((p.next()?, p.next()?, p.next()?))
    })
}

/// Appends a transaction's changes (called by `Store::write` before it commits).
pub(crate) fn append(conn: &mut dyn Conn, changes: &[Change], ts: i64) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let xid = match conn.dialect() {
        Dialect::Sqlite => 0,
        Dialect::Postgres => conn
            .query("SELECT pg_current_xact_id()::text::bigint", &[])?
            .first()
            .map_or(0, |r| r[0].int()),
    };
    let rows: Vec<Vec<Val>> = changes
        .iter()
        .map(|c| {
            vec![
                Val::Int(xid),
                Val::Text(c.rtype.clone()),
                Val::Text(c.id.clone()),
                Val::Int(c.version),
                Val::Int(c.shard),
                Val::Int(c.deleted as i64),
                Val::Int(ts),
                c.tokens.clone().map_or(Val::Null, Val::Text),
            ]
        })
        .collect();
    conn.insert_rows(
        "chg",
        &[
            "xid", "rtype", "id", "version", "shard", "deleted", "ts", "tokens",
        ],
        &rows,
    )
}

/// Where `consumer` stands, locking its cursor until the transaction ends (so that two
/// processes consuming under one name take turns rather than both reading the same rows).
/// A consumer seen for the first time starts at the end of the log: it has nothing to
/// catch up on from before it existed.
pub fn lock_cursor(conn: &mut dyn Conn, consumer: &str) -> Result<Cursor, StoreError> {
    let sql = format!(
        "SELECT xid, seq FROM chg_cursor WHERE consumer = ?{}",
        conn.dialect().lock_row()
    );
    if let Some(r) = conn.query(&sql, &[Val::Text(consumer.into())])?.first() {
        return Ok(Cursor {
            xid: r[0].int(),
            seq: r[1].int(),
        });
    }
    let end = match conn.dialect() {
        // Just behind the oldest transaction still running: one that began earlier and
        // commits later is not passed (a few committed rows before may be read: harmless).
        Dialect::Postgres => conn
            .query(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
                &[],
            )?
            .first()
            .map_or(Cursor::default(), |r| Cursor {
                xid: r[0].int() - 1,
                seq: i64::MAX,
            }),
        Dialect::Sqlite => conn
            .query("SELECT seq FROM chg ORDER BY seq DESC LIMIT 1", &[])?
            .first()
            .map_or(Cursor::default(), |r| Cursor {
                xid: 0,
                seq: r[0].int(),
            }),
    };
    let insert = crate::schema::insert_ignore(
        conn.dialect(),
        "chg_cursor (consumer, xid, seq) VALUES (?, ?, ?)",
    );
    conn.exec(
        &insert,
        &[
            Val::Text(consumer.into()),
            Val::Int(end.xid),
            Val::Int(end.seq),
        ],
    )?;
    let r = conn.query(&sql, &[Val::Text(consumer.into())])?;
    Ok(r.first().map_or(end, |r| Cursor {
        xid: r[0].int(),
        seq: r[1].int(),
    }))
}

/// Where `consumer` stands, if it has started.
pub fn cursor(conn: &mut dyn Conn, consumer: &str) -> Result<Option<Cursor>, StoreError> {
    Ok(conn
        .query(
            "SELECT xid, seq FROM chg_cursor WHERE consumer = ?",
            &[Val::Text(consumer.into())],
        )?
        .first()
        .map(|r| Cursor {
            xid: r[0].int(),
            seq: r[1].int(),
        }))
}

/// Moves `consumer`'s cursor to `to` (in the transaction that recorded what it did).
pub fn set_cursor(conn: &mut dyn Conn, consumer: &str, to: Cursor) -> Result<(), StoreError> {
    conn.exec(
        "UPDATE chg_cursor SET xid = ?, seq = ? WHERE consumer = ?",
        &[
            Val::Int(to.xid),
            Val::Int(to.seq),
            Val::Text(consumer.into()),
        ],
    )?;
    Ok(())
}

/// Up to `limit` changes after `from`, oldest first, of transactions that can no longer
/// commit behind them (see the module's note on PostgreSQL).
pub fn read_after(
    conn: &mut dyn Conn,
    from: Cursor,
    limit: usize,
) -> Result<Vec<Logged>, StoreError> {
    let sql = match conn.dialect() {
        Dialect::Sqlite => {
            "SELECT xid, seq, rtype, id, version, shard, deleted, ts, tokens FROM chg \
             WHERE seq > ? ORDER BY seq LIMIT ?"
                .to_string()
        }
        Dialect::Postgres => {
            "SELECT xid, seq, rtype, id, version, shard, deleted, ts, tokens FROM chg \
             WHERE (xid > ? OR (xid = ? AND seq > ?)) \
             AND xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
             ORDER BY xid, seq LIMIT ?"
                .to_string()
        }
    };
    let params = match conn.dialect() {
        Dialect::Sqlite => vec![Val::Int(from.seq), Val::Int(limit as i64)],
        Dialect::Postgres => vec![
            Val::Int(from.xid),
            Val::Int(from.xid),
            Val::Int(from.seq),
            Val::Int(limit as i64),
        ],
    };
    Ok(conn
        .query(&sql, &params)?
        .into_iter()
        .map(|r| Logged {
            at: Cursor {
                xid: r[0].int(),
                seq: r[1].int(),
            },
            rtype: r[2].text().to_string(),
            id: r[3].text().to_string(),
            version: r[4].int(),
            shard: r[5].int(),
            deleted: r[6].int() != 0,
            ts: r[7].int(),
            // (No tokens at all reads as unknown: the consumer then looks at the body.)
            tokens: match &r[8] {
                Val::Text(t) if !t.is_empty() => Some(t.clone()),
                _ => None,
            },
        })
        .collect())
}

/// Deletes the rows every consumer has read. Returns how many.
pub fn prune(conn: &mut dyn Conn) -> Result<u64, StoreError> {
    let rows = conn.query("SELECT xid, seq FROM chg_cursor", &[])?;
    let Some(min) = rows
        .iter()
        .map(|r| Cursor {
            xid: r[0].int(),
            seq: r[1].int(),
        })
        .min()
    else {
        return Ok(0);
    };
    match conn.dialect() {
        Dialect::Sqlite => conn.exec("DELETE FROM chg WHERE seq <= ?", &[Val::Int(min.seq)]),
        Dialect::Postgres => conn.exec(
            "DELETE FROM chg WHERE xid < ? OR (xid = ? AND seq <= ?)",
            &[Val::Int(min.xid), Val::Int(min.xid), Val::Int(min.seq)],
        ),
    }
}

/// How many rows wait after `consumer`'s cursor (a consumer's backlog).
pub fn backlog(conn: &mut dyn Conn, consumer: &str) -> Result<i64, StoreError> {
    let c = conn
        .query(
            "SELECT xid, seq FROM chg_cursor WHERE consumer = ?",
            &[Val::Text(consumer.into())],
        )?
        .first()
        .map(|r| (r[0].int(), r[1].int()));
    let Some((xid, seq)) = c else {
        return Ok(0);
    };
    let r = conn.query(
        "SELECT COUNT(*) FROM chg WHERE xid > ? OR (xid = ? AND seq > ?)",
        &[Val::Int(xid), Val::Int(xid), Val::Int(seq)],
    )?;
    Ok(r.first().map_or(0, |r| r[0].int()))
}
