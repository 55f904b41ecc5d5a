//! End-to-end catalog sync between real `federationd` processes over mutual TLS on loopback:
//! export/unexport across a relay, scope on the wire, resume after a crash, stale handling,
//! and persistence of runtime exports.

mod support;

use std::time::Duration;

use multimesh_proto::catalog::v1::sync_message::Body;
use support::*;

/// a - b - c full mesh, node behind c (c waits for it to dial).
async fn mesh(root: &std::path::Path, pki: &Pki) -> (Site, Site, Site, Site) {
    let c = Site::start(
        pki,
        root,
        &SiteSpec::new("c").accept("a").accept("b").accept("node"),
        None,
    );
    let b = Site::start(
        pki,
        root,
        &SiteSpec::new("b").accept("a").dial("c", &c.listen),
        None,
    );
    // a dials b by DNS name (resolved with hickory, re-resolved on reconnect).
    let b_by_name = b.listen.replace("127.0.0.1", "localhost");
    let a = Site::start(
        pki,
        root,
        &SiteSpec::new("a")
            .dial("b", &b_by_name)
            .dial("c", &c.listen),
        None,
    );
    let node = Site::start(pki, root, &SiteSpec::new("node").dial("c", &c.listen), None);
    (a, b, c, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_reaches_every_site_through_the_relay_and_unexport_withdraws_it() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let (a, b, c, node) = mesh(tmp.path(), &pki).await;
    a.export("payment", &[]).await;
    for s in [&a, &b, &c, &node] {
        eventually(10, &format!("payment visible on {}", s.name), || async {
            s.entries().await == strs(&["shop/payment@a"])
        })
        .await;
    }
    // The node's service travels back through c to a and b.
    node.export("sensor", &[]).await;
    for s in [&a, &b, &c] {
        eventually(10, &format!("sensor visible on {}", s.name), || async {
            s.entries().await.contains(&"shop/sensor@node".to_string())
        })
        .await;
    }
    a.unexport("payment").await;
    for s in [&a, &b, &c, &node] {
        eventually(10, &format!("payment withdrawn on {}", s.name), || async {
            s.entries().await == strs(&["shop/sensor@node"])
        })
        .await;
    }
    // Every link is healthy (recent heartbeat and ACK), and the node is linked to c only.
    let peers = c.peers().await;
    eventually(5, "c's links healthy", || async {
        c.peers().await.values().all(|p| p.healthy)
    })
    .await;
    assert_eq!(peers["node"].direction, "inbound");
    assert_eq!(node.peers().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_export_never_crosses_the_wire_to_sites_outside_its_scope() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    // Real a and b; "c" is a tap speaking the protocol with c's certificate, linked to both a
    // and b (so both the origin and the relay would have to leak for it to see the entry).
    let b = Site::start(
        &pki,
        tmp.path(),
        &SiteSpec::new("b").accept("a").accept("c"),
        None,
    );
    let a = Site::start(
        &pki,
        tmp.path(),
        &SiteSpec::new("a").dial("b", &b.listen).accept("c"),
        None,
    );
    let tap_a = tap(pki.site_tls("c"), "c", "a", &a.listen).await.unwrap();
    let tap_b = tap(pki.site_tls("c"), "c", "b", &b.listen).await.unwrap();
    a.export("secret", &["b"]).await;
    a.export("public", &[]).await;
    eventually(10, "b sees both", || async {
        b.entries().await == strs(&["shop/public@a", "shop/secret@a"])
    })
    .await;
    eventually(10, "c's taps get public", || async {
        tap_a.record_names().contains(&"public".to_string())
            && tap_b.record_names().contains(&"public".to_string())
    })
    .await;
    // Let several heartbeats and any relay pass, then check everything c ever received.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (who, t) in [("a", &tap_a), ("b", &tap_b)] {
        let names = t.record_names();
        assert!(
            !names.iter().any(|n| n == "secret"),
            "{who} sent the b-only entry to c: {names:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_site_resumes_with_deltas_not_a_snapshot() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let c = Site::start(
        &pki,
        tmp.path(),
        &SiteSpec::new("c").accept("a").accept("b"),
        None,
    );
    let b_spec = SiteSpec::new("b").accept("a").dial("c", &c.listen);
    let mut b = Site::start(&pki, tmp.path(), &b_spec, None);
    let a = Site::start(
        &pki,
        tmp.path(),
        &SiteSpec::new("a").dial("b", &b.listen).dial("c", &c.listen),
        None,
    );
    for i in 0..20 {
        a.export(&format!("svc{i}"), &[]).await;
    }
    c.export("catalog", &[]).await;
    eventually(10, "b has everything", || async {
        b.entries().await.len() == 21
    })
    .await;
    // Let b persist its position (debounced) and a heartbeat pass, then crash it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let b_listen = b.listen.clone();
    b.kill();
    a.export("while-b-was-down", &[]).await;
    a.unexport("svc3").await;
    let b = Site::start(&pki, tmp.path(), &b_spec, Some(&b_listen));
    eventually(15, "b caught up", || async {
        b.entries().await == a.entries().await && b.entries().await == c.entries().await
    })
    .await;
    // c may relay a's changes before a's dialer is back; wait for a's own link too.
    eventually(15, "a-b link back", || async {
        let p = b.peers().await;
        p["a"].healthy && p["a"].counters.unwrap().deltas_received >= 1
    })
    .await;
    let peers = b.peers().await;
    for p in ["a", "c"] {
        let counters = peers[p].counters.unwrap();
        assert_eq!(
            counters.snapshots_received, 0,
            "b got a snapshot from {p}: {counters:?}"
        );
    }
    assert!(
        peers["a"].counters.unwrap().deltas_received >= 1,
        "{:?}",
        peers["a"]
    );
    // And a did not resend what b had: only the two changes made while b was down.
    assert_eq!(
        peers["a"].counters.unwrap().records_received,
        2,
        "{:?}",
        peers["a"]
    );
    assert!(
        b.entries()
            .await
            .contains(&"shop/while-b-was-down@a".to_string())
    );
    assert!(!b.entries().await.contains(&"shop/svc3@a".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_of_an_unreachable_origin_go_stale_then_are_withdrawn() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let b = Site::start(&pki, tmp.path(), &SiteSpec::new("b").accept("a"), None);
    let mut a = Site::start(
        &pki,
        tmp.path(),
        &SiteSpec::new("a").dial("b", &b.listen),
        None,
    );
    let v = a
        .admin()
        .await
        .export(multimesh_proto::admin::v1::ExportRequest {
            name: "payment".into(),
            namespace: "shop".into(),
            ports: vec![multimesh_proto::catalog::v1::ServicePort {
                name: "http".into(),
                port: 80,
                protocol: 2,
            }],
            stale: Some(multimesh_proto::catalog::v1::StalePolicy {
                ttl_seconds: 3,
                serve: true,
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(v.into_inner().service.unwrap().version, 1);
    eventually(10, "b sees payment", || async {
        b.entries().await == strs(&["shop/payment@a"])
    })
    .await;
    a.kill();
    eventually(5, "payment stale on b", || async {
        b.entries().await == strs(&["shop/payment@a~"])
    })
    .await;
    eventually(8, "payment withdrawn on b", || async {
        b.entries().await.is_empty()
    })
    .await;
    // a comes back: its entry is served again.
    let _a = Site::start(
        &pki,
        tmp.path(),
        &SiteSpec::new("a").dial("b", &b.listen),
        None,
    );
    eventually(10, "payment back on b", || async {
        b.entries().await == strs(&["shop/payment@a"])
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_daemon_keeps_its_runtime_exports() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let spec = SiteSpec::new("a");
    let mut a = Site::start(&pki, tmp.path(), &spec, None);
    a.export("payment", &["b"]).await;
    a.export("booking", &[]).await;
    a.unexport("booking").await;
    let before = a
        .admin()
        .await
        .status(multimesh_proto::admin::v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    a.stop();
    let a = Site::start(&pki, tmp.path(), &spec, None);
    assert_eq!(a.entries().await, strs(&["shop/payment@a"]));
    let after = a
        .admin()
        .await
        .status(multimesh_proto::admin::v1::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (after.epoch, after.version, after.seq),
        (before.epoch, before.version, before.seq)
    );
    // A crash right after the acknowledgement loses nothing: exports are saved before the ack.
    a.export("late", &[]).await;
    let mut a = a;
    a.kill();
    let a = Site::start(&pki, tmp.path(), &spec, None);
    assert_eq!(a.entries().await, strs(&["shop/late@a", "shop/payment@a"]));
    let _ = Body::Ack(Default::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federationctl_watch_streams_changes_and_stops_at_the_target_count() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let b = Site::start(&pki, tmp.path(), &SiteSpec::new("b").accept("a"), None);
    let a = Site::start(
        &pki,
        tmp.path(),
        &SiteSpec::new("a").dial("b", &b.listen),
        None,
    );
    let watcher = std::process::Command::new(env!("CARGO_BIN_EXE_federationctl"))
        .arg("--admin-socket")
        .arg(b.socket())
        .args(["-o", "json", "watch", "--until-entries", "2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The first event comes at once; give the watcher time to subscribe before exporting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.export("payment", &[]).await;
    a.export("booking", &[]).await;
    let out = tokio::task::spawn_blocking(move || watcher.wait_with_output().unwrap());
    let out = tokio::time::timeout(Duration::from_secs(15), out)
        .await
        .expect("watch did not stop at 2 entries")
        .unwrap();
    assert!(out.status.success(), "watch failed: {out:?}");
    let events: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["entries"], 0, "{events:?}");
    assert_eq!(events.last().unwrap()["entries"], 2, "{events:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_larger_than_one_admin_message_is_listed_whole() {
    use multimesh_proto::admin::v1 as api;
    use multimesh_proto::catalog::v1 as wire;
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let b = Site::start(&pki, tmp.path(), &SiteSpec::new("b").accept("a"), None);
    let a = Site::start(
        &pki,
        tmp.path(),
        &SiteSpec::new("a").dial("b", &b.listen),
        None,
    );
    // 340 exports of about 13 KB each (50 long labels): some 4.5 MB, over the 4 MiB that one
    // admin message may carry.
    let prefix = format!(
        "{}.{}.{}.example",
        "x".repeat(60),
        "y".repeat(60),
        "z".repeat(60)
    );
    let labels: std::collections::HashMap<String, String> = (0..50)
        .map(|i| (format!("{prefix}/label-{i:02}"), "v".repeat(63)))
        .collect();
    let mut admin = b.admin().await;
    let n = 340;
    for i in 0..n {
        admin
            .export(api::ExportRequest {
                name: format!("svc-{i:03}"),
                namespace: "shop".into(),
                ports: vec![wire::ServicePort {
                    name: "http".into(),
                    port: 8080,
                    protocol: wire::Protocol::Http as i32,
                }],
                labels: labels.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let list = |site: &Site| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_federationctl"))
            .arg("--admin-socket")
            .arg(site.socket())
            .args(["-o", "json", "catalog"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "federationctl catalog failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["origins"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|o| o["entries"].as_array().unwrap().clone())
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    let names = list(&b);
    assert_eq!(names.len(), n, "every export listed once");
    // Pages by hand: each under the admin message limit, none repeated; bad requests named.
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let page = admin
            .catalog(api::CatalogRequest {
                page_size: 100,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(prost::Message::encoded_len(&page) < 2 << 20);
        seen.extend(
            page.origins
                .iter()
                .flat_map(|o| &o.entries)
                .map(|e| e.service.as_ref().unwrap().name.clone()),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), n, "no entry repeated or skipped across pages");
    for (size, token, field) in [
        (10_001, "", "page_size"),
        (0, "b/shop", "page_token"),
        (0, "b/shop/Not_A_Label", "page_token"),
    ] {
        let e = admin
            .catalog(api::CatalogRequest {
                page_size: size,
                page_token: token.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(field), "{}", e.message());
    }
    assert!(names.contains("svc-000") && names.contains("svc-339"));
    // The same catalog crosses to a by sync and is listed there too.
    eventually(30, "a holds b's 340 exports", || async {
        a.entries().await.len() == n
    })
    .await;
    assert_eq!(list(&a).len(), n);
    // The status answer counts the same entries.
    for site in [&a, &b] {
        let status = site
            .admin()
            .await
            .status(api::StatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.entries_visible as usize, n, "{}", site.name);
    }
}
