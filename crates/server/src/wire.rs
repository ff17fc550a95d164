//! The engine's wire types and the helpers every handler shares: requests and responses
//! independent of HTTP, JSON bodies and their envelope checks, query strings and percent
//! coding, ETags, paging links and the streaming Bundle writer. Nothing here knows the
//! store, the access decision or any domain: every other module may use it, it uses none.

use std::collections::HashMap;
use std::sync::Arc;

use hutong_access::principal::Principal;
use hutong_fhir::date::{format_instant, now_ms};
use hutong_fhir::json::Fields;
use hutong_fhir::{is_valid_id, Definitions};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::error::Code;

/// The bytes of a search entry besides its URL's parts and its resource:
/// `{"fullUrl":"//","search":{"mode":"include"},"resource":}` and the separating comma.
pub(crate) const ENTRY_FRAME: usize = 57;

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
    pub fn header(mut self, k: &str, v: impl Into<String>) -> Resp {
        self.headers.push((k.to_string(), v.into()));
        self
    }
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

pub(crate) fn empty_body() -> ApiError {
    ApiError::of(
        Code::Structure,
        "The request body is empty; a FHIR JSON resource was expected.",
    )
}

/// The 400 a JSON body that does not parse gets, with where it broke.
pub(crate) fn malformed(e: serde_json::Error) -> ApiError {
    ApiError::of(
        Code::Structure,
        format!(
            "Malformed JSON at line {}, column {}: {e}",
            e.line(),
            e.column()
        ),
    )
}

pub(crate) fn check_type(rtype: &str) -> Result<(), ApiError> {
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
        return Err(ApiError::of(
            Code::Structure,
            "A resource must be a JSON object",
        ));
    };
    match obj.field("resourceType").and_then(Value::as_str) {
        None => {
            return Err(
                ApiError::of(Code::Required, "The resource has no resourceType")
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
        return Err(ApiError::of(Code::MethodNotAllowed,
            "AuditEvent is written by the platform alone, one entry per access or change; it cannot be submitted, changed or deleted",
        ));
    }
    if let Some((at, what)) = bad_string(v, &mut String::from(rtype)) {
        return Err(ApiError::of(Code::Value, what).with_expression(&at));
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
pub(crate) fn bad_string(v: &Value, at: &mut String) -> Option<(String, String)> {
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

pub(crate) fn etag(v: i64) -> String {
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

/// Writes a Bundle as JSON text with stored resource bytes embedded as they are (no
/// re-parsing of what the store returns).
pub struct BundleWriter {
    out: Vec<u8>,
    first: bool,
}

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

    #[test]
    fn paging_reads_count_and_offset_within_the_lists_bounds() {
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            Paging::parse(&q(&[]), Paging::LISTS).unwrap(),
            Paging {
                count: 50,
                offset: 0
            }
        );
        assert_eq!(
            Paging::parse(
                &q(&[("_count", "9999"), ("_offset", "40"), ("x", "1")]),
                Paging::LISTS
            )
            .unwrap(),
            Paging {
                count: 500,
                offset: 40
            }
        );
        // A page of nothing would page forever; a list keeps one per page at least.
        assert_eq!(
            Paging::parse(&q(&[("_count", "0")]), (20, 100))
                .unwrap()
                .count,
            1
        );
        let e = Paging::parse(&q(&[("_offset", "-1")]), Paging::LISTS).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message().contains("_offset"), "{}", e.message());
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

/// The named parameters of a `Parameters` body.
pub(crate) struct Params(Vec<Value>);

impl Params {
    pub(crate) fn parse(req: &Req, op: &str) -> Result<Params, ApiError> {
        let body = parse_json(&req.body)?;
        if body["resourceType"] != "Parameters" {
            return Err(
                ApiError::bad_request(format!("{op} takes a Parameters resource"))
                    .with_expression("resourceType"),
            );
        }
        Ok(Params(
            body["parameter"].as_array().cloned().unwrap_or_default(),
        ))
    }

    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.0.iter().filter(move |p| p["name"] == name)
    }

    pub(crate) fn string(&self, name: &str) -> Option<String> {
        self.all(name).find_map(|p| {
            // The text-like value types: a date, time or URI is taken as written (the
            // operation parses it), so a client may send `end` as a valueDate.
            [
                "valueString",
                "valueCode",
                "valueDate",
                "valueDateTime",
                "valueInstant",
                "valueUri",
                "valueId",
            ]
            .iter()
            .find_map(|k| p[*k].as_str())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
        })
    }

    pub(crate) fn required(&self, name: &str, op: &str) -> Result<String, ApiError> {
        self.string(name).ok_or_else(|| {
            ApiError::of(Code::Required, format!("{op} needs the parameter '{name}'"))
                .with_expression(format!("Parameters.parameter.where(name='{name}')"))
        })
    }

    /// References of `rtype` named `name` (valueReference or a valueString `Type/id`).
    pub(crate) fn refs(&self, name: &str, rtype: &str) -> Result<Vec<String>, ApiError> {
        let mut out = Vec::new();
        for p in self.all(name) {
            let r = p["valueReference"]["reference"]
                .as_str()
                .or(p["valueString"].as_str())
                .unwrap_or("");
            let id = r
                .strip_prefix(&format!("{rtype}/"))
                .filter(|id| hutong_fhir::is_valid_id(id))
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Parameter '{name}' must reference a {rtype} ({rtype}/id), not '{r}'"
                    ))
                })?;
            out.push(id.to_string());
        }
        Ok(out)
    }

    pub(crate) fn boolean(&self, name: &str) -> bool {
        self.all(name).any(|p| p["valueBoolean"] == true)
    }
}

/// `_count` and `_offset` of a list: one reading for every list the server pages. Each list
/// declares its default page and the most it serves at once (at least one: a page of none
/// would page for ever); anything but a number is a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paging {
    pub count: usize,
    pub offset: usize,
}

impl Paging {
    /// Governance and audit lists: 50 a page, at most 500.
    pub const LISTS: (usize, usize) = (50, 500);

    /// Reads `_count` (at most `max`) and `_offset` from `query`; `default` when absent.
    pub fn parse(
        query: &[(String, String)],
        (default, max): (usize, usize),
    ) -> Result<Paging, ApiError> {
        let mut p = Paging {
            count: default,
            offset: 0,
        };
        for (k, v) in query {
            let n = || {
                v.trim().parse::<usize>().map_err(|_| {
                    ApiError::bad_request(format!("{k} must be a number, not '{v}'"))
                        .with_expression(k.clone())
                })
            };
            match k.as_str() {
                "_count" => p.count = n()?.clamp(1, max),
                "_offset" => p.offset = n()?,
                _ => {}
            }
        }
        Ok(p)
    }

    /// Whether `k` is one of the paging parameters (for lists that refuse unknown ones).
    pub fn is_param(k: &str) -> bool {
        matches!(k, "_count" | "_offset")
    }
}
