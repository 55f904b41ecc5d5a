//! Site identities: for each site two certificates, one per [`Role`], carrying the SPIFFE ID
//! `spiffe://<trust-domain>/site/<name>/<role>` as a URI SAN; reading that ID back from a
//! peer's certificate, and reading and writing certificate and key files. Issuing
//! certificates (rcgen) is [`crate::pki`], behind the `pki` feature: the data plane only reads
//! them.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::names;

/// Errors about certificates and keys.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What is missing or wrong.
        what: String,
    },
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// A certificate does not carry exactly one valid multimesh site SPIFFE ID.
    #[error("certificate has no valid site SPIFFE ID: {0}")]
    NoSpiffeId(String),
    /// A name (site, trust domain) is invalid.
    #[error(transparent)]
    Invalid(#[from] crate::error::InvalidField),
}

impl IdentityError {
    /// The same error, naming the certificate file it is about.
    pub fn at(self, path: &Path) -> Self {
        match self {
            IdentityError::NoSpiffeId(what) => IdentityError::Pem {
                path: path.display().to_string(),
                what: format!("certificate has no valid site SPIFFE ID: {what}"),
            },
            other => other,
        }
    }
}

/// Which half of a site a certificate speaks for. A site holds two identities, so that the
/// data plane's key can never assert the catalog, nor the control plane's carry calls:
/// `federationd` syncs the catalog and signs the site's records; the edge agent carries calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// `federationd`: catalog sync and the site's origin proofs.
    Federation,
    /// The edge agent: calls between sites, edge-node links, and the site's route feed.
    Edge,
}

impl Role {
    /// Both roles.
    pub const ALL: [Role; 2] = [Role::Federation, Role::Edge];

    /// The last segment of the SPIFFE ID.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Federation => "federation",
            Role::Edge => "edge",
        }
    }

    /// Parses `federation` or `edge`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SPIFFE ID of one half of a site: `spiffe://<trust_domain>/site/<site>/<role>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SiteId {
    /// The federation's trust domain.
    pub trust_domain: String,
    /// The site name.
    pub site: String,
    /// Which half of the site.
    pub role: Role,
}

impl SiteId {
    /// Builds and validates a site ID.
    pub fn new(trust_domain: &str, site: &str, role: Role) -> Result<Self, IdentityError> {
        names::trust_domain("trust domain", trust_domain)?;
        names::dns_label("site", site)?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            site: site.to_string(),
            role,
        })
    }

    /// Parses `spiffe://<td>/site/<name>/<role>`. The role-less form of earlier releases is
    /// refused with what to do about it.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let bad = || {
            IdentityError::NoSpiffeId(format!(
                "{uri:?} is not spiffe://<trust-domain>/site/<name>/federation or .../edge"
            ))
        };
        let rest = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let (td, path) = rest.split_once('/').ok_or_else(bad)?;
        let path = path.strip_prefix("site/").ok_or_else(bad)?;
        let Some((site, role)) = path.split_once('/') else {
            return Err(IdentityError::NoSpiffeId(format!(
                "{uri:?} names a site but no role (federation or edge): certificates of \
                 earlier releases served both; issue one of each with `federationctl certs issue`"
            )));
        };
        let role = Role::parse(role).ok_or_else(bad)?;
        Self::new(td, site, role).map_err(|_| bad())
    }

    /// The URI form.
    pub fn uri(&self) -> String {
        format!(
            "spiffe://{}/site/{}/{}",
            self.trust_domain, self.site, self.role
        )
    }
}

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// When the first certificate of a PEM text stops being valid.
pub fn not_after(cert_pem: &str) -> Result<OffsetDateTime, IdentityError> {
    let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| IdentityError::Pem {
            path: "certificate".into(),
            what: "no CERTIFICATE block".into(),
        })?;
    Ok(validity(&der)?.1)
}

/// When a certificate starts and stops being valid: (notBefore, notAfter).
pub fn validity(
    cert: &CertificateDer<'_>,
) -> Result<(OffsetDateTime, OffsetDateTime), IdentityError> {
    let (_, c) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| IdentityError::Pem {
            path: "certificate".into(),
            what: format!("unparsable: {e}"),
        })?;
    let v = c.validity();
    Ok((v.not_before.to_datetime(), v.not_after.to_datetime()))
}

/// Where `site`'s `role` certificate and key are kept in `dir`: `SITE-ROLE.pem` and
/// `SITE-ROLE-key.pem`.
pub fn identity_files(dir: &Path, site: &str, role: Role) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{site}-{role}.pem")),
        dir.join(format!("{site}-{role}-key.pem")),
    )
}

/// Reads the site SPIFFE ID from a DER certificate: it must carry exactly one URI SAN, of the
/// form `spiffe://<td>/site/<name>/<role>` (another URI beside it is refused: a certificate
/// speaks for one identity).
pub fn site_id_of(cert: &CertificateDer<'_>) -> Result<SiteId, IdentityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| IdentityError::NoSpiffeId(format!("unparsable certificate: {e}")))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| IdentityError::NoSpiffeId(format!("bad subjectAltName: {e}")))?
        .ok_or_else(|| IdentityError::NoSpiffeId("no subjectAltName".into()))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] => SiteId::parse(one),
        [] => Err(IdentityError::NoSpiffeId("no spiffe:// URI SAN".into())),
        many => Err(IdentityError::NoSpiffeId(format!(
            "{} URI SANs ({}), expected exactly one spiffe:// ID",
            many.len(),
            many.join(", ")
        ))),
    }
}

/// The first certificate of a PEM text.
pub fn cert_from_pem(pem: &str) -> Result<CertificateDer<'static>, IdentityError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| IdentityError::Pem {
        path: "certificate".into(),
        what: format!("no usable CERTIFICATE block: {e}"),
    })
}

/// The private key of a PEM text.
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, IdentityError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| IdentityError::Pem {
        path: "key".into(),
        what: format!("no usable PRIVATE KEY block: {e}"),
    })
}

/// Reads all certificates of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let data = std::fs::read(path).map_err(|source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem {
            path: path.display().to_string(),
            what: format!("unreadable PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::Pem {
            path: path.display().to_string(),
            what: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Reads the private key of a PEM file. A key that other users may read (any group or other
/// permission bit, after symlinks) is refused: it may already be someone else's.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, IdentityError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::Pem {
            path: path.display().to_string(),
            what: format!(
                "private key is readable by other users (mode {mode:04o}); make it readable by \
                 its owner only: chmod 600 {}",
                path.display()
            ),
        });
    }
    let data = std::fs::read(path).map_err(io)?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| IdentityError::Pem {
        path: path.display().to_string(),
        what: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block".into(),
            e => format!("unreadable PEM: {e}"),
        },
    })
}

/// Writes a file whole (see [`crate::files`]), creating parent folders; `secret` files get
/// mode 0600.
pub fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), IdentityError> {
    crate::files::write_bytes_atomically(
        path,
        contents.as_bytes(),
        if secret { 0o600 } else { 0o644 },
    )
    .map_err(|source| IdentityError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads the trust domain from a federation CA certificate (its `spiffe://<td>` URI SAN).
pub fn trust_domain_of_ca(cert: &CertificateDer<'_>) -> Result<String, IdentityError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| IdentityError::NoSpiffeId(format!("unparsable CA certificate: {e}")))?;
    let san = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .ok_or_else(|| IdentityError::NoSpiffeId("CA certificate has no subjectAltName".into()))?;
    san.value
        .general_names
        .iter()
        .find_map(|g| match g {
            x509_parser::extensions::GeneralName::URI(u) => u
                .strip_prefix("spiffe://")
                .map(|td| td.trim_end_matches('/').to_string()),
            _ => None,
        })
        .ok_or_else(|| {
            IdentityError::NoSpiffeId("CA certificate has no spiffe://<trust-domain> URI".into())
        })
}

#[cfg(all(test, feature = "pki"))]
mod tests {
    use super::*;
    use crate::pki::*;

    #[test]
    fn issued_certificate_carries_the_site_id() {
        let ca = init_ca("multimesh.test", 1).unwrap();
        let id = SiteId::new("multimesh.test", "a", Role::Edge).unwrap();
        let site = issue_site(&ca, &id, Validity::days(1)).unwrap();
        let der = cert_from_pem(&site.cert_pem).unwrap();
        assert_eq!(site_id_of(&der).unwrap(), id);
        assert_eq!(id.uri(), "spiffe://multimesh.test/site/a/edge");
    }

    #[test]
    fn a_certificate_never_outlives_its_ca() {
        let ca = init_ca("multimesh.test", 10).unwrap();
        let id = SiteId::new("multimesh.test", "a", Role::Edge).unwrap();
        let end = |p: &Pair| not_after(&p.cert_pem).unwrap();
        let ca_end = end(&ca);
        assert_eq!(
            end(&issue_site(&ca, &id, Validity::days(400)).unwrap()),
            ca_end
        );
        assert!(end(&issue_site(&ca, &id, Validity::days(9)).unwrap()) < ca_end);
    }

    #[test]
    fn a_key_readable_by_other_users_is_refused_with_the_file_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca("multimesh.test", 1).unwrap();
        let id = SiteId::new("multimesh.test", "a", Role::Federation).unwrap();
        let (_, key) = issue_to(dir.path(), &ca, &id, Validity::days(1)).unwrap();
        assert!(read_key(&key).is_ok(), "0600 as issued");
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = read_key(&key).unwrap_err().to_string();
            assert!(
                err.contains("a-federation-key.pem") && err.contains("readable by other users"),
                "{err}"
            );
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(
            read_key(&key).is_ok(),
            "0400, as a Kubernetes Secret mounts it"
        );
    }

    #[test]
    fn spiffe_ids_parse_strictly() {
        let b = SiteId::parse("spiffe://td.example/site/b/federation").unwrap();
        assert_eq!((b.site.as_str(), b.role), ("b", Role::Federation));
        let old = SiteId::parse("spiffe://td.example/site/b").unwrap_err();
        assert!(old.to_string().contains("no role"), "{old}");
        for bad in [
            "spiffe://td/site/a/admin",
            "spiffe://td/site/a/edge/x",
            "spiffe://td/site/a/Edge",
            "spiffe://td/ns/x/sa/y",
            "https://td/site/a",
            "spiffe://td/site/",
            "spiffe://td/site/A",
            "spiffe://td/site/a/extra",
        ] {
            assert!(SiteId::parse(bad).is_err(), "{bad}");
        }
    }
}
