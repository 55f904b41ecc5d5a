//! Generated protobuf and gRPC code of multimesh.
//!
//! The `.proto` sources live in `proto/proto/`; `build.rs` compiles them with `protox` (pure Rust,
//! no system `protoc`). Packages are versioned: `multimesh.catalog.v1` is the peer-to-peer catalog
//! protocol, `multimesh.admin.v1` the daemon's local admin API.
#![allow(missing_docs, clippy::all)]

/// The peer catalog protocol.
pub mod catalog {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("multimesh.catalog.v1");
    }
}

/// The admin API of `federationd`.
pub mod admin {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("multimesh.admin.v1");
    }
}

/// The route feed from `federationd` to the site's edge agent.
pub mod routes {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("multimesh.routes.v1");
    }
}
