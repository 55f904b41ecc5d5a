//! `--meshes`: sites `m` and `n` are Kubernetes sites with a real Istio mesh each, with their
//! own API server (upstream kube-apiserver) and istiod, and one sidecar each (upstream
//! istio-agent running upstream Envoy): at m the walkthrough client's, at n its app's. They come
//! from the test environments the test suite uses (scripts/kube-testenv.sh,
//! scripts/istio-testenv.sh: built once from their pinned Go modules and cached). federationd at
//! each runs the kubernetes backend with mesh `istio`: it imports the federation's services
//! into the mesh, exports what the cluster's ServiceExports name (n's tour-catalog-v3), and
//! renders the TrafficSplit the walkthrough applies in m's cluster into a VirtualService, which
//! the client's Envoy follows.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::supervisor::Supervisor;
use super::topology::{Mesh, NAMESPACE};

/// The repository this demo was built from (its scripts and vendored CRDs).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A mesh site's cluster.
pub struct MeshCluster {
    /// The site.
    pub site: String,
    /// Its folder (the test environment's DIR).
    pub dir: PathBuf,
    url: String,
    token: String,
    ca: PathBuf,
}

fn script(name: &str) -> PathBuf {
    repo_root().join("scripts").join(name)
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The REST path of an object (the few kinds the demo writes).
fn path_of(obj: &Value) -> anyhow::Result<String> {
    let api = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let ns = obj["metadata"]["namespace"].as_str();
    let plural = match kind {
        "" => bail!("object without a kind: {obj}"),
        k => format!("{}s", k.to_ascii_lowercase()),
    };
    let base = if api.contains('/') {
        format!("/apis/{api}")
    } else {
        format!("/api/{api}")
    };
    Ok(match ns {
        Some(ns) => format!("{base}/namespaces/{ns}/{plural}/{name}"),
        None => format!("{base}/{plural}/{name}"),
    })
}

impl MeshCluster {
    /// Builds (once, cached) the API server, etcd, istiod and istio-agent.
    pub fn install() -> anyhow::Result<()> {
        for s in ["kube-testenv.sh", "istio-testenv.sh"] {
            run(
                Command::new("bash").arg(script(s)).arg("install"),
                &format!("{s} install"),
            )?;
        }
        Ok(())
    }

    /// Starts the API server and etcd of `site` in `dir`, installs the CRDs and federationd's
    /// shipped namespace and RBAC, then starts istiod ([`MeshCluster::install`] first).
    pub fn start(dir: &Path, site: &str, mesh: Mesh) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        run(
            Command::new("bash")
                .arg(script("kube-testenv.sh"))
                .args(["start"])
                .arg(dir)
                .arg(site)
                .env("MULTIMESH_KUBE_PORT_BASE", mesh.kube_base.to_string()),
            &format!("kube-testenv.sh start (site {site})"),
        )?;
        let env = std::fs::read_to_string(dir.join(site).join("env"))?;
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::to_string)
                .unwrap_or_default()
        };
        let c = Self {
            site: site.to_string(),
            dir: dir.to_path_buf(),
            url: get("URL"),
            token: get("TOKEN"),
            ca: PathBuf::from(get("CA")),
        };
        let crds = repo_root().join("vendor/crds");
        for folder in ["istio", "mcs", "smi"] {
            for f in std::fs::read_dir(crds.join(folder))? {
                let f = f?.path();
                if f.extension().is_some_and(|e| e == "yaml") {
                    c.apply_yaml(&std::fs::read_to_string(&f)?)?;
                }
            }
        }
        // The CRDs are served a moment after they are created.
        for _ in 0..100 {
            if c.call("GET", "/apis/networking.istio.io/v1", None).is_ok()
                && c.call("GET", "/apis/split.smi-spec.io/v1alpha4", None)
                    .is_ok()
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let deploy = repo_root().join("deploy/kubernetes");
        c.apply_yaml(&std::fs::read_to_string(deploy.join("namespace.yaml"))?)?;
        c.apply_yaml(&std::fs::read_to_string(deploy.join("rbac.yaml"))?)?;
        for ns in ["istio-system", NAMESPACE] {
            c.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))?;
        }
        let mut binding: Value = serde_norway::from_str(&std::fs::read_to_string(
            deploy.join("rbac-namespace.yaml"),
        )?)?;
        binding["metadata"]["namespace"] = json!(NAMESPACE);
        c.apply(&binding)?;
        c.apply(&json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "multimesh-edge", "namespace": "multimesh"},
            "spec": {"ports": [{"name": "http", "port": 15080, "protocol": "TCP"}]}}))?;
        run(
            Command::new("bash")
                .arg(script("istio-testenv.sh"))
                .arg("start")
                .arg(dir)
                .arg(site),
            &format!("istio-testenv.sh start (site {site})"),
        )?;
        Ok(c)
    }

    /// Declares the site's app `name` in the cluster, as a Deployment's pods would be: a
    /// Service on `service_port` whose endpoint is the app's sidecar (Envoy's inbound port
    /// `inbound`), and a ServiceExport, from which federationd exports it. The EndpointSlice
    /// names a placeholder pod address (the API server refuses loopback ones); the edge
    /// agent's `[[local]]` entry carries where the sidecar really listens.
    pub fn declare_app(&self, name: &str, service_port: u16, inbound: u16) -> anyhow::Result<()> {
        self.apply(&json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "http", "port": service_port, "targetPort": inbound,
                                "protocol": "TCP", "appProtocol": "http"}]}}))?;
        self.apply(
            &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-1"), "namespace": NAMESPACE,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.7"], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": inbound, "protocol": "TCP"}]}),
        )?;
        self.apply(
            &json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
            "metadata": {"name": name, "namespace": NAMESPACE}}),
        )
    }

    /// `curl` against the API server (a body goes on its standard input): the JSON of a 2xx
    /// answer.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        use std::io::Write as _;
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail-with-body", "-X", method, "--cacert"])
            .arg(&self.ca)
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", self.token));
        if body.is_some() {
            cmd.args([
                "-H",
                "Content-Type: application/apply-patch+yaml",
                "--data-binary",
                "@-",
            ]);
        }
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = if method == "PATCH" {
            format!(
                "{}{path}{sep}fieldManager=multimesh-demo&force=true",
                self.url
            )
        } else {
            format!("{}{path}", self.url)
        };
        let mut child = cmd
            .arg(url)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running curl")?;
        if let (Some(b), Some(mut stdin)) = (body, child.stdin.take()) {
            stdin.write_all(b.to_string().as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "{method} {path}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    }

    /// Server-side apply of one object.
    pub fn apply(&self, obj: &Value) -> anyhow::Result<()> {
        self.call("PATCH", &path_of(obj)?, Some(obj)).map(|_| ())
    }

    /// Deletes one object.
    pub fn delete(&self, obj: &Value) -> anyhow::Result<()> {
        self.call("DELETE", &path_of(obj)?, None).map(|_| ())
    }

    /// Server-side apply of every document of a YAML text.
    fn apply_yaml(&self, text: &str) -> anyhow::Result<()> {
        for doc in serde_norway::Deserializer::from_str(text) {
            let v: Value = serde::Deserialize::deserialize(doc)?;
            if v.is_object() {
                self.apply(&v)?;
            }
        }
        Ok(())
    }

    /// A kubeconfig carrying the `federationd` service account's token (bound to the shipped
    /// roles only), for the site's federationd.
    pub fn federationd_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        let token = self.token_for("multimesh", "federationd", "https://kubernetes.default.svc")?;
        let path = self.dir.join("federationd.kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: {site}\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: federationd\n  user:\n    token: {token}\ncontexts:\n- name: {site}\n  context: {{cluster: {site}, user: federationd}}\ncurrent-context: {site}\n",
                self.url,
                self.ca.display(),
                site = self.site
            ),
        )?;
        Ok(path)
    }

    fn token_for(&self, ns: &str, sa: &str, audience: &str) -> anyhow::Result<String> {
        self.apply(&json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": sa, "namespace": ns}}))?;
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail-with-body", "-X", "POST", "--cacert"])
            .arg(&self.ca)
            .arg("-H")
            .arg(format!("Authorization: Bearer {}", self.token))
            .args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                    "spec": {"audiences": [audience], "expirationSeconds": 86400}})
                .to_string(),
            )
            .arg(format!(
                "{}/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
                self.url
            ));
        let v: Value = serde_json::from_str(&run(&mut cmd, "TokenRequest")?)?;
        v["status"]["token"]
            .as_str()
            .map(str::to_string)
            .context("TokenRequest answered no token")
    }

    /// Starts the sidecar of workload `sa` (its service account, and its `app` label): a
    /// Sidecar resource with `spec` (its listeners: interception mode NONE binds them on
    /// 127.0.0.1), then istio-agent with upstream Envoy, given a token for istiod's CA and
    /// istiod's root certificate as a pod's volumes give them.
    pub fn start_sidecar(
        &self,
        procs: &mut Supervisor,
        site_dir: &Path,
        mesh: Mesh,
        sa: &str,
        mut spec: Value,
    ) -> anyhow::Result<()> {
        spec["workloadSelector"] = json!({"labels": {"app": sa}});
        self.apply(
            &json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
            "metadata": {"name": sa, "namespace": NAMESPACE}, "spec": spec}),
        )?;
        let token = self.token_for(NAMESPACE, sa, "istio-ca")?;
        let dir = site_dir.join("sidecar");
        for d in [
            "var/run/secrets/istio",
            "var/run/secrets/tokens",
            "etc/istio/proxy",
        ] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        std::fs::write(dir.join("var/run/secrets/tokens/istio-token"), token)?;
        let mut root = String::new();
        for _ in 0..100 {
            let cm = self
                .call(
                    "GET",
                    &format!("/api/v1/namespaces/{NAMESPACE}/configmaps/istio-ca-root-cert"),
                    None,
                )
                .unwrap_or(Value::Null);
            if let Some(pem) = cm["data"]["root-cert.pem"].as_str() {
                root = pem.to_string();
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if root.is_empty() {
            bail!("istiod wrote no root certificate into namespace {NAMESPACE}");
        }
        std::fs::write(dir.join("var/run/secrets/istio/root-cert.pem"), root)?;
        let paths = run(
            Command::new("bash")
                .arg(script("istio-testenv.sh"))
                .arg("paths"),
            "istio-testenv.sh paths",
        )?;
        let get = |k: &str| {
            paths
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(PathBuf::from)
                .unwrap_or_default()
        };
        let istiod = std::fs::read_to_string(self.dir.join(&self.site).join("istiod.env"))?;
        let env_of = |k: &str| {
            istiod
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_default()
                .to_string()
        };
        let proxy = json!({
            "binaryPath": get("ENVOY"), "discoveryAddress": env_of("XDS"),
            "controlPlaneAuthPolicy": "NONE", "proxyAdminPort": mesh.sidecar_admin,
            "statusPort": mesh.sidecar_status, "configPath": "./etc/istio/proxy",
            "concurrency": 1, "drainDuration": "1s", "terminationDrainDuration": "1s",
        });
        let bootstrap = repo_root().join("tools/istio/upstream-envoy-bootstrap.json");
        let agent = get("PILOT").with_file_name("pilot-agent");
        procs.spawn_env(
            &format!("{}/sidecar", self.site),
            &agent,
            vec![
                "proxy".into(),
                "sidecar".into(),
                "--domain".into(),
                format!("{NAMESPACE}.svc.cluster.local"),
                "--proxyLogLevel".into(),
                "warning".into(),
            ],
            &dir,
            &site_dir.join("sidecar.log"),
            &[
                ("POD_NAME", format!("{sa}-0")),
                ("POD_NAMESPACE", NAMESPACE.to_string()),
                ("INSTANCE_IP", "127.0.0.1".to_string()),
                ("SERVICE_ACCOUNT", sa.to_string()),
                ("ISTIO_META_CLUSTER_ID", self.site.clone()),
                ("CA_ADDR", env_of("CA")),
                ("ISTIO_BOOTSTRAP", bootstrap.display().to_string()),
                ("ISTIO_META_INTERCEPTION_MODE", "NONE".to_string()),
                ("ISTIO_META_WORKLOAD_NAME", sa.to_string()),
                ("ISTIO_METAJSON_LABELS", json!({"app": sa}).to_string()),
                ("PROXY_CONFIG", proxy.to_string()),
            ],
        )?;
        Ok(())
    }

    /// Stops istiod, the API server and etcd (also when dropped).
    pub fn stop(&self) {
        for s in ["istio-testenv.sh", "kube-testenv.sh"] {
            let _ = Command::new("bash")
                .arg(script(s))
                .arg("stop")
                .arg(&self.dir)
                .status();
        }
    }
}

impl Drop for MeshCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
