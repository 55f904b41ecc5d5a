//! The multimesh edge agent: the cross-site data plane.
//!
//! Pure core: [`routes`] (the route table and host parsing) and [`balance`] (weighted choice
//! and outlier detection). I/O at the edges: [`peers`] (one HTTP/2-over-mTLS link per site),
//! [`egress`] and [`ingress`] (the two proxy directions), [`tunnel`] (TCP over HTTP/2
//! CONNECT), [`feed`] (route file or federationd watch), [`serve`] (listeners and wiring),
//! [`workers`] (the data-plane threads, each serving its connections start to end),
//! [`clusterset`] (a DNS responder for `svc.clusterset.local` and listeners on every routed port).

pub mod agent;
pub mod balance;
pub mod call_error;
pub mod clusterset;
pub mod coalesce;
pub mod config;
pub mod deadline;
pub mod egress;
pub mod feed;
pub mod h1codec;
pub mod h2c;
pub mod http;
pub mod ingress;
pub mod link;
pub mod metrics;
pub mod peers;
pub mod routes;
pub mod serve;
pub mod tunnel;
pub mod upstream;
pub mod workers;
