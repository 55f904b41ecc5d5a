//! The Kubernetes backend's I/O: watches the cluster and the catalog, and reconciles both ways
//! with the pure functions of [`super::desired`] and [`super::plan`].
//!
//! Level-triggered: any watch event, catalog change or the resync timer schedules one full
//! reconciliation (debounced). The watches fill kube-runtime reflector stores
//! ([`super::view`]); a pass reads a snapshot of them and LISTs nothing, and each pass
//! recomputes everything from that snapshot and the catalog, so a lost event cannot leave state
//! behind: the next pass sees the truth. An expired watch (410 Gone) or an API-server restart
//! relists into the store.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use multimesh_core::backoff::Backoff;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::{ApiCapabilities, Scope as KScope};
use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
use serde_json::{Value, json};
use smi_adapters::model::ServiceInfo;
use smi_adapters::render::{Mesh, Options};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::desired::{
    self, Desired, ExportBase, ExportObject, LocalService, ServicePort, SiteMesh, SpecObject,
};
use super::plan::{self, Change, Existing};
use super::types::Condition;
use super::view::{self, Snapshot, Stores};
use super::{FIELD_MANAGER, KubeSettings, MANAGED_BY, MANAGED_BY_LABEL};
use crate::catalog::{EntryState, Liveness};
use crate::model::ServiceKey;
use crate::sync::Node;

/// Errors of one reconciliation pass; the pass is retried.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig: {0}")]
    Config(String),
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The client error.
        source: kube::Error,
    },
    /// A required API is not served (a CRD is not installed).
    #[error("{0} is not served by the API server (install its CRD: `federationctl crds`)")]
    Missing(String),
    /// The catalog could not be saved.
    #[error("saving the catalog: {0}")]
    Store(String),
    /// The watches of these kinds have not delivered their first list yet.
    #[error("waiting for the first list of {0}")]
    Syncing(String),
}

pub(super) fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> KubeError {
    let what = what.into();
    move |source| KubeError::Api { what, source }
}

/// Builds a client from the settings (kubeconfig file, else in-cluster / `$KUBECONFIG`).
pub async fn client(settings: &KubeSettings) -> Result<Client, KubeError> {
    let config = match &settings.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))
}

/// The API resources the backend uses, found by discovery.
#[derive(Clone, Default)]
pub(super) struct Kinds {
    pub(super) service_export: Option<ApiResource>,
    /// EndpointSlices: `discovery.k8s.io/v1`, or `v1beta1` on old servers.
    pub(super) endpoint_slice: Option<ApiResource>,
    /// Traffic specs found in the cluster (TrafficSplit, HTTPRouteGroup, ...).
    pub(super) specs: Vec<ApiResource>,
    /// Every `(apiVersion, kind)` multimesh may write, when served.
    pub(super) owned: BTreeMap<(String, String), (ApiResource, bool)>,
}

/// Traffic spec kinds read from the cluster: (group, kind).
const SPEC_KINDS: [(&str, &str); 5] = [
    ("split.smi-spec.io", "TrafficSplit"),
    ("specs.smi-spec.io", "HTTPRouteGroup"),
    ("specs.smi-spec.io", "TCPRoute"),
    ("access.smi-spec.io", "TrafficTarget"),
    ("gateway.networking.k8s.io", "HTTPRoute"),
];

/// Every `(apiVersion, kind)` multimesh may write on a site: ServiceImports and what any mesh
/// renderer produces (listed for all meshes, so a site that changes mesh cleans up).
pub fn owned_kinds() -> BTreeSet<(&'static str, &'static str)> {
    let mut out = BTreeSet::from([("multicluster.x-k8s.io/v1alpha1", "ServiceImport")]);
    for m in Mesh::ALL {
        out.extend(m.kinds().iter().copied());
    }
    out
}

fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

async fn discover(client: &Client) -> Kinds {
    let pinned = |api_version: &str, kind: &str| {
        let (g, v) = split_api_version(api_version);
        let gvk = GroupVersionKind::gvk(g, v, kind);
        let client = client.clone();
        async move { kube::discovery::pinned_kind(&client, &gvk).await.ok() }
    };
    let mut k = Kinds {
        service_export: pinned("multicluster.x-k8s.io/v1alpha1", "ServiceExport")
            .await
            .map(|x| x.0),
        ..Default::default()
    };
    k.endpoint_slice = match pinned("discovery.k8s.io/v1", "EndpointSlice").await {
        Some(x) => Some(x.0),
        None => pinned("discovery.k8s.io/v1beta1", "EndpointSlice")
            .await
            .map(|x| x.0),
    };
    let mut groups = BTreeMap::new();
    for (g, kind) in SPEC_KINDS {
        if !groups.contains_key(g) {
            groups.insert(g, kube::discovery::group(client, g).await.ok());
        }
        if let Some(Some(group)) = groups.get(g)
            && let Some((ar, _)) = group.recommended_kind(kind)
        {
            k.specs.push(ar);
        }
    }
    for (api_version, kind) in owned_kinds() {
        if let Some((ar, caps)) = pinned(api_version, kind).await {
            let namespaced = matches!(
                caps,
                ApiCapabilities {
                    scope: KScope::Namespaced,
                    ..
                }
            );
            k.owned
                .insert((api_version.into(), kind.into()), (ar, namespaced));
        }
    }
    k
}

/// A cluster as the backend sees it: a client and the kinds its API server serves.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    settings: KubeSettings,
    kinds: Kinds,
}

impl Cluster {
    /// Connects (builds the client) and discovers the served kinds.
    pub async fn connect(settings: &KubeSettings) -> Result<Self, KubeError> {
        let client = client(settings).await?;
        let kinds = discover(&client).await;
        Ok(Self {
            client,
            settings: settings.clone(),
            kinds,
        })
    }

    /// Discovers the served kinds again (CRDs come and go).
    pub async fn rediscover(&mut self) {
        self.kinds = discover(&self.client).await;
    }

    /// Reads the cluster once (LISTs every kind a pass reads), for a one-shot pass.
    pub async fn snapshot(&self) -> Result<Snapshot, KubeError> {
        Snapshot::list(&self.client, &self.kinds).await
    }

    /// What the import side wants, and the objects multimesh owns now, from `snapshot`.
    pub async fn desired_and_existing(
        &self,
        site: &str,
        remote: &BTreeMap<ServiceKey, ServiceInfo>,
        snapshot: &Snapshot,
    ) -> Result<(Desired, Vec<Existing>), KubeError> {
        let mut specs = Vec::new();
        let mut spec_namespaces = BTreeSet::new();
        for ar in &self.kinds.specs {
            for o in snapshot.of(ar) {
                if is_owned(&o.metadata.labels) {
                    continue; // what multimesh rendered is not a traffic spec to translate
                }
                let ns = o.metadata.namespace.clone().unwrap_or_default();
                let name = o.metadata.name.clone().unwrap_or_default();
                spec_namespaces.insert(ns.clone());
                let mut v = serde_json::to_value(&**o).unwrap_or(Value::Null);
                v["apiVersion"] = json!(ar.api_version);
                v["kind"] = json!(ar.kind);
                specs.push(SpecObject {
                    key: format!("{}/{ns}/{name}", ar.kind),
                    object: v,
                });
            }
        }
        // Local Services of the namespaces holding specs: their ports.
        for s in &snapshot.services {
            let ns = s.metadata.namespace.clone().unwrap_or_default();
            if !spec_namespaces.contains(&ns) || is_owned(&s.metadata.labels) {
                continue; // our own mirrors are not local services
            }
            let name = s.metadata.name.clone().unwrap_or_default();
            let mut v = serde_json::to_value(&**s).unwrap_or(Value::Null);
            v["apiVersion"] = json!("v1");
            v["kind"] = json!("Service");
            specs.push(SpecObject {
                key: format!("Service/{ns}/{name}"),
                object: v,
            });
        }
        specs.sort_by(|a, b| a.key.cmp(&b.key));
        let mesh = SiteMesh::parse(&self.settings.mesh).unwrap_or(SiteMesh::None);
        let opts = self.options(snapshot);
        let desired = desired::imports(site, mesh, remote, &specs, &opts);
        // What multimesh owns now, over every kind it may write.
        let mut existing = Vec::new();
        for (ar, _) in self.kinds.owned.values() {
            for o in snapshot.of(ar) {
                if !is_owned(&o.metadata.labels) {
                    continue; // a kind read whole (HTTPRoute) holds others' objects too
                }
                let mut v = serde_json::to_value(&**o).unwrap_or(Value::Null);
                v["apiVersion"] = json!(ar.api_version);
                v["kind"] = json!(ar.kind);
                existing.push(Existing {
                    object: v,
                    owned: true,
                });
            }
        }
        // A desired object the stores do not hold as ours may still exist: without our label it
        // belongs to someone else. With it, it is ours and the store lags behind the watch (it
        // was written a moment ago); taking it for someone else's made the plan give back the
        // Endpoints of a Service just created (see the CI failure in kubernetes.rs).
        let owned: BTreeSet<String> = existing
            .iter()
            .map(|e| desired::object_key(&e.object))
            .collect();
        for d in &desired.objects {
            if owned.contains(&desired::object_key(d)) {
                continue;
            }
            let Some(api) = self.api_for(d) else { continue };
            let name = d["metadata"]["name"].as_str().unwrap_or_default();
            if let Some(o) = api
                .get_opt(name)
                .await
                .map_err(api_err(format!("reading {}", desired::object_key(d))))?
            {
                existing.push(Existing {
                    owned: is_owned(&o.metadata.labels),
                    object: with_type(serde_json::to_value(&o).unwrap_or(Value::Null), d),
                });
            }
        }
        Ok((desired, existing))
    }

    /// Where imported services are sent (the edge agent's Service, read from `snapshot`).
    pub fn options(&self, snapshot: &Snapshot) -> Options {
        let (ns, name) = self.settings.edge();
        let edge_ips = snapshot
            .services
            .iter()
            .find(|s| {
                s.metadata.namespace.as_deref() == Some(ns)
                    && s.metadata.name.as_deref() == Some(name)
            })
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.cluster_ip.clone())
            .filter(|ip| !ip.is_empty() && ip != "None")
            .into_iter()
            .collect();
        Options {
            edge_host: self
                .settings
                .edge_address
                .clone()
                .unwrap_or_else(|| format!("{name}.{ns}.svc.cluster.local")),
            edge_http_port: self.settings.edge_http_port,
            edge_ips,
            trust_domain: self.settings.mesh_trust_domain.clone(),
            import_all: true,
        }
    }

    /// The API of an object's kind, when served.
    pub fn api_for(&self, obj: &Value) -> Option<Api<DynamicObject>> {
        let key = (
            obj["apiVersion"].as_str()?.to_string(),
            obj["kind"].as_str()?.to_string(),
        );
        let (ar, namespaced) = self.kinds.owned.get(&key)?;
        let client = self.client.clone();
        Some(if *namespaced {
            Api::namespaced_with(client, obj["metadata"]["namespace"].as_str()?, ar)
        } else {
            Api::all_with(client, ar)
        })
    }
}

/// Runs the backend until `shutdown`: connects (retrying with back-off), then reconciles on
/// every change.
pub async fn run(
    node: Arc<Node>,
    settings: KubeSettings,
    base: ExportBase,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        match client(&settings).await {
            Ok(client) => {
                let mut c = Controller::new(node.clone(), settings.clone(), base.clone(), client);
                c.run(shutdown.clone()).await;
                return;
            }
            Err(e) => warn!(error = %e, "kubernetes backend: cannot build a client; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The reconciler of one site.
pub struct Controller {
    node: Arc<Node>,
    base: ExportBase,
    /// The client and settings, with the kinds discovered.
    cluster: Cluster,
    recorder: Recorder,
    /// What was last reported on each spec object (to emit an Event only on a change).
    reported: BTreeMap<String, String>,
    /// Exports this backend put in the catalog.
    exported: BTreeSet<ServiceKey>,
    /// Conflicts already reported.
    conflicts: BTreeSet<String>,
    /// Remote services left out by `import_namespaces`, already reported.
    skipped: BTreeSet<String>,
    /// Objects whose last apply or delete failed, with the error (reported once per error).
    failed: BTreeMap<String, String>,
}

impl Controller {
    /// A controller over `client`.
    pub fn new(node: Arc<Node>, settings: KubeSettings, base: ExportBase, client: Client) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "multimesh-federationd".into(),
                instance: Some(node.site.clone()),
            },
        );
        let exported = node.store.read(|c| c.declared().clone());
        Self {
            node,
            cluster: Cluster {
                client,
                settings,
                kinds: Kinds::default(),
            },
            base,
            recorder,
            reported: BTreeMap::new(),
            exported,
            conflicts: BTreeSet::new(),
            skipped: BTreeSet::new(),
            failed: BTreeMap::new(),
        }
    }

    async fn run(&mut self, shutdown: CancellationToken) {
        let site = self.node.site.clone();
        let wake = Arc::new(Notify::new());
        let mut watchers = tokio::task::JoinSet::new();
        let mut stores: Option<Stores> = None;
        let mut reading = String::new();
        let mut catalog = self.node.store.subscribe();
        let resync = Duration::from_secs(self.cluster.settings.resync_seconds);
        let mut next_discovery = Instant::now();
        let mut failures = 0u32;
        let pass_backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(8));
        loop {
            if Instant::now() >= next_discovery {
                self.cluster.rediscover().await;
                let now = view::describe(&self.cluster.kinds);
                if stores.is_none() || now != reading {
                    watchers.abort_all();
                    stores = Some(Stores::start(
                        &self.cluster.client,
                        &self.cluster.kinds,
                        &mut watchers,
                        &wake,
                    ));
                    info!(site = %site, watching = %now, "kubernetes backend: watching");
                    reading = now;
                }
                next_discovery = Instant::now() + resync;
            }
            let outcome = match &stores {
                Some(stores) => match stores.snapshot(Duration::from_secs(10)).await {
                    Ok(snapshot) => self.reconcile(&snapshot).await,
                    Err(e) => Err(e),
                },
                None => Ok(()),
            };
            let pass_error = match &outcome {
                Ok(()) => {
                    failures = 0;
                    String::new()
                }
                Err(e) => {
                    failures += 1;
                    warn!(site = %site, error = %e, failures, "kubernetes reconciliation failed; retrying");
                    next_discovery = Instant::now();
                    e.to_string()
                }
            };
            // Objects the cluster or its mesh did not take are tried again sooner than the
            // resync: 1 s, doubling per failed pass, at most the resync period or 60 s.
            let cap = resync.min(Duration::from_secs(60)).as_millis() as u64;
            let object_retry = self
                .node
                .backend
                .get()
                .retry_ms(cap)
                .map(Duration::from_millis);
            // A failed pass is tried again after 0.5 s, doubling per failure up to 8 s.
            let retry = if failures > 0 {
                pass_backoff.delay_after(failures)
            } else {
                object_retry.unwrap_or(resync)
            };
            self.node.backend.update(|b| {
                b.last_pass_unix_ms = crate::report::now_unix_ms();
                b.error = pass_error;
                b.next_retry_ms = retry.as_millis() as u64;
            });
            tokio::select! {
                _ = wake.notified() => {}
                r = catalog.changed() => { if r.is_err() { return; } }
                _ = tokio::time::sleep(retry) => {}
                _ = shutdown.cancelled() => { watchers.abort_all(); return; }
            }
            // Debounce: one pass for a burst of events.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One full pass: exports, then imports.
    pub async fn reconcile(&mut self, snapshot: &Snapshot) -> Result<(), KubeError> {
        self.reconcile_exports(snapshot).await?;
        self.reconcile_imports(snapshot).await
    }

    async fn reconcile_exports(&mut self, snapshot: &Snapshot) -> Result<(), KubeError> {
        let Some(se) = self.cluster.kinds.service_export.clone() else {
            return Err(KubeError::Missing(
                "multicluster.x-k8s.io/v1alpha1 ServiceExport".into(),
            ));
        };
        let exports_api: Api<DynamicObject> = Api::all_with(self.cluster.client.clone(), &se);
        let exports = snapshot.of(&se);
        let mut ready: BTreeMap<ServiceKey, usize> = BTreeMap::new();
        if let Some(es) = &self.cluster.kinds.endpoint_slice {
            for s in snapshot.of(es) {
                let ns = s.metadata.namespace.clone().unwrap_or_default();
                let Some(svc) = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                else {
                    continue;
                };
                *ready.entry(ServiceKey::new(&ns, svc)).or_default() += ready_endpoints(&s.data);
            }
        }
        let local: BTreeMap<ServiceKey, LocalService> = snapshot
            .services
            .iter()
            .map(|s| {
                let key = ServiceKey {
                    namespace: s.metadata.namespace.clone().unwrap_or_default(),
                    name: s.metadata.name.clone().unwrap_or_default(),
                };
                let ports = s
                    .spec
                    .as_ref()
                    .and_then(|sp| sp.ports.as_ref())
                    .map(|ps| {
                        ps.iter()
                            .map(|p| ServicePort {
                                name: p.name.clone().unwrap_or_default(),
                                port: p.port,
                                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                                app_protocol: p.app_protocol.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let n = ready.get(&key).copied().unwrap_or(0);
                (
                    key,
                    LocalService {
                        ports,
                        ready_endpoints: n,
                    },
                )
            })
            .collect();
        let site = self.node.site.clone();
        let mut wanted = BTreeSet::new();
        let mut changed = false;
        for obj in exports {
            let eo = ExportObject {
                namespace: obj.metadata.namespace.clone().unwrap_or_default(),
                name: obj.metadata.name.clone().unwrap_or_default(),
                annotations: obj.metadata.annotations.clone().unwrap_or_default(),
                labels: serde_json::from_value(obj.data["spec"]["exportedLabels"].clone())
                    .unwrap_or_default(),
            };
            let key = ServiceKey::new(&eo.namespace, &eo.name);
            let outcome = desired::export(&eo, local.get(&key), &self.base);
            let conflict = outcome.as_ref().ok().and_then(|svc| {
                let others = self.node.store.read(|c| {
                    c.entries()
                        .filter(|(k, r)| {
                            k.origin != site
                                && k.namespace == eo.namespace
                                && k.name == eo.name
                                && r.service().is_some()
                        })
                        .filter_map(|(k, r)| {
                            r.service().map(|s| (k.origin.clone(), s.ports.clone()))
                        })
                        .collect::<Vec<_>>()
                });
                desired::conflict(svc, &others)
            });
            if let Ok(svc) = &outcome {
                wanted.insert(key.clone());
                let same = self.node.store.read(|c| {
                    c.exports().any(|(k, r)| {
                        k.namespace == key.namespace
                            && k.name == key.name
                            && r.service().is_some_and(|s| **s == *svc)
                    })
                });
                if !same {
                    self.node
                        .store
                        .export(&key.namespace, &key.name, svc.clone())
                        .map_err(|e| KubeError::Store(e.to_string()))?;
                    changed = true;
                    info!(site = %site, service = %key, scope = %svc.scope, "exported from ServiceExport");
                }
            }
            self.write_export_status(&exports_api, obj, &outcome, conflict)
                .await?;
        }
        let gone: Vec<_> = self.exported.difference(&wanted).cloned().collect();
        for key in gone {
            if self.node.store.unexport(&key.namespace, &key.name).is_ok() {
                changed = true;
                info!(site = %site, service = %key, "withdrawn: ServiceExport deleted or not ready");
            }
        }
        self.node.store.touch(|c| c.set_declared(wanted.clone()));
        self.exported = wanted;
        if changed {
            let store = self.node.store.clone();
            tokio::task::spawn_blocking(move || store.flush())
                .await
                .map_err(|e| KubeError::Store(e.to_string()))?
                .map_err(|e| KubeError::Store(e.to_string()))?;
        }
        Ok(())
    }

    async fn write_export_status(
        &self,
        api: &Api<DynamicObject>,
        obj: &DynamicObject,
        outcome: &Result<crate::model::Service, desired::NotExported>,
        conflict: Option<String>,
    ) -> Result<(), KubeError> {
        let previous: Vec<Condition> =
            serde_json::from_value(obj.data["status"]["conditions"].clone()).unwrap_or_default();
        let now = now_rfc3339();
        let conditions =
            desired::export_conditions(outcome, conflict, obj.metadata.generation, &previous, &now);
        if conditions == previous {
            return Ok(());
        }
        let ns = obj.metadata.namespace.clone().unwrap_or_default();
        let name = obj.metadata.name.clone().unwrap_or_default();
        let api: Api<DynamicObject> =
            Api::namespaced_with(api.clone().into_client(), &ns, &self.export_resource());
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": conditions}})),
        )
        .await
        .map_err(api_err(format!(
            "writing the status of ServiceExport {ns}/{name}"
        )))?;
        Ok(())
    }

    fn export_resource(&self) -> ApiResource {
        self.cluster
            .kinds
            .service_export
            .clone()
            .unwrap_or_else(|| {
                ApiResource::from_gvk(&GroupVersionKind::gvk(
                    "multicluster.x-k8s.io",
                    "v1alpha1",
                    "ServiceExport",
                ))
            })
    }

    /// The remote services this site may see and route to now, in the namespaces it imports
    /// into; the others are reported once each.
    fn remote(&mut self) -> BTreeMap<ServiceKey, ServiceInfo> {
        let mut remote = self.served_remote();
        let allowed = &self.cluster.settings.import_namespaces;
        remote.retain(|key, info| {
            if super::namespace_allowed(&key.namespace, allowed) {
                return true;
            }
            let key = key.to_string();
            if self.skipped.insert(key.clone()) {
                let origin = info.remote.as_ref().map(|r| r.site.as_str()).unwrap_or("?");
                warn!(site = %self.node.site, service = %key, origin, "remote service not imported: its namespace is not in kubernetes.import_namespaces (protected namespaces need naming exactly)");
            }
            false
        });
        remote
    }

    /// The remote services this site may see and route to now.
    fn served_remote(&self) -> BTreeMap<ServiceKey, ServiceInfo> {
        let now = Instant::now();
        let site = &self.node.site;
        self.node.store.read(|c| {
            self.node.store.liveness(|live| {
                c.entries()
                    .filter(|(k, _)| &k.origin != site)
                    .filter_map(|(k, r)| {
                        let svc = r.service()?;
                        let state =
                            Liveness::entry_state(live.state(site, &k.origin, now), svc, now);
                        let served = match state {
                            EntryState::Fresh => true,
                            EntryState::Stale { served, .. } => served,
                            EntryState::Expired => false,
                        };
                        if served {
                            desired::remote_info(k, svc)
                        } else {
                            None
                        }
                    })
                    .collect()
            })
        })
    }

    async fn reconcile_imports(&mut self, snapshot: &Snapshot) -> Result<(), KubeError> {
        let remote = self.remote();
        let (desired, existing) = self
            .cluster
            .desired_and_existing(&self.node.site, &remote, snapshot)
            .await?;
        let (changes, unchanged) = plan::plan(&desired.objects, &existing);
        let site = self.node.site.clone();
        let mut applied = 0;
        let mut refused: Vec<(Value, String)> = Vec::new();
        let mut failed: Vec<(Value, String)> = Vec::new();
        let mut missing = BTreeSet::new();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for change in &changes {
            let obj = change.object();
            let key = desired::object_key(obj);
            let Some(api) = self.cluster.api_for(obj) else {
                missing.insert(format!(
                    "{} {}",
                    obj["apiVersion"].as_str().unwrap_or_default(),
                    obj["kind"].as_str().unwrap_or_default()
                ));
                continue;
            };
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            match change {
                Change::Create(o) | Change::Update(o) => {
                    match api.patch(name, &params, &Patch::Apply(o)).await {
                        Ok(_) => {
                            applied += 1;
                            info!(site = %site, object = %key, change = change.verb(), "applied");
                        }
                        // The server refused this object (invalid for its CRD, denied by an
                        // admission webhook or policy such as the mesh's validation): report it
                        // on the object and on its spec, go on with the others, and try again
                        // with back-off (a policy or a webhook can change its mind).
                        Err(kube::Error::Api(e)) if matches!(e.code, 400 | 403 | 422) => {
                            warn!(site = %site, object = %key, error = %e.message, "refused by the API server");
                            refused.push((o.clone(), e.message.clone()));
                        }
                        // Anything else (its namespace missing, a timeout): this object fails
                        // this pass and is tried again on the next; the rest of the pass, and
                        // garbage collection, go on.
                        Err(kube::Error::Api(e)) => failed.push((
                            o.clone(),
                            format!(
                                "the API server answered {} {}: {}",
                                e.code, e.reason, e.message
                            ),
                        )),
                        Err(e) => failed.push((o.clone(), format!("applying: {e}"))),
                    }
                }
                Change::Delete(o) => match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => info!(site = %site, object = %key, "deleted: no longer wanted"),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => failed.push((o.clone(), format!("deleting: {e}"))),
                },
                Change::Conflict(_) => {
                    // Said once per object, not on every pass.
                    if self.conflicts.insert(key.clone()) {
                        warn!(site = %site, object = %key, "not applied: conflicts with an object not managed by multimesh (left alone)");
                    }
                }
            }
        }
        for m in &missing {
            warn!(site = %site, kind = %m, "not applied: the API server does not serve this kind (install its CRD)");
        }
        self.report_failures(&failed, &refused).await;
        debug!(site = %site, applied, unchanged, refused = refused.len(), "imports reconciled");
        let mut desired = desired;
        // A refused object counts against the spec it was rendered from.
        for (o, message) in refused {
            let source = o["metadata"]["annotations"]["multimesh.io/source"]
                .as_str()
                .and_then(source_key)
                .unwrap_or_default();
            desired.diagnostics.entry(source).or_default().push(
                smi_adapters::diag::Diagnostic::error(
                    desired::object_key(&o),
                    "",
                    format!("refused by the API server: {message}"),
                ),
            );
        }
        self.report(&desired, snapshot).await;
        Ok(())
    }

    /// Reports objects that failed or were refused this pass: in the status report (with
    /// attempts, for the back-off), and once per object and error a warning and a Warning Event
    /// on the object (which the API server keeps even when the object itself could not be
    /// written). Objects that succeed again are forgotten.
    async fn report_failures(&mut self, failed: &[(Value, String)], refused: &[(Value, String)]) {
        let all = failed
            .iter()
            .map(|(o, e)| (o, e, false))
            .chain(refused.iter().map(|(o, e)| (o, e, true)));
        let previous = self.node.backend.get();
        let problems = previous.next_problems(
            crate::report::now_unix_ms(),
            all.clone()
                .map(|(o, e, r)| (desired::object_key(o), e.clone(), r)),
        );
        self.node.backend.update(|b| b.problems = problems);
        let now: BTreeMap<String, String> = all
            .clone()
            .map(|(o, e, _)| (desired::object_key(o), e.clone()))
            .collect();
        for (o, error, was_refused) in all {
            let key = desired::object_key(o);
            if self.failed.get(&key) == Some(error) {
                continue;
            }
            let reason = if was_refused {
                "ApplyRefused"
            } else {
                "ApplyFailed"
            };
            warn!(site = %self.node.site, object = %key, error = %error, reason, "not applied this pass (tried again with back-off; the rest of the pass goes on)");
            let reference = ObjectReference {
                api_version: o["apiVersion"].as_str().map(str::to_string),
                kind: o["kind"].as_str().map(str::to_string),
                name: o["metadata"]["name"].as_str().map(str::to_string),
                namespace: o["metadata"]["namespace"].as_str().map(str::to_string),
                ..Default::default()
            };
            let ev = KEvent {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(truncate(error, 1000)),
                action: "Apply".into(),
                secondary: None,
            };
            if let Err(e) = self.recorder.publish(&ev, &reference).await {
                debug!(object = %key, error = %e, "cannot record an Event");
            }
        }
        self.failed = now;
    }

    /// Reports each traffic spec's translation as an Event on it, when the outcome changed.
    async fn report(&mut self, desired: &Desired, snapshot: &Snapshot) {
        for ar in self.cluster.kinds.specs.clone() {
            for o in snapshot.of(&ar) {
                if is_owned(&o.metadata.labels) {
                    continue;
                }
                let ns = o.metadata.namespace.clone().unwrap_or_default();
                let name = o.metadata.name.clone().unwrap_or_default();
                let key = format!("{}/{ns}/{name}", ar.kind);
                let diags = desired.diagnostics.get(&key).cloned().unwrap_or_default();
                let joined = || {
                    diags
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                let (type_, reason, note) = if desired::has_errors(&diags) {
                    (EventType::Warning, "TranslationFailed", joined())
                } else if !diags.is_empty() {
                    (EventType::Warning, "TranslatedInexactly", joined())
                } else {
                    (
                        EventType::Normal,
                        "Translated",
                        format!("rendered for mesh {}", self.cluster.settings.mesh),
                    )
                };
                let fingerprint = format!(
                    "{:?}/{reason}/{note}/{:?}",
                    o.metadata.generation, o.metadata.uid
                );
                if self.reported.get(&key) == Some(&fingerprint) {
                    continue;
                }
                let reference = ObjectReference {
                    api_version: Some(ar.api_version.clone()),
                    kind: Some(ar.kind.clone()),
                    name: Some(name.clone()),
                    namespace: Some(ns.clone()),
                    uid: o.metadata.uid.clone(),
                    ..Default::default()
                };
                let ev = KEvent {
                    type_,
                    reason: reason.into(),
                    note: Some(truncate(&note, 1000)),
                    action: "Translate".into(),
                    secondary: None,
                };
                match self.recorder.publish(&ev, &reference).await {
                    Ok(()) => {
                        if type_ == EventType::Warning {
                            warn!(site = %self.node.site, object = %key, reason, note = %note, "traffic spec not fully translated");
                        }
                        self.reported.insert(key, fingerprint);
                    }
                    Err(e) => warn!(object = %key, error = %e, "cannot record an Event"),
                }
            }
        }
    }
}

/// `Kind/ns/name` from a `multimesh.io/source` annotation (`KIND APIVERSION NS/NAME`).
fn source_key(annotation: &str) -> Option<String> {
    let mut parts = annotation.split_whitespace();
    let kind = parts.next()?;
    let _api = parts.next()?;
    let object = parts.next()?;
    Some(format!("{kind}/{object}"))
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn with_type(mut v: Value, like: &Value) -> Value {
    v["apiVersion"] = like["apiVersion"].clone();
    v["kind"] = like["kind"].clone();
    v
}

fn is_owned(labels: &Option<BTreeMap<String, String>>) -> bool {
    labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY)
}

/// Ready endpoints of one EndpointSlice (v1 or v1beta1): `conditions.ready` unset counts as
/// ready, as the API documents.
fn ready_endpoints(slice: &Value) -> usize {
    slice["endpoints"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .filter(|e| e["conditions"]["ready"].as_bool() != Some(false))
                .map(|e| e["addresses"].as_array().map_or(0, |a| a.len().min(1)))
                .sum()
        })
        .unwrap_or(0)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}
