use std::collections::{HashMap, HashSet};

use serde_json::json;

use super::*;

/// 2026-07-01T00:00:00Z
const NOW: i64 = 1_782_864_000_000;

fn obs(code: &str, value: f64, unit: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"extension": [{"url": COLLECTED_URL, "valueInstant": "2026-06-01T09:00:00Z"}]},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "effectiveDateTime": "2026-06-01T08:00:00+08:00",
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    })
}

fn rules_of(found: &[Finding]) -> Vec<&'static str> {
    found.iter().map(|f| f.rule).collect()
}

#[test]
fn a_clean_observation_passes() {
    let c = Checker::default();
    assert_eq!(c.check(&obs("14771-0", 5.2, "mmol/L"), NOW), vec![]);
}

#[test]
fn structure_findings_are_located() {
    let mut o = obs("14771-0", 5.2, "mmol/L");
    o.as_object_mut().unwrap().remove("status");
    o["valueQuantity"]["value"] = json!("5.2");
    let f = Checker::default().check(&o, NOW);
    let s: Vec<&Finding> = f.iter().filter(|f| f.rule == "structure").collect();
    assert_eq!(s.len(), 2, "{f:?}");
    assert!(
        s.iter().any(|f| f.expression == "Observation.status"),
        "{s:?}"
    );
    assert!(
        s.iter()
            .any(|f| f.expression == "Observation.valueQuantity.value"),
        "{s:?}"
    );
    assert!(s.iter().all(|f| f.severity == Severity::Error));
}

#[test]
fn units_and_values_are_checked_against_the_catalogue() {
    let c = Checker::default();
    // mg/dL value labelled mmol/L.
    let f = c.check(&obs("14771-0", 94.0, "mmol/L"), NOW);
    assert_eq!(rules_of(&f), vec!["value-plausible"]);
    assert_eq!(f[0].expression, "Observation.valueQuantity.value");
    assert!(f[0].zh.contains("空腹血糖"), "{}", f[0].zh);
    // Metres labelled cm.
    assert_eq!(
        rules_of(&c.check(&obs("8302-2", 1.72, "cm"), NOW)),
        vec!["value-plausible"]
    );
    // A unit in Chinese is no UCUM code.
    let f = c.check(&obs("718-7", 130.0, "克/升"), NOW);
    assert_eq!(rules_of(&f), vec!["unit-ucum"]);
    assert_eq!(f[0].expression, "Observation.valueQuantity.code");
    // A valid UCUM unit, but not the platform's for this test.
    assert_eq!(
        rules_of(&c.check(&obs("718-7", 13.0, "g/dL"), NOW)),
        vec!["unit-expected"]
    );
    // Blood pressure components.
    let mut bp = obs("85354-9", 0.0, "mm[Hg]");
    bp.as_object_mut().unwrap().remove("valueQuantity");
    bp["component"] = json!([
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
         "valueQuantity": {"value": 1250, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
         "valueQuantity": {"value": 80, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
    ]);
    let f = c.check(&bp, NOW);
    assert_eq!(rules_of(&f), vec!["value-plausible"]);
    assert_eq!(
        f[0].expression,
        "Observation.component[0].valueQuantity.value"
    );
}

#[test]
fn codes_are_checked_in_their_system() {
    let c = Checker::default();
    let f = c.check(&obs("14771-1", 5.0, "mmol/L"), NOW);
    assert_eq!(rules_of(&f), vec!["code-valid"]);
    assert_eq!(f[0].expression, "Observation.code.coding[0].code");
    let cond = json!({"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "JO6.9"}]}});
    assert_eq!(rules_of(&c.check(&cond, NOW)), vec!["code-valid"]);
}

#[test]
fn dates_follow_time() {
    let c = Checker::default();
    let mut o = obs("14771-0", 5.0, "mmol/L");
    o["effectiveDateTime"] = json!("2028-03-01T08:00:00+08:00");
    let f = c.check(&o, NOW);
    assert_eq!(rules_of(&f), vec!["clinical-time"]);
    assert_eq!(f[0].expression, "Observation.effectiveDateTime");
    // Within the tolerance of the collection time: fine.
    o["effectiveDateTime"] = json!("2026-06-01T09:05:00Z");
    assert_eq!(c.check(&o, NOW), vec![]);
    let enc = json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "2026-05-03T10:00:00+08:00", "end": "2026-05-01T10:00:00+08:00"}});
    let f = c.check(&enc, NOW);
    assert_eq!(rules_of(&f), vec!["period-order"]);
    assert!(
        f[0].en.starts_with("Discharge is before admission"),
        "{}",
        f[0].en
    );
    let p = json!({"resourceType": "Patient", "birthDate": "2027-01-01", "gender": "female",
        "name": [{"text": "张三"}], "identifier": [{"system": "urn:x", "value": "1"}]});
    assert_eq!(rules_of(&c.check(&p, NOW)), vec!["birth-date"]);
}

#[test]
fn id_numbers_are_checked_and_agree_with_the_birth_date() {
    let c = Checker::default();
    let good = hutong_cn::idcard::make(440106, 1985, 3, 7, 123);
    let patient = |id: &str, birth: &str| {
        json!({"resourceType": "Patient", "gender": "male", "birthDate": birth,
               "name": [{"text": "张伟"}],
               "identifier": [{"system": ID_SYSTEM, "value": id}]})
    };
    assert_eq!(c.check(&patient(&good, "1985-03-07"), NOW), vec![]);
    let mut bad = good.clone();
    let last = bad.pop().unwrap();
    bad.push(if last == '0' { '1' } else { '0' });
    let f = c.check(&patient(&bad, "1985-03-07"), NOW);
    assert_eq!(rules_of(&f), vec!["id-number"]);
    assert_eq!(f[0].severity, Severity::Warning);
    assert_eq!(f[0].expression, "Patient.identifier[0].value");
    assert_eq!(
        rules_of(&c.check(&patient(&good, "1985-07-03"), NOW)),
        vec!["birth-date-id"]
    );
}

#[test]
fn the_data_set_requires_its_elements() {
    let c = Checker::default();
    let mut o = obs("14771-0", 5.0, "mmol/L");
    o.as_object_mut().unwrap().remove("effectiveDateTime");
    let f = c.check(&o, NOW);
    assert_eq!(rules_of(&f), vec!["data-set"]);
    assert_eq!(f[0].expression, "Observation.effective");
    let enc = json!({"resourceType": "Encounter", "status": "finished",
        "class": {"code": "IMP"}, "subject": {"reference": "Patient/p1"},
        "period": {"start": "2026-05-01", "end": "2026-05-03"},
        "diagnosis": [{"condition": {"reference": "Condition/c1"},
                       "use": {"coding": [{"code": "AD"}]}}]});
    let f = c.check(&enc, NOW);
    assert_eq!(rules_of(&f), vec!["data-set"], "{f:?}");
    assert!(f[0].en.contains("discharge"));
}

#[test]
fn severities_follow_the_rules_file() {
    let rules = Rules::from_toml(
        "[rules.value-plausible]\nseverity = \"warning\"\n[rules.code-valid]\nseverity = \"off\"\n",
    )
    .unwrap();
    let c = Checker::new(rules);
    let f = c.check(&obs("14771-1", 94.0, "mmol/L"), NOW);
    // Not a catalogued code (the check digit is wrong) and code-valid is off: nothing.
    assert_eq!(f, vec![]);
    let f = c.check(&obs("14771-0", 94.0, "mmol/L"), NOW);
    assert_eq!(f[0].severity, Severity::Warning);
    assert!(!rejects(&f));
}

struct Held {
    ids: HashSet<(String, String)>,
    encounters: HashMap<String, String>,
    content: HashMap<(String, String), String>,
    misfiled: HashMap<String, String>,
    births: HashMap<String, String>,
    doses: Vec<Dose>,
}

impl Context for Held {
    fn exists(&self, rtype: &str, id: &str) -> bool {
        self.ids.contains(&(rtype.to_string(), id.to_string()))
    }
    fn encounter_subject(&self, id: &str) -> Option<String> {
        self.encounters.get(id).cloned()
    }
    fn same_content(&self, rtype: &str, fp: &str) -> Option<String> {
        self.content
            .get(&(rtype.to_string(), fp.to_string()))
            .cloned()
    }
    fn encounter_misfiled(&self, id: &str) -> Option<String> {
        self.misfiled.get(id).cloned()
    }
    fn patient_birth(&self, id: &str) -> Option<String> {
        self.births.get(id).cloned()
    }
    fn doses(&self, _patient: &str) -> Vec<Dose> {
        self.doses.clone()
    }
}

#[test]
fn context_rules() {
    let c = Checker::default();
    let o = obs("14771-0", 5.0, "mmol/L");
    let mut held = Held {
        ids: [("Patient", "p1"), ("Encounter", "e1")]
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        encounters: [("e1".to_string(), "Patient/p1".to_string())].into(),
        content: HashMap::new(),
        misfiled: HashMap::new(),
        births: HashMap::new(),
        doses: Vec::new(),
    };
    assert_eq!(c.check_context(&o, &held), vec![]);
    // A dangling reference.
    let mut d = o.clone();
    d["subject"]["reference"] = json!("Patient/p1-zz000123");
    held.encounters.insert("e1".into(), "Patient/p1".into());
    let f = c.check_context(&d, &held);
    assert_eq!(rules_of(&f), vec!["reference", "encounter-subject"]);
    assert_eq!(f[0].expression, "Observation.subject.reference");
    assert_eq!(f[0].severity, Severity::Error);
    // Filed under another (existing) patient than its encounter's.
    held.ids.insert(("Patient".into(), "p2".into()));
    let mut w = o.clone();
    w["subject"]["reference"] = json!("Patient/p2");
    let f = c.check_context(&w, &held);
    assert_eq!(rules_of(&f), vec!["encounter-subject"]);
    assert!(f[0].en.contains("wrong patient"));
    // The same content under another id.
    held.content
        .insert(("Observation".into(), fingerprint(&o)), "o0".into());
    let mut again = o.clone();
    again["id"] = json!("o1-r");
    again["meta"] = json!({"source": "elsewhere"});
    assert_eq!(rules_of(&c.check_context(&again, &held)), vec!["duplicate"]);
    // Its own earlier version is no duplicate.
    held.content
        .insert(("Observation".into(), fingerprint(&o)), "o1".into());
    assert_eq!(c.check_context(&o, &held), vec![]);
}

#[test]
fn a_misfiled_encounter_is_blamed_and_its_odd_record_still_caught() {
    // Encounter e1 is filed under p9, but its records say p1 — except one, filed under p2.
    let rec = |id: &str, patient: &str| {
        let mut o = obs("14771-0", 5.0, "mmol/L");
        o["id"] = json!(id);
        o["subject"]["reference"] = json!(format!("Patient/{patient}"));
        o
    };
    let records = [
        rec("a", "p1"),
        rec("b", "p1"),
        rec("c", "p1"),
        rec("d", "p2"),
    ];
    let refs: Vec<&Value> = records.iter().collect();
    let misfiled = misfiled_encounters(&refs, &|_| Some("Patient/p9".into()));
    assert_eq!(misfiled.get("e1").map(String::as_str), Some("Patient/p1"));
    let held = Held {
        ids: HashSet::new(),
        encounters: [("e1".to_string(), "Patient/p9".to_string())].into(),
        content: HashMap::new(),
        misfiled,
        births: HashMap::new(),
        doses: Vec::new(),
    };
    let mut c = Checker::default();
    c.rules.disable("reference");
    assert_eq!(c.check_context(&records[0], &held), vec![]);
    let f = c.check_context(&records[3], &held);
    assert_eq!(rules_of(&f), vec!["encounter-subject"]);
    assert!(f[0].en.contains("other records"), "{}", f[0].en);
    let enc = json!({"resourceType": "Encounter", "id": "e1", "status": "finished",
        "subject": {"reference": "Patient/p9"}});
    assert_eq!(
        rules_of(&c.check_context(&enc, &held)),
        vec!["encounter-subject"]
    );
}

#[test]
fn records_before_their_patients_birth_are_caught() {
    let mut c = Checker::default();
    c.rules.disable("reference");
    let mut held = Held {
        ids: HashSet::new(),
        encounters: HashMap::new(),
        content: HashMap::new(),
        misfiled: HashMap::new(),
        births: [("p1".to_string(), "2026-06-02".to_string())].into(),
        doses: Vec::new(),
    };
    // Observed 2026-06-01 08:00 Beijing: a day's slack for the local birth date.
    let mut o = obs("14771-0", 5.0, "mmol/L");
    o.as_object_mut().unwrap().remove("encounter");
    assert_eq!(c.check_context(&o, &held), vec![]);
    held.births.insert("p1".into(), "2026-06-05".into());
    let f = c.check_context(&o, &held);
    assert_eq!(rules_of(&f), vec!["patient-timeline"]);
    assert_eq!(f[0].severity, Severity::Warning);
    assert_eq!(f[0].expression, "Observation.subject");
    // Unknown birth date, or no clinical time: nothing to say.
    held.births.clear();
    assert_eq!(c.check_context(&o, &held), vec![]);
}

fn vaccination(id: &str, code: &str, dose: u32, when: &str) -> Value {
    json!({"resourceType": "Immunization", "id": id, "status": "completed",
        "vaccineCode": {"coding": [{"system": "https://hutong.dev/fhir/CodeSystem/cn-nip-vaccine", "code": code}]},
        "patient": {"reference": "Patient/c1"}, "occurrenceDateTime": when,
        "protocolApplied": [{"doseNumberPositiveInt": dose}]})
}

#[test]
fn vaccinations_of_someone_else_are_caught() {
    let mut c = Checker::default();
    c.rules.disable("reference");
    let mut held = Held {
        ids: HashSet::new(),
        encounters: HashMap::new(),
        content: HashMap::new(),
        misfiled: HashMap::new(),
        births: [("c1".to_string(), "2023-01-10".to_string())].into(),
        doses: Vec::new(),
    };
    // MMR dose 2 at 18 months: as the programme has it.
    let mmr2 = vaccination("i2", "MMR", 2, "2024-07-10T09:00:00+08:00");
    assert_eq!(c.check_context(&mmr2, &held), vec![]);
    // The child already has MMR dose 2: a repeat, or another child's.
    held.doses = vec![Dose::of(&vaccination("i1", "MMR", 2, "2024-07-01T09:00:00+08:00")).unwrap()];
    let f = c.check_context(&mmr2, &held);
    assert_eq!(rules_of(&f), vec!["dose-repeated"]);
    assert!(f[0].en.contains("Immunization/i1"));
    // Influenza starts again every season: last year's dose 1 is no repeat.
    held.doses = vec![Dose::of(&vaccination("f1", "Flu", 1, "2023-09-01T09:00:00+08:00")).unwrap()];
    let flu = vaccination("f2", "Flu", 1, "2024-09-03T09:00:00+08:00");
    assert_eq!(c.check_context(&flu, &held), vec![]);
    let same_season = vaccination("f3", "Flu", 1, "2023-10-01T09:00:00+08:00");
    assert_eq!(
        rules_of(&c.check_context(&same_season, &held)),
        vec!["dose-repeated"]
    );
    // A child's vaccine given to a 60-year-old.
    held.doses.clear();
    held.births.insert("c1".into(), "1962-09-03".into());
    let f = c.check_context(
        &vaccination("j", "JE-L", 2, "2022-08-11T09:00:00+08:00"),
        &held,
    );
    assert_eq!(rules_of(&f), vec!["vaccine-age"]);
    assert!(f[0].zh.contains("乙脑减毒活疫苗"));
    // By its Chinese name too; DTaP stops at six (白破 from then on).
    held.births.insert("c1".into(), "2017-03-01".into());
    let mut dtap = vaccination("d", "x", 4, "2023-03-02T09:00:00+08:00");
    dtap["vaccineCode"] = json!({"text": "百白破疫苗"});
    assert_eq!(
        rules_of(&c.check_context(&dtap, &held)),
        vec!["vaccine-age"]
    );
    dtap["occurrenceDateTime"] = json!("2023-02-27T09:00:00+08:00");
    assert_eq!(
        c.check_context(&dtap, &held),
        vec![],
        "five years and 363 days"
    );
    // Hepatitis B is for adults too.
    assert_eq!(
        c.check_context(
            &vaccination("h", "HepB", 1, "2023-03-02T09:00:00+08:00"),
            &held
        ),
        vec![]
    );
}

#[test]
fn findings_become_operation_outcome_issues() {
    let f = Checker::default().check(&obs("14771-0", 94.0, "mmol/L"), NOW);
    let oo = outcome(&f);
    let i = &oo["issue"][0];
    assert_eq!(i["severity"], "error");
    assert_eq!(i["code"], "business-rule");
    assert_eq!(i["details"]["coding"][0]["system"], RULE_SYSTEM);
    assert_eq!(i["details"]["coding"][0]["code"], "value-plausible");
    assert_eq!(i["expression"][0], "Observation.valueQuantity.value");
    assert_eq!(i["extension"][0]["url"], MESSAGE_ZH_URL);
    assert!(i["extension"][0]["valueString"]
        .as_str()
        .unwrap()
        .contains("空腹血糖"));
    assert_eq!(i["extension"][1]["url"], HINT_URL);
    assert!(i["diagnostics"].as_str().unwrap().contains("Fix:"));
    let ok = outcome(&[]);
    assert_eq!(ok["issue"][0]["severity"], "information");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "\\PC{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("reference".to_string()),
                        Just("period".to_string()),
                        Just("valueQuantity".to_string()),
                        Just("code".to_string()),
                        Just("coding".to_string()),
                        Just("birthDate".to_string()),
                        Just("identifier".to_string()),
                        "[a-z]{1,6}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The fingerprint is the one already stored for existing resources: the hash of a
        /// copy without id, meta and text, whatever the order of the fields.
        #[test]
        fn fingerprint_matches_the_stored_construction(
            keys in prop::collection::vec(prop_oneof![
                Just("id".to_string()), Just("meta".to_string()), Just("text".to_string()),
                "[a-z]{1,6}"], 0..8),
            values in prop::collection::vec(json_value(), 8),
        ) {
            let mut m = serde_json::Map::new();
            for (k, x) in keys.into_iter().zip(values) {
                m.insert(k, x);
            }
            let v = Value::Object(m);
            let mut copy = v.clone();
            if let Some(o) = copy.as_object_mut() {
                o.remove("id");
                o.remove("meta");
                o.remove("text");
            }
            let digest = sha2::Sha256::digest(copy.to_string().as_bytes());
            let expected: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            prop_assert_eq!(fingerprint(&v), expected);
        }

        /// Whatever a source sends, the checker answers with findings and never panics;
        /// every finding names a known rule and a location on the resource's type.
        #[test]
        fn checker_never_panics(
            rtype in prop_oneof![Just("Observation"), Just("Patient"), Just("Encounter"), Just("Condition")],
            body in prop::collection::btree_map("[a-zA-Z]{1,12}", json_value(), 0..6),
        ) {
            let mut v = Value::Object(body.into_iter().collect());
            v["resourceType"] = json!(rtype);
            let held = Held { ids: HashSet::new(), encounters: HashMap::new(), content: HashMap::new(), misfiled: HashMap::new(), births: HashMap::new(), doses: Vec::new() };
            let c = Checker::default();
            let mut all = c.check(&v, NOW);
            all.extend(c.check_context(&v, &held));
            for f in all {
                prop_assert!(RULES.contains(&f.rule));
                prop_assert!(f.expression.starts_with(rtype), "{}", f.expression);
            }
        }
    }
}

/// Units other exporters send for catalogued tests are converted, the value as sent kept;
/// what cannot be converted is left for `unit-expected`; the platform's own unit is untouched.
#[test]
fn convertible_units_are_normalised_and_recorded() {
    let checker = Checker::default();
    for (loinc, value, unit, want, want_unit) in [
        ("718-7", 13.2, "g/dL", 132.0, "g/L"),
        ("6690-2", 6.4, "10*3/uL", 6.4, "10*9/L"),
        ("777-3", 251.0, "10*3/uL", 251.0, "10*9/L"),
        ("2345-7", 99.0, "mg/dL", 5.495, "mmol/L"),
        ("14682-9", 1.1, "mg/dL", 97.24, "umol/L"),
    ] {
        let mut v = obs(loinc, value, unit);
        assert_eq!(normalise(&mut v), 1, "{loinc}");
        let q = &v["valueQuantity"];
        assert_eq!(q["code"], want_unit);
        assert!(
            (q["value"].as_f64().unwrap() - want).abs() < want * 1e-3,
            "{q}"
        );
        assert_eq!(q["extension"][0]["url"], ORIGINAL_QUANTITY_URL);
        assert_eq!(q["extension"][0]["valueQuantity"]["code"], unit);
        let found = checker.check(&v, NOW);
        assert!(!rejects(&found), "{loinc}: {found:?}");
        assert!(
            found.iter().any(|f| f.rule == "unit-converted"),
            "{found:?}"
        );
    }
    // The platform's unit, and a unit it cannot convert, are left as they are.
    let mut same = obs("718-7", 132.0, "g/L");
    assert_eq!(normalise(&mut same), 0);
    let mut odd = obs("718-7", 8.2, "mmol/L");
    assert_eq!(normalise(&mut odd), 0);
    let found = checker.check(&odd, NOW);
    assert!(found
        .iter()
        .any(|f| f.rule == "unit-expected" && f.severity == Severity::Error));
    // Components too (a blood-pressure panel in kPa is not converted, in mm[Hg] untouched).
    let mut bp = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]});
    assert_eq!(normalise(&mut bp), 0);
}
