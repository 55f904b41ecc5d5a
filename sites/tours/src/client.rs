//! Calls to other services of the app, through the site's edge agent.
//!
//! A call is an HTTP/1.1 request to the edge agent's egress listener with the callee's
//! federation host name in `Host`; the agent picks the site (weights, traffic splits, failover)
//! and carries the call over its mTLS link. Errors keep what the edge agent said, so a failed
//! step names its cause (e.g. `no healthy destination`).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, header};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// A failed call to another service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// The service called.
    pub service: String,
    /// The HTTP status, when a response came back.
    pub status: Option<u16>,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "{} answered {s}: {}", self.service, self.message),
            None => write!(f, "{} unreachable: {}", self.service, self.message),
        }
    }
}

/// A small HTTP/1.1 client (keep-alive pool) for JSON calls and the demo's probes.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(http),
        }
    }
}

impl Http {
    /// Sends `method http://authority path` with `headers` (a `host` header replaces the
    /// authority's) and returns the status and body, or why nothing came back within `timeout`.
    pub async fn request(
        &self,
        method: Method,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{authority}{path}"))
            .header(header::ACCEPT, "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let bytes = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v).map_err(|e| e.to_string())?)
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(bytes)).map_err(|e| e.to_string())?;
        tokio::time::timeout(timeout, async {
            let resp = self.client.request(req).await.map_err(|e| {
                let mut m = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    m = format!("{m}: {s}");
                    src = s.source();
                }
                m
            })?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok((status, body))
        })
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
    }
}

impl Http {
    /// `GET http://authority path`: the status and the body as text.
    pub async fn get_text(
        &self,
        authority: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, String), String> {
        let (code, body) = self
            .request(Method::GET, authority, path, &[], None, timeout)
            .await?;
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// The way out of this service: the site's edge agent egress.
#[derive(Clone)]
pub struct Egress {
    authority: String,
    namespace: String,
    http: Http,
    timeout: Duration,
}

impl Egress {
    /// Calls go to the egress listener at `authority` (`host:port`), to services of `namespace`.
    pub fn new(authority: &str, namespace: &str, timeout: Duration) -> Self {
        Self {
            authority: authority.to_string(),
            namespace: namespace.to_string(),
            http: Http::default(),
            timeout,
        }
    }

    /// The federation host name of `service`.
    pub fn host(&self, service: &str) -> String {
        format!("{service}.{}.svc.clusterset.local", self.namespace)
    }

    /// Sends `method path` with an optional JSON body to `service`; the JSON answer of a 2xx.
    /// `traceparent` (W3C) is passed on when given.
    pub async fn call(
        &self,
        method: Method,
        service: &str,
        path: &str,
        body: Option<&Value>,
        traceparent: Option<&str>,
    ) -> Result<Value, CallError> {
        let err = |status: Option<u16>, message: String| CallError {
            service: service.to_string(),
            status,
            message,
        };
        let host = self.host(service);
        let mut headers = vec![("host", host.as_str())];
        if let Some(t) = traceparent {
            headers.push(("traceparent", t));
        }
        let (status, body) = self
            .http
            .request(method, &self.authority, path, &headers, body, self.timeout)
            .await
            .map_err(|m| err(None, m))?;
        if !(200..300).contains(&status) {
            let text = String::from_utf8_lossy(&body);
            let message = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| text.trim().to_string());
            return Err(err(Some(status), message));
        }
        serde_json::from_slice(&body)
            .map_err(|e| err(Some(status), format!("answer is not JSON: {e}")))
    }
}
