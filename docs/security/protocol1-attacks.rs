// Evidence, not compiled here: the old-format (protocol 1) twins of federation/tests/trust_model.rs.
// Each attack SUCCEEDS on 442e36a (the code before origin proofs); all five tests fail there:
//   git worktree add /tmp/old 442e36a
//   cp docs/security/protocol1-attacks.rs /tmp/old/federation/tests/trust_model_before.rs
//   (cd /tmp/old && cargo test -p multimesh-federation --test trust_model_before)
// Output of that run on 2026-12-01: 0 passed, 5 failed (payment@b replaced by m's forgery with
// ingress_via m; b stale after a forged head; a 24 KB record merged; 20,000 heads of unknown
// origins passed on (20,002 in one hello); rogue@m kept after m left the configuration).

//! Old-format twins of federation/tests/trust_model.rs (protocol 1, unsigned records), run
//! against 442e36a to show each attack succeeding there. Same properties, same names.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use multimesh_proto::admin::v1 as api;
use multimesh_proto::catalog::v1::{self as wire, sync_message::Body};
use support::*;

fn pos() -> Option<wire::StreamPosition> {
    Some(wire::StreamPosition { epoch: 1, seq: 5 })
}

fn service(origin: &str, name: &str, epoch: u64, version: u64) -> wire::ExportedService {
    wire::ExportedService {
        origin: origin.into(),
        namespace: "shop".into(),
        name: name.into(),
        origin_epoch: epoch,
        version,
        ports: vec![wire::ServicePort {
            name: "http".into(),
            port: 80,
            protocol: wire::Protocol::Http as i32,
        }],
        ingress: vec!["127.0.0.66:15443".into()],
        ingress_via: String::new(),
        labels: Default::default(),
        identity: String::new(),
        scope: Some(wire::ConsumerScope {
            all: true,
            sites: vec![],
        }),
        stale: Some(wire::StalePolicy {
            ttl_seconds: 60,
            serve: true,
        }),
    }
}

fn live(s: wire::ExportedService) -> wire::Record {
    wire::Record {
        kind: Some(wire::record::Kind::Service(s)),
    }
}

fn snapshot(records: Vec<wire::Record>) -> Body {
    Body::Snapshot(wire::SnapshotChunk {
        position: pos(),
        index: 0,
        last: true,
        records,
    })
}

async fn entry(s: &Site, name: &str, origin: &str) -> Option<(wire::ExportedService, bool)> {
    let r = s
        .admin()
        .await
        .catalog(api::CatalogRequest::default())
        .await
        .unwrap()
        .into_inner();
    r.origins
        .into_iter()
        .flat_map(|o| o.entries)
        .filter_map(|e| e.service.map(|s| (s, e.stale)))
        .find(|(s, _)| s.name == name && s.origin == origin)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

async fn victim(root: &std::path::Path, pki: &Pki) -> (Site, Site) {
    let a = Site::start(pki, root, &SiteSpec::new("a").accept("b").accept("m"), None);
    let b = Site::start(pki, root, &SiteSpec::new("b").dial("a", &a.listen), None);
    b.export("payment", &[]).await;
    eventually(10, "a sees payment@b", || async {
        entry(&a, "payment", "b").await.is_some()
    })
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_assert_or_withdraw_another_origins_service() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let (a, _b) = victim(tmp.path(), &pki).await;
    let (real, _) = entry(&a, "payment", "b").await.unwrap();
    let mut m = tap(pki.site_tls("m"), "m", "a", &a.listen).await.unwrap();
    let mut hijack = service("b", "payment", u64::MAX / 2, u64::MAX);
    hijack.ingress_via = "m".into();
    m.send(snapshot(vec![live(hijack)])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (now, _) = entry(&a, "payment", "b").await.expect("payment@b kept");
    assert_eq!(now, real, "payment@b is exactly what b exported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_head_cannot_make_a_live_origin_stale() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let (a, _b) = victim(tmp.path(), &pki).await;
    let mut m = tap(pki.site_tls("m"), "m", "a", &a.listen).await.unwrap();
    let head = wire::OriginHead {
        origin: "b".into(),
        epoch: u64::MAX / 2,
        version: 1,
        beat: now_ms() + 3_600_000,
    };
    m.send(Body::Heartbeat(wire::Heartbeat {
        position: pos(),
        heads: vec![head],
    }))
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, stale) = entry(&a, "payment", "b").await.unwrap();
    assert!(!stale, "b is live: a forged head made it stale");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamps_from_the_future_and_fat_records_are_refused() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let (a, _b) = victim(tmp.path(), &pki).await;
    let mut m = tap(pki.site_tls("m"), "m", "a", &a.listen).await.unwrap();
    let mut fat = service("m", "fat", 1, 1);
    // 64 valid labels with long DNS prefixes: about 24 KB, every field within its own bound.
    let prefix = format!("{}.{}.{}", "p".repeat(63), "q".repeat(63), "r".repeat(63));
    for i in 0..64 {
        fat.labels.insert(
            format!("{prefix}/k{i:02}{}", "k".repeat(59)),
            "v".repeat(63),
        );
    }
    let id = m.send(snapshot(vec![live(fat)])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(m.nack_for(id).is_some(), "a 24 KB record was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_of_origins_a_site_does_not_track_are_not_kept_or_passed_on() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let (a, _b) = victim(tmp.path(), &pki).await;
    let mut m = tap(pki.site_tls("m"), "m", "a", &a.listen).await.unwrap();
    for batch in 0..2 {
        let heads = (0..10_000)
            .map(|i| wire::OriginHead {
                origin: format!("x{batch}-{i}"),
                epoch: 1,
                version: 1,
                beat: now_ms(),
            })
            .collect();
        m.send(Body::Heartbeat(wire::Heartbeat {
            position: pos(),
            heads,
        }))
        .await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(m);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = tap(pki.site_tls("m"), "m", "a", &a.listen).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let most = n
        .received
        .lock()
        .unwrap()
        .iter()
        .filter_map(|msg| match &msg.body {
            Some(Body::Hello(h)) => Some(h.heads.len()),
            Some(Body::Heartbeat(h)) => Some(h.heads.len()),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    assert!(
        most <= 3,
        "a passes on {most} heads of origins it does not track"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_removed_from_the_config_leaves_nothing_behind() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let mut a = Site::start(&pki, tmp.path(), &SiteSpec::new("a").accept("m"), None);
    let mut m = tap(pki.site_tls("m"), "m", "a", &a.listen).await.unwrap();
    m.send(snapshot(vec![live(service("m", "rogue", 1, 1))]))
        .await;
    eventually(5, "a sees rogue@m", || async {
        entry(&a, "rogue", "m").await.is_some()
    })
    .await;
    drop(m);
    a.stop();
    let listen = a.listen.clone();
    let a = Site::start(&pki, tmp.path(), &SiteSpec::new("a"), Some(&listen));
    assert_eq!(a.entries().await, Vec::<String>::new());
}
