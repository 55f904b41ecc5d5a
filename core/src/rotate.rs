//! Certificate and CA rotation without a restart: the CA bundle, certificate and key files are
//! read again periodically, and when they changed and pass the checks a peer would apply, what
//! the site's handshakes present ([`Presented`]) and the bundle they check peers against
//! ([`Trusted`]) are replaced. Connections already open keep what they were made with.
//!
//! A replacement is refused, and the previous material kept, when the new files do not name
//! this site and role, the key is not the certificate's, or the certificate does not chain to
//! the (new) CA bundle or is not valid now. So a CA is rotated in three steps, each taken by
//! every site while it runs: a bundle with both CAs; certificates issued by the new CA; the
//! bundle of the new CA alone. A bundle that no longer holds the CA of the site's own
//! certificate (the last step taken too early) is refused, because every peer would refuse
//! that site. Each distinct content is judged once, so a refused set is logged once, and
//! files written one at a time (certificate, then key) are taken when the last one lands.
//!
//! [`Presented`]: crate::tls::Presented
//! [`Trusted`]: crate::tls::Trusted

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::TlsFiles;
use crate::identity::{Role, validity};
use crate::tls::{SiteTls, load_site};

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// Whose certificate is watched: the files, and the identity they must hold.
#[derive(Clone, Debug)]
pub struct Source {
    /// The CA bundle, certificate and key files.
    pub files: TlsFiles,
    /// The federation's trust domain.
    pub trust_domain: String,
    /// This site.
    pub site: String,
    /// The role the certificate must name.
    pub role: Role,
}

/// Judges the files as they are now: the new material when it may replace what runs.
pub fn judge(source: &Source, now: OffsetDateTime) -> Result<SiteTls, String> {
    let Source {
        files,
        trust_domain,
        site,
        role,
    } = source;
    let next = load_site(files, trust_domain, site, *role).map_err(|e| e.to_string())?;
    next.key_matches()?;
    crate::tls::verify_chain(&next.chain, &next.roots(), now).map_err(|e| {
        format!(
            "{} is not a valid certificate of the federation CA bundle {} now: {e}",
            files.cert.display(),
            files.ca.display()
        )
    })?;
    Ok(next)
}

/// What changed between two readings of the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Changed {
    /// The CA bundle.
    pub bundle: bool,
    /// The certificate or key.
    pub certificate: bool,
}

/// The least period of [`watch`] a config may ask for (ms); 0 means never.
pub const MIN_RELOAD_MS: u64 = 100;

/// Checks a configured reload period: 0 (never) or at least [`MIN_RELOAD_MS`].
pub fn check_period(field: &str, ms: u64) -> Result<(), crate::error::InvalidField> {
    if (1..MIN_RELOAD_MS).contains(&ms) {
        return Err(crate::error::InvalidField::new(
            field,
            ms,
            &format!("must be 0 (never) or at least {MIN_RELOAD_MS}"),
        ));
    }
    Ok(())
}

/// Every `every`, reads the files of `source` again; when they changed and pass [`judge`],
/// `current`'s handshakes present the new certificate and check peers against the new bundle
/// from then on, and `then` is called with the new material and what changed (for whatever
/// else they serve, such as signing and checking signatures). Runs until `shutdown`.
pub async fn watch(
    source: Source,
    current: Arc<SiteTls>,
    every: Duration,
    shutdown: CancellationToken,
    then: impl Fn(&SiteTls, Changed) + Send + 'static,
) {
    let Source {
        files, site, role, ..
    } = &source;
    let read_all = || [read(&files.ca), read(&files.cert), read(&files.key)];
    // What the files held when last taken, and when last judged.
    let mut taken = read_all();
    let mut seen = taken.clone();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let now = read_all();
        if seen == now {
            continue;
        }
        seen = now.clone();
        match judge(&source, OffsetDateTime::now_utc()) {
            Ok(next) => {
                let changed = Changed {
                    bundle: now[0] != taken[0],
                    certificate: now[1..] != taken[1..],
                };
                taken = now;
                current.presented.replace(&next.presented);
                current.trusted.replace(&next.trusted);
                then(&next, changed);
                let until = validity(&next.chain[0])
                    .map(|(_, end)| end.to_string())
                    .unwrap_or_default();
                info!(
                    site = %site,
                    role = role.as_str(),
                    ca = %files.ca.display(),
                    cert = %files.cert.display(),
                    bundle_changed = changed.bundle,
                    certificate_changed = changed.certificate,
                    cas = next.roots().roots.len(),
                    valid_until = %until,
                    "certificate rotated: new handshakes present this certificate and check peers against this CA bundle"
                );
            }
            Err(e) => warn!(
                site = %site,
                role = role.as_str(),
                error = %e,
                "certificate or CA files changed but were refused; the previous ones stay in use"
            ),
        }
    }
}
