//! Parsing of input documents (SMI, Gateway API, core `Service`) and of the federation catalog
//! into the [`Model`]. Every refusal names the object and the field.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::diag::Diagnostic;
use crate::model::*;
use crate::schema::is_dns_label;

/// One input document with where it came from.
struct Doc {
    origin: Origin,
    api: String,
    kind: String,
    name: String,
    namespace: String,
    body: Value,
}

pub use multimesh_core::yaml::{MAX_FILE_BYTES, MAX_INDENT, MAX_NESTING, check_bounds};

/// Splits YAML texts (`(file name, text)`) into documents; empty documents are skipped. A file
/// beyond [`check_bounds`] is refused whole, before it is parsed.
fn documents(files: &[(String, String)], diags: &mut Vec<Diagnostic>) -> Vec<Doc> {
    let mut out = Vec::new();
    for (file, text) in files {
        if let Err(e) = check_bounds(text) {
            diags.push(Diagnostic::error(file, "", format!("not accepted: {e}")));
            continue;
        }
        for (i, d) in serde_norway::Deserializer::from_str(text).enumerate() {
            let here = format!("{file}#{}", i + 1);
            let v: Value = match serde::Deserialize::deserialize(d) {
                Ok(v) => v,
                Err(e) => {
                    diags.push(Diagnostic::error(&here, "", format!("not valid YAML: {e}")));
                    break; // the parser cannot resume after a syntax error
                }
            };
            if v.is_null() {
                continue;
            }
            let api = v["apiVersion"].as_str().unwrap_or_default().to_string();
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            let name = v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let namespace = v["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            let origin = Origin {
                doc: here.clone(),
                kind: format!("{kind} {api}"),
                object: format!("{namespace}/{name}"),
            };
            if api.is_empty() || kind.is_empty() {
                diags.push(Diagnostic::error(
                    &here,
                    if api.is_empty() { "apiVersion" } else { "kind" },
                    "is required",
                ));
                continue;
            }
            if !is_dns_label(&namespace) {
                diags.push(Diagnostic::error(
                    &origin,
                    "metadata.namespace",
                    format!("{namespace:?} is not a DNS label"),
                ));
                continue;
            }
            if !crate::schema::is_dns_subdomain(&name) {
                diags.push(Diagnostic::error(
                    &origin,
                    "metadata.name",
                    format!("{name:?} is not a valid object name"),
                ));
                continue;
            }
            out.push(Doc {
                origin,
                api,
                kind,
                name,
                namespace,
                body: v,
            });
        }
    }
    out
}

/// Reports keys of `obj` outside `known` as unknown fields; false if there were any.
fn only_keys(obj: &Value, known: &[&str], path: &str, o: &Origin, d: &mut Vec<Diagnostic>) -> bool {
    let mut ok = true;
    for k in obj.as_object().into_iter().flat_map(|m| m.keys()) {
        if !known.contains(&k.as_str()) {
            let f = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            d.push(Diagnostic::error(o, &f, "unknown field"));
            ok = false;
        }
    }
    ok
}

fn short_name(v: &Value, field: &str, o: &Origin, d: &mut Vec<Diagnostic>) -> Option<String> {
    match v.as_str() {
        Some(s) if is_dns_label(s) => Some(s.to_string()),
        Some(s) if s.contains('.') => {
            d.push(Diagnostic::error(
                o,
                field,
                format!("{s:?} must be a short service name in the object's namespace"),
            ));
            None
        }
        Some(s) => {
            d.push(Diagnostic::error(
                o,
                field,
                format!("{s:?} is not a DNS label"),
            ));
            None
        }
        None if v.is_null() => {
            d.push(Diagnostic::error(o, field, "is required"));
            None
        }
        None => {
            d.push(Diagnostic::error(o, field, "must be a string"));
            None
        }
    }
}

/// Parses a Kubernetes quantity used as a v1alpha1 weight into milli-units: `1` → 1000,
/// `500m` → 500, `1.5` → 1500, `2k` → 2,000,000.
pub fn quantity_milli(v: &Value) -> Result<u64, String> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        _ => return Err("must be a quantity such as 1 or 500m".into()),
    };
    if text.starts_with('-') {
        return Err(format!("{text} is negative"));
    }
    let (num, scale_milli): (&str, u128) = if let Some(n) = text.strip_suffix('m') {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('k') {
        (n, 1_000_000)
    } else if let Some(n) = text.strip_suffix('M') {
        (n, 1_000_000_000)
    } else {
        (text.as_str(), 1000)
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("{text:?} is not a quantity such as 1 or 500m"));
    }
    let digits = format!("{int}{frac}");
    let mantissa: u128 = digits
        .trim_start_matches('0')
        .parse::<u128>()
        .or_else(|e| {
            if digits.bytes().all(|b| b == b'0') {
                Ok(0)
            } else {
                Err(e)
            }
        })
        .map_err(|_| format!("{text:?} is out of range"))?;
    let div = 10u128
        .checked_pow(frac.len() as u32)
        .ok_or_else(|| format!("{text:?} has too many decimals"))?;
    let scaled = mantissa
        .checked_mul(scale_milli)
        .ok_or_else(|| format!("{text:?} is out of range"))?;
    if scaled % div != 0 {
        return Err(format!("{text:?} is finer than a milli-unit"));
    }
    u64::try_from(scaled / div).map_err(|_| format!("{text:?} is out of range"))
}

/// An integer weight (v1alpha2+) in milli-units.
fn integer_weight(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) if n.is_u64() => n
            .as_u64()
            .and_then(|w| w.checked_mul(1000))
            .ok_or_else(|| format!("{n} is out of range")),
        Value::Number(n) if n.is_i64() => Err(format!("{n} is negative")),
        Value::Number(n) => Err(format!(
            "{n} is fractional; this version takes integer weights (v1alpha1 takes quantities such as 500m)"
        )),
        Value::String(s) => Err(format!(
            "{s:?} is a string; this version takes integer weights"
        )),
        _ => Err("must be an integer".into()),
    }
}

/// SMI HTTPRouteGroup matches, by (namespace, group name).
type Groups = BTreeMap<(String, String), Vec<HttpMatch>>;

fn parse_route_group(doc: &Doc, d: &mut Vec<Diagnostic>) -> Option<Vec<HttpMatch>> {
    let o = &doc.origin;
    let version = doc.api.rsplit('/').next().unwrap_or_default();
    let (matches, path) = match version {
        "v1alpha1" | "v1alpha2" => {
            only_keys(
                &doc.body,
                &["apiVersion", "kind", "metadata", "matches"],
                "",
                o,
                d,
            );
            (&doc.body["matches"], "matches")
        }
        _ => {
            only_keys(
                &doc.body,
                &["apiVersion", "kind", "metadata", "spec"],
                "",
                o,
                d,
            );
            only_keys(
                &doc.body["spec"],
                &["matches", "defaultRoute"],
                "spec",
                o,
                d,
            );
            (&doc.body["spec"]["matches"], "spec.matches")
        }
    };
    let Some(list) = matches.as_array() else {
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
    for (i, m) in list.iter().enumerate() {
        let f = format!("{path}[{i}]");
        only_keys(m, &["name", "pathRegex", "methods", "headers"], &f, o, d);
        let name = m["name"].as_str().unwrap_or_default().to_string();
        if name.is_empty() {
            d.push(Diagnostic::error(o, &format!("{f}.name"), "is required"));
        } else if !names.insert(name.clone()) {
            d.push(Diagnostic::error(
                o,
                &format!("{f}.name"),
                format!("{name:?} is used twice"),
            ));
        }
        let path_re = match &m["pathRegex"] {
            Value::Null => None,
            Value::String(p) => {
                if let Err(e) = crate::patterns::check_re2(p) {
                    d.push(Diagnostic::error(o, &format!("{f}.pathRegex"), e));
                }
                Some(PathMatch::Regex(p.clone()))
            }
            _ => {
                d.push(Diagnostic::error(
                    o,
                    &format!("{f}.pathRegex"),
                    "must be a string",
                ));
                None
            }
        };
        let mut methods = Vec::new();
        for (j, x) in m["methods"].as_array().into_iter().flatten().enumerate() {
            const ALLOWED: [&str; 10] = [
                "*", "GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
            ];
            match x.as_str() {
                Some(s) if ALLOWED.contains(&s) => methods.push(s.to_string()),
                _ => d.push(Diagnostic::error(
                    o,
                    &format!("{f}.methods[{j}]"),
                    format!("{x} is not one of {}", ALLOWED.join(", ")),
                )),
            }
        }
        if methods.iter().any(|m| m == "*") {
            methods.clear();
        }
        methods.sort();
        methods.dedup();
        // Headers: a map {name: regex} (early versions) or a list of such maps.
        let mut headers = Vec::new();
        let maps: Vec<(String, &Value)> = match &m["headers"] {
            Value::Null => vec![],
            Value::Object(_) => vec![(format!("{f}.headers"), &m["headers"])],
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(j, x)| (format!("{f}.headers[{j}]"), x))
                .collect(),
            _ => {
                d.push(Diagnostic::error(
                    o,
                    &format!("{f}.headers"),
                    "must be a map or a list of maps",
                ));
                vec![]
            }
        };
        for (hf, map) in maps {
            let Some(map) = map.as_object() else {
                d.push(Diagnostic::error(
                    o,
                    &hf,
                    "must be a map of header name to pattern",
                ));
                continue;
            };
            for (k, v) in map {
                if let Err(e) = crate::patterns::check_header_name(k) {
                    d.push(Diagnostic::error(o, &hf, e));
                    continue;
                }
                match v.as_str() {
                    Some(v) => {
                        if let Err(e) = crate::patterns::check_re2(v) {
                            d.push(Diagnostic::error(o, &format!("{hf}.{k}"), e));
                        }
                        headers.push(HeaderMatch {
                            name: k.to_ascii_lowercase(),
                            value: v.to_string(),
                            regex: true,
                        });
                    }
                    None => d.push(Diagnostic::error(
                        o,
                        &format!("{hf}.{k}"),
                        "must be a string",
                    )),
                }
            }
        }
        headers.sort();
        out.push(HttpMatch {
            name,
            path: path_re,
            methods,
            headers,
        });
    }
    (d.len() == before).then_some(out)
}

/// SMI TCPRoutes: the ports they allow (empty: any), by (namespace, name).
type TcpRoutes = BTreeMap<(String, String), Vec<u16>>;

fn parse_tcp_route(doc: &Doc, d: &mut Vec<Diagnostic>) -> Option<Vec<u16>> {
    let o = &doc.origin;
    let before = d.len();
    only_keys(
        &doc.body,
        &["apiVersion", "kind", "metadata", "spec"],
        "",
        o,
        d,
    );
    only_keys(&doc.body["spec"], &["matches"], "spec", o, d);
    only_keys(
        &doc.body["spec"]["matches"],
        &["ports"],
        "spec.matches",
        o,
        d,
    );
    let mut ports = Vec::new();
    for (i, p) in doc.body["spec"]["matches"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        match p
            .as_u64()
            .and_then(|x| u16::try_from(x).ok())
            .filter(|x| *x > 0)
        {
            Some(p) => ports.push(p),
            None => d.push(Diagnostic::error(
                o,
                &format!("spec.matches.ports[{i}]"),
                format!("{p} is not a port number"),
            )),
        }
    }
    ports.sort_unstable();
    ports.dedup();
    (d.len() == before).then_some(ports)
}

fn account(
    v: &Value,
    field: &str,
    default_ns: &str,
    o: &Origin,
    d: &mut Vec<Diagnostic>,
) -> Option<Account> {
    only_keys(v, &["kind", "name", "namespace", "port"], field, o, d);
    if v["kind"].as_str() != Some("ServiceAccount") {
        d.push(Diagnostic::error(
            o,
            &format!("{field}.kind"),
            "must be ServiceAccount",
        ));
        return None;
    }
    let name = short_name(&v["name"], &format!("{field}.name"), o, d)?;
    let namespace = v["namespace"].as_str().unwrap_or(default_ns).to_string();
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

fn parse_traffic_target(
    doc: &Doc,
    groups: &Groups,
    tcp: &TcpRoutes,
    d: &mut Vec<Diagnostic>,
) -> Option<Access> {
    let o = &doc.origin;
    let before = d.len();
    let version = doc.api.rsplit('/').next().unwrap_or_default();
    // v1alpha1 keeps everything at the top level and calls the rules `specs`.
    let (root, prefix, rules_key) = if version == "v1alpha1" {
        only_keys(
            &doc.body,
            &[
                "apiVersion",
                "kind",
                "metadata",
                "destination",
                "specs",
                "sources",
            ],
            "",
            o,
            d,
        );
        (&doc.body, String::new(), "specs")
    } else {
        only_keys(
            &doc.body,
            &["apiVersion", "kind", "metadata", "spec"],
            "",
            o,
            d,
        );
        only_keys(
            &doc.body["spec"],
            &["destination", "rules", "sources"],
            "spec",
            o,
            d,
        );
        (&doc.body["spec"], "spec.".to_string(), "rules")
    };
    let destination = account(
        &root["destination"],
        &format!("{prefix}destination"),
        &doc.namespace,
        o,
        d,
    );
    if let Some(dest) = &destination
        && dest.namespace != doc.namespace
    {
        d.push(Diagnostic::error(
            o,
            &format!("{prefix}destination.namespace"),
            format!(
                "{:?} is not the TrafficTarget's own namespace {:?}: access policies are \
                 written only in the namespace of the TrafficTarget that asks for them",
                dest.namespace, doc.namespace
            ),
        ));
    }
    let port = match &root["destination"]["port"] {
        Value::Null => None,
        p => match p
            .as_u64()
            .and_then(|x| u16::try_from(x).ok())
            .filter(|x| *x > 0)
        {
            Some(p) if version != "v1alpha3" => Some(p),
            _ => {
                d.push(Diagnostic::error(
                    o,
                    &format!("{prefix}destination.port"),
                    format!("{p} is not a port number (v1alpha3 has no port)"),
                ));
                None
            }
        },
    };
    let mut sources = Vec::new();
    for (i, s) in root["sources"].as_array().into_iter().flatten().enumerate() {
        if let Some(a) = account(s, &format!("{prefix}sources[{i}]"), &doc.namespace, o, d) {
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
    for (i, r) in root[rules_key].as_array().into_iter().flatten().enumerate() {
        let f = format!("{prefix}{rules_key}[{i}]");
        only_keys(r, &["kind", "name", "matches"], &f, o, d);
        let name = r["name"].as_str().unwrap_or_default().to_string();
        let key = (doc.namespace.clone(), name.clone());
        match r["kind"].as_str() {
            Some("HTTPRouteGroup") => {
                let Some(group) = groups.get(&key) else {
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
                let wanted: Option<Vec<&str>> = r["matches"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect());
                let mut picked = Vec::new();
                match wanted {
                    None => picked.extend(group.iter().cloned()),
                    Some(w) => {
                        for (j, n) in w.iter().enumerate() {
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
                    }
                }
                allowed.push(Allowed::Http(picked));
            }
            Some("TCPRoute") => match tcp.get(&key) {
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
        port,
        sources,
        allowed,
    })
}

fn parse_split(doc: &Doc, groups: &Groups, d: &mut Vec<Diagnostic>) -> Option<Route> {
    let o = &doc.origin;
    let version = doc.api.rsplit('/').next().unwrap_or_default().to_string();
    let before = d.len();
    only_keys(
        &doc.body,
        &["apiVersion", "kind", "metadata", "spec", "status"],
        "",
        o,
        d,
    );
    let spec = &doc.body["spec"];
    let with_matches = matches!(version.as_str(), "v1alpha3" | "v1alpha4");
    let known: &[&str] = if with_matches {
        &["service", "backends", "matches"]
    } else {
        &["service", "backends"]
    };
    only_keys(spec, known, "spec", o, d);
    let root = short_name(&spec["service"], "spec.service", o, d);
    let Some(list) = spec["backends"].as_array().filter(|l| !l.is_empty()) else {
        d.push(Diagnostic::error(
            o,
            "spec.backends",
            "is required (at least one backend)",
        ));
        return None;
    };
    let mut backends = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, b) in list.iter().enumerate() {
        let f = format!("spec.backends[{i}]");
        only_keys(b, &["service", "weight"], &f, o, d);
        let name = short_name(&b["service"], &format!("{f}.service"), o, d);
        let weight = if b["weight"].is_null() {
            Err("is required".to_string())
        } else if version == "v1alpha1" {
            quantity_milli(&b["weight"])
        } else {
            integer_weight(&b["weight"])
        };
        let weight = match weight {
            Ok(w) => Some(w),
            Err(e) => {
                d.push(Diagnostic::error(o, &format!("{f}.weight"), e));
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
        if let (Some(name), Some(weight)) = (name, weight) {
            backends.push(Backend {
                name,
                namespace: doc.namespace.clone(),
                weight,
                port: None,
                remote: None,
            });
        }
    }
    if backends.len() == list.len() && backends.iter().all(|b| b.weight == 0) {
        d.push(Diagnostic::error(
            o,
            "spec.backends",
            "every weight is zero: there is nowhere to send traffic",
        ));
    }
    let mut matches = Vec::new();
    if with_matches {
        for (i, m) in spec["matches"].as_array().into_iter().flatten().enumerate() {
            let f = format!("spec.matches[{i}]");
            only_keys(m, &["kind", "name", "apiGroup"], &f, o, d);
            if m["kind"].as_str() != Some("HTTPRouteGroup") {
                d.push(Diagnostic::error(
                    o,
                    &format!("{f}.kind"),
                    "must be HTTPRouteGroup",
                ));
                continue;
            }
            let name = m["name"].as_str().unwrap_or_default();
            match groups.get(&(doc.namespace.clone(), name.to_string())) {
                Some(g) => matches.extend(g.iter().cloned()),
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
    }
    if d.len() != before {
        return None;
    }
    backends.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Some(Route {
        origin: o.clone(),
        name: doc.name.clone(),
        namespace: doc.namespace.clone(),
        root: root?,
        port: None,
        rules: vec![Rule { matches, backends }],
        relative: false,
    })
}

fn parse_http_route(doc: &Doc, d: &mut Vec<Diagnostic>) -> Option<Route> {
    let o = &doc.origin;
    let before = d.len();
    only_keys(
        &doc.body,
        &["apiVersion", "kind", "metadata", "spec", "status"],
        "",
        o,
        d,
    );
    let spec = &doc.body["spec"];
    only_keys(spec, &["parentRefs", "hostnames", "rules"], "spec", o, d);
    let mut parents = Vec::new();
    for (i, p) in spec["parentRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let f = format!("spec.parentRefs[{i}]");
        let kind = p["kind"].as_str().unwrap_or("Gateway");
        let group = p["group"].as_str().unwrap_or("gateway.networking.k8s.io");
        if kind != "Service" || !(group.is_empty() || group == "core") {
            d.push(Diagnostic::warning(o, &f, format!("{group}/{kind} parent ignored: only Service parents (GAMMA, east-west) are translated")));
            continue;
        }
        if let Some(ns) = p["namespace"].as_str()
            && ns != doc.namespace
        {
            d.push(Diagnostic::error(
                o,
                &format!("{f}.namespace"),
                "a Service parent in another namespace is not supported",
            ));
            continue;
        }
        let port = p["port"].as_u64().and_then(|x| u16::try_from(x).ok());
        if let Some(n) = short_name(&p["name"], &format!("{f}.name"), o, d) {
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
    for (i, r) in spec["rules"].as_array().into_iter().flatten().enumerate() {
        let f = format!("spec.rules[{i}]");
        only_keys(
            r,
            &[
                "name",
                "matches",
                "backendRefs",
                "filters",
                "timeouts",
                "retry",
                "sessionPersistence",
            ],
            &f,
            o,
            d,
        );
        for k in ["filters", "timeouts", "retry", "sessionPersistence"] {
            if !r[k].is_null() {
                d.push(Diagnostic::error(
                    o,
                    &format!("{f}.{k}"),
                    "is not translated yet; refusing rather than dropping it",
                ));
            }
        }
        let mut matches = Vec::new();
        for (j, m) in r["matches"].as_array().into_iter().flatten().enumerate() {
            let mf = format!("{f}.matches[{j}]");
            only_keys(m, &["path", "headers", "method", "queryParams"], &mf, o, d);
            if !m["queryParams"].is_null() {
                d.push(Diagnostic::error(
                    o,
                    &format!("{mf}.queryParams"),
                    "is not translated yet; refusing rather than widening the match",
                ));
            }
            let path = match &m["path"] {
                Value::Null => Some(PathMatch::Prefix("/".into())),
                p => {
                    let value = p["value"].as_str().unwrap_or("/").to_string();
                    match p["type"].as_str().unwrap_or("PathPrefix") {
                        "Exact" => Some(PathMatch::Exact(value)),
                        "PathPrefix" => Some(PathMatch::Prefix(value)),
                        "RegularExpression" => {
                            if let Err(e) = crate::patterns::check_re2(&value) {
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
            let path = match path {
                Some(PathMatch::Prefix(p)) if p == "/" => None,
                p => p,
            };
            let mut headers = Vec::new();
            for (k, h) in m["headers"].as_array().into_iter().flatten().enumerate() {
                let regex = match h["type"].as_str().unwrap_or("Exact") {
                    "Exact" => false,
                    "RegularExpression" => true,
                    t => {
                        d.push(Diagnostic::error(
                            o,
                            &format!("{mf}.headers[{k}].type"),
                            format!("{t:?} is not Exact or RegularExpression"),
                        ));
                        continue;
                    }
                };
                let name = h["name"].as_str().unwrap_or_default();
                if let Err(e) = crate::patterns::check_header_name(name) {
                    d.push(Diagnostic::error(o, &format!("{mf}.headers[{k}].name"), e));
                    continue;
                }
                let value = h["value"].as_str().unwrap_or_default().to_string();
                if regex && let Err(e) = crate::patterns::check_re2(&value) {
                    d.push(Diagnostic::error(o, &format!("{mf}.headers[{k}].value"), e));
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
                methods: m["method"]
                    .as_str()
                    .map(|x| vec![x.to_string()])
                    .unwrap_or_default(),
                headers,
            });
        }
        // A rule with only catch-all matches is a catch-all rule.
        if matches.iter().all(|m| *m == HttpMatch::default()) {
            matches.clear();
        }
        let mut backends = Vec::new();
        let refs = r["backendRefs"].as_array().cloned().unwrap_or_default();
        if refs.is_empty() {
            d.push(Diagnostic::error(
                o,
                &format!("{f}.backendRefs"),
                "is empty: requests would fail; not translated",
            ));
        }
        for (j, b) in refs.iter().enumerate() {
            let bf = format!("{f}.backendRefs[{j}]");
            only_keys(
                b,
                &[
                    "group",
                    "kind",
                    "name",
                    "namespace",
                    "port",
                    "weight",
                    "filters",
                ],
                &bf,
                o,
                d,
            );
            let kind = b["kind"].as_str().unwrap_or("Service");
            let group = b["group"].as_str().unwrap_or("");
            if kind != "Service" || !(group.is_empty() || group == "core") {
                d.push(Diagnostic::error(
                    o,
                    &bf,
                    format!("{group}/{kind} backends are not supported (only Service)"),
                ));
                continue;
            }
            let weight = match &b["weight"] {
                Value::Null => Ok(1000),
                w => integer_weight(w),
            };
            let weight = match weight {
                Ok(w) => w,
                Err(e) => {
                    d.push(Diagnostic::error(o, &format!("{bf}.weight"), e));
                    continue;
                }
            };
            let Some(name) = short_name(&b["name"], &format!("{bf}.name"), o, d) else {
                continue;
            };
            let namespace = b["namespace"]
                .as_str()
                .unwrap_or(&doc.namespace)
                .to_string();
            let port = b["port"].as_u64().and_then(|x| u16::try_from(x).ok());
            if backends
                .iter()
                .any(|x: &Backend| x.name == name && x.namespace == namespace && x.port == port)
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
    if d.len() != before
        && d[before..]
            .iter()
            .any(|x| x.severity == crate::diag::Severity::Error)
    {
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

fn parse_service(doc: &Doc, d: &mut Vec<Diagnostic>) -> Option<ServiceInfo> {
    let o = &doc.origin;
    let mut ports = Vec::new();
    for (i, p) in doc.body["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let f = format!("spec.ports[{i}]");
        let Some(port) = p["port"].as_u64().and_then(|x| u16::try_from(x).ok()) else {
            d.push(Diagnostic::error(
                o,
                &format!("{f}.port"),
                "must be a port number",
            ));
            continue;
        };
        if p["protocol"].as_str().is_some_and(|x| x != "TCP") {
            continue; // UDP/SCTP ports are not routed by meshes
        }
        let name = p["name"].as_str().unwrap_or_default().to_string();
        let protocol = Protocol::of_service_port(p["appProtocol"].as_str(), &name);
        let target = match &p["targetPort"] {
            Value::String(n) => TargetPort::Name(n.clone()),
            t => TargetPort::Number(
                t.as_u64()
                    .and_then(|x| u16::try_from(x).ok())
                    .unwrap_or(port),
            ),
        };
        ports.push(Port {
            name,
            port,
            protocol,
            target,
        });
    }
    let selector = doc.body["spec"]["selector"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    Some(ServiceInfo {
        namespace: doc.namespace.clone(),
        name: doc.name.clone(),
        ports,
        selector,
        remote: None,
    })
}

/// Reads the federation catalog as printed by `federationctl catalog -o json`: every served
/// entry of another origin than the viewing site is a remote service.
pub fn parse_catalog(json: &str) -> Result<BTreeMap<ServiceKey, ServiceInfo>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("catalog: not JSON: {e}"))?;
    let site = v["site"]
        .as_str()
        .ok_or("catalog: no \"site\" (expected the output of `federationctl catalog -o json`)")?;
    let mut out = BTreeMap::new();
    for (i, origin) in v["origins"].as_array().into_iter().flatten().enumerate() {
        for (j, e) in origin["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = |f: &str| format!("catalog: origins[{i}].entries[{j}].{f}");
            let o = e["origin"].as_str().ok_or_else(|| at("origin"))?;
            if o == site || e["served"].as_bool() == Some(false) {
                continue;
            }
            let name = e["name"].as_str().ok_or_else(|| at("name"))?.to_string();
            let namespace = e["namespace"]
                .as_str()
                .ok_or_else(|| at("namespace"))?
                .to_string();
            let mut ports = Vec::new();
            for (k, p) in e["ports"].as_array().into_iter().flatten().enumerate() {
                let port = p["port"]
                    .as_u64()
                    .and_then(|x| u16::try_from(x).ok())
                    .ok_or_else(|| at(&format!("ports[{k}].port")))?;
                ports.push(Port {
                    name: p["name"].as_str().unwrap_or_default().to_string(),
                    port,
                    protocol: p["protocol"]
                        .as_str()
                        .and_then(Protocol::from_app_protocol)
                        .unwrap_or(Protocol::Tcp),
                    target: TargetPort::Number(port),
                });
            }
            out.insert(
                ServiceKey::new(&namespace, &name),
                ServiceInfo {
                    namespace,
                    name,
                    ports,
                    selector: BTreeMap::new(),
                    remote: Some(Remote {
                        site: o.to_string(),
                        ingress: e["ingress"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect(),
                        identity: e["identity"].as_str().unwrap_or_default().to_string(),
                    }),
                },
            );
        }
    }
    Ok(out)
}

/// Parses every input into the model; objects with errors are left out and reported.
pub fn parse(
    files: &[(String, String)],
    remote: BTreeMap<ServiceKey, ServiceInfo>,
    d: &mut Vec<Diagnostic>,
) -> Model {
    let docs = documents(files, d);
    let mut groups: Groups = BTreeMap::new();
    let mut tcp_routes: TcpRoutes = BTreeMap::new();
    let mut model = Model {
        services: Services {
            local: BTreeMap::new(),
            remote,
        },
        ..Default::default()
    };
    // The API group: "" for the core group ("v1").
    let group_of = |api: &str| {
        api.rsplit_once('/')
            .map(|(g, _)| g.to_string())
            .unwrap_or_default()
    };
    // Route groups and services first: splits refer to them.
    for doc in &docs {
        match (group_of(&doc.api).as_str(), doc.kind.as_str()) {
            ("specs.smi-spec.io", "HTTPRouteGroup") => {
                if let Some(m) = parse_route_group(doc, d) {
                    groups.insert((doc.namespace.clone(), doc.name.clone()), m);
                }
            }
            ("specs.smi-spec.io", "TCPRoute") => {
                if let Some(p) = parse_tcp_route(doc, d) {
                    tcp_routes.insert((doc.namespace.clone(), doc.name.clone()), p);
                }
            }
            ("", "Service") if doc.api == "v1" => {
                if let Some(s) = parse_service(doc, d) {
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
        let version = doc.api.rsplit('/').next().unwrap_or_default();
        let route = match (group_of(&doc.api).as_str(), doc.kind.as_str()) {
            ("split.smi-spec.io", "TrafficSplit")
                if matches!(version, "v1alpha1" | "v1alpha2" | "v1alpha3" | "v1alpha4") =>
            {
                parse_split(doc, &groups, d)
            }
            ("gateway.networking.k8s.io", "HTTPRoute") if matches!(version, "v1" | "v1beta1") => {
                parse_http_route(doc, d)
            }
            ("access.smi-spec.io", "TrafficTarget")
                if matches!(version, "v1alpha1" | "v1alpha2" | "v1alpha3") =>
            {
                if let Some(a) = parse_traffic_target(doc, &groups, &tcp_routes, d) {
                    model.access.push(a);
                }
                None
            }
            ("specs.smi-spec.io", "HTTPRouteGroup" | "TCPRoute") | ("", "Service") => None,
            _ => {
                d.push(Diagnostic::error(&doc.origin, "", "this apiVersion/kind is not translated (TrafficSplit v1alpha1-4, HTTPRouteGroup and TCPRoute v1alpha1-4, TrafficTarget v1alpha1-3, Gateway API HTTPRoute v1/v1beta1, and v1 Service are)"));
                None
            }
        };
        if let Some(r) = route {
            model.routes.push(r);
        }
    }
    // Two routes for one root (and port) would fight over it.
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
    resolve(&mut model, d);
    model
}

/// Marks remote backends and checks ports against what is known of the services.
fn resolve(model: &mut Model, d: &mut Vec<Diagnostic>) {
    let services = model.services.clone();
    model.routes.retain_mut(|r| {
        let before = d.iter().filter(|x| x.severity == crate::diag::Severity::Error).count();
        let root = services.get(&r.namespace, &r.root).cloned();
        let root_ports: Option<Vec<u16>> = root.as_ref().map(|s| {
            s.ports.iter().map(|p| p.port).filter(|p| r.port.is_none_or(|x| x == *p)).collect()
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
                        let wanted: Vec<u16> = match b.port {
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
        d.iter().filter(|x| x.severity == crate::diag::Severity::Error).count() == before
    });
}
