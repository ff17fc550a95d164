//! From the change log to numbered events. A change concerns a subscription when the
//! subscription's own search, run under the subscriber's access decision over the ids just
//! changed, finds it: one query per filter and type for a whole batch of changes, with the
//! search semantics of the API (chains, modifiers, prefixes) and nothing the subscriber may
//! not read.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use hutong_access::principal::Principal;
use hutong_exchange::{topic, Spec};
use hutong_store::changelog::{self, Logged};
use hutong_store::sql::Val;
use hutong_store::{Lookup, Query, Scope, Stored};
use serde_json::Value;

use super::index::{prepare, Prepared};
use super::CONSUMER;
use crate::error::ApiError;
use crate::guard::Guard;
use crate::Engine;

/// A subscription that is not off, as `ex_sub` holds it.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub id: String,
    pub owner: Arc<Principal>,
    pub spec: Spec,
    pub status: String,
    pub events: i64,
    pub delivered: i64,
    pub failures: i64,
    pub next_try: i64,
    pub last_sent: i64,
    /// When it was created: changes older than that are not its events.
    pub created: i64,
}

pub(crate) fn live(engine: &Engine, only: Option<&str>) -> Result<Vec<Live>, ApiError> {
    let (cond, params) = match only {
        Some(id) => ("id = ?", vec![Val::Text(id.into())]),
        None => ("status <> 'off'", vec![]),
    };
    let rows = engine.store.query_admin(
        &format!("SELECT id, owner, spec, status, events, delivered, failures, next_try, last_sent, created, updated FROM ex_sub WHERE {cond}"),
        &params,
    )?;
    let mut out = Vec::new();
    for r in rows {
        // Read once per version of the row (the loop asks for them every few milliseconds).
        let (id, updated) = (r[0].text(), r[10].int());
        let cached = engine.hub.parsed(id, updated);
        let (owner, spec) = match cached {
            Some(x) => x,
            None => {
                let Ok(owner) = serde_json::from_str::<Principal>(r[1].text()) else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<Value>(r[2].text()) else {
                    continue;
                };
                // Accepted when written; a catalogue changed since may refuse it now.
                let Ok(spec) = Spec::parse(&v, super::topics()) else {
                    tracing::warn!(
                        subscription = id,
                        "A subscription no longer reads; it is skipped."
                    );
                    continue;
                };
                let x = (Arc::new(owner), Arc::new(spec));
                engine.hub.keep_parsed(id, updated, x.clone());
                x
            }
        };
        out.push(Live {
            id: r[0].text().to_string(),
            owner,
            spec: (*spec).clone(),
            status: r[3].text().to_string(),
            events: r[4].int(),
            delivered: r[5].int(),
            failures: r[6].int(),
            next_try: r[7].int(),
            last_sent: r[8].int(),
            created: r[9].int(),
        });
    }
    Ok(out)
}

/// Reads up to `limit` changes after the dispatcher's cursor and numbers the events they
/// raise; returns how many changes it read (0: nothing new).
pub fn dispatch_once(engine: &Engine, limit: usize) -> Result<usize, ApiError> {
    let cursor = engine.store.change_cursor(CONSUMER)?;
    let rows = engine.store.changes_after(cursor, limit)?;
    let Some(last) = rows.last().map(|r| r.at) else {
        return Ok(0);
    };
    let subs = live(engine, None)?;
    let mut ctx = Context::default();
    let mut tokens = Tokens::default();
    let mut sets = HashMap::new();
    let mut found: Vec<(String, Vec<&Logged>)> = Vec::new();
    for sub in &subs {
        // A failure of the database leaves the cursor where it is: the batch is read again,
        // rather than its events lost. A filter that no longer searches (a definition changed
        // since it was accepted) would fail every time: that subscription alone is skipped.
        match matches(engine, sub, &rows, &mut ctx, &mut tokens, &mut sets) {
            Ok(hits) if !hits.is_empty() => {
                found.push((sub.id.clone(), hits.into_iter().map(|i| &rows[i]).collect()))
            }
            Ok(_) => {}
            Err(e) if e.status < 500 => {
                tracing::warn!(subscription = %sub.id, error = %e.message(), "A subscription's filter no longer searches; it is skipped.")
            }
            Err(e) => return Err(e),
        }
    }
    let mut moved = false;
    engine.store.with_admin_tx(|c| {
        // Another process took these rows first (several API nodes on one database).
        if changelog::lock_cursor(c, CONSUMER)? != cursor {
            moved = true;
            return Ok(());
        }
        for (sub, hits) in &found {
            let sql = format!(
                "SELECT events FROM ex_sub WHERE id = ?{}",
                c.dialect().lock_row()
            );
            let r = c.query(&sql, &[Val::Text(sub.clone())])?;
            let Some(r) = r.first() else { continue };
            let mut n = r[0].int();
            let rows: Vec<Vec<Val>> = hits
                .iter()
                .map(|l| {
                    n += 1;
                    vec![
                        Val::Text(sub.clone()),
                        Val::Int(n),
                        Val::Int(l.ts),
                        Val::Text(l.rtype.clone()),
                        Val::Text(l.id.clone()),
                        Val::Int(l.version),
                        Val::Int(l.deleted as i64),
                    ]
                })
                .collect();
            c.insert_rows(
                "ex_event",
                &["sub", "num", "ts", "rtype", "rid", "version", "deleted"],
                &rows,
            )?;
            c.exec(
                "UPDATE ex_sub SET events = ? WHERE id = ?",
                &[Val::Int(n), Val::Text(sub.clone())],
            )?;
        }
        changelog::set_cursor(c, CONSUMER, last)
    })?;
    if moved {
        return Ok(0);
    }
    Ok(rows.len())
}

/// What one dispatch looks up once: districts of residents by shard, institutions'
/// Organization ids.
#[derive(Default)]
struct Context {
    district: HashMap<i64, Vec<String>>,
    org: HashMap<String, Option<String>>,
}

impl Context {
    fn districts(&mut self, engine: &Engine, shard: i64) -> Result<&[String], ApiError> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.district.entry(shard) {
            let mut out = Vec::new();
            let owner = engine.store.query_admin(
                "SELECT patient FROM shard_owner WHERE shard = ?",
                &[Val::Int(shard)],
            )?;
            if let Some(p) = owner.first() {
                if let Lookup::Found(s) = engine.store.read("Patient", p[0].text(), &Scope::All)? {
                    let v = s.json()?;
                    for a in v["address"].as_array().into_iter().flatten() {
                        if let Some(d) = a["district"].as_str() {
                            out.push(d.to_string());
                        }
                    }
                }
            }
            slot.insert(out);
        }
        Ok(&self.district[&shard])
    }

    fn org_of(&mut self, engine: &Engine, source: &str) -> Result<Option<String>, ApiError> {
        if !self.org.contains_key(source) {
            let id = crate::consent::organization_of(engine, source)?
                .and_then(|o| o["id"].as_str().map(String::from));
            self.org.insert(source.to_string(), id);
        }
        Ok(self.org[source].clone())
    }
}

/// Whether a Task is assigned to `source`'s institution (`owner` by reference to its
/// Organization, or by its USCC identifier).
pub(crate) fn owned_by(task: &Value, source: &str, org: Option<&str>) -> bool {
    let owner = &task["owner"];
    let by_ref =
        org.is_some_and(|o| owner["reference"].as_str() == Some(&format!("Organization/{o}")));
    let by_id = source
        .strip_prefix("urn:hutong:org:")
        .is_some_and(|u| owner["identifier"]["value"].as_str() == Some(u));
    by_ref || by_id
}

pub(crate) fn is_follow_up_list(task: &Value) -> bool {
    task["code"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["code"] == crate::coordination::contracts::FOLLOW_UP_LIST)
}

/// One plain token parameter of a filter: its name and the (system, code) pairs it accepts.
type TokenFilter = (String, Vec<(Option<String>, String)>);

/// A filter's plain token parameters (`code=system|code`, `category=x,y` — no modifier, no
/// chain) as (parameter, accepted (system, code) pairs): a resource none of whose index
/// tokens meet one of them cannot match, and is not searched for. Other parameters decide
/// in the search alone.
fn token_prefilter(rtype: &str, params: &[(String, String)]) -> Vec<TokenFilter> {
    let defs = hutong_fhir::Definitions::get();
    params
        .iter()
        .filter(|(k, _)| !k.contains(':') && !k.contains('.') && !k.starts_with('_'))
        .filter(|(k, _)| {
            defs.param(rtype, k)
                .is_some_and(|d| d.kind == hutong_fhir::defs::ParamType::Token)
        })
        .map(|(k, v)| {
            let accepted = v
                .split(',')
                .map(|one| match one.split_once('|') {
                    Some((s, c)) => (Some(s.to_string()), c.to_string()),
                    None => (None, one.to_string()),
                })
                .collect();
            (k.clone(), accepted)
        })
        .collect()
}

/// A change's logged tokens as a set, read once per batch and shared by every
/// subscription: `(param, system, code)`, and `(param, ANY, code)` for filters without a
/// system.
type TokenSet = std::collections::HashSet<(String, String, String)>;

const ANY_SYSTEM: &str = "\u{0}";

fn token_set(logged: &str) -> TokenSet {
    let mut set = TokenSet::new();
    for (p, s, c) in hutong_store::changelog::parse_tokens(logged) {
        set.insert((p.to_string(), s.to_string(), c.to_string()));
        set.insert((p.to_string(), ANY_SYSTEM.to_string(), c.to_string()));
    }
    set
}

/// Whether a change's tokens meet every plain token parameter of a filter.
fn logged_match(set: &TokenSet, pre: &[TokenFilter]) -> bool {
    pre.iter().all(|(param, accepted)| {
        accepted.iter().any(|(s, c)| {
            set.contains(&(
                param.clone(),
                s.clone().unwrap_or_else(|| ANY_SYSTEM.to_string()),
                c.clone(),
            ))
        })
    })
}

/// Whether `body` contains, as a JSON string, at least one code each prefilter accepts.
fn mentions_any(body: &[u8], pre: &[TokenFilter]) -> bool {
    pre.iter().all(|(_, accepted)| {
        accepted.iter().any(|(_, code)| {
            // A code JSON would escape is not looked for literally.
            if code.contains(['"', '\\']) || code.chars().any(char::is_control) {
                return true;
            }
            let quoted = format!("\"{code}\"");
            body.windows(quoted.len()).any(|w| w == quoted.as_bytes())
        })
    })
}

/// The changed resources' bodies and (once a subscription needs them) token index
/// entries, read once per batch for every subscription that prefilters on tokens.
#[derive(Default)]
struct Tokens(HashMap<(String, String), Option<Cached>>);

struct Cached {
    stored: Stored,
    entries: Option<Vec<hutong_fhir::index::Entry>>,
}

impl Tokens {
    /// The current version of `rtype/id` and what was derived from it, read once per batch
    /// (`None`: gone since).
    fn entry(
        &mut self,
        engine: &Engine,
        rtype: &str,
        id: &str,
    ) -> Result<Option<&mut Cached>, ApiError> {
        let key = (rtype.to_string(), id.to_string());
        if !self.0.contains_key(&key) {
            let cached = match engine.store.read(rtype, id, &Scope::All)? {
                Lookup::Found(s) if !s.deleted => Some(Cached {
                    stored: s,
                    entries: None,
                }),
                _ => None,
            };
            self.0.insert(key.clone(), cached);
        }
        Ok(self.0.get_mut(&key).and_then(Option::as_mut))
    }

    /// The current version (read once per batch).
    fn stored(
        &mut self,
        engine: &Engine,
        rtype: &str,
        id: &str,
    ) -> Result<Option<&Stored>, ApiError> {
        Ok(self.entry(engine, rtype, id)?.map(|c| &c.stored))
    }

    fn may_match(
        &mut self,
        engine: &Engine,
        rtype: &str,
        id: &str,
        pre: &[TokenFilter],
    ) -> Result<bool, ApiError> {
        if pre.is_empty() {
            return Ok(true);
        }
        let Some(c) = self.entry(engine, rtype, id)? else {
            // Gone since: the search will say.
            return Ok(true);
        };
        // A body that does not contain an accepted code anywhere cannot match: decided
        // without parsing it (most changes, for most subscriptions).
        if !mentions_any(&c.stored.body, pre) {
            return Ok(false);
        }
        if c.entries.is_none() {
            let v: Value = serde_json::from_slice(&c.stored.body)
                .map_err(|e| ApiError::of(crate::error::Code::Internal, e.to_string()))?;
            c.entries = Some(hutong_fhir::index::extract_kind(
                rtype,
                &v,
                hutong_fhir::defs::ParamType::Token,
            ));
        }
        let entries = c.entries.as_deref().unwrap_or_default();
        Ok(pre.iter().all(|(param, accepted)| {
            entries.iter().any(|e| {
                e.param == param
                    && matches!(&e.value, hutong_fhir::index::IndexValue::Token { system, code, .. }
                        if accepted.iter().any(|(s, c)| c == code && s.as_deref().is_none_or(|s| s == system)))
            })
        }))
    }
}

/// The indexes into `rows` of the changes `sub` is told about.
fn matches(
    engine: &Engine,
    sub: &Live,
    rows: &[Logged],
    ctx: &mut Context,
    tokens: &mut Tokens,
    sets: &mut HashMap<usize, TokenSet>,
) -> Result<BTreeSet<usize>, ApiError> {
    // The subscriber's access decision, made once a change may concern it.
    let guard: std::cell::OnceCell<Guard> = std::cell::OnceCell::new();
    let g = || -> &Guard {
        guard.get_or_init(|| {
            Guard::new(
                engine,
                sub.owner.clone(),
                None,
                None,
                format!("Subscription/{}", sub.id),
            )
        })
    };
    let topic = sub
        .spec
        .topic
        .as_deref()
        .and_then(|t| super::topics().get(t));
    let owned = sub
        .spec
        .topic
        .as_deref()
        .filter(|t| *t == topic::TASK_ASSIGNED || *t == topic::FOLLOW_UP_DUE);
    let mut hits = BTreeSet::new();
    for f in &sub.spec.filters {
        let p: Prepared = prepare(&f.rtype, &f.query)?;
        let mut by_type: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            let fires =
                topic.is_none_or(|t| t.fires_on(&r.rtype) && (!r.deleted || t.fires_on_delete()));
            // Subscriptions themselves are never news: they carry their owners' secrets.
            let fires = fires && r.rtype != "Subscription";
            if fires && r.ts >= sub.created && (p.rtype == "*" || p.rtype == r.rtype) {
                by_type.entry(r.rtype.as_str()).or_default().push(i);
            }
        }
        for (t, idx) in by_type {
            let mut visible: HashMap<String, Stored> = HashMap::new();
            let pre = token_prefilter(t, &p.params);
            let mut live_ids: Vec<&str> = Vec::new();
            for i in &idx {
                let r = &rows[*i];
                let may = match &r.tokens {
                    _ if pre.is_empty() => true,
                    // The change log carries the version's tokens: no read.
                    Some(logged) => {
                        let set = sets.entry(*i).or_insert_with(|| token_set(logged));
                        logged_match(set, &pre)
                    }
                    None => tokens.may_match(engine, t, &r.id, &pre)?,
                };
                if !r.deleted && may {
                    live_ids.push(r.id.as_str());
                }
            }
            live_ids.sort_unstable();
            live_ids.dedup();
            // Every parameter a plain token: decided on tokens alone (a deletion's too, on the
            // version it deleted).
            let decided = !pre.is_empty() && pre.len() == p.params.len();
            if live_ids.is_empty()
                && (idx.iter().all(|i| !rows[*i].deleted) || !(p.params.is_empty() || decided))
            {
                continue;
            }
            // A Task assigned to the subscriber is theirs to be told about, whoever filed it.
            let scope = if owned.is_some() {
                Scope::All
            } else {
                g().scope.clone()
            };
            // Every parameter a plain token the prefilter decided exactly: what remains is the
            // access decision, on the version already read.
            if decided && owned.is_none() {
                let g = g();
                for id in &live_ids {
                    if let Some(s) = tokens.stored(engine, t, id)? {
                        if g.scope.permits_stored(s) {
                            visible.insert(id.to_string(), s.clone());
                        }
                    }
                }
            }
            let live_ids: Vec<&str> = if decided && owned.is_none() {
                Vec::new()
            } else {
                live_ids
            };
            for chunk in live_ids.chunks(200) {
                let mut params = p.params.clone();
                params.push(("_id".into(), chunk.join(",")));
                params.push(("_count".into(), "200".into()));
                let q = Query::parse(t, &params, true)?;
                for s in engine.store.search(&q, &scope)?.matches {
                    visible.insert(s.id.clone(), s);
                }
            }
            for i in idx {
                let r = &rows[i];
                let ok = if r.deleted {
                    // A deletion is no longer searched: it matches a filter on the type alone,
                    // or one of plain tokens that the version it deleted met — if the
                    // subscriber could read that version.
                    let before = match r.version > 1
                        && (p.params.is_empty() || decided)
                        && owned.is_none()
                    {
                        true => {
                            match engine
                                .store
                                .vread(&r.rtype, &r.id, r.version - 1, &g().scope)?
                            {
                                Lookup::Found(s) if !s.deleted => Some(s),
                                _ => None,
                            }
                        }
                        false => None,
                    };
                    match before {
                        None => false,
                        Some(_) if p.params.is_empty() => true,
                        Some(s) => {
                            let entries = hutong_fhir::index::extract_kind(
                                &r.rtype,
                                &s.json()?,
                                hutong_fhir::defs::ParamType::Token,
                            );
                            logged_match(
                                &token_set(&hutong_store::changelog::tokens_of(&entries)),
                                &pre,
                            )
                        }
                    }
                } else {
                    match visible.get(&r.id) {
                        None => false,
                        Some(s) if owned.is_some() => {
                            let v = s.json()?;
                            let inst = sub.owner.institution.as_deref().unwrap_or("");
                            let org = ctx.org_of(engine, inst)?;
                            owned_by(&v, inst, org.as_deref())
                                && (owned != Some(topic::FOLLOW_UP_DUE) || is_follow_up_list(&v))
                        }
                        Some(_) => true,
                    }
                };
                let ok = ok
                    && (p.districts.is_empty() || {
                        let ds = ctx.districts(engine, r.shard)?;
                        ds.iter().any(|d| p.districts.contains(d))
                    });
                if ok {
                    hits.insert(i);
                }
            }
        }
    }
    Ok(hits)
}

/// Moves the cursor to the end of the log when no subscription is live (nothing to number),
/// so a store that has none does not keep the log, and prunes what every consumer read.
pub fn skip_when_idle(engine: &Engine) -> Result<(), ApiError> {
    // The changes first, the subscriptions after: one created after this count committed
    // after every change read here, and those are not its events.
    let cursor = engine.store.change_cursor(CONSUMER)?;
    let rows = engine.store.changes_after(cursor, 100_000)?;
    let n: i64 = engine
        .store
        .query_admin("SELECT COUNT(*) FROM ex_sub WHERE status <> 'off'", &[])?
        .first()
        .map_or(0, |r| r[0].int());
    if n == 0 {
        if let Some(last) = rows.last().map(|r| r.at) {
            engine.store.with_admin_tx(|c| {
                if changelog::lock_cursor(c, CONSUMER)? == cursor {
                    changelog::set_cursor(c, CONSUMER, last)?;
                }
                Ok(())
            })?;
        }
    }
    engine.store.prune_changes()?;
    super::prune_events(&engine.store, hutong_fhir::date::now_ms())?;
    Ok(())
}
