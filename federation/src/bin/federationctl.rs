//! `federationctl`: the multimesh command line. Certificates, exports, and what a site sees.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use federation::identity::{self, Pair, Role, SiteId, Validity};
use federation::model::{Port, StalePolicy};
use multimesh_proto::admin::v1 as api;
use multimesh_proto::catalog::v1 as wire;
use serde_json::{Value, json};

/// Command line of multimesh: create site identities, export and unexport services, and show a
/// site's catalog, peers and status through its daemon's admin socket.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Admin socket of the local federationd.
    #[arg(
        long,
        global = true,
        env = "MULTIMESH_ADMIN_SOCKET",
        default_value = "/run/multimesh/admin.sock"
    )]
    admin_socket: PathBuf,
    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a federation CA and issue site certificates.
    #[command(subcommand)]
    Certs(Certs),
    /// Export a service of this site to peer sites.
    Export {
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
    },
    /// Withdraw an export of this site from every peer.
    Unexport {
        /// Service name.
        service: String,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Apply traffic splits to this site's calls: SMI TrafficSplit (v1alpha1-4) or Gateway API
    /// HTTPRoute documents splitting a whole service between backends by weight. The site's
    /// edge agent sends calls to the root service to the backends, each wherever it runs in the
    /// federation. A split replaces the previous split of the same root; nothing is applied
    /// when any document is refused.
    Apply {
        /// Input YAML file; repeatable; `-` reads standard input.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        /// Validate and show the result, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show this site's traffic splits: configured shares and the sites serving each backend.
    Splits,
    /// Remove the traffic split of a root service.
    DeleteSplit {
        /// Root service name.
        service: String,
        /// Namespace.
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Show what this site sees, per origin, with versions and stale marks.
    Catalog,
    /// Show peer links: state, last heartbeat and ACK, lag, message counters.
    Peers,
    /// Show a summary of the daemon.
    Status,
    /// Translate SMI TrafficSplit/HTTPRouteGroup/TCPRoute/TrafficTarget and Gateway API
    /// HTTPRoute specs into a mesh's native resources, offline (no cluster, no daemon). Prints multi-document YAML on stdout
    /// (or JSON with -o json) and diagnostics on stderr; exits 0 only when everything was
    /// rendered, 1 otherwise.
    Translate {
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
    },
    /// Print the CustomResourceDefinitions multimesh needs in a cluster (MCS ServiceExport and
    /// ServiceImport, generated from its Rust types) as YAML, for `kubectl apply -f -`.
    Crds,
    /// Show what the kubernetes backend of a site would create, change or delete in its cluster
    /// (imports and rendered mesh resources), without applying anything. Reads the site's
    /// federationd config for the cluster and mesh, and the catalog from its running daemon
    /// (or from --catalog).
    Plan {
        /// The site's federationd config (backend = "kubernetes").
        #[arg(long)]
        config: PathBuf,
        /// The catalog as printed by `federationctl catalog -o json`, instead of asking the
        /// daemon.
        #[arg(long)]
        catalog: Option<PathBuf>,
    },
    /// Print the sequence number and entry count now and after every catalog change, one line
    /// each (JSON lines with -o json), until interrupted or until --until-entries is reached.
    Watch {
        /// Exit (status 0) once this site sees at least this many entries.
        #[arg(long)]
        until_entries: Option<u32>,
    },
}

#[derive(Subcommand)]
enum Certs {
    /// Create a federation CA (writes ca.pem and ca-key.pem, the key with mode 0600).
    Init {
        /// SPIFFE trust domain of the federation, e.g. multimesh.example.
        #[arg(long)]
        trust_domain: String,
        /// Output folder.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: i64,
        /// Overwrite an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue a site's two certificates: SITE-federation.pem (federationd: catalog sync and the
    /// site's record signatures, spiffe://<trust-domain>/site/<SITE>/federation) and
    /// SITE-edge.pem (the edge agent: calls, spiffe://.../site/<SITE>/edge), each with its
    /// -key.pem (mode 0600). Example: `federationctl certs issue --site a --ca-dir pki --out pki`
    Issue {
        /// Site name.
        #[arg(long)]
        site: String,
        /// Issue only this identity: `federation` or `edge` (default: both).
        #[arg(long, value_parser = parse_role)]
        role: Option<Role>,
        /// Folder holding ca.pem and ca-key.pem.
        #[arg(long, default_value = ".")]
        ca_dir: PathBuf,
        /// Output folder.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 90)]
        days: i64,
    },
}

/// A failure to report: a message and the exit code.
struct Failure(String, u8);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string(), 1)
    }
}

fn usage(msg: String) -> Failure {
    Failure(msg, 2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg, code)) => {
            eprintln!("error: {msg}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.cmd {
        Cmd::Certs(c) => certs(c),
        Cmd::Export {
            service,
            namespace,
            ports,
            to,
            share_with,
            labels,
            stale_ttl,
            no_serve_stale,
        } => {
            let ports = ports
                .iter()
                .map(|p| Port::parse_cli("--port", p).map_err(|e| usage(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            let mut label_map = BTreeMap::new();
            for l in &labels {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| usage(format!("invalid --label {l:?}: must be KEY=VALUE")))?;
                label_map.insert(k.to_string(), v.to_string());
            }
            let stale = (stale_ttl.is_some() || no_serve_stale).then(|| wire::StalePolicy {
                ttl_seconds: stale_ttl.unwrap_or(StalePolicy::default().ttl_seconds),
                serve: !no_serve_stale,
            });
            let req = api::ExportRequest {
                name: service,
                namespace,
                ports: ports.iter().map(federation::model::Port::to_wire).collect(),
                to,
                labels: label_map.into_iter().collect(),
                stale,
                share_with,
            };
            let mut c = client(&cli.admin_socket).await?;
            let r = c.export(req).await.map_err(status)?.into_inner();
            let s = r.service.unwrap_or_default();
            print(cli.output, &service_json(&s), || {
                format!(
                    "exported {}/{} at version {} (to {})\n",
                    s.namespace,
                    s.name,
                    s.version,
                    scope_text(s.scope.as_ref())
                )
            })
        }
        Cmd::Unexport { service, namespace } => {
            let mut c = client(&cli.admin_socket).await?;
            let r = c
                .unexport(api::UnexportRequest {
                    name: service.clone(),
                    namespace: namespace.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print(
                cli.output,
                &json!({"namespace": namespace, "name": service, "version": r.version}),
                || format!("withdrew {namespace}/{service} at version {}\n", r.version),
            )
        }
        Cmd::Apply { files, dry_run } => {
            let files = files
                .iter()
                .map(|f| {
                    Ok(api::SourceFile {
                        name: f.display().to_string(),
                        text: read_input(f)?,
                    })
                })
                .collect::<Result<Vec<_>, Failure>>()?;
            let mut c = client(&cli.admin_socket).await?;
            let r = c
                .apply_splits(api::ApplySplitsRequest { files, dry_run })
                .await
                .map_err(status)?
                .into_inner();
            let verb = if dry_run {
                "valid (dry run)"
            } else {
                "applied"
            };
            print(cli.output, &splits_json(&r), || {
                format!(
                    "{}{} split(s) {verb}, {} changed\n",
                    splits_table(&r),
                    r.splits.len(),
                    r.changed
                )
            })
        }
        Cmd::Splits => {
            let mut c = client(&cli.admin_socket).await?;
            let r = c
                .splits(api::SplitsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            print(cli.output, &splits_json(&r), || splits_table(&r))
        }
        Cmd::DeleteSplit { service, namespace } => {
            let mut c = client(&cli.admin_socket).await?;
            let r = c
                .delete_split(api::DeleteSplitRequest {
                    service: service.clone(),
                    namespace: namespace.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print(cli.output, &splits_json(&r), || {
                format!("deleted the traffic split of {namespace}/{service}\n")
            })
        }
        Cmd::Catalog => {
            let mut c = client(&cli.admin_socket).await?;
            let r = federation::admin::catalog_all(&mut c)
                .await
                .map_err(status)?;
            print(cli.output, &catalog_json(&r), || catalog_table(&r))
        }
        Cmd::Peers => {
            let mut c = client(&cli.admin_socket).await?;
            let r = c
                .peers(api::PeersRequest {})
                .await
                .map_err(status)?
                .into_inner();
            print(cli.output, &peers_json(&r), || peers_table(&r))
        }
        Cmd::Translate {
            mesh,
            files,
            catalog,
            edge_host,
            edge_http_port,
            edge_ips,
            mesh_trust_domain,
        } => translate(
            cli.output,
            &mesh,
            &files,
            catalog.as_deref(),
            smi_adapters::render::Options {
                edge_host,
                edge_http_port,
                edge_ips: edge_ips.iter().map(|ip| ip.to_string()).collect(),
                trust_domain: mesh_trust_domain,
                import_all: false,
            },
        ),
        Cmd::Watch { until_entries } => watch(&cli, until_entries).await,
        Cmd::Crds => {
            #[allow(clippy::print_stdout)]
            {
                print!("{}", federation::kubernetes::types::crds_yaml());
            }
            Ok(())
        }
        Cmd::Plan {
            ref config,
            ref catalog,
        } => plan(&cli, config, catalog.as_deref()).await,
        Cmd::Status => {
            let mut c = client(&cli.admin_socket).await?;
            let s = c
                .status(api::StatusRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let b = s.backend.clone().unwrap_or_default();
            let problems: Vec<Value> = b
                .problems
                .iter()
                .map(|p| {
                    json!({"object": p.object, "reason": p.reason, "refused": p.refused,
                    "attempts": p.attempts, "since_unix_ms": p.since_unix_ms})
                })
                .collect();
            let v = json!({
                "site": s.site, "trust_domain": s.trust_domain, "listen": s.listen, "epoch": s.epoch,
                "version": s.version, "seq": s.seq, "exports": s.exports, "entries_visible": s.entries_visible,
                "peers": s.peers, "peers_healthy": s.peers_healthy, "uptime_s": s.uptime_s,
                "backend": {"kind": b.kind, "mesh": b.mesh, "last_pass_unix_ms": b.last_pass_unix_ms,
                    "error": b.error, "problems": problems, "next_retry_ms": b.next_retry_ms},
            });
            print(cli.output, &v, || {
                let mut backend = format!("backend {}", b.kind);
                if !b.mesh.is_empty() {
                    backend.push_str(&format!(" (mesh {})", b.mesh));
                }
                if !b.error.is_empty() {
                    backend.push_str(&format!(": last pass failed: {}", b.error));
                } else if b.problems.is_empty() {
                    backend.push_str(": every object applied");
                } else {
                    backend.push_str(&format!(
                        ": {} object(s) not applied, tried again in {} s",
                        b.problems.len(),
                        b.next_retry_ms.div_ceil(1000)
                    ));
                }
                for p in &b.problems {
                    backend.push_str(&format!(
                        "\n  {} {} ({} attempt(s)): {}",
                        p.object,
                        if p.refused { "REFUSED" } else { "FAILED" },
                        p.attempts,
                        p.reason
                    ));
                }
                format!(
                    "site {} ({}) listening on {}\nversion {} (epoch {}), stream seq {}\nexports {}, visible entries {}\npeers {}/{} healthy, up {} s\n{backend}\n",
                    s.site,
                    s.trust_domain,
                    s.listen,
                    s.version,
                    s.epoch,
                    s.seq,
                    s.exports,
                    s.entries_visible,
                    s.peers_healthy,
                    s.peers,
                    s.uptime_s
                )
            })
        }
    }
}

fn read_input(path: &Path) -> Result<String, Failure> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Failure(format!("standard input: {e}"), 2))?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| Failure(format!("{}: {e}", path.display()), 2))
}

fn translate(
    out: Output,
    mesh: &str,
    files: &[PathBuf],
    catalog: Option<&Path>,
    opts: smi_adapters::render::Options,
) -> Result<(), Failure> {
    use std::io::Write;
    let Some(m) = smi_adapters::render::Mesh::parse(mesh) else {
        return Err(usage(format!(
            "--mesh {mesh:?}: expected istio, linkerd, consul, gateway-api or kuma"
        )));
    };
    let inputs = files
        .iter()
        .map(|f| Ok((f.display().to_string(), read_input(f)?)))
        .collect::<Result<Vec<_>, Failure>>()?;
    let catalog = catalog.map(read_input).transpose()?;
    let t = smi_adapters::translate(&inputs, catalog.as_deref(), m, &opts);
    let text = match out {
        Output::Json => {
            let diags: Vec<Value> = t
                .diagnostics
                .iter()
                .map(|d| {
                    json!({
                        "severity": match d.severity {
                            smi_adapters::diag::Severity::Warning => "warning",
                            smi_adapters::diag::Severity::Error => "error",
                        },
                        "object": d.object, "field": d.field, "message": d.message,
                    })
                })
                .collect();
            format!(
                "{}\n",
                serde_json::to_string_pretty(
                    &json!({"resources": t.resources, "diagnostics": diags})
                )?
            )
        }
        Output::Table | Output::Yaml => t.to_yaml(),
    };
    std::io::stdout().write_all(text.as_bytes())?;
    if !matches!(out, Output::Json) {
        for d in &t.diagnostics {
            eprintln!("{d}");
        }
    }
    if t.complete() {
        Ok(())
    } else {
        let n = t
            .diagnostics
            .iter()
            .filter(|d| d.severity == smi_adapters::diag::Severity::Error)
            .count();
        Err(Failure(
            format!("{n} error(s): not everything was rendered"),
            1,
        ))
    }
}

async fn watch(cli: &Cli, until: Option<u32>) -> Result<(), Failure> {
    use std::io::Write;
    let mut c = client(&cli.admin_socket).await?;
    let mut events = c
        .watch(api::WatchRequest {})
        .await
        .map_err(status)?
        .into_inner();
    while let Some(e) = events.message().await.map_err(status)? {
        let line = match cli.output {
            Output::Table => format!("seq {} entries {}\n", e.seq, e.entries),
            Output::Json | Output::Yaml => {
                format!("{}\n", json!({"seq": e.seq, "entries": e.entries}))
            }
        };
        let mut out = std::io::stdout().lock();
        out.write_all(line.as_bytes())?;
        out.flush()?;
        if until.is_some_and(|n| e.entries >= n) {
            return Ok(());
        }
    }
    Err(Failure("the daemon closed the watch".into(), 1))
}

fn splits_json(r: &api::SplitsResponse) -> Value {
    json!({
        "changed": r.changed,
        "splits": r.splits.iter().map(|s| json!({
            "service": s.service, "namespace": s.namespace, "source": s.source,
            "backends": s.backends.iter().map(|b| json!({
                "service": b.service, "weight": b.weight, "percent": b.percent, "sites": b.sites,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn splits_table(r: &api::SplitsResponse) -> String {
    let mut o = format!(
        "{:<32} {:<28} {:>6} {:>7}  {}\n",
        "SPLIT", "BACKEND", "WEIGHT", "SHARE", "SITES"
    );
    for s in &r.splits {
        for b in &s.backends {
            let sites = if b.sites.is_empty() {
                "(not routable now)".to_string()
            } else {
                b.sites.join(",")
            };
            o.push_str(&format!(
                "{:<32} {:<28} {:>6} {:>6.1}%  {sites}\n",
                format!("{}/{}", s.namespace, s.service),
                b.service,
                b.weight,
                b.percent
            ));
        }
    }
    o
}

fn status(s: tonic::Status) -> Failure {
    let code = if s.code() == tonic::Code::InvalidArgument {
        2
    } else {
        1
    };
    Failure(s.message().to_string(), code)
}

async fn client(
    path: &Path,
) -> Result<api::admin_client::AdminClient<tonic::transport::Channel>, Failure> {
    federation::admin::connect(path)
        .await
        .map_err(|e| Failure(e, 1))
}

fn print(out: Output, v: &Value, table: impl FnOnce() -> String) -> Result<(), Failure> {
    let text = match out {
        Output::Table => table(),
        Output::Json => format!("{}\n", serde_json::to_string_pretty(v)?),
        Output::Yaml => serde_norway::to_string(v)?,
    };
    use std::io::Write;
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

fn certs(c: Certs) -> Result<(), Failure> {
    match c {
        Certs::Init {
            trust_domain,
            out,
            days,
            force,
        } => {
            let (cert, key) = (out.join("ca.pem"), out.join("ca-key.pem"));
            if !force && (cert.exists() || key.exists()) {
                return Err(usage(format!(
                    "{} already exists; pass --force to replace the CA",
                    cert.display()
                )));
            }
            if days < 1 {
                return Err(usage(format!("invalid --days {days}: must be at least 1")));
            }
            let ca = identity::init_ca(&trust_domain, days).map_err(|e| usage(e.to_string()))?;
            identity::write_file(&cert, &ca.cert_pem, false)?;
            identity::write_file(&key, &ca.key_pem, true)?;
            eprintln!(
                "created federation CA for trust domain {trust_domain}: {}",
                cert.display()
            );
            Ok(())
        }
        Certs::Issue {
            site,
            role,
            ca_dir,
            out,
            days,
        } => {
            if days < 1 {
                return Err(usage(format!("invalid --days {days}: must be at least 1")));
            }
            let ca_cert = ca_dir.join("ca.pem");
            let ca = Pair {
                cert_pem: std::fs::read_to_string(&ca_cert)
                    .map_err(|e| Failure(format!("{}: {e}", ca_cert.display()), 1))?,
                key_pem: std::fs::read_to_string(ca_dir.join("ca-key.pem")).map_err(|e| {
                    Failure(format!("{}: {e}", ca_dir.join("ca-key.pem").display()), 1)
                })?,
            };
            let der = identity::read_certs(&ca_cert)?;
            let td = identity::trust_domain_of_ca(&der[0])?;
            let roles = role.map_or(Role::ALL.to_vec(), |r| vec![r]);
            for role in roles {
                let id = SiteId::new(&td, &site, role)
                    .map_err(|e| usage(format!("invalid --site: {e}")))?;
                let (cert, _) = identity::issue_to(&out, &ca, &id, Validity::days(days))?;
                let until = identity::not_after(&std::fs::read_to_string(&cert)?)?;
                let clamped = if until < Validity::days(days).not_after - time::Duration::minutes(1)
                {
                    " (the CA's own expiry: a certificate never outlives its CA)"
                } else {
                    ""
                };
                eprintln!(
                    "issued {id} -> {}, valid until {until}{clamped}",
                    cert.display()
                );
            }
            Ok(())
        }
    }
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("{s:?} is not a role: federation or edge"))
}

fn scope_text(s: Option<&wire::ConsumerScope>) -> String {
    match s {
        Some(s) if !s.all => s.sites.join(","),
        _ => "all".to_string(),
    }
}

fn protocol_name(p: i32) -> &'static str {
    federation::model::Protocol::from_wire("protocol", p).map_or("unspecified", |p| p.as_str())
}

fn service_json(s: &wire::ExportedService) -> Value {
    json!({
        "origin": s.origin, "namespace": s.namespace, "name": s.name,
        "epoch": s.origin_epoch, "version": s.version,
        "ports": s.ports.iter().map(|p| json!({"name": p.name, "port": p.port, "protocol": protocol_name(p.protocol)})).collect::<Vec<_>>(),
        "ingress": s.ingress, "labels": s.labels.iter().collect::<BTreeMap<_, _>>(), "identity": s.identity,
        "scope": scope_text(s.scope.as_ref()),
        "stale": s.stale.map(|p| json!({"ttl_seconds": p.ttl_seconds, "serve": p.serve})),
    })
}

/// `federationctl plan`: the changes the kubernetes backend would make now.
async fn plan(cli: &Cli, config: &Path, catalog: Option<&Path>) -> Result<(), Failure> {
    use federation::kubernetes::{controller::Cluster, desired, plan};
    let cfg = federation::config::Config::load(config)?;
    if cfg.backend != federation::config::BackendKind::Kubernetes {
        return Err(usage(format!(
            "{}: backend is not \"kubernetes\": there is no cluster to plan for",
            config.display()
        )));
    }
    let settings = cfg.kubernetes.clone().unwrap_or_default();
    let catalog_text = match catalog {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Failure(format!("{}: {e}", path.display()), 1))?,
        None => {
            let mut c = client(&cfg.admin_socket).await?;
            let r = federation::admin::catalog_all(&mut c)
                .await
                .map_err(status)?;
            catalog_json(&r).to_string()
        }
    };
    let remote = smi_adapters::input::parse_catalog(&catalog_text).map_err(|e| Failure(e, 1))?;
    let cluster = Cluster::connect(&settings).await?;
    let (want, existing) = cluster.desired_and_existing(&cfg.site, &remote).await?;
    let (changes, unchanged) = plan::plan(&want.objects, &existing);
    let diagnostics: Vec<String> = want
        .diagnostics
        .values()
        .flatten()
        .map(|d| d.to_string())
        .collect();
    let out = json!({
        "site": cfg.site,
        "mesh": settings.mesh,
        "unchanged": unchanged,
        "changes": changes.iter().map(|c| json!({
            "action": c.verb(),
            "object": desired::object_key(c.object()),
            "resource": c.object(),
        })).collect::<Vec<_>>(),
        "diagnostics": diagnostics,
    });
    print(cli.output, &out, || {
        let mut t = String::new();
        for c in &changes {
            let o = c.object();
            t.push_str(&format!(
                "{:<9} {} {} {}/{}\n",
                c.verb(),
                o["apiVersion"].as_str().unwrap_or_default(),
                o["kind"].as_str().unwrap_or_default(),
                o["metadata"]["namespace"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            ));
        }
        for d in &diagnostics {
            t.push_str(&format!("{d}\n"));
        }
        let conflicts = changes
            .iter()
            .filter(|c| matches!(c, plan::Change::Conflict(_)))
            .count();
        t.push_str(&format!(
            "{} to change, {} unchanged, {} left alone (exist without the multimesh label) (site {}, mesh {})\n",
            changes.len() - conflicts,
            unchanged,
            conflicts,
            cfg.site,
            settings.mesh
        ));
        t
    })
}

fn catalog_json(r: &api::CatalogResponse) -> Value {
    json!({
        "site": r.site,
        "origins": r.origins.iter().map(|o| json!({
            "origin": o.origin, "epoch": o.epoch, "version": o.version, "state": o.state,
            "last_heard_ms": o.last_heard_ms,
            "entries": o.entries.iter().map(|e| {
                let mut v = service_json(e.service.as_ref().unwrap_or(&Default::default()));
                v["stale"] = json!(e.stale);
                v["served"] = json!(e.served);
                v["expires_in_s"] = json!(e.expires_in_s);
                v
            }).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "conflicts": r.conflicts.iter().map(|c| json!({
            "namespace": c.namespace, "name": c.name, "serving": c.serving, "refused": c.refused,
        })).collect::<Vec<_>>(),
    })
}

fn catalog_table(r: &api::CatalogResponse) -> String {
    let mut out = format!(
        "{:<12} {:<8} {:<8} {:<28} {:<8} {:<22} {:<10} {}\n",
        "ORIGIN", "STATE", "VERSION", "SERVICE", "VERSION", "PORTS", "SCOPE", "STALE"
    );
    for o in &r.origins {
        if o.entries.is_empty() {
            out.push_str(&format!(
                "{:<12} {:<8} {:<8} {:<28}\n",
                o.origin, o.state, o.version, "-"
            ));
        }
        for e in &o.entries {
            let s = e.service.clone().unwrap_or_default();
            let ports = s
                .ports
                .iter()
                .map(|p| format!("{}/{}", p.port, protocol_name(p.protocol)))
                .collect::<Vec<_>>()
                .join(",");
            let stale = if e.stale {
                format!(
                    "stale ({} s left{})",
                    e.expires_in_s,
                    if e.served { "" } else { ", not served" }
                )
            } else {
                "-".into()
            };
            out.push_str(&format!(
                "{:<12} {:<8} {:<8} {:<28} {:<8} {:<22} {:<10} {}\n",
                o.origin,
                o.state,
                o.version,
                format!("{}/{}", s.namespace, s.name),
                s.version,
                ports,
                scope_text(s.scope.as_ref()),
                stale
            ));
        }
    }
    for c in &r.conflicts {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(",")
            }
        };
        out.push_str(&format!(
            "CONFLICT {}/{}: exported by sites that do not all list each other in share_with; \
             serving here: {}; refused: {}\n",
            c.namespace,
            c.name,
            list(&c.serving),
            list(&c.refused)
        ));
    }
    out
}

fn peers_json(r: &api::PeersResponse) -> Value {
    json!(r.peers.iter().map(|p| {
        let c = p.counters.unwrap_or_default();
        json!({
            "site": p.site, "address": p.address, "state": p.state, "direction": p.direction,
            "healthy": p.healthy, "last_heartbeat_ms": p.last_heartbeat_ms, "last_ack_ms": p.last_ack_ms,
            "lag_versions": p.lag_versions, "last_error": p.last_error,
            "counters": {
                "snapshots_sent": c.snapshots_sent, "snapshots_received": c.snapshots_received,
                "deltas_sent": c.deltas_sent, "deltas_received": c.deltas_received,
                "records_sent": c.records_sent, "records_received": c.records_received,
                "acks_received": c.acks_received, "nacks_received": c.nacks_received,
                "nacks_sent": c.nacks_sent, "sessions": c.sessions,
                "throttled_ms": c.throttled_ms,
            },
        })
    }).collect::<Vec<_>>())
}

fn peers_table(r: &api::PeersResponse) -> String {
    let ms = |v: Option<u64>| {
        v.map(|m| format!("{m}ms ago"))
            .unwrap_or_else(|| "never".into())
    };
    let mut out = format!(
        "{:<10} {:<13} {:<9} {:<8} {:<14} {:<14} {:<5} {:<12} {}\n",
        "PEER", "STATE", "DIR", "HEALTHY", "HEARTBEAT", "ACK", "LAG", "SNAP/DELTA", "LAST ERROR"
    );
    for p in &r.peers {
        let c = p.counters.unwrap_or_default();
        out.push_str(&format!(
            "{:<10} {:<13} {:<9} {:<8} {:<14} {:<14} {:<5} {:<12} {}\n",
            p.site,
            p.state,
            if p.direction.is_empty() {
                "-"
            } else {
                &p.direction
            },
            p.healthy,
            ms(p.last_heartbeat_ms),
            ms(p.last_ack_ms),
            p.lag_versions,
            format!("{}/{} in", c.snapshots_received, c.deltas_received),
            p.last_error
        ));
    }
    out
}
