//! The site config file of `federationd` (TOML or YAML, by extension). Relative paths are
//! resolved against the config file's folder. Every error names the offending field.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::InvalidField;
use crate::model::{self, Port, Scope, Service, StalePolicy};
use crate::names;

pub use multimesh_core::config::{ConfigError, TlsFiles};

/// One site's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This site's name (a DNS label); must match its certificate's SPIFFE ID.
    pub site: String,
    /// The federation's SPIFFE trust domain.
    pub trust_domain: String,
    /// Address the peer listener binds (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Unix socket of the admin API (created with mode 0600).
    pub admin_socket: PathBuf,
    /// File where exports and imports are persisted.
    pub state_file: PathBuf,
    /// This site's edge-agent ingress addresses, advertised with every export.
    #[serde(default)]
    pub edge_ingress: Vec<String>,
    /// On an edge node: the parent site whose edge agent relays calls to this node
    /// (`edge_ingress` then lists the parent's ingress addresses).
    #[serde(default)]
    pub edge_via: Option<String>,
    /// Certificate files.
    pub tls: TlsFiles,
    /// How often the certificate and key files are read again (ms); when they changed and pass
    /// the checks a peer would apply, new handshakes present the new certificate and this
    /// site's records are sealed again by it (rotation without a restart). 0: never.
    #[serde(default = "default_reload_ms")]
    pub certificate_reload_ms: u64,
    /// How often this file is read again (ms); a change to `peers` takes effect while the
    /// daemon runs (a site joins or leaves the federation without a restart), a change to any
    /// other field at the next start. A file that does not load changes nothing. 0: never.
    #[serde(default = "default_reload_ms")]
    pub config_reload_ms: u64,
    /// Sync protocol tuning.
    #[serde(default)]
    pub sync: SyncSettings,
    /// Peer sites.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// The services this site runs.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    /// Where the daemon writes the address it actually bound (useful with port 0).
    #[serde(default)]
    pub ready_file: Option<PathBuf>,
    /// Where this site's services come from: `static` (this file and `federationctl export`)
    /// or `kubernetes` (ServiceExports in a cluster; see `[kubernetes]`).
    #[serde(default)]
    pub backend: BackendKind,
    /// Settings of the `kubernetes` backend.
    #[serde(default)]
    pub kubernetes: Option<crate::kubernetes::KubeSettings>,
}

fn default_reload_ms() -> u64 {
    5_000
}

/// The site backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Services from the config file and `federationctl export`, persisted in the state file.
    #[default]
    Static,
    /// A Kubernetes cluster: MCS ServiceExport/ServiceImport and mesh-native resources.
    Kubernetes,
}

/// Tuning of the sync protocol.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    /// Heartbeat period (ms).
    pub heartbeat_ms: u64,
    /// A peer or origin unheard for this long (ms) is unhealthy / unreachable; 0 means 3.5
    /// heartbeats.
    pub liveness_timeout_ms: u64,
    /// First reconnect delay (ms); doubles up to `backoff_max_ms`, with full jitter.
    pub backoff_min_ms: u64,
    /// Longest reconnect delay (ms).
    pub backoff_max_ms: u64,
    /// Most records one peer may make this site hold.
    pub max_records_per_link: usize,
    /// Largest accepted gRPC message (bytes).
    pub max_message_bytes: usize,
    /// Records per snapshot chunk.
    pub snapshot_chunk: usize,
    /// Withdrawals kept to serve deltas.
    pub max_tombstones: usize,
    /// Items (records, changes, heads; each message counts one more) one peer may send per
    /// second, sustained. Faster peers are slowed down: their messages wait, and HTTP/2 flow
    /// control holds the rest back.
    pub peer_rate: u64,
    /// Items one peer may send at once above its rate (a full snapshot should fit).
    pub peer_burst: u64,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 1000,
            liveness_timeout_ms: 0,
            backoff_min_ms: 200,
            backoff_max_ms: 5000,
            max_records_per_link: 50_000,
            max_message_bytes: 8 << 20,
            snapshot_chunk: 500,
            max_tombstones: 10_000,
            peer_rate: 10_000,
            peer_burst: 60_000,
        }
    }
}

impl SyncSettings {
    /// The liveness timeout, defaulting to 3.5 heartbeats.
    pub fn liveness_timeout(&self) -> std::time::Duration {
        let ms = if self.liveness_timeout_ms == 0 {
            self.heartbeat_ms * 7 / 2
        } else {
            self.liveness_timeout_ms
        };
        std::time::Duration::from_millis(ms)
    }
}

/// A peer site.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's site name (its certificate must carry `spiffe://<td>/site/<site>`).
    pub site: String,
    /// `host:port` to dial (host may be a DNS name, re-resolved on every reconnect). Without it,
    /// this site waits for the peer to dial in (e.g. an edge node behind NAT).
    #[serde(default)]
    pub address: Option<String>,
}

/// A service this site runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Service name.
    pub name: String,
    /// Namespace (default `default`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Ports.
    pub ports: Vec<Port>,
    /// Export it from the config (it cannot then be changed with `federationctl`).
    #[serde(default)]
    pub export: bool,
    /// Sites that may see it (default: all).
    #[serde(default)]
    pub to: Vec<String>,
    /// Other sites this site agrees to serve the name with (default: none; a name exported by
    /// sites that do not list each other is contested and served by none of them elsewhere).
    #[serde(default)]
    pub share_with: Vec<String>,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// SPIFFE identity of its workloads (default `spiffe://<td>/ns/<namespace>/sa/<name>`).
    #[serde(default)]
    pub identity: Option<String>,
    /// Stale policy.
    #[serde(default)]
    pub stale: Option<StalePolicy>,
}

fn default_namespace() -> String {
    "default".to_string()
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(Self::load_document(path)?.0)
    }

    /// [`Config::load`], with the file's document as it was written (fields left to their
    /// defaults are absent): a reload compares documents to name the fields that changed.
    pub fn load_document(path: &Path) -> Result<(Self, serde_json::Value), ConfigError> {
        Self::parse(path, &multimesh_core::config::read_file(path)?)
    }

    /// Parses and validates `text`, read from `path`: the config and the document.
    pub fn parse(path: &Path, text: &str) -> Result<(Self, serde_json::Value), ConfigError> {
        let p = path.display().to_string();
        let document = multimesh_core::config::parse_text(path, text)?;
        let mut cfg: Config = multimesh_core::config::parse_text(path, text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for f in [
            &mut cfg.admin_socket,
            &mut cfg.state_file,
            &mut cfg.tls.ca,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
        ] {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        if let Some(r) = cfg.ready_file.as_mut()
            && r.is_relative()
        {
            *r = base.join(&*r);
        }
        if let Some(k) = cfg.kubernetes.as_mut().and_then(|k| k.kubeconfig.as_mut())
            && k.is_relative()
        {
            *k = base.join(&*k);
        }
        cfg.validate()
            .map_err(|source| ConfigError::Invalid { path: p, source })?;
        Ok((cfg, document))
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), InvalidField> {
        names::dns_label("site", &self.site)?;
        names::trust_domain("trust_domain", &self.trust_domain)?;
        for (i, a) in self.edge_ingress.iter().enumerate() {
            names::host_port(&format!("edge_ingress[{i}]"), a)?;
        }
        if let Some(v) = &self.edge_via {
            names::dns_label("edge_via", v)?;
        }
        multimesh_core::rotate::check_period("certificate_reload_ms", self.certificate_reload_ms)?;
        multimesh_core::rotate::check_period("config_reload_ms", self.config_reload_ms)?;
        let s = &self.sync;
        if s.heartbeat_ms == 0 || s.heartbeat_ms > 60_000 {
            return Err(InvalidField::new(
                "sync.heartbeat_ms",
                s.heartbeat_ms,
                "must be in 1..=60000",
            ));
        }
        if s.backoff_min_ms == 0 || s.backoff_min_ms > s.backoff_max_ms {
            return Err(InvalidField::new(
                "sync.backoff_min_ms",
                s.backoff_min_ms,
                "must be >= 1 and <= sync.backoff_max_ms",
            ));
        }
        if s.snapshot_chunk == 0 {
            return Err(InvalidField::new(
                "sync.snapshot_chunk",
                0,
                "must be at least 1",
            ));
        }
        if s.peer_rate == 0 || s.peer_rate > 10_000_000 {
            return Err(InvalidField::new(
                "sync.peer_rate",
                s.peer_rate,
                "must be in 1..=10000000 (items per second)",
            ));
        }
        if s.peer_burst < s.peer_rate {
            return Err(InvalidField::new(
                "sync.peer_burst",
                s.peer_burst,
                "must be at least sync.peer_rate",
            ));
        }
        if s.max_message_bytes < 64 << 10 {
            return Err(InvalidField::new(
                "sync.max_message_bytes",
                s.max_message_bytes,
                "must be at least 65536",
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            let f = format!("peers[{i}]");
            names::dns_label(&format!("{f}.site"), &p.site)?;
            if p.site == self.site {
                return Err(InvalidField::new(
                    &format!("{f}.site"),
                    &p.site,
                    "is this site itself",
                ));
            }
            if !seen.insert(&p.site) {
                return Err(InvalidField::new(
                    &format!("{f}.site"),
                    &p.site,
                    "is listed twice",
                ));
            }
            if let Some(a) = &p.address {
                names::host_port(&format!("{f}.address"), a)?;
            }
        }
        if let Some(k) = &self.kubernetes {
            if self.backend != BackendKind::Kubernetes {
                return Err(InvalidField::new(
                    "kubernetes",
                    "<table>",
                    "is set but backend is not \"kubernetes\"",
                ));
            }
            k.validate()?;
        }
        let mut svcs = BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            let f = format!("services[{i}]");
            names::dns_label(&format!("{f}.name"), &s.name)?;
            names::dns_label(&format!("{f}.namespace"), &s.namespace)?;
            if !svcs.insert((&s.namespace, &s.name)) {
                return Err(InvalidField::new(
                    &format!("{f}.name"),
                    &s.name,
                    "is listed twice in this namespace",
                ));
            }
            self.service(s).validate().map_err(|e| e.within(&f))?;
            if s.export && self.backend == BackendKind::Kubernetes {
                return Err(InvalidField::new(
                    &format!("{f}.export"),
                    true,
                    "cannot be set with backend \"kubernetes\": ServiceExport objects export services",
                ));
            }
            if !s.to.is_empty() {
                Scope::from_sites(&format!("{f}.to"), &s.to)?;
            }
        }
        Ok(())
    }

    /// The configured service named `namespace/name`.
    pub fn find_service(&self, namespace: &str, name: &str) -> Option<&ServiceConfig> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// The default SPIFFE identity of a service's workloads.
    pub fn default_identity(&self, namespace: &str, name: &str) -> String {
        format!("spiffe://{}/ns/{namespace}/sa/{name}", self.trust_domain)
    }

    /// The catalog entry a configured service exports.
    pub fn service(&self, s: &ServiceConfig) -> Service {
        Service {
            ports: s.ports.clone(),
            ingress: self.edge_ingress.clone(),
            via: self.edge_via.clone(),
            labels: s.labels.clone(),
            identity: s
                .identity
                .clone()
                .unwrap_or_else(|| self.default_identity(&s.namespace, &s.name)),
            scope: if s.to.is_empty() {
                Scope::All
            } else {
                Scope::Sites(s.to.iter().cloned().collect())
            },
            stale: s.stale.unwrap_or_default(),
            share_with: s.share_with.iter().cloned().collect(),
        }
    }

    /// The configured peer names.
    pub fn peer_names(&self) -> BTreeSet<String> {
        self.peers.iter().map(|p| p.site.clone()).collect()
    }
}

/// Re-exported for config authors' convenience.
pub use model::Protocol;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_and_deeply_nested_configs_are_refused_before_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let nested = format!("site: a\nx: {}{}\n", "[".repeat(40_000), "]".repeat(40_000));
        let e = Config::load(&write(dir.path(), "deep.yaml", &nested)).unwrap_err();
        assert!(
            e.to_string().contains("line 2: nests flow collections"),
            "{e}"
        );
        let big = format!("# {}\n", "x".repeat(2 << 20));
        let e = Config::load(&write(dir.path(), "big.toml", &big)).unwrap_err();
        assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    const BASE: &str = r#"
site = "a"
trust_domain = "multimesh.test"
listen = "127.0.0.1:0"
admin_socket = "admin.sock"
state_file = "state.json"
edge_ingress = ["127.0.0.1:15443"]
[tls]
ca = "ca.pem"
cert = "a.pem"
key = "a-key.pem"
[[peers]]
site = "b"
address = "localhost:7002"
[[services]]
name = "payment"
namespace = "shop"
ports = [{ name = "http", port = 8080, protocol = "http" }]
export = true
to = ["b"]
"#;

    #[test]
    fn loads_toml_and_resolves_paths() {
        let d = tempfile::tempdir().unwrap();
        let c = Config::load(&write(d.path(), "a.toml", BASE)).unwrap();
        assert_eq!(c.state_file, d.path().join("state.json"));
        assert_eq!(c.services[0].ports[0].port, 8080);
        assert_eq!(c.sync.liveness_timeout().as_millis(), 3500);
        assert_eq!(c.certificate_reload_ms, 5_000);
    }

    #[test]
    fn a_reload_period_too_busy_is_named() {
        let d = tempfile::tempdir().unwrap();
        for field in ["certificate_reload_ms", "config_reload_ms"] {
            let with =
                |v: &str| BASE.replace("edge_ingress", &format!("{field} = {v}\nedge_ingress"));
            let never = Config::load(&write(d.path(), "a.toml", &with("0"))).unwrap();
            assert_eq!(
                (
                    never.certificate_reload_ms == 0,
                    never.config_reload_ms == 0
                ),
                (
                    field == "certificate_reload_ms",
                    field == "config_reload_ms"
                )
            );
            let e = Config::load(&write(d.path(), "b.toml", &with("10")))
                .unwrap_err()
                .to_string();
            assert!(e.contains(field) && e.contains("at least 100"), "{e}");
        }
    }

    #[test]
    fn loads_yaml() {
        let d = tempfile::tempdir().unwrap();
        let yaml = r#"
site: node
trust_domain: multimesh.test
listen: 127.0.0.1:0
admin_socket: admin.sock
state_file: state.json
tls: {ca: ca.pem, cert: n.pem, key: n-key.pem}
peers: [{site: c, address: "127.0.0.1:7003"}]
"#;
        let c = Config::load(&write(d.path(), "n.yaml", yaml)).unwrap();
        assert_eq!(c.peers[0].site, "c");
    }

    #[test]
    fn errors_name_the_field() {
        let d = tempfile::tempdir().unwrap();
        let bad = BASE.replace("port = 8080", "port = 0");
        let e = Config::load(&write(d.path(), "x.toml", &bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("services[0].ports[0].port"), "{e}");
        let bad = BASE.replace("site = \"b\"", "site = \"a\"");
        let e = Config::load(&write(d.path(), "x.toml", &bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("peers[0].site"), "{e}");
        let bad = BASE.replace("address = \"localhost:7002\"", "address = \"localhost\"");
        let e = Config::load(&write(d.path(), "x.toml", &bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("peers[0].address"), "{e}");
        let bad = BASE.replace("trust_domain", "trust_domian");
        let e = Config::load(&write(d.path(), "x.toml", &bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("trust_domian"), "{e}");
        let bad = BASE.replace("protocol = \"http\"", "protocol = \"udp\"");
        let e = Config::load(&write(d.path(), "x.toml", &bad))
            .unwrap_err()
            .to_string();
        assert!(e.contains("udp"), "{e}");
    }
}
