//! The catalog behind a lock, with change notification and crash-safe, incremental persistence.
//!
//! The pure [`Catalog`] does the work; this wrapper serialises access, tells the sync sessions
//! when the change stream moved (a `watch` of the stream head), and persists every change.
//!
//! **Persistence** is a snapshot plus a journal, so the cost of saving a change is the size of
//! the change, not of the catalog:
//!
//! - `STATE` (the configured state file) is a full snapshot, written atomically (temporary
//!   file, fsync, rename, fsync of the folder). It names the generation of the journal that
//!   continues it.
//! - `STATE.journal` starts with a header line naming its generation, then holds one JSON line
//!   per successful mutation ([`Op`]), in the order they were applied. Loading replays the
//!   lines onto the snapshot; the catalog is deterministic, so the replay rebuilds exactly the
//!   state that was acknowledged.
//! - When the journal outgrows the snapshot, a new snapshot (generation g+1) is written first,
//!   then a new empty journal. A crash in between leaves a journal of generation g beside a
//!   snapshot of g+1: that journal is already contained in the snapshot and is ignored.
//! - A crash while appending leaves a torn last line, which was never acknowledged: loading
//!   ignores it (with a warning). A bad line anywhere else is corruption and stops the daemon.
//!
//! Mutations only happen through the methods of [`Store`] that journal them; runtime-only state
//! (heads, beats) changes through [`Store::touch`] and is saved with the next snapshot.

use multimesh_core::locks::lock;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use std::sync::Arc;

use crate::catalog::{Applied, Catalog, Change, Limits, Liveness, Position, State};
use crate::error::{AdminError, Refusal};
use crate::model::{Key, Record, Service, Stamp};
use crate::proof::CertDer;

/// Errors reading or writing the state files.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O on a state file.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The state is corrupt or belongs to another site; the daemon refuses to start rather than
    /// lose or mix up state.
    #[error("state file {path}: {message}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// One journaled mutation of the catalog.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// [`Catalog::export`].
    Export {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The service.
        service: Service,
    },
    /// [`Catalog::unexport`].
    Unexport {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// [`Catalog::apply_delta`].
    Delta {
        /// The peer.
        peer: String,
        /// Start of the range.
        from: Position,
        /// End of the range.
        to: Position,
        /// Changes.
        changes: Vec<(Key, Change)>,
        /// Certificates of the signers of the records.
        #[serde(default)]
        certs: Vec<Arc<CertDer>>,
    },
    /// [`Catalog::apply_snapshot`].
    Snapshot {
        /// The peer.
        peer: String,
        /// The position of the snapshot.
        at: Position,
        /// Records.
        records: Vec<(Key, Record)>,
        /// Certificates of the signers of the records.
        #[serde(default)]
        certs: Vec<Arc<CertDer>>,
    },
    /// [`Catalog::renew`].
    Renew {
        /// The certificate that seals this site's records from now on.
        #[serde(with = "crate::proof::fingerprint_hex")]
        signer: crate::proof::Fingerprint,
    },
    /// [`Catalog::set_peers`]: the config's peers changed while the daemon ran.
    Peers {
        /// The configured peers from now on.
        peers: std::collections::BTreeSet<String>,
    },
    /// [`Catalog::advance_link`].
    AdvanceLink {
        /// The peer.
        peer: String,
        /// The new position.
        to: Position,
    },
}

/// The result of an [`Op`].
enum Outcome {
    Stamp(Result<Stamp, AdminError>),
    Applied(Result<Applied, Refusal>),
    Advanced(bool),
    Renewed(Option<usize>),
    /// The peers whose replicas were dropped; whether the set changed.
    Peers(Vec<String>, bool),
}

impl Outcome {
    /// Whether the op changed the catalog (and so must be journaled).
    fn changed(&self) -> bool {
        match self {
            Outcome::Stamp(r) => r.is_ok(),
            Outcome::Applied(r) => r.is_ok(),
            Outcome::Advanced(b) => *b,
            // A new signer is recorded even when there was no record to renew.
            Outcome::Renewed(r) => r.is_some(),
            Outcome::Peers(_, changed) => *changed,
        }
    }
}

impl Op {
    fn apply(self, c: &mut Catalog) -> Outcome {
        match self {
            Op::Export {
                namespace,
                name,
                service,
            } => Outcome::Stamp(c.export(&namespace, &name, service)),
            Op::Unexport { namespace, name } => Outcome::Stamp(c.unexport(&namespace, &name)),
            Op::Delta {
                peer,
                from,
                to,
                changes,
                certs,
            } => {
                let r = c.apply_delta(&peer, from, to, changes);
                if r.is_ok() {
                    c.add_certs(certs);
                }
                Outcome::Applied(r)
            }
            Op::Snapshot {
                peer,
                at,
                records,
                certs,
            } => {
                let r = c.apply_snapshot(&peer, at, records);
                if r.is_ok() {
                    c.add_certs(certs);
                }
                Outcome::Applied(r)
            }
            Op::AdvanceLink { peer, to } => Outcome::Advanced(c.advance_link(&peer, to)),
            Op::Renew { signer } => Outcome::Renewed(c.renew(signer)),
            Op::Peers { peers } => {
                let changed = c.configured_peers() != Some(&peers);
                Outcome::Peers(c.set_peers(peers), changed)
            }
        }
    }

    /// Replays a journaled op; it succeeded when it was journaled, so failing now means the
    /// files do not belong together.
    fn replay(self, c: &mut Catalog) -> Result<(), String> {
        match self.apply(c) {
            Outcome::Stamp(Err(e)) => Err(e.to_string()),
            Outcome::Applied(Err(e)) => Err(e.to_string()),
            _ => Ok(()),
        }
    }
}

struct Inner {
    catalog: Catalog,
    /// Journal lines of applied ops not yet written to the file, in order.
    pending: Vec<u8>,
    /// An op could not be journaled: the next flush writes a snapshot instead.
    needs_snapshot: bool,
}

/// The files of one store, owned by whoever is writing them.
struct Files {
    path: PathBuf,
    journal: Option<File>,
    generation: u64,
    journal_bytes: u64,
    snapshot_bytes: u64,
    /// Compact once the journal is larger than this and than the last snapshot.
    min_compaction_bytes: u64,
}

/// The journal is compacted into a new snapshot once it is larger than this and than the
/// last snapshot.
const MIN_COMPACTION_BYTES: u64 = 4 << 20;

/// The shared catalog of one daemon.
pub struct Store {
    inner: Mutex<Inner>,
    files: Mutex<Files>,
    liveness: Mutex<Liveness>,
    head: watch::Sender<u64>,
    dirty: watch::Sender<u64>,
}

impl Store {
    /// Wraps a catalog to be saved at `path`, where [`load`] found journal `generation` (0 for
    /// a new catalog). Call [`Store::compact`] before serving, so that the files match the
    /// catalog.
    pub fn new(catalog: Catalog, liveness: Liveness, path: &Path, generation: u64) -> Self {
        let seq = catalog.position().seq;
        Self {
            inner: Mutex::new(Inner {
                catalog,
                pending: Vec::new(),
                needs_snapshot: false,
            }),
            files: Mutex::new(Files {
                path: path.to_path_buf(),
                journal: None,
                generation,
                journal_bytes: 0,
                snapshot_bytes: 0,
                min_compaction_bytes: MIN_COMPACTION_BYTES,
            }),
            liveness: Mutex::new(liveness),
            head: watch::Sender::new(seq),
            dirty: watch::Sender::new(0),
        }
    }

    /// Reads the catalog.
    pub fn read<R>(&self, f: impl FnOnce(&Catalog) -> R) -> R {
        f(&lock(&self.inner).catalog)
    }

    /// Applies and journals one op; wakes sessions if the change stream moved, and the persister.
    fn apply(&self, op: Op) -> Outcome {
        // Encoded before applying (the op is consumed); dropped if the op is refused.
        let line = serde_json::to_vec(&op);
        let mut inner = lock(&self.inner);
        let before = inner.catalog.position().seq;
        let out = op.apply(&mut inner.catalog);
        let after = inner.catalog.position().seq;
        if out.changed() {
            match line {
                Ok(mut line) => {
                    line.push(b'\n');
                    inner.pending.extend_from_slice(&line);
                }
                // Cannot happen (plain data); keep the change and write a snapshot instead.
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a journal line; a snapshot will be written");
                    inner.needs_snapshot = true;
                }
            }
        }
        drop(inner);
        if after != before {
            self.head.send_replace(after);
        }
        if out.changed() {
            self.dirty.send_modify(|g| *g += 1);
        }
        out
    }

    /// Exports a service of this site (see [`Catalog::export`]).
    pub fn export(
        &self,
        namespace: &str,
        name: &str,
        service: Service,
    ) -> Result<Stamp, AdminError> {
        match self.apply(Op::Export {
            namespace: namespace.into(),
            name: name.into(),
            service,
        }) {
            Outcome::Stamp(r) => r,
            _ => unreachable!("export yields a stamp"),
        }
    }

    /// Withdraws an export of this site (see [`Catalog::unexport`]).
    pub fn unexport(&self, namespace: &str, name: &str) -> Result<Stamp, AdminError> {
        match self.apply(Op::Unexport {
            namespace: namespace.into(),
            name: name.into(),
        }) {
            Outcome::Stamp(r) => r,
            _ => unreachable!("unexport yields a stamp"),
        }
    }

    /// Applies a peer's delta (see [`Catalog::apply_delta`]).
    pub fn apply_delta(
        &self,
        peer: &str,
        from: Position,
        to: Position,
        changes: Vec<(Key, Change)>,
        certs: Vec<Arc<CertDer>>,
    ) -> Result<Applied, Refusal> {
        match self.apply(Op::Delta {
            peer: peer.into(),
            from,
            to,
            changes,
            certs,
        }) {
            Outcome::Applied(r) => r,
            _ => unreachable!("a delta yields an Applied"),
        }
    }

    /// Applies a peer's snapshot (see [`Catalog::apply_snapshot`]).
    pub fn apply_snapshot(
        &self,
        peer: &str,
        at: Position,
        records: Vec<(Key, Record)>,
        certs: Vec<Arc<CertDer>>,
    ) -> Result<Applied, Refusal> {
        match self.apply(Op::Snapshot {
            peer: peer.into(),
            at,
            records,
            certs,
        }) {
            Outcome::Applied(r) => r,
            _ => unreachable!("a snapshot yields an Applied"),
        }
    }

    /// Moves our position in a peer's stream (see [`Catalog::advance_link`]).
    pub fn advance_link(&self, peer: &str, to: Position) -> bool {
        match self.apply(Op::AdvanceLink {
            peer: peer.into(),
            to,
        }) {
            Outcome::Advanced(b) => b,
            _ => unreachable!("advance_link yields a bool"),
        }
    }

    /// Seals this site's records with a new certificate (see [`Catalog::renew`]): how many
    /// records got a new stamp, `None` when that certificate already sealed them.
    pub fn renew(&self, signer: crate::proof::Fingerprint) -> Option<usize> {
        match self.apply(Op::Renew { signer }) {
            Outcome::Renewed(r) => r,
            _ => unreachable!("renew yields a count"),
        }
    }

    /// Sets the configured peers while the daemon runs (see [`Catalog::set_peers`]): the
    /// peers whose replicas were dropped.
    pub fn set_peers(&self, peers: std::collections::BTreeSet<String>) -> Vec<String> {
        match self.apply(Op::Peers { peers }) {
            Outcome::Peers(gone, _) => gone,
            _ => unreachable!("set_peers yields the peers dropped"),
        }
    }

    /// Changes runtime-only parts of the catalog (heads, beats): wakes nobody, journals nothing.
    pub fn touch<R>(&self, f: impl FnOnce(&mut Catalog) -> R) -> R {
        f(&mut lock(&self.inner).catalog)
    }

    /// Writes the pending journal lines and fsyncs them (blocking), compacting the journal into
    /// a new snapshot when it has grown large. After this returns, every change applied before
    /// the call survives a crash: call it before acknowledging an export.
    pub fn flush(&self) -> Result<(), StateError> {
        let mut files = lock(&self.files);
        let compact = files.journal.is_none()
            || files.journal_bytes > files.min_compaction_bytes.max(files.snapshot_bytes)
            || lock(&self.inner).needs_snapshot;
        if compact {
            return self.compact_locked(&mut files);
        }
        let pending = std::mem::take(&mut lock(&self.inner).pending);
        if pending.is_empty() {
            return Ok(());
        }
        let path = journal_path(&files.path);
        let io = |source| StateError::Io {
            path: path.display().to_string(),
            source,
        };
        let r = files.journal.as_mut().map(|f| {
            f.write_all(&pending)?;
            f.sync_data()
        });
        match r {
            Some(Ok(())) => {
                files.journal_bytes += pending.len() as u64;
                Ok(())
            }
            Some(Err(e)) => {
                // The file may hold part of the lines: start over with a snapshot next time.
                files.journal = None;
                Err(io(e))
            }
            None => Ok(()),
        }
    }

    /// Writes a full snapshot and starts a new, empty journal (blocking).
    pub fn compact(&self) -> Result<(), StateError> {
        let mut files = lock(&self.files);
        self.compact_locked(&mut files)
    }

    fn compact_locked(&self, files: &mut Files) -> Result<(), StateError> {
        // The snapshot contains every pending op: they are dropped under the same lock.
        let mut state = {
            let mut inner = lock(&self.inner);
            inner.pending.clear();
            inner.needs_snapshot = false;
            inner.catalog.to_state()
        };
        files.journal = None;
        let generation = files.generation + 1;
        state.set_journal(generation);
        files.snapshot_bytes = save(&files.path, &state)?;
        let jpath = journal_path(&files.path);
        let header = format!("{}\n", serde_json::json!({ "journal": generation }));
        write_atomically(&jpath, |w| w.write_all(header.as_bytes()))?;
        let f = std::fs::OpenOptions::new()
            .append(true)
            .open(&jpath)
            .map_err(|source| StateError::Io {
                path: jpath.display().to_string(),
                source,
            })?;
        files.journal = Some(f);
        files.generation = generation;
        files.journal_bytes = header.len() as u64;
        Ok(())
    }

    /// Reads liveness.
    pub fn liveness<R>(&self, f: impl FnOnce(&mut Liveness) -> R) -> R {
        f(&mut lock(&self.liveness))
    }

    /// Notified whenever the change stream moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Notified whenever anything persistent changed.
    pub fn subscribe_dirty(&self) -> watch::Receiver<u64> {
        self.dirty.subscribe()
    }
}

/// The journal that goes with the state file `path`.
pub fn journal_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".journal");
    PathBuf::from(p)
}

/// Loads the saved catalog of `site` (snapshot plus journal), or creates a new one with a fresh
/// epoch. Returns the journal generation found, `None` when there was nothing to restore.
pub fn load(path: &Path, site: &str, limits: Limits) -> Result<(Catalog, Option<u64>), StateError> {
    let p = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((Catalog::new(site, new_epoch(), limits), None));
        }
        Err(source) => return Err(StateError::Io { path: p, source }),
    };
    let state: State = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
        path: p.clone(),
        message: format!("unreadable ({e}); move it away to start with an empty catalog"),
    })?;
    if state.site() != site {
        return Err(StateError::Corrupt {
            path: p,
            message: format!("belongs to site {:?}, not {site:?}", state.site()),
        });
    }
    let generation = state.journal();
    let migrate = state.format() == 1;
    let mut c = Catalog::from_state(state, limits)
        .map_err(|message| StateError::Corrupt { path: p, message })?;
    replay(&journal_path(path), generation, &mut c, limits, migrate)?;
    if migrate {
        tracing::warn!(file = %path.display(), "state of format 1 (before origin proofs): kept this site's own exports; peers send the rest again");
        c.restart_stream(new_epoch());
    }
    Ok((c, Some(generation)))
}

/// Replays the journal of `generation` onto `c`.
///
/// `own_only` (migrating a state of format 1) replays this site's own exports and unexports
/// only; what peers sent then carries no origin proofs and is sent again.
fn replay(
    path: &Path,
    generation: u64,
    c: &mut Catalog,
    limits: Limits,
    own_only: bool,
) -> Result<(), StateError> {
    let p = path.display().to_string();
    let text = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(StateError::Io { path: p, source }),
    };
    let corrupt = |line: usize, message: String| StateError::Corrupt {
        path: p.clone(),
        message: format!(
            "line {line}: {message}; move the state files away to start with an empty catalog"
        ),
    };
    let mut lines = text.split(|b| *b == b'\n').enumerate().peekable();
    #[derive(Deserialize)]
    struct Header {
        journal: u64,
    }
    match lines.next() {
        Some((_, h)) => match serde_json::from_slice::<Header>(h) {
            Ok(h) if h.journal == generation => {}
            // An older journal: the snapshot already contains it (crash during compaction).
            Ok(h) if h.journal < generation => return Ok(()),
            Ok(h) => {
                return Err(corrupt(
                    1,
                    format!(
                        "journal generation {} is newer than the snapshot's {generation}",
                        h.journal
                    ),
                ));
            }
            Err(e) => return Err(corrupt(1, format!("bad header ({e})"))),
        },
        None => return Ok(()),
    }
    // Journaled ops passed the limits when they were applied; the limits may have changed
    // since, which must not make the history unreadable.
    c.set_limits(Limits {
        max_records_per_link: usize::MAX,
        max_exports: usize::MAX,
        ..limits
    });
    let mut replayed = 0usize;
    while let Some((i, line)) = lines.next() {
        let last = lines.peek().is_none_or(|(_, rest)| rest.is_empty());
        if line.is_empty() {
            continue;
        }
        if own_only
            && serde_json::from_slice::<OpName>(line)
                .is_ok_and(|o| o.op != "export" && o.op != "unexport")
        {
            continue;
        }
        match serde_json::from_slice::<Op>(line) {
            Ok(op) => op.replay(c).map_err(|e| corrupt(i + 1, e))?,
            // A torn last line: the process died while appending it, before acknowledging it.
            Err(e) if last && !text.ends_with(b"\n") => {
                tracing::warn!(file = %p, line = i + 1, error = %e, "ignoring a torn last journal line");
            }
            Err(e) => return Err(corrupt(i + 1, format!("unreadable ({e})"))),
        }
        replayed += 1;
    }
    c.set_limits(limits);
    tracing::debug!(file = %p, ops = replayed, "journal replayed");
    Ok(())
}

/// The name of a journaled op (to skip ops of an older layout).
#[derive(Deserialize)]
struct OpName {
    op: String,
}

/// A new epoch: the current time in nanoseconds, so later incarnations compare higher.
pub fn new_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// Writes a snapshot atomically, streaming it to the file (no copy of it in memory); returns
/// its size.
pub fn save(path: &Path, state: &State) -> Result<u64, StateError> {
    write_atomically(path, |w| {
        serde_json::to_writer(w, state).map_err(std::io::Error::other)
    })
}

/// Counts the bytes written through it.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// [`crate::files::write_atomically`]; returns the size written.
fn write_atomically(
    path: &Path,
    body: impl FnOnce(&mut Counting<&mut std::io::BufWriter<File>>) -> std::io::Result<()>,
) -> Result<u64, StateError> {
    let mut bytes = 0;
    crate::files::write_atomically(path, 0o644, |w| {
        let mut w = Counting { inner: w, bytes: 0 };
        body(&mut w)?;
        bytes = w.bytes;
        Ok(())
    })
    .map_err(|source| StateError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(bytes)
}

/// Flushes the journal whenever something changed, at most every `min_interval`, and once
/// more when `shutdown` fires. Runs until shutdown.
pub async fn persist(
    store: std::sync::Arc<Store>,
    min_interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut dirty = store.subscribe_dirty();
    loop {
        tokio::select! {
            r = dirty.changed() => if r.is_err() { break },
            _ = shutdown.changed() => break,
        }
        let started = Instant::now();
        let s = store.clone();
        let r = tokio::task::spawn_blocking(move || s.flush()).await;
        if let Ok(Err(e)) = r {
            tracing::error!(error = %e, "cannot persist the catalog");
        }
        tokio::time::sleep(min_interval.saturating_sub(started.elapsed())).await;
    }
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "cannot persist the catalog at shutdown");
    }
}

#[cfg(test)]
mod tests;
