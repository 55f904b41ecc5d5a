//! Egress: calls from this site's workloads to services elsewhere. HTTP calls are routed by
//! `x-multimesh-destination`, else `Host` / `:authority`; TCP by the listener's service port.
//! A site is chosen by weight among healthy ones; failures count toward ejection, and
//! idempotent calls without a body are retried on another site.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::uri::PathAndQuery;
use http::{Method, Request, Response};
use hyper::body::Body as _;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::agent::{Agent, Failed, Head, relay_response};
use crate::call_error::{CallError, CallerKind, ErrorCode};
use crate::http::{self as h, Body};
use crate::link::tunnel;
use crate::routes::{ServiceKey, parse_host};
use crate::runtime::metrics::Direction;

/// The host a local caller asked for.
fn destination_of<B>(req: &Request<B>) -> Option<&str> {
    if let Some(v) = req.headers().get(h::DESTINATION) {
        return v.to_str().ok();
    }
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str());
    }
    req.headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
}

/// Handles one call from a local workload.
pub async fn handle(agent: Arc<Agent>, req: Request<Body>) -> Response<Body> {
    let start = Instant::now();
    let caller = CallerKind::of(req.headers());
    let Some(raw) = destination_of(&req) else {
        return CallError::new(
            ErrorCode::NoDestination,
            "the call names no service: set Host or x-multimesh-destination",
        )
        .respond(caller);
    };
    let Some(target) = parse_host(raw) else {
        return CallError::new(
                ErrorCode::BadDestination,
                format!(
                    "destination {raw:?} is not NAME.NAMESPACE.svc.clusterset.local[:PORT] nor a mirror Service's NAME-clusterset.NAMESPACE[.svc.CLUSTER-DOMAIN][:PORT]"
                ),
            ).respond(caller);
    };
    let table = agent.table();
    let Some(route) = agent.resolve(&table, &target.service, rand::random()) else {
        return CallError::new(
            ErrorCode::UnknownService,
            format!("no route for {}", target.service),
        )
        .respond(caller);
    };
    let service = route.id.as_str();
    let Some(port) = route.port(target.port) else {
        return CallError::new(
            ErrorCode::UnknownPort,
            format!("{service} has no port {:?}", target.port),
        )
        .respond(caller);
    };
    if req.method() == Method::CONNECT {
        return CallError::new(
            ErrorCode::ConnectRefused,
            "CONNECT is not offered to local callers; use a TCP egress port",
        )
        .respond(caller);
    }
    let address = &port.address;
    let (mut parts, body) = req.into_parts();
    h::strip_hop_by_hop(&mut parts.headers);
    // What only edge agents may say: a local caller speaks for no site but this one.
    parts.headers.remove(h::DESTINATION);
    parts.headers.remove(h::SITE);
    parts.headers.remove(h::SOURCE);
    let retryable = h::idempotent(&parts.method) && body.is_end_stream();
    let head = Head {
        method: parts.method,
        path: parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        headers: parts.headers,
    };
    // The body until a request leaves with it; after that, a retried call (idempotent, so
    // bodiless) is sent with an empty one.
    let mut unsent: Option<Body> = Some(body);
    let mut tried: Vec<&str> = Vec::new();
    let max_sent = 1 + if retryable {
        agent.config.limits.retries
    } else {
        0
    };
    let mut sent = 0;
    let mut last_error: Option<CallError> = None;
    let mut last_failed: Option<Response<Body>> = None;
    while let Some(dest) = agent.pick(route, service, &tried, rand::random()) {
        let site = dest.site.as_str();
        tried.push(site);
        let body = unsent.take().unwrap_or_else(h::empty);
        let result = if site == agent.site() {
            match port.upstream.as_deref() {
                // Boxed: the workload hop's future is large, and calls to other sites (this
                // function's usual path) should not carry its size.
                Some(up) => {
                    Box::pin(agent.send_local(up, port.protocol, address, head.clone(), body))
                        .await
                        .map_err(Failed::Sent)
                }
                None => Err(Failed::Unsent(
                    CallError::new(
                        ErrorCode::NoLocalEndpoint,
                        format!("{service} port {} has no local upstream", port.port),
                    ),
                    body,
                )),
            }
        } else {
            agent
                .send_remote(dest, &address.authority, &head, body)
                .await
        };
        let e = match result {
            Ok(resp) => {
                sent += 1;
                let status = resp.status();
                let failed = h::is_failure(status);
                agent.record(service, site, !failed);
                agent.metrics.call(
                    Direction::Egress,
                    service,
                    site,
                    Some(status.as_u16()),
                    start.elapsed(),
                );
                if failed && retryable && sent < max_sent {
                    debug!(service = %service, destination = %site, %status, "retrying on another site");
                    agent.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    last_failed = Some(resp);
                    continue;
                }
                return relay_response(resp, None);
            }
            // Nothing left: another site may be tried, whatever the call.
            Err(Failed::Unsent(e, body)) => {
                unsent = Some(body);
                e
            }
            Err(Failed::Sent(e)) => {
                sent += 1;
                e
            }
        };
        agent.record(service, site, false);
        warn!(service = %service, destination = %site, error = %e.message, "call failed");
        last_error = Some(e);
        if unsent.is_none() && !(retryable && sent < max_sent) {
            break;
        }
        if sent > 0 {
            agent.metrics.retries.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(resp) = last_failed {
        return relay_response(resp, None);
    }
    let err = last_error.unwrap_or_else(|| {
        CallError::new(
            ErrorCode::NoDestinationSite,
            format!("no site serves {service}"),
        )
    });
    agent.metrics.call(
        Direction::Egress,
        service,
        tried.last().copied().unwrap_or("none"),
        None,
        start.elapsed(),
    );
    err.context(service).respond(caller)
}

/// Carries one local TCP connection to `key`:`port`, choosing a site as for HTTP; a site that
/// cannot be reached is skipped (nothing has been sent yet), later failures end the connection.
pub async fn tcp(agent: Arc<Agent>, mut client: TcpStream, key: ServiceKey, port: u16) {
    let table = agent.table();
    let Some(route) = agent.resolve(&table, &key, rand::random()) else {
        warn!(service = %key, "TCP egress: no route");
        return;
    };
    let key = route.key.clone();
    let service = key.to_string();
    let mut tried: Vec<String> = Vec::new();
    loop {
        let tried_refs: Vec<&str> = tried.iter().map(String::as_str).collect();
        let Some(dest) = agent.pick(route, &service, &tried_refs, rand::random()) else {
            warn!(service = %service, tried = ?tried, "TCP egress: no reachable site");
            return;
        };
        tried.push(dest.site.clone());
        let start = Instant::now();
        let opened = if dest.site == agent.site() {
            tunnel::open_local(&agent, route.port(Some(port)), &key, port).await
        } else {
            tunnel::open_remote(&agent, dest, &key, port).await
        };
        match opened {
            Ok(mut upstream) => {
                agent.record(&service, &dest.site, true);
                agent.metrics.call(
                    Direction::Egress,
                    &service,
                    &dest.site,
                    Some(200),
                    start.elapsed(),
                );
                tunnel::splice(&agent, &mut client, &mut upstream).await;
                return;
            }
            Err(e) => {
                agent.record(&service, &dest.site, false);
                warn!(service = %service, destination = %dest.site, error = %e, "TCP egress: cannot open tunnel");
            }
        }
    }
}
