//! Test support of the edge agent: real `edge-agent` processes on loopback, and real backends
//! (an HTTP/1.1 + h2c server that says which site served it, a gRPC health server, a TCP
//! echo server) running in the test process on real sockets.
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[path = "../../../federation/tests/support/common.rs"]
mod common;
pub use common::*;
pub mod netns;

/// An HTTP backend (HTTP/1.1 and h2c) labelled with its site. `GET /fail` answers 503;
/// other calls answer 200 with `site=<label> version=<v> path=<p> traceparent=<t> body=<b>`.
pub struct Backend {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn http_backend(label: &str) -> Backend {
    http_backend_on(label, std::net::TcpListener::bind("127.0.0.1:0").unwrap())
}

/// [`http_backend`] on a listener made elsewhere (in another network namespace, say).
pub fn http_backend_on(label: &str, l: std::net::TcpListener) -> Backend {
    l.set_nonblocking(true).unwrap();
    let l = TcpListener::from_std(l).unwrap();
    let addr = l.local_addr().unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let (label, c) = (label.to_string(), calls.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let (label, c) = (label.clone(), c.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (label, c) = (label.clone(), c.clone());
                    async move {
                        c.fetch_add(1, Ordering::Relaxed);
                        let version = format!("{:?}", req.version());
                        let path = req.uri().path().to_string();
                        let tp = req
                            .headers()
                            .get("traceparent")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let host = req
                            .headers()
                            .get(http::header::HOST)
                            .map(|v| v.to_str().unwrap().to_string())
                            .or_else(|| req.uri().authority().map(|a| a.to_string()))
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let status = if path == "/fail" {
                            StatusCode::SERVICE_UNAVAILABLE
                        } else {
                            StatusCode::OK
                        };
                        let text = format!(
                            "site={label} version={version} path={path} host={host} traceparent={tp} body={}",
                            String::from_utf8_lossy(&body)
                        );
                        let mut r = Response::new(Full::new(Bytes::from(text)));
                        *r.status_mut() = status;
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Backend { addr, calls, task }
}

/// A TCP echo server that prefixes each reply with its label.
pub async fn tcp_echo(label: &str) -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let (label, c) = (label.to_string(), calls.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = l.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::Relaxed);
            let label = label.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let n = match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut out = format!("{label}:").into_bytes();
                    out.extend_from_slice(&buf[..n]);
                    if tcp.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Backend { addr, calls, task }
}

/// A TCP server that reads what callers send and never answers.
pub async fn silent_backend() -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let task = tokio::spawn(async move {
        let mut held = tokio::task::JoinSet::new();
        loop {
            let Ok((mut tcp, _)) = l.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::Relaxed);
            held.spawn(async move {
                let mut buf = vec![0u8; 4096];
                while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    Backend { addr, calls, task }
}

/// A gRPC server (the standard health service, reporting SERVING for `multimesh.demo`).
pub async fn grpc_backend() -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("multimesh.demo", tonic_health::ServingStatus::Serving)
        .await;
    let task = tokio::spawn(async move {
        let _keep = reporter;
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l))
            .await;
    });
    Backend {
        addr,
        calls: Arc::default(),
        task,
    }
}

/// Where an agent listens, from its ready file.
#[derive(Clone, Debug, Default)]
pub struct Bound {
    pub ingress: Option<SocketAddr>,
    pub egress_http: Option<SocketAddr>,
    pub egress_tcp: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub dns: Option<SocketAddr>,
}

/// A real `edge-agent` process.
pub struct Agent {
    pub site: String,
    pub dir: PathBuf,
    pub bound: Bound,
    child: Option<Child>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `[tls]` table of the config of `site`'s `role` daemon.
pub fn tls_toml(pki: &Pki, site: &str, role: multimesh_core::identity::Role) -> String {
    let (cert, key) = pki.ensure(site, role);
    format!(
        "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.dir.join("ca.pem").display(),
        cert.display(),
        key.display()
    )
}

impl Agent {
    /// Writes `config` (TOML; `site`, `trust_domain`, `ready_file` and `[tls]` are added) and
    /// starts the agent, waiting for its ready file.
    pub fn start(pki: &Pki, root: &Path, site: &str, config: &str) -> Agent {
        Self::start_in(pki, root, site, config, None)
    }

    /// [`Agent::start`], inside network namespace `ns` when given.
    pub fn start_in(
        pki: &Pki,
        root: &Path,
        site: &str,
        config: &str,
        ns: Option<&netns::NetNs>,
    ) -> Agent {
        let dir = root.join(format!("edge-{site}"));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = format!(
            "site = \"{site}\"\ntrust_domain = \"{TD}\"\nready_file = \"ready.json\"\n{config}\n{}",
            tls_toml(pki, site, multimesh_core::identity::Role::Edge)
        );
        std::fs::write(dir.join("edge.toml"), cfg).unwrap();
        let _ = std::fs::remove_file(dir.join("ready.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("edge.log"))
            .unwrap();
        let bin = env!("CARGO_BIN_EXE_edge-agent");
        let child = ns
            .map_or_else(|| Command::new(bin), |ns| ns.command(bin))
            .arg("run")
            .arg("--config")
            .arg(dir.join("edge.toml"))
            .env("RUST_LOG", "info,edge_agent=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn edge-agent");
        let mut a = Agent {
            site: site.to_string(),
            dir: dir.clone(),
            bound: Bound::default(),
            child: Some(child),
        };
        let ready = dir.join("ready.json");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            if let Some(status) = a.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("edge-agent {site} exited with {status}:\n{}", a.log());
            }
            assert!(
                Instant::now() < deadline,
                "edge-agent {site} not ready:\n{}",
                a.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
        let addr = |k: &str| v[k].as_str().map(|s| s.parse().unwrap());
        a.bound = Bound {
            ingress: addr("ingress"),
            egress_http: addr("egress_http"),
            admin: addr("admin"),
            dns: addr("dns"),
            egress_tcp: v["egress_tcp"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().parse().unwrap())
                .collect(),
        };
        a
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("edge.log")).unwrap_or_default()
    }

    pub fn ingress(&self) -> String {
        self.bound.ingress.unwrap().to_string()
    }

    /// The DNS responder's address, as text.
    pub fn bound_dns(&self) -> Option<String> {
        self.bound.dns.map(|a| a.to_string())
    }

    pub fn egress(&self) -> SocketAddr {
        self.bound.egress_http.unwrap()
    }

    /// SIGTERM, then waits up to `limit` for the process to exit; returns how long it took, or
    /// `None` (and SIGKILLs it) when it did not exit in time.
    pub fn terminate(&mut self, limit: Duration) -> Option<Duration> {
        let child = self.child.as_mut()?;
        let sent = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        while sent.elapsed() < limit {
            if child.try_wait().unwrap().is_some() {
                self.child = None;
                return Some(sent.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Writes the route file `routes.yaml` in the agent's folder (before or after start).
    pub fn write_routes(root: &Path, site: &str, yaml: &str) -> PathBuf {
        let dir = root.join(format!("edge-{site}"));
        let p = dir.join("routes.yaml");
        // Write then rename, as an operator's tooling would: the agent never sees half a file.
        multimesh_core::identity::write_file(&p, yaml, false).unwrap();
        p
    }

    /// GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{path}", self.bound.admin.unwrap());
        let (s, _, b) = get(&client_h1(), &url, &[]).await.unwrap();
        (s, b)
    }

    /// A Prometheus sample's value (sum over series whose labels contain every `labels` item).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let (_, text) = self.admin_get("/metrics").await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| labels.iter().all(|x| l.contains(x)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

pub type TestClient = Client<HttpConnector, http_body_util::Full<Bytes>>;

pub fn client_h1() -> TestClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http()
}

pub fn client_h2c() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// GET `url` with extra headers; returns (status, headers, body).
pub async fn get(
    c: &TestClient,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, BTreeMap<String, String>, String), String> {
    request(c, "GET", url, headers, "").await
}

pub async fn request(
    c: &TestClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, BTreeMap<String, String>, String), String> {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let hs = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, hs, String::from_utf8_lossy(&body).to_string()))
}

/// A loopback address on a free port between the API servers' test blocks (20000-31999) and
/// the ephemeral range (32768 and up). A process killed and restarted on it gets it back: no
/// outbound connection (nor a self-connect of a caller redialling it) can take it meanwhile.
pub fn addr_below_ephemeral_range() -> String {
    let start = rand::random::<u16>() % 768;
    (0..768u16)
        .map(|i| 32000 + (start + i) % 768)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .map(|p| format!("127.0.0.1:{p}"))
        .expect("a free port in 32000-32767")
}

/// The `site=` label a backend put in its answer.
pub fn served_site(body: &str) -> &str {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("site="))
        .unwrap_or("?")
}

/// A GET made from inside network namespace `ns` (one HTTP/1.1 connection): status and body.
pub async fn get_in(
    ns: &netns::NetNs,
    addr: SocketAddr,
    path: &str,
    host: &str,
) -> Result<(u16, String), String> {
    let tcp = ns
        .connect(addr)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nonblocking(true).unwrap();
    let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(http::header::HOST, host)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

/// An agent config's common part: an admin listener, routes from `routes.yaml`, and `extra`.
pub fn agent_toml(extra: &str) -> String {
    format!("admin = \"127.0.0.1:0\"\n{extra}\n[routes]\nfile = \"routes.yaml\"\n")
}

/// A `[[local]]` service of namespace `shop` with one port served by `upstream`.
pub fn local(name: &str, port: u16, upstream: SocketAddr) -> String {
    format!(
        "[[local]]\nname = \"{name}\"\nnamespace = \"shop\"\nports = [{{ port = {port}, upstream = \"{upstream}\" }}]\n"
    )
}

/// One GET over HTTP/2 straight to an edge agent's ingress at `addr` (site `server_site`),
/// presenting `tls`: what a peer site's edge agent would send. `Err` when the connection or
/// the call is refused.
pub async fn call_ingress(
    tls: &multimesh_core::tls::SiteTls,
    server_site: &str,
    addr: SocketAddr,
    authority: &str,
) -> Result<(u16, String), String> {
    let expected = multimesh_core::identity::SiteId::new(
        TD,
        server_site,
        multimesh_core::identity::Role::Edge,
    )
    .unwrap();
    let cfg = multimesh_core::tls::client_config(tls, expected).map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("peer.invalid").unwrap();
    let s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(format!("https://{authority}/"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let err = resp
        .headers()
        .get("x-multimesh-error")
        .map(|v| v.to_str().unwrap_or("").to_string())
        .unwrap_or_default();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        format!("{err} {}", String::from_utf8_lossy(&body.to_bytes())),
    ))
}
