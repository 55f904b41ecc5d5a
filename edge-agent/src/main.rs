//! `edge-agent`: the data plane at a site's edge. Parses arguments, sets up logging, starts
//! the agent and stops it cleanly on SIGINT/SIGTERM; `check` checks an agent's certificates
//! and readiness, `check-routes` validates a route file.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use edge_agent::config::AgentConfig;
use edge_agent::routes::feed;
use edge_agent::runtime::serve;
use multimesh_core::process;

/// mimalloc: a proxy allocates and frees many small buffers across threads; glibc's malloc
/// costs measurably more CPU per request here (see BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The multimesh edge agent of one site: carries cross-site calls over mutual TLS.
///
/// Ingress admits peer sites by their SPIFFE ID and each service's consumer scope, and forwards
/// to local workloads. Egress takes local callers' HTTP/1.1, h2c/gRPC (routed by
/// `x-multimesh-destination`, then Host) and TCP (per-service ports), picks a site by weight,
/// ejects failing sites for a back-off period and retries idempotent calls elsewhere. On an edge
/// node (`parent` in the config) it only dials out, and is reached back through that link.
///
/// Logs go to stderr; set RUST_LOG (e.g. `RUST_LOG=edge_agent=debug`) for more detail.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run {
        /// Agent config file (TOML, or YAML with a .yaml/.yml extension).
        #[arg(short, long, env = "MULTIMESH_EDGE_CONFIG")]
        config: PathBuf,
        /// Log format.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
    },
    /// Check an agent: its config; its edge certificate files as its peers will check them
    /// (SPIFFE ID, chain to the federation CA, the key, time left on the certificate and the
    /// CA); then, on its admin listener, that the running agent is ready. Prints one line per
    /// check; exits 1 when any check fails (warnings do not).
    #[command(
        after_help = "Examples:\n  edge-agent check --config /etc/multimesh/edge.toml\n  edge-agent check --config edge.toml --offline --warn-days 60 --json"
    )]
    Check {
        /// Agent config file (TOML, or YAML with a .yaml/.yml extension).
        #[arg(short, long, env = "MULTIMESH_EDGE_CONFIG")]
        config: PathBuf,
        /// A certificate (site or CA) ending within this many days is a warning.
        #[arg(long, default_value_t = 30)]
        warn_days: u32,
        /// Check the config and certificate files only; do not ask the agent.
        #[arg(long)]
        offline: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate a route file and print a summary (exit 1 when it is invalid).
    CheckRoutes {
        /// Route file (YAML, JSON or TOML by extension).
        file: PathBuf,
    },
}

/// The control runtime (signals, route feed, accepting); calls are served on the agent's own
/// data-plane threads (`runtime::workers`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Command::CheckRoutes { file } => {
            let t = feed::load_file(&file).map_err(|e| anyhow::anyhow!(e))?;
            eprintln!(
                "{}: {} services, {} splits",
                file.display(),
                t.len(),
                t.split_list().len()
            );
            Ok(())
        }
        Command::Check {
            config,
            warn_days,
            offline,
            json,
        } => {
            let report = edge_agent::runtime::check::run(&config, warn_days, offline).await;
            let text = if json {
                format!("{}\n", serde_json::to_string_pretty(&report)?)
            } else {
                multimesh_core::check::render(&report.checks, true)
            };
            std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes())?;
            match report.failure() {
                Some(e) => Err(anyhow::anyhow!(e)),
                None => Ok(()),
            }
        }
        Command::Run { config, log_format } => {
            process::init_logging(&log_format);
            let (cfg, document) = AgentConfig::load_document(&config)?;
            let site = cfg.site.clone();
            let running = serve::start(cfg, Some((config, document)))
                .await
                .map_err(|e| anyhow::anyhow!("site {site}: {e}"))?;
            process::shutdown_signal().await?;
            tracing::info!(site = %site, "shutting down");
            running.stop().await;
            Ok(())
        }
    }
}
