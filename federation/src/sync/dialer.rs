//! Outbound peer links: resolve the peer's address (DNS names through hickory-resolver, again on
//! every reconnect), connect with mutual TLS expecting the peer's SPIFFE ID, run a session, and
//! reconnect with exponential backoff and full jitter.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hyper_util::rt::TokioIo;
use multimesh_proto::catalog::v1::catalog_sync_client::CatalogSyncClient;
use rand::Rng;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, warn};

use super::peers::Direction;
use super::{Node, session};
use crate::identity::{Role, SiteId};
use crate::tls::{client_config, describe_handshake_error};

/// Exponential backoff with full jitter.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `min`, doubles up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempt: 0,
        }
    }

    /// The next delay: uniform in [min/2, cap] where cap doubles each attempt.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self
            .min
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let lo = self.min / 2;
        let span = cap.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(rand::rng().random_range(0..=span))
    }

    /// Back to the first delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Resolves `host:port` to socket addresses (IP literals directly, names through DNS).
pub async fn resolve(resolver: &TokioResolver, address: &str) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("bad port in {address:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let ips = resolver
        .lookup_ip(host)
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    let out: Vec<_> = ips.iter().map(|ip| SocketAddr::new(ip, port)).collect();
    if out.is_empty() {
        return Err(format!("{host} resolved to no address"));
    }
    Ok(out)
}

/// A resolver from the system configuration, or defaults when there is none.
pub fn system_resolver() -> TokioResolver {
    match TokioResolver::builder_tokio() {
        Ok(b) => b.build(),
        Err(_) => TokioResolver::builder_with_config(
            hickory_resolver::config::ResolverConfig::default(),
            hickory_resolver::name_server::TokioConnectionProvider::default(),
        )
        .build(),
    }
}

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

/// Resolves `address` and opens a TLS connection to site `peer` there with `connector` (whose
/// verifier checks the peer's SPIFFE ID), trying each resolved address in turn. Errors say
/// which address failed and why, in plain words.
pub async fn connect_site(
    resolver: &TokioResolver,
    connector: &TlsConnector,
    peer: &str,
    address: &str,
    connect_timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let addrs = resolve(resolver, address).await?;
    let name = ServerName::try_from(format!("{peer}.site.multimesh.invalid"))
        .map_err(|e| e.to_string())?;
    let mut last = String::new();
    for a in addrs {
        match tokio::time::timeout(connect_timeout, TcpStream::connect(a)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return match tokio::time::timeout(
                    Duration::from_secs(10),
                    connector.connect(name.clone(), tcp),
                )
                .await
                {
                    Ok(Ok(s)) => Ok(s),
                    Ok(Err(e)) => Err(format!(
                        "TLS with {a} failed: {}",
                        describe_handshake_error(&e)
                    )),
                    Err(_) => Err(format!("TLS with {a} timed out")),
                };
            }
            Ok(Err(e)) => last = format!("connect {a}: {e}"),
            Err(_) => last = format!("connect {a}: timed out"),
        }
    }
    Err(last)
}

/// An error with its causes, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A gRPC channel over one already-open TLS connection. It is never redialled: when the
/// connection breaks, the channel fails and the caller dials again (re-resolving, re-verifying).
pub async fn channel_over(
    tls: tokio_rustls::client::TlsStream<TcpStream>,
) -> Result<tonic::transport::Channel, String> {
    let slot = Arc::new(std::sync::Mutex::new(Some(tls)));
    tonic::transport::Endpoint::from_static("http://peer.invalid")
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_| {
            let s = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
            async move {
                s.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("connection already used; redial"))
            }
        }))
        .await
        .map_err(|e| error_chain(&e))
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
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        for _ in 0..50 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(1000),
                "{d:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn resolves_literals_and_names() {
        let r = system_resolver();
        assert_eq!(
            resolve(&r, "127.0.0.1:80").await.unwrap(),
            vec!["127.0.0.1:80".parse().unwrap()]
        );
        assert_eq!(
            resolve(&r, "[::1]:80").await.unwrap(),
            vec!["[::1]:80".parse().unwrap()]
        );
        let local = resolve(&r, "localhost:80").await.unwrap();
        assert!(local.iter().all(|a| a.ip().is_loopback()), "{local:?}");
        assert!(resolve(&r, "nohost").await.is_err());
    }
}
