//! `federationctl check`: what is wrong with a site, found before its peers find it.
//!
//! The certificate checks are those a peer applies, run against the site's own files: the
//! certificate names this site, chains to the federation CA ([`Verifier::admit`], the check
//! every receiver applies to the site's signed records) and was issued for the site's key; and
//! the time left on the certificate and on the CA, which no handshake reports until it is too
//! late. The daemon checks read its answers: it is the site of this config, each configured
//! peer is healthy, and its backend applied every object.
//!
//! Pure but for reading the files the config names; the clock and the daemon's answers are
//! passed in.

use std::collections::BTreeSet;

use rustls::pki_types::UnixTime;
use serde::Serialize;
use time::OffsetDateTime;

use crate::config::Config;
use crate::identity::{Role, read_certs, validity};
use crate::proof::Verifier;
use crate::tls;
use multimesh_proto::admin::v1 as api;

/// How one check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Nothing wrong.
    Pass,
    /// Works now, needs attention soon (a certificate near its end).
    Warn,
    /// Broken, or will be refused by peers.
    Fail,
}

/// One check: its name (`site certificate`, `peer b`), how it came out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked.
    pub check: String,
    /// How it came out.
    pub outcome: Outcome,
    /// What was found, naming the file, peer or object.
    pub detail: String,
}

fn finding(check: &str, outcome: Outcome, detail: impl Into<String>) -> Finding {
    Finding {
        check: check.to_string(),
        outcome,
        detail: detail.into(),
    }
}

/// The checks of the site's certificate files (no daemon needed): the federation CA's time
/// left, the site certificate (its SPIFFE ID, its chain to the CA, its time left) and the key.
/// A certificate ending within `warn` is a warning.
pub fn certificates(cfg: &Config, now: OffsetDateTime, warn: time::Duration) -> Vec<Finding> {
    let mut out = Vec::new();
    let ca_path = cfg.tls.ca.display().to_string();
    let ca = match read_certs(&cfg.tls.ca) {
        Ok(ca) => ca,
        Err(e) => {
            out.push(finding("federation CA", Outcome::Fail, e.to_string()));
            return out;
        }
    };
    // A bundle may hold two CAs while one replaces the other: the first to end decides.
    let ends = ca
        .iter()
        .map(validity)
        .collect::<Result<Vec<_>, _>>()
        .map(|v| v.into_iter().min_by_key(|(_, end)| *end));
    match ends {
        Ok(Some((start, end))) => out.push(timed(
            "federation CA",
            &ca_path,
            "",
            (start, end),
            now,
            warn,
        )),
        Ok(None) => {
            out.push(finding(
                "federation CA",
                Outcome::Fail,
                format!("{ca_path}: no certificate"),
            ));
            return out;
        }
        Err(e) => {
            out.push(finding(
                "federation CA",
                Outcome::Fail,
                format!("{ca_path}: {e}"),
            ));
            return out;
        }
    }

    let cert_path = cfg.tls.cert.display().to_string();
    let site = match tls::load_site(&cfg.tls, &cfg.trust_domain, &cfg.site, Role::Federation) {
        Ok(site) => site,
        Err(e) => {
            out.push(finding("site certificate", Outcome::Fail, e.to_string()));
            return out;
        }
    };
    let (start, end) = match validity(&site.chain[0]) {
        Ok(v) => v,
        Err(e) => {
            out.push(finding(
                "site certificate",
                Outcome::Fail,
                format!("{cert_path}: {e}"),
            ));
            return out;
        }
    };
    // The chain is checked at a time the certificate is valid, so that an expired certificate
    // is reported as expired, and a foreign one as foreign, each once.
    let at = now.clamp(start, end);
    let chained = Verifier::from_roots(&site.roots, &cfg.trust_domain)
        .map_err(|e| e.0)
        .and_then(|v| {
            v.admit(site.chain[0].as_ref(), unix(at))
                .map_err(|e| e.0)
                .map(|_| ())
        });
    out.push(match chained {
        Err(e) => finding(
            "site certificate",
            Outcome::Fail,
            format!(
                "{cert_path} does not chain to the federation CA in {ca_path}, so peers refuse \
                 it ({e})"
            ),
        ),
        Ok(()) => timed(
            "site certificate",
            &cert_path,
            &format!(
                "spiffe://{}/site/{}/federation, signed by the federation CA; ",
                cfg.trust_domain, cfg.site
            ),
            (start, end),
            now,
            warn,
        ),
    });
    let key_path = cfg.tls.key.display().to_string();
    out.push(match site.key_matches() {
        Ok(()) => finding(
            "site key",
            Outcome::Pass,
            format!("{key_path} is the key of {cert_path}"),
        ),
        Err(e) => finding(
            "site key",
            Outcome::Fail,
            format!("{key_path}: {e} ({cert_path}): every handshake and signed record fails"),
        ),
    });
    out
}

fn unix(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(t.unix_timestamp()).unwrap_or(0),
    ))
}

/// A finding about a validity period: failed outside it, a warning near its end.
fn timed(
    check: &str,
    path: &str,
    prefix: &str,
    (start, end): (OffsetDateTime, OffsetDateTime),
    now: OffsetDateTime,
    warn: time::Duration,
) -> Finding {
    if now < start {
        return finding(
            check,
            Outcome::Fail,
            format!(
                "{path}: {prefix}not valid before {} (in {}; is this clock right?)",
                date(start),
                span(start - now)
            ),
        );
    }
    if now > end {
        return finding(
            check,
            Outcome::Fail,
            format!(
                "{path}: {prefix}expired on {} ({} ago)",
                date(end),
                span(now - end)
            ),
        );
    }
    let outcome = if end - now < warn {
        Outcome::Warn
    } else {
        Outcome::Pass
    };
    finding(
        check,
        outcome,
        format!(
            "{path}: {prefix}expires in {} ({})",
            span(end - now),
            date(end)
        ),
    )
}

/// `2026-12-03 15:04 UTC`.
fn date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

/// `3 days`, `23 h`, `12 min`.
fn span(d: time::Duration) -> String {
    if d.whole_days() >= 2 {
        format!("{} days", d.whole_days())
    } else if d.whole_hours() >= 1 {
        format!("{} h", d.whole_hours())
    } else {
        format!("{} min", d.whole_minutes())
    }
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
                "configured here, unknown to the daemon (restart it with this config)",
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
    fn validity_fails_outside_its_period_and_warns_near_its_end() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let day = time::Duration::days(1);
        let period = (now - day, now + 10 * day);
        let t = |now, warn| timed("c", "c.pem", "", period, now, warn);
        assert_eq!(t(now, 30 * day).outcome, Outcome::Warn);
        assert_eq!(t(now, 9 * day).outcome, Outcome::Pass);
        assert!(t(now, 9 * day).detail.contains("expires in 10 days"));
        let late = t(now + 12 * day, day);
        assert_eq!(late.outcome, Outcome::Fail);
        assert!(late.detail.contains("expired on") && late.detail.contains("2 days ago"));
        let early = t(now - 2 * day, day);
        assert_eq!(early.outcome, Outcome::Fail);
        assert!(
            early.detail.contains("not valid before"),
            "{}",
            early.detail
        );
    }
}
