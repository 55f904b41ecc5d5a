//! A site joins and leaves a running federation without a restart of the sites already in it,
//! with real daemons and real mTLS: each site reads its config file again
//! (`config_reload_ms`), and its `peers` take effect at once.
//!
//! Sites: `a` and `b` are linked and export one service each. `c` dials `a`, which does not
//! list it yet: refused at the handshake. a's operator adds `c` to a's file: `c` links, gets
//! a's and (relayed by a) b's services, and b gets c's; the a–b link is not touched. A file
//! that does not load, or that changes the site's name, changes nothing; a field that needs a
//! restart is named. Then `c` is removed from the file: its session ends, its handshakes are
//! refused again, and what only it carried is withdrawn at a and at b.

#![allow(clippy::unwrap_used)]

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_joins_and_leaves_a_running_federation_without_a_restart() {
    let dir = test_dir();
    let root = dir.path();
    let pki = Pki::new(&root.join("pki"));
    let reload = "config_reload_ms = 200\n";
    let spec_a = SiteSpec::new("a").top(reload).accept("b");
    let a = Site::start(&pki, root, &spec_a, None);
    let b = Site::start(&pki, root, &SiteSpec::new("b").dial("a", &a.listen), None);
    a.export("ledger", &[]).await;
    b.export("payment", &[]).await;
    eventually(20, "a holds b's payment", || async {
        a.entries().await.contains(&"shop/payment@b".to_string())
    })
    .await;
    let pid = a.pid();
    let sessions_with_b = a.peers().await["b"].counters.as_ref().unwrap().sessions;

    // c is not (yet) one of a's peers: a refuses its handshake, and c gets nothing.
    let c = Site::start(&pki, root, &SiteSpec::new("c").dial("a", &a.listen), None);
    c.export("reviews", &[]).await;
    eventually(10, "a refuses c at the handshake", || async {
        a.log()
            .contains("spiffe://multimesh.test/site/c/federation is not a configured peer")
    })
    .await;
    assert!(c.entries().await.iter().all(|e| e.ends_with("@c")));

    // a's operator adds c to a's file: c joins while a runs.
    let with_c = spec_a.clone().accept("c");
    with_c.write(&pki, root, None);
    eventually(
        20,
        "c holds a's ledger and b's payment, relayed by a",
        || async {
            let e = c.entries().await;
            e.contains(&"shop/ledger@a".to_string()) && e.contains(&"shop/payment@b".to_string())
        },
    )
    .await;
    eventually(20, "b holds c's reviews, relayed by a", || async {
        b.entries().await.contains(&"shop/reviews@c".to_string())
    })
    .await;
    assert_eq!(a.pid(), pid, "a was not restarted");
    assert_eq!(
        a.peers().await["b"].counters.as_ref().unwrap().sessions,
        sessions_with_b,
        "the a-b link was not touched"
    );
    assert!(a.log().contains("peers changed: taken without a restart"));
    let config = a.status().await.config.unwrap();
    assert_eq!(
        (config.peers_added, config.error.as_str()),
        (vec!["c".to_string()], "")
    );
    assert!(
        config.restart_fields.is_empty(),
        "{:?}",
        config.restart_fields
    );

    // A file that does not load changes nothing, and says why, naming the field.
    let cfg_path = root.join("a/federationd.toml");
    let good = std::fs::read_to_string(&cfg_path).unwrap();
    let bad = good.replace("site = \"c\"", "site = \"a\"");
    assert_ne!(bad, good);
    std::fs::write(&cfg_path, &bad).unwrap();
    eventually(10, "a refuses a file listing itself as a peer", || async {
        a.status()
            .await
            .config
            .unwrap()
            .error
            .contains("peers[1].site")
    })
    .await;
    // Changing the site's name is refused whole, even with valid peers.
    std::fs::write(&cfg_path, good.replace("site = \"a\"\n", "site = \"z\"\n")).unwrap();
    eventually(10, "a refuses a new site name", || async {
        a.status()
            .await
            .config
            .unwrap()
            .error
            .starts_with("site changed")
    })
    .await;
    assert!(a.peers().await["c"].healthy, "c is still linked");
    // What an operator sees.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_federationctl"))
        .arg("--admin-socket")
        .arg(a.socket())
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("config file read again: peers added [c], removed [] since the start")
            && text.contains("REFUSED, nothing changed: site changed"),
        "{text}"
    );
    // Back to the good file with one more field: taken, the field named for the next start.
    let slower = good.replace("heartbeat_ms = 200", "heartbeat_ms = 250");
    assert_ne!(slower, good);
    std::fs::write(&cfg_path, slower).unwrap();
    eventually(
        10,
        "a names sync as taking effect at the next start",
        || async {
            let s = a.status().await.config.unwrap();
            s.error.is_empty() && s.restart_fields == ["sync"]
        },
    )
    .await;

    // c leaves: its session ends, it cannot link again, and what only it carried is withdrawn
    // at a and, through a, at b.
    spec_a.write(&pki, root, None);
    eventually(20, "c's reviews are withdrawn at a and at b", || async {
        let gone = |e: Vec<String>| !e.iter().any(|x| x.ends_with("@c"));
        gone(a.entries().await) && gone(b.entries().await)
    })
    .await;
    assert!(!a.peers().await.contains_key("c"));
    eventually(10, "c's link to a is down", || async {
        !c.peers().await["a"].healthy
    })
    .await;
    let refusals = |log: String| {
        log.matches("site/c/federation is not a configured peer")
            .count()
    };
    let before = refusals(a.log());
    eventually(10, "c's next handshake is refused again", || async {
        refusals(a.log()) > before
    })
    .await;
    assert!(b.entries().await.contains(&"shop/ledger@a".to_string()));
    assert_eq!(a.pid(), pid);
    let config = a.status().await.config.unwrap();
    assert!(
        config.peers_added.is_empty() && config.peers_removed.is_empty(),
        "{config:?}"
    );
}
