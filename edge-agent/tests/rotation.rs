//! Certificate rotation without a restart: a running edge agent's certificate files are
//! replaced, and new handshakes present the new certificate while calls keep flowing; a
//! replacement that peers would refuse (another site's certificate, an expired one, a key
//! that is not the certificate's) is refused and the previous certificate kept. Real agents,
//! real mTLS, real certificates.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use multimesh_core::identity::{self, Role, SiteId};
use multimesh_core::pki::Validity;
use multimesh_core::tls::client_config_alpn;
use support::*;

const PAY: &str = "payment.shop.svc.clusterset.local:8080";

/// The certificate (DER) that a new handshake with `site`'s ingress at `addr` is shown.
async fn presented(pki: &Pki, site: &str, addr: &str) -> Vec<u8> {
    let cfg = client_config_alpn(
        &pki.edge_tls("probe"),
        SiteId::new(TD, site, Role::Edge).unwrap(),
        vec![b"h2".to_vec()],
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("edge.multimesh.invalid").unwrap();
    let s = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// When the certificate (DER) stops being valid, in Unix seconds.
fn not_after_of(der: &[u8]) -> f64 {
    let cert = rustls::pki_types::CertificateDer::from(der.to_vec());
    identity::validity(&cert).unwrap().1.unix_timestamp() as f64
}

fn not_after(path: &Path) -> f64 {
    not_after_of(&der_of(path))
}

fn der_of(path: &Path) -> Vec<u8> {
    identity::read_certs(path).unwrap()[0].to_vec()
}

async fn pay(egress: std::net::SocketAddr) -> u16 {
    get(
        &client_h1(),
        &format!("http://{egress}/pay"),
        &[("host", PAY)],
    )
    .await
    .map_or(0, |(s, _, _)| s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_presented_without_a_restart_and_a_bad_one_is_refused() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let backend = http_backend("a").await;
    Agent::write_routes(
        root,
        "a",
        "services:\n- {name: payment, namespace: shop, ports: [{port: 8080}], destinations: [{site: a}]}\n",
    );
    let a = Agent::start(
        &pki,
        root,
        "a",
        &agent_toml(&format!(
            "ingress = \"127.0.0.1:0\"\ncertificate_reload_ms = 100\n{}",
            local("payment", 8080, backend.addr)
        )),
    );
    let ai = a.ingress();
    Agent::write_routes(
        root,
        "b",
        &format!(
            "services:\n- {{name: payment, namespace: shop, ports: [{{port: 8080}}], destinations: [{{site: a, addresses: ['{ai}']}}]}}\n"
        ),
    );
    let b = Agent::start(
        &pki,
        root,
        "b",
        &agent_toml("egress_http = \"127.0.0.1:0\""),
    );
    let (cert, _) = pki.paths("a", Role::Edge);
    let first = der_of(&cert);
    assert_eq!(presented(&pki, "a", &ai).await, first);
    const EXPIRY: &str = "multimesh_edge_certificate_expiration_timestamp_seconds";
    assert_eq!(a.metric(EXPIRY, &["site=\"a\""]).await, not_after(&cert));
    assert_eq!(pay(b.egress()).await, 200, "{}", a.log());

    // Renewed in place (certificate, then key, as `federationctl certs issue` writes them).
    // (Valid for 12 hours: the first ends with the test CA, in a day.)
    let start = time::OffsetDateTime::now_utc() - time::Duration::minutes(5);
    pki.issue_with(
        "a",
        Role::Edge,
        Validity {
            not_before: start,
            not_after: start + time::Duration::hours(12),
        },
    );
    let renewed = der_of(&cert);
    assert_ne!(renewed, first);
    let rotated = within(10, || {
        let (pki, ai, renewed) = (&pki, ai.clone(), renewed.clone());
        async move { presented(pki, "a", &ai).await == renewed }
    })
    .await;
    assert!(
        rotated,
        "still presenting the old certificate:\n{}",
        a.log()
    );
    assert!(a.log().contains("certificate rotated"), "{}", a.log());
    // The expiry gauge follows: about 12 hours earlier than the first certificate's.
    let gauge = a.metric(EXPIRY, &[]).await;
    assert_eq!(gauge, not_after(&cert));
    assert!(gauge < not_after_of(&first) - 40_000.0, "{gauge}");
    // The running agent kept serving: a call through b's egress (b's link may be new or old).
    assert_eq!(pay(b.egress()).await, 200, "{}", a.log());

    // Replacements a peer would refuse are refused; the renewed certificate stays.
    let now = time::OffsetDateTime::now_utc();
    let (other_cert, other_key) = pki.issue_with("c", Role::Edge, Validity::days(1));
    let (_, key) = pki.paths("a", Role::Edge);
    let install = |c: &Path, k: &Path| {
        std::fs::copy(c, &cert).unwrap();
        std::fs::copy(k, &key).unwrap();
    };
    // Another site's certificate and key.
    install(&other_cert, &other_key);
    // An expired certificate of this site.
    let expired = root.join("expired");
    std::fs::create_dir_all(&expired).unwrap();
    let id = SiteId::new(TD, "a", Role::Edge).unwrap();
    let (ec, ek) = multimesh_core::pki::issue_to(
        &expired,
        &pki.ca,
        &id,
        Validity {
            not_before: now - time::Duration::days(3),
            not_after: now - time::Duration::days(1),
        },
    )
    .unwrap();
    let refusals = |log: &str| log.matches("were refused").count();
    eventually(10, "the other site's certificate refused", || async {
        refusals(&a.log()) >= 1
    })
    .await;
    install(&ec, &ek);
    eventually(10, "the expired certificate refused", || async {
        refusals(&a.log()) >= 2
    })
    .await;
    // This site's valid certificate with another key.
    let fresh = root.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let (vc, _) = multimesh_core::pki::issue_to(&fresh, &pki.ca, &id, Validity::days(1)).unwrap();
    install(&vc, &other_key);
    eventually(10, "the mismatched key refused", || async {
        refusals(&a.log()) >= 3
    })
    .await;
    let log = a.log();
    assert!(log.contains("/site/c/edge"), "{log}");
    assert!(log.contains("expired") || log.contains("Expired"), "{log}");
    assert!(log.contains("does not match"), "{log}");
    assert_eq!(presented(&pki, "a", &ai).await, renewed, "{log}");
    assert_eq!(a.metric(EXPIRY, &[]).await, not_after_of(&renewed));
    assert_eq!(pay(b.egress()).await, 200);
}
