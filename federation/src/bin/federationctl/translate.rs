//! `federationctl translate` (offline: no cluster, no daemon) and `crds`.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use serde::Serialize;
use smi_adapters::diag::Severity;
use smi_adapters::render::{Mesh, Options};

use crate::output::{Format, Out};
use crate::{Failure, read_input, usage};

/// `translate` arguments.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  federationctl translate --mesh istio -f split.yaml -f services.yaml\n  federationctl catalog -o json > catalog.json\n  federationctl translate --mesh linkerd -f split.yaml --catalog catalog.json --edge-ip 10.0.0.9"
)]
pub struct Translate {
    /// Target mesh: istio, linkerd, consul, gateway-api or kuma.
    #[arg(long)]
    mesh: String,
    /// Input YAML file (TrafficSplit, HTTPRouteGroup, TCPRoute, TrafficTarget, HTTPRoute,
    /// and the v1 Services whose ports and selectors matter); repeatable; `-` reads
    /// standard input.
    #[arg(short = 'f', long = "file", required = true)]
    files: Vec<PathBuf>,
    /// The federation catalog, as printed by `federationctl catalog -o json`: backends it
    /// lists from other sites are sent to the local edge agent.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// In-cluster host name of the local edge agent (for imported services).
    #[arg(long, default_value = "multimesh-edge.multimesh.svc.cluster.local")]
    edge_host: String,
    /// The edge agent's HTTP egress port.
    #[arg(long, default_value_t = 15080)]
    edge_http_port: u16,
    /// The edge agent's IP address (Linkerd mirror Endpoints); repeatable.
    #[arg(long = "edge-ip")]
    edge_ips: Vec<std::net::IpAddr>,
    /// The mesh's trust domain, for the principals of service accounts in access policies.
    #[arg(long, default_value = "cluster.local")]
    mesh_trust_domain: String,
}

#[derive(Serialize)]
struct TranslationView<'a> {
    resources: &'a [serde_json::Value],
    diagnostics: Vec<DiagnosticView<'a>>,
}

#[derive(Serialize)]
struct DiagnosticView<'a> {
    severity: &'static str,
    object: &'a str,
    field: &'a str,
    message: &'a str,
}

/// `federationctl translate`: YAML on stdout (JSON with `-o json`), diagnostics on stderr;
/// fails (exit 1) unless everything was rendered.
pub fn translate(out: Out, t: Translate) -> Result<(), Failure> {
    let Some(mesh) = Mesh::parse(&t.mesh) else {
        return Err(usage(format!(
            "--mesh {:?}: expected istio, linkerd, consul, gateway-api or kuma",
            t.mesh
        )));
    };
    let opts = Options {
        edge_host: t.edge_host,
        edge_http_port: t.edge_http_port,
        edge_ips: t.edge_ips.iter().map(|ip| ip.to_string()).collect(),
        trust_domain: t.mesh_trust_domain,
        import_all: false,
    };
    let inputs = t
        .files
        .iter()
        .map(|f| Ok((f.display().to_string(), read_input(f)?)))
        .collect::<Result<Vec<_>, Failure>>()?;
    let catalog = t.catalog.as_deref().map(read_input).transpose()?;
    let r = smi_adapters::translate(&inputs, catalog.as_deref(), mesh, &opts);
    let view = TranslationView {
        resources: &r.resources,
        diagnostics: r
            .diagnostics
            .iter()
            .map(|d| DiagnosticView {
                severity: match d.severity {
                    Severity::Warning => "warning",
                    Severity::Error => "error",
                },
                object: &d.object,
                field: &d.field,
                message: &d.message,
            })
            .collect(),
    };
    if out.format == Format::Json {
        out.print(&view, |_| String::new())?;
    } else {
        // The resources are the output, as YAML a YAML 1.1 reader cannot misread (not the
        // generic YAML of `-o yaml` elsewhere); diagnostics go to stderr.
        std::io::stdout().write_all(r.to_yaml().as_bytes())?;
        for d in &r.diagnostics {
            eprintln!("{d}");
        }
    }
    if r.complete() {
        return Ok(());
    }
    let n = r
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    Err(Failure(
        format!("{n} error(s): not everything was rendered"),
        1,
    ))
}

/// `federationctl crds`.
#[cfg(feature = "kubernetes")]
pub fn crds() -> Result<(), Failure> {
    std::io::stdout().write_all(federation::kubernetes::types::crds_yaml().as_bytes())?;
    Ok(())
}

/// `federationctl crds`, in a build without the Kubernetes backend.
#[cfg(not(feature = "kubernetes"))]
pub fn crds() -> Result<(), Failure> {
    Err(crate::without_kubernetes("crds"))
}
