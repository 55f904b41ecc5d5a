//! The federation catalog of one site: a pure data structure, no I/O.
//!
//! * **Own exports**: this site is the single writer of its entries; each change bumps the own
//!   origin version and is stamped `(epoch, version)`.
//! * **Links**: for each peer, the replica of what that peer sent (its view, filtered for us),
//!   and the position in the peer's change stream we hold. A snapshot from a peer replaces that
//!   link's replica only.
//! * **Merged view**: per key, the highest-ranked record among our own exports and all link
//!   replicas. Every change of the merged view gets the next local sequence number `seq`; the
//!   ordered `by_seq` index is this site's change stream, from which per-peer deltas are cut.
//!   Because records merge by origin stamp, an entry that comes back along another path changes
//!   nothing, so relaying is loop-free and idempotent.
//! * **Scope**: [`Catalog::changes_for`] never yields an entry to a peer its origin did not allow;
//!   a peer that may have seen an entry before its scope was narrowed gets a withdrawal.
//! * **Liveness** ([`Liveness`]) is kept apart: it is runtime state driven by origin beats.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{AdminError, Refusal};
use crate::model::{Body, Key, Record, Scope, Service, ServiceKey, Site, Stamp};
use crate::proof::{CertDer, Fingerprint, Seal};

/// A position in one site's change stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The stream's incarnation.
    pub epoch: u64,
    /// Last change applied.
    pub seq: u64,
}

/// Limits that protect a site from oversized or abusive peers.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most records one peer's replica may hold (entries and tombstones).
    pub max_records_per_link: usize,
    /// Most services this site may export.
    pub max_exports: usize,
    /// Withdrawals kept in the merged view to serve deltas; older ones are compacted (a peer
    /// that is further behind gets a snapshot).
    pub max_tombstones: usize,
    /// Most origins whose heads this site keeps (besides its own).
    pub max_origins: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_records_per_link: 50_000,
            max_exports: 20_000,
            max_tombstones: 10_000,
            max_origins: 1024,
        }
    }
}

/// What one origin is known to be at: its stamp and its latest liveness beat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Highest stamp known of the origin.
    pub stamp: Stamp,
    /// Highest liveness beat known of the origin.
    pub beat: u64,
    /// The origin's signed head carrying `beat`, forwarded unchanged to peers. `None` for this
    /// site's own head (sealed when sent) and in unit tests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<Arc<Seal>>,
}

/// One change a peer sends in a delta.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// The origin's record of the key (signed by the origin on the wire).
    Put(Record),
    /// The peer no longer carries the key: drop what it relayed of it (and nothing else).
    Retract,
}

/// One merged entry with its change-stream bookkeeping.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Merged {
    record: Record,
    /// Every site that may have seen this key (union of all its scopes), so narrowed or
    /// withdrawn entries reach exactly those who may still hold them.
    audience: Scope,
    seq: u64,
    /// This site made up this withdrawal because no peer carries the key any more (no origin
    /// signed it): peers get a retraction, not a record.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    retracted: bool,
}

/// The replica of what one peer sent us.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Link {
    position: Option<Position>,
    records: BTreeMap<Key, Record>,
}

/// What to send a peer so it catches up with this site's view.
#[derive(Debug, PartialEq)]
pub enum Outgoing {
    /// The peer already holds everything up to `to`.
    UpToDate(Position),
    /// The changes since the peer's position (possibly empty after filtering).
    Delta {
        /// The peer must hold this position for the delta to apply.
        from: Position,
        /// The position after applying.
        to: Position,
        /// Changes, filtered for the peer, in change order.
        records: Vec<(Key, Change)>,
    },
    /// The peer cannot resume: everything it may see, as of `at`.
    Snapshot {
        /// The position the snapshot is current through.
        at: Position,
        /// Every record the peer may see (live entries and withdrawals).
        records: Vec<(Key, Record)>,
    },
}

/// The outcome of applying a peer's message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Records accepted into the link replica.
    pub records: usize,
    /// Keys whose merged state changed.
    pub changed: usize,
}

/// One site's federation catalog.
#[derive(Clone, Debug)]
pub struct Catalog {
    site: Site,
    epoch: u64,
    version: u64,
    seq: u64,
    /// Changes at or below this sequence may have been compacted away.
    horizon: u64,
    merged: BTreeMap<Key, Merged>,
    by_seq: BTreeMap<u64, Key>,
    /// Tombstones in the merged view, by the sequence of their change (oldest first).
    tombstones: BTreeMap<u64, Key>,
    links: BTreeMap<Site, Link>,
    heads: BTreeMap<Site, Head>,
    /// Exports declared by the site config.
    declared: BTreeSet<ServiceKey>,
    /// The configured peers; `None` until set (every link is then kept).
    peers: Option<BTreeSet<Site>>,
    /// Certificates of the signers of the seals held (DER), so relayed items can travel with
    /// them.
    certs: BTreeMap<Fingerprint, Arc<CertDer>>,
    /// The certificate this site's own records are sealed with ([`Catalog::renew`]).
    sealed_by: Option<Fingerprint>,
    limits: Limits,
    /// Live entries in the merged view: all of them, and this site's own.
    live: usize,
    own_live: usize,
}

impl Catalog {
    /// A new, empty catalog for `site`, with a fresh `epoch`.
    pub fn new(site: &str, epoch: u64, limits: Limits) -> Self {
        let mut heads = BTreeMap::new();
        heads.insert(
            site.to_string(),
            Head {
                stamp: Stamp { epoch, version: 0 },
                beat: 0,
                seal: None,
            },
        );
        Self {
            site: site.to_string(),
            epoch,
            version: 0,
            seq: 0,
            horizon: 0,
            merged: BTreeMap::new(),
            by_seq: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            links: BTreeMap::new(),
            heads,
            declared: BTreeSet::new(),
            peers: None,
            certs: BTreeMap::new(),
            sealed_by: None,
            limits,
            live: 0,
            own_live: 0,
        }
    }

    /// This site's name.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// This site's epoch (origin epoch and stream epoch).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// This site's own origin version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The head of this site's change stream.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.epoch,
            seq: self.seq,
        }
    }

    /// Replaces the limits (they are configuration, not state).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    // ----- own exports -------------------------------------------------------------------

    /// Exports (or re-exports with new settings) one of this site's services. Re-exporting an
    /// identical service changes nothing and returns its current stamp.
    pub fn export(
        &mut self,
        namespace: &str,
        name: &str,
        svc: Service,
    ) -> Result<Stamp, AdminError> {
        svc.validate()?;
        crate::names::dns_label("namespace", namespace)?;
        crate::names::dns_label("name", name)?;
        let key = self.own_key(namespace, name);
        if let Some(m) = self.merged.get(&key)
            && let Body::Live(cur) = &m.record.body
            && **cur == svc
        {
            return Ok(m.record.stamp);
        }
        if self.own_live >= self.limits.max_exports && !self.is_exported(&key) {
            return Err(AdminError::TooMany(self.limits.max_exports));
        }
        let stamp = self.next_version();
        let record = Record::new(stamp, Body::Live(Arc::new(svc)));
        let size = record.encode(&key).len();
        if size > crate::model::MAX_RECORD_BYTES {
            self.version -= 1;
            if let Some(h) = self.heads.get_mut(&self.site) {
                h.stamp.version = self.version;
            }
            return Err(AdminError::Invalid(crate::error::InvalidField::new(
                "service",
                format!("{size} bytes encoded"),
                "is over the record size limit of 16384 bytes",
            )));
        }
        self.set_merged(key, record, false);
        Ok(stamp)
    }

    /// Withdraws one of this site's exports.
    pub fn unexport(&mut self, namespace: &str, name: &str) -> Result<Stamp, AdminError> {
        let key = self.own_key(namespace, name);
        if !self.is_exported(&key) {
            return Err(AdminError::NotExported {
                namespace: namespace.to_string(),
                name: name.to_string(),
            });
        }
        let stamp = self.next_version();
        let audience = self.merged[&key].audience.clone();
        self.set_merged(key, Record::new(stamp, Body::Withdrawn { audience }), false);
        Ok(stamp)
    }

    /// Records that this site's own records are sealed by the certificate `signer` from now
    /// on. When that is another certificate than before (a rotated one, or the first time),
    /// every own record, live or withdrawn, gets a new stamp with the same content, so that
    /// peers replace what they hold, sealed by the previous certificate, and relay the new
    /// seal: a record held at the same stamp is never replaced, and once the previous
    /// certificate ends, its seals are refused by every site a relay reaches. Returns how many
    /// records were renewed, `None` when `signer` already sealed them (nothing changes).
    pub fn renew(&mut self, signer: Fingerprint) -> Option<usize> {
        if self.sealed_by == Some(signer) {
            return None;
        }
        self.sealed_by = Some(signer);
        let own: Vec<(Key, Body)> = self
            .merged
            .iter()
            .filter(|(k, _)| k.origin == self.site)
            .map(|(k, m)| (k.clone(), m.record.body.clone()))
            .collect();
        let renewed = own.len();
        for (key, body) in own {
            let stamp = self.next_version();
            self.set_merged(key, Record::new(stamp, body), false);
        }
        Some(renewed)
    }

    /// The certificate this site's own records are sealed with, when known.
    pub fn sealed_by(&self) -> Option<Fingerprint> {
        self.sealed_by
    }

    /// Marks which exports the site config declares (they cannot be changed at run time).
    pub fn set_declared(&mut self, declared: BTreeSet<ServiceKey>) {
        self.declared = declared;
    }

    /// Whether the site config declares this export.
    pub fn is_declared(&self, namespace: &str, name: &str) -> bool {
        self.declared.contains(&ServiceKey::new(namespace, name))
    }

    /// This site's live exports.
    pub fn exports(&self) -> impl Iterator<Item = (&Key, &Record)> {
        self.merged
            .iter()
            .filter(|(k, m)| k.origin == self.site && m.record.service().is_some())
            .map(|(k, m)| (k, &m.record))
    }

    fn is_exported(&self, key: &Key) -> bool {
        self.merged
            .get(key)
            .is_some_and(|m| m.record.service().is_some())
    }

    fn own_key(&self, namespace: &str, name: &str) -> Key {
        Key {
            origin: self.site.clone(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    fn next_version(&mut self) -> Stamp {
        self.version += 1;
        let stamp = Stamp {
            epoch: self.epoch,
            version: self.version,
        };
        if let Some(h) = self.heads.get_mut(&self.site) {
            h.stamp = stamp;
        }
        stamp
    }

    // ----- merged view and change stream ------------------------------------------------

    /// Sets the merged record of `key`, records the change in the stream, and compacts old
    /// tombstones.
    fn set_merged(&mut self, key: Key, record: Record, retracted: bool) {
        self.seq += 1;
        let seq = self.seq;
        let (audience, was_live) = match self.merged.get(&key) {
            Some(old) => {
                self.by_seq.remove(&old.seq);
                self.tombstones.remove(&old.seq);
                (
                    old.audience.union(record.audience()),
                    old.record.service().is_some(),
                )
            }
            None => (record.audience().clone(), false),
        };
        let own = key.origin == self.site;
        if was_live {
            self.count_live(own, false);
        }
        if record.service().is_some() {
            self.count_live(own, true);
        }
        if matches!(record.body, Body::Withdrawn { .. }) {
            self.tombstones.insert(seq, key.clone());
        }
        self.by_seq.insert(seq, key.clone());
        self.merged.insert(
            key,
            Merged {
                record,
                audience,
                seq,
                retracted,
            },
        );
        self.compact();
    }

    /// Keeps the live counters right when a live entry enters (`add`) or leaves the merged view.
    fn count_live(&mut self, own: bool, add: bool) {
        if add {
            self.live += 1;
            self.own_live += usize::from(own);
        } else {
            self.live -= 1;
            self.own_live -= usize::from(own);
        }
    }

    /// Number of live entries this site sees (its own and remote).
    pub fn live_count(&self) -> usize {
        self.live
    }

    /// Number of this site's live exports.
    pub fn export_count(&self) -> usize {
        self.own_live
    }

    /// Drops the oldest tombstones beyond the limit. A peer whose position is older than the
    /// dropped change can no longer get a delta and receives a snapshot instead.
    fn compact(&mut self) {
        while self.tombstones.len() > self.limits.max_tombstones {
            let Some((seq, key)) = self.tombstones.pop_first() else {
                break;
            };
            self.by_seq.remove(&seq);
            self.merged.remove(&key);
            for link in self.links.values_mut() {
                link.records.remove(&key);
            }
            self.horizon = self.horizon.max(seq);
        }
    }

    /// Recomputes the merged record of a remote key from the link replicas.
    fn recompute(&mut self, key: &Key) -> bool {
        if key.origin == self.site {
            return false;
        }
        let best = self
            .links
            .values()
            .filter_map(|l| l.records.get(key))
            .max_by_key(|r| r.rank())
            .cloned();
        let current = self.merged.get(key).map(|m| m.record.rank());
        match best {
            Some(r) if Some(r.rank()) != current => {
                self.bump_head(key, r.stamp);
                self.set_merged(key.clone(), r, false);
                true
            }
            Some(_) => false,
            None => match self.merged.get(key) {
                // No link asserts the key any more: withdraw it at its last stamp so that
                // peers who learned it from us drop it too.
                Some(m) if m.record.service().is_some() => {
                    let stamp = m.record.stamp;
                    let audience = m.audience.clone();
                    self.set_merged(
                        key.clone(),
                        Record::new(stamp, Body::Withdrawn { audience }),
                        true,
                    );
                    true
                }
                _ => false,
            },
        }
    }

    fn bump_head(&mut self, key: &Key, stamp: Stamp) {
        let h = self.heads.entry(key.origin.clone()).or_default();
        if stamp > h.stamp {
            h.stamp = stamp;
        }
    }

    /// What `peer` may receive of a merged entry, if anything: the record when its scope
    /// allows the peer (a live entry, or the origin's withdrawal); when the peer may have seen
    /// an earlier version but may not see this one, this site's own withdrawal or, for
    /// another origin's key, the origin's proof without the record (hidden at its stamp);
    /// a retraction for a withdrawal this site made up; nothing otherwise (and never an
    /// origin's own entries back to it).
    fn for_peer(&self, peer: &str, key: &Key, m: &Merged) -> Option<Change> {
        if key.origin == peer {
            return None;
        }
        let own = key.origin == self.site;
        match &m.record.body {
            Body::Live(s) if s.scope.allows(peer) => Some(Change::Put(m.record.clone())),
            Body::Withdrawn { .. } if !m.retracted && m.audience.allows(peer) => {
                Some(Change::Put(m.record.clone()))
            }
            _ if !m.audience.allows(peer) => None,
            _ if own => Some(Change::Put(Record::new(
                m.record.stamp,
                Body::Withdrawn {
                    audience: m.audience.clone(),
                },
            ))),
            Body::Live(_) if m.record.proof.is_some() => Some(Change::Put(Record::hidden(
                m.record.stamp,
                m.record.proof.as_ref().map(|p| Arc::new(p.redacted())),
            ))),
            _ => Some(Change::Retract),
        }
    }

    /// What `peer`, holding our stream at `since`, needs to catch up: a delta when it can
    /// resume, else a snapshot of everything it may see.
    pub fn changes_for(&self, peer: &str, since: Option<Position>) -> Outgoing {
        let head = self.position();
        match since {
            Some(p) if p.epoch == self.epoch && p.seq >= self.horizon && p.seq <= self.seq => {
                if p.seq == self.seq {
                    return Outgoing::UpToDate(head);
                }
                let records = self
                    .by_seq
                    .range(p.seq + 1..)
                    .filter_map(|(_, k)| {
                        let m = &self.merged[k];
                        self.for_peer(peer, k, m).map(|r| (k.clone(), r))
                    })
                    .collect();
                Outgoing::Delta {
                    from: p,
                    to: head,
                    records,
                }
            }
            _ => Outgoing::Snapshot {
                at: head,
                records: self
                    .merged
                    .iter()
                    .filter_map(|(k, m)| match self.for_peer(peer, k, m) {
                        Some(Change::Put(r)) => Some((k.clone(), r)),
                        _ => None,
                    })
                    .collect(),
            },
        }
    }

    // ----- applying what peers send -------------------------------------------------------

    /// Where we stand in `peer`'s change stream (sent in our hello so the peer can resume).
    pub fn link_position(&self, peer: &str) -> Option<Position> {
        self.links.get(peer).and_then(|l| l.position)
    }

    /// Advances our position in `peer`'s stream when the peer says it has sent everything
    /// through `to` and we applied every message of this session.
    pub fn advance_link(&mut self, peer: &str, to: Position) -> bool {
        match self.links.get_mut(peer) {
            Some(l) => match l.position {
                Some(p) if p.epoch == to.epoch && p.seq < to.seq => {
                    l.position = Some(to);
                    true
                }
                _ => false,
            },
            None => false,
        }
    }

    /// Checks changes from a peer before anything is applied: scope, and no entry of ours.
    fn check_records<'r>(
        &self,
        records: impl Iterator<Item = (&'r Key, Option<&'r Record>)>,
    ) -> Result<(), Refusal> {
        for (i, (k, r)) in records.enumerate() {
            if k.origin == self.site {
                return Err(Refusal::Protocol(format!(
                    "records[{i}]: {k} is this site's own entry; peers must not send it back"
                )));
            }
            if let Some(Body::Live(s)) = r.map(|r| &r.body)
                && !s.scope.allows(&self.site)
            {
                return Err(Refusal::ScopeViolation(format!(
                    "records[{i}]: {k} is scoped to [{}], which excludes {}",
                    s.scope, self.site
                )));
            }
        }
        Ok(())
    }

    /// Refuses what a site sends once it is no longer a configured peer: a session that was
    /// still applying a message when its peer was removed must not bring back the replica
    /// [`Catalog::set_peers`] dropped.
    fn check_configured(&self, peer: &str) -> Result<(), Refusal> {
        match &self.peers {
            Some(p) if !p.contains(peer) => Err(Refusal::Protocol(format!(
                "{peer} is not a configured peer of {}",
                self.site
            ))),
            _ => Ok(()),
        }
    }

    /// Applies a delta from `peer`. Nothing is applied when it is refused.
    pub fn apply_delta(
        &mut self,
        peer: &str,
        from: Position,
        to: Position,
        records: Vec<(Key, Change)>,
    ) -> Result<Applied, Refusal> {
        self.check_configured(peer)?;
        if from.epoch != to.epoch || from.seq > to.seq {
            return Err(Refusal::Protocol(format!(
                "delta range {}:{} .. {}:{} is not increasing",
                from.epoch, from.seq, to.epoch, to.seq
            )));
        }
        match self.link_position(peer) {
            Some(p) if p.epoch == from.epoch && p.seq >= from.seq => {}
            Some(p) => {
                return Err(Refusal::Gap(format!(
                    "delta starts at {}:{} but this site holds {peer}'s stream at {}:{}",
                    from.epoch, from.seq, p.epoch, p.seq
                )));
            }
            None => {
                return Err(Refusal::Gap(format!(
                    "this site holds nothing of {peer}'s stream; a snapshot is needed"
                )));
            }
        }
        self.check_records(records.iter().map(|(k, c)| {
            (
                k,
                match c {
                    Change::Put(r) => Some(r),
                    Change::Retract => None,
                },
            )
        }))?;
        let link = self.links.entry(peer.to_string()).or_default();
        let new_keys = records
            .iter()
            .filter(|(k, c)| matches!(c, Change::Put(_)) && !link.records.contains_key(k))
            .map(|(k, _)| k)
            .collect::<BTreeSet<_>>()
            .len();
        if link.records.len() + new_keys > self.limits.max_records_per_link {
            return Err(Refusal::TooLarge(format!(
                "{peer} would hold {} records here, over the limit of {}",
                link.records.len() + new_keys,
                self.limits.max_records_per_link
            )));
        }
        // Within one link the stream is ordered and always carries the sender's current state
        // of a key, so the last record received for a key is the link's truth.
        let mut applied = Applied::default();
        let mut touched = Vec::new();
        for (k, c) in records {
            match c {
                Change::Put(r) if link.records.get(&k) != Some(&r) => {
                    link.records.insert(k.clone(), r);
                    applied.records += 1;
                    touched.push(k);
                }
                Change::Retract if link.records.remove(&k).is_some() => {
                    applied.records += 1;
                    touched.push(k);
                }
                _ => {}
            }
        }
        if let Some(p) = link.position.as_mut() {
            p.seq = p.seq.max(to.seq);
        }
        for k in touched {
            if self.recompute(&k) {
                applied.changed += 1;
            }
        }
        Ok(applied)
    }

    /// Applies a full snapshot from `peer`: it replaces everything learned from that peer.
    pub fn apply_snapshot(
        &mut self,
        peer: &str,
        at: Position,
        records: Vec<(Key, Record)>,
    ) -> Result<Applied, Refusal> {
        self.check_configured(peer)?;
        if records.len() > self.limits.max_records_per_link {
            return Err(Refusal::TooLarge(format!(
                "snapshot from {peer} has {} records, over the limit of {}",
                records.len(),
                self.limits.max_records_per_link
            )));
        }
        self.check_records(records.iter().map(|(k, r)| (k, Some(r))))?;
        let mut fresh = BTreeMap::new();
        for (i, (k, r)) in records.into_iter().enumerate() {
            if fresh.insert(k.clone(), r).is_some() {
                return Err(Refusal::Protocol(format!(
                    "records[{i}]: {k} appears twice in the snapshot"
                )));
            }
        }
        let link = self.links.entry(peer.to_string()).or_default();
        let old = std::mem::replace(&mut link.records, fresh);
        link.position = Some(at);
        let mut keys: BTreeSet<Key> = old.into_keys().collect();
        keys.extend(self.links[peer].records.keys().cloned());
        let mut applied = Applied {
            records: self.links[peer].records.len(),
            changed: 0,
        };
        for k in keys {
            if self.recompute(&k) {
                applied.changed += 1;
            }
        }
        self.prune_certs();
        Ok(applied)
    }

    /// Sets the configured peers: the replicas of links to sites no longer configured are
    /// dropped (what only they carried is withdrawn here), and so are the heads of origins this
    /// site has no reason to track. Returns the peers whose replicas were dropped.
    pub fn set_peers(&mut self, peers: BTreeSet<Site>) -> Vec<Site> {
        let gone: Vec<Site> = self
            .links
            .keys()
            .filter(|p| !peers.contains(*p))
            .cloned()
            .collect();
        self.peers = Some(peers);
        for p in &gone {
            if let Some(link) = self.links.remove(p) {
                for k in link.records.keys() {
                    self.recompute(k);
                }
            }
        }
        self.prune_heads();
        self.prune_certs();
        gone
    }

    /// Whether this site tracks `origin`'s head: itself, a configured peer, or the origin of an
    /// entry it holds.
    fn tracks(&self, origin: &str) -> bool {
        origin == self.site
            || self.peers.as_ref().is_none_or(|p| p.contains(origin))
            || self
                .merged
                .range(
                    Key {
                        origin: origin.to_string(),
                        namespace: String::new(),
                        name: String::new(),
                    }..,
                )
                .next()
                .is_some_and(|(k, _)| k.origin == origin)
    }

    /// Drops the heads of origins this site does not track.
    fn prune_heads(&mut self) {
        let keep: BTreeSet<Site> = self
            .heads
            .keys()
            .filter(|o| self.tracks(o))
            .cloned()
            .collect();
        self.heads.retain(|o, _| keep.contains(o));
    }

    /// Adds signer certificates (DER) that came with accepted records or heads.
    pub fn add_certs(&mut self, certs: impl IntoIterator<Item = Arc<CertDer>>) {
        for c in certs {
            self.certs.insert(crate::proof::fingerprint(&c.0), c);
        }
    }

    /// The certificate of a signer, if held.
    pub fn cert(&self, fp: &Fingerprint) -> Option<&Arc<CertDer>> {
        self.certs.get(fp)
    }

    /// Drops the certificates no held seal refers to.
    fn prune_certs(&mut self) {
        let mut used: BTreeSet<Fingerprint> = BTreeSet::new();
        for l in self.links.values() {
            used.extend(
                l.records
                    .values()
                    .filter_map(|r| r.proof.as_ref().map(|p| p.header.signer)),
            );
        }
        used.extend(
            self.merged
                .values()
                .filter_map(|m| m.record.proof.as_ref().map(|p| p.header.signer)),
        );
        used.extend(
            self.heads
                .values()
                .filter_map(|h| h.seal.as_ref().map(|s| s.signer)),
        );
        self.certs.retain(|fp, _| used.contains(fp));
    }

    /// Forgets our position in `peer`'s stream, so the next session asks it for a snapshot.
    pub fn reset_link(&mut self, peer: &str) {
        if let Some(l) = self.links.get_mut(peer) {
            l.position = None;
        }
    }

    // ----- heads (version vectors and liveness beats) -----------------------------------

    /// This site's per-origin heads.
    pub fn heads(&self) -> &BTreeMap<Site, Head> {
        &self.heads
    }

    /// Sets this site's own liveness beat.
    pub fn set_own_beat(&mut self, beat: u64) {
        if let Some(h) = self.heads.get_mut(&self.site) {
            h.beat = h.beat.max(beat);
        }
    }

    /// The configured peers, once set.
    pub fn configured_peers(&self) -> Option<&BTreeSet<Site>> {
        self.peers.as_ref()
    }

    /// Merges heads heard from a peer (each the origin's own, checked by the caller); returns
    /// the origins whose beat advanced. Heads of origins this site does not track are ignored,
    /// and so are new origins beyond [`Limits::max_origins`].
    pub fn observe_heads(&mut self, heads: &[(Site, Head)]) -> Vec<(Site, u64)> {
        let mut advanced = Vec::new();
        for (origin, h) in heads {
            if *origin == self.site || !self.tracks(origin) {
                continue;
            }
            if !self.heads.contains_key(origin) && self.heads.len() > self.limits.max_origins {
                continue;
            }
            let cur = self.heads.entry(origin.clone()).or_default();
            if h.stamp > cur.stamp {
                cur.stamp = h.stamp;
            }
            if h.beat > cur.beat {
                cur.beat = h.beat;
                cur.seal = h.seal.clone();
                advanced.push((origin.clone(), h.beat));
            }
        }
        advanced
    }

    /// How many origin versions `peer` is behind us, summed over origins it knows in the same
    /// epoch (origins it has never heard of count their full version).
    pub fn lag_of(&self, peer_heads: &BTreeMap<Site, Head>) -> u64 {
        self.heads
            .iter()
            .map(|(o, mine)| match peer_heads.get(o) {
                Some(theirs) if theirs.stamp.epoch == mine.stamp.epoch => {
                    mine.stamp.version.saturating_sub(theirs.stamp.version)
                }
                Some(theirs) if theirs.stamp.epoch > mine.stamp.epoch => 0,
                _ => mine.stamp.version,
            })
            .sum()
    }

    // ----- queries -------------------------------------------------------------------------

    /// Every live entry of the merged view (own and remote), by key.
    pub fn entries(&self) -> impl Iterator<Item = (&Key, &Record)> {
        self.merged
            .iter()
            .filter(|(_, m)| m.record.service().is_some())
            .map(|(k, m)| (k, &m.record))
    }

    /// The live entries after `after` (all when `None`), in key order.
    pub fn entries_after<'a>(
        &'a self,
        after: Option<&Key>,
    ) -> impl Iterator<Item = (&'a Key, &'a Record)> + 'a {
        use std::ops::Bound;
        let from = match after {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Unbounded,
        };
        self.merged
            .range((from, Bound::Unbounded))
            .filter(|(_, m)| m.record.service().is_some())
            .map(|(k, m)| (k, &m.record))
    }

    /// The live entry of one key.
    pub fn get(&self, key: &Key) -> Option<&Record> {
        self.merged
            .get(key)
            .map(|m| &m.record)
            .filter(|r| r.service().is_some())
    }

    /// Number of records held in `peer`'s replica.
    pub fn link_records(&self, peer: &str) -> usize {
        self.links.get(peer).map_or(0, |l| l.records.len())
    }

    // ----- persistence ---------------------------------------------------------------------

    /// Starts a new epoch of this site's change stream and origin stamps (every peer then
    /// gets a snapshot), e.g. after a state was migrated and lost what peers had sent.
    pub fn restart_stream(&mut self, epoch: u64) {
        self.epoch = epoch;
        self.horizon = self.seq;
        if let Some(h) = self.heads.get_mut(&self.site) {
            h.stamp = Stamp {
                epoch,
                version: self.version,
            };
        }
    }

    /// A serialisable copy of the whole state.
    pub fn to_state(&self) -> State {
        State {
            format: STATE_FORMAT,
            site: self.site.clone(),
            epoch: self.epoch,
            version: self.version,
            seq: self.seq,
            horizon: self.horizon,
            merged: self
                .merged
                .iter()
                .map(|(k, m)| (k.clone(), m.clone()))
                .collect(),
            links: self
                .links
                .iter()
                .map(|(s, l)| LinkState {
                    peer: s.clone(),
                    position: l.position,
                    records: l
                        .records
                        .iter()
                        .map(|(k, r)| (k.clone(), r.clone()))
                        .collect(),
                })
                .collect(),
            heads: self
                .heads
                .iter()
                .map(|(s, h)| (s.clone(), h.clone()))
                .collect(),
            declared: self
                .declared
                .iter()
                .map(|k| (k.namespace.clone(), k.name.clone()))
                .collect(),
            certs: self.certs.values().cloned().collect(),
            sealed_by: self.sealed_by,
            journal: 0,
        }
    }

    /// The exports the site config declared when this state was saved.
    pub fn declared(&self) -> &BTreeSet<ServiceKey> {
        &self.declared
    }

    /// Rebuilds a catalog from its saved state, validating it again as if it came from a peer
    /// (names, fields, sizes, sequence numbers, and that every record held for another origin
    /// carries a proof whose bytes are that record).
    ///
    /// A state of format 1 (before origin proofs) keeps this site's own entries only: what it
    /// held of other origins has no proofs to relay, so peers send it again.
    pub fn from_state(state: State, limits: Limits) -> Result<Self, String> {
        if state.format != STATE_FORMAT && state.format != 1 {
            return Err(format!(
                "state format {} is not supported (expected {STATE_FORMAT})",
                state.format
            ));
        }
        let unproven = state.format == 1;
        crate::names::dns_label("site", &state.site).map_err(|e| e.to_string())?;
        let mut c = Catalog::new(&state.site, state.epoch, limits);
        c.version = state.version;
        c.seq = state.seq;
        c.horizon = state.horizon;
        for (k, m) in state.merged {
            if unproven && k.origin != c.site {
                continue;
            }
            check_saved(&c.site, &k, &m.record).map_err(|e| format!("entry {k}: {e}"))?;
            if m.seq > c.seq {
                return Err(format!(
                    "entry {k} has seq {} beyond the stream head {}",
                    m.seq, c.seq
                ));
            }
            if c.by_seq.contains_key(&m.seq) {
                return Err(format!("entry {k} repeats seq {}", m.seq));
            }
            if matches!(m.record.body, Body::Withdrawn { .. }) {
                c.tombstones.insert(m.seq, k.clone());
            }
            c.by_seq.insert(m.seq, k.clone());
            if m.record.service().is_some() {
                c.count_live(k.origin == c.site, true);
            }
            c.merged.insert(k, m);
        }
        for l in state.links.into_iter().filter(|_| !unproven) {
            crate::names::dns_label("links.peer", &l.peer).map_err(|e| e.to_string())?;
            if l.records.len() > limits.max_records_per_link {
                return Err(format!(
                    "link {} holds {} records, over the limit of {}",
                    l.peer,
                    l.records.len(),
                    limits.max_records_per_link
                ));
            }
            for (k, r) in &l.records {
                check_saved(&c.site, k, r)
                    .map_err(|e| format!("link {}: entry {k}: {e}", l.peer))?;
                if k.origin == c.site {
                    return Err(format!(
                        "link {}: entry {k} is this site's own entry",
                        l.peer
                    ));
                }
            }
            c.links.insert(
                l.peer,
                Link {
                    position: l.position,
                    records: l.records.into_iter().collect(),
                },
            );
        }
        for (s, h) in state.heads.into_iter().filter(|_| !unproven) {
            crate::names::dns_label("heads", &s).map_err(|e| e.to_string())?;
            c.heads.insert(s, h);
        }
        if c.heads.len() > limits.max_origins + 1 {
            return Err(format!(
                "{} origin heads, over the limit of {}",
                c.heads.len(),
                limits.max_origins
            ));
        }
        c.certs = state
            .certs
            .into_iter()
            .map(|c| (crate::proof::fingerprint(&c.0), c))
            .collect();
        c.sealed_by = state.sealed_by;
        c.declared = state
            .declared
            .iter()
            .map(|(ns, name)| ServiceKey::new(ns, name))
            .collect();
        if let Some(h) = c.heads.get_mut(&c.site) {
            h.stamp = Stamp {
                epoch: c.epoch,
                version: c.version,
            };
        }
        Ok(c)
    }
}

/// Checks one record of a saved state: its fields, and for another origin's record that it
/// carries a proof whose signed bytes are exactly this record (the signature itself was checked
/// when the record arrived; the state file is this daemon's own, mode 0600).
fn check_saved(site: &str, k: &Key, r: &Record) -> Result<(), String> {
    crate::names::dns_label("origin", &k.origin).map_err(|e| e.to_string())?;
    crate::names::dns_label("namespace", &k.namespace).map_err(|e| e.to_string())?;
    crate::names::dns_label("name", &k.name).map_err(|e| e.to_string())?;
    if let Body::Live(s) = &r.body {
        s.validate().map_err(|e| e.to_string())?;
    }
    match &r.proof {
        Some(proof) => {
            let (sk, sr) = Record::from_proof("proof", proof.clone()).map_err(|e| e.to_string())?;
            if sk != *k || sr.stamp != r.stamp || sr.body != r.body {
                return Err("its proof is of another record".into());
            }
            Ok(())
        }
        None if k.origin == site => Ok(()),
        // A withdrawal this site made up (no peer carries the key any more) has no proof.
        None if matches!(r.body, Body::Withdrawn { .. }) => Ok(()),
        None => Err("has no origin proof".into()),
    }
}

/// Version of the state file layout (2: records of other origins carry origin proofs).
pub const STATE_FORMAT: u32 = 2;

/// The persisted form of a [`Catalog`].
#[derive(Debug, Serialize, Deserialize)]
pub struct State {
    format: u32,
    site: Site,
    epoch: u64,
    version: u64,
    seq: u64,
    horizon: u64,
    merged: Vec<(Key, Merged)>,
    links: Vec<LinkState>,
    heads: Vec<(Site, Head)>,
    /// `(namespace, name)` pairs (the saved form predates `ServiceKey`).
    #[serde(default)]
    declared: Vec<(String, String)>,
    /// Certificates of the signers of the seals held.
    #[serde(default)]
    certs: Vec<Arc<CertDer>>,
    /// The certificate this site's own records are sealed with (absent in states saved before
    /// rotation: the first start renews them once).
    #[serde(default, with = "crate::proof::fingerprint_hex::option")]
    sealed_by: Option<Fingerprint>,
    /// The generation of the journal that continues this snapshot (see `store`).
    #[serde(default)]
    journal: u64,
}

impl State {
    /// The layout version this state was saved with.
    pub fn format(&self) -> u32 {
        self.format
    }

    /// The site this state belongs to.
    pub fn site(&self) -> &str {
        &self.site
    }

    /// The generation of the journal that continues this snapshot.
    pub fn journal(&self) -> u64 {
        self.journal
    }

    /// Sets the generation of the journal that continues this snapshot.
    pub fn set_journal(&mut self, generation: u64) {
        self.journal = generation;
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct LinkState {
    peer: Site,
    position: Option<Position>,
    records: Vec<(Key, Record)>,
}

// ----- liveness ---------------------------------------------------------------------------

/// Whether an origin is reachable, as far as this site can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OriginState {
    /// This site itself.
    Local,
    /// A fresh beat was heard within the liveness timeout.
    Live,
    /// Not heard yet since this daemon started, still within the grace period.
    Unknown,
    /// Unreachable since the given instant.
    Stale(Instant),
}

/// The serving state of one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryState {
    /// Origin reachable (or local).
    Fresh,
    /// Origin unreachable; kept until `expires_in` runs out, routed to only if `served`.
    Stale {
        /// Whether callers are still routed to it.
        served: bool,
        /// Time left before it is withdrawn.
        expires_in: Duration,
    },
    /// Origin unreachable for longer than the entry's stale TTL: withdrawn here.
    Expired,
}

/// Tracks, per origin, when its liveness beat last advanced. Origin beats only ever come from
/// the origin itself (relays forward the highest they saw), so a dead origin's beat stops
/// advancing everywhere: no count-to-infinity.
#[derive(Debug)]
pub struct Liveness {
    started: Instant,
    timeout: Duration,
    seen: HashMap<Site, Instant>,
}

impl Liveness {
    /// A tracker declaring an origin unreachable `timeout` after its last fresh beat.
    pub fn new(started: Instant, timeout: Duration) -> Self {
        Self {
            started,
            timeout,
            seen: HashMap::new(),
        }
    }

    /// Records that `origin`'s beat advanced at `now`.
    pub fn observe(&mut self, origin: &str, now: Instant) {
        self.seen.insert(origin.to_string(), now);
    }

    /// When `origin` was last heard from.
    pub fn last_heard(&self, origin: &str) -> Option<Instant> {
        self.seen.get(origin).copied()
    }

    /// The state of `origin` at `now` (`local` is this site).
    pub fn state(&self, local: &str, origin: &str, now: Instant) -> OriginState {
        if origin == local {
            return OriginState::Local;
        }
        match self.seen.get(origin) {
            Some(t) if now.saturating_duration_since(*t) <= self.timeout => OriginState::Live,
            Some(t) => OriginState::Stale(*t + self.timeout),
            None if now.saturating_duration_since(self.started) <= self.timeout => {
                OriginState::Unknown
            }
            None => OriginState::Stale(self.started + self.timeout),
        }
    }

    /// The serving state of an entry with `policy`, whose origin is in `origin`.
    pub fn entry_state(origin: OriginState, svc: &Service, now: Instant) -> EntryState {
        match origin {
            OriginState::Local | OriginState::Live | OriginState::Unknown => EntryState::Fresh,
            OriginState::Stale(since) => {
                let ttl = Duration::from_secs(svc.stale.ttl_seconds);
                let gone = now.saturating_duration_since(since);
                if gone >= ttl {
                    EntryState::Expired
                } else {
                    EntryState::Stale {
                        served: svc.stale.serve,
                        expires_in: ttl - gone,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
