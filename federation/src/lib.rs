//! The multimesh federation daemon library.
//!
//! Pure core: [`names`] and [`model`] (validated domain types), [`catalog`] (the per-site
//! catalog store, replication and liveness). I/O at the edges: [`identity`] and [`tls`]
//! (SPIFFE site identities over rustls), [`config`] and [`state`] (files), [`sync`] (the peer
//! protocol over gRPC), [`admin`] (the local admin API), [`daemon`] (wiring).

pub mod catalog;
pub mod error;
pub mod model;
pub mod names;
