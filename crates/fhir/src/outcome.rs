//! OperationOutcome: the wire shape of every error and warning Hutong returns.

use serde_json::{json, Value};

/// FHIR `IssueType` codes that Hutong uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    Processing,
    NotSupported,
    NotFound,
    Conflict,
    Duplicate,
    Deleted,
    TooLong,
    Security,
    Login,
    Forbidden,
    Exception,
    Informational,
    MultipleMatches,
    Incomplete,
    CodeInvalid,
    BusinessRule,
    Throttled,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::Processing => "processing",
            IssueCode::NotSupported => "not-supported",
            IssueCode::NotFound => "not-found",
            IssueCode::Conflict => "conflict",
            IssueCode::Duplicate => "duplicate",
            IssueCode::Deleted => "deleted",
            IssueCode::TooLong => "too-long",
            IssueCode::Security => "security",
            IssueCode::Login => "login",
            IssueCode::Forbidden => "forbidden",
            IssueCode::Exception => "exception",
            IssueCode::Informational => "informational",
            IssueCode::MultipleMatches => "multiple-matches",
            IssueCode::Incomplete => "incomplete",
            IssueCode::CodeInvalid => "code-invalid",
            IssueCode::BusinessRule => "business-rule",
            IssueCode::Throttled => "throttled",
        }
    }
}

/// One issue of an OperationOutcome.
#[derive(Debug, Clone)]
pub struct Issue {
    pub severity: &'static str,
    pub code: IssueCode,
    pub diagnostics: String,
    pub expression: Option<String>,
    /// Further elements of the issue (`details`, `extension`) as JSON.
    pub extra: Option<serde_json::Map<String, Value>>,
}

/// An OperationOutcome under construction.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub issues: Vec<Issue>,
}

impl Outcome {
    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Outcome {
        Outcome::default().with("error", code, diagnostics, None)
    }

    pub fn info(diagnostics: impl Into<String>) -> Outcome {
        Outcome::default().with("information", IssueCode::Informational, diagnostics, None)
    }

    pub fn with(
        mut self,
        severity: &'static str,
        code: IssueCode,
        diagnostics: impl Into<String>,
        expression: Option<String>,
    ) -> Outcome {
        self.issues.push(Issue {
            severity,
            code,
            diagnostics: diagnostics.into(),
            expression,
            extra: None,
        });
        self
    }

    pub fn to_json(&self) -> Value {
        let issues: Vec<Value> = self
            .issues
            .iter()
            .map(|i| {
                let mut v = json!({
                    "severity": i.severity,
                    "code": i.code.as_str(),
                    "diagnostics": i.diagnostics,
                });
                if let Some(e) = &i.expression {
                    v["expression"] = json!([e]);
                }
                if let (Some(extra), Some(o)) = (&i.extra, v.as_object_mut()) {
                    for (k, x) in extra {
                        o.insert(k.clone(), x.clone());
                    }
                }
                v
            })
            .collect();
        json!({"resourceType": "OperationOutcome", "issue": issues})
    }
}
