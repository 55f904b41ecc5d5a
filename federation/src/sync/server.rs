//! The peer listener: a TLS accept loop that logs every refused connection with its reason,
//! then the `CatalogSync` gRPC service on the authenticated connections.

use multimesh_core::locks::{Slot, Slots};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use multimesh_proto::catalog::v1::{self as wire, catalog_sync_server};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::{Instrument, info, warn};

use super::peers::Direction;
use super::{Node, session};
use crate::identity::{Role, site_id_of};
use crate::tls::describe_handshake_error;

/// The authenticated peer of a connection, handed to gRPC handlers in request extensions.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The peer's site name, from its certificate's SPIFFE ID.
    pub site: String,
    /// Which half of that site (from the same ID).
    pub role: Role,
    /// The peer's socket address.
    pub addr: std::net::SocketAddr,
}

/// A TLS connection from an authorised peer, counted against the listener's bounds while it
/// lives.
pub struct PeerStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
    _slot: tokio::sync::OwnedSemaphorePermit,
    _site_slot: Slot<(String, Role)>,
}

/// TLS handshakes in progress at once on the peer listener; a connection beyond it is closed at
/// once (the peer retries with backoff), so a flood neither holds files nor fills the backlog
/// ahead of real peers.
pub const MAX_HANDSHAKES: usize = 64;
/// How long a client may take to send its first byte (a ClientHello starts at once).
const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// Authenticated connections served at once on the peer listener.
pub const MAX_CONNECTIONS: usize = 256;
/// Authenticated connections served at once for one site (a peer holds one session; a new one
/// may overlap the old while it is replaced; the site's own edge agent watches its routes).
pub const MAX_CONNECTIONS_PER_SITE: usize = 8;
/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Connected for PeerStream {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections, completes the mutual-TLS handshake (the verifier authorises the
/// peer by SPIFFE ID) and yields authorised connections. Refusals are logged with the reason.
/// At most [`MAX_HANDSHAKES`] handshakes run at once, each for at most 10 s, and at most
/// [`MAX_CONNECTIONS`] connections ([`MAX_CONNECTIONS_PER_SITE`] per site) are served.
pub fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> ReceiverStream<Result<PeerStream, std::io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_site = Slots::new(MAX_CONNECTIONS_PER_SITE);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                tracing::debug!(remote = %addr, "peer listener: too many handshakes in progress; connection closed");
                continue;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let slots = slots.clone();
            let per_site = per_site.clone();
            tokio::spawn(async move {
                let mut first = [0u8; 1];
                if !matches!(
                    tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.peek(&mut first)).await,
                    Ok(Ok(1))
                ) {
                    warn!(remote = %addr, reason = "sent nothing within 2 s", "refused peer connection");
                    return;
                }
                let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(handshake);
                let tls = match tls {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        warn!(remote = %addr, reason = %describe_handshake_error(&e), "refused peer connection");
                        return;
                    }
                    Err(_) => {
                        warn!(remote = %addr, reason = "TLS handshake timed out", "refused peer connection");
                        return;
                    }
                };
                let site = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(site_id_of);
                let (site, role) = match site {
                    Some(Ok(id)) => (id.site, id.role),
                    _ => {
                        warn!(remote = %addr, reason = "no site SPIFFE ID after handshake", "refused peer connection");
                        return;
                    }
                };
                let Ok(slot) = slots.try_acquire_owned() else {
                    warn!(remote = %addr, site = %site, reason = "the peer listener serves its maximum of connections", "refused peer connection");
                    return;
                };
                let Some(site_slot) = per_site.take(&(site.clone(), role)) else {
                    warn!(remote = %addr, site = %site, role = %role, reason = "this site already has its maximum of connections", "refused peer connection");
                    return;
                };
                let _ = tx
                    .send(Ok(PeerStream {
                        inner: tls,
                        info: PeerInfo { site, role, addr },
                        _slot: slot,
                        _site_slot: site_slot,
                    }))
                    .await;
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The `CatalogSync` service.
pub struct SyncService {
    node: Arc<Node>,
}

impl SyncService {
    /// Serves sync sessions for `node`.
    pub fn new(node: Arc<Node>) -> catalog_sync_server::CatalogSyncServer<Self> {
        let max = node.settings.max_message_bytes;
        catalog_sync_server::CatalogSyncServer::new(Self { node })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }
}

type MessageStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<wire::SyncMessage, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl catalog_sync_server::CatalogSync for SyncService {
    type SyncStream = MessageStream;

    async fn sync(
        &self,
        request: tonic::Request<tonic::Streaming<wire::SyncMessage>>,
    ) -> Result<tonic::Response<Self::SyncStream>, tonic::Status> {
        let Some(info) = request.extensions().get::<PeerInfo>().cloned() else {
            return Err(tonic::Status::unauthenticated(
                "no authenticated peer on this connection",
            ));
        };
        if info.role != Role::Federation || info.site == self.node.site {
            warn!(caller = %info.site, role = %info.role, "catalog sync refused: not a peer's federationd");
            return Err(tonic::Status::permission_denied(format!(
                "the {} of site {} may not sync the catalog: only a peer's federationd may",
                info.role, info.site
            )));
        }
        let peer = info.site.clone();
        let (id, cancel) = self
            .node
            .peers
            .attach(&peer, Direction::Inbound)
            .map_err(tonic::Status::already_exists)?;
        let (tx, rx) = mpsc::channel(64);
        let node = self.node.clone();
        let inbound = request.into_inner();
        let span = tracing::info_span!("session", site = %node.site, peer = %peer, direction = "inbound", remote = %info.addr);
        tokio::spawn(
            async move {
                let r = session::run(node.clone(), peer.clone(), inbound, tx, cancel).await;
                let err = match &r {
                    Ok(()) | Err(session::SessionError::Cancelled) => None,
                    Err(e) => Some(e.to_string()),
                };
                info!(result = ?r, "session ended");
                node.peers.detach(&peer, id, err);
            }
            .instrument(span),
        );
        Ok(tonic::Response::new(Box::pin(
            ReceiverStream::new(rx).map(Ok),
        )))
    }
}
