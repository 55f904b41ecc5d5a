//! The catalog's domain types, and their validated conversion from and to the wire types of
//! `multimesh.catalog.v1`. Whatever arrives from a peer or a user passes through
//! [`Service::from_wire`] / [`Record::from_wire`] before it reaches the store.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use multimesh_proto::catalog::v1 as wire;
use serde::{Deserialize, Serialize};

use crate::error::InvalidField;
use crate::names;
use crate::proof::Seal;

/// A site name (a DNS-1123 label).
pub type Site = String;

pub use multimesh_core::service::{
    MAX_PORTS, Port, Protocol, ServiceKey, ports_from_wire, validate_ports,
};

/// Upper bounds on what one service entry may carry.
/// Upper bound on labels per service.
pub const MAX_LABELS: usize = 64;
/// Upper bound on ingress addresses per service.
pub const MAX_INGRESS: usize = 16;
/// The most sites an export may share its name with.
pub const MAX_SHARE_WITH: usize = 64;
/// Upper bound on sites in a consumer scope.
pub const MAX_SCOPE_SITES: usize = 256;

/// Identifies one exported service in the federation: its origin site, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    /// The exporting site.
    pub origin: Site,
    /// Kubernetes-style namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
}

impl Key {
    /// The service, without its origin.
    pub fn service(&self) -> ServiceKey {
        ServiceKey::new(&self.namespace, &self.name)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.namespace, self.name, self.origin)
    }
}

/// An origin's version of one entry: the origin's epoch, then its version counter.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Stamp {
    /// The origin's state incarnation (a new epoch supersedes every version of older epochs).
    pub epoch: u64,
    /// The origin's version counter at the change.
    pub version: u64,
}

/// Which sites may see a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scope {
    /// Every site of the federation.
    All,
    /// Only the named sites.
    Sites(BTreeSet<Site>),
}

impl Scope {
    /// Whether `site` may see the service.
    pub fn allows(&self, site: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Sites(s) => s.contains(site),
        }
    }

    /// The scope allowing every site either scope allows.
    pub fn union(&self, other: &Scope) -> Scope {
        match (self, other) {
            (Scope::Sites(a), Scope::Sites(b)) => Scope::Sites(a.union(b).cloned().collect()),
            _ => Scope::All,
        }
    }

    fn to_wire(&self) -> wire::ConsumerScope {
        match self {
            Scope::All => wire::ConsumerScope {
                all: true,
                sites: vec![],
            },
            Scope::Sites(s) => wire::ConsumerScope {
                all: false,
                sites: s.iter().cloned().collect(),
            },
        }
    }

    fn from_wire(field: &str, w: Option<&wire::ConsumerScope>) -> Result<Self, InvalidField> {
        let Some(w) = w else {
            return Err(InvalidField::new(field, "<missing>", "is required"));
        };
        if w.all {
            if !w.sites.is_empty() {
                return Err(InvalidField::new(
                    field,
                    w.sites.join(","),
                    "must not list sites when `all` is set",
                ));
            }
            return Ok(Scope::All);
        }
        Scope::from_sites(field, &w.sites)
    }

    /// A scope of the named sites; an empty list is refused (use [`Scope::All`]).
    pub fn from_sites(field: &str, sites: &[String]) -> Result<Self, InvalidField> {
        if sites.is_empty() {
            return Err(InvalidField::new(
                field,
                "",
                "must name at least one site, or be `all`",
            ));
        }
        if sites.len() > MAX_SCOPE_SITES {
            return Err(InvalidField::new(
                field,
                sites.len(),
                "names too many sites (max 256)",
            ));
        }
        for s in sites {
            names::dns_label(field, s)?;
        }
        Ok(Scope::Sites(sites.iter().cloned().collect()))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("*"),
            Scope::Sites(s) => f.write_str(&s.iter().cloned().collect::<Vec<_>>().join(",")),
        }
    }
}

/// What a site does with a service while its origin is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StalePolicy {
    /// How long (seconds) the entry is kept after the origin became unreachable.
    pub ttl_seconds: u64,
    /// Whether callers are still routed to it meanwhile.
    pub serve: bool,
}

impl Default for StalePolicy {
    fn default() -> Self {
        Self {
            ttl_seconds: 300,
            serve: true,
        }
    }
}

/// Longest stale TTL accepted (30 days).
pub const MAX_STALE_TTL: u64 = 30 * 24 * 3600;

impl StalePolicy {
    fn from_wire(field: &str, w: Option<&wire::StalePolicy>) -> Result<Self, InvalidField> {
        let Some(w) = w else {
            return Err(InvalidField::new(field, "<missing>", "is required"));
        };
        let p = Self {
            ttl_seconds: w.ttl_seconds,
            serve: w.serve,
        };
        p.validate(field)?;
        Ok(p)
    }

    /// Checks the TTL bound.
    pub fn validate(&self, field: &str) -> Result<(), InvalidField> {
        if self.ttl_seconds > MAX_STALE_TTL {
            return Err(InvalidField::new(
                &format!("{field}.ttl_seconds"),
                self.ttl_seconds,
                "must be at most 2592000 (30 days)",
            ));
        }
        Ok(())
    }
}

/// What an origin says about one exported service (everything but its key and stamp).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Ports of the service.
    pub ports: Vec<Port>,
    /// The origin's edge-agent ingress addresses.
    pub ingress: Vec<String>,
    /// The site whose edge agent relays to the origin (an edge node); `ingress` are its.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// SPIFFE identity of the service's workloads.
    pub identity: String,
    /// Which sites may see it.
    pub scope: Scope,
    /// What to do while the origin is unreachable.
    pub stale: StalePolicy,
    /// The other sites the origin agrees to serve this name with (see [`crate::ownership`]).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub share_with: BTreeSet<String>,
}

impl Service {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), InvalidField> {
        validate_ports("ports", &self.ports)?;
        if self.ingress.len() > MAX_INGRESS {
            return Err(InvalidField::new(
                "ingress",
                self.ingress.len(),
                "lists too many addresses (max 16)",
            ));
        }
        for (i, a) in self.ingress.iter().enumerate() {
            names::host_port(&format!("ingress[{i}]"), a)?;
        }
        if let Some(v) = &self.via {
            names::dns_label("ingress_via", v)?;
        }
        if self.labels.len() > MAX_LABELS {
            return Err(InvalidField::new(
                "labels",
                self.labels.len(),
                "has too many labels (max 64)",
            ));
        }
        for (k, v) in &self.labels {
            names::label("labels", k, v)?;
        }
        if !self.identity.is_empty() && !self.identity.starts_with("spiffe://") {
            return Err(InvalidField::new(
                "identity",
                &self.identity,
                "must be a spiffe:// URI",
            ));
        }
        if self.identity.len() > 2048 {
            return Err(InvalidField::new(
                "identity",
                &self.identity,
                "is too long (max 2048)",
            ));
        }
        self.stale.validate("stale")?;
        if self.share_with.len() > MAX_SHARE_WITH {
            return Err(InvalidField::new(
                "share_with",
                self.share_with.len(),
                "lists too many sites (max 64)",
            ));
        }
        for s in &self.share_with {
            names::dns_label("share_with", s)?;
        }
        Ok(())
    }
}

/// The state of one catalog key at one stamp: the service, or its withdrawal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// The service is exported.
    Live(Arc<Service>),
    /// The service was withdrawn; `audience` are the sites that may have seen it.
    Withdrawn {
        /// Sites that may have seen the service.
        audience: Scope,
    },
}

/// One catalog key's state at one origin stamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The origin's version of this state.
    pub stamp: Stamp,
    /// The service or its withdrawal.
    pub body: Body,
    /// The origin's proof: the signed header and the bytes this record was decoded from,
    /// forwarded unchanged when relayed. `None` for this site's own records (sealed when sent),
    /// for withdrawals this site made up, and in the pure catalog's unit tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Arc<Proof>>,
}

/// An origin's proof of one record: its signed [`wire::RecordHeader`], and the encoded record
/// whose hash the header names, unless the proof was redacted for a site outside the scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// The signed header.
    pub header: Seal,
    /// The encoded record; `None` when redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<crate::proof::Blob>,
}

impl Proof {
    /// The same proof without the record: it proves the key's stamp, and shows nothing else.
    pub fn redacted(&self) -> Proof {
        Proof {
            header: self.header.clone(),
            record: None,
        }
    }
}

/// The header an origin signs for `record` of `key` encoded as `bytes`.
pub fn header_of(key: &Key, record: &Record, bytes: &[u8]) -> wire::RecordHeader {
    wire::RecordHeader {
        origin: key.origin.clone(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        origin_epoch: record.stamp.epoch,
        version: record.stamp.version,
        withdrawn: record.service().is_none(),
        record_sha256: ring::digest::digest(&ring::digest::SHA256, bytes)
            .as_ref()
            .to_vec(),
    }
}

/// Largest encoded record accepted from a peer or made by an export (bytes).
pub const MAX_RECORD_BYTES: usize = 16 * 1024;

impl Record {
    /// A record without a proof (this site's own, or a test's).
    pub fn new(stamp: Stamp, body: Body) -> Self {
        Self {
            stamp,
            body,
            proof: None,
        }
    }

    /// What a site outside a record's scope is told of it: hidden at this stamp.
    pub fn hidden(stamp: Stamp, proof: Option<Arc<Proof>>) -> Self {
        Self {
            stamp,
            body: Body::Withdrawn {
                audience: Scope::Sites(BTreeSet::new()),
            },
            proof,
        }
    }

    /// The record's wire encoding: the bytes its origin signs.
    pub fn encode(&self, key: &Key) -> Vec<u8> {
        use prost::Message;
        self.to_wire(key).encode_to_vec()
    }

    /// Decodes and validates what a proof carries: the signed header, and the record unless
    /// redacted (then the record is [`Record::hidden`] at the header's stamp). The record keeps
    /// the proof. The caller has checked the header's signature, and compares the key's origin
    /// with the signer.
    pub fn from_proof(field: &str, proof: Arc<Proof>) -> Result<(Key, Record), InvalidField> {
        use prost::Message;
        let bad = |what: &str| InvalidField::new(field, "<signed bytes>", what);
        let h = wire::RecordHeader::decode(proof.header.bytes.as_slice())
            .map_err(|e| bad(&format!("has a header that is not a RecordHeader: {e}")))?;
        let key = key_from_wire(&h.origin, &h.namespace, &h.name).map_err(|e| e.within(field))?;
        let stamp = stamp_from_wire(h.origin_epoch, h.version).map_err(|e| e.within(field))?;
        let Some(bytes) = &proof.record else {
            return Ok((key, Record::hidden(stamp, Some(proof))));
        };
        if bytes.0.len() > MAX_RECORD_BYTES {
            return Err(InvalidField::new(
                field,
                format!("{} bytes", bytes.0.len()),
                "is over the record size limit of 16384 bytes",
            ));
        }
        if ring::digest::digest(&ring::digest::SHA256, &bytes.0).as_ref() != h.record_sha256 {
            return Err(bad("has a record whose SHA-256 is not the header's"));
        }
        let w = wire::Record::decode(bytes.0.as_slice())
            .map_err(|e| bad(&format!("is not a Record: {e}")))?;
        let (rkey, mut record) = Record::from_wire(field, &w)?;
        if rkey != key || record.stamp != stamp || record.service().is_none() != h.withdrawn {
            return Err(bad("has a record that is not the one its header names"));
        }
        record.proof = Some(proof);
        Ok((key, record))
    }

    /// Order of records of one key learned along different paths: the higher origin stamp
    /// wins; at an equal stamp a live entry wins. A withdrawal at the same stamp as a live entry
    /// only ever means "hidden from the relay that sent it" (its scope was narrowed, or the relay
    /// lost track of it), while the live entry proves some path still carries it.
    pub fn rank(&self) -> (Stamp, bool) {
        (self.stamp, matches!(self.body, Body::Live(_)))
    }

    /// The sites that may see (or have seen) this record's service.
    pub fn audience(&self) -> &Scope {
        match &self.body {
            Body::Live(s) => &s.scope,
            Body::Withdrawn { audience } => audience,
        }
    }

    /// The live service, if not withdrawn.
    pub fn service(&self) -> Option<&Arc<Service>> {
        match &self.body {
            Body::Live(s) => Some(s),
            Body::Withdrawn { .. } => None,
        }
    }

    /// Encodes the record for the wire.
    pub fn to_wire(&self, key: &Key) -> wire::Record {
        let kind = match &self.body {
            Body::Live(s) => wire::record::Kind::Service(service_to_wire(key, self.stamp, s)),
            Body::Withdrawn { audience } => wire::record::Kind::Withdrawn(wire::Withdrawal {
                origin: key.origin.clone(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                origin_epoch: self.stamp.epoch,
                version: self.stamp.version,
                audience: Some(audience.to_wire()),
            }),
        };
        wire::Record { kind: Some(kind) }
    }

    /// Decodes and validates a record from the wire; `field` prefixes error field names.
    pub fn from_wire(field: &str, w: &wire::Record) -> Result<(Key, Record), InvalidField> {
        match &w.kind {
            Some(wire::record::Kind::Service(s)) => {
                let (key, stamp, svc) = service_from_wire(s).map_err(|e| e.within(field))?;
                Ok((key, Record::new(stamp, Body::Live(Arc::new(svc)))))
            }
            Some(wire::record::Kind::Withdrawn(t)) => {
                let key =
                    key_from_wire(&t.origin, &t.namespace, &t.name).map_err(|e| e.within(field))?;
                let audience = Scope::from_wire("audience", t.audience.as_ref())
                    .map_err(|e| e.within(field))?;
                let stamp =
                    stamp_from_wire(t.origin_epoch, t.version).map_err(|e| e.within(field))?;
                Ok((key, Record::new(stamp, Body::Withdrawn { audience })))
            }
            None => Err(InvalidField::new(
                &format!("{field}.kind"),
                "<missing>",
                "is required",
            )),
        }
    }
}

fn key_from_wire(origin: &str, namespace: &str, name: &str) -> Result<Key, InvalidField> {
    names::dns_label("origin", origin)?;
    names::dns_label("namespace", namespace)?;
    names::dns_label("name", name)?;
    Ok(Key {
        origin: origin.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

fn stamp_from_wire(epoch: u64, version: u64) -> Result<Stamp, InvalidField> {
    if version == 0 {
        return Err(InvalidField::new("version", 0, "must be at least 1"));
    }
    Ok(Stamp { epoch, version })
}

/// Encodes one service entry for the wire (also used by the admin API).
pub fn service_to_wire(key: &Key, stamp: Stamp, s: &Service) -> wire::ExportedService {
    wire::ExportedService {
        origin: key.origin.clone(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        origin_epoch: stamp.epoch,
        version: stamp.version,
        ports: s.ports.iter().map(Port::to_wire).collect(),
        ingress: s.ingress.clone(),
        ingress_via: s.via.clone().unwrap_or_default(),
        labels: s.labels.clone().into_iter().collect(),
        identity: s.identity.clone(),
        scope: Some(s.scope.to_wire()),
        stale: Some(wire::StalePolicy {
            ttl_seconds: s.stale.ttl_seconds,
            serve: s.stale.serve,
        }),
        share_with: s.share_with.iter().cloned().collect(),
    }
}

/// Decodes and validates one service entry from the wire.
pub fn service_from_wire(s: &wire::ExportedService) -> Result<(Key, Stamp, Service), InvalidField> {
    let key = key_from_wire(&s.origin, &s.namespace, &s.name)?;
    let stamp = stamp_from_wire(s.origin_epoch, s.version)?;
    let svc = Service {
        ports: ports_from_wire("ports", &s.ports)?,
        ingress: s.ingress.clone(),
        via: (!s.ingress_via.is_empty()).then(|| s.ingress_via.clone()),
        labels: s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        identity: s.identity.clone(),
        scope: Scope::from_wire("scope", s.scope.as_ref())?,
        stale: StalePolicy::from_wire("stale", s.stale.as_ref())?,
        share_with: s.share_with.iter().cloned().collect(),
    };
    if svc.share_with.len() != s.share_with.len() {
        return Err(InvalidField::new(
            "share_with",
            s.share_with.join(","),
            "lists a site twice",
        ));
    }
    svc.validate()?;
    Ok((key, stamp, svc))
}

/// A plain HTTP service for tests.
#[cfg(test)]
pub(crate) fn test_service(port: u16, scope: Scope) -> Service {
    Service {
        ports: vec![Port {
            name: "http".into(),
            port,
            protocol: Protocol::Http,
        }],
        ingress: vec!["127.0.0.1:15443".into()],
        via: None,
        labels: std::collections::BTreeMap::new(),
        identity: String::new(),
        scope,
        stale: StalePolicy::default(),
        share_with: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> Service {
        Service {
            ports: vec![Port {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Http,
            }],
            ingress: vec!["127.0.0.1:15443".into()],
            via: None,
            labels: [("app".to_string(), "payment".to_string())].into(),
            identity: "spiffe://multimesh.test/ns/shop/sa/payment".into(),
            scope: Scope::Sites(["b".to_string()].into()),
            stale: StalePolicy::default(),
            share_with: Default::default(),
        }
    }

    fn key() -> Key {
        Key {
            origin: "a".into(),
            namespace: "shop".into(),
            name: "payment".into(),
        }
    }

    #[test]
    fn wire_round_trip() {
        let r = Record {
            proof: None,
            stamp: Stamp {
                epoch: 7,
                version: 3,
            },
            body: Body::Live(Arc::new(svc())),
        };
        let (k, back) = Record::from_wire("r", &r.to_wire(&key())).unwrap();
        assert_eq!(k, key());
        assert_eq!(back, r);
        let t = Record {
            proof: None,
            stamp: Stamp {
                epoch: 7,
                version: 4,
            },
            body: Body::Withdrawn {
                audience: Scope::All,
            },
        };
        assert_eq!(Record::from_wire("r", &t.to_wire(&key())).unwrap().1, t);
    }

    #[test]
    fn bad_wire_fields_are_named() {
        let mut w = service_to_wire(
            &key(),
            Stamp {
                epoch: 1,
                version: 1,
            },
            &svc(),
        );
        w.name = "Bad_Name".into();
        let rec = wire::Record {
            kind: Some(wire::record::Kind::Service(w.clone())),
        };
        assert_eq!(
            Record::from_wire("records[3]", &rec).unwrap_err().field,
            "records[3].name"
        );

        let mut w2 = service_to_wire(
            &key(),
            Stamp {
                epoch: 1,
                version: 1,
            },
            &svc(),
        );
        w2.ports[0].port = 70000;
        let err = service_from_wire(&w2).unwrap_err();
        assert_eq!(err.field, "ports[0].port");

        let mut w3 = service_to_wire(
            &key(),
            Stamp {
                epoch: 1,
                version: 1,
            },
            &svc(),
        );
        w3.scope = Some(wire::ConsumerScope {
            all: false,
            sites: vec![],
        });
        assert_eq!(service_from_wire(&w3).unwrap_err().field, "scope");

        let mut w4 = service_to_wire(
            &key(),
            Stamp {
                epoch: 1,
                version: 1,
            },
            &svc(),
        );
        w4.version = 0;
        assert_eq!(service_from_wire(&w4).unwrap_err().field, "version");
    }

    #[test]
    fn cli_ports() {
        assert_eq!(
            Port::parse_cli("--port", "web:8080/http2").unwrap(),
            Port {
                name: "web".into(),
                port: 8080,
                protocol: Protocol::Http2
            }
        );
        assert_eq!(Port::parse_cli("--port", "5432/tcp").unwrap().name, "tcp");
        assert!(Port::parse_cli("--port", "web:0").is_err());
        assert!(Port::parse_cli("--port", "web:80/udp").is_err());
    }

    #[test]
    fn duplicate_ports_refused() {
        let mut s = svc();
        s.ports.push(s.ports[0].clone());
        assert_eq!(s.validate().unwrap_err().field, "ports[1].name");
    }

    #[test]
    fn live_wins_ties_and_newer_stamps_win() {
        let live = Record {
            proof: None,
            stamp: Stamp {
                epoch: 1,
                version: 5,
            },
            body: Body::Live(Arc::new(svc())),
        };
        let gone = Record {
            proof: None,
            stamp: Stamp {
                epoch: 1,
                version: 5,
            },
            body: Body::Withdrawn {
                audience: Scope::All,
            },
        };
        assert!(live.rank() > gone.rank());
        let later = Record {
            proof: None,
            stamp: Stamp {
                epoch: 1,
                version: 6,
            },
            body: Body::Withdrawn {
                audience: Scope::All,
            },
        };
        assert!(later.rank() > live.rank());
        let newer = Record {
            proof: None,
            stamp: Stamp {
                epoch: 2,
                version: 1,
            },
            body: Body::Live(Arc::new(svc())),
        };
        assert!(newer.rank() > gone.rank());
    }
}
