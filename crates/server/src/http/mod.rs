//! The axum front: turns HTTP into engine requests and engine responses into HTTP, with the
//! FHIR error shape for everything that can go wrong before the engine (size, media type).

pub mod auth;
pub(crate) mod state;

pub use state::AppState;

use std::sync::Arc;

use axum::body::to_bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use hutong_access::principal::{Kind, Principal};

use crate::error::ApiError;
use crate::error::Code;
use crate::wire::{parse_query_string, percent_decode, Body, Req, Resp};

/// The router: FHIR under `/fhir`, signing in under `/auth`, discovery under
/// `/.well-known`, a health check at `/healthz`.
pub fn app(state: Arc<AppState>) -> Router {
    use crate::http::auth;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/auth/token", post(auth::token))
        .route("/auth/login", post(auth::login))
        .route("/auth/revoke", post(auth::revoke))
        .route("/auth/otp", post(auth::otp_send))
        .route("/auth/otp/verify", post(auth::otp_verify))
        .route("/auth/password", post(auth::resident_password))
        .route(
            "/.well-known/smart-configuration",
            get(auth::smart_configuration),
        )
        .route(
            "/fhir/.well-known/smart-configuration",
            get(auth::smart_configuration),
        )
        .route("/.well-known/jwks.json", get(auth::jwks))
        .route("/audit/checkpoints", get(auth::checkpoints))
        .route("/dev/outbox", get(auth::outbox))
        .route("/subscriptions/ws", get(websocket))
        .route("/node/notify", post(node_notify))
        .route("/fhir", any(fhir))
        .route("/fhir/", any(fhir))
        .route("/fhir/{*rest}", any(fhir))
        .with_state(state)
}

/// Who a request is from: the verified bearer token's principal. Only the capability
/// statement is public.
fn authenticate(
    st: &AppState,
    headers: &std::collections::HashMap<String, String>,
    public: bool,
) -> Result<Option<Arc<Principal>>, ApiError> {
    let Some(auth) = headers.get("authorization") else {
        return if public {
            Ok(None)
        } else {
            Err(ApiError::of(Code::Login,
                "Authentication required: send an access token (Authorization: Bearer …) from /auth/token, /auth/login or /auth/otp/verify",
            ))
        };
    };
    let token = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
        .ok_or_else(|| {
            ApiError::of(
                Code::Login,
                "The Authorization header must be 'Bearer <token>'",
            )
        })?;
    st.engine
        .access
        .tokens
        .verify(token.trim())
        .map(Some)
        .map_err(|e| ApiError::of(Code::Login, e.to_string()))
}

const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// The longest request URI (path and query) the FHIR API takes.
pub const MAX_URI: usize = 16 * 1024;

fn to_response(r: Resp) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut content_type = FHIR_JSON.to_string();
    let mut headers = HeaderMap::new();
    for (k, v) in r.headers {
        if k.eq_ignore_ascii_case("content-type") {
            content_type = v;
            continue;
        }
        if let (Ok(name), Ok(val)) = (
            axum::http::HeaderName::try_from(k),
            HeaderValue::try_from(v),
        ) {
            headers.insert(name, val);
        }
    }
    let body = match r.body {
        Body::Empty => return (status, headers).into_response(),
        Body::Json(v) => serde_json::to_vec(&v).unwrap_or_default(),
        Body::Raw(b) => b,
    };
    if let Ok(ct) = HeaderValue::try_from(content_type) {
        headers.insert(axum::http::header::CONTENT_TYPE, ct);
    }
    (status, headers, body).into_response()
}

fn media_ok(method: &str, ct: Option<&str>, path_is_search: bool) -> bool {
    let Some(ct) = ct else { return true };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match method {
        // JSON Patch, or FHIRPath Patch (a Parameters resource).
        "PATCH" => matches!(
            mime.as_str(),
            "application/json-patch+json" | "application/fhir+json" | "application/json"
        ),
        "POST" if path_is_search => mime == "application/x-www-form-urlencoded",
        "POST" | "PUT" => matches!(
            mime.as_str(),
            "application/fhir+json" | "application/json" | "application/json+fhir"
        ),
        _ => true,
    }
}

#[tracing::instrument(skip_all, fields(method = %req.method(), path = %req.uri().path()))]
async fn fhir(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    // A URI past this limit is answered here, with an OperationOutcome that says what to do,
    // well before the HTTP layer's own (64 KiB), which closes with a bare 414.
    let uri_len = parts.uri.path().len() + parts.uri.query().map_or(0, str::len);
    if uri_len > MAX_URI {
        return to_response(Resp::error(&ApiError::of(Code::UriTooLong,
            format!(
                "The request URI is {uri_len} bytes; the limit is {MAX_URI}: send a long search as POST {{type}}/_search with the parameters in a form body"
            ),
        )));
    }
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();
    let segments: Vec<String> = path
        .trim_start_matches("/fhir")
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let mut headers = std::collections::HashMap::new();
    for (k, v) in &parts.headers {
        // Header values may carry UTF-8 (a reason in Chinese).
        headers.insert(
            k.as_str().to_ascii_lowercase(),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        );
    }
    let public = method == "GET" && segments.len() == 1 && segments[0] == "metadata";
    let from = addr.ip().to_string();
    let principal = match authenticate(&st, &headers, public) {
        Ok(p) => p,
        Err(e) => {
            st.engine.audit.record(hutong_audit::Entry {
                ts: hutong_fhir::date::now_ms(),
                action: "authenticate".into(),
                outcome: e.status,
                who: hutong_audit::Who {
                    kind: "anonymous".into(),
                    subject: "-".into(),
                    ..Default::default()
                },
                from: Some(from),
                request: format!("{method} {path}"),
                detail: Some(e.message().to_string()),
                ..Default::default()
            });
            let mut r = to_response(Resp::error(&e));
            r.headers_mut().insert(
                "www-authenticate",
                HeaderValue::from_static("Bearer realm=\"hutong\""),
            );
            return r;
        }
    };
    if !json_acceptable(
        headers.get("accept").map(String::as_str),
        parts.uri.query().unwrap_or(""),
    ) {
        return to_response(Resp::error(&ApiError::of(
            Code::NotAcceptable,
            "This server speaks FHIR JSON only: ask for application/fhir+json",
        )));
    }
    let is_search = segments.last().is_some_and(|s| s == "_search");
    if !media_ok(
        &method,
        headers.get("content-type").map(String::as_str),
        is_search,
    ) {
        return to_response(Resp::error(&ApiError::of(Code::UnsupportedMediaType,
            format!(
                "Unsupported media type '{}': send application/fhir+json (PATCH: application/json-patch+json for JSON Patch, application/fhir+json for FHIRPath Patch)",
                headers.get("content-type").map(String::as_str).unwrap_or("")
            ),
        )));
    }
    if let Some(len) = headers
        .get("content-length")
        .and_then(|l| l.parse::<usize>().ok())
    {
        if len > st.body_limit {
            return too_large(st.body_limit);
        }
    }
    let bytes = match to_bytes(body, st.body_limit).await {
        Ok(b) => b,
        Err(_) => return too_large(st.body_limit),
    };
    let base = st.public_base(&parts.headers);
    let principal = principal.unwrap_or_else(|| Arc::new(Principal::nobody()));
    // Only the platform's own clients say on whose behalf they submit; everyone else
    // submits as their institution.
    let source = match principal.kind {
        Kind::Platform => headers
            .get("x-hutong-source")
            .cloned()
            .unwrap_or_else(|| st.engine.config.default_source.clone()),
        _ => principal.institution.clone().unwrap_or_default(),
    };
    let reason = headers
        .get("x-hutong-reason")
        .map(|r| crate::wire::percent_decode(r).trim().to_string())
        .filter(|r| !r.is_empty());
    let ereq = Req {
        method,
        segments,
        query: parse_query_string(parts.uri.query().unwrap_or("")),
        headers,
        body: bytes.to_vec(),
        base,
        source,
        import_key: None,
        principal,
        reason,
        from: Some(from),
    };
    let engine = st.engine.clone();
    match tokio::task::spawn_blocking(move || engine.handle(&ereq)).await {
        Ok(r) => to_response(r),
        Err(e) => {
            tracing::error!(error = %e, "Request handler panicked.");
            to_response(Resp::error(&ApiError::of(
                Code::Internal,
                "Internal error; the request was not applied.",
            )))
        }
    }
}

/// False when the client asks only for a format we do not produce (XML, Turtle), through
/// `Accept` or `_format`.
fn json_acceptable(accept: Option<&str>, query: &str) -> bool {
    let json_like = |m: &str| {
        let m = m
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        m.is_empty()
            || m.contains("json")
            || m == "*/*"
            || m == "application/*"
            || m.starts_with("text/html")
    };
    for (k, v) in crate::wire::parse_query_string(query) {
        if k == "_format" && !json_like(&v) && v != "json" {
            return false;
        }
    }
    accept.is_none_or(|a| a.split(',').any(json_like))
}

fn too_large(limit: usize) -> Response {
    to_response(Resp::error(&ApiError::of(
        Code::TooLarge,
        format!("The request body exceeds the limit of {limit} bytes"),
    )))
}

/// `GET /subscriptions/ws`: a websocket a subscriber binds to its subscriptions by sending
/// `bind-with-token <token>` (the token from `$get-ws-binding-token`); it receives a
/// `POST /node/notify`: what the upstream pushes down to this district node — not behind a
/// token: the body's signature under the node's push secret is its credential.
async fn node_notify(
    State(st): State<Arc<AppState>>,
    ConnectInfo(addr): ConnectInfo<std::net::SocketAddr>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, st.body_limit).await else {
        return too_large(st.body_limit);
    };
    let signature = parts
        .headers
        .get("x-hutong-signature")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let engine = st.engine.clone();
    let from = Some(addr.ip().to_string());
    match tokio::task::spawn_blocking(move || {
        crate::exchange::downward::notified(&engine, signature.as_deref(), from, &bytes)
    })
    .await
    {
        Ok(r) => to_response(r),
        Err(_) => to_response(Resp::error(&ApiError::of(
            Code::Internal,
            "Internal error; the notification was not applied.",
        ))),
    }
}

/// handshake per subscription, then its notifications as text frames, and `ping` is
/// answered `pong`.
async fn websocket(
    axum::extract::State(st): axum::extract::State<Arc<AppState>>,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> axum::response::Response {
    ws.on_upgrade(move |socket| serve_socket(st.engine.clone(), socket))
}

async fn serve_socket(engine: crate::Engine, mut socket: axum::extract::ws::WebSocket) {
    use axum::extract::ws::Message;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let Some(Ok(msg)) = incoming else { break };
                let Message::Text(text) = msg else {
                    if matches!(msg, Message::Close(_)) { break }
                    continue;
                };
                let text = text.as_str().trim();
                if let Some(token) = text.strip_prefix("bind-with-token") {
                    let token = token.trim_start_matches(':').trim();
                    match engine.hub.bind(token, tx.clone()) {
                        Some(subs) => {
                            for s in subs {
                                let e = engine.clone();
                                if let Ok(Some(h)) = tokio::task::spawn_blocking(move || crate::exchange::deliver::handshake(&e, &s)).await {
                                    if socket.send(Message::Text(h.into())).await.is_err() { return; }
                                }
                            }
                        }
                        None => {
                            let _ = socket.send(Message::Text("error: the token is unknown or expired".into())).await;
                        }
                    }
                } else if text == "ping" && socket.send(Message::Text("pong".into())).await.is_err() {
                    break;
                }
            }
            out = rx.recv() => {
                let Some(out) = out else { break };
                if socket.send(Message::Text(out.into())).await.is_err() { break }
            }
        }
    }
}
