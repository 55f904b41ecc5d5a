//! Everything smi-adapters renders is accepted by a real API server: every corpus case, for
//! every mesh, server-side applied against the upstream CRDs from vendor/crds, installed
//! unmodified (their CEL rules are evaluated). The
//! golden tests validate against the schemas with our own validator; this one lets the API
//! server be the judge, core kinds (Service, Endpoints) included. Also: the CRDs
//! `federationctl crds` prints install, and objects of those types apply.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use serde_json::{Value, json};
use smi_adapters::render::{Mesh, Options};
use support::kubeenv::{self as k, KubeEnv};

fn corpus() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../smi-adapters/tests/corpus")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rendered_resource_is_accepted_by_server_side_apply() {
    let env = KubeEnv::start(&["a"]);
    let c = env.client("a").await;
    k::install_crds(&c, &k::upstream_crds(&[])).await;
    let mut cases: Vec<_> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    let services = std::fs::read_to_string(corpus().join("services.yaml")).unwrap();
    let mut failures = Vec::new();
    let mut applied = 0;
    let mut namespaces = std::collections::BTreeSet::new();
    for case in &cases {
        let input = std::fs::read_to_string(case.join("input.yaml")).unwrap();
        let catalog = std::fs::read_to_string(case.join("catalog.json")).ok();
        let files = vec![
            ("services.yaml".to_string(), services.clone()),
            ("input.yaml".to_string(), input),
        ];
        for mesh in Mesh::ALL {
            let mesh_name = mesh.name();
            let opts = Options {
                edge_ips: vec!["10.96.0.50".into()],
                ..Options::default()
            };
            let t = smi_adapters::translate(&files, catalog.as_deref(), mesh, &opts);
            for r in &t.resources {
                let ns = r["metadata"]["namespace"].as_str().unwrap_or("default");
                if namespaces.insert(ns.to_string()) {
                    k::namespace(&c, ns).await;
                }
                // One field manager per (case, mesh): cases render objects of the same name,
                // and each apply must stand on its own.
                let manager = format!(
                    "{}-{mesh_name}",
                    case.file_name().unwrap().to_string_lossy()
                );
                match k::apply(&c, &manager, r).await {
                    Ok(_) => applied += 1,
                    Err(e) => failures.push(format!(
                        "{}/{mesh_name}: {} {} {}: {e}",
                        case.file_name().unwrap().to_string_lossy(),
                        r["apiVersion"],
                        r["kind"],
                        r["metadata"]["name"]
                    )),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} resources refused by the API server:\n{}",
        failures.len(),
        applied + failures.len(),
        failures.join("\n")
    );
    assert!(applied >= 80, "only {applied} resources applied");
    // GAMMA HTTPRoutes (a Service parentRef says `group: ""`) are among them.
    let gamma = cases.iter().any(|c| c.ends_with("gamma-httproute"));
    assert!(gamma, "the corpus has a GAMMA HTTPRoute case");
    eprintln!("{applied} rendered resources accepted by server-side apply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crds_federationctl_prints_install_and_accept_their_objects() {
    let env = KubeEnv::start(&["a"]);
    let c = env.client("a").await;
    let crds = federationctl_crds();
    let names: Vec<&str> = crds
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "serviceexports.multicluster.x-k8s.io",
            "serviceimports.multicluster.x-k8s.io"
        ]
    );
    k::install_crds(&c, &crds).await;
    k::namespace(&c, "shop").await;
    k::apply(
        &c,
        "test",
        &json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
            "metadata": {"name": "payment", "namespace": "shop",
                         "annotations": {"multimesh.io/consumers": "b,c"}}}),
    )
    .await
    .unwrap();
    k::apply(
        &c,
        "test",
        &json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
            "metadata": {"name": "payment", "namespace": "shop"},
            "spec": {"type": "ClusterSetIP", "ports": [{"name": "http", "protocol": "TCP", "appProtocol": "http", "port": 8080}]}}),
    )
    .await
    .unwrap();
    // A ServiceImport without its required ports is refused by the generated schema.
    let bad = k::apply(
        &c,
        "test",
        &json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
            "metadata": {"name": "bad", "namespace": "shop"}, "spec": {"type": "ClusterSetIP"}}),
    )
    .await;
    assert!(bad.is_err(), "a ServiceImport without ports was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_manifests_pass_server_side_dry_run() {
    let env = KubeEnv::start(&["a"]);
    let c = env.client("a").await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let docs = k::manifests_under(&dir);
    assert!(docs.len() >= 8, "only {} manifests", docs.len());
    // Namespaced objects need their namespace to exist, even in a dry run.
    k::namespace(&c, "multimesh").await;
    k::namespace(&c, "tours").await;
    assert_dry_run_accepts(&c, &docs).await;
    // Writes are never granted cluster-wide: the write role is bound per namespace.
    for (_, d) in docs
        .iter()
        .filter(|(_, d)| d["kind"] == "ClusterRoleBinding")
    {
        assert_ne!(
            d["roleRef"]["name"], "multimesh-federationd-write",
            "the write role bound cluster-wide: {d}"
        );
    }
    // A Secret is referenced, never shipped.
    assert!(docs.iter().all(|(_, d)| d["kind"] != "Secret"));
    // Least privilege, by construction: no wildcard and no access to Secrets.
    for (_, d) in docs.iter().filter(|(_, d)| d["kind"] == "ClusterRole") {
        for rule in d["rules"].as_array().unwrap() {
            let all: Vec<&str> = ["apiGroups", "resources", "verbs"]
                .iter()
                .flat_map(|k| {
                    rule[*k]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_str().unwrap())
                })
                .collect();
            assert!(!all.contains(&"*"), "wildcard in {rule}");
            assert!(!all.contains(&"secrets"), "Secrets access in {rule}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kind_demo_manifests_pass_server_side_dry_run() {
    // The Kind path of the demo cannot run here (no container engine); every object it applies
    // is checked by the real API server instead: deploy/kubernetes, then the demo's site and
    // app manifests (with the MCS CRDs from `federationctl crds` installed for ServiceExports).
    let env = KubeEnv::start(&["a"]);
    let c = env.client("a").await;
    k::install_crds(&c, &federationctl_crds()).await;
    k::namespace(&c, "multimesh").await;
    k::namespace(&c, "tours").await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let docs = k::manifests_under(&root.join("sites/kind/manifests"));
    let kinds: Vec<&str> = docs
        .iter()
        .map(|(_, d)| d["kind"].as_str().unwrap())
        .collect();
    for want in [
        "Namespace",
        "Deployment",
        "Service",
        "ServiceExport",
        "ConfigMap",
    ] {
        assert!(kinds.contains(&want), "no {want} in the Kind manifests");
    }
    assert_dry_run_accepts(&c, &docs).await;
    // Every app container runs the demo image as non-root with a read-only root filesystem.
    for (file, d) in docs.iter().filter(|(_, d)| d["kind"] == "Deployment") {
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{file}");
        for ctr in pod["containers"].as_array().unwrap() {
            assert_eq!(ctr["image"], "multimesh/tours:0.1.0", "{file}");
            assert_eq!(
                ctr["securityContext"]["readOnlyRootFilesystem"], true,
                "{file}"
            );
        }
    }
}

/// The CRDs `federationctl crds` prints.
fn federationctl_crds() -> Vec<Value> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_federationctl"))
        .arg("crds")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    k::yaml_documents(&String::from_utf8(out.stdout).unwrap())
}

/// Every document passes server-side dry-run (all refusals are listed at once).
async fn assert_dry_run_accepts(c: &kube::Client, docs: &[(String, Value)]) {
    let mut failures = Vec::new();
    for (file, doc) in docs {
        if let Err(e) = k::apply_dry_run(c, doc).await {
            failures.push(format!(
                "{file}: {} {}: {e}",
                doc["kind"], doc["metadata"]["name"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
