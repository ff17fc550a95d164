//! Keeps `ex_sub` in step with the `Subscription` resources, in the writer's transaction:
//! a Subscription the platform cannot honour is refused with the element at fault, before
//! anything is stored.

use hutong_access::principal::{Kind, Perms, Principal};
use hutong_exchange::Spec;
use hutong_store::sql::Val;
use hutong_store::{Stored, Tx};
use serde_json::Value;

use crate::error::{ApiError, Code};
use crate::guard::Guard;
use crate::wire::parse_query_string;

/// Filters the platform answers itself (not search parameters of the type).
pub(crate) const RESIDENT_DISTRICT: &str = "resident-district";

/// A subscription's filter as the dispatcher runs it: the search parameters, and the
/// districts whose residents it is limited to.
pub(crate) struct Prepared {
    pub rtype: String,
    pub params: Vec<(String, String)>,
    pub districts: Vec<String>,
}

/// Splits a filter's query into search parameters and the platform's own filters, and
/// checks the search parameters against the type's definitions.
pub(crate) fn prepare(rtype: &str, query: &str) -> Result<Prepared, ApiError> {
    let mut params = Vec::new();
    let mut districts = Vec::new();
    for (k, v) in parse_query_string(query) {
        if k == RESIDENT_DISTRICT {
            for d in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
                districts.push(
                    d.parse::<u32>()
                        .ok()
                        .and_then(hutong_cn::division::name)
                        .map_or_else(|| d.to_string(), String::from),
                );
            }
        } else if k.starts_with('_')
            && matches!(
                k.as_str(),
                "_count"
                    | "_sort"
                    | "_include"
                    | "_revinclude"
                    | "_elements"
                    | "_summary"
                    | "_total"
            )
        {
            return Err(ApiError::of(
                Code::Unprocessable,
                format!("{k} is a result parameter, not a filter"),
            ));
        } else {
            params.push((k, v));
        }
    }
    if rtype != "*" {
        hutong_store::Query::parse(rtype, &params, true).map_err(|e| {
            ApiError::of(
                Code::Unprocessable,
                format!("The filter {rtype}?{query} cannot be searched: {e}"),
            )
        })?;
    } else if !params.is_empty() {
        return Err(ApiError::of(
            Code::Unprocessable,
            "A filter with search parameters names its resource type (Observation?code=…)",
        ));
    }
    Ok(Prepared {
        rtype: rtype.to_string(),
        params,
        districts,
    })
}

fn refused(e: hutong_exchange::SpecError) -> ApiError {
    ApiError::of(Code::Unprocessable, e.message).with_expression(e.expression)
}

/// After a Subscription version is written: checks it and records it (owner, parsed form,
/// status), keeping its event counters across updates.
pub(crate) fn written(tx: &mut Tx<'_>, g: &Guard, s: &Stored) -> Result<(), ApiError> {
    if s.rtype != "Subscription" {
        return Ok(());
    }
    if s.deleted {
        return deleted(tx, &s.id);
    }
    let v: Value = s.json()?;
    let spec = Spec::parse(&v, super::topics()).map_err(refused)?;
    for (i, f) in spec.filters.iter().enumerate() {
        if f.rtype != "*" {
            // A subscriber whose token cannot read a type cannot be told about it either.
            g.may(&f.rtype, Perms::READ).map_err(|e| {
                ApiError::of(
                    Code::Forbidden,
                    format!(
                        "{} (the filter on {} is not yours to use)",
                        e.message(),
                        f.rtype
                    ),
                )
                .with_expression(format!("Subscription._criteria.extension[{i}]"))
            })?;
        }
        prepare(&f.rtype, &f.query).map_err(|e| {
            e.with_expression(if spec.is_classic() {
                "Subscription.criteria".to_string()
            } else {
                format!("Subscription._criteria.extension[{i}]")
            })
        })?;
    }
    if spec.channel.kind == hutong_exchange::ChannelKind::RestHook {
        check_endpoint(spec.channel.endpoint.as_deref().unwrap_or(""))?;
    }
    let topic_owned = spec.topic.as_deref().is_some_and(|t| {
        t == hutong_exchange::topic::TASK_ASSIGNED || t == hutong_exchange::topic::FOLLOW_UP_DUE
    });
    if topic_owned {
        // Tasks assigned to the subscriber are matched over every Task: a chain or `_has`
        // would then ask about records it may not read.
        for (i, f) in spec.filters.iter().enumerate() {
            if prepare(&f.rtype, &f.query)?
                .params
                .iter()
                .any(|(k, _)| k.contains('.') || k.starts_with("_has"))
            {
                return Err(ApiError::of(
                    Code::Forbidden,
                    "Filters on assigned Tasks take the Task's own parameters, not chains or _has",
                )
                .with_expression(format!("Subscription._criteria.extension[{i}]")));
            }
        }
    }
    if topic_owned && g.principal.institution.is_none() {
        return Err(ApiError::of(
            Code::Forbidden,
            "Tasks are assigned to institutions: this topic is for an institution's systems and clinicians",
        )
        .with_expression("Subscription.criteria"));
    }
    let now = hutong_fhir::date::now_ms();
    let ended = spec
        .end
        .as_deref()
        .and_then(hutong_fhir::date::parse)
        .map(|r| r.lo)
        .is_some_and(|end| end <= now);
    let asked = if spec.status == "off" || ended {
        "off"
    } else {
        "requested"
    };
    // The resource itself is kept: the dispatcher reads it with the same parser.
    let spec_json = serde_json::to_string(&v).unwrap_or_default();
    let lock = tx.conn().dialect().lock_row();
    let existing = tx.conn().query(
        &format!("SELECT owner, status FROM ex_sub WHERE id = ?{lock}"),
        &[Val::Text(s.id.clone())],
    )?;
    match existing.first() {
        None => {
            let owner = serde_json::to_string(&*g.principal).unwrap_or_default();
            tx.conn().exec(
                "INSERT INTO ex_sub (id, owner, spec, status, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
                &[
                    Val::Text(s.id.clone()),
                    Val::Text(owner),
                    Val::Text(spec_json),
                    Val::Text(asked.into()),
                    Val::Int(now),
                    Val::Int(now),
                ],
            )?;
        }
        Some(r) => {
            // Still the owner's: the store lets only the submitting institution (or the
            // platform) write a new version; a platform write keeps the owner it had.
            let owner: Principal = serde_json::from_str(r[0].text())
                .map_err(|e| ApiError::of(Code::Internal, e.to_string()))?;
            let owner = if g.principal.kind == Kind::Platform {
                owner
            } else {
                (*g.principal).clone()
            };
            // Turned back on, or changed: a new handshake; turned off: nothing more flows.
            let status = if asked == "off" {
                "off"
            } else if r[1].text() == "active" && spec.status == "active" {
                "active"
            } else {
                "requested"
            };
            tx.conn().exec(
                "UPDATE ex_sub SET owner = ?, spec = ?, status = ?, failures = 0, next_try = 0, updated = ? WHERE id = ?",
                &[
                    Val::Text(serde_json::to_string(&owner).unwrap_or_default()),
                    Val::Text(spec_json),
                    Val::Text(status.into()),
                    Val::Int(now),
                    Val::Text(s.id.clone()),
                ],
            )?;
        }
    }
    Ok(())
}

/// A rest-hook endpoint must be a URL the platform can reach: refused early rather than
/// failing every delivery.
fn check_endpoint(url: &str) -> Result<(), ApiError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or("");
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains(' ') {
        return Err(ApiError::of(
            Code::Unprocessable,
            format!("The rest-hook endpoint {url} has no host"),
        )
        .with_expression("Subscription.channel.endpoint"));
    }
    Ok(())
}

/// A Subscription deleted: it stops, and its events go with it.
pub(crate) fn deleted(tx: &mut Tx<'_>, id: &str) -> Result<(), ApiError> {
    tx.conn()
        .exec("DELETE FROM ex_sub WHERE id = ?", &[Val::Text(id.into())])?;
    tx.conn().exec(
        "DELETE FROM ex_event WHERE sub = ?",
        &[Val::Text(id.into())],
    )?;
    Ok(())
}
