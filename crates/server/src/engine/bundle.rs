//! `transaction` and `batch` Bundles.
//!
//! A transaction runs in one store transaction: entries are processed in the order the
//! specification prescribes (DELETE, POST, PUT/PATCH, GET), `urn:uuid:` fullUrls and
//! conditional references (`Patient?identifier=…`) are resolved first, and any failure rolls
//! everything back. A batch runs each entry on its own, through the same engine as a plain
//! request.
//!
//! One file past the ~800 lines we keep to, because a transaction is one algorithm in passes
//! (prepare, resolve ids, write in order, render after the commit) over types private to it;
//! the interactions it calls live in `write.rs`.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use hutong_fhir::date::{format_instant, now_ms};
use hutong_fhir::Definitions;
use serde_json::{json, Value};

use hutong_access::principal::Perms;

use crate::engine::write::conditional_match;
use crate::engine::write::Patch;
use crate::engine::write::Rejection;
use crate::engine::write::Submission;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::error::Code;
use crate::guard::Guard;
use crate::wire::{
    check_resource, parse_json, parse_query_string, prefer_return, Body, BundleWriter, Req, Resp,
    Return,
};

struct Entry {
    index: usize,
    method: String,
    /// The request URL relative to the base, split at `?`.
    path: String,
    query: Vec<(String, String)>,
    full_url: Option<String>,
    resource: Option<Value>,
    if_none_exist: Option<String>,
    if_match: Option<String>,
}

fn entry_error(i: usize, e: ApiError) -> ApiError {
    let mut e = e;
    for issue in &mut e.outcome.issues {
        issue.diagnostics = format!("Bundle entry {i}: {}", issue.diagnostics);
        if issue.expression.is_none() {
            issue.expression = Some(format!("Bundle.entry[{i}]"));
        }
    }
    e
}

fn relative(url: &str, base: &str) -> String {
    let u = url.strip_prefix(base).unwrap_or(url);
    u.trim_start_matches('/').to_string()
}

fn parse_entries(bundle: &Value, base: &str) -> Result<Vec<Entry>, ApiError> {
    let entries = match bundle.get("entry") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(ApiError::bad_request("Bundle.entry must be an array")
                .with_expression("Bundle.entry"))
        }
    };
    entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let req = e
                .get("request")
                .ok_or_else(|| entry_error(i, ApiError::of(Code::Required, "has no request")))?;
            let method = req
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_ascii_uppercase();
            if !matches!(
                method.as_str(),
                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE"
            ) {
                return Err(entry_error(
                    i,
                    ApiError::bad_request(format!("has an invalid request.method '{method}'")),
                ));
            }
            let url = req.get("url").and_then(Value::as_str).ok_or_else(|| {
                entry_error(i, ApiError::of(Code::Required, "has no request.url"))
            })?;
            let url = relative(url, base);
            let (path, qs) = url.split_once('?').unwrap_or((&url, ""));
            let resource = e.get("resource").cloned();
            if matches!(method.as_str(), "POST" | "PUT") && resource.is_none() {
                return Err(entry_error(
                    i,
                    ApiError::of(Code::Required, format!("{method} needs a resource")),
                ));
            }
            Ok(Entry {
                index: i,
                method,
                path: path.trim_end_matches('/').to_string(),
                query: parse_query_string(qs),
                full_url: e.get("fullUrl").and_then(Value::as_str).map(String::from),
                resource,
                if_none_exist: req
                    .get("ifNoneExist")
                    .and_then(Value::as_str)
                    .map(String::from),
                if_match: req.get("ifMatch").and_then(Value::as_str).map(String::from),
            })
        })
        .collect()
}

/// A Bundle's `fullUrl`s are unique (R4 bdl-7): two entries claiming one identity would
/// leave references to it ambiguous.
fn distinct_full_urls(entries: &[Entry]) -> Result<(), ApiError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for e in entries {
        if let Some(f) = &e.full_url {
            if let Some(first) = seen.insert(f, e.index) {
                return Err(entry_error(
                    e.index,
                    ApiError::of(Code::Duplicate,
                        format!("has the fullUrl {f} of entry {first} too: fullUrls are unique in a Bundle"),
                    ),
                )
                .with_expression(format!("Bundle.entry[{}].fullUrl", e.index)));
            }
        }
    }
    Ok(())
}

/// Handles `POST /` with a Bundle.
pub fn process(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    let bundle = parse_json(&req.body)?;
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(ApiError::bad_request(
            "POST to the base accepts a Bundle of type transaction or batch",
        )
        .with_expression("resourceType"));
    }
    // A node below forwarding what it accepted (see `exchange::links`).
    if bundle.get("type").and_then(Value::as_str) == Some("history") {
        return crate::exchange::links::forwarded(engine, req, g, &bundle);
    }
    let entries = parse_entries(&bundle, &req.base)?;
    distinct_full_urls(&entries)?;
    match bundle.get("type").and_then(Value::as_str) {
        Some("transaction") => {
            g.act("transaction");
            transaction(engine, req, g, entries)
        }
        Some("batch") => {
            g.act("batch");
            Ok(batch(engine, req, entries))
        }
        other => Err(ApiError::bad_request(format!(
            "Bundle.type must be transaction or batch (or history, from a node of the hierarchy), not {}",
            other.unwrap_or("(absent)")
        ))
        .with_expression("Bundle.type")),
    }
}

/// The patch a PATCH entry carries: JSON Patch as a `Binary` (its `data`, base64), or a
/// FHIRPath Patch (`Parameters`) as it is — the same for batches and transactions.
fn patch_body(resource: Option<&Value>) -> Result<Value, ApiError> {
    match resource {
        Some(Value::Object(b))
            if b.get("resourceType").and_then(Value::as_str) == Some("Binary") =>
        {
            let data = b.get("data").and_then(Value::as_str).unwrap_or("");
            let raw = base64_decode(data)
                .ok_or_else(|| ApiError::bad_request("Binary.data is not base64"))?;
            parse_json(&raw)
        }
        Some(v) => Ok(v.clone()),
        None => Err(ApiError::bad_request(
            "PATCH needs a JSON Patch (as a Binary) or a FHIRPath Patch (a Parameters)",
        )),
    }
}

fn batch(engine: &Engine, req: &Req, entries: Vec<Entry>) -> Resp {
    let mut w = BundleWriter::new("batch-response", None, &[]);
    for e in entries {
        let body = if e.method == "PATCH" {
            match patch_body(e.resource.as_ref()) {
                Ok(p) => serde_json::to_vec(&p).unwrap_or_default(),
                Err(err) => {
                    let (fields, body) = entry_response(&Resp::error(&err));
                    w.entry(fields, body.as_deref());
                    continue;
                }
            }
        } else {
            e.resource
                .as_ref()
                .map(|r| serde_json::to_vec(r).unwrap_or_default())
                .unwrap_or_default()
        };
        let mut sub = Req {
            method: if e.method == "HEAD" {
                "GET".into()
            } else {
                e.method.clone()
            },
            segments: e
                .path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            query: e.query.clone(),
            headers: req.headers.clone(),
            body,
            base: req.base.clone(),
            source: req.source.clone(),
            import_key: None,
            principal: req.principal.clone(),
            reason: req.reason.clone(),
            from: req.from.clone(),
        };
        sub.headers.remove("if-match");
        sub.headers.remove("if-none-exist");
        if let Some(m) = &e.if_match {
            sub.headers.insert("if-match".into(), m.clone());
        }
        if let Some(c) = &e.if_none_exist {
            sub.headers.insert("if-none-exist".into(), c.clone());
        }
        let r = if sub.segments.is_empty() && sub.method == "POST" {
            Resp::error(&ApiError::bad_request(
                "A batch entry cannot itself be a bundle",
            ))
        } else {
            engine.handle(&sub)
        };
        let (fields, body) = entry_response(&r);
        w.entry(fields, body.as_deref());
    }
    Resp {
        status: 200,
        headers: Vec::new(),
        body: Body::Raw(w.finish()),
    }
}

fn status_text(s: u16) -> String {
    let t = match s {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        422 => "Unprocessable Entity",
        _ => "",
    };
    format!("{s} {t}").trim().to_string()
}

fn entry_response(r: &Resp) -> (Value, Option<Vec<u8>>) {
    let mut response = json!({"status": status_text(r.status)});
    for (k, v) in &r.headers {
        match k.as_str() {
            "Location" => response["location"] = json!(v),
            "ETag" => response["etag"] = json!(v),
            _ => {}
        }
    }
    let body = match &r.body {
        Body::Empty => None,
        Body::Json(v) => Some(serde_json::to_vec(v).unwrap_or_default()),
        Body::Raw(b) => Some(b.clone()),
    };
    if r.status >= 400 {
        response["outcome"] = body
            .as_ref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or(Value::Null);
        return (json!({"response": response}), None);
    }
    (json!({"response": response}), body)
}

/// Rewrites every `reference` that names a bundle-local fullUrl, and resolves conditional
/// references against the store.
fn rewrite_refs(
    v: &mut Value,
    ids: &HashMap<String, String>,
    tx: &mut hutong_store::Tx<'_>,
    cache: &mut HashMap<String, String>,
    scope: &hutong_store::Scope,
) -> Result<(), ApiError> {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if k == "reference" {
                    if let Value::String(r) = x {
                        if let Some(to) = ids.get(r.as_str()) {
                            *r = to.clone();
                        } else if let Some((t, q)) = r.split_once('?') {
                            if !Definitions::get().is_resource_type(t) {
                                return Err(ApiError::bad_request(format!(
                                    "Conditional reference '{r}' names an unknown type"
                                )));
                            }
                            let to = match cache.get(r.as_str()) {
                                Some(to) => to.clone(),
                                None => {
                                    let found =
                                        conditional_match(tx, t, &parse_query_string(q), scope)?
                                            .ok_or_else(|| {
                                                ApiError::of(Code::NotFound,
                                            format!("Conditional reference '{r}' matches nothing"),
                                        )
                                            })?;
                                    let to = format!("{t}/{}", found.id);
                                    cache.insert(r.clone(), to.clone());
                                    to
                                }
                            };
                            *r = to;
                        } else if r.starts_with("urn:uuid:") || r.starts_with("urn:oid:") {
                            return Err(ApiError::bad_request(format!(
                                "Reference '{r}' names no entry of this bundle"
                            )));
                        }
                    }
                } else {
                    rewrite_refs(x, ids, tx, cache, scope)?;
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                rewrite_refs(x, ids, tx, cache, scope)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn order(method: &str) -> u8 {
    match method {
        "DELETE" => 0,
        "POST" => 1,
        "PUT" | "PATCH" => 2,
        _ => 3,
    }
}

fn transaction(
    engine: &Engine,
    req: &Req,
    g: &Guard,
    entries: Vec<Entry>,
) -> Result<Resp, ApiError> {
    let now = now_ms();
    let source = engine.source_of(req);
    let representation = prefer_return(req) == Return::Representation
        && req
            .header("prefer")
            .is_some_and(|p| p.contains("return=representation"));
    // Validate every resource before touching the store.
    let mut prepared: Vec<Entry> = Vec::with_capacity(entries.len());
    for mut e in entries {
        let seg: Vec<&str> = e.path.split('/').filter(|s| !s.is_empty()).collect();
        match (e.method.as_str(), seg.as_slice()) {
            ("POST", [t]) | ("PUT", [t]) => {
                let r = e.resource.as_mut().expect("checked in parse_entries");
                check_resource(r, t, None).map_err(|x| entry_error(e.index, x))?;
                if !Definitions::get().is_resource_type(t) {
                    return Err(entry_error(
                        e.index,
                        ApiError::not_found(format!("Unknown resource type '{t}'")),
                    ));
                }
                if e.method == "POST" {
                    g.may_write(t, Perms::CREATE, None)
                        .map_err(|x| entry_error(e.index, x))?;
                }
                g.may_file_now(&engine.store, t, r)
                    .map_err(|x| entry_error(e.index, x))?;
                engine.intake(r, &source, now);
            }
            ("PUT", [t, id]) => {
                let r = e.resource.as_mut().expect("checked in parse_entries");
                check_resource(r, t, Some(id)).map_err(|x| entry_error(e.index, x))?;
                g.may_file_now(&engine.store, t, r)
                    .map_err(|x| entry_error(e.index, x))?;
                engine.intake(r, &source, now);
            }
            ("DELETE", [_]) | ("DELETE", [_, _]) | ("GET", _) | ("HEAD", _) | ("PATCH", [_, _]) => {
            }
            (m, _) => {
                return Err(entry_error(
                    e.index,
                    ApiError::bad_request(format!(
                        "{m} {} is not a valid transaction entry",
                        e.path
                    )),
                ))
            }
        }
        prepared.push(e);
    }
    // The intake rules over the whole transaction: one error rejects all of it.
    let (findings, fingerprints) = govern(engine, req, g, &source, &prepared)?;
    let mut sequence: Vec<usize> = (0..prepared.len()).collect();
    sequence.sort_by_key(|&i| (order(&prepared[i].method), i));

    // Outside the writer's transaction: give plain POSTs their ids and fully prepare (index,
    // compress) those whose references are all bundle-local, so this CPU work runs in
    // parallel with other writers. Entries with ifNoneExist, and resources with conditional
    // references or references to them, are resolved inside the transaction.
    let mut fixed_ids: Vec<Option<String>> = vec![None; prepared.len()];
    let mut local: HashMap<String, String> = HashMap::new();
    let mut pending: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (i, e) in prepared.iter().enumerate() {
        let seg: Vec<&str> = e.path.split('/').filter(|s| !s.is_empty()).collect();
        match (e.method.as_str(), seg.as_slice(), &e.full_url) {
            ("POST", [t], f) if e.if_none_exist.is_none() => {
                let id = uuid::Uuid::new_v4().to_string();
                if let Some(f) = f {
                    local.insert(f.clone(), format!("{t}/{id}"));
                }
                fixed_ids[i] = Some(id);
            }
            ("POST", _, Some(f)) | ("PUT", [_], Some(f)) => {
                pending.insert(f.clone());
            }
            ("PUT", [t, id], Some(f)) => {
                local.insert(f.clone(), format!("{t}/{id}"));
            }
            _ => {}
        }
    }
    let early: Vec<Option<hutong_store::Prepared>> = prepared
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let id = fixed_ids[i].as_deref()?;
            let t = e.path.as_str();
            let mut r = e.resource.clone()?;
            if !rewrite_local(&mut r, &local, &pending) {
                return None;
            }
            engine.store.prepare(t, Some(id), &mut r).ok()
        })
        .collect();

    // A PATCH entry whose result the intake rules reject: the transaction fails, and the
    // submission is quarantined once it has rolled back, as any rejected one is.
    let mut patch_rejected: Option<(usize, Rejection)> = None;
    let results = g.write(engine, |tx| {
        let mut ids: HashMap<String, String> = HashMap::new();
        let mut cache: HashMap<String, String> = HashMap::new();
        let mut results: Vec<Option<Out>> = vec![None; prepared.len()];
        let mut written: Vec<hutong_store::Stored> = Vec::new();
        let mut post_ids: Vec<Option<String>> = vec![None; prepared.len()];
        // Each resource is changed once in a transaction (R4 §3.1.0.11.2): two entries that
        // resolve to the same identity — by URL or by conditions — fail it.
        let mut touched: HashMap<(String, String), usize> = HashMap::new();
        let mut claim = |t: &str, id: &str, i: usize| -> Result<(), ApiError> {
            match touched.insert((t.to_string(), id.to_string()), i) {
                Some(first) => Err(entry_error(
                    i,
                    ApiError::of(Code::Duplicate,
                        format!("changes {t}/{id}, which entry {first} changes too: a transaction changes each resource once"),
                    ),
                )),
                None => Ok(()),
            }
        };
        // Pass 1: decide the id of every POST and PUT, so references can point at them.
        for &i in &sequence {
            let e = &prepared[i];
            let seg: Vec<&str> = e.path.split('/').filter(|s| !s.is_empty()).collect();
            match (e.method.as_str(), seg.as_slice()) {
                ("POST", [t]) => {
                    let existing = match &e.if_none_exist {
                        Some(c) => conditional_match(tx, t, &parse_query_string(c), &g.scope).map_err(|x| entry_error(i, x))?,
                        None => None,
                    };
                    let id = match existing {
                        Some(s) => {
                            results[i] = Some(Out::Fields(
                                json!({"response": {"status": "200 OK",
                                    "location": format!("{}/{}/_history/{}", t, s.id, s.version),
                                    "etag": format!("W/\"{}\"", s.version),
                                    "lastModified": format_instant(s.last_updated)}}),
                                None,
                            ));
                            s.id
                        }
                        None => {
                            let id = fixed_ids[i].clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                            post_ids[i] = Some(id.clone());
                            id
                        }
                    };
                    if let Some(f) = &e.full_url {
                        ids.insert(f.clone(), format!("{t}/{id}"));
                    }
                }
                ("PUT", [t, id]) => {
                    if let Some(f) = &e.full_url {
                        ids.insert(f.clone(), format!("{t}/{id}"));
                    }
                }
                _ => {}
            }
        }
        // Pass 2: execute in the prescribed order.
        for &i in &sequence {
            let e = &prepared[i];
            let at = |x: ApiError| entry_error(i, x);
            let submission = |i: usize| Submission {
                findings: findings[i].as_deref().unwrap_or_default(),
                fingerprint: &fingerprints[i],
            };
            let seg: Vec<&str> = e.path.split('/').filter(|s| !s.is_empty()).collect();
            let if_match = e.if_match.as_deref().map(crate::wire::parse_etag).transpose().map_err(|x| entry_error(i, x))?;
            let stored = match (e.method.as_str(), seg.as_slice()) {
                ("DELETE", [t, id]) => {
                    claim(t, id, i)?;
                    let d = engine.delete_in(tx, g, t, id, if_match).map_err(at)?;
                    results[i] = Some(Out::Fields(json!({"response": {"status": if d.is_some() { "200 OK" } else { "204 No Content" }}}), None));
                    None
                }
                ("DELETE", [t]) => {
                    if let Some(d) = engine.conditional_delete_in(tx, g, t, &e.query).map_err(at)? {
                        claim(t, &d.id, i)?;
                    }
                    results[i] = Some(Out::Fields(json!({"response": {"status": "200 OK"}}), None));
                    None
                }
                ("POST", [t]) => match &post_ids[i] {
                    None => None, // ifNoneExist matched: nothing to write
                    Some(id) => {
                        let sub = submission(i);
                        let r = e.resource.as_ref().expect("checked in parse_entries");
                        // Borrowed: a transaction retried after a conflict (PostgreSQL)
                        // writes it again.
                        let (s, _) = match early[i].as_ref() {
                            Some(p) => engine.create_in(tx, g, &source, t, Some(id), Cow::Borrowed(r), Some(p), &sub, None),
                            None => {
                                let mut r = r.clone();
                                rewrite_refs(&mut r, &ids, tx, &mut cache, &g.scope).map_err(at)?;
                                engine.create_in(tx, g, &source, t, Some(id), Cow::Owned(r), None, &sub, None)
                            }
                        }
                        .map_err(at)?;
                        Some((s, "201 Created"))
                    }
                },
                ("PUT", [t, id]) => {
                    let mut r = e.resource.clone().expect("checked in parse_entries");
                    rewrite_refs(&mut r, &ids, tx, &mut cache, &g.scope).map_err(at)?;
                    let (s, created) = engine.update_in(tx, g, &source, t, id, r, &submission(i), if_match).map_err(at)?;
                    Some((s, if created { "201 Created" } else { "200 OK" }))
                }
                ("PUT", [t]) => {
                    let mut r = e.resource.clone().expect("checked in parse_entries");
                    rewrite_refs(&mut r, &ids, tx, &mut cache, &g.scope).map_err(at)?;
                    let (s, created) = engine
                        .conditional_update_in(tx, g, &source, t, &e.query, r, &submission(i), if_match)
                        .map_err(at)?;
                    if let Some(f) = &e.full_url {
                        ids.insert(f.clone(), format!("{t}/{}", s.id));
                    }
                    Some((s, if created { "201 Created" } else { "200 OK" }))
                }
                ("PATCH", [t, id]) => {
                    let patch_doc = patch_body(e.resource.as_ref()).map_err(at)?;
                    let patch = Patch::parse(patch_doc).map_err(at)?;
                    // What the transaction writes resolves the patched resource's references.
                    let local: HashSet<(String, String)> = ids
                        .values()
                        .filter_map(|r| r.split_once('/'))
                        .map(|(a, b)| (a.to_string(), b.to_string()))
                        .collect();
                    let mut rejected = None;
                    let r = engine.patch_in(tx, g, &source, t, id, &patch, if_match, local, &mut rejected);
                    if let Some(x) = rejected {
                        patch_rejected = Some((i, x));
                    }
                    Some((r.map_err(at)?, "200 OK"))
                }
                ("GET", _) | ("HEAD", _) => {
                    let (f, b) = get_in_tx(tx, req, g, &seg, &e.query).map_err(|x| entry_error(i, x))?;
                    results[i] = Some(Out::Fields(f, b));
                    None
                }
                _ => None,
            };
            if let Some((s, status)) = stored {
                claim(&s.rtype, &s.id, i)?;
                let body = if representation { Some(g.release(&s).into_owned()) } else { None };
                if s.rtype == "Appointment" {
                    written.push(s.clone());
                }
                // Rendered after the commit, outside the writer's turn.
                results[i] = Some(Out::Written {
                    rtype: s.rtype,
                    id: s.id,
                    version: s.version,
                    last_updated: s.last_updated,
                    status,
                    body,
                });
            }
        }
        if let Some((file, chunk)) = &req.import_key {
            tx.mark_done(file, *chunk)?;
        }
        Ok::<_, ApiError>((results, written))
    });
    if let Some((i, x)) = patch_rejected {
        let at = format!("Bundle.entry[{}].resource", prepared[i].index);
        return Err(engine.quarantine(&source, "POST", "", &req.body, Some(&at), &x.findings));
    }
    let (results, written) = results?;
    for s in &written {
        engine.after_commit(g, s)?;
    }
    let mut w = BundleWriter::new("transaction-response", None, &[]);
    for r in results {
        match r {
            Some(Out::Written {
                rtype,
                id,
                version,
                last_updated,
                status,
                body,
            }) => {
                w.written_entry(
                    &format!("{}/{rtype}/{id}", req.base),
                    status,
                    &format!("{rtype}/{id}/_history/{version}"),
                    version,
                    &format_instant(last_updated),
                    body.as_deref(),
                );
            }
            Some(Out::Fields(fields, body)) => w.entry(fields, body.as_deref()),
            None => w.entry(json!({"response": {"status": "200 OK"}}), None),
        }
    }
    tracing::info!(source = %source, entries = sequence.len(), "Transaction committed.");
    Ok(Resp {
        status: 200,
        headers: Vec::new(),
        body: Body::Raw(w.finish()),
    })
}

/// A transaction entry's response, kept until the transaction has committed.
#[derive(Clone)]
enum Out {
    /// The entry's fields other than `resource`, and the resource.
    Fields(Value, Option<Vec<u8>>),
    /// A version written: rendered after the commit.
    Written {
        rtype: String,
        id: String,
        version: i64,
        last_updated: i64,
        status: &'static str,
        body: Option<Vec<u8>>,
    },
}

/// The intake rules on every resource a transaction writes: per entry, its findings (`None`
/// for entries that write no submitted resource) and fingerprints; or the rejection of the
/// whole transaction, quarantined.
#[allow(clippy::type_complexity)]
fn govern(
    engine: &Engine,
    req: &Req,
    g: &Guard,
    source: &str,
    entries: &[Entry],
) -> Result<(Vec<Option<Vec<hutong_quality::Finding>>>, Vec<String>), ApiError> {
    let mut local = std::collections::HashSet::new();
    let mut which = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if !matches!(e.method.as_str(), "POST" | "PUT") {
            continue;
        }
        let Some(r) = &e.resource else { continue };
        let seg: Vec<&str> = e.path.split('/').filter(|s| !s.is_empty()).collect();
        if let [t, id] = seg.as_slice() {
            local.insert((t.to_string(), id.to_string()));
        }
        which.push((i, r));
    }
    let resources: Vec<&Value> = which.iter().map(|(_, r)| *r).collect();
    let checked = crate::governance::intake::check(
        &engine.store,
        &engine.checker,
        &g.filing_scope(),
        source,
        &resources,
        local,
        true,
    )?;
    let mut findings = vec![None; entries.len()];
    let mut fps = vec![String::new(); entries.len()];
    for (((i, _), f), fp) in which.iter().zip(checked.findings).zip(checked.fingerprints) {
        findings[*i] = Some(f);
        fps[*i] = fp;
    }
    if findings
        .iter()
        .flatten()
        .any(|f| hutong_quality::rejects(f))
    {
        let located: Vec<(Option<String>, &hutong_quality::Finding)> = findings
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.as_ref().map(|f| (i, f)))
            .flat_map(|(i, f)| {
                let at = format!("Bundle.entry[{}].resource", entries[i].index);
                f.iter().map(move |x| (Some(at.clone()), x))
            })
            .collect();
        return Err(crate::governance::intake::rejected(
            &engine.store,
            source,
            "POST",
            "",
            &req.body,
            &located,
        ));
    }
    Ok((findings, fps))
}

/// Rewrites bundle-local references from `ids`; false when the resource has a reference
/// that can only be resolved inside the transaction (conditional, or to a pending entry).
fn rewrite_local(
    v: &mut Value,
    ids: &HashMap<String, String>,
    pending: &std::collections::HashSet<String>,
) -> bool {
    match v {
        Value::Object(o) => o.iter_mut().all(|(k, x)| {
            if k == "reference" {
                if let Value::String(r) = x {
                    if let Some(to) = ids.get(r.as_str()) {
                        *r = to.clone();
                    } else if pending.contains(r.as_str())
                        || r.contains('?')
                        || r.starts_with("urn:")
                    {
                        return false;
                    }
                }
                true
            } else {
                rewrite_local(x, ids, pending)
            }
        }),
        Value::Array(a) => a.iter_mut().all(|x| rewrite_local(x, ids, pending)),
        _ => true,
    }
}

/// A GET entry of a transaction: read or search, seeing the transaction's own writes.
fn get_in_tx(
    tx: &mut hutong_store::Tx<'_>,
    req: &Req,
    g: &Guard,
    seg: &[&str],
    query: &[(String, String)],
) -> Result<(Value, Option<Vec<u8>>), ApiError> {
    match seg {
        [t, id] => {
            g.may(t, Perms::READ)?;
            let s = tx
                .read(t, id)?
                .filter(|s| !s.deleted)
                .ok_or_else(|| ApiError::not_found(format!("{t}/{id} is not known")))?;
            if !g.scope.permits_stored(&s) {
                return Err(g.hidden(&format!("{t}/{id}")));
            }
            Ok((
                json!({"response": {"status": "200 OK", "etag": format!("W/\"{}\"", s.version)}}),
                Some(g.release(&s).into_owned()),
            ))
        }
        [t] => {
            if !Definitions::get().is_resource_type(t) {
                return Err(ApiError::not_found(format!("Unknown resource type '{t}'")));
            }
            g.may(t, Perms::SEARCH)?;
            let q = hutong_store::Query::parse(t, query, false)?;
            let page = tx.search(&q, &g.scope)?;
            let mut w = BundleWriter::new("searchset", page.total, &[]);
            for s in &page.matches {
                w.entry(json!({"fullUrl": format!("{}/{}/{}", req.base, s.rtype, s.id), "search": {"mode": "match"}}), Some(g.release(s).as_ref()));
            }
            Ok((json!({"response": {"status": "200 OK"}}), Some(w.finish())))
        }
        _ => Err(ApiError::bad_request(format!(
            "GET {} is not supported inside a transaction",
            seg.join("/")
        ))),
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = T.iter().position(|x| *x == c)? as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}
