//! h2c (HTTP/2 with prior knowledge, gRPC) from local callers, served on the `h2` crate with
//! every stream of a connection handled inside that connection's task.
//!
//! hyper's server spawns a task per stream, so a call crossed two more task hand-offs (caller
//! connection → stream task → edge link, and back) and paid a spawn. Here a call's future lives
//! in the connection's own set of futures: the connection's task reads the request, runs the
//! call to the point where it waits on the edge link, and writes the response when the link
//! wakes it. Connections still run in parallel on the runtime's workers; one connection's calls
//! share a worker (as Envoy and HAProxy bind a connection to one thread).

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
use crate::link::{pipe, recv_body};

/// The largest header list a caller may send (hyper's server default, kept from before).
const MAX_HEADER_LIST: u32 = 16 << 10;
/// How long open calls may take to finish when the agent stops.
const DRAIN: Duration = Duration::from_secs(5);

type Call = Pin<Box<dyn Future<Output = ()> + Send>>;

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
    let mut conn = match b.handshake::<_, Bytes>(io).await {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "h2c caller: handshake failed");
            return;
        }
    };
    let mut calls: FuturesUnordered<Call> = FuturesUnordered::new();
    let mut draining = false;
    let deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(deadline);
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    poll_fn(|cx| {
        if !draining && stopped.as_mut().poll(cx).is_ready() {
            draining = true;
            conn.graceful_shutdown();
            deadline.as_mut().reset(tokio::time::Instant::now() + DRAIN);
        }
        if draining && deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        let mut open = true;
        loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    calls.push(Box::pin(call(agent.clone(), req, respond)));
                }
                Poll::Ready(Some(Err(e))) => {
                    debug!(error = %e, "h2c caller: connection error");
                    open = false;
                    break;
                }
                Poll::Ready(None) => {
                    open = false;
                    break;
                }
                Poll::Pending => break,
            }
        }
        while let Poll::Ready(Some(())) = calls.poll_next_unpin(cx) {}
        // A closed connection ends its calls too: their streams are gone.
        if !open {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
}

/// One call: routed by egress, its response (head, then body within the caller's window)
/// written to the caller's stream.
async fn call(agent: Arc<Agent>, req: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    let resp = egress::handle(agent, req.map(recv_body)).await;
    let (parts, body) = resp.into_parts();
    let end = body.is_end_stream();
    match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(stream) if !end => pipe(body, stream).await,
        Ok(_) => {}
        Err(e) => debug!(error = %e, "h2c caller: stream gone before the response"),
    }
}
