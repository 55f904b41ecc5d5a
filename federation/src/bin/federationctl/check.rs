//! `federationctl check`: a site's config and certificates, checked as its peers will check
//! them, then its running daemon: its peers and its backend. Exits 1 when a check fails.

use std::path::PathBuf;

use clap::Args;
use federation::check::{self, Finding, Outcome, Report};
use federation::config::Config;

use crate::output::Out;
use crate::{Failure, client};

/// `check` arguments.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  federationctl check --config /etc/multimesh/config/federationd.toml\n  federationctl check --config site.toml --offline --warn-days 60\n  federationctl check --config site.toml -o json"
)]
pub struct Check {
    /// The site's federationd config: its certificate files and peers, and the admin socket
    /// of its daemon (which this command uses, not --admin-socket).
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// A certificate (site or CA) ending within this many days is a warning.
    #[arg(long, default_value_t = 30)]
    warn_days: u32,
    /// Check the config and certificate files only; do not ask the daemon.
    #[arg(long)]
    offline: bool,
}

/// `federationctl check`.
pub async fn run(out: Out, c: Check) -> Result<(), Failure> {
    let mut checks = Vec::new();
    match Config::load(&c.config) {
        Err(e) => checks.push(check::finding("config", Outcome::Fail, e.to_string())),
        Ok(cfg) => {
            checks.push(check::finding(
                "config",
                Outcome::Pass,
                format!(
                    "{}: site {} of {}, {} peer(s)",
                    c.config.display(),
                    cfg.site,
                    cfg.trust_domain,
                    cfg.peers.len()
                ),
            ));
            checks.extend(check::certificates(
                &cfg,
                time::OffsetDateTime::now_utc(),
                time::Duration::days(i64::from(c.warn_days)),
            ));
            if !c.offline {
                checks.extend(daemon(&cfg).await);
            }
        }
    }
    let report = Report::new(checks);
    out.print(&report, |o| check::render(&report.checks, o.headers))?;
    match report.failure() {
        Some(e) => Err(Failure(e, 1)),
        None => Ok(()),
    }
}

/// The daemon's checks, or one failed check saying why it could not be asked.
async fn daemon(cfg: &Config) -> Vec<Finding> {
    let unreachable = |detail: String| vec![check::finding("daemon", Outcome::Fail, detail)];
    let mut admin = match client(&cfg.admin_socket).await {
        Ok(a) => a,
        Err(Failure(e, _)) => return unreachable(e),
    };
    let asked = async {
        let status = admin
            .status(multimesh_proto::admin::v1::StatusRequest {})
            .await?;
        let peers = admin
            .peers(multimesh_proto::admin::v1::PeersRequest {})
            .await?;
        Ok::<_, tonic::Status>((status.into_inner(), peers.into_inner().peers))
    };
    match tokio::time::timeout(std::time::Duration::from_secs(10), asked).await {
        Ok(Ok((status, peers))) => check::daemon(cfg, &status, &peers),
        Ok(Err(e)) => unreachable(format!(
            "admin socket {}: {}",
            cfg.admin_socket.display(),
            e.message()
        )),
        Err(_) => unreachable(format!(
            "admin socket {}: no answer within 10 s",
            cfg.admin_socket.display()
        )),
    }
}
