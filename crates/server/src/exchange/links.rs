//! This platform as a node of the hierarchy (区县 → 地市 → 省): taking in what other nodes
//! send — records forwarded up from a node below, records pushed down by the upstream — and
//! knowing which nodes hold a person's records.
//!
//! Both directions arrive as `history` Bundles ([`hutong_exchange::node`]). Each version is
//! applied in a transaction of its own through the one write path (intake rules, filing,
//! the subscriptions' and coordination's hooks, the audit entry), under the institution that
//! submitted it at the origin (`meta.source`), with the route it took. `ex_seen` keeps, per
//! peer and resource, the last version applied, written in the same transaction: a resend
//! writes nothing, an older version never overwrites a newer one.
//!
//! `ex_locator` is the record locator: for every Patient forwarded up, the nodes on its
//! route — the province's answer to "who holds records of this person".

use std::sync::Arc;

use hutong_access::principal::{Capability, Kind, Principal};
use hutong_exchange::node::{self, Incoming};
use hutong_fhir::date::now_ms;
use hutong_store::sql::Val;
use hutong_store::{Store, StoreError, Tx};
use serde_json::{json, Value};

use crate::engine::write::Submission;
use crate::engine::Engine;
use crate::error::{forbidden, ApiError, Code};
use crate::guard::Guard;
use crate::wire::{Req, Resp};

const TABLES: &str = "
CREATE TABLE IF NOT EXISTS ex_seen (peer TEXT NOT NULL, rtype TEXT NOT NULL, id TEXT NOT NULL,
    version BIGINT NOT NULL, PRIMARY KEY (peer, rtype, id));
CREATE TABLE IF NOT EXISTS ex_locator (patient TEXT NOT NULL, node TEXT NOT NULL,
    updated BIGINT NOT NULL, PRIMARY KEY (patient, node));
CREATE TABLE IF NOT EXISTS ex_peer (node TEXT PRIMARY KEY, level TEXT NOT NULL,
    base TEXT NOT NULL, received BIGINT NOT NULL DEFAULT 0, last_seen BIGINT NOT NULL);
";

pub fn open_tables(store: &Store) -> Result<(), StoreError> {
    store.create_tables(TABLES)
}

/// The peer name of the upstream, for what it pushes down, until it said its node id.
pub(crate) const UPSTREAM: &str = "upstream";

/// Types each platform keeps for itself and never takes from another node: subscriptions,
/// the person registry, work orders and follow-up lists, consents, the audit trail.
const KEPT_LOCALLY: [&str; 6] = [
    "Subscription",
    "Person",
    "Task",
    "Consent",
    "AuditEvent",
    "OperationOutcome",
];

/// Whether versions of `rtype` move between nodes.
pub(crate) fn moves(rtype: &str) -> bool {
    !KEPT_LOCALLY.contains(&rtype)
}

/// Whether `source` is one of the platform's own services (the identity registry's link
/// decisions, the access service's records): what they write is this node's own business.
pub(crate) fn platform_service(source: &str) -> bool {
    source == hutong_link::persons::PLATFORM_SOURCE
        || source == hutong_access::grants::ACCESS_SOURCE
}

/// `POST [base]` with a `history` Bundle: a node below forwards what it accepted. Only a
/// platform client may (the node's credentials here); the node is the client.
pub(crate) fn forwarded(
    engine: &Engine,
    req: &Req,
    g: &Guard,
    bundle: &Value,
) -> Result<Resp, ApiError> {
    g.act("node-receive");
    if g.principal.kind != Kind::Platform {
        return Err(forbidden(
            "Only a node of the platform hierarchy (a platform client) forwards history Bundles",
        ));
    }
    let peer = g.principal.subject.clone();
    let level = req.header("x-hutong-node-level").unwrap_or("district");
    let base = req.header("x-hutong-node-base").unwrap_or("");
    let items = node::incoming(bundle)
        .map_err(|m| ApiError::bad_request(m).with_expression("Bundle.type"))?;
    note_peer(&engine.store, &peer, level, base, items.len())?;
    g.note(format!("{} versions from node {peer}", items.len()));
    Ok(Resp::json(200, apply(engine, req, &peer, items, false)))
}

fn note_peer(
    store: &Store,
    peer: &str,
    level: &str,
    base: &str,
    n: usize,
) -> Result<(), StoreError> {
    store.exec_admin(
        "INSERT INTO ex_peer (node, level, base, received, last_seen) VALUES (?, ?, ?, ?, ?) \
         ON CONFLICT (node) DO UPDATE SET level = excluded.level, base = excluded.base, \
         received = ex_peer.received + excluded.received, last_seen = excluded.last_seen",
        &[
            Val::Text(peer.into()),
            Val::Text(level.into()),
            Val::Text(base.into()),
            Val::Int(n as i64),
            Val::Int(now_ms()),
        ],
    )?;
    Ok(())
}

/// Applies the versions a peer sent, in order, each in its own transaction; the answer is a
/// `batch-response` with one entry per version (a rejection carries the intake rules'
/// OperationOutcome, for the sender to route back to the institution).
pub(crate) fn apply(
    engine: &Engine,
    req: &Req,
    peer: &str,
    items: Vec<Result<Incoming, node::EntryError>>,
    down: bool,
) -> Value {
    let entries: Vec<Value> = items
        .into_iter()
        .map(|item| {
            let r = match item {
                Err(e) => Err(ApiError::bad_request(e.message)
                    .with_expression(format!("Bundle.entry[{}]", e.index))),
                Ok(inc) => apply_one(engine, req, peer, inc, down),
            };
            match r {
                Ok((status, version)) => {
                    let mut resp = json!({"status": status.to_string()});
                    if let Some(v) = version {
                        resp["etag"] = json!(format!("W/\"{v}\""));
                    }
                    json!({"response": resp})
                }
                Err(e) => json!({"response": {"status": e.status.to_string(),
                                              "outcome": e.outcome.to_json()}}),
            }
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "batch-response", "entry": entries})
}

fn seen_sql(peer: &str, rtype: &str, id: &str) -> [Val; 3] {
    [
        Val::Text(peer.into()),
        Val::Text(rtype.into()),
        Val::Text(id.into()),
    ]
}

const SEEN: &str = "SELECT version FROM ex_seen WHERE peer = ? AND rtype = ? AND id = ?";

fn seen_in(tx: &mut Tx<'_>, peer: &str, rtype: &str, id: &str) -> Result<i64, StoreError> {
    let rows = tx.conn().query(SEEN, &seen_sql(peer, rtype, id))?;
    Ok(rows.first().map_or(0, |r| r[0].int()))
}

fn set_seen(
    tx: &mut Tx<'_>,
    peer: &str,
    rtype: &str,
    id: &str,
    version: i64,
) -> Result<(), StoreError> {
    let [a, b, c] = seen_sql(peer, rtype, id);
    tx.conn().exec(
        "INSERT INTO ex_seen (peer, rtype, id, version) VALUES (?, ?, ?, ?) \
         ON CONFLICT (peer, rtype, id) DO UPDATE SET version = excluded.version",
        &[a, b, c, Val::Int(version)],
    )?;
    Ok(())
}

/// One version from `peer`: `(status, the version written here)`; `None` when nothing was
/// written (already applied, or a copy of what this node itself sent up).
fn apply_one(
    engine: &Engine,
    req: &Req,
    peer: &str,
    inc: Incoming,
    down: bool,
) -> Result<(u16, Option<i64>), ApiError> {
    let (t, id) = (inc.rtype.as_str(), inc.id.as_str());
    if !moves(t) {
        return Err(ApiError::of(
            Code::BusinessRule,
            format!("{t} resources are kept by each platform and not taken from another node"),
        )
        .with_expression(format!("Bundle.entry[{}]", inc.index)));
    }
    let rows = engine.store.query_admin(SEEN, &seen_sql(peer, t, id))?;
    if rows.first().is_some_and(|r| r[0].int() >= inc.version) {
        return Ok((200, None));
    }
    let g = Guard::new(
        engine,
        req.principal.clone(),
        None,
        req.from.clone(),
        format!(
            "{} {t}/{id} version {} from node {peer}",
            if inc.resource.is_some() {
                "PUT"
            } else {
                "DELETE"
            },
            inc.version
        ),
    );
    g.act(if down {
        "node-push-receive"
    } else {
        "node-forward-receive"
    });
    let r = apply_version(engine, req, &g, peer, inc, down);
    match &r {
        Ok((status, _)) => g.finish(engine, *status, None),
        Err(e) => g.finish(engine, e.status, Some(e.message().to_string())),
    }
    r
}

fn apply_version(
    engine: &Engine,
    req: &Req,
    g: &Guard,
    peer: &str,
    inc: Incoming,
    down: bool,
) -> Result<(u16, Option<i64>), ApiError> {
    let (t, id, version) = (inc.rtype.as_str(), inc.id.as_str(), inc.version);
    let Some(mut v) = inc.resource else {
        let done = g.write(engine, |tx| {
            if seen_in(tx, peer, t, id)? >= version {
                return Ok(None);
            }
            let d = engine.delete_in(tx, g, t, id, None)?;
            set_seen(tx, peer, t, id, version)?;
            Ok(Some(d))
        })?;
        return Ok(match done {
            Some(Some(s)) => (200, Some(s.version)),
            _ => (200, None),
        });
    };
    let me = engine.hub.node().map(|n| n.id.clone());
    if down && me.is_some_and(|m| node::route_of(&v).contains(&m)) {
        // Sent up from here in the first place: what the upstream pushes back is ours.
        g.write(engine, |tx| Ok(set_seen(tx, peer, t, id, version)?))?;
        return Ok((200, None));
    }
    let source = v["meta"]["source"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map_or_else(|| engine.config.default_source.clone(), String::from);
    node::receive(&mut v, peer, version, down);
    let sub = Req {
        method: "PUT".into(),
        segments: vec![t.to_string(), id.to_string()],
        query: Vec::new(),
        headers: Default::default(),
        body: serde_json::to_vec(&v).unwrap_or_default(),
        base: req.base.clone(),
        source: source.clone(),
        import_key: None,
        principal: req.principal.clone(),
        reason: None,
        from: req.from.clone(),
    };
    let v = engine.body_resource(&sub, t, Some(id))?;
    // A copy's references were checked where it was submitted; here its targets may come
    // later (a load's files in any order are forwarded in commit order) or never (a district
    // holds the copies pushed down to it, not the institutions and practitioners they name).
    // Every other rule of this node applies.
    let checker = engine.hub.replica_checker(|| {
        let mut rules = engine.checker.rules.clone();
        rules.disable("reference");
        hutong_quality::Checker::new(rules)
    });
    let (found, fp) = engine.govern_with(&checker, &sub, g, &v)?;
    let submission = Submission {
        findings: &found,
        fingerprint: &fp,
    };
    let route = node::route_of(&v);
    let done = g.write(engine, |tx| {
        if seen_in(tx, peer, t, id)? >= version {
            return Ok(None);
        }
        let (s, created) = engine.update_in(tx, g, &source, t, id, v.clone(), &submission, None)?;
        set_seen(tx, peer, t, id, version)?;
        if t == "Patient" && !down {
            locate(tx, id, &route)?;
        }
        Ok(Some((s, created)))
    })?;
    match done {
        Some((s, created)) => {
            engine.after_commit(g, &s)?;
            Ok((if created { 201 } else { 200 }, Some(s.version)))
        }
        None => Ok((200, None)),
    }
}

/// Records the nodes that hold `patient` (every node on its route).
fn locate(tx: &mut Tx<'_>, patient: &str, route: &[String]) -> Result<(), StoreError> {
    for n in route {
        tx.conn().exec(
            "INSERT INTO ex_locator (patient, node, updated) VALUES (?, ?, ?) \
             ON CONFLICT (patient, node) DO UPDATE SET updated = excluded.updated",
            &[
                Val::Text(patient.into()),
                Val::Text(n.clone()),
                Val::Int(now_ms()),
            ],
        )?;
    }
    Ok(())
}

/// `GET [base]/Patient/$record-locator?identifier=system|value` (or `patient=id`): which
/// nodes hold records of the person — every Patient linked to the same person, as far as
/// the reader may read them, and the nodes they came through.
pub(crate) fn record_locator(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("record-locator");
    let mut start: Vec<String> = Vec::new();
    for (k, v) in &req.query {
        match k.as_str() {
            "patient" => start.push(v.trim_start_matches("Patient/").to_string()),
            "identifier" => {
                let q = engine
                    .store
                    .parse_query("Patient", &[("identifier".to_string(), v.clone())], true)
                    .map_err(ApiError::from)?;
                let page = engine.store.search(&q, &g.scope)?;
                start.extend(page.matches.into_iter().map(|s| s.id));
            }
            _ => {
                return Err(ApiError::bad_request(format!(
                    "$record-locator takes identifier or patient, not '{k}'"
                )))
            }
        }
    }
    if req.query.is_empty() {
        return Err(ApiError::of(
            Code::Required,
            "$record-locator needs identifier (the resident ID number, system|value) or patient",
        ));
    }
    let mut patients = std::collections::BTreeSet::new();
    for p in start {
        patients.insert(p.clone());
        if let Some(person) = engine
            .matcher
            .person_of(&engine.store, &format!("Patient/{p}"))?
        {
            for x in engine.matcher.patients_of(&engine.store, &person)? {
                patients.insert(x.trim_start_matches("Patient/").to_string());
            }
        }
    }
    let mut params = Vec::new();
    for p in patients {
        let Some(s) = engine.store.read("Patient", &p, &g.scope)?.found() else {
            continue;
        };
        g.touch(format!("Patient/{}", s.id), s.shard);
        let here = engine.hub.node().map(|n| n.id.clone());
        let rows = engine.store.query_admin(
            "SELECT l.node, COALESCE(p.level, ''), COALESCE(p.base, '') FROM ex_locator l \
             LEFT JOIN ex_peer p ON p.node = l.node WHERE l.patient = ? ORDER BY l.node",
            &[Val::Text(p.clone())],
        )?;
        let mut holders: Vec<(String, String, String)> = rows
            .iter()
            .map(|r| {
                (
                    r[0].text().to_string(),
                    r[1].text().to_string(),
                    r[2].text().to_string(),
                )
            })
            .collect();
        if holders.is_empty() {
            // Submitted here, not forwarded from below.
            if let Some(h) = here {
                let level = engine.hub.node().map_or("", |n| n.level.as_str());
                holders.push((h, level.to_string(), req.base.clone()));
            }
        }
        for (n, level, base) in holders {
            let mut part = vec![
                json!({"name": "node", "valueString": n}),
                json!({"name": "patient", "valueReference": {"reference": format!("Patient/{p}")}}),
                json!({"name": "source", "valueUri": s.source}),
            ];
            if !level.is_empty() {
                part.push(json!({"name": "level", "valueCode": level}));
            }
            if !base.is_empty() {
                part.push(json!({"name": "base", "valueUrl": base}));
            }
            params.push(json!({"name": "location", "part": part}));
        }
    }
    Ok(Resp::json(
        200,
        json!({"resourceType": "Parameters", "parameter": params}),
    ))
}

/// `GET [base]/$node`: this node, its upstream link (backlog, lag, last error) and the nodes
/// that forward to it — for the console and operators.
pub(crate) fn status(engine: &Engine, g: &Guard) -> Result<Resp, ApiError> {
    g.act("node-status");
    if !g.principal.can(Capability::OverseeQuality) {
        return Err(forbidden(
            "The node's links are shown to quality officers, administrators and the platform",
        ));
    }
    Ok(Resp::json(200, status_json(engine)?))
}

/// The node's state as Parameters (see [`status`]).
pub fn status_json(engine: &Engine) -> Result<Value, ApiError> {
    let mut p = Vec::new();
    match engine.hub.node() {
        None => p.push(json!({"name": "level", "valueCode": "standalone"})),
        Some(n) => {
            p.push(json!({"name": "node", "valueString": n.id}));
            p.push(json!({"name": "level", "valueCode": n.level.as_str()}));
            if let Some(d) = &n.district {
                p.push(json!({"name": "district", "valueString": d}));
            }
            if let Some(u) = &n.upstream {
                let link = engine.hub.link();
                let backlog = engine
                    .store
                    .change_backlog(crate::exchange::upward::CONSUMER)?;
                let oldest = engine
                    .store
                    .changes_after(
                        engine
                            .store
                            .change_cursor(crate::exchange::upward::CONSUMER)?,
                        1,
                    )?
                    .first()
                    .map(|c| c.ts);
                let mut part = vec![
                    json!({"name": "url", "valueUrl": u.url}),
                    json!({"name": "backlog", "valueInteger": backlog}),
                    json!({"name": "lag-seconds", "valueDecimal": oldest.map_or(0.0, |ts| (now_ms() - ts).max(0) as f64 / 1000.0)}),
                    json!({"name": "forwarded", "valueInteger": link.forwarded}),
                    json!({"name": "rejected", "valueInteger": link.rejected}),
                ];
                if link.last_ok > 0 {
                    part.push(json!({"name": "last-forward", "valueInstant": hutong_fhir::date::format_instant(link.last_ok)}));
                }
                if let Some(e) = &link.last_error {
                    part.push(json!({"name": "error", "valueString": e}));
                }
                p.push(json!({"name": "upstream", "part": part}));
            }
        }
    }
    for r in engine.store.query_admin(
        "SELECT node, level, base, received, last_seen FROM ex_peer ORDER BY node",
        &[],
    )? {
        p.push(json!({"name": "downstream", "part": [
            {"name": "node", "valueString": r[0].text()},
            {"name": "level", "valueCode": r[1].text()},
            {"name": "base", "valueUrl": r[2].text()},
            {"name": "received", "valueInteger": r[3].int()},
            {"name": "last-seen", "valueInstant": hutong_fhir::date::format_instant(r[4].int())},
        ]}));
    }
    Ok(json!({"resourceType": "Parameters", "parameter": p}))
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
    let Some(secret) = crate::exchange::downward::secret(engine) else {
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
    let items = match node::incoming(&bundle) {
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
    let peer = crate::exchange::downward::upstream_id(engine);
    let out = apply(engine, &req, &peer, items, true);
    // A version that could not be written for a passing reason (the store busy) is sent
    // again; one the rules refuse is not (it would be refused again).
    let transient = out["entry"].as_array().into_iter().flatten().any(|e| {
        e["response"]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with('5'))
    });
    Resp::json(if transient { 503 } else { 200 }, out)
}

/// The Patients recorded as held at each node (for tests and the console).
pub fn located(store: &Store, patient: &str) -> Result<Vec<String>, StoreError> {
    Ok(store
        .query_admin(
            "SELECT node FROM ex_locator WHERE patient = ? ORDER BY node",
            &[Val::Text(patient.into())],
        )?
        .iter()
        .map(|r| r[0].text().to_string())
        .collect())
}
