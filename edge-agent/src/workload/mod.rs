//! The hop from this site's edge agent to its own workloads: a keep-alive HTTP/1.1 pool per
//! upstream address ([`pool`]), speaking our own client codec ([`h1codec`], pure).

pub mod h1codec;
pub mod pool;
