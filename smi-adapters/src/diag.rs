//! Structured diagnostics: what could not be translated, or not exactly, and where.

use std::fmt;

/// How bad a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Rendered, but not exactly as written (the rendered form is the closest safe one).
    Warning,
    /// Not rendered: the input is invalid or the mesh cannot express it.
    Error,
}

/// One diagnostic, naming the input object and field.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    /// Warning or error.
    pub severity: Severity,
    /// The input object, e.g. `split.yaml#1 TrafficSplit split.smi-spec.io/v1alpha2 shop/reviews`.
    pub object: String,
    /// The field, e.g. `spec.backends[1].weight`.
    pub field: String,
    /// What is wrong, in plain words.
    pub message: String,
}

impl Diagnostic {
    /// An error.
    pub fn error(object: impl fmt::Display, field: &str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            object: object.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// A warning.
    pub fn warning(object: impl fmt::Display, field: &str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(object, field, message)
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        if self.field.is_empty() {
            write!(f, "{sev}: {}: {}", self.object, self.message)
        } else {
            write!(
                f,
                "{sev}: {}: {}: {}",
                self.object, self.field, self.message
            )
        }
    }
}
