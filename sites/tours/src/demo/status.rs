//! The status page: every site's links, catalog, traffic splits (configured against observed
//! shares) and request rates, live.
//!
//! A sampler asks each site's federationd (admin socket: status, peers, catalog, splits) and
//! scrapes its edge agent's `/metrics` every second; rates and observed shares are computed over
//! the last [`WINDOW`] of samples. `GET /` is the page, `GET /api/status` the JSON it polls.

use multimesh_core::locks::lock;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use multimesh_proto::admin::v1 as api;
use serde_json::{Value, json};

use crate::client::Http;

/// The span rates and observed shares are computed over.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Where to ask about one site.
#[derive(Clone, Debug)]
pub struct SiteEndpoints {
    /// Site name.
    pub name: String,
    /// Its federationd's admin socket.
    pub admin_socket: PathBuf,
    /// Its edge agent's admin listener (`host:port`).
    pub edge_admin: String,
    /// The site's mesh (`istio`), or `none`.
    pub mesh: String,
}

/// Call counters of one edge agent, from its `/metrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EdgeCounters {
    /// Calls by (direction, service, destination site): (all, failed).
    pub calls: BTreeMap<(String, String, String), (f64, f64)>,
    /// Latency sums and counts by (direction, destination site).
    pub latency: BTreeMap<(String, String), (f64, f64)>,
}

/// Parses the agent's Prometheus text into [`EdgeCounters`].
pub fn parse_metrics(text: &str) -> EdgeCounters {
    let mut c = EdgeCounters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let Some((name, labels)) = head.split_once('{') else {
            continue;
        };
        let labels = labels.trim_end_matches('}');
        let label = |k: &str| -> String {
            labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.trim_matches('"').to_string())
                .unwrap_or_default()
        };
        match name {
            "multimesh_edge_requests_total" => {
                let e = c
                    .calls
                    .entry((label("direction"), label("service"), label("destination")))
                    .or_default();
                e.0 += v;
                if matches!(label("code").as_str(), "5xx" | "none") {
                    e.1 += v;
                }
            }
            "multimesh_edge_request_duration_seconds_sum" => {
                c.latency
                    .entry((label("direction"), label("destination")))
                    .or_default()
                    .0 += v;
            }
            "multimesh_edge_request_duration_seconds_count" => {
                c.latency
                    .entry((label("direction"), label("destination")))
                    .or_default()
                    .1 += v;
            }
            _ => {}
        }
    }
    c
}

struct Sample {
    at: Instant,
    edges: BTreeMap<String, EdgeCounters>,
}

/// The status of the demo's sites.
pub struct Status {
    sites: Vec<SiteEndpoints>,
    http: Http,
    samples: Mutex<VecDeque<Sample>>,
    latest: Mutex<Value>,
}

impl Status {
    /// Watches `sites`.
    pub fn new(sites: Vec<SiteEndpoints>) -> Arc<Self> {
        Arc::new(Self {
            sites,
            http: Http::default(),
            samples: Mutex::new(VecDeque::new()),
            latest: Mutex::new(json!({"sites": [], "splits": []})),
        })
    }

    /// Samples every second until dropped.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let v = self.sample().await;
            *lock(&self.latest) = v;
        }
    }

    /// The latest status document.
    pub fn latest(&self) -> Value {
        lock(&self.latest).clone()
    }

    async fn scrape(&self, edge: &str) -> Result<(EdgeCounters, bool, String), String> {
        let t = Duration::from_secs(1);
        let (code, body) = self.http.get_text(edge, "/metrics", t).await?;
        if code != 200 {
            return Err(format!("/metrics answered {code}"));
        }
        let counters = parse_metrics(&body);
        let (code, body) = self.http.get_text(edge, "/readyz", t).await?;
        Ok((counters, code == 200, body.trim().to_string()))
    }

    /// One sample of every site, and the status document it gives.
    pub async fn sample(&self) -> Value {
        let now = Instant::now();
        let mut edges = BTreeMap::new();
        let mut sites = Vec::new();
        let mut splits = Vec::new();
        for s in &self.sites {
            let edge = match self.scrape(&s.edge_admin).await {
                Ok((c, ready, detail)) => {
                    edges.insert(s.name.clone(), c);
                    json!({"up": true, "ready": ready, "detail": detail})
                }
                Err(e) => json!({"up": false, "ready": false, "detail": e}),
            };
            let fed = federation_view(&s.admin_socket).await;
            if let Some(list) = fed.get("splits").and_then(Value::as_array) {
                for sp in list {
                    let mut sp = sp.clone();
                    sp["site"] = json!(s.name);
                    splits.push(sp);
                }
            }
            sites.push(json!({"name": s.name, "mesh": s.mesh, "edge": edge, "federation": fed}));
        }
        let mut samples = lock(&self.samples);
        samples.push_back(Sample { at: now, edges });
        while samples
            .front()
            .is_some_and(|f| now.duration_since(f.at) > WINDOW)
        {
            samples.pop_front();
        }
        let (first, last) = (samples.front(), samples.back());
        let secs = match (first, last) {
            (Some(f), Some(l)) => l.at.duration_since(f.at).as_secs_f64(),
            _ => 0.0,
        };
        let delta = |site: &str| -> EdgeCounters {
            let (Some(f), Some(l)) = (first, last) else {
                return EdgeCounters::default();
            };
            let (Some(a), Some(b)) = (f.edges.get(site), l.edges.get(site)) else {
                return EdgeCounters::default();
            };
            let mut d = EdgeCounters::default();
            for (k, (n, e)) in &b.calls {
                let (n0, e0) = a.calls.get(k).copied().unwrap_or_default();
                d.calls.insert(k.clone(), (n - n0, e - e0));
            }
            for (k, (sum, n)) in &b.latency {
                let (s0, n0) = a.latency.get(k).copied().unwrap_or_default();
                d.latency.insert(k.clone(), (sum - s0, n - n0));
            }
            d
        };
        for site in &mut sites {
            let name = site["name"].as_str().unwrap_or_default().to_string();
            let d = delta(&name);
            let rate = |dir: &str| -> f64 {
                if secs <= 0.0 {
                    return 0.0;
                }
                d.calls
                    .iter()
                    .filter(|((di, _, _), _)| di == dir)
                    .map(|(_, (n, _))| n)
                    .sum::<f64>()
                    / secs
            };
            let errors: f64 = d.calls.values().map(|(_, e)| e).sum();
            let latency: BTreeMap<String, Value> = d
                .latency
                .iter()
                .filter(|((dir, _), (_, n))| dir == "egress" && *n > 0.0)
                .map(|((_, dst), (sum, n))| (dst.clone(), json!(1000.0 * sum / n)))
                .collect();
            site["rates"] = json!({
                "egress_per_s": rate("egress"), "ingress_per_s": rate("ingress"),
                "errors_in_window": errors, "window_s": secs,
            });
            site["egress_latency_ms"] = json!(latency);
        }
        for sp in &mut splits {
            let site = sp["site"].as_str().unwrap_or_default().to_string();
            let d = delta(&site);
            let calls = |svc: &str| -> f64 {
                d.calls
                    .iter()
                    .filter(|((dir, s, _), _)| dir == "egress" && s == svc)
                    .map(|(_, (n, _))| n)
                    .sum()
            };
            // The agent labels calls with the service id, `namespace/name`.
            let ns = sp["namespace"].as_str().unwrap_or_default().to_string();
            let Some(backends) = sp["backends"].as_array_mut() else {
                continue;
            };
            let counts: Vec<f64> = backends
                .iter()
                .map(|b| {
                    calls(&format!(
                        "{ns}/{}",
                        b["service"].as_str().unwrap_or_default()
                    ))
                })
                .collect();
            let total: f64 = counts.iter().sum();
            for (b, n) in backends.iter_mut().zip(counts) {
                b["observed_calls"] = json!(n);
                b["observed_percent"] = if total > 0.0 {
                    json!(100.0 * n / total)
                } else {
                    Value::Null
                };
            }
        }
        json!({"sites": sites, "splits": splits, "window_s": WINDOW.as_secs()})
    }
}

/// What a site's federationd says: status, peers, catalog and splits (or why it cannot say).
async fn federation_view(socket: &std::path::Path) -> Value {
    let mut c = match federation::admin::connect(socket).await {
        Ok(c) => c,
        Err(e) => return json!({"up": false, "error": e}),
    };
    let (status, peers, catalog, splits) = (
        c.status(api::StatusRequest {}).await,
        c.peers(api::PeersRequest {}).await,
        federation::admin::catalog_all(&mut c).await,
        c.splits(api::SplitsRequest {}).await,
    );
    let Ok(status) = status.map(tonic::Response::into_inner) else {
        return json!({"up": false, "error": "status call failed"});
    };
    let peers: Vec<Value> = peers
        .map(|p| p.into_inner().peers)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            json!({"site": p.site, "state": p.state, "healthy": p.healthy, "direction": p.direction,
                   "last_heartbeat_ms": p.last_heartbeat_ms, "last_error": p.last_error})
        })
        .collect();
    let origins: Vec<Value> = catalog
        .map(|c| c.origins)
        .unwrap_or_default()
        .iter()
        .map(|o| {
            json!({"origin": o.origin, "state": o.state, "version": o.version,
                   "last_heard_ms": o.last_heard_ms,
                   "entries": o.entries.iter().map(|e| {
                       let s = e.service.clone().unwrap_or_default();
                       json!({"name": s.name, "namespace": s.namespace, "stale": e.stale, "served": e.served})
                   }).collect::<Vec<_>>()})
        })
        .collect();
    let splits: Vec<Value> = splits
        .map(|s| s.into_inner().splits)
        .unwrap_or_default()
        .iter()
        .map(|s| {
            json!({"service": s.service, "namespace": s.namespace, "source": s.source,
                   "backends": s.backends.iter().map(|b| json!({
                       "service": b.service, "weight": b.weight,
                       "configured_percent": b.percent, "sites": b.sites})).collect::<Vec<_>>()})
        })
        .collect();
    json!({"up": true, "version": status.version, "exports": status.exports,
           "entries_visible": status.entries_visible, "peers_healthy": status.peers_healthy,
           "peers_total": status.peers, "uptime_s": status.uptime_s,
           "peers": peers, "catalog": origins, "splits": splits})
}

const PAGE: &str = include_str!("../../static/status.html");

/// Serves the status page on `addr` until the task is dropped.
pub async fn serve(status: Arc<Status>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let app = axum::Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route(
            "/api/status",
            get(|State(s): State<Arc<Status>>| async move { Json(s.latest()) }),
        )
        .with_state(status);
    axum::serve(listener, app).await?;
    Ok(())
}

/// The address the page is at, for people.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_summed_by_service_and_destination() {
        let text = "# HELP x\nmultimesh_edge_requests_total{site=\"a\",direction=\"egress\",service=\"payment\",destination=\"b\",code=\"2xx\"} 7\nmultimesh_edge_requests_total{site=\"a\",direction=\"egress\",service=\"payment\",destination=\"b\",code=\"5xx\"} 2\nmultimesh_edge_requests_total{site=\"a\",direction=\"egress\",service=\"payment\",destination=\"b\",code=\"none\"} 1\nmultimesh_edge_request_duration_seconds_sum{site=\"a\",direction=\"egress\",service=\"payment\",destination=\"b\"} 0.5\nmultimesh_edge_request_duration_seconds_count{site=\"a\",direction=\"egress\",service=\"payment\",destination=\"b\"} 10\n";
        let c = parse_metrics(text);
        let k = ("egress".to_string(), "payment".to_string(), "b".to_string());
        assert_eq!(c.calls[&k], (10.0, 3.0));
        assert_eq!(
            c.latency[&("egress".to_string(), "b".to_string())],
            (0.5, 10.0)
        );
    }
}
