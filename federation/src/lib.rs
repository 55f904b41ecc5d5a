//! The multimesh federation daemon library.
//!
//! Pure core: [`names`] and [`model`] (validated domain types), [`catalog`] (the per-site
//! catalog store, replication and liveness), [`proof`] (origin proofs), [`check`] (what
//! `federationctl check` finds). I/O at the edges: [`identity`] and [`tls`] (SPIFFE site
//! identities over rustls), [`config`], [`store`] and [`files`] (files written whole),
//! [`sync`] (the peer protocol over gRPC), [`admin`] (the local admin API), [`kubernetes`]
//! (the Kubernetes site backend), [`daemon`] (wiring).

pub use multimesh_core::{backoff, error, files, names, process, tls};

/// Site identities ([`multimesh_core::identity`]) and issuing them ([`multimesh_core::pki`]).
pub mod identity {
    pub use multimesh_core::identity::*;
    pub use multimesh_core::pki::*;
}

pub mod admin;
pub mod catalog;
pub mod check;
pub mod config;
pub mod daemon;
pub mod kubernetes;
pub mod model;
pub mod ownership;
pub mod proof;
pub mod report;
pub mod routes;
pub mod splits;
pub mod store;
pub mod sync;
