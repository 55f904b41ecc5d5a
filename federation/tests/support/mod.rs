//! Test support: a PKI made by the tests themselves, real `federationd` processes on loopback,
//! admin clients, and a "tap" that speaks the peer protocol as a configured site (to see what
//! crosses the wire and to send malformed messages).
#![allow(dead_code, missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use federation::identity::{Role, SiteId};
use federation::tls::{SiteTls, client_config};
use hyper_util::rt::TokioIo;
use multimesh_proto::admin::v1 as api;
use multimesh_proto::catalog::v1::{
    self as wire, catalog_sync_client::CatalogSyncClient, sync_message::Body,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

#[path = "common.rs"]
mod common;
pub use common::*;
pub mod edge;
#[cfg(feature = "kubernetes")]
pub mod istio;
#[cfg(feature = "kubernetes")]
pub mod kubeenv;

/// How one site is set up.
#[derive(Clone, Default)]
pub struct SiteSpec {
    pub name: String,
    /// (peer, address to dial or None to wait for it).
    pub peers: Vec<(String, Option<String>)>,
    /// Extra TOML appended to the config (services, [sync] overrides).
    pub extra: String,
    /// Top-level TOML keys (before any table), e.g. `backend = "kubernetes"`.
    pub top: String,
}

impl SiteSpec {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            ..Default::default()
        }
    }
    pub fn dial(mut self, peer: &str, addr: &str) -> Self {
        self.peers.push((peer.into(), Some(addr.into())));
        self
    }
    pub fn accept(mut self, peer: &str) -> Self {
        self.peers.push((peer.into(), None));
        self
    }
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self
    }
    pub fn top(mut self, toml: &str) -> Self {
        self.top.push_str(toml);
        self
    }
}

/// A running `federationd` process.
pub struct Site {
    pub name: String,
    pub dir: PathBuf,
    pub listen: String,
    child: Option<Child>,
}

pub fn sync_toml(heartbeat_ms: u64) -> String {
    format!("\n[sync]\nheartbeat_ms = {heartbeat_ms}\nbackoff_min_ms = 50\nbackoff_max_ms = 400\n")
}

impl SiteSpec {
    /// Writes the site's config into `root/<name>/federationd.toml` (atomically: a running
    /// daemon reading it again sees the old or the new file); `listen` pins the address.
    pub fn write(&self, pki: &Pki, root: &Path, listen: Option<&str>) -> PathBuf {
        let spec = self;
        let dir = root.join(&spec.name);
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = pki.ensure(&spec.name, Role::Federation);
        let mut cfg = format!(
            "site = \"{}\"\ntrust_domain = \"{TD}\"\nlisten = \"{}\"\nadmin_socket = \"admin.sock\"\nstate_file = \"state.json\"\nready_file = \"ready.json\"\n",
            spec.name,
            listen.unwrap_or("127.0.0.1:0")
        );
        if !spec.top.contains("edge_ingress") {
            cfg.push_str("edge_ingress = [\"127.0.0.1:15443\"]\n");
        }
        cfg.push_str(&spec.top);
        let extra_has_sync = spec.extra.contains("[sync]");
        let mut body = String::new();
        body.push_str(&format!(
            "\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.dir.join("ca.pem").display(),
            cert.display(),
            key.display()
        ));
        if !extra_has_sync {
            body.push_str(&sync_toml(200));
        }
        body.push_str(&spec.extra);
        for (p, a) in &spec.peers {
            body.push_str(&format!("\n[[peers]]\nsite = \"{p}\"\n"));
            if let Some(a) = a {
                body.push_str(&format!("address = \"{a}\"\n"));
            }
        }
        cfg.push_str(&body);
        let path = dir.join("federationd.toml");
        let next = dir.join(".federationd.toml.next");
        std::fs::write(&next, cfg).unwrap();
        std::fs::rename(&next, &path).unwrap();
        path
    }
}

impl Site {
    /// Writes the config and starts the daemon; `listen` pins the address (for restarts).
    pub fn start(pki: &Pki, root: &Path, spec: &SiteSpec, listen: Option<&str>) -> Site {
        spec.write(pki, root, listen);
        let dir = root.join(&spec.name);
        let _ = std::fs::remove_file(dir.join("ready.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("federationd.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_federationd"))
            .arg("--config")
            .arg(dir.join("federationd.toml"))
            .env("RUST_LOG", "info,federation=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn federationd");
        let mut site = Site {
            name: spec.name.clone(),
            dir: dir.clone(),
            listen: String::new(),
            child: Some(child),
        };
        let ready = dir.join("ready.json");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ready.exists() {
            if let Some(status) = site.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "federationd {} exited with {status}:\n{}",
                    spec.name,
                    site.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "federationd {} not ready:\n{}",
                spec.name,
                site.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
        site.listen = v["listen"].as_str().unwrap().to_string();
        site
    }

    /// How many files the daemon has open (sockets included).
    pub fn open_files(&self) -> usize {
        let pid = self.child.as_ref().map(|c| c.id()).unwrap_or(0);
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The daemon's process id (the same one across a reload: no restart).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub async fn status(&self) -> api::StatusResponse {
        self.admin()
            .await
            .status(api::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("federationd.log")).unwrap_or_default()
    }

    /// SIGKILL: no graceful shutdown.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub async fn admin(&self) -> api::admin_client::AdminClient<tonic::transport::Channel> {
        federation::admin::connect(&self.socket()).await.unwrap()
    }

    /// Live entries this site shows, as "namespace/name@origin" (stale ones marked "~").
    pub async fn entries(&self) -> Vec<String> {
        let r = federation::admin::catalog_all(&mut self.admin().await)
            .await
            .unwrap();
        let mut v: Vec<String> = r
            .origins
            .iter()
            .flat_map(|o| o.entries.iter())
            .map(|e| {
                let s = e.service.as_ref().unwrap();
                format!(
                    "{}/{}@{}{}",
                    s.namespace,
                    s.name,
                    s.origin,
                    if e.stale { "~" } else { "" }
                )
            })
            .collect();
        v.sort();
        v
    }

    pub async fn peers(&self) -> BTreeMap<String, api::PeerView> {
        let r = self
            .admin()
            .await
            .peers(api::PeersRequest {})
            .await
            .unwrap()
            .into_inner();
        r.peers.into_iter().map(|p| (p.site.clone(), p)).collect()
    }

    pub async fn export(&self, name: &str, to: &[&str]) -> u64 {
        self.export_in("shop", name, to).await
    }

    /// Exports `namespace/name` (HTTP on 8080) to `to` (all when empty); returns its version.
    pub async fn export_in(&self, namespace: &str, name: &str, to: &[&str]) -> u64 {
        let r = self
            .admin()
            .await
            .export(api::ExportRequest {
                name: name.into(),
                namespace: namespace.into(),
                ports: vec![wire::ServicePort {
                    name: "http".into(),
                    port: 8080,
                    protocol: wire::Protocol::Http as i32,
                }],
                to: to.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        r.service.unwrap().version
    }

    pub async fn unexport(&self, name: &str) {
        self.admin()
            .await
            .unexport(api::UnexportRequest {
                name: name.into(),
                namespace: "shop".into(),
            })
            .await
            .unwrap();
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `record` signed with `signer`'s key, as an origin signs it (header with the record's hash).
pub fn sign_record(
    signer: &federation::proof::Signer,
    record: &wire::Record,
) -> wire::SignedRecord {
    use prost::Message;
    let bytes = record.encode_to_vec();
    let (origin, namespace, name, origin_epoch, version, withdrawn) = match &record.kind {
        Some(wire::record::Kind::Service(s)) => (
            s.origin.clone(),
            s.namespace.clone(),
            s.name.clone(),
            s.origin_epoch,
            s.version,
            false,
        ),
        Some(wire::record::Kind::Withdrawn(w)) => (
            w.origin.clone(),
            w.namespace.clone(),
            w.name.clone(),
            w.origin_epoch,
            w.version,
            true,
        ),
        None => Default::default(),
    };
    let header = wire::RecordHeader {
        origin,
        namespace,
        name,
        origin_epoch,
        version,
        withdrawn,
        record_sha256: ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .to_vec(),
    };
    let seal = signer.seal(federation::proof::Context::Record, header.encode_to_vec());
    wire::SignedRecord {
        header: seal.bytes,
        signature: seal.signature,
        signer: seal.signer.to_vec(),
        record: bytes,
    }
}

/// `head` signed with `signer`'s key.
pub fn sign_head(signer: &federation::proof::Signer, head: &wire::OriginHead) -> wire::SignedHead {
    use prost::Message;
    let seal = signer.seal(federation::proof::Context::Head, head.encode_to_vec());
    wire::SignedHead {
        head: seal.bytes,
        signature: seal.signature,
        signer: seal.signer.to_vec(),
    }
}

pub fn strs(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// A raw peer-protocol client posing as site `site`: it records everything it receives.
pub struct Tap {
    pub tx: mpsc::Sender<wire::SyncMessage>,
    pub received: Arc<std::sync::Mutex<Vec<wire::SyncMessage>>>,
    next_id: u64,
    /// Signs with the key of the tap's certificate, as the site it poses as would.
    pub signer: federation::proof::Signer,
}

/// Connects to `addr` with `tls`, expecting the server to be `server_site`. Returns the
/// connection error (as text) when the handshake or the call is refused.
pub async fn tap(tls: SiteTls, site: &str, server_site: &str, addr: &str) -> Result<Tap, String> {
    let signer = federation::proof::Signer::new(&tls.chain[0], &tls.key).unwrap();
    let cfg = client_config(
        &tls,
        SiteId::new(TD, server_site, Role::Federation).unwrap(),
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("peer.invalid").unwrap();
    let tls_stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let slot = Arc::new(std::sync::Mutex::new(Some(tls_stream)));
    let channel = tonic::transport::Endpoint::from_static("http://peer.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let s = slot.lock().unwrap().take();
            async move {
                s.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("used"))
            }
        }))
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut client = CatalogSyncClient::new(channel);
    let (tx, rx) = mpsc::channel(64);
    tx.send(wire::SyncMessage {
        msg_id: 1,
        body: Some(Body::Hello(wire::Hello {
            site: site.into(),
            trust_domain: TD.into(),
            capabilities: vec![],
            resume: None,
            heads: vec![],
            certificates: vec![],
            protocol: 2,
        })),
    })
    .await
    .unwrap();
    let mut inbound = client
        .sync(ReceiverStream::new(rx))
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    let received = Arc::new(std::sync::Mutex::new(Vec::new()));
    let r2 = received.clone();
    let tx2 = tx.clone();
    tokio::spawn(async move {
        while let Some(Ok(m)) = inbound.next().await {
            // ACK data messages like a well-behaved peer.
            if matches!(
                m.body,
                Some(Body::Snapshot(_)) | Some(Body::Delta(_)) | Some(Body::Heartbeat(_))
            ) {
                let _ = tx2
                    .send(wire::SyncMessage {
                        msg_id: 0,
                        body: Some(Body::Ack(wire::Ack { msg_id: m.msg_id })),
                    })
                    .await;
            }
            r2.lock().unwrap().push(m);
        }
    });
    Ok(Tap {
        tx,
        received,
        next_id: 2,
        signer,
    })
}

impl Tap {
    pub async fn send(&mut self, body: Body) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.tx
            .send(wire::SyncMessage {
                msg_id: id,
                body: Some(body),
            })
            .await
            .unwrap();
        id
    }

    /// The tap's certificate (DER), to send with what it signs.
    pub fn cert(&self) -> Vec<u8> {
        self.signer.certificate().0.clone()
    }

    /// `record` signed with the tap's key.
    pub fn sign(&self, record: &wire::Record) -> wire::SignedRecord {
        sign_record(&self.signer, record)
    }

    /// A head of `origin` signed with the tap's key.
    pub fn sign_head(&self, head: &wire::OriginHead) -> wire::SignedHead {
        sign_head(&self.signer, head)
    }

    /// Every record received so far (upserts and withdrawals), decoded from the signed bytes.
    pub fn records(&self) -> Vec<wire::Record> {
        use prost::Message;
        let msgs = self.received.lock().unwrap();
        let mut out = Vec::new();
        for m in msgs.iter() {
            let signed: Vec<&wire::SignedRecord> = match &m.body {
                Some(Body::Snapshot(s)) => s.records.iter().collect(),
                Some(Body::Delta(d)) => d
                    .changes
                    .iter()
                    .filter_map(|c| match &c.kind {
                        Some(wire::change::Kind::Signed(s)) => Some(s),
                        _ => None,
                    })
                    .collect(),
                _ => continue,
            };
            out.extend(
                signed
                    .into_iter()
                    .filter(|s| !s.record.is_empty())
                    .map(|s| wire::Record::decode(s.record.as_slice()).unwrap()),
            );
        }
        out
    }

    /// Names of every service record received so far (upserts and withdrawals).
    pub fn record_names(&self) -> Vec<String> {
        self.records()
            .into_iter()
            .filter_map(|r| match r.kind {
                Some(wire::record::Kind::Service(s)) => Some(s.name),
                Some(wire::record::Kind::Withdrawn(w)) => Some(w.name),
                None => None,
            })
            .collect()
    }

    /// The NACK answering message `id`, if any.
    pub fn nack_for(&self, id: u64) -> Option<wire::Nack> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .find_map(|m| match &m.body {
                Some(Body::Nack(n)) if n.msg_id == id => Some(n.clone()),
                _ => None,
            })
    }

    pub fn count(&self, pred: impl Fn(&Body) -> bool) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.body.as_ref().is_some_and(&pred))
            .count()
    }
}
