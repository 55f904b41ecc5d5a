//! What the daemon reports of itself, for `federationctl status` and `check`: what the site's
//! backend last did (a pass that failed as a whole, such as the API server unreachable, and each
//! object the mesh or the cluster did not take, with the reason, how often it was tried, and
//! when it is tried next), and how the config file was last read again.

use multimesh_core::locks::lock;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use multimesh_core::backoff::Backoff;

/// One object not applied (or not deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectProblem {
    /// `apiVersion/Kind/namespace/name`.
    pub object: String,
    /// What the server said.
    pub reason: String,
    /// Refused (the server or an admission webhook said no) rather than failed (could not ask).
    pub refused: bool,
    /// Consecutive passes that failed on it.
    pub attempts: u32,
    /// When it first failed (ms since the Unix epoch).
    pub since_unix_ms: u64,
}

/// The backend's last outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendReport {
    /// `static` or `kubernetes`.
    pub kind: String,
    /// The site's mesh (`kubernetes.mesh`), empty for the static backend.
    pub mesh: String,
    /// When the last pass ended (ms since the Unix epoch; 0: none yet).
    pub last_pass_unix_ms: u64,
    /// Why the last pass failed as a whole (empty: it ran).
    pub error: String,
    /// Objects not applied, by object.
    pub problems: BTreeMap<String, ObjectProblem>,
    /// When the next pass is due, in ms from the last one (0: on the next change).
    pub next_retry_ms: u64,
}

impl BackendReport {
    /// The problems of a pass, carrying attempts and first-seen times over from the previous
    /// pass for objects that still fail.
    pub fn next_problems(
        &self,
        now_unix_ms: u64,
        failed: impl IntoIterator<Item = (String, String, bool)>,
    ) -> BTreeMap<String, ObjectProblem> {
        failed
            .into_iter()
            .map(|(object, reason, refused)| {
                let (attempts, since) = match self.problems.get(&object) {
                    Some(p) => (p.attempts.saturating_add(1), p.since_unix_ms),
                    None => (1, now_unix_ms),
                };
                let p = ObjectProblem {
                    object: object.clone(),
                    reason,
                    refused,
                    attempts,
                    since_unix_ms: since,
                };
                (object, p)
            })
            .collect()
    }

    /// How long to wait before trying failing objects again: 1 s after the first failure,
    /// doubling with each further one, at most `cap_ms`; `None` when nothing fails.
    pub fn retry_ms(&self, cap_ms: u64) -> Option<u64> {
        let worst = self.problems.values().map(|p| p.attempts).max()?;
        let b = Backoff::new(Duration::from_secs(1), Duration::from_millis(cap_ms));
        Some(b.delay_after(worst.saturating_sub(1)).as_millis() as u64)
    }
}

impl BackendReport {
    /// An empty report for a backend of `kind` on `mesh`.
    pub fn new(kind: &str, mesh: &str) -> Self {
        Self {
            kind: kind.into(),
            mesh: mesh.into(),
            ..Default::default()
        }
    }
}

/// How the config file was last read again while the daemon ran (`config_reload_ms`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigReport {
    /// When a changed file was last read (ms since the Unix epoch; 0: not since the start).
    pub last_change_unix_ms: u64,
    /// Why that file was refused (empty: it was taken, or none was read). A refused file
    /// changes nothing.
    pub error: String,
    /// Fields that differ from the file the daemon started with: they take effect at the next
    /// start.
    pub restart_fields: Vec<String>,
    /// Peers added and removed while the daemon ran.
    pub peers_added: Vec<String>,
    /// See `peers_added`.
    pub peers_removed: Vec<String>,
}

/// A report one task writes and the admin API reads.
#[derive(Debug, Default)]
pub struct Reported<T>(Mutex<T>);

impl<T: Clone> Reported<T> {
    /// Starts with `report`.
    pub fn new(report: T) -> Self {
        Self(Mutex::new(report))
    }

    /// A copy of the report.
    pub fn get(&self) -> T {
        lock(&self.0).clone()
    }

    /// Changes the report.
    pub fn update(&self, f: impl FnOnce(&mut T)) {
        f(&mut lock(&self.0));
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn attempts_carry_over_and_the_retry_backs_off_to_a_cap() {
        let mut r = BackendReport::default();
        assert_eq!(r.retry_ms(30_000), None);
        let fail = |o: &str| (o.to_string(), "webhook down".to_string(), false);
        r.problems = r.next_problems(100, [fail("ServiceEntry/shop/a")]);
        assert_eq!(r.retry_ms(30_000), Some(1_000));
        r.problems = r.next_problems(
            200,
            [fail("ServiceEntry/shop/a"), fail("ServiceEntry/shop/b")],
        );
        assert_eq!(r.problems["ServiceEntry/shop/a"].attempts, 2);
        assert_eq!(r.problems["ServiceEntry/shop/a"].since_unix_ms, 100);
        assert_eq!(r.problems["ServiceEntry/shop/b"].attempts, 1);
        assert_eq!(r.retry_ms(30_000), Some(2_000));
        for _ in 0..10 {
            r.problems = r.next_problems(300, [fail("ServiceEntry/shop/a")]);
        }
        assert_eq!(r.retry_ms(30_000), Some(30_000));
        // An object that goes through is forgotten.
        r.problems = r.next_problems(400, []);
        assert!(r.problems.is_empty());
        assert_eq!(r.retry_ms(30_000), None);
    }
}
