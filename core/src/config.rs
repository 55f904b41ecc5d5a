//! Config files: read whole with a size bound, parsed as YAML (`.yaml`, `.yml`) or TOML (any
//! other name) into a typed value; every error names the file, and the field where the parser
//! or a validation says which. federationd and the edge agent load theirs this way.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::InvalidField;

/// Errors loading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML/YAML for the config schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (with the key path and position).
        message: String,
    },
    /// A field failed validation.
    #[error("{path}: {source}")]
    Invalid {
        /// The file.
        path: String,
        /// The bad field.
        source: InvalidField,
    },
}

/// Certificate files of a site.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The federation CA certificate (PEM).
    pub ca: PathBuf,
    /// This site's certificate chain (PEM).
    pub cert: PathBuf,
    /// This site's private key (PEM).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Makes relative paths relative to `base` (the config file's folder).
    pub fn resolve_against(&mut self, base: &Path) {
        for f in [&mut self.ca, &mut self.cert, &mut self.key] {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
    }
}

/// Reads `path` (at most [`crate::files::MAX_CONFIG_BYTES`]) and parses it by its extension.
pub fn parse_file<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    parse_text(path, &read_file(path)?)
}

/// Reads a config file whole (at most [`crate::files::MAX_CONFIG_BYTES`]).
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    crate::files::read_text(path, crate::files::MAX_CONFIG_BYTES).map_err(|source| {
        ConfigError::Io {
            path: path.display().to_string(),
            source,
        }
    })
}

/// Parses `text`, read from `path`, by the file's extension.
pub fn parse_text<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    let p = path.display().to_string();
    let parse = |message: String| ConfigError::Parse {
        path: p.clone(),
        message,
    };
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => crate::yaml::from_str(text).map_err(parse),
        _ => toml::from_str(text).map_err(|e| parse(e.to_string())),
    }
}
