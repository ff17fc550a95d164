//! The web portals, served by `hutong serve` itself: server-rendered HTML over the very
//! engine the FHIR API uses. A page never reads the store: it asks the engine as the signed-in
//! person (`Engine::handle` with their principal), so every page passes the same access
//! decision and leaves the same audit entries as the API.
//!
//! Sessions are the access token the sign-in issued, kept in an HTTP-only, same-site cookie;
//! every form carries a CSRF token derived from the session. Chinese by default, English by
//! `?lang=en` (remembered in a cookie).
//!
//! - [`resident`]: 居民端 — sign in with phone and code, the record's timeline and details,
//!   authorizations, who viewed the record, error reports, download.
//! - [`clinician`]: 医生调阅 — find a person, ask for access (code, app, break-glass), the
//!   summary across institutions.
//! - `coordination`: 业务协同 — booking from the regional slot pool, appointments, referrals
//!   and family-doctor contracts (residents); referring, the referral boxes, the
//!   recognition check at order time and the follow-up list (clinicians); the pool's use and
//!   referral flows (the console).
//! - [`operator`]: 平台运营 — intake, scorecards, work orders, the identity review queue,
//!   the audit chain and break-glass reviews, each for the roles it belongs to.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hutong_access::principal::{Kind, Principal};
use hutong_server::http::AppState;
use hutong_server::wire::{parse_query_string, Body, Req, Resp};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod clinician;
mod coordination;
mod levels;
mod operator;
mod resident;
pub mod view;

/// The session cookie: the access token of the signed-in person.
pub const SESSION: &str = "hutong_session";
const LANG: &str = "hutong_lang";

/// The portal routes, to be merged into the server's router.
pub fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/portal") }),
        )
        .route("/portal", get(resident::timeline))
        .route(
            "/portal/login",
            get(resident::login_page).post(resident::login_send),
        )
        .route("/portal/login/verify", post(resident::login_verify))
        .route("/portal/logout", post(resident::logout))
        .route("/portal/item/{rtype}/{id}", get(resident::item))
        .route("/portal/item/{rtype}/{id}/report", post(resident::report))
        .route(
            "/portal/item/{rtype}/{id}/restrict",
            post(resident::restrict),
        )
        .route("/portal/act", post(resident::act))
        .route("/portal/grant", post(resident::grant))
        .route("/portal/proxy", post(resident::proxy))
        .route("/portal/reports", get(resident::reports))
        .route("/portal/access", get(resident::access))
        .route(
            "/portal/consent/{id}/{action}",
            post(resident::consent_action),
        )
        .route("/portal/download", get(resident::download))
        .route("/portal/appointments", get(coordination::appointments))
        .route("/portal/appointments/book", post(coordination::book))
        .route("/portal/appointments/cancel", post(coordination::cancel))
        .route("/portal/family-doctor", get(coordination::family_doctor))
        .route("/portal/family-doctor/sign", post(coordination::sign))
        .route(
            "/portal/family-doctor/{id}/{action}",
            post(coordination::contract),
        )
        .route(
            "/workstation/person/{id}/coordinate",
            get(coordination::coordinate),
        )
        .route("/workstation/person/{id}/refer", post(coordination::refer))
        .route("/workstation/person/{id}/check", post(coordination::check))
        .route("/workstation/check/{check}", post(coordination::decide))
        .route("/workstation/referrals", get(coordination::referrals))
        .route(
            "/workstation/referrals/{task}",
            post(coordination::referral_step),
        )
        .route(
            "/workstation/referrals/{task}/book",
            get(coordination::referral_slots).post(coordination::referral_book),
        )
        .route("/workstation/follow-ups", get(coordination::follow_ups))
        .route(
            "/workstation/follow-ups.csv",
            get(coordination::follow_ups_csv),
        )
        .route("/console/coordination", get(coordination::console))
        .route("/console/nodes", get(levels::console))
        .route("/portal/print", get(resident::print))
        .route("/workstation", get(clinician::home))
        .route("/workstation/login", post(clinician::login))
        .route("/workstation/person/{id}", get(clinician::person))
        .route(
            "/workstation/person/{id}/timeline",
            get(clinician::timeline),
        )
        .route("/workstation/person/{id}/request", post(clinician::request))
        .route(
            "/workstation/person/{id}/break-glass",
            post(clinician::break_glass),
        )
        .route("/workstation/consent/{id}/code", post(clinician::code))
        .route("/console", get(operator::home))
        .route("/console/login", post(operator::login))
        .route("/console/intake", get(operator::intake))
        .route("/console/quality", get(operator::quality_page))
        .route("/console/quality/export", get(operator::quality_export))
        .route("/console/work-orders", get(operator::work_orders))
        .route("/console/identity", get(operator::identity))
        .route(
            "/console/identity/{task}",
            get(operator::pair).post(operator::decide),
        )
        .route("/console/audit", get(operator::audit))
        .route("/console/audit/review/{task}", post(operator::review))
        .with_state(state)
}

/// The language of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    /// From `?lang=`, else the cookie, else Chinese.
    pub fn of(headers: &HeaderMap, query: &[(String, String)]) -> Lang {
        let pick = query
            .iter()
            .find(|(k, _)| k == "lang")
            .map(|(_, v)| v.clone())
            .or_else(|| cookies(headers).get(LANG).cloned());
        match pick.as_deref() {
            Some("en") => Lang::En,
            _ => Lang::Zh,
        }
    }

    /// The text in this language.
    pub fn t<'a>(self, zh: &'a str, en: &'a str) -> &'a str {
        match self {
            Lang::Zh => zh,
            Lang::En => en,
        }
    }

    fn code(self) -> &'static str {
        match self {
            Lang::Zh => "zh-CN",
            Lang::En => "en",
        }
    }
}

/// The request's cookies.
pub fn cookies(headers: &HeaderMap) -> HashMap<String, String> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// A signed-in person: the token from the cookie, verified as the API verifies it.
pub struct Session {
    pub token: String,
    pub principal: Arc<Principal>,
}

impl Session {
    pub fn of(st: &AppState, headers: &HeaderMap) -> Option<Session> {
        let token = cookies(headers).get(SESSION)?.clone();
        let principal = st.engine.access.tokens.verify(&token).ok()?;
        Some(Session { token, principal })
    }

    /// The form token bound to this session (a page of another site cannot know it).
    pub fn csrf(&self) -> String {
        csrf_for(&self.token)
    }

    /// Whether a submitted form carries this session's token.
    pub fn csrf_ok(&self, form: &HashMap<String, String>) -> bool {
        form.get("csrf").is_some_and(|c| *c == self.csrf())
    }
}

fn csrf_for(secret: &str) -> String {
    let d = Sha256::digest(format!("hutong-csrf:{secret}").as_bytes());
    d[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a submitted form (at most 64 KiB), every field in order (a field may repeat).
pub async fn form_pairs(req: Request) -> Vec<(String, String)> {
    let bytes = axum::body::to_bytes(req.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    parse_query_string(std::str::from_utf8(&bytes).unwrap_or(""))
}

/// Reads a submitted form (at most 64 KiB); of a repeated field, the last.
pub async fn form(req: Request) -> HashMap<String, String> {
    form_pairs(req).await.into_iter().collect()
}

/// Asks the engine as `principal`, as the FHIR API would: the same decision, the same audit.
pub async fn call(
    st: &Arc<AppState>,
    principal: Arc<Principal>,
    from: &str,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    body: Option<&Value>,
) -> Resp {
    call_why(st, principal, from, method, path, query, body, None).await
}

/// [`call`] with a reason recorded in the audit trail (as `X-Hutong-Reason` would be): how an
/// operator reads what their role does not show without one.
#[allow(clippy::too_many_arguments)]
pub async fn call_why(
    st: &Arc<AppState>,
    principal: Arc<Principal>,
    from: &str,
    method: &str,
    path: &str,
    query: &[(&str, &str)],
    body: Option<&Value>,
    reason: Option<String>,
) -> Resp {
    let mut headers = HashMap::new();
    headers.insert("content-type".into(), "application/fhir+json".into());
    let req = Req {
        method: method.into(),
        segments: path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        query: query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        headers,
        body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
        base: st.base_url.clone().unwrap_or_else(|| "/fhir".into()),
        principal,
        from: Some(from.to_string()),
        reason,
        ..Req::default()
    };
    let engine = st.engine.clone();
    tokio::task::spawn_blocking(move || engine.handle(&req))
        .await
        .unwrap_or_else(|_| Resp::json(500, Value::Null))
}

/// Where a successful sign-in goes: the session cookie (HTTP-only, same-site; secure when
/// the server is reached over https) and a redirect to `to`. `answer` is the token response.
pub(crate) fn signed_in(st: &AppState, token: &str, answer: &Value, to: &str) -> Response {
    let secure = st
        .base_url
        .as_deref()
        .is_some_and(|b| b.starts_with("https:"));
    let cookie = format!(
        "{SESSION}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        answer["expires_in"].as_u64().unwrap_or(3600),
        if secure { "; Secure" } else { "" }
    );
    let mut r = axum::response::Redirect::to(to).into_response();
    if let Ok(c) = cookie.parse() {
        r.headers_mut().append("set-cookie", c);
    }
    r
}

/// A signed-in staff member's request (a clinician at the workstation, an operator at the
/// console): the session, the page's language, where it came from.
pub(crate) struct Desk {
    pub(crate) query: Vec<(String, String)>,
    pub(crate) lang: Lang,
    pub(crate) s: Session,
    pub(crate) from: String,
}

impl Desk {
    /// The request's desk if its session is of `kind`.
    pub(crate) fn of(
        st: &AppState,
        headers: &HeaderMap,
        query: Vec<(String, String)>,
        from: String,
        kind: Kind,
    ) -> Option<Desk> {
        let s = Session::of(st, headers).filter(|s| s.principal.kind == kind)?;
        Some(Desk {
            lang: Lang::of(headers, &query),
            query,
            s,
            from,
        })
    }

    /// A query parameter, trimmed; `None` when empty.
    pub(crate) fn q(&self, k: &str) -> Option<String> {
        self.query
            .iter()
            .find(|(x, _)| x == k)
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// A posted form of a signed-in `kind` with the session's CSRF token; otherwise the way
    /// to `home` (sign-in), or 403.
    pub(crate) async fn posted(
        st: &AppState,
        addr: std::net::SocketAddr,
        req: Request,
        kind: Kind,
        home: &str,
    ) -> Result<(Desk, HashMap<String, String>), Box<Response>> {
        let query = parse_query_string(req.uri().query().unwrap_or(""));
        let headers = req.headers().clone();
        let Some(d) = Desk::of(st, &headers, query, addr.ip().to_string(), kind) else {
            return Err(Box::new(axum::response::Redirect::to(home).into_response()));
        };
        let f = form(req).await;
        if !d.s.csrf_ok(&f) {
            return Err(Box::new(StatusCode::FORBIDDEN.into_response()));
        }
        Ok((d, f))
    }

    pub(crate) fn page(&self, status: StatusCode, title: &str, body: Markup) -> Response {
        respond(
            status,
            &self.query,
            page(self.lang, title, Some(&self.s), body),
        )
    }

    /// The engine's answer to this person.
    pub(crate) async fn ask(
        &self,
        st: &Arc<AppState>,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Resp {
        call(
            st,
            self.s.principal.clone(),
            &self.from,
            method,
            path,
            query,
            body,
        )
        .await
    }
}

/// A notice on a page: an error (announced at once) or a status.
pub(crate) fn notice(msg: &str, error: bool) -> Markup {
    html! {
        @if error { div.notice.error role="alert" { (msg) } }
        @else { div.notice role="status" { (msg) } }
    }
}

/// The sign-in page of staff of `kind` (clinicians at the workstation, operators at the
/// console), with an error if the last attempt failed.
pub(crate) fn sign_in_page(
    lang: Lang,
    kind: Kind,
    status: StatusCode,
    query: &[(String, String)],
    err: Option<&str>,
) -> Response {
    let (title, action, brand) = match kind {
        Kind::Operator => (
            lang.t("运营人员登录", "Operator sign-in"),
            "/console/login",
            Brand::Console,
        ),
        _ => (
            lang.t("医生登录", "Clinician sign-in"),
            "/workstation/login",
            Brand::Portal,
        ),
    };
    let form = password_form(lang, action, err);
    respond(status, query, framed(lang, title, None, brand, form))
}

impl Desk {
    /// The desk of a staff page's request, or the sign-in page.
    pub(crate) fn or_sign_in(
        st: &AppState,
        req: &Request,
        addr: std::net::SocketAddr,
        kind: Kind,
    ) -> Result<Desk, Box<Response>> {
        let query = parse_query_string(req.uri().query().unwrap_or(""));
        let lang = Lang::of(req.headers(), &query);
        Desk::of(
            st,
            req.headers(),
            query.clone(),
            addr.ip().to_string(),
            kind,
        )
        .ok_or_else(|| Box::new(sign_in_page(lang, kind, StatusCode::OK, &query, None)))
    }
}

/// The sign-in form of staff accounts (clinicians, operators), posting to `action`.
fn password_form(lang: Lang, action: &str, err: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = err { div.notice.error role="alert" { (e) } }
        form method="post" action=(action) {
            label for="username" { (lang.t("用户名", "User name")) }
            input id="username" name="username" autocomplete="username" required;
            label for="password" { (lang.t("密码", "Password")) }
            input id="password" name="password" type="password" autocomplete="current-password" required;
            button type="submit" { (lang.t("登录", "Sign in")) }
        }
    }
}

/// Signs in with a user name and password through the API's own `/auth/login` (the same
/// rate limits, lockout and audit) and keeps the token as the session — if the account is of
/// `kind`; otherwise the status and message to show on the sign-in page.
pub(crate) async fn password_sign_in(
    st: &Arc<AppState>,
    addr: std::net::SocketAddr,
    f: &HashMap<String, String>,
    kind: Kind,
    lang: Lang,
) -> Result<Response, (StatusCode, String)> {
    let body = ["username", "password"]
        .iter()
        .map(|k| {
            format!(
                "{k}={}",
                hutong_server::wire::percent_encode(f.get(*k).map(String::as_str).unwrap_or(""))
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let inner = Request::builder()
        .method("POST")
        .uri("/auth/login")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body))
        .expect("a well-formed request");
    let r = hutong_server::http::auth::login(
        axum::extract::State(st.clone()),
        axum::extract::ConnectInfo(addr),
        inner,
    )
    .await;
    let status = r.status();
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let Some(token) = v["access_token"].as_str().filter(|_| status.is_success()) else {
        let msg = v["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or("")
            .to_string();
        return Err((status, msg));
    };
    let fits = st
        .engine
        .access
        .tokens
        .verify(token)
        .is_ok_and(|p| p.kind == kind);
    if !fits {
        let msg = match kind {
            Kind::Operator => lang.t(
                "这不是平台运营账号：医生请从医生调阅登录。",
                "This is not an operator account: clinicians sign in at the workstation.",
            ),
            _ => lang.t(
                "这不是医生账号：平台运营人员请从运营控制台登录。",
                "This is not a clinician account: operators sign in at the console.",
            ),
        };
        return Err((StatusCode::FORBIDDEN, msg.to_string()));
    }
    let home = if kind == Kind::Operator {
        "/console"
    } else {
        "/workstation"
    };
    Ok(signed_in(st, token, &v, home))
}

/// `person`'s record as `s` may read it, newest first: at most `limit` items of the `types`
/// given.
pub(crate) async fn record(
    st: &Arc<AppState>,
    s: &Session,
    person: &str,
    from: &str,
    types: &[&str],
    limit: usize,
) -> Result<Vec<Value>, String> {
    let mut types: Vec<&str> = types.to_vec();
    types.dedup();
    let types = types.join(",");
    let count = limit.to_string();
    let mut query = vec![("_sort", "-date"), ("_count", count.as_str())];
    if !types.is_empty() {
        query.push(("_type", types.as_str()));
    }
    let r = call(
        st,
        s.principal.clone(),
        from,
        "GET",
        &format!("Person/{person}/$everything"),
        &query,
        None,
    )
    .await;
    if r.status != 200 {
        return Err(problem(&r));
    }
    let mut items: Vec<Value> = json_of(&r)["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .filter(|v| view::kind_of(v).is_some())
        .collect();
    items.sort_by_key(|v| std::cmp::Reverse(view::when(v).or(view::collected(v))));
    Ok(items)
}

/// The names of the institutions `items` came from.
pub(crate) async fn source_names(st: &Arc<AppState>, items: &[&Value]) -> HashMap<String, String> {
    let sources = items
        .iter()
        .filter_map(|v| v["meta"]["source"].as_str().map(String::from))
        .collect();
    names(st, sources).await
}

/// Source URI → institution name, read as the platform (names are reference data).
pub(crate) async fn names(
    st: &Arc<AppState>,
    sources: std::collections::BTreeSet<String>,
) -> HashMap<String, String> {
    let engine = st.engine.clone();
    tokio::task::spawn_blocking(move || {
        sources
            .into_iter()
            .map(|s| {
                let n = hutong_server::consent::institution_name(&engine, &s)
                    .unwrap_or_else(|| s.clone());
                (s, n)
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// The JSON of an engine answer (`Null` for none).
pub fn json_of(r: &Resp) -> Value {
    match &r.body {
        Body::Json(v) => v.clone(),
        Body::Raw(b) => serde_json::from_slice(b).unwrap_or(Value::Null),
        Body::Empty => Value::Null,
    }
}

/// The diagnostics of an engine refusal.
pub fn problem(r: &Resp) -> String {
    json_of(r)["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

const STYLE: &str = "
.scroll{overflow-x:auto;max-width:100%}
:root{--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--accent:#0b5cad;--bg:#fff;--warn:#8a4600;--bad:#a40e26}
*{box-sizing:border-box}body{margin:0;font:16px/1.5 system-ui,-apple-system,'PingFang SC','Noto Sans CJK SC',sans-serif;color:var(--fg);background:var(--bg)}
a{color:var(--accent)}a:focus,button:focus,input:focus,select:focus,textarea:focus{outline:3px solid #f2b600;outline-offset:2px}
.skip{position:absolute;left:-999px}.skip:focus{left:8px;top:8px;background:#fff;padding:4px}
header{display:flex;flex-wrap:wrap;gap:12px;align-items:center;padding:10px 16px;border-bottom:1px solid var(--line)}
header .brand{font-weight:700;margin-right:auto}nav a{margin-right:12px;white-space:nowrap;display:inline-block}
main{max-width:960px;margin:0 auto;padding:16px}main.wide{max-width:1280px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}.card{border:1px solid var(--line);border-radius:6px;padding:10px 14px;min-width:160px}
.card .n{font-size:28px;font-weight:700}.card .l{color:var(--muted);font-size:14px}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}tr.late{background:#fdecea}.diff{background:#fff4e5;font-weight:600}
.item{border-bottom:1px solid var(--line);padding:10px 0}.item .meta{color:var(--muted);font-size:14px}
.tag{display:inline-block;border:1px solid var(--line);border-radius:4px;padding:0 6px;font-size:13px;margin-right:6px}
.filters a{margin-right:10px}.filters a[aria-current]{font-weight:700;text-decoration:none;color:var(--fg)}
table{border-collapse:collapse;width:100%}th,td{text-align:left;border-bottom:1px solid var(--line);padding:6px 8px;vertical-align:top}
tr.breakglass{background:#fff4e5}tr.breakglass td:first-child{border-left:4px solid var(--warn)}
.notice{border:1px solid var(--line);border-left:4px solid var(--accent);padding:8px 12px;margin:12px 0}
.error{border-left-color:var(--bad)}
form.inline{display:inline}label{display:block;margin:8px 0 4px}
input,select,textarea{font:inherit;padding:8px;border:1px solid #8c959f;border-radius:4px;width:100%;max-width:420px}
button{font:inherit;padding:8px 14px;border:1px solid var(--accent);background:var(--accent);color:#fff;border-radius:4px;cursor:pointer;margin:4px 4px 4px 0}
button.secondary{background:#fff;color:var(--accent)}
@media (max-width:600px){header{padding:8px}main{padding:10px}table{font-size:14px}}
@media print{header,form,.filters,.noprint{display:none}}
";

/// Whose pages these are, before anyone signs in (afterwards the session says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brand {
    Portal,
    Console,
}

/// The page frame: language switch, navigation for whoever is signed in, skip link.
pub fn page(lang: Lang, title: &str, signed_in: Option<&Session>, content: Markup) -> Markup {
    framed(lang, title, signed_in, Brand::Portal, content)
}

/// [`page`] for a given brand.
pub fn framed(
    lang: Lang,
    title: &str,
    signed_in: Option<&Session>,
    brand: Brand,
    content: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · " (lang.t("互通健康档案", "Hutong health record")) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                @let kind = signed_in.map(|s| s.principal.kind);
                @let clinician = kind == Some(Kind::Clinician);
                @let operator = kind == Some(Kind::Operator);
                a.skip href="#main" { (lang.t("跳到正文", "Skip to content")) }
                header {
                    @if clinician {
                        span.brand { (lang.t("互通 · 医生调阅", "Hutong · Clinician workstation")) }
                    } @else if operator || brand == Brand::Console {
                        span.brand { (lang.t("互通 · 平台运营", "Hutong · Operations console")) }
                    } @else {
                        span.brand { (lang.t("互通 · 我的健康档案", "Hutong · My health record")) }
                    }
                    @if let Some(s) = signed_in {
                        @if clinician {
                            nav aria-label=(lang.t("主导航", "Main")) {
                                a href="/workstation" { (lang.t("查找患者", "Find a person")) }
                                a href="/workstation/referrals" { (lang.t("转诊", "Referrals")) }
                                a href="/workstation/follow-ups" { (lang.t("慢病随访", "Follow-ups")) }
                            }
                        } @else if operator {
                            nav aria-label=(lang.t("主导航", "Main")) {
                                @for (href, zh, en) in operator::sections(&s.principal) {
                                    a href=(href) { (lang.t(zh, en)) }
                                }
                            }
                        } @else {
                            nav aria-label=(lang.t("主导航", "Main")) {
                                a href="/portal" { (lang.t("我的档案", "My record")) }
                                a href="/portal/access" { (lang.t("授权与访问记录", "Authorizations & access")) }
                                a href="/portal/reports" { (lang.t("我的纠错", "My reports")) }
                                a href="/portal/appointments" { (lang.t("预约与转诊", "Appointments")) }
                                a href="/portal/family-doctor" { (lang.t("家庭医生", "Family doctor")) }
                            }
                        }
                        form.inline method="post" action="/portal/logout" {
                            input type="hidden" name="csrf" value=(s.csrf());
                            button.secondary type="submit" { (lang.t("退出", "Sign out")) }
                        }
                    }
                    a href=(match lang { Lang::Zh => "?lang=en", Lang::En => "?lang=zh" }) lang=(match lang { Lang::Zh => "en", Lang::En => "zh-CN" }) {
                        (match lang { Lang::Zh => "English", Lang::En => "中文" })
                    }
                }
                main id="main" class=[(operator || brand == Brand::Console).then_some("wide")] {
                    h1 { (title) }
                    (content)
                }
            }
        }
    }
}

/// An HTML answer; a `?lang=` choice is remembered.
pub fn respond(status: StatusCode, query: &[(String, String)], m: Markup) -> Response {
    let mut r = (
        status,
        [
            ("content-type", "text/html; charset=utf-8"),
            ("cache-control", "no-store"),
            ("x-frame-options", "DENY"),
            (
                "content-security-policy",
                "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
            ),
        ],
        m.into_string(),
    )
        .into_response();
    if let Some((_, l)) = query.iter().find(|(k, _)| k == "lang") {
        let l = if l == "en" { "en" } else { "zh" };
        if let Ok(v) = format!("{LANG}={l}; Path=/; SameSite=Lax; Max-Age=31536000").parse() {
            r.headers_mut().append("set-cookie", v);
        }
    }
    r
}
