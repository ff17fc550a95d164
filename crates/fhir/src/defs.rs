//! The R4 definitions Hutong uses, generated from the official bundles (see
//! `tools/gen-fhir-defs.py`) and embedded at compile time.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;

use serde::Deserialize;

use crate::path::{self, Expr};

const R4_JSON: &str = include_str!("../defs/r4.json");

/// A search parameter's type, as R4 defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }
}

/// One component of a composite search parameter.
#[derive(Debug, Clone)]
pub struct Component {
    pub code: String,
    pub kind: ParamType,
    pub expr: Expr,
}

/// A search parameter as it applies to one resource type.
#[derive(Debug, Clone)]
pub struct SearchParamDef {
    pub code: String,
    pub kind: ParamType,
    /// The FHIRPath expression as written in the specification.
    pub expression: String,
    pub expr: Option<Expr>,
    pub targets: Vec<String>,
    pub components: Vec<Component>,
    /// Set when this parameter's values are those of another parameter of the same type, so
    /// they are stored once (see [`Derived`]).
    pub derived: Option<Derived>,
    /// A composite over the resource itself whose components are parameters of the type
    /// (`Observation`'s `code-value-quantity` is its `code` and its `value-quantity`): it is
    /// answered by intersecting those parameters' rows and stores none of its own.
    pub split: bool,
    /// `{code}:of-type` and `{code}:identifier`: the names of the token rows that serve
    /// those modifiers, made once so that index entries borrow them.
    pub of_type: String,
    pub identifier: String,
}

/// How a parameter is served from another one's index rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Derived {
    /// Same expression as `base`.
    Same { base: String },
    /// `base.where(resolve() is target)`: the base's references of that type.
    Restrict { base: String, target: String },
    /// `base | more`: the base's rows plus rows of its own for the values the base lacks.
    Union { base: String },
}

/// Finds the parameters whose values another parameter of the type already indexes.
fn derive(m: &mut BTreeMap<String, SearchParamDef>) {
    // A composite's values are also shaped by its components: two composites over the same
    // expression hold the same values only when their components do (kinds and expressions,
    // whatever the component parameters are called).
    type Shape = Vec<(ParamType, Expr)>;
    let snapshot: Vec<(String, ParamType, Option<Expr>, Shape)> = m
        .values()
        .map(|p| {
            let shape = p
                .components
                .iter()
                .map(|c| (c.kind, c.expr.clone()))
                .collect();
            (p.code.clone(), p.kind, p.expr.clone(), shape)
        })
        .collect();
    let find = |kind: ParamType, e: &Expr, shape: &Shape, not: &str| -> Option<String> {
        snapshot
            .iter()
            .find(|(c, k, x, sh)| {
                c != not
                    && *k == kind
                    && x.as_ref() == Some(e)
                    && sh == shape
                    && !c.starts_with('_')
            })
            .map(|(c, _, _, _)| c.clone())
    };
    let mut found = Vec::new();
    for (code, kind, expr, shape) in &snapshot {
        let Some(e) = expr else { continue };
        if code.starts_with('_') {
            continue;
        }
        let d = if *kind == ParamType::Composite {
            // `Observation | Observation.component` over the same components as the
            // `Observation` composite: the resource-level values are that one's rows.
            match e {
                Expr::Union(a, _) => {
                    find(*kind, a, shape, code).map(|base| Derived::Union { base })
                }
                _ => None,
            }
        } else if let Some(base) = find(*kind, e, shape, code).filter(|b| b < code) {
            Some(Derived::Same { base })
        } else if let Some((inner, target)) = path::as_resolve_filter(e) {
            find(*kind, inner, shape, code).map(|base| Derived::Restrict {
                base,
                target: target.to_string(),
            })
        } else if let Expr::Union(a, _) = e {
            // `(x | y) | z | …` parses left-nested: any leading run of its branches may be
            // another parameter (`value-quantity` leads `combo-value-quantity`).
            std::iter::successors(Some(&**a), |x| match x {
                Expr::Union(l, _) => Some(&**l),
                _ => None,
            })
            .find_map(|x| find(*kind, x, shape, code))
            .map(|base| Derived::Union { base })
        } else {
            None
        };
        if let Some(d) = d {
            found.push((code.clone(), d));
        }
    }
    // A parameter that others derive from must itself be stored.
    let bases: HashSet<String> = found
        .iter()
        .map(|(_, d)| match d {
            Derived::Same { base } | Derived::Restrict { base, .. } | Derived::Union { base } => {
                base.clone()
            }
        })
        .collect();
    for (code, d) in found {
        if !bases.contains(&code) {
            if let Some(p) = m.get_mut(&code) {
                p.derived = Some(d);
            }
        }
    }
}

/// Marks the composites that [`SearchParamDef::split`] describes. Only components of kinds
/// whose parameter holds exactly the component's values qualify (`Observation.value-string`
/// also indexes a CodeableConcept's text, which `code-value-string` does not mean).
fn split(rtype: &str, m: &mut BTreeMap<String, SearchParamDef>) {
    let split: Vec<String> = m
        .values()
        .filter(|p| {
            p.kind == ParamType::Composite
                && p.expression.trim() == rtype
                && p.components.iter().all(|c| {
                    matches!(
                        c.kind,
                        ParamType::Token | ParamType::Quantity | ParamType::Date
                    ) && m.get(&c.code).is_some_and(|own| own.kind == c.kind)
                })
        })
        .map(|p| p.code.clone())
        .collect();
    for code in split {
        if let Some(p) = m.get_mut(&code) {
            p.split = true;
        }
    }
}

#[derive(Deserialize)]
struct RawComponent {
    code: String,
    #[serde(rename = "type")]
    kind: ParamType,
    expr: String,
}

#[derive(Deserialize)]
struct RawParam {
    code: String,
    base: Vec<String>,
    #[serde(rename = "type")]
    kind: ParamType,
    expr: String,
    #[serde(default)]
    target: Vec<String>,
    #[serde(default)]
    component: Vec<RawComponent>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    resource_types: Vec<String>,
    search_parameters: Vec<RawParam>,
    patient_compartment: BTreeMap<String, Vec<String>>,
}

/// All definitions, loaded once.
#[derive(Debug)]
pub struct Definitions {
    types: Vec<String>,
    type_set: HashSet<String>,
    /// resource type → code → definition; includes the `Resource`/`DomainResource` ones.
    params: HashMap<String, BTreeMap<String, SearchParamDef>>,
    compartment: BTreeMap<String, Vec<String>>,
}

static DEFS: OnceLock<Definitions> = OnceLock::new();

impl Definitions {
    /// The embedded R4 definitions.
    pub fn get() -> &'static Definitions {
        DEFS.get_or_init(|| Definitions::load(R4_JSON).expect("embedded R4 definitions parse"))
    }

    fn load(json: &str) -> Result<Definitions, String> {
        let raw: Raw = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let type_set: HashSet<String> = raw.resource_types.iter().cloned().collect();
        let mut common: Vec<&RawParam> = Vec::new();
        let mut params: HashMap<String, BTreeMap<String, SearchParamDef>> = HashMap::new();
        let build = |p: &RawParam, rtype: &str| -> Result<SearchParamDef, String> {
            let expr = if p.expr.is_empty() {
                None
            } else {
                let full = path::parse(&p.expr).map_err(|e| format!("{}: {e}", p.code))?;
                // Shared parameters (clinical-patient, …) list a branch per base type:
                // keep only this type's branches, so extraction evaluates what applies.
                path::specialize(&full, rtype)
            };
            let components = p
                .component
                .iter()
                .map(|c| {
                    Ok(Component {
                        code: c.code.clone(),
                        kind: c.kind,
                        expr: path::parse(&c.expr).map_err(|e| format!("{}: {e}", c.code))?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(SearchParamDef {
                code: p.code.clone(),
                kind: p.kind,
                expression: p.expr.clone(),
                expr,
                targets: p.target.clone(),
                components,
                derived: None,
                split: false,
                of_type: format!("{}:of-type", p.code),
                identifier: format!("{}:identifier", p.code),
            })
        };
        for p in &raw.search_parameters {
            for base in &p.base {
                if base == "Resource" || base == "DomainResource" {
                    common.push(p);
                } else {
                    params
                        .entry(base.clone())
                        .or_default()
                        .insert(p.code.clone(), build(p, base)?);
                }
            }
        }
        for t in &raw.resource_types {
            let m = params.entry(t.clone()).or_default();
            for p in &common {
                m.entry(p.code.clone()).or_insert(build(p, t)?);
            }
            derive(m);
            split(t, m);
        }
        Ok(Definitions {
            types: raw.resource_types,
            type_set,
            params,
            compartment: raw.patient_compartment,
        })
    }

    pub fn resource_types(&self) -> &[String] {
        &self.types
    }

    pub fn is_resource_type(&self, t: &str) -> bool {
        self.type_set.contains(t)
    }

    /// The search parameters of a resource type, by code (includes `_id`, `_lastUpdated`,
    /// `_tag`, `_profile`, `_security`, `_source`).
    pub fn params(&self, rtype: &str) -> Option<&BTreeMap<String, SearchParamDef>> {
        self.params.get(rtype)
    }

    pub fn param(&self, rtype: &str, code: &str) -> Option<&SearchParamDef> {
        self.params.get(rtype)?.get(code)
    }

    /// The parameters through which a resource of `rtype` belongs to a Patient's compartment
    /// (`None` when the type is not in the compartment).
    pub fn compartment_params(&self, rtype: &str) -> Option<&[String]> {
        self.compartment.get(rtype).map(Vec::as_slice)
    }

    /// The types that are members of the Patient compartment.
    pub fn compartment_types(&self) -> impl Iterator<Item = &str> {
        self.compartment.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_every_r4_parameter_expression() {
        let d = Definitions::get();
        assert!(d.resource_types().len() >= 145);
        assert!(d.is_resource_type("Observation"));
        assert!(!d.is_resource_type("Foo"));
        let code = d.param("Observation", "code").unwrap();
        assert_eq!(code.kind, ParamType::Token);
        assert_eq!(
            d.param("Observation", "_lastUpdated").unwrap().kind,
            ParamType::Date
        );
        let cvq = d.param("Observation", "code-value-quantity").unwrap();
        assert_eq!(cvq.components.len(), 2);
        assert_eq!(
            d.compartment_params("Observation").unwrap(),
            ["subject", "performer"]
        );
        let subject = d.param("Observation", "subject").unwrap();
        assert!(subject.targets.iter().any(|t| t == "Patient"));
        assert_eq!(
            d.param("Observation", "patient").unwrap().derived,
            Some(Derived::Restrict {
                base: "subject".into(),
                target: "Patient".into()
            })
        );
        assert_eq!(
            d.param("Observation", "combo-code").unwrap().derived,
            Some(Derived::Union {
                base: "code".into()
            })
        );
        assert!(d.param("Observation", "code").unwrap().derived.is_none());
        let split = |t: &str, c: &str| d.param(t, c).unwrap().split;
        assert!(split("Observation", "code-value-quantity"));
        assert!(split("Observation", "code-value-concept"));
        assert!(split("Observation", "code-value-date"));
        assert!(
            !split("Observation", "code-value-string"),
            "value-string means more"
        );
        assert!(!split("Observation", "combo-code-value-quantity"));
        assert!(!split("Observation", "component-code-value-quantity"));
        assert!(!split("Observation", "code"));
        assert_eq!(
            d.param("Observation", "combo-code-value-quantity")
                .unwrap()
                .derived,
            Some(Derived::Union {
                base: "code-value-quantity".into()
            })
        );
        assert_eq!(
            d.param("Observation", "combo-value-quantity")
                .unwrap()
                .derived,
            Some(Derived::Union {
                base: "value-quantity".into()
            })
        );
        // Same expression, other components: not the same values.
        assert!(d
            .param("Observation", "code-value-string")
            .unwrap()
            .derived
            .is_none());
        // The shared clinical-patient expression is cut down to this type's branch.
        assert_eq!(
            d.param("Condition", "patient").unwrap().expr,
            Some(path::parse("Condition.subject.where(resolve() is Patient)").unwrap())
        );
    }
}
