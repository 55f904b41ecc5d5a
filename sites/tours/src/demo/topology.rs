//! The local demo's sites, ports and config files (pure: no I/O).
//!
//! ```text
//!            a (front end, booking)
//!           /  \
//!          b -- c (tour-catalog v1, payment replica)
//!  (payment,     \
//!   notification, node: an edge node, dials c only (notification replica)
//!   tour-catalog v2)
//! ```
//!
//! Every site runs a federationd and an edge agent; the edge node's agent has no listening
//! ingress and is reached through its outbound link to c. tour-catalog is exported by b (v2)
//! and c (v1) under the root name `tour-catalog` and under its versioned name, so a
//! TrafficSplit on the root can shift traffic between versions on different sites.

use std::fmt::Write as _;

use crate::app::Kind;

/// The federation's trust domain.
pub const TRUST_DOMAIN: &str = "multimesh.local";
/// The app's namespace.
pub const NAMESPACE: &str = "tours";
/// The port every app service is known by in the federation (without `--meshes`).
pub const SERVICE_PORT: u16 = 80;

/// One app process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct App {
    /// Which service.
    pub kind: Kind,
    /// Its version.
    pub version: &'static str,
    /// Names it is exported under (none: only reached directly, like the front end).
    pub exports: Vec<&'static str>,
    /// Its listening port.
    pub port: u16,
}

impl App {
    /// Process name, e.g. `tour-catalog-v2`.
    pub fn process(&self) -> String {
        match self.kind {
            Kind::TourCatalog => format!("{}-{}", self.kind.name(), self.version),
            k => k.name().to_string(),
        }
    }
}

/// One site of the local demo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    /// Name.
    pub name: &'static str,
    /// federationd peer listener.
    pub federation_port: u16,
    /// Edge ingress (none on the edge node).
    pub ingress_port: Option<u16>,
    /// Edge HTTP egress for local callers.
    pub egress_port: u16,
    /// Edge admin (`/metrics`, `/readyz`, `/routes`).
    pub admin_port: u16,
    /// Peers, with the port to dial (none: the peer dials in).
    pub peers: Vec<(&'static str, Option<u16>)>,
    /// On an edge node: the parent site and its ingress port.
    pub parent: Option<(&'static str, u16)>,
    /// The app services running here.
    pub apps: Vec<App>,
    /// The site's mesh (`--meshes`: a Kubernetes site running it), or none.
    pub mesh: Option<Mesh>,
}

impl Site {
    /// The name of the site's mesh, `none` without one.
    pub fn mesh_kind(&self) -> &'static str {
        self.mesh.map_or("none", |m| m.kind)
    }
}

/// The demo's layout on ports `base+1 ..= base+99`.
#[derive(Clone, Debug)]
pub struct Topology {
    /// All sites: a, b, c, node.
    pub sites: Vec<Site>,
    /// The status page.
    pub status_port: u16,
    /// The port every app service is known by: 80, or with `--meshes` `base + 80` (a sidecar
    /// in interception mode NONE listens on the service port itself, and 80 is privileged).
    pub service_port: u16,
}

/// A `--meshes` site's mesh: a Kubernetes cluster of its own running the mesh's control plane,
/// and one sidecar (Envoy) for the site's workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mesh {
    /// Which mesh (`istio`).
    pub kind: &'static str,
    /// First of the ten ports scripts/kube-testenv.sh and istio-testenv.sh use for the site.
    pub kube_base: u16,
    /// The sidecar's Envoy admin port.
    pub sidecar_admin: u16,
    /// Its istio-agent status port.
    pub sidecar_status: u16,
    /// The site's workload behind the sidecar: the walkthrough client (outbound calls through
    /// Envoy on the service port), or the site's app (inbound: Envoy takes its calls on this
    /// port and hands them to the app; the edge agent delivers there).
    pub workload: Workload,
}

/// Which side of a sidecar the site's workload is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// The walkthrough client calls out through Envoy.
    Client,
    /// The site's app is called through Envoy's inbound listener on this port.
    App {
        /// Envoy's inbound port.
        inbound: u16,
    },
}

impl Mesh {
    /// The port the edge agent delivers the site's app calls to: Envoy's inbound listener.
    pub fn inbound(&self) -> Option<u16> {
        match self.workload {
            Workload::App { inbound } => Some(inbound),
            Workload::Client => None,
        }
    }

    /// Every port of the mesh (the cluster's block and the sidecar's).
    pub fn ports(&self) -> Vec<u16> {
        let mut v: Vec<u16> = (0..10).map(|i| self.kube_base + i).collect();
        v.extend([self.sidecar_admin, self.sidecar_status]);
        v.extend(self.inbound());
        v
    }
}

impl Topology {
    /// The edge nodes whose parent is `site`.
    pub fn children(&self, site: &str) -> Vec<&'static str> {
        self.sites
            .iter()
            .filter(|s| s.parent.is_some_and(|(p, _)| p == site))
            .map(|s| s.name)
            .collect()
    }

    /// The layout with ports from `base` (`base + 99` must fit in a port). With `meshes`, two
    /// more sites run Kubernetes with a real Istio mesh each (and `base + 119` must fit): `m`,
    /// whose walkthrough client calls through its Envoy, and `n`, whose app (tour-catalog v3)
    /// is served behind its Envoy. m and n are two sites of the same mesh type, each with its
    /// own control plane; a, b, c and the edge node have none.
    pub fn local(base: u16, meshes: bool) -> Result<Self, String> {
        let top = if meshes { 119 } else { 99 };
        if base.checked_add(top).is_none() || base < 1024 {
            return Err(format!(
                "--port-base {base}: must be in 1024..={} (the demo uses base+1..base+{top})",
                u16::MAX - top
            ));
        }
        let p = |off: u16| base + off;
        let app = |kind, version, exports: &[&'static str], port| App {
            kind,
            version,
            exports: exports.to_vec(),
            port,
        };
        let sites = vec![
            Site {
                name: "a",
                federation_port: p(1),
                ingress_port: Some(p(11)),
                egress_port: p(21),
                admin_port: p(31),
                peers: vec![("b", Some(p(2))), ("c", Some(p(3)))],
                parent: None,
                apps: vec![
                    app(Kind::Frontend, "v1", &[], p(40)),
                    app(Kind::Booking, "v1", &["booking"], p(41)),
                ],
                mesh: None,
            },
            Site {
                name: "b",
                federation_port: p(2),
                ingress_port: Some(p(12)),
                egress_port: p(22),
                admin_port: p(32),
                peers: vec![("a", None), ("c", Some(p(3)))],
                parent: None,
                apps: vec![
                    app(Kind::Payment, "v1", &["payment"], p(50)),
                    app(Kind::Notification, "v1", &["notification"], p(51)),
                    app(
                        Kind::TourCatalog,
                        "v2",
                        &["tour-catalog", "tour-catalog-v2"],
                        p(52),
                    ),
                ],
                mesh: None,
            },
            Site {
                name: "c",
                federation_port: p(3),
                ingress_port: Some(p(13)),
                egress_port: p(23),
                admin_port: p(33),
                peers: vec![("a", None), ("b", None), ("node", None)],
                parent: None,
                apps: vec![
                    app(
                        Kind::TourCatalog,
                        "v1",
                        &["tour-catalog", "tour-catalog-v1"],
                        p(60),
                    ),
                    app(Kind::Payment, "v1", &["payment"], p(61)),
                ],
                mesh: None,
            },
            Site {
                name: "node",
                federation_port: p(4),
                ingress_port: None,
                egress_port: p(24),
                admin_port: p(34),
                peers: vec![("c", Some(p(3)))],
                parent: Some(("c", p(13))),
                apps: vec![app(Kind::Notification, "v1", &["notification"], p(70))],
                mesh: None,
            },
        ];
        let mut sites = sites;
        if meshes {
            // m: calls the others' services through its mesh. n: serves tour-catalog-v3
            // behind its mesh. Both peer with a, b and c, and with each other.
            for s in sites.iter_mut().filter(|s| s.parent.is_none()) {
                s.peers.extend([("m", None), ("n", None)]);
            }
            sites.push(Site {
                name: "m",
                federation_port: p(5),
                ingress_port: None,
                egress_port: p(25),
                admin_port: p(35),
                peers: vec![("a", Some(p(1))), ("b", Some(p(2))), ("c", Some(p(3)))],
                parent: None,
                apps: vec![],
                mesh: Some(Mesh {
                    kind: "istio",
                    kube_base: p(100),
                    sidecar_admin: p(81),
                    sidecar_status: p(82),
                    workload: Workload::Client,
                }),
            });
            sites.push(Site {
                name: "n",
                federation_port: p(6),
                ingress_port: Some(p(16)),
                egress_port: p(26),
                admin_port: p(36),
                peers: vec![
                    ("a", Some(p(1))),
                    ("b", Some(p(2))),
                    ("c", Some(p(3))),
                    ("m", Some(p(5))),
                ],
                parent: None,
                apps: vec![app(Kind::TourCatalog, "v3", &["tour-catalog-v3"], p(75))],
                mesh: Some(Mesh {
                    kind: "istio",
                    kube_base: p(110),
                    sidecar_admin: p(83),
                    sidecar_status: p(84),
                    workload: Workload::App { inbound: p(85) },
                }),
            });
            if let Some(m) = sites.iter_mut().find(|s| s.name == "m") {
                m.peers.push(("n", None));
            }
        }
        Ok(Self {
            sites,
            status_port: p(99),
            service_port: if meshes { p(80) } else { SERVICE_PORT },
        })
    }

    /// The sites with a mesh.
    pub fn mesh_sites(&self) -> impl Iterator<Item = (&Site, Mesh)> {
        self.sites.iter().filter_map(|s| s.mesh.map(|m| (s, m)))
    }

    /// The site called `name`.
    pub fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.name == name)
    }

    /// The front end's port.
    pub fn frontend_port(&self) -> u16 {
        self.sites
            .iter()
            .flat_map(|s| &s.apps)
            .find(|a| a.kind == Kind::Frontend)
            .map_or(0, |a| a.port)
    }

    /// Sites serving each exported name, e.g. `payment` → `[b, c]`.
    pub fn exporters(&self, service: &str) -> Vec<&'static str> {
        self.sites
            .iter()
            .filter(|s| s.apps.iter().any(|a| a.exports.contains(&service)))
            .map(|s| s.name)
            .collect()
    }
}

/// The `[tls]` table of `site`'s daemon with identity `role` (`federation` or `edge`).
fn tls_toml(site: &str, role: &str) -> String {
    format!(
        "[tls]\nca = \"../pki/ca.pem\"\ncert = \"../pki/{site}-{role}.pem\"\nkey = \"../pki/{site}-{role}-key.pem\"\n"
    )
}

/// The federationd config of `site` (paths relative to the site's folder); `exporters` names
/// the sites exporting a service; services are known by `service_port`. A site with a mesh
/// runs the kubernetes backend against the API server of `kubeconfig`.
pub fn federationd_toml(
    site: &Site,
    exporters: impl Fn(&str) -> Vec<&'static str>,
    service_port: u16,
    kubeconfig: Option<&str>,
) -> String {
    let mut o = format!(
        "# federationd of site {name} (written by multimesh-demo)\nsite = \"{name}\"\ntrust_domain = \"{TRUST_DOMAIN}\"\nlisten = \"127.0.0.1:{}\"\nadmin_socket = \"admin.sock\"\nstate_file = \"state.json\"\nready_file = \"ready.json\"\n",
        site.federation_port,
        name = site.name,
    );
    match (site.ingress_port, site.parent) {
        (Some(i), _) => {
            let _ = writeln!(o, "edge_ingress = [\"127.0.0.1:{i}\"]");
        }
        (None, Some((parent, i))) => {
            let _ = writeln!(
                o,
                "edge_ingress = [\"127.0.0.1:{i}\"]\nedge_via = \"{parent}\""
            );
        }
        (None, None) => {}
    }
    if kubeconfig.is_some() {
        o.push_str("backend = \"kubernetes\"\n");
    }
    o.push('\n');
    o.push_str(&tls_toml(site.name, "federation"));
    if let Some(k) = kubeconfig {
        let _ = write!(
            o,
            "\n[kubernetes]\nkubeconfig = \"{k}\"\nmesh = \"{}\"\nresync_seconds = 5\nedge_address = \"127.0.0.1\"\nedge_http_port = {}\n",
            site.mesh_kind(),
            site.egress_port
        );
    }
    o.push_str("\n[sync]\nheartbeat_ms = 500\n");
    for (peer, port) in &site.peers {
        let _ = write!(o, "\n[[peers]]\nsite = \"{peer}\"\n");
        if let Some(p) = port {
            let _ = writeln!(o, "address = \"127.0.0.1:{p}\"");
        }
    }
    // A site with a mesh runs the kubernetes backend: ServiceExports in its cluster declare
    // its exports (the demo writes them), not this file.
    for a in site.apps.iter().filter(|_| site.mesh.is_none()) {
        for name in &a.exports {
            // Every site exporting the same name agrees to share it with the others.
            let others: Vec<&str> = exporters(name)
                .into_iter()
                .filter(|s| *s != site.name)
                .collect();
            let _ = write!(
                o,
                "\n[[services]]\nname = \"{name}\"\nnamespace = \"{NAMESPACE}\"\nports = [{{ name = \"http\", port = {service_port}, protocol = \"http\" }}]\nexport = true\nshare_with = {others:?}\nlabels = {{ version = \"{}\" }}\n",
                a.version
            );
        }
    }
    o
}

/// The edge agent config of `site`, parent of the edge nodes `children` (paths relative to the
/// site's folder); services are known by `service_port`.
pub fn edge_toml(site: &Site, children: &[&str], service_port: u16) -> String {
    let mut o = format!(
        "# edge agent of site {name} (written by multimesh-demo)\nsite = \"{name}\"\ntrust_domain = \"{TRUST_DOMAIN}\"\negress_http = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\nready_file = \"edge-ready.json\"\n",
        site.egress_port,
        site.admin_port,
        name = site.name,
    );
    if let Some(i) = site.ingress_port {
        let _ = writeln!(o, "ingress = \"127.0.0.1:{i}\"");
    }
    if !children.is_empty() {
        let _ = writeln!(o, "children = {children:?}");
    }
    o.push('\n');
    o.push_str(&tls_toml(site.name, "edge"));
    let _ = write!(
        o,
        "\n[routes]\nfederation = \"127.0.0.1:{}\"\n\n[outlier]\nconsecutive_failures = 3\nbase_ejection_ms = 1000\nmax_ejection_ms = 4000\n",
        site.federation_port
    );
    if let Some((parent, port)) = site.parent {
        let _ = write!(
            o,
            "\n[parent]\nsite = \"{parent}\"\naddress = \"127.0.0.1:{port}\"\n"
        );
    }
    // Behind a mesh, calls go to the app's sidecar, which hands them to the app.
    let inbound = site.mesh.and_then(|m| m.inbound());
    for a in &site.apps {
        for name in &a.exports {
            let _ = write!(
                o,
                "\n[[local]]\nname = \"{name}\"\nnamespace = \"{NAMESPACE}\"\nports = [{{ port = {service_port}, upstream = \"127.0.0.1:{}\" }}]\n",
                inbound.unwrap_or(a.port)
            );
        }
    }
    o
}

/// The command-line arguments of `tours` for `app` at `site` (after the program name). With
/// `public`, the front end listens on every interface (in a container), the rest on loopback.
pub fn app_args(site: &Site, app: &App, data_dir: &str, public: bool) -> Vec<String> {
    let host = if public && app.kind == Kind::Frontend {
        "0.0.0.0"
    } else {
        "127.0.0.1"
    };
    let mut args = vec![
        app.kind.name().to_string(),
        "--listen".into(),
        format!("{host}:{}", app.port),
        "--site".into(),
        site.name.to_string(),
        "--service-version".into(),
        app.version.to_string(),
        "--namespace".into(),
        NAMESPACE.to_string(),
    ];
    if matches!(app.kind, Kind::Frontend | Kind::Booking | Kind::Payment) {
        args.push("--egress".into());
        args.push(format!("127.0.0.1:{}", site.egress_port));
    }
    if matches!(app.kind, Kind::Booking | Kind::Notification) {
        args.push("--data".into());
        args.push(format!("{data_dir}/{}.jsonl", app.process()));
    }
    args
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ports_are_distinct_and_in_range() {
        let t = Topology::local(17100, false).unwrap();
        let mut ports: Vec<u16> = vec![t.status_port];
        for s in &t.sites {
            ports.extend([s.federation_port, s.egress_port, s.admin_port]);
            ports.extend(s.ingress_port);
            ports.extend(s.apps.iter().map(|a| a.port));
        }
        let n = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), n, "a port is used twice");
        assert!(ports.iter().all(|p| (17101..=17199).contains(p)));
        assert!(Topology::local(65500, false).is_err());
        assert!(Topology::local(80, false).is_err());
        assert!(Topology::local(65420, true).is_err());
        let m = Topology::local(17100, true).unwrap();
        assert_eq!(m.service_port, 17180);
        assert_eq!(m.site("m").unwrap().mesh_kind(), "istio");
        assert_eq!(m.site("n").unwrap().mesh_kind(), "istio");
        assert!(m.site("a").unwrap().peers.contains(&("m", None)));
        assert!(m.site("m").unwrap().peers.contains(&("n", None)));
        assert!(m.site("n").unwrap().peers.contains(&("m", Some(17105))));
        let mut ports: Vec<u16> = vec![m.status_port, m.service_port];
        for s in &m.sites {
            ports.extend([s.federation_port, s.egress_port, s.admin_port]);
            ports.extend(s.ingress_port);
            ports.extend(s.apps.iter().map(|a| a.port));
            ports.extend(s.mesh.iter().flat_map(Mesh::ports));
        }
        let n = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), n, "a port is used twice with --meshes");
        assert!(ports.iter().all(|p| (17101..=17219).contains(p)));
    }

    #[test]
    fn configs_parse_as_the_daemons_read_them() {
        let t = Topology::local(17100, true).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for s in &t.sites {
            let f = dir.path().join(format!("{}.toml", s.name));
            let kube = s.mesh.map(|_| "kubeconfig");
            std::fs::write(
                &f,
                federationd_toml(s, |n| t.exporters(n), t.service_port, kube),
            )
            .unwrap();
            let cfg = federation::config::Config::load(&f).unwrap();
            assert_eq!(cfg.site, s.name);
            // A mesh site's exports are its cluster's ServiceExports.
            let declared = if s.mesh.is_some() {
                0
            } else {
                s.apps.iter().map(|a| a.exports.len()).sum::<usize>()
            };
            assert_eq!(cfg.services.iter().filter(|x| x.export).count(), declared);
        }
        let n = t.site("n").unwrap();
        let e = edge_toml(n, &[], t.service_port);
        assert!(e.contains("upstream = \"127.0.0.1:17185\""), "{e}");
        assert_eq!(t.exporters("tour-catalog-v3"), vec!["n"]);
        assert_eq!(t.exporters("tour-catalog"), vec!["b", "c"]);
        assert_eq!(t.exporters("payment"), vec!["b", "c"]);
        assert_eq!(t.exporters("notification"), vec!["b", "node"]);
        let node = t.site("node").unwrap();
        let e = edge_toml(node, &t.children(node.name), t.service_port);
        assert!(e.contains("[parent]") && !e.contains("ingress ="), "{e}");
        let c = t.site("c").unwrap();
        assert!(edge_toml(c, &t.children("c"), t.service_port).contains("children = [\"node\"]"));
    }
}
