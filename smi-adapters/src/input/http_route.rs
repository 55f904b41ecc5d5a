//! Gateway API `HTTPRoute` v1 and v1beta1 (the same shape) with a `Service` parent (GAMMA,
//! east-west). What is not translated yet (filters, timeouts, retries, session persistence,
//! query parameter matches, section names) is refused rather than dropped.

use serde::Deserialize;
use serde_json::Value;

use super::values::{Scalar, integer_weight, port, short_name};
use super::{Doc, errors, typed};
use crate::diag::Diagnostic;
use crate::model::{Backend, HeaderMatch, HttpMatch, PathMatch, Route, Rule};
use crate::patterns::{check_header_name, check_re2};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpRoute {
    #[serde(default)]
    spec: Spec,
    #[serde(default, rename = "status")]
    _status: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    parent_refs: Vec<ParentRef>,
    /// Not read for a Service parent (GAMMA): the Service is the host.
    #[serde(default, rename = "hostnames")]
    _hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<HttpRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ParentRef {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    section_name: Option<String>,
    port: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpRule {
    #[serde(default, rename = "name")]
    _name: Option<String>,
    #[serde(default)]
    matches: Vec<RouteMatch>,
    #[serde(default)]
    backend_refs: Vec<BackendRef>,
    filters: Option<Value>,
    timeouts: Option<Value>,
    retry: Option<Value>,
    session_persistence: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RouteMatch {
    path: Option<PathSpec>,
    #[serde(default)]
    headers: Vec<HeaderSpec>,
    method: Option<String>,
    query_params: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeaderSpec {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackendRef {
    group: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    port: Option<i64>,
    weight: Option<Scalar>,
    filters: Option<Value>,
}

fn not_yet(present: bool, field: String, doc: &Doc, why: &str, d: &mut Vec<Diagnostic>) {
    if present {
        d.push(Diagnostic::error(&doc.origin, &field, why));
    }
}

const DROPPING: &str = "is not translated yet; refusing rather than dropping it";

/// Reads an HTTPRoute into a route for its one Service parent.
pub(super) fn read(doc: &Doc, d: &mut Vec<Diagnostic>) -> Option<Route> {
    let spec = typed::<HttpRoute>(doc, true, d)?.spec;
    let o = &doc.origin;
    let before = d.len();
    let mut parents = Vec::new();
    for (i, p) in spec.parent_refs.into_iter().enumerate() {
        let f = format!("spec.parentRefs[{i}]");
        let kind = p.kind.as_deref().unwrap_or("Gateway");
        let group = p.group.as_deref().unwrap_or("gateway.networking.k8s.io");
        if kind != "Service" || !(group.is_empty() || group == "core") {
            d.push(Diagnostic::warning(o, &f, format!("{group}/{kind} parent ignored: only Service parents (GAMMA, east-west) are translated")));
            continue;
        }
        if p.namespace.as_ref().is_some_and(|ns| *ns != doc.namespace) {
            d.push(Diagnostic::error(
                o,
                &format!("{f}.namespace"),
                "a Service parent in another namespace is not supported",
            ));
            continue;
        }
        not_yet(
            p.section_name.is_some(),
            format!("{f}.sectionName"),
            doc,
            "is not translated yet; use port to narrow a route to one port",
            d,
        );
        let port = p.port.and_then(|x| port(x, &format!("{f}.port"), o, d));
        if let Some(n) = short_name(p.name.as_deref(), &format!("{f}.name"), o, d) {
            parents.push((n, port));
        }
    }
    if parents.is_empty() && d.len() == before {
        d.push(Diagnostic::error(
            o,
            "spec.parentRefs",
            "no Service parent: nothing to translate for a mesh",
        ));
    }
    if parents.len() > 1 {
        d.push(Diagnostic::error(
            o,
            "spec.parentRefs",
            "more than one Service parent: split it into one HTTPRoute per Service",
        ));
    }
    let mut rules = Vec::new();
    for (i, r) in spec.rules.into_iter().enumerate() {
        let f = format!("spec.rules[{i}]");
        not_yet(
            r.filters.is_some(),
            format!("{f}.filters"),
            doc,
            DROPPING,
            d,
        );
        not_yet(
            r.timeouts.is_some(),
            format!("{f}.timeouts"),
            doc,
            DROPPING,
            d,
        );
        not_yet(r.retry.is_some(), format!("{f}.retry"), doc, DROPPING, d);
        not_yet(
            r.session_persistence.is_some(),
            format!("{f}.sessionPersistence"),
            doc,
            DROPPING,
            d,
        );
        let mut matches = Vec::new();
        for (j, m) in r.matches.into_iter().enumerate() {
            let mf = format!("{f}.matches[{j}]");
            not_yet(
                m.query_params.is_some(),
                format!("{mf}.queryParams"),
                doc,
                "is not translated yet; refusing rather than widening the match",
                d,
            );
            let path = match m.path {
                None => None,
                Some(p) => {
                    let value = p.value.unwrap_or_else(|| "/".into());
                    match p.kind.as_deref().unwrap_or("PathPrefix") {
                        "Exact" => Some(PathMatch::Exact(value)),
                        "PathPrefix" if value == "/" => None,
                        "PathPrefix" => Some(PathMatch::Prefix(value)),
                        "RegularExpression" => {
                            if let Err(e) = check_re2(&value) {
                                d.push(Diagnostic::error(o, &format!("{mf}.path.value"), e));
                            }
                            Some(PathMatch::Regex(value))
                        }
                        t => {
                            d.push(Diagnostic::error(
                                o,
                                &format!("{mf}.path.type"),
                                format!("{t:?} is not Exact, PathPrefix or RegularExpression"),
                            ));
                            None
                        }
                    }
                }
            };
            let mut headers = Vec::new();
            for (k, h) in m.headers.into_iter().enumerate() {
                let hf = format!("{mf}.headers[{k}]");
                let regex = match h.kind.as_deref().unwrap_or("Exact") {
                    "Exact" => false,
                    "RegularExpression" => true,
                    t => {
                        d.push(Diagnostic::error(
                            o,
                            &format!("{hf}.type"),
                            format!("{t:?} is not Exact or RegularExpression"),
                        ));
                        continue;
                    }
                };
                let name = h.name.unwrap_or_default();
                if let Err(e) = check_header_name(&name) {
                    d.push(Diagnostic::error(o, &format!("{hf}.name"), e));
                    continue;
                }
                let value = h.value.unwrap_or_default();
                if regex && let Err(e) = check_re2(&value) {
                    d.push(Diagnostic::error(o, &format!("{hf}.value"), e));
                }
                headers.push(HeaderMatch {
                    name: name.to_ascii_lowercase(),
                    value,
                    regex,
                });
            }
            headers.sort();
            matches.push(HttpMatch {
                name: String::new(),
                path,
                methods: m.method.into_iter().collect(),
                headers,
            });
        }
        // A rule with only catch-all matches is a catch-all rule.
        if matches.iter().all(|m| *m == HttpMatch::default()) {
            matches.clear();
        }
        if r.backend_refs.is_empty() {
            d.push(Diagnostic::error(
                o,
                &format!("{f}.backendRefs"),
                "is empty: requests would fail; not translated",
            ));
        }
        let mut backends: Vec<Backend> = Vec::new();
        for (j, b) in r.backend_refs.into_iter().enumerate() {
            let bf = format!("{f}.backendRefs[{j}]");
            let kind = b.kind.as_deref().unwrap_or("Service");
            let group = b.group.as_deref().unwrap_or("");
            if kind != "Service" || !(group.is_empty() || group == "core") {
                d.push(Diagnostic::error(
                    o,
                    &bf,
                    format!("{group}/{kind} backends are not supported (only Service)"),
                ));
                continue;
            }
            not_yet(
                b.filters.is_some(),
                format!("{bf}.filters"),
                doc,
                DROPPING,
                d,
            );
            let weight = match b.weight.as_ref().map_or(Ok(1000), integer_weight) {
                Ok(w) => w,
                Err(e) => {
                    d.push(Diagnostic::error(o, &format!("{bf}.weight"), e));
                    continue;
                }
            };
            let Some(name) = short_name(b.name.as_deref(), &format!("{bf}.name"), o, d) else {
                continue;
            };
            let namespace = b.namespace.unwrap_or_else(|| doc.namespace.clone());
            let port = match b.port {
                Some(p) => match port(p, &format!("{bf}.port"), o, d) {
                    Some(p) => Some(p),
                    None => continue,
                },
                None => None,
            };
            if backends
                .iter()
                .any(|x| x.name == name && x.namespace == namespace && x.port == port)
            {
                d.push(Diagnostic::error(
                    o,
                    &bf,
                    format!("{namespace}/{name} is listed twice"),
                ));
                continue;
            }
            backends.push(Backend {
                name,
                namespace,
                weight,
                port,
                remote: None,
            });
        }
        if !backends.is_empty() && backends.iter().all(|b| b.weight == 0) {
            d.push(Diagnostic::error(
                o,
                &format!("{f}.backendRefs"),
                "every weight is zero: there is nowhere to send traffic",
            ));
        }
        backends
            .sort_by(|a, b| (&a.namespace, &a.name, a.port).cmp(&(&b.namespace, &b.name, b.port)));
        rules.push(Rule { matches, backends });
    }
    if rules.is_empty() {
        d.push(Diagnostic::error(o, "spec.rules", "is required"));
    }
    if errors(&d[before..]) > 0 {
        return None;
    }
    let (root, port) = parents.into_iter().next()?;
    Some(Route {
        origin: o.clone(),
        name: doc.name.clone(),
        namespace: doc.namespace.clone(),
        root,
        port,
        rules,
        relative: true,
    })
}
