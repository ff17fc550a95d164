//! Security labels (`meta.security`) that make a resource sensitive, as bits.
//!
//! FHIR marks sensitive information with security labels from HL7 v3: sensitivity codes
//! (`v3-ActCode`: PSY mental health, HIV, STD, SEX reproductive and sexual health, ETH
//! substance use…) and confidentiality codes (`v3-Confidentiality`: R restricted, V very
//! restricted). The store keeps the bits of a resource's labels beside it so that the access
//! decision can exclude sensitive rows in the database, and a grant names the categories it
//! opens as the same labels.

use serde_json::Value;

use crate::json::Fields;

pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
/// Hutong's own labels.
pub const HUTONG_SECURITY: &str = "https://hutong.dev/fhir/CodeSystem/security";

/// One sensitive category: the bit the store keeps and the labels that set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Category {
    pub bit: u32,
    /// The name used in APIs and configuration (`mental-health`, `hiv-sti`, …).
    pub name: &'static str,
    /// The label a grant carries to open the category, and that classification adds.
    pub label: (&'static str, &'static str),
    /// Every label that puts a resource in the category.
    pub codes: &'static [(&'static str, &'static str)],
    pub zh: &'static str,
}

/// Mental health, including substance use.
pub const MENTAL_HEALTH: u32 = 1;
/// HIV and sexually transmitted infections.
pub const HIV_STI: u32 = 1 << 1;
/// Reproductive and sexual health.
pub const REPRODUCTIVE: u32 = 1 << 2;
/// Marked restricted by the source (R/V) or by the resident (患者申明特控).
pub const RESTRICTED: u32 = 1 << 3;
/// The platform's records about a person's access and identity (grants, reviews): for the
/// resident and the platform, never opened by a grant to an institution.
pub const ACCESS_RECORD: u32 = 1 << 4;
/// Set by the resident's own restriction; kept across new versions from the source.
pub const RESIDENT_RESTRICTED: u32 = 1 << 5;

/// Every bit.
pub const ALL: u32 = (1 << 6) - 1;

pub const CATEGORIES: &[Category] = &[
    Category {
        bit: MENTAL_HEALTH,
        name: "mental-health",
        label: (ACT_CODE, "PSY"),
        codes: &[
            (ACT_CODE, "PSY"),
            (ACT_CODE, "PSYTHPN"),
            (ACT_CODE, "ETH"),
            (ACT_CODE, "ETHUD"),
            (ACT_CODE, "BH"),
        ],
        zh: "精神心理",
    },
    Category {
        bit: HIV_STI,
        name: "hiv-sti",
        label: (ACT_CODE, "HIV"),
        codes: &[(ACT_CODE, "HIV"), (ACT_CODE, "STD")],
        zh: "艾滋病与性传播疾病",
    },
    Category {
        bit: REPRODUCTIVE,
        name: "reproductive",
        label: (ACT_CODE, "SEX"),
        codes: &[(ACT_CODE, "SEX"), (ACT_CODE, "SDV")],
        zh: "生殖健康",
    },
    Category {
        bit: RESTRICTED,
        name: "restricted",
        label: (CONFIDENTIALITY, "R"),
        codes: &[(CONFIDENTIALITY, "R"), (CONFIDENTIALITY, "V")],
        zh: "患者申明特控",
    },
    Category {
        bit: ACCESS_RECORD,
        name: "access-record",
        label: (HUTONG_SECURITY, "access-record"),
        codes: &[(HUTONG_SECURITY, "access-record")],
        zh: "授权与身份记录",
    },
];

/// The sensitivity bits a grant naming `categories` opens: naming restricted items opens
/// those the resident restricted too.
pub fn opens(categories: u32) -> u32 {
    if categories & RESTRICTED != 0 {
        categories | RESIDENT_RESTRICTED
    } else {
        categories
    }
}

/// The categories a grant may open by name (the platform's own records are not among them).
pub fn grantable(name: &str) -> Option<&'static Category> {
    CATEGORIES
        .iter()
        .find(|c| c.name == name && c.bit != ACCESS_RECORD)
}

/// The category bits of a `system|code` label (0 when it is not a sensitivity label).
pub fn bits_of_label(system: &str, code: &str) -> u32 {
    CATEGORIES
        .iter()
        .filter(|c| c.codes.iter().any(|(s, k)| *s == system && *k == code))
        .fold(0, |acc, c| acc | c.bit)
}

/// The category bits of a resource's `meta.security` labels.
pub fn bits(resource: &Value) -> u32 {
    resource
        .at("meta")
        .at("security")
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            bits_of_label(
                c.at("system").as_str().unwrap_or(""),
                c.at("code").as_str().unwrap_or(""),
            )
        })
        .fold(0, |a, b| a | b)
}

/// Adds the label of each category in `bits` that the resource does not carry yet.
/// The label a read shows on an item its resident restricted (患者申明特控). It names no
/// category: the restriction itself is kept beside the resource, not in what a source sends.
pub const RESIDENT_RESTRICTED_LABEL: (&str, &str) = (HUTONG_SECURITY, "resident-restricted");

/// Adds [`RESIDENT_RESTRICTED_LABEL`] to a resource about to be read.
pub fn add_resident_restricted_label(resource: &mut Value) {
    if is_resident_restricted(resource) {
        return;
    }
    if let Some(arr) = security_labels(resource) {
        arr.push(serde_json::json!({"system": RESIDENT_RESTRICTED_LABEL.0,
            "code": RESIDENT_RESTRICTED_LABEL.1, "display": "患者申明特控"}));
    }
}

/// `meta.security` of a resource, made if missing.
fn security_labels(resource: &mut Value) -> Option<&mut Vec<Value>> {
    let meta = resource
        .as_object_mut()?
        .entry("meta")
        .or_insert_with(|| Value::Object(Default::default()));
    let sec = meta
        .as_object_mut()?
        .entry("security")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !sec.is_array() {
        *sec = Value::Array(Vec::new());
    }
    sec.as_array_mut()
}

/// Whether a read resource carries [`RESIDENT_RESTRICTED_LABEL`].
pub fn is_resident_restricted(resource: &Value) -> bool {
    resource
        .at("meta")
        .at("security")
        .as_array()
        .is_some_and(|a| {
            a.iter().any(|l| {
                l.at("system") == RESIDENT_RESTRICTED_LABEL.0
                    && l.at("code") == RESIDENT_RESTRICTED_LABEL.1
            })
        })
}

pub fn add_labels(resource: &mut Value, bits: u32) {
    let missing = bits & !self::bits(resource);
    if missing == 0 {
        return;
    }
    let Some(arr) = security_labels(resource) else {
        return;
    };
    for c in CATEGORIES.iter().filter(|c| missing & c.bit != 0) {
        arr.push(serde_json::json!({"system": c.label.0, "code": c.label.1}));
    }
}

/// Names of the categories in `bits`, for messages and audit.
pub fn names(bits: u32) -> Vec<&'static str> {
    CATEGORIES
        .iter()
        .filter(|c| bits & c.bit != 0)
        .map(|c| c.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_become_bits_and_back() {
        let mut r = json!({"resourceType": "Condition", "meta": {"security": [
            {"system": ACT_CODE, "code": "PSY"}, {"system": CONFIDENTIALITY, "code": "N"}]}});
        assert_eq!(bits(&r), MENTAL_HEALTH);
        add_labels(&mut r, MENTAL_HEALTH | HIV_STI);
        assert_eq!(bits(&r), MENTAL_HEALTH | HIV_STI);
        assert_eq!(r["meta"]["security"].as_array().unwrap().len(), 3);
        assert_eq!(bits(&json!({"resourceType": "Observation"})), 0);
        assert_eq!(bits_of_label(CONFIDENTIALITY, "V"), RESTRICTED);
        assert_eq!(names(HIV_STI | RESTRICTED), ["hiv-sti", "restricted"]);
        assert!(grantable("access-record").is_none());
        assert_eq!(grantable("reproductive").unwrap().bit, REPRODUCTIVE);
    }
}
