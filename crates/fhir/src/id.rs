//! Ids and references.

/// True when `s` is a valid FHIR logical id: 1–64 characters of `[A-Za-z0-9\-\.]`.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A parsed literal reference (`Type/id`, `Type/id/_history/v`, or an absolute URL ending in
/// one of those).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub rtype: String,
    pub id: String,
    pub version: Option<String>,
}

impl Reference {
    /// Parses a relative or absolute literal reference. Fragments (`#x`), `urn:` references and
    /// anything without a `Type/id` tail yield `None`.
    pub fn parse(s: &str) -> Option<Reference> {
        if s.starts_with('#') || s.starts_with("urn:") {
            return None;
        }
        let s = s.split(['?', '#']).next().unwrap_or(s);
        let parts: Vec<&str> = s.trim_end_matches('/').split('/').collect();
        let n = parts.len();
        let (t, i, v) = if n >= 4 && parts[n - 2] == "_history" {
            (parts[n - 4], parts[n - 3], Some(parts[n - 1].to_string()))
        } else if n >= 2 {
            (parts[n - 2], parts[n - 1], None)
        } else {
            return None;
        };
        let type_ok = t.chars().next().is_some_and(|c| c.is_ascii_uppercase())
            && t.chars().all(|c| c.is_ascii_alphanumeric());
        if !type_ok || !is_valid_id(i) {
            return None;
        }
        Some(Reference {
            rtype: t.to_string(),
            id: i.to_string(),
            version: v,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_reference_forms() {
        let r = Reference::parse("Patient/123").unwrap();
        assert_eq!((r.rtype.as_str(), r.id.as_str()), ("Patient", "123"));
        let r = Reference::parse("http://x.org/fhir/Observation/a.b-1/_history/3").unwrap();
        assert_eq!((r.rtype.as_str(), r.id.as_str()), ("Observation", "a.b-1"));
        assert_eq!(r.version.as_deref(), Some("3"));
        assert!(Reference::parse("#contained").is_none());
        assert!(Reference::parse("urn:uuid:1234").is_none());
        assert!(Reference::parse("patient/1").is_none());
        assert!(Reference::parse("Patient/bad id").is_none());
    }

    proptest! {
        #[test]
        fn valid_ids_roundtrip(id in "[A-Za-z0-9.-]{1,64}", t in "[A-Z][a-zA-Z]{1,20}") {
            prop_assert!(is_valid_id(&id));
            let r = Reference::parse(&format!("{t}/{id}")).unwrap();
            prop_assert_eq!(r.id, id);
            prop_assert_eq!(r.rtype, t);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = Reference::parse(&s);
        }
    }
}
