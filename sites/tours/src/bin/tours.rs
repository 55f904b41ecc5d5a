//! `tours`: runs one service of the tour-booking demo app.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use multimesh_tours::app::{self, Ctx, Kind};
use multimesh_tours::client::Egress;

/// One service of the tour-booking demo app. Calls to other services go through the site's
/// edge agent (--egress), addressed as <service>.<namespace>.svc.clusterset.local; every answer
/// names the service, version and site that served it.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Which service to run.
    #[arg(value_enum)]
    service: Service,
    /// Address to listen on.
    #[arg(long, env = "TOURS_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// The site this instance runs at (shown in every answer).
    #[arg(long, env = "TOURS_SITE")]
    site: String,
    /// Version of the service (tour-catalog v2 has ratings and spring prices).
    #[arg(long, env = "TOURS_VERSION", default_value = "v1")]
    service_version: String,
    /// The site's edge agent HTTP egress (host:port); needed by frontend, booking and payment.
    #[arg(long, env = "TOURS_EGRESS")]
    egress: Option<String>,
    /// Namespace of the app's services.
    #[arg(long, env = "TOURS_NAMESPACE", default_value = "tours")]
    namespace: String,
    /// Keep bookings or notifications in this JSON-lines file (kept across restarts).
    #[arg(long, env = "TOURS_DATA")]
    data: Option<PathBuf>,
    /// Timeout of one call to another service, in milliseconds.
    #[arg(long, default_value_t = 5_000)]
    call_timeout_ms: u64,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    log_format: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum Service {
    Frontend,
    TourCatalog,
    Booking,
    Payment,
    Notification,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    federation::process::init_logging(&cli.log_format);
    let kind = match cli.service {
        Service::Frontend => Kind::Frontend,
        Service::TourCatalog => Kind::TourCatalog,
        Service::Booking => Kind::Booking,
        Service::Payment => Kind::Payment,
        Service::Notification => Kind::Notification,
    };
    let needs_egress = matches!(kind, Kind::Frontend | Kind::Booking | Kind::Payment);
    if needs_egress && cli.egress.is_none() {
        anyhow::bail!(
            "--egress is required for {}: it calls other services through the edge agent",
            kind.name()
        );
    }
    let egress = cli.egress.as_deref().map(|a| {
        Egress::new(
            a,
            &cli.namespace,
            Duration::from_millis(cli.call_timeout_ms),
        )
    });
    let ctx = Arc::new(Ctx::new(
        kind,
        &cli.site,
        &cli.service_version,
        egress,
        cli.data,
    )?);
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", cli.listen))?;
    tracing::info!(service = kind.name(), site = %cli.site, version = %cli.service_version, listen = %listener.local_addr()?, "serving");
    axum::serve(listener, app::router(ctx))
        .with_graceful_shutdown(async {
            let _ = federation::process::shutdown_signal().await;
        })
        .await?;
    Ok(())
}
