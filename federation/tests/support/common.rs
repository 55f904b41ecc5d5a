//! Test support shared by every crate's end-to-end tests (included by path): a fresh test
//! folder, a federation PKI made by the tests themselves, and polling.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use multimesh_core::identity::{self, Role, SiteId};
use multimesh_core::pki::{self, Pair, Validity};
use multimesh_core::tls::SiteTls;

pub const TD: &str = "multimesh.test";

/// A fresh folder for one test; kept (and its path printed) when MULTIMESH_KEEP_TEST_DIRS is
/// set, to read the daemons' logs after a failure.
pub fn test_dir() -> tempfile::TempDir {
    let mut d = tempfile::Builder::new()
        .prefix("multimesh-test-")
        .tempdir()
        .unwrap();
    if std::env::var_os("MULTIMESH_KEEP_TEST_DIRS").is_some() {
        eprintln!("test folder kept: {}", d.path().display());
        d.disable_cleanup(true);
    }
    d
}

/// A federation CA and the site certificates issued from it.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Pair,
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ca = pki::init_ca(TD, 1).unwrap();
        identity::write_file(&dir.join("ca.pem"), &ca.cert_pem, false).unwrap();
        Self {
            dir: dir.to_path_buf(),
            ca,
        }
    }

    /// Where `site`'s certificate and key for `role` are (as `federationctl certs issue` names
    /// them).
    pub fn paths(&self, site: &str, role: Role) -> (PathBuf, PathBuf) {
        identity::identity_files(&self.dir, site, role)
    }

    /// Issues `site`'s certificate for `role` with the given validity; returns (cert, key).
    pub fn issue_with(&self, site: &str, role: Role, validity: Validity) -> (PathBuf, PathBuf) {
        let id = SiteId::new(TD, site, role).unwrap();
        pki::issue_to(&self.dir, &self.ca, &id, validity).unwrap()
    }

    /// Issues the certificate of `site`'s federationd.
    pub fn issue(&self, site: &str) -> (PathBuf, PathBuf) {
        self.issue_with(site, Role::Federation, Validity::days(1))
    }

    /// The paths of `site`'s `role` identity, issued when it has none yet.
    pub fn ensure(&self, site: &str, role: Role) -> (PathBuf, PathBuf) {
        let (c, k) = self.paths(site, role);
        if c.exists() {
            (c, k)
        } else {
            self.issue_with(site, role, Validity::days(1))
        }
    }

    /// A fresh identity of `site`'s federationd (its control plane).
    pub fn site_tls(&self, site: &str) -> SiteTls {
        let (c, k) = self.issue(site);
        self.tls_from(&c, &k)
    }

    /// A fresh identity of `site`'s edge agent (its data plane).
    pub fn edge_tls(&self, site: &str) -> SiteTls {
        let (c, k) = self.issue_with(site, Role::Edge, Validity::days(1));
        self.tls_from(&c, &k)
    }

    pub fn tls_from(&self, cert: &Path, key: &Path) -> SiteTls {
        SiteTls::new(
            identity::read_certs(&self.dir.join("ca.pem")).unwrap(),
            identity::read_certs(cert).unwrap(),
            identity::read_key(key).unwrap(),
        )
        .unwrap()
    }
}

/// Polls `f` until it returns true or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(within(secs, f).await, "timed out waiting for: {what}");
}

/// Polls `f` until it returns true (then true) or `secs` pass (then false), so that the caller
/// can fail with what it saw.
pub async fn within<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a `check` command that prints its report as JSON (`federationctl check -o json`,
/// `edge-agent check --json`); returns the exit code and the report.
pub fn check_report(cmd: &mut std::process::Command) -> (i32, serde_json::Value) {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap(), report)
}

/// The outcome and detail of the check named `name` in a `check` report.
pub fn check_finding(report: &serde_json::Value, name: &str) -> (String, String) {
    let f = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"));
    (
        f["outcome"].as_str().unwrap().to_string(),
        f["detail"].as_str().unwrap().to_string(),
    )
}
