//! Raw TCP between sites: an HTTP/2 `CONNECT` stream on the pooled edge link carries the bytes
//! (RFC 9113 §8.5), so TCP rides the same mTLS connection as HTTP.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Method, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use crate::agent::{Agent, error_chain};
use crate::http as h;
use crate::link::client::Link;
use crate::routes::{RouteDest, RoutePort, ServiceKey};

/// A byte stream: a TCP connection or a tunnel.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Connects to the local workload serving `route_port` (port `port` of `key`).
pub async fn open_local(
    agent: &Agent,
    route_port: Option<&RoutePort>,
    key: &ServiceKey,
    port: u16,
) -> Result<Box<dyn Io>, String> {
    let up = route_port
        .and_then(|p| p.upstream.as_deref())
        .ok_or_else(|| format!("{key} port {port} has no local upstream"))?;
    let limit = Duration::from_millis(agent.config.limits.connect_timeout_ms);
    match tokio::time::timeout(limit, TcpStream::connect(up)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(Box::new(s))
        }
        Ok(Err(e)) => Err(format!("connect {up}: {e}")),
        Err(_) => Err(format!("connect {up}: timed out")),
    }
}

/// Opens a tunnel to `key`:`port` at site `dest` (or through its relay).
pub async fn open_remote(
    agent: &Agent,
    dest: &RouteDest,
    key: &ServiceKey,
    port: u16,
) -> Result<Box<dyn Io>, String> {
    let (link, addresses) = agent.link_for(dest);
    let send = agent.pool.get(link, addresses).await?;
    connect_over(agent, send, &dest.site, &format!("{}:{port}", key.host())).await
}

/// Sends `CONNECT authority` for `site` on `link` and returns the tunnel.
pub async fn connect_over(
    agent: &Agent,
    link: Link,
    site: &str,
    authority: &str,
) -> Result<Box<dyn Io>, String> {
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.uri_mut() = authority
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    if let Ok(v) = HeaderValue::from_str(site) {
        req.headers_mut().insert(h::SITE, v);
    }
    let (resp, tunnel) = match agent.with_request_timeout(link.connect(req)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(error_chain(&e)),
        Err(_) => return Err("CONNECT timed out".into()),
    };
    match tunnel {
        Some(t) => Ok(Box::new(t)),
        None => {
            let why = resp
                .headers()
                .get(h::ERROR)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            Err(format!("CONNECT refused: {} {why}", resp.status()))
        }
    }
}

/// Copies both ways until either side closes.
pub async fn splice(agent: &Arc<Agent>, a: &mut (impl Io + ?Sized), b: &mut (impl Io + ?Sized)) {
    agent.metrics.active_tunnels.fetch_add(1, Ordering::Relaxed);
    match tokio::io::copy_bidirectional(a, b).await {
        Ok((up, down)) => debug!(up, down, "tunnel closed"),
        Err(e) => debug!(error = %e, "tunnel ended with an error"),
    }
    agent.metrics.active_tunnels.fetch_sub(1, Ordering::Relaxed);
}
