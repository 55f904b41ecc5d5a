//! The `kubernetes` backend against three real API servers (scripts/kube-testenv.sh): site a
//! runs Istio, b Linkerd, c Consul (their upstream CRDs installed from vendor/crds).
//! Three real federationd processes, each with a service-account token bound to exactly the
//! shipped roles (deploy/kubernetes/rbac.yaml: reads cluster-wide; writes only in namespaces
//! bound by rbac-namespace.yaml, here `shop`), never cluster-admin.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use kube::Client;
use serde_json::{Value, json};
use support::kubeenv::{self as k, KubeEnv, prepare};
use support::{Pki, Site, SiteSpec, eventually, test_dir};

const MESHES: [(&str, &str, &[&str]); 3] = [
    ("a", "istio", &["mcs", "istio", "smi"]),
    ("b", "linkerd", &["mcs", "linkerd", "smi"]),
    ("c", "consul", &["mcs", "consul", "smi"]),
];

/// A kubernetes-backed site dialling `peers` and accepting `accepts`.
fn site_spec(
    name: &str,
    mesh: &str,
    kubeconfig: &Path,
    peers: &[(&str, &str)],
    accepts: &[&str],
) -> SiteSpec {
    let mut s = SiteSpec::new(name)
        .top("backend = \"kubernetes\"\n")
        .extra(&format!(
            "\n[kubernetes]\nkubeconfig = \"{}\"\nmesh = \"{mesh}\"\nresync_seconds = 5\n",
            kubeconfig.display()
        ));
    for (p, addr) in peers {
        s = s.dial(p, addr);
    }
    for p in accepts {
        s = s.accept(p);
    }
    s
}

async fn local_service(c: &Client, name: &str, port: u16) {
    k::apply(
        c,
        "test",
        &json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "http", "port": port, "protocol": "TCP", "appProtocol": "http"}]}}),
    )
    .await
    .unwrap();
}

/// An EndpointSlice as the endpoint-slice controller would write it (no controller-manager
/// runs in the test environment).
async fn endpoints(c: &Client, service: &str, ready: bool) {
    k::apply(
        c,
        "test",
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{service}-abc"), "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.7"], "conditions": {"ready": ready}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}),
    )
    .await
    .unwrap();
}

async fn export(c: &Client, name: &str) {
    k::apply(
        c,
        "test",
        &json!({"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
            "metadata": {"name": name, "namespace": "shop"}}),
    )
    .await
    .unwrap();
}

/// The (status, reason) of condition `t` on ServiceExport shop/`name`.
async fn export_condition(c: &Client, name: &str, t: &str) -> Option<(String, String)> {
    let o = k::list(
        c,
        "multicluster.x-k8s.io/v1alpha1",
        "ServiceExport",
        Some("shop"),
    )
    .await;
    o.get(&format!("shop/{name}")).and_then(|o| condition(o, t))
}

fn condition(o: &Value, t: &str) -> Option<(String, String)> {
    o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == t)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

async fn names(c: &Client, api_version: &str, kind: &str) -> Vec<String> {
    k::list(c, api_version, kind, Some("shop"))
        .await
        .into_keys()
        .collect()
}

/// The ServiceImports of namespace shop on a site.
async fn imports(c: &Client) -> Vec<String> {
    names(c, "multicluster.x-k8s.io/v1alpha1", "ServiceImport").await
}

/// Every object multimesh owns on a site, as "apiVersion kind ns/name".
async fn owned(c: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for (api, kind) in federation::kubernetes::controller::owned_kinds() {
        let Some((ar, _)) = k::try_resource(c, api, kind).await else {
            continue;
        };
        let a: kube::Api<kube::api::DynamicObject> = kube::Api::all_with(c.clone(), &ar);
        for o in a
            .list(
                &kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=multimesh"),
            )
            .await
            .unwrap()
            .items
        {
            out.push(format!(
                "{api} {kind} {}/{}",
                o.metadata.namespace.unwrap_or_default(),
                o.metadata.name.unwrap_or_default()
            ));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_become_imports_and_mesh_resources_on_every_site_and_survive_restarts() {
    let env = KubeEnv::start(&["a", "b", "c"]);
    let dir = test_dir();
    let pki = Pki::new(dir.path());
    let mut kubeconfigs = Vec::new();
    for (site, _, crds) in MESHES {
        kubeconfigs.push(prepare(&env, site, crds).await);
    }
    let (ca, cb, cc) = (
        env.client("a").await,
        env.client("b").await,
        env.client("c").await,
    );
    // b runs tours and tours-v1 itself; tours-v2 will come from a.
    local_service(&cb, "tours", 8080).await;
    local_service(&cb, "tours-v1", 8080).await;
    // A Service of b's own that happens to have the name a mirror would get: never touched.
    k::apply(
        &cb,
        "someone-else",
        &json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "payment-clusterset", "namespace": "shop", "labels": {"owner": "team-x"}},
            "spec": {"ports": [{"name": "web", "port": 9999, "protocol": "TCP"}]}}),
    )
    .await
    .unwrap();

    let a = Site::start(
        &pki,
        dir.path(),
        &site_spec("a", "istio", &kubeconfigs[0], &[], &["b", "c"]),
        None,
    );
    let b = Site::start(
        &pki,
        dir.path(),
        &site_spec("b", "linkerd", &kubeconfigs[1], &[("a", &a.listen)], &["c"]),
        None,
    );
    let mut c = Site::start(
        &pki,
        dir.path(),
        &site_spec(
            "c",
            "consul",
            &kubeconfigs[2],
            &[("a", &a.listen), ("b", &b.listen)],
            &[],
        ),
        None,
    );

    // A Service with no ready endpoint is not exported, and the ServiceExport says why.
    local_service(&ca, "payment", 8080).await;
    endpoints(&ca, "payment", false).await;
    export(&ca, "payment").await;
    eventually(30, "a reports NoReadyEndpoints", || async {
        export_condition(&ca, "payment", "Ready")
            .await
            .is_some_and(|(s, r)| s == "False" && r == "NoReadyEndpoints")
    })
    .await;
    assert!(b.entries().await.iter().all(|e| !e.contains("payment")));

    // Ready: exported, imported on b (Linkerd mirror) and c (Consul resolver).
    endpoints(&ca, "payment", true).await;
    local_service(&ca, "tours-v2", 8080).await;
    endpoints(&ca, "tours-v2", true).await;
    export(&ca, "tours-v2").await;
    eventually(30, "a's ServiceExport is Ready", || async {
        export_condition(&ca, "payment", "Ready")
            .await
            .is_some_and(|(s, r)| s == "True" && r == "Exported")
    })
    .await;
    eventually(
        30,
        "b imports payment (ServiceImport + Linkerd mirror)",
        || async {
            imports(&cb).await == ["shop/payment", "shop/tours-v2"]
                && names(&cb, "v1", "Endpoints")
                    .await
                    .contains(&"shop/tours-v2-clusterset".into())
        },
    )
    .await;
    eventually(
        30,
        "c imports payment (ServiceImport + Consul resolver)",
        || async {
            imports(&cc).await == ["shop/payment", "shop/tours-v2"]
                && names(&cc, "consul.hashicorp.com/v1alpha1", "ServiceResolver")
                    .await
                    .contains(&"shop/payment-clusterset".into())
        },
    )
    .await;
    let imp = k::list(
        &cb,
        "multicluster.x-k8s.io/v1alpha1",
        "ServiceImport",
        Some("shop"),
    )
    .await;
    let p = &imp["shop/payment"];
    assert_eq!(p["spec"]["ports"][0]["port"], 8080);
    assert_eq!(p["spec"]["ports"][0]["appProtocol"], "http");
    assert_eq!(p["metadata"]["labels"]["multimesh.io/origin-site"], "a");
    let mirror = &k::list(&cb, "v1", "Service", Some("shop")).await["shop/payment-clusterset"];
    // The foreign Service of that name was left exactly as it was.
    assert_eq!(mirror["metadata"]["labels"]["owner"], "team-x", "{mirror}");
    assert_eq!(mirror["spec"]["ports"][0]["port"], 9999);
    assert!(
        b.log().contains("not managed by multimesh (left alone)"),
        "{}",
        b.log()
    );
    // ... and it gets no Endpoints from us (they would attach to it and hijack its traffic).
    assert!(
        !names(&cb, "v1", "Endpoints")
            .await
            .contains(&"shop/payment-clusterset".into())
    );
    // The mirror's Endpoints point at b's edge agent (its Service's cluster IP).
    let edge_ip =
        k::list(&cb, "v1", "Service", Some("multimesh")).await["multimesh/multimesh-edge"]["spec"]
            ["clusterIP"]
            .clone();
    let ep = &k::list(&cb, "v1", "Endpoints", Some("shop")).await["shop/tours-v2-clusterset"];
    assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], edge_ip);
    // a imports nothing of its own.
    assert!(imports(&ca).await.is_empty());

    // A TrafficSplit on b with a remote backend: rendered into a Linkerd HTTPRoute whose remote
    // share goes to b's edge agent (the mirror) carrying the destination header.
    k::apply(
        &cb,
        "test",
        &json!({"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
            "metadata": {"name": "tours-rollout", "namespace": "shop"},
            "spec": {"service": "tours", "backends": [
                {"service": "tours-v1", "weight": 90}, {"service": "tours-v2", "weight": 10}]}}),
    )
    .await
    .unwrap();
    eventually(30, "b renders the split", || async {
        names(&cb, "policy.linkerd.io/v1beta3", "HTTPRoute").await == ["shop/tours-rollout"]
    })
    .await;
    let route = &k::list(&cb, "policy.linkerd.io/v1beta3", "HTTPRoute", Some("shop")).await["shop/tours-rollout"];
    let refs = route["spec"]["rules"][0]["backendRefs"].as_array().unwrap();
    assert_eq!(refs.len(), 2, "{route}");
    assert_eq!(refs[0]["name"], "tours-v1");
    assert_eq!(refs[0]["weight"], 9);
    assert_eq!(refs[1]["name"], "tours-v2-clusterset");
    assert_eq!(
        refs[1]["filters"][0]["requestHeaderModifier"]["set"][0]["value"],
        "tours-v2.shop.svc.clusterset.local"
    );
    // The outcome is reported on the TrafficSplit as an Event.
    eventually(30, "a Translated event on the split", || async {
        k::list(&cb, "events.k8s.io/v1", "Event", Some("shop"))
            .await
            .values()
            .any(|e| e["reason"] == "Translated" && e["regarding"]["name"] == "tours-rollout")
    })
    .await;
    // An invalid split (zero weights) is refused with an Event naming the field, and renders
    // nothing.
    k::apply(
        &cb,
        "test",
        &json!({"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
            "metadata": {"name": "broken", "namespace": "shop"},
            "spec": {"service": "tours-v1", "backends": [{"service": "tours-v2", "weight": 0}]}}),
    )
    .await
    .unwrap();
    eventually(30, "a TranslationFailed event names the field", || async {
        k::list(&cb, "events.k8s.io/v1", "Event", Some("shop"))
            .await
            .values()
            .any(|e| {
                e["reason"] == "TranslationFailed"
                    && e["regarding"]["name"] == "broken"
                    && e["note"].as_str().unwrap_or_default().contains("weight")
            })
    })
    .await;
    assert_eq!(
        names(&cb, "policy.linkerd.io/v1beta3", "HTTPRoute").await,
        ["shop/tours-rollout"]
    );

    // Restarts: kill b's API server and federationd c; both come back to the same state, with
    // nothing duplicated or lost.
    let before_b = owned(&cb).await;
    let before_c = owned(&cc).await;
    env.kill_apiserver("b");
    c.kill();
    // A change while they are down: a exports one more service.
    local_service(&ca, "reviews", 8080).await;
    endpoints(&ca, "reviews", true).await;
    export(&ca, "reviews").await;
    env.restart_apiserver("b");
    let c = Site::start(
        &pki,
        dir.path(),
        &site_spec(
            "c",
            "consul",
            &kubeconfigs[2],
            &[("a", &a.listen), ("b", &b.listen)],
            &[],
        ),
        None,
    );
    let cb = env.client("b").await;
    eventually(60, "b and c catch up after the restarts", || async {
        imports(&cb).await == ["shop/payment", "shop/reviews", "shop/tours-v2"]
            && imports(&cc).await == ["shop/payment", "shop/reviews", "shop/tours-v2"]
    })
    .await;
    let after_b = owned(&cb).await;
    let after_c = owned(&cc).await;
    let added = |before: &[String], after: &[String]| -> Vec<String> {
        after
            .iter()
            .filter(|x| !before.contains(x))
            .cloned()
            .collect()
    };
    assert!(
        before_b.iter().all(|x| after_b.contains(x)),
        "b lost objects"
    );
    assert!(
        before_c.iter().all(|x| after_c.contains(x)),
        "c lost objects"
    );
    assert!(
        added(&before_b, &after_b)
            .iter()
            .all(|x| x.contains("reviews")),
        "{after_b:?}"
    );
    assert!(
        added(&before_c, &after_c)
            .iter()
            .all(|x| x.contains("reviews")),
        "{after_c:?}"
    );

    // `federationctl plan` on a converged site: nothing to change. Against an empty catalog it
    // shows every import as a deletion, and applies nothing.
    let plan = |catalog: Option<std::path::PathBuf>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_federationctl"));
        cmd.arg("plan")
            .arg("--config")
            .arg(b.dir.join("federationd.toml"));
        if let Some(c) = catalog {
            cmd.arg("--catalog").arg(c);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // A pass applies its objects one after the other: the ServiceImports seen above may land
    // before the Endpoints of the same pass, so wait for the pass to finish.
    let nothing_to_change = |plan: &str| plan.lines().any(|l| l.starts_with("0 to change"));
    eventually(30, "b's plan shows nothing to change", || async {
        nothing_to_change(&plan(None))
    })
    .await;
    let converged = plan(None);
    assert!(
        nothing_to_change(&converged),
        "{converged}\nb's log of clusterset objects:\n{}",
        b.log()
            .lines()
            .filter(|l| l.contains("-clusterset") || l.contains("watching"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(converged.contains("2 left alone"), "{converged}");
    // A table row, whatever the column widths.
    let row = |text: &str, cells: &[&str]| {
        text.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == cells)
    };
    assert!(
        row(
            &converged,
            &["conflict", "v1", "Service", "shop/payment-clusterset"]
        ),
        "{converged}"
    );
    let empty = dir.path().join("empty-catalog.json");
    std::fs::write(&empty, r#"{"site": "b", "origins": []}"#).unwrap();
    let withdraw_all = plan(Some(empty));
    assert!(
        row(
            &withdraw_all,
            &[
                "delete",
                "multicluster.x-k8s.io/v1alpha1",
                "ServiceImport",
                "shop/payment"
            ]
        ),
        "{withdraw_all}"
    );
    assert!(
        row(
            &withdraw_all,
            &["delete", "v1", "Service", "shop/tours-v2-clusterset"]
        ),
        "{withdraw_all}"
    );
    assert!(
        !withdraw_all.contains("payment-clusterset"),
        "the foreign Service is not ours to delete: {withdraw_all}"
    );
    assert_eq!(imports(&cb).await.len(), 3, "plan applied something");

    // Deleting the export withdraws it everywhere.
    let se = k::resource(&ca, "multicluster.x-k8s.io/v1alpha1", "ServiceExport")
        .await
        .0;
    let api: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(ca.clone(), "shop", &se);
    api.delete("payment", &Default::default()).await.unwrap();
    eventually(30, "payment withdrawn on b and c", || async {
        !imports(&cb).await.contains(&"shop/payment".into())
            && !imports(&cc).await.contains(&"shop/payment".into())
            && !names(&cc, "consul.hashicorp.com/v1alpha1", "ServiceResolver")
                .await
                .contains(&"shop/payment-clusterset".into())
    })
    .await;
    // The foreign Service is still there, untouched.
    let svc = &k::list(&cb, "v1", "Service", Some("shop")).await["shop/payment-clusterset"];
    assert_eq!(svc["metadata"]["labels"]["owner"], "team-x");
    drop((a, b, c));
}

/// LIST requests the API server has answered for `resource`, from its own metrics.
async fn lists_of(c: &Client, resource: &str) -> u64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = c.request_text(req).await.unwrap();
    let needle = format!("resource=\"{resource}\"");
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains("verb=\"LIST\"") && l.contains(&needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A pass reads the controller's reflector stores, kept by its watches: passes do not LIST.
/// (Before the stores, every pass listed ServiceExports, Services, EndpointSlices, every
/// traffic-spec kind and every owned kind.) Each ready/not-ready flip of an EndpointSlice is
/// seen in the ServiceExport's Ready condition, which only a pass writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_read_the_watch_caches_instead_of_listing() {
    let env = KubeEnv::start(&["a"]);
    let dir = test_dir();
    let pki = Pki::new(dir.path());
    let kubeconfig = prepare(&env, "a", &["mcs", "istio", "smi"]).await;
    let ca = env.client("a").await;
    let _a = Site::start(
        &pki,
        dir.path(),
        &site_spec("a", "istio", &kubeconfig, &[], &[]),
        None,
    );
    local_service(&ca, "payment", 8080).await;
    endpoints(&ca, "payment", true).await;
    export(&ca, "payment").await;
    // Read with GET, not LIST: the test's own reads must not count.
    let (se, _) = k::resource(&ca, "multicluster.x-k8s.io/v1alpha1", "ServiceExport").await;
    let exports: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(ca.clone(), "shop", &se);
    let ready = |want: &'static str| {
        let exports = exports.clone();
        move || {
            let exports = exports.clone();
            async move {
                let o = exports.get("payment").await.unwrap();
                condition(&serde_json::to_value(&o).unwrap(), "Ready")
                    .is_some_and(|(s, _)| s == want)
            }
        }
    };
    eventually(30, "the export is Ready", ready("True")).await;
    let resources = [
        "serviceexports",
        "services",
        "endpointslices",
        "trafficsplits",
        "serviceimports",
    ];
    let mut before = Vec::new();
    for r in resources {
        before.push(lists_of(&ca, r).await);
    }
    for _ in 0..3 {
        endpoints(&ca, "payment", false).await;
        eventually(30, "a pass sees no ready endpoint", ready("False")).await;
        endpoints(&ca, "payment", true).await;
        eventually(30, "a pass sees the endpoint ready", ready("True")).await;
    }
    for (r, b) in resources.iter().zip(before) {
        let after = lists_of(&ca, r).await;
        assert_eq!(after, b, "{r}: {} LIST requests during 6 passes", after - b);
    }
    assert!(
        before_is_counted(&ca).await,
        "the API server's metrics count no LIST at all"
    );
}

/// The metric is real: the watches' own first LISTs were counted.
async fn before_is_counted(c: &Client) -> bool {
    lists_of(c, "serviceexports").await > 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_services_land_only_in_allowed_namespaces_and_one_failure_stops_nothing() {
    let env = KubeEnv::start(&["b"]);
    let dir = test_dir();
    let pki = Pki::new(dir.path());
    let kubeconfig = prepare(&env, "b", &["mcs", "linkerd", "smi"]).await;
    let cb = env.client("b").await;
    let b = Site::start(
        &pki,
        dir.path(),
        &site_spec("b", "linkerd", &kubeconfig, &[], &["r"]),
        None,
    );
    // r, a site without a cluster, exports into a namespace b does not have (sorted first, so
    // its failure comes before the rest of the pass), into kube-system, and into shop.
    let r = Site::start(
        &pki,
        dir.path(),
        &SiteSpec::new("r").dial("b", &b.listen),
        None,
    );
    r.export_in("aaa-ghost", "ledger", &[]).await;
    r.export_in("kube-system", "kube-dns", &[]).await;
    r.export_in("shop", "ledger", &[]).await;
    eventually(
        30,
        "shop/ledger imported despite the failing aaa-ghost/ledger",
        || async { imports(&cb).await.contains(&"shop/ledger".to_string()) },
    )
    .await;
    let in_kube_system: Vec<String> = k::list(
        &cb,
        "multicluster.x-k8s.io/v1alpha1",
        "ServiceImport",
        Some("kube-system"),
    )
    .await
    .into_keys()
    .collect();
    assert!(
        in_kube_system.is_empty(),
        "a remote site wrote into kube-system: {in_kube_system:?}"
    );
    eventually(
        10,
        "both refusals are logged, naming the object",
        || async {
            let log = b.log();
            log.contains("aaa-ghost/ledger") && log.contains("kube-system/kube-dns")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_refuses_writes_in_namespaces_not_bound_to_federationd() {
    let env = KubeEnv::start(&["b"]);
    let dir = test_dir();
    let pki = Pki::new(dir.path());
    let kubeconfig = prepare(&env, "b", &["mcs", "linkerd", "smi"]).await;
    let cb = env.client("b").await;
    k::namespace(&cb, "payments").await;
    // federationd's own config lets remote services into every namespace, kube-system and
    // payments included; only shop has the RoleBinding.
    let spec = SiteSpec::new("b")
        .top("backend = \"kubernetes\"\n")
        .extra(&format!(
            "\n[kubernetes]\nkubeconfig = \"{}\"\nmesh = \"linkerd\"\nresync_seconds = 5\nimport_namespaces = [\"*\", \"kube-system\"]\n",
            kubeconfig.display()
        ))
        .accept("r");
    let b = Site::start(&pki, dir.path(), &spec, None);
    let r = Site::start(
        &pki,
        dir.path(),
        &SiteSpec::new("r").dial("b", &b.listen),
        None,
    );
    r.export_in("kube-system", "kube-dns", &[]).await;
    r.export_in("payments", "ledger", &[]).await;
    r.export_in("shop", "ledger", &[]).await;
    eventually(30, "shop/ledger imported", || async {
        imports(&cb).await.contains(&"shop/ledger".to_string())
    })
    .await;
    eventually(
        15,
        "both writes refused as forbidden, naming the object",
        || async {
            let log = b.log();
            log.lines()
                .any(|l| l.contains("payments/ledger") && l.contains("forbidden"))
                && log
                    .lines()
                    .any(|l| l.contains("kube-system/kube-dns") && l.contains("forbidden"))
        },
    )
    .await;
    for ns in ["kube-system", "payments"] {
        let there = k::list(
            &cb,
            "multicluster.x-k8s.io/v1alpha1",
            "ServiceImport",
            Some(ns),
        )
        .await;
        assert!(
            there.is_empty(),
            "federationd wrote into {ns}: {:?}",
            there.keys()
        );
    }
}
