//! `edge-agent check`: an agent's config and edge certificate, checked as its peers will check
//! them ([`multimesh_core::check`]), then whether the running agent is ready, asked on its
//! admin listener (`/readyz`: a route table loaded and, on an edge node, the parent link up).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use multimesh_core::check::{Finding, Outcome, Report, finding};
use multimesh_core::identity::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::AgentConfig;

/// Longest admin answer read.
const MAX_ANSWER: u64 = 64 * 1024;

/// Every check of the agent configured in `path`; the running agent is asked unless `offline`.
pub async fn run(path: &Path, warn_days: u32, offline: bool) -> Report {
    let cfg = match AgentConfig::load(path) {
        Ok(cfg) => cfg,
        Err(e) => return Report::new(vec![finding("config", Outcome::Fail, e.to_string())]),
    };
    let mut checks = vec![finding(
        "config",
        Outcome::Pass,
        format!(
            "{}: site {} of {}{}",
            path.display(),
            cfg.site,
            cfg.trust_domain,
            cfg.parent
                .as_ref()
                .map_or_else(String::new, |p| format!(", an edge node of {}", p.site))
        ),
    )];
    checks.extend(multimesh_core::check::certificates(
        &cfg.tls,
        &cfg.trust_domain,
        &cfg.site,
        Role::Edge,
        time::OffsetDateTime::now_utc(),
        time::Duration::days(i64::from(warn_days)),
    ));
    if !offline {
        checks.push(readiness(&cfg).await);
    }
    Report::new(checks)
}

/// Where the running agent's admin listener is: the configured address, or, when the config
/// lets the system pick the port, the address its ready file records.
fn admin_address(cfg: &AgentConfig) -> Result<SocketAddr, String> {
    let configured = cfg
        .admin
        .ok_or("the config has no `admin` address, so the agent's readiness cannot be asked")?;
    if configured.port() != 0 {
        return Ok(configured);
    }
    let file = cfg.ready_file.as_ref().ok_or(
        "`admin` has port 0 and there is no `ready_file` saying which port the agent took",
    )?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("{}: {e}: is the agent running?", file.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    v["admin"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("{}: no admin address", file.display()))
}

/// Asks the running agent whether it is ready.
async fn readiness(cfg: &AgentConfig) -> Finding {
    let addr = match admin_address(cfg) {
        Ok(a) => a,
        Err(e) if cfg.admin.is_none() => return finding("agent", Outcome::Warn, e),
        Err(e) => return finding("agent", Outcome::Fail, e),
    };
    match tokio::time::timeout(Duration::from_secs(5), get(addr, "/readyz")).await {
        Err(_) => finding(
            "agent",
            Outcome::Fail,
            format!("admin {addr}: no answer within 5 s"),
        ),
        Ok(Err(e)) => finding(
            "agent",
            Outcome::Fail,
            format!("admin {addr}: {e}: is the agent running?"),
        ),
        Ok(Ok((200, _))) => finding(
            "agent",
            Outcome::Pass,
            format!("ready (admin {addr}: route table loaded)"),
        ),
        Ok(Ok((status, body))) => finding(
            "agent",
            Outcome::Fail,
            format!("admin {addr} answers {status}: {}", body.trim()),
        ),
    }
}

/// One HTTP/1.1 GET on a fresh connection: the status code and the body (bounded).
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}
