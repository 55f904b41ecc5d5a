//! What the control plane (`federationd`, `federationctl`) and the data plane (the edge agent)
//! of multimesh share, and nothing that only one of them needs:
//!
//! - [`names`], [`error`] and [`service`]: validated names, the error that names its field,
//!   and a service's ports with the one [`service::Protocol`];
//! - [`identity`] and [`tls`]: SPIFFE site identities and the rustls configurations that
//!   authorise peers by them; [`pki`] issues them (feature `pki`, control plane only);
//!   [`rotate`] replaces a running site's certificate when its files change; [`check`]
//!   checks a site's certificate files as its peers will;
//! - [`dial`]: resolve, connect and verify a site; [`backoff`]: the one back-off;
//! - [`config`], [`yaml`] and [`files`]: config files, bounded YAML, and files written whole;
//!   [`process`]: logging and shutdown signals; [`locks`]: the one lock helper;
//! - [`accept`]: the one accept loop, and the mutual-TLS front door for sites.

pub mod accept;
pub mod backoff;
pub mod check;
pub mod config;
pub mod dial;
pub mod error;
pub mod files;
pub mod identity;
pub mod locks;
pub mod names;
#[cfg(feature = "pki")]
pub mod pki;
pub mod process;
pub mod rotate;
pub mod service;
pub mod tls;
pub mod yaml;
