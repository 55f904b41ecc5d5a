//! Istio: a VirtualService per root service (weights as integer percentages, matches, one route
//! per root port), and for each imported service a ServiceEntry pointing its
//! `.svc.clusterset.local` host at the local edge agent plus a DestinationRule requiring Istio
//! mTLS to it.

use serde_json::{Value, json};

use super::{DESTINATION_HEADER, Options, imports, metadata, percent_split, route_ports};
use crate::diag::Diagnostic;
use crate::model::{HttpMatch, Model, PathMatch, Protocol, Route, host};

const API: &str = "networking.istio.io/v1";

fn match_requests(m: &HttpMatch, port: Option<u16>) -> Vec<Value> {
    let mut base = json!({});
    if !m.name.is_empty() {
        base["name"] = json!(m.name);
    }
    match &m.path {
        Some(PathMatch::Exact(p)) => base["uri"] = json!({"exact": p}),
        Some(PathMatch::Prefix(p)) => base["uri"] = json!({"prefix": p}),
        Some(PathMatch::Regex(p)) => base["uri"] = json!({"regex": p}),
        None => {}
    }
    if !m.headers.is_empty() {
        let mut h = serde_json::Map::new();
        for x in &m.headers {
            let kind = if x.regex { "regex" } else { "exact" };
            h.insert(x.name.clone(), json!({ kind: x.value }));
        }
        base["headers"] = Value::Object(h);
    }
    if let Some(p) = port {
        base["port"] = json!(p);
    }
    // Istio matches one method per request match: one per method, same other conditions.
    if m.methods.is_empty() {
        return vec![base];
    }
    m.methods
        .iter()
        .map(|meth| {
            let mut x = base.clone();
            x["method"] = json!({"exact": meth});
            x
        })
        .collect()
}

fn virtual_service(model: &Model, r: &Route, d: &mut Vec<Diagnostic>) -> Option<Value> {
    let root_remote = model
        .services
        .get(&r.namespace, &r.root)
        .is_some_and(|s| s.remote.is_some());
    let root_host = host(&r.root, &r.namespace, root_remote);
    // One pass per root port when the ports are known (routes name their port), else one.
    let ports: Vec<(Option<u16>, Protocol)> = match route_ports(model, r) {
        Some(p) if !p.is_empty() => p.into_iter().map(|(n, proto)| (Some(n), proto)).collect(),
        _ => vec![(r.port, Protocol::Http)],
    };
    let multi = ports.len() > 1;
    let mut http = Vec::new();
    let mut tcp = Vec::new();
    for (port, proto) in &ports {
        let port_match = if multi { *port } else { r.port };
        for (i, rule) in r.rules.iter().enumerate() {
            let field = if r.relative {
                format!("spec.rules[{i}].backendRefs")
            } else {
                "spec.backends".into()
            };
            let split = percent_split(r, &field, &rule.backends, d);
            let route: Vec<Value> = split
                .iter()
                .map(|(b, pct)| {
                    let mut dest = json!({"host": b.host()});
                    if let Some(p) = b.port.or(*port) {
                        dest["port"] = json!({"number": p});
                    }
                    let mut x = json!({"destination": dest, "weight": pct});
                    if b.remote.is_some() && proto.is_http() {
                        x["headers"] = json!({"request": {"set": {DESTINATION_HEADER: b.host()}}});
                    }
                    x
                })
                .collect();
            if !proto.is_http() {
                if !rule.matches.is_empty() {
                    d.push(Diagnostic::error(
                        &r.origin,
                        "",
                        format!(
                            "port {} of {} is TCP: HTTP matches cannot apply to it",
                            port.unwrap_or(0),
                            r.root
                        ),
                    ));
                    return None;
                }
                let mut t = json!({"route": route});
                if let Some(p) = port_match {
                    t["match"] = json!([{"port": p}]);
                }
                tcp.push(t);
                continue;
            }
            let mut h = json!({"route": route});
            if rule.matches.is_empty() {
                if let Some(p) = port_match {
                    h["match"] = json!([{"port": p}]);
                }
            } else {
                let m: Vec<Value> = rule
                    .matches
                    .iter()
                    .flat_map(|m| match_requests(m, port_match))
                    .collect();
                h["match"] = json!(m);
            }
            http.push(h);
        }
        // Requests that match no rule still reach the root service (SMI semantics; Istio
        // would answer 404 otherwise).
        if proto.is_http() && r.rules.iter().all(|x| !x.matches.is_empty()) {
            let mut dest = json!({"host": root_host});
            if let Some(p) = port {
                dest["port"] = json!({"number": p});
            }
            let mut h = json!({"route": [{"destination": dest}]});
            if let Some(p) = port_match {
                h["match"] = json!([{"port": p}]);
            }
            http.push(h);
        }
    }
    let mut spec = json!({"hosts": [root_host]});
    if !http.is_empty() {
        spec["http"] = json!(http);
    }
    if !tcp.is_empty() {
        spec["tcp"] = json!(tcp);
    }
    Some(json!({
        "apiVersion": API,
        "kind": "VirtualService",
        "metadata": metadata(&r.name, &r.namespace, Some(r)),
        "spec": spec,
    }))
}

fn istio_protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Http => "HTTP",
        Protocol::Http2 => "HTTP2",
        Protocol::Grpc => "GRPC",
        Protocol::Tcp => "TCP",
    }
}

/// Renders the model for Istio.
pub fn render(model: &Model, opts: &Options, d: &mut Vec<Diagnostic>) -> Vec<Value> {
    let mut out = Vec::new();
    for r in &model.routes {
        if let Some(vs) = virtual_service(model, r, d) {
            out.push(vs);
        }
    }
    for s in imports(model) {
        let name = format!("{}-clusterset", s.name);
        let ports: Vec<Value> = s
            .ports
            .iter()
            .map(|p| {
                let name = if p.name.is_empty() { format!("{}-{}", p.protocol.as_str(), p.port) } else { p.name.clone() };
                let target = if p.protocol.is_http() { opts.edge_http_port } else { p.port };
                json!({"number": p.port, "name": name, "protocol": istio_protocol(p.protocol), "targetPort": target})
            })
            .collect();
        let mut labels = json!({"app.kubernetes.io/managed-by": "multimesh"});
        if let Some(remote) = &s.remote {
            labels["multimesh.io/origin-site"] = json!(remote.site);
        }
        let mut meta = metadata(&name, &s.namespace, None);
        meta["labels"] = labels;
        out.push(json!({
            "apiVersion": API,
            "kind": "ServiceEntry",
            "metadata": meta.clone(),
            "spec": {
                "hosts": [s.host()],
                "location": "MESH_INTERNAL",
                "resolution": "DNS",
                "ports": ports,
                "endpoints": [{"address": opts.edge_host}],
            },
        }));
        out.push(json!({
            "apiVersion": API,
            "kind": "DestinationRule",
            "metadata": meta,
            "spec": {
                "host": s.host(),
                "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
            },
        }));
    }
    out
}
