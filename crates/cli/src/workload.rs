//! A benchmark workload shaped like Synthea's per-patient transaction bundles: one Patient
//! and years of encounters, each with vital signs, labs, diagnoses, medications, procedures,
//! immunizations and reports, all referencing each other through `urn:uuid:` fullUrls.
//! Deterministic for a seed. (The synthetic region of `hutong synth` is the realistic data
//! set; this generator exists so the storage benchmarks have a fixed, Synthea-like shape.)

use serde_json::{json, Value};

/// A small deterministic generator (xorshift64*), enough for benchmark data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const VITALS: [(&str, &str, &str, f64, f64); 5] = [
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 100.0, 60.0),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60.0, 40.0),
    ("8867-4", "Heart rate", "/min", 55.0, 50.0),
    ("29463-7", "Body weight", "kg", 45.0, 50.0),
    ("39156-5", "Body mass index", "kg/m2", 18.0, 14.0),
];
// The platform's units (SI, as Chinese laboratories report): the intake rules reject a
// glucose in mg/dL.
const LABS: [(&str, &str, &str, f64, f64); 6] = [
    (
        "4548-4",
        "Hemoglobin A1c/Hemoglobin.total in Blood",
        "%",
        4.5,
        5.0,
    ),
    (
        "2345-7",
        "Glucose [Moles/volume] in Serum or Plasma",
        "mmol/L",
        3.9,
        6.0,
    ),
    (
        "14647-2",
        "Cholesterol [Moles/volume] in Serum or Plasma",
        "mmol/L",
        3.2,
        3.0,
    ),
    (
        "14927-8",
        "Triglyceride [Moles/volume] in Serum or Plasma",
        "mmol/L",
        0.6,
        1.8,
    ),
    (
        "14682-9",
        "Creatinine [Moles/volume] in Serum or Plasma",
        "umol/L",
        50.0,
        70.0,
    ),
    (
        "1742-6",
        "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        7.0,
        40.0,
    ),
];
const CONDITIONS: [(&str, &str); 6] = [
    ("I10", "Essential (primary) hypertension"),
    ("E11.9", "Type 2 diabetes mellitus without complications"),
    ("J06.9", "Acute upper respiratory infection, unspecified"),
    ("K29.7", "Gastritis, unspecified"),
    ("M54.5", "Low back pain"),
    ("E78.5", "Hyperlipidaemia, unspecified"),
];
const SURNAMES: [&str; 10] = ["王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周"];
const GIVEN: [&str; 10] = ["伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "洋"];

fn date(day: u64, minute: u64) -> String {
    let ms = (day as i64 * 86_400 + minute as i64 * 60) * 1000;
    hutong_fhir::date::format_instant(ms).replace(".000Z", "+08:00")
}

fn entry(full: &str, r: Value) -> Value {
    let t = r["resourceType"].as_str().unwrap_or("").to_string();
    json!({"fullUrl": full, "resource": r, "request": {"method": "POST", "url": t}})
}

/// One patient's bundle with about `target` entries.
pub fn patient_bundle(seed: u64, target: usize) -> Value {
    let mut rng = Rng::new(seed);
    let mut n = 0u64;
    let mut uuid = |rng: &mut Rng| {
        n += 1;
        format!(
            "urn:uuid:{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            seed as u32,
            n as u16,
            rng.below(4096),
            rng.below(4096),
            rng.next() & 0xFFFF_FFFF_FFFF
        )
    };
    let pid = uuid(&mut rng);
    // Born 1980–1988, seen from age ~16 every 10–50 days: a 2,000-entry history ends by
    // about 2021, never in the future (the intake rules reject clinical times to come).
    let birth_day = 3650 + rng.below(3000);
    let mut entries = vec![entry(
        &pid,
        json!({"resourceType": "Patient",
            "identifier": [
                {"system": "https://hutong.dev/id/bench-mrn", "value": format!("MRN{seed:08}")},
                {"system": "urn:oid:2.16.156.10011.1.1", "value": format!("44010619{:02}0101{:04}", 50 + seed % 50, seed % 10000),
                 "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "NI"}]}}],
            "name": [{"use": "official", "family": rng.pick(&SURNAMES), "given": [rng.pick(&GIVEN)], "text": "患者"}],
            "telecom": [{"system": "phone", "value": format!("138{:08}", seed % 100_000_000), "use": "mobile"}],
            "gender": if seed.is_multiple_of(2) { "male" } else { "female" },
            "birthDate": &date(birth_day, 0)[..10],
            "address": [{"line": ["天河路 100 号"], "city": "广州市", "district": "天河区", "state": "广东省", "postalCode": "510000", "country": "CN"}]}),
    )];
    let org = "Organization?identifier=https://hutong.dev/id/uscc|91440101MA5BENCH1X";
    let mut day = birth_day + 6000;
    while entries.len() < target {
        day += 10 + rng.below(40);
        let enc = uuid(&mut rng);
        let start = date(day, 480 + rng.below(480));
        entries.push(entry(&enc, json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
            "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003", "display": "Encounter for check up"}], "text": "门诊"}],
            "subject": {"reference": &pid}, "period": {"start": &start, "end": &start},
            "serviceProvider": {"reference": org}})));
        let mut results = Vec::new();
        for (code, display, unit, base, spread) in VITALS
            .iter()
            .chain(LABS.iter().take(2 + rng.below(4) as usize))
        {
            let id = uuid(&mut rng);
            let value = ((base + (rng.below(1000) as f64 / 1000.0) * spread) * 10.0).round() / 10.0;
            let category = if LABS.iter().any(|l| l.0 == *code) {
                "laboratory"
            } else {
                "vital-signs"
            };
            entries.push(entry(&id, json!({"resourceType": "Observation", "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
                "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
                "subject": {"reference": &pid}, "encounter": {"reference": &enc},
                "effectiveDateTime": &start, "issued": &start,
                "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})));
            if category == "laboratory" {
                results.push(json!({"reference": id}));
            }
        }
        entries.push(entry(&uuid(&mut rng), json!({"resourceType": "DiagnosticReport", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "24323-8", "display": "Comprehensive metabolic panel"}]},
            "subject": {"reference": &pid}, "encounter": {"reference": &enc}, "effectiveDateTime": &start, "issued": &start,
            "result": results})));
        if rng.below(3) == 0 {
            let (code, display) = rng.pick(&CONDITIONS);
            entries.push(entry(&uuid(&mut rng), json!({"resourceType": "Condition",
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
                "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code, "display": display}], "text": display},
                "subject": {"reference": &pid}, "encounter": {"reference": &enc}, "onsetDateTime": &start, "recordedDate": &start})));
            entries.push(entry(&uuid(&mut rng), json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "314076", "display": "lisinopril 10 MG Oral Tablet"}]},
                "subject": {"reference": &pid}, "encounter": {"reference": &enc}, "authoredOn": &start,
                "dosageInstruction": [{"text": "每日一次，每次一片", "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}}]})));
        }
        if rng.below(5) == 0 {
            entries.push(entry(&uuid(&mut rng), json!({"resourceType": "Procedure", "status": "completed",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "430193006", "display": "Medication reconciliation"}]},
                "subject": {"reference": &pid}, "encounter": {"reference": &enc}, "performedPeriod": {"start": &start, "end": &start}})));
        }
        if rng.below(8) == 0 {
            entries.push(entry(&uuid(&mut rng), json!({"resourceType": "Immunization", "status": "completed",
                "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140", "display": "Influenza, seasonal"}]},
                "patient": {"reference": &pid}, "encounter": {"reference": &enc}, "occurrenceDateTime": &start, "primarySource": true})));
        }
    }
    entries.truncate(target);
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// The organization every bundle references conditionally.
pub fn organization() -> Value {
    json!({"resourceType": "Organization", "active": true, "name": "广州市基准测试医院",
        "identifier": [{"system": "https://hutong.dev/id/uscc", "value": "91440101MA5BENCH1X"}]})
}
