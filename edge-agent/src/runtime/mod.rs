//! What runs the agent: the data-plane threads ([`workers`]), their call deadlines
//! ([`deadline`]), the listeners and their wiring ([`serve`]), the metrics ([`metrics`]), the
//! config file read again while it runs ([`reload`]), and `edge-agent check` ([`check`]).

pub mod check;
pub mod deadline;
pub mod metrics;
pub mod reload;
pub mod serve;
pub mod workers;
