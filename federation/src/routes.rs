//! RouteDiscovery: the route table this site's edge agent follows, derived from the catalog.
//!
//! Served on the peer listener to the site's own edge agent only (its `edge` identity); peers
//! and the site's own federationd identity are refused. Each served entry becomes a destination: the
//! origin site with its advertised ingress (or its relay, for an edge node), weight 1. The
//! site's own exports carry their consumer scope, which the agent's ingress enforces. The
//! site's traffic splits ([`crate::splits`]) are served with the backends the table can reach.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use multimesh_proto::routes::v1::{self as wire, route_discovery_server};
use prost::Message;
use tonic::{Request, Response, Status};

pub use multimesh_core::files::fingerprint;

use crate::catalog::{EntryState, Liveness};
use crate::model::{Port, Scope, Service, ServiceKey};
use crate::ownership;
use crate::splits::SplitRule;
use crate::sync::Node;
use crate::sync::server::PeerInfo;
use multimesh_proto::admin::v1::NameConflict;

/// The entries served at `now` (fresh, or stale with a policy to serve), grouped by name, with
/// the verdict of [`ownership::decide`] on each name's exporters.
pub fn served_names(node: &Node, now: Instant) -> BTreeMap<ServiceKey, ServedName> {
    let mut names: BTreeMap<ServiceKey, ServedName> = BTreeMap::new();
    node.store.read(|c| {
        node.store.liveness(|live| {
            for (key, rec) in c.entries() {
                let Some(svc) = rec.service() else { continue };
                let state =
                    Liveness::entry_state(live.state(&node.site, &key.origin, now), svc, now);
                let served = match state {
                    EntryState::Fresh => true,
                    EntryState::Stale { served, .. } => served,
                    EntryState::Expired => false,
                };
                if served {
                    names
                        .entry(key.service())
                        .or_default()
                        .exporters
                        .push((key.origin.clone(), svc.clone()));
                }
            }
        })
    });
    for n in names.values_mut() {
        let exporters: Vec<ownership::Exporter<'_>> = n
            .exporters
            .iter()
            .map(|(site, svc)| ownership::Exporter {
                site,
                share_with: &svc.share_with,
            })
            .collect();
        n.verdict = ownership::decide(&node.site, &exporters);
    }
    names
}

/// One name's served exporters and who may serve it here.
#[derive(Debug, Default)]
pub struct ServedName {
    /// (origin, what it exports), in key order.
    pub exporters: Vec<(String, Arc<Service>)>,
    /// Who serves it here.
    pub verdict: ownership::Verdict,
}

/// The names whose exporters disagree, as the admin API reports them.
pub fn conflicts(names: &BTreeMap<ServiceKey, ServedName>) -> Vec<NameConflict> {
    names
        .iter()
        .filter(|(_, n)| n.verdict.conflict())
        .map(|(key, n)| NameConflict {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            serving: n.verdict.serving.clone(),
            refused: n.verdict.refused.clone(),
        })
        .collect()
}

/// The route table for `node`'s edge agent at `now`: every name served here, with the
/// exporters [`crate::ownership`] admits as its destinations. Deterministic (sorted), so equal
/// catalogs give equal tables and versions.
pub fn route_table(node: &Node, now: Instant) -> wire::RouteTable {
    route_table_of(node, &served_names(node, now))
}

fn route_table_of(node: &Node, names: &BTreeMap<ServiceKey, ServedName>) -> wire::RouteTable {
    let mut services: BTreeMap<ServiceKey, wire::ServiceRoute> = BTreeMap::new();
    for (key, n) in names {
        for (origin, svc) in &n.exporters {
            if !n.verdict.serving.contains(origin) {
                continue;
            }
            let local = *origin == node.site;
            let consumers = match &svc.scope {
                Scope::All => vec![],
                Scope::Sites(s) => s.iter().cloned().collect(),
            };
            let route = services
                .entry(key.clone())
                .or_insert_with(|| wire::ServiceRoute {
                    name: key.name.clone(),
                    namespace: key.namespace.clone(),
                    ports: svc.ports.iter().map(Port::to_wire).collect(),
                    ..Default::default()
                });
            if local {
                // This site's own export is authoritative for ports and admission.
                route.ports = svc.ports.iter().map(Port::to_wire).collect();
                route.consumers = consumers.clone();
            }
            // An edge node behind this very site is reached over its own outbound link:
            // no relay and no address to dial.
            let behind_us = svc.via.as_deref() == Some(node.site.as_str());
            route.destinations.push(wire::Destination {
                site: origin.clone(),
                addresses: if local || behind_us {
                    vec![]
                } else {
                    svc.ingress.clone()
                },
                weight: 1,
                via: if behind_us {
                    String::new()
                } else {
                    svc.via.clone().unwrap_or_default()
                },
                consumers,
            });
        }
    }
    let splits = node
        .splits
        .list()
        .into_iter()
        .filter_map(|rule| {
            routable_split(&rule, |b| {
                services.contains_key(&ServiceKey::new(&rule.namespace, b))
            })
        })
        .collect();
    let mut table = wire::RouteTable {
        version: String::new(),
        services: services.into_values().collect(),
        splits,
    };
    for s in &mut table.services {
        s.destinations.sort_by(|a, b| a.site.cmp(&b.site));
    }
    table.version = format!("{}:{:016x}", node.site, fingerprint(&table.encode_to_vec()));
    table
}

/// The part of `rule` the edge agent can follow now: backends that `routable` (present in the
/// route table); `None` when no routable backend has a weight (calls then go to the root
/// service itself, as if there were no split).
pub fn routable_split(rule: &SplitRule, routable: impl Fn(&str) -> bool) -> Option<wire::Split> {
    let backends: Vec<wire::SplitBackend> = rule
        .backends
        .iter()
        .filter(|(b, _)| routable(b))
        .map(|(b, w)| wire::SplitBackend {
            service: b.clone(),
            weight: *w,
        })
        .collect();
    backends.iter().any(|b| b.weight > 0).then(|| wire::Split {
        service: rule.service.clone(),
        namespace: rule.namespace.clone(),
        backends,
    })
}

/// The RouteDiscovery service.
pub struct RouteService {
    node: Arc<Node>,
}

impl RouteService {
    /// Serves route tables of `node` to its edge agent.
    pub fn new(node: Arc<Node>) -> route_discovery_server::RouteDiscoveryServer<Self> {
        route_discovery_server::RouteDiscoveryServer::new(Self { node })
            .max_encoding_message_size(64 << 20)
    }
}

/// The stream of route tables of one watcher.
pub type RouteStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<wire::RouteTable, Status>> + Send>>;

/// How often tables are recomputed without a catalog change (stale marks change with time).
const RECHECK: Duration = Duration::from_millis(500);

#[tonic::async_trait]
impl route_discovery_server::RouteDiscovery for RouteService {
    type WatchStream = RouteStream;

    async fn watch(
        &self,
        request: Request<wire::WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let Some(info) = request.extensions().get::<PeerInfo>().cloned() else {
            return Err(Status::unauthenticated("no authenticated caller"));
        };
        if info.site != self.node.site || info.role != crate::identity::Role::Edge {
            tracing::warn!(caller = %info.site, role = %info.role, "route feed refused: only this site's own edge agent may watch its routes");
            return Err(Status::permission_denied(format!(
                "the {} of site {} may not watch the routes of site {}",
                info.role, info.site, self.node.site
            )));
        }
        let node = self.node.clone();
        let mut head = node.store.subscribe();
        let mut splits = node.splits.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last = String::new();
            loop {
                let names = served_names(&node, Instant::now());
                let table = route_table_of(&node, &names);
                if table.version != last {
                    last = table.version.clone();
                    tracing::debug!(version = %last, services = table.services.len(), "route table sent");
                    for c in conflicts(&names) {
                        tracing::warn!(
                            service = %format!("{}/{}", c.namespace, c.name),
                            serving = ?c.serving,
                            refused = ?c.refused,
                            "name exported by sites that do not agree to share it (share_with): refused exporters get no calls from this site"
                        );
                    }
                    if tx.send(Ok(table)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    r = head.changed() => if r.is_err() { return },
                    r = splits.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(RECHECK) => {}
                    () = tx.closed() => return,
                }
            }
        });
        tracing::info!(caller = %info.addr, "edge agent watching routes");
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
