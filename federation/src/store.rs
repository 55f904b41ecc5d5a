//! The catalog behind a lock, with change notification and crash-safe persistence.
//!
//! The pure [`Catalog`] does the work; this wrapper serialises access, tells the sync sessions
//! when the change stream moved (a `watch` of the stream head), and tells the persister when
//! anything worth saving changed (a `watch` of a generation counter).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::catalog::{Catalog, Limits, Liveness, State};

/// Errors reading or writing the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O on the state file.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The state file is corrupt or belongs to another site; the daemon refuses to start
    /// rather than lose or mix up state.
    #[error("state file {path}: {message}")]
    Corrupt {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The shared catalog of one daemon.
pub struct Store {
    catalog: Mutex<Catalog>,
    /// Serialises writers of the state file (the persister and synchronous saves).
    save_lock: Mutex<()>,
    liveness: Mutex<Liveness>,
    head: watch::Sender<u64>,
    dirty: watch::Sender<u64>,
}

impl Store {
    /// Wraps a catalog.
    pub fn new(catalog: Catalog, liveness: Liveness) -> Self {
        let seq = catalog.position().seq;
        Self {
            catalog: Mutex::new(catalog),
            save_lock: Mutex::new(()),
            liveness: Mutex::new(liveness),
            head: watch::Sender::new(seq),
            dirty: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Catalog> {
        // A panic while holding the lock leaves the catalog as it was between two complete
        // operations (every mutation validates first), so the poison can be ignored.
        self.catalog.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the catalog.
    pub fn read<R>(&self, f: impl FnOnce(&Catalog) -> R) -> R {
        f(&self.lock())
    }

    /// Changes the catalog; wakes sessions if the change stream moved and the persister always.
    pub fn write<R>(&self, f: impl FnOnce(&mut Catalog) -> R) -> R {
        let mut c = self.lock();
        let before = c.position().seq;
        let r = f(&mut c);
        let after = c.position().seq;
        drop(c);
        if after != before {
            self.head.send_replace(after);
        }
        self.dirty.send_modify(|g| *g += 1);
        r
    }

    /// Changes runtime-only parts of the catalog (heads, beats): wakes nobody, saves nothing.
    pub fn touch<R>(&self, f: impl FnOnce(&mut Catalog) -> R) -> R {
        f(&mut self.lock())
    }

    /// Asks the persister to save.
    pub fn mark_dirty(&self) {
        self.dirty.send_modify(|g| *g += 1);
    }

    /// Saves the catalog to `path` now (blocking: fsync and rename). Used before acknowledging
    /// an export, so an acknowledged change survives a crash.
    pub fn save_now(&self, path: &Path) -> Result<(), StateError> {
        let _guard = self.save_lock.lock().unwrap_or_else(|p| p.into_inner());
        let state = self.read(|c| c.to_state());
        save(path, &state)
    }

    /// Reads liveness.
    pub fn liveness<R>(&self, f: impl FnOnce(&mut Liveness) -> R) -> R {
        f(&mut self.liveness.lock().unwrap_or_else(|p| p.into_inner()))
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

/// Loads the saved catalog of `site`, or creates a new one with a fresh epoch.
pub fn load(path: &Path, site: &str, limits: Limits) -> Result<(Catalog, bool), StateError> {
    let p = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => {
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
            let c = Catalog::from_state(state, limits)
                .map_err(|message| StateError::Corrupt { path: p, message })?;
            Ok((c, true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok((Catalog::new(site, new_epoch(), limits), false))
        }
        Err(source) => Err(StateError::Io { path: p, source }),
    }
}

/// A new epoch: the current time in nanoseconds, so later incarnations compare higher.
pub fn new_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// Writes the state atomically: a temporary file, fsync, rename, fsync of the folder.
pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.display().to_string(),
        source,
    };
    let bytes = serde_json::to_vec(state).map_err(|e| StateError::Corrupt {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp: PathBuf = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Saves the catalog whenever it changed, at most every `min_interval`, and once more when
/// `shutdown` fires. Runs until shutdown.
pub async fn persist(
    store: std::sync::Arc<Store>,
    path: PathBuf,
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
        let (s, p) = (store.clone(), path.clone());
        let r = tokio::task::spawn_blocking(move || s.save_now(&p)).await;
        if let Ok(Err(e)) = r {
            tracing::error!(error = %e, "cannot persist the catalog");
        }
        tokio::time::sleep(min_interval.saturating_sub(started.elapsed())).await;
    }
    if let Err(e) = store.save_now(&path) {
        tracing::error!(error = %e, "cannot persist the catalog at shutdown");
    }
}
