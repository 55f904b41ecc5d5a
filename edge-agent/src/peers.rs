//! Connections to other sites' edge agents: one multiplexed HTTP/2-over-mTLS connection per
//! site, opened on first use, reused by every call, and re-opened when it closes. An edge
//! node's link is adopted here too: the node dials in, and this side then uses that same
//! connection as the HTTP/2 *client* (the node has no listening port).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use federation::identity::SiteId;
use federation::sync::dialer::{connect_site, system_resolver};
use federation::tls::{SiteTls, client_config_alpn};
use hickory_resolver::TokioResolver;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tracing::info;

use crate::link::Link;

/// ALPN protocol of ordinary edge-to-edge connections.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol an edge node offers on its outbound link: after the handshake the roles swap,
/// and the node serves HTTP/2 on it.
pub const ALPN_REVERSE: &[u8] = b"multimesh-reverse";

#[derive(Default)]
struct Slot {
    conn: Mutex<Option<Link>>,
    connecting: tokio::sync::Mutex<()>,
    connector: Mutex<Option<TlsConnector>>,
    /// The connection is an edge node's inbound link (never dialled from here).
    reverse: Mutex<bool>,
}

/// The pool.
pub struct PeerPool {
    tls: Arc<SiteTls>,
    trust_domain: String,
    resolver: TokioResolver,
    connect_timeout: Duration,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PeerPool {
    /// A pool dialling with `tls` as this site's identity.
    pub fn new(tls: Arc<SiteTls>, trust_domain: &str, connect_timeout: Duration) -> Self {
        Self {
            tls,
            trust_domain: trust_domain.to_string(),
            resolver: system_resolver(),
            connect_timeout,
            slots: Mutex::default(),
        }
    }

    fn slot(&self, site: &str) -> Arc<Slot> {
        lock(&self.slots)
            .entry(site.to_string())
            .or_default()
            .clone()
    }

    /// Whether `site` is an edge node of this site: it has dialled in with its own identity
    /// since start (its link may be down now; calls to it then fail with 503, not 403).
    pub fn is_child(&self, site: &str) -> bool {
        let Some(slot) = lock(&self.slots).get(site).cloned() else {
            return false;
        };
        *lock(&slot.reverse)
    }

    /// A ready connection to `site`, dialling one of `addresses` if there is none. Errors say
    /// why in plain words (refused, TLS failure with reason, no link to an edge node).
    pub async fn get(&self, site: &str, addresses: &[String]) -> Result<Link, String> {
        let slot = self.slot(site);
        if let Some(c) = lock(&slot.conn).as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let _one_dialler = slot.connecting.lock().await;
        if let Some(c) = lock(&slot.conn).as_ref()
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        if *lock(&slot.reverse) {
            return Err(format!("edge node {site} is not connected"));
        }
        if addresses.is_empty() {
            return Err(format!("site {site} has no edge address"));
        }
        let connector = self.connector(&slot, site, ALPN_H2)?;
        let mut last = String::new();
        for address in addresses {
            match connect_site(
                &self.resolver,
                &connector,
                site,
                address,
                self.connect_timeout,
            )
            .await
            {
                Ok(tls) => {
                    let send = Link::handshake(tls, site)
                        .await
                        .map_err(|e| format!("HTTP/2 handshake with {site}: {e}"))?;
                    info!(peer = site, %address, "edge link up");
                    *lock(&slot.conn) = Some(send.clone());
                    return Ok(send);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn connector(&self, slot: &Slot, site: &str, alpn: &[u8]) -> Result<TlsConnector, String> {
        let mut c = lock(&slot.connector);
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let expected = SiteId::new(&self.trust_domain, site).map_err(|e| e.to_string())?;
        let cfg = client_config_alpn(&self.tls, expected, vec![alpn.to_vec()])
            .map_err(|e| e.to_string())?;
        let made = TlsConnector::from(cfg);
        *c = Some(made.clone());
        Ok(made)
    }

    /// Opens an edge node's outbound link to its parent (offering [`ALPN_REVERSE`]).
    pub async fn dial_parent(
        &self,
        parent: &str,
        address: &str,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let expected = SiteId::new(&self.trust_domain, parent).map_err(|e| e.to_string())?;
        let cfg = client_config_alpn(&self.tls, expected, vec![ALPN_REVERSE.to_vec()])
            .map_err(|e| e.to_string())?;
        connect_site(
            &self.resolver,
            &TlsConnector::from(cfg),
            parent,
            address,
            self.connect_timeout,
        )
        .await
    }

    /// Adopts an edge node's inbound link: this side becomes its HTTP/2 client. Returns when
    /// the link closes.
    pub async fn adopt_child<S>(&self, site: &str, io: S) -> Result<(), String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let link = Link::handshake(io, site)
            .await
            .map_err(|e| format!("HTTP/2 handshake with edge node {site}: {e}"))?;
        let slot = self.slot(site);
        *lock(&slot.reverse) = true;
        *lock(&slot.conn) = Some(link.clone());
        info!(peer = site, "edge node link up");
        link.closed().await;
        // One guard: locking `slot.conn` again inside an `if let` on a guard of it would
        // deadlock this worker thread (found by the demo: the parent hung when its edge node
        // went away, and then ignored SIGTERM).
        {
            let mut conn = lock(&slot.conn);
            if conn.as_ref().is_some_and(|c| c.is_closed()) {
                *conn = None;
            }
        }
        info!(peer = site, "edge node link closed");
        Ok(())
    }
}
