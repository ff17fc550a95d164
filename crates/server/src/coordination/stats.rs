//! `GET $coordination`: how the region's institutions work together, for the console — the
//! slot pool's use per institution and day (slots, booked, held, closed, the family doctors'
//! share, how much of it family doctors used and how much was released to everyone) and the referrals up and down by state.

use hutong_access::principal::Kind;
use hutong_fhir::date::{format_instant, now_ms};
use hutong_store::sql::Val;
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::error::{ApiError, Code};
use crate::guard::Guard;
use crate::wire::{Req, Resp};

const DAY: i64 = 86_400_000;
/// Beijing time: the days the figures are grouped by.
const UTC8: i64 = 8 * 3_600_000;

pub(crate) fn stats(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("coordination-stats");
    let p = &g.principal;
    let own = match p.kind {
        Kind::Platform => None,
        Kind::Operator
            if p.can(hutong_access::Capability::OverseeQuality) =>
        {
            None
        }
        Kind::System | Kind::Clinician => Some(p.institution.clone().unwrap_or_default()),
        _ => {
            return Err(ApiError::of(
                Code::Forbidden,
                "Coordination figures are for institutions (their own) and the platform's quality officers",
            ))
        }
    };
    let get = |k: &str| {
        req.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let day = |k: &str, default: i64| -> Result<i64, ApiError> {
        match get(k) {
            None => Ok(default),
            Some(v) => hutong_fhir::date::parse(v)
                .map(|r| if k == "to" { r.hi } else { r.lo })
                .ok_or_else(|| {
                    ApiError::of(Code::Value, format!("'{v}' is not a date ({k})"))
                        .with_expression(k.to_string())
                }),
        }
    };
    let now = now_ms();
    let from = day("from", (now + UTC8).div_euclid(DAY) * DAY - UTC8)?;
    let to = day("to", from + 14 * DAY)?;
    if to <= from {
        return Err(ApiError::of(Code::Value, "'to' must be after 'from'").with_expression("to"));
    }
    // The pool: an institution's own slots by its Organization; the platform's every one.
    let (org_filter, mut params) = match &own {
        Some(i) => (
            " AND org IN (SELECT org FROM co_qualified WHERE source = ?)",
            vec![Val::Text(i.clone())],
        ),
        None => ("", Vec::new()),
    };
    let release = now + engine.config.pool.release_ms;
    let mut all = vec![
        Val::Int(UTC8),
        Val::Int(DAY),
        Val::Int(release),
        Val::Int(from),
        Val::Int(to),
    ];
    all.append(&mut params);
    let rows = engine.store.query_admin(
        &format!(
            "SELECT org, (start_ms + ?) / ? AS d, COUNT(*), \
             SUM(CASE WHEN state = 'booked' THEN 1 ELSE 0 END), \
             SUM(CASE WHEN state = 'held' THEN 1 ELSE 0 END), \
             SUM(CASE WHEN state = 'closed' THEN 1 ELSE 0 END), \
             SUM(reserved), \
             SUM(CASE WHEN reserved = 1 AND state = 'booked' THEN 1 ELSE 0 END), \
             SUM(CASE WHEN reserved = 1 AND start_ms <= ? THEN 1 ELSE 0 END) \
             FROM co_slot WHERE start_ms >= ? AND start_ms < ?{org_filter} GROUP BY org, d ORDER BY org, d"
        ),
        &all,
    )?;
    let n = |v: &Val| match v {
        Val::Int(i) => *i,
        Val::Real(f) => *f as i64,
        _ => 0,
    };
    let pool: Vec<Value> = rows
        .iter()
        .map(|r| {
            let d = n(&r[1]);
            json!({"organization": format!("Organization/{}", r[0].text()),
                "day": format_instant(d * DAY).get(..10).unwrap_or("").to_string(),
                "slots": n(&r[2]), "booked": n(&r[3]), "held": n(&r[4]), "closed": n(&r[5]),
                "reserved": n(&r[6]), "reservedBooked": n(&r[7]), "released": n(&r[8])})
        })
        .collect();
    let (ref_filter, ref_params) = match &own {
        Some(i) => (
            " WHERE referrer = ? OR receiver = ?",
            vec![Val::Text(i.clone()), Val::Text(i.clone())],
        ),
        None => ("", Vec::new()),
    };
    let refs = engine.store.query_admin(
        &format!("SELECT direction, state, COUNT(*) FROM co_referral{ref_filter} GROUP BY direction, state ORDER BY direction, state"),
        &ref_params,
    )?;
    let referrals: Vec<Value> = refs
        .iter()
        .map(|r| json!({"direction": r[0].text(), "state": r[1].text(), "count": n(&r[2])}))
        .collect();
    Ok(Resp::json(
        200,
        json!({"from": format_instant(from), "to": format_instant(to), "pool": pool, "referrals": referrals}),
    ))
}
