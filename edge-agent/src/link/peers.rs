//! Connections to other sites' edge agents: one multiplexed HTTP/2-over-mTLS connection per
//! site and data-plane thread, opened on first use, reused by every call on that thread, and
//! re-opened when it closes. An edge node's link is adopted here too: the node dials in, and
//! this side then uses that same connection as the HTTP/2 *client* (the node has no listening
//! port); it is one connection, used from every thread.

use multimesh_core::locks::lock;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use multimesh_core::dial::{connect_site, system_resolver};
use multimesh_core::identity::{Role, SiteId};
use multimesh_core::tls::{SiteTls, client_config_alpn};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tracing::info;

use crate::link::client::Link;
use crate::runtime::workers::PerThread;

/// ALPN protocol of ordinary edge-to-edge connections.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol an edge node offers on its outbound link: after the handshake the roles swap,
/// and the node serves HTTP/2 on it.
pub const ALPN_REVERSE: &[u8] = b"multimesh-reverse";

/// One data-plane thread's link to a site.
#[derive(Default)]
struct Dialled {
    conn: Mutex<Option<Link>>,
    connecting: tokio::sync::Mutex<()>,
}

/// The pool.
pub struct PeerPool {
    tls: Arc<SiteTls>,
    trust_domain: String,
    resolver: TokioResolver,
    connect_timeout: Duration,
    /// Dialled links, by site: each data-plane thread has its own, so a call's streams stay
    /// on the thread that serves the call (`runtime::workers`).
    dialled: PerThread<Mutex<HashMap<String, Arc<Dialled>>>>,
    /// The edge nodes this site parents now (`children` in the config, which may change while
    /// the agent runs): only they may link in. Locked before `children`.
    allowed: Mutex<BTreeSet<String>>,
    /// Edge nodes that have dialled in since start (or since they were last configured), with
    /// their link while it is up. A node has one link, used from every thread.
    children: Mutex<HashMap<String, Option<Link>>>,
    connectors: Mutex<HashMap<String, TlsConnector>>,
}

impl PeerPool {
    /// A pool dialling with `tls` as this site's identity, for `threads` data-plane threads,
    /// parenting the edge nodes `children`.
    pub fn new(
        tls: Arc<SiteTls>,
        trust_domain: &str,
        connect_timeout: Duration,
        threads: usize,
        children: &[String],
    ) -> Self {
        Self {
            tls,
            trust_domain: trust_domain.to_string(),
            resolver: system_resolver(),
            connect_timeout,
            dialled: PerThread::new(threads, Mutex::default),
            allowed: Mutex::new(children.iter().cloned().collect()),
            children: Mutex::default(),
            connectors: Mutex::default(),
        }
    }

    /// Whether `site` is configured as an edge node of this site now.
    pub fn parents(&self, site: &str) -> bool {
        lock(&self.allowed).contains(site)
    }

    /// Makes `sites` the edge nodes this site parents, while the agent runs: a node no longer
    /// listed has its link closed and may not link in again. Returns the nodes removed.
    pub fn set_children(&self, sites: BTreeSet<String>) -> Vec<String> {
        let mut allowed = lock(&self.allowed);
        let removed: Vec<String> = allowed.difference(&sites).cloned().collect();
        let mut children = lock(&self.children);
        for site in &removed {
            if let Some(Some(link)) = children.remove(site) {
                link.close();
            }
        }
        *allowed = sites;
        removed
    }

    /// Whether `site` is an edge node of this site: it has dialled in with its own identity
    /// since start (its link may be down now; calls to it then fail with 503, not 403).
    pub fn is_child(&self, site: &str) -> bool {
        lock(&self.children).contains_key(site)
    }

    /// A ready connection to `site`, dialling one of `addresses` if this thread has none.
    /// Errors say why in plain words (refused, TLS failure with reason, no link to an edge
    /// node).
    pub async fn get(&self, site: &str, addresses: &[String]) -> Result<Link, String> {
        let d = {
            let mut dialled = lock(self.dialled.get());
            match dialled.get(site) {
                Some(d) => d.clone(),
                None => dialled.entry(site.to_string()).or_default().clone(),
            }
        };
        if let Some(c) = lock(&d.conn).clone().filter(|c| !c.is_closed()) {
            return Ok(c);
        }
        if let Some(child) = lock(&self.children).get(site) {
            return child
                .clone()
                .filter(|c| !c.is_closed())
                .ok_or_else(|| format!("edge node {site} is not connected"));
        }
        // Boxed: dialling (DNS, TCP, TLS, HTTP/2) is a large future, and every call's future
        // would otherwise carry its size.
        Box::pin(self.dial(site, addresses, &d)).await
    }

    /// Dials `site` for this thread, unless a concurrent call of it just did.
    async fn dial(&self, site: &str, addresses: &[String], d: &Dialled) -> Result<Link, String> {
        let _one_dialler = d.connecting.lock().await;
        if let Some(c) = lock(&d.conn).clone().filter(|c| !c.is_closed()) {
            return Ok(c);
        }
        if addresses.is_empty() {
            return Err(format!("site {site} has no edge address"));
        }
        let connector = self.connector(site)?;
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
                    *lock(&d.conn) = Some(send.clone());
                    return Ok(send);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The TLS connector for dialling `site` (offering [`ALPN_H2`]), made once per site.
    fn connector(&self, site: &str) -> Result<TlsConnector, String> {
        let mut c = lock(&self.connectors);
        if let Some(c) = c.get(site) {
            return Ok(c.clone());
        }
        let expected =
            SiteId::new(&self.trust_domain, site, Role::Edge).map_err(|e| e.to_string())?;
        let cfg = client_config_alpn(&self.tls, expected, vec![ALPN_H2.to_vec()])
            .map_err(|e| e.to_string())?;
        let made = TlsConnector::from(cfg);
        c.insert(site.to_string(), made.clone());
        Ok(made)
    }

    /// Opens an edge node's outbound link to its parent (offering [`ALPN_REVERSE`]).
    pub async fn dial_parent(
        &self,
        parent: &str,
        address: &str,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
        let expected =
            SiteId::new(&self.trust_domain, parent, Role::Edge).map_err(|e| e.to_string())?;
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
        {
            // Under `allowed`: a node removed during the handshake is not adopted.
            let allowed = lock(&self.allowed);
            if !allowed.contains(site) {
                link.close();
                return Err(format!(
                    "{site} is no longer configured as an edge node of this site (`children`)"
                ));
            }
            lock(&self.children).insert(site.to_string(), Some(link.clone()));
        }
        info!(peer = site, "edge node link up");
        link.closed().await;
        // One guard: locking `children` again inside an `if let` on a guard of it would
        // deadlock this thread (found by the demo: the parent hung when its edge node went
        // away, and then ignored SIGTERM).
        {
            let mut children = lock(&self.children);
            if let Some(conn) = children.get_mut(site)
                && conn.as_ref().is_some_and(|c| c.is_closed())
            {
                *conn = None;
            }
        }
        info!(peer = site, "edge node link closed");
        Ok(())
    }
}
