//! Test support shared by every crate's end-to-end tests (included by path): a fresh test
//! folder, a federation PKI made by the tests themselves, and polling.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use federation::identity::{self, Pair, SiteId, Validity};
use federation::tls::SiteTls;

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
        let ca = identity::init_ca(TD, 1).unwrap();
        identity::write_file(&dir.join("ca.pem"), &ca.cert_pem, false).unwrap();
        Self {
            dir: dir.to_path_buf(),
            ca,
        }
    }

    /// Issues `site`'s certificate with the given validity; returns (cert, key) paths.
    pub fn issue_with(&self, site: &str, validity: Validity) -> (PathBuf, PathBuf) {
        let id = SiteId::new(TD, site).unwrap();
        let pair = identity::issue_site(&self.ca, &id, validity).unwrap();
        let (c, k) = (
            self.dir.join(format!("{site}.pem")),
            self.dir.join(format!("{site}-key.pem")),
        );
        identity::write_file(&c, &pair.cert_pem, false).unwrap();
        identity::write_file(&k, &pair.key_pem, true).unwrap();
        (c, k)
    }

    pub fn issue(&self, site: &str) -> (PathBuf, PathBuf) {
        self.issue_with(site, Validity::days(1))
    }

    pub fn site_tls(&self, site: &str) -> SiteTls {
        let (c, k) = self.issue(site);
        self.tls_from(&c, &k)
    }

    /// The identity of `site`'s edge agent (its data plane).
    pub fn edge_tls(&self, site: &str) -> SiteTls {
        self.site_tls(site)
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
