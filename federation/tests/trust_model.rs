//! The trust model of catalog sync, attacked by a hand-driven peer that speaks the wire
//! protocol: a site's records, withdrawals and liveness can be asserted only by that site.
//!
//! Each test names the property it protects. Site `a` is the victim, `b` an honest site (a
//! real `federationd`), `m` a configured peer of `a` under the attacker's control (a tap with
//! m's own certificate and key, from the same federation CA).

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
        share_with: vec![],
    }
}

fn live(s: wire::ExportedService) -> wire::Record {
    wire::Record {
        kind: Some(wire::record::Kind::Service(s)),
    }
}

fn withdrawal(origin: &str, name: &str, version: u64) -> wire::Record {
    wire::Record {
        kind: Some(wire::record::Kind::Withdrawn(wire::Withdrawal {
            origin: origin.into(),
            namespace: "shop".into(),
            name: name.into(),
            origin_epoch: u64::MAX,
            version,
            audience: Some(wire::ConsumerScope {
                all: true,
                sites: vec![],
            }),
        })),
    }
}

fn snapshot(records: Vec<wire::SignedRecord>, certificates: Vec<Vec<u8>>) -> Body {
    Body::Snapshot(wire::SnapshotChunk {
        position: pos(),
        index: 0,
        last: true,
        records,
        certificates,
    })
}

/// The entry `shop/NAME@ORIGIN` as site `s` shows it, with its stale flag.
async fn entry(s: &Site, name: &str, origin: &str) -> Option<(wire::ExportedService, bool)> {
    let r = federation::admin::catalog_all(&mut s.admin().await)
        .await
        .unwrap();
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

/// a accepts b and m; b (real) exports payment and a sees it.
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

fn reason(t: &Tap, id: u64) -> wire::NackReason {
    wire::NackReason::try_from(t.nack_for(id).expect("a NACK").reason).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_assert_or_withdraw_another_origins_service() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let (a, _b) = victim(tmp.path(), &pki).await;
    let (real, _) = entry(&a, "payment", "b").await.unwrap();
    let mut m = tap(pki.site_tls("m"), "m", "a", &a.listen).await.unwrap();

    // b's payment at the highest stamp, routed through m, signed by m.
    let mut hijack = service("b", "payment", u64::MAX / 2, u64::MAX);
    hijack.ingress_via = "m".into();
    let signed_by_m = m
        .send(snapshot(
            vec![m.sign(&live(hijack.clone()))],
            vec![m.cert()],
        ))
        .await;
    // The same, with b's real certificate attached and m's signature under b's fingerprint.
    let b_cert =
        federation::identity::read_certs(&pki.dir.join("b-federation.pem")).unwrap()[0].to_vec();
    let mut forged = m.sign(&live(hijack));
    forged.signer = federation::proof::fingerprint(&b_cert).to_vec();
    let under_b = m.send(snapshot(vec![forged], vec![b_cert])).await;
    // A withdrawal of b's payment at the highest stamp.
    let gone = m
        .send(snapshot(
            vec![m.sign(&withdrawal("b", "payment", u64::MAX))],
            vec![m.cert()],
        ))
        .await;
    eventually(5, "all answered", || async { m.nack_for(gone).is_some() }).await;
    for id in [signed_by_m, under_b, gone] {
        assert_eq!(
            reason(&m, id),
            wire::NackReason::Proof,
            "{:?}",
            m.nack_for(id)
        );
    }
    assert!(
        m.nack_for(signed_by_m)
            .unwrap()
            .detail
            .contains("signed by site m, not by its origin"),
        "{:?}",
        m.nack_for(signed_by_m)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (now, stale) = entry(&a, "payment", "b").await.expect("payment@b kept");
    assert_eq!(now, real, "payment@b is exactly what b exported");
    assert!(!stale);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_head_cannot_make_a_live_origin_stale() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let (a, _b) = victim(tmp.path(), &pki).await;
    let mut m = tap(pki.site_tls("m"), "m", "a", &a.listen).await.unwrap();
    // b's head with the highest beat, signed by m: were it believed, b's real beats would never
    // advance again and b would go stale everywhere.
    let forged = m
        .send(Body::Heartbeat(wire::Heartbeat {
            position: None,
            heads: vec![m.sign_head(&wire::OriginHead {
                origin: "b".into(),
                epoch: 1,
                version: 1,
                beat: u64::MAX,
            })],
            certificates: vec![m.cert()],
        }))
        .await;
    // m's own head with a beat a day ahead of the clock.
    let future = m
        .send(Body::Heartbeat(wire::Heartbeat {
            position: None,
            heads: vec![m.sign_head(&wire::OriginHead {
                origin: "m".into(),
                epoch: 1,
                version: 1,
                beat: now_ms() + 24 * 3600 * 1000,
            })],
            certificates: vec![m.cert()],
        }))
        .await;
    eventually(5, "answered", || async { m.nack_for(future).is_some() }).await;
    assert_eq!(reason(&m, forged), wire::NackReason::Proof);
    assert_eq!(reason(&m, future), wire::NackReason::Proof);
    assert!(
        m.nack_for(future)
            .unwrap()
            .detail
            .contains("ahead of this site's clock"),
        "{:?}",
        m.nack_for(future)
    );
    // Liveness timeout is 3.5 heartbeats of 200 ms: wait well past it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, stale) = entry(&a, "payment", "b").await.unwrap();
    assert!(!stale, "b's beats still count");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_forwards_genuine_records_and_cannot_widen_their_scope() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    // a and b are not linked: m is the only path between them.
    let a = Site::start(&pki, tmp.path(), &SiteSpec::new("a").accept("m"), None);
    let b = Site::start(&pki, tmp.path(), &SiteSpec::new("b").accept("m"), None);
    b.export("public", &[]).await;
    b.export("secret", &["m"]).await;
    let m_tls = || {
        pki.tls_from(
            &pki.dir.join("m-federation.pem"),
            &pki.dir.join("m-federation-key.pem"),
        )
    };
    pki.issue("m");
    let from_b = tap(m_tls(), "m", "b", &b.listen).await.unwrap();
    eventually(5, "m got b's snapshot", || async {
        from_b.record_names().len() >= 2
    })
    .await;
    // What b sent, signed by b, exactly as received.
    let signed: Vec<(String, wire::SignedRecord, Vec<Vec<u8>>)> = {
        let msgs = from_b.received.lock().unwrap();
        msgs.iter()
            .filter_map(|m| match &m.body {
                Some(Body::Snapshot(s)) => Some(s.clone()),
                _ => None,
            })
            .flat_map(|s| {
                let certs = s.certificates.clone();
                s.records.into_iter().map(move |r| {
                    use prost::Message;
                    let rec = wire::Record::decode(r.record.as_slice()).unwrap();
                    let name = match rec.kind {
                        Some(wire::record::Kind::Service(s)) => s.name,
                        _ => String::new(),
                    };
                    (name, r, certs.clone())
                })
            })
            .collect()
    };
    let find = |n: &str| {
        signed
            .iter()
            .find(|(name, _, _)| name == n)
            .unwrap()
            .clone()
    };
    let mut to_a = tap(m_tls(), "m", "a", &a.listen).await.unwrap();

    // Relaying b's public record unchanged works: a takes it as b's.
    let (_, public, certs) = find("public");
    let ok = to_a.send(snapshot(vec![public], certs)).await;
    eventually(5, "a sees public@b through m", || async {
        entry(&a, "public", "b").await.is_some()
    })
    .await;
    assert!(to_a.nack_for(ok).is_none());

    // b's secret is scoped to m: relayed as is, it is refused for its scope.
    let (_, secret, certs) = find("secret");
    let as_is = to_a
        .send(snapshot(vec![secret.clone()], certs.clone()))
        .await;
    // Widened to every site by m: the signature no longer covers it.
    let widened = {
        use prost::Message;
        let mut w = secret.clone();
        let mut rec = wire::Record::decode(w.record.as_slice()).unwrap();
        if let Some(wire::record::Kind::Service(s)) = rec.kind.as_mut() {
            s.scope = Some(wire::ConsumerScope {
                all: true,
                sites: vec![],
            });
        }
        w.record = rec.encode_to_vec();
        w
    };
    let wide = to_a.send(snapshot(vec![widened], certs)).await;
    eventually(5, "answered", || async { to_a.nack_for(wide).is_some() }).await;
    assert_eq!(reason(&to_a, as_is), wire::NackReason::ScopeViolation);
    assert_eq!(reason(&to_a, wide), wire::NackReason::Invalid);
    assert!(
        to_a.nack_for(wide).unwrap().detail.contains("SHA-256"),
        "{:?}",
        to_a.nack_for(wide)
    );
    assert!(entry(&a, "secret", "b").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stamps_from_the_future_and_fat_records_are_refused() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let (a, _b) = victim(tmp.path(), &pki).await;
    let before = a.entries().await;
    let mut m = tap(pki.site_tls("m"), "m", "a", &a.listen).await.unwrap();
    let day_ns = 24 * 3600 * 1_000_000_000u64;
    let ahead = now_ms() * 1_000_000 + day_ns;
    let future = m
        .send(snapshot(
            vec![m.sign(&live(service("m", "early", ahead, 1)))],
            vec![m.cert()],
        ))
        .await;
    // About 24 KB of valid fields (64 labels with long prefixed keys): over the 16 KiB limit.
    let mut fat = service("m", "fat", 1, 1);
    let dns = format!(
        "{}.{}.{}.example.com",
        "a".repeat(60),
        "b".repeat(60),
        "c".repeat(60)
    );
    for i in 0..64 {
        fat.labels
            .insert(format!("{dns}/k{i:02}{}", "x".repeat(60)), "v".repeat(63));
    }
    fat.ingress = (0..16).map(|i| format!("{dns}:{}", 1000 + i)).collect();
    let fat = m
        .send(snapshot(vec![m.sign(&live(fat))], vec![m.cert()]))
        .await;
    eventually(5, "answered", || async { m.nack_for(fat).is_some() }).await;
    assert_eq!(reason(&m, future), wire::NackReason::Proof);
    assert!(
        m.nack_for(future)
            .unwrap()
            .detail
            .contains("ahead of this site's clock"),
        "{:?}",
        m.nack_for(future)
    );
    assert_eq!(
        reason(&m, fat),
        wire::NackReason::TooLarge,
        "{:?}",
        m.nack_for(fat)
    );
    assert_eq!(a.entries().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_of_origins_a_site_does_not_track_are_not_kept_or_passed_on() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let (a, _b) = victim(tmp.path(), &pki).await;
    let mut m = tap(pki.site_tls("m"), "m", "a", &a.listen).await.unwrap();
    // 40 sites with real certificates of the federation CA, none of them configured anywhere,
    // each with a genuine signed head: m floods a with them.
    let mut heads = Vec::new();
    let mut certificates = Vec::new();
    for i in 0..40 {
        let site = format!("x{i}");
        let tls = pki.site_tls(&site);
        let signer = federation::proof::Signer::new(&tls.chain[0], &tls.key).unwrap();
        heads.push(sign_head(
            &signer,
            &wire::OriginHead {
                origin: site,
                epoch: 1,
                version: 1,
                beat: now_ms(),
            },
        ));
        certificates.push(signer.certificate().0.clone());
    }
    let flood = m
        .send(Body::Heartbeat(wire::Heartbeat {
            position: None,
            heads,
            certificates,
        }))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(m.nack_for(flood).is_none(), "genuine heads are accepted");
    // A new peer's hello from a lists only the origins a tracks.
    let n = tap(pki.site_tls("m"), "m", "a", &a.listen).await.unwrap();
    eventually(5, "heartbeat from a", || async {
        n.count(|b| matches!(b, Body::Heartbeat(_))) > 0
    })
    .await;
    let origins: Vec<String> = {
        use prost::Message;
        let msgs = n.received.lock().unwrap();
        let hb = msgs
            .iter()
            .find_map(|m| match &m.body {
                Some(Body::Heartbeat(h)) => Some(h.clone()),
                _ => None,
            })
            .unwrap();
        hb.heads
            .iter()
            .map(|h| wire::OriginHead::decode(h.head.as_slice()).unwrap().origin)
            .collect()
    };
    assert!(
        origins.iter().all(|o| !o.starts_with('x')),
        "a passes on heads of origins it does not track: {origins:?}"
    );
    assert!(origins.contains(&"a".to_string()) && origins.contains(&"b".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_removed_from_the_config_leaves_nothing_behind() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let spec = SiteSpec::new("a").accept("m");
    let mut a = Site::start(&pki, tmp.path(), &spec, None);
    let mut m = tap(pki.site_tls("m"), "m", "a", &a.listen).await.unwrap();
    let ok = m
        .send(snapshot(
            vec![m.sign(&live(service("m", "rogue", 1, 1)))],
            vec![m.cert()],
        ))
        .await;
    eventually(5, "a sees rogue@m", || async {
        entry(&a, "rogue", "m").await.is_some()
    })
    .await;
    assert!(m.nack_for(ok).is_none());
    drop(m);
    a.stop();
    let listen = a.listen.clone();
    let a = Site::start(&pki, tmp.path(), &SiteSpec::new("a"), Some(&listen));
    assert_eq!(a.entries().await, Vec::<String>::new());
    assert!(
        a.log().contains("no longer configured"),
        "the drop is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_agents_certificate_can_neither_sync_the_catalog_nor_sign_a_record() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let (a, _b) = victim(tmp.path(), &pki).await;
    // m's edge agent (its data-plane key) poses as m's federationd: m is a configured peer.
    let edge = pki.edge_tls("m");
    let edge_signer = federation::proof::Signer::new(&edge.chain[0], &edge.key).unwrap();
    let edge_cert = edge.chain[0].to_vec();
    let as_edge = tap(edge, "m", "a", &a.listen).await;
    if let Ok(t) = &as_edge {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            t.count(|_| true) == 0,
            "a synced with m's edge certificate ({} messages)",
            t.count(|_| true)
        );
    }
    // m's real federationd session, carrying a record signed with m's edge key.
    let mut m = tap(pki.site_tls("m"), "m", "a", &a.listen).await.unwrap();
    let signed = sign_record(&edge_signer, &live(service("m", "rogue", 1, 1)));
    let id = m.send(snapshot(vec![signed], vec![edge_cert])).await;
    eventually(5, "answered", || async {
        m.nack_for(id).is_some() || entry(&a, "rogue", "m").await.is_some()
    })
    .await;
    assert!(
        entry(&a, "rogue", "m").await.is_none(),
        "a record signed by m's edge key was merged"
    );
    assert_eq!(reason(&m, id), wire::NackReason::Proof);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flooding_messages_is_held_to_its_rate_and_other_peers_are_not() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let rate = format!("{}peer_rate = 100\npeer_burst = 100\n", sync_toml(200));
    let a = Site::start(
        &pki,
        tmp.path(),
        &SiteSpec::new("a").accept("b").accept("m").extra(&rate),
        None,
    );
    let b = Site::start(
        &pki,
        tmp.path(),
        &SiteSpec::new("b").dial("a", &a.listen),
        None,
    );
    b.export("payment", &[]).await;
    eventually(10, "a sees payment@b", || async {
        entry(&a, "payment", "b").await.is_some()
    })
    .await;
    let mut m = tap(pki.site_tls("m"), "m", "a", &a.listen).await.unwrap();
    // 40 heartbeats of 10 heads each: 480 items against 100 per second and a burst of 100.
    let head = m.sign_head(&wire::OriginHead {
        origin: "m".into(),
        epoch: 1,
        version: 0,
        beat: now_ms(),
    });
    let started = std::time::Instant::now();
    let mut last = 0;
    for _ in 0..40 {
        last = m
            .send(Body::Heartbeat(wire::Heartbeat {
                position: None,
                heads: vec![head.clone(); 10],
                certificates: vec![m.cert()],
            }))
            .await;
    }
    // Meanwhile b's news reaches a at b's pace, not after m's backlog.
    b.export("ledger", &[]).await;
    eventually(2, "a sees ledger@b while m waits", || async {
        entry(&a, "ledger", "b").await.is_some()
    })
    .await;
    let answered = |m: &Tap| {
        m.count(|body| match body {
            Body::Ack(x) => x.msg_id == last,
            Body::Nack(n) => n.msg_id == last,
            _ => false,
        }) > 0
    };
    eventually(20, "m's last message answered", || async { answered(&m) }).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(3000),
        "480 items at 100 per second (burst 100) were taken in {took:?}"
    );
    let peers = a.peers().await;
    let throttled = peers["m"].counters.as_ref().unwrap().throttled_ms;
    assert!(throttled >= 2000, "m's wait is counted: {throttled} ms");
    assert_eq!(
        peers["b"].counters.as_ref().unwrap().throttled_ms,
        0,
        "b was never slowed"
    );
}
