//! The API's error type: a status and an OperationOutcome. Expected failures (the client's)
//! carry their message; unexpected ones are logged in full and answered opaquely.

use hutong_fhir::{IssueCode, Outcome};
use hutong_store::{SearchError, StoreError};

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
    ApiError::new(403, IssueCode::Forbidden, msg)
}

impl ApiError {
    pub fn new(status: u16, code: IssueCode, msg: impl Into<String>) -> ApiError {
        ApiError {
            status,
            outcome: Outcome::error(code, msg),
            retryable: false,
        }
    }
    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::new(400, IssueCode::Invalid, msg)
    }
    pub fn not_found(msg: impl Into<String>) -> ApiError {
        ApiError::new(404, IssueCode::NotFound, msg)
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
            SearchError::Unsupported(_) | SearchError::Modifier { .. } => IssueCode::NotSupported,
            _ => IssueCode::Invalid,
        };
        ApiError::new(400, code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let retryable = e.is_retryable();
        let mut api = match e {
            StoreError::VersionMismatch { .. } => {
                ApiError::new(412, IssueCode::Conflict, e.to_string())
            }
            StoreError::Conflict(m) => ApiError::new(409, IssueCode::Conflict, m),
            StoreError::Invalid(m) => ApiError::new(400, IssueCode::Invalid, m),
            StoreError::Search(s) => s.into(),
            other => {
                tracing::error!(error = ?other, "Storage failure.");
                ApiError::new(
                    500,
                    IssueCode::Exception,
                    "Internal storage error; the request was not applied.",
                )
            }
        };
        api.retryable = retryable;
        api
    }
}
