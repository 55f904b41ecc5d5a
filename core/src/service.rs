//! A service's ports: their [`Protocol`], and their validated conversion from the wire. The
//! one `Protocol` of the project: the catalog, the route tables, the edge agent and the
//! translators use it.

use std::collections::BTreeSet;

use multimesh_proto::catalog::v1 as wire;
use serde::{Deserialize, Serialize};

use crate::error::InvalidField;
use crate::names;

/// The most ports one service may carry.
pub const MAX_PORTS: usize = 64;

/// The zone of imported host names: `NAME.NAMESPACE.svc.clusterset.local` (KEP-1645).
pub const CLUSTERSET_SUFFIX: &str = "svc.clusterset.local";

/// A service by namespace and name: the one key of a service within a site, in both planes
/// (an export of the federation adds its origin site: `federation::model::Key`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ServiceKey {
    /// Builds a key.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The imported host name, `NAME.NAMESPACE.svc.clusterset.local`.
    pub fn host(&self) -> String {
        format!("{}.{}.{CLUSTERSET_SUFFIX}", self.name, self.namespace)
    }
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Application protocol of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Raw TCP.
    Tcp,
    /// HTTP/1.1 (and HTTP/2 with upgrade).
    Http,
    /// HTTP/2 (h2c between local callers and the edge).
    Http2,
    /// gRPC.
    Grpc,
}

impl Protocol {
    /// The lower-case name used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
        }
    }

    /// Parses `tcp`, `http`, `http2` or `grpc`.
    pub fn parse(field: &str, s: &str) -> Result<Self, InvalidField> {
        Ok(match s {
            "tcp" => Protocol::Tcp,
            "http" => Protocol::Http,
            "http2" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            _ => {
                return Err(InvalidField::new(
                    field,
                    s,
                    "must be one of tcp, http, http2, grpc",
                ));
            }
        })
    }

    /// Reads a Kubernetes `appProtocol` (or a port name's Istio-style prefix, `grpc-api`):
    /// `http`, `https`, `http1`, `http/1.1`; `http2`, `h2c`, `kubernetes.io/h2c`; `grpc`,
    /// `grpc-web`; `tcp`; any case. `None` for anything else.
    pub fn from_app_protocol(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "http" | "https" | "http1" | "http/1.1" => Some(Protocol::Http),
            "http2" | "h2c" | "kubernetes.io/h2c" => Some(Protocol::Http2),
            "grpc" | "grpc-web" => Some(Protocol::Grpc),
            "tcp" => Some(Protocol::Tcp),
            _ => None,
        }
    }

    /// The protocol of a Kubernetes Service port: its `appProtocol` first, then its name's
    /// prefix (`http-web`, `grpc-api`), else raw TCP.
    pub fn of_service_port(app_protocol: Option<&str>, name: &str) -> Self {
        app_protocol
            .and_then(Self::from_app_protocol)
            .or_else(|| Self::from_app_protocol(name.split('-').next().unwrap_or_default()))
            .unwrap_or(Protocol::Tcp)
    }

    /// The Kubernetes `appProtocol` to write for this protocol (none for raw TCP).
    pub fn app_protocol(self) -> Option<&'static str> {
        match self {
            Protocol::Http => Some("http"),
            Protocol::Http2 => Some("kubernetes.io/h2c"),
            Protocol::Grpc => Some("grpc"),
            Protocol::Tcp => None,
        }
    }

    /// Whether requests (not bytes) are routed on this port.
    pub fn is_http(self) -> bool {
        !matches!(self, Protocol::Tcp)
    }

    /// The wire enum of this protocol.
    pub fn to_wire(self) -> wire::Protocol {
        match self {
            Protocol::Tcp => wire::Protocol::Tcp,
            Protocol::Http => wire::Protocol::Http,
            Protocol::Http2 => wire::Protocol::Http2,
            Protocol::Grpc => wire::Protocol::Grpc,
        }
    }

    /// Decodes the wire enum (`field` names it in the error).
    pub fn from_wire(field: &str, v: i32) -> Result<Self, InvalidField> {
        match wire::Protocol::try_from(v) {
            Ok(wire::Protocol::Tcp) => Ok(Protocol::Tcp),
            Ok(wire::Protocol::Http) => Ok(Protocol::Http),
            Ok(wire::Protocol::Http2) => Ok(Protocol::Http2),
            Ok(wire::Protocol::Grpc) => Ok(Protocol::Grpc),
            _ => Err(InvalidField::new(
                field,
                v,
                "must be TCP, HTTP, HTTP2 or GRPC",
            )),
        }
    }
}

/// A port of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    /// Port name (a DNS label), unique within the service.
    pub name: String,
    /// Port number, 1..=65535.
    pub port: u16,
    /// Application protocol.
    pub protocol: Protocol,
}

impl Port {
    /// The wire form.
    pub fn to_wire(&self) -> wire::ServicePort {
        wire::ServicePort {
            name: self.name.clone(),
            port: u32::from(self.port),
            protocol: self.protocol.to_wire() as i32,
        }
    }

    /// Parses the command-line form `NAME:PORT[/PROTOCOL]` or `PORT[/PROTOCOL]` (name defaults
    /// to the protocol name, protocol to `http`).
    pub fn parse_cli(field: &str, s: &str) -> Result<Self, InvalidField> {
        let (rest, protocol) = match s.split_once('/') {
            Some((r, p)) => (r, Protocol::parse(field, p)?),
            None => (s, Protocol::Http),
        };
        let (name, number) = match rest.split_once(':') {
            Some((n, p)) => (n.to_string(), p),
            None => (protocol.as_str().to_string(), rest),
        };
        let port = match number.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(InvalidField::new(
                    field,
                    s,
                    "must be [NAME:]PORT[/PROTOCOL] with PORT in 1..=65535",
                ));
            }
        };
        names::dns_label(field, &name)?;
        Ok(Port {
            name,
            port,
            protocol,
        })
    }
}

/// Checks a list of ports: 1 to 64 ports, valid names, unique names and numbers.
pub fn validate_ports(field: &str, ports: &[Port]) -> Result<(), InvalidField> {
    if ports.is_empty() {
        return Err(InvalidField::new(
            field,
            "[]",
            "must list at least one port",
        ));
    }
    if ports.len() > MAX_PORTS {
        return Err(InvalidField::new(
            field,
            ports.len(),
            "lists too many ports (max 64)",
        ));
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let f = format!("{field}[{i}]");
        names::dns_label(&format!("{f}.name"), &p.name)?;
        if p.port == 0 {
            return Err(InvalidField::new(
                &format!("{f}.port"),
                0,
                "must be in 1..=65535",
            ));
        }
        if !names.insert(&p.name) {
            return Err(InvalidField::new(
                &format!("{f}.name"),
                &p.name,
                "is a duplicate port name",
            ));
        }
        if !numbers.insert(p.port) {
            return Err(InvalidField::new(
                &format!("{f}.port"),
                p.port,
                "is a duplicate port number",
            ));
        }
    }
    Ok(())
}

/// Decodes ports from the wire, validating each.
pub fn ports_from_wire(
    field: &str,
    ports: &[wire::ServicePort],
) -> Result<Vec<Port>, InvalidField> {
    let out = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let f = format!("{field}[{i}]");
            let port = u16::try_from(p.port)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    InvalidField::new(&format!("{f}.port"), p.port, "must be in 1..=65535")
                })?;
            Ok(Port {
                name: p.name.clone(),
                port,
                protocol: Protocol::from_wire(&format!("{f}.protocol"), p.protocol)?,
            })
        })
        .collect::<Result<Vec<_>, InvalidField>>()?;
    validate_ports(field, &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_spellings_and_port_names() {
        assert_eq!(Protocol::from_app_protocol("HTTP"), Some(Protocol::Http));
        assert_eq!(
            Protocol::from_app_protocol("kubernetes.io/h2c"),
            Some(Protocol::Http2)
        );
        assert_eq!(
            Protocol::from_app_protocol("grpc-web"),
            Some(Protocol::Grpc)
        );
        assert_eq!(Protocol::from_app_protocol("udp"), None);
        assert_eq!(Protocol::of_service_port(None, "grpc-api"), Protocol::Grpc);
        assert_eq!(
            Protocol::of_service_port(Some("http"), "grpc-api"),
            Protocol::Http
        );
        assert_eq!(
            Protocol::of_service_port(Some("x"), "metrics"),
            Protocol::Tcp
        );
        for p in [
            Protocol::Tcp,
            Protocol::Http,
            Protocol::Http2,
            Protocol::Grpc,
        ] {
            assert_eq!(Protocol::parse("f", p.as_str()), Ok(p));
            assert_eq!(Protocol::from_wire("f", p.to_wire() as i32), Ok(p));
            let back = p.app_protocol().and_then(Protocol::from_app_protocol);
            assert_eq!(back.unwrap_or(Protocol::Tcp), p);
        }
        assert!(Protocol::parse("f", "HTTP").is_err());
    }
}
