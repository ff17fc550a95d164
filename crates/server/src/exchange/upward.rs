//! Upward (上报): a district or city node forwards what it accepted to its upstream.
//!
//! The store's change log is the outbox: this node's consumer (`upstream`) reads it in
//! commit order, sends the versions as a `history` Bundle under the node's client
//! credentials, and moves its cursor only after the upstream answered — in one transaction
//! with the work orders for what the upstream refused. A failure (either side down, a
//! network error, an answer of 5xx) sends the same batch again after a backoff; the
//! upstream applies a version once however often it comes (`links::apply`). The backlog is
//! what the cursor has not passed: `$node` shows it, with its age.

use std::sync::Arc;
use std::time::Duration;

use hutong_exchange::node::{self, Node, Outgoing};
use hutong_fhir::date::now_ms;
use hutong_quality::workorder::Category;
use hutong_store::changelog::{self, Logged};
use hutong_store::Scope;
use serde_json::Value;

use crate::engine::Engine;
use crate::error::ApiError;
use crate::governance::orders::NewOrder;
use crate::guard::Guard;

use super::UPSTREAM_CONSUMER as CONSUMER;
use super::{BACKFILL_KEY, PENDING};

/// Versions per Bundle sent up.
const BATCH: usize = 1000;

/// Registers the forwarder's place in the change log (from then on nothing is pruned before
/// it was forwarded).
pub fn open(engine: &Engine) -> Result<(), ApiError> {
    // What the node held before it first forwarded is sent by a backfill; from the cursor's
    // registration on, the log carries the rest (a version both send is applied once).
    let first = engine.store.meta(BACKFILL_KEY)?.is_none();
    engine.store.change_cursor(CONSUMER)?;
    if first {
        // Taken after the cursor: what was written since is in the log (a version written
        // in between is sent by both, and applied once).
        engine
            .store
            .set_meta(BACKFILL_BEFORE_KEY, &now_ms().to_string())?;
        engine.store.set_meta(BACKFILL_KEY, PENDING)?;
    }
    Ok(())
}

/// The store's `meta` key of when the forwarder joined: the backfill sends what was last
/// written before then (later versions travel in the log).
const BACKFILL_BEFORE_KEY: &str = "node-backfill-before";

/// Sends the current version of every record the node holds (the types that move), type by
/// type in storage order, as the log's batches are sent; refusals come back the same way.
async fn backfill(
    engine: &Engine,
    node: &Node,
    creds: &mut Option<(String, i64)>,
) -> Result<(), String> {
    let e = engine.clone();
    let before: i64 = tokio::task::spawn_blocking(move || e.store.meta(BACKFILL_BEFORE_KEY))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading the store failed: {e}"))?
        .and_then(|v| v.parse().ok())
        .unwrap_or(i64::MAX);
    for t in hutong_fhir::Definitions::get().resource_types() {
        if !crate::exchange::links::moves(t) {
            continue;
        }
        let mut after = 0i64;
        loop {
            let (e, tt) = (engine.clone(), t.clone());
            let (items, last) = tokio::task::spawn_blocking(move || {
                e.store.scan(&tt, None, false, after, BATCH, &Scope::All)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("reading the store failed: {e}"))?;
            if items.is_empty() {
                break;
            }
            after = last;
            let read = items.len();
            let mut leaving = Vec::new();
            for s in items {
                if s.last_updated >= before {
                    continue;
                }
                let Ok(v) = s.json() else { continue };
                if node::pushed_down(&v) || crate::exchange::links::platform_service(&s.source) {
                    continue;
                }
                leaving.push(Leaving {
                    change: Logged {
                        at: changelog::Cursor::default(),
                        rtype: s.rtype.clone(),
                        id: s.id.clone(),
                        version: s.version,
                        shard: s.shard,
                        deleted: false,
                        ts: s.last_updated,
                        tokens: None,
                    },
                    out: Outgoing {
                        rtype: s.rtype.clone(),
                        id: s.id.clone(),
                        version: s.version,
                        resource: Some(v),
                    },
                    source: s.source.clone(),
                });
            }
            let batch = Batch {
                last: None,
                read,
                leaving,
            };
            if batch.leaving.is_empty() {
                continue;
            }
            forward(engine, node, creds, batch).await?;
        }
    }
    let e = engine.clone();
    tokio::task::spawn_blocking(move || e.store.set_meta(BACKFILL_KEY, "done"))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("noting the backfill done failed: {e}"))
}

/// A token for the upstream, fetched again when the last one is about to expire.
async fn current_token(
    engine: &Engine,
    node: &Node,
    creds: &mut Option<(String, i64)>,
) -> Result<String, String> {
    match creds {
        Some((t, until)) if *until > now_ms() => Ok(t.clone()),
        _ => {
            let fresh = token(engine, node).await?;
            *creds = Some(fresh.clone());
            Ok(fresh.0)
        }
    }
}

/// A version that leaves, with who submitted it.
struct Leaving {
    change: Logged,
    out: Outgoing,
    source: String,
}

/// What one round read from the log.
struct Batch {
    /// The last change read (the cursor moves to it once the upstream answered).
    last: Option<changelog::Cursor>,
    /// How many changes were read (some stay here: see `links::moves`).
    read: usize,
    leaving: Vec<Leaving>,
}

/// The batch after `at` (the consumer's cursor when `None`).
fn read_batch(engine: &Engine, at: Option<changelog::Cursor>) -> Result<Batch, ApiError> {
    let at = match at {
        Some(a) => a,
        None => engine.store.change_cursor(CONSUMER)?,
    };
    let changes = engine.store.changes_after(at, BATCH)?;
    let last = changes.last().map(|c| c.at);
    let read = changes.len();
    let mut leaving = Vec::new();
    for c in changes {
        if !crate::exchange::links::moves(&c.rtype) {
            continue;
        }
        let Some(s) = engine
            .store
            .vread(&c.rtype, &c.id, c.version, &Scope::All)?
            .found()
        else {
            continue;
        };
        let resource = if s.deleted {
            None
        } else {
            let v = s.json()?;
            // A copy the upstream pushed down is the upstream's already.
            if node::pushed_down(&v) {
                continue;
            }
            Some(v)
        };
        // The platform's own services' records (identity links, access records) stay.
        if crate::exchange::links::platform_service(&s.source) {
            continue;
        }
        leaving.push(Leaving {
            out: Outgoing {
                rtype: c.rtype.clone(),
                id: c.id.clone(),
                version: c.version,
                resource,
            },
            source: s.source.clone(),
            change: c,
        });
    }
    Ok(Batch {
        last,
        read,
        leaving,
    })
}

/// What the upstream said of one version it refused.
struct Refused {
    index: usize,
    outcome: Value,
}

/// Sends the batch; `Ok` with the refusals when every version was answered for good.
async fn send(
    engine: &Engine,
    node: &Node,
    token: &str,
    batch: &Batch,
) -> Result<Vec<Refused>, String> {
    let up = node
        .upstream
        .as_ref()
        .expect("the forwarder runs only with an upstream");
    let items: Vec<Outgoing> = batch.leaving.iter().map(|l| l.out.clone()).collect();
    let body = serde_json::to_vec(&node::history_bundle(&items)).unwrap_or_default();
    let resp = engine
        .hub
        .client()
        .post(&up.url)
        .header("Content-Type", "application/fhir+json")
        .header("Authorization", format!("Bearer {token}"))
        .header("X-Hutong-Node-Level", node.level.as_str())
        .header("X-Hutong-Node-Base", engine.hub.base())
        .timeout(Duration::from_secs(120))
        .body(body)
        .send()
        .await
        .map_err(|e| format!("the upstream {} did not answer: {e}", up.url))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    if status == 401 {
        return Err(format!(
            "the upstream refused this node's credentials (401): {}",
            brief(&text)
        ));
    }
    if status != 200 {
        return Err(format!("the upstream answered {status}: {}", brief(&text)));
    }
    let answer: Value = serde_json::from_str(&text)
        .map_err(|e| format!("the upstream's answer is not JSON: {e}"))?;
    let entries = answer["entry"].as_array().cloned().unwrap_or_default();
    if entries.len() != items.len() {
        return Err(format!(
            "the upstream answered {} entries for {} versions",
            entries.len(),
            items.len()
        ));
    }
    let mut refused = Vec::new();
    for (index, e) in entries.iter().enumerate() {
        let code: u16 = e["response"]["status"]
            .as_str()
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        match code {
            200..=299 => {}
            400..=499 => refused.push(Refused {
                index,
                outcome: e["response"]["outcome"].clone(),
            }),
            _ => {
                return Err(format!(
                    "the upstream could not take {}/{} now ({code})",
                    items[index].rtype, items[index].id
                ))
            }
        }
    }
    Ok(refused)
}

fn brief(s: &str) -> String {
    let s: String = s.chars().take(300).collect();
    s.replace('\n', " ")
}

/// Moves the cursor past the batch and routes the refusals back to the institutions that
/// submitted them — a finding on the version and a work order — in one transaction.
fn commit(engine: &Engine, batch: &Batch, refused: &[Refused]) -> Result<(), ApiError> {
    if batch.last.is_none() && refused.is_empty() {
        return Ok(());
    }
    let g = Guard::platform(engine, "node-forwarder", "node-forward");
    let policy = engine.checker.rules.work_orders.clone();
    g.write(engine, |tx| {
        for r in refused {
            let l = &batch.leaving[r.index];
            let Some(s) = tx.read(&l.change.rtype, &l.change.id)? else {
                continue;
            };
            let issues = r.outcome["issue"].as_array().cloned().unwrap_or_default();
            let mut said = Vec::new();
            for i in &issues {
                let msg = i["diagnostics"].as_str().unwrap_or("").to_string();
                let expr = i["expression"][0].as_str().unwrap_or("").to_string();
                crate::governance::intake::record_finding(
                    tx,
                    &l.source,
                    &s,
                    "upstream-rejected",
                    i["severity"].as_str().unwrap_or("error"),
                    &expr,
                    &msg,
                )?;
                said.push(msg);
            }
            let order = NewOrder {
                category: Category::UpstreamRejected,
                description: format!(
                    "上级平台拒收 {}/{} 第 {} 版 The upstream platform refused {}/{} version {}: {}",
                    l.change.rtype,
                    l.change.id,
                    l.change.version,
                    l.change.rtype,
                    l.change.id,
                    l.change.version,
                    said.join("; ")
                ),
                priority: "urgent".into(),
                reporter: "platform upstream link".into(),
                rule: Some("upstream-rejected".into()),
                inputs: Vec::new(),
            };
            crate::governance::orders::create_in(tx, &policy, &order, &l.source, None, Some(&s))?;
        }
        if let Some(last) = batch.last {
            changelog::set_cursor(tx.conn(), CONSUMER, last)?;
        }
        Ok(())
    })
}

/// A token from the upstream for this node's client credentials (SMART backend services'
/// client_credentials grant, discovered from the upstream's SMART configuration).
pub(crate) async fn token(engine: &Engine, node: &Node) -> Result<(String, i64), String> {
    let up = node.upstream.as_ref().expect("an upstream");
    let client = engine.hub.client();
    let conf: Value = client
        .get(format!("{}/.well-known/smart-configuration", up.url))
        .send()
        .await
        .map_err(|e| format!("the upstream {} did not answer: {e}", up.url))?
        .json()
        .await
        .map_err(|e| format!("the upstream's SMART configuration is not JSON: {e}"))?;
    let endpoint = conf["token_endpoint"]
        .as_str()
        .ok_or("the upstream's SMART configuration names no token_endpoint")?
        .to_string();
    let resp = client
        .post(&endpoint)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", node.id.as_str()),
            ("client_secret", up.secret.as_str()),
            ("scope", "system/*.cruds"),
        ])
        .send()
        .await
        .map_err(|e| format!("the upstream's token endpoint did not answer: {e}"))?;
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    match v["access_token"].as_str() {
        Some(t) if status == 200 => {
            let ttl = v["expires_in"].as_i64().unwrap_or(300);
            Ok((t.to_string(), now_ms() + (ttl - 30).max(10) * 1000))
        }
        _ => Err(format!(
            "the upstream refused this node's client credentials ({status}): {}",
            v["issue"][0]["diagnostics"].as_str().unwrap_or("")
        )),
    }
}

/// Runs the forwarder until `stop` is set.
pub fn start(engine: Engine, node: Arc<Node>, stop: Arc<std::sync::atomic::AtomicBool>) {
    tokio::spawn(async move {
        let mut creds: Option<(String, i64)> = None;
        let mut failures = 0u32;
        let mut ahead = None;
        let e = engine.clone();
        let mut pending = tokio::task::spawn_blocking(move || e.store.meta(BACKFILL_KEY))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .as_deref()
            == Some(PENDING);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let done = if pending {
                let r = backfill(&engine, &node, &mut creds).await;
                pending = r.is_err();
                r.map(|()| BATCH)
            } else {
                round(&engine, &node, &mut creds, &mut ahead).await
            };
            match done {
                Ok(n) => {
                    if failures > 0 {
                        tracing::info!(upstream = %node.upstream.as_ref().map_or("", |u| u.url.as_str()), "Forwarding to the upstream recovered.");
                    }
                    failures = 0;
                    if n < BATCH {
                        let _ = tokio::time::timeout(
                            Duration::from_millis(100),
                            engine.hub.wake.notified(),
                        )
                        .await;
                    }
                }
                Err(msg) => {
                    if failures == 0 {
                        tracing::warn!("Forwarding to the upstream failed; will retry: {msg}");
                    }
                    failures = failures.saturating_add(1);
                    engine.hub.link_failed(msg);
                    creds = None;
                    ahead = None;
                    // Quick retries first (a restart of the upstream takes seconds), then
                    // the subscriptions' schedule, capped lower: the backlog waits on it.
                    let wait = hutong_exchange::backoff::delay_ms(failures, 0).min(30_000);
                    tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                }
            }
        }
    });
}

/// The next batch, read while the one before it was on its way (dropped on a failure: the
/// round after a failure reads from the cursor again).
type Ahead = Option<tokio::task::JoinHandle<Result<Batch, ApiError>>>;

/// One round: the next batch read, sent and committed — the one after it read meanwhile.
/// Returns how many changes it passed.
async fn round(
    engine: &Engine,
    node: &Node,
    creds: &mut Option<(String, i64)>,
    ahead: &mut Ahead,
) -> Result<usize, String> {
    let e = engine.clone();
    let read = match ahead.take() {
        Some(h) => h.await,
        None => tokio::task::spawn_blocking(move || read_batch(&e, None)).await,
    };
    let batch = read
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("reading the change log failed: {}", e.message()))?;
    let Some(last) = batch.last else { return Ok(0) };
    if batch.read == BATCH {
        let e = engine.clone();
        *ahead = Some(tokio::task::spawn_blocking(move || {
            read_batch(&e, Some(last))
        }));
    }
    let read = batch.read;
    forward(engine, node, creds, batch).await?;
    Ok(read)
}

/// Sends a batch (when anything in it leaves) and records the answer — the refusals routed
/// back and, for a batch of the log, the cursor moved past it — in one transaction.
async fn forward(
    engine: &Engine,
    node: &Node,
    creds: &mut Option<(String, i64)>,
    batch: Batch,
) -> Result<(), String> {
    let refused = if batch.leaving.is_empty() {
        Vec::new()
    } else {
        let t = current_token(engine, node, creds).await?;
        send(engine, node, &t, &batch).await?
    };
    let (n, rejected) = (batch.leaving.len(), refused.len());
    let e = engine.clone();
    tokio::task::spawn_blocking(move || commit(&e, &batch, &refused))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| {
            format!(
                "recording what the upstream answered failed: {}",
                e.message()
            )
        })?;
    engine.hub.link_ok(n as i64, rejected as i64);
    Ok(())
}
