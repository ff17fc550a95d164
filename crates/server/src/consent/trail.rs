//! The audit trail as FHIR `AuditEvent`s — for auditors, and for residents about their own
//! record ("who viewed my record") — and its integrity: verification and signed checkpoints.

use crate::consent::acts_for;
use crate::consent::patients_of;
use crate::consent::person_json;
use crate::engine::Engine;
use crate::error::Code;
use crate::error::{forbidden, ApiError};
use crate::guard::Guard;
use crate::wire::check_id;
use crate::wire::Paging;
use crate::wire::{Body, BundleWriter, Req, Resp};
use hutong_access::principal::{Capability, Perms};
use serde_json::json;

fn audit_bundle(
    req: &Req,
    rows: Vec<hutong_store::AuditRow>,
    total: u64,
    path: &str,
    count: usize,
    offset: usize,
) -> Resp {
    let link = |off: usize| crate::wire::page_link(path, &req.query, count, off);
    let mut links = vec![("self", link(offset))];
    if offset + rows.len() < total as usize {
        links.push(("next", link(offset + count)));
    }
    if offset > 0 {
        links.push(("previous", link(offset.saturating_sub(count))));
    }
    let mut w = BundleWriter::new("searchset", Some(total), &links);
    for r in rows {
        let Some(e) = hutong_audit::Entry::parse(&r.entry) else {
            continue;
        };
        let ev = hutong_audit::event::to_audit_event(r.part, r.seq, &e);
        w.entry(
            json!({"fullUrl": format!("{}/AuditEvent/{}-{}", req.base, r.part, r.seq), "search": {"mode": "match"}}),
            Some(&serde_json::to_vec(&ev).unwrap_or_default()),
        );
    }
    Resp {
        status: 200,
        headers: Vec::new(),
        body: Body::Raw(w.finish()),
    }
}

fn paging(req: &Req) -> Result<(usize, usize, i64, i64), ApiError> {
    let Paging { count, offset } = Paging::parse(&req.query, Paging::LISTS)?;
    let (mut since, mut until) = (i64::MIN, i64::MAX);
    for (_, v) in req.query.iter().filter(|(k, _)| k == "date") {
        let (prefix, d) = match v.get(..2) {
            Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, &v[2..]),
            _ => ("eq", v.as_str()),
        };
        let r = hutong_fhir::date::parse(d)
            .ok_or_else(|| ApiError::bad_request(format!("Invalid date '{v}'")))?;
        match prefix {
            "ge" => since = since.max(r.lo),
            "gt" => since = since.max(r.hi),
            "le" => until = until.min(r.hi),
            "lt" => until = until.min(r.lo),
            _ => {
                since = since.max(r.lo);
                until = until.min(r.hi);
            }
        }
    }
    Ok((count, offset, since, until))
}

/// `Person/{id}/$access-history`: who read or changed this person's record, when, why and
/// from where, newest first — for the resident (and their proxy), the privacy officer and
/// auditors. Break-glass accesses are tagged.
pub fn access_history(
    engine: &Engine,
    req: &Req,
    g: &Guard,
    person: &str,
) -> Result<Resp, ApiError> {
    g.act("access-history");
    check_id(person)?;
    let allowed = acts_for(engine, g, person) || g.principal.can(Capability::ReadAuditTrail);
    if !allowed {
        return Err(forbidden(
            "The access history of a record is for its resident, the privacy officer and auditors",
        ));
    }
    g.on_behalf_of(person);
    person_json(engine, person)?;
    let shards: Vec<i64> = patients_of(engine, person)?
        .iter()
        .map(|p| hutong_store::shard_of(p))
        .collect();
    // What is about to be written (this very request) is not waited for; earlier accesses are.
    engine.audit.flush(std::time::Duration::from_secs(2));
    let (count, offset, since, until) = paging(req)?;
    let (rows, total) = engine
        .store
        .audit_about(Some(&shards), since, until, count, offset)?;
    Ok(audit_bundle(
        req,
        rows,
        total,
        &format!("{}/Person/{person}/$access-history", req.base),
        count,
        offset,
    ))
}

fn auditor(g: &Guard) -> Result<(), ApiError> {
    if g.principal.can(Capability::ReadAuditTrail) {
        Ok(())
    } else {
        Err(forbidden(
            "The audit trail is for auditors and the privacy officer",
        ))
    }
}

/// `GET AuditEvent[?date=…&patient=Patient/x&_count&_offset]`, `GET AuditEvent/{id}` and
/// `GET AuditEvent/$verify`: the trail for auditors.
pub fn audit_events(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("audit");
    auditor(g)?;
    g.may("AuditEvent", Perms::READ)?;
    engine.audit.flush(std::time::Duration::from_secs(2));
    match req.segments.get(1).map(String::as_str) {
        Some("$verify") => verify_trail(engine),
        Some(id) => {
            let (part, seq) = hutong_audit::event::parse_id(id)
                .ok_or_else(|| ApiError::not_found(format!("AuditEvent/{id} is not known")))?;
            let row = engine
                .store
                .audit_row(part, seq)?
                .ok_or_else(|| ApiError::not_found(format!("AuditEvent/{id} is not known")))?;
            let e = hutong_audit::Entry::parse(&row.entry)
                .ok_or_else(|| ApiError::of(Code::Internal, "The audit entry cannot be read"))?;
            Ok(Resp::json(
                200,
                hutong_audit::event::to_audit_event(part, seq, &e),
            ))
        }
        None => {
            let (count, offset, since, until) = paging(req)?;
            let mut shards: Option<Vec<i64>> = None;
            for (k, v) in &req.query {
                if k == "patient" {
                    let id = v.strip_prefix("Patient/").unwrap_or(v);
                    shards
                        .get_or_insert_with(Vec::new)
                        .push(hutong_store::shard_of(id));
                }
            }
            let (rows, total) =
                engine
                    .store
                    .audit_about(shards.as_deref(), since, until, count, offset)?;
            Ok(audit_bundle(
                req,
                rows,
                total,
                &format!("{}/AuditEvent", req.base),
                count,
                offset,
            ))
        }
    }
}

/// Verifies the audit trail with the keyring's public keys.
pub fn verify_report(engine: &Engine) -> Result<hutong_audit::verify::Report, ApiError> {
    let keys = engine.access.keys.clone();
    let check = move |kid: &str, msg: &[u8], sig: &[u8]| {
        let k = keys.read().unwrap_or_else(|e| e.into_inner());
        k.signing_key(kid).is_some_and(|key| {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key.public())
                .verify(msg, sig)
                .is_ok()
        })
    };
    Ok(hutong_audit::verify::verify(&engine.store, &check)?)
}

/// Signs a checkpoint of every partition that moved.
pub fn checkpoint(engine: &Engine) -> Result<usize, ApiError> {
    checkpoint_store(&engine.store, &engine.access.keys)
}

/// [`checkpoint`] on a store and keyring (commands that open no engine).
pub fn checkpoint_store(
    store: &hutong_store::Store,
    keys: &std::sync::Arc<std::sync::RwLock<hutong_access::Keyring>>,
) -> Result<usize, ApiError> {
    let keys = keys.clone();
    let sign = move |msg: &[u8]| {
        let k = keys.read().unwrap_or_else(|e| e.into_inner());
        let key = k.signing();
        (key.kid.clone(), key.pair.sign(msg).as_ref().to_vec())
    };
    Ok(hutong_audit::checkpoint::run(store, &sign)?)
}

fn verify_trail(engine: &Engine) -> Result<Resp, ApiError> {
    let r = verify_report(engine)?;
    let mut params = vec![
        json!({"name": "intact", "valueBoolean": r.intact()}),
        json!({"name": "entries", "valueInteger": r.entries}),
        json!({"name": "partitions", "valueInteger": r.partitions}),
        json!({"name": "checkpoints", "valueInteger": r.checkpoints}),
        json!({"name": "unsigned", "valueInteger": r.unsigned}),
    ];
    for p in &r.problems {
        params.push(json!({"name": "problem", "valueString": p.to_string()}));
    }
    Ok(Resp::json(
        200,
        json!({"resourceType": "Parameters", "parameter": params}),
    ))
}
