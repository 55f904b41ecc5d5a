//! One call from another site, on a link whose handshake proved the calling site
//! ([`super::accept`]): [`serve_link`] serves a link's streams, [`handle`] admits each call by
//! the service's consumer scope and forwards it to the local workload, or relays it to or from
//! an edge node this site parents.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::header::HeaderValue;
use http::uri::PathAndQuery;
use http::{Method, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::{Agent, Head, relay_response};
use crate::call_error::{CallError, CallerKind, ErrorCode};
use crate::http::coalesce::Coalesce;
use crate::http::h2::{MAX_HEADER_LIST, Tunnel, answer, recv_body, serve_streams};
use crate::http::{self as h, Body};
use crate::link::client::{PING_EVERY, PONG_WITHIN};
use crate::link::tunnel;
use crate::routes::parse_host;
use crate::runtime::metrics::Direction;

/// On calls relayed by a parent to its edge node: the site that made the call.
pub use crate::http::SOURCE;

/// Who is calling, as proven by the connection.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The calling site (from its certificate).
    pub site: String,
    /// The connection is this edge node's link from its parent (calls may carry the original
    /// caller in `x-multimesh-source-site`).
    pub from_parent: bool,
}

/// HTTP/2 server settings for edge links: large windows, as on the calling side.
fn h2_server(agent: &Agent) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(agent.config.limits.max_streams)
        .max_header_list_size(MAX_HEADER_LIST)
        .initial_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .max_frame_size(64 << 10);
    b
}

/// Serves calls arriving on one authenticated link until it closes or `shutdown`.
pub async fn serve_link<S>(agent: Arc<Agent>, io: S, caller: Caller, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    agent.metrics.active_ingress.fetch_add(1, Ordering::Relaxed);
    match h2_server(&agent)
        .handshake::<_, Bytes>(Coalesce::new(io))
        .await
    {
        Ok(conn) => {
            let ended = serve_streams(
                conn,
                &shutdown,
                Some((PING_EVERY, PONG_WITHIN)),
                // Peer links are kept while idle: they are pinged, bounded per site, and
                // reused by the next call instead of a new handshake.
                crate::http::h2::Bounds {
                    max_calls: agent.config.limits.max_streams as usize,
                    idle: None,
                },
                |req, respond| Box::pin(call(agent.clone(), caller.clone(), req, respond)),
            )
            .await;
            match ended {
                Ok(()) => debug!("ingress link ended"),
                Err(e) => debug!(error = %e, "ingress link ended"),
            }
        }
        Err(e) => debug!(error = %e, "ingress link: HTTP/2 handshake failed"),
    }
    agent.metrics.active_ingress.fetch_sub(1, Ordering::Relaxed);
}

/// What a call from another site is answered with.
pub enum Answer {
    /// A response (head, then its body).
    Response(Response<Body>),
    /// `200` to a `CONNECT`: the stream then carries the bytes of `upstream`.
    Tunnel {
        /// The response head.
        head: Response<()>,
        /// The stream's incoming half.
        recv: RecvStream,
        /// Where the bytes go.
        upstream: Box<dyn tunnel::Io>,
    },
}

impl From<Response<Body>> for Answer {
    fn from(r: Response<Body>) -> Self {
        Answer::Response(r)
    }
}

/// One stream of a link: handled, and its answer written back.
async fn call(
    agent: Arc<Agent>,
    caller: Caller,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    match handle(agent.clone(), caller, req).await {
        Answer::Response(resp) => {
            if let Err(e) = answer(respond, resp).await {
                debug!(error = %e, "ingress: stream gone before the response");
            }
        }
        Answer::Tunnel {
            head,
            recv,
            mut upstream,
        } => match respond.send_response(head, false) {
            Ok(send) => {
                let mut io = Tunnel::new(send, recv);
                tunnel::splice(&agent, &mut io, &mut upstream).await;
            }
            Err(e) => debug!(error = %e, "ingress: tunnel stream gone before the response"),
        },
    }
}

/// The agent's own answer (see [`CallError::respond`]).
fn refuse(kind: CallerKind, code: ErrorCode, message: impl Into<String>) -> Answer {
    CallError::new(code, message).respond(kind).into()
}

/// Handles one call from another site.
pub async fn handle(agent: Arc<Agent>, caller: Caller, mut req: Request<RecvStream>) -> Answer {
    let start = Instant::now();
    let kind = CallerKind::of(req.headers());
    // The original caller: only a parent may speak for another site.
    let source: Cow<'_, str> = match req.headers().get(SOURCE).and_then(|v| v.to_str().ok()) {
        Some(s) if caller.from_parent => Cow::Owned(s.to_string()),
        _ => Cow::Borrowed(&caller.site),
    };
    let raw = match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req
            .headers()
            .get(h::DESTINATION)
            .and_then(|v| v.to_str().ok()),
    };
    let Some(target) = raw.and_then(parse_host) else {
        return refuse(
            kind,
            ErrorCode::BadDestination,
            format!("destination {raw:?} is not NAME.NAMESPACE.svc.clusterset.local:PORT"),
        );
    };
    let relay_to = req
        .headers()
        .get(h::SITE)
        .and_then(|v| v.to_str().ok())
        .filter(|s| *s != agent.site())
        .map(str::to_string);
    if let Some(site) = relay_to {
        // Boxed, as the tunnel below: rare paths with large futures, which would otherwise
        // make every call's future as large.
        return Box::pin(relay(agent, &caller, &source, &site, req)).await;
    }
    let table = agent.table();
    let key = &target.service;
    let Some(route) = table.service(key) else {
        let service = key.to_string();
        return refuse(
            kind,
            ErrorCode::NotExported,
            format!("{service} is not served by site {}", agent.site()),
        );
    };
    let service = route.id.as_str();
    // Only this site's own export is served, by its own scope: a workload that another site
    // exports under the same name is not thereby exported here.
    if !route.destinations.iter().any(|d| d.site == agent.site()) {
        return refuse(
            kind,
            ErrorCode::NotExported,
            format!("{service} is not exported by site {}", agent.site()),
        );
    }
    if !route.admits(&source) {
        warn!(service = %service, caller = %source, "ingress: caller outside the service's consumer scope");
        return refuse(
            kind,
            ErrorCode::Scope,
            format!("site {source} may not call {service}"),
        );
    }
    let Some(port) = route.port(target.port) else {
        return refuse(
            kind,
            ErrorCode::UnknownPort,
            format!("{service} has no port {:?}", target.port),
        );
    };
    let port_no = port.port;
    let protocol = port.protocol;
    if req.method() == Method::CONNECT {
        let upstream = match Box::pin(tunnel::open_local(&agent, Some(port), key, port_no)).await {
            Ok(u) => u,
            Err(e) => {
                warn!(service = %service, error = %e, "ingress: tunnel upstream unreachable");
                return refuse(kind, ErrorCode::UpstreamFailed, e);
            }
        };
        return accept_tunnel(&agent, req, upstream, service, start);
    }
    let Some(upstream) = port.upstream.as_deref() else {
        return refuse(
            kind,
            ErrorCode::NoLocalEndpoint,
            format!(
                "{service} port {port_no} has no local upstream at site {}",
                agent.site()
            ),
        );
    };
    let address = &port.address;
    let head = take_head(&mut req);
    let body = recv_body(req.into_body());
    let result = agent
        .send_local(upstream, protocol, address, head, body)
        .await;
    let status = result.as_ref().ok().map(|r| r.status().as_u16());
    agent.metrics.call(
        Direction::Ingress,
        service,
        &source,
        status,
        start.elapsed(),
    );
    match result {
        Ok(resp) => relay_response(resp, agent.site_header()).into(),
        Err(e) => {
            warn!(service = %service, caller = %source, error = %e.message, "ingress: upstream failed");
            e.context(service).respond(kind).into()
        }
    }
}

fn take_head(req: &mut Request<RecvStream>) -> Head {
    let mut headers = std::mem::take(req.headers_mut());
    h::strip_hop_by_hop(&mut headers);
    headers.remove(h::SITE);
    headers.remove(SOURCE);
    Head {
        method: req.method().clone(),
        path: req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        headers,
    }
}

/// Answers a CONNECT with 200; its stream then carries the bytes of `upstream`.
fn accept_tunnel(
    agent: &Agent,
    req: Request<RecvStream>,
    upstream: Box<dyn tunnel::Io>,
    service: &str,
    start: Instant,
) -> Answer {
    agent.metrics.call(
        Direction::Ingress,
        service,
        "tunnel",
        Some(200),
        start.elapsed(),
    );
    let mut head = Response::new(());
    if let Some(v) = agent.site_header() {
        head.headers_mut().insert(h::SERVED_BY, v.clone());
    }
    Answer::Tunnel {
        head,
        recv: req.into_body(),
        upstream,
    }
}

fn req_service<B>(req: &Request<B>) -> String {
    req.uri()
        .authority()
        .and_then(|a| parse_host(a.as_str()))
        .map_or_else(|| "unknown".to_string(), |t| t.service.to_string())
}

/// Relays a call meant for another site: from a parent into its edge node, or from an edge
/// node out to the rest of the federation. Anything else is refused (no open relay).
async fn relay(
    agent: Arc<Agent>,
    caller: &Caller,
    source: &str,
    site: &str,
    mut req: Request<RecvStream>,
) -> Answer {
    let start = Instant::now();
    let kind = CallerKind::of(req.headers());
    let into_child = agent.pool.is_child(site);
    let from_child = agent.pool.is_child(&caller.site);
    if !into_child && !from_child {
        warn!(caller = %caller.site, target_site = site, "ingress: relay refused");
        return refuse(
            kind,
            ErrorCode::RelayRefused,
            format!(
                "site {} does not relay calls from {} to {site}",
                agent.site(),
                caller.site
            ),
        );
    }
    let service = req_service(&req);
    // The link to use: the child's own, or the destination site's as the route table says.
    let (link, addresses) = if into_child {
        (site.to_string(), Vec::new())
    } else {
        let table = agent.table();
        let dest = req
            .uri()
            .authority()
            .and_then(|a| parse_host(a.as_str()))
            .and_then(|t| table.service(&t.service).cloned())
            .and_then(|r| r.destinations.into_iter().find(|d| d.site == site));
        match dest {
            // The edge node's call is admitted by the destination's scope for the node
            // itself: its parent's own access lends it nothing.
            Some(d) if !d.admits(&caller.site) => {
                warn!(service = %service, caller = %caller.site, target_site = site, "relay refused: edge node outside the destination's consumer scope");
                return refuse(
                    kind,
                    ErrorCode::Scope,
                    format!("site {} may not call {service} at site {site}", caller.site),
                );
            }
            Some(d) => {
                let (l, a) = agent.link_for(&d);
                (l.to_string(), a.to_vec())
            }
            None => {
                return refuse(
                    kind,
                    ErrorCode::UnknownService,
                    format!("no route to {service} at site {site}"),
                );
            }
        }
    };
    let send = match agent.pool.get(&link, &addresses).await {
        Ok(s) => s,
        Err(e) => {
            warn!(service = %service, target_site = site, error = %e, "relay: link down");
            return refuse(kind, ErrorCode::SiteUnreachable, e);
        }
    };
    if req.method() == Method::CONNECT {
        let authority = req.uri().to_string();
        let upstream = match tunnel::connect_over(&agent, send, site, &authority).await {
            Ok(u) => u,
            Err(e) => return refuse(kind, ErrorCode::UpstreamFailed, e),
        };
        return accept_tunnel(&agent, req, upstream, &service, start);
    }
    if let Ok(v) = HeaderValue::from_str(source) {
        req.headers_mut().insert(SOURCE, v);
    }
    let (mut parts, body) = req.into_parts();
    h::strip_hop_by_hop(&mut parts.headers);
    let fwd = Request::from_parts(parts, recv_body(body));
    let result = agent.with_request_timeout(send.request(fwd)).await;
    let status = match &result {
        Ok(Ok(r)) => Some(r.status().as_u16()),
        _ => None,
    };
    agent
        .metrics
        .call(Direction::Ingress, &service, site, status, start.elapsed());
    match result {
        Ok(Ok(resp)) => {
            info!(service = %service, caller = %source, target_site = site, "relayed");
            relay_response(resp, None).into()
        }
        Ok(Err(e)) => refuse(kind, ErrorCode::RelayFailed, crate::agent::error_chain(&e)),
        Err(_) => refuse(kind, ErrorCode::Timeout, "relay timed out"),
    }
}
