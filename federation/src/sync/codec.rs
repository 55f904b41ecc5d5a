//! The sync messages' signed items, both ways, with no I/O: opening what a peer sent (origin
//! proofs checked, fields validated, clocks bounded) and sealing what this site sends.
//!
//! Whatever a peer sends passes [`open_records`], [`open_changes`] or [`open_heads`] before it
//! reaches the catalog. Each checks, per item: the signer's certificate (federation CA, trust
//! domain, validity), the signature over the exact bytes, that the signer is the item's origin,
//! and that the origin's stamp or beat is not from the future beyond [`MAX_CLOCK_SKEW`].

use multimesh_core::locks::lock;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use multimesh_proto::catalog::v1 as wire;
use prost::Message;
use rustls::pki_types::UnixTime;

use crate::catalog::{Catalog, Change, Head};
use crate::error::Refusal;
use crate::model::{Key, Proof, Record, Site, Stamp};
use crate::proof::{
    CertDer, Context, Fingerprint, Seal, Signatory, Signer, Verifier, fingerprint_from_wire,
};

/// How far in the future an origin's epoch (its start time) or liveness beat (its clock) may
/// lie before it is refused: clocks of sites may disagree by this much.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Most heads one message may carry (one per origin).
pub const MAX_HEADS: usize = 1024;

/// What a message carried, opened: its items, and the certificates that signed them (for the
/// catalog to keep and relay).
#[derive(Debug)]
pub struct Opened<T> {
    /// The items, in order.
    pub items: Vec<T>,
    /// The signers' certificates.
    pub certs: Vec<Arc<CertDer>>,
}

/// The seal this site made for one own key: at which stamp, live or not.
type OwnSeal = (Stamp, bool, Arc<Proof>);

/// Wall-clock instants an item is checked against.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Now, as the certificate validity check sees it.
    pub now: UnixTime,
    /// The latest epoch accepted (ns since the Unix epoch).
    pub max_epoch: u64,
    /// The latest beat accepted (ms since the Unix epoch).
    pub max_beat: u64,
}

impl Clock {
    /// The bounds at `now`.
    pub fn at(now: SystemTime) -> Self {
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let limit = since + MAX_CLOCK_SKEW;
        Self {
            now: UnixTime::since_unix_epoch(since),
            max_epoch: u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX),
            max_beat: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn check_stamp(&self, field: &str, key: &Key, stamp: Stamp) -> Result<(), Refusal> {
        if stamp.epoch > self.max_epoch {
            return Err(Refusal::Proof(format!(
                "{field}: {key} has epoch {} ns, more than {} s ahead of this site's clock",
                stamp.epoch,
                MAX_CLOCK_SKEW.as_secs()
            )));
        }
        Ok(())
    }
}

fn proof(field: &str, e: crate::proof::ProofError) -> Refusal {
    Refusal::Proof(format!("{field}: {e}"))
}

fn seal_from_wire(
    field: &str,
    bytes: &[u8],
    signature: &[u8],
    signer: &[u8],
) -> Result<Seal, Refusal> {
    Ok(Seal {
        bytes: bytes.to_vec(),
        signature: signature.to_vec(),
        signer: fingerprint_from_wire(field, signer).map_err(|e| Refusal::Proof(e.0))?,
    })
}

/// The certificates of a message, checked.
fn admit(
    verifier: &Verifier,
    clock: &Clock,
    certs: &[Vec<u8>],
) -> Result<HashMap<Fingerprint, Arc<Signatory>>, Refusal> {
    verifier
        .admit_all(certs, clock.now)
        .map_err(|e| Refusal::Proof(e.0))
}

/// The certificates that signed what was accepted, for the catalog to keep and relay.
fn used(
    signatories: &HashMap<Fingerprint, Arc<Signatory>>,
    signers: impl Iterator<Item = Fingerprint>,
) -> Vec<Arc<CertDer>> {
    let mut out: BTreeMap<Fingerprint, Arc<CertDer>> = BTreeMap::new();
    for fp in signers {
        if let Some(s) = signatories.get(&fp) {
            out.entry(fp).or_insert_with(|| s.cert.clone());
        }
    }
    out.into_values().collect()
}

fn open_record(
    verifier: &Verifier,
    clock: &Clock,
    signatories: &HashMap<Fingerprint, Arc<Signatory>>,
    field: &str,
    w: &wire::SignedRecord,
) -> Result<(Key, Record), Refusal> {
    if w.record.len() > crate::model::MAX_RECORD_BYTES {
        return Err(Refusal::TooLarge(format!(
            "{field}: a record of {} bytes is over the limit of {}",
            w.record.len(),
            crate::model::MAX_RECORD_BYTES
        )));
    }
    if w.header.len() > 1024 {
        return Err(Refusal::TooLarge(format!(
            "{field}: a record header of {} bytes is over the limit of 1024",
            w.header.len()
        )));
    }
    let header = seal_from_wire(field, &w.header, &w.signature, &w.signer)?;
    let signer = verifier
        .open(signatories, Context::Record, &header)
        .map_err(|e| proof(field, e))?;
    let proof_of = Proof {
        header,
        record: (!w.record.is_empty()).then(|| crate::proof::Blob(w.record.clone())),
    };
    let (key, record) = Record::from_proof(field, Arc::new(proof_of))?;
    if key.origin != signer.site {
        return Err(Refusal::Proof(format!(
            "{field}: {key} is signed by site {}, not by its origin",
            signer.site
        )));
    }
    clock.check_stamp(field, &key, record.stamp)?;
    Ok((key, record))
}

/// Opens the records of a snapshot chunk. Returns them with the certificates that signed them.
pub fn open_records(
    verifier: &Verifier,
    clock: &Clock,
    records: &[wire::SignedRecord],
    certs: &[Vec<u8>],
) -> Result<Opened<(Key, Record)>, Refusal> {
    let signatories = admit(verifier, clock, certs)?;
    let out = records
        .iter()
        .enumerate()
        .map(|(i, w)| open_record(verifier, clock, &signatories, &format!("records[{i}]"), w))
        .collect::<Result<Vec<_>, _>>()?;
    let certs = used(
        &signatories,
        out.iter()
            .filter_map(|(_, r)| r.proof.as_ref().map(|p| p.header.signer)),
    );
    Ok(Opened { items: out, certs })
}

/// Opens the changes of a delta. Returns them with the certificates that signed them.
pub fn open_changes(
    verifier: &Verifier,
    clock: &Clock,
    changes: &[wire::Change],
    certs: &[Vec<u8>],
) -> Result<Opened<(Key, Change)>, Refusal> {
    let signatories = admit(verifier, clock, certs)?;
    let out = changes
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let field = format!("changes[{i}]");
            match &c.kind {
                Some(wire::change::Kind::Signed(w)) => {
                    open_record(verifier, clock, &signatories, &field, w)
                        .map(|(k, r)| (k, Change::Put(r)))
                }
                Some(wire::change::Kind::Retracted(r)) => {
                    let key = Key {
                        origin: r.origin.clone(),
                        namespace: r.namespace.clone(),
                        name: r.name.clone(),
                    };
                    crate::names::dns_label(&format!("{field}.origin"), &key.origin)?;
                    crate::names::dns_label(&format!("{field}.namespace"), &key.namespace)?;
                    crate::names::dns_label(&format!("{field}.name"), &key.name)?;
                    Ok((key, Change::Retract))
                }
                None => Err(Refusal::Invalid(crate::error::InvalidField::new(
                    &format!("{field}.kind"),
                    "<missing>",
                    "is required",
                ))),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let certs = used(
        &signatories,
        out.iter().filter_map(|(_, c)| match c {
            Change::Put(r) => r.proof.as_ref().map(|p| p.header.signer),
            Change::Retract => None,
        }),
    );
    Ok(Opened { items: out, certs })
}

/// Opens the heads of a hello or heartbeat: each must be signed by its origin.
pub fn open_heads(
    verifier: &Verifier,
    clock: &Clock,
    heads: &[wire::SignedHead],
    certs: &[Vec<u8>],
) -> Result<Opened<(Site, Head)>, Refusal> {
    if heads.len() > MAX_HEADS {
        return Err(Refusal::TooLarge(format!(
            "{} origin heads, over the limit of {MAX_HEADS}",
            heads.len()
        )));
    }
    let signatories = admit(verifier, clock, certs)?;
    let out = heads
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let field = format!("heads[{i}]");
            let seal = seal_from_wire(&field, &w.head, &w.signature, &w.signer)?;
            let signer = verifier
                .open(&signatories, Context::Head, &seal)
                .map_err(|e| proof(&field, e))?;
            let h = wire::OriginHead::decode(seal.bytes.as_slice()).map_err(|e| {
                Refusal::Invalid(crate::error::InvalidField::new(
                    &field,
                    "<signed bytes>",
                    &format!("is not an OriginHead: {e}"),
                ))
            })?;
            crate::names::dns_label(&format!("{field}.origin"), &h.origin)?;
            if h.origin != signer.site {
                return Err(Refusal::Proof(format!(
                    "{field}: the head of {} is signed by site {}",
                    h.origin, signer.site
                )));
            }
            if h.epoch > clock.max_epoch || h.beat > clock.max_beat {
                return Err(Refusal::Proof(format!(
                    "{field}: the head of {} (epoch {} ns, beat {} ms) is more than {} s ahead of this site's clock",
                    h.origin,
                    h.epoch,
                    h.beat,
                    MAX_CLOCK_SKEW.as_secs()
                )));
            }
            Ok((
                h.origin,
                Head {
                    stamp: Stamp {
                        epoch: h.epoch,
                        version: h.version,
                    },
                    beat: h.beat,
                    seal: Some(Arc::new(seal)),
                },
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let certs = used(
        &signatories,
        out.iter()
            .filter_map(|(_, h)| h.seal.as_ref().map(|s| s.signer)),
    );
    Ok(Opened { items: out, certs })
}

/// Seals this site's own records and head, remembering the seal of each own key's current
/// stamp (so a snapshot to a new peer does not sign every record again).
pub struct Sealer {
    site: Site,
    signer: Mutex<Arc<Signer>>,
    /// The signer before the last [`Sealer::replace`]: a message sealed just before it still
    /// finds its certificate.
    previous: Mutex<Option<Arc<Signer>>>,
    records: Mutex<HashMap<Key, OwnSeal>>,
    head: Mutex<Option<(Stamp, u64, Arc<Seal>)>>,
}

impl Sealer {
    /// A sealer for `site`'s items.
    pub fn new(site: &str, signer: Arc<Signer>) -> Self {
        Self {
            site: site.to_string(),
            signer: Mutex::new(signer),
            previous: Mutex::new(None),
            records: Mutex::new(HashMap::new()),
            head: Mutex::new(None),
        }
    }

    /// The signer items are sealed with now.
    pub fn signer(&self) -> Arc<Signer> {
        lock(&self.signer).clone()
    }

    /// Seals with `signer` from now on (a rotated certificate); no seal made by the previous
    /// one is handed out again.
    pub fn replace(&self, signer: Arc<Signer>) {
        // Under the signer's lock, so no seal by the previous signer enters a cache after
        // the caches are cleared.
        let mut current = lock(&self.signer);
        lock(&self.records).clear();
        *lock(&self.head) = None;
        let before = std::mem::replace(&mut *current, signer);
        *lock(&self.previous) = Some(before);
    }

    /// The certificate of `fp` when it is this site's signer (now or before the last
    /// replacement).
    pub fn certificate(&self, fp: &Fingerprint) -> Option<Arc<CertDer>> {
        let now = self.signer();
        if now.fingerprint() == *fp {
            return Some(now.certificate().clone());
        }
        lock(&self.previous)
            .as_ref()
            .filter(|p| p.fingerprint() == *fp)
            .map(|p| p.certificate().clone())
    }

    fn seal_own(&self, key: &Key, record: &Record) -> Arc<Proof> {
        let live = record.service().is_some();
        let signer = lock(&self.signer);
        let mut m = lock(&self.records);
        if let Some((stamp, l, seal)) = m.get(key)
            && *stamp == record.stamp
            && *l == live
        {
            return seal.clone();
        }
        let bytes = record.encode(key);
        let header = crate::model::header_of(key, record, &bytes).encode_to_vec();
        let proof = Arc::new(Proof {
            header: signer.seal(Context::Record, header),
            record: Some(crate::proof::Blob(bytes)),
        });
        m.insert(key.clone(), (record.stamp, live, proof.clone()));
        proof
    }

    /// This site's head, sealed.
    pub fn seal_head(&self, head: &Head) -> Arc<Seal> {
        let signer = lock(&self.signer);
        let mut h = lock(&self.head);
        if let Some((stamp, beat, seal)) = h.as_ref()
            && *stamp == head.stamp
            && *beat == head.beat
        {
            return seal.clone();
        }
        let bytes = wire::OriginHead {
            origin: self.site.clone(),
            epoch: head.stamp.epoch,
            version: head.stamp.version,
            beat: head.beat,
        }
        .encode_to_vec();
        let seal = Arc::new(signer.seal(Context::Head, bytes));
        *h = Some((head.stamp, head.beat, seal.clone()));
        seal
    }

    /// The proof of a record to send: this site's own (sealed here) or the origin's (as
    /// received). `None` for another origin's record that has no proof (never sent).
    pub fn seal_of(&self, key: &Key, record: &Record) -> Option<Arc<Proof>> {
        if key.origin == self.site {
            Some(self.seal_own(key, record))
        } else {
            record.proof.clone()
        }
    }
}

fn signed_record(p: &Proof) -> wire::SignedRecord {
    wire::SignedRecord {
        header: p.header.bytes.clone(),
        signature: p.header.signature.clone(),
        signer: p.header.signer.to_vec(),
        record: p.record.as_ref().map(|r| r.0.clone()).unwrap_or_default(),
    }
}

/// Looks up the certificates of `signers` (this site's own, or held in the catalog) that this
/// site would admit at `now` (`verifier`: the federation CA bundle in use, validity, a
/// federation identity), as every peer checks them. A seal whose certificate has ended (an
/// origin that stopped renewing it), was issued by a CA no longer trusted (a rotated CA), or is
/// unknown gets none, and [`batches`] leaves its item out: a receiver refuses a whole message
/// that carries one, so one such origin would otherwise block everything relayed with it.
pub fn certificates_of(
    catalog: &Catalog,
    own: &Sealer,
    verifier: &Verifier,
    signers: impl Iterator<Item = Fingerprint>,
    now: UnixTime,
) -> HashMap<Fingerprint, Arc<CertDer>> {
    let mut out = HashMap::new();
    let mut refused = Vec::new();
    for fp in signers {
        if out.contains_key(&fp) || refused.contains(&fp) {
            continue;
        }
        let cert = own.certificate(&fp).or_else(|| catalog.cert(&fp).cloned());
        match cert.filter(|c| verifier.admit(&c.0, now).is_ok()) {
            Some(c) => {
                out.insert(fp, c);
            }
            None => refused.push(fp),
        }
    }
    out
}

/// One message's worth of signed items and the certificates they need.
#[derive(Debug)]
pub struct Batch<T> {
    /// The items, in order.
    pub items: Vec<T>,
    /// The certificates of the items' signers (DER).
    pub certificates: Vec<Vec<u8>>,
}

impl<T> Default for Batch<T> {
    fn default() -> Self {
        Self {
            items: Vec::new(),
            certificates: Vec::new(),
        }
    }
}

/// Cuts items into messages of at most `max_items` items and about `budget` bytes (an item
/// larger than the budget travels alone). Each message carries the certificates its items
/// need; an item whose signer has no certificate in `certs` (see [`certificates_of`]) is left
/// out.
pub fn batches<T>(
    items: Vec<(T, usize, Option<Fingerprint>)>,
    certs: &HashMap<Fingerprint, Arc<CertDer>>,
    max_items: usize,
    budget: usize,
) -> Vec<Batch<T>> {
    let mut out = Vec::new();
    let mut cur: Batch<T> = Batch::default();
    let mut bytes = 0usize;
    let mut signers: Vec<Fingerprint> = Vec::new();
    let sendable = items
        .into_iter()
        .filter(|(_, _, signer)| signer.is_none_or(|s| certs.contains_key(&s)));
    for (item, size, signer) in sendable {
        let new_signer = signer.filter(|s| !signers.contains(s));
        let extra = size
            + new_signer
                .and_then(|s| certs.get(&s))
                .map_or(0, |c| c.0.len());
        if !cur.items.is_empty()
            && (cur.items.len() >= max_items
                || bytes + extra > budget
                || signers.len() + usize::from(new_signer.is_some())
                    > crate::proof::MAX_CERTIFICATES)
        {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
            signers.clear();
        }
        if let Some(s) = signer
            && !signers.contains(&s)
        {
            signers.push(s);
            if let Some(c) = certs.get(&s) {
                cur.certificates.push(c.0.clone());
                bytes += c.0.len();
            }
        }
        bytes += size;
        cur.items.push(item);
    }
    if !cur.items.is_empty() {
        out.push(cur);
    }
    out
}

/// The wire form of records to send, with their sizes and signers, ready for [`batches`].
pub fn seal_records(
    sealer: &Sealer,
    records: &[(Key, Record)],
) -> Vec<(wire::SignedRecord, usize, Option<Fingerprint>)> {
    records
        .iter()
        .filter_map(|(k, r)| sealer.seal_of(k, r))
        .map(|p| {
            let w = signed_record(&p);
            let size = w.encoded_len();
            (w, size, Some(p.header.signer))
        })
        .collect()
}

/// The wire form of delta changes to send, with their sizes and signers.
pub fn seal_changes(
    sealer: &Sealer,
    changes: &[(Key, Change)],
) -> Vec<(wire::Change, usize, Option<Fingerprint>)> {
    changes
        .iter()
        .filter_map(|(k, c)| {
            let (kind, signer) = match c {
                Change::Put(r) => {
                    let p = sealer.seal_of(k, r)?;
                    (
                        wire::change::Kind::Signed(signed_record(&p)),
                        Some(p.header.signer),
                    )
                }
                Change::Retract => (
                    wire::change::Kind::Retracted(wire::Retraction {
                        origin: k.origin.clone(),
                        namespace: k.namespace.clone(),
                        name: k.name.clone(),
                    }),
                    None,
                ),
            };
            let w = wire::Change { kind: Some(kind) };
            let size = w.encoded_len();
            Some((w, size, signer))
        })
        .collect()
}

/// The heads to send: this site's own (sealed here) and every other origin's signed head whose
/// certificate this site admits at `now` (see [`certificates_of`]).
pub fn seal_heads(
    sealer: &Sealer,
    verifier: &Verifier,
    catalog: &Catalog,
    now: UnixTime,
) -> (Vec<wire::SignedHead>, HashMap<Fingerprint, Arc<CertDer>>) {
    let seals: Vec<Arc<Seal>> = catalog
        .heads()
        .iter()
        .filter_map(|(origin, h)| {
            if *origin == catalog.site() {
                Some(sealer.seal_head(h))
            } else {
                h.seal.clone()
            }
        })
        .collect();
    let certs = certificates_of(
        catalog,
        sealer,
        verifier,
        seals.iter().map(|s| s.signer),
        now,
    );
    let out = seals
        .iter()
        .filter(|s| certs.contains_key(&s.signer))
        .map(|seal| wire::SignedHead {
            head: seal.bytes.clone(),
            signature: seal.signature.clone(),
            signer: seal.signer.to_vec(),
        })
        .collect();
    (out, certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Body, Scope};
    use crate::proof::test_pki;

    fn verifier() -> Verifier {
        let ca = crate::identity::cert_from_pem(&test_pki::ca().cert_pem).expect("CA");
        Verifier::new(&[ca], test_pki::TD).expect("verifier")
    }

    fn key(origin: &str) -> Key {
        Key {
            origin: origin.into(),
            namespace: "shop".into(),
            name: "payment".into(),
        }
    }

    fn payment(version: u64) -> Record {
        Record::new(
            Stamp { epoch: 1, version },
            Body::Live(Arc::new(crate::model::test_service(80, Scope::All))),
        )
    }

    fn wire_of(p: &Proof) -> wire::SignedRecord {
        signed_record(p)
    }

    #[test]
    fn only_the_origin_can_sign_its_records_and_a_redacted_header_proves_only_a_stamp() {
        let v = verifier();
        let clock = Clock::at(SystemTime::now());
        let b = Sealer::new("b", test_pki::signer("b"));
        let m = Sealer::new("m", test_pki::signer("m"));
        let certs = vec![
            b.signer().certificate().0.clone(),
            m.signer().certificate().0.clone(),
        ];
        // b's own record, sealed by b: accepted as b's.
        let good = b.seal_of(&key("b"), &payment(3)).expect("own");
        let opened = open_records(&v, &clock, &[wire_of(&good)], &certs).expect("b's own");
        assert_eq!(opened.items[0].0, key("b"));
        assert_eq!(
            opened.certs.len(),
            1,
            "only the signer's certificate is kept"
        );
        // m "sealing" a record of b, as if it were its own: refused, naming the signer.
        let forged = Sealer::new("b", m.signer().clone())
            .seal_of(&key("b"), &payment(u64::MAX))
            .expect("sealed");
        let err = open_records(&v, &clock, &[wire_of(&forged)], &certs).unwrap_err();
        assert!(
            matches!(&err, Refusal::Proof(d) if d.contains("signed by site m")),
            "{err}"
        );
        // b's genuine header with another record under it: refused.
        let mut swapped = wire_of(&good);
        swapped.record = payment(4).encode(&key("b"));
        assert!(open_records(&v, &clock, &[swapped], &certs).is_err());
        // The header alone: hidden at b's stamp, nothing else.
        let hidden = open_records(&v, &clock, &[wire_of(&good.redacted())], &certs).unwrap();
        assert_eq!(
            hidden.items[0].1.stamp,
            Stamp {
                epoch: 1,
                version: 3
            }
        );
        assert!(hidden.items[0].1.service().is_none());
        // Without the signer's certificate in the message: refused.
        let err = open_records(&v, &clock, &[wire_of(&good)], &certs[1..]).unwrap_err();
        assert!(matches!(err, Refusal::Proof(_)), "{err}");
    }

    #[test]
    fn messages_are_cut_by_bytes_and_carry_the_certificates_they_need() {
        let b = Sealer::new("b", test_pki::signer("b"));
        let records: Vec<(Key, Record)> = (0..40)
            .map(|i| {
                let mut k = key("b");
                k.name = format!("s{i}");
                (k, payment(1))
            })
            .collect();
        let items = seal_records(&b, &records);
        let one = items[0].1;
        let certs: HashMap<Fingerprint, Arc<CertDer>> =
            [(b.signer().fingerprint(), b.signer().certificate().clone())].into();
        let cert_len = b.signer().certificate().0.len();
        let budget = cert_len + 10 * one;
        let parts = batches(items, &certs, 1000, budget);
        // Names s10..s39 are a byte longer than s0..s9, so some messages hold 9.
        assert!((4..=5).contains(&parts.len()), "{} messages", parts.len());
        assert_eq!(parts.iter().map(|p| p.items.len()).sum::<usize>(), 40);
        for p in &parts {
            assert_eq!(p.certificates.len(), 1);
            let bytes: usize = cert_len + p.items.iter().map(|i| i.encoded_len()).sum::<usize>();
            assert!(bytes <= budget, "{bytes} > {budget}");
        }
    }

    #[test]
    fn a_seal_whose_certificate_ended_is_left_out_instead_of_spoiling_the_message() {
        let b = Sealer::new("b", test_pki::signer("b"));
        let catalog = Catalog::new("b", 1, crate::catalog::Limits::default());
        let mut k = key("b");
        let items = seal_records(&b, &[(k.clone(), payment(1))]);
        let signer = b.signer().fingerprint();
        let v = verifier();
        let now = Clock::at(SystemTime::now()).now;
        let valid = certificates_of(&catalog, &b, &v, [signer].into_iter(), now);
        assert!(valid.contains_key(&signer));
        assert_eq!(batches(items, &valid, 10, 1 << 20).len(), 1);
        // Two days on, the test certificate (one day) has ended: neither it nor the item
        // travels, and an unsigned item (a retraction) still does.
        let later = Clock::at(SystemTime::now() + Duration::from_secs(2 * 86_400)).now;
        let ended = certificates_of(&catalog, &b, &v, [signer].into_iter(), later);
        assert!(ended.is_empty());
        // The same once the bundle no longer holds the CA that issued it.
        let other = crate::identity::init_ca(test_pki::TD, 1).expect("CA");
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(crate::identity::cert_from_pem(&other.cert_pem).expect("CA"))
            .expect("root");
        v.set_roots(&roots);
        let foreign = certificates_of(&catalog, &b, &v, [signer].into_iter(), now);
        assert!(foreign.is_empty());
        k.name = "other".into();
        let mut items = seal_records(&b, &[(k, payment(1))]);
        items.push((items[0].0.clone(), 1, None));
        let parts = batches(items, &ended, 10, 1 << 20);
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].items.len(), 1);
        assert!(parts[0].certificates.is_empty());
    }

    #[test]
    fn a_replaced_signer_seals_from_then_on_and_its_predecessor_is_still_found() {
        let b = Sealer::new("b", test_pki::signer("b"));
        let before = b.signer();
        let record = payment(1);
        let old = b.seal_of(&key("b"), &record).unwrap();
        assert_eq!(old.header.signer, before.fingerprint());
        let next = test_pki::signer("b");
        b.replace(next.clone());
        // Same stamp, but the cached seal of the previous signer is not handed out again.
        let new = b.seal_of(&key("b"), &record).unwrap();
        assert_eq!(new.header.signer, next.fingerprint());
        let catalog = Catalog::new("b", 1, crate::catalog::Limits::default());
        let now = Clock::at(SystemTime::now()).now;
        let certs = certificates_of(
            &catalog,
            &b,
            &verifier(),
            [before.fingerprint(), next.fingerprint()].into_iter(),
            now,
        );
        assert_eq!(
            certs.len(),
            2,
            "a message sealed just before the swap finds its certificate"
        );
    }
}
