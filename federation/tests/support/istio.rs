//! A real Istio control plane and real sidecars for tests: upstream istiod (pilot-discovery)
//! against a site's API server, and per workload the upstream istio-agent (pilot-agent) running
//! upstream Envoy, which takes its certificate from istiod's CA and its configuration from
//! istiod's xDS. `scripts/istio-testenv.sh` builds and caches them; when they are missing these
//! tests FAIL and say how to install them. No mocks.
#![allow(dead_code, clippy::unwrap_used)]

use multimesh_core::locks::lock;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::kubeenv::{self as k, KubeEnv};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/istio-testenv.sh")
}

/// Runs `scripts/istio-testenv.sh args`; its standard output. Fails the test with `failure`
/// and what the script said when it does not succeed.
fn testenv(args: &[&std::ffi::OsStr], failure: &str) -> String {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{failure}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn env_file(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The cached binaries: istiod, istioctl, istio-agent and Envoy.
pub struct Tools {
    pub pilot: PathBuf,
    pub istioctl: PathBuf,
    pub agent: PathBuf,
    pub envoy: PathBuf,
}

impl Tools {
    pub fn find() -> Tools {
        let text = testenv(
            &["paths".as_ref()],
            "Istio is not installed: run `scripts/istio-testenv.sh install` (scripts/test.sh does)",
        );
        let get = |k: &str| {
            PathBuf::from(
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}=")))
                    .unwrap_or_else(|| panic!("{k} missing in: {text}")),
            )
        };
        let pilot = get("PILOT");
        Tools {
            agent: pilot.with_file_name("pilot-agent"),
            pilot,
            istioctl: get("ISTIOCTL"),
            envoy: get("ENVOY"),
        }
    }

    /// `istioctl analyze` against the API server of `kubeconfig` in `namespace` (all namespaces
    /// when None): (success, everything it printed).
    pub fn analyze(&self, kubeconfig: &Path, namespace: Option<&str>) -> (bool, String) {
        let mut cmd = Command::new(&self.istioctl);
        cmd.arg("analyze").arg("--kubeconfig").arg(kubeconfig);
        match namespace {
            Some(ns) => cmd.arg("--namespace").arg(ns),
            None => cmd.arg("--all-namespaces"),
        };
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

/// `istioctl validate` (istiod's own validation, offline) on a file: (accepted, output).
pub fn validate(tools: &Tools, file: &Path) -> (bool, String) {
    let out = Command::new(&tools.istioctl)
        .arg("validate")
        .arg("-f")
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The lines of `istioctl analyze` output that report an Error.
pub fn analyze_errors(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("Error ["))
        .map(str::to_string)
        .collect()
}

/// istiod for one site of a [`KubeEnv`]; stopped on drop.
pub struct Istiod {
    pub dir: PathBuf,
    pub site: String,
    /// Plaintext xDS address.
    pub xds: String,
    /// TLS xDS and CA address.
    pub ca: String,
    /// Debug HTTP address.
    pub debug: String,
}

impl Istiod {
    /// Creates istio-system and starts istiod against `site`'s API server (waits for ready).
    pub async fn start(env: &KubeEnv, site: &str) -> Istiod {
        Self::launch(env, site, false).await
    }

    /// [`Istiod::start`], and registers istiod's validation webhook with the API server
    /// (fail-closed, for Istio's kinds), as an Istio install does: while istiod is down,
    /// no Istio object can be written.
    pub async fn start_with_webhook(env: &KubeEnv, site: &str) -> Istiod {
        let istiod = Self::launch(env, site, true).await;
        let e = env_file(&env.site_dir(site).join("istiod.env"));
        let ca = Command::new("base64")
            .arg("-w0")
            .arg(&e["WEBHOOK_CA"])
            .output()
            .unwrap();
        let admin = env.client(site).await;
        k::apply(
            &admin,
            "test-setup",
            &json!({"apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": "istio-validator-istio-system"},
                "webhooks": [{
                    "name": "rev.validation.istio.io",
                    "clientConfig": {"url": format!("https://{}/validate", e["WEBHOOK"]),
                                     "caBundle": String::from_utf8(ca.stdout).unwrap()},
                    "rules": [{"apiGroups": ["networking.istio.io", "security.istio.io"],
                               "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                               "resources": ["*"]}],
                    "failurePolicy": "Fail", "sideEffects": "None",
                    "admissionReviewVersions": ["v1"], "timeoutSeconds": 5}]}),
        )
        .await
        .unwrap();
        istiod
    }

    /// Kills istiod at once (SIGKILL): the control plane is down.
    pub fn kill(&self) {
        testenv(
            &["kill".as_ref(), self.dir.as_os_str(), self.site.as_ref()],
            "istio-testenv kill failed",
        );
    }

    /// Starts a killed istiod again (same ports, same certificate), waiting for ready.
    pub fn restart(&self) {
        testenv(
            &[
                "start".as_ref(),
                self.dir.as_os_str(),
                self.site.as_ref(),
                "--webhook".as_ref(),
            ],
            "istio-testenv start (again) failed",
        );
    }

    async fn launch(env: &KubeEnv, site: &str, webhook: bool) -> Istiod {
        let admin = env.client(site).await;
        k::namespace(&admin, "istio-system").await;
        let mut args = vec!["start".as_ref(), env.dir.path().as_os_str(), site.as_ref()];
        if webhook {
            args.push("--webhook".as_ref());
        }
        testenv(&args, "istio-testenv start failed");
        let e = env_file(&env.site_dir(site).join("istiod.env"));
        Istiod {
            dir: env.dir.path().to_path_buf(),
            site: site.to_string(),
            xds: e["XDS"].clone(),
            ca: e["CA"].clone(),
            debug: e["DEBUG"].clone(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(&self.site).join("istiod.log")).unwrap_or_default()
    }
}

impl Drop for Istiod {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// What a sidecar is: a workload's name, namespace, service account and labels.
pub struct Workload<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub labels: Value,
}

/// One workload's sidecar: istio-agent running upstream Envoy, outside any pod (interception
/// mode NONE: the workload's Sidecar resource binds its listeners). Stopped on drop.
pub struct Sidecar {
    pub name: String,
    pub dir: PathBuf,
    pub admin: u16,
    child: Option<Child>,
}

/// A free loopback port, never the same twice in one test process, from 10000-19999: below
/// the blocks the API servers of concurrent tests take (20000-32009, kubeenv.rs) and below the
/// kernel's ephemeral range.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id();
    let mut given = lock(&GIVEN);
    for i in 0..10_000u32 {
        let p = 10_000 + ((seed.wrapping_add(i.wrapping_mul(7919))) % 10_000) as u16;
        if !given.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            given.push(p);
            return p;
        }
    }
    panic!("no free port");
}

impl Sidecar {
    /// Starts the sidecar of `w` at `site`: its service account is created, and it gets a
    /// token for the `istio-ca` audience and istiod's root certificate (the ConfigMap istiod
    /// writes into every namespace), as a pod's projected volumes would give it.
    pub async fn start(env: &KubeEnv, istiod: &Istiod, root: &Path, w: Workload<'_>) -> Sidecar {
        let tools = Tools::find();
        let admin = env.client(&istiod.site).await;
        k::apply(
            &admin,
            "test-setup",
            &json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": w.service_account, "namespace": w.namespace}}),
        )
        .await
        .unwrap();
        let dir = root.join(format!("sidecar-{}", w.name));
        for d in [
            "var/run/secrets/istio",
            "var/run/secrets/tokens",
            "etc/istio/proxy",
        ] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let token =
            k::service_account_token_for(&admin, w.namespace, w.service_account, "istio-ca").await;
        std::fs::write(dir.join("var/run/secrets/tokens/istio-token"), token).unwrap();
        let key = format!("{}/istio-ca-root-cert", w.namespace);
        let root_pem = || async {
            k::list(&admin, "v1", "ConfigMap", Some(w.namespace))
                .await
                .get(&key)
                .and_then(|c| c["data"]["root-cert.pem"].as_str().map(str::to_string))
        };
        super::eventually(30, "istiod writes istio-ca-root-cert", || async {
            root_pem().await.is_some()
        })
        .await;
        let root_cert = root_pem().await.unwrap();
        std::fs::write(dir.join("var/run/secrets/istio/root-cert.pem"), root_cert).unwrap();
        let admin_port = free_port();
        let status_port = free_port();
        let proxy_config = json!({
            "binaryPath": tools.envoy,
            "discoveryAddress": istiod.xds,
            "controlPlaneAuthPolicy": "NONE",
            "proxyAdminPort": admin_port,
            "statusPort": status_port,
            "configPath": "./etc/istio/proxy",
            "drainDuration": "1s",
            "terminationDrainDuration": "1s",
        });
        let bootstrap = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tools/istio/upstream-envoy-bootstrap.json");
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let child = Command::new(&tools.agent)
            .args(["proxy", "sidecar", "--domain"])
            .arg(format!("{}.svc.cluster.local", w.namespace))
            .current_dir(&dir)
            .env("POD_NAME", format!("{}-0", w.name))
            .env("POD_NAMESPACE", w.namespace)
            .env("INSTANCE_IP", "127.0.0.1")
            .env("SERVICE_ACCOUNT", w.service_account)
            .env("ISTIO_META_CLUSTER_ID", &istiod.site)
            .env("CA_ADDR", &istiod.ca)
            .env("ISTIO_BOOTSTRAP", bootstrap)
            .env("ISTIO_META_INTERCEPTION_MODE", "NONE")
            .env("ISTIO_META_WORKLOAD_NAME", w.name)
            .env("ISTIO_METAJSON_LABELS", w.labels.to_string())
            .env("PROXY_CONFIG", proxy_config.to_string())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn pilot-agent");
        let mut s = Sidecar {
            name: w.name.to_string(),
            dir,
            admin: admin_port,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("sidecar {} exited with {status}:\n{}", s.name, s.log());
            }
            let stats = s.stats();
            // Configured: clusters from istiod, and the workload's certificate from istiod's
            // CA. (Listeners come when there is a service to listen for, and Envoy asks for the
            // certificate over SDS only once a cluster or listener uses it.)
            if stats
                .get("cluster_manager.cds.update_success")
                .is_some_and(|v| *v > 0)
                && s.log().contains("generated new workload certificate")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sidecar {} not configured within 60 s: {:?}\n{}",
                s.name,
                stats
                    .iter()
                    .filter(|(k, _)| k.contains("update_") || k.contains("warming"))
                    .collect::<Vec<_>>(),
                s.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Envoy's counters and gauges (admin `/stats`).
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let Ok((200, text)) = get(("127.0.0.1", self.admin), "127.0.0.1", "/stats") else {
            return BTreeMap::new();
        };
        text.lines()
            .filter_map(|l| l.split_once(": "))
            .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
            .collect()
    }

    /// Envoy's configuration (admin `/config_dump`, with endpoints).
    pub fn config_dump(&self) -> Value {
        let (_, text) = get(
            ("127.0.0.1", self.admin),
            "127.0.0.1",
            "/config_dump?include_eds",
        )
        .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Every xDS update Envoy refused (counters ending in `update_rejected` that are not 0).
    pub fn rejected(&self) -> Vec<(String, u64)> {
        self.stats()
            .into_iter()
            .filter(|(k, v)| k.ends_with("update_rejected") && *v > 0)
            .collect()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        // pilot-agent leads its own process group with Envoy in it: stop both.
        if let Some(mut c) = self.child.take() {
            let group = format!("-{}", c.id());
            let _ = Command::new("kill")
                .args(["-TERM", "--", &group])
                .stderr(std::process::Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = Command::new("kill")
                .args(["-KILL", "--", &group])
                .stderr(std::process::Stdio::null())
                .status();
            let _ = c.wait();
        }
    }
}

/// The dynamic clusters and routes of a config dump, by name.
pub fn dump_section(dump: &Value, type_suffix: &str) -> Vec<Value> {
    dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["@type"].as_str().unwrap_or("").ends_with(type_suffix))
        .cloned()
        .collect()
}

/// One HTTP/1.1 GET on a new connection: (status, body).
pub fn get(addr: (&str, u16), host: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut c = Http1::connect(addr)?;
    c.get(host, path, &[])
}

/// A keep-alive HTTP/1.1 client connection (enough for GETs through a proxy).
pub struct Http1 {
    reader: BufReader<TcpStream>,
}

impl Http1 {
    pub fn connect(addr: (&str, u16)) -> std::io::Result<Http1> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Http1 {
            reader: BufReader::new(s),
        })
    }

    /// Sends a GET and reads the whole response: (status, body).
    pub fn get(
        &mut self,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> std::io::Result<(u16, String)> {
        let mut req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.reader.get_mut().write_all(req.as_bytes())?;
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(&format!("bad status line {line:?}")))?;
        let (mut length, mut chunked) = (None, false);
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                if k == "content-length" {
                    length = v.parse::<usize>().ok();
                } else if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| bad("bad chunk size"))?;
                let mut chunk = vec![0; n + 2];
                self.reader.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            let n = length.ok_or_else(|| bad("response without content-length"))?;
            body.resize(n, 0);
            self.reader.read_exact(&mut body)?;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// An HTTP/1.1 server on loopback answering every GET with `name` (keep-alive), as a
/// workload; stopped on drop.
pub struct App {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl App {
    pub fn start(name: &str) -> App {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (name, flag) = (name.to_string(), stop.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let name = name.clone();
                std::thread::spawn(move || serve(conn, &name));
            }
        });
        App { port, stop }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(conn: TcpStream, name: &str) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim_end().is_empty() {
                break;
            }
        }
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{name}",
            name.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}
