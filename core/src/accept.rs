//! The one accept loop, used by every listener of both planes, and the mutual-TLS front door
//! that a site's peer listener (federationd) and its edge agent's ingress put before each
//! connection.
//!
//! A listener's loop is `while let Some((tcp, addr)) = accept::next(&l, &stop, "what").await`.
//! Where a connection goes from there is the caller's: a data-plane thread, a handshake.
//!
//! The front door ([`SiteAcceptor`]) bounds handshakes apart from served connections: a caller
//! that never finishes its handshake holds a handshake permit (for at most
//! [`FIRST_BYTE_TIMEOUT`] if it sends nothing, [`HANDSHAKE_TIMEOUT`] in all), never a connection
//! slot. A connection beyond [`MAX_HANDSHAKES`] is closed at once: a flood neither holds files
//! nor queues ahead of real peers (who retry with back-off).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::identity::{SiteId, site_id_of};
use crate::tls::{describe_handshake_error, handshake_failure_kind};

/// TLS handshakes in progress at once on one listener.
pub const MAX_HANDSHAKES: usize = 64;
/// How long a caller may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller may take to send its first byte (a ClientHello starts at once).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause after a failed accept. The usual cause is a full file table (`EMFILE`), which
/// does not clear by itself within microseconds: retrying at once would spin a core.
const AFTER_ACCEPT_ERROR: Duration = Duration::from_millis(50);

/// The next connection on `listener` (with `TCP_NODELAY` set), or `None` once `stop` is
/// cancelled. A failed accept is logged with `what` and retried after a short pause.
pub async fn next(
    listener: &TcpListener,
    stop: &CancellationToken,
    what: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = stop.cancelled() => return None,
        };
        match accepted {
            Ok((tcp, addr)) => {
                let _ = tcp.set_nodelay(true);
                return Some((tcp, addr));
            }
            Err(e) => {
                warn!(listener = %what, error = %e, "accept failed; retrying shortly");
                tokio::select! {
                    () = tokio::time::sleep(AFTER_ACCEPT_ERROR) => {}
                    () = stop.cancelled() => return None,
                }
            }
        }
    }
}

/// The mutual-TLS front door of a listener whose callers are sites: bounded handshakes, each
/// ending with the caller's SPIFFE site ID read from its certificate (the rustls config has
/// already verified the chain and authorised the ID).
#[derive(Clone)]
pub struct SiteAcceptor {
    tls: TlsAcceptor,
    handshakes: Arc<Semaphore>,
}

/// Leave to run one handshake; the handshake's slot is free again when it is dropped.
pub struct Handshake(#[allow(dead_code)] OwnedSemaphorePermit);

/// Why a connection was refused before it was served.
#[derive(Debug)]
pub struct Refused {
    /// A short stable label, for metrics: `timeout`, `no-site-id`, or a handshake failure's
    /// kind (`tls::handshake_failure_kind`, e.g. `not-tls`, `foreign-ca`).
    pub kind: &'static str,
    /// A sentence for the log.
    pub reason: String,
}

impl SiteAcceptor {
    /// A front door serving `config` (which must require and verify client certificates).
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        SiteAcceptor {
            tls: TlsAcceptor::from(config),
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
        }
    }

    /// Leave to handshake, or `None` when [`MAX_HANDSHAKES`] are in progress (the caller then
    /// closes the connection at once).
    pub fn begin(&self) -> Option<Handshake> {
        self.handshakes
            .clone()
            .try_acquire_owned()
            .ok()
            .map(Handshake)
    }

    /// Waits for the caller's first byte, completes the handshake, and reads the caller's site
    /// ID. The handshake's slot is given back when this returns.
    pub async fn handshake(
        &self,
        permit: Handshake,
        tcp: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, SiteId), Refused> {
        let mut first = [0u8; 1];
        if !matches!(
            tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut first)).await,
            Ok(Ok(1))
        ) {
            return Err(Refused {
                kind: "timeout",
                reason: format!("sent nothing within {} s", FIRST_BYTE_TIMEOUT.as_secs()),
            });
        }
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.tls.accept(tcp)).await;
        drop(permit);
        let tls = match tls {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return Err(Refused {
                    kind: handshake_failure_kind(&e),
                    reason: describe_handshake_error(&e),
                });
            }
            Err(_) => {
                return Err(Refused {
                    kind: "timeout",
                    reason: format!(
                        "TLS handshake not done within {} s",
                        HANDSHAKE_TIMEOUT.as_secs()
                    ),
                });
            }
        };
        let id = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(site_id_of);
        match id {
            Some(Ok(id)) => Ok((tls, id)),
            _ => Err(Refused {
                kind: "no-site-id",
                reason: "peer certificate without a site SPIFFE ID".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn next_yields_connections_until_stopped() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = next(&l, &stop, "test").await.unwrap();
        assert!(tcp.nodelay().unwrap());
        stop.cancel();
        assert!(next(&l, &stop, "test").await.is_none());
    }

    #[test]
    fn handshakes_beyond_the_bound_are_refused_and_a_finished_one_frees_its_slot() {
        let cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new()));
        let door = SiteAcceptor::new(Arc::new(cfg));
        let held: Vec<Handshake> = (0..MAX_HANDSHAKES).map(|_| door.begin().unwrap()).collect();
        assert!(door.begin().is_none());
        drop(held);
        assert!(door.begin().is_some());
    }
}
