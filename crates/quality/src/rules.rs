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
    "unit-converted",
    "value-plausible",
    "code-valid",
    "reference",
    "encounter-subject",
    "patient-timeline",
    "dose-repeated",
    "vaccine-age",
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
    #[serde(default, rename = "work-orders")]
    work_orders: toml::Table,
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
    /// Record type → elements the data set recommends (the scorecard's completeness).
    pub recommended: BTreeMap<String, Vec<String>>,
    /// Vaccine codes whose series starts again every season (influenza).
    pub seasonal_vaccines: Vec<String>,
    /// Deadlines and automatic opening of work orders.
    pub work_orders: crate::workorder::Policy,
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
        let defaults = parse(DEFAULTS)?;
        let given = parse(text)?;
        let mut merged = defaults.rules;
        let work_orders = work_orders(defaults.work_orders, given.work_orders)?;
        for (id, raw) in given.rules {
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
        let table = |key: &str| -> Result<BTreeMap<String, Vec<String>>, RulesError> {
            let mut out = BTreeMap::new();
            let elements = param("data-set", key)
                .and_then(toml::Value::as_table)
                .ok_or_else(|| {
                    bad(
                        "data-set",
                        &format!("{key} is a table of record type → elements"),
                    )
                })?;
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
                    .ok_or_else(|| bad("data-set", &format!("{key}.{rtype} is a list of names")))?;
                out.insert(rtype.clone(), names);
            }
            Ok(out)
        };
        let seasonal_vaccines = param("dose-repeated", "seasonal")
            .and_then(toml::Value::as_array)
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_str().map(String::from))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| bad("dose-repeated", "seasonal is a list of vaccine codes"))?;
        let data_set = table("elements")?;
        let recommended = table("recommended")?;
        Ok(Rules {
            severity,
            clinical_tolerance_ms: tolerance * 60_000,
            inpatient_diagnoses,
            data_set,
            recommended,
            seasonal_vaccines,
            work_orders,
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

/// The `[work-orders]` table: the defaults overridden key by key.
fn work_orders(
    mut merged: toml::Table,
    given: toml::Table,
) -> Result<crate::workorder::Policy, RulesError> {
    let bad = |message: String| RulesError::Param {
        rule: "work-orders".into(),
        message,
    };
    for (k, v) in given {
        match (merged.get_mut(&k), v) {
            (Some(toml::Value::Table(slot)), toml::Value::Table(t)) => {
                for (p, h) in t {
                    if !slot.contains_key(&p) {
                        return Err(bad(format!(
                            "sla_hours has no priority '{p}' (routine, urgent, asap, stat)"
                        )));
                    }
                    slot.insert(p, h);
                }
            }
            (Some(slot), v) => *slot = v,
            (None, _) => return Err(bad(format!("unknown parameter '{k}'"))),
        }
    }
    let hours = |v: Option<&toml::Value>, what: &str| {
        v.and_then(toml::Value::as_integer)
            .filter(|h| *h >= 0)
            .ok_or_else(|| bad(format!("{what} is a whole number ≥ 0")))
    };
    let mut sla_hours = BTreeMap::new();
    let table = merged
        .get("sla_hours")
        .and_then(toml::Value::as_table)
        .ok_or_else(|| bad("sla_hours is a table of priority → hours".into()))?;
    for p in crate::workorder::Policy::PRIORITIES {
        sla_hours.insert(
            p.to_string(),
            hours(table.get(p), &format!("sla_hours.{p}"))?,
        );
    }
    let repeat_threshold = hours(merged.get("repeat_threshold"), "repeat_threshold")?.max(1);
    let repeat_window_hours = hours(merged.get("repeat_window_hours"), "repeat_window_hours")?;
    Ok(crate::workorder::Policy {
        sla_hours,
        repeat_threshold,
        repeat_window_hours,
    })
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
