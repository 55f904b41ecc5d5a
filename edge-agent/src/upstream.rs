//! HTTP/1.1 connections to this site's workloads: a pool of keep-alive connections per
//! upstream address (`host:port` from the config).
//!
//! This is the hop every ingress call takes, so it is kept to what a proxy needs. hyper-util's
//! general-purpose client, used here before, spawns a task per request to return the
//! connection to its pool once the response is read, and keys its pool by scheme and authority;
//! here the connection goes back to the pool when the response body has been read to its end,
//! with no task, and the pool is found by the configured upstream string. A connection whose
//! response body is dropped early is closed (HTTP/1.1 cannot reuse it).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

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

/// Idle connections to one upstream, most recently used last.
struct Host {
    idle: Mutex<Vec<SendRequest<Body>>>,
}

/// The pool of HTTP/1.1 connections to local workloads.
pub struct Http1Pool {
    hosts: Mutex<HashMap<String, Arc<Host>>>,
    connect_timeout: Duration,
    max_idle: usize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Http1Pool {
    /// A pool keeping at most `max_idle` idle connections per upstream.
    pub fn new(connect_timeout: Duration, max_idle: usize) -> Self {
        Self {
            hosts: Mutex::default(),
            connect_timeout,
            max_idle,
        }
    }

    fn host(&self, addr: &str) -> Arc<Host> {
        let mut hosts = lock(&self.hosts);
        if let Some(h) = hosts.get(addr) {
            return h.clone();
        }
        let h = Arc::new(Host {
            idle: Mutex::new(Vec::new()),
        });
        hosts.insert(addr.to_string(), h.clone());
        h
    }

    /// Sends `req` (origin-form URI, `Host` set) to `addr` on an idle connection, or a new one.
    /// A request that an idle connection refused before sending anything (the workload closed
    /// it meanwhile) is sent again on another.
    pub async fn send(
        self: &Arc<Self>,
        addr: &str,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let host = self.host(addr);
        loop {
            let pooled = lock(&host.idle).pop();
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
                        back: Some((send, host, self.max_idle)),
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
    back: Option<(SendRequest<Body>, Arc<Host>, usize)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((send, host, max)) = self.back.take() {
            let mut idle = lock(&host.idle);
            if idle.len() < max && !send.is_closed() {
                idle.push(send);
            }
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
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
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
        (addr, conns)
    }

    fn get(addr: &str) -> Request<Body> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, addr)
            .body(crate::http::empty())
            .unwrap()
    }

    fn pool() -> Arc<Http1Pool> {
        Arc::new(Http1Pool::new(Duration::from_secs(2), 16))
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
