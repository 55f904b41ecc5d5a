//! Prometheus metrics of the agent, rendered in the text exposition format on `/metrics`.
//!
//! Hand-rolled rather than a registry crate: a handful of families, no allocation on the hot
//! path once a (direction, service, site) series exists. Call series are sharded per
//! data-plane thread (each thread locks only its own shard, which nothing else touches but a
//! scrape) and summed when scraped; the rest is shared and rare (TLS failures, ejections) or
//! atomic counters.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use multimesh_core::locks::lock;

use crate::routes::published::Published;
use crate::runtime::workers::PerThread;

/// Latency buckets (seconds).
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Which side of the agent handled a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// A local caller's call leaving the site.
    Egress,
    /// A peer site's call arriving.
    Ingress,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Egress => "egress",
            Direction::Ingress => "ingress",
        }
    }
}

#[derive(Clone, Default)]
struct Series {
    /// Responses by status class (index 1..=5); index 0 counts calls that got no response.
    by_class: [u64; 6],
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// One thread's call series, per direction (egress, ingress): service -> destination site.
type CallShard = [Mutex<BTreeMap<String, BTreeMap<String, Series>>>; 2];

/// The agent's metrics.
pub struct Metrics {
    /// Call series: each data-plane thread records into its own shard.
    calls: PerThread<CallShard>,
    tls_failures: Mutex<BTreeMap<(&'static str, String), u64>>,
    ejections: Mutex<BTreeMap<(String, String), u64>>,
    /// Open connections per listener: egress, ingress, tcp.
    pub active_egress: AtomicI64,
    /// Open peer connections accepted by ingress.
    pub active_ingress: AtomicI64,
    /// Open TCP tunnels.
    pub active_tunnels: AtomicI64,
    /// Retries sent to another site.
    pub retries: AtomicU64,
}

impl Series {
    fn add(&mut self, other: &Series) {
        for (a, b) in self.by_class.iter_mut().zip(other.by_class) {
            *a += b;
        }
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
    }
}

impl Metrics {
    /// Metrics for an agent with `threads` data-plane threads.
    pub fn new(threads: usize) -> Self {
        Self {
            calls: PerThread::new(threads, CallShard::default),
            tls_failures: Mutex::default(),
            ejections: Mutex::default(),
            active_egress: AtomicI64::default(),
            active_ingress: AtomicI64::default(),
            active_tunnels: AtomicI64::default(),
            retries: AtomicU64::default(),
        }
    }

    /// Records one call: `status` is `None` when no response came back.
    pub fn call(
        &self,
        dir: Direction,
        service: &str,
        site: &str,
        status: Option<u16>,
        took: Duration,
    ) {
        let secs = took.as_secs_f64();
        let mut calls = lock(&self.calls.get()[dir as usize]);
        // Look up by reference first: no allocation once a series exists.
        if !calls.get(service).is_some_and(|m| m.contains_key(site)) {
            calls
                .entry(service.to_string())
                .or_default()
                .insert(site.to_string(), Series::default());
        }
        let Some(s) = calls.get_mut(service).and_then(|m| m.get_mut(site)) else {
            return;
        };
        let class = status.map_or(0, |c| usize::from(c / 100).clamp(1, 5));
        s.by_class[class] += 1;
        s.count += 1;
        s.sum += secs;
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            s.buckets[i] += 1;
        }
    }

    /// Records a failed TLS handshake on `listener`.
    pub fn tls_failure(&self, listener: &'static str, reason: &str) {
        *lock(&self.tls_failures)
            .entry((listener, reason.to_string()))
            .or_default() += 1;
    }

    /// Records an ejection.
    pub fn ejection(&self, service: &str, site: &str) {
        *lock(&self.ejections)
            .entry((service.to_string(), site.to_string()))
            .or_default() += 1;
    }

    /// Calls recorded for (direction, service, site) that got a response, by site — for tests
    /// and the status page.
    pub fn calls_by_site(&self, dir: Direction, service: &str) -> BTreeMap<String, u64> {
        let mut out: BTreeMap<String, u64> = BTreeMap::new();
        for shard in self.calls.all() {
            if let Some(m) = lock(&shard[dir as usize]).get(service) {
                for (site, v) in m {
                    *out.entry(site.clone()).or_default() += v.count;
                }
            }
        }
        out
    }

    /// Every series, summed over the threads' shards, by (direction, service, site).
    fn series(&self) -> BTreeMap<(Direction, String, String), Series> {
        let mut out: BTreeMap<(Direction, String, String), Series> = BTreeMap::new();
        for shard in self.calls.all() {
            for dir in [Direction::Egress, Direction::Ingress] {
                for (svc, sites) in lock(&shard[dir as usize]).iter() {
                    for (site, s) in sites {
                        out.entry((dir, svc.clone(), site.clone()))
                            .or_default()
                            .add(s);
                    }
                }
            }
        }
        out
    }

    /// The text exposition. `ejected` lists the currently ejected (service, site) pairs;
    /// `routes` is the route table in force with its counts.
    pub fn render(&self, site: &str, ejected: &[(String, String)], routes: &Published) -> String {
        let (updates, rejects) = routes.counts();
        let services = routes.current().len();
        let mut o = String::new();
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            o,
            "# HELP multimesh_edge_requests_total Calls handled, by direction, service, destination site and status class.\n# TYPE multimesh_edge_requests_total counter"
        );
        let calls = self.series();
        for ((d, svc, dst), s) in calls.iter() {
            for (i, n) in s.by_class.iter().enumerate() {
                if *n == 0 {
                    continue;
                }
                let class = if i == 0 {
                    "none".to_string()
                } else {
                    format!("{i}xx")
                };
                let _ = writeln!(
                    o,
                    "multimesh_edge_requests_total{{site=\"{site}\",direction=\"{}\",service=\"{}\",destination=\"{}\",code=\"{class}\"}} {n}",
                    d.as_str(),
                    esc(svc),
                    esc(dst)
                );
            }
        }
        let _ = writeln!(
            o,
            "# HELP multimesh_edge_request_duration_seconds Time to the response headers.\n# TYPE multimesh_edge_request_duration_seconds histogram"
        );
        for ((d, svc, dst), s) in calls.iter() {
            let labels = format!(
                "site=\"{site}\",direction=\"{}\",service=\"{}\",destination=\"{}\"",
                d.as_str(),
                esc(svc),
                esc(dst)
            );
            let mut acc = 0;
            for (b, n) in BUCKETS.iter().zip(s.buckets.iter()) {
                acc += n;
                let _ = writeln!(
                    o,
                    "multimesh_edge_request_duration_seconds_bucket{{{labels},le=\"{b}\"}} {acc}"
                );
            }
            let _ = writeln!(
                o,
                "multimesh_edge_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\nmultimesh_edge_request_duration_seconds_sum{{{labels}}} {}\nmultimesh_edge_request_duration_seconds_count{{{labels}}} {}",
                s.count, s.sum, s.count
            );
        }
        let _ = writeln!(
            o,
            "# HELP multimesh_edge_active_connections Open connections by listener.\n# TYPE multimesh_edge_active_connections gauge"
        );
        for (name, v) in [
            ("egress", &self.active_egress),
            ("ingress", &self.active_ingress),
            ("tunnel", &self.active_tunnels),
        ] {
            let _ = writeln!(
                o,
                "multimesh_edge_active_connections{{site=\"{site}\",listener=\"{name}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            o,
            "# HELP multimesh_edge_tls_failures_total Refused or failed TLS handshakes.\n# TYPE multimesh_edge_tls_failures_total counter"
        );
        for ((l, reason), n) in lock(&self.tls_failures).iter() {
            let _ = writeln!(
                o,
                "multimesh_edge_tls_failures_total{{site=\"{site}\",listener=\"{l}\",reason=\"{}\"}} {n}",
                esc(reason)
            );
        }
        let _ = writeln!(
            o,
            "# HELP multimesh_edge_ejections_total Destinations ejected by outlier detection.\n# TYPE multimesh_edge_ejections_total counter"
        );
        for ((svc, dst), n) in lock(&self.ejections).iter() {
            let _ = writeln!(
                o,
                "multimesh_edge_ejections_total{{site=\"{site}\",service=\"{}\",destination=\"{}\"}} {n}",
                esc(svc),
                esc(dst)
            );
        }
        let _ = writeln!(
            o,
            "# HELP multimesh_edge_ejected Destinations ejected now.\n# TYPE multimesh_edge_ejected gauge"
        );
        for (svc, dst) in ejected {
            let _ = writeln!(
                o,
                "multimesh_edge_ejected{{site=\"{site}\",service=\"{}\",destination=\"{}\"}} 1",
                esc(svc),
                esc(dst)
            );
        }
        for (name, help, v) in [
            (
                "multimesh_edge_retries_total",
                "Calls retried on another site.",
                self.retries.load(Ordering::Relaxed),
            ),
            (
                "multimesh_edge_route_updates_total",
                "Route tables applied.",
                updates,
            ),
            (
                "multimesh_edge_route_rejects_total",
                "Route tables refused as invalid.",
                rejects,
            ),
        ] {
            let _ = writeln!(
                o,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{site=\"{site}\"}} {v}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP multimesh_edge_routes Services in the route table.\n# TYPE multimesh_edge_routes gauge\nmultimesh_edge_routes{{site=\"{site}\"}} {services}"
        );
        o
    }
}

/// The gauge of when the certificate the agent presents now stops being valid, for alerts
/// (`multimesh_edge_certificate_expiration_timestamp_seconds - time() < 14 * 86400`); it follows
/// a rotation.
pub fn certificate_expiry(site: &str, not_after_unix: i64) -> String {
    format!(
        "# HELP multimesh_edge_certificate_expiration_timestamp_seconds When the certificate this agent presents stops being valid (Unix time).\n# TYPE multimesh_edge_certificate_expiration_timestamp_seconds gauge\nmultimesh_edge_certificate_expiration_timestamp_seconds{{site=\"{site}\"}} {not_after_unix}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::workers::as_thread;

    #[test]
    fn each_thread_records_into_its_own_shard_and_a_scrape_sums_them() {
        let m = Metrics::new(2);
        let ms = Duration::from_millis(3);
        as_thread(0, || {
            m.call(Direction::Egress, "shop/pay", "a", Some(200), ms)
        });
        as_thread(1, || {
            m.call(Direction::Egress, "shop/pay", "a", Some(503), ms)
        });
        as_thread(1, || m.call(Direction::Egress, "shop/pay", "b", None, ms));
        m.call(Direction::Ingress, "shop/pay", "c", Some(200), ms);
        let shard = |i: usize| lock(&m.calls.all()[i][0]).get("shop/pay").map(|x| x.len());
        assert_eq!((shard(0), shard(1), shard(2)), (Some(1), Some(2), None));
        assert_eq!(
            m.calls_by_site(Direction::Egress, "shop/pay"),
            BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 1)])
        );
        let text = m.render("x", &[], &Published::default());
        for line in [
            "multimesh_edge_requests_total{site=\"x\",direction=\"egress\",service=\"shop/pay\",destination=\"a\",code=\"2xx\"} 1",
            "multimesh_edge_requests_total{site=\"x\",direction=\"egress\",service=\"shop/pay\",destination=\"a\",code=\"5xx\"} 1",
            "multimesh_edge_requests_total{site=\"x\",direction=\"egress\",service=\"shop/pay\",destination=\"b\",code=\"none\"} 1",
            "multimesh_edge_request_duration_seconds_count{site=\"x\",direction=\"egress\",service=\"shop/pay\",destination=\"a\"} 2",
            "multimesh_edge_requests_total{site=\"x\",direction=\"ingress\",service=\"shop/pay\",destination=\"c\",code=\"2xx\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
