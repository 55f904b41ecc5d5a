//! federationd's certificate rotation, with real daemons and real mTLS: a site's certificate is
//! renewed before it ends, and what the site exported keeps reaching every site, including one
//! that joins through a relay after the previous certificate has ended.
//!
//! Sites: `a` exports; `b` peers with `a` and relays to `c`; `c` joins `b` only after a's first
//! certificate has ended. A record reaches `c` with the seal its origin made, checked against
//! that seal's certificate at the time `c` receives it: a seal of a's first certificate is
//! refused then. So the new certificate must not only be presented, it must seal a's records
//! again, with new stamps (peers keep what they hold at the same stamp).

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use multimesh_core::identity::Role;
use multimesh_core::pki::Validity;
use support::*;

/// How long a's first certificate lives.
const SHORT: Duration = Duration::from_secs(12);

/// The version of `name`@`origin` as `site` holds it.
async fn version_at(site: &Site, origin: &str, name: &str) -> Option<u64> {
    let r = federation::admin::catalog_all(&mut site.admin().await)
        .await
        .unwrap();
    r.origins
        .iter()
        .flat_map(|o| o.entries.iter())
        .filter_map(|e| e.service.as_ref())
        .find(|s| s.origin == origin && s.name == name)
        .map(|s| s.version)
}

/// Issues a's federation certificate for [`SHORT`] from now; when it ends.
fn short_certificate(pki: &Pki) -> Instant {
    let now = time::OffsetDateTime::now_utc();
    pki.issue_with(
        "a",
        Role::Federation,
        Validity {
            not_before: now - time::Duration::minutes(5),
            not_after: now + SHORT,
        },
    );
    Instant::now() + SHORT
}

/// Waits until a's first certificate has ended, then starts `c` dialing `b`, and returns it
/// once it has `b`'s snapshot.
async fn join_c_after(ends: Instant, pki: &Pki, root: &std::path::Path, b: &Site) -> Site {
    let left = ends.saturating_duration_since(Instant::now()) + Duration::from_secs(2);
    tokio::time::sleep(left).await;
    let c = Site::start(pki, root, &SiteSpec::new("c").dial("b", &b.listen), None);
    eventually(20, "c links to b", || async {
        c.peers().await.get("b").is_some_and(|p| p.healthy)
    })
    .await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_renewed_while_running_reseals_the_records_and_a_late_joiner_gets_them() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let ends = short_certificate(&pki);
    let reload = "certificate_reload_ms = 200\n";
    let a = Site::start(
        &pki,
        root,
        &SiteSpec::new("a").top(reload).accept("b"),
        None,
    );
    let b = Site::start(
        &pki,
        root,
        &SiteSpec::new("b").dial("a", &a.listen).accept("c"),
        None,
    );
    let first = a.export("ledger", &[]).await;
    eventually(20, "b holds a's ledger", || async {
        version_at(&b, "a", "ledger").await == Some(first)
    })
    .await;

    // Renewed in place, as `federationctl certs issue` does (a new key too).
    pki.issue("a");
    eventually(10, "b holds a's ledger at a newer stamp", || async {
        version_at(&b, "a", "ledger").await > Some(first)
    })
    .await;
    let log = a.log();
    assert!(
        log.contains("certificate rotated") && log.contains("records sealed by the rotated"),
        "{log}"
    );

    // Another site's certificate written into a's files is refused; a keeps sealing with the
    // renewed one.
    let (other_cert, other_key) = pki.issue("x");
    let (cert, key) = pki.paths("a", Role::Federation);
    let renewed = (std::fs::read(&cert).unwrap(), std::fs::read(&key).unwrap());
    std::fs::copy(&other_cert, &cert).unwrap();
    std::fs::copy(&other_key, &key).unwrap();
    eventually(10, "a refuses another site's certificate", || async {
        a.log().contains("were refused")
    })
    .await;
    std::fs::write(&cert, &renewed.0).unwrap();
    std::fs::write(&key, &renewed.1).unwrap();

    let c = join_c_after(ends, &pki, root, &b).await;
    eventually(20, "c holds a's ledger, relayed by b", || async {
        version_at(&c, "a", "ledger").await.is_some()
    })
    .await;
    // And what a exports now reaches c too (the link a–b survived the first certificate).
    a.export("payment", &[]).await;
    eventually(20, "c holds a's payment", || async {
        version_at(&c, "a", "payment").await.is_some()
    })
    .await;
    assert!(!c.log().contains("expired"), "{}", c.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_restarted_with_a_new_certificate_reseals_what_its_state_holds() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let ends = short_certificate(&pki);
    let never = "certificate_reload_ms = 0\n";
    let spec_a = SiteSpec::new("a").top(never).accept("b");
    let mut a = Site::start(&pki, root, &spec_a, None);
    let listen = a.listen.clone();
    let b = Site::start(
        &pki,
        root,
        &SiteSpec::new("b").dial("a", &a.listen).accept("c"),
        None,
    );
    let first = a.export("ledger", &[]).await;
    eventually(20, "b holds a's ledger", || async {
        version_at(&b, "a", "ledger").await == Some(first)
    })
    .await;

    // Renewed, then a restarts on the same address with the same state file.
    pki.issue("a");
    a.stop();
    let a = Site::start(&pki, root, &spec_a, Some(&listen));
    eventually(20, "b holds a's ledger at a newer stamp", || async {
        version_at(&b, "a", "ledger").await > Some(first)
    })
    .await;
    assert!(a.log().contains("records get new stamps"), "{}", a.log());

    let c = join_c_after(ends, &pki, root, &b).await;
    eventually(20, "c holds a's ledger, relayed by b", || async {
        version_at(&c, "a", "ledger").await.is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_whose_certificate_ended_does_not_block_what_a_relay_sends() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let ends = short_certificate(&pki);
    // a never renews its certificate and goes away; b still holds what a exported.
    let mut a = Site::start(&pki, root, &SiteSpec::new("a").accept("b"), None);
    let b = Site::start(
        &pki,
        root,
        &SiteSpec::new("b").dial("a", &a.listen).accept("c"),
        None,
    );
    a.export("ledger", &[]).await;
    b.export("bookings", &[]).await;
    eventually(20, "b holds a's ledger", || async {
        version_at(&b, "a", "ledger").await.is_some()
    })
    .await;
    a.kill();

    // c joins after a's certificate has ended: b's own export reaches it. a's ledger does
    // not: its seal can no longer be checked, so b leaves it out instead of sending a
    // message c would refuse whole.
    let c = join_c_after(ends, &pki, root, &b).await;
    eventually(20, "c holds b's bookings", || async {
        version_at(&c, "b", "bookings").await.is_some()
    })
    .await;
    assert_eq!(version_at(&c, "a", "ledger").await, None);
    assert!(version_at(&b, "a", "ledger").await.is_some());
    assert!(!c.log().contains("refused a message"), "{}", c.log());
}

/// Writes the federation CA bundle every site of the test reads.
fn write_bundle(pki: &Pki, cas: &[&multimesh_core::pki::Pair]) {
    let pem: String = cas.iter().map(|c| c.cert_pem.as_str()).collect();
    multimesh_core::identity::write_file(&pki.dir.join("ca.pem"), &pem, false).unwrap();
}

/// How many times `site` has taken rotated files.
fn rotations(site: &Site) -> usize {
    site.log().matches("certificate rotated").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_federation_ca_is_rotated_in_three_steps_while_every_site_runs() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let reload = "certificate_reload_ms = 200\n";
    let a = Site::start(
        &pki,
        root,
        &SiteSpec::new("a").top(reload).accept("b"),
        None,
    );
    let b = Site::start(
        &pki,
        root,
        &SiteSpec::new("b")
            .top(reload)
            .dial("a", &a.listen)
            .accept("c"),
        None,
    );
    a.export("ledger", &[]).await;
    eventually(20, "b holds a's ledger", || async {
        version_at(&b, "a", "ledger").await.is_some()
    })
    .await;
    let old = &pki.ca;
    let new = multimesh_core::pki::init_ca(TD, 1).unwrap();

    // Too early: a bundle of the new CA alone does not hold the CA of the sites' own
    // certificates. Both refuse it and keep the bundle they have.
    write_bundle(&pki, &[&new]);
    eventually(
        10,
        "a and b refuse a bundle without their own CA",
        || async { a.log().contains("were refused") && b.log().contains("were refused") },
    )
    .await;
    assert!(
        a.log()
            .contains("is not a valid certificate of the federation CA bundle"),
        "{}",
        a.log()
    );

    // 1. Both CAs.
    write_bundle(&pki, &[old, &new]);
    eventually(10, "a and b take the bundle of both CAs", || async {
        rotations(&a) == 1 && rotations(&b) == 1
    })
    .await;
    // 2. Certificates of the new CA, one site after the other; each is checked by the other
    //    (handshakes and seals) against the bundle of both.
    for (s, site) in [(&a, "a"), (&b, "b")] {
        let id = multimesh_core::identity::SiteId::new(TD, site, Role::Federation).unwrap();
        multimesh_core::pki::issue_to(&pki.dir, &new, &id, Validity::days(1)).unwrap();
        eventually(
            10,
            &format!("{site} takes its certificate of the new CA"),
            || async { rotations(s) == 2 },
        )
        .await;
    }
    let renewed = version_at(&a, "a", "ledger").await;
    eventually(
        10,
        "b holds a's ledger sealed by the new certificate",
        || async { version_at(&b, "a", "ledger").await == renewed },
    )
    .await;
    // 3. The new CA alone.
    write_bundle(&pki, &[&new]);
    eventually(10, "a and b take the bundle of the new CA", || async {
        rotations(&a) == 3 && rotations(&b) == 3
    })
    .await;

    // The link a–b carries on, and a site that only knows the new CA links to b and gets a's
    // records through it.
    a.export("payment", &[]).await;
    eventually(20, "b holds a's payment", || async {
        version_at(&b, "a", "payment").await.is_some()
    })
    .await;
    // A certificate of the old CA is refused from now on: c tries with one first.
    let c_id = multimesh_core::identity::SiteId::new(TD, "c", Role::Federation).unwrap();
    multimesh_core::pki::issue_to(&pki.dir, old, &c_id, Validity::days(1)).unwrap();
    let spec_c = SiteSpec::new("c").dial("b", &b.listen);
    let mut c = Site::start(&pki, root, &spec_c, None);
    eventually(10, "b refuses c's certificate of the old CA", || async {
        // Both CAs carry the trust domain's name: the signature is what fails.
        b.log()
            .contains("does not verify against the federation CA")
    })
    .await;
    assert!(version_at(&c, "a", "ledger").await.is_none());
    c.stop();
    multimesh_core::pki::issue_to(&pki.dir, &new, &c_id, Validity::days(1)).unwrap();
    let c = Site::start(&pki, root, &spec_c, None);
    eventually(
        20,
        "c holds a's ledger and payment, relayed by b",
        || async {
            version_at(&c, "a", "ledger").await.is_some()
                && version_at(&c, "a", "payment").await.is_some()
        },
    )
    .await;
}
