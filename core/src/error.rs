//! Error types of the federation library, and the one place that turns them into gRPC statuses.

use std::fmt;

/// A value that failed validation, with the name of its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field} {value:?}: {reason}")]
pub struct InvalidField {
    /// The field, as the user or the peer wrote it (e.g. `name`, `ports[1].port`).
    pub field: String,
    /// The offending value (truncated to 80 characters).
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl InvalidField {
    /// Builds the error; long values are truncated so logs stay readable.
    pub fn new(field: &str, value: impl fmt::Display, reason: &str) -> Self {
        let mut value = value.to_string();
        if value.len() > 80 {
            let mut cut = 77;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
            value.push_str("...");
        }
        Self {
            field: field.to_string(),
            value,
            reason: reason.to_string(),
        }
    }

    /// Prefixes the field with its parent, e.g. `ports[0]` + `port` = `ports[0].port`.
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

/// Why a peer's catalog message was refused (and nothing of it applied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The delta does not continue what this site holds from the peer; a snapshot is needed.
    #[error("gap: {0}")]
    Gap(String),
    /// A field of the message failed validation.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// The message or the resulting catalog exceeds this site's limits.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The peer sent an entry whose consumer scope does not include this site.
    #[error("scope violation: {0}")]
    ScopeViolation(String),
    /// The message does not fit the protocol state.
    #[error("protocol: {0}")]
    Protocol(String),
    /// An item's origin proof is missing, does not verify, or was made by another site than
    /// the item's origin.
    #[error("origin proof: {0}")]
    Proof(String),
}

/// Errors of local (admin) operations on the catalog.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// An argument failed validation.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// The service is not exported by this site.
    #[error("service {namespace}/{name} is not exported by this site")]
    NotExported {
        /// Namespace of the service.
        namespace: String,
        /// Name of the service.
        name: String,
    },
    /// The export is declared in the site config and can only be changed there.
    #[error("service {namespace}/{name} is exported by the site config ({path}); change it there")]
    DeclaredInConfig {
        /// Namespace of the service.
        namespace: String,
        /// Name of the service.
        name: String,
        /// The config file.
        path: String,
    },
    /// This site's catalog is full.
    #[error("too many exports: this site already exports {0} services (limit)")]
    TooMany(usize),
}

/// Binary metadata keys of an `INVALID_ARGUMENT` answer: the request field (`ports[0].port`),
/// its value and the reason, so a client can say it in its own terms (the CLI names its flag).
const FIELD_KEYS: [&str; 3] = [
    "multimesh-field-bin",
    "multimesh-value-bin",
    "multimesh-reason-bin",
];

impl InvalidField {
    /// The field error an admin answer carries, if any.
    pub fn of_status(s: &tonic::Status) -> Option<Self> {
        let get = |k: &str| {
            let v = s.metadata().get_bin(k)?.to_bytes().ok()?;
            String::from_utf8(v.to_vec()).ok()
        };
        Some(Self {
            field: get(FIELD_KEYS[0])?,
            value: get(FIELD_KEYS[1])?,
            reason: get(FIELD_KEYS[2])?,
        })
    }
}

impl From<AdminError> for tonic::Status {
    fn from(e: AdminError) -> Self {
        match &e {
            AdminError::Invalid(f) => {
                let mut md = tonic::metadata::MetadataMap::new();
                for (k, v) in FIELD_KEYS.iter().zip([&f.field, &f.value, &f.reason]) {
                    md.insert_bin(*k, tonic::metadata::MetadataValue::from_bytes(v.as_bytes()));
                }
                tonic::Status::with_metadata(tonic::Code::InvalidArgument, e.to_string(), md)
            }
            AdminError::NotExported { .. } => tonic::Status::not_found(e.to_string()),
            AdminError::DeclaredInConfig { .. } => {
                tonic::Status::failed_precondition(e.to_string())
            }
            AdminError::TooMany(_) => tonic::Status::resource_exhausted(e.to_string()),
        }
    }
}
