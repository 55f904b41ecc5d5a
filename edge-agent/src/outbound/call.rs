//! Egress: calls from this site's workloads to services elsewhere. HTTP calls are routed by
//! `x-multimesh-destination`, else `Host` / `:authority`; TCP by the listener's service port.
//! A site is chosen by weight among healthy ones; failures count toward ejection, and
//! idempotent calls without a body are retried on another site.
//!
//! One HTTP call is these steps, each given only what it reads:
//!
//! 1. [`target`]: the service and port the caller named (the request alone);
//! 2. [`route`]: its route and port in the table the call started with (the table alone);
//! 3. [`Outgoing::new`]: the request as it will be sent, and its retry budget (the request);
//! 4. [`attempts`]: sites in turn, each picked by [`destination`] (the route and the shared
//!    outlier state), sent by [`dispatch`] (the agent's links and workload pools) and
//!    [`record`]ed (outlier state and the thread's metrics);
//! 5. respond: the upstream's answer, or one [`CallError`] in the caller's form.
//!
//! **A per-call policy of outbound calls goes here**, as a step or inside one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::uri::PathAndQuery;
use http::{Method, Request, Response};
use hyper::body::Body as _;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::agent::{Agent, Failed, Head, relay_response};
use crate::call_error::{CallError, CallerKind, ErrorCode};
use crate::http::{self as h, Body};
use crate::link::tunnel;
use crate::routes::balance::{Candidate, Change, Health};
use crate::routes::{Route, RouteDest, RoutePort, RouteTable, ServiceKey, Target, parse_host};
use crate::runtime::metrics::{Direction, Metrics};

/// Handles one call from a local workload.
pub async fn handle(agent: Arc<Agent>, req: Request<Body>) -> Response<Body> {
    let start = Instant::now();
    let caller = CallerKind::of(req.headers());
    let table = agent.table();
    let routed = target(&req).and_then(|t| route(&table, &t, rand::random()));
    let (route, port) = match routed {
        Ok(r) => r,
        Err(e) => return e.respond(caller),
    };
    let call = Outgoing::new(req, agent.config.limits.retries);
    match attempts(&agent, route, port, call, start).await {
        Ok(resp) => relay_response(resp, None),
        Err(e) => e.context(&route.id).respond(caller),
    }
}

/// Step 1: the service (and port) a local caller asked for, from `x-multimesh-destination`,
/// else the authority or `Host`.
pub fn target<B>(req: &Request<B>) -> Result<Target, CallError> {
    if req.method() == Method::CONNECT {
        return Err(CallError::new(
            ErrorCode::ConnectRefused,
            "CONNECT is not offered to local callers; use a TCP egress port",
        ));
    }
    let named = match req.headers().get(h::DESTINATION) {
        Some(v) => v.to_str().ok(),
        None => req.uri().authority().map(|a| a.as_str()).or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
        }),
    };
    let Some(raw) = named else {
        return Err(CallError::new(
            ErrorCode::NoDestination,
            "the call names no service: set Host or x-multimesh-destination",
        ));
    };
    parse_host(raw).ok_or_else(|| {
        CallError::new(
            ErrorCode::BadDestination,
            format!(
                "destination {raw:?} is not NAME.NAMESPACE.svc.clusterset.local[:PORT] nor a mirror Service's NAME-clusterset.NAMESPACE[.svc.CLUSTER-DOMAIN][:PORT]"
            ),
        )
    })
}

/// Step 2: the route of `target` (a split resolved by `roll`) and the port called.
pub fn route<'t>(
    table: &'t RouteTable,
    target: &Target,
    roll: u64,
) -> Result<(&'t Route, &'t RoutePort), CallError> {
    let route = table.resolve(&target.service, roll).ok_or_else(|| {
        CallError::new(
            ErrorCode::UnknownService,
            format!("no route for {}", target.service),
        )
    })?;
    let port = route.port(target.port).ok_or_else(|| {
        CallError::new(
            ErrorCode::UnknownPort,
            format!("{} has no port {:?}", route.id, target.port),
        )
    })?;
    Ok((route, port))
}

/// Step 3: a call as it leaves: its head (hop-by-hop headers and what only edge agents may
/// say removed), its body until an attempt takes it, and how many times it may be sent.
pub struct Outgoing {
    head: Head,
    /// The body until a request leaves with it; a retried call (idempotent, so bodiless) is
    /// sent with an empty one.
    unsent: Option<Body>,
    /// Times a request left with this call.
    sent: u32,
    /// How many times it may leave: 1, or 1 + retries for an idempotent call with no body.
    max_sent: u32,
}

impl Outgoing {
    /// The call of `req`, with `retries` extra sends allowed when it is safe to send twice.
    pub fn new(req: Request<Body>, retries: u32) -> Self {
        let (mut parts, body) = req.into_parts();
        h::strip_hop_by_hop(&mut parts.headers);
        // What only edge agents may say: a local caller speaks for no site but this one.
        parts.headers.remove(h::DESTINATION);
        parts.headers.remove(h::SITE);
        parts.headers.remove(h::SOURCE);
        let retryable = h::idempotent(&parts.method) && body.is_end_stream();
        Self {
            head: Head {
                method: parts.method,
                path: parts
                    .uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
                headers: parts.headers,
            },
            unsent: Some(body),
            sent: 0,
            max_sent: 1 + if retryable { retries } else { 0 },
        }
    }

    /// Whether a call that left may be sent again.
    fn may_resend(&self) -> bool {
        self.sent < self.max_sent && self.max_sent > 1
    }
}

/// Step 4: tries sites in turn until one answers, or no site is left that the call may go to.
/// A failed answer (5xx) of a call that may be resent is kept while another site is tried.
pub async fn attempts(
    agent: &Agent,
    route: &Route,
    port: &RoutePort,
    mut call: Outgoing,
    start: Instant,
) -> Result<Response<Body>, CallError> {
    let service = route.id.as_str();
    let own = agent.site();
    let mut tried: Vec<&str> = Vec::new();
    let mut last_error: Option<CallError> = None;
    let mut last_failed: Option<Response<Body>> = None;
    while let Some(dest) = destination(&agent.health, own, route, &tried, rand::random()) {
        let site = dest.site.as_str();
        tried.push(site);
        let body = call.unsent.take().unwrap_or_else(h::empty);
        let e = match dispatch(agent, dest, port, service, &call.head, body).await {
            Ok(resp) => {
                call.sent += 1;
                let status = resp.status();
                let failed = h::is_failure(status);
                record(&agent.health, &agent.metrics, service, site, !failed);
                agent.metrics.call(
                    Direction::Egress,
                    service,
                    site,
                    Some(status.as_u16()),
                    start.elapsed(),
                );
                if failed && call.may_resend() {
                    debug!(service = %service, destination = %site, %status, "retrying on another site");
                    agent.metrics.retries.fetch_add(1, Ordering::Relaxed);
                    last_failed = Some(resp);
                    continue;
                }
                return Ok(resp);
            }
            // Nothing left: another site may be tried, whatever the call.
            Err(Failed::Unsent(e, body)) => {
                call.unsent = Some(body);
                e
            }
            Err(Failed::Sent(e)) => {
                call.sent += 1;
                e
            }
        };
        record(&agent.health, &agent.metrics, service, site, false);
        warn!(service = %service, destination = %site, error = %e.message, "call failed");
        last_error = Some(e);
        if call.unsent.is_none() && !call.may_resend() {
            break;
        }
        if call.sent > 0 {
            agent.metrics.retries.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(resp) = last_failed {
        return Ok(resp);
    }
    agent.metrics.call(
        Direction::Egress,
        service,
        tried.last().copied().unwrap_or("none"),
        None,
        start.elapsed(),
    );
    Err(last_error.unwrap_or_else(|| {
        CallError::new(
            ErrorCode::NoDestinationSite,
            format!("no site serves {service}"),
        )
    }))
}

/// Picks the site for a call to `route`, skipping `tried` ones: this site first when the route
/// prefers it and it is healthy, else by weight among healthy sites (`own` is this site).
pub fn destination<'r>(
    health: &Health,
    own: &str,
    route: &'r Route,
    tried: &[&str],
    roll: u64,
) -> Option<&'r RouteDest> {
    let now = Instant::now();
    let service = route.id.as_str();
    if route.prefer_local
        && !tried.contains(&own)
        && let Some(local) = route.destinations.iter().find(|d| d.site == own)
        && !health.is_ejected(service, own, now)
    {
        return Some(local);
    }
    let cands: Vec<Candidate<'_>> = route
        .destinations
        .iter()
        .map(|d| Candidate {
            site: &d.site,
            weight: d.weight,
        })
        .collect();
    let site = health.pick(service, &cands, tried, now, roll)?;
    route.destinations.iter().find(|d| d.site == site)
}

/// Sends one attempt to `dest`: this site's workload, or another site's edge agent.
pub async fn dispatch(
    agent: &Agent,
    dest: &RouteDest,
    port: &RoutePort,
    service: &str,
    head: &Head,
    body: Body,
) -> Result<Response<Body>, Failed> {
    if dest.site != agent.site() {
        return agent
            .send_remote(dest, &port.address.authority, head, body)
            .await;
    }
    match port.upstream.as_deref() {
        // Boxed: the workload hop's future is large, and calls to other sites (the usual
        // path) should not carry its size.
        Some(up) => {
            Box::pin(agent.send_local(up, port.protocol, &port.address, head.clone(), body))
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
}

/// Records an attempt's outcome for outlier detection, logging ejections and recoveries.
pub fn record(health: &Health, metrics: &Metrics, service: &str, site: &str, ok: bool) {
    match health.record(service, site, ok, Instant::now()) {
        Change::None => {}
        Change::Ejected(d) => {
            warn!(
                service,
                destination = site,
                ejected_for_ms = d.as_millis() as u64,
                "destination ejected after consecutive failures"
            );
            metrics.ejection(service, site);
        }
        Change::Recovered => info!(service, destination = site, "destination healthy again"),
    }
}

/// Carries one local TCP connection to `key`:`port`, choosing a site as for HTTP; a site that
/// cannot be reached is skipped (nothing has been sent yet), later failures end the connection.
pub async fn tcp(agent: Arc<Agent>, mut client: TcpStream, key: ServiceKey, port: u16) {
    let table = agent.table();
    let Some(route) = table.resolve(&key, rand::random()) else {
        warn!(service = %key, "TCP egress: no route");
        return;
    };
    let key = route.key.clone();
    let service = key.to_string();
    let mut tried: Vec<String> = Vec::new();
    loop {
        let tried_refs: Vec<&str> = tried.iter().map(String::as_str).collect();
        let Some(dest) = destination(
            &agent.health,
            agent.site(),
            route,
            &tried_refs,
            rand::random(),
        ) else {
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
                record(&agent.health, &agent.metrics, &service, &dest.site, true);
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
                record(&agent.health, &agent.metrics, &service, &dest.site, false);
                warn!(service = %service, destination = %dest.site, error = %e, "TCP egress: cannot open tunnel");
            }
        }
    }
}
