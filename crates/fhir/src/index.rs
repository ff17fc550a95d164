//! Extraction of search-index values from a resource, driven by the R4 search-parameter
//! definitions. The store persists these rows; search compares against them.

use serde_json::Value;

use crate::date::{self, Range};
use crate::defs::{Definitions, Derived, ParamType, SearchParamDef};
use crate::id::Reference;
use crate::json::Fields;
use crate::normalize_string;
use crate::path::{eval, eval_in, Item};

/// One indexed value.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// Normalised (case- and accent-folded) string; `raw` keeps the original for `:exact`.
    String {
        norm: String,
        raw: String,
    },
    /// A code with its system (empty when absent) and display text (normalised).
    Token {
        system: String,
        code: String,
        text: String,
    },
    Date(Range),
    /// A literal reference (`rtype` empty for an absolute URL or canonical that is not a
    /// `Type/id` reference; `id` then holds the URL).
    Reference {
        rtype: String,
        id: String,
    },
    /// A number or quantity: the closed interval `[lo, hi]` (a point has lo == hi), with the
    /// unit system and code for quantities (empty for plain numbers).
    Quantity {
        lo: f64,
        hi: f64,
        system: String,
        code: String,
    },
    Uri(String),
    /// A composite: the first component as a token key `system|code`, and the second
    /// component's value.
    Composite {
        key: String,
        second: Box<IndexValue>,
    },
}

/// An index row: which parameter, which value.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The parameter code; `code:identifier` / `code:of-type` for the derived token rows that
    /// serve those modifiers. Borrowed from the definitions: a resource has tens of entries.
    pub param: &'static str,
    pub value: IndexValue,
}

/// Parameters whose values live in the resource table itself, not the index (`_source` is
/// the version's interned submitter, `res.src`).
const NOT_INDEXED: [&str; 5] = ["_id", "_lastUpdated", "_source", "_text", "_content"];

/// Extracts every search-index entry for `resource` (of type `rtype`).
pub fn extract(rtype: &str, resource: &Value) -> Vec<Entry> {
    extract_where(rtype, resource, |_| true)
}

/// Extracts the entries of the parameters of one kind only (the clinical dates of a
/// resource, say, without evaluating its tokens, strings and references).
pub fn extract_kind(rtype: &str, resource: &Value, kind: ParamType) -> Vec<Entry> {
    extract_where(rtype, resource, |p| p.kind == kind)
}

fn extract_where(
    rtype: &str,
    resource: &Value,
    wanted: impl Fn(&SearchParamDef) -> bool,
) -> Vec<Entry> {
    let defs = Definitions::get();
    let mut out = Vec::new();
    let Some(params) = defs.params(rtype) else {
        return out;
    };
    let root = [Item::node(resource)];
    // The values of split composites: not stored, but a `base | more` composite built on
    // one must still leave out what its base covers.
    let mut shadow = Vec::new();
    // The entries of `base | more` parameters, with their base.
    let mut unions: Vec<(Entry, &str)> = Vec::new();
    for (code, p) in params {
        if NOT_INDEXED.contains(&code.as_str()) || !wanted(p) {
            continue;
        }
        let Some(expr) = &p.expr else { continue };
        if matches!(
            p.derived,
            Some(Derived::Same { .. }) | Some(Derived::Restrict { .. })
        ) {
            continue;
        }
        let items = eval(expr, &root);
        if items.is_empty() {
            continue;
        }
        if p.split {
            composite(p, &items, &root, &mut shadow);
            continue;
        }
        let from = out.len();
        if p.kind == ParamType::Composite {
            composite(p, &items, &root, &mut out);
        } else {
            for it in &items {
                values(p.kind, Names::of(p), it, &mut out);
            }
        }
        if let Some(Derived::Union { base }) = &p.derived {
            for e in out.split_off(from) {
                if e.param == p.code {
                    unions.push((e, base.as_str()));
                } else {
                    out.push(e);
                }
            }
        }
    }
    // Entries per resource are few (tens): a quadratic dedup beats hashing formatted keys.
    // A `base | more` parameter keeps only the values its base does not already have, so
    // every base's entries go in first: parameters are visited in code order, and a union
    // may sort before its base (`combo-value-quantity` before `value-quantity`).
    let mut unique: Vec<Entry> = Vec::with_capacity(out.len() + unions.len());
    for e in out {
        if !unique.contains(&e) {
            unique.push(e);
        }
    }
    for (e, base) in unions {
        if unique.contains(&e)
            || unique
                .iter()
                .chain(&shadow)
                .any(|u| u.param == base && u.value == e.value)
        {
            continue;
        }
        unique.push(e);
    }
    unique
}

/// The Patient whose compartment owns `resource`: the Patient itself, or the first Patient
/// referenced through the compartment's parameters (in the order the CompartmentDefinition
/// lists them). This is the storage shard key.
pub fn compartment_owner(rtype: &str, id: &str, entries: &[Entry]) -> Option<String> {
    if rtype == "Patient" {
        return Some(id.to_string());
    }
    let defs = Definitions::get();
    let params = defs.compartment_params(rtype)?;
    params.iter().find_map(|p| {
        // A derived parameter's values are stored under its base.
        let stored = match defs.param(rtype, p).and_then(|d| d.derived.as_ref()) {
            Some(Derived::Same { base }) | Some(Derived::Restrict { base, .. }) => base.as_str(),
            _ => p.as_str(),
        };
        entries.iter().find_map(|e| match &e.value {
            IndexValue::Reference { rtype, id } if e.param == stored && rtype == "Patient" => {
                Some(id.clone())
            }
            _ => None,
        })
    })
}

/// [`compartment_owner`] of `resource` as its content alone determines it, evaluating only
/// the compartment's parameters (a few of a type's many): what the intake rules need to know
/// where a submission will be filed before it is indexed.
pub fn content_owner(rtype: &str, resource: &Value) -> Option<String> {
    let defs = Definitions::get();
    let params = defs.compartment_params(rtype)?;
    let stored: Vec<&str> = params
        .iter()
        .map(
            |p| match defs.param(rtype, p).and_then(|d| d.derived.as_ref()) {
                Some(Derived::Same { base }) | Some(Derived::Restrict { base, .. }) => {
                    base.as_str()
                }
                _ => p.as_str(),
            },
        )
        .collect();
    let id = resource.at("id").as_str().unwrap_or("");
    let entries = extract_where(rtype, resource, |p| stored.contains(&p.code.as_str()));
    compartment_owner(rtype, id, &entries)
}

/// The names a parameter's entries are filed under.
#[derive(Clone, Copy)]
struct Names {
    code: &'static str,
    of_type: &'static str,
    identifier: &'static str,
}

impl Names {
    fn of(p: &'static SearchParamDef) -> Names {
        Names {
            code: &p.code,
            of_type: &p.of_type,
            identifier: &p.identifier,
        }
    }

    /// For a composite's components, whose entries are not filed.
    const NONE: Names = Names {
        code: "",
        of_type: "",
        identifier: "",
    };
}

fn values(kind: ParamType, names: Names, it: &Item, out: &mut Vec<Entry>) {
    let code = names.code;
    let mut push = |param: &'static str, value: IndexValue| out.push(Entry { param, value });
    match kind {
        ParamType::String => {
            let mut s = Vec::new();
            match it {
                Item::Node { v, .. } => collect_strings(v, &mut s, 0),
                Item::Str(x) => s.push(x.clone()),
                _ => {}
            }
            for raw in s {
                push(
                    code,
                    IndexValue::String {
                        norm: normalize_string(&raw),
                        raw,
                    },
                );
            }
        }
        ParamType::Token => match it {
            Item::Bool(b) => push(code, tok("", &b.to_string(), "")),
            Item::Str(s) => push(code, tok("", s, "")),
            Item::Node { v, .. } => match v {
                Value::String(s) => push(code, tok("", s, "")),
                Value::Bool(b) => push(code, tok("", &b.to_string(), "")),
                Value::Number(n) => push(code, tok("", &n.to_string(), "")),
                Value::Object(o) => {
                    if let Some(codings) = o.field("coding").and_then(Value::as_array) {
                        for c in codings {
                            push(code, coding(c));
                        }
                        if let Some(t) = o.field("text").and_then(Value::as_str) {
                            push(code, tok("", "", t));
                        }
                    } else if let Some(value) = o.field("value").and_then(Value::as_str) {
                        let sys = o.field("system").and_then(Value::as_str).unwrap_or("");
                        push(code, tok(sys, value, ""));
                        let types = o.field("type").and_then(|t| t.field("coding"));
                        for t in types.and_then(Value::as_array).into_iter().flatten() {
                            let ts = t.field("system").and_then(Value::as_str).unwrap_or("");
                            if let Some(tc) = t.field("code").and_then(Value::as_str) {
                                push(names.of_type, tok(ts, &format!("{tc}|{value}"), ""));
                            }
                        }
                    } else if o.contains_key("code") || o.contains_key("system") {
                        push(code, coding(v));
                    }
                }
                _ => {}
            },
            Item::Resolved(_) => {}
        },
        ParamType::Date => {
            if let Item::Node { v, .. } = it {
                if let Some(r) = date_range(v) {
                    push(code, IndexValue::Date(r));
                }
            }
        }
        ParamType::Reference => {
            if let Item::Node { v, .. } = it {
                let r = v.field("reference").and_then(Value::as_str).or(v.as_str());
                if let Some(r) = r {
                    match Reference::parse(r) {
                        Some(p) => push(
                            code,
                            IndexValue::Reference {
                                rtype: p.rtype,
                                id: p.id,
                            },
                        ),
                        None if !r.starts_with('#') => push(
                            code,
                            IndexValue::Reference {
                                rtype: String::new(),
                                id: r.to_string(),
                            },
                        ),
                        None => {}
                    }
                }
                if let Some(ident) = v.field("identifier") {
                    let sys = ident.field("system").and_then(Value::as_str).unwrap_or("");
                    if let Some(val) = ident.field("value").and_then(Value::as_str) {
                        push(names.identifier, tok(sys, val, ""));
                    }
                }
            }
        }
        ParamType::Number | ParamType::Quantity => {
            if let Item::Node { v, .. } = it {
                if let Some(q) = quantity(v) {
                    push(code, q);
                }
            }
        }
        ParamType::Uri => {
            if let Item::Node {
                v: Value::String(s),
                ..
            } = it
            {
                push(code, IndexValue::Uri(s.clone()));
            }
        }
        ParamType::Composite | ParamType::Special => {}
    }
}

fn composite<'a>(
    p: &'static SearchParamDef,
    items: &[Item<'a>],
    root: &[Item<'a>],
    out: &mut Vec<Entry>,
) {
    let [first, second] = p.components.as_slice() else {
        return;
    };
    if first.kind != ParamType::Token {
        return;
    }
    for it in items {
        let focus = [it.clone()];
        let mut keys = Vec::new();
        for f in eval_in(&first.expr, &focus, root) {
            values(ParamType::Token, Names::NONE, &f, &mut keys);
        }
        let mut seconds = Vec::new();
        for s in eval_in(&second.expr, &focus, root) {
            values(second.kind, Names::NONE, &s, &mut seconds);
        }
        for k in &keys {
            let IndexValue::Token { system, code, .. } = &k.value else {
                continue;
            };
            if code.is_empty() {
                continue;
            }
            for s in &seconds {
                out.push(Entry {
                    param: &p.code,
                    value: IndexValue::Composite {
                        key: format!("{system}|{code}"),
                        second: Box::new(s.value.clone()),
                    },
                });
            }
        }
    }
}

fn tok(system: &str, code: &str, text: &str) -> IndexValue {
    IndexValue::Token {
        system: system.to_string(),
        code: code.to_string(),
        text: normalize_string(text),
    }
}

fn coding(c: &Value) -> IndexValue {
    let s = |k: &str| c.field(k).and_then(Value::as_str).unwrap_or("");
    tok(s("system"), s("code"), s("display"))
}

const STRING_PARTS: [&str; 12] = [
    "text",
    "family",
    "given",
    "prefix",
    "suffix",
    "line",
    "city",
    "district",
    "state",
    "postalCode",
    "country",
    "value",
];

fn collect_strings(v: &Value, out: &mut Vec<String>, depth: usize) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) if depth < 3 => a.iter().for_each(|x| collect_strings(x, out, depth + 1)),
        Value::Object(o) if depth < 3 => {
            for k in STRING_PARTS {
                if let Some(x) = o.field(k) {
                    collect_strings(x, out, depth + 1);
                }
            }
        }
        _ => {}
    }
}

fn date_range(v: &Value) -> Option<Range> {
    match v {
        Value::String(s) => date::parse(s),
        Value::Object(o) => {
            if o.contains_key("start") || o.contains_key("end") {
                let lo = o
                    .field("start")
                    .and_then(Value::as_str)
                    .and_then(date::parse);
                let hi = o.field("end").and_then(Value::as_str).and_then(date::parse);
                return Some(Range {
                    lo: lo.map_or(i64::MIN, |r| r.lo),
                    hi: hi.map_or(i64::MAX, |r| r.hi),
                });
            }
            // Timing: its events, or the bounds of its repeat.
            let events: Vec<Range> = o
                .field("event")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.as_str().and_then(date::parse))
                .collect();
            if !events.is_empty() {
                return Some(Range {
                    lo: events.iter().map(|r| r.lo).min()?,
                    hi: events.iter().map(|r| r.hi).max()?,
                });
            }
            o.field("repeat")
                .and_then(|r| r.field("boundsPeriod"))
                .and_then(date_range)
        }
        _ => None,
    }
}

fn quantity(v: &Value) -> Option<IndexValue> {
    let s = |o: &Value, k: &str| o.field(k).and_then(Value::as_str).unwrap_or("").to_string();
    match v {
        Value::Number(n) => {
            let x = n.as_f64()?;
            Some(IndexValue::Quantity {
                lo: x,
                hi: x,
                system: String::new(),
                code: String::new(),
            })
        }
        Value::Object(o) => {
            if let Some(x) = o.field("value").and_then(Value::as_f64) {
                let (system, code) = if o.contains_key("currency") {
                    ("urn:iso:std:iso:4217".to_string(), s(v, "currency"))
                } else {
                    let c = s(v, "code");
                    (s(v, "system"), if c.is_empty() { s(v, "unit") } else { c })
                };
                return Some(IndexValue::Quantity {
                    lo: x,
                    hi: x,
                    system,
                    code,
                });
            }
            // Range: low/high bounds (either may be open).
            let low = o
                .field("low")
                .and_then(|l| l.field("value"))
                .and_then(Value::as_f64);
            let high = o
                .field("high")
                .and_then(|h| h.field("value"))
                .and_then(Value::as_f64);
            if low.is_none() && high.is_none() {
                return None;
            }
            let unit = o
                .field("low")
                .or(o.field("high"))
                .cloned()
                .unwrap_or(Value::Null);
            let c = s(&unit, "code");
            Some(IndexValue::Quantity {
                lo: low.unwrap_or(f64::MIN),
                hi: high.unwrap_or(f64::MAX),
                system: s(&unit, "system"),
                code: if c.is_empty() { s(&unit, "unit") } else { c },
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod owner_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn content_owner_is_the_compartment_owner() {
        let cases = [
            (
                "Observation",
                json!({"resourceType": "Observation", "id": "o", "status": "final",
                "code": {"text": "x"}, "performer": [{"reference": "Practitioner/d"}],
                "subject": {"reference": "Patient/p1"}}),
            ),
            (
                "Encounter",
                json!({"resourceType": "Encounter", "id": "e", "status": "finished",
                "class": {"code": "AMB"}, "subject": {"reference": "Patient/p2"}}),
            ),
            (
                "MedicationRequest",
                json!({"resourceType": "MedicationRequest", "id": "m",
                "status": "active", "intent": "order", "subject": {"reference": "Patient/p3"},
                "requester": {"reference": "Patient/p4"}}),
            ),
            ("Patient", json!({"resourceType": "Patient", "id": "p5"})),
            (
                "Organization",
                json!({"resourceType": "Organization", "id": "g", "name": "x"}),
            ),
            (
                "Observation",
                json!({"resourceType": "Observation", "id": "o2", "status": "final",
                "code": {"text": "x"}}),
            ),
        ];
        for (t, v) in cases {
            let id = v["id"].as_str().unwrap();
            assert_eq!(
                content_owner(t, &v),
                compartment_owner(t, id, &extract(t, &v)),
                "{v}"
            );
        }
        assert_eq!(
            content_owner("MedicationRequest", &cases_owner()),
            Some("p3".into())
        );
    }

    fn cases_owner() -> Value {
        json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "requester": {"reference": "Patient/p4"}, "subject": {"reference": "Patient/p3"}})
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn find<'a>(es: &'a [Entry], p: &str) -> Vec<&'a IndexValue> {
        es.iter()
            .filter(|e| e.param == p)
            .map(|e| &e.value)
            .collect()
    }

    #[test]
    fn extracts_observation_values() {
        let obs = json!({"resourceType": "Observation", "id": "o1", "status": "final",
            "subject": {"reference": "Patient/p1"},
            "performer": [{"reference": "Practitioner/d1"}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4",
                "display": "Hemoglobin A1c"}], "text": "HbA1c"},
            "effectiveDateTime": "2024-03-01T08:00:00+08:00",
            "valueQuantity": {"value": 7.2, "unit": "%", "system": "http://unitsofmeasure.org",
                "code": "%"},
            "meta": {"tag": [{"system": "urn:t", "code": "x"}], "source": "urn:org:1"}});
        let es = extract("Observation", &obs);
        assert!(find(&es, "code").contains(&&tok("http://loinc.org", "4548-4", "Hemoglobin A1c")));
        assert!(find(&es, "code").contains(&&tok("", "", "HbA1c")));
        assert_eq!(
            find(&es, "subject"),
            [&IndexValue::Reference {
                rtype: "Patient".into(),
                id: "p1".into()
            }]
        );
        // `patient` is served from `subject`'s rows, `combo-code` from `code`'s.
        assert!(find(&es, "patient").is_empty());
        assert!(find(&es, "combo-code").is_empty());
        assert_eq!(find(&es, "value-quantity").len(), 1);
        assert_eq!(find(&es, "_tag").len(), 1);
        assert!(
            find(&es, "_source").is_empty(),
            "served from the version's src"
        );
        assert!(
            find(&es, "combo-value-quantity").is_empty(),
            "served from value-quantity's rows, though it sorts first"
        );
        assert!(
            find(&es, "code-value-quantity").is_empty(),
            "served from the rows of code and value-quantity"
        );
        assert!(
            find(&es, "combo-code-value-quantity").is_empty(),
            "the resource-level pairs are code-value-quantity's"
        );
        // A component's pairs are the combo composite's own.
        let mut with_component = obs.clone();
        with_component["component"] = json!([{"code": {"coding": [{"system": "http://loinc.org",
            "code": "8480-6"}]}, "valueQuantity": {"value": 120, "code": "mm[Hg]"}}]);
        let es = extract("Observation", &with_component);
        assert_eq!(find(&es, "combo-code-value-quantity").len(), 1);
        assert_eq!(find(&es, "component-code-value-quantity").len(), 1);
        let dates: Vec<Entry> = es
            .iter()
            .filter(|e| matches!(e.value, IndexValue::Date(_)))
            .cloned()
            .collect();
        assert!(!dates.is_empty());
        assert_eq!(extract_kind("Observation", &obs, ParamType::Date), dates);
        assert!(find(&es, "_id").is_empty());
        assert_eq!(
            compartment_owner("Observation", "o1", &es).as_deref(),
            Some("p1")
        );
    }

    #[test]
    fn extracts_patient_values() {
        let p = json!({"resourceType": "Patient", "id": "p1",
            "identifier": [{"system": "urn:oid:2.16.156.10011.1.1", "value": "440106199001011234",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                    "code": "NI"}]}}],
            "name": [{"family": "张", "given": ["伟"], "text": "张伟"}],
            "birthDate": "1990-01-01", "gender": "male",
            "address": [{"city": "广州市", "district": "天河区"}]});
        let es = extract("Patient", &p);
        assert_eq!(find(&es, "family").len(), 1);
        assert_eq!(find(&es, "name").len(), 3);
        assert_eq!(find(&es, "identifier:of-type").len(), 1);
        assert_eq!(find(&es, "deceased"), [&tok("", "false", "")]);
        assert!(matches!(find(&es, "birthdate")[0], IndexValue::Date(_)));
        assert_eq!(
            compartment_owner("Patient", "p1", &es).as_deref(),
            Some("p1")
        );
    }
}
