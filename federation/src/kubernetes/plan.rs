//! What applying the desired objects to a cluster would change: pure, so `federationctl plan`
//! and the controller share it.

use std::collections::BTreeMap;

use serde_json::Value;

use super::desired::object_key;
use crate::model::ServiceKey;

/// An object found in the cluster.
#[derive(Clone, Debug)]
pub struct Existing {
    /// The object.
    pub object: Value,
    /// Whether multimesh owns it (carries the managed-by label).
    pub owned: bool,
}

/// One change.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// The object does not exist: create it.
    Create(Value),
    /// The object exists and differs: apply it.
    Update(Value),
    /// An owned object nothing asks for any more: delete it.
    Delete(Value),
    /// The object exists but is not multimesh's: left alone, reported.
    Conflict(Value),
}

impl Change {
    /// `create|update|delete|conflict`.
    pub fn verb(&self) -> &'static str {
        match self {
            Change::Create(_) => "create",
            Change::Update(_) => "update",
            Change::Delete(_) => "delete",
            Change::Conflict(_) => "conflict",
        }
    }

    /// The object concerned.
    pub fn object(&self) -> &Value {
        match self {
            Change::Create(v) | Change::Update(v) | Change::Delete(v) | Change::Conflict(v) => v,
        }
    }
}

/// The changes that bring `existing` to `desired`, in a stable order (creates and updates in
/// desired order, then deletes by key); objects already as desired are counted, not listed.
pub fn plan(desired: &[Value], existing: &[Existing]) -> (Vec<Change>, usize) {
    let by_key: BTreeMap<String, &Existing> = existing
        .iter()
        .map(|e| (object_key(&e.object), e))
        .collect();
    let mut changes = Vec::new();
    let mut unchanged = 0;
    let mut wanted = std::collections::BTreeSet::new();
    for d in desired {
        let k = object_key(d);
        wanted.insert(k.clone());
        match by_key.get(&k) {
            None => changes.push(Change::Create(d.clone())),
            Some(e) if !e.owned => changes.push(Change::Conflict(d.clone())),
            Some(e) if contains(&e.object, d) => unchanged += 1,
            Some(_) => changes.push(Change::Update(d.clone())),
        }
    }
    for (k, e) in &by_key {
        if e.owned && !wanted.contains(k) {
            changes.push(Change::Delete(e.object.clone()));
        }
    }
    // Endpoints attach to the Service of the same name: never give a Service we do not own
    // endpoints (that would hijack its traffic), and take back any we gave it.
    let foreign_services: std::collections::BTreeSet<ServiceKey> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Conflict(o) if o["apiVersion"] == "v1" && o["kind"] == "Service" => {
                Some(ns_name(o))
            }
            _ => None,
        })
        .collect();
    let mut out = Vec::with_capacity(changes.len());
    for c in changes {
        let o = c.object();
        if o["apiVersion"] == "v1"
            && o["kind"] == "Endpoints"
            && foreign_services.contains(&ns_name(o))
        {
            match &c {
                Change::Create(_) | Change::Conflict(_) => out.push(Change::Conflict(o.clone())),
                Change::Update(_) => out.push(Change::Delete(o.clone())),
                Change::Delete(_) => out.push(c),
            }
            continue;
        }
        out.push(c);
    }
    // An unchanged owned Endpoints of a foreign Service is taken back too.
    for e in by_key.values() {
        let o = &e.object;
        if e.owned
            && o["apiVersion"] == "v1"
            && o["kind"] == "Endpoints"
            && foreign_services.contains(&ns_name(o))
            && !out.iter().any(|c| object_key(c.object()) == object_key(o))
        {
            unchanged -= 1;
            out.push(Change::Delete(o.clone()));
        }
    }
    (out, unchanged)
}

/// The Service an object (a Service, or the Endpoints of one) stands for.
fn ns_name(o: &Value) -> ServiceKey {
    ServiceKey::new(
        o["metadata"]["namespace"].as_str().unwrap_or_default(),
        o["metadata"]["name"].as_str().unwrap_or_default(),
    )
}

/// Whether `have` holds every field of `want` with the same value (the server adds defaults
/// and metadata, which do not count as a difference). Lists must have the same length.
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, wv)| h.get(k).is_some_and(|hv| contains(hv, wv)) || wv.is_null()),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(a, b)| contains(a, b))
        }
        (Value::Number(h), Value::Number(w)) => h.as_f64() == w.as_f64(),
        _ => have == want,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(name: &str, spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns"}, "spec": spec})
    }

    #[test]
    fn creates_updates_deletes_and_leaves_foreign_objects_alone() {
        let desired = vec![
            obj("new", json!({"a": 1})),
            obj("same", json!({"a": 1})),
            obj("changed", json!({"a": 2})),
            obj("foreign", json!({"a": 1})),
        ];
        let mut same = obj("same", json!({"a": 1, "defaulted": true}));
        same["metadata"]["resourceVersion"] = json!("7");
        let existing = vec![
            Existing {
                object: same,
                owned: true,
            },
            Existing {
                object: obj("changed", json!({"a": 1})),
                owned: true,
            },
            Existing {
                object: obj("foreign", json!({"a": 1})),
                owned: false,
            },
            Existing {
                object: obj("gone", json!({})),
                owned: true,
            },
            Existing {
                object: obj("users-own", json!({})),
                owned: false,
            },
        ];
        let (changes, unchanged) = plan(&desired, &existing);
        let got: Vec<(String, String)> = changes
            .iter()
            .map(|c| {
                (
                    c.verb().to_string(),
                    c.object()["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("create".into(), "new".into()),
                ("update".into(), "changed".into()),
                ("conflict".into(), "foreign".into()),
                ("delete".into(), "gone".into()),
            ]
        );
        assert_eq!(unchanged, 1);
    }

    #[test]
    fn a_foreign_service_never_gets_our_endpoints() {
        let ep = |name: &str| json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": "ns"}, "subsets": []});
        let desired = vec![
            obj("mirror", json!({})),
            ep("mirror"),
            obj("other", json!({})),
            ep("other"),
        ];
        // Not there yet: the Endpoints are held back with the Service.
        let existing = vec![Existing {
            object: obj("mirror", json!({"x": 1})),
            owned: false,
        }];
        let (changes, _) = plan(&desired, &existing);
        let verbs: Vec<(&str, &str, &str)> = changes
            .iter()
            .map(|c| {
                (
                    c.verb(),
                    c.object()["kind"].as_str().unwrap_or_default(),
                    c.object()["metadata"]["name"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            verbs,
            vec![
                ("conflict", "Service", "mirror"),
                ("conflict", "Endpoints", "mirror"),
                ("create", "Service", "other"),
                ("create", "Endpoints", "other"),
            ]
        );
        // Already given (an earlier version did): taken back.
        let existing = vec![
            Existing {
                object: obj("mirror", json!({"x": 1})),
                owned: false,
            },
            Existing {
                object: ep("mirror"),
                owned: true,
            },
        ];
        let (changes, unchanged) = plan(&desired, &existing);
        assert!(
            changes
                .iter()
                .any(|c| c.verb() == "delete" && c.object()["kind"] == "Endpoints")
        );
        assert_eq!(unchanged, 0);
    }

    #[test]
    fn a_shorter_list_is_a_change() {
        assert!(!contains(&json!({"p": [1, 2]}), &json!({"p": [1]})));
        assert!(contains(
            &json!({"p": [{"a": 1, "b": 2}]}),
            &json!({"p": [{"a": 1}]})
        ));
    }

    fn kind(api: &str, kind: &str, ns: &str, name: &str) -> Value {
        json!({"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": ns}, "spec": {"a": 1}})
    }

    fn verbs(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| format!("{} {}", c.verb(), object_key(c.object())))
            .collect()
    }

    #[test]
    fn an_object_is_its_api_version_kind_namespace_and_name() {
        let desired = vec![
            kind("v1", "Service", "ns", "x"),
            kind("multicluster.x-k8s.io/v1alpha1", "ServiceImport", "ns", "x"),
            kind("v1", "Service", "other", "x"),
        ];
        // Only the first exists: the same name of another kind or namespace is another object,
        // and an owned object of the same name in another namespace is not wanted.
        let existing = vec![
            Existing {
                object: kind("v1", "Service", "ns", "x"),
                owned: true,
            },
            Existing {
                object: kind("v1", "Service", "third", "x"),
                owned: true,
            },
        ];
        let (changes, unchanged) = plan(&desired, &existing);
        assert_eq!(
            verbs(&changes),
            [
                "create multicluster.x-k8s.io/v1alpha1/ServiceImport/ns/x",
                "create v1/Service/other/x",
                "delete v1/Service/third/x",
            ]
        );
        assert_eq!(unchanged, 1);
    }

    #[test]
    fn server_defaults_do_not_count_but_every_wanted_field_does() {
        // Numbers compare by value (the server may echo 1 as 1.0); null asks for nothing.
        assert!(contains(&json!({"w": 1.0}), &json!({"w": 1})));
        assert!(contains(&json!({}), &json!({"w": null})));
        // A wanted field the server dropped, or a different scalar, is a change.
        assert!(!contains(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!contains(&json!({"a": "1"}), &json!({"a": 1})));
        // Lists compare in order.
        assert!(!contains(&json!({"p": [2, 1]}), &json!({"p": [1, 2]})));
    }

    /// Applying a plan and planning again changes nothing: creates, updates and deletes land,
    /// conflicts stay conflicts.
    #[test]
    fn a_plan_once_applied_plans_nothing_more() {
        let ep = |name: &str, n: u64| json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": "ns"}, "subsets": [{"n": n}]});
        let desired = vec![
            obj("a", json!({"a": 1})),
            obj("b", json!({"a": 2})),
            obj("foreign", json!({})),
            ep("foreign", 1),
            ep("b", 2),
        ];
        let mut existing = vec![
            Existing {
                object: obj("b", json!({"a": 1})),
                owned: true,
            },
            Existing {
                object: obj("old", json!({})),
                owned: true,
            },
            Existing {
                object: obj("foreign", json!({"theirs": true})),
                owned: false,
            },
            // An unchanged Endpoints we once gave a Service that is not ours: taken back.
            Existing {
                object: ep("foreign", 1),
                owned: true,
            },
        ];
        let (changes, unchanged) = plan(&desired, &existing);
        assert_eq!(
            verbs(&changes),
            [
                "create v1/Service/ns/a",
                "update v1/Service/ns/b",
                "conflict v1/Service/ns/foreign",
                "create v1/Endpoints/ns/b",
                "delete v1/Service/ns/old",
                "delete v1/Endpoints/ns/foreign",
            ]
        );
        assert_eq!(unchanged, 0);
        for c in &changes {
            let key = object_key(c.object());
            match c {
                Change::Create(o) | Change::Update(o) => {
                    existing.retain(|e| object_key(&e.object) != key);
                    existing.push(Existing {
                        object: o.clone(),
                        owned: true,
                    });
                }
                Change::Delete(_) => existing.retain(|e| object_key(&e.object) != key),
                Change::Conflict(_) => {}
            }
        }
        let (again, unchanged) = plan(&desired, &existing);
        assert_eq!(
            verbs(&again),
            [
                "conflict v1/Service/ns/foreign",
                "conflict v1/Endpoints/ns/foreign"
            ]
        );
        assert_eq!(unchanged, 3);
    }
}
