//! The calling side of an edge link: one HTTP/2 connection to a peer site's edge agent,
//! driven with the `h2` crate directly.
//!
//! hyper's HTTP/2 client, used here before, hands each request to the connection's task over a
//! channel and spawns a task per request to wait for its response. A call here opens its
//! stream from the caller's own task and awaits the response there: no task, channel or
//! one-shot per call. The link is one task that drives the connection and pings the peer.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::client::SendRequest;
use h2::{Ping, PingPong, RecvStream, SendStream};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::coalesce::Coalesce;
use crate::http::{Body, BoxError};

/// How often an idle or busy link is pinged (from either side), and how long a pong may take.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(10);
pub(crate) const PONG_WITHIN: Duration = Duration::from_secs(5);

/// A handle on an open edge link; clones share the connection.
#[derive(Clone)]
pub struct Link {
    send: SendRequest<Bytes>,
    ended: Arc<Ended>,
}

/// Set once the connection has ended.
#[derive(Default)]
struct Ended {
    flag: AtomicBool,
    notify: Notify,
}

/// HTTP/2 settings of the calling side: large windows so one connection carries many
/// concurrent calls at full speed.
fn builder() -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(1 << 20)
        .initial_connection_window_size(8 << 20)
        .max_frame_size(64 << 10);
    b
}

impl Link {
    /// Opens HTTP/2 on `io` and spawns the task driving it; `peer` names it in logs.
    pub async fn handshake<S>(io: S, peer: &str) -> Result<Link, h2::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::handshake_pinging(io, peer, PING_EVERY, PONG_WITHIN).await
    }

    /// [`Link::handshake`] with the ping period and pong deadline given.
    pub async fn handshake_pinging<S>(
        io: S,
        peer: &str,
        every: Duration,
        within: Duration,
    ) -> Result<Link, h2::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = builder().handshake::<_, Bytes>(Coalesce::new(io)).await?;
        let ended = Arc::new(Ended::default());
        tokio::spawn(drive(conn, ended.clone(), peer.to_string(), every, within));
        Ok(Link { send, ended })
    }

    /// Whether the connection has ended (the pool then dials again).
    pub fn is_closed(&self) -> bool {
        self.ended.flag.load(Ordering::Acquire)
    }

    /// Waits until the connection has ended.
    pub async fn closed(&self) {
        loop {
            let woken = self.ended.notify.notified();
            if self.is_closed() {
                return;
            }
            woken.await;
        }
    }

    /// Sends one call and waits for its response head; the request body is streamed by a task
    /// of its own only when there is one.
    pub async fn request(&self, req: Request<Body>) -> Result<Response<Body>, h2::Error> {
        let (parts, body) = req.into_parts();
        let head = Request::from_parts(parts, ());
        let eos = body.is_end_stream();
        let mut send = self.send.clone().ready().await?;
        let (response, stream) = send.send_request(head, eos)?;
        if !eos {
            tokio::spawn(pipe(body, stream));
        }
        let resp = response.await?;
        Ok(resp.map(recv_body))
    }

    /// Opens a `CONNECT` stream: the response head and, when it is 200, the tunnel.
    pub async fn connect(
        &self,
        head: Request<()>,
    ) -> Result<(Response<()>, Option<Tunnel>), h2::Error> {
        let mut send = self.send.clone().ready().await?;
        let (response, stream) = send.send_request(head, false)?;
        let (parts, recv) = response.await?.into_parts();
        let tunnel = (parts.status == http::StatusCode::OK).then(|| Tunnel::new(stream, recv));
        Ok((Response::from_parts(parts, ()), tunnel))
    }
}

/// Drives the connection until it ends, pinging the peer every `every`: a pong that does not
/// come `within` ends the link, so calls fail over instead of hanging on a dead peer.
async fn drive<T>(
    mut conn: h2::client::Connection<T, Bytes>,
    ended: Arc<Ended>,
    peer: String,
    every: Duration,
    within: Duration,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let pings = keepalive(conn.ping_pong(), every, within);
    tokio::select! {
        r = &mut conn => match r {
            Ok(()) => debug!(peer = %peer, "edge link closed"),
            Err(e) => warn!(peer = %peer, error = %e, "edge link closed with an error"),
        },
        why = pings => warn!(peer = %peer, reason = %why, "edge link dropped: peer not answering"),
    }
    ended.flag.store(true, Ordering::Release);
    ended.notify.notify_waiters();
}

/// Pings the peer every `every` with `pinger` (a connection's, polled alongside it) and returns
/// why the link is dead: a pong `within` late, or a failed ping. Without a pinger it never
/// returns.
pub(crate) async fn keepalive(
    pinger: Option<PingPong>,
    every: Duration,
    within: Duration,
) -> String {
    let Some(mut pp) = pinger else {
        return std::future::pending::<String>().await;
    };
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(within, pp.ping(Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("ping failed: {e}"),
            Err(_) => return format!("no pong within {} ms", within.as_millis()),
        }
    }
}

/// Streams a body into its HTTP/2 stream, within the peer's flow-control window; stops
/// (dropping the body) when the peer resets the stream, e.g. after answering early.
pub(crate) async fn pipe(mut body: Body, mut stream: SendStream<Bytes>) {
    loop {
        let next = tokio::select! {
            f = body.frame() => f,
            _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => return,
        };
        match next {
            None => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                debug!(error = %e, "request body failed; resetting the stream");
                stream.send_reset(h2::Reason::CANCEL);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(mut data) => {
                    // The body's last DATA frame carries END_STREAM: no empty frame after it.
                    let last = body.is_end_stream();
                    if last && data.is_empty() {
                        let _ = stream.send_data(data, true);
                        return;
                    }
                    while data.has_remaining() {
                        stream.reserve_capacity(data.len());
                        let n = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                            Some(Ok(0)) => continue,
                            Some(Ok(n)) => n,
                            _ => return,
                        };
                        let chunk = data.split_to(n.min(data.len()));
                        let end = last && data.is_empty();
                        if stream.send_data(chunk, end).is_err() || end {
                            return;
                        }
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = stream.send_trailers(trailers);
                        return;
                    }
                }
            },
        }
    }
}

/// A body arriving on an HTTP/2 stream, as a [`Body`].
pub(crate) fn recv_body(recv: RecvStream) -> Body {
    LinkBody {
        recv,
        data_done: false,
    }
    .boxed()
}

/// A body arriving on an HTTP/2 stream; window credit is given back as it is read.
struct LinkBody {
    recv: RecvStream,
    data_done: bool,
}

impl HttpBody for LinkBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(t)) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A `CONNECT` stream as a byte stream (RFC 9113 §8.5): DATA frames both ways.
pub struct Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    buf: Bytes,
}

impl Tunnel {
    /// The tunnel carried by an HTTP/2 stream's two halves.
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Tunnel {
            send,
            recv,
            buf: Bytes::new(),
        }
    }
}

fn io_error(e: h2::Error) -> std::io::Error {
    std::io::Error::other(e)
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.buf.is_empty() {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.buf = data;
                }
                Some(Err(e)) if e.is_reset() && e.reason() == Some(h2::Reason::NO_ERROR) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.buf.len().min(out.remaining());
        out.put_slice(&self.buf[..n]);
        self.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(data.len());
        let n = loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => {}
                Some(Ok(n)) => break n.min(data.len()),
                Some(Err(e)) => return Poll::Ready(Err(io_error(e))),
                None => return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
            }
        };
        self.send
            .send_data(Bytes::copy_from_slice(&data[..n]), false)
            .map_err(io_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let _ = self.send.send_data(Bytes::new(), true);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A plain-TCP HTTP/2 server on loopback (TLS is not what is tested here) that answers
    /// each call with its request body and the body's length in `x-length`; on `/early` it
    /// answers at once without reading the body (the stream is then reset).
    async fn echo_server() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        if req.uri().path() == "/early" {
                            return Ok(Response::new(Full::new(Bytes::from_static(b"early"))));
                        }
                        let body = req.into_body().collect().await?.to_bytes();
                        let mut r = Response::new(Full::new(body.clone()));
                        r.headers_mut()
                            .insert("x-length", body.len().to_string().parse().unwrap());
                        Ok::<_, hyper::Error>(r)
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_body_larger_than_every_window_crosses_the_link_both_ways() {
        let addr = echo_server().await;
        let link = Link::handshake(TcpStream::connect(&addr).await.unwrap(), "peer")
            .await
            .unwrap();
        // 12 MiB: more than the stream (1 MiB) and connection (8 MiB) windows of either side,
        // so both directions must wait for window updates.
        let sent: Vec<u8> = (0..12 << 20).map(|i: u32| (i % 251) as u8).collect();
        let req = Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/echo"))
            .body(crate::http::full(sent.clone()))
            .unwrap();
        let resp = link.request(req).await.unwrap();
        assert_eq!(resp.headers()["x-length"], sent.len().to_string().as_str());
        let back = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(back[..] == sent[..], "the echoed body differs");
        assert!(!link.is_closed());
    }

    #[tokio::test]
    async fn a_request_body_stops_streaming_when_the_peer_resets_the_stream() {
        let addr = echo_server().await;
        let link = Link::handshake(TcpStream::connect(&addr).await.unwrap(), "peer")
            .await
            .unwrap();
        // A body that stays open: one chunk now, then nothing until it is dropped.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"start"))))
            .await
            .unwrap();
        let body = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let req = Request::builder()
            .method("POST")
            .uri(format!("http://{addr}/early"))
            .body(BodyExt::boxed(body))
            .unwrap();
        let resp = link.request(req).await.unwrap();
        let answer = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&answer[..], b"early");
        tokio::time::timeout(Duration::from_secs(5), tx.closed())
            .await
            .expect("the body is still held after the peer reset its stream");
    }

    #[tokio::test]
    async fn a_peer_that_stops_answering_pings_ends_the_link() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        // The peer completes the HTTP/2 handshake, then never polls its connection again.
        let frozen = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let conn = h2::server::handshake(s).await.unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(conn);
        });
        let link = Link::handshake_pinging(
            TcpStream::connect(addr).await.unwrap(),
            "peer",
            Duration::from_millis(100),
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        assert!(!link.is_closed());
        tokio::time::timeout(Duration::from_secs(5), link.closed())
            .await
            .expect("the link should end once a pong is overdue");
        assert!(link.is_closed());
        frozen.abort();
    }
}
