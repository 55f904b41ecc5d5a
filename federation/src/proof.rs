//! Origin proofs: only an origin may assert its records, its withdrawals and its liveness.
//!
//! An origin signs the encoded bytes of each of its catalog records and of each of its heads
//! with the private key of its federation certificate, whose SPIFFE ID names the origin. The
//! signed bytes travel unchanged through relays, with the signer's certificate; a receiver
//! checks, before it merges anything:
//!
//! 1. the certificate chains to the federation CA, is valid now, and names a site of the trust
//!    domain ([`Verifier::admit`]);
//! 2. the signature over the bytes, with a context string per kind of item, verifies under the
//!    certificate's key ([`Verifier::open`]);
//! 3. the site the certificate names is the item's origin (the caller compares).
//!
//! This module is pure: no I/O, no clock (the caller passes `now`).

use multimesh_core::locks::lock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::SignatureScheme;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use serde::{Deserialize, Serialize};

use crate::identity::{Role, site_id_of};

/// SHA-256 of a certificate's DER bytes: names the signer of a seal.
pub type Fingerprint = [u8; 32];

/// What a signature is about; part of the signed bytes, so a signature over one kind of item
/// can never be taken for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// A catalog `Record` (an exported service or its withdrawal).
    Record,
    /// An `OriginHead` (version vector entry and liveness beat).
    Head,
}

impl Context {
    fn prefix(self) -> &'static [u8] {
        match self {
            Context::Record => b"multimesh.catalog.v2.record\0",
            Context::Head => b"multimesh.catalog.v2.head\0",
        }
    }
}

/// Most certificates one message may carry.
pub const MAX_CERTIFICATES: usize = 256;
/// Largest certificate accepted (DER bytes).
pub const MAX_CERTIFICATE_BYTES: usize = 8 * 1024;
/// Largest signature accepted.
pub const MAX_SIGNATURE_BYTES: usize = 512;

/// An origin's signature over the exact bytes it encoded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The encoded item (a `Record` or an `OriginHead`), forwarded unchanged by relays.
    #[serde(with = "b64")]
    pub bytes: Vec<u8>,
    /// The signature over the context prefix and `bytes`.
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
    /// The fingerprint of the signer's certificate.
    #[serde(with = "fingerprint_hex")]
    pub signer: Fingerprint,
}

/// Bytes kept in the state and journal (base64 in JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blob(#[serde(with = "b64")] pub Vec<u8>);

/// A certificate's DER bytes.
pub type CertDer = Blob;

/// Why a proof was refused. The message names what was wrong; no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProofError(pub String);

/// SHA-256 of `der`.
pub fn fingerprint(der: &[u8]) -> Fingerprint {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Short hex form of a fingerprint, for logs and errors.
pub fn short(fp: &Fingerprint) -> String {
    fp[..6].iter().map(|b| format!("{b:02x}")).collect()
}

fn signed_bytes(context: Context, bytes: &[u8]) -> Vec<u8> {
    let prefix = context.prefix();
    let mut m = Vec::with_capacity(prefix.len() + bytes.len());
    m.extend_from_slice(prefix);
    m.extend_from_slice(bytes);
    m
}

/// This site's signing side: its federation certificate and key.
pub struct Signer {
    key: Box<dyn rustls::sign::Signer>,
    cert: Arc<CertDer>,
    fingerprint: Fingerprint,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", short(&self.fingerprint))
    }
}

impl Signer {
    /// A signer from a certificate and its private key (ECDSA P-256 or P-384, or Ed25519).
    pub fn new(cert: &CertificateDer<'_>, key: &PrivateKeyDer<'_>) -> Result<Self, ProofError> {
        let signing = rustls::crypto::ring::sign::any_supported_type(key)
            .map_err(|e| ProofError(format!("the site key cannot sign: {e}")))?;
        let key = signing
            .choose_scheme(&[
                SignatureScheme::ECDSA_NISTP256_SHA256,
                SignatureScheme::ECDSA_NISTP384_SHA384,
                SignatureScheme::ED25519,
            ])
            .ok_or_else(|| {
                ProofError(
                    "the site key is not ECDSA P-256, P-384 or Ed25519, which origin proofs need"
                        .into(),
                )
            })?;
        Ok(Self {
            key,
            fingerprint: fingerprint(cert.as_ref()),
            cert: Arc::new(Blob(cert.as_ref().to_vec())),
        })
    }

    /// Signs `bytes` as an item of `context`.
    pub fn seal(&self, context: Context, bytes: Vec<u8>) -> Seal {
        // Signing with an in-memory ring key only fails on an internal error of ring; a
        // seal that does not verify is then refused by every receiver, and said so.
        let signature = self
            .key
            .sign(&signed_bytes(context, &bytes))
            .unwrap_or_default();
        Seal {
            bytes,
            signature,
            signer: self.fingerprint,
        }
    }

    /// The signer's certificate (DER).
    pub fn certificate(&self) -> &Arc<CertDer> {
        &self.cert
    }

    /// The fingerprint of the signer's certificate.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

/// A certificate that passed [`Verifier::admit`]: the site it names, and its DER bytes.
#[derive(Debug)]
pub struct Signatory {
    /// The site named by the certificate's SPIFFE ID.
    pub site: String,
    /// The certificate (DER).
    pub cert: Arc<CertDer>,
    /// Seconds since the Unix epoch after which the certificate is no longer valid.
    not_after: u64,
}

/// Checks origin proofs against the federation CA. Certificates that passed are remembered
/// (bounded) until they expire, so a relayed catalog costs one chain check per signer.
pub struct Verifier {
    /// The federation CA bundle (replaced by [`Verifier::set_roots`]).
    anchors: Mutex<Arc<Anchors>>,
    trust_domain: String,
    admitted: Mutex<HashMap<Fingerprint, Arc<Signatory>>>,
    verified: Mutex<Verified>,
}

type Anchors = Vec<rustls::pki_types::TrustAnchor<'static>>;

/// Most admitted certificates remembered; beyond it the memory starts again (only costs time).
const MAX_ADMITTED: usize = 4096;

/// Seals whose signature verified, by digest of (context, signer, bytes, signature): relays
/// forward an origin's signed bytes unchanged, so in a mesh a site receives the same seal from
/// several peers (and again on every resync) and checks its signature once. Two generations of
/// at most [`MAX_VERIFIED`] digests each (32 bytes): when the newer fills up, the older is
/// dropped, so memory is bounded and recent seals stay known. A digest is remembered only
/// after its signature verified; the signer's certificate is still admitted per message.
#[derive(Default)]
struct Verified {
    current: std::collections::HashSet<[u8; 32]>,
    previous: std::collections::HashSet<[u8; 32]>,
}

const MAX_VERIFIED: usize = 1 << 16;

impl Verified {
    fn contains(&self, d: &[u8; 32]) -> bool {
        self.current.contains(d) || self.previous.contains(d)
    }

    fn insert(&mut self, d: [u8; 32]) {
        if self.current.len() >= MAX_VERIFIED {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(d);
    }
}

fn seal_digest(context: Context, seal: &Seal) -> [u8; 32] {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    h.update(context.prefix());
    h.update(&seal.signer);
    h.update(&(seal.bytes.len() as u64).to_be_bytes());
    h.update(&seal.bytes);
    h.update(&seal.signature);
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

impl Verifier {
    /// A verifier for certificates issued by `ca` for sites of `trust_domain`.
    pub fn new(ca: &[CertificateDer<'_>], trust_domain: &str) -> Result<Self, ProofError> {
        let anchors = ca
            .iter()
            .map(|c| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| ProofError(format!("federation CA certificate: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if anchors.is_empty() {
            return Err(ProofError("no federation CA certificate".into()));
        }
        Ok(Self {
            anchors: Mutex::new(Arc::new(anchors)),
            trust_domain: trust_domain.to_string(),
            admitted: Mutex::new(HashMap::new()),
            verified: Mutex::default(),
        })
    }

    /// A verifier for the roots of a site's TLS configuration.
    pub fn from_roots(
        roots: &rustls::RootCertStore,
        trust_domain: &str,
    ) -> Result<Self, ProofError> {
        if roots.roots.is_empty() {
            return Err(ProofError("no federation CA certificate".into()));
        }
        Ok(Self {
            anchors: Mutex::new(Arc::new(roots.roots.clone())),
            trust_domain: trust_domain.to_string(),
            admitted: Mutex::new(HashMap::new()),
            verified: Mutex::default(),
        })
    }

    /// Checks certificates against `roots` from now on (a rotated CA bundle): what was admitted
    /// under the previous bundle is checked again when it is next seen.
    pub fn set_roots(&self, roots: &rustls::RootCertStore) {
        // Under the admission memory's lock, so nothing checked against the previous bundle
        // is remembered after this.
        let mut admitted = self.remembered();
        *lock(&self.anchors) = Arc::new(roots.roots.clone());
        admitted.clear();
        *lock(&self.verified) = Verified::default();
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<Fingerprint, Arc<Signatory>>> {
        lock(&self.admitted)
    }

    /// Checks one certificate: it chains to the federation CA, is valid at `now`, and names
    /// exactly one site of the trust domain. Returns its fingerprint and signatory.
    pub fn admit(
        &self,
        der: &[u8],
        now: UnixTime,
    ) -> Result<(Fingerprint, Arc<Signatory>), ProofError> {
        let fp = fingerprint(der);
        if let Some(s) = self.remembered().get(&fp)
            && s.not_after >= now.as_secs()
        {
            return Ok((fp, s.clone()));
        }
        if der.len() > MAX_CERTIFICATE_BYTES {
            return Err(ProofError(format!(
                "a certificate of {} bytes is over the limit of {MAX_CERTIFICATE_BYTES}",
                der.len()
            )));
        }
        let cert = CertificateDer::from(der);
        let ee = webpki::EndEntityCert::try_from(&cert)
            .map_err(|e| ProofError(format!("certificate {}: {e}", short(&fp))))?;
        let anchors = lock(&self.anchors).clone();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &[],
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| {
            ProofError(format!(
                "certificate {} is not a valid federation certificate: {e}",
                short(&fp)
            ))
        })?;
        let id = site_id_of(&cert)
            .map_err(|e| ProofError(format!("certificate {}: {e}", short(&fp))))?;
        if id.trust_domain != self.trust_domain {
            return Err(ProofError(format!(
                "certificate {} names {id}, outside trust domain {}",
                short(&fp),
                self.trust_domain
            )));
        }
        if id.role != Role::Federation {
            return Err(ProofError(format!(
                "certificate {} names {id}: only a site's federationd signs its catalog",
                short(&fp)
            )));
        }
        let not_after = x509_parser::parse_x509_certificate(der)
            .map(|(_, c)| c.validity().not_after.timestamp().max(0) as u64)
            .unwrap_or(0);
        let s = Arc::new(Signatory {
            site: id.site,
            cert: Arc::new(Blob(der.to_vec())),
            not_after,
        });
        let mut m = self.remembered();
        if m.len() >= MAX_ADMITTED {
            m.clear();
        }
        // Remembered only when the bundle it was checked against is still the one in use.
        if Arc::ptr_eq(&anchors, &lock(&self.anchors)) {
            m.insert(fp, s.clone());
        }
        Ok((fp, s))
    }

    /// Checks the certificates a message carries; returns them by fingerprint.
    pub fn admit_all(
        &self,
        certs: &[Vec<u8>],
        now: UnixTime,
    ) -> Result<HashMap<Fingerprint, Arc<Signatory>>, ProofError> {
        if certs.len() > MAX_CERTIFICATES {
            return Err(ProofError(format!(
                "{} certificates in one message, over the limit of {MAX_CERTIFICATES}",
                certs.len()
            )));
        }
        let mut out = HashMap::with_capacity(certs.len());
        for (i, c) in certs.iter().enumerate() {
            let (fp, s) = self
                .admit(c, now)
                .map_err(|e| ProofError(format!("certificates[{i}]: {e}")))?;
            out.insert(fp, s);
        }
        Ok(out)
    }

    /// Checks a seal's signature under its signer's certificate (one of `signatories`) and
    /// returns the signer's site. The caller checks that it is the item's origin.
    pub fn open<'s>(
        &self,
        signatories: &'s HashMap<Fingerprint, Arc<Signatory>>,
        context: Context,
        seal: &Seal,
    ) -> Result<&'s Signatory, ProofError> {
        let s = signatories.get(&seal.signer).ok_or_else(|| {
            ProofError(format!(
                "signer {} is not among the message's certificates",
                short(&seal.signer)
            ))
        })?;
        if seal.signature.len() > MAX_SIGNATURE_BYTES {
            return Err(ProofError("signature is too long".into()));
        }
        let digest = seal_digest(context, seal);
        let verified = || lock(&self.verified);
        if verified().contains(&digest) {
            return Ok(s);
        }
        let cert = CertificateDer::from(s.cert.0.as_slice());
        let ee = webpki::EndEntityCert::try_from(&cert)
            .map_err(|e| ProofError(format!("certificate {}: {e}", short(&seal.signer))))?;
        let msg = signed_bytes(context, &seal.bytes);
        let ok = [
            webpki::ring::ECDSA_P256_SHA256,
            webpki::ring::ECDSA_P384_SHA384,
            webpki::ring::ED25519,
        ]
        .iter()
        .any(|alg| ee.verify_signature(*alg, &msg, &seal.signature).is_ok());
        if !ok {
            return Err(ProofError(format!(
                "signature does not verify under the certificate of {} ({})",
                s.site,
                short(&seal.signer)
            )));
        }
        verified().insert(digest);
        Ok(s)
    }
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod fingerprint_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    /// The same for an optional fingerprint (absent or null: `None`).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(v: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(fp) => super::serialize(fp, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
            match Option::<String>::deserialize(d)? {
                None => Ok(None),
                Some(s) => crate::proof::parse_hex(&s)
                    .map(Some)
                    .ok_or_else(|| serde::de::Error::custom("not 64 hex digits")),
            }
        }
    }

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        super::parse_hex(&s).ok_or_else(|| serde::de::Error::custom("not 64 hex digits"))
    }
}

/// Parses 64 hex digits into a fingerprint.
pub fn parse_hex(s: &str) -> Option<Fingerprint> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A fingerprint from wire bytes (exactly 32).
pub fn fingerprint_from_wire(field: &str, b: &[u8]) -> Result<Fingerprint, ProofError> {
    b.try_into()
        .map_err(|_| ProofError(format!("{field}: a signer is 32 bytes, not {}", b.len())))
}

/// A federation CA made once per test process, and signers of its sites.
#[cfg(test)]
pub(crate) mod test_pki {
    use std::sync::{Arc, OnceLock};

    use super::Signer;
    use crate::identity::{Pair, Role, SiteId, Validity, init_ca, issue_site};

    /// The trust domain of the tests' CA.
    pub const TD: &str = "multimesh.test";

    /// The tests' federation CA.
    pub fn ca() -> &'static Pair {
        static CA: OnceLock<Pair> = OnceLock::new();
        CA.get_or_init(|| init_ca(TD, 1).expect("test CA"))
    }

    /// A signer for `site`, with a certificate of the tests' CA.
    pub fn signer(site: &str) -> Arc<Signer> {
        let pair = issue_site(
            ca(),
            &SiteId::new(TD, site, Role::Federation).expect("site"),
            Validity::days(1),
        )
        .expect("site certificate");
        let cert = crate::identity::cert_from_pem(&pair.cert_pem).expect("cert");
        let key = crate::identity::key_from_pem(&pair.key_pem).expect("key");
        Arc::new(Signer::new(&cert, &key).expect("signer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Role, SiteId, Validity, init_ca, issue_site};

    fn der(pem: &str) -> CertificateDer<'static> {
        crate::identity::cert_from_pem(pem).unwrap()
    }

    fn key(pem: &str) -> PrivateKeyDer<'static> {
        crate::identity::key_from_pem(pem).unwrap()
    }

    #[test]
    fn a_seal_opens_only_with_its_own_bytes_context_and_certificate() {
        let ca = init_ca("multimesh.test", 1).unwrap();
        let b = issue_site(
            &ca,
            &SiteId::new("multimesh.test", "b", Role::Federation).unwrap(),
            Validity::days(1),
        )
        .unwrap();
        let signer = Signer::new(&der(&b.cert_pem), &key(&b.key_pem)).unwrap();
        let v = Verifier::new(&[der(&ca.cert_pem)], "multimesh.test").unwrap();
        let now = UnixTime::now();
        let sigs = v.admit_all(&[signer.certificate().0.clone()], now).unwrap();
        let seal = signer.seal(Context::Record, b"payment".to_vec());
        assert_eq!(v.open(&sigs, Context::Record, &seal).unwrap().site, "b");
        // Another kind of item: refused.
        assert!(v.open(&sigs, Context::Head, &seal).is_err());
        // Changed bytes: refused.
        let mut forged = seal.clone();
        forged.bytes = b"paymenT".to_vec();
        assert!(v.open(&sigs, Context::Record, &forged).is_err());
        // A signer the message does not carry: refused.
        let mut other = seal.clone();
        other.signer = [7; 32];
        assert!(v.open(&sigs, Context::Record, &other).is_err());
    }

    #[test]
    fn a_remembered_seal_still_needs_its_exact_signature_and_an_admitted_signer() {
        let ca = init_ca("multimesh.test", 1).unwrap();
        let id = SiteId::new("multimesh.test", "b", Role::Federation).unwrap();
        let b = issue_site(&ca, &id, Validity::days(1)).unwrap();
        let signer = Signer::new(&der(&b.cert_pem), &key(&b.key_pem)).unwrap();
        let v = Verifier::new(&[der(&ca.cert_pem)], "multimesh.test").unwrap();
        let sigs = v
            .admit_all(&[signer.certificate().0.clone()], UnixTime::now())
            .unwrap();
        let seal = signer.seal(Context::Record, b"payment".to_vec());
        for _ in 0..2 {
            assert!(v.open(&sigs, Context::Record, &seal).is_ok());
        }
        // The same bytes under another signature: checked, and refused.
        let mut bad = seal.clone();
        bad.signature[10] ^= 1;
        assert!(v.open(&sigs, Context::Record, &bad).is_err());
        // The remembered seal, in a message that does not carry its certificate: refused.
        assert!(v.open(&HashMap::new(), Context::Record, &seal).is_err());
    }

    #[test]
    fn certificates_of_a_foreign_ca_or_trust_domain_are_not_admitted() {
        let ca = init_ca("multimesh.test", 1).unwrap();
        let foreign = init_ca("multimesh.test", 1).unwrap();
        let id = SiteId::new("multimesh.test", "m", Role::Federation).unwrap();
        let m = issue_site(&foreign, &id, Validity::days(1)).unwrap();
        let v = Verifier::new(&[der(&ca.cert_pem)], "multimesh.test").unwrap();
        let err = v
            .admit(der(&m.cert_pem).as_ref(), UnixTime::now())
            .unwrap_err();
        assert!(
            err.0.contains("not a valid federation certificate"),
            "{err}"
        );
        let other_td = init_ca("other.test", 1).unwrap();
        let o = issue_site(
            &other_td,
            &SiteId::new("other.test", "o", Role::Federation).unwrap(),
            Validity::days(1),
        )
        .unwrap();
        let v2 = Verifier::new(&[der(&other_td.cert_pem)], "multimesh.test").unwrap();
        let err = v2
            .admit(der(&o.cert_pem).as_ref(), UnixTime::now())
            .unwrap_err();
        assert!(err.0.contains("outside trust domain"), "{err}");
    }
}
