//! Kuma: a `MeshHTTPRoute` per root service (targets selected by the `kuma.io/display-name`
//! and `k8s.kuma.io/namespace` labels, relative weights kept exact), and for each imported
//! service a `MeshService` `NAME-clusterset` selecting the local edge agent's dataplanes.
//! Requests that match no rule keep going to the root service (Kuma's default route).
//!
//! Access: a `MeshTrafficPermission` per TrafficTarget, targeting the dataplanes of the Service
//! named like the destination service account, allowing each source by its SPIFFE ID as Kuma's
//! mesh identity (MeshIdentity) issues it on Kubernetes, `spiffe://TD/ns/NS/sa/SA` (TD: the
//! mesh's trust domain, `Options::trust_domain`). A MeshTrafficPermission has no paths, methods,
//! headers or ports: a rule that restricts any of those has no exact Kuma form and is left out
//! with a warning (access narrowed, never widened); a rule that allows everything is kept.

use serde_json::{Value, json};

use super::{
    DESTINATION_HEADER, Options, access_metadata, destination_selector, imports, metadata,
    route_ports,
};
use crate::diag::Diagnostic;
use crate::model::{Access, Allowed, Backend, HttpMatch, Model, Route};

const API: &str = "kuma.io/v1alpha1";
/// The pod label of the edge agent that imported services select.
pub const EDGE_SELECTOR: (&str, &str) = ("app.kubernetes.io/name", "multimesh-edge");

fn service_ref(name: &str, namespace: &str) -> Value {
    json!({"kind": "MeshService", "labels": {"kuma.io/display-name": name, "k8s.kuma.io/namespace": namespace}})
}

fn backend_name(b: &Backend) -> String {
    if b.remote.is_some() {
        format!("{}-clusterset", b.name)
    } else {
        b.name.clone()
    }
}

/// Gateway-API-style matches; Kuma wants the path even when it is everything.
fn matches(m: &HttpMatch) -> Vec<Value> {
    let mut out = super::gateway::matches(m);
    for x in &mut out {
        if x.get("path").is_none() {
            x["path"] = json!({"type": "PathPrefix", "value": "/"});
        }
    }
    out
}

fn mesh_http_route(model: &Model, r: &Route, d: &mut Vec<Diagnostic>) -> Option<Value> {
    let ports = route_ports(model, r);
    if ports
        .as_ref()
        .is_some_and(|p| p.iter().any(|(_, proto)| !proto.is_http()))
    {
        d.push(Diagnostic::error(&r.origin, "", format!("{}/{} has TCP ports: a MeshHTTPRoute routes HTTP only (MeshTCPRoute is not rendered yet)", r.namespace, r.root)));
        return None;
    }
    let mut rules = Vec::new();
    for (i, rule) in r.rules.iter().enumerate() {
        let field = r.backends_field(i);
        let rel = super::relative_weights(r, &field, &rule.backends, u64::from(u32::MAX), d)?;
        let refs: Vec<Value> = rule
            .backends
            .iter()
            .zip(rel)
            .filter(|(_, w)| *w > 0)
            .map(|(b, w)| {
                let mut x = service_ref(&backend_name(b), &b.namespace);
                if let Some(p) = b.port.or(r.port) {
                    x["port"] = json!(p);
                }
                x["weight"] = json!(w);
                x
            })
            .collect();
        let remote: Vec<&Backend> = rule
            .backends
            .iter()
            .filter(|b| b.remote.is_some() && b.weight > 0)
            .collect();
        let mut default = json!({"backendRefs": refs});
        if remote.len() == 1 && rule.backends.iter().filter(|b| b.weight > 0).count() == 1 {
            default["filters"] = super::destination_filters(&remote[0].host());
        } else if !remote.is_empty() {
            // Kuma's filters apply to the whole rule, not to one weighted backend, and without
            // the header the edge agent would only see the root's Host: refuse rather than
            // misroute the remote share.
            d.push(Diagnostic::error(&r.origin, &field, format!("Kuma cannot express a weighted split between a remote backend and other backends: MeshHTTPRoute has no per-backend filter to set {DESTINATION_HEADER}, which tells the edge agent where the remote share goes")));
            return None;
        }
        let m: Vec<Value> = if rule.matches.is_empty() {
            matches(&HttpMatch::default())
        } else {
            rule.matches.iter().flat_map(matches).collect()
        };
        rules.push(json!({"matches": m, "default": default}));
    }
    let mut to_ref = service_ref(&r.root, &r.namespace);
    if let (Some(p), Some(root)) = (r.port, model.services.get(&r.namespace, &r.root))
        && let Some(port) = root
            .ports
            .iter()
            .find(|x| x.port == p && !x.name.is_empty())
    {
        to_ref["sectionName"] = json!(port.name);
    }
    Some(json!({
        "apiVersion": API,
        "kind": "MeshHTTPRoute",
        "metadata": metadata(&r.name, &r.namespace, Some(r)),
        "spec": {"targetRef": {"kind": "Mesh"}, "to": [{"targetRef": to_ref, "rules": rules}]},
    }))
}

/// Whether a rule allows everything (what a MeshTrafficPermission can say), given the
/// TrafficTarget's own destination port restriction.
fn allows_everything(a: &Access, allowed: &Allowed) -> bool {
    a.port.is_none()
        && match allowed {
            Allowed::Tcp(ports) => ports.is_empty(),
            Allowed::Http(matches) => matches.iter().any(|m| {
                let any_path = match &m.path {
                    None => true,
                    Some(crate::model::PathMatch::Regex(re)) => {
                        super::simplify_regex(re) == Some(super::Simple::Any)
                    }
                    Some(crate::model::PathMatch::Prefix(p)) => p == "/",
                    Some(crate::model::PathMatch::Exact(_)) => false,
                };
                any_path
                    && m.headers.is_empty()
                    && (m.methods.is_empty() || m.methods.iter().any(|x| x == "*"))
            }),
        }
}

fn traffic_permission(
    model: &Model,
    a: &Access,
    opts: &Options,
    d: &mut Vec<Diagnostic>,
) -> Option<Value> {
    let selector = destination_selector(model, a, d)?;
    let expressible = a.allowed.iter().any(|x| allows_everything(a, x));
    let narrowed = a
        .allowed
        .iter()
        .filter(|x| !allows_everything(a, x))
        .count();
    if narrowed > 0 {
        d.push(Diagnostic::warning(&a.origin, "rules", format!("{narrowed} rule(s) restrict paths, methods, headers or ports, which a Kuma MeshTrafficPermission cannot express: left out (access narrowed, never widened)")));
    }
    let allow: Vec<Value> = if expressible {
        a.sources
            .iter()
            .map(|s| {
                json!({"spiffeID": {"type": "Exact", "value": format!("spiffe://{}/ns/{}/sa/{}", opts.trust_domain, s.namespace, s.name)}})
            })
            .collect()
    } else {
        d.push(Diagnostic::warning(
            &a.origin,
            "rules",
            "nothing expressible is allowed: the policy allows no caller to the destination",
        ));
        Vec::new()
    };
    Some(json!({
        "apiVersion": API,
        "kind": "MeshTrafficPermission",
        "metadata": access_metadata(a),
        "spec": {
            "targetRef": {"kind": "Dataplane", "labels": selector},
            "rules": [{"default": {"allow": allow}}],
        },
    }))
}

/// Renders the model for Kuma.
pub fn render(model: &Model, opts: &Options, d: &mut Vec<Diagnostic>) -> Vec<Value> {
    let mut out: Vec<Value> = model
        .routes
        .iter()
        .filter_map(|r| mesh_http_route(model, r, d))
        .collect();
    out.extend(
        model
            .access
            .iter()
            .filter_map(|a| traffic_permission(model, a, opts, d)),
    );
    for s in imports(model, opts) {
        let name = format!("{}-clusterset", s.name);
        let mut meta = metadata(&name, &s.namespace, None);
        meta["labels"]["multimesh.io/imported-service"] = json!(s.name);
        if let Some(r) = &s.remote {
            meta["labels"]["multimesh.io/origin-site"] = json!(r.site);
        }
        let ports: Vec<Value> = s
            .ports
            .iter()
            .map(|p| {
                let target = if p.protocol.is_http() { opts.edge_http_port } else { p.port };
                let mut x = json!({"port": p.port, "targetPort": target, "appProtocol": p.protocol.as_str()});
                if !p.name.is_empty() {
                    x["name"] = json!(p.name);
                }
                x
            })
            .collect();
        out.push(json!({
            "apiVersion": API,
            "kind": "MeshService",
            "metadata": meta,
            "spec": {
                "selector": {"dataplaneLabels": {"matchLabels": {EDGE_SELECTOR.0: EDGE_SELECTOR.1}}},
                "ports": ports,
            },
        }));
    }
    out
}
