//! `federationctl check`: what is wrong with a site, found before its peers find it.
//!
//! The certificate checks ([`multimesh_core::check`]) are those a peer applies, run against the
//! site's own files: the federation certificate names this site, chains to the federation CA
//! and was issued for the site's key; and the time left on it and on the CA, which no
//! handshake reports until it is too late. The daemon checks read its answers: it is the site
//! of this config, each configured peer is healthy, and its backend applied every object.
//!
//! Pure but for reading the files the config names; the clock and the daemon's answers are
//! passed in.

use std::collections::BTreeSet;

use time::OffsetDateTime;

use crate::config::Config;
use crate::identity::Role;
pub use multimesh_core::check::{Finding, Outcome, Report, finding, render};
use multimesh_proto::admin::v1 as api;

/// The checks of the site's federation certificate files (no daemon needed).
pub fn certificates(cfg: &Config, now: OffsetDateTime, warn: time::Duration) -> Vec<Finding> {
    multimesh_core::check::certificates(
        &cfg.tls,
        &cfg.trust_domain,
        &cfg.site,
        Role::Federation,
        now,
        warn,
    )
}

/// The checks of a running daemon, from its answers: it is the site of this config, each
/// configured peer is healthy (a peer it has that the config lacks is a warning: the daemon
/// runs another config), and its backend applied every object.
pub fn daemon(cfg: &Config, status: &api::StatusResponse, peers: &[api::PeerView]) -> Vec<Finding> {
    let mut out = Vec::new();
    if status.site != cfg.site || status.trust_domain != cfg.trust_domain {
        out.push(finding(
            "daemon",
            Outcome::Fail,
            format!(
                "the daemon at {} is site {} of {}, but this config is site {} of {}",
                cfg.admin_socket.display(),
                status.site,
                status.trust_domain,
                cfg.site,
                cfg.trust_domain
            ),
        ));
        return out;
    }
    out.push(finding(
        "daemon",
        Outcome::Pass,
        format!(
            "site {} listening on {}, up {} s, version {} (epoch {}), {} export(s), {} visible \
             entries",
            status.site,
            status.listen,
            status.uptime_s,
            status.version,
            status.epoch,
            status.exports,
            status.entries_visible
        ),
    ));
    let configured = cfg.peer_names();
    for name in &configured {
        let check = format!("peer {name}");
        out.push(match peers.iter().find(|p| &p.site == name) {
            None => finding(
                &check,
                Outcome::Fail,
                "configured here, unknown to the daemon (it takes new peers when it reads its \
                 config file again, every config_reload_ms; with 0, restart it)",
            ),
            Some(p) if p.healthy => finding(
                &check,
                Outcome::Pass,
                format!(
                    "{} {}, last heartbeat {}, {} version(s) behind",
                    p.state,
                    p.direction,
                    ago(p.last_heartbeat_ms),
                    p.lag_versions
                ),
            ),
            Some(p) => finding(
                &check,
                Outcome::Fail,
                format!(
                    "not healthy: {}{}, last heartbeat {}{}",
                    p.state,
                    if p.address.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", p.address)
                    },
                    ago(p.last_heartbeat_ms),
                    if p.last_error.is_empty() {
                        String::new()
                    } else {
                        format!("; last error: {}", p.last_error)
                    }
                ),
            ),
        });
    }
    let unknown: BTreeSet<&str> = peers
        .iter()
        .map(|p| p.site.as_str())
        .filter(|p| !configured.contains(*p))
        .collect();
    for name in unknown {
        out.push(finding(
            &format!("peer {name}"),
            Outcome::Warn,
            "linked by the daemon but not in this config: the daemon runs another config",
        ));
    }
    // Said only when the file changed under the running daemon in a way it did not take.
    let c = status.config.clone().unwrap_or_default();
    if !c.error.is_empty() {
        out.push(finding(
            "config",
            Outcome::Fail,
            format!(
                "the daemon refused its config file when it read it again, and runs the one \
                 before: {}",
                c.error
            ),
        ));
    } else if !c.restart_fields.is_empty() {
        out.push(finding(
            "config",
            Outcome::Warn,
            format!(
                "changed since the daemon started; takes effect at its next start: {}",
                c.restart_fields.join(", ")
            ),
        ));
    }
    let b = status.backend.clone().unwrap_or_default();
    out.push(if !b.error.is_empty() {
        finding(
            "backend",
            Outcome::Fail,
            format!("{}: the last pass failed: {}", b.kind, b.error),
        )
    } else if let Some(first) = b.problems.first() {
        finding(
            "backend",
            Outcome::Fail,
            format!(
                "{}: {} object(s) not applied; first {}: {}",
                b.kind,
                b.problems.len(),
                first.object,
                first.reason
            ),
        )
    } else {
        finding(
            "backend",
            Outcome::Pass,
            format!("{}: every object applied", b.kind),
        )
    });
    out
}

fn ago(ms: Option<u64>) -> String {
    ms.map_or_else(|| "never".into(), |m| format!("{m} ms ago"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Config {
        toml::from_str(
            "site = \"a\"\ntrust_domain = \"t.test\"\nlisten = \"127.0.0.1:0\"\nadmin_socket = \"a.sock\"\nstate_file = \"s.json\"\n[tls]\nca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a-key.pem\"\n[[peers]]\nsite = \"b\"\n[[peers]]\nsite = \"c\"\n",
        )
        .unwrap()
    }

    fn status() -> api::StatusResponse {
        api::StatusResponse {
            site: "a".into(),
            trust_domain: "t.test".into(),
            backend: Some(api::BackendStatus {
                kind: "static".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn peer(site: &str, healthy: bool) -> api::PeerView {
        api::PeerView {
            site: site.into(),
            state: if healthy { "connected" } else { "connecting" }.into(),
            healthy,
            last_error: if healthy { "" } else { "connection refused" }.into(),
            ..Default::default()
        }
    }

    fn outcomes(f: &[Finding]) -> Vec<(&str, Outcome)> {
        f.iter().map(|f| (f.check.as_str(), f.outcome)).collect()
    }

    #[test]
    fn each_configured_peer_is_a_check_and_unknown_peers_warn() {
        let f = daemon(
            &cfg(),
            &status(),
            &[peer("b", true), peer("c", false), peer("x", true)],
        );
        assert_eq!(
            outcomes(&f),
            [
                ("daemon", Outcome::Pass),
                ("peer b", Outcome::Pass),
                ("peer c", Outcome::Fail),
                ("peer x", Outcome::Warn),
                ("backend", Outcome::Pass),
            ]
        );
        assert!(
            f[2].detail.contains("connection refused"),
            "{}",
            f[2].detail
        );
        // A configured peer the daemon does not know: it runs another config.
        let f = daemon(&cfg(), &status(), &[peer("b", true)]);
        assert_eq!(f[2].outcome, Outcome::Fail);
        assert!(f[2].detail.contains("unknown to the daemon"));
    }

    #[test]
    fn another_site_behind_the_socket_fails_and_stops_there() {
        let mut s = status();
        s.site = "z".into();
        let f = daemon(&cfg(), &s, &[]);
        assert_eq!(outcomes(&f), [("daemon", Outcome::Fail)]);
        assert!(f[0].detail.contains("site z"), "{}", f[0].detail);
    }

    #[test]
    fn backend_problems_fail_naming_the_first_object() {
        let mut s = status();
        s.backend = Some(api::BackendStatus {
            kind: "kubernetes".into(),
            problems: vec![api::ObjectProblem {
                object: "networking.istio.io/v1/VirtualService/shop/payment".into(),
                reason: "denied by webhook".into(),
                refused: true,
                ..Default::default()
            }],
            ..Default::default()
        });
        let f = daemon(&cfg(), &s, &[peer("b", true), peer("c", true)]);
        let b = f.last().unwrap();
        assert_eq!(b.outcome, Outcome::Fail);
        assert!(
            b.detail.contains("VirtualService/shop/payment"),
            "{}",
            b.detail
        );
        s.backend = Some(api::BackendStatus {
            kind: "kubernetes".into(),
            error: "API server unreachable".into(),
            ..Default::default()
        });
        let f = daemon(&cfg(), &s, &[peer("b", true), peer("c", true)]);
        assert!(f.last().unwrap().detail.contains("API server unreachable"));
    }

    #[test]
    fn a_config_file_the_daemon_refused_fails_and_one_awaiting_a_restart_warns() {
        let find = |s: &api::StatusResponse| {
            daemon(&cfg(), s, &[peer("b", true), peer("c", true)])
                .into_iter()
                .find(|f| f.check == "config")
        };
        let mut s = status();
        assert!(find(&s).is_none(), "nothing to say of an unchanged file");
        s.config = Some(api::ConfigStatus {
            last_change_unix_ms: 1,
            restart_fields: vec!["sync".into()],
            ..Default::default()
        });
        let f = find(&s).unwrap();
        assert_eq!(f.outcome, Outcome::Warn);
        assert!(f.detail.ends_with("next start: sync"), "{}", f.detail);
        s.config = Some(api::ConfigStatus {
            last_change_unix_ms: 2,
            error: "a.toml: invalid peers[1].site \"a\": is this site itself".into(),
            ..Default::default()
        });
        let f = find(&s).unwrap();
        assert_eq!(f.outcome, Outcome::Fail);
        assert!(f.detail.contains("peers[1].site"), "{}", f.detail);
    }
}
