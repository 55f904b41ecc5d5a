//! Real `edge-agent` processes for the federation tests that need a data plane (the binary is
//! built beside the tests by `cargo test --workspace` / nextest).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use federation::identity::Role;

use super::{Pki, TD};

/// A binary of the workspace, built beside this test.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

/// A running edge agent; killed on drop.
pub struct Edge {
    pub dir: PathBuf,
    pub ready: serde_json::Value,
    child: Child,
}

impl Edge {
    /// Writes `config` (TOML; `site`, `trust_domain`, `ready_file` and `[tls]` with the site's
    /// edge identity are added) and starts the agent, waiting for its ready file.
    pub fn start(pki: &Pki, root: &Path, site: &str, config: &str) -> Edge {
        let dir = root.join(format!("edge-{site}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = pki.ensure(site, Role::Edge);
        let cfg = format!(
            "site = \"{site}\"\ntrust_domain = \"{TD}\"\nready_file = \"ready.json\"\n{config}\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.dir.join("ca.pem").display(),
            cert.display(),
            key.display()
        );
        std::fs::write(dir.join("edge.toml"), cfg).unwrap();
        let _ = std::fs::remove_file(dir.join("ready.json"));
        let log = std::fs::File::create(dir.join("edge.log")).unwrap();
        let mut child = Command::new(workspace_bin("edge-agent"))
            .arg("run")
            .arg("--config")
            .arg(dir.join("edge.toml"))
            .env("RUST_LOG", "info,edge_agent=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn edge-agent");
        let ready = dir.join("ready.json");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "edge-agent {site} exited with {status}:\n{}",
                    std::fs::read_to_string(dir.join("edge.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "edge-agent {site} not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        let ready = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
        Edge { dir, ready, child }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("edge.log")).unwrap_or_default()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
