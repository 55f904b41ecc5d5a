//! `federationd`: the per-site federation daemon. Parses arguments, sets up logging, starts the
//! daemon and stops it cleanly on SIGINT/SIGTERM.

use std::path::PathBuf;

use clap::Parser;
use federation::config::Config;
use federation::{daemon, process};

/// The multimesh federation daemon of one site: discovers this site's exported services,
/// exchanges catalogs with peer sites over mutual-TLS gRPC, and persists exports and imports.
///
/// Logs go to stderr; set RUST_LOG (e.g. `RUST_LOG=federation=debug`) for more detail.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Site config file (TOML, or YAML with a .yaml/.yml extension).
    #[arg(short, long, env = "MULTIMESH_CONFIG")]
    config: PathBuf,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    process::init_logging(&args.log_format);
    let (cfg, document) = Config::load_document(&args.config)?;
    let site = cfg.site.clone();
    let running = daemon::start(cfg, document, &args.config)
        .await
        .map_err(|e| anyhow::anyhow!("site {site}: {e}"))?;
    process::shutdown_signal().await?;
    tracing::info!(site = %site, "shutting down");
    running.stop().await;
    Ok(())
}
