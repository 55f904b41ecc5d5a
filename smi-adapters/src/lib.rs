//! `smi-adapters`: one traffic spec, rendered into every mesh. A pure library (no I/O).
//!
//! Inputs — SMI `TrafficSplit` v1alpha1-4 with `HTTPRouteGroup` v1alpha1-4 matches, Gateway API
//! `HTTPRoute` with a `Service` parent (GAMMA), core `Service` manifests for ports, and the
//! federation catalog for remote services — are parsed into one [`model::Model`]
//! ([`input`]), then rendered by a mesh renderer ([`render`]). Every refusal and every inexact
//! rendering is a structured [`diag::Diagnostic`] naming the object and field.
//!
//! Two entry points: [`translate`] reads YAML texts and the catalog's JSON (the CLI's
//! `federationctl translate`); [`translate_objects`] takes objects and remote services already in
//! memory (federationd's Kubernetes controller), with no text in between. The strict schema
//! check of rendered resources against upstream CRDs is test support
//! (`tests/support/schema.rs`); the real API server is the final judge (federation's tests).
//!
//! Rendered today: routes for Istio, Linkerd, Consul, Gateway API (GAMMA) and Kuma; access
//! (`TrafficTarget` with `HTTPRouteGroup`/`TCPRoute` rules) for Istio, Linkerd, Consul and Kuma
//! (Kuma: whole-service permissions only; narrower rules are left out). Not yet: TCP routes for
//! Kuma.

pub mod diag;
pub mod input;
pub mod model;
pub mod patterns;
pub mod render;
pub mod weights;
pub mod yaml;

use diag::{Diagnostic, Severity};
use render::{Mesh, Options};
use serde_json::Value;

/// The result of one translation.
#[derive(Debug, Default)]
pub struct Translation {
    /// Rendered resources, in a stable order.
    pub resources: Vec<Value>,
    /// Errors and warnings, sorted.
    pub diagnostics: Vec<Diagnostic>,
}

impl Translation {
    /// Whether everything was rendered (no errors; warnings allowed).
    pub fn complete(&self) -> bool {
        self.diagnostics
            .iter()
            .all(|d| d.severity != Severity::Error)
    }

    /// The resources as multi-document YAML (strings a YAML 1.1 parser could misread are
    /// quoted).
    pub fn to_yaml(&self) -> String {
        yaml::documents(&self.resources)
    }
}

/// Translates input files (`(name, YAML text)`) for `mesh`, with the federation catalog (the
/// JSON of `federationctl catalog -o json`) when remote services are involved.
pub fn translate(
    files: &[(String, String)],
    catalog: Option<&str>,
    mesh: Mesh,
    opts: &Options,
) -> Translation {
    let mut diagnostics = Vec::new();
    let remote = match catalog.map(input::parse_catalog) {
        None => Default::default(),
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            diagnostics.push(Diagnostic::error("--catalog", "", e));
            return Translation {
                resources: vec![],
                diagnostics,
            };
        }
    };
    let model = input::parse(files, remote, &mut diagnostics);
    render(&model, mesh, opts, diagnostics)
}

/// Translates objects already in memory (`(where it came from, object)`; diagnostics name the
/// object by that origin) for `mesh`, with `remote` the services of other sites.
pub fn translate_objects(
    objects: Vec<(String, Value)>,
    remote: input::RemoteServices,
    mesh: Mesh,
    opts: &Options,
) -> Translation {
    let mut diagnostics = Vec::new();
    let model = input::parse_objects(objects, remote, &mut diagnostics);
    render(&model, mesh, opts, diagnostics)
}

fn render(
    model: &model::Model,
    mesh: Mesh,
    opts: &Options,
    mut diagnostics: Vec<Diagnostic>,
) -> Translation {
    let resources = match mesh {
        Mesh::Istio => render::istio::render(model, opts, &mut diagnostics),
        Mesh::GatewayApi => {
            render::access_unsupported(
                model,
                "gateway-api (it has no authorization resource)",
                &mut diagnostics,
            );
            render::gateway::render(model, render::gateway::Flavor::Gamma, &mut diagnostics)
        }
        Mesh::Linkerd => render::linkerd::render(model, opts, &mut diagnostics),
        Mesh::Consul => render::consul::render(model, opts, &mut diagnostics),
        Mesh::Kuma => render::kuma::render(model, opts, &mut diagnostics),
    };
    diagnostics.sort();
    diagnostics.dedup();
    Translation {
        resources,
        diagnostics,
    }
}
