//! SMI `specs.smi-spec.io`: `HTTPRouteGroup` (request matches that splits and access rules name)
//! and `TCPRoute` (ports that access rules name).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{Doc, typed, values};
use crate::diag::Diagnostic;
use crate::model::{HeaderMatch, HttpMatch, PathMatch};
use crate::patterns::{check_header_name, check_re2};

/// An object named by another: `(namespace, name)`.
pub(super) type ObjectName = (String, String);

/// What splits and access rules may refer to, by the referred object's name.
#[derive(Default)]
pub(super) struct Refs {
    /// HTTPRouteGroup matches.
    pub groups: BTreeMap<ObjectName, Vec<HttpMatch>>,
    /// TCPRoute ports (empty: any).
    pub tcp: BTreeMap<ObjectName, Vec<u16>>,
}

/// HTTPRouteGroup v1alpha1 and v1alpha2: the matches sit at the top level.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupV1alpha1 {
    matches: Option<Vec<Match>>,
}

/// HTTPRouteGroup v1alpha3 and v1alpha4.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupV1alpha3 {
    #[serde(default)]
    spec: GroupSpec,
    #[serde(default, rename = "status")]
    _status: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GroupSpec {
    matches: Option<Vec<Match>>,
    /// Read by no mesh renderer: a split or access rule names the matches it uses.
    #[serde(default, rename = "defaultRoute")]
    _default_route: Option<Value>,
}

/// One HTTPRouteGroup match.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Match {
    name: Option<String>,
    path_regex: Option<String>,
    #[serde(default)]
    methods: Vec<String>,
    headers: Option<Headers>,
}

/// Header conditions: `{name: regex}` (early versions) or a list of such maps.
enum Headers {
    One(BTreeMap<String, String>),
    Many(Vec<BTreeMap<String, String>>),
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Headers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of header name to pattern, or a list of such maps")
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<Headers, A::Error> {
                Deserialize::deserialize(de::value::MapAccessDeserializer::new(m)).map(Headers::One)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, s: A) -> Result<Headers, A::Error> {
                Deserialize::deserialize(de::value::SeqAccessDeserializer::new(s))
                    .map(Headers::Many)
            }
        }
        d.deserialize_any(V)
    }
}

/// TCPRoute (every version): the ports it allows.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TcpRoute {
    #[serde(default)]
    spec: TcpSpec,
    #[serde(default, rename = "status")]
    _status: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TcpSpec {
    #[serde(default)]
    matches: TcpMatches,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TcpMatches {
    #[serde(default)]
    ports: Vec<i64>,
}

const METHODS: [&str; 10] = [
    "*", "GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Reads an HTTPRouteGroup of `version` into its matches.
pub(super) fn read_group(
    doc: &Doc,
    version: &str,
    d: &mut Vec<Diagnostic>,
) -> Option<Vec<HttpMatch>> {
    let (matches, path) = match version {
        "v1alpha1" | "v1alpha2" => (typed::<GroupV1alpha1>(doc, true, d)?.matches, "matches"),
        _ => (
            typed::<GroupV1alpha3>(doc, true, d)?.spec.matches,
            "spec.matches",
        ),
    };
    let o = &doc.origin;
    let Some(list) = matches else {
        d.push(Diagnostic::error(
            o,
            path,
            "is required (a list of matches)",
        ));
        return None;
    };
    let before = d.len();
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for (i, m) in list.into_iter().enumerate() {
        let f = format!("{path}[{i}]");
        let name = m.name.unwrap_or_default();
        if name.is_empty() {
            d.push(Diagnostic::error(o, &format!("{f}.name"), "is required"));
        } else if !names.insert(name.clone()) {
            d.push(Diagnostic::error(
                o,
                &format!("{f}.name"),
                format!("{name:?} is used twice"),
            ));
        }
        if let Some(p) = &m.path_regex
            && let Err(e) = check_re2(p)
        {
            d.push(Diagnostic::error(o, &format!("{f}.pathRegex"), e));
        }
        let mut methods = Vec::new();
        for (j, x) in m.methods.into_iter().enumerate() {
            if METHODS.contains(&x.as_str()) {
                methods.push(x);
            } else {
                d.push(Diagnostic::error(
                    o,
                    &format!("{f}.methods[{j}]"),
                    format!("{x:?} is not one of {}", METHODS.join(", ")),
                ));
            }
        }
        if methods.iter().any(|m| m == "*") {
            methods.clear();
        }
        methods.sort();
        methods.dedup();
        let maps = match m.headers {
            None => vec![],
            Some(Headers::One(map)) => vec![(format!("{f}.headers"), map)],
            Some(Headers::Many(list)) => list
                .into_iter()
                .enumerate()
                .map(|(j, x)| (format!("{f}.headers[{j}]"), x))
                .collect(),
        };
        let mut headers = Vec::new();
        for (hf, map) in maps {
            for (k, v) in map {
                if let Err(e) = check_header_name(&k) {
                    d.push(Diagnostic::error(o, &hf, e));
                    continue;
                }
                if let Err(e) = check_re2(&v) {
                    d.push(Diagnostic::error(o, &format!("{hf}.{k}"), e));
                }
                headers.push(HeaderMatch {
                    name: k.to_ascii_lowercase(),
                    value: v,
                    regex: true,
                });
            }
        }
        headers.sort();
        out.push(HttpMatch {
            name,
            path: m.path_regex.map(PathMatch::Regex),
            methods,
            headers,
        });
    }
    (d.len() == before).then_some(out)
}

/// Reads a TCPRoute into the ports it allows (sorted; empty: any).
pub(super) fn read_tcp(doc: &Doc, d: &mut Vec<Diagnostic>) -> Option<Vec<u16>> {
    let route = typed::<TcpRoute>(doc, true, d)?;
    let before = d.len();
    let mut ports: Vec<u16> = route
        .spec
        .matches
        .ports
        .into_iter()
        .enumerate()
        .filter_map(|(i, p)| values::port(p, &format!("spec.matches.ports[{i}]"), &doc.origin, d))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    (d.len() == before).then_some(ports)
}
