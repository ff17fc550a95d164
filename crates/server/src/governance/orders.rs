//! Work orders as stored: the `Task` a work order is, its `qc_work_order` index row (state,
//! due date, who reported — for the queues and the escalation sweep), and their creation in
//! the writer's transaction. Below the engine: intake and reconciliation open orders from
//! inside a write without knowing the operations that work them ([`super::workorders`]).

use hutong_fhir::date::{format_instant, now_ms};
use hutong_fhir::security;
use hutong_fhir::vocab::stamp;
use hutong_fhir::vocab::USCC_SYSTEM;
use hutong_quality::workorder::{Category, Policy, State};
use hutong_store::sql::Val;
use hutong_store::{Store, StoreError, Stored, Tx};
use serde_json::{json, Value};

pub const WO_CS: &str = "https://hutong.dev/fhir/CodeSystem/work-order";

pub const WO_STATE_CS: &str = "https://hutong.dev/fhir/CodeSystem/work-order-state";

pub const WO_CATEGORY_CS: &str = "https://hutong.dev/fhir/CodeSystem/work-order-category";

/// The tables, written once for both dialects ([`hutong_store::sql::Dialect::ddl`]).
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS qc_work_order (src TEXT NOT NULL, id TEXT NOT NULL,
    state TEXT NOT NULL, category TEXT NOT NULL, rule TEXT NOT NULL DEFAULT '',
    priority TEXT NOT NULL, focus TEXT NOT NULL DEFAULT '', reporter TEXT NOT NULL,
    opened BIGINT NOT NULL, updated BIGINT NOT NULL, due BIGINT NOT NULL,
    escalated BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (src, id));
CREATE INDEX IF NOT EXISTS qc_work_order_id ON qc_work_order (id);
CREATE INDEX IF NOT EXISTS qc_work_order_due ON qc_work_order (state, due);
";

pub fn open_tables(store: &Store) -> Result<(), StoreError> {
    store.create_tables(TABLES)
}

/// Why a work order is not written as a Task, by any path (the Task and its queue row would
/// disagree).
pub(crate) const NOT_WRITTEN: &str = "A work order is opened with $work-order and changes through Task/{id}/$accept, $start, $resolve, $reject, $close, $reopen and $comment, not by writing the Task";

/// Whether a Task is a work order (its code says so).
pub fn is_work_order(task: &Value) -> bool {
    task["code"]["coding"]
        .as_array()
        .is_some_and(|c| c.iter().any(|x| x["system"] == WO_CS))
}

/// Whether `Task/{id}` is a work order (the index, not the Task's own say-so).
pub fn is_work_order_id(tx: &mut Tx<'_>, id: &str) -> Result<bool, StoreError> {
    Ok(!tx
        .conn()
        .query(
            "SELECT 1 FROM qc_work_order WHERE id = ?",
            &[Val::Text(id.into())],
        )?
        .is_empty())
}

/// What a new work order says.
pub struct NewOrder {
    pub category: Category,
    pub description: String,
    pub priority: String,
    /// `principal.label()` of whoever opened it (`platform …` for automatic ones).
    pub reporter: String,
    /// The rule whose repeated failures opened it.
    pub rule: Option<String>,
    /// Extra `Task.input`s (examples, reconciliation ids).
    pub inputs: Vec<Value>,
}

/// The Patient a resource is about (itself for a Patient).
pub(crate) fn patient_of(v: &Value) -> Option<String> {
    if v["resourceType"] == "Patient" {
        return v["id"].as_str().map(String::from);
    }
    ["subject", "patient", "for", "beneficiary"]
        .iter()
        .find_map(|k| v[*k]["reference"].as_str()?.strip_prefix("Patient/"))
        .map(String::from)
}

pub(crate) fn owner_json(source: &str, name: Option<String>) -> Value {
    match source.strip_prefix("urn:hutong:org:") {
        Some(uscc) => json!({
            "identifier": {"system": USCC_SYSTEM, "value": uscc},
            "display": name.unwrap_or_else(|| source.to_string())
        }),
        None => json!({"identifier": {"system": "urn:ietf:rfc:3986", "value": source},
                        "display": name.unwrap_or_else(|| source.to_string())}),
    }
}

/// Writes a new work order routed to `owner` inside `tx`: the Task and its index row.
pub fn create_in(
    tx: &mut Tx<'_>,
    policy: &Policy,
    order: &NewOrder,
    owner: &str,
    owner_name: Option<String>,
    focus: Option<&Stored>,
) -> Result<Stored, StoreError> {
    let now = now_ms();
    let due = policy.due(&order.priority, now);
    let mut t = json!({
        "resourceType": "Task",
        "status": State::Open.task_status(false),
        "businessStatus": state_json(State::Open),
        "intent": "order",
        "priority": order.priority,
        "code": {"coding": [{"system": WO_CS, "code": "work-order", "display": "工单"}]},
        "reasonCode": {"coding": [{"system": WO_CATEGORY_CS, "code": order.category.code(),
                                   "display": order.category.label()}]},
        "description": order.description,
        "authoredOn": format_instant(now),
        "lastModified": format_instant(now),
        "requester": {"display": order.reporter},
        "owner": owner_json(owner, owner_name),
        "restriction": {"period": {"end": format_instant(due)}},
    });
    let mut inputs = order.inputs.clone();
    let mut focus_ref = String::new();
    if let Some(f) = focus {
        focus_ref = format!("{}/{}", f.rtype, f.id);
        t["focus"] = json!({"reference": focus_ref});
        inputs.insert(
            0,
            json!({"type": {"text": "focus-version"}, "valueInteger": f.version}),
        );
        if let Some(p) = f.json().ok().as_ref().and_then(patient_of) {
            t["for"] = json!({"reference": format!("Patient/{p}")});
        }
        // A work order about sensitive data is as restricted as the data.
        security::add_labels(&mut t, f.sens);
    }
    if !inputs.is_empty() {
        t["input"] = Value::Array(inputs);
    }
    stamp(&mut t, owner, now);
    let s = tx.create("Task", None, t)?;
    tx.conn().exec(
        "INSERT INTO qc_work_order (src, id, state, category, rule, priority, focus, reporter, \
         opened, updated, due) VALUES (?, ?, 'open', ?, ?, ?, ?, ?, ?, ?, ?)",
        &[
            Val::Text(owner.into()),
            Val::Text(s.id.clone()),
            Val::Text(order.category.code().into()),
            Val::Text(order.rule.clone().unwrap_or_default()),
            Val::Text(order.priority.clone()),
            Val::Text(focus_ref),
            Val::Text(order.reporter.clone()),
            Val::Int(now),
            Val::Int(now),
            Val::Int(due),
        ],
    )?;
    Ok(s)
}

pub(crate) fn state_json(s: State) -> Value {
    json!({"coding": [{"system": WO_STATE_CS, "code": s.code(), "display": s.label()}],
           "text": s.label()})
}
