//! Kuma: a `MeshHTTPRoute` per root service (targets selected by the `kuma.io/display-name`
//! and `k8s.kuma.io/namespace` labels, relative weights kept exact), and for each imported
//! service a `MeshService` `NAME-clusterset` selecting the local edge agent's dataplanes.
//! Requests that match no rule keep going to the root service (Kuma's default route).

use serde_json::{Value, json};

use super::{DESTINATION_HEADER, Options, imports, metadata, route_ports};
use crate::diag::Diagnostic;
use crate::model::{Backend, HttpMatch, Model, Route};

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

/// Renders the model for Kuma.
pub fn render(model: &Model, opts: &Options, d: &mut Vec<Diagnostic>) -> Vec<Value> {
    let mut out: Vec<Value> = model
        .routes
        .iter()
        .filter_map(|r| mesh_http_route(model, r, d))
        .collect();
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
