//! `smi-adapters`: parse SMI `TrafficSplit`/`HTTPRouteGroup`/`TCPRoute`/`TrafficTarget` and
//! Gateway API `HTTPRoute` into one model and render it into Istio, Linkerd, Consul, Gateway API
//! and Kuma resources.
//!
//! **Not implemented yet** (tracked by issue #3). This crate is an empty placeholder so the
//! workspace has its final shape; it exports nothing and nothing depends on it.
