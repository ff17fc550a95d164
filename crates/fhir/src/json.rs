//! Field lookup on FHIR JSON objects, tuned for their size.
//!
//! `serde_json`'s ordered map (`preserve_order`, which the platform needs so stored and
//! returned resources keep their element order) hashes every key it is asked for with
//! SipHash. FHIR objects are small — a Coding has 2-4 fields, an Observation a dozen — and
//! comparing a handful of short keys is several times cheaper than one SipHash, which made
//! lookups the largest single cost of indexing and checking a resource.

use serde_json::{Map, Value};

/// Objects up to this many fields are searched by scanning; larger ones by their hash index.
const SCAN: usize = 16;

/// The value of `key` in `o`.
#[inline]
pub fn get<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    if o.len() <= SCAN {
        // Length and first byte settle most mismatches without a call to memcmp.
        let want = key.as_bytes();
        o.iter()
            .find(|(k, _)| {
                let k = k.as_bytes();
                k.len() == want.len() && k.first() == want.first() && k == want
            })
            .map(|(_, v)| v)
    } else {
        o.get(key)
    }
}

static NULL: Value = Value::Null;

/// [`get`] as methods, for the hot paths that read resources: `v.field("code")` in place of
/// `v.get("code")`, `v.at("code")` in place of `v["code"]`.
pub trait Fields {
    fn field(&self, key: &str) -> Option<&Value>;

    /// The value at `key`, or `null` (as `Index` does).
    #[inline]
    fn at(&self, key: &str) -> &Value {
        self.field(key).unwrap_or(&NULL)
    }
}

impl Fields for Value {
    /// `None` unless `self` is an object.
    #[inline]
    fn field(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(o) => get(o, key),
            _ => None,
        }
    }
}

impl Fields for Map<String, Value> {
    #[inline]
    fn field(&self, key: &str) -> Option<&Value> {
        get(self, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn finds_fields_in_small_and_large_objects() {
        let small = json!({"system": "s", "code": "c"});
        assert_eq!(small.field("code"), Some(&json!("c")));
        assert_eq!(small.field("display"), None);
        assert_eq!(json!("text").field("code"), None);
        let large: Map<String, Value> = (0..40).map(|i| (format!("k{i}"), json!(i))).collect();
        assert_eq!(get(&large, "k33"), Some(&json!(33)));
        assert_eq!(get(&large, "k40"), None);
        let nested = json!({"subject": {"reference": "Patient/1"}});
        assert_eq!(nested.at("subject").at("reference"), &json!("Patient/1"));
        assert!(nested.at("patient").at("reference").is_null());
    }

    proptest! {
        #[test]
        fn agrees_with_the_map(keys in proptest::collection::vec("[a-e]{1,3}", 0..40), probe in "[a-e]{1,3}") {
            let o: Map<String, Value> = keys.iter().enumerate().map(|(i, k)| (k.clone(), json!(i))).collect();
            prop_assert_eq!(get(&o, &probe), o.get(&probe));
        }
    }
}
