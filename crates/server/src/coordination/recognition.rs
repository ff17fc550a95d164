//! Result mutual recognition (检查检验结果互认) at order time: `ServiceRequest/$check-recognition`
//! takes a proposed order for a patient and answers, per ordered test, with the recent results
//! of qualified institutions the region recognizes — the ones the clinician may read, in
//! full; the ones they may not, only counted ("exists: ask the resident for access") — and
//! `ServiceRequest/$recognition-decision` records whether the order went ahead, so that the
//! repeats avoided are counted.
//!
//! A result counts when the region's list names its code, it was taken within the item's
//! period, and its institution is qualified (its Organization carries the
//! `recognition-qualified` extension ([`hutong_fhir::vocab::RECOGNITION_QUALIFIED_URL`], kept
//! in `co_qualified` by the write path): it passed external quality assessment) or is the ordering
//! institution itself.

use std::collections::BTreeMap;

use hutong_access::principal::{Kind, Perms};
use hutong_fhir::date::{format_instant, now_ms};
use hutong_store::sql::Val;
use hutong_store::{Query, Scope, Stored};
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::error::{ApiError, Code};
use crate::guard::Guard;
use crate::wire::{Params, Req, Resp};

const LOINC: &str = "http://loinc.org";

/// Results shown per ordered item, newest first.
const SHOWN: usize = 5;

/// The qualified institutions among `sources`.
fn qualified(
    engine: &Engine,
    sources: &[&str],
) -> Result<std::collections::HashSet<String>, ApiError> {
    let mut out = std::collections::HashSet::new();
    for chunk in sources.chunks(200) {
        if chunk.is_empty() {
            continue;
        }
        let rows = engine.store.query_admin(
            &format!(
                "SELECT source FROM co_qualified WHERE qualified = 1 AND source IN ({})",
                vec!["?"; chunk.len()].join(", ")
            ),
            &chunk
                .iter()
                .map(|s| Val::Text(s.to_string()))
                .collect::<Vec<_>>(),
        )?;
        out.extend(rows.iter().map(|r| r[0].text().to_string()));
    }
    Ok(out)
}

/// The ordered items: `code` parameters (Coding), or the codes of an `order` (a proposed
/// ServiceRequest), with the patient from `patient` or the order's subject.
fn order_of(p: &Params) -> Result<(String, Vec<Value>), ApiError> {
    let order = p.all("order").next().map(|x| x["resource"].clone());
    if let Some(o) = &order {
        if o["resourceType"] != "ServiceRequest" {
            return Err(
                ApiError::bad_request("The 'order' parameter must be a ServiceRequest")
                    .with_expression("Parameters.parameter.where(name='order').resource"),
            );
        }
    }
    let mut codes: Vec<Value> = p
        .all("code")
        .filter_map(|x| x.get("valueCoding").cloned())
        .collect();
    if let Some(o) = &order {
        codes.extend(
            o["code"]["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    if codes.is_empty() {
        return Err(ApiError::of(
            Code::Required,
            "$check-recognition needs what is ordered: 'code' (Coding) parameters or an 'order' ServiceRequest with a code",
        )
        .with_expression("Parameters.parameter.where(name='code')"));
    }
    let mut patients = p.refs("patient", "Patient")?;
    if let Some(s) = order
        .as_ref()
        .and_then(|o| o["subject"]["reference"].as_str())
    {
        if let Some(id) = s.strip_prefix("Patient/") {
            patients.push(id.to_string());
        }
    }
    patients.dedup();
    let [patient] = patients.as_slice() else {
        return Err(ApiError::of(
            Code::Required,
            "$check-recognition needs the one patient the order is for ('patient' or the order's subject)",
        )
        .with_expression("Parameters.parameter.where(name='patient')"));
    };
    Ok((patient.clone(), codes))
}

/// The results of `code` for `patients` taken since `since`, as `scope` sees them: the
/// Observations of a test, or the DiagnosticReports of a panel or examination.
fn results(
    engine: &Engine,
    patients: &[String],
    code: &str,
    since: &str,
    scope: &Scope,
) -> Result<Vec<Stored>, ApiError> {
    let mut out = Vec::new();
    for (t, date) in [("Observation", "date"), ("DiagnosticReport", "date")] {
        let q = Query::parse(
            t,
            &[
                ("patient".into(), patients.join(",")),
                ("code".into(), format!("{LOINC}|{code}")),
                (date.into(), format!("ge{since}")),
                ("_sort".into(), format!("-{date}")),
                ("_count".into(), "200".into()),
            ],
            true,
        )?;
        out.extend(engine.store.search(&q, scope)?.matches);
    }
    Ok(out)
}

/// When a result was taken: its effective time, else when it was issued.
fn taken(v: &Value) -> Option<i64> {
    ["effectiveDateTime", "issued"]
        .iter()
        .find_map(|k| v[*k].as_str())
        .or(v["effectivePeriod"]["start"].as_str())
        .and_then(hutong_fhir::date::parse)
        .map(|r| r.lo)
}

/// `ServiceRequest/$check-recognition`.
pub(crate) fn check(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("check-recognition");
    if !matches!(
        g.principal.kind,
        Kind::Clinician | Kind::System | Kind::Platform
    ) {
        return Err(ApiError::of(
            Code::Forbidden,
            "The recognition check is for clinicians and institutions' systems ordering tests",
        ));
    }
    g.may("Observation", Perms::SEARCH)?;
    let p = Params::parse(req, "$check-recognition")?;
    let (patient, codes) = order_of(&p)?;
    // The clinician must see the patient they order for; the answer then looks across the
    // person's records at every institution.
    match engine.store.read("Patient", &patient, &g.scope)?.found() {
        Some(s) if !s.deleted => {}
        _ => return Err(g.hidden(&format!("Patient/{patient}"))),
    }
    let mut patients = vec![patient.clone()];
    if let Some(person) = engine
        .matcher
        .person_of(&engine.store, &format!("Patient/{patient}"))?
    {
        g.on_behalf_of(&person);
        for x in engine.matcher.patients_of(&engine.store, &person)? {
            let id = x.trim_start_matches("Patient/").to_string();
            if !patients.contains(&id) {
                patients.push(id);
            }
        }
    }
    let now = now_ms();
    let institution = g.principal.institution.clone().unwrap_or_default();
    let list = &engine.config.pool.recognition;
    let mut items = Vec::new();
    let mut summary = BTreeMap::<&str, usize>::new();
    let mut row_codes = Vec::new();
    for coding in &codes {
        let code = coding["code"].as_str().unwrap_or("");
        let system = coding["system"].as_str().unwrap_or("");
        let mut parts = vec![json!({"name": "code", "valueCoding": coding})];
        let item = (system == LOINC || system.is_empty())
            .then(|| list.get(code))
            .flatten();
        let Some(item) = item else {
            parts.push(json!({"name": "outcome", "valueCode": "not-listed"}));
            *summary.entry("not-listed").or_default() += 1;
            items.push(json!({"name": "item", "part": parts}));
            continue;
        };
        parts.push(json!({"name": "recognizedDays", "valueInteger": item.days}));
        let since = format_instant(now - i64::from(item.days) * 86_400_000);
        let everything = results(engine, &patients, code, &since, &Scope::All)?;
        let sources: Vec<&str> = everything.iter().map(|s| s.source.as_str()).collect();
        let ok = qualified(engine, &sources)?;
        // An institution's own results are its own to use, qualified or not.
        let mut recognized: Vec<(i64, &Stored)> = everything
            .iter()
            .filter(|s| ok.contains(&s.source) || s.source == institution)
            .filter_map(|s| {
                let t = taken(&s.json().ok()?)?;
                item.recognizes(t, now).then_some((t, s))
            })
            .collect();
        recognized.sort_by_key(|r| std::cmp::Reverse(r.0));
        let (readable, mut unreadable): (Vec<_>, Vec<_>) = recognized
            .into_iter()
            .partition(|(_, s)| g.scope.permits_stored(s));
        // That a result of a sensitive category exists is itself not the clinician's to
        // learn: only ordinary results are counted.
        unreadable.retain(|(_, s)| s.sens == 0);
        let outcome = match (readable.is_empty(), unreadable.is_empty()) {
            (false, _) => "recognizable",
            (true, false) => "ask-consent",
            (true, true) => "none",
        };
        *summary.entry(outcome).or_default() += 1;
        row_codes.push((code.to_string(), outcome));
        parts.push(json!({"name": "outcome", "valueCode": outcome}));
        if let Some((t, _)) = readable.first() {
            parts.push(json!({"name": "latest", "valueDateTime": format_instant(*t)}));
        }
        for (_, s) in readable.iter().take(SHOWN) {
            let body: Value = serde_json::from_slice(&g.release(s)).map_err(|e| {
                ApiError::of(Code::Internal, format!("a stored result is not JSON: {e}"))
            })?;
            parts.push(json!({"name": "result", "resource": body}));
        }
        if !unreadable.is_empty() {
            // Counted, never shown: the clinician learns only that asking is worth it.
            parts.push(json!({"name": "unreadable", "valueInteger": unreadable.len()}));
        }
        items.push(json!({"name": "item", "part": parts}));
    }
    let id = uuid::Uuid::new_v4().to_string();
    engine.store.with_admin_tx(|tx| {
        for (code, outcome) in &row_codes {
            tx.exec(
                "INSERT INTO co_recognition (id, code, at, institution, patient, outcome, decision) VALUES (?, ?, ?, ?, ?, ?, '')",
                &[
                    Val::Text(id.clone()),
                    Val::Text(code.clone()),
                    Val::Int(now),
                    Val::Text(institution.clone()),
                    Val::Text(patient.clone()),
                    Val::Text(outcome.to_string()),
                ],
            )?;
        }
        Ok(())
    })?;
    g.note(format!(
        "recognition check {id}: {}",
        summary
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let mut out = vec![json!({"name": "check", "valueString": id})];
    out.extend(items);
    Ok(Resp::json(
        200,
        json!({"resourceType": "Parameters", "parameter": out}),
    ))
}

/// `ServiceRequest/$recognition-decision`: after a check, whether the order went ahead
/// (`ordered`) or a recognized result was used instead (`used-existing`), per code or for
/// every code of the check.
pub(crate) fn decision(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("recognition-decision");
    let p = Params::parse(req, "$recognition-decision")?;
    let check = p.required("check", "$recognition-decision")?;
    let decision = p.required("decision", "$recognition-decision")?;
    if decision != "ordered" && decision != "used-existing" {
        return Err(ApiError::of(
            Code::Value,
            format!("decision is 'ordered' or 'used-existing', not '{decision}'"),
        )
        .with_expression("Parameters.parameter.where(name='decision')"));
    }
    let codes: Vec<String> = p
        .all("code")
        .filter_map(|x| {
            x["valueCoding"]["code"]
                .as_str()
                .or(x["valueCode"].as_str())
        })
        .map(String::from)
        .collect();
    let institution = g.principal.institution.clone().unwrap_or_default();
    let rows = engine.store.query_admin(
        "SELECT code, outcome FROM co_recognition WHERE id = ? AND institution = ?",
        &[Val::Text(check.clone()), Val::Text(institution.clone())],
    )?;
    if rows.is_empty() {
        return Err(ApiError::not_found(format!(
            "No recognition check {check} of your institution is known"
        ))
        .with_expression("Parameters.parameter.where(name='check')"));
    }
    let mut n = 0;
    for r in &rows {
        let code = r[0].text();
        if !codes.is_empty() && !codes.iter().any(|c| c == code) {
            continue;
        }
        if decision == "used-existing" && r[1].text() != "recognizable" {
            return Err(ApiError::of(
                Code::Conflict,
                format!("The check found no result of {code} you may use: it can only be ordered"),
            ));
        }
        engine.store.exec_admin(
            "UPDATE co_recognition SET decision = ? WHERE id = ? AND code = ?",
            &[
                Val::Text(decision.clone()),
                Val::Text(check.clone()),
                Val::Text(code.to_string()),
            ],
        )?;
        n += 1;
    }
    g.note(format!("recognition check {check}: {n} {decision}"));
    Ok(Resp::json(
        200,
        json!({"resourceType": "Parameters", "parameter": [
            {"name": "check", "valueString": check},
            {"name": "recorded", "valueInteger": n}
        ]}),
    ))
}

/// `GET $recognition?from=&to=`: per institution, the checks made, how many found a result
/// to use, and the repeats avoided — for the console and the commission's indicators.
pub(crate) fn stats(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("recognition-stats");
    let p = &g.principal;
    let own = match p.kind {
        Kind::Platform => None,
        Kind::Operator if p.can(hutong_access::Capability::OverseeQuality) => None,
        Kind::System | Kind::Clinician => Some(p.institution.clone().unwrap_or_default()),
        _ => {
            return Err(ApiError::of(
                Code::Forbidden,
                "Recognition figures are for institutions (their own) and the platform's quality officers",
            ))
        }
    };
    let day = |k: &str| -> Result<Option<i64>, ApiError> {
        match req.query.iter().find(|(n, _)| n == k) {
            None => Ok(None),
            Some((_, v)) => hutong_fhir::date::parse(v)
                .map(|r| Some(if k == "to" { r.hi } else { r.lo }))
                .ok_or_else(|| {
                    ApiError::of(Code::Value, format!("'{v}' is not a date ({k})"))
                        .with_expression(k.to_string())
                }),
        }
    };
    let from = day("from")?.unwrap_or(0);
    let to = day("to")?.unwrap_or(i64::MAX);
    let mut sql = String::from(
        "SELECT institution, COUNT(*), SUM(CASE WHEN outcome = 'recognizable' THEN 1 ELSE 0 END), \
         SUM(CASE WHEN outcome = 'ask-consent' THEN 1 ELSE 0 END), \
         SUM(CASE WHEN decision = 'used-existing' THEN 1 ELSE 0 END), \
         SUM(CASE WHEN decision = 'ordered' THEN 1 ELSE 0 END) \
         FROM co_recognition WHERE outcome <> 'not-listed' AND at >= ? AND at < ?",
    );
    let mut params = vec![Val::Int(from), Val::Int(to)];
    if let Some(i) = &own {
        sql.push_str(" AND institution = ?");
        params.push(Val::Text(i.clone()));
    }
    sql.push_str(" GROUP BY institution ORDER BY institution");
    let rows = engine.store.query_admin(&sql, &params)?;
    let n = |v: &Val| match v {
        Val::Int(i) => *i,
        Val::Real(f) => *f as i64,
        _ => 0,
    };
    let list: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"institution": r[0].text(), "items": n(&r[1]), "recognizable": n(&r[2]),
                "askConsent": n(&r[3]), "avoided": n(&r[4]), "orderedAnyway": n(&r[5])})
        })
        .collect();
    Ok(Resp::json(200, json!({"institutions": list})))
}
