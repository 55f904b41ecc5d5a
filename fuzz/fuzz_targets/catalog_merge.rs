//! Catalog message decoding and merge: what a peer's sync messages can do to a site's catalog.
//!
//! Site `a` follows peers `b` and `m`. It first learns `b`'s genuine records and head from `b`
//! itself. Then `m`, a hostile peer holding a genuine federation certificate, sends whatever
//! the input says, along the receive path of a sync session (`codec::open_*`, then the
//! catalog's merge, as `sync/session.rs` and the store do):
//!
//! - raw protobuf `SyncMessage`s (decoding, field validation);
//! - records and heads it signs itself with its own valid key, claiming any origin, stamp,
//!   epoch or body, whole or redacted, and raw header bytes it signs;
//! - replays of `b`'s genuine signed records, older and current, whole or redacted;
//! - retractions of any key, deltas at any position, snapshots, its removal and return.
//!
//! Property: after every message, every entry and head of an origin other than `m` is exactly
//! what it was. No sequence of messages from a peer changes another origin's state unless it
//! carries that origin's proof (here: nothing newer than `a` already holds).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use federation::catalog::{Catalog, Change, Limits, Outgoing, Position};
use federation::identity::{Pair, Role, SiteId, Validity, init_ca, issue_site};
use federation::model::{self, Body, Key, Port, Record, Scope, Service, StalePolicy, Stamp};
use federation::proof::{Context, Signer, Verifier};
use federation::sync::codec::{self, Clock, Sealer};
use libfuzzer_sys::fuzz_target;
use multimesh_proto::catalog::v1 as wire;
use prost::Message;

const TD: &str = "multimesh.fuzz";

/// Everything made once per process: certificates, `b`'s genuine items, the clock.
struct World {
    verifier: Verifier,
    clock: Clock,
    m: Arc<Signer>,
    b_cert: Vec<u8>,
    b_epoch: u64,
    /// `b`'s genuine signed records, oldest first: ledger@1 live, payment@2, payment@3,
    /// ledger@4 withdrawn.
    b_records: Vec<wire::SignedRecord>,
    /// `b`'s genuine heads (one per beat it sent).
    b_heads: Vec<wire::SignedHead>,
    /// `a`'s state after hearing from `b`: the baseline of every run.
    baseline: Catalog,
}

fn der(pem: &str) -> Vec<u8> {
    federation::identity::cert_from_pem(pem)
        .map(|c| c.to_vec())
        .unwrap_or_default()
}

fn signer(ca: &Pair, site: &str) -> Arc<Signer> {
    let pair = issue_site(
        ca,
        &SiteId::new(TD, site, Role::Federation).expect("site id"),
        Validity::days(2),
    )
    .expect("site certificate");
    let cert = federation::identity::cert_from_pem(&pair.cert_pem).expect("certificate");
    let key = federation::identity::key_from_pem(&pair.key_pem).expect("key");
    Arc::new(Signer::new(&cert, &key).expect("signer"))
}

fn service(port: u16) -> Service {
    Service {
        ports: vec![Port::parse_cli("ports", &format!("http:{port}")).expect("port")],
        ingress: vec!["10.0.0.2:15443".into()],
        via: None,
        labels: BTreeMap::new(),
        identity: String::new(),
        scope: Scope::All,
        stale: StalePolicy::default(),
        share_with: BTreeSet::new(),
    }
}

fn signed(p: &model::Proof) -> wire::SignedRecord {
    wire::SignedRecord {
        header: p.header.bytes.clone(),
        signature: p.header.signature.clone(),
        signer: p.header.signer.to_vec(),
        record: p.record.as_ref().map(|r| r.0.clone()).unwrap_or_default(),
    }
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let ca = init_ca(TD, 3).expect("CA");
        let verifier = Verifier::new(
            &[rustls_pki_types::CertificateDer::from(der(&ca.cert_pem))],
            TD,
        )
        .expect("verifier");
        let now = SystemTime::now();
        let clock = Clock::at(now);
        let epoch = |back: u64| {
            u64::try_from(
                (now - Duration::from_secs(back))
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            )
            .unwrap_or(0)
        };
        let b = signer(&ca, "b");
        let m = signer(&ca, "m");

        // b's own history, sealed by b.
        let b_epoch = epoch(60);
        let mut cb = Catalog::new("b", b_epoch, Limits::default());
        let sealer = Sealer::new("b", b.clone());
        let payment = Key {
            origin: "b".into(),
            namespace: "shop".into(),
            name: "payment".into(),
        };
        let ledger = Key {
            origin: "b".into(),
            namespace: "shop".into(),
            name: "ledger".into(),
        };
        let mut b_records = Vec::new();
        let mut b_heads = Vec::new();
        let mut seal = |cb: &mut Catalog, key: &Key, beat: u64| {
            let r = all_records(cb)
                .into_iter()
                .find(|(k, _)| k == key)
                .map(|(_, r)| r)
                .expect("b's record");
            b_records.push(signed(&sealer.seal_of(key, &r).expect("sealed")));
            cb.set_own_beat(beat);
            let (heads, _) = codec::seal_heads(&sealer, &verifier, cb, clock.now);
            b_heads.extend(heads);
        };
        let beat0 = epoch(30) / 1_000_000;
        cb.export("shop", "ledger", service(7000)).expect("export");
        seal(&mut cb, &ledger, beat0);
        cb.export("shop", "payment", service(8080)).expect("export");
        seal(&mut cb, &payment, beat0 + 1);
        cb.export("shop", "payment", service(8081)).expect("export");
        seal(&mut cb, &payment, beat0 + 2);
        cb.unexport("shop", "ledger").expect("unexport");
        seal(&mut cb, &ledger, beat0 + 3);

        // a hears b's current state from b.
        let mut a = Catalog::new("a", epoch(10), Limits::default());
        a.export("shop", "cart", service(9090)).expect("a's export");
        a.set_peers(["b".to_string(), "m".to_string()].into_iter().collect());
        let b_cert = b.certificate().0.clone();
        let current = [b_records[2].clone(), b_records[3].clone()];
        let opened =
            codec::open_records(&verifier, &clock, &current, std::slice::from_ref(&b_cert))
                .expect("b's genuine records open");
        a.apply_snapshot(
            "b",
            Position {
                epoch: b_epoch,
                seq: 4,
            },
            opened.items,
        )
        .expect("b's snapshot applies");
        a.add_certs(opened.certs);
        let last = b_heads.last().cloned().expect("a head");
        let heads = codec::open_heads(&verifier, &clock, &[last], std::slice::from_ref(&b_cert))
            .expect("b's head opens");
        a.observe_heads(&heads.items);
        assert!(a.get(&payment).is_some_and(|r| r.service().is_some()));
        World {
            verifier,
            clock,
            m,
            b_cert,
            b_epoch,
            b_records,
            b_heads,
            baseline: a,
        }
    })
}

/// The input, read as a sequence of small choices (zeros once it runs out).
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn done(&self) -> bool {
        self.0.is_empty()
    }
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[usize::from(self.byte()) % from.len()].clone()
    }
    fn bytes(&mut self) -> Vec<u8> {
        let n = usize::from(self.byte()) * 4;
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
}

/// Every record of the merged view, withdrawals included (what a snapshot to a new peer holds).
fn all_records(c: &Catalog) -> Vec<(Key, Record)> {
    match c.changes_for("observer", None) {
        Outgoing::Snapshot { records, .. } => records,
        other => panic!("a new peer gets a snapshot, not {other:?}"),
    }
}

/// What the state of origins other than `m` is: the property compares it after each message.
fn others(c: &Catalog) -> (Vec<(Key, Record)>, Vec<(String, Stamp, u64)>) {
    let entries = all_records(c)
        .into_iter()
        .filter(|(k, _)| k.origin != "m")
        .collect();
    let heads = c
        .heads()
        .iter()
        .filter(|(o, _)| o.as_str() != "m")
        .map(|(o, h)| (o.clone(), h.stamp, h.beat))
        .collect();
    (entries, heads)
}

/// A record `m` makes up and signs with its own key.
fn forged(w: &World, input: &mut Input) -> wire::SignedRecord {
    let origin: String = input.pick(&["b", "a", "m", "x", "payment"]).into();
    let key = Key {
        origin,
        namespace: input.pick(&["shop", "kube-system", "Shop", ""]).into(),
        name: input.pick(&["payment", "ledger", "cart", "new"]).into(),
    };
    let epoch = input.pick(&[
        w.b_epoch,
        w.b_epoch + 1,
        w.clock.max_epoch,
        w.clock.max_epoch + 1,
        u64::MAX,
        0,
    ]);
    let version = input.pick(&[1, 3, 4, 5, u64::MAX]);
    let stamp = Stamp { epoch, version };
    let body = if input.byte() & 1 == 0 {
        let mut s = service(u16::from(input.byte()) + 1);
        if input.byte() & 1 == 1 {
            s.via = Some(input.pick(&["m", "b", "a"]).into());
        }
        if input.byte() & 1 == 1 {
            s.scope = Scope::Sites(["a".to_string()].into_iter().collect());
        }
        Body::Live(Arc::new(s))
    } else {
        Body::Withdrawn {
            audience: Scope::All,
        }
    };
    let record = Record::new(stamp, body);
    let bytes = record.encode(&key);
    let header = model::header_of(&key, &record, &bytes).encode_to_vec();
    let (header, bytes) = match input.byte() % 4 {
        // Raw header bytes, validly signed by m.
        0 => (input.bytes(), input.bytes()),
        // Redacted: the header alone.
        1 => (header, Vec::new()),
        _ => (header, bytes),
    };
    let seal = w.m.seal(Context::Record, header);
    wire::SignedRecord {
        header: seal.bytes,
        signature: seal.signature,
        signer: seal.signer.to_vec(),
        record: bytes,
    }
}

/// A head `m` makes up and signs.
fn forged_head(w: &World, input: &mut Input) -> wire::SignedHead {
    let head = wire::OriginHead {
        origin: input.pick(&["b", "a", "m", "x"]).into(),
        epoch: input.pick(&[w.b_epoch, w.b_epoch + 1, w.clock.max_epoch, u64::MAX]),
        version: input.pick(&[0, 4, 5, u64::MAX]),
        beat: input.pick(&[0, w.clock.max_beat, w.clock.max_beat + 1, u64::MAX]),
    };
    let seal = w.m.seal(Context::Head, head.encode_to_vec());
    wire::SignedHead {
        head: seal.bytes,
        signature: seal.signature,
        signer: seal.signer.to_vec(),
    }
}

/// One item `m` puts in its next message.
enum Item {
    Record(wire::SignedRecord),
    Retraction(wire::Retraction),
    Head(wire::SignedHead),
}

fn item(w: &World, input: &mut Input) -> Item {
    match input.byte() % 5 {
        0 => Item::Record(forged(w, input)),
        1 => {
            let mut r = input.pick(&w.b_records);
            if input.byte() & 1 == 1 {
                r.record.clear();
            }
            Item::Record(r)
        }
        2 => Item::Retraction(wire::Retraction {
            origin: input.pick(&["b", "a", "m", "x"]).into(),
            namespace: "shop".into(),
            name: input.pick(&["payment", "ledger", "cart"]).into(),
        }),
        3 => Item::Head(forged_head(w, input)),
        _ => Item::Head(input.pick(&w.b_heads)),
    }
}

/// Applies one message from `m` the way a sync session does. Refusals are expected; the
/// property is about what gets through.
fn receive(w: &World, a: &mut Catalog, msg: wire::SyncMessage) {
    let clock = &w.clock;
    match msg.body {
        Some(wire::sync_message::Body::Hello(h)) => {
            if let Ok(o) = codec::open_heads(&w.verifier, clock, &h.heads, &h.certificates) {
                a.observe_heads(&o.items);
            }
        }
        Some(wire::sync_message::Body::Heartbeat(h)) => {
            if let Ok(o) = codec::open_heads(&w.verifier, clock, &h.heads, &h.certificates) {
                a.observe_heads(&o.items);
                if let Some(p) = h.position {
                    a.advance_link(
                        "m",
                        Position {
                            epoch: p.epoch,
                            seq: p.seq,
                        },
                    );
                }
            }
        }
        Some(wire::sync_message::Body::Snapshot(s)) => {
            let Some(p) = s.position else { return };
            if let Ok(o) = codec::open_records(&w.verifier, clock, &s.records, &s.certificates)
                && a.apply_snapshot(
                    "m",
                    Position {
                        epoch: p.epoch,
                        seq: p.seq,
                    },
                    o.items,
                )
                .is_ok()
            {
                a.add_certs(o.certs);
            }
        }
        Some(wire::sync_message::Body::Delta(d)) => {
            if let Ok(o) = codec::open_changes(&w.verifier, clock, &d.changes, &d.certificates) {
                let from = Position {
                    epoch: d.epoch,
                    seq: d.from_seq,
                };
                let to = Position {
                    epoch: d.epoch,
                    seq: d.to_seq,
                };
                let items: Vec<(Key, Change)> = o.items;
                if a.apply_delta("m", from, to, items).is_ok() {
                    a.add_certs(o.certs);
                }
            }
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let mut a = w.baseline.clone();
    let expected = others(&a);
    let mut input = Input(data);
    let m_epoch = 7u64;
    let mut seq = 0u64;
    let mut steps = 0;
    while !input.done() && steps < 64 {
        steps += 1;
        let msg = match input.byte() % 6 {
            // Raw bytes as a message.
            0 => match wire::SyncMessage::decode(input.bytes().as_slice()) {
                Ok(m) => m,
                Err(_) => continue,
            },
            // m leaves the configuration, and comes back.
            1 => {
                a.set_peers(["b".to_string()].into_iter().collect());
                assert_eq!(others(&a), expected, "removing m changed another origin");
                a.set_peers(["b".to_string(), "m".to_string()].into_iter().collect());
                assert_eq!(others(&a), expected, "re-adding m changed another origin");
                continue;
            }
            kind => {
                let n = usize::from(input.byte() % 4) + 1;
                let items: Vec<Item> = (0..n).map(|_| item(w, &mut input)).collect();
                let mut certificates = vec![w.m.certificate().0.clone()];
                if input.byte() & 1 == 1 {
                    certificates.push(w.b_cert.clone());
                }
                let body = match kind {
                    2 => {
                        seq += 1;
                        wire::sync_message::Body::Snapshot(wire::SnapshotChunk {
                            position: Some(wire::StreamPosition {
                                epoch: m_epoch,
                                seq,
                            }),
                            index: 0,
                            last: true,
                            records: items
                                .into_iter()
                                .filter_map(|i| match i {
                                    Item::Record(r) => Some(r),
                                    _ => None,
                                })
                                .collect(),
                            certificates,
                        })
                    }
                    3 | 4 => {
                        let from = if kind == 3 {
                            seq
                        } else {
                            u64::from(input.byte())
                        };
                        seq = from + 1;
                        wire::sync_message::Body::Delta(wire::Delta {
                            epoch: m_epoch,
                            from_seq: from,
                            to_seq: seq,
                            changes: items
                                .into_iter()
                                .filter_map(|i| {
                                    let kind = match i {
                                        Item::Record(r) => wire::change::Kind::Signed(r),
                                        Item::Retraction(r) => wire::change::Kind::Retracted(r),
                                        Item::Head(_) => return None,
                                    };
                                    Some(wire::Change { kind: Some(kind) })
                                })
                                .collect(),
                            certificates,
                        })
                    }
                    _ => wire::sync_message::Body::Heartbeat(wire::Heartbeat {
                        position: Some(wire::StreamPosition {
                            epoch: m_epoch,
                            seq,
                        }),
                        heads: items
                            .into_iter()
                            .filter_map(|i| match i {
                                Item::Head(h) => Some(h),
                                _ => None,
                            })
                            .collect(),
                        certificates,
                    }),
                };
                wire::SyncMessage {
                    msg_id: steps,
                    body: Some(body),
                }
            }
        };
        receive(w, &mut a, msg);
        assert_eq!(
            others(&a),
            expected,
            "a message from m changed another origin's state"
        );
    }
});
