//! Unit tests of the pure catalog: export, scope filtering, delta/snapshot replication, relays,
//! refusals that change nothing, compaction, persistence and liveness.

use super::*;
use crate::model::StalePolicy;
use crate::sync::codec::Sealer;

fn svc(scope: Scope) -> Service {
    crate::model::test_service(8080, scope)
}

fn sites(s: &[&str]) -> Scope {
    Scope::Sites(s.iter().map(|x| x.to_string()).collect())
}

fn cat(site: &str, epoch: u64) -> Catalog {
    Catalog::new(site, epoch, Limits::default())
}

/// What one sync step sent: (snapshots, deltas, records).
#[derive(Default, Debug, PartialEq)]
struct Sent {
    snapshots: usize,
    deltas: usize,
    records: Vec<Key>,
    bodies: Vec<(Key, Change)>,
}

thread_local! {
    static SEALERS: std::cell::RefCell<std::collections::HashMap<String, Arc<Sealer>>> =
        Default::default();
}

/// The sealer of `site` (one test key per site and thread).
pub(crate) fn sealer(site: &str) -> Arc<Sealer> {
    SEALERS.with(|m| {
        m.borrow_mut()
            .entry(site.to_string())
            .or_insert_with(|| Arc::new(Sealer::new(site, crate::proof::test_pki::signer(site))))
            .clone()
    })
}

/// What a session of `from` puts on the wire: its own records sealed, others' as received.
pub(crate) fn sealed(from: &str, records: Vec<(Key, Record)>) -> Vec<(Key, Record)> {
    let s = sealer(from);
    records
        .into_iter()
        .map(|(k, mut r)| {
            r.proof = s.seal_of(&k, &r);
            (k, r)
        })
        .collect()
}

/// The same for the changes of a delta.
pub(crate) fn sealed_changes(from: &str, changes: Vec<(Key, Change)>) -> Vec<(Key, Change)> {
    let s = sealer(from);
    changes
        .into_iter()
        .map(|(k, c)| match c {
            Change::Put(mut r) => {
                r.proof = s.seal_of(&k, &r);
                (k, Change::Put(r))
            }
            Change::Retract => (k, Change::Retract),
        })
        .collect()
}

/// One catch-up of `to` from `from`, as a session does it: resume from the position `to` holds,
/// fall back to a snapshot on a gap.
fn sync(from: &Catalog, to: &mut Catalog) -> Sent {
    let mut sent = Sent::default();
    let mut since = to.link_position(from.site());
    loop {
        match from.changes_for(to.site(), since) {
            Outgoing::UpToDate(_) => return sent,
            Outgoing::Delta {
                from: f,
                to: t,
                records,
            } => {
                sent.deltas += 1;
                sent.records.extend(records.iter().map(|(k, _)| k.clone()));
                let records = sealed_changes(from.site(), records);
                sent.bodies.extend(records.iter().cloned());
                match to.apply_delta(from.site(), f, t, records) {
                    Ok(_) => return sent,
                    Err(Refusal::Gap(_)) => since = None,
                    Err(e) => panic!("refused: {e}"),
                }
            }
            Outgoing::Snapshot { at, records } => {
                sent.snapshots += 1;
                sent.records.extend(records.iter().map(|(k, _)| k.clone()));
                let records = sealed(from.site(), records);
                sent.bodies.extend(
                    records
                        .iter()
                        .map(|(k, r)| (k.clone(), Change::Put(r.clone()))),
                );
                to.apply_snapshot(from.site(), at, records)
                    .expect("snapshot applies");
                return sent;
            }
        }
    }
}

fn names(c: &Catalog) -> Vec<String> {
    c.entries().map(|(k, _)| k.to_string()).collect()
}

#[test]
fn export_bumps_version_and_reexport_is_idempotent() {
    let mut a = cat("a", 1);
    let s1 = a.export("shop", "payment", svc(Scope::All)).unwrap();
    assert_eq!(
        s1,
        Stamp {
            epoch: 1,
            version: 1
        }
    );
    assert_eq!(a.export("shop", "payment", svc(Scope::All)).unwrap(), s1);
    assert_eq!(a.position().seq, 1);
    let s2 = a.export("shop", "payment", svc(sites(&["b"]))).unwrap();
    assert_eq!(s2.version, 2);
    let s3 = a.unexport("shop", "payment").unwrap();
    assert_eq!(s3.version, 3);
    assert!(matches!(
        a.unexport("shop", "payment"),
        Err(AdminError::NotExported { .. })
    ));
    assert_eq!(a.exports().count(), 0);
}

#[test]
fn bad_export_changes_nothing() {
    let mut a = cat("a", 1);
    let mut bad = svc(Scope::All);
    bad.ports[0].port = 0;
    assert!(a.export("shop", "payment", bad).is_err());
    assert!(a.export("Shop", "payment", svc(Scope::All)).is_err());
    assert_eq!(a.position().seq, 0);
    assert_eq!(a.version(), 0);
}

#[test]
fn export_reaches_peers_and_unexport_withdraws() {
    let mut a = cat("a", 1);
    let mut b = cat("b", 2);
    a.export("shop", "payment", svc(Scope::All)).unwrap();
    let first = sync(&a, &mut b);
    assert_eq!((first.snapshots, first.deltas), (1, 0));
    assert_eq!(names(&b), ["shop/payment@a"]);
    a.unexport("shop", "payment").unwrap();
    let second = sync(&a, &mut b);
    assert_eq!((second.snapshots, second.deltas), (0, 1));
    assert!(names(&b).is_empty());
}

#[test]
fn scoped_export_is_never_sent_outside_its_scope() {
    let mut a = cat("a", 1);
    let mut b = cat("b", 2);
    let mut c = cat("c", 3);
    a.export("shop", "secret", svc(sites(&["b"]))).unwrap();
    a.export("shop", "public", svc(Scope::All)).unwrap();
    sync(&a, &mut b);
    let to_c = sync(&a, &mut c);
    assert!(to_c.records.iter().all(|k| k.name != "secret"), "{to_c:?}");
    // b relays to c: still never the secret one.
    let relayed = sync(&b, &mut c);
    assert!(
        relayed.records.iter().all(|k| k.name != "secret"),
        "{relayed:?}"
    );
    assert_eq!(names(&c), ["shop/public@a"]);
    assert_eq!(names(&b), ["shop/public@a", "shop/secret@a"]);
}

#[test]
fn narrowing_a_scope_withdraws_only_from_those_who_saw_it() {
    let mut a = cat("a", 1);
    let (mut b, mut c, mut d) = (cat("b", 2), cat("c", 3), cat("d", 4));
    a.export("shop", "pay", svc(sites(&["b", "c"]))).unwrap();
    sync(&a, &mut b);
    sync(&a, &mut c);
    sync(&a, &mut d);
    a.export("shop", "pay", svc(sites(&["b"]))).unwrap();
    sync(&a, &mut b);
    let to_c = sync(&a, &mut c);
    assert_eq!(to_c.records.len(), 1, "c gets the withdrawal");
    assert!(names(&c).is_empty());
    let to_d = sync(&a, &mut d);
    assert!(
        to_d.records.is_empty(),
        "d never saw it and hears nothing of it"
    );
    assert_eq!(names(&b), ["shop/pay@a"]);
}

#[test]
fn relay_reaches_an_edge_node_and_back() {
    // a - c - node: node sees a's service through c, and a sees node's.
    let (mut a, mut c, mut n) = (cat("a", 1), cat("c", 3), cat("node", 9));
    a.export("shop", "payment", svc(Scope::All)).unwrap();
    n.export("edge", "sensor", svc(Scope::All)).unwrap();
    for _ in 0..2 {
        sync(&a, &mut c);
        sync(&n, &mut c);
        sync(&c, &mut a);
        sync(&c, &mut n);
    }
    assert_eq!(names(&n), ["shop/payment@a", "edge/sensor@node"]);
    assert_eq!(names(&a), ["shop/payment@a", "edge/sensor@node"]);
    // Relaying back to the origin sends nothing of its own.
    let back = sync(&c, &mut a);
    assert!(back.records.iter().all(|k| k.origin != "a"));
    // Unexport travels the relay too.
    a.unexport("shop", "payment").unwrap();
    sync(&a, &mut c);
    sync(&c, &mut n);
    assert_eq!(names(&n), ["edge/sensor@node"]);
}

#[test]
fn a_removed_peer_is_withdrawn_downstream_its_messages_refused_and_a_return_resyncs() {
    // c - a - b: b holds c's service through a. a's operator removes c from a's peers.
    let set = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<BTreeSet<_>>();
    let (mut a, mut b, mut c) = (cat("a", 1), cat("b", 2), cat("c", 3));
    a.set_peers(set(&["b", "c"]));
    c.export("shop", "reviews", svc(Scope::All)).unwrap();
    sync(&c, &mut a);
    sync(&a, &mut b);
    assert_eq!(names(&b), ["shop/reviews@c"]);

    assert_eq!(a.set_peers(set(&["b"])), ["c"]);
    assert!(names(&a).is_empty(), "what only c carried is gone at a");
    sync(&a, &mut b);
    assert!(names(&b).is_empty(), "and the withdrawal travels on to b");

    // A message c's session was still sending is refused whole, naming why.
    c.export("shop", "ratings", svc(Scope::All)).unwrap();
    let Outgoing::Snapshot { at, records } = c.changes_for("a", None) else {
        panic!("a first message to a new peer is a snapshot");
    };
    let before = a.position();
    let e = a.apply_snapshot("c", at, sealed("c", records)).unwrap_err();
    assert!(
        e.to_string().contains("c is not a configured peer of a"),
        "{e}"
    );
    assert!(names(&a).is_empty() && a.position() == before && a.link_position("c").is_none());

    // Configured again: c's records come back with a snapshot.
    a.set_peers(set(&["b", "c"]));
    assert_eq!(sync(&c, &mut a).snapshots, 1);
    sync(&a, &mut b);
    assert_eq!(names(&b), ["shop/ratings@c", "shop/reviews@c"]);
}

#[test]
fn renewing_with_a_new_signer_restamps_own_records_and_relays_replace_theirs() {
    // a - c - n: c relays a's records to n.
    let (mut a, mut c, mut n) = (cat("a", 1), cat("c", 3), cat("n", 9));
    let first = [1u8; 32];
    assert_eq!(
        a.renew(first),
        Some(0),
        "a new signer is recorded even with no records"
    );
    assert_eq!(
        a.renew(first),
        None,
        "the same signer again changes nothing"
    );
    a.export("shop", "payment", svc(Scope::All)).unwrap();
    a.export("shop", "ledger", svc(Scope::All)).unwrap();
    a.unexport("shop", "ledger").unwrap();
    sync(&a, &mut c);
    sync(&c, &mut n);
    let stamp_at = |cat: &Catalog, name: &str| {
        cat.merged
            .iter()
            .find(|(k, _)| k.origin == "a" && k.name == name)
            .map(|(_, m)| m.record.stamp)
            .unwrap()
    };
    let before = (stamp_at(&a, "payment"), stamp_at(&a, "ledger"));
    let seq = a.position().seq;

    // Rotated: both own records (the live one and the withdrawal) get new stamps, same
    // content; nothing else moves.
    assert_eq!(a.renew([2u8; 32]), Some(2));
    assert_eq!(a.sealed_by(), Some([2u8; 32]));
    assert!(stamp_at(&a, "payment") > before.0 && stamp_at(&a, "ledger") > before.1);
    assert_eq!(a.position().seq, seq + 2);
    assert_eq!(names(&a), ["shop/payment@a"]);
    assert_eq!(a.exports().count(), 1);

    // The relay and the node beyond it take the new stamps (with the new seals).
    let to_c = sync(&a, &mut c);
    assert_eq!((to_c.snapshots, to_c.deltas, to_c.records.len()), (0, 1, 2));
    sync(&c, &mut n);
    assert_eq!(stamp_at(&n, "payment"), stamp_at(&a, "payment"));
    assert_eq!(names(&n), ["shop/payment@a"]);

    // The signer survives a save and load: a restart with the same certificate renews nothing.
    let mut back = Catalog::from_state(a.to_state(), Limits::default()).unwrap();
    assert_eq!(back.renew([2u8; 32]), None);
}

#[test]
fn reconnect_resumes_with_a_delta_without_resending() {
    let mut a = cat("a", 1);
    let mut b = cat("b", 2);
    for i in 0..5 {
        a.export("shop", &format!("s{i}"), svc(Scope::All)).unwrap();
    }
    assert_eq!(sync(&a, &mut b).snapshots, 1);
    // b restarts from its saved state.
    let mut b = Catalog::from_state(
        serde_json::from_str(&serde_json::to_string(&b.to_state()).unwrap()).unwrap(),
        Limits::default(),
    )
    .unwrap();
    assert!(matches!(
        a.changes_for("b", b.link_position("a")),
        Outgoing::UpToDate(_)
    ));
    a.export("shop", "s9", svc(Scope::All)).unwrap();
    let again = sync(&a, &mut b);
    assert_eq!((again.snapshots, again.deltas), (0, 1));
    assert_eq!(again.records.len(), 1);
    assert_eq!(names(&b).len(), 6);
}

#[test]
fn a_new_epoch_gets_a_snapshot() {
    let mut a = cat("a", 1);
    let mut b = cat("b", 2);
    a.export("shop", "x", svc(Scope::All)).unwrap();
    sync(&a, &mut b);
    // a lost its state: new epoch, versions restart, its new entries still win.
    let mut a2 = cat("a", 5);
    a2.export("shop", "y", svc(Scope::All)).unwrap();
    let s = sync(&a2, &mut b);
    assert_eq!(s.snapshots, 1);
    assert_eq!(names(&b), ["shop/y@a"]);
}

#[test]
fn gap_is_refused_and_changes_nothing() {
    let mut a = cat("a", 1);
    let mut b = cat("b", 2);
    a.export("shop", "x", svc(Scope::All)).unwrap();
    sync(&a, &mut b);
    a.export("shop", "y", svc(Scope::All)).unwrap();
    a.export("shop", "z", svc(Scope::All)).unwrap();
    let Outgoing::Delta { to, records, .. } =
        a.changes_for("b", Some(Position { epoch: 1, seq: 2 }))
    else {
        panic!("expected a delta");
    };
    let before = names(&b);
    let err = b
        .apply_delta("a", Position { epoch: 1, seq: 2 }, to, records)
        .unwrap_err();
    assert!(matches!(err, Refusal::Gap(_)), "{err}");
    assert_eq!(names(&b), before);
    assert_eq!(b.link_position("a"), Some(Position { epoch: 1, seq: 1 }));
}

#[test]
fn scope_violation_and_own_entries_are_refused_whole() {
    let mut a = cat("a", 1);
    let mut c = cat("c", 3);
    a.export("shop", "ok", svc(Scope::All)).unwrap();
    a.export("shop", "secret", svc(sites(&["b"]))).unwrap();
    // A misbehaving sender puts the b-only entry into c's snapshot.
    let records: Vec<_> = ["ok", "secret"]
        .iter()
        .map(|n| {
            let k = Key {
                origin: "a".into(),
                namespace: "shop".into(),
                name: n.to_string(),
            };
            let r = a.get(&k).unwrap().clone();
            (k, r)
        })
        .collect();
    let err = c.apply_snapshot("a", a.position(), records).unwrap_err();
    assert!(matches!(err, Refusal::ScopeViolation(_)), "{err}");
    assert!(names(&c).is_empty());
    assert_eq!(c.link_position("a"), None);

    // A peer echoing c's own entry back is refused too.
    c.export("x", "mine", svc(Scope::All)).unwrap();
    let k = Key {
        origin: "c".into(),
        namespace: "x".into(),
        name: "mine".into(),
    };
    let r = c.get(&k).unwrap().clone();
    let err = c
        .apply_snapshot("a", a.position(), vec![(k, r)])
        .unwrap_err();
    assert!(matches!(err, Refusal::Protocol(_)), "{err}");
    assert_eq!(names(&c), ["x/mine@c"]);
}

#[test]
fn oversized_snapshot_is_refused_whole() {
    let mut a = cat("a", 1);
    for i in 0..20 {
        a.export("shop", &format!("s{i}"), svc(Scope::All)).unwrap();
    }
    let mut b = Catalog::new(
        "b",
        2,
        Limits {
            max_records_per_link: 10,
            ..Limits::default()
        },
    );
    let Outgoing::Snapshot { at, records } = a.changes_for("b", None) else {
        panic!()
    };
    let err = b.apply_snapshot("a", at, records).unwrap_err();
    assert!(matches!(err, Refusal::TooLarge(_)), "{err}");
    assert!(names(&b).is_empty());
    assert_eq!(b.position().seq, 0);
}

#[test]
fn compaction_forces_a_snapshot_for_peers_far_behind() {
    let limits = Limits {
        max_tombstones: 2,
        ..Limits::default()
    };
    let mut a = Catalog::new("a", 1, limits);
    let mut b = cat("b", 2);
    for i in 0..4 {
        a.export("shop", &format!("s{i}"), svc(Scope::All)).unwrap();
    }
    sync(&a, &mut b);
    for i in 0..4 {
        a.unexport("shop", &format!("s{i}")).unwrap();
    }
    a.export("shop", "last", svc(Scope::All)).unwrap();
    let s = sync(&a, &mut b);
    assert_eq!(s.snapshots, 1, "b's position predates compacted tombstones");
    assert_eq!(names(&b), ["shop/last@a"]);
}

#[test]
fn snapshot_from_one_link_leaves_other_links_alone() {
    // b hears a directly and through c. c's snapshot lacks a's scoped entry (c may not see it),
    // which must not remove what b learned from a directly.
    let (mut a, mut b, mut c) = (cat("a", 1), cat("b", 2), cat("c", 3));
    a.export("shop", "bonly", svc(sites(&["b"]))).unwrap();
    a.export("shop", "all", svc(Scope::All)).unwrap();
    sync(&a, &mut b);
    sync(&a, &mut c);
    sync(&c, &mut b);
    assert_eq!(names(&b), ["shop/all@a", "shop/bonly@a"]);
}

#[test]
fn random_topologies_converge() {
    // A deterministic pseudo-random walk of exports, unexports and syncs over a mesh with a
    // relayed edge node; at the end every site must hold exactly the live entries it may see.
    let sites_all = ["a", "b", "c", "node"];
    let links = [("a", "b"), ("a", "c"), ("b", "c"), ("c", "node")];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for round in 0..100 {
        let mut cats: Vec<Catalog> = sites_all
            .iter()
            .enumerate()
            .map(|(i, s)| cat(s, i as u64 + 1))
            .collect();
        for _ in 0..200 {
            match next(4) {
                0 | 1 => {
                    let o = next(4) as usize;
                    let name = format!("s{}", next(6));
                    let scope = match next(3) {
                        0 => Scope::All,
                        1 => sites(&[sites_all[next(4) as usize]]),
                        _ => sites(&[sites_all[next(4) as usize], sites_all[next(4) as usize]]),
                    };
                    let _ = cats[o].export("ns", &name, svc(scope));
                }
                2 => {
                    let o = next(4) as usize;
                    let _ = cats[o].unexport("ns", &format!("s{}", next(6)));
                }
                _ => {
                    let (x, y) = links[next(4) as usize];
                    let (xi, yi) = (idx(&sites_all, x), idx(&sites_all, y));
                    let (from, to) = if next(2) == 0 { (xi, yi) } else { (yi, xi) };
                    let (f, t) = pair(&mut cats, from, to);
                    let sent = sync(f, t);
                    for (k, c) in &sent.bodies {
                        if let Change::Put(r) = c
                            && let Body::Live(s) = &r.body
                        {
                            assert!(
                                s.scope.allows(t.site()),
                                "round {round}: {k} sent to {}",
                                t.site()
                            );
                        }
                    }
                }
            }
        }
        // Settle: sync every link both ways until nothing changes.
        for _ in 0..6 {
            for (x, y) in links {
                let (xi, yi) = (idx(&sites_all, x), idx(&sites_all, y));
                let (f, t) = pair(&mut cats, xi, yi);
                sync(f, t);
                let (f, t) = pair(&mut cats, yi, xi);
                sync(f, t);
            }
        }
        for viewer in &cats {
            let mut expected: Vec<String> = Vec::new();
            for origin in &cats {
                for (k, r) in origin.exports() {
                    let s = r.service().unwrap();
                    if origin.site() == viewer.site()
                        || reachable(viewer.site(), origin.site(), &s.scope)
                    {
                        expected.push(k.to_string());
                    }
                }
            }
            expected.sort();
            let mut got = names(viewer);
            got.sort();
            assert_eq!(got, expected, "round {round}, site {}", viewer.site());
            assert_eq!(viewer.live_count(), got.len(), "round {round}");
            assert_eq!(
                viewer.export_count(),
                viewer.exports().count(),
                "round {round}"
            );
        }
    }

    fn idx(all: &[&str], s: &str) -> usize {
        all.iter().position(|x| *x == s).unwrap()
    }
    fn pair(v: &mut [Catalog], i: usize, j: usize) -> (&Catalog, &mut Catalog) {
        assert_ne!(i, j);
        if i < j {
            let (l, r) = v.split_at_mut(j);
            (&l[i], &mut r[0])
        } else {
            let (l, r) = v.split_at_mut(i);
            (&r[0], &mut l[j])
        }
    }
    /// Whether `viewer` can get `origin`'s entry scoped `scope`: there is a path from the origin
    /// whose every hop is allowed by the scope.
    fn reachable(viewer: &str, origin: &str, scope: &Scope) -> bool {
        let links = [("a", "b"), ("a", "c"), ("b", "c"), ("c", "node")];
        let mut seen = vec![origin.to_string()];
        let mut frontier = vec![origin.to_string()];
        while let Some(x) = frontier.pop() {
            for (p, q) in links {
                for (u, v) in [(p, q), (q, p)] {
                    if u == x && scope.allows(v) && !seen.iter().any(|s| s == v) {
                        seen.push(v.to_string());
                        frontier.push(v.to_string());
                    }
                }
            }
        }
        seen.iter().any(|s| s == viewer)
    }
}

#[test]
fn heads_and_lag() {
    let mut a = cat("a", 1);
    let mut b = cat("b", 2);
    a.export("shop", "x", svc(Scope::All)).unwrap();
    a.export("shop", "y", svc(Scope::All)).unwrap();
    a.set_own_beat(100);
    let heads: Vec<_> = a
        .heads()
        .iter()
        .map(|(s, h)| (s.clone(), h.clone()))
        .collect();
    assert_eq!(b.observe_heads(&heads), vec![("a".to_string(), 100)]);
    assert!(
        b.observe_heads(&heads).is_empty(),
        "same beat is not an advance"
    );
    assert_eq!(b.heads()["a"].stamp.version, 2);
    let mut behind = b.heads().clone();
    behind.get_mut("a").unwrap().stamp.version = 0;
    assert_eq!(b.lag_of(&behind), 2);
    assert_eq!(b.lag_of(b.heads()), 0);
}

#[test]
fn liveness_and_stale_policy() {
    let t0 = Instant::now();
    let mut l = Liveness::new(t0, Duration::from_secs(3));
    assert_eq!(l.state("b", "b", t0), OriginState::Local);
    assert_eq!(
        l.state("b", "a", t0 + Duration::from_secs(1)),
        OriginState::Unknown
    );
    assert_eq!(
        l.state("b", "a", t0 + Duration::from_secs(5)),
        OriginState::Stale(t0 + Duration::from_secs(3))
    );
    l.observe("a", t0 + Duration::from_secs(5));
    assert_eq!(
        l.state("b", "a", t0 + Duration::from_secs(7)),
        OriginState::Live
    );
    let gone = l.state("b", "a", t0 + Duration::from_secs(10));
    assert_eq!(gone, OriginState::Stale(t0 + Duration::from_secs(8)));
    let mut s = svc(Scope::All);
    s.stale = StalePolicy {
        ttl_seconds: 5,
        serve: false,
    };
    assert_eq!(
        Liveness::entry_state(gone, &s, t0 + Duration::from_secs(10)),
        EntryState::Stale {
            served: false,
            expires_in: Duration::from_secs(3)
        }
    );
    assert_eq!(
        Liveness::entry_state(gone, &s, t0 + Duration::from_secs(13)),
        EntryState::Expired
    );
}
