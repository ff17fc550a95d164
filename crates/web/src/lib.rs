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

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hutong_access::principal::Principal;
use hutong_server::engine::{parse_query_string, Body, Req, Resp};
use hutong_server::http::AppState;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;
use sha2::{Digest, Sha256};

mod clinician;
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
        .route("/portal/reports", get(resident::reports))
        .route("/portal/access", get(resident::access))
        .route(
            "/portal/consent/{id}/{action}",
            post(resident::consent_action),
        )
        .route("/portal/download", get(resident::download))
        .route("/portal/print", get(resident::print))
        .route("/workstation", get(clinician::home))
        .route("/workstation/login", post(clinician::login))
        .route("/workstation/person/{id}", get(clinician::person))
        .route("/workstation/person/{id}/request", post(clinician::request))
        .route(
            "/workstation/person/{id}/break-glass",
            post(clinician::break_glass),
        )
        .route("/workstation/consent/{id}/code", post(clinician::code))
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

/// Reads a submitted form (at most 64 KiB).
pub async fn form(req: Request) -> HashMap<String, String> {
    let bytes = axum::body::to_bytes(req.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    parse_query_string(std::str::from_utf8(&bytes).unwrap_or(""))
        .into_iter()
        .collect()
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
                let n = hutong_server::access_api::institution_name(&engine, &s)
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
:root{--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--accent:#0b5cad;--bg:#fff;--warn:#8a4600;--bad:#a40e26}
*{box-sizing:border-box}body{margin:0;font:16px/1.5 system-ui,-apple-system,'PingFang SC','Noto Sans CJK SC',sans-serif;color:var(--fg);background:var(--bg)}
a{color:var(--accent)}a:focus,button:focus,input:focus,select:focus,textarea:focus{outline:3px solid #f2b600;outline-offset:2px}
.skip{position:absolute;left:-999px}.skip:focus{left:8px;top:8px;background:#fff;padding:4px}
header{display:flex;flex-wrap:wrap;gap:12px;align-items:center;padding:10px 16px;border-bottom:1px solid var(--line)}
header .brand{font-weight:700;margin-right:auto}nav a{margin-right:12px}
main{max-width:960px;margin:0 auto;padding:16px}
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

/// The page frame: language switch, navigation for the signed-in resident, skip link.
pub fn page(lang: Lang, title: &str, signed_in: Option<&Session>, content: Markup) -> Markup {
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
                a.skip href="#main" { (lang.t("跳到正文", "Skip to content")) }
                header {
                    @let clinician = signed_in.is_some_and(|s| s.principal.kind == hutong_access::principal::Kind::Clinician);
                    @if clinician {
                        span.brand { (lang.t("互通 · 医生调阅", "Hutong · Clinician workstation")) }
                    } @else {
                        span.brand { (lang.t("互通 · 我的健康档案", "Hutong · My health record")) }
                    }
                    @if let Some(s) = signed_in {
                        @if clinician {
                            nav aria-label=(lang.t("主导航", "Main")) {
                                a href="/workstation" { (lang.t("查找患者", "Find a person")) }
                            }
                        } @else {
                            nav aria-label=(lang.t("主导航", "Main")) {
                                a href="/portal" { (lang.t("我的档案", "My record")) }
                                a href="/portal/access" { (lang.t("授权与访问记录", "Authorizations & access")) }
                                a href="/portal/reports" { (lang.t("我的纠错", "My reports")) }
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
                main id="main" {
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
