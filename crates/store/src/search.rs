//! FHIR search: request parameters → a [`Query`] of conditions → SQL over the index tables.
//!
//! Every condition compiles to a sub-select of `(shard, rid)` pairs; the first one drives the
//! query (so an index does the selective work) and the rest filter it. Chains join through
//! `ix_ref` to the target's conditions; `_has` runs the other way.
//!
//! One file past the ~800 lines we keep to, because the search compiler: every parameter type
//! compiles to the same sub-select shape, and chains, `_has`, `_include` and paging must agree
//! on it.

use std::collections::HashSet;

use hutong_fhir::date::{self, now_ms};
use hutong_fhir::{Definitions, ParamType, Reference};

use crate::row::{stored_from, RowMeta};
use crate::schema::Catalog;
use crate::scope::Scope;
use crate::sql::{Cells, Conn, Dialect, Val};
use crate::{StoreError, Stored};

/// Why a search request was refused (always the client's fault: 400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SearchError {
    #[error("Unknown search parameter '{param}' for {rtype}")]
    UnknownParam { rtype: String, param: String },
    #[error("Invalid value '{value}' for search parameter '{param}': {why}")]
    InvalidValue {
        param: String,
        value: String,
        why: String,
    },
    #[error("Modifier ':{modifier}' is not supported on search parameter '{param}'")]
    Modifier { param: String, modifier: String },
    #[error("{0}")]
    Unsupported(String),
}

/// Whether to count all matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    None,
    Accurate,
}

/// An `_include` or `_revinclude`.
#[derive(Debug, Clone, PartialEq)]
pub struct Include {
    pub source: String,
    /// The reference parameter, or `*` for all of them.
    pub param: String,
    pub target: Option<String>,
    pub iterate: bool,
    pub reverse: bool,
}

/// A parsed search.
#[derive(Debug, Clone)]
pub struct Query {
    pub rtype: String,
    conds: Vec<Cond>,
    sort: Vec<(String, bool)>,
    pub count: usize,
    pub offset: usize,
    pub total: Total,
    pub includes: Vec<Include>,
    /// `_summary=count`: only the total.
    pub count_only: bool,
    /// Parameters that were not understood and ignored (lenient handling).
    pub ignored: Vec<String>,
    /// The parameters that took effect, for `self`/`next` links.
    pub canonical: Vec<(String, String)>,
}

/// A page of results.
#[derive(Debug, Default)]
pub struct Page {
    pub matches: Vec<Stored>,
    pub included: Vec<Stored>,
    pub total: Option<u64>,
    pub has_more: bool,
}

/// Parameters of `Patient/{id}/$everything`.
#[derive(Debug, Clone, Default)]
pub struct Everything {
    pub patient: String,
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub since: Option<i64>,
    pub types: Vec<String>,
    pub count: usize,
    pub offset: usize,
}

#[derive(Debug, Clone)]
enum Cond {
    Param {
        rtype: String,
        code: String,
        kind: ParamType,
        modifier: Option<String>,
        values: Vec<String>,
    },
    Chain {
        rtype: String,
        code: String,
        target: String,
        inner: Box<Cond>,
    },
    Has {
        rtype: String,
        source: String,
        param: String,
        inner: Box<Cond>,
    },
    AnyOf(Vec<Cond>),
    Id(Vec<String>),
    LastUpdated(Vec<String>),
    Compartment {
        rtype: String,
        patient: String,
    },
}

/// Parameters that shape the result, not the match.
const RESULT_PARAMS: [&str; 12] = [
    "_count",
    "_offset",
    "_sort",
    "_total",
    "_include",
    "_revinclude",
    "_summary",
    "_elements",
    "_format",
    "_pretty",
    "_contained",
    "_containedType",
];

pub const DEFAULT_COUNT: usize = 20;
pub const MAX_COUNT: usize = 1000;

fn split_values(v: &str) -> Vec<String> {
    // Commas separate alternatives; `\,` is a literal comma.
    let mut out = vec![String::new()];
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars
                .peek()
                .is_some_and(|n| matches!(n, ',' | '$' | '|' | '\\')) =>
            {
                out.last_mut().unwrap().push(chars.next().unwrap());
            }
            ',' => out.push(String::new()),
            _ => out.last_mut().unwrap().push(c),
        }
    }
    out
}

fn invalid(param: &str, value: &str, why: &str) -> SearchError {
    SearchError::InvalidValue {
        param: param.into(),
        value: value.into(),
        why: why.into(),
    }
}

impl Query {
    /// A query that matches everything of `rtype`, first page.
    pub fn all(rtype: &str) -> Query {
        Query {
            rtype: rtype.to_string(),
            conds: Vec::new(),
            sort: Vec::new(),
            count: DEFAULT_COUNT,
            offset: 0,
            total: Total::Accurate,
            includes: Vec::new(),
            count_only: false,
            ignored: Vec::new(),
            canonical: Vec::new(),
        }
    }

    /// Parses request parameters. With `strict`, an unknown parameter is an error; otherwise
    /// it is ignored and listed in `ignored`.
    pub fn parse(
        rtype: &str,
        params: &[(String, String)],
        strict: bool,
    ) -> Result<Query, SearchError> {
        let defs = Definitions::get();
        if !defs.is_resource_type(rtype) {
            return Err(SearchError::Unsupported(format!(
                "Unknown resource type {rtype}"
            )));
        }
        let mut q = Query::all(rtype);
        for (k, v) in params {
            let name = k.split(':').next().unwrap_or(k);
            match name {
                "_count" => {
                    q.count = v
                        .parse::<usize>()
                        .map_err(|_| invalid(k, v, "not a number"))?
                        .min(MAX_COUNT)
                }
                "_offset" => q.offset = v.parse().map_err(|_| invalid(k, v, "not a number"))?,
                "_total" => {
                    q.total = match v.as_str() {
                        "none" => Total::None,
                        "accurate" | "estimate" => Total::Accurate,
                        _ => return Err(invalid(k, v, "expected none, estimate or accurate")),
                    }
                }
                "_summary" if v == "count" => q.count_only = true,
                "_sort" => {
                    for s in v.split(',').filter(|s| !s.is_empty()) {
                        let (desc, code) = match s.strip_prefix('-') {
                            Some(c) => (true, c),
                            None => (false, s),
                        };
                        if defs.param(rtype, code).is_none() {
                            return Err(SearchError::UnknownParam {
                                rtype: rtype.into(),
                                param: code.into(),
                            });
                        }
                        q.sort.push((code.to_string(), desc));
                    }
                }
                "_include" | "_revinclude" => {
                    let iterate = k.ends_with(":iterate") || k.ends_with(":recurse");
                    let parts: Vec<&str> = v.split(':').collect();
                    if parts.len() < 2 || parts.len() > 3 || !defs.is_resource_type(parts[0]) {
                        return Err(invalid(k, v, "expected SourceType:param[:TargetType]"));
                    }
                    if parts[1] != "*" {
                        match defs.param(parts[0], parts[1]) {
                            Some(p) if p.kind == ParamType::Reference => {}
                            _ => {
                                return Err(invalid(k, v, "not a reference parameter of that type"))
                            }
                        }
                    }
                    q.includes.push(Include {
                        source: parts[0].into(),
                        param: parts[1].into(),
                        target: parts.get(2).map(|s| s.to_string()),
                        iterate,
                        reverse: name == "_revinclude",
                    });
                }
                n if RESULT_PARAMS.contains(&n) => {}
                // Full-text search is not offered: asked for, it is an unknown parameter
                // (an error when strict, reported as ignored otherwise), never a silent
                // empty result.
                "_text" | "_content" if strict => {
                    return Err(SearchError::Unsupported(format!(
                        "{name} (full-text search) is not supported: search by the elements' own parameters (e.g. code, name, value-string)"
                    )))
                }
                "_text" | "_content" => {
                    q.ignored.push(k.clone());
                    continue;
                }
                _ => match parse_cond(rtype, k, v) {
                    Ok(c) => q.conds.push(c),
                    Err(SearchError::UnknownParam { .. }) if !strict => {
                        q.ignored.push(k.clone());
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            }
            if !matches!(name, "_offset") {
                q.canonical.push((k.clone(), v.clone()));
            }
        }
        Ok(q)
    }

    /// Restricts the query to one Patient's compartment.
    pub fn in_compartment(mut self, patient: &str) -> Result<Query, SearchError> {
        if self.rtype != "Patient" && Definitions::get().compartment_params(&self.rtype).is_none() {
            return Err(SearchError::Unsupported(format!(
                "{} is not in the Patient compartment",
                self.rtype
            )));
        }
        self.conds.push(Cond::Compartment {
            rtype: self.rtype.clone(),
            patient: patient.into(),
        });
        Ok(self)
    }

    /// The same conditions, asking only whether there are zero, one or several matches
    /// (conditional create, update, delete and references).
    pub fn probe(mut self) -> Query {
        self.count = 2;
        self.offset = 0;
        self.total = Total::None;
        self.includes.clear();
        self.sort.clear();
        self
    }

    /// True when the query has no matching conditions.
    pub fn is_empty(&self) -> bool {
        self.conds.is_empty()
    }
}

fn parse_cond(rtype: &str, key: &str, value: &str) -> Result<Cond, SearchError> {
    let defs = Definitions::get();
    let unknown = || SearchError::UnknownParam {
        rtype: rtype.into(),
        param: key.into(),
    };
    if let Some(rest) = key.strip_prefix("_has:") {
        let mut it = rest.splitn(3, ':');
        let (source, param, inner_key) = match (it.next(), it.next(), it.next()) {
            (Some(s), Some(p), Some(i)) => (s, p, i),
            _ => return Err(invalid(key, value, "expected _has:Type:param:searchparam")),
        };
        if !defs.is_resource_type(source) {
            return Err(unknown());
        }
        match defs.param(source, param) {
            Some(p) if p.kind == ParamType::Reference => {}
            _ => return Err(unknown()),
        }
        let inner = parse_cond(source, inner_key, value)?;
        return Ok(Cond::Has {
            rtype: rtype.into(),
            source: source.into(),
            param: param.into(),
            inner: Box::new(inner),
        });
    }
    // Chains: `subject:Patient.name=x`, `subject.name=x`.
    if let Some((head, rest)) = key.split_once('.') {
        let (code, type_mod) = match head.split_once(':') {
            Some((c, t)) => (c, Some(t)),
            None => (head, None),
        };
        let p = defs.param(rtype, code).ok_or_else(unknown)?;
        if p.kind != ParamType::Reference {
            return Err(invalid(key, value, "chaining needs a reference parameter"));
        }
        let targets: Vec<&String> = match type_mod {
            Some(t) if p.targets.iter().any(|x| x == t) => {
                p.targets.iter().filter(|x| *x == t).collect()
            }
            Some(_) => {
                return Err(invalid(
                    key,
                    value,
                    "that type is not a target of the parameter",
                ))
            }
            None => p.targets.iter().collect(),
        };
        let inner_code = rest.split(['.', ':']).next().unwrap_or(rest);
        let mut alts = Vec::new();
        for t in targets {
            if defs.param(t, inner_code).is_some() || inner_code.starts_with("_has") {
                alts.push(Cond::Chain {
                    rtype: rtype.into(),
                    code: code.into(),
                    target: t.clone(),
                    inner: Box::new(parse_cond(t, rest, value)?),
                });
            }
        }
        return match alts.len() {
            0 => Err(unknown()),
            1 => Ok(alts.pop().unwrap()),
            _ => Ok(Cond::AnyOf(alts)),
        };
    }
    let (code, modifier) = match key.split_once(':') {
        Some((c, m)) => (c, Some(m.to_string())),
        None => (key, None),
    };
    let p = defs.param(rtype, code).ok_or_else(unknown)?;
    let values = split_values(value);
    if values.iter().any(String::is_empty) && modifier.as_deref() != Some("missing") {
        return Err(invalid(key, value, "empty value"));
    }
    if let (Some(m), "_id" | "_lastUpdated") = (&modifier, code) {
        return Err(SearchError::Modifier {
            param: code.into(),
            modifier: m.clone(),
        });
    }
    match code {
        "_id" => return Ok(Cond::Id(values)),
        "_lastUpdated" => {
            for v in &values {
                parse_prefixed_date(key, v)?;
            }
            return Ok(Cond::LastUpdated(values));
        }
        _ => {}
    }
    if let Some(m) = &modifier {
        let ok = match m.as_str() {
            "missing" => {
                if value != "true" && value != "false" {
                    return Err(invalid(key, value, "expected true or false"));
                }
                true
            }
            "exact" | "contains" => p.kind == ParamType::String,
            "not" | "text" | "of-type" => p.kind == ParamType::Token,
            "identifier" => p.kind == ParamType::Reference,
            "below" | "above" => p.kind == ParamType::Uri,
            t => p.kind == ParamType::Reference && p.targets.iter().any(|x| x == t),
        };
        if !ok {
            return Err(SearchError::Modifier {
                param: code.into(),
                modifier: m.clone(),
            });
        }
    }
    if p.kind == ParamType::Special || (p.kind == ParamType::Composite && p.components.len() != 2) {
        return Err(SearchError::Unsupported(format!(
            "Search parameter '{code}' is not supported"
        )));
    }
    // Validate values now so a bad one is a 400, not an empty result.
    if modifier.as_deref() != Some("missing") {
        for v in &values {
            match p.kind {
                ParamType::Date => {
                    parse_prefixed_date(key, v)?;
                }
                ParamType::Number | ParamType::Quantity => {
                    parse_prefixed_number(key, v.split('|').next().unwrap_or(v))?;
                }
                ParamType::Composite if !v.contains('$') => {
                    return Err(invalid(
                        key,
                        v,
                        "a composite value has two parts joined by '$'",
                    ));
                }
                _ => {}
            }
        }
    }
    Ok(Cond::Param {
        rtype: rtype.into(),
        code: code.into(),
        kind: p.kind,
        modifier,
        values,
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

fn split_prefix(v: &str) -> (Prefix, &str) {
    let p = match v.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, v),
    };
    (p, &v[2..])
}

fn parse_prefixed_date(key: &str, v: &str) -> Result<(Prefix, date::Range), SearchError> {
    let (p, rest) = split_prefix(v);
    let r = date::parse(rest).ok_or_else(|| invalid(key, v, "not a FHIR date/dateTime"))?;
    Ok((p, r))
}

/// A number with its implicit precision range: `5.4` means [5.35, 5.45).
fn parse_prefixed_number(key: &str, v: &str) -> Result<(Prefix, f64, f64, f64), SearchError> {
    let (p, rest) = split_prefix(v);
    let x: f64 = rest.parse().map_err(|_| invalid(key, v, "not a number"))?;
    if !x.is_finite() {
        return Err(invalid(key, v, "not a finite number"));
    }
    let mantissa = rest.split(['e', 'E']).next().unwrap_or(rest);
    let decimals = mantissa.split_once('.').map_or(0, |(_, d)| d.len()) as i32;
    let exp: i32 = rest
        .split_once(['e', 'E'])
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    let half = 0.5 * 10f64.powi(exp - decimals);
    Ok((p, x, x - half, x + half))
}

/// SQL under construction.
struct Sql<'a> {
    params: Vec<Val>,
    cat: &'a Catalog,
    dialect: Dialect,
    /// What the reader may see: chains and `_has` only look through visible resources.
    scope: &'a Scope,
    /// A condition that cannot be answered (set while building; reported by `run`).
    error: Option<SearchError>,
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

impl Sql<'_> {
    fn p(&mut self, v: impl Into<Val>) -> &'static str {
        self.params.push(v.into());
        "?"
    }

    /// The stored parameter ids serving `code`, as a SQL list (an unknown pair is -1, which
    /// matches nothing).
    fn pid(&self, rtype: &str, code: &str) -> String {
        let (ids, _) = self.cat.pids(rtype, code);
        ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
    }

    /// The reference type a derived `X.where(resolve() is T)` parameter is limited to.
    fn only_type(&self, rtype: &str, code: &str) -> Option<i64> {
        self.cat.pids(rtype, code).1
    }

    fn type_id(&self, rtype: &str) -> i64 {
        self.cat.type_id(rtype).unwrap_or(-1)
    }

    /// A sub-select of the `(shard, rid)` pairs that satisfy `c`.
    fn sub_typed(&mut self, c: &Cond) -> String {
        match c {
            Cond::AnyOf(alts) => {
                let parts: Vec<String> = alts.iter().map(|a| self.sub_typed(a)).collect();
                parts.join(" UNION ")
            }
            Cond::Id(_) | Cond::LastUpdated(_) => unreachable!("compiled by sub_for"),
            Cond::Compartment { rtype, patient } => {
                let defs = Definitions::get();
                let pt = self.type_id("Patient");
                if rtype == "Patient" {
                    let a = self.p(pt);
                    let b = self.p(patient.as_str());
                    return format!(
                        "SELECT shard, rid FROM res_route WHERE rtype = {a} AND id = {b}"
                    );
                }
                let pids: Vec<String> = defs
                    .compartment_params(rtype)
                    .unwrap_or(&[])
                    .iter()
                    .map(|p| self.pid(rtype, p))
                    .collect();
                let a = self.p(patient.as_str());
                let b = self.p(pt);
                format!(
                    "SELECT shard, rid FROM ix_ref WHERE tid = {a} AND ttype = {b} AND pid IN ({})",
                    pids.join(",")
                )
            }
            // A chain keeps the referencing side (f) whose target (t) matches the inner
            // condition; `_has` keeps the target whose referencing side matches it.
            Cond::Chain {
                rtype,
                code,
                target,
                inner,
            } => self.link(rtype, code, target, inner, target, ("f", "t")),
            Cond::Has {
                rtype,
                source,
                param,
                inner,
            } => self.link(source, param, rtype, inner, source, ("t", "f")),
            Cond::Param {
                rtype,
                code,
                kind,
                modifier,
                values,
            } => self.param(rtype, code, *kind, modifier.as_deref(), values),
        }
    }

    /// Resources joined through reference parameter `code` of `from` to resources of type
    /// `to`, where `inner` (a condition on `inner_type`) holds on the side named by
    /// `sides.1`; yields the side named by `sides.0`.
    fn link(
        &mut self,
        from: &str,
        code: &str,
        to: &str,
        inner: &Cond,
        inner_type: &str,
        sides: (&str, &str),
    ) -> String {
        let pid = self.pid(from, code);
        let tt = self.type_id(to);
        if self.only_type(from, code).is_some_and(|o| o != tt) {
            return "SELECT shard, rid FROM res WHERE 1 = 0".into();
        }
        let inner_sql = self.sub_for(inner_type, inner);
        let (out, cond) = sides;
        // The side the inner condition tests must be visible, or a chain would tell what an
        // unseen resource contains.
        let visible = match self.scope {
            Scope::All => String::new(),
            Scope::Rows(r) => format!(
                " AND {}",
                r.sql(
                    self.cat,
                    self.dialect,
                    cond,
                    Some(inner_type),
                    &mut self.params,
                    None,
                )
            ),
        };
        format!(
            "SELECT {out}.shard, {out}.rid FROM ix_ref f JOIN res_route t ON t.rtype = f.ttype \
             AND t.id = f.tid WHERE f.pid IN ({pid}) AND f.ttype = {tt} \
             AND ({cond}.shard, {cond}.rid) IN ({inner_sql}){visible}"
        )
    }

    /// Like `sub`, for conditions that need the resource type (ids, `_lastUpdated`).
    fn sub_for(&mut self, rtype: &str, c: &Cond) -> String {
        match c {
            Cond::Id(ids) => {
                let t = self.type_id(rtype);
                let marks: Vec<&str> = ids.iter().map(|i| self.p(i.as_str())).collect();
                format!(
                    "SELECT shard, rid FROM res_route WHERE rtype = {t} AND id IN ({})",
                    marks.join(",")
                )
            }
            Cond::LastUpdated(vals) => {
                let t = self.type_id(rtype);
                let preds: Vec<String> = vals
                    .iter()
                    .filter_map(|v| parse_prefixed_date("_lastUpdated", v).ok())
                    .map(|(p, r)| self.date_pred(p, r, "lastmod", "lastmod + 1"))
                    .collect();
                format!(
                    "SELECT shard, rid FROM res WHERE rtype = {t} AND deleted = 0 AND ({})",
                    preds.join(" OR ")
                )
            }
            other => self.sub_typed(other),
        }
    }

    fn date_pred(&mut self, p: Prefix, r: date::Range, lo: &str, hi: &str) -> String {
        let (slo, shi) = (r.lo, r.hi);
        match p {
            Prefix::Eq => format!("({lo} >= {} AND {hi} <= {})", self.p(slo), self.p(shi)),
            Prefix::Ne => format!("NOT ({lo} >= {} AND {hi} <= {})", self.p(slo), self.p(shi)),
            Prefix::Gt => format!("{hi} > {}", self.p(shi)),
            Prefix::Lt => format!("{lo} < {}", self.p(slo)),
            Prefix::Ge => format!(
                "({hi} > {} OR ({lo} >= {} AND {hi} <= {}))",
                self.p(shi),
                self.p(slo),
                self.p(shi)
            ),
            Prefix::Le => format!(
                "({lo} < {} OR ({lo} >= {} AND {hi} <= {}))",
                self.p(slo),
                self.p(slo),
                self.p(shi)
            ),
            Prefix::Sa => format!("{lo} >= {}", self.p(shi)),
            Prefix::Eb => format!("{hi} <= {}", self.p(slo)),
            Prefix::Ap => {
                // Approximately: within 10% of the distance from now, at least a day.
                let gap = ((now_ms() - slo).abs() / 10).max(86_400_000);
                format!(
                    "({lo} < {} AND {hi} > {})",
                    self.p(shi + gap),
                    self.p(slo - gap)
                )
            }
        }
    }

    fn num_pred(&mut self, p: Prefix, x: f64, slo: f64, shi: f64) -> String {
        match p {
            Prefix::Eq => format!("(lo >= {} AND hi < {})", self.p(slo), self.p(shi)),
            Prefix::Ne => format!("NOT (lo >= {} AND hi < {})", self.p(slo), self.p(shi)),
            Prefix::Gt => format!("hi > {}", self.p(x)),
            Prefix::Lt => format!("lo < {}", self.p(x)),
            Prefix::Ge => format!("hi >= {}", self.p(x)),
            Prefix::Le => format!("lo <= {}", self.p(x)),
            Prefix::Sa => format!("lo > {}", self.p(x)),
            Prefix::Eb => format!("hi < {}", self.p(x)),
            Prefix::Ap => {
                let m = (x * 0.1).abs();
                format!("(lo >= {} AND hi <= {})", self.p(x - m), self.p(x + m))
            }
        }
    }

    fn string_pred(&mut self, modifier: Option<&str>, v: &str) -> String {
        let n = hutong_fhir::normalize_string(v);
        match modifier {
            Some("exact") => format!(
                "(raw = {} OR (raw = '' AND norm = {}))",
                self.p(v),
                self.p(v)
            ),
            Some("contains") => {
                format!(
                    "norm LIKE {} ESCAPE '\\'",
                    self.p(format!("%{}%", like_escape(&n)))
                )
            }
            _ => match self.dialect {
                // SQLite's LIKE cannot use a binary index: a range can.
                Dialect::Sqlite => {
                    let hi = format!("{n}\u{10FFFF}");
                    format!("(norm >= {} AND norm < {})", self.p(n), self.p(hi))
                }
                Dialect::Postgres => {
                    format!(
                        "norm LIKE {} ESCAPE '\\'",
                        self.p(format!("{}%", like_escape(&n)))
                    )
                }
            },
        }
    }

    fn token_pred(&mut self, v: &str) -> String {
        match v.split_once('|') {
            None => format!("code = {}", self.p(v)),
            Some((sys, code)) => {
                let sid = self.cat.system_id(sys).unwrap_or(-1);
                if code.is_empty() {
                    format!("sid = {}", self.p(sid))
                } else {
                    format!("(code = {} AND sid = {})", self.p(code), self.p(sid))
                }
            }
        }
    }

    fn param(
        &mut self,
        rtype: &str,
        code: &str,
        kind: ParamType,
        modifier: Option<&str>,
        values: &[String],
    ) -> String {
        if code == "_source" {
            return self.source_param(rtype, modifier, values);
        }
        if kind == ParamType::Composite {
            if let Some((base, own_rows)) = split_base(rtype, code) {
                return self.split_composite(rtype, code, base, own_rows, modifier, values);
            }
        }
        self.param_rows(rtype, code, kind, modifier, values)
    }

    /// A split composite (`hutong_fhir::SearchParamDef::split`), or a `base | more` one whose
    /// base is split: each `first$second` value is the resources where the first component's
    /// parameter matches `first` and the second's matches `second`; a union composite adds
    /// the pairs it stores itself (of `Observation.component`, say).
    fn split_composite(
        &mut self,
        rtype: &str,
        code: &str,
        base: &'static hutong_fhir::SearchParamDef,
        own_rows: bool,
        modifier: Option<&str>,
        values: &[String],
    ) -> String {
        let [first, second] = &base.components[..] else {
            return "SELECT shard, rid FROM res WHERE 1 = 0".into();
        };
        let both = |this: &mut Self, a: &[String], b: &[String], m: Option<&str>| {
            let x = this.param(rtype, &first.code, first.kind, m, a);
            let y = this.param(rtype, &second.code, second.kind, m, b);
            format!(
                "SELECT shard, rid FROM (SELECT shard, rid FROM ({x}) x \
                 INTERSECT SELECT shard, rid FROM ({y}) y) b"
            )
        };
        if modifier == Some("missing") {
            let t = self.type_id(rtype);
            let no = ["false".to_string()];
            let mut present = both(self, &no, &no, Some("missing"));
            if own_rows {
                let own = self.param_rows(rtype, code, ParamType::Composite, Some("missing"), &no);
                present = format!("{present} UNION {own}");
            }
            return if values.first().map(String::as_str) == Some("true") {
                format!(
                    "{} EXCEPT SELECT shard, rid FROM ({present}) p",
                    all_of_type(t)
                )
            } else {
                present
            };
        }
        let mut parts = Vec::new();
        if own_rows {
            parts.push(self.param_rows(rtype, code, ParamType::Composite, modifier, values));
        }
        for v in values {
            match v.split_once('$') {
                Some((a, b)) => parts.push(both(self, &[a.to_string()], &[b.to_string()], None)),
                None => parts.push("SELECT shard, rid FROM res WHERE 1 = 0".into()),
            }
        }
        parts.join(" UNION ")
    }

    /// A parameter's rows in its index table.
    fn param_rows(
        &mut self,
        rtype: &str,
        code: &str,
        kind: ParamType,
        modifier: Option<&str>,
        values: &[String],
    ) -> String {
        let pid = self.pid(rtype, code);
        let table = match kind {
            ParamType::String => "ix_str",
            ParamType::Token | ParamType::Uri => "ix_tok",
            ParamType::Date => "ix_date",
            ParamType::Reference => "ix_ref",
            ParamType::Number | ParamType::Quantity => "ix_num",
            ParamType::Composite => "ix_comp",
            ParamType::Special => "ix_num",
        };
        let restrict = match self.only_type(rtype, code) {
            Some(t) if kind == ParamType::Reference => format!(" AND ttype = {t}"),
            _ => String::new(),
        };
        if modifier == Some("missing") {
            let t = self.type_id(rtype);
            return if values.first().map(String::as_str) == Some("true") {
                format!(
                    "{} EXCEPT SELECT shard, rid FROM {table} WHERE pid IN ({pid}){restrict}",
                    all_of_type(t)
                )
            } else {
                format!("SELECT shard, rid FROM {table} WHERE pid IN ({pid}){restrict}")
            };
        }
        let mut preds = Vec::new();
        let mut table = table;
        let mut pid = pid;
        let blinded = self.cat.codec.protector().filter(|p| p.blinds(rtype, code));
        if let Some(prot) = blinded {
            // Identifying values are stored as keyed hashes: only whole values (and name
            // prefixes) can be matched.
            for v in values {
                let pred = match (kind, modifier) {
                    (ParamType::String, None) => {
                        let n = hutong_fhir::normalize_string(v);
                        let cut: String =
                            n.chars().take(crate::codec::BLIND_PREFIX_CHARS).collect();
                        let key = if n.chars().count() > crate::codec::BLIND_PREFIX_CHARS {
                            n
                        } else {
                            cut
                        };
                        format!("norm = {}", self.p(prot.blind("prefix", &key)))
                    }
                    (ParamType::String, Some("exact")) => {
                        format!("norm = {}", self.p(prot.blind("exact", v)))
                    }
                    (ParamType::Token, None) => match v.split_once('|') {
                        Some((sys, c)) if !c.is_empty() => {
                            self.token_pred(&format!("{sys}|{}", prot.blind("token", c)))
                        }
                        Some(_) => self.token_pred(v),
                        None => self.token_pred(&prot.blind("token", v)),
                    },
                    (ParamType::Token, Some("of-type")) => {
                        pid = self.pid(rtype, &format!("{code}:of-type"));
                        match v.split_once('|') {
                            Some((ts, rest)) if rest.contains('|') => {
                                self.token_pred(&format!("{ts}|{}", prot.blind("token", rest)))
                            }
                            _ => "1 = 0".to_string(),
                        }
                    }
                    _ => {
                        self.error =
                            Some(SearchError::Unsupported(format!(
                            "{rtype}.{code} holds identifying data, kept encrypted: it matches \
                             whole values{} only, not :{}",
                            if kind == ParamType::String { " and name prefixes" } else { "" },
                            modifier.unwrap_or("")
                        )));
                        "1 = 0".to_string()
                    }
                };
                preds.push(pred);
            }
            return format!(
                "SELECT shard, rid FROM {table} WHERE pid IN ({pid}) AND ({})",
                preds.join(" OR ")
            );
        }
        for v in values {
            let pred = match kind {
                ParamType::String => self.string_pred(modifier, v),
                ParamType::Token => match modifier {
                    Some("text") => {
                        table = "ix_txt";
                        pid = self.pid(rtype, &format!("{code}:text"));
                        self.string_pred(Some("contains"), v)
                    }
                    Some("of-type") => {
                        pid = self.pid(rtype, &format!("{code}:of-type"));
                        let parts: Vec<&str> = v.splitn(3, '|').collect();
                        if parts.len() != 3 {
                            "1 = 0".to_string()
                        } else {
                            self.token_pred(&format!("{}|{}|{}", parts[0], parts[1], parts[2]))
                        }
                    }
                    _ => self.token_pred(v),
                },
                ParamType::Uri => self.uri_pred("code", modifier, v),
                ParamType::Date => match parse_prefixed_date(code, v) {
                    Ok((p, r)) => self.date_pred(p, r, "lo", "hi"),
                    Err(_) => "1 = 0".into(),
                },
                ParamType::Number | ParamType::Quantity => {
                    let mut parts = v.splitn(3, '|');
                    let num = parts.next().unwrap_or("");
                    let Ok((p, x, lo, hi)) = parse_prefixed_number(code, num) else {
                        preds.push("1 = 0".into());
                        continue;
                    };
                    let mut pred = self.num_pred(p, x, lo, hi);
                    let (sys, unit) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    if !unit.is_empty() {
                        pred = format!("({pred} AND code = {})", self.p(unit));
                    }
                    if !sys.is_empty() {
                        let sid = self.cat.system_id(sys).unwrap_or(-1);
                        pred = format!("({pred} AND sid = {})", self.p(sid));
                    }
                    pred
                }
                ParamType::Reference => {
                    if modifier == Some("identifier") {
                        table = "ix_tok";
                        pid = self.pid(rtype, &format!("{code}:identifier"));
                        self.token_pred(v)
                    } else {
                        let p = self.ref_pred(modifier, v);
                        format!("({p}{restrict})")
                    }
                }
                ParamType::Composite => self.composite_pred(rtype, code, v),
                ParamType::Special => "1 = 0".into(),
            };
            preds.push(pred);
        }
        let body = format!(
            "SELECT shard, rid FROM {table} WHERE pid IN ({pid}) AND ({})",
            preds.join(" OR ")
        );
        if modifier == Some("not") {
            let t = self.type_id(rtype);
            return format!("{} EXCEPT {body}", all_of_type(t));
        }
        body
    }

    /// A uri value against column `col`: equal, `:below` (a prefix of it), or `:above` (it
    /// is a prefix of the value, at `/` boundaries).
    fn uri_pred(&mut self, col: &str, modifier: Option<&str>, v: &str) -> String {
        match modifier {
            Some("below") => format!(
                "{col} LIKE {} ESCAPE '\\'",
                self.p(format!("{}%", like_escape(v)))
            ),
            Some("above") => {
                let mut prefixes = Vec::new();
                let mut acc = String::new();
                for (i, seg) in v.split('/').enumerate() {
                    if i > 0 {
                        acc.push('/');
                    }
                    acc.push_str(seg);
                    prefixes.push(acc.clone());
                }
                let marks: Vec<&str> = prefixes.into_iter().map(|p| self.p(p)).collect();
                format!("{col} IN ({})", marks.join(","))
            }
            _ => format!("{col} = {}", self.p(v)),
        }
    }

    /// `_source` is answered from the version's interned submitter (`res.src`), which the
    /// write stamps from `meta.source`, rather than from an index row per resource.
    fn source_param(&mut self, rtype: &str, modifier: Option<&str>, values: &[String]) -> String {
        let t = self.type_id(rtype);
        if modifier == Some("missing") {
            // A version stored without `meta.source` has the empty source, id 0.
            let missing = values.first().map(String::as_str) == Some("true");
            return format!(
                "SELECT shard, rid FROM res WHERE rtype = {t} AND deleted = 0 AND src {} 0",
                if missing { "=" } else { "<>" }
            );
        }
        let preds: Vec<String> = values
            .iter()
            .map(|v| self.uri_pred("name", modifier, v))
            .collect();
        let sources = format!(
            "SELECT cid FROM catalog WHERE kind = {} AND ({})",
            crate::schema::KIND_SYSTEM,
            preds.join(" OR ")
        );
        format!(
            "SELECT shard, rid FROM res WHERE rtype = {t} AND deleted = 0 AND src IN ({sources})"
        )
    }

    fn ref_pred(&mut self, type_mod: Option<&str>, v: &str) -> String {
        if let Some(r) = Reference::parse(v) {
            let tt = self.type_id(&r.rtype);
            return format!("(tid = {} AND ttype = {})", self.p(r.id), self.p(tt));
        }
        if hutong_fhir::is_valid_id(v) {
            return match type_mod {
                Some(t) => {
                    let tt = self.type_id(t);
                    format!("(tid = {} AND ttype = {})", self.p(v), self.p(tt))
                }
                None => format!("tid = {}", self.p(v)),
            };
        }
        format!("(tid = {} AND ttype = 0)", self.p(v))
    }

    fn composite_pred(&mut self, rtype: &str, code: &str, v: &str) -> String {
        let Some(def) = Definitions::get().param(rtype, code) else {
            return "1 = 0".into();
        };
        let Some((first, second)) = v.split_once('$') else {
            return "1 = 0".into();
        };
        let key = match first.split_once('|') {
            Some((sys, c)) if !sys.is_empty() => format!("k = {}", self.p(format!("{sys}|{c}"))),
            Some((_, c)) => format!("k = {}", self.p(format!("|{c}"))),
            None => format!(
                "k LIKE {} ESCAPE '\\'",
                self.p(format!("%|{}", like_escape(first)))
            ),
        };
        let second_pred = match def.components.get(1).map(|c| c.kind) {
            Some(ParamType::Quantity) | Some(ParamType::Number) => {
                let mut parts = second.splitn(3, '|');
                let num = parts.next().unwrap_or("");
                match parse_prefixed_number(code, num) {
                    Ok((p, x, lo, hi)) => {
                        let mut pred = self.num_pred(p, x, lo, hi);
                        if let Some(unit) = parts.nth(1).filter(|u| !u.is_empty()) {
                            pred = format!("({pred} AND v = {})", self.p(unit));
                        }
                        pred
                    }
                    Err(_) => "1 = 0".into(),
                }
            }
            Some(ParamType::Date) => match parse_prefixed_date(code, second) {
                Ok((p, r)) => self.date_pred(p, r, "lo", "hi"),
                Err(_) => "1 = 0".into(),
            },
            Some(ParamType::Token) => match second.split_once('|') {
                Some((s, c)) if !s.is_empty() => format!("v = {}", self.p(format!("{s}|{c}"))),
                _ => {
                    let c = second.rsplit('|').next().unwrap_or(second);
                    format!(
                        "v LIKE {} ESCAPE '\\'",
                        self.p(format!("%|{}", like_escape(c)))
                    )
                }
            },
            _ => format!("v = {}", self.p(hutong_fhir::normalize_string(second))),
        };
        format!("({key} AND {second_pred})")
    }
}

const SELECT_RES: &str =
    "r.shard, r.rid, r.rtype, r.version, r.lastmod, r.deleted, r.shard, r.src, r.sens, r.body, rr.id";

/// A row selected as [`SELECT_RES`], read in place: its key and the stored version, the body
/// decompressed straight from the driver's buffer.
fn res_cells(cat: &Catalog, r: &dyn Cells) -> Result<(Key, Stored), StoreError> {
    let m = RowMeta::at(r, 2);
    let s = stored_from(cat, m, r.int(1), r.text(10).to_string(), r.blob(9))?;
    Ok(((r.int(0), r.int(1)), s))
}

/// The stored versions a query selecting [`SELECT_RES`] returns, in its order.
fn select_res(
    conn: &mut dyn Conn,
    cat: &Catalog,
    sql: &str,
    params: &[Val],
) -> Result<Vec<Stored>, StoreError> {
    let mut out = Vec::new();
    conn.query_each(sql, params, &mut |r| {
        out.push(res_cells(cat, r)?.1);
        Ok(())
    })?;
    Ok(out)
}

/// The current resources of a type, as the left side of `EXCEPT` for `:not` and
/// `:missing=true`. `EXCEPT` rather than `(shard, rid) NOT IN (…)`: SQLite ran the row-value
/// `NOT IN` against the subquery once per resource of the type — 89 s for `code:not` over
/// 148,000 Observations — where `EXCEPT` reads each side once.
fn all_of_type(t: i64) -> String {
    format!("SELECT shard, rid FROM res WHERE rtype = {t} AND deleted = 0")
}

/// Runs a query: the page of matches, the total, and the included resources.
pub(crate) fn run(
    conn: &mut dyn Conn,
    cat: &Catalog,
    q: &Query,
    scope: &Scope,
) -> Result<Page, StoreError> {
    let mut b = Sql {
        params: Vec::new(),
        cat,
        dialect: conn.dialect(),
        scope,
        error: None,
    };
    let t = b.type_id(&q.rtype);
    let mut subs: Vec<String> = q.conds.iter().map(|c| b.sub_for(&q.rtype, c)).collect();
    if let Some(e) = b.error.take() {
        return Err(e.into());
    }
    // Phase 1 works on keys only: the first condition drives (index rows exist only for
    // current, non-deleted resources of the parameter's type), the others filter.
    let (from, mut wheres) = if subs.is_empty() {
        (
            "res m".to_string(),
            vec![format!("m.rtype = {t}"), "m.deleted = 0".to_string()],
        )
    } else {
        let driver = subs.remove(0);
        if q.conds.first().is_some_and(one_row_per_resource) {
            // Already one row per resource, in (shard, rid) order within the index: no
            // DISTINCT, so the page can be read off the index without materialising.
            (format!("({driver}) m"), Vec::new())
        } else {
            (
                format!("(SELECT DISTINCT shard, rid FROM ({driver}) AS d0) m"),
                Vec::new(),
            )
        }
    };
    for s in subs {
        wheres.push(format!("(m.shard, m.rid) IN ({s})"));
    }
    let mut from = from;
    if let Scope::Rows(r) = scope {
        // Every index row's resource has exactly one route row: joining it keeps one row
        // per match and their (shard, rid) order.
        let route = r.needs_route(cat).then(|| {
            from.push_str(" JOIN res_route sv ON sv.rid = m.rid");
            "sv"
        });
        wheres.push(r.sql(
            cat,
            conn.dialect(),
            "m",
            Some(&q.rtype),
            &mut b.params,
            route,
        ));
    }
    let where_sql = if wheres.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", wheres.join(" AND "))
    };
    let base = format!("FROM {from}{where_sql}");
    let mut page = Page::default();
    if q.total == Total::Accurate || q.count_only {
        let rows = conn.query(&format!("SELECT COUNT(*) {base}"), &b.params)?;
        page.total = Some(rows[0][0].int() as u64);
    }
    if q.count_only || q.count == 0 {
        return Ok(page);
    }
    // Sort keys as computed columns, ordered NULLs-last on both backends; storage order
    // (shard, rid) breaks ties and is the default, which the driving index already has.
    let defs = Definitions::get();
    let mut cols = Vec::new();
    let mut order = Vec::new();
    // Sort keys in the value-first tables cannot be looked up per match: they are gathered
    // in one pass over the parameter's rows and the matches sorted here.
    let mut passes: Vec<(usize, bool, String)> = Vec::new();
    for (i, (code, desc)) in q.sort.iter().enumerate() {
        let agg = if *desc { "MAX" } else { "MIN" };
        let expr = match code.as_str() {
            "_lastUpdated" => {
                "(SELECT x.lastmod FROM res x WHERE x.shard = m.shard AND x.rid = m.rid)"
                    .to_string()
            }
            "_id" => "(SELECT x.id FROM res_route x WHERE x.rid = m.rid)".to_string(),
            _ => {
                let Some(p) = defs.param(&q.rtype, code) else {
                    continue;
                };
                let pids: Vec<String> = cat
                    .pids(&q.rtype, code)
                    .0
                    .iter()
                    .map(i64::to_string)
                    .collect();
                let (table, col) = match p.kind {
                    ParamType::Date => ("ix_date", if *desc { "hi" } else { "lo" }),
                    ParamType::String => ("ix_str", "norm"),
                    ParamType::Token | ParamType::Uri => ("ix_tok", "code"),
                    ParamType::Number | ParamType::Quantity => ("ix_num", "lo"),
                    ParamType::Reference => ("ix_ref", "tid"),
                    _ => continue,
                };
                let pids = pids.join(",");
                if matches!(table, "ix_date" | "ix_str") {
                    // Keyed by resource: one seek per match. The unary `+` keeps SQLite off
                    // the value index, which serves MIN/MAX by `pid` alone and so scanned
                    // every row of the parameter for each match (seconds for one patient).
                    format!(
                        "(SELECT {agg}(x.{col}) FROM {table} x WHERE x.shard = m.shard \
                         AND x.rid = m.rid AND +x.pid IN ({pids}))"
                    )
                } else {
                    passes.push((
                        cols.len(),
                        *desc,
                        format!("SELECT shard, rid, {col} FROM {table} WHERE pid IN ({pids})"),
                    ));
                    "NULL".to_string()
                }
            }
        };
        order.push((cols.len(), *desc));
        cols.push(format!("{expr} AS s{i}"));
    }
    let extra = if cols.is_empty() {
        String::new()
    } else {
        format!(", {}", cols.join(", "))
    };
    let mut params = b.params;
    let mut keys: Vec<(i64, i64)> = if passes.is_empty() {
        let mut by: Vec<String> = order
            .iter()
            .map(|(c, desc)| {
                let dir = if *desc { "DESC" } else { "ASC" };
                format!("(q.s{c} IS NULL), q.s{c} {dir}")
            })
            .collect();
        by.push("q.shard, q.rid".into());
        let sql = format!(
            "SELECT shard, rid FROM (SELECT m.shard, m.rid{extra} {base}) q \
             ORDER BY {} LIMIT ? OFFSET ?",
            by.join(", ")
        );
        params.push(Val::Int(q.count as i64 + 1));
        params.push(Val::Int(q.offset as i64));
        conn.query(&sql, &params)?
            .iter()
            .map(|r| (r[0].int(), r[1].int()))
            .collect()
    } else {
        let mut rows = conn.query(&format!("SELECT m.shard, m.rid{extra} {base}"), &params)?;
        let at: std::collections::HashMap<(i64, i64), usize> = rows
            .iter()
            .enumerate()
            .map(|(n, r)| ((r[0].int(), r[1].int()), n))
            .collect();
        for (c, desc, sql) in &passes {
            let col = 2 + c;
            conn.query_each(sql, &[], &mut |r| {
                if let Some(&n) = at.get(&(r.int(0), r.int(1))) {
                    let v = r.val(2);
                    let keep = &mut rows[n][col];
                    let wanted = if *desc {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Less
                    };
                    if matches!(keep, Val::Null) || compare(&v, keep) == wanted {
                        *keep = v;
                    }
                }
                Ok(())
            })?;
        }
        rows.sort_by(|a, b| {
            for (c, desc) in &order {
                let (x, y) = (&a[2 + c], &b[2 + c]);
                let o = match (matches!(x, Val::Null), matches!(y, Val::Null)) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    (false, false) if *desc => compare(y, x),
                    (false, false) => compare(x, y),
                };
                if o.is_ne() {
                    return o;
                }
            }
            (a[0].int(), a[1].int()).cmp(&(b[0].int(), b[1].int()))
        });
        rows.iter()
            .skip(q.offset)
            .take(q.count + 1)
            .map(|r| (r[0].int(), r[1].int()))
            .collect()
    };
    if keys.len() > q.count {
        keys.truncate(q.count);
        page.has_more = true;
    }
    // Phase 2: the bodies of this page only.
    let matches = fetch_by_keys(conn, cat, &keys)?;
    page.included = includes(conn, cat, &matches, &q.includes, scope)?;
    page.matches = matches;
    Ok(page)
}

/// Sort-key order as SQL has it for one column's values: numbers by value, text by bytes.
fn compare(a: &Val, b: &Val) -> std::cmp::Ordering {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => x.cmp(y),
        (Val::Text(x), Val::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Val::Int(_) | Val::Real(_), Val::Int(_) | Val::Real(_)) => {
            let f = |v: &Val| match v {
                Val::Int(i) => *i as f64,
                Val::Real(r) => *r,
                _ => 0.0,
            };
            f(a).total_cmp(&f(b))
        }
        _ => std::cmp::Ordering::Equal,
    }
}

/// For a composite served by splitting (see `Sql::split_composite`): the split
/// definition, and whether `code` also has rows of its own (a `base | more` composite).
fn split_base(rtype: &str, code: &str) -> Option<(&'static hutong_fhir::SearchParamDef, bool)> {
    let defs = Definitions::get();
    let p = defs.param(rtype, code)?;
    if p.split {
        return Some((p, false));
    }
    match &p.derived {
        Some(hutong_fhir::Derived::Union { base }) => defs
            .param(rtype, base)
            .filter(|b| b.split)
            .map(|b| (b, true)),
        _ => None,
    }
}

/// True when a condition's sub-select yields each resource at most once: a single
/// `system|code` token (the index key is unique per resource), or ids.
fn one_row_per_resource(c: &Cond) -> bool {
    match c {
        Cond::Id(_) => true,
        Cond::Param {
            kind: ParamType::Token,
            modifier: None,
            values,
            rtype,
            code,
        } => {
            values.len() == 1
                && values[0]
                    .split_once('|')
                    .is_some_and(|(s, c)| !s.is_empty() && !c.is_empty())
                && Definitions::get()
                    .param(rtype, code)
                    .is_some_and(|p| p.derived.is_none())
        }
        _ => false,
    }
}

/// Current versions by storage key, in the order of `keys`. Keys are grouped by shard so
/// that each query is a primary-key range (`shard = ? AND rid IN (…)`) the planner cannot
/// turn into a scan; a patient's `$everything` is one or two queries.
fn fetch_by_keys(
    conn: &mut dyn Conn,
    cat: &Catalog,
    keys: &[(i64, i64)],
) -> Result<Vec<Stored>, StoreError> {
    let mut by_shard: std::collections::BTreeMap<i64, Vec<i64>> = std::collections::BTreeMap::new();
    for (shard, rid) in keys {
        by_shard.entry(*shard).or_default().push(*rid);
    }
    let mut found: Vec<(Key, Stored)> = Vec::with_capacity(keys.len());
    for (shard, mut rids) in by_shard {
        rids.sort_unstable();
        rids.dedup();
        let (lo, hi) = (rids[0], rids[rids.len() - 1]);
        if rids.len() > 8 && (hi - lo + 1) as usize <= 2 * rids.len() {
            // A page of one patient's record is mostly a run of rids in its shard: one range
            // read, the few rows between dropped here, instead of a list SQLite first sorts
            // into a temporary b-tree.
            // Rows come in rid order, so one cursor over the wanted rids picks them out.
            let mut next = 0;
            conn.query_each(
                &format!(
                    "SELECT {SELECT_RES} FROM res r JOIN res_route rr ON rr.rid = r.rid \
                     WHERE r.shard = ? AND r.rid BETWEEN ? AND ? AND r.deleted = 0 ORDER BY r.rid"
                ),
                &[Val::Int(shard), Val::Int(lo), Val::Int(hi)],
                &mut |r| {
                    let rid = r.int(1);
                    while next < rids.len() && rids[next] < rid {
                        next += 1;
                    }
                    if rids.get(next) == Some(&rid) {
                        found.push(res_cells(cat, r)?);
                    }
                    Ok(())
                },
            )?;
            continue;
        }
        for chunk in rids.chunks(500) {
            let mut params = Vec::with_capacity(chunk.len() + 1);
            params.push(Val::Int(shard));
            params.extend(chunk.iter().map(|r| Val::Int(*r)));
            let marks = vec!["?"; chunk.len()].join(",");
            let sql = format!(
                "SELECT {SELECT_RES} FROM res r JOIN res_route rr ON rr.rid = r.rid \
                 WHERE r.shard = ? AND r.rid IN ({marks}) AND r.deleted = 0"
            );
            conn.query_each(&sql, &params, &mut |r| {
                found.push(res_cells(cat, r)?);
                Ok(())
            })?;
        }
    }
    // Back into the order asked for (a sort, a page), each key once.
    found.sort_unstable_by_key(|(k, _)| *k);
    let (at, mut rows): (Vec<Key>, Vec<Option<Stored>>) =
        found.into_iter().map(|(k, s)| (k, Some(s))).unzip();
    Ok(keys
        .iter()
        .filter_map(|k| at.binary_search(k).ok().and_then(|i| rows[i].take()))
        .collect())
}

/// A stored row's (shard, rid).
type Key = (i64, i64);

fn fetch_by_ids(
    conn: &mut dyn Conn,
    cat: &Catalog,
    keys: &[(i64, String)],
) -> Result<Vec<Stored>, StoreError> {
    let mut out = Vec::new();
    for chunk in keys.chunks(200) {
        let mut params = Vec::new();
        let mut marks = Vec::new();
        for (t, id) in chunk {
            params.push(Val::Int(*t));
            params.push(Val::Text(id.clone()));
            marks.push("(rr.rtype = ? AND rr.id = ?)");
        }
        let sql = format!(
            "SELECT {SELECT_RES} FROM res_route rr JOIN res r ON r.shard = rr.shard AND r.rid = rr.rid \
             WHERE r.deleted = 0 AND ({})",
            marks.join(" OR ")
        );
        out.extend(select_res(conn, cat, &sql, &params)?);
    }
    Ok(out)
}

/// The resources `incs` add to a page. What the reader may not see is dropped as it is
/// found, so that iteration never walks through it either.
fn includes(
    conn: &mut dyn Conn,
    cat: &Catalog,
    matches: &[Stored],
    incs: &[Include],
    scope: &Scope,
) -> Result<Vec<Stored>, StoreError> {
    if incs.is_empty() || matches.is_empty() {
        return Ok(Vec::new());
    }
    let defs = Definitions::get();
    let mut seen: HashSet<(String, String)> = matches
        .iter()
        .map(|s| (s.rtype.clone(), s.id.clone()))
        .collect();
    let mut out: Vec<Stored> = Vec::new();
    let mut frontier: Vec<Stored> = matches.to_vec();
    // Non-iterating includes apply to the matches only; iterating ones repeat on what they add.
    for round in 0..4 {
        let mut found: Vec<Stored> = Vec::new();
        for inc in incs.iter().filter(|i| round == 0 || i.iterate) {
            let params: Vec<String> = if inc.param == "*" {
                defs.params(&inc.source)
                    .map(|m| {
                        m.values()
                            .filter(|p| p.kind == ParamType::Reference)
                            .map(|p| p.code.clone())
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                vec![inc.param.clone()]
            };
            let pids: Vec<String> = params
                .iter()
                .flat_map(|p| cat.pids(&inc.source, p).0)
                .map(|p| p.to_string())
                .collect();
            // `Observation:patient` is `subject` limited to Patient targets.
            let only = if inc.param == "*" {
                None
            } else {
                cat.pids(&inc.source, &inc.param).1
            };
            let target = inc
                .target
                .clone()
                .or_else(|| only.and_then(|t| cat.type_name(t)).map(String::from));
            let inc = &Include {
                target,
                ..inc.clone()
            };
            if inc.reverse {
                // Resources of `source` that point at anything in the frontier.
                let mut targets = Vec::new();
                for s in &frontier {
                    if inc.target.as_deref().is_none_or(|t| t == s.rtype) {
                        targets.push((cat.type_id(&s.rtype).unwrap_or(-1), s.id.clone()));
                    }
                }
                for chunk in targets.chunks(200) {
                    let mut ps = Vec::new();
                    let mut marks = Vec::new();
                    for (t, id) in chunk {
                        ps.push(Val::Text(id.clone()));
                        ps.push(Val::Int(*t));
                        marks.push("(f.tid = ? AND f.ttype = ?)");
                    }
                    let sql = format!(
                        "SELECT {SELECT_RES} FROM (SELECT DISTINCT f.shard, f.rid FROM ix_ref f \
                         WHERE f.pid IN ({}) AND ({})) m JOIN res r ON r.shard = m.shard \
                         AND r.rid = m.rid JOIN res_route rr ON rr.rid = r.rid WHERE r.deleted = 0",
                        pids.join(","),
                        marks.join(" OR ")
                    );
                    found.extend(select_res(conn, cat, &sql, &ps)?);
                }
            } else {
                // What the frontier's `source` resources point at, read from their bodies
                // (the reference rows are keyed by target, not by source).
                let wanted: HashSet<i64> = params
                    .iter()
                    .flat_map(|p| cat.pids(&inc.source, p).0)
                    .collect();
                let mut keys = Vec::new();
                for s in frontier.iter().filter(|s| s.rtype == inc.source) {
                    let body = s.json()?;
                    for e in hutong_fhir::index::extract_kind(&s.rtype, &body, ParamType::Reference)
                    {
                        let hutong_fhir::index::IndexValue::Reference { rtype: tname, id } =
                            e.value
                        else {
                            continue;
                        };
                        if tname.is_empty()
                            || inc.target.as_deref().is_some_and(|x| x != tname)
                            || !cat
                                .param_id(&s.rtype, e.param)
                                .is_some_and(|p| wanted.contains(&p))
                        {
                            continue;
                        }
                        if let Some(t) = cat.type_id(&tname) {
                            keys.push((t, id));
                        }
                    }
                }
                keys.sort();
                keys.dedup();
                found.extend(fetch_by_ids(conn, cat, &keys)?);
            }
        }
        let mut next = Vec::new();
        for f in found.into_iter().filter(|f| scope.permits_stored(f)) {
            if seen.insert((f.rtype.clone(), f.id.clone())) {
                next.push(f.clone());
                out.push(f);
            }
        }
        if next.is_empty() || !incs.iter().any(|i| i.iterate) {
            break;
        }
        frontier = next;
    }
    Ok(out)
}

/// `Patient/{id}/$everything`: the Patient and every resource in its compartment.
pub(crate) fn everything(
    conn: &mut dyn Conn,
    cat: &Catalog,
    e: &Everything,
    scope: &Scope,
) -> Result<Page, StoreError> {
    let pt = cat.type_id("Patient").unwrap_or(-1);
    let compartment = cat.compartment_pids(&e.types);
    let pids: Vec<String> = compartment.0.iter().map(i64::to_string).collect();
    let date_pids: Vec<String> = compartment.1.iter().map(i64::to_string).collect();
    let mut params = vec![Val::Int(pt), Val::Text(e.patient.clone())];
    let mut driver = "SELECT shard, rid FROM res_route WHERE rtype = ? AND id = ?".to_string();
    if !pids.is_empty() {
        driver.push_str(&format!(
            " UNION SELECT shard, rid FROM ix_ref WHERE tid = ? AND ttype = ? AND pid IN ({})",
            pids.join(",")
        ));
        params.push(Val::Text(e.patient.clone()));
        params.push(Val::Int(pt));
    }
    let mut wheres = vec!["r.deleted = 0".to_string()];
    if let Some(s) = e.since {
        wheres.push("r.lastmod >= ?".into());
        params.push(Val::Int(s));
    }
    if !e.types.is_empty() {
        let ids: Vec<String> = e
            .types
            .iter()
            .map(|t| cat.type_id(t).unwrap_or(-1).to_string())
            .collect();
        wheres.push(format!("r.rtype IN ({})", ids.join(",")));
    }
    if (e.start.is_some() || e.end.is_some()) && !date_pids.is_empty() {
        // Resources with a clinical date outside [start, end) are left out; undated ones stay.
        let dp = date_pids.join(",");
        wheres.push(format!(
            "(NOT EXISTS (SELECT 1 FROM ix_date d WHERE d.shard = r.shard AND d.rid = r.rid AND +d.pid IN ({dp})) \
             OR EXISTS (SELECT 1 FROM ix_date d WHERE d.shard = r.shard AND d.rid = r.rid \
             AND +d.pid IN ({dp}) AND d.hi > ? AND d.lo < ?))"
        ));
        params.push(Val::Int(e.start.unwrap_or(i64::MIN)));
        params.push(Val::Int(e.end.unwrap_or(i64::MAX)));
    }
    // One person's keys are few (thousands): read them once, count and page in memory.
    let all: Vec<(i64, i64)> = if wheres.len() == 1 {
        // No filters: two index range reads, with the union, the compartment-parameter
        // filter and the ordering done here rather than in temporary B-trees.
        // Search parameter ids are small catalog numbers: a table, not a set.
        let known: Vec<usize> = compartment
            .0
            .iter()
            .filter_map(|p| usize::try_from(*p).ok())
            .collect();
        let mut wanted = vec![false; known.iter().max().map_or(0, |m| m + 1)];
        for &p in &known {
            wanted[p] = true;
        }
        let mut keys: Vec<(i64, i64)> = conn
            .query(
                "SELECT shard, rid FROM res_route WHERE rtype = ? AND id = ?",
                &[Val::Int(pt), Val::Text(e.patient.clone())],
            )?
            .iter()
            .map(|r| (r[0].int(), r[1].int()))
            .collect();
        conn.query_each(
            "SELECT shard, rid, pid FROM ix_ref WHERE tid = ? AND ttype = ?",
            &[Val::Text(e.patient.clone()), Val::Int(pt)],
            &mut |r| {
                if usize::try_from(r.int(2)).is_ok_and(|p| wanted.get(p) == Some(&true)) {
                    keys.push((r.int(0), r.int(1)));
                }
                Ok(())
            },
        )?;
        keys.sort_unstable();
        keys.dedup();
        keys
    } else {
        // CROSS JOIN: SQLite keeps the patient's keys as the outer loop whatever it estimates
        // (driving from `res` meant reading every resource of the `_type`s); PostgreSQL
        // plans it as any inner join.
        let base = format!(
            "FROM ({driver}) m CROSS JOIN res r WHERE r.shard = m.shard AND r.rid = m.rid AND {}",
            wheres.join(" AND ")
        );
        conn.query(
            &format!("SELECT m.shard, m.rid {base} ORDER BY m.shard, m.rid"),
            &params,
        )?
        .iter()
        .map(|r| (r[0].int(), r[1].int()))
        .collect()
    };
    let all = visible_keys(conn, cat, all, scope)?;
    let total = all.len() as u64;
    let keys: Vec<(i64, i64)> = all.iter().skip(e.offset).take(e.count).copied().collect();
    let has_more = e.offset + keys.len() < all.len();
    let matches = fetch_by_keys(conn, cat, &keys)?;
    Ok(Page {
        matches,
        included: Vec::new(),
        total: Some(total),
        has_more,
    })
}

/// The keys whose rows `scope` lets the reader see, in their order. Rows in a shard the
/// reader sees whole are settled from the (small) sensitivity index alone, the reader's own
/// rows in a shard from one range of the route index; only the rest are looked up one by one.
/// A person's record is thousands of keys, so this works on sorted vectors, not hash sets.
pub(crate) fn visible_keys(
    conn: &mut dyn Conn,
    cat: &Catalog,
    keys: Vec<(i64, i64)>,
    scope: &Scope,
) -> Result<Vec<(i64, i64)>, StoreError> {
    let Scope::Rows(r) = scope else {
        return Ok(keys);
    };
    let mut visible = vec![false; keys.len()];
    // Positions of the keys by shard.
    let mut by_shard: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for (i, &(shard, _)) in keys.iter().enumerate() {
        by_shard.entry(shard).or_default().push(i);
    }
    let own_sources: Vec<String> = r
        .sources
        .iter()
        .filter_map(|s| cat.system_id(s))
        .map(|id| id.to_string())
        .collect();
    for (shard, mut at) in by_shard {
        let granted = r.shards.get(&shard).copied().filter(|_| r.types.is_none());
        if granted == Some(hutong_fhir::security::ALL) {
            at.iter().for_each(|&i| visible[i] = true);
            continue;
        }
        let sensitive = sorted_pairs(conn.query(
            "SELECT rid, sens FROM ix_sens WHERE shard = ? ORDER BY rid",
            &[Val::Int(shard)],
        )?);
        let sens_of = |rid: i64| {
            sensitive
                .binary_search_by_key(&rid, |p| p.0)
                .map_or(0, |j| sensitive[j].1 as u32)
        };
        if let Some(open) = granted {
            // Closed to the grant, but perhaps the reader's own submission: left for below.
            at.retain(|&i| {
                let ok = sens_of(keys[i].1) & !open == 0;
                visible[i] = ok;
                !ok
            });
        }
        if shard != 0 && r.types.is_none() && !own_sources.is_empty() && at.len() >= 32 {
            // Much of a person's shard (an institution reading its own patient's record):
            // the reader's own rows in one range of the (shard, src) index rather than a
            // route lookup per row. Own submissions are visible whatever their category.
            let mut own: Vec<i64> = conn
                .query(
                    &format!(
                        "SELECT rid FROM res_route WHERE shard = ? AND src IN ({})",
                        own_sources.join(",")
                    ),
                    &[Val::Int(shard)],
                )?
                .iter()
                .map(|x| x[0].int())
                .collect();
            own.sort_unstable();
            at.retain(|&i| {
                let ok = own.binary_search(&keys[i].1).is_ok();
                visible[i] = ok;
                !ok
            });
        }
        // The rest: type and submitter from the narrow route rows, sensitivity from the
        // sensitivity index; the resource rows (and their bodies) stay unread.
        for chunk in at.chunks(500) {
            let params: Vec<Val> = chunk.iter().map(|&i| Val::Int(keys[i].1)).collect();
            let sql = format!(
                "SELECT rid, rtype, src FROM res_route WHERE rid IN ({})",
                vec!["?"; chunk.len()].join(",")
            );
            let mut seen: Vec<(i64, bool)> = Vec::with_capacity(chunk.len());
            for row in conn.query(&sql, &params)? {
                let rid = row[0].int();
                let rtype = cat.type_name(row[1].int()).unwrap_or("");
                let src = cat.system_name(row[2].int()).unwrap_or("");
                seen.push((rid, r.permits(rtype, shard, src, sens_of(rid))));
            }
            seen.sort_unstable();
            for &i in chunk {
                visible[i] = seen
                    .binary_search_by_key(&keys[i].1, |p| p.0)
                    .is_ok_and(|j| seen[j].1);
            }
        }
    }
    Ok(keys
        .into_iter()
        .zip(visible)
        .filter_map(|(k, v)| v.then_some(k))
        .collect())
}

/// `(int, int)` rows as a vector sorted by the first.
fn sorted_pairs(rows: Vec<Vec<Val>>) -> Vec<(i64, i64)> {
    let mut v: Vec<(i64, i64)> = rows.iter().map(|x| (x[0].int(), x[1].int())).collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn q(rtype: &str, params: &[(&str, &str)]) -> Result<Query, SearchError> {
        let p: Vec<(String, String)> = params
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Query::parse(rtype, &p, true)
    }

    #[test]
    fn parses_and_rejects() {
        assert!(q("Observation", &[("code", "http://loinc.org|4548-4,1234")]).is_ok());
        assert!(q("Observation", &[("subject:Patient.identifier", "a|b")]).is_ok());
        assert!(q("Patient", &[("_has:Observation:patient:code", "1234")]).is_ok());
        assert!(q(
            "Observation",
            &[("date", "ge2020-01-01"), ("date", "lt2021")]
        )
        .is_ok());
        assert!(q(
            "Observation",
            &[("value-quantity", "gt5.4|http://unitsofmeasure.org|mg")]
        )
        .is_ok());
        assert!(matches!(
            q("Observation", &[("foo", "1")]),
            Err(SearchError::UnknownParam { .. })
        ));
        assert!(matches!(
            q("Observation", &[("date", "2020-13-01")]),
            Err(SearchError::InvalidValue { .. })
        ));
        assert!(matches!(
            q("Observation", &[("code:exact", "x")]),
            Err(SearchError::Modifier { .. })
        ));
        assert!(matches!(
            q("Observation", &[("_count", "x")]),
            Err(SearchError::InvalidValue { .. })
        ));
        let lenient = Query::parse("Observation", &[("foo".into(), "1".into())], false).unwrap();
        assert_eq!(lenient.ignored, ["foo"]);
    }

    #[test]
    fn number_precision_ranges() {
        let (_, x, lo, hi) = parse_prefixed_number("p", "5.4").unwrap();
        assert_eq!(x, 5.4);
        assert!((lo - 5.35).abs() < 1e-9 && (hi - 5.45).abs() < 1e-9);
        let (_, _, lo, hi) = parse_prefixed_number("p", "100").unwrap();
        assert_eq!((lo, hi), (99.5, 100.5));
        assert_eq!(split_values("a\\,b,c"), ["a,b", "c"]);
    }

    proptest! {
        #[test]
        fn parse_never_panics(k in "[a-z_:.A-Z-]{1,30}", v in "\\PC{0,30}") {
            let _ = Query::parse("Observation", &[(k, v)], true);
        }
    }
}
