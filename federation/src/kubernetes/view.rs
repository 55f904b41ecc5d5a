//! What one reconciliation pass reads of the cluster ([`Snapshot`]), and the two places it
//! comes from.
//!
//! - The controller keeps a kube-runtime reflector [`Stores`] per kind it reads, filled by its
//!   watches: a pass reads the stores and LISTs nothing. A watch that expires (410 Gone) or
//!   loses its API server relists, and the store swaps in the new list whole when it is done,
//!   so a store never mixes two lists. A pass waits until every store has its first list.
//! - `federationctl plan` runs one pass and no watches: [`Snapshot::list`] LISTs once.
//!
//! A store can lag the API server by one event: a pass may then apply an object that is
//! already there, or delete one already gone. Every write is a server-side apply (idempotent)
//! or a delete that takes 404 as done, and the write's own event wakes the next pass, which
//! sees it. Kinds multimesh writes are watched through its label only (its own objects), so
//! foreign objects of those kinds cost no memory; a wanted object missing from that store is
//! read once to tell "absent" from "someone else's" (a conflict).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Service as KService;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::ApiResource;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tracing::debug;

use super::controller::{Kinds, KubeError, api_err};
use super::{MANAGED_BY, MANAGED_BY_LABEL};

/// `apiVersion/kind`: how the snapshot files a kind.
pub fn kind_key(ar: &ApiResource) -> String {
    format!("{}/{}", ar.api_version, ar.kind)
}

fn owned_selector() -> String {
    format!("{MANAGED_BY_LABEL}={MANAGED_BY}")
}

/// One kind a pass reads, and whether only multimesh's own objects of it are needed.
struct Read {
    resource: ApiResource,
    only_owned: bool,
}

/// The kinds a pass reads: ServiceExports, EndpointSlices and traffic specs whole; the kinds
/// multimesh writes through its label (a kind that is both, such as HTTPRoute, whole).
fn reads(kinds: &Kinds) -> BTreeMap<String, Read> {
    let mut out = BTreeMap::new();
    for ar in kinds.owned.values().map(|(a, _)| a) {
        out.insert(
            kind_key(ar),
            Read {
                resource: ar.clone(),
                only_owned: true,
            },
        );
    }
    let whole = kinds
        .service_export
        .iter()
        .chain(&kinds.endpoint_slice)
        .chain(&kinds.specs);
    for ar in whole {
        out.insert(
            kind_key(ar),
            Read {
                resource: ar.clone(),
                only_owned: false,
            },
        );
    }
    out
}

/// The kinds a pass reads, as one line (`apiVersion/Kind`, with `(managed)` for a kind read
/// through multimesh's label only): when it changes, the watches start over.
pub(super) fn describe(kinds: &Kinds) -> String {
    reads(kinds)
        .into_iter()
        .map(|(key, r)| {
            if r.only_owned {
                format!("{key} (managed)")
            } else {
                key
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The objects of one pass.
#[derive(Default)]
pub struct Snapshot {
    /// By `apiVersion/kind`. For a kind multimesh writes and reads for nothing else, only its
    /// own objects.
    objects: BTreeMap<String, Vec<Arc<DynamicObject>>>,
    /// Every Service of the cluster.
    pub services: Vec<Arc<KService>>,
}

impl Snapshot {
    /// The objects of a kind (none when the kind is not read).
    pub fn of(&self, ar: &ApiResource) -> &[Arc<DynamicObject>] {
        self.objects
            .get(&kind_key(ar))
            .map_or(&[][..], Vec::as_slice)
    }

    /// LISTs every kind a pass reads, once (for a one-shot pass such as `federationctl plan`).
    pub(super) async fn list(client: &Client, kinds: &Kinds) -> Result<Self, KubeError> {
        let mut out = Snapshot::default();
        for (key, read) in reads(kinds) {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &read.resource);
            let params = if read.only_owned {
                ListParams::default().labels(&owned_selector())
            } else {
                ListParams::default()
            };
            let list = api
                .list(&params)
                .await
                .map_err(api_err(format!("listing {key}")))?;
            out.objects
                .insert(key, list.items.into_iter().map(Arc::new).collect());
        }
        let services: Api<KService> = Api::all(client.clone());
        out.services = services
            .list(&ListParams::default())
            .await
            .map_err(api_err("listing Services"))?
            .items
            .into_iter()
            .map(Arc::new)
            .collect();
        Ok(out)
    }
}

/// Reflector stores of every kind a pass reads, kept by watches.
pub struct Stores {
    kinds: BTreeMap<String, Store<DynamicObject>>,
    services: Store<KService>,
}

impl Stores {
    /// Starts one watch per kind (and one on Services) into `tasks`; each event wakes `wake`.
    pub(super) fn start(
        client: &Client,
        kinds: &Kinds,
        tasks: &mut tokio::task::JoinSet<()>,
        wake: &Arc<Notify>,
    ) -> Self {
        let mut stores = BTreeMap::new();
        for (key, read) in reads(kinds) {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &read.resource);
            let config = if read.only_owned {
                watcher::Config::default().labels(&owned_selector())
            } else {
                watcher::Config::default()
            };
            let writer = reflector::store::Writer::new(read.resource.clone());
            stores.insert(key.clone(), writer.as_reader());
            let events = watcher(api, config).default_backoff();
            tasks.spawn(follow(
                key,
                reflector::reflector(writer, events),
                wake.clone(),
            ));
        }
        let (services, writer) = reflector::store();
        let events = watcher(
            Api::<KService>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff();
        tasks.spawn(follow(
            "v1/Service".into(),
            reflector::reflector(writer, events),
            wake.clone(),
        ));
        Self {
            kinds: stores,
            services,
        }
    }

    /// The stores' objects now, once every store has its first list (waiting at most `wait`).
    pub async fn snapshot(&self, wait: Duration) -> Result<Snapshot, KubeError> {
        let ready = async {
            for s in self.kinds.values() {
                let _ = s.wait_until_ready().await;
            }
            let _ = self.services.wait_until_ready().await;
        };
        if tokio::time::timeout(wait, ready).await.is_err() {
            let waiting: Vec<&str> = self
                .kinds
                .iter()
                .filter(|(_, s)| s.wait_until_ready().now_or_never().is_none())
                .map(|(k, _)| k.as_str())
                .chain(
                    self.services
                        .wait_until_ready()
                        .now_or_never()
                        .is_none()
                        .then_some("v1/Service"),
                )
                .collect();
            return Err(KubeError::Syncing(waiting.join(", ")));
        }
        Ok(Snapshot {
            objects: self
                .kinds
                .iter()
                .map(|(k, s)| (k.clone(), s.state()))
                .collect(),
            services: self.services.state(),
        })
    }
}

/// Drives one reflector's watch and wakes the controller on every change.
async fn follow<K>(
    key: String,
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    wake: Arc<Notify>,
) {
    let mut events = std::pin::pin!(events);
    while let Some(ev) = events.next().await {
        match ev {
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone) => {
                wake.notify_one()
            }
            Ok(_) => {}
            Err(e) => debug!(kind = %key, error = %e, "watch interrupted; resuming"),
        }
    }
}
