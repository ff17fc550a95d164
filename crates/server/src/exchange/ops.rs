//! The Backport IG's operations on subscriptions, and the topic catalogue.

use hutong_access::principal::{Kind, Perms};
use hutong_exchange::notify;
use hutong_exchange::{ChannelKind, NotificationKind};
use hutong_fhir::date::{format_instant, now_ms};
use serde_json::{json, Value};

use super::deliver::{events_as, status_of};
use super::dispatch::{live, Live};
use crate::error::{ApiError, Code};
use crate::guard::Guard;
use crate::wire::{Req, Resp};
use crate::Engine;

/// The subscription `id` if `g` may see it: its owner (the same client or user — not a
/// colleague, whose reads differ) or the platform.
fn own(engine: &Engine, g: &Guard, id: &str) -> Result<Live, ApiError> {
    g.may("Subscription", Perms::READ)?;
    let Some(sub) = live(engine, Some(id))?.into_iter().next() else {
        return Err(ApiError::not_found(format!(
            "Subscription/{id} is not known"
        )));
    };
    let p = &g.principal;
    let mine = p.kind == Kind::Platform
        || (p.subject == sub.owner.subject
            && p.kind == sub.owner.kind
            && p.institution == sub.owner.institution);
    if !mine {
        return Err(g.hidden(&format!("Subscription/{id}")));
    }
    Ok(sub)
}

fn status_json(engine: &Engine, sub: &Live, kind: NotificationKind) -> Value {
    let base = engine.hub.base();
    let error = engine
        .store
        .query_admin(
            "SELECT last_error FROM ex_sub WHERE id = ?",
            &[hutong_store::sql::Val::Text(sub.id.clone())],
        )
        .ok()
        .and_then(|r| r.first().map(|r| r[0].text().to_string()))
        .filter(|e| !e.is_empty());
    notify::status(
        &status_of(&base, sub, error.as_deref()),
        kind,
        &[],
        sub.spec.channel.content,
    )
}

/// The subscriptions an operation names: the instance's, else `id` parameters (in the query,
/// comma-separated or repeated, or in a Parameters body).
fn ids_asked(req: &Req, id: Option<&str>) -> Vec<String> {
    if let Some(i) = id {
        return vec![i.to_string()];
    }
    let mut ids: Vec<String> = req
        .query
        .iter()
        .filter(|(k, _)| k == "id")
        .flat_map(|(_, v)| v.split(',').map(String::from))
        .collect();
    if let Ok(v) = serde_json::from_slice::<Value>(&req.body) {
        for p in v["parameter"].as_array().into_iter().flatten() {
            if p["name"] == "id" {
                if let Some(s) = p["valueId"].as_str().or(p["valueString"].as_str()) {
                    ids.push(s.to_string());
                }
            }
        }
    }
    ids
}

fn searchset(entries: Vec<Value>) -> Resp {
    Resp::json(
        200,
        json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(), "entry": entries}),
    )
}

/// `GET Subscription/{id}/$status` and `GET Subscription/$status?id=…`: a searchset of
/// SubscriptionStatus, one per subscription.
pub(crate) fn status(
    engine: &Engine,
    req: &Req,
    g: &Guard,
    id: Option<&str>,
) -> Result<Resp, ApiError> {
    g.act("subscription-status");
    let ids = ids_asked(req, id);
    let subs: Vec<Live> = if ids.is_empty() {
        live(engine, None)?
            .into_iter()
            .filter(|s| own(engine, g, &s.id).is_ok())
            .collect()
    } else {
        ids.iter()
            .map(|i| own(engine, g, i))
            .collect::<Result<_, _>>()?
    };
    let entries: Vec<Value> = subs
        .iter()
        .map(|s| json!({"resource": status_json(engine, s, NotificationKind::QueryStatus), "search": {"mode": "match"}}))
        .collect();
    Ok(searchset(entries))
}

/// `GET Subscription/{id}/$events?eventsSinceNumber=&eventsUntilNumber=&content=`: the
/// events a receiver missed, as a notification Bundle (`query-event`), read as the asker
/// reads.
pub(crate) fn events(engine: &Engine, req: &Req, g: &Guard, id: &str) -> Result<Resp, ApiError> {
    g.act("subscription-events");
    let mut sub = own(engine, g, id)?;
    let num = |name: &str| -> Result<Option<i64>, ApiError> {
        match req.query.iter().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, v)) => v.parse::<i64>().map(Some).map_err(|_| {
                ApiError::bad_request(format!("{name} is an event number")).with_expression(name)
            }),
        }
    };
    let since = num("eventsSinceNumber")?.unwrap_or(1).max(1);
    let until = num("eventsUntilNumber")?
        .unwrap_or(sub.events)
        .min(sub.events);
    if until - since >= 1000 {
        return Err(ApiError::of(
            Code::Unprocessable,
            "Ask for at most 1,000 events at a time (eventsSinceNumber … eventsUntilNumber)",
        ));
    }
    if let Some((_, c)) = req.query.iter().find(|(k, _)| k == "content") {
        sub.spec.channel.content = hutong_exchange::Content::parse(c).ok_or_else(|| {
            ApiError::bad_request("content is empty, id-only or full-resource")
                .with_expression("content")
        })?;
    }
    let (events, _) = if until >= since {
        events_as(engine, g, &sub, since - 1, until)?
    } else {
        (Vec::new(), 0)
    };
    let base = engine.hub.base();
    let b = notify::bundle(
        &status_of(&base, &sub, None),
        NotificationKind::QueryEvent,
        &events,
        sub.spec.channel.content,
        &uuid::Uuid::new_v4().to_string(),
        now_ms(),
    );
    Ok(Resp::json(200, b))
}

/// `GET Subscription/$topics`: the topics offered (R5 SubscriptionTopic resources; R4 has
/// no such type, so they are served as data here and named in the CapabilityStatement).
pub(crate) fn topics(g: &Guard) -> Result<Resp, ApiError> {
    g.act("subscription-topics");
    let entries: Vec<Value> = super::topics()
        .all()
        .iter()
        .map(|t| json!({"fullUrl": t.url, "resource": t.json, "search": {"mode": "match"}}))
        .collect();
    Ok(searchset(entries))
}

/// `POST Subscription/{id}/$get-ws-binding-token` (or at type level with `id`
/// parameters): a token to bind a websocket to the subscriptions.
pub(crate) fn ws_token(
    engine: &Engine,
    req: &Req,
    g: &Guard,
    id: Option<&str>,
) -> Result<Resp, ApiError> {
    g.act("subscription-ws-token");
    let ids = ids_asked(req, id);
    if ids.is_empty() {
        return Err(
            ApiError::bad_request("Name the subscriptions (id) to bind").with_expression("id")
        );
    }
    for i in &ids {
        let sub = own(engine, g, i)?;
        if sub.spec.channel.kind != ChannelKind::Websocket {
            return Err(ApiError::of(
                Code::Unprocessable,
                format!("Subscription/{i} is not a websocket subscription"),
            ));
        }
    }
    let (token, expires) = engine.hub.issue_token(ids.clone(), 3_600_000);
    let base = engine.hub.base();
    let ws = base
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1)
        .trim_end_matches("/fhir")
        .to_string()
        + "/subscriptions/ws";
    let mut p = vec![
        json!({"name": "token", "valueString": token}),
        json!({"name": "expiration", "valueDateTime": format_instant(expires)}),
    ];
    for i in &ids {
        p.push(json!({"name": "subscription", "valueString": format!("Subscription/{i}")}));
    }
    p.push(json!({"name": "websocket-url", "valueUrl": ws}));
    Ok(Resp::json(
        200,
        json!({"resourceType": "Parameters", "parameter": p}),
    ))
}
