//! HTTP/2 on the `h2` crate, the plumbing both directions share: serving a connection's
//! streams inside that connection's task ([`serve_streams`], used for local h2c callers by
//! `outbound::h2c` and for peer sites' links by `inbound`), writing an answer ([`answer`]),
//! moving bodies to and from streams ([`pipe`], [`recv_body`]), keepalive pings, and a
//! `CONNECT` stream as a byte stream ([`Tunnel`]).
//!
//! hyper's server spawns a task per stream, so a call crossed two more task hand-offs (the
//! connection's task → stream task → the next hop, and back) and paid a spawn. Here a call's
//! future lives in the connection's own set of futures: the connection's task reads the
//! request, runs the call to the point where it waits on the next hop, and writes the response
//! when that hop wakes it. A connection is served on one data-plane thread anyway
//! (`runtime::workers`).

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{Ping, PingPong, RecvStream, SendStream};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::http::{Body, BoxError};

/// The largest header list a caller or a peer may send (hyper's server default, kept from
/// before).
pub(crate) const MAX_HEADER_LIST: u32 = 16 << 10;
/// How long open calls may take to finish when the agent stops.
const DRAIN: Duration = Duration::from_secs(5);

type Call = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What one HTTP/2 connection may hold.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bounds {
    /// Calls running at once, each counted until it ends.
    pub max_calls: usize,
    /// Time with no call in flight before the connection is sent GOAWAY (none: kept).
    pub idle: Option<Duration>,
}

/// Serves an HTTP/2 connection's streams inside the calling task: each accepted stream's
/// future, made by `handle`, joins the connection's set and is polled when woken. Returns when
/// the connection closes (an open call's stream is then gone too), or after `stop` once open
/// calls finish or [`DRAIN`] passes. With `keepalive = (every, within)` the peer is pinged
/// every `every` and the connection ends when a pong is `within` late.
///
/// At most `bounds.max_calls` calls run at once, counted until each call's future ends:
/// HTTP/2's own `max_concurrent_streams` stops counting a stream when the peer resets it, while
/// the call it started goes on (the "rapid reset" pattern, CVE-2023-44487). A stream beyond the
/// bound is refused with `REFUSED_STREAM`, which tells the peer it was not processed and may be
/// retried. With `bounds.idle`, a connection with no call for that long is sent GOAWAY.
pub(crate) async fn serve_streams<S, H>(
    mut conn: h2::server::Connection<S, Bytes>,
    stop: &CancellationToken,
    keepalive: Option<(Duration, Duration)>,
    bounds: Bounds,
    mut handle: H,
) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<RecvStream>, SendResponse<Bytes>) -> Call,
{
    let Bounds { max_calls, idle } = bounds;
    let mut calls: FuturesUnordered<Call> = FuturesUnordered::new();
    let mut draining = false;
    let idle_timer = tokio::time::sleep(Duration::MAX);
    tokio::pin!(idle_timer);
    let mut idle_armed = false;
    let deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(deadline);
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let (every, within) = keepalive.unwrap_or((Duration::MAX, Duration::MAX));
    let pings = self::keepalive(keepalive.and_then(|_| conn.ping_pong()), every, within);
    tokio::pin!(pings);
    poll_fn(|cx| {
        if !draining && stopped.as_mut().poll(cx).is_ready() {
            draining = true;
            conn.graceful_shutdown();
            deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN);
        }
        if draining && deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        if let Poll::Ready(why) = pings.as_mut().poll(cx) {
            return Poll::Ready(Err(why));
        }
        // Finished calls leave the count before new streams are counted against it.
        while let Poll::Ready(Some(())) = calls.poll_next_unpin(cx) {}
        let ended = loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((_, mut respond)))) if calls.len() >= max_calls => {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
                Poll::Ready(Some(Ok((req, respond)))) => calls.push(handle(req, respond)),
                Poll::Ready(Some(Err(e))) => break Some(Err(e.to_string())),
                Poll::Ready(None) => break Some(Ok(())),
                Poll::Pending => break None,
            }
        };
        while let Poll::Ready(Some(())) = calls.poll_next_unpin(cx) {}
        if let (Some(idle), false, None) = (idle, draining, &ended) {
            if !calls.is_empty() {
                idle_armed = false;
            } else {
                if !idle_armed {
                    idle_armed = true;
                    idle_timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + idle);
                }
                if idle_timer.as_mut().poll(cx).is_ready() {
                    debug!("connection idle: GOAWAY");
                    draining = true;
                    conn.graceful_shutdown();
                    deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN);
                    cx.waker().wake_by_ref();
                }
            }
        }
        match ended {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    })
    .await
}

/// Writes `resp` to a served stream: its head, then its body within the peer's window. Fails
/// only when the stream was gone before the head could be sent.
pub(crate) async fn answer(
    mut respond: SendResponse<Bytes>,
    resp: Response<Body>,
) -> Result<(), h2::Error> {
    let (parts, body) = resp.into_parts();
    let end = body.is_end_stream();
    let stream = respond.send_response(Response::from_parts(parts, ()), end)?;
    if !end {
        pipe(body, stream).await;
    }
    Ok(())
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
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    #[tokio::test]
    async fn a_peer_that_stops_answering_pings_is_dropped_and_one_that_answers_is_kept() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let (_send, mut conn) = h2::client::handshake(tcp).await.unwrap();
            // Answers pings for 400 ms, then holds the connection open without reading it.
            let _ = tokio::time::timeout(Duration::from_millis(400), &mut conn).await;
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(conn);
        });
        let (tcp, _) = l.accept().await.unwrap();
        let conn = h2::server::handshake(tcp).await.unwrap();
        let stop = CancellationToken::new();
        let started = std::time::Instant::now();
        let ended = serve_streams(
            conn,
            &stop,
            Some((Duration::from_millis(50), Duration::from_millis(100))),
            Bounds {
                max_calls: 1,
                idle: None,
            },
            |_, _| Box::pin(async {}),
        )
        .await;
        let took = started.elapsed();
        client.abort();
        assert_eq!(ended, Err("no pong within 100 ms".to_string()));
        // Kept while pings were answered (about 8 of them), dropped soon after they stopped.
        assert!(took >= Duration::from_millis(400), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
}
