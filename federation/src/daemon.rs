//! Wires a running `federationd`: TLS material, the persisted catalog, config-declared exports,
//! the peer listener, dialers, the admin socket, liveness beats and the persister.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use multimesh_core::accept::SiteAcceptor;
use tokio::net::TcpListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, AdminService};
use crate::catalog::{Limits, Liveness};
use crate::config::{BackendKind, Config};
use crate::identity::{self, Role};
use crate::model::ServiceKey;
use crate::report::{BackendReport, Reported};
use crate::routes::RouteService;
use crate::store::{self, Store};
use crate::sync::peers::PeerTable;
use crate::sync::server::{SyncService, accept_loop};
use crate::sync::{Node, membership};
use crate::tls;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Certificates or keys are unusable.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The state file is unusable.
    #[error(transparent)]
    State(#[from] store::StateError),
    /// A config-declared export is invalid.
    #[error("config export {0}")]
    Export(String),
    /// The saved traffic splits are unreadable.
    #[error("traffic splits: {0}")]
    Splits(String),
    /// The site's certificate or key cannot make or check origin proofs.
    #[error("origin proofs: {0}")]
    Proof(#[from] crate::proof::ProofError),
    /// The configuration asks for something this build leaves out.
    #[error("{0}")]
    Unsupported(&'static str),
    /// A socket could not be bound.
    #[error("{what} {addr}: {source}")]
    Bind {
        /// Which socket.
        what: &'static str,
        /// Its address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A started daemon.
pub struct Running {
    /// The address the peer listener bound.
    pub listen: SocketAddr,
    /// The shared node.
    pub node: Arc<Node>,
    tasks: tokio::task::JoinSet<()>,
    shutdown: CancellationToken,
    persist_stop: tokio::sync::watch::Sender<bool>,
    admin_socket: PathBuf,
}

impl Running {
    /// Stops every task, saves the catalog and removes the admin socket.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let _ = self.persist_stop.send(true);
        while let Some(r) = self.tasks.join_next().await {
            if let Err(e) = r
                && e.is_panic()
            {
                error!(error = %e, "task panicked");
            }
        }
        let _ = std::fs::remove_file(&self.admin_socket);
        info!(site = %self.node.site, "stopped");
    }
}

/// Takes rotated files beyond the handshakes: a new CA bundle checks the certificates of
/// signed records from now on; a new certificate seals this site's records (first), then
/// every own record gets a new stamp (which wakes the sessions), so peers replace what the
/// previous certificate sealed.
fn rotated(node: &Node, next: &tls::SiteTls, changed: multimesh_core::rotate::Changed) {
    if changed.bundle {
        node.verifier.set_roots(&next.roots());
        info!("signed records are checked against the rotated CA bundle");
    }
    if !changed.certificate {
        return;
    }
    let signer = match crate::proof::Signer::new(&next.chain[0], &next.key) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            warn!(error = %e, "the rotated certificate cannot sign records; they stay sealed by the previous one");
            return;
        }
    };
    let fingerprint = signer.fingerprint();
    node.sealer.replace(signer);
    let renewed = node.store.renew(fingerprint).unwrap_or(0);
    info!(
        records = renewed,
        signer = %crate::proof::short(&fingerprint),
        "records sealed by the rotated certificate: peers receive them with new stamps"
    );
}

/// Starts a daemon for `cfg`, read from `config_path` as `document` (see
/// [`Config::load_document`]; the file is read again while the daemon runs).
pub async fn start(
    cfg: Config,
    document: serde_json::Value,
    config_path: &Path,
) -> Result<Running, DaemonError> {
    #[cfg(not(feature = "kubernetes"))]
    if cfg.backend == BackendKind::Kubernetes {
        return Err(DaemonError::Unsupported(
            "backend \"kubernetes\": this build has no Kubernetes backend (feature `kubernetes`)",
        ));
    }
    let tls_material = Arc::new(tls::load_site(
        &cfg.tls,
        &cfg.trust_domain,
        &cfg.site,
        Role::Federation,
    )?);
    let s = cfg.sync;
    let limits = Limits {
        max_records_per_link: s.max_records_per_link,
        max_exports: Limits::default().max_exports,
        max_tombstones: s.max_tombstones,
        ..Limits::default()
    };
    let signer = Arc::new(crate::proof::Signer::new(
        &tls_material.chain[0],
        &tls_material.key,
    )?);
    let verifier = Arc::new(crate::proof::Verifier::from_roots(
        &tls_material.roots(),
        &cfg.trust_domain,
    )?);
    let (mut catalog, generation) = store::load(&cfg.state_file, &cfg.site, limits)?;
    let restored = generation.is_some();
    catalog.set_limits(limits);
    // Exports declared by the config: (re-)export them; withdraw those the config dropped.
    let mut declared = BTreeSet::new();
    for svc in cfg.services.iter().filter(|s| s.export) {
        catalog
            .export(&svc.namespace, &svc.name, cfg.service(svc))
            .map_err(|e| DaemonError::Export(format!("{}/{}: {e}", svc.namespace, svc.name)))?;
        declared.insert(ServiceKey::new(&svc.namespace, &svc.name));
    }
    // With the kubernetes backend, ServiceExport objects declare the exports: the backend
    // reconciles them once it has read the cluster (withdrawing nothing before that).
    if cfg.backend == BackendKind::Static {
        let dropped: Vec<_> = catalog.declared().difference(&declared).cloned().collect();
        for key in dropped {
            if catalog.unexport(&key.namespace, &key.name).is_ok() {
                info!(service = %key, "withdrawn: no longer declared in the config");
            }
        }
        catalog.set_declared(declared);
    }
    // What peers removed from the config sent is dropped with their links.
    for peer in catalog.set_peers(cfg.peers.iter().map(|p| p.site.clone()).collect()) {
        info!(peer = %peer, "dropped what this peer sent: it is no longer configured");
    }
    catalog.add_certs([signer.certificate().clone()]);
    // Started with another certificate than the one that sealed the records last: they get new
    // stamps, so peers replace the seals of the previous certificate before it ends.
    if let Some(renewed) = catalog.renew(signer.fingerprint())
        && restored
    {
        info!(
            records = renewed,
            "this site's certificate changed since its state was saved: its records get new stamps sealed by the new one"
        );
    }
    info!(
        site = %cfg.site,
        restored,
        epoch = catalog.epoch(),
        version = catalog.version(),
        exports = catalog.export_count(),
        "catalog loaded"
    );
    let started = Instant::now();
    let store = Arc::new(Store::new(
        catalog,
        Liveness::new(started, s.liveness_timeout()),
        &cfg.state_file,
        generation.unwrap_or(0),
    ));
    // A new epoch or config exports must survive a crash: save a snapshot before serving.
    // (Blocking, but nothing is served yet.)
    store.compact()?;
    let splits_path = crate::splits::path_for(&cfg.state_file);
    let splits =
        Arc::new(crate::splits::SplitStore::load(&splits_path).map_err(DaemonError::Splits)?);
    let peer_list: Vec<_> = cfg
        .peers
        .iter()
        .map(|p| (p.site.clone(), p.address.clone()))
        .collect();
    let node = Arc::new(Node {
        site: cfg.site.clone(),
        trust_domain: cfg.trust_domain.clone(),
        store: store.clone(),
        splits: splits.clone(),
        peers: Arc::new(PeerTable::new(&cfg.site, &peer_list, s.liveness_timeout())),
        settings: s,
        tls: tls_material.clone(),
        sealer: Arc::new(crate::sync::codec::Sealer::new(&cfg.site, signer)),
        verifier,
        started,
        backend: Arc::new(Reported::new(match cfg.backend {
            BackendKind::Static => BackendReport::new("static", ""),
            BackendKind::Kubernetes => BackendReport::new(
                "kubernetes",
                &cfg.kubernetes
                    .as_ref()
                    .map(|k| k.mesh.clone())
                    .unwrap_or_default(),
            ),
        })),
        config: Reported::default(),
    });
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    // Certificate and CA rotation: new handshakes present the new certificate and check
    // peers against the new bundle; this site's records are sealed again by a new certificate.
    if cfg.certificate_reload_ms > 0 {
        tasks.spawn(multimesh_core::rotate::watch(
            multimesh_core::rotate::Source {
                files: cfg.tls.clone(),
                trust_domain: cfg.trust_domain.clone(),
                site: cfg.site.clone(),
                role: Role::Federation,
            },
            tls_material.clone(),
            Duration::from_millis(cfg.certificate_reload_ms),
            shutdown.clone(),
            {
                let node = node.clone();
                move |next, changed| rotated(&node, next, changed)
            },
        ));
    }

    // Persist every change (the journal is flushed at most every 200 ms, or at once for an
    // export before it is acknowledged).
    let (persist_stop, persist_rx) = tokio::sync::watch::channel(false);
    tasks.spawn(store::persist(
        store.clone(),
        Duration::from_millis(200),
        persist_rx,
    ));

    // Peer listener.
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| DaemonError::Bind {
            what: "peer listener",
            addr: cfg.listen.to_string(),
            source,
        })?;
    let listen = listener.local_addr().map_err(|source| DaemonError::Bind {
        what: "peer listener",
        addr: cfg.listen.to_string(),
        source,
    })?;
    // Peers' federationd sync the catalog; this site's own edge agent watches routes. Who
    // is a peer is asked of the peer table at each handshake (it changes with the config).
    let server_cfg = tls::server_config(
        &tls_material,
        &cfg.trust_domain,
        &cfg.site,
        node.peers.clone(),
    )?;
    let incoming = accept_loop(
        listener,
        SiteAcceptor::new(server_cfg, crate::sync::server::BOUNDS),
        shutdown.clone(),
    );
    let sd = shutdown.clone();
    let sync_service = SyncService::new(node.clone());
    let route_node = node.clone();
    tasks.spawn(async move {
        let r = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(sync_service)
            .add_service(RouteService::new(route_node))
            .serve_with_incoming_shutdown(incoming, sd.cancelled())
            .await;
        if let Err(e) = r {
            error!(error = %e, "peer server failed");
        }
    });

    // Admin socket.
    let uds = admin::bind(&cfg.admin_socket).map_err(|source| DaemonError::Bind {
        what: "admin socket",
        addr: cfg.admin_socket.display().to_string(),
        source,
    })?;
    // The admin API reports the address the peer listener bound (not `:0` from the config).
    let admin_cfg = Config {
        listen,
        ..cfg.clone()
    };
    let admin_service = AdminService::new(node.clone(), Arc::new(admin_cfg), config_path);
    let sd = shutdown.clone();
    tasks.spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(admin_service)
            .serve_with_incoming_shutdown(UnixListenerStream::new(uds), sd.cancelled())
            .await;
        if let Err(e) = r {
            error!(error = %e, "admin server failed");
        }
    });

    // Dialers, and the peers read again from the config file while the daemon runs.
    tasks.spawn(membership::run(
        node.clone(),
        config_path.to_path_buf(),
        cfg.clone(),
        document,
        shutdown.clone(),
    ));

    // Own liveness beat.
    let sd = shutdown.clone();
    let n = node.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(n.settings.heartbeat_ms));
        let mut last = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = sd.cancelled() => return,
            }
            last = unix_ms().max(last + 1);
            n.store.touch(|c| c.set_own_beat(last));
        }
    });

    #[cfg(feature = "kubernetes")]
    if cfg.backend == BackendKind::Kubernetes {
        let settings = cfg.kubernetes.clone().unwrap_or_default();
        let base = crate::kubernetes::desired::ExportBase {
            trust_domain: cfg.trust_domain.clone(),
            ingress: cfg.edge_ingress.clone(),
        };
        info!(site = %cfg.site, mesh = %settings.mesh, "kubernetes backend starting");
        tasks.spawn(crate::kubernetes::controller::run(
            node.clone(),
            settings,
            base,
            shutdown.clone(),
        ));
    }

    if let Some(ready) = &cfg.ready_file {
        let body = format!("{{\"site\":\"{}\",\"listen\":\"{listen}\"}}\n", cfg.site);
        if let Err(e) = identity::write_file(ready, &body, false) {
            warn!(error = %e, "cannot write the ready file");
        }
    }
    info!(site = %cfg.site, listen = %listen, admin = %cfg.admin_socket.display(), peers = cfg.peers.len(), "federationd ready");
    Ok(Running {
        listen,
        node,
        tasks,
        shutdown,
        persist_stop,
        admin_socket: cfg.admin_socket.clone(),
    })
}
