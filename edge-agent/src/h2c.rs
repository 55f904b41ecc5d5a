//! The serving side of HTTP/2, on the `h2` crate with every stream of a connection handled
//! inside that connection's task ([`serve_streams`]): h2c (with prior knowledge, gRPC) from
//! local callers ([`serve`]), and edge links from peer sites (`ingress::serve_link`).
//!
//! hyper's server spawns a task per stream, so a call crossed two more task hand-offs (the
//! connection's task → stream task → the next hop, and back) and paid a spawn. Here a call's
//! future lives in the connection's own set of futures: the connection's task reads the
//! request, runs the call to the point where it waits on the next hop, and writes the response
//! when that hop wakes it. A connection is served on one data-plane thread anyway (workers.rs).

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Request, Response};
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::agent::Agent;
use crate::egress;
use crate::http::Body;
use crate::link::{self, pipe, recv_body};

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

/// Serves one h2c connection from a local caller until it closes, or until `stop` (then the
/// caller is sent GOAWAY and open calls get [`DRAIN`] to finish).
pub async fn serve<S>(agent: Arc<Agent>, io: S, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(agent.config.limits.max_streams)
        .max_header_list_size(MAX_HEADER_LIST)
        .initial_window_size(2 << 20)
        .initial_connection_window_size(5 << 20);
    let conn = match b.handshake::<_, Bytes>(io).await {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "h2c caller: handshake failed");
            return;
        }
    };
    let max_calls = agent.config.limits.max_streams as usize;
    let idle = Duration::from_millis(agent.config.limits.idle_timeout_ms);
    let bounds = Bounds {
        max_calls,
        idle: Some(idle),
    };
    let ended = serve_streams(conn, &stop, None, bounds, |req, respond| {
        Box::pin(call(agent.clone(), req, respond))
    })
    .await;
    if let Err(e) = ended {
        debug!(error = %e, "h2c caller: connection ended");
    }
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
    let pings = link::keepalive(keepalive.and_then(|_| conn.ping_pong()), every, within);
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

/// One call: routed by egress, its response (head, then body within the caller's window)
/// written to the caller's stream.
async fn call(agent: Arc<Agent>, req: Request<RecvStream>, respond: SendResponse<Bytes>) {
    let resp = egress::handle(agent, req.map(recv_body)).await;
    if let Err(e) = answer(respond, resp).await {
        debug!(error = %e, "h2c caller: stream gone before the response");
    }
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
