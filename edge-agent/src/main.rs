//! `edge-agent`: the data plane at a site's edge. Parses arguments, sets up logging, starts
//! the agent and stops it cleanly on SIGINT/SIGTERM; `check-routes` validates a route file.

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
        Command::Run { config, log_format } => {
            process::init_logging(&log_format);
            let cfg = AgentConfig::load(&config)?;
            let site = cfg.site.clone();
            let running = serve::start(cfg)
                .await
                .map_err(|e| anyhow::anyhow!("site {site}: {e}"))?;
            process::shutdown_signal().await?;
            tracing::info!(site = %site, "shutting down");
            running.stop().await;
            Ok(())
        }
    }
}
