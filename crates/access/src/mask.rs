//! Masking of identity data in responses (信息脱敏): ID numbers `4401**********1234`,
//! phones `138****5678`, names `张*`. What is masked depends on who reads and why
//! ([`View`]); the store keeps the data whole.

use serde_json::{json, Value};

/// How much of a person's identity a reader sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum View {
    /// Everything: the resident, the institution that submitted it, the platform, an
    /// operator with a recorded reason.
    Full,
    /// Treating clinicians of another institution: names, sex and birth date; identifiers,
    /// phones and street addresses masked.
    Treatment,
    /// Everything identifying masked (finding a person before authorization, operators
    /// without a reason).
    Masked,
}

/// Resource types that carry a person's identity.
pub const IDENTITY_TYPES: [&str; 3] = ["Patient", "Person", "RelatedPerson"];

/// `4401**********1234`: the first four and last four characters of an ID number.
pub fn id_number(s: &str) -> String {
    let c: Vec<char> = s.chars().collect();
    match c.len() {
        0..=4 => "*".repeat(c.len()),
        5..=8 => format!(
            "{}{}",
            "*".repeat(c.len() - 2),
            c[c.len() - 2..].iter().collect::<String>()
        ),
        n => format!(
            "{}{}{}",
            c[..4].iter().collect::<String>(),
            "*".repeat(n - 8),
            c[n - 4..].iter().collect::<String>()
        ),
    }
}

/// `138****5678`: the first three and last four digits of a phone number.
pub fn phone(s: &str) -> String {
    let c: Vec<char> = s.chars().collect();
    match c.len() {
        0..=4 => "*".repeat(c.len()),
        5..=7 => format!(
            "{}{}",
            "*".repeat(c.len() - 2),
            c[c.len() - 2..].iter().collect::<String>()
        ),
        n => format!(
            "{}{}{}",
            c[..3].iter().collect::<String>(),
            "*".repeat(n - 7),
            c[n - 4..].iter().collect::<String>()
        ),
    }
}

/// `张*` / `欧阳**`-style: the first character of each word kept (the surname of a Chinese
/// name), the rest starred.
pub fn name(s: &str) -> String {
    s.split(' ')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(first) => format!("{first}{}", "*".repeat(c.count())),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn mask_names(v: &mut Value) {
    for n in v.as_array_mut().into_iter().flatten() {
        if let Some(t) = n.get("text").and_then(Value::as_str).map(name) {
            n["text"] = json!(t);
        }
        // The family name is what a clinician calls the patient by; the given names go.
        if let Some(given) = n.get_mut("given").and_then(Value::as_array_mut) {
            for g in given.iter_mut() {
                if let Some(s) = g.as_str() {
                    *g = json!("*".repeat(s.chars().count().max(1)));
                }
            }
        }
        for k in ["prefix", "suffix"] {
            if let Some(o) = n.as_object_mut() {
                o.remove(k);
            }
        }
    }
}

fn mask_identifiers(v: &mut Value) {
    for i in v.as_array_mut().into_iter().flatten() {
        if let Some(s) = i.get("value").and_then(Value::as_str).map(id_number) {
            i["value"] = json!(s);
        }
    }
}

fn mask_telecom(v: &mut Value) {
    for t in v.as_array_mut().into_iter().flatten() {
        if let Some(s) = t.get("value").and_then(Value::as_str).map(phone) {
            t["value"] = json!(s);
        }
    }
}

fn mask_addresses(v: &mut Value) {
    for a in v.as_array_mut().into_iter().flatten() {
        if let Some(o) = a.as_object_mut() {
            // District and above stay (they are what statistics and routing need).
            o.remove("line");
            o.remove("postalCode");
            if o.contains_key("text") {
                o.insert("text".into(), json!("***"));
            }
        }
    }
}

/// Masks an identity resource (Patient, Person, RelatedPerson) for `view`; other resources
/// are returned as they are. Masked resources carry the `MASKED` security label.
pub fn apply(rtype: &str, v: &mut Value, view: View) -> bool {
    if view == View::Full || !IDENTITY_TYPES.contains(&rtype) {
        return false;
    }
    // `get_mut`, never `v["…"]`: indexing a map for writing inserts `null` where the element
    // is absent, and FHIR JSON has no nulls.
    if let Some(x) = v.get_mut("identifier") {
        mask_identifiers(x);
    }
    if let Some(x) = v.get_mut("telecom") {
        mask_telecom(x);
    }
    if let Some(x) = v.get_mut("address") {
        mask_addresses(x);
    }
    let contacts = v.get_mut("contact").and_then(Value::as_array_mut);
    for c in contacts.into_iter().flatten() {
        if let Some(t) = c.get_mut("telecom") {
            mask_telecom(t);
        }
        if let Some(n) = c.get_mut("name") {
            let mut arr = json!([n.take()]);
            mask_names(&mut arr);
            *n = arr[0].take();
        }
        if let Some(o) = c.as_object_mut() {
            o.remove("address");
        }
    }
    if view == View::Masked {
        if let Some(n) = v.get_mut("name") {
            mask_names(n);
        }
        if let Some(o) = v.as_object_mut() {
            o.remove("photo");
            // The year of birth is enough to tell namesakes apart.
            if let Some(b) = o.get("birthDate").and_then(Value::as_str) {
                let y = b.get(..4).unwrap_or(b).to_string();
                o.insert("birthDate".into(), json!(y));
            }
        }
    }
    for k in ["identifier", "telecom", "address", "name"] {
        if v.get(k).is_some_and(Value::is_null) {
            if let Some(o) = v.as_object_mut() {
                o.remove(k);
            }
        }
    }
    let meta = v
        .as_object_mut()
        .map(|o| o.entry("meta").or_insert_with(|| json!({})));
    if let Some(Value::Object(m)) = meta {
        let sec = m.entry("security").or_insert_with(|| json!([]));
        if let Some(a) = sec.as_array_mut() {
            a.push(json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "MASKED"}));
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_look_like_the_examples() {
        assert_eq!(id_number("440106199001011234"), "4401**********1234");
        assert_eq!(phone("13812345678"), "138****5678");
        assert_eq!(name("张伟"), "张*");
        assert_eq!(name("欧阳雪梅"), "欧***");
        assert_eq!(name("Zhang Wei"), "Z**** W**");
        assert_eq!(id_number("123"), "***");
        assert_eq!(id_number("MRN001"), "****01");
    }

    #[test]
    fn views_mask_what_they_should() {
        let p = json!({"resourceType": "Patient", "id": "p",
            "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "330127196408244586"}],
            "name": [{"text": "张伟", "family": "张", "given": ["伟"]}],
            "telecom": [{"system": "phone", "value": "13812345678"}],
            "address": [{"city": "杭州市", "district": "西湖区", "line": ["文三路 1 号"]}],
            "birthDate": "1964-08-24", "gender": "male"});
        let mut full = p.clone();
        assert!(!apply("Patient", &mut full, View::Full));
        assert_eq!(full, p);
        let mut t = p.clone();
        assert!(apply("Patient", &mut t, View::Treatment));
        assert_eq!(t["identifier"][0]["value"], "3301**********4586");
        assert_eq!(t["telecom"][0]["value"], "138****5678");
        assert_eq!(
            t["name"][0]["text"], "张伟",
            "treating clinicians see the name"
        );
        assert!(t["address"][0].get("line").is_none());
        assert_eq!(t["address"][0]["district"], "西湖区");
        assert_eq!(t["meta"]["security"][0]["code"], "MASKED");
        let mut m = p.clone();
        apply("Patient", &mut m, View::Masked);
        assert_eq!(m["name"][0]["text"], "张*");
        assert_eq!(m["name"][0]["given"][0], "*");
        assert_eq!(m["birthDate"], "1964");
        let text = m.to_string();
        for secret in ["330127196408244586", "13812345678", "文三路", "张伟"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        let mut obs = json!({"resourceType": "Observation"});
        assert!(!apply("Observation", &mut obs, View::Masked));
    }

    /// FHIR JSON has no nulls: masking adds nothing that was not there.
    #[test]
    fn masking_adds_no_nulls() {
        let bare = json!({"resourceType": "Patient", "id": "p", "gender": "female",
            "contact": [{"relationship": [{"text": "母亲"}]}]});
        for view in [View::Treatment, View::Masked] {
            for (t, mut v) in [
                ("Patient", bare.clone()),
                ("Person", json!({"resourceType": "Person", "id": "x"})),
            ] {
                apply(t, &mut v, view);
                let text = v.to_string();
                assert!(!text.contains("null"), "{view:?} {t}: {text}");
            }
        }
    }
}
