//! The local demo: certificates, configs, processes, readiness, and the way out.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use federation::identity::{self, Role, SiteId, Validity};
use serde_json::{Value, json};

use super::status::{self, SiteEndpoints, Status};
use super::supervisor::Supervisor;
use super::topology::{self, Topology, Workload};
use crate::client::Http;

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Working folder (configs, certificates, state, logs).
    pub dir: PathBuf,
    /// Ports are `port_base + 1 ..= port_base + 99`.
    pub port_base: u16,
    /// Folder holding federationd, federationctl, edge-agent and tours.
    pub bin_dir: PathBuf,
    /// Serve the front end and the status page on every interface, not only loopback.
    pub public: bool,
    /// Add sites `m` and `n`: Kubernetes with a real Istio mesh each (mesh.rs).
    pub meshes: bool,
}

/// A running demo.
pub struct Demo {
    /// Its options.
    pub opts: Options,
    /// The layout.
    pub topology: Topology,
    /// Its processes.
    pub procs: tokio::sync::Mutex<Supervisor>,
    /// HTTP client for probes.
    pub http: Http,
    /// With `--meshes`: the clusters of the mesh sites (m, n).
    pub meshes: Vec<super::mesh::MeshCluster>,
    status_task: tokio::task::JoinHandle<()>,
}

/// A progress line for people.
pub fn say(msg: impl std::fmt::Display) {
    eprintln!("==> {msg}");
}

impl Demo {
    /// Builds and starts everything, and waits until every site routes to every service.
    pub async fn start(opts: Options) -> anyhow::Result<Self> {
        let t = Topology::local(opts.port_base, opts.meshes).map_err(anyhow::Error::msg)?;
        for b in ["federationd", "federationctl", "edge-agent", "tours"] {
            let p = opts.bin_dir.join(b);
            if !p.is_file() {
                bail!(
                    "{} not found: build the workspace first (cargo build --release) or pass --bin-dir",
                    p.display()
                );
            }
        }
        check_ports_free(&t)?;
        std::fs::create_dir_all(&opts.dir)
            .with_context(|| format!("creating {}", opts.dir.display()))?;
        say(format!("working folder: {}", opts.dir.display()));
        say("creating a federation CA and two certificates per site (federationd, edge agent)");
        write_pki(&opts.dir.join("pki"), &t)?;
        let mut procs = Supervisor::default();
        let mut meshes = Vec::new();
        let mut kubeconfigs = std::collections::BTreeMap::new();
        if t.mesh_sites().next().is_some() {
            say(
                "sites m and n: a real API server and istiod each (upstream, built once and cached; the first run takes minutes)",
            );
            super::mesh::MeshCluster::install()?;
            // The clusters start side by side: each mostly waits for its API server.
            let started: Vec<anyhow::Result<super::mesh::MeshCluster>> = std::thread::scope(|sc| {
                let jobs: Vec<_> = t
                    .mesh_sites()
                    .map(|(s, mesh)| {
                        let dir = opts.dir.join(format!("kube-{}", s.name));
                        sc.spawn(move || super::mesh::MeshCluster::start(&dir, s.name, mesh))
                    })
                    .collect();
                jobs.into_iter()
                    .map(|j| {
                        j.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("starting a cluster panicked")))
                    })
                    .collect()
            });
            for c in started {
                let c = c?;
                kubeconfigs.insert(
                    c.site.clone(),
                    c.federationd_kubeconfig()?.display().to_string(),
                );
                meshes.push(c);
            }
        }
        say(format!(
            "starting federationd at {}",
            t.sites
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for s in &t.sites {
            let dir = opts.dir.join(s.name);
            std::fs::create_dir_all(&dir)?;
            let _ = std::fs::remove_file(dir.join("ready.json"));
            let kube = kubeconfigs.get(s.name).map(String::as_str);
            std::fs::write(
                dir.join("federationd.toml"),
                topology::federationd_toml(s, |n| t.exporters(n), t.service_port, kube),
            )?;
            std::fs::write(
                dir.join("edge.toml"),
                topology::edge_toml(s, &t.children(s.name), t.service_port),
            )?;
            procs.spawn(
                &format!("{}/federationd", s.name),
                &opts.bin_dir.join("federationd"),
                vec!["--config".into(), "federationd.toml".into()],
                &dir,
                &dir.join("federationd.log"),
            )?;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for s in &t.sites {
            let ready = opts.dir.join(s.name).join("ready.json");
            while !ready.exists() {
                if let Some((name, st, log)) = procs.exited() {
                    bail!("{name} exited ({st}):\n{log}");
                }
                if Instant::now() > deadline {
                    bail!("federationd of {} did not start in 20 s", s.name);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        say("starting the app's services and the edge agents");
        for s in &t.sites {
            let dir = opts.dir.join(s.name);
            for a in &s.apps {
                procs.spawn(
                    &format!("{}/{}", s.name, a.process()),
                    &opts.bin_dir.join("tours"),
                    topology::app_args(s, a, ".", opts.public),
                    &dir,
                    &dir.join(format!("{}.log", a.process())),
                )?;
            }
            procs.spawn(
                &edge_name(s.name),
                &opts.bin_dir.join("edge-agent"),
                vec!["run".into(), "--config".into(), "edge.toml".into()],
                &dir,
                &dir.join("edge-agent.log"),
            )?;
        }
        for (c, (s, mesh)) in meshes.iter().zip(t.mesh_sites()) {
            let site_dir = opts.dir.join(s.name);
            match (mesh.workload, s.apps.first()) {
                (Workload::App { inbound }, Some(app)) => {
                    let name = app.process();
                    say(format!(
                        "site {}: {name} behind its sidecar (istio-agent with upstream Envoy), exported by a ServiceExport",
                        s.name
                    ));
                    c.declare_app(&name, t.service_port, inbound)?;
                    let spec = json!({"ingress": [{"port": {"number": inbound, "protocol": "HTTP", "name": "http"},
                                        "bind": "127.0.0.1", "captureMode": "NONE",
                                        "defaultEndpoint": format!("127.0.0.1:{}", app.port)}],
                                      "egress": [{"hosts": ["istio-system/*"]}]});
                    c.start_sidecar(&mut procs, &site_dir, mesh, &name, spec)?;
                }
                _ => {
                    say(format!(
                        "site {}: the walkthrough client's sidecar (istio-agent with upstream Envoy)",
                        s.name
                    ));
                    let spec = json!({"egress": [{"port": {"number": t.service_port, "protocol": "HTTP", "name": "http"},
                                       "bind": "127.0.0.1", "captureMode": "NONE",
                                       "hosts": [format!("{}/*", topology::NAMESPACE)]}]});
                    c.start_sidecar(&mut procs, &site_dir, mesh, "walkthrough", spec)?;
                }
            }
        }
        let status = Status::new(
            t.sites
                .iter()
                .map(|s| SiteEndpoints {
                    name: s.name.to_string(),
                    admin_socket: opts.dir.join(s.name).join("admin.sock"),
                    edge_admin: format!("127.0.0.1:{}", s.admin_port),
                    mesh: s.mesh_kind().to_string(),
                })
                .collect(),
        );
        let host = if opts.public { "0.0.0.0" } else { "127.0.0.1" };
        let listener = tokio::net::TcpListener::bind((host, t.status_port))
            .await
            .with_context(|| format!("status page port {}", t.status_port))?;
        let sampler = status.clone();
        let server = status.clone();
        let status_task = tokio::spawn(async move {
            tokio::select! {
                () = sampler.run() => {}
                r = status::serve(server, listener) => {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "status page failed");
                    }
                }
            }
        });
        let mut demo = Self {
            opts,
            topology: t,
            procs: tokio::sync::Mutex::new(procs),
            http: Http::default(),
            meshes,
            status_task,
        };
        demo.wait_ready(Duration::from_secs(60)).await?;
        Ok(demo)
    }

    /// Waits until every app answers `/healthz`, every edge agent is ready, and every site's
    /// route table lists every exported service at exactly the sites that export it.
    pub async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        let started = Instant::now();
        let mut last = String::new();
        loop {
            if let Some((name, st, log)) = self.procs.get_mut().exited() {
                bail!("{name} exited ({st}):\n{log}");
            }
            match self.readiness().await {
                Ok(()) => {
                    say(format!(
                        "all sites ready: every site routes to every service ({:.1} s)",
                        started.elapsed().as_secs_f64()
                    ));
                    return Ok(());
                }
                Err(why) => {
                    if why != last {
                        say(format!("waiting: {why}"));
                        last = why;
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("not ready after {within:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn get(&self, port: u16, path: &str) -> Result<(u16, String), String> {
        self.http
            .get_text(&format!("127.0.0.1:{port}"), path, Duration::from_secs(2))
            .await
    }

    async fn readiness(&self) -> Result<(), String> {
        for s in &self.topology.sites {
            for a in &s.apps {
                match self.get(a.port, "/healthz").await {
                    Ok((200, _)) => {}
                    Ok((c, _)) => return Err(format!("{} at {} answers {c}", a.process(), s.name)),
                    Err(e) => return Err(format!("{} at {}: {e}", a.process(), s.name)),
                }
            }
            match self.get(s.admin_port, "/readyz").await {
                Ok((200, _)) => {}
                Ok((_, b)) => return Err(format!("edge agent at {}: {}", s.name, b.trim())),
                Err(e) => return Err(format!("edge agent at {}: {e}", s.name)),
            }
            let routes = self.routes(s.name).await?;
            for service in ALL_EXPORTS {
                let want = self.topology.exporters(service);
                let have = destinations(&routes, service);
                if have != want {
                    return Err(format!(
                        "site {} routes {service} to {have:?}, expecting {want:?}",
                        s.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// The route table site `site`'s edge agent follows (its `/routes`).
    pub async fn routes(&self, site: &str) -> Result<Value, String> {
        let s = self
            .topology
            .site(site)
            .ok_or_else(|| format!("no site {site}"))?;
        let (code, body) = self.get(s.admin_port, "/routes").await?;
        if code != 200 {
            return Err(format!("{site}'s /routes answered {code}"));
        }
        serde_json::from_str(&body).map_err(|e| e.to_string())
    }

    /// The admin socket of `site`'s federationd.
    pub fn admin_socket(&self, site: &str) -> PathBuf {
        self.opts.dir.join(site).join("admin.sock")
    }

    /// Runs `federationctl args` against `site`'s federationd; its standard output.
    pub fn federationctl(&self, site: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = std::process::Command::new(self.opts.bin_dir.join("federationctl"))
            .args(args)
            .env("MULTIMESH_ADMIN_SOCKET", self.admin_socket(site))
            .output()?;
        if !out.status.success() {
            bail!(
                "federationctl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
                    .trim()
                    .trim_start_matches("error: ")
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The front end's URL.
    pub fn frontend_url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.topology.frontend_port())
    }

    /// The status page's URL.
    pub fn status_url(&self) -> String {
        status::url(([127, 0, 0, 1], self.topology.status_port).into())
    }

    /// Stops every process (SIGTERM, SIGKILL after 5 s) and the status page.
    pub async fn stop(mut self) {
        self.status_task.abort();
        self.procs.get_mut().stop_all(Duration::from_secs(5)).await;
        // The mesh sites' API servers and istiods stop when the demo is dropped (MeshCluster's Drop).
        say(format!(
            "stopped every process (state and logs kept in {})",
            self.opts.dir.display()
        ));
    }
}

/// Every name the app exports.
pub const ALL_EXPORTS: [&str; 6] = [
    "booking",
    "notification",
    "payment",
    "tour-catalog",
    "tour-catalog-v1",
    "tour-catalog-v2",
];

/// The process name of `site`'s edge agent.
pub fn edge_name(site: &str) -> String {
    format!("{site}/edge-agent")
}

/// The sites a route table (an agent's `/routes`) sends `service` to, sorted.
pub fn destinations(routes: &Value, service: &str) -> Vec<String> {
    let mut v: Vec<String> = routes["routes"]["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["name"] == service)
        .flat_map(|s| s["destinations"].as_array().cloned().unwrap_or_default())
        .filter_map(|d| d["site"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

fn check_ports_free(t: &Topology) -> anyhow::Result<()> {
    let mut ports = vec![t.status_port];
    for (_, m) in t.mesh_sites() {
        ports.extend(m.ports());
        ports.push(t.service_port);
    }
    for s in &t.sites {
        ports.extend([s.federation_port, s.egress_port, s.admin_port]);
        ports.extend(s.ingress_port);
        ports.extend(s.apps.iter().map(|a| a.port));
    }
    for p in ports {
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", p)) {
            bail!(
                "port {p} on 127.0.0.1 is taken ({e}): is another demo running? Choose other ports with --port-base"
            );
        }
    }
    Ok(())
}

fn write_pki(dir: &Path, t: &Topology) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let ca = identity::init_ca(topology::TRUST_DOMAIN, 365)?;
    identity::write_file(&dir.join("ca.pem"), &ca.cert_pem, false)?;
    identity::write_file(&dir.join("ca-key.pem"), &ca.key_pem, true)?;
    for s in &t.sites {
        for role in Role::ALL {
            let id = SiteId::new(topology::TRUST_DOMAIN, s.name, role)?;
            identity::issue_to(dir, &ca, &id, Validity::days(90))?;
        }
    }
    Ok(())
}
