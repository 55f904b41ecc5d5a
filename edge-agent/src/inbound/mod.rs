//! Calls from other sites, in the order a call meets them: the mutual-TLS handshake that
//! proves the calling site ([`accept`]), then [`call`]: admission by the service's consumer
//! scope, and the hop to the local workload or the relay to an edge node this site parents.
//! A per-call policy of inbound calls goes in `call`.

pub mod accept;
pub mod call;
