//! Linkerd: `policy.linkerd.io` HTTPRoutes with a Service parent and weighted backendRefs (see
//! [`super::gateway`]), and for each imported service a selector-less mirror Service
//! `NAME-clusterset` with Endpoints at the local edge agent, the way Linkerd's own multicluster
//! mirrors work. No ServiceProfile is ever rendered: beside an HTTPRoute for the same service it
//! would silently take precedence.

use serde_json::{Value, json};

use super::gateway::{self, Flavor, mirror_name};
use super::{Options, imports, metadata};
use crate::diag::Diagnostic;
use crate::model::{Model, ServiceKey};

/// Renders the model for Linkerd.
pub fn render(model: &Model, opts: &Options, d: &mut Vec<Diagnostic>) -> Vec<Value> {
    let mut out = gateway::render(model, Flavor::Linkerd, d);
    let mut seen = std::collections::BTreeSet::new();
    for a in &model.access {
        for r in access(model, a, d) {
            // Servers are shared by every policy of one workload port: render each once.
            let key = (
                r["kind"].to_string(),
                r["metadata"]["namespace"].to_string(),
                r["metadata"]["name"].to_string(),
            );
            if seen.insert(key) {
                out.push(r);
            }
        }
    }
    for s in imports(model, opts) {
        let name = mirror_name(&s.name);
        if name.len() > 63 {
            d.push(Diagnostic::error(
                format!("catalog service {}/{}", s.namespace, s.name),
                "",
                format!("the mirror Service name {name:?} is longer than 63 characters"),
            ));
            continue;
        }
        if opts.edge_ips.is_empty() {
            d.push(Diagnostic::error(
                format!("catalog service {}/{}", s.namespace, s.name),
                "",
                "Linkerd mirror Endpoints need the edge agent's IP addresses (--edge-ip)",
            ));
            continue;
        }
        let mut meta = metadata(&name, &s.namespace, None);
        meta["labels"]["multimesh.io/imported-service"] = json!(s.name);
        if let Some(r) = &s.remote {
            meta["labels"]["multimesh.io/origin-site"] = json!(r.site);
        }
        let target = |p: &crate::model::Port| {
            if p.protocol.is_http() {
                opts.edge_http_port
            } else {
                p.port
            }
        };
        let port_name = |p: &crate::model::Port| {
            if p.name.is_empty() {
                format!("{}-{}", p.protocol.as_str(), p.port)
            } else {
                p.name.clone()
            }
        };
        out.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta.clone(),
            "spec": {
                "ports": s.ports.iter().map(|p| json!({
                    "name": port_name(p), "port": p.port, "protocol": "TCP", "targetPort": target(p),
                })).collect::<Vec<_>>(),
            },
        }));
        out.push(json!({
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": meta,
            "subsets": [{
                "addresses": opts.edge_ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                "ports": s.ports.iter().map(|p| json!({
                    "name": port_name(p), "port": target(p), "protocol": "TCP",
                })).collect::<Vec<_>>(),
            }],
        }));
    }
    out
}

fn proxy_protocol(p: crate::model::Protocol) -> &'static str {
    use crate::model::Protocol;
    match p {
        Protocol::Http => "HTTP/1",
        Protocol::Http2 => "HTTP/2",
        Protocol::Grpc => "gRPC",
        Protocol::Tcp => "opaque",
    }
}

/// Linkerd access for one TrafficTarget: a `Server` per destination port (deny by default,
/// shared by every policy for that workload and port), a `MeshTLSAuthentication` of the source
/// service accounts, and an `AuthorizationPolicy` on the Server (TCP rules) or on an
/// `HTTPRoute` attached to the Server (HTTP rules: only matching requests are authorised).
pub fn access(model: &Model, a: &crate::model::Access, d: &mut Vec<Diagnostic>) -> Vec<Value> {
    use crate::model::{Allowed, TargetPort};
    let Some(selector) = super::destination_selector(model, a, d) else {
        return vec![];
    };
    let dest = &a.destination;
    let Some(svc) = model
        .services
        .local
        .get(&ServiceKey::new(&dest.namespace, &dest.name))
    else {
        return vec![];
    };
    let ports: Vec<&crate::model::Port> = svc
        .ports
        .iter()
        .filter(|p| a.port.is_none_or(|x| x == p.port))
        .collect();
    if ports.is_empty() {
        d.push(Diagnostic::error(
            &a.origin,
            "destination.port",
            format!(
                "the Service {}/{} has no such port",
                dest.namespace, dest.name
            ),
        ));
        return vec![];
    }
    let ns = &dest.namespace;
    let policy =
        |kind: &str, name: &str| json!({"group": "policy.linkerd.io", "kind": kind, "name": name});
    let mut out = vec![json!({
        "apiVersion": "policy.linkerd.io/v1alpha1",
        "kind": "MeshTLSAuthentication",
        "metadata": super::access_metadata(a),
        "spec": {"identityRefs": a.sources.iter().map(|s| json!({
            "kind": "ServiceAccount", "name": s.name, "namespace": s.namespace,
        })).collect::<Vec<_>>()},
    })];
    let authn = [policy("MeshTLSAuthentication", &a.name)];
    for p in ports {
        let server = format!("{}-{}", dest.name, p.port);
        let pod_port = match &p.target {
            TargetPort::Number(n) => json!(n),
            TargetPort::Name(n) => json!(n),
        };
        out.push(json!({
            "apiVersion": "policy.linkerd.io/v1beta3",
            "kind": "Server",
            "metadata": metadata(&server, ns, None),
            "spec": {
                "podSelector": {"matchLabels": selector},
                "port": pod_port,
                "proxyProtocol": proxy_protocol(p.protocol),
                "accessPolicy": "deny",
            },
        }));
        for (i, allowed) in a.allowed.iter().enumerate() {
            let name = format!("{}-{}-{i}", a.name, p.port);
            let target = match allowed {
                Allowed::Tcp(tp) if tp.is_empty() || tp.contains(&p.port) => {
                    policy("Server", &server)
                }
                Allowed::Tcp(_) => continue,
                Allowed::Http(_) if !p.protocol.is_http() => continue,
                Allowed::Http(ms) => {
                    let m: Vec<Value> = ms.iter().flat_map(gateway::matches).collect();
                    if m.is_empty() {
                        continue;
                    }
                    out.push(json!({
                        "apiVersion": "policy.linkerd.io/v1beta3",
                        "kind": "HTTPRoute",
                        "metadata": super::access_metadata_named(a, &name),
                        "spec": {
                            "parentRefs": [policy("Server", &server)],
                            "rules": [{"matches": m}],
                        },
                    }));
                    policy("HTTPRoute", &name)
                }
            };
            out.push(json!({
                "apiVersion": "policy.linkerd.io/v1alpha1",
                "kind": "AuthorizationPolicy",
                "metadata": super::access_metadata_named(a, &name),
                "spec": {"targetRef": target, "requiredAuthenticationRefs": authn},
            }));
        }
    }
    out
}
