//! The edge agent's config file (TOML or YAML, by extension). Relative paths are resolved
//! against the file's folder; every error names the offending field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use multimesh_core::config::{ConfigError, TlsFiles};
use multimesh_core::error::InvalidField;
use multimesh_core::names;
use serde::Deserialize;

use crate::routes::balance::OutlierSettings;

/// One edge agent's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This site's name; the certificate must carry `spiffe://<trust_domain>/site/<site>`.
    pub site: String,
    /// The federation's trust domain.
    pub trust_domain: String,
    /// Certificate files (the site's identity).
    pub tls: TlsFiles,
    /// mTLS listener for peer sites' edge agents. Absent on an edge node (no inbound port).
    #[serde(default)]
    pub ingress: Option<SocketAddr>,
    /// Plain HTTP listener for local callers (HTTP/1.1 and h2c, routed by
    /// `x-multimesh-destination`, then `Host` / `:authority`).
    #[serde(default)]
    pub egress_http: Option<SocketAddr>,
    /// Raw TCP listeners for local callers, one per remote service port.
    #[serde(default)]
    pub egress_tcp: Vec<TcpEgress>,
    /// Name resolution for callers that know only `NAME.NAMESPACE.svc.clusterset.local`.
    #[serde(default)]
    pub clusterset: Option<Clusterset>,
    /// HTTP listener for `/metrics`, `/healthz` and `/readyz`.
    #[serde(default)]
    pub admin: Option<SocketAddr>,
    /// Where this site's own services listen.
    #[serde(default)]
    pub local: Vec<LocalService>,
    /// Where routes come from.
    pub routes: RouteSource,
    /// Edge-node mode: dial out to this parent site only, and be reached back through that link.
    #[serde(default)]
    pub parent: Option<Parent>,
    /// The edge nodes this site parents: only these sites may link in as edge nodes (and have
    /// their calls relayed). Any other site's edge-node link is refused.
    #[serde(default)]
    pub children: Vec<String>,
    /// Outlier detection.
    #[serde(default)]
    pub outlier: OutlierSettings,
    /// Timeouts, retries and limits.
    #[serde(default)]
    pub limits: Limits,
    /// Where the agent writes the addresses it bound (JSON), once it is serving.
    #[serde(default)]
    pub ready_file: Option<PathBuf>,
    /// Data-plane threads (default: one per CPU). Each serves the connections given to it and
    /// keeps its own link to each peer site, so a peer sees this many links from this agent.
    #[serde(default)]
    pub threads: Option<usize>,
    /// How often the certificate and key files are read again (ms); when they changed and pass
    /// the checks a peer would apply, new handshakes present the new certificate (rotation
    /// without a restart). 0: never.
    #[serde(default = "default_reload_ms")]
    pub certificate_reload_ms: u64,
    /// How often this file is read again (ms); a change to `children` takes effect while the
    /// agent runs (an edge node joins or leaves without a restart of its parent), a change to
    /// any other field at the next start. A file that does not load changes nothing. 0: never.
    #[serde(default = "default_reload_ms")]
    pub config_reload_ms: u64,
}

fn default_reload_ms() -> u64 {
    5_000
}

/// A raw TCP egress listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpEgress {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Service name.
    pub service: String,
    /// Namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The service port to reach.
    pub port: u16,
}

/// The clusterset names (`outbound::clusterset`): a DNS responder for `svc.clusterset.local`, and the
/// address its answers give, where the agent listens on every port of every service it routes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clusterset {
    /// UDP address of the DNS responder (`127.0.0.1:53` for a host's own resolver).
    pub dns: SocketAddr,
    /// The address names resolve to (e.g. `127.0.0.2`, a loopback address of its own so that
    /// every service port is free there).
    pub address: std::net::IpAddr,
}

/// A service running on this site.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalService {
    /// Service name.
    pub name: String,
    /// Namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Ports: the service port and the `host:port` its workload listens on.
    pub ports: Vec<LocalPort>,
}

/// One port of a local service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalPort {
    /// The service port (as callers name it).
    pub port: u16,
    /// Where the workload listens (`host:port`).
    pub upstream: String,
}

/// Where routes come from: exactly one of a file (re-read when it changes) or the site's
/// `federationd` (RouteDiscovery over mTLS).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSource {
    /// A route file (YAML, JSON or TOML by extension).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// `host:port` of this site's federationd peer listener.
    #[serde(default)]
    pub federation: Option<String>,
}

/// The parent site of an edge node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parent {
    /// The parent's site name.
    pub site: String,
    /// Its edge agent's ingress `host:port`.
    pub address: String,
}

/// Timeouts, retries and limits.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connecting to a peer edge or a local workload (ms).
    pub connect_timeout_ms: u64,
    /// Waiting for a response's headers (ms).
    pub request_timeout_ms: u64,
    /// Extra attempts on another site for idempotent requests without a body.
    pub retries: u32,
    /// Connections each listener serves at once; further callers wait in the kernel's backlog.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams per connection (calls counted until they end).
    pub max_streams: u32,
    /// Connections the ingress serves at once for one calling site (its links, one per
    /// data-plane thread, and an edge node's).
    pub max_connections_per_site: usize,
    /// A local caller's connection (HTTP/1.1 keep-alive, h2c) with no call in flight and no
    /// bytes either way for this long is closed (ms).
    pub idle_timeout_ms: u64,
    /// A local caller has this long to send a whole HTTP/1.1 request head (ms).
    pub header_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 2_000,
            request_timeout_ms: 15_000,
            retries: 2,
            max_connections: 4_096,
            max_streams: 1_024,
            max_connections_per_site: 512,
            idle_timeout_ms: 60_000,
            header_timeout_ms: 10_000,
        }
    }
}

fn default_namespace() -> String {
    "default".to_string()
}

impl AgentConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(Self::load_document(path)?.0)
    }

    /// [`AgentConfig::load`], with the file's document as it was written (fields left to their
    /// defaults are absent): a reload compares documents to name the fields that changed.
    pub fn load_document(path: &Path) -> Result<(Self, serde_json::Value), ConfigError> {
        Self::parse(path, &multimesh_core::config::read_file(path)?)
    }

    /// Parses and validates `text`, read from `path`: the config and the document.
    pub fn parse(path: &Path, text: &str) -> Result<(Self, serde_json::Value), ConfigError> {
        let p = path.display().to_string();
        let document = multimesh_core::config::parse_text(path, text)?;
        let mut cfg: AgentConfig = multimesh_core::config::parse_text(path, text)?;
        cfg.validate().map_err(|source| ConfigError::Invalid {
            path: p.clone(),
            source,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let abs = |f: &mut PathBuf| {
            if f.is_relative() {
                *f = dir.join(&*f);
            }
        };
        cfg.tls.resolve_against(dir);
        if let Some(f) = cfg.routes.file.as_mut() {
            abs(f);
        }
        if let Some(f) = cfg.ready_file.as_mut() {
            abs(f);
        }
        Ok((cfg, document))
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), InvalidField> {
        names::dns_label("site", &self.site)?;
        names::trust_domain("trust_domain", &self.trust_domain)?;
        multimesh_core::rotate::check_period("certificate_reload_ms", self.certificate_reload_ms)?;
        multimesh_core::rotate::check_period("config_reload_ms", self.config_reload_ms)?;
        match (&self.routes.file, &self.routes.federation) {
            (Some(_), None) => {}
            (None, Some(a)) => names::host_port("routes.federation", a)?,
            _ => {
                return Err(InvalidField::new(
                    "routes",
                    "",
                    "must set exactly one of `file` and `federation`",
                ));
            }
        }
        for (i, l) in self.local.iter().enumerate() {
            let at = |e: InvalidField| e.within(&format!("local[{i}]"));
            names::dns_label("name", &l.name).map_err(at)?;
            names::dns_label("namespace", &l.namespace).map_err(at)?;
            if l.ports.is_empty() {
                return Err(at(InvalidField::new("ports", "[]", "must list a port")));
            }
            for (j, p) in l.ports.iter().enumerate() {
                names::host_port(&format!("ports[{j}].upstream"), &p.upstream).map_err(at)?;
            }
        }
        for (i, t) in self.egress_tcp.iter().enumerate() {
            let at = |e: InvalidField| e.within(&format!("egress_tcp[{i}]"));
            names::dns_label("service", &t.service).map_err(at)?;
            names::dns_label("namespace", &t.namespace).map_err(at)?;
        }
        if let Some(c) = &self.clusterset
            && c.address.is_unspecified()
        {
            return Err(InvalidField::new(
                "clusterset.address",
                c.address,
                "must be one address callers can reach (not 0.0.0.0 or ::)",
            ));
        }
        for (i, c) in self.children.iter().enumerate() {
            names::dns_label(&format!("children[{i}]"), c)?;
            if *c == self.site {
                return Err(InvalidField::new(
                    &format!("children[{i}]"),
                    c,
                    "is this site itself",
                ));
            }
        }
        if let Some(p) = &self.parent {
            names::dns_label("parent.site", &p.site)?;
            names::host_port("parent.address", &p.address)?;
            if self.ingress.is_some() {
                return Err(InvalidField::new(
                    "ingress",
                    "",
                    "must be absent on an edge node (`parent` is set): it is reached through its \
                     outbound link",
                ));
            }
        }
        if let Some(n) = self.threads
            && !(1..=256).contains(&n)
        {
            return Err(InvalidField::new("threads", n, "must be between 1 and 256"));
        }
        if self.limits.idle_timeout_ms == 0 || self.limits.header_timeout_ms == 0 {
            return Err(InvalidField::new(
                "limits",
                "0",
                "idle_timeout_ms and header_timeout_ms must be at least 1",
            ));
        }
        if self.limits.max_connections == 0
            || self.limits.max_streams == 0
            || self.limits.max_connections_per_site == 0
        {
            return Err(InvalidField::new(
                "limits",
                "0",
                "max_connections, max_streams and max_connections_per_site must be at least 1",
            ));
        }
        Ok(())
    }

    /// How many data-plane threads to run: `threads`, else one per CPU.
    pub fn data_plane_threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(extra: &str) -> AgentConfig {
        toml::from_str(&format!(
            "site = \"a\"\ntrust_domain = \"t.example\"\n{extra}\n\
             [tls]\nca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a-key.pem\"\n\
             [routes]\nfile = \"routes.yaml\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn data_plane_threads_default_to_the_cpus_and_a_bad_count_is_named() {
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(parse("").data_plane_threads(), cpus);
        let one = parse("threads = 1");
        assert!(one.validate().is_ok());
        assert_eq!(one.data_plane_threads(), 1);
        for bad in ["threads = 0", "threads = 257"] {
            let e = parse(bad).validate().unwrap_err();
            assert_eq!(e.field, "threads", "{bad}: {e}");
            assert!(e.reason.contains("between 1 and 256"), "{bad}: {e}");
        }
    }

    #[test]
    fn reloads_default_to_five_seconds_and_a_busy_period_is_named() {
        for field in ["certificate_reload_ms", "config_reload_ms"] {
            let c = parse("");
            assert_eq!(
                (c.certificate_reload_ms, c.config_reload_ms),
                (5_000, 5_000)
            );
            assert!(parse(&format!("{field} = 0")).validate().is_ok());
            assert!(parse(&format!("{field} = 100")).validate().is_ok());
            let e = parse(&format!("{field} = 10")).validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.reason.contains("at least 100"), "{e}");
        }
    }
}
