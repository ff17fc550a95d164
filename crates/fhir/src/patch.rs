//! FHIRPath Patch (R4 §3.1.0.10.1, "Patch using FHIRPath"): a `Parameters` resource of
//! `operation`s — `add`, `insert`, `delete`, `replace`, `move` — each locating its target
//! with a FHIRPath expression. The expressions a patch uses are paths, not queries, so this
//! evaluates the subset that names places: `Type.element.element`, an index `[n]`,
//! `first()`, `last()` and `where(element = 'literal')`. Anything else is refused with a
//! message naming it, never guessed at.

use serde_json::{Map, Value};

/// Why a patch cannot be applied (a 422 to the client, or 400 when the patch itself is
/// malformed).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PatchError {
    #[error("the patch is not a FHIRPath Patch: {0}")]
    Malformed(String),
    #[error("operation {op}: {message}")]
    Apply { op: usize, message: String },
}

/// One place in a JSON document.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    At(usize),
}

type Loc = Vec<Seg>;

/// A step of a path expression.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Name(String),
    Index(usize),
    First,
    Last,
    Where(String, Value),
}

/// Applies a FHIRPath Patch (`Parameters`) to `doc`, in order; on an error `doc` may be
/// half-changed, so apply to a copy (the write path does: it changes nothing on failure).
pub fn apply(doc: &mut Value, patch: &Value) -> Result<(), PatchError> {
    if patch.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(PatchError::Malformed(
            "the body must be a Parameters resource".into(),
        ));
    }
    let rtype = doc
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let ops = patch
        .get("parameter")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    if ops.is_empty() {
        return Err(PatchError::Malformed("it has no operation".into()));
    }
    for (i, op) in ops.iter().enumerate() {
        if op.get("name").and_then(Value::as_str) != Some("operation") {
            return Err(PatchError::Malformed(format!(
                "parameter {i} is not an 'operation'"
            )));
        }
        let err = |m: String| PatchError::Apply { op: i, message: m };
        let parts = Parts(
            op.get("part")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        );
        let kind = parts
            .code("type")
            .ok_or_else(|| err("has no type".into()))?;
        let path = parts
            .text("path")
            .ok_or_else(|| err("has no path".into()))?;
        let steps = parse(path, &rtype).map_err(err)?;
        match kind {
            "add" => {
                let name = parts
                    .text("name")
                    .ok_or_else(|| err("add needs a name".into()))?;
                let value = parts
                    .value()
                    .ok_or_else(|| err("add needs a value".into()))?;
                let target = single(doc, &steps, path).map_err(err)?;
                let list = is_list(&rtype, &target, name);
                let obj = node_mut(doc, &target)
                    .and_then(Value::as_object_mut)
                    .ok_or_else(|| {
                        err(format!("{path} is not an element that can have children"))
                    })?;
                match obj.get_mut(name) {
                    Some(Value::Array(a)) => a.push(value),
                    Some(_) => {
                        return Err(err(format!(
                            "{path}.{name} already has a value: use replace"
                        )))
                    }
                    None if list => {
                        obj.insert(name.to_string(), Value::Array(vec![value]));
                    }
                    None => {
                        obj.insert(name.to_string(), value);
                    }
                }
            }
            "insert" => {
                let value = parts
                    .value()
                    .ok_or_else(|| err("insert needs a value".into()))?;
                let index = parts
                    .index("index")
                    .ok_or_else(|| err("insert needs an index".into()))?;
                let list = list_mut(doc, &steps, path).map_err(err)?;
                if index > list.len() {
                    return Err(err(format!(
                        "index {index} is past the end of {path} ({} items)",
                        list.len()
                    )));
                }
                list.insert(index, value);
            }
            "delete" => {
                let found = resolve(doc, &steps);
                match found.as_slice() {
                    // Nothing there: nothing to delete.
                    [] => {}
                    [one] => remove(doc, one),
                    _ => {
                        return Err(err(format!(
                            "{path} matches {} elements, not one",
                            found.len()
                        )))
                    }
                }
            }
            "replace" => {
                let value = parts
                    .value()
                    .ok_or_else(|| err("replace needs a value".into()))?;
                let target = single(doc, &steps, path).map_err(err)?;
                if let Some(n) = node_mut(doc, &target) {
                    *n = value;
                }
            }
            "move" => {
                let from = parts
                    .index("source")
                    .ok_or_else(|| err("move needs a source".into()))?;
                let to = parts
                    .index("destination")
                    .ok_or_else(|| err("move needs a destination".into()))?;
                let list = list_mut(doc, &steps, path).map_err(err)?;
                if from >= list.len() || to >= list.len() {
                    return Err(err(format!(
                        "source and destination must be within {path} ({} items)",
                        list.len()
                    )));
                }
                let item = list.remove(from);
                list.insert(to, item);
            }
            other => {
                return Err(err(format!(
                    "unknown type '{other}' (add, insert, delete, replace, move)"
                )))
            }
        }
        prune(doc);
    }
    Ok(())
}

/// Whether the element `name` added at `at` repeats (so `add` makes a list of it), from the
/// R4 definitions.
fn is_list(rtype: &str, at: &[Seg], name: &str) -> bool {
    let mut keys: Vec<&str> = at
        .iter()
        .filter_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::At(_) => None,
        })
        .collect();
    keys.push(name);
    crate::validate::repeats(rtype, &keys).unwrap_or(false)
}

/// The operation's parts by name.
struct Parts<'a>(&'a [Value]);

impl Parts<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.0
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
    }
    fn scalar(&self, name: &str) -> Option<&Value> {
        let p = self.get(name)?.as_object()?;
        p.iter()
            .find(|(k, _)| k.starts_with("value"))
            .map(|(_, v)| v)
    }
    fn code(&self, name: &str) -> Option<&str> {
        self.scalar(name)?.as_str()
    }
    fn text(&self, name: &str) -> Option<&str> {
        self.scalar(name)?.as_str()
    }
    fn index(&self, name: &str) -> Option<usize> {
        self.scalar(name)?.as_u64().map(|n| n as usize)
    }
    /// The `value` part: a `value[x]`, or a complex value given as parts of its own.
    fn value(&self) -> Option<Value> {
        let p = self.get("value")?.as_object()?;
        if let Some((_, v)) = p.iter().find(|(k, _)| k.starts_with("value")) {
            return Some(v.clone());
        }
        p.get("part")
            .and_then(Value::as_array)
            .map(|a| from_parts(a))
    }
}

/// A complex value written as parts (each part an element: a `value[x]` or parts again).
fn from_parts(parts: &[Value]) -> Value {
    let mut o = Map::new();
    for p in parts {
        let Some(name) = p.get("name").and_then(Value::as_str) else {
            continue;
        };
        let v = match p
            .as_object()
            .and_then(|x| x.iter().find(|(k, _)| k.starts_with("value")))
        {
            Some((_, v)) => v.clone(),
            None => from_parts(
                p.get("part")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]),
            ),
        };
        match o.get_mut(name) {
            Some(Value::Array(a)) => a.push(v),
            Some(prev) => {
                let first = prev.take();
                *prev = Value::Array(vec![first, v]);
            }
            None => {
                o.insert(name.to_string(), v);
            }
        }
    }
    Value::Object(o)
}

/// Parses a path expression of the subset (see the module documentation).
fn parse(path: &str, rtype: &str) -> Result<Vec<Step>, String> {
    let mut rest = path.trim();
    match rest.strip_prefix(rtype) {
        Some(r)
            if !rtype.is_empty() && (r.is_empty() || r.starts_with('.') || r.starts_with('[')) =>
        {
            rest = r
        }
        _ => {
            return Err(format!(
                "the path {path} must start with the resource type {rtype}"
            ))
        }
    }
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(|| format!("unclosed [ in {path}"))?;
            let n = r[..end]
                .trim()
                .parse()
                .map_err(|_| format!("not an index: [{}] in {path}", &r[..end]))?;
            steps.push(Step::Index(n));
            rest = &r[end + 1..];
            continue;
        }
        let r = rest
            .strip_prefix('.')
            .ok_or_else(|| format!("unexpected '{rest}' in {path}"))?;
        let end = r.find(['.', '[', '(']).unwrap_or(r.len());
        let name = &r[..end];
        if r[end..].starts_with('(') {
            let close = r.find(')').ok_or_else(|| format!("unclosed ( in {path}"))?;
            let arg = r[end + 1..close].trim();
            steps.push(match name {
                "first" if arg.is_empty() => Step::First,
                "last" if arg.is_empty() => Step::Last,
                "where" => {
                    let (field, lit) = arg
                        .split_once('=')
                        .ok_or_else(|| format!("where() takes element = literal in {path}"))?;
                    Step::Where(field.trim().to_string(), literal(lit.trim()).ok_or_else(|| {
                        format!("not a literal: {} in {path}", lit.trim())
                    })?)
                }
                f => return Err(format!("{f}() is not supported in a patch path ({path}): use names, [n], first(), last() and where(element = 'value')")),
            });
            rest = &r[close + 1..];
        } else {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("not an element name: '{name}' in {path}"));
            }
            steps.push(Step::Name(name.to_string()));
            rest = &r[end..];
        }
    }
    Ok(steps)
}

fn literal(s: &str) -> Option<Value> {
    if let Some(t) = s.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')) {
        return Some(Value::String(t.replace("\\'", "'")));
    }
    match s {
        "true" => Some(Value::Bool(true)),
        "false" => Some(Value::Bool(false)),
        _ => serde_json::from_str::<serde_json::Number>(s)
            .ok()
            .map(Value::Number),
    }
}

fn node<'a>(doc: &'a Value, loc: &[Seg]) -> Option<&'a Value> {
    loc.iter().try_fold(doc, |v, s| match s {
        Seg::Key(k) => v.get(k),
        Seg::At(i) => v.get(*i),
    })
}

fn node_mut<'a>(doc: &'a mut Value, loc: &[Seg]) -> Option<&'a mut Value> {
    loc.iter().try_fold(doc, |v, s| match s {
        Seg::Key(k) => v.get_mut(k),
        Seg::At(i) => v.get_mut(*i),
    })
}

/// Every place the steps select, in document order (lists flattened, as FHIRPath does).
fn resolve(doc: &Value, steps: &[Step]) -> Vec<Loc> {
    let mut cur: Vec<Loc> = vec![Vec::new()];
    for step in steps {
        cur = match step {
            Step::Name(n) => cur
                .iter()
                .flat_map(|loc| {
                    let mut out = Vec::new();
                    if let Some(v) = node(doc, loc).and_then(|x| x.get(n)) {
                        let mut base = loc.clone();
                        base.push(Seg::Key(n.clone()));
                        match v {
                            Value::Array(a) => {
                                for i in 0..a.len() {
                                    let mut l = base.clone();
                                    l.push(Seg::At(i));
                                    out.push(l);
                                }
                            }
                            _ => out.push(base),
                        }
                    }
                    out
                })
                .collect(),
            Step::Index(i) => cur.get(*i).cloned().into_iter().collect(),
            Step::First => cur.first().cloned().into_iter().collect(),
            Step::Last => cur.last().cloned().into_iter().collect(),
            Step::Where(field, want) => cur
                .into_iter()
                .filter(|loc| node(doc, loc).and_then(|x| x.get(field)) == Some(want))
                .collect(),
        };
    }
    cur
}

fn single(doc: &Value, steps: &[Step], path: &str) -> Result<Loc, String> {
    let found = resolve(doc, steps);
    match found.len() {
        1 => Ok(found.into_iter().next().expect("one")),
        0 => Err(format!("{path} matches nothing")),
        n => Err(format!("{path} matches {n} elements, not one")),
    }
}

/// The list a path names (`Patient.identifier`): its last step must be a name, and what is
/// before it one element.
fn list_mut<'a>(
    doc: &'a mut Value,
    steps: &[Step],
    path: &str,
) -> Result<&'a mut Vec<Value>, String> {
    let Some((Step::Name(name), parent)) = steps.split_last() else {
        return Err(format!(
            "{path} does not name a list (it must end in an element name)"
        ));
    };
    let at = single(doc, parent, path)?;
    let obj = node_mut(doc, &at)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| format!("{path} is not in an element"))?;
    match obj
        .entry(name.clone())
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        Value::Array(a) => Ok(a),
        _ => Err(format!("{path} is not a list")),
    }
}

fn remove(doc: &mut Value, loc: &[Seg]) {
    let Some((last, parent)) = loc.split_last() else {
        return;
    };
    match (node_mut(doc, parent), last) {
        (Some(Value::Object(o)), Seg::Key(k)) => {
            o.remove(k);
        }
        (Some(Value::Array(a)), Seg::At(i)) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}

/// Empty lists and objects left behind (FHIR JSON has none).
fn prune(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for x in o.values_mut() {
                prune(x);
            }
            o.retain(|_, x| {
                !matches!(x, Value::Array(a) if a.is_empty())
                    && !matches!(x, Value::Object(m) if m.is_empty())
            });
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                prune(x);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(kind: &str, path: &str, more: Vec<Value>) -> Value {
        let mut parts = vec![
            json!({"name": "type", "valueCode": kind}),
            json!({"name": "path", "valueString": path}),
        ];
        parts.extend(more);
        json!({"name": "operation", "part": parts})
    }

    fn patch(ops: Vec<Value>) -> Value {
        json!({"resourceType": "Parameters", "parameter": ops})
    }

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p", "active": true,
            "identifier": [{"system": "urn:a", "value": "1"}, {"system": "urn:b", "value": "2"}],
            "name": [{"family": "张", "given": ["伟"]}]})
    }

    #[test]
    fn the_five_operations() {
        let mut p = patient();
        apply(&mut p, &patch(vec![
            op("replace", "Patient.active", vec![json!({"name": "value", "valueBoolean": false})]),
            op("add", "Patient", vec![json!({"name": "name", "valueString": "birthDate"}), json!({"name": "value", "valueDate": "1990-01-01"})]),
            op("insert", "Patient.identifier", vec![json!({"name": "index", "valueInteger": 0}),
                json!({"name": "value", "part": [{"name": "system", "valueUri": "urn:c"}, {"name": "value", "valueString": "3"}]})]),
            op("delete", "Patient.identifier.where(system = 'urn:a')", vec![]),
            op("move", "Patient.identifier", vec![json!({"name": "source", "valueInteger": 1}), json!({"name": "destination", "valueInteger": 0})]),
            op("add", "Patient.name[0]", vec![json!({"name": "name", "valueString": "given"}), json!({"name": "value", "valueString": "二"})]),
        ]))
        .unwrap();
        assert_eq!(p["active"], false);
        assert_eq!(p["birthDate"], "1990-01-01");
        assert_eq!(
            p["identifier"],
            json!([{"system": "urn:b", "value": "2"}, {"system": "urn:c", "value": "3"}])
        );
        assert_eq!(p["name"][0]["given"], json!(["伟", "二"]));
    }

    #[test]
    fn deleting_the_last_item_leaves_no_empty_list_and_nothing_is_a_no_op() {
        let mut p = patient();
        apply(
            &mut p,
            &patch(vec![
                op("delete", "Patient.name[0]", vec![]),
                op("delete", "Patient.photo", vec![]),
            ]),
        )
        .unwrap();
        assert!(p.get("name").is_none(), "{p}");
    }

    #[test]
    fn what_cannot_be_applied_is_said() {
        let cases = [
            (
                op(
                    "replace",
                    "Patient.identifier",
                    vec![json!({"name": "value", "valueString": "x"})],
                ),
                "matches 2",
            ),
            (
                op(
                    "replace",
                    "Observation.status",
                    vec![json!({"name": "value", "valueCode": "x"})],
                ),
                "must start with",
            ),
            (
                op(
                    "replace",
                    "Patient.name.exists()",
                    vec![json!({"name": "value", "valueString": "x"})],
                ),
                "not supported",
            ),
            (
                op(
                    "insert",
                    "Patient.identifier",
                    vec![
                        json!({"name": "index", "valueInteger": 9}),
                        json!({"name": "value", "valueString": "x"}),
                    ],
                ),
                "past the end",
            ),
            (op("frobnicate", "Patient", vec![]), "unknown type"),
            (
                op(
                    "add",
                    "Patient",
                    vec![
                        json!({"name": "name", "valueString": "active"}),
                        json!({"name": "value", "valueBoolean": true}),
                    ],
                ),
                "already has a value",
            ),
        ];
        for (o, want) in cases {
            let mut p = patient();
            let e = apply(&mut p, &patch(vec![o])).unwrap_err().to_string();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
        assert!(matches!(
            apply(&mut patient(), &json!({"resourceType": "Bundle"})),
            Err(PatchError::Malformed(_))
        ));
    }

    proptest::proptest! {
        /// Whatever the path text, parsing and applying never panic.
        #[test]
        fn paths_never_panic(path in "Patient(\\.[a-z]{1,6}|\\[[0-9]\\]|\\.where\\([a-z]{1,4} ?= ?'[a-z0-9]{0,3}'\\)|\\.first\\(\\)|\\.\\(|\\[){0,5}") {
            let mut p = patient();
            let _ = apply(&mut p, &patch(vec![op("delete", &path, vec![])]));
            let _ = apply(&mut p, &patch(vec![op("replace", &path, vec![json!({"name": "value", "valueString": "x"})])]));
        }
    }
}
