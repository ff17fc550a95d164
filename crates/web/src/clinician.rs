//! 医生调阅: the clinician workstation. A clinician signs in with their institution's account,
//! finds a person (masked until authorized), asks for access — a code the resident reads out,
//! an approval in the resident's app, or break-glass with a reason — and then reads the
//! person's summary and timeline from every institution. Every call is the engine's, as the
//! clinician: the grant decides what shows, and every view is in the resident's access
//! history.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use hutong_access::principal::Kind;
use hutong_server::http::AppState;
use hutong_server::wire::parse_query_string;
use maud::{html, Markup};
use serde_json::{json, Value};

use crate::view::{self, local};
use crate::{call, form, json_of, notice, problem, Desk, Lang};

const HOME: &str = "/workstation";

/// `GET /workstation`: sign in, or find a person.
pub async fn home(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let d = match Desk::or_sign_in(&st, &req, addr, Kind::Clinician) {
        Ok(d) => d,
        Err(page) => return *page,
    };
    let get = |k: &str| d.q(k);
    let (idn, name, birth) = (get("id_number"), get("name"), get("birthdate"));
    let (card, mrn) = (get("health_card"), get("mrn"));
    let own_mrn =
        d.s.principal
            .institution
            .as_deref()
            .and_then(hutong_mpi::fhir::mrn_system);
    let mut params: Vec<(&str, String)> = Vec::new();
    if let Some(i) = &idn {
        params.push((
            "identifier",
            format!("{}|{}", hutong_mpi::fhir::ID_SYSTEM, i.to_uppercase()),
        ));
    } else if let Some(c) = &card {
        params.push((
            "identifier",
            format!("{}|{c}", hutong_mpi::fhir::HEALTH_CARD_SYSTEM),
        ));
    } else if let (Some(m), Some(system)) = (&mrn, &own_mrn) {
        params.push(("identifier", format!("{system}|{m}")));
    } else if let (Some(n), Some(b)) = (&name, &birth) {
        params.push(("name", n.clone()));
        params.push(("birthdate", b.clone()));
    }
    let mut found: Vec<Value> = Vec::new();
    let mut err = None;
    if !params.is_empty() {
        let q: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = call(
            &st,
            d.s.principal.clone(),
            &d.from,
            "GET",
            "Person/$find",
            &q,
            None,
        )
        .await;
        if r.status == 200 {
            found = json_of(&r)["entry"].as_array().cloned().unwrap_or_default();
        } else {
            err = Some(problem(&r));
        }
    }
    let lang = d.lang;
    let body = html! {
        form method="get" action="/workstation" role="search" {
            label for="id_number" { (lang.t("身份证号", "ID number")) }
            input id="id_number" name="id_number" value=(idn.clone().unwrap_or_default()) autocomplete="off";
            label for="health_card" { (lang.t("居民健康卡号", "Health card number")) }
            input id="health_card" name="health_card" value=(card.clone().unwrap_or_default()) autocomplete="off";
            @if own_mrn.is_some() {
                label for="mrn" { (lang.t("本院病历号", "Our medical record number")) }
                input id="mrn" name="mrn" value=(mrn.clone().unwrap_or_default()) autocomplete="off";
            }
            p { (lang.t("或", "or")) }
            label for="name" { (lang.t("姓名", "Name")) }
            input id="name" name="name" value=(name.clone().unwrap_or_default());
            label for="birthdate" { (lang.t("出生日期", "Birth date")) }
            input id="birthdate" name="birthdate" type="date" value=(birth.clone().unwrap_or_default());
            button type="submit" { (lang.t("查找", "Find")) }
        }
        @if let Some(e) = &err { (notice(e, true)) }
        @if !params.is_empty() && found.is_empty() && err.is_none() {
            p { (lang.t("没有找到。", "Nobody found.")) }
        }
        ul {
            @for e in &found {
                @let p = &e["resource"];
                @let authorized = e["search"]["extension"][0]["valueBoolean"] == true;
                li.item {
                    a href=(format!("/workstation/person/{}", p["id"].as_str().unwrap_or(""))) {
                        (p["name"][0]["text"].as_str().unwrap_or("?"))
                    }
                    " · " (p["gender"].as_str().unwrap_or("")) " · " (p["birthDate"].as_str().unwrap_or(""))
                    " · " (p["identifier"][0]["value"].as_str().unwrap_or(""))
                    " "
                    @if authorized { span.tag { (lang.t("已授权", "authorized")) } }
                    @else { span.tag { (lang.t("未授权", "not authorized")) } }
                }
            }
        }
    };
    d.page(StatusCode::OK, lang.t("查找患者", "Find a person"), body)
}

/// `POST /workstation/login`: the API's own sign-in, its token kept as the session.
pub async fn login(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let query = parse_query_string(req.uri().query().unwrap_or(""));
    let lang = Lang::of(req.headers(), &query);
    let f = form(req).await;
    match crate::password_sign_in(&st, addr, &f, Kind::Clinician, lang).await {
        Ok(r) => r,
        Err((status, msg)) => {
            crate::sign_in_page(lang, Kind::Clinician, status, &query, Some(&msg))
        }
    }
}

/// `GET /workstation/person/{id}`: the summary and timeline when authorized; the ways to ask
/// for access when not.
pub async fn person(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let query = parse_query_string(req.uri().query().unwrap_or(""));
    let Some(d) = Desk::of(
        &st,
        req.headers(),
        query,
        addr.ip().to_string(),
        Kind::Clinician,
    ) else {
        return Redirect::to(HOME).into_response();
    };
    let lang = d.lang;
    let me = call(
        &st,
        d.s.principal.clone(),
        &d.from,
        "GET",
        &format!("Person/{id}"),
        &[],
        None,
    )
    .await;
    if me.status == 404 {
        return d.page(
            StatusCode::NOT_FOUND,
            lang.t("患者", "Person"),
            notice(&problem(&me), true),
        );
    }
    if me.status != 200 {
        // Not authorized: ask.
        let body = html! {
            (notice(lang.t("您所在机构尚未获得该居民授权，只能看到本机构的记录。", "Your institution has no authorization from this resident: only your own institution's records are open."), false))
            h2 { (lang.t("申请调阅", "Ask for access")) }
            form method="post" action=(format!("/workstation/person/{id}/request")) {
                input type="hidden" name="csrf" value=(d.s.csrf());
                button type="submit" name="method" value="sms" { (lang.t("发送短信验证码给居民", "Send the resident a code by SMS")) }
                button.secondary type="submit" name="method" value="app" { (lang.t("请居民在 App 中批准", "Ask the resident to approve in the app")) }
            }
            h2 { (lang.t("紧急调阅", "Emergency access (break-glass)")) }
            form method="post" action=(format!("/workstation/person/{id}/break-glass")) {
                input type="hidden" name="csrf" value=(d.s.csrf());
                label for="reason" { (lang.t("紧急原因（将记录并通知居民）", "Reason (recorded, and the resident is told)")) }
                input id="reason" name="reason" required minlength="4";
                button type="submit" { (lang.t("紧急调阅", "Break the glass")) }
            }
        };
        return d.page(StatusCode::OK, lang.t("患者", "Person"), body);
    }
    let person = json_of(&me);
    let summary = call(
        &st,
        d.s.principal.clone(),
        &d.from,
        "GET",
        &format!("Person/{id}/$summary"),
        &[],
        None,
    )
    .await;
    let bundle = json_of(&summary);
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    let by_ref: HashMap<String, Value> = entries
        .iter()
        .skip(1)
        .filter_map(|e| {
            let r = &e["resource"];
            Some((
                format!("{}/{}", r["resourceType"].as_str()?, r["id"].as_str()?),
                r.clone(),
            ))
        })
        .collect();
    let sources: BTreeSet<String> = by_ref
        .values()
        .filter_map(|v| v["meta"]["source"].as_str().map(String::from))
        .collect();
    let names = crate::names(&st, sources).await;
    // Each test's values over time (what the grant opens), for a trend beside its latest result.
    let obs = d
        .ask(
            &st,
            "GET",
            &format!("Person/{id}/$everything"),
            &[("_type", "Observation"), ("_count", "2000")],
            None,
        )
        .await;
    let mut series: HashMap<String, Vec<(i64, f64)>> = HashMap::new();
    for e in json_of(&obs)["entry"].as_array().into_iter().flatten() {
        let o = &e["resource"];
        if let (Some(k), Some(t), Some(v)) = (
            test_of(o),
            view::when(o),
            o["valueQuantity"]["value"].as_f64(),
        ) {
            series.entry(k).or_default().push((t, v));
        }
    }
    for points in series.values_mut() {
        points.sort_by_key(|p| p.0);
    }
    let trend = |v: &Value| -> Markup {
        let Some(points) = test_of(v)
            .and_then(|k| series.get(&k))
            .filter(|p| p.len() > 1)
        else {
            return html! {};
        };
        let values: Vec<Option<f64>> = points.iter().map(|p| Some(p.1)).collect();
        let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let label = format!(
            "{} {}",
            lang.t("历次结果趋势，共", "Trend over"),
            points.len()
        );
        html! { " " (view::sparkline(&label, &values, lo, hi.max(lo + 1e-9))) }
    };
    let mine = d.s.principal.institution.clone().unwrap_or_default();
    let sections = entries
        .first()
        .map(|e| {
            e["resource"]["section"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let zh = |t: &str| -> &'static str {
        match t {
            "Active problems" => "现有诊断",
            "Allergies and intolerances" => "过敏",
            "Current medications" => "当前用药",
            "Last results" => "最近检验检查结果（含外院，可互认）",
            "Vaccinations" => "预防接种",
            "Recent encounters" => "近期就诊",
            _ => "",
        }
    };
    let body = html! {
        p {
            strong { (person["name"][0]["text"].as_str().unwrap_or("")) }
            " · " (person["gender"].as_str().unwrap_or("")) " · " (person["birthDate"].as_str().unwrap_or(""))
            " · " a href=(format!("/workstation/person/{id}/timeline")) { (lang.t("完整时间轴", "Full timeline")) }
            " · " a href=(format!("/workstation/person/{id}/coordinate")) { (lang.t("转诊 / 开单互认", "Refer / order")) }
        }
        @for sec in &sections {
            @let title = sec["title"].as_str().unwrap_or("");
            section {
                h2 { (match lang { Lang::Zh if !zh(title).is_empty() => zh(title), _ => title }) }
                @let items: Vec<&Value> = sec["entry"].as_array().into_iter().flatten().filter_map(|e| by_ref.get(e["reference"].as_str().unwrap_or(""))).collect();
                @if items.is_empty() { p { "—" } }
                ul {
                    @for v in items {
                        @let src = v["meta"]["source"].as_str().unwrap_or("");
                        li.item {
                            strong { (view::when(v).map(local).unwrap_or_default()) } " " (view::summary(v))
                            div.meta {
                                (names.get(src).map(String::as_str).unwrap_or(src))
                                @if src != mine && title == "Last results" { " " span.tag { (lang.t("外院结果", "from another institution")) } }
                                @if title == "Last results" { (trend(v)) }
                            }
                        }
                    }
                }
            }
        }
    };
    d.page(StatusCode::OK, lang.t("患者摘要", "Person summary"), body)
}

/// The test an Observation reports (its first coding), to line up its results over time.
fn test_of(o: &Value) -> Option<String> {
    let c = &o["code"]["coding"][0];
    Some(format!("{}|{}", c["system"].as_str()?, c["code"].as_str()?))
}

/// `GET /workstation/person/{id}/timeline[?kind=…]`: the person's record from every
/// institution, newest first, each item with its source and collection time — what the
/// clinician's grant opens, nothing else.
pub async fn timeline(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let d = match Desk::or_sign_in(&st, &req, addr, Kind::Clinician) {
        Ok(d) => d,
        Err(page) => return *page,
    };
    let lang = d.lang;
    let title = lang.t("完整时间轴", "Full timeline");
    let kind = d.q("kind").filter(|k| view::KINDS.iter().any(|x| x.0 == k));
    let types = view::types_of(kind.as_deref());
    let items = match crate::record(&st, &d.s, &id, &d.from, &types, 400).await {
        Ok(items) => items,
        Err(e) => {
            let body = html! {
                (notice(&e, true))
                p { a href=(format!("/workstation/person/{id}")) { (lang.t("申请调阅", "Ask for access")) } }
            };
            return d.page(StatusCode::FORBIDDEN, title, body);
        }
    };
    let shown = view::of_kind(&items, kind.as_deref(), 300);
    let names = crate::source_names(&st, &shown).await;
    let base = format!("/workstation/person/{id}/timeline");
    let body = html! {
        p { a href=(format!("/workstation/person/{id}")) { (lang.t("返回摘要", "Back to the summary")) } }
        (view::kind_filters(lang, &base, kind.as_deref()))
        @if shown.is_empty() { p { (lang.t("暂无记录。", "Nothing here.")) } }
        (view::timeline_list(lang, &shown, &names, None))
    };
    d.page(StatusCode::OK, title, body)
}

/// `POST /workstation/person/{id}/request`: a code to the resident's phone, or a request in
/// their app.
pub async fn request(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let (d, f) = match Desk::posted(&st, addr, req, Kind::Clinician, HOME).await {
        Ok(x) => x,
        Err(refused) => return *refused,
    };
    let lang = d.lang;
    let method = if f.get("method").map(String::as_str) == Some("app") {
        "app"
    } else {
        "sms"
    };
    let p = json!({"resourceType": "Parameters", "parameter": [{"name": "method", "valueCode": method}]});
    let r = call(
        &st,
        d.s.principal.clone(),
        &d.from,
        "POST",
        &format!("Person/{id}/$request-access"),
        &[],
        Some(&p),
    )
    .await;
    if r.status != 201 {
        return d.page(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            lang.t("申请调阅", "Ask for access"),
            notice(&problem(&r), true),
        );
    }
    let consent = json_of(&r)["id"].as_str().unwrap_or("").to_string();
    let body = if method == "sms" {
        html! {
            (notice(lang.t("验证码已发送到居民手机，请居民告知您验证码。", "A code went to the resident's phone: ask them to read it to you."), false))
            form method="post" action=(format!("/workstation/consent/{consent}/code")) {
                input type="hidden" name="csrf" value=(d.s.csrf());
                input type="hidden" name="person" value=(id);
                label for="code" { (lang.t("居民告知的验证码", "The code the resident reads out")) }
                input id="code" name="code" inputmode="numeric" autocomplete="off" required;
                button type="submit" { (lang.t("确认", "Confirm")) }
            }
        }
    } else {
        html! {
            (notice(lang.t("已向居民发送批准请求，居民批准后即可调阅。", "The resident was asked in their app; once they approve, the record opens."), false))
            a href=(format!("/workstation/person/{id}")) { (lang.t("刷新", "Check again")) }
        }
    };
    d.page(StatusCode::OK, lang.t("申请调阅", "Ask for access"), body)
}

impl Desk {
    /// Runs an access operation with one string parameter; on success, back to the person.
    async fn operate(
        &self,
        st: &Arc<AppState>,
        path: &str,
        param: (&str, String),
        person: &str,
        title: (&str, &str),
    ) -> Response {
        let p = json!({"resourceType": "Parameters", "parameter": [{"name": param.0, "valueString": param.1}]});
        let r = self.ask(st, "POST", path, &[], Some(&p)).await;
        if r.status < 300 {
            return Redirect::to(&format!("/workstation/person/{person}")).into_response();
        }
        self.page(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            self.lang.t(title.0, title.1),
            notice(&problem(&r), true),
        )
    }
}

/// `POST /workstation/consent/{id}/code`: the code the resident read out.
pub async fn code(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(consent): Path<String>,
    req: Request,
) -> Response {
    let (d, f) = match Desk::posted(&st, addr, req, Kind::Clinician, HOME).await {
        Ok(x) => x,
        Err(refused) => return *refused,
    };
    let person = f.get("person").cloned().unwrap_or_default();
    let code = f.get("code").cloned().unwrap_or_default();
    // A referral's code goes back to the referral boxes rather than a person's page.
    if let Some(then) = f.get("then").filter(|t| t.starts_with("/workstation/")) {
        let p = json!({"resourceType": "Parameters", "parameter": [{"name": "code", "valueString": code}]});
        let r = d
            .ask(
                &st,
                "POST",
                &format!("Consent/{consent}/$verify-code"),
                &[],
                Some(&p),
            )
            .await;
        if r.status < 300 {
            return Redirect::to(then).into_response();
        }
        return d.page(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            d.lang.t("转诊", "Referral"),
            notice(&problem(&r), true),
        );
    }
    d.operate(
        &st,
        &format!("Consent/{consent}/$verify-code"),
        ("code", code),
        &person,
        ("申请调阅", "Ask for access"),
    )
    .await
}

/// `POST /workstation/person/{id}/break-glass`: emergency access with a reason.
pub async fn break_glass(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let (d, f) = match Desk::posted(&st, addr, req, Kind::Clinician, HOME).await {
        Ok(x) => x,
        Err(refused) => return *refused,
    };
    let reason = f.get("reason").cloned().unwrap_or_default();
    d.operate(
        &st,
        &format!("Person/{id}/$break-glass"),
        ("reason", reason),
        &id,
        ("紧急调阅", "Emergency access"),
    )
    .await
}
