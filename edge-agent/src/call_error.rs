//! Why the agent answered a call itself, and the one way it answers: [`CallError::respond`].
//!
//! Every locally generated answer carries `x-multimesh-error: CODE`, one of [`ErrorCode`]'s
//! stable values (listed with their statuses in docs/ARCHITECTURE.md, "Errors a caller can
//! see"; a test keeps that table and this enum the same). A plain HTTP caller gets the code's
//! HTTP status and a one-line text body. A gRPC caller (`content-type: application/grpc...`)
//! gets what gRPC clients read: HTTP 200 with no body, `grpc-status` and `grpc-message` in the
//! headers (gRPC's "Trailers-Only" response), so its stub reports e.g. `UNAVAILABLE: multimesh:
//! ...` rather than a protocol error.

use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

use crate::http::{Body, ERROR, empty, full};

/// The stable reasons of locally generated answers (`x-multimesh-error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The call names no service (no Host, `:authority` nor `x-multimesh-destination`).
    NoDestination,
    /// The named destination is not a service host of the clusterset zone (or has no address).
    BadDestination,
    /// CONNECT from a local caller (TCP goes through a TCP egress port).
    ConnectRefused,
    /// No route for the service.
    UnknownService,
    /// The service has no such port.
    UnknownPort,
    /// The service is not exported by the site asked.
    NotExported,
    /// The calling site is outside the service's consumer scope.
    Scope,
    /// A call to relay that is neither into this agent's edge node nor out of it.
    RelayRefused,
    /// No site serves the service (all ejected, unreachable or tried).
    NoDestinationSite,
    /// The link to the chosen site could not be opened.
    SiteUnreachable,
    /// This site serves the service but has no local upstream for the port.
    NoLocalEndpoint,
    /// The request could not be made into an upstream request.
    BadRequest,
    /// The local upstream's address is not usable.
    BadUpstream,
    /// The upstream (a workload or another site's agent) failed before answering.
    UpstreamFailed,
    /// The relayed call failed before an answer.
    RelayFailed,
    /// No answer within the request timeout.
    Timeout,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::NoDestination,
        ErrorCode::BadDestination,
        ErrorCode::ConnectRefused,
        ErrorCode::UnknownService,
        ErrorCode::UnknownPort,
        ErrorCode::NotExported,
        ErrorCode::Scope,
        ErrorCode::RelayRefused,
        ErrorCode::NoDestinationSite,
        ErrorCode::SiteUnreachable,
        ErrorCode::NoLocalEndpoint,
        ErrorCode::BadRequest,
        ErrorCode::BadUpstream,
        ErrorCode::UpstreamFailed,
        ErrorCode::RelayFailed,
        ErrorCode::Timeout,
    ];

    /// The value of `x-multimesh-error`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NoDestination => "no-destination",
            ErrorCode::BadDestination => "bad-destination",
            ErrorCode::ConnectRefused => "connect-refused",
            ErrorCode::UnknownService => "unknown-service",
            ErrorCode::UnknownPort => "unknown-port",
            ErrorCode::NotExported => "not-exported",
            ErrorCode::Scope => "scope",
            ErrorCode::RelayRefused => "relay-refused",
            ErrorCode::NoDestinationSite => "no-destination-site",
            ErrorCode::SiteUnreachable => "site-unreachable",
            ErrorCode::NoLocalEndpoint => "no-local-endpoint",
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::BadUpstream => "bad-upstream",
            ErrorCode::UpstreamFailed => "upstream-failed",
            ErrorCode::RelayFailed => "relay-failed",
            ErrorCode::Timeout => "timeout",
        }
    }

    /// The HTTP status a plain caller gets.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::NoDestination | ErrorCode::BadDestination | ErrorCode::BadRequest => {
                StatusCode::BAD_REQUEST
            }
            ErrorCode::ConnectRefused => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::UnknownService | ErrorCode::UnknownPort | ErrorCode::NotExported => {
                StatusCode::NOT_FOUND
            }
            ErrorCode::Scope | ErrorCode::RelayRefused => StatusCode::FORBIDDEN,
            ErrorCode::NoDestinationSite
            | ErrorCode::SiteUnreachable
            | ErrorCode::NoLocalEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::BadUpstream | ErrorCode::UpstreamFailed | ErrorCode::RelayFailed => {
                StatusCode::BAD_GATEWAY
            }
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The gRPC status code a gRPC caller gets (`grpc-status`).
    pub fn grpc_status(self) -> u8 {
        const INVALID_ARGUMENT: u8 = 3;
        const DEADLINE_EXCEEDED: u8 = 4;
        const PERMISSION_DENIED: u8 = 7;
        const UNIMPLEMENTED: u8 = 12;
        const UNAVAILABLE: u8 = 14;
        match self {
            ErrorCode::NoDestination
            | ErrorCode::BadDestination
            | ErrorCode::ConnectRefused
            | ErrorCode::BadRequest => INVALID_ARGUMENT,
            ErrorCode::UnknownService | ErrorCode::UnknownPort | ErrorCode::NotExported => {
                UNIMPLEMENTED
            }
            ErrorCode::Scope | ErrorCode::RelayRefused => PERMISSION_DENIED,
            ErrorCode::NoDestinationSite
            | ErrorCode::SiteUnreachable
            | ErrorCode::NoLocalEndpoint
            | ErrorCode::BadUpstream
            | ErrorCode::UpstreamFailed
            | ErrorCode::RelayFailed => UNAVAILABLE,
            ErrorCode::Timeout => DEADLINE_EXCEEDED,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a call got no answer from a destination: the code, and plain words for the caller and
/// the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// The stable reason.
    pub code: ErrorCode,
    /// Plain-words detail.
    pub message: String,
}

impl CallError {
    /// A call error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The same error with `context: ` before its message.
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// How the caller speaks: gRPC callers get gRPC statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallerKind {
    /// Anything but gRPC.
    Http,
    /// `content-type: application/grpc` (any `+format` suffix).
    Grpc,
}

impl CallerKind {
    /// Reads the request's content type.
    pub fn of(headers: &HeaderMap) -> Self {
        let grpc = headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            CallerKind::Grpc
        } else {
            CallerKind::Http
        }
    }
}

impl CallError {
    /// The agent's own answer to the call that failed with this error: the one place such
    /// answers are made.
    pub fn respond(&self, caller: CallerKind) -> Response<Body> {
        let err = self;
        let text = format!("multimesh: {}", err.message);
        let mut r = match caller {
            CallerKind::Http => {
                let mut r = Response::new(full(format!("{text}\n")));
                *r.status_mut() = err.code.status();
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                r
            }
            CallerKind::Grpc => {
                let mut r = Response::new(empty());
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                h.insert(
                    "grpc-status",
                    HeaderValue::from(u16::from(err.code.grpc_status())),
                );
                if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(&text)) {
                    h.insert("grpc-message", v);
                }
                r
            }
        };
        r.headers_mut()
            .insert(ERROR, HeaderValue::from_static(err.code.as_str()));
        r
    }
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX` (gRPC over
/// HTTP/2, "Responses").
fn grpc_percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    async fn body_text(r: Response<Body>) -> String {
        let bytes = r.into_body().collect().await.map(|c| c.to_bytes());
        String::from_utf8_lossy(&bytes.unwrap_or_default()).into_owned()
    }

    #[tokio::test]
    async fn plain_callers_get_the_status_a_text_and_the_code() {
        let err = CallError::new(ErrorCode::Scope, "site b may not call payment.tours");
        let r = err.respond(CallerKind::Http);
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()[ERROR], "scope");
        assert!(r.headers().get("grpc-status").is_none());
        assert_eq!(
            body_text(r).await,
            "multimesh: site b may not call payment.tours\n"
        );
    }

    #[tokio::test]
    async fn grpc_callers_get_a_trailers_only_answer_with_grpc_status_and_message() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert_eq!(CallerKind::of(&headers), CallerKind::Grpc);
        let err = CallError::new(ErrorCode::Timeout, "no answer in 100% of 30 ms ✓");
        let r = err.respond(CallerKind::of(&headers));
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "4");
        assert_eq!(
            r.headers()["grpc-message"],
            "multimesh: no answer in 100%25 of 30 ms %E2%9C%93"
        );
        assert_eq!(r.headers()[ERROR], "timeout");
        assert_eq!(body_text(r).await, "");
    }

    #[test]
    fn the_codes_are_distinct_and_documented_with_their_statuses() {
        let doc = include_str!("../../docs/ARCHITECTURE.md");
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()), "{c} twice");
            let row = format!(
                "| `{}` | {} | {} |",
                c.as_str(),
                c.status().as_u16(),
                c.grpc_status()
            );
            assert!(
                doc.contains(&row),
                "docs/ARCHITECTURE.md lacks the row {row}"
            );
        }
        let section = doc
            .split("### Errors a caller can see")
            .nth(1)
            .and_then(|s| s.split("\n#").next())
            .unwrap_or_default();
        let rows = section.lines().filter(|l| l.starts_with("| `")).count();
        assert_eq!(rows, ErrorCode::ALL.len(), "the table lists other codes");
    }
}
