//! Dialling a site: resolve its address, connect, and verify its SPIFFE ID in the TLS
//! handshake ([`crate::tls`]); a gRPC channel over that one connection. Used by federationd's
//! peer links and by the edge agent (its route feed, its links to peers and parent).

use crate::locks::lock;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::tls::describe_handshake_error;

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
            let s = lock(&slot).take();
            async move {
                s.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("connection already used; redial"))
            }
        }))
        .await
        .map_err(|e| error_chain(&e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
