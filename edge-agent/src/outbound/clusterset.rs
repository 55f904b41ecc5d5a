//! Callers that know only a name. A caller with no mesh (on a plain site or an edge node) calls
//! `http://payment.tours.svc.clusterset.local:8080/`: its resolver asks this agent's DNS
//! responder, which answers for the `svc.clusterset.local` zone alone with one address, and the
//! agent listens at that address on every port of every service it routes. HTTP ports are
//! routed by the Host the caller sent (as on `egress_http`); a TCP port by the one service that
//! has it.
//!
//! The responder: a name of a service (or split) in the route table gets an A (or AAAA) record
//! of the configured address; any other name in the zone gets NXDOMAIN; names outside it are
//! REFUSED, never answered (the agent is no recursive resolver, and cannot be used as one).
//! Only single-question standard queries of class IN are answered, over UDP, with answers far
//! below 512 bytes (a caller never needs TCP); responses and malformed datagrams are dropped.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::Agent;
use crate::routes::{CLUSTERSET_SUFFIX, RouteTable, ServiceKey};
use crate::runtime::workers::Workers;

/// Seconds a resolver may keep an answer: short, since routes change.
pub const TTL: u32 = 5;

/// The largest query read (a plain query is far smaller; EDNS may add a few options).
const MAX_QUERY: usize = 1_232;

/// What one DNS query gets: the response to send, if any.
pub fn respond(
    query: &[u8],
    knows: impl Fn(&ServiceKey) -> bool,
    address: IpAddr,
) -> Option<Vec<u8>> {
    let q = match Message::from_vec(query) {
        Ok(q) => q,
        Err(_) => {
            // Unreadable: answer FORMERR only when there is a query header to answer to.
            if query.len() < 12 || query[2] & 0x80 != 0 {
                return None;
            }
            let mut r = Message::new();
            r.set_id(u16::from_be_bytes([query[0], query[1]]))
                .set_message_type(MessageType::Response)
                .set_response_code(ResponseCode::FormErr);
            return r.to_vec().ok();
        }
    };
    if q.message_type() != MessageType::Query {
        return None;
    }
    let mut r = Message::new();
    r.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(q.op_code())
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(false);
    if q.op_code() != OpCode::Query {
        r.set_response_code(ResponseCode::NotImp);
        return r.to_vec().ok();
    }
    let [question] = q.queries() else {
        r.set_response_code(ResponseCode::FormErr);
        return r.to_vec().ok();
    };
    r.add_query(question.clone());
    let name = question.name().to_ascii().to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    let in_zone = name == CLUSTERSET_ZONE || name.ends_with(&format!(".{CLUSTERSET_ZONE}"));
    if !in_zone || question.query_class() != DNSClass::IN {
        r.set_response_code(ResponseCode::Refused);
        return r.to_vec().ok();
    }
    r.set_authoritative(true);
    let Some(key) = service_of(name).filter(|k| knows(k)) else {
        r.set_response_code(ResponseCode::NXDomain);
        return r.to_vec().ok();
    };
    let rdata = match (question.query_type(), address) {
        (RecordType::A, IpAddr::V4(v4)) => Some(RData::A(A(v4))),
        (RecordType::AAAA, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(v6))),
        // The name exists; it has no record of that type (NODATA).
        _ => None,
    };
    if let Some(rdata) = rdata {
        r.add_answer(Record::from_rdata(question.name().clone(), TTL, rdata));
    }
    debug!(name, service = %key, "clusterset name answered");
    r.to_vec().ok()
}

/// The zone answered for.
const CLUSTERSET_ZONE: &str = CLUSTERSET_SUFFIX;

/// `NAME.NAMESPACE.svc.clusterset.local` (lower case, no trailing dot) as a service key.
fn service_of(name: &str) -> Option<ServiceKey> {
    let base = name.strip_suffix(CLUSTERSET_ZONE)?.strip_suffix('.')?;
    let (svc, ns) = base.split_once('.')?;
    multimesh_core::names::dns_label("name", svc).ok()?;
    multimesh_core::names::dns_label("namespace", ns).ok()?;
    Some(ServiceKey::new(ns, svc))
}

/// Serves DNS on `socket` until shutdown.
pub async fn serve_dns(
    agent: Arc<Agent>,
    socket: UdpSocket,
    address: IpAddr,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; MAX_QUERY];
    loop {
        let (n, from) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => { warn!(error = %e, "DNS receive failed"); continue; }
            },
            () = shutdown.cancelled() => return,
        };
        let table = agent.table();
        if let Some(resp) = respond(&buf[..n], |k| table.knows(k), address)
            && let Err(e) = socket.send_to(&resp, from).await
        {
            debug!(error = %e, %from, "DNS answer not sent");
        }
    }
}

/// How the agent serves one port at the clusterset address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortUse {
    /// HTTP, HTTP/2 or gRPC: routed by Host.
    Http,
    /// Raw TCP to this service's port.
    Tcp(ServiceKey),
}

/// The most ports the agent listens on at the clusterset address. The route table comes from
/// the catalog, where peers choose their services' ports: without a bound, exports with many
/// distinct ports would make the agent open a socket for each.
pub const MAX_LISTENERS: usize = 1_024;

/// The listeners a route table asks for, by port (the lowest [`MAX_LISTENERS`] ports); the
/// ports left out because services disagree on them (two TCP services, or TCP beside HTTP:
/// HTTP wins, being routable by Host); and how many ports were left out over the bound.
pub fn ports(table: &RouteTable) -> (BTreeMap<u16, PortUse>, Vec<u16>, usize) {
    let mut out: BTreeMap<u16, PortUse> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for s in table.services() {
        let key = s.key.clone();
        for p in &s.ports {
            let want = if p.protocol == multimesh_core::service::Protocol::Tcp {
                PortUse::Tcp(key.clone())
            } else {
                PortUse::Http
            };
            match (out.get(&p.port), &want) {
                (None, _) => {
                    out.insert(p.port, want);
                }
                (Some(PortUse::Http), PortUse::Http) => {}
                (Some(PortUse::Http), PortUse::Tcp(_)) => conflicts.push(p.port),
                (Some(PortUse::Tcp(k)), PortUse::Tcp(k2)) if k == k2 => {}
                (Some(PortUse::Tcp(_)), PortUse::Http) => {
                    conflicts.push(p.port);
                    out.insert(p.port, PortUse::Http);
                }
                (Some(PortUse::Tcp(_)), PortUse::Tcp(_)) => conflicts.push(p.port),
            }
        }
    }
    // A TCP port claimed twice serves neither.
    for p in &conflicts {
        if matches!(out.get(p), Some(PortUse::Tcp(_))) {
            out.remove(p);
        }
    }
    conflicts.sort_unstable();
    conflicts.dedup();
    let over = out.len().saturating_sub(MAX_LISTENERS);
    while out.len() > MAX_LISTENERS {
        out.pop_last();
    }
    (out, conflicts, over)
}

/// Keeps one listener at `address` per port the route table asks for, following the table.
pub async fn serve_listeners(
    agent: Arc<Agent>,
    address: IpAddr,
    shutdown: CancellationToken,
    workers: Arc<Workers>,
) {
    let mut changes = agent.routes.changes();
    let mut open: BTreeMap<u16, (PortUse, CancellationToken)> = BTreeMap::new();
    let mut warned: Vec<u16> = Vec::new();
    let mut warned_over = 0;
    loop {
        let (want, conflicts, over) = ports(&agent.table());
        if over > 0 && over != warned_over {
            warn!(
                over,
                limit = MAX_LISTENERS,
                "clusterset: the route table has more ports than the agent listens on; the highest are left out"
            );
        }
        warned_over = over;
        for p in &conflicts {
            if !warned.contains(p) {
                warn!(
                    port = p,
                    "clusterset: services disagree on this port (TCP needs it alone); it is served as HTTP or not at all"
                );
            }
        }
        warned = conflicts;
        open.retain(|port, (kind, stop)| {
            let keep = want.get(port) == Some(kind);
            if !keep {
                stop.cancel();
                info!(%address, port, "clusterset listener closed");
            }
            keep
        });
        for (port, kind) in want {
            if open.contains_key(&port) {
                continue;
            }
            let l = match TcpListener::bind((address, port)).await {
                Ok(l) => l,
                Err(e) => {
                    // Tried again at the next route change.
                    warn!(%address, port, error = %e, "clusterset listener cannot bind");
                    continue;
                }
            };
            let stop = shutdown.child_token();
            info!(%address, port, ?kind, "clusterset listener open");
            match &kind {
                PortUse::Http => {
                    tokio::spawn(crate::runtime::serve::serve_egress_http(
                        agent.clone(),
                        l,
                        stop.clone(),
                        workers.clone(),
                    ));
                }
                PortUse::Tcp(key) => {
                    tokio::spawn(crate::runtime::serve::serve_tcp(
                        agent.clone(),
                        l,
                        key.clone(),
                        port,
                        stop.clone(),
                        workers.clone(),
                    ));
                }
            }
            open.insert(port, (kind, stop));
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::net::Ipv4Addr;
    use std::str::FromStr;

    const ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(4242)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_str(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn ask(q: &[u8]) -> Message {
        let known = |k: &ServiceKey| *k == ServiceKey::new("tours", "payment");
        Message::from_vec(&respond(q, known, ADDR).unwrap()).unwrap()
    }

    #[test]
    fn a_known_service_resolves_to_the_agent_and_nothing_else_does() {
        let r = ask(&query("payment.tours.svc.clusterset.local.", RecordType::A));
        assert_eq!((r.id(), r.response_code()), (4242, ResponseCode::NoError));
        assert!(r.authoritative());
        assert_eq!(r.answers().len(), 1);
        assert_eq!(
            r.answers()[0].data(),
            &RData::A(A(Ipv4Addr::new(127, 0, 0, 2)))
        );
        assert_eq!(r.answers()[0].ttl(), TTL);
        // Case does not matter.
        let r = ask(&query("Payment.TOURS.svc.clusterset.local.", RecordType::A));
        assert_eq!(r.answers().len(), 1);
        // AAAA of a known name with an IPv4 address: the name exists, no record (NODATA).
        let r = ask(&query(
            "payment.tours.svc.clusterset.local.",
            RecordType::AAAA,
        ));
        assert_eq!(
            (r.response_code(), r.answers().len()),
            (ResponseCode::NoError, 0)
        );
        // Unknown names in the zone, and names of other shapes in it: NXDOMAIN.
        for n in [
            "ghost.tours.svc.clusterset.local.",
            "svc.clusterset.local.",
            "tours.svc.clusterset.local.",
            "a.payment.tours.svc.clusterset.local.",
        ] {
            let r = ask(&query(n, RecordType::A));
            assert_eq!(r.response_code(), ResponseCode::NXDomain, "{n}");
            assert!(r.answers().is_empty(), "{n}");
        }
        // Other zones are never answered, not even names that look like ours.
        for n in [
            "example.com.",
            "payment.tours.svc.cluster.local.",
            "payment.tours.svc.clusterset.local.evil.example.",
            "xsvc.clusterset.local.",
        ] {
            let r = ask(&query(n, RecordType::A));
            assert_eq!(r.response_code(), ResponseCode::Refused, "{n}");
            assert!(r.answers().is_empty(), "{n}");
        }
    }

    #[test]
    fn odd_messages_get_an_error_or_nothing() {
        // Two questions: FORMERR.
        let mut m = Message::new();
        m.set_id(7);
        for n in ["payment.tours.svc.clusterset.local.", "example.com."] {
            m.add_query(Query::query(Name::from_str(n).unwrap(), RecordType::A));
        }
        let r = ask(&m.to_vec().unwrap());
        assert_eq!((r.id(), r.response_code()), (7, ResponseCode::FormErr));
        assert!(r.answers().is_empty());
        // Not a standard query: NOTIMP.
        let mut m = Message::new();
        m.set_id(8).set_op_code(OpCode::Update);
        let r = ask(&m.to_vec().unwrap());
        assert_eq!(r.response_code(), ResponseCode::NotImp);
        // A response is never answered (no loops between responders).
        let mut m = Message::new();
        m.set_message_type(MessageType::Response)
            .add_query(Query::query(
                Name::from_str("payment.tours.svc.clusterset.local.").unwrap(),
                RecordType::A,
            ));
        assert!(respond(&m.to_vec().unwrap(), |_| true, ADDR).is_none());
        // Garbage with a query header: FORMERR to its id; shorter than a header: nothing.
        let mut junk = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01];
        junk.extend([0xff; 20]);
        let r = Message::from_vec(&respond(&junk, |_| true, ADDR).unwrap()).unwrap();
        assert_eq!((r.id(), r.response_code()), (0x1234, ResponseCode::FormErr));
        assert!(respond(&[1, 2, 3], |_| true, ADDR).is_none());
        // Class CH (e.g. version.bind probes): refused.
        let mut m = Message::new();
        let mut q = Query::query(
            Name::from_str("payment.tours.svc.clusterset.local.").unwrap(),
            RecordType::A,
        );
        q.set_query_class(DNSClass::CH);
        m.add_query(q);
        assert_eq!(
            ask(&m.to_vec().unwrap()).response_code(),
            ResponseCode::Refused
        );
    }

    #[test]
    fn ports_follow_the_table_and_ambiguous_tcp_ports_are_left_out() {
        let t = RouteTable::parse(
            "services:
- {name: payment, namespace: tours, ports: [{port: 8080}, {port: 9090, protocol: grpc}], destinations: [{site: a}]}
- {name: booking, namespace: tours, ports: [{port: 8080}], destinations: [{site: b}]}
- {name: db, namespace: tours, ports: [{port: 5432, protocol: tcp}], destinations: [{site: b}]}
- {name: db2, namespace: tours, ports: [{port: 5433, protocol: tcp}], destinations: [{site: b}]}
- {name: other-db, namespace: tours, ports: [{port: 5433, protocol: tcp}], destinations: [{site: c}]}
- {name: mixed, namespace: tours, ports: [{port: 9090, protocol: tcp}], destinations: [{site: c}]}
",
            "yaml",
            "t".into(),
        )
        .unwrap();
        let (ports, conflicts, over) = ports(&t);
        assert_eq!(over, 0);
        assert_eq!(ports[&8080], PortUse::Http);
        assert_eq!(ports[&9090], PortUse::Http);
        assert_eq!(ports[&5432], PortUse::Tcp(ServiceKey::new("tours", "db")));
        assert!(!ports.contains_key(&5433));
        assert_eq!(conflicts, [5433, 9090]);
    }

    #[test]
    fn listeners_are_bounded_whatever_ports_the_catalog_brings() {
        let services: Vec<String> = (0..1_100u32)
            .map(|i| {
                format!(
                    "- {{name: s{i}, namespace: x, ports: [{{port: {}}}], destinations: [{{site: a}}]}}",
                    2_000 + i
                )
            })
            .collect();
        let t = RouteTable::parse(
            &format!("services:\n{}\n", services.join("\n")),
            "yaml",
            "t".into(),
        )
        .unwrap();
        let (ports, _, over) = ports(&t);
        assert_eq!(ports.len(), MAX_LISTENERS);
        assert_eq!(over, 1_100 - MAX_LISTENERS);
        assert_eq!(
            ports.keys().next_back(),
            Some(&(2_000 + MAX_LISTENERS as u16 - 1))
        );
    }
}
