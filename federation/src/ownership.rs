//! Who may serve a name (`NAMESPACE/NAME`) that several sites export (pure).
//!
//! Each export states, in its signed record, the other sites it agrees to serve the name with
//! (`share_with`). Two exporters *agree* when each lists the other. From the exporters of a
//! name that a site sees:
//!
//! - if this site exports the name itself, its callers go to it and to the exporters that agree
//!   with it; any other exporter is a conflict;
//! - otherwise, if every pair of exporters agrees, all serve the name;
//! - otherwise the name is **contested**: no exporter serves it here, and the conflict is
//!   reported (admin API, `federationctl catalog`, a warning in the log).
//!
//! Why refuse the whole name rather than keep "the first" exporter: nothing a site can verify
//! says who was first (an origin chooses its own epochs and stamps), and a rule that depended on
//! the order messages arrived in would make sites disagree. This rule is a function of the
//! signed records alone, so every site that sees the same exporters decides the same, an
//! intruder can never take a share of a name, and the intruder is named in the report.

use std::collections::BTreeSet;

/// One exporter of a name: its site and the sites it agrees to share the name with.
#[derive(Clone, Copy, Debug)]
pub struct Exporter<'a> {
    /// The exporting site.
    pub site: &'a str,
    /// The sites it agrees to serve the name with.
    pub share_with: &'a BTreeSet<String>,
}

/// Who serves a name at one site.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// The exporters that serve it here (sorted).
    pub serving: Vec<String>,
    /// The exporters refused, when there is a conflict (sorted; empty otherwise).
    pub refused: Vec<String>,
}

impl Verdict {
    /// Whether the exporters disagree.
    pub fn conflict(&self) -> bool {
        !self.refused.is_empty()
    }
}

fn agree(a: &Exporter<'_>, b: &Exporter<'_>) -> bool {
    a.share_with.contains(b.site) && b.share_with.contains(a.site)
}

/// Decides who serves a name at `here` among its `exporters` (see the module docs).
pub fn decide(here: &str, exporters: &[Exporter<'_>]) -> Verdict {
    let mut v = Verdict::default();
    if let Some(own) = exporters.iter().find(|e| e.site == here) {
        for e in exporters {
            if e.site == here || agree(own, e) {
                v.serving.push(e.site.to_string());
            } else {
                v.refused.push(e.site.to_string());
            }
        }
    } else {
        let all_agree = exporters
            .iter()
            .enumerate()
            .all(|(i, a)| exporters[i + 1..].iter().all(|b| agree(a, b)));
        let sites = exporters.iter().map(|e| e.site.to_string());
        if all_agree {
            v.serving.extend(sites);
        } else {
            v.refused.extend(sites);
        }
    }
    v.serving.sort();
    v.refused.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn run(here: &str, ex: &[(&str, BTreeSet<String>)]) -> Verdict {
        let e: Vec<Exporter<'_>> = ex
            .iter()
            .map(|(s, w)| Exporter {
                site: s,
                share_with: w,
            })
            .collect();
        decide(here, &e)
    }

    #[test]
    fn a_sole_exporter_serves_its_name() {
        let v = run("a", &[("b", set(&[]))]);
        assert_eq!((v.serving, v.refused), (vec!["b".into()], vec![]));
    }

    #[test]
    fn exporters_that_list_each_other_share_a_name() {
        let v = run("a", &[("b", set(&["c"])), ("c", set(&["b"]))]);
        assert_eq!(v.serving, vec!["b", "c"]);
        assert!(!v.conflict());
    }

    #[test]
    fn an_intruder_takes_no_share_and_the_name_is_contested() {
        // z lists b, but b never agreed to share with z.
        let v = run("a", &[("b", set(&[])), ("z", set(&["b"]))]);
        assert!(v.serving.is_empty());
        assert_eq!(v.refused, vec!["b", "z"]);
        // One disagreeing pair among three contests the name.
        let v = run(
            "a",
            &[
                ("b", set(&["c"])),
                ("c", set(&["b"])),
                ("z", set(&["b", "c"])),
            ],
        );
        assert!(v.serving.is_empty() && v.conflict());
    }

    #[test]
    fn a_site_exporting_the_name_keeps_it_for_its_callers() {
        let v = run(
            "b",
            &[("b", set(&["c"])), ("c", set(&["b"])), ("z", set(&["b"]))],
        );
        assert_eq!(v.serving, vec!["b", "c"]);
        assert_eq!(v.refused, vec!["z"]);
    }

    #[test]
    fn the_verdict_does_not_depend_on_the_order_exporters_are_seen_in() {
        let ex = [("b", set(&["c"])), ("c", set(&["b"])), ("z", set(&[]))];
        let mut rev = ex.clone();
        rev.reverse();
        assert_eq!(run("a", &ex), run("a", &rev));
        assert_eq!(run("c", &ex), run("c", &rev));
    }
}
