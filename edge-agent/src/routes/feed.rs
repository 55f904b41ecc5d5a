//! Where route tables come from: a file (re-read when it changes; a bad edit is refused and the
//! previous table kept), or the site's `federationd` RouteDiscovery watch over mTLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use multimesh_core::backoff::Backoff;
use multimesh_core::dial::{channel_over, connect_site, system_resolver};
use multimesh_core::files::fingerprint;
use multimesh_core::identity::{Role, SiteId};
use multimesh_core::service;
use multimesh_core::tls::{SiteTls, client_config};
use multimesh_proto::routes::v1 as wire;
use multimesh_proto::routes::v1::route_discovery_client::RouteDiscoveryClient;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::routes::published::Published;
use crate::routes::{
    Destination, PortSpec, RouteDocument, RouteTable, ServiceRoute, Split, SplitBackend,
};

/// Reads and validates a route file (YAML, JSON or TOML by extension).
pub fn load_file(path: &Path) -> Result<RouteTable, String> {
    let text = multimesh_core::files::read_text(path, multimesh_core::files::MAX_ROUTE_FILE_BYTES)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let format = path.extension().and_then(|e| e.to_str()).unwrap_or("yaml");
    let version = format!(
        "file:{}@{:016x}",
        path.display(),
        fingerprint(text.as_bytes())
    );
    RouteTable::parse(&text, format, version).map_err(|e| format!("{}: {e}", path.display()))
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Re-reads `path` whenever its modification time or size changes.
pub async fn watch_file(routes: Arc<Published>, path: PathBuf, shutdown: CancellationToken) {
    let mut last = stamp(&path);
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            () = shutdown.cancelled() => return,
        }
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match load_file(&path) {
            Ok(t) if t.version == routes.current().version => {}
            Ok(t) => routes.publish(t),
            Err(e) => {
                routes.reject();
                error!(error = %e, "route file refused; keeping the previous table");
            }
        }
    }
}

/// Converts a RouteDiscovery table to the route document.
pub fn from_wire(t: wire::RouteTable) -> Result<RouteDocument, String> {
    let mut services = Vec::with_capacity(t.services.len());
    for (i, s) in t.services.into_iter().enumerate() {
        let ports = service::ports_from_wire(&format!("services[{i}].ports"), &s.ports)
            .map_err(|e| e.to_string())?;
        services.push(ServiceRoute {
            name: s.name,
            namespace: s.namespace,
            ports: ports
                .into_iter()
                .map(|p| PortSpec {
                    name: p.name,
                    port: p.port,
                    protocol: p.protocol,
                })
                .collect(),
            destinations: s
                .destinations
                .into_iter()
                .map(|d| Destination {
                    site: d.site,
                    addresses: d.addresses,
                    weight: d.weight,
                    via: (!d.via.is_empty()).then_some(d.via),
                    consumers: d.consumers,
                })
                .collect(),
            consumers: s.consumers,
            prefer_local: s.prefer_local,
        });
    }
    let splits = t
        .splits
        .into_iter()
        .map(|s| Split {
            service: s.service,
            namespace: s.namespace,
            backends: s
                .backends
                .into_iter()
                .map(|b| SplitBackend {
                    service: b.service,
                    weight: b.weight,
                })
                .collect(),
        })
        .collect();
    Ok(RouteDocument { services, splits })
}

/// Which federationd to follow.
#[derive(Clone, Debug)]
pub struct Follow {
    /// The federation's trust domain.
    pub trust_domain: String,
    /// This site: the daemon must present this site's federation ID.
    pub site: String,
    /// The daemon's `host:port`.
    pub address: String,
}

/// Follows the site's federationd: connects with the site identity (the daemon must present
/// the same site's ID), publishes each table, and reconnects with back-off when the watch ends.
pub async fn watch_federation(
    routes: Arc<Published>,
    follow: Follow,
    tls: Arc<SiteTls>,
    shutdown: CancellationToken,
) {
    let resolver = system_resolver();
    let Follow {
        trust_domain,
        site,
        address,
    } = follow;
    let connector = match SiteId::new(&trust_domain, &site, Role::Federation)
        .map_err(|e| e.to_string())
        .and_then(|id| client_config(&tls, id).map_err(|e| e.to_string()))
    {
        Ok(cfg) => TlsConnector::from(cfg),
        Err(e) => {
            error!(error = %e, "route feed: cannot build the TLS client");
            return;
        }
    };
    let mut backoff =
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5)).with_jitter();
    let connected = std::sync::atomic::AtomicBool::new(false);
    loop {
        let run = async {
            let stream = connect_site(
                &resolver,
                &connector,
                &site,
                &address,
                Duration::from_secs(5),
            )
            .await?;
            let channel = channel_over(stream).await?;
            let mut client = RouteDiscoveryClient::new(channel).max_decoding_message_size(64 << 20);
            let mut watch = client
                .watch(wire::WatchRoutesRequest {})
                .await
                .map_err(|s| format!("{}: {}", s.code(), s.message()))?
                .into_inner();
            info!(federation = %address, "route feed connected");
            connected.store(true, Ordering::Relaxed);
            loop {
                match watch.message().await {
                    Ok(Some(t)) => {
                        let version = t.version.clone();
                        match from_wire(t)
                            .and_then(|d| RouteTable::build(d, version).map_err(|e| e.to_string()))
                        {
                            Ok(table) => routes.publish(table),
                            Err(e) => {
                                routes.reject();
                                error!(error = %e, "route table from federationd refused; keeping the previous one");
                            }
                        }
                    }
                    Ok(None) => return Err::<(), String>("federationd ended the watch".into()),
                    Err(s) => return Err(format!("{}: {}", s.code(), s.message())),
                }
            }
        };
        let r = tokio::select! {
            r = run => r,
            () = shutdown.cancelled() => return,
        };
        if let Err(e) = r {
            warn!(federation = %address, error = %e, "route feed lost; keeping the last table and reconnecting");
        }
        // A watch that was established succeeded: the next reconnect starts from the shortest
        // wait again (before, the wait only grew, so after a few restarts of federationd every
        // reconnect waited 5 s).
        if connected.swap(false, Ordering::Relaxed) {
            backoff.reset();
        }
        let wait = backoff.next_delay();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
