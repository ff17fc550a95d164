//! Data governance at intake: every resource an institution submits is checked against the
//! R4 structure and the platform's rules (`rules.toml`, overridable per deployment). Each
//! finding names its rule, where it is (a FHIRPath location), what is wrong in Chinese and
//! English, and how to fix it; findings of severity *error* reject the submission, *warning*
//! ones are recorded.
//!
//! The checks that need no database are [`Checker::check`]; those that look at what the
//! platform already holds (references, the encounter's patient, duplicates) are
//! [`Checker::check_context`] against a [`Context`] the server provides.
//!
//! One file past the ~800 lines we keep to, because the rules share one checker, its context
//! and its message table; each rule is one function.

pub mod codes;
pub mod reconcile;
pub mod rules;
pub mod scorecard;
pub mod workorder;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use hutong_fhir::date;
use hutong_fhir::json::Fields;
pub use rules::{Rules, RulesError, Severity, RULES};

/// The platform extension on `meta` that records when the source collected the data.
pub use hutong_fhir::vocab::COLLECTED_URL;
/// The code system of the rule ids in OperationOutcome issues.
pub const RULE_SYSTEM: &str = "https://hutong.dev/fhir/CodeSystem/intake-rule";
/// The issue extensions carrying the Chinese message and the fix hint.
pub const MESSAGE_ZH_URL: &str = "https://hutong.dev/fhir/StructureDefinition/issue-message-zh";
pub const HINT_URL: &str = "https://hutong.dev/fhir/StructureDefinition/issue-hint";

use hutong_fhir::vocab::ID_SYSTEM;

/// The extension on a converted `valueQuantity` that keeps the quantity as the source sent
/// it (see [`normalise`]).
pub const ORIGINAL_QUANTITY_URL: &str =
    "https://hutong.dev/fhir/StructureDefinition/original-quantity";

/// Brings catalogued tests' quantities sent in another convertible unit into the platform's
/// unit (`data/unit-conversions.tsv`): the value converted (to six significant digits, as
/// precise as any instrument), the unit the platform's, and the quantity as sent kept in an
/// `original-quantity` extension. Search and charts then see one unit per test; the
/// `unit-converted` rule records a warning. Units it cannot convert are left for the
/// `unit-expected` rule to reject. Returns how many quantities it converted.
pub fn normalise(v: &mut Value) -> usize {
    let mut n = 0;
    let top = v.get("code").and_then(loinc_of).map(String::from);
    if let (Some(l), Some(q)) = (top, v.get_mut("valueQuantity")) {
        n += convert_quantity(&l, q) as usize;
    }
    if let Some(cs) = v.get_mut("component").and_then(Value::as_array_mut) {
        for c in cs {
            let l = c.get("code").and_then(loinc_of).map(String::from);
            if let (Some(l), Some(q)) = (l, c.get_mut("valueQuantity")) {
                n += convert_quantity(&l, q) as usize;
            }
        }
    }
    n
}

fn convert_quantity(loinc: &str, q: &mut Value) -> bool {
    let ucum = q.get("system").is_none_or(|s| s == codes::UCUM);
    let unit = q
        .get("code")
        .or_else(|| q.get("unit"))
        .and_then(Value::as_str)
        .map(String::from);
    let (Some(unit), Some(x), true) = (unit, q.get("value").and_then(Value::as_f64), ucum) else {
        return false;
    };
    let Some(c) = codes::conversion(loinc, &unit).filter(|c| c.to != unit) else {
        return false;
    };
    let original = q.clone();
    let converted = round_significant(x * c.factor, 6);
    let Some(o) = q.as_object_mut() else {
        return false;
    };
    o.insert("value".into(), json!(converted));
    o.insert("unit".into(), json!(c.to));
    o.insert("system".into(), json!(codes::UCUM));
    o.insert("code".into(), json!(c.to));
    let ext = o.entry("extension").or_insert_with(|| json!([]));
    if let Some(a) = ext.as_array_mut() {
        a.push(json!({"url": ORIGINAL_QUANTITY_URL, "valueQuantity": original}));
    }
    true
}

fn round_significant(x: f64, digits: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(digits - 1 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// One rule's verdict on one place in a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: Severity,
    /// FHIRPath location, e.g. `Observation.valueQuantity.value`.
    pub expression: String,
    pub en: String,
    pub zh: String,
    pub hint: String,
}

impl Finding {
    /// This finding as an OperationOutcome issue.
    pub fn issue(&self) -> Value {
        let code = match self.rule {
            "structure" => "structure",
            "reference" => "not-found",
            "duplicate" => "duplicate",
            "code-valid" => "code-invalid",
            "data-set" => "required",
            _ => "business-rule",
        };
        json!({
            "extension": [
                {"url": MESSAGE_ZH_URL, "valueString": self.zh},
                {"url": HINT_URL, "valueString": self.hint},
            ],
            "severity": self.severity.as_str(),
            "code": code,
            "details": {
                "coding": [{"system": RULE_SYSTEM, "code": self.rule}],
                "text": format!("{} / {}", self.zh, self.en),
            },
            "diagnostics": format!("[{}] {} Fix: {}", self.rule, self.en, self.hint),
            "expression": [self.expression],
        })
    }
}

/// An OperationOutcome of findings (an "all OK" information issue when there are none).
pub fn outcome(findings: &[Finding]) -> Value {
    let issues: Vec<Value> = if findings.is_empty() {
        vec![json!({"severity": "information", "code": "informational",
                    "diagnostics": "No issues: the resource passes every intake rule in force."})]
    } else {
        findings.iter().map(Finding::issue).collect()
    };
    json!({"resourceType": "OperationOutcome", "issue": issues})
}

/// Whether any finding rejects the submission.
pub fn rejects(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.severity == Severity::Error)
}

/// What the platform already holds, as the context checks need it.
pub trait Context {
    /// Whether `rtype/id` exists (not deleted), on the platform or earlier in the submission.
    fn exists(&self, rtype: &str, id: &str) -> bool;
    /// The patient reference (`Patient/x`) of the encounter `id`, if it is known.
    fn encounter_subject(&self, id: &str) -> Option<String>;
    /// The id of a resource of `rtype` from the same source with the same content fingerprint.
    fn same_content(&self, rtype: &str, fingerprint: &str) -> Option<String>;
    /// When the encounter `id` itself looks filed to the wrong patient (see
    /// [`misfiled_encounters`]), the patient most of its records name: its records are
    /// judged against that patient instead of the encounter's.
    fn encounter_misfiled(&self, _id: &str) -> Option<String> {
        None
    }
    /// The birth date (`YYYY-MM-DD`) of the Patient `id`, if it is known.
    fn patient_birth(&self, _id: &str) -> Option<String> {
        None
    }
    /// The vaccine doses recorded for the Patient `id` (on the platform and in the
    /// submission).
    fn doses(&self, _patient: &str) -> Vec<Dose> {
        Vec::new()
    }
    /// Whether the reader of the findings may not read `rtype/id`. A rule still weighs what
    /// the platform holds there, but its message then says only that such a record exists,
    /// never what it holds (a birth date, a dose, whose encounter it is).
    fn hidden(&self, _rtype: &str, _id: &str) -> bool {
        false
    }
}

/// One recorded vaccine dose, as [`Context::doses`] gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dose {
    pub id: String,
    /// The vaccine's first coding (`code`), or its text.
    pub vaccine: String,
    pub number: u32,
    pub at_ms: i64,
}

impl Dose {
    /// The dose an Immunization records, if it says which vaccine and which dose.
    pub fn of(v: &Value) -> Option<Dose> {
        if v.at("resourceType") != "Immunization" {
            return None;
        }
        let vaccine = v.at("vaccineCode").at("coding")[0]
            .at("code")
            .as_str()
            .or(v.at("vaccineCode").at("text").as_str())?
            .to_string();
        let p = &v.at("protocolApplied")[0];
        let number = p
            .at("doseNumberPositiveInt")
            .as_u64()
            .or_else(|| p.at("doseNumberString").as_str()?.trim().parse().ok())?
            as u32;
        Some(Dose {
            id: v.at("id").as_str().unwrap_or("").to_string(),
            vaccine,
            number,
            at_ms: clinical_time_ms(v)?,
        })
    }
}

/// The encounters of a batch that most of their own records contradict: when two or more
/// records name an encounter and more of them disagree with its patient than agree, the
/// encounter is the one filed to the wrong patient, not the records. Each such encounter
/// comes with the patient most of its records name (a record that names yet another patient
/// is then itself misfiled).
pub fn misfiled_encounters(
    resources: &[&Value],
    encounter_subject: &dyn Fn(&str) -> Option<String>,
) -> std::collections::HashMap<String, String> {
    #[derive(Default)]
    struct Tally<'a> {
        agree: u32,
        disagree: u32,
        others: std::collections::HashMap<&'a str, u32>,
    }
    let mut tally: std::collections::HashMap<&str, Tally> = Default::default();
    for v in resources {
        let subject = ["subject", "patient"]
            .iter()
            .find_map(|k| v[*k].at("reference").as_str());
        let enc = v
            .at("encounter")
            .at("reference")
            .as_str()
            .and_then(|r| r.strip_prefix("Encounter/"));
        if let (Some(s), Some(e)) = (subject, enc) {
            if let Some(es) = encounter_subject(e) {
                let t = tally.entry(e).or_default();
                if es == s {
                    t.agree += 1;
                } else {
                    t.disagree += 1;
                    *t.others.entry(s).or_default() += 1;
                }
            }
        }
    }
    tally
        .into_iter()
        .filter(|(_, t)| t.disagree >= 2 && t.disagree > t.agree)
        .filter_map(|(e, t)| {
            let (patient, _) = t
                .others
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))?;
            Some((e.to_string(), patient.to_string()))
        })
        .collect()
}

/// A content fingerprint: the resource without its id, `meta` and narrative, hashed.
/// Two submissions with the same fingerprint say the same thing.
pub fn fingerprint(v: &Value) -> String {
    // Serialises the fields without copying the resource, into one buffer hashed at once
    // (fed token by token, the hash's own buffering cost more than the hashing). The order is
    // that of the stored fingerprints, made by removing the three fields from a copy with
    // `Map::remove` — a swap-remove under `preserve_order` — and serialising the rest.
    let mut buf = Vec::with_capacity(1024);
    match v.as_object() {
        Some(o) => {
            let mut fields: Vec<(&String, &Value)> = o.iter().collect();
            for skip in ["id", "meta", "text"] {
                if let Some(i) = fields.iter().position(|(k, _)| k.as_str() == skip) {
                    fields.swap_remove(i);
                }
            }
            buf.push(b'{');
            for (i, (k, x)) in fields.into_iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                let _ = serde_json::to_writer(&mut buf, k);
                buf.push(b':');
                let _ = serde_json::to_writer(&mut buf, x);
            }
            buf.push(b'}');
        }
        None => {
            let _ = serde_json::to_writer(&mut buf, v);
        }
    }
    let digest = Sha256::digest(&buf);
    let mut hex = String::with_capacity(32);
    for b in &digest[..16] {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 15)]));
    }
    hex
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The intake rules in force.
#[derive(Debug, Clone, Default)]
pub struct Checker {
    pub rules: Rules,
}

struct Out<'a> {
    rules: &'a Rules,
    rtype: &'a str,
    found: Vec<Finding>,
}

impl Out<'_> {
    fn add(&mut self, rule: &'static str, at: &str, en: String, zh: String, hint: &str) {
        if let Some(severity) = self.rules.severity(rule) {
            let expression = if at.is_empty() {
                self.rtype.to_string()
            } else {
                format!("{}.{at}", self.rtype)
            };
            self.found.push(Finding {
                rule,
                severity,
                expression,
                en,
                zh,
                hint: hint.to_string(),
            });
        }
    }
    fn on(&self, rule: &str) -> bool {
        self.rules.severity(rule).is_some()
    }
}

/// Elements whose value is when something clinical began, by JSON name. Later times
/// (abatement, a report's issue) may legitimately follow the collection of the record.
const CLINICAL_TIMES: &[&str] = &[
    "effectiveDateTime",
    "effectiveInstant",
    "effectivePeriod",
    "onsetDateTime",
    "onsetPeriod",
    "recordedDate",
    "occurrenceDateTime",
    "authoredOn",
    "performedDateTime",
    "performedPeriod",
    "period",
    "started",
    "date",
];

/// Whole years from `from` to `to` (ms), as ages are counted.
fn years_between(from: i64, to: i64) -> i64 {
    let a = date::format_instant(from);
    let b = date::format_instant(to);
    let (ya, yb): (i64, i64) = (a[..4].parse().unwrap_or(0), b[..4].parse().unwrap_or(0));
    let years = yb - ya;
    if b[5..10] < a[5..10] {
        years - 1
    } else {
        years
    }
}

/// The birth date a Patient's records are judged against: its `birthDate`, unless that is
/// missing or in the future (the Patient's own error, which `birth-date` reports) — then
/// the one written into a valid ID number.
pub fn birth_of(patient: &Value) -> Option<String> {
    let given = patient
        .at("birthDate")
        .as_str()
        .filter(|b| date::parse(b).is_some_and(|d| d.lo <= date::now_ms()));
    if let Some(b) = given {
        return Some(b.to_string());
    }
    patient
        .at("identifier")
        .as_array()?
        .iter()
        .filter(|i| i.at("system") == ID_SYSTEM)
        .filter_map(|i| hutong_cn::idcard::IdNumber::parse(i.at("value").as_str()?).ok())
        .map(|id| {
            let (y, m, d) = id.birth_date();
            format!("{y:04}-{m:02}-{d:02}")
        })
        .next()
}

/// When what a resource records clinically began (ms), if it says: the first clinical time
/// element present. Timeliness and reconciliation days are measured from it.
pub fn clinical_time_ms(v: &Value) -> Option<i64> {
    let obj = v.as_object()?;
    let rtype = obj.field("resourceType")?.as_str()?;
    CLINICAL_TIMES.iter().find_map(|key| {
        if *key == "date" && !matches!(rtype, "ClinicalImpression" | "DocumentReference") {
            return None;
        }
        let s = match obj.field(key)? {
            Value::String(s) => s.as_str(),
            Value::Object(p) => p.field("start")?.as_str()?,
            _ => return None,
        };
        date::parse(s).map(|d| d.lo)
    })
}

impl Checker {
    pub fn new(rules: Rules) -> Checker {
        Checker { rules }
    }

    /// The checks that need only the resource: structure, identity data, dates, units,
    /// codes and the platform's data set. `received_ms` is when the platform received it.
    pub fn check(&self, v: &Value, received_ms: i64) -> Vec<Finding> {
        let rtype = v.at("resourceType").as_str().unwrap_or("");
        let mut out = Out {
            rules: &self.rules,
            rtype,
            found: Vec::new(),
        };
        if out.on("structure") {
            for f in hutong_fhir::validate::validate(v) {
                // The validator's locations start with the type already.
                let at = f
                    .location
                    .strip_prefix(rtype)
                    .map(|s| s.trim_start_matches('.').to_string())
                    .unwrap_or(f.location.clone());
                out.add(
                    "structure",
                    &at,
                    f.message.clone(),
                    format!("不符合 FHIR R4 结构定义：{}", f.message),
                    "Correct the element to match the R4 definition of the resource.",
                );
            }
        }
        let Some(obj) = v.as_object() else {
            return out.found;
        };
        if rtype == "Patient" {
            patient(obj, received_ms, &mut out);
        }
        times(obj, received_ms, &mut out);
        quantities(obj, &mut out);
        codes(obj, &mut out);
        data_set(obj, &mut out);
        out.found
    }

    /// The checks against what the platform holds: references resolve, a record's patient is
    /// its encounter's patient, the same content was not already submitted.
    pub fn check_context(&self, v: &Value, ctx: &dyn Context) -> Vec<Finding> {
        self.check_context_with(v, ctx, None)
    }

    /// [`Checker::check_context`] with the resource's [`fingerprint`] when the caller has it.
    pub fn check_context_with(
        &self,
        v: &Value,
        ctx: &dyn Context,
        fingerprint: Option<&str>,
    ) -> Vec<Finding> {
        let rtype = v.at("resourceType").as_str().unwrap_or("");
        let mut out = Out {
            rules: &self.rules,
            rtype,
            found: Vec::new(),
        };
        if out.on("reference") {
            for (at, r) in collect_references(v) {
                let Some((t, id)) = literal(r) else { continue };
                if !ctx.exists(t, id) {
                    out.add(
                        "reference",
                        &at,
                        format!("The reference {r} does not resolve: there is no {t}/{id} in this submission, nor on the platform among the records you may read."),
                        format!("引用 {r} 无法解析：本次提交中没有 {t}/{id}，平台上您有权查看的记录中也没有。"),
                        "Submit the referenced resource first (or in the same transaction), or correct the reference.",
                    );
                }
            }
        }
        if out.on("patient-timeline") && rtype != "Patient" {
            let patient = ["subject", "patient"]
                .iter()
                .find_map(|k| v.at(k).at("reference").as_str()?.strip_prefix("Patient/"));
            if let (Some(p), Some(at)) = (patient, clinical_time_ms(v)) {
                let birth = ctx.patient_birth(p);
                // A day's slack: the birth date is a local date, clinical times are instants.
                let born = birth
                    .as_deref()
                    .and_then(date::parse)
                    .map(|b| b.lo - 86_400_000);
                if born.is_some_and(|b| at < b) {
                    let when = date::format_instant(at);
                    let (en, zh) = if ctx.hidden("Patient", p) {
                        (
                            format!("Dated {when}, before the birth date the platform holds for Patient/{p} (in a record you may not read): filed to the wrong patient, or a wrong date."),
                            format!("记录时间 {when} 早于平台所载患者 Patient/{p} 的出生日期（您无权查看该记录）：疑似归档到错误的患者，或日期有误。"),
                        )
                    } else {
                        let b = birth.as_deref().unwrap_or("");
                        (
                            format!("Dated {when}, before Patient/{p} was born ({b}): filed to the wrong patient, or a wrong date."),
                            format!("记录时间 {when} 早于患者 Patient/{p} 的出生日期（{b}）：疑似归档到错误的患者，或日期有误。"),
                        )
                    };
                    out.add(
                        "patient-timeline",
                        ["subject", "patient"]
                            .into_iter()
                            .find(|k| v.field(k).is_some())
                            .unwrap_or("subject"),
                        en,
                        zh,
                        "Check which patient the record belongs to, and its date.",
                    );
                }
            }
        }
        if out.on("dose-repeated") {
            let patient = v
                .at("patient")
                .at("reference")
                .as_str()
                .and_then(|r| r.strip_prefix("Patient/"));
            if let (Some(d), Some(p)) = (Dose::of(v), patient) {
                let seasonal = self.rules.seasonal_vaccines.contains(&d.vaccine);
                let earlier = ctx.doses(p).into_iter().find(|o| {
                    o.id != d.id
                        && o.vaccine == d.vaccine
                        && o.number == d.number
                        // A seasonal vaccine's series starts again every season.
                        && (!seasonal || (o.at_ms - d.at_ms).abs() < 300 * 86_400_000)
                });
                if let Some(o) = earlier {
                    let (en, zh) = if ctx.hidden("Immunization", &o.id) {
                        (
                            format!(
                                "This dose conflicts with a record of Patient/{p} on the platform that you may not read: a repeated record, or filed to the wrong patient."
                            ),
                            format!(
                                "该剂次与平台上患者 Patient/{p} 的一条您无权查看的记录冲突：重复记录，或疑似归档到错误的患者。"
                            ),
                        )
                    } else {
                        let day = &date::format_instant(o.at_ms)[..10];
                        (
                            format!(
                                "Patient/{p} already has dose {} of {} (Immunization/{}, {day}): a repeated record, or filed to the wrong patient.",
                                d.number, d.vaccine, o.id
                            ),
                            format!(
                                "患者 Patient/{p} 已有 {} 第 {} 剂接种记录（Immunization/{}，{day}）：重复记录，或疑似归档到错误的患者。",
                                d.vaccine, d.number, o.id
                            ),
                        )
                    };
                    out.add(
                        "dose-repeated",
                        "protocolApplied[0]",
                        en,
                        zh,
                        "Check the child's vaccination card: correct the dose number or the patient.",
                    );
                }
            }
        }
        if out.on("vaccine-age") {
            let patient = v
                .at("patient")
                .at("reference")
                .as_str()
                .and_then(|r| r.strip_prefix("Patient/"));
            let vaccine = [
                v.at("vaccineCode").at("coding")[0].at("code").as_str(),
                v.at("vaccineCode").at("text").as_str(),
            ]
            .into_iter()
            .flatten()
            .find_map(codes::nip_vaccine);
            let at = clinical_time_ms(v);
            if let (Some(p), Some(vac), Some(at)) = (patient, vaccine, at) {
                let birth = ctx.patient_birth(p);
                let age = birth
                    .as_deref()
                    .and_then(date::parse)
                    .map(|b| years_between(b.lo, at));
                if let Some(age) = age.filter(|a| *a >= vac.until_years as i64) {
                    // The age is the birth date's: not said to a reader who may not read it.
                    let at_age = if ctx.hidden("Patient", p) {
                        ("at the age the platform holds for the patient (in a record you may not read)".to_string(),
                         "的年龄（依据平台所载、您无权查看的出生日期）".to_string())
                    } else {
                        (format!("at age {age}"), format!("于 {age} 岁"))
                    };
                    out.add(
                        "vaccine-age",
                        "patient",
                        format!(
                            "{} ({}) {}: the immunization programme does not give it from age {} — someone else's vaccination, or a wrong date.",
                            vac.zh, vac.code, at_age.0, vac.until_years
                        ),
                        format!(
                            "{} 接种{}：国家免疫规划自 {} 岁起不再接种该疫苗，疑似他人的接种记录或日期有误。",
                            vac.zh, at_age.1, vac.until_years
                        ),
                        "Check the vaccination card: the patient, or the date.",
                    );
                }
            }
        }
        if out.on("encounter-subject") && rtype == "Encounter" {
            if let Some(id) = v
                .at("id")
                .as_str()
                .filter(|id| ctx.encounter_misfiled(id).is_some())
            {
                out.add(
                    "encounter-subject",
                    "subject",
                    format!("Most records of Encounter/{id} belong to another patient than the encounter's: the encounter is possibly filed to the wrong patient."),
                    format!("就诊 Encounter/{id} 的多数记录属于另一名患者：该就诊疑似归档到错误的患者。"),
                    "Check which patient the encounter belongs to and resubmit it under that patient.",
                );
            }
        }
        if out.on("encounter-subject") {
            let subject = ["subject", "patient"]
                .iter()
                .find_map(|k| v[*k].at("reference").as_str());
            let enc = v
                .at("encounter")
                .at("reference")
                .as_str()
                .and_then(|r| r.strip_prefix("Encounter/"));
            if let (Some(subject), Some(enc)) = (subject, enc) {
                // Judged against the encounter's patient — or, when the encounter itself is
                // misfiled, against the patient its other records name.
                let (expected, whose) = match ctx.encounter_misfiled(enc) {
                    Some(majority) => (
                        Some(majority),
                        format!("the other records of its encounter Encounter/{enc} are"),
                    ),
                    None => (
                        ctx.encounter_subject(enc),
                        format!("its encounter Encounter/{enc} is"),
                    ),
                };
                if let Some(expected) = expected.filter(|e| e != subject) {
                    let field = if v.field("subject").is_some() {
                        "subject"
                    } else {
                        "patient"
                    };
                    // Whose encounter it is, when the reader may not read the encounter, is
                    // not theirs to learn: only that it is someone else's.
                    let (en, zh) = if ctx.encounter_misfiled(enc).is_none()
                        && ctx.hidden("Encounter", enc)
                    {
                        (
                            format!("Filed under {subject}, but its encounter Encounter/{enc} belongs to another patient (in a record you may not read): possibly filed to the wrong patient."),
                            format!("记录归属 {subject}，但其就诊 Encounter/{enc} 属于另一名患者（您无权查看该记录）：疑似归档到错误的患者。"),
                        )
                    } else {
                        (
                            format!("Filed under {subject}, but {whose} {expected}'s: possibly filed to the wrong patient."),
                            format!("记录归属 {subject}，但其就诊 Encounter/{enc} 的归属（或其其他记录）为 {expected}：疑似归档到错误的患者。"),
                        )
                    };
                    out.add(
                        "encounter-subject",
                        field,
                        en,
                        zh,
                        "Check which patient the record belongs to and resubmit it under that patient.",
                    );
                }
            }
        }
        if out.on("duplicate") {
            let fp = match fingerprint {
                Some(f) => std::borrow::Cow::Borrowed(f),
                None => std::borrow::Cow::Owned(self::fingerprint(v)),
            };
            let own = v.at("id").as_str().unwrap_or("");
            if let Some(other) = ctx.same_content(rtype, &fp) {
                if other != own {
                    let (en, zh) = if ctx.hidden(rtype, &other) {
                        (
                            "The same content was already submitted by this source.".to_string(),
                            "相同内容已由本来源提交过。".to_string(),
                        )
                    } else {
                        (
                            format!("The same content was already submitted as {rtype}/{other}."),
                            format!("相同内容已作为 {rtype}/{other} 提交过。"),
                        )
                    };
                    out.add(
                        "duplicate",
                        "",
                        en,
                        zh,
                        "Do not resend a record under a new id; update the existing one instead.",
                    );
                }
            }
        }
        out.found
    }
}

fn patient(obj: &Map<String, Value>, received_ms: i64, out: &mut Out) {
    let birth = obj.field("birthDate").and_then(Value::as_str);
    if let Some(b) = birth {
        if let Some(r) = date::parse(b) {
            if r.lo > received_ms {
                out.add(
                    "birth-date",
                    "birthDate",
                    format!("The birth date {b} is in the future."),
                    format!("出生日期 {b} 晚于当前日期。"),
                    "Correct the birth date.",
                );
            }
        }
    }
    let ids = obj.field("identifier").and_then(Value::as_array);
    for (i, ident) in ids.into_iter().flatten().enumerate() {
        if ident.at("system") != ID_SYSTEM {
            continue;
        }
        let Some(value) = ident.at("value").as_str() else {
            continue;
        };
        match hutong_cn::idcard::IdNumber::parse(value) {
            Err(e) => out.add(
                "id-number",
                &format!("identifier[{i}].value"),
                format!("The ID number {value} is not valid: {e}."),
                format!("身份证号 {value} 无效（{e}）。"),
                "Check the ID number against the resident's ID card (GB 11643).",
            ),
            Ok(id) => {
                let (y, m, d) = id.birth_date();
                let from_id = format!("{y:04}-{m:02}-{d:02}");
                if let Some(b) = birth.filter(|b| b.len() == 10 && *b != from_id) {
                    out.add(
                        "birth-date-id",
                        "birthDate",
                        format!("The birth date {b} differs from {from_id} in the ID number."),
                        format!("出生日期 {b} 与身份证号中的 {from_id} 不一致。"),
                        "Correct whichever of the birth date and the ID number is wrong.",
                    );
                }
            }
        }
    }
}

fn collected_ms(obj: &Map<String, Value>) -> Option<i64> {
    obj.field("meta")?
        .field("extension")?
        .as_array()?
        .iter()
        .find(|e| e.at("url") == COLLECTED_URL)
        .and_then(|e| e.at("valueInstant").as_str())
        .and_then(date::parse)
        .map(|r| r.lo)
}

fn times(obj: &Map<String, Value>, received_ms: i64, out: &mut Out) {
    let limit = collected_ms(obj)
        .unwrap_or(received_ms)
        .min(received_ms)
        .saturating_add(out.rules.clinical_tolerance_ms);
    for key in CLINICAL_TIMES {
        let Some(x) = obj.field(key) else { continue };
        // A `date` element is clinical time only on some types (not e.g. on a Bundle).
        if *key == "date" && !matches!(out.rtype, "ClinicalImpression" | "DocumentReference") {
            continue;
        }
        let (start, end) = match x {
            Value::String(s) => (Some(s.as_str()), None),
            Value::Object(p) => (
                p.field("start").and_then(Value::as_str),
                p.field("end").and_then(Value::as_str),
            ),
            _ => continue,
        };
        let s = start.and_then(date::parse);
        let e = end.and_then(date::parse);
        if let (Some(s), Some(e)) = (s, e) {
            if e.hi < s.lo {
                let what = if out.rtype == "Encounter" {
                    ("discharge is before admission", "出院时间早于入院时间")
                } else {
                    ("the period ends before it starts", "结束时间早于开始时间")
                };
                out.add(
                    "period-order",
                    &format!("{key}.end"),
                    format!(
                        "{}: {} < {}.",
                        capitalise(what.0),
                        end.unwrap_or(""),
                        start.unwrap_or("")
                    ),
                    format!(
                        "{}：{} < {}。",
                        what.1,
                        end.unwrap_or(""),
                        start.unwrap_or("")
                    ),
                    "Correct the start or end of the period.",
                );
            }
        }
        if let Some(s) = s {
            if s.lo > limit {
                let at = if x.is_object() {
                    format!("{key}.start")
                } else {
                    key.to_string()
                };
                let when = start.unwrap_or("");
                out.add(
                    "clinical-time",
                    &at,
                    format!("The clinical time {when} is after the data was collected or received: it cannot have happened yet."),
                    format!("临床时间 {when} 晚于数据采集或接收时间，不可能已经发生。"),
                    "Correct the clinical time (a wrong year or a clock set to the future?).",
                );
            }
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// The LOINC code of an observation-like element, if it has one.
fn loinc_of(code: &Value) -> Option<&str> {
    code.at("coding")
        .as_array()?
        .iter()
        .find(|c| c.at("system") == codes::LOINC)
        .and_then(|c| c.at("code").as_str())
}

fn quantities(obj: &Map<String, Value>, out: &mut Out) {
    let mut items: Vec<(String, Option<&str>, &Value)> = Vec::new();
    if let Some(q) = obj.field("valueQuantity") {
        items.push((
            "valueQuantity".into(),
            obj.field("code").and_then(loinc_of),
            q,
        ));
    }
    for (i, c) in obj
        .field("component")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(q) = c.field("valueQuantity") {
            items.push((
                format!("component[{i}].valueQuantity"),
                loinc_of(c.at("code")),
                q,
            ));
        }
    }
    for (at, loinc, q) in items {
        let original = q
            .field("extension")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|e| e.at("url") == ORIGINAL_QUANTITY_URL))
            .map(|e| e.at("valueQuantity"));
        if let Some(o) = original {
            let sent = format!(
                "{} {}",
                o.at("value"),
                o.at("code")
                    .as_str()
                    .or(o.at("unit").as_str())
                    .unwrap_or("")
            );
            let now = format!("{} {}", q.at("value"), q.at("code").as_str().unwrap_or(""));
            out.add(
                "unit-converted",
                &format!("{at}.value"),
                format!("Sent as {sent}; converted to the platform's unit: {now}. The value as sent is kept in the original-quantity extension."),
                format!("原值 {sent} 已换算为平台单位：{now}；原值保留在 original-quantity 扩展中。"),
                "Nothing to do; sending the platform's unit avoids the conversion.",
            );
        }
        let unit = q.at("code").as_str().or_else(|| q.at("unit").as_str());
        let ucum = q.field("system").is_none_or(|s| s == codes::UCUM);
        if let (Some(u), true) = (unit, ucum) {
            if let Some(problem) = codes::ucum_problem(u) {
                out.add(
                    "unit-ucum",
                    &format!("{at}.code"),
                    format!("The unit is not a UCUM code: {problem}."),
                    format!("计量单位不是 UCUM 编码：{problem}。"),
                    "Send the unit as a UCUM code (e.g. g/L, mmol/L, 10*9/L) with system http://unitsofmeasure.org.",
                );
                continue;
            }
        }
        let Some(test) = loinc.and_then(|l| codes::lab_tests().get(l)) else {
            continue;
        };
        if let Some(u) = unit {
            if u != test.unit {
                out.add(
                    "unit-expected",
                    &format!("{at}.code"),
                    format!(
                        "{} ({}) is reported in {} on this platform, not {u}.",
                        test.en, test.loinc, test.unit
                    ),
                    format!(
                        "{}（{}）在本平台以 {} 报告，而不是 {u}。",
                        test.zh, test.loinc, test.unit
                    ),
                    "Convert the value to the platform's unit and send that unit.",
                );
                continue;
            }
        }
        if let Some(x) = q.at("value").as_f64() {
            if x < test.min || x > test.max {
                out.add(
                    "value-plausible",
                    &format!("{at}.value"),
                    format!(
                        "{x} {} is not a possible value of {} ({}–{} {}): a unit or entry error?",
                        test.unit, test.en, test.min, test.max, test.unit
                    ),
                    format!(
                        "{x} {} 不是{}的可能取值（{}–{} {}），疑似单位或录入错误。",
                        test.unit, test.zh, test.min, test.max, test.unit
                    ),
                    "Check the value and its unit (e.g. mg/dL sent as mmol/L, metres as cm).",
                );
            }
        }
    }
}

fn codes(obj: &Map<String, Value>, out: &mut Out) {
    let mut concepts: Vec<(String, &Value)> = Vec::new();
    for key in ["code", "vaccineCode", "medicationCodeableConcept"] {
        if let Some(c) = obj.field(key) {
            concepts.push((key.into(), c));
        }
    }
    for (i, c) in obj
        .field("component")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        concepts.push((format!("component[{i}].code"), c.at("code")));
    }
    for (at, concept) in concepts {
        for (j, coding) in concept
            .at("coding")
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let Some(code) = coding.at("code").as_str() else {
                continue;
            };
            let problem = match coding.at("system").as_str() {
                Some(codes::LOINC) => codes::loinc_problem(code),
                Some(codes::ICD10) => codes::icd10_problem(code),
                _ => None,
            };
            if let Some(p) = problem {
                out.add(
                    "code-valid",
                    &format!("{at}.coding[{j}].code"),
                    format!("Invalid code: {p}."),
                    format!("编码无效：{p}。"),
                    "Send the code exactly as the code system defines it.",
                );
            }
        }
    }
}

fn has_element(obj: &Map<String, Value>, name: &str) -> bool {
    match name.strip_suffix("[x]") {
        Some(base) => obj.iter().any(|(k, v)| {
            k.len() > base.len()
                && k.starts_with(base)
                && k.as_bytes()[base.len()].is_ascii_uppercase()
                && !v.is_null()
        }),
        None => obj.field(name).is_some_and(|v| !v.is_null()),
    }
}

/// How many of the data set's recommended elements a resource fills, of how many.
pub fn recommended_filled(v: &Value, rules: &Rules) -> (u32, u32) {
    let (Some(obj), Some(rtype)) = (v.as_object(), v.at("resourceType").as_str()) else {
        return (0, 0);
    };
    let Some(names) = rules.recommended.get(rtype) else {
        return (0, 0);
    };
    let filled = names.iter().filter(|n| has_element(obj, n)).count();
    (filled as u32, names.len() as u32)
}

fn data_set(obj: &Map<String, Value>, out: &mut Out) {
    if !out.on("data-set") {
        return;
    }
    let rules = out.rules;
    if let Some(required) = rules.data_set.get(out.rtype) {
        for name in required {
            if !has_element(obj, name) {
                out.add(
                    "data-set",
                    name.trim_end_matches("[x]"),
                    format!(
                        "The platform's data set requires {} on {}.",
                        name, out.rtype
                    ),
                    format!("平台数据集要求 {} 填写 {}。", out.rtype, name),
                    "Fill the element from the source system.",
                );
            }
        }
    }
    let inpatient = out.rtype == "Encounter"
        && obj.field("class").is_some_and(|c| c.at("code") == "IMP")
        && obj.field("status").is_some_and(|s| s == "finished");
    if rules.inpatient_diagnoses && inpatient {
        let uses: Vec<&str> = obj
            .field("diagnosis")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|d| d.at("use").at("coding")[0].at("code").as_str())
            .collect();
        for (code, en, zh) in [("AD", "admission", "入院"), ("DD", "discharge", "出院")] {
            if !uses.contains(&code) {
                out.add(
                    "data-set",
                    "diagnosis",
                    format!("A finished inpatient encounter needs its {en} diagnosis (diagnosis.use = {code})."),
                    format!("已出院的住院就诊须有{zh}诊断（diagnosis.use = {code}）。"),
                    "Send the case front page's diagnoses with the encounter.",
                );
            }
        }
    }
}

/// One step of the path to a value: an element name or an array position.
enum Step<'a> {
    Key(&'a str),
    At(usize),
}

/// Calls `found` with the path and text of every `reference` in `v` (outside `contained`
/// and `meta`). The path is kept as steps and only written out for a reference: the walk
/// visits every element of every resource a bulk load checks.
fn walk_references<'a>(
    v: &'a Value,
    path: &mut Vec<Step<'a>>,
    found: &mut dyn FnMut(&[Step<'a>], &'a str),
) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.field("reference") {
                path.push(Step::Key("reference"));
                found(path, r);
                path.pop();
            }
            for (k, x) in o {
                if k == "contained" || k == "reference" || k == "meta" {
                    continue;
                }
                if matches!(x, Value::Object(_) | Value::Array(_)) {
                    path.push(Step::Key(k));
                    walk_references(x, path, found);
                    path.pop();
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                path.push(Step::At(i));
                walk_references(x, path, found);
                path.pop();
            }
        }
        _ => {}
    }
}

/// `code.coding[0].system`, as a finding's expression gives it.
fn path_text(path: &[Step]) -> String {
    let mut s = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Step::At(i) => {
                s.push('[');
                s.push_str(&i.to_string());
                s.push(']');
            }
        }
    }
    s
}

/// Every `reference` of a resource with its location, contained resources left out; the
/// callers keep the literal ones (absolute, logical and fragment references are skipped).
fn collect_references(v: &Value) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    walk_references(v, &mut Vec::new(), &mut |path, r| {
        out.push((path_text(path), r))
    });
    out
}

/// Every relative literal reference of a resource as (type, id): what the `reference` rule
/// needs resolved.
pub fn references(v: &Value) -> Vec<(String, String)> {
    let mut refs = Vec::new();
    walk_references(v, &mut Vec::new(), &mut |_, r| {
        if let Some((t, id)) = literal(r) {
            refs.push((t.to_string(), id.to_string()));
        }
    });
    refs
}

/// `Type/id` of a relative literal reference.
fn literal(r: &str) -> Option<(&str, &str)> {
    let (t, id) = r.split_once('/')?;
    if id.contains('/') || !hutong_fhir::Definitions::get().is_resource_type(t) {
        return None;
    }
    hutong_fhir::is_valid_id(id).then_some((t, id))
}

#[cfg(test)]
mod tests;
