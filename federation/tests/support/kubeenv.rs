//! Real Kubernetes API servers for tests: `scripts/kube-testenv.sh` starts one etcd and one
//! kube-apiserver (upstream, built from their Go modules at the versions pinned in tools/) per
//! site on loopback. No mocks:
//! when the API server is not installed these tests FAIL and say how to install it.
#![allow(dead_code, clippy::unwrap_used)]

use multimesh_core::locks::lock;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};

/// Running API servers, one per site; stopped on drop.
pub struct KubeEnv {
    pub dir: tempfile::TempDir,
    pub sites: Vec<String>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kube-testenv.sh")
}

/// A block of 10 * `n` loopback ports below the ephemeral range that are free right now, and
/// that no other test of this process was given (tests run concurrently).
fn port_base(n: usize) -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let seed = std::process::id() as u64 * 1_000_003 + nanos;
    let mut given = lock(&GIVEN);
    for attempt in 0..200u64 {
        let base = 20000 + ((seed.wrapping_mul(7919) + attempt * 37) % 120) as u16 * 100;
        // Blocks are 100 apart, and one test takes at most 10 sites.
        if given.contains(&base) {
            continue;
        }
        let all_free = (0..n as u16 * 10)
            .all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if all_free {
            given.push(base);
            return base;
        }
    }
    panic!("no free block of ports for the API servers");
}

impl KubeEnv {
    /// Starts an API server per site (about 15 s; they start in parallel).
    pub fn start(sites: &[&str]) -> KubeEnv {
        let path = Command::new("bash")
            .arg(script())
            .arg("path")
            .output()
            .unwrap();
        assert!(
            path.status.success(),
            "kube-apiserver is not installed: run `scripts/kube-testenv.sh install` (scripts/test.sh does). {}",
            String::from_utf8_lossy(&path.stderr)
        );
        let dir = super::test_dir();
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .args(sites)
            .env(
                "MULTIMESH_KUBE_PORT_BASE",
                port_base(sites.len()).to_string(),
            )
            .output()
            .unwrap();
        let env = KubeEnv {
            dir,
            sites: sites.iter().map(|s| s.to_string()).collect(),
        };
        assert!(
            out.status.success(),
            "kube-testenv start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        env
    }

    pub fn site_dir(&self, site: &str) -> PathBuf {
        self.dir.path().join(site)
    }

    /// The admin kubeconfig of a site (system:masters: test set-up only).
    pub fn kubeconfig(&self, site: &str) -> PathBuf {
        self.site_dir(site).join("kubeconfig")
    }

    fn env_of(&self, site: &str) -> BTreeMap<String, String> {
        std::fs::read_to_string(self.site_dir(site).join("env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Writes a kubeconfig for `token` (e.g. a service account's) and returns its path.
    pub fn kubeconfig_with_token(&self, site: &str, name: &str, token: &str) -> PathBuf {
        let e = self.env_of(site);
        let path = self.site_dir(site).join(format!("{name}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: {site}\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: {site}\n  context: {{cluster: {site}, user: {name}}}\ncurrent-context: {site}\n",
                e["URL"], e["CA"]
            ),
        )
        .unwrap();
        path
    }

    /// An admin client of a site.
    pub async fn client(&self, site: &str) -> Client {
        client_from(&self.kubeconfig(site)).await
    }

    /// SIGKILLs a site's API server (etcd keeps the data).
    pub fn kill_apiserver(&self, site: &str) {
        let pid = std::fs::read_to_string(self.site_dir(site).join("apiserver.pid")).unwrap();
        let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Starts a killed API server again (same etcd, same port) and waits until it is ready.
    pub fn restart_apiserver(&self, site: &str) {
        let out = Command::new("bash")
            .arg(script())
            .arg("restart-apiserver")
            .arg(self.dir.path())
            .arg(site)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "restart failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for KubeEnv {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

pub async fn client_from(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

fn crd_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
        "customresourcedefinitions",
    )
}

/// The non-empty documents of a multi-document YAML text.
pub fn yaml_documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// The non-empty YAML documents of a file.
pub fn documents(path: &Path) -> Vec<Value> {
    yaml_documents(
        &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
}

/// The upstream CRDs of `vendor/crds/<folder>` (every folder when empty).
pub fn upstream_crds(folders: &[&str]) -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vendor/crds");
    assert!(
        root.is_dir(),
        "vendor/crds is missing: these tests install the upstream CRDs from it"
    );
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .filter(|p| {
            folders.is_empty() || folders.contains(&p.file_name().unwrap().to_str().unwrap())
        })
        .collect();
    dirs.sort();
    for d in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        files.sort();
        for f in files {
            for v in documents(&f) {
                if v["kind"] == "CustomResourceDefinition" {
                    out.push(v);
                }
            }
        }
    }
    out
}

/// Installs CRDs and waits until every one is established.
pub async fn install_crds(client: &Client, crds: &[Value]) {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &crd_resource());
    for crd in crds {
        let name = crd["metadata"]["name"].as_str().unwrap();
        let mut crd = crd.clone();
        if let Some(m) = crd["metadata"].as_object_mut() {
            m.remove("creationTimestamp");
        }
        let obj: DynamicObject = serde_json::from_value(crd.clone()).unwrap();
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("installing CRD {name}: {e}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for crd in crds {
        let name = crd["metadata"]["name"].as_str().unwrap();
        loop {
            let o = api.get(name).await.unwrap();
            let est = o.data["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True");
            if est {
                break;
            }
            assert!(Instant::now() < deadline, "CRD {name} not established");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The API resource of `apiVersion`/`kind` and whether it is namespaced, by discovery; `None`
/// when the server does not serve it.
pub async fn try_resource(
    client: &Client,
    api_version: &str,
    kind: &str,
) -> Option<(ApiResource, bool)> {
    let (g, v) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let (ar, caps) = kube::discovery::pinned_kind(client, &GroupVersionKind::gvk(g, v, kind))
        .await
        .ok()?;
    Some((ar, matches!(caps.scope, kube::discovery::Scope::Namespaced)))
}

/// Like [`try_resource`], for a kind the test needs served.
pub async fn resource(client: &Client, api_version: &str, kind: &str) -> (ApiResource, bool) {
    try_resource(client, api_version, kind)
        .await
        .unwrap_or_else(|| panic!("{api_version} {kind} is not served"))
}

/// A dynamic API for `obj`'s kind (namespaced to its namespace).
pub async fn api_for(client: &Client, obj: &Value) -> Api<DynamicObject> {
    let (ar, namespaced) = resource(
        client,
        obj["apiVersion"].as_str().unwrap(),
        obj["kind"].as_str().unwrap(),
    )
    .await;
    if namespaced {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
        Api::namespaced_with(client.clone(), ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    }
}

/// Server-side applies `obj` as `manager` (the API server validates it against its CRD).
pub async fn apply(
    client: &Client,
    manager: &str,
    obj: &Value,
) -> Result<DynamicObject, kube::Error> {
    let api = api_for(client, obj).await;
    let name = obj["metadata"]["name"].as_str().unwrap();
    api.patch(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(obj),
    )
    .await
}

/// Creates a namespace (ignores "already exists").
pub async fn namespace(client: &Client, name: &str) {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    apply(client, "test", &ns).await.unwrap();
}

/// Objects of a kind, optionally in one namespace, by name.
pub async fn list(
    client: &Client,
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
) -> BTreeMap<String, Value> {
    let (ar, _) = resource(client, api_version, kind).await;
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|o| {
            let key = format!(
                "{}/{}",
                o.metadata.namespace.clone().unwrap_or_default(),
                o.metadata.name.clone().unwrap_or_default()
            );
            (key, serde_json::to_value(&o).unwrap())
        })
        .collect()
}

/// A bearer token for a service account (TokenRequest API; no controller-manager needed).
pub async fn service_account_token(client: &Client, ns: &str, sa: &str) -> String {
    service_account_token_for(client, ns, sa, "https://kubernetes.default.svc").await
}

/// A token of service account `ns/sa` for `audience` (TokenRequest).
pub async fn service_account_token_for(
    client: &Client,
    ns: &str,
    sa: &str,
    audience: &str,
) -> String {
    let sa_res = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("", "v1", "ServiceAccount"),
        "serviceaccounts",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &sa_res);
    let req = json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"audiences": [audience], "expirationSeconds": 3600},
    });
    let r: Value = api
        .create_subresource("token", sa, &PostParams::default(), &req)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{sa}: {e}"));
    r["status"]["token"].as_str().unwrap().to_string()
}

/// Deletes the object `obj` names (gone already is fine).
pub async fn delete(client: &Client, obj: &Value) {
    let api = api_for(client, obj).await;
    let name = obj["metadata"]["name"].as_str().unwrap();
    match api.delete(name, &Default::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => panic!("deleting {name}: {e}"),
    }
}

/// Server-side apply with `dryRun=All`: validated and admitted, never stored.
pub async fn apply_dry_run(client: &Client, obj: &Value) -> Result<DynamicObject, kube::Error> {
    let api = api_for(client, obj).await;
    let name = obj["metadata"]["name"].as_str().unwrap();
    api.patch(
        name,
        &PatchParams::apply("dry-run").dry_run(),
        &Patch::Apply(obj),
    )
    .await
}

/// Every document of every `.yaml` file under `dir` (sorted by path), with its file name.
pub fn manifests_under(dir: &Path) -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        out.extend(documents(&f).into_iter().map(|v| (name.clone(), v)));
    }
    out
}

/// The documents of a shipped manifest, deploy/kubernetes/`file`.
pub fn manifests(file: &str) -> Vec<Value> {
    documents(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/kubernetes")
            .join(file),
    )
}

/// Installs CRDs, the shipped namespace and RBAC, the edge agent's Service, and returns a
/// kubeconfig carrying federationd's own service-account token.
pub async fn prepare(env: &KubeEnv, site: &str, crds: &[&str]) -> std::path::PathBuf {
    let admin = env.client(site).await;
    install_crds(&admin, &upstream_crds(crds)).await;
    for m in manifests("namespace.yaml")
        .iter()
        .chain(&manifests("rbac.yaml"))
    {
        apply(&admin, "test-setup", m).await.unwrap();
    }
    apply(
        &admin,
        "test-setup",
        &json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "multimesh-edge", "namespace": "multimesh"},
            "spec": {"ports": [{"name": "http", "port": 15080, "protocol": "TCP"}]}}),
    )
    .await
    .unwrap();
    namespace(&admin, "shop").await;
    bind_writes(&admin, "shop").await;
    let token = service_account_token(&admin, "multimesh", "federationd").await;
    env.kubeconfig_with_token(site, "federationd", &token)
}

/// Lets federationd write in `ns`: the shipped RoleBinding (deploy/kubernetes/rbac-namespace.yaml)
/// in that namespace.
pub async fn bind_writes(admin: &Client, ns: &str) {
    for mut m in manifests("rbac-namespace.yaml") {
        m["metadata"]["namespace"] = json!(ns);
        apply(admin, "test-setup", &m).await.unwrap();
    }
}
