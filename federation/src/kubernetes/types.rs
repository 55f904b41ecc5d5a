//! The Multi-Cluster Services API types multimesh reads and writes (`multicluster.x-k8s.io`),
//! as Rust types. `federationctl crds` prints the CRDs generated from them.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Marks the Service of the same namespace and name as exported to the federation
/// (`multicluster.x-k8s.io/v1alpha1` ServiceExport). multimesh reads its consumer scope and stale
/// policy from annotations ([`super::CONSUMERS_ANNOTATION`], [`super::STALE_TTL_ANNOTATION`],
/// [`super::STALE_SERVE_ANNOTATION`]) and reports the outcome in `status.conditions`.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceExport",
    namespaced,
    status = "ServiceExportStatus",
    shortname = "svcex"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceExportSpec {
    /// Labels to export with the service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exported_labels: BTreeMap<String, String>,
    /// Annotations to export with the service.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exported_annotations: BTreeMap<String, String>,
}

/// What the exporting controller says about a ServiceExport.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct ServiceExportStatus {
    /// `Valid`, `Ready` and `Conflict` conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A standard Kubernetes condition (`metav1.Condition`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Valid`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// A human-readable message.
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The object's generation the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A service of other sites made visible in this cluster (`multicluster.x-k8s.io/v1alpha1`
/// ServiceImport). multimesh writes one per remote service this site may see; callers reach it
/// as `NAME.NAMESPACE.svc.clusterset.local` through the local edge agent.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceImport",
    namespaced,
    status = "ServiceImportStatus",
    shortname = "svcim"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportSpec {
    /// `ClusterSetIP` or `Headless`.
    #[serde(rename = "type")]
    pub type_: String,
    /// The service's ports.
    pub ports: Vec<ImportPort>,
    /// Virtual IPs, when one is allocated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
}

/// A port of an imported service.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ImportPort {
    /// Port name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Transport protocol (`TCP`).
    pub protocol: String,
    /// Application protocol (`http`, `kubernetes.io/h2c`, `grpc`), when not raw TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// Port number.
    pub port: i32,
}

/// Which clusters (sites) serve an imported service.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct ServiceImportStatus {
    /// The exporting sites.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterStatus>,
}

/// One exporting site.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The site name.
    pub cluster: String,
}

/// The CRDs multimesh needs, generated from the types above, as YAML documents.
///
/// One adjustment to what the derive generates: a ServiceExport's `spec` is optional (MCS
/// exports are usually written with no spec at all).
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt;
    let mut out = String::new();
    let mut export = serde_json::to_value(ServiceExport::crd()).unwrap_or_default();
    for v in export["spec"]["versions"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        if let Some(req) = v["schema"]["openAPIV3Schema"]["required"].as_array_mut() {
            req.retain(|r| r != "spec");
        }
    }
    let import = serde_json::to_value(ServiceImport::crd()).unwrap_or_default();
    for crd in [export, import] {
        out.push_str("---\n");
        out.push_str(&serde_norway::to_string(&crd).unwrap_or_default());
    }
    out
}
