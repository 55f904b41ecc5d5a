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
//! at the next start.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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

/// The top-level fields of the config, other than `peers`, whose value differs between two
/// documents of the file (as written: a field left to its default is absent). Sorted.
pub fn restart_fields(from: &Value, to: &Value) -> Vec<String> {
    let empty = serde_json::Map::new();
    let (a, b) = (
        from.as_object().unwrap_or(&empty),
        to.as_object().unwrap_or(&empty),
    );
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| *k != "peers" && a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Fields a running daemon cannot take: a file that changes them is refused whole.
const IDENTITY: [&str; 2] = ["site", "trust_domain"];

/// What a changed file means for the running daemon: the new peers, or why nothing changes.
fn judge(
    started: &Value,
    next: Result<(Config, Value), String>,
) -> Result<(Config, Vec<String>), String> {
    let (cfg, document) = next?;
    let later = restart_fields(started, &document);
    if let Some(f) = later.iter().find(|f| IDENTITY.contains(&f.as_str())) {
        return Err(format!(
            "{f} changed: the site's identity cannot change while it runs; nothing changes \
             (restart the daemon with the new file)"
        ));
    }
    Ok((cfg, later))
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
        watch(&node, &path, &cfg, &document, &mut dialers, &shutdown).await;
    } else {
        shutdown.cancelled().await;
    }
    for (_, stop) in std::mem::take(&mut dialers.running) {
        stop.cancel();
    }
    while dialers.tasks.join_next().await.is_some() {}
}

async fn watch(
    node: &Node,
    path: &std::path::Path,
    cfg: &Config,
    started: &Value,
    dialers: &mut Dialers,
    shutdown: &CancellationToken,
) {
    let mut peers = cfg.peers.clone();
    let mut last_text = multimesh_core::config::read_file(path).ok();
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.config_reload_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        dialers.reap();
        // Unreadable for a moment (being replaced): try again at the next tick.
        let Ok(text) = multimesh_core::config::read_file(path) else {
            continue;
        };
        if last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        last_text = Some(text.clone());
        let loaded = Config::parse(path, &text).map_err(|e| e.to_string());
        let (next, later) = match judge(started, loaded) {
            Ok(v) => v,
            Err(error) => {
                warn!(config = %path.display(), error = %error, "the config file changed but is refused: nothing changes");
                node.config.update(|r| {
                    r.last_change_unix_ms = now_unix_ms();
                    r.error = error;
                });
                continue;
            }
        };
        let changes = peer_changes(&peers, &next.peers);
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
        peers = next.peers;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

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

    #[test]
    fn fields_other_than_peers_are_named_for_the_next_start() {
        let from = json!({"site": "a", "peers": [], "sync": {"heartbeat_ms": 100}});
        let to = json!({"site": "a", "peers": [{"site": "b"}], "sync": {"heartbeat_ms": 200}, "ready_file": "r"});
        assert_eq!(restart_fields(&from, &to), ["ready_file", "sync"]);
        assert!(restart_fields(&from, &from).is_empty());
    }

    #[test]
    fn a_file_that_changes_the_sites_identity_or_does_not_load_is_refused() {
        let started = json!({"site": "a", "trust_domain": "t"});
        let cfg = |doc: Value| -> Result<(Config, Value), String> {
            let text = format!(
                "site = {}\ntrust_domain = {}\nlisten = \"127.0.0.1:0\"\nadmin_socket = \"s\"\nstate_file = \"f\"\n[tls]\nca = \"c\"\ncert = \"c\"\nkey = \"k\"\n",
                doc["site"], doc["trust_domain"]
            );
            Config::parse(std::path::Path::new("a.toml"), &text).map_err(|e| e.to_string())
        };
        let e = judge(&started, cfg(json!({"site": "x", "trust_domain": "t"}))).unwrap_err();
        assert!(e.starts_with("site changed"), "{e}");
        let e = judge(&started, cfg(json!({"site": "a", "trust_domain": "u"}))).unwrap_err();
        assert!(e.starts_with("trust_domain changed"), "{e}");
        let e = judge(&started, Err("a.toml: peers[0].site: bad".into())).unwrap_err();
        assert_eq!(e, "a.toml: peers[0].site: bad");
        let (_, later) = judge(&started, cfg(json!({"site": "a", "trust_domain": "t"}))).unwrap();
        assert_eq!(
            later,
            ["admin_socket", "listen", "state_file", "tls"],
            "fields absent from the started document count as changed"
        );
    }
}
