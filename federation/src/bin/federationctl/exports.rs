//! `federationctl export` and `unexport`: change what this site exports, through its daemon.

use std::collections::BTreeMap;
use std::path::Path;

use clap::Args;
use federation::model::{Port, StalePolicy};
use multimesh_proto::admin::v1 as api;
use multimesh_proto::catalog::v1 as wire;
use serde::Serialize;

use crate::output::Out;
use crate::{Failure, client, status, usage};

/// `export` arguments.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  federationctl export payment -n shop --port http:8080/http\n  federationctl export ledger -n shop --port 5432/tcp --to b --to c --stale-ttl 600"
)]
pub struct Export {
    /// Service name.
    service: String,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Port as [NAME:]PORT[/PROTOCOL] (protocol: tcp, http, http2, grpc); repeatable.
    /// Defaults to the service's ports in the site config.
    #[arg(short, long = "port")]
    ports: Vec<String>,
    /// Only these sites may see the service; repeatable. Default: all sites.
    #[arg(long = "to")]
    to: Vec<String>,
    /// Another site that may export the same name, serving it with this one; repeatable.
    /// Both sites must list each other, or the name is contested and served by neither
    /// elsewhere. Default: as in the site config (none).
    #[arg(long = "share-with")]
    share_with: Vec<String>,
    /// Label KEY=VALUE; repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Seconds to keep the service while its origin is unreachable.
    #[arg(long)]
    stale_ttl: Option<u64>,
    /// Do not route to the service while its origin is unreachable.
    #[arg(long)]
    no_serve_stale: bool,
}

/// `unexport` arguments.
#[derive(Args)]
pub struct Unexport {
    /// Service name.
    service: String,
    /// Namespace.
    #[arg(short, long, default_value = "default")]
    namespace: String,
}

/// An exported service, as printed.
#[derive(Serialize)]
pub struct ServiceView {
    pub origin: String,
    pub namespace: String,
    pub name: String,
    pub epoch: u64,
    pub version: u64,
    pub ports: Vec<PortView>,
    pub ingress: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub identity: String,
    pub scope: String,
    /// The stale policy (left out when the daemon sent none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<StaleView>,
}

/// A port of an exported service.
#[derive(Serialize)]
pub struct PortView {
    pub name: String,
    pub port: u32,
    pub protocol: &'static str,
}

/// A stale policy.
#[derive(Serialize)]
pub struct StaleView {
    pub ttl_seconds: u64,
    pub serve: bool,
}

impl ServiceView {
    /// The view of a service on the wire.
    pub fn of(s: &wire::ExportedService) -> Self {
        Self {
            origin: s.origin.clone(),
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            epoch: s.origin_epoch,
            version: s.version,
            ports: s
                .ports
                .iter()
                .map(|p| PortView {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: protocol_name(p.protocol),
                })
                .collect(),
            ingress: s.ingress.clone(),
            labels: s.labels.clone().into_iter().collect(),
            identity: s.identity.clone(),
            scope: scope_text(s.scope.as_ref()),
            stale: s.stale.map(|p| StaleView {
                ttl_seconds: p.ttl_seconds,
                serve: p.serve,
            }),
        }
    }

    /// `PORT/PROTOCOL,...`.
    pub fn ports_text(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("{}/{}", p.port, p.protocol))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// `all`, or the sites that may see a service.
pub fn scope_text(s: Option<&wire::ConsumerScope>) -> String {
    match s {
        Some(s) if !s.all => s.sites.join(","),
        _ => "all".to_string(),
    }
}

fn protocol_name(p: i32) -> &'static str {
    federation::model::Protocol::from_wire("protocol", p).map_or("unspecified", |p| p.as_str())
}

/// `federationctl export`.
pub async fn export(out: Out, socket: &Path, e: Export) -> Result<(), Failure> {
    let ports = e
        .ports
        .iter()
        .map(|p| Port::parse_cli("--port", p).map_err(|e| usage(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let mut labels = BTreeMap::new();
    for l in &e.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| usage(format!("invalid --label {l:?}: must be KEY=VALUE")))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let stale = (e.stale_ttl.is_some() || e.no_serve_stale).then(|| wire::StalePolicy {
        ttl_seconds: e.stale_ttl.unwrap_or(StalePolicy::default().ttl_seconds),
        serve: !e.no_serve_stale,
    });
    let req = api::ExportRequest {
        name: e.service,
        namespace: e.namespace,
        ports: ports.iter().map(Port::to_wire).collect(),
        to: e.to,
        labels: labels.into_iter().collect(),
        stale,
        share_with: e.share_with,
    };
    let mut c = client(socket).await?;
    let r = c.export(req).await.map_err(status)?.into_inner();
    let s = ServiceView::of(&r.service.unwrap_or_default());
    out.print(&s, |_| {
        format!(
            "exported {}/{} at version {} (to {})\n",
            s.namespace, s.name, s.version, s.scope
        )
    })
}

#[derive(Serialize)]
struct Withdrawn {
    namespace: String,
    name: String,
    version: u64,
}

/// `federationctl unexport`.
pub async fn unexport(out: Out, socket: &Path, u: Unexport) -> Result<(), Failure> {
    let mut c = client(socket).await?;
    let r = c
        .unexport(api::UnexportRequest {
            name: u.service.clone(),
            namespace: u.namespace.clone(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let w = Withdrawn {
        namespace: u.namespace,
        name: u.service,
        version: r.version,
    };
    out.print(&w, |_| {
        format!(
            "withdrew {}/{} at version {}\n",
            w.namespace, w.name, w.version
        )
    })
}
