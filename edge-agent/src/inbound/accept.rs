//! The front door for other sites: TCP connections accepted, the mutual-TLS handshake that
//! proves the calling site (SPIFFE ID under the federation CA), connection bounds, and then
//! either a link whose calls go to [`super::call`], or an edge node's reverse link adopted by
//! `link::peers`.

use std::sync::Arc;

use multimesh_core::accept::{self, SiteAcceptor};
use multimesh_core::locks::Slots;
use multimesh_core::tls::{SiteTls, any_site_server_config};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::agent::Agent;
use crate::inbound::call::{Caller, serve_link};
use crate::link::peers::{ALPN_H2, ALPN_REVERSE};
use crate::runtime::workers::Workers;

/// Accepts peer connections until `shutdown`, each served on a data-plane thread; then waits
/// for open links to drain. The handshake and its bounds are `multimesh_core::accept`'s
/// (shared with federationd's peer listener); served connections are bounded here, in all
/// (`limits.max_connections`) and per site (`limits.max_connections_per_site`).
pub async fn serve(
    agent: Arc<Agent>,
    tls: Arc<SiteTls>,
    listener: TcpListener,
    shutdown: CancellationToken,
    workers: Arc<Workers>,
) -> Result<(), String> {
    let cfg = any_site_server_config(
        &tls,
        &agent.config.trust_domain,
        vec![ALPN_H2.to_vec(), ALPN_REVERSE.to_vec()],
    )
    .map_err(|e| e.to_string())?;
    let door = SiteAcceptor::new(cfg);
    let slots = Arc::new(Semaphore::new(agent.config.limits.max_connections));
    let per_site = Slots::new(agent.config.limits.max_connections_per_site);
    let mut links = JoinSet::new();
    while let Some((tcp, addr)) = accept::next(&listener, &shutdown, "ingress").await {
        let Some(handshake) = door.begin() else {
            agent.metrics.tls_failure("ingress", "handshakes-full");
            debug!(peer_addr = %addr, "ingress: too many handshakes in progress; connection closed");
            continue;
        };
        let agent = agent.clone();
        let door = door.clone();
        let shutdown = shutdown.clone();
        let slots = slots.clone();
        let per_site = per_site.clone();
        workers.serve(&mut links, tcp, move |tcp| async move {
            let (tls, site) = match door.handshake(handshake, tcp).await {
                Ok((tls, id)) => (tls, id.site),
                Err(refused) => {
                    agent.metrics.tls_failure("ingress", refused.kind);
                    // Silent connections are the cheap flood: counted, not logged one by one.
                    if refused.kind == "timeout" {
                        debug!(peer_addr = %addr, reason = %refused.reason, "ingress refused a connection");
                    } else {
                        warn!(peer_addr = %addr, reason = %refused.reason, "ingress refused a connection");
                    }
                    return;
                }
            };
            let Ok(_slot) = slots.try_acquire_owned() else {
                agent.metrics.tls_failure("ingress", "full");
                warn!(peer = %site, peer_addr = %addr, limit = agent.config.limits.max_connections, "ingress refused a connection: at max_connections");
                return;
            };
            let Some(_site_slot) = per_site.take(&site) else {
                agent.metrics.tls_failure("ingress", "site-full");
                warn!(peer = %site, peer_addr = %addr, limit = agent.config.limits.max_connections_per_site, "ingress refused a connection: the site is at max_connections_per_site");
                return;
            };
            if tls.get_ref().1.alpn_protocol() == Some(ALPN_REVERSE) {
                if !agent.config.children.contains(&site) {
                    agent.metrics.tls_failure("ingress", "not-a-child");
                    warn!(peer = %site, peer_addr = %addr, reason = "not configured as an edge node of this site (`children`)", "edge node link refused");
                    return;
                }
                if let Err(e) = agent.pool.adopt_child(&site, tls).await {
                    warn!(peer = %site, error = %e, "edge node link refused");
                }
                return;
            }
            let caller = Caller {
                site: site.clone(),
                from_parent: false,
            };
            debug!(peer = %site, peer_addr = %addr, "ingress connection");
            serve_link(agent, tls, caller, shutdown)
                .instrument(info_span!("ingress", peer = %site))
                .await;
        });
        while links.try_join_next().is_some() {}
    }
    while links.join_next().await.is_some() {}
    Ok(())
}
