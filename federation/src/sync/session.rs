//! One sync session with one peer, the same code on both ends of the stream.
//!
//! Each side sends `Hello` (its site, trust domain, capabilities, where it stands in the other
//! side's change stream, and its version vector), then:
//! * a **sender** task replicates this site's view to the peer: a delta from the peer's
//!   position when it can, a chunked snapshot otherwise (or after the peer NACKs a gap), then a
//!   delta whenever the change stream moves, and a heartbeat every period;
//! * the **receiver** loop validates and applies what the peer sends, ACKs or NACKs each
//!   message with the reason (a refused message changes nothing), and feeds heartbeats into
//!   health, version vectors and origin liveness.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use multimesh_proto::catalog::v1::{self as wire, sync_message::Body};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Node;
use super::codec::{self, Clock};
use crate::catalog::{Head, Outgoing, Position};
use crate::error::Refusal;
use crate::model::{Key, Record, Site};
use crate::proof::CertDer;

/// Protocol revision spoken by this build (2: origin proofs).
pub const PROTOCOL: u32 = 2;
/// Capabilities announced in the hello.
pub const CAPABILITIES: &[&str] = &["resume", "relay", "scope"];
/// How long to wait for the peer's hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The stream failed or closed.
    #[error("stream closed: {0}")]
    Stream(String),
    /// The peer broke the protocol (bad hello, wrong site).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The session was replaced or the daemon is shutting down.
    #[error("session cancelled")]
    Cancelled,
}

fn pos_to_wire(p: Position) -> wire::StreamPosition {
    wire::StreamPosition {
        epoch: p.epoch,
        seq: p.seq,
    }
}

fn pos_from_wire(p: &wire::StreamPosition) -> Position {
    Position {
        epoch: p.epoch,
        seq: p.seq,
    }
}

/// This site's heads, each signed by its origin, with the signers' certificates.
fn heads_for_wire(node: &Node) -> (Vec<wire::SignedHead>, Vec<Vec<u8>>) {
    let now = clock().now;
    let (heads, certs) = node
        .store
        .read(|c| codec::seal_heads(&node.sealer, &node.verifier, c, now));
    (heads, certs.into_values().map(|c| c.0.clone()).collect())
}

fn clock() -> Clock {
    Clock::at(SystemTime::now())
}

fn nack_reason(r: &Refusal) -> wire::NackReason {
    match r {
        Refusal::Gap(_) => wire::NackReason::Gap,
        Refusal::Invalid(_) => wire::NackReason::Invalid,
        Refusal::TooLarge(_) => wire::NackReason::TooLarge,
        Refusal::ScopeViolation(_) => wire::NackReason::ScopeViolation,
        Refusal::Protocol(_) => wire::NackReason::Protocol,
        Refusal::Proof(_) => wire::NackReason::Proof,
    }
}

/// Numbers and sends messages of one direction of the stream.
struct Outbox {
    tx: mpsc::Sender<wire::SyncMessage>,
    next: AtomicU64,
}

impl Outbox {
    async fn send(&self, body: Body) -> Result<(), SessionError> {
        let msg_id = self.next.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(wire::SyncMessage {
                msg_id,
                body: Some(body),
            })
            .await
            .map_err(|_| SessionError::Stream("outbound stream closed".into()))
    }
}

/// Runs one session with `peer` until the stream ends or `cancel` fires.
pub async fn run<S>(
    node: Arc<Node>,
    peer: Site,
    mut inbound: S,
    out: mpsc::Sender<wire::SyncMessage>,
    cancel: CancellationToken,
) -> Result<(), SessionError>
where
    S: Stream<Item = Result<wire::SyncMessage, tonic::Status>> + Unpin + Send,
{
    let outbox = Arc::new(Outbox {
        tx: out,
        next: AtomicU64::new(1),
    });
    let resume = node.store.read(|c| c.link_position(&peer));
    let (heads, certificates) = heads_for_wire(&node);
    outbox
        .send(Body::Hello(wire::Hello {
            site: node.site.clone(),
            trust_domain: node.trust_domain.clone(),
            capabilities: CAPABILITIES.iter().map(|s| s.to_string()).collect(),
            resume: resume.map(pos_to_wire),
            heads,
            certificates,
            protocol: PROTOCOL,
        }))
        .await?;

    let first = tokio::select! {
        m = tokio::time::timeout(HELLO_TIMEOUT, inbound.next()) => m,
        _ = cancel.cancelled() => return Err(SessionError::Cancelled),
    };
    let hello = match first {
        Err(_) => return Err(SessionError::Protocol("no hello within 10 s".into())),
        Ok(None) => return Err(SessionError::Stream("closed before hello".into())),
        Ok(Some(Err(s))) => return Err(SessionError::Stream(s.message().to_string())),
        Ok(Some(Ok(wire::SyncMessage {
            body: Some(Body::Hello(h)),
            ..
        }))) => h,
        Ok(Some(Ok(_))) => {
            return Err(SessionError::Protocol(
                "first message is not a hello".into(),
            ));
        }
    };
    if hello.site != peer {
        return Err(SessionError::Protocol(format!(
            "hello says site {:?} but the certificate says {peer:?}",
            hello.site
        )));
    }
    if hello.trust_domain != node.trust_domain {
        return Err(SessionError::Protocol(format!(
            "hello says trust domain {:?}, expected {:?}",
            hello.trust_domain, node.trust_domain
        )));
    }
    if hello.protocol != PROTOCOL {
        return Err(SessionError::Protocol(format!(
            "peer speaks protocol {}, this site speaks {PROTOCOL}",
            hello.protocol
        )));
    }
    let their_heads =
        codec::open_heads(&node.verifier, &clock(), &hello.heads, &hello.certificates)
            .map_err(|e| SessionError::Protocol(format!("hello: {e}")))?;
    observe_heads(&node, &peer, their_heads);
    let their_position = hello.resume.as_ref().map(pos_from_wire);
    info!(
        peer = %peer,
        resume = ?their_position,
        capabilities = ?hello.capabilities,
        "session established"
    );

    let (resync_tx, resync_rx) = mpsc::channel(4);
    let sender = tokio::spawn(send_loop(
        node.clone(),
        peer.clone(),
        outbox.clone(),
        their_position,
        resync_rx,
    ));
    let result = tokio::select! {
        r = receive_loop(&node, &peer, &mut inbound, &outbox, resync_tx) => r,
        r = wait_sender(sender) => r,
        _ = cancel.cancelled() => Err(SessionError::Cancelled),
    };
    result
}

async fn wait_sender(
    h: tokio::task::JoinHandle<Result<(), SessionError>>,
) -> Result<(), SessionError> {
    match h.await {
        Ok(r) => r,
        Err(e) => Err(SessionError::Stream(format!("sender task failed: {e}"))),
    }
}

/// Replicates this site's view to `peer`.
async fn send_loop(
    node: Arc<Node>,
    peer: Site,
    outbox: Arc<Outbox>,
    mut position: Option<Position>,
    mut resync: mpsc::Receiver<()>,
) -> Result<(), SessionError> {
    let mut head = node.store.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(node.settings.heartbeat_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let chunk = node.settings.snapshot_chunk;
    // Records per message are cut by bytes too; the rest of the message limit is left for the
    // signers' certificates and the framing.
    let budget = node.settings.max_message_bytes / 4;
    // `position` is what the peer holds of our stream, as far as we told it. When the changes
    // since then hold nothing for this peer, we do not move `position` (the peer could not
    // follow); `covered` remembers the head, and the next heartbeat tells the peer to skip
    // ahead to it.
    let mut covered: Option<Position> = None;
    loop {
        head.borrow_and_update();
        let outgoing = node.store.read(|c| c.changes_for(&peer, position));
        match outgoing {
            Outgoing::UpToDate(_) => {}
            Outgoing::Delta { to, records, .. } if records.is_empty() => covered = Some(to),
            Outgoing::Delta { from, to, records } => {
                let items = codec::seal_changes(&node.sealer, &records);
                let certs = node.store.read(|c| {
                    codec::certificates_of(
                        c,
                        &node.sealer,
                        &node.verifier,
                        items.iter().filter_map(|(_, _, s)| *s),
                        clock().now,
                    )
                });
                let parts = codec::batches(items, &certs, chunk, budget);
                if parts.is_empty() {
                    covered = Some(to);
                } else {
                    let n = parts.iter().map(|p| p.items.len()).sum::<usize>() as u64;
                    let count = parts.len();
                    for (i, part) in parts.into_iter().enumerate() {
                        // Only the last part advances the position; earlier parts re-apply
                        // idempotently if the stream breaks in between.
                        let to_seq = if i + 1 == count { to.seq } else { from.seq };
                        outbox
                            .send(Body::Delta(wire::Delta {
                                epoch: from.epoch,
                                from_seq: from.seq,
                                to_seq,
                                changes: part.items,
                                certificates: part.certificates,
                            }))
                            .await?;
                    }
                    node.peers.count(&peer, |c| {
                        c.deltas_sent += 1;
                        c.records_sent += n;
                    });
                    debug!(peer = %peer, records = n, from = from.seq, to = to.seq, "delta sent");
                    position = Some(to);
                    covered = None;
                }
            }
            Outgoing::Snapshot { at, records } => {
                let items = codec::seal_records(&node.sealer, &records);
                let n = items.len() as u64;
                let certs = node.store.read(|c| {
                    codec::certificates_of(
                        c,
                        &node.sealer,
                        &node.verifier,
                        items.iter().filter_map(|(_, _, s)| *s),
                        clock().now,
                    )
                });
                let mut parts = codec::batches(items, &certs, chunk, budget);
                if parts.is_empty() {
                    parts.push(codec::Batch::default());
                }
                let count = parts.len();
                for (i, part) in parts.into_iter().enumerate() {
                    outbox
                        .send(Body::Snapshot(wire::SnapshotChunk {
                            position: Some(pos_to_wire(at)),
                            index: i as u32,
                            last: i + 1 == count,
                            records: part.items,
                            certificates: part.certificates,
                        }))
                        .await?;
                }
                node.peers.count(&peer, |c| {
                    c.snapshots_sent += 1;
                    c.records_sent += n;
                });
                info!(peer = %peer, records = n, seq = at.seq, "snapshot sent");
                position = Some(at);
                covered = None;
            }
        }
        tokio::select! {
            r = head.changed() => if r.is_err() { return Err(SessionError::Cancelled) },
            _ = tick.tick() => {
                let (heads, certificates) = heads_for_wire(&node);
                if position.is_some() {
                    position = covered.take().or(position);
                }
                outbox.send(Body::Heartbeat(wire::Heartbeat {
                    position: position.map(pos_to_wire),
                    heads,
                    certificates,
                })).await?;
            }
            r = resync.recv() => match r {
                Some(()) => {
                    info!(peer = %peer, "peer reported a gap; sending a snapshot");
                    position = None;
                }
                None => return Ok(()),
            },
        }
    }
}

/// A snapshot being received, chunk by chunk.
struct PendingSnapshot {
    at: Position,
    next_index: u32,
    records: Vec<(Key, Record)>,
    certs: Vec<Arc<CertDer>>,
}

fn observe_heads(node: &Node, peer: &str, opened: codec::Opened<(Site, Head)>) {
    let codec::Opened {
        items: heads,
        certs,
    } = opened;
    let advanced = node.store.touch(|c| {
        let advanced = c.observe_heads(&heads);
        if !advanced.is_empty() {
            c.add_certs(certs);
        }
        advanced
    });
    let now = Instant::now();
    node.store.liveness(|l| {
        for (origin, _) in &advanced {
            l.observe(origin, now);
        }
    });
    node.peers.heartbeat(peer, heads.into_iter().collect());
}

/// Applies what `peer` sends, answering each message with an ACK or a NACK.
async fn receive_loop<S>(
    node: &Node,
    peer: &str,
    inbound: &mut S,
    outbox: &Outbox,
    resync: mpsc::Sender<()>,
) -> Result<(), SessionError>
where
    S: Stream<Item = Result<wire::SyncMessage, tonic::Status>> + Unpin + Send,
{
    let mut pending: Option<PendingSnapshot> = None;
    // False after a NACK until the next snapshot: heartbeats must then not advance our position
    // past changes we refused.
    let mut clean = true;
    let max_records = node.settings.max_records_per_link;
    let mut rate = super::rate::Rate::new(
        node.settings.peer_rate,
        node.settings.peer_burst,
        Instant::now(),
    );
    let mut warned: Option<Instant> = None;
    while let Some(msg) = inbound.next().await {
        let msg =
            msg.map_err(|s| SessionError::Stream(format!("{}: {}", s.code(), s.message())))?;
        // Charged before anything is decoded or verified: that is the work being bounded.
        let wait = rate.take(super::rate::cost(msg.body.as_ref()), Instant::now());
        if !wait.is_zero() {
            if warned.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                warned = Some(Instant::now());
                warn!(peer = %peer, wait_ms = wait.as_millis() as u64, rate = node.settings.peer_rate, "peer sends faster than sync.peer_rate items per second; its messages wait");
            }
            node.peers
                .count(peer, |c| c.throttled_ms += wait.as_millis() as u64);
            tokio::time::sleep(wait).await;
        }
        let id = msg.msg_id;
        let result: Result<(), Refusal> = match msg.body {
            Some(Body::Ack(_)) => {
                node.peers.ack(peer);
                continue;
            }
            Some(Body::Nack(n)) => {
                node.peers.count(peer, |c| c.nacks_received += 1);
                let reason =
                    wire::NackReason::try_from(n.reason).unwrap_or(wire::NackReason::Unspecified);
                warn!(peer = %peer, msg_id = n.msg_id, reason = ?reason, detail = %n.detail, "peer refused a message");
                if reason == wire::NackReason::Gap {
                    let _ = resync.try_send(());
                }
                continue;
            }
            Some(Body::Heartbeat(h)) => {
                match codec::open_heads(&node.verifier, &clock(), &h.heads, &h.certificates) {
                    Ok(heads) => {
                        observe_heads(node, peer, heads);
                        if let (true, Some(p)) = (clean, h.position.as_ref()) {
                            let p = pos_from_wire(p);
                            node.store.advance_link(peer, p);
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            Some(Body::Snapshot(chunk)) => {
                receive_chunk(node, peer, chunk, &mut pending, max_records, &mut clean)
            }
            Some(Body::Delta(d)) => {
                match codec::open_changes(&node.verifier, &clock(), &d.changes, &d.certificates) {
                    Ok(codec::Opened {
                        items: records,
                        certs,
                    }) => {
                        let n = records.len() as u64;
                        let from = Position {
                            epoch: d.epoch,
                            seq: d.from_seq,
                        };
                        let to = Position {
                            epoch: d.epoch,
                            seq: d.to_seq,
                        };
                        node.peers.count(peer, |c| c.records_received += n);
                        let r = node.store.apply_delta(peer, from, to, records, certs);
                        r.map(|applied| {
                        node.peers.count(peer, |c| c.deltas_received += 1);
                        debug!(peer = %peer, records = n, changed = applied.changed, to = d.to_seq, "delta applied");
                    })
                    }
                    Err(e) => Err(e),
                }
            }
            Some(Body::Hello(_)) => Err(Refusal::Protocol("second hello on one stream".into())),
            None => Err(Refusal::Protocol("message without a body".into())),
        };
        match result {
            Ok(()) => outbox.send(Body::Ack(wire::Ack { msg_id: id })).await?,
            Err(refusal) => {
                clean = false;
                node.peers.count(peer, |c| c.nacks_sent += 1);
                warn!(peer = %peer, msg_id = id, error = %refusal, "refused a message from peer; nothing of it was applied");
                outbox
                    .send(Body::Nack(wire::Nack {
                        msg_id: id,
                        reason: nack_reason(&refusal) as i32,
                        detail: refusal.to_string(),
                    }))
                    .await?;
            }
        }
    }
    Err(SessionError::Stream("peer closed the stream".into()))
}

fn receive_chunk(
    node: &Node,
    peer: &str,
    chunk: wire::SnapshotChunk,
    pending: &mut Option<PendingSnapshot>,
    max_records: usize,
    clean: &mut bool,
) -> Result<(), Refusal> {
    let Some(at) = chunk.position.as_ref().map(pos_from_wire) else {
        *pending = None;
        return Err(Refusal::Invalid(crate::error::InvalidField::new(
            "position",
            "<missing>",
            "is required",
        )));
    };
    if chunk.index == 0 {
        *pending = Some(PendingSnapshot {
            at,
            next_index: 0,
            records: Vec::new(),
            certs: Vec::new(),
        });
    }
    let Some(p) = pending
        .as_mut()
        .filter(|p| p.next_index == chunk.index && p.at == at)
    else {
        *pending = None;
        return Err(Refusal::Protocol(format!(
            "snapshot chunk {} out of order",
            chunk.index
        )));
    };
    let (records, certs) = match codec::open_records(
        &node.verifier,
        &clock(),
        &chunk.records,
        &chunk.certificates,
    ) {
        Ok(codec::Opened { items, certs }) => (items, certs),
        Err(e) => {
            *pending = None;
            return Err(e);
        }
    };
    node.peers
        .count(peer, |c| c.records_received += records.len() as u64);
    if p.records.len() + records.len() > max_records {
        let n = p.records.len() + records.len();
        *pending = None;
        return Err(Refusal::TooLarge(format!(
            "snapshot from {peer} exceeds {max_records} records (at least {n})"
        )));
    }
    p.records.extend(records);
    p.certs.extend(certs);
    p.next_index += 1;
    if !chunk.last {
        return Ok(());
    }
    let Some(done) = pending.take() else {
        return Ok(());
    };
    let n = done.records.len();
    let applied = node
        .store
        .apply_snapshot(peer, done.at, done.records, done.certs)?;
    *clean = true;
    node.peers.count(peer, |c| c.snapshots_received += 1);
    info!(peer = %peer, records = n, changed = applied.changed, seq = done.at.seq, "snapshot applied");
    Ok(())
}
