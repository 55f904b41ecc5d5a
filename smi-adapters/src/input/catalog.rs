//! The federation catalog as `federationctl catalog -o json` prints it (the text entry point's
//! `--catalog`): every served entry of another origin than the viewing site is a remote
//! service. Fields this crate does not read (versions, conditions, ...) are allowed.

use serde::Deserialize;

use super::RemoteServices;
use crate::model::{Port, Protocol, Remote, ServiceInfo, ServiceKey, TargetPort};
use multimesh_core::names::is_dns_label;

#[derive(Deserialize)]
struct Catalog {
    site: String,
    #[serde(default)]
    origins: Vec<OriginEntries>,
}

#[derive(Deserialize)]
struct OriginEntries {
    #[serde(default)]
    entries: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    origin: String,
    namespace: String,
    name: String,
    served: Option<bool>,
    #[serde(default)]
    ports: Vec<EntryPort>,
    #[serde(default)]
    ingress: Vec<String>,
    #[serde(default)]
    identity: String,
}

#[derive(Deserialize)]
struct EntryPort {
    #[serde(default)]
    name: String,
    port: u16,
    protocol: Option<String>,
}

/// Reads the catalog JSON into the remote services it names. The error names the field
/// (`catalog: origins[0].entries[2].ports[0].port: ...`).
pub fn parse_catalog(json: &str) -> Result<RemoteServices, String> {
    let mut de = serde_json::Deserializer::from_str(json);
    let c: Catalog = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = super::error_path(e.path());
        let what = if path.is_empty() {
            "not the output of `federationctl catalog -o json`".to_string()
        } else {
            path
        };
        format!("catalog: {what}: {}", e.inner())
    })?;
    let mut out = RemoteServices::new();
    for (i, origin) in c.origins.into_iter().enumerate() {
        for (j, e) in origin.entries.into_iter().enumerate() {
            if e.origin == c.site || e.served == Some(false) {
                continue;
            }
            for (field, v) in [("namespace", &e.namespace), ("name", &e.name)] {
                if !is_dns_label(v) {
                    return Err(format!(
                        "catalog: origins[{i}].entries[{j}].{field}: {v:?} is not a DNS label"
                    ));
                }
            }
            let ports = e
                .ports
                .into_iter()
                .map(|p| Port {
                    name: p.name,
                    port: p.port,
                    protocol: p
                        .protocol
                        .as_deref()
                        .and_then(Protocol::from_app_protocol)
                        .unwrap_or(Protocol::Tcp),
                    target: TargetPort::Number(p.port),
                })
                .collect();
            out.insert(
                ServiceKey::new(&e.namespace, &e.name),
                ServiceInfo {
                    namespace: e.namespace,
                    name: e.name,
                    ports,
                    selector: Default::default(),
                    remote: Some(Remote {
                        site: e.origin,
                        ingress: e.ingress,
                        identity: e.identity,
                    }),
                },
            );
        }
    }
    Ok(out)
}
