//! Downward (自动下发): a district node asks its upstream to push down the records of its
//! residents that were produced elsewhere — by the subscriptions any receiver could make.
//!
//! At start, and again every few minutes, the node makes sure that the upstream holds its
//! push `Subscription`: `record-changed`, one filter per pushed category, each limited to
//! `resident-district` = the node's district; full resources, rest-hook to this node's
//! `/node/notify`, signed with a secret this node keeps. One subscription, so that its
//! events keep the upstream's commit order across categories (a resident before the
//! diagnosis that refers to her). The upstream numbers, retries and
//! delivers them like any subscription; [`crate::exchange::links::notified`] checks the
//! signature and applies what arrives as copies pushed down, once each.

use std::sync::Arc;
use std::time::Duration;

use hutong_exchange::ig;
use hutong_exchange::node::Node;
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::wire::{Req, Resp};
use hutong_access::principal::Principal;

/// The store's `meta` key of the push secret.
const SECRET_KEY: &str = "node-push-secret";
/// The peer name of the upstream, for what it pushes down, until it said its node id.
const UPSTREAM: &str = "upstream";
/// The store's `meta` key of the upstream's node id (what a copy pushed down is routed by).
const UPSTREAM_KEY: &str = "node-upstream-id";

/// The upstream's node id, as it said (`$node`) when this node first asked it for pushes.
pub(crate) fn upstream_id(engine: &Engine) -> String {
    engine
        .store
        .meta(UPSTREAM_KEY)
        .ok()
        .flatten()
        .unwrap_or_else(|| UPSTREAM.to_string())
}

/// The secret the upstream signs this node's pushes with, when this node takes pushes.
pub(crate) fn secret(engine: &Engine) -> Option<String> {
    engine.hub.node().filter(|n| n.upstream.is_some())?;
    engine.store.meta(SECRET_KEY).ok().flatten()
}

fn ensure_secret(engine: &Engine) -> Result<String, hutong_store::StoreError> {
    if let Some(s) = engine.store.meta(SECRET_KEY)? {
        return Ok(s);
    }
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| {
        hutong_store::StoreError::Invalid("no randomness for the push secret".into())
    })?;
    let s: String = b.iter().map(|x| format!("{x:02x}")).collect();
    engine.store.set_meta(SECRET_KEY, &s)?;
    Ok(s)
}

/// The id of the push subscription of `node` at its upstream.
fn sub_id(node: &Node) -> String {
    format!("{}-push", node.id)
}

/// The filter of a pushed category for the node's district.
fn filter(category: &str, district: &str) -> String {
    let sep = if category.contains('?') { '&' } else { '?' };
    format!("{category}{sep}resident-district={district}")
}

/// The push subscription, as this node asks the upstream for it.
pub fn subscription(node: &Node, endpoint: &str, secret: &str) -> Value {
    let district = node.district.as_deref().unwrap_or("");
    let filters: Vec<Value> = node
        .push
        .iter()
        .map(|c| json!({"url": ig::FILTER_CRITERIA, "valueString": filter(c, district)}))
        .collect();
    json!({
        "resourceType": "Subscription",
        "id": sub_id(node),
        "meta": {"profile": [ig::SUBSCRIPTION_PROFILE]},
        "status": "requested",
        "reason": format!("自动下发：{district} 辖区居民的 {} 记录 (pushed down to district node {})",
                          node.push.join("、"), node.id),
        "criteria": hutong_exchange::topic::RECORD_CHANGED,
        "_criteria": {"extension": filters},
        "extension": [{"url": ig::SIGNING_SECRET, "valueString": secret}],
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": ig::PAYLOAD_CONTENT, "valueCode": "full-resource"}]}
        }
    })
}

/// The identity subscription: every `Person` the upstream's registry writes, so that its
/// merges and splits reach this node (see [`identity_from_upstream`]).
pub fn identity_subscription(node: &Node, endpoint: &str, secret: &str) -> Value {
    json!({
        "resourceType": "Subscription",
        "id": format!("{}-identity", node.id),
        "meta": {"profile": [ig::SUBSCRIPTION_PROFILE]},
        "status": "requested",
        "reason": format!("身份决定下发：上级平台的合并与拆分 (identity decisions sent down to node {})", node.id),
        "criteria": hutong_exchange::topic::RECORD_CHANGED,
        "_criteria": {"extension": [{"url": ig::FILTER_CRITERIA, "valueString": "Person"}]},
        "extension": [{"url": ig::SIGNING_SECRET, "valueString": secret}],
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": ig::PAYLOAD_CONTENT, "valueCode": "full-resource"}]}
        }
    })
}

/// Whether the upstream's copy already asks for what `want` asks (its secret is masked on
/// reads, and this node never changes it once made).
fn same(have: &Value, want: &Value) -> bool {
    have["criteria"] == want["criteria"]
        && have["_criteria"] == want["_criteria"]
        && have["channel"]["endpoint"] == want["channel"]["endpoint"]
        && matches!(have["status"].as_str(), Some("requested" | "active"))
}

/// Makes sure the push subscription is in place at the upstream.
async fn ensure(engine: &Engine, node: &Node) -> Result<(), String> {
    let up = node.upstream.as_ref().expect("an upstream");
    let e = engine.clone();
    let secret = tokio::task::spawn_blocking(move || ensure_secret(&e))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("keeping the push secret failed: {e}"))?;
    let base = engine.hub.base();
    let endpoint = format!("{}/node/notify", base.trim_end_matches("/fhir"));
    let (token, _) = crate::exchange::upward::token(engine, node).await?;
    let client = engine.hub.client();
    // The store is read on a blocking thread (PostgreSQL's client blocks).
    let e = engine.clone();
    let known = tokio::task::spawn_blocking(move || e.store.meta(UPSTREAM_KEY))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading the upstream's id failed: {e}"))?;
    if known.is_none() {
        let about: Value = client
            .get(format!("{}/$node", up.url))
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| format!("the upstream did not answer: {e}"))?
            .json()
            .await
            .map_err(|e| format!("the upstream's $node is not JSON: {e}"))?;
        let id = about["parameter"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "node")
            .and_then(|p| p["valueString"].as_str())
            .ok_or("the upstream does not say which node it is ($node)")?
            .to_string();
        let e = engine.clone();
        tokio::task::spawn_blocking(move || e.store.set_meta(UPSTREAM_KEY, &id))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("keeping the upstream's id failed: {e}"))?;
    }
    let mut wanted = vec![identity_subscription(node, &endpoint, &secret)];
    if node.takes_pushes() {
        wanted.push(subscription(node, &endpoint, &secret));
    }
    for want in wanted {
        let id = want["id"].as_str().unwrap_or("").to_string();
        let url = format!("{}/Subscription/{id}", up.url);
        let have = client
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .map_err(|e| format!("the upstream did not answer: {e}"))?;
        if have.status().as_u16() == 200 {
            let v: Value = have.json().await.unwrap_or(Value::Null);
            if same(&v, &want) {
                continue;
            }
        }
        let r = client
            .put(&url)
            .bearer_auth(&token)
            .header("Content-Type", "application/fhir+json")
            .json(&want)
            .send()
            .await
            .map_err(|e| format!("the upstream did not answer: {e}"))?;
        if !r.status().is_success() {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            return Err(format!(
                "the upstream refused the subscription {id} ({status}): {}",
                text.chars().take(300).collect::<String>()
            ));
        }
    }
    Ok(())
}

/// Keeps the push subscriptions in place until `stop` is set: tried until the upstream
/// takes them, then checked every five minutes (an upstream restored from a backup, or its
/// operator's deletion, is noticed).
pub fn start(engine: Engine, node: Arc<Node>, stop: Arc<std::sync::atomic::AtomicBool>) {
    tokio::spawn(async move {
        let mut failures = 0u32;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let wait = match ensure(&engine, &node).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!("The upstream holds this node's push subscriptions again.");
                    }
                    failures = 0;
                    300_000
                }
                Err(msg) => {
                    if failures == 0 {
                        tracing::warn!("Asking the upstream for pushes failed; will retry: {msg}");
                    }
                    failures = failures.saturating_add(1);
                    hutong_exchange::backoff::delay_ms(failures, 1).min(30_000)
                }
            };
            let until = std::time::Instant::now() + Duration::from_millis(wait as u64);
            while std::time::Instant::now() < until
                && !stop.load(std::sync::atomic::Ordering::Relaxed)
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
}

/// `POST /node/notify`: the upstream's notifications for this district node's push
/// subscriptions, signed with the secret this node gave them. What they carry is applied
/// as a copy pushed down; an answer other than 200 makes the upstream send it again.
pub(crate) fn notified(
    engine: &Engine,
    signature: Option<&str>,
    from: Option<String>,
    body: &[u8],
) -> Resp {
    let refuse = |status: u16, msg: &str| {
        Resp::json(
            status,
            hutong_fhir::Outcome::error(hutong_fhir::IssueCode::Security, msg).to_json(),
        )
    };
    let Some(secret) = secret(engine) else {
        return refuse(404, "This node takes no pushes from an upstream");
    };
    if !signature.is_some_and(|s| hutong_exchange::notify::verify(&secret, body, s)) {
        return refuse(
            401,
            "The notification's signature (X-Hutong-Signature) does not match this node's push secret",
        );
    }
    let bundle: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return refuse(400, &format!("The notification is not JSON: {e}")),
    };
    let items = match hutong_exchange::node::incoming(&bundle) {
        Ok(x) => x,
        Err(m) => return refuse(400, &m),
    };
    if items.is_empty() {
        return Resp::json(
            200,
            json!({"resourceType": "Bundle", "type": "batch-response"}),
        );
    }
    let req = Req {
        method: "POST".into(),
        segments: Vec::new(),
        query: Vec::new(),
        headers: Default::default(),
        body: Vec::new(),
        base: engine.hub.base(),
        source: String::new(),
        import_key: None,
        principal: Arc::new(Principal::platform("node:upstream")),
        reason: None,
        from,
    };
    let peer = upstream_id(engine);
    // The upstream registry's persons say how it groups Patients; the rest are records.
    let (persons, records): (Vec<_>, Vec<_>) = items
        .into_iter()
        .partition(|i| matches!(i, Ok(inc) if inc.rtype == "Person"));
    for p in persons.into_iter().flatten() {
        if let Some(v) = &p.resource {
            if let Err(e) = identity_from_upstream(engine, &peer, v) {
                // Passing (the store busy): the upstream sends it again.
                return refuse(503, e.message());
            }
        }
    }
    let out = crate::exchange::links::apply(engine, &req, &peer, records, true);
    // A version that could not be written for a passing reason (the store busy) is sent
    // again; one the rules refuse is not (it would be refused again).
    let transient = out["entry"].as_array().into_iter().flatten().any(|e| {
        e["response"]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with('5'))
    });
    Resp::json(if transient { 503 } else { 200 }, out)
}

/// Applies how the upstream groups Patients into persons, from one `Person` version its
/// registry wrote: the Patients it links that this node holds become one person here too
/// (a person here made only of them is merged, others are moved), and those of that person
/// the upstream has placed with another person are split off. Patients only this node
/// knows stay where its own registry put them. Ids are the same at every level, so the
/// upstream's `Patient/x` is this node's.
pub(crate) fn identity_from_upstream(
    engine: &Engine,
    upstream: &str,
    person: &Value,
) -> Result<(), crate::error::ApiError> {
    use hutong_store::sql::Val;
    let Some(u) = person["id"].as_str() else {
        return Ok(());
    };
    let links: Vec<String> = if person["active"] == false {
        Vec::new()
    } else {
        person["link"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["target"]["reference"].as_str())
            .filter_map(|r| {
                r.rsplit_once("Patient/")
                    .map(|(_, id)| format!("Patient/{id}"))
            })
            .collect()
    };
    engine.store.exec_admin(
        "DELETE FROM ex_upperson WHERE person = ?",
        &[Val::Text(u.into())],
    )?;
    for p in &links {
        engine.store.exec_admin(
            "INSERT INTO ex_upperson (patient, person) VALUES (?, ?) \
             ON CONFLICT (patient) DO UPDATE SET person = excluded.person",
            &[Val::Text(p.clone()), Val::Text(u.into())],
        )?;
    }
    let Some(first) = links.first() else {
        return Ok(());
    };
    // Who the person here holds that the upstream has put with someone else.
    let mut elsewhere = std::collections::HashSet::new();
    if let Some(here) = engine.matcher.person_of(&engine.store, first)? {
        for p in engine.matcher.patients_of(&engine.store, &here)? {
            let rows = engine.store.query_admin(
                "SELECT person FROM ex_upperson WHERE patient = ?",
                &[Val::Text(p.clone())],
            )?;
            if rows.first().is_some_and(|r| r[0].text() != u) {
                elsewhere.insert(p);
            }
        }
    }
    let g = crate::guard::Guard::platform(
        engine,
        &format!("node:{upstream}"),
        "identity-from-upstream",
    );
    let mut entry = g.entry();
    entry.outcome = 200;
    let author = format!("上级平台 upstream node {upstream}");
    let reason = format!("identity decided upstream (Person/{u} at node {upstream})");
    let r = engine.matcher.change(&engine.store, &entry, |reg, index| {
        // A registry kept in the database holds only what it was asked about.
        let refs: Vec<&str> = links.iter().map(String::as_str).collect();
        reg.page_patients(&refs);
        let held: Vec<&String> = links
            .iter()
            .filter(|p| reg.person_of(p).is_some())
            .collect();
        let Some(first) = held.first() else {
            return Ok(());
        };
        let target = reg.person_of(first).unwrap_or_default().to_string();
        for p in &held[1..] {
            let q = reg.person_of(p).unwrap_or_default().to_string();
            if q == target {
                continue;
            }
            reg.page_persons(&[&q]);
            if reg.patients(&q).iter().all(|x| links.contains(x)) {
                reg.merge(&target, &q, &author, &reason)?;
            } else {
                reg.link(index, &target, p, &author, &reason, true)?;
            }
        }
        reg.page_persons(&[&target]);
        let apart: Vec<String> = reg
            .patients(&target)
            .into_iter()
            .filter(|x| !links.contains(x) && elsewhere.contains(x))
            .collect();
        if !apart.is_empty() {
            reg.split(&target, &apart, None, &author, &reason)?;
        }
        Ok(())
    })?;
    g.committed();
    r.map_err(|m| crate::error::ApiError::of(crate::error::Code::Unprocessable, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_subscriptions_name_the_district() {
        let n = Node::new(
            "d1",
            "district",
            Some("330106".into()),
            Some(hutong_exchange::node::Upstream {
                url: "http://city/fhir".into(),
                secret: "s".into(),
            }),
            Some(vec![
                "Condition".into(),
                "Observation?category=laboratory".into(),
            ]),
        )
        .unwrap();
        let s = subscription(&n, "http://d1/node/notify", "k");
        assert_eq!(s["id"], "d1-push");
        assert_eq!(
            s["_criteria"]["extension"][1]["valueString"],
            "Observation?category=laboratory&resident-district=330106"
        );
        assert_eq!(
            filter("Condition", "330106"),
            "Condition?resident-district=330106"
        );
        assert!(same(&s, &s));
    }
}
