//! Certificate rotation without a restart: the certificate and key files are read again
//! periodically, and when they changed and pass the checks a peer would apply, what the
//! site's handshakes present ([`Presented`]) is replaced. Connections already open keep the
//! certificate they were made with; the CA bundle is the one read at start.
//!
//! A replacement is refused, and the previous certificate kept, when the new files do not
//! name this site and role, the key is not the certificate's, or the certificate does not
//! chain to the federation CA or is not valid now. Each distinct content is judged once, so a
//! refused pair is logged once, and a pair written one file at a time (certificate, then key)
//! is taken when its second half lands.

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
    /// The certificate and key files (and the CA bundle, read at start only).
    pub files: TlsFiles,
    /// The federation's trust domain.
    pub trust_domain: String,
    /// This site.
    pub site: String,
    /// The role the certificate must name.
    pub role: Role,
}

/// Judges the files as they are now: the new material when it may replace `current`.
pub fn judge(source: &Source, current: &SiteTls, now: OffsetDateTime) -> Result<SiteTls, String> {
    let Source {
        files,
        trust_domain,
        site,
        role,
    } = source;
    let next = load_site(files, trust_domain, site, *role).map_err(|e| e.to_string())?;
    next.key_matches()?;
    crate::tls::verify_chain(&next.chain, &current.roots, now).map_err(|e| {
        format!(
            "{}: not a valid certificate of the federation CA now: {e}",
            files.cert.display()
        )
    })?;
    Ok(next)
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
/// `current`'s handshakes present the new certificate from then on, and `then` is called with
/// the new material (for whatever else the certificate serves, such as signing). Runs until
/// `shutdown`.
pub async fn watch(
    source: Source,
    current: Arc<SiteTls>,
    every: Duration,
    shutdown: CancellationToken,
    then: impl Fn(&SiteTls) + Send + 'static,
) {
    let Source {
        files, site, role, ..
    } = &source;
    // What the files held when last judged (certificate and key bytes).
    let mut seen = (read(&files.cert), read(&files.key));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let now = (read(&files.cert), read(&files.key));
        if seen == now {
            continue;
        }
        seen = now;
        match judge(&source, &current, OffsetDateTime::now_utc()) {
            Ok(next) => {
                current.presented.replace(&next.presented);
                then(&next);
                let until = validity(&next.chain[0])
                    .map(|(_, end)| end.to_string())
                    .unwrap_or_default();
                info!(
                    site = %site,
                    role = role.as_str(),
                    cert = %files.cert.display(),
                    valid_until = %until,
                    "certificate rotated: new handshakes present the new certificate"
                );
            }
            Err(e) => warn!(
                site = %site,
                role = role.as_str(),
                error = %e,
                "certificate files changed but were refused; still presenting the previous certificate"
            ),
        }
    }
}
