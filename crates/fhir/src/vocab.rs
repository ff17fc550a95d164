//! The identifier systems and extension URLs every crate of the platform uses: defined once
//! here, so a change of one cannot leave two crates disagreeing about what they write and
//! what they look for.

/// The resident identity card number (居民身份证号, GB 11643): the national OID.
pub const ID_SYSTEM: &str = "urn:oid:2.16.156.10011.1.3";

/// The regional health card (居民健康卡) number.
pub const HEALTH_CARD_SYSTEM: &str = "https://hutong.dev/sid/health-card";

/// An organisation's unified social credit code (统一社会信用代码, GB 32100).
pub const USCC_SYSTEM: &str = "https://hutong.dev/sid/uscc";

/// The `meta` extension recording when the source collected the data (采集时间).
pub const COLLECTED_URL: &str = "https://hutong.dev/fhir/StructureDefinition/collection-time";

/// The kinds of institution (三级医院, 社区卫生服务中心…) on `Organization.type`.
pub const INSTITUTION_KIND_SYSTEM: &str = "https://hutong.dev/fhir/CodeSystem/institution-kind";

/// The institution kinds of primary care (基层医疗卫生机构), whose doctors are the residents'
/// family doctors.
pub const PRIMARY_CARE_KINDS: &[&str] = &["community-health-centre", "township-clinic"];

/// The extension on an Organization whose lab and imaging results the region recognizes
/// (互认资质: it passed external quality assessment).
pub const RECOGNITION_QUALIFIED_URL: &str =
    "https://hutong.dev/fhir/StructureDefinition/recognition-qualified";

/// The platform's encounter types (门诊, 住院, 慢病随访…) on `Encounter.type`.
pub const ENCOUNTER_TYPE_SYSTEM: &str = "https://hutong.dev/fhir/CodeSystem/encounter-type";

/// The encounter type of a chronic-disease follow-up (慢病随访), which counts towards the
/// national basic public health service's four follow-ups a year.
pub const FOLLOW_UP_CODE: &str = "chronic-followup";

/// The `EpisodeOfCare.type` of a family-doctor contract (家庭医生签约).
pub const CONTRACT_SYSTEM: &str = "https://hutong.dev/fhir/CodeSystem/family-doctor-contract";

/// Stamps provenance on a submitted resource: the submitting institution (`meta.source`) and
/// the collection time, unless the source recorded its own.
pub fn stamp(v: &mut serde_json::Value, source: &str, now_ms: i64) {
    use serde_json::{json, Value};
    let Some(obj) = v.as_object_mut() else { return };
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    meta.insert("source".into(), Value::String(source.to_string()));
    let exts = meta.entry("extension").or_insert_with(|| json!([]));
    if !exts.is_array() {
        *exts = json!([]);
    }
    let arr = exts.as_array_mut().expect("array ensured above");
    if !arr.iter().any(|e| e["url"] == COLLECTED_URL) {
        arr.push(
            json!({"url": COLLECTED_URL, "valueInstant": crate::date::format_instant(now_ms)}),
        );
    }
}
