//! Outbound peer links: resolve the peer's address (DNS names through hickory-resolver, again on
//! every reconnect), connect with mutual TLS expecting the peer's SPIFFE ID, run a session, and
//! reconnect with exponential backoff and full jitter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use multimesh_core::backoff::Backoff;
pub use multimesh_core::dial::{channel_over, connect_site, error_chain, resolve, system_resolver};
use multimesh_proto::catalog::v1::catalog_sync_client::CatalogSyncClient;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use super::peers::Direction;
use super::{Node, session};
use crate::identity::{Role, SiteId};
use crate::tls::client_config;

async fn connect_tls(
    node: &Node,
    resolver: &TokioResolver,
    peer: &str,
    address: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let expected =
        SiteId::new(&node.trust_domain, peer, Role::Federation).map_err(|e| e.to_string())?;
    let cfg = client_config(&node.tls, expected).map_err(|e| e.to_string())?;
    connect_site(
        resolver,
        &TlsConnector::from(cfg),
        peer,
        address,
        Duration::from_secs(5),
    )
    .await
}

/// Opens one session with `peer` over a fresh connection and runs it to its end.
async fn dial_once(
    node: &Arc<Node>,
    resolver: &TokioResolver,
    peer: &str,
    address: &str,
) -> Result<(), String> {
    let tls = connect_tls(node, resolver, peer, address).await?;
    // The connector hands over the one connection made above; tonic would only call it again
    // to reconnect, which this dialer does itself.
    let channel = channel_over(tls).await?;
    let max = node.settings.max_message_bytes;
    let mut client = CatalogSyncClient::new(channel)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let (id, cancel) = node.peers.attach(peer, Direction::Outbound)?;
    let (tx, rx) = mpsc::channel(64);
    let inbound = match client.sync(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(s) => {
            node.peers.detach(peer, id, None);
            return Err(format!("{}: {}", s.code(), s.message()));
        }
    };
    let r = session::run(node.clone(), peer.to_string(), inbound, tx, cancel).await;
    let err = match &r {
        Ok(()) | Err(session::SessionError::Cancelled) => None,
        Err(e) => Some(e.to_string()),
    };
    node.peers.detach(peer, id, err.clone());
    match err {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Keeps an outbound link to `peer` at `address` until `shutdown`.
pub async fn run(node: Arc<Node>, peer: String, address: String, shutdown: CancellationToken) {
    let resolver = system_resolver();
    let s = node.settings;
    let mut backoff = Backoff::new(
        Duration::from_millis(s.backoff_min_ms),
        Duration::from_millis(s.backoff_max_ms),
    )
    .with_jitter();
    let span = tracing::info_span!("link", site = %node.site, peer = %peer, address = %address, direction = "outbound");
    async move {
        loop {
            node.peers.set_connecting(&peer, true, None);
            let started = Instant::now();
            let r = tokio::select! {
                r = dial_once(&node, &resolver, &peer, &address) => r,
                _ = shutdown.cancelled() => return,
            };
            if started.elapsed() > Duration::from_secs(10) {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            match r {
                Ok(()) => info!(retry_in_ms = delay.as_millis() as u64, "link closed"),
                Err(e) => {
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "link failed");
                    node.peers.set_connecting(&peer, false, Some(e));
                }
            }
            node.peers.set_connecting(&peer, false, None);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }
    .instrument(span)
    .await
}
