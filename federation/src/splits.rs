//! Traffic splits a site applies to its own outgoing calls (`federationctl apply`).
//!
//! An SMI `TrafficSplit` (v1alpha1-4) or a Gateway API `HTTPRoute` with a Service parent, both
//! parsed by `smi-adapters`, becomes a [`SplitRule`]: calls this site's edge agent makes to the
//! root service go to the backends by weight, each backend wherever the catalog says it runs.
//! Rules are kept in a JSON file beside the state file (written atomically before a change is
//! acknowledged) and served to the edge agent in the route table (see [`crate::routes`]).
//!
//! Only whole-service splits are taken: a rule with request matches (HTTPRouteGroup, HTTPRoute
//! `matches`) needs the mesh, not the edge, and is refused with the field named.

use multimesh_core::locks::{read, write};
use multimesh_core::service::ServiceKey;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// One whole-service split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitRule {
    /// Root service name (the name callers use).
    pub service: String,
    /// Namespace of the root and of every backend.
    pub namespace: String,
    /// The source object: `Kind apiVersion namespace/name`.
    pub source: String,
    /// Backends and their relative weights (some non-zero).
    pub backends: Vec<(String, u32)>,
}

impl SplitRule {
    /// The weight of `backend`'s share in percent of the rule's total.
    pub fn percent(&self, backend: &str) -> f64 {
        let total: u64 = self.backends.iter().map(|(_, w)| u64::from(*w)).sum();
        let w = self
            .backends
            .iter()
            .find(|(b, _)| b == backend)
            .map_or(0, |(_, w)| *w);
        if total == 0 {
            0.0
        } else {
            100.0 * f64::from(w) / total as f64
        }
    }
}

/// Parses traffic specs into split rules; the error names the object and field of the first
/// refusal (nothing is taken from a set with any error).
pub fn parse(files: &[(String, String)]) -> Result<Vec<SplitRule>, String> {
    let mut diags = Vec::new();
    let model = smi_adapters::input::parse(files, BTreeMap::new(), &mut diags);
    if let Some(d) = diags
        .iter()
        .find(|d| d.severity == smi_adapters::diag::Severity::Error)
    {
        return Err(d.to_string());
    }
    if let Some(a) = model.access.first() {
        return Err(format!(
            "{}: access policies are enforced by the mesh, not applied by federationd (use `federationctl translate`)",
            a.origin
        ));
    }
    if model.routes.is_empty() {
        return Err(
            "no TrafficSplit or HTTPRoute found in the input (kinds taken: TrafficSplit split.smi-spec.io/v1alpha1-4, HTTPRoute gateway.networking.k8s.io)"
                .into(),
        );
    }
    let mut rules: Vec<SplitRule> = Vec::new();
    for r in &model.routes {
        let at = |field: &str, why: &str| format!("{}: {field}: {why}", r.origin);
        if r.port.is_some() {
            return Err(at(
                "spec.parentRefs[].port",
                "a split of one port is not supported by the edge agent: split the whole service",
            ));
        }
        let [rule] = r.rules.as_slice() else {
            return Err(at(
                if r.relative { "spec.rules" } else { "spec" },
                "the edge agent takes one whole-service rule; several rules need the mesh (use `federationctl translate`)",
            ));
        };
        if !rule.matches.is_empty() {
            return Err(at(
                if r.relative {
                    "spec.rules[0].matches"
                } else {
                    "spec.matches"
                },
                "request matches are not supported by the edge agent: split whole services, or translate for the mesh",
            ));
        }
        let field = r.backends_field(0);
        let mut backends: Vec<(String, u64)> = Vec::new();
        for b in &rule.backends {
            if b.namespace != r.namespace {
                return Err(at(
                    &field,
                    &format!(
                        "backend {}/{} is in another namespace than the root {}",
                        b.namespace, b.name, r.namespace
                    ),
                ));
            }
            match backends.iter_mut().find(|(n, _)| *n == b.name) {
                Some((_, w)) => *w += b.weight,
                None => backends.push((b.name.clone(), b.weight)),
            }
        }
        let divisor = backends
            .iter()
            .map(|(_, w)| *w)
            .filter(|w| *w > 0)
            .fold(0, gcd)
            .max(1);
        let backends = backends
            .into_iter()
            .map(|(n, w)| {
                u32::try_from(w / divisor)
                    .map(|w| (n.clone(), w))
                    .map_err(|_| at(&field, &format!("weight of {n} is too large")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if rules
            .iter()
            .any(|o| o.namespace == r.namespace && o.service == r.root)
        {
            return Err(at(
                "spec.service",
                "this root service is split twice in the input",
            ));
        }
        rules.push(SplitRule {
            service: r.root.clone(),
            namespace: r.namespace.clone(),
            source: format!("{} {}", r.origin.kind, r.origin.object),
            backends,
        });
    }
    Ok(rules)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Where a site keeps its splits: beside its state file, `<state>.splits.json`.
pub fn path_for(state_file: &Path) -> PathBuf {
    let mut name = state_file
        .file_stem()
        .map(|s| s.to_os_string())
        .unwrap_or_default();
    name.push(".splits.json");
    state_file.with_file_name(name)
}

/// The splits of one site, durable and observable.
#[derive(Debug)]
pub struct SplitStore {
    path: PathBuf,
    rules: RwLock<BTreeMap<ServiceKey, SplitRule>>,
    changed: watch::Sender<u64>,
}

/// The on-disk form.
#[derive(Serialize, Deserialize)]
struct SplitFile {
    splits: Vec<SplitRule>,
}

impl SplitStore {
    /// Loads the splits kept at `path` (none when the file does not exist).
    pub fn load(path: &Path) -> Result<Self, String> {
        let rules = match std::fs::read(path) {
            Ok(bytes) => {
                let f: SplitFile = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                f.splits
                    .into_iter()
                    .map(|r| (ServiceKey::new(&r.namespace, &r.service), r))
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(Self {
            path: path.to_path_buf(),
            rules: RwLock::new(rules),
            changed: watch::channel(0).0,
        })
    }

    /// All rules, sorted by (namespace, service).
    pub fn list(&self) -> Vec<SplitRule> {
        self.read().values().cloned().collect()
    }

    /// Replaces the rules of the same roots by `new`, saving before the change is visible.
    /// Returns how many rules changed.
    pub fn apply(&self, new: Vec<SplitRule>) -> Result<usize, String> {
        self.update(|rules| {
            let mut changed = 0;
            for r in new {
                let key = ServiceKey::new(&r.namespace, &r.service);
                if rules.get(&key) != Some(&r) {
                    rules.insert(key, r);
                    changed += 1;
                }
            }
            changed
        })
    }

    /// Removes the split of `namespace/service`; whether there was one.
    pub fn delete(&self, namespace: &str, service: &str) -> Result<bool, String> {
        self.update(|rules| {
            usize::from(rules.remove(&ServiceKey::new(namespace, service)).is_some())
        })
        .map(|n| n > 0)
    }

    /// A receiver that changes after every applied change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<ServiceKey, SplitRule>> {
        read(&self.rules)
    }

    fn update(
        &self,
        f: impl FnOnce(&mut BTreeMap<ServiceKey, SplitRule>) -> usize,
    ) -> Result<usize, String> {
        let mut guard = write(&self.rules);
        let mut next = guard.clone();
        let changed = f(&mut next);
        if changed == 0 {
            return Ok(0);
        }
        let file = SplitFile {
            splits: next.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
        crate::files::write_bytes_atomically(&self.path, &bytes, 0o644)
            .map_err(|e| format!("could not save {}: {e}", self.path.display()))?;
        *guard = next;
        drop(guard);
        self.changed.send_modify(|v| *v += 1);
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn one(text: &str) -> Result<Vec<SplitRule>, String> {
        parse(&[("split.yaml".into(), text.into())])
    }

    const SPLIT: &str = "apiVersion: split.smi-spec.io/v1alpha4\nkind: TrafficSplit\nmetadata: {name: tc, namespace: tours}\nspec:\n  service: tour-catalog\n  backends:\n  - {service: tour-catalog-v1, weight: 90}\n  - {service: tour-catalog-v2, weight: 10}\n";

    #[test]
    fn a_traffic_split_becomes_a_rule_with_reduced_weights() {
        let r = one(SPLIT).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].service, "tour-catalog");
        assert_eq!(r[0].namespace, "tours");
        assert_eq!(
            r[0].backends,
            vec![
                ("tour-catalog-v1".to_string(), 9),
                ("tour-catalog-v2".to_string(), 1)
            ]
        );
        assert!((r[0].percent("tour-catalog-v2") - 10.0).abs() < 1e-9);
        assert!(r[0].source.contains("TrafficSplit"), "{}", r[0].source);
    }

    #[test]
    fn a_zero_weight_backend_is_kept_but_all_zero_is_refused() {
        let r = one(&SPLIT.replace("weight: 90", "weight: 0")).unwrap();
        assert_eq!(r[0].backends[0].1, 0);
        assert_eq!(r[0].backends[1].1, 1);
        let e = one(&SPLIT
            .replace("weight: 90", "weight: 0")
            .replace("weight: 10", "weight: 0"))
        .unwrap_err();
        assert!(e.contains("weight") && e.contains("zero"), "{e}");
    }

    #[test]
    fn bad_input_names_the_field() {
        let e = one(&SPLIT.replace("weight: 10", "weight: -3")).unwrap_err();
        assert!(e.contains("spec.backends[1].weight"), "{e}");
        let e = one("kind: [").unwrap_err();
        assert!(e.contains("split.yaml"), "{e}");
        let e = one("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").unwrap_err();
        assert!(
            e.contains("ConfigMap") && e.contains("not translated"),
            "{e}"
        );
        let e = one("apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: tours}\nspec: {ports: [{port: 80}]}\n").unwrap_err();
        assert!(e.contains("no TrafficSplit"), "{e}");
        let with_matches = format!(
            "{SPLIT}  matches:\n  - {{kind: HTTPRouteGroup, name: rg}}\n---\napiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata: {{name: rg, namespace: tours}}\nspec:\n  matches:\n  - {{name: m, pathRegex: /api}}\n"
        );
        let e = one(&with_matches).unwrap_err();
        assert!(e.contains("spec.matches"), "{e}");
    }

    #[test]
    fn the_store_survives_a_restart_and_counts_only_real_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_for(&dir.path().join("state.json"));
        assert!(path.ends_with("state.splits.json"));
        let s = SplitStore::load(&path).unwrap();
        let mut rx = s.subscribe();
        assert_eq!(s.apply(one(SPLIT).unwrap()).unwrap(), 1);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        assert_eq!(s.apply(one(SPLIT).unwrap()).unwrap(), 0);
        assert!(!rx.has_changed().unwrap());
        let again = SplitStore::load(&path).unwrap();
        assert_eq!(again.list(), s.list());
        assert!(again.delete("tours", "tour-catalog").unwrap());
        assert!(!again.delete("tours", "tour-catalog").unwrap());
        assert!(SplitStore::load(&path).unwrap().list().is_empty());
        std::fs::write(&path, "{").unwrap();
        assert!(SplitStore::load(&path).unwrap_err().contains("splits.json"));
    }
}
