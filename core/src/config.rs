//! Config files: read whole with a size bound, parsed as YAML (`.yaml`, `.yml`) or TOML (any
//! other name) into a typed value; every error names the file, and the field where the parser
//! or a validation says which. federationd and the edge agent load theirs this way, and read
//! them again while they run ([`watch_text`], [`judge_change`]): a few fields take effect at
//! once, the others at the next start, and a file that changes the process's identity or does
//! not load changes nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

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

/// Fields no running process takes from a changed file: who it is.
pub const IDENTITY_FIELDS: [&str; 2] = ["site", "trust_domain"];

/// What a changed config file means for the process that started with `started` (both are the
/// files' documents as written, [`parse_text`] into a [`Value`]): the top-level fields other
/// than the `live` ones whose value differs, which take effect at the next start (sorted); or
/// why the whole file is refused: it changes one of the [`IDENTITY_FIELDS`].
pub fn judge_change(started: &Value, next: &Value, live: &[&str]) -> Result<Vec<String>, String> {
    let empty = serde_json::Map::new();
    let (a, b) = (
        started.as_object().unwrap_or(&empty),
        next.as_object().unwrap_or(&empty),
    );
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let later: Vec<String> = keys
        .into_iter()
        .filter(|k| !live.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    match later.iter().find(|f| IDENTITY_FIELDS.contains(&f.as_str())) {
        Some(f) => Err(format!(
            "{f} changed: a running process cannot change its identity; nothing changes \
             (restart it with the new file)"
        )),
        None => Ok(later),
    }
}

/// Reads `path` every `every` until `shutdown`, and calls `changed` with its text whenever it
/// differs from the text read before (the first read is the one the process started with). A
/// file that cannot be read (being replaced) is tried again at the next tick.
pub async fn watch_text(
    path: PathBuf,
    every: Duration,
    shutdown: CancellationToken,
    mut changed: impl FnMut(&str),
) {
    let mut last = read_file(&path).ok();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let Ok(text) = read_file(&path) else {
            continue;
        };
        if last.as_deref() != Some(text.as_str()) {
            changed(&text);
            last = Some(text);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changed_fields_other_than_live_ones_are_named_and_identity_is_refused() {
        let from = json!({"site": "a", "peers": [], "sync": {"heartbeat_ms": 100}});
        let to = json!({"site": "a", "peers": [{"site": "b"}], "sync": {"heartbeat_ms": 200}, "ready_file": "r"});
        assert_eq!(
            judge_change(&from, &to, &["peers"]).unwrap(),
            ["ready_file", "sync"]
        );
        assert_eq!(
            judge_change(&from, &to, &[]).unwrap(),
            ["peers", "ready_file", "sync"]
        );
        assert!(judge_change(&from, &from, &["peers"]).unwrap().is_empty());
        for (field, value) in [("site", json!("x")), ("trust_domain", json!("t"))] {
            let mut renamed = from.clone();
            renamed[field] = value;
            let e = judge_change(&from, &renamed, &["peers"]).unwrap_err();
            assert!(e.starts_with(&format!("{field} changed")), "{e}");
        }
    }

    #[tokio::test]
    async fn watch_text_reports_each_new_text_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.toml");
        // Replaced whole, as editors and the kubelet do: never seen half-written.
        let put = |text: &str| {
            let next = dir.path().join("next");
            std::fs::write(&next, text).unwrap();
            std::fs::rename(&next, &path).unwrap();
        };
        put("one");
        let stop = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(watch_text(
            path.clone(),
            Duration::from_millis(10),
            stop.clone(),
            move |t| tx.send(t.to_string()).unwrap(),
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        put("two");
        assert_eq!(rx.recv().await.unwrap(), "two");
        std::fs::remove_file(&path).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        put("two");
        put("three");
        assert_eq!(rx.recv().await.unwrap(), "three", "no second \"two\"");
        stop.cancel();
        task.await.unwrap();
    }
}
