//! Work orders (工单) as FHIR `Task`s: opened by a resident, a clinician or an operator about a
//! specific resource, or by the platform itself (repeated rule failures, reconciliation gaps,
//! suspected wrong-patient filing); routed to the institution that submitted the data — the
//! Task is filed under that institution as its source, so the access decision lets it read
//! its queue — and worked through the lifecycle of [`hutong_quality::workorder`] by
//! operations (`Task/{id}/$accept` …), never by writing the Task directly. Past its due date
//! an order is escalated to the platform's quality officers.
//!
//! `qc_work_order` indexes the orders (state, due date, who reported) for the queues and
//! the escalation sweep; it is written in the same transaction as the Task.

use hutong_access::principal::{Capability, Kind};
use hutong_fhir::date::{format_instant, now_ms};
use hutong_quality::workorder::{transition, Action, Category, Parties, Policy, State};
use hutong_store::sql::Val;
use hutong_store::Scope;
use serde_json::{json, Value};

use crate::engine::Engine;
use crate::error::{forbidden, ApiError};
use crate::guard::Guard;
use crate::wire::Paging;
use crate::wire::{check_id, Params};
use crate::wire::{Req, Resp};

use crate::error::Code;
use crate::governance::orders::create_in;
use crate::governance::orders::state_json;
use crate::governance::orders::NewOrder;
use crate::governance::orders::WO_CS;

/// Quality officers and administrators (and the platform's own services).
pub(crate) fn operator(g: &Guard) -> bool {
    g.principal.can(Capability::OverseeQuality)
}

fn priority_param(p: &Params, default: &str) -> Result<String, ApiError> {
    let v = p.string("priority").unwrap_or_else(|| default.to_string());
    if Policy::PRIORITIES.contains(&v.as_str()) {
        Ok(v)
    } else {
        Err(ApiError::bad_request(format!(
            "priority '{v}' is not one of {}",
            Policy::PRIORITIES.join(", ")
        )))
    }
}

/// `POST $work-order` (Parameters: `focus` the questioned resource, `category`,
/// `description`, optional `priority`): someone reports a problem with a resource they can
/// see; the order goes to the institution that submitted it.
pub fn report(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("work-order-open");
    let p = Params::parse(req, "$work-order")?;
    let focus = p.string("focus").or_else(|| {
        p.all("focus")
            .find_map(|x| x["valueReference"]["reference"].as_str().map(String::from))
    });
    let focus = focus.ok_or_else(|| {
        ApiError::of(
            Code::Required,
            "$work-order needs 'focus': the resource the problem is about (Type/id)",
        )
    })?;
    let (t, id) = focus
        .split_once('/')
        .filter(|(t, id)| hutong_fhir::Definitions::get().is_resource_type(t) && !id.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("focus must be a reference Type/id, not '{focus}'"))
        })?;
    check_id(id)?;
    let code = p.required("category", "$work-order")?;
    let category = Category::parse(&code)
        .filter(|c| !c.automatic() || operator(g))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "category '{code}' is not one of not-mine, incorrect, duplicate, missing, other"
            ))
        })?;
    let description = p.required("description", "$work-order")?;
    if description.chars().count() > 4000 {
        return Err(ApiError::bad_request(
            "description is limited to 4000 characters",
        ));
    }
    match g.principal.kind {
        Kind::Resident | Kind::Clinician | Kind::System | Kind::Platform => {}
        Kind::Operator if operator(g) => {}
        Kind::Operator => {
            return Err(forbidden(
                "Operators open work orders as quality officers or administrators",
            ))
        }
    }
    // The reporter must be able to see what they report: the same decision as a read.
    let stored = engine.visible(g, t, id)?;
    if hutong_access::decision::PLATFORM_TYPES.contains(&t) || stored.source.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{t} resources are the platform's own; work orders go to the institution that submitted data"
        )));
    }
    let default_priority = match category {
        Category::NotMine | Category::WrongPatient => "urgent",
        _ => "routine",
    };
    let order = NewOrder {
        category,
        priority: priority_param(&p, default_priority)?,
        description,
        reporter: g.principal.label(),
        rule: None,
        inputs: Vec::new(),
    };
    let owner = stored.source.clone();
    let name = crate::consent::institution_name(engine, &owner);
    let policy = &engine.checker.rules.work_orders;
    let s = g.write(engine, |tx| {
        Ok(create_in(
            tx,
            policy,
            &order,
            &owner,
            name.clone(),
            Some(&stored),
        )?)
    })?;
    g.note(format!(
        "work order Task/{} about {t}/{id} to {owner}",
        s.id
    ));
    let mut r = Resp::json(
        201,
        serde_json::from_slice(&g.release(&s)).unwrap_or(Value::Null),
    );
    r.headers.push((
        "Location".into(),
        format!("{}/Task/{}/_history/{}", req.base, s.id, s.version),
    ));
    Ok(r)
}

/// The index row of a work order.
struct Row {
    src: String,
    state: State,
    reporter: String,
}

fn row(engine: &Engine, id: &str) -> Result<Row, ApiError> {
    let rows = engine.store.query_admin(
        "SELECT src, state, reporter FROM qc_work_order WHERE id = ?",
        &[Val::Text(id.into())],
    )?;
    let r = rows
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("Task/{id} is not a work order")))?;
    Ok(Row {
        src: r[0].text().to_string(),
        state: State::parse(r[1].text()).unwrap_or(State::Open),
        reporter: r[2].text().to_string(),
    })
}

/// `Task/{id}/$accept | $start | $resolve | $reject | $close | $reopen | $comment`
/// (Parameters: `note`; `reason` to reject or reopen; `corrected`, the corrected resource or
/// version, to resolve).
pub fn act(engine: &Engine, req: &Req, g: &Guard, id: &str, op: &str) -> Result<Resp, ApiError> {
    let action = Action::parse(op).expect("routed only for known actions");
    g.act(&format!("work-order-{op}"));
    check_id(id)?;
    let r = row(engine, id)?;
    let p = Params::parse(req, &format!("${op}"))?;
    let who = Parties {
        owner: matches!(g.principal.kind, Kind::System | Kind::Clinician)
            && g.principal.institution.as_deref() == Some(r.src.as_str()),
        reporter: g.principal.label() == r.reporter,
        operator: operator(g),
    };
    let to = transition(r.state, action, who).map_err(|e| match e {
        hutong_quality::workorder::Refused::State { .. } => {
            ApiError::of(Code::Conflict, format!("Task/{id}: {e}"))
        }
        hutong_quality::workorder::Refused::Party(m) => forbidden(m),
    })?;
    let note = p.string("note");
    let reason = p.string("reason");
    let text = match action {
        Action::Reject | Action::Reopen => Some(
            reason
                .clone()
                .ok_or_else(|| ApiError::of(Code::Required, format!("${op} needs a 'reason'")))?,
        ),
        Action::Comment => Some(
            note.clone()
                .or(reason.clone())
                .ok_or_else(|| ApiError::of(Code::Required, "$comment needs a 'note'"))?,
        ),
        Action::Resolve => Some(note.clone().ok_or_else(|| {
            ApiError::of(
                Code::Required,
                "$resolve needs a 'note' saying what was corrected",
            )
        })?),
        _ => note.clone(),
    };
    let corrected = match (action, p.string("corrected")) {
        (Action::Resolve, Some(c)) => Some(corrected_ref(engine, &c)?),
        (_, Some(_)) => {
            return Err(ApiError::bad_request(
                "'corrected' is given when resolving a work order",
            ))
        }
        _ => None,
    };
    let stored = engine
        .store
        .read("Task", id, &Scope::All)?
        .found()
        .filter(|s| !s.deleted)
        .ok_or_else(|| ApiError::not_found(format!("Task/{id} is not known")))?;
    let mut t = stored.json()?;
    let now = now_ms();
    let ended_rejected = t["status"] == "rejected";
    t["status"] = json!(to.task_status(ended_rejected || action == Action::Reject));
    t["businessStatus"] = state_json(to);
    t["lastModified"] = json!(format_instant(now));
    if let Some(text) = &text {
        let label = match action {
            Action::Comment => String::new(),
            _ => format!("[{}] ", to.label()),
        };
        push(
            &mut t,
            "note",
            json!({"authorString": g.principal.label(),
            "time": format_instant(now), "text": format!("{label}{text}")}),
        );
    }
    match action {
        Action::Reject => {
            t["statusReason"] = json!({"text": text.clone().unwrap_or_default()});
        }
        Action::Reopen => {
            t["statusReason"] = json!({"text": text.clone().unwrap_or_default()});
            // A reopened order gets a fresh deadline.
            let due = engine
                .checker
                .rules
                .work_orders
                .due(t["priority"].as_str().unwrap_or("routine"), now);
            t["restriction"] = json!({"period": {"end": format_instant(due)}});
            if let Some(tags) = t["meta"]["tag"].as_array_mut() {
                tags.retain(|x| !(x["system"] == WO_CS && x["code"] == "escalated"));
            }
            if let Some(o) = t.as_object_mut() {
                o.remove("output");
            }
        }
        Action::Resolve => {
            if let Some(c) = &corrected {
                push(
                    &mut t,
                    "output",
                    json!({"type": {"text": "corrected-version"},
                    "valueReference": {"reference": c}}),
                );
            }
            push(
                &mut t,
                "output",
                json!({"type": {"text": "resolution"},
                "valueString": text.clone().unwrap_or_default()}),
            );
        }
        _ => {}
    }
    let src = r.src.clone();
    let due_reset = (action == Action::Reopen).then(|| {
        engine
            .checker
            .rules
            .work_orders
            .due(t["priority"].as_str().unwrap_or("routine"), now)
    });
    let s = g.write(engine, |tx| {
        let (s, _) = tx.update("Task", id, t.clone(), Some(stored.version))?;
        match due_reset {
            // Reopened: a fresh deadline and escalation clock.
            Some(due) => tx.conn().exec(
                "UPDATE qc_work_order SET state = ?, updated = ?, due = ?, escalated = 0 \
                 WHERE src = ? AND id = ?",
                &[
                    Val::Text(to.code().into()),
                    Val::Int(now),
                    Val::Int(due),
                    Val::Text(src.clone()),
                    Val::Text(id.into()),
                ],
            )?,
            None => tx.conn().exec(
                "UPDATE qc_work_order SET state = ?, updated = ? WHERE src = ? AND id = ?",
                &[
                    Val::Text(to.code().into()),
                    Val::Int(now),
                    Val::Text(src.clone()),
                    Val::Text(id.into()),
                ],
            )?,
        };
        Ok(s)
    })?;
    g.note(format!("Task/{id} {} → {}", r.state.code(), to.code()));
    // The Task goes back only to those whose authorization shows it.
    let body = match engine.store.read("Task", id, &g.scope)?.found() {
        Some(v) if v.version == s.version => {
            serde_json::from_slice(&g.release(&v)).unwrap_or(Value::Null)
        }
        _ => json!({"resourceType": "Parameters", "parameter": [
            {"name": "task", "valueReference": {"reference": format!("Task/{id}")}},
            {"name": "state", "valueCode": to.code()}]}),
    };
    Ok(Resp::json(200, body))
}

fn push(t: &mut Value, key: &str, item: Value) {
    match t[key].as_array_mut() {
        Some(a) => a.push(item),
        None => t[key] = json!([item]),
    }
}

/// A `Type/id` or `Type/id/_history/v` that exists.
fn corrected_ref(engine: &Engine, r: &str) -> Result<String, ApiError> {
    let parts: Vec<&str> = r.split('/').collect();
    let (t, id, v) = match parts.as_slice() {
        [t, id] => (*t, *id, None),
        [t, id, "_history", v] => (*t, *id, v.parse::<i64>().ok()),
        _ => {
            return Err(ApiError::bad_request(format!(
                "corrected must be Type/id or Type/id/_history/version, not '{r}'"
            )))
        }
    };
    check_id(id)?;
    let found = match v {
        Some(v) => engine.store.vread(t, id, v, &Scope::All)?.found(),
        None => engine.store.read(t, id, &Scope::All)?.found(),
    };
    match found {
        Some(s) => Ok(format!("{t}/{id}/_history/{}", s.version)),
        None => Err(ApiError::bad_request(format!(
            "corrected names {r}, which the platform does not hold"
        ))),
    }
}

/// `GET $work-orders[?state=…|pending|all][&category=…][&overdue=true][&escalated=true]
/// [&owner=source][&_count][&_offset]`: the queue the asker works or follows — an
/// institution's orders and the ones it reported, a resident's reports, every order for
/// quality officers.
pub fn list(engine: &Engine, req: &Req, g: &Guard) -> Result<Resp, ApiError> {
    g.act("work-orders");
    // The conditions, shared by the count and the page.
    let mut sql = String::from(" FROM qc_work_order WHERE 1 = 1");
    let mut params = Vec::new();
    let me = g.principal.label();
    match (&g.principal.kind, &g.principal.institution) {
        _ if operator(g) => {}
        (Kind::System | Kind::Clinician, Some(i)) => {
            sql.push_str(" AND (src = ? OR reporter = ?)");
            params.push(Val::Text(i.clone()));
            params.push(Val::Text(me.clone()));
        }
        (Kind::Resident, _) => {
            sql.push_str(" AND reporter = ?");
            params.push(Val::Text(me.clone()));
        }
        _ => {
            return Err(forbidden(
                "Work orders are for institutions, their reporters and quality officers",
            ))
        }
    }
    let Paging { count, offset } = Paging::parse(&req.query, Paging::LISTS)?;
    let now = now_ms();
    let mut states: Option<Vec<String>> = Some(
        [State::Open, State::Accepted, State::InProgress]
            .iter()
            .map(|s| s.code().to_string())
            .collect(),
    );
    for (k, v) in &req.query {
        match k.as_str() {
            "state" if v == "all" => states = None,
            "state" if v == "pending" => {}
            "state" => {
                let mut list = Vec::new();
                for s in v.split(',') {
                    list.push(
                        State::parse(s)
                            .ok_or_else(|| {
                                ApiError::bad_request(format!(
                                    "state '{s}' is not one of open, accepted, in-progress, resolved, rejected, closed, pending, all"
                                ))
                            })?
                            .code()
                            .to_string(),
                    );
                }
                states = Some(list);
            }
            "category" => {
                Category::parse(v).ok_or_else(|| {
                    ApiError::bad_request(format!("category '{v}' is not known"))
                })?;
                sql.push_str(" AND category = ?");
                params.push(Val::Text(v.clone()));
            }
            "overdue" => {
                let open_past_due = "state IN ('open', 'accepted', 'in-progress') AND due < ?";
                match flag(k, v)? {
                    true => sql.push_str(&format!(" AND {open_past_due}")),
                    false => sql.push_str(&format!(" AND NOT ({open_past_due})")),
                }
                params.push(Val::Int(now));
            }
            "escalated" => match flag(k, v)? {
                true => sql.push_str(" AND escalated > 0"),
                false => sql.push_str(" AND escalated = 0"),
            },
            "owner" => {
                sql.push_str(" AND src = ?");
                params.push(Val::Text(v.clone()));
            }
            k if Paging::is_param(k) => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "Unknown parameter '{other}' (state, category, overdue, escalated, owner, _count, _offset)"
                )))
            }
        }
    }
    if let Some(list) = &states {
        sql.push_str(&format!(
            " AND state IN ({})",
            vec!["?"; list.len()].join(", ")
        ));
        params.extend(list.iter().map(|s| Val::Text(s.clone())));
    }
    let total = engine
        .store
        .query_admin(&format!("SELECT COUNT(*){sql}"), &params)?[0][0]
        .int();
    let mut sql = format!(
        "SELECT id, src, state, category, rule, priority, focus, reporter, opened, updated, \
         due, escalated{sql}"
    );
    sql.push_str(" ORDER BY due, id LIMIT ? OFFSET ?");
    params.push(Val::Int(count as i64));
    params.push(Val::Int(offset as i64));
    let items: Vec<Value> = engine
        .store
        .query_admin(&sql, &params)?
        .iter()
        .map(|r| {
            let state = State::parse(r[2].text()).unwrap_or(State::Open);
            json!({
                "id": r[0].text(),
                "task": format!("Task/{}", r[0].text()),
                "owner": r[1].text(),
                "state": state.code(),
                "stateLabel": state.label(),
                "category": r[3].text(),
                "rule": (!r[4].text().is_empty()).then(|| r[4].text()),
                "priority": r[5].text(),
                "focus": (!r[6].text().is_empty()).then(|| r[6].text()),
                "reporter": r[7].text(),
                "opened": format_instant(r[8].int()),
                "updated": format_instant(r[9].int()),
                "due": format_instant(r[10].int()),
                "overdue": state.pending() && r[10].int() < now,
                "escalated": r[11].int() > 0,
            })
        })
        .collect();
    g.note(format!("{} work orders listed", items.len()));
    Ok(Resp::plain_json(
        200,
        json!({"total": total, "items": items}),
    ))
}

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub escalated: u64,
    pub opened: u64,
}

/// `POST $work-orders/$sweep`: escalate overdue orders and open orders for repeated rule
/// failures now (the server also does this every minute).
pub fn sweep_op(engine: &Engine, g: &Guard) -> Result<Resp, ApiError> {
    g.act("work-order-sweep");
    if !operator(g) {
        return Err(forbidden(
            "The work-order sweep is run by quality officers and administrators",
        ));
    }
    let s = sweep(engine, now_ms())?;
    g.note(format!("{} escalated, {} opened", s.escalated, s.opened));
    Ok(Resp::plain_json(
        200,
        json!({"escalated": s.escalated, "opened": s.opened}),
    ))
}

/// Escalates pending orders past their due date to the platform's quality officers, and
/// opens an order for each rule a source failed `repeat_threshold` times within the window.
pub fn sweep(engine: &Engine, now: i64) -> Result<Swept, ApiError> {
    let mut out = Swept::default();
    let overdue = engine.store.query_admin(
        "SELECT src, id, due FROM qc_work_order WHERE state IN ('open', 'accepted', 'in-progress') \
         AND due < ? AND escalated = 0",
        &[Val::Int(now)],
    )?;
    for r in overdue {
        let (src, id, due) = (r[0].text().to_string(), r[1].text().to_string(), r[2].int());
        let g = Guard::platform(engine, "work-order-sweep", "work-order-escalate");
        let Some(stored) = engine.store.read("Task", &id, &Scope::All)?.found() else {
            continue;
        };
        let mut t = stored.json()?;
        push(
            &mut t,
            "note",
            json!({"authorString": "platform",
            "time": format_instant(now),
            "text": format!("[升级] 超过处理时限 {}，已升级至平台质控专员。Past its due date {}; escalated to the platform's quality officers.",
                format_instant(due), format_instant(due))}),
        );
        let tags = t["meta"]["tag"].as_array().cloned().unwrap_or_default();
        let mut tags = tags;
        tags.push(json!({"system": WO_CS, "code": "escalated", "display": "已超时升级"}));
        t["meta"]["tag"] = Value::Array(tags);
        let res = g.write(engine, |tx| {
            tx.update("Task", &id, t.clone(), Some(stored.version))?;
            tx.conn().exec(
                "UPDATE qc_work_order SET escalated = ? WHERE src = ? AND id = ? AND escalated = 0",
                &[Val::Int(now), Val::Text(src.clone()), Val::Text(id.clone())],
            )?;
            Ok(())
        });
        g.note(format!("Task/{id} escalated"));
        g.finish(engine, if res.is_ok() { 200 } else { 500 }, None);
        match res {
            Ok(()) => out.escalated += 1,
            // Changed meanwhile (a version conflict): the next sweep sees it again.
            Err(e) => tracing::warn!(task = %id, error = %e.message(), "escalation deferred"),
        }
    }
    out.opened = repeated_failures(engine, now)?;
    Ok(out)
}

/// Opens a `rule-failures` order per (source, rule) over the threshold with none pending.
fn repeated_failures(engine: &Engine, now: i64) -> Result<u64, ApiError> {
    let policy = &engine.checker.rules.work_orders;
    let since = now - policy.repeat_window_hours * 3_600_000;
    let mut counts: std::collections::BTreeMap<(String, String), i64> = Default::default();
    for r in engine.store.query_admin(
        "SELECT src, rule, COUNT(*) FROM qc_finding WHERE at >= ? GROUP BY src, rule",
        &[Val::Int(since)],
    )? {
        *counts
            .entry((r[0].text().to_string(), r[1].text().to_string()))
            .or_default() += r[2].int();
    }
    for r in engine.store.query_admin(
        "SELECT src, rules FROM qc_quarantine WHERE at >= ?",
        &[Val::Int(since)],
    )? {
        for rule in r[1].text().split(' ').filter(|s| !s.is_empty()) {
            *counts
                .entry((r[0].text().to_string(), rule.to_string()))
                .or_default() += 1;
        }
    }
    let mut opened = 0;
    for ((src, rule), n) in counts {
        if n < policy.repeat_threshold {
            continue;
        }
        let pending = engine.store.query_admin(
            "SELECT COUNT(*) FROM qc_work_order WHERE src = ? AND category = 'rule-failures' \
             AND rule = ? AND state IN ('open', 'accepted', 'in-progress')",
            &[Val::Text(src.clone()), Val::Text(rule.clone())],
        )?[0][0]
            .int();
        if pending > 0 {
            continue;
        }
        let examples = engine.store.query_admin(
            "SELECT rtype, id FROM qc_finding WHERE src = ? AND rule = ? AND at >= ? \
             ORDER BY at DESC LIMIT 20",
            &[
                Val::Text(src.clone()),
                Val::Text(rule.clone()),
                Val::Int(since),
            ],
        )?;
        let quarantined = engine.store.query_admin(
            "SELECT qid, rules FROM qc_quarantine WHERE src = ? AND at >= ? ORDER BY at DESC LIMIT 200",
            &[Val::Text(src.clone()), Val::Int(since)],
        )?;
        let mut inputs: Vec<Value> = examples
            .iter()
            .skip(1)
            .map(|e| {
                json!({"type": {"text": "example"},
                "valueReference": {"reference": format!("{}/{}", e[0].text(), e[1].text())}})
            })
            .collect();
        inputs.extend(
            quarantined
                .iter()
                .filter(|q| q[1].text().split(' ').any(|x| x == rule))
                .take(20)
                .map(|q| json!({"type": {"text": "quarantined"}, "valueString": q[0].text()})),
        );
        let focus = match examples.first() {
            Some(e) => engine
                .store
                .read(e[0].text(), e[1].text(), &Scope::All)?
                .found(),
            None => None,
        };
        let order = NewOrder {
            category: Category::RuleFailures,
            description: format!(
                "质控规则 {rule} 在 {h} 小时内失败 {n} 次，请检查数据源头。Intake rule {rule} failed {n} times in {h} hours: please fix the data at its source.",
                h = policy.repeat_window_hours
            ),
            priority: "routine".into(),
            reporter: "platform quality control".into(),
            rule: Some(rule.clone()),
            inputs,
        };
        let name = crate::consent::institution_name(engine, &src);
        let g = Guard::platform(engine, "work-order-sweep", "work-order-open");
        let s = g.write(engine, |tx| {
            Ok(create_in(
                tx,
                policy,
                &order,
                &src,
                name.clone(),
                focus.as_ref(),
            )?)
        })?;
        g.note(format!("Task/{} for {rule} failures of {src}", s.id));
        g.finish(engine, 201, None);
        opened += 1;
    }
    Ok(opened)
}

/// A `true`/`false` filter; anything else is a 400 naming the parameter.
fn flag(k: &str, v: &str) -> Result<bool, ApiError> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "{k} must be true or false, not '{v}'"
        ))),
    }
}
