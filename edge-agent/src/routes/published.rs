//! The route table in force, as the feed publishes it and calls read it. A new table replaces
//! the old one whole; calls in flight keep the table they started with (an `Arc`). The feed
//! knows only this handle, never the agent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use multimesh_core::locks::{read, write};
use tokio::sync::watch;
use tracing::info;

use crate::config::LocalService;
use crate::routes::RouteTable;

/// The published route table, shared by the feed (writer) and every data-plane thread
/// (readers: one read lock and an `Arc` clone per call; written only when a table is applied).
#[derive(Debug)]
pub struct Published {
    /// This site's workloads, joined into every table published.
    locals: Vec<LocalService>,
    table: RwLock<Arc<RouteTable>>,
    /// Counts tables published; listeners that follow the table wait on it.
    epoch: watch::Sender<u64>,
    updates: AtomicU64,
    rejects: AtomicU64,
}

impl Default for Published {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl Published {
    /// An empty table; each table published gets `locals` joined in.
    pub fn new(locals: Vec<LocalService>) -> Self {
        Self {
            locals,
            table: RwLock::new(Arc::new(RouteTable::default())),
            epoch: watch::Sender::new(0),
            updates: AtomicU64::new(0),
            rejects: AtomicU64::new(0),
        }
    }

    /// The table in force (empty until the first is published).
    pub fn current(&self) -> Arc<RouteTable> {
        read(&self.table).clone()
    }

    /// Puts `table` in force, with this site's workloads joined in.
    pub fn publish(&self, mut table: RouteTable) {
        table.join_locals(&self.locals);
        info!(
            version = %table.version,
            services = table.len(),
            "route table applied"
        );
        *write(&self.table) = Arc::new(table);
        self.epoch.send_modify(|e| *e += 1);
        self.updates.fetch_add(1, Ordering::Release);
    }

    /// Counts a table refused as invalid (the one in force stays).
    pub fn reject(&self) {
        self.rejects.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a table was ever published.
    pub fn loaded(&self) -> bool {
        self.updates.load(Ordering::Acquire) > 0
    }

    /// Changes whenever a table is published.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// Tables published, and tables refused.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.updates.load(Ordering::Relaxed),
            self.rejects.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_published_table_is_current_and_the_one_a_reader_holds_stays_whole() {
        let p = Published::default();
        assert!(!p.loaded());
        let changes = p.changes();
        let before = p.current();
        let t = RouteTable::parse(
            "services: [{name: payment, namespace: shop, ports: [{port: 8080}], destinations: [{site: a}]}]",
            "yaml",
            "v1".into(),
        )
        .unwrap();
        p.publish(t);
        assert!(p.loaded());
        assert!(changes.has_changed().unwrap());
        assert_eq!(p.current().version, "v1");
        assert_eq!(before.len(), 0, "a reader keeps the table it started with");
        p.reject();
        assert_eq!(p.counts(), (1, 1));
    }
}
