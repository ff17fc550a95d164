//! Sending what is due. One loop (a tokio task) reads the change log into events
//! ([`super::dispatch`]) and, for every subscription with something to send — a handshake,
//! events, a heartbeat — and no delivery in flight, starts one: events in order, at most
//! `max-count` a notification, `delivered` moved only when the receiver acknowledged. A
//! failed rest-hook delivery is tried again on the backoff schedule, forever: the events
//! wait in the store, and survive restarts of either side.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hutong_exchange::notify::{self, Status};
use hutong_exchange::{backoff, ChannelKind, Content, Event, NotificationKind};
use hutong_fhir::date::now_ms;
use hutong_store::sql::Val;
use hutong_store::Lookup;
use tokio::sync::mpsc::UnboundedSender;

use super::dispatch::{self, Live};
use crate::error::{ApiError, Code};
use crate::guard::Guard;
use crate::Engine;

/// Changes read from the log per dispatch.
const BATCH: usize = 2_000;

/// Live connections and what the delivery loop shares with the HTTP front: bound
/// websockets, binding tokens, the public base for references, the HTTP client.
pub struct Hub {
    sockets: Mutex<HashMap<String, Vec<UnboundedSender<String>>>>,
    tokens: Mutex<HashMap<String, Binding>>,
    base: Mutex<String>,
    inflight: Mutex<HashSet<String>>,
    /// Subscriptions as parsed, by id and the row's `updated`.
    parsed: Mutex<HashMap<String, (i64, Parsed)>>,
    client: reqwest::Client,
    pub(crate) wake: tokio::sync::Notify,
    /// This platform as a node of the hierarchy, when it is one.
    node: std::sync::OnceLock<Arc<hutong_exchange::node::Node>>,
    /// The upstream link's counters and last error.
    link: Mutex<LinkState>,
    /// The intake rules copies pushed down are checked by.
    replica: std::sync::OnceLock<Arc<hutong_quality::Checker>>,
}

/// The upstream link as the forwarder last saw it.
#[derive(Debug, Clone, Default)]
pub struct LinkState {
    pub forwarded: i64,
    pub rejected: i64,
    /// When a batch was last answered (ms).
    pub last_ok: i64,
    pub last_error: Option<String>,
}

/// A subscription's owner and spec, parsed.
pub(crate) type Parsed = (
    Arc<hutong_access::principal::Principal>,
    Arc<hutong_exchange::Spec>,
);

#[derive(Clone)]
struct Binding {
    subs: Vec<String>,
    expires: i64,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub {
            sockets: Default::default(),
            tokens: Default::default(),
            base: Mutex::new(String::new()),
            inflight: Default::default(),
            parsed: Default::default(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(32)
                .build()
                .unwrap_or_default(),
            wake: tokio::sync::Notify::new(),
            node: Default::default(),
            link: Default::default(),
            replica: Default::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// The FHIR base notifications' references are written against.
    pub fn set_base(&self, base: &str) {
        *lock(&self.base) = base.trim_end_matches('/').to_string();
    }

    pub fn base(&self) -> String {
        lock(&self.base).clone()
    }

    /// Makes this platform a node of the hierarchy (once, at start).
    pub fn set_node(&self, node: Arc<hutong_exchange::node::Node>) {
        let _ = self.node.set(node);
    }

    pub fn node(&self) -> Option<&hutong_exchange::node::Node> {
        self.node.get().map(|n| &**n)
    }

    pub fn link(&self) -> LinkState {
        lock(&self.link).clone()
    }

    pub(crate) fn link_ok(&self, forwarded: i64, rejected: i64) {
        let mut l = lock(&self.link);
        l.forwarded += forwarded;
        l.rejected += rejected;
        l.last_ok = now_ms();
        l.last_error = None;
    }

    pub(crate) fn link_failed(&self, msg: String) {
        lock(&self.link).last_error = Some(msg);
    }

    /// The checker of copies pushed down, made once from the node's rules by `make`.
    pub(crate) fn replica_checker(
        &self,
        make: impl FnOnce() -> hutong_quality::Checker,
    ) -> Arc<hutong_quality::Checker> {
        self.replica.get_or_init(|| Arc::new(make())).clone()
    }

    /// The HTTP client deliveries and node links share.
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub(crate) fn parsed(&self, id: &str, updated: i64) -> Option<Parsed> {
        lock(&self.parsed)
            .get(id)
            .filter(|(u, _)| *u == updated)
            .map(|(_, p)| p.clone())
    }

    pub(crate) fn keep_parsed(&self, id: &str, updated: i64, p: Parsed) {
        lock(&self.parsed).insert(id.to_string(), (updated, p));
    }

    /// A token binding a websocket to `subs`, valid `ttl_ms`.
    pub(crate) fn issue_token(&self, subs: Vec<String>, ttl_ms: i64) -> (String, i64) {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let expires = now_ms() + ttl_ms;
        let mut t = lock(&self.tokens);
        t.retain(|_, b| b.expires > now_ms());
        t.insert(token.clone(), Binding { subs, expires });
        (token, expires)
    }

    /// Binds a socket's sender to the subscriptions its token names; returns them. A token
    /// binds once: one that leaked cannot open a second socket on the subscriber's events.
    pub fn bind(&self, token: &str, tx: UnboundedSender<String>) -> Option<Vec<String>> {
        let b = lock(&self.tokens).remove(token)?;
        if b.expires <= now_ms() {
            return None;
        }
        let mut s = lock(&self.sockets);
        for sub in &b.subs {
            s.entry(sub.clone()).or_default().push(tx.clone());
        }
        self.wake.notify_one();
        Some(b.subs)
    }

    fn bound(&self, sub: &str) -> bool {
        let mut s = lock(&self.sockets);
        match s.get_mut(sub) {
            Some(v) => {
                v.retain(|t| !t.is_closed());
                !v.is_empty()
            }
            None => false,
        }
    }

    /// Sends `text` to every socket bound to `sub`: whether any took it.
    fn push(&self, sub: &str, text: &str) -> bool {
        let mut s = lock(&self.sockets);
        let Some(v) = s.get_mut(sub) else {
            return false;
        };
        v.retain(|t| t.send(text.to_string()).is_ok());
        !v.is_empty()
    }
}

/// Runs the dispatcher and the deliveries until `stop` is set.
pub fn start(engine: Engine, stop: Arc<std::sync::atomic::AtomicBool>) {
    tokio::spawn(async move {
        let mut last_prune = 0i64;
        let mut failing = false;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let e = engine.clone();
            let read =
                tokio::task::spawn_blocking(move || -> Result<(usize, Vec<Live>), ApiError> {
                    let n = dispatch::dispatch_once(&e, BATCH)?;
                    Ok((n, dispatch::live(&e, None)?))
                })
                .await;
            let (n, subs) = match read {
                Ok(Ok(x)) => {
                    if failing {
                        failing = false;
                        tracing::info!("Subscription dispatch recovered.");
                    }
                    x
                }
                Ok(Err(err)) => {
                    if !failing {
                        failing = true;
                        tracing::warn!(error = %err.message(), "Subscription dispatch failed; will retry.");
                    }
                    (0, Vec::new())
                }
                Err(_) => (0, Vec::new()),
            };
            let now = now_ms();
            for sub in subs {
                if due(&engine, &sub, now) && lock(&engine.hub.inflight).insert(sub.id.clone()) {
                    let e = engine.clone();
                    tokio::spawn(async move {
                        let id = sub.id.clone();
                        if let Err(err) = deliver(&e, sub).await {
                            tracing::debug!(subscription = %id, error = %err.message(), "A delivery failed.");
                        }
                        lock(&e.hub.inflight).remove(&id);
                        e.hub.wake.notify_one();
                    });
                }
            }
            if now - last_prune > 10_000 {
                last_prune = now;
                let e = engine.clone();
                let _ = tokio::task::spawn_blocking(move || dispatch::skip_when_idle(&e)).await;
            }
            if n < BATCH {
                let _ = tokio::time::timeout(Duration::from_millis(20), engine.hub.wake.notified())
                    .await;
            }
        }
    });
}

/// Whether `sub` has something to send now.
fn due(engine: &Engine, sub: &Live, now: i64) -> bool {
    if sub.next_try > now {
        return false;
    }
    if sub.spec.channel.kind == ChannelKind::Websocket && !engine.hub.bound(&sub.id) {
        return false;
    }
    let heartbeat = sub.spec.channel.heartbeat_s as i64 * 1000;
    sub.status == "requested"
        || sub.events > sub.delivered
        || (heartbeat > 0 && now - sub.last_sent >= heartbeat)
}

/// One delivery round for `sub`: the handshake if it has not had one, then its waiting
/// events (a notification at a time), or a heartbeat.
async fn deliver(engine: &Engine, sub: Live) -> Result<(), ApiError> {
    // Read again now that this round holds the subscription: the row read before the claim
    // may predate a round that just finished.
    let (e, id) = (engine.clone(), sub.id.clone());
    let Some(mut sub) =
        blocking(move || Ok(dispatch::live(&e, Some(&id))?.into_iter().next())).await?
    else {
        return Ok(());
    };
    if sub.status == "off" || !due(engine, &sub, now_ms()) {
        return Ok(());
    }
    if sub.status == "requested"
        && (sub.spec.classic_wire() || sub.spec.channel.kind == ChannelKind::Websocket)
    {
        // A classic R4 receiver expects resources, not a Backport handshake; a websocket
        // had its handshake when it bound.
        set_state(engine, &sub.id, "active", None).await?;
        sub.status = "active".into();
    }
    if sub.status == "requested" {
        let body = {
            let (e, s) = (engine.clone(), sub.clone());
            blocking(move || Ok(status_bundle(&e, &s, NotificationKind::Handshake))).await?
        };
        if !send(engine, &sub, &body).await? {
            return Ok(());
        }
        set_state(engine, &sub.id, "active", None).await?;
        sub.status = "active".into();
    }
    loop {
        let n = sub.spec.channel.max_count as i64;
        if sub.events <= sub.delivered {
            break;
        }
        let (e, s) = (engine.clone(), sub.clone());
        let (events, last) =
            blocking(move || events_for(&e, &s, s.delivered, s.delivered + n)).await?;
        if last <= sub.delivered {
            break;
        }
        let ok = if sub.spec.classic_wire() {
            send_classic(engine, &sub, &events).await?
        } else {
            let body = {
                let (e, s) = (engine.clone(), sub.clone());
                let ev = events.clone();
                blocking(move || Ok(bundle(&e, &s, NotificationKind::EventNotification, &ev)))
                    .await?
            };
            send(engine, &sub, &body).await?
        };
        if !ok {
            return Ok(());
        }
        let (e, id) = (engine.clone(), sub.id.clone());
        blocking(move || {
            e.store.exec_admin(
                "UPDATE ex_sub SET delivered = CASE WHEN delivered < ? THEN ? ELSE delivered END, \
                 failures = 0, next_try = 0, last_sent = ?, last_error = '', \
                 status = CASE WHEN status IN ('off', 'requested') THEN status ELSE 'active' END WHERE id = ?",
                &[Val::Int(last), Val::Int(last), Val::Int(now_ms()), Val::Text(id)],
            )?;
            Ok(())
        })
        .await?;
        sub.delivered = last;
        sub.last_sent = now_ms();
        // Refresh the count: more may have been numbered meanwhile.
        let (e, id) = (engine.clone(), sub.id.clone());
        match blocking(move || Ok(dispatch::live(&e, Some(&id))?.into_iter().next())).await? {
            // Turned off, deleted or changed meanwhile (a new endpoint, a new handshake):
            // the next round starts from the row as it is now.
            Some(fresh) if fresh.status == sub.status && fresh.spec == sub.spec => {
                sub.events = fresh.events;
            }
            _ => return Ok(()),
        }
    }
    let heartbeat = sub.spec.channel.heartbeat_s as i64 * 1000;
    if heartbeat > 0 && now_ms() - sub.last_sent >= heartbeat && !sub.spec.classic_wire() {
        let body = {
            let (e, s) = (engine.clone(), sub.clone());
            blocking(move || Ok(status_bundle(&e, &s, NotificationKind::Heartbeat))).await?
        };
        if send(engine, &sub, &body).await? {
            let (e, id) = (engine.clone(), sub.id.clone());
            blocking(move || {
                e.store.exec_admin(
                    "UPDATE ex_sub SET last_sent = ? WHERE id = ?",
                    &[Val::Int(now_ms()), Val::Text(id)],
                )?;
                Ok(())
            })
            .await?;
        }
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::of(Code::Internal, e.to_string()))?
}

async fn set_state(
    engine: &Engine,
    id: &str,
    status: &str,
    error: Option<String>,
) -> Result<(), ApiError> {
    let (e, id, status) = (engine.clone(), id.to_string(), status.to_string());
    blocking(move || {
        e.store.exec_admin(
            "UPDATE ex_sub SET status = CASE WHEN status = 'off' THEN 'off' ELSE ? END, last_error = ? WHERE id = ?",
            &[Val::Text(status), Val::Text(error.unwrap_or_default()), Val::Text(id)],
        )?;
        Ok(())
    })
    .await
}

/// Records a failed attempt: the next one after the backoff.
async fn failed(engine: &Engine, sub: &Live, why: String) -> Result<(), ApiError> {
    let failures = sub.failures + 1;
    let next = now_ms() + backoff::delay_ms(failures as u32, backoff::key(&sub.id));
    tracing::info!(subscription = %sub.id, failures, error = %why, "A notification was not delivered; it will be tried again.");
    let (e, id) = (engine.clone(), sub.id.clone());
    blocking(move || {
        e.store.exec_admin(
            "UPDATE ex_sub SET failures = ?, next_try = ?, last_error = ?, \
             status = CASE WHEN status IN ('off', 'requested') THEN status ELSE 'error' END WHERE id = ?",
            &[
                Val::Int(failures),
                Val::Int(next),
                Val::Text(why),
                Val::Text(id),
            ],
        )?;
        Ok(())
    })
    .await
}

/// Sends a notification Bundle over the subscription's channel: whether it was taken.
async fn send(engine: &Engine, sub: &Live, body: &[u8]) -> Result<bool, ApiError> {
    match sub.spec.channel.kind {
        ChannelKind::Websocket => Ok(engine
            .hub
            .push(&sub.id, std::str::from_utf8(body).unwrap_or(""))),
        ChannelKind::RestHook => {
            let url = sub.spec.channel.endpoint.clone().unwrap_or_default();
            let mut req = engine
                .hub
                .client
                .post(&url)
                .timeout(Duration::from_secs(sub.spec.channel.timeout_s))
                .header("Content-Type", "application/fhir+json")
                .body(body.to_vec());
            req = headers(req, sub, body);
            post(engine, sub, req).await
        }
    }
}

fn headers(mut req: reqwest::RequestBuilder, sub: &Live, body: &[u8]) -> reqwest::RequestBuilder {
    for (k, v) in &sub.spec.channel.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(secret) = &sub.spec.secret {
        req = req.header("X-Hutong-Signature", notify::sign(secret, body));
    }
    req.header("X-Hutong-Subscription", sub.id.as_str())
}

async fn post(engine: &Engine, sub: &Live, req: reqwest::RequestBuilder) -> Result<bool, ApiError> {
    match req.send().await {
        Ok(r) if r.status().is_success() => Ok(true),
        Ok(r) => {
            failed(engine, sub, format!("the endpoint answered {}", r.status())).await?;
            Ok(false)
        }
        Err(e) => {
            failed(
                engine,
                sub,
                format!("the endpoint could not be reached: {e}"),
            )
            .await?;
            Ok(false)
        }
    }
}

/// A classic R4 rest-hook: each event's resource PUT to `[endpoint]/[type]/[id]`, or, with
/// no payload, an empty POST to the endpoint.
async fn send_classic(engine: &Engine, sub: &Live, events: &[Event]) -> Result<bool, ApiError> {
    let base = sub.spec.channel.endpoint.clone().unwrap_or_default();
    for e in events {
        let timeout = Duration::from_secs(sub.spec.channel.timeout_s);
        let req = match (&e.resource, e.withheld) {
            (Some(r), false) if sub.spec.channel.content == Content::Full => {
                let body = serde_json::to_vec(r).unwrap_or_default();
                let url = format!("{}/{}/{}", base.trim_end_matches('/'), e.rtype, e.id);
                let req = engine
                    .hub
                    .client
                    .put(url)
                    .timeout(timeout)
                    .header("Content-Type", "application/fhir+json");
                headers(req.body(body.clone()), sub, &body)
            }
            _ => headers(engine.hub.client.post(&base).timeout(timeout), sub, b""),
        };
        let req = req.header("X-Hutong-Event-Number", e.number.to_string());
        if !post(engine, sub, req).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The subscription as its notifications and `$status` describe it.
pub(crate) fn status_of<'a>(base: &'a str, sub: &'a Live, error: Option<&'a str>) -> Status<'a> {
    Status {
        base,
        subscription: &sub.id,
        topic: sub.spec.topic.as_deref().unwrap_or(""),
        status: &sub.status,
        events_since_start: sub.events,
        error,
    }
}

fn status_bundle(engine: &Engine, sub: &Live, kind: NotificationKind) -> Vec<u8> {
    bundle(engine, sub, kind, &[])
}

fn bundle(engine: &Engine, sub: &Live, kind: NotificationKind, events: &[Event]) -> Vec<u8> {
    let base = engine.hub.base();
    let b = notify::bundle(
        &status_of(&base, sub, None),
        kind,
        events,
        sub.spec.channel.content,
        &uuid::Uuid::new_v4().to_string(),
        now_ms(),
    );
    serde_json::to_vec(&b).unwrap_or_default()
}

/// The events numbered `(after, until]` as `reader` may see them now, decided and audited
/// as a read of theirs (the subscriber's, for a notification). Returns them and the last
/// number read.
pub(crate) fn events_as(
    engine: &Engine,
    g: &Guard,
    sub: &Live,
    after: i64,
    until: i64,
) -> Result<(Vec<Event>, i64), ApiError> {
    let rows = engine.store.query_admin(
        "SELECT num, ts, rtype, rid, version, deleted FROM ex_event WHERE sub = ? AND num > ? AND num <= ? ORDER BY num",
        &[Val::Text(sub.id.clone()), Val::Int(after), Val::Int(until)],
    )?;
    let owned = sub.spec.topic.as_deref().is_some_and(|t| {
        t == hutong_exchange::topic::TASK_ASSIGNED || t == hutong_exchange::topic::FOLLOW_UP_DUE
    });
    let org = match (owned, sub.owner.institution.as_deref()) {
        (true, Some(inst)) => crate::consent::organization_of(engine, inst)?
            .and_then(|o| o["id"].as_str().map(String::from)),
        _ => None,
    };
    let mut out = Vec::with_capacity(rows.len());
    let mut last = after;
    for r in rows {
        let (rtype, id, version) = (r[2].text().to_string(), r[3].text().to_string(), r[4].int());
        last = r[0].int();
        // A Task assigned to the subscriber's institution is theirs whoever filed it
        // (decided at numbering); everything else is read as the reader reads.
        let scope = if owned {
            hutong_store::Scope::All
        } else {
            g.scope.clone()
        };
        let found = match engine.store.vread(&rtype, &id, version, &scope)? {
            // The version numbered, not the current one, must be the subscriber's Task.
            Lookup::Found(s) if owned && !s.deleted => {
                let inst = sub.owner.institution.as_deref().unwrap_or("");
                let v: serde_json::Value = s.json()?;
                dispatch::owned_by(&v, inst, org.as_deref()).then_some(s)
            }
            Lookup::Found(s) => Some(s),
            _ => None,
        };
        let resource = match &found {
            Some(s) if !s.deleted && sub.spec.channel.content == Content::Full => {
                serde_json::from_slice(&g.release(s)).ok()
            }
            Some(s) => {
                g.touch(
                    format!("{}/{}/_history/{}", s.rtype, s.id, s.version),
                    s.shard,
                );
                None
            }
            None => None,
        };
        out.push(Event {
            number: last,
            ts: r[1].int(),
            rtype,
            id,
            version,
            deleted: r[5].int() != 0,
            withheld: found.is_none(),
            resource,
        });
    }
    Ok((out, last))
}

/// The subscriber's events after `after`, for a notification: decided and audited as a
/// read by the subscriber.
fn events_for(
    engine: &Engine,
    sub: &Live,
    after: i64,
    until: i64,
) -> Result<(Vec<Event>, i64), ApiError> {
    let g = Guard::new(
        engine,
        sub.owner.clone(),
        None,
        None,
        format!(
            "notification Subscription/{} events {}-{}",
            sub.id,
            after + 1,
            until
        ),
    );
    g.act("subscription-notify");
    let r = events_as(engine, &g, sub, after, until);
    g.finish(engine, if r.is_ok() { 200 } else { 500 }, None);
    r
}

/// The handshake a websocket receives for each subscription it binds.
pub fn handshake(engine: &Engine, id: &str) -> Option<String> {
    let sub = dispatch::live(engine, Some(id)).ok()?.into_iter().next()?;
    Some(
        String::from_utf8_lossy(&status_bundle(engine, &sub, NotificationKind::Handshake))
            .into_owned(),
    )
}
