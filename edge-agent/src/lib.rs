//! The multimesh edge agent: the cross-site data plane. Its folders follow a call's path.
//!
//! - [`outbound`]: calls from this site's workloads to services elsewhere. How they arrive
//!   (h2c, clusterset names), and [`outbound::call`], the steps of one call: target, route,
//!   attempts, dispatch, record, respond.
//! - [`link`]: the HTTP/2-over-mTLS connections to other sites' agents that carry those calls
//!   (one per peer and thread), and TCP tunnelled over them.
//! - [`inbound`]: calls from other sites: [`inbound::accept`] (the handshake that proves the
//!   calling site) and [`inbound::call`] (admission by consumer scope, then the workload or an
//!   edge node).
//! - [`workload`]: the hop to this site's own workloads (HTTP/1.1 keep-alive pool).
//! - [`routes`]: where a call may go (pure): the route table, host parsing, weighted choice
//!   and outlier detection ([`routes::balance`]), and where tables come from ([`routes::feed`]).
//! - [`runtime`]: data-plane threads, deadlines, listeners and wiring, metrics.
//!
//! Shared by every step: [`agent`] (the running agent's state), [`call_error`] (the agent's
//! own answers, in HTTP or gRPC form), [`http`] (bodies, headers, HTTP/2 plumbing), [`config`].
//!
//! Where a per-call policy goes: in `outbound::call` for calls leaving the site, in
//! `inbound::call` for calls arriving; the route table (`routes`) carries its settings.

pub mod agent;
pub mod call_error;
pub mod config;
pub mod http;
pub mod inbound;
pub mod link;
pub mod outbound;
pub mod routes;
pub mod runtime;
pub mod workload;
