//! Golden tests: every corpus case rendered for every mesh matches its `.golden` file byte for
//! byte (diagnostics included), and every rendered resource validates strictly against the
//! upstream CRD schema of its apiVersion/kind. `UPDATE_GOLDEN=1` rewrites the files; review
//! the diff.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use smi_adapters::render::{Mesh, Options};

/// (case, mesh) pairs that must be refused, and why; their golden files hold the errors.
const REFUSED: [(&str, &str); 4] = [
    // MeshHTTPRoute has no per-backend filter to tell the edge agent where a remote share goes.
    ("split-v1alpha2-remote", "kuma"),
    // Access policies: Gateway API has no authorization resource.
    ("access-v1alpha3-http", "gateway-api"),
    ("access-v1alpha1-tcp", "gateway-api"),
    ("access-v1alpha3-whole-service", "gateway-api"),
];

fn options() -> Options {
    Options {
        edge_ips: vec!["10.96.0.50".into()],
        ..Options::default()
    }
}

fn corpus() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn case_inputs(case: &Path) -> (Vec<(String, String)>, Option<String>) {
    let shared = corpus().join("services.yaml");
    let mut files = vec![(
        "services.yaml".to_string(),
        std::fs::read_to_string(shared).unwrap(),
    )];
    files.push((
        "input.yaml".to_string(),
        std::fs::read_to_string(case.join("input.yaml")).unwrap(),
    ));
    let catalog = std::fs::read_to_string(case.join("catalog.json")).ok();
    (files, catalog)
}

fn golden_text(t: &smi_adapters::Translation) -> String {
    let mut out = String::new();
    for d in &t.diagnostics {
        out.push_str(&format!("# {d}\n"));
    }
    out.push_str(&t.to_yaml());
    out
}

#[test]
fn every_case_matches_its_golden_output_and_validates_against_upstream_crds() {
    let schemas = support::schemas();
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "corpus has {} cases", cases.len());
    let mut failures = Vec::new();
    let mut validated = 0;
    for case in &cases {
        let (files, catalog) = case_inputs(case);
        for mesh in Mesh::ALL {
            let mesh_name = mesh.name();
            let t = smi_adapters::translate(&files, catalog.as_deref(), mesh, &options());
            let label = format!(
                "{}/{mesh_name}",
                case.file_name().unwrap().to_string_lossy()
            );
            let case_name = case.file_name().unwrap().to_string_lossy().to_string();
            if REFUSED.contains(&(case_name.as_str(), mesh_name)) {
                assert!(!t.complete(), "{label}: expected a refusal");
            } else {
                assert!(t.complete(), "{label}: {:?}", t.diagnostics);
                assert!(!t.resources.is_empty(), "{label}: nothing rendered");
            }
            assert!(
                t.resources.iter().all(|r| r["kind"] != "ServiceProfile"),
                "{label}: a ServiceProfile would override the HTTPRoute"
            );
            for r in &t.resources {
                let kind = (
                    r["apiVersion"].as_str().unwrap_or_default(),
                    r["kind"].as_str().unwrap_or_default(),
                );
                if !mesh.kinds().contains(&kind) {
                    failures.push(format!(
                        "{label}: {kind:?} is not in Mesh::kinds(), so the Kubernetes backend would never garbage-collect it"
                    ));
                }
                let checked = if r["apiVersion"] == "v1" {
                    // Core kinds have no CRD schema: a structural check here, the real API
                    // server in the Kubernetes tests.
                    support::check_core(r)
                } else {
                    schemas
                        .validate(r)
                        .map_err(|v| v.iter().map(|x| x.to_string()).collect())
                };
                if let Err(v) = checked {
                    failures.push(format!(
                        "{label}: {} {}: {}",
                        r["kind"],
                        r["metadata"]["name"],
                        v.iter()
                            .map(|x| x.to_string())
                            .collect::<Vec<_>>()
                            .join("; ")
                    ));
                }
                validated += 1;
            }
            // The YAML reads back as exactly the rendered resources.
            let back: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&t.to_yaml())
                .map(|d| serde::Deserialize::deserialize(d).unwrap())
                .filter(|v: &serde_json::Value| !v.is_null()) // an empty text reads as one null
                .collect();
            assert_eq!(back, t.resources, "{label}: YAML does not read back");
            let text = golden_text(&t);
            let golden = case.join(format!("{mesh_name}.golden"));
            if update {
                std::fs::write(&golden, &text).unwrap();
            } else {
                let want = std::fs::read_to_string(&golden).unwrap_or_else(|_| {
                    panic!("{} missing: run with UPDATE_GOLDEN=1", golden.display())
                });
                if want != text {
                    failures.push(format!(
                        "{label}: output differs from {}:\n{text}",
                        golden.display()
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(validated >= 35, "only {validated} resources validated");
}

#[test]
fn output_does_not_depend_on_the_order_of_backends_or_documents() {
    let case = corpus().join("split-v1alpha1-quantities");
    let (mut files, catalog) = case_inputs(&case);
    let a = smi_adapters::translate(&files, catalog.as_deref(), Mesh::Istio, &Options::default());
    // Reverse the backends of the split and the order of the files.
    let reversed = files[1]
        .1
        .replace("  - {service: reviews-v1, weight: 500m}\n  - {service: reviews-v2, weight: 1}\n  - {service: reviews-v3, weight: \"1500m\"}",
                 "  - {service: reviews-v3, weight: \"1500m\"}\n  - {service: reviews-v2, weight: 1}\n  - {service: reviews-v1, weight: 500m}");
    assert_ne!(reversed, files[1].1, "the test input did not change");
    files[1].1 = reversed;
    files.reverse();
    let b = smi_adapters::translate(&files, catalog.as_deref(), Mesh::Istio, &Options::default());
    assert_eq!(a.to_yaml(), b.to_yaml());
}
