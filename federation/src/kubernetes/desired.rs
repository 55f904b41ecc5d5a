//! The pure core of the Kubernetes backend: what a cluster's objects mean for the catalog
//! (exports), and which objects the catalog and the cluster's traffic specs call for (imports).
//! No I/O: the controller lists objects, calls these functions, and applies the result.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use smi_adapters::diag::{Diagnostic, Severity};
use smi_adapters::model::ServiceInfo;
use smi_adapters::render::Options;

pub use super::SiteMesh;
use super::types::Condition;
use super::{
    CONSUMERS_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, SHARE_WITH_ANNOTATION, SITE_LABEL,
    STALE_SERVE_ANNOTATION, STALE_TTL_ANNOTATION,
};
use crate::model::{self, Port, Protocol, Scope, Service, ServiceKey, StalePolicy};
use crate::names;

/// A port of a Kubernetes Service, as read from the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `spec.ports[].name` (may be empty on a single-port Service).
    pub name: String,
    /// `spec.ports[].port`.
    pub port: i32,
    /// `spec.ports[].protocol` (`TCP` when unset).
    pub protocol: String,
    /// `spec.ports[].appProtocol`.
    pub app_protocol: Option<String>,
}

/// What an export needs to know of the Service it names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalService {
    /// The Service's ports.
    pub ports: Vec<ServicePort>,
    /// Ready endpoints over all its EndpointSlices.
    pub ready_endpoints: usize,
}

/// A ServiceExport as read from the cluster.
#[derive(Clone, Debug, Default)]
pub struct ExportObject {
    /// Namespace.
    pub namespace: String,
    /// Name (= the Service's name).
    pub name: String,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `spec.exportedLabels`.
    pub labels: BTreeMap<String, String>,
}

/// Site-wide defaults of an export.
#[derive(Clone, Debug, Default)]
pub struct ExportBase {
    /// The federation trust domain (workload identities).
    pub trust_domain: String,
    /// This site's edge ingress addresses.
    pub ingress: Vec<String>,
}

/// Why an export is not (or not fully) in the catalog: the `reason` of its condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotExported {
    /// Condition type set to False (`Valid` or `Ready`).
    pub condition: &'static str,
    /// A CamelCase reason.
    pub reason: &'static str,
    /// What is wrong, naming the field.
    pub message: String,
}

/// The catalog entry a ServiceExport stands for, or why there is none.
pub fn export(
    obj: &ExportObject,
    svc: Option<&LocalService>,
    base: &ExportBase,
) -> Result<Service, NotExported> {
    let invalid = |reason, message: String| NotExported {
        condition: "Valid",
        reason,
        message,
    };
    let Some(svc) = svc else {
        return Err(invalid(
            "ServiceNotFound",
            format!(
                "no Service {}/{} to export (a ServiceExport exports the Service of the same namespace and name)",
                obj.namespace, obj.name
            ),
        ));
    };
    let mut ports = Vec::new();
    for (i, p) in svc.ports.iter().enumerate() {
        if p.protocol != "TCP" {
            // UDP and SCTP cannot cross the edge; they are left out and said so when nothing
            // else remains.
            continue;
        }
        let protocol = port_protocol(p);
        let name = if p.name.is_empty() {
            protocol.as_str().to_string()
        } else {
            p.name.clone()
        };
        let port = u16::try_from(p.port).map_err(|_| {
            invalid(
                "InvalidService",
                format!("Service spec.ports[{i}].port: {} is out of range", p.port),
            )
        })?;
        ports.push(Port {
            name,
            port,
            protocol,
        });
    }
    if ports.is_empty() {
        return Err(invalid(
            "InvalidService",
            "Service spec.ports: no TCP port to export (UDP and SCTP cannot cross sites)".into(),
        ));
    }
    let scope = match obj.annotations.get(CONSUMERS_ANNOTATION).map(|s| s.trim()) {
        None | Some("" | "*") => Scope::All,
        Some(list) => {
            let sites: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
            Scope::from_sites(
                &format!("metadata.annotations[{CONSUMERS_ANNOTATION}]"),
                &sites,
            )
            .map_err(|e| invalid("InvalidAnnotation", e.to_string()))?
        }
    };
    let mut stale = StalePolicy::default();
    if let Some(v) = obj.annotations.get(STALE_TTL_ANNOTATION) {
        stale.ttl_seconds = v.trim().parse().map_err(|_| {
            invalid(
                "InvalidAnnotation",
                format!(
                    "metadata.annotations[{STALE_TTL_ANNOTATION}]: {v:?} is not a number of seconds"
                ),
            )
        })?;
    }
    if let Some(v) = obj.annotations.get(STALE_SERVE_ANNOTATION) {
        stale.serve = match v.trim() {
            "true" => true,
            "false" => false,
            _ => {
                return Err(invalid(
                    "InvalidAnnotation",
                    format!(
                        "metadata.annotations[{STALE_SERVE_ANNOTATION}]: {v:?} must be \"true\" or \"false\""
                    ),
                ));
            }
        };
    }
    let share_with = obj
        .annotations
        .get(SHARE_WITH_ANNOTATION)
        .map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let service = Service {
        share_with,
        ports,
        ingress: base.ingress.clone(),
        via: None,
        labels: obj.labels.clone(),
        identity: format!(
            "spiffe://{}/ns/{}/sa/{}",
            base.trust_domain, obj.namespace, obj.name
        ),
        scope,
        stale,
    };
    service
        .validate()
        .map_err(|e| invalid("Invalid", e.to_string()))?;
    if svc.ready_endpoints == 0 {
        return Err(NotExported {
            condition: "Ready",
            reason: "NoReadyEndpoints",
            message: format!(
                "Service {}/{} has no ready endpoints: withdrawn until one is ready",
                obj.namespace, obj.name
            ),
        });
    }
    Ok(service)
}

/// The application protocol of a Service port: `appProtocol` first, then the Istio-style name
/// prefix (`http-`, `grpc-`, `http2-`), else raw TCP.
pub fn port_protocol(p: &ServicePort) -> Protocol {
    Protocol::of_service_port(p.app_protocol.as_deref(), &p.name)
}

/// The `Valid`, `Ready` and `Conflict` conditions of a ServiceExport. A condition whose status
/// did not change keeps its `lastTransitionTime` from `previous`.
pub fn export_conditions(
    outcome: &Result<Service, NotExported>,
    conflict: Option<String>,
    generation: Option<i64>,
    previous: &[Condition],
    now: &str,
) -> Vec<Condition> {
    let cond = |t: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let since = previous
            .iter()
            .find(|c| c.type_ == t && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.to_string());
        Condition {
            type_: t.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: generation,
        }
    };
    let (valid, ready) = match outcome {
        Ok(_) => (
            cond("Valid", true, "Valid", "the Service can be exported".into()),
            cond(
                "Ready",
                true,
                "Exported",
                "exported to the federation catalog".into(),
            ),
        ),
        Err(e) if e.condition == "Valid" => (
            cond("Valid", false, e.reason, e.message.clone()),
            cond(
                "Ready",
                false,
                "Invalid",
                "not exported: see the Valid condition".into(),
            ),
        ),
        Err(e) => (
            cond("Valid", true, "Valid", "the Service can be exported".into()),
            cond("Ready", false, e.reason, e.message.clone()),
        ),
    };
    let conflict = match conflict {
        None => cond(
            "Conflict",
            false,
            "NoConflict",
            "no conflicting export".into(),
        ),
        Some(m) => cond("Conflict", true, "PortConflict", m),
    };
    vec![valid, ready, conflict]
}

/// Whether another site exports the same namespace/name with other ports (MCS calls that a
/// conflict: the imported service's ports are then ambiguous). Names the sites.
pub fn conflict(mine: &Service, others: &[(String, Vec<Port>)]) -> Option<String> {
    let differing: Vec<&str> = others
        .iter()
        .filter(|(_, ports)| {
            let a: BTreeSet<_> = ports.iter().map(|p| (p.port, p.protocol)).collect();
            let b: BTreeSet<_> = mine.ports.iter().map(|p| (p.port, p.protocol)).collect();
            a != b
        })
        .map(|(site, _)| site.as_str())
        .collect();
    (!differing.is_empty()).then(|| {
        format!(
            "site(s) {} export this service with other ports or protocols",
            differing.join(", ")
        )
    })
}

/// One cluster object given to the translation: its key and its JSON.
#[derive(Clone, Debug)]
pub struct SpecObject {
    /// `Kind/namespace/name`.
    pub key: String,
    /// The object as the API server returned it.
    pub object: Value,
}

/// Everything the import side wants in the cluster.
#[derive(Debug, Default)]
pub struct Desired {
    /// Objects to apply, labelled as owned by multimesh, in a stable order.
    pub objects: Vec<Value>,
    /// Diagnostics of the translation, by the key of the spec object they concern (`""` for
    /// none).
    pub diagnostics: BTreeMap<String, Vec<Diagnostic>>,
}

/// The objects this site should hold: a ServiceImport per remote service it may see, and the
/// mesh's native resources for those imports and for the cluster's traffic specs (rendered by
/// smi-adapters, pointing remote shares at the local edge agent).
pub fn imports(
    site: &str,
    mesh: SiteMesh,
    remote: &BTreeMap<ServiceKey, ServiceInfo>,
    specs: &[SpecObject],
    opts: &Options,
) -> Desired {
    let mut out = Desired::default();
    for info in remote.values() {
        let Some(r) = &info.remote else { continue };
        out.objects.push(json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ServiceImport",
            "metadata": {
                "name": info.name,
                "namespace": info.namespace,
                "labels": {"multimesh.io/origin-site": r.site},
            },
            "spec": {
                "type": "ClusterSetIP",
                "ports": info.ports.iter().map(|p| {
                    let mut v = json!({"name": p.name, "protocol": "TCP", "port": p.port});
                    if let Some(a) = p.protocol.app_protocol() {
                        v["appProtocol"] = json!(a);
                    }
                    v
                }).collect::<Vec<_>>(),
            },
        }));
    }
    if let SiteMesh::Mesh(m) = mesh {
        let objects: Vec<(String, Value)> = specs
            .iter()
            .map(|s| (s.key.clone(), clean_spec(&s.object)))
            .collect();
        let t = smi_adapters::translate_objects(objects, remote.clone(), m, opts);
        out.objects.extend(t.resources);
        for d in t.diagnostics {
            // A diagnostic names its object as `ORIGIN Kind apiVersion namespace/name`, and the
            // origin given here is the spec's key.
            let key = d
                .object
                .split_once(' ')
                .map(|(k, _)| k.to_string())
                .filter(|k| specs.iter().any(|s| &s.key == k))
                .unwrap_or_default();
            out.diagnostics.entry(key).or_default().push(d);
        }
    }
    for o in &mut out.objects {
        let labels = &mut o["metadata"]["labels"];
        if !labels.is_object() {
            *labels = json!({});
        }
        labels[MANAGED_BY_LABEL] = json!(MANAGED_BY);
        labels[SITE_LABEL] = json!(site);
    }
    out.objects.sort_by_key(object_key);
    out.objects.dedup_by(|a, b| object_key(a) == object_key(b));
    out
}

/// Whether a spec's translation had errors.
pub fn has_errors(d: &[Diagnostic]) -> bool {
    d.iter().any(|d| d.severity == Severity::Error)
}

/// The object without server-managed metadata (what the translator needs is apiVersion, kind,
/// name, namespace and spec).
fn clean_spec(v: &Value) -> Value {
    json!({
        "apiVersion": v["apiVersion"],
        "kind": v["kind"],
        "metadata": {
            "name": v["metadata"]["name"],
            "namespace": v["metadata"]["namespace"],
        },
        "spec": v["spec"],
        // HTTPRouteGroup v1alpha1/2 keep `matches` at the top level.
        "matches": v.get("matches").cloned().unwrap_or(Value::Null),
    })
    .as_object()
    .map(|m| {
        Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    })
    .unwrap_or(Value::Null)
}

/// `apiVersion/kind/namespace/name`: identifies an object.
pub fn object_key(v: &Value) -> String {
    format!(
        "{}/{}/{}/{}",
        v["apiVersion"].as_str().unwrap_or_default(),
        v["kind"].as_str().unwrap_or_default(),
        v["metadata"]["namespace"].as_str().unwrap_or_default(),
        v["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// The smi-adapters view of a catalog entry of another site.
pub fn remote_info(key: &model::Key, svc: &Service) -> Option<(ServiceKey, ServiceInfo)> {
    use smi_adapters::model::{Port as SPort, Remote, TargetPort};
    if names::dns_label("namespace", &key.namespace).is_err() {
        return None;
    }
    let ports = svc
        .ports
        .iter()
        .map(|p| SPort {
            name: p.name.clone(),
            port: p.port,
            protocol: p.protocol,
            target: TargetPort::Number(p.port),
        })
        .collect();
    Some((
        key.service(),
        ServiceInfo {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            ports,
            selector: BTreeMap::new(),
            remote: Some(Remote {
                site: key.origin.clone(),
                ingress: svc.ingress.clone(),
                identity: svc.identity.clone(),
            }),
        },
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use smi_adapters::render::Mesh;

    fn port(name: &str, port: i32, protocol: &str, app: Option<&str>) -> ServicePort {
        ServicePort {
            name: name.into(),
            port,
            protocol: protocol.into(),
            app_protocol: app.map(str::to_string),
        }
    }

    fn object(annotations: &[(&str, &str)]) -> ExportObject {
        ExportObject {
            namespace: "shop".into(),
            name: "payment".into(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            labels: BTreeMap::new(),
        }
    }

    fn base() -> ExportBase {
        ExportBase {
            trust_domain: "fed.example".into(),
            ingress: vec!["10.0.0.1:15443".into()],
        }
    }

    fn service(ports: Vec<ServicePort>, ready: usize) -> LocalService {
        LocalService {
            ports,
            ready_endpoints: ready,
        }
    }

    #[test]
    fn an_export_carries_the_services_tcp_ports_with_their_protocols_and_the_site_defaults() {
        let svc = service(
            vec![
                port("http-web", 8080, "TCP", None),
                port("", 9090, "TCP", Some("kubernetes.io/h2c")),
                port("dns", 53, "UDP", None),
            ],
            2,
        );
        let s = export(&object(&[]), Some(&svc), &base()).unwrap();
        let got: Vec<_> = s
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.port, p.protocol))
            .collect();
        // UDP is left out; an unnamed port is named after its protocol.
        assert_eq!(
            got,
            vec![
                ("http-web", 8080, Protocol::Http),
                ("http2", 9090, Protocol::Http2)
            ]
        );
        assert_eq!(s.identity, "spiffe://fed.example/ns/shop/sa/payment");
        assert_eq!(s.ingress, vec!["10.0.0.1:15443".to_string()]);
        assert_eq!(s.scope, Scope::All);
    }

    #[test]
    fn annotations_set_scope_stale_policy_and_shared_names() {
        let obj = object(&[
            (CONSUMERS_ANNOTATION, " b , c "),
            (STALE_TTL_ANNOTATION, "30"),
            (STALE_SERVE_ANNOTATION, "false"),
            (SHARE_WITH_ANNOTATION, "x,, y"),
        ]);
        let svc = service(vec![port("http", 80, "TCP", None)], 1);
        let s = export(&obj, Some(&svc), &base()).unwrap();
        assert!(s.scope.allows("b") && s.scope.allows("c") && !s.scope.allows("d"));
        assert_eq!(s.stale.ttl_seconds, 30);
        assert!(!s.stale.serve);
        assert_eq!(s.share_with, ["x".to_string(), "y".to_string()].into());
    }

    #[test]
    fn what_cannot_be_exported_says_why_and_names_the_field() {
        let ok = service(vec![port("http", 80, "TCP", None)], 1);
        let cases: Vec<(ExportObject, Option<LocalService>, &str, &str, &str)> = vec![
            (
                object(&[]),
                None,
                "Valid",
                "ServiceNotFound",
                "no Service shop/payment",
            ),
            (
                object(&[]),
                Some(service(vec![port("dns", 53, "UDP", None)], 1)),
                "Valid",
                "InvalidService",
                "Service spec.ports: no TCP port",
            ),
            (
                object(&[]),
                Some(service(vec![port("http", 70000, "TCP", None)], 1)),
                "Valid",
                "InvalidService",
                "spec.ports[0].port: 70000 is out of range",
            ),
            (
                object(&[(STALE_TTL_ANNOTATION, "soon")]),
                Some(ok.clone()),
                "Valid",
                "InvalidAnnotation",
                STALE_TTL_ANNOTATION,
            ),
            (
                object(&[(STALE_SERVE_ANNOTATION, "yes")]),
                Some(ok.clone()),
                "Valid",
                "InvalidAnnotation",
                "must be \"true\" or \"false\"",
            ),
            (
                object(&[(CONSUMERS_ANNOTATION, "b,Not_A_Site")]),
                Some(ok.clone()),
                "Valid",
                "InvalidAnnotation",
                CONSUMERS_ANNOTATION,
            ),
            (
                object(&[]),
                Some(service(vec![port("http", 80, "TCP", None)], 0)),
                "Ready",
                "NoReadyEndpoints",
                "no ready endpoints",
            ),
        ];
        for (obj, svc, condition, reason, says) in cases {
            let e = export(&obj, svc.as_ref(), &base()).unwrap_err();
            assert_eq!((e.condition, e.reason), (condition, reason), "{e:?}");
            assert!(e.message.contains(says), "{:?} lacks {says:?}", e.message);
        }
    }

    #[test]
    fn conditions_keep_their_transition_time_while_the_status_holds() {
        let svc = service(vec![port("http", 80, "TCP", None)], 1);
        let ok = export(&object(&[]), Some(&svc), &base());
        let first = export_conditions(&ok, None, Some(1), &[], "t1");
        let again = export_conditions(&ok, None, Some(2), &first, "t2");
        assert!(again.iter().all(|c| c.last_transition_time == "t1"));
        assert!(again.iter().all(|c| c.observed_generation == Some(2)));
        let status = |cs: &[Condition], t: &str| {
            let c = cs.iter().find(|c| c.type_ == t).unwrap();
            (
                c.status.clone(),
                c.reason.clone(),
                c.last_transition_time.clone(),
            )
        };
        assert_eq!(
            status(&again, "Ready"),
            ("True".into(), "Exported".into(), "t1".into())
        );
        // Withdrawn: Ready turns False now, Valid stays True since t1.
        let gone = export(&object(&[]), Some(&service(svc.ports.clone(), 0)), &base());
        let later = export_conditions(&gone, Some("x".into()), Some(3), &again, "t3");
        assert_eq!(
            status(&later, "Ready"),
            ("False".into(), "NoReadyEndpoints".into(), "t3".into())
        );
        assert_eq!(
            status(&later, "Valid"),
            ("True".into(), "Valid".into(), "t1".into())
        );
        assert_eq!(
            status(&later, "Conflict"),
            ("True".into(), "PortConflict".into(), "t3".into())
        );
    }

    #[test]
    fn a_conflict_names_the_sites_whose_ports_differ() {
        let svc = service(vec![port("http", 80, "TCP", None)], 1);
        let mine = export(&object(&[]), Some(&svc), &base()).unwrap();
        let same = mine.ports.clone();
        let mut other = mine.ports.clone();
        other[0].port = 81;
        assert_eq!(conflict(&mine, &[("b".into(), same.clone())]), None);
        let said = conflict(&mine, &[("b".into(), same), ("c".into(), other)]).unwrap();
        assert!(said.starts_with("site(s) c export"), "{said}");
    }

    /// A catalog entry of `origin` and what it exports.
    fn entry(origin: &str, ns: &str, name: &str, ports: &[Port]) -> (model::Key, Service) {
        let key = model::Key {
            origin: origin.into(),
            namespace: ns.into(),
            name: name.into(),
        };
        let svc = Service {
            share_with: BTreeSet::new(),
            ports: ports.to_vec(),
            ingress: vec!["10.0.0.2:15443".into()],
            via: None,
            labels: BTreeMap::new(),
            identity: format!("spiffe://fed.example/ns/{ns}/sa/{name}"),
            scope: Scope::All,
            stale: StalePolicy::default(),
        };
        (key, svc)
    }

    fn remote(origin: &str, ns: &str, name: &str, ports: &[Port]) -> (ServiceKey, ServiceInfo) {
        let (key, svc) = entry(origin, ns, name, ports);
        remote_info(&key, &svc).unwrap()
    }

    fn http(port: u16) -> Port {
        Port {
            name: "http".into(),
            port,
            protocol: Protocol::Http,
        }
    }

    #[test]
    fn a_site_without_a_mesh_gets_one_labelled_service_import_per_remote_service() {
        let remotes: BTreeMap<_, _> = [
            remote("b", "shop", "payment", &[http(8080)]),
            remote("c", "shop", "reviews", &[http(9080)]),
        ]
        .into_iter()
        .collect();
        let d = imports("a", SiteMesh::None, &remotes, &[], &Options::default());
        let keys: Vec<String> = d.objects.iter().map(object_key).collect();
        assert_eq!(
            keys,
            vec![
                "multicluster.x-k8s.io/v1alpha1/ServiceImport/shop/payment",
                "multicluster.x-k8s.io/v1alpha1/ServiceImport/shop/reviews",
            ]
        );
        let p = &d.objects[0];
        assert_eq!(p["metadata"]["labels"]["multimesh.io/origin-site"], "b");
        assert_eq!(p["metadata"]["labels"][MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(p["metadata"]["labels"][SITE_LABEL], "a");
        assert_eq!(p["spec"]["ports"][0]["port"], 8080);
        assert_eq!(p["spec"]["ports"][0]["appProtocol"], "http");
        assert!(d.diagnostics.is_empty());
    }

    #[test]
    fn a_remote_service_in_a_namespace_that_is_not_a_dns_label_is_not_imported() {
        let (key, svc) = entry("b", "Not_A_Label", "payment", &[http(8080)]);
        assert!(remote_info(&key, &svc).is_none());
    }

    #[test]
    fn a_split_to_a_remote_service_is_rendered_for_the_mesh_and_its_diagnostics_keyed_by_object() {
        let remotes: BTreeMap<_, _> = [remote("b", "shop", "reviews-v2", &[http(9080)])]
            .into_iter()
            .collect();
        let split = SpecObject {
            key: "TrafficSplit/shop/reviews".into(),
            object: json!({
                "apiVersion": "split.smi-spec.io/v1alpha4",
                "kind": "TrafficSplit",
                "metadata": {"name": "reviews", "namespace": "shop", "uid": "u1",
                             "resourceVersion": "7", "managedFields": []},
                "spec": {"service": "reviews",
                         "backends": [{"service": "reviews-v1", "weight": 90},
                                      {"service": "reviews-v2", "weight": 10}]}
            }),
        };
        let d = imports(
            "a",
            SiteMesh::Mesh(Mesh::Istio),
            &remotes,
            std::slice::from_ref(&split),
            &Options::default(),
        );
        let vs = d
            .objects
            .iter()
            .find(|o| {
                o["kind"] == "VirtualService"
                    && o["metadata"]["name"]
                        .as_str()
                        .is_some_and(|n| n.contains("reviews"))
            })
            .unwrap_or_else(|| panic!("no VirtualService for reviews: {:#?}", d.objects));
        // The remote share is routed by its clusterset host, which a ServiceEntry resolves to
        // the local edge agent.
        let route = &vs["spec"]["http"][0]["route"];
        assert_eq!(
            route[0]["destination"]["host"],
            "reviews-v1.shop.svc.cluster.local"
        );
        assert_eq!(route[0]["weight"], 90);
        let remote_host = "reviews-v2.shop.svc.clusterset.local";
        assert_eq!(route[1]["destination"]["host"], remote_host);
        assert_eq!(route[1]["weight"], 10);
        let entry = d
            .objects
            .iter()
            .find(|o| o["kind"] == "ServiceEntry" && o["spec"]["hosts"][0] == remote_host)
            .unwrap_or_else(|| panic!("no ServiceEntry for {remote_host}: {:#?}", d.objects));
        assert!(
            entry
                .to_string()
                .contains("multimesh-edge.multimesh.svc.cluster.local"),
            "{entry}"
        );
        assert_eq!(vs["metadata"]["labels"][SITE_LABEL], "a");
        // Every object once, in a stable order.
        let keys: Vec<String> = d.objects.iter().map(object_key).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(keys, sorted);
        assert!(
            !d.diagnostics
                .values()
                .flatten()
                .any(|x| x.severity == Severity::Error),
            "{:?}",
            d.diagnostics
        );

        // A broken spec is reported under its own key; the rest is still rendered.
        let mut bad = split.clone();
        bad.key = "TrafficSplit/shop/broken".into();
        bad.object["metadata"]["name"] = json!("broken");
        bad.object["spec"]["backends"][0]["weight"] = json!(-1);
        let d = imports(
            "a",
            SiteMesh::Mesh(Mesh::Istio),
            &remotes,
            &[split, bad],
            &Options::default(),
        );
        let errs = &d.diagnostics["TrafficSplit/shop/broken"];
        assert!(has_errors(errs), "{errs:?}");
        assert!(d.objects.iter().any(|o| o["kind"] == "VirtualService"));
    }
}
