//! Tests of the snapshot + journal persistence: what was flushed comes back exactly, through
//! compactions, a crash in the middle of a compaction, and a torn last line.

use super::*;
use crate::catalog::Outgoing;
use crate::model::Scope;

fn svc(port: u16, scope: Scope) -> Service {
    crate::model::test_service(port, scope)
}

fn liveness() -> Liveness {
    Liveness::new(Instant::now(), Duration::from_secs(3))
}

/// The saved form of a catalog, comparable across a reload.
fn image(c: &Catalog) -> serde_json::Value {
    serde_json::to_value(c.to_state()).unwrap()
}

fn reload(path: &Path, site: &str) -> Catalog {
    load(path, site, Limits::default()).unwrap().0
}

/// The certificate that signs b's records.
fn certs() -> Vec<std::sync::Arc<crate::proof::CertDer>> {
    vec![
        crate::catalog::tests::sealer("b")
            .signer()
            .certificate()
            .clone(),
    ]
}

/// Brings `store` (site a) up to date with peer `b`, as a session would.
fn pull(store: &Store, b: &Catalog) {
    let since = store.read(|c| c.link_position("b"));
    match b.changes_for("a", since) {
        Outgoing::UpToDate(to) => {
            store.advance_link("b", to);
        }
        Outgoing::Delta { from, to, records } => {
            let records = crate::catalog::tests::sealed_changes("b", records);
            store.apply_delta("b", from, to, records, certs()).unwrap();
        }
        Outgoing::Snapshot { at, records } => {
            let records = crate::catalog::tests::sealed("b", records);
            store.apply_snapshot("b", at, records, certs()).unwrap();
        }
    }
}

/// A deterministic walk of exports, unexports, pulls from a peer, certificate renewals and
/// the peer removed from and added back to the config, flushing now and then.
/// Returns the image of the catalog at the last flush.
fn walk(store: &Store, steps: usize, seed: u64) -> serde_json::Value {
    let mut b = Catalog::new("b", 7, Limits::default());
    let mut rng = seed;
    let mut next = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut flushed = store.read(image);
    let mut linked = true;
    for _ in 0..steps {
        let name = format!("s{}", next(8));
        match next(8) {
            0 => {
                let _ = store.export("ns", &name, svc(8000 + next(3) as u16, Scope::All));
            }
            1 => {
                let _ = store.unexport("ns", &name);
            }
            2 => {
                let _ = b.export("ns", &name, svc(9000 + next(3) as u16, Scope::All));
            }
            3 => {
                let _ = b.unexport("ns", &name);
            }
            4 if linked => pull(store, &b),
            4 => {}
            // A rotated certificate (one of three): own records get new stamps.
            5 => {
                let _ = store.renew([1 + next(3) as u8; 32]);
            }
            // b removed from the config (what only it sent is dropped), or added back.
            6 => {
                linked = next(2) == 0;
                let peers = if linked {
                    vec!["b".to_string()]
                } else {
                    vec![]
                };
                store.set_peers(peers.into_iter().collect());
            }
            _ => {
                store.flush().unwrap();
                flushed = store.read(image);
            }
        }
    }
    flushed
}

fn new_store(dir: &Path) -> (Store, PathBuf) {
    let path = dir.join("state.json");
    let (c, generation) = load(&path, "a", Limits::default()).unwrap();
    assert!(generation.is_none());
    let store = Store::new(c, liveness(), &path, 0);
    store.compact().unwrap();
    (store, path)
}

#[test]
fn what_was_flushed_comes_back_exactly_and_nothing_after_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, path) = new_store(tmp.path());
    let flushed = walk(&store, 400, 0x9e37_79b9_7f4a_7c15);
    assert_eq!(image(&reload(&path, "a")), flushed);
    // Only the journal moved: no compaction was needed for a few hundred small ops.
    assert_eq!(store.files.lock().unwrap().generation, 1);
}

#[test]
fn compactions_keep_the_state_and_bound_the_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, path) = new_store(tmp.path());
    store.files.lock().unwrap().min_compaction_bytes = 2_000;
    let flushed = walk(&store, 600, 0x2545_f491_4f6c_dd1d);
    let files = store.files.lock().unwrap();
    assert!(files.generation > 3, "generation {}", files.generation);
    let journal_len = std::fs::metadata(journal_path(&path)).unwrap().len();
    assert!(
        journal_len == files.journal_bytes
            && journal_len <= files.min_compaction_bytes.max(files.snapshot_bytes) + 4_000,
        "journal {journal_len} bytes, tracked {}, snapshot {}",
        files.journal_bytes,
        files.snapshot_bytes
    );
    drop(files);
    assert_eq!(image(&reload(&path, "a")), flushed);
}

#[test]
fn a_crash_between_snapshot_and_new_journal_ignores_the_old_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, path) = new_store(tmp.path());
    walk(&store, 200, 17);
    store.flush().unwrap();
    let old_journal = std::fs::read(journal_path(&path)).unwrap();
    assert!(old_journal.len() > 100);
    store.compact().unwrap();
    let now = store.read(image);
    // The new snapshot is in place, but the journal is still the one it already contains.
    std::fs::write(journal_path(&path), &old_journal).unwrap();
    assert_eq!(image(&reload(&path, "a")), now);
}

#[test]
fn a_torn_last_line_is_ignored_but_a_bad_line_inside_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, path) = new_store(tmp.path());
    walk(&store, 100, 99);
    store.flush().unwrap();
    let flushed_all = store.read(image);
    let jpath = journal_path(&path);
    let good = std::fs::read(&jpath).unwrap();

    let mut torn = good.clone();
    torn.extend_from_slice(br#"{"op":"export","namespace":"ns","na"#);
    std::fs::write(&jpath, &torn).unwrap();
    assert_eq!(image(&reload(&path, "a")), flushed_all);

    let mut lines: Vec<&[u8]> = good.split(|b| *b == b'\n').collect();
    assert!(lines.len() > 3, "journal too short for the test");
    lines.insert(2, b"{not json");
    std::fs::write(&jpath, lines.join(&b'\n')).unwrap();
    let err = load(&path, "a", Limits::default()).expect_err("corruption detected");
    assert!(err.to_string().contains("line 3"), "{err}");
}

#[test]
fn a_journal_newer_than_its_snapshot_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, path) = new_store(tmp.path());
    walk(&store, 50, 5);
    store.flush().unwrap();
    std::fs::write(journal_path(&path), "{\"journal\":99}\n").unwrap();
    let err = load(&path, "a", Limits::default()).expect_err("refused");
    assert!(err.to_string().contains("newer than the snapshot"), "{err}");
}

#[test]
fn refused_ops_are_not_journaled() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, path) = new_store(tmp.path());
    let before = std::fs::metadata(journal_path(&path)).unwrap().len();
    assert!(store.unexport("ns", "missing").is_err());
    let gap = Position { epoch: 1, seq: 5 };
    assert!(store.apply_delta("b", gap, gap, vec![], vec![]).is_err());
    store.flush().unwrap();
    assert_eq!(
        std::fs::metadata(journal_path(&path)).unwrap().len(),
        before
    );
}
