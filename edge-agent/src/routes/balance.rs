//! Choosing a destination site (pure): weighted random choice among healthy sites, and outlier
//! detection that ejects a site after consecutive failures for a growing back-off period.

use multimesh_core::locks::lock;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Outlier-detection settings.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierSettings {
    /// Consecutive failures (connect errors, 5xx, timeouts) that eject a site.
    pub consecutive_failures: u32,
    /// First ejection period (ms); doubles with each ejection in a row, up to `max_ejection_ms`.
    pub base_ejection_ms: u64,
    /// Longest ejection period (ms).
    pub max_ejection_ms: u64,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_ms: 2_000,
            max_ejection_ms: 30_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct SiteHealth {
    failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections since the last success (drives the back-off).
    streak: u32,
}

/// What a call's outcome did to its destination's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing worth logging.
    None,
    /// The destination was just ejected for this long.
    Ejected(Duration),
    /// A destination that had been ejected answered well again.
    Recovered,
}

/// Health of (service, site) pairs, shared by every request of the agent.
#[derive(Debug, Default)]
pub struct Health {
    settings: OutlierSettings,
    sites: Mutex<HashMap<(String, String), SiteHealth>>,
}

/// One candidate destination: an opaque site name and a weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The site.
    pub site: &'a str,
    /// Relative weight.
    pub weight: u32,
}

/// The one weighted choice (sites of a service, backends of a split): the item whose share of
/// the cumulative weights holds `roll % total`, so a uniform `roll` picks each item with
/// probability weight / total. Zero weights are never chosen; `None` when all are zero.
pub fn weighted<T>(items: impl Iterator<Item = (T, u32)> + Clone, roll: u64) -> Option<T> {
    let total: u64 = items.clone().map(|(_, w)| u64::from(w)).sum();
    if total == 0 {
        return None;
    }
    let mut x = roll % total;
    for (item, w) in items {
        let w = u64::from(w);
        if x < w {
            return Some(item);
        }
        x -= w;
    }
    None
}

impl Health {
    /// Health tracking with `settings`.
    pub fn new(settings: OutlierSettings) -> Self {
        Self {
            settings,
            sites: Mutex::default(),
        }
    }

    /// Picks a site for `service` among `candidates`, skipping `tried` ones, by weight among
    /// those not ejected at `now`. `roll` is a uniform random number. When every weighted
    /// candidate is ejected, the one whose ejection ends first is tried (better a call that may
    /// fail than none). Zero-weight candidates are never picked.
    pub fn pick<'a>(
        &self,
        service: &str,
        candidates: &[Candidate<'a>],
        tried: &[&str],
        now: Instant,
        roll: u64,
    ) -> Option<&'a str> {
        let sites = lock(&self.sites);
        if sites.is_empty() {
            // Nothing has failed lately (the common case): a plain weighted choice.
            drop(sites);
            let open = candidates
                .iter()
                .filter(|c| !tried.contains(&c.site))
                .map(|c| (c.site, c.weight));
            return weighted(open, roll);
        }
        let ejected_until = |site: &str| {
            sites
                .get(&(service.to_string(), site.to_string()))
                .and_then(|h| h.ejected_until)
                .filter(|t| *t > now)
        };
        let open: Vec<&Candidate<'a>> = candidates
            .iter()
            .filter(|c| c.weight > 0 && !tried.contains(&c.site))
            .collect();
        let healthy: Vec<&&Candidate<'a>> = open
            .iter()
            .filter(|c| ejected_until(c.site).is_none())
            .collect();
        if healthy.is_empty() {
            return open
                .iter()
                .min_by_key(|c| ejected_until(c.site))
                .map(|c| c.site);
        }
        weighted(healthy.iter().map(|c| (c.site, c.weight)), roll)
    }

    /// Whether `site` is ejected for `service` at `now`.
    pub fn is_ejected(&self, service: &str, site: &str, now: Instant) -> bool {
        let sites = lock(&self.sites);
        if sites.is_empty() {
            return false;
        }
        sites
            .get(&(service.to_string(), site.to_string()))
            .and_then(|h| h.ejected_until)
            .is_some_and(|t| t > now)
    }

    /// Records a call's outcome.
    pub fn record(&self, service: &str, site: &str, ok: bool, now: Instant) -> Change {
        let mut sites = lock(&self.sites);
        if ok && sites.is_empty() {
            return Change::None;
        }
        let key = (service.to_string(), site.to_string());
        if ok {
            // Keep the map small: a healthy pair needs no entry.
            return match sites.remove(&key) {
                Some(h) if h.streak > 0 => Change::Recovered,
                _ => Change::None,
            };
        }
        let h = sites.entry(key).or_default();
        if h.ejected_until.is_some_and(|t| t > now) {
            return Change::None;
        }
        h.failures += 1;
        if h.failures < self.settings.consecutive_failures.max(1) {
            return Change::None;
        }
        let shift = h.streak.min(16);
        let period = Duration::from_millis(
            self.settings
                .base_ejection_ms
                .saturating_mul(1 << shift)
                .min(self.settings.max_ejection_ms),
        );
        h.failures = 0;
        h.streak += 1;
        h.ejected_until = Some(now + period);
        Change::Ejected(period)
    }

    /// (service, site) pairs ejected at `now`, for metrics.
    pub fn ejected(&self, now: Instant) -> Vec<(String, String)> {
        lock(&self.sites)
            .iter()
            .filter(|(_, h)| h.ejected_until.is_some_and(|t| t > now))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn weighted_choice_gives_each_item_exactly_its_share_of_rolls() {
        let items = [("a", 3), ("zero", 0), ("b", 1)];
        let mut seen = HashMap::new();
        for roll in 0..4 * 1000 {
            let got = weighted(items.iter().copied(), roll);
            *seen.entry(got).or_insert(0) += 1;
        }
        assert_eq!(seen[&Some("a")], 3000);
        assert_eq!(seen[&Some("b")], 1000);
        assert_eq!(seen.len(), 2, "zero weights are never chosen: {seen:?}");
        assert_eq!(weighted([("z", 0)].into_iter(), 7), None);
        assert_eq!(weighted(std::iter::empty::<(&str, u32)>(), 7), None);
    }

    fn settings() -> OutlierSettings {
        OutlierSettings {
            consecutive_failures: 3,
            base_ejection_ms: 1000,
            max_ejection_ms: 3000,
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_with_growing_backoff() {
        let h = Health::new(settings());
        let t0 = Instant::now();
        assert_eq!(h.record("s", "a", false, t0), Change::None);
        assert_eq!(h.record("s", "a", false, t0), Change::None);
        assert_eq!(
            h.record("s", "a", false, t0),
            Change::Ejected(Duration::from_secs(1))
        );
        assert!(h.is_ejected("s", "a", t0));
        assert!(!h.is_ejected("other", "a", t0));
        let cands = [
            Candidate {
                site: "a",
                weight: 9,
            },
            Candidate {
                site: "c",
                weight: 1,
            },
        ];
        for roll in 0..20 {
            assert_eq!(h.pick("s", &cands, &[], t0, roll), Some("c"));
        }
        // After the period, three more failures eject for twice as long, then capped.
        let t1 = t0 + Duration::from_millis(1001);
        assert!(!h.is_ejected("s", "a", t1));
        for _ in 0..2 {
            h.record("s", "a", false, t1);
        }
        assert_eq!(
            h.record("s", "a", false, t1),
            Change::Ejected(Duration::from_secs(2))
        );
        let t2 = t1 + Duration::from_secs(3);
        for _ in 0..2 {
            h.record("s", "a", false, t2);
        }
        assert_eq!(
            h.record("s", "a", false, t2),
            Change::Ejected(Duration::from_secs(3))
        );
        // A success clears everything.
        assert_eq!(h.record("s", "a", true, t2), Change::Recovered);
        assert!(!h.is_ejected("s", "a", t2));
        assert_eq!(h.record("s", "a", true, t2), Change::None);
    }

    #[test]
    fn success_resets_the_failure_count() {
        let h = Health::new(settings());
        let t = Instant::now();
        h.record("s", "a", false, t);
        h.record("s", "a", false, t);
        h.record("s", "a", true, t);
        h.record("s", "a", false, t);
        h.record("s", "a", false, t);
        assert!(!h.is_ejected("s", "a", t));
    }

    #[test]
    fn all_ejected_tries_the_one_back_first_and_skips_tried() {
        let h = Health::new(settings());
        let t = Instant::now();
        for _ in 0..3 {
            h.record("s", "a", false, t);
        }
        let later = t + Duration::from_millis(10);
        for _ in 0..3 {
            h.record("s", "c", false, later);
        }
        let cands = [
            Candidate {
                site: "a",
                weight: 1,
            },
            Candidate {
                site: "c",
                weight: 1,
            },
        ];
        assert_eq!(h.pick("s", &cands, &[], later, 7), Some("a"));
        assert_eq!(h.pick("s", &cands, &["a"], later, 7), Some("c"));
        assert_eq!(h.pick("s", &cands, &["a", "c"], later, 7), None);
    }

    proptest! {
        /// Every roll lands on a non-zero-weight site, and over a full cycle of rolls each site
        /// gets exactly its weight.
        #[test]
        fn picks_follow_weights_exactly(weights in proptest::collection::vec(0u32..50, 1..6)) {
            prop_assume!(weights.iter().any(|w| *w > 0));
            let names: Vec<String> = (0..weights.len()).map(|i| format!("s{i}")).collect();
            let cands: Vec<Candidate<'_>> = names
                .iter()
                .zip(&weights)
                .map(|(n, w)| Candidate { site: n, weight: *w })
                .collect();
            let h = Health::new(settings());
            let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
            let mut counts = vec![0u64; weights.len()];
            let now = Instant::now();
            for roll in 0..total {
                let site = h.pick("svc", &cands, &[], now, roll).unwrap();
                let i = names.iter().position(|n| n == site).unwrap();
                counts[i] += 1;
            }
            let expected: Vec<u64> = weights.iter().map(|w| u64::from(*w)).collect();
            prop_assert_eq!(counts, expected);
        }
    }
}
