//! Mutual TLS between sites (rustls, ring provider, no OpenSSL).
//!
//! Both directions authorise the other side by its SPIFFE ID, not merely by the CA: the server
//! accepts a client only if its certificate chains to the federation CA *and* carries an ID its
//! [`Callers`] admit (a configured peer's `federationd`, this site's own edge agent, or any
//! site's edge agent, by listener); the client accepts a server only if it carries exactly the
//! ID (site and role) it meant to dial. Refusals are logged with the reason
//! (foreign CA, expired, unlisted SPIFFE ID, no certificate) by [`describe_handshake_error`].

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use crate::identity::{Role, SiteId, site_id_of};

/// The crypto provider used everywhere (one TLS stack, one provider).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Errors building TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA bundle holds no usable certificate.
    #[error("CA bundle: {0}")]
    Roots(String),
    /// rustls refused the configuration.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(String),
    /// A certificate or key file is unusable.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The certificate does not belong to this site.
    #[error("certificate {path} is for {found}, but this site is {expected}")]
    WrongCertificate {
        /// The certificate file.
        path: String,
        /// The SPIFFE ID found.
        found: String,
        /// The SPIFFE ID expected.
        expected: String,
    },
}

/// Loads a site's TLS material from PEM files (CA bundle, certificate chain, key) and checks
/// that the certificate carries `spiffe://<trust_domain>/site/<site>/<role>`.
pub fn load_site(
    files: &crate::config::TlsFiles,
    trust_domain: &str,
    site: &str,
    role: Role,
) -> Result<SiteTls, TlsError> {
    use crate::identity::{read_certs, read_key};
    let ca = read_certs(&files.ca)?;
    let chain = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let expected = SiteId::new(trust_domain, site, role)?;
    let found = site_id_of(&chain[0]).map_err(|e| TlsError::Identity(e.at(&files.cert)))?;
    if found != expected {
        return Err(TlsError::WrongCertificate {
            path: files.cert.display().to_string(),
            found: found.uri(),
            expected: expected.uri(),
        });
    }
    SiteTls::new(ca, chain, key)
}

/// Material for one site's TLS: its CA roots, certificate chain and key.
pub struct SiteTls {
    /// The federation CA bundle peers are checked against: what was read when this value was
    /// built at first; replaced while running when the bundle file changes (see [`Trusted`]).
    pub trusted: Arc<Trusted>,
    /// This site's certificate chain, as read when this value was built.
    pub chain: Vec<CertificateDer<'static>>,
    /// This site's private key, as read when this value was built.
    pub key: PrivateKeyDer<'static>,
    /// What this site's handshakes present: `chain` and `key` at first; the edge agent
    /// replaces it when its certificate files change (see [`Presented`]).
    pub presented: Arc<Presented>,
}

/// A federation CA bundle, ready for handshakes.
pub struct Trust {
    /// The CA certificates.
    pub roots: Arc<RootCertStore>,
    /// How many intermediate CAs a peer's chain may hold: the largest `pathLen` of the roots
    /// (`None`: a root sets no limit). webpki does not apply a trust anchor's own constraints.
    pub max_intermediates: Option<usize>,
    /// The chain check of client certificates against `roots`.
    clients: Arc<dyn ClientCertVerifier>,
}

impl Trust {
    /// Builds the roots from CA certificates, refusing one that may not sign certificates.
    pub fn new(ca: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        let mut max_intermediates = Some(0usize);
        for (i, c) in ca.into_iter().enumerate() {
            let path_len =
                ca_constraints(&c).map_err(|e| TlsError::Roots(format!("[{i}]: {e}")))?;
            max_intermediates = match (max_intermediates, path_len) {
                (Some(m), Some(p)) => Some(m.max(p)),
                _ => None,
            };
            roots.add(c).map_err(|e| TlsError::Roots(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(TlsError::Roots("no CA certificate".into()));
        }
        let roots = Arc::new(roots);
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        Ok(Self {
            roots,
            max_intermediates,
            clients,
        })
    }
}

/// The CA bundle a site checks peers against, replaceable while it runs (like [`Presented`]):
/// each new handshake, on either side, checks the peer against the current bundle.
pub struct Trusted(std::sync::Mutex<Arc<Trust>>);

impl Trusted {
    /// The bundle trusted now.
    pub fn current(&self) -> Arc<Trust> {
        crate::locks::lock(&self.0).clone()
    }

    /// Trusts what `with` trusts from the next handshake on.
    pub fn replace(&self, with: &Trusted) {
        let next = with.current();
        *crate::locks::lock(&self.0) = next;
    }
}

impl fmt::Debug for Trusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Trusted")
    }
}

/// The certificate and key a site presents in its handshakes, replaceable while it runs:
/// each new handshake, on either side, takes the current one; connections already open keep
/// the one they were made with. Rotation without a restart replaces it.
pub struct Presented(std::sync::Mutex<Arc<CertifiedKey>>);

impl Presented {
    fn new(
        chain: &[CertificateDer<'static>],
        key: &PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let signing = provider().key_provider.load_private_key(key.clone_key())?;
        Ok(Self(std::sync::Mutex::new(Arc::new(CertifiedKey::new(
            chain.to_vec(),
            signing,
        )))))
    }

    /// The certificate and key presented now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        crate::locks::lock(&self.0).clone()
    }

    /// Presents what `with` presents from the next handshake on.
    pub fn replace(&self, with: &Presented) {
        let next = with.current();
        *crate::locks::lock(&self.0) = next;
    }

    /// Checks that the key is the one the certificate was issued for (rustls's check).
    fn consistent(&self) -> Result<(), TlsError> {
        match self.current().keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl fmt::Debug for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Presented")
    }
}

impl ResolvesServerCert for Presented {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for Presented {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl SiteTls {
    /// Builds the roots from CA certificates.
    pub fn new(
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let trust = Trust::new(ca)?;
        if chain.is_empty() {
            return Err(TlsError::Identity(crate::identity::IdentityError::Pem {
                path: "certificate".into(),
                what: "no CERTIFICATE block".into(),
            }));
        }
        Ok(Self {
            trusted: Arc::new(Trusted(std::sync::Mutex::new(Arc::new(trust)))),
            presented: Arc::new(Presented::new(&chain, &key)?),
            chain,
            key,
        })
    }
}

impl SiteTls {
    /// The CA certificates trusted now.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.trusted.current().roots.clone()
    }

    /// Checks that the private key presented is the one its certificate was issued for (their
    /// public keys are compared): with another key every handshake and every origin proof
    /// fails at the peer.
    pub fn key_matches(&self) -> Result<(), String> {
        self.presented.current().keys_match().map_err(|e| match e {
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                "the key does not match the certificate's public key".to_string()
            }
            other => format!("the key cannot be compared with the certificate: {other}"),
        })
    }
}

/// Verifies a site's certificate `chain` to `roots` at `at`, for use as a TLS client and as a
/// TLS server (a site certificate is both): what a peer's handshake checks of it.
pub fn verify_chain(
    chain: &[CertificateDer<'static>],
    roots: &RootCertStore,
    at: time::OffsetDateTime,
) -> Result<(), String> {
    let end_entity = chain.first().ok_or("no certificate")?;
    let ee = webpki::EndEntityCert::try_from(end_entity).map_err(|e| e.to_string())?;
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(at.unix_timestamp()).unwrap_or(0),
    ));
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &roots.roots,
            &chain[1..],
            at,
            usage,
            None,
            None,
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Checks that a root may sign certificates (basicConstraints cA, and keyUsage keyCertSign when
/// it has a keyUsage) and returns its `pathLen` (`None`: unlimited).
fn ca_constraints(der: &CertificateDer<'_>) -> Result<Option<usize>, String> {
    let (_, c) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("unparsable CA certificate: {e}"))?;
    let subject = c.subject().to_string();
    let bc = c
        .basic_constraints()
        .map_err(|e| format!("{subject}: bad basicConstraints: {e}"))?
        .map(|b| b.value);
    let Some(bc) = bc.filter(|b| b.ca) else {
        return Err(format!(
            "{subject} is not a CA certificate (basicConstraints cA is not set)"
        ));
    };
    if let Some(ku) = c
        .key_usage()
        .map_err(|e| format!("{subject}: bad keyUsage: {e}"))?
        && !ku.value.key_cert_sign()
    {
        return Err(format!(
            "{subject} may not sign certificates (its keyUsage lacks keyCertSign)"
        ));
    }
    Ok(bc.path_len_constraint.map(|p| p as usize))
}

/// Refuses a chain with more intermediate CAs than the roots allow.
fn check_intermediates(found: usize, max: Option<usize>) -> Result<(), rustls::Error> {
    match max {
        Some(m) if found > m => Err(refuse(format!(
            "the certificate chain holds {found} intermediate CA certificate(s); the federation \
             CA allows {m} (its pathLen)"
        ))),
        _ => Ok(()),
    }
}

#[derive(Debug)]
struct PeerRefused(String);

impl fmt::Display for PeerRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PeerRefused {}

fn refuse(msg: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(PeerRefused(
        msg,
    )))))
}

/// The sites whose `federationd` may connect to this one, asked at every handshake: the set
/// may change while the listener runs (peers added to or removed from the config).
pub trait PeerSet: Send + Sync + fmt::Debug {
    /// Whether `site` is a configured peer now.
    fn contains(&self, site: &str) -> bool;
}

impl PeerSet for BTreeSet<String> {
    fn contains(&self, site: &str) -> bool {
        BTreeSet::contains(self, site)
    }
}

/// Who may connect to a listener (after the chain to the CA and the trust domain).
#[derive(Clone, Debug)]
pub enum Callers {
    /// `federationd`'s peer listener: the `federationd` of each configured peer (catalog sync)
    /// and this site's own edge agent (its route feed). Each RPC checks the role again.
    Federation {
        /// This site.
        site: String,
        /// The configured peers, as they are at each handshake.
        peers: Arc<dyn PeerSet>,
    },
    /// An edge agent's ingress: the edge agent of any site of the trust domain (each call is
    /// then admitted by the service's consumer scope, each edge-node link by configuration).
    AnyEdge,
}

impl Callers {
    /// Why `id` may not connect, if it may not.
    pub fn refusal(&self, id: &SiteId) -> Option<String> {
        match self {
            Callers::Federation { site, peers } => match id.role {
                Role::Federation if peers.contains(&id.site) => None,
                Role::Federation => Some(format!("SPIFFE ID {id} is not a configured peer")),
                Role::Edge if &id.site == site => None,
                Role::Edge => Some(format!(
                    "SPIFFE ID {id} is another site's edge agent: only this site's own edge \
                     agent may connect here"
                )),
            },
            Callers::AnyEdge => (id.role != Role::Edge).then(|| {
                format!("SPIFFE ID {id} is not an edge agent's: federationd carries no calls")
            }),
        }
    }
}

/// Accepts a client certificate that chains to the CA trusted now and carries an ID `callers`
/// admit.
#[derive(Debug)]
struct PeerClientVerifier {
    trusted: Arc<Trusted>,
    algs: WebPkiSupportedAlgorithms,
    trust_domain: String,
    callers: Callers,
}

impl ClientCertVerifier for PeerClientVerifier {
    /// None: the bundle may change while the server runs, and a site's client presents its
    /// one certificate whatever the hints say.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let trust = self.trusted.current();
        check_intermediates(intermediates.len(), trust.max_intermediates)?;
        trust
            .clients
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = site_id_of(end_entity).map_err(|e| refuse(e.to_string()))?;
        if id.trust_domain != self.trust_domain {
            return Err(refuse(format!(
                "SPIFFE ID {id} is outside trust domain {}",
                self.trust_domain
            )));
        }
        if let Some(why) = self.callers.refusal(&id) {
            return Err(refuse(why));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Accepts a server certificate that chains to the CA trusted now and carries exactly
/// `expected`.
#[derive(Debug)]
struct PeerServerVerifier {
    trusted: Arc<Trusted>,
    algs: WebPkiSupportedAlgorithms,
    expected: SiteId,
}

impl ServerCertVerifier for PeerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let trust = self.trusted.current();
        check_intermediates(intermediates.len(), trust.max_intermediates)?;
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &trust.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let id = site_id_of(end_entity).map_err(|e| refuse(e.to_string()))?;
        if id != self.expected {
            return Err(refuse(format!(
                "server presented SPIFFE ID {id}, expected {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// The server side of `federationd`'s peer listener (see [`Callers::Federation`]).
pub fn server_config(
    tls: &SiteTls,
    trust_domain: &str,
    site: &str,
    peers: Arc<dyn PeerSet>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let callers = Callers::Federation {
        site: site.to_string(),
        peers,
    };
    build_server_config(tls, trust_domain, callers, vec![b"h2".to_vec()])
}

/// The server side of edge-agent ingress: requires an edge agent's certificate of any site of
/// the trust domain (per-service consumer scopes are checked per request), offering `alpn`.
pub fn any_site_server_config(
    tls: &SiteTls,
    trust_domain: &str,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    build_server_config(tls, trust_domain, Callers::AnyEdge, alpn)
}

fn build_server_config(
    tls: &SiteTls,
    trust_domain: &str,
    callers: Callers,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PeerClientVerifier {
        trusted: tls.trusted.clone(),
        algs: provider.signature_verification_algorithms,
        trust_domain: trust_domain.to_string(),
        callers,
    });
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(tls.presented.clone());
    tls.presented.consistent()?;
    cfg.alpn_protocols = alpn;
    Ok(Arc::new(cfg))
}

/// The client side of a link to `expected`.
pub fn client_config(tls: &SiteTls, expected: SiteId) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_alpn(tls, expected, vec![b"h2".to_vec()])
}

/// The client side of a connection to `expected`, offering `alpn`.
pub fn client_config_alpn(
    tls: &SiteTls,
    expected: SiteId,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PeerServerVerifier {
        trusted: tls.trusted.clone(),
        algs: provider.signature_verification_algorithms,
        expected,
    });
    let mut cfg = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(tls.presented.clone());
    tls.presented.consistent()?;
    cfg.alpn_protocols = alpn;
    Ok(Arc::new(cfg))
}

/// Says in plain words why a TLS handshake failed (foreign CA, expired certificate, unlisted
/// SPIFFE ID, no certificate, not TLS at all).
pub fn describe_handshake_error(e: &std::io::Error) -> String {
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return format!("connection failed during the TLS handshake: {e}");
    };
    match err {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => {
                "certificate is not signed by the federation CA (foreign CA)".to_string()
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate has expired".to_string()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate is not valid yet".to_string()
            }
            CertificateError::BadSignature => {
                "certificate signature does not verify against the federation CA (foreign CA with the same name, or a tampered certificate)".to_string()
            }
            CertificateError::Other(o) => o.to_string(),
            other => format!("invalid certificate: {other:?}"),
        },
        rustls::Error::NoCertificatesPresented => {
            "no client certificate presented (anonymous TLS client)".to_string()
        }
        rustls::Error::InvalidMessage(_) => "not a TLS handshake (plaintext client?)".to_string(),
        rustls::Error::AlertReceived(a) => {
            format!("the other side refused our certificate ({a:?})")
        }
        other => format!("TLS error: {other}"),
    }
}

/// A short, bounded label for why a TLS handshake failed (for metrics): `foreign-ca`,
/// `expired`, `not-yet-valid`, `unauthorised-id`, `no-client-cert`, `not-tls`, `peer-refused`,
/// `io` or `other`.
pub fn handshake_failure_kind(e: &std::io::Error) -> &'static str {
    let Some(err) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return "io";
    };
    match err {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "foreign-ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not-yet-valid"
            }
            CertificateError::Other(_) => "unauthorised-id",
            _ => "other",
        },
        rustls::Error::NoCertificatesPresented => "no-client-cert",
        rustls::Error::InvalidMessage(_) => "not-tls",
        rustls::Error::AlertReceived(_) => "peer-refused",
        _ => "other",
    }
}

#[cfg(all(test, feature = "pki"))]
mod ca_tests {
    use super::*;
    use crate::identity::Role;
    use crate::pki::{Validity, init_ca, issue_site};
    use rustls::pki_types::pem::PemObject;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("a certificate")
    }

    #[test]
    fn only_a_ca_that_may_sign_certificates_is_a_root_and_its_path_len_is_kept() {
        let ca = init_ca("multimesh.test", 1).expect("ca");
        assert_eq!(ca_constraints(&der(&ca.cert_pem)), Ok(Some(0)));
        // A site certificate given as the CA: refused, with why.
        let id = SiteId::new("multimesh.test", "a", Role::Edge).expect("id");
        let leaf = issue_site(&ca, &id, Validity::days(1)).expect("leaf");
        let err = ca_constraints(&der(&leaf.cert_pem)).expect_err("a leaf is no CA");
        assert!(err.contains("not a CA certificate"), "{err}");
        // A CA whose keyUsage does not allow signing certificates: refused.
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        let no_sign = p.self_signed(&key).expect("self-signed");
        let err = ca_constraints(no_sign.der()).expect_err("cannot sign certificates");
        assert!(err.contains("keyCertSign"), "{err}");
        assert!(check_intermediates(1, Some(0)).is_err());
        assert!(check_intermediates(1, None).is_ok());
    }
}
