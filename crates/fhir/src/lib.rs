//! FHIR R4 JSON for Hutong.
//!
//! Layout:
//! - [`defs`]: the R4 definitions Hutong uses (resource types, search parameters, the Patient
//!   compartment), generated from the official bundles by `tools/gen-fhir-defs.py` and embedded.
//! - [`path`]: the subset of FHIRPath that R4 search-parameter expressions use.
//! - [`patch`]: FHIRPath Patch (a `Parameters` of add, insert, delete, replace, move).
//! - [`date`]: FHIR date/dateTime/instant parsing into half-open millisecond ranges.
//! - [`index`]: extraction of search-index values from a resource.
//! - [`id`]: validated ids and references.
//! - [`json`]: field lookup sized for FHIR's small objects.
//! - [`security`]: sensitivity labels (`meta.security`) as the bits the access decision uses.
//! - [`validate`]: structural validation against the R4 StructureDefinitions.
//! - [`vocab`]: the identifier systems and extension URLs shared by every crate.
//! - [`outcome`]: OperationOutcome construction, the shape of every error Hutong returns.
//!
//! Architecture invariant: nothing in this crate does I/O; it is pure functions over JSON.

pub mod date;
pub mod defs;
pub mod id;
pub mod index;
pub mod json;
pub mod outcome;
pub mod patch;
pub mod path;
pub mod security;
pub mod validate;
pub mod vocab;

pub use defs::{Definitions, Derived, ParamType, SearchParamDef};
pub use id::{is_valid_id, Reference};
pub use outcome::{IssueCode, Outcome};

/// Lower-cases and strips diacritics, as FHIR string search requires ("case and accent
/// insensitive"). NFKC first, so full-width forms (common in Chinese input) match ASCII.
pub fn normalize_string(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    use unicode_normalization::char::is_combining_mark;
    use unicode_normalization::UnicodeNormalization;
    s.nfkd()
        .filter(|c| !is_combining_mark(*c))
        .collect::<String>()
        .nfkc()
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_folds_case_accents_and_width() {
        assert_eq!(normalize_string("Zoë ÅSTRÖM"), "zoe astrom");
        assert_eq!(normalize_string("ＡＢＣ１２３"), "abc123");
        assert_eq!(normalize_string("张伟"), "张伟");
    }
}
