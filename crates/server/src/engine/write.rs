//! The write interactions over a store transaction — create (plain and conditional),
//! update (plain and conditional), patch, delete (plain and conditional). The REST API calls
//! them one request at a time; `transaction` and `batch` Bundles and bulk import call the
//! same functions entry by entry, so every path runs the same envelope, filing, ownership
//! and intake checks.

use crate::engine::read::visible_in;
use crate::engine::read::write_response;
use crate::error::ApiError;
use crate::guard::Guard;
use crate::wire::check_resource;
use crate::wire::etag;
use crate::wire::parse_etag;
use crate::wire::parse_json;
use crate::wire::parse_query_string;
use crate::wire::Body;
use crate::wire::Req;
use crate::wire::Resp;
use crate::Engine;
use hutong_access::principal::{Kind, Perms};
use hutong_fhir::date::now_ms;
pub use hutong_fhir::vocab::COLLECTED_URL;
use hutong_fhir::{IssueCode, Outcome};
use hutong_store::{Query, Scope, Stored, Tx};
use serde_json::Value;

impl Engine {
    pub(crate) fn body_resource(
        &self,
        req: &Req,
        t: &str,
        id: Option<&str>,
    ) -> Result<Value, ApiError> {
        let mut v = parse_json(&req.body)?;
        check_resource(&v, t, id)?;
        self.intake(&mut v, &self.source_of(req), now_ms());
        Ok(v)
    }

    /// Runs the intake rules on one submitted resource: its findings and fingerprint, or the
    /// rejection (the submission quarantined).
    pub(crate) fn govern(
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
        let mut c = crate::governance::intake::check(
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
            return Err(crate::governance::intake::rejected(
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

    pub(crate) fn create(&self, req: &Req, g: &Guard, t: &str) -> Result<Resp, ApiError> {
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
            crate::consent::appointments::after_write(self, g, &s)?;
        }
        Ok(write_response(req, g, if created { 201 } else { 200 }, &s))
    }

    pub(crate) fn update(&self, req: &Req, g: &Guard, t: &str, id: &str) -> Result<Resp, ApiError> {
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
        crate::consent::appointments::after_write(self, g, &s)?;
        Ok(write_response(req, g, if created { 201 } else { 200 }, &s))
    }

    pub(crate) fn conditional_update(
        &self,
        req: &Req,
        g: &Guard,
        t: &str,
    ) -> Result<Resp, ApiError> {
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
        crate::consent::appointments::after_write(self, g, &s)?;
        Ok(write_response(req, g, if created { 201 } else { 200 }, &s))
    }

    pub(crate) fn patch(&self, req: &Req, g: &Guard, t: &str, id: &str) -> Result<Resp, ApiError> {
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
            let mut c = crate::governance::intake::check(
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
            return Err(crate::governance::intake::rejected(
                &self.store,
                &source,
                "PUT",
                &format!("{t}/{id}"),
                &body,
                &f,
            ));
        }
        let (s, _) = r?;
        crate::consent::appointments::after_write(self, g, &s)?;
        Ok(write_response(req, g, 200, &s))
    }

    pub(crate) fn delete(&self, req: &Req, g: &Guard, t: &str, id: &str) -> Result<Resp, ApiError> {
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

    pub(crate) fn conditional_delete(
        &self,
        req: &Req,
        g: &Guard,
        t: &str,
    ) -> Result<Resp, ApiError> {
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
    if t == "Task" && crate::governance::orders::is_work_order_id(tx, id)? {
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
