//! Peer sync: one long-lived, symmetric, bidirectional gRPC stream per peer over mutual TLS.
//!
//! * [`peers`]: the table of peer links (state, health, counters) and the rule that keeps one
//!   session per peer when both sides dial.
//! * [`session`]: the protocol of one stream: hello, snapshot-or-delta replication of the
//!   catalog, ACK/NACK per message, heartbeats carrying version vectors and liveness beats.
//! * [`server`]: the TLS accept loop (refusals logged with their reason) and the gRPC service.
//! * [`dialer`]: outbound links with DNS re-resolution, backoff and jitter.
//! * [`membership`]: who the peers are while the daemon runs (the config file read again).
//! * [`rate`]: how fast one peer may make this site work (its messages wait beyond it).

pub mod codec;
pub mod dialer;
pub mod membership;
pub mod peers;
pub mod rate;
pub mod server;
pub mod session;

use std::sync::Arc;
use std::time::Instant;

use crate::config::SyncSettings;
use crate::store::Store;
use crate::tls::SiteTls;

/// Everything a running daemon's sync tasks share.
pub struct Node {
    /// This site.
    pub site: String,
    /// The federation trust domain.
    pub trust_domain: String,
    /// The catalog.
    pub store: Arc<Store>,
    /// Traffic splits this site applies to its own calls.
    pub splits: Arc<crate::splits::SplitStore>,
    /// Peer links (also who may connect: the peer listener asks it at each handshake).
    pub peers: Arc<peers::PeerTable>,
    /// Protocol tuning.
    pub settings: SyncSettings,
    /// This site's TLS material.
    pub tls: Arc<SiteTls>,
    /// Seals this site's own records and head (origin proofs).
    pub sealer: Arc<codec::Sealer>,
    /// Checks the origin proofs of what peers send.
    pub verifier: Arc<crate::proof::Verifier>,
    /// When the daemon started.
    pub started: Instant,
    /// What the site's backend last did (`federationctl status`).
    pub backend: Arc<crate::report::Reported<crate::report::BackendReport>>,
    /// How the config file was last read again (`federationctl status`).
    pub config: crate::report::Reported<crate::report::ConfigReport>,
}
