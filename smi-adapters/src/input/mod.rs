//! Reading inputs into the [`Model`]: SMI and Gateway API objects, core `Service` manifests, and
//! the federation catalog.
//!
//! Each kind and version has its own serde types (one file per kind, below). An object is read
//! in two steps:
//!
//! 1. **Typed.** [`typed`] deserializes the object's body into its version's types. Every field
//!    the types do not have is refused as an unknown field (all of them are reported, each with
//!    its path); a value of the wrong type is refused with its path (`spec.backends[1].weight`).
//! 2. **Checked.** The kind's `to_model` checks what types cannot say (names are DNS labels,
//!    weights are not all zero, references resolve) and reports every problem it finds, each
//!    naming its field.
//!
//! An object with any error is left out of the model. Two entry points share all of it:
//! [`parse`] reads YAML texts (the CLI), [`parse_objects`] takes objects already in memory (the
//! Kubernetes controller), so nothing is printed only to be parsed again.

mod catalog;
mod http_route;
mod route_group;
mod service;
mod split;
mod target;
mod values;

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::diag::{Diagnostic, Severity};
use crate::model::*;
use multimesh_core::names::{is_dns_label, is_dns_subdomain};

pub use catalog::parse_catalog;
pub use multimesh_core::yaml::{MAX_FILE_BYTES, MAX_INDENT, MAX_NESTING, check_bounds};
pub use values::quantity_milli;

/// Remote services, by key: what the catalog says of other sites' services.
pub type RemoteServices = BTreeMap<ServiceKey, ServiceInfo>;

/// One input object: its envelope (read first, to know which types to read the rest with) and
/// its body without `apiVersion`, `kind` and `metadata`.
struct Doc {
    origin: Origin,
    api: String,
    kind: String,
    name: String,
    namespace: String,
    body: Value,
}

impl Doc {
    /// The API group (`""` for the core group) and version.
    fn group_version(&self) -> (&str, &str) {
        self.api.rsplit_once('/').unwrap_or(("", self.api.as_str()))
    }

    /// Another object of this namespace, by name: `(namespace, name)`.
    fn sibling(&self, name: &str) -> route_group::ObjectName {
        (self.namespace.clone(), name.to_string())
    }
}

/// Splits YAML texts (`(file name, text)`) into objects named `FILE#N`; empty documents are
/// skipped. A file beyond [`check_bounds`] is refused whole, before it is parsed.
fn documents(files: &[(String, String)], diags: &mut Vec<Diagnostic>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (file, text) in files {
        if let Err(e) = check_bounds(text) {
            diags.push(Diagnostic::error(file, "", format!("not accepted: {e}")));
            continue;
        }
        for (i, d) in serde_norway::Deserializer::from_str(text).enumerate() {
            let here = format!("{file}#{}", i + 1);
            match serde::Deserialize::deserialize(d) {
                Ok(Value::Null) => {}
                Ok(v) => out.push((here, v)),
                Err(e) => {
                    diags.push(Diagnostic::error(&here, "", format!("not valid YAML: {e}")));
                    break; // the parser cannot resume after a syntax error
                }
            }
        }
    }
    out
}

/// Reads an object's envelope: apiVersion, kind and metadata (name, namespace; other metadata
/// such as labels is allowed and not read).
fn envelope(at: String, mut v: Value, d: &mut Vec<Diagnostic>) -> Option<Doc> {
    let Some(obj) = v.as_object_mut() else {
        d.push(Diagnostic::error(&at, "", "must be an object (a map)"));
        return None;
    };
    let text = |v: Option<Value>| match v {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Ok(String::new()),
        Some(other) => Err(other),
    };
    let api = text(obj.remove("apiVersion"));
    let kind = text(obj.remove("kind"));
    let mut metadata = obj.remove("metadata").unwrap_or(Value::Null);
    let name = text(metadata.get_mut("name").map(Value::take));
    let namespace = text(metadata.get_mut("namespace").map(Value::take));
    let (api, kind, name, namespace) = match (api, kind, name, namespace) {
        (Ok(a), Ok(k), Ok(n), Ok(ns)) => (a, k, n, ns),
        (a, k, n, ns) => {
            for (field, r) in [
                ("apiVersion", a),
                ("kind", k),
                ("metadata.name", n),
                ("metadata.namespace", ns),
            ] {
                if let Err(v) = r {
                    d.push(Diagnostic::error(
                        &at,
                        field,
                        format!("{v} is not a string"),
                    ));
                }
            }
            return None;
        }
    };
    if !metadata.is_null() && !metadata.is_object() {
        d.push(Diagnostic::error(&at, "metadata", "must be a map"));
        return None;
    }
    let namespace = if namespace.is_empty() {
        "default".to_string()
    } else {
        namespace
    };
    let origin = Origin {
        doc: at.clone(),
        kind: format!("{kind} {api}"),
        object: format!("{namespace}/{name}"),
    };
    if api.is_empty() || kind.is_empty() {
        let field = if api.is_empty() { "apiVersion" } else { "kind" };
        d.push(Diagnostic::error(&at, field, "is required"));
        return None;
    }
    if !is_dns_label(&namespace) {
        d.push(Diagnostic::error(
            &origin,
            "metadata.namespace",
            format!("{namespace:?} is not a DNS label"),
        ));
        return None;
    }
    if !is_dns_subdomain(&name) {
        d.push(Diagnostic::error(
            &origin,
            "metadata.name",
            format!("{name:?} is not a valid object name"),
        ));
        return None;
    }
    Some(Doc {
        origin,
        api,
        kind,
        name,
        namespace,
        body: v,
    })
}

/// Reads a body into `T`. With `strict`, every field `T` lacks is reported as an unknown field
/// (all of them, by path); a value of the wrong type is reported with its path. `None` when
/// anything was reported.
fn typed<T: DeserializeOwned>(doc: &Doc, strict: bool, d: &mut Vec<Diagnostic>) -> Option<T> {
    let mut unknown = Vec::new();
    let read = if strict {
        let mut note = |p: serde_ignored::Path<'_>| unknown.push(ignored_path(&p));
        let de = serde_ignored::Deserializer::new(&doc.body, &mut note);
        serde_path_to_error::deserialize(de)
    } else {
        serde_path_to_error::deserialize(&doc.body)
    };
    for field in &unknown {
        d.push(Diagnostic::error(&doc.origin, field, "unknown field"));
    }
    match read {
        Ok(v) if unknown.is_empty() => Some(v),
        Ok(_) => None,
        Err(e) => {
            d.push(Diagnostic::error(
                &doc.origin,
                &error_path(e.path()),
                without_position(&e.inner().to_string()),
            ));
            None
        }
    }
}

/// `spec.backends[1].weight` from serde_ignored's path.
fn ignored_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => join(ignored_path(parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// `spec.backends[1].weight` from serde_path_to_error's path.
fn error_path(p: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for s in p.iter() {
        match s {
            Segment::Seq { index } => {
                let _ = write!(out, "[{index}]");
            }
            Segment::Map { key } | Segment::Enum { variant: key } => out = join(out, key),
            Segment::Unknown => out = join(out, "?"),
        }
    }
    out
}

fn join(parent: String, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// serde_json's messages end in ` at line 0 column 0` when read from a value; the path says
/// where instead.
fn without_position(m: &str) -> String {
    m.split(" at line ").next().unwrap_or(m).to_string()
}

/// Parses YAML texts (`(file name, text)`) into the model, with `remote` the services of other
/// sites; objects with errors are left out and reported.
pub fn parse(files: &[(String, String)], remote: RemoteServices, d: &mut Vec<Diagnostic>) -> Model {
    let objects = documents(files, d);
    parse_objects(objects, remote, d)
}

/// Parses objects already in memory (`(where it came from, object)`) into the model; objects
/// with errors are left out and reported.
pub fn parse_objects(
    objects: Vec<(String, Value)>,
    remote: RemoteServices,
    d: &mut Vec<Diagnostic>,
) -> Model {
    let docs: Vec<Doc> = objects
        .into_iter()
        .filter_map(|(at, v)| envelope(at, v, d))
        .collect();
    let mut refs = route_group::Refs::default();
    let mut model = Model {
        services: Services {
            local: BTreeMap::new(),
            remote,
        },
        ..Default::default()
    };
    // Route groups and services first: splits and targets refer to them.
    for doc in &docs {
        match (doc.group_version(), doc.kind.as_str()) {
            (("specs.smi-spec.io", v), "HTTPRouteGroup") => {
                if let Some(m) = route_group::read_group(doc, v, d) {
                    refs.groups.insert(doc.sibling(&doc.name), m);
                }
            }
            (("specs.smi-spec.io", _), "TCPRoute") => {
                if let Some(p) = route_group::read_tcp(doc, d) {
                    refs.tcp.insert(doc.sibling(&doc.name), p);
                }
            }
            (("", "v1"), "Service") => {
                if let Some(s) = service::read(doc, d) {
                    model
                        .services
                        .local
                        .insert(ServiceKey::new(&s.namespace, &s.name), s);
                }
            }
            _ => {}
        }
    }
    for doc in &docs {
        match (doc.group_version(), doc.kind.as_str()) {
            (("split.smi-spec.io", v @ ("v1alpha1" | "v1alpha2" | "v1alpha3" | "v1alpha4")), "TrafficSplit") => {
                model.routes.extend(split::read(doc, v, &refs, d));
            }
            (("gateway.networking.k8s.io", "v1" | "v1beta1"), "HTTPRoute") => {
                model.routes.extend(http_route::read(doc, d));
            }
            (("access.smi-spec.io", v @ ("v1alpha1" | "v1alpha2" | "v1alpha3")), "TrafficTarget") => {
                model.access.extend(target::read(doc, v, &refs, d));
            }
            (("specs.smi-spec.io", "v1alpha1" | "v1alpha2" | "v1alpha3" | "v1alpha4"), "HTTPRouteGroup" | "TCPRoute")
            | (("", "v1"), "Service") => {}
            _ => d.push(Diagnostic::error(&doc.origin, "", "this apiVersion/kind is not translated (TrafficSplit v1alpha1-4, HTTPRouteGroup and TCPRoute v1alpha1-4, TrafficTarget v1alpha1-3, Gateway API HTTPRoute v1/v1beta1, and v1 Service are)")),
        }
    }
    one_route_per_root(&mut model, d);
    resolve(&mut model, d);
    model
}

/// Two routes for one root (and port) would fight over it: the first (by origin) is kept, the
/// others refused.
fn one_route_per_root(model: &mut Model, d: &mut Vec<Diagnostic>) {
    model.routes.sort_by(|a, b| {
        (&a.namespace, &a.root, a.port, &a.origin).cmp(&(&b.namespace, &b.root, b.port, &b.origin))
    });
    let mut keep: Vec<Route> = Vec::new();
    for r in std::mem::take(&mut model.routes) {
        if let Some(prev) = keep.iter().find(|p| {
            p.namespace == r.namespace
                && p.root == r.root
                && (p.port.is_none() || r.port.is_none() || p.port == r.port)
        }) {
            d.push(Diagnostic::error(
                &r.origin,
                if r.relative {
                    "spec.parentRefs"
                } else {
                    "spec.service"
                },
                format!(
                    "{}/{} is already routed by {}; one route per root service",
                    r.namespace, r.root, prev.origin
                ),
            ));
            continue;
        }
        keep.push(r);
    }
    model.routes = keep;
}

fn errors(d: &[Diagnostic]) -> usize {
    d.iter().filter(|x| x.severity == Severity::Error).count()
}

/// Marks remote backends and checks ports against what is known of the services.
fn resolve(model: &mut Model, d: &mut Vec<Diagnostic>) {
    let services = &model.services;
    model.routes.retain_mut(|r| {
        let before = errors(d);
        let root = services.get(&r.namespace, &r.root);
        let root_ports: Option<Vec<u16>> = root.map(|s| {
            s.ports
                .iter()
                .map(|p| p.port)
                .filter(|p| r.port.is_none_or(|x| x == *p))
                .collect()
        });
        if root.is_none() {
            d.push(Diagnostic::warning(&r.origin, "", format!("root service {}/{} is not among the inputs (no Service manifest) nor in the catalog: ports are not checked", r.namespace, r.root)));
        }
        let fields: Vec<String> = (0..r.rules.len()).map(|i| r.backends_field(i)).collect();
        for (rule, field) in r.rules.iter_mut().zip(&fields) {
            for b in rule.backends.iter_mut() {
                let info = services.get(&b.namespace, &b.name);
                b.remote = info.and_then(|s| s.remote.clone());
                match (info, &root_ports) {
                    (Some(info), Some(root_ports)) => {
                        let have: Vec<u16> = info.ports.iter().map(|p| p.port).collect();
                        let wanted = match b.port {
                            Some(p) => vec![p],
                            None => root_ports.clone(),
                        };
                        for p in wanted {
                            if !have.contains(&p) {
                                d.push(Diagnostic::error(&r.origin, field, format!("backend {}/{} has no port {p} (the root's port); it has {have:?}", b.namespace, b.name)));
                            }
                        }
                    }
                    (None, _) => d.push(Diagnostic::warning(&r.origin, field, format!("backend {}/{} is neither among the inputs nor in the catalog: treated as local, ports not checked", b.namespace, b.name))),
                    _ => {}
                }
            }
        }
        errors(d) == before
    });
}
