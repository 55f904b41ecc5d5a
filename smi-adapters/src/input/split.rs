//! SMI `TrafficSplit` v1alpha1-4: a root service's traffic split between backends by weight.
//!
//! v1alpha1 weights are quantities (`500m`), later ones integers; v1alpha3 and v1alpha4 add
//! `matches` (HTTPRouteGroups the split applies to). One shape per version family:
//! [`SpecV1alpha1`] (v1alpha1, v1alpha2) and [`SpecV1alpha3`] (v1alpha3, v1alpha4).

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::Value;

use super::route_group::Refs;
use super::values::{Scalar, integer_weight, quantity_milli, short_name};
use super::{Doc, typed};
use crate::diag::Diagnostic;
use crate::model::{Backend, Route, Rule};

#[derive(Deserialize)]
#[serde(bound = "S: Deserialize<'de> + Default")]
struct TrafficSplit<S> {
    #[serde(default)]
    spec: S,
    #[serde(default, rename = "status")]
    _status: Option<Value>,
}

/// v1alpha1 and v1alpha2.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SpecV1alpha1 {
    service: Option<String>,
    backends: Option<Vec<SplitBackend>>,
}

/// v1alpha3 and v1alpha4.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SpecV1alpha3 {
    service: Option<String>,
    backends: Option<Vec<SplitBackend>>,
    #[serde(default)]
    matches: Vec<MatchRef>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SplitBackend {
    service: Option<String>,
    weight: Option<Scalar>,
}

/// A reference to an HTTPRouteGroup of the split's namespace.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MatchRef {
    kind: Option<String>,
    name: Option<String>,
    #[serde(rename = "apiGroup")]
    _api_group: Option<String>,
}

/// Reads a TrafficSplit of `version` into a route.
pub(super) fn read(
    doc: &Doc,
    version: &str,
    refs: &Refs,
    d: &mut Vec<Diagnostic>,
) -> Option<Route> {
    let (service, backends, matches) = match version {
        "v1alpha1" | "v1alpha2" => {
            let s = typed::<TrafficSplit<SpecV1alpha1>>(doc, true, d)?.spec;
            (s.service, s.backends, vec![])
        }
        _ => {
            let s = typed::<TrafficSplit<SpecV1alpha3>>(doc, true, d)?.spec;
            (s.service, s.backends, s.matches)
        }
    };
    let weight = if version == "v1alpha1" {
        quantity_milli
    } else {
        integer_weight
    };
    let o = &doc.origin;
    let before = d.len();
    let root = short_name(service.as_deref(), "spec.service", o, d);
    let Some(list) = backends.filter(|l| !l.is_empty()) else {
        d.push(Diagnostic::error(
            o,
            "spec.backends",
            "is required (at least one backend)",
        ));
        return None;
    };
    let listed = list.len();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, b) in list.into_iter().enumerate() {
        let f = format!("spec.backends[{i}]");
        let name = short_name(b.service.as_deref(), &format!("{f}.service"), o, d);
        let w = match b.weight.as_ref().map(weight) {
            Some(Ok(w)) => Some(w),
            Some(Err(e)) => {
                d.push(Diagnostic::error(o, &format!("{f}.weight"), e));
                None
            }
            None => {
                d.push(Diagnostic::error(o, &format!("{f}.weight"), "is required"));
                None
            }
        };
        if let Some(n) = &name
            && !seen.insert(n.clone())
        {
            d.push(Diagnostic::error(
                o,
                &format!("{f}.service"),
                format!("{n:?} is listed twice"),
            ));
        }
        if let (Some(name), Some(weight)) = (name, w) {
            out.push(Backend {
                name,
                namespace: doc.namespace.clone(),
                weight,
                port: None,
                remote: None,
            });
        }
    }
    if out.len() == listed && out.iter().all(|b| b.weight == 0) {
        d.push(Diagnostic::error(
            o,
            "spec.backends",
            "every weight is zero: there is nowhere to send traffic",
        ));
    }
    let mut conditions = Vec::new();
    for (i, m) in matches.into_iter().enumerate() {
        let f = format!("spec.matches[{i}]");
        if m.kind.as_deref() != Some("HTTPRouteGroup") {
            d.push(Diagnostic::error(
                o,
                &format!("{f}.kind"),
                "must be HTTPRouteGroup",
            ));
            continue;
        }
        let name = m.name.unwrap_or_default();
        match refs.groups.get(&doc.sibling(&name)) {
            Some(g) => conditions.extend(g.iter().cloned()),
            None => d.push(Diagnostic::error(
                o,
                &format!("{f}.name"),
                format!(
                    "HTTPRouteGroup {}/{name} is not among the inputs",
                    doc.namespace
                ),
            )),
        }
    }
    if d.len() != before {
        return None;
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Some(Route {
        origin: o.clone(),
        name: doc.name.clone(),
        namespace: doc.namespace.clone(),
        root: root?,
        port: None,
        rules: vec![Rule {
            matches: conditions,
            backends: out,
        }],
        relative: false,
    })
}
