//! The scripted walkthrough: a booking across sites, a TrafficSplit shifted 90/10 → 50/50 →
//! 0/100 between tour-catalog versions on different sites (measured from the answers), and
//! payment failing over when site b's edge agent is killed, then coming back.
//!
//! Every step checks what it shows and is recorded in a [`Report`]; the walkthrough fails when
//! any step does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use super::local::{Demo, edge_name, say};
use super::topology::NAMESPACE;

/// How far an observed share may be from the configured one, in percentage points.
pub const SPLIT_TOLERANCE: f64 = 3.0;

/// One checked step.
#[derive(Debug, Serialize)]
pub struct Step {
    /// What the step shows.
    pub name: String,
    /// Whether it showed it.
    pub ok: bool,
    /// The measurements.
    pub detail: Value,
}

/// The outcome of the walkthrough.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Report {
    /// Whether every step passed.
    pub fn ok(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|s| s.ok)
    }

    fn record(&mut self, name: &str, ok: bool, detail: Value) {
        say(format!("{} {name}", if ok { "PASS" } else { "FAIL" }));
        self.steps.push(Step {
            name: name.to_string(),
            ok,
            detail,
        });
    }
}

/// The result of one booking through the front end.
#[derive(Debug, Clone)]
struct Booking {
    ok: bool,
    /// step → site that served it.
    sites: BTreeMap<String, String>,
    error: String,
}

async fn book(demo: &Demo, customer: &str) -> Booking {
    let r = demo
        .http
        .request(
            Method::POST,
            &format!("127.0.0.1:{}", demo.topology.frontend_port()),
            "/api/bookings",
            &[],
            Some(&json!({"tour_id": "fjord-kayak", "customer": customer, "seats": 2})),
            Duration::from_secs(10),
        )
        .await;
    match r {
        Ok((201, body)) => {
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            let sites = v["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    (
                        s["step"].as_str().unwrap_or_default().to_string(),
                        s["served_by"]["site"]
                            .as_str()
                            .unwrap_or("failed")
                            .to_string(),
                    )
                })
                .collect();
            Booking {
                ok: true,
                sites,
                error: String::new(),
            }
        }
        Ok((code, body)) => Booking {
            ok: false,
            sites: BTreeMap::new(),
            error: format!("{code}: {}", String::from_utf8_lossy(&body).trim()),
        },
        Err(e) => Booking {
            ok: false,
            sites: BTreeMap::new(),
            error: e,
        },
    }
}

/// Runs the walkthrough on a started demo.
pub async fn run(demo: &Demo, calls_per_phase: usize) -> Report {
    let mut report = Report::default();
    sites_pass_their_checks(demo, &mut report);
    booking_across_sites(demo, &mut report).await;
    traffic_split(demo, &mut report, calls_per_phase).await;
    same_mesh_type(demo, &mut report).await;
    failover(demo, &mut report).await;
    report
}

/// Every site's federationd and edge agent pass their own `check`: certificates as peers check
/// them, peers healthy, backend applied, agent ready. Warnings (a certificate within 30 days of
/// its end) do not fail it.
fn sites_pass_their_checks(demo: &Demo, report: &mut Report) {
    say("step 0: every site checks itself (federationctl check, edge-agent check)");
    let mut ok = true;
    let mut rows = Vec::new();
    for site in &demo.topology.sites {
        let dir = demo.opts.dir.join(site.name);
        let commands: [(&str, &str, &[&str]); 2] = [
            ("federationctl", "federationd.toml", &["-o", "json"]),
            ("edge-agent", "edge.toml", &["--json"]),
        ];
        for (bin, config, json_flag) in commands {
            let out = std::process::Command::new(demo.opts.bin_dir.join(bin))
                .arg("check")
                .arg("--config")
                .arg(dir.join(config))
                .args(json_flag)
                .output();
            let (passed, report_json) = match out {
                Ok(o) => (
                    o.status.success(),
                    serde_json::from_slice::<Value>(&o.stdout).unwrap_or(Value::Null),
                ),
                Err(e) => (false, json!({"error": e.to_string()})),
            };
            let failed: Vec<String> = report_json["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["outcome"] == "fail")
                .map(|c| {
                    format!(
                        "{}: {}",
                        c["check"].as_str().unwrap_or(""),
                        c["detail"].as_str().unwrap_or("")
                    )
                })
                .collect();
            let checks = report_json["checks"].as_array().map_or(0, Vec::len);
            let passed = passed && checks > 0;
            if passed {
                say(format!(
                    "  site {}: {bin} check: {checks} checks, {} warning(s)",
                    site.name, report_json["warnings"]
                ));
            } else {
                say(format!(
                    "  site {}: {bin} check FAILED: {}",
                    site.name,
                    if failed.is_empty() {
                        report_json.to_string()
                    } else {
                        failed.join("; ")
                    }
                ));
            }
            ok &= passed;
            rows.push(
                json!({"site": site.name, "command": bin, "ok": passed, "report": report_json}),
            );
        }
    }
    report.record(
        "every site's federationd and edge agent pass their checks (certificates, peers, backend, readiness)",
        ok,
        json!({"checks": rows}),
    );
}

async fn booking_across_sites(demo: &Demo, report: &mut Report) {
    say("step 1: book a tour on the front end at site a");
    let mut rows = Vec::new();
    let mut ok = true;
    for i in 0..4 {
        let b = book(demo, &format!("Walkthrough guest {i}")).await;
        if b.ok {
            say(format!(
                "  booking confirmed: {}",
                b.sites
                    .iter()
                    .map(|(step, site)| format!("{step}@{site}"))
                    .collect::<Vec<_>>()
                    .join(" → ")
            ));
        } else {
            say(format!("  booking failed: {}", b.error));
        }
        let crossed = b.sites.values().any(|s| s != "a");
        let valid = b.ok
            && b.sites.get("booking").map(String::as_str) == Some("a")
            && matches!(
                b.sites.get("tour-catalog").map(String::as_str),
                Some("b" | "c")
            )
            && matches!(b.sites.get("payment").map(String::as_str), Some("b" | "c"))
            && matches!(
                b.sites.get("notification").map(String::as_str),
                Some("b" | "node")
            )
            && crossed;
        ok &= valid;
        rows.push(json!({"ok": b.ok, "sites": b.sites, "error": b.error}));
    }
    report.record(
        "a booking made at site a crosses sites (tour-catalog and payment at b or c, notification at b or the edge node)",
        ok,
        json!({"bookings": rows}),
    );
}

fn split_yaml(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata:\n  name: tour-catalog-rollout\n  namespace: {NAMESPACE}\nspec:\n  service: tour-catalog\n  backends:\n  - service: tour-catalog-v1\n    weight: {v1}\n  - service: tour-catalog-v2\n    weight: {v2}\n"
    )
}

/// Whether `routes` (an agent's `/routes`) splits tour-catalog v1:v2 in the ratio `v1:v2`.
fn split_in_routes(routes: &Value, v1: u32, v2: u32) -> bool {
    let Some(sp) = routes["routes"]["splits"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["service"] == "tour-catalog")
    else {
        return false;
    };
    let w = |name: &str| -> u64 {
        sp["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["service"] == name)
            .and_then(|b| b["weight"].as_u64())
            .unwrap_or(0)
    };
    let (w1, w2) = (w("tour-catalog-v1"), w("tour-catalog-v2"));
    w1 + w2 > 0 && w1 * u64::from(v2) == w2 * u64::from(v1)
}

/// `n` calls (16 at a time) of tour-catalog sent to `egress` (an edge agent, or a mesh proxy):
/// the versions that answered, and the calls that failed.
async fn spread_via(demo: &Demo, n: usize, egress: String) -> (BTreeMap<String, usize>, usize) {
    let host = format!("tour-catalog.{NAMESPACE}.svc.clusterset.local");
    calls_by(demo, n, egress, host, |v| {
        v["served_by"]["version"].as_str().map(str::to_string)
    })
    .await
}

/// `n` calls (16 at a time) of `/tours/lisbon-trams` at `host` sent to `egress`: counted by
/// what `key` reads from each 200 answer, and the calls that failed.
async fn calls_by(
    demo: &Demo,
    n: usize,
    egress: String,
    host: String,
    key: fn(&Value) -> Option<String>,
) -> (BTreeMap<String, usize>, usize) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counts = Arc::new(Mutex::new((BTreeMap::<String, usize>::new(), 0usize)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (http, egress, host, next, counts) = (
            demo.http.clone(),
            egress.clone(),
            host.clone(),
            next.clone(),
            counts.clone(),
        );
        tasks.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let r = http
                    .request(
                        Method::GET,
                        &egress,
                        "/tours/lisbon-trams",
                        &[("host", &host)],
                        None,
                        Duration::from_secs(5),
                    )
                    .await;
                let version = match r {
                    Ok((200, body)) => serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| key(&v)),
                    _ => None,
                };
                let mut c = counts.lock().await;
                match version {
                    Some(v) => *c.0.entry(v).or_default() += 1,
                    None => c.1 += 1,
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let c = counts.lock().await;
    (c.0.clone(), c.1)
}

/// One measured step of a traffic split.
struct SplitStep<'a> {
    name: &'a str,
    /// Configured v1 / v2 percent.
    weights: (u32, u32),
    calls: usize,
    /// Where the calls go (an edge agent, or a mesh proxy).
    egress: String,
    /// How the observed shares are introduced ("observed through m's Envoy").
    observed: &'static str,
    /// When the proxy had the split, for the line printed.
    applied: String,
    propagation_ms: u64,
    /// The proxy that split the calls, when not the edge agent.
    proxy: Option<&'static str>,
}

/// Sends the step's calls, compares the shares with the configured ones (within
/// [`SPLIT_TOLERANCE`] points, no failure), says so and records it.
async fn measure_split(demo: &Demo, report: &mut Report, step: SplitStep<'_>) {
    let ((v1, v2), n) = (step.weights, step.calls);
    let (counts, failed) = spread_via(demo, n, step.egress).await;
    let answered: usize = counts.values().sum();
    let share = |v: &str| {
        if answered == 0 {
            0.0
        } else {
            100.0 * *counts.get(v).unwrap_or(&0) as f64 / answered as f64
        }
    };
    let (o1, o2) = (share("v1"), share("v2"));
    let ok = failed == 0
        && answered == n
        && (o1 - f64::from(v1)).abs() <= SPLIT_TOLERANCE
        && (o2 - f64::from(v2)).abs() <= SPLIT_TOLERANCE;
    say(format!(
        "  configured v1 {v1}% / v2 {v2}%  →  {} v1 {o1:.1}% / v2 {o2:.1}% over {n} calls ({failed} failed; {})",
        step.observed, step.applied
    ));
    let mut detail = json!({"configured": {"v1": v1, "v2": v2}, "observed_percent": {"v1": o1, "v2": o2},
        "calls": n, "failed": failed, "propagation_ms": step.propagation_ms,
        "tolerance_points": SPLIT_TOLERANCE});
    if let Some(p) = step.proxy {
        detail["proxy"] = json!(p);
    }
    report.record(step.name, ok, detail);
}

async fn traffic_split(demo: &Demo, report: &mut Report, n: usize) {
    if !demo.meshes.is_empty() {
        return mesh_traffic_split(demo, report, n).await;
    }
    say(
        "step 2: shift tour-catalog from v1 (site c) to v2 (site b) with an SMI TrafficSplit applied at site a",
    );
    for (v1, v2) in [(90u32, 10u32), (50, 50), (0, 100)] {
        let file = demo
            .opts
            .dir
            .join(format!("tour-catalog-split-{v1}-{v2}.yaml"));
        let name = format!("TrafficSplit tour-catalog v1 {v1} / v2 {v2}");
        if let Err(e) = std::fs::write(&file, split_yaml(v1, v2)) {
            report.record(&name, false, json!({"error": e.to_string()}));
            continue;
        }
        say(format!(
            "  federationctl apply -f {} (at site a)",
            file.display()
        ));
        let f = file.display().to_string();
        if let Err(e) = demo.federationctl("a", &["apply", "-f", &f]) {
            report.record(&name, false, json!({"error": e.to_string()}));
            continue;
        }
        let applied = Instant::now();
        let mut seen = false;
        while applied.elapsed() < Duration::from_secs(10) {
            if demo
                .routes("a")
                .await
                .is_ok_and(|r| split_in_routes(&r, v1, v2))
            {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let propagation_ms = applied.elapsed().as_millis() as u64;
        if !seen {
            report.record(
                &name,
                false,
                json!({"error": "site a's edge agent did not get the split within 10 s"}),
            );
            continue;
        }
        let Some(a) = demo.topology.site("a") else {
            continue;
        };
        let step = SplitStep {
            name: &name,
            weights: (v1, v2),
            calls: n,
            egress: format!("127.0.0.1:{}", a.egress_port),
            observed: "observed",
            applied: format!("edge agent had the split {propagation_ms} ms after apply"),
            propagation_ms,
            proxy: None,
        };
        measure_split(demo, report, step).await;
    }
    bad_split_refused(demo, report);
    match demo.federationctl("a", &["delete-split", "tour-catalog", "-n", NAMESPACE]) {
        Ok(_) => say(
            "  federationctl delete-split tour-catalog -n tours: both versions serve the root name again",
        ),
        Err(e) => report.record("delete the split", false, json!({"error": e.to_string()})),
    }
}

/// A split with a negative weight is refused, naming the field, and the applied split stays.
fn bad_split_refused(demo: &Demo, report: &mut Report) {
    let file = demo.opts.dir.join("tour-catalog-split-bad.yaml");
    let before = demo.federationctl("a", &["splits", "-o", "json"]);
    let bad = split_yaml(50, 50).replace("weight: 50\n", "weight: -5\n");
    let applied = std::fs::write(&file, bad)
        .map_err(anyhow::Error::from)
        .and_then(|()| demo.federationctl("a", &["apply", "-f", &file.display().to_string()]));
    let after = demo.federationctl("a", &["splits", "-o", "json"]);
    let error = match &applied {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    };
    say(format!("  a split with weight -5 is refused: {error}"));
    let unchanged = matches!((&before, &after), (Ok(b), Ok(a)) if a == b);
    report.record(
        "a malformed TrafficSplit is refused with the field named, and changes nothing",
        applied.is_err() && error.contains("spec.backends[0].weight") && unchanged,
        json!({"error": error, "splits_unchanged": unchanged}),
    );
}

/// Books in a loop with 4 callers until `stop`; every result with its time.
async fn book_loop(
    demo: &Demo,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<(Instant, Booking)> {
    let callers = (0..4).map(|i| {
        let stop = stop.clone();
        async move {
            let mut out = Vec::new();
            let mut k = 0;
            while !*stop.borrow() {
                k += 1;
                let b = book(demo, &format!("Failover guest {i}-{k}")).await;
                out.push((Instant::now(), b));
            }
            out
        }
    });
    let mut all: Vec<(Instant, Booking)> = futures::future::join_all(callers)
        .await
        .into_iter()
        .flatten()
        .collect();
    all.sort_by_key(|(t, _)| *t);
    all
}

fn sites_of(results: &[&(Instant, Booking)], step: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, b) in results.iter().filter(|(_, b)| b.ok) {
        if let Some(s) = b.sites.get(step) {
            *m.entry(s.clone()).or_default() += 1;
        }
    }
    m
}

/// Failed bookings a switch may cost: those in flight at b when it died (4 callers), twice.
pub const FAILOVER_ERROR_BOUND: usize = 8;

async fn failover(demo: &Demo, report: &mut Report) {
    say(
        "step 3: kill site b's edge agent (SIGKILL) while 4 callers keep booking; payment and notification fail over",
    );
    let edge_b = edge_name("b");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let driver = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let killed = Instant::now();
        let r = demo.procs.lock().await.kill(&edge_b).await;
        say("  site b's edge agent killed");
        tokio::time::sleep(Duration::from_secs(6)).await;
        let _ = tx.send(true);
        (killed, r)
    };
    let (results, (killed, kill)) = tokio::join!(book_loop(demo, rx), driver);
    if let Err(e) = kill {
        report.record(
            "kill site b's edge agent",
            false,
            json!({"error": e.to_string()}),
        );
        return;
    }
    let settle = Duration::from_secs(2);
    let before: Vec<_> = results.iter().filter(|(t, _)| *t < killed).collect();
    let switching: Vec<_> = results
        .iter()
        .filter(|(t, _)| *t >= killed && *t < killed + settle)
        .collect();
    let after: Vec<_> = results
        .iter()
        .filter(|(t, _)| *t >= killed + settle)
        .collect();
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, b)| !b.ok)
        .map(|(_, b)| b.error.as_str())
        .collect();
    let (pay_before, pay_after) = (sites_of(&before, "payment"), sites_of(&after, "payment"));
    let notify_after = sites_of(&after, "notification");
    let after_ok = after.iter().filter(|(_, b)| b.ok).count();
    say(format!(
        "  before the kill: {} bookings, payment at {pay_before:?}",
        before.len()
    ));
    say(format!(
        "  during the switch (first {} s): {} bookings, {} failed",
        settle.as_secs(),
        switching.len(),
        switching.iter().filter(|(_, b)| !b.ok).count()
    ));
    say(format!(
        "  after: {} bookings, {after_ok} confirmed, payment at {pay_after:?}, notification at {notify_after:?}",
        after.len()
    ));
    for e in failed.iter().take(3) {
        say(format!("  a failed booking said: {e}"));
    }
    let ok = pay_before.get("b").copied().unwrap_or(0) > 0
        && !after.is_empty()
        && after_ok == after.len()
        && pay_after.keys().all(|s| s == "c")
        && notify_after.keys().all(|s| s == "node")
        && failed.len() <= FAILOVER_ERROR_BOUND;
    report.record(
        "site b's edge agent killed: payment fails over to c, notification to the edge node, failures bounded",
        ok,
        json!({"bookings": results.len(), "before": before.len(), "during_switch": switching.len(),
               "after": after.len(), "failed": failed.len(), "failure_bound": FAILOVER_ERROR_BOUND,
               "payment_before": pay_before, "payment_after": pay_after,
               "notification_after": notify_after, "sample_errors": failed.iter().take(3).collect::<Vec<_>>()}),
    );

    say("step 4: restart site b's edge agent; payment is served at b again");
    let restarted = Instant::now();
    if let Err(e) = demo.procs.lock().await.restart(&edge_b) {
        report.record(
            "restart site b's edge agent",
            false,
            json!({"error": e.to_string()}),
        );
        return;
    }
    let mut back = None;
    let mut attempts = 0;
    let mut failures = 0;
    while restarted.elapsed() < Duration::from_secs(30) {
        let b = book(demo, "Restored guest").await;
        attempts += 1;
        if !b.ok {
            failures += 1;
        }
        if b.sites.get("payment").map(String::as_str) == Some("b") {
            back = Some(restarted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match back {
        Some(d) => say(format!(
            "  payment served at b again {:.1} s after the restart ({attempts} bookings, {failures} failed)",
            d.as_secs_f64()
        )),
        None => say("  payment was not served at b within 30 s of the restart"),
    }
    report.record(
        "site b's edge agent restarted: b serves payment again",
        back.is_some() && failures == 0,
        json!({"seconds_to_recover": back.map(|d| d.as_secs_f64()), "bookings": attempts, "failed": failures}),
    );
}

fn split_object(v1: u32, v2: u32) -> Value {
    json!({"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
        "metadata": {"name": "tour-catalog-rollout", "namespace": NAMESPACE},
        "spec": {"service": "tour-catalog",
                 "backends": [{"service": "tour-catalog-v1", "weight": v1},
                              {"service": "tour-catalog-v2", "weight": v2}]}})
}

/// The weight of each cluster of m's Envoy route for tour-catalog (100 for a single cluster),
/// from its admin `/config_dump`.
async fn envoy_weights(demo: &Demo, admin: u16) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok((200, body)) = demo
        .http
        .get_text(
            &format!("127.0.0.1:{admin}"),
            "/config_dump",
            Duration::from_secs(2),
        )
        .await
    else {
        return out;
    };
    let Ok(dump) = serde_json::from_str::<Value>(&body) else {
        return out;
    };
    let host = format!("tour-catalog.{NAMESPACE}.svc.clusterset.local");
    for c in dump["configs"].as_array().into_iter().flatten() {
        for rc in c["dynamic_route_configs"].as_array().into_iter().flatten() {
            for vh in rc["route_config"]["virtual_hosts"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let ours = vh["domains"].as_array().into_iter().flatten().any(|d| {
                    d.as_str()
                        .is_some_and(|d| d == host || d.starts_with(&format!("{host}:")))
                });
                if !ours {
                    continue;
                }
                let route = &vh["routes"][0]["route"];
                if let Some(cl) = route["cluster"].as_str() {
                    out.insert(cl.to_string(), 100);
                }
                for cl in route["weighted_clusters"]["clusters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    out.insert(
                        cl["name"].as_str().unwrap_or_default().to_string(),
                        cl["weight"].as_u64().unwrap_or(0),
                    );
                }
            }
        }
    }
    out
}

/// Step 2 with `--meshes`: the TrafficSplit is applied in site m's cluster, rendered by m's
/// federationd into an Istio VirtualService, and the calls go through m's Envoy (the
/// walkthrough client's sidecar), which splits them; both versions are at other sites, reached
/// through m's edge agent.
async fn mesh_traffic_split(demo: &Demo, report: &mut Report, n: usize) {
    let (Some(m), Some(ports)) = (
        demo.meshes.iter().find(|c| c.site == "m"),
        demo.topology.site("m").and_then(|s| s.mesh),
    ) else {
        return;
    };
    let port = demo.topology.service_port;
    say(
        "step 2: shift tour-catalog from v1 (site c) to v2 (site b) with an SMI TrafficSplit applied in site m's cluster (Istio): federationd renders it into a VirtualService, and m's Envoy splits the calls",
    );
    for (v1, v2) in [(90u32, 10u32), (50, 50), (0, 100)] {
        let name =
            format!("TrafficSplit tour-catalog v1 {v1} / v2 {v2} (through Istio's Envoy at m)");
        if let Err(e) = m.apply(&split_object(v1, v2)) {
            report.record(&name, false, json!({"error": e.to_string()}));
            continue;
        }
        say(format!(
            "  TrafficSplit tours/tour-catalog-rollout v1 {v1} / v2 {v2} applied in m's cluster"
        ));
        let want: BTreeMap<String, u64> = [("v1", v1), ("v2", v2)]
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .map(|(v, w)| {
                (
                    format!("outbound|{port}||tour-catalog-{v}.{NAMESPACE}.svc.clusterset.local"),
                    u64::from(w),
                )
            })
            .collect();
        let applied = Instant::now();
        let mut seen = false;
        while applied.elapsed() < Duration::from_secs(30) {
            let got: BTreeMap<String, u64> = envoy_weights(demo, ports.sidecar_admin)
                .await
                .into_iter()
                .filter(|(_, w)| *w > 0)
                .collect();
            if got == want {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let propagation_ms = applied.elapsed().as_millis() as u64;
        if !seen {
            report.record(
                &name,
                false,
                json!({"error": "m's Envoy did not get the split within 30 s",
                       "envoy_route": envoy_weights(demo, ports.sidecar_admin).await}),
            );
            continue;
        }
        let step = SplitStep {
            name: &name,
            weights: (v1, v2),
            calls: n,
            egress: format!("127.0.0.1:{port}"),
            observed: "observed through m's Envoy",
            applied: format!("Envoy had the route {propagation_ms} ms after apply"),
            propagation_ms,
            proxy: Some("istio envoy at site m"),
        };
        measure_split(demo, report, step).await;
    }
    bad_split_refused(demo, report);
    match m.delete(&split_object(0, 0)) {
        Ok(()) => {
            say("  TrafficSplit deleted from m's cluster: both versions serve the root name again")
        }
        Err(e) => report.record("delete the split", false, json!({"error": e.to_string()})),
    }
}

/// Calls made per run of the same-mesh-type step.
pub const SAME_MESH_CALLS: usize = 400;

/// The requests n's Envoy has served on its inbound listeners, from its admin `/stats`.
async fn inbound_served(demo: &Demo, admin: u16) -> Option<u64> {
    let Ok((200, text)) = demo
        .http
        .get_text(
            &format!("127.0.0.1:{admin}"),
            "/stats?filter=downstream_rq_completed",
            Duration::from_secs(2),
        )
        .await
    else {
        return None;
    };
    Some(
        text.lines()
            .filter_map(|l| l.split_once(": "))
            .filter(|(k, _)| {
                k.starts_with("http.inbound_") && k.ends_with(".downstream_rq_completed")
            })
            .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
            .sum(),
    )
}

/// With `--meshes`: m and n run the same mesh type (Istio), each with its own istiod and API
/// server. m's walkthrough client calls n's app (tour-catalog v3) by its clusterset name
/// through m's Envoy, m's and n's edge agents, and n's Envoy; every call must be answered by
/// v3 at n, and n's Envoy must have served each (its inbound counter).
async fn same_mesh_type(demo: &Demo, report: &mut Report) {
    let (Some(_), Some(n)) = (
        demo.topology.site("m").and_then(|s| s.mesh),
        demo.topology.site("n").and_then(|s| s.mesh),
    ) else {
        return;
    };
    say(
        "step 2b: m and n run the same mesh, Istio, each with its own API server and istiod: m's Envoy calls tour-catalog-v3 at n, which n's Envoy serves",
    );
    let name = "m (Istio) calls n (Istio): every call through m's Envoy, both edge agents and n's Envoy, answered by v3 at n";
    let egress = format!("127.0.0.1:{}", demo.topology.service_port);
    let host = format!("tour-catalog-v3.{NAMESPACE}.svc.clusterset.local");
    let by_site = |v: &Value| {
        Some(format!(
            "{} at {}",
            v["served_by"]["version"].as_str()?,
            v["served_by"]["site"].as_str()?
        ))
    };
    // Until m's Envoy has the imported service and n's Envoy its inbound listener.
    let started = Instant::now();
    let mut reached = false;
    while started.elapsed() < Duration::from_secs(60) {
        let (seen, _) = calls_by(demo, 1, egress.clone(), host.clone(), by_site).await;
        if seen.contains_key("v3 at n") {
            reached = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !reached {
        report.record(
            name,
            false,
            json!({"error": "m's Envoy did not reach tour-catalog-v3 at n within 60 s"}),
        );
        return;
    }
    let ready_ms = started.elapsed().as_millis() as u64;
    let before = inbound_served(demo, n.sidecar_admin).await;
    let (seen, failed) = calls_by(demo, SAME_MESH_CALLS, egress, host, by_site).await;
    let after = inbound_served(demo, n.sidecar_admin).await;
    let served = after.zip(before).map(|(a, b)| a.saturating_sub(b));
    let at_n = seen.get("v3 at n").copied().unwrap_or(0);
    let ok = failed == 0 && at_n == SAME_MESH_CALLS && served.is_some_and(|s| s >= at_n as u64);
    say(format!(
        "  {at_n} of {SAME_MESH_CALLS} calls answered by v3 at n ({failed} failed), {} of them served by n's Envoy; first call through {ready_ms} ms after the step began",
        served.map_or("none counted".to_string(), |s| s.to_string())
    ));
    report.record(
        name,
        ok,
        json!({"calls": SAME_MESH_CALLS, "answered_by": seen, "failed": failed,
               "served_by_n_envoy": served, "first_call_ms": ready_ms,
               "path": ["m's Envoy", "m's edge agent", "n's edge agent", "n's Envoy", "tour-catalog v3 at n"]}),
    );
}
