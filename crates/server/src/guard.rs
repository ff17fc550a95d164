//! The access decision as a request meets it: one [`Guard`] per request, made before the
//! request is dispatched, holding who is asking, the store scope the decision gives them and
//! the request's audit entry.
//!
//! Every read of the store on behalf of a request passes `guard.scope`; every resource that
//! leaves in a response passes [`Guard::release`], which masks identity data as the decision
//! says and records the resource (and whose record it is) in the audit entry; every write
//! passes [`Guard::may_write`] and runs through [`Guard::write`], which commits the audit
//! entry with the change. When the request ends, [`Guard::finish`] records the entry of a
//! request that wrote nothing — reads, refusals, failures.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use hutong_access::principal::{Kind, Perms, Principal};
use hutong_access::{decision, Asker, View};
use hutong_audit::{Entry, Who};
use hutong_store::{Scope, Stored, Tx};

use crate::engine::Engine;
use crate::error::ApiError;
use crate::error::Code;

/// A request's view of the access decision and its audit entry.
pub struct Guard {
    pub principal: Arc<Principal>,
    /// A reason the requester recorded (`X-Hutong-Reason`): operators need one to read
    /// clinical content; it is kept in the audit entry either way.
    pub reason: Option<String>,
    pub scope: Scope,
    entry: Mutex<Entry>,
    committed: AtomicBool,
}

/// The audit `Who` of a principal.
pub fn who(p: &Principal) -> Who {
    Who {
        kind: p.kind.as_str().to_string(),
        subject: p.subject.clone(),
        name: p.name.clone(),
        institution: p.institution.clone(),
        practitioner: p.practitioner.clone(),
        person: p.person.clone(),
        roles: p.roles.iter().map(|r| r.as_str().to_string()).collect(),
    }
}

impl Guard {
    /// The guard of a request by `principal`, its scope decided now.
    pub fn new(
        engine: &Engine,
        principal: Arc<Principal>,
        reason: Option<String>,
        from: Option<String>,
        request: String,
    ) -> Guard {
        let scope = {
            let asker = Asker {
                principal: &principal,
                reason: reason.as_deref(),
            };
            let (dir, generation) = engine.matcher.directory();
            engine.access.scope(asker, &dir, generation)
        };
        let entry = Entry {
            ts: hutong_fhir::date::now_ms(),
            action: String::new(),
            outcome: 0,
            who: who(&principal),
            on_behalf_of: None,
            purpose: purpose_of(&principal, reason.as_deref()).map(String::from),
            reason: reason.clone(),
            break_glass: false,
            from,
            request,
            entities: Vec::new(),
            unlisted: 0,
            detail: None,
            subjects: Vec::new(),
        };
        Guard {
            principal,
            reason,
            scope,
            entry: Mutex::new(entry),
            committed: AtomicBool::new(false),
        }
    }

    /// The guard of a request another node of the hierarchy makes on behalf of one of its
    /// clinicians, under the resident's consent that node recorded and vouches for (see
    /// [`hutong_access::Access::vouched_scope`]): the same decision, the same release and
    /// audit, over that consent alone.
    pub fn vouched(
        engine: &Engine,
        principal: Arc<Principal>,
        grant: hutong_access::Grant,
        from: Option<String>,
        request: String,
    ) -> Guard {
        let mut g = Guard::new(engine, principal, None, from, request);
        let (dir, _) = engine.matcher.directory();
        g.scope = engine.access.vouched_scope(g.asker(), grant, &dir);
        g
    }

    /// A guard for the platform's own work (background jobs, the command line).
    pub fn platform(engine: &Engine, who: &str, action: &str) -> Guard {
        let g = Guard::new(
            engine,
            Arc::new(Principal::platform(who)),
            None,
            None,
            action.to_string(),
        );
        g.act(action);
        g
    }

    pub fn asker(&self) -> Asker<'_> {
        Asker {
            principal: &self.principal,
            reason: self.reason.as_deref(),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Entry) -> T) -> T {
        f(&mut self.entry.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Names the act being audited (`read`, `search`, `create`…).
    pub fn act(&self, action: &str) {
        self.with(|e| e.action = action.to_string());
    }

    pub fn action(&self) -> String {
        self.with(|e| e.action.clone())
    }

    /// Adds to the entry's detail.
    pub fn note(&self, detail: impl Into<String>) {
        let d = detail.into();
        self.with(|e| {
            e.detail = Some(match e.detail.take() {
                Some(x) => format!("{x}; {d}"),
                None => d,
            })
        });
    }

    /// Marks the entry as break-glass access.
    pub fn break_glass(&self, reason: &str) {
        self.with(|e| {
            e.break_glass = true;
            e.purpose = Some("ETREAT".into());
            e.reason = Some(reason.to_string());
        });
    }

    /// Records that the request concerns a person's record (residents, proxies, person
    /// operations).
    pub fn on_behalf_of(&self, person: &str) {
        self.with(|e| e.on_behalf_of = Some(person.to_string()));
    }

    /// The person the request acts for, when the platform acts on someone's behalf.
    pub fn acting_for(&self) -> Option<String> {
        self.with(|e| e.on_behalf_of.clone())
    }

    /// Records an entity the request touched without returning it (a person acted on).
    pub fn touch(&self, entity: String, shard: i64) {
        self.touch_with(|| entity, shard);
    }

    /// Records an entity, naming it only if the audit entry will list it.
    fn touch_with(&self, entity: impl FnOnce() -> String, shard: i64) {
        self.with(|e| {
            e.add_entity(entity);
            // A page of one record is one shard over and over: kept once in a row.
            if shard != 0 && e.subjects.last() != Some(&shard) {
                e.subjects.push(shard);
            }
        });
    }

    /// The identity view the decision gives this reader on a resource from `source`.
    pub fn view(&self, source: &str) -> View {
        decision::view(self.asker(), source)
    }

    /// The bytes of a stored resource as this reader may see them, recorded in the audit
    /// entry. Every resource in a response goes through here.
    pub fn release<'a>(&self, s: &'a Stored) -> std::borrow::Cow<'a, [u8]> {
        self.touch_with(
            || format!("{}/{}/_history/{}", s.rtype, s.id, s.version),
            s.shard,
        );
        // The resident's own restriction lives beside the body (it survives the source's new
        // versions); readers see it as a security label.
        let restricted = s.sens & hutong_fhir::security::RESIDENT_RESTRICTED != 0;
        let identity = hutong_access::mask::IDENTITY_TYPES.contains(&s.rtype.as_str());
        let view = if identity {
            self.view(&s.source)
        } else {
            View::Full
        };
        // A subscription's channel headers and signing secret are credentials: never shown.
        let subscription = s.rtype == "Subscription" && !s.deleted;
        if view == View::Full && !restricted && !subscription {
            return std::borrow::Cow::Borrowed(&s.body);
        }
        std::borrow::Cow::Owned(match serde_json::from_slice::<serde_json::Value>(&s.body) {
            Ok(mut v) => {
                if view != View::Full {
                    hutong_access::mask::apply(&s.rtype, &mut v, view);
                }
                if subscription {
                    hutong_exchange::mask_secrets(&mut v);
                }
                if restricted {
                    hutong_fhir::security::add_resident_restricted_label(&mut v);
                }
                serde_json::to_vec(&v).unwrap_or_default()
            }
            Err(_) => Vec::new(),
        })
    }

    /// Whether the token allows `perm` on `rtype` (403 otherwise).
    pub fn may(&self, rtype: &str, perm: Perms) -> Result<(), ApiError> {
        decision::may(self.asker(), rtype, perm).map_err(forbidden)
    }

    /// Whether this requester may write `rtype` over `existing` (403 otherwise).
    pub fn may_write(
        &self,
        rtype: &str,
        perm: Perms,
        existing: Option<&Stored>,
    ) -> Result<(), ApiError> {
        // Work orders move through their lifecycle operations, which check who may do what.
        if rtype == "Task" {
            if let Some(s) = existing {
                if s.json()
                    .is_ok_and(|v| crate::governance::orders::is_work_order(&v))
                {
                    return Err(forbidden(hutong_access::Refusal(
                        "This Task is a work order: it changes through Task/{id}/$accept, $start, $resolve, $reject, $close, $reopen and $comment".into(),
                    )));
                }
            }
        }
        decision::may_write(
            self.asker(),
            rtype,
            perm,
            existing.map(|s| s.source.as_str()),
        )
        .map_err(forbidden)
    }

    /// Whether this requester may file `v` where its content puts it. A record about a
    /// patient joins that resident's record, so writing it needs what reading the patient
    /// needs (the writer's own registration of them, or the resident's grant): otherwise an
    /// institution could add to — or, by a wrong subject, pollute — a record it may not see.
    /// A patient not on the platform (yet) is left to the reference rule.
    pub fn may_file(
        &self,
        tx: &mut Tx<'_>,
        rtype: &str,
        v: &serde_json::Value,
    ) -> Result<(), ApiError> {
        self.may_file_with(rtype, v, |id| Ok(tx.read("Patient", id)?))
    }

    /// [`Guard::may_file`] for a version prepared outside the writer's turn: its stored form
    /// is read back only where the answer can depend on it (a Task, or a requester who may
    /// not read every record).
    pub fn may_file_prepared(
        &self,
        tx: &mut Tx<'_>,
        p: &hutong_store::Prepared,
    ) -> Result<(), ApiError> {
        if p.rtype != "Task" && (self.principal.booking || self.scope.is_all()) {
            return Ok(());
        }
        let v: serde_json::Value = serde_json::from_slice(p.body()).map_err(|e| {
            ApiError::of(
                Code::Internal,
                format!("a prepared version is not JSON: {e}"),
            )
        })?;
        self.may_file(tx, &p.rtype, &v)
    }

    /// [`Guard::may_file`] before the write's transaction, from the store (so that a write
    /// refused for this is refused before the intake rules run and quarantine it).
    pub fn may_file_now(
        &self,
        store: &hutong_store::Store,
        rtype: &str,
        v: &serde_json::Value,
    ) -> Result<(), ApiError> {
        self.may_file_with(rtype, v, |id| {
            Ok(store
                .read("Patient", id, &hutong_store::Scope::All)?
                .found())
        })
    }

    fn may_file_with(
        &self,
        rtype: &str,
        v: &serde_json::Value,
        patient_of: impl FnOnce(&str) -> Result<Option<Stored>, ApiError>,
    ) -> Result<(), ApiError> {
        if rtype == "Task" && crate::governance::orders::is_work_order(v) {
            return Err(crate::error::forbidden(
                crate::governance::orders::NOT_WRITTEN,
            ));
        }
        let scope = self.filing_scope();
        if scope.is_all() || rtype == "Patient" {
            return Ok(());
        }
        let Some(patient) = hutong_fhir::index::content_owner(rtype, v) else {
            return Ok(());
        };
        match patient_of(&patient)? {
            Some(p) if !p.deleted && !scope.permits_stored(&p) => Err(ApiError::of(
                Code::Forbidden,
                format!(
                    "Patient/{patient} is not in the records you are authorized to read, so you \
                     may not add to their record ({rtype} filed under them). Register the \
                     patient as your own, or ask the resident for authorization \
                     (Person/{{id}}/$request-access)."
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The records this requester's submissions may refer to and be filed under: what it
    /// may read — but the appointment platform (a booking client) books for every
    /// resident, so its Appointments may name anyone (its scopes keep it to Appointments).
    pub fn filing_scope(&self) -> Scope {
        if self.principal.booking {
            Scope::All
        } else {
            self.scope.clone()
        }
    }

    /// A read the scope hides: 403, naming the way in.
    pub fn hidden(&self, what: &str) -> ApiError {
        let how = match self.principal.kind {
            Kind::System | Kind::Clinician => {
                " Ask the resident for authorization (Person/{id}/$request-access), or declare an emergency ($break-glass)."
            }
            Kind::Operator => " Operators read clinical content only with a recorded reason (X-Hutong-Reason).",
            _ => "",
        };
        ApiError::of(
            Code::Forbidden,
            format!("{what} is not in the records you are authorized to read.{how}"),
        )
    }

    /// A snapshot of the entry (for a write transaction's hook).
    pub fn entry(&self) -> Entry {
        self.with(|e| e.clone())
    }

    /// Runs a write transaction whose audit entry is this request's entry plus what it wrote.
    pub fn write<R>(
        &self,
        engine: &Engine,
        f: impl FnMut(&mut Tx<'_>) -> Result<R, ApiError>,
    ) -> Result<R, ApiError> {
        let mut e = self.entry();
        e.outcome = 200;
        let r = engine.store.write(&e.hook(), f)?;
        self.committed.store(true, Ordering::SeqCst);
        Ok(r)
    }

    /// Notes that a write outside [`Guard::write`] committed this request's entry.
    pub fn committed(&self) {
        self.committed.store(true, Ordering::SeqCst);
    }

    /// Ends the request: records its entry with the outcome, unless a write already
    /// committed it.
    pub fn finish(&self, engine: &Engine, status: u16, detail: Option<String>) {
        if self.committed.load(Ordering::SeqCst) {
            return;
        }
        let mut e = self.with(std::mem::take);
        e.outcome = status;
        if e.action.is_empty() {
            e.action = "request".into();
        }
        if let Some(d) = detail {
            e.detail = Some(match e.detail.take() {
                Some(x) => format!("{x}; {d}"),
                None => d,
            });
        }
        engine.audit.record(e);
    }
}

/// The purpose of use a principal acts under, for the audit entry.
fn purpose_of(p: &Principal, reason: Option<&str>) -> Option<&'static str> {
    match p.kind {
        Kind::System | Kind::Clinician => Some("TREAT"),
        Kind::Resident => Some("PATRQT"),
        Kind::Operator if reason.is_some() => Some("HOPERAT"),
        Kind::Operator => Some("HOPERAT"),
        Kind::Platform => Some("HSYSADMIN"),
    }
}

fn forbidden(r: hutong_access::Refusal) -> ApiError {
    crate::error::forbidden(r.0)
}
