//! What runs the agent: the data-plane threads ([`workers`]), their call deadlines
//! ([`deadline`]), the listeners and their wiring ([`serve`]), and the metrics ([`metrics`]).

pub mod deadline;
pub mod metrics;
pub mod serve;
pub mod workers;
