//! The agent's shared state, and the two ways a call leaves it: to a local workload, or to
//! another site's edge agent over the pooled mTLS HTTP/2 link.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http::header::HeaderValue;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
pub use multimesh_core::dial::error_chain;
use multimesh_core::service::Protocol;
use multimesh_core::tls::SiteTls;

use crate::call_error::{CallError, ErrorCode};
use crate::config::AgentConfig;
use crate::http::{self as h, Body};
use crate::link::peers::PeerPool;
use crate::routes::balance::Health;
use crate::routes::published::Published;
use crate::routes::{PortAddress, RouteDest, RouteTable};
use crate::runtime::deadline::{Deadlines, Within};
use crate::runtime::metrics::Metrics;
use crate::runtime::workers::PerThread;
use crate::workload::pool::Http1Pool;

/// A running agent's shared state.
pub struct Agent {
    /// The config.
    pub config: AgentConfig,
    /// The route table in force, as the feed publishes it.
    pub routes: Arc<Published>,
    /// Outlier detection state.
    pub health: Health,
    /// Metrics.
    pub metrics: Metrics,
    /// Links to other sites.
    pub pool: PeerPool,
    /// Connections to local workloads: each data-plane thread has its own.
    h1: PerThread<Http1Pool>,
    h2c: PerThread<Client<HttpConnector, Body>>,
    /// Deadlines of calls: each data-plane thread keeps its own.
    deadlines: PerThread<Deadlines>,
    /// Whether an edge node's link to its parent is up.
    pub parent_up: AtomicBool,
    /// This site's name as a header value (`x-multimesh-served-by` of the calls it serves).
    site_header: Option<HeaderValue>,
    /// This site's TLS material; what its handshakes present can be rotated while running.
    pub tls: Arc<SiteTls>,
}

impl Agent {
    /// Builds the state; routes start empty until the feed publishes a table.
    pub fn new(config: AgentConfig, tls: Arc<SiteTls>) -> Self {
        let connect_timeout = Duration::from_millis(config.limits.connect_timeout_ms);
        let threads = config.data_plane_threads();
        let h1 = PerThread::new(threads, || {
            Http1Pool::new(
                connect_timeout,
                config.limits.max_streams as usize,
                crate::workload::pool::IDLE_TIMEOUT,
            )
        });
        let h2c = PerThread::new(threads, || {
            let mut conn = HttpConnector::new();
            conn.set_nodelay(true);
            conn.set_connect_timeout(Some(connect_timeout));
            Client::builder(TokioExecutor::new())
                .http2_only(true)
                .http2_initial_stream_window_size(1 << 20)
                .http2_initial_connection_window_size(8 << 20)
                .build(conn)
        });
        let pool = PeerPool::new(
            tls.clone(),
            &config.trust_domain,
            connect_timeout,
            threads,
            &config.children,
        );
        let site_header = HeaderValue::from_str(&config.site).ok();
        Self {
            health: Health::new(config.outlier),
            routes: Arc::new(Published::new(config.local.clone())),
            config,
            metrics: Metrics::new(threads),
            pool,
            h1,
            h2c,
            deadlines: PerThread::new(threads, Deadlines::default),
            parent_up: AtomicBool::new(false),
            site_header,
            tls,
        }
    }

    /// This site's name.
    pub fn site(&self) -> &str {
        &self.config.site
    }

    /// This site's name as a header value, made once.
    pub fn site_header(&self) -> Option<&HeaderValue> {
        self.site_header.as_ref()
    }

    /// The current route table (calls keep the table they started with).
    pub fn table(&self) -> Arc<RouteTable> {
        self.routes.current()
    }

    /// Ready to serve: routes loaded, and (on an edge node) the parent link up.
    pub fn ready(&self) -> Result<(), &'static str> {
        if !self.routes.loaded() {
            return Err("no route table yet");
        }
        if self.config.parent.is_some() && !self.parent_up.load(Ordering::Acquire) {
            return Err("parent link down");
        }
        Ok(())
    }

    /// The site whose link carries calls to `d`, and that link's addresses: the parent on an
    /// edge node, the relay for a destination behind one, else the destination itself.
    pub fn link_for<'a>(&'a self, d: &'a RouteDest) -> (&'a str, &'a [String]) {
        if let Some(p) = &self.config.parent {
            return (&p.site, std::slice::from_ref(&p.address));
        }
        match &d.via {
            Some(v) => (v, &d.addresses),
            None => (&d.site, &d.addresses),
        }
    }

    /// Sends a call to another site's edge agent for `authority` (the service host and port).
    pub async fn send_remote(
        &self,
        d: &RouteDest,
        authority: &Authority,
        head: &Head,
        body: Body,
    ) -> Result<Response<Body>, Failed> {
        let (link, addresses) = self.link_for(d);
        let send = match self.pool.get(link, addresses).await {
            Ok(s) => s,
            Err(reason) => {
                let e = CallError::new(ErrorCode::SiteUnreachable, reason);
                return Err(Failed::Unsent(e, body));
            }
        };
        let uri = match Uri::builder()
            .scheme(Scheme::HTTPS)
            .authority(authority.clone())
            .path_and_query(head.path.clone())
            .build()
        {
            Ok(u) => u,
            Err(e) => {
                let e = CallError::new(ErrorCode::BadRequest, e.to_string());
                return Err(Failed::Unsent(e, body));
            }
        };
        let mut req = Request::new(body);
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = head.headers.clone();
        req.headers_mut().insert(h::SITE, d.site_header.clone());
        self.timed(send.request(req)).await.map_err(Failed::Sent)
    }

    /// Sends a call to a workload of this site at `upstream` (`host:port`): HTTP/1.1 on a
    /// pooled keep-alive connection, h2c (gRPC) on a multiplexed one.
    pub async fn send_local(
        &self,
        upstream: &str,
        protocol: Protocol,
        address: &PortAddress,
        head: Head,
        body: Body,
    ) -> Result<Response<Body>, CallError> {
        let mut req = Request::new(body);
        *req.method_mut() = head.method;
        *req.headers_mut() = head.headers;
        if protocol == Protocol::Http {
            *req.uri_mut() = Uri::from(head.path);
            req.headers_mut()
                .insert(http::header::HOST, address.host.clone());
            return self.timed(self.h1.get().send(upstream, req)).await;
        }
        *req.uri_mut() = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(upstream)
            .path_and_query(head.path)
            .build()
            .map_err(|e| CallError::new(ErrorCode::BadUpstream, e.to_string()))?;
        *req.version_mut() = Version::HTTP_2;
        // Boxed: hyper-util's client future is large, and HTTP/1.1 calls should not carry it.
        Box::pin(self.timed(async {
            self.h2c
                .get()
                .request(req)
                .await
                .map(|r| r.map(h::incoming))
        }))
        .await
    }

    /// Runs `call` until it ends or `limits.request_timeout_ms` passes.
    pub fn with_request_timeout<F: Future>(&self, call: F) -> Within<'_, F> {
        let limit = Duration::from_millis(self.config.limits.request_timeout_ms);
        self.deadlines.get().within(Instant::now() + limit, call)
    }

    async fn timed<F, E>(&self, f: F) -> Result<Response<Body>, CallError>
    where
        F: Future<Output = Result<Response<Body>, E>>,
        E: std::error::Error,
    {
        match self.with_request_timeout(f).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(CallError::new(ErrorCode::UpstreamFailed, error_chain(&e))),
            Err(_) => Err(CallError::new(
                ErrorCode::Timeout,
                format!(
                    "no response within {} ms",
                    self.config.limits.request_timeout_ms
                ),
            )),
        }
    }
}

/// How an attempt to send a call failed; whether another site may be tried follows from it.
#[derive(Debug)]
pub enum Failed {
    /// Nothing left this agent (no link could be opened, no local upstream, no request could
    /// be built): the body comes back untouched, and any call may be tried at another site.
    Unsent(CallError, Body),
    /// The request left, perhaps only in part: only a call that may be sent twice (an
    /// idempotent one with no body) is tried again.
    Sent(CallError),
}

impl Failed {
    /// Why it failed.
    pub fn error(&self) -> &CallError {
        match self {
            Failed::Unsent(e, _) | Failed::Sent(e) => e,
        }
    }
}

/// The parts of a request needed to send it (again).
#[derive(Clone)]
pub struct Head {
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: PathAndQuery,
    /// Headers, hop-by-hop ones removed.
    pub headers: HeaderMap,
}

/// A response from upstream, with hop-by-hop headers removed and `served_by` added.
pub fn relay_response(resp: Response<Body>, served_by: Option<&HeaderValue>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    h::strip_hop_by_hop(&mut parts.headers);
    if let Some(site) = served_by {
        parts.headers.insert(h::SERVED_BY, site.clone());
    }
    Response::from_parts(parts, body)
}
