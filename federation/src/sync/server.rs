//! The peer listener: a TLS accept loop that logs every refused connection with its reason,
//! then the `CatalogSync` gRPC service on the authenticated connections.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use multimesh_core::accept::{self, Admitted, Bounds, Held, SiteAcceptor};
use multimesh_proto::catalog::v1::{self as wire, catalog_sync_server};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tracing::{Instrument, info, warn};

use super::peers::Direction;
use super::{Node, session};
use crate::identity::Role;

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
    _held: Held,
}

/// Authenticated connections served at once on the peer listener.
pub const MAX_CONNECTIONS: usize = 256;
/// Authenticated connections served at once for one site (a peer holds one session; a new one
/// may overlap the old while it is replaced; the site's own edge agent watches its routes).
pub const MAX_CONNECTIONS_PER_SITE: usize = 8;

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

/// The peer listener's bounds: [`MAX_CONNECTIONS`] in all, [`MAX_CONNECTIONS_PER_SITE`] per
/// caller (a site's federation or edge identity).
pub const BOUNDS: Bounds = Bounds {
    connections: MAX_CONNECTIONS,
    per_caller: MAX_CONNECTIONS_PER_SITE,
};

/// Accepts TCP connections, completes the mutual-TLS handshake (the verifier authorises the
/// peer by SPIFFE ID) and yields authorised connections. Refusals are logged with the reason.
/// Handshakes are bounded by `multimesh_core::accept` (shared with the edge agent's ingress:
/// at most `MAX_HANDSHAKES` at once, each within `HANDSHAKE_TIMEOUT`), and at most
/// [`MAX_CONNECTIONS`] connections ([`MAX_CONNECTIONS_PER_SITE`] per site and role) are served.
/// Accepting ends at `stop`, or when the server stops reading the stream.
pub fn accept_loop(
    listener: TcpListener,
    acceptor: SiteAcceptor,
    stop: CancellationToken,
) -> ReceiverStream<Result<PeerStream, std::io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some((tcp, addr)) = accept::next(&listener, &stop, "peer").await {
            if tx.is_closed() {
                break;
            }
            let Some(handshake) = acceptor.begin() else {
                tracing::debug!(remote = %addr, "peer listener: too many handshakes in progress; connection closed");
                continue;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let Admitted { tls, id, held } = match acceptor.admit(handshake, tcp).await {
                    Ok(x) => x,
                    Err(refused) => {
                        warn!(remote = %addr, reason = %refused.reason, "refused peer connection");
                        return;
                    }
                };
                let _ = tx
                    .send(Ok(PeerStream {
                        inner: tls,
                        info: PeerInfo {
                            site: id.site,
                            role: id.role,
                            addr,
                        },
                        _held: held,
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
