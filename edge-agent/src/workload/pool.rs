//! HTTP/1.1 connections to this site's workloads: a pool of keep-alive connections per
//! upstream address (`host:port` from the config), spoken with our own client codec
//! (`workload::h1codec`).
//!
//! This is the hop every ingress call takes, so it runs inside the task of the call itself:
//! the request is written and the response read by the call's own task, with no connection
//! task, channel or one-shot between them (hyper's client conn had all three, and hyper-util's
//! pool a task per request on top). A connection goes back to the pool when its response has
//! been read to the end and its request written to the end; one whose response is dropped
//! early, or that failed in any way, is closed (HTTP/1.1 cannot reuse it).

use multimesh_core::locks::lock;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;
use tracing::debug;

use http_body_util::BodyExt;

use crate::http::{self as h, Body, BoxError};
use crate::workload::h1codec::{self, ChunkedDecoder, Decoded, Framing, ResponseHead};

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
    /// The exchange failed after the connection was made.
    #[error("{addr}: {reason}")]
    Exchange {
        /// The upstream.
        addr: String,
        /// What went wrong, in words.
        reason: String,
    },
}

/// How long a connection may stay idle in the pool before it is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Request bytes buffered before the body is no longer read ahead of the socket.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;

/// A keep-alive connection to a workload and what has been read from it but not used.
struct Conn {
    io: TcpStream,
    rbuf: BytesMut,
}

impl Conn {
    /// Whether an idle connection can carry a request: nothing (not even its end) has arrived
    /// on it since its last response. Costs no system call unless the runtime saw it readable.
    fn still_open(&mut self) -> bool {
        if !self.rbuf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: the workload closed it or sent bytes nobody asked for, unless the
            // readiness is left over from the last response (a read that filled the buffer).
            Poll::Ready(Ok(())) => matches!(
                self.io.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            ),
        }
    }
}

/// Idle connections to one upstream, each with the time it went idle; most recent last.
struct Host {
    addr: String,
    idle: Mutex<VecDeque<(Conn, Instant)>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Host {
    /// The most recently used idle connection that is still open, unless even that one has
    /// idled too long (then every idle connection goes).
    fn take(&self) -> Option<Conn> {
        let mut idle = lock(&self.idle);
        loop {
            let (mut conn, since) = idle.pop_back()?;
            if since.elapsed() > self.idle_timeout {
                idle.clear();
                return None;
            }
            if conn.still_open() {
                return Some(conn);
            }
        }
    }

    /// Returns a connection whose exchange is complete, closing those idle too long.
    fn put_back(&self, conn: Conn) {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        while idle
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) > self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() < self.max_idle {
            idle.push_back((conn, now));
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
            addr: addr.to_string(),
            idle: Mutex::new(VecDeque::new()),
            max_idle: self.max_idle,
            idle_timeout: self.idle_timeout,
        });
        hosts.insert(addr.to_string(), h.clone());
        h
    }

    /// Sends `req` (origin-form URI, `Host` set, hop-by-hop headers removed) to `addr` on an
    /// idle connection, or a new one. When a reused connection fails before any byte of a
    /// response, a request with no body and an idempotent method is sent again on another
    /// (the workload closed the connection meanwhile); other requests fail, as they may have
    /// been acted on.
    pub async fn send(
        &self,
        addr: &str,
        req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let host = self.host(addr);
        let (parts, body) = req.into_parts();
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let body_done = body.is_end_stream();
        let framing = h1codec::request_framing(&parts.method, body_done, body.size_hint().exact());
        let replayable = body_done && h::idempotent(&parts.method);
        let mut head = BytesMut::new();
        h1codec::encode_request_head(&mut head, &parts.method, target, &parts.headers, framing);
        let mut body = Some(body);
        loop {
            let (conn, reused) = match host.take() {
                Some(c) => (c, true),
                None => (self.connect(addr).await?, false),
            };
            let mut ex = Exchange {
                conn: Some(conn),
                host: host.clone(),
                wbuf: head.clone(),
                req_body: body.take(),
                chunked: framing == Framing::Chunked,
                req_done: false,
                write_error: None,
                body_error: None,
                resp: Resp::Head,
                keep_alive: false,
                got_bytes: false,
            };
            let method = &parts.method;
            match poll_fn(|cx| ex.poll_head(cx, method)).await {
                Ok(head) => return Ok(ex.into_response(head)),
                Err(reason) if reused && replayable && !ex.got_bytes => {
                    debug!(upstream = addr, %reason, "idle connection gone; retrying on another");
                    body = Some(h::empty());
                }
                Err(reason) if ex.body_error.is_some() => {
                    return Err(UpstreamError::Exchange {
                        addr: addr.to_string(),
                        reason,
                    });
                }
                Err(reason) => {
                    let reason = match ex.write_error.take() {
                        Some(w) if !ex.got_bytes => format!("{w} ({reason})"),
                        _ => reason,
                    };
                    return Err(UpstreamError::Exchange {
                        addr: addr.to_string(),
                        reason,
                    });
                }
            }
        }
    }

    async fn connect(&self, addr: &str) -> Result<Conn, UpstreamError> {
        let io = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
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
        let _ = io.set_nodelay(true);
        Ok(Conn {
            io,
            rbuf: BytesMut::new(),
        })
    }
}

/// Where the response of an exchange is.
enum Resp {
    /// Its head has not been read.
    Head,
    /// In a body of known length: this many bytes left.
    Length(u64),
    /// In a chunked body.
    Chunked(ChunkedDecoder),
    /// In a body that ends with the connection.
    UntilClose,
    /// Read to its end.
    Done,
}

/// One request and its response on a connection. Once the head has been read it is the
/// response body: reading it also finishes writing the request body, if that is still going
/// (a workload may answer before it has read the whole request).
struct Exchange {
    /// `None` once given back to the pool.
    conn: Option<Conn>,
    host: Arc<Host>,
    /// Request bytes not yet written.
    wbuf: BytesMut,
    /// The request body still to be sent; `None` when it has all been buffered.
    req_body: Option<Body>,
    chunked: bool,
    /// Every request byte has been written.
    req_done: bool,
    /// Writing the request failed (the response may still come: the workload may have
    /// answered and closed).
    write_error: Option<String>,
    /// The caller's request body failed before it was all sent: the workload holds a
    /// truncated request and would wait for the rest, so the exchange ends at once.
    body_error: Option<String>,
    resp: Resp,
    keep_alive: bool,
    /// Some response bytes arrived.
    got_bytes: bool,
}

impl Exchange {
    /// Writes what it can of the request: head, then body frames as the body yields them.
    fn poll_write(&mut self, cx: &mut Context<'_>) {
        if self.req_done || self.write_error.is_some() {
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        loop {
            if self.wbuf.len() < WRITE_HIGH_WATER
                && let Some(body) = self.req_body.as_mut()
            {
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        match frame.into_data() {
                            Ok(data) if data.is_empty() => {}
                            Ok(data) if self.chunked => {
                                h1codec::encode_chunk(&mut self.wbuf, &data)
                            }
                            Ok(data) => self.wbuf.put_slice(&data),
                            Err(frame) => {
                                // Trailers end the body; HTTP/1.1 carries them in chunked only.
                                let trailers: Option<HeaderMap> = frame.into_trailers().ok();
                                if self.chunked {
                                    h1codec::encode_last_chunk(&mut self.wbuf, trailers.as_ref());
                                }
                                self.req_body = None;
                            }
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => {
                        self.req_body = None;
                        self.write_error = Some(format!("request body failed: {e}"));
                        if matches!(self.resp, Resp::Head) {
                            // No answer yet, and none will come: closing the connection tells
                            // the workload the request is incomplete. (Once the workload has
                            // answered, its response is still relayed.)
                            self.body_error =
                                Some(format!("the caller's request body failed: {e}"));
                            self.conn = None;
                        }
                        return;
                    }
                    Poll::Ready(None) => {
                        if self.chunked {
                            h1codec::encode_last_chunk(&mut self.wbuf, None);
                        }
                        self.req_body = None;
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            if self.wbuf.is_empty() {
                self.req_done = self.req_body.is_none();
                return;
            }
            match Pin::new(&mut conn.io).poll_write(cx, &self.wbuf) {
                Poll::Ready(Ok(0)) => {
                    self.write_error = Some("connection closed while writing the request".into());
                    return;
                }
                Poll::Ready(Ok(n)) => self.wbuf.advance(n),
                Poll::Ready(Err(e)) => {
                    self.write_error = Some(format!("writing the request: {e}"));
                    return;
                }
                Poll::Pending => return,
            }
        }
    }

    /// Reads more of the response into the read buffer; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, String>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if conn.rbuf.capacity() - conn.rbuf.len() < 1024 {
            conn.rbuf.reserve(READ_CHUNK);
        }
        match poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.rbuf) {
            Poll::Ready(Ok(n)) => {
                self.got_bytes |= n > 0;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(format!("reading the response: {e}"))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes the request while waiting for the response head (1xx heads are skipped).
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
    ) -> Poll<Result<ResponseHead, String>> {
        self.poll_write(cx);
        if let Some(e) = &self.body_error {
            return Poll::Ready(Err(e.clone()));
        }
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(Err("connection gone".into()));
            };
            match h1codec::parse_response_head(&mut conn.rbuf, method) {
                Err(e) => return Poll::Ready(Err(e.to_string())),
                Ok(Some(head)) if head.status == http::StatusCode::SWITCHING_PROTOCOLS => {
                    return Poll::Ready(Err(
                        "answered 101 Switching Protocols; upgrades are not relayed".into(),
                    ));
                }
                Ok(Some(head)) if head.status.is_informational() => continue,
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                Ok(None) => {}
            }
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) if self.got_bytes => {
                    return Poll::Ready(Err(
                        "connection closed in the middle of the response head".into(),
                    ));
                }
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err("connection closed before a response".into()));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The response, its body read from this exchange. A body already in the buffer whole
    /// (the usual small response) is taken at once and the connection given back.
    fn into_response(mut self, head: ResponseHead) -> Response<Body> {
        self.keep_alive = head.keep_alive;
        self.resp = match head.framing {
            Framing::Empty => Resp::Done,
            Framing::Length(n) => Resp::Length(n),
            Framing::Chunked => Resp::Chunked(ChunkedDecoder::default()),
            Framing::UntilClose => Resp::UntilClose,
        };
        let mut resp = Response::new(());
        *resp.status_mut() = head.status;
        *resp.headers_mut() = head.headers;
        let whole = match (&self.resp, self.conn.as_mut()) {
            (Resp::Done, _) => Some(Bytes::new()),
            (Resp::Length(n), Some(conn)) if conn.rbuf.len() as u64 >= *n => {
                Some(conn.rbuf.split_to(*n as usize).freeze())
            }
            _ => None,
        };
        let Some(bytes) = whole else {
            return resp.map(|()| self.boxed());
        };
        if self.req_done {
            self.resp = Resp::Done;
            self.finish();
        } else {
            // The workload answered before the request body was written: the rest of it is
            // not sent and the connection is not reused.
            self.conn = None;
        }
        resp.map(|()| {
            if bytes.is_empty() {
                h::empty()
            } else {
                h::full(bytes)
            }
        })
    }

    /// The response is complete: the connection goes back to the pool if it can carry more.
    fn finish(&mut self) {
        if self.keep_alive
            && self.req_done
            && self.write_error.is_none()
            && let Some(conn) = self.conn.take()
        {
            self.host.put_back(conn);
        }
        self.conn = None;
    }

    fn fail(&mut self, reason: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.resp = Resp::Done;
        Poll::Ready(Some(Err(
            format!("workload {}: {reason}", self.host.addr).into()
        )))
    }
}

impl HttpBody for Exchange {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        this.poll_write(cx);
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.rbuf;
            match &mut this.resp {
                Resp::Head | Resp::Done => return Poll::Ready(None),
                Resp::Length(left) if !buf.is_empty() => {
                    let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let data = buf.split_to(n).freeze();
                    *left -= n as u64;
                    if *left == 0 {
                        this.resp = Resp::Done;
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Resp::UntilClose if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Resp::Chunked(decoder) => match decoder.decode(buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::End(trailers)) => {
                        this.resp = Resp::Done;
                        this.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => return this.fail(e.to_string()),
                },
                Resp::Length(_) | Resp::UntilClose => {}
            }
            match this.poll_fill(cx) {
                Poll::Ready(Ok(0)) if matches!(this.resp, Resp::UntilClose) => {
                    this.resp = Resp::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    return this
                        .fail("connection closed in the middle of the response body".into());
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(e),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.resp, Resp::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.resp {
            Resp::Done => SizeHint::with_exact(0),
            Resp::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
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

    /// What a scripted workload does after writing its reply to a request.
    #[derive(Clone, Copy)]
    enum After {
        Keep,
        Close,
        /// Stops reading (and keeps the connection) for 5 s.
        Hold,
    }

    type Script = Arc<dyn Fn(usize, usize, &str) -> (&'static [u8], After) + Send + Sync>;

    /// What a scripted workload has seen.
    #[derive(Default)]
    struct Seen {
        /// Connections accepted.
        conns: AtomicUsize,
        /// Request heads read.
        heads: AtomicUsize,
        /// Connections the client closed.
        closes: AtomicUsize,
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";

    /// A workload that answers every request with `reply`, then does `after`.
    async fn answering(reply: &'static [u8], after: After) -> (String, Arc<Seen>) {
        scripted(Arc::new(move |_, _, _| (reply, after))).await
    }

    /// A raw HTTP/1.1 workload on loopback answering each request head (bodies are not read)
    /// as `script` says, given the connection's number, the request's number on it and the
    /// head. Returns its address and what it has seen.
    async fn scripted(script: Script) -> (String, Arc<Seen>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let seen = Arc::new(Seen::default());
        let counts = seen.clone();
        tokio::spawn(async move {
            for conn_no in 0.. {
                let (mut s, _) = l.accept().await.unwrap();
                counts.conns.fetch_add(1, Ordering::SeqCst);
                let (script, counts) = (script.clone(), counts.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    for req_no in 0.. {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match s.read(&mut chunk).await {
                                Ok(0) | Err(_) => {
                                    counts.closes.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end);
                        counts.heads.fetch_add(1, Ordering::SeqCst);
                        let (reply, after) = script(conn_no, req_no, &head);
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                        match after {
                            After::Keep => {}
                            After::Close => return,
                            After::Hold => {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    fn get(addr: &str) -> Request<Body> {
        call(addr, Method::GET, h::empty())
    }

    fn pool() -> Http1Pool {
        Http1Pool::new(Duration::from_secs(2), 16, IDLE_TIMEOUT)
    }

    #[tokio::test]
    async fn calls_read_to_the_end_share_one_connection() {
        let (addr, seen) = answering(OK, After::Keep).await;
        let pool = pool();
        for _ in 0..5 {
            let resp = pool.send(&addr, get(&addr)).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok\n");
        }
        assert_eq!(seen.conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn responses_without_a_body_give_the_connection_back() {
        let (addr, seen) = answering(b"HTTP/1.1 204 No Content\r\n\r\n", After::Keep).await;
        let pool = pool();
        for _ in 0..3 {
            let resp = pool.send(&addr, get(&addr)).await.unwrap();
            assert_eq!(resp.status(), http::StatusCode::NO_CONTENT);
            drop(resp);
        }
        assert_eq!(seen.conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_workload_closed_while_idle_is_replaced() {
        let (addr, seen) = answering(OK, After::Close).await;
        let pool = pool();
        for _ in 0..3 {
            let resp = pool.send(&addr, get(&addr)).await.unwrap();
            resp.into_body().collect().await.unwrap();
            // Let the runtime see the close before the next call.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(seen.conns.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn connections_idle_too_long_are_closed_not_reused() {
        let (addr, seen) = answering(OK, After::Keep).await;
        let pool = Http1Pool::new(Duration::from_secs(2), 16, Duration::from_millis(100));
        // Two calls at once: two connections, both idle afterwards.
        let (a, b) = tokio::join!(pool.send(&addr, get(&addr)), pool.send(&addr, get(&addr)));
        for r in [a, b] {
            r.unwrap().into_body().collect().await.unwrap();
        }
        assert_eq!(seen.conns.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = pool.send(&addr, get(&addr)).await.unwrap();
        r.into_body().collect().await.unwrap();
        assert_eq!(
            seen.conns.load(Ordering::SeqCst),
            3,
            "an idle-too-long connection was reused"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.closes.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            seen.closes.load(Ordering::SeqCst),
            2,
            "both stale connections are closed"
        );
    }

    #[tokio::test]
    async fn a_body_dropped_part_way_is_not_reused() {
        // Headers for a 10-byte body, and only 5 bytes of it.
        let half = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf.";
        let (addr, seen) = answering(half, After::Hold).await;
        let pool = pool();
        for _ in 0..2 {
            let resp = pool.send(&addr, get(&addr)).await.unwrap();
            let mut body = resp.into_body();
            let first = body.frame().await.unwrap().unwrap();
            assert_eq!(first.data_ref().map(|b| &b[..]), Some(&b"half."[..]));
            drop(body);
        }
        assert_eq!(seen.conns.load(Ordering::SeqCst), 2);
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

    fn call(addr: &str, method: Method, body: Body) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri("/")
            .header(http::header::HOST, addr)
            .body(body)
            .unwrap()
    }

    /// A body of `pieces` x 64 KiB of `fill` with no length known in advance, fed by a task.
    fn streamed(pieces: usize, fill: u8) -> Body {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        tokio::spawn(async move {
            for _ in 0..pieces {
                if tx
                    .send(Ok(Frame::data(Bytes::from(vec![fill; 64 * 1024]))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed()
    }

    #[tokio::test]
    async fn a_body_of_unknown_length_crosses_both_ways_chunked_against_hyper() {
        // The workload is hyper's HTTP/1.1 server echoing the body as it arrives.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let conns = Arc::new(AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = l.accept().await.unwrap();
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        |req: Request<hyper::body::Incoming>| async move {
                            let te = req.headers().get(http::header::TRANSFER_ENCODING).cloned();
                            let mut r = Response::new(req.into_body());
                            if let Some(te) = te {
                                r.headers_mut().insert("x-seen-te", te);
                            }
                            Ok::<_, std::convert::Infallible>(r)
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        let pool = pool();
        for fill in [b'a', b'b'] {
            let resp = pool
                .send(&addr, call(&addr, Method::PUT, streamed(64, fill)))
                .await
                .unwrap();
            assert_eq!(resp.headers()["x-seen-te"], "chunked");
            assert_eq!(resp.headers()[http::header::TRANSFER_ENCODING], "chunked");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 64 * 64 * 1024);
            assert!(body.iter().all(|b| *b == fill));
        }
        assert_eq!(
            conns.load(Ordering::SeqCst),
            1,
            "the connection is reused after chunked bodies"
        );
    }

    #[tokio::test]
    async fn a_workload_answering_before_reading_an_upload_is_heard() {
        let (addr, _) = scripted(Arc::new(|_, _, _| {
            (
                &b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n"[..],
                After::Hold,
            )
        }))
        .await;
        // 16 MiB: far more than the socket buffers hold while the workload reads nothing.
        let mut req = call(&addr, Method::POST, streamed(256, b'x'));
        req.headers_mut()
            .insert(http::header::CONTENT_LENGTH, (256 * 64 * 1024).into());
        let resp = tokio::time::timeout(Duration::from_secs(3), pool().send(&addr, req))
            .await
            .expect("the early answer is read while the upload is stuck")
            .unwrap();
        assert_eq!(resp.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn informational_heads_trailers_and_head_requests() {
        let (addr, seen) = scripted(Arc::new(|_, _, head: &str| {
            if head.starts_with("HEAD ") {
                (&b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"[..], After::Keep)
            } else {
                (
                    &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 3\r\n\r\n"[..],
                    After::Keep,
                )
            }
        }))
        .await;
        let pool = pool();
        for method in [Method::GET, Method::HEAD, Method::GET] {
            let head = method == Method::HEAD;
            let resp = pool
                .send(&addr, call(&addr, method, h::empty()))
                .await
                .unwrap();
            assert_eq!(resp.status(), http::StatusCode::OK);
            let collected = resp.into_body().collect().await.unwrap();
            let trailers = collected.trailers().cloned();
            let body = collected.to_bytes();
            if head {
                assert!(body.is_empty() && trailers.is_none());
            } else {
                assert_eq!(&body[..], b"abc");
                assert_eq!(trailers.unwrap()["x-sum"], "3");
            }
        }
        assert_eq!(seen.heads.load(Ordering::SeqCst), 3);
        assert_eq!(
            pool.host(&addr).idle.lock().unwrap().len(),
            1,
            "one connection served all three"
        );
    }

    #[tokio::test]
    async fn a_body_ended_by_close_is_read_whole_and_bad_heads_are_named() {
        let (addr, _) = scripted(Arc::new(|conn, _, _| match conn {
            0 => (&b"HTTP/1.1 200 OK\r\n\r\nuntil the end"[..], After::Close),
            _ => (&b"SMTP ready\r\n\r\n"[..], After::Close),
        }))
        .await;
        let pool = pool();
        let resp = pool.send(&addr, get(&addr)).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"until the end");
        let err = pool.send(&addr, get(&addr)).await.unwrap_err().to_string();
        assert!(
            err.contains(&addr) && err.contains("invalid HTTP/1.1"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn only_bodiless_idempotent_calls_are_sent_again_when_a_reused_connection_fails() {
        // Connection 0 answers its first request and drops the second unanswered; the others
        // answer everything.
        let script: Script = Arc::new(|conn, req, _| match (conn, req) {
            (0, 1) => (&b""[..], After::Close),
            _ => (
                &b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"[..],
                After::Keep,
            ),
        });
        let (addr, seen) = scripted(script.clone()).await;
        let pool = pool();
        for _ in 0..2 {
            let resp = pool.send(&addr, get(&addr)).await.unwrap();
            resp.into_body().collect().await.unwrap();
        }
        assert_eq!(
            seen.heads.load(Ordering::SeqCst),
            3,
            "the GET was sent again on a new connection"
        );

        let (addr, seen) = scripted(script).await;
        let pool = Http1Pool::new(Duration::from_secs(2), 16, IDLE_TIMEOUT);
        let resp = pool.send(&addr, get(&addr)).await.unwrap();
        resp.into_body().collect().await.unwrap();
        let err = pool
            .send(&addr, call(&addr, Method::POST, h::full("pay=1")))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("closed before a response"), "{err}");
        assert_eq!(
            seen.heads.load(Ordering::SeqCst),
            2,
            "the POST was not sent twice"
        );
    }
}
