//! Checks of a site's own identity, as its peers will check it, for `federationctl check` and
//! `edge-agent check`: findings (a named check, how it came out, why) and the certificate
//! checks; each daemon adds the checks of its running process.
//!
//! Pure but for reading the files named by the config; the clock is passed in.

use serde::Serialize;
use time::OffsetDateTime;

use crate::config::TlsFiles;
use crate::identity::{Role, read_certs, validity};
use crate::tls;

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

/// A finding.
pub fn finding(check: &str, outcome: Outcome, detail: impl Into<String>) -> Finding {
    Finding {
        check: check.to_string(),
        outcome,
        detail: detail.into(),
    }
}

/// The checks of a site's certificate files for `role` (no daemon needed): the federation
/// CA's time left; the site certificate: its SPIFFE ID, its chain to the CA for both TLS
/// directions (what every peer's handshake checks; the federation certificate's chain is also
/// what peers check on the site's signed records), its time left; and the key. A certificate
/// ending within `warn` is a warning.
pub fn certificates(
    files: &TlsFiles,
    trust_domain: &str,
    site: &str,
    role: Role,
    now: OffsetDateTime,
    warn: time::Duration,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let ca_path = files.ca.display().to_string();
    let ca = match read_certs(&files.ca) {
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

    let cert_path = files.cert.display().to_string();
    let tls = match tls::load_site(files, trust_domain, site, role) {
        Ok(tls) => tls,
        Err(e) => {
            out.push(finding("site certificate", Outcome::Fail, e.to_string()));
            return out;
        }
    };
    let (start, end) = match validity(&tls.chain[0]) {
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
    let chained = tls::verify_chain(&tls.chain, &tls.roots(), now.clamp(start, end));
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
                "spiffe://{trust_domain}/site/{site}/{}, signed by the federation CA; ",
                role.as_str()
            ),
            (start, end),
            now,
            warn,
        ),
    });
    let key_path = files.key.display().to_string();
    out.push(match tls.key_matches() {
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

/// What a check command prints with `-o json`: every finding, and how many failed or warn.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Every check, in the order run.
    pub checks: Vec<Finding>,
    /// How many failed.
    pub failed: usize,
    /// How many are warnings.
    pub warnings: usize,
}

impl Report {
    /// The report of these findings.
    pub fn new(checks: Vec<Finding>) -> Self {
        let count = |o| checks.iter().filter(|f| f.outcome == o).count();
        Self {
            failed: count(Outcome::Fail),
            warnings: count(Outcome::Warn),
            checks,
        }
    }

    /// `N of M checks failed`, when any did.
    pub fn failure(&self) -> Option<String> {
        (self.failed > 0).then(|| format!("{} of {} checks failed", self.failed, self.checks.len()))
    }
}

/// The findings as a table: `CHECK  RESULT  DETAIL`, one line per check (`ok`, `WARN`,
/// `FAIL`), columns two spaces apart; the header line only when `headers`.
pub fn render(findings: &[Finding], headers: bool) -> String {
    let result = |o: Outcome| match o {
        Outcome::Pass => "ok",
        Outcome::Warn => "WARN",
        Outcome::Fail => "FAIL",
    };
    let mut rows: Vec<[&str; 3]> = Vec::new();
    if headers {
        rows.push(["CHECK", "RESULT", "DETAIL"]);
    }
    rows.extend(
        findings
            .iter()
            .map(|f| [f.check.as_str(), result(f.outcome), f.detail.as_str()]),
    );
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let (w0, w1) = (width(0), width(1));
    rows.iter()
        .map(|r| format!("{:w0$}  {:w1$}  {}\n", r[0], r[1], r[2]))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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

    #[test]
    fn the_table_aligns_its_columns() {
        let f = [
            finding("config", Outcome::Pass, "a.toml"),
            finding("site certificate", Outcome::Fail, "expired"),
        ];
        assert_eq!(
            render(&f, true),
            "CHECK             RESULT  DETAIL\nconfig            ok      a.toml\nsite certificate  FAIL    expired\n"
        );
        assert_eq!(render(&f[..1], false), "config  ok  a.toml\n");
    }
}
