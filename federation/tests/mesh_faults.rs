//! A mesh control plane that is down, or a cluster that refuses what federationd writes for its
//! mesh. Real parts: a real API server, upstream istiod with its validation webhook registered
//! fail-closed (as an Istio install does, so that while istiod is down no Istio object can be
//! written), real federationd processes.
//!
//! For the refusal, the cluster's own admission says no: a ValidatingAdmissionPolicy of the site
//! (a real API-server feature, standing in for any admission rule of the site or its mesh). It
//! is the refusal used because istiod's own validation accepts everything federationd renders:
//! the inputs it refused were fixed (istio_mesh.rs,
//! `istiod_validation_accepts_what_is_rendered_for_awkward_matches`).
//!
//! In both cases federationd says so (its status, and a Warning Event on the object naming the
//! reason), goes on with everything else, tries again with back-off well before its resync
//! (600 s here), deletes nothing it did not write and changes nothing that was fine.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Instant;

use kube::Client;
use multimesh_proto::admin::v1 as api;
use serde_json::{Value, json};
use support::istio::Istiod;
use support::kubeenv::{self as k, KubeEnv, prepare};
use support::{Pki, Site, SiteSpec, eventually, test_dir, within};

async fn backend(site: &Site) -> api::BackendStatus {
    site.admin()
        .await
        .status(api::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .backend
        .unwrap()
}

fn problem<'a>(b: &'a api::BackendStatus, object: &str) -> Option<&'a api::ObjectProblem> {
    b.problems.iter().find(|p| p.object == object)
}

/// The Warning Events about `name` in shop: (reason, note).
async fn events_about(c: &Client, name: &str) -> Vec<(String, String)> {
    k::list(c, "events.k8s.io/v1", "Event", Some("shop"))
        .await
        .values()
        .filter(|e| e["regarding"]["name"] == name)
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// What a writer of the object's spec and metadata set: its generation (which the API server
/// bumps on every change to the spec), labels, annotations and spec, and when each field manager
/// last wrote. Not the resourceVersion: istiod writes ServiceEntries' status (addresses it
/// allocates), which bumps that without anyone changing what was written.
fn as_written(o: &Value) -> Value {
    let m = &o["metadata"];
    let spec_writers: Vec<Value> = m["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["subresource"].as_str().unwrap_or_default() != "status")
        .map(|f| json!([f["manager"], f["operation"], f["time"]]))
        .collect();
    json!({
        "generation": m["generation"],
        "labels": m["labels"],
        "annotations": m["annotations"],
        "spec": o["spec"],
        "writers": spec_writers,
    })
}

/// The field managers that wrote `o`.
fn managers(o: &Value) -> Vec<String> {
    o["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["manager"].as_str().map(str::to_string))
        .collect()
}

async fn service_entries(c: &Client) -> std::collections::BTreeMap<String, Value> {
    k::list(c, "networking.istio.io/v1", "ServiceEntry", Some("shop")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_down_or_a_refusal_is_reported_retried_and_changes_nothing_else() {
    let env = KubeEnv::start(&["a"]);
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let kubeconfig = prepare(&env, "a", &["mcs", "istio", "smi"]).await;
    let ca = env.client("a").await;
    let istiod = Istiod::start_with_webhook(&env, "a").await;

    // The webhook is istiod's own validation: an invalid VirtualService is denied by it.
    let bad = json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "bad", "namespace": "shop"},
        "spec": {"hosts": ["web"], "http": [{"match": [{"headers": {"x y": {"exact": "1"}}}],
                 "route": [{"destination": {"host": "web"}}]}]}});
    let e = k::apply(&ca, "test", &bad).await.unwrap_err().to_string();
    assert!(e.contains("denied the request") && e.contains("x y"), "{e}");

    // Somebody else's ServiceEntry in the namespace: never touched.
    let foreign = json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "team-x-api", "namespace": "shop"},
        "spec": {"hosts": ["api.team-x.example"], "location": "MESH_EXTERNAL",
                 "resolution": "DNS", "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}]}});
    k::apply(&ca, "team-x", &foreign).await.unwrap();

    let b = Site::start(&pki, root, &SiteSpec::new("b").accept("a"), None);
    let a = Site::start(
        &pki,
        root,
        &SiteSpec::new("a")
            .top("backend = \"kubernetes\"\n")
            .dial("b", &b.listen)
            .extra(&format!(
                "\n[kubernetes]\nkubeconfig = \"{}\"\nmesh = \"istio\"\nresync_seconds = 600\nedge_address = \"127.0.0.1\"\n",
                kubeconfig.display()
            )),
        None,
    );
    b.export("ledger", &[]).await;
    eventually(30, "a imports ledger for Istio", || async {
        service_entries(&ca)
            .await
            .contains_key("shop/ledger-clusterset")
    })
    .await;
    let before = service_entries(&ca).await;
    assert!(backend(&a).await.problems.is_empty());

    // istiod goes down: b exports payment. The ServiceImport (not Istio's) is written; the
    // ServiceEntry is not, and a says so and keeps trying, faster than its resync.
    istiod.kill();
    let down_at = Instant::now();
    b.export("payment", &[]).await;
    eventually(30, "a imports payment as a ServiceImport", || async {
        k::list(
            &ca,
            "multicluster.x-k8s.io/v1alpha1",
            "ServiceImport",
            Some("shop"),
        )
        .await
        .contains_key("shop/payment")
    })
    .await;
    let object = "networking.istio.io/v1/ServiceEntry/shop/payment-clusterset";
    let reported = within(30, || async {
        let s = backend(&a).await;
        problem(&s, object).is_some_and(|p| {
            !p.refused && p.reason.contains("failed calling webhook") && p.attempts >= 3
        })
    })
    .await;
    assert!(
        reported,
        "a's status does not name {object} and the webhook: {:#?}\n{}",
        backend(&a).await,
        a.log()
    );
    let s = backend(&a).await;
    let p = problem(&s, object).unwrap();
    println!(
        "istiod down: {object} not applied, {} attempts in {:.1} s, next try in {} ms: {}",
        p.attempts,
        down_at.elapsed().as_secs_f64(),
        s.next_retry_ms,
        p.reason
    );
    assert!(s.next_retry_ms <= 60_000, "{s:?}");
    eventually(
        10,
        "a Warning Event on the ServiceEntry names the reason",
        || async {
            events_about(&ca, "payment-clusterset")
                .await
                .iter()
                .any(|(r, n)| r == "ApplyFailed" && n.contains("failed calling webhook"))
        },
    )
    .await;
    let during = service_entries(&ca).await;
    assert!(!during.contains_key("shop/payment-clusterset"));
    for key in ["shop/ledger-clusterset", "shop/team-x-api"] {
        assert_eq!(
            as_written(&during[key]),
            as_written(&before[key]),
            "{key} changed"
        );
    }

    // istiod is back: the next retry writes it (the resync is 600 s away), and the problem
    // is gone from the status.
    istiod.restart();
    eventually(
        70,
        "a writes payment's ServiceEntry once istiod is back",
        || async {
            service_entries(&ca)
                .await
                .contains_key("shop/payment-clusterset")
        },
    )
    .await;
    eventually(10, "a's status is clear", || async {
        backend(&a).await.problems.is_empty()
    })
    .await;

    // The site refuses one import by its own admission policy: refused, reported, retried
    // with back-off, and everything else goes on.
    for policy in [
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": "no-payroll-imports"},
            "spec": {"failurePolicy": "Fail",
                     "matchConstraints": {"resourceRules": [{"apiGroups": ["networking.istio.io"],
                         "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
                         "resources": ["serviceentries"]}]},
                     "validations": [{"expression": "!object.spec.hosts.exists(h, h.startsWith('payroll.'))",
                                      "message": "payroll may not be imported at this site"}]}}),
        json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": "no-payroll-imports"},
            "spec": {"policyName": "no-payroll-imports", "validationActions": ["Deny"]}}),
    ] {
        k::apply(&ca, "test-setup", &policy).await.unwrap();
    }
    // (A policy takes a moment to be compiled and enforced: wait until it refuses.)
    let probe = json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": "probe", "namespace": "shop"},
        "spec": {"hosts": ["payroll.probe"], "location": "MESH_EXTERNAL", "resolution": "DNS",
                 "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}});
    eventually(30, "the policy is enforced", || async {
        k::apply_dry_run(&ca, &probe).await.is_err()
    })
    .await;
    b.export("payroll", &[]).await;
    b.export("invoices", &[]).await;
    let object = "networking.istio.io/v1/ServiceEntry/shop/payroll-clusterset";
    eventually(30, "a's status names the refusal", || async {
        let s = backend(&a).await;
        problem(&s, object).is_some_and(|p| {
            p.refused && p.reason.contains("payroll may not be imported") && p.attempts >= 2
        })
    })
    .await;
    eventually(
        10,
        "a Warning Event on the ServiceEntry names the refusal",
        || async {
            events_about(&ca, "payroll-clusterset")
                .await
                .iter()
                .any(|(r, n)| r == "ApplyRefused" && n.contains("payroll may not be imported"))
        },
    )
    .await;
    eventually(30, "the other import goes on", || async {
        service_entries(&ca)
            .await
            .contains_key("shop/invoices-clusterset")
    })
    .await;
    let after = service_entries(&ca).await;
    assert!(!after.contains_key("shop/payroll-clusterset"));
    assert!(after.contains_key("shop/payment-clusterset"));
    assert_eq!(
        as_written(&after["shop/team-x-api"]),
        as_written(&before["shop/team-x-api"]),
        "the foreign ServiceEntry changed"
    );
    assert!(
        !managers(&after["shop/team-x-api"]).contains(&"multimesh".to_string()),
        "multimesh wrote to the foreign ServiceEntry: {:#}",
        after["shop/team-x-api"]
    );
    let s = backend(&a).await;
    println!(
        "refused: {object}: {} attempts, next try in {} ms",
        problem(&s, object).unwrap().attempts,
        s.next_retry_ms
    );
    assert!(a.log().contains("ApplyRefused"), "{}", a.log());
    // What an operator sees.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_federationctl"))
        .arg("--admin-socket")
        .arg(a.socket())
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("backend kubernetes (mesh istio): 1 object(s) not applied")
            && text.contains(&format!("{object} REFUSED"))
            && text.contains("payroll may not be imported at this site"),
        "{text}"
    );
    println!("federationctl status:\n{text}");
    drop(istiod);
}
