//! The FHIR REST engine: every interaction as a function from a request to a response,
//! independent of HTTP so that bundles, the CLI and tests drive the same code.

use std::collections::HashMap;

use std::sync::Arc;

use hutong_access::principal::{Kind, Perms, Principal};
use hutong_access::Access;
use hutong_fhir::date::{format_http, format_instant, now_ms};
use hutong_fhir::json::Fields;
use hutong_fhir::{is_valid_id, Definitions, IssueCode, Outcome};
use hutong_store::search::Everything;
use hutong_store::{HistoryScope, Lookup, Page, Query, Scope, Store, Stored, Tx};
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::guard::Guard;

/// The platform extension on `meta` that records when the source collected the data (采集时间).
pub use hutong_fhir::vocab::COLLECTED_URL;

/// A request as the engine sees it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    /// Path segments below the FHIR base.
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// The FHIR base URL, for `fullUrl`, `Location` and links.
    pub base: String,
    /// The submitting institution (source URI).
    pub source: String,
    /// For resumable imports: a (file, chunk) key recorded in the same transaction.
    pub import_key: Option<(String, i64)>,
    /// Who is asking (verified from the access token by the HTTP front).
    pub principal: Arc<Principal>,
    /// A reason recorded with the request (`X-Hutong-Reason`).
    pub reason: Option<String>,
    /// The client's address.
    pub from: Option<String>,
}

impl Default for Req {
    /// An empty request by nobody: it may do nothing until given a principal.
    fn default() -> Req {
        Req {
            method: String::new(),
            segments: Vec::new(),
            query: Vec::new(),
            headers: HashMap::new(),
            body: Vec::new(),
            base: String::new(),
            source: String::new(),
            import_key: None,
            principal: Arc::new(Principal::nobody()),
            reason: None,
            from: None,
        }
    }
}

impl Req {
    /// The request line as audited: method, path and query.
    pub fn line(&self) -> String {
        let mut s = format!("{} {}", self.method, self.segments.join("/"));
        if !self.query.is_empty() {
            s.push('?');
            s.push_str(
                &self
                    .query
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&"),
            );
        }
        s
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// A response body: JSON we built, or stored bytes sent as they are.
#[derive(Debug, Clone)]
pub enum Body {
    Empty,
    Json(Value),
    Raw(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl Resp {
    pub fn json(status: u16, v: Value) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            body: Body::Json(v),
        }
    }
    /// A JSON body that is not a FHIR resource (the platform's own lists), labelled as what
    /// it is: `application/json`, not `application/fhir+json`.
    pub fn plain_json(status: u16, v: Value) -> Resp {
        Resp::json(status, v).header("Content-Type", "application/json; charset=utf-8")
    }
    pub fn error(e: &ApiError) -> Resp {
        Resp::json(e.status, e.outcome.to_json())
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Resp {
        self.headers.push((k.to_string(), v.into()));
        self
    }
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Source recorded when a request names none.
    pub default_source: String,
    /// Where `$export` writes its NDJSON files.
    pub export_dir: std::path::PathBuf,
    /// The intake rules in force.
    pub rules: hutong_quality::Rules,
}

/// The engine: a store, the access decision, the audit trail and settings. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub store: Store,
    pub config: EngineConfig,
    /// The Patient index behind `$match` and the person registry, shared by clones.
    pub matcher: Arc<crate::matching::Matcher>,
    /// Accounts, tokens, grants and the decision over them.
    pub access: Arc<Access>,
    /// Where access entries are appended.
    pub audit: Arc<hutong_audit::Sink>,
    /// The intake rules, run on every submitted resource.
    pub checker: Arc<hutong_quality::Checker>,
    /// Scorecard reports kept while nothing they count has changed.
    pub reports: Arc<crate::scorecards::Cache>,
}

/// Parses a JSON body, reporting the line and column of a syntax error.
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(empty_body());
    }
    serde_json::from_slice(body).map_err(malformed)
}

/// [`parse_json`] of text already known to be UTF-8 (a line of a file read as text), whose
/// strings the parser then need not check again.
pub fn parse_json_str(body: &str) -> Result<Value, ApiError> {
    if body.bytes().all(|b| b.is_ascii_whitespace()) {
        return Err(empty_body());
    }
    serde_json::from_str(body).map_err(malformed)
}

fn empty_body() -> ApiError {
    ApiError::new(
        400,
        IssueCode::Structure,
        "The request body is empty; a FHIR JSON resource was expected.",
    )
}

/// The 400 a JSON body that does not parse gets, with where it broke.
pub(crate) fn malformed(e: serde_json::Error) -> ApiError {
    ApiError::new(
        400,
        IssueCode::Structure,
        format!(
            "Malformed JSON at line {}, column {}: {e}",
            e.line(),
            e.column()
        ),
    )
}

fn check_type(rtype: &str) -> Result<(), ApiError> {
    if Definitions::get().is_resource_type(rtype) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "Unknown resource type '{rtype}'"
        )))
    }
}

/// A logical id as R4 defines it (1–64 of `A-Za-z0-9-.`), or a 400 saying so: the one check
/// every path uses.
pub(crate) fn check_id(id: &str) -> Result<(), ApiError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid id '{id}': ids are 1-64 characters of A-Z, a-z, 0-9, '-' and '.'"
        )))
    }
}

/// Checks the envelope of a resource submitted for `rtype` (and, for updates, `id`).
pub fn check_resource(v: &Value, rtype: &str, id: Option<&str>) -> Result<(), ApiError> {
    let Some(obj) = v.as_object() else {
        return Err(ApiError::new(
            400,
            IssueCode::Structure,
            "A resource must be a JSON object",
        ));
    };
    match obj.field("resourceType").and_then(Value::as_str) {
        None => {
            return Err(
                ApiError::new(400, IssueCode::Required, "The resource has no resourceType")
                    .with_expression("resourceType"),
            )
        }
        Some(t) if t != rtype => {
            return Err(ApiError::bad_request(format!(
                "The resource is a {t} but the request is for {rtype}"
            ))
            .with_expression("resourceType"))
        }
        Some(_) => {}
    }
    if rtype == "AuditEvent" {
        return Err(ApiError::new(
            405,
            IssueCode::NotSupported,
            "AuditEvent is written by the platform alone, one entry per access or change; it cannot be submitted, changed or deleted",
        ));
    }
    if let Some((at, what)) = bad_string(v, &mut String::from(rtype)) {
        return Err(ApiError::new(400, IssueCode::Value, what).with_expression(&at));
    }
    match (obj.field("id"), id) {
        (Some(Value::String(body_id)), Some(url_id)) if body_id != url_id => {
            Err(ApiError::bad_request(format!(
                "The resource id '{body_id}' does not match the id in the URL '{url_id}'"
            ))
            .with_expression("id"))
        }
        (None, Some(_)) => {
            Err(ApiError::bad_request("An update must carry the resource id").with_expression("id"))
        }
        (Some(Value::String(i)), _) => check_id(i).map_err(|e| e.with_expression("id")),
        (Some(_), _) => Err(ApiError::bad_request("id must be a string").with_expression("id")),
        (None, None) => Ok(()),
    }?;
    if let Some(m) = obj.get("meta") {
        if !m.is_object() {
            return Err(ApiError::bad_request("meta must be an object").with_expression("meta"));
        }
    }
    Ok(())
}

/// The longest string a resource may carry, but for base64 `data` (attachments), which the
/// body limit bounds.
pub const MAX_STRING: usize = 1 << 20;

/// The first string of `v` FHIR forbids — one with a character below U+0020 other than tab,
/// carriage return and line feed — or that is longer than
/// [`MAX_STRING`]: its location (`at`, grown and cut back during the walk) and what is wrong.
fn bad_string(v: &Value, at: &mut String) -> Option<(String, String)> {
    match v {
        Value::String(s) => {
            let data = at.ends_with(".data");
            if s.len() > MAX_STRING && !data {
                return Some((
                    at.clone(),
                    format!(
                        "A string of {} bytes at {at}: strings are limited to {MAX_STRING} bytes (large content belongs in an Attachment's data or a Binary)",
                        s.len()
                    ),
                ));
            }
            // R4 §2.1.28.0.1: no code points below 32 but tab, carriage return, line feed.
            if let Some(c) = s
                .bytes()
                .find(|b| *b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n'))
            {
                return Some((
                    at.clone(),
                    format!(
                        "The string at {at} contains the control character U+{:04X}, which FHIR strings may not contain",
                        c as u32
                    ),
                ));
            }
            None
        }
        Value::Array(a) => {
            let len = at.len();
            for (i, x) in a.iter().enumerate() {
                // Written in place: this walk runs over every resource an import loads.
                let _ = std::fmt::Write::write_fmt(at, format_args!("[{i}]"));
                let found = bad_string(x, at);
                at.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        Value::Object(o) => {
            let len = at.len();
            for (k, x) in o {
                if matches!(x, Value::Bool(_) | Value::Number(_) | Value::Null) {
                    continue;
                }
                at.push('.');
                at.push_str(k);
                let found = bad_string(x, at);
                at.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        _ => None,
    }
}

/// Stamps provenance: the submitting institution and the collection time.
pub fn stamp(v: &mut Value, source: &str, now: i64) {
    let Some(obj) = v.as_object_mut() else { return };
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    meta.insert("source".into(), Value::String(source.to_string()));
    let exts = meta.entry("extension").or_insert_with(|| json!([]));
    if !exts.is_array() {
        *exts = json!([]);
    }
    let arr = exts.as_array_mut().expect("array ensured above");
    // The source's own collection time wins; otherwise it is the time we received it.
    if !arr.iter().any(|e| e["url"] == COLLECTED_URL) {
        arr.push(json!({"url": COLLECTED_URL, "valueInstant": format_instant(now)}));
    }
}

/// The `Prefer: return=` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    Outcome,
}

pub fn prefer_return(req: &Req) -> Return {
    let p = req.header("prefer").unwrap_or("");
    if p.contains("return=minimal") {
        Return::Minimal
    } else if p.contains("return=OperationOutcome") {
        Return::Outcome
    } else {
        Return::Representation
    }
}

fn etag(v: i64) -> String {
    format!("W/\"{v}\"")
}

/// Parses `If-Match: W/"3"` (or `3`).
pub fn parse_etag(s: &str) -> Result<i64, ApiError> {
    let t = s.trim().trim_start_matches("W/").trim_matches('"');
    t.parse()
        .map_err(|_| ApiError::bad_request(format!("Invalid ETag '{s}'")))
}

/// Parses a query string (`a=1&b=2`) with percent-decoding.
pub fn parse_query_string(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k=v&…` of a request's parameters, percent-encoded.
pub fn query_string(q: &[(String, String)]) -> String {
    q.iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The link to one page of a list: the request's own parameters (its filters) with its
/// paging parameters replaced. Every list that pages links through here, so no `next`
/// link drops the filters that made the list.
pub fn page_link(path: &str, query: &[(String, String)], count: usize, offset: usize) -> String {
    let mut kept: Vec<(String, String)> = query
        .iter()
        .filter(|(k, _)| k != "_count" && k != "_offset")
        .cloned()
        .collect();
    kept.push(("_count".into(), count.to_string()));
    if offset > 0 {
        kept.push(("_offset".into(), offset.to_string()));
    }
    format!("{path}?{}", query_string(&kept))
}

pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:|/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `200 OK` with a stored version as the reader may see it, its ETag and Last-Modified.
fn resource_ok(g: &Guard, s: &Stored) -> Resp {
    let headers = vec![
        ("ETag".to_string(), etag(s.version)),
        ("Last-Modified".to_string(), format_http(s.last_updated)),
    ];
    Resp {
        status: 200,
        headers,
        body: Body::Raw(g.release(s).into_owned()),
    }
}

fn resource_headers(resp: Resp, s: &Stored) -> Resp {
    resp.header("ETag", etag(s.version))
        .header("Last-Modified", format_http(s.last_updated))
}

/// A created/updated resource answered as `Prefer` asks.
fn write_response(req: &Req, g: &Guard, status: u16, s: &Stored) -> Resp {
    let loc = format!("{}/{}/{}/_history/{}", req.base, s.rtype, s.id, s.version);
    let r = match prefer_return(req) {
        Return::Minimal => Resp {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        },
        Return::Representation => Resp {
            status,
            headers: Vec::new(),
            body: Body::Raw(g.release(s).into_owned()),
        },
        Return::Outcome => Resp::json(
            status,
            Outcome::info(format!(
                "{} {}/{} version {}",
                if status == 201 { "Created" } else { "Updated" },
                s.rtype,
                s.id,
                s.version
            ))
            .to_json(),
        ),
    };
    resource_headers(r.header("Location", loc), s)
}

/// `_elements` / `_summary=true|text|data` applied to one resource.
fn shape<'a>(
    body: std::borrow::Cow<'a, [u8]>,
    elements: Option<&[String]>,
    summary: Option<&str>,
) -> std::borrow::Cow<'a, [u8]> {
    if elements.is_none() && !matches!(summary, Some("true") | Some("data") | Some("text")) {
        return body;
    }
    let Ok(Value::Object(o)) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    let mandatory = ["resourceType", "id", "meta"];
    let keep = |k: &str| -> bool {
        if mandatory.contains(&k) {
            return true;
        }
        if let Some(els) = elements {
            return els.iter().any(|e| e == k);
        }
        match summary {
            Some("text") => k == "text",
            Some("data") => k != "text",
            // Without the element definitions at hand, `true` keeps the common summary
            // elements: identifiers, status, codes, subject, dates and names.
            _ => !matches!(
                k,
                "text"
                    | "contained"
                    | "extension"
                    | "modifierExtension"
                    | "note"
                    | "component"
                    | "photo"
            ),
        }
    };
    let mut out: Map<String, Value> = o.into_iter().filter(|(k, _)| keep(k)).collect();
    let tag = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"});
    if let Some(Value::Object(meta)) = out.get_mut("meta") {
        let tags = meta.entry("tag").or_insert_with(|| json!([]));
        if let Some(a) = tags.as_array_mut() {
            a.push(tag);
        }
    }
    match serde_json::to_vec(&Value::Object(out)) {
        Ok(v) => std::borrow::Cow::Owned(v),
        Err(_) => body,
    }
}

/// Writes a Bundle as JSON text with stored resource bytes embedded as they are (no
/// re-parsing of what the store returns).
pub struct BundleWriter {
    out: Vec<u8>,
    first: bool,
}

/// The bytes of a search entry besides its URL's parts and its resource:
/// `{"fullUrl":"//","search":{"mode":"include"},"resource":}` and the separating comma.
const ENTRY_FRAME: usize = 57;

impl BundleWriter {
    pub fn new(kind: &str, total: Option<u64>, links: &[(&str, String)]) -> BundleWriter {
        let mut head = json!({"resourceType": "Bundle", "id": uuid::Uuid::new_v4().to_string(), "meta": {"lastUpdated": format_instant(now_ms())}, "type": kind});
        if let Some(t) = total {
            head["total"] = json!(t);
        }
        if !links.is_empty() {
            head["link"] = links
                .iter()
                .map(|(r, u)| json!({"relation": r, "url": u}))
                .collect();
        }
        let mut out = serde_json::to_vec(&head).expect("bundle head serialises");
        out.pop(); // the closing brace: entries follow
        out.extend_from_slice(b",\"entry\":[");
        BundleWriter { out, first: true }
    }

    /// Starts the next entry: the separator before all but the first.
    fn next_entry(&mut self) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
    }

    /// Ends an entry whose other fields are written: `,"resource":…}` (without an empty
    /// resource).
    fn end_entry(&mut self, resource: Option<&[u8]>) {
        if let Some(r) = resource.filter(|r| !r.is_empty()) {
            self.out.extend_from_slice(b",\"resource\":");
            self.out.extend_from_slice(r);
        }
        self.out.push(b'}');
    }

    fn text(&mut self, s: &str) {
        serde_json::to_writer(&mut self.out, s).expect("a string serialises");
    }

    /// Adds an entry: its JSON fields other than `resource`, then the resource bytes.
    pub fn entry(&mut self, fields: Value, resource: Option<&[u8]>) {
        self.next_entry();
        let start = self.out.len();
        serde_json::to_writer(&mut self.out, &fields).expect("entry serialises");
        if let Some(r) = resource.filter(|r| !r.is_empty()) {
            self.out.pop();
            if self.out.len() - start > 1 {
                self.out.push(b',');
            }
            self.out.extend_from_slice(b"\"resource\":");
            self.out.extend_from_slice(r);
            self.out.push(b'}');
        }
    }

    /// Writes `s` as the inside of a JSON string: as it is when nothing in it needs escaping
    /// (ids and type names never do), escaped otherwise.
    fn string_content(&mut self, s: &str) {
        if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            self.out.extend_from_slice(s.as_bytes());
        } else {
            let quoted = serde_json::to_string(s).expect("a string serialises");
            self.out
                .extend_from_slice(&quoted.as_bytes()[1..quoted.len() - 1]);
        }
    }

    /// Adds a search result entry for `rtype/id` under `base` (`mode` is `match` or
    /// `include`), written straight into the bundle: a page of a thousand resources is mostly
    /// copying their bytes.
    pub fn search_entry(&mut self, base: &str, rtype: &str, id: &str, mode: &str, resource: &[u8]) {
        self.next_entry();
        self.out.extend_from_slice(b"{\"fullUrl\":\"");
        self.string_content(base);
        self.out.push(b'/');
        self.string_content(rtype);
        self.out.push(b'/');
        self.string_content(id);
        self.out.extend_from_slice(b"\",\"search\":{\"mode\":\"");
        self.string_content(mode);
        self.out.extend_from_slice(b"\"}");
        self.end_entry(Some(resource));
    }

    /// Adds the response entry of a version a transaction or batch wrote.
    pub fn written_entry(
        &mut self,
        full_url: &str,
        status: &str,
        location: &str,
        version: i64,
        last_modified: &str,
        resource: Option<&[u8]>,
    ) {
        self.next_entry();
        self.out.extend_from_slice(b"{\"fullUrl\":");
        self.text(full_url);
        self.out.extend_from_slice(b",\"response\":{\"status\":");
        self.text(status);
        self.out.extend_from_slice(b",\"location\":");
        self.text(location);
        self.out.extend_from_slice(b",\"etag\":");
        self.text(&format!("W/\"{version}\""));
        self.out.extend_from_slice(b",\"lastModified\":");
        self.text(last_modified);
        self.out.push(b'}');
        self.end_entry(resource);
    }

    /// Room for `bytes` more.
    pub fn reserve(&mut self, bytes: usize) {
        self.out.reserve(bytes);
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.out.extend_from_slice(b"]}");
        self.out
    }
}

impl Engine {
    pub fn new(store: Store, config: EngineConfig, access: Arc<Access>) -> Engine {
        let audit = Arc::new(hutong_audit::Sink::start(store.clone()));
        Engine {
            checker: Arc::new(hutong_quality::Checker::new(config.rules.clone())),
            store,
            config,
            matcher: Default::default(),
            access,
            audit,
            reports: Default::default(),
        }
    }

    /// Handles one request (blocking: call from a blocking thread). The access decision is
    /// made once, before dispatch; the request's audit entry is recorded when it ends.
    pub fn handle(&self, req: &Req) -> Resp {
        let guard = Guard::new(
            self,
            req.principal.clone(),
            req.reason.clone(),
            req.from.clone(),
            req.line(),
        );
        self.handle_with(req, &guard)
    }

    /// Handles a request under an existing guard (its entry is finished here).
    pub fn handle_with(&self, req: &Req, guard: &Guard) -> Resp {
        let r = match self.dispatch(req, guard) {
            Ok(r) => r,
            Err(e) => Resp::error(&e),
        };
        let detail = (r.status >= 400).then(|| match &r.body {
            Body::Json(v) => v["issue"][0]["diagnostics"]
                .as_str()
                .unwrap_or("")
                .to_string(),
            _ => String::new(),
        });
        guard.finish(self, r.status, detail.filter(|d| !d.is_empty()));
        r
    }

    /// Records an accepted version's intake findings and fingerprint in its write
    /// transaction (see [`crate::intake::record`]).
    pub(crate) fn keep(
        &self,
        tx: &mut Tx<'_>,
        source: &str,
        s: &Stored,
        findings: &[hutong_quality::Finding],
        fingerprint: &str,
    ) -> Result<(), hutong_store::StoreError> {
        crate::intake::record(
            tx,
            &self.checker.rules.work_orders,
            source,
            s,
            findings,
            fingerprint,
        )
    }

    /// Classifies sensitive content and stamps provenance on a resource an institution
    /// submits.
    pub fn intake(&self, v: &mut Value, source: &str, now: i64) {
        self.access.classifier.label(v);
        // Catalogued tests sent in a convertible unit are stored in the platform's.
        hutong_quality::normalise(v);
        stamp(v, source, now);
    }

    fn dispatch(&self, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
        let seg: Vec<&str> = req.segments.iter().map(String::as_str).collect();
        let m = req.method.as_str();
        // Persons and their review Tasks are derived from the Patients: bring them up to date
        // before anyone reads them.
        if (m == "GET" || seg.get(1) == Some(&"_search"))
            && matches!(seg.first(), Some(&"Person") | Some(&"Task"))
        {
            self.matcher.sync(&self.store)?;
        }
        match (m, seg.as_slice()) {
            ("GET", ["metadata"]) => {
                g.act("capabilities");
                Ok(Resp::json(200, crate::capability::statement(&req.base)))
            }
            // The definitions of the operations the CapabilityStatement names are the
            // server's own (read-only; the store holds any others).
            ("GET", ["OperationDefinition", id])
                if crate::capability::operation_definition(id).is_some() =>
            {
                g.act("read");
                let d = crate::capability::operation_definition(id).expect("checked");
                Ok(Resp::json(200, d.clone()))
            }
            ("GET", ["OperationDefinition"])
                if req.query.iter().any(|(k, v)| {
                    k == "url" && !crate::capability::operation_definitions_by_url(v).is_empty()
                }) =>
            {
                g.act("search");
                let url = req
                    .query
                    .iter()
                    .find(|(k, _)| k == "url")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or("");
                let found = crate::capability::operation_definitions_by_url(url);
                let link = format!("{}/OperationDefinition?url={}", req.base, percent_encode(url));
                let mut w = BundleWriter::new("searchset", Some(found.len() as u64), &[("self", link)]);
                for d in found {
                    let id = d["id"].as_str().unwrap_or("");
                    let body = serde_json::to_vec(d).unwrap_or_default();
                    w.search_entry(&req.base, "OperationDefinition", id, "match", &body);
                }
                Ok(Resp {
                    status: 200,
                    headers: Vec::new(),
                    body: Body::Raw(w.finish()),
                })
            }
            ("POST", []) => crate::bundle::process(self, req, g),
            ("GET", ["_history"]) => {
                g.act("history");
                self.history(req, g, HistoryScope::System)
            }
            ("GET", []) | ("GET", ["_search"]) | ("POST", ["_search"]) => Err(ApiError::new(
                400,
                IssueCode::NotSupported,
                "System-level search needs a resource type; use /{type}?…",
            )),
            (m, ["AuditEvent", ..]) if m != "GET" && !req.segments.iter().any(|s| s.starts_with('$')) => {
                Err(ApiError::new(
                    405,
                    IssueCode::NotSupported,
                    format!("{m} is not allowed on AuditEvent: the audit trail is written by the platform alone, one entry per access or change, and is never changed or deleted"),
                ))
            }
            ("GET", ["AuditEvent"]) | ("GET", ["AuditEvent", _]) => {
                crate::access_api::audit_events(self, req, g)
            }
            (_, [op, ..]) if op.starts_with('$') => crate::operations::dispatch(self, req, g),
            ("GET", [t]) => {
                check_type(t)?;
                g.act("search");
                self.search(req, g, t, &req.query, None)
            }
            ("POST", [t, "_search"]) => {
                check_type(t)?;
                g.act("search");
                let mut params = req.query.clone();
                params.extend(parse_query_string(
                    std::str::from_utf8(&req.body).unwrap_or(""),
                ));
                self.search(req, g, t, &params, None)
            }
            ("GET", [t, "_history"]) => {
                check_type(t)?;
                g.act("history");
                g.may(t, Perms::READ)?;
                self.history(req, g, HistoryScope::Type(t.to_string()))
            }
            (_, [t, op, ..]) | (_, [t, _, op]) if op.starts_with('$') => {
                check_type(t)?;
                crate::operations::dispatch(self, req, g)
            }
            ("POST", [t]) => {
                check_type(t)?;
                g.act("create");
                self.create(req, g, t)
            }
            ("PUT", [t]) => {
                check_type(t)?;
                g.act("update");
                self.conditional_update(req, g, t)
            }
            ("DELETE", [t]) => {
                check_type(t)?;
                g.act("delete");
                self.conditional_delete(req, g, t)
            }
            ("GET", [t, id]) => {
                check_type(t)?;
                check_id(id)?;
                g.act("read");
                let r = self.read(g, t, id)?;
                // Conditional read: the client's copy is current.
                let etag = r
                    .headers
                    .iter()
                    .find(|(k, _)| k == "ETag")
                    .map(|(_, v)| v.clone());
                match (req.header("if-none-match"), etag) {
                    (Some(inm), Some(e))
                        if inm.split(',').any(|x| x.trim() == e || x.trim() == "*") =>
                    {
                        Ok(Resp {
                            status: 304,
                            headers: r.headers,
                            body: Body::Empty,
                        })
                    }
                    _ => Ok(r),
                }
            }
            ("PUT", [t, id]) => {
                check_type(t)?;
                check_id(id)?;
                g.act("update");
                self.update(req, g, t, id)
            }
            ("PATCH", [t, id]) => {
                check_type(t)?;
                check_id(id)?;
                g.act("patch");
                self.patch(req, g, t, id)
            }
            ("DELETE", [t, id]) => {
                check_type(t)?;
                check_id(id)?;
                g.act("delete");
                self.delete(req, g, t, id)
            }
            ("GET", [t, id, "_history"]) => {
                check_type(t)?;
                check_id(id)?;
                g.act("history");
                self.visible(g, t, id)?;
                self.history(
                    req,
                    g,
                    HistoryScope::Instance {
                        rtype: t.to_string(),
                        id: id.to_string(),
                    },
                )
            }
            ("GET", [t, id, "_history", v]) => {
                check_type(t)?;
                check_id(id)?;
                g.act("vread");
                self.vread(g, t, id, v)
            }
            ("GET", ["Patient", id, ct]) => {
                check_id(id)?;
                check_type(ct)?;
                g.act("search");
                self.visible(g, "Patient", id)?;
                self.search(req, g, ct, &req.query, Some(id))
            }
            (m, _) if !matches!(m, "GET" | "POST" | "PUT" | "PATCH" | "DELETE") => {
                Err(ApiError::new(
                    405,
                    IssueCode::NotSupported,
                    format!("Method {m} is not supported"),
                ))
            }
            _ => Err(ApiError::not_found(format!(
                "No FHIR interaction at {} /{}",
                m,
                req.segments.join("/")
            ))),
        }
    }

    /// The current version of `t/id` if the reader may see it: 404 when there is none,
    /// 403 when it is outside their authorization.
    pub fn visible(&self, g: &Guard, t: &str, id: &str) -> Result<Stored, ApiError> {
        g.may(t, Perms::READ)?;
        match self.store.read(t, id, &g.scope)? {
            Lookup::Found(s) => Ok(s),
            Lookup::Hidden => Err(g.hidden(&format!("{t}/{id}"))),
            Lookup::Missing => Err(ApiError::not_found(format!("{t}/{id} is not known"))),
        }
    }

    pub fn read(&self, g: &Guard, t: &str, id: &str) -> Result<Resp, ApiError> {
        let s = self.visible(g, t, id)?;
        if s.deleted {
            return Err(ApiError::new(
                410,
                IssueCode::Deleted,
                format!("{t}/{id} was deleted (version {})", s.version),
            ));
        }
        Ok(resource_ok(g, &s))
    }

    fn vread(&self, g: &Guard, t: &str, id: &str, v: &str) -> Result<Resp, ApiError> {
        let version: i64 = v
            .parse()
            .map_err(|_| ApiError::bad_request(format!("Invalid version '{v}'")))?;
        g.may(t, Perms::READ)?;
        let s = match self.store.vread(t, id, version, &g.scope)? {
            Lookup::Found(s) => s,
            Lookup::Hidden => return Err(g.hidden(&format!("{t}/{id}"))),
            Lookup::Missing => {
                return Err(ApiError::not_found(format!("{t}/{id} has no version {v}")))
            }
        };
        if s.deleted {
            return Err(ApiError::new(
                410,
                IssueCode::Deleted,
                format!("Version {v} of {t}/{id} is a deletion"),
            ));
        }
        Ok(resource_ok(g, &s))
    }

    /// The source a request's writes are recorded under: the institution of the principal;
    /// the platform (its services, the command line) names it.
    pub(crate) fn source_of(&self, req: &Req) -> String {
        match (&req.principal.kind, &req.principal.institution) {
            (Kind::Platform, _) | (_, None) => {
                if req.source.is_empty() {
                    self.config.default_source.clone()
                } else {
                    req.source.clone()
                }
            }
            (_, Some(i)) => i.clone(),
        }
    }

    fn body_resource(&self, req: &Req, t: &str, id: Option<&str>) -> Result<Value, ApiError> {
        let mut v = parse_json(&req.body)?;
        check_resource(&v, t, id)?;
        self.intake(&mut v, &self.source_of(req), now_ms());
        Ok(v)
    }

    /// Runs the intake rules on one submitted resource: its findings and fingerprint, or the
    /// rejection (the submission quarantined).
    fn govern(
        &self,
        req: &Req,
        g: &Guard,
        v: &Value,
    ) -> Result<(Vec<hutong_quality::Finding>, String), ApiError> {
        let source = self.source_of(req);
        let mut local = std::collections::HashSet::new();
        if let (Some(t), Some(id)) = (v["resourceType"].as_str(), v["id"].as_str()) {
            local.insert((t.to_string(), id.to_string()));
        }
        // Refused for where it would be filed before the rules run (and quarantine it).
        if let Some(t) = v["resourceType"].as_str() {
            g.may_file_now(&self.store, t, v)?;
        }
        let mut c = crate::intake::check(
            &self.store,
            &self.checker,
            &g.filing_scope(),
            &source,
            &[v],
            local,
            true,
        )?;
        let found = c.findings.pop().unwrap_or_default();
        if hutong_quality::rejects(&found) {
            let f: Vec<(Option<String>, &hutong_quality::Finding)> =
                found.iter().map(|f| (None, f)).collect();
            let path = req.segments.join("/");
            return Err(crate::intake::rejected(
                &self.store,
                &source,
                &req.method,
                &path,
                &req.body,
                &f,
            ));
        }
        Ok((found, c.fingerprints.pop().unwrap_or_default()))
    }

    fn create(&self, req: &Req, g: &Guard, t: &str) -> Result<Resp, ApiError> {
        g.may_write(t, Perms::CREATE, None)?;
        let mut v = self.body_resource(req, t, None)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("id");
        }
        let (found, fp) = self.govern(req, g, &v)?;
        let source = self.source_of(req);
        let cond = req.header("if-none-exist").map(parse_query_string);
        let (s, created) = g.write(self, |tx| {
            if let Some(c) = &cond {
                if let Some(found) = conditional_match(tx, t, c, &g.scope)? {
                    return Ok::<_, ApiError>((found, false));
                }
            }
            g.may_file(tx, t, &v)?;
            let s = tx.create(t, None, v.clone())?;
            self.keep(tx, &source, &s, &found, &fp)?;
            Ok((s, true))
        })?;
        if created {
            crate::access_api::after_write(self, g, &s)?;
        }
        Ok(write_response(req, g, if created { 201 } else { 200 }, &s))
    }

    fn update(&self, req: &Req, g: &Guard, t: &str, id: &str) -> Result<Resp, ApiError> {
        let v = self.body_resource(req, t, Some(id))?;
        let (found, fp) = self.govern(req, g, &v)?;
        let source = self.source_of(req);
        let if_match = req.header("if-match").map(parse_etag).transpose()?;
        let (s, created) = g.write(self, |tx| {
            check_owner(self, g, tx, t, id)?;
            g.may_file(tx, t, &v)?;
            let (s, created) = tx.update(t, id, v.clone(), if_match)?;
            self.keep(tx, &source, &s, &found, &fp)?;
            Ok::<_, ApiError>((s, created))
        })?;
        crate::access_api::after_write(self, g, &s)?;
        Ok(write_response(req, g, if created { 201 } else { 200 }, &s))
    }

    fn conditional_update(&self, req: &Req, g: &Guard, t: &str) -> Result<Resp, ApiError> {
        if req.query.is_empty() {
            return Err(ApiError::bad_request(
                "A conditional update needs search parameters",
            ));
        }
        let v = parse_json(&req.body)?;
        check_resource(&v, t, None)?;
        let mut v = v;
        self.intake(&mut v, &self.source_of(req), now_ms());
        let (found, fp) = self.govern(req, g, &v)?;
        let source = self.source_of(req);
        let (s, created) = g.write(self, |tx| {
            let q = Query::parse(t, &req.query, true)?;
            let page = tx.search(&q.probe(), &g.scope)?;
            match page.matches.as_slice() {
                [] => {
                    g.may_write(t, Perms::CREATE, None)?;
                    let id = v.get("id").and_then(Value::as_str).map(String::from);
                    if let Some(id) = &id {
                        check_owner(self, g, tx, t, id)?;
                    }
                    g.may_file(tx, t, &v)?;
                    let s = tx.create(t, id.as_deref(), v.clone())?;
                    self.keep(tx, &source, &s, &found, &fp)?;
                    Ok::<_, ApiError>((s, true))
                }
                [one] => {
                    if let Some(body_id) = v.get("id").and_then(Value::as_str) {
                        if body_id != one.id {
                            return Err(ApiError::bad_request(
                                "The resource id does not match the resource the criteria found",
                            ));
                        }
                    }
                    g.may_write(t, Perms::UPDATE, Some(one))?;
                    g.may_file(tx, t, &v)?;
                    let (s, _) = tx.update(t, &one.id, v.clone(), None)?;
                    self.keep(tx, &source, &s, &found, &fp)?;
                    Ok((s, false))
                }
                _ => Err(ApiError::new(
                    412,
                    IssueCode::MultipleMatches,
                    "The criteria match more than one resource",
                )),
            }
        })?;
        crate::access_api::after_write(self, g, &s)?;
        Ok(write_response(req, g, if created { 201 } else { 200 }, &s))
    }

    fn patch(&self, req: &Req, g: &Guard, t: &str, id: &str) -> Result<Resp, ApiError> {
        let patch = Patch::parse(parse_json(&req.body)?)?;
        let if_match = req.header("if-match").map(parse_etag).transpose()?;
        let source = self.source_of(req);
        // A patch's result is checked like any submission; a rejected one is quarantined
        // once the transaction is over.
        let rejected: std::cell::RefCell<Option<(Value, Vec<hutong_quality::Finding>)>> =
            Default::default();
        let r = g.write(self, |tx| {
            let cur = visible_in(g, tx, t, id)?;
            g.may_write(t, Perms::UPDATE, Some(&cur))?;
            let mut doc = cur.json()?;
            patch.apply(&mut doc)?;
            check_resource(&doc, t, Some(id))?;
            self.intake(&mut doc, &source, now_ms());
            g.may_file(tx, t, &doc)?;
            let local = [(t.to_string(), id.to_string())].into();
            let mut c = crate::intake::check(
                &self.store,
                &self.checker,
                &g.filing_scope(),
                &source,
                &[&doc],
                local,
                true,
            )?;
            if c.rejects() {
                let findings = c.findings.pop().unwrap_or_default();
                *rejected.borrow_mut() = Some((doc, findings));
                return Err(ApiError::new(
                    422,
                    IssueCode::BusinessRule,
                    "rejected by the intake rules",
                ));
            }
            let found = c.findings.pop().unwrap_or_default();
            let fp = c.fingerprints.pop().unwrap_or_default();
            let (s, created) = tx.update(t, id, doc, Some(if_match.unwrap_or(cur.version)))?;
            self.keep(tx, &source, &s, &found, &fp)?;
            Ok::<_, ApiError>((s, created))
        });
        if let Some((doc, findings)) = rejected.into_inner() {
            let f: Vec<(Option<String>, &hutong_quality::Finding)> =
                findings.iter().map(|f| (None, f)).collect();
            let body = serde_json::to_vec(&doc).unwrap_or_default();
            return Err(crate::intake::rejected(
                &self.store,
                &source,
                "PUT",
                &format!("{t}/{id}"),
                &body,
                &f,
            ));
        }
        let (s, _) = r?;
        crate::access_api::after_write(self, g, &s)?;
        Ok(write_response(req, g, 200, &s))
    }

    fn delete(&self, req: &Req, g: &Guard, t: &str, id: &str) -> Result<Resp, ApiError> {
        let if_match = req.header("if-match").map(parse_etag).transpose()?;
        let r = g.write(self, |tx| {
            if let Some(cur) = tx.read(t, id)? {
                g.may_write(t, Perms::DELETE, Some(&cur))?;
            } else {
                g.may(t, Perms::DELETE)?;
            }
            Ok::<_, ApiError>(tx.delete(t, id, if_match)?)
        })?;
        Ok(match r {
            Some(s) => Resp::json(
                200,
                Outcome::info(format!("Deleted {t}/{id} (version {})", s.version)).to_json(),
            )
            .header("ETag", etag(s.version)),
            None => Resp {
                status: 204,
                headers: Vec::new(),
                body: Body::Empty,
            },
        })
    }

    fn conditional_delete(&self, req: &Req, g: &Guard, t: &str) -> Result<Resp, ApiError> {
        if req.query.is_empty() {
            return Err(ApiError::bad_request(
                "A conditional delete needs search parameters",
            ));
        }
        // Refused before the search: whether anything matched is not the question.
        g.may(t, Perms::DELETE)?;
        let deleted = g.write(self, |tx| {
            let q = Query::parse(t, &req.query, true)?;
            let page = tx.search(&q.probe(), &g.scope)?;
            match page.matches.as_slice() {
                [] => Ok::<_, ApiError>(None),
                [one] => {
                    g.may_write(t, Perms::DELETE, Some(one))?;
                    Ok(tx.delete(t, &one.id.clone(), None)?)
                }
                _ => Err(ApiError::new(
                    412,
                    IssueCode::MultipleMatches,
                    "The criteria match more than one resource",
                )),
            }
        })?;
        Ok(match deleted {
            Some(s) => Resp::json(
                200,
                Outcome::info(format!("Deleted {t}/{}", s.id)).to_json(),
            ),
            None => Resp {
                status: 204,
                headers: Vec::new(),
                body: Body::Empty,
            },
        })
    }

    pub fn search(
        &self,
        req: &Req,
        g: &Guard,
        t: &str,
        params: &[(String, String)],
        compartment: Option<&str>,
    ) -> Result<Resp, ApiError> {
        g.may(t, Perms::SEARCH)?;
        let strict = req
            .header("prefer")
            .is_some_and(|p| p.contains("handling=strict"));
        let mut q = Query::parse(t, params, strict)?;
        if let Some(p) = compartment {
            q = q.in_compartment(p)?;
        }
        let page = self.store.search(&q, &g.scope)?;
        let path = match compartment {
            Some(p) => format!("{}/Patient/{p}/{t}", req.base),
            None => format!("{}/{t}", req.base),
        };
        Ok(Self::searchset(
            req,
            g,
            &path,
            &q.canonical,
            q.count,
            q.offset,
            &page,
            &q.ignored,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn searchset(
        req: &Req,
        g: &Guard,
        path: &str,
        canonical: &[(String, String)],
        count: usize,
        offset: usize,
        page: &Page,
        ignored: &[String],
    ) -> Resp {
        let qs = |off: usize| page_link(path, canonical, count, off);
        let mut links = vec![("self", qs(offset))];
        if page.has_more {
            links.push(("next", qs(offset + count)));
        }
        if offset > 0 {
            links.push(("previous", qs(offset.saturating_sub(count))));
        }
        let elements: Option<Vec<String>> = canonical
            .iter()
            .find(|(k, _)| k == "_elements")
            .map(|(_, v)| v.split(',').map(|s| s.trim().to_string()).collect());
        let summary = canonical
            .iter()
            .find(|(k, _)| k == "_summary")
            .map(|(_, v)| v.as_str());
        let mut w = BundleWriter::new("searchset", page.total, &links);
        // The whole page in one allocation: growing a megabyte buffer copies it.
        w.reserve(
            page.matches
                .iter()
                .chain(&page.included)
                .map(|s| s.body.len() + req.base.len() + s.rtype.len() + s.id.len() + ENTRY_FRAME)
                .sum(),
        );
        for s in &page.matches {
            let body = shape(g.release(s), elements.as_deref(), summary);
            w.search_entry(&req.base, &s.rtype, &s.id, "match", &body);
        }
        for s in &page.included {
            w.search_entry(&req.base, &s.rtype, &s.id, "include", g.release(s).as_ref());
        }
        if !ignored.is_empty() {
            let oo = Outcome::default().with(
                "warning",
                IssueCode::NotSupported,
                format!(
                    "Unknown search parameters were ignored: {}",
                    ignored.join(", ")
                ),
                None,
            );
            let bytes = serde_json::to_vec(&oo.to_json()).unwrap_or_default();
            w.entry(json!({"search": {"mode": "outcome"}}), Some(&bytes));
        }
        Resp {
            status: 200,
            headers: Vec::new(),
            body: Body::Raw(w.finish()),
        }
    }

    fn history(&self, req: &Req, g: &Guard, which: HistoryScope) -> Result<Resp, ApiError> {
        let mut count = 20usize;
        let mut offset = 0usize;
        let mut since = None;
        for (k, v) in &req.query {
            match k.as_str() {
                "_count" => {
                    count = v
                        .parse::<usize>()
                        .map_err(|_| ApiError::bad_request("_count must be a number"))?
                        .min(1000)
                }
                "_offset" => {
                    offset = v
                        .parse()
                        .map_err(|_| ApiError::bad_request("_offset must be a number"))?
                }
                "_since" => {
                    since = Some(
                        hutong_fhir::date::parse(v)
                            .ok_or_else(|| ApiError::bad_request(format!("Invalid _since '{v}'")))?
                            .lo,
                    )
                }
                _ => {}
            }
        }
        let (versions, total) = self
            .store
            .history(&which, since, count + 1, offset, &g.scope)?;
        let has_more = versions.len() > count;
        let path = match &which {
            HistoryScope::Instance { rtype, id } => format!("{}/{rtype}/{id}/_history", req.base),
            HistoryScope::Type(t) => format!("{}/{t}/_history", req.base),
            HistoryScope::System => format!("{}/_history", req.base),
        };
        let mut links = vec![("self", page_link(&path, &req.query, count, offset))];
        if has_more {
            links.push(("next", page_link(&path, &req.query, count, offset + count)));
        }
        if offset > 0 {
            links.push((
                "previous",
                page_link(&path, &req.query, count, offset.saturating_sub(count)),
            ));
        }
        let mut w = BundleWriter::new("history", total, &links);
        for s in versions.iter().take(count) {
            let method = if s.deleted {
                "DELETE"
            } else if s.version == 1 {
                "POST"
            } else {
                "PUT"
            };
            let url = if s.version == 1 && !s.deleted {
                s.rtype.clone()
            } else {
                format!("{}/{}", s.rtype, s.id)
            };
            let status = if s.deleted {
                "204"
            } else if s.version == 1 {
                "201"
            } else {
                "200"
            };
            let body = if s.deleted { None } else { Some(g.release(s)) };
            w.entry(
                json!({"fullUrl": format!("{}/{}/{}", req.base, s.rtype, s.id),
                    "request": {"method": method, "url": url},
                    "response": {"status": status, "etag": etag(s.version), "lastModified": format_instant(s.last_updated)}}),
                body.as_deref(),
            );
        }
        Ok(Resp {
            status: 200,
            headers: Vec::new(),
            body: Body::Raw(w.finish()),
        })
    }

    /// `Patient/{id}/$everything`.
    pub fn everything(&self, req: &Req, g: &Guard, id: &str) -> Result<Resp, ApiError> {
        check_id(id)?;
        g.act("everything");
        let p = self.visible(g, "Patient", id)?;
        if p.deleted {
            return Err(ApiError::not_found(format!("Patient/{id} is not known")));
        }
        let mut e = Everything {
            patient: id.to_string(),
            count: 1000,
            ..Default::default()
        };
        let date = |k: &str, v: &str| {
            hutong_fhir::date::parse(v)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid {k} '{v}'")))
        };
        for (k, v) in &req.query {
            match k.as_str() {
                "start" => e.start = Some(date(k, v)?.lo),
                "end" => e.end = Some(date(k, v)?.hi),
                "_since" => e.since = Some(date(k, v)?.lo),
                "_type" => {
                    for t in v.split(',') {
                        check_type(t)?;
                        e.types.push(t.to_string());
                    }
                }
                "_count" => {
                    e.count = v
                        .parse::<usize>()
                        .map_err(|_| ApiError::bad_request("_count must be a number"))?
                        .clamp(1, 5000)
                }
                "_offset" => {
                    e.offset = v
                        .parse()
                        .map_err(|_| ApiError::bad_request("_offset must be a number"))?
                }
                _ => {}
            }
        }
        let page = self.store.everything(&e, &g.scope)?;
        let canonical: Vec<(String, String)> = req
            .query
            .iter()
            .filter(|(k, _)| k != "_offset")
            .cloned()
            .collect();
        Ok(Self::searchset(
            req,
            g,
            &format!("{}/Patient/{id}/$everything", req.base),
            &canonical,
            e.count,
            e.offset,
            &page,
            &[],
        ))
    }
}

/// A patch as a request carries it: JSON Patch (an array of operations), or FHIRPath Patch
/// (a `Parameters` resource), the two formats R4 defines for JSON.
pub enum Patch {
    Json(json_patch::Patch),
    FhirPath(Value),
}

impl Patch {
    pub fn parse(v: Value) -> Result<Patch, ApiError> {
        if v.get("resourceType").and_then(Value::as_str) == Some("Parameters") {
            return Ok(Patch::FhirPath(v));
        }
        serde_json::from_value(v).map(Patch::Json).map_err(|e| {
            ApiError::bad_request(format!(
                "Invalid JSON Patch: {e} (or send a FHIRPath Patch: a Parameters resource)"
            ))
        })
    }

    /// Applies the patch to `doc` (which the caller throws away on an error).
    pub fn apply(&self, doc: &mut Value) -> Result<(), ApiError> {
        let cannot = |e: String| {
            ApiError::new(
                422,
                IssueCode::Processing,
                format!("The patch cannot be applied: {e}"),
            )
        };
        match self {
            Patch::Json(p) => json_patch::patch(doc, p).map_err(|e| cannot(e.to_string())),
            Patch::FhirPath(p) => hutong_fhir::patch::apply(doc, p).map_err(|e| match e {
                hutong_fhir::patch::PatchError::Malformed(_) => {
                    ApiError::bad_request(e.to_string())
                }
                _ => cannot(e.to_string()),
            }),
        }
    }
}

/// The current version of `t/id` inside a write, if this reader may see it: 404 when it is
/// not there (or deleted), 403 when it is hidden — as a read would answer.
pub fn visible_in(g: &Guard, tx: &mut Tx<'_>, t: &str, id: &str) -> Result<Stored, ApiError> {
    match tx.read(t, id)? {
        Some(s) if !s.deleted && g.scope.permits_stored(&s) => Ok(s),
        Some(s) if !s.deleted => Err(g.hidden(&format!("{t}/{id}"))),
        _ => Err(ApiError::not_found(format!("{t}/{id} is not known"))),
    }
}

/// Checks that the requester may write `t/id` given who submitted its current version
/// (platform principals skip the lookup: they may write anything their scopes allow).
pub fn check_owner(
    engine: &Engine,
    g: &Guard,
    tx: &mut Tx<'_>,
    t: &str,
    id: &str,
) -> Result<(), ApiError> {
    // Work orders change only through their operations, whoever asks (else the Task and
    // the work-order queue would disagree).
    if t == "Task" && crate::workorders::is_work_order_id(tx, id)? {
        return Err(ApiError::new(
            403,
            IssueCode::Forbidden,
            "This Task is a work order: it changes through Task/{id}/$accept, $start, $resolve, $reject, $close, $reopen and $comment",
        ));
    }
    if g.principal.kind == Kind::Platform {
        return g.may(t, Perms::UPDATE);
    }
    match tx.source_of(t, id)? {
        Some(src) => hutong_access::decision::may_write(g.asker(), t, Perms::UPDATE, Some(&src))
            .map_err(|r| ApiError::new(403, IssueCode::Forbidden, r.0)),
        None => {
            g.may_write(t, Perms::CREATE, None)?;
            // A new id in another institution's namespace would be taken from it: its own
            // later writes there would be refused.
            let mine = g.principal.institution.as_deref();
            match engine.access.accounts.namespace_of(id) {
                Ok(Some(owner)) if Some(owner.as_str()) != mine => Err(ApiError::new(
                    403,
                    IssueCode::Forbidden,
                    format!("The id {id} is in the namespace of {owner}: create resources under ids of your own (your namespace, a UUID, or POST for one the platform assigns)"),
                )),
                Ok(_) => Ok(()),
                Err(e) => Err(ApiError::new(500, IssueCode::Exception, e.to_string())),
            }
        }
    }
}

/// The single resource matching conditional criteria (`If-None-Exist`, `ifNoneExist`),
/// `None` when nothing matches; more than one match is a 412.
pub fn conditional_match(
    tx: &mut Tx<'_>,
    t: &str,
    criteria: &[(String, String)],
    scope: &Scope,
) -> Result<Option<Stored>, ApiError> {
    let q = Query::parse(t, criteria, true)?;
    if q.is_empty() {
        return Err(ApiError::bad_request(
            "Conditional criteria must contain a search parameter",
        ));
    }
    let page = tx.search(&q.probe(), scope)?;
    match page.matches.len() {
        0 => Ok(None),
        1 => Ok(page.matches.into_iter().next()),
        _ => Err(ApiError::new(
            412,
            IssueCode::MultipleMatches,
            format!(
                "The criteria {} match more than one {t}",
                criteria
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("&")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn malformed_json_reports_position() {
        let e = parse_json(b"{\n  \"a\": 1,\n  oops }").unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message().contains("line 3, column 3"), "{}", e.message());
    }

    #[test]
    fn query_strings_decode() {
        assert_eq!(
            parse_query_string("a=1&code=http%3A%2F%2Floinc.org%7C4548-4&n=%E5%BC%A0+%E4%BC%9F"),
            vec![
                ("a".into(), "1".into()),
                ("code".into(), "http://loinc.org|4548-4".into()),
                ("n".into(), "张 伟".into())
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    proptest! {
        #[test]
        fn search_entries_are_json_whatever_the_base(base in "(\\PC|[\"\\\\]){0,40}", id in "[A-Za-z0-9.-]{1,64}") {
            let body = br#"{"resourceType":"Observation"}"#;
            let mut w = BundleWriter::new("searchset", Some(1), &[]);
            w.reserve(body.len() + base.len() + "Observation".len() + id.len() + ENTRY_FRAME);
            let reserved = w.out.capacity();
            w.search_entry(&base, "Observation", &id, "include", body);
            if !base.contains(['"', '\\']) {
                // The frame estimate holds a whole entry: the page is never copied to grow.
                prop_assert_eq!(w.out.capacity(), reserved);
            }
            let v: Value = serde_json::from_slice(&w.finish()).unwrap();
            let e = &v["entry"][0];
            prop_assert_eq!(e["fullUrl"].as_str().unwrap(), format!("{base}/Observation/{id}"));
            prop_assert_eq!(&e["search"]["mode"], "include");
            prop_assert_eq!(&e["resource"]["resourceType"], "Observation");
        }

        #[test]
        fn json_parser_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_json(&b);
        }

        #[test]
        fn percent_roundtrip(s in "\\PC{0,40}") {
            prop_assert_eq!(percent_decode(&percent_encode(&s)), s);
        }
    }
}
