//! Wiring of a running agent: listeners (ingress, egress HTTP and TCP, admin), the route feed,
//! and an edge node's link to its parent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use multimesh_core::accept;
use multimesh_core::backoff::Backoff;
use multimesh_core::tls;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::agent::Agent;
use crate::config::AgentConfig;
use crate::http::coalesce::Coalesce;
use crate::http::{self as h, Body};
use crate::inbound::{self, call::Caller};
use crate::outbound;
use crate::routes::feed;
use crate::runtime::workers::Workers;

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Certificates unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A socket could not be bound.
    #[error("cannot bind {what} {addr}: {source}")]
    Bind {
        /// Which listener.
        what: String,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The first route table could not be loaded.
    #[error("routes: {0}")]
    Routes(String),
    /// The ready file could not be written.
    #[error("ready file: {0}")]
    ReadyFile(String),
    /// The data-plane threads could not be started.
    #[error("cannot start data-plane threads: {0}")]
    Threads(std::io::Error),
}

/// The addresses the agent bound (written to the ready file as JSON).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Bound {
    /// Peer ingress.
    pub ingress: Option<SocketAddr>,
    /// Local HTTP egress.
    pub egress_http: Option<SocketAddr>,
    /// Local TCP egress listeners, in config order.
    pub egress_tcp: Vec<SocketAddr>,
    /// Admin (metrics, health).
    pub admin: Option<SocketAddr>,
    /// DNS responder for the clusterset names.
    pub dns: Option<SocketAddr>,
}

/// A started agent.
pub struct Running {
    /// Where it listens.
    pub bound: Bound,
    /// Its state.
    pub agent: Arc<Agent>,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
    /// Stopped when the last handle goes, after the listeners' tasks have ended.
    _workers: Arc<Workers>,
}

impl Running {
    /// Stops accepting, lets open links finish (up to 5 s), and returns.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(6), drain)
            .await
            .is_err()
        {
            self.tasks.abort_all();
        }
        info!(site = %self.agent.site(), "edge agent stopped");
    }
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            what: what.to_string(),
            addr,
            source,
        })
}

/// Starts an agent: loads identity and routes (refusing to start on a bad route file), binds
/// every listener, then serves until [`Running::stop`]. With `file` (its path, and its
/// document as loaded), the config file is read again every `config_reload_ms`.
pub async fn start(
    config: AgentConfig,
    file: Option<(std::path::PathBuf, serde_json::Value)>,
) -> Result<Running, StartError> {
    let site_tls = Arc::new(tls::load_site(
        &config.tls,
        &config.trust_domain,
        &config.site,
        multimesh_core::identity::Role::Edge,
    )?);
    let agent = Arc::new(Agent::new(config.clone(), site_tls.clone()));
    let workers =
        Workers::start(config.data_plane_threads(), &config.site).map_err(StartError::Threads)?;
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut bound = Bound::default();

    if config.certificate_reload_ms > 0 {
        tasks.spawn(multimesh_core::rotate::watch(
            multimesh_core::rotate::Source {
                files: config.tls.clone(),
                trust_domain: config.trust_domain.clone(),
                site: config.site.clone(),
                role: multimesh_core::identity::Role::Edge,
            },
            site_tls.clone(),
            std::time::Duration::from_millis(config.certificate_reload_ms),
            shutdown.clone(),
            |_, _| {},
        ));
    }
    if let Some((path, document)) = file
        && config.config_reload_ms > 0
    {
        tasks.spawn(crate::runtime::reload::watch(
            agent.clone(),
            path,
            document,
            Duration::from_millis(config.config_reload_ms),
            shutdown.clone(),
        ));
    }
    if let Some(path) = &config.routes.file {
        let table = feed::load_file(path).map_err(StartError::Routes)?;
        agent.routes.publish(table);
        tasks.spawn(feed::watch_file(
            agent.routes.clone(),
            path.clone(),
            shutdown.clone(),
        ));
    } else if let Some(addr) = &config.routes.federation {
        tasks.spawn(feed::watch_federation(
            agent.routes.clone(),
            feed::Follow {
                trust_domain: config.trust_domain.clone(),
                site: config.site.clone(),
                address: addr.clone(),
            },
            site_tls.clone(),
            shutdown.clone(),
        ));
    }

    if let Some(addr) = config.ingress {
        let l = bind("ingress", addr).await?;
        bound.ingress = l.local_addr().ok();
        let (a, t, s, w) = (
            agent.clone(),
            site_tls.clone(),
            shutdown.clone(),
            workers.clone(),
        );
        tasks.spawn(async move {
            if let Err(e) = inbound::accept::serve(a, t, l, s, w).await {
                error!(error = %e, "ingress stopped");
            }
        });
    }
    if let Some(addr) = config.egress_http {
        let l = bind("egress_http", addr).await?;
        bound.egress_http = l.local_addr().ok();
        tasks.spawn(serve_http(
            agent.clone(),
            l,
            shutdown.clone(),
            workers.clone(),
            Listener::Egress,
        ));
    }
    for (i, t) in config.egress_tcp.iter().enumerate() {
        let l = bind(&format!("egress_tcp[{i}]"), t.listen).await?;
        bound
            .egress_tcp
            .push(l.local_addr().map_err(|source| StartError::Bind {
                what: format!("egress_tcp[{i}]"),
                addr: t.listen,
                source,
            })?);
        let key = crate::routes::ServiceKey::new(&t.namespace, &t.service);
        tasks.spawn(serve_tcp(
            agent.clone(),
            l,
            key,
            t.port,
            shutdown.clone(),
            workers.clone(),
        ));
    }
    if let Some(c) = &config.clusterset {
        let socket =
            tokio::net::UdpSocket::bind(c.dns)
                .await
                .map_err(|source| StartError::Bind {
                    what: "clusterset.dns".into(),
                    addr: c.dns,
                    source,
                })?;
        bound.dns = socket.local_addr().ok();
        tasks.spawn(crate::outbound::clusterset::serve_dns(
            agent.clone(),
            socket,
            c.address,
            shutdown.clone(),
        ));
        tasks.spawn(crate::outbound::clusterset::serve_listeners(
            agent.clone(),
            c.address,
            shutdown.clone(),
            workers.clone(),
        ));
    }
    if let Some(addr) = config.admin {
        let l = bind("admin", addr).await?;
        bound.admin = l.local_addr().ok();
        tasks.spawn(serve_http(
            agent.clone(),
            l,
            shutdown.clone(),
            workers.clone(),
            Listener::Admin,
        ));
    }
    if config.parent.is_some() {
        tasks.spawn_on(
            parent_link(agent.clone(), shutdown.clone()),
            workers.first(),
        );
    }
    if let Some(path) = &config.ready_file {
        let body = serde_json::to_string_pretty(&bound).unwrap_or_default();
        multimesh_core::identity::write_file(path, &body, false)
            .map_err(|e| StartError::ReadyFile(e.to_string()))?;
    }
    info!(
        site = %config.site,
        ingress = ?bound.ingress,
        egress_http = ?bound.egress_http,
        admin = ?bound.admin,
        threads = workers.len(),
        "edge agent serving"
    );
    Ok(Running {
        bound,
        agent,
        tasks,
        shutdown,
        _workers: workers,
    })
}

/// Serves local callers' HTTP/1.1 and h2c on `l` (the egress handler) until `shutdown`.
pub(crate) async fn serve_egress_http(
    agent: Arc<Agent>,
    l: TcpListener,
    shutdown: CancellationToken,
    workers: Arc<Workers>,
) {
    serve_http(agent, l, shutdown, workers, Listener::Egress).await;
}

#[derive(Clone, Copy)]
enum Listener {
    Egress,
    Admin,
}

/// Serves plain HTTP/1.1 and h2c (prior knowledge) on `l`, each connection on a data-plane
/// thread.
async fn serve_http(
    agent: Arc<Agent>,
    l: TcpListener,
    shutdown: CancellationToken,
    workers: Arc<Workers>,
    kind: Listener,
) {
    let slots = Arc::new(Semaphore::new(agent.config.limits.max_connections));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = shutdown.cancelled() => break,
        };
        let what = match kind {
            Listener::Egress => "egress",
            Listener::Admin => "admin",
        };
        let Some((tcp, _)) = accept::next(&l, &shutdown, what).await else {
            break;
        };
        let agent = agent.clone();
        let stop = shutdown.clone();
        workers.serve(&mut conns, tcp, move |tcp| async move {
            let _permit = permit;
            // h2c callers multiplex many calls on a connection: served on the h2 crate, their
            // calls run in the connection's task and their responses are coalesced into fewer
            // writes (`http::h2`, `http::coalesce`). HTTP/1.1 has one response in flight, so nothing to batch.
            // (Bounded, and given up on shutdown: a caller that connects and sends nothing
            // must not hold the agent open.)
            let h2 = matches!(kind, Listener::Egress)
                && tokio::select! {
                    r = tokio::time::timeout(
                        Duration::from_millis(agent.config.limits.header_timeout_ms),
                        speaks_h2(&tcp),
                    ) => {
                        r.unwrap_or(false)
                    }
                    () = stop.cancelled() => return,
                };
            if matches!(kind, Listener::Egress) {
                agent.metrics.active_egress.fetch_add(1, Ordering::Relaxed);
            }
            if h2 {
                crate::outbound::h2c::serve(agent.clone(), Coalesce::new(tcp), stop).await;
            } else {
                serve_http1(&agent, tcp, kind, &stop).await;
            }
            if matches!(kind, Listener::Egress) {
                agent.metrics.active_egress.fetch_sub(1, Ordering::Relaxed);
            }
        });
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
}

/// Serves HTTP/1.1 (egress callers, admin) on hyper; h2c is still understood here, for the
/// admin port. A caller has `header_timeout_ms` to send each request head, and a connection
/// with no call in flight and no bytes either way for `idle_timeout_ms` is closed (hyper has
/// no idle timeout of its own for HTTP/1.1 keep-alive).
async fn serve_http1(agent: &Arc<Agent>, tcp: TcpStream, kind: Listener, stop: &CancellationToken) {
    let a = agent.clone();
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = in_flight.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let a = a.clone();
        let call = InFlight::new(&counted);
        async move {
            let resp = match kind {
                Listener::Egress => outbound::call::handle(a, req.map(h::incoming)).await,
                Listener::Admin => admin(&a, &req),
            };
            drop(call);
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let limits = agent.config.limits;
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(Duration::from_millis(limits.header_timeout_ms));
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams);
    let started = tokio::time::Instant::now();
    let activity = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let io = Watched {
        inner: tcp,
        started,
        last: activity.clone(),
    };
    let conn = b.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    loop {
        let last = started + Duration::from_millis(activity.load(Ordering::Relaxed));
        tokio::select! {
            _ = conn.as_mut() => return,
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(last + idle) => {
                let quiet = started + Duration::from_millis(activity.load(Ordering::Relaxed)) + idle
                    <= tokio::time::Instant::now();
                if quiet && in_flight.load(Ordering::Relaxed) == 0 {
                    tracing::debug!("local caller idle: connection closed");
                    break;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
}

/// A call in flight on a connection, counted until dropped.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection that records when bytes last moved either way (ms since `started`).
struct Watched<T> {
    inner: T,
    started: tokio::time::Instant,
    last: Arc<std::sync::atomic::AtomicU64>,
}

impl<T> Watched<T> {
    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether a new connection opens with the HTTP/2 preface (`PRI * HTTP/2.0`). Peeked, so
/// nothing is consumed; a guess that is wrong only costs speed.
async fn speaks_h2(tcp: &TcpStream) -> bool {
    let mut head = [0u8; 4];
    matches!(tcp.peek(&mut head).await, Ok(4) if &head == b"PRI ")
}

/// Serves a TCP egress listener: each connection is tunnelled, on a data-plane thread.
pub(crate) async fn serve_tcp(
    agent: Arc<Agent>,
    l: TcpListener,
    key: crate::routes::ServiceKey,
    port: u16,
    shutdown: CancellationToken,
    workers: Arc<Workers>,
) {
    let slots = Arc::new(Semaphore::new(agent.config.limits.max_connections));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            () = shutdown.cancelled() => break,
        };
        let Some((tcp, _)) = accept::next(&l, &shutdown, "tcp-egress").await else {
            break;
        };
        let (a, k) = (agent.clone(), key.clone());
        let span = info_span!("tcp-egress", service = %key);
        workers.serve(&mut conns, tcp, move |tcp| {
            async move {
                let _permit = permit;
                outbound::call::tcp(a, tcp, k, port).await;
            }
            .instrument(span)
        });
        while conns.try_join_next().is_some() {}
    }
    // A tunnel has no graceful end of its own: open ones are cut when the agent stops.
    conns.abort_all();
}

/// `/metrics`, `/healthz`, `/readyz`, `/routes`.
fn admin(agent: &Agent, req: &Request<Incoming>) -> Response<Body> {
    let text = |status: StatusCode, body: String, ctype: &'static str| {
        let mut r = Response::new(h::full(body));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ctype),
        );
        r
    };
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into(), "text/plain"),
        "/readyz" => match agent.ready() {
            Ok(()) => text(StatusCode::OK, "ready\n".into(), "text/plain"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                "text/plain",
            ),
        },
        "/metrics" => {
            let ejected = agent.health.ejected(std::time::Instant::now());
            let mut body = agent.metrics.render(agent.site(), &ejected, &agent.routes);
            let presented = agent.tls.presented.current();
            if let Some((_, end)) = presented
                .cert
                .first()
                .and_then(|c| multimesh_core::identity::validity(c).ok())
            {
                body.push_str(&crate::runtime::metrics::certificate_expiry(
                    agent.site(),
                    end.unix_timestamp(),
                ));
            }
            text(StatusCode::OK, body, "text/plain; version=0.0.4")
        }
        "/routes" => {
            let table = agent.table();
            let doc = table.document();
            text(
                StatusCode::OK,
                serde_json::to_string_pretty(&serde_json::json!({
                    "version": table.version,
                    "routes": doc,
                }))
                .unwrap_or_default(),
                "application/json",
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "try /metrics, /healthz, /readyz or /routes\n".into(),
            "text/plain",
        ),
    }
}

/// An edge node's outbound link: dial the parent, serve calls on the link, redial on loss.
async fn parent_link(agent: Arc<Agent>, shutdown: CancellationToken) {
    let Some(parent) = agent.config.parent.clone() else {
        return;
    };
    let mut backoff =
        Backoff::new(Duration::from_millis(200), Duration::from_secs(5)).with_jitter();
    loop {
        let dialled = tokio::select! {
            r = agent.pool.dial_parent(&parent.site, &parent.address) => r,
            () = shutdown.cancelled() => return,
        };
        match dialled {
            Ok(tls) => {
                info!(parent = %parent.site, address = %parent.address, "parent link up");
                backoff.reset();
                agent.parent_up.store(true, Ordering::Release);
                let caller = Caller {
                    site: parent.site.clone(),
                    from_parent: true,
                };
                inbound::call::serve_link(agent.clone(), tls, caller, shutdown.clone())
                    .instrument(info_span!("parent-link", parent = %parent.site))
                    .await;
                agent.parent_up.store(false, Ordering::Release);
                if shutdown.is_cancelled() {
                    return;
                }
                warn!(parent = %parent.site, "parent link lost; redialling");
            }
            Err(e) => warn!(parent = %parent.site, error = %e, "cannot reach parent"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
