//! Istio: a VirtualService per root service (weights as integer percentages, matches, one route
//! per root port), and for each imported service a ServiceEntry pointing its
//! `.svc.clusterset.local` host at the local edge agent plus a DestinationRule requiring Istio
//! mTLS to it.

use serde_json::{Value, json};

use super::{
    DESTINATION_HEADER, Options, Simple, access_metadata, destination_selector, imports, metadata,
    per_method, percent_split, route_ports, simplify_regex,
};
use crate::diag::Diagnostic;
use crate::model::{Access, Allowed, HttpMatch, Model, PathMatch, Protocol, Route, host};

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
    per_method(base, &m.methods, |meth| json!({"exact": meth}))
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
            let field = r.backends_field(i);
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

/// One AuthorizationPolicy rule per allowed HTTP match (headers need their own `when`), or per
/// TCP rule. Patterns Istio cannot express exactly are left out (narrowing), with a warning.
fn authorization(
    model: &Model,
    a: &Access,
    opts: &Options,
    d: &mut Vec<Diagnostic>,
) -> Option<Value> {
    let selector = destination_selector(model, a, d)?;
    let principals: Vec<String> = a
        .sources
        .iter()
        .map(|s| format!("{}/ns/{}/sa/{}", opts.trust_domain, s.namespace, s.name))
        .collect();
    let from = json!([{"source": {"principals": principals}}]);
    let port_list = |ports: &[u16]| -> Vec<String> {
        let mut p: Vec<u16> = match a.port {
            Some(dp) if ports.is_empty() || ports.contains(&dp) => vec![dp],
            Some(_) => vec![],
            None => ports.to_vec(),
        };
        p.sort_unstable();
        p.iter().map(|x| x.to_string()).collect()
    };
    let mut rules = Vec::new();
    for allowed in &a.allowed {
        match allowed {
            Allowed::Tcp(ports) => {
                let p = port_list(ports);
                if a.port.is_some() && p.is_empty() {
                    continue; // the TCPRoute's ports exclude the destination port
                }
                let mut rule = json!({"from": from});
                if !p.is_empty() {
                    rule["to"] = json!([{"operation": {"ports": p}}]);
                }
                rules.push(rule);
            }
            Allowed::Http(matches) => {
                for m in matches {
                    let mut op = json!({});
                    if !m.methods.is_empty() {
                        op["methods"] = json!(m.methods);
                    }
                    let p = port_list(&[]);
                    if !p.is_empty() {
                        op["ports"] = json!(p);
                    }
                    let path = match &m.path {
                        None => Some(None),
                        Some(PathMatch::Exact(x)) => authz_value(&Simple::Exact(x.clone()), true),
                        Some(PathMatch::Prefix(x)) => authz_value(&Simple::Prefix(x.clone()), true),
                        Some(PathMatch::Regex(re)) => {
                            simplify_regex(re).and_then(|s| authz_value(&s, true))
                        }
                    };
                    let Some(path) = path else {
                        let shown = match &m.path {
                            Some(
                                PathMatch::Regex(x) | PathMatch::Exact(x) | PathMatch::Prefix(x),
                            ) => x.as_str(),
                            None => "",
                        };
                        d.push(Diagnostic::warning(&a.origin, "rules", format!("match {:?}: path {shown:?} has no exact Istio authorization form (no regular expressions; `*` and `{{`, `}}` are Istio wildcards and templates), so the match is left out (access narrowed, never widened)", m.name)));
                        continue;
                    };
                    if let Some(p) = path {
                        op["paths"] = json!([p]);
                    }
                    let mut when = Vec::new();
                    let mut ok = true;
                    for h in &m.headers {
                        let simple = if h.regex {
                            simplify_regex(&h.value)
                        } else {
                            Some(Simple::Exact(h.value.clone()))
                        };
                        let Some(value) = simple.and_then(|s| authz_value(&s, false)) else {
                            ok = false;
                            break;
                        };
                        let value = value.unwrap_or_else(|| "*".to_string());
                        when.push(json!({"key": format!("request.headers[{}]", h.name), "values": [value]}));
                    }
                    if !ok {
                        d.push(Diagnostic::warning(&a.origin, "rules", format!("match {:?}: a header pattern has no exact Istio form; the match is left out (access narrowed, never widened)", m.name)));
                        continue;
                    }
                    let mut rule = json!({"from": from});
                    if op.as_object().is_some_and(|o| !o.is_empty()) {
                        rule["to"] = json!([{"operation": op}]);
                    }
                    if !when.is_empty() {
                        rule["when"] = json!(when);
                    }
                    rules.push(rule);
                }
            }
        }
    }
    if rules.is_empty() {
        d.push(Diagnostic::warning(
            &a.origin,
            "rules",
            "nothing expressible is allowed: the policy denies every request to the destination",
        ));
    }
    let mut spec = json!({"selector": {"matchLabels": selector}, "action": "ALLOW"});
    if !rules.is_empty() {
        spec["rules"] = json!(rules);
    }
    Some(json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": access_metadata(a),
        "spec": spec,
    }))
}

/// The Istio authorization form of a simple match: `Some(None)` for no constraint (any path),
/// `Some(Some(v))` for the value to write, `None` when no exact form exists. Istio reads `*`
/// at either end of a value as a wildcard and `{*}`/`{**}` in a path as a template, and refuses
/// an empty value or other braces in a path; a literal containing any of those would either be
/// refused by istiod or, worse, match more than the spec allows.
fn authz_value(s: &Simple, path: bool) -> Option<Option<String>> {
    let plain = |x: &str| !x.contains('*') && !(path && (x.contains('{') || x.contains('}')));
    match s {
        Simple::Any if path => Some(None),
        Simple::Any => Some(Some("*".into())),
        Simple::Exact(x) if !x.is_empty() && plain(x) => Some(Some(x.clone())),
        Simple::Prefix(x) if plain(x) => Some(Some(format!("{x}*"))),
        _ => None,
    }
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
    for a in &model.access {
        if let Some(p) = authorization(model, a, opts, d) {
            out.push(p);
        }
    }
    for s in imports(model, opts) {
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
        // The edge agent is reached by name (its Service), or at a fixed address when it runs
        // outside the cluster's service network.
        let resolution = if opts.edge_host.parse::<std::net::IpAddr>().is_ok() {
            "STATIC"
        } else {
            "DNS"
        };
        out.push(json!({
            "apiVersion": API,
            "kind": "ServiceEntry",
            "metadata": meta.clone(),
            "spec": {
                "hosts": [s.host()],
                "location": "MESH_INTERNAL",
                "resolution": resolution,
                "ports": ports,
                "endpoints": [{"address": opts.edge_host}],
            },
        }));
        // The edge agent has no Istio sidecar: it takes the call in plain text on its egress
        // port and carries it to the other site over the federation's own mTLS. ISTIO_MUTUAL
        // here would make the caller's sidecar open an Istio mTLS session the edge agent cannot
        // answer (seen with a real istiod: every call failed); DISABLE also wins over a
        // mesh-wide ISTIO_MUTUAL default.
        out.push(json!({
            "apiVersion": API,
            "kind": "DestinationRule",
            "metadata": meta,
            "spec": {
                "host": s.host(),
                "trafficPolicy": {"tls": {"mode": "DISABLE"}},
            },
        }));
    }
    out
}
