//! The Kind path cannot run here (no container engine). What it deploys is checked statically:
//! the federationd and edge-agent configs in its ConfigMaps load with the daemons' own config
//! readers once the node addresses are filled in, every service the app exports is served by the
//! edge agent of its site, and the cluster address ranges do not overlap. (The objects
//! themselves pass server-side dry-run against a real API server in
//! federation/tests/kube_apply.rs; the scripts pass shellcheck in scripts/test.sh.)
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

fn kind_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kind")
}

fn docs(file: &Path) -> Vec<serde_norway::Value> {
    let text = std::fs::read_to_string(file).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn fill(text: &str) -> String {
    text.replace("@A_IP@", "172.18.0.2")
        .replace("@B_IP@", "172.18.0.3")
        .replace("@C_IP@", "172.18.0.4")
}

#[test]
fn the_site_configs_load_and_every_export_has_an_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    for site in ["a", "b", "c"] {
        let dir = kind_dir().join("manifests");
        let site_docs = docs(&dir.join(format!("site-{site}.yaml")));
        let data = |name: &str, key: &str| -> String {
            let cm = site_docs
                .iter()
                .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("site {site}: no ConfigMap {name}"));
            fill(cm["data"][key].as_str().unwrap())
        };
        let fed = tmp.path().join(format!("{site}-federationd.toml"));
        std::fs::write(&fed, data("federationd", "federationd.toml")).unwrap();
        let cfg = federation::config::Config::load(&fed)
            .unwrap_or_else(|e| panic!("site {site}: federationd config: {e}"));
        assert_eq!(cfg.site, site);
        let edge = tmp.path().join(format!("{site}-edge-agent.toml"));
        std::fs::write(&edge, data("edge-agent", "edge-agent.toml")).unwrap();
        let agent = edge_agent::config::AgentConfig::load(&edge)
            .unwrap_or_else(|e| panic!("site {site}: edge-agent config: {e}"));
        assert_eq!(agent.site, site);
        // Every ServiceExport of the site is served by its edge agent, to a Service that exists.
        let app = docs(&dir.join(format!("app-{site}.yaml")));
        let services: Vec<&str> = app
            .iter()
            .filter(|d| d["kind"] == "Service")
            .map(|d| d["metadata"]["name"].as_str().unwrap())
            .collect();
        for e in app.iter().filter(|d| d["kind"] == "ServiceExport") {
            let name = e["metadata"]["name"].as_str().unwrap();
            assert!(
                services.contains(&name),
                "site {site}: export {name} has no Service"
            );
            let local = agent
                .local
                .iter()
                .find(|l| l.name == name)
                .unwrap_or_else(|| panic!("site {site}: the edge agent does not serve {name}"));
            assert_eq!(
                local.ports[0].upstream,
                format!("{name}.tours.svc.cluster.local:80"),
                "site {site}"
            );
        }
    }
}

#[test]
fn the_clusters_have_distinct_address_ranges() {
    let mut ranges = Vec::new();
    for site in ["a", "b", "c"] {
        let d = &docs(&kind_dir().join(format!("clusters/mm-{site}.yaml")))[0];
        assert_eq!(d["kind"], "Cluster");
        ranges.push(d["networking"]["podSubnet"].as_str().unwrap().to_string());
        ranges.push(
            d["networking"]["serviceSubnet"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let n = ranges.len();
    ranges.sort();
    ranges.dedup();
    assert_eq!(ranges.len(), n, "overlapping ranges: {ranges:?}");
}
