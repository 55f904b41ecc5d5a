//! What runs the agent: the data-plane threads ([`workers`]), their call deadlines
//! ([`deadline`]), the listeners and their wiring ([`serve`]), the metrics ([`metrics`]), and
//! `edge-agent check` ([`check`]).

pub mod check;
pub mod deadline;
pub mod metrics;
pub mod serve;
pub mod workers;
