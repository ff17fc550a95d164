//! The write interactions over a store transaction — create (plain and conditional),
//! update (plain and conditional), patch, delete (plain and conditional). The REST API calls
//! them one request at a time; `transaction` and `batch` Bundles and bulk import call the
//! same functions entry by entry, so every path runs the same envelope, filing, ownership
//! and intake checks.

use crate::engine::read::visible_in;
use crate::engine::read::write_response;
use crate::error::ApiError;
use crate::error::Code;
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
use hutong_fhir::Outcome;
use hutong_store::Prepared;
use hutong_store::{Query, Scope, Stored, Tx};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::HashSet;

impl Engine {
    pub(crate) fn body_resource(
        &self,
        req: &Req,
        t: &str,
        id: Option<&str>,
    ) -> Result<Value, ApiError> {
        let mut v = parse_json(&req.body)?;
        check_resource(&v, t, id)?;
        if let (true, Some(id)) = (t == "Subscription", id) {
            // Written back after a read, its masked secrets are the stored ones.
            // Only for its own institution: another's write is refused, and must not carry
            // the secrets anywhere (a quarantined body, say) on its way.
            if let Some(cur) = self.store.read(t, id, &hutong_store::Scope::All)?.found() {
                if cur.source == self.source_of(req) {
                    hutong_exchange::restore_secrets(&mut v, &cur.json()?);
                }
            }
        }
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
        self.govern_with(&self.checker, req, g, v)
    }

    /// [`Engine::govern`] under other rules (a copy from another node is not checked for
    /// references this node need not hold).
    pub(crate) fn govern_with(
        &self,
        checker: &hutong_quality::Checker,
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
            checker,
            &g.filing_scope(),
            &source,
            &[v],
            local,
            true,
        )?;
        let found = c.findings.pop().unwrap_or_default();
        if hutong_quality::rejects(&found) {
            let path = req.segments.join("/");
            return Err(self.quarantine(&source, &req.method, &path, &req.body, None, &found));
        }
        Ok((found, c.fingerprints.pop().unwrap_or_default()))
    }

    /// `POST [type]` (with `If-None-Exist`, a conditional create).
    pub(crate) fn create(&self, req: &Req, g: &Guard, t: &str) -> Result<Resp, ApiError> {
        g.may_write(t, Perms::CREATE, None)?;
        let mut v = self.body_resource(req, t, None)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("id");
        }
        let (found, fp) = self.govern(req, g, &v)?;
        let sub = Submission {
            findings: &found,
            fingerprint: &fp,
        };
        let source = self.source_of(req);
        let cond = req.header("if-none-exist").map(parse_query_string);
        let (s, created) = g.write(self, |tx| {
            self.create_in(
                tx,
                g,
                &source,
                t,
                None,
                Cow::Borrowed(&v),
                None,
                &sub,
                cond.as_deref(),
            )
        })?;
        if created {
            self.after_commit(g, &s)?;
        }
        Ok(write_response(req, g, if created { 201 } else { 200 }, &s))
    }

    /// `PUT [type]/[id]`.
    pub(crate) fn update(&self, req: &Req, g: &Guard, t: &str, id: &str) -> Result<Resp, ApiError> {
        self.kept_by_operations(t, id)?;
        let v = self.body_resource(req, t, Some(id))?;
        let (found, fp) = self.govern(req, g, &v)?;
        let sub = Submission {
            findings: &found,
            fingerprint: &fp,
        };
        let source = self.source_of(req);
        let if_match = req.header("if-match").map(parse_etag).transpose()?;
        let (s, created) = g.write(self, |tx| {
            self.update_in(tx, g, &source, t, id, v.clone(), &sub, if_match)
        })?;
        self.after_commit(g, &s)?;
        Ok(write_response(req, g, if created { 201 } else { 200 }, &s))
    }

    /// `PUT [type]?criteria`.
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
        let v = self.body_resource(req, t, None)?;
        let (found, fp) = self.govern(req, g, &v)?;
        let sub = Submission {
            findings: &found,
            fingerprint: &fp,
        };
        let source = self.source_of(req);
        let if_match = req.header("if-match").map(parse_etag).transpose()?;
        let (s, created) = g.write(self, |tx| {
            self.conditional_update_in(tx, g, &source, t, &req.query, v.clone(), &sub, if_match)
        })?;
        self.after_commit(g, &s)?;
        Ok(write_response(req, g, if created { 201 } else { 200 }, &s))
    }

    /// `PATCH [type]/[id]` (JSON Patch or FHIRPath Patch).
    pub(crate) fn patch(&self, req: &Req, g: &Guard, t: &str, id: &str) -> Result<Resp, ApiError> {
        self.kept_by_operations(t, id)?;
        let patch = Patch::parse(parse_json(&req.body)?)?;
        let if_match = req.header("if-match").map(parse_etag).transpose()?;
        let source = self.source_of(req);
        let mut rejected = None;
        let r = g.write(self, |tx| {
            self.patch_in(
                tx,
                g,
                &source,
                t,
                id,
                &patch,
                if_match,
                Default::default(),
                &mut rejected,
            )
        });
        if let Some(x) = rejected {
            let body = serde_json::to_vec(&x.resource).unwrap_or_default();
            return Err(self.quarantine(
                &source,
                "PUT",
                &format!("{t}/{id}"),
                &body,
                None,
                &x.findings,
            ));
        }
        let s = r?;
        self.after_commit(g, &s)?;
        Ok(write_response(req, g, 200, &s))
    }

    /// `DELETE [type]/[id]`.
    pub(crate) fn delete(&self, req: &Req, g: &Guard, t: &str, id: &str) -> Result<Resp, ApiError> {
        let if_match = req.header("if-match").map(parse_etag).transpose()?;
        let r = g.write(self, |tx| self.delete_in(tx, g, t, id, if_match))?;
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

    /// `DELETE [type]?criteria`.
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
        let deleted = g.write(self, |tx| self.conditional_delete_in(tx, g, t, &req.query))?;
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

    // -- the interactions over a transaction: the one write path --------------------------

    /// Creates `t` from a submission: under `id` when the caller chose it (a transaction's
    /// entries are given theirs before any is written, so references can point at them),
    /// from `prepared` when it was indexed and compressed outside the writer's turn. With
    /// `if_none_exist`, the one match is returned instead (`false`: nothing created).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create_in(
        &self,
        tx: &mut Tx<'_>,
        g: &Guard,
        source: &str,
        t: &str,
        id: Option<&str>,
        resource: Cow<'_, Value>,
        prepared: Option<&Prepared>,
        sub: &Submission<'_>,
        if_none_exist: Option<&[(String, String)]>,
    ) -> Result<(Stored, bool), ApiError> {
        g.may_write(t, Perms::CREATE, None)?;
        if let Some(c) = if_none_exist {
            if let Some(found) = conditional_match(tx, t, c, &g.scope)? {
                return Ok((found, false));
            }
        }
        if let Some(p) = prepared {
            return Ok((
                self.write_prepared_in(tx, g, source, p, true, Some(&resource), sub)?,
                true,
            ));
        }
        g.may_file(tx, t, &resource)?;
        let s = match id {
            Some(id) => tx.insert_fresh(t, id, resource.into_owned())?,
            None => tx.create(t, None, resource.into_owned())?,
        };
        self.kept(tx, g, source, &s, sub.findings, sub.fingerprint)?;
        Ok((s, true))
    }

    /// Writes a version prepared outside the writer's turn (a transaction's entries, bulk
    /// import): `fresh` for a create under an id the platform assigned, otherwise an update
    /// (or create) under the submitter's id — with the ownership and filing checks of the
    /// interactions. `resource`, when at hand, spares reading the prepared form back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write_prepared_in(
        &self,
        tx: &mut Tx<'_>,
        g: &Guard,
        source: &str,
        p: &Prepared,
        fresh: bool,
        resource: Option<&Value>,
        sub: &Submission<'_>,
    ) -> Result<Stored, ApiError> {
        if fresh {
            g.may_write(&p.rtype, Perms::CREATE, None)?;
        } else {
            check_owner(self, g, tx, &p.rtype, &p.id)?;
        }
        match resource {
            Some(v) => g.may_file(tx, &p.rtype, v)?,
            None => g.may_file_prepared(tx, p)?,
        }
        let s = tx.write_prepared(p, fresh)?;
        self.kept(tx, g, source, &s, sub.findings, sub.fingerprint)?;
        Ok(s)
    }

    /// Updates (or creates, the id being the client's) `t/id` from a submission.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn update_in(
        &self,
        tx: &mut Tx<'_>,
        g: &Guard,
        source: &str,
        t: &str,
        id: &str,
        resource: Value,
        sub: &Submission<'_>,
        if_match: Option<i64>,
    ) -> Result<(Stored, bool), ApiError> {
        check_owner(self, g, tx, t, id)?;
        g.may_file(tx, t, &resource)?;
        let (s, created) = tx.update(t, id, resource, if_match)?;
        self.kept(tx, g, source, &s, sub.findings, sub.fingerprint)?;
        Ok((s, created))
    }

    /// Updates the one resource `criteria` find, or creates one (under the submission's id,
    /// when it has one) when none does; more than one is a 412.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conditional_update_in(
        &self,
        tx: &mut Tx<'_>,
        g: &Guard,
        source: &str,
        t: &str,
        criteria: &[(String, String)],
        resource: Value,
        sub: &Submission<'_>,
        if_match: Option<i64>,
    ) -> Result<(Stored, bool), ApiError> {
        let body_id = resource.get("id").and_then(Value::as_str).map(String::from);
        let (s, created) = match conditional_match(tx, t, criteria, &g.scope)? {
            None => {
                g.may_write(t, Perms::CREATE, None)?;
                if let Some(id) = &body_id {
                    check_owner(self, g, tx, t, id)?;
                }
                g.may_file(tx, t, &resource)?;
                (tx.create(t, body_id.as_deref(), resource)?, true)
            }
            Some(one) => {
                if body_id.as_ref().is_some_and(|b| *b != one.id) {
                    return Err(ApiError::bad_request(
                        "The resource id does not match the resource the criteria found",
                    ));
                }
                g.may_write(t, Perms::UPDATE, Some(&one))?;
                g.may_file(tx, t, &resource)?;
                (tx.update(t, &one.id, resource, if_match)?.0, false)
            }
        };
        self.kept(tx, g, source, &s, sub.findings, sub.fingerprint)?;
        Ok((s, created))
    }

    /// Patches `t/id`. The result is a submission like any other — the envelope, the filing
    /// check and the intake rules — whose references may point at what `local` names (the
    /// resources the same transaction writes). A result the rules reject fails the write and
    /// is left in `rejected`, to be quarantined once the transaction has rolled back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn patch_in(
        &self,
        tx: &mut Tx<'_>,
        g: &Guard,
        source: &str,
        t: &str,
        id: &str,
        patch: &Patch,
        if_match: Option<i64>,
        mut local: HashSet<(String, String)>,
        rejected: &mut Option<Rejection>,
    ) -> Result<Stored, ApiError> {
        let cur = visible_in(g, tx, t, id)?;
        g.may_write(t, Perms::UPDATE, Some(&cur))?;
        let mut doc = cur.json()?;
        patch.apply(&mut doc)?;
        check_resource(&doc, t, Some(id))?;
        self.intake(&mut doc, source, now_ms());
        g.may_file(tx, t, &doc)?;
        local.insert((t.to_string(), id.to_string()));
        let mut c = crate::governance::intake::check(
            &self.store,
            &self.checker,
            &g.filing_scope(),
            source,
            &[&doc],
            local,
            true,
        )?;
        let findings = c.findings.pop().unwrap_or_default();
        if hutong_quality::rejects(&findings) {
            *rejected = Some(Rejection {
                resource: doc,
                findings,
            });
            return Err(ApiError::of(
                Code::BusinessRule,
                "rejected by the intake rules",
            ));
        }
        let fp = c.fingerprints.pop().unwrap_or_default();
        let (s, _) = tx.update(t, id, doc, Some(if_match.unwrap_or(cur.version)))?;
        self.kept(tx, g, source, &s, &findings, &fp)?;
        Ok(s)
    }

    /// Deletes `t/id`: the deletion's version, or `None` when there was nothing to delete.
    pub(crate) fn delete_in(
        &self,
        tx: &mut Tx<'_>,
        g: &Guard,
        t: &str,
        id: &str,
        if_match: Option<i64>,
    ) -> Result<Option<Stored>, ApiError> {
        match tx.read(t, id)? {
            Some(cur) => g.may_write(t, Perms::DELETE, Some(&cur))?,
            None => g.may(t, Perms::DELETE)?,
        }
        crate::coordination::index::deleted(self, tx, t, id)?;
        if t == "Subscription" {
            crate::exchange::index::deleted(tx, id)?;
        }
        Ok(tx.delete(t, id, if_match)?)
    }

    /// Deletes the one resource `criteria` find (`None` when none does; more than one is a
    /// 412).
    pub(crate) fn conditional_delete_in(
        &self,
        tx: &mut Tx<'_>,
        g: &Guard,
        t: &str,
        criteria: &[(String, String)],
    ) -> Result<Option<Stored>, ApiError> {
        g.may(t, Perms::DELETE)?;
        match conditional_match(tx, t, criteria, &g.scope)? {
            None => Ok(None),
            Some(one) => {
                g.may_write(t, Perms::DELETE, Some(&one))?;
                crate::coordination::index::deleted(self, tx, t, &one.id)?;
                if t == "Subscription" {
                    crate::exchange::index::deleted(tx, &one.id)?;
                }
                Ok(tx.delete(t, &one.id, None)?)
            }
        }
    }

    /// A Task the platform's operations keep (a referral's) is refused to plain writes
    /// before its content is read, so that a refused write is not also quarantined. (The
    /// same check inside the transaction, in `check_owner`, holds for every path.)
    fn kept_by_operations(&self, t: &str, id: &str) -> Result<(), ApiError> {
        if t == "Task" && crate::coordination::index::is_referral_task_id(&self.store, id)? {
            return Err(ApiError::of(
                Code::Forbidden,
                "This Task is a referral's: it changes through Task/{id}/$referral (accept, reject, schedule, complete, cancel)",
            ));
        }
        Ok(())
    }

    /// What every accepted version leaves in its transaction besides itself: its intake
    /// findings and fingerprint, and the slot pool's index (for Slots, Schedules,
    /// Appointments and Organizations), whichever interaction wrote it.
    #[allow(clippy::too_many_arguments)]
    fn kept(
        &self,
        tx: &mut Tx<'_>,
        g: &Guard,
        source: &str,
        s: &Stored,
        findings: &[hutong_quality::Finding],
        fingerprint: &str,
    ) -> Result<(), ApiError> {
        self.keep(tx, source, s, findings, fingerprint)?;
        crate::exchange::index::written(tx, g, s)?;
        crate::coordination::index::written(self, tx, g, s)
    }

    /// What follows a committed write outside its transaction: an Appointment booked or
    /// cancelled changes the institution's access for the visit; a contract its centre's.
    pub(crate) fn after_commit(&self, g: &Guard, s: &Stored) -> Result<(), ApiError> {
        crate::consent::appointments::after_write(self, g, s)?;
        // A family-doctor contract's centre holds a standing grant while it is active.
        crate::coordination::standing::after_write(self, g, s)
    }

    /// Quarantines a rejected submission and returns the rejection to send: `at` locates
    /// the findings inside a Bundle.
    pub(crate) fn quarantine(
        &self,
        source: &str,
        method: &str,
        path: &str,
        body: &[u8],
        at: Option<&str>,
        findings: &[hutong_quality::Finding],
    ) -> ApiError {
        let located: Vec<(Option<String>, &hutong_quality::Finding)> =
            findings.iter().map(|f| (at.map(String::from), f)).collect();
        crate::governance::intake::rejected(&self.store, source, method, path, body, &located)
    }
}

/// The intake rules' verdict on a submission about to be written: recorded beside the
/// version in its transaction.
pub(crate) struct Submission<'a> {
    pub findings: &'a [hutong_quality::Finding],
    pub fingerprint: &'a str,
}

/// A result the intake rules rejected inside a write.
pub(crate) struct Rejection {
    pub resource: Value,
    pub findings: Vec<hutong_quality::Finding>,
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
            ApiError::of(
                Code::Unprocessable,
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
        return Err(ApiError::of(Code::Forbidden,
            "This Task is a work order: it changes through Task/{id}/$accept, $start, $resolve, $reject, $close, $reopen and $comment",
        ));
    }
    if t == "Task" && crate::coordination::index::is_referral_task(tx, id)? {
        return Err(ApiError::of(
            Code::Forbidden,
            "This Task is a referral's: it changes through Task/{id}/$referral (accept, reject, schedule, complete, cancel)",
        ));
    }
    if g.principal.kind == Kind::Platform {
        return g.may(t, Perms::UPDATE);
    }
    match tx.source_of(t, id)? {
        Some(src) => hutong_access::decision::may_write(g.asker(), t, Perms::UPDATE, Some(&src))
            .map_err(|r| ApiError::of(Code::Forbidden, r.0)),
        None => {
            g.may_write(t, Perms::CREATE, None)?;
            // A new id in another institution's namespace would be taken from it: its own
            // later writes there would be refused.
            let mine = g.principal.institution.as_deref();
            match engine.access.accounts.namespace_of(id) {
                Ok(Some(owner)) if Some(owner.as_str()) != mine => Err(ApiError::of(Code::Forbidden,
                    format!("The id {id} is in the namespace of {owner}: create resources under ids of your own (your namespace, a UUID, or POST for one the platform assigns)"),
                )),
                Ok(_) => Ok(()),
                Err(e) => Err(ApiError::of(Code::Internal, e.to_string())),
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
        _ => Err(ApiError::of(
            Code::MultipleMatches,
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
