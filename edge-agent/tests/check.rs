//! `edge-agent check`: the agent's edge certificate checked as its peers will check it, then
//! the running agent's readiness on its admin listener. Real agents on loopback, real
//! certificates.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::*;

/// Runs `edge-agent check --json` on `config`; returns (exit code, the report).
fn check(config: &Path, args: &[&str]) -> (i32, Value) {
    check_report(
        Command::new(env!("CARGO_BIN_EXE_edge-agent"))
            .args(["check", "--json", "--config"])
            .arg(config)
            .args(args),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_a_ready_agent_and_fails_one_not_ready_or_not_running() {
    let tmp = test_dir();
    let root = tmp.path();
    let pki = Pki::new(&root.join("pki"));

    // Ready: its routes come from a file.
    Agent::write_routes(root, "a", "services: []\n");
    let mut a = Agent::start(
        &pki,
        root,
        "a",
        &agent_toml("egress_http = \"127.0.0.1:0\""),
    );
    let config = a.dir.join("edge.toml");
    let (code, v) = check(&config, &["--warn-days", "0"]);
    assert_eq!(code, 0, "{v:#}");
    for f in v["checks"].as_array().unwrap() {
        assert_eq!(f["outcome"], "pass", "{v:#}");
    }
    let (_, detail) = check_finding(&v, "site certificate");
    assert!(detail.contains("/site/a/edge"), "{detail}");
    assert!(check_finding(&v, "agent").1.contains("ready"), "{v:#}");
    // The test CA lives a day: within the default 30 days, a warning, not a failure.
    let (code, v) = check(&config, &[]);
    assert_eq!(code, 0);
    assert_eq!(check_finding(&v, "federation CA").0, "warn");
    assert_eq!(v["warnings"], 2, "{v:#}");

    // Not ready: its routes come from a federationd that does not answer.
    let b = Agent::start(
        &pki,
        root,
        "b",
        "egress_http = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[routes]\nfederation = \"127.0.0.1:1\"\n",
    );
    let (code, v) = check(&b.dir.join("edge.toml"), &["--warn-days", "0"]);
    assert_eq!(code, 1, "{v:#}");
    let (outcome, detail) = check_finding(&v, "agent");
    assert_eq!(outcome, "fail");
    assert!(
        detail.contains("503") && detail.contains("no route table yet"),
        "{detail}"
    );
    assert_eq!(v["failed"], 1);

    // Not running: said, not a crash.
    a.kill();
    let (code, v) = check(&config, &["--warn-days", "0"]);
    assert_eq!(code, 1);
    let (outcome, detail) = check_finding(&v, "agent");
    assert_eq!(outcome, "fail");
    assert!(detail.contains("is the agent running?"), "{detail}");

    // The site's federation certificate given to its edge agent: refused, the ID named.
    let (fc, fk) = pki.ensure("a", multimesh_core::identity::Role::Federation);
    let wrong = root.join("wrong.toml");
    std::fs::write(
        &wrong,
        format!(
            "site = \"a\"\ntrust_domain = \"{TD}\"\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[routes]\nfile = \"none.yaml\"\n",
            pki.dir.join("ca.pem").display(),
            fc.display(),
            fk.display()
        ),
    )
    .unwrap();
    let (code, v) = check(&wrong, &["--offline"]);
    assert_eq!(code, 1, "{v:#}");
    let (outcome, detail) = check_finding(&v, "site certificate");
    assert_eq!(outcome, "fail");
    assert!(detail.contains("/site/a/federation"), "{detail}");
    assert!(
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["check"] != "agent"),
        "--offline asks no agent: {v:#}"
    );
}
