//! The tour-booking demo of multimesh.
//!
//! * [`app`]: the app's five services (front end, tour-catalog, booking, payment, notification),
//!   small HTTP/JSON servers. Every call from one service to another goes through the site's
//!   edge agent ([`client`]), addressed by its federation name
//!   (`<service>.<namespace>.svc.clusterset.local`), so it may cross sites; every answer says
//!   which service, version and site served it.
//! * [`demo`]: the local multi-site demo: three sites and an edge node as processes on loopback
//!   (federationd + edge-agent + app services each), the scripted walkthrough and the status
//!   page.

pub mod app;
pub mod client;
pub mod demo;

use serde::{Deserialize, Serialize};

/// Who answered a call: the service, its version and the site it runs at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedBy {
    /// Service name, e.g. `payment`.
    pub service: String,
    /// Version, e.g. `v1`.
    pub version: String,
    /// Site name, e.g. `b`.
    pub site: String,
}
