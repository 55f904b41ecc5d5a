//! The one accept loop, used by every listener of both planes, and the mutual-TLS front door
//! that a site's peer listener (federationd) and its edge agent's ingress put before each
//! connection.
//!
//! A listener's loop is `while let Some((tcp, addr)) = accept::next(&l, &stop, "what").await`.
//! Where a connection goes from there is the caller's: a data-plane thread, a handshake.
//!
//! The front door ([`SiteAcceptor`]) lets a caller in in two steps, [`SiteAcceptor::begin`]
//! then [`SiteAcceptor::admit`], and bounds each: a caller that never finishes its handshake
//! holds a handshake permit (for at most [`FIRST_BYTE_TIMEOUT`] if it sends nothing,
//! [`HANDSHAKE_TIMEOUT`] in all), never a connection slot; a connection beyond
//! [`MAX_HANDSHAKES`] is closed at once, so a flood neither holds files nor queues ahead of real
//! peers (who retry with back-off). A caller that proved its site ID is then served only within
//! the listener's [`Bounds`]: connections in all, and per caller (SPIFFE ID), each counted until
//! its [`Admitted::held`] drops.

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
use crate::locks::{Slot, Slots};
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
    bounds: Bounds,
    connections: Arc<Semaphore>,
    per_caller: Arc<Slots<SiteId>>,
}

/// How many connections a listener serves at once.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// In all.
    pub connections: usize,
    /// Per caller (one SPIFFE ID: a site's federation or edge half).
    pub per_caller: usize,
}

/// A caller let in: its TLS stream, its proven site ID, and its places among the served
/// connections.
pub struct Admitted {
    /// The connection.
    pub tls: TlsStream<TcpStream>,
    /// Who called.
    pub id: SiteId,
    /// The caller's places (in all and as itself); they are free again when this drops, so it
    /// lives as long as the connection is served.
    pub held: Held,
}

/// Places held by one served connection.
pub struct Held(
    #[allow(dead_code)] OwnedSemaphorePermit,
    #[allow(dead_code)] Slot<SiteId>,
);

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
    /// A front door serving `config` (which must require and verify client certificates)
    /// within `bounds`.
    pub fn new(config: Arc<rustls::ServerConfig>, bounds: Bounds) -> Self {
        SiteAcceptor {
            tls: TlsAcceptor::from(config),
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
            bounds,
            connections: Arc::new(Semaphore::new(bounds.connections)),
            per_caller: Slots::new(bounds.per_caller),
        }
    }

    /// Completes the handshake ([`Self::handshake`]) and takes the caller's places; refused
    /// (`full`, `site-full`) when the listener or the caller is at its bound.
    pub async fn admit(&self, permit: Handshake, tcp: TcpStream) -> Result<Admitted, Refused> {
        let (tls, id) = self.handshake(permit, tcp).await?;
        let Ok(all) = self.connections.clone().try_acquire_owned() else {
            return Err(Refused {
                kind: "full",
                reason: format!(
                    "{} refused: the listener serves its maximum of {} connections",
                    id.uri(),
                    self.bounds.connections
                ),
            });
        };
        let Some(own) = self.per_caller.take(&id) else {
            return Err(Refused {
                kind: "site-full",
                reason: format!(
                    "{} refused: it already has its maximum of {} connections here",
                    id.uri(),
                    self.bounds.per_caller
                ),
            });
        };
        Ok(Admitted {
            tls,
            id,
            held: Held(all, own),
        })
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
        let door = SiteAcceptor::new(
            Arc::new(cfg),
            Bounds {
                connections: 1,
                per_caller: 1,
            },
        );
        let held: Vec<Handshake> = (0..MAX_HANDSHAKES).map(|_| door.begin().unwrap()).collect();
        assert!(door.begin().is_none());
        drop(held);
        assert!(door.begin().is_some());
    }

    /// Served connections are bounded in all and per caller, through real mutual-TLS
    /// handshakes; a closed connection gives its places back.
    #[tokio::test]
    async fn admitted_connections_are_bounded_in_all_and_per_caller() {
        use crate::identity::Role;
        use crate::pki::{Validity, init_ca, issue_to};
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca("td.example", 1).unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &ca.cert_pem).unwrap();
        let tls_of = |site: &str| {
            let id = SiteId::new("td.example", site, Role::Edge).unwrap();
            let (cert, key) = issue_to(dir.path(), &ca, &id, Validity::days(1)).unwrap();
            let files = crate::config::TlsFiles {
                ca: ca_path.clone(),
                cert,
                key,
            };
            crate::tls::load_site(&files, "td.example", site, Role::Edge).unwrap()
        };
        let server = tls_of("srv");
        let cfg = crate::tls::any_site_server_config(&server, "td.example", vec![]).unwrap();
        let door = SiteAcceptor::new(
            cfg,
            Bounds {
                connections: 2,
                per_caller: 1,
            },
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let srv_id = SiteId::new("td.example", "srv", Role::Edge).unwrap();
        let dial = |site: &str| {
            let cfg =
                crate::tls::client_config_alpn(&tls_of(site), srv_id.clone(), vec![]).unwrap();
            async move {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("srv").unwrap();
                tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
                    .unwrap()
            }
        };
        async fn admit(door: &SiteAcceptor, listener: &TcpListener) -> Result<Admitted, Refused> {
            let (tcp, _) = listener.accept().await.unwrap();
            door.admit(door.begin().unwrap(), tcp).await
        }
        let (_c1, a1) = tokio::join!(dial("a"), admit(&door, &listener));
        let a1 = a1.map_err(|r| r.reason).unwrap();
        assert_eq!(a1.id.site, "a");
        let (_c2, a2) = tokio::join!(dial("a"), admit(&door, &listener));
        assert_eq!(a2.err().map(|r| r.kind), Some("site-full"));
        let (_c3, b) = tokio::join!(dial("b"), admit(&door, &listener));
        let b = b.map_err(|r| r.reason).unwrap();
        let (_c4, c) = tokio::join!(dial("c"), admit(&door, &listener));
        assert_eq!(c.err().map(|r| r.kind), Some("full"));
        drop(a1);
        let (_c5, again) = tokio::join!(dial("a"), admit(&door, &listener));
        assert!(again.is_ok(), "a's place was not given back");
        drop(b);
    }
}
