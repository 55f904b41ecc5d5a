//! Local callers speaking h2c (HTTP/2 with prior knowledge, gRPC): each connection's streams
//! are served in its own task (`http::h2::serve_streams`), and each call goes the outbound way
//! (`outbound::call::handle`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::Request;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::agent::Agent;
use crate::http::h2::{Bounds, MAX_HEADER_LIST, answer, recv_body, serve_streams};
use crate::outbound::call;

/// Serves one h2c connection from a local caller until it closes, or until `stop` (then the
/// caller is sent GOAWAY and open calls get a few seconds to finish).
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

/// One call: routed by egress, its response (head, then body within the caller's window)
/// written to the caller's stream.
async fn call(agent: Arc<Agent>, req: Request<RecvStream>, respond: SendResponse<Bytes>) {
    let resp = call::handle(agent, req.map(recv_body)).await;
    if let Err(e) = answer(respond, resp).await {
        debug!(error = %e, "h2c caller: stream gone before the response");
    }
}
