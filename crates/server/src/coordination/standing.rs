//! The standing authorization a family-doctor contract gives its centre: one grant per
//! contract (`Consent/contract-{episode}`), in force while the contract is, which the
//! resident sees and may revoke like any standing grant.

use hutong_access::grants::{Grant, Grantee, Method, Status};
use hutong_fhir::date::now_ms;
use hutong_store::sql::Val;

use crate::engine::Engine;
use crate::error::ApiError;
use crate::guard::Guard;

/// The grant id of a contract.
pub fn grant_id(episode: &str) -> String {
    format!("contract-{episode}")
}

/// Brings the contract's grant in line with the contract (as indexed in `co_contract`):
/// active for its period while the contract is active, ended otherwise. Nothing to do when
/// it already is. `by` is who changed the contract, for the grant's record.
pub fn sync(engine: &Engine, episode: &str, by: &str) -> Result<(), ApiError> {
    let rows = engine.store.query_admin(
        "SELECT patient, institution, status, start_ms, end_ms FROM co_contract WHERE episode = ?",
        &[Val::Text(episode.into())],
    )?;
    let Some(r) = rows.first() else {
        return Ok(());
    };
    let (patient, inst, status, start, end) = (
        r[0].text().to_string(),
        r[1].text().to_string(),
        r[2].text().to_string(),
        r[3].int(),
        r[4].int(),
    );
    engine.matcher.sync(&engine.store)?;
    let Some(person) = engine
        .matcher
        .person_of(&engine.store, &format!("Patient/{patient}"))?
    else {
        return Ok(());
    };
    let id = grant_id(episode);
    let existing = engine
        .access
        .grants
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&id)
        .cloned();
    let now = now_ms();
    let active = status == "active" && (end == 0 || end > now);
    let grant = match (active, existing) {
        (true, Some(g)) if g.status == Status::Active && g.end == (end > 0).then_some(end) => {
            return Ok(())
        }
        // A resident who revoked the contract's access keeps it revoked.
        (true, Some(g)) if g.status == Status::Inactive && g.end.is_some_and(|e| e <= now) => {
            return Ok(())
        }
        (true, _) => Grant {
            id: id.clone(),
            person,
            patient,
            grantee: Grantee::Institution(inst.clone()),
            grantee_name: crate::consent::institution_name(engine, &inst),
            method: Method::Standing,
            status: Status::Active,
            categories: 0,
            start: start.min(now),
            end: (end > 0).then_some(end),
            requested_by: Some(by.to_string()),
            reason: Some(format!(
                "家庭医生签约 family-doctor contract EpisodeOfCare/{episode}"
            )),
            recorded: now,
        },
        (false, Some(mut g)) if g.status == Status::Active => {
            g.status = Status::Inactive;
            g.end = Some(now);
            g.recorded = now;
            g
        }
        (false, _) => return Ok(()),
    };
    let pg = Guard::platform(engine, "contract-grants", "grant");
    pg.note(format!("for EpisodeOfCare/{episode} changed by {by}"));
    crate::consent::save(engine, &pg, &grant, None)?;
    pg.finish(engine, 200, None);
    Ok(())
}

/// Every contract's grant in line (after a bulk load, which writes contracts without the
/// requests that would each bring their grant along). Returns how many contracts were
/// looked at.
pub fn sync_all(engine: &Engine) -> Result<usize, ApiError> {
    let rows = engine
        .store
        .query_admin("SELECT episode FROM co_contract", &[])?;
    for r in &rows {
        sync(engine, r[0].text(), "platform (contract load)")?;
    }
    Ok(rows.len())
}

/// After a contract is written through the REST API: its centre's standing grant follows.
pub(crate) fn after_write(
    engine: &Engine,
    g: &Guard,
    s: &hutong_store::Stored,
) -> Result<(), ApiError> {
    if s.rtype == "EpisodeOfCare" {
        sync(engine, &s.id, &g.principal.label())?;
    }
    Ok(())
}
