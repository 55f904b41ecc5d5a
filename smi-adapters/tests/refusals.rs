//! Bad input is refused with an error naming the object and the field, and the refused object
//! renders nothing.

use smi_adapters::diag::Severity;
use smi_adapters::render::{Mesh, Options};

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{name: http, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: shop}
spec: {ports: [{name: http, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec: {ports: [{name: http, port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-admin, namespace: shop}
spec: {ports: [{name: http, port: 9000}]}
"#;

fn split(version: &str, backends: &str) -> String {
    format!(
        "apiVersion: split.smi-spec.io/{version}\nkind: TrafficSplit\nmetadata: {{name: web-split, namespace: shop}}\nspec:\n  service: web\n  backends:\n{backends}"
    )
}

/// Translates for every mesh; returns the errors as `field: message` (the same for all meshes)
/// and asserts nothing was rendered.
fn refused(input: &str) -> Vec<String> {
    let files = vec![
        ("services.yaml".to_string(), SERVICES.to_string()),
        ("input.yaml".to_string(), input.to_string()),
    ];
    let mut first: Option<Vec<String>> = None;
    for mesh in [
        Mesh::Istio,
        Mesh::GatewayApi,
        Mesh::Linkerd,
        Mesh::Consul,
        Mesh::Kuma,
    ] {
        let t = smi_adapters::translate(&files, None, mesh, &Options::default());
        assert!(!t.complete(), "{mesh:?}: accepted:\n{}", t.to_yaml());
        assert!(
            t.resources.is_empty(),
            "{mesh:?}: rendered despite errors:\n{}",
            t.to_yaml()
        );
        let errs: Vec<String> = t
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| format!("{}: {}", d.field, d.message))
            .collect();
        match &first {
            None => first = Some(errs),
            Some(f) => assert_eq!(f, &errs, "meshes disagree"),
        }
    }
    first.unwrap_or_default()
}

fn has(errs: &[String], field: &str, words: &str) {
    assert!(
        errs.iter()
            .any(|e| e.starts_with(&format!("{field}: ")) && e.contains(words)),
        "no error on {field} containing {words:?}: {errs:#?}"
    );
}

#[test]
fn all_zero_weights() {
    let e = refused(&split(
        "v1alpha2",
        "  - {service: web-v1, weight: 0}\n  - {service: web-v2, weight: 0}\n",
    ));
    has(&e, "spec.backends", "every weight is zero");
}

#[test]
fn negative_weight() {
    let e = refused(&split(
        "v1alpha2",
        "  - {service: web-v1, weight: -1}\n  - {service: web-v2, weight: 2}\n",
    ));
    has(&e, "spec.backends[0].weight", "negative");
    let e = refused(&split(
        "v1alpha1",
        "  - {service: web-v1, weight: \"-500m\"}\n",
    ));
    has(&e, "spec.backends[0].weight", "negative");
}

#[test]
fn fractional_weight_where_the_version_takes_integers() {
    let e = refused(&split(
        "v1alpha2",
        "  - {service: web-v1, weight: 0.5}\n  - {service: web-v2, weight: 1}\n",
    ));
    has(&e, "spec.backends[0].weight", "fractional");
    let e = refused(&split("v1alpha3", "  - {service: web-v1, weight: 500m}\n"));
    has(&e, "spec.backends[0].weight", "integer weights");
    // v1alpha1 takes quantities, but not below a milli-unit.
    let e = refused(&split(
        "v1alpha1",
        "  - {service: web-v1, weight: \"0.5m\"}\n",
    ));
    has(&e, "spec.backends[0].weight", "finer than a milli-unit");
}

#[test]
fn duplicate_backend() {
    let e = refused(&split(
        "v1alpha2",
        "  - {service: web-v1, weight: 1}\n  - {service: web-v1, weight: 2}\n",
    ));
    has(&e, "spec.backends[1].service", "listed twice");
}

#[test]
fn backend_without_the_roots_port() {
    let e = refused(&split(
        "v1alpha2",
        "  - {service: web-v1, weight: 1}\n  - {service: web-admin, weight: 1}\n",
    ));
    has(&e, "spec.backends", "web-admin has no port 8080");
}

#[test]
fn match_referencing_a_missing_route_group() {
    let e = refused(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: s, namespace: shop}\nspec:\n  service: web\n  matches: [{kind: HTTPRouteGroup, name: nope}]\n  backends: [{service: web-v1, weight: 1}]\n",
    );
    has(
        &e,
        "spec.matches[0].name",
        "HTTPRouteGroup shop/nope is not among the inputs",
    );
}

#[test]
fn two_splits_for_the_same_root() {
    let one = split("v1alpha2", "  - {service: web-v1, weight: 1}\n");
    let two = one.replace("name: web-split", "name: web-split-2");
    let files = vec![
        ("services.yaml".to_string(), SERVICES.to_string()),
        ("input.yaml".to_string(), format!("{one}---\n{two}")),
    ];
    let t = smi_adapters::translate(&files, None, Mesh::Istio, &Options::default());
    assert!(!t.complete());
    let e: Vec<String> = t.diagnostics.iter().map(|d| d.to_string()).collect();
    assert!(
        e.iter()
            .any(|x| x.contains("web-split-2: spec.service: shop/web is already routed by")),
        "{e:#?}"
    );
}

#[test]
fn matches_in_a_version_without_them_and_unknown_fields() {
    let e = refused(
        "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: s, namespace: shop}\nspec:\n  service: web\n  matches: [{kind: HTTPRouteGroup, name: g}]\n  backends: [{service: web-v1, weight: 1, wieght: 2}]\n",
    );
    has(&e, "spec.matches", "unknown field");
    has(&e, "spec.backends[0].wieght", "unknown field");
}

#[test]
fn malformed_yaml_and_bad_names() {
    let e =
        refused("apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: s\n");
    assert!(e.iter().any(|x| x.contains("not valid YAML")), "{e:#?}");
    let e = refused(&split(
        "v1alpha2",
        "  - {service: web-v1.other.svc.cluster.local, weight: 1}\n",
    ));
    has(
        &e,
        "spec.backends[0].service",
        "must be a short service name",
    );
}

#[test]
fn gateway_route_with_bad_weight_or_unsupported_filter() {
    let e = refused(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: web, port: 8080}]\n  rules:\n  - backendRefs: [{name: web-v1, port: 8080, weight: -3}]\n  - filters: [{type: RequestHeaderModifier}]\n    backendRefs: [{name: web-v2, port: 8080}]\n",
    );
    has(&e, "spec.rules[0].backendRefs[0].weight", "negative");
    has(&e, "spec.rules[1].filters", "not translated yet");
}

#[test]
fn consul_refuses_to_split_tcp_and_says_why() {
    let files = vec![(
        "input.yaml".to_string(),
        "apiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: shop}\nspec: {ports: [{name: tcp-pg, port: 5432}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: db-v2, namespace: shop}\nspec: {ports: [{name: tcp-pg, port: 5432}]}\n---\napiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: db, namespace: shop}\nspec:\n  service: db\n  backends: [{service: db, weight: 1}, {service: db-v2, weight: 1}]\n".to_string(),
    )];
    let t = smi_adapters::translate(&files, None, Mesh::Consul, &Options::default());
    assert!(!t.complete());
    assert!(t.resources.is_empty(), "{}", t.to_yaml());
    assert!(
        t.diagnostics.iter().any(|d| d
            .message
            .contains("Consul cannot split or route TCP traffic")),
        "{:?}",
        t.diagnostics
    );
    // Istio splits TCP (tcp routes), so the same input renders there.
    let t = smi_adapters::translate(&files, None, Mesh::Istio, &Options::default());
    assert!(t.complete(), "{:?}", t.diagnostics);
    assert!(t.to_yaml().contains("tcp:"), "{}", t.to_yaml());
}

fn target(rules: &str, sources: &str) -> String {
    format!(
        "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {{name: g, namespace: shop}}\nspec:\n  matches: [{{name: reads, methods: [GET]}}]\n---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {{name: t, namespace: shop}}\nspec:\n  destination: {{kind: ServiceAccount, name: web, namespace: shop}}\n  rules: {rules}\n  sources: {sources}\n"
    )
}

fn access_errors(input: &str) -> Vec<String> {
    let files = vec![("input.yaml".to_string(), input.to_string())];
    let t = smi_adapters::translate(&files, None, Mesh::Istio, &Options::default());
    assert!(t.resources.is_empty(), "{}", t.to_yaml());
    t.diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| format!("{}: {}", d.field, d.message))
        .collect()
}

#[test]
fn traffic_target_refusals_name_the_field() {
    let src = "[{kind: ServiceAccount, name: client}]";
    has(
        &access_errors(&target("[{kind: HTTPRouteGroup, name: missing}]", src)),
        "spec.rules[0].name",
        "HTTPRouteGroup shop/missing is not among the inputs",
    );
    has(
        &access_errors(&target(
            "[{kind: HTTPRouteGroup, name: g, matches: [writes]}]",
            src,
        )),
        "spec.rules[0].matches[0]",
        "no match named \"writes\"",
    );
    has(
        &access_errors(&target("[{kind: HTTPRouteGroup, name: g}]", "[]")),
        "spec.sources",
        "is required",
    );
    has(
        &access_errors(&target(
            "[{kind: HTTPRouteGroup, name: g}]",
            "[{kind: User, name: bob}]",
        )),
        "spec.sources[0].kind",
        "must be ServiceAccount",
    );
    has(
        &access_errors(&target("[]", src)),
        "spec.rules",
        "allows nothing",
    );
    // Without the destination Service, Istio cannot select the workloads: refused, not
    // rendered namespace-wide.
    has(
        &access_errors(&target("[{kind: HTTPRouteGroup, name: g}]", src)),
        "destination",
        "pass the manifest of the Service of the same name",
    );
}

#[test]
fn deep_nesting_is_refused_before_the_yaml_parser_sees_it() {
    // 40,000 nested flow sequences took the YAML scanner 6.7 s; now refused in one pass.
    let deep = format!("{}{}", "[".repeat(40_000), "]".repeat(40_000));
    for text in [
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: x}}\nspec: {deep}\n"),
        // Inside a quoted scalar too: the bound does not trust quoting it does not parse.
        format!("a: |\n  '\nb: {deep}\n"),
        format!("{}x\n", "- ".repeat(70)),
        format!("{}a: 1\n", " ".repeat(600)),
    ] {
        let errs = refused(&text);
        assert!(
            errs.iter().any(|e| e.contains("not accepted: line")),
            "{errs:#?}"
        );
    }
    // Real nesting passes the bound.
    assert!(smi_adapters::input::check_bounds(SERVICES).is_ok());
}

#[test]
fn a_traffic_target_writes_access_only_in_its_own_namespace() {
    // A TrafficTarget in namespace `shop` naming a destination in `kube-system`: refused for
    // every mesh (it would write allow policies into another namespace).
    let input = target(
        "[{kind: HTTPRouteGroup, name: g}]",
        "[{kind: ServiceAccount, name: client}]",
    )
    .replace(
        "destination: {kind: ServiceAccount, name: web, namespace: shop}",
        "destination: {kind: ServiceAccount, name: web, namespace: kube-system}",
    );
    for mesh in [Mesh::Istio, Mesh::Linkerd, Mesh::Consul, Mesh::Kuma] {
        let files = vec![("input.yaml".to_string(), input.clone())];
        let t = smi_adapters::translate(&files, None, mesh, &Options::default());
        let errs: Vec<String> = t
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| format!("{}: {}", d.field, d.message))
            .collect();
        has(&errs, "spec.destination.namespace", "own namespace");
        assert!(
            !t.to_yaml().contains("kube-system"),
            "{mesh:?} wrote into kube-system:\n{}",
            t.to_yaml()
        );
    }
}

fn route_group(matches: &str) -> String {
    format!(
        "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {{name: g, namespace: shop}}\nspec:\n  matches: {matches}\n"
    )
}

/// Patterns are checked against the dialect the meshes run (RE2), and header names are HTTP
/// tokens: what istiod would refuse, or what Envoy would read differently, is refused here with
/// the field named. (Found by running istiod's validation on rendered output.)
#[test]
fn patterns_outside_re2_and_header_names_that_are_not_tokens() {
    let errs = refused(&route_group(
        r#"[{name: a, pathRegex: "/[a-z&&[^aeiou]]+"}, {name: b, headers: [{"x canary": "yes"}]}, {name: c, headers: [{x-v: "(?x) 1 2"}]}]"#,
    ));
    has(&errs, "spec.matches[0].pathRegex", "class set operation");
    has(
        &errs,
        "spec.matches[1].headers[0]",
        "not an HTTP header name",
    );
    has(
        &errs,
        "spec.matches[2].headers[0].x-v",
        "flag RE2 does not have",
    );
    let errs = refused(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: web, port: 8080}]\n  rules:\n  - matches: [{path: {type: RegularExpression, value: \"/[a[b]]\"}, headers: [{name: \"x:y\", value: v}]}]\n    backendRefs: [{name: web-v1, port: 8080}]\n",
    );
    has(
        &errs,
        "spec.rules[0].matches[0].path.value",
        "nests a character class",
    );
    has(
        &errs,
        "spec.rules[0].matches[0].headers[0].name",
        "not an HTTP header name",
    );
}

/// Istio reads `*` at either end of an authorization value as a wildcard and `{*}`/`{**}` in a
/// path as a template, and refuses empty values: a literal path or header value containing
/// them has no exact Istio form, so its match is left out (narrowed, never widened) instead of
/// being written (where it would widen access or be refused by istiod).
#[test]
fn istio_authorization_never_writes_a_literal_istio_reads_as_a_wildcard() {
    let input = format!(
        "{}---\n{}---\n{}",
        route_group(
            r#"[{name: star, pathRegex: "/files/\\*"}, {name: tmpl, pathRegex: "/v1/\\{\\*\\}"}, {name: brace, pathRegex: "/v1/\\{name\\}"}, {name: empty, pathRegex: "/h", headers: [{x-empty: "^$"}]}, {name: hstar, pathRegex: "/h", headers: [{x-v: "^a\\*$"}]}, {name: fine, pathRegex: "/ok/.*"}]"#
        ),
        "apiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {name: t, namespace: shop}\nspec:\n  destination: {kind: ServiceAccount, name: web, namespace: shop}\n  rules: [{kind: HTTPRouteGroup, name: g, matches: [star, tmpl, brace, empty, hstar, fine]}]\n  sources: [{kind: ServiceAccount, name: client}]\n",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {selector: {app: web}, ports: [{name: http, port: 8080}]}\n"
    );
    let files = vec![("input.yaml".to_string(), input)];
    let t = smi_adapters::translate(&files, None, Mesh::Istio, &Options::default());
    assert!(t.complete(), "{:?}", t.diagnostics);
    let out = t.to_yaml();
    assert!(out.contains("/ok/*"), "{out}");
    for literal in ["/files/*", "{*}", "{name}", "\"\"", "a*"] {
        assert!(!out.contains(literal), "{literal} written:\n{out}");
    }
    let warned: Vec<&str> = t.diagnostics.iter().map(|d| d.message.as_str()).collect();
    for name in ["star", "tmpl", "brace"] {
        assert!(
            warned
                .iter()
                .any(|m| m.contains(&format!("match \"{name}\": path")) && m.contains("left out")),
            "{name}: {warned:#?}"
        );
    }
    for name in ["empty", "hstar"] {
        assert!(
            warned
                .iter()
                .any(|m| m.contains(&format!("match \"{name}\": a header pattern"))),
            "{name}: {warned:#?}"
        );
    }
}

/// Every kind is read into its version's types: each field the version does not have is
/// refused (all of them, by path, at any depth), and a value of the wrong type is refused with
/// its path.
#[test]
fn unknown_fields_and_wrong_types_are_refused_with_their_paths() {
    let e = refused(
        "apiVersion: specs.smi-spec.io/v1alpha1\nkind: HTTPRouteGroup\nmetadata: {name: g, namespace: shop}\nmatches: [{name: a, pathRegx: /x}]\nspec: {}\n",
    );
    has(&e, "matches[0].pathRegx", "unknown field");
    has(&e, "spec", "unknown field");
    let e = refused(&target(
        "[{kind: HTTPRouteGroup, name: g, match: [reads]}]",
        "[{kind: ServiceAccount, name: client, namepsace: shop}]",
    ));
    has(&e, "spec.rules[0].match", "unknown field");
    has(&e, "spec.sources[0].namepsace", "unknown field");
    let e = refused(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: web, port: 8080}]\n  rules:\n  - matches: [{path: {type: Exact, value: /a, vaule: /b}}]\n    backendRefs: [{name: web-v1, port: 8080}]\n",
    );
    has(&e, "spec.rules[0].matches[0].path.vaule", "unknown field");
    let e = refused(&split("v1alpha2", "  - {service: 5, weight: 1}\n"));
    has(&e, "spec.backends[0].service", "invalid type");
    let e = refused(&split("v1alpha2", "  - {service: web-v1, weight: [1]}\n"));
    has(&e, "spec.backends[0].weight", "invalid type");
    let e = refused(&route_group(r#"[{name: a, methods: GET}]"#));
    has(&e, "spec.matches[0].methods", "invalid type");
}

/// A backendRef filter changes what a backend receives (headers, mirrors): it was once read as
/// a known field and then dropped, so the route rendered without it. It is refused now, as is a
/// parent's sectionName (dropping it would widen the route to every port).
#[test]
fn gateway_route_filters_on_a_backend_and_section_names_are_refused_not_dropped() {
    let route = |parent: &str, backend: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n  parentRefs: [{parent}]\n  rules:\n  - backendRefs: [{backend}]\n"
        )
    };
    let e = refused(&route(
        "{group: \"\", kind: Service, name: web, port: 8080}",
        "{name: web-v1, port: 8080, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x, value: y}]}}]}",
    ));
    has(
        &e,
        "spec.rules[0].backendRefs[0].filters",
        "not translated yet",
    );
    let e = refused(&route(
        "{group: \"\", kind: Service, name: web, sectionName: http}",
        "{name: web-v1, port: 8080}",
    ));
    has(&e, "spec.parentRefs[0].sectionName", "not translated yet");
}

/// The typed entry point (objects in memory, as federationd's controller calls it) renders
/// exactly what the text entry point renders for the same objects, diagnostics included.
#[test]
fn objects_in_memory_translate_as_their_text_does() {
    let text = format!(
        "{SERVICES}---\n{}",
        split(
            "v1alpha2",
            "  - {service: web-v1, weight: 1}\n  - {service: web-v2, weight: 3}\n"
        )
    );
    let files = vec![("in.yaml".to_string(), text.clone())];
    let objects: Vec<(String, serde_json::Value)> = serde_norway::Deserializer::from_str(&text)
        .enumerate()
        .map(|(i, d)| {
            (
                format!("in.yaml#{}", i + 1),
                serde::Deserialize::deserialize(d).unwrap(),
            )
        })
        .collect();
    for mesh in [Mesh::Istio, Mesh::Linkerd, Mesh::Consul, Mesh::Kuma] {
        let a = smi_adapters::translate(&files, None, mesh, &Options::default());
        let b = smi_adapters::translate_objects(
            objects.clone(),
            Default::default(),
            mesh,
            &Options::default(),
        );
        assert!(a.complete(), "{:?}", a.diagnostics);
        assert!(!a.resources.is_empty());
        assert_eq!(a.resources, b.resources, "{mesh:?}");
        assert_eq!(a.diagnostics, b.diagnostics, "{mesh:?}");
    }
}

#[test]
fn a_bad_catalog_is_refused_naming_the_field() {
    let bad = |json: &str| {
        let files = vec![("s.yaml".to_string(), SERVICES.to_string())];
        let t = smi_adapters::translate(&files, Some(json), Mesh::Istio, &Options::default());
        assert!(t.resources.is_empty());
        t.diagnostics
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let e = bad(
        r#"{"site":"a","origins":[{"entries":[{"origin":"b","namespace":"shop","name":"db","ports":[{"port":70000}]}]}]}"#,
    );
    assert!(e.contains("origins[0].entries[0].ports[0].port"), "{e}");
    let e = bad(
        r#"{"site":"a","origins":[{"entries":[{"origin":"b","namespace":"../etc","name":"db"}]}]}"#,
    );
    assert!(
        e.contains("origins[0].entries[0].namespace") && e.contains("not a DNS label"),
        "{e}"
    );
    let e = bad(r#"{"origins":[]}"#);
    assert!(e.contains("missing field `site`"), "{e}");
}
