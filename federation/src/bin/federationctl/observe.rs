//! `federationctl catalog`, `peers`, `status` and `watch`: what a site sees, from its daemon.

use std::io::Write;
use std::path::Path;

use clap::Args;
use multimesh_proto::admin::v1 as api;
use serde::Serialize;

use crate::exports::{ServiceView, StaleView};
use crate::output::{Format, Out, Table};
use crate::{Failure, client, status as failure};

/// The catalog as printed (`-o json` is what `translate --catalog` and `plan --catalog` read).
#[derive(Serialize)]
pub struct CatalogView {
    site: String,
    origins: Vec<OriginView>,
    conflicts: Vec<ConflictView>,
}

#[derive(Serialize)]
struct OriginView {
    origin: String,
    epoch: u64,
    version: u64,
    state: String,
    last_heard_ms: u64,
    entries: Vec<EntryView>,
}

#[derive(Serialize)]
struct EntryView {
    /// The service; its stale policy is `stale_policy` here, `stale` says whether it is stale.
    #[serde(flatten)]
    service: ServiceView,
    stale_policy: Option<StaleView>,
    stale: bool,
    served: bool,
    expires_in_s: u64,
}

#[derive(Serialize)]
struct ConflictView {
    namespace: String,
    name: String,
    serving: Vec<String>,
    refused: Vec<String>,
}

impl CatalogView {
    /// The view of a whole catalog answer.
    pub fn of(r: &api::CatalogResponse) -> Self {
        Self {
            site: r.site.clone(),
            origins: r
                .origins
                .iter()
                .map(|o| OriginView {
                    origin: o.origin.clone(),
                    epoch: o.epoch,
                    version: o.version,
                    state: o.state.clone(),
                    last_heard_ms: o.last_heard_ms,
                    entries: o
                        .entries
                        .iter()
                        .map(|e| {
                            let mut service =
                                ServiceView::of(e.service.as_ref().unwrap_or(&Default::default()));
                            EntryView {
                                stale_policy: service.stale.take(),
                                service,
                                stale: e.stale,
                                served: e.served,
                                expires_in_s: e.expires_in_s,
                            }
                        })
                        .collect(),
                })
                .collect(),
            conflicts: r
                .conflicts
                .iter()
                .map(|c| ConflictView {
                    namespace: c.namespace.clone(),
                    name: c.name.clone(),
                    serving: c.serving.clone(),
                    refused: c.refused.clone(),
                })
                .collect(),
        }
    }

    fn table(&self) -> Table {
        let mut t = Table::new(&[
            "ORIGIN",
            "STATE",
            "VERSION",
            "SERVICE",
            "SVC-VERSION",
            "PORTS",
            "SCOPE",
            "STALE",
        ])
        .wide(&["INGRESS", "IDENTITY", "LABELS"]);
        for o in &self.origins {
            if o.entries.is_empty() {
                t.row(vec![
                    o.origin.clone(),
                    o.state.clone(),
                    o.version.to_string(),
                    "-".into(),
                ]);
            }
            for e in &o.entries {
                let s = &e.service;
                let stale = if e.stale {
                    format!(
                        "stale ({} s left{})",
                        e.expires_in_s,
                        if e.served { "" } else { ", not served" }
                    )
                } else {
                    "-".into()
                };
                t.row(vec![
                    o.origin.clone(),
                    o.state.clone(),
                    o.version.to_string(),
                    format!("{}/{}", s.namespace, s.name),
                    s.version.to_string(),
                    s.ports_text(),
                    s.scope.clone(),
                    stale,
                    s.ingress.join(","),
                    s.identity.clone(),
                    s.labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(","),
                ]);
            }
        }
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(",")
            }
        };
        for c in &self.conflicts {
            t.notes.push(format!(
                "CONFLICT {}/{}: exported by sites that do not all list each other in share_with; \
                 serving here: {}; refused: {}",
                c.namespace,
                c.name,
                list(&c.serving),
                list(&c.refused)
            ));
        }
        t
    }
}

/// The whole catalog of the daemon at `socket` (every page).
pub async fn fetch_catalog(socket: &Path) -> Result<CatalogView, Failure> {
    let mut c = client(socket).await?;
    let r = federation::admin::catalog_all(&mut c)
        .await
        .map_err(failure)?;
    Ok(CatalogView::of(&r))
}

/// `federationctl catalog`.
pub async fn catalog(out: Out, socket: &Path) -> Result<(), Failure> {
    let v = fetch_catalog(socket).await?;
    out.print(&v, |o| o.table(&v.table()))
}

fn peers_table(peers: &[api::PeerView]) -> Table {
    let ago = |v: Option<u64>| v.map_or_else(|| "never".into(), |m| format!("{m}ms ago"));
    let mut t = Table::new(&[
        "PEER",
        "STATE",
        "DIR",
        "HEALTHY",
        "HEARTBEAT",
        "ACK",
        "LAG",
        "SNAP/DELTA",
        "LAST ERROR",
    ])
    .wide(&["ADDRESS", "SESSIONS", "NACKS IN/OUT", "THROTTLED"])
    .right(&["LAG"]);
    for p in peers {
        let c = p.counters.unwrap_or_default();
        t.row(vec![
            p.site.clone(),
            p.state.clone(),
            if p.direction.is_empty() {
                "-".into()
            } else {
                p.direction.clone()
            },
            p.healthy.to_string(),
            ago(p.last_heartbeat_ms),
            ago(p.last_ack_ms),
            p.lag_versions.to_string(),
            format!("{}/{} in", c.snapshots_received, c.deltas_received),
            p.last_error.clone(),
            p.address.clone(),
            c.sessions.to_string(),
            format!("{}/{}", c.nacks_received, c.nacks_sent),
            format!("{}ms", c.throttled_ms),
        ]);
    }
    t
}

/// `federationctl peers`.
pub async fn peers(out: Out, socket: &Path) -> Result<(), Failure> {
    let mut c = client(socket).await?;
    let r = c
        .peers(api::PeersRequest {})
        .await
        .map_err(failure)?
        .into_inner();
    out.print(&r.peers, |o| o.table(&peers_table(&r.peers)))
}

/// `federationctl status` as sentences.
fn status_text(s: &api::StatusResponse) -> String {
    let b = s.backend.clone().unwrap_or_default();
    let mut backend = format!("backend {}", b.kind);
    if !b.mesh.is_empty() {
        backend.push_str(&format!(" (mesh {})", b.mesh));
    }
    if !b.error.is_empty() {
        backend.push_str(&format!(": last pass failed: {}", b.error));
    } else if b.problems.is_empty() {
        backend.push_str(": every object applied");
    } else {
        backend.push_str(&format!(
            ": {} object(s) not applied, tried again in {} s",
            b.problems.len(),
            b.next_retry_ms.div_ceil(1000)
        ));
    }
    for p in &b.problems {
        backend.push_str(&format!(
            "\n  {} {} ({} attempt(s)): {}",
            p.object,
            if p.refused { "REFUSED" } else { "FAILED" },
            p.attempts,
            p.reason
        ));
    }
    format!(
        "site {} ({}) listening on {}\nversion {} (epoch {}), stream seq {}\nexports {}, visible entries {}\npeers {}/{} healthy, up {} s\n{backend}\n{}",
        s.site,
        s.trust_domain,
        s.listen,
        s.version,
        s.epoch,
        s.seq,
        s.exports,
        s.entries_visible,
        s.peers_healthy,
        s.peers,
        s.uptime_s,
        config_text(&s.config.clone().unwrap_or_default())
    )
}

/// What `federationctl status` says of the config file read again while the daemon ran
/// (nothing when it has not changed).
fn config_text(c: &api::ConfigStatus) -> String {
    if c.last_change_unix_ms == 0 {
        return String::new();
    }
    let mut out = String::from("config file read again");
    if !c.peers_added.is_empty() || !c.peers_removed.is_empty() {
        out.push_str(&format!(
            ": peers added [{}], removed [{}] since the start",
            c.peers_added.join(", "),
            c.peers_removed.join(", ")
        ));
    }
    out.push('\n');
    if !c.error.is_empty() {
        out.push_str(&format!("  REFUSED, nothing changed: {}\n", c.error));
    }
    if !c.restart_fields.is_empty() {
        out.push_str(&format!(
            "  takes effect at the next start: {}\n",
            c.restart_fields.join(", ")
        ));
    }
    out
}

/// `federationctl status`.
pub async fn status(out: Out, socket: &Path) -> Result<(), Failure> {
    let mut c = client(socket).await?;
    let s = c
        .status(api::StatusRequest {})
        .await
        .map_err(failure)?
        .into_inner();
    out.print(&s, |_| status_text(&s))
}

/// `watch` arguments.
#[derive(Args)]
pub struct Watch {
    /// Exit (status 0) once this site sees at least this many entries.
    #[arg(long)]
    until_entries: Option<u32>,
}

/// `federationctl watch`: one line per catalog change (JSON lines with `-o json|yaml`).
pub async fn watch(out: Out, socket: &Path, w: Watch) -> Result<(), Failure> {
    let mut c = client(socket).await?;
    let mut events = c
        .watch(api::WatchRequest {})
        .await
        .map_err(failure)?
        .into_inner();
    while let Some(e) = events.message().await.map_err(failure)? {
        let line = match out.format {
            Format::Table | Format::Wide => format!("seq {} entries {}\n", e.seq, e.entries),
            Format::Json | Format::Yaml => format!("{}\n", serde_json::to_string(&e)?),
        };
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(line.as_bytes())?;
        stdout.flush()?;
        if w.until_entries.is_some_and(|n| e.entries >= n) {
            return Ok(());
        }
    }
    Err(Failure("the daemon closed the watch".into(), 1))
}
