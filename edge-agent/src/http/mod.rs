//! HTTP plumbing shared by ingress and egress: the body type, hop-by-hop headers, the headers
//! multimesh adds (the agent's own answers are `call_error`'s).

pub mod coalesce;
pub mod h2;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// An error of any body: hyper's, or the edge link's (`h2`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type every proxied request and response uses (streamed, trailers kept).
pub type Body = BoxBody<Bytes, BoxError>;

/// A body received by hyper (a caller's request, a workload's response), as a [`Body`].
pub fn incoming(body: hyper::body::Incoming) -> Body {
    body.map_err(BoxError::from).boxed()
}

/// Routes a call to a service (`NAME.NAMESPACE.svc.clusterset.local[:PORT]`) regardless of
/// `Host`; set by the mesh when it hands a remote share to the edge agent.
pub const DESTINATION: HeaderName = HeaderName::from_static("x-multimesh-destination");
/// The site a call is meant for, set by the egress agent (lets a parent relay to an edge node).
pub const SITE: HeaderName = HeaderName::from_static("x-multimesh-site");
/// On calls relayed by a parent into its edge node: the site that made the call. Trusted only
/// on the edge node's link from its parent; removed from every local caller's request.
pub const SOURCE: HeaderName = HeaderName::from_static("x-multimesh-source-site");
/// On responses: the site whose edge agent served the call (added by that site's ingress).
pub const SERVED_BY: HeaderName = HeaderName::from_static("x-multimesh-served-by");
/// On locally generated error responses: a short machine-readable reason.
pub const ERROR: HeaderName = HeaderName::from_static("x-multimesh-error");

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named by `Connection`.
/// `te: trailers` is kept: gRPC needs it end to end.
///
/// One pass over the fields, then a removal per field found: most calls carry none (HTTP/2
/// forbids them) or only `Host`, and a lookup per hop-by-hop name cost ten hash lookups a call.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut gone: Vec<HeaderName> = Vec::new();
    for (name, value) in headers.iter() {
        if *name == header::CONNECTION {
            let named = value
                .to_str()
                .unwrap_or_default()
                .split(',')
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok());
            gone.extend(named);
        }
        let hop = match *name {
            header::CONNECTION
            | header::PROXY_AUTHENTICATE
            | header::PROXY_AUTHORIZATION
            | header::TRANSFER_ENCODING
            | header::UPGRADE
            | header::HOST => true,
            header::TE => !value.as_bytes().eq_ignore_ascii_case(b"trailers"),
            _ => matches!(name.as_str(), "keep-alive" | "proxy-connection"),
        };
        if hop {
            gone.push(name.clone());
        }
    }
    for n in gone {
        headers.remove(n);
    }
}

/// Whether a request may be sent twice (RFC 9110 §9.2.2).
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether a status means the destination failed (counts toward ejection; may be retried).
pub fn is_failure(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    ) || status == StatusCode::INTERNAL_SERVER_ERROR
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// The field names left after stripping `fields` (appended in order), sorted.
    fn kept(fields: &[(&'static str, &'static str)]) -> Vec<String> {
        let mut h = HeaderMap::new();
        for (name, value) in fields {
            h.append(*name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut h);
        let mut left: Vec<String> = h.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        left
    }

    #[test]
    fn hop_by_hop_headers_go_and_trailers_stay() {
        let left = kept(&[
            ("connection", "close, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("traceparent", "00-abc-def-01"),
            ("host", "x"),
        ]);
        assert_eq!(left, vec!["te", "traceparent"]);
        let left = kept(&[
            ("te", "gzip"),
            ("Proxy-Connection", "keep-alive"),
            ("connection", "x-a"),
            ("connection", "x-b , upgrade"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("upgrade", "websocket"),
            ("x-kept", "3"),
        ]);
        assert_eq!(left, vec!["x-kept"]);
    }
}
