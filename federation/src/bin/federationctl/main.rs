//! `federationctl`: the multimesh command line. One module per command group:
//!
//! - `certs`: the federation CA and site certificates;
//! - `exports`: export and unexport services (through the daemon's admin socket);
//! - `splits`: apply, show and delete traffic splits;
//! - `observe`: what a site sees (catalog, peers, status, watch);
//! - `translate`: offline translation of traffic specs, and the CRDs multimesh needs;
//! - `plan`: what the kubernetes backend would change in a cluster;
//! - `check`: a site's certificates, checked as its peers check them, and its daemon's peers
//!   and backend.
//!
//! Every command prints through `output`: a serializable value for `-o json|yaml`, a table
//! (`-o table|wide`, `--no-headers`) or a sentence otherwise. The admin API names request
//! fields (`ports[0].port`); [`flag_of`] says them as this command line's flags.

mod certs;
mod check;
mod exports;
mod observe;
mod output;
mod plan;
mod splits;
mod translate;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use multimesh_core::error::InvalidField;
use multimesh_proto::admin::v1 as api;
use output::{Format, Out};

/// Command line of multimesh: create site identities, export and unexport services, and show a
/// site's catalog, peers and status through its daemon's admin socket.
#[derive(Parser)]
#[command(
    version,
    after_help = "Examples:\n  federationctl certs init --trust-domain multimesh.example --out pki\n  federationctl export payment -n shop --port http:8080/http --to b\n  federationctl catalog -o wide\n  federationctl peers --no-headers\n  federationctl check --config /etc/multimesh/config/federationd.toml\n  federationctl translate --mesh istio -f split.yaml -f services.yaml"
)]
struct Cli {
    /// Admin socket of the local federationd.
    #[arg(
        long,
        global = true,
        env = "MULTIMESH_ADMIN_SOCKET",
        default_value = "/run/multimesh/admin.sock"
    )]
    admin_socket: PathBuf,
    /// Output format: table, wide (every column), json or yaml.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    output: Format,
    /// Print tables without their header line.
    #[arg(long, global = true)]
    no_headers: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a federation CA and issue site certificates.
    #[command(subcommand)]
    Certs(certs::Certs),
    /// Export a service of this site to peer sites.
    Export(exports::Export),
    /// Withdraw an export of this site from every peer.
    Unexport(exports::Unexport),
    /// Apply traffic splits to this site's calls: SMI TrafficSplit (v1alpha1-4) or Gateway API
    /// HTTPRoute documents splitting a whole service between backends by weight. The site's
    /// edge agent sends calls to the root service to the backends, each wherever it runs in the
    /// federation. A split replaces the previous split of the same root; nothing is applied
    /// when any document is refused.
    Apply(splits::Apply),
    /// Show this site's traffic splits: configured shares and the sites serving each backend.
    Splits,
    /// Remove the traffic split of a root service.
    DeleteSplit(splits::DeleteSplit),
    /// Show what this site sees, per origin, with versions and stale marks.
    Catalog,
    /// Show peer links: state, last heartbeat and ACK, lag, message counters.
    Peers,
    /// Show a summary of the daemon.
    Status,
    /// Check a site: its config; its certificate files as its peers will check them (SPIFFE
    /// ID, chain to the federation CA, the key, time left on the certificate and the CA); then,
    /// through its running daemon, each configured peer and the backend. Prints one line per
    /// check; exits 1 when any check fails (warnings do not).
    Check(check::Check),
    /// Translate SMI TrafficSplit/HTTPRouteGroup/TCPRoute/TrafficTarget and Gateway API
    /// HTTPRoute specs into a mesh's native resources, offline (no cluster, no daemon). Prints
    /// multi-document YAML on stdout (or JSON with -o json) and diagnostics on stderr; exits 0
    /// only when everything was rendered, 1 otherwise.
    Translate(translate::Translate),
    /// Print the CustomResourceDefinitions multimesh needs in a cluster (MCS ServiceExport and
    /// ServiceImport, generated from its Rust types) as YAML, for `kubectl apply -f -`.
    Crds,
    /// Show what the kubernetes backend of a site would create, change or delete in its cluster
    /// (imports and rendered mesh resources), without applying anything. Reads the site's
    /// federationd config for the cluster and mesh, and the catalog from its running daemon
    /// (or from --catalog).
    Plan(plan::Plan),
    /// Print the sequence number and entry count now and after every catalog change, one line
    /// each (JSON lines with -o json), until interrupted or until --until-entries is reached.
    Watch(observe::Watch),
}

/// A failure to report: a message and the exit code (2: bad usage or input, 1: the rest).
pub struct Failure(pub String, pub u8);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string(), 1)
    }
}

/// A usage error (exit code 2).
pub fn usage(msg: String) -> Failure {
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
    let out = Out {
        format: cli.output,
        headers: !cli.no_headers,
    };
    let socket = cli.admin_socket.as_path();
    match cli.cmd {
        Cmd::Certs(c) => certs::run(c),
        Cmd::Export(e) => exports::export(out, socket, e).await,
        Cmd::Unexport(u) => exports::unexport(out, socket, u).await,
        Cmd::Apply(a) => splits::apply(out, socket, a).await,
        Cmd::Splits => splits::show(out, socket).await,
        Cmd::DeleteSplit(d) => splits::delete(out, socket, d).await,
        Cmd::Catalog => observe::catalog(out, socket).await,
        Cmd::Peers => observe::peers(out, socket).await,
        Cmd::Status => observe::status(out, socket).await,
        Cmd::Check(c) => check::run(out, c).await,
        Cmd::Watch(w) => observe::watch(out, socket, w).await,
        Cmd::Translate(t) => translate::translate(out, t),
        Cmd::Crds => translate::crds(),
        Cmd::Plan(p) => plan::plan(out, p).await,
    }
}

/// The error of a command that needs the Kubernetes backend, in a build without it.
#[cfg(not(feature = "kubernetes"))]
pub fn without_kubernetes(command: &str) -> Failure {
    usage(format!(
        "`federationctl {command}` needs the Kubernetes backend, and this build has none \
         (built without the `kubernetes` feature of multimesh-federation)"
    ))
}

/// Reads a file, or standard input for `-`.
pub fn read_input(path: &Path) -> Result<String, Failure> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| Failure(format!("standard input: {e}"), 2))?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| Failure(format!("{}: {e}", path.display()), 2))
}

/// A client of the daemon's admin socket.
pub async fn client(
    path: &Path,
) -> Result<api::admin_client::AdminClient<tonic::transport::Channel>, Failure> {
    federation::admin::connect(path)
        .await
        .map_err(|e| Failure(e, 1))
}

/// The command-line spelling of an admin request field: `ports[1].port` is `--port`.
pub fn flag_of(field: &str) -> &str {
    let head = field.split(['.', '[']).next().unwrap_or(field);
    match head {
        "name" | "service" => "SERVICE",
        "namespace" => "--namespace",
        "ports" => "--port",
        "to" => "--to",
        "labels" => "--label",
        "share_with" => "--share-with",
        "stale" => "--stale-ttl",
        "files" => "--file",
        _ => field,
    }
}

/// An admin answer as a failure: a refused field is named as its flag (exit code 2).
pub fn status(s: tonic::Status) -> Failure {
    if let Some(f) = InvalidField::of_status(&s) {
        let value = if f.value.is_empty() {
            String::new()
        } else {
            format!(" {:?}", f.value)
        };
        return Failure(
            format!("invalid {}{value}: {}", flag_of(&f.field), f.reason),
            2,
        );
    }
    let code = if s.code() == tonic::Code::InvalidArgument {
        2
    } else {
        1
    };
    Failure(s.message().to_string(), code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_fields_are_said_as_flags() {
        assert_eq!(flag_of("ports[1].port"), "--port");
        assert_eq!(flag_of("ports"), "--port");
        assert_eq!(flag_of("stale.ttl_seconds"), "--stale-ttl");
        assert_eq!(flag_of("labels"), "--label");
        assert_eq!(flag_of("share_with"), "--share-with");
        assert_eq!(flag_of("to"), "--to");
        assert_eq!(flag_of("name"), "SERVICE");
        assert_eq!(flag_of("page_token"), "page_token");
    }
}
