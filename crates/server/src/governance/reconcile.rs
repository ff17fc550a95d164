//! Reconciliation (对账) between a source and the platform: `POST $reconcile` with a
//! [`Manifest`] of what the source sent for a period; the answer names what is missing on
//! the platform, extra on it, or different, so the source resends exactly that. Runs are
//! kept (`GET $reconcile`, `$reconcile/{id}`) for the scorecards, and a run with gaps opens
//! a work order to the source unless one is pending.

use std::collections::BTreeSet;

use hutong_access::principal::{Capability, Kind};
use hutong_fhir::date::{format_instant, now_ms};
use hutong_quality::reconcile::{compare, Differences, Item, Manifest};
use hutong_quality::workorder::Category;
use hutong_store::sql::Val;
use hutong_store::{RowScope, Scope, Store, StoreError};
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::error::ApiError;
use crate::error::Code;
use crate::governance::orders::{create_in, NewOrder};
use crate::guard::Guard;
use crate::wire::Paging;
use crate::wire::{Req, Resp};

/// The tables, written once for both dialects ([`hutong_store::sql::Dialect::ddl`]).
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS qc_reconcile (src TEXT NOT NULL, rid TEXT NOT NULL,
    at BIGINT NOT NULL, period_from TEXT NOT NULL, period_to TEXT NOT NULL,
    matched BIGINT NOT NULL, missing BIGINT NOT NULL, extra BIGINT NOT NULL,
    differs BIGINT NOT NULL, days BIGINT NOT NULL, report TEXT NOT NULL,
    PRIMARY KEY (src, rid));
CREATE INDEX IF NOT EXISTS qc_reconcile_at ON qc_reconcile (src, at);
";

pub fn open_tables(store: &Store) -> Result<(), StoreError> {
    store.create_tables(TABLES)
}

/// Every current resource `source` submitted of the given types, as reconciliation items.
pub fn held(store: &Store, source: &str, types: &BTreeSet<String>) -> Result<Vec<Item>, ApiError> {
    let mut out = Vec::new();
    for t in types {
        let scope = Scope::rows(RowScope {
            types: Some([t.clone()].into()),
            sources: [source.to_string()].into(),
            ..Default::default()
        });
        let mut after = 0;
        loop {
            let (page, last) = store.scan(t, None, false, after, 5_000, &scope)?;
            if page.is_empty() {
                break;
            }
            after = last;
            for s in page {
                if let Some(i) = Item::of(&s.json()?) {
                    out.push(i);
                }
            }
        }
    }
    Ok(out)
}

/// One stored run.
pub struct Run {
    pub id: String,
    pub differences: Differences,
    /// The work order opened for the gaps, if one was.
    pub work_order: Option<String>,
}

/// Compares `manifest` with what the platform holds from `source`, keeps the run, and opens
/// a work order for its gaps. `g` is the request's (or the command line's) guard.
pub fn run(engine: &Engine, g: &Guard, source: &str, m: &Manifest) -> Result<Run, ApiError> {
    m.check()
        .map_err(|e| ApiError::bad_request(format!("Manifest: {e}")))?;
    let platform = held(&engine.store, source, &m.covered_types())?;
    let d = compare(m, &platform);
    let id = format!("r-{}", uuid::Uuid::new_v4().simple());
    let now = now_ms();
    let report = json!({
        "id": id, "source": source, "from": m.from, "to": m.to,
        "at": format_instant(now), "differences": d,
    });
    // The work order points at a platform resource the gap is about, where there is one.
    let focus = match d.extra.first().or(d.differs.first()) {
        Some(k) => engine.store.read(&k.rtype, &k.id, &Scope::All)?.found(),
        None => None,
    };
    let pending = engine.store.query_admin(
        "SELECT COUNT(*) FROM qc_work_order WHERE src = ? AND category = 'reconciliation-gap' \
         AND state IN ('open', 'accepted', 'in-progress')",
        &[Val::Text(source.into())],
    )?[0][0]
        .int();
    let order = (d.gaps() > 0 && pending == 0).then(|| NewOrder {
        category: Category::ReconciliationGap,
        description: format!(
            "对账 {id}（{} 至 {}）：平台缺 {} 条、多 {} 条、内容不一致 {} 条、不一致日期 {} 个，请补传或核实。\
             Reconciliation {id} ({} to {}): {} missing on the platform, {} extra, {} differing, {} days differ — resend or check them.",
            m.from, m.to, d.missing.len(), d.extra.len(), d.differs.len(), d.days.len(),
            m.from, m.to, d.missing.len(), d.extra.len(), d.differs.len(), d.days.len()
        ),
        priority: "routine".into(),
        reporter: "platform reconciliation".into(),
        rule: None,
        inputs: vec![json!({"type": {"text": "reconciliation"}, "valueString": id})],
    });
    let name = order
        .as_ref()
        .and_then(|_| crate::consent::institution_name(engine, source));
    let policy = &engine.checker.rules.work_orders;
    let work_order = g.write(engine, |tx| {
        tx.conn().exec(
            "INSERT INTO qc_reconcile (src, rid, at, period_from, period_to, matched, missing, \
             extra, differs, days, report) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &[
                Val::Text(source.into()),
                Val::Text(id.clone()),
                Val::Int(now),
                Val::Text(m.from.clone()),
                Val::Text(m.to.clone()),
                Val::Int(d.matched as i64),
                Val::Int(d.missing.len() as i64),
                Val::Int(d.extra.len() as i64),
                Val::Int(d.differs.len() as i64),
                Val::Int(d.days.len() as i64),
                Val::Text(report.to_string()),
            ],
        )?;
        match &order {
            Some(o) => Ok(Some(
                create_in(tx, policy, o, source, name.clone(), focus.as_ref())?.id,
            )),
            None => Ok(None),
        }
    })?;
    g.note(format!(
        "reconciliation {id} for {source}: {} matched, {} gaps",
        d.matched,
        d.gaps()
    ));
    Ok(Run {
        id,
        differences: d,
        work_order,
    })
}

fn officer(g: &Guard) -> bool {
    g.principal.can(Capability::OverseeQuality)
}

/// The source a request reconciles: the asker's institution; officers name one (`source`).
fn source_for(g: &Guard, req: &Req) -> Result<String, ApiError> {
    let named = req
        .query
        .iter()
        .find(|(k, _)| k == "source")
        .map(|(_, v)| v.clone());
    match (&g.principal.kind, &g.principal.institution, named) {
        (Kind::System | Kind::Clinician, Some(i), None) => Ok(i.clone()),
        (Kind::System | Kind::Clinician, Some(i), Some(n)) if &n == i => Ok(n),
        _ if officer(g) => req
            .query
            .iter()
            .find(|(k, _)| k == "source")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| ApiError::bad_request("Name the source to reconcile (?source=…)")),
        _ => Err(ApiError::of(
            Code::Forbidden,
            "An institution reconciles its own submissions; quality officers any source's",
        )),
    }
}

fn run_json(run: &Run, source: &str, m: &Manifest) -> Value {
    let mut v = json!({
        "id": run.id, "source": source, "from": m.from, "to": m.to,
        "gaps": run.differences.gaps(),
    });
    v["differences"] = serde_json::to_value(&run.differences).unwrap_or(Value::Null);
    if let Some(w) = &run.work_order {
        v["workOrder"] = json!(format!("Task/{w}"));
    }
    v
}

/// `POST $reconcile[?source=…]` with a manifest (JSON).
pub fn submit(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("reconcile");
    let source = source_for(g, req)?;
    let m: Manifest = serde_json::from_slice(&req.body).map_err(|e| {
        ApiError::of(Code::Structure,
            format!("The manifest is not valid: {e} (fields: from, to, undated, types, resources[type, id, hash], days[type, day, count, hash])"),
        )
    })?;
    let run = run(engine, g, &source, &m)?;
    Ok(Resp::plain_json(200, run_json(&run, &source, &m)))
}

/// `GET $reconcile[?source=…][&_count]`: the runs, newest first (without their lists).
pub fn list(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("reconcile");
    let mut sql = "SELECT rid, src, at, period_from, period_to, matched, missing, extra, \
                   differs, days FROM qc_reconcile"
        .to_string();
    let mut params = Vec::new();
    let all = officer(g) && !req.query.iter().any(|(k, _)| k == "source");
    if !all {
        sql.push_str(" WHERE src = ?");
        params.push(Val::Text(source_for(g, req)?));
    }
    let page = Paging::parse(&req.query, Paging::LISTS)?;
    sql.push_str(" ORDER BY at DESC LIMIT ? OFFSET ?");
    params.push(Val::Int(page.count as i64));
    params.push(Val::Int(page.offset as i64));
    let items: Vec<Value> = engine
        .store
        .query_admin(&sql, &params)?
        .iter()
        .map(|r| {
            json!({"id": r[0].text(), "source": r[1].text(), "at": format_instant(r[2].int()),
                   "from": r[3].text(), "to": r[4].text(), "matched": r[5].int(),
                   "missing": r[6].int(), "extra": r[7].int(), "differs": r[8].int(),
                   "days": r[9].int()})
        })
        .collect();
    Ok(Resp::plain_json(200, json!({"items": items})))
}

/// `GET $reconcile/{id}`: a run with its lists.
pub fn show(engine: &Engine, g: &Guard, id: &str) -> Result<Resp, ApiError> {
    g.act("reconcile");
    let rows = engine.store.query_admin(
        "SELECT src, report FROM qc_reconcile WHERE rid = ?",
        &[Val::Text(id.into())],
    )?;
    let own = g.principal.institution.clone();
    let r = rows
        .into_iter()
        .find(|r| officer(g) || own.as_deref() == Some(r[0].text()))
        .ok_or_else(|| ApiError::not_found(format!("No reconciliation {id}")))?;
    Ok(Resp::plain_json(
        200,
        serde_json::from_str(r[1].text()).unwrap_or(Value::Null),
    ))
}
