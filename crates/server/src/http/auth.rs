//! Signing in: the OAuth2 token endpoint for institution systems (client credentials),
//! password login for clinicians and operators, one-time codes by SMS for residents, and the
//! discovery documents (SMART configuration, the public keys). Every attempt is audited;
//! failures count towards a lockout of the account (and each address is rate-limited).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::to_bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hutong_access::principal::{Kind, Principal, Scopes};
use hutong_access::AuthError;
use hutong_audit::{Entry, Who};
use hutong_store::{Query, Scope};
use serde_json::{json, Value};

use crate::error::{ApiError, Code};
use crate::http::state::AppState;
use crate::wire::parse_query_string;

fn outcome(code: Code, msg: impl Into<String>) -> Response {
    error_response(ApiError::of(code, msg))
}

fn error_response(e: ApiError) -> Response {
    let status = e.status;
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        [("content-type", "application/fhir+json; charset=utf-8")],
        e.outcome.to_json().to_string(),
    )
        .into_response();
    if status == 401 {
        r.headers_mut().insert(
            "www-authenticate",
            axum::http::HeaderValue::from_static("Bearer realm=\"hutong\""),
        );
    }
    r
}

fn token_response(st: &AppState, p: &Principal) -> Response {
    let (token, lifetime) = st.engine.access.tokens.issue(p);
    let mut body = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": p.scopes.to_string(),
    });
    if let Some(person) = &p.person {
        body["patient"] = json!(person);
    }
    (
        StatusCode::OK,
        [
            ("content-type", "application/json"),
            ("cache-control", "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

fn audit(st: &AppState, from: &str, action: &str, who: Who, status: u16, detail: Option<String>) {
    st.engine.audit.record(Entry {
        ts: hutong_fhir::date::now_ms(),
        action: action.into(),
        outcome: status,
        who,
        from: Some(from.to_string()),
        request: format!("POST /auth/{action}"),
        detail,
        ..Default::default()
    });
}

fn auth_failure(e: AuthError) -> (u16, Response) {
    match e {
        AuthError::BadCredentials(m) => (401, outcome(Code::Login, m)),
        AuthError::Locked(until) => (
            429,
            outcome(
                Code::Locked,
                format!("Too many failed attempts: locked until {until}"),
            ),
        ),
        AuthError::Invalid(m) => (400, outcome(Code::Invalid, m)),
        AuthError::Store(e) => {
            tracing::error!(error = %e, "Storage failure while signing in.");
            (
                500,
                outcome(Code::Internal, "Internal error while signing in"),
            )
        }
    }
}

/// The request body as key-value pairs: a form (OAuth2) or a JSON object.
async fn fields(req: Request) -> Result<(HeaderMap, HashMap<String, String>), Response> {
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, 64 * 1024)
        .await
        .map_err(|_| outcome(Code::TooLarge, "The request body is too large"))?;
    let ct = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut map = HashMap::new();
    if ct.starts_with("application/json") {
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| error_response(crate::wire::malformed(e)))?;
        for (k, x) in v.as_object().into_iter().flatten() {
            if let Some(s) = x.as_str() {
                map.insert(k.clone(), s.to_string());
            }
        }
    } else {
        for (k, v) in parse_query_string(std::str::from_utf8(&bytes).unwrap_or("")) {
            map.insert(k, v);
        }
    }
    Ok((parts.headers, map))
}

/// Every sign-in request: the address's rate limit, then the body's fields.
async fn admit(
    st: &AppState,
    addr: SocketAddr,
    req: Request,
) -> Result<(String, HeaderMap, HashMap<String, String>), Response> {
    let from = addr.ip().to_string();
    if !st.limits.allow(&from) {
        return Err(outcome(
            Code::Locked,
            "Too many sign-in attempts from this address",
        ));
    }
    let (headers, f) = fields(req).await?;
    Ok((from, headers, f))
}

fn basic_auth(h: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine as _;
    let v = h.get("authorization")?.to_str().ok()?;
    let b = v.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b.trim())
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (id, secret) = s.split_once(':')?;
    Some((
        crate::wire::percent_decode(id),
        crate::wire::percent_decode(secret),
    ))
}

/// `POST /auth/token`: OAuth2 client credentials (`client_secret_basic` or
/// `client_secret_post`).
pub async fn token(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let (from, headers, f) = match admit(&st, addr, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if f.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return outcome(Code::Unsupported,
            "grant_type must be client_credentials (clinicians and operators use /auth/login, residents /auth/otp)",
        );
    }
    let (id, secret) = match basic_auth(&headers)
        .or_else(|| Some((f.get("client_id")?.clone(), f.get("client_secret")?.clone())))
    {
        Some(x) => x,
        None => {
            return outcome(
                Code::Login,
                "Client credentials are missing (HTTP Basic, or client_id and client_secret)",
            )
        }
    };
    let engine = st.engine.clone();
    let scope = f.get("scope").cloned();
    let id2 = id.clone();
    let r = tokio::task::spawn_blocking(move || {
        engine
            .access
            .accounts
            .authenticate_client(&id2, &secret, scope.as_deref())
    })
    .await;
    let who = Who {
        kind: "system".into(),
        subject: id,
        ..Default::default()
    };
    match r {
        Ok(Ok(p)) => {
            audit(&st, &from, "token", crate::guard::who(&p), 200, None);
            token_response(&st, &p)
        }
        Ok(Err(e)) => {
            let detail = e.to_string();
            let (status, resp) = auth_failure(e);
            audit(&st, &from, "token", who, status, Some(detail));
            resp
        }
        Err(_) => outcome(Code::Internal, "Internal error while signing in"),
    }
}

/// `POST /auth/revoke` (RFC 7009): signs a token out (`token`, or the bearer token when the
/// form names none). It is refused from then on, on every node; as the RFC asks, the answer
/// is 200 whether or not the token was valid.
pub async fn revoke(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let (from, headers, f) = match admit(&st, addr, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let Some(token) = f.get("token").cloned().or(bearer) else {
        return outcome(Code::Required, "token is required");
    };
    let who = st
        .engine
        .access
        .tokens
        .verify(&token)
        .map(|p| crate::guard::who(&p))
        .unwrap_or_default();
    let engine = st.engine.clone();
    let r = tokio::task::spawn_blocking(move || engine.access.revoke_token(&token)).await;
    let (status, detail) = match r {
        Ok(Ok(())) => (200, None),
        Ok(Err(e)) => (200, Some(format!("not revoked: {e}"))),
        Err(_) => (500, Some("internal error".to_string())),
    };
    audit(&st, &from, "revoke", who, status, detail);
    if status == 200 {
        StatusCode::OK.into_response()
    } else {
        outcome(Code::Internal, "Internal error while revoking")
    }
}

/// `POST /auth/login`: a clinician or operator signs in with user name and password.
pub async fn login(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let (from, _, f) = match admit(&st, addr, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if let (Some(idn), Some(password)) = (f.get("id_number").cloned(), f.get("password").cloned()) {
        return resident_login(&st, &from, idn, password).await;
    }
    let (Some(user), Some(password)) = (f.get("username").cloned(), f.get("password").cloned())
    else {
        return outcome(
            Code::Required,
            "username and password (or a resident's id_number and password) are required",
        );
    };
    let engine = st.engine.clone();
    let u2 = user.clone();
    let r = tokio::task::spawn_blocking(move || {
        engine.access.accounts.authenticate_user(&u2, &password)
    })
    .await;
    match r {
        Ok(Ok(p)) => {
            audit(&st, &from, "login", crate::guard::who(&p), 200, None);
            token_response(&st, &p)
        }
        Ok(Err(e)) => {
            let detail = e.to_string();
            let (status, resp) = auth_failure(e);
            audit(
                &st,
                &from,
                "login",
                Who {
                    kind: "user".into(),
                    subject: user,
                    ..Default::default()
                },
                status,
                Some(detail),
            );
            resp
        }
        Err(_) => outcome(Code::Internal, "Internal error while signing in"),
    }
}

/// The principal of a resident signed in as `person`.
fn resident(person: String, v: &Value) -> Principal {
    Principal {
        kind: Kind::Resident,
        subject: format!("resident:{person}"),
        name: v["name"][0]["text"].as_str().map(String::from),
        institution: None,
        practitioner: None,
        person: Some(person),
        roles: Vec::new(),
        scopes: Scopes::parse("patient/*.rs"),
        booking: false,
    }
}

/// A resident signs in with their ID number and the password they set.
async fn resident_login(st: &Arc<AppState>, from: &str, idn: String, password: String) -> Response {
    let st2 = st.clone();
    let r =
        tokio::task::spawn_blocking(move || -> Result<Result<Principal, AuthError>, ApiError> {
            let person = match st2
                .engine
                .access
                .accounts
                .authenticate_resident(&idn, &password)
            {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            let v = st2
                .engine
                .store
                .read("Person", &person, &Scope::All)?
                .found()
                .map(|s| s.json())
                .transpose()?
                .unwrap_or(Value::Null);
            Ok(Ok(resident(person, &v)))
        })
        .await;
    let who = Who {
        kind: "resident".into(),
        subject: "id-number".into(),
        ..Default::default()
    };
    match r {
        Ok(Ok(Ok(p))) => {
            audit(st, from, "login", crate::guard::who(&p), 200, None);
            token_response(st, &p)
        }
        Ok(Ok(Err(e))) => {
            let detail = e.to_string();
            let (status, resp) = auth_failure(e);
            audit(st, from, "login", who, status, Some(detail));
            resp
        }
        Ok(Err(e)) => error_response(e),
        Err(_) => outcome(Code::Internal, "Internal error while signing in"),
    }
}

/// `POST /auth/password`: a signed-in resident sets the password they will sign in with,
/// together with their ID number (which must be the one on their record).
pub async fn resident_password(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let from = addr.ip().to_string();
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let p = match bearer.map(|t| st.engine.access.tokens.verify(t.trim())) {
        Some(Ok(p)) if p.kind == Kind::Resident && p.person.is_some() => p,
        Some(Ok(_)) => {
            return outcome(
                Code::Forbidden,
                "Only a signed-in resident sets a resident's password",
            )
        }
        _ => return outcome(Code::Login, "Sign in with your phone first (/auth/otp)"),
    };
    let (_, f) = match fields(req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (Some(idn), Some(password)) = (f.get("id_number").cloned(), f.get("password").cloned())
    else {
        return outcome(Code::Required, "id_number and password are required");
    };
    let st2 = st.clone();
    let p2 = p.clone();
    let r = tokio::task::spawn_blocking(move || -> Result<Result<(), String>, ApiError> {
        let person = p2.person.clone().unwrap_or_default();
        let v = st2
            .engine
            .store
            .read("Person", &person, &Scope::All)?
            .found()
            .map(|s| s.json())
            .transpose()?
            .unwrap_or(Value::Null);
        let want = hutong_cn::idcard::IdNumber::parse(&idn)
            .map(|i| i.as_str().to_string())
            .unwrap_or_else(|_| idn.to_uppercase());
        let mine = v["identifier"].as_array().into_iter().flatten().any(|i| {
            i["system"] == hutong_mpi::fhir::ID_SYSTEM && i["value"].as_str() == Some(want.as_str())
        });
        if !mine {
            return Ok(Err("this ID number is not the one on your record".into()));
        }
        st2.engine
            .access
            .accounts
            .set_resident_password(&person, &want, &password)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Ok(()))
    })
    .await;
    match r {
        Ok(Ok(Ok(()))) => {
            audit(&st, &from, "set-password", crate::guard::who(&p), 204, None);
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(Ok(Err(why))) => {
            audit(
                &st,
                &from,
                "set-password",
                crate::guard::who(&p),
                422,
                Some(why.clone()),
            );
            outcome(Code::Unprocessable, why)
        }
        Ok(Err(e)) => error_response(e),
        Err(_) => outcome(Code::Internal, "Internal error"),
    }
}

/// A phone number as the accounts hold it: digits, without a `+86`/`0086` prefix.
fn digits(phone: &str) -> String {
    hutong_cn::phone::mobile(phone)
}

/// The persons whose records carry `phone` (their golden record, or any institution's
/// registration), with their Person resources.
fn persons_with_phone(st: &AppState, phone: &str) -> Result<Vec<(String, Value)>, ApiError> {
    let engine = &st.engine;
    let mut ids: std::collections::BTreeSet<String> = Default::default();
    for t in ["Person", "Patient"] {
        let q = Query::parse(
            t,
            &[
                ("phone".into(), phone.to_string()),
                ("_count".into(), "50".into()),
                ("_elements".into(), "id".into()),
            ],
            true,
        )?;
        let page = engine.store.search(&q, &Scope::All)?;
        for s in page.matches {
            if t == "Person" {
                ids.insert(s.id);
            } else if let Some(p) = engine
                .matcher
                .person_of(&engine.store, &format!("Patient/{}", s.id))?
            {
                ids.insert(p);
            }
        }
    }
    let mut out = Vec::new();
    for id in ids {
        if let Some(s) = engine.store.read("Person", &id, &Scope::All)?.found() {
            let v = s.json()?;
            if !s.deleted && v["active"] != false {
                out.push((id, v));
            }
        }
    }
    Ok(out)
}

/// `POST /auth/otp`: sends a sign-in code to a resident's mobile phone. The answer is the
/// same whether or not the number is known, so it cannot be used to find out who is a
/// resident.
pub async fn otp_send(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let (from, _, f) = match admit(&st, addr, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(phone) = f.get("phone").map(|p| digits(p)).filter(|p| p.len() == 11) else {
        return outcome(
            Code::Required,
            "phone (an 11-digit mobile number) is required",
        );
    };
    let st2 = st.clone();
    let p2 = phone.clone();
    let r = tokio::task::spawn_blocking(move || -> Result<bool, ApiError> {
        let st = st2;
        st.engine.matcher.sync(&st.engine.store)?;
        if persons_with_phone(&st, &p2)?.is_empty() {
            return Ok(false);
        }
        let a = &st.engine.access.accounts;
        let code = a
            .issue_code("login", &p2)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        a.send(
            "sms",
            &p2,
            &format!("【互通】您的登录验证码是{code}，5分钟内有效。请勿告诉他人。"),
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(true)
    })
    .await;
    let masked = hutong_access::mask::phone(&phone);
    match r {
        Ok(Ok(sent)) => {
            audit(
                &st,
                &from,
                "otp",
                Who {
                    kind: "resident".into(),
                    subject: masked.clone(),
                    ..Default::default()
                },
                202,
                (!sent).then(|| "no resident has this number; no code sent".to_string()),
            );
            (
                StatusCode::ACCEPTED,
                [("content-type", "application/json")],
                json!({"sent_to": masked, "expires_in": hutong_access::accounts::CODE_MS / 1000})
                    .to_string(),
            )
                .into_response()
        }
        Ok(Err(e)) => error_response(e),
        Err(_) => outcome(Code::Internal, "Internal error while sending the code"),
    }
}

fn is_adult(v: &Value) -> bool {
    let now_year: i64 = hutong_fhir::date::format_instant(hutong_fhir::date::now_ms())[..4]
        .parse()
        .unwrap_or(2026);
    v["birthDate"]
        .as_str()
        .and_then(|b| b.get(..4))
        .and_then(|y| y.parse::<i64>().ok())
        .is_some_and(|y| now_year - y >= 18)
}

/// `POST /auth/otp/verify`: a resident signs in with their phone and the code; when several
/// residents share the number (a family), their ID number (`id_number`) says which.
pub async fn otp_verify(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let (from, _, f) = match admit(&st, addr, req).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (Some(phone), Some(code)) = (f.get("phone").map(|p| digits(p)), f.get("code").cloned())
    else {
        return outcome(Code::Required, "phone and code are required");
    };
    let id_number = f.get("id_number").cloned();
    let st2 = st.clone();
    let p2 = phone.clone();
    let r = tokio::task::spawn_blocking(move || -> Result<Result<Principal, (u16, Response)>, ApiError> {
        let st = st2;
        if let Err(e) = st.engine.access.accounts.check_code("login", &p2, &code) {
            return Ok(Err(auth_failure(e)));
        }
        let mut candidates = persons_with_phone(&st, &p2)?;
        if let Some(idn) = &id_number {
            let want = hutong_cn::idcard::IdNumber::parse(idn).map(|i| i.as_str().to_string()).unwrap_or_else(|_| idn.to_uppercase());
            candidates.retain(|(_, v)| {
                v["identifier"].as_array().into_iter().flatten().any(|i| {
                    i["system"] == hutong_mpi::fhir::ID_SYSTEM && i["value"].as_str() == Some(want.as_str())
                })
            });
        } else if candidates.len() > 1 {
            let adults: Vec<_> = candidates.iter().filter(|(_, v)| is_adult(v)).cloned().collect();
            if adults.len() == 1 {
                candidates = adults;
            }
        }
        let (person, v) = match candidates.as_slice() {
            [one] => one.clone(),
            [] => return Ok(Err((401, outcome(Code::Login, "No resident with this number matches")))),
            _ => return Ok(Err((409, outcome(Code::Ambiguous, "Several residents share this number: give your ID number (id_number) as well")))),
        };
        Ok(Ok(resident(person, &v)))
    })
    .await;
    let who = Who {
        kind: "resident".into(),
        subject: hutong_access::mask::phone(&phone),
        ..Default::default()
    };
    match r {
        Ok(Ok(Ok(p))) => {
            audit(&st, &from, "login", crate::guard::who(&p), 200, None);
            token_response(&st, &p)
        }
        Ok(Ok(Err((status, resp)))) => {
            audit(&st, &from, "login", who, status, None);
            resp
        }
        Ok(Err(e)) => error_response(e),
        Err(_) => outcome(Code::Internal, "Internal error while signing in"),
    }
}

/// `GET /.well-known/smart-configuration`.
pub async fn smart_configuration(State(st): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let base = st.public_base(&headers);
    let root = base.trim_end_matches("/fhir").to_string();
    axum::Json(json!({
        "issuer": root,
        "jwks_uri": format!("{root}/.well-known/jwks.json"),
        "token_endpoint": format!("{root}/auth/token"),
        "revocation_endpoint": format!("{root}/auth/revoke"),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.cruds", "user/*.cruds", "patient/*.rs"],
        "capabilities": ["client-confidential-symmetric", "permission-v2", "permission-v1"],
        "code_challenge_methods_supported": []
    }))
    .into_response()
}

/// `GET /.well-known/jwks.json`: the public keys that sign tokens and audit checkpoints.
pub async fn jwks(State(st): State<Arc<AppState>>) -> Response {
    let keys = st
        .engine
        .access
        .keys
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .jwks();
    axum::Json(keys).into_response()
}

/// `GET /audit/checkpoints`: every signed checkpoint of the audit trail (hashes and
/// signatures, nothing about anyone), for witnesses outside the platform to copy; with the
/// public keys (`/.well-known/jwks.json`) anyone can check them, and `hutong audit verify
/// --witness FILE` proves none was removed or replaced since the copy was taken.
pub async fn checkpoints(State(st): State<Arc<AppState>>) -> Response {
    let engine = st.engine.clone();
    match tokio::task::spawn_blocking(move || hutong_audit::checkpoint::published(&engine.store))
        .await
    {
        Ok(Ok(list)) => axum::Json(json!({"checkpoints": list})).into_response(),
        _ => outcome(Code::Internal, "The checkpoints could not be read"),
    }
}

/// `GET /dev/outbox[?to=…]`: the development message gateway's outbox (SMS and app
/// notifications), for the demo and tests. Off unless configured.
pub async fn outbox(State(st): State<Arc<AppState>>, req: Request) -> Response {
    if !st.dev_outbox {
        return outcome(Code::NotFound, "The development outbox is not enabled");
    }
    let q = parse_query_string(req.uri().query().unwrap_or(""));
    let to = q.iter().find(|(k, _)| k == "to").map(|(_, v)| v.clone());
    let engine = st.engine.clone();
    match tokio::task::spawn_blocking(move || engine.access.accounts.outbox(to.as_deref(), 50))
        .await
    {
        Ok(Ok(m)) => axum::Json(json!({"messages": m})).into_response(),
        _ => outcome(Code::Internal, "The outbox cannot be read"),
    }
}
