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

use hutong_access::principal::{Capability, Kind};
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
CREATE TABLE IF NOT EXISTS ex_upperson (patient TEXT PRIMARY KEY, person TEXT NOT NULL);
";

pub fn open_tables(store: &Store) -> Result<(), StoreError> {
    store.create_tables(TABLES)
}

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

/// Applies the versions a peer sent, in order; the answer is a `batch-response` with one
/// entry per version (a rejection carries the intake rules' OperationOutcome, for the sender
/// to route back to the institution). The versions the rules accept are written in one
/// transaction; should it fail, each is written alone, so that one that cannot be does not
/// hold back the others.
pub(crate) fn apply(
    engine: &Engine,
    req: &Req,
    peer: &str,
    items: Vec<Result<Incoming, node::EntryError>>,
    down: bool,
) -> Value {
    let action = if down {
        "node-push-receive"
    } else {
        "node-forward-receive"
    };
    let g = Guard::new(
        engine,
        req.principal.clone(),
        None,
        req.from.clone(),
        format!("{} versions from node {peer}", items.len()),
    );
    g.act(action);
    let mut answers: Vec<Option<Answer>> = Vec::new();
    let mut steps: Vec<(usize, Step)> = Vec::new();
    let mut unchecked: Vec<(usize, Box<Put>)> = Vec::new();
    for item in items {
        let pos = answers.len();
        answers.push(match item {
            Err(e) => Some(Err(ApiError::bad_request(e.message)
                .with_expression(format!("Bundle.entry[{}]", e.index)))),
            Ok(inc) => match prepare(engine, peer, inc, down) {
                Ok(Step::Applied) => Some(Ok((200, None))),
                Ok(Step::Put(p)) => {
                    unchecked.push((pos, p));
                    None
                }
                Ok(step) => {
                    steps.push((pos, step));
                    None
                }
                Err(e) => Some(Err(e)),
            },
        });
    }
    for (pos, r) in govern(engine, &g, unchecked) {
        match r {
            Ok(p) => steps.push((pos, Step::Put(p))),
            Err(e) => answers[pos] = Some(Err(e)),
        }
    }
    steps.sort_by_key(|(pos, _)| *pos);
    let together = g.write(engine, |tx| {
        let mut out = Vec::with_capacity(steps.len());
        for (_, step) in &steps {
            out.push(write_step(engine, tx, &g, peer, step, down)?);
        }
        Ok(out)
    });
    let mut written = Vec::new();
    match together {
        Ok(out) => {
            for ((pos, _), w) in steps.iter().zip(out) {
                written.push((*pos, w));
            }
        }
        Err(_) => {
            for (pos, step) in &steps {
                let one = Guard::new(
                    engine,
                    req.principal.clone(),
                    None,
                    req.from.clone(),
                    format!("{} from node {peer}", step.what()),
                );
                one.act(action);
                let r = one.write(engine, |tx| write_step(engine, tx, &one, peer, step, down));
                match r {
                    Ok(w) => {
                        one.finish(engine, 200, None);
                        written.push((*pos, w));
                    }
                    Err(e) => {
                        one.finish(engine, e.status, Some(e.message().to_string()));
                        answers[*pos] = Some(Err(e));
                    }
                }
            }
        }
    }
    for (pos, w) in written {
        answers[pos] = Some(match w {
            Some((s, created)) => engine
                .after_commit(&g, &s)
                .map(|()| (if created { 201 } else { 200 }, Some(s.version))),
            None => Ok((200, None)),
        });
    }
    g.finish(engine, 200, None);
    let entries: Vec<Value> = answers
        .into_iter()
        .map(|a| match a.unwrap_or(Ok((200, None))) {
            Ok((status, version)) => {
                let mut resp = json!({"status": status.to_string()});
                if let Some(v) = version {
                    resp["etag"] = json!(format!("W/\"{v}\""));
                }
                json!({"response": resp})
            }
            Err(e) => json!({"response": {"status": e.status.to_string(),
                                          "outcome": e.outcome.to_json()}}),
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "batch-response", "entry": entries})
}

/// What a version's entry in the answer says: its status and the version written here, or
/// why it was refused.
type Answer = Result<(u16, Option<i64>), ApiError>;

/// What one received version comes to, once checked.
enum Step {
    /// Applied before (a resend): nothing to do.
    Applied,
    /// A copy of what this node itself sent up, pushed back down: only noted as seen.
    Ours {
        t: String,
        id: String,
        version: i64,
    },
    Delete {
        t: String,
        id: String,
        version: i64,
    },
    Put(Box<Put>),
}

struct Put {
    t: String,
    id: String,
    version: i64,
    v: Value,
    source: String,
    found: Vec<hutong_quality::Finding>,
    fingerprint: String,
    route: Vec<String>,
}

impl Step {
    fn what(&self) -> String {
        match self {
            Step::Applied => String::new(),
            Step::Ours { t, id, version } | Step::Delete { t, id, version } => {
                format!("{t}/{id} version {version}")
            }
            Step::Put(p) => format!("{}/{} version {}", p.t, p.id, p.version),
        }
    }
}

/// Reads one version from `peer` outside the transaction: the types that move, a resend,
/// a copy of this node's own; a new version is stamped as received here (its rules run
/// with the others from the same institution, in [`govern`]).
fn prepare(engine: &Engine, peer: &str, inc: Incoming, down: bool) -> Result<Step, ApiError> {
    let (t, id, version) = (inc.rtype.clone(), inc.id.clone(), inc.version);
    if !moves(&t) {
        return Err(ApiError::of(
            Code::BusinessRule,
            format!("{t} resources are kept by each platform and not taken from another node"),
        )
        .with_expression(format!("Bundle.entry[{}]", inc.index)));
    }
    let rows = engine.store.query_admin(SEEN, &seen_sql(peer, &t, &id))?;
    if rows.first().is_some_and(|r| r[0].int() >= version) {
        return Ok(Step::Applied);
    }
    let Some(mut v) = inc.resource else {
        return Ok(Step::Delete { t, id, version });
    };
    let me = engine.hub.node().map(|n| n.id.clone());
    if down && me.is_some_and(|m| node::route_of(&v).contains(&m)) {
        return Ok(Step::Ours { t, id, version });
    }
    let source = v["meta"]["source"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map_or_else(|| engine.config.default_source.clone(), String::from);
    node::receive(&mut v, peer, version, down);
    crate::wire::check_resource(&v, &t, Some(&id))?;
    engine.intake(&mut v, &source, now_ms());
    let route = node::route_of(&v);
    Ok(Step::Put(Box::new(Put {
        t,
        id,
        version,
        v,
        source,
        found: Vec::new(),
        fingerprint: String::new(),
        route,
    })))
}

/// Runs this node's intake rules over the new versions, those of one institution together
/// (as a transaction Bundle of theirs would be): each accepted with its findings, or
/// refused — quarantined here under that institution, and answered.
///
/// A copy's references were checked where it was submitted; here their targets may come
/// later (a load's files in any order are forwarded in commit order) or never (a district
/// holds the copies pushed down to it, not the institutions and practitioners they name).
/// Every other rule of this node applies.
fn govern(
    engine: &Engine,
    g: &Guard,
    puts: Vec<(usize, Box<Put>)>,
) -> Vec<(usize, Result<Box<Put>, ApiError>)> {
    let checker = engine.hub.replica_checker(|| {
        let mut rules = engine.checker.rules.clone();
        rules.disable("reference");
        hutong_quality::Checker::new(rules)
    });
    let mut by_source: std::collections::BTreeMap<String, Vec<(usize, Box<Put>)>> =
        Default::default();
    for (pos, p) in puts {
        by_source
            .entry(p.source.clone())
            .or_default()
            .push((pos, p));
    }
    let mut out = Vec::new();
    for (source, group) in by_source {
        let mut filed = Vec::new();
        for (pos, p) in group {
            match g.may_file_now(&engine.store, &p.t, &p.v) {
                Ok(()) => filed.push((pos, p)),
                Err(e) => out.push((pos, Err(e))),
            }
        }
        let local = filed
            .iter()
            .map(|(_, p)| (p.t.clone(), p.id.clone()))
            .collect();
        let values: Vec<&Value> = filed.iter().map(|(_, p)| &p.v).collect();
        let checked = crate::governance::intake::check(
            &engine.store,
            &checker,
            &g.filing_scope(),
            &source,
            &values,
            local,
            true,
        );
        let mut checked = match checked {
            Ok(c) => c,
            Err(e) => {
                out.extend(filed.into_iter().map(|(pos, _)| (pos, Err(e.clone()))));
                continue;
            }
        };
        for ((pos, mut p), (found, fingerprint)) in filed.into_iter().zip(
            std::mem::take(&mut checked.findings)
                .into_iter()
                .zip(std::mem::take(&mut checked.fingerprints)),
        ) {
            if hutong_quality::rejects(&found) {
                let body = serde_json::to_vec(&p.v).unwrap_or_default();
                let path = format!("{}/{}", p.t, p.id);
                out.push((
                    pos,
                    Err(engine.quarantine(&source, "PUT", &path, &body, None, &found)),
                ));
            } else {
                p.found = found;
                p.fingerprint = fingerprint;
                out.push((pos, Ok(p)));
            }
        }
    }
    out
}

/// Writes one checked version in `tx` (unless it was applied meanwhile) and notes it seen:
/// what was stored, and whether it was created.
fn write_step(
    engine: &Engine,
    tx: &mut Tx<'_>,
    g: &Guard,
    peer: &str,
    step: &Step,
    down: bool,
) -> Result<Option<(hutong_store::Stored, bool)>, ApiError> {
    match step {
        Step::Applied => Ok(None),
        Step::Ours { t, id, version } => {
            set_seen(tx, peer, t, id, *version)?;
            Ok(None)
        }
        Step::Delete { t, id, version } => {
            if seen_in(tx, peer, t, id)? >= *version {
                return Ok(None);
            }
            let d = engine.delete_in(tx, g, t, id, None)?;
            set_seen(tx, peer, t, id, *version)?;
            Ok(d.map(|s| (s, false)))
        }
        Step::Put(p) => {
            if seen_in(tx, peer, &p.t, &p.id)? >= p.version {
                return Ok(None);
            }
            let submission = Submission {
                findings: &p.found,
                fingerprint: &p.fingerprint,
            };
            let (s, created) = engine.update_in(
                tx,
                g,
                &p.source,
                &p.t,
                &p.id,
                p.v.clone(),
                &submission,
                None,
            )?;
            set_seen(tx, peer, &p.t, &p.id, p.version)?;
            if p.t == "Patient" && !down {
                locate(tx, &p.id, &p.route)?;
            }
            Ok(Some((s, created)))
        }
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
        // Only from a Patient the reader may read: whose person a hidden one is would show.
        if engine
            .store
            .read("Patient", &p, &g.scope)?
            .found()
            .is_none()
        {
            continue;
        }
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
                let backlog = engine.store.change_backlog(super::UPSTREAM_CONSUMER)?;
                let oldest = engine
                    .store
                    .changes_after(engine.store.change_cursor(super::UPSTREAM_CONSUMER)?, 1)?
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
                // What the node held when it joined is still being sent.
                if engine.store.meta(super::BACKFILL_KEY)?.as_deref() == Some(super::PENDING) {
                    part.push(json!({"name": "backfill", "valueCode": "in-progress"}));
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
