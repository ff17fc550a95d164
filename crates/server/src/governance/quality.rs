//! The governance API: `Resource/$validate` (the intake rules without writing) and the
//! quarantine of rejected submissions (`$quarantine`: list, show, download, resubmit).
//! A source sees its own quarantine; the platform's quality officers and administrators see
//! every source's.

use hutong_access::principal::{Capability, Kind};
use hutong_store::sql::Val;
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::error::Code;
use crate::error::{forbidden, ApiError};
use crate::guard::Guard;
use crate::intake;
use crate::wire::Paging;
use crate::wire::{check_resource, parse_json, Body, Req, Resp};

/// Whether the asker oversees every source's data quality.
fn officer(g: &Guard) -> bool {
    g.principal.can(Capability::OverseeQuality)
}

/// `POST [type]/$validate`: the resource (or a Parameters with a `resource`) checked
/// against the structure and every intake rule in force, as an OperationOutcome. Nothing is
/// written; an invalid resource is a 200 with error issues, as the specification has it.
pub fn validate(engine: &Engine, req: &Req, g: &Guard, t: &str) -> Result<Resp, ApiError> {
    g.act("validate");
    let body = parse_json(&req.body)?;
    let resource = if body["resourceType"] == "Parameters" && t != "Parameters" {
        body["parameter"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "resource"))
            .map(|p| p["resource"].clone())
            .ok_or_else(|| {
                ApiError::bad_request(
                    "$validate takes the resource, or a Parameters with 'resource'",
                )
            })?
    } else {
        body
    };
    check_resource(&resource, t, None)?;
    let mut v = resource;
    let source = engine.source_of(req);
    engine.intake(&mut v, &source, hutong_fhir::date::now_ms());
    let mut local = std::collections::HashSet::new();
    if let Some(id) = v["id"].as_str() {
        local.insert((t.to_string(), id.to_string()));
    }
    let c = intake::check(
        &engine.store,
        &engine.checker,
        &g.filing_scope(),
        &source,
        &[&v],
        local,
        true,
    )?;
    let findings = c.findings.into_iter().next().unwrap_or_default();
    Ok(Resp::json(200, hutong_quality::outcome(&findings)))
}

/// The sources whose quarantine the asker may see (`None`: every source).
fn sources(g: &Guard) -> Result<Option<String>, ApiError> {
    if officer(g) {
        return Ok(None);
    }
    match (&g.principal.kind, &g.principal.institution) {
        (Kind::System | Kind::Clinician, Some(i)) => Ok(Some(i.clone())),
        _ => Err(forbidden(
            "The quarantine is for the submitting institution and the platform's quality officers",
        )),
    }
}

fn item(engine: &Engine, g: &Guard, qid: &str) -> Result<Vec<Val>, ApiError> {
    let only = sources(g)?;
    let rows = engine.store.query_admin(
        &format!(
            "SELECT {}, body FROM qc_quarantine WHERE qid = ?",
            intake::ITEM_COLS
        ),
        &[Val::Text(qid.to_string())],
    )?;
    rows.into_iter()
        .find(|r| only.as_deref().is_none_or(|s| r[1].text() == s))
        .ok_or_else(|| ApiError::not_found(format!("No quarantined submission {qid}")))
}

/// `GET $quarantine[?status=open|resubmitted|superseded|all][&source=…][&_count][&_offset]`.
pub fn list(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("quarantine");
    let only = sources(g)?;
    let mut status = "open".to_string();
    let mut source = only.clone();
    let Paging { count, offset } = Paging::parse(&req.query, Paging::LISTS)?;
    for (k, v) in &req.query {
        match k.as_str() {
            "status" => status = v.clone(),
            "source" if only.is_none() => source = Some(v.clone()),
            "source" => {
                if Some(v) != only.as_ref() {
                    return Err(forbidden("An institution sees only its own quarantine"));
                }
            }
            k if Paging::is_param(k) => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "Unknown parameter '{other}' (status, source, _count, _offset)"
                )))
            }
        }
    }
    if !matches!(
        status.as_str(),
        "open" | "resubmitted" | "superseded" | "all"
    ) {
        return Err(ApiError::bad_request(
            "status is one of open, resubmitted, superseded, all",
        ));
    }
    let mut sql = format!(
        "SELECT {} FROM qc_quarantine WHERE 1 = 1",
        intake::ITEM_COLS
    );
    let mut params = Vec::new();
    let mut count_sql = "SELECT COUNT(*) FROM qc_quarantine WHERE 1 = 1".to_string();
    if let Some(s) = &source {
        sql.push_str(" AND src = ?");
        count_sql.push_str(" AND src = ?");
        params.push(Val::Text(s.clone()));
    }
    if status != "all" {
        sql.push_str(" AND status = ?");
        count_sql.push_str(" AND status = ?");
        params.push(Val::Text(status.clone()));
    }
    let total = engine.store.query_admin(&count_sql, &params)?[0][0].int();
    sql.push_str(" ORDER BY at DESC, qid LIMIT ? OFFSET ?");
    params.push(Val::Int(count as i64));
    params.push(Val::Int(offset as i64));
    let items: Vec<Value> = engine
        .store
        .query_admin(&sql, &params)?
        .iter()
        .map(|r| intake::item_json(r, false))
        .collect();
    g.note(format!("{} quarantined submissions listed", items.len()));
    Ok(Resp::plain_json(
        200,
        json!({"total": total, "items": items}),
    ))
}

/// `GET $quarantine/{id}`: the item with the outcome that rejected it.
pub fn show(engine: &Engine, g: &Guard, qid: &str) -> Result<Resp, ApiError> {
    g.act("quarantine");
    let r = item(engine, g, qid)?;
    g.note(format!("quarantine item {qid} read"));
    Ok(Resp::plain_json(200, intake::item_json(&r, true)))
}

/// `GET $quarantine/{id}/body`: the submission exactly as the source sent it.
pub fn body(engine: &Engine, g: &Guard, qid: &str) -> Result<Resp, ApiError> {
    g.act("quarantine");
    let r = item(engine, g, qid)?;
    let bytes = engine.store.unseal(&r[10].clone().into_blob())?;
    g.note(format!("quarantined submission {qid} downloaded"));
    Ok(Resp {
        status: 200,
        headers: vec![
            ("Content-Type".into(), "application/fhir+json".into()),
            (
                "Content-Disposition".into(),
                format!("attachment; filename=\"{qid}.json\""),
            ),
        ],
        body: Body::Raw(bytes),
    })
}

/// `POST $quarantine/{id}/$resubmit` with the corrected submission: it is processed as the
/// original request was (same method and path, the resubmitter's credentials); accepted, the
/// item is closed with the result's location; rejected again, it is superseded by the new
/// quarantine item.
pub fn resubmit(engine: &Engine, req: &Req, g: &Guard, qid: &str) -> Result<Resp, ApiError> {
    g.act("quarantine-resubmit");
    let r = item(engine, g, qid)?;
    if r[6].text() != "open" {
        return Err(ApiError::of(
            Code::Conflict,
            format!("{qid} is already {}", r[6].text()),
        ));
    }
    let source = r[1].text().to_string();
    if engine.source_of(req) != source {
        return Err(forbidden(
            "Only the institution that sent a submission resubmits it",
        ));
    }
    let (method, path) = (r[3].text().to_string(), r[4].text().to_string());
    let sub = Req {
        method: method.clone(),
        segments: path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        query: Vec::new(),
        headers: req.headers.clone(),
        body: req.body.clone(),
        base: req.base.clone(),
        source: req.source.clone(),
        import_key: None,
        principal: req.principal.clone(),
        reason: req.reason.clone(),
        from: req.from.clone(),
    };
    let resp = engine.handle(&sub);
    let (status, resolution) = if resp.status < 300 {
        let loc = resp
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("location"))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| format!("{method} {path}").trim().to_string());
        ("resubmitted", loc)
    } else {
        let newer = match &resp.body {
            Body::Json(v) => v["issue"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["diagnostics"].as_str())
                .find_map(|d| {
                    d.split_whitespace()
                        .find(|w| w.starts_with("q-"))
                        .map(|w| w.trim_end_matches([':', '.', ',']).to_string())
                }),
            _ => None,
        };
        match newer {
            Some(n) => ("superseded", n),
            // Refused for another reason (e.g. malformed): the item stays open.
            None => return Ok(resp),
        }
    };
    engine.store.exec_admin(
        "UPDATE qc_quarantine SET status = ?, resolved_at = ?, resolution = ? \
         WHERE src = ? AND qid = ? AND status = 'open'",
        &[
            Val::Text(status.into()),
            Val::Int(hutong_fhir::date::now_ms()),
            Val::Text(resolution.clone()),
            Val::Text(source),
            Val::Text(qid.into()),
        ],
    )?;
    g.note(format!("{qid} {status}: {resolution}"));
    Ok(resp)
}
