//! Calls from this site's workloads to services elsewhere, in the order a call meets them:
//! how it arrives ([`h2c`] for HTTP/2 callers; HTTP/1.1 and TCP listeners are wired in
//! `runtime::serve`; [`clusterset`] for callers that know only a name), then [`call`], the
//! steps of one call: target, route, attempts, dispatch, record, respond. A per-call policy
//! of outbound calls (retries, timeouts, header rules) goes in `call`.

pub mod call;
pub mod clusterset;
pub mod h2c;
