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

pub mod controller;
pub mod desired;
pub mod plan;
pub mod types;

use std::path::PathBuf;

use serde::Deserialize;

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
    /// The edge agent's HTTP egress port.
    pub edge_http_port: u16,
    /// The mesh's SPIFFE trust domain (principals of service accounts in access policies).
    pub mesh_trust_domain: String,
    /// Full reconciliation period (s), on top of watch events.
    pub resync_seconds: u64,
}

impl Default for KubeSettings {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            mesh: "none".into(),
            edge_service: "multimesh/multimesh-edge".into(),
            edge_http_port: 15080,
            mesh_trust_domain: "cluster.local".into(),
            resync_seconds: 30,
        }
    }
}

impl KubeSettings {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), InvalidField> {
        if desired::SiteMesh::parse(&self.mesh).is_none() {
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
        Ok(())
    }

    /// The edge agent Service's namespace and name.
    pub fn edge(&self) -> (&str, &str) {
        self.edge_service
            .split_once('/')
            .unwrap_or(("multimesh", "multimesh-edge"))
    }
}
