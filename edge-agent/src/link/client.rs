//! The calling side of an edge link: one HTTP/2 connection to a peer site's edge agent,
//! driven with the `h2` crate directly.
//!
//! hyper's HTTP/2 client, used here before, hands each request to the connection's task over a
//! channel and spawns a task per request to wait for its response. A call here opens its
//! stream from the caller's own task and awaits the response there: no task, channel or
//! one-shot per call. The link is one task that drives the connection and pings the peer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Request, Response};
use hyper::body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::http::Body;
use crate::http::coalesce::Coalesce;
use crate::http::h2::{Tunnel, keepalive, pipe, recv_body};

/// How often an idle or busy link is pinged (from either side), and how long a pong may take.
pub(crate) const PING_EVERY: Duration = Duration::from_secs(10);
pub(crate) const PONG_WITHIN: Duration = Duration::from_secs(5);

/// A handle on an open edge link; clones share the connection.
#[derive(Clone)]
pub struct Link {
    send: SendRequest<Bytes>,
    ended: Arc<Ended>,
}

/// Set once the connection has ended; `close` asks the driving task to end it.
#[derive(Default)]
struct Ended {
    flag: AtomicBool,
    notify: Notify,
    close: tokio_util::sync::CancellationToken,
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

    /// Ends the connection (calls in flight on it fail): the peer is no longer one to keep a
    /// link with.
    pub fn close(&self) {
        self.ended.close.cancel();
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
        () = ended.close.cancelled() => info!(peer = %peer, "edge link closed by this side"),
    }
    ended.flag.store(true, Ordering::Release);
    ended.notify.notify_waiters();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use http_body_util::{BodyExt, Full};
    use hyper::body::{Frame, Incoming};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::http::BoxError;

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
