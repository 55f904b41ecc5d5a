//! Renderers: the model into each mesh's native resources. Pure and deterministic: the same
//! model gives byte-identical output, resources in a stable order.

use serde_json::{Value, json};

use crate::diag::Diagnostic;
use crate::model::{Backend, Model, Protocol, Route, ServiceInfo, ServiceKey};
use crate::weights;

pub mod consul;
pub mod gateway;
pub mod istio;
pub mod kuma;
pub mod linkerd;

/// The target meshes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mesh {
    /// Istio: VirtualService, DestinationRule, ServiceEntry.
    Istio,
    /// Gateway API for meshes (GAMMA): HTTPRoute with a Service parent.
    GatewayApi,
    /// Linkerd: policy.linkerd.io HTTPRoute, mirror Service + Endpoints for imports.
    Linkerd,
    /// Consul: ServiceDefaults, ServiceSplitter, ServiceRouter, ServiceResolver.
    Consul,
    /// Kuma: MeshHTTPRoute, MeshService for imports, MeshTrafficPermission.
    Kuma,
}

impl Mesh {
    /// Every mesh, in the order the CLI and the tests list them.
    pub const ALL: [Mesh; 5] = [
        Mesh::Istio,
        Mesh::GatewayApi,
        Mesh::Linkerd,
        Mesh::Consul,
        Mesh::Kuma,
    ];

    /// Parses a `--mesh` value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "gamma" => Some(Mesh::GatewayApi),
            _ => Self::ALL.into_iter().find(|m| m.name() == s),
        }
    }

    /// The `--mesh` name: `istio`, `gateway-api`, `linkerd`, `consul`, `kuma`.
    pub fn name(self) -> &'static str {
        match self {
            Mesh::Istio => "istio",
            Mesh::GatewayApi => "gateway-api",
            Mesh::Linkerd => "linkerd",
            Mesh::Consul => "consul",
            Mesh::Kuma => "kuma",
        }
    }
}

impl Mesh {
    /// Every `(apiVersion, kind)` the renderer for this mesh may produce. The Kubernetes backend
    /// lists these to find (and garbage-collect) what it wrote; a test checks the renderers
    /// never produce anything else.
    pub fn kinds(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Mesh::Istio => &[
                ("networking.istio.io/v1", "VirtualService"),
                ("networking.istio.io/v1", "DestinationRule"),
                ("networking.istio.io/v1", "ServiceEntry"),
                ("security.istio.io/v1", "AuthorizationPolicy"),
            ],
            Mesh::GatewayApi => &[("gateway.networking.k8s.io/v1", "HTTPRoute")],
            Mesh::Linkerd => &[
                ("v1", "Service"),
                ("v1", "Endpoints"),
                ("policy.linkerd.io/v1beta3", "HTTPRoute"),
                ("policy.linkerd.io/v1beta3", "Server"),
                ("policy.linkerd.io/v1alpha1", "AuthorizationPolicy"),
                ("policy.linkerd.io/v1alpha1", "MeshTLSAuthentication"),
            ],
            Mesh::Consul => &[
                ("consul.hashicorp.com/v1alpha1", "ServiceDefaults"),
                ("consul.hashicorp.com/v1alpha1", "ServiceSplitter"),
                ("consul.hashicorp.com/v1alpha1", "ServiceRouter"),
                ("consul.hashicorp.com/v1alpha1", "ServiceResolver"),
                ("consul.hashicorp.com/v1alpha1", "ServiceIntentions"),
            ],
            Mesh::Kuma => &[
                ("kuma.io/v1alpha1", "MeshHTTPRoute"),
                ("kuma.io/v1alpha1", "MeshService"),
                ("kuma.io/v1alpha1", "MeshTrafficPermission"),
            ],
        }
    }
}

/// Where imported (remote) services are sent: the local edge agent's egress.
#[derive(Clone, Debug)]
pub struct Options {
    /// The in-cluster host name of the local edge agent.
    pub edge_host: String,
    /// The edge agent's egress port for HTTP, HTTP/2 and gRPC (routed by host name); TCP
    /// services use their own port number on the edge agent.
    pub edge_http_port: u16,
    /// The edge agent's IP addresses (meshes that need Endpoints, such as Linkerd's mirror
    /// Services; the Kubernetes backend fills them in from the edge agent's Service).
    pub edge_ips: Vec<String>,
    /// The mesh's SPIFFE trust domain, for principals of service accounts.
    pub trust_domain: String,
    /// Import every remote service of the catalog into the mesh (the Kubernetes backend), not
    /// only those the translated routes send to (`federationctl translate`).
    pub import_all: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            edge_host: "multimesh-edge.multimesh.svc.cluster.local".into(),
            edge_http_port: 15080,
            edge_ips: vec![],
            trust_domain: "cluster.local".into(),
            import_all: false,
        }
    }
}

/// The request header that tells the edge agent's egress which imported service a request is
/// for. Meshes keep the caller's `Host` (the root service) when they send a split's share to
/// the edge agent, so the share's destination travels in this header; a caller that addresses
/// `NAME.NAMESPACE.svc.clusterset.local` directly needs none (the edge agent then routes by
/// `Host`/`:authority`).
pub const DESTINATION_HEADER: &str = "x-multimesh-destination";

/// One copy of `base` per method, with `method` set in it (meshes match one method per match
/// object); just `base` when any method matches.
pub fn per_method(base: Value, methods: &[String], method: impl Fn(&str) -> Value) -> Vec<Value> {
    if methods.is_empty() {
        return vec![base];
    }
    methods
        .iter()
        .map(|m| {
            let mut x = base.clone();
            x["method"] = method(m);
            x
        })
        .collect()
}

/// A Gateway-API-style filter list setting [`DESTINATION_HEADER`] to `host`.
pub fn destination_filters(host: &str) -> Value {
    json!([{
        "type": "RequestHeaderModifier",
        "requestHeaderModifier": {"set": [{"name": DESTINATION_HEADER, "value": host}]},
    }])
}

/// Labels every rendered resource carries, so multimesh can find (and only touch) its own.
pub fn metadata(name: &str, namespace: &str, source: Option<&Route>) -> Value {
    let mut m = json!({
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/managed-by": "multimesh"},
    });
    if let Some(r) = source {
        m["annotations"] =
            json!({"multimesh.io/source": format!("{} {}", r.origin.kind, r.origin.object)});
    }
    m
}

/// Metadata of a resource rendered from an access policy, in the destination's namespace.
pub fn access_metadata(a: &crate::model::Access) -> Value {
    access_metadata_named(a, &a.name)
}

/// [`access_metadata`] with another name.
pub fn access_metadata_named(a: &crate::model::Access, name: &str) -> Value {
    json!({
        "name": name,
        "namespace": a.destination.namespace,
        "labels": {"app.kubernetes.io/managed-by": "multimesh"},
        "annotations": {"multimesh.io/source": format!("{} {}", a.origin.kind, a.origin.object)},
    })
}

/// An error for each access policy a renderer cannot render.
pub fn access_unsupported(model: &Model, mesh: &str, d: &mut Vec<Diagnostic>) {
    for a in &model.access {
        d.push(Diagnostic::error(
            &a.origin,
            "",
            format!(
                "TrafficTarget is not rendered for {mesh} (istio, linkerd, consul and kuma render it)"
            ),
        ));
    }
}

/// The root's ports this route applies to, when the root is known.
pub fn route_ports(model: &Model, r: &Route) -> Option<Vec<(u16, Protocol)>> {
    let root = model.services.get(&r.namespace, &r.root)?;
    Some(
        root.ports
            .iter()
            .filter(|p| r.port.is_none_or(|x| x == p.port))
            .map(|p| (p.port, p.protocol))
            .collect(),
    )
}

/// Integer percentages for backends (zero weights dropped), warning about non-zero weights that
/// round to 0.
pub fn percent_split<'a>(
    r: &Route,
    field: &str,
    backends: &'a [Backend],
    d: &mut Vec<Diagnostic>,
) -> Vec<(&'a Backend, u32)> {
    let w: Vec<u64> = backends.iter().map(|b| b.weight).collect();
    let Some(p) = weights::percentages(&w) else {
        return vec![];
    };
    let mut out = Vec::new();
    for (b, p) in backends.iter().zip(p) {
        if p == 0 {
            if b.weight > 0 {
                d.push(Diagnostic::warning(
                    &r.origin,
                    field,
                    format!(
                        "backend {}/{} has a non-zero weight that rounds to 0%: it gets no traffic in this mesh",
                        b.namespace, b.name
                    ),
                ));
            }
            continue;
        }
        out.push((b, p));
    }
    out
}

/// The pod selector of an access policy's destination: the selector of the local Service named
/// like its service account (the SMI convention), or an error naming what to pass.
pub fn destination_selector(
    model: &Model,
    a: &crate::model::Access,
    d: &mut Vec<Diagnostic>,
) -> Option<std::collections::BTreeMap<String, String>> {
    let key = ServiceKey::new(&a.destination.namespace, &a.destination.name);
    match model.services.local.get(&key) {
        Some(s) if !s.selector.is_empty() => Some(s.selector.clone()),
        _ => {
            d.push(Diagnostic::error(
                &a.origin,
                "destination",
                format!(
                    "cannot select the workloads of service account {}/{}: pass the manifest of the Service of the same name (its selector is used)",
                    a.destination.namespace, a.destination.name
                ),
            ));
            None
        }
    }
}

/// Relative weights for a rule's backends, exact when they reduce to integers of at most `max`,
/// else basis points with a warning. `None` when every weight is zero.
pub fn relative_weights(
    r: &Route,
    field: &str,
    backends: &[Backend],
    max: u64,
    d: &mut Vec<Diagnostic>,
) -> Option<Vec<u64>> {
    let w: Vec<u64> = backends.iter().map(|b| b.weight).collect();
    if let Some(x) = weights::relative(&w, max) {
        return Some(x);
    }
    d.push(Diagnostic::warning(
        &r.origin,
        field,
        format!("weights cannot be reduced to integers of at most {max}: rounded to basis points"),
    ));
    Some(
        weights::shares(&w, 10_000)?
            .into_iter()
            .map(u64::from)
            .collect(),
    )
}

/// The remote services to import, each once, sorted: those the routes send to, or every
/// remote service known when [`Options::import_all`] is set.
pub fn imports(model: &Model, opts: &Options) -> Vec<ServiceInfo> {
    if opts.import_all {
        return model.services.remote.values().cloned().collect();
    }
    let mut keys = std::collections::BTreeSet::new();
    for r in &model.routes {
        let root = ServiceKey::new(&r.namespace, &r.root);
        if !model.services.local.contains_key(&root) && model.services.remote.contains_key(&root) {
            keys.insert(root);
        }
        for rule in &r.rules {
            for b in &rule.backends {
                if b.remote.is_some() {
                    keys.insert(ServiceKey::new(&b.namespace, &b.name));
                }
            }
        }
    }
    keys.into_iter()
        .filter_map(|k| model.services.remote.get(&k).cloned())
        .collect()
}

/// The closest form of an RE2 pattern that meshes without regular expressions in authorization
/// rules can take: `Exact("/a")` for a literal, `Prefix("/a/")` for `/a/.*`, `Any` for `.*`.
/// `None` when no such form is exactly equivalent (the caller must then narrow, never widen).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Simple {
    /// Any value.
    Any,
    /// Exactly this value.
    Exact(String),
    /// Values starting with this.
    Prefix(String),
}

/// See [`Simple`].
pub fn simplify_regex(re: &str) -> Option<Simple> {
    let re = re.strip_prefix('^').unwrap_or(re);
    let re = re.strip_suffix('$').unwrap_or(re);
    if re == ".*" {
        return Some(Simple::Any);
    }
    let (body, prefix) = match re.strip_suffix(".*") {
        Some(b) => (b, true),
        None => (re, false),
    };
    // Only plain characters (escaped metacharacters allowed) in the literal part.
    let mut lit = String::new();
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) if !n.is_alphanumeric() => lit.push(n),
                _ => return None,
            },
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' => {
                return None;
            }
            c => lit.push(c),
        }
    }
    Some(if prefix {
        if lit.is_empty() {
            Simple::Any
        } else {
            Simple::Prefix(lit)
        }
    } else {
        Simple::Exact(lit)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_simplify_only_when_exactly_equivalent() {
        assert_eq!(simplify_regex(".*"), Some(Simple::Any));
        assert_eq!(
            simplify_regex("/api/.*"),
            Some(Simple::Prefix("/api/".into()))
        );
        assert_eq!(
            simplify_regex("^/health$"),
            Some(Simple::Exact("/health".into()))
        );
        assert_eq!(
            simplify_regex(r"/v1\.2/.*"),
            Some(Simple::Prefix("/v1.2/".into()))
        );
        assert_eq!(simplify_regex("/api/[0-9]+"), None);
        assert_eq!(simplify_regex("/a.c"), None);
        assert_eq!(simplify_regex(r"\d+"), None);
        assert_eq!(simplify_regex(".*Firefox.*"), None);
    }
}
