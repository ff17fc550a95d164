//! Quality scorecards and the periodic report (`GET $scorecard?from=…&to=…`): per
//! institution, per day and per resource type, rolled up to district and region, as JSON,
//! CSV or an HTML page for the monthly evaluation. The figures come from what the platform
//! holds — the accepted resources received in the period, the findings recorded with them,
//! the quarantined rejections and the reconciliation runs; the arithmetic is
//! [`hutong_quality::scorecard`]'s.
//!
//! Timeliness is measured from a resource's clinical time to when the platform received its
//! current version; "late" is later than [`LATE_HOURS`] (the T+1 upload rule regional
//! platforms set).

use std::collections::{BTreeMap, HashMap};

use hutong_access::principal::{Capability, Kind};
use hutong_fhir::date::{self, format_instant, now_ms};
use hutong_fhir::Definitions;
use hutong_quality::reconcile::day_of_ms;
use hutong_quality::scorecard::{Card, Sample, Tally};
use hutong_store::sql::Val;
use hutong_store::{RowScope, Scope};
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::error::ApiError;
use crate::error::Code;
use crate::guard::Guard;
use crate::wire::{Body, Req, Resp};

/// A resource received more than this many hours after its clinical time is late.
pub const LATE_HOURS: i64 = 24;
const DAY_MS: i64 = 86_400_000;
const OFFSET_MS: i64 = 8 * 3_600_000;

/// Sources that are the platform's own services and registries (institutions and staff as
/// reference data), not institutions submitting care data.
pub const PLATFORM_SOURCES: &[&str] = &[
    "urn:hutong:access",
    "urn:hutong:mpi",
    "urn:hutong:platform",
    "urn:hutong:registry",
];

/// One institution's figures.
#[derive(Default)]
pub struct Institution {
    pub name: Option<String>,
    pub district: Option<String>,
    pub total: Tally,
    pub days: BTreeMap<String, Tally>,
    pub types: BTreeMap<String, Tally>,
}

/// The report for a period.
pub struct Report {
    pub from: String,
    pub to: String,
    pub institutions: BTreeMap<String, Institution>,
}

impl Report {
    pub fn region(&self) -> Tally {
        let mut t = Tally::default();
        for i in self.institutions.values() {
            t.merge(&i.total);
        }
        t
    }

    pub fn districts(&self) -> BTreeMap<String, (Tally, usize)> {
        let mut out: BTreeMap<String, (Tally, usize)> = BTreeMap::new();
        for i in self.institutions.values() {
            let d = out
                .entry(i.district.clone().unwrap_or_else(|| "—".into()))
                .or_default();
            d.0.merge(&i.total);
            d.1 += 1;
        }
        out
    }

    pub fn json(&self) -> Value {
        let card = |t: &Tally| serde_json::to_value(t.card()).unwrap_or(Value::Null);
        json!({
            "from": self.from,
            "to": self.to,
            "generated": format_instant(now_ms()),
            "lateHours": LATE_HOURS,
            "region": card(&self.region()),
            "districts": self.districts().iter().map(|(d, (t, n))| json!({
                "district": d, "institutions": n, "card": card(t)
            })).collect::<Vec<_>>(),
            "institutions": self.institutions.iter().map(|(src, i)| json!({
                "source": src,
                "name": i.name,
                "district": i.district,
                "card": card(&i.total),
                "trend": i.days.iter().map(|(d, t)| json!({"day": d, "card": card(t)})).collect::<Vec<_>>(),
                "types": i.types.iter().map(|(ty, t)| json!({"type": ty, "card": card(t)})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

fn day_start(day: &str) -> Result<i64, ApiError> {
    if day.len() != 10 {
        return Err(ApiError::bad_request(format!(
            "'{day}' is not a day (YYYY-MM-DD)"
        )));
    }
    date::parse(day)
        .map(|r| r.lo - OFFSET_MS)
        .ok_or_else(|| ApiError::bad_request(format!("'{day}' is not a day (YYYY-MM-DD)")))
}

/// Gathers the report for `from..=to` (days, UTC+8), for one source or all.
pub fn build(
    engine: &Engine,
    from: &str,
    to: &str,
    only: Option<&str>,
) -> Result<Report, ApiError> {
    let (start, end) = (day_start(from)?, day_start(to)? + DAY_MS);
    if end <= start {
        return Err(ApiError::bad_request("The period ends before it starts"));
    }
    let rules = &engine.checker.rules;
    let late_ms = LATE_HOURS * 3_600_000;
    let store = &engine.store;
    let src_filter = |sql: &str, params: &mut Vec<Val>| -> String {
        match only {
            Some(s) => {
                params.push(Val::Text(s.into()));
                format!("{sql} AND src = ?")
            }
            None => sql.to_string(),
        }
    };
    // Findings recorded with the accepted versions of the period.
    let mut params = vec![Val::Int(start), Val::Int(end)];
    let sql = src_filter(
        "SELECT src, rtype, id, rule FROM qc_finding WHERE at >= ? AND at < ?",
        &mut params,
    );
    let mut findings: HashMap<(String, String, String), Vec<String>> = HashMap::new();
    for r in store.query_admin(&sql, &params)? {
        findings
            .entry((r[0].text().into(), r[1].text().into(), r[2].text().into()))
            .or_default()
            .push(r[3].text().into());
    }
    let mut institutions: BTreeMap<String, Institution> = BTreeMap::new();
    let scope = match only {
        Some(s) => Scope::rows(RowScope {
            sources: [s.to_string()].into(),
            ..Default::default()
        }),
        None => Scope::All,
    };
    let platform_types = hutong_access::decision::PLATFORM_TYPES;
    for t in Definitions::get().resource_types() {
        if platform_types.contains(&t.as_str()) || t == "Task" {
            continue;
        }
        let mut after = 0;
        loop {
            let (page, last) = store.scan(t, Some(start), false, after, 5_000, &scope)?;
            if page.is_empty() {
                break;
            }
            after = last;
            for s in page {
                if s.last_updated >= end || PLATFORM_SOURCES.contains(&s.source.as_str()) {
                    continue;
                }
                let v = s.json()?;
                let found = findings
                    .get(&(s.source.clone(), s.rtype.clone(), s.id.clone()))
                    .cloned()
                    .unwrap_or_default();
                let sample = Sample {
                    delay_ms: hutong_quality::clinical_time_ms(&v).map(|c| s.last_updated - c),
                    complete: !found.iter().any(|r| r == "data-set"),
                    recommended: hutong_quality::recommended_filled(&v, rules),
                    findings: found,
                };
                let inst = institutions.entry(s.source.clone()).or_default();
                inst.total.add(&sample, late_ms);
                inst.days
                    .entry(day_of_ms(s.last_updated))
                    .or_default()
                    .add(&sample, late_ms);
                inst.types
                    .entry(s.rtype.clone())
                    .or_default()
                    .add(&sample, late_ms);
            }
        }
    }
    // Rejected submissions (one per quarantined request).
    let mut params = vec![Val::Int(start), Val::Int(end)];
    let sql = src_filter(
        "SELECT src, at, rules, path FROM qc_quarantine WHERE at >= ? AND at < ?",
        &mut params,
    );
    for r in store.query_admin(&sql, &params)? {
        let rules: Vec<&str> = r[2].text().split(' ').filter(|x| !x.is_empty()).collect();
        let rtype = r[3]
            .text()
            .split('/')
            .find(|x| !x.is_empty())
            .unwrap_or("Bundle")
            .to_string();
        let inst = institutions.entry(r[0].text().to_string()).or_default();
        inst.total.reject(&rules);
        inst.days
            .entry(day_of_ms(r[1].int()))
            .or_default()
            .reject(&rules);
        inst.types.entry(rtype).or_default().reject(&rules);
    }
    // Reconciliation: the runs of the period, and the gaps of each source's latest.
    let mut params = vec![Val::Int(start), Val::Int(end)];
    let sql = src_filter(
        "SELECT src, at, missing + extra + differs + days FROM qc_reconcile \
         WHERE at >= ? AND at < ?",
        &mut params,
    );
    let mut latest: HashMap<String, (i64, i64)> = HashMap::new();
    for r in store.query_admin(&sql, &params)? {
        let inst = institutions.entry(r[0].text().to_string()).or_default();
        inst.total.reconciliations += 1;
        let e = latest
            .entry(r[0].text().to_string())
            .or_insert((i64::MIN, 0));
        if r[1].int() >= e.0 {
            *e = (r[1].int(), r[2].int());
        }
    }
    for (src, (_, gaps)) in latest {
        if let Some(i) = institutions.get_mut(&src) {
            i.total.reconciliation_gaps = gaps as u64;
        }
    }
    // Names and districts from the registry's Organizations.
    let orgs = organizations(engine)?;
    for (src, i) in institutions.iter_mut() {
        if let Some((name, district)) = orgs.get(src) {
            i.name = Some(name.clone());
            i.district = district.clone();
        }
    }
    Ok(Report {
        from: from.into(),
        to: to.into(),
        institutions,
    })
}

/// The report for `from..=to` (one source or all), built or kept. What a report counts has
/// not changed while the marker has not: the newest version received (every write,
/// Organizations' renames included, moves it), the newest rejection and the newest
/// reconciliation run.
fn report_for(
    engine: &Engine,
    from: &str,
    to: &str,
    only: Option<&str>,
) -> Result<std::sync::Arc<Report>, ApiError> {
    let r = engine.store.query_admin(
        "SELECT (SELECT MAX(lastmod) FROM res), (SELECT MAX(at) FROM qc_quarantine), \
         (SELECT MAX(at) FROM qc_reconcile)",
        &[],
    )?;
    let marker = r[0]
        .iter()
        .map(|v| match v {
            Val::Int(i) => *i,
            _ => 0,
        })
        .collect();
    let key = format!(
        "scorecard\u{1f}{from}\u{1f}{to}\u{1f}{}",
        only.unwrap_or("")
    );
    engine
        .derived
        .get_or_build(&key, marker, || build(engine, from, to, only))
}

/// Source URI → (name, district) of the registered institutions.
pub(crate) fn organizations(
    engine: &Engine,
) -> Result<HashMap<String, (String, Option<String>)>, ApiError> {
    let mut out = HashMap::new();
    let mut after = 0;
    loop {
        let (page, last) =
            engine
                .store
                .scan("Organization", None, false, after, 5_000, &Scope::All)?;
        if page.is_empty() {
            break;
        }
        after = last;
        for s in page {
            let v = s.json()?;
            let Some(uscc) = v["identifier"].as_array().and_then(|ids| {
                ids.iter()
                    .find(|i| i["system"] == hutong_fhir::vocab::USCC_SYSTEM)
                    .and_then(|i| i["value"].as_str())
            }) else {
                continue;
            };
            out.insert(
                format!("urn:hutong:org:{uscc}"),
                (
                    v["name"].as_str().unwrap_or(uscc).to_string(),
                    v["address"][0]["district"].as_str().map(String::from),
                ),
            );
        }
    }
    Ok(out)
}

/// `GET $scorecard[?from=YYYY-MM-DD][&to=YYYY-MM-DD][&source=…][&format=json|csv|html]`:
/// the last 30 days by default. Institutions see their own; quality officers every one.
pub fn card(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("scorecard");
    let q = |k: &str| {
        req.query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    for (k, _) in &req.query {
        if !matches!(k.as_str(), "from" | "to" | "source" | "format" | "_format") {
            return Err(ApiError::bad_request(format!(
                "Unknown parameter '{k}' (from, to, source, format)"
            )));
        }
    }
    let officer = g.principal.can(Capability::OverseeQuality);
    let only = match (&g.principal.kind, &g.principal.institution, q("source")) {
        _ if officer => q("source"),
        (Kind::System | Kind::Clinician, Some(i), s) if s.as_ref().is_none_or(|s| s == i) => {
            Some(i.clone())
        }
        _ => {
            return Err(ApiError::of(
                Code::Forbidden,
                "A scorecard is for its institution and the platform's quality officers",
            ))
        }
    };
    let today = day_of_ms(now_ms());
    let to = q("to").unwrap_or(today);
    let from = match q("from") {
        Some(f) => f,
        None => day_of_ms(day_start(&to)? - 29 * DAY_MS),
    };
    let report = report_for(engine, &from, &to, only.as_deref())?;
    g.note(format!(
        "scorecard {from}..{to} for {}",
        only.as_deref().unwrap_or("the region")
    ));
    let format = q("format").unwrap_or_else(|| "json".into());
    match format.as_str() {
        "json" | "application/json" => Ok(Resp::plain_json(200, report.json())),
        "csv" | "text/csv" => Ok(Resp {
            status: 200,
            headers: vec![
                ("Content-Type".into(), "text/csv; charset=utf-8".into()),
                (
                    "Content-Disposition".into(),
                    format!("attachment; filename=\"scorecard-{from}-{to}.csv\""),
                ),
            ],
            body: Body::Raw(csv(&report).into_bytes()),
        }),
        "html" | "text/html" => Ok(Resp {
            status: 200,
            headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
            body: Body::Raw(html(&report).into_bytes()),
        }),
        other => Err(ApiError::bad_request(format!(
            "format '{other}' is not one of json, csv, html"
        ))),
    }
}

const CSV_HEAD: &str = "level,source,name,district,day,type,received,rejected,timeliness_median_h,\
timeliness_p90_h,late_share,complete_required,complete_recommended,validity,consistency,\
duplicate_rate,reconciliations,reconciliation_gaps,score";

fn opt(x: Option<f64>) -> String {
    x.map(|v| {
        format!("{v:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    })
    .unwrap_or_default()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn csv_row(out: &mut String, cols: [&str; 6], c: &Card) {
    let fields: Vec<String> = cols.iter().map(|x| csv_field(x)).collect();
    out.push_str(&fields.join(","));
    out.push_str(&format!(
        ",{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
        c.received,
        c.rejected,
        opt(c.timeliness.median_hours),
        opt(c.timeliness.p90_hours),
        opt(c.timeliness.late_share),
        opt(c.completeness.required),
        opt(c.completeness.recommended),
        opt(c.validity.pass_rate),
        opt(c.consistency),
        opt(c.duplicate_rate),
        c.reconciliations,
        c.reconciliation_gaps,
        opt(c.score),
    ));
}

/// The report as CSV: region, districts, institutions, then each institution by day and by
/// type.
pub fn csv(r: &Report) -> String {
    let mut out = format!("{CSV_HEAD}\n");
    csv_row(&mut out, ["region", "", "", "", "", ""], &r.region().card());
    for (d, (t, _)) in r.districts() {
        csv_row(&mut out, ["district", "", "", &d, "", ""], &t.card());
    }
    for (src, i) in &r.institutions {
        let name = i.name.clone().unwrap_or_default();
        let district = i.district.clone().unwrap_or_default();
        csv_row(
            &mut out,
            ["institution", src, &name, &district, "", ""],
            &i.total.card(),
        );
        for (day, t) in &i.days {
            csv_row(&mut out, ["day", src, &name, &district, day, ""], &t.card());
        }
        for (ty, t) in &i.types {
            csv_row(&mut out, ["type", src, &name, &district, "", ty], &t.card());
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.1}%", v * 100.0))
        .unwrap_or_else(|| "—".into())
}

/// A small line of an institution's daily scores (0–100), drawn on the server.
fn sparkline(days: &BTreeMap<String, Tally>) -> String {
    let pts: Vec<f64> = days.values().filter_map(|t| t.card().score).collect();
    if pts.len() < 2 {
        return String::new();
    }
    let (w, h) = (120.0, 24.0);
    let step = w / (pts.len() - 1) as f64;
    let path: Vec<String> = pts
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{:.1},{:.1}", i as f64 * step, h - s / 100.0 * h))
        .collect();
    format!(
        "<svg width=\"120\" height=\"24\" role=\"img\" aria-label=\"每日得分趋势 daily score trend\">\
         <polyline fill=\"none\" stroke=\"#1f6feb\" stroke-width=\"1.5\" points=\"{}\"/></svg>",
        path.join(" ")
    )
}

fn html_row(name: &str, c: &Card, extra: &str) -> String {
    format!(
        "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><b>{}</b></td><td>{}</td></tr>\n",
        esc(name),
        c.received,
        c.rejected,
        c.timeliness
            .median_hours
            .map(|h| format!("{h} h"))
            .unwrap_or_else(|| "—".into()),
        pct(c.timeliness.late_share),
        pct(c.completeness.required),
        pct(c.completeness.recommended),
        pct(c.validity.pass_rate),
        pct(c.consistency),
        pct(c.duplicate_rate),
        c.reconciliation_gaps,
        c.score.map(|s| format!("{s:.1}")).unwrap_or_else(|| "—".into()),
        extra
    )
}

/// The report as a printable HTML page (the monthly evaluation).
pub fn html(r: &Report) -> String {
    let head = "<tr><th scope=\"col\">机构 / 区县</th><th scope=\"col\">接收</th><th scope=\"col\">退回</th>\
        <th scope=\"col\">及时性(中位)</th><th scope=\"col\">迟报率</th><th scope=\"col\">必填完整率</th>\
        <th scope=\"col\">推荐项填写率</th><th scope=\"col\">通过率</th><th scope=\"col\">逻辑一致率</th>\
        <th scope=\"col\">重复率</th><th scope=\"col\">对账差异</th><th scope=\"col\">得分</th><th scope=\"col\">趋势</th></tr>";
    let mut body = String::new();
    body.push_str(&format!(
        "<h1>数据质量报告 Data quality report</h1><p>{} — {}（迟报：临床时间后超过 {LATE_HOURS} 小时上传）</p>",
        esc(&r.from),
        esc(&r.to)
    ));
    body.push_str("<h2>全区域与区县 Region and districts</h2><table>");
    body.push_str(head);
    body.push_str(&html_row("全区域 Region", &r.region().card(), ""));
    for (d, (t, n)) in r.districts() {
        body.push_str(&html_row(&format!("{d}（{n} 家机构）"), &t.card(), ""));
    }
    body.push_str("</table><h2>机构 Institutions</h2><table>");
    body.push_str(head);
    let mut ranked: Vec<(&String, &Institution, Card)> = r
        .institutions
        .iter()
        .map(|(s, i)| (s, i, i.total.card()))
        .collect();
    ranked.sort_by(|a, b| {
        b.2.score
            .unwrap_or(0.0)
            .total_cmp(&a.2.score.unwrap_or(0.0))
            .then(a.0.cmp(b.0))
    });
    for (src, i, c) in ranked {
        let name = match (&i.name, &i.district) {
            (Some(n), Some(d)) => format!("{n}（{d}）"),
            (Some(n), None) => n.clone(),
            _ => src.clone(),
        };
        body.push_str(&html_row(&name, &c, &sparkline(&i.days)));
    }
    body.push_str("</table>");
    format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
         <title>数据质量报告 {} — {}</title><style>body{{font-family:sans-serif;margin:2em;color:#1b1f24}}\
         table{{border-collapse:collapse;margin-bottom:2em}}th,td{{border:1px solid #8c959f;padding:4px 8px;text-align:right}}\
         th[scope=row]{{text-align:left}}@media print{{body{{margin:0}}}}</style></head><body>{body}</body></html>",
        esc(&r.from),
        esc(&r.to)
    )
}
