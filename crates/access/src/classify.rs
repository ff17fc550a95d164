//! Sensitivity classification at intake: a resource that carries a code of a sensitive
//! category (a psychiatric diagnosis, an HIV test, a pregnancy) gets that category's
//! security label, so that the access decision can keep it out of grants that do not name
//! the category. The rules are data (`data/sensitivity.json`), replaceable by a file of the
//! same shape (`sensitivity_rules` in the configuration).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use hutong_fhir::json::Fields;

#[derive(Debug, Deserialize)]
struct RuleFile {
    rules: Vec<RuleDef>,
}

#[derive(Debug, Deserialize)]
struct RuleDef {
    category: String,
    system: String,
    #[serde(default)]
    prefixes: Vec<String>,
    #[serde(default)]
    codes: Vec<String>,
}

/// The compiled rules: per code system, exact codes and prefixes with their category bits.
/// Every coding of every resource submitted is looked up here, most of them in systems no
/// rule names, which one hash of the system settles.
#[derive(Debug, Default)]
pub struct Classifier {
    systems: foldhash::HashMap<String, SystemRules>,
}

#[derive(Debug, Default)]
struct SystemRules {
    exact: foldhash::HashMap<String, u32>,
    prefixes: Vec<(String, u32)>,
}

#[derive(Debug, thiserror::Error)]
#[error("sensitivity rules: {0}")]
pub struct RuleError(String);

/// A code as the rules compare it: without dots, in upper case (`f32.9` is `F329`).
fn fold(code: &str) -> Cow<'_, str> {
    if code
        .bytes()
        .all(|b| b != b'.' && !b.is_ascii_lowercase() && b.is_ascii())
    {
        return Cow::Borrowed(code);
    }
    Cow::Owned(
        code.chars()
            .filter(|c| *c != '.')
            .flat_map(char::to_uppercase)
            .collect(),
    )
}

impl Classifier {
    /// The rules shipped with Hutong.
    pub fn builtin() -> Classifier {
        Classifier::parse(include_str!("../data/sensitivity.json")).expect("shipped rules parse")
    }

    /// Rules from a JSON document of the shipped file's shape.
    pub fn parse(text: &str) -> Result<Classifier, RuleError> {
        let f: RuleFile = serde_json::from_str(text).map_err(|e| RuleError(e.to_string()))?;
        let mut c = Classifier::default();
        for r in f.rules {
            let bit = hutong_fhir::security::grantable(&r.category)
                .ok_or_else(|| RuleError(format!("unknown category '{}'", r.category)))?
                .bit;
            let system = c.systems.entry(r.system).or_default();
            for code in r.codes {
                *system.exact.entry(fold(&code).into_owned()).or_default() |= bit;
            }
            for p in r.prefixes {
                system.prefixes.push((fold(&p).into_owned(), bit));
            }
        }
        Ok(c)
    }

    /// The category bits of one coding.
    pub fn of_coding(&self, system: &str, code: &str) -> u32 {
        let Some(rules) = self.systems.get(system) else {
            return 0;
        };
        let code = fold(code);
        let mut bits = rules.exact.get(code.as_ref()).copied().unwrap_or(0);
        for (p, bit) in &rules.prefixes {
            if code.starts_with(p.as_str()) {
                bits |= bit;
            }
        }
        bits
    }

    /// The category bits of every coding anywhere in the resource (its own labels aside).
    pub fn of_resource(&self, v: &Value) -> u32 {
        fn walk(c: &Classifier, v: &Value, bits: &mut u32, depth: usize) {
            if depth > 24 {
                return;
            }
            match v {
                Value::Object(o) => {
                    if let (Some(Value::String(s)), Some(Value::String(code))) =
                        (o.field("system"), o.field("code"))
                    {
                        *bits |= c.of_coding(s, code);
                    }
                    for (k, x) in o {
                        if k != "meta" {
                            walk(c, x, bits, depth + 1);
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| walk(c, x, bits, depth + 1)),
                _ => {}
            }
        }
        let mut bits = 0;
        walk(self, v, &mut bits, 0);
        bits
    }

    /// Adds the labels of the categories the resource's codes put it in.
    pub fn label(&self, v: &mut Value) {
        let bits = self.of_resource(v);
        if bits != 0 {
            hutong_fhir::security::add_labels(v, bits);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hutong_fhir::security::{bits, HIV_STI, MENTAL_HEALTH, REPRODUCTIVE};
    use serde_json::json;

    const ICD: &str = "http://hl7.org/fhir/sid/icd-10";

    #[test]
    fn codes_put_resources_in_categories() {
        let c = Classifier::builtin();
        assert_eq!(c.of_coding(ICD, "F32.9"), MENTAL_HEALTH);
        assert_eq!(c.of_coding(ICD, "b20"), HIV_STI);
        assert_eq!(c.of_coding(ICD, "O80"), REPRODUCTIVE);
        assert_eq!(c.of_coding(ICD, "J06.9"), 0);
        assert_eq!(c.of_coding("http://loinc.org", "75622-1"), HIV_STI);
        assert_eq!(c.of_coding("http://unitsofmeasure.org", "F"), 0);
        let mut cond = json!({"resourceType": "Condition",
            "code": {"coding": [{"system": ICD, "code": "F32.9", "display": "抑郁发作"}]},
            "evidence": [{"code": [{"coding": [{"system": ICD, "code": "Z21"}]}]}]});
        c.label(&mut cond);
        assert_eq!(bits(&cond), MENTAL_HEALTH | HIV_STI);
        let mut plain = json!({"resourceType": "Observation", "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]}});
        c.label(&mut plain);
        assert!(plain.get("meta").is_none());
        assert!(Classifier::parse(r#"{"rules": [{"category": "nope", "system": "x"}]}"#).is_err());
    }
}
