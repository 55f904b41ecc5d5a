//! Refusals: peers with a foreign CA, an unlisted SPIFFE ID or an expired certificate are refused
//! at the TLS handshake with a log line saying why; malformed admin requests and malformed peer
//! messages get a clear error and change nothing.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use federation::identity::Validity;
use multimesh_proto::catalog::v1::{self as wire, sync_message::Body};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_ca_unlisted_id_and_expired_certificates_are_refused() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let a = Site::start(&pki, tmp.path(), &SiteSpec::new("a").accept("c"), None);

    // A certificate for a listed site, but from another CA.
    // The client trusts the real CA (so it accepts a's certificate) but presents one signed by
    // a foreign CA: the refusal is a's.
    let foreign = Pki::new(&tmp.path().join("foreign"));
    let (fc, fk) = foreign.issue("c");
    let err = tap(pki.tls_from(&fc, &fk), "c", "a", &a.listen).await.err();
    assert!(err.is_some(), "foreign-CA client was accepted");

    // A certificate from the right CA for a site that is not a configured peer.
    assert!(
        tap(pki.site_tls("mallory"), "mallory", "a", &a.listen)
            .await
            .is_err()
    );

    // An expired certificate for a listed site.
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = pki.issue_with(
        "c",
        federation::identity::Role::Federation,
        Validity {
            not_before: now - time::Duration::days(3),
            not_after: now - time::Duration::days(1),
        },
    );
    assert!(
        tap(pki.tls_from(&cert, &key), "c", "a", &a.listen)
            .await
            .is_err()
    );

    // The valid certificate works, so the refusals above were about the certificates.
    let (cert, key) = pki.issue("c");
    let ok = tap(pki.tls_from(&cert, &key), "c", "a", &a.listen)
        .await
        .unwrap();
    eventually(5, "session with the valid peer", || async {
        ok.count(|b| matches!(b, Body::Heartbeat(_))) > 0
    })
    .await;

    eventually(5, "refusals logged with reasons", || async {
        let log = a.log();
        log.contains("foreign CA")
            && log.contains(
                "spiffe://multimesh.test/site/mallory/federation is not a configured peer",
            )
            && log.contains("certificate has expired")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_wrong_spiffe_id_is_refused_by_the_dialer() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    // b's config says it dials "c" at an address where "x" listens (with a valid certificate).
    let x = Site::start(&pki, tmp.path(), &SiteSpec::new("x").accept("b"), None);
    let b = Site::start(
        &pki,
        tmp.path(),
        &SiteSpec::new("b").dial("c", &x.listen),
        None,
    );
    eventually(5, "b refuses x posing as c", || async {
        b.peers().await["c"].last_error.contains("server presented SPIFFE ID spiffe://multimesh.test/site/x/federation, expected spiffe://multimesh.test/site/c/federation")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_admin_requests_are_refused_and_change_nothing() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let a = Site::start(&pki, tmp.path(), &SiteSpec::new("a"), None);
    a.export("payment", &[]).await;
    let before = a.entries().await;
    let ctl = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_federationctl"))
            .arg("--admin-socket")
            .arg(a.socket())
            .args(args)
            .output()
            .unwrap()
    };
    for (args, needle) in [
        (
            vec!["export", "Bad_Name", "--port", "80"],
            "invalid SERVICE \"Bad_Name\"",
        ),
        (vec!["export", "svc", "--port", "0"], "invalid --port"),
        (
            vec!["export", "svc", "--port", "web:80/udp"],
            "must be one of tcp, http, http2, grpc",
        ),
        (
            vec!["export", "svc", "--port", "80", "--to", "Site_B"],
            "invalid --to",
        ),
        (vec!["export", "svc"], "--port"),
        (
            vec!["export", "svc", "--port", "80", "--label", "novalue"],
            "KEY=VALUE",
        ),
        (
            vec!["export", "svc", "--port", "80", "--stale-ttl", "99999999"],
            "--stale-ttl",
        ),
        (vec!["unexport", "ghost"], "not exported"),
    ] {
        let out = ctl(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // The admin API names its own request fields (the CLI above says them as flags).
    let mut admin = federation::admin::connect(&a.socket()).await.unwrap();
    let refused = admin
        .export(multimesh_proto::admin::v1::ExportRequest {
            name: "svc".into(),
            namespace: "default".into(),
            ports: vec![wire::ServicePort {
                name: "http".into(),
                port: 0,
                protocol: 2,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let field = multimesh_core::error::InvalidField::of_status(&refused).unwrap();
    assert_eq!(
        (field.field.as_str(), field.value.as_str()),
        ("ports[0].port", "0"),
        "{refused:?}"
    );
    assert!(refused.message().contains("ports[0].port"), "{refused:?}");
    assert_eq!(a.entries().await, before);
    // The socket is private to the daemon's user.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(a.socket()).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

fn svc_record(origin: &str, name: &str, version: u64) -> wire::Record {
    wire::Record {
        kind: Some(wire::record::Kind::Service(wire::ExportedService {
            origin: origin.into(),
            namespace: "shop".into(),
            name: name.into(),
            origin_epoch: 1,
            version,
            ports: vec![wire::ServicePort {
                name: "http".into(),
                port: 80,
                protocol: wire::Protocol::Http as i32,
            }],
            ingress: vec![],
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
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_peer_messages_are_nacked_and_change_nothing() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let spec = SiteSpec::new("a")
        .accept("c")
        .extra(&format!("{}max_records_per_link = 100\n", sync_toml(200)));
    let a = Site::start(&pki, tmp.path(), &spec, None);
    a.export("payment", &[]).await;
    let before = a.entries().await;
    let mut t = tap(pki.site_tls("c"), "c", "a", &a.listen).await.unwrap();
    let pos = Some(wire::StreamPosition { epoch: 1, seq: 5 });

    // A bad service name inside an otherwise valid snapshot.
    let bad = t
        .send(Body::Snapshot(wire::SnapshotChunk {
            position: pos,
            index: 0,
            last: true,
            records: vec![
                t.sign(&svc_record("c", "good", 1)),
                t.sign(&svc_record("c", "Bad_Name", 2)),
            ],
            certificates: vec![t.cert()],
        }))
        .await;
    // An oversized catalog: 101 records over two chunks, limit 100.
    let first = t
        .send(Body::Snapshot(wire::SnapshotChunk {
            position: pos,
            index: 0,
            last: false,
            records: (0..60)
                .map(|i| t.sign(&svc_record("c", &format!("s{i}"), 1)))
                .collect(),
            certificates: vec![t.cert()],
        }))
        .await;
    let big = t
        .send(Body::Snapshot(wire::SnapshotChunk {
            position: pos,
            index: 1,
            last: true,
            records: (60..101)
                .map(|i| t.sign(&svc_record("c", &format!("s{i}"), 1)))
                .collect(),
            certificates: vec![t.cert()],
        }))
        .await;
    // An entry claiming to be a's own.
    let own = t
        .send(Body::Snapshot(wire::SnapshotChunk {
            position: pos,
            index: 0,
            last: true,
            records: vec![t.sign(&svc_record("a", "payment", 99))],
            certificates: vec![t.cert()],
        }))
        .await;
    // A delta that does not follow anything a holds.
    let gap = t
        .send(Body::Delta(wire::Delta {
            epoch: 1,
            from_seq: 3,
            to_seq: 4,
            changes: vec![wire::Change {
                kind: Some(wire::change::Kind::Signed(t.sign(&svc_record("c", "x", 1)))),
            }],
            certificates: vec![t.cert()],
        }))
        .await;
    eventually(5, "all answered", || async { t.nack_for(gap).is_some() }).await;
    let reason = |id| wire::NackReason::try_from(t.nack_for(id).expect("nack").reason).unwrap();
    assert_eq!(reason(bad), wire::NackReason::Invalid);
    assert!(
        t.nack_for(bad).unwrap().detail.contains("records[1].name"),
        "{:?}",
        t.nack_for(bad)
    );
    assert!(t.nack_for(first).is_none(), "a partial snapshot is ACKed");
    assert_eq!(reason(big), wire::NackReason::TooLarge);
    // Signed by c, so refused for its origin proof before the catalog sees it.
    assert_eq!(reason(own), wire::NackReason::Proof);
    assert_eq!(reason(gap), wire::NackReason::Gap);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        a.entries().await,
        before,
        "nothing of the refused messages was applied"
    );
    // A valid snapshot on the same stream still works.
    let good = t
        .send(Body::Snapshot(wire::SnapshotChunk {
            position: pos,
            index: 0,
            last: true,
            records: vec![t.sign(&svc_record("c", "good", 1))],
            certificates: vec![t.cert()],
        }))
        .await;
    eventually(5, "good snapshot applied", || async {
        a.entries().await.contains(&"shop/good@c".to_string())
    })
    .await;
    assert!(t.nack_for(good).is_none());
}

/// An intermediate CA signed by `pki`'s CA (which allows none: pathLen 0), and a certificate
/// for `site`'s federationd signed by that intermediate: its chain, leaf first, and key.
fn chain_through_an_intermediate(
    pki: &Pki,
    site: &str,
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let root = Issuer::from_ca_cert_pem(
        &pki.ca.cert_pem,
        KeyPair::from_pem(&pki.ca.key_pem).unwrap(),
    )
    .unwrap();
    let mid_key = KeyPair::generate().unwrap();
    let mut mid = CertificateParams::new(Vec::<String>::new()).unwrap();
    mid.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    mid.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mid_cert = mid.signed_by(&mid_key, &root).unwrap();
    let mid_issuer = Issuer::from_ca_cert_der(mid_cert.der(), mid_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names = vec![rcgen::SanType::URI(
        format!("spiffe://{TD}/site/{site}/federation")
            .try_into()
            .unwrap(),
    )];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf_cert = leaf.signed_by(&leaf_key, &mid_issuer).unwrap();
    (
        vec![leaf_cert.der().clone(), mid_cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_that_allows_no_intermediate_ca_is_held_to_it() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let a = Site::start(&pki, tmp.path(), &SiteSpec::new("a").accept("c"), None);
    // c's certificate is genuine but was signed by an intermediate the root never allowed.
    let (chain, key) = chain_through_an_intermediate(&pki, "c");
    let ca = federation::identity::read_certs(&pki.dir.join("ca.pem")).unwrap();
    let tls = federation::tls::SiteTls::new(ca, chain, key).unwrap();
    let t = tap(tls, "c", "a", &a.listen).await;
    if let Ok(t) = &t {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            t.count(|_| true),
            0,
            "a synced with a peer whose chain breaks the root's pathLen 0"
        );
    }
    eventually(5, "the refusal is logged with its reason", || async {
        a.log().contains("intermediate")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_a_handshake_are_bounded_and_do_not_lock_out_peers() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let a = Site::start(&pki, tmp.path(), &SiteSpec::new("a").accept("c"), None);
    let before = a.open_files();
    // 1,000 connections that send nothing (the kernel completes them; only accept() takes one).
    let mut idle = Vec::new();
    for _ in 0..1_000 {
        idle.push(std::net::TcpStream::connect(&a.listen).unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = a.open_files().saturating_sub(before);
    assert!(
        held <= 300,
        "federationd holds {held} connections for clients that never completed a handshake"
    );
    // A configured peer still gets through (retrying, as its dialer does, while the flood's
    // handshakes run out).
    let (cert, key) = pki.issue("c");
    let mut served = false;
    for _ in 0..40 {
        if let Ok(t) = tap(pki.tls_from(&cert, &key), "c", "a", &a.listen).await
            && within(2, || async {
                t.count(|b| matches!(b, Body::Heartbeat(_))) > 0
            })
            .await
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        served,
        "c was locked out by connections that never handshake"
    );
    drop(idle);
}
