//! A stored version as the tables hold it: its meta columns ([`VERSION_COLS`]) and their
//! reading into a [`Stored`]. Shared by the write path and search, below both.

use crate::schema::Catalog;
use crate::sql::Cells;
use crate::{StoreError, Stored};

/// The columns of a stored version other than its id and body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowMeta {
    pub rtype: i64,
    pub version: i64,
    pub lastmod: i64,
    pub deleted: bool,
    pub shard: i64,
    pub src: i64,
    pub sens: u32,
}

/// The version columns as selected by [`VERSION_COLS`] on alias `s`, starting at `at`.
pub(crate) const VERSION_COLS: &str =
    "s.rtype, s.version, s.lastmod, s.deleted, s.shard, s.src, s.sens, s.body";

impl RowMeta {
    /// Reads the seven meta columns of [`VERSION_COLS`] starting at `at`.
    pub(crate) fn at(r: &(impl Cells + ?Sized), at: usize) -> RowMeta {
        RowMeta {
            rtype: r.int(at),
            version: r.int(at + 1),
            lastmod: r.int(at + 2),
            deleted: r.int(at + 3) != 0,
            shard: r.int(at + 4),
            src: r.int(at + 5),
            sens: r.int(at + 6) as u32,
        }
    }
}

pub(crate) fn stored_from(
    cat: &Catalog,
    m: RowMeta,
    rid: i64,
    id: String,
    blob: &[u8],
) -> Result<Stored, StoreError> {
    Ok(Stored {
        rtype: cat.type_name(m.rtype).unwrap_or("").to_string(),
        id,
        version: m.version,
        last_updated: m.lastmod,
        deleted: m.deleted,
        body: cat.codec.decompress(blob)?,
        shard: m.shard,
        rid,
        source: cat.system_name(m.src).unwrap_or("").to_string(),
        sens: m.sens,
    })
}
