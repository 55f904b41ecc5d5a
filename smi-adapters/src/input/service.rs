//! Core `v1` `Service` manifests: the ports and selector of a local service. Read leniently: a
//! Service carries many fields no renderer needs (clusterIP, type, ...), and refusing them
//! would refuse valid manifests, so only the fields read here are typed.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::values::{Scalar, port};
use super::{Doc, typed};
use crate::diag::Diagnostic;
use crate::model::{Port, Protocol, ServiceInfo, TargetPort};

#[derive(Deserialize)]
struct Service {
    #[serde(default)]
    spec: Spec,
}

#[derive(Deserialize, Default)]
struct Spec {
    #[serde(default)]
    ports: Vec<ServicePort>,
    #[serde(default)]
    selector: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServicePort {
    name: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
    app_protocol: Option<String>,
    target_port: Option<Scalar>,
}

/// Reads a Service into what renderers know of it. UDP and SCTP ports are left out (meshes do
/// not route them).
pub(super) fn read(doc: &Doc, d: &mut Vec<Diagnostic>) -> Option<ServiceInfo> {
    let svc = typed::<Service>(doc, false, d)?;
    let o = &doc.origin;
    let before = d.len();
    let mut ports = Vec::new();
    for (i, p) in svc.spec.ports.into_iter().enumerate() {
        let f = format!("spec.ports[{i}]");
        let Some(number) = p.port else {
            d.push(Diagnostic::error(o, &format!("{f}.port"), "is required"));
            continue;
        };
        let Some(number) = port(number, &format!("{f}.port"), o, d) else {
            continue;
        };
        if p.protocol.as_deref().is_some_and(|x| x != "TCP") {
            continue;
        }
        let name = p.name.unwrap_or_default();
        let target = match p.target_port {
            None => TargetPort::Number(number),
            Some(Scalar::Text(n)) => TargetPort::Name(n),
            Some(Scalar::Unsigned(t)) => match u16::try_from(t) {
                Ok(t) if t > 0 => TargetPort::Number(t),
                _ => {
                    d.push(Diagnostic::error(
                        o,
                        &format!("{f}.targetPort"),
                        format!("{t} is not a port number"),
                    ));
                    continue;
                }
            },
            Some(other) => {
                d.push(Diagnostic::error(
                    o,
                    &format!("{f}.targetPort"),
                    format!("{other} is not a port number or name"),
                ));
                continue;
            }
        };
        ports.push(Port {
            protocol: Protocol::of_service_port(p.app_protocol.as_deref(), &name),
            name,
            port: number,
            target,
        });
    }
    (d.len() == before).then(|| ServiceInfo {
        namespace: doc.namespace.clone(),
        name: doc.name.clone(),
        ports,
        selector: svc.spec.selector,
        remote: None,
    })
}
