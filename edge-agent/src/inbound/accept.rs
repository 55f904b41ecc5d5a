//! The front door for other sites: TCP connections accepted, the mutual-TLS handshake that
//! proves the calling site (SPIFFE ID under the federation CA), connection bounds, and then
//! either a link whose calls go to [`super::call`], or an edge node's reverse link adopted by
//! `link::peers`.

use std::sync::Arc;

use multimesh_core::accept::{self, Admitted, Bounds, SiteAcceptor};
use multimesh_core::tls::{SiteTls, any_site_server_config};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use crate::agent::Agent;
use crate::inbound::call::{Caller, serve_link};
use crate::link::peers::{ALPN_H2, ALPN_REVERSE};
use crate::runtime::workers::Workers;

/// Accepts peer connections until `shutdown`, each served on a data-plane thread; then waits
/// for open links to drain. The handshake and the bounds are `multimesh_core::accept`'s
/// (shared with federationd's peer listener): served connections at most
/// `limits.max_connections` in all and `limits.max_connections_per_site` per site.
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
    let door = SiteAcceptor::new(
        cfg,
        Bounds {
            connections: agent.config.limits.max_connections,
            per_caller: agent.config.limits.max_connections_per_site,
        },
    );
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
        workers.serve(&mut links, tcp, move |tcp| async move {
            let (tls, site, _held) = match door.admit(handshake, tcp).await {
                Ok(Admitted { tls, id, held }) => (tls, id.site, held),
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
            if tls.get_ref().1.alpn_protocol() == Some(ALPN_REVERSE) {
                if !agent.pool.parents(&site) {
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
