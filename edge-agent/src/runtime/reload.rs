//! The agent's config file read again while it runs (`config_reload_ms`): `children` takes
//! effect at once, so an edge node joins or leaves without a restart of its parent; any other
//! changed field is named in the log as taking effect at the next start; a file that does not
//! load, or that changes the site's identity, changes nothing
//! (`multimesh_core::config::judge_change`). A node no longer listed has its link closed and
//! its next link refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use multimesh_core::config::{judge_change, watch_text};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agent::Agent;
use crate::config::AgentConfig;

/// Reads `path` every `every` until `shutdown`; `started` is the file's document as the agent
/// started with it.
pub async fn watch(
    agent: Arc<Agent>,
    path: PathBuf,
    started: Value,
    every: Duration,
    shutdown: CancellationToken,
) {
    watch_text(path.clone(), every, shutdown, |text| {
        reread(&agent, &path, &started, text);
    })
    .await;
}

fn reread(agent: &Agent, path: &Path, started: &Value, text: &str) {
    let judged = AgentConfig::parse(path, text)
        .map_err(|e| e.to_string())
        .and_then(|(next, document)| Ok((next, judge_change(started, &document, &["children"])?)));
    let (next, later) = match judged {
        Ok(v) => v,
        Err(error) => {
            warn!(config = %path.display(), error = %error, "the config file changed but is refused: nothing changes");
            return;
        }
    };
    let removed = agent
        .pool
        .set_children(next.children.iter().cloned().collect());
    info!(
        config = %path.display(),
        children = ?next.children,
        removed = ?removed,
        "edge nodes (children) read again: taken without a restart"
    );
    if !later.is_empty() {
        warn!(config = %path.display(), fields = ?later, "the config file changes fields that take effect at the next start");
    }
}
