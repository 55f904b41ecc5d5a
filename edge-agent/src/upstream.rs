//! HTTP/1.1 connections to this site's workloads: a pool of keep-alive connections per
//! upstream address (`host:port` from the config).
//!
//! This is the hop every ingress call takes, so it is kept to what a proxy needs. hyper-util's
//! general-purpose client, used here before, spawns a task per request to return the
//! connection to its pool once the response is read, and keys its pool by scheme and authority;
//! here the connection goes back to the pool when the response body has been read to its end,
//! with no task, and the pool is found by the configured upstream string. A connection whose
//! response body is dropped early is closed (HTTP/1.1 cannot reuse it).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use http_body_util::BodyExt;

use crate::http::{Body, BoxError};

/// Why a call to a workload failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No TCP connection could be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The upstream.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TCP connection did not open in time.
    #[error("cannot connect to {addr}: no answer within {ms} ms")]
    ConnectTimeout {
        /// The upstream.
        addr: String,
        /// The limit.
        ms: u128,
    },
    /// The HTTP exchange failed.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// How long a connection may stay idle in the pool before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Idle connections to one upstream, each with the time it went idle; most recent last.
struct Host {
    idle: Mutex<VecDeque<(SendRequest<Body>, Instant)>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Host {
    /// The most recently used idle connection, unless even that one has idled too long (then
    /// every idle connection goes).
    fn take(&self) -> Option<SendRequest<Body>> {
        let mut idle = lock(&self.idle);
        let (send, since) = idle.pop_back()?;
        if since.elapsed() > self.idle_timeout {
            idle.clear();
            return None;
        }
        Some(send)
    }

    /// Returns a connection whose response was read to the end, closing those idle too long.
    fn put_back(&self, send: SendRequest<Body>) {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        while idle
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) > self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle && !send.is_closed() {
            idle.push_back((send, now));
        }
    }
}

/// The pool of HTTP/1.1 connections to local workloads.
pub struct Http1Pool {
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    connect_timeout: Duration,
    max_idle: usize,
    idle_timeout: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Http1Pool {
    /// A pool keeping at most `max_idle` idle connections per upstream, each for at most
    /// `idle_timeout`.
    pub fn new(connect_timeout: Duration, max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            hosts: Mutex::default(),
            connect_timeout,
            max_idle,
            idle_timeout,
        }
    }

    fn host(&self, addr: &str) -> Arc<Host> {
        let mut hosts = lock(&self.hosts);
        if let Some(h) = hosts.get(addr) {
            return h.clone();
        }
        let h = Arc::new(Host {
            idle: Mutex::new(VecDeque::new()),
            max_idle: self.max_idle,
            idle_timeout: self.idle_timeout,
        });
        hosts.insert(addr.to_string(), h.clone());
        h
    }

    /// Sends `req` (origin-form URI, `Host` set) to `addr` on an idle connection, or a new one.
    /// A request that an idle connection refused before sending anything (the workload closed
    /// it meanwhile) is sent again on another.
    pub async fn send(
        &self,
        addr: &str,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let host = self.host(addr);
        loop {
            let pooled = host.take();
            let (mut send, reused) = match pooled {
                Some(s) if s.is_closed() => continue,
                Some(s) => (s, true),
                None => (self.connect(addr).await?, false),
            };
            if let Err(e) = send.ready().await {
                if reused {
                    continue;
                }
                return Err(UpstreamError::Http(e));
            }
            match send.try_send_request(req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = PooledBody {
                        inner: body,
                        done: false,
                        back: Some((send, host)),
                    };
                    return Ok(Response::from_parts(parts, BodyExt::boxed(body)));
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => {
                        debug!(upstream = addr, error = %e.error(), "idle connection gone; retrying on another");
                        req = r;
                    }
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }

    async fn connect(&self, addr: &str) -> Result<SendRequest<Body>, UpstreamError> {
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(t)) => t,
            Ok(Err(source)) => {
                return Err(UpstreamError::Connect {
                    addr: addr.to_string(),
                    source,
                });
            }
            Err(_) => {
                return Err(UpstreamError::ConnectTimeout {
                    addr: addr.to_string(),
                    ms: self.connect_timeout.as_millis(),
                });
            }
        };
        let _ = tcp.set_nodelay(true);
        let (send, conn) = http1::handshake(TokioIo::new(tcp)).await?;
        let addr = addr.to_string();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(upstream = %addr, error = %e, "workload connection ended");
            }
        });
        Ok(send)
    }
}

/// A workload's response body: when read to its end, the connection goes back to the pool.
struct PooledBody {
    inner: Incoming,
    done: bool,
    back: Option<(SendRequest<Body>, Arc<Host>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((send, host)) = self.back.take() {
            host.put_back(send);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.done = true;
                self.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.back = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body never polled because it was empty (HEAD, 204, 304, length 0) is also at its
        // end; one dropped part-way is not, and its connection closes with `send`.
        if self.done || self.inner.is_end_stream() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// What a test workload does on each connection after reading a request head.
    #[derive(Clone, Copy)]
    enum Workload {
        /// Answers every request with `ok` and keeps the connection.
        KeepAlive,
        /// Answers every request with 204 and keeps the connection.
        NoContent,
        /// Answers one request with `ok` (keep-alive), then closes the connection.
        OneThenClose,
        /// Sends headers for a 10-byte body and only 5 bytes of it.
        HalfBody,
    }

    /// A raw HTTP/1.1 workload on loopback; returns its address and a count of connections.
    async fn workload(kind: Workload) -> (String, Arc<AtomicUsize>) {
        let (addr, conns, _) = workload_counting_closes(kind).await;
        (addr, conns)
    }

    /// [`workload`], also counting the connections the client closed.
    async fn workload_counting_closes(
        kind: Workload,
    ) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let conns = Arc::new(AtomicUsize::new(0));
        let closes = Arc::new(AtomicUsize::new(0));
        let (counted, closed) = (conns.clone(), closes.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                let closed = closed.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => {
                                    closed.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        let reply: &[u8] = match kind {
                            Workload::KeepAlive | Workload::OneThenClose => {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"
                            }
                            Workload::NoContent => b"HTTP/1.1 204 No Content\r\n\r\n",
                            Workload::HalfBody => {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf."
                            }
                        };
                        s.write_all(reply).await.unwrap();
                        match kind {
                            Workload::OneThenClose => return,
                            Workload::HalfBody => {
                                tokio::time::sleep(Duration::from_secs(30)).await;
                                return;
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        (addr, conns, closes)
    }

    fn get(addr: &str) -> Request<Body> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, addr)
            .body(crate::http::empty())
            .unwrap()
    }

    fn pool() -> Http1Pool {
        Http1Pool::new(Duration::from_secs(2), 16, IDLE_TIMEOUT)
    }

    #[tokio::test]
    async fn calls_read_to_the_end_share_one_connection() {
        let (addr, conns) = workload(Workload::KeepAlive).await;
        let pool = pool();
        for _ in 0..5 {
            let resp = pool.send(&addr, get(&addr)).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok\n");
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn responses_without_a_body_give_the_connection_back() {
        let (addr, conns) = workload(Workload::NoContent).await;
        let pool = pool();
        for _ in 0..3 {
            let resp = pool.send(&addr, get(&addr)).await.unwrap();
            assert_eq!(resp.status(), http::StatusCode::NO_CONTENT);
            drop(resp);
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_workload_closed_while_idle_is_replaced() {
        let (addr, conns) = workload(Workload::OneThenClose).await;
        let pool = pool();
        for _ in 0..3 {
            let resp = pool.send(&addr, get(&addr)).await.unwrap();
            resp.into_body().collect().await.unwrap();
            // Let the connection task see the close before the next call.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn connections_idle_too_long_are_closed_not_reused() {
        let (addr, conns, closes) = workload_counting_closes(Workload::KeepAlive).await;
        let pool = Http1Pool::new(Duration::from_secs(2), 16, Duration::from_millis(100));
        // Two calls at once: two connections, both idle afterwards.
        let (a, b) = tokio::join!(pool.send(&addr, get(&addr)), pool.send(&addr, get(&addr)));
        for r in [a, b] {
            r.unwrap().into_body().collect().await.unwrap();
        }
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = pool.send(&addr, get(&addr)).await.unwrap();
        r.into_body().collect().await.unwrap();
        assert_eq!(
            conns.load(Ordering::SeqCst),
            3,
            "an idle-too-long connection was reused"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while closes.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            closes.load(Ordering::SeqCst),
            2,
            "both stale connections are closed"
        );
    }

    #[tokio::test]
    async fn a_body_dropped_part_way_is_not_reused() {
        let (addr, conns) = workload(Workload::HalfBody).await;
        let pool = pool();
        for _ in 0..2 {
            let resp = pool.send(&addr, get(&addr)).await.unwrap();
            let mut body = resp.into_body();
            let first = body.frame().await.unwrap().unwrap();
            assert_eq!(first.data_ref().map(|b| &b[..]), Some(&b"half."[..]));
            drop(body);
        }
        assert_eq!(conns.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_upstream() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let err = pool().send(&addr, get(&addr)).await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot connect to {addr}")),
            "{err}"
        );
    }
}
