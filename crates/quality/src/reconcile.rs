//! Reconciliation (对账): a source and the platform compare what each holds for a period, so
//! the source can resend exactly what is missing. Both sides compute the same content hash
//! of a resource — its canonical JSON (keys sorted) without `meta`, which the platform
//! stamps — and bucket resources by the local (UTC+8) day of their clinical time.
//!
//! A manifest carries either a list of `type/id` with content hashes (the exact form), or
//! per type and day a count and a hash over the day's sorted `id hash` lines (the compact
//! form, for periods too large to list). A day that disagrees is answered with the
//! platform's own list for that day, from which the source finds the rest.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use hutong_fhir::date;

/// The offset of the days resources are bucketed by (China Standard Time).
const DAY_OFFSET_MS: i64 = 8 * 3_600_000;

/// The content hash of a resource: SHA-256 of its canonical JSON without `meta`.
pub fn content_hash(v: &Value) -> String {
    let mut out = String::new();
    canonical(v, true, &mut out);
    hex(&Sha256::digest(out.as_bytes()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn canonical(v: &Value, top: bool, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().filter(|k| !(top && *k == "meta")).collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], false, out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, false, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The day (`YYYY-MM-DD`, UTC+8) of a resource's clinical time, `-` when it has none.
pub fn day_of(v: &Value) -> String {
    match crate::clinical_time_ms(v) {
        Some(ms) => day_of_ms(ms),
        None => "-".into(),
    }
}

pub fn day_of_ms(ms: i64) -> String {
    date::format_instant(ms + DAY_OFFSET_MS)[..10].to_string()
}

/// One resource as a side of the comparison sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    #[serde(rename = "type")]
    pub rtype: String,
    pub id: String,
    pub hash: String,
    /// The day of its clinical time; filled by the side that holds the resource.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub day: String,
}

impl Item {
    pub fn of(v: &Value) -> Option<Item> {
        Some(Item {
            rtype: v["resourceType"].as_str()?.to_string(),
            id: v["id"].as_str()?.to_string(),
            hash: content_hash(v),
            day: day_of(v),
        })
    }
}

/// A type's day in the compact form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Day {
    #[serde(rename = "type")]
    pub rtype: String,
    pub day: String,
    pub count: u64,
    pub hash: String,
}

/// What a source sends.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// First and last day (inclusive, `YYYY-MM-DD`) the manifest covers; resources without
    /// a clinical time (`-`) are covered when `undated` is set.
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub undated: bool,
    /// The resource types covered (default: those the manifest names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<Item>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Day>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("'{0}' is not a day (YYYY-MM-DD)")]
    Day(String),
    #[error("the period ends ({to}) before it starts ({from})")]
    Order { from: String, to: String },
    #[error("'{0}' is not an R4 resource type")]
    Type(String),
    #[error("a manifest lists resources or days, not both")]
    Both,
    #[error("{rtype}/{id} is listed twice")]
    Twice { rtype: String, id: String },
}

fn is_day(s: &str) -> bool {
    s.len() == 10 && date::parse(s).is_some()
}

impl Manifest {
    /// The compact or exact manifest of `resources` for the period.
    pub fn build(
        from: &str,
        to: &str,
        undated: bool,
        resources: &[Item],
        compact: bool,
    ) -> Manifest {
        let mut m = Manifest {
            from: from.into(),
            to: to.into(),
            undated,
            ..Default::default()
        };
        let inside: Vec<Item> = resources
            .iter()
            .filter(|i| m.covers_day(&i.day))
            .cloned()
            .collect();
        let mut types: BTreeSet<String> = inside.iter().map(|i| i.rtype.clone()).collect();
        types.extend(resources.iter().map(|i| i.rtype.clone()));
        m.types = types.into_iter().collect();
        if compact {
            m.days = days(&inside);
        } else {
            m.resources = inside;
        }
        m
    }

    pub fn check(&self) -> Result<(), ManifestError> {
        for d in [&self.from, &self.to] {
            if !is_day(d) {
                return Err(ManifestError::Day(d.clone()));
            }
        }
        if self.to < self.from {
            return Err(ManifestError::Order {
                from: self.from.clone(),
                to: self.to.clone(),
            });
        }
        if !self.resources.is_empty() && !self.days.is_empty() {
            return Err(ManifestError::Both);
        }
        let defs = hutong_fhir::Definitions::get();
        for t in self.covered_types() {
            if !defs.is_resource_type(&t) {
                return Err(ManifestError::Type(t));
            }
        }
        for d in &self.days {
            if d.day != "-" && !is_day(&d.day) {
                return Err(ManifestError::Day(d.day.clone()));
            }
        }
        let mut seen = BTreeSet::new();
        for i in &self.resources {
            if !seen.insert((&i.rtype, &i.id)) {
                return Err(ManifestError::Twice {
                    rtype: i.rtype.clone(),
                    id: i.id.clone(),
                });
            }
        }
        Ok(())
    }

    /// The resource types the comparison covers.
    pub fn covered_types(&self) -> BTreeSet<String> {
        let mut t: BTreeSet<String> = self.types.iter().cloned().collect();
        t.extend(self.resources.iter().map(|i| i.rtype.clone()));
        t.extend(self.days.iter().map(|d| d.rtype.clone()));
        t
    }

    pub fn covers_day(&self, day: &str) -> bool {
        if day == "-" {
            self.undated
        } else {
            self.from.as_str() <= day && day <= self.to.as_str()
        }
    }
}

/// The compact form of a list: per type and day, a count and a hash of the sorted lines.
pub fn days(items: &[Item]) -> Vec<Day> {
    let mut by: BTreeMap<(&str, &str), Vec<(&str, &str)>> = BTreeMap::new();
    for i in items {
        by.entry((&i.rtype, &i.day))
            .or_default()
            .push((&i.id, &i.hash));
    }
    by.into_iter()
        .map(|((rtype, day), mut lines)| {
            lines.sort_unstable();
            let mut h = Sha256::new();
            for (id, hash) in &lines {
                h.update(id.as_bytes());
                h.update(b" ");
                h.update(hash.as_bytes());
                h.update(b"\n");
            }
            Day {
                rtype: rtype.into(),
                day: day.into(),
                count: lines.len() as u64,
                hash: hex(&h.finalize()),
            }
        })
        .collect()
}

/// A `type/id` the two sides disagree about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key {
    #[serde(rename = "type")]
    pub rtype: String,
    pub id: String,
}

/// A day on which the compact form disagrees, with the platform's list for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayGap {
    #[serde(rename = "type")]
    pub rtype: String,
    pub day: String,
    pub source_count: u64,
    pub platform_count: u64,
    pub platform: Vec<Item>,
}

/// The platform's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Differences {
    /// Resources (or, compact, day buckets) both sides agree on.
    pub matched: u64,
    /// Held by the source, not by the platform: resend them.
    pub missing: Vec<Key>,
    /// Held by the platform, not listed by the source.
    pub extra: Vec<Key>,
    /// Held by both, with different content: resend the source's version.
    pub differs: Vec<Key>,
    /// Compact form: the days that disagree.
    pub days: Vec<DayGap>,
}

impl Differences {
    /// How many resources (or days) are out of step.
    pub fn gaps(&self) -> u64 {
        (self.missing.len() + self.extra.len() + self.differs.len() + self.days.len()) as u64
    }
}

/// Compares a manifest with what the platform holds from the source (`platform`: every
/// current resource of the covered types, any day; those outside the period are ignored).
pub fn compare(m: &Manifest, platform: &[Item]) -> Differences {
    let types = m.covered_types();
    let held: Vec<&Item> = platform
        .iter()
        .filter(|i| types.contains(&i.rtype) && m.covers_day(&i.day))
        .collect();
    let mut d = Differences::default();
    if m.resources.is_empty() && m.days.is_empty() {
        // An empty list says the source holds nothing: everything held is extra.
        d.extra = held
            .iter()
            .map(|i| Key {
                rtype: i.rtype.clone(),
                id: i.id.clone(),
            })
            .collect();
        d.extra.sort();
        return d;
    }
    if !m.days.is_empty() {
        let mine: Vec<Item> = held.iter().map(|i| (*i).clone()).collect();
        let ours: BTreeMap<(String, String), Day> = days(&mine)
            .into_iter()
            .map(|x| ((x.rtype.clone(), x.day.clone()), x))
            .collect();
        let theirs: BTreeMap<(String, String), &Day> = m
            .days
            .iter()
            .map(|x| ((x.rtype.clone(), x.day.clone()), x))
            .collect();
        let keys: BTreeSet<&(String, String)> = ours.keys().chain(theirs.keys()).collect();
        for k in keys {
            let (a, b) = (theirs.get(k), ours.get(k));
            if let (Some(a), Some(b)) = (a, b) {
                if a.count == b.count && a.hash == b.hash {
                    d.matched += a.count;
                    continue;
                }
            }
            let mut list: Vec<Item> = mine
                .iter()
                .filter(|i| i.rtype == k.0 && i.day == k.1)
                .cloned()
                .collect();
            list.sort_by(|x, y| x.id.cmp(&y.id));
            d.days.push(DayGap {
                rtype: k.0.clone(),
                day: k.1.clone(),
                source_count: a.map_or(0, |x| x.count),
                platform_count: b.map_or(0, |x| x.count),
                platform: list,
            });
        }
        return d;
    }
    let ours: BTreeMap<(&str, &str), &Item> = held
        .iter()
        .map(|i| ((i.rtype.as_str(), i.id.as_str()), *i))
        .collect();
    // A listed resource the platform holds outside the period is still held: look it up in
    // everything, not only the period.
    let anywhere: BTreeMap<(&str, &str), &Item> = platform
        .iter()
        .map(|i| ((i.rtype.as_str(), i.id.as_str()), i))
        .collect();
    let mut listed = BTreeSet::new();
    for i in &m.resources {
        let k = (i.rtype.as_str(), i.id.as_str());
        listed.insert(k);
        let key = Key {
            rtype: i.rtype.clone(),
            id: i.id.clone(),
        };
        match anywhere.get(&k) {
            None => d.missing.push(key),
            Some(p) if p.hash != i.hash => d.differs.push(key),
            Some(_) => d.matched += 1,
        }
    }
    for (k, _) in ours {
        if !listed.contains(&k) {
            d.extra.push(Key {
                rtype: k.0.into(),
                id: k.1.into(),
            });
        }
    }
    d.missing.sort();
    d.differs.sort();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obs(id: &str, when: &str, value: f64) -> Value {
        json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"text": "glucose"}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": "mmol/L"}})
    }

    #[test]
    fn the_hash_ignores_key_order_and_meta() {
        let a = obs("o1", "2026-03-01T08:00:00+08:00", 5.1);
        let mut b: Value = serde_json::from_str(
            r#"{"valueQuantity": {"unit": "mmol/L", "value": 5.1}, "id": "o1",
                "effectiveDateTime": "2026-03-01T08:00:00+08:00", "code": {"text": "glucose"},
                "status": "final", "resourceType": "Observation"}"#,
        )
        .unwrap();
        b["meta"] = json!({"source": "urn:x", "versionId": "3"});
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_ne!(
            content_hash(&a),
            content_hash(&obs("o1", "2026-03-01T08:00:00+08:00", 5.2))
        );
    }

    #[test]
    fn days_are_local_days() {
        // 23:30 on 1 March in Beijing is 15:30 UTC: still 1 March.
        assert_eq!(
            day_of(&obs("o", "2026-03-01T23:30:00+08:00", 1.0)),
            "2026-03-01"
        );
        // 00:30 on 2 March in Beijing is 16:30 UTC on 1 March: 2 March.
        assert_eq!(
            day_of(&obs("o", "2026-03-02T00:30:00+08:00", 1.0)),
            "2026-03-02"
        );
        assert_eq!(day_of(&json!({"resourceType": "Patient", "id": "p"})), "-");
    }

    fn items(list: &[Value]) -> Vec<Item> {
        list.iter().filter_map(Item::of).collect()
    }

    #[test]
    fn the_exact_form_names_missing_extra_and_differing() {
        let source = items(&[
            obs("same", "2026-03-01T08:00:00+08:00", 5.0),
            obs("changed", "2026-03-01T09:00:00+08:00", 6.0),
            obs("lost", "2026-03-02T08:00:00+08:00", 7.0),
        ]);
        let platform = items(&[
            obs("same", "2026-03-01T08:00:00+08:00", 5.0),
            obs("changed", "2026-03-01T09:00:00+08:00", 6.5),
            obs("stray", "2026-03-02T10:00:00+08:00", 8.0),
            // Outside the period: not extra.
            obs("old", "2026-01-01T10:00:00+08:00", 8.0),
        ]);
        let m = Manifest::build("2026-03-01", "2026-03-31", false, &source, false);
        m.check().unwrap();
        let d = compare(&m, &platform);
        let ids = |k: &[Key]| k.iter().map(|k| k.id.clone()).collect::<Vec<_>>();
        assert_eq!(d.matched, 1);
        assert_eq!(ids(&d.missing), ["lost"]);
        assert_eq!(ids(&d.differs), ["changed"]);
        assert_eq!(ids(&d.extra), ["stray"]);
        assert_eq!(d.gaps(), 3);
    }

    #[test]
    fn the_compact_form_names_the_days_that_differ() {
        let source = items(&[
            obs("a", "2026-03-01T08:00:00+08:00", 5.0),
            obs("b", "2026-03-02T08:00:00+08:00", 6.0),
            obs("c", "2026-03-02T09:00:00+08:00", 7.0),
        ]);
        let platform = items(&[
            obs("a", "2026-03-01T08:00:00+08:00", 5.0),
            obs("b", "2026-03-02T08:00:00+08:00", 6.0),
        ]);
        let m = Manifest::build("2026-03-01", "2026-03-02", false, &source, true);
        assert_eq!(m.days.len(), 2);
        assert!(m.resources.is_empty());
        let d = compare(&m, &platform);
        assert_eq!(d.matched, 1);
        assert_eq!(d.days.len(), 1);
        let gap = &d.days[0];
        assert_eq!(
            (gap.day.as_str(), gap.source_count, gap.platform_count),
            ("2026-03-02", 2, 1)
        );
        assert_eq!(
            gap.platform[0].id, "b",
            "the platform's list for the day comes back"
        );
        // The same data on both sides: nothing to do.
        assert_eq!(compare(&m, &source).gaps(), 0);
    }

    #[test]
    fn bad_manifests_are_named() {
        let mut m = Manifest {
            from: "2026-03-01".into(),
            to: "2026-02-01".into(),
            ..Default::default()
        };
        assert!(matches!(m.check(), Err(ManifestError::Order { .. })));
        m.to = "March".into();
        assert_eq!(m.check(), Err(ManifestError::Day("March".into())));
        m.to = "2026-03-31".into();
        m.types = vec!["Observaton".into()];
        assert_eq!(m.check(), Err(ManifestError::Type("Observaton".into())));
        m.types.clear();
        let i = Item::of(&obs("x", "2026-03-01T08:00:00+08:00", 1.0)).unwrap();
        m.resources = vec![i.clone(), i];
        assert!(matches!(m.check(), Err(ManifestError::Twice { .. })));
    }
}
