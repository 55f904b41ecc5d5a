//! Control-plane benchmark of `federationd`.
//!
//! Starts N real daemons in a full mesh on loopback (real mTLS), the origin declaring S services
//! in its config, and measures:
//!
//! - **full sync**: from the origin's process start (and from its ready file) until every peer
//!   sees all S services;
//! - **change propagation**: for each of C exports made one after another at the origin through
//!   the admin API, the time from the request to visibility at every peer (p50, p99, max), and
//!   the time until the origin acknowledged the (fsynced) export;
//! - **peak RSS** (`VmHWM`) of every daemon at the end of the run.
//!
//! Visibility is observed with the admin `Watch` stream of each peer (event-driven, no polling).
//! Prints a Markdown table and, with `--json`, writes the machine-readable results.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use federation::identity::{self, Role, SiteId, Validity};
use multimesh_proto::admin::v1 as api;
use serde_json::json;
use tokio::sync::mpsc;

const TD: &str = "bench.multimesh";

/// Control-plane benchmark: N federationd sites in a full mesh on loopback.
#[derive(Parser)]
struct Args {
    /// The federationd binary to run (build it with --profile dist).
    #[arg(long)]
    federationd: PathBuf,
    /// Number of sites (the first one is the origin).
    #[arg(long, default_value_t = 5)]
    sites: usize,
    /// Services declared at the origin.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Exports made one after another at the origin to measure propagation.
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Repetitions (each with fresh daemons and state); the summary reports medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the run folders (configs, logs, state files) and print where they are.
    #[arg(long)]
    keep: bool,
}

/// One daemon process.
struct Daemon {
    name: String,
    dir: PathBuf,
    listen: String,
    child: Child,
}

impl Daemon {
    fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// Peak resident set size in MiB (`VmHWM` from /proc).
    fn peak_rss_mib(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no VmHWM in /proc/{}/status", self.child.id()))?;
        Ok(kb / 1024.0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn site_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            if n <= 26 {
                ((b'a' + i as u8) as char).to_string()
            } else {
                format!("s{i:03}")
            }
        })
        .collect()
}

fn write_pki(dir: &Path, names: &[String]) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let ca = identity::init_ca(TD, 1)?;
    identity::write_file(&dir.join("ca.pem"), &ca.cert_pem, false)?;
    for n in names {
        let id = SiteId::new(TD, n, Role::Federation)?;
        identity::issue_to(dir, &ca, &id, Validity::days(1))?;
    }
    Ok(())
}

/// Writes `name`'s config: it dials the peers in `dial` and waits for those in `accept`.
fn write_config(
    root: &Path,
    name: &str,
    dial: &[(String, String)],
    accept: &[String],
    services: usize,
) -> Result<PathBuf> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    let pki = root.join("pki");
    let mut cfg = format!(
        "site = \"{name}\"\ntrust_domain = \"{TD}\"\nlisten = \"127.0.0.1:0\"\nadmin_socket = \"admin.sock\"\n\
         state_file = \"state.json\"\nready_file = \"ready.json\"\nedge_ingress = [\"127.0.0.1:15443\"]\n\n\
         [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.join("ca.pem").display(),
        pki.join(format!("{name}-federation.pem")).display(),
        pki.join(format!("{name}-federation-key.pem")).display(),
    );
    for (peer, addr) in dial {
        cfg.push_str(&format!(
            "\n[[peers]]\nsite = \"{peer}\"\naddress = \"{addr}\"\n"
        ));
    }
    for peer in accept {
        cfg.push_str(&format!("\n[[peers]]\nsite = \"{peer}\"\n"));
    }
    for i in 0..services {
        cfg.push_str(&format!(
            "\n[[services]]\nname = \"svc-{i:05}\"\nnamespace = \"bench\"\n\
             ports = [{{ name = \"http\", port = 8080, protocol = \"http\" }}]\nexport = true\n"
        ));
    }
    let path = dir.join("federationd.toml");
    std::fs::write(&path, cfg)?;
    Ok(path)
}

fn spawn(bin: &Path, name: &str, config: &Path) -> Result<Daemon> {
    let dir = config
        .parent()
        .ok_or_else(|| anyhow!("config has no folder"))?
        .to_path_buf();
    let log = std::fs::File::create(dir.join("federationd.log"))?;
    let child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    Ok(Daemon {
        name: name.to_string(),
        dir,
        listen: String::new(),
        child,
    })
}

/// Waits for the daemon's ready file; returns when it appeared.
fn wait_ready(d: &mut Daemon) -> Result<Instant> {
    let ready = d.dir.join("ready.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(l) = v["listen"].as_str()
        {
            d.listen = l.to_string();
            return Ok(Instant::now());
        }
        if let Some(status) = d.child.try_wait()? {
            bail!(
                "federationd {} exited with {status}; log: {}",
                d.name,
                d.dir.join("federationd.log").display()
            );
        }
        if Instant::now() > deadline {
            bail!("federationd {} not ready after 60 s", d.name);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Forwards every watch event of `site` as (site index, entries, arrival time).
async fn watch(index: usize, socket: PathBuf, tx: mpsc::UnboundedSender<(usize, u32, Instant)>) {
    let mut client = match federation::admin::connect(&socket).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("watch: {e}");
            return;
        }
    };
    let Ok(stream) = client.watch(api::WatchRequest {}).await else {
        eprintln!("watch: the Watch call failed on {}", socket.display());
        return;
    };
    let mut stream = stream.into_inner();
    while let Ok(Some(e)) = stream.message().await {
        if tx.send((index, e.entries, Instant::now())).is_err() {
            return;
        }
    }
}

/// Latest entry counts per peer, fed by the watchers.
struct Views {
    rx: mpsc::UnboundedReceiver<(usize, u32, Instant)>,
    entries: Vec<u32>,
}

impl Views {
    /// Waits until every peer sees at least `n` entries; returns when the last one got there.
    async fn until_all(&mut self, n: u32, timeout: Duration) -> Result<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = Instant::now();
        while self.entries.iter().any(|&e| e < n) {
            let (i, e, at) = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .map_err(|_| anyhow!("peers still short of {n} entries: {:?}", self.entries))?
                .ok_or_else(|| anyhow!("every watch stream ended"))?;
            if self.entries[i] < n && e >= n {
                last = at;
            }
            self.entries[i] = e;
        }
        Ok(last)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 50.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn one_run(args: &Args, run: usize) -> Result<serde_json::Value> {
    let tmp = tempfile::Builder::new()
        .prefix("multimesh-bench-cp-")
        .tempdir()?;
    let root = tmp.path().to_path_buf();
    if args.keep {
        eprintln!("run {run}: folder kept at {}", root.display());
        std::mem::forget(tmp);
    }
    let names = site_names(args.sites);
    write_pki(&root.join("pki"), &names)?;

    // Peers start first, last name first: each dials the already-running sites after it and
    // waits for the ones before it, so the origin (first name) is the one dialling everybody.
    let mut daemons: Vec<Daemon> = Vec::new();
    for i in (1..names.len()).rev() {
        let dial: Vec<(String, String)> = daemons
            .iter()
            .map(|d| (d.name.clone(), d.listen.clone()))
            .collect();
        let accept: Vec<String> = names[..i].to_vec();
        let cfg = write_config(&root, &names[i], &dial, &accept, 0)?;
        let mut d = spawn(&args.federationd, &names[i], &cfg)?;
        wait_ready(&mut d)?;
        daemons.push(d);
    }
    daemons.reverse(); // b, c, d, e

    let (tx, rx) = mpsc::unbounded_channel();
    for (i, d) in daemons.iter().enumerate() {
        tokio::spawn(watch(i, d.socket(), tx.clone()));
    }
    drop(tx);
    let mut views = Views {
        rx,
        entries: vec![0; daemons.len()],
    };
    views.until_all(0, Duration::from_secs(10)).await?;

    // Full sync: the origin starts with every service declared in its config.
    let dial: Vec<(String, String)> = daemons
        .iter()
        .map(|d| (d.name.clone(), d.listen.clone()))
        .collect();
    let cfg = write_config(&root, &names[0], &dial, &[], args.services)?;
    let started = Instant::now();
    let mut origin = spawn(&args.federationd, &names[0], &cfg)?;
    let ready = tokio::task::block_in_place(|| wait_ready(&mut origin))?;
    let synced = views
        .until_all(args.services as u32, Duration::from_secs(120))
        .await?;
    let full_sync_from_start = ms(synced - started);
    let full_sync_from_ready = ms(synced.saturating_duration_since(ready));
    eprintln!(
        "run {run}: full sync of {} services to {} peers: {full_sync_from_start:.0} ms from process start, {full_sync_from_ready:.0} ms from ready",
        args.services,
        daemons.len()
    );

    // Change propagation: one export at a time, each waited for at every peer.
    let mut admin = federation::admin::connect(&origin.socket())
        .await
        .map_err(|e| anyhow!(e))?;
    let mut visible = Vec::with_capacity(args.changes);
    let mut acked = Vec::with_capacity(args.changes);
    for k in 0..args.changes {
        let t0 = Instant::now();
        admin
            .export(api::ExportRequest {
                name: format!("live-{k:05}"),
                namespace: "bench".into(),
                ports: vec![multimesh_proto::catalog::v1::ServicePort {
                    name: "http".into(),
                    port: 8080,
                    protocol: multimesh_proto::catalog::v1::Protocol::Http as i32,
                }],
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow!("export live-{k:05}: {}", s.message()))?;
        acked.push(ms(t0.elapsed()));
        let at = views
            .until_all((args.services + k + 1) as u32, Duration::from_secs(30))
            .await?;
        visible.push(ms(at.saturating_duration_since(t0)));
    }
    visible.sort_by(f64::total_cmp);
    acked.sort_by(f64::total_cmp);

    let mut rss = BTreeMap::new();
    rss.insert(origin.name.clone(), origin.peak_rss_mib()?);
    for d in &daemons {
        rss.insert(d.name.clone(), d.peak_rss_mib()?);
    }
    let max_rss = rss.values().cloned().fold(0.0, f64::max);
    eprintln!(
        "run {run}: propagation p50 {:.1} ms, p99 {:.1} ms; export ack p50 {:.1} ms; peak RSS max {max_rss:.1} MiB",
        percentile(&visible, 50.0),
        percentile(&visible, 99.0),
        percentile(&acked, 50.0),
    );
    Ok(json!({
        "run": run,
        "full_sync_ms_from_start": full_sync_from_start,
        "full_sync_ms_from_ready": full_sync_from_ready,
        "origin_ready_ms": ms(ready - started),
        "propagation_ms": {
            "p50": percentile(&visible, 50.0),
            "p99": percentile(&visible, 99.0),
            "max": visible.last().copied().unwrap_or(f64::NAN),
        },
        "export_ack_ms": {
            "p50": percentile(&acked, 50.0),
            "p99": percentile(&acked, 99.0),
        },
        "peak_rss_mib": rss,
        "peak_rss_mib_max": max_rss,
    }))
}

fn field(runs: &[serde_json::Value], path: &[&str]) -> f64 {
    median(
        runs.iter()
            .map(|r| {
                path.iter()
                    .fold(r, |v, k| &v[*k])
                    .as_f64()
                    .unwrap_or(f64::NAN)
            })
            .collect(),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.sites < 2 {
        bail!("--sites must be at least 2 (an origin and a peer)");
    }
    let mut runs = Vec::new();
    for run in 1..=args.runs {
        runs.push(one_run(&args, run).await?);
    }
    let rows = [
        (
            "full sync, origin start → all peers (ms)",
            field(&runs, &["full_sync_ms_from_start"]),
            1000.0,
        ),
        (
            "full sync, origin ready → all peers (ms)",
            field(&runs, &["full_sync_ms_from_ready"]),
            1000.0,
        ),
        (
            "export → visible at every peer, p50 (ms)",
            field(&runs, &["propagation_ms", "p50"]),
            100.0,
        ),
        (
            "export → visible at every peer, p99 (ms)",
            field(&runs, &["propagation_ms", "p99"]),
            100.0,
        ),
        (
            "export acknowledged (fsynced) at origin, p50 (ms)",
            field(&runs, &["export_ack_ms", "p50"]),
            f64::NAN,
        ),
        (
            "peak RSS, largest daemon (MiB)",
            field(&runs, &["peak_rss_mib_max"]),
            100.0,
        ),
    ];
    println!(
        "\n{} sites (full mesh), {} services at the origin, {} changes, median of {} runs\n",
        args.sites, args.services, args.changes, args.runs
    );
    println!("| metric | median | target | median / target |");
    println!("|---|---:|---:|---:|");
    let mut summary = serde_json::Map::new();
    for (name, value, target) in rows {
        let (t, ratio) = if target.is_nan() {
            ("—".to_string(), "—".to_string())
        } else {
            (format!("{target:.0}"), format!("{:.2}", value / target))
        };
        println!("| {name} | {value:.1} | {t} | {ratio} |");
        summary.insert(
            name.to_string(),
            json!({"median": value, "target": if target.is_nan() { None } else { Some(target) }}),
        );
    }
    if let Some(path) = &args.json {
        let doc = json!({
            "benchmark": "control-plane",
            "sites": args.sites,
            "services": args.services,
            "changes": args.changes,
            "runs": runs,
            "summary": summary,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}
