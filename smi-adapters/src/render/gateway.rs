//! HTTPRoutes with the root Service as parent and relative weights kept exact, in two flavours:
//!
//! - **Gateway API for service meshes (GAMMA)**: `gateway.networking.k8s.io/v1`. Remote backends
//!   are MCS `ServiceImport`s (the import the federation creates for them), which GAMMA
//!   implementations route to the local edge agent.
//! - **Linkerd**: `policy.linkerd.io/v1beta3` (same shape, `core` parent group). Remote
//!   backends are the mirror Services `NAME-clusterset` rendered by the Linkerd renderer.

use serde_json::{Value, json};

use super::{metadata, route_ports};
use crate::diag::Diagnostic;
use crate::model::{HttpMatch, Model, PathMatch, Route};

const MAX_WEIGHT: u64 = 1_000_000;

/// Which HTTPRoute API to render.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// `gateway.networking.k8s.io/v1`.
    Gamma,
    /// `policy.linkerd.io/v1beta3`.
    Linkerd,
}

impl Flavor {
    fn api(self) -> &'static str {
        match self {
            Flavor::Gamma => "gateway.networking.k8s.io/v1",
            Flavor::Linkerd => "policy.linkerd.io/v1beta3",
        }
    }

    fn parent_group(self) -> &'static str {
        match self {
            Flavor::Gamma => "",
            Flavor::Linkerd => "core",
        }
    }
}

/// The name of the Linkerd mirror Service of an imported service.
pub fn mirror_name(name: &str) -> String {
    format!("{name}-clusterset")
}

/// Gateway-API-style match objects for one model match (one per method).
pub fn matches(m: &HttpMatch) -> Vec<Value> {
    let mut base = json!({});
    match &m.path {
        Some(PathMatch::Exact(p)) => base["path"] = json!({"type": "Exact", "value": p}),
        Some(PathMatch::Prefix(p)) => base["path"] = json!({"type": "PathPrefix", "value": p}),
        Some(PathMatch::Regex(p)) => {
            base["path"] = json!({"type": "RegularExpression", "value": p})
        }
        None => {}
    }
    if !m.headers.is_empty() {
        base["headers"] = m
            .headers
            .iter()
            .map(|h| {
                let t = if h.regex {
                    "RegularExpression"
                } else {
                    "Exact"
                };
                json!({"type": t, "name": h.name, "value": h.value})
            })
            .collect();
    }
    super::per_method(base, &m.methods, |meth| json!(meth))
}

fn http_route(
    flavor: Flavor,
    r: &Route,
    port: u16,
    suffix: bool,
    d: &mut Vec<Diagnostic>,
) -> Option<Value> {
    let mut rules = Vec::new();
    for (i, rule) in r.rules.iter().enumerate() {
        let field = r.backends_field(i);
        let rel = super::relative_weights(r, &field, &rule.backends, MAX_WEIGHT, d)?;
        let refs: Vec<Value> = rule
            .backends
            .iter()
            .zip(rel)
            .filter(|(_, w)| *w > 0)
            .map(|(b, w)| {
                // A core Service is named without `group` (it defaults to the core group): a
                // v1.20 API server, whose CRDs cannot carry `default: ""`, refuses `group: ""`.
                let mut x = match (b.remote.is_some(), flavor) {
                    (true, Flavor::Gamma) => json!({"group": "multicluster.x-k8s.io", "kind": "ServiceImport", "name": b.name}),
                    (true, Flavor::Linkerd) => json!({"kind": "Service", "name": mirror_name(&b.name)}),
                    (false, _) => json!({"kind": "Service", "name": b.name}),
                };
                if b.namespace != r.namespace {
                    x["namespace"] = json!(b.namespace);
                }
                x["port"] = json!(b.port.unwrap_or(port));
                x["weight"] = json!(w);
                if b.remote.is_some() {
                    x["filters"] = super::destination_filters(&b.host());
                }
                x
            })
            .collect();
        let mut rule_v = json!({"backendRefs": refs});
        if !rule.matches.is_empty() {
            rule_v["matches"] = rule.matches.iter().flat_map(matches).collect();
        }
        rules.push(rule_v);
    }
    // Requests that match no rule still reach the root service (GAMMA answers 404 otherwise).
    if r.rules.iter().all(|x| !x.matches.is_empty()) {
        rules.push(json!({"backendRefs": [{"kind": "Service", "name": r.root, "port": port}]}));
    }
    let name = if suffix {
        format!("{}-{port}", r.name)
    } else {
        r.name.clone()
    };
    Some(json!({
        "apiVersion": flavor.api(),
        "kind": "HTTPRoute",
        "metadata": metadata(&name, &r.namespace, Some(r)),
        "spec": {
            "parentRefs": [{"group": flavor.parent_group(), "kind": "Service", "name": r.root, "port": port}],
            "rules": rules,
        },
    }))
}

/// Renders the model's routes as HTTPRoutes of `flavor`.
pub fn render(model: &Model, flavor: Flavor, d: &mut Vec<Diagnostic>) -> Vec<Value> {
    let mut out = Vec::new();
    for r in &model.routes {
        let ports: Vec<u16> = match (r.port, route_ports(model, r)) {
            (Some(p), _) => vec![p],
            (None, Some(ps)) => {
                let http: Vec<u16> = ps
                    .iter()
                    .filter(|(_, p)| p.is_http())
                    .map(|(n, _)| *n)
                    .collect();
                if http.len() < ps.len() {
                    d.push(Diagnostic::warning(
                        &r.origin,
                        "",
                        "TCP ports of the root are left out: an HTTPRoute only routes HTTP",
                    ));
                }
                http
            }
            (None, None) => {
                d.push(Diagnostic::error(&r.origin, "", format!("Gateway API backendRefs need a port, and the ports of {}/{} are unknown: pass its Service manifest with -f", r.namespace, r.root)));
                continue;
            }
        };
        let suffix = ports.len() > 1;
        for p in ports {
            if let Some(v) = http_route(flavor, r, p, suffix, d) {
                out.push(v);
            }
        }
    }
    out
}
