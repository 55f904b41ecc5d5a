//! `federationctl check`: a site's config and certificates are checked the way its peers will
//! check them (chain to the federation CA, the key, the time left), and its running daemon's
//! peers and backend through the admin socket. Real daemons on loopback, real certificates.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use federation::identity::{Role, Validity};
use serde_json::Value;
use support::*;

/// Runs `federationctl check` with `args`; returns (exit code, the JSON it printed).
fn check(config: &Path, args: &[&str]) -> (i32, Value) {
    check_report(
        Command::new(env!("CARGO_BIN_EXE_federationctl"))
            .args(["check", "-o", "json", "--config"])
            .arg(config)
            .args(args),
    )
}

fn outcomes(v: &Value) -> Vec<(String, String)> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["check"].as_str().unwrap().to_string(),
                f["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_a_healthy_site_and_names_a_peer_that_is_down() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let a = Site::start(&pki, tmp.path(), &SiteSpec::new("a").accept("b"), None);
    let mut b = Site::start(
        &pki,
        tmp.path(),
        &SiteSpec::new("b").dial("a", &a.listen),
        None,
    );
    eventually(10, "a and b linked", || async {
        a.peers().await.get("b").is_some_and(|p| p.healthy)
    })
    .await;
    let config = a.dir.join("federationd.toml");

    // The test CA lives one day: every certificate is within 30 days of its end, a warning.
    let (code, v) = check(&config, &[]);
    assert_eq!(code, 0, "warnings alone do not fail: {v:#}");
    let (outcome, detail) = check_finding(&v, "federation CA");
    assert_eq!(outcome, "warn", "{detail}");
    assert!(detail.contains("expires in"), "{detail}");
    assert_eq!(check_finding(&v, "site certificate").0, "warn");
    assert_eq!(check_finding(&v, "site key").0, "pass");
    let (outcome, detail) = check_finding(&v, "daemon");
    assert_eq!(outcome, "pass", "{detail}");
    assert!(detail.contains("site a"), "{detail}");
    assert_eq!(check_finding(&v, "peer b").0, "pass");
    assert_eq!(check_finding(&v, "backend").0, "pass");

    // With no warning period, everything passes.
    let (code, v) = check(&config, &["--warn-days", "0"]);
    assert_eq!(code, 0);
    for (name, outcome) in outcomes(&v) {
        assert_eq!(outcome, "pass", "{name}: {v:#}");
    }

    // b goes down: a's check fails, naming the peer and what a knows of it.
    b.kill();
    let mut last = Value::Null;
    let failed = within(10, || {
        let (code, v) = check(&config, &["--warn-days", "0"]);
        let down = code == 1 && check_finding(&v, "peer b").0 == "fail";
        last = v;
        async move { down }
    })
    .await;
    assert!(failed, "peer b never failed the check: {last:#}");
    let (_, detail) = check_finding(&last, "peer b");
    assert!(detail.contains("not healthy"), "{detail}");
    assert_eq!(last["failed"], 1, "{last:#}");
    // The table names it too, for a person.
    let out = Command::new(env!("CARGO_BIN_EXE_federationctl"))
        .args(["check", "--warn-days", "0", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("peer b") && l.contains("FAIL")),
        "{table}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1 of 7 checks failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A daemon that is not running is a failed check, not a crash.
    drop(a);
    let (code, v) = check(&config, &["--warn-days", "0"]);
    assert_eq!(code, 1);
    let (outcome, detail) = check_finding(&v, "daemon");
    assert_eq!(outcome, "fail");
    assert!(detail.contains("admin socket"), "{detail}");
}

/// A config for site `a` with these certificate files; no daemon runs.
fn offline_config(dir: &Path, pki: &Pki, cert: &Path, key: &Path) -> PathBuf {
    let path = dir.join(format!(
        "{}.toml",
        cert.file_stem().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &path,
        format!(
            "site = \"a\"\ntrust_domain = \"{TD}\"\nlisten = \"127.0.0.1:0\"\nadmin_socket = \"none.sock\"\nstate_file = \"state.json\"\n\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.dir.join("ca.pem").display(),
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn check_fails_certificates_that_peers_would_refuse_naming_the_file() {
    let tmp = test_dir();
    let pki = Pki::new(&tmp.path().join("pki"));
    let dir = tmp.path().join("configs");
    std::fs::create_dir_all(&dir).unwrap();
    let copy = |from: &Path, name: &str| {
        let to = dir.join(name);
        std::fs::copy(from, &to).unwrap();
        to
    };

    // The good certificate passes offline (no daemon is asked).
    let (cert, key) = pki.issue("a");
    let (good_cert, good_key) = (copy(&cert, "good.pem"), copy(&key, "good-key.pem"));
    let (code, v) = check(
        &offline_config(&dir, &pki, &good_cert, &good_key),
        &["--offline", "--warn-days", "0"],
    );
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(
        outcomes(&v),
        [
            ("config".to_string(), "pass".to_string()),
            ("federation CA".into(), "pass".into()),
            ("site certificate".into(), "pass".into()),
            ("site key".into(), "pass".into()),
        ]
    );

    // Signed by another CA: peers refuse it at the handshake and refuse its records.
    let foreign = Pki::new(&tmp.path().join("foreign"));
    let (fc, fk) = foreign.issue("a");
    let (fc, fk) = (copy(&fc, "foreign.pem"), copy(&fk, "foreign-key.pem"));
    let (code, v) = check(&offline_config(&dir, &pki, &fc, &fk), &["--offline"]);
    assert_eq!(code, 1);
    let (outcome, detail) = check_finding(&v, "site certificate");
    assert_eq!(outcome, "fail");
    assert!(
        detail.contains("foreign.pem") && detail.contains("does not chain to the federation CA"),
        "{detail}"
    );

    // A key that is not the certificate's (another site's key from the same CA).
    let (_, other_key) = pki.issue("c");
    let (code, v) = check(
        &offline_config(&dir, &pki, &good_cert, &copy(&other_key, "mixed-key.pem")),
        &["--offline"],
    );
    assert_eq!(code, 1);
    let (outcome, detail) = check_finding(&v, "site key");
    assert_eq!(outcome, "fail", "{v:#}");
    assert!(
        detail.contains("mixed-key.pem") && detail.contains("does not match"),
        "{detail}"
    );

    // Expired a day ago: failed, with the date; its chain is still checked (and passes).
    let now = time::OffsetDateTime::now_utc();
    let (ec, ek) = pki.issue_with(
        "a",
        Role::Federation,
        Validity {
            not_before: now - time::Duration::days(3),
            not_after: now - time::Duration::days(1),
        },
    );
    let (ec, ek) = (copy(&ec, "expired.pem"), copy(&ek, "expired-key.pem"));
    let (code, v) = check(&offline_config(&dir, &pki, &ec, &ek), &["--offline"]);
    assert_eq!(code, 1);
    let (outcome, detail) = check_finding(&v, "site certificate");
    assert_eq!(outcome, "fail");
    assert!(
        detail.contains("expired.pem") && detail.contains("expired on"),
        "{detail}"
    );
    assert_eq!(check_finding(&v, "site key").0, "pass");

    // Another site's certificate: the SPIFFE ID is named.
    let (bc, bk) = pki.issue("b");
    let (code, v) = check(&offline_config(&dir, &pki, &bc, &bk), &["--offline"]);
    assert_eq!(code, 1);
    let (outcome, detail) = check_finding(&v, "site certificate");
    assert_eq!(outcome, "fail");
    assert!(detail.contains("/site/b/"), "{detail}");

    // A config that does not parse fails the first check and names the field.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "site = \"A_B\"\n").unwrap();
    let (code, v) = check(&bad, &["--offline"]);
    assert_eq!(code, 1);
    let (outcome, detail) = check_finding(&v, "config");
    assert_eq!(outcome, "fail");
    assert!(detail.contains("bad.toml"), "{detail}");
}
