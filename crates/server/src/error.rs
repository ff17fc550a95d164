//! The API's error type: a status and an OperationOutcome. Expected failures (the client's)
//! carry their message; unexpected ones are logged in full and answered opaquely.

use hutong_fhir::{IssueCode, Outcome};
use hutong_store::{SearchError, StoreError};

/// Declares the error codes with their HTTP status and OperationOutcome issue type, in one
/// table: every failure the API answers is one of these.
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $name:ident => $status:literal, $issue:ident;)*) => {
        /// What went wrong, as the API answers it: each code has one status and one issue type.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Code {
            $($(#[doc = $doc])* $name,)*
        }

        impl Code {
            /// Every code, in the table's order.
            pub const ALL: &'static [Code] = &[$(Code::$name,)*];

            pub fn status(self) -> u16 {
                match self {
                    $(Code::$name => $status,)*
                }
            }

            pub fn issue(self) -> IssueCode {
                match self {
                    $(Code::$name => IssueCode::$issue,)*
                }
            }

            pub fn name(self) -> &'static str {
                match self {
                    $(Code::$name => stringify!($name),)*
                }
            }

            /// The table's line for this code: what it means.
            pub fn meaning(self) -> &'static str {
                match self {
                    $(Code::$name => concat!($($doc),*).trim_ascii(),)*
                }
            }
        }
    };
}

error_codes! {
    /// The request or the resource is not valid (the message says where).
    Invalid => 400, Invalid;
    /// The resource is not the structure its type requires.
    Structure => 400, Structure;
    /// A value is out of its allowed range or form.
    Value => 400, Value;
    /// A required element, parameter or header is missing.
    Required => 400, Required;
    /// Something appears twice where once is allowed (a fullUrl, a change in a transaction).
    Duplicate => 400, Duplicate;
    /// A parameter, modifier or form the server does not support.
    Unsupported => 400, NotSupported;
    /// No valid credentials: sign in first.
    Login => 401, Login;
    /// The requester may not do this; the message says who may, or how to ask.
    Forbidden => 403, Forbidden;
    /// Nothing is known there (or nothing the requester may know of).
    NotFound => 404, NotFound;
    /// The method is not allowed on this resource.
    MethodNotAllowed => 405, NotSupported;
    /// The server cannot answer in the format asked for.
    NotAcceptable => 406, NotSupported;
    /// The change conflicts with the current state.
    Conflict => 409, Conflict;
    /// The slot is in the family doctors' share until its release time.
    Reserved => 409, BusinessRule;
    /// More than one person fits where one must (sign-in by phone).
    Ambiguous => 409, MultipleMatches;
    /// The resource was deleted.
    Gone => 410, Deleted;
    /// The version named by If-Match is not the current one.
    VersionConflict => 412, Conflict;
    /// Conditional criteria match more than one resource.
    MultipleMatches => 412, MultipleMatches;
    /// The body is larger than the server accepts.
    TooLarge => 413, TooLong;
    /// The request line is longer than the server accepts.
    UriTooLong => 414, TooLong;
    /// The body's content type is not one the server reads.
    UnsupportedMediaType => 415, NotSupported;
    /// The intake rules reject the submission (it is quarantined).
    BusinessRule => 422, BusinessRule;
    /// The request is well-formed but cannot be carried out.
    Unprocessable => 422, Processing;
    /// Too many requests: wait and try again.
    Throttled => 429, Throttled;
    /// Locked after repeated wrong codes or passwords.
    Locked => 429, Security;
    /// The server failed; nothing was applied.
    Internal => 500, Exception;
    /// Another node of the hierarchy did not answer (or not sensibly); try again later.
    BadGateway => 502, Exception;
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub outcome: Outcome,
    /// Set when a concurrent writer won a race: the transaction may be run again.
    pub retryable: bool,
}

impl hutong_store::TxError for ApiError {
    fn retryable(&self) -> bool {
        self.retryable
    }
}

/// A 403: the requester may not do this (the message says who may, or how to ask).
pub fn forbidden(msg: impl Into<String>) -> ApiError {
    ApiError::of(Code::Forbidden, msg)
}

impl ApiError {
    /// The error `code` with its message.
    pub fn of(code: Code, msg: impl Into<String>) -> ApiError {
        ApiError {
            status: code.status(),
            outcome: Outcome::error(code.issue(), msg),
            retryable: false,
        }
    }
    /// The error `code` answered with an outcome of several issues (the intake rules'
    /// findings, each located).
    pub fn with_outcome(code: Code, outcome: Outcome) -> ApiError {
        ApiError {
            status: code.status(),
            outcome,
            retryable: false,
        }
    }
    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::of(Code::Invalid, msg)
    }
    pub fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError::of(Code::NotFound, msg)
    }
    pub fn with_expression(mut self, expr: impl Into<String>) -> ApiError {
        if let Some(i) = self.outcome.issues.last_mut() {
            i.expression = Some(expr.into());
        }
        self
    }
    /// The first issue's diagnostics (for messages that wrap this error).
    pub fn message(&self) -> &str {
        self.outcome
            .issues
            .first()
            .map_or("", |i| i.diagnostics.as_str())
    }
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> ApiError {
        let code = match e {
            SearchError::Unsupported(_) | SearchError::Modifier { .. } => Code::Unsupported,
            _ => Code::Invalid,
        };
        ApiError::of(code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let retryable = e.is_retryable();
        let mut api = match e {
            StoreError::VersionMismatch { .. } => {
                ApiError::of(Code::VersionConflict, e.to_string())
            }
            StoreError::Conflict(m) => ApiError::of(Code::Conflict, m),
            StoreError::Invalid(m) => ApiError::of(Code::Invalid, m),
            StoreError::Search(s) => s.into(),
            other => {
                tracing::error!(error = ?other, "Storage failure.");
                ApiError::of(
                    Code::Internal,
                    "Internal storage error; the request was not applied.",
                )
            }
        };
        api.retryable = retryable;
        api
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ARCHITECTURE.md's table of error codes is the code's: every row, in order.
    #[test]
    fn the_error_code_table_in_architecture_md_is_the_codes() {
        let doc = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ARCHITECTURE.md"),
        )
        .unwrap();
        let section = doc
            .split("## Error codes")
            .nth(1)
            .expect("ARCHITECTURE.md has an Error codes section");
        let rows: Vec<&str> = section
            .lines()
            .take_while(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with("| `"))
            .collect();
        let expected: Vec<String> = Code::ALL
            .iter()
            .map(|c| {
                format!(
                    "| `{}` | {} | `{}` | {} |",
                    c.name(),
                    c.status(),
                    c.issue().as_str(),
                    c.meaning()
                )
            })
            .collect();
        assert_eq!(rows, expected);
    }

    #[test]
    fn every_code_is_an_error_status_and_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        for c in Code::ALL {
            assert!((400..600).contains(&c.status()), "{c:?}");
            assert!(names.insert(c.name()));
            assert!(!c.meaning().is_empty(), "{c:?} has no meaning");
            let e = ApiError::of(*c, "x");
            assert_eq!(e.status, c.status());
            assert_eq!(e.outcome.issues[0].code, c.issue());
        }
    }
}
