//! The route table of an edge agent (pure): which sites serve each service, with what weight,
//! which sites may call this site's services, and traffic splits between services.
//!
//! The table arrives whole (from a file or from `federationd`'s RouteDiscovery watch) and is
//! swapped atomically; requests in flight keep the table they started with.

pub mod balance;
pub mod feed;
pub mod published;

use crate::config::LocalService;
use std::collections::{BTreeMap, BTreeSet};

use http::HeaderValue;
use http::uri::Authority;
use multimesh_core::error::InvalidField;
use multimesh_core::names;
use multimesh_core::service::Protocol;
use serde::{Deserialize, Serialize};

pub use multimesh_core::service::{CLUSTERSET_SUFFIX, ServiceKey};

/// A host as a caller names it: the service and, when given, the port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The service.
    pub service: ServiceKey,
    /// The port, when the caller named one.
    pub port: Option<u16>,
}

/// The suffix of a Linkerd mirror Service's name (`NAME-clusterset`): calls to the mirror
/// arrive here with the Host their caller used for it.
pub const MIRROR_SUFFIX: &str = "-clusterset";

/// Parses `NAME.NAMESPACE.svc.clusterset.local[:PORT]` (also `NAME.NAMESPACE[.svc][:PORT]`),
/// and a mirror Service's name in any of its forms,
/// `NAME-clusterset.NAMESPACE[.svc[.CLUSTER-DOMAIN]][:PORT]`, as service `NAME`. A plain
/// cluster-local name (`NAME.NAMESPACE.svc.cluster.local`) names a service of this cluster, not
/// one this agent routes: it is refused.
pub fn parse_host(host: &str) -> Option<Target> {
    let (name_part, port) = match host.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
        None => (host, None),
    };
    let trimmed = name_part.trim_end_matches('.');
    // Callers almost always send lower case: copy only when they did not.
    let lower: std::borrow::Cow<'_, str> = if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        trimmed.to_ascii_lowercase().into()
    } else {
        trimmed.into()
    };
    let clusterset = lower
        .strip_suffix(CLUSTERSET_SUFFIX)
        .and_then(|b| b.strip_suffix('.'));
    let in_cluster_domain = clusterset.is_none() && lower.contains(".svc.");
    let base = match clusterset {
        Some(b) => b,
        None => match lower.split_once(".svc.") {
            Some((b, _)) => b,
            None => lower.strip_suffix(".svc").unwrap_or(&lower),
        },
    };
    let (mut name, namespace) = base.split_once('.')?;
    if clusterset.is_none() {
        match name.strip_suffix(MIRROR_SUFFIX) {
            Some(mirrored) => name = mirrored,
            None if in_cluster_domain => return None,
            None => {}
        }
    }
    if names::dns_label("name", name).is_err() || names::dns_label("namespace", namespace).is_err()
    {
        return None;
    }
    Some(Target {
        service: ServiceKey::new(namespace, name),
        port,
    })
}

/// One port of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    /// Port name.
    #[serde(default)]
    pub name: String,
    /// Port number.
    pub port: u16,
    /// Application protocol.
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
}

/// A service port as calls name it, `NAME.NAMESPACE.svc.clusterset.local:PORT`: the
/// `:authority` of calls to other sites and the `Host` of HTTP/1.1 calls to workloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortAddress {
    /// As a URI authority.
    pub authority: Authority,
    /// As a header value.
    pub host: HeaderValue,
}

impl PortAddress {
    fn new(host: &str, port: u16) -> Option<Self> {
        let authority = Authority::try_from(format!("{host}:{port}")).ok()?;
        let host = HeaderValue::from_str(authority.as_str()).ok()?;
        Some(Self { authority, host })
    }
}

fn default_protocol() -> Protocol {
    Protocol::Http
}

/// A site that serves a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// The site.
    pub site: String,
    /// Its edge agent's ingress addresses (`host:port`, host may be a DNS name). Empty for this
    /// site itself, and for an edge node reached through its outbound link.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Relative weight; 0 takes no new traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Reach the site through this site's edge agent (an edge node behind its parent);
    /// `addresses` are then the relay's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The sites whose callers that site admits for the service (empty: every site). A parent
    /// relays its edge node's calls only where the node itself is admitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
}

fn default_weight() -> u32 {
    1
}

/// Where a service runs and who may call it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRoute {
    /// Service name.
    pub name: String,
    /// Namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Ports.
    pub ports: Vec<PortSpec>,
    /// The sites serving it (this site included when it runs here).
    #[serde(default)]
    pub destinations: Vec<Destination>,
    /// Sites whose callers this site's ingress admits for it (empty: every site).
    #[serde(default)]
    pub consumers: Vec<String>,
    /// When the service also runs on this site, send every call here while it is healthy
    /// (weights then only matter for failover).
    #[serde(default)]
    pub prefer_local: bool,
}

/// A service's route as calls use it: compiled from a [`ServiceRoute`] when the table is built,
/// with everything a call needs made once, and no optional or blank field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The service.
    pub key: ServiceKey,
    /// `NAMESPACE/NAME` (logs, metrics, health keys).
    pub id: String,
    /// `NAME.NAMESPACE.svc.clusterset.local`.
    pub host: String,
    /// Ports, each with the address calls name it by.
    pub ports: Vec<RoutePort>,
    /// The sites serving it (this site included when it runs here).
    pub destinations: Vec<RouteDest>,
    /// Sites whose callers this site's ingress admits for it (empty: every site).
    pub consumers: Vec<String>,
    /// Send every call here while the service is healthy here.
    pub prefer_local: bool,
}

/// A port of a [`Route`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePort {
    /// Port name.
    pub name: String,
    /// Port number.
    pub port: u16,
    /// Application protocol.
    pub protocol: Protocol,
    /// How calls name this port.
    pub address: PortAddress,
    /// The workload serving this port at this site (`host:port`, from the config's
    /// `[[local]]`), joined in when the table is published; `None` where it does not run here.
    pub upstream: Option<String>,
}

/// A site serving a [`Route`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDest {
    /// The site.
    pub site: String,
    /// `site` as a header value (`x-multimesh-site` of calls to it).
    pub site_header: HeaderValue,
    /// Its edge agent's ingress addresses (empty for this site itself, and for an edge node
    /// reached through its outbound link).
    pub addresses: Vec<String>,
    /// Relative weight; 0 takes no new traffic.
    pub weight: u32,
    /// Reach the site through this site's edge agent (an edge node behind its parent).
    pub via: Option<String>,
    /// The sites whose callers that site admits for the service (empty: every site).
    pub consumers: Vec<String>,
}

fn default_namespace() -> String {
    "default".to_string()
}

/// One backend of a split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitBackend {
    /// Backend service name (same namespace as the split).
    pub service: String,
    /// Relative weight.
    pub weight: u32,
}

/// A traffic split: calls to the root service go to the backends by weight.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    /// Root service name.
    pub service: String,
    /// Namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Backends.
    pub backends: Vec<SplitBackend>,
}

/// The route file / feed document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDocument {
    /// Services.
    #[serde(default)]
    pub services: Vec<ServiceRoute>,
    /// Splits.
    #[serde(default)]
    pub splits: Vec<Split>,
}

/// A validated, indexed route table.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    /// Where the table came from and its version, for logs and `/readyz`.
    pub version: String,
    services: BTreeMap<ServiceKey, Route>,
    splits: BTreeMap<ServiceKey, Vec<(ServiceKey, u32)>>,
    split_docs: Vec<Split>,
}

/// The most services one table may hold.
pub const MAX_SERVICES: usize = 100_000;

impl RouteTable {
    /// Validates a document; the error names the first bad field.
    pub fn build(doc: RouteDocument, version: String) -> Result<Self, InvalidField> {
        if doc.services.len() > MAX_SERVICES {
            return Err(InvalidField::new(
                "services",
                doc.services.len(),
                "lists too many services (max 100000)",
            ));
        }
        let mut services = BTreeMap::new();
        for (i, s) in doc.services.into_iter().enumerate() {
            let at = |e: InvalidField| e.within(&format!("services[{i}]"));
            names::dns_label("name", &s.name).map_err(at)?;
            names::dns_label("namespace", &s.namespace).map_err(at)?;
            if s.ports.is_empty() {
                return Err(at(InvalidField::new("ports", "[]", "must list a port")));
            }
            let mut seen = BTreeSet::new();
            for (j, p) in s.ports.iter().enumerate() {
                if p.port == 0 {
                    return Err(at(InvalidField::new(
                        &format!("ports[{j}].port"),
                        0,
                        "must be 1..=65535",
                    )));
                }
                if !seen.insert(p.port) {
                    return Err(at(InvalidField::new(
                        &format!("ports[{j}].port"),
                        p.port,
                        "is listed twice",
                    )));
                }
            }
            let mut sites = BTreeSet::new();
            for (j, d) in s.destinations.iter().enumerate() {
                names::dns_label(&format!("destinations[{j}].site"), &d.site).map_err(at)?;
                if !sites.insert(d.site.as_str()) {
                    return Err(at(InvalidField::new(
                        &format!("destinations[{j}].site"),
                        &d.site,
                        "is listed twice",
                    )));
                }
                if let Some(v) = &d.via {
                    names::dns_label(&format!("destinations[{j}].via"), v).map_err(at)?;
                }
                for (k, c) in d.consumers.iter().enumerate() {
                    names::dns_label(&format!("destinations[{j}].consumers[{k}]"), c)
                        .map_err(at)?;
                }
                for (k, a) in d.addresses.iter().enumerate() {
                    names::host_port(&format!("destinations[{j}].addresses[{k}]"), a)
                        .map_err(at)?;
                }
            }
            for (j, c) in s.consumers.iter().enumerate() {
                names::dns_label(&format!("consumers[{j}]"), c).map_err(at)?;
            }
            let key = ServiceKey::new(&s.namespace, &s.name);
            let host = key.host();
            let mut ports = Vec::with_capacity(s.ports.len());
            for (j, p) in s.ports.into_iter().enumerate() {
                let Some(address) = PortAddress::new(&host, p.port) else {
                    return Err(at(InvalidField::new(
                        &format!("ports[{j}]"),
                        format!("{host}:{}", p.port),
                        "is not a valid authority",
                    )));
                };
                ports.push(RoutePort {
                    name: p.name,
                    port: p.port,
                    protocol: p.protocol,
                    address,
                    upstream: None,
                });
            }
            let mut destinations = Vec::with_capacity(s.destinations.len());
            for (j, d) in s.destinations.into_iter().enumerate() {
                let Ok(site_header) = HeaderValue::from_str(&d.site) else {
                    return Err(at(InvalidField::new(
                        &format!("destinations[{j}].site"),
                        &d.site,
                        "is not a valid header value",
                    )));
                };
                destinations.push(RouteDest {
                    site: d.site,
                    site_header,
                    addresses: d.addresses,
                    weight: d.weight,
                    via: d.via,
                    consumers: d.consumers,
                });
            }
            let route = Route {
                id: key.to_string(),
                host,
                key: key.clone(),
                ports,
                destinations,
                consumers: s.consumers,
                prefer_local: s.prefer_local,
            };
            if services.contains_key(&key) {
                return Err(InvalidField::new(
                    &format!("services[{i}]"),
                    &key,
                    "is listed twice",
                ));
            }
            services.insert(key, route);
        }
        let mut splits = BTreeMap::new();
        let split_docs = doc.splits.clone();
        for (i, sp) in doc.splits.into_iter().enumerate() {
            let at = |e: InvalidField| e.within(&format!("splits[{i}]"));
            names::dns_label("service", &sp.service).map_err(at)?;
            names::dns_label("namespace", &sp.namespace).map_err(at)?;
            if sp.backends.is_empty() {
                return Err(at(InvalidField::new(
                    "backends",
                    "[]",
                    "must list a backend",
                )));
            }
            if sp.backends.iter().all(|b| b.weight == 0) {
                return Err(at(InvalidField::new(
                    "backends",
                    "all weights 0",
                    "must give some backend a non-zero weight",
                )));
            }
            let mut backends = Vec::new();
            let mut seen = BTreeSet::new();
            for (j, b) in sp.backends.iter().enumerate() {
                let field = format!("backends[{j}].service");
                names::dns_label(&field, &b.service).map_err(at)?;
                if !seen.insert(b.service.as_str()) {
                    return Err(at(InvalidField::new(&field, &b.service, "is listed twice")));
                }
                let key = ServiceKey::new(&sp.namespace, &b.service);
                if !services.contains_key(&key) {
                    return Err(at(InvalidField::new(
                        &field,
                        &b.service,
                        "is not a service of the route table",
                    )));
                }
                backends.push((key, b.weight));
            }
            let root = ServiceKey::new(&sp.namespace, &sp.service);
            if splits.insert(root.clone(), backends).is_some() {
                return Err(InvalidField::new(
                    &format!("splits[{i}]"),
                    &root,
                    "is split twice",
                ));
            }
        }
        Ok(Self {
            version,
            services,
            splits,
            split_docs,
        })
    }

    /// Parses a route document from YAML, JSON or TOML text (by `format`: a file extension).
    pub fn parse(text: &str, format: &str, version: String) -> Result<Self, String> {
        let doc: RouteDocument = match format {
            "toml" => toml::from_str(text).map_err(|e| e.to_string())?,
            "json" => serde_json::from_str(text).map_err(|e| e.to_string())?,
            _ => multimesh_core::yaml::from_str(text)?,
        };
        Self::build(doc, version).map_err(|e| e.to_string())
    }

    /// The route of a service.
    pub fn service(&self, key: &ServiceKey) -> Option<&Route> {
        self.services.get(key)
    }

    /// The route a call to `key` takes: a split on `key` resolved by weight (`roll` a uniform
    /// random number) to one backend, else `key`'s own.
    pub fn resolve(&self, key: &ServiceKey, roll: u64) -> Option<&Route> {
        let backend = self
            .split(key)
            .and_then(|backends| balance::weighted(backends.iter().map(|(b, w)| (b, *w)), roll));
        self.service(backend.unwrap_or(key))
    }

    /// Whether calls to `key` can be routed: it has a route or a split.
    pub fn knows(&self, key: &ServiceKey) -> bool {
        self.services.contains_key(key) || self.splits.contains_key(key)
    }

    /// The split of a root service, if any.
    pub fn split(&self, key: &ServiceKey) -> Option<&[(ServiceKey, u32)]> {
        self.splits.get(key).map(Vec::as_slice)
    }

    /// The splits as written.
    pub fn split_list(&self) -> Vec<Split> {
        self.split_docs.clone()
    }

    /// Number of services.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// All services.
    pub fn services(&self) -> impl Iterator<Item = &Route> {
        self.services.values()
    }

    /// Joins in this site's workloads (the config's `[[local]]`): each port of a local service
    /// gets its upstream, so a call never searches the config.
    pub fn join_locals(&mut self, locals: &[LocalService]) {
        for l in locals {
            let Some(route) = self
                .services
                .get_mut(&ServiceKey::new(&l.namespace, &l.name))
            else {
                continue;
            };
            for lp in &l.ports {
                if let Some(p) = route.ports.iter_mut().find(|p| p.port == lp.port) {
                    p.upstream = Some(lp.upstream.clone());
                }
            }
        }
    }

    /// The table as a document (what `/routes` shows): it builds back into an equal table.
    pub fn document(&self) -> RouteDocument {
        RouteDocument {
            services: self.services.values().map(Route::document).collect(),
            splits: self.split_docs.clone(),
        }
    }
}

impl Route {
    /// The route as written.
    pub fn document(&self) -> ServiceRoute {
        ServiceRoute {
            name: self.key.name.clone(),
            namespace: self.key.namespace.clone(),
            ports: self
                .ports
                .iter()
                .map(|p| PortSpec {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: p.protocol,
                })
                .collect(),
            destinations: self
                .destinations
                .iter()
                .map(|d| Destination {
                    site: d.site.clone(),
                    addresses: d.addresses.clone(),
                    weight: d.weight,
                    via: d.via.clone(),
                    consumers: d.consumers.clone(),
                })
                .collect(),
            consumers: self.consumers.clone(),
            prefer_local: self.prefer_local,
        }
    }

    /// The port a call uses: the named one, or the only / first HTTP-like port.
    pub fn port(&self, asked: Option<u16>) -> Option<&RoutePort> {
        match asked {
            Some(p) => self.ports.iter().find(|s| s.port == p),
            None => self
                .ports
                .iter()
                .find(|s| s.protocol != Protocol::Tcp)
                .or_else(|| self.ports.first()),
        }
    }

    /// Whether `site`'s callers may call this service here.
    pub fn admits(&self, site: &str) -> bool {
        self.consumers.is_empty() || self.consumers.iter().any(|c| c == site)
    }
}

impl RouteDest {
    /// Whether that site admits callers of `site` for the service.
    pub fn admits(&self, site: &str) -> bool {
        self.consumers.is_empty() || self.consumers.iter().any(|c| c == site)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(yaml: &str) -> Result<RouteTable, String> {
        RouteTable::parse(yaml, "yaml", "test".into())
    }

    #[test]
    fn a_deeply_nested_route_document_is_refused_before_parsing() {
        let nested = format!("services: {}{}\n", "[".repeat(40_000), "]".repeat(40_000));
        let e = doc(&nested).unwrap_err();
        assert!(e.contains("line 1: nests flow collections"), "{e}");
    }

    #[test]
    fn hosts_parse_in_every_form() {
        let t = parse_host("payment.shop.svc.clusterset.local:8080").unwrap();
        assert_eq!(t.service, ServiceKey::new("shop", "payment"));
        assert_eq!(t.port, Some(8080));
        assert_eq!(
            parse_host("Payment.Shop.svc.clusterset.local.")
                .unwrap()
                .port,
            None
        );
        assert_eq!(
            parse_host("payment.shop").unwrap().service,
            ServiceKey::new("shop", "payment")
        );
        assert_eq!(parse_host("payment.shop.svc:80").unwrap().port, Some(80));
        assert!(parse_host("payment").is_none());
        assert!(parse_host("payment.shop:http").is_none());
        assert!(parse_host("a.b.c.example.com").is_none());
    }

    #[test]
    fn linkerd_mirror_hosts_name_the_service_they_mirror() {
        for host in [
            "payment-clusterset.shop.svc.cluster.local:8080",
            "payment-clusterset.shop.svc.cluster.local.",
            "payment-clusterset.shop.svc.corp.example:8080",
            "payment-clusterset.shop.svc",
            "payment-clusterset.shop",
        ] {
            let t = parse_host(host).unwrap_or_else(|| panic!("{host}"));
            assert_eq!(t.service, ServiceKey::new("shop", "payment"), "{host}");
        }
        // The clusterset form names the service itself, whatever its name ends with.
        assert_eq!(
            parse_host("x-clusterset.shop.svc.clusterset.local")
                .unwrap()
                .service,
            ServiceKey::new("shop", "x-clusterset")
        );
        // A plain cluster-local name is a service of this cluster, not one to route elsewhere.
        assert!(parse_host("payment.shop.svc.cluster.local").is_none());
        assert!(parse_host("-clusterset.shop").is_none());
        assert!(parse_host("payment-clusterset").is_none());
    }

    #[test]
    fn refusals_name_the_field() {
        let e =
            doc("services: [{name: p, ports: [{port: 80}], destinations: [{site: a}, {site: a}]}]")
                .unwrap_err();
        assert!(e.contains("services[0].destinations[1].site"), "{e}");
        let e = doc("services: [{name: p, ports: []}]").unwrap_err();
        assert!(e.contains("services[0].ports"), "{e}");
        let e = doc("services: [{name: p, ports: [{port: 80}], destinations: [{site: a, addresses: ['no-port']}]}]")
            .unwrap_err();
        assert!(
            e.contains("services[0].destinations[0].addresses[0]"),
            "{e}"
        );
        let e = doc("services: [{name: p, ports: [{port: 80}]}]\nsplits: [{service: p, backends: [{service: q, weight: 1}]}]")
            .unwrap_err();
        assert!(e.contains("splits[0].backends[0].service"), "{e}");
        let e = doc("services: [{name: p, ports: [{port: 80}]}]\nsplits: [{service: r, backends: [{service: p, weight: 0}]}]")
            .unwrap_err();
        assert!(e.contains("splits[0].backends"), "{e}");
        let e = doc("services: [{name: p, ports: [{port: 80}], colour: red}]").unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn port_choice_and_admission() {
        let t = doc("services: [{name: p, namespace: shop, ports: [{port: 5432, protocol: tcp}, {port: 8080}], consumers: [b]}]")
            .unwrap();
        let s = t.service(&ServiceKey::new("shop", "p")).unwrap();
        assert_eq!(s.port(None).unwrap().port, 8080);
        assert_eq!(s.port(Some(5432)).unwrap().protocol, Protocol::Tcp);
        assert!(s.port(Some(1)).is_none());
        assert!(s.admits("b"));
        assert!(!s.admits("c"));
    }

    #[test]
    fn a_compiled_table_has_every_address_made_and_its_document_builds_it_again() {
        let t = doc(
            "services:\n- {name: payment, namespace: shop, ports: [{port: 8080}, {name: raw, port: 9000, protocol: tcp}], destinations: [{site: a}, {site: b, addresses: ['10.0.0.2:15443'], weight: 3, consumers: [a]}], consumers: [b]}\n- {name: payment-v2, namespace: shop, ports: [{port: 8080}], destinations: [{site: b, addresses: ['10.0.0.2:15443']}]}\nsplits:\n- {service: payment, namespace: shop, backends: [{service: payment, weight: 1}, {service: payment-v2, weight: 1}]}\n",
        )
        .unwrap();
        let r = t.service(&ServiceKey::new("shop", "payment")).unwrap();
        assert_eq!(r.id, "shop/payment");
        assert_eq!(r.host, "payment.shop.svc.clusterset.local");
        assert_eq!(
            r.ports[1].address.authority.as_str(),
            "payment.shop.svc.clusterset.local:9000"
        );
        assert_eq!(r.destinations[1].site_header, "b");
        let again = RouteTable::build(t.document(), "again".into()).unwrap();
        assert_eq!(again.document(), t.document());
        assert_eq!(again.service(&r.key), Some(r));
        assert_eq!(again.split(&r.key), t.split(&r.key));
    }

    #[test]
    fn local_workloads_are_joined_into_the_ports_they_serve() {
        let mut t = doc(
            "services: [{name: payment, namespace: shop, ports: [{port: 8080}, {port: 9090}], destinations: [{site: a}]}]",
        )
        .unwrap();
        let locals: Vec<LocalService> = toml::from_str::<std::collections::BTreeMap<String, Vec<LocalService>>>(
            "local = [{ name = \"payment\", namespace = \"shop\", ports = [{ port = 8080, upstream = \"127.0.0.1:1\" }, { port = 7, upstream = \"127.0.0.1:2\" }] }, { name = \"other\", namespace = \"shop\", ports = [{ port = 8080, upstream = \"127.0.0.1:3\" }] }]",
        )
        .unwrap()
        .remove("local")
        .unwrap();
        t.join_locals(&locals);
        let r = t.service(&ServiceKey::new("shop", "payment")).unwrap();
        assert_eq!(
            r.port(Some(8080)).unwrap().upstream.as_deref(),
            Some("127.0.0.1:1")
        );
        assert_eq!(r.port(Some(9090)).unwrap().upstream, None);
        assert_eq!(t.len(), 1, "a local service without a route adds nothing");
    }
}
