//! `federationctl plan`: what the kubernetes backend of a site would change in its cluster now,
//! without changing anything (one pass, LISTing each kind once).

use std::path::PathBuf;

use clap::Args;
#[cfg(feature = "kubernetes")]
use federation::kubernetes::{controller::Cluster, desired, plan as diff};
#[cfg(feature = "kubernetes")]
use serde::Serialize;

use crate::Failure;
#[cfg(feature = "kubernetes")]
use crate::observe::fetch_catalog;
use crate::output::Out;
#[cfg(feature = "kubernetes")]
use crate::{output::Table, usage};

/// `plan` arguments.
#[derive(Args)]
#[command(
    after_help = "Examples:\n  federationctl plan --config /etc/multimesh/config/federationd.toml\n  federationctl plan --config site.toml --catalog catalog.json -o json"
)]
#[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
pub struct Plan {
    /// The site's federationd config (backend = "kubernetes").
    #[arg(long)]
    config: PathBuf,
    /// The catalog as printed by `federationctl catalog -o json`, instead of asking the
    /// daemon.
    #[arg(long)]
    catalog: Option<PathBuf>,
}

#[cfg(feature = "kubernetes")]
#[derive(Serialize)]
struct PlanView {
    site: String,
    mesh: String,
    unchanged: usize,
    changes: Vec<ChangeView>,
    diagnostics: Vec<String>,
}

#[cfg(feature = "kubernetes")]
#[derive(Serialize)]
struct ChangeView {
    action: &'static str,
    object: String,
    resource: serde_json::Value,
}

/// `federationctl plan`, in a build without the Kubernetes backend.
#[cfg(not(feature = "kubernetes"))]
pub async fn plan(_: Out, _: Plan) -> Result<(), Failure> {
    Err(crate::without_kubernetes("plan"))
}

/// `federationctl plan`.
#[cfg(feature = "kubernetes")]
pub async fn plan(out: Out, p: Plan) -> Result<(), Failure> {
    let cfg = federation::config::Config::load(&p.config)?;
    if cfg.backend != federation::config::BackendKind::Kubernetes {
        return Err(usage(format!(
            "{}: backend is not \"kubernetes\": there is no cluster to plan for",
            p.config.display()
        )));
    }
    let settings = cfg.kubernetes.clone().unwrap_or_default();
    let catalog_text = match &p.catalog {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Failure(format!("{}: {e}", path.display()), 1))?,
        None => serde_json::to_string(&fetch_catalog(&cfg.admin_socket).await?)?,
    };
    let remote = smi_adapters::input::parse_catalog(&catalog_text).map_err(|e| Failure(e, 1))?;
    let cluster = Cluster::connect(&settings).await?;
    let snapshot = cluster.snapshot().await?;
    let (want, existing) = cluster
        .desired_and_existing(&cfg.site, &remote, &snapshot)
        .await?;
    let (changes, unchanged) = diff::plan(&want.objects, &existing);
    let view = PlanView {
        site: cfg.site.clone(),
        mesh: settings.mesh.clone(),
        unchanged,
        changes: changes
            .iter()
            .map(|c| ChangeView {
                action: c.verb(),
                object: desired::object_key(c.object()),
                resource: c.object().clone(),
            })
            .collect(),
        diagnostics: want
            .diagnostics
            .values()
            .flatten()
            .map(|d| d.to_string())
            .collect(),
    };
    out.print(&view, |o| {
        let mut t = Table::new(&["ACTION", "API VERSION", "KIND", "OBJECT"]);
        for c in &changes {
            let r = c.object();
            t.row(vec![
                c.verb().to_string(),
                r["apiVersion"].as_str().unwrap_or_default().to_string(),
                r["kind"].as_str().unwrap_or_default().to_string(),
                format!(
                    "{}/{}",
                    r["metadata"]["namespace"].as_str().unwrap_or_default(),
                    r["metadata"]["name"].as_str().unwrap_or_default()
                ),
            ]);
        }
        t.notes.extend(view.diagnostics.iter().cloned());
        let conflicts = changes
            .iter()
            .filter(|c| matches!(c, diff::Change::Conflict(_)))
            .count();
        t.notes.push(format!(
            "{} to change, {} unchanged, {} left alone (exist without the multimesh label) (site {}, mesh {})",
            changes.len() - conflicts,
            unchanged,
            conflicts,
            view.site,
            view.mesh
        ));
        o.table(&t)
    })
}
