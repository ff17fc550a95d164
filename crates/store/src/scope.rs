//! Which stored rows a reader may see: the storage half of the access decision.
//!
//! The access decision (crate `hutong-access`) turns who is asking and what the resident
//! authorized into a [`Scope`]; every read of the store takes one, and the store applies it
//! inside the query — to the matches, to `_total`, to paging, to chains and `_has`, to
//! `$everything`, history and export scans — and to each resource it returns. Nothing is
//! filtered after counting, so what a reader may not see cannot show through a count or a
//! page boundary.
//!
//! A row is visible when its type is allowed and any of these holds:
//! - it was submitted by one of the reader's own sources (`meta.source`);
//! - it is in a visible Patient shard and carries no sensitive category the shard's grant
//!   does not open;
//! - it is reference data (shard 0) of a reference type (organisations, practitioners, …).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use crate::schema::Catalog;
use crate::sql::Dialect;

/// A reader's view of the store.
#[derive(Debug, Clone)]
pub enum Scope {
    /// Every row: the platform's own processes, and principals the decision lets see all.
    All,
    Rows(Arc<RowScope>),
}

/// A bounded view (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowScope {
    /// Resource types that may be seen at all; `None` is every type.
    pub types: Option<BTreeSet<String>>,
    /// Sources whose submissions are visible wherever they are filed.
    pub sources: BTreeSet<String>,
    /// Visible Patient shards and, for each, the sensitive-category bits its grants open.
    pub shards: BTreeMap<i64, u32>,
    /// Resource types whose shard-0 rows (reference data) are visible.
    pub reference: BTreeSet<String>,
    /// Rows in every shard are visible, but for the sensitive categories not in this mask
    /// (operators reading the types their role needs).
    pub everywhere: Option<u32>,
}

impl Scope {
    /// Nothing at all (a reader with no rights; useful as a starting point).
    pub fn none() -> Scope {
        Scope::Rows(Arc::new(RowScope::default()))
    }

    pub fn rows(r: RowScope) -> Scope {
        Scope::Rows(Arc::new(r))
    }

    pub fn is_all(&self) -> bool {
        matches!(self, Scope::All)
    }

    /// Whether a row of `rtype` in `shard`, submitted by `source`, with sensitivity `sens`
    /// is visible.
    pub fn permits(&self, rtype: &str, shard: i64, source: &str, sens: u32) -> bool {
        match self {
            Scope::All => true,
            Scope::Rows(r) => r.permits(rtype, shard, source, sens),
        }
    }

    /// Whether a stored version is visible.
    pub fn permits_stored(&self, s: &crate::Stored) -> bool {
        self.permits(&s.rtype, s.shard, &s.source, s.sens)
    }

    /// Whether resources of `rtype` may be seen at all.
    pub fn allows_type(&self, rtype: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Rows(r) => r.types.as_ref().is_none_or(|t| t.contains(rtype)),
        }
    }
}

impl RowScope {
    pub fn permits(&self, rtype: &str, shard: i64, source: &str, sens: u32) -> bool {
        if self.types.as_ref().is_some_and(|t| !t.contains(rtype)) {
            return false;
        }
        if self.sources.contains(source) {
            return true;
        }
        if let Some(open) = self.shards.get(&shard) {
            if sens & !open == 0 {
                return true;
            }
        }
        if let Some(open) = self.everywhere {
            if sens & !open == 0 {
                return true;
            }
        }
        shard == 0 && self.reference.contains(rtype)
    }

    /// SQL true for the rows of the `(shard, rid)` pairs of alias `a` that are visible.
    /// `rtype` is the type of those rows when the caller knows it (a search over one type),
    /// which lets the type tests be settled here rather than per row.
    /// On SQLite a long shard list travels as a bound parameter, pushed onto `params` at the
    /// point the returned text goes into the statement. `route` names the alias of the rows'
    /// `res_route` rows when the caller has joined them (see [`RowScope::needs_route`]).
    pub(crate) fn sql(
        &self,
        cat: &Catalog,
        d: Dialect,
        a: &str,
        rtype: Option<&str>,
        params: &mut Vec<crate::sql::Val>,
        route: Option<&str>,
    ) -> String {
        let mut any: Vec<String> = Vec::new();
        let type_known_ok = rtype.map(|t| self.types.as_ref().is_none_or(|s| s.contains(t)));
        if type_known_ok == Some(false) {
            return "1 = 0".into();
        }
        // Shards by the categories they open, so each group is one IN list.
        let mut groups: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
        for (shard, open) in &self.shards {
            groups.entry(*open).or_default().push(*shard);
        }
        for (open, shards) in groups {
            let member = shard_in(d, &format!("{a}.shard"), &shards, params);
            let closed = hutong_fhir::security::ALL & !open;
            if closed == 0 {
                any.push(member);
            } else {
                any.push(format!(
                    "({member} AND NOT EXISTS (SELECT 1 FROM ix_sens z WHERE \
                     z.shard = {a}.shard AND z.rid = {a}.rid AND (z.sens & {closed}) <> 0))"
                ));
            }
        }
        if let Some(open) = self.everywhere {
            let closed = hutong_fhir::security::ALL & !open;
            any.push(format!(
                "NOT EXISTS (SELECT 1 FROM ix_sens z WHERE z.shard = {a}.shard AND z.rid = {a}.rid \
                 AND (z.sens & {closed}) <> 0)"
            ));
        }
        let src_ids: Vec<i64> = self
            .sources
            .iter()
            .filter_map(|s| cat.system_id(s))
            .collect();
        if !src_ids.is_empty() {
            // The route row is narrow (no body): the cheap place to ask who submitted it —
            // joined by the caller when it can (a join is a plain seek per row; a correlated
            // subquery costs a subprogram call on top).
            any.push(match route {
                Some(v) => format!("{v}.src IN ({})", int_list(&src_ids)),
                None => format!(
                    "EXISTS (SELECT 1 FROM res_route v WHERE v.rid = {a}.rid AND v.src IN ({}))",
                    int_list(&src_ids)
                ),
            });
        }
        match rtype {
            Some(t) if self.reference.contains(t) => any.push(format!("{a}.shard = 0")),
            Some(_) => {}
            None if !self.reference.is_empty() => {
                let ids = self.type_ids(cat, &self.reference);
                any.push(format!(
                    "({a}.shard = 0 AND EXISTS (SELECT 1 FROM res v WHERE v.shard = 0 \
                     AND v.rid = {a}.rid AND v.rtype IN ({})))",
                    int_list(&ids)
                ));
            }
            None => {}
        }
        let visible = if any.is_empty() {
            "1 = 0".to_string()
        } else {
            format!("({})", any.join(" OR "))
        };
        match (&self.types, rtype) {
            (Some(types), None) => format!(
                "({visible} AND EXISTS (SELECT 1 FROM res v WHERE v.shard = {a}.shard \
                 AND v.rid = {a}.rid AND v.rtype IN ({})))",
                int_list(&self.type_ids(cat, types))
            ),
            _ => visible,
        }
    }

    /// Whether the test asks who submitted a row (which is on its `res_route` row).
    pub(crate) fn needs_route(&self, cat: &Catalog) -> bool {
        self.sources.iter().any(|s| cat.system_id(s).is_some())
    }

    /// SQL true for rows of a version table (`res`, `res_hist`) under alias `s`, whose
    /// columns (type, source, sensitivity) are at hand.
    pub(crate) fn sql_row(&self, cat: &Catalog, s: &str) -> String {
        let mut any: Vec<String> = Vec::new();
        let mut groups: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
        for (shard, open) in &self.shards {
            groups.entry(*open).or_default().push(*shard);
        }
        for (open, shards) in groups {
            let closed = hutong_fhir::security::ALL & !open;
            // A plain list here: the planner may drive a version scan by it.
            any.push(format!(
                "({s}.shard IN ({}) AND ({s}.sens & {closed}) = 0)",
                int_list(&shards)
            ));
        }
        if let Some(open) = self.everywhere {
            let closed = hutong_fhir::security::ALL & !open;
            any.push(format!("({s}.sens & {closed}) = 0"));
        }
        let src_ids: Vec<i64> = self
            .sources
            .iter()
            .filter_map(|x| cat.system_id(x))
            .collect();
        if !src_ids.is_empty() {
            any.push(format!("{s}.src IN ({})", int_list(&src_ids)));
        }
        if !self.reference.is_empty() {
            any.push(format!(
                "({s}.shard = 0 AND {s}.rtype IN ({}))",
                int_list(&self.type_ids(cat, &self.reference))
            ));
        }
        let visible = if any.is_empty() {
            "1 = 0".to_string()
        } else {
            format!("({})", any.join(" OR "))
        };
        match &self.types {
            Some(types) => format!(
                "({visible} AND {s}.rtype IN ({}))",
                int_list(&self.type_ids(cat, types))
            ),
            None => visible,
        }
    }

    fn type_ids(&self, cat: &Catalog, types: &BTreeSet<String>) -> Vec<i64> {
        let ids: HashSet<i64> = types.iter().filter_map(|t| cat.type_id(t)).collect();
        let mut v: Vec<i64> = ids.into_iter().collect();
        v.sort_unstable();
        if v.is_empty() {
            v.push(-1);
        }
        v
    }
}

/// The name of the SQLite function [`register`] adds.
const IN_SET: &str = "hutong_in_set";

/// SQL true when `col` is one of `shards` (sorted, as a `BTreeMap`'s keys are). A grant list
/// runs to hundreds of shards; on SQLite an `IN (…)` list of that size is built into a
/// temporary b-tree on every execution of the statement, so the set travels instead as a
/// bound blob of sorted big-endian integers that [`register`]'s function binary-searches in
/// place (bound, not written into the text: the text stays short and the same for every
/// scope, so the statement is parsed once). PostgreSQL hashes a long constant `IN` list.
fn shard_in(d: Dialect, col: &str, shards: &[i64], params: &mut Vec<crate::sql::Val>) -> String {
    match d {
        Dialect::Sqlite if shards.len() > 8 => {
            let mut set = Vec::with_capacity(shards.len() * 8);
            for s in shards {
                set.extend_from_slice(&(*s as u64 ^ SIGN).to_be_bytes());
            }
            params.push(crate::sql::Val::Blob(set));
            format!("{IN_SET}({col}, ?)")
        }
        _ => format!("{col} IN ({})", int_list(shards)),
    }
}

/// Flips the sign bit so that signed order is the unsigned order of the big-endian bytes.
const SIGN: u64 = 1 << 63;

/// Adds the set-membership function [`shard_in`] writes to a SQLite connection.
pub(crate) fn register(c: &rusqlite::Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    use rusqlite::types::ValueRef;
    c.create_scalar_function(
        IN_SET,
        2,
        FunctionFlags::SQLITE_UTF8
            | FunctionFlags::SQLITE_DETERMINISTIC
            | FunctionFlags::SQLITE_INNOCUOUS,
        |ctx| {
            let (ValueRef::Integer(x), ValueRef::Blob(set)) = (ctx.get_raw(0), ctx.get_raw(1))
            else {
                return Ok(false);
            };
            Ok(in_sorted_set(set, x))
        },
    )
}

/// Whether `x` is in `set`, 8-byte big-endian sign-flipped integers in ascending order.
fn in_sorted_set(set: &[u8], x: i64) -> bool {
    let key = (x as u64 ^ SIGN).to_be_bytes();
    let n = set.len() / 8;
    let (mut lo, mut hi) = (0usize, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match set[mid * 8..mid * 8 + 8].cmp(&key[..]) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

/// Integers as a SQL list. They are ours (shards, interned ids), never client text, so they
/// are written inline: a province-sized grant list would overflow bound parameters.
pub(crate) fn int_list(v: &[i64]) -> String {
    if v.is_empty() {
        return "-1".into();
    }
    v.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_sets_match_in_lists() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        register(&c).unwrap();
        let shards: Vec<i64> = (0..40)
            .map(|i: i64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15u64 as i64))
            .chain([i64::MIN, -1, 1, i64::MAX])
            .collect::<BTreeSet<i64>>()
            .into_iter()
            .collect();
        let mut params = Vec::new();
        let set = shard_in(Dialect::Sqlite, "?1", &shards, &mut params);
        assert!(set.starts_with(IN_SET), "{set}");
        let crate::sql::Val::Blob(blob) = &params[0] else {
            panic!("the set is a blob");
        };
        let probes = shards
            .iter()
            .flat_map(|s| [*s, s.wrapping_add(1), s.wrapping_sub(1)])
            .chain([0, 2, i64::MIN + 1]);
        for x in probes {
            let got: bool = c
                .query_row(&format!("SELECT {set}"), rusqlite::params![x, blob], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(got, shards.contains(&x), "{x}");
        }
        assert!(shard_in(Dialect::Postgres, "s", &shards[..2], &mut params).contains(" IN ("));
    }

    #[test]
    fn permits_follows_the_rules() {
        let r = RowScope {
            types: None,
            sources: ["urn:org:a".to_string()].into(),
            shards: [(7, 0), (8, hutong_fhir::security::MENTAL_HEALTH)].into(),
            reference: ["Organization".to_string()].into(),
            everywhere: None,
        };
        let psy = hutong_fhir::security::MENTAL_HEALTH;
        assert!(r.permits("Observation", 99, "urn:org:a", psy), "own data");
        assert!(r.permits("Observation", 7, "urn:org:b", 0), "granted shard");
        assert!(
            !r.permits("Observation", 7, "urn:org:b", psy),
            "category not opened"
        );
        assert!(
            r.permits("Observation", 8, "urn:org:b", psy),
            "category opened"
        );
        assert!(!r.permits("Observation", 9, "urn:org:b", 0), "not granted");
        assert!(
            r.permits("Organization", 0, "urn:org:b", 0),
            "reference data"
        );
        assert!(
            !r.permits("Task", 0, "urn:org:b", 0),
            "shard 0 but not reference"
        );
        let typed = RowScope {
            types: Some(["Observation".to_string()].into()),
            ..r.clone()
        };
        assert!(!typed.permits("Patient", 99, "urn:org:a", 0));
        let op = RowScope {
            types: Some(["Patient".to_string()].into()),
            everywhere: Some(0),
            ..Default::default()
        };
        assert!(op.permits("Patient", 12, "urn:org:x", 0));
        assert!(!op.permits("Patient", 12, "urn:org:x", psy));
        assert!(Scope::All.permits("Task", 0, "", hutong_fhir::security::ALL));
        assert!(!Scope::none().permits("Organization", 0, "", 0));
    }
}
