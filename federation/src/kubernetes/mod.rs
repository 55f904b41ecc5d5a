//! The `kubernetes` site backend: a Kubernetes cluster is a site.
//!
//! - **Export**: an MCS `ServiceExport` marks the Service of the same name exported. Ports and
//!   protocols come from the Service, readiness from its EndpointSlices; the outcome is written
//!   back as `Valid`/`Ready`/`Conflict` conditions.
//! - **Import**: every remote service this site may see becomes a `ServiceImport`, plus the
//!   site mesh's native resources rendered by smi-adapters (pointing at the local edge agent);
//!   the cluster's SMI and Gateway API traffic specs are translated the same way. Everything
//!   is written by server-side apply under one field manager and labelled as multimesh's;
//!   what is no longer wanted is deleted; objects without the label are never touched.
//!
//! [`desired`] and [`plan`] are pure; [`controller`] is the I/O around them.

#[cfg(feature = "kubernetes")]
pub mod controller;
#[cfg(feature = "kubernetes")]
pub mod desired;
#[cfg(feature = "kubernetes")]
pub mod plan;
#[cfg(feature = "kubernetes")]
pub mod types;
#[cfg(feature = "kubernetes")]
pub mod view;

use std::path::PathBuf;

use serde::Deserialize;
use smi_adapters::render::Mesh;

use crate::error::InvalidField;

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "multimesh";
/// The label marking objects multimesh owns.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "multimesh";
/// The label naming the site that wrote an object.
pub const SITE_LABEL: &str = "multimesh.io/site";
/// ServiceExport annotation: the sites that may see the service (comma-separated; default all).
pub const CONSUMERS_ANNOTATION: &str = "multimesh.io/consumers";
/// ServiceExport annotation: other sites this site agrees to serve the name with
/// (comma-separated; default none, see `ownership`).
pub const SHARE_WITH_ANNOTATION: &str = "multimesh.io/share-with";
/// ServiceExport annotation: how long (s) other sites keep the entry while this site is
/// unreachable.
pub const STALE_TTL_ANNOTATION: &str = "multimesh.io/stale-ttl-seconds";
/// ServiceExport annotation: whether other sites keep routing to it meanwhile (`true`/`false`).
pub const STALE_SERVE_ANNOTATION: &str = "multimesh.io/stale-serve";

/// The `[kubernetes]` table of a federationd config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubeSettings {
    /// A kubeconfig file; without it, the in-cluster service account (or `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// The site's mesh: `istio`, `linkerd`, `consul`, `kuma`, `gateway-api` or `none`.
    pub mesh: String,
    /// `namespace/name` of the edge agent's Service: imported services point at it.
    pub edge_service: String,
    /// Where the mesh sends imported services, when not to the edge agent's Service by its
    /// cluster DNS name: an IP address or a host name (an edge agent outside the cluster's
    /// service network, on the nodes' network or a VM).
    pub edge_address: Option<String>,
    /// The edge agent's HTTP egress port.
    pub edge_http_port: u16,
    /// The mesh's SPIFFE trust domain (principals of service accounts in access policies).
    pub mesh_trust_domain: String,
    /// Full reconciliation period (s), on top of watch events.
    pub resync_seconds: u64,
    /// Namespaces remote services may be imported into: names, or prefixes ending in `*`.
    /// Wildcards never match the protected namespaces ([`PROTECTED_NAMESPACES`]); name one
    /// exactly to allow it. Default `["*"]`.
    pub import_namespaces: Vec<String>,
}

/// The mesh a site runs, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SiteMesh {
    /// A mesh smi-adapters renders for.
    Mesh(Mesh),
    /// No mesh: only ServiceImports are written.
    None,
}

impl SiteMesh {
    /// Parses `istio|linkerd|consul|kuma|gateway-api|none`.
    pub fn parse(s: &str) -> Option<Self> {
        if s == "none" {
            Some(SiteMesh::None)
        } else {
            Mesh::parse(s).map(SiteMesh::Mesh)
        }
    }
}

/// Namespaces that a wildcard in `import_namespaces` never matches: the cluster's own and the
/// meshes' control planes (a remote site must not place objects there by exporting a name).
pub const PROTECTED_NAMESPACES: &[&str] = &[
    "kube-*",
    "istio-system",
    "linkerd",
    "linkerd-*",
    "consul",
    "kuma-system",
    "multimesh",
    "cert-manager",
];

fn matches(pattern: &str, ns: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => ns.starts_with(prefix),
        None => pattern == ns,
    }
}

/// Whether remote services may be imported into namespace `ns` (see
/// [`KubeSettings::import_namespaces`]).
pub fn namespace_allowed(ns: &str, patterns: &[String]) -> bool {
    if patterns.iter().any(|p| p == ns) {
        return true;
    }
    let protected = PROTECTED_NAMESPACES.iter().any(|p| matches(p, ns));
    !protected && patterns.iter().any(|p| matches(p, ns))
}

impl Default for KubeSettings {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            mesh: "none".into(),
            edge_service: "multimesh/multimesh-edge".into(),
            edge_address: None,
            edge_http_port: 15080,
            mesh_trust_domain: "cluster.local".into(),
            resync_seconds: 30,
            import_namespaces: vec!["*".into()],
        }
    }
}

impl KubeSettings {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if SiteMesh::parse(&self.mesh).is_none() {
            return Err(InvalidField::new(
                "kubernetes.mesh",
                &self.mesh,
                "must be istio, linkerd, consul, kuma, gateway-api or none",
            ));
        }
        match self.edge_service.split_once('/') {
            Some((ns, name)) => {
                crate::names::dns_label("kubernetes.edge_service", ns)?;
                crate::names::dns_label("kubernetes.edge_service", name)?;
            }
            None => {
                return Err(InvalidField::new(
                    "kubernetes.edge_service",
                    &self.edge_service,
                    "must be NAMESPACE/NAME",
                ));
            }
        }
        if let Some(a) = &self.edge_address
            && a.parse::<std::net::IpAddr>().is_err()
            && crate::names::trust_domain("kubernetes.edge_address", a).is_err()
        {
            return Err(InvalidField::new(
                "kubernetes.edge_address",
                a,
                "must be an IP address or a DNS name (a-z, 0-9, '-' and dots)",
            ));
        }
        if self.edge_http_port == 0 {
            return Err(InvalidField::new(
                "kubernetes.edge_http_port",
                0,
                "must be in 1..=65535",
            ));
        }
        if self.resync_seconds == 0 {
            return Err(InvalidField::new(
                "kubernetes.resync_seconds",
                0,
                "must be at least 1",
            ));
        }
        for (i, p) in self.import_namespaces.iter().enumerate() {
            let name = p.strip_suffix('*').unwrap_or(p);
            let ok = (name.is_empty() && p == "*")
                || crate::names::dns_label("x", name.trim_end_matches('-')).is_ok();
            if !ok {
                return Err(InvalidField::new(
                    &format!("kubernetes.import_namespaces[{i}]"),
                    p,
                    "must be a namespace name, or a prefix ending in '*'",
                ));
            }
        }
        Ok(())
    }

    /// The edge agent Service's namespace and name.
    pub fn edge(&self) -> (&str, &str) {
        self.edge_service
            .split_once('/')
            .unwrap_or(("multimesh", "multimesh-edge"))
    }
}

#[cfg(test)]
mod namespace_tests {
    use super::*;

    fn allowed(ns: &str, patterns: &[&str]) -> bool {
        namespace_allowed(
            ns,
            &patterns.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn wildcards_never_reach_protected_namespaces_but_exact_names_do() {
        assert!(allowed("shop", &["*"]));
        for ns in [
            "kube-system",
            "kube-public",
            "istio-system",
            "linkerd",
            "linkerd-viz",
            "multimesh",
        ] {
            assert!(!allowed(ns, &["*"]), "{ns}");
            assert!(!allowed(ns, &["kube*", "linkerd*", "multi*"]), "{ns}");
        }
        assert!(allowed("istio-system", &["istio-system"]));
        assert!(allowed("team-a", &["team-*"]));
        assert!(!allowed("shop", &["team-*"]));
        assert!(!allowed("shop", &[]));
    }

    #[test]
    fn a_bad_pattern_is_refused_with_the_field_named() {
        let s = KubeSettings {
            import_namespaces: vec!["shop".into(), "Bad_NS".into()],
            ..Default::default()
        };
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("kubernetes.import_namespaces[1]"), "{e}");
    }

    #[test]
    fn the_edge_address_is_an_ip_or_a_dns_name() {
        for ok in ["127.0.0.1", "fd00::7", "edge.example.internal"] {
            let s = KubeSettings {
                edge_address: Some(ok.into()),
                ..Default::default()
            };
            assert!(s.validate().is_ok(), "{ok}");
        }
        for bad in ["", "edge:15080", "Edge.example", "http://edge"] {
            let s = KubeSettings {
                edge_address: Some(bad.into()),
                ..Default::default()
            };
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains("kubernetes.edge_address"), "{bad}: {e}");
        }
    }
}
