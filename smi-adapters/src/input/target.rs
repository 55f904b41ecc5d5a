//! SMI `TrafficTarget` v1alpha1-3: which service accounts may call a destination's workloads, and
//! with what requests. v1alpha1 keeps everything at the top level and calls the rules `specs`;
//! v1alpha3 has no destination port.

use serde::Deserialize;
use serde_json::Value;

use super::route_group::Refs;
use super::values::{port, short_name};
use super::{Doc, typed};
use crate::diag::Diagnostic;
use crate::model::{Access, Account, Allowed, Origin};
use multimesh_core::names::is_dns_label;

/// v1alpha1.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TargetV1alpha1 {
    destination: Option<Subject>,
    #[serde(default)]
    specs: Vec<RuleRef>,
    #[serde(default)]
    sources: Vec<Subject>,
}

/// v1alpha2 and v1alpha3.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TargetV1alpha2 {
    #[serde(default)]
    spec: TargetSpec,
    #[serde(default, rename = "status")]
    _status: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TargetSpec {
    destination: Option<Subject>,
    #[serde(default)]
    rules: Vec<RuleRef>,
    #[serde(default)]
    sources: Vec<Subject>,
}

/// A service account (the destination, or a source).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Subject {
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    port: Option<i64>,
}

/// A rule: a route (HTTPRouteGroup or TCPRoute of the target's namespace), narrowed to some of
/// its matches.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleRef {
    kind: Option<String>,
    name: Option<String>,
    matches: Option<Vec<String>>,
}

fn account(s: Subject, field: &str, doc: &Doc, d: &mut Vec<Diagnostic>) -> Option<Account> {
    let o = &doc.origin;
    if s.kind.as_deref() != Some("ServiceAccount") {
        d.push(Diagnostic::error(
            o,
            &format!("{field}.kind"),
            "must be ServiceAccount",
        ));
        return None;
    }
    let name = short_name(s.name.as_deref(), &format!("{field}.name"), o, d)?;
    let namespace = s.namespace.unwrap_or_else(|| doc.namespace.clone());
    if !is_dns_label(&namespace) {
        d.push(Diagnostic::error(
            o,
            &format!("{field}.namespace"),
            format!("{namespace:?} is not a DNS label"),
        ));
        return None;
    }
    Some(Account { namespace, name })
}

/// Reads a TrafficTarget of `version` into an access policy.
pub(super) fn read(
    doc: &Doc,
    version: &str,
    refs: &Refs,
    d: &mut Vec<Diagnostic>,
) -> Option<Access> {
    let (spec, prefix, rules_key) = if version == "v1alpha1" {
        let t = typed::<TargetV1alpha1>(doc, true, d)?;
        let spec = TargetSpec {
            destination: t.destination,
            rules: t.specs,
            sources: t.sources,
        };
        (spec, "", "specs")
    } else {
        (
            typed::<TargetV1alpha2>(doc, true, d)?.spec,
            "spec.",
            "rules",
        )
    };
    let o: &Origin = &doc.origin;
    let before = d.len();
    let dest_field = format!("{prefix}destination");
    let (destination, dest_port) = match spec.destination {
        Some(s) => {
            let p = s.port;
            (account(s, &dest_field, doc, d), p)
        }
        None => {
            d.push(Diagnostic::error(o, &dest_field, "is required"));
            (None, None)
        }
    };
    if let Some(dest) = &destination
        && dest.namespace != doc.namespace
    {
        d.push(Diagnostic::error(
            o,
            &format!("{dest_field}.namespace"),
            format!(
                "{:?} is not the TrafficTarget's own namespace {:?}: access policies are \
                 written only in the namespace of the TrafficTarget that asks for them",
                dest.namespace, doc.namespace
            ),
        ));
    }
    let port_field = format!("{dest_field}.port");
    let dest_port = match dest_port {
        Some(p) if version == "v1alpha3" => {
            d.push(Diagnostic::error(
                o,
                &port_field,
                format!("{p} is not a port number (v1alpha3 has no port)"),
            ));
            None
        }
        Some(p) => port(p, &port_field, o, d),
        None => None,
    };
    let mut sources = Vec::new();
    for (i, s) in spec.sources.into_iter().enumerate() {
        if let Some(a) = account(s, &format!("{prefix}sources[{i}]"), doc, d) {
            sources.push(a);
        }
    }
    if sources.is_empty() && d.len() == before {
        d.push(Diagnostic::error(
            o,
            &format!("{prefix}sources"),
            "is required (who may call)",
        ));
    }
    let mut allowed = Vec::new();
    for (i, r) in spec.rules.into_iter().enumerate() {
        let f = format!("{prefix}{rules_key}[{i}]");
        let name = r.name.unwrap_or_default();
        let key = doc.sibling(&name);
        match r.kind.as_deref() {
            Some("HTTPRouteGroup") => {
                let Some(group) = refs.groups.get(&key) else {
                    d.push(Diagnostic::error(
                        o,
                        &format!("{f}.name"),
                        format!(
                            "HTTPRouteGroup {}/{name} is not among the inputs",
                            doc.namespace
                        ),
                    ));
                    continue;
                };
                // `matches` names a subset of the group's matches; absent means all of them.
                let picked = match r.matches {
                    None => group.clone(),
                    Some(wanted) => {
                        let mut picked = Vec::new();
                        for (j, n) in wanted.iter().enumerate() {
                            match group.iter().find(|m| m.name == *n) {
                                Some(m) => picked.push(m.clone()),
                                None => d.push(Diagnostic::error(
                                    o,
                                    &format!("{f}.matches[{j}]"),
                                    format!(
                                        "HTTPRouteGroup {}/{name} has no match named {n:?}",
                                        doc.namespace
                                    ),
                                )),
                            }
                        }
                        picked
                    }
                };
                allowed.push(Allowed::Http(picked));
            }
            Some("TCPRoute") => match refs.tcp.get(&key) {
                Some(ports) => allowed.push(Allowed::Tcp(ports.clone())),
                None => d.push(Diagnostic::error(
                    o,
                    &format!("{f}.name"),
                    format!("TCPRoute {}/{name} is not among the inputs", doc.namespace),
                )),
            },
            other => d.push(Diagnostic::error(
                o,
                &format!("{f}.kind"),
                format!("{other:?} is not HTTPRouteGroup or TCPRoute"),
            )),
        }
    }
    if allowed.is_empty() && d.len() == before {
        d.push(Diagnostic::error(
            o,
            &format!("{prefix}{rules_key}"),
            "is required: a TrafficTarget without rules allows nothing",
        ));
    }
    if d.len() != before {
        return None;
    }
    sources.sort();
    sources.dedup();
    Some(Access {
        origin: o.clone(),
        name: doc.name.clone(),
        namespace: doc.namespace.clone(),
        destination: destination?,
        port: dest_port,
        sources,
        allowed,
    })
}
