//! The local demo's walkthrough, run headless as real processes on loopback (federationd,
//! edge-agent and the app's services for three sites and an edge node), with every step's
//! measurements checked here from its JSON report.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn step<'r>(report: &'r Value, name_part: &str) -> &'r Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"].as_str().unwrap().contains(name_part))
        .unwrap_or_else(|| panic!("no step {name_part:?} in {report:#}"))
}

#[test]
fn the_walkthrough_books_across_sites_shifts_the_split_and_fails_over() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_multimesh-demo"));
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("report.json");
    // Ports below the ephemeral range (32768+), away from the other fixed bases the suite uses
    // (kube test servers 26400, demo check 27100, browser tests 29100); another base is tried
    // when one is taken.
    let mut out = None;
    for attempt in 0..5u32 {
        let slot = (std::process::id() + attempt * 7) % 40;
        let base = 20_000 + slot as u16 * 100;
        let o = Command::new(&exe)
            .args([
                "--walkthrough",
                "--port-base",
                &base.to_string(),
                "--calls-per-phase",
                "4000",
            ])
            .arg("--dir")
            .arg(dir.path().join(format!("demo-{attempt}")))
            .arg("--report")
            .arg(&report_path)
            .output()
            .unwrap();
        let taken = String::from_utf8_lossy(&o.stderr).contains("is taken");
        out = Some((o, base));
        if !taken {
            break;
        }
    }
    let (out, base) = out.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "walkthrough failed:\n{log}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();

    // Every site checked itself first: both daemons of each of the four sites, all passed.
    let c = step(&report, "pass their checks");
    assert_eq!(c["ok"], true, "{c:#}");
    let runs = c["detail"]["checks"].as_array().unwrap();
    assert_eq!(runs.len(), 8, "{c:#}");
    for r in runs {
        assert_eq!(r["report"]["failed"], 0, "{r:#}");
        assert!(
            r["report"]["checks"].as_array().unwrap().len() >= 5,
            "{r:#}"
        );
    }

    // A booking crosses sites: booking at a, the other steps at the sites that run them.
    let b = step(&report, "crosses sites");
    for booking in b["detail"]["bookings"].as_array().unwrap() {
        let sites = &booking["sites"];
        assert_eq!(sites["booking"], "a", "{booking}");
        assert!(
            ["b", "c"].contains(&sites["payment"].as_str().unwrap()),
            "{booking}"
        );
        assert!(
            ["b", "c"].contains(&sites["tour-catalog"].as_str().unwrap()),
            "{booking}"
        );
        assert!(
            ["b", "node"].contains(&sites["notification"].as_str().unwrap()),
            "{booking}"
        );
    }

    // Each split phase lands within 3 points, with no failed call.
    for (v1, v2) in [(90.0, 10.0), (50.0, 50.0), (0.0, 100.0)] {
        let s = step(&report, &format!("v1 {v1} / v2 {v2}"));
        let d = &s["detail"];
        assert_eq!(d["failed"], 0, "{s}");
        assert_eq!(d["calls"], 4000, "{s}");
        let o1 = d["observed_percent"]["v1"].as_f64().unwrap();
        let o2 = d["observed_percent"]["v2"].as_f64().unwrap();
        assert!((o1 - v1).abs() <= 3.0 && (o2 - v2).abs() <= 3.0, "{s}");
    }

    // Bad input is refused by name and changes nothing.
    let bad = step(&report, "malformed TrafficSplit");
    assert!(
        bad["detail"]["error"]
            .as_str()
            .unwrap()
            .contains("spec.backends[0].weight"),
        "{bad}"
    );
    assert_eq!(bad["detail"]["splits_unchanged"], true);

    // Failover: b served payment before; after the switch only c does, notification at the
    // edge node; failures during the switch are bounded.
    let f = step(&report, "payment fails over");
    let d = &f["detail"];
    assert!(d["payment_before"]["b"].as_u64().unwrap() > 0, "{f}");
    let after: Vec<&String> = d["payment_after"].as_object().unwrap().keys().collect();
    assert_eq!(after, vec!["c"], "{f}");
    let notified: Vec<&String> = d["notification_after"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(notified, vec!["node"], "{f}");
    assert!(
        d["failed"].as_u64().unwrap() <= d["failure_bound"].as_u64().unwrap(),
        "{f}"
    );
    assert!(d["after"].as_u64().unwrap() > 10, "{f}");

    // Restored: b serves payment again.
    let r = step(&report, "restarted");
    assert!(r["detail"]["seconds_to_recover"].as_f64().is_some(), "{r}");
    assert!(
        report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["ok"] == true),
        "{report:#}"
    );

    // Nothing is left running: every port of the demo is free again.
    for off in [1u16, 11, 21, 31, 40, 99] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", base + off)).is_ok(),
            "port {} still taken after the demo stopped",
            base + off
        );
    }
}
