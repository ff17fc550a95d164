//! 居民端: the resident's own pages. Everything shown comes from the engine asked as the
//! resident (`crate::call`), so a page sees exactly what the resident's token would through
//! the FHIR API, and each view is in their access history like any other read.
//!
//! One file past the ~800 lines we keep to, because the resident's pages share their layout and
//! the calls they make as the resident; each page is one function.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use hutong_server::http::AppState;
use hutong_server::wire::{parse_query_string, percent_encode};
use maud::{html, Markup};
use serde_json::{json, Value};

use crate::view::{self, concept, kind_label, local, KINDS};
use crate::{call, form, json_of, page, problem, respond, Lang, Session, SESSION};

const PRE: &str = "hutong_pre";

fn query_of(req: &Request) -> Vec<(String, String)> {
    parse_query_string(req.uri().query().unwrap_or(""))
}

fn q<'a>(query: &'a [(String, String)], k: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(key, _)| key == k)
        .map(|(_, v)| v.as_str())
}

fn to_login() -> Response {
    Redirect::to("/portal/login").into_response()
}

/// A signed-in resident's request: their session and person, the page's query and language.
pub(crate) struct Visit {
    pub(crate) query: Vec<(String, String)>,
    pub(crate) lang: Lang,
    pub(crate) s: Session,
    /// Whose record the pages show: the resident's own, or a family member's they are proxy
    /// for (chosen at `/portal/act`; the engine decides whether the proxy is in force).
    pub(crate) person: String,
    /// The signed-in resident's own person.
    pub(crate) own: String,
}

/// The cookie naming the family member whose record a proxy is looking at.
const ACTING: &str = "hutong_for";

/// Every resident page: signed in as a resident, or off to the sign-in page.
impl axum::extract::FromRequestParts<Arc<AppState>> for Visit {
    type Rejection = Redirect;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &Arc<AppState>,
    ) -> Result<Visit, Redirect> {
        let query = parse_query_string(parts.uri.query().unwrap_or(""));
        Visit::of(st, &parts.headers, query).ok_or_else(|| Redirect::to("/portal/login"))
    }
}

impl Visit {
    fn of(st: &AppState, headers: &HeaderMap, query: Vec<(String, String)>) -> Option<Visit> {
        let s = Session::of(st, headers)?;
        let own = s.principal.person.clone()?;
        let person = crate::cookies(headers)
            .get(ACTING)
            .filter(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            .cloned()
            .unwrap_or_else(|| own.clone());
        Some(Visit {
            lang: Lang::of(headers, &query),
            query,
            s,
            person,
            own,
        })
    }

    /// A posted form of a signed-in resident, with the session's CSRF token; otherwise the
    /// way to the sign-in page, or 403.
    pub(crate) async fn posted(
        st: &AppState,
        req: Request,
    ) -> Result<(Visit, HashMap<String, String>), Box<Response>> {
        let (v, pairs) = Visit::posted_pairs(st, req).await?;
        Ok((v, pairs.into_iter().collect()))
    }

    /// [`Visit::posted`] keeping every field in order (for fields that repeat).
    async fn posted_pairs(
        st: &AppState,
        req: Request,
    ) -> Result<(Visit, Vec<(String, String)>), Box<Response>> {
        let query = query_of(&req);
        let headers = req.headers().clone();
        let Some(v) = Visit::of(st, &headers, query) else {
            return Err(Box::new(to_login()));
        };
        let pairs = crate::form_pairs(req).await;
        let token = pairs
            .iter()
            .rev()
            .find(|(k, _)| k == "csrf")
            .map(|(_, t)| t);
        if token != Some(&v.s.csrf()) {
            return Err(Box::new(StatusCode::FORBIDDEN.into_response()));
        }
        Ok((v, pairs))
    }
}

/// [`acting_banner`] for the other modules' resident pages.
pub(crate) fn acting_banner_pub(v: &Visit) -> Markup {
    acting_banner(v)
}

/// When a proxy looks at a family member's record: whose, and the way back to their own.
fn acting_banner(v: &Visit) -> Markup {
    if v.person == v.own {
        return html! {};
    }
    let lang = v.lang;
    html! {
        div.notice role="status" data-acting=(v.person) {
            (lang.t("您正在以代理人身份查看家人的健康档案。", "You are looking at a family member's record as their proxy."))
            form.inline method="post" action="/portal/act" {
                input type="hidden" name="csrf" value=(v.s.csrf());
                input type="hidden" name="for" value="";
                button.secondary type="submit" { (lang.t("返回我的档案", "Back to my record")) }
            }
        }
    }
}

/// `POST /portal/act` (`for`: a person id, or empty for one's own): whose record the pages
/// show. Only a choice of view: every page still asks the engine, which opens a family
/// member's record only under a proxy grant in force.
pub async fn act(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let (_, f) = match Visit::posted(&st, req).await {
        Ok(x) => x,
        Err(refused) => return *refused,
    };
    let who = f
        .get("for")
        .map(|p| p.trim().to_string())
        .filter(|p| p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .unwrap_or_default();
    let mut r = Redirect::to("/portal").into_response();
    let max_age = if who.is_empty() { 0 } else { 86_400 };
    if let Ok(c) =
        format!("{ACTING}={who}; Path=/portal; HttpOnly; SameSite=Strict; Max-Age={max_age}")
            .parse()
    {
        r.headers_mut().append("set-cookie", c);
    }
    r
}

fn error_box(msg: &str) -> Markup {
    html! { div.notice.error role="alert" { (msg) } }
}

/// The page that says why the engine refused: its status (`fallback` when that is no HTTP
/// status) and its message, under `title`.
fn refusal(
    lang: Lang,
    query: &[(String, String)],
    s: &Session,
    title: &str,
    r: &hutong_server::wire::Resp,
    fallback: StatusCode,
) -> Response {
    respond(
        StatusCode::from_u16(r.status).unwrap_or(fallback),
        query,
        page(lang, title, Some(s), error_box(&problem(r))),
    )
}

// -- signing in -------------------------------------------------------------------------------

fn login_form(lang: Lang, pre: &str, err: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = err { (error_box(e)) }
        p { (lang.t("用登记在医疗机构的手机号登录，我们会发送一条验证码短信。", "Sign in with the mobile number your hospital or clinic has; we send you a code by SMS.")) }
        form method="post" action="/portal/login" {
            input type="hidden" name="csrf" value=(pre);
            label for="phone" { (lang.t("手机号", "Mobile number")) }
            input id="phone" name="phone" type="tel" inputmode="numeric" autocomplete="tel" required pattern="[0-9 +-]{11,16}";
            button type="submit" { (lang.t("获取验证码", "Send code")) }
        }
    }
}

fn code_form(lang: Lang, pre: &str, phone: &str, need_id: bool, err: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = err { (error_box(e)) }
        p { (lang.t("验证码已发送到", "A code was sent to")) " " (hutong_access::mask::phone(phone)) }
        form method="post" action="/portal/login/verify" {
            input type="hidden" name="csrf" value=(pre);
            input type="hidden" name="phone" value=(phone);
            label for="code" { (lang.t("验证码", "Code")) }
            input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" required;
            label for="id_number" { (lang.t("身份证号（家庭成员共用手机号时需要）", "ID number (needed when family members share the number)")) }
            @if need_id {
                input id="id_number" name="id_number" autocomplete="off" required aria-invalid="true";
            } @else {
                input id="id_number" name="id_number" autocomplete="off";
            }
            button type="submit" { (lang.t("登录", "Sign in")) }
        }
    }
}

fn with_pre(mut r: Response, pre: &str) -> Response {
    if let Ok(v) = format!("{PRE}={pre}; Path=/portal; HttpOnly; SameSite=Strict").parse() {
        r.headers_mut().append("set-cookie", v);
    }
    r
}

pub async fn login_page(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let query = query_of(&req);
    let lang = Lang::of(req.headers(), &query);
    if Session::of(&st, req.headers()).is_some_and(|s| s.principal.person.is_some()) {
        return Redirect::to("/portal").into_response();
    }
    let pre = uuid::Uuid::new_v4().simple().to_string();
    with_pre(
        respond(
            StatusCode::OK,
            &query,
            page(
                lang,
                lang.t("居民登录", "Resident sign-in"),
                None,
                login_form(lang, &pre, None),
            ),
        ),
        &pre,
    )
}

/// The pre-session CSRF token: the cookie and the form must agree.
fn pre_ok(headers: &HeaderMap, f: &HashMap<String, String>) -> Option<String> {
    let c = crate::cookies(headers).get(PRE).cloned()?;
    (f.get("csrf") == Some(&c) && !c.is_empty()).then_some(c)
}

/// Runs one of the API's sign-in handlers with the form, as the API would get it.
async fn auth_call(
    st: &Arc<AppState>,
    addr: SocketAddr,
    which: &str,
    fields: &[(&str, &str)],
) -> (u16, Value) {
    let body = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let req = Request::builder()
        .method("POST")
        .uri(format!("/auth/{which}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body))
        .expect("a well-formed request");
    let r = match which {
        "otp" => {
            hutong_server::http::auth::otp_send(State(st.clone()), ConnectInfo(addr), req).await
        }
        _ => hutong_server::http::auth::otp_verify(State(st.clone()), ConnectInfo(addr), req).await,
    };
    let status = r.status().as_u16();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub async fn login_send(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let query = query_of(&req);
    let headers = req.headers().clone();
    let lang = Lang::of(&headers, &query);
    let f = form(req).await;
    let title = lang.t("居民登录", "Resident sign-in");
    let Some(pre) = pre_ok(&headers, &f) else {
        let pre = uuid::Uuid::new_v4().simple().to_string();
        let m = login_form(
            lang,
            &pre,
            Some(lang.t(
                "页面已过期，请重试。",
                "The page expired; please try again.",
            )),
        );
        return with_pre(
            respond(StatusCode::FORBIDDEN, &query, page(lang, title, None, m)),
            &pre,
        );
    };
    let phone = f
        .get("phone")
        .map(|p| hutong_cn::phone::mobile(p))
        .unwrap_or_default();
    let (status, v) = auth_call(&st, addr, "otp", &[("phone", &phone)]).await;
    if status == 202 {
        let m = code_form(lang, &pre, &phone, false, None);
        return respond(StatusCode::OK, &query, page(lang, title, None, m));
    }
    let msg = v["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let m = login_form(lang, &pre, Some(&msg));
    respond(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        &query,
        page(lang, title, None, m),
    )
}

pub async fn login_verify(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let query = query_of(&req);
    let headers = req.headers().clone();
    let lang = Lang::of(&headers, &query);
    let f = form(req).await;
    let title = lang.t("居民登录", "Resident sign-in");
    let Some(pre) = pre_ok(&headers, &f) else {
        return Redirect::to("/portal/login").into_response();
    };
    let phone = f.get("phone").cloned().unwrap_or_default();
    let code = f.get("code").cloned().unwrap_or_default();
    let mut fields = vec![("phone", phone.as_str()), ("code", code.as_str())];
    if let Some(id) = f.get("id_number").filter(|s| !s.is_empty()) {
        fields.push(("id_number", id.as_str()));
    }
    let (status, v) = auth_call(&st, addr, "verify", &fields).await;
    match (status, v["access_token"].as_str()) {
        (200, Some(token)) => crate::signed_in(&st, token, &v, "/portal"),
        _ => {
            let msg = v["issue"][0]["diagnostics"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let m = code_form(lang, &pre, &phone, status == 409, Some(&msg));
            respond(
                StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED),
                &query,
                page(lang, title, None, m),
            )
        }
    }
}

pub async fn logout(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let headers = req.headers().clone();
    let f = form(req).await;
    let mut to = "/portal/login";
    if let Some(s) = Session::of(&st, &headers) {
        if !s.csrf_ok(&f) {
            return StatusCode::FORBIDDEN.into_response();
        }
        to = match s.principal.kind {
            hutong_access::principal::Kind::Clinician => "/workstation",
            hutong_access::principal::Kind::Operator => "/console",
            _ => to,
        };
        // Signing out ends the token itself, not just the cookie: a copy of it (taken from
        // the browser, or used as a Bearer token) is refused from now on.
        let engine = st.engine.clone();
        let token = s.token.clone();
        let revoked = tokio::task::spawn_blocking(move || engine.access.revoke_token(&token)).await;
        if !matches!(revoked, Ok(Ok(()))) {
            tracing::error!("A session's token could not be revoked at sign-out.");
        }
    }
    let mut r = Redirect::to(to).into_response();
    if let Ok(c) = format!("{SESSION}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0").parse() {
        r.headers_mut().append("set-cookie", c);
    }
    r
}

// -- the record -------------------------------------------------------------------------------

/// The resident's record, newest first: at most `limit` items of the `types` given.
pub async fn timeline(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    v: Visit,
) -> Response {
    let banner = acting_banner(&v);
    let Visit {
        query,
        lang,
        s,
        person,
        ..
    } = v;
    let from = addr.ip().to_string();
    let title = lang.t("我的健康档案", "My health record");
    let kind = q(&query, "kind").filter(|k| KINDS.iter().any(|x| x.0 == *k));
    let types = view::types_of(kind);
    let items = match crate::record(&st, &s, &person, &from, &types, 400).await {
        Ok(i) => i,
        Err(e) => {
            return respond(
                StatusCode::FORBIDDEN,
                &query,
                page(lang, title, Some(&s), html! { (banner) (error_box(&e)) }),
            )
        }
    };
    let shown = view::of_kind(&items, kind, 300);
    let names = crate::source_names(&st, &shown).await;
    let body = html! {
        (banner)
        p.noprint {
            a href="/portal/download" { (lang.t("下载我的档案（FHIR JSON）", "Download my record (FHIR JSON)")) }
            " · "
            a href="/portal/print" { (lang.t("打印版", "Printable page")) }
        }
        (view::kind_filters(lang, "/portal", kind))
        @if shown.is_empty() {
            p { (lang.t("暂无记录。", "Nothing here yet.")) }
        }
        @if kind == Some("vaccinations") {
            h2 { (lang.t("预防接种证", "Vaccination card")) }
            table {
                thead { tr {
                    th scope="col" { (lang.t("疫苗", "Vaccine")) }
                    th scope="col" { (lang.t("剂次", "Dose")) }
                    th scope="col" { (lang.t("接种日期", "Date")) }
                    th scope="col" { (lang.t("接种单位", "Given at")) }
                } }
                tbody {
                    @for v in &shown {
                        tr {
                            td { a href=(item_href(v)) { (concept(&v["vaccineCode"])) } }
                            td { (v["protocolApplied"][0]["doseNumberPositiveInt"].as_u64().map(|d| d.to_string()).unwrap_or_default()) }
                            td { (view::when(v).map(local).unwrap_or_default()) }
                            td { (names.get(v["meta"]["source"].as_str().unwrap_or("")).cloned().unwrap_or_default()) }
                        }
                    }
                }
            }
        } @else {
            (view::timeline_list(lang, &shown, &names, Some(&item_href)))
        }
    };
    respond(StatusCode::OK, &query, page(lang, title, Some(&s), body))
}

fn item_href(v: &Value) -> String {
    format!(
        "/portal/item/{}/{}",
        v["resourceType"].as_str().unwrap_or(""),
        v["id"].as_str().unwrap_or("")
    )
}

const CATEGORIES: &[(&str, &str, &str)] = &[
    ("not-mine", "不是我的记录", "This is not mine"),
    ("incorrect", "内容有误", "Something is wrong"),
    ("duplicate", "重复记录", "Recorded twice"),
    ("missing", "有缺失", "Something is missing"),
    ("other", "其他", "Other"),
];

pub async fn item(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path((rtype, id)): Path<(String, String)>,
    v: Visit,
) -> Response {
    let mine = v.person == v.own;
    let Visit { query, lang, s, .. } = v;
    let from = addr.ip().to_string();
    let r = call(
        &st,
        s.principal.clone(),
        &from,
        "GET",
        &format!("{rtype}/{id}"),
        &[],
        None,
    )
    .await;
    let title = lang.t("记录详情", "Record detail");
    if r.status != 200 {
        return refusal(lang, &query, &s, title, &r, StatusCode::NOT_FOUND);
    }
    let v = json_of(&r);
    let src: BTreeSet<String> = v["meta"]["source"]
        .as_str()
        .map(String::from)
        .into_iter()
        .collect();
    let names = crate::names(&st, src).await;
    // A laboratory result: the same test over time, from every institution the resident sees.
    let mut chart = html! {};
    if rtype == "Observation" && v["valueQuantity"]["value"].is_number() {
        let coding = &v["code"]["coding"][0];
        if let (Some(sys), Some(code)) = (coding["system"].as_str(), coding["code"].as_str()) {
            let token = format!("{sys}|{code}");
            let r = call(
                &st,
                s.principal.clone(),
                &from,
                "GET",
                "Observation",
                &[
                    ("code", token.as_str()),
                    ("_sort", "date"),
                    ("_count", "200"),
                ],
                None,
            )
            .await;
            let mut points: Vec<(i64, f64)> = json_of(&r)["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| {
                    let o = &e["resource"];
                    Some((view::when(o)?, o["valueQuantity"]["value"].as_f64()?))
                })
                .collect();
            points.sort_by_key(|p| p.0);
            let unit = v["valueQuantity"]["unit"].as_str().unwrap_or("");
            chart = html! {
                @if points.len() > 1 {
                    h2 { (lang.t("历次结果", "Results over time")) }
                    (view::trend(lang, &points, view::reference_range(&v), unit))
                }
            };
        }
    }
    let body = html! {
        p { span.tag { (kind_label(lang, view::kind_of(&v).unwrap_or(""))) } strong { (view::summary(&v)) } }
        dl {
            dt { (lang.t("时间", "When")) } dd { (view::when(&v).map(local).unwrap_or_default()) }
            dt { (lang.t("来源机构", "Institution")) } dd { (view::source_line(lang, &v, &names)) }
            @if let Some((lo, hi)) = view::reference_range(&v) {
                dt { (lang.t("参考范围", "Reference range")) } dd { (lo) " – " (hi) }
            }
            @if let Some(i) = v["interpretation"][0]["coding"][0]["code"].as_str() {
                dt { (lang.t("结果判读", "Interpretation")) } dd { (i) }
            }
        }
        (chart)
        @let restricted = hutong_fhir::security::is_resident_restricted(&v);
        h2 { (lang.t("特控（限制查看）", "Restricted (患者申明特控)")) }
        @if restricted {
            p data-restricted="true" { span.tag { (lang.t("已特控", "Restricted")) }
                (lang.t("其他机构只有在授权明确包含“患者申明特控”时才能看到这条记录。", "Other institutions see this item only under a grant that names restricted items.")) }
        } @else {
            p { (lang.t("您可以将这条记录设为特控：其他机构只有在您的授权明确包含特控内容时才能看到。", "You can restrict this item: other institutions then see it only under a grant that names restricted items.")) }
        }
        @if mine {
            form method="post" action=(format!("/portal/item/{rtype}/{id}/restrict")) {
                input type="hidden" name="csrf" value=(s.csrf());
                input type="hidden" name="on" value=(if restricted { "0" } else { "1" });
                @if restricted { button.secondary type="submit" { (lang.t("取消特控", "Lift the restriction")) } }
                @else { button type="submit" { (lang.t("设为特控", "Restrict this item")) } }
            }
        }
        h2 { (lang.t("报告错误", "Report an error")) }
        form method="post" action=(format!("/portal/item/{rtype}/{id}/report")) {
            input type="hidden" name="csrf" value=(s.csrf());
            label for="category" { (lang.t("问题类型", "What is wrong")) }
            select id="category" name="category" {
                @for (c, zh, en) in CATEGORIES { option value=(c) { (lang.t(zh, en)) } }
            }
            label for="description" { (lang.t("说明", "Details")) }
            textarea id="description" name="description" rows="3" required maxlength="2000" {}
            button type="submit" { (lang.t("提交", "Submit")) }
        }
        details {
            summary { (lang.t("原始数据（FHIR）", "Raw data (FHIR)")) }
            pre style="white-space:pre-wrap;font-size:13px" { (serde_json::to_string_pretty(&v).unwrap_or_default()) }
        }
    };
    respond(StatusCode::OK, &query, page(lang, title, Some(&s), body))
}

/// `POST /portal/item/{type}/{id}/restrict` (`on` = 1 | 0): the resident restricts one of
/// their items (or lifts it).
pub async fn restrict(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path((rtype, id)): Path<(String, String)>,
    req: Request,
) -> Response {
    let (Visit { query, lang, s, .. }, f) = match Visit::posted(&st, req).await {
        Ok(x) => x,
        Err(refused) => return *refused,
    };
    let op = if f.get("on").map(String::as_str) == Some("1") {
        "$restrict"
    } else {
        "$unrestrict"
    };
    let r = call(
        &st,
        s.principal.clone(),
        &addr.ip().to_string(),
        "POST",
        &format!("{rtype}/{id}/{op}"),
        &[],
        None,
    )
    .await;
    if r.status >= 300 {
        let title = lang.t("记录详情", "Record detail");
        return refusal(lang, &query, &s, title, &r, StatusCode::BAD_REQUEST);
    }
    Redirect::to(&format!("/portal/item/{rtype}/{id}")).into_response()
}

pub async fn report(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path((rtype, id)): Path<(String, String)>,
    req: Request,
) -> Response {
    let (Visit { query, lang, s, .. }, f) = match Visit::posted(&st, req).await {
        Ok(x) => x,
        Err(refused) => return *refused,
    };
    let category = f.get("category").cloned().unwrap_or_default();
    let description = f.get("description").cloned().unwrap_or_default();
    let p = json!({"resourceType": "Parameters", "parameter": [
        {"name": "focus", "valueString": format!("{rtype}/{id}")},
        {"name": "category", "valueCode": category},
        {"name": "description", "valueString": description},
    ]});
    let r = call(
        &st,
        s.principal.clone(),
        &addr.ip().to_string(),
        "POST",
        "$work-order",
        &[],
        Some(&p),
    )
    .await;
    if r.status == 201 {
        return Redirect::to("/portal/reports?sent=1").into_response();
    }
    let title = lang.t("报告错误", "Report an error");
    refusal(lang, &query, &s, title, &r, StatusCode::BAD_REQUEST)
}

fn state_label(lang: Lang, code: &str) -> String {
    match hutong_quality::workorder::State::parse(code) {
        Some(s) if lang == Lang::Zh => s.label().to_string(),
        _ => code.replace('-', " "),
    }
}

pub async fn reports(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    v: Visit,
) -> Response {
    let Visit { query, lang, s, .. } = v;
    let r = call(
        &st,
        s.principal.clone(),
        &addr.ip().to_string(),
        "GET",
        "$work-orders",
        &[("state", "all")],
        None,
    )
    .await;
    let items = json_of(&r)["items"].as_array().cloned().unwrap_or_default();
    let body = html! {
        @if q(&query, "sent").is_some() {
            div.notice role="status" { (lang.t("已提交，记录来源机构会处理并回复。", "Sent: the institution that recorded it will look into it and answer.")) }
        }
        @if items.is_empty() {
            p { (lang.t("您还没有报告过错误。在任一记录的详情页可以报告。", "You have not reported anything. Any record's page has a form for it.")) }
        } @else {
            table {
                thead { tr {
                    th scope="col" { (lang.t("提交时间", "Reported")) }
                    th scope="col" { (lang.t("记录", "Record")) }
                    th scope="col" { (lang.t("问题", "Problem")) }
                    th scope="col" { (lang.t("状态", "Status")) }
                    th scope="col" { (lang.t("处理期限", "Due")) }
                } }
                tbody {
                    @for i in &items {
                        tr {
                            td { (i["opened"].as_str().and_then(hutong_fhir::date::parse).map(|d| local(d.lo)).unwrap_or_default()) }
                            td { @if let Some(f) = i["focus"].as_str() { a href=(format!("/portal/item/{f}")) { (f) } } }
                            td { (CATEGORIES.iter().find(|c| i["category"] == c.0).map(|c| lang.t(c.1, c.2)).unwrap_or("")) }
                            td data-state=(i["state"].as_str().unwrap_or("")) { (state_label(lang, i["state"].as_str().unwrap_or(""))) }
                            td { (i["due"].as_str().and_then(hutong_fhir::date::parse).map(|d| local(d.lo)).unwrap_or_default()) }
                        }
                    }
                }
            }
        }
    };
    respond(
        StatusCode::OK,
        &query,
        page(lang, lang.t("我的纠错", "My reports"), Some(&s), body),
    )
}

// -- authorizations and who viewed the record ------------------------------------------------

fn grantee(c: &Value) -> String {
    c["provision"]["actor"][0]["reference"]["display"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn method_label(lang: Lang, c: &Value) -> &'static str {
    let m = c["category"][1]["coding"][0]["code"].as_str().unwrap_or("");
    match m {
        "sms" => lang.t("短信验证码", "SMS code"),
        "app" => lang.t("App 授权", "App approval"),
        "standing" => lang.t("长期授权", "Standing"),
        "appointment" => lang.t("预约就诊", "Appointment"),
        "break-glass" => lang.t("紧急调阅", "Emergency (break-glass)"),
        "proxy" => lang.t("代理人", "Proxy"),
        _ => lang.t("其他", "Other"),
    }
}

/// What a request asks for, as the resident decides on it: how long, and which sensitive
/// categories besides the ordinary records.
fn asked(lang: Lang, c: &Value) -> String {
    let period = &c["provision"]["period"];
    let ms = |k: &str| {
        period[k]
            .as_str()
            .and_then(hutong_fhir::date::parse)
            .map(|d| d.lo)
    };
    let hours = match (ms("start"), ms("end")) {
        (Some(a), Some(b)) if b > a => Some((b - a + 3_599_999) / 3_600_000),
        _ => None,
    };
    let how_long = match hours {
        Some(h) if h >= 48 && h % 24 == 0 => lang
            .t(&format!("{} 天", h / 24), &format!("{} days", h / 24))
            .to_string(),
        Some(h) => lang
            .t(&format!("{h} 小时"), &format!("{h} hours"))
            .to_string(),
        None => lang.t("直至撤销", "until revoked").to_string(),
    };
    let cats: Vec<&str> = c["provision"]["securityLabel"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x["display"].as_str())
        .collect();
    let what = if cats.is_empty() {
        lang.t(
            "一般诊疗记录（不含敏感类别）",
            "ordinary records (no sensitive categories)",
        )
        .to_string()
    } else {
        format!(
            "{}{}",
            lang.t("一般诊疗记录及：", "ordinary records and: "),
            cats.join("、")
        )
    };
    format!("{}{how_long}；{what}", lang.t("期限 ", "for "))
}

fn until(c: &Value) -> String {
    c["provision"]["period"]["end"]
        .as_str()
        .and_then(hutong_fhir::date::parse)
        .map(|d| local(d.lo))
        .unwrap_or_else(|| "—".into())
}

fn consent_button(s: &Session, id: &str, action: &str, text: &str, primary: bool) -> Markup {
    html! {
        form.inline method="post" action=(format!("/portal/consent/{id}/{action}")) {
            input type="hidden" name="csrf" value=(s.csrf());
            @if primary { button type="submit" data-action=(action) { (text) } }
            @else { button.secondary type="submit" data-action=(action) { (text) } }
        }
    }
}

pub async fn access(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    v: Visit,
) -> Response {
    let banner = acting_banner(&v);
    let Visit {
        query,
        lang,
        s,
        person,
        own,
    } = v;
    let from = addr.ip().to_string();
    let search = |params: Vec<(&'static str, String)>| {
        let st = st.clone();
        let p = s.principal.clone();
        let from = from.clone();
        async move {
            let mut q: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            q.push(("_count", "200"));
            let r = call(&st, p, &from, "GET", "Consent", &q, None).await;
            json_of(&r)["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["resource"].clone())
                .collect::<Vec<Value>>()
        }
    };
    // The grants of the record shown (a proxy also sees their own grants' Consents).
    let of_record = |list: Vec<Value>| -> Vec<Value> {
        list.into_iter()
            .filter(|c| grant_person(c).as_deref() == Some(person.as_str()))
            .collect()
    };
    let pending = of_record(search(vec![("status", "proposed".into())]).await);
    let active = of_record(search(vec![("status", "active".into())]).await);
    // Whom the resident is proxy for: grants naming them as the delegate.
    let delegate = format!("{}|{own}", hutong_access::grants::SID_PERSON);
    let acting_for: Vec<Value> = search(vec![
        ("status", "active".into()),
        ("actor:identifier", delegate),
    ])
    .await
    .into_iter()
    .filter(|c| grant_person(c).is_some_and(|p| p != own))
    .collect();
    let institutions = institutions(&st, &s, &from).await;
    let hist = call(
        &st,
        s.principal.clone(),
        &from,
        "GET",
        &format!("Person/{person}/$access-history"),
        &[("_count", "100")],
        None,
    )
    .await;
    // Who viewed it: the resident's own visits and the platform's loading of data are not.
    let me = s.principal.subject.clone();
    let events: Vec<Value> = json_of(&hist)["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .filter(|e| e["agent"][0]["who"]["identifier"]["value"] != me.as_str())
        .filter(|e| !matches!(e["subtype"][1]["code"].as_str(), Some("import" | "link")))
        .collect();
    let body = html! {
        (banner)
        h2 { (lang.t("待处理的调阅申请", "Requests waiting for you")) }
        @if pending.is_empty() { p { (lang.t("没有待处理的申请。", "No requests.")) } }
        ul {
            @for c in &pending {
                li.item data-consent=(c["id"].as_str().unwrap_or("")) {
                    strong { (grantee(c)) } " " span.tag { (method_label(lang, c)) }
                    (lang.t("申请调阅您的健康档案", "asks to read your health record"))
                    div.asked { (asked(lang, c)) }
                    div {
                        (consent_button(&s, c["id"].as_str().unwrap_or(""), "approve", lang.t("同意", "Approve"), true))
                        (consent_button(&s, c["id"].as_str().unwrap_or(""), "deny", lang.t("拒绝", "Deny"), false))
                    }
                }
            }
        }
        h2 { (lang.t("生效中的授权", "Authorizations in force")) }
        @if active.is_empty() { p { (lang.t("目前没有机构可调阅您在其他机构的记录。", "No institution can read your records from elsewhere now.")) } }
        table {
            thead { tr {
                th scope="col" { (lang.t("授权对象", "Who")) }
                th scope="col" { (lang.t("方式", "How")) }
                th scope="col" { (lang.t("有效期至", "Until")) }
                th scope="col" { (lang.t("含敏感类别", "Sensitive categories")) }
                th scope="col" { span.skip { (lang.t("操作", "Action")) } }
            } }
            tbody {
                @for c in &active {
                    tr data-consent=(c["id"].as_str().unwrap_or("")) {
                        td { (grantee(c)) }
                        td { (method_label(lang, c)) }
                        td { (until(c)) }
                        td { (c["provision"]["securityLabel"].as_array().map(|l| l.iter().filter_map(|x| x["display"].as_str()).collect::<Vec<_>>().join("、")).unwrap_or_default()) }
                        td { (consent_button(&s, c["id"].as_str().unwrap_or(""), "revoke", lang.t("撤销", "Revoke"), false)) }
                    }
                }
            }
        }
        h2 { (lang.t("长期授权", "Standing authorization")) }
        p { (lang.t("例如“我的家庭医生所在的社区卫生服务中心，长期有效”。可随时撤销。", "For example: \"my family doctor's centre, always\". Revocable at any time.")) }
        form method="post" action="/portal/grant" {
            input type="hidden" name="csrf" value=(s.csrf());
            label for="institution" { (lang.t("授权机构", "Institution")) }
            select id="institution" name="institution" required {
                @for (src, name) in &institutions { option value=(src) { (name) } }
            }
            (category_boxes(lang, "grant"))
            label for="grant-end" { (lang.t("有效期至（可不填）", "Until (optional)")) }
            input id="grant-end" name="end" type="date";
            button type="submit" { (lang.t("授权", "Authorize")) }
        }
        h2 { (lang.t("代理人", "Proxies")) }
        p { (lang.t("让家人（如子女、照护者）代您管理档案：查看、处理调阅申请。", "Let a family member (a grown child, a carer) manage your record: read it, answer requests.")) }
        form method="post" action="/portal/proxy" {
            input type="hidden" name="csrf" value=(s.csrf());
            label for="proxy-id" { (lang.t("代理人身份证号", "The proxy's ID number")) }
            input id="proxy-id" name="id_number" required autocomplete="off" pattern="[0-9]{17}[0-9Xx]";
            (category_boxes(lang, "proxy"))
            label for="proxy-end" { (lang.t("有效期至（可不填）", "Until (optional)")) }
            input id="proxy-end" name="end" type="date";
            button type="submit" { (lang.t("设为代理人", "Make them my proxy")) }
        }
        @if !acting_for.is_empty() {
            h2 { (lang.t("我代理的家人", "Family members I am proxy for")) }
            ul {
                @for c in &acting_for {
                    @let who = grant_person(c).unwrap_or_default();
                    li.item data-proxy-for=(who) {
                        (lang.t("家人档案 ", "Record ")) (who) " · " (lang.t("有效期至 ", "until ")) (until(c))
                        form.inline method="post" action="/portal/act" {
                            input type="hidden" name="csrf" value=(s.csrf());
                            input type="hidden" name="for" value=(who);
                            button.secondary type="submit" { (lang.t("查看其档案", "Open their record")) }
                        }
                    }
                }
            }
        }
        h2 { (lang.t("谁看过我的档案", "Who viewed my record")) }
        (view::audit_table(lang, &events))
    };
    respond(
        StatusCode::OK,
        &query,
        page(
            lang,
            lang.t("授权与访问记录", "Authorizations & access"),
            Some(&s),
            body,
        ),
    )
}

/// Whose record a grant is about.
fn grant_person(c: &Value) -> Option<String> {
    hutong_access::grants::Grant::from_consent(c).map(|g| g.person)
}

/// The sensitive categories a grant may name, as checkboxes.
fn category_boxes(lang: Lang, prefix: &str) -> Markup {
    html! {
        fieldset {
            legend { (lang.t("同时开放的敏感类别（默认不开放）", "Sensitive categories it also opens (none by default)")) }
            @for c in hutong_fhir::security::CATEGORIES.iter().filter(|c| hutong_fhir::security::grantable(c.name).is_some()) {
                @let id = format!("{prefix}-{}", c.name);
                div {
                    input type="checkbox" id=(id) name="category" value=(c.name) style="width:auto";
                    label for=(id) style="display:inline" { " " (c.zh) }
                }
            }
        }
    }
}

/// The region's institutions (reference data): source URI → name, by name.
async fn institutions(st: &Arc<AppState>, s: &Session, from: &str) -> Vec<(String, String)> {
    let r = call(
        st,
        s.principal.clone(),
        from,
        "GET",
        "Organization",
        &[("_count", "500")],
        None,
    )
    .await;
    let mut out: Vec<(String, String)> = json_of(&r)["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let o = &e["resource"];
            let uscc = o["identifier"]
                .as_array()?
                .iter()
                .find(|i| i["system"] == hutong_fhir::vocab::USCC_SYSTEM)?["value"]
                .as_str()?;
            Some((
                format!("urn:hutong:org:{uscc}"),
                o["name"].as_str().unwrap_or(uscc).to_string(),
            ))
        })
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// The form fields of a grant: `end` (a day) and the checked `category`s, as Parameters.
fn grant_parameters(form_body: &[(String, String)], mut params: Vec<Value>) -> Value {
    for (k, v) in form_body {
        match k.as_str() {
            "category" => params.push(json!({"name": "category", "valueCode": v})),
            "end" if !v.is_empty() => params.push(json!({"name": "end", "valueDateTime": v})),
            _ => {}
        }
    }
    json!({"resourceType": "Parameters", "parameter": params})
}

/// Runs a grant operation for the record shown; back to the access page, or the refusal.
async fn granting(
    st: &Arc<AppState>,
    addr: SocketAddr,
    req: Request,
    op: &str,
    first: impl FnOnce(&HashMap<String, String>) -> Vec<Value>,
) -> Response {
    let (v, pairs) = match Visit::posted_pairs(st, req).await {
        Ok(x) => x,
        Err(refused) => return *refused,
    };
    let f: HashMap<String, String> = pairs.iter().cloned().collect();
    let body = grant_parameters(&pairs, first(&f));
    let r = call(
        st,
        v.s.principal.clone(),
        &addr.ip().to_string(),
        "POST",
        &format!("Person/{}/{op}", v.person),
        &[],
        Some(&body),
    )
    .await;
    if r.status >= 300 {
        let title = v.lang.t("授权与访问记录", "Authorizations & access");
        return refusal(v.lang, &v.query, &v.s, title, &r, StatusCode::BAD_REQUEST);
    }
    Redirect::to("/portal/access").into_response()
}

/// `POST /portal/grant`: a standing authorization for an institution.
pub async fn grant(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    granting(&st, addr, req, "$grant", |f| {
        vec![json!({"name": "institution", "valueString": f.get("institution").cloned().unwrap_or_default()})]
    })
    .await
}

/// `POST /portal/proxy`: another resident, by ID number, becomes proxy for this record.
pub async fn proxy(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    granting(&st, addr, req, "$grant-proxy", |f| {
        let id = f.get("id_number").map(|i| i.trim().to_uppercase()).unwrap_or_default();
        vec![json!({"name": "grantee", "valueString": format!("{}|{id}", hutong_mpi::fhir::ID_SYSTEM)})]
    })
    .await
}

pub async fn consent_action(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path((id, action)): Path<(String, String)>,
    req: Request,
) -> Response {
    let (Visit { query, lang, s, .. }, _) = match Visit::posted(&st, req).await {
        Ok(x) => x,
        Err(refused) => return *refused,
    };
    if !matches!(action.as_str(), "approve" | "deny" | "revoke") {
        return StatusCode::NOT_FOUND.into_response();
    }
    let p = json!({"resourceType": "Parameters", "parameter": []});
    let r = call(
        &st,
        s.principal.clone(),
        &addr.ip().to_string(),
        "POST",
        &format!("Consent/{id}/${action}"),
        &[],
        Some(&p),
    )
    .await;
    if r.status < 300 {
        return Redirect::to("/portal/access").into_response();
    }
    let title = lang.t("授权", "Authorization");
    refusal(lang, &query, &s, title, &r, StatusCode::BAD_REQUEST)
}

// -- taking the record away --------------------------------------------------------------------

pub async fn download(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Visit { s, person, .. }: Visit,
) -> Response {
    let r = call(
        &st,
        s.principal.clone(),
        &addr.ip().to_string(),
        "GET",
        &format!("Person/{person}/$everything"),
        &[("_count", "5000")],
        None,
    )
    .await;
    if r.status != 200 {
        return (
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN),
            problem(&r),
        )
            .into_response();
    }
    (
        StatusCode::OK,
        [
            (
                "content-type",
                "application/fhir+json; charset=utf-8".to_string(),
            ),
            (
                "content-disposition",
                format!("attachment; filename=\"record-{person}.json\""),
            ),
            ("cache-control", "no-store".to_string()),
        ],
        serde_json::to_vec_pretty(&json_of(&r)).unwrap_or_default(),
    )
        .into_response()
}

pub async fn print(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    v: Visit,
) -> Response {
    let Visit {
        query,
        lang,
        s,
        person,
        ..
    } = v;
    let all: Vec<&str> = view::TYPES.iter().map(|(t, _)| *t).collect();
    let items = crate::record(&st, &s, &person, &addr.ip().to_string(), &all, 5000)
        .await
        .unwrap_or_default();
    let sources: BTreeSet<String> = items
        .iter()
        .filter_map(|v| v["meta"]["source"].as_str().map(String::from))
        .collect();
    let names = crate::names(&st, sources).await;
    let body = html! {
        p { (lang.t("打印时间：", "Printed: ")) (local(hutong_fhir::date::now_ms())) }
        table {
            thead { tr {
                th scope="col" { (lang.t("时间", "When")) }
                th scope="col" { (lang.t("类别", "Kind")) }
                th scope="col" { (lang.t("内容", "What")) }
                th scope="col" { (lang.t("来源机构", "Institution")) }
            } }
            tbody {
                @for v in &items {
                    tr {
                        td { (view::when(v).map(local).unwrap_or_default()) }
                        td { (kind_label(lang, view::kind_of(v).unwrap_or(""))) }
                        td { (view::summary(v)) }
                        td { (names.get(v["meta"]["source"].as_str().unwrap_or("")).cloned().unwrap_or_default()) }
                    }
                }
            }
        }
    };
    respond(
        StatusCode::OK,
        &query,
        page(
            lang,
            lang.t("健康档案（打印版）", "Health record (print)"),
            Some(&s),
            body,
        ),
    )
}
