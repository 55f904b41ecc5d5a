//! `multimesh-demo`: the tour-booking app over three sites and an edge node, on loopback.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use multimesh_tours::demo::local::{Demo, Options, say};
use multimesh_tours::demo::walkthrough;

/// Runs the tour-booking demo as local processes: sites a, b and c and an edge node linked to c
/// only, each with its federationd, edge agent and some of the app's services, linked by mTLS
/// with certificates from a fresh federation CA. Prints the front end's and the status page's
/// URLs, then runs until Ctrl-C, which stops every process it started.
///
/// With --walkthrough it books a tour across sites, shifts tour-catalog 90/10 → 50/50 → 0/100
/// between v1 (site c) and v2 (site b) with a TrafficSplit and measures each split, kills site
/// b's edge agent to show payment failing over to c, and restarts it; it exits 0 only when every
/// step showed what it should.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Working folder for configs, certificates, state and logs (default: a new temporary one).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Ports used are port-base+1 ..= port-base+99 on 127.0.0.1 (with --meshes, up to
    /// port-base+119).
    #[arg(long, env = "MULTIMESH_PORT_BASE", default_value_t = 17100)]
    port_base: u16,
    /// Folder with federationd, federationctl, edge-agent and tours (default: this program's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Run the scripted walkthrough, then stop (unless --stay).
    #[arg(long)]
    walkthrough: bool,
    /// Write the walkthrough's measurements as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Calls measured per traffic-split phase.
    #[arg(long, default_value_t = 4000)]
    calls_per_phase: usize,
    /// Stop as soon as every site is ready (a smoke check).
    #[arg(long)]
    once: bool,
    /// Keep running after the walkthrough, until Ctrl-C.
    #[arg(long)]
    stay: bool,
    /// Serve the front end and the status page on every interface (e.g. in a container), not
    /// only on 127.0.0.1.
    #[arg(long)]
    public: bool,
    /// Add sites m and n: Kubernetes sites (upstream kube-apiserver) with a real Istio mesh
    /// each (their own upstream istiod; istio-agent with upstream Envoy for m's walkthrough
    /// client and for n's app, tour-catalog v3). The walkthrough then applies its TrafficSplit
    /// in m's cluster and measures it through m's Envoy, and calls n's app from m's Envoy
    /// through n's. Needs Go >= 1.26 the first time (builds are cached).
    #[arg(long)]
    meshes: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    federation::process::init_logging("text");
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let bin_dir = match cli.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
    };
    let dir = match cli.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("multimesh-demo.{}", std::process::id())),
    };
    let opts = Options {
        dir,
        port_base: cli.port_base,
        bin_dir,
        public: cli.public,
        meshes: cli.meshes,
    };
    // Ctrl-C during start-up must stop what was started too.
    let demo = tokio::select! {
        d = Demo::start(opts) => d?,
        _ = federation::process::shutdown_signal() => {
            say("interrupted during start-up");
            return Ok(ExitCode::from(130));
        }
    };
    say(format!("front end:   {}", demo.frontend_url()));
    say(format!("status page: {}", demo.status_url()));
    let mut code = ExitCode::SUCCESS;
    if cli.walkthrough {
        let report = tokio::select! {
            r = walkthrough::run(&demo, cli.calls_per_phase) => Some(r),
            _ = federation::process::shutdown_signal() => None,
        };
        match report {
            Some(r) => {
                let passed = r.steps.iter().filter(|s| s.ok).count();
                say(format!(
                    "walkthrough: {passed} of {} steps passed",
                    r.steps.len()
                ));
                if let Some(p) = &cli.report {
                    std::fs::write(p, serde_json::to_string_pretty(&r)?)?;
                    say(format!("report written to {}", p.display()));
                }
                if !r.ok() {
                    code = ExitCode::FAILURE;
                }
            }
            None => {
                demo.stop().await;
                return Ok(ExitCode::from(130));
            }
        }
    }
    if !cli.once && (!cli.walkthrough || cli.stay) {
        say("running; press Ctrl-C to stop every site");
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = federation::process::shutdown_signal() => break,
                _ = tick.tick() => {
                    if let Some((name, status, log)) = demo.procs.lock().await.exited() {
                        say(format!("{name} exited ({status}); the others keep running. Its last lines:\n{log}"));
                    }
                }
            }
        }
    }
    demo.stop().await;
    Ok(code)
}
