//! The one lock helper: take a `Mutex` or `RwLock` even when a panic poisoned it; and
//! [`Slots`], connections counted per key (per calling site) while they live.
//!
//! Every value kept behind these locks is whole between statements (maps, counters, slots: a
//! panic cannot leave one half-updated in a way a later reader would trust), so a poisoned lock
//! is taken as it is rather than turning one panicked task into a panic in every caller.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes `l` for reading.
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Takes `l` for writing.
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// At most `max` things (connections) at once per key, each counted until its [`Slot`] drops.
pub struct Slots<K: Eq + Hash + Clone> {
    max: usize,
    open: Mutex<HashMap<K, usize>>,
}

/// One counted thing of a key; dropping it frees its place.
pub struct Slot<K: Eq + Hash + Clone> {
    of: Arc<Slots<K>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Slots<K> {
    /// At most `max` per key.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::default(),
        })
    }

    /// A place for one more of `key`, unless it has `max` already.
    pub fn take(self: &Arc<Self>, key: &K) -> Option<Slot<K>> {
        let mut open = lock(&self.open);
        let n = open.entry(key.clone()).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            of: self.clone(),
            key: key.clone(),
        })
    }

    /// How many of `key` are held now.
    pub fn held(&self, key: &K) -> usize {
        lock(&self.open).get(key).copied().unwrap_or(0)
    }
}

impl<K: Eq + Hash + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut open = lock(&self.of.open);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_key_and_freed_on_drop() {
        let slots = Slots::new(2);
        let a1 = slots.take(&"a").unwrap();
        let _a2 = slots.take(&"a").unwrap();
        assert!(slots.take(&"a").is_none(), "a third of a");
        let _b = slots.take(&"b").expect("other keys are not affected");
        drop(a1);
        assert_eq!(slots.held(&"a"), 1);
        assert!(slots.take(&"a").is_some());
        assert_eq!(slots.held(&"a"), 1, "the temporary slot was dropped");
    }

    #[test]
    fn a_poisoned_lock_is_still_taken() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let l = std::sync::Arc::new(RwLock::new(2));
        let (m2, l2) = (m.clone(), l.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock();
            let _w = l2.write();
            panic!("poison both");
        })
        .join();
        assert!(m.is_poisoned() && l.is_poisoned());
        *lock(&m) += 1;
        *write(&l) += 1;
        assert_eq!((*lock(&m), *read(&l)), (2, 3));
    }
}
