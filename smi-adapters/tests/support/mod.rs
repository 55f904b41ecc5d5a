//! Shared by the integration tests: the upstream CRD schemas vendored in `vendor/crds`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

pub mod schema;

use multimesh_core::names::is_dns_label;
use schema::Schemas;

/// The repository's `vendor/crds` (provenance and licences in its SOURCES.md).
pub fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../vendor/crds")
}

/// Every CRD under `vendor/crds`. Fails loudly when the folder is missing: the schema checks
/// are part of the suite, never skipped.
pub fn schemas() -> Schemas {
    let dir = schemas_dir();
    assert!(
        dir.is_dir(),
        "\n\n*** {} is missing: the upstream CRD schemas are needed to validate rendered \
         resources (they are part of the repository) ***\n",
        dir.display()
    );
    let mut s = Schemas::new();
    let mut n = 0;
    for mesh in std::fs::read_dir(&dir).unwrap() {
        let mesh = mesh.unwrap().path();
        if !mesh.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&mesh).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "yaml") {
                n += s
                    .add_crds(&std::fs::read_to_string(&f).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            }
        }
    }
    assert!(n > 50, "only {n} CRD versions found in {}", dir.display());
    s
}

/// A structural check of the core kinds renderers emit (v1 Service and Endpoints), which have no
/// CRD schema: known fields only, names that are DNS labels, ports in range, IPs that parse.
pub fn check_core(r: &serde_json::Value) -> Result<(), Vec<String>> {
    use serde_json::Value;
    let mut errs = Vec::new();
    let keys = |v: &Value, allowed: &[&str], at: &str, errs: &mut Vec<String>| {
        for k in v.as_object().into_iter().flat_map(|m| m.keys()) {
            if !allowed.contains(&k.as_str()) {
                errs.push(format!("{at}.{k}: unknown field"));
            }
        }
    };
    let port_ok = |v: &Value| v.as_u64().is_some_and(|p| (1..=65535).contains(&p));
    let label = |v: &Value| is_dns_label(v.as_str().unwrap_or_default());
    match r["kind"].as_str() {
        Some("Service") => {
            keys(
                r,
                &["apiVersion", "kind", "metadata", "spec"],
                "",
                &mut errs,
            );
            keys(
                &r["spec"],
                &["ports", "selector", "type", "clusterIP"],
                "spec",
                &mut errs,
            );
            for (i, p) in r["spec"]["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                keys(
                    p,
                    &["name", "port", "protocol", "targetPort", "appProtocol"],
                    &format!("spec.ports[{i}]"),
                    &mut errs,
                );
                if !label(&p["name"]) || !port_ok(&p["port"]) || !port_ok(&p["targetPort"]) {
                    errs.push(format!("spec.ports[{i}]: bad name or port: {p}"));
                }
            }
        }
        Some("Endpoints") => {
            keys(
                r,
                &["apiVersion", "kind", "metadata", "subsets"],
                "",
                &mut errs,
            );
            for s in r["subsets"].as_array().into_iter().flatten() {
                for a in s["addresses"].as_array().into_iter().flatten() {
                    if a["ip"]
                        .as_str()
                        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
                        .is_none()
                    {
                        errs.push(format!("subsets.addresses: bad ip {a}"));
                    }
                }
                for p in s["ports"].as_array().into_iter().flatten() {
                    if !label(&p["name"]) || !port_ok(&p["port"]) {
                        errs.push(format!("subsets.ports: bad name or port: {p}"));
                    }
                }
            }
        }
        other => errs.push(format!("unexpected core kind {other:?}")),
    }
    let name = r["metadata"]["name"].as_str().unwrap_or_default();
    if !is_dns_label(name) {
        errs.push(format!("metadata.name: {name:?} is not a DNS label"));
    }
    if errs.is_empty() { Ok(()) } else { Err(errs) }
}
