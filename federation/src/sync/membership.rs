//! Who this site's peers are while it runs: the dialers of the configured peers, and the config
//! file read again every `config_reload_ms`, so that a site joins or leaves the federation
//! without a restart of the sites already in it.
//!
//! The file stays the one source of the peer list (a restart reads the same list; a ConfigMap
//! update or an edit is the whole operation). A changed file is loaded and validated whole; a
//! file that does not load, or that changes the site's identity (`site`, `trust_domain`),
//! changes nothing and is reported. Otherwise its `peers` take effect at once, in an order that
//! never lets a removed peer's data back in:
//!
//! 1. the catalog takes the new list (journaled): what only a removed peer carried is withdrawn
//!    here and, as ordinary changes, at every other peer; messages a removed peer's session is
//!    still sending are refused from then on;
//! 2. the peer table takes it: a removed peer's session ends and its handshakes are refused (the
//!    listener asks the table at every handshake); an added peer may connect;
//! 3. dialers stop for removed or moved peers and start for added or moved ones.
//!
//! Any other changed field is named, in the log and in `federationctl status`, as taking effect
//! at the next start (`multimesh_core::config::judge_change`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use multimesh_core::config::{judge_change, watch_text};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Node, dialer};
use crate::config::{Config, PeerConfig};
use crate::model::Site;
use crate::report::now_unix_ms;

/// How one peer list differs from another.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PeerChanges {
    /// Peers only in the new list.
    pub added: Vec<Site>,
    /// Peers only in the old list.
    pub removed: Vec<Site>,
    /// Peers in both, with another address (or one only in one of them).
    pub moved: Vec<Site>,
}

impl PeerChanges {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.moved.is_empty()
    }
}

/// How the peer list `to` differs from `from`.
pub fn peer_changes(from: &[PeerConfig], to: &[PeerConfig]) -> PeerChanges {
    let before: BTreeMap<&str, &Option<String>> =
        from.iter().map(|p| (p.site.as_str(), &p.address)).collect();
    let after: BTreeMap<&str, &Option<String>> =
        to.iter().map(|p| (p.site.as_str(), &p.address)).collect();
    let mut c = PeerChanges::default();
    for (site, address) in &after {
        match before.get(site) {
            None => c.added.push(site.to_string()),
            Some(a) if a != address => c.moved.push(site.to_string()),
            Some(_) => {}
        }
    }
    c.removed = before
        .keys()
        .filter(|s| !after.contains_key(*s))
        .map(|s| s.to_string())
        .collect();
    c
}

/// The outbound links of a running daemon, by peer.
struct Dialers {
    node: Arc<Node>,
    shutdown: CancellationToken,
    running: BTreeMap<Site, CancellationToken>,
    tasks: JoinSet<()>,
}

impl Dialers {
    fn start(&mut self, peer: &PeerConfig) {
        if let Some(address) = &peer.address {
            let stop = self.shutdown.child_token();
            self.tasks.spawn(dialer::run(
                self.node.clone(),
                peer.site.clone(),
                address.clone(),
                stop.clone(),
            ));
            self.running.insert(peer.site.clone(), stop);
        }
    }

    fn stop(&mut self, peer: &str) {
        if let Some(stop) = self.running.remove(peer) {
            stop.cancel();
        }
    }

    /// Forgets dialers that ended (they end only when stopped).
    fn reap(&mut self) {
        while self.tasks.try_join_next().is_some() {}
    }
}

/// Makes `peers` this site's peers, in the order the module documents.
fn apply(node: &Node, dialers: &mut Dialers, peers: &[PeerConfig], changes: &PeerChanges) {
    for gone in node
        .store
        .set_peers(peers.iter().map(|p| p.site.clone()).collect())
    {
        info!(peer = %gone, "dropped what this peer sent: it is no longer configured");
    }
    let list: Vec<(Site, Option<String>)> = peers
        .iter()
        .map(|p| (p.site.clone(), p.address.clone()))
        .collect();
    node.peers.configure(&list);
    for site in changes.removed.iter().chain(&changes.moved) {
        dialers.stop(site);
    }
    for p in peers {
        if changes.added.contains(&p.site) || changes.moved.contains(&p.site) {
            dialers.start(p);
        }
    }
}

/// Runs the dialers of `cfg`'s peers until `shutdown`, reading `path` again every
/// `cfg.config_reload_ms` (never when 0) and taking a changed peer list as the module says.
/// `document` is the file as the daemon started with it.
pub async fn run(
    node: Arc<Node>,
    path: PathBuf,
    cfg: Config,
    document: Value,
    shutdown: CancellationToken,
) {
    let mut dialers = Dialers {
        node: node.clone(),
        shutdown: shutdown.clone(),
        running: BTreeMap::new(),
        tasks: JoinSet::new(),
    };
    for p in &cfg.peers {
        dialers.start(p);
    }
    if cfg.config_reload_ms > 0 {
        let mut peers = cfg.peers.clone();
        let every = Duration::from_millis(cfg.config_reload_ms);
        watch_text(path.clone(), every, shutdown.clone(), |text| {
            dialers.reap();
            reread(&node, &path, &document, text, &mut peers, &mut dialers);
        })
        .await;
    } else {
        shutdown.cancelled().await;
    }
    for (_, stop) in std::mem::take(&mut dialers.running) {
        stop.cancel();
    }
    while dialers.tasks.join_next().await.is_some() {}
}

/// Takes the changed file `text`: its peers (now `peers`) at once, unless it is refused.
fn reread(
    node: &Node,
    path: &Path,
    started: &Value,
    text: &str,
    peers: &mut Vec<PeerConfig>,
    dialers: &mut Dialers,
) {
    let judged = Config::parse(path, text)
        .map_err(|e| e.to_string())
        .and_then(|(next, document)| Ok((next, judge_change(started, &document, &["peers"])?)));
    let (next, later) = match judged {
        Ok(v) => v,
        Err(error) => {
            warn!(config = %path.display(), error = %error, "the config file changed but is refused: nothing changes");
            node.config.update(|r| {
                r.last_change_unix_ms = now_unix_ms();
                r.error = error;
            });
            return;
        }
    };
    let changes = peer_changes(peers, &next.peers);
    if !changes.is_empty() {
        apply(node, dialers, &next.peers, &changes);
        info!(
            config = %path.display(),
            added = ?changes.added,
            removed = ?changes.removed,
            moved = ?changes.moved,
            "peers changed: taken without a restart"
        );
    }
    if !later.is_empty() {
        warn!(config = %path.display(), fields = ?later, "the config file changes fields that take effect at the next start");
    }
    node.config.update(|r| {
        r.last_change_unix_ms = now_unix_ms();
        r.error.clear();
        r.restart_fields = later;
        let mut added: BTreeSet<Site> = r.peers_added.drain(..).collect();
        let mut removed: BTreeSet<Site> = r.peers_removed.drain(..).collect();
        for p in &changes.added {
            if !removed.remove(p) {
                added.insert(p.clone());
            }
        }
        for p in &changes.removed {
            if !added.remove(p) {
                removed.insert(p.clone());
            }
        }
        r.peers_added = added.into_iter().collect();
        r.peers_removed = removed.into_iter().collect();
    });
    *peers = next.peers;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn peer(site: &str, address: Option<&str>) -> PeerConfig {
        PeerConfig {
            site: site.into(),
            address: address.map(String::from),
        }
    }

    #[test]
    fn peer_changes_name_added_removed_and_moved_peers() {
        let from = [
            peer("b", Some("b:1")),
            peer("c", None),
            peer("d", Some("d:1")),
        ];
        let to = [
            peer("b", Some("b:1")),
            peer("c", Some("c:1")),
            peer("e", None),
        ];
        assert_eq!(
            peer_changes(&from, &to),
            PeerChanges {
                added: vec!["e".into()],
                removed: vec!["d".into()],
                moved: vec!["c".into()],
            }
        );
        assert!(peer_changes(&to, &to).is_empty());
    }
}
