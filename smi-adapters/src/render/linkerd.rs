//! Linkerd: `policy.linkerd.io` HTTPRoutes with a Service parent and weighted backendRefs (see
//! [`super::gateway`]), and for each imported service a selector-less mirror Service
//! `NAME-clusterset` with Endpoints at the local edge agent, the way Linkerd's own multicluster
//! mirrors work. No ServiceProfile is ever rendered: beside an HTTPRoute for the same service it
//! would silently take precedence.

use serde_json::{Value, json};

use super::gateway::{self, Flavor, mirror_name};
use super::{Options, imports, metadata};
use crate::diag::Diagnostic;
use crate::model::Model;

/// Renders the model for Linkerd.
pub fn render(model: &Model, opts: &Options, d: &mut Vec<Diagnostic>) -> Vec<Value> {
    let mut out = gateway::render(model, Flavor::Linkerd, d);
    for s in imports(model) {
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
