//! Consul (consul-k8s CRDs): the discovery chain router → splitter → resolver.
//!
//! - `ServiceDefaults` sets the protocol of every service in a chain (splitters and routers need
//!   an HTTP protocol).
//! - A rule without matches becomes the root's `ServiceSplitter`. Weights are percentages with
//!   two decimals, by largest remainder on basis points so they sum to exactly 100.
//! - Rules with matches become a `ServiceRouter` on the root: each match routes to the single
//!   backend, or to a virtual service `ROUTE-rN` whose own splitter splits it; unmatched
//!   requests fall through to the root itself.
//! - A remote backend is the virtual service `NAME-clusterset`, whose `ServiceResolver`
//!   redirects to the service on the peer named after its origin site.
//! - TCP cannot be split or routed by Consul: such routes are refused with an error.

use serde_json::{Value, json};

use super::{metadata, route_ports};
use crate::diag::Diagnostic;
use crate::model::{
    Access, Allowed, Backend, HttpMatch, Model, PathMatch, Protocol, Route, ServiceKey,
};
use crate::weights;

const API: &str = "consul.hashicorp.com/v1alpha1";

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "http",
        Protocol::Http2 => "http2",
        Protocol::Grpc => "grpc",
        Protocol::Tcp => "tcp",
    }
}

/// The Consul service a backend is reached as.
fn target(b: &Backend) -> String {
    if b.remote.is_some() {
        format!("{}-clusterset", b.name)
    } else {
        b.name.clone()
    }
}

fn resource(kind: &str, name: &str, namespace: &str, r: Option<&Route>, spec: Value) -> Value {
    json!({"apiVersion": API, "kind": kind, "metadata": metadata(name, namespace, r), "spec": spec})
}

fn splitter(
    r: &Route,
    field: &str,
    name: &str,
    backends: &[Backend],
    d: &mut Vec<Diagnostic>,
) -> Option<Value> {
    let w: Vec<u64> = backends.iter().map(|b| b.weight).collect();
    let bp = weights::shares(&w, 10_000)?;
    let mut splits = Vec::new();
    for (b, bp) in backends.iter().zip(bp) {
        if bp == 0 {
            if b.weight > 0 {
                d.push(Diagnostic::warning(
                    &r.origin,
                    field,
                    format!("backend {}/{} has a non-zero weight that rounds to 0.00%: it gets no traffic in Consul", b.namespace, b.name),
                ));
            }
            continue;
        }
        let mut s = json!({"service": target(b), "weight": f64::from(bp) / 100.0});
        if b.namespace != r.namespace {
            s["namespace"] = json!(b.namespace);
        }
        splits.push(s);
    }
    Some(resource(
        "ServiceSplitter",
        name,
        &r.namespace,
        Some(r),
        json!({"splits": splits}),
    ))
}

fn router_match(m: &HttpMatch) -> Value {
    let mut http = json!({});
    match &m.path {
        Some(PathMatch::Exact(p)) => http["pathExact"] = json!(p),
        Some(PathMatch::Prefix(p)) => http["pathPrefix"] = json!(p),
        Some(PathMatch::Regex(p)) => http["pathRegex"] = json!(p),
        None => {}
    }
    if !m.methods.is_empty() {
        http["methods"] = json!(m.methods);
    }
    if !m.headers.is_empty() {
        http["header"] = m
            .headers
            .iter()
            .map(|h| {
                let k = if h.regex { "regex" } else { "exact" };
                json!({"name": h.name, k: h.value})
            })
            .collect();
    }
    json!({ "http": http })
}

fn route(model: &Model, r: &Route, d: &mut Vec<Diagnostic>, out: &mut Vec<Value>) {
    let proto = match route_ports(model, r) {
        Some(ports) if ports.iter().any(|(_, p)| !p.is_http()) => {
            d.push(Diagnostic::error(
                &r.origin,
                "",
                format!("{}/{} has TCP ports: Consul cannot split or route TCP traffic (ServiceSplitter and ServiceRouter need an HTTP protocol)", r.namespace, r.root),
            ));
            return;
        }
        Some(ports) => ports.first().map_or(Protocol::Http, |(_, p)| *p),
        None => {
            d.push(Diagnostic::warning(
                &r.origin,
                "",
                "the root's protocol is unknown (no Service manifest): assuming http",
            ));
            Protocol::Http
        }
    };
    if let Some(port) = r.port {
        match model.services.get(&r.namespace, &r.root) {
            Some(s) if s.ports.iter().any(|p| p.port != port) => {
                d.push(Diagnostic::error(&r.origin, "spec.parentRefs", format!("Consul routes per service, not per port: a route for port {port} alone cannot be expressed ({}/{} has other ports)", r.namespace, r.root)));
                return;
            }
            Some(_) => {}
            None => d.push(Diagnostic::warning(&r.origin, "spec.parentRefs", format!("Consul routes per service, not per port: the route applies to every port of {}/{}", r.namespace, r.root))),
        }
    }
    let mut services = std::collections::BTreeSet::new();
    services.insert((r.root.clone(), r.namespace.clone()));
    let mut routes = Vec::new();
    for (i, rule) in r.rules.iter().enumerate() {
        let field = r.backends_field(i);
        for b in &rule.backends {
            services.insert((target(b), b.namespace.clone()));
        }
        if rule.matches.is_empty() {
            if i + 1 != r.rules.len() {
                d.push(Diagnostic::error(
                    &r.origin,
                    &field,
                    "a catch-all rule before other rules cannot be expressed in Consul",
                ));
                return;
            }
            if let Some(s) = splitter(r, &field, &r.root, &rule.backends, d) {
                out.push(s);
            }
            continue;
        }
        let live: Vec<&Backend> = rule.backends.iter().filter(|b| b.weight > 0).collect();
        let dest = if live.len() == 1 {
            let mut x = json!({"service": target(live[0])});
            if live[0].namespace != r.namespace {
                x["namespace"] = json!(live[0].namespace);
            }
            x
        } else {
            let virt = format!("{}-r{i}", r.name);
            services.insert((virt.clone(), r.namespace.clone()));
            if let Some(s) = splitter(r, &field, &virt, &rule.backends, d) {
                out.push(s);
            }
            json!({"service": virt})
        };
        for m in &rule.matches {
            routes.push(json!({"match": router_match(m), "destination": dest}));
        }
    }
    if !routes.is_empty() {
        out.push(resource(
            "ServiceRouter",
            &r.root,
            &r.namespace,
            Some(r),
            json!({"routes": routes}),
        ));
    }
    for (name, ns) in services {
        out.push(resource(
            "ServiceDefaults",
            &name,
            &ns,
            None,
            json!({"protocol": protocol(proto)}),
        ));
    }
}

/// `ServiceIntentions` for an access policy. Consul names workloads by service, and consul-k8s
/// requires a service's account to carry the service's name, so service accounts map to
/// services one to one. Intentions cannot restrict ports: a port-restricted policy is refused
/// unless the destination's Service has only that port.
fn intentions(model: &Model, a: &Access, d: &mut Vec<Diagnostic>) -> Option<Value> {
    let dest = &a.destination;
    let only_port = |p: u16| {
        model
            .services
            .local
            .get(&ServiceKey::new(&dest.namespace, &dest.name))
            .is_some_and(|s| s.ports.iter().all(|x| x.port == p))
    };
    if let Some(p) = a.port
        && !only_port(p)
    {
        d.push(Diagnostic::error(&a.origin, "destination.port", format!("Consul intentions cannot restrict access to port {p}: pass the destination Service if it has no other port")));
        return None;
    }
    for al in &a.allowed {
        if let Allowed::Tcp(ports) = al
            && !ports.is_empty()
            && !ports.iter().any(|p| only_port(*p))
        {
            d.push(Diagnostic::error(
                &a.origin,
                "rules",
                format!("Consul intentions cannot restrict TCP access to ports {ports:?}"),
            ));
            return None;
        }
    }
    let any_tcp = a.allowed.iter().any(|x| matches!(x, Allowed::Tcp(_)));
    let permissions: Vec<Value> = a
        .allowed
        .iter()
        .filter_map(|x| match x {
            Allowed::Http(m) => Some(m),
            Allowed::Tcp(_) => None,
        })
        .flatten()
        .map(|m| json!({"action": "allow", "http": router_match(m)["http"].clone()}))
        .collect();
    let sources: Vec<Value> = a
        .sources
        .iter()
        .map(|s| {
            let mut x = json!({"name": s.name});
            if s.namespace != dest.namespace {
                x["namespace"] = json!(s.namespace);
            }
            if any_tcp || permissions.is_empty() {
                // A TCPRoute allows whole connections; HTTP permissions would only narrow it.
                x["action"] = json!(if any_tcp { "allow" } else { "deny" });
            } else {
                x["permissions"] = json!(permissions);
            }
            x
        })
        .collect();
    let mut spec = json!({"destination": {"name": dest.name}, "sources": sources});
    if dest.namespace != a.namespace {
        spec["destination"]["namespace"] = json!(dest.namespace);
    }
    Some(json!({
        "apiVersion": API,
        "kind": "ServiceIntentions",
        "metadata": super::access_metadata(a),
        "spec": spec,
    }))
}

/// Renders the model for Consul.
pub fn render(model: &Model, opts: &super::Options, d: &mut Vec<Diagnostic>) -> Vec<Value> {
    let mut out = Vec::new();
    for r in &model.routes {
        route(model, r, d, &mut out);
    }
    for a in &model.access {
        if let Some(x) = intentions(model, a, d) {
            out.push(x);
        }
    }
    for s in super::imports(model, opts) {
        let Some(remote) = &s.remote else { continue };
        let name = format!("{}-clusterset", s.name);
        let mut res = resource(
            "ServiceResolver",
            &name,
            &s.namespace,
            None,
            json!({"redirect": {"service": s.name, "peer": remote.site}}),
        );
        res["metadata"]["labels"]["multimesh.io/origin-site"] = json!(remote.site);
        out.push(res);
    }
    // One ServiceDefaults per service even when several routes mention it (the first wins;
    // protocols of one service agree).
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|r| {
        r["kind"] != "ServiceDefaults"
            || seen.insert((
                r["metadata"]["namespace"].to_string(),
                r["metadata"]["name"].to_string(),
            ))
    });
    out
}
