//! The rules file: which intake rules run, how severe their findings are, and their
//! parameters. The embedded `rules.toml` holds the defaults; a deployment's file overrides
//! them rule by rule.

use std::collections::BTreeMap;

use serde::Deserialize;

const DEFAULTS: &str = include_str!("../rules.toml");

/// Every rule the platform knows, in the order they are documented.
pub const RULES: &[&str] = &[
    "structure",
    "id-number",
    "birth-date",
    "birth-date-id",
    "period-order",
    "clinical-time",
    "unit-ucum",
    "unit-expected",
    "value-plausible",
    "code-valid",
    "reference",
    "encounter-subject",
    "duplicate",
    "data-set",
];

/// What a finding does to the submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Accepted and recorded.
    Warning,
    /// Rejected (with the whole transaction) and quarantined.
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("rules file: {0}")]
    Parse(String),
    #[error("rules file: unknown rule '{0}' (known: {known})", known = RULES.join(", "))]
    Unknown(String),
    #[error("rules file: rule '{rule}': {message}")]
    Param { rule: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    rules: BTreeMap<String, RawRule>,
}

#[derive(Deserialize, Clone)]
struct RawRule {
    severity: Option<String>,
    #[serde(flatten)]
    params: toml::Table,
}

/// The rule configuration in force.
#[derive(Debug, Clone)]
pub struct Rules {
    severity: BTreeMap<String, Option<Severity>>,
    pub clinical_tolerance_ms: i64,
    pub inpatient_diagnoses: bool,
    /// Record type → the elements the platform's data set requires.
    pub data_set: BTreeMap<String, Vec<String>>,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules::from_toml("").expect("the embedded default rules are valid")
    }
}

impl Rules {
    /// The defaults overridden by `text` (a rules file; empty for the defaults alone).
    pub fn from_toml(text: &str) -> Result<Rules, RulesError> {
        let parse = |t: &str| -> Result<File, RulesError> {
            toml::from_str(t).map_err(|e| RulesError::Parse(e.to_string()))
        };
        let mut merged = parse(DEFAULTS)?.rules;
        for (id, raw) in parse(text)?.rules {
            if !RULES.contains(&id.as_str()) {
                return Err(RulesError::Unknown(id));
            }
            let slot = merged.get_mut(&id).expect("every rule has a default");
            if raw.severity.is_some() {
                slot.severity = raw.severity;
            }
            for (k, v) in raw.params {
                if !slot.params.contains_key(&k) {
                    return Err(RulesError::Param {
                        rule: id.clone(),
                        message: format!("unknown parameter '{k}'"),
                    });
                }
                slot.params.insert(k, v);
            }
        }
        let mut severity = BTreeMap::new();
        for (id, raw) in &merged {
            let s = match raw.severity.as_deref() {
                Some("error") => Some(Severity::Error),
                Some("warning") => Some(Severity::Warning),
                Some("off") | None => None,
                Some(other) => {
                    return Err(RulesError::Param {
                        rule: id.clone(),
                        message: format!("severity '{other}' is not one of error, warning, off"),
                    })
                }
            };
            severity.insert(id.clone(), s);
        }
        let param = |rule: &str, key: &str| merged.get(rule).and_then(|r| r.params.get(key));
        let bad = |rule: &str, message: &str| RulesError::Param {
            rule: rule.into(),
            message: message.into(),
        };
        let tolerance = param("clinical-time", "tolerance_minutes")
            .and_then(toml::Value::as_integer)
            .filter(|m| *m >= 0)
            .ok_or_else(|| bad("clinical-time", "tolerance_minutes is a whole number ≥ 0"))?;
        let inpatient_diagnoses = param("data-set", "inpatient_diagnoses")
            .and_then(toml::Value::as_bool)
            .ok_or_else(|| bad("data-set", "inpatient_diagnoses is true or false"))?;
        let mut data_set = BTreeMap::new();
        let elements = param("data-set", "elements")
            .and_then(toml::Value::as_table)
            .ok_or_else(|| bad("data-set", "elements is a table of record type → elements"))?;
        for (rtype, list) in elements {
            if !hutong_fhir::Definitions::get().is_resource_type(rtype) {
                return Err(bad(
                    "data-set",
                    &format!("'{rtype}' is not an R4 resource type"),
                ));
            }
            let names = list
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_str().map(String::from))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| bad("data-set", &format!("elements.{rtype} is a list of names")))?;
            data_set.insert(rtype.clone(), names);
        }
        Ok(Rules {
            severity,
            clinical_tolerance_ms: tolerance * 60_000,
            inpatient_diagnoses,
            data_set,
        })
    }

    /// The severity of `rule`'s findings, `None` when it is off.
    pub fn severity(&self, rule: &str) -> Option<Severity> {
        self.severity.get(rule).copied().flatten()
    }

    /// Turns `rule` off.
    pub fn disable(&mut self, rule: &str) {
        if let Some(s) = self.severity.get_mut(rule) {
            *s = None;
        }
    }

    /// The rules in force and their severities (for `hutong rules` and the scorecards).
    pub fn list(&self) -> Vec<(&'static str, Option<Severity>)> {
        RULES.iter().map(|r| (*r, self.severity(r))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_every_rule() {
        let r = Rules::default();
        for id in RULES {
            assert!(r.severity.contains_key(*id), "{id} has no default");
        }
        assert_eq!(r.severity("structure"), Some(Severity::Error));
        assert_eq!(r.severity("duplicate"), Some(Severity::Warning));
        assert_eq!(r.clinical_tolerance_ms, 86_400_000);
        assert!(r.data_set["Observation"].contains(&"effective[x]".to_string()));
    }

    #[test]
    fn a_file_overrides_rule_by_rule() {
        let r = Rules::from_toml(
            "[rules.id-number]\nseverity = \"error\"\n[rules.duplicate]\nseverity = \"off\"\n\
             [rules.clinical-time]\ntolerance_minutes = 60\n",
        )
        .unwrap();
        assert_eq!(r.severity("id-number"), Some(Severity::Error));
        assert_eq!(r.severity("duplicate"), None);
        assert_eq!(r.severity("structure"), Some(Severity::Error));
        assert_eq!(r.clinical_tolerance_ms, 3_600_000);
    }

    #[test]
    fn mistakes_in_the_file_are_named() {
        let e = Rules::from_toml("[rules.no-such-rule]\nseverity = \"error\"\n").unwrap_err();
        assert!(e.to_string().contains("no-such-rule"), "{e}");
        let e = Rules::from_toml("[rules.reference]\nseverity = \"fatal\"\n").unwrap_err();
        assert!(e.to_string().contains("fatal"), "{e}");
        let e = Rules::from_toml("[rules.reference]\ncolour = 1\n").unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = Rules::from_toml("[rules.data-set.elements]\nPatients = []\n").unwrap_err();
        assert!(e.to_string().contains("Patients"), "{e}");
        let e = Rules::from_toml("[rules.clinical-time]\ntolerance_minutes = -3\n").unwrap_err();
        assert!(e.to_string().contains("tolerance"), "{e}");
        assert!(Rules::from_toml("not toml [").is_err());
    }
}
