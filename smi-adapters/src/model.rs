//! The one internal model every input is parsed into and every renderer reads.

use std::collections::BTreeMap;
use std::fmt;

/// Where a model object came from, for diagnostics: `FILE#DOC Kind namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    /// File name and document index, e.g. `split.yaml#2`.
    pub doc: String,
    /// `Kind apiVersion`.
    pub kind: String,
    /// `namespace/name`.
    pub object: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.doc, self.kind, self.object)
    }
}

pub use multimesh_core::service::{Protocol, ServiceKey};

/// A port of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// Port name (may be empty).
    pub name: String,
    /// Number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// The pod port it forwards to (a Service's `targetPort`): a number or a port name.
    pub target: TargetPort,
}

/// A Service's `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    /// A pod port number.
    Number(u16),
    /// A named container port.
    Name(String),
}

/// A service exported by another site, known from the federation catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remote {
    /// The origin site.
    pub site: String,
    /// The origin's edge ingress addresses.
    pub ingress: Vec<String>,
    /// SPIFFE identity of its workloads.
    pub identity: String,
}

/// What is known of a service: its ports, and where it lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Ports.
    pub ports: Vec<Port>,
    /// The pod selector of a local Service (empty when unknown or remote).
    pub selector: BTreeMap<String, String>,
    /// `Some` for a service of another site.
    pub remote: Option<Remote>,
}

impl ServiceInfo {
    /// The host name callers use: `NAME.NAMESPACE.svc.cluster.local` for a local service,
    /// `NAME.NAMESPACE.svc.clusterset.local` for an imported one.
    pub fn host(&self) -> String {
        host(&self.name, &self.namespace, self.remote.is_some())
    }
}

/// The host name of a service.
pub fn host(name: &str, namespace: &str, remote: bool) -> String {
    let zone = if remote { "clusterset" } else { "cluster" };
    format!("{name}.{namespace}.svc.{zone}.local")
}

/// Services known to the translation: local ones (from `Service` manifests) and remote ones
/// (from the catalog). A local service shadows a remote one of the same name.
#[derive(Clone, Debug, Default)]
pub struct Services {
    /// Services of this site.
    pub local: BTreeMap<ServiceKey, ServiceInfo>,
    /// Services of other sites.
    pub remote: BTreeMap<ServiceKey, ServiceInfo>,
}

impl Services {
    /// Looks a service up, local first.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&ServiceInfo> {
        let k = ServiceKey::new(namespace, name);
        self.local.get(&k).or_else(|| self.remote.get(&k))
    }
}

/// How a path is matched.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// A path prefix (by segments, as Gateway API defines it).
    Prefix(String),
    /// An RE2 regular expression over the whole path.
    Regex(String),
}

/// A header condition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeaderMatch {
    /// Header name (lower case).
    pub name: String,
    /// Value or pattern.
    pub value: String,
    /// Whether `value` is a regular expression (SMI header values always are).
    pub regex: bool,
}

/// One HTTP request condition; every present part must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct HttpMatch {
    /// The SMI match name (for diagnostics and route names).
    pub name: String,
    /// Path condition.
    pub path: Option<PathMatch>,
    /// Allowed methods (upper case); empty or `*` means any.
    pub methods: Vec<String>,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
}

/// One weighted destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Service name.
    pub name: String,
    /// Service namespace.
    pub namespace: String,
    /// Weight in milli-units (`1` = 1000).
    pub weight: u64,
    /// Port to send to (Gateway API backendRefs carry one; SMI uses the root's ports).
    pub port: Option<u16>,
    /// `Some` when the backend lives on another site.
    pub remote: Option<Remote>,
}

impl Backend {
    /// The host name to send to.
    pub fn host(&self) -> String {
        host(&self.name, &self.namespace, self.remote.is_some())
    }
}

/// One rule of a route: requests matching any of `matches` (all requests when empty) are split
/// between `backends` by weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Conditions (any of them).
    pub matches: Vec<HttpMatch>,
    /// Weighted destinations, sorted by (namespace, name, port).
    pub backends: Vec<Backend>,
}

/// All traffic rules for one root service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Where it came from.
    pub origin: Origin,
    /// Name of the source object.
    pub name: String,
    /// Namespace of the root service and of the route.
    pub namespace: String,
    /// The root (apex) service callers address.
    pub root: String,
    /// The root's port this route applies to, when restricted to one.
    pub port: Option<u16>,
    /// Rules in priority order; requests matching none go to the root service itself.
    pub rules: Vec<Rule>,
    /// Whether weights are relative (Gateway API) rather than shares to round (SMI); only
    /// affects diagnostics.
    pub relative: bool,
}

/// A Kubernetes service account, the identity SMI access policies speak of.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Account {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// What an access rule allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowed {
    /// HTTP requests matching any of these (from HTTPRouteGroup matches).
    Http(Vec<HttpMatch>),
    /// TCP connections to these ports (empty: any port), from a TCPRoute.
    Tcp(Vec<u16>),
}

/// An SMI `TrafficTarget`: `sources` may reach the workloads of `destination` as `allowed`
/// says; everything else to those workloads is denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// Where it came from.
    pub origin: Origin,
    /// Object name.
    pub name: String,
    /// Namespace of the object.
    pub namespace: String,
    /// The destination workloads' service account.
    pub destination: Account,
    /// The destination port (v1alpha1/2), if restricted.
    pub port: Option<u16>,
    /// Who may call.
    pub sources: Vec<Account>,
    /// What they may do (one entry per rule).
    pub allowed: Vec<Allowed>,
}

impl Route {
    /// The input field holding rule `i`'s backends, for diagnostics.
    pub fn backends_field(&self, i: usize) -> String {
        if self.relative {
            format!("spec.rules[{i}].backendRefs")
        } else {
            "spec.backends".to_string()
        }
    }
}

/// The parsed inputs of one translation.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Traffic routes, sorted by (namespace, root, port).
    pub routes: Vec<Route>,
    /// Access policies, in input order.
    pub access: Vec<Access>,
    /// Known services.
    pub services: Services,
}
