//! The admin API of `federationd` on a Unix socket (mode 0600: only the daemon's user can use
//! it), and the client `federationctl` uses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use hyper_util::rt::TokioIo;
use multimesh_proto::admin::v1::{self as api, admin_client::AdminClient, admin_server};
use tokio::net::UnixStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::catalog::{EntryState, Liveness, OriginState};
use crate::config::Config;
use crate::error::AdminError;
use crate::model::{self, Scope, Service, StalePolicy};
use crate::names;
use crate::sync::Node;

/// The admin service of one daemon.
pub struct AdminService {
    node: Arc<Node>,
    config: Arc<Config>,
    config_path: String,
}

impl AdminService {
    /// Serves admin requests for `node`, configured by `config` read from `config_path`.
    pub fn new(
        node: Arc<Node>,
        config: Arc<Config>,
        config_path: &Path,
    ) -> admin_server::AdminServer<Self> {
        admin_server::AdminServer::new(Self {
            node,
            config,
            config_path: config_path.display().to_string(),
        })
    }

    fn build_export(&self, r: &api::ExportRequest) -> Result<Service, AdminError> {
        names::dns_label("name", &r.name)?;
        names::dns_label("namespace", &r.namespace)?;
        let configured = self.config.find_service(&r.namespace, &r.name);
        let ports = if r.ports.is_empty() {
            match configured {
                Some(s) => s.ports.clone(),
                None => {
                    return Err(crate::error::InvalidField::new(
                        "ports",
                        "",
                        &format!(
                            "is required: {}/{} is not a service in the site config",
                            r.namespace, r.name
                        ),
                    )
                    .into());
                }
            }
        } else {
            model::ports_from_wire("ports", &r.ports)?
        };
        let scope = if r.to.is_empty() {
            Scope::All
        } else {
            Scope::from_sites("to", &r.to)?
        };
        let stale = match &r.stale {
            Some(s) => StalePolicy {
                ttl_seconds: s.ttl_seconds,
                serve: s.serve,
            },
            None => configured.and_then(|c| c.stale).unwrap_or_default(),
        };
        let mut labels: BTreeMap<String, String> =
            configured.map(|c| c.labels.clone()).unwrap_or_default();
        labels.extend(r.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let svc = Service {
            ports,
            ingress: self.config.edge_ingress.clone(),
            via: self.config.edge_via.clone(),
            labels,
            identity: configured
                .and_then(|c| c.identity.clone())
                .unwrap_or_else(|| self.config.default_identity(&r.namespace, &r.name)),
            scope,
            stale,
            share_with: if r.share_with.is_empty() {
                configured
                    .map(|c| c.share_with.iter().cloned().collect())
                    .unwrap_or_default()
            } else {
                r.share_with.iter().cloned().collect()
            },
        };
        svc.validate()?;
        Ok(svc)
    }

    /// Makes a change durable before it is acknowledged.
    async fn save(&self) -> Result<(), Status> {
        let store = self.node.store.clone();
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Status::unavailable(format!(
                "the change is applied but could not be saved: {e}"
            ))),
            Err(e) => Err(Status::internal(format!("save task failed: {e}"))),
        }
    }

    fn refuse_declared(&self, namespace: &str, name: &str) -> Result<(), AdminError> {
        if self.node.store.read(|c| c.is_declared(namespace, name)) {
            return Err(AdminError::DeclaredInConfig {
                namespace: namespace.to_string(),
                name: name.to_string(),
                path: self.config_path.clone(),
            });
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl admin_server::Admin for AdminService {
    async fn export(
        &self,
        request: Request<api::ExportRequest>,
    ) -> Result<Response<api::ExportResponse>, Status> {
        let r = request.into_inner();
        let svc = self.build_export(&r)?;
        self.refuse_declared(&r.namespace, &r.name)?;
        let stamp = self.node.store.export(&r.namespace, &r.name, svc.clone())?;
        self.save().await?;
        info!(site = %self.node.site, service = %format!("{}/{}", r.namespace, r.name), version = stamp.version, scope = %svc.scope, "exported");
        let key = model::Key {
            origin: self.node.site.clone(),
            namespace: r.namespace,
            name: r.name,
        };
        Ok(Response::new(api::ExportResponse {
            service: Some(model::service_to_wire(&key, stamp, &svc)),
        }))
    }

    async fn unexport(
        &self,
        request: Request<api::UnexportRequest>,
    ) -> Result<Response<api::UnexportResponse>, Status> {
        let r = request.into_inner();
        names::dns_label("name", &r.name).map_err(AdminError::from)?;
        names::dns_label("namespace", &r.namespace).map_err(AdminError::from)?;
        self.refuse_declared(&r.namespace, &r.name)?;
        let stamp = self.node.store.unexport(&r.namespace, &r.name)?;
        self.save().await?;
        info!(site = %self.node.site, service = %format!("{}/{}", r.namespace, r.name), version = stamp.version, "unexported");
        Ok(Response::new(api::UnexportResponse {
            version: stamp.version,
        }))
    }

    async fn apply_splits(
        &self,
        request: Request<api::ApplySplitsRequest>,
    ) -> Result<Response<api::SplitsResponse>, Status> {
        let r = request.into_inner();
        let files: Vec<(String, String)> = r.files.into_iter().map(|f| (f.name, f.text)).collect();
        let rules = crate::splits::parse(&files).map_err(Status::invalid_argument)?;
        let changed = if r.dry_run {
            0
        } else {
            let n = self
                .node
                .splits
                .apply(rules.clone())
                .map_err(Status::unavailable)?;
            for rule in &rules {
                info!(site = %self.node.site, service = %format!("{}/{}", rule.namespace, rule.service), backends = ?rule.backends, source = %rule.source, "traffic split applied");
            }
            n
        };
        Ok(Response::new(splits_view(&self.node, rules, changed)))
    }

    async fn splits(
        &self,
        _: Request<api::SplitsRequest>,
    ) -> Result<Response<api::SplitsResponse>, Status> {
        Ok(Response::new(splits_view(
            &self.node,
            self.node.splits.list(),
            0,
        )))
    }

    async fn delete_split(
        &self,
        request: Request<api::DeleteSplitRequest>,
    ) -> Result<Response<api::SplitsResponse>, Status> {
        let r = request.into_inner();
        names::dns_label("service", &r.service).map_err(AdminError::from)?;
        names::dns_label("namespace", &r.namespace).map_err(AdminError::from)?;
        if !self
            .node
            .splits
            .delete(&r.namespace, &r.service)
            .map_err(Status::unavailable)?
        {
            return Err(Status::not_found(format!(
                "no traffic split on {}/{}",
                r.namespace, r.service
            )));
        }
        info!(site = %self.node.site, service = %format!("{}/{}", r.namespace, r.service), "traffic split deleted");
        Ok(Response::new(splits_view(
            &self.node,
            self.node.splits.list(),
            1,
        )))
    }

    async fn catalog(
        &self,
        req: Request<api::CatalogRequest>,
    ) -> Result<Response<api::CatalogResponse>, Status> {
        let req = req.into_inner();
        if req.page_size > MAX_PAGE_SIZE {
            return Err(AdminError::Invalid(crate::error::InvalidField::new(
                "page_size",
                req.page_size,
                "must be at most 10000",
            ))
            .into());
        }
        let after = page_key(&req.page_token)?;
        let size = if req.page_size == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            req.page_size
        };
        Ok(Response::new(catalog_page(
            &self.node,
            Instant::now(),
            after.as_ref(),
            size as usize,
            PAGE_BYTES,
        )))
    }

    async fn peers(
        &self,
        _: Request<api::PeersRequest>,
    ) -> Result<Response<api::PeersResponse>, Status> {
        let views = self.node.peers.views();
        let peers = views
            .into_iter()
            .map(|v| {
                let lag = if v.heads.is_empty() {
                    0
                } else {
                    self.node.store.read(|c| c.lag_of(&v.heads))
                };
                let c = v.counters;
                api::PeerView {
                    site: v.site,
                    address: v.address.unwrap_or_default(),
                    state: v.state.to_string(),
                    direction: v
                        .direction
                        .map(|d| d.as_str().to_string())
                        .unwrap_or_default(),
                    healthy: v.healthy,
                    last_heartbeat_ms: v.since_heartbeat.map(|d| d.as_millis() as u64),
                    last_ack_ms: v.since_ack.map(|d| d.as_millis() as u64),
                    lag_versions: lag,
                    counters: Some(api::PeerCounters {
                        snapshots_sent: c.snapshots_sent,
                        snapshots_received: c.snapshots_received,
                        deltas_sent: c.deltas_sent,
                        deltas_received: c.deltas_received,
                        records_sent: c.records_sent,
                        records_received: c.records_received,
                        acks_received: c.acks_received,
                        nacks_received: c.nacks_received,
                        nacks_sent: c.nacks_sent,
                        sessions: c.sessions,
                        throttled_ms: c.throttled_ms,
                    }),
                    last_error: v.last_error,
                }
            })
            .collect();
        Ok(Response::new(api::PeersResponse { peers }))
    }

    async fn status(
        &self,
        _: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        let views = self.node.peers.views();
        let visible = visible_entries(&self.node, Instant::now());
        let (epoch, version, seq, exports) = self
            .node
            .store
            .read(|c| (c.epoch(), c.version(), c.position().seq, c.export_count()));
        Ok(Response::new(api::StatusResponse {
            site: self.node.site.clone(),
            trust_domain: self.node.trust_domain.clone(),
            epoch,
            version,
            seq,
            exports: exports as u32,
            entries_visible: visible as u32,
            peers: views.len() as u32,
            peers_healthy: views.iter().filter(|v| v.healthy).count() as u32,
            uptime_s: self.node.started.elapsed().as_secs(),
            listen: self.config.listen.to_string(),
            backend: Some(backend_status(&self.node.backend.get())),
            config: Some(config_status(self.node.config.get())),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        _: Request<api::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let node = self.node.clone();
        let mut head = node.store.subscribe();
        head.mark_changed();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            // Ends when the watcher goes away (send fails) or the daemon stops (sender dropped).
            while head.changed().await.is_ok() {
                if tx.send(Ok(watch_event(&node))).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// The stream of [`api::WatchEvent`]s of one watcher.
pub type WatchStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<api::WatchEvent, Status>> + Send>>;

/// `rules` as shown to operators: shares and the sites now serving each backend.
pub fn splits_view(
    node: &Node,
    rules: Vec<crate::splits::SplitRule>,
    changed: usize,
) -> api::SplitsResponse {
    let table = crate::routes::route_table(node, Instant::now());
    let sites = |ns: &str, name: &str| -> Vec<String> {
        table
            .services
            .iter()
            .find(|s| s.namespace == ns && s.name == name)
            .map(|s| s.destinations.iter().map(|d| d.site.clone()).collect())
            .unwrap_or_default()
    };
    api::SplitsResponse {
        splits: rules
            .iter()
            .map(|r| api::SplitView {
                service: r.service.clone(),
                namespace: r.namespace.clone(),
                source: r.source.clone(),
                backends: r
                    .backends
                    .iter()
                    .map(|(b, w)| api::SplitBackendView {
                        service: b.clone(),
                        weight: *w,
                        percent: r.percent(b),
                        sites: sites(&r.namespace, b),
                    })
                    .collect(),
            })
            .collect(),
        changed: u32::try_from(changed).unwrap_or(u32::MAX),
    }
}

fn watch_event(node: &Node) -> api::WatchEvent {
    node.store.read(|c| api::WatchEvent {
        seq: c.position().seq,
        entries: c.live_count() as u32,
    })
}

/// How many entries the catalog shows (those [`catalog_page`] lists: live, not expired),
/// counted without building them.
fn visible_entries(node: &Node, now: Instant) -> usize {
    node.store.read(|c| {
        node.store.liveness(|live| {
            c.entries()
                .filter(|(key, rec)| {
                    rec.service().is_some_and(|svc| {
                        let origin = live.state(&node.site, &key.origin, now);
                        !matches!(Liveness::entry_state(origin, svc, now), EntryState::Expired)
                    })
                })
                .count()
        })
    })
}

/// Most entries in one page of the admin API's catalog, and its default.
pub const MAX_PAGE_SIZE: u32 = 10_000;
const DEFAULT_PAGE_SIZE: u32 = 1_000;
/// A page stops after about this many bytes of entries.
const PAGE_BYTES: usize = 1 << 20;
/// Most name conflicts listed (on the first page).
const MAX_CONFLICTS: usize = 10_000;

/// One page of the catalog: live entries after `after`, at most `max_entries` of them and
/// about `max_bytes`; the first page (no `after`) also lists every origin and the conflicts.
pub fn catalog_page(
    node: &Node,
    now: Instant,
    after: Option<&model::Key>,
    max_entries: usize,
    max_bytes: usize,
) -> api::CatalogResponse {
    use prost::Message;
    let mut origins: BTreeMap<String, api::OriginView> = BTreeMap::new();
    let mut next: Option<model::Key> = None;
    node.store.read(|c| {
        node.store.liveness(|live| {
            let view = |origin: &str| {
                let head = c.heads().get(origin).cloned().unwrap_or_default();
                api::OriginView {
                    origin: origin.to_string(),
                    epoch: head.stamp.epoch,
                    version: head.stamp.version,
                    state: match live.state(&node.site, origin, now) {
                        OriginState::Local => "local",
                        OriginState::Live => "live",
                        OriginState::Unknown => "unknown",
                        OriginState::Stale(_) => "stale",
                    }
                    .to_string(),
                    last_heard_ms: live
                        .last_heard(origin)
                        .map(|t| now.saturating_duration_since(t).as_millis() as u64)
                        .unwrap_or(0),
                    entries: vec![],
                }
            };
            if after.is_none() {
                for origin in c.heads().keys() {
                    origins.insert(origin.clone(), view(origin));
                }
            }
            let (mut count, mut bytes) = (0usize, 0usize);
            for (key, rec) in c.entries_after(after) {
                if count >= max_entries || bytes >= max_bytes {
                    next = Some(key.clone());
                    break;
                }
                let Some(svc) = rec.service() else { continue };
                let state =
                    Liveness::entry_state(live.state(&node.site, &key.origin, now), svc, now);
                let (stale, served, expires) = match state {
                    EntryState::Fresh => (false, true, 0),
                    EntryState::Stale { served, expires_in } => {
                        (true, served, expires_in.as_secs().max(1))
                    }
                    EntryState::Expired => continue,
                };
                let entry = api::CatalogEntry {
                    service: Some(model::service_to_wire(key, rec.stamp, svc)),
                    stale,
                    served,
                    expires_in_s: expires,
                };
                count += 1;
                bytes += entry.encoded_len();
                origins
                    .entry(key.origin.clone())
                    .or_insert_with(|| view(&key.origin))
                    .entries
                    .push(entry);
            }
        })
    });
    // The token names the last entry of this page; the next page starts after it.
    let next_page_token = match (
        &next,
        origins.values().flat_map(|o| o.entries.last()).last(),
    ) {
        (Some(_), Some(last)) => last
            .service
            .as_ref()
            .map(|s| format!("{}/{}/{}", s.origin, s.namespace, s.name))
            .unwrap_or_default(),
        _ => String::new(),
    };
    let (conflicts, conflicts_omitted) = if after.is_none() {
        let mut all = crate::routes::conflicts(&crate::routes::served_names(node, now));
        let omitted = all.len().saturating_sub(MAX_CONFLICTS);
        all.truncate(MAX_CONFLICTS);
        (all, omitted as u32)
    } else {
        (Vec::new(), 0)
    };
    api::CatalogResponse {
        site: node.site.clone(),
        origins: origins.into_values().collect(),
        conflicts,
        next_page_token,
        conflicts_omitted,
    }
}

/// Reads a page token (`origin/namespace/name`).
fn page_key(token: &str) -> Result<Option<model::Key>, AdminError> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        AdminError::Invalid(crate::error::InvalidField::new(
            "page_token",
            token,
            "must be the next_page_token of a previous answer (origin/namespace/name)",
        ))
    };
    let mut parts = token.split('/');
    let (Some(origin), Some(namespace), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    for part in [origin, namespace, name] {
        names::dns_label("page_token", part).map_err(|_| bad())?;
    }
    Ok(Some(model::Key {
        origin: origin.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    }))
}

/// Every page of the catalog, merged into one answer (what `federationctl catalog` shows).
pub async fn catalog_all(
    client: &mut AdminClient<Channel>,
) -> Result<api::CatalogResponse, Status> {
    let mut all = api::CatalogResponse::default();
    let mut token = String::new();
    loop {
        let page = client
            .catalog(api::CatalogRequest {
                page_size: 0,
                page_token: token.clone(),
            })
            .await?
            .into_inner();
        if token.is_empty() {
            all.site = page.site;
            all.conflicts = page.conflicts;
            all.conflicts_omitted = page.conflicts_omitted;
        }
        for o in page.origins {
            match all.origins.iter_mut().find(|x| x.origin == o.origin) {
                Some(x) => x.entries.extend(o.entries),
                None => all.origins.push(o),
            }
        }
        // A server must move forward; anything else would loop for ever.
        if page.next_page_token.is_empty() {
            break;
        }
        if page.next_page_token <= token {
            return Err(Status::internal(format!(
                "the catalog's page token went back from {token:?} to {:?}",
                page.next_page_token
            )));
        }
        token = page.next_page_token;
    }
    all.origins.sort_by(|a, b| a.origin.cmp(&b.origin));
    Ok(all)
}

/// Binds the admin socket with mode 0600 (replacing a stale socket file). The socket never
/// exists at `path` with any other mode: it is bound inside a fresh folder only its owner can
/// enter (0700), given its mode there, and then renamed into place.
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("admin socket {} has no file name", path.display()),
        )
    })?;
    let mut private_name = name.to_owned();
    private_name.push(format!(".{}.d", std::process::id()));
    let private = dir.join(private_name);
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let inner = private.join("s");
    let bound = (|| {
        let l = tokio::net::UnixListener::bind(&inner)?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&inner, path)?;
        Ok(l)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Connects to a daemon's admin socket.
pub async fn connect(path: &Path) -> Result<AdminClient<Channel>, String> {
    let p: PathBuf = path.to_path_buf();
    if !p.exists() {
        return Err(format!(
            "admin socket {} does not exist: is federationd running? (set --admin-socket or MULTIMESH_ADMIN_SOCKET)",
            p.display()
        ));
    }
    let channel = tonic::transport::Endpoint::from_static("http://admin.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let p = p.clone();
            async move { UnixStream::connect(p).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| format!("cannot connect to admin socket {}: {e}", path.display()))?;
    Ok(AdminClient::new(channel))
}

/// The backend report in its wire form.
pub fn backend_status(r: &crate::report::BackendReport) -> api::BackendStatus {
    api::BackendStatus {
        kind: r.kind.clone(),
        mesh: r.mesh.clone(),
        last_pass_unix_ms: r.last_pass_unix_ms,
        error: r.error.clone(),
        problems: r
            .problems
            .values()
            .map(|p| api::ObjectProblem {
                object: p.object.clone(),
                reason: p.reason.clone(),
                refused: p.refused,
                attempts: p.attempts,
                since_unix_ms: p.since_unix_ms,
            })
            .collect(),
        next_retry_ms: r.next_retry_ms,
    }
}

/// The config report in its wire form.
pub fn config_status(r: crate::report::ConfigReport) -> api::ConfigStatus {
    api::ConfigStatus {
        last_change_unix_ms: r.last_change_unix_ms,
        error: r.error,
        restart_fields: r.restart_fields,
        peers_added: r.peers_added,
        peers_removed: r.peers_removed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_admin_socket_appears_with_mode_0600_and_replaces_a_stale_one() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        drop(bind(&path).unwrap());
        // A stale socket from an earlier run is replaced.
        let l = bind(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("admin.sock")]);
        let (accepted, connected) =
            tokio::join!(l.accept(), tokio::net::UnixStream::connect(&path));
        assert!(accepted.is_ok() && connected.is_ok());
    }
}
