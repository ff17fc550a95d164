//! 平台运营: the operations console. Platform staff sign in with their operator account and
//! see the sections their roles open: intake per institution and hour, quality scorecards with
//! trends and the report export, the work-order queue with its SLA breaches and escalations
//! (quality officers, administrators); the identity review queue with side-by-side comparison
//! and the recent merges (identity stewards); the audit chain's verification, the break-glass
//! review queue and the access search (auditors, the privacy officer).
//!
//! Like every page, the console asks the engine as the signed-in operator: the roles decide
//! what it may see, and what an operator reads to decide (the two records of a review pair)
//! is read with the reason recorded in the audit trail.
//!
//! One file past the ~800 lines we keep to, because one handler per section of one console
//! (intake, quality, work orders, identity, audit), sharing its layout helpers.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use hutong_access::principal::{Capability, Kind, Principal};
use hutong_link::persons::{review_pair, IDENTITY_CS, REVIEW_CODE};
use hutong_server::consent::{ACCESS_CS, BREAK_GLASS_REVIEW};
use hutong_server::http::AppState;
use hutong_server::wire::{parse_query_string, Body};
use maud::{html, Markup};
use serde_json::{json, Value};

use crate::view::{self, local};
use crate::{call_why, form, json_of, notice, problem, Desk, Lang};

const HOME: &str = "/console";

fn quality(p: &Principal) -> bool {
    p.can(Capability::OverseeQuality)
}

fn auditing(p: &Principal) -> bool {
    p.can(Capability::ReadAuditTrail)
}

/// The console's sections `p`'s roles open: (path, 中文, English).
pub fn sections(p: &Principal) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut out = vec![(HOME, "总览", "Overview")];
    if quality(p) {
        out.push(("/console/intake", "数据接入", "Intake"));
        out.push(("/console/quality", "质控评分", "Quality"));
        out.push(("/console/work-orders", "工单", "Work orders"));
        out.push(("/console/coordination", "业务协同", "Coordination"));
        out.push(("/console/nodes", "平台层级", "Platform levels"));
    }
    if p.can(Capability::ManageIdentity) {
        out.push(("/console/identity", "身份复核", "Identity"));
    }
    if auditing(p) {
        out.push(("/console/audit", "审计", "Audit"));
    }
    out
}

/// A signed-in operator's request.
pub(crate) struct Op(Desk);

impl std::ops::Deref for Op {
    type Target = Desk;
    fn deref(&self) -> &Desk {
        &self.0
    }
}

impl Desk {
    /// A page for a section the operator's roles do not open.
    fn not_yours(&self) -> Response {
        self.page(
            StatusCode::FORBIDDEN,
            self.lang.t("无权访问", "Not for your role"),
            notice(
                self.lang.t(
                    "您的运营角色不包含此功能。",
                    "Your operator roles do not include this section.",
                ),
                true,
            ),
        )
    }
}

/// Every console page but the sign-in: signed in as an operator, or off to the sign-in page.
impl axum::extract::FromRequestParts<Arc<AppState>> for Op {
    type Rejection = Redirect;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &Arc<AppState>,
    ) -> Result<Op, Redirect> {
        let query = parse_query_string(parts.uri.query().unwrap_or(""));
        let from = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string())
            .unwrap_or_default();
        Desk::of(st, &parts.headers, query, from, Kind::Operator)
            .map(Op)
            .ok_or_else(|| Redirect::to(HOME))
    }
}

fn card(n: impl std::fmt::Display, label: &str) -> Markup {
    html! { div.card { div.n { (n) } div.l { (label) } } }
}

fn pct(x: Option<f64>) -> String {
    x.map(|v| format!("{:.1}%", v * 100.0))
        .unwrap_or_else(|| "—".into())
}

fn num(x: &Value) -> String {
    match x.as_f64() {
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "—".into(),
    }
}

fn when(v: &Value) -> String {
    v.as_str()
        .and_then(hutong_fhir::date::parse)
        .map(|d| local(d.lo))
        .unwrap_or_default()
}

fn entries(r: &hutong_server::wire::Resp) -> Vec<Value> {
    json_of(r)["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .collect()
}

/// How many of the platform's review Tasks of `code` wait for a decision.
async fn waiting(d: &Desk, st: &Arc<AppState>, code: String) -> String {
    let r = d
        .ask(
            st,
            "GET",
            "Task",
            &[
                ("code", &code),
                ("status", "requested"),
                ("_summary", "count"),
            ],
            None,
        )
        .await;
    num(&json_of(&r)["total"])
}

/// The work orders pending, past due and escalated.
async fn order_counts(d: &Desk, st: &Arc<AppState>) -> Vec<(String, &'static str, &'static str)> {
    let mut out = Vec::new();
    for (q, zh, en) in [
        ("pending", "待处理工单", "Pending work orders"),
        ("overdue", "超时工单", "Past due"),
        ("escalated", "已升级工单", "Escalated"),
    ] {
        let params: Vec<(&str, &str)> = match q {
            "pending" => vec![("_count", "1")],
            other => vec![(other, "true"), ("_count", "1")],
        };
        let r = d.ask(st, "GET", "$work-orders", &params, None).await;
        out.push((num(&json_of(&r)["total"]), zh, en));
    }
    out
}

/// `GET /console`: sign in, or the overview of the operator's sections.
pub async fn home(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let d = match Desk::or_sign_in(&st, &req, addr, Kind::Operator) {
        Ok(d) => d,
        Err(page) => return *page,
    };
    let p = d.s.principal.clone();
    let mut cards: Vec<(String, &str, &str)> = Vec::new();
    if quality(&p) {
        cards.extend(order_counts(&d, &st).await);
    }
    if p.can(Capability::ManageIdentity) {
        let n = waiting(&d, &st, format!("{IDENTITY_CS}|{REVIEW_CODE}")).await;
        cards.push((n, "待复核的疑似重复", "Possible duplicates to review"));
    }
    if p.can(Capability::ReviewBreakGlass) {
        let n = waiting(&d, &st, format!("{ACCESS_CS}|{BREAK_GLASS_REVIEW}")).await;
        cards.push((n, "待复核的紧急调阅", "Break-glass accesses to review"));
    }
    let lang = d.lang;
    let body = html! {
        p { (lang.t("您好，", "Signed in as ")) strong { (p.label()) } " · "
            (p.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")) }
        div.cards {
            @for (n, zh, en) in &cards { (card(n, lang.t(zh, en))) }
        }
        ul {
            @for (href, zh, en) in sections(&p).into_iter().skip(1) {
                li { a href=(href) { (lang.t(zh, en)) } }
            }
        }
    };
    d.page(
        StatusCode::OK,
        lang.t("运营总览", "Operations overview"),
        body,
    )
}

/// `POST /console/login`.
pub async fn login(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let query = parse_query_string(req.uri().query().unwrap_or(""));
    let lang = Lang::of(req.headers(), &query);
    let f = form(req).await;
    match crate::password_sign_in(&st, addr, &f, Kind::Operator, lang).await {
        Ok(r) => r,
        Err((status, msg)) => crate::sign_in_page(lang, Kind::Operator, status, &query, Some(&msg)),
    }
}

// -- intake -----------------------------------------------------------------------------------

/// `GET /console/intake[?hours=N]`: per institution and hour, accepted and rejected, and how
/// late the data came.
pub async fn intake(State(st): State<Arc<AppState>>, d: Op) -> Response {
    if !quality(&d.s.principal) {
        return d.not_yours();
    }
    let lang = d.lang;
    let hours = d.q("hours").unwrap_or_else(|| "24".into());
    let r = d
        .ask(&st, "GET", "$intake", &[("hours", &hours)], None)
        .await;
    if r.status != 200 {
        return d.page(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            lang.t("数据接入", "Intake"),
            notice(&problem(&r), true),
        );
    }
    let v = json_of(&r);
    let labels: Vec<String> = v["hours"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| when(h).get(11..16).unwrap_or("").to_string())
        .collect();
    let series = |f: &Value, k: &str| -> Vec<u64> {
        f[k].as_array()
            .into_iter()
            .flatten()
            .map(|n| n.as_u64().unwrap_or(0))
            .collect()
    };
    let region = &v["region"];
    let share = |f: &Value| {
        let (a, b) = (
            f["received"].as_f64().unwrap_or(0.0),
            f["rejected"].as_f64().unwrap_or(0.0),
        );
        (a + b > 0.0).then(|| b / (a + b))
    };
    let body = html! {
        nav.filters aria-label=(lang.t("时间范围", "Period")) {
            @for (h, zh, en) in [("6", "6小时", "6 h"), ("24", "24小时", "24 h"), ("48", "48小时", "48 h"), ("168", "7天", "7 days")] {
                a href=(format!("/console/intake?hours={h}")) aria-current=[(h == hours).then_some("page")] { (lang.t(zh, en)) }
            }
        }
        p.meta { (when(&v["from"])) " — " (when(&v["to"])) }
        div.cards {
            (card(num(&region["received"]), lang.t("接收", "Received")))
            (card(num(&region["rejected"]), lang.t("拒收", "Rejected")))
            (card(pct(share(region)), lang.t("拒收率", "Rejection rate")))
            (card(num(&region["delay"]["medianHours"]), lang.t("上传延迟中位数（小时）", "Upload delay, median (h)")))
            (card(num(&region["delay"]["p90Hours"]), lang.t("上传延迟P90（小时）", "Upload delay, p90 (h)")))
        }
        h2 { (lang.t("全区每小时接收量", "Region, per hour")) }
        (view::bars(lang, &labels, &series(region, "receivedPerHour"), &series(region, "rejectedPerHour")))
        h2 { (lang.t("各机构", "Institutions")) }
        table {
            (view::head(lang, &[("机构", "Institution", false), ("区县", "District", false), ("接收", "Received", true), ("拒收", "Rejected", true), ("拒收率", "Rejection rate", true), ("延迟中位数(h)", "Delay median (h)", true), ("延迟P90(h)", "Delay p90 (h)", true), ("每小时", "Per hour", false)]))
            tbody {
                @for i in v["institutions"].as_array().into_iter().flatten() {
                    @let f = &i["figures"];
                    @let per: Vec<Option<f64>> = series(f, "receivedPerHour").iter().map(|n| Some(*n as f64)).collect();
                    @let top = per.iter().flatten().fold(1.0f64, |a, b| a.max(*b));
                    tr {
                        td { (i["name"].as_str().or(i["source"].as_str()).unwrap_or("")) }
                        td { (i["district"].as_str().unwrap_or("")) }
                        td.num { (num(&f["received"])) }
                        td.num { (num(&f["rejected"])) }
                        td.num { (pct(share(f))) }
                        td.num { (num(&f["delay"]["medianHours"])) }
                        td.num { (num(&f["delay"]["p90Hours"])) }
                        td { (view::sparkline(lang.t("每小时接收量", "Received per hour"), &per, 0.0, top)) }
                    }
                }
            }
        }
        p.meta { (lang.t("上传延迟 = 平台接收时间 − 机构采集时间，按全区最近接收的", "Upload delay = received − the institution's collection time, measured on the region's "))
            (num(&v["delaySample"])) (lang.t("条计算。", " most recently received resources.")) }
    };
    d.page(StatusCode::OK, lang.t("数据接入", "Intake"), body)
}

// -- quality ----------------------------------------------------------------------------------

fn period<'a>(
    d: &'a Desk,
    extra: &[(&'a str, &'a str)],
) -> (Option<String>, Option<String>, Vec<(&'a str, String)>) {
    let (from, to) = (d.q("from"), d.q("to"));
    let mut q: Vec<(&str, String)> = extra.iter().map(|(k, v)| (*k, v.to_string())).collect();
    if let Some(f) = &from {
        q.push(("from", f.clone()));
    }
    if let Some(t) = &to {
        q.push(("to", t.clone()));
    }
    (from, to, q)
}

/// `GET /console/quality[?from=&to=]`: the scorecards of the region, its districts and
/// institutions (worst first), each institution's daily score as a trend.
pub async fn quality_page(State(st): State<Arc<AppState>>, d: Op) -> Response {
    if !quality(&d.s.principal) {
        return d.not_yours();
    }
    let lang = d.lang;
    let (from, to, q) = period(&d, &[]);
    let qr: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = d.ask(&st, "GET", "$scorecard", &qr, None).await;
    let title = lang.t("质控评分", "Quality scorecards");
    if r.status != 200 {
        return d.page(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            title,
            notice(&problem(&r), true),
        );
    }
    let v = json_of(&r);
    let export = |format: &str| {
        let mut u = format!(
            "/console/quality/export?format={format}&from={}&to={}",
            v["from"].as_str().unwrap_or(""),
            v["to"].as_str().unwrap_or("")
        );
        if u.ends_with("to=") {
            u.truncate(u.len() - 4);
        }
        u
    };
    let mut institutions: Vec<&Value> =
        v["institutions"].as_array().into_iter().flatten().collect();
    institutions.sort_by(|a, b| {
        let s = |x: &Value| x["card"]["score"].as_f64().unwrap_or(f64::MAX);
        s(a).total_cmp(&s(b))
    });
    let head = html! {
        tr {
            th scope="col" { (lang.t("名称", "Name")) }
            th.num scope="col" { (lang.t("得分", "Score")) }
            th.num scope="col" { (lang.t("接收", "Received")) }
            th.num scope="col" { (lang.t("拒收", "Rejected")) }
            th.num scope="col" { (lang.t("及时率", "On time")) }
            th.num scope="col" { (lang.t("完整率", "Complete")) }
            th.num scope="col" { (lang.t("合格率", "Valid")) }
            th.num scope="col" { (lang.t("一致率", "Consistent")) }
            th.num scope="col" { (lang.t("重复率", "Duplicates")) }
        }
    };
    let figures = |c: &Value| {
        html! {
            td.num { (num(&c["score"])) }
            td.num { (num(&c["received"])) }
            td.num { (num(&c["rejected"])) }
            td.num { (pct(c["timeliness"]["late_share"].as_f64().map(|l| 1.0 - l))) }
            td.num { (pct(c["completeness"]["required"].as_f64())) }
            td.num { (pct(c["validity"]["pass_rate"].as_f64())) }
            td.num { (pct(c["consistency"].as_f64())) }
            td.num { (pct(c["duplicate_rate"].as_f64())) }
        }
    };
    let region = &v["region"];
    let body = html! {
        form method="get" action="/console/quality" {
            label for="from" { (lang.t("开始日期", "From")) }
            input id="from" name="from" type="date" value=(from.clone().unwrap_or_else(|| v["from"].as_str().unwrap_or("").into()));
            label for="to" { (lang.t("结束日期", "To")) }
            input id="to" name="to" type="date" value=(to.clone().unwrap_or_else(|| v["to"].as_str().unwrap_or("").into()));
            button type="submit" { (lang.t("查看", "Show")) }
        }
        p {
            (lang.t("导出报告：", "Export the report: "))
            a href=(export("csv")) { "CSV" } " · "
            a href=(export("html")) { (lang.t("打印版", "printable page")) }
        }
        div.cards {
            (card(num(&region["score"]), lang.t("全区得分", "Region score")))
            (card(num(&region["received"]), lang.t("接收", "Received")))
            (card(num(&region["rejected"]), lang.t("拒收", "Rejected")))
            (card(num(&region["timeliness"]["median_hours"]), lang.t("上传时效中位数（小时）", "Timeliness, median (h)")))
        }
        h2 { (lang.t("各区县", "Districts")) }
        table {
            thead { (head) }
            tbody {
                @for x in v["districts"].as_array().into_iter().flatten() {
                    tr { td { (x["district"].as_str().unwrap_or("")) } (figures(&x["card"])) }
                }
            }
        }
        h2 { (lang.t("各机构（得分由低到高）", "Institutions (lowest score first)")) }
        table {
            (view::head(lang, &[("机构", "Institution", false), ("区县", "District", false), ("得分", "Score", true), ("每日得分趋势", "Daily score", false), ("接收", "Received", true), ("拒收", "Rejected", true), ("及时率", "On time", true), ("完整率", "Complete", true), ("合格率", "Valid", true), ("对账差异", "Reconciliation gaps", true)]))
            tbody {
                @for i in &institutions {
                    @let c = &i["card"];
                    @let days: Vec<Option<f64>> = i["trend"].as_array().into_iter().flatten().map(|t| t["card"]["score"].as_f64()).collect();
                    tr data-source=(i["source"].as_str().unwrap_or("")) {
                        td { (i["name"].as_str().or(i["source"].as_str()).unwrap_or("")) }
                        td { (i["district"].as_str().unwrap_or("")) }
                        td.num { (num(&c["score"])) }
                        td { (view::sparkline(lang.t("每日得分", "Daily score"), &days, 0.0, 100.0)) " " span.meta { (days.len()) (lang.t("天", " d")) } }
                        td.num { (num(&c["received"])) }
                        td.num { (num(&c["rejected"])) }
                        td.num { (pct(c["timeliness"]["late_share"].as_f64().map(|l| 1.0 - l))) }
                        td.num { (pct(c["completeness"]["required"].as_f64())) }
                        td.num { (pct(c["validity"]["pass_rate"].as_f64())) }
                        td.num { (num(&c["reconciliation_gaps"])) }
                    }
                }
            }
        }
    };
    d.page(StatusCode::OK, title, body)
}

/// `GET /console/quality/export?format=csv|html[&from&to]`: the report file, as the API
/// gives it.
pub async fn quality_export(State(st): State<Arc<AppState>>, d: Op) -> Response {
    if !quality(&d.s.principal) {
        return d.not_yours();
    }
    let format = d.q("format").unwrap_or_else(|| "csv".into());
    let (_, _, q) = period(&d, &[]);
    let mut qr: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
    qr.push(("format", &format));
    let r = d.ask(&st, "GET", "$scorecard", &qr, None).await;
    if r.status != 200 {
        return d.page(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            d.lang.t("质控评分", "Quality scorecards"),
            notice(&problem(&r), true),
        );
    }
    let bytes = match r.body {
        Body::Raw(b) => b,
        Body::Json(v) => v.to_string().into_bytes(),
        Body::Empty => Vec::new(),
    };
    let mut resp = (StatusCode::OK, bytes).into_response();
    for (k, v) in &r.headers {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::try_from(k.as_str()),
            axum::http::HeaderValue::from_str(v),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp.headers_mut().insert(
        "cache-control",
        axum::http::HeaderValue::from_static("no-store"),
    );
    resp
}

// -- work orders ------------------------------------------------------------------------------

/// `GET /console/work-orders[?show=pending|overdue|escalated|all]`: the queue, soonest due
/// first, SLA breaches and escalations marked.
pub async fn work_orders(State(st): State<Arc<AppState>>, d: Op) -> Response {
    if !quality(&d.s.principal) {
        return d.not_yours();
    }
    let lang = d.lang;
    let show = d.q("show").unwrap_or_else(|| "pending".into());
    let params: Vec<(&str, &str)> = match show.as_str() {
        "overdue" => vec![("overdue", "true")],
        "escalated" => vec![("escalated", "true")],
        "all" => vec![("state", "all")],
        _ => vec![],
    };
    let mut q = params.clone();
    q.push(("_count", "200"));
    let r = d.ask(&st, "GET", "$work-orders", &q, None).await;
    let title = lang.t("工单", "Work orders");
    if r.status != 200 {
        return d.page(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            title,
            notice(&problem(&r), true),
        );
    }
    let v = json_of(&r);
    let counts = order_counts(&d, &st).await;
    let items: Vec<Value> = v["items"].as_array().cloned().unwrap_or_default();
    let owners: BTreeSet<String> = items
        .iter()
        .filter_map(|i| i["owner"].as_str().map(String::from))
        .collect();
    let names = crate::names(&st, owners).await;
    let body = html! {
        div.cards { @for (n, zh, en) in &counts { (card(n, lang.t(zh, en))) } }
        nav.filters aria-label=(lang.t("筛选", "Filter")) {
            @for (k, zh, en) in [("pending", "待处理", "Pending"), ("overdue", "超时", "Past due"), ("escalated", "已升级", "Escalated"), ("all", "全部", "All")] {
                a href=(format!("/console/work-orders?show={k}")) aria-current=[(k == show).then_some("page")] { (lang.t(zh, en)) }
            }
        }
        p.meta { (lang.t("共", "")) (num(&v["total"])) (lang.t("张", " orders")) }
        table {
            (view::head(lang, &[("工单", "Order", false), ("责任机构", "Owner", false), ("类别", "Category", false), ("优先级", "Priority", false), ("状态", "State", false), ("提出", "Opened", false), ("期限", "Due", false), ("标记", "Flags", false)]))
            tbody {
                @for i in &items {
                    @let overdue = i["overdue"] == true;
                    tr class=[overdue.then_some("late")] {
                        td { (i["id"].as_str().unwrap_or("").get(..8).unwrap_or("")) br; span.meta { (i["focus"].as_str().unwrap_or("")) } }
                        td { (i["owner"].as_str().map(|o| names.get(o).cloned().unwrap_or_else(|| o.to_string())).unwrap_or_default()) }
                        td { (i["category"].as_str().unwrap_or("")) @if let Some(rule) = i["rule"].as_str() { br; span.meta { (rule) } } }
                        td { (i["priority"].as_str().unwrap_or("")) }
                        td { (i["stateLabel"].as_str().unwrap_or("")) }
                        td { (when(&i["opened"])) }
                        td { (when(&i["due"])) }
                        td {
                            @if overdue { span.tag { (lang.t("超时", "past due")) } }
                            @if i["escalated"] == true { span.tag { (lang.t("已升级", "escalated")) } }
                        }
                    }
                }
            }
        }
    };
    d.page(StatusCode::OK, title, body)
}

// -- identity ---------------------------------------------------------------------------------

fn score_of(t: &Value) -> f64 {
    t["input"]
        .as_array()
        .and_then(|i| i.iter().find(|x| x["type"]["text"] == "score"))
        .and_then(|x| x["valueDecimal"].as_f64())
        .unwrap_or(0.0)
}

/// `GET /console/identity`: the review queue of possible duplicates, likeliest first, and
/// the recent decisions of stewards (merges, splits, unlinks).
pub async fn identity(State(st): State<Arc<AppState>>, d: Op) -> Response {
    if !d.s.principal.can(Capability::ManageIdentity) {
        return d.not_yours();
    }
    let lang = d.lang;
    let code = format!("{IDENTITY_CS}|{REVIEW_CODE}");
    let r = d
        .ask(
            &st,
            "GET",
            "Task",
            &[
                ("code", &code),
                ("status", "requested"),
                ("_count", "100"),
                ("_total", "accurate"),
            ],
            None,
        )
        .await;
    let mut queue = entries(&r);
    queue.sort_by(|a, b| score_of(b).total_cmp(&score_of(a)));
    let recent = d
        .ask(
            &st,
            "GET",
            "Provenance",
            &[
                ("agent-type", "verifier"),
                ("_sort", "-recorded"),
                ("_count", "20"),
            ],
            None,
        )
        .await;
    let recent = entries(&recent);
    let done = d.q("done");
    let body = html! {
        @if let Some(x) = &done {
            (notice(match x.as_str() {
                "same" => lang.t("已确认为同一人并合并。", "Confirmed as one person and merged."),
                _ => lang.t("已确认为不同的人，今后不再合并。", "Kept apart: they will not be merged."),
            }, false))
        }
        @if r.status != 200 { (notice(&problem(&r), true)) }
        h2 { (lang.t("待复核的疑似重复", "Possible duplicates to review")) " (" (num(&json_of(&r)["total"])) ")" }
        @if queue.is_empty() { p { (lang.t("队列为空。", "The queue is empty.")) } }
        table {
            thead { tr {
                th scope="col" { (lang.t("匹配概率", "Match probability")) }
                th scope="col" { (lang.t("说明", "Why")) }
                th scope="col" { (lang.t("提出时间", "Since")) }
                th scope="col" { span.skip { (lang.t("操作", "Action")) } }
            } }
            tbody {
                @for t in &queue {
                    @let id = t["id"].as_str().unwrap_or("");
                    tr data-task=(id) {
                        td.num { (format!("{:.3}", score_of(t))) }
                        td { (t["description"].as_str().unwrap_or("")) }
                        td { (when(&t["authoredOn"])) }
                        td { a href=(format!("/console/identity/{id}")) { (lang.t("比对", "Compare")) } }
                    }
                }
            }
        }
        h2 { (lang.t("最近的人工合并与拆分", "Recent merges and splits by stewards")) }
        @if recent.is_empty() { p { (lang.t("暂无。", "None yet.")) } }
        table {
            (view::head(lang, &[("时间", "When", false), ("操作", "Change", false), ("操作人", "By", false), ("原因", "Reason", false), ("涉及主索引", "Persons", false)]))
            tbody {
                @for p in &recent {
                    tr {
                        td { (when(&p["recorded"])) }
                        td { (p["activity"]["coding"][0]["display"].as_str().or(p["activity"]["coding"][0]["code"].as_str()).unwrap_or("")) }
                        td { (p["agent"][0]["who"]["display"].as_str().unwrap_or("")) }
                        td { (p["reason"][0]["text"].as_str().unwrap_or("")) }
                        td { (p["target"].as_array().into_iter().flatten().filter_map(|t| t["reference"].as_str()).collect::<Vec<_>>().join(", ")) }
                    }
                }
            }
        }
    };
    d.page(StatusCode::OK, lang.t("身份复核", "Identity review"), body)
}

/// The rows of the side-by-side comparison: (中文, English, value of each record).
fn compared(
    a: &Value,
    b: &Value,
    names: &HashMap<String, String>,
) -> Vec<(&'static str, &'static str, String, String)> {
    let ident = |p: &Value, id_card: bool| -> String {
        p["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| (i["system"] == hutong_mpi::fhir::ID_SYSTEM) == id_card)
            .map(|i| {
                let v = i["value"].as_str().unwrap_or("");
                if id_card {
                    v.to_string()
                } else {
                    let sys = i["system"].as_str().unwrap_or("");
                    format!("{v} ({})", sys.rsplit('/').next().unwrap_or(sys))
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let name = |p: &Value| {
        p["name"][0]["text"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| {
                format!(
                    "{}{}",
                    p["name"][0]["family"].as_str().unwrap_or(""),
                    p["name"][0]["given"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|g| g.as_str())
                        .collect::<String>()
                )
            })
    };
    let phone = |p: &Value| {
        p["telecom"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["system"] == "phone")
            .filter_map(|t| t["value"].as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let address = |p: &Value| {
        let a = &p["address"][0];
        a["text"].as_str().map(String::from).unwrap_or_else(|| {
            [
                a["state"].as_str(),
                a["city"].as_str(),
                a["district"].as_str(),
            ]
            .into_iter()
            .flatten()
            .chain(
                a["line"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|l| l.as_str()),
            )
            .collect::<String>()
        })
    };
    let source = |p: &Value| {
        let s = p["meta"]["source"].as_str().unwrap_or("");
        names.get(s).cloned().unwrap_or_else(|| s.to_string())
    };
    let s = |p: &Value, k: &str| p[k].as_str().unwrap_or("").to_string();
    let sex = |p: &Value| match p["gender"].as_str() {
        Some("male") => "男 male".to_string(),
        Some("female") => "女 female".to_string(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    vec![
        ("来源机构", "Institution", source(a), source(b)),
        ("姓名", "Name", name(a), name(b)),
        ("性别", "Sex", sex(a), sex(b)),
        (
            "出生日期",
            "Birth date",
            s(a, "birthDate"),
            s(b, "birthDate"),
        ),
        ("身份证号", "ID number", ident(a, true), ident(b, true)),
        (
            "其他标识",
            "Other identifiers",
            ident(a, false),
            ident(b, false),
        ),
        ("电话", "Phone", phone(a), phone(b)),
        ("地址", "Address", address(a), address(b)),
        (
            "登记时间",
            "Registered",
            when(&a["meta"]["lastUpdated"]),
            when(&b["meta"]["lastUpdated"]),
        ),
    ]
}

/// `GET /console/identity/{task}`: the two records side by side, read with the review
/// recorded as the reason; the steward links them or keeps them apart.
pub async fn pair(State(st): State<Arc<AppState>>, Path(task): Path<String>, d: Op) -> Response {
    pair_page(&st, &d, &task, None).await
}

async fn pair_page(st: &Arc<AppState>, d: &Desk, task: &str, err: Option<String>) -> Response {
    if !d.s.principal.can(Capability::ManageIdentity) {
        return d.not_yours();
    }
    let lang = d.lang;
    let title = lang.t("疑似重复比对", "Compare a possible duplicate");
    let t = d.ask(st, "GET", &format!("Task/{task}"), &[], None).await;
    if t.status != 200 {
        return d.page(
            StatusCode::from_u16(t.status).unwrap_or(StatusCode::NOT_FOUND),
            title,
            notice(&problem(&t), true),
        );
    }
    let t = json_of(&t);
    let (Some(a), Some(b)) = review_pair(&t) else {
        return d.page(
            StatusCode::BAD_REQUEST,
            title,
            notice(
                lang.t(
                    "这不是疑似重复复核任务。",
                    "This task is not a match review.",
                ),
                true,
            ),
        );
    };
    let why = format!("identity review Task/{task}");
    let mut records = Vec::new();
    for r in [&a, &b] {
        let x = call_why(
            st,
            d.s.principal.clone(),
            &d.from,
            "GET",
            r,
            &[],
            None,
            Some(why.clone()),
        )
        .await;
        if x.status != 200 {
            return d.page(
                StatusCode::from_u16(x.status).unwrap_or(StatusCode::NOT_FOUND),
                title,
                notice(&problem(&x), true),
            );
        }
        records.push(json_of(&x));
    }
    let sources: BTreeSet<String> = records
        .iter()
        .filter_map(|p| p["meta"]["source"].as_str().map(String::from))
        .collect();
    let names = crate::names(st, sources).await;
    let rows = compared(&records[0], &records[1], &names);
    let open = t["status"] == "requested";
    let body = html! {
        @if let Some(e) = &err { (notice(e, true)) }
        p { (t["description"].as_str().unwrap_or("")) }
        p.meta { (lang.t("匹配概率 ", "Match probability ")) (format!("{:.3}", score_of(&t))) " · "
            (lang.t("本次查看已记入审计日志。", "This viewing is recorded in the audit trail.")) }
        table {
            thead { tr {
                th scope="col" { span.skip { (lang.t("项目", "Field")) } }
                th scope="col" { (a.as_str()) }
                th scope="col" { (b.as_str()) }
            } }
            tbody {
                @for (zh, en, x, y) in &rows {
                    @let differ = x != y;
                    tr {
                        th scope="row" { (lang.t(zh, en)) }
                        td class=[differ.then_some("diff")] { (x) }
                        td class=[differ.then_some("diff")] { (y) }
                    }
                }
            }
        }
        @if open {
            form method="post" action=(format!("/console/identity/{task}")) {
                input type="hidden" name="csrf" value=(d.s.csrf());
                label for="reason" { (lang.t("判断依据", "Reason for the decision")) }
                textarea id="reason" name="reason" required rows="2" {}
                div {
                    button type="submit" name="decision" value="same" { (lang.t("是同一人：合并", "Same person: link")) }
                    button.secondary type="submit" name="decision" value="different" { (lang.t("不是同一人：分开", "Different people: keep apart")) }
                }
            }
        } @else {
            (notice(lang.t("此任务已处理。", "This task has been decided."), false))
        }
        p { a href="/console/identity" { (lang.t("返回队列", "Back to the queue")) } }
    };
    d.page(
        if err.is_some() {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::OK
        },
        title,
        body,
    )
}

/// `POST /console/identity/{task}`: the steward's decision (`same` | `different`) with a
/// reason.
pub async fn decide(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(task): Path<String>,
    req: Request,
) -> Response {
    let (d, f) = match Desk::posted(&st, addr, req, Kind::Operator, HOME).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let decision = f.get("decision").cloned().unwrap_or_default();
    let reason = f
        .get("reason")
        .map(|r| r.trim().to_string())
        .unwrap_or_default();
    if reason.is_empty() {
        let msg = d.lang.t("请写明判断依据。", "Say why.").to_string();
        return pair_page(&st, &d, &task, Some(msg)).await;
    }
    let p = json!({"resourceType": "Parameters", "parameter": [
        {"name": "decision", "valueCode": decision},
        {"name": "reason", "valueString": reason},
    ]});
    let r = d
        .ask(&st, "POST", &format!("Task/{task}/$decide"), &[], Some(&p))
        .await;
    if r.status != 200 {
        return pair_page(&st, &d, &task, Some(problem(&r))).await;
    }
    Redirect::to(&format!(
        "/console/identity?done={}",
        if decision == "same" {
            "same"
        } else {
            "different"
        }
    ))
    .into_response()
}

// -- audit ------------------------------------------------------------------------------------

/// `GET /console/audit[?verify=1][&patient=…&since=…]`: the chain's verification on demand,
/// the break-glass review queue (privacy officer), and the access search.
pub async fn audit(State(st): State<Arc<AppState>>, d: Op) -> Response {
    let p = d.s.principal.clone();
    if !auditing(&p) {
        return d.not_yours();
    }
    let lang = d.lang;
    let verified = match d.q("verify") {
        Some(_) => Some(d.ask(&st, "GET", "AuditEvent/$verify", &[], None).await),
        None => None,
    };
    let param = |v: &Value, name: &str| -> Vec<Value> {
        v["parameter"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| x["name"] == name)
            .map(|x| {
                x.get("valueBoolean")
                    .or(x.get("valueInteger"))
                    .or(x.get("valueString"))
                    .cloned()
                    .unwrap_or(Value::Null)
            })
            .collect()
    };
    let reviews = if p.can(Capability::ReviewBreakGlass) {
        let code = format!("{ACCESS_CS}|{BREAK_GLASS_REVIEW}");
        let r = d
            .ask(
                &st,
                "GET",
                "Task",
                &[("code", &code), ("status", "requested"), ("_count", "100")],
                None,
            )
            .await;
        Some(entries(&r))
    } else {
        None
    };
    let patient = d.q("patient");
    let since = d.q("since");
    let mut q: Vec<(&str, String)> = vec![("_count", "100".into())];
    if let Some(x) = &patient {
        q.push((
            "patient",
            format!("Patient/{}", x.trim_start_matches("Patient/")),
        ));
    }
    if let Some(x) = &since {
        q.push(("date", format!("ge{x}")));
    }
    let searched = if patient.is_some() || since.is_some() {
        let qr: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Some(d.ask(&st, "GET", "AuditEvent", &qr, None).await)
    } else {
        None
    };
    let done = d.q("reviewed");
    let body = html! {
        @if let Some(x) = &done {
            @let verdict = if x == "justified" { lang.t("合理", "justified") } else { lang.t("不合理", "unjustified") };
            (notice(&format!("{} {verdict}", lang.t("复核结论已记录：", "Review recorded:")), false))
        }
        h2 { (lang.t("审计链校验", "Audit chain")) }
        @match &verified {
            None => {
                form method="get" action="/console/audit" {
                    input type="hidden" name="verify" value="1";
                    button type="submit" { (lang.t("立即校验", "Verify now")) }
                }
            }
            Some(r) if r.status == 200 => {
                @let v = json_of(r);
                @let intact = param(&v, "intact").first() == Some(&Value::Bool(true));
                @if intact {
                    div.notice role="status" data-intact="true" { (lang.t("审计链完整：未发现篡改。", "The chain is intact: nothing was altered.")) }
                } @else {
                    div.notice.error role="alert" data-intact="false" { (lang.t("审计链校验失败！", "The chain does NOT verify!")) }
                }
                div.cards {
                    (card(num(param(&v, "entries").first().unwrap_or(&Value::Null)), lang.t("条目", "Entries")))
                    (card(num(param(&v, "partitions").first().unwrap_or(&Value::Null)), lang.t("分区", "Partitions")))
                    (card(num(param(&v, "checkpoints").first().unwrap_or(&Value::Null)), lang.t("签名检查点", "Signed checkpoints")))
                    (card(num(param(&v, "unsigned").first().unwrap_or(&Value::Null)), lang.t("未签名条目", "Not yet signed")))
                }
                ul { @for x in param(&v, "problem") { li { (x.as_str().unwrap_or("")) } } }
            }
            Some(r) => { (notice(&problem(r), true)) }
        }
        @if let Some(queue) = &reviews {
            h2 { (lang.t("紧急调阅复核", "Break-glass reviews")) " (" (queue.len()) ")" }
            @if queue.is_empty() { p { (lang.t("没有待复核的紧急调阅。", "Nothing to review.")) } }
            table {
                (view::head(lang, &[("时间", "When", false), ("调阅者", "Who", false), ("原因", "Reason", false), ("结论", "Verdict", false)]))
                tbody {
                    @for t in queue {
                        @let id = t["id"].as_str().unwrap_or("");
                        tr.breakglass data-task=(id) {
                            td { (when(&t["authoredOn"])) }
                            td { (t["requester"]["display"].as_str().unwrap_or("")) br; span.meta { (t["for"]["reference"].as_str().unwrap_or("")) } }
                            td { (t["reasonCode"]["text"].as_str().unwrap_or("")) }
                            td {
                                form method="post" action=(format!("/console/audit/review/{id}")) {
                                    input type="hidden" name="csrf" value=(d.s.csrf());
                                    label for=(format!("note-{id}")) { (lang.t("备注", "Note")) }
                                    input id=(format!("note-{id}")) name="note";
                                    button type="submit" name="outcome" value="justified" { (lang.t("合理", "Justified")) }
                                    button.secondary type="submit" name="outcome" value="unjustified" { (lang.t("不合理", "Unjustified")) }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { (lang.t("访问记录查询", "Access search")) }
        form method="get" action="/console/audit" role="search" {
            label for="patient" { (lang.t("患者记录编号（Patient id）", "Patient id")) }
            input id="patient" name="patient" value=(patient.clone().unwrap_or_default());
            label for="since" { (lang.t("起始日期", "Since")) }
            input id="since" name="since" type="date" value=(since.clone().unwrap_or_default());
            button type="submit" { (lang.t("查询", "Search")) }
        }
        @if let Some(r) = &searched {
            @if r.status == 200 {
                p.meta { (lang.t("共", "")) (num(&json_of(r)["total"])) (lang.t("条", " entries")) }
                (view::audit_table(lang, &entries(r)))
            } @else {
                (notice(&problem(r), true))
            }
        }
    };
    d.page(StatusCode::OK, lang.t("审计", "Audit"), body)
}

/// `POST /console/audit/review/{task}`: the privacy officer's verdict on a break-glass access.
pub async fn review(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(task): Path<String>,
    req: Request,
) -> Response {
    let (d, f) = match Desk::posted(&st, addr, req, Kind::Operator, HOME).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let outcome = f.get("outcome").cloned().unwrap_or_default();
    let mut params = vec![json!({"name": "outcome", "valueCode": outcome})];
    if let Some(n) = f.get("note").filter(|n| !n.trim().is_empty()) {
        params.push(json!({"name": "note", "valueString": n.trim()}));
    }
    let p = json!({"resourceType": "Parameters", "parameter": params});
    let r = d
        .ask(&st, "POST", &format!("Task/{task}/$review"), &[], Some(&p))
        .await;
    if r.status != 200 {
        return d.page(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            d.lang.t("审计", "Audit"),
            notice(&problem(&r), true),
        );
    }
    Redirect::to(&format!("/console/audit?reviewed={outcome}")).into_response()
}
