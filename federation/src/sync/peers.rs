//! The table of peer links: connection state, health inputs and message counters.

use multimesh_core::locks::lock;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::catalog::Head;
use crate::model::Site;

/// Who opened a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// This site dialed the peer.
    Outbound,
    /// The peer dialed this site.
    Inbound,
}

impl Direction {
    /// `outbound` or `inbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Message counters of one link since the daemon started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Snapshots sent (counted once per snapshot, not per chunk).
    pub snapshots_sent: u64,
    /// Snapshots received and applied.
    pub snapshots_received: u64,
    /// Non-empty deltas sent.
    pub deltas_sent: u64,
    /// Deltas received and applied.
    pub deltas_received: u64,
    /// Records sent.
    pub records_sent: u64,
    /// Records received (applied or not).
    pub records_received: u64,
    /// ACKs received.
    pub acks_received: u64,
    /// NACKs received.
    pub nacks_received: u64,
    /// NACKs sent.
    pub nacks_sent: u64,
    /// Sessions established.
    pub sessions: u64,
    /// Time the peer's messages waited for its rate (`sync.peer_rate`), in milliseconds.
    pub throttled_ms: u64,
}

struct Session {
    id: u64,
    direction: Direction,
    cancel: CancellationToken,
}

/// One peer's link.
#[derive(Default)]
struct Link {
    address: Option<String>,
    session: Option<Session>,
    connecting: bool,
    last_heartbeat: Option<Instant>,
    last_ack: Option<Instant>,
    heads: BTreeMap<Site, Head>,
    counters: Counters,
    last_error: String,
}

/// A read-only view of one link, for the admin API.
#[derive(Clone, Debug)]
pub struct LinkView {
    /// Peer site.
    pub site: Site,
    /// Configured address.
    pub address: Option<String>,
    /// `connected`, `connecting`, `disconnected` or `idle`.
    pub state: &'static str,
    /// Direction of the connected session.
    pub direction: Option<Direction>,
    /// Time since the last heartbeat.
    pub since_heartbeat: Option<Duration>,
    /// Time since the last ACK.
    pub since_ack: Option<Duration>,
    /// Connected with a recent heartbeat and a recent ACK.
    pub healthy: bool,
    /// The peer's version vector, from its last heartbeat.
    pub heads: BTreeMap<Site, Head>,
    /// Counters.
    pub counters: Counters,
    /// Last error seen on this link.
    pub last_error: String,
}

/// All peer links of a site.
pub struct PeerTable {
    site: Site,
    links: Mutex<BTreeMap<Site, Link>>,
    next_id: std::sync::atomic::AtomicU64,
    health_window: Duration,
}

impl PeerTable {
    /// A table for `site`'s configured peers; a peer is healthy while its heartbeats and ACKs
    /// are younger than `health_window`.
    pub fn new(site: &str, peers: &[(Site, Option<String>)], health_window: Duration) -> Self {
        let links = peers
            .iter()
            .map(|(s, a)| {
                (
                    s.clone(),
                    Link {
                        address: a.clone(),
                        ..Link::default()
                    },
                )
            })
            .collect();
        Self {
            site: site.to_string(),
            links: Mutex::new(links),
            next_id: 1.into(),
            health_window,
        }
    }

    fn with<R>(&self, peer: &str, f: impl FnOnce(&mut Link) -> R) -> Option<R> {
        let mut links = lock(&self.links);
        links.get_mut(peer).map(f)
    }

    /// Whether `peer` is configured.
    pub fn knows(&self, peer: &str) -> bool {
        self.with(peer, |_| ()).is_some()
    }

    /// Makes `peers` the configured peers while the daemon runs: a removed peer's session is
    /// cancelled and its link forgotten (its handshakes are refused from now on, as
    /// [`multimesh_core::tls::PeerSet`]); an added one starts idle; a kept one keeps its
    /// session and counters, except that a session this site dialed at an address no longer
    /// configured ends (its dialer is replaced).
    pub fn configure(&self, peers: &[(Site, Option<String>)]) {
        let mut links = lock(&self.links);
        links.retain(|site, link| {
            let keep = peers.iter().any(|(s, _)| s == site);
            if !keep && let Some(s) = &link.session {
                s.cancel.cancel();
            }
            keep
        });
        for (site, address) in peers {
            let link = links.entry(site.clone()).or_default();
            if link.address != *address {
                link.address = address.clone();
                if let Some(s) = link.session.take_if(|s| s.direction == Direction::Outbound) {
                    s.cancel.cancel();
                    link.last_heartbeat = None;
                    link.last_ack = None;
                }
            }
        }
    }

    /// Registers a new session with `peer`. When both sites dial each other, both keep the
    /// session opened by the site whose name sorts first; a new session in the same direction
    /// replaces the old one (a reconnect after a half-dead connection).
    pub fn attach(
        &self,
        peer: &str,
        direction: Direction,
    ) -> Result<(u64, CancellationToken), String> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let site = self.site.clone();
        self.with(peer, |l| {
            let initiator = |d: Direction| if d == Direction::Outbound { site.as_str() } else { peer };
            let preferred = site.as_str().min(peer);
            if let Some(cur) = &l.session {
                if cur.direction != direction && initiator(direction) != preferred {
                    return Err(format!(
                        "already linked with {peer} ({}); the session opened by {preferred} is kept",
                        cur.direction.as_str()
                    ));
                }
                cur.cancel.cancel();
            }
            let cancel = CancellationToken::new();
            l.session = Some(Session {
                id,
                direction,
                cancel: cancel.clone(),
            });
            l.connecting = false;
            l.counters.sessions += 1;
            l.last_error.clear();
            Ok((id, cancel))
        })
        .unwrap_or_else(|| Err(format!("{peer} is not a configured peer")))
    }

    /// Ends session `id` of `peer` (no-op if it was replaced meanwhile).
    pub fn detach(&self, peer: &str, id: u64, error: Option<String>) {
        self.with(peer, |l| {
            if l.session.as_ref().is_some_and(|s| s.id == id) {
                l.session = None;
                l.last_heartbeat = None;
                l.last_ack = None;
            }
            if let Some(e) = error {
                l.last_error = e;
            }
        });
    }

    /// Marks an outbound dial in progress (or not).
    pub fn set_connecting(&self, peer: &str, on: bool, error: Option<String>) {
        self.with(peer, |l| {
            l.connecting = on;
            if let Some(e) = error {
                l.last_error = e;
            }
        });
    }

    /// Records a heartbeat and the peer's version vector.
    pub fn heartbeat(&self, peer: &str, heads: BTreeMap<Site, Head>) {
        self.with(peer, |l| {
            l.last_heartbeat = Some(Instant::now());
            l.heads = heads;
        });
    }

    /// Records an ACK.
    pub fn ack(&self, peer: &str) {
        self.with(peer, |l| {
            l.last_ack = Some(Instant::now());
            l.counters.acks_received += 1;
        });
    }

    /// Updates the counters of `peer`.
    pub fn count(&self, peer: &str, f: impl FnOnce(&mut Counters)) {
        self.with(peer, |l| f(&mut l.counters));
    }

    /// A snapshot of every link.
    pub fn views(&self) -> Vec<LinkView> {
        let now = Instant::now();
        let links = lock(&self.links);
        links
            .iter()
            .map(|(site, l)| {
                let since_heartbeat = l.last_heartbeat.map(|t| now - t);
                let since_ack = l.last_ack.map(|t| now - t);
                let fresh = |d: Option<Duration>| d.is_some_and(|d| d <= self.health_window);
                LinkView {
                    site: site.clone(),
                    address: l.address.clone(),
                    state: match (&l.session, l.connecting, &l.address) {
                        (Some(_), _, _) => "connected",
                        (None, true, _) => "connecting",
                        (None, false, Some(_)) => "disconnected",
                        (None, false, None) => "idle",
                    },
                    direction: l.session.as_ref().map(|s| s.direction),
                    since_heartbeat,
                    since_ack,
                    healthy: l.session.is_some() && fresh(since_heartbeat) && fresh(since_ack),
                    heads: l.heads.clone(),
                    counters: l.counters,
                    last_error: l.last_error.clone(),
                }
            })
            .collect()
    }
}

impl multimesh_core::tls::PeerSet for PeerTable {
    fn contains(&self, site: &str) -> bool {
        self.knows(site)
    }
}

impl std::fmt::Debug for PeerTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(lock(&self.links).keys()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_keep_the_session_opened_by_the_smaller_name() {
        let a = PeerTable::new(
            "a",
            &[("b".into(), Some("x:1".into()))],
            Duration::from_secs(3),
        );
        let b = PeerTable::new(
            "b",
            &[("a".into(), Some("x:1".into()))],
            Duration::from_secs(3),
        );
        // a's outbound (initiated by a) and b's inbound from a are preferred.
        let (_, a_out) = a.attach("b", Direction::Outbound).unwrap();
        assert!(
            a.attach("b", Direction::Inbound).is_err(),
            "b-initiated loses on a"
        );
        assert!(!a_out.is_cancelled());
        let (_, b_out) = b.attach("a", Direction::Outbound).unwrap();
        b.attach("a", Direction::Inbound).unwrap();
        assert!(b_out.is_cancelled(), "b drops its own dial for a's");
        // Same direction replaces (reconnect).
        let (_, again) = a.attach("b", Direction::Outbound).unwrap();
        assert!(a_out.is_cancelled() && !again.is_cancelled());
        assert!(a.attach("z", Direction::Inbound).is_err());
    }

    #[test]
    fn configure_ends_a_removed_peers_session_and_keeps_the_others() {
        let a = PeerTable::new(
            "a",
            &[("b".into(), Some("x:1".into())), ("c".into(), None)],
            Duration::from_secs(3),
        );
        let (_, b) = a.attach("b", Direction::Inbound).unwrap();
        let (_, c) = a.attach("c", Direction::Inbound).unwrap();
        a.configure(&[("b".into(), Some("y:2".into())), ("d".into(), None)]);
        assert!(c.is_cancelled() && !b.is_cancelled());
        assert!(!a.knows("c") && a.knows("d"));
        assert!(a.attach("c", Direction::Inbound).is_err(), "c is gone");
        let view = |site: &str| a.views().into_iter().find(|v| v.site == site).unwrap();
        let b_view = view("b");
        assert_eq!(
            (
                b_view.address.as_deref(),
                b_view.state,
                b_view.counters.sessions
            ),
            (Some("y:2"), "connected", 1),
            "b dialed in: its session does not depend on the address a dials"
        );
        // A session a dialed at an address it no longer has ends with it.
        let (_, out) = a.attach("b", Direction::Outbound).unwrap();
        assert!(
            b.is_cancelled(),
            "a's own dial replaces b's (a sorts first)"
        );
        a.configure(&[("b".into(), Some("z:3".into())), ("d".into(), None)]);
        assert!(out.is_cancelled());
        assert_eq!(view("b").state, "disconnected");
    }
}
