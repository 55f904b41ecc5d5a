//! Issuing identities (rcgen): a self-signed federation CA, and site certificates signed by it.
//! Only the control plane issues (`federationctl`, the demo and test fixtures); the `pki`
//! feature keeps rcgen out of the data plane.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::identity::{IdentityError, SiteId, identity_files, not_after, write_file};
use crate::names;

impl From<rcgen::Error> for IdentityError {
    fn from(e: rcgen::Error) -> Self {
        IdentityError::Generate(e.to_string())
    }
}

/// A PEM certificate and its PEM private key.
pub struct Pair {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM (PKCS#8).
    pub key_pem: String,
}

/// Creates a self-signed federation CA for `trust_domain`, valid from now for `days`.
pub fn init_ca(trust_domain: &str, days: i64) -> Result<Pair, IdentityError> {
    names::trust_domain("trust domain", trust_domain)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("multimesh federation CA {trust_domain}"),
    );
    dn.push(DnType::OrganizationName, "multimesh");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(days);
    let cert = params.self_signed(&key)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Validity window of an issued certificate.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// Not valid before.
    pub not_before: OffsetDateTime,
    /// Not valid after.
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From five minutes ago (clock skew) until `days` from now.
    pub fn days(days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - time::Duration::minutes(5),
            not_after: now + time::Duration::days(days),
        }
    }
}

/// Issues a site certificate (client and server auth) for `id`, signed by the CA. A
/// certificate never outlives its CA: its validity ends at the CA's at the latest (see
/// [`not_after`] to read what was issued).
pub fn issue_site(ca: &Pair, id: &SiteId, validity: Validity) -> Result<Pair, IdentityError> {
    let ca_not_after = not_after(&ca.cert_pem)?;
    let validity = Validity {
        not_before: validity.not_before,
        not_after: validity.not_after.min(ca_not_after),
    };
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("site {} {}", id.site, id.role));
    dn.push(DnType::OrganizationName, "multimesh");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(id.uri().try_into()?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues `id`'s certificate and writes it, and its key (mode 0600), to [`identity_files`] in
/// `dir`; returns their paths.
pub fn issue_to(
    dir: &Path,
    ca: &Pair,
    id: &SiteId,
    validity: Validity,
) -> Result<(PathBuf, PathBuf), IdentityError> {
    let pair = issue_site(ca, id, validity)?;
    let (cert, key) = identity_files(dir, &id.site, id.role);
    write_file(&cert, &pair.cert_pem, false)?;
    write_file(&key, &pair.key_pem, true)?;
    Ok((cert, key))
}
