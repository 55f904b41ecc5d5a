//! A real Istio mesh reads what federationd writes. Site a is a Kubernetes site (a real API
//! server) running upstream istiod; its workloads are local processes, each behind its own
//! sidecar: upstream istio-agent with upstream Envoy, certificates from istiod's CA, config
//! from istiod's xDS (scripts/istio-testenv.sh; docs/ARCHITECTURE.md "Real meshes"). Site b
//! is a plain site whose edge agent serves reviews-v2. Real federationd and edge-agent
//! processes join them.
//!
//! - A TrafficSplit applied at a is rendered by federationd into a VirtualService; the caller's
//!   Envoy splits real calls between the local reviews-v1 (over Istio mTLS to its sidecar) and
//!   reviews-v2 at b (through the edge agents), within 3 points at 90/10, 50/50 and 0/100.
//! - A TrafficTarget becomes an AuthorizationPolicy that reviews-v1's Envoy enforces.
//! - `istioctl analyze` finds no error in what federationd wrote, nor in any Istio output of
//!   the golden corpus.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use support::edge::Edge;
use support::istio::{
    App, Http1, Istiod, Sidecar, Tools, Workload, analyze_errors, dump_section, free_port,
};
use support::kubeenv::{self as k, KubeEnv, prepare};
use support::{Pki, Site, SiteSpec, eventually, test_dir, within};

const REVIEWS: &str = "reviews.shop.svc.cluster.local";

/// The weight of each cluster of the caller's route for `REVIEWS` (100 for a route with one).
fn route_weights(sidecar: &Sidecar) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for section in dump_section(&sidecar.config_dump(), "RoutesConfigDump") {
        for rc in section["dynamic_route_configs"]
            .as_array()
            .into_iter()
            .flatten()
        {
            for vh in rc["route_config"]["virtual_hosts"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let is_reviews = vh["domains"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|d| d.as_str().is_some_and(|d| d.starts_with(REVIEWS)));
                if !is_reviews {
                    continue;
                }
                let route = &vh["routes"][0]["route"];
                if let Some(c) = route["cluster"].as_str() {
                    out.insert(c.to_string(), 100);
                }
                for c in route["weighted_clusters"]["clusters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    out.insert(
                        c["name"].as_str().unwrap().to_string(),
                        c["weight"].as_u64().unwrap_or(0),
                    );
                }
            }
        }
    }
    out
}

/// `n` GETs of `host` through the Envoy listener at `listener`, on one keep-alive connection:
/// counts by answer ("v1", "v2", or "HTTP <status>" / "error").
fn calls(listener: (&str, u16), host: &str, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut conn = None;
    for _ in 0..n {
        if conn.is_none() {
            conn = match Http1::connect(listener) {
                Ok(c) => Some(c),
                Err(e) => {
                    *out.entry(format!("error: connecting: {e}")).or_default() += 1;
                    continue;
                }
            };
        }
        let Some(c) = conn.as_mut() else { continue };
        // A keep-alive connection that Envoy closed between two calls (it drains a listener
        // when istiod pushes a new one) is retried once on a new connection, as an HTTP client
        // does with a pooled connection for an idempotent request.
        let answer = match c.get(host, "/", &[]) {
            Err(_) => Http1::connect(listener).and_then(|mut fresh| {
                let r = fresh.get(host, "/", &[]);
                conn = Some(fresh);
                r
            }),
            ok => ok,
        };
        let key = match answer {
            Ok((200, body)) => body,
            Ok((s, body)) => format!("HTTP {s}: {}", body.trim()),
            Err(e) => {
                conn = None;
                format!("error: {e}")
            }
        };
        *out.entry(key).or_default() += 1;
    }
    out
}

async fn split(c: &kube::Client, v1: u32, v2: u32) {
    k::apply(
        c,
        "test",
        &json!({"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
            "metadata": {"name": "reviews-rollout", "namespace": "shop"},
            "spec": {"service": "reviews",
                     "backends": [{"service": "reviews-v1", "weight": v1},
                                  {"service": "reviews-v2", "weight": v2}]}}),
    )
    .await
    .unwrap();
}

/// A Service in shop selecting `app: selector`, HTTP on `port` to the workloads' `target`.
fn http_service(name: &str, selector: &str, port: u16, target: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"selector": {"app": selector},
                 "ports": [{"name": "http", "port": port, "targetPort": target,
                            "protocol": "TCP", "appProtocol": "http"}]}})
}

fn sidecar_resource(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "Sidecar",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": spec})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_envoy_splits_and_enforces_what_federationd_writes() {
    let env = KubeEnv::start(&["a"]);
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let kubeconfig = prepare(&env, "a", &["mcs", "istio", "smi"]).await;
    let ca = env.client("a").await;
    let istiod = Istiod::start(&env, "a").await;

    // The service port: the caller's Envoy listens on it (127.0.0.1, and 127.0.0.2 for the
    // intruder); reviews-v1's Envoy takes mTLS on `inbound`.
    let port = free_port();
    let inbound = free_port();
    let egress_a = free_port();
    let ingress_b = free_port();
    let v1 = App::start("v1");
    let v2 = App::start("v2");

    // Site b: a plain site exporting reviews-v2, served by its edge agent.
    let fed_b = Site::start(
        &pki,
        root,
        &SiteSpec::new("b")
            .top(&format!("edge_ingress = [\"127.0.0.1:{ingress_b}\"]\n"))
            .accept("a")
            .extra(&format!(
                "\n[[services]]\nname = \"reviews-v2\"\nnamespace = \"shop\"\nexport = true\nports = [{{ name = \"http\", port = {port}, protocol = \"http\" }}]\n"
            )),
        None,
    );
    let _edge_b = Edge::start(
        &pki,
        root,
        "b",
        &format!(
            "ingress = \"127.0.0.1:{ingress_b}\"\nadmin = \"127.0.0.1:0\"\n[[local]]\nname = \"reviews-v2\"\nnamespace = \"shop\"\nports = [{{ port = {port}, upstream = \"127.0.0.1:{}\" }}]\n[routes]\nfederation = \"{}\"\n",
            v2.port, fed_b.listen
        ),
    );

    // Site a: Kubernetes with Istio. Its edge agent is outside the cluster's service network
    // (a process on this host), so imports are sent to its address.
    let fed_a = Site::start(
        &pki,
        root,
        &SiteSpec::new("a")
            .top("backend = \"kubernetes\"\n")
            .dial("b", &fed_b.listen)
            .extra(&format!(
                "\n[kubernetes]\nkubeconfig = \"{}\"\nmesh = \"istio\"\nresync_seconds = 5\nedge_address = \"127.0.0.1\"\nedge_http_port = {egress_a}\n",
                kubeconfig.display()
            )),
        None,
    );
    let edge_a = Edge::start(
        &pki,
        root,
        "a",
        &format!(
            "egress_http = \"127.0.0.1:{egress_a}\"\nadmin = \"127.0.0.1:0\"\n[routes]\nfederation = \"{}\"\n",
            fed_a.listen
        ),
    );

    // a's workloads: the caller (this test, behind its sidecar), an intruder, and reviews-v1.
    for (name, selector, target) in [
        ("reviews", "reviews", port),
        ("reviews-v1", "reviews-v1", inbound),
    ] {
        k::apply(&ca, "test", &http_service(name, selector, port, target))
            .await
            .unwrap();
    }
    // reviews-v1 runs as a process, registered as Istio registers a VM's workload.
    k::apply(
        &ca,
        "test",
        &json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": {"name": "reviews-v1-0", "namespace": "shop"},
            "spec": {"address": "127.0.0.1", "labels": {"app": "reviews-v1"},
                     "serviceAccount": "reviews-v1"}}),
    )
    .await
    .unwrap();
    let egress = |bind: &str| {
        json!({"egress": [{"port": {"number": port, "protocol": "HTTP", "name": "http"},
                           "bind": bind, "captureMode": "NONE", "hosts": ["shop/*"]}]})
    };
    let mut caller_spec = egress("127.0.0.1");
    caller_spec["workloadSelector"] = json!({"labels": {"app": "caller"}});
    let mut intruder_spec = egress("127.0.0.2");
    intruder_spec["workloadSelector"] = json!({"labels": {"app": "intruder"}});
    let v1_spec = json!({
        "workloadSelector": {"labels": {"app": "reviews-v1"}},
        "ingress": [{"port": {"number": inbound, "protocol": "HTTP", "name": "http"},
                     "bind": "127.0.0.1", "captureMode": "NONE",
                     "defaultEndpoint": format!("127.0.0.1:{}", v1.port)}],
        "egress": [{"hosts": ["istio-system/*"]}],
    });
    for (name, spec) in [
        ("caller", caller_spec),
        ("intruder", intruder_spec),
        ("reviews-v1", v1_spec),
    ] {
        k::apply(&ca, "test", &sidecar_resource(name, spec))
            .await
            .unwrap();
    }
    let sidecar = |name: &'static str| Workload {
        name,
        namespace: "shop",
        service_account: name,
        labels: json!({"app": name}),
    };
    let caller = Sidecar::start(&env, &istiod, root, sidecar("caller")).await;
    let intruder = Sidecar::start(&env, &istiod, root, sidecar("intruder")).await;
    let reviews_v1 = Sidecar::start(&env, &istiod, root, sidecar("reviews-v1")).await;

    // b's export reaches a: federationd writes the import for Istio.
    eventually(30, "a imports reviews-v2 as a ServiceEntry", || async {
        k::list(&ca, "networking.istio.io/v1", "ServiceEntry", Some("shop"))
            .await
            .contains_key("shop/reviews-v2-clusterset")
    })
    .await;
    let imported = &k::list(
        &ca,
        "networking.istio.io/v1",
        "DestinationRule",
        Some("shop"),
    )
    .await["shop/reviews-v2-clusterset"];
    assert_eq!(imported["spec"]["trafficPolicy"]["tls"]["mode"], "DISABLE");

    let v1_cluster = format!("outbound|{port}||reviews-v1.shop.svc.cluster.local");
    let v2_cluster = format!("outbound|{port}||reviews-v2.shop.svc.clusterset.local");
    // The cluster toward the edge agent speaks plain text to it (no TLS transport socket),
    // and its endpoint is the edge agent's egress.
    eventually(
        30,
        "the caller's Envoy has the import's cluster",
        || async {
            dump_section(&caller.config_dump(), "ClustersConfigDump")
                .iter()
                .flat_map(|s| {
                    s["dynamic_active_clusters"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
                .any(|c| c["cluster"]["name"] == v2_cluster.as_str())
        },
    )
    .await;
    let dump = caller.config_dump();
    let clusters: Vec<Value> = dump_section(&dump, "ClustersConfigDump")
        .iter()
        .flat_map(|s| {
            s["dynamic_active_clusters"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| c["cluster"].clone())
        .collect();
    let to_edge = clusters
        .iter()
        .find(|c| c["name"] == v2_cluster.as_str())
        .unwrap();
    assert!(
        to_edge.get("transport_socket").is_none()
            && to_edge.get("transport_socket_matches").is_none(),
        "the cluster toward the edge agent must not use TLS: {to_edge}"
    );
    let eps = dump_section(&dump, "EndpointsConfigDump");
    let edge_ep = eps
        .iter()
        .flat_map(|s| {
            s["dynamic_endpoint_configs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .find(|e| e["endpoint_config"]["cluster_name"] == v2_cluster.as_str())
        .expect("endpoints of the import");
    assert_eq!(
        edge_ep["endpoint_config"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
            ["port_value"],
        egress_a,
        "{edge_ep}"
    );
    // The local version is reached over Istio mTLS (its sidecar's certificate from istiod).
    let to_v1 = clusters
        .iter()
        .find(|c| c["name"] == v1_cluster.as_str())
        .unwrap();
    assert!(to_v1.to_string().contains("tlsMode-istio"), "{to_v1}");

    // The split, step by step, through the caller's Envoy.
    for (w1, w2) in [(90u32, 10u32), (50, 50), (0, 100)] {
        split(&ca, w1, w2).await;
        let want: BTreeMap<String, u64> = [(&v1_cluster, w1), (&v2_cluster, w2)]
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .map(|(c, w)| (c.clone(), u64::from(w)))
            .collect();
        let ok = within(30, || async {
            let got: BTreeMap<String, u64> = route_weights(&caller)
                .into_iter()
                .filter(|(_, w)| *w > 0)
                .collect();
            got == want
        })
        .await;
        assert!(
            ok,
            "the caller's Envoy route is {:?}, want {want:?}\nfederationd a:\n{}",
            route_weights(&caller),
            fed_a.log()
        );
        let n = 4000;
        let seen = calls(("127.0.0.1", port), REVIEWS, n);
        let count = |k: &str| seen.get(k).copied().unwrap_or(0);
        let failed = n - count("v1") - count("v2");
        let share = 100.0 * count("v2") as f64 / n as f64;
        println!(
            "split {w1}/{w2}: {n} calls through the caller's Envoy: v1 {} v2 {} failed {failed} -> v2 share {share:.1}%",
            count("v1"),
            count("v2")
        );
        assert_eq!(failed, 0, "{seen:?}\nedge a:\n{}", edge_a.log());
        assert!(
            (share - f64::from(w2)).abs() <= 3.0,
            "v2 share {share:.1}% at {w1}/{w2}: {seen:?}"
        );
    }

    // Access: before any TrafficTarget, anyone in the mesh may call reviews-v1.
    let v1_host = "reviews-v1.shop.svc.cluster.local";
    assert_eq!(calls(("127.0.0.2", port), v1_host, 5).get("v1"), Some(&5));
    k::apply(
        &ca,
        "test",
        &json!({"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
            "metadata": {"name": "reviews-reads", "namespace": "shop"},
            "spec": {"matches": [{"name": "reads", "pathRegex": "/.*", "methods": ["GET"]}]}}),
    )
    .await
    .unwrap();
    k::apply(
        &ca,
        "test",
        &json!({"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget",
            "metadata": {"name": "reviews-v1-readers", "namespace": "shop"},
            "spec": {"destination": {"kind": "ServiceAccount", "name": "reviews-v1", "namespace": "shop"},
                     "rules": [{"kind": "HTTPRouteGroup", "name": "reviews-reads", "matches": ["reads"]}],
                     "sources": [{"kind": "ServiceAccount", "name": "caller", "namespace": "shop"}]}}),
    )
    .await
    .unwrap();
    // The policy applies to new connections as soon as Envoy has it, and to connections
    // opened before once Envoy has drained its previous filter chain (1 s here). Each Envoy
    // worker keeps its own upstream pool, so one round of refusals can come from a new
    // connection while another worker still holds one opened before the policy: wait until
    // every call is refused in two rounds more than a drain period apart.
    let all_refused = || {
        calls(("127.0.0.2", port), v1_host, 20)
            .keys()
            .all(|k| k.starts_with("HTTP 403"))
    };
    let refused = within(30, || async {
        if !all_refused() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        all_refused()
    })
    .await;
    assert!(
        refused,
        "the intruder still reaches reviews-v1; policies: {:?}\nfederationd a:\n{}",
        k::list(
            &ca,
            "security.istio.io/v1",
            "AuthorizationPolicy",
            Some("shop")
        )
        .await,
        fed_a.log()
    );
    let intruder_seen = calls(("127.0.0.2", port), v1_host, 50);
    assert_eq!(
        intruder_seen.get("HTTP 403: RBAC: access denied"),
        Some(&50),
        "{intruder_seen:?}"
    );
    let caller_seen = calls(("127.0.0.1", port), v1_host, 50);
    assert_eq!(caller_seen.get("v1"), Some(&50), "{caller_seen:?}");
    println!("access: caller 50/50 allowed, intruder 50/50 refused (403 from reviews-v1's Envoy)");

    // Upstream Envoy loaded everything istiod sent to every sidecar.
    for s in [&caller, &intruder, &reviews_v1] {
        assert!(
            s.rejected().is_empty(),
            "{}: rejected {:?}",
            s.name,
            s.rejected()
        );
    }

    // istioctl analyze: no error on anything federationd wrote. (The Sidecar resources of this
    // test select workloads that have no pod, which the analyzer reports; they are the test's
    // own set-up, not federationd's.)
    let (_, text) = Tools::find().analyze(&env.kubeconfig("a"), Some("shop"));
    let ours: Vec<String> = analyze_errors(&text)
        .into_iter()
        .filter(|l| !l.contains("(Sidecar shop/"))
        .collect();
    assert!(ours.is_empty(), "istioctl analyze:\n{text}");
    drop(istiod);
}

/// Every Istio output of the golden corpus, applied to a real API server with the Istio CRDs
/// beside the corpus Services (shared, and the case's own), passes `istioctl analyze` without an error. A deliberately broken
/// VirtualService first shows that the analyzer does report errors here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istioctl_analyze_finds_no_error_in_the_corpus() {
    let tools = Tools::find();
    let env = KubeEnv::start(&["corpus"]);
    let c = env.client("corpus").await;
    k::install_crds(&c, &k::upstream_crds(&["istio"])).await;
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../smi-adapters/tests/corpus");
    let services = k::documents(&corpus.join("services.yaml"));
    let namespaces = |docs: &[Value]| -> Vec<String> {
        let mut v: Vec<String> = docs
            .iter()
            .filter_map(|d| d["metadata"]["namespace"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    for ns in namespaces(&services) {
        k::namespace(&c, &ns).await;
    }
    for s in &services {
        k::apply(&c, "test", s).await.unwrap();
    }
    let kubeconfig = env.kubeconfig("corpus");

    let broken = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "broken", "namespace": "shop"},
        "spec": {"hosts": ["reviews.shop.svc.cluster.local"], "gateways": ["no-such-gateway"],
                 "http": [{"route": [{"destination": {"host": "reviews-v1.shop.svc.cluster.local"}}]}]}});
    k::apply(&c, "test", &broken).await.unwrap();
    let (ok, text) = tools.analyze(&kubeconfig, None);
    assert!(
        !ok && analyze_errors(&text)
            .iter()
            .any(|l| l.contains("no-such-gateway")),
        "istioctl analyze missed a VirtualService naming a missing gateway:\n{text}"
    );
    k::delete(&c, &broken).await;

    let mut cases: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("istio.golden").exists())
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "{cases:?}");
    for case in cases {
        // The case's own Services (in its input) go in beside what Istio was given.
        let mut docs: Vec<Value> = k::documents(&case.join("input.yaml"))
            .into_iter()
            .filter(|d| d["apiVersion"] == "v1" && d["kind"] == "Service")
            .collect();
        docs.extend(k::documents(&case.join("istio.golden")));
        for ns in namespaces(&docs) {
            k::namespace(&c, &ns).await;
        }
        for d in &docs {
            k::apply(&c, "test", d)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        }
        let (_, text) = tools.analyze(&kubeconfig, None);
        let errors = analyze_errors(&text);
        assert!(errors.is_empty(), "{}:\n{text}", case.display());
        assert!(
            text.contains("namespace"),
            "istioctl analyze printed nothing:\n{text}"
        );
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        println!(
            "corpus {name}: {} objects applied, istioctl analyze: no error",
            docs.len()
        );
        for d in &docs {
            k::delete(&c, d).await;
        }
    }
}

/// Matches that istiod's validation refused when rendered literally (found with this test):
/// a path with braces (Istio reads `{*}` as a template), an empty header value, a header name
/// that is no HTTP token, and a pattern outside RE2. What the old renderer wrote is refused by
/// `istioctl validate` (istiod's own validation code); what smi-adapters renders or refuses now
/// passes it.
#[test]
fn istiod_validation_accepts_what_is_rendered_for_awkward_matches() {
    let tools = Tools::find();
    let dir = test_dir();
    let old = dir.path().join("old.yaml");
    std::fs::write(
        &old,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: readers, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]\n    to: [{operation: {paths: [\"/v1/{name}\"]}}]\n    when: [{key: \"request.headers[x-empty]\", values: [\"\"]}]\n",
    )
    .unwrap();
    let (ok, text) = support::istio::validate(&tools, &old);
    assert!(
        !ok && text.contains("{name}") && text.contains("empty value"),
        "{text}"
    );

    let input = "apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {name: g, namespace: shop}\nspec:\n  matches:\n  - {name: brace, pathRegex: \"/v1/\\\\{name\\\\}\"}\n  - {name: tmpl, pathRegex: \"/v1/\\\\{\\\\*\\\\}\"}\n  - {name: empty, pathRegex: \"/h\", headers: [{x-empty: \"^$\"}]}\n  - {name: fine, pathRegex: \"/ok/.*\", headers: [{x-canary: \"^yes$\"}]}\n---\napiVersion: access.smi-spec.io/v1alpha3\nkind: TrafficTarget\nmetadata: {name: readers, namespace: shop}\nspec:\n  destination: {kind: ServiceAccount, name: web, namespace: shop}\n  rules: [{kind: HTTPRouteGroup, name: g, matches: [brace, tmpl, empty, fine]}]\n  sources: [{kind: ServiceAccount, name: client}]\n---\napiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: web, namespace: shop}\nspec:\n  service: web\n  matches: [{kind: HTTPRouteGroup, name: g}]\n  backends: [{service: web-v1, weight: 50}, {service: web-v2, weight: 50}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {selector: {app: web}, ports: [{name: http, port: 8080}]}\n";
    let t = smi_adapters::translate(
        &[("input.yaml".to_string(), input.to_string())],
        None,
        smi_adapters::render::Mesh::Istio,
        &Default::default(),
    );
    assert!(t.complete(), "{:?}", t.diagnostics);
    let new = dir.path().join("new.yaml");
    std::fs::write(&new, t.to_yaml()).unwrap();
    let (ok, text) = support::istio::validate(&tools, &new);
    assert!(ok, "istiod's validation refused:\n{text}\n{}", t.to_yaml());
    assert!(t.to_yaml().contains("/ok/*"), "{}", t.to_yaml());
}

/// Two sites that both run Istio, each with its own istiod and its own CA (two roots that trust
/// nothing of each other), federated by multimesh: a workload at a calls b's reviews-v2 by its
/// clusterset name through its own Envoy; the call crosses a's edge agent, the federation's mTLS
/// and b's edge agent, and is served through reviews-v2's own Envoy at b. Both sites run the
/// kubernetes backend: b exports from a ServiceExport, a imports into its mesh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_istio_sites_with_their_own_control_planes_work_as_one() {
    let env = KubeEnv::start(&["a", "b"]);
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let kc_a = prepare(&env, "a", &["mcs", "istio", "smi"]).await;
    let kc_b = prepare(&env, "b", &["mcs", "istio", "smi"]).await;
    let (ca, cb) = (env.client("a").await, env.client("b").await);
    let istiod_a = Istiod::start(&env, "a").await;
    let istiod_b = Istiod::start(&env, "b").await;
    let port = free_port();
    let inbound_b = free_port();
    let (egress_a, ingress_b) = (free_port(), free_port());
    let v2 = App::start("v2 at b");

    // b: reviews-v2 behind its sidecar (istiod b), exported by a ServiceExport.
    k::apply(
        &cb,
        "test",
        &http_service("reviews-v2", "reviews-v2", port, inbound_b),
    )
    .await
    .unwrap();
    k::apply(
        &cb,
        "test",
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "reviews-v2-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "reviews-v2"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.7"], "conditions": {"ready": true}}],
            "ports": [{"name": "http", "port": inbound_b, "protocol": "TCP"}]}),
    )
    .await
    .unwrap();
    k::apply(
        &cb,
        "test",
        &json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
            "metadata": {"name": "reviews-v2", "namespace": "shop"}}),
    )
    .await
    .unwrap();
    k::apply(
        &cb,
        "test",
        &sidecar_resource(
            "reviews-v2",
            json!({"workloadSelector": {"labels": {"app": "reviews-v2"}},
                   "ingress": [{"port": {"number": inbound_b, "protocol": "HTTP", "name": "http"},
                                "bind": "127.0.0.1", "captureMode": "NONE",
                                "defaultEndpoint": format!("127.0.0.1:{}", v2.port)}],
                   "egress": [{"hosts": ["istio-system/*"]}]}),
        ),
    )
    .await
    .unwrap();
    let workload = |name: &'static str| Workload {
        name,
        namespace: "shop",
        service_account: name,
        labels: json!({"app": name}),
    };
    let reviews_v2 = Sidecar::start(&env, &istiod_b, root, workload("reviews-v2")).await;

    // a: the caller behind its sidecar (istiod a).
    let mut caller_spec = json!({"egress": [{"port": {"number": port, "protocol": "HTTP", "name": "http"},
        "bind": "127.0.0.1", "captureMode": "NONE", "hosts": ["shop/*"]}]});
    caller_spec["workloadSelector"] = json!({"labels": {"app": "caller"}});
    k::apply(&ca, "test", &sidecar_resource("caller", caller_spec))
        .await
        .unwrap();
    let caller = Sidecar::start(&env, &istiod_a, root, workload("caller")).await;

    // The federation: both federationd on the kubernetes backend with mesh istio.
    let site = |name: &str, kubeconfig: &Path, extra: &str| {
        SiteSpec::new(name)
            .top(&format!("backend = \"kubernetes\"\n{extra}"))
            .extra(&format!(
                "\n[kubernetes]\nkubeconfig = \"{}\"\nmesh = \"istio\"\nresync_seconds = 5\nedge_address = \"127.0.0.1\"\nedge_http_port = {egress_a}\n",
                kubeconfig.display()
            ))
    };
    let fed_b = Site::start(
        &pki,
        root,
        &site(
            "b",
            &kc_b,
            &format!("edge_ingress = [\"127.0.0.1:{ingress_b}\"]\n"),
        )
        .accept("a"),
        None,
    );
    let fed_a = Site::start(
        &pki,
        root,
        &site("a", &kc_a, "").dial("b", &fed_b.listen),
        None,
    );
    let _edge_b = Edge::start(
        &pki,
        root,
        "b",
        &format!(
            "ingress = \"127.0.0.1:{ingress_b}\"\nadmin = \"127.0.0.1:0\"\n[[local]]\nname = \"reviews-v2\"\nnamespace = \"shop\"\nports = [{{ port = {port}, upstream = \"127.0.0.1:{inbound_b}\" }}]\n[routes]\nfederation = \"{}\"\n",
            fed_b.listen
        ),
    );
    let edge_a = Edge::start(
        &pki,
        root,
        "a",
        &format!(
            "egress_http = \"127.0.0.1:{egress_a}\"\nadmin = \"127.0.0.1:0\"\n[routes]\nfederation = \"{}\"\n",
            fed_a.listen
        ),
    );

    let host = "reviews-v2.shop.svc.clusterset.local";
    let reached = within(60, || async {
        calls(("127.0.0.1", port), host, 1).contains_key("v2 at b")
    })
    .await;
    assert!(
        reached,
        "a's caller does not reach b's reviews-v2: {:?}\nfederationd a:\n{}\nedge a:\n{}",
        calls(("127.0.0.1", port), host, 1),
        fed_a.log(),
        edge_a.log()
    );
    let before = reviews_v2.stats();
    let seen = calls(("127.0.0.1", port), host, 200);
    assert_eq!(seen.get("v2 at b"), Some(&200), "{seen:?}");
    // Every call went through reviews-v2's own Envoy at b (its inbound HTTP connection
    // manager counted them), and through the caller's at a.
    let inbound = |s: &BTreeMap<String, u64>| -> u64 {
        s.iter()
            .filter(|(k, _)| {
                k.starts_with("http.inbound_") && k.ends_with(".downstream_rq_completed")
            })
            .map(|(_, v)| *v)
            .sum()
    };
    let served = inbound(&reviews_v2.stats()) - inbound(&before);
    assert!(
        served >= 200,
        "b's Envoy served {served} of 200: {:?}",
        reviews_v2.stats()
    );
    for s in [&caller, &reviews_v2] {
        assert!(
            s.rejected().is_empty(),
            "{}: rejected {:?}",
            s.name,
            s.rejected()
        );
    }
    println!("a (istiod a) -> b (istiod b): 200 of 200 calls served through both sites' Envoys");
    drop((istiod_a, istiod_b));
}
