//! Routes from federationd: real `federationd` and `edge-agent` processes per site. An export on
//! site a reaches b's edge agent as a route over the RouteDiscovery watch, calls flow, and a
//! withdrawal takes the route away. Only a site's own edge agent may watch its routes.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use multimesh_core::dial::{channel_over, connect_site, system_resolver};
use multimesh_core::identity::SiteId;
use multimesh_core::tls::client_config;
use multimesh_proto::routes::v1 as wire;
use multimesh_proto::routes::v1::route_discovery_client::RouteDiscoveryClient;
use support::*;

/// A binary of the workspace, built beside this test (nextest and `cargo test --workspace`
/// build every binary of the workspace).
fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

/// A free port below the kernel's ephemeral range, so that no other test binding port 0 can be
/// handed the same port between this check and the agent binding it.
fn free_port() -> u16 {
    loop {
        let p = 20_000 + (rand_u16() % 7_000);
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn rand_u16() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    (t ^ std::process::id()) as u16
}

struct Daemon {
    dir: PathBuf,
    listen: String,
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(pki: &Pki, root: &Path, site: &str, body: &str) -> Daemon {
        let dir = root.join(format!("fed-{site}"));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = format!(
            "site = \"{site}\"\ntrust_domain = \"{TD}\"\nlisten = \"127.0.0.1:0\"\nadmin_socket = \"admin.sock\"\nstate_file = \"state.json\"\nready_file = \"ready.json\"\n{body}\n[sync]\nheartbeat_ms = 200\nbackoff_min_ms = 50\nbackoff_max_ms = 400\n{}",
            tls_toml(pki, site, multimesh_core::identity::Role::Federation)
        );
        std::fs::write(dir.join("federationd.toml"), cfg).unwrap();
        let log = std::fs::File::create(dir.join("federationd.log")).unwrap();
        let child = Command::new(workspace_bin("federationd"))
            .arg("--config")
            .arg(dir.join("federationd.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let ready = dir.join("ready.json");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            assert!(Instant::now() < deadline, "federationd {site} not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
        Daemon {
            listen: v["listen"].as_str().unwrap().to_string(),
            dir,
            child,
        }
    }

    fn ctl(&self, args: &[&str]) {
        let out = Command::new(workspace_bin("federationctl"))
            .arg("--admin-socket")
            .arg(self.dir.join("admin.sock"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "federationctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `federationctl catalog` at `fed`, as text.
fn catalog(fed: &Daemon) -> String {
    let out = Command::new(workspace_bin("federationctl"))
        .arg("--admin-socket")
        .arg(fed.dir.join("admin.sock"))
        .arg("catalog")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn call(egress: std::net::SocketAddr, host: &str) -> (u16, String) {
    match get(
        &client_h1(),
        &format!("http://{egress}/"),
        &[("host", host)],
    )
    .await
    {
        Ok((s, _, b)) => (s, b),
        Err(e) => (0, e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_become_routes_at_peer_edges_and_withdrawals_remove_them() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let pay = http_backend("a").await;
    let a_edge_port = free_port();
    let fed_b = Daemon::start(&pki, root, "b", "[[peers]]\nsite = \"a\"\n");
    let fed_a = Daemon::start(
        &pki,
        root,
        "a",
        &format!(
            "edge_ingress = [\"127.0.0.1:{a_edge_port}\"]\n[[peers]]\nsite = \"b\"\naddress = \"{}\"\n[[services]]\nname = \"payment\"\nnamespace = \"shop\"\nexport = true\nto = [\"b\"]\nports = [{{ name = \"http\", port = 8080, protocol = \"http\" }}]\n[[services]]\nname = \"ledger\"\nnamespace = \"shop\"\nports = [{{ name = \"http\", port = 9090, protocol = \"http\" }}]\n",
            fed_b.listen
        ),
    );
    let a = Agent::start(
        &pki,
        root,
        "a",
        &format!(
            "ingress = \"127.0.0.1:{a_edge_port}\"\nadmin = \"127.0.0.1:0\"\n[[local]]\nname = \"payment\"\nnamespace = \"shop\"\nports = [{{ port = 8080, upstream = \"{}\" }}]\n[[local]]\nname = \"ledger\"\nnamespace = \"shop\"\nports = [{{ port = 9090, upstream = \"{}\" }}]\n[routes]\nfederation = \"{}\"\n",
            pay.addr, pay.addr, fed_a.listen
        ),
    );
    let b = Agent::start(
        &pki,
        root,
        "b",
        &format!(
            "egress_http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[routes]\nfederation = \"{}\"\n",
            fed_b.listen
        ),
    );
    let pay_host = "payment.shop.svc.clusterset.local";
    eventually(15, "b's edge routes payment to a", || async {
        let (s, body) = call(b.egress(), pay_host).await;
        s == 200 && served_site(&body) == "a"
    })
    .await;
    // a's agent learned the consumer scope of its own export from federationd.
    let (_, routes) = a.admin_get("/routes").await;
    assert!(
        routes.contains("\"consumers\": [\n          \"b\""),
        "{routes}"
    );

    // A runtime export appears, and its withdrawal removes the route.
    let ledger = "ledger.shop.svc.clusterset.local";
    assert_eq!(call(b.egress(), ledger).await.0, 404);
    fed_a.ctl(&["export", "ledger", "-n", "shop"]);
    eventually(15, "ledger routed", || async {
        call(b.egress(), ledger).await.0 == 200
    })
    .await;
    fed_a.ctl(&["unexport", "ledger", "-n", "shop"]);
    eventually(15, "ledger withdrawn", || async {
        call(b.egress(), ledger).await.0 == 404
    })
    .await;
    assert_eq!(call(b.egress(), pay_host).await.0, 200);
    assert!(b.metric("multimesh_edge_route_updates_total", &[]).await >= 3.0);

    // Only the site's own edge agent may watch its routes: neither a peer's federationd (b, a
    // configured peer) nor the site's own federationd identity.
    for (who, tls) in [("b", pki.site_tls("b")), ("a", pki.site_tls("a"))] {
        let connector = tokio_rustls::TlsConnector::from(
            client_config(
                &tls,
                SiteId::new(TD, "a", multimesh_core::identity::Role::Federation).unwrap(),
            )
            .unwrap(),
        );
        let stream = connect_site(
            &system_resolver(),
            &connector,
            "a",
            &fed_a.listen,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let watched = match channel_over(stream).await {
            Ok(ch) => RouteDiscoveryClient::new(ch)
                .watch(wire::WatchRoutesRequest {})
                .await
                .map(|_| ()),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        let err = watched.expect_err("only the site's own edge agent may watch its routes");
        if who == "b" {
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        }
    }

    // The route feed survives its federationd restarting: the last table stays in use.
    drop(fed_b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(call(b.egress(), pay_host).await.0, 200, "last table kept");
}

/// federationd of `site` dialling the consumer `a` at `a_listen`, exporting payment with `extra`
/// service lines, and its edge agent serving payment from `backend`.
fn payment_exporter(
    pki: &Pki,
    root: &Path,
    site: &str,
    a_listen: &str,
    backend: &Backend,
    extra: &str,
) -> (Daemon, Agent) {
    let port = free_port();
    let fed = Daemon::start(
        pki,
        root,
        site,
        &format!(
            "edge_ingress = [\"127.0.0.1:{port}\"]\n[[peers]]\nsite = \"a\"\naddress = \"{a_listen}\"\n[[services]]\nname = \"payment\"\nnamespace = \"shop\"\nexport = true\nports = [{{ name = \"http\", port = 8080, protocol = \"http\" }}]\n{extra}"
        ),
    );
    let agent = Agent::start(
        pki,
        root,
        site,
        &format!(
            "ingress = \"127.0.0.1:{port}\"\nadmin = \"127.0.0.1:0\"\n[[local]]\nname = \"payment\"\nnamespace = \"shop\"\nports = [{{ port = 8080, upstream = \"{}\" }}]\n[routes]\nfederation = \"{}\"\n",
            backend.addr, fed.listen
        ),
    );
    (fed, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_exporting_a_name_it_was_not_given_attracts_none_of_its_traffic() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let fed_a = Daemon::start(
        &pki,
        root,
        "a",
        "[[peers]]\nsite = \"b\"\n[[peers]]\nsite = \"z\"\n",
    );
    let a = Agent::start(
        &pki,
        root,
        "a",
        &format!(
            "egress_http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[routes]\nfederation = \"{}\"\n",
            fed_a.listen
        ),
    );
    let pay_b = http_backend("b").await;
    let pay_z = http_backend("z").await;
    // b owns payment; z, another member of the federation, exports the same name.
    let (_fed_b, _b) = payment_exporter(&pki, root, "b", &fed_a.listen, &pay_b, "");
    let pay_host = "payment.shop.svc.clusterset.local";
    eventually(15, "a routes payment to b", || async {
        served_site(&call(a.egress(), pay_host).await.1) == "b"
    })
    .await;
    let (_fed_z, _z) = payment_exporter(&pki, root, "z", &fed_a.listen, &pay_z, "");
    eventually(15, "a learns z's payment", || async {
        let (_, routes) = a.admin_get("/routes").await;
        routes.contains("\"site\": \"z\"") || catalog(&fed_a).contains("CONFLICT")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..40 {
        let (_, body) = call(a.egress(), pay_host).await;
        assert_ne!(served_site(&body), "z", "z took a share of b's payment");
    }
    assert_eq!(pay_z.calls.load(std::sync::atomic::Ordering::Relaxed), 0);
    // The conflict is reported, naming the exporters.
    let text = catalog(&fed_a);
    assert!(
        text.contains("CONFLICT shop/payment") && text.contains("refused: b,z"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_that_list_each_other_in_share_with_serve_one_name_together() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let fed_a = Daemon::start(
        &pki,
        root,
        "a",
        "[[peers]]\nsite = \"b\"\n[[peers]]\nsite = \"c\"\n",
    );
    let a = Agent::start(
        &pki,
        root,
        "a",
        &format!(
            "egress_http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[routes]\nfederation = \"{}\"\n",
            fed_a.listen
        ),
    );
    let (pay_b, pay_c) = (http_backend("b").await, http_backend("c").await);
    let share = |with: &str| format!("share_with = [\"{with}\"]\n");
    let _b = payment_exporter(&pki, root, "b", &fed_a.listen, &pay_b, &share("c"));
    let _c = payment_exporter(&pki, root, "c", &fed_a.listen, &pay_c, &share("b"));
    let pay_host = "payment.shop.svc.clusterset.local";
    eventually(15, "a routes payment to both b and c", || async {
        let (_, routes) = a.admin_get("/routes").await;
        routes.contains("\"site\": \"b\"") && routes.contains("\"site\": \"c\"")
    })
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(served_site(&call(a.egress(), pay_host).await.1).to_string());
    }
    assert_eq!(seen, ["b", "c"].map(String::from).into());
}
